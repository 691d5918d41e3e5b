//! The runtime layer: runs a scenario against a live deployment.
//!
//! [`run`] prepares (the global table, which region is primary, the record's TTL), starts the
//! workload and the monitors, executes the scenario's fault steps through a
//! [`FaultTarget`] on schedule, stops the workload, waits for the regions to converge, reads
//! every region's copy of the table and hands everything to the pure core for the report.
//! An interrupt (Ctrl-C) heals every fault still in force before returning.

pub mod databases;
pub mod deployment;
pub mod dynamo;
pub mod http;
pub mod members;
pub mod providers;
pub mod recorder;
pub mod resolver;
pub mod target;
pub mod workload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checker::{FinalState, Isolation};
use crate::measure::EventKind;
use crate::report::{self, Report};
use crate::scenario::{Durations, FaultTarget, Ledger, Roles, Scenario, StepPhase};
use deployment::Deployment;
use http::HttpClient;
use recorder::Recorder;

/// Shop clients by default.
pub const CLIENTS_DEFAULT: u32 = 4;
/// Shop clients at most.
pub const CLIENTS_MAX: u32 = 256;
/// How long stopping tasks may take before in-flight operations are abandoned (indeterminate).
pub const DRAIN_TIMEOUT_MS: u64 = 5_000;
/// How long the drill waits after the workload stopped for every region to hold the same data.
pub const CONVERGE_WAIT_MS: u64 = 60_000;
/// Pause between two convergence checks.
pub const CONVERGE_POLL_MS: u64 = 1_000;
/// Window of the success rate the progress bar shows.
pub const PROGRESS_WINDOW_MS: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct DrillOptions {
    pub durations: Durations,
    pub clients: u32,
    /// Show the progress bar (on a terminal).
    pub progress: bool,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            durations: Durations::default(),
            clients: CLIENTS_DEFAULT,
            progress: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("prepare the drill: {0}")]
    Prepare(String),
}

#[derive(Debug)]
pub struct DrillOutcome {
    pub report: Report,
    /// The drill was interrupted; the report covers what ran.
    pub interrupted: bool,
    /// Heal actions that failed after an interrupt: what is still broken.
    pub heal_errors: Vec<String>,
    /// The history and events were cut short (the record limit).
    pub overflowed: bool,
}

/// How long a drill waits for the controller to have chosen an active region (a lab that has
/// just started needs a few probe rounds before its first decision).
pub const ACTIVE_REGION_WAIT_MS: u64 = 30_000;
/// How long a drill waits for a controller that does not answer at all (refused, reset, timed
/// out) before it gives up: long enough for one that is starting to listen, far shorter than
/// the wait for a decision, so a wrong `controller_url` or a stopped controller is said at once.
pub const CONTROLLER_UNREACHABLE_WAIT_MS: u64 = 5_000;
/// Pause between two questions to the controller while waiting.
const ACTIVE_REGION_POLL_MS: u64 = 250;

async fn wait_for_active_region(http: &HttpClient, url: &str) -> Result<String, String> {
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_millis(ACTIVE_REGION_WAIT_MS);
    // Since when every question went unanswered (no HTTP answer at all).
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let now = std::time::Instant::now();
        match workload::active_region(http, url).await {
            Ok((region, _)) => return Ok(region),
            Err(workload::AskError::Unreachable(error))
                if now.duration_since(*unreachable_since.get_or_insert(now))
                    >= std::time::Duration::from_millis(CONTROLLER_UNREACHABLE_WAIT_MS) =>
            {
                return Err(format!(
                    "ask the controller which region is active: it did not answer for \
                     {CONTROLLER_UNREACHABLE_WAIT_MS} ms ({error}); is the controller running, and is \
                     `controller_url` its listen address? See `switchyard status --controller {url}`"
                ));
            }
            Err(error) if now >= deadline => {
                return Err(format!(
                    "ask the controller which region is active: no answer with a region within \
                     {ACTIVE_REGION_WAIT_MS} ms (last: {error}); see `switchyard status --controller {url}`"
                ));
            }
            Err(workload::AskError::Answered(_)) => {
                unreachable_since = None;
                tokio::time::sleep(std::time::Duration::from_millis(ACTIVE_REGION_POLL_MS)).await;
            }
            Err(workload::AskError::Unreachable(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(ACTIVE_REGION_POLL_MS)).await;
            }
        }
    }
}

