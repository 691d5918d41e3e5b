//! The decision engine: sans-IO, deterministic, clock injected.
//!
//! `Engine::step(now_ms, Event) -> Vec<Command>` is the whole interface. Events are per-region
//! verdicts (already quorum-aggregated) and replication lag readings, which only update the
//! view, and ticks, runbook outcomes and manual commands, on which the engine decides; commands are runbooks to run, alerts to send, records for the audit log and
//! answers to manual commands. The engine never does I/O, never reads a clock and never draws
//! random numbers, so scripted tests and simulations replay exactly.
//!
//! The model follows neon's storage controller: an *intent* (where traffic should go) and an
//! *observed* placement (what the last successful runbook applied), and a reconciler that starts
//! a runbook whenever they differ and none is running. Every runbook attempt takes a fresh
//! [`Generation`]; the observed placement changes only when the runbook of the generation in
//! flight reports success, so the engine never claims a failover that did not complete.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Window over which automatic transitions are counted for the rate limit.
pub const FAILOVER_WINDOW_MS: u64 = 60 * 60 * 1000;
/// Longest wait between attempts after failed runbooks (the backoff doubles up to this).
pub const RUNBOOK_RETRY_MS_MAX: u64 = 60_000;
/// Transitions remembered for the rate limit; older ones are dropped (bounded memory).
const TRANSITIONS_REMEMBERED_MAX: usize = 1024;

/// A region's name, like `eu-west-1`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(pub String);

impl RegionId {
    pub fn new(name: impl Into<String>) -> RegionId {
        RegionId(name.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fencing token: increases on every actuation attempt and is never reused, also across
/// restarts (the runtime restores the highest one from the audit log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    pub fn next(self) -> Generation {
        Generation(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A region's health as the quorum of vantage points sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Up,
    Down,
    /// Not enough vantage points agree (or none reported): never a reason to act.
    Unknown,
}

/// The engine's view of one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    Healthy,
    /// Unknown, or down but not yet confirmed: no action is taken on a suspect region.
    Suspect,
    Down,
    /// Up again after being down, but not yet for the stability window.
    Recovering,
}

/// How traffic is spread over regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// One region serves at a time: the preferred one (by priority) when it can.
    ActivePassive,
    /// Every healthy region serves; a down region is dropped from the set.
    ActiveActive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub id: RegionId,
    /// Lower is preferred.
    pub priority: u32,
}

/// Timings and policy of the engine. Defaults are the documented ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub regions: Vec<RegionSpec>,
    pub policy: Policy,
    /// A down verdict must last this long before the region counts as down (0: at once; the
    /// health checks' `fall` already debounces).
    pub down_confirm_ms: u64,
    /// After a transition, no automatic failback or re-add for this long.
    pub min_hold_ms: u64,
    /// A region that was down must be up this long before it counts as healthy again.
    pub stability_window_ms: u64,
    /// Failback only when the region's replication lag is at most this; `None` skips the check.
    pub failback_lag_max_ms: Option<u64>,
    /// A lag reading older than this counts as unknown.
    pub lag_stale_ms: u64,
    /// Failback only when the region lacks at most this many media objects (`media_sync`);
    /// `None` skips the check.
    #[serde(default)]
    pub failback_media_objects_max: Option<u64>,
    /// A media lag reading older than this counts as unknown.
    #[serde(default = "media_stale_ms_default")]
    pub media_stale_ms: u64,
    /// Automatic transitions allowed per hour before a human must acknowledge; the first one
    /// is never blocked.
    pub failovers_per_hour_max: u32,
    pub auto_failback: bool,
    /// First wait after a failed runbook; doubles up to `RUNBOOK_RETRY_MS_MAX`.
    pub runbook_retry_ms: u64,
    /// Without a restored placement, wait this long (or until every region has a verdict)
    /// before choosing the first placement.
    pub startup_grace_ms: u64,
}

fn media_stale_ms_default() -> u64 {
    // Two of the default lag intervals and the default run timeout of media_sync.
    2 * 60_000 + 300_000
}

impl EngineConfig {
    /// The documented defaults for `regions`.
    pub fn with_defaults(regions: Vec<RegionSpec>) -> EngineConfig {
        EngineConfig {
            regions,
            policy: Policy::ActivePassive,
            down_confirm_ms: 0,
            min_hold_ms: 60_000,
            stability_window_ms: 60_000,
            failback_lag_max_ms: Some(1_000),
            lag_stale_ms: 30_000,
            failback_media_objects_max: None,
            media_stale_ms: media_stale_ms_default(),
            failovers_per_hour_max: 3,
            auto_failback: true,
            runbook_retry_ms: 2_000,
            startup_grace_ms: 10_000,
        }
    }
}

/// Where traffic goes: `serving` receive traffic; `active` is the write region the pointer names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub active: RegionId,
    pub serving: Vec<RegionId>,
}

