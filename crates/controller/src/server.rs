//! The controller at run time: takes vantage reports (agents over HTTP, the controller's own
//! checks over a channel), aggregates them with `health::Aggregator`, feeds the verdicts to the
//! engine every tick, executes the engine's commands (runbooks, alerts, audit records) and
//! serves the control API, the agents' endpoints and the active-region pointer.
//!
//! Invariants: the engine is only touched under one lock and only this module does I/O for
//! it; a runbook starts only after its `RunbookStarted` record is durable in the audit log (so
//! a generation is never reused after a crash); every `/v1/*` endpoint checks the caller's role
//! (`auth`), an agent's report and plan only for its own vantage name; while any role has no
//! credential the API only listens on loopback. What a report makes the controller hold and
//! work on is bounded by the configuration (`health::quorum`), and a report refused after
//! authentication is answered, counted and logged (rate-limited), never dropped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::repeated::{Failed, Repeated, SUMMARY_INTERVAL_MS};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::audit::{AuditError, AuditLog, Entry};
use crate::auth::{Access, Caller, Denied, Role};
use crate::client::HttpClient;
use crate::config::Config;
use crate::engine::{
    Command, Engine, Event, Generation, Manual, Note, Placement, RegionId, RegionState, Restored, RunbookOrder,
    RunbookOutcome, Verdict,
};
use crate::ha::incidents::{self, Incident, IncidentList, Pending};
use crate::ha::{Member, Term};
use crate::pointer::{Pointer, PointerValue};
use crate::runbook::{self, DnsAdmin, StepContext};

/// Largest request body (a report of many checks).
pub const REQUEST_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Records `GET /v1/events` returns at most.
pub const EVENTS_LIMIT_MAX: usize = 1000;
/// Runbooks failed in a row after which automation counts as stuck (alert `stuck`).
pub const STUCK_FAILED_RUNBOOKS: u32 = 3;
/// Slack beyond a runbook's worst case (every attempt of every step timing out, with its
/// backoffs) before a runbook still running counts as stuck.
pub const STUCK_RUNBOOK_SLACK_MS: u64 = 10_000;
/// How long a runbook waits for the one it superseded to stop (an aborted task stops at its
/// next poll; a step's processes are killed as it drops) before its first step.
pub const SUPERSEDED_WAIT_MS: u64 = 5_000;
/// How long a follower waits for the leader to take an agent report it passes on.
pub const REPORT_FORWARD_TIMEOUT_MS: u64 = 5_000;
/// How long a follower waits for the leader to answer an operator command it passes on; past
/// it the follower answers 421 naming the leader, for the caller to retry there.
pub const COMMAND_FORWARD_TIMEOUT_MS: u64 = 5_000;
/// Header a follower sets on an operator command it passes on (its member name): the receiver
/// never passes it on again, so a command makes at most one hop.
pub const FORWARDED_BY_HEADER: &str = "x-switchyard-forwarded-by";
/// Reports from the controller's own checks buffered at most.
pub const LOCAL_REPORTS_QUEUE_MAX: usize = 64;
/// Distinct (credential, claimed vantage) pairs of refused reports logged; each is logged once,
/// so a misconfigured or hostile agent cannot flood the log.
pub const FORGED_LOGGED_MAX: usize = 256;
/// A report refused (or with results dropped) is logged at most once per this long for each
/// vantage point and reason: visible, without a hostile or broken sender flooding the log.
pub const REPORT_REFUSAL_LOG_INTERVAL_MS: u64 = 60_000;
/// After a failed write of the open incidents' list to etcd, the next try (unless a newer list
/// comes first, or the term ends). Paging never waits for it.
pub const INCIDENTS_SAVE_RETRY_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to listen on {address} while role(s) {roles} have no token: anyone who can reach it could use them (and fail over your regions)\n    fix: add [[tokens]] for each role (`switchyard token new --role ROLE --name NAME`), or listen on a loopback address such as 127.0.0.1"
    )]
    OpenToNetwork { address: SocketAddr, roles: String },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::EngineConfigError),
    #[error("quorum: {0}")]
    Quorum(#[from] health::quorum::QuorumError),
    #[error("checks: {0}")]
    Checks(#[from] health::runner::RunnerError),
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Security by default: while a role has no credential (so anyone may use it), the controller
/// listens on loopback only.
pub fn check_exposure(address: SocketAddr, access: &Access) -> Result<(), ServerError> {
    let open = access.open_roles();
    if common::secret::open_to_network(address, open.is_empty()) {
        Err(ServerError::OpenToNetwork {
            address,
            roles: open.iter().map(|r| r.name()).collect::<Vec<_>>().join(", "),
        })
    } else {
        Ok(())
    }
}

/// The credentials a controller with `config` and the deprecated control token `token` accepts.
pub fn access(config: &Config, token: Option<&str>) -> Access {
    Access::new(config.credentials.clone(), token)
}

/// What the binary passes besides the config.
#[derive(Default)]
pub struct RunOptions {
    /// The deprecated single control token: roles agent, operator and read (and sent to the
    /// DNS admin API unless there is a DNS token). `[[tokens]]` in the config replace it.
    pub token: Option<String>,
    /// Overrides `[dns] token_file`.
    pub dns_token: Option<String>,
    /// Extra reports fed in process (tests, embedding).
    pub local_reports: Option<mpsc::Receiver<health::Report>>,
    /// Run every configured check from the controller itself, as vantage `[controller] vantage`
    /// (what `switchyard controller` does).
    pub probe_locally: bool,
    /// Start generations above this (after the audit log was lost while DNS still holds a
    /// higher generation; `GET {dns}/v1/health` shows it). Normally 0.
    pub generation_floor: u64,
    /// Serve the API over HTTPS (agents, operators and the dashboard then use `https://`).
    pub tls: Option<Arc<common::http::Tls>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// `load` (at the start of a term) or `save` (bounded).
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    /// `unauthenticated`, `wrong_role` or `other_vantage` (bounded).
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MediaLabels {
    step: String,
    /// The receiving region (the one that lacks the objects).
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VantageLabels {
    vantage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReportRefusedLabels {
    /// A name in `[quorum] vantages`, or `(unknown)` (bounded).
    vantage: String,
    /// `health::quorum::Observed::refusal_code`: `unknown_vantage`, `outdated`, `clock_ahead`
    /// or `too_many_results`.
    reason: String,
}

struct Metrics {
    registry: Registry,
    generation: Gauge,
    region_state: Family<RegionLabels, Gauge>,
    runbooks: Family<OutcomeLabels, Counter>,
    reports: Family<VantageLabels, Counter>,
    reports_refused: Family<ReportRefusedLabels, Counter>,
    results_dropped: Family<VantageLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    paused: Gauge,
    fenced: Gauge,
    alerts_sent: Family<ChannelLabels, Counter>,
    alerts_failed: Family<ChannelLabels, Counter>,
    alerts_dropped: Family<ChannelLabels, Counter>,
    incidents_etcd_errors: Family<OperationLabels, Counter>,
    media_objects: Family<MediaLabels, Gauge>,
    media_bytes: Family<MediaLabels, Gauge>,
    media_oldest: Family<MediaLabels, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard_controller");
        let generation = Gauge::default();
        registry.register(
            "generation",
            "The latest generation (fencing token)",
            generation.clone(),
        );
        let region_state = Family::<RegionLabels, Gauge>::default();
        registry.register(
            "region_state",
            "1 for each region's current state (healthy, suspect, down, recovering)",
            region_state.clone(),
        );
        let runbooks = Family::<OutcomeLabels, Counter>::default();
        registry.register("runbooks", "Runbooks finished, by outcome", runbooks.clone());
        let reports = Family::<VantageLabels, Counter>::default();
        registry.register("reports", "Vantage reports taken into the quorum", reports.clone());
        let reports_refused = Family::<ReportRefusedLabels, Counter>::default();
        registry.register(
            "reports_refused",
            "Vantage reports refused after authentication, by vantage point and reason",
            reports_refused.clone(),
        );
        let results_dropped = Family::<VantageLabels, Counter>::default();
        registry.register(
            "report_results_dropped",
            "Results of taken reports left out: a check and region that are not configured, or given twice",
            results_dropped.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "API requests refused by authentication or role, by code",
            refused.clone(),
        );
        let paused = Gauge::default();
        registry.register("paused", "1 while automation is paused", paused.clone());
        let fenced = Gauge::default();
        registry.register("fenced", "1 while fenced by a newer generation", fenced.clone());
        let alerts_sent = Family::<ChannelLabels, Counter>::default();
        registry.register("alerts_sent", "Alerts delivered, by channel", alerts_sent.clone());
        let alerts_failed = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "alerts_failed",
            "Alerts not delivered after their retries, by channel",
            alerts_failed.clone(),
        );
        let alerts_dropped = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "alerts_dropped",
            "Alerts dropped unsent from a full channel queue (oldest first), by channel",
            alerts_dropped.clone(),
        );
        let incidents_etcd_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "alert_incidents_etcd_errors",
            "Failed loads (at a takeover) and saves of the open alert incidents' list in etcd, by operation; alerts went out all the same",
            incidents_etcd_errors.clone(),
        );
        let media_objects = Family::<MediaLabels, Gauge>::default();
        registry.register(
            "media_missing_objects",
            "Media objects the region lacks of the active region's, by media_sync step (last measurement)",
            media_objects.clone(),
        );
        let media_bytes = Family::<MediaLabels, Gauge>::default();
        registry.register(
            "media_missing_bytes",
            "Bytes of the media objects the region lacks, by media_sync step (last measurement)",
            media_bytes.clone(),
        );
        let media_oldest = Family::<MediaLabels, Gauge>::default();
        registry.register(
            "media_oldest_missing_age_seconds",
            "Age of the oldest media object the region lacks (0: none missing), by media_sync step",
            media_oldest.clone(),
        );
        Metrics {
            media_objects,
            media_bytes,
            media_oldest,
            alerts_sent,
            alerts_failed,
            alerts_dropped,
            incidents_etcd_errors,
            registry,
            generation,
            region_state,
            runbooks,
            reports,
            reports_refused,
            results_dropped,
            refused,
            paused,
            fenced,
        }
    }
}

struct Core {
    engine: Engine,
    aggregator: health::Aggregator,
    audit: AuditLog,
    /// Last verdict per region, to audit changes only.
    verdicts: BTreeMap<String, (health::RegionState, String)>,
    /// Runbooks failed in a row (for the `stuck` alert).
    runbooks_failed_in_row: u32,
    /// What the open `stuck` incident last paged about (`engine::failure_class`).
    stuck_paged: Option<String>,
    /// Where the open `decision` incident goes: a retry to the same placement is no new decision.
    decision_to: Option<Placement>,
    /// Alert incidents restored from the audit log (key and last message), checked once the
    /// engine has evaluated (`reconcile_restored_alerts`), not before `reconcile_after_ms`
    /// unless every region has a verdict.
    restored_alerts: BTreeMap<String, String>,
    reconcile_after_ms: u64,
    /// Conditions whose incident this leader adopted from the group's list in etcd (or a
    /// single controller from its audit log at start): open on the pager already, so the first
    /// raise of each (the condition still holds) is recorded, not sent again.
    adopted: BTreeSet<String>,
    /// Per runbook step, its last attempt since this controller started: what each provider
    /// was last told and what it answered, for `status` and the dashboard.
    last_steps: BTreeMap<String, LastStep>,
    /// Per (media_sync step, receiving region): its last media lag measurement.
    media: BTreeMap<(String, String), MediaFigure>,
    /// The runbook task last started, by generation: cancelled when a newer decision
    /// supersedes it, and waited for before the next runbook's first step.
    runbook: Option<(Generation, tokio::task::JoinHandle<()>)>,
}

/// One `media_lag` measurement, as `status` and the dashboard show it.
#[derive(Clone, Debug, serde::Serialize)]
struct MediaFigure {
    step: String,
    /// The active region, whose media the receiver should hold.
    from: String,
    /// The receiving region.
    to: String,
    objects: Option<u64>,
    bytes: Option<u64>,
    oldest_age_seconds: Option<u64>,
    sample: Vec<String>,
    error: Option<String>,
    #[serde(skip)]
    at_ms: u64,
}

/// A step's last attempt, as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
struct LastStep {
    generation: u64,
    attempt: u32,
    outcome: &'static str,
    detail: String,
    duration_ms: u64,
    at_ms: u64,
}

struct Shared {
    config: Config,
    core: Mutex<Core>,
    pointer: Pointer,
    access: Access,
    /// (caller, claimed vantage) pairs already logged as refused.
    forged_logged: Mutex<BTreeSet<(String, String)>>,
    /// When a refused report (or dropped results) was last logged, per (vantage, reason):
    /// bounded by the vantage points times the reasons.
    report_refusals_logged: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Per vantage point in `[quorum] vantages`: its checks through its `[vantage_paths]`.
    plans: BTreeMap<String, health::AgentPlan>,
    metrics: Metrics,
    base: Instant,
    step_context: StepContext,
    /// `[[alerts]]` channels: sending never waits.
    alerts: providers::alerts::Alerts,
    /// Turns true at shutdown so long-polls answer at once instead of holding it up.
    closing: tokio::sync::watch::Receiver<bool>,
    /// With `[controller.ha]`: this member of the group; it decides and acts only while it
    /// leads.
    ha: Option<Arc<Member>>,
    generation_floor: Generation,
    /// The single control token, if any: a follower passes its own probes' reports on to the
    /// leader with it.
    control_token: Option<String>,
    /// With `[controller.ha]`: the open incidents' list for the task that writes it to etcd
    /// (the latest only; a newer list replaces one not yet written).
    incidents_out: Option<tokio::sync::watch::Sender<Option<Pending>>>,
    /// With `[controller.ha]`: the runbook step whose attempt is under way (its guard in etcd
    /// passed), for `health` and `status`; `None` between steps.
    step_in_flight: Mutex<Option<StepInFlight>>,
}

/// A runbook step being attempted, as `health` and `status` show it (`ha.step_in_flight`).
#[derive(Clone, Debug, serde::Serialize)]
struct StepInFlight {
    step: String,
    generation: u64,
    /// Wall-clock ms when its guard passed and its first attempt began.
    since_ms: u64,
}

/// Clears `Shared::step_in_flight` when the step ends, however it ends (finished, stopped,
/// or its runbook task dropped), unless another runbook's step took the slot since (a
/// superseded runbook that did not stop in time).
struct InFlightGuard<'a> {
    slot: &'a Mutex<Option<StepInFlight>>,
    generation: u64,
}

