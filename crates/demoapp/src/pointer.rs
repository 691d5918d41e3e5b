//! Following the active-region pointer: which region takes writes right now.
//!
//! The controller serves `GET /v1/active-region` as `{"region": "...", "generation": N}` and
//! long-polls with `?wait_generation=N&timeout_ms=T` (answering when the generation moved or
//! the wait ran out). The watcher asks without waiting first, then long-polls; if the server
//! answers at once with an unchanged generation (no long-poll support), it falls back to
//! polling every [`POLL_INTERVAL_MS`]. [`PointerView::accept`] is the one rule: a pointer
//! never goes back to an older generation, so a delayed answer cannot undo a failover.

use std::time::Duration;

use bytes::Bytes;
use common::repeated::{Failed, Repeated, SUMMARY_INTERVAL_MS};
use common::tls_client::Connector;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long one long-poll asks the controller to wait.
pub const WAIT_MS: u64 = 10_000;
/// Extra time allowed for the answer beyond the requested wait.
pub const ANSWER_SLACK_MS: u64 = 2_000;
/// Least time between two requests that found nothing new.
pub const POLL_INTERVAL_MS: u64 = 500;
/// Pause after a failed request before the next.
pub const RETRY_MS: u64 = 500;
/// Largest pointer document read.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Without an answer from the controller for this long, the pointer counts as stale.
pub const STALE_MS_DEFAULT: u64 = 30_000;

/// The pointer document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveRegion {
    pub region: String,
    pub generation: u64,
}

/// What the shop knows of the pointer.
#[derive(Clone, Debug, Default)]
pub struct PointerView {
    pub active: Option<ActiveRegion>,
    /// Last successful answer; `None` with `active` set means a fixed pointer (no controller).
    pub answered_at: Option<Instant>,
    /// Why the last request failed, if it did.
    pub error: Option<String>,
    /// True when there is no controller: the local region takes writes.
    pub fixed: bool,
}

impl PointerView {
    /// The local region takes writes, always.
    pub fn fixed(region: &str) -> PointerView {
        PointerView {
            active: Some(ActiveRegion {
                region: region.to_string(),
                generation: 0,
            }),
            answered_at: None,
            error: None,
            fixed: true,
        }
    }

    /// Takes an answer unless it is older than what is known, or more than
    /// `GENERATION_STEP_MAX` newer (forged or corrupt: it would make every genuine answer look
    /// old). Returns whether the region or generation changed.
    pub fn accept(&mut self, answer: ActiveRegion, now: Instant) -> bool {
        self.answered_at = Some(now);
        self.error = None;
        match &self.active {
            Some(current) if answer.generation < current.generation => false,
            Some(current) if answer.generation - current.generation > GENERATION_STEP_MAX => {
                self.error = Some(format!(
                    "refused generation {}: more than {GENERATION_STEP_MAX} above {}",
                    answer.generation, current.generation
                ));
                false
            }
            Some(current) if *current == answer => false,
            _ => {
                self.active = Some(answer);
                true
            }
        }
    }

    /// Whether writes may follow the pointer at `now`: known, and heard from recently.
    pub fn usable(&self, now: Instant, stale_ms: u64) -> Result<&ActiveRegion, String> {
        self.reachable(now, stale_ms)?;
        self.active.as_ref().ok_or_else(|| match &self.error {
            Some(error) => format!("active region unknown: {error}"),
            None => "active region unknown: no answer from the controller yet".to_string(),
        })
    }

    /// Whether the controller answered recently (whatever it answered). An instance whose
    /// controller has not chosen a region yet is still healthy: it serves reads, and the
    /// controller needs healthy instances to choose one.
    pub fn reachable(&self, now: Instant, stale_ms: u64) -> Result<(), String> {
        if self.fixed {
            return Ok(());
        }
        match self.answered_at {
            Some(at) if now.duration_since(at) <= Duration::from_millis(stale_ms) => Ok(()),
            Some(_) => Err(format!(
                "active-region pointer stale: no answer from the controller for over {stale_ms} ms ({})",
                self.error.as_deref().unwrap_or("no error recorded")
            )),
            None => Err(format!(
                "active-region pointer unknown: {}",
                self.error.as_deref().unwrap_or("no answer from the controller yet")
            )),
        }
    }

