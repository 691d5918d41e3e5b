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

/// A remote timestamp ahead of the local physical clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewReport {
    pub ahead_ms: u64,
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

    /// Folds in a timestamp received from another region, so that every later local write is
    /// ordered after it. Returns a skew report when the remote clock runs ahead by more than
    /// [`SKEW_REPORT_MS`].
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Option<SkewReport> {
        if remote > self.last {
            self.last = remote;
        }
        let ahead_ms = remote.physical_ms().saturating_sub(physical_ms);
        (ahead_ms > SKEW_REPORT_MS).then_some(SkewReport { ahead_ms })
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
        let report = clock.observe(remote, 45_000);
        assert_eq!(report, Some(SkewReport { ahead_ms: 5_000 }));
        assert!(clock.now(45_001) > remote);
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