impl<'a> InFlightGuard<'a> {
    fn enter(slot: &'a Mutex<Option<StepInFlight>>, step: &str, generation: Generation) -> Self {
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(StepInFlight {
            step: step.to_string(),
            generation: generation.0,
            since_ms: wall_ms(),
        });
        InFlightGuard {
            slot,
            generation: generation.0,
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut slot = self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|s| s.generation == self.generation) {
            *slot = None;
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Shared {
    /// Monotonic milliseconds since start (the engine's and the aggregator's clock).
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Steps the engine and executes its commands; returns the manual answer, if any.
    fn feed(self: &Arc<Self>, core: &mut Core, event: Event) -> Option<(bool, String)> {
        let now = self.now_ms();
        let commands = core.engine.step(now, event);
        let answer = self.execute(core, commands);
        self.update_gauges(core);
        answer
    }

    fn execute(self: &Arc<Self>, core: &mut Core, commands: Vec<Command>) -> Option<(bool, String)> {
        let mut answer = None;
        let mut failed_start = Vec::new();
        for command in commands {
            match command {
                Command::Record { generation, note } => {
                    let starting = matches!(note, Note::RunbookStarted(_));
                    if let Err(error) = core.audit.append(wall_ms(), generation, Entry::Engine { note }) {
                        tracing::error!(%error, "cannot write the audit log");
                        if starting {
                            failed_start.push((generation, error.to_string()));
                        }
                    }
                }
                Command::RunRunbook(order) => {
                    if let Some((_, error)) = failed_start.iter().find(|(g, _)| *g == order.generation) {
                        // Never act on a generation that is not durably recorded.
                        let outcome = RunbookOutcome::Failed {
                            step: "audit".into(),
                            error: format!("the audit log could not record the start: {error}"),
                        };
                        let commands = core.engine.step(
                            self.now_ms(),
                            Event::RunbookFinished {
                                generation: order.generation,
                                outcome,
                            },
                        );
                        self.execute(core, commands);
                        continue;
                    }
                    tracing::info!(generation = %order.generation, kind = ?order.kind, to = %order.to.active, reason = %order.reason, "runbook started");
                    // A decision pages once; its runbook's retries (a new generation to the
                    // same placement) are no new decision.
                    if !self.alerts.is_open("decision") || core.decision_to.as_ref() != Some(&order.to) {
                        core.decision_to = Some(order.to.clone());
                        self.raise_alert(
                            core,
                            "decision",
                            &format!(
                                "{} to {} (generation {}): {}",
                                format!("{:?}", order.kind).to_lowercase(),
                                order.to.active,
                                order.generation,
                                order.reason
                            ),
                            order.generation,
                        );
                    }
                    let (last, transitions) = core.engine.hold_timers();
                    let timers = crate::ha::HoldTimers::from_engine(last, &transitions, self.now_ms(), wall_ms());
                    let previous = core.runbook.take().map(|(_, task)| task);
                    let generation = order.generation;
                    let task = self.spawn_runbook(order, timers, previous);
                    core.runbook = Some((generation, task));
                }
                Command::CancelRunbook { generation } => {
                    if let Some((running, task)) = &core.runbook
                        && *running == generation
                        && !task.is_finished()
                    {
                        tracing::warn!(%generation, "runbook superseded by a newer decision: its steps are cancelled");
                        task.abort();
                        self.metrics
                            .runbooks
                            .get_or_create(&OutcomeLabels {
                                outcome: "superseded".into(),
                            })
                            .inc();
                    }
                }
                Command::Alert { key, message } => {
                    tracing::warn!(%key, %message, "alert");
                    let generation = core.engine.generation();
                    self.raise_alert(core, &key, &message, generation);
                }
                Command::Resolved { key } => {
                    let generation = core.engine.generation();
                    core.adopted.remove(&key);
                    let incident = self
                        .alerts
                        .resolve(&key, "the condition ended", generation.0, wall_ms());
                    self.publish_incidents();
                    let entry = Entry::Resolved {
                        key,
                        delivery_pending: incident.as_deref().is_some_and(|i| self.resolve_pending(i)),
                        incident,
                    };
                    if let Err(error) = core.audit.append(wall_ms(), generation, entry) {
                        tracing::error!(%error, "cannot write the audit log");
                    }
                }
                Command::Answer { accepted, reason } => answer = Some((accepted, reason)),
            }
        }
        answer
    }

    /// Raises (or updates) the alert `key` on the channels and records it in the audit log with
    /// its dedup key: a restart (or this member's next term) knows the incident is open, and,
    /// until a `delivered` record follows (`record_deliveries`), that its trigger may not have
    /// reached the pager.
    fn raise_alert(&self, core: &mut Core, key: &str, message: &str, generation: Generation) {
        let adopted = if core.adopted.remove(key) {
            self.alerts.incident_of(key)
        } else {
            None
        };
        let incident = match adopted {
            Some(incident) => {
                tracing::info!(%key, %incident, "the condition still holds: the incident left open (by this controller before its restart, or by the previous leader) stays open and is not paged again");
                incident
            }
            None => self.alerts.raise(key, message, generation.0, wall_ms()),
        };
        let delivery_pending = self
            .alerts
            .open_incidents()
            .iter()
            .any(|open| open.key == key && !open.delivered);
        let entry = Entry::Alert {
            key: key.to_string(),
            message: message.to_string(),
            incident: Some(incident),
            delivery_pending,
        };
        if let Err(error) = core.audit.append(wall_ms(), generation, entry) {
            tracing::error!(%error, "cannot write the audit log");
        }
        self.publish_incidents();
    }

    /// Resolves the alert `key` when its incident is open, and records that.
    fn resolve_alert(&self, core: &mut Core, key: &str, message: &str, generation: Generation) {
        core.adopted.remove(key);
        let Some(incident) = self.alerts.resolve(key, message, generation.0, wall_ms()) else {
            return;
        };
        self.publish_incidents();
        if key == "stuck" {
            core.stuck_paged = None;
        }
        let entry = Entry::Resolved {
            key: key.to_string(),
            delivery_pending: self.resolve_pending(&incident),
            incident: Some(incident),
        };
        if let Err(error) = core.audit.append(wall_ms(), generation, entry) {
            tracing::error!(%error, "cannot write the audit log");
        }
    }

    /// The incidents the audit log holds open (raised, never resolved: the controller stopped,
    /// or this member lost the lead, before their condition ended), with their dedup keys.
    fn own_open_incidents(&self, core: &Core) -> Vec<Incident> {
        core.audit
            .checkpoint()
            .open_alerts
            .iter()
            .map(|(key, alert)| Incident {
                key: key.clone(),
                // Records from before dedup keys were recorded: the key this controller made then.
                incident: alert.incident.clone().unwrap_or_else(|| {
                    format!(
                        "{}/{key}/g{}-{}",
                        self.config.file.controller.vantage, alert.generation, alert.at_ms
                    )
                }),
                opened_at_ms: alert.at_ms,
                message: alert.message.clone(),
                delivered: alert.delivered,
            })
            .collect()
    }

    /// Whether the resolve of `incident` just sent waits for a channel's delivery (false when
    /// no channel takes it: nothing to deliver, so nothing to record later).
    fn resolve_pending(&self, incident: &str) -> bool {
        self.alerts.resolving().iter().any(|open| open.incident == incident)
    }

    /// Records in the audit log the triggers and resolves that finished on every channel
    /// (`Alerts::finished`): one `delivered` record per trigger of an incident (the first
    /// time only) and per resolve the log holds pending. One still followed by another alert
    /// of the incident (queued since) is recorded when that one finishes.
    fn record_deliveries(&self, core: &mut Core, finished: Vec<(String, bool)>) {
        let mut delivered = false;
        for (incident, resolve) in finished {
            if !self.alerts.settled(&incident, resolve) {
                continue;
            }
            let key = if resolve {
                // Out of the group's list (with `[controller.ha]`) even when this member's
                // log does not hold it (a predecessor's, sent again at the takeover).
                delivered |= self.alerts.resolve_delivered(&incident);
                match core.audit.checkpoint().resolving.get(&incident) {
                    Some(pending) => pending.key.clone(),
                    None => continue,
                }
            } else {
                match self.alerts.mark_delivered(&incident) {
                    Some(key) => {
                        delivered = true;
                        key
                    }
                    None => continue,
                }
            };
            tracing::debug!(%key, %incident, resolve, "alert finished on every channel: recorded");
            let generation = core.engine.generation();
            let entry = Entry::Delivered { key, incident, resolve };
            if let Err(error) = core.audit.append(wall_ms(), generation, entry) {
                tracing::error!(%error, "cannot write the audit log");
            }
        }
        if delivered {
            self.publish_incidents();
        }
    }

    /// At start: marks the incidents the audit log holds open as open again, with their dedup
    /// keys, for `reconcile_restored_alerts` to check. A single controller (no
    /// `[controller.ha]`) also adopts them as a new leader adopts the group's list: its audit
    /// log is the only record of what it paged (nobody else resolves its incidents), so the
    /// first raise of a condition that still holds is recorded, not sent again — before, a
    /// restart paged every such condition a second time (the same dedup key, so PagerDuty
    /// merged it, but a webhook, Slack or a mail got a second trigger). An HA member adopts
    /// at the start of its term instead (`adopt_incidents`): its own log may be older than the
    /// group's list.
    ///
    /// A single controller pages again at once (same dedup key: PagerDuty and Opsgenie merge
    /// it) an incident whose trigger the log does not record delivered — it died between
    /// opening the incident and delivering it, and adopting it silently would leave nobody
    /// paged — and sends again a resolve not recorded delivered, which would otherwise leave
    /// the pager open for good.
    fn restore_alerts(&self, core: &mut Core, now: u64) {
        let single = self.ha.is_none();
        let generation = core.engine.generation();
        for open in self.own_open_incidents(core) {
            tracing::info!(key = %open.key, incident = %open.incident, "alert incident still open in the audit log: restored");
            self.alerts.restore(
                &open.key,
                &open.incident,
                open.opened_at_ms,
                &open.message,
                open.delivered,
            );
            if single {
                if !open.delivered {
                    tracing::warn!(key = %open.key, incident = %open.incident, "the trigger of this incident was not recorded delivered (the controller stopped first): paged again");
                    self.raise_alert(core, &open.key, &open.message, generation);
                }
                core.adopted.insert(open.key.clone());
            }
            core.restored_alerts.insert(open.key, open.message);
        }
        if single {
            let resolving = core.audit.checkpoint().resolving.clone();
            for (incident, pending) in resolving {
                tracing::warn!(key = %pending.key, %incident, "the resolve of this incident was not recorded delivered (the controller stopped first): sent again");
                self.alerts.resend_resolve(
                    &pending.key,
                    &incident,
                    "the condition ended (resolve sent again: the controller stopped before delivering it)",
                    pending.generation.0,
                    wall_ms(),
                );
            }
        }
        core.reconcile_after_ms = now.saturating_add(self.config.engine.startup_grace_ms);
    }

    /// At the start of a term, before any alert is sent: adopts the incidents the group's list
    /// in etcd holds open (the previous leader's, with their original dedup keys; a condition
    /// that still holds is not paged again) merged with those of this member's audit log, for
    /// `reconcile_restored_alerts` to check; resolves at once those whose condition this
    /// controller does not raise. Without the list (etcd failed, or it is unreadable) the audit
    /// log alone, as at a start.
    fn adopt_incidents(
        &self,
        core: &mut Core,
        now: u64,
        term: Term,
        loaded: Option<Result<Option<IncidentList>, String>>,
    ) {
        let list = match loaded {
            Some(Ok(Some(list))) => match list.usable_by(term) {
                Ok(()) => Some(list),
                Err(problem) => {
                    self.count_incidents_error("load");
                    tracing::warn!(%problem, "open incidents in etcd");
                    None
                }
            },
            Some(Ok(None)) | None => None,
            Some(Err(error)) => {
                self.count_incidents_error("load");
                tracing::warn!(%error, "cannot load the open incidents from etcd: going by this member's audit log (an incident only the previous leader knew stays open on the pager)");
                None
            }
        };
        let own = self.own_open_incidents(core);
        let known = |key: &str| providers::alerts::EVENTS.contains(&providers::alerts::event_of(key));
        let takeover = incidents::merge(list.as_ref(), &own, known);
        for note in &takeover.notes {
            tracing::info!(%note, "open incidents at the takeover");
        }
        core.adopted.clear();
        let generation = core.engine.generation();
        for adopted in takeover.adopted {
            let open = adopted.incident;
            let from = if adopted.from_group {
                "the group's list in etcd"
            } else {
                "this member's audit log"
            };
            tracing::info!(key = %open.key, incident = %open.incident, from, "alert incident still open: adopted");
            if let Some(replaced) = self.alerts.adopt(&open.as_open(), generation.0, wall_ms()) {
                tracing::info!(key = %open.key, %replaced, incident = %open.incident, "resolved the incident this member held under another dedup key: the group's carries the condition on");
            }
            if adopted.from_group {
                if !open.delivered {
                    // The previous leader opened it and stopped before its trigger reached
                    // every channel: paged again (same dedup key), then adopted.
                    tracing::warn!(key = %open.key, incident = %open.incident, "the trigger of this incident was not recorded delivered by the previous leader: paged again");
                    self.raise_alert(core, &open.key, &open.message, generation);
                }
                core.adopted.insert(open.key.clone());
            }
            core.restored_alerts.insert(open.key, open.message);
        }
        for resolved in takeover.resolving {
            tracing::warn!(key = %resolved.key, incident = %resolved.incident, "the resolve of this incident was not delivered by the previous leader: sent again");
            self.alerts.resend_resolve(
                &resolved.key,
                &resolved.incident,
                "the condition ended (resolve sent again: the previous leader stopped before delivering it)",
                generation.0,
                wall_ms(),
            );
        }
        for open in takeover.unknown {
            tracing::warn!(key = %open.key, incident = %open.incident, "an incident left open names a condition this controller does not raise (another version's, or gone from its configuration): resolved");
            self.alerts.adopt(&open.as_open(), generation.0, wall_ms());
            core.restored_alerts.remove(&open.key);
            self.resolve_alert(
                core,
                &open.key,
                "this condition is not raised by the controller that now leads: resolved at its takeover",
                generation,
            );
        }
        core.reconcile_after_ms = now.saturating_add(self.config.engine.startup_grace_ms);
        self.publish_incidents();
    }

    /// With `[controller.ha]`, while leading: hands the open incidents to the task that writes
    /// them to etcd, when an incident opened or resolved since the last list. Never waits.
    fn publish_incidents(&self) {
        let (Some(ha), Some(out)) = (&self.ha, &self.incidents_out) else {
            return;
        };
        let Some(term) = ha.acting() else { return };
        let open = self.alerts.open_incidents().into_iter().map(|open| Incident {
            key: open.key,
            incident: open.incident,
            opened_at_ms: open.opened_at_ms,
            message: open.message,
            delivered: open.delivered,
        });
        let resolving = self.alerts.resolving().into_iter().map(|open| Incident {
            key: open.key,
            incident: open.incident,
            opened_at_ms: open.opened_at_ms,
            message: open.message,
            delivered: false,
        });
        let list = IncidentList::new(term, ha.name(), wall_ms(), open).with_resolving(resolving);
        out.send_if_modified(|pending| {
            if pending
                .as_ref()
                .is_some_and(|p| p.term == term && p.list.same_incidents(&list))
            {
                return false;
            }
            *pending = Some(Pending { term, list });
            true
        });
    }

    fn count_incidents_error(&self, operation: &str) {
        self.metrics
            .incidents_etcd_errors
            .get_or_create(&OperationLabels {
                operation: operation.into(),
            })
            .inc();
    }

    /// Once the engine has evaluated after a start or takeover (every region has a verdict,
    /// or `startup_grace_ms` passed): resolves the restored incidents whose condition no
    /// longer holds. Those that hold stay open under their dedup key: the engine's own raise
    /// updates them, and its resolve (or a runbook's success) closes them.
    fn reconcile_restored_alerts(&self, core: &mut Core, now: u64) {
        if core.restored_alerts.is_empty() {
            return;
        }
        let status = core.engine.status(now);
        let all_seen = status.regions.iter().all(|r| r.verdict != Verdict::Unknown);
        if !all_seen && now < core.reconcile_after_ms {
            return;
        }
        let work_pending = status.in_flight.is_some() || status.intent != status.observed;
        for (key, message) in std::mem::take(&mut core.restored_alerts) {
            if !self.alerts.is_open(&key) {
                continue;
            }
            let holds = match key.as_str() {
                _ if core.engine.alert_open(&key) => true,
                // A failed runbook still being retried: the engine resolves it at a success.
                "runbook" if work_pending => {
                    core.engine.adopt_alert("runbook", &message);
                    true
                }
                // Resolved by the pending runbook's success.
                "decision" | "stuck" => work_pending,
                "ha_leadership" => self
                    .ha
                    .as_ref()
                    .is_some_and(|ha| ha.acting().is_none() && ha.leader().is_none()),
                _ => false,
            };
            if !holds {
                self.resolve_alert(
                    core,
                    &key,
                    "the condition no longer holds (checked when the controller started or took the lead)",
                    status.generation,
                );
            }
        }
    }

    /// `ha_leadership` (this member stepped down) ends when leadership is settled: this member
    /// leads again, or another member leads.
    fn resolve_settled_leadership(&self, core: &mut Core) {
        let Some(ha) = &self.ha else { return };
        if !self.alerts.is_open("ha_leadership") {
            return;
        }
        let leader = if ha.acting().is_some() {
            Some(ha.name().to_string())
        } else {
            ha.leader().map(|l| l.member).filter(|member| member != ha.name())
        };
        if let Some(leader) = leader {
            let generation = core.engine.generation();
            self.resolve_alert(
                core,
                "ha_leadership",
                &format!("leadership settled: controller member {leader} leads"),
                generation,
            );
        }
    }

    fn update_gauges(&self, core: &Core) {
        for stats in self.alerts.stats() {
            let labels = ChannelLabels {
                channel: stats.channel.clone(),
            };
            for (family, count) in [
                (&self.metrics.alerts_sent, stats.sent),
                (&self.metrics.alerts_failed, stats.failed),
                (&self.metrics.alerts_dropped, stats.dropped),
            ] {
                let counter = family.get_or_create(&labels);
                let seen = counter.get();
                if count > seen {
                    counter.inc_by(count - seen);
                }
            }
        }
        let status = core.engine.status(self.now_ms());
        self.metrics
            .generation
            .set(i64::try_from(status.generation.0).unwrap_or(i64::MAX));
        self.metrics.paused.set(i64::from(status.paused));
        self.metrics.fenced.set(i64::from(status.fenced));
        for region in &status.regions {
            for state in [
                RegionState::Healthy,
                RegionState::Suspect,
                RegionState::Down,
                RegionState::Recovering,
            ] {
                self.metrics
                    .region_state
                    .get_or_create(&RegionLabels {
                        region: region.region.0.clone(),
                        state: state_name(state).into(),
                    })
                    .set(i64::from(region.state == state));
            }
        }
    }

    /// Records each step attempt of the runbook of `generation` in the audit log.
    fn step_recorder(self: &Arc<Self>, generation: Generation) -> impl FnMut(runbook::StepReport) + use<> {
        let reporter = Arc::clone(self);
        move |report| {
            let mut core = reporter.lock();
            let at_ms = wall_ms();
            core.last_steps.insert(
                report.step.clone(),
                LastStep {
                    generation: generation.0,
                    attempt: report.attempt,
                    outcome: report.outcome,
                    detail: report.detail.clone(),
                    duration_ms: report.duration_ms,
                    at_ms,
                },
            );
            let entry = Entry::Step {
                step: report.step,
                attempt: report.attempt,
                outcome: report.outcome.into(),
                detail: report.detail,
                duration_ms: report.duration_ms,
            };
            if let Err(error) = core.audit.append(at_ms, generation, entry) {
                tracing::error!(%error, "cannot write the audit log");
            }
        }
    }

    /// With `[controller.ha]`: the runbook recorded in etcd before it starts (its generation
    /// becomes the counter), the term proven in etcd before every step (and the steps done
    /// recorded), the end recorded. Any refusal stops the runbook before the next step.
    async fn run_guarded(
        self: &Arc<Self>,
        ha: &Member,
        term: Term,
        order: &RunbookOrder,
        timers: &crate::ha::HoldTimers,
    ) -> RunbookOutcome {
        let stop = |step: &str, error: crate::ha::GuardError| RunbookOutcome::Failed {
            step: step.to_string(),
            error: format!("not run: {error}"),
        };
        let applied_earlier = match ha.start_runbook(term, order, timers).await {
            Ok(applied) => applied,
            Err(error) => return stop("etcd", error),
        };
        let mut done: Option<String> = None;
        for step in &self.config.steps {
            if let Err(error) = ha.before_step(term, order, done.as_deref()).await {
                return stop(&step.name, error);
            }
            // An earlier generation of this decision applied the step and etcd recorded it: it
            // is not applied again. The pointer is this member's own: it takes the value that
            // generation published (as a follower takes what etcd records).
            if let Some(&generation) = applied_earlier.get(&step.name) {
                let mut detail = format!("applied under generation {generation} of this decision (recorded in etcd)");
                if step.kind == crate::config::StepKind::Pointer
                    && let Err(error) = self.pointer.publish(order.to.active.as_str(), generation)
                {
                    detail = format!("{detail}; this member's pointer kept its newer value ({error})");
                }
                (self.step_recorder(order.generation))(runbook::StepReport {
                    step: step.name.clone(),
                    attempt: 0,
                    outcome: "skipped",
                    detail,
                    duration_ms: 0,
                });
                done = None;
                continue;
            }
            // The guard's answer may come late (a pause of this process): look at the clock
            // again. What still slips through carries an older generation, which DNS, the
            // pointer and the providers refuse once the next leader applied a newer one.
            if ha.acting() != Some(term) {
                return stop(&step.name, crate::ha::GuardError::NotLeading(term));
            }
            // Each retry of the step asks again: a leader cut off from etcd stops when its
            // lease runs out by its own clock, not after the step's whole retry budget. And the
            // attempt in flight is dropped (its child process killed, its requests abandoned)
            // the moment the term ends: a step may outlast the lease many times over (a media
            // copy, a promotion's wait, a hook), and another member may be acting by then.
            let started = std::time::Instant::now();
            let in_flight = InFlightGuard::enter(&self.step_in_flight, &step.name, order.generation);
            let outcome = tokio::select! {
                biased;
                outcome = runbook::execute_guarded(
                    std::slice::from_ref(step),
                    order,
                    &self.step_context,
                    || match ha.acting() {
                        Some(acting) if acting == term => Ok(()),
                        _ => Err(crate::ha::GuardError::NotLeading(term).to_string()),
                    },
                    self.step_recorder(order.generation),
                ) => outcome,
                () = ha.term_ended(term) => {
                    // No longer under way once it is recorded as dropped.
                    drop(in_flight);
                    let why = format!(
                        "stopped mid-step: {}",
                        crate::ha::GuardError::NotLeading(term)
                    );
                    (self.step_recorder(order.generation))(runbook::StepReport {
                        step: step.name.clone(),
                        attempt: 0,
                        outcome: "stopped",
                        detail: why.clone(),
                        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    });
                    return RunbookOutcome::Failed {
                        step: step.name.clone(),
                        error: why,
                    };
                }
            };
            drop(in_flight);
            if outcome != RunbookOutcome::Succeeded {
                if let Err(error) = ha.finish_runbook(term, order, &outcome).await {
                    tracing::warn!(%error, "could not record the failed runbook in etcd");
                }
                return outcome;
            }
            done = Some(step.name.clone());
        }
        match ha.finish_runbook(term, order, &RunbookOutcome::Succeeded).await {
            Ok(()) => RunbookOutcome::Succeeded,
            Err(error) => stop("etcd", error),
        }
    }

    fn spawn_runbook(
        self: &Arc<Self>,
        order: RunbookOrder,
        timers: crate::ha::HoldTimers,
        previous: Option<tokio::task::JoinHandle<()>>,
    ) -> tokio::task::JoinHandle<()> {
        let shared = Arc::clone(self);
        let term = self.ha.as_ref().map(|ha| ha.acting());
        tokio::spawn(async move {
            let generation = order.generation;
            // A superseded runbook is aborted; its steps' futures (and their processes) are
            // dropped when it next polls. Its first step waits for that, so two runbooks never
            // act at once.
            if let Some(previous) = previous
                && tokio::time::timeout(Duration::from_millis(SUPERSEDED_WAIT_MS), previous)
                    .await
                    .is_err()
            {
                tracing::warn!(%generation, "the superseded runbook did not stop within {SUPERSEDED_WAIT_MS} ms; starting anyway");
            }
            let run = async {
                match (&shared.ha, term) {
                    (None, _) => {
                        runbook::execute(
                            &shared.config.steps,
                            &order,
                            &shared.step_context,
                            shared.step_recorder(generation),
                        )
                        .await
                    }
                    (Some(ha), Some(Some(term))) => shared.run_guarded(ha, term, &order, &timers).await,
                    (Some(_), _) => RunbookOutcome::Failed {
                        step: "etcd".into(),
                        error: "not run: this member does not lead".into(),
                    },
                }
            };
            tokio::pin!(run);
            // A runbook cannot outlast its steps' timeouts, retries and backoffs; one that
            // does is stuck (a hung step or process) and pages while it keeps running.
            let budget_ms = runbook_budget_ms(&shared.config.steps).saturating_add(STUCK_RUNBOOK_SLACK_MS);
            let mut overran = false;
            let outcome = tokio::select! {
                outcome = &mut run => outcome,
                () = tokio::time::sleep(Duration::from_millis(budget_ms)) => {
                    overran = true;
                    {
                        let mut core = shared.lock();
                        shared.raise_alert(
                            &mut core,
                            "stuck",
                            &format!("the runbook of generation {generation} is still running after {budget_ms} ms, longer than its steps' timeouts and retries allow"),
                            generation,
                        );
                    }
                    run.await
                }
            };
            let label = match &outcome {
                RunbookOutcome::Succeeded => "succeeded",
                RunbookOutcome::Failed { .. } => "failed",
                RunbookOutcome::Fenced { .. } => "fenced",
            };
            shared
                .metrics
                .runbooks
                .get_or_create(&OutcomeLabels { outcome: label.into() })
                .inc();
            tracing::info!(%generation, outcome = ?outcome, "runbook finished");
            let mut core = shared.lock();
            // A member that no longer leads decides nothing; its next term starts from etcd.
            if let (Some(ha), Some(term)) = (&shared.ha, term)
                && ha.acting() != term
            {
                tracing::warn!(%generation, "the runbook ended after this member's term; not reported to the engine");
                return;
            }
            // A runbook superseded just as it ended (it was waiting for this lock when it was
            // cancelled) pages and resolves nothing: the newer runbook's alerts are the news.
            if core.engine.in_flight_generation() == Some(generation) {
                shared.alert_on_outcome(&mut core, generation, &outcome, overran);
            }
            shared.feed(&mut core, Event::RunbookFinished { generation, outcome });
        })
    }

    /// `decision` ends when its runbook succeeded, or was fenced (the `fenced` alert takes
    /// over); `stuck` is raised after [`STUCK_FAILED_RUNBOOKS`] failed runbooks in a row, pages
    /// again only when the failing step or its kind of error changes (not at every retry), and
    /// ends at the next success.
    fn alert_on_outcome(&self, core: &mut Core, generation: Generation, outcome: &RunbookOutcome, overran: bool) {
        match outcome {
            RunbookOutcome::Succeeded => {
                core.runbooks_failed_in_row = 0;
                let done = format!("generation {generation} applied: every step succeeded");
                self.resolve_alert(core, "decision", &done, generation);
                self.resolve_alert(core, "stuck", &done, generation);
            }
            RunbookOutcome::Failed { step, error } => {
                core.runbooks_failed_in_row = core.runbooks_failed_in_row.saturating_add(1);
                let class = crate::engine::failure_class(step, error);
                if core.runbooks_failed_in_row >= STUCK_FAILED_RUNBOOKS {
                    if core.stuck_paged.as_ref() != Some(&class) || !self.alerts.is_open("stuck") {
                        let message = format!(
                            "automation is stuck: {} runbooks in a row failed, the last (generation {generation}) at step '{step}': {error}",
                            core.runbooks_failed_in_row
                        );
                        self.raise_alert(core, "stuck", &message, generation);
                        core.stuck_paged = Some(class);
                    }
                } else if overran {
                    self.resolve_alert(core, "stuck", "the overrunning runbook ended", generation);
                }
            }
            RunbookOutcome::Fenced { step, .. } => {
                self.resolve_alert(
                    core,
                    "decision",
                    &format!("generation {generation} was refused as stale at step '{step}': this controller stopped actuating (see the fenced alert)"),
                    generation,
                );
                if overran {
                    self.resolve_alert(core, "stuck", "the overrunning runbook ended", generation);
                }
            }
        }
    }

    /// At the start of a term: the engine restarts from the shared state (rolling forward a
    /// runbook in progress with a new generation), never from this member's past. Called with
    /// the core locked before anything is fed to the engine (a tick, an operator command), so
    /// nothing of the follower's engine (its preferences, its pause) reaches etcd.
    fn take_over(&self, core: &mut Core, now: u64) {
        let Some(ha) = &self.ha else { return };
        if let Some(state) = ha.take_over() {
            // Its hold timers are aged on the clock of the member that wrote them.
            let restored = state.restored(
                self.generation_floor,
                now,
                ha.wall_now_for(&state),
                self.config.engine.min_hold_ms,
            );
            match Engine::new(self.config.engine.clone(), restored) {
                Ok(engine) => core.engine = engine,
                Err(error) => tracing::error!(%error, "cannot restore the engine from etcd"),
            }
            // Incidents the previous leader (or this member, in an earlier term) left open.
            if let Some(term) = ha.acting() {
                let loaded = ha.take_over_incidents();
                self.adopt_incidents(core, now, term, loaded);
            }
        }
    }

    /// One tick: verdicts from the aggregator into the engine.
    fn tick(self: &Arc<Self>) {
        let now = self.now_ms();
        let mut core = self.lock();
        self.take_over(&mut core, now);
        let acting = match &self.ha {
            None => true,
            Some(ha) => ha.acting().is_some(),
        };
        let verdicts = core.aggregator.verdicts(now);
        for region in self.config.region_names() {
            let verdict = verdicts
                .get(&region)
                .cloned()
                .unwrap_or_else(|| core.aggregator.verdict(&region, now));
            let changed = core
                .verdicts
                .get(&region)
                .is_none_or(|(state, _)| *state != verdict.state);
            if changed {
                let generation = core.engine.generation();
                let entry = Entry::Verdict {
                    region: region.clone(),
                    verdict: format!("{:?}", verdict.state).to_lowercase(),
                    reason: verdict.reason.clone(),
                };
                if let Err(error) = core.audit.append(wall_ms(), generation, entry) {
                    tracing::error!(%error, "cannot write the audit log");
                }
                core.verdicts
                    .insert(region.clone(), (verdict.state, verdict.reason.clone()));
            }
            let engine_verdict = match verdict.state {
                health::RegionState::Up => Verdict::Up,
                health::RegionState::Down => Verdict::Down,
                health::RegionState::Unknown => Verdict::Unknown,
            };
            self.feed(
                &mut core,
                Event::Verdict {
                    region: RegionId::new(region.clone()),
                    verdict: engine_verdict,
                    reason: verdict.reason,
                },
            );
            if let Some(lag_ms) = verdict.replica_lag_ms {
                self.feed(
                    &mut core,
                    Event::ReplicationLag {
                        region: RegionId::new(region),
                        lag_ms,
                    },
                );
            }
        }
        if acting {
            self.feed(&mut core, Event::Tick);
            self.reconcile_restored_alerts(&mut core, now);
        }
        self.resolve_settled_leadership(&mut core);
        if let Some(state) = self.ha.as_ref().and_then(|ha| ha.seen()) {
            // Every member serves the pointer as etcd records it (a follower has no runbook
            // to move it; a new leader starts from it).
            if let Some(observed) = &state.observed
                && state.observed_generation.0 > self.pointer.get().generation
                && let Err(error) = self
                    .pointer
                    .publish(observed.active.as_str(), state.observed_generation.0)
            {
                tracing::debug!(%error, "pointer not moved");
            }
        }
    }

    /// Hears the start and end of this member's terms.
    fn leadership_notice(self: &Arc<Self>, notice: crate::ha::Notice) {
        let mut core = self.lock();
        let generation = core.engine.generation();
        let (event, detail) = match &notice {
            crate::ha::Notice::Leading { term, generation } => (
                "leading",
                format!(
                    "won the leader key (revision {}) and loaded the shared state at generation {generation}",
                    term.revision
                ),
            ),
            crate::ha::Notice::SteppedDown { reason } => ("stepped_down", reason.clone()),
            crate::ha::Notice::Deposed { member, unchanged_ms } => (
                "deposed",
                format!(
                    "deleted member {member}'s leader key: not renewed for {unchanged_ms} ms (longer than the lease; its leader stopped acting a third of the lease before)"
                ),
            ),
        };
        if let Err(error) = core.audit.append(
            wall_ms(),
            generation,
            Entry::Leadership {
                event: event.into(),
                detail: detail.clone(),
            },
        ) {
            tracing::error!(%error, "cannot write the audit log");
        }
        if event == "stepped_down" {
            // Open until leadership is settled again (`resolve_settled_leadership`).
            let message = format!("controller member {} stopped acting: {detail}", self.member_name());
            self.raise_alert(&mut core, "ha_leadership", &message, generation);
        }
        drop(core);
    }

    /// The engine's status; on a member that does not act, the placement, generation and
    /// runbook are the leader's as etcd records them (this member's engine only keeps its own
    /// view of the regions until it leads).
    fn engine_status(&self, core: &Core, now_ms: u64) -> crate::engine::EngineStatus {
        let mut status = core.engine.status(now_ms);
        let Some(ha) = &self.ha else {
            return status;
        };
        if ha.acting().is_some() {
            return status;
        }
        let leader = ha
            .leader()
            .map_or_else(|| "no leader known".to_string(), |l| format!("{} leads", l.member));
        status.reasons = vec![format!(
            "this member ({}) follows ({leader}): it decides and acts only when it leads",
            ha.name()
        )];
        if let Some(state) = ha.seen() {
            status.generation = state.generation;
            status.observed = state.observed.clone();
            status.intent = state.runbook.as_ref().map(|p| p.order.to.clone()).or(state.observed);
            status.in_flight = state.runbook.map(|p| p.order);
            if let Some(preferred) = state.preferred {
                status.preferred = preferred;
            }
            status.paused = state.paused;
        }
        status
    }

    fn member_name(&self) -> &str {
        self.ha.as_ref().map_or("", |ha| ha.name())
    }

    /// What status and health say about the group of controllers.
    fn ha_json(&self) -> serde_json::Value {
        match &self.ha {
            None => serde_json::Value::Null,
            Some(ha) => {
                let status = ha.status();
                json!({
                    "member": ha.name(),
                    "lease_ms": ha.lease_ms(),
                    "role": status.role,
                    "acting": status.acting,
                    "leader": status.leader,
                    "term": status.term,
                    "acting_ms_left": status.acting_ms_left,
                    "etcd_error": status.etcd_error,
                    "last_etcd_ok_ms_ago": status.last_etcd_ok_ms_ago,
                    "last_step_down": status.last_step_down,
                    "last_deposed": status.last_deposed,
                    "step_in_flight": *self.step_in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                    "shared": ha.seen(),
                })
            }
        }
    }

    /// Takes a report into the quorum (bounded work: see `health::quorum`); a refusal or
    /// dropped results are counted, and logged at most once per
    /// `REPORT_REFUSAL_LOG_INTERVAL_MS` per vantage point and reason.
    fn observe(&self, report: health::Report) -> health::quorum::Observed {
        use health::quorum::Observed;
        let now = self.now_ms();
        let vantage = report.vantage.clone();
        let (results, sent_at_ms) = (report.results.len(), report.sent_at_ms);
        let observed = self.lock().aggregator.observe(report, now, wall_ms());
        // Labels only ever name configured vantage points.
        let known = self.config.quorum.vantages_expected.contains(&vantage);
        let label = if known {
            vantage.clone()
        } else {
            "(unknown)".to_string()
        };
        match observed {
            Observed::Accepted { dropped } => {
                self.metrics
                    .reports
                    .get_or_create(&VantageLabels { vantage: label.clone() })
                    .inc();
                if dropped > 0 {
                    self.metrics
                        .results_dropped
                        .get_or_create(&VantageLabels { vantage: label.clone() })
                        .inc_by(dropped as u64);
                    if self.refusal_to_log(&label, "results_dropped", now) {
                        tracing::warn!(vantage = %label, dropped, results, "a report named checks or regions that are not configured (or one twice); those results were left out (logged at most once a minute)");
                    }
                }
            }
            refused => {
                let reason = refused.refusal_code().unwrap_or("refused");
                self.metrics
                    .reports_refused
                    .get_or_create(&ReportRefusedLabels {
                        vantage: label.clone(),
                        reason: reason.into(),
                    })
                    .inc();
                if known && self.refusal_to_log(&label, reason, now) {
                    tracing::warn!(vantage = %label, reason, sent_at_ms, results, "{} (logged at most once a minute)", report_refusal(&vantage, &refused));
                }
            }
        }
        observed
    }

    /// Whether a report refusal of `reason` for `vantage` is due to be logged again.
    fn refusal_to_log(&self, vantage: &str, reason: &'static str, now_ms: u64) -> bool {
        let mut logged = self
            .report_refusals_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (vantage.to_string(), reason);
        let due = logged
            .get(&key)
            .is_none_or(|at| now_ms.saturating_sub(*at) >= REPORT_REFUSAL_LOG_INTERVAL_MS);
        if due {
            logged.insert(key, now_ms);
        }
        due
    }
}

/// Why a report was refused, and what to do, in words (the log and the API answer).
fn report_refusal(vantage: &str, observed: &health::quorum::Observed) -> String {
    use health::quorum::Observed;
    match observed {
        Observed::Accepted { .. } => "accepted".into(),
        Observed::UnknownVantage => {
            format!("vantage '{vantage}' is not in [quorum] vantages; add it there or fix --name")
        }
        Observed::Outdated { held_sent_at_ms } => format!(
            "a newer report of vantage '{vantage}' is held (sent_at_ms {held_sent_at_ms}): two senders report under this name (a copied token or --name), or this sender's clock went back; the held report counts until it is [quorum] report_stale_ms old"
        ),
        Observed::ClockAhead { ahead_ms } => format!(
            "the report of vantage '{vantage}' is stamped {ahead_ms} ms ahead of the controller's clock, more than {} ms: synchronise the sender's clock (NTP)",
            health::quorum::SENT_AHEAD_MS_MAX
        ),
        Observed::TooOld { behind_ms } => format!(
            "the report of vantage '{vantage}' is stamped {behind_ms} ms behind the controller's clock, more than [quorum] report_stale_ms plus {} ms: an old report sent again, or the sender's clock is behind (synchronise it with NTP)",
            health::quorum::SENT_AHEAD_MS_MAX
        ),
        Observed::TooManyResults { count, max } => format!(
            "the report of vantage '{vantage}' has {count} results but only {max} checks are configured: the sender runs another configuration's plan (an agent fetches it again every few seconds) or is not a Switchyard agent"
        ),
    }
}

fn state_name(state: RegionState) -> &'static str {
    match state {
        RegionState::Healthy => "healthy",
        RegionState::Suspect => "suspect",
        RegionState::Down => "down",
        RegionState::Recovering => "recovering",
    }
}

/// Runs the controller on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let address = listener.local_addr()?;
    let tls = options.tls.clone();
    let access = access(&config, options.token.as_deref());
    check_exposure(address, &access)?;
    if options.token.as_deref().is_some_and(|t| !t.is_empty()) {
        tracing::warn!(
            "the single control token is deprecated: give each agent, operator and reader a token of its own in [[tokens]] (see the README's Security model)"
        );
    }
    let controller = &config.file.controller;
    let mut audit = AuditLog::open(
        &controller.audit_log,
        controller.audit_log_bytes_max,
        controller.audit_files_kept,
    )?;
    let checkpoint = audit.checkpoint().clone();
    // The engine's clock starts now (at 1 ms, see `Shared::now_ms`): the hold after the last
    // transition and the hourly limit run on from the audit log, never shortened by a restart.
    let (last_transition_ms, transitions_ms) = crate::ha::HoldTimers {
        last_transition_at_ms: checkpoint.last_transition_at_ms,
        transitions_at_ms: checkpoint.transitions_at_ms.clone(),
    }
    .to_engine(1, wall_ms(), config.engine.min_hold_ms);
    let restored = Restored {
        generation: checkpoint.generation.max(Generation(options.generation_floor)),
        observed: checkpoint.observed.clone(),
        interrupted: checkpoint.interrupted.clone(),
        interrupted_kind: checkpoint.interrupted_kind,
        preferred: checkpoint.preferred.clone(),
        paused: checkpoint.paused,
        last_transition_ms,
        transitions_ms,
    };
    let engine = Engine::new(config.engine.clone(), restored)?;
    let aggregator = health::Aggregator::new(config.quorum.clone())?;
    audit.append(
        wall_ms(),
        checkpoint.generation,
        Entry::ControllerStarted {
            version: env!("CARGO_PKG_VERSION").into(),
        },
    )?;
    audit.append(
        wall_ms(),
        checkpoint.generation,
        Entry::Checkpoint {
            state: checkpoint.clone(),
        },
    )?;
    let pointer = Pointer::new(PointerValue {
        region: checkpoint.observed.as_ref().map(|p| p.active.0.clone()),
        generation: checkpoint.observed_generation.0,
    });
    let client = HttpClient::new();
    let dns = config.file.dns.as_ref().map(|dns| DnsAdmin {
        admin_url: dns.admin_url.get_ref().clone(),
        token: options
            .dns_token
            .clone()
            .or_else(|| config.dns_token.clone())
            .or_else(|| options.token.clone()),
        txt_name: dns.txt_name.clone(),
    });
    let step_context = StepContext {
        client: client.clone(),
        dns,
        targets: config.dns_targets(),
        pointer: pointer.clone(),
    };
    let plans: BTreeMap<String, health::AgentPlan> = config
        .quorum
        .vantages_expected
        .iter()
        .map(|vantage| {
            let plan = health::AgentPlan {
                checks: config.checks_for(vantage),
                report_interval_ms: config.file.quorum.report_interval_ms,
            };
            (vantage.clone(), plan)
        })
        .collect();
    // Dedup keys name the group of controllers (an HA group's etcd prefix, else this
    // controller), not the member: any member raising or resolving a condition means one incident.
    let alert_group = config.file.controller.ha.as_ref().map_or_else(
        || config.file.controller.vantage.clone(),
        |ha| ha.prefix.trim_matches('/').to_string(),
    );
    let alerts = providers::alerts::Alerts::start(
        config.alert_channels.clone(),
        &config.file.controller.vantage,
        &alert_group,
    );
    let tick_ms = config.file.controller.tick_ms;
    #[cfg(feature = "etcd")]
    let ha = config.file.controller.ha.clone().map(|section| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let vantage = config.file.controller.vantage.clone();
        Arc::new(Member::new(section, format!("{scheme}://{address}"), vantage))
    });
    // Without etcd support the config check refuses `[controller.ha]`.
    #[cfg(not(feature = "etcd"))]
    let ha: Option<Arc<Member>> = None;
    let (closing_sender, closing) = tokio::sync::watch::channel(false);
    let (incidents_out, incidents_in) = match &ha {
        Some(_) => {
            let (sender, receiver) = tokio::sync::watch::channel(None);
            (Some(sender), Some(receiver))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        closing,
        core: Mutex::new(Core {
            engine,
            aggregator,
            audit,
            verdicts: BTreeMap::new(),
            runbooks_failed_in_row: 0,
            stuck_paged: None,
            decision_to: None,
            restored_alerts: BTreeMap::new(),
            reconcile_after_ms: 0,
            adopted: BTreeSet::new(),
            last_steps: BTreeMap::new(),
            media: BTreeMap::new(),
            runbook: None,
        }),
        config,
        pointer,
        access,
        forged_logged: Mutex::new(BTreeSet::new()),
        report_refusals_logged: Mutex::new(BTreeMap::new()),
        plans,
        metrics: Metrics::new(),
        base: Instant::now(),
        step_context,
        alerts,
        ha,
        generation_floor: Generation(options.generation_floor),
        control_token: options.token.clone().filter(|t| !t.is_empty()),
        incidents_out,
        step_in_flight: Mutex::new(None),
    });
    {
        let mut core = shared.lock();
        shared.restore_alerts(&mut core, shared.now_ms());
    }

