//! The IO side of `lock run`: read the pointer, take the lease with a conditional write, pause
//! for replication (`settle`), confirm both again, run the command under the guard, renew the
//! lease (and re-read the pointer) while it runs — and after it exits, as long as anything it
//! started still runs — and release it once all of that is gone. Every
//! decision is made by [`crate::lease`]; messages on stderr start with `switchyard lock:` and
//! say why a run was skipped or stopped: `switchyard lock: skipped '…'` only for the normal
//! skips (100, 101: another region or another holder has the job), `switchyard lock: cannot
//! run '…'` when something is wrong (102, 103). stdout is the command's alone.
//!
//! `lock run` is a child subreaper, and its stops reach every process the command started,
//! wherever its process group or session ([`crate::procs`]: a walk of its descendants): while
//! the guard lives they are the guard's descendants; if the guard dies, they are reparented
//! here. So `lock run` starts no other process, and the processes it inherited (children of a
//! program that forked before it `exec`ed `lock run`, and theirs) are noted, pid and start
//! time, before the guard starts and never signalled nor waited for — but a process one of them
//! starts later and then orphans would be taken for the command's.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::members::ControllerUrls;
use controller::client::HttpClient;
use controller::pointer::PointerValue;
use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

use crate::lease::{self, Acquire, Holding, Next, Renewal, StopReason, Timing};
use crate::store::{LeaseTable, WriteError};
use crate::{
    EXIT_CANNOT_START, EXIT_LEASE_HELD, EXIT_MAX_RUN, EXIT_NOT_ACTIVE, EXIT_POINTER_UNKNOWN, EXIT_STOPPED,
    EXIT_STORE_UNAVAILABLE,
};

/// How long the first read of the pointer (before taking the lease) may take. Reads while
/// holding it take at most [`lease::POINTER_READ_MS_MAX`].
pub const POINTER_TIMEOUT_MS: u64 = 5_000;
/// Of [`lease::POINTER_READ_MS_MAX`], what one member's answer may take; the rest is slack so
/// that the answers of the members that did answer are used.
const POINTER_MEMBER_TIMEOUT_MS: u64 = lease::POINTER_READ_MS_MAX * 4 / 5;
/// How often `lock run` looks whether anything of the command still runs (its process group,
/// its descendants) once its direct child (the guard) has ended.
pub const GROUP_POLL_MS: u64 = 200;
/// How long `lock run` goes on killing the command's processes after the first SIGKILL; any still
/// there then (stuck in the kernel) are reported and the lease is left to expire.
pub const KILLED_GROUP_WAIT_MS: u64 = 10_000;