    /// Records an answer without a region: the controller is there but has not chosen.
    pub fn accept_unchosen(&mut self, generation: u64, now: Instant) {
        self.answered_at = Some(now);
        if self.active.is_none() {
            self.error = Some(format!(
                "the controller has not chosen an active region yet (generation {generation})"
            ));
        }
    }
}

/// The resource URL: a bare `http://HOST:PORT` (or `https://`) means
/// `http://HOST:PORT/v1/active-region`.
pub fn resource_url(pointer: &str) -> Result<String, String> {
    let trimmed = pointer.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("pointer URL '{pointer}' must look like http://127.0.0.1:7000/v1/active-region (or https://)")
        })?;
    if rest.is_empty() {
        return Err(format!("pointer URL '{pointer}' has no host"));
    }
    Ok(if rest.contains('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/active-region")
    })
}

/// The controller's answer: `region` is null until it has chosen one.
#[derive(Deserialize)]
struct PointerWire {
    region: Option<String>,
    generation: u64,
}

/// Watches the pointer at `url` until the receiver side is gone; `token` is sent as
/// `Authorization: Bearer` (the controller's `--token-file`). Several watchers (one per
/// controller member) may share `view`.
pub async fn watch(url: String, token: Option<String>, view: std::sync::Arc<watch::Sender<PointerView>>) {
    // `http://` or `https://` (verified against the process's trust: `--ca-file`).
    let connector = Connector::new(common::tls_client::process_config());
    let client: Client<Connector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    // Retried every RETRY_MS: the first failure of an outage is logged, then a summary at
    // most every SUMMARY_INTERVAL_MS, and its end.
    let mut failures = Repeated::new(SUMMARY_INTERVAL_MS);
    loop {
        if view.is_closed() {
            return;
        }
        let known = view.borrow().active.as_ref().map(|a| a.generation);
        let request_url = match known {
            Some(generation) => format!(
                "{url}{}wait_generation={generation}&timeout_ms={WAIT_MS}",
                if url.contains('?') { '&' } else { '?' }
            ),
            None => url.clone(),
        };
        let started = Instant::now();
        let fetched = fetch(&client, &request_url, token.as_deref()).await;
        if fetched.is_ok()
            && let Some(back) = failures.success(failures.now_ms())
        {
            tracing::info!(
                %url, failures = back.failures, outage_ms = back.outage_ms,
                "active-region pointer reachable again"
            );
        }
        match fetched {
            Ok(None) => {
                let generation = view.borrow().active.as_ref().map_or(0, |a| a.generation);
                view.send_modify(|v| v.accept_unchosen(generation, Instant::now()));
                tokio::time::sleep_until(started + Duration::from_millis(POLL_INTERVAL_MS)).await;
            }
            Ok(Some(answer)) => {
                let mut changed = false;
                view.send_modify(|v| changed = v.accept(answer.clone(), Instant::now()));
                if changed {
                    tracing::info!(region = %answer.region, generation = answer.generation, "active region changed");
                } else {
                    // Nothing new: never ask faster than the poll interval.
                    tokio::time::sleep_until(started + Duration::from_millis(POLL_INTERVAL_MS)).await;
                }
            }
            Err(error) => {
                let region = view.borrow().active.as_ref().map(|a| a.region.clone());
                let kept = region.as_deref().unwrap_or("none known yet");
                match failures.failure(failures.now_ms()) {
                    Failed::First => tracing::warn!(
                        %url, %error, kept_region = kept, retry_ms = RETRY_MS,
                        "active-region pointer unavailable: keeping the last known active region and retrying (further failures are summed up at most every {SUMMARY_INTERVAL_MS} ms)"
                    ),
                    Failed::Summary { failures, outage_ms } => tracing::warn!(
                        %url, %error, failures, outage_ms, kept_region = kept,
                        "active-region pointer still unavailable: keeping the last known active region and retrying"
                    ),
                    Failed::Quiet => {}
                }
                // A member that fails says so only while no other one answers.
                view.send_modify(|v| v.error = Some(error));
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    }
}

async fn fetch(
    client: &Client<Connector, Empty<Bytes>>,
    url: &str,
    token: Option<&str>,
) -> Result<Option<ActiveRegion>, String> {
    let mut request = hyper::Request::get(url);
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("bad pointer URL {url}: {e}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        let wire = serde_json::from_slice::<PointerWire>(&body).map_err(|e| {
            format!("GET {url}: expected {{\"region\": ..., \"generation\": N}}, got an unreadable answer: {e}")
        })?;
        Ok(wire.region.map(|region| ActiveRegion {
            region,
            generation: wire.generation,
        }))
    };
    tokio::time::timeout(Duration::from_millis(WAIT_MS + ANSWER_SLACK_MS), exchange)
        .await
        .map_err(|_| format!("GET {url}: no answer within {} ms", WAIT_MS + ANSWER_SLACK_MS))?
}

