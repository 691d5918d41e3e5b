//! High availability: several controllers, one leader, elected and fenced through etcd.
//!
//! With `[controller.ha]` every member probes, aggregates and serves its API, but only the
//! member holding the leader key in etcd decides and acts:
//! - `leadership`: the sans-IO state machine (clock injected) that says when to campaign,
//!   renew, load the shared state and stop acting. Leadership is an input to the engine, never
//!   a socket inside it: the server ticks the engine only while `Member::acting` holds.
//! - `SharedState` (here): what a new leader needs to roll forward, kept in etcd under
//!   `{prefix}/state`: the generation counter, the observed placement, the preferences and the
//!   runbook in progress with the steps done. Every change is a transaction conditioned on the
//!   leader key's create revision (the term) and on the state's own mod revision, so a member
//!   whose lease ended can never write it, and the generation only grows across leaders.
//! - `incidents`: the alert incidents left open, kept by the leader under `{prefix}/incidents`
//!   (written when one opens or resolves, conditioned on the leader key's create revision), so
//!   the next leader resolves them with their original dedup keys and does not page again a
//!   condition that still holds; and the merge with a new leader's own audit log.
//! - `etcd`: the I/O around both: the etcd client, the driver loop and `Member`, the handle the
//!   server holds.
//!
//! Without `[controller.ha]` none of this runs: one controller with its audit log, as before.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod incidents;
pub mod leadership;
#[cfg(not(feature = "etcd"))]
mod without_etcd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{
    FAILOVER_WINDOW_MS, Generation, Placement, RegionId, Restored, RunbookOrder, RunbookOutcome, TransitionKind,
};

#[cfg(feature = "etcd")]
pub use etcd::Member;
pub use leadership::{LeaderInfo, Leadership, Role, Term};
#[cfg(not(feature = "etcd"))]
pub use without_etcd::Member;

/// Something the server must hear about (to alert and record it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// This member won the leader key and loaded the shared state: it acts from now on.
    Leading { term: Term, generation: Generation },
    /// This member stopped acting.
    SteppedDown { reason: String },
    /// This member deleted `member`'s leader key, unchanged for `unchanged_ms` (more than the
    /// lease: its leader stopped acting), and campaigns.
    Deposed { member: String, unchanged_ms: u64 },
}