    let mut tasks = Vec::new();
    {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            loop {
                let finished = shared.alerts.finished().await;
                let mut core = shared.lock();
                shared.record_deliveries(&mut core, finished);
            }
        }));
    }
    if let Some(ha) = shared.ha.clone() {
        // The notice callback holds the state weakly: the driver must not keep it alive.
        let notified = Arc::downgrade(&shared);
        tasks.push(tokio::spawn(ha.drive(move |notice| {
            if let Some(shared) = notified.upgrade() {
                shared.leadership_notice(notice);
            }
        })));
        if let Some(incidents_in) = incidents_in {
            tasks.push(tokio::spawn(save_incidents(Arc::clone(&shared), incidents_in)));
        }
    }
    {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                shared.tick();
            }
        }));
    }
    if let Some(mut reports) = options.local_reports {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            while let Some(report) = reports.recv().await {
                shared.observe(report);
            }
        }));
    }
    for step in &shared.config.steps {
        if let Some(action) = step.action.clone()
            && action.media().is_some()
        {
            let (shared, name) = (Arc::clone(&shared), step.name.clone());
            tasks.push(tokio::spawn(async move { measure_media(shared, name, action).await }));
        }
    }
    if options.probe_locally {
        let mut runner = health::runner::Runner::new(health::runner::RunnerOptions::default());
        runner.update(shared.config.checks_for(&shared.config.file.controller.vantage))?;
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move { probe_locally(shared, runner).await }));
    }
    let app = router(Arc::clone(&shared));
    let shutdown = async move {
        shutdown.await;
        let _ = closing_sender.send(true);
    };
    // Limits before authentication: connections, timeouts and body size (long-polls are
    // requests in progress, which the idle timeout leaves alone).
    let options = common::http::Options::new(
        "controller",
        common::http::Limits::with_body_limit(REQUEST_BODY_BYTES_MAX),
    )
    .render(Arc::new(render_refusal))
    .tls(tls);
    let result = common::http::serve(listener, options, app, shutdown).await;
    for task in tasks {
        task.abort();
    }
    if let Some(ha) = &shared.ha {
        ha.resign().await;
    }
    result.map_err(ServerError::Io)
}

