//! The runner: checks move through rise/fall as a real listener comes and goes.

use std::time::Duration;

use tokio::net::TcpListener;

use health::runner::{Runner, RunnerError, RunnerOptions};
use health::{CheckSpec, CheckStatus, ProbeKind};

use crate::support::wait_for;

fn tcp_check(name: &str, address: &str) -> CheckSpec {
    let mut spec = CheckSpec::new(
        name,
        "east",
        ProbeKind::Tcp {
            address: address.into(),
        },
    );
    spec.interval_ms = 50;
    spec.fast_interval_ms = 20;
    spec.timeout_ms = 500;
    spec
}

fn status_of(runner: &Runner, name: &str) -> Option<CheckStatus> {
    runner.results().into_iter().find(|r| r.check == name).map(|r| r.status)
}

#[tokio::test]
async fn checks_go_down_and_up_with_their_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_address = dead.local_addr().expect("address").to_string();
    drop(dead);
    let mut runner = Runner::new(RunnerOptions::default());
    runner
        .update(vec![
            tcp_check("app", &address.to_string()),
            tcp_check("dead", &dead_address),
        ])
        .expect("valid plan");
    let deadline = Duration::from_secs(10);
    wait_for("app up", deadline, || {
        status_of(&runner, "app") == Some(CheckStatus::Up)
    })
    .await;
    wait_for("dead down", deadline, || {
        status_of(&runner, "dead") == Some(CheckStatus::Down)
    })
    .await;
    let report = runner.report("agent-x");
    assert_eq!(report.vantage, "agent-x");
    assert_eq!(report.results.len(), 2);

    drop(listener);
    wait_for("app down", deadline, || {
        status_of(&runner, "app") == Some(CheckStatus::Down)
    })
    .await;
    let app = runner
        .results()
        .into_iter()
        .find(|r| r.check == "app")
        .expect("reported");
    assert!(app.detail.contains("connect"), "{}", app.detail);

    let _listener = TcpListener::bind(address).await.expect("rebind the same port");
    wait_for("app up again", deadline, || {
        status_of(&runner, "app") == Some(CheckStatus::Up)
    })
    .await;

    // Removing a check removes its result; an invalid plan is refused and changes nothing.
    runner
        .update(vec![tcp_check("app", &address.to_string())])
        .expect("valid plan");
    assert_eq!(status_of(&runner, "dead"), None);
    let twice = vec![tcp_check("a", "127.0.0.1:1"), tcp_check("a", "127.0.0.1:2")];
    assert_eq!(runner.update(twice), Err(RunnerError::DuplicateName("a".into())));
    assert_eq!(runner.checks().len(), 1);
}
