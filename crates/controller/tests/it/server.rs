//! The whole controller over HTTP: agents report, the quorum decides, the runbook drives a fake
//! DNS admin API, the pointer follows, and a restart rolls an interrupted runbook forward.

use std::path::Path;

use controller::client::HttpClient;
use controller::server::{RunOptions, run};
use health::{CheckStatus, Report};
use hyper::Method;
use tokio::net::TcpListener;

use crate::fake::Fake;
use crate::wait_for;

const TOKEN: &str = "test-token-0123456789";

/// [`config_text`] with one `[[alerts]]` webhook posting to `HOOK/alerts`.
fn config_with_webhook(dns_url: &str, audit: &Path, hook_url: &str) -> String {
    format!(
        "{}\n[[alerts]]\nkind = \"webhook\"\nurl = \"{hook_url}/alerts\"\n",
        config_text(dns_url, audit)
    )
}

fn config_text(dns_url: &str, audit: &Path) -> String {
    format!(
        r#"
[controller]
vantage = "controller"
audit_log = "{audit}"
tick_ms = 20

[policy]
failback_lag_check = false
startup_grace_ms = 60000

[quorum]
vantages = ["controller", "agent-a", "agent-b"]
report_stale_ms = 60000
report_interval_ms = 100

[[regions]]
name = "us-east-1"
priority = 1
dns_targets = ["use1-web"]

[[regions]]
name = "eu-west-1"
priority = 2
dns_targets = ["euw1-web"]

[[checks]]
name = "use1-app"
region = "us-east-1"
kind = {{ type = "tcp", address = "127.0.0.1:9" }}

[[checks]]
name = "euw1-app"
region = "eu-west-1"
kind = {{ type = "tcp", address = "127.0.0.1:9" }}

[dns]
admin_url = "{dns_url}"
txt_name = "_active-region.shop.example."

[[runbook]]
name = "dns"
kind = "dns_health"
timeout_ms = 500
retries = 0

[[runbook]]
name = "pointer"
kind = "pointer"
"#,
        audit = audit.display()
    )
}

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    client: HttpClient,
    sent: u64,
    /// What `call` sends.
    token: &'static str,
}

impl Running {
    async fn start(config: &str) -> Running {
        Running::start_with_floor(config, 0).await
    }

    async fn start_with_floor(config: &str, generation_floor: u64) -> Running {
        Running::start_with(config, generation_floor, false).await
    }

    async fn start_with(config: &str, generation_floor: u64, probe_locally: bool) -> Running {
        let options = RunOptions {
            token: Some(TOKEN.into()),
            dns_token: None,
            local_reports: None,
            probe_locally,
            generation_floor,
            tls: None,
        };
        Running::start_with_options(config, options).await
    }

    async fn start_with_options(config: &str, options: RunOptions) -> Running {
        let config = controller::config::parse("test.toml", config).expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run(listener, config, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("controller runs");
        });
        Running {
            url,
            stop: Some(stop),
            task,
            client: HttpClient::new(),
            // Reports are stamped from now on: one stamped long before the controller's clock
            // is refused as a replay.
            sent: wall_ms(),
            token: TOKEN,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for in-flight requests; the runbook task is simply dropped.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }

