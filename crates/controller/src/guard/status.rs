//! What a guard saw and did, for its `/health` and `/metrics` (`switchyard guard --listen`):
//! [`run`](super::run) records every round here ([`Status::round`]); the two answers are
//! rendered from it ([`Status::health`], [`Status::openmetrics`]), pure functions of the
//! status and the time, so a guard whose rounds stall shows it (`stuck`) however it stalled.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use providers::db::guard::{GuardOutcome, GuardReport};

use super::{Decision, GUARD_POLL_MS, GUARD_READ_TIMEOUT_MS, Heard, Why};

/// `/health` answers `stuck` (503) when no round has ended for this long: a round takes one
/// read of the members and one fence of the servers at most, each bounded, three times over.
pub const ROUND_STALE_MS: u64 = 3 * (GUARD_POLL_MS + GUARD_READ_TIMEOUT_MS + providers::db::guard::GUARD_SERVER_MS);
/// Servers (step, address) whose last outcome is kept; the configuration bounds them, this
/// bounds the memory whatever it says.
pub const SERVERS_MAX: usize = 1_024;
/// Members' problems of the last round kept for `/health`.
pub const PROBLEMS_MAX: usize = 16;

/// One server's last outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerState {
    /// `fenced`, `paused`, `refusing`, `promoted`, `unfenced`, `kept`, `failed`, `interrupted`.
    outcome: &'static str,
    /// The outcome as the log says it.
    detail: String,
}

/// What the guard saw and did. Times are milliseconds on the guard's monotonic clock.
#[derive(Clone, Debug, Default)]
pub struct Status {
    region: String,
    members: usize,
    isolation_fence_ms: Option<u64>,
    rounds: u64,
    last_round_end_ms: Option<u64>,
    last_round_ms: u64,
    /// `hold`, `fence` or `unfence`.
    decision: &'static str,
    reason: Option<String>,
    /// `elsewhere` or `isolated` while fencing.
    reason_kind: Option<&'static str>,
    /// `fresh`, `nothing` or `every_member_stale`.
    heard: &'static str,
    active_region: Option<String>,
    generation: Option<u64>,
    moving: bool,
    last_fresh_ms: Option<u64>,
    problems: Vec<String>,
    isolation_fenced: Vec<String>,
    servers: BTreeMap<(String, String), ServerState>,
    /// Rounds that fenced, by reason kind; rounds that unfenced.
    fence_rounds: BTreeMap<&'static str, u64>,
    unfence_rounds: u64,
    /// Outcomes per (step, server, outcome), counted.
    outcomes: BTreeMap<(String, String, &'static str), u64>,
    state_file_error: Option<String>,
}

fn outcome_name(outcome: &GuardOutcome) -> &'static str {
    match outcome {
        GuardOutcome::Fenced { .. } => "fenced",
        GuardOutcome::Paused => "paused",
        GuardOutcome::Refusing => "refusing",
        GuardOutcome::Promoted { .. } => "promoted",
        GuardOutcome::Unfenced => "unfenced",
        GuardOutcome::Kept(_) => "kept",
        GuardOutcome::Failed(_) => "failed",
        GuardOutcome::Interrupted(_) => "interrupted",
    }
}

fn failing(outcome: &str) -> bool {
    matches!(outcome, "failed" | "interrupted")
}

/// Milliseconds as seconds for a gauge.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    step: String,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    step: String,
    server: String,
    outcome: String,
}

impl Status {
    pub fn new(region: &str, members: usize, isolation_fence_ms: Option<u64>) -> Status {
        Status {
            region: region.to_string(),
            members,
            isolation_fence_ms,
            decision: "hold",
            heard: "nothing",
            ..Status::default()
        }
    }

    /// A round that began asking at `began_ms` heard `heard` (and `problems` from members that
    /// gave no fresh answer) and decided `decision`.
    pub fn heard(&mut self, began_ms: u64, heard: &Heard, problems: &[String], decision: &Decision) {
        match heard {
            Heard::Fresh {
                region,
                generation,
                moving,
            } => {
                self.heard = "fresh";
                self.active_region.clone_from(region);
                self.generation = Some(*generation);
                self.moving = moving.is_some();
                self.last_fresh_ms = Some(began_ms);
            }
            Heard::Nothing => self.heard = "nothing",
            Heard::EveryMemberStale { region, generation } => {
                self.heard = "every_member_stale";
                self.active_region.clone_from(region);
                self.generation = Some(*generation);
                self.moving = false;
            }
        }
        self.problems = problems.iter().take(PROBLEMS_MAX).cloned().collect();
        let (name, reason, kind) = match decision {
            Decision::Hold => ("hold", None, None),
            Decision::Fence(why) => {
                let kind = match why {
                    Why::Elsewhere { .. } => "elsewhere",
                    Why::Isolated { .. } => "isolated",
                };
                *self.fence_rounds.entry(kind).or_default() += 1;
                ("fence", Some(why.to_string()), Some(kind))
            }
            Decision::Unfence { servers, .. } => {
                self.unfence_rounds += 1;
                (
                    "unfence",
                    Some(format!("undoing the isolation fence of {}", servers.join(", "))),
                    None,
                )
            }
        };
        self.decision = name;
        self.reason = reason;
        self.reason_kind = kind;
    }

