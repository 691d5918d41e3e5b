//! Runs a set of checks concurrently, each on its own schedule from its `CheckState`, and keeps
//! the latest `CheckResult` of each. Used by the agent and by the controller (which probes from
//! itself too).
//!
//! Bounded: at most `RunnerOptions::probes_in_flight_max` probes run at once (a semaphore),
//! at most `CHECKS_MAX` checks are accepted, each probe is cut at its timeout, and each result's
//! detail at [`DETAIL_CHARS_MAX`] (a target's answer quoted whole could make a report too big
//! for the controller to take, silencing every check of the vantage point).
//!
//! A result is held only as long as it is current: its next probe should have ended by then
//! (the delay to it, its timeout, and [`RESULT_GRACE_MS`]). A probe kept waiting for a permit
//! past that (more probes hanging to their timeouts than `probes_in_flight_max`) leaves its
//! check out of the reports — unknown to the controller — instead of repeating an old status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::probe;
use crate::report::{CheckResult, Report};
use crate::spec::{CheckSpec, SpecError};
use crate::state::{CheckState, InitialState, Timing};

/// Most checks one runner accepts.
pub const CHECKS_MAX: usize = 1000;
/// Default bound on probes running at the same time.
pub const DEFAULT_PROBES_IN_FLIGHT_MAX: usize = 64;
/// Characters of a probe's detail kept in its result (the controller keeps as many).
pub const DETAIL_CHARS_MAX: usize = crate::quorum::DETAIL_CHARS_MAX;
/// How long past its next probe's deadline (the delay to it plus its timeout) a result is still
/// reported: time for the probe's own bookkeeping and scheduling, not for queuing behind others.
pub const RESULT_GRACE_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    pub probes_in_flight_max: usize,
    /// Where every check starts; see `InitialState` (default: the first probe decides).
    pub initial: InitialState,
}

impl Default for RunnerOptions {
    fn default() -> RunnerOptions {
        RunnerOptions {
            probes_in_flight_max: DEFAULT_PROBES_IN_FLIGHT_MAX,
            initial: InitialState::FirstProbe,
        }
    }
}

/// A plan the runner refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("check name '{0}' is used twice; give every check a unique name")]
    DuplicateName(String),
    #[error("{count} checks is more than {CHECKS_MAX}; split them over several agents")]
    TooManyChecks { count: usize },
}

/// Milliseconds since the Unix epoch on this machine's clock (`since_ms`, `sent_at_ms`).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct Running {
    spec: CheckSpec,
    task: JoinHandle<()>,
}

/// A check's latest result and until when it is current.
struct Held {
    result: CheckResult,
    current_until: Instant,
}

type Results = Arc<Mutex<BTreeMap<String, Held>>>;

/// The running checks. Dropping the runner stops them.
pub struct Runner {
    options: RunnerOptions,
    permits: Arc<Semaphore>,
    running: BTreeMap<String, Running>,
    results: Results,
    changes: watch::Sender<u64>,
}

impl Runner {
    /// Starts nothing yet; call `update` with the checks.
    pub fn new(options: RunnerOptions) -> Runner {
        let (changes, _) = watch::channel(0);
        Runner {
            permits: Arc::new(Semaphore::new(options.probes_in_flight_max.max(1))),
            options,
            running: BTreeMap::new(),
            results: Arc::new(Mutex::new(BTreeMap::new())),
            changes,
        }
    }

    /// Validates a plan without starting it.
    pub fn validate(checks: &[CheckSpec]) -> Result<(), RunnerError> {
        if checks.len() > CHECKS_MAX {
            return Err(RunnerError::TooManyChecks { count: checks.len() });
        }
        let mut names = std::collections::BTreeSet::new();
        for check in checks {
            check.validate()?;
            if !names.insert(check.name.as_str()) {
                return Err(RunnerError::DuplicateName(check.name.clone()));
            }
        }
        Ok(())
    }