impl Placement {
    pub fn single(region: RegionId) -> Placement {
        Placement {
            serving: vec![region.clone()],
            active: region,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The first placement after a fresh start.
    Initial,
    Failover,
    Failback,
    Switchover,
    /// Active-active: the serving set changed.
    Rebalance,
    /// A runbook interrupted by a crash, rolled forward with a new generation.
    RollForward,
    /// A failed runbook tried again with a new generation.
    Retry,
}

/// What the runtime must execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunbookOrder {
    pub generation: Generation,
    pub kind: TransitionKind,
    pub from: Option<Placement>,
    pub to: Placement,
    pub reason: String,
    /// The operator accepted losing data for this move (`failover --force-data-loss`):
    /// database steps promote a replica that is behind instead of refusing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_data_loss: bool,
    /// For a `retry` or `roll_forward`: the move it continues (`failover`, `failback`, ...),
    /// when known. Steps that act differently on planned and unplanned moves read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<TransitionKind>,
}

impl RunbookOrder {
    /// The move this order makes: its own kind, or for a retry or roll-forward the kind of the
    /// move it continues (itself when that is unknown).
    pub fn move_kind(&self) -> TransitionKind {
        self.continues.unwrap_or(self.kind)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunbookOutcome {
    Succeeded,
    Failed {
        step: String,
        error: String,
    },
    /// A step was refused because a newer generation was already applied (HTTP 409): another
    /// controller acts. This engine stops actuating until a human resumes it.
    Fenced {
        step: String,
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Manual {
    Failover {
        /// Accept data loss: a move still pending gets it, else the new failover does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force_data_loss: bool,
    },
    Switchover {
        to: RegionId,
    },
    Failback,
    Pause,
    Resume,
    Acknowledge,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The quorum verdict for a region; `reason` says what failed.
    Verdict {
        region: RegionId,
        verdict: Verdict,
        reason: String,
    },
    /// How far `region`'s data is behind (replication lag into that region).
    ReplicationLag {
        region: RegionId,
        lag_ms: u64,
    },
    /// Media objects `region` lacks of the active region's (`media_sync`).
    MediaLag {
        region: RegionId,
        objects: u64,
    },
    /// Time passed: the engine decides. Send one after each round of verdicts.
    Tick,
    RunbookFinished {
        generation: Generation,
        outcome: RunbookOutcome,
    },
    Manual(Manual),
}

/// Records for the audit log: every state change, decision and runbook outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Note {
    RegionState {
        region: RegionId,
        from: RegionState,
        to: RegionState,
        reason: String,
    },
    Decision {
        kind: TransitionKind,
        from: Option<Placement>,
        to: Placement,
        reason: String,
        /// Decided by the policy, not by an operator: counts toward `failovers_per_hour_max`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        automatic: bool,
    },
    RunbookStarted(RunbookOrder),
    RunbookFinished {
        generation: Generation,
        to: Placement,
        outcome: RunbookOutcome,
    },
    StaleRunbookReport {
        generation: Generation,
    },
    /// A runbook cancelled mid-flight by a newer decision toward another placement (a failback
    /// whose target went down again): its steps were dropped, and the newer decision's runbook
    /// runs at once with a higher generation.
    RunbookSuperseded {
        generation: Generation,
        to: Placement,
        reason: String,
    },
    Manual {
        command: Manual,
        accepted: bool,
        reason: String,
    },
    Blocked {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    RunRunbook(RunbookOrder),
    /// Drop the runbook of this generation mid-flight (its steps are cancelled, a command's
    /// processes killed); the engine no longer waits for its outcome.
    CancelRunbook {
        generation: Generation,
    },
    Alert {
        key: String,
        message: String,
    },
    /// An alert condition ended.
    Resolved {
        key: String,
    },
    Record {
        generation: Generation,
        note: Note,
    },
    /// Answer to a manual command.
    Answer {
        accepted: bool,
        reason: String,
    },
}

/// What the engine knows about one region, for status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub region: RegionId,
    pub priority: u32,
    pub state: RegionState,
    pub since_ms: u64,
    pub verdict: Verdict,
    pub reason: String,
    pub lag_ms: Option<u64>,
    pub lag_at_ms: Option<u64>,
}

/// The engine's state and why it is (not) acting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub generation: Generation,
    pub policy: Policy,
    pub intent: Option<Placement>,
    pub observed: Option<Placement>,
    pub preferred: RegionId,
    pub in_flight: Option<RunbookOrder>,
    pub paused: bool,
    pub fenced: bool,
    pub regions: Vec<RegionStatus>,
    /// Why the engine is waiting or refusing to act, in plain words.
    pub reasons: Vec<String>,
    pub alerts: Vec<String>,
    pub transitions_last_hour: usize,
}

/// What the runtime restores after a restart (from the audit log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub generation: Generation,
    pub observed: Option<Placement>,
    /// The target of a runbook that started but never finished: rolled forward.
    pub interrupted: Option<Placement>,
    /// The move that runbook made (its `move_kind`), when recorded.
    pub interrupted_kind: Option<TransitionKind>,
    pub preferred: Option<RegionId>,
    pub paused: bool,
    /// When the last transition was decided, on the engine's clock (earlier than its start
    /// counts as 0): the hold before an automatic failback runs on from it.
    pub last_transition_ms: Option<u64>,
    /// When recent automatic transitions were decided (engine clock), for the hourly limit.
    pub transitions_ms: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Track {
    priority: u32,
    state: RegionState,
    since_ms: u64,
    verdict: Verdict,
    verdict_since_ms: u64,
    /// Seen down (confirmed) and not yet stable again.
    was_down: bool,
    reason: String,
    lag: Option<(u64, u64)>,
    /// Media objects missing, and when measured.
    media: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
struct Intent {
    placement: Placement,
    kind: TransitionKind,
    reason: String,
    /// Carried by every attempt of this intent; a restart's roll-forward starts without it.
    force_data_loss: bool,
    /// For a roll-forward: the move the interrupted runbook made, when the restore knows it.
    continues: Option<TransitionKind>,
}

pub struct Engine {
    config: EngineConfig,
    tracks: BTreeMap<RegionId, Track>,
    generation: Generation,
    intent: Option<Intent>,
    observed: Option<Placement>,
    in_flight: Option<RunbookOrder>,
    preferred: RegionId,
    paused: bool,
    fenced: bool,
    transitions: VecDeque<u64>,
    last_transition_ms: Option<u64>,
    next_attempt_ms: u64,
    failures_in_row: u32,
    /// A runbook failed or was interrupted part-way: the outside world may hold any mix of the
    /// old and new placement, so the intent is applied again even if it equals `observed`.
    dirty: bool,
    started_ms: Option<u64>,
    reasons: Vec<String>,
    alerts: BTreeMap<String, String>,
    /// Per open alert, what its last page was about (see `alert_marked`).
    paged: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineConfigError {
    #[error("no regions: configure at least one [[regions]] entry")]
    NoRegions,
    #[error("region '{0}' appears twice; give each region once")]
    DuplicateRegion(String),
    #[error("failovers_per_hour_max is 0; use at least 1 (the first failover is never blocked anyway)")]
    ZeroRateLimit,
}

impl Engine {
    pub fn new(config: EngineConfig, restored: Restored) -> Result<Engine, EngineConfigError> {
        if config.regions.is_empty() {
            return Err(EngineConfigError::NoRegions);
        }
        if config.failovers_per_hour_max == 0 {
            return Err(EngineConfigError::ZeroRateLimit);
        }
        let mut tracks = BTreeMap::new();
        for spec in &config.regions {
            let track = Track {
                priority: spec.priority,
                state: RegionState::Suspect,
                since_ms: 0,
                verdict: Verdict::Unknown,
                verdict_since_ms: 0,
                was_down: false,
                reason: "no verdict yet".to_string(),
                lag: None,
                media: None,
            };
            if tracks.insert(spec.id.clone(), track).is_some() {
                return Err(EngineConfigError::DuplicateRegion(spec.id.0.clone()));
            }
        }
        let by_priority = sorted_by_priority(&config.regions);
        let preferred = restored
            .preferred
            .filter(|r| tracks.contains_key(r))
            .unwrap_or_else(|| by_priority[0].clone());
        let observed = restored.observed.filter(|p| placement_known(p, &tracks));
        let dirty = restored.interrupted.is_some();
        let interrupted = restored.interrupted.filter(|p| placement_known(p, &tracks));
        // After a restart, a region that was not serving must prove the stability window again
        // before it regains traffic: its history before the restart is unknown. With a runbook
        // interrupted, a region the rolled-forward move takes traffic from counts as not
        // serving too, or the restart would fail straight back over it.
        for placement in [&observed, &interrupted].into_iter().flatten() {
            for (id, track) in tracks.iter_mut() {
                if !placement.serving.contains(id) {
                    track.was_down = true;
                }
            }
        }
        let intent = match interrupted {
            Some(placement) if Some(&placement) != observed.as_ref() => Some(Intent {
                placement,
                kind: TransitionKind::RollForward,
                reason: "a runbook was interrupted by a restart; rolling it forward with a new generation".into(),
                force_data_loss: false,
                continues: restored.interrupted_kind,
            }),
            _ => observed.clone().map(|placement| Intent {
                placement,
                kind: if dirty {
                    TransitionKind::RollForward
                } else {
                    TransitionKind::Initial
                },
                reason: if dirty {
                    "a runbook was interrupted by a restart; applying the placement again with a new generation".into()
                } else {
                    "restored".into()
                },
                force_data_loss: false,
                continues: restored.interrupted_kind.filter(|_| dirty),
            }),
        };
        Ok(Engine {
            config,
            tracks,
            generation: restored.generation,
            intent,
            observed,
            in_flight: None,
            preferred,
            paused: restored.paused,
            fenced: false,
            transitions: restored
                .transitions_ms
                .iter()
                .rev()
                .take(TRANSITIONS_REMEMBERED_MAX)
                .rev()
                .copied()
                .collect(),
            last_transition_ms: restored.last_transition_ms,
            next_attempt_ms: 0,
            failures_in_row: 0,
            dirty,
            started_ms: None,
            reasons: Vec::new(),
            alerts: BTreeMap::new(),
            paged: BTreeMap::new(),
        })
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The generation of the runbook the engine waits for, if any (a superseded one is not).
    pub fn in_flight_generation(&self) -> Option<Generation> {
        self.in_flight.as_ref().map(|order| order.generation)
    }

    /// When the last transition was decided and the recent automatic ones (engine clock):
    /// what a successor needs to keep the hold time and the hourly limit.
    pub fn hold_timers(&self) -> (Option<u64>, Vec<u64>) {
        (self.last_transition_ms, self.transitions.iter().copied().collect())
    }

    pub fn observed(&self) -> Option<&Placement> {
        self.observed.as_ref()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn step(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.started_ms.get_or_insert(now_ms);
        // Verdicts and lag readings only update the view: decisions are taken on the next tick,
        // over every region's latest verdict, never over half of a round of verdicts.
        let decides = !matches!(
            event,
            Event::Verdict { .. } | Event::ReplicationLag { .. } | Event::MediaLag { .. }
        );
        match event {
            Event::Verdict {
                region,
                verdict,
                reason,
            } => self.on_verdict(now_ms, &region, verdict, reason),
            Event::ReplicationLag { region, lag_ms } => {
                if let Some(track) = self.tracks.get_mut(&region) {
                    track.lag = Some((lag_ms, now_ms));
                }
            }
            Event::MediaLag { region, objects } => {
                if let Some(track) = self.tracks.get_mut(&region) {
                    track.media = Some((objects, now_ms));
                }
            }
            Event::Tick => {}
            Event::RunbookFinished { generation, outcome } => self.on_runbook(now_ms, generation, outcome, &mut out),
            Event::Manual(command) => self.on_manual(now_ms, command, &mut out),
        }
        self.refresh_states(now_ms, &mut out);
        if decides {
            self.evaluate(now_ms, &mut out);
            self.reconcile(now_ms, &mut out);
        }
        out
    }

    pub fn status(&self, now_ms: u64) -> EngineStatus {
        let regions = self
            .tracks
            .iter()
            .map(|(id, t)| RegionStatus {
                region: id.clone(),
                priority: t.priority,
                state: t.state,
                since_ms: t.since_ms,
                verdict: t.verdict,
                reason: t.reason.clone(),
                lag_ms: t.lag.map(|(lag, _)| lag),
                lag_at_ms: t.lag.map(|(_, at)| at),
            })
            .collect();
        EngineStatus {
            generation: self.generation,
            policy: self.config.policy,
            intent: self.intent.as_ref().map(|i| i.placement.clone()),
            observed: self.observed.clone(),
            preferred: self.preferred.clone(),
            in_flight: self.in_flight.clone(),
            paused: self.paused,
            fenced: self.fenced,
            regions,
            reasons: self.reasons.clone(),
            alerts: self.alerts.values().cloned().collect(),
            transitions_last_hour: self.recent_transitions(now_ms),
        }
    }

    /// Whether the alert condition `key` is open in the engine.
    pub fn alert_open(&self, key: &str) -> bool {
        self.alerts.contains_key(key)
    }

    /// Takes over an alert condition a previous run left open (restored from the audit log)
    /// without paging again: the engine resolves it as its own when the condition ends.
    pub fn adopt_alert(&mut self, key: &str, message: &str) {
        self.alerts
            .entry(key.to_string())
            .or_insert_with(|| message.to_string());
    }

    pub fn region_state(&self, region: &RegionId) -> Option<RegionState> {
        self.tracks.get(region).map(|t| t.state)
    }

    fn on_verdict(&mut self, now_ms: u64, region: &RegionId, verdict: Verdict, reason: String) {
        let Some(track) = self.tracks.get_mut(region) else {
            return;
        };
        if track.verdict != verdict {
            track.verdict = verdict;
            track.verdict_since_ms = now_ms;
        }
        track.reason = reason;
    }

    /// Derives each region's state from its verdict history and the clock.
    fn refresh_states(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let config = &self.config;
        for (id, track) in self.tracks.iter_mut() {
            let held_ms = now_ms.saturating_sub(track.verdict_since_ms);
            let next = match track.verdict {
                Verdict::Down if held_ms >= config.down_confirm_ms => {
                    track.was_down = true;
                    RegionState::Down
                }
                // Unknown never counts as down (a partition must not trigger a failover), but a
                // region that was down stays marked so its return goes through Recovering.
                Verdict::Down | Verdict::Unknown => RegionState::Suspect,
                Verdict::Up if track.was_down && held_ms < config.stability_window_ms => RegionState::Recovering,
                Verdict::Up => {
                    track.was_down = false;
                    RegionState::Healthy
                }
            };
            if next != track.state {
                let from = track.state;
                track.state = next;
                track.since_ms = now_ms;
                out.push(Command::Record {
                    generation: self.generation,
                    note: Note::RegionState {
                        region: id.clone(),
                        from,
                        to: next,
                        reason: track.reason.clone(),
                    },
                });
            }
        }
    }

    fn on_runbook(&mut self, now_ms: u64, generation: Generation, outcome: RunbookOutcome, out: &mut Vec<Command>) {
        let Some(order) = self.in_flight.take_if(|o| o.generation == generation) else {
            out.push(Command::Record {
                generation,
                note: Note::StaleRunbookReport { generation },
            });
            return;
        };
        out.push(Command::Record {
            generation,
            note: Note::RunbookFinished {
                generation,
                to: order.to.clone(),
                outcome: outcome.clone(),
            },
        });
        match outcome {
            RunbookOutcome::Succeeded => {
                self.observed = Some(order.to.clone());
                self.failures_in_row = 0;
                self.dirty = false;
                self.next_attempt_ms = now_ms;
                self.resolve("runbook", out);
            }
            RunbookOutcome::Failed { step, error } => {
                self.dirty = true;
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let shift = self.failures_in_row.saturating_sub(1).min(16);
                let wait = self
                    .config
                    .runbook_retry_ms
                    .saturating_mul(1 << shift)
                    .min(RUNBOOK_RETRY_MS_MAX);
                self.next_attempt_ms = now_ms.saturating_add(wait);
                // Each retry updates the status; only another step or kind of error pages.
                self.alert_marked(
                    "runbook",
                    format!(
                        "runbook generation {generation} to {} failed at step '{step}': {error}; retrying with a new generation in {wait} ms",
                        order.to.active
                    ),
                    failure_class(&step, &error),
                    out,
                );
            }
            RunbookOutcome::Fenced { step, error } => {
                self.fenced = true;
                self.alert(
                    "fenced",
                    format!(
                        "step '{step}' refused generation {generation} as stale ({error}): its target was changed outside this controller, by another controller with a newer generation or by hand, and this controller stopped actuating. Do what the step's error says (set a hand-edited target back, or check for a second controller), then `switchyard resume`; only if no other controller runs and the audit log was lost, restart with --generation-floor above the generation the receiver reports"
                    ),
                    out,
                );
            }
        }
    }

    fn on_manual(&mut self, now_ms: u64, command: Manual, out: &mut Vec<Command>) {
        let result = self.manual(now_ms, &command, out);
        let (accepted, reason) = match result {
            Ok(reason) => (true, reason),
            Err(reason) => (false, reason),
        };
        out.push(Command::Record {
            generation: self.generation,
            note: Note::Manual {
                command,
                accepted,
                reason: reason.clone(),
            },
        });
        out.push(Command::Answer { accepted, reason });
    }

    fn manual(&mut self, now_ms: u64, command: &Manual, out: &mut Vec<Command>) -> Result<String, String> {
        match command {
            Manual::Pause => {
                self.paused = true;
                Ok("automation paused: no automatic failover or failback until resume".into())
            }
            Manual::Resume => {
                self.paused = false;
                let was_fenced = std::mem::replace(&mut self.fenced, false);
                self.next_attempt_ms = now_ms;
                self.resolve("fenced", out);
                Ok(if was_fenced {
                    "automation resumed; the fence was cleared and the next runbook takes a new generation".into()
                } else {
                    "automation resumed".into()
                })
            }
            Manual::Acknowledge => {
                self.transitions.clear();
                let keys: Vec<String> = self.alerts.keys().cloned().collect();
                self.alerts.clear();
                self.paged.clear();
                Ok(format!(
                    "acknowledged: failover rate limit reset, {} alert(s) cleared",
                    keys.len()
                ))
            }
            Manual::Failover { force_data_loss } => {
                // Forcing a move that is still pending (its runbook refused to lose data)
                // retries that move; it does not pick yet another region.
                if *force_data_loss
                    && let Some(intent) = &mut self.intent
                    && (self.observed.as_ref() != Some(&intent.placement) || self.dirty)
                {
                    intent.force_data_loss = true;
                    self.next_attempt_ms = now_ms;
                    return Ok(format!(
                        "the pending move to {} is retried accepting data loss",
                        intent.placement.active
                    ));
                }
                let current = self
                    .current()
                    .ok_or("no placement yet: the controller is still starting")?;
                if self.config.policy == Policy::ActiveActive {
                    return Err(
                        "policy active-active has no single active region to fail over; use switchover --to REGION to move the write region".into(),
                    );
                }
                let target = self.best_target(Some(&current.active)).ok_or_else(|| {
                    format!(
                        "no other region is healthy or recovering; staying on {}",
                        current.active
                    )
                })?;
                let mut reason = format!("manual failover from {} to {target}", current.active);
                self.set_intent(
                    Placement::single(target),
                    TransitionKind::Failover,
                    reason.clone(),
                    false,
                    now_ms,
                    out,
                );
                if *force_data_loss && let Some(intent) = &mut self.intent {
                    intent.force_data_loss = true;
                    reason.push_str(", accepting data loss");
                }
                Ok(reason)
            }
            Manual::Switchover { to } => {
                let state = self
                    .tracks
                    .get(to)
                    .map(|t| t.state)
                    .ok_or_else(|| format!("unknown region '{to}'; known regions: {}", self.region_names()))?;
                if state == RegionState::Down {
                    return Err(format!("region {to} is down; switch over to a region that is up"));
                }
                self.preferred = to.clone();
                let placement = match self.config.policy {
                    Policy::ActivePassive => Placement::single(to.clone()),
                    Policy::ActiveActive => {
                        let mut placement = self.current().unwrap_or_else(|| Placement::single(to.clone()));
                        if !placement.serving.contains(to) {
                            placement.serving.push(to.clone());
                            placement.serving.sort();
                        }
                        placement.active = to.clone();
                        placement
                    }
                };
                let reason = format!("manual switchover to {to}; {to} is now the preferred region");
                self.set_intent(
                    placement,
                    TransitionKind::Switchover,
                    reason.clone(),
                    false,
                    now_ms,
                    out,
                );
                Ok(reason)
            }
            Manual::Failback => {
                let home = self.home();
                let track = self.tracks.get(&home).expect("home is a configured region");
                if track.state == RegionState::Down {
                    return Err(format!("{home} is down; failback waits until it is up"));
                }
                if let Some(why) = self.lag_blocks(&home, now_ms) {
                    return Err(format!(
                        "{why}; failing back now could lose writes. Wait, or force it with switchover --to {home}"
                    ));
                }
                self.preferred = home.clone();
                let placement = match self.config.policy {
                    Policy::ActivePassive => Placement::single(home.clone()),
                    Policy::ActiveActive => {
                        let mut placement = self.current().unwrap_or_else(|| Placement::single(home.clone()));
                        if !placement.serving.contains(&home) {
                            placement.serving.push(home.clone());
                            placement.serving.sort();
                        }
                        placement.active = home.clone();
                        placement
                    }
                };
                let reason = format!("manual failback to {home}");
                self.set_intent(placement, TransitionKind::Failback, reason.clone(), false, now_ms, out);
                Ok(reason)
            }
        }
    }

    /// The highest-priority region: where a failback goes.
    fn home(&self) -> RegionId {
        sorted_by_priority(&self.config.regions)[0].clone()
    }

    fn region_names(&self) -> String {
        self.tracks.keys().map(|r| r.0.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Intent if any, else observed.
    fn current(&self) -> Option<Placement> {
        self.intent
            .as_ref()
            .map(|i| i.placement.clone())
            .or_else(|| self.observed.clone())
    }

    fn recent_transitions(&self, now_ms: u64) -> usize {
        self.transitions
            .iter()
            .filter(|&&at| now_ms.saturating_sub(at) < FAILOVER_WINDOW_MS)
            .count()
    }

    /// Best region to move to: healthy first, then recovering, by priority (preferred first).
    fn best_target(&self, excluding: Option<&RegionId>) -> Option<RegionId> {
        let mut candidates: Vec<(u8, bool, u32, &RegionId)> = self
            .tracks
            .iter()
            .filter(|(id, _)| Some(*id) != excluding)
            .filter_map(|(id, t)| {
                let rank = match t.state {
                    RegionState::Healthy => 0,
                    RegionState::Recovering => 1,
                    RegionState::Suspect | RegionState::Down => return None,
                };
                Some((rank, *id != self.preferred, t.priority, id))
            })
            .collect();
        candidates.sort();
        candidates.first().map(|c| c.3.clone())
    }

    /// Why a failback to `region` must wait for its data, if it must.
    fn lag_blocks(&self, region: &RegionId, now_ms: u64) -> Option<String> {
        self.data_lag_blocks(region, now_ms)
            .or_else(|| self.media_blocks(region, now_ms))
    }

    /// Why a failback to `region` must wait for its media, if it must.
    fn media_blocks(&self, region: &RegionId, now_ms: u64) -> Option<String> {
        let bound = self.config.failback_media_objects_max?;
        let track = self.tracks.get(region)?;
        match track.media {
            None => Some(format!("media lag of {region} is unknown (no measurement yet)")),
            Some((_, at)) if now_ms.saturating_sub(at) > self.config.media_stale_ms => Some(format!(
                "media lag of {region} is unknown (last measurement {} ms old)",
                now_ms.saturating_sub(at)
            )),
            Some((objects, _)) if objects > bound => Some(format!(
                "{region} lacks {objects} media objects, above failback_media_objects_max = {bound}"
            )),
            Some(_) => None,
        }
    }

    fn data_lag_blocks(&self, region: &RegionId, now_ms: u64) -> Option<String> {
        let bound = self.config.failback_lag_max_ms?;
        let track = self.tracks.get(region)?;
        match track.lag {
            None => Some(format!("replication lag of {region} is unknown (no reading yet)")),
            Some((_, at)) if now_ms.saturating_sub(at) > self.config.lag_stale_ms => Some(format!(
                "replication lag of {region} is unknown (last reading {} ms old)",
                now_ms.saturating_sub(at)
            )),
            Some((lag, _)) if lag > bound => Some(format!(
                "replication lag of {region} is {lag} ms, above the {bound} ms bound"
            )),
            Some(_) => None,
        }
    }

    fn hold_blocks(&self, now_ms: u64) -> Option<String> {
        let last = self.last_transition_ms?;
        let until = last.saturating_add(self.config.min_hold_ms);
        (now_ms < until).then(|| {
            format!(
                "holding after the last transition for {} ms more (min_hold_ms {})",
                until - now_ms,
                self.config.min_hold_ms
            )
        })
    }

    fn rate_blocks(&self, now_ms: u64) -> Option<String> {
        let recent = self.recent_transitions(now_ms);
        let max = self.config.failovers_per_hour_max as usize;
        (recent > 0 && recent >= max).then(|| {
            format!(
                "{recent} automatic transitions in the last hour reached failovers_per_hour_max {max}; a human must look and run `switchyard acknowledge`"
            )
        })
    }

    /// The automatic policy: decides the intent from region states.
    fn evaluate(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        self.reasons.clear();
        if self.fenced {
            self.reasons.push(
                "fenced: a step found its target changed outside this controller (another controller's newer generation, or a hand edit; the last runbook's failed step says which); run `switchyard resume` once it is dealt with".into(),
            );
            return;
        }
        let Some(current) = self.current() else {
            self.initial(now_ms, out);
            return;
        };
        if self.paused {
            self.reasons
                .push("automation paused by an operator; run `switchyard resume`".into());
            return;
        }
        match self.config.policy {
            Policy::ActivePassive => self.evaluate_active_passive(now_ms, current, out),
            Policy::ActiveActive => self.evaluate_active_active(now_ms, current, out),
        }
    }

    fn initial(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let all_seen = self.tracks.values().all(|t| t.verdict != Verdict::Unknown);
        let waited = now_ms.saturating_sub(self.started_ms.unwrap_or(now_ms)) >= self.config.startup_grace_ms;
        if !all_seen && !waited {
            self.reasons.push(format!(
                "starting: waiting for a verdict on every region (or startup_grace_ms {})",
                self.config.startup_grace_ms
            ));
            return;
        }
        let placement = match self.config.policy {
            Policy::ActivePassive => {
                let preferred_down = self.tracks.get(&self.preferred).map(|t| t.state) == Some(RegionState::Down);
                let target = if preferred_down {
                    self.best_target(None)
                } else {
                    Some(self.preferred.clone())
                };
                match target {
                    Some(target) => Placement::single(target),
                    None => {
                        self.all_down(None, out);
                        return;
                    }
                }
            }
            Policy::ActiveActive => {
                let serving: Vec<RegionId> = self
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.state != RegionState::Down)
                    .map(|(id, _)| id.clone())
                    .collect();
                match self.pick_active(&serving) {
                    Some(active) => Placement { active, serving },
                    None => {
                        self.all_down(None, out);
                        return;
                    }
                }
            }
        };
        let reason = format!("initial placement: {} active", placement.active);
        self.set_intent(placement, TransitionKind::Initial, reason, false, now_ms, out);
    }

    fn all_down(&mut self, current: Option<&Placement>, out: &mut Vec<Command>) {
        let message = match current {
            Some(p) => format!(
                "static stability: every region is down or unknown; keeping the last good placement ({} active) instead of routing to nothing",
                p.active
            ),
            None => "static stability: every region is down or unknown; no placement chosen yet".to_string(),
        };
        self.reasons.push(message.clone());
        self.alert("all_down", message, out);
    }

    fn evaluate_active_passive(&mut self, now_ms: u64, current: Placement, out: &mut Vec<Command>) {
        let active_state = self.tracks.get(&current.active).map(|t| t.state);
        if active_state == Some(RegionState::Down) {
            match self.best_target(Some(&current.active)) {
                None => self.all_down(Some(&current), out),
                Some(target) => {
                    self.resolve("all_down", out);
                    let reason = format!(
                        "{} is down ({}); failing over to {target}",
                        current.active,
                        self.tracks
                            .get(&current.active)
                            .map(|t| t.reason.as_str())
                            .unwrap_or("")
                    );
                    if let Some(why) = self.rate_blocks(now_ms) {
                        self.block(why, out);
                        return;
                    }
                    self.set_intent(
                        Placement::single(target),
                        TransitionKind::Failover,
                        reason,
                        true,
                        now_ms,
                        out,
                    );
                }
            }
            return;
        }
        self.resolve("all_down", out);
        if active_state == Some(RegionState::Suspect) {
            self.reasons.push(format!(
                "{} is suspect ({}): not enough vantage points agree it is down; not acting",
                current.active,
                self.tracks
                    .get(&current.active)
                    .map(|t| t.reason.as_str())
                    .unwrap_or("")
            ));
        }
        let home = self.preferred.clone();
        if current.active == home {
            self.resolve("rate_limit", out);
            return;
        }
        if !self.config.auto_failback {
            self.reasons.push(format!(
                "serving from {} while the preferred region is {home}; auto_failback is off: run `switchyard failback`",
                current.active
            ));
            return;
        }
        if let Some(why) = self.failback_blocks(now_ms, &home) {
            self.reasons.push(format!("failback to {home} waits: {why}"));
            return;
        }
        // "Caught up" only where the lag was checked (`failback_lag_check = false` skips it).
        let data = if self.config.failback_lag_max_ms.is_some() {
            " and its data has caught up"
        } else {
            " (its data's lag is not checked: failback_lag_check = false)"
        };
        let reason = format!(
            "{home} has been healthy for the stability window{data}; failing back from {}",
            current.active
        );
        self.set_intent(
            Placement::single(home),
            TransitionKind::Failback,
            reason,
            true,
            now_ms,
            out,
        );
    }

    /// Why a region may not (re)gain traffic automatically yet.
    fn failback_blocks(&mut self, now_ms: u64, region: &RegionId) -> Option<String> {
        let track = self.tracks.get(region)?;
        match track.state {
            RegionState::Healthy => {}
            RegionState::Recovering => {
                let up_for = now_ms.saturating_sub(track.verdict_since_ms);
                return Some(format!(
                    "{region} is recovering: up for {up_for} ms of the {} ms stability window",
                    self.config.stability_window_ms
                ));
            }
            RegionState::Suspect => return Some(format!("{region} is suspect ({})", track.reason)),
            RegionState::Down => return Some(format!("{region} is down ({})", track.reason)),
        }
        if let Some(why) = self.lag_blocks(region, now_ms) {
            return Some(why);
        }
        if let Some(why) = self.hold_blocks(now_ms) {
            return Some(why);
        }
        self.rate_blocks(now_ms)
    }

    fn evaluate_active_active(&mut self, now_ms: u64, current: Placement, out: &mut Vec<Command>) {
        let mut keep: Vec<RegionId> = Vec::new();
        let mut dropped: Vec<RegionId> = Vec::new();
        for region in &current.serving {
            match self.tracks.get(region).map(|t| t.state) {
                Some(RegionState::Down) | None => dropped.push(region.clone()),
                Some(_) => keep.push(region.clone()),
            }
        }
        if keep.is_empty() {
            self.all_down(Some(&current), out);
            return;
        }
        self.resolve("all_down", out);
        let mut added: Vec<RegionId> = Vec::new();
        let candidates: Vec<RegionId> = self
            .tracks
            .keys()
            .filter(|id| !current.serving.contains(id))
            .cloned()
            .collect();
        for region in candidates {
            match self.failback_blocks(now_ms, &region) {
                None => added.push(region),
                Some(why) => {
                    if self.tracks.get(&region).map(|t| t.state) != Some(RegionState::Down) {
                        self.reasons.push(format!("re-adding {region} waits: {why}"));
                    } else {
                        self.reasons.push(format!("{region} is out of the serving set: {why}"));
                    }
                }
            }
        }
        if dropped.is_empty() && added.is_empty() {
            // The write region may change back to the preferred one when it serves.
            let active = self.pick_active(&current.serving).expect("serving is not empty");
            if active != current.active && !current.serving.contains(&current.active) {
                let placement = Placement {
                    active,
                    serving: current.serving.clone(),
                };
                self.set_intent(
                    placement,
                    TransitionKind::Rebalance,
                    "write region not serving".into(),
                    true,
                    now_ms,
                    out,
                );
            }
            return;
        }
        if !dropped.is_empty()
            && let Some(why) = self.rate_blocks(now_ms)
        {
            self.block(why, out);
            return;
        }
        let mut serving = keep;
        serving.extend(added.iter().cloned());
        serving.sort();
        let active = if serving.contains(&current.active) && !added.contains(&self.preferred) {
            current.active.clone()
        } else {
            self.pick_active(&serving).expect("serving is not empty")
        };
        let mut parts = Vec::new();
        if !dropped.is_empty() {
            parts.push(format!("dropping down region(s) {}", join(&dropped)));
        }
        if !added.is_empty() {
            parts.push(format!("re-adding healthy, caught-up region(s) {}", join(&added)));
        }
        let kind = if dropped.is_empty() {
            TransitionKind::Failback
        } else {
            TransitionKind::Failover
        };
        self.set_intent(Placement { active, serving }, kind, parts.join("; "), true, now_ms, out);
    }

    /// The write region among `serving`: the preferred one if it serves, else by priority.
    fn pick_active(&self, serving: &[RegionId]) -> Option<RegionId> {
        if serving.contains(&self.preferred) {
            return Some(self.preferred.clone());
        }
        serving
            .iter()
            .min_by_key(|r| {
                (
                    self.tracks.get(*r).map(|t| t.priority).unwrap_or(u32::MAX),
                    (*r).clone(),
                )
            })
            .cloned()
    }

    fn block(&mut self, why: String, out: &mut Vec<Command>) {
        self.reasons.push(why.clone());
        if !self.alerts.contains_key("rate_limit") {
            out.push(Command::Record {
                generation: self.generation,
                note: Note::Blocked { reason: why.clone() },
            });
        }
        self.alert("rate_limit", why, out);
    }

    fn set_intent(
        &mut self,
        placement: Placement,
        kind: TransitionKind,
        reason: String,
        automatic: bool,
        now_ms: u64,
        out: &mut Vec<Command>,
    ) {
        if self.current().as_ref() == Some(&placement) {
            return;
        }
        if automatic && kind != TransitionKind::Initial {
            self.transitions.push_back(now_ms);
            while self.transitions.len() > TRANSITIONS_REMEMBERED_MAX
                || self
                    .transitions
                    .front()
                    .is_some_and(|&at| now_ms.saturating_sub(at) >= FAILOVER_WINDOW_MS)
            {
                self.transitions.pop_front();
            }
        }
        if kind != TransitionKind::Initial {
            self.last_transition_ms = Some(now_ms);
        }
        out.push(Command::Record {
            generation: self.generation,
            note: Note::Decision {
                kind,
                from: self.current(),
                to: placement.clone(),
                reason: reason.clone(),
                automatic,
            },
        });
        // A runbook still moving traffic toward another placement is superseded: waiting for
        // it (a failback's slow step toward a region that just went down again) would hold the
        // new move for as long as its steps take, and then run it toward the region the engine
        // no longer wants. Its steps are safe to drop and re-run (each reads before it writes,
        // and the newer generation fences what the older one still had in flight).
        if let Some(order) = self.in_flight.take_if(|order| order.to != placement) {
            out.push(Command::Record {
                generation: order.generation,
                note: Note::RunbookSuperseded {
                    generation: order.generation,
                    to: order.to.clone(),
                    reason: reason.clone(),
                },
            });
            out.push(Command::CancelRunbook {
                generation: order.generation,
            });
            // A new move, not a retry of the one dropped. Whatever of the dropped runbook's
            // steps had already applied is undone by running the new one in full, even when
            // its placement is the one observed before (a failback cancelled back to where it
            // started).
            self.failures_in_row = 0;
            self.dirty = true;
        }
        self.intent = Some(Intent {
            placement,
            kind,
            reason,
            force_data_loss: false,
            continues: None,
        });
        // A new decision may run at once even after failures.
        self.next_attempt_ms = now_ms;
    }

    /// Starts a runbook when intent and observed differ and none runs.
    fn reconcile(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        if self.fenced || self.in_flight.is_some() {
            return;
        }
        let Some(intent) = &self.intent else {
            return;
        };
        if self.observed.as_ref() == Some(&intent.placement) && !self.dirty {
            return;
        }
        if now_ms < self.next_attempt_ms {
            self.reasons.push(format!(
                "retrying the runbook to {} in {} ms",
                intent.placement.active,
                self.next_attempt_ms - now_ms
            ));
            return;
        }
        self.generation = self.generation.next();
        let kind = if self.failures_in_row > 0 {
            TransitionKind::Retry
        } else {
            intent.kind
        };
        // A retry or roll-forward says which move it continues.
        let continues = match kind {
            TransitionKind::Retry | TransitionKind::RollForward => intent.continues.or(match intent.kind {
                TransitionKind::Retry | TransitionKind::RollForward => None,
                moved => Some(moved),
            }),
            _ => None,
        };
        let order = RunbookOrder {
            generation: self.generation,
            kind,
            from: self.observed.clone(),
            to: intent.placement.clone(),
            reason: intent.reason.clone(),
            force_data_loss: intent.force_data_loss,
            continues,
        };
        out.push(Command::Record {
            generation: self.generation,
            note: Note::RunbookStarted(order.clone()),
        });
        out.push(Command::RunRunbook(order.clone()));
        self.in_flight = Some(order);
    }

    fn alert(&mut self, key: &str, message: String, out: &mut Vec<Command>) {
        // A fence is rare and each one matters: every changed message pages.
        let mark = if key == "fenced" {
            message.clone()
        } else {
            String::new()
        };
        self.alert_marked(key, message, mark, out);
    }

    /// Only a new condition pages, or one whose `mark` (what it is about: for a failed
    /// runbook, the step and the kind of error) changed; a changed message alone (a retry's
    /// generation, a countdown) just updates status.
    fn alert_marked(&mut self, key: &str, message: String, mark: String, out: &mut Vec<Command>) {
        let is_new = !self.alerts.contains_key(key);
        self.alerts.insert(key.to_string(), message.clone());
        if is_new || self.paged.get(key) != Some(&mark) {
            self.paged.insert(key.to_string(), mark);
            out.push(Command::Alert {
                key: key.to_string(),
                message,
            });
        }
    }

    fn resolve(&mut self, key: &str, out: &mut Vec<Command>) {
        self.paged.remove(key);
        if self.alerts.remove(key).is_some() {
            out.push(Command::Resolved { key: key.to_string() });
        }
    }
}

/// Longest part of an error that tells failures apart in [`failure_class`], in characters.
pub const FAILURE_CLASS_CHARS_MAX: usize = 120;

/// What a runbook failure is about, to tell a new failure from a retry of the same: the step
/// and the start of its error with digits blurred (an attempt count, a generation, a port
/// or an exit status do not make another failure).
pub fn failure_class(step: &str, error: &str) -> String {
    let blurred: String = error
        .chars()
        .take(FAILURE_CLASS_CHARS_MAX)
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!("{step}: {blurred}")
}

fn join(regions: &[RegionId]) -> String {
    regions.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(", ")
}

fn sorted_by_priority(regions: &[RegionSpec]) -> Vec<RegionId> {
    let mut sorted: Vec<&RegionSpec> = regions.iter().collect();
    sorted.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.id.cmp(&b.id)));
    sorted.into_iter().map(|r| r.id.clone()).collect()
}

fn placement_known(placement: &Placement, tracks: &BTreeMap<RegionId, Track>) -> bool {
    tracks.contains_key(&placement.active) && placement.serving.iter().all(|r| tracks.contains_key(r))
}

/// Regions named in a set, for tests and status.
pub fn region_set(placement: &Placement) -> BTreeSet<RegionId> {
    placement.serving.iter().cloned().collect()
}

#[cfg(test)]
mod tests;