/// Writes the leader's open incidents to etcd, the latest list each time (see
/// `ha::incidents`). A failure is logged and counted and tried again after
/// [`INCIDENTS_SAVE_RETRY_MS`] unless a newer list comes first; a list made in a term that
/// ended is dropped.
async fn save_incidents(shared: Arc<Shared>, mut lists: tokio::sync::watch::Receiver<Option<Pending>>) {
    let Some(ha) = shared.ha.clone() else { return };
    while lists.changed().await.is_ok() {
        loop {
            let Some(pending) = lists.borrow_and_update().clone() else {
                break;
            };
            if !pending.writable_in(ha.acting()) {
                break;
            }
            match ha.save_incidents(pending.term, &pending.list).await {
                Ok(()) => {
                    tracing::debug!(
                        incidents = pending.list.incidents.len(),
                        "open incidents written to etcd"
                    );
                    break;
                }
                Err(error) => {
                    shared.count_incidents_error("save");
                    tracing::warn!(%error, "cannot write the open incidents to etcd (alerts go out all the same; the next leader may not know of an incident opened since)");
                    if matches!(
                        error,
                        crate::ha::GuardError::NotLeading(_) | crate::ha::GuardError::Superseded(_)
                    ) {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(INCIDENTS_SAVE_RETRY_MS)) => {}
                        changed = lists.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

/// Measures a `media_sync` step's lag from the active region to every other region, every
/// `lag_interval_ms`, one pair at a time (each bounded by the step's `run_timeout_ms`).
async fn measure_media(shared: Arc<Shared>, step: String, action: Arc<providers::Action>) {
    let Some(media) = action.media() else { return };
    let mut interval = tokio::time::interval(Duration::from_millis(media.lag_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per (active region, receiving region): a location out of reach fails every measurement;
    // its first failure is logged, then a summary at most every SUMMARY_INTERVAL_MS (status
    // and the dashboard show each one's error).
    let mut failures: BTreeMap<(String, String), Repeated> = BTreeMap::new();
    loop {
        interval.tick().await;
        let Some(active) = shared.pointer.get().region else {
            continue;
        };
        let others: Vec<String> = media.regions().filter(|r| **r != active).cloned().collect();
        for region in others {
            let result = media.lag(&active, &region).await;
            let pair = failures
                .entry((active.clone(), region.clone()))
                .or_insert_with(|| Repeated::new(SUMMARY_INTERVAL_MS));
            let (from, to) = (&active, &region);
            match &result {
                Ok(_) => {
                    if let Some(back) = pair.success(pair.now_ms()) {
                        tracing::info!(
                            step,
                            from,
                            to,
                            failures = back.failures,
                            outage_ms = back.outage_ms,
                            "media lag measured again"
                        );
                    }
                }
                Err(error) => match pair.failure(pair.now_ms()) {
                    Failed::First => tracing::warn!(step, from, to, %error,
                        "media lag not measured; retrying every lag_interval_ms (further failures are summed up at most every {SUMMARY_INTERVAL_MS} ms)"),
                    Failed::Summary { failures, outage_ms } => {
                        tracing::warn!(step, from, to, %error, failures, outage_ms,
                        "media lag still not measured")
                    }
                    Failed::Quiet => {}
                },
            }
            shared.record_media(&step, &active, &region, result);
        }
    }
}

impl Shared {
    /// Keeps one media lag measurement, updates its gauges and tells the engine the region's
    /// total (over every media_sync step whose latest measurement from this active region
    /// worked).
    fn record_media(
        self: &Arc<Self>,
        step: &str,
        from: &str,
        to: &str,
        result: Result<providers::media::Lag, providers::Failure>,
    ) {
        let now = self.now_ms();
        let figure = match &result {
            Ok(lag) => MediaFigure {
                step: step.into(),
                from: from.into(),
                to: to.into(),
                objects: Some(lag.objects),
                bytes: Some(lag.bytes),
                oldest_age_seconds: lag.oldest_age_seconds,
                sample: lag.sample.clone(),
                error: None,
                at_ms: now,
            },
            Err(failure) => MediaFigure {
                step: step.into(),
                from: from.into(),
                to: to.into(),
                objects: None,
                bytes: None,
                oldest_age_seconds: None,
                sample: Vec::new(),
                error: Some(failure.to_string()),
                at_ms: now,
            },
        };
        let labels = MediaLabels {
            step: step.into(),
            region: to.into(),
        };
        if let Ok(lag) = &result {
            let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            self.metrics
                .media_objects
                .get_or_create(&labels)
                .set(gauge(lag.objects));
            self.metrics.media_bytes.get_or_create(&labels).set(gauge(lag.bytes));
            self.metrics
                .media_oldest
                .get_or_create(&labels)
                .set(gauge(lag.oldest_age_seconds.unwrap_or(0)));
        }
        let mut core = self.lock();
        core.media.insert((step.to_string(), to.to_string()), figure);
        let figures: Vec<&MediaFigure> = core.media.values().filter(|f| f.to == to).collect();
        let steps = self
            .config
            .steps
            .iter()
            .filter(|s| s.action.as_ref().is_some_and(|a| a.media().is_some()))
            .count();
        let complete = figures.len() == steps && figures.iter().all(|f| f.from == from && f.objects.is_some());
        if complete {
            let objects = figures.iter().filter_map(|f| f.objects).sum();
            self.feed(
                &mut core,
                Event::MediaLag {
                    region: RegionId::new(to),
                    objects,
                },
            );
        }
    }
}

/// The controller's own vantage point: a report on every probe result change, and at least every
/// `report_interval_ms` so it stays fresh.
async fn probe_locally(shared: Arc<Shared>, runner: health::runner::Runner) {
    let vantage = shared.config.file.controller.vantage.clone();
    let mut changes = runner.subscribe();
    let mut interval = tokio::time::interval(Duration::from_millis(shared.config.file.quorum.report_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let report = runner.report(&vantage);
        // A member that does not lead passes its own view on too when its vantage name differs
        // from the leader's (`--vantage`): the leader's quorum then counts every member's
        // probes. Members sharing one name keep their views to themselves (the leader's own
        // would otherwise be overwritten by another place's).
        // It sends its member token (`[controller.ha] token_file`, role member), else the
        // control token; with `[[tokens]]` and neither it has no credential the leader would
        // take and keeps its view to itself.
        let other_name = shared
            .ha
            .as_ref()
            .and_then(|ha| ha.leader())
            .is_some_and(|leader| leader.vantage.as_deref().is_some_and(|name| name != vantage));
        let token = shared
            .config
            .member_token
            .clone()
            .or_else(|| shared.control_token.clone());
        let credential = token.is_some() || shared.config.credentials.is_empty();
        if other_name
            && credential
            && let Ok(body) = serde_json::to_vec(&report)
        {
            forward_to_leader(&shared, token, body);
        }
        shared.observe(report);
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/active-region", get(active_region))
        .route("/v1/active-region/stream", get(active_region_stream))
        .route("/v1/failover", post(failover))
        .route("/v1/switchover", post(switchover))
        .route("/v1/failback", post(failback))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/acknowledge", post(acknowledge))
        .route(health::report::PLAN_PATH, get(agent_plan))
        .route(health::report::REPORT_PATH, post(agent_report))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(shared)
}

/// The operator's page: static HTML whose script reads `/v1/status` and `/v1/events` with the
/// token from the URL fragment, so the page itself holds no data and needs no token.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

/// The listener's own refusals (a body over `REQUEST_BODY_BYTES_MAX`, one that does not
/// arrive in time, too many connections, a malformed request) in the shape of every other error
/// of the API: `{"error": what and how to fix it, "code": a stable snake_case name}`.
fn render_refusal(refusal: &common::http::Refusal) -> common::http::Rendered {
    common::http::Rendered {
        status: refusal.status(),
        content_type: "application/json",
        body: json!({"error": refusal.to_string(), "code": snake_case(refusal.code())})
            .to_string()
            .into(),
        headers: Vec::new(),
    }
}

/// `RequestEntityTooLarge` → `request_entity_too_large`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A request body, read whole under the listener's limits; a body a limit refused is answered
/// by `render_refusal`, not in axum's plain text.
struct RequestBody(bytes::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RequestBody {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<RequestBody, Response> {
        // `common::http` bounds the body at `REQUEST_BODY_BYTES_MAX` and says so in the error.
        match axum::body::to_bytes(request.into_body(), usize::MAX).await {
            Ok(body) => Ok(RequestBody(body)),
            Err(error) => {
                let refusal = common::http::refusal_of(&error).cloned().unwrap_or_else(|| {
                    common::http::Refusal::BodyIncomplete {
                        reason: error.to_string(),
                    }
                });
                Err(common::http::response_of(render_refusal(&refusal)))
            }
        }
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": message.into()}))
}

fn denied(shared: &Shared, denied: &Denied) -> Response {
    let status = match denied {
        Denied::Unauthenticated => StatusCode::UNAUTHORIZED,
        Denied::WrongRole { .. } | Denied::OtherVantage { .. } => StatusCode::FORBIDDEN,
    };
    let code = match denied {
        Denied::Unauthenticated => "unauthenticated",
        Denied::WrongRole { .. } => "wrong_role",
        Denied::OtherVantage { .. } => "other_vantage",
    };
    shared
        .metrics
        .refused
        .get_or_create(&RefusedLabels { code: code.into() })
        .inc();
    json_response(status, json!({"error": denied.message(), "code": code}))
}

/// `Authorization: Bearer TOKEN` holding role `needed` (see `auth`).
fn authorize(shared: &Shared, headers: &HeaderMap, needed: Role) -> Result<Caller, Response> {
    if let Some(why) = common::secret::browser_forgery(headers, shared.access.held(needed)) {
        shared
            .metrics
            .refused
            .get_or_create(&RefusedLabels {
                code: "forbidden".into(),
            })
            .inc();
        return Err(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": why, "code": "forbidden"}),
        ));
    }
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    shared
        .access
        .authorize(header, needed)
        .map_err(|refused| denied(shared, &refused))
}

/// An agent request (report or plan) for vantage point `vantage`: the caller must hold role
/// agent under that very name. A refusal is logged once per (caller, vantage) pair.
fn authorize_vantage(shared: &Shared, headers: &HeaderMap, vantage: &str) -> Result<(), Response> {
    let caller = authorize(shared, headers, Role::Agent)?;
    shared.access.may_act_as(&caller, vantage).map_err(|refused| {
        let key = (caller.describe(), vantage.to_string());
        let mut logged = shared.forged_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() < FORGED_LOGGED_MAX && logged.insert(key) {
            tracing::warn!(caller = %caller.describe(), claimed = %vantage, "refused an agent request for another vantage point (logged once per pair)");
        }
        denied(shared, &refused)
    })
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let ha = shared.ha_json();
    let core = shared.lock();
    let status = shared.engine_status(&core, shared.now_ms());
    // A member that cannot reach etcd is degraded: it does not act (and, leading, stops).
    let degraded = !ha["etcd_error"].is_null();
    json_response(
        StatusCode::OK,
        json!({"status": if degraded { "degraded" } else { "ok" }, "generation": status.generation, "fenced": status.fenced, "paused": status.paused, "ha": ha}),
    )
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &shared.metrics.registry).is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed");
    }
    common::metrics::response(&headers, text)
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Read) {
        return response;
    }
    let now = shared.now_ms();
    let core = shared.lock();
    let engine = shared.engine_status(&core, now);
    let vantages: Vec<serde_json::Value> = core
        .aggregator
        .vantages(now)
        .into_iter()
        .map(|v| {
            let results = core
                .aggregator
                .latest(&v.name)
                .map(|(report, _)| report.results.clone())
                .unwrap_or_default();
            json!({
                "name": v.name,
                "fresh": v.fresh,
                "last_report_ms_ago": v.received_at_ms.map(|at| now.saturating_sub(at)),
                "checks": results,
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = shared
        .config
        .file
        .regions
        .iter()
        .map(|r| {
            json!({
                "name": r.name.get_ref(),
                "priority": r.priority.get_ref(),
                "endpoints": r.endpoints.iter().map(|e| e.get_ref()).collect::<Vec<_>>(),
                "dns_targets": r.targets(),
                "checks": shared.config.checks().iter().filter(|c| &c.region == r.name.get_ref()).map(|c| c.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    // The runbook in order, each step with its kind and its last attempt (null: not run since
    // this controller started).
    let steps: Vec<serde_json::Value> = shared
        .config
        .steps
        .iter()
        .map(|step| {
            json!({
                "name": step.name,
                "kind": step.kind_name(),
                "last": core.last_steps.get(&step.name),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "generation": engine.generation,
            "pointer": shared.pointer.get(),
            "steps": steps,
            "quorum": core.aggregator.quorum(),
            "verdicts": core.aggregator.verdicts(now),
            "vantages": vantages,
            "regions": regions,
            "engine": engine,
            "media": core.media.values().map(|figure| {
                let mut value = json!(figure);
                value["measured_ms_ago"] = json!(now.saturating_sub(figure.at_ms));
                value
            }).collect::<Vec<_>>(),
            "ha": shared.ha_json(),
        }),
    )
}

/// A query parameter, percent-decoded.
fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && text.is_char_boundary(i + 1) && text.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A numeric query parameter; a bad number is the caller's mistake.
fn number_param(uri: &Uri, key: &str) -> Result<Option<u64>, Response> {
    match query_param(uri, key) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("query parameter {key}='{text}' is not a non-negative integer"),
            )
        }),
    }
}

async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Read) {
        return response;
    }
    let limit = match number_param(&uri, "limit") {
        Ok(limit) => limit.map_or(100, |l| usize::try_from(l).unwrap_or(usize::MAX)),
        Err(response) => return response,
    }
    .min(EVENTS_LIMIT_MAX);
    let records = shared.lock().audit.recent(limit);
    json_response(StatusCode::OK, json!({"events": records}))
}

async fn active_region(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Read) {
        return response;
    }
    let (wait_generation, timeout_ms) = match (number_param(&uri, "wait_generation"), number_param(&uri, "timeout_ms"))
    {
        (Ok(wait), Ok(timeout)) => (wait, timeout),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let value = match wait_generation {
        Some(seen) => {
            let mut closing = shared.closing.clone();
            let wait = shared
                .pointer
                .wait_past(seen, timeout_ms.unwrap_or(crate::pointer::WATCH_POLL_MS));
            tokio::select! {
                value = wait => value,
                _ = closing.wait_for(|closing| *closing) => shared.pointer.get(),
            }
        }
        None => shared.pointer.get(),
    };
    // A member cut off from etcd does not know whether the active region moved: it still
    // names the region it last knew (an etcd outage must not take the applications down with
    // it: static stability) and says why it may be stale in `stale`. `lock run` takes such an
    // answer as no answer: a job that runs twice is worse than one that waits.
    let mut body = json!(value);
    if let Some(why) = shared.ha.as_ref().and_then(|ha| ha.pointer_stale()) {
        body["stale"] = json!(why);
    }
    // A runbook under way, or one that failed and waits to be tried again (the intent is not
    // what is observed): where it moves the active region (`switchyard guard` never unfences
    // a server then: the runbook may be taking its final position).
    let status = {
        let core = shared.lock();
        shared.engine_status(&core, shared.now_ms())
    };
    let moving = match (&status.in_flight, &status.intent, &status.observed) {
        (Some(order), _, _) => Some((order.generation.0, order.to.active.as_str().to_string(), false)),
        (None, Some(intent), observed) if observed.as_ref().is_none_or(|o| o.active != intent.active) => {
            Some((status.generation.0, intent.active.as_str().to_string(), true))
        }
        _ => None,
    };
    if let Some((generation, to, waiting)) = moving {
        body["moving"] = json!({"generation": generation, "to": to, "waiting": waiting});
    }
    json_response(StatusCode::OK, body)
}

/// The pointer as Server-Sent Events (see `pointer::Pointer::event_stream`).
async fn active_region_stream(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Read) {
        return response;
    }
    match shared.pointer.event_stream(shared.closing.clone()) {
        Some(stream) => axum::response::sse::Sse::new(stream)
            .keep_alive(
                axum::response::sse::KeepAlive::new().interval(Duration::from_millis(crate::pointer::SSE_KEEPALIVE_MS)),
            )
            .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} pointer streams are open already; use the long-poll GET /v1/active-region?wait_generation=N instead",
                crate::pointer::SSE_STREAMS_MAX
            ),
        ),
    }
}

/// An operator command as received: its path and body, for a follower to pass on unchanged.
struct Received<'a> {
    path: &'static str,
    body: &'a [u8],
}

async fn manual(shared: &Arc<Shared>, headers: &HeaderMap, command: Manual, received: Received<'_>) -> Response {
    let caller = match authorize(shared, headers, Role::Operator) {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    tracing::info!(caller = %caller.describe(), command = ?command, "manual command");
    let term = match &shared.ha {
        None => None,
        Some(ha) => match ha.acting() {
            Some(term) => Some(term),
            None => return forward_command(shared, ha, headers, received).await,
        },
    };
    let mut core = shared.lock();
    // Won the key since the last tick: the engine is still the follower's until restored.
    shared.take_over(&mut core, shared.now_ms());
    let answer = shared.feed(&mut core, Event::Manual(command));
    let generation = core.engine.generation();
    if let (Some(ha), Some(term)) = (&shared.ha, term) {
        // Preferences (switchover, failback, pause, resume) live in etcd for the next leader.
        let status = core.engine.status(shared.now_ms());
        let ha = Arc::clone(ha);
        tokio::spawn(async move {
            if let Err(error) = ha.save_preferences(term, &status.preferred, status.paused).await {
                tracing::warn!(%error, "could not record the preferences in etcd");
            }
        });
    }
    match answer {
        Some((true, reason)) => json_response(
            StatusCode::OK,
            json!({"accepted": true, "reason": reason, "generation": generation}),
        ),
        Some((false, reason)) => json_response(
            StatusCode::CONFLICT,
            json!({"accepted": false, "reason": reason, "generation": generation}),
        ),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the engine did not answer"),
    }
}

/// A member that does not act passes an (already authorized) operator command on to the
/// leader it last saw in etcd, with the caller's own token, and answers with the leader's
/// answer (plus `forwarded_to`). It refuses with 421 naming the leader instead when no leader
/// is known, when the command was itself passed on by another member (one hop at most), or
/// when no connection to the leader could be made; a command sent to the leader that got no
/// answer within `COMMAND_FORWARD_TIMEOUT_MS` is 504 `forward_outcome_unknown` (it may act yet:
/// never to be sent again blindly).
async fn forward_command(shared: &Arc<Shared>, ha: &Member, headers: &HeaderMap, received: Received<'_>) -> Response {
    if let Some(from) = headers.get(FORWARDED_BY_HEADER) {
        let from = String::from_utf8_lossy(from.as_bytes()).into_owned();
        return not_leader(
            ha,
            Some(format!(
                "member {from} passed this command on, believing this member leads; it no longer does"
            )),
        );
    }
    let Some(leader) = ha.leader().filter(|leader| leader.member != ha.name()) else {
        return not_leader(ha, None);
    };
    let token = common::secret::bearer(headers);
    let url = format!("{}{}", leader.address.trim_end_matches('/'), received.path);
    let body = (!received.body.is_empty()).then(|| received.body.to_vec());
    let answer = shared
        .step_context
        .client
        .request_with_headers(
            hyper::Method::POST,
            &url,
            token,
            body,
            &[(FORWARDED_BY_HEADER, ha.name())],
            COMMAND_FORWARD_TIMEOUT_MS,
        )
        .await;
    match answer {
        Ok(answer) => {
            tracing::info!(leader = %leader.member, %url, status = answer.status.as_u16(), "passed an operator command on to the leader");
            let status = StatusCode::from_u16(answer.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match serde_json::from_slice::<serde_json::Value>(&answer.body) {
                Ok(serde_json::Value::Object(mut body)) => {
                    body.insert("forwarded_to".into(), json!(leader));
                    json_response(status, serde_json::Value::Object(body))
                }
                _ => json_response(
                    StatusCode::BAD_GATEWAY,
                    json!({
                        "accepted": false,
                        "code": "bad_leader_answer",
                        "error": format!("the leader {} at {} answered HTTP {} without a JSON object; the command may or may not have been taken: check `switchyard status` there", leader.member, leader.address, answer.status.as_u16()),
                        "forwarded_to": leader,
                    }),
                ),
            }
        }
        // Never sent (no connection): the caller may send it to the leader itself.
        Err(error) if error.never_sent() => {
            tracing::warn!(leader = %leader.member, %error, "could not pass an operator command on to the leader");
            not_leader(
                ha,
                Some(format!(
                    "passing it on to the leader failed ({error}); it never reached the leader"
                )),
            )
        }
        // Sent, and no answer: the leader may act on it yet. Not a 421, which tells the caller
        // to send it again (a second switchover, a failover run twice).
        Err(error) => {
            tracing::warn!(leader = %leader.member, %error, "an operator command passed on to the leader got no answer");
            json_response(
                StatusCode::GATEWAY_TIMEOUT,
                json!({
                    "accepted": false,
                    "code": "forward_outcome_unknown",
                    "error": format!("this controller (member {}) passed the command on to the leader {} at {}, which did not answer ({error}): it may or may not take it; check `switchyard status` before sending it again", ha.name(), leader.member, leader.address),
                    "forwarded_to": leader,
                }),
            )
        }
    }
}

/// A member that does not act refuses an operator command and names the leader to send it to
/// (`why` says why it did not pass the command on itself).
fn not_leader(ha: &Member, why: Option<String>) -> Response {
    let leader = ha.leader();
    let why = why.map(|why| format!(" ({why})")).unwrap_or_default();
    let reason = match &leader {
        Some(leader) if leader.member != ha.name() => format!(
            "this controller (member {}) does not lead{why}; send the command to the leader {} at {}",
            ha.name(),
            leader.member,
            leader.address
        ),
        _ => format!(
            "this controller (member {}) does not lead and no leader is known yet (etcd unreachable or an election in progress){why}; retry in a few seconds",
            ha.name()
        ),
    };
    json_response(
        StatusCode::MISDIRECTED_REQUEST,
        json!({"accepted": false, "code": "not_leader", "error": reason, "reason": reason, "member": ha.name(), "leader": leader}),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    #[serde(default)]
    force_data_loss: bool,
}

async fn failover(State(shared): State<Arc<Shared>>, headers: HeaderMap, RequestBody(body): RequestBody) -> Response {
    // The role first: a caller without it learns nothing from body errors.
    if let Err(response) = authorize(&shared, &headers, Role::Operator) {
        return response;
    }
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        FailoverBody::default()
    } else {
        match serde_json::from_slice::<FailoverBody>(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body must be empty or JSON like {{\"force_data_loss\": true}}: {e}"),
                );
            }
        }
    };
    manual(
        &shared,
        &headers,
        Manual::Failover {
            force_data_loss: request.force_data_loss,
        },
        Received {
            path: "/v1/failover",
            body: &body,
        },
    )
    .await
}

async fn failback(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let received = Received {
        path: "/v1/failback",
        body: &[],
    };
    manual(&shared, &headers, Manual::Failback, received).await
}

async fn pause(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let received = Received {
        path: "/v1/pause",
        body: &[],
    };
    manual(&shared, &headers, Manual::Pause, received).await
}

async fn resume(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let received = Received {
        path: "/v1/resume",
        body: &[],
    };
    manual(&shared, &headers, Manual::Resume, received).await
}

async fn acknowledge(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let received = Received {
        path: "/v1/acknowledge",
        body: &[],
    };
    manual(&shared, &headers, Manual::Acknowledge, received).await
}

#[derive(Deserialize)]
struct SwitchoverBody {
    to: String,
}

async fn switchover(State(shared): State<Arc<Shared>>, headers: HeaderMap, RequestBody(body): RequestBody) -> Response {
    // The role first: a caller without it learns nothing from body errors.
    if let Err(response) = authorize(&shared, &headers, Role::Operator) {
        return response;
    }
    let request: SwitchoverBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be JSON like {{\"to\": \"eu-west-1\"}}: {e}"),
            );
        }
    };
    manual(
        &shared,
        &headers,
        Manual::Switchover {
            to: RegionId::new(request.to),
        },
        Received {
            path: "/v1/switchover",
            body: &body,
        },
    )
    .await
}

async fn agent_plan(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Agent) {
        return response;
    }
    let Some(name) = query_param(&uri, "name") else {
        return error(
            StatusCode::BAD_REQUEST,
            "pass the agent's name: /v1/agent/plan?name=NAME",
        );
    };
    if let Err(response) = authorize_vantage(&shared, &headers, &name) {
        return response;
    }
    // Each agent gets the checks through its own network path (`[vantage_paths.NAME]`).
    match shared.plans.get(&name) {
        Some(plan) => json_response(StatusCode::OK, json!(plan)),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "vantage '{name}' is not in [quorum] vantages ({}); add it there or fix --name",
                shared.config.quorum.vantages_expected.join(", ")
            ),
        ),
    }
}

/// With `[controller.ha]`, an agent reports to any one member: a member that does not lead
/// passes the (already authenticated) report on to the leader, with the agent's own token, so
/// the leader's quorum counts every agent. Best effort, bounded by `ALERT_TIMEOUT_MS`: the
/// agent reports again within its interval anyway.
fn forward_to_leader(shared: &Arc<Shared>, token: Option<String>, body: Vec<u8>) {
    let Some(ha) = &shared.ha else {
        return;
    };
    if ha.acting().is_some() {
        return;
    }
    let Some(leader) = ha.leader().filter(|leader| leader.member != ha.name()) else {
        return;
    };
    let url = format!(
        "{}{}",
        leader.address.trim_end_matches('/'),
        health::report::REPORT_PATH
    );
    let client = shared.step_context.client.clone();
    tokio::spawn(async move {
        match client
            .request(
                hyper::Method::POST,
                &url,
                token.as_deref(),
                Some(body),
                REPORT_FORWARD_TIMEOUT_MS,
            )
            .await
        {
            Ok(answer) if answer.status.is_success() => {}
            Ok(answer) => {
                tracing::debug!(%url, status = answer.status.as_u16(), "the leader refused a forwarded report")
            }
            Err(error) => tracing::debug!(%url, %error, "could not forward a report to the leader"),
        }
    });
}

async fn agent_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, Role::Agent) {
        return response;
    }
    let report: health::Report = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not a health report: {e}")),
    };
    let vantage = report.vantage.clone();
    if let Err(response) = authorize_vantage(&shared, &headers, &vantage) {
        return response;
    }
    let token = common::secret::bearer(&headers).map(str::to_string);
    forward_to_leader(&shared, token, body.to_vec());
    let observed = shared.observe(report);
    let status = match observed {
        health::quorum::Observed::Accepted { .. } => {
            // A follower that knows no leader (an election, or cut off from etcd) cannot pass the
            // report on: an agent that has other members goes to one of them.
            let others = headers
                .get(health::report::MEMBERS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|members| members > 1);
            if let Some(ha) = &shared.ha
                && others
                && ha.acting().is_none()
                && ha.leader().is_none()
            {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "error": format!("this member ({}) knows no leader (etcd unreachable or an election in progress): the report counts here only; send it to another member", ha.name()),
                        "code": "no_leader",
                    }),
                );
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        health::quorum::Observed::UnknownVantage => StatusCode::FORBIDDEN,
        // A newer report under this name is held: the sender learns that its vote is not the
        // one counted (a stolen token, or a second agent with the same --name).
        health::quorum::Observed::Outdated { .. } => StatusCode::CONFLICT,
        health::quorum::Observed::ClockAhead { .. }
        | health::quorum::Observed::TooOld { .. }
        | health::quorum::Observed::TooManyResults { .. } => StatusCode::BAD_REQUEST,
    };
    json_response(
        status,
        json!({"error": report_refusal(&vantage, &observed), "code": observed.refusal_code()}),
    )
}