    async fn call(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        self.call_as(Some(self.token), method, path, body).await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let answer = self
            .client
            .request(
                method,
                &format!("{}{path}", self.url),
                token,
                body.map(|b| b.to_string().into_bytes()),
                30_000,
            )
            .await
            .expect("controller answers");
        let value = serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null);
        (answer.status.as_u16(), value)
    }

    /// Reports from `vantage` that us-east-1 is `us` and eu-west-1 is `eu`.
    async fn report(&mut self, vantage: &str, us: CheckStatus, eu: CheckStatus) {
        let (status, body) = self.report_as(TOKEN, vantage, us, eu).await;
        assert_eq!(status, 204, "{body}");
    }

    /// The same report sent with `token`; the answer.
    async fn report_as(
        &mut self,
        token: &str,
        vantage: &str,
        us: CheckStatus,
        eu: CheckStatus,
    ) -> (u16, serde_json::Value) {
        self.sent += 1;
        let result = health::testing::check_result;
        let report = Report {
            vantage: vantage.into(),
            sent_at_ms: self.sent,
            results: vec![result("use1-app", "us-east-1", us), result("euw1-app", "eu-west-1", eu)],
        };
        self.call_as(
            Some(token),
            Method::POST,
            "/v1/agent/report",
            Some(serde_json::to_value(&report).expect("json")),
        )
        .await
    }

    async fn status(&self) -> serde_json::Value {
        let (code, body) = self.call(Method::GET, "/v1/status", None).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    async fn wait_active(&self, region: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = self.status().await;
            if status["engine"]["observed"]["active"] == region && status["engine"]["in_flight"].is_null() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "active never became {region}: {status:#}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

use CheckStatus::{Down, Up};

#[tokio::test]
async fn quorum_failover_drives_dns_and_pointer_and_is_audited() {
    let dns = Fake::start().await;
    dns.set_fence(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let mut controller = Running::start(&config_text(&dns.url, &audit)).await;

    // Without the token: 401.
    let answer = HttpClient::new()
        .request(Method::GET, &format!("{}/v1/status", controller.url), None, None, 5_000)
        .await
        .expect("answers");
    assert_eq!(answer.status.as_u16(), 401);

    // The dashboard page needs no token; the data it reads does.
    let page = HttpClient::new()
        .request(Method::GET, &format!("{}/dashboard", controller.url), None, None, 5_000)
        .await
        .expect("answers");
    assert_eq!(page.status.as_u16(), 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("/v1/status") && html.contains("/v1/events"), "{html}");
    assert!(
        html.contains("Authorization"),
        "the page forwards the token from the fragment"
    );

    // Agents' plan.
    let (code, plan) = controller.call(Method::GET, "/v1/agent/plan?name=agent-a", None).await;
    assert_eq!(code, 200);
    assert_eq!(plan["checks"].as_array().map(Vec::len), Some(2));
    assert_eq!(plan["report_interval_ms"], 100);
    let (code, _) = controller.call(Method::GET, "/v1/agent/plan?name=stranger", None).await;
    assert_eq!(code, 404);

    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    let first = dns.seen_on("/v1/health");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body["targets"]["use1-web"], "healthy");
    assert_eq!(first[0].body["targets"]["euw1-web"], "unhealthy");
    assert_eq!(first[0].authorization.as_deref(), Some("Bearer test-token-0123456789"));

    // One vantage alone sees us-east-1 down: no failover.
    controller.report("controller", Down, Up).await;
    for _ in 0..10 {
        controller.report("agent-a", Up, Up).await;
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let status = controller.status().await;
    assert_eq!(status["engine"]["observed"]["active"], "us-east-1");
    assert_eq!(dns.seen_on("/v1/health").len(), 1, "no DNS change for a minority view");

    // A pointer long-poll waiting past the current generation.
    let generation = status["pointer"]["generation"].as_u64().expect("generation");
    let poll = {
        let client = HttpClient::new();
        let url = format!(
            "{}/v1/active-region?wait_generation={generation}&timeout_ms=20000",
            controller.url
        );
        tokio::spawn(async move { client.request(Method::GET, &url, Some(TOKEN), None, 30_000).await })
    };

    // A majority sees it down: failover.
    controller.report("agent-a", Down, Up).await;
    let status = controller.wait_active("eu-west-1").await;
    let failover_generation = status["generation"].as_u64().expect("generation");
    assert!(failover_generation > generation);
    let last = dns.seen_on("/v1/health").pop().expect("a DNS update");
    assert_eq!(last.body["targets"]["use1-web"], "unhealthy");
    assert_eq!(last.body["targets"]["euw1-web"], "healthy");
    assert_eq!(last.body["generation"], failover_generation);
    let answer = poll.await.expect("join").expect("long-poll answers");
    let pointer: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(pointer["region"], "eu-west-1");
    assert_eq!(pointer["generation"], failover_generation);

    // The events show the decision with its reason, and the audit file has it durably.
    let (_, events) = controller.call(Method::GET, "/v1/events?limit=200", None).await;
    let events = events["events"].as_array().expect("events").clone();
    assert!(
        events.iter().any(|e| e["note"]["type"] == "decision"
            && e["note"]["kind"] == "failover"
            && e["note"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("us-east-1 is down"))),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "step" && e["step"] == "dns" && e["outcome"] == "ok")
    );
    let text = std::fs::read_to_string(&audit).expect("audit log");
    assert!(text.contains("\"type\":\"runbook_finished\""));

    // Manual commands: a refused switchover says why; pause; metrics.
    let (code, body) = controller
        .call(
            Method::POST,
            "/v1/switchover",
            Some(serde_json::json!({"to": "us-east-1"})),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("is down")), "{body}");
    let (code, body) = controller.call(Method::POST, "/v1/pause", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(controller.status().await["engine"]["paused"], true);
    let metrics = HttpClient::new()
        .request(Method::GET, &format!("{}/metrics", controller.url), None, None, 5_000)
        .await
        .expect("metrics");
    assert!(
        metrics.text().contains("switchyard_controller_generation"),
        "{}",
        metrics.text()
    );
    controller.stop().await;
}

#[tokio::test]
async fn restart_rolls_an_interrupted_runbook_forward_with_a_new_generation() {
    let dns = Fake::start().await;
    dns.set_fence(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let config = config_text(&dns.url, &audit);
    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    // DNS hangs: the failover's runbook cannot finish.
    dns.set_hang(true);
    controller.report("agent-a", Down, Up).await;
    controller.report("agent-b", Down, Up).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let interrupted = loop {
        let status = controller.status().await;
        if let Some(generation) = status["engine"]["in_flight"]["generation"].as_u64() {
            break generation;
        }
        assert!(std::time::Instant::now() < deadline, "no runbook started: {status:#}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    wait_for("the hanging DNS request", 5_000, || {
        dns.seen_on("/v1/health")
            .iter()
            .any(|s| s.body["generation"] == interrupted)
    })
    .await;
    controller.stop().await;

    // Restart: the runbook is rolled forward with a newer generation, even before any report.
    dns.set_hang(false);
    let controller = Running::start(&config).await;
    let status = controller.wait_active("eu-west-1").await;
    let rolled = status["generation"].as_u64().expect("generation");
    assert!(
        rolled > interrupted,
        "rolled forward with {rolled}, interrupted was {interrupted}"
    );
    let last = dns.seen_on("/v1/health").pop().expect("DNS update");
    assert_eq!(last.body["generation"], rolled);
    assert_eq!(last.body["targets"]["euw1-web"], "healthy");
    let (_, events) = controller.call(Method::GET, "/v1/events?limit=500", None).await;
    assert!(
        events["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["note"]["kind"] == "roll_forward"),
        "{events:#}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn refuses_to_listen_on_the_network_without_a_token() {
    let config = controller::config::parse(
        "t.toml",
        &config_text("http://127.0.0.1:1", Path::new("/nonexistent/audit.jsonl")),
    )
    .expect("valid");
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let error = run(listener, config, RunOptions::default(), async {})
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("have no token"), "{error}");
}

#[tokio::test]
async fn a_fresh_controller_fenced_by_dns_recovers_with_a_generation_floor() {
    let dns = Fake::start().await;
    dns.set_fence(true);
    let dir = tempfile::tempdir().expect("tempdir");
    // DNS already applied generation 40 from a controller whose audit log is gone.
    let old = tempfile::tempdir().expect("tempdir");
    let mut previous = Running::start_with_floor(&config_text(&dns.url, &old.path().join("a.jsonl")), 39).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        previous.report(vantage, Up, Up).await;
    }
    previous.wait_active("us-east-1").await;
    previous.stop().await;
    assert_eq!(dns.seen_on("/v1/health")[0].body["generation"], 40);

    let config = config_text(&dns.url, &dir.path().join("audit.jsonl"));
    let mut fresh = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        fresh.report(vantage, Up, Up).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = fresh.status().await;
        if status["engine"]["fenced"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never fenced: {status:#}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    fresh.stop().await;

    let mut floored = Running::start_with_floor(&config, 40).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        floored.report(vantage, Up, Up).await;
    }
    let status = floored.wait_active("us-east-1").await;
    assert!(status["generation"].as_u64().expect("generation") > 40, "{status:#}");
    floored.stop().await;
}

#[tokio::test]
async fn every_region_down_keeps_the_placement_and_calls_the_alert_webhook() {
    let dns = Fake::start().await;
    let hook = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with_webhook(&dns.url, &dir.path().join("audit.jsonl"), &hook.url);
    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Down, Down).await;
    }
    wait_for("the static-stability alert", 10_000, || {
        hook.seen_on("/alerts").iter().any(|s| {
            s.body["key"] == "all_down"
                && s.body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("static stability"))
        })
    })
    .await;
    let status = controller.status().await;
    assert_eq!(
        status["engine"]["observed"]["active"], "us-east-1",
        "never routes to nothing"
    );
    assert_eq!(
        dns.seen_on("/v1/health").len(),
        1,
        "no DNS change while everything is down"
    );
    assert!(
        status["engine"]["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("static stability"))),
        "{status:#}"
    );
    controller.stop().await;
}

/// A single controller restarted while every region is down: the incident its audit log
/// holds open is adopted, so the webhook gets no second trigger for the condition that still
/// holds, and gets the resolve, under the first trigger's dedup key, when it ends.
#[tokio::test]
async fn a_restart_does_not_page_again_for_a_condition_that_still_holds() {
    let dns = Fake::start().await;
    let hook = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let config = config_with_webhook(&dns.url, &audit, &hook.url);
    let all_down = |action: &str| -> Vec<serde_json::Value> {
        hook.seen_on("/alerts")
            .into_iter()
            .filter(|s| s.body["key"] == "all_down" && s.body["action"] == action)
            .map(|s| s.body)
            .collect()
    };
    let raises_recorded = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| record["kind"] == "alert" && record["key"] == "all_down")
            .count()
    };
    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Down, Down).await;
    }
    wait_for("the all_down trigger", 10_000, || !all_down("trigger").is_empty()).await;
    // Its delivery is recorded once the webhook took it: a restart before that pages again.
    wait_for("the delivery in the audit log", 10_000, || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains(r#""kind":"delivered","key":"all_down""#)
    })
    .await;
    let recorded = raises_recorded();
    controller.stop().await;

    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Down, Down).await;
    }
    // The restarted engine raises the condition again: recorded in the audit log, not sent.
    wait_for("the raise after the restart in the audit log", 10_000, || {
        raises_recorded() > recorded
    })
    .await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    wait_for("the all_down resolve", 10_000, || !all_down("resolve").is_empty()).await;
    // One queue per channel, in order: a second trigger would have arrived before the resolve.
    let triggers = all_down("trigger");
    assert_eq!(triggers.len(), 1, "paged again after the restart: {triggers:#?}");
    let resolves = all_down("resolve");
    assert_eq!(resolves.len(), 1, "{resolves:#?}");
    assert_eq!(resolves[0]["incident"], triggers[0]["incident"], "{resolves:#?}");
    controller.stop().await;
}