/// The clocks the lease rules read.
pub trait Clock: Send + Sync {
    /// Wall-clock milliseconds since the Unix epoch: what goes into the store and what another
    /// host's record is compared with.
    fn now_ms(&self) -> u64;
    /// Monotonic milliseconds from any fixed start: how this holder judges its own lease.
    fn monotonic_ms(&self) -> u64;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ms(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
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
    /// `--max-run-s` in milliseconds: the command (and what it started) is stopped after this.
    pub max_run_ms: Option<u64>,
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

/// Whether a run that did not start the command exits with a normal skip: another region is
/// active (100) or another holder has the lease (101).
pub fn is_benign_skip(code: i32) -> bool {
    matches!(code, EXIT_NOT_ACTIVE | EXIT_LEASE_HELD)
}

/// The line for a run that did not start the command and exits with `code`: `skipped '…'` for
/// the normal skips only (what a crontab filters out), `cannot run '…'` for the failures.
pub fn not_run_line(code: i32, name: &str, why: impl std::fmt::Display) -> String {
    if is_benign_skip(code) {
        format!("switchyard lock: skipped '{name}': {why}")
    } else {
        format!("switchyard lock: cannot run '{name}': {why}")
    }
}

/// Says why the command was not started; returns `code`.
fn not_run(code: i32, name: &str, why: impl std::fmt::Display) -> i32 {
    eprintln!("{}", not_run_line(code, name, why));
    code
}

/// What the pointer says about this host's region.
enum PointerSays {
    Us(u64),
    Other(String, u64),
    Unknown(String),
}

/// Reads the pointer, within `timeout_ms` in all (answers of the members that answered in time
/// count).
async fn ask_pointer(client: &HttpClient, options: &Options, timeout_ms: u64) -> PointerSays {
    let member_timeout_ms = if timeout_ms >= POINTER_TIMEOUT_MS {
        POINTER_TIMEOUT_MS
    } else {
        POINTER_MEMBER_TIMEOUT_MS.min(timeout_ms)
    };
    let read = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        controller::pointer::read_newest(
            client,
            &options.controllers,
            options.token.as_deref(),
            member_timeout_ms,
        ),
    )
    .await;
    let read = match read {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no controller member answered within {timeout_ms} ms")),
    };
    match read {
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

    let generation = match ask_pointer(&client, &options, POINTER_TIMEOUT_MS).await {
        PointerSays::Us(generation) => generation,
        PointerSays::Other(active, generation) => {
            // A region the lease table does not have is a wrong line (a typo in
            // SWITCHYARD_REGION), not a standby: said as such, or the job never runs anywhere
            // and nothing says why.
            if let Ok(regions) = options.table.regions().await
                && !regions.is_empty()
                && !regions.contains(&options.region)
            {
                return not_run(
                    crate::EXIT_BAD_ARGUMENTS,
                    name,
                    format_args!(
                        "--region {} is not one of the lease table's regions ({}): give this host's region as the controller names it",
                        options.region,
                        regions.join(", ")
                    ),
                );
            }
            return not_run(
                EXIT_NOT_ACTIVE,
                name,
                format_args!(
                    "this host's region {} is not the active region ({active}, generation {generation})",
                    options.region
                ),
            );
        }
        PointerSays::Unknown(why) => return not_run(EXIT_POINTER_UNKNOWN, name, why),
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
            return not_run(
                EXIT_STORE_UNAVAILABLE,
                name,
                format_args!(
                    "the lease table {} does not exist in {}: create it with a string key '{}' and replicas in every \
                     region (see the README, \"One region runs the cron\")",
                    options.table.table,
                    options.table.client.endpoint(),
                    crate::store::KEY_ATTRIBUTE
                ),
            );
        }
        Err(error) => {
            return not_run(
                EXIT_STORE_UNAVAILABLE,
                name,
                format_args!("cannot use the local store: {error}"),
            );
        }
    }

    let existing = match options.table.read(name).await {
        Ok(existing) => existing,
        Err(error) => {
            return not_run(
                EXIT_STORE_UNAVAILABLE,
                name,
                format_args!("cannot read the lease: {error}"),
            );
        }
    };
    let now = clock.now_ms();
    // The lease this run writes lives `ttl` from (at the earliest) this moment, on this host's
    // monotonic clock.
    let written_at = clock.monotonic_ms();
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
            return not_run(
                EXIT_LEASE_HELD,
                name,
                format_args!(
                    "the lease is held by {holder} in {region} (token {token}) for up to {remaining_ms} ms more"
                ),
            );
        }
    };
    // From here on a stop signal must not kill this process outright: the lease it is about
    // to write would then keep the job from running anywhere until it expires (`--ttl-s`).
    let Some(mut signals) = StopSignals::install() else {
        return not_run(EXIT_STOPPED, name, "cannot install signal handlers");
    };
    match options.table.take(name, &record, &expect, now).await {
        Ok(()) => {}
        Err(WriteError::Conflict) => return not_run(EXIT_LEASE_HELD, name, "another holder took the lease first"),
        Err(WriteError::Store(error)) => {
            return not_run(
                EXIT_STORE_UNAVAILABLE,
                name,
                format_args!("cannot write the lease: {error}"),
            );
        }
    }
    let token = record.token;
    let mut holding = Holding::new(token, options.timing, written_at);

    // Wait (longer on a hand-off between regions, see `lease::settle_ms`), then confirm: the
    // pointer must still name this region and a conditional renewal must find this run's record.
    let wait_ms = lease::settle_ms(&options.timing, existing.as_ref(), generation);
    // Said once, on stderr (stdout is the command's): a hand-off's wait is long (32 s with the
    // defaults) and would otherwise look like a hang.
    if let Some(handoff) = lease::handoff(existing.as_ref(), generation) {
        say(lease::handoff_notice(
            name,
            &options.timing,
            handoff,
            generation,
            wait_ms,
        ));
    }
    // A stop signal during the wait or the confirmation (before the command starts) releases
    // the lease at once, and the command does not run. The confirmation itself is not cut
    // short: its conditional write could then land after the release and hold the lease again.
    let stopped = tokio::select! {
        biased;
        stop = signals.recv() => Some(stop),
        _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => None,
    };
    let started = clock.monotonic_ms();
    let confirmed = match stopped {
        Some(stop) => Err(stop),
        None => {
            let renewal = renew(&client, &options, &holding, clock).await;
            // One that came during the confirmation (tokio keeps it until asked).
            tokio::select! {
                biased;
                stop = signals.recv() => Err(stop),
                _ = std::future::ready(()) => Ok(renewal),
            }
        }
    };
    let confirmed = match confirmed {
        Ok(renewal) => renewal,
        Err(stop) => {
            release(&options, token).await;
            return not_run(
                128 + stop.number(),
                name,
                format_args!(
                    "{} before the command started: lease released, the command did not run",
                    stop.name()
                ),
            );
        }
    };
    match confirmed {
        Renewal::Confirmed => {
            holding.on_renewal(started, clock.monotonic_ms(), Renewal::Confirmed);
        }
        Renewal::PointerMoved { region, generation } => {
            release(&options, token).await;
            return not_run(
                EXIT_NOT_ACTIVE,
                name,
                format_args!("the active region moved to {region} (generation {generation}) while taking the lease"),
            );
        }
        Renewal::Lost { detail } => return not_run(EXIT_LEASE_HELD, name, detail),
        Renewal::Failed { error } => {
            release(&options, token).await;
            return not_run(
                EXIT_STORE_UNAVAILABLE,
                name,
                format_args!("cannot confirm the lease: {error}"),
            );
        }
    }

    hold_while_running(options, clock, &client, holding, generation, signals).await
}

