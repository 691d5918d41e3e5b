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

/// A raw HTTP/1.1 server on loopback answering every request with `status` and a body of
/// `body_bytes` bytes of `x` (closing after each answer); counts the requests it read.
async fn counting_server(status: u16, body_bytes: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status} Whatever\r\ncontent-length: {body_bytes}\r\nconnection: close\r\n\r\n{}",
                    "x".repeat(body_bytes)
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, seen)
}

/// An HTTP check built as a plan delivers it (JSON), with the given thresholds.
fn http_check(name: &str, url: &str, extra: serde_json::Value) -> CheckSpec {
    let mut spec = serde_json::json!({
        "name": name,
        "region": "east",
        "kind": {"type": "http", "url": url},
        "interval_ms": 100,
        "fast_interval_ms": 100,
        "timeout_ms": 1000,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(spec).expect("a valid check")
}

/// A check that just started (an agent restarted, a plan changed) needs `fall` failures in a
/// row before it says down, like a running one: one failed probe at that moment is no outage.
#[tokio::test]
async fn a_new_check_reports_down_only_after_fall_failures() {
    let (address, seen) = counting_server(503, 2).await;
    let mut runner = Runner::new(RunnerOptions::default());
    let check = http_check("app", &format!("http://{address}/"), serde_json::json!({"fall": 4}));
    runner.update(vec![check]).expect("valid plan");
    let deadline = Duration::from_secs(10);
    // Probes of one check run one after another: once the third has been read, the first two
    // were recorded, and two failures of four say nothing yet.
    wait_for("three probes", deadline, || {
        seen.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(status_of(&runner, "app"), None, "reported before fall failures");
    wait_for("app down", deadline, || {
        status_of(&runner, "app") == Some(CheckStatus::Down)
    })
    .await;
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 4);
}

/// A target whose answer is quoted in the detail cannot make the result (and so the report,
/// which the controller takes up to a size) as large as it likes.
#[tokio::test]
async fn a_long_detail_is_cut() {
    let (address, _) = counting_server(200, 10).await;
    let mut runner = Runner::new(RunnerOptions::default());
    // The detail quotes what the body lacks: a long needle makes a long detail.
    let needle = "q".repeat(4 * health::runner::DETAIL_CHARS_MAX);
    let mut check = http_check("app", &format!("http://{address}/"), serde_json::json!({"fall": 1}));
    if let health::ProbeKind::Http { body_contains, .. } = &mut check.kind {
        *body_contains = Some(needle);
    }
    runner.update(vec![check]).expect("valid plan");
    wait_for("app down", Duration::from_secs(10), || {
        status_of(&runner, "app") == Some(CheckStatus::Down)
    })
    .await;
    let detail = runner.results()[0].detail.clone();
    assert!(
        detail.chars().count() <= health::runner::DETAIL_CHARS_MAX + 1 && detail.ends_with('…'),
        "{} chars: {detail}",
        detail.chars().count()
    );
}

/// A probe that cannot get a permit in time (more probes hanging to their timeouts than may
/// run at once) leaves its check out of the report rather than repeating an old status.
#[tokio::test]
async fn a_result_starved_of_permits_is_not_reported_as_current() {
    let (address, _) = counting_server(200, 2).await;
    // One probe at a time; a silent server keeps the permit for its whole 3 s timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_address = silent.local_addr().expect("address");
    let mut runner = Runner::new(RunnerOptions {
        probes_in_flight_max: 1,
        ..RunnerOptions::default()
    });
    runner
        .update(vec![http_check(
            "app",
            &format!("http://{address}/"),
            serde_json::json!({}),
        )])
        .expect("valid plan");
    let deadline = Duration::from_secs(10);
    wait_for("app up", deadline, || {
        status_of(&runner, "app") == Some(CheckStatus::Up)
    })
    .await;
    let hang = http_check(
        "hang",
        &format!("http://{silent_address}/"),
        serde_json::json!({"timeout_ms": 3000, "interval_ms": 10, "fast_interval_ms": 10}),
    );
    runner
        .update(vec![
            http_check("app", &format!("http://{address}/"), serde_json::json!({})),
            hang,
        ])
        .expect("valid plan");
    // app's result is current for its interval (100 ms) + timeout (1000 ms) + grace (1000 ms);
    // the hanging check holds the only permit for 3 s at a time, so app's next probe waits
    // past that and its old "up" leaves the report.
    wait_for("app's stale result withdrawn", deadline, || {
        status_of(&runner, "app").is_none()
    })
    .await;
    drop(silent);
}