/// A controller that died between opening an incident and delivering its trigger (or its
/// resolve) leaves the audit log with the raise (or resolve) and no `delivered` record after
/// it. Its restart pages that incident again, once (the engine's own raise of the condition
/// still holding is then recorded, not sent), sends the lost resolve again, and adopts
/// silently the incident whose delivery was recorded.
#[tokio::test]
async fn a_restart_pages_again_what_a_crash_left_undelivered_and_only_that() {
    let dns = Fake::start().await;
    let hook = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let config = config_with_webhook(&dns.url, &audit, &hook.url);
    let sent = |key: &str, action: &str| -> Vec<serde_json::Value> {
        hook.seen_on("/alerts")
            .into_iter()
            .filter(|s| s.body["key"] == key && s.body["action"] == action)
            .map(|s| s.body)
            .collect()
    };
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .collect()
    };
    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    controller.stop().await;
    for key in ["all_down", "fenced", "runbook"] {
        assert!(
            sent(key, "trigger").is_empty() && sent(key, "resolve").is_empty(),
            "{key}: nothing yet"
        );
    }

    // What a kill -9 leaves: all_down raised and not delivered; fenced raised and delivered;
    // the runbook incident resolved and its resolve not delivered.
    let crashed = [
        r#"{"seq":100001,"at_ms":1000,"generation":1,"kind":"alert","key":"all_down","message":"every region is down","incident":"controller/all_down","delivery_pending":true}"#,
        r#"{"seq":100002,"at_ms":1001,"generation":1,"kind":"alert","key":"fenced","message":"stale","incident":"controller/fenced","delivery_pending":true}"#,
        r#"{"seq":100003,"at_ms":1002,"generation":1,"kind":"delivered","key":"fenced","incident":"controller/fenced"}"#,
        r#"{"seq":100004,"at_ms":1003,"generation":1,"kind":"resolved","key":"runbook","incident":"controller/runbook","delivery_pending":true}"#,
    ];
    let mut text = std::fs::read_to_string(&audit).expect("the audit log");
    for line in crashed {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&audit, text).expect("write the audit log");

    let mut controller = Running::start(&config).await;
    // Paged again at the start, and the lost resolve sent again, before any report.
    wait_for("all_down paged again", 10_000, || {
        !sent("all_down", "trigger").is_empty()
    })
    .await;
    wait_for("the runbook resolve sent again", 10_000, || {
        !sent("runbook", "resolve").is_empty()
    })
    .await;
    assert_eq!(sent("all_down", "trigger")[0]["incident"], "controller/all_down");
    assert_eq!(sent("runbook", "resolve")[0]["incident"], "controller/runbook");
    wait_for("both deliveries recorded", 10_000, || {
        let delivered: Vec<(String, bool)> = records()
            .iter()
            .filter(|r| r["kind"] == "delivered")
            .map(|r| (r["key"].as_str().unwrap_or("").to_string(), r["resolve"] == true))
            .collect();
        delivered.contains(&("all_down".into(), false)) && delivered.contains(&("runbook".into(), true))
    })
    .await;
    let raises = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|r| r["kind"] == "alert" && r["key"] == "all_down")
            .count()
    };
    let before = raises(&records());
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Down, Down).await;
    }
    // The engine raises all_down, which still holds: recorded, not sent a second time.
    wait_for("the engine's raise in the audit log", 10_000, || {
        raises(&records()) > before
    })
    .await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    wait_for("the all_down resolve", 10_000, || {
        !sent("all_down", "resolve").is_empty()
    })
    .await;
    // One queue per channel, in order: a second trigger would have come before the resolve.
    let triggers = sent("all_down", "trigger");
    assert_eq!(triggers.len(), 1, "{triggers:#?}");
    assert_eq!(sent("runbook", "resolve").len(), 1);
    assert!(
        sent("fenced", "trigger").is_empty(),
        "delivered before the crash: adopted silently"
    );
    // Every delivery recorded (fenced, adopted, was resolved as its condition does not hold):
    // a next start has nothing to page or resolve again.
    wait_for("the resolves recorded delivered", 10_000, || {
        let records = records();
        ["all_down", "fenced"].iter().all(|key| {
            records
                .iter()
                .any(|r| r["kind"] == "delivered" && r["key"] == *key && r["resolve"] == true)
        })
    })
    .await;
    controller.stop().await;
    let log = controller::audit::AuditLog::open(&audit, 1 << 30, 3).expect("reopen the audit log");
    assert!(log.checkpoint().open_alerts.is_empty(), "{:?}", log.checkpoint());
    assert!(log.checkpoint().resolving.is_empty(), "{:?}", log.checkpoint());
}