/// Why a guarded change was not made.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("this member no longer leads (term {0:?} ended); another member rolls the runbook forward")]
    NotLeading(Term),
    #[error("superseded in etcd: {0}")]
    Superseded(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The leader lease when `lease_ms` is not set.
pub const LEASE_MS_DEFAULT: u64 = 5_000;
/// Shortest lease: etcd grants whole seconds and at least its own minimum (1.5 s by default).
pub const LEASE_MS_MIN: u64 = 2_000;
/// Longest lease: beyond this a dead leader holds everything up for too long.
pub const LEASE_MS_MAX: u64 = 300_000;
/// etcd endpoints accepted at most.
pub const ENDPOINTS_MAX: usize = 16;
/// Longest member name (it is part of status, alerts and the leader key's value).
pub const MEMBER_NAME_BYTES_MAX: usize = 64;
/// Largest shared state read back from etcd; a larger value is refused as corrupt.
pub const STATE_BYTES_MAX: usize = 1024 * 1024;
/// Longest key prefix.
pub const PREFIX_BYTES_MAX: usize = 256;
/// Transition times kept in the shared state for the hourly limit.
pub const TRANSITION_TIMES_MAX: usize = 64;
/// Largest leader-key value read back from etcd.
pub const LEADER_VALUE_BYTES_MAX: usize = 4096;

/// History of etcd's keyspace the leader keeps when it compacts (`compact_history_s`).
pub const COMPACT_HISTORY_S_DEFAULT: u64 = 600;
/// Shortest history kept: a member reads the shared state at the revision it just read the
/// leader key at, and must not find it compacted in between.
pub const COMPACT_HISTORY_S_MIN: u64 = 10;
/// Longest history kept (a week).
pub const COMPACT_HISTORY_S_MAX: u64 = 7 * 24 * 3600;

fn lease_ms_default() -> u64 {
    LEASE_MS_DEFAULT
}

fn compact_history_s_default() -> u64 {
    COMPACT_HISTORY_S_DEFAULT
}

fn prefix_default() -> String {
    "/switchyard".into()
}

/// `[controller.ha]`: run as one member of a group of controllers elected through etcd.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HaSection {
    /// etcd client URLs, like `["http://10.0.1.5:2379", "http://10.0.2.5:2379"]`.
    pub etcd: Vec<String>,
    /// This member's name, unique in the group (`switchyard controller --member` overrides it).
    pub member: String,
    /// The leader lease: a dead leader is replaced after at most this (plus one renewal).
    #[serde(default = "lease_ms_default")]
    pub lease_ms: u64,
    /// Key prefix in etcd: groups of controllers sharing one etcd use different prefixes.
    #[serde(default = "prefix_default")]
    pub prefix: String,
    /// The leader compacts etcd's history older than this every as many seconds (the
    /// heartbeat writes the leader key every third of the lease, ~52,000 revisions a day with
    /// the default lease, which etcd keeps until compacted: its 2 GB quota fills in months).
    /// Compaction is the whole cluster's, every key's: 0 where etcd is shared with applications
    /// that need older revisions, or compacts itself (`--auto-compaction-retention`).
    #[serde(default = "compact_history_s_default")]
    pub compact_history_s: u64,
    /// The URL other members and operators reach this member's API at (default
    /// `http://LISTEN`, the bound address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// CA bundle (PEM) that signed etcd's server certificates; for `https://` endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) when etcd asks for one (`--client-cert-auth`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd user (with `password_file`) when etcd has authentication enabled.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This member's token (a file holding it): a follower sends it with its own probes'
    /// reports, which it passes on to the leader. The group's `[[tokens]]` lists it with
    /// `role = "member"` and the member's vantage name (`--vantage`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl HaSection {
    /// The leader key (its value names the leader).
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix.trim_end_matches('/'))
    }

    /// The shared state's key.
    pub fn state_key(&self) -> String {
        format!("{}/state", self.prefix.trim_end_matches('/'))
    }

    /// The key of the open alert incidents' list (`incidents::IncidentList`).
    pub fn incidents_key(&self) -> String {
        format!("{}/incidents", self.prefix.trim_end_matches('/'))
    }

    /// Makes relative paths absolute from the config file's `folder`.
    pub fn resolve_paths(&mut self, folder: &Path) {
        for path in [
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.password_file,
            &mut self.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = folder.join(&*path);
            }
        }
    }

    /// Every mistake as (key, message, fix).
    pub fn problems(&self) -> Vec<(&'static str, String, String)> {
        let mut problems = Vec::new();
        if self.etcd.is_empty() {
            problems.push((
                "etcd",
                "[controller.ha] etcd is empty".into(),
                "list the etcd client URLs, e.g. etcd = [\"http://10.0.1.5:2379\"]".into(),
            ));
        }
        if self.etcd.len() > ENDPOINTS_MAX {
            problems.push((
                "etcd",
                format!("[controller.ha] etcd lists {} endpoints", self.etcd.len()),
                format!("list at most {ENDPOINTS_MAX} (the etcd cluster's members)"),
            ));
        }
        for endpoint in &self.etcd {
            let tls = endpoint.starts_with("https://");
            if !tls && !endpoint.starts_with("http://") {
                problems.push((
                    "etcd",
                    format!("etcd endpoint '{endpoint}' is not an http:// or https:// URL"),
                    "write it as http://HOST:2379 (or https:// with ca_file)".into(),
                ));
            } else if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
                problems.push((
                    "etcd",
                    format!("etcd endpoint '{endpoint}' is plain http:// but TLS files are set"),
                    "use https:// endpoints with ca_file/cert_file, or remove the TLS files".into(),
                ));
            } else if let Err(problem) = health::spec::parse_url(endpoint, true) {
                problems.push((
                    "etcd",
                    format!("etcd endpoint {problem}"),
                    "write it as http://HOST:PORT, the port of etcd's client URLs (2379 by default)".into(),
                ));
            }
        }
        let name_ok = !self.member.is_empty()
            && self.member.len() <= MEMBER_NAME_BYTES_MAX
            && self
                .member
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            problems.push((
                "member",
                format!("member name '{}' is not a short name", self.member),
                format!(
                    "use 1 to {MEMBER_NAME_BYTES_MAX} letters, digits, '-', '_' or '.', unique per controller (e.g. the region: member = \"us-east-1\")"
                ),
            ));
        }
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&self.lease_ms) || !self.lease_ms.is_multiple_of(1000) {
            problems.push((
                "lease_ms",
                format!(
                    "lease_ms {} is not a whole number of seconds between {LEASE_MS_MIN} and {LEASE_MS_MAX}",
                    self.lease_ms
                ),
                format!("etcd leases count whole seconds: use e.g. lease_ms = {LEASE_MS_DEFAULT}"),
            ));
        }
        // At least the lease too: a look reads the state at the revision it read the leader key
        // at, and its requests may be retried for up to a sixth of the lease in between.
        let history_min_s = COMPACT_HISTORY_S_MIN.max(self.lease_ms.div_ceil(1000));
        if self.compact_history_s != 0 && !(history_min_s..=COMPACT_HISTORY_S_MAX).contains(&self.compact_history_s) {
            problems.push((
                "compact_history_s",
                format!(
                    "compact_history_s {} is not 0 or between {history_min_s} (the lease, at least {COMPACT_HISTORY_S_MIN}) and {COMPACT_HISTORY_S_MAX}",
                    self.compact_history_s
                ),
                format!(
                    "keep the default ({COMPACT_HISTORY_S_DEFAULT}: the leader compacts history older than 10 minutes), or 0 when etcd compacts itself (--auto-compaction-retention)"
                ),
            ));
        }
        if cfg!(not(feature = "etcd")) {
            problems.push((
                "etcd",
                "this switchyard was built without etcd support (cargo feature `etcd`)".into(),
                "build it with the default features, or remove [controller.ha]".into(),
            ));
        }
        if !self.prefix.starts_with('/')
            || self.prefix.trim_end_matches('/').is_empty()
            || self.prefix.len() > PREFIX_BYTES_MAX
        {
            problems.push((
                "prefix",
                format!("prefix '{}' is not an absolute key prefix", self.prefix),
                format!(
                    "use a prefix of at most {PREFIX_BYTES_MAX} bytes like \"/switchyard\" or \"/switchyard/shop\""
                ),
            ));
        }
        if let Some(advertise) = &self.advertise
            && !advertise.starts_with("http://")
            && !advertise.starts_with("https://")
        {
            problems.push((
                "advertise",
                format!("advertise '{advertise}' is not an http:// or https:// URL"),
                "give the URL other members reach this controller at, e.g. \"http://10.0.1.7:7400\"".into(),
            ));
        } else if let Some(Err(problem)) = self.advertise.as_deref().map(|url| health::spec::parse_url(url, true)) {
            problems.push((
                "advertise",
                format!("advertise {problem}"),
                "give the URL other members reach this controller at, e.g. \"http://10.0.1.7:7400\"".into(),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push((
                "cert_file",
                "cert_file and key_file come together".into(),
                "set both (the client certificate and its key) or neither".into(),
            ));
        }
        if self.user.is_some() != self.password_file.is_some() {
            problems.push((
                "user",
                "user and password_file come together".into(),
                "set both (etcd authentication) or neither".into(),
            ));
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("password_file", &self.password_file),
            ("token_file", &self.token_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push((
                    key,
                    format!("{key} {} cannot be read", path.display()),
                    "give the path of an existing file (relative paths start at the config file's folder)".into(),
                ));
            }
        }
        problems
    }
}