    /// What one step's servers ended as this round.
    pub fn reports(&mut self, step: &str, reports: &[GuardReport]) {
        for report in reports {
            let outcome = outcome_name(&report.outcome);
            let key = (step.to_string(), report.address.clone());
            if self.servers.len() >= SERVERS_MAX && !self.servers.contains_key(&key) {
                continue;
            }
            *self
                .outcomes
                .entry((step.to_string(), report.address.clone(), outcome))
                .or_default() += 1;
            self.servers.insert(
                key,
                ServerState {
                    outcome,
                    detail: report.to_string(),
                },
            );
        }
    }

    /// A round ended at `now_ms`, having begun at `began_ms`; `isolation_fenced`: the servers
    /// an isolation fence holds now.
    pub fn round(&mut self, began_ms: u64, now_ms: u64, isolation_fenced: Vec<String>) {
        self.rounds += 1;
        self.last_round_end_ms = Some(now_ms);
        self.last_round_ms = now_ms.saturating_sub(began_ms);
        self.isolation_fenced = isolation_fenced;
    }

    /// The state file could not be written (`Some`), or was written (`None`).
    pub fn state_file(&mut self, error: Option<String>) {
        self.state_file_error = error;
    }

    /// `/health` at `now_ms`: 200 with `ok` while rounds end within [`ROUND_STALE_MS`]; 503
    /// with `starting` before the first round ends, `stuck` when none has ended for that long.
    pub fn health(&self, now_ms: u64) -> (u16, serde_json::Value) {
        let since_round = self.last_round_end_ms.map(|end| now_ms.saturating_sub(end));
        let (code, status) = match since_round {
            None => (503, "starting"),
            Some(ms) if ms > ROUND_STALE_MS => (503, "stuck"),
            Some(_) => (200, "ok"),
        };
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|((step, server), state)| {
                serde_json::json!({
                    "step": step,
                    "server": server,
                    "outcome": state.outcome,
                    "detail": state.detail,
                })
            })
            .collect();
        let failing_servers = self.servers.values().filter(|s| failing(s.outcome)).count();
        let body = serde_json::json!({
            "status": status,
            "region": self.region,
            "rounds": self.rounds,
            "last_round_ago_ms": since_round,
            "last_round_ms": self.last_round_ms,
            "round_stale_ms": ROUND_STALE_MS,
            "decision": self.decision,
            "reason": self.reason,
            "heard": self.heard,
            "active_region": self.active_region,
            "generation": self.generation,
            "moving": self.moving,
            "fresh_answer_ago_ms": self.last_fresh_ms.map(|at| now_ms.saturating_sub(at)),
            "isolation_fence_ms": self.isolation_fence_ms,
            "members": self.members,
            "member_problems": self.problems,
            "isolation_fenced": self.isolation_fenced,
            "servers": servers,
            "servers_failing": failing_servers,
            "state_file_error": self.state_file_error,
        });
        (code, body)
    }

    /// `/metrics` at `now_ms`, as OpenMetrics text (prefix `switchyard_guard`).
    pub fn openmetrics(&self, now_ms: u64) -> String {
        let mut registry = Registry::with_prefix("switchyard_guard");
        let rounds = Counter::<u64>::default();
        rounds.inc_by(self.rounds);
        registry.register(
            "rounds",
            "Rounds the guard finished (a read of every member, and the fence while it holds)",
            rounds,
        );
        let since_round = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        since_round.set(
            self.last_round_end_ms
                .map_or(f64::NAN, |end| seconds(now_ms.saturating_sub(end))),
        );
        registry.register(
            "last_round_age_seconds",
            "Time since the last round ended (NaN before the first); /health says stuck past round_stale_ms",
            since_round,
        );
        let round_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        round_seconds.set(seconds(self.last_round_ms));
        registry.register(
            "last_round_duration_seconds",
            "How long the last round took",
            round_seconds,
        );
        let fresh = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        fresh.set(
            self.last_fresh_ms
                .map_or(f64::NAN, |at| seconds(now_ms.saturating_sub(at))),
        );
        registry.register(
            "fresh_answer_age_seconds",
            "Time since a controller member last gave a fresh pointer (NaN: none yet); the isolation fence starts past isolation_fence_ms",
            fresh,
        );
        let fencing: Family<ReasonLabels, Gauge> = Family::default();
        for kind in ["elsewhere", "isolated"] {
            fencing
                .get_or_create(&ReasonLabels { reason: kind.into() })
                .set(i64::from(self.reason_kind == Some(kind)));
        }
        registry.register(
            "fencing",
            "1 while the guard fences this region's primaries, by reason: elsewhere (another region is active), isolated (no fresh answer for isolation_fence_ms)",
            fencing,
        );
        let fence_rounds: Family<ReasonLabels, Counter> = Family::default();
        for kind in ["elsewhere", "isolated"] {
            fence_rounds
                .get_or_create(&ReasonLabels { reason: kind.into() })
                .inc_by(self.fence_rounds.get(kind).copied().unwrap_or(0));
        }
        registry.register("fence_rounds", "Rounds that fenced, by reason", fence_rounds);
        let unfence_rounds = Counter::<u64>::default();
        unfence_rounds.inc_by(self.unfence_rounds);
        registry.register("unfence_rounds", "Rounds that undid an isolation fence", unfence_rounds);
        let generation = Gauge::<i64>::default();
        generation.set(self.generation.map_or(0, |g| i64::try_from(g).unwrap_or(i64::MAX)));
        registry.register(
            "generation",
            "The newest active-region generation the members named (0: none yet)",
            generation,
        );
        let problems = Gauge::<i64>::default();
        problems.set(i64::try_from(self.problems.len()).unwrap_or(i64::MAX));
        registry.register(
            "member_problems",
            "Controller members that gave no fresh pointer in the last round",
            problems,
        );
        let isolation = Gauge::<i64>::default();
        isolation.set(i64::try_from(self.isolation_fenced.len()).unwrap_or(i64::MAX));
        registry.register(
            "isolation_fenced_servers",
            "Servers an isolation fence holds now (the guard unfences only these)",
            isolation,
        );
        let failing_family: Family<ServerLabels, Gauge> = Family::default();
        for ((step, server), state) in &self.servers {
            failing_family
                .get_or_create(&ServerLabels {
                    step: step.clone(),
                    server: server.clone(),
                })
                .set(i64::from(failing(state.outcome)));
        }
        registry.register(
            "server_failing",
            "1 when the server's last fence or unfence failed or was cut short (the next round tries again)",
            failing_family,
        );
        let outcomes: Family<OutcomeLabels, Counter> = Family::default();
        for ((step, server, outcome), count) in &self.outcomes {
            outcomes
                .get_or_create(&OutcomeLabels {
                    step: step.clone(),
                    server: server.clone(),
                    outcome: (*outcome).to_string(),
                })
                .inc_by(*count);
        }
        registry.register(
            "server_outcomes",
            "What fence and unfence rounds found or did per server: fenced, paused, refusing, promoted, unfenced, kept, failed, interrupted",
            outcomes,
        );
        let state_file = Gauge::<i64>::default();
        state_file.set(i64::from(self.state_file_error.is_some()));
        registry.register(
            "state_file_failing",
            "1 when the last write of the state file failed (a restart would forget the isolation fence)",
            state_file,
        );
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text = "# EOF\n".to_string();
        }
        text
    }
}