#[tokio::test]
async fn plans_and_self_probes_follow_each_vantage_points_path() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    // The checks name 127.0.0.1:9 (discard, closed here); the controller's own path to it is a
    // listener of this test, agent-a's another address, agent-b has none.
    let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live_address = live.local_addr().expect("address").to_string();
    let text = format!(
        "{}\n[vantage_paths.controller]\n\"127.0.0.1:9\" = \"{live_address}\"\n\n[vantage_paths.agent-a]\n\"127.0.0.1:9\" = \"127.0.0.1:19009\"\n",
        config_text(&dns.url, &audit)
    );
    let controller = Running::start_with(&text, 0, true).await;

    let (code, plan) = controller.call(Method::GET, "/v1/agent/plan?name=agent-a", None).await;
    assert_eq!(code, 200, "{plan}");
    let addresses = |plan: &serde_json::Value| -> Vec<String> {
        plan["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|c| c["kind"]["address"].as_str().expect("tcp address").to_string())
            .collect()
    };
    assert_eq!(addresses(&plan), ["127.0.0.1:19009", "127.0.0.1:19009"]);
    assert_eq!(
        plan["checks"][0]["name"], "use1-app",
        "names stay the same for the quorum"
    );
    let (code, plan) = controller.call(Method::GET, "/v1/agent/plan?name=agent-b", None).await;
    assert_eq!(code, 200, "{plan}");
    assert_eq!(addresses(&plan), ["127.0.0.1:9", "127.0.0.1:9"]);

    // The controller's own probes connect through its path: up, with the mapped address.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = controller.status().await;
        let own = status["vantages"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "controller"))
            .cloned()
            .unwrap_or_default();
        let checks = own["checks"].as_array().cloned().unwrap_or_default();
        let up = checks
            .iter()
            .filter(|c| c["status"] == "up" && c["detail"] == format!("connected to {live_address}"))
            .count();
        if up == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller's self-probes never went through {live_address}: {own:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(live);
    controller.stop().await;
}

const AGENT_A: &str = "agent-a-token-0123456789";
const AGENT_B: &str = "agent-b-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn tokens_section(agent_a_file: &Path) -> String {
    let hash = |token: &str| controller::auth::TokenDigest::of(token).to_hex();
    format!(
        "\n[[tokens]]\nname = \"agent-a\"\nrole = \"agent\"\ntoken_file = \"{}\"\n\n[[tokens]]\nname = \"agent-b\"\nrole = \"agent\"\ntoken_sha256 = \"{}\"\n\n[[tokens]]\nname = \"alice\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\n[[tokens]]\nname = \"grafana\"\nrole = \"read\"\ntoken_sha256 = \"{}\"\n",
        agent_a_file.display(),
        hash(AGENT_B),
        hash(OPERATOR),
        hash(READER)
    )
}

