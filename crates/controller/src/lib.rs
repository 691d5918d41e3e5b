//! The failover controller: decides failover and failback, runs the runbook, keeps the audit log
//! and serves the active-region pointer and the control API.
//!
//! - `engine`: the sans-IO decision engine (events in, commands out, clock injected). It never
//!   does I/O, never reads a clock and owns the generation counter.
//! - `runbook`: executes the ordered steps of a transition with timeouts, bounded retries and
//!   the generation as fencing token.
//! - `audit`: the durable, append-only JSON-lines audit log (fsync per record, rotation).
//! - `config`: the TOML configuration and `switchyard config check`.
//! - `server`: the runtime gluing health reports, the engine, the runbook and the HTTP API.
//! - `ha`: several controllers, one leader: leadership through an etcd lease (a sans-IO state
//!   machine), the generation counter and the state a new leader rolls forward from, in etcd.
//! - `pointer`: `switchyard pointer watch`, the client side of the active-region pointer.
//! - `auth`: bearer tokens with roles (agent, operator, read), compared as SHA-256 digests in
//!   constant time.
//! - `client`: the small HTTP client used by the CLI, the runbook and the pointer watcher.
//!
//! Must not depend on the store or DNS crates: it talks to them over their HTTP admin APIs only.

pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod engine;
pub mod guard;
pub mod ha;
pub mod pointer;
pub mod runbook;
pub mod runbook_doc;
pub mod server;
