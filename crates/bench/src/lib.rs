//! Benchmarks that need a load generator of our own. Not tests: nothing here asserts a timing;
//! results go to BENCHMARKS.md with the command that made them.
//!
//! [`replication`] measures global-table replication lag between real `switchyard store`
//! processes on loopback: writes at a fixed rate in one region, and for a sample of them the
//! time from the origin's acknowledgement until the item is readable in every other region.
//! It also measures local write throughput with replication on and off.
//!
//! [`tunnel`] measures WebSocket-style tunnels through a load balancer (`switchyard proxy`
//! against HAProxy, `scripts/bench-websocket.sh`): an echo server behind it, and round trips of
//! fixed-size messages on upgraded connections through it.
//!
//! This crate drives processes over HTTP only; it must not depend on the store's internals.

pub mod client;
pub mod replication;
pub mod stats;
pub mod tunnel;
