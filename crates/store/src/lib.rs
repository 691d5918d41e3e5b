//! The regional store: a DynamoDB-compatible API over durable, ordered storage.
//!
//! Layers, top to bottom: `server` (HTTP, SigV4, metrics) → `ops` (one function per DynamoDB
//! operation: request validation, expressions, response shapes) → `engine` (redb tables,
//! the single writer with group commit, secondary indexes, TTL) → `keys` (order-preserving key
//! encoding). `expr` is pure: it parses and evaluates expressions over items and knows nothing
//! of storage. Nothing here knows about other regions; replication builds on the engine's
//! change hooks.

pub mod expr;