async fn start_with_tokens(dns_url: &str, dir: &Path) -> Running {
    let agent_a_file = dir.join("agent-a.token");
    std::fs::write(&agent_a_file, format!("{AGENT_A}\n")).expect("write token");
    let config = format!(
        "{}{}",
        config_text(dns_url, &dir.join("audit.jsonl")),
        tokens_section(&agent_a_file)
    );
    let options = RunOptions {
        token: None,
        dns_token: None,
        local_reports: None,
        probe_locally: false,
        generation_floor: 0,
        tls: None,
    };
    let mut running = Running::start_with_options(&config, options).await;
    running.token = OPERATOR;
    running
}

#[tokio::test]
async fn a_forged_report_is_refused_and_two_of_them_cause_no_failover() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut controller = start_with_tokens(&dns.url, dir.path()).await;
    // The controller's own vantage point reports in process only (not in this test), so the
    // two agents' votes are the majority of three.
    for (token, vantage) in [(AGENT_A, "agent-a"), (AGENT_B, "agent-b")] {
        let (status, body) = controller.report_as(token, vantage, Up, Up).await;
        assert_eq!(status, 204, "{body}");
    }
    controller.wait_active("us-east-1").await;

    // agent-a's token claiming agent-b: refused with a message that says why.
    let (status, body) = controller.report_as(AGENT_A, "agent-b", Down, Up).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "other_vantage", "{body}");
    let message = body["error"].as_str().expect("message");
    assert!(
        message.contains("'agent-a' (role agent) may only report as its own vantage point, not as 'agent-b'"),
        "{message}"
    );
    // Nor as the controller's own vantage, nor with an operator's token.
    let (status, _) = controller.report_as(AGENT_A, "controller", Down, Up).await;
    assert_eq!(status, 403);
    let (status, body) = controller.report_as(OPERATOR, "agent-b", Down, Up).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "wrong_role", "{body}");

    // One compromised agent (a) says us-east-1 is down as itself and, twice, as b and as the
    // controller: only its own vote counts, one of three is no majority, nothing moves.
    let (status, _) = controller.report_as(AGENT_A, "agent-a", Down, Up).await;
    assert_eq!(status, 204);
    for forged in ["agent-b", "controller"] {
        let (status, _) = controller.report_as(AGENT_A, forged, Down, Up).await;
        assert_eq!(status, 403);
    }
    let (status, _) = controller.report_as(AGENT_B, "agent-b", Up, Up).await;
    assert_eq!(status, 204);
    // The quorum counts one vote down: had either forgery counted, two of three would say down.
    // One down and one up is no quorum either way (unknown, which never fails over).
    let status = controller.status_as(READER).await;
    let verdict = &status["verdicts"]["us-east-1"];
    assert_eq!(verdict["state"], "unknown", "{status:#}");
    assert_eq!(verdict["votes_down"], 1, "{status:#}");
    assert_eq!(status["engine"]["observed"]["active"], "us-east-1", "{status:#}");
    assert_eq!(dns.seen_on("/v1/health").len(), 1, "no DNS change from forged reports");

    let metrics = HttpClient::new()
        .request(Method::GET, &format!("{}/metrics", controller.url), None, None, 5_000)
        .await
        .expect("metrics");
    assert!(
        metrics
            .text()
            .contains("switchyard_controller_requests_refused_total{code=\"other_vantage\"} 4"),
        "{}",
        metrics.text()
    );

    // The genuine second agent agreeing is a majority: failover.
    let (status, _) = controller.report_as(AGENT_B, "agent-b", Down, Up).await;
    assert_eq!(status, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = controller.status_as(READER).await;
        if status["engine"]["observed"]["active"] == "eu-west-1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no failover: {status:#}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    controller.stop().await;
}

impl Running {
    async fn status_as(&self, token: &str) -> serde_json::Value {
        let (code, body) = self.call_as(Some(token), Method::GET, "/v1/status", None).await;
        assert_eq!(code, 200, "{body}");
        body
    }
}

#[tokio::test]
async fn each_role_is_allowed_only_its_endpoints() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let report = serde_json::json!({"vantage": "agent-a", "sent_at_ms": wall_ms(), "results": []});
    let endpoints: Vec<(&str, Method, &str, Option<serde_json::Value>)> = vec![
        ("read", Method::GET, "/v1/status", None),
        ("read", Method::GET, "/v1/events", None),
        ("read", Method::GET, "/v1/active-region", None),
        ("operator", Method::POST, "/v1/pause", None),
        ("operator", Method::POST, "/v1/resume", None),
        ("operator", Method::POST, "/v1/acknowledge", None),
        ("operator", Method::POST, "/v1/failover", None),
        ("operator", Method::POST, "/v1/failback", None),
        (
            "operator",
            Method::POST,
            "/v1/switchover",
            Some(serde_json::json!({"to": "eu-west-1"})),
        ),
        ("agent", Method::GET, "/v1/agent/plan?name=agent-a", None),
        ("agent", Method::POST, "/v1/agent/report", Some(report)),
    ];
    // Which tokens each kind of endpoint admits; an operator also reads.
    let callers: [(&str, Option<&str>, &[&str]); 5] = [
        ("agent-a", Some(AGENT_A), &["agent"]),
        ("operator", Some(OPERATOR), &["operator", "read"]),
        ("reader", Some(READER), &["read"]),
        ("nobody", None, &[]),
        ("a stranger", Some("stranger-token-0123456789"), &[]),
    ];
    for (who, token, allowed) in callers {
        for (role, method, path, body) in &endpoints {
            let (status, answer) = controller.call_as(token, method.clone(), path, body.clone()).await;
            let expected_ok = allowed.contains(role);
            let refused = status == 401 || status == 403;
            assert_eq!(
                !refused, expected_ok,
                "{who} on {method} {path}: HTTP {status} {answer}"
            );
            if refused {
                let expected = if token.is_some() && who != "a stranger" {
                    403
                } else {
                    401
                };
                assert_eq!(status, expected, "{who} on {path}: {answer}");
                assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
            }
        }
    }
    // An agent's plan is its own only.
    let (status, body) = controller
        .call_as(Some(AGENT_A), Method::GET, "/v1/agent/plan?name=agent-b", None)
        .await;
    assert_eq!(status, 403, "{body}");
    // Open to all, as before: the dashboard page (no data), /health and /metrics.
    for path in ["/dashboard", "/health", "/metrics"] {
        let (status, _) = controller.call_as(None, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
    }
    controller.stop().await;
}