/// Which region is active: the controller's pointer when there is one, else the region whose
/// address the DNS answers.
pub async fn discover_roles(http: &HttpClient, deployment: &Deployment) -> Result<(Roles, u32), String> {
    // The drill measures the failover in these answers: a DNS server that does not answer
    // before the fault makes every figure meaningless (an RTO of "never", no requests), so the
    // drill does not start.
    let answer = resolver::query(deployment.dns_server, &deployment.shop_name)
        .await
        .map_err(|e| {
            format!(
                "resolve {} at {}: {e}; the drill measures the failover in these answers, so it does not start until that DNS server answers (`switchyard status --lab DIR` names what is down)",
                deployment.shop_name, deployment.dns_server
            )
        })?;
    let ttl_s = answer.ttl_s;
    let active = match &deployment.controller_url {
        Some(url) => wait_for_active_region(http, url).await?,
        None => {
            let address = answer.addresses.first().ok_or_else(|| {
                format!(
                    "{} has no A record at {}: is the failover record served?",
                    deployment.shop_name, deployment.dns_server
                )
            })?;
            deployment
                .region_of_address(*address)
                .ok_or_else(|| format!("the DNS answers {address}, which no region's shop_addresses lists"))?
                .name
                .clone()
        }
    };
    Ok((deployment.roles(&active)?, ttl_s))
}

fn run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{millis:x}")
}

fn progress_bar(options: &DrillOptions, scenario: &Scenario) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(options.durations.total_ms() / 1000);
    let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} s  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("drill {}", scenario.name));
    bar
}

