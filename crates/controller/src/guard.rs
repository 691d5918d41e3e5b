//! `switchyard guard`: the region-local half of fencing. One guard runs in each region next to
//! its databases. It follows the active-region pointer of every controller member and fences
//! the region's database primaries (the servers of the runbook's `mysql_promote`,
//! `postgres_promote` and `redis_promote` steps in that region, fenced as those steps fence an
//! old primary) when:
//!
//! - **another region is active**: a fresh member's pointer names another region. A failover
//!   that could not reach this region's old primary (cut off from the controller, but not from
//!   its applications) left it writable; the guard, on the primary's side of the cut, fences
//!   it as soon as it hears of the move. Only a primary whose promotion record is older than
//!   the move's generation is fenced (a runbook moving the role back promotes a server here,
//!   writing a newer record, before the pointer follows), and nothing while a member says a
//!   runbook is moving the role here. Never undone by the guard: the next runbook that moves
//!   the active role here promotes a server itself.
//! - **the region is isolated** (opt-in, `[guard] isolation_fence_ms`): no member has given a
//!   fresh answer for that long (while another region is active too: the role may come back
//!   unheard). Patroni's rule (a primary that cannot
//!   renew its leader key demotes itself): a region cut off from every controller member may
//!   be failed over without hearing of it, so it stops taking writes before the controller can
//!   promote elsewhere ([`check_timing`] holds the configuration to that). Undone, for exactly
//!   the servers it changed, when a fresh member names this region again with no runbook under
//!   way: all of them at the generation it last saw; if the generation moved meanwhile, a
//!   runbook decided which server is primary here, and only one it promoted (its record that
//!   generation or newer) is unfenced.
//!
//! A member's answer marked `stale` (cut off from etcd) counts as no answer, as does one older
//! than a generation seen before or more than `pointer::GENERATION_STEP_MAX` above it. The decision ([`Guard`]) is sans-IO with an injected clock;
//! [`run`] reads the members, acts and logs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::members::ControllerUrls;
use providers::db::guard::{GuardOutcome, GuardReport};

use crate::client::HttpClient;
use crate::pointer::{FetchError, Moving, Reading};

/// Time between two rounds (a read of every member, and the fence while it holds).
pub const GUARD_POLL_MS: u64 = 500;
/// Longest wait for one member's answer in a round.
pub const GUARD_READ_TIMEOUT_MS: u64 = 1_000;
/// Smallest `isolation_fence_ms`: below it one slow round would fence a healthy primary.
pub const ISOLATION_FENCE_MS_MIN: u64 = 2 * (GUARD_POLL_MS + GUARD_READ_TIMEOUT_MS);
/// Largest `isolation_fence_ms` (one hour).
pub const ISOLATION_FENCE_MS_MAX: u64 = 3_600_000;
/// What fencing may take past `isolation_fence_ms`: the round that ends just before the limit
/// (its read, a fence for another region, the wait after it), the read of the round that
/// decides, and the servers' fence (`providers::db::guard::GUARD_SERVER_MS` each).
pub const FENCE_DELAY_MS: u64 = GUARD_POLL_MS + 2 * GUARD_READ_TIMEOUT_MS + 2 * providers::db::guard::GUARD_SERVER_MS;

/// What one round heard from the controller members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The newest answer not marked stale.
    Fresh {
        region: Option<String>,
        generation: u64,
        moving: Option<Moving>,
    },
    /// No member gave a fresh answer.
    Nothing,
    /// Every member answered (as many as `[guard] controller_members` says there are), each
    /// marked stale: none reaches etcd, so none can act. The newest value they name.
    EveryMemberStale { region: Option<String>, generation: u64 },
}

