//! The rise/fall state machine of one check, with HAProxy's semantics. Sans-IO: feed it probe
//! outcomes with the time, it says the state and how long to wait before the next probe.
//!
//! The health counter is `common::rise_fall::RiseFall`, the one the proxy's server checks use:
//! `h` in `0..=rise + fall - 1`, up while `h >= rise`. A success raises `h` by one and snaps it
//! to full health once it reaches `rise`; a failure lowers it by one and snaps it to zero once
//! it falls below `rise`. So a fully up check goes down after `fall` consecutive failures, a
//! down one comes up after `rise` consecutive successes, and an up check that alternates
//! failures and successes never goes down.
//!
//! Probe spacing: `inter` while fully up, `fastinter` while transitioning (up with `h` below
//! full, or down with `h` above zero), `downinter` while fully down.

use common::rise_fall::RiseFall;

use crate::report::CheckStatus;
use crate::spec::CheckSpec;

/// The timing and thresholds of one check (taken from its `CheckSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval_ms: u64,
    pub fast_interval_ms: u64,
    pub down_interval_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl From<&CheckSpec> for Timing {
    fn from(spec: &CheckSpec) -> Timing {
        Timing {
            interval_ms: spec.interval_ms,
            fast_interval_ms: spec.fast_interval_ms,
            down_interval_ms: spec.effective_down_interval_ms(),
            rise: spec.rise.max(1),
            fall: spec.fall.max(1),
        }
    }
}

/// Where a check starts (HAProxy's `init-state`, plus `FirstProbe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialState {
    /// No state until the probes say: the first success sets it up at full health, `fall`
    /// consecutive failures set it down at zero. Nothing is claimed before anything was
    /// observed, and a check that just started (an agent restarted, a plan changed) needs the
    /// same `fall` failures as a running one before it votes a region down — one failed probe
    /// at the wrong moment is no outage (Route 53 likewise holds a new check healthy until it
    /// has enough data). Until then the check reports nothing (the controller counts it
    /// unknown) and is probed at `fastinter`. The default.
    #[default]
    FirstProbe,
    /// Up, but the first failure brings it down (HAProxy `up`).
    Up,
    /// Up at full health: `fall` failures bring it down (HAProxy `fully-up`).
    FullyUp,
    /// Down, but the first success brings it up (HAProxy `down`).
    Down,
    /// Down at zero: `rise` successes bring it up (HAProxy `fully-down`).
    FullyDown,
}

/// What one recorded probe outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The new status if it changed (or was first set).
    pub changed: Option<CheckStatus>,
    /// Wait this long before the next probe.
    pub next_delay_ms: u64,
}

/// The state of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    timing: Timing,
    status: Option<CheckStatus>,
    counter: RiseFall,
    since_ms: u64,
    /// Consecutive failures while no status is set yet (`FirstProbe`).
    first_failures: u32,
}

impl CheckState {
    pub fn new(timing: Timing, initial: InitialState, now_ms: u64) -> CheckState {
        let timing = Timing {
            rise: timing.rise.max(1),
            fall: timing.fall.max(1),
            ..timing
        };
        let full = timing.rise + timing.fall - 1;
        let (status, health) = match initial {
            InitialState::FirstProbe => (None, 0),
            InitialState::Up => (Some(CheckStatus::Up), timing.rise),
            InitialState::FullyUp => (Some(CheckStatus::Up), full),
            InitialState::Down => (Some(CheckStatus::Down), timing.rise - 1),
            InitialState::FullyDown => (Some(CheckStatus::Down), 0),
        };
        CheckState {
            counter: RiseFall::new(timing.rise, timing.fall, health),
            timing,
            status,
            since_ms: now_ms,
            first_failures: 0,
        }
    }

    /// `None` only while a `FirstProbe` check has seen no success and fewer than `fall`
    /// consecutive failures.
    pub fn status(&self) -> Option<CheckStatus> {
        self.status
    }

    /// When the status last changed (or the machine was created).
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// HAProxy's health counter, `0..=rise + fall - 1`.
    pub fn health(&self) -> u32 {
        self.counter.health()
    }

