//! Hybrid logical clock: 48 bits of physical milliseconds and 16 bits of logical counter in
//! one `u64`, so timestamps compare as integers and fit in the stored record header.

use std::fmt;

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// Remote clocks further ahead than this are reported as skewed (their writes still apply:
/// the HLC absorbs the skew instead of reordering writes).
pub const SKEW_REPORT_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn from_parts(physical_ms: u64, logical: u16) -> Hlc {
        Hlc((physical_ms << LOGICAL_BITS) | u64::from(logical))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// How far ahead of its wall clock a region stamps local writes at most, by default: a peer's
/// timestamps further ahead are not inherited by the local clock (`clock_offset_max_ms`).
pub const CLOCK_OFFSET_MAX_MS_DEFAULT: u64 = 1_000;

/// A remote timestamp ahead of the local physical clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewReport {
    pub ahead_ms: u64,
    /// The remote timestamp was further ahead than the bound: the local clock did not follow
    /// it past the bound.
    pub capped: bool,
}

/// The clock of one region. Never goes backwards, even when the physical clock does.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    pub fn new() -> HlcClock {
        HlcClock::default()
    }

    /// Starts after `last`, e.g. the highest timestamp found in durable storage at startup.
    pub fn resume(last: Hlc) -> HlcClock {
        HlcClock { last }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local write.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        let physical = Hlc::from_parts(physical_ms, 0);
        self.last = if physical > self.last {
            physical
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last
    }

    /// Folds in a timestamp received from another region, so that later local writes are
    /// ordered after it — but never past `max_ahead_ms` beyond the local physical clock: a peer
    /// whose clock runs far ahead must not drag every local write into its future (its skew
    /// would then outlive the fault, and every conflict would be decided by it). Writes to the
    /// very item that carries the future timestamp still order after it ([`stamp_after`]).
    /// Returns a skew report when the remote clock runs ahead by more than [`SKEW_REPORT_MS`]
    /// or past the bound.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64, max_ahead_ms: u64) -> Option<SkewReport> {
        let bound = Hlc::from_parts(physical_ms.saturating_add(max_ahead_ms), 0);
        let capped = remote > bound;
        let followed = remote.min(bound);
        if followed > self.last {
            self.last = followed;
        }
        let ahead_ms = remote.physical_ms().saturating_sub(physical_ms);
        (ahead_ms > SKEW_REPORT_MS || capped).then_some(SkewReport { ahead_ms, capped })
    }
}

/// The timestamp for a local write that replaces a stored version stamped `existing`: the
/// clock's `stamp`, or just after `existing` when that is newer (a peer's clock ran ahead past
/// the bound of [`HlcClock::observe`]). A write must be newer than what it replaces, or the
/// peers would keep the old version while this region shows the new one.
pub fn stamp_after(stamp: Hlc, existing: Option<Hlc>) -> Hlc {
    match existing {
        Some(existing) if existing >= stamp => Hlc(existing.0.saturating_add(1)),
        _ => stamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn survives_a_physical_clock_going_backwards() {
        let mut clock = HlcClock::new();
        let a = clock.now(10_000);
        let b = clock.now(9_000);
        assert!(b > a);
        assert_eq!(b.physical_ms(), 10_000);
        assert_eq!(b.logical(), 1);
    }

    #[test]
    fn orders_local_writes_after_observed_remote_ones() {
        let mut clock = HlcClock::new();
        let remote = Hlc::from_parts(50_000, 7);
        let report = clock.observe(remote, 45_000, 10_000);
        assert_eq!(
            report,
            Some(SkewReport {
                ahead_ms: 5_000,
                capped: false
            })
        );
        assert!(clock.now(45_001) > remote);
    }

    #[test]
    fn a_peer_far_ahead_does_not_drag_local_writes_into_its_future() {
        let mut clock = HlcClock::new();
        let remote = Hlc::from_parts(165_000, 0);
        let report = clock.observe(remote, 45_000, 1_000);
        assert_eq!(
            report,
            Some(SkewReport {
                ahead_ms: 120_000,
                capped: true
            })
        );
        let local = clock.now(45_001);
        assert!(
            local.physical_ms() <= 46_000,
            "stamped at most the bound ahead: {local}"
        );
        // A write replacing the future-stamped item itself still orders after it.
        let replacing = stamp_after(local, Some(remote));
        assert!(replacing > remote);
        assert_eq!(stamp_after(local, Some(Hlc::from_parts(1, 0))), local);
        assert_eq!(stamp_after(local, None), local);
    }

    proptest! {
        #[test]
        fn timestamps_strictly_increase(physical in proptest::collection::vec(0u64..1_000_000, 1..200)) {
            let mut clock = HlcClock::new();
            let mut previous = Hlc(0);
            for ms in physical {
                let next = clock.now(ms);
                prop_assert!(next > previous);
                previous = next;
            }
        }
    }
}
