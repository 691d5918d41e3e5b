//! `lab`: the whole system on one machine. This crate holds the lab's process supervisor:
//! components run as real child processes of the one binary (so a kill -9 or a SIGSTOP is a
//! real fault), each with a ready file and a log file under the lab directory, started in
//! order, stopped in reverse with SIGTERM and then SIGKILL after a grace period, and faulted one
//! at a time for drills (kill -9, SIGSTOP / SIGCONT, restart). `lab.json` in the directory
//! records what runs where, so `switchyard status --lab DIR` and drills in other processes can
//! find the components.
//!
//! `plan` is the topology as data (components, ports, configuration files, the fault-proxy
//! links between components); `run` starts a plan and checks a running lab.
//!
//! Must not depend on the crates of the components it runs: it knows them only as command
//! lines, ready files and addresses.

mod configs;
pub mod databases;
pub mod disks;
pub mod exec;
pub mod ha;
pub mod netns;
pub mod plan;
pub mod providers;
pub mod run;
pub mod state;
pub mod supervisor;

pub use plan::{LabOptions, Plan, plan};
pub use run::{Action, LabError, control, run, status};
pub use state::{ComponentRecord, LabState};
pub use supervisor::{ComponentSpec, ComponentState, Supervisor, SupervisorError};