/// Whether the process group `group` still has a member (`kill(-group, 0)`: anything but
/// "no such process" means yes).
pub fn group_alive(group: Pid) -> bool {
    !matches!(
        rustix::process::test_kill_process_group(group),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Whether this process has a child, running or ended and not yet reaped (`waitid` with
/// `WNOWAIT`: nothing is reaped). A subreaper without children has no descendants at all: a
/// running descendant's chain of parents always leads to one of its children. What is left
/// when `/proc` cannot be read.
fn has_children() -> bool {
    use rustix::process::{WaitId, WaitIdOptions};
    loop {
        match rustix::process::waitid(
            WaitId::All,
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::CHILD) => return false,
            Err(rustix::io::Errno::INTR) => {}
            // A child, or an error that says nothing: count it as one (the caller polls again).
            _ => return true,
        }
    }
}

/// Reaps every child of this process that has ended. Only once the guard has been waited for
/// (by tokio, through its own pid): every child after that is an orphan of the job (or one
/// inherited, whose status nobody here waits for either).
fn reap_orphans() {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// The started command: the guard (the direct child, which passes on the command's status), its
/// process group, and every process the command started wherever its group — all descendants
/// of this `lock run`, a child subreaper, so that what the guard leaves when it dies comes here.
struct Job {
    child: tokio::process::Child,
    group: Option<Pid>,
    /// Descendants this process had before it started the guard (children inherited across the
    /// `exec` that started `lock run`, and theirs): not the command's, never signalled.
    inherited: Vec<crate::procs::Process>,
    /// The direct child has ended.
    ended: bool,
    /// Its status (the command's own, passed on by the guard).
    status: Option<ExitStatus>,
    /// `/proc` could not be read (said once): only the process group is signalled.
    blind: bool,
}

impl Job {
    fn group_alive(&self) -> bool {
        self.group.is_some_and(group_alive)
    }

    /// The process group while it is certainly the job's: the guard leads it, and until the
    /// guard is reaped its pid (the group's id) cannot be handed out again. Once it is reaped, a
    /// group emptied of the job's processes frees that id, and a stranger that gets the pid and
    /// makes a group of it would be taken for the job (kept waiting for, signalled). So then
    /// the scan of this subreaper's descendants decides (every process of the job still running
    /// descends from it), and the group only while `/proc` cannot be read.
    fn certain_group(&self) -> Option<Pid> {
        if self.ended && !self.blind {
            return None;
        }
        self.group
    }

    fn on_exit(&mut self, status: std::io::Result<ExitStatus>) {
        self.ended = true;
        match status {
            Ok(status) => self.status = Some(status),
            Err(error) => say(format_args!("lost track of the command: {error}")),
        }
    }

    /// The signal that killed the guard itself, if one did: a guard that ends by itself exits
    /// with a code (the command's status, 128 + N for a signal N that ended the command).
    fn guard_killed_by(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.and_then(|status| status.signal())
    }

    /// Whether anything of the command may still run: the guard; once it has ended, a member of
    /// its process group or a descendant of this process (the orphans it left: any process of
    /// the job still running descends from one). Reaps the orphans that have ended.
    fn running(&mut self) -> bool {
        if !self.ended {
            return true;
        }
        reap_orphans();
        match crate::procs::running_descendants(rustix::process::getpid(), &self.inherited) {
            Ok(left) => !left.is_empty(),
            Err(error) => {
                self.cannot_scan(&error);
                self.group_alive() || has_children()
            }
        }
    }

    /// `signal` to the process group, and to every descendant of this process outside it (what
    /// the command started in another group or session), each once: a second SIGTERM is, to
    /// many programs, the order to quit without cleaning up. A process started after the scan
    /// (the clean-up a handler runs) is left alone.
    fn signal_all(&mut self, signal: Signal) {
        let certain = self.certain_group();
        if let Some(group) = certain {
            let _ = rustix::process::kill_process_group(group, signal);
        }
        let group = certain.map(|group| group.as_raw_nonzero().get());
        match crate::procs::running_descendants(rustix::process::getpid(), &self.inherited) {
            Ok(processes) => {
                for process in processes.iter().filter(|process| Some(process.group) != group) {
                    crate::procs::signal(process, signal);
                }
            }
            Err(error) => {
                self.cannot_scan(&error);
                // Blind now: the group is all there is to signal.
                if certain.is_none()
                    && let Some(group) = self.group
                {
                    let _ = rustix::process::kill_process_group(group, signal);
                }
            }
        }
    }

    /// One SIGKILL pass: to the process group and to every descendant of this process found.
    /// Returns whether a descendant was found.
    fn kill_pass(&mut self) -> bool {
        let certain = self.certain_group();
        if let Some(group) = certain {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        if !self.ended {
            let _ = self.child.start_kill();
        }
        match crate::procs::kill_pass(rustix::process::getpid(), &self.inherited) {
            Ok(found) => !found.is_empty(),
            Err(error) => {
                self.cannot_scan(&error);
                if certain.is_none()
                    && let Some(group) = self.group
                {
                    let _ = rustix::process::kill_process_group(group, Signal::KILL);
                }
                false
            }
        }
    }

    fn cannot_scan(&mut self, error: &std::io::Error) {
        if !self.blind {
            self.blind = true;
            say(format_args!(
                "cannot read /proc to find the command's processes ({error}); only its process group is signalled"
            ));
        }
    }

    /// Waits until the direct child has ended and nothing of the command runs.
    async fn gone(&mut self) {
        if !self.ended {
            let status = self.child.wait().await;
            self.on_exit(status);
        }
        while self.running() {
            tokio::time::sleep(Duration::from_millis(GROUP_POLL_MS)).await;
        }
    }

    /// SIGKILL to everything of the command, again after each pause (a process may fork between
    /// a scan and its signal, and the guard's orphans come here), until nothing of it runs.
    async fn killed(&mut self) {
        loop {
            let found = self.kill_pass();
            if !self.ended {
                let status = self.child.wait().await;
                self.on_exit(status);
            }
            if !found && !self.running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(crate::procs::KILL_PASS_PAUSE_MS)).await;
        }
    }

    /// The command's exit status for `lock run`'s own.
    fn code(&self) -> i32 {
        self.status.map_or(EXIT_STOPPED, exit_code)
    }
}

/// The stop signals `lock run` handles itself (SIGTERM, SIGINT, SIGHUP), installed before the
/// lease is written: from then on a stop releases the lease instead of killing this process
/// with the lease still written.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// A stop signal that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Terminate,
    Interrupt,
    Hangup,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Terminate => "SIGTERM",
            Stop::Interrupt => "SIGINT",
            Stop::Hangup => "SIGHUP",
        }
    }

    /// The signal's number (a shell reports a command ended by it as 128 + this).
    fn number(self) -> i32 {
        match self {
            Stop::Terminate => Signal::TERM.as_raw(),
            Stop::Interrupt => Signal::INT.as_raw(),
            Stop::Hangup => Signal::HUP.as_raw(),
        }
    }
}

