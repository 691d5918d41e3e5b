//! The IO side of `lock run`: read the pointer, take the lease with a conditional write, pause
//! for replication (`settle`), confirm both again, run the command under the guard, renew the
//! lease (and re-read the pointer) while it runs, and release it at exit. Every decision is made
//! by [`crate::lease`]; messages on stderr start with `switchyard lock:` and say why a run was
//! skipped or stopped.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::members::ControllerUrls;
use controller::client::HttpClient;
use controller::pointer::PointerValue;
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

use crate::lease::{self, Acquire, Holding, Next, Renewal, StopReason, Timing};
use crate::store::{LeaseTable, WriteError};
use crate::{
    EXIT_CANNOT_START, EXIT_LEASE_HELD, EXIT_NOT_ACTIVE, EXIT_POINTER_UNKNOWN, EXIT_STOPPED, EXIT_STORE_UNAVAILABLE,
};

/// How long one read of the pointer may take.
pub const POINTER_TIMEOUT_MS: u64 = 5_000;

/// The clock the lease rules read: wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Everything `lock run` needs.
pub struct Options {
    pub name: String,
    /// This host's region.
    pub region: String,
    /// Every member of the group of controllers (or the one controller).
    pub controllers: ControllerUrls,
    pub token: Option<String>,
    pub table: LeaseTable,
    pub timing: Timing,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// This binary, which starts the command through `lock exec-guard`.
    pub guard_program: PathBuf,
    /// Who holds the lease: host, pid and a nonce.
    pub holder: String,
}

/// A holder name unique to this run: `HOST:PID:NONCE`.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}:{}:{nonce:08x}", std::process::id())
}

fn say(message: impl std::fmt::Display) {
    eprintln!("switchyard lock: {message}");
}

/// Reads `GET /v1/active-region` from every member at once: the newest answer not marked
/// stale ([`controller::pointer::read_newest`]).
pub async fn read_pointer(
    client: &HttpClient,
    controllers: &ControllerUrls,
    token: Option<&str>,
) -> Result<PointerValue, String> {
    controller::pointer::read_newest(client, controllers, token, POINTER_TIMEOUT_MS)
        .await
        .map_err(|error| error.to_string())
}

/// What the pointer says about this host's region.
enum PointerSays {
    Us(u64),
    Other(String, u64),
    Unknown(String),
}

async fn ask_pointer(client: &HttpClient, options: &Options) -> PointerSays {
    match read_pointer(client, &options.controllers, options.token.as_deref()).await {
        Ok(PointerValue {
            region: Some(region),
            generation,
        }) if region == options.region => PointerSays::Us(generation),
        Ok(PointerValue {
            region: Some(region),
            generation,
        }) => PointerSays::Other(region, generation),
        Ok(PointerValue { region: None, .. }) => PointerSays::Unknown(format!(
            "the controller at {} names no active region yet",
            options.controllers
        )),
        Err(error) => PointerSays::Unknown(format!("cannot read the active-region pointer: {error}")),
    }
}

/// The exit status of a finished command: its code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_STOPPED)
}