/// Runs `scenario` against `deployment`, injecting faults through `target`, until done or
/// until `interrupt` resolves.
pub async fn run<T: FaultTarget>(
    scenario: &Scenario,
    deployment: &Deployment,
    target: &T,
    options: &DrillOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<DrillOutcome, DrillError> {
    let http = HttpClient::new();
    let stores: Vec<(String, String)> = deployment
        .regions
        .iter()
        .map(|r| (r.name.clone(), r.store_url.clone()))
        .collect();
    dynamo::ensure_global_table(&http, &stores, &deployment.table)
        .await
        .map_err(DrillError::Prepare)?;
    let (mut roles, ttl_s) = discover_roles(&http, deployment).await.map_err(DrillError::Prepare)?;
    tracing::info!(primary = %roles.primary, secondary = %roles.secondary, ttl_s, "drill starting");

    let recorder = Arc::new(Recorder::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(workload::Context {
        deployment: deployment.clone(),
        recorder: Arc::clone(&recorder),
        http: http.clone(),
        key_prefix: format!("drill-{}-", run_id()),
        stop: stop_rx,
        acked: std::sync::Mutex::new(databases::AckedWrites::default()),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(workload::dns_watcher(Arc::clone(&ctx)));
    tasks.spawn(workload::lag_sampler(Arc::clone(&ctx)));
    // With several controllers, every member's pointer (the highest generation wins: a dead
    // or cut-off member answers nothing or an older one) and which member acts.
    let mut controller_urls: Vec<String> = deployment.controller_url.iter().cloned().collect();
    for member in &deployment.controllers {
        if !controller_urls.contains(&member.url) {
            controller_urls.push(member.url.clone());
        }
    }
    if !controller_urls.is_empty() {
        tasks.spawn(workload::controller_watcher(Arc::clone(&ctx), controller_urls));
    }
    if !deployment.controllers.is_empty() {
        tasks.spawn(members::leader_watcher(Arc::clone(&ctx)));
    }
    let start_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for provider in &deployment.providers {
        tasks.spawn(providers::watch(Arc::clone(&ctx), provider.clone()));
    }
    for (index, (region, url)) in stores.iter().enumerate() {
        tasks.spawn(workload::writer(
            Arc::clone(&ctx),
            index as u32,
            region.clone(),
            url.clone(),
            deployment.table.clone(),
        ));
    }
    // Spread the clients' first lookups over one TTL (within the warm-up), so their caches
    // expire at different moments, as a real population of clients' do.
    let clients = options.clients.clamp(1, CLIENTS_MAX);
    let spread_ms = (u64::from(ttl_s) * 1000).min(options.durations.warmup_ms);
    for index in 0..clients {
        let delay_ms = spread_ms * u64::from(index) / u64::from(clients);
        tasks.spawn(workload::shop_client(Arc::clone(&ctx), index, delay_ms));
    }

    let bar = progress_bar(options, scenario);
    let plan = scenario.plan(&options.durations);
    let mut ledger = Ledger::default();
    let start = tokio::time::Instant::now();
    let mut interrupted = false;
    let mut interrupted_at_ms = None;
    let mut fault_started = false;
    let mut heal_started = false;
    let mut isolation_from = None;
    let mut isolation_to = None;
    let mut leader_hit = false;
    let mut interrupt = std::pin::pin!(interrupt);
    let schedule = async {
        for step in &plan {
            let due = start + Duration::from_millis(step.at_ms);
            while tokio::time::Instant::now() < due {
                tick(&bar, &recorder, start, &options.durations);
                tokio::time::sleep_until(due.min(tokio::time::Instant::now() + Duration::from_millis(500))).await;
            }
            if step.phase == StepPhase::Fault && !fault_started {
                fault_started = true;
                // The active region may have moved during the warm-up (a failover the drill
                // did not cause): the fault is for the primary as it is now.
                if let Some((active, generation)) = recorder.last_active_region()
                    && active != roles.primary
                    && let Ok(now) = deployment.roles(&active)
                {
                    let moved = format!(
                        "the active region moved to {active} (generation {generation}) during the warm-up: the fault hits {active}, not {}",
                        roles.primary
                    );
                    tracing::warn!("{moved}");
                    bar.println(moved);
                    roles = now;
                }
                recorder.event(EventKind::FaultStart);
                isolation_from = Some(recorder.now_ms());
            }
            if step.phase == StepPhase::Heal && !heal_started {
                heal_started = true;
                recorder.event(EventKind::Heal);
                isolation_to = Some(recorder.now_ms());
            }
            // Into the ledger first: an interrupt can cancel the action half-way (a region
            // half killed), and the heal must still undo it.
            ledger.applied(&step.action);
            let hits_leader = step.action.hits_leader() && !leader_hit;
            if hits_leader && let Some(member) = target.leader() {
                leader_hit = true;
                recorder.event(EventKind::LeaderFault { member });
            }
            let result = target.apply(&roles, &step.action).await;
            if hits_leader
                && !leader_hit
                && let Some(member) = target.leader()
            {
                // Found by this very step: recorded just after it.
                leader_hit = true;
                recorder.event(EventKind::LeaderFault { member });
            }
            let label = step.action.label();
            if let Err(error) = &result {
                tracing::warn!(%error, "fault step failed");
                bar.println(format!("fault step failed: {error}"));
            }
            recorder.event(EventKind::Step {
                label,
                ok: result.is_ok(),
            });
        }
        if !heal_started {
            // Plans without heal steps (flapping ends healed) still mark the heal.
            recorder.event(EventKind::Heal);
            isolation_to = Some(recorder.now_ms());
        }
        let end = start + Duration::from_millis(options.durations.total_ms());
        while tokio::time::Instant::now() < end {
            tick(&bar, &recorder, start, &options.durations);
            tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_millis(500))).await;
        }
    };
    tokio::select! {
        _ = schedule => {}
        _ = &mut interrupt => {
            interrupted = true;
            interrupted_at_ms = Some(start.elapsed().as_millis() as u64);
        }
    }
    let mut heal_errors = Vec::new();
    if interrupted {
        bar.println("interrupted: healing the faults this drill injected");
        recorder.event(EventKind::Note {
            text: "interrupted".into(),
        });
        for action in ledger.heal_plan() {
            let result = target.apply(&roles, &action).await;
            if let Err(error) = &result {
                heal_errors.push(error.to_string());
            }
            recorder.event(EventKind::Step {
                label: action.label(),
                ok: result.is_ok(),
            });
        }
    }
    bar.set_message("stopping the workload");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    bar.set_message("waiting for the regions to converge");
    let wait_ms = if interrupted { 0 } else { CONVERGE_WAIT_MS };
    let final_state = converge(&http, deployment, &ctx.key_prefix, wait_ms, &recorder).await;
    bar.finish_and_clear();

    let (history, events, overflowed) = recorder.snapshot();
    let isolation = scenario.expectations.primary_isolated.then(|| Isolation {
        region: roles.primary.clone(),
        from_ms: isolation_from.unwrap_or(0),
        to_ms: isolation_to.unwrap_or(u64::MAX),
    });
    let ha = scenario.expectations.ha.map(|_| {
        crate::ha::check(
            &events,
            target.leader().as_deref(),
            &members::audit_logs(deployment),
            start_wall_ms,
        )
    });
    let acked = std::mem::take(&mut *ctx.acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let database_report = if deployment.databases.is_empty() {
        None
    } else {
        databases::report(
            &http,
            deployment,
            scenario.expectations.database,
            &roles.primary,
            start_wall_ms + options.durations.warmup_ms,
            &ctx.key_prefix,
            &acked,
        )
        .await
    };
    let mut report = report::build(report::Inputs {
        scenario,
        durations: options.durations,
        ttl_s,
        regions: vec![roles.primary.clone(), roles.secondary.clone()],
        history: &history,
        events: &events,
        final_state: &final_state,
        isolation,
        ha,
    });
    if let Some(databases) = database_report {
        report.expectations.extend(crate::databases::evaluate(&databases));
        report.passed = report.expectations.iter().all(|e| e.passed);
        report.databases = Some(databases);
    }
    report.interrupted_at_ms = interrupted_at_ms;
    Ok(DrillOutcome {
        report,
        interrupted,
        heal_errors,
        overflowed,
    })
}

fn tick(bar: &ProgressBar, recorder: &Recorder, start: tokio::time::Instant, durations: &crate::scenario::Durations) {
    let elapsed = start.elapsed();
    bar.set_position(elapsed.as_secs());
    let phase = durations.phase_at(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    let (ok, total) = recorder.recent_success(PROGRESS_WINDOW_MS);
    if total > 0 {
        bar.set_message(format!(
            "{phase}: {:.1}% of {total} requests ok (last {} s)",
            ok as f64 * 100.0 / total as f64,
            PROGRESS_WINDOW_MS / 1000
        ));
    } else {
        bar.set_message(format!(
            "{phase}: no requests completed (last {} s)",
            PROGRESS_WINDOW_MS / 1000
        ));
    }
}

/// Reads every region's copy of this run's keys until they agree or `wait_ms` passed; regions
/// that cannot be read are left out (and noted).
pub async fn converge(
    http: &HttpClient,
    deployment: &Deployment,
    prefix: &str,
    wait_ms: u64,
    recorder: &Recorder,
) -> FinalState {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let mut state = FinalState::default();
        let mut unreadable = Vec::new();
        for region in &deployment.regions {
            match dynamo::scan(http, &region.store_url, &deployment.table, prefix).await {
                Ok(items) => {
                    state.regions.insert(region.name.clone(), items);
                }
                Err(error) => unreadable.push(format!("{}: {error}", region.name)),
            }
        }
        let agree = {
            let mut tables = state.regions.values();
            let first = tables.next();
            tables.all(|t| Some(t) == first)
        };
        if (unreadable.is_empty() && agree) || tokio::time::Instant::now() >= deadline {
            for problem in unreadable {
                recorder.event(EventKind::Note {
                    text: format!("could not read the table after the drill: {problem}"),
                });
            }
            return state;
        }
        tokio::time::sleep(Duration::from_millis(CONVERGE_POLL_MS)).await;
    }
}