impl StopSignals {
    fn install() -> Option<StopSignals> {
        Some(StopSignals {
            terminate: signal(SignalKind::terminate()).ok()?,
            interrupt: signal(SignalKind::interrupt()).ok()?,
            hangup: signal(SignalKind::hangup()).ok()?,
        })
    }

    /// The next stop signal.
    async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.terminate.recv() => Stop::Terminate,
            _ = self.interrupt.recv() => Stop::Interrupt,
            _ = self.hangup.recv() => Stop::Hangup,
        }
    }
}

async fn hold_while_running(
    options: Options,
    clock: &dyn Clock,
    client: &HttpClient,
    mut holding: Holding,
    generation: u64,
    mut signals: StopSignals,
) -> i32 {
    let name = options.name.as_str();
    let token = holding.token;
    // A subreaper, so that if the guard dies (SIGKILL, a crash) what the command left is
    // reparented here, where it is found and stopped, and not to init.
    if let Err(error) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        release(&options, token).await;
        say(format_args!(
            "cannot start '{}': cannot become the command's subreaper: {error}",
            options.command.join(" ")
        ));
        return EXIT_CANNOT_START;
    }
    // Normally none (cron, systemd and a shell's pipeline start `lock run` afresh), but a
    // process that forked before it exec'd `lock run` left its children here — and theirs: all
    // of them are noted (pid and start time), since a grandchild whose parent ends is
    // reparented to this subreaper and would otherwise be taken for the command's (stopped,
    // and waited for with the lease held).
    let inherited = crate::procs::running_descendants(rustix::process::getpid(), &[]).unwrap_or_default();
    let child = match tokio::process::Command::new(&options.guard_program)
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
    let mut job = Job {
        child,
        group,
        inherited,
        ended: false,
        status: None,
        blind: false,
    };
    holding.start_command(clock.monotonic_ms(), options.max_run_ms);
    tracing::debug!(name, token, holder = %options.holder, "lease taken; command started");

    let mut next_renewal = holding.next_renewal_ms();
    loop {
        let wake = holding.wake_at_ms(next_renewal);
        let wait = Duration::from_millis(wake.saturating_sub(clock.monotonic_ms()));
        tokio::select! {
            status = job.child.wait(), if !job.ended => {
                job.on_exit(status);
                if let Some(signal) = job.guard_killed_by() {
                    // Nothing here signals the guard while the command runs: someone killed it,
                    // or it crashed. Its orphans are this subreaper's now, and nobody would
                    // stop them if `lock run` died as well: stop them now.
                    return stop_for(&options, &mut job, &holding, clock, StopReason::GuardDied { signal }).await;
                }
                if job.running() {
                    // The guard waits for everything the command started, so this is rare (a
                    // member that joined the group from outside); it runs under the lease as
                    // much as the command did, so the lease stays held (renewed, fenced) until
                    // it is gone too.
                    tracing::debug!(name, group = ?job.group, "the command exited; its process group still runs");
                    continue;
                }
                return finish(&options, &job, &holding, clock).await;
            }
            () = tokio::time::sleep(Duration::from_millis(GROUP_POLL_MS)), if job.ended => {
                if !job.running() {
                    return finish(&options, &job, &holding, clock).await;
                }
            }
            () = tokio::time::sleep(wait) => {
                let started = clock.monotonic_ms();
                // Frozen past the deadline (a stopped process, a paused VM), or past
                // --max-run-s: stop without writing anything first.
                if let Some(reason) = holding.check(started) {
                    return stop_for(&options, &mut job, &holding, clock, reason).await;
                }
                if started < next_renewal {
                    continue;
                }
                let budget = holding.stop_deadline_ms().saturating_sub(started).max(1);
                let result = match tokio::time::timeout(Duration::from_millis(budget), renew(client, &options, &holding, clock)).await {
                    Ok(result) => result,
                    Err(_) => Renewal::Failed { error: format!("no answer within {budget} ms") },
                };
                if let Renewal::Failed { error } = &result {
                    tracing::warn!(name, %error, "cannot confirm the lease; retrying");
                }
                match holding.on_renewal(started, clock.monotonic_ms(), result) {
                    Next::RenewAt(at) => next_renewal = at,
                    Next::Stop(reason) => return stop_for(&options, &mut job, &holding, clock, reason).await,
                }
            }
            stop = signals.recv() => return finish_on_signal(&options, &mut job, &holding, clock, stop.name()).await,
        }
    }
}

