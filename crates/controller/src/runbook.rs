//! The runbook executor: runs the configured steps of one `RunbookOrder`, in order, each with
//! its timeout and bounded retries (exponential backoff), all carrying the order's generation
//! as fencing token.
//!
//! Every step's effect is idempotent (it sets a state, it does not toggle one), so running a
//! step again — a retry, or a roll-forward after a crash with a newer generation — is safe.
//! A roll-forward or retry still does not repeat a step whose target it can read and finds
//! already in the state the step sets (`read_target`).
//! A receiver that has already applied a newer generation answers 409: the step is *fenced*,
//! the runbook stops at once and is never retried with the old generation. Switchyard's DNS
//! admin API answers only that 409; a `webhook` receiver fences only when its 409 says so
//! (`{"error": "stale_generation", "generation": N}`, N newer): any other 409 is a conflict,
//! retried, and another 4xx is refused (not retried).
//!
//! A `command` step runs in a process group of its own, which is stopped whole (SIGTERM, then
//! SIGKILL) when the step times out or is abandoned, so nothing it started acts later under an
//! older generation; its result is the program's own exit status.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns_admin::{HEALTH_PATH, Health, HealthPush, TXT_PATH, TxtPush, View};
use hyper::{Method, StatusCode};
use rustix::process::{Pid, Signal};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::client::HttpClient;
use crate::config::{Step, StepKind};
use crate::engine::{RunbookOrder, RunbookOutcome, TransitionKind};
use crate::pointer::Pointer;

/// Longest wait between two attempts of a step.
pub const STEP_BACKOFF_MS_MAX: u64 = 10_000;
/// Bytes of a command's output kept for the report: the last ones of its stderr (of its stdout
/// when stderr is empty), where the error is. The rest is read and dropped.
pub const COMMAND_OUTPUT_TAIL_BYTES: usize = 4096;
/// How long a command's output is still read once the program exited: a background process
/// it started may hold the pipes open for its whole life, and the step does not wait for it.
pub const COMMAND_DRAIN_AFTER_EXIT_MS: u64 = 200;
/// Between the SIGTERM to a stopped command's process group and the SIGKILL.
pub const COMMAND_KILL_GRACE_MS: u64 = 2_000;
/// How often a stopping command's group is looked at.
const COMMAND_STOP_POLL_MS: u64 = 10;
/// Beyond its timeout, the grace and the drain, what a command attempt may take before it is
/// dropped (and its group stopped from another thread): only a hung reap would use it.
const COMMAND_STOP_SLACK_MS: u64 = 1_000;

/// What steps act on.
#[derive(Clone)]
pub struct StepContext {
    pub client: HttpClient,
    pub dns: Option<DnsAdmin>,
    /// DNS health targets per region.
    pub targets: BTreeMap<String, Vec<String>>,
    pub pointer: Pointer,
}

#[derive(Clone, Debug)]
pub struct DnsAdmin {
    pub admin_url: String,
    pub token: Option<String>,
    pub txt_name: Option<String>,
}

/// One attempt's result, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    pub step: String,
    pub attempt: u32,
    /// `ok`, `skipped`, `error`, `fenced`, `refused` or `stopped` (no longer allowed to act).
    pub outcome: &'static str,
    pub detail: String,
    pub duration_ms: u64,
}

enum Failure {
    Retryable(String),
    Fenced(String),
    /// Unsafe to act (a provider step said so): stop without retrying; an operator decides.
    Refused(String),
    /// A conditional push found its target changed since it was read (HTTP 412): read again.
    Moved(String),
}

impl From<providers::Failure> for Failure {
    fn from(failure: providers::Failure) -> Failure {
        match failure {
            providers::Failure::Retryable(m) => Failure::Retryable(m),
            providers::Failure::Fenced(m) => Failure::Fenced(m),
            providers::Failure::Refused(m) => Failure::Refused(m),
        }
    }
}

/// The order as the `providers` crate sees it.
pub fn provider_order(order: &RunbookOrder) -> providers::Order {
    providers::Order {
        generation: order.generation.0,
        // Steps act on the move: a retried failback is a failback to them.
        kind: serde_json::to_value(order.move_kind())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        from: order.from.as_ref().map(|p| p.active.as_str().to_string()),
        to: order.to.active.as_str().to_string(),
        serving: order.to.serving.iter().map(|r| r.as_str().to_string()).collect(),
        reason: order.reason.clone(),
        force_data_loss: order.force_data_loss,
    }
}

