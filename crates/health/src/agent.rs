//! `switchyard agent`: a remote vantage point. Fetches its `AgentPlan` from the controller,
//! runs the checks, and posts a `Report` every `report_interval_ms`.
//!
//! Never an unbounded queue: a report is built from the latest results at the moment it is
//! sent, one send is in flight at a time, and a send that keeps failing is dropped after
//! `REPORT_ATTEMPTS_MAX` attempts — the next tick sends a fresher one. While the controller is
//! unreachable the agent keeps probing and keeps only the latest state.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::members::ControllerUrls;
use common::repeated::{Failed, Repeated, SUMMARY_INTERVAL_MS};
use common::tls_client::Connector;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::report::{AgentPlan, MEMBERS_HEADER, PLAN_PATH, REPORT_PATH, Report};
use crate::runner::{Runner, RunnerOptions};

/// Default time between two fetches of the plan.
pub const DEFAULT_PLAN_REFRESH_MS: u64 = 10_000;
/// One request to the controller is abandoned after this long.
pub const REQUEST_TIMEOUT_MS: u64 = 2000;
/// Attempts to deliver one report before dropping it for a fresher one.
pub const REPORT_ATTEMPTS_MAX: u32 = 3;
/// First retry delay of a report; doubles per attempt.
pub const REPORT_RETRY_MS: u64 = 100;
/// Cap of the delay between plan fetches while the controller is unreachable.
pub const PLAN_RETRY_MS_MAX: u64 = 5000;
/// Bounds on the report interval a plan may ask for.
pub const REPORT_INTERVAL_MS_MIN: u64 = 50;
pub const REPORT_INTERVAL_MS_MAX: u64 = 60_000;
/// Largest plan body accepted.
pub const PLAN_BYTES_MAX: usize = 4 * 1024 * 1024;
/// After the controller refuses a report, the plan is fetched again within this long (the
/// refusal may come from a plan of an earlier configuration).
pub const REFUSED_PLAN_REFRESH_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controller's base URL, `http://host:port`; for a group of controllers, every
    /// member's, comma-separated (`common::members::ControllerUrls`): the agent moves to the
    /// next member when one cannot be reached.
    pub controller: String,
    /// This vantage point's name; the controller must list it.
    pub name: String,
    /// Bearer token for the controller's API, if it has one.
    pub token: Option<String>,
    pub plan_refresh_ms: u64,
    pub runner: RunnerOptions,
}

impl AgentConfig {
    pub fn new(controller: impl Into<String>, name: impl Into<String>) -> AgentConfig {
        AgentConfig {
            controller: controller.into(),
            name: name.into(),
            token: None,
            plan_refresh_ms: DEFAULT_PLAN_REFRESH_MS,
            runner: RunnerOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("--controller: {0}")]
    BadController(String),
    #[error("agent name '{0}' is not a name: use letters, digits, '-', '_' or '.'")]
    BadName(String),
}

/// Why one exchange with the controller failed.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Refused(String),
}

struct ControllerClient {
    members: ControllerUrls,
    /// The member asked now: moved on by every failed exchange.
    member: AtomicUsize,
    name: String,
    token: Option<String>,
    client: Client<Connector, Full<Bytes>>,
}

impl ControllerClient {
    fn base(&self) -> &str {
        self.members.at(self.member.load(Ordering::Relaxed))
    }

