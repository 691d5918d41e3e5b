//! Health checks for Switchyard: what to probe (`spec`), the rise/fall state machine of one
//! check (`state`), what a vantage point reports (`report`), and the quorum over vantage points
//! that turns reports into one verdict per region (`quorum`).
//!
//! `spec`, `report`, `state` and `quorum` are sans-IO: no sockets, no clock reads (time is a
//! `now_ms` argument), so the controller's decision logic can be tested and simulated over them.
//! This crate must not depend on the controller, DNS or proxy crates; they depend on it.

pub mod agent;
pub mod probe;
pub mod quorum;
pub mod report;
pub mod runner;
pub mod spec;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use quorum::{Aggregator, QuorumConfig, RegionRule, RegionState, RegionVerdict};
pub use report::{AgentPlan, CheckResult, CheckStatus, Report};
pub use spec::{CheckSpec, ProbeKind, SqlDriver};