/// The runbook in progress, as etcd records it before every step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunbookProgress {
    pub order: RunbookOrder,
    /// The member running it.
    pub member: String,
    /// Steps that succeeded with `order.generation`, in order.
    pub steps_done: Vec<String>,
    /// Steps an earlier generation of the same decision applied (a roll-forward or retry
    /// continues that runbook), with that generation: the runbook does not apply them again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied_earlier: BTreeMap<String, u64>,
    /// Why it stopped, when it failed (the next leader, or the next attempt, rolls it forward).
    #[serde(default)]
    pub failed: Option<String>,
}

/// What a new leader needs, kept in etcd (`{prefix}/state`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedState {
    /// The highest generation any leader took: the fencing token's counter.
    pub generation: Generation,
    pub observed: Option<Placement>,
    pub observed_generation: Generation,
    pub preferred: Option<RegionId>,
    pub paused: bool,
    pub runbook: Option<RunbookProgress>,
    /// When the last transition was decided (wall-clock ms): a new leader keeps the hold.
    #[serde(default)]
    pub last_transition_at_ms: Option<u64>,
    /// When recent automatic transitions were decided (wall-clock ms, at most
    /// `TRANSITION_TIMES_MAX`): a new leader keeps the hourly limit.
    #[serde(default)]
    pub transitions_at_ms: Vec<u64>,
    /// Who wrote this version, and when (wall-clock ms), for operators.
    pub written_by: String,
    pub written_at_ms: u64,
}