    /// After an exchange with the member asked now failed (no answer, or a 5xx: a member that
    /// is stopping, or cannot pass the report on), the next exchange goes to the next member.
    /// An agent report and a plan fetch may go to any member: a follower passes reports on to
    /// the leader. A refusal (4xx) is the same at every member and moves nothing.
    fn after<T>(&self, result: Result<T, ExchangeError>) -> Result<T, ExchangeError> {
        if matches!(result, Err(ExchangeError::Transport(_))) && self.members.len() > 1 {
            let next = self.member.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            tracing::info!(member = %self.members.at(next), "asking the next controller member");
        }
        result
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ExchangeError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ExchangeError::Transport(format!("{}: {e}", self.base())))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), PLAN_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| ExchangeError::Transport(format!("read response: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| {
                ExchangeError::Transport(format!("{}: no answer within {REQUEST_TIMEOUT_MS} ms", self.base()))
            })?
    }

    fn request(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Request<Full<Bytes>>, ExchangeError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base()))
            .header("user-agent", "switchyard-agent/1");
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExchangeError::Transport(format!("build request: {e}")))
    }

    async fn fetch_plan(&self) -> Result<AgentPlan, ExchangeError> {
        let result = self.fetch_plan_once().await;
        self.after(result)
    }

    async fn post_report(&self, report: &Report) -> Result<(), ExchangeError> {
        let result = self.post_report_once(report).await;
        self.after(result)
    }

    async fn fetch_plan_once(&self) -> Result<AgentPlan, ExchangeError> {
        let request = self.request("GET", &format!("{PLAN_PATH}?name={}", self.name), Vec::new())?;
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body)
                .map_err(|e| ExchangeError::Refused(format!("the controller's plan is not valid: {e}"))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ExchangeError::Refused(format!(
                "the controller refused the token (HTTP {status}: {}): check --token-file (this agent's own token, role agent, listed for --name {} in the controller's [[tokens]])",
                refusal(&body),
                self.name
            ))),
            StatusCode::NOT_FOUND => Err(ExchangeError::Refused(format!(
                "the controller has no plan for agent '{}' (HTTP 404): list it among the vantage points",
                self.name
            ))),
            other => Err(ExchangeError::Transport(format!(
                "plan: HTTP {other}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }

    async fn post_report_once(&self, report: &Report) -> Result<(), ExchangeError> {
        let body = serde_json::to_vec(report).map_err(|e| ExchangeError::Refused(format!("encode report: {e}")))?;
        let mut request = self.request("POST", REPORT_PATH, body)?;
        if let Ok(value) = hyper::header::HeaderValue::from_str(&self.members.len().to_string()) {
            request.headers_mut().insert(MEMBERS_HEADER, value);
        }
        let (status, body) = self.send(request).await?;
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() {
            // The controller read the report and refused it (its token, its clock, a newer
            // report under this name, a stale plan): sending it again changes nothing.
            Err(ExchangeError::Refused(format!(
                "HTTP {status}{}: {}",
                refusal_code(&body).map(|code| format!(" {code}")).unwrap_or_default(),
                refusal(&body)
            )))
        } else {
            Err(ExchangeError::Transport(format!(
                "report: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )))
        }
    }
}

/// The controller's stable code for a refusal (its JSON `code`), if it gave one.
fn refusal_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("code")?
        .as_str()
        .filter(|code| code.len() <= 64)
        .map(str::to_string)
}

/// The controller's reason for a refusal (its JSON `error`), bounded.
fn refusal(body: &[u8]) -> String {
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    reason.chars().take(500).collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let members = ControllerUrls::parse(&config.controller).map_err(AgentError::BadController)?;
    if !valid_name(&config.name) {
        return Err(AgentError::BadName(config.name));
    }
    let client = ControllerClient {
        members,
        member: AtomicUsize::new(0),
        name: config.name.clone(),
        token: config.token.clone(),
        // `https://` controllers are verified against the process's trust (`--ca-file`).
        client: Client::builder(TokioExecutor::new()).build(Connector::new(common::tls_client::process_config())),
    };
    tokio::pin!(shutdown);
    let mut runner = Runner::new(config.runner);
    let mut report_interval_ms = crate::report::DEFAULT_REPORT_INTERVAL_MS;
    let mut plan_retry_ms = 200u64;
    let mut next_plan = tokio::time::Instant::now();
    let mut next_report = tokio::time::Instant::now();
    let mut have_plan = false;
    // The kind (HTTP status and code) and text of the controller's last refusal of a report.
    let mut last_refusal: Option<(String, String)> = None;
    // A controller out of reach fails every plan fetch and report: the first failure of each
    // is logged, then a summary at most every SUMMARY_INTERVAL_MS, and the end.
    let mut plan_failures = Repeated::new(SUMMARY_INTERVAL_MS);
    let mut report_failures = Repeated::new(SUMMARY_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next_plan) => {
                match client.fetch_plan().await {
                    Ok(plan) => {
                        if let Some(back) = plan_failures.success(plan_failures.now_ms()) {
                            tracing::info!(failures = back.failures, outage_ms = back.outage_ms, "fetched the plan again");
                        }
                        plan_retry_ms = 200;
                        next_plan = tokio::time::Instant::now() + Duration::from_millis(config.plan_refresh_ms.max(100));
                        let interval = plan.report_interval_ms.clamp(REPORT_INTERVAL_MS_MIN, REPORT_INTERVAL_MS_MAX);
                        let mut wanted = plan.checks.clone();
                        wanted.sort_by(|a, b| a.name.cmp(&b.name));
                        if runner.checks() != wanted || !have_plan {
                            let count = plan.checks.len();
                            match runner.update(plan.checks) {
                                Ok(()) => {
                                    tracing::info!(checks = count, report_interval_ms = interval, "plan applied");
                                    have_plan = true;
                                }
                                Err(error) => tracing::error!(%error, "the controller's plan is invalid; keeping the previous one"),
                            }
                        }
                        report_interval_ms = interval;
                    }
                    Err(error) => {
                        match plan_failures.failure(plan_failures.now_ms()) {
                            Failed::First => tracing::warn!(%error, retry_ms = plan_retry_ms, have_plan,
                                "cannot fetch the plan; retrying (further failures are summed up at most every {SUMMARY_INTERVAL_MS} ms)"),
                            Failed::Summary { failures, outage_ms } => tracing::warn!(%error, failures, outage_ms, have_plan,
                                "still cannot fetch the plan; retrying"),
                            Failed::Quiet => {}
                        }
                        next_plan = tokio::time::Instant::now() + Duration::from_millis(plan_retry_ms);
                        if have_plan {
                            next_plan = tokio::time::Instant::now() + Duration::from_millis(config.plan_refresh_ms.max(100));
                        }
                        plan_retry_ms = (plan_retry_ms * 2).min(PLAN_RETRY_MS_MAX);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_report), if have_plan => {
                next_report = tokio::time::Instant::now() + Duration::from_millis(report_interval_ms);
                // Retries must not hold up a shutdown.
                let delivered = tokio::select! {
                    delivered = deliver(&client, &runner, &config.name) => delivered,
                    _ = &mut shutdown => break,
                };
                let refused = match delivered {
                    Ok(refused) => {
                        if let Some(back) = report_failures.success(report_failures.now_ms()) {
                            tracing::info!(dropped = back.failures, outage_ms = back.outage_ms, "the controller is reachable again: reports go through");
                        }
                        refused
                    }
                    Err(error) => {
                        match report_failures.failure(report_failures.now_ms()) {
                            Failed::First => tracing::warn!(%error, attempts = REPORT_ATTEMPTS_MAX,
                                "report dropped; the next one will carry the latest state (further drops are summed up at most every {SUMMARY_INTERVAL_MS} ms)"),
                            Failed::Summary { failures, outage_ms } => tracing::warn!(%error, dropped = failures, outage_ms,
                                "reports still dropped; the next one will carry the latest state"),
                            Failed::Quiet => {}
                        }
                        // Neither a refusal nor an acceptance: what was last refused stays.
                        continue;
                    }
                };
                match (&refused, &last_refusal) {
                    // Logged when it starts or changes kind, not on every report.
                    (Some((kind, error)), last) if last.as_ref().map(|(k, _)| k) != Some(kind) => {
                        tracing::warn!(%error, "report refused by the controller");
                    }
                    (None, Some(_)) => tracing::info!("the controller takes this agent's reports again"),
                    _ => {}
                }
                if refused.is_some() {
                    // A refusal may come from a plan of an earlier configuration: fetch it soon.
                    let soon = tokio::time::Instant::now() + Duration::from_millis(REFUSED_PLAN_REFRESH_MS);
                    next_plan = next_plan.min(soon);
                }
                last_refusal = refused;
            }
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Posts the latest report, retrying a few times on transport errors; each attempt sends the
/// freshest results. Returns the controller's refusal (its kind, then the whole message), if
/// it refused the report: that is not retried; an error when every attempt failed (the report
/// is dropped).
async fn deliver(client: &ControllerClient, runner: &Runner, name: &str) -> Result<Option<(String, String)>, String> {
    let mut delay_ms = REPORT_RETRY_MS;
    for attempt in 1..=REPORT_ATTEMPTS_MAX {
        let report = runner.report(name);
        match client.post_report(&report).await {
            Ok(()) => return Ok(None),
            Err(ExchangeError::Refused(error)) => {
                let kind = error.split(':').next().unwrap_or_default().to_string();
                return Ok(Some((kind, error)));
            }
            Err(ExchangeError::Transport(error)) if attempt == REPORT_ATTEMPTS_MAX => return Err(error),
            Err(ExchangeError::Transport(_)) => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                delay_ms *= 2;
            }
        }
    }
    Ok(None)
}