/// Why the guard fences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// A fresh member names another region active.
    Elsewhere { region: String, generation: u64 },
    /// No fresh answer from any member for `silent_ms` (at least `isolation_fence_ms`).
    Isolated { silent_ms: u64 },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Elsewhere { region, generation } => {
                write!(
                    f,
                    "the controller made {region} the active region (generation {generation})"
                )
            }
            Why::Isolated { silent_ms } => write!(
                f,
                "no controller member has given a fresh answer for {silent_ms} ms (isolation_fence_ms)"
            ),
        }
    }
}

/// What to do this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Hold,
    /// Fence every server of the region that takes writes.
    Fence(Why),
    /// Unfence these servers (the ones an isolation fence changed); with `promoted_since`, only
    /// those a runbook promoted under that generation or later (the generation moved during
    /// the isolation, and that runbook decided which server is primary here).
    Unfence {
        servers: Vec<String>,
        promoted_since: Option<u64>,
    },
}

impl Why {
    /// What the fence is for, as the servers' promotion records are compared with it: a move
    /// fences only primaries promoted before it; an isolation fence takes every writable one.
    pub fn older_than(&self) -> Option<u64> {
        match self {
            Why::Elsewhere { generation, .. } => Some(*generation),
            Why::Isolated { .. } => None,
        }
    }
}

/// A guard's state as its state file keeps it ([`Guard::saved`], [`Guard::restore`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// The region the guard guarded: a file of another region's guard is not taken.
    pub region: String,
    pub newest: Option<u64>,
    /// How long no member had answered when it was written, and when (wall clock, ms): a
    /// restart counts both, and a wall clock stepped back only loses the time in between.
    pub silent_ms: u64,
    pub saved_at_wall_ms: u64,
    pub elsewhere: Option<(String, u64)>,
    pub isolation: Option<SavedIsolation>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedIsolation {
    pub generation: Option<u64>,
    pub servers: Vec<String>,
}

/// Longest wait for the state file's write (and its sync) in a round.
pub const STATE_WRITE_TIMEOUT_MS: u64 = 1_000;
/// Largest state file read back.
pub const STATE_FILE_BYTES_MAX: u64 = 1 << 20;
/// While nothing else changes, the state file is rewritten this often (its last-contact time
/// then errs early by at most this: a restarted guard fences sooner, never later).
pub const STATE_REFRESH_MS: u64 = 5_000;

/// An isolation fence in force.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Isolation {
    /// The newest generation seen before it (None: none was ever seen).
    generation: Option<u64>,
    /// The servers it changed (fenced or paused): the only ones it may unfence.
    servers: BTreeSet<String>,
}

/// The guard's decision, from what each round heard and the time (milliseconds on any
/// monotonic clock).
#[derive(Clone, Debug)]
pub struct Guard {
    region: String,
    isolation_fence_ms: Option<u64>,
    /// When a member last gave a fresh answer (or every member a stale one, the failsafe), or
    /// when the guard started.
    last_contact_ms: u64,
    /// The newest generation a fresh answer carried.
    newest: Option<u64>,
    /// Fencing because another region is active.
    elsewhere: Option<(String, u64)>,
    isolation: Option<Isolation>,
    /// Silence carried over from before a restart ([`Guard::restore`]), until the next contact.
    silence_before_ms: u64,
}

impl Guard {
    pub fn new(region: &str, isolation_fence_ms: Option<u64>, now_ms: u64) -> Guard {
        Guard {
            region: region.to_string(),
            isolation_fence_ms,
            last_contact_ms: now_ms,
            newest: None,
            elsewhere: None,
            isolation: None,
            silence_before_ms: 0,
        }
    }

