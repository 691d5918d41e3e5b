//! The agent against a controller stand-in that serves a plan and records reports.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use health::agent::{AgentConfig, run};
use health::{AgentPlan, CheckSpec, CheckStatus, ProbeKind, Report};

use crate::support::{accept_each, free_port, wait_for};

#[derive(Default)]
struct Seen {
    reports: Vec<Report>,
    plan_requests: Vec<String>,
    authorizations: Vec<String>,
    /// Answer every report 409, as a controller holding a newer report under the name does.
    refuse_reports: bool,
    refused: usize,
    /// Each report's `x-switchyard-members` header (how many members the agent may try).
    members_headers: Vec<String>,
}

/// Serves `plan` at /v1/agent/plan and takes reports at /v1/agent/report, demanding the token.
async fn start_controller(listener: TcpListener, plan: AgentPlan, seen: Arc<Mutex<Seen>>) {
    let plan = Arc::new(serde_json::to_vec(&plan).expect("encode plan"));
    accept_each(listener, move |stream| {
        let (plan, seen) = (plan.clone(), seen.clone());
        async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (plan, seen) = (plan.clone(), seen.clone());
                async move {
                    let authorization = request
                        .headers()
                        .get("authorization")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let members = request
                        .headers()
                        .get(health::report::MEMBERS_HEADER)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let path = request.uri().path().to_string();
                    let query = request.uri().query().unwrap_or("").to_string();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut seen = seen.lock().expect("lock");
                    seen.authorizations.push(authorization.clone());
                    let (status, body) = if authorization != "Bearer t0ken" {
                        (401, Bytes::new())
                    } else if path == "/v1/agent/plan" {
                        seen.plan_requests.push(query);
                        (200, Bytes::from(plan.as_ref().clone()))
                    } else if path == "/v1/agent/report" {
                        match serde_json::from_slice::<Report>(&body) {
                            Ok(_) if seen.refuse_reports => {
                                seen.refused += 1;
                                let refusal = r#"{"error": "a newer report is held", "code": "outdated"}"#;
                                (409, Bytes::from_static(refusal.as_bytes()))
                            }
                            Ok(report) => {
                                seen.reports.push(report);
                                seen.members_headers.push(members);
                                (204, Bytes::new())
                            }
                            Err(_) => (400, Bytes::new()),
                        }
                    } else {
                        (404, Bytes::new())
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(body))
                            .expect("response"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
}

fn latest_status(seen: &Arc<Mutex<Seen>>) -> Option<CheckStatus> {
    let seen = seen.lock().expect("lock");
    seen.reports.last().and_then(|r| r.results.first()).map(|r| r.status)
}

#[tokio::test]
async fn agent_waits_for_the_controller_then_reports_changes() {
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut check = CheckSpec::new(
        "app",
        "east",
        ProbeKind::Tcp {
            address: target.local_addr().expect("address").to_string(),
        },
    );
    check.interval_ms = 50;
    check.fast_interval_ms = 20;
    let plan = AgentPlan {
        checks: vec![check],
        report_interval_ms: 50,
    };
    // The controller is not up yet when the agent starts.
    let port = free_port();
    let mut config = AgentConfig::new(format!("http://127.0.0.1:{port}"), "agent-eu");
    config.token = Some("t0ken".into());
    config.plan_refresh_ms = 200;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    // Until then its port drops every connection: wait for a few failed plan fetches.
    let dropper = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the controller port");
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    let dropping = tokio::spawn(async move {
        while let Ok((stream, _)) = dropper.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    wait_for("failed plan fetches", Duration::from_secs(15), || {
        attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    dropping.abort();
    let _ = dropping.await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the controller port");
    start_controller(listener, plan, seen.clone()).await;

    let deadline = Duration::from_secs(15);
    wait_for("a report with the check up", deadline, || {
        latest_status(&seen) == Some(CheckStatus::Up)
    })
    .await;
    {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.plan_requests.iter().all(|q| q == "name=agent-eu"),
            "{:?}",
            seen.plan_requests
        );
        assert!(seen.authorizations.iter().all(|a| a == "Bearer t0ken"));
        assert!(seen.reports.iter().all(|r| r.vantage == "agent-eu"));
    }
    drop(target);
    wait_for("a report with the check down", deadline, || {
        latest_status(&seen) == Some(CheckStatus::Down)
    })
    .await;
    wait_for("a plan refresh", deadline, || {
        seen.lock().expect("lock").plan_requests.len() >= 2
    })
    .await;

    let _ = stop.send(());
    agent.await.expect("agent task").expect("agent stops cleanly");
    // Each report says the agent has this one member only (a member knowing no leader keeps
    // it then, see the controller's `agent_report`).
    let headers = seen.lock().expect("lock").members_headers.clone();
    assert!(!headers.is_empty() && headers.iter().all(|h| h == "1"), "{headers:?}");
}

/// A report the controller refuses (4xx) is not sent again, and the agent fetches its plan
/// again soon (a refusal may come from a plan of an earlier configuration).
#[tokio::test]
async fn a_refused_report_is_not_retried_and_the_plan_is_fetched_again() {
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let check = CheckSpec::new(
        "app",
        "east",
        ProbeKind::Tcp {
            address: target.local_addr().expect("address").to_string(),
        },
    );
    // One report a minute and one plan an hour: whatever comes sooner is the refusal's doing.
    let plan = AgentPlan {
        checks: vec![check],
        report_interval_ms: health::agent::REPORT_INTERVAL_MS_MAX,
    };
    let seen = Arc::new(Mutex::new(Seen {
        refuse_reports: true,
        ..Seen::default()
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    start_controller(listener, plan, seen.clone()).await;
    let mut config = AgentConfig::new(format!("http://{address}"), "agent-eu");
    config.token = Some("t0ken".into());
    config.plan_refresh_ms = 3_600_000;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    wait_for(
        "the plan fetched again after the refusal",
        Duration::from_secs(30),
        || seen.lock().expect("lock").plan_requests.len() >= 2,
    )
    .await;
    assert_eq!(
        seen.lock().expect("lock").refused,
        1,
        "the refused report was sent once"
    );
    let _ = stop.send(());
    agent.await.expect("agent task").expect("agent stops cleanly");
}

#[tokio::test]
async fn agent_refuses_bad_configuration() {
    let never = std::future::pending::<()>();
    let error = run(AgentConfig::new("ftp://controller:9000", "a"), never)
        .await
        .expect_err("not http or https");
    assert!(error.to_string().contains("ftp://controller:9000"), "{error}");
    let never = std::future::pending::<()>();
    let error = run(AgentConfig::new("https://", "a"), never)
        .await
        .expect_err("no host");
    assert!(error.to_string().contains("https://host:port"), "{error}");
    let never = std::future::pending::<()>();
    let error = run(AgentConfig::new("http://127.0.0.1:9", "bad name"), never)
        .await
        .expect_err("name");
    assert!(error.to_string().contains("'bad name'"), "{error}");
}

#[tokio::test]
async fn an_agent_given_every_member_reports_to_the_next_when_the_first_is_down() {
    // The first member is down: nothing listens on its port.
    let down = format!("http://127.0.0.1:{}", free_port());
    let seen = reports_through_the_second_member(down).await;
    assert!(!seen.lock().expect("lock").plan_requests.is_empty());
}

/// Starts a controller stand-in as the second of two members (`first` before it), an agent
/// given both, and waits until three of its reports arrived there; returns what it saw.
async fn reports_through_the_second_member(first: String) -> Arc<Mutex<Seen>> {
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut check = CheckSpec::new(
        "app",
        "east",
        ProbeKind::Tcp {
            address: target.local_addr().expect("address").to_string(),
        },
    );
    check.interval_ms = 50;
    let plan = AgentPlan {
        checks: vec![check],
        report_interval_ms: 50,
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = format!("http://{}", listener.local_addr().expect("address"));
    start_controller(listener, plan, seen.clone()).await;
    let mut config = AgentConfig::new(format!("{first},{live}"), "agent-eu");
    config.token = Some("t0ken".into());
    config.plan_refresh_ms = 200;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    wait_for("reports at the member that answers", Duration::from_secs(15), || {
        seen.lock().expect("lock").reports.len() >= 3
    })
    .await;
    let _ = stop.send(());
    agent.await.expect("agent task").expect("agent stops cleanly");
    // Each report says the agent has two members to try (a member knowing no leader then
    // sends it on, see the controller's `agent_report`).
    let headers = seen.lock().expect("lock").members_headers.clone();
    assert!(!headers.is_empty() && headers.iter().all(|h| h == "2"), "{headers:?}");
    drop(target);
    seen
}

/// A member that answers 503 (stopping, or unable to pass reports on) sends the agent to the
/// next one, as one that is down does.
#[tokio::test]
async fn an_agent_moves_past_a_member_answering_503() {
    let failing = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let failing_url = format!("http://{}", failing.local_addr().expect("address"));
    let answered_503 = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered_503.clone();
    accept_each(failing, move |stream| {
        let counter = counter.clone();
        async move {
            let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::from_static(b"{\"error\": \"stopping\"}")))
                            .expect("response"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    reports_through_the_second_member(failing_url).await;
    assert!(
        answered_503.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the first member was asked first"
    );
}