/// Runs every step for `order`; `report` sees each attempt as it ends.
pub async fn execute(
    steps: &[Step],
    order: &RunbookOrder,
    context: &StepContext,
    report: impl FnMut(StepReport),
) -> RunbookOutcome {
    execute_guarded(steps, order, context, || Ok(()), report).await
}

/// [`execute`], with `may_act` asked before every attempt of every step (retries included):
/// when it answers `Err(why)` the runbook stops there, before acting, with `why` in the
/// outcome and an attempt reported as `stopped`. With `[controller.ha]` it is the member's
/// lease as its own clock sees it, so a leader cut off from etcd stops retrying when its lease
/// runs out instead of retrying a step under its old generation for the step's whole budget.
pub async fn execute_guarded(
    steps: &[Step],
    order: &RunbookOrder,
    context: &StepContext,
    may_act: impl Fn() -> Result<(), String>,
    mut report: impl FnMut(StepReport),
) -> RunbookOutcome {
    for step in steps {
        if let Some(only) = &step.when_to
            && !only.iter().any(|r| r == order.to.active.as_str())
        {
            report(StepReport {
                step: step.name.clone(),
                attempt: 0,
                outcome: "skipped",
                detail: format!("runs only when the new active region is one of {}", only.join(", ")),
                duration_ms: 0,
            });
            continue;
        }
        // A roll-forward or retry continues a runbook whose earlier generation may have applied
        // this step before it was cut off (its record in etcd lost with it): where the target
        // can be read, a state already in place is not applied again.
        // The generation the target was read at: the push is then conditional on it, so a push
        // of the earlier generation landing between the read and this push is not applied over.
        let mut read_at = None;
        if continues_a_decision(order) && may_act().is_ok() {
            match read_target(step, order, context).await {
                Target::InPlace(detail) => {
                    report(StepReport {
                        step: step.name.clone(),
                        attempt: 0,
                        outcome: "skipped",
                        detail,
                        duration_ms: 0,
                    });
                    continue;
                }
                Target::Holds(generation) => read_at = Some(generation),
                Target::Unread => {}
            }
        }
        let attempts = step.retries.saturating_add(1);
        let mut backoff_ms = step.backoff_ms;
        let mut last_error = String::new();
        let mut done = false;
        for attempt in 1..=attempts {
            if let Err(why) = may_act() {
                report(StepReport {
                    step: step.name.clone(),
                    attempt,
                    outcome: "stopped",
                    detail: why.clone(),
                    duration_ms: 0,
                });
                return RunbookOutcome::Failed {
                    step: step.name.clone(),
                    error: format!("not run: {why}"),
                };
            }
            let started = Instant::now();
            let result = match tokio::time::timeout(
                Duration::from_millis(attempt_limit_ms(step)),
                run_step(step, order, context, read_at),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Failure::Retryable(format!("timed out after {} ms", step.timeout_ms))),
            };
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match result {
                Ok(detail) => {
                    report(StepReport {
                        step: step.name.clone(),
                        attempt,
                        outcome: "ok",
                        detail,
                        duration_ms,
                    });
                    done = true;
                    break;
                }
                Err(Failure::Fenced(error)) => {
                    report(StepReport {
                        step: step.name.clone(),
                        attempt,
                        outcome: "fenced",
                        detail: error.clone(),
                        duration_ms,
                    });
                    return RunbookOutcome::Fenced {
                        step: step.name.clone(),
                        error,
                    };
                }
                Err(Failure::Refused(error)) => {
                    report(StepReport {
                        step: step.name.clone(),
                        attempt,
                        outcome: "refused",
                        detail: error.clone(),
                        duration_ms,
                    });
                    return RunbookOutcome::Failed {
                        step: step.name.clone(),
                        error: format!("refused: {error}"),
                    };
                }
                Err(Failure::Moved(error)) => {
                    // Something was pushed since the read (the earlier generation's push, still
                    // in flight when its leader was cut off): read again, and push only if the
                    // state is still missing.
                    match read_target(step, order, context).await {
                        Target::InPlace(detail) => {
                            report(StepReport {
                                step: step.name.clone(),
                                attempt,
                                outcome: "skipped",
                                detail: format!("{error}; read again: {detail}"),
                                duration_ms,
                            });
                            done = true;
                            break;
                        }
                        Target::Holds(generation) => read_at = Some(generation),
                        Target::Unread => read_at = None,
                    }
                    report(StepReport {
                        step: step.name.clone(),
                        attempt,
                        outcome: "moved",
                        detail: error.clone(),
                        duration_ms,
                    });
                    last_error = error;
                }
                Err(Failure::Retryable(error)) => {
                    report(StepReport {
                        step: step.name.clone(),
                        attempt,
                        outcome: "error",
                        detail: error.clone(),
                        duration_ms,
                    });
                    last_error = error;
                    if attempt < attempts {
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = backoff_ms.saturating_mul(2).min(STEP_BACKOFF_MS_MAX);
                    }
                }
            }
        }
        if !done {
            return RunbookOutcome::Failed {
                step: step.name.clone(),
                error: format!("{last_error} (after {attempts} attempt(s))"),
            };
        }
    }
    RunbookOutcome::Succeeded
}

