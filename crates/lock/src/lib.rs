//! `switchyard lock run --name NAME -- CMD...`: runs a job (a cron run of Magento or WordPress)
//! only in the active region and only while holding a fenced lease in a global table of the
//! local store, so two regions never run the same job at once, not even while the pointer
//! moves.
//!
//! [`lease`] holds the rules (sans-IO, injected clock); [`run`] reads the pointer, performs
//! the conditional writes, starts and stops the command. [`guard`] is the reaper between
//! `lock run` and the command: it waits for everything the command started and kills all of it
//! (found by [`procs`], wherever its process group or session) when its `lock run` dies, so a
//! killed holder leaves nothing running without a lease; `lock run` stops what a killed guard
//! left.

pub mod guard;
pub mod lease;
pub mod procs;
pub mod run;
pub mod store;

/// Exit status when this host's region is not the active one (or the pointer moved during the
/// settle pause before the command started).
pub const EXIT_NOT_ACTIVE: i32 = 100;
/// Exit status when another holder has the lease.
pub const EXIT_LEASE_HELD: i32 = 101;
/// Exit status when the pointer could not be read or names no region yet.
pub const EXIT_POINTER_UNKNOWN: i32 = 102;
/// Exit status when the local store could not be reached or refused the lease table.
pub const EXIT_STORE_UNAVAILABLE: i32 = 103;
/// Exit status when the command was stopped mid-run: the pointer moved, the lease was lost, it
/// could not be confirmed in time, or the guard between `lock run` and the command was killed.
pub const EXIT_STOPPED: i32 = 104;
/// Exit status when the command ran longer than `--max-run-s` and was stopped (SIGTERM to every
/// process of it, SIGKILL after the grace).
pub const EXIT_MAX_RUN: i32 = 105;
/// Exit status when the command could not be started (not found, not executable).
pub const EXIT_CANNOT_START: i32 = 127;
/// Exit status for bad arguments (as clap's own refusals): a wrong crontab line, such as a
/// token file that is not there or a region the lease table does not have.
pub const EXIT_BAD_ARGUMENTS: i32 = 2;