/// The command and everything it started are gone: release the lease, pass on its status.
async fn finish(options: &Options, job: &Job, holding: &Holding, clock: &dyn Clock) -> i32 {
    if holding.may_write(clock.monotonic_ms()) {
        release(options, holding.token).await;
    }
    job.code()
}

/// Stops the command for `reason`; releases the lease if it is still this run's to write and
/// nothing of the command runs any more.
async fn stop_for(options: &Options, job: &mut Job, holding: &Holding, clock: &dyn Clock, reason: StopReason) -> i32 {
    let name = options.name.as_str();
    // Past the expiry of the lease it last wrote (frozen: SIGSTOP, a stalled host), another
    // holder may be running the job already: no grace, the command is killed at once.
    let grace_ms = if holding.may_write(clock.monotonic_ms()) {
        options.timing.kill_grace_ms
    } else {
        say(format_args!(
            "'{name}': this run's lease has expired (it could not act meanwhile); killing the command at once"
        ));
        0
    };
    say(format_args!("stopping '{name}': {reason}"));
    let gone = stop(job, grace_ms).await;
    if gone && !matches!(reason, StopReason::LeaseLost { .. }) && holding.may_write(clock.monotonic_ms()) {
        release(options, holding.token).await;
    }
    say(format_args!("stopped '{name}' ({})", describe(job)));
    match reason {
        StopReason::MaxRunTime { .. } => EXIT_MAX_RUN,
        _ => EXIT_STOPPED,
    }
}

