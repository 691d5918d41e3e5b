//! Steps of the wall clock, as the store sees them: the injected clock compared with the
//! monotonic clock once a second (by the TTL sweeper). TTL expiry, the point-in-time recovery
//! window and restore times, stream iterator ages and replication timestamps all follow the
//! wall clock, so a step is worth telling the operator about: it is logged, counted
//! (`clock_steps_total`) and the last one is on `/health` (`clock`). NTP slews at most
//! 500 ppm, half a millisecond a second, far below [`CLOCK_STEP_MS_MIN`]: what differs by more
//! between two observations is a step (an NTP step, a VM resumed with its old time, a hand).

use std::time::Instant;

/// The least difference between wall and monotonic time between two observations that counts
/// as a step.
pub const CLOCK_STEP_MS_MIN: i64 = 1000;

/// What the watch saw, for `/health` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockStatus {
    pub steps_total: u64,
    /// The last step: how far the wall clock moved beyond the monotonic clock (negative: back).
    pub last_step_ms: Option<i64>,
    /// The wall clock's time just after the last step.
    pub last_step_at_unix_ms: Option<u64>,
}

#[derive(Default)]
pub struct ClockWatch {
    last: Option<(Instant, u64)>,
    status: ClockStatus,
}

impl ClockWatch {
    /// Notes the wall clock at the monotonic instant `at`; returns the step since the last
    /// observation (wall elapsed minus monotonic elapsed, ms) if there was one.
    pub fn observe(&mut self, at: Instant, wall_ms: u64) -> Option<i64> {
        let last = self.last.replace((at, wall_ms));
        let (then, then_wall) = last?;
        let monotonic = i64::try_from(at.saturating_duration_since(then).as_millis()).unwrap_or(i64::MAX);
        let wall = i64::try_from(i128::from(wall_ms) - i128::from(then_wall)).unwrap_or(i64::MAX);
        let step = wall.saturating_sub(monotonic);
        if step.abs() < CLOCK_STEP_MS_MIN {
            return None;
        }
        self.status.steps_total += 1;
        self.status.last_step_ms = Some(step);
        self.status.last_step_at_unix_ms = Some(wall_ms);
        Some(step)
    }

    pub fn status(&self) -> &ClockStatus {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steps_are_told_from_ticks_and_slews() {
        let start = Instant::now();
        let mut watch = ClockWatch::default();
        assert_eq!(watch.observe(start, 1_000_000), None, "the first observation");
        // A second later on both clocks, and a slewed one: no step.
        assert_eq!(watch.observe(start + Duration::from_secs(1), 1_001_000), None);
        assert_eq!(watch.observe(start + Duration::from_secs(2), 1_002_001), None);
        // An hour forward in a second, then back again.
        assert_eq!(
            watch.observe(start + Duration::from_secs(3), 1_003_001 + 3_600_000),
            Some(3_600_000)
        );
        assert_eq!(
            watch.observe(start + Duration::from_secs(4), 1_004_001),
            Some(-3_600_000)
        );
        assert_eq!(
            watch.status(),
            &ClockStatus {
                steps_total: 2,
                last_step_ms: Some(-3_600_000),
                last_step_at_unix_ms: Some(1_004_001),
            }
        );
        // A wall clock before the epoch's start of this store (0) is a step back, not a panic.
        assert!(watch.observe(start + Duration::from_secs(5), 0).is_some());
    }
}