#[tokio::test]
async fn the_control_token_still_works_but_not_for_an_agent_with_its_own() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_a_file = dir.path().join("agent-a.token");
    std::fs::write(&agent_a_file, AGENT_A).expect("write token");
    // Only agent-a has migrated; the control token still covers the rest.
    let hash = controller::auth::TokenDigest::of(AGENT_A).to_hex();
    let config = format!(
        "{}\n[[tokens]]\nname = \"agent-a\"\nrole = \"agent\"\ntoken_sha256 = \"{hash}\"\n",
        config_text(&dns.url, &dir.path().join("audit.jsonl"))
    );
    let mut controller = Running::start(&config).await;
    let (status, body) = controller.report_as(TOKEN, "agent-b", Up, Up).await;
    assert_eq!(
        status, 204,
        "the control token reports for a vantage without a token: {body}"
    );
    let (status, body) = controller.report_as(TOKEN, "agent-a", Up, Up).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("may not report for a vantage point that has its own token")),
        "{body}"
    );
    let (status, _) = controller.report_as(AGENT_A, "agent-a", Up, Up).await;
    assert_eq!(status, 204);
    let (status, _) = controller.call(Method::POST, "/v1/pause", None).await;
    assert_eq!(status, 200, "the control token is still an operator token");
    controller.stop().await;
}

#[tokio::test]
async fn agent_tokens_alone_do_not_open_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = config_text("http://127.0.0.1:1", &dir.path().join("audit.jsonl"));
    let hash = controller::auth::TokenDigest::of(AGENT_B).to_hex();
    let agents_only = format!("{base}\n[[tokens]]\nname = \"agent-b\"\nrole = \"agent\"\ntoken_sha256 = \"{hash}\"\n");
    let config = controller::config::parse("t.toml", &agents_only).expect("valid");
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let error = run(listener, config, RunOptions::default(), async {})
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("role(s) operator, read have no token"),
        "{error}"
    );
    // With a credential for every role, any address is allowed.
    let agent_a_file = dir.path().join("agent-a.token");
    std::fs::write(&agent_a_file, AGENT_A).expect("write");
    let every_role = format!("{base}{}", tokens_section(&agent_a_file));
    let config = controller::config::parse("t.toml", &every_role).expect("valid");
    let access = controller::server::access(&config, None);
    let public: std::net::SocketAddr = "0.0.0.0:7400".parse().expect("address");
    assert!(controller::server::check_exposure(public, &access).is_ok());
}

/// Requests fuzzed per run at each of the agent report and the switchover endpoints.
const API_FUZZ_CASES: usize = 150;

/// Arbitrary bodies at the agent report (as agent-a) and switchover (as an operator)
/// endpoints — raw text, and reports with arbitrary vantage names, check names, statuses and
/// numbers — are answered with a client error or accepted, never a server error or a crash; the
/// controller keeps answering, and garbage from one agent moves nothing.
#[tokio::test]
async fn arbitrary_api_bodies_get_client_errors_and_move_nothing() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let status_word = prop_oneof![
        Just("up".to_string()),
        Just("down".to_string()),
        Just("unknown".to_string()),
        "[a-z]{0,8}"
    ];
    let result = (
        "[a-z0-9-]{0,12}",
        "[a-z0-9-]{0,12}",
        status_word,
        any::<u64>(),
        any::<i64>(),
    )
        .prop_map(|(check, region, status, since, lag)| {
            serde_json::json!({"check": check, "region": region, "status": status, "since_ms": since,
                "detail": "", "latency_ms": lag, "replica_lag_ms": lag})
        });
    let body = prop_oneof![
        ".{0,160}",
        (
            prop_oneof![Just("agent-a".to_string()), "[a-z-]{0,10}"],
            any::<u64>(),
            proptest::collection::vec(result, 0..4)
        )
            .prop_map(|(vantage, sent, results)| {
                serde_json::json!({"vantage": vantage, "sent_at_ms": sent, "results": results}).to_string()
            }),
        "[a-z-]{0,12}".prop_map(|region| serde_json::json!({"region": region}).to_string()),
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..API_FUZZ_CASES {
        let text = body.new_tree(&mut runner).expect("a case").current();
        for (token, path) in [(AGENT_A, "/v1/agent/report"), (OPERATOR, "/v1/switchover")] {
            let answer = controller
                .client
                .request(
                    Method::POST,
                    &format!("{}{path}", controller.url),
                    Some(token),
                    Some(text.clone().into_bytes()),
                    30_000,
                )
                .await
                .expect("controller answers");
            let code = answer.status.as_u16();
            assert!(code < 500, "POST {path} {text:?}: {code} {}", answer.text());
        }
    }
    let status = controller.status_as(READER).await;
    let votes_down = status["verdicts"]["us-east-1"]["votes_down"].as_u64().unwrap_or(0);
    assert!(votes_down <= 1, "one agent is at most one vote: {status:#}");
    assert!(dns.seen_on("/v1/health").len() <= 1, "garbage moved DNS: {status:#}");
    controller.stop().await;
}

