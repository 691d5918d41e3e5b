//! When a tombstone may be purged: a causal watermark built from marks the regions exchange.
//!
//! A tombstone exists so that an older write arriving later loses to it. Purging it is safe
//! only when no write older than it can ever arrive again, from any region, by any path. Each
//! region re-logs (relays) the changes it applies, so an old write can reach a region late
//! through a third region even after its origin delivered it directly. A timer (Cassandra's
//! `gc_grace_seconds`) cannot rule that out: a partition longer than the timer resurrects
//! deleted items. The watermark does, without per-tombstone bookkeeping:
//!
//! - Every region periodically takes a [`Mark`] atomically with its writer: its clock (all its
//!   own later writes are newer), its log head, and `received`, its own watermark below.
//! - **received** (`D`): a region has *received* every write with an HLC at or below `D`
//!   from every region (applied it, or holds something newer for that key). For a peer `O`
//!   this holds up to `O`'s mark clock once this region applied `O`'s log through the mark's
//!   head: `O`'s own writes are in its log in clock order.
//! - **relay bound**: once this region applied `O`'s log through a mark's head, `O` can never
//!   again relay a write at or below that mark's `received`. `O` had received all of those, so
//!   any later copy loses at `O` and is not re-logged, and every one it applied sits in its log
//!   at or before the head.
//! - **purge below** (`P`): the minimum of this region's `received` and every peer's relay
//!   bound. A tombstone with an HLC below `P` is held (or superseded) by every region, and no
//!   older write for its key can arrive from anywhere. Repairs only push a region's current
//!   state, which for that key is the tombstone, something newer, or nothing.
//!
//! Marks live in memory only: after a restart the watermark starts at 0 and purging waits for
//! fresh marks, which is safe. A peer that is down holds purging back everywhere (tombstones
//! are kept, never lost), exactly as long as it is down.

use std::collections::BTreeMap;

/// Marks per source waiting for this region to apply the source's log through their head; a
/// newer mark replaces the last one waiting beyond this, so the oldest always makes progress.
pub const PENDING_MARKS_MAX: usize = 2;

/// What one region tells its peers about its own position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// The region's HLC when the mark was taken: every later own write is newer.
    pub clock: u64,
    /// The region's own `received` watermark at that moment.
    pub received: u64,
    /// The region's replication log head at that moment.
    pub head: u64,
}

#[derive(Clone, Debug, Default)]
struct Source {
    /// This region applied the source's log through here.
    applied: u64,
    /// Every write of the source's own at or below this has been received here.
    direct: u64,
    /// The source will never again relay a write at or below this.
    relay: u64,
    pending: Vec<Mark>,
}

impl Source {
    fn promote(&mut self) {
        let applied = self.applied;
        let (reached, waiting): (Vec<Mark>, Vec<Mark>) = self.pending.iter().partition(|m| m.head <= applied);
        self.pending = waiting;
        for mark in reached {
            self.direct = self.direct.max(mark.clock);
            self.relay = self.relay.max(mark.received.min(mark.clock));
        }
    }
}

/// One region's view of its peers' marks.
#[derive(Clone, Debug, Default)]
pub struct Watermarks {
    sources: BTreeMap<String, Source>,
}

impl Watermarks {
    /// `peers`: every region this one replicates with. Purging waits for all of them.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(peers: I) -> Watermarks {
        Watermarks {
            sources: peers.into_iter().map(|p| (p.into(), Source::default())).collect(),
        }
    }

    /// A mark from `source`; marks from regions that are not peers are ignored.
    pub fn on_mark(&mut self, source: &str, mark: Mark) {
        let Some(state) = self.sources.get_mut(source) else {
            return;
        };
        if state.pending.len() < PENDING_MARKS_MAX {
            state.pending.push(mark);
        } else if let Some(last) = state.pending.last_mut() {
            *last = mark;
        }
        state.promote();
    }

    /// This region has durably applied `source`'s log through `through` (a batch, a repair, or
    /// the position found at startup).
    pub fn on_applied(&mut self, source: &str, through: u64) {
        if let Some(state) = self.sources.get_mut(source) {
            state.applied = state.applied.max(through);
            state.promote();
        }
    }

    /// `D`: every write at or below this HLC, from any region, has been received here.
    /// `own_clock` is this region's HLC now (its own writes at or below it are all stored).
    pub fn received(&self, own_clock: u64) -> u64 {
        self.sources.values().map(|s| s.direct).fold(own_clock, u64::min)
    }

    /// The highest HLC this region has vouched for from any peer: a region joining a table
    /// later has, in its marks, counted that table's changes up to here without holding them
    /// (they were not sent to it), so it must take them from a backfill instead.
    pub fn max_direct(&self) -> u64 {
        self.sources.values().map(|s| s.direct).max().unwrap_or(0)
    }

    /// `P`: tombstones with an HLC strictly below this may be purged.
    pub fn purge_below(&self, own_clock: u64) -> u64 {
        self.sources
            .values()
            .map(|s| s.relay)
            .fold(self.received(own_clock), u64::min)
    }

    /// The peer holding purging back the most, with its relay bound (for the operator).
    pub fn slowest(&self) -> Option<(&str, u64)> {
        self.sources
            .iter()
            .map(|(name, s)| (name.as_str(), s.relay))
            .min_by_key(|(_, relay)| *relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(clock: u64, received: u64, head: u64) -> Mark {
        Mark { clock, received, head }
    }

    #[test]
    fn nothing_is_purged_before_every_peer_reported() {
        let mut marks = Watermarks::new(["eu", "ap"]);
        assert_eq!(marks.purge_below(100), 0);
        marks.on_applied("eu", 10);
        marks.on_mark("eu", mark(50, 40, 10));
        assert_eq!(marks.received(100), 0, "ap has said nothing yet");
        assert_eq!(marks.purge_below(100), 0);
    }

    #[test]
    fn a_mark_counts_only_once_its_head_is_applied() {
        let mut marks = Watermarks::new(["eu"]);
        marks.on_mark("eu", mark(50, 40, 10));
        assert_eq!(marks.received(100), 0, "changes up to 10 are still on their way");
        marks.on_applied("eu", 9);
        assert_eq!(marks.received(100), 0);
        marks.on_applied("eu", 10);
        assert_eq!(marks.received(100), 50);
        assert_eq!(
            marks.purge_below(100),
            40,
            "eu may still relay writes above its own received"
        );
        assert_eq!(marks.purge_below(30), 30, "never beyond this region's own clock");
    }

    #[test]
    fn the_oldest_waiting_mark_is_kept_so_progress_is_made_under_load() {
        let mut marks = Watermarks::new(["eu"]);
        marks.on_mark("eu", mark(10, 5, 100));
        for step in 1..50 {
            marks.on_mark("eu", mark(10 + step, 5 + step, 100 + step * 10));
        }
        marks.on_applied("eu", 100);
        assert_eq!(marks.received(1_000), 10, "the first mark was reached and counted");
        marks.on_applied("eu", 590);
        assert_eq!(marks.received(1_000), 59);
    }

    #[test]
    fn watermarks_never_go_back_and_strangers_are_ignored() {
        let mut marks = Watermarks::new(["eu"]);
        marks.on_applied("eu", 10);
        marks.on_mark("eu", mark(50, 40, 10));
        marks.on_mark("eu", mark(20, 10, 5));
        assert_eq!(marks.purge_below(100), 40);
        marks.on_mark("mallory", mark(1_000, 1_000, 0));
        assert_eq!(marks.purge_below(1_000), 40);
        assert_eq!(marks.slowest(), Some(("eu", 40)));
    }
}