    /// The round's decision. `now_ms` is when the round began asking (an answer that came
    /// during the round counts from then, so slow members never stretch the silence).
    pub fn observe(&mut self, now_ms: u64, heard: Heard) -> Decision {
        match heard {
            // An answer older than one seen before is a member behind the others, and one more
            // than `GENERATION_STEP_MAX` ahead is forged or corrupt (taken, it would make every
            // genuine answer after it look old): both count as no answer.
            Heard::Fresh {
                region,
                generation,
                moving,
            } if self.newest.is_none_or(|newest| {
                generation >= newest && generation - newest <= crate::pointer::GENERATION_STEP_MAX
            }) =>
            {
                self.newest = Some(generation);
                self.last_contact_ms = now_ms;
                self.silence_before_ms = 0;
                self.heard_fresh(region, generation, moving)
            }
            Heard::Fresh { .. } | Heard::Nothing => self.silence(now_ms),
            Heard::EveryMemberStale { region, generation } => {
                // Every member answered and none reaches etcd: none can move the active role
                // (a leader acts only with etcd), so this is no isolation — Patroni's failsafe
                // mode. An etcd outage must not fence every region. What etcd last recorded
                // still counts when it is news: a move elsewhere at a newer generation.
                if let Some(region) = region
                    && region != self.region
                    && self.newest.is_none_or(|newest| {
                        generation > newest && generation - newest <= crate::pointer::GENERATION_STEP_MAX
                    })
                {
                    self.newest = Some(generation);
                    self.isolation = None;
                    self.elsewhere = Some((region.clone(), generation));
                }
                // An isolation fence in force stays (and its Redis pauses are renewed) until a
                // fresh answer can undo it.
                if self.isolation.is_some() {
                    return Decision::Fence(Why::Isolated {
                        silent_ms: self.silent_ms(now_ms),
                    });
                }
                self.last_contact_ms = now_ms;
                self.silence_before_ms = 0;
                self.keep_elsewhere().unwrap_or(Decision::Hold)
            }
        }
    }

    fn heard_fresh(&mut self, region: Option<String>, generation: u64, moving: Option<Moving>) -> Decision {
        match region {
            None => Decision::Hold,
            Some(_) if moving.as_ref().is_some_and(|m| m.to == self.region && !m.waiting) => {
                // A runbook is moving the active role here: it promotes this region's server
                // now, and the pointer follows. Nothing to fence, nothing to undo yet.
                self.elsewhere = None;
                Decision::Hold
            }
            Some(region) if region != self.region && moving.as_ref().is_some_and(|m| m.to == self.region) => {
                // A failed move here waits for its retry: the move that made `region` active
                // still holds, and its fence with it (a server the retry promotes carries a
                // newer record before it takes writes, and is left alone).
                self.isolation = None;
                self.elsewhere = Some((region.clone(), generation));
                Decision::Fence(Why::Elsewhere { region, generation })
            }
            Some(region) if region != self.region => {
                // The runbook that moved the active role owns this region's servers now: an
                // isolation fence is never undone by the guard after that.
                self.isolation = None;
                self.elsewhere = Some((region.clone(), generation));
                Decision::Fence(Why::Elsewhere { region, generation })
            }
            Some(_) => {
                self.elsewhere = None;
                let Some(isolation) = &self.isolation else {
                    return Decision::Hold;
                };
                if moving.is_some() {
                    // A runbook under way (or waiting to retry) may be taking a fenced server's
                    // final position.
                    return Decision::Hold;
                }
                if isolation.servers.is_empty() {
                    self.isolation = None;
                    return Decision::Hold;
                }
                // When the generation moved since the fence (the role went away and back), or
                // the guard never learnt it, a runbook may have decided which server is primary
                // here: only one it promoted is unfenced.
                let promoted_since = match isolation.generation {
                    Some(before) if before == generation => None,
                    _ => Some(generation),
                };
                Decision::Unfence {
                    servers: isolation.servers.iter().cloned().collect(),
                    promoted_since,
                }
            }
        }
    }

    /// No fresh answer this round: the isolation fence once the silence is long enough (also
    /// while another region is active: the role may have come here unheard), else the fence
    /// for the region last heard active.
    fn silent_ms(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_sub(self.last_contact_ms)
            .saturating_add(self.silence_before_ms)
    }