/// How far above the known generation an answer may be (generations grow by one per runbook).
pub const GENERATION_STEP_MAX: u64 = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, generation: u64) -> ActiveRegion {
        ActiveRegion {
            region: name.to_string(),
            generation,
        }
    }

    #[test]
    fn never_goes_back_to_an_older_generation() {
        let now = Instant::now();
        let mut view = PointerView::default();
        assert!(view.usable(now, 1000).is_err());
        view.accept_unchosen(0, now);
        assert!(view.reachable(now, 1000).is_ok(), "answered, though without a region");
        let error = view.usable(now, 1000).expect_err("no region to write to");
        assert!(error.contains("not chosen"), "{error}");
        assert!(view.accept(region("us-east-1", 3), now));
        assert!(!view.accept(region("us-east-1", 3), now), "same answer, no change");
        assert!(view.accept(region("eu-west-1", 4), now));
        assert!(
            !view.accept(region("us-east-1", 3), now),
            "a late, older answer is ignored"
        );
        assert_eq!(view.usable(now, 1000), Ok(&region("eu-west-1", 4)));
        assert!(
            !view.accept(region("us-east-1", u64::MAX), now),
            "a generation far ahead is refused"
        );
        assert_eq!(view.usable(now, 1000), Ok(&region("eu-west-1", 4)));
        assert!(view.accept(region("us-east-1", 4 + GENERATION_STEP_MAX), now));
    }

    #[test]
    fn a_silent_controller_makes_the_pointer_stale() {
        let start = Instant::now();
        let mut view = PointerView::default();
        view.accept(region("us-east-1", 1), start);
        view.error = Some("connection refused".to_string());
        let later = start + Duration::from_millis(1500);
        let error = view.usable(later, 1000).expect_err("stale");
        assert!(
            error.contains("stale") && error.contains("connection refused"),
            "{error}"
        );
        assert!(PointerView::fixed("r").usable(later, 1000).is_ok());
    }

    #[test]
    fn resource_urls() {
        assert_eq!(
            resource_url("http://127.0.0.1:7000").as_deref(),
            Ok("http://127.0.0.1:7000/v1/active-region")
        );
        assert_eq!(
            resource_url("http://127.0.0.1:7000/custom/path").as_deref(),
            Ok("http://127.0.0.1:7000/custom/path")
        );
        assert_eq!(
            resource_url("https://controller.example:7000").as_deref(),
            Ok("https://controller.example:7000/v1/active-region")
        );
        assert!(resource_url("127.0.0.1:7000").is_err());
    }
}
