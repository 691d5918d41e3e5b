//! The command's guard: `lock run` starts the command through its own binary
//! (`switchyard lock exec-guard --parent-pid P -- CMD...`), which asks the kernel to send it
//! SIGKILL when its parent dies (`PR_SET_PDEATHSIG`, kept across `execve`), checks that the
//! parent is still `P`, and then replaces itself with the command. A `lock run` killed with
//! SIGKILL (or by the OOM killer) thus takes its command with it instead of leaving it running
//! without a lease. Processes the command started itself are in the command's process group,
//! which `lock run` signals on every ordinary stop.

use std::os::unix::process::CommandExt;

use rustix::process::{Pid, Signal};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "exec-guard";

/// Arms the parent-death signal and replaces this process with `command`; returns only on
/// failure, with the reason.
pub fn exec(parent_pid: i32, command: &[String]) -> String {
    let Some((program, args)) = command.split_first() else {
        return "no command given after --".to_string();
    };
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        return format!("cannot arm the parent-death signal: {error}");
    }
    // The parent may have died before the signal was armed: then nobody holds the lease.
    let parent = rustix::process::getppid().map(Pid::as_raw_nonzero).map(|p| p.get());
    if parent != Some(parent_pid) {
        return format!("the lock holder (pid {parent_pid}) is gone; not starting {program}");
    }
    let error = std::process::Command::new(program).args(args).exec();
    format!("cannot run {program}: {error}")
}