    /// Replaces the set of checks. Unchanged checks keep their state and schedule; changed ones
    /// restart from the initial state; removed ones stop and leave the results.
    pub fn update(&mut self, checks: Vec<CheckSpec>) -> Result<(), RunnerError> {
        Self::validate(&checks)?;
        let mut wanted: BTreeMap<String, CheckSpec> = checks.into_iter().map(|c| (c.name.clone(), c)).collect();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let keep = wanted.get(&name).is_some_and(|spec| self.running[&name].spec == *spec);
            if keep {
                wanted.remove(&name);
            } else if let Some(running) = self.running.remove(&name) {
                running.task.abort();
                self.lock_results().remove(&name);
            }
        }
        for (name, spec) in wanted {
            let task = tokio::spawn(run_check(
                spec.clone(),
                self.options.initial,
                self.permits.clone(),
                self.results.clone(),
                self.changes.clone(),
            ));
            self.running.insert(name, Running { spec, task });
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// The checks currently running, by name.
    pub fn checks(&self) -> Vec<CheckSpec> {
        self.running.values().map(|r| r.spec.clone()).collect()
    }

    fn lock_results(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.results.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The latest result of every check whose state is set and whose result is still current
    /// (see the module documentation), by check name.
    pub fn results(&self) -> Vec<CheckResult> {
        let now = Instant::now();
        self.lock_results()
            .values()
            .filter(|held| held.current_until > now)
            .map(|held| held.result.clone())
            .collect()
    }

    /// A report of the current results as vantage point `vantage`, stamped now.
    pub fn report(&self, vantage: &str) -> Report {
        Report {
            vantage: vantage.to_string(),
            sent_at_ms: wall_clock_ms(),
            results: self.results(),
        }
    }

    /// Changes whenever a probe completes or the plan changes; `changed().await` on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.task.abort();
        }
    }
}

async fn run_check(
    spec: CheckSpec,
    initial: InitialState,
    permits: Arc<Semaphore>,
    results: Results,
    changes: watch::Sender<u64>,
) {
    let mut state = CheckState::new(Timing::from(&spec), initial, wall_clock_ms());
    let mut queued_warned = false;
    loop {
        let outcome = {
            let asked = Instant::now();
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let waited = asked.elapsed();
            if waited > Duration::from_millis(spec.timeout_ms) && !queued_warned {
                queued_warned = true;
                tracing::warn!(
                    check = %spec.name,
                    waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    "a probe waited longer than its timeout for one of the probes in flight (--probes-in-flight-max): more probes hang to their timeouts than may run at once, so results come late; raise the limit or lower the timeouts"
                );
            }
            probe::probe(&spec).await
        };
        let now_ms = wall_clock_ms();
        let step = state.record(outcome.success, now_ms);
        let mut detail = outcome.detail;
        if let Some((cut, _)) = detail.char_indices().nth(DETAIL_CHARS_MAX) {
            detail.truncate(cut);
            detail.push('…');
        }
        if let Some(status) = step.changed {
            tracing::info!(check = %spec.name, region = %spec.region, ?status, %detail, "check changed state");
        }
        let current_until = Instant::now()
            + Duration::from_millis(
                step.next_delay_ms
                    .saturating_add(spec.timeout_ms)
                    .saturating_add(RESULT_GRACE_MS),
            );
        // Undecided (a new check's first failures, fewer than `fall`): nothing to report yet.
        if let Some(status) = state.status() {
            let result = CheckResult {
                check: spec.name.clone(),
                region: spec.region.clone(),
                status,
                since_ms: state.since_ms(),
                detail,
                latency_ms: outcome.latency_ms,
                replica_lag_ms: outcome.replica_lag_ms,
                position: outcome.position,
            };
            results
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(spec.name.clone(), Held { result, current_until });
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        tokio::time::sleep(Duration::from_millis(step.next_delay_ms)).await;
    }
}