fn describe(job: &Job) -> String {
    match (job.guard_killed_by(), job.status) {
        (Some(signal), _) => format!("its guard was killed by signal {signal}; the command's own status is unknown"),
        (None, Some(status)) => format!("the command ended with {status}"),
        (None, None) => "the command's end could not be observed".to_string(),
    }
}

async fn finish_on_signal(options: &Options, job: &mut Job, holding: &Holding, clock: &dyn Clock, signal: &str) -> i32 {
    say(format_args!(
        "{signal}: stopping '{}' and releasing the lease",
        options.name
    ));
    let gone = stop(job, options.timing.kill_grace_ms).await;
    if gone && holding.may_write(clock.monotonic_ms()) {
        release(options, holding.token).await;
    }
    job.code()
}

/// SIGTERM to the command's process group and to every process it started wherever its group,
/// SIGKILL to all of them after the grace (at once without one), until nothing of the command
/// runs. Returns whether that is so (false: something still there [`KILLED_GROUP_WAIT_MS`] after
/// SIGKILL).
async fn stop(job: &mut Job, grace_ms: u64) -> bool {
    if grace_ms > 0 {
        // Once: a process that a handler starts after it (a clean-up) is left alone until the
        // SIGKILL after the grace.
        job.signal_all(Signal::TERM);
        if tokio::time::timeout(Duration::from_millis(grace_ms), job.gone())
            .await
            .is_ok()
        {
            return true;
        }
    }
    if tokio::time::timeout(Duration::from_millis(KILLED_GROUP_WAIT_MS), job.killed())
        .await
        .is_ok()
    {
        return true;
    }
    let left = crate::procs::running_descendants(rustix::process::getpid(), &job.inherited).unwrap_or_default();
    say(format_args!(
        "the command's processes (group {:?}; pids {}) are still there {KILLED_GROUP_WAIT_MS} ms after SIGKILL; the \
         lease is left to expire",
        job.group.map(Pid::as_raw_nonzero),
        crate::procs::pids(&left)
    ));
    false
}

