//! Runs a set of checks concurrently, each on its own schedule from its `CheckState`, and keeps
//! the latest `CheckResult` of each. Used by the agent and by the controller (which probes from
//! itself too).
//!
//! Bounded: at most `RunnerOptions::probes_in_flight_max` probes run at once (a semaphore),
//! at most `CHECKS_MAX` checks are accepted, and each probe is cut at its timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

type Results = Arc<Mutex<BTreeMap<String, CheckResult>>>;

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

    fn lock_results(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CheckResult>> {
        self.results.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The latest result of every check that has completed a probe, by check name.
    pub fn results(&self) -> Vec<CheckResult> {
        self.lock_results().values().cloned().collect()
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
    loop {
        let outcome = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            probe::probe(&spec).await
        };
        let now_ms = wall_clock_ms();
        let step = state.record(outcome.success, now_ms);
        if let Some(status) = step.changed {
            tracing::info!(check = %spec.name, region = %spec.region, ?status, detail = %outcome.detail, "check changed state");
        }
        let status = state.status().expect("a recorded outcome always sets a status");
        let result = CheckResult {
            check: spec.name.clone(),
            region: spec.region.clone(),
            status,
            since_ms: state.since_ms(),
            detail: outcome.detail,
            latency_ms: outcome.latency_ms,
            replica_lag_ms: outcome.replica_lag_ms,
            position: outcome.position,
        };
        results
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(spec.name.clone(), result);
        changes.send_modify(|n| *n = n.wrapping_add(1));
        tokio::time::sleep(Duration::from_millis(step.next_delay_ms)).await;
    }
}