    fn silence(&mut self, now_ms: u64) -> Decision {
        let silent_ms = self.silent_ms(now_ms);
        match self.isolation_fence_ms {
            Some(limit) if silent_ms >= limit => {
                if self.isolation.is_none() {
                    self.isolation = Some(Isolation {
                        generation: self.newest,
                        servers: BTreeSet::new(),
                    });
                }
                Decision::Fence(Why::Isolated { silent_ms })
            }
            _ => self.keep_elsewhere().unwrap_or(Decision::Hold),
        }
    }

    /// The fence for another region, kept while nothing new is heard: renews Redis pauses,
    /// catches a server made writable by hand.
    fn keep_elsewhere(&self) -> Option<Decision> {
        self.elsewhere.as_ref().map(|(region, generation)| {
            Decision::Fence(Why::Elsewhere {
                region: region.clone(),
                generation: *generation,
            })
        })
    }

    /// What a fence did: an isolation fence remembers the servers it changed, and the ones it
    /// may have changed (an attempt that stopped after it began to change the server).
    pub fn fenced(&mut self, reports: &[GuardReport]) {
        if let Some(isolation) = &mut self.isolation {
            for report in reports {
                if matches!(
                    report.outcome,
                    GuardOutcome::Fenced { .. } | GuardOutcome::Paused | GuardOutcome::Interrupted(_)
                ) {
                    isolation.servers.insert(report.address.clone());
                }
            }
        }
    }

    /// What an unfence did: a server unfenced, or left to the runbook that moved it, is done;
    /// one not reached is tried again next round. The isolation ends with its last server.
    pub fn unfenced(&mut self, reports: &[GuardReport]) {
        if let Some(isolation) = &mut self.isolation {
            for report in reports {
                if matches!(report.outcome, GuardOutcome::Unfenced | GuardOutcome::Kept(_)) {
                    isolation.servers.remove(&report.address);
                }
            }
            // A server no step of this region names any more (a state file from before the
            // configuration changed) is nobody's to unfence.
            isolation
                .servers
                .retain(|server| reports.iter().any(|r| &r.address == server));
            if isolation.servers.is_empty() {
                self.isolation = None;
            }
        }
    }

    /// What a restarted guard needs to go on where this one stopped (written to the state
    /// file): the isolation fence's servers, the fence for another region, the newest
    /// generation, and when the last fresh answer came (`now_ms` on this guard's clock and
    /// `wall_ms`, the wall clock at the same moment).
    pub fn saved(&self, now_ms: u64, wall_ms: u64) -> Saved {
        Saved {
            region: self.region.clone(),
            newest: self.newest,
            silent_ms: self.silent_ms(now_ms),
            saved_at_wall_ms: wall_ms,
            elsewhere: self.elsewhere.clone(),
            isolation: self.isolation.as_ref().map(|i| SavedIsolation {
                generation: i.generation,
                servers: i.servers.iter().cloned().collect(),
            }),
        }
    }

    /// Goes on from `saved` (a guard that stopped, `wall_ms` now on the wall clock): the
    /// silence since its last fresh answer counts, so a guard restarted while cut off fences as
    /// soon as the limit has passed, and the servers an isolation fence changed are still the
    /// ones to unfence.
    ///
    /// A file of another region's guard is refused. The newest generation is not taken back (a
    /// controller group built anew starts again from 1, and every answer would look old).
    pub fn restore(&mut self, saved: Saved, now_ms: u64, wall_ms: u64) -> Result<(), String> {
        if saved.region != self.region {
            return Err(format!(
                "the state file is the guard's of region '{}', not of '{}'",
                saved.region, self.region
            ));
        }
        // The silence before the restart, the time the guard was down; the time since this
        // guard started counts on top (`silent_ms`).
        let down_ms = wall_ms.saturating_sub(saved.saved_at_wall_ms);
        let before = saved.silent_ms.saturating_add(down_ms);
        self.silence_before_ms = before.saturating_sub(now_ms.saturating_sub(self.last_contact_ms));
        self.elsewhere = saved.elsewhere;
        self.isolation = saved.isolation.map(|i| Isolation {
            generation: i.generation,
            servers: i.servers.into_iter().collect(),
        });
        Ok(())
    }

