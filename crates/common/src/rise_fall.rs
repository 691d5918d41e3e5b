//! HAProxy's health counter of one check, the one rule the proxy's server checks and the
//! controller's health checks share (HAProxy's `set_server_check_status`).
//!
//! The counter runs from 0 to `rise + fall - 1`; the check is up while it is at least `rise`.
//! A success raises it by one and, once it reaches `rise`, sets it to the top; a failure lowers
//! it by one and, once it falls below `rise`, sets it to 0. So an up check goes down after
//! `fall` consecutive failures from the top and a down one comes up after `rise` consecutive
//! successes from 0; a success in between restores an up check to full health, and a failure
//! sends a rising check back to 0.

/// The counter and its thresholds (`rise` and `fall` of at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    health: u32,
}

impl RiseFall {
    /// A counter at `health` (at most the top); `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32, health: u32) -> RiseFall {
        let (rise, fall) = (rise.max(1), fall.max(1));
        RiseFall {
            rise,
            fall,
            health: health.min(rise + fall - 1),
        }
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// `rise + fall - 1`: full health.
    pub fn top(&self) -> u32 {
        self.rise + self.fall - 1
    }

    /// `0..=top()`.
    pub fn health(&self) -> u32 {
        self.health
    }

    pub fn is_up(&self) -> bool {
        self.health >= self.rise
    }

    /// One successful check.
    pub fn success(&mut self) {
        if self.health < self.top() {
            self.health += 1;
            if self.health >= self.rise {
                self.health = self.top();
            }
        }
    }

    /// One failed check.
    pub fn failure(&mut self) {
        if self.health > 0 {
            self.health -= 1;
            if self.health < self.rise {
                self.health = 0;
            }
        }
    }

    /// Down at once, at zero health (HAProxy's `on-error mark-down`).
    pub fn mark_down(&mut self) {
        self.health = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_up_check_needs_fall_consecutive_failures_and_a_success_restores_it() {
        let mut check = RiseFall::new(2, 3, 4);
        check.failure();
        check.failure();
        assert!(check.is_up());
        assert_eq!(check.health(), 2);
        check.success();
        assert_eq!(check.health(), 4, "a success restores full health");
        for _ in 0..2 {
            check.failure();
        }
        assert!(check.is_up());
        check.failure();
        assert!(!check.is_up());
        assert_eq!(check.health(), 0);
    }

    #[test]
    fn a_down_check_needs_rise_consecutive_successes() {
        let mut check = RiseFall::new(3, 2, 0);
        check.success();
        check.success();
        assert!(!check.is_up());
        check.failure();
        assert_eq!(check.health(), 0, "a failure sends a rising check back to zero");
        for _ in 0..3 {
            check.success();
        }
        assert!(check.is_up());
        assert_eq!(check.health(), check.top());
    }

    #[test]
    fn bounds_hold_and_thresholds_are_at_least_one() {
        let mut check = RiseFall::new(0, 0, 9);
        assert_eq!((check.rise(), check.fall(), check.top(), check.health()), (1, 1, 1, 1));
        check.success();
        assert_eq!(check.health(), 1);
        check.failure();
        check.failure();
        assert_eq!(check.health(), 0);
        let mut marked = RiseFall::new(2, 3, 4);
        marked.mark_down();
        assert!(!marked.is_up());
    }
}
