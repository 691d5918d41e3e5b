//! Helpers: free ports, child processes stopped on drop (from `testkit`), probing and waiting
//! for conditions with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

pub use testkit::{Server, find_binary, free_port, running_as_root, skip};

use health::probe::{ProbeOutcome, probe};
use health::{CheckSpec, ProbeKind};

/// A listener on a free loopback port, and its address.
pub async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    (listener, address)
}

/// Runs `serve` on each connection `listener` accepts, each in a task of its own, until
/// accepting fails.
pub fn accept_each<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
}

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