    /// The servers an isolation fence changed and has not undone.
    pub fn isolation_fenced(&self) -> Vec<String> {
        self.isolation
            .as_ref()
            .map(|i| i.servers.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The earliest the controller may promote another region's servers after it loses `region`:
/// its quickest check there calls it down after `fall` failed probes, the first at once and
/// the others `fast_interval_ms` apart, and `[policy] down_confirm_ms` must pass after that.
/// `None` when no check watches the region (only an operator fails it over).
pub fn earliest_failover_ms(down_confirm_ms: u64, checks: &[health::CheckSpec], region: &str) -> Option<u64> {
    checks
        .iter()
        .filter(|c| c.region == region)
        .map(|c| u64::from(c.fall.saturating_sub(1)).saturating_mul(c.fast_interval_ms))
        .min()
        .map(|detect| detect.saturating_add(down_confirm_ms))
}

/// Whether an isolation fence after `isolation_fence_ms` comes before the controller may fail
/// `region` over ([`earliest_failover_ms`]), with [`FENCE_DELAY_MS`] to act: the problem and
/// its fix otherwise.
pub fn check_timing(
    isolation_fence_ms: u64,
    down_confirm_ms: u64,
    checks: &[health::CheckSpec],
    region: &str,
) -> Result<(), (String, String)> {
    let Some(earliest) = earliest_failover_ms(down_confirm_ms, checks, region) else {
        return Ok(());
    };
    let fenced_by = isolation_fence_ms.saturating_add(FENCE_DELAY_MS);
    if fenced_by <= earliest {
        return Ok(());
    }
    let raise = format!(
        "raise [policy] down_confirm_ms to at least {}",
        down_confirm_ms.saturating_add(fenced_by - earliest)
    );
    let lowest = earliest.saturating_sub(FENCE_DELAY_MS);
    let fix = if lowest >= ISOLATION_FENCE_MS_MIN {
        format!("{raise}, or lower isolation_fence_ms to at most {lowest}")
    } else {
        raise
    };
    Err((
        format!(
            "[guard] isolation_fence_ms = {isolation_fence_ms}: a guard in {region} cut off from the controller fences its primaries up to {fenced_by} ms after it last heard from it (isolation_fence_ms + {FENCE_DELAY_MS} ms to act), but the controller may fail {region} over after {earliest} ms (its quickest check's (fall - 1) × fast_interval_ms, the first failure at once, + [policy] down_confirm_ms = {down_confirm_ms}): both regions would take writes in between"
        ),
        fix,
    ))
}

/// One step whose servers the guard fences.
#[derive(Clone)]
pub struct Guarded {
    pub step: String,
    pub action: Arc<providers::Action>,
}

/// What [`run`] needs.
pub struct Options {
    /// This region, as the controller's configuration names it.
    pub region: String,
    /// Every configured region: an answer naming another is not taken.
    pub regions: Vec<String>,
    pub controllers: ControllerUrls,
    /// A token of role `read` (or higher).
    pub token: Option<String>,
    pub steps: Vec<Guarded>,
    pub isolation_fence_ms: Option<u64>,
    /// Where the guard keeps what it must not forget across a restart (see [`Saved`]).
    pub state_file: Option<std::path::PathBuf>,
    /// `[guard] controller_members`: how many members the group has; without it, a round where
    /// every answer is stale is silence (the failsafe needs to know it heard everyone).
    pub controller_members: Option<usize>,
    /// Where every round is recorded for `/health` and `/metrics`, and the guard's clock.
    pub status: Arc<status::StatusHandle>,
}

/// What the members said in one round ([`combine`]), each asked within
/// [`GUARD_READ_TIMEOUT_MS`].
pub async fn hear(
    client: &HttpClient,
    members: &ControllerUrls,
    token: Option<&str>,
    known: &[String],
    controller_members: Option<usize>,
) -> (Heard, Vec<String>) {
    let answers = futures_util::future::join_all(members.urls().iter().map(|url| async move {
        let answer = crate::pointer::fetch(client, url, token, 0, 0, GUARD_READ_TIMEOUT_MS)
            .await
            .map_err(|error| match error {
                FetchError::Unauthorized { url, status } => {
                    format!("{url}: the controller refused the token (HTTP {status}): give a token of role read")
                }
                FetchError::Other(error) => error,
            });
        (url.clone(), answer)
    }))
    .await;
    combine(answers, known, controller_members)
}

/// One round's answers, one per member, as [`Heard`]: the newest answer not marked stale and
/// naming a configured region (or none yet), with `moving` if any fresh answer of that
/// generation carries it (a follower reads the runbook from etcd a moment after the leader
/// starts it); [`Heard::EveryMemberStale`] when every member answered and each is marked
/// stale. Also one line per member that gave no usable answer.
pub fn combine(
    answers: Vec<(String, Result<Reading, String>)>,
    known: &[String],
    controller_members: Option<usize>,
) -> (Heard, Vec<String>) {
    let members = answers.len();
    let mut fresh: Vec<Reading> = Vec::new();
    let mut stale: Vec<Reading> = Vec::new();
    let mut problems = Vec::new();
    for (url, answer) in answers {
        match answer {
            Ok(reading @ Reading { stale: Some(_), .. }) => {
                problems.push(format!(
                    "{url}: stale: {}",
                    reading.stale.as_deref().unwrap_or_default()
                ));
                stale.push(reading);
            }
            Ok(reading) => match &reading.value.region {
                Some(region) if !known.contains(region) => problems.push(format!(
                    "{url}: names region '{region}', which the configuration does not: not taken"
                )),
                _ => fresh.push(reading),
            },
            Err(error) => problems.push(error),
        }
    }
    let Some(newest) = fresh.iter().map(|r| r.value.generation).max() else {
        // The failsafe needs every member: one left out might reach etcd and act.
        let everyone = controller_members.is_some_and(|n| n > 0 && members >= n) && stale.len() == members;
        let heard = match stale.iter().max_by_key(|r| r.value.generation) {
            Some(newest) if everyone => Heard::EveryMemberStale {
                region: newest.value.region.clone().filter(|r| known.contains(r)),
                generation: newest.value.generation,
            },
            _ => Heard::Nothing,
        };
        return (heard, problems);
    };
    let at_newest: Vec<&Reading> = fresh.iter().filter(|r| r.value.generation == newest).collect();
    let moving = at_newest.iter().find_map(|r| r.moving.clone());
    let heard = Heard::Fresh {
        region: at_newest[0].value.region.clone(),
        generation: newest,
        moving,
    };
    (heard, problems)
}

/// Runs rounds every [`GUARD_POLL_MS`] until `shutdown`.
pub async fn run(options: Options, shutdown: impl std::future::Future<Output = ()>) {
    let client = HttpClient::new();
    let handle = Arc::clone(&options.status);
    let now_ms = || handle.now_ms();
    let mut guard = Guard::new(&options.region, options.isolation_fence_ms, now_ms());
    if let Some(path) = &options.state_file {
        match read_state(path) {
            Ok(Some(saved)) => match guard.restore(saved.clone(), now_ms(), wall_ms()) {
                Ok(()) => tracing::info!(path = %path.display(), ?saved, "going on from the state file"),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "the state file is not taken; starting afresh")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "the state file is not usable; starting afresh (the isolation fence's servers, if any, stay fenced: unfence them by hand)")
            }
        }
    }
    let mut written: Option<(Saved, u64)> = None;
    let mut state_error_logged = false;
    // The last outcome logged per (step, server), and the members' problems: logged on change.
    let mut logged: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut members_said: Vec<String> = Vec::new();
    let mut last_decision = Decision::Hold;
    tracing::info!(
        region = %options.region,
        members = options.controllers.urls().len(),
        steps = %options.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>().join(", "),
        isolation_fence_ms = ?options.isolation_fence_ms,
        "guarding this region's database primaries"
    );
    tokio::pin!(shutdown);
    loop {
        let round_began = now_ms();
        let round = async {
            let asked_at = now_ms();
            let (heard, problems) = hear(
                &client,
                &options.controllers,
                options.token.as_deref(),
                &options.regions,
                options.controller_members,
            )
            .await;
            if problems != members_said {
                for problem in &problems {
                    tracing::warn!(member = %problem, "a controller member gave no fresh pointer");
                }
                members_said = problems;
            }
            let decision = guard.observe(asked_at, heard.clone());
            handle.update(|status| status.heard(asked_at, &heard, &members_said, &decision));
            if decision != last_decision && !matches!(decision, Decision::Fence(_)) {
                tracing::info!(?decision, "guard decision");
            }
            match &decision {
                Decision::Hold => {}
                Decision::Fence(why) => {
                    let new_reason = !matches!(&last_decision, Decision::Fence(w) if same_reason(w, why));
                    if new_reason {
                        tracing::warn!(reason = %why, "fencing this region's database primaries");
                    }
                    // Every step's servers at once: the round takes one server's bound at most
                    // (`FENCE_DELAY_MS` counts one).
                    let rounds = futures_util::future::join_all(
                        options
                            .steps
                            .iter()
                            .map(|guarded| guarded.action.guard_fence(&options.region, why.older_than())),
                    )
                    .await;
                    let mut all = Vec::new();
                    for (guarded, reports) in options.steps.iter().zip(rounds) {
                        log_reports(&mut logged, &guarded.step, &reports);
                        handle.update(|status| status.reports(&guarded.step, &reports));
                        guard.fenced(&reports);
                        all.extend(reports);
                    }
                    if new_reason {
                        tracing::warn!(reason = %why, "first fence round done: {}", summary(&all));
                    }
                }
                Decision::Unfence {
                    servers,
                    promoted_since,
                } => {
                    if !matches!(&last_decision, Decision::Unfence { .. }) {
                        tracing::warn!(servers = %servers.join(", "), ?promoted_since, "the controller names this region active again with nothing under way: undoing the isolation fence");
                    }
                    let rounds = futures_util::future::join_all(
                        options
                            .steps
                            .iter()
                            .map(|guarded| guarded.action.guard_unfence(&options.region, servers, *promoted_since)),
                    )
                    .await;
                    for (guarded, reports) in options.steps.iter().zip(rounds) {
                        log_reports(&mut logged, &guarded.step, &reports);
                        handle.update(|status| status.reports(&guarded.step, &reports));
                        guard.unfenced(&reports);
                    }
                }
            }
            last_decision = decision;
            if let Some(path) = &options.state_file {
                let (now, wall) = (now_ms(), wall_ms());
                let saved = guard.saved(now, wall);
                let changed = written.as_ref().is_none_or(|(before, at)| {
                    before.newest != saved.newest
                        || before.elsewhere != saved.elsewhere
                        || before.isolation != saved.isolation
                        || (before.silent_ms == 0) != (saved.silent_ms == 0)
                        || now.saturating_sub(*at) >= STATE_REFRESH_MS
                });
                if changed {
                    let writing = {
                        let (path, saved) = (path.clone(), saved.clone());
                        tokio::task::spawn_blocking(move || write_state(&path, &saved))
                    };
                    let outcome =
                        match tokio::time::timeout(Duration::from_millis(STATE_WRITE_TIMEOUT_MS), writing).await {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(joined)) => Err(joined.to_string()),
                            Err(_) => Err(format!("no write within {STATE_WRITE_TIMEOUT_MS} ms")),
                        };
                    handle.update(|status| status.state_file(outcome.as_ref().err().cloned()));
                    match outcome {
                        Ok(()) => {
                            written = Some((saved, now));
                            state_error_logged = false;
                        }
                        Err(error) if !state_error_logged => {
                            tracing::error!(path = %path.display(), %error, "cannot write the state file: a restart would forget the isolation fence");
                            state_error_logged = true;
                        }
                        Err(_) => {}
                    }
                }
            }
        };
        // A round in progress finishes (bounded by its reads and fences): one stopped halfway
        // would leave a server fenced that the state file does not name.
        round.await;
        handle.update(|status| status.round(round_began, now_ms(), guard.isolation_fenced()));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(GUARD_POLL_MS)) => {}
        }
    }
    let left = guard.isolation_fenced();
    if !left.is_empty() {
        tracing::warn!(servers = %left.join(", "), "stopping with an isolation fence in force: these servers stay fenced (unfence them by hand once the controller names this region active)");
    }
}