/// How long one attempt of `step` may take before it is dropped: its `timeout_ms`; a command
/// enforces that itself and then stops its process group, which this leaves time for.
fn attempt_limit_ms(step: &Step) -> u64 {
    match step.kind {
        StepKind::Command => step
            .timeout_ms
            .saturating_add(COMMAND_KILL_GRACE_MS)
            .saturating_add(COMMAND_DRAIN_AFTER_EXIT_MS)
            .saturating_add(COMMAND_STOP_SLACK_MS),
        _ => step.timeout_ms,
    }
}

/// Runs one attempt of `step`; `read_at`: the generation its target was read at (a DNS push
/// is then applied only if the view is still there).
async fn run_step(
    step: &Step,
    order: &RunbookOrder,
    context: &StepContext,
    read_at: Option<u64>,
) -> Result<String, Failure> {
    match step.kind {
        StepKind::DnsHealth => dns_health(step, order, context, read_at).await,
        StepKind::DnsTxt => dns_txt(step, order, context, read_at).await,
        StepKind::Pointer => {
            context
                .pointer
                .publish(order.to.active.as_str(), order.generation.0)
                .map_err(Failure::Fenced)?;
            Ok(format!(
                "pointer now {} at generation {}",
                order.to.active, order.generation
            ))
        }
        StepKind::Command => command(step, order).await,
        StepKind::Webhook => webhook(step, order, context).await,
        StepKind::Provider => match &step.action {
            Some(action) => action.run(&provider_order(order)).await.map_err(Failure::from),
            None => Err(Failure::Retryable("provider step without checked settings".into())),
        },
    }
}

/// Whether `order` continues an earlier generation's runbook to the same placement.
pub fn continues_a_decision(order: &RunbookOrder) -> bool {
    matches!(order.kind, TransitionKind::RollForward | TransitionKind::Retry)
}

/// What reading the target of a step found.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// It already holds what the step would set: what it holds, for the audit log.
    InPlace(String),
    /// It does not, as of this generation of the DNS view.
    Holds(u64),
    /// It cannot be read (commands, webhooks, providers, or the read failed): the step runs.
    Unread,
}

/// Reads the target of `step` and compares it with what `step` would set for `order`.
async fn read_target(step: &Step, order: &RunbookOrder, context: &StepContext) -> Target {
    match step.kind {
        StepKind::DnsHealth | StepKind::DnsTxt => read_dns(step, order, context).await.unwrap_or(Target::Unread),
        StepKind::Pointer => {
            let now = context.pointer.get();
            if now.region.as_deref() == Some(order.to.active.as_str()) {
                Target::InPlace(format!(
                    "the pointer already names {} (generation {}): not published again",
                    order.to.active, now.generation
                ))
            } else {
                Target::Unread
            }
        }
        StepKind::Command | StepKind::Webhook | StepKind::Provider => Target::Unread,
    }
}