/// Why a change to the shared state was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("generation {order} is not above generation {recorded} recorded in etcd")]
    GenerationNotAbove { order: u64, recorded: u64 },
    #[error("generation {0} is not the runbook in progress in etcd")]
    NotInProgress(u64),
}

/// The engine's hold timers in wall-clock milliseconds (`Engine::hold_timers` converted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldTimers {
    pub last_transition_at_ms: Option<u64>,
    pub transitions_at_ms: Vec<u64>,
}

impl HoldTimers {
    /// From engine-clock times, with the engine clock at `now_ms` and the wall clock at
    /// `wall_now_ms`.
    pub fn from_engine(last: Option<u64>, transitions: &[u64], now_ms: u64, wall_now_ms: u64) -> HoldTimers {
        let wall = |t: u64| wall_now_ms.saturating_sub(now_ms.saturating_sub(t));
        let skip = transitions.len().saturating_sub(TRANSITION_TIMES_MAX);
        HoldTimers {
            last_transition_at_ms: last.map(wall),
            transitions_at_ms: transitions.iter().skip(skip).map(|&t| wall(t)).collect(),
        }
    }
}

impl HoldTimers {
    /// To the engine's clock at `now_ms`, with the wall clock at `wall_now_ms`: what
    /// `Restored` takes. Times that no longer matter are dropped (a last transition at least
    /// `hold_ms` old, transitions outside the hourly window). Of the rest, a time before the
    /// engine started counts as its start and a time in the future (clocks apart) as now: a
    /// restart may lengthen a hold, never shorten it.
    pub fn to_engine(&self, now_ms: u64, wall_now_ms: u64, hold_ms: u64) -> (Option<u64>, Vec<u64>) {
        let age = |t: u64| wall_now_ms.saturating_sub(t);
        let engine = |t: u64| now_ms.saturating_sub(age(t));
        (
            self.last_transition_at_ms.filter(|&t| age(t) < hold_ms).map(engine),
            self.transitions_at_ms
                .iter()
                .filter(|&&t| age(t) < FAILOVER_WINDOW_MS)
                .map(|&t| engine(t))
                .collect(),
        )
    }
}

impl SharedState {
    /// What the engine restores from this state, with the engine's clock at `now_ms` and the
    /// wall clock at `wall_now_ms`; `floor` lifts the generation (the `--generation-floor` of a
    /// migration from a single controller). A time in the future (clocks apart) counts as now,
    /// so the hold is never shortened.
    pub fn restored(&self, floor: Generation, now_ms: u64, wall_now_ms: u64, hold_ms: u64) -> Restored {
        // A runbook still recorded never succeeded (interrupted or failed): roll it forward.
        let interrupted = self.runbook.as_ref().map(|progress| progress.order.to.clone());
        let interrupted_kind = self.runbook.as_ref().map(|progress| progress.order.move_kind());
        let timers = HoldTimers {
            last_transition_at_ms: self.last_transition_at_ms,
            transitions_at_ms: self.transitions_at_ms.clone(),
        };
        let (last_transition_ms, transitions_ms) = timers.to_engine(now_ms, wall_now_ms, hold_ms);
        Restored {
            generation: self.generation.max(floor),
            observed: self.observed.clone(),
            interrupted,
            interrupted_kind,
            preferred: self.preferred.clone(),
            paused: self.paused,
            last_transition_ms,
            transitions_ms,
        }
    }

