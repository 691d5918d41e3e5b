//! Runbook steps against real processes and an in-test HTTP server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use controller::client::HttpClient;
use controller::config::{Step, StepKind};
use controller::engine::{Generation, Placement, RegionId, RunbookOrder, RunbookOutcome, TransitionKind};
use controller::pointer::{Pointer, PointerValue};
use controller::runbook::{
    COMMAND_DRAIN_AFTER_EXIT_MS, COMMAND_KILL_GRACE_MS, COMMAND_OUTPUT_TAIL_BYTES, DnsAdmin, StepContext, StepReport,
    execute, execute_guarded, wait_for_stopped_commands,
};

use crate::fake::Fake;
use crate::wait_for;

fn step(name: &str, kind: StepKind) -> Step {
    Step {
        name: name.into(),
        kind,
        timeout_ms: 2_000,
        retries: 2,
        backoff_ms: 10,
        when_to: None,
        program: None,
        args: Vec::new(),
        url: None,
        action: None,
    }
}

fn order(generation: u64) -> RunbookOrder {
    RunbookOrder {
        generation: Generation(generation),
        kind: TransitionKind::Failover,
        from: Some(Placement::single(RegionId::new("us-east-1"))),
        to: Placement::single(RegionId::new("eu-west-1")),
        reason: "us-east-1 is down".into(),
        force_data_loss: false,
        continues: None,
    }
}

fn context(dns: Option<&Fake>) -> StepContext {
    context_with_pointer(dns, Pointer::new(PointerValue::default()))
}

fn context_with_pointer(dns: Option<&Fake>, pointer: Pointer) -> StepContext {
    let mut targets = BTreeMap::new();
    targets.insert("us-east-1".to_string(), vec!["use1-web".to_string()]);
    targets.insert("eu-west-1".to_string(), vec!["euw1-web".to_string()]);
    StepContext {
        client: HttpClient::new(),
        dns: dns.map(|fake| DnsAdmin {
            admin_url: fake.url.clone(),
            token: Some("sekrit".into()),
            txt_name: Some("_active-region.shop.example.".into()),
        }),
        targets,
        pointer,
    }
}

/// The DNS health, TXT and pointer steps, in that order.
fn dns_txt_pointer() -> [Step; 3] {
    [
        step("dns", StepKind::DnsHealth),
        step("txt", StepKind::DnsTxt),
        step("pointer", StepKind::Pointer),
    ]
}

async fn run(steps: &[Step], order: &RunbookOrder, context: &StepContext) -> (RunbookOutcome, Vec<StepReport>) {
    let mut reports = Vec::new();
    let outcome = execute(steps, order, context, |r| reports.push(r)).await;
    (outcome, reports)
}

#[tokio::test]
async fn command_step_gets_generation_and_regions_in_its_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env.txt");
    let mut command = step("promote", StepKind::Command);
    command.program = Some("sh".into());
    command.args = vec![
        "-c".into(),
        format!(
            "echo \"$SWITCHYARD_GENERATION $SWITCHYARD_FROM $SWITCHYARD_TO\" > {}",
            out.display()
        ),
    ];
    let (outcome, reports) = run(&[command], &order(7), &context(None)).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert_eq!(reports.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&out).expect("the command ran").trim(),
        "7 us-east-1 eu-west-1"
    );
}