async fn read_dns(step: &Step, order: &RunbookOrder, context: &StepContext) -> Option<Target> {
    let dns = context.dns.as_ref()?;
    let url = format!("{}{HEALTH_PATH}", dns.admin_url.trim_end_matches('/'));
    let answer = context
        .client
        .request(Method::GET, &url, dns.token.as_deref(), None, step.timeout_ms)
        .await
        .ok()?;
    if !answer.status.is_success() {
        return None;
    }
    let view: View = serde_json::from_slice(&answer.body).ok()?;
    let holds = if step.kind == StepKind::DnsHealth {
        health_targets(order, context).iter().all(|(target, health)| {
            let now = view.targets.get(target).copied().unwrap_or(Health::Healthy);
            now == *health
        })
    } else {
        let name = dns.txt_name.as_ref()?;
        view.txt.get(&txt_key(name)).map(String::as_str) == Some(order.to.active.as_str())
    };
    Some(if holds {
        Target::InPlace(format!(
            "already in place at the DNS server (applied under generation {}): not pushed again",
            view.generation
        ))
    } else {
        Target::Holds(view.generation)
    })
}

/// The key the DNS server files a TXT record under: lower case, fully qualified.
fn txt_key(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    if name.ends_with('.') { name } else { format!("{name}.") }
}

fn dns(context: &StepContext) -> Result<&DnsAdmin, Failure> {
    context
        .dns
        .as_ref()
        .ok_or_else(|| Failure::Retryable("no [dns] section configured".into()))
}

/// Characters of a refusing HTTP answer's body kept in the step's detail.
pub const HTTP_DETAIL_CHARS_MAX: usize = 512;

/// The `error` code of the generation protocol's 409: the receiver applied a newer generation
/// (the DNS admin API's [`common::dns_admin::AdminError`]; a `webhook` receiver may answer it
/// too, with the newer generation in `generation`).
pub const STALE_GENERATION: &str = "stale_generation";

/// Who answers a step's HTTP request, which decides what a 409 means.
#[derive(Clone, Copy, Debug)]
enum Receiver {
    /// Switchyard's own DNS admin API: its only 409 is `stale_generation` (fenced), its 412
    /// `generation_moved` (read again).
    DnsAdmin,
    /// Any HTTP endpoint a `webhook` step POSTs the order to, under `generation`: a 409 fences
    /// only when it speaks the generation protocol (`{"error": "stale_generation",
    /// "generation": N}` with N newer than ours); any other 409 is a plain conflict.
    Webhook { generation: u64 },
}

/// The newer generation a 409 body names under the generation protocol
/// (`{"error": "stale_generation", "generation": N}`), if it does.
fn stale_generation(body: &[u8]) -> Option<u64> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    if answer.get("error")?.as_str()? != STALE_GENERATION {
        return None;
    }
    answer.get("generation")?.as_u64()
}

/// Interprets an HTTP answer: 2xx is done; 409 is fenced from the DNS admin API, and from a
/// webhook only under the generation protocol (else a conflict, retried); 408, 425, 429 and 5xx
/// are retried; any other 3xx or 4xx is refused (a retry would get the same answer).
fn judge(
    what: &str,
    receiver: Receiver,
    answer: Result<crate::client::Answer, crate::client::ClientError>,
) -> Result<String, Failure> {
    let answer = answer.map_err(|e| Failure::Retryable(e.to_string()))?;
    let status = answer.status;
    let code = status.as_u16();
    let text: String = answer.text().chars().take(HTTP_DETAIL_CHARS_MAX).collect();
    if status.is_success() {
        return Ok(format!("{what}: HTTP {code}"));
    }
    match (status, receiver) {
        (StatusCode::PRECONDITION_FAILED, Receiver::DnsAdmin) => Err(Failure::Moved(format!(
            "{what}: HTTP 412 (pushed to since it was read): {text}"
        ))),
        (StatusCode::CONFLICT, Receiver::DnsAdmin) => Err(Failure::Fenced(format!(
            "{what}: HTTP 409 (a newer generation was applied): {text}"
        ))),
        (StatusCode::CONFLICT, Receiver::Webhook { generation }) => match stale_generation(&answer.body) {
            Some(applied) if applied > generation => Err(Failure::Fenced(format!(
                "{what}: HTTP 409 {STALE_GENERATION}: the receiver applied generation {applied}, newer than {generation}: {text}"
            ))),
            Some(applied) => Err(Failure::Retryable(format!(
                "{what}: HTTP 409 {STALE_GENERATION} naming generation {applied}, not newer than {generation}: a conflict, retried: {text}"
            ))),
            None => Err(Failure::Retryable(format!(
                "{what}: HTTP 409 (a conflict, retried; not fenced: the body is not {{\"error\": \"{STALE_GENERATION}\", \"generation\": N}}): {text}"
            ))),
        },
        (StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY | StatusCode::TOO_MANY_REQUESTS, _) => {
            Err(Failure::Retryable(format!("{what}: HTTP {code}: {text}")))
        }
        _ if status.is_client_error() => Err(Failure::Refused(format!(
            "{what}: HTTP {code} (a retry would get the same answer: fix the receiver or the step): {text}"
        ))),
        _ if status.is_redirection() => Err(Failure::Refused(format!(
            "{what}: HTTP {code} (redirects are not followed: set the URL it redirects to): {text}"
        ))),
        _ => Err(Failure::Retryable(format!("{what}: HTTP {code}: {text}"))),
    }
}