#[tokio::test]
async fn failover_takes_an_optional_force_data_loss_body() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let bad = serde_json::json!({"force_data_loss": "yes"});
    let (status, answer) = controller
        .call_as(Some(OPERATOR), Method::POST, "/v1/failover", Some(bad))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("force_data_loss")),
        "{answer}"
    );
    let unknown = serde_json::json!({"force": true});
    let (status, _) = controller
        .call_as(Some(OPERATOR), Method::POST, "/v1/failover", Some(unknown))
        .await;
    assert_eq!(status, 400, "unknown fields are refused, not ignored");
    for body in [None, Some(serde_json::json!({"force_data_loss": true}))] {
        let (status, answer) = controller
            .call_as(Some(OPERATOR), Method::POST, "/v1/failover", body.clone())
            .await;
        // Accepted, or refused by the engine (no placement yet): never a body error.
        assert!(status == 200 || status == 409, "{body:?}: {status} {answer}");
        assert!(answer["reason"].as_str().is_some(), "{answer}");
    }
    controller.stop().await;
}

/// Found by the database promote tests: a controller restarted in the middle of a manual
/// failover rolled it forward and then failed straight back. The hold after the operator's
/// decision now comes back from the audit log.
#[tokio::test]
async fn a_restart_in_the_middle_of_a_manual_failover_keeps_the_hold() {
    let dns = Fake::start().await;
    dns.set_fence(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let config = config_text(&dns.url, &audit).replace(
        "startup_grace_ms = 60000",
        "startup_grace_ms = 60000\nstability_window_ms = 0\nmin_hold_ms = 600000",
    );
    let mut controller = Running::start(&config).await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    controller.wait_active("us-east-1").await;
    // The operator fails over while DNS hangs: the runbook cannot finish before the crash.
    dns.set_hang(true);
    let (code, answer) = controller.call(Method::POST, "/v1/failover", None).await;
    assert_eq!(code, 200, "{answer}");
    wait_for("the hanging DNS request", 5_000, || {
        dns.seen_on("/v1/health")
            .iter()
            .any(|s| s.body["targets"]["euw1-web"] == "healthy")
    })
    .await;
    controller.stop().await;

    dns.set_hang(false);
    let mut controller = Running::start(&config).await;
    controller.wait_active("eu-west-1").await;
    for vantage in ["controller", "agent-a", "agent-b"] {
        controller.report(vantage, Up, Up).await;
    }
    // Both regions healthy, the stability window 0: only the restored hold keeps the primary
    // (still the preferred region after a failover) from taking traffic back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = controller.status().await;
        assert_eq!(status["engine"]["observed"]["active"], "eu-west-1", "{status:#}");
        let reasons = status["engine"]["reasons"].to_string();
        if reasons.contains("holding after the last transition") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hold after the restart: {status:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    controller.stop().await;
}

#[tokio::test]
async fn a_request_a_web_page_made_a_browser_send_is_refused_even_with_a_token() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let url = format!("{}/v1/pause", controller.url);
    let bearer = format!("Bearer {OPERATOR}");
    // A cross-site page's POST (no preflight for text/plain), and a browser's own mark of one.
    for forged in [
        vec![
            ("authorization", bearer.clone()),
            ("origin", "https://evil.example".to_string()),
            ("content-type", "text/plain".to_string()),
        ],
        vec![
            ("authorization", bearer.clone()),
            ("sec-fetch-site", "cross-site".to_string()),
        ],
    ] {
        let (status, body) = testkit::http_post(&url, &forged, Vec::new()).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        assert!(
            String::from_utf8_lossy(&body).contains("browser"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        controller.status_as(READER).await["engine"]["paused"],
        false,
        "nothing was paused"
    );
    // The dashboard's own requests (same origin) go through.
    let origin = controller.url.clone();
    let (status, _) = testkit::http_post(&url, &[("authorization", bearer), ("origin", origin)], Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(controller.status_as(READER).await["engine"]["paused"], true);
    controller.stop().await;
}

fn wall_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

fn result_json(check: &str, region: &str, status: &str, lag: Option<u64>) -> serde_json::Value {
    let mut result =
        serde_json::json!({"check": check, "region": region, "status": status, "since_ms": 0, "detail": "forged"});
    if let Some(lag) = lag {
        result["replica_lag_ms"] = lag.into();
    }
    result
}

/// What one stolen agent token (agent-a's) does at the report endpoint, as the attack review
/// did it: a report of 12,000 made-up regions stamped at 2^63, a stamp that would have every
/// later genuine report refused as outdated, made-up results beside real ones, and a lag on a
/// check that reads none. Each is refused or left out, counted, and said to the sender.
#[tokio::test]
async fn a_stolen_agent_token_cannot_flood_stamp_ahead_or_set_the_lag() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let post =
        |body: serde_json::Value| controller.call_as(Some(AGENT_A), Method::POST, "/v1/agent/report", Some(body));

    // ~1 MB of made-up regions: refused whole.
    let flood: Vec<serde_json::Value> = std::iter::once(result_json("use1-app", "us-east-1", "down", None))
        .chain((0..12_000).map(|i| result_json("c", &format!("r{i}"), "down", None)))
        .collect();
    let (code, body) =
        post(serde_json::json!({"vantage": "agent-a", "sent_at_ms": 1u64 << 63, "results": flood})).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], "too_many_results", "{body}");

    // Stamped at 2^63: refused, so it cannot hold the genuine reports out.
    let down = vec![result_json("use1-app", "us-east-1", "down", None)];
    let (code, body) = post(serde_json::json!({"vantage": "agent-a", "sent_at_ms": 1u64 << 63, "results": down})).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], "clock_ahead", "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("NTP")), "{body}");
    let now = wall_ms();
    let genuine = vec![
        result_json("use1-app", "us-east-1", "up", None),
        result_json("euw1-app", "eu-west-1", "up", None),
    ];
    let (code, body) = post(serde_json::json!({"vantage": "agent-a", "sent_at_ms": now, "results": genuine})).await;
    assert_eq!(code, 204, "{body}");
    // A report older than the one held is refused out loud (two senders under one name).
    let (code, body) = post(serde_json::json!({"vantage": "agent-a", "sent_at_ms": now - 1, "results": []})).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "outdated", "{body}");

    // A made-up result beside a real one, and a lag on checks that read none (tcp).
    let results = vec![
        result_json("use1-app", "us-east-1", "up", Some(0)),
        result_json("made-up", "mars", "down", None),
    ];
    let (code, body) = post(serde_json::json!({"vantage": "agent-a", "sent_at_ms": now + 1, "results": results})).await;
    assert_eq!(code, 204, "{body}");
    let status = controller.status_as(READER).await;
    let verdicts = status["verdicts"].as_object().expect("verdicts");
    assert_eq!(
        verdicts.keys().collect::<Vec<_>>(),
        vec!["eu-west-1", "us-east-1"],
        "only configured regions are judged: {status:#}"
    );
    assert!(verdicts["us-east-1"]["replica_lag_ms"].is_null(), "{status:#}");
    let held = status["vantages"]
        .as_array()
        .expect("vantages")
        .iter()
        .find(|v| v["name"] == "agent-a")
        .expect("agent-a")["checks"]
        .clone();
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{held:#}");
    assert!(held[0]["replica_lag_ms"].is_null(), "{held:#}");

    let metrics = HttpClient::new()
        .request(Method::GET, &format!("{}/metrics", controller.url), None, None, 5_000)
        .await
        .expect("metrics")
        .text();
    for line in [
        "switchyard_controller_reports_refused_total{vantage=\"agent-a\",reason=\"too_many_results\"} 1",
        "switchyard_controller_reports_refused_total{vantage=\"agent-a\",reason=\"clock_ahead\"} 1",
        "switchyard_controller_reports_refused_total{vantage=\"agent-a\",reason=\"outdated\"} 1",
        "switchyard_controller_report_results_dropped_total{vantage=\"agent-a\"} 1",
        "switchyard_controller_reports_total{vantage=\"agent-a\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    controller.stop().await;
}

/// Two agents read the lag of us-east-1; one of them alone decides nothing about it.
#[tokio::test]
async fn the_lag_of_a_region_takes_a_quorum_of_vantage_points() {
    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_text(&dns.url, &dir.path().join("audit.jsonl"));
    config = config.replace(
        "kind = { type = \"tcp\", address = \"127.0.0.1:9\" }\n\n[[checks]]\nname = \"euw1-app\"",
        "kind = { type = \"sql\", driver = \"mysql\", address = \"127.0.0.1:9\", user = \"probe\", replica_lag = true }\n\n[[checks]]\nname = \"euw1-app\"",
    );
    assert!(config.contains("replica_lag = true"));
    let controller = Running::start(&config).await;
    let start = wall_ms();
    let post = |vantage: &str, sent_at_ms: u64, lag: u64| {
        let sent_at_ms = start + sent_at_ms;
        let results = vec![
            result_json("use1-app", "us-east-1", "up", Some(lag)),
            result_json("euw1-app", "eu-west-1", "up", None),
        ];
        controller.call(
            Method::POST,
            "/v1/agent/report",
            Some(serde_json::json!({"vantage": vantage, "sent_at_ms": sent_at_ms, "results": results})),
        )
    };
    let lag = |status: &serde_json::Value| status["verdicts"]["us-east-1"]["replica_lag_ms"].clone();
    // One reading of 0: not a quorum of two, so unknown.
    assert_eq!(post("agent-a", 1, 0).await.0, 204);
    assert!(lag(&controller.status().await).is_null());
    // A second vantage point reads 5 s: the lag is 5 s, not the lone 0.
    assert_eq!(post("agent-b", 1, 5_000).await.0, 204);
    assert_eq!(lag(&controller.status().await), 5_000);
    // Two read ~0 and one says 10^9: the one cannot hold failback back.
    assert_eq!(post("agent-b", 2, 1_000_000_000).await.0, 204);
    assert_eq!(post("controller", 1, 10).await.0, 204);
    assert_eq!(post("agent-a", 2, 20).await.0, 204);
    assert_eq!(lag(&controller.status().await), 20);
    controller.stop().await;
}

/// The listener's refusals are in the controller's error shape, and the bearer scheme is
/// read in any case (RFC 7235).
#[tokio::test]
async fn refusals_are_in_the_controllers_shape_and_bearer_is_case_insensitive() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dns = Fake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = start_with_tokens(&dns.url, dir.path()).await;
    let url = format!("{}/v1/agent/report", controller.url);
    let too_big = vec![b' '; controller::server::REQUEST_BODY_BYTES_MAX + 1];
    let answer = controller
        .client
        .request(Method::POST, &url, Some(AGENT_A), Some(too_big), 30_000)
        .await
        .expect("answers");
    assert_eq!(answer.status.as_u16(), 413, "{}", answer.text());
    let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(body["code"], "request_entity_too_large", "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("1048576")), "{body}");
    assert!(body.get("__type").is_none(), "{body}");

    // The same without a Content-Length (chunked): refused while it is read, same shape.
    let address = controller.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let chunk = vec![b' '; 64 * 1024];
    let head = format!(
        "POST /v1/agent/report HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {AGENT_A}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..(controller::server::REQUEST_BODY_BYTES_MAX / chunk.len() + 2) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"request_entity_too_large\""), "{answer}");

    for scheme in ["bearer", "BEARER"] {
        let answer = controller
            .client
            .request_with_headers(
                Method::GET,
                &format!("{}/v1/status", controller.url),
                None,
                None,
                &[("authorization", &format!("{scheme} {READER}"))],
                5_000,
            )
            .await
            .expect("answers");
        assert_eq!(answer.status.as_u16(), 200, "{scheme}: {}", answer.text());
    }
    controller.stop().await;
}