/// The longest a runbook can take when every attempt of every step times out: per step,
/// attempts × timeout plus the doubling backoffs between them.
fn runbook_budget_ms(steps: &[crate::config::Step]) -> u64 {
    steps
        .iter()
        .map(|step| {
            let attempts = u64::from(step.retries) + 1;
            let backoffs = step
                .backoff_ms
                .saturating_mul((1u64 << step.retries.min(20)).saturating_sub(1));
            attempts.saturating_mul(step.timeout_ms).saturating_add(backoffs)
        })
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod step_in_flight_tests {
    use super::*;

    #[test]
    fn a_step_shows_while_under_way_and_a_superseded_runbooks_end_leaves_the_next_ones() {
        let slot = Mutex::new(None);
        let shown = |slot: &Mutex<Option<StepInFlight>>| {
            slot.lock()
                .expect("not poisoned")
                .as_ref()
                .map(|s| (s.step.clone(), s.generation))
        };
        let old = InFlightGuard::enter(&slot, "dns", Generation(4));
        assert_eq!(shown(&slot), Some(("dns".to_string(), 4)));
        // The next runbook starts before the superseded one stopped: its step is shown, and
        // stays shown when the old step ends.
        let new = InFlightGuard::enter(&slot, "pointer", Generation(5));
        drop(old);
        assert_eq!(shown(&slot), Some(("pointer".to_string(), 5)));
        drop(new);
        assert_eq!(shown(&slot), None);
    }
}
