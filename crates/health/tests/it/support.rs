//! Helpers: free ports, child processes stopped on drop (from `testkit`), probing and waiting
//! for conditions with deadlines.

use std::time::{Duration, Instant};

pub use testkit::{Server, find_binary, free_port, running_as_root, skip};

use health::probe::{ProbeOutcome, probe};
use health::{CheckSpec, ProbeKind};

/// How long a server gets to start.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

pub fn spec(kind: ProbeKind) -> CheckSpec {
    let mut spec = CheckSpec::new("check", "east", kind);
    spec.timeout_ms = 5000;
    spec
}

/// Probes until the outcome satisfies `done`, or panics with the last outcome at the deadline.
pub async fn probe_until(spec: &CheckSpec, deadline: Duration, done: impl Fn(&ProbeOutcome) -> bool) -> ProbeOutcome {
    let until = Instant::now() + deadline;
    loop {
        let outcome = probe(spec).await;
        if done(&outcome) {
            return outcome;
        }
        assert!(
            Instant::now() < until,
            "condition not reached before the deadline; last outcome {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a condition with a deadline, polling.
pub async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