/// Runs the whole `lock run`; returns the process's exit status.
pub async fn run(options: Options, clock: &dyn Clock) -> i32 {
    let client = HttpClient::new();
    let name = options.name.as_str();

    let generation = match ask_pointer(&client, &options).await {
        PointerSays::Us(generation) => generation,
        PointerSays::Other(active, generation) => {
            say(format_args!(
                "skipped '{name}': this host's region {} is not the active region ({active}, generation {generation})",
                options.region
            ));
            return EXIT_NOT_ACTIVE;
        }
        PointerSays::Unknown(why) => {
            say(format_args!("skipped '{name}': {why}"));
            return EXIT_POINTER_UNKNOWN;
        }
    };

    match options.table.replicas().await {
        Ok(replicas) if replicas.is_empty() => say(format_args!(
            "warning: table {} in {} has no replica in another region, so leases do not reach the other regions; \
             make it global (UpdateTable with ReplicaUpdates Create RegionName=...)",
            options.table.table,
            options.table.client.endpoint()
        )),
        Ok(_) => {}
        Err(error) if error.kind() == Some("ResourceNotFoundException") => {
            say(format_args!(
                "skipped '{name}': the lease table {} does not exist in {}: create it with a string key '{}' and \
                 replicas in every region (see the README, \"One region runs the cron\")",
                options.table.table,
                options.table.client.endpoint(),
                crate::store::KEY_ATTRIBUTE
            ));
            return EXIT_STORE_UNAVAILABLE;
        }
        Err(error) => {
            say(format_args!("skipped '{name}': cannot use the local store: {error}"));
            return EXIT_STORE_UNAVAILABLE;
        }
    }

    let existing = match options.table.read(name).await {
        Ok(existing) => existing,
        Err(error) => {
            say(format_args!("skipped '{name}': cannot read the lease: {error}"));
            return EXIT_STORE_UNAVAILABLE;
        }
    };
    let now = clock.now_ms();
    let (record, expect) = match lease::plan_acquire(
        now,
        existing.as_ref(),
        &options.holder,
        &options.region,
        generation,
        &options.timing,
    ) {
        Acquire::Take { record, expect } => (record, expect),
        Acquire::Held {
            holder,
            region,
            token,
            remaining_ms,
        } => {
            say(format_args!(
                "skipped '{name}': the lease is held by {holder} in {region} (token {token}) for up to {remaining_ms} ms more"
            ));
            return EXIT_LEASE_HELD;
        }
    };
    match options.table.take(name, &record, &expect, now).await {
        Ok(()) => {}
        Err(WriteError::Conflict) => {
            say(format_args!("skipped '{name}': another holder took the lease first"));
            return EXIT_LEASE_HELD;
        }
        Err(WriteError::Store(error)) => {
            say(format_args!("skipped '{name}': cannot write the lease: {error}"));
            return EXIT_STORE_UNAVAILABLE;
        }
    }
    let token = record.token;
    let mut holding = Holding::new(token, options.timing, now);

    // Wait (longer on a hand-off between regions, see `lease::settle_ms`), then confirm: the
    // pointer must still name this region and a conditional renewal must find this run's record.
    let wait_ms = lease::settle_ms(&options.timing, existing.as_ref(), generation);
    if wait_ms > options.timing.settle_ms {
        say(format_args!(
            "'{name}': the lease was last held under an older pointer generation (or never here); waiting {wait_ms} ms \
             for a holder in the previous region to stop"
        ));
    }
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    let started = clock.now_ms();
    match renew(&client, &options, &holding, clock).await {
        Renewal::Confirmed => {
            holding.on_renewal(started, clock.now_ms(), Renewal::Confirmed);
        }
        Renewal::PointerMoved { region, generation } => {
            release(&options, token).await;
            say(format_args!(
                "skipped '{name}': the active region moved to {region} (generation {generation}) while taking the lease"
            ));
            return EXIT_NOT_ACTIVE;
        }
        Renewal::Lost { detail } => {
            say(format_args!("skipped '{name}': {detail}"));
            return EXIT_LEASE_HELD;
        }
        Renewal::Failed { error } => {
            release(&options, token).await;
            say(format_args!("skipped '{name}': cannot confirm the lease: {error}"));
            return EXIT_STORE_UNAVAILABLE;
        }
    }

    hold_while_running(options, clock, &client, holding, generation).await
}

async fn hold_while_running(
    options: Options,
    clock: &dyn Clock,
    client: &HttpClient,
    mut holding: Holding,
    generation: u64,
) -> i32 {
    let name = options.name.as_str();
    let token = holding.token;
    let (mut terminate, mut interrupt, mut hangup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            release(&options, token).await;
            say(format_args!("skipped '{name}': cannot install signal handlers"));
            return EXIT_STOPPED;
        }
    };
    let mut child = match tokio::process::Command::new(&options.guard_program)
        .arg("lock")
        .arg(crate::guard::SUBCOMMAND)
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(&options.command)
        .env("SWITCHYARD_LOCK_TOKEN", token.to_string())
        .env("SWITCHYARD_LOCK_NAME", name)
        .env("SWITCHYARD_ACTIVE_REGION", &options.region)
        .env("SWITCHYARD_GENERATION", generation.to_string())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            release(&options, token).await;
            say(format_args!("cannot start '{}': {error}", options.command.join(" ")));
            return EXIT_CANNOT_START;
        }
    };
    let group = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw);
    tracing::debug!(name, token, holder = %options.holder, "lease taken; command started");

    let mut next_renewal = holding.next_renewal_ms();
    loop {
        let wait = Duration::from_millis(next_renewal.saturating_sub(clock.now_ms()));
        tokio::select! {
            status = child.wait() => {
                if holding.may_write(clock.now_ms()) {
                    release(&options, token).await;
                }
                return match status {
                    Ok(status) => exit_code(status),
                    Err(error) => {
                        say(format_args!("lost track of the command: {error}"));
                        EXIT_STOPPED
                    }
                };
            }
            _ = tokio::time::sleep(wait) => {
                let started = clock.now_ms();
                // Frozen past the deadline (a stopped process, a paused VM): stop without
                // writing anything.
                if let Some(reason) = holding.check(started) {
                    return stop_for(&options, &mut child, group, &holding, clock, reason).await;
                }
                let budget = holding.stop_deadline_ms().saturating_sub(started).max(1);
                let result = match tokio::time::timeout(Duration::from_millis(budget), renew(client, &options, &holding, clock)).await {
                    Ok(result) => result,
                    Err(_) => Renewal::Failed { error: format!("no answer within {budget} ms") },
                };
                if let Renewal::Failed { error } = &result {
                    tracing::warn!(name, %error, "cannot confirm the lease; retrying");
                }
                match holding.on_renewal(started, clock.now_ms(), result) {
                    Next::RenewAt(at) => next_renewal = at,
                    Next::Stop(reason) => return stop_for(&options, &mut child, group, &holding, clock, reason).await,
                }
            }
            _ = terminate.recv() => return finish_on_signal(&options, &mut child, group, &holding, clock, "SIGTERM").await,
            _ = interrupt.recv() => return finish_on_signal(&options, &mut child, group, &holding, clock, "SIGINT").await,
            _ = hangup.recv() => return finish_on_signal(&options, &mut child, group, &holding, clock, "SIGHUP").await,
        }
    }
}