/// The status shared between the rounds and the HTTP server, with the clock both read.
pub struct StatusHandle {
    started: std::time::Instant,
    status: std::sync::Mutex<Status>,
}

impl StatusHandle {
    pub fn new(status: Status) -> std::sync::Arc<StatusHandle> {
        std::sync::Arc::new(StatusHandle {
            started: std::time::Instant::now(),
            status: std::sync::Mutex::new(status),
        })
    }

    /// Milliseconds since the handle was made: the guard's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        // A panic while holding it cannot leave a half-written status that matters more than
        // the guard going on: take it anyway.
        let mut status = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut status);
    }

    fn read<T>(&self, view: impl FnOnce(&Status, u64) -> T) -> T {
        let now = self.now_ms();
        let status = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        view(&status, now)
    }
}

/// `GET /health` and `GET /metrics` of a guard.
pub fn router(handle: std::sync::Arc<StatusHandle>) -> axum::Router {
    use axum::extract::State;
    use axum::response::IntoResponse;
    async fn health(State(handle): State<std::sync::Arc<StatusHandle>>) -> axum::response::Response {
        let (code, body) = handle.read(Status::health);
        let code = axum::http::StatusCode::from_u16(code).unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE);
        (code, axum::Json(body)).into_response()
    }
    async fn metrics(
        State(handle): State<std::sync::Arc<StatusHandle>>,
        headers: axum::http::HeaderMap,
    ) -> axum::response::Response {
        common::metrics::response(&headers, handle.read(Status::openmetrics))
    }
    axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(handle)
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, handle: std::sync::Arc<StatusHandle>) -> std::io::Result<()> {
    axum::serve(listener, router(handle)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(address: &str, outcome: GuardOutcome) -> GuardReport {
        GuardReport {
            address: address.to_string(),
            outcome,
        }
    }

    #[test]
    fn health_is_starting_then_ok_then_stuck_when_rounds_stop() {
        let mut status = Status::new("us", 3, Some(3000));
        let (code, body) = status.health(0);
        assert_eq!((code, body["status"].as_str()), (503, Some("starting")));
        let heard = Heard::Fresh {
            region: Some("eu".into()),
            generation: 7,
            moving: None,
        };
        let why = Why::Elsewhere {
            region: "eu".into(),
            generation: 7,
        };
        status.heard(1_000, &heard, &["m3: timed out".into()], &Decision::Fence(why));
        status.reports("orders", &[report("db1:3306", GuardOutcome::Fenced { ended: 2 })]);
        status.reports("sessions", &[report("r1:6379", GuardOutcome::Failed("refused".into()))]);
        status.round(1_000, 1_300, vec![]);
        let (code, body) = status.health(1_500);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "ok");
        assert_eq!(body["decision"], "fence");
        assert_eq!(body["active_region"], "eu");
        assert_eq!(body["generation"], 7);
        assert_eq!(body["fresh_answer_ago_ms"], 500);
        assert_eq!(body["last_round_ms"], 300);
        assert_eq!(body["servers_failing"], 1);
        assert_eq!(body["member_problems"][0], "m3: timed out");
        assert_eq!(body["servers"][0]["outcome"], "fenced");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("made eu the active region"))
        );
        let (code, body) = status.health(1_300 + ROUND_STALE_MS + 1);
        assert_eq!((code, body["status"].as_str()), (503, Some("stuck")));
    }

    #[test]
    fn metrics_count_rounds_fences_and_outcomes() {
        let mut status = Status::new("us", 1, None);
        for round in 0..3u64 {
            let decision = if round < 2 {
                Decision::Fence(Why::Isolated { silent_ms: 4_000 })
            } else {
                Decision::Unfence {
                    servers: vec!["db1:3306".into()],
                    promoted_since: None,
                }
            };
            status.heard(round * 500, &Heard::Nothing, &[], &decision);
            let outcome = if round < 2 {
                GuardOutcome::Fenced { ended: 0 }
            } else {
                GuardOutcome::Unfenced
            };
            status.reports("orders", &[report("db1:3306", outcome)]);
            status.round(round * 500, round * 500 + 10, vec![]);
        }
        let text = status.openmetrics(1_500);
        for line in [
            "switchyard_guard_rounds_total 3",
            "switchyard_guard_fence_rounds_total{reason=\"isolated\"} 2",
            "switchyard_guard_fence_rounds_total{reason=\"elsewhere\"} 0",
            "switchyard_guard_unfence_rounds_total 1",
            "switchyard_guard_fencing{reason=\"isolated\"} 0",
            "switchyard_guard_server_outcomes_total{step=\"orders\",server=\"db1:3306\",outcome=\"fenced\"} 2",
            "switchyard_guard_server_outcomes_total{step=\"orders\",server=\"db1:3306\",outcome=\"unfenced\"} 1",
            "switchyard_guard_server_failing{step=\"orders\",server=\"db1:3306\"} 0",
            "switchyard_guard_fresh_answer_age_seconds NaN",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn servers_kept_are_bounded() {
        let mut status = Status::new("us", 1, None);
        let reports: Vec<GuardReport> = (0..SERVERS_MAX + 5)
            .map(|i| report(&format!("db{i}:3306"), GuardOutcome::Refusing))
            .collect();
        status.reports("orders", &reports);
        assert_eq!(status.servers.len(), SERVERS_MAX);
        assert_eq!(status.outcomes.len(), SERVERS_MAX);
    }
}
