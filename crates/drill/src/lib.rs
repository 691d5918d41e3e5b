//! Disaster-recovery drills: inject real faults into a running deployment (the lab or your
//! own), drive a workload through DNS like real clients, and measure RTO and RPO.
//!
//! The deterministic core is pure and holds the judgement:
//! - [`history`]: the recorded operations (Jepsen-style invoke / ok / fail / info);
//! - [`checker`]: the set check — every acknowledged write present, superseded, overwritten
//!   by last-writer-wins, or lost (the RPO);
//! - [`measure`]: RTO(DNS), RTO(99%), false failovers, convergence and failback times;
//! - [`scenario`]: the drills as data (fault steps over abstract targets, expectations) and
//!   the [`scenario::FaultTarget`] trait through which faults are injected;
//! - [`ha`]: with several controllers, the leader's takeover and the audit-log checks (no step
//!   applied under two generations, late pushes refused);
//! - [`databases`]: with `switchyard lab --databases`, per database the promotion time,
//!   acknowledged orders lost, errant transactions at rejoin, split-brain writes, refusals;
//! - [`report`]: JSON, the terminal table and the self-contained HTML report.
//!
//! The runtime layer ([`runtime`]) does the I/O: the caching DNS resolver, the shop clients,
//! the global-table writers, the monitors, fault injection over the fault proxy's HTTP API and
//! a process supervisor, the progress bar.
//!
//! Must not depend on the other Switchyard crates: it talks to every component over its
//! public network API (DNS, HTTP, the DynamoDB API), as an outside observer would.

pub mod checker;
pub mod databases;
pub mod ha;
pub mod history;
pub mod measure;
pub mod report;
pub mod runtime;
pub mod scenario;
