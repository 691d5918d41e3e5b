//! The command's guard, a small reaper between `lock run` and the job: `lock run` starts its
//! own binary as `switchyard lock exec-guard --parent-pid P -- CMD...` in a new process group
//! (the guard is its leader). The guard
//!
//! - makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): every process the job starts,
//!   once orphaned (Magento's `cron:run` backgrounds each `use_separate_process` group and
//!   exits; a daemon double-forks), is reparented to the guard instead of init, and the guard
//!   reaps it — so every process the job started, whatever its process group or session, is a
//!   descendant of the guard ([`crate::procs`] finds them);
//! - asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`, [`PARENT_DEATH`])
//!   and checks that the parent is still `P` (it may have died before that was armed); it also
//!   looks at its parent every [`REAPER_POLL_MS`];
//! - starts the job in the same process group, and waits until **no process the job started is
//!   left** (the subreaper sees them all), then exits with the job's own status (its code, or
//!   128 + the signal that ended it) — so `lock run` holds and renews the lease as long as any
//!   of them runs;
//! - when `lock run` dies (SIGKILL, the OOM killer), sends SIGKILL to every descendant, scanning
//!   again and reaping until none is left (a process that called `setsid` included: a signal to
//!   the process group would miss it), then to the whole process group, itself included.
//!
//! SIGTERM, SIGINT and SIGHUP do not stop the guard: `lock run` sends its stop signals to the
//! process group and to each of its own descendants (the job's processes, wherever their group),
//! so the job has them already, and the guard waits for the job to end; a stop that lasts past
//! the grace ends with SIGKILL to all of them, guard included. If the guard itself dies (SIGKILL,
//! a crash), what the job left is reparented to `lock run` (a subreaper too), which stops it.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use tokio::signal::unix::{SignalKind, signal};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "exec-guard";

/// The signal the kernel sends the guard when `lock run` dies.
pub const PARENT_DEATH: Signal = Signal::USR2;

/// How often the guard checks its parent and reaps, besides every SIGCHLD.
pub const REAPER_POLL_MS: u64 = 200;

/// How long the guard, once `lock run` died, goes on killing the job's processes (a scan, SIGKILL
/// to each, reaping, again) before it gives up on those still there (a process stuck in the
/// kernel cannot run the job's code again once SIGKILL is pending).
pub const KILL_EVERYTHING_MS_MAX: u64 = 10_000;

fn say(message: impl std::fmt::Display) {
    eprintln!("switchyard lock: {message}");
}

/// The exit status the guard passes on for the job's wait status: its code, or 128 + the
/// signal that ended it (what a shell reports, and what `lock run` reported before the guard).
pub fn status_code(status: WaitStatus) -> Option<i32> {
    code_of(status.exit_status(), status.terminating_signal())
}

fn code_of(exit_status: Option<i32>, terminating_signal: Option<i32>) -> Option<i32> {
    exit_status.or_else(|| terminating_signal.map(|signal| 128 + signal))
}

/// Runs the guard; returns its exit status (the job's, or
/// [`crate::EXIT_CANNOT_START`] with the reason on stderr).
pub fn run(parent_pid: i32, command: &[String]) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            say(format_args!("cannot start the guard: {error}"));
            return crate::EXIT_CANNOT_START;
        }
    };
    runtime.block_on(guard(parent_pid, command))
}

fn parent_alive(parent_pid: i32) -> bool {
    rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(parent_pid)
}