    /// Records one probe outcome observed at `now_ms`.
    pub fn record(&mut self, success: bool, now_ms: u64) -> Step {
        let changed = match self.status {
            // Undecided: a success sets it up at full health; `fall` consecutive failures set
            // it down at zero.
            None if success => {
                self.counter = RiseFall::new(self.timing.rise, self.timing.fall, self.counter.top());
                Some(self.flip(CheckStatus::Up, now_ms))
            }
            None => {
                self.first_failures += 1;
                (self.first_failures >= self.timing.fall).then(|| {
                    self.counter = RiseFall::new(self.timing.rise, self.timing.fall, 0);
                    self.flip(CheckStatus::Down, now_ms)
                })
            }
            Some(before) => {
                if success {
                    self.counter.success();
                } else {
                    self.counter.failure();
                }
                let after = if self.counter.is_up() {
                    CheckStatus::Up
                } else {
                    CheckStatus::Down
                };
                (after != before).then(|| self.flip(after, now_ms))
            }
        };
        Step {
            changed,
            next_delay_ms: self.next_delay_ms(),
        }
    }

    fn flip(&mut self, status: CheckStatus, now_ms: u64) -> CheckStatus {
        self.status = Some(status);
        self.since_ms = now_ms;
        status
    }

    /// The delay before the next probe in the current state.
    pub fn next_delay_ms(&self) -> u64 {
        match self.status {
            None if self.first_failures == 0 => 0,
            None => self.timing.fast_interval_ms,
            Some(CheckStatus::Up) if self.counter.health() >= self.counter.top() => self.timing.interval_ms,
            Some(CheckStatus::Down) if self.counter.health() == 0 => self.timing.down_interval_ms,
            Some(_) => self.timing.fast_interval_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use CheckStatus::{Down, Up};

    fn timing(rise: u32, fall: u32) -> Timing {
        Timing {
            interval_ms: 1000,
            fast_interval_ms: 250,
            down_interval_ms: 5000,
            rise,
            fall,
        }
    }

    #[test]
    fn first_probe_decides_then_hysteresis() {
        let mut state = CheckState::new(timing(2, 3), InitialState::FirstProbe, 0);
        assert_eq!(state.status(), None);
        assert_eq!(state.next_delay_ms(), 0);
        let step = state.record(true, 10);
        assert_eq!(step.changed, Some(Up));
        assert_eq!(step.next_delay_ms, 1000);
        assert_eq!(state.since_ms(), 10);
        // Fully up: fall = 3 failures, probed at fastinter after the first.
        assert_eq!(
            state.record(false, 20),
            Step {
                changed: None,
                next_delay_ms: 250
            }
        );
        assert_eq!(
            state.record(false, 30),
            Step {
                changed: None,
                next_delay_ms: 250
            }
        );
        assert_eq!(
            state.record(false, 40),
            Step {
                changed: Some(Down),
                next_delay_ms: 5000
            }
        );
        assert_eq!(state.since_ms(), 40);
        // Fully down: rise = 2 successes.
        assert_eq!(
            state.record(true, 50),
            Step {
                changed: None,
                next_delay_ms: 250
            }
        );
        assert_eq!(
            state.record(true, 60),
            Step {
                changed: Some(Up),
                next_delay_ms: 1000
            }
        );
    }

    #[test]
    fn a_new_check_goes_down_only_after_fall_failures_in_a_row() {
        let mut state = CheckState::new(timing(2, 3), InitialState::FirstProbe, 0);
        assert_eq!(
            state.record(false, 5),
            Step {
                changed: None,
                next_delay_ms: 250
            },
            "one failure claims nothing; probed again at fastinter"
        );
        assert_eq!(state.status(), None);
        assert_eq!(state.record(false, 6).changed, None);
        assert_eq!(state.record(false, 7).changed, Some(Down));
        assert_eq!(state.health(), 0);
        assert_eq!(state.since_ms(), 7);
        assert_eq!(state.next_delay_ms(), 5000);
        // A success while undecided sets it up at full health.
        let mut state = CheckState::new(timing(2, 3), InitialState::FirstProbe, 0);
        assert_eq!(state.record(false, 1).changed, None);
        assert_eq!(state.record(false, 2).changed, None);
        assert_eq!(state.record(true, 3).changed, Some(Up));
        assert_eq!(state.health(), 4);
        // fall = 1: the first failure decides, as before.
        let mut state = CheckState::new(timing(2, 1), InitialState::FirstProbe, 0);
        assert_eq!(state.record(false, 1).changed, Some(Down));
    }

    #[test]
    fn haproxy_init_states() {
        let mut up = CheckState::new(timing(2, 3), InitialState::Up, 0);
        assert_eq!(up.status(), Some(Up));
        assert_eq!(up.next_delay_ms(), 250, "transitional until full");
        assert_eq!(up.record(false, 1).changed, Some(Down));

        let mut fully_up = CheckState::new(timing(2, 3), InitialState::FullyUp, 0);
        assert_eq!(fully_up.next_delay_ms(), 1000);
        assert_eq!(fully_up.record(false, 1).changed, None);
        assert_eq!(fully_up.record(false, 2).changed, None);
        assert_eq!(fully_up.record(false, 3).changed, Some(Down));

        let mut down = CheckState::new(timing(2, 3), InitialState::Down, 0);
        assert_eq!(down.status(), Some(Down));
        assert_eq!(down.record(true, 1).changed, Some(Up));

        let mut fully_down = CheckState::new(timing(2, 3), InitialState::FullyDown, 0);
        assert_eq!(fully_down.record(true, 1).changed, None);
        assert_eq!(fully_down.record(true, 2).changed, Some(Up));
    }

    #[test]
    fn alternating_failures_do_not_bring_a_healthy_check_down() {
        let mut state = CheckState::new(timing(2, 3), InitialState::FullyUp, 0);
        for t in 0..100 {
            assert_eq!(state.record(t % 2 == 0, t).changed, None);
        }
        assert_eq!(state.status(), Some(Up));
    }

    #[test]
    fn counts_are_consecutive_as_in_haproxy() {
        // Rising: a failure sends the count back to zero, so `rise` successes in a row are needed.
        let mut state = CheckState::new(timing(3, 2), InitialState::FullyDown, 0);
        state.record(true, 1);
        state.record(true, 2);
        assert_eq!(state.record(false, 3).changed, None);
        assert_eq!(state.health(), 0);
        assert_eq!(state.record(true, 4).changed, None);
        assert_eq!(state.record(true, 5).changed, None);
        assert_eq!(state.record(true, 6).changed, Some(Up));
        // Falling: a success restores full health, so `fall` failures in a row are needed.
        let mut state = CheckState::new(timing(2, 3), InitialState::FullyUp, 0);
        state.record(false, 1);
        state.record(false, 2);
        state.record(true, 3);
        assert_eq!(state.health(), 4);
        assert_eq!(state.record(false, 4).changed, None);
        assert_eq!(state.record(false, 5).changed, None);
        assert_eq!(state.record(false, 6).changed, Some(Down));
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut state = CheckState::new(timing(1, 1), InitialState::FullyUp, 0);
        assert_eq!(state.record(false, 1).changed, Some(Down));
        assert_eq!(state.record(true, 2).changed, Some(Up));
        assert_eq!(state.next_delay_ms(), 1000);
    }

    fn initial() -> impl Strategy<Value = InitialState> {
        prop_oneof![
            Just(InitialState::FirstProbe),
            Just(InitialState::Up),
            Just(InitialState::FullyUp),
            Just(InitialState::Down),
            Just(InitialState::FullyDown),
        ]
    }

    proptest! {
        #[test]
        fn rise_fall_invariants(
            rise in 1u32..6,
            fall in 1u32..6,
            initial in initial(),
            outcomes in proptest::collection::vec(any::<bool>(), 0..80),
        ) {
            let timing = timing(rise, fall);
            let mut state = CheckState::new(timing, initial, 0);
            let mut run_successes = 0u32;
            let mut run_failures = 0u32;
            for (t, success) in outcomes.into_iter().enumerate() {
                let before = state.status();
                let step = state.record(success, t as u64);
                let after = state.status();
                if success { run_successes += 1; run_failures = 0 } else { run_failures += 1; run_successes = 0 }
                // Only a success brings a check up and only a failure brings it down.
                if before == Some(Down) && after == Some(Up) { prop_assert!(success); }
                if before == Some(Up) && after == Some(Down) { prop_assert!(!success); }
                prop_assert_eq!(step.changed.is_some(), before != after);
                // Enough consecutive outcomes always settle the state.
                if run_failures >= fall { prop_assert_eq!(after, Some(Down)); }
                if run_successes >= rise { prop_assert_eq!(after, Some(Up)); }
                prop_assert!(state.health() < rise + fall);
                prop_assert_eq!(after == Some(Up), state.health() >= rise);
                prop_assert!([timing.interval_ms, timing.fast_interval_ms, timing.down_interval_ms]
                    .contains(&step.next_delay_ms));
            }
        }

        #[test]
        fn fewer_than_fall_failures_never_bring_a_fresh_up_down(
            rise in 1u32..6,
            fall in 1u32..6,
            outcomes in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let mut state = CheckState::new(timing(rise, fall), InitialState::FullyUp, 0);
            let failures = outcomes.iter().filter(|s| !**s).count() as u32;
            for (t, success) in outcomes.into_iter().enumerate() {
                state.record(success, t as u64);
            }
            if failures < fall {
                prop_assert_eq!(state.status(), Some(Up));
            }
        }
    }
}