/// The JSON body of a DNS admin push ([`common::dns_admin`], shared with the DNS server).
fn push_body(push: &impl serde::Serialize) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(push).map_err(|e| Failure::Retryable(format!("encoding the DNS push: {e}")))
}

/// PUTs `push` to the DNS server's admin API at `path`, judged by [`judge`].
async fn push_to_dns(
    step: &Step,
    context: &StepContext,
    path: &str,
    push: &impl serde::Serialize,
) -> Result<String, Failure> {
    let dns = dns(context)?;
    let url = format!("{}{path}", dns.admin_url.trim_end_matches('/'));
    let body = push_body(push)?;
    let token = dns.token.as_deref();
    let answer = context
        .client
        .request(Method::PUT, &url, token, Some(body.clone()), step.timeout_ms)
        .await;
    // A DNS server of an earlier version refuses the condition as an unknown field: push
    // without it (as earlier controllers did).
    if let Ok(refused) = &answer
        && refused.status == StatusCode::BAD_REQUEST
        && refused.text().contains("if_generation")
        && let Ok(mut plain) = serde_json::from_slice::<serde_json::Value>(&body)
        && plain.as_object_mut().and_then(|o| o.remove("if_generation")).is_some()
    {
        let plain = push_body(&plain)?;
        let answer = context
            .client
            .request(Method::PUT, &url, token, Some(plain), step.timeout_ms)
            .await;
        return judge(
            &format!("PUT {}", common::text::shown_url(&url)),
            Receiver::DnsAdmin,
            answer,
        );
    }
    judge(
        &format!("PUT {}", common::text::shown_url(&url)),
        Receiver::DnsAdmin,
        answer,
    )
}

/// The health of every DNS target once `order` is applied: healthy in the serving regions.
fn health_targets(order: &RunbookOrder, context: &StepContext) -> BTreeMap<String, Health> {
    let mut targets = BTreeMap::new();
    for (region, names) in &context.targets {
        let serving = order.to.serving.iter().any(|r| r.as_str() == region);
        for name in names {
            let health = if serving { Health::Healthy } else { Health::Unhealthy };
            targets.insert(name.clone(), health);
        }
    }
    targets
}

async fn dns_health(
    step: &Step,
    order: &RunbookOrder,
    context: &StepContext,
    read_at: Option<u64>,
) -> Result<String, Failure> {
    let body = HealthPush {
        generation: order.generation.0,
        if_generation: read_at,
        targets: health_targets(order, context),
    };
    push_to_dns(step, context, HEALTH_PATH, &body).await
}

async fn dns_txt(
    step: &Step,
    order: &RunbookOrder,
    context: &StepContext,
    read_at: Option<u64>,
) -> Result<String, Failure> {
    let dns = dns(context)?;
    let name = dns
        .txt_name
        .as_ref()
        .ok_or_else(|| Failure::Retryable("[dns] txt_name is not set".into()))?;
    let body = TxtPush {
        generation: order.generation.0,
        if_generation: read_at,
        name: name.clone(),
        value: Some(order.to.active.as_str().to_string()),
    };
    push_to_dns(step, context, TXT_PATH, &body).await
}

fn order_json(order: &RunbookOrder) -> serde_json::Value {
    json!({
        "generation": order.generation.0,
        "kind": order.kind,
        "from": order.from.as_ref().map(|p| p.active.as_str()),
        "to": order.to.active.as_str(),
        "serving": order.to.serving,
        "reason": order.reason,
    })
}