#[tokio::test]
async fn failing_command_is_retried_then_reported_and_later_steps_do_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = dir.path().join("count");
    let mut failing = step("flaky", StepKind::Command);
    failing.program = Some("sh".into());
    failing.args = vec![
        "-c".into(),
        format!("echo x >> {}; echo 'replica not ready' >&2; exit 3", count.display()),
    ];
    let pointer_step = step("pointer", StepKind::Pointer);
    let context = context(None);
    let (outcome, reports) = run(&[failing, pointer_step], &order(3), &context).await;
    match outcome {
        RunbookOutcome::Failed { step, error } => {
            assert_eq!(step, "flaky");
            assert!(error.contains("replica not ready"), "{error}");
            assert!(error.contains("after 3 attempt(s)"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let attempts = std::fs::read_to_string(&count).expect("ran").lines().count();
    assert_eq!(attempts, 3, "1 attempt + 2 retries");
    assert_eq!(reports.iter().filter(|r| r.outcome == "error").count(), 3);
    assert_eq!(
        context.pointer.get().region,
        None,
        "the pointer step after a failed step never ran"
    );
}

#[tokio::test]
async fn a_step_is_not_retried_once_the_runner_may_no_longer_act() {
    // A leader whose lease ran out while its step failed stops before the next attempt,
    // instead of retrying under its old generation for the step's whole budget.
    let dir = tempfile::tempdir().expect("tempdir");
    let count = dir.path().join("count");
    let mut failing = step("dns", StepKind::Command);
    failing.program = Some("sh".into());
    failing.args = vec!["-c".into(), format!("echo x >> {}; exit 3", count.display())];
    failing.retries = 5;
    let pointer_step = step("pointer", StepKind::Pointer);
    let context = context(None);
    let asked = std::sync::atomic::AtomicU32::new(0);
    let mut reports = Vec::new();
    let outcome = execute_guarded(
        &[failing, pointer_step],
        &order(9),
        &context,
        || {
            // Allowed for the first attempt only, as when the lease lapses during it.
            if asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Ok(())
            } else {
                Err("the lease ran out".to_string())
            }
        },
        |r| reports.push(r),
    )
    .await;
    match outcome {
        RunbookOutcome::Failed { step, error } => {
            assert_eq!(step, "dns");
            assert!(error.contains("not run: the lease ran out"), "{error}");
        }
        other => panic!("expected a stop, got {other:?}"),
    }
    let attempts = std::fs::read_to_string(&count).expect("ran").lines().count();
    assert_eq!(attempts, 1, "no retry after the runner lost the right to act");
    let outcomes: Vec<_> = reports.iter().map(|r| (r.attempt, r.outcome)).collect();
    assert_eq!(outcomes, vec![(1, "error"), (2, "stopped")]);
    assert_eq!(context.pointer.get().region, None, "the later step never ran");
}

#[tokio::test]
async fn hanging_command_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let mut hanging = step("hang", StepKind::Command);
    hanging.timeout_ms = 300;
    hanging.retries = 0;
    hanging.program = Some("sh".into());
    hanging.args = vec!["-c".into(), format!("echo $$ > {}; exec sleep 60", pid_file.display())];
    let (outcome, _) = run(&[hanging], &order(4), &context(None)).await;
    match outcome {
        RunbookOutcome::Failed { error, .. } => assert!(error.contains("timed out after 300 ms"), "{error}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let pid = std::fs::read_to_string(&pid_file).expect("pid written");
    let proc_path = format!("/proc/{}", pid.trim());
    wait_for("the timed-out process to be killed", 5_000, || {
        std::fs::read_to_string(format!("{proc_path}/stat"))
            .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    })
    .await;
}

#[tokio::test]
async fn when_to_skips_steps_for_other_targets() {
    let mut only_us = step("only-us", StepKind::Command);
    only_us.program = Some("false".into());
    only_us.when_to = Some(vec!["us-east-1".into()]);
    let (outcome, reports) = run(&[only_us], &order(2), &context(None)).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert_eq!(reports[0].outcome, "skipped");
}

#[tokio::test]
async fn dns_steps_send_the_generation_and_token() {
    let dns = Fake::start().await;
    let context = context(Some(&dns));
    let steps = dns_txt_pointer();
    let (outcome, _) = run(&steps, &order(5), &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    let health = dns.seen_on("/v1/health");
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].method, "PUT");
    assert_eq!(health[0].authorization.as_deref(), Some("Bearer sekrit"));
    assert_eq!(
        health[0].body,
        serde_json::json!({"generation": 5, "targets": {"use1-web": "unhealthy", "euw1-web": "healthy"}})
    );
    let txt = dns.seen_on("/v1/txt");
    assert_eq!(
        txt[0].body,
        serde_json::json!({"generation": 5, "name": "_active-region.shop.example.", "value": "eu-west-1"})
    );
    assert_eq!(
        context.pointer.get(),
        PointerValue {
            region: Some("eu-west-1".into()),
            generation: 5
        }
    );
}

#[tokio::test]
async fn a_roll_forward_does_not_apply_again_what_is_already_in_place() {
    let dns = Fake::start().await;
    let context = context(Some(&dns));
    let steps = dns_txt_pointer();
    // Generation 5 applies all three; its leader is cut off before etcd records them.
    let (outcome, _) = run(&steps, &order(5), &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    let puts = |fake: &Fake| fake.seen().iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts(&dns), 2);
    // Generation 6 rolls the same decision forward: it reads the targets and finds each in place.
    let rolled = RunbookOrder {
        kind: TransitionKind::RollForward,
        continues: Some(TransitionKind::Failover),
        ..order(6)
    };
    let (outcome, reports) = run(&steps, &rolled, &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert_eq!(puts(&dns), 2, "nothing pushed again: {reports:?}");
    assert_eq!(
        reports.iter().map(|r| (r.step.as_str(), r.outcome)).collect::<Vec<_>>(),
        vec![("dns", "skipped"), ("txt", "skipped"), ("pointer", "skipped")]
    );
    assert!(reports[0].detail.contains("generation 5"), "{}", reports[0].detail);
    assert_eq!(context.pointer.get().generation, 5);
    // A new decision to the same placement pushes (its generation fences older ones).
    let (outcome, reports) = run(&steps, &order(7), &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert!(reports.iter().all(|r| r.outcome == "ok"), "{reports:?}");
    assert_eq!(puts(&dns), 4);
    // A roll-forward whose targets do not hold the state applies it.
    let fresh = Fake::start().await;
    let other = context_with_pointer(Some(&fresh), Pointer::new(PointerValue::default()));
    let (outcome, reports) = run(
        &steps,
        &RunbookOrder {
            generation: Generation(8),
            ..rolled
        },
        &other,
    )
    .await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert!(reports.iter().all(|r| r.outcome == "ok"), "{reports:?}");
    assert_eq!(puts(&fresh), 2);
    assert_eq!(other.pointer.get().generation, 8);
}

/// The window between a roll-forward's read of the DNS view and its push: the earlier
/// generation's push, still in flight when its leader was cut off, lands there. The push is
/// conditional on the generation read (412 when the view moved), so the state is read again and
/// found in place, and the step is applied once, not under both generations.
#[tokio::test]
async fn a_push_landing_between_the_read_and_the_push_is_not_pushed_over() {
    let dns = Fake::start().await;
    let context = context(Some(&dns));
    let steps = [step("dns", StepKind::DnsHealth)];
    let rolled = RunbookOrder {
        kind: TransitionKind::RollForward,
        continues: Some(TransitionKind::Failover),
        ..order(6)
    };
    // What generation 5 pushes for the same decision, landing after generation 6 read the view.
    let earlier = {
        let (_, _) = run(&steps, &order(5), &context).await;
        let pushed = dns.seen_on("/v1/health").pop().expect("generation 5 pushed");
        pushed.body
    };
    let fresh = Fake::start().await;
    let context = context_with_pointer(Some(&fresh), Pointer::new(PointerValue::default()));
    fresh.land_after_read("/v1/health", earlier);
    let (outcome, reports) = run(&steps, &rolled, &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded, "{reports:?}");
    let puts: Vec<_> = fresh
        .seen_on("/v1/health")
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "one conditional push, refused: {reports:?}");
    assert_eq!(puts[0].body["if_generation"], 0, "conditional on the generation read");
    assert_eq!(
        reports.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec!["skipped"],
        "{reports:?}"
    );
    assert!(
        reports[0].detail.contains("HTTP 412") && reports[0].detail.contains("generation 5"),
        "{}",
        reports[0].detail
    );
    // Without a landing push the conditional push applies.
    let quiet = Fake::start().await;
    let context = context_with_pointer(Some(&quiet), Pointer::new(PointerValue::default()));
    let (outcome, reports) = run(&steps, &rolled, &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    assert_eq!(reports.iter().map(|r| r.outcome).collect::<Vec<_>>(), vec!["ok"]);
    let put = quiet.seen_on("/v1/health").pop().expect("pushed");
    assert_eq!(put.body["if_generation"], 0);
    assert_eq!(put.body["generation"], 6);
    // A first runbook (not continuing a decision) pushes unconditionally.
    let (_, _) = run(&steps, &order(7), &context).await;
    let put = quiet.seen_on("/v1/health").pop().expect("pushed");
    assert!(put.body.get("if_generation").is_none(), "{}", put.body);
}

#[tokio::test]
async fn a_409_fences_the_runbook_without_retrying() {
    let dns = Fake::start().await;
    dns.set_fence(true);
    let context = context(Some(&dns));
    let steps = [step("dns", StepKind::DnsHealth), step("pointer", StepKind::Pointer)];
    let (outcome, _) = run(&steps, &order(9), &context).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    // A stale controller with an older generation.
    let (outcome, reports) = run(&steps, &order(8), &context).await;
    match outcome {
        RunbookOutcome::Fenced { step, .. } => assert_eq!(step, "dns"),
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(dns.seen_on("/v1/health").len(), 2, "no retry with the old generation");
    assert_eq!(reports.last().map(|r| r.outcome), Some("fenced"));
    assert_eq!(context.pointer.get().generation, 9, "the pointer step did not run");
}

#[tokio::test]
async fn server_errors_are_retried_and_webhooks_get_the_order() {
    let hook = Fake::start().await;
    hook.set_status(503);
    let mut webhook = step("notify", StepKind::Webhook);
    webhook.url = Some(format!("{}/switchyard", hook.url));
    let (outcome, _) = run(std::slice::from_ref(&webhook), &order(6), &context(None)).await;
    assert!(matches!(outcome, RunbookOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(hook.seen().len(), 3);
    hook.set_status(200);
    let (outcome, _) = run(&[webhook], &order(7), &context(None)).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
    let last = hook.seen().pop().expect("request");
    assert_eq!(last.body["generation"], 7);
    assert_eq!(last.body["to"], "eu-west-1");
    assert_eq!(last.body["from"], "us-east-1");
    assert_eq!(last.body["kind"], "failover");
}

#[tokio::test]
async fn hanging_http_step_times_out() {
    let dns = Fake::start().await;
    dns.set_hang(true);
    let mut dns_step = step("dns", StepKind::DnsHealth);
    dns_step.timeout_ms = 200;
    dns_step.retries = 1;
    let (outcome, reports) = run(&[dns_step], &order(2), &context(Some(&dns))).await;
    assert!(matches!(outcome, RunbookOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(reports.len(), 2);
    assert!(reports[0].detail.contains("200 ms"), "{}", reports[0].detail);
}

/// A `command` step running `sh -c SCRIPT`.
fn sh(name: &str, script: String) -> Step {
    let mut command = step(name, StepKind::Command);
    command.program = Some("sh".into());
    command.args = vec!["-c".into(), script];
    command
}

/// Whether the process whose pid `pid_file` holds is gone (exited, or a zombie nobody reaped).
fn gone(pid_file: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"))
        .unwrap_or(true)
}

#[tokio::test]
async fn a_command_writing_more_than_a_pipe_holds_to_stderr_runs_to_its_end() {
    // 256 KiB of progress on stderr (more than a pipe holds), then the work: a reader that stops
    // early kills it (SIGPIPE).
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done");
    let noisy = sh(
        "noisy",
        format!(
            "i=0; while [ $i -lt 4096 ]; do echo 'progress: copying the next block of the replica, please wait' >&2; i=$((i+1)); done; echo applied > {}",
            done.display()
        ),
    );
    let (outcome, reports) = run(&[noisy], &order(5), &context(None)).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded, "{reports:?}");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(done.exists(), "the command ran to its end");
}

#[tokio::test]
async fn a_failing_command_reports_the_end_of_its_output() {
    let mut failing = sh(
        "promote",
        "head -c 100000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'FATAL: the replica is 3 s behind' >&2; exit 4"
            .into(),
    );
    failing.retries = 0;
    let (outcome, _) = run(&[failing], &order(5), &context(None)).await;
    let RunbookOutcome::Failed { error, .. } = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(error.contains("exit status: 4"), "{error}");
    assert!(
        error.contains("FATAL: the replica is 3 s behind"),
        "the last words are kept: {error}"
    );
    assert!(
        error.len() < COMMAND_OUTPUT_TAIL_BYTES + 200,
        "bounded: {} bytes",
        error.len()
    );
}

#[tokio::test]
async fn a_command_that_starts_a_background_process_succeeds_at_once_and_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = dir.path().join("count");
    let background = dir.path().join("background.pid");
    let mut starts = sh(
        "starts-daemon",
        format!(
            "echo x >> {}; sleep 30 & echo $! > {}; exit 0",
            count.display(),
            background.display()
        ),
    );
    starts.timeout_ms = 3_000;
    let started = Instant::now();
    let (outcome, reports) = run(&[starts], &order(5), &context(None)).await;
    let took = started.elapsed();
    assert_eq!(outcome, RunbookOutcome::Succeeded, "{reports:?}");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(std::fs::read_to_string(&count).expect("ran").lines().count(), 1);
    assert!(
        took < Duration::from_millis(COMMAND_DRAIN_AFTER_EXIT_MS + 1_500),
        "the step waited for the background process: {took:?}"
    );
    // What it started in the background is left running: a step may start a daemon.
    assert!(!gone(&background), "the background process was killed");
    let pid = std::fs::read_to_string(&background).expect("pid");
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
}

#[tokio::test]
async fn a_timed_out_command_takes_what_it_started_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("late");
    let grandchild = dir.path().join("grandchild.pid");
    let mut hanging = sh(
        "apply",
        format!(
            "(sleep 1; echo late > {}) & echo $! > {}; sleep 60",
            marker.display(),
            grandchild.display()
        ),
    );
    hanging.timeout_ms = 300;
    hanging.retries = 0;
    let (outcome, _) = run(&[hanging], &order(4), &context(None)).await;
    let RunbookOutcome::Failed { error, .. } = outcome else {
        panic!("expected a timeout, got {outcome:?}");
    };
    assert!(error.contains("timed out after 300 ms"), "{error}");
    // Once the process that would write the marker is gone, the marker can never appear.
    wait_for("the timed-out attempt's grandchild to be gone", 5_000, || {
        gone(&grandchild)
    })
    .await;
    assert!(!marker.exists(), "a process of the timed-out attempt acted after it");
}

#[tokio::test]
async fn a_timed_out_command_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("late");
    let grandchild = dir.path().join("grandchild.pid");
    let mut stubborn = sh(
        "apply",
        format!(
            "trap '' TERM; (sleep 5; echo late > {}) & echo $! > {}; sleep 60",
            marker.display(),
            grandchild.display()
        ),
    );
    stubborn.timeout_ms = 300;
    stubborn.retries = 0;
    let (outcome, reports) = run(&[stubborn], &order(4), &context(None)).await;
    assert!(matches!(outcome, RunbookOutcome::Failed { .. }), "{outcome:?}");
    assert!(
        reports[0].duration_ms >= 300 + COMMAND_KILL_GRACE_MS,
        "SIGKILL only after the grace: {reports:?}"
    );
    assert!(gone(&grandchild), "the attempt ended with its group gone");
    assert!(!marker.exists());
}

#[tokio::test]
async fn an_abandoned_command_attempt_stops_its_process_group() {
    // As when a leader's term ends mid-step, or the controller shuts down: the attempt's
    // future is dropped.
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("late");
    let grandchild = dir.path().join("grandchild.pid");
    let mut hanging = sh(
        "apply",
        format!(
            "(sleep 1; echo late > {}) & echo $! > {}; sleep 60",
            marker.display(),
            grandchild.display()
        ),
    );
    hanging.timeout_ms = 30_000;
    let steps = [hanging];
    let context = context(None);
    let order = order(6);
    tokio::select! {
        outcome = run(&steps, &order, &context) => panic!("the step ended: {outcome:?}"),
        () = wait_for("the grandchild to start", 5_000, || grandchild.exists()) => {}
    }
    tokio::task::spawn_blocking(wait_for_stopped_commands)
        .await
        .expect("joined");
    wait_for("the abandoned attempt's grandchild to be gone", 5_000, || {
        gone(&grandchild)
    })
    .await;
    assert!(!marker.exists(), "a process of the abandoned attempt acted after it");
}

#[tokio::test]
async fn a_webhook_409_without_the_generation_protocol_is_a_conflict_not_a_fence() {
    let hook = Fake::start().await;
    hook.set_status(409);
    hook.set_body(r#"{"error":"a deployment is already in progress"}"#);
    let mut webhook = step("notify", StepKind::Webhook);
    webhook.url = Some(format!("{}/notify", hook.url));
    let (outcome, reports) = run(std::slice::from_ref(&webhook), &order(6), &context(None)).await;
    let RunbookOutcome::Failed { error, .. } = outcome else {
        panic!("a plain 409 must not fence: {outcome:?}");
    };
    assert!(error.contains("a deployment is already in progress"), "{error}");
    assert_eq!(hook.seen().len(), 3, "a conflict is retried");
    assert!(reports.iter().all(|r| r.outcome == "error"), "{reports:?}");
    // The deployment is over: the next runbook goes through.
    hook.set_status(200);
    let (outcome, _) = run(&[webhook], &order(7), &context(None)).await;
    assert_eq!(outcome, RunbookOutcome::Succeeded);
}

#[tokio::test]
async fn a_webhook_409_naming_a_newer_generation_fences() {
    let hook = Fake::start().await;
    hook.set_status(409);
    hook.set_body(r#"{"error":"stale_generation","generation":12,"message":"generation 9 is older than 12"}"#);
    let mut webhook = step("notify", StepKind::Webhook);
    webhook.url = Some(format!("{}/notify", hook.url));
    let (outcome, _) = run(std::slice::from_ref(&webhook), &order(9), &context(None)).await;
    match outcome {
        RunbookOutcome::Fenced { step, error } => {
            assert_eq!(step, "notify");
            assert!(error.contains("generation 12"), "{error}");
        }
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(hook.seen().len(), 1, "never retried with the old generation");
    // A "stale" answer naming a generation that is not newer is no fence.
    let (outcome, _) = run(&[webhook], &order(12), &context(None)).await;
    assert!(matches!(outcome, RunbookOutcome::Failed { .. }), "{outcome:?}");
}

#[tokio::test]
async fn client_errors_of_a_webhook_are_refused_without_retrying() {
    let hook = Fake::start().await;
    hook.set_body("no such hook");
    let mut webhook = step("notify", StepKind::Webhook);
    webhook.url = Some(format!("{}/notify", hook.url));
    for status in [400, 401, 403, 404, 410, 422] {
        hook.set_status(status);
        let before = hook.seen().len();
        let (outcome, reports) = run(std::slice::from_ref(&webhook), &order(6), &context(None)).await;
        let RunbookOutcome::Failed { error, .. } = outcome else {
            panic!("{status}: expected a failure, got {outcome:?}");
        };
        assert!(error.starts_with("refused: "), "{status}: {error}");
        assert!(
            error.contains(&format!("HTTP {status}")) && error.contains("no such hook"),
            "{error}"
        );
        assert_eq!(hook.seen().len(), before + 1, "{status} is not retried");
        assert_eq!(reports.last().map(|r| r.outcome), Some("refused"));
    }
    // Too many requests: worth another attempt.
    hook.set_status(429);
    let before = hook.seen().len();
    let (outcome, _) = run(&[webhook], &order(6), &context(None)).await;
    assert!(matches!(outcome, RunbookOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(hook.seen().len(), before + 3);
}