/// One renewal round: the pointer must still name our region, then the conditional write of
/// the new expiry.
async fn renew(client: &HttpClient, options: &Options, holding: &Holding, clock: &dyn Clock) -> Renewal {
    match ask_pointer(client, options, lease::POINTER_READ_MS_MAX).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_normal_skips_start_with_skipped() {
        // A crontab filters `^switchyard lock: skipped`: another region or holder has the job.
        for code in [EXIT_NOT_ACTIVE, EXIT_LEASE_HELD] {
            assert!(is_benign_skip(code));
            assert!(not_run_line(code, "cron", "x").starts_with("switchyard lock: skipped 'cron': "));
        }
        // Failures must get through that filter, to cron's mail or log.
        for code in [EXIT_POINTER_UNKNOWN, EXIT_STORE_UNAVAILABLE, EXIT_STOPPED] {
            assert!(!is_benign_skip(code));
            let line = not_run_line(code, "cron", "cannot read the lease: timeout");
            assert!(!line.starts_with("switchyard lock: skipped"), "{line}");
            assert_eq!(
                line,
                "switchyard lock: cannot run 'cron': cannot read the lease: timeout"
            );
        }
    }

    #[test]
    fn the_monotonic_clock_never_goes_back() {
        let first = SystemClock.monotonic_ms();
        let second = SystemClock.monotonic_ms();
        assert!(second >= first);
    }

    #[tokio::test]
    async fn a_process_group_is_alive_while_a_background_member_runs() {
        // The leader exits at once; what it put in the background runs on in its group.
        let mut leader = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & exit 0")
            .process_group(0)
            .spawn()
            .expect("sh starts");
        let group = leader
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .expect("a pid");
        assert!(leader.wait().await.expect("sh ends").success());
        assert!(group_alive(group), "the background sleep is still in the group");
        rustix::process::kill_process_group(group, Signal::KILL).expect("kill the group");
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(group) {
            assert!(Instant::now() < deadline, "the group is still there after SIGKILL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