async fn guard(parent_pid: i32, command: &[String]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        say("no command given after --");
        return crate::EXIT_CANNOT_START;
    };
    // Handlers first: a parent-death signal must never find the default action (which would end
    // the guard and leave the job behind). Handlers, unlike ignored signals, are reset for the
    // job when it starts.
    let streams = (
        signal(SignalKind::child()),
        signal(SignalKind::from_raw(PARENT_DEATH.as_raw())),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut child), Ok(mut parent_death), Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = streams else {
        say("cannot install the guard's signal handlers");
        return crate::EXIT_CANNOT_START;
    };
    if let Err(error) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        say(format_args!("cannot become the job's subreaper: {error}"));
        return crate::EXIT_CANNOT_START;
    }
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(PARENT_DEATH)) {
        say(format_args!("cannot arm the parent-death signal: {error}"));
        return crate::EXIT_CANNOT_START;
    }
    // The parent may have died before the signal was armed: then nobody holds the lease.
    if !parent_alive(parent_pid) {
        say(format_args!(
            "the lock holder (pid {parent_pid}) is gone; not starting {program}"
        ));
        return crate::EXIT_CANNOT_START;
    }
    let leader = match std::process::Command::new(program).args(args).spawn() {
        // Reaped below with waitpid(-1), like every orphan the job leaves.
        Ok(leader) => leader.id(),
        Err(error) => {
            say(format_args!("cannot run {program}: {error}"));
            return crate::EXIT_CANNOT_START;
        }
    };
    // `lock run` starts the guard as the leader of its own process group (`process_group(0)`),
    // and the job inherits it: the group's id is the guard's pid. Not `getpgrp(2)`: where the
    // group's leader is outside the pid namespace it answers 0, which rustix refuses with a panic.
    let group = rustix::process::getpid();
    let mut leader_status: Option<i32> = None;
    loop {
        // Reap every child that ended (the job, and orphans reparented to this subreaper).
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    if u32::try_from(pid.as_raw_nonzero().get()).ok() == Some(leader) {
                        leader_status = status_code(status);
                    }
                }
                Ok(None) => break,
                // No child left: the job and everything it started are gone.
                Err(rustix::io::Errno::CHILD) => return leader_status.unwrap_or(crate::EXIT_STOPPED),
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => {
                    say(format_args!("the guard cannot wait for the job: {error}"));
                    kill_everything(group).await;
                    return crate::EXIT_STOPPED;
                }
            }
        }
        if !parent_alive(parent_pid) {
            say(format_args!(
                "the lock holder (pid {parent_pid}) died; killing every process of the job"
            ));
            kill_everything(group).await;
            return crate::EXIT_STOPPED;
        }
        tokio::select! {
            _ = child.recv() => {}
            _ = parent_death.recv() => {}
            // The group (the job) has them too; the guard waits for the job to end.
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = hangup.recv() => {}
            () = tokio::time::sleep(Duration::from_millis(REAPER_POLL_MS)) => {}
        }
    }
}

/// SIGKILL to every process the job started, wherever its process group or session: this
/// subreaper's descendants, scanned again (a process may fork between the scan and its signal)
/// and reaped (what the killed left is reparented here) until none is left, for at most
/// [`KILL_EVERYTHING_MS_MAX`]; then to the whole process group, this guard included.
async fn kill_everything(group: Pid) {
    let me = rustix::process::getpid();
    let deadline = Instant::now() + Duration::from_millis(KILL_EVERYTHING_MS_MAX);
    loop {
        let found = match crate::procs::kill_pass(me, &[]) {
            Ok(found) => found,
            Err(error) => {
                say(format_args!(
                    "cannot read /proc to find the job's processes ({error}); killing its process group only"
                ));
                break;
            }
        };
        reap_all();
        if found.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            say(format_args!(
                "processes of the job still there {KILL_EVERYTHING_MS_MAX} ms after SIGKILL (stuck in the kernel): {}",
                crate::procs::pids(&found)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(crate::procs::KILL_PASS_PAUSE_MS)).await;
        reap_all();
    }
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
}

/// Reaps every child that has ended (the statuses no longer matter: the job is being killed).
fn reap_all() {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_status_is_passed_on_as_a_shell_reports_it() {
        assert_eq!(code_of(Some(7), None), Some(7));
        assert_eq!(code_of(Some(0), None), Some(0));
        // Ended by SIGTERM (15): 143.
        assert_eq!(code_of(None, Some(15)), Some(143));
        assert_eq!(code_of(None, None), None);
    }
}
