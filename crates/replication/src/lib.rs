//! The replication core of global tables, sans-IO: events in, commands out, clock injected.
//!
//! - [`hlc`]: hybrid logical clocks, so writes made in different regions order sensibly even
//!   when the regions' wall clocks disagree by seconds;
//! - [`merge`]: the last-writer-wins rule on `(hlc, origin)` versions — commutative,
//!   idempotent and convergent, so replicas that saw the same changes in any order agree;
//! - [`shipper`]: per-peer shipping of the replication log, in order, batched, with
//!   back-pressure (one batch in flight), retries with capped backoff, and the trim rule;
//! - [`receive`]: every rule of the receiving side (apply or skip a change, repairs, the join
//!   barrier and backfill waits, replica-definition sequences, tombstone purging), over a
//!   storage trait the store implements with redb and the simulation in memory;
//! - [`watermark`]: when a tombstone may be purged (marks exchanged between regions);
//! - [`clock_offset`]: the peers' clock offsets, from the signing times of their requests;
//! - [`digest`]: range digests for anti-entropy (which key ranges differ between replicas).
//!
//! This crate must not depend on storage, tokio or HTTP: the store's runtime feeds it events
//! and executes its commands, and the simulation in `tests/it` drives it deterministically.

pub mod clock_offset;
pub mod digest;
pub mod hlc;
pub mod merge;
pub mod receive;
pub mod shipper;
pub mod watermark;

pub use clock_offset::{PeerClocks, PeerOffset};
pub use hlc::{Hlc, HlcClock, SkewReport, stamp_after};
pub use merge::{Version, applies, wins};
pub use shipper::{Acceptance, Command, Shipper, ShipperConfig, accept};
pub use watermark::{Mark, Watermarks};
