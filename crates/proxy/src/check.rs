//! The health state machine of one server, with HAProxy's semantics (sans-IO: results in,
//! transitions and the next check interval out; no clock, no sockets).
//!
//! The counter is `common::rise_fall::RiseFall`, the one the controller's checks use too.
//! As in HAProxy, `health` counts from 0 to `rise + fall - 1`; the server is up while
//! `health >= rise`. A success raises it by one and, on reaching `rise`, jumps it to the top; a
//! failure lowers it by one while above `rise` and otherwise drops it to 0 (down). A server
//! starts up with `health = rise`, so the first failed check takes it down ("up, but will fall
//! down at first failure"), and a down server needs `rise` consecutive successes to return.
//! Passive observation (`observe layer7`, `on-error mark-down`) drops health to 0 after
//! `error_limit` consecutive errors on live traffic.

use common::rise_fall::RiseFall;
use serde::Serialize;

/// The parameters, with HAProxy's names (intervals in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckParams {
    pub rise: u32,
    pub fall: u32,
    pub inter_ms: u64,
    pub fastinter_ms: u64,
    pub downinter_ms: u64,
    /// Consecutive traffic errors that mark the server down; `None` turns observation off.
    pub error_limit: Option<u32>,
}

impl Default for CheckParams {
    fn default() -> Self {
        CheckParams {
            rise: 2,
            fall: 3,
            inter_ms: 2000,
            fastinter_ms: 2000,
            downinter_ms: 2000,
            error_limit: Some(10),
        }
    }
}

/// A change of the server's health, to be logged and applied by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Transition {
    Up,
    Down,
}

/// What one request to the server showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx response, a connection error or a response timeout.
    Error,
}

#[derive(Clone, Debug)]
pub struct CheckState {
    params: CheckParams,
    /// HAProxy's health counter (`common::rise_fall`, shared with the controller's checks).
    counter: RiseFall,
    consecutive_errors: u32,
}