async fn webhook(step: &Step, order: &RunbookOrder, context: &StepContext) -> Result<String, Failure> {
    let url = step
        .url
        .as_deref()
        .ok_or_else(|| Failure::Retryable("webhook step without url".into()))?;
    let body = order_json(order).to_string().into_bytes();
    let answer = context
        .client
        .request(Method::POST, url, None, Some(body), step.timeout_ms)
        .await;
    judge(
        &format!("POST {}", common::text::shown_url(url)),
        Receiver::Webhook {
            generation: order.generation.0,
        },
        answer,
    )
}

/// Runs the program (no shell) in a process group of its own, until `timeout_ms`.
///
/// Its stdout and stderr are read to the end while it runs (a program is never stopped by a
/// full or closed pipe), keeping the last [`COMMAND_OUTPUT_TAIL_BYTES`] of each for the report.
/// The step's result is the program's own exit status: once it exits, its output is read for at
/// most [`COMMAND_DRAIN_AFTER_EXIT_MS`] more — a background process it started may hold the pipes
/// for its whole life — and such a process is left running (a step may start a daemon).
/// At the timeout, and when the attempt is dropped (the controller shuts down, a leader's term
/// ends), the whole group is stopped: SIGTERM, SIGKILL after [`COMMAND_KILL_GRACE_MS`]; a timed-out
/// attempt ends only once the group is gone, so a retry never overlaps what it started.
async fn command(step: &Step, order: &RunbookOrder) -> Result<String, Failure> {
    let program = step
        .program
        .as_deref()
        .ok_or_else(|| Failure::Retryable("command step without program".into()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(step.timeout_ms);
    let from = order.from.as_ref().map(|p| p.active.as_str()).unwrap_or("");
    let serving: Vec<&str> = order.to.serving.iter().map(|r| r.as_str()).collect();
    let mut child = tokio::process::Command::new(program)
        .args(&step.args)
        .env("SWITCHYARD_GENERATION", order.generation.0.to_string())
        .env("SWITCHYARD_FROM", from)
        .env("SWITCHYARD_TO", order.to.active.as_str())
        .env("SWITCHYARD_SERVING", serving.join(","))
        .env(
            "SWITCHYARD_KIND",
            serde_json::to_value(order.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::Retryable(format!("cannot start {program}: {e}")))?;
    let stdout = OutputTail::read(child.stdout.take());
    let stderr = OutputTail::read(child.stderr.take());
    let group = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw);
    let mut running = Running {
        child: Some(child),
        group,
    };
    let waited = tokio::select! {
        status = running.wait() => Some(status),
        () = tokio::time::sleep_until(deadline) => None,
    };
    let Some(status) = waited else {
        running.stop().await;
        let output = drained_output(&stdout, &stderr).await;
        return Err(Failure::Retryable(format!(
            "timed out after {} ms: its process group was stopped (SIGTERM, SIGKILL after {COMMAND_KILL_GRACE_MS} ms){}",
            step.timeout_ms,
            if output.is_empty() {
                String::new()
            } else {
                format!(": {output}")
            }
        )));
    };
    let status = status.map_err(|e| Failure::Retryable(format!("waiting for {program}: {e}")))?;
    let output = drained_output(&stdout, &stderr).await;
    if status.success() {
        Ok(format!("{program} exited 0"))
    } else {
        Err(Failure::Retryable(format!("{program} failed ({status}): {output}")))
    }
}

/// The last bytes of a command's stdout or stderr, read to the end by a task of its own.
struct OutputTail {
    kept: Arc<Mutex<Tail>>,
    /// Ends at the pipe's end (every holder closed it).
    reader: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// Whether bytes before the kept ones were dropped.
    cut: bool,
}

impl OutputTail {
    fn read(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> OutputTail {
        let kept = Arc::new(Mutex::new(Tail::default()));
        let reader = pipe.map(|mut pipe| {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                loop {
                    match pipe.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut tail = kept.lock().unwrap_or_else(|e| e.into_inner());
                            tail.bytes.extend_from_slice(&buffer[..n]);
                            // Trimmed in halves, so each byte is moved a bounded number of times.
                            if tail.bytes.len() > 2 * COMMAND_OUTPUT_TAIL_BYTES {
                                let excess = tail.bytes.len() - COMMAND_OUTPUT_TAIL_BYTES;
                                tail.bytes.drain(..excess);
                                tail.cut = true;
                            }
                        }
                    }
                }
            })
        });
        OutputTail { kept, reader }
    }

    /// The kept tail as text: at most [`COMMAND_OUTPUT_TAIL_BYTES`], `…` first when cut.
    fn text(&self) -> String {
        let tail = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let start = tail.bytes.len().saturating_sub(COMMAND_OUTPUT_TAIL_BYTES);
        let text = String::from_utf8_lossy(&tail.bytes[start..]);
        // A cut may fall inside a character: its remains are dropped.
        let text = text.trim_start_matches(char::REPLACEMENT_CHARACTER).trim();
        if tail.cut || start > 0 {
            format!("…{text}")
        } else {
            text.to_string()
        }
    }
}