/// Stops the command for `reason`; releases the lease if it is still this run's to write.
async fn stop_for(
    options: &Options,
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    holding: &Holding,
    clock: &dyn Clock,
    reason: StopReason,
) -> i32 {
    let name = options.name.as_str();
    // Past the expiry of the lease it last wrote (frozen: SIGSTOP, a stalled host), another
    // holder may be running the job already: no grace, the command is killed at once.
    let grace_ms = if holding.may_write(clock.now_ms()) {
        options.timing.kill_grace_ms
    } else {
        say(format_args!(
            "'{name}': this run's lease has expired (it could not act meanwhile); killing the command at once"
        ));
        0
    };
    say(format_args!("stopping '{name}': {reason}"));
    let status = stop(child, group, grace_ms).await;
    if !matches!(reason, StopReason::LeaseLost { .. }) && holding.may_write(clock.now_ms()) {
        release(options, holding.token).await;
    }
    say(format_args!("stopped '{name}' ({})", describe(status)));
    EXIT_STOPPED
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => format!("the command ended with {status}"),
        None => "the command's end could not be observed".to_string(),
    }
}

async fn finish_on_signal(
    options: &Options,
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    holding: &Holding,
    clock: &dyn Clock,
    signal: &str,
) -> i32 {
    say(format_args!(
        "{signal}: stopping '{}' and releasing the lease",
        options.name
    ));
    let status = stop(child, group, options.timing.kill_grace_ms).await;
    if holding.may_write(clock.now_ms()) {
        release(options, holding.token).await;
    }
    status.map_or(EXIT_STOPPED, exit_code)
}

/// SIGTERM to the command's process group, SIGKILL after the grace (at once without one);
/// waits for it.
async fn stop(child: &mut tokio::process::Child, group: Option<Pid>, grace_ms: u64) -> Option<ExitStatus> {
    if let Some(group) = group
        && grace_ms > 0
    {
        let _ = rustix::process::kill_process_group(group, Signal::TERM);
    }
    if grace_ms > 0
        && let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(grace_ms), child.wait()).await
    {
        if let Some(group) = group {
            // Whatever the command left behind in its group goes too.
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        return Some(status);
    }
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// One renewal round: the pointer must still name our region, then the conditional write of
/// the new expiry.
async fn renew(client: &HttpClient, options: &Options, holding: &Holding, clock: &dyn Clock) -> Renewal {
    match ask_pointer(client, options).await {
        PointerSays::Us(_) => {}
        PointerSays::Other(region, generation) => return Renewal::PointerMoved { region, generation },
        PointerSays::Unknown(error) => return Renewal::Failed { error },
    }
    let expiry = holding.renewed_expiry_ms(clock.now_ms());
    match options
        .table
        .set_expiry(&options.name, &options.holder, holding.token, expiry)
        .await
    {
        Ok(()) => Renewal::Confirmed,
        Err(WriteError::Conflict) => Renewal::Lost {
            detail: match options.table.read(&options.name).await {
                Ok(Some(current)) => format!(
                    "the store names {} in {} (token {}) instead of this run (token {})",
                    current.holder, current.region, current.token, holding.token
                ),
                _ => format!("the store no longer holds this run's token {}", holding.token),
            },
        },
        Err(WriteError::Store(error)) => Renewal::Failed {
            error: error.to_string(),
        },
    }
}

/// Releases our lease (expiry 0) if it is still ours; a failure leaves it to expire.
async fn release(options: &Options, token: u64) {
    match options.table.set_expiry(&options.name, &options.holder, token, 0).await {
        Ok(()) | Err(WriteError::Conflict) => {}
        Err(WriteError::Store(error)) => say(format_args!(
            "could not release the lease '{}' ({error}); it expires by itself within {} s",
            options.name,
            options.timing.ttl_ms / 1000
        )),
    }
}