impl CheckState {
    pub fn new(params: CheckParams) -> CheckState {
        let params = CheckParams {
            rise: params.rise.max(1),
            fall: params.fall.max(1),
            ..params
        };
        CheckState {
            counter: RiseFall::new(params.rise, params.fall, params.rise),
            params,
            consecutive_errors: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.counter.is_up()
    }

    /// `0..=rise+fall-1`; for status lines such as HAProxy's "UP 2/3".
    pub fn health(&self) -> u32 {
        self.counter.health()
    }

    pub fn params(&self) -> &CheckParams {
        &self.params
    }

    /// A human status like HAProxy's stats page: "UP", "UP 2/3" (failing), "DOWN", "DOWN 1/2" (rising).
    pub fn status(&self) -> String {
        let (rise, fall, health) = (self.params.rise, self.params.fall, self.counter.health());
        if self.is_up() {
            if health == self.counter.top() {
                "UP".into()
            } else {
                format!("UP {}/{}", health - rise + 1, fall)
            }
        } else if health == 0 {
            "DOWN".into()
        } else {
            format!("DOWN {health}/{rise}")
        }
    }

    /// Applies one active check result.
    pub fn on_check(&mut self, success: bool) -> Option<Transition> {
        let was_up = self.is_up();
        if success {
            self.counter.success();
            if self.is_up() {
                self.consecutive_errors = 0;
            }
        } else {
            self.counter.failure();
        }
        self.transition_from(was_up)
    }

    /// Applies what one proxied request showed.
    pub fn on_traffic(&mut self, observation: Observation) -> Option<Transition> {
        match observation {
            Observation::Success => {
                self.consecutive_errors = 0;
                None
            }
            Observation::Error => {
                self.consecutive_errors = self.consecutive_errors.saturating_add(1);
                let limit = self.params.error_limit?;
                if self.is_up() && self.consecutive_errors >= limit {
                    self.counter.mark_down();
                    self.consecutive_errors = 0;
                    return Some(Transition::Down);
                }
                None
            }
        }
    }

    /// When the next active check is due: `inter` when fully up, `downinter` when fully down,
    /// `fastinter` while changing state (HAProxy's `srv_getinter`).
    pub fn next_interval_ms(&self) -> u64 {
        if self.counter.health() == self.counter.top() {
            self.params.inter_ms
        } else if self.counter.health() == 0 {
            self.params.downinter_ms
        } else {
            self.params.fastinter_ms
        }
    }

    fn transition_from(&self, was_up: bool) -> Option<Transition> {
        match (was_up, self.is_up()) {
            (false, true) => Some(Transition::Up),
            (true, false) => Some(Transition::Down),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CheckParams {
        CheckParams {
            rise: 2,
            fall: 3,
            inter_ms: 2000,
            fastinter_ms: 500,
            downinter_ms: 5000,
            error_limit: Some(3),
        }
    }

    #[test]
    fn starts_up_and_falls_at_the_first_failure() {
        let mut state = CheckState::new(params());
        assert!(state.is_up());
        assert_eq!(state.on_check(false), Some(Transition::Down));
        assert!(!state.is_up());
        assert_eq!(state.status(), "DOWN");
    }

    #[test]
    fn a_fully_up_server_needs_fall_failures_to_go_down() {
        let mut state = CheckState::new(params());
        assert_eq!(state.on_check(true), None);
        assert_eq!(state.status(), "UP");
        assert_eq!(state.on_check(false), None);
        assert_eq!(state.status(), "UP 2/3");
        assert_eq!(state.on_check(false), None);
        assert_eq!(state.status(), "UP 1/3");
        assert_eq!(state.on_check(false), Some(Transition::Down));
    }

    #[test]
    fn a_success_while_failing_restores_full_health() {
        let mut state = CheckState::new(params());
        state.on_check(true);
        state.on_check(false);
        state.on_check(false);
        assert_eq!(state.on_check(true), None);
        assert_eq!(state.status(), "UP");
        state.on_check(false);
        state.on_check(false);
        assert!(state.is_up(), "the count restarted after the success");
    }

    #[test]
    fn a_down_server_needs_rise_successes() {
        let mut state = CheckState::new(params());
        state.on_check(false);
        assert_eq!(state.on_check(true), None);
        assert_eq!(state.status(), "DOWN 1/2");
        assert_eq!(state.on_check(true), Some(Transition::Up));
        assert_eq!(state.status(), "UP");
    }

    #[test]
    fn a_failure_while_rising_starts_over() {
        let mut state = CheckState::new(params());
        state.on_check(false);
        state.on_check(true);
        state.on_check(false);
        assert_eq!(state.health(), 0);
        state.on_check(true);
        assert!(!state.is_up());
        assert_eq!(state.on_check(true), Some(Transition::Up));
    }

    #[test]
    fn intervals_follow_inter_fastinter_downinter() {
        let mut state = CheckState::new(params());
        assert_eq!(state.next_interval_ms(), 500, "starting up counts as a transition");
        state.on_check(true);
        assert_eq!(state.next_interval_ms(), 2000);
        state.on_check(false);
        assert_eq!(state.next_interval_ms(), 500);
        state.on_check(false);
        state.on_check(false);
        assert_eq!(state.next_interval_ms(), 5000);
        state.on_check(true);
        assert_eq!(state.next_interval_ms(), 500);
    }

    #[test]
    fn consecutive_traffic_errors_mark_down_early() {
        let mut state = CheckState::new(params());
        state.on_check(true);
        assert_eq!(state.on_traffic(Observation::Error), None);
        assert_eq!(state.on_traffic(Observation::Error), None);
        assert_eq!(state.on_traffic(Observation::Success), None);
        assert_eq!(state.on_traffic(Observation::Error), None);
        assert_eq!(state.on_traffic(Observation::Error), None);
        assert_eq!(state.on_traffic(Observation::Error), Some(Transition::Down));
        assert_eq!(state.status(), "DOWN");
        assert_eq!(state.on_check(true), None);
        assert_eq!(state.on_check(true), Some(Transition::Up));
    }

    #[test]
    fn observation_off_never_marks_down() {
        let mut state = CheckState::new(CheckParams {
            error_limit: None,
            ..params()
        });
        for _ in 0..100 {
            assert_eq!(state.on_traffic(Observation::Error), None);
        }
        assert!(state.is_up());
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut state = CheckState::new(CheckParams {
            rise: 1,
            fall: 1,
            ..params()
        });
        assert_eq!(state.on_check(false), Some(Transition::Down));
        assert_eq!(state.on_check(true), Some(Transition::Up));
    }

    /// Seeded: any sequence of results keeps health in range and the transitions consistent
    /// with `is_up`. Replay with `SWITCHYARD_SEED`.
    #[test]
    fn randomized_results_keep_invariants() {
        let seed = common::rng::seed_from_env("randomized_results_keep_invariants");
        let mut rng = common::rng::Rng::new(seed);
        for _ in 0..200 {
            let p = CheckParams {
                rise: 1 + (rng.next_u64() % 5) as u32,
                fall: 1 + (rng.next_u64() % 5) as u32,
                error_limit: Some(1 + (rng.next_u64() % 5) as u32),
                ..params()
            };
            let mut state = CheckState::new(p);
            let mut successes_in_row = 0;
            for _ in 0..200 {
                let was_up = state.is_up();
                let transition = match rng.next_u64() % 3 {
                    0 => {
                        successes_in_row = 0;
                        state.on_check(false)
                    }
                    1 => {
                        successes_in_row += 1;
                        state.on_check(true)
                    }
                    _ => {
                        let t = state.on_traffic(Observation::Error);
                        if t.is_some() {
                            successes_in_row = 0;
                        }
                        t
                    }
                };
                assert!(state.health() < p.rise + p.fall, "seed {seed}");
                match transition {
                    Some(Transition::Up) => assert!(!was_up && state.is_up(), "seed {seed}"),
                    Some(Transition::Down) => assert!(was_up && !state.is_up(), "seed {seed}"),
                    None => assert_eq!(was_up, state.is_up(), "seed {seed}"),
                }
                if successes_in_row >= p.rise {
                    assert!(state.is_up(), "rise successes in a row bring it up; seed {seed}");
                }
            }
        }
    }
}