/// Waits at most [`COMMAND_DRAIN_AFTER_EXIT_MS`] for both pipes to end, then answers the
/// stderr tail (the stdout tail when stderr is empty). A reader still going (a background
/// process holds the pipe) goes on discarding, so that process never writes to a closed pipe.
async fn drained_output(stdout: &OutputTail, stderr: &OutputTail) -> String {
    let drained = async {
        for reader in [&stdout.reader, &stderr.reader].into_iter().flatten() {
            while !reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(COMMAND_DRAIN_AFTER_EXIT_MS), drained).await;
    let text = stderr.text();
    if text.is_empty() { stdout.text() } else { text }
}

/// A command's child and its process group until the child is reaped. Dropped before (the
/// attempt abandoned: the controller shutting down, a leader's term ended), it stops the group
/// from a thread of its own — SIGTERM at once, SIGKILL after the grace — and
/// [`wait_for_stopped_commands`] waits for those threads.
struct Running {
    child: Option<tokio::process::Child>,
    group: Option<Pid>,
}

impl Running {
    /// Waits for the child to exit (and reaps it); the group is left as it is.
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(std::io::Error::other("already waited for"));
        };
        let status = child.wait().await;
        self.child = None;
        status
    }

    /// SIGTERM to the group; once the child exited and nothing is left in the group, done, else
    /// SIGKILL to the group at the grace's end; the child reaped.
    async fn stop(&mut self) {
        if let Some(group) = self.group {
            let _ = rustix::process::kill_process_group(group, Signal::TERM);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(COMMAND_KILL_GRACE_MS);
        loop {
            if let Some(child) = self.child.as_mut()
                && !matches!(child.try_wait(), Ok(None))
            {
                self.child = None;
            }
            if self.child.is_none() && !group_alive(self.group) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(COMMAND_STOP_POLL_MS)).await;
        }
        if let Some(group) = self.group {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.child = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let group = self.group;
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, Signal::TERM);
        }
        let stopping = std::thread::Builder::new().name("command-stop".into()).spawn(move || {
            let deadline = Instant::now() + Duration::from_millis(COMMAND_KILL_GRACE_MS);
            let mut exited = false;
            while Instant::now() < deadline {
                exited = exited || !matches!(child.try_wait(), Ok(None));
                if exited && !group_alive(group) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(COMMAND_STOP_POLL_MS));
            }
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
            let _ = child.start_kill();
            // SIGKILL is not refused: the child is reaped within moments.
            while matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(COMMAND_STOP_POLL_MS));
            }
        });
        match stopping {
            Ok(thread) => STOPPING.lock().unwrap_or_else(|e| e.into_inner()).push(thread),
            Err(_) => {
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
            }
        }
    }
}

/// Whether any process is left in `group` (the child itself, once reaped, no longer counts).
fn group_alive(group: Option<Pid>) -> bool {
    group.is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok())
}

/// The threads stopping the process groups of abandoned command steps.
static STOPPING: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits until every command step abandoned so far has had its process group stopped (at most
/// [`COMMAND_KILL_GRACE_MS`] and moments more). The controller calls it on its way out, after
/// its runtime dropped the runbook in flight: without it the process could exit before the
/// SIGKILL of a group that ignores SIGTERM.
pub fn wait_for_stopped_commands() {
    let threads = std::mem::take(&mut *STOPPING.lock().unwrap_or_else(|e| e.into_inner()));
    for thread in threads {
        let _ = thread.join();
    }
}
