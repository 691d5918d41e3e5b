//! The regional store: a DynamoDB-compatible API over durable, ordered storage.
//!
//! Layers, top to bottom: `server` (HTTP, SigV4, metrics) → `ops` (one function per DynamoDB
//! operation: request validation, expressions, response shapes) → `engine` (redb tables,
//! the single writer with group commit, secondary indexes, TTL) → `keys` and `record`
//! (order-preserving key encoding, the stored item format). `expr` is pure: it parses and
//! evaluates expressions over items and knows nothing of storage. Nothing here knows about
//! other regions; replication builds on the engine.

pub mod backup;
pub mod catalog;
pub mod compat;
pub mod config;
pub mod disk;
pub mod engine;
pub mod expr;
pub mod global;
pub mod in_flight;
pub mod keys;
pub mod ops;
pub mod partiql;
pub mod record;
pub mod replication_log;
pub mod server;
pub mod settings;
pub mod streams;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{Engine, SystemClock};
pub use ops::Store;