/// How many servers of a round ended each way: `1 fenced, 2 refusing writes already, ...`.
fn summary(reports: &[GuardReport]) -> String {
    let count = |f: fn(&GuardOutcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    format!(
        "{} fenced, {} paused (Redis), {} refusing writes already, {} promoted by that decision or a newer one, {} not reached",
        count(|o| matches!(o, GuardOutcome::Fenced { .. })),
        count(|o| matches!(o, GuardOutcome::Paused)),
        count(|o| matches!(o, GuardOutcome::Refusing)),
        count(|o| matches!(o, GuardOutcome::Promoted { .. })),
        count(|o| matches!(o, GuardOutcome::Failed(_))),
    )
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The state file's contents, `None` when there is none yet.
pub fn read_state(path: &std::path::Path) -> Result<Option<Saved>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let mut text = Vec::new();
    file.take(STATE_FILE_BYTES_MAX + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > STATE_FILE_BYTES_MAX {
        return Err(format!("larger than {STATE_FILE_BYTES_MAX} bytes"));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("not a guard state file: {e}"))
}

/// Writes the state file whole or not at all (a file of its own beside it, synced, renamed).
pub fn write_state(path: &std::path::Path, saved: &Saved) -> Result<(), String> {
    use std::io::Write;
    let text = serde_json::to_vec(saved).map_err(|e| e.to_string())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guard-state".into());
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)?;
        file.write_all(&text)?;
        file.sync_data()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(|e| e.to_string())
}

fn same_reason(a: &Why, b: &Why) -> bool {
    match (a, b) {
        (Why::Isolated { .. }, Why::Isolated { .. }) => true,
        (a, b) => a == b,
    }
}

fn log_reports(logged: &mut BTreeMap<(String, String), String>, step: &str, reports: &[GuardReport]) {
    for report in reports {
        let key = (step.to_string(), report.address.clone());
        let kind = match &report.outcome {
            GuardOutcome::Fenced { .. } => "fenced".to_string(),
            GuardOutcome::Paused => "paused".to_string(),
            GuardOutcome::Refusing => "refusing".to_string(),
            GuardOutcome::Promoted { generation } => format!("promoted {generation}"),
            GuardOutcome::Unfenced => "unfenced".to_string(),
            GuardOutcome::Kept(why) => format!("kept {why}"),
            GuardOutcome::Failed(why) => format!("failed {why}"),
            GuardOutcome::Interrupted(why) => format!("interrupted {why}"),
        };
        if logged.get(&key) == Some(&kind) {
            continue;
        }
        logged.insert(key, kind);
        match &report.outcome {
            GuardOutcome::Failed(_) | GuardOutcome::Interrupted(_) => tracing::error!(step, "{report}"),
            outcome if outcome.changed() || matches!(outcome, GuardOutcome::Paused) => {
                tracing::warn!(step, "{report}")
            }
            _ => tracing::info!(step, "{report}"),
        }
    }
}

pub mod status;

#[cfg(test)]
mod tests;