    /// A runbook starts: the counter takes its generation (which must be above every one
    /// recorded) and the runbook is recorded before any step runs.
    pub fn start(
        &self,
        order: &RunbookOrder,
        timers: &HoldTimers,
        member: &str,
        at_ms: u64,
    ) -> Result<SharedState, StateError> {
        if order.generation <= self.generation {
            return Err(StateError::GenerationNotAbove {
                order: order.generation.0,
                recorded: self.generation.0,
            });
        }
        let mut next = self.stamped(member, at_ms);
        next.generation = order.generation;
        next.last_transition_at_ms = timers.last_transition_at_ms;
        next.transitions_at_ms = timers.transitions_at_ms.clone();
        next.runbook = Some(RunbookProgress {
            order: order.clone(),
            member: member.to_string(),
            steps_done: Vec::new(),
            applied_earlier: self.applied_by_the_same_decision(order),
            failed: None,
        });
        Ok(next)
    }

    /// What the recorded runbook (interrupted or failed) applied, when `order` continues it: a
    /// roll-forward or retry to the same placement. Any other order starts afresh.
    fn applied_by_the_same_decision(&self, order: &RunbookOrder) -> BTreeMap<String, u64> {
        let continues = matches!(order.kind, TransitionKind::RollForward | TransitionKind::Retry);
        match &self.runbook {
            Some(previous) if continues && previous.order.to == order.to => {
                let mut applied = previous.applied_earlier.clone();
                for step in &previous.steps_done {
                    applied.entry(step.clone()).or_insert(previous.order.generation.0);
                }
                applied
            }
            _ => BTreeMap::new(),
        }
    }

    /// Step `step` of the runbook of `generation` succeeded.
    pub fn step_done(
        &self,
        generation: Generation,
        step: &str,
        member: &str,
        at_ms: u64,
    ) -> Result<SharedState, StateError> {
        let mut next = self.stamped(member, at_ms);
        let progress = self.in_progress(&mut next.runbook, generation)?;
        if !progress.steps_done.iter().any(|s| s == step) {
            progress.steps_done.push(step.to_string());
        }
        Ok(next)
    }

    /// The runbook of `generation` ended: on success its target is the observed placement
    /// and nothing is in progress; on failure the runbook stays recorded (to roll forward).
    pub fn finish(
        &self,
        generation: Generation,
        outcome: &RunbookOutcome,
        member: &str,
        at_ms: u64,
    ) -> Result<SharedState, StateError> {
        let mut next = self.stamped(member, at_ms);
        let progress = self.in_progress(&mut next.runbook, generation)?;
        match outcome {
            RunbookOutcome::Succeeded => {
                next.observed = Some(progress.order.to.clone());
                next.observed_generation = generation;
                next.runbook = None;
            }
            RunbookOutcome::Failed { step, error } | RunbookOutcome::Fenced { step, error } => {
                progress.failed = Some(format!("step '{step}': {error}"));
            }
        }
        Ok(next)
    }

    /// The operator's preferences (after switchover, pause, resume).
    pub fn with_preferences(&self, preferred: &RegionId, paused: bool, member: &str, at_ms: u64) -> SharedState {
        let mut next = self.stamped(member, at_ms);
        next.preferred = Some(preferred.clone());
        next.paused = paused;
        next
    }

    /// `runbook` (of a copy of this state), when it is the runbook of `generation` and that
    /// is this state's generation.
    fn in_progress<'a>(
        &self,
        runbook: &'a mut Option<RunbookProgress>,
        generation: Generation,
    ) -> Result<&'a mut RunbookProgress, StateError> {
        runbook
            .as_mut()
            .filter(|p| p.order.generation == generation && generation == self.generation)
            .ok_or(StateError::NotInProgress(generation.0))
    }

    fn stamped(&self, member: &str, at_ms: u64) -> SharedState {
        let mut next = self.clone();
        next.written_by = member.to_string();
        next.written_at_ms = at_ms;
        next
    }
}

#[cfg(test)]
mod tests;
