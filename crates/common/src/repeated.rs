//! How often a loop that retries something unavailable logs about it.
//!
//! A loop that retries every few hundred milliseconds (the demo shop's pointer, an agent's
//! plan and reports, the controller's media lag) must not write a warning per attempt: a
//! controller down for an hour made 7,200 identical lines in the shop's log, and the one line
//! that mattered (when it started, why) scrolled away. [`Repeated`] is the rule: the first
//! failure of an outage is logged in full, then at most one summary per `interval_ms` with
//! the failures counted since the last line, and one line when it works again with the
//! outage's length and failures.
//!
//! Sans-IO: the caller passes the time (milliseconds of a monotonic clock, [`Repeated::now_ms`]
//! or a test's own) and writes the lines; this only decides which to write.
//!
//! Invariants: an outage's first failure always gets a line; no two lines of one outage are
//! closer than `interval_ms`, so an outage of `d` ms writes at most `2 + d / interval_ms`
//! lines whatever the retry rate; every failure is counted in exactly one line (a summary or
//! the recovery).

use std::time::Instant;

/// The summary interval of the loops that use [`Repeated`]: at most one line per this long
/// while the failure goes on.
pub const SUMMARY_INTERVAL_MS: u64 = 30_000;

/// What to write after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// The first failure after a success (or ever): log it in full, and that it is retried.
    First,
    /// `interval_ms` or more since the last line: log a summary.
    Summary {
        /// Failures since the last line, this one included.
        failures: u64,
        /// Since the outage's first failure, in milliseconds.
        outage_ms: u64,
    },
    /// Nothing: the failure is counted in the next line.
    Quiet,
}

/// What to write after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Failures of the outage, all of them.
    pub failures: u64,
    /// From its first failure to this success, in milliseconds.
    pub outage_ms: u64,
}

/// One repeated operation's failures: an outage starts at a failure and ends at a success.
#[derive(Clone, Debug)]
pub struct Repeated {
    interval_ms: u64,
    epoch: Instant,
    outage: Option<Outage>,
}

#[derive(Clone, Copy, Debug)]
struct Outage {
    started_ms: u64,
    last_line_ms: u64,
    /// Failures not yet counted in a line.
    unlogged: u64,
    total: u64,
}

impl Repeated {
    /// At most one summary per `interval_ms` milliseconds.
    pub fn new(interval_ms: u64) -> Repeated {
        Repeated {
            interval_ms,
            epoch: Instant::now(),
            outage: None,
        }
    }

    /// Milliseconds of the monotonic clock since this was made (the time the loops pass).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an outage is going on (the last attempt failed).
    pub fn failing(&self) -> bool {
        self.outage.is_some()
    }

    /// One failed attempt at `now_ms`: which line to write.
    pub fn failure(&mut self, now_ms: u64) -> Failed {
        let Some(outage) = &mut self.outage else {
            self.outage = Some(Outage {
                started_ms: now_ms,
                last_line_ms: now_ms,
                unlogged: 0,
                total: 1,
            });
            return Failed::First;
        };
        outage.total = outage.total.saturating_add(1);
        outage.unlogged = outage.unlogged.saturating_add(1);
        if now_ms.saturating_sub(outage.last_line_ms) < self.interval_ms {
            return Failed::Quiet;
        }
        outage.last_line_ms = now_ms;
        Failed::Summary {
            failures: std::mem::take(&mut outage.unlogged),
            outage_ms: now_ms.saturating_sub(outage.started_ms),
        }
    }

    /// One successful attempt at `now_ms`: the outage it ends, if one was going on.
    pub fn success(&mut self, now_ms: u64) -> Option<Recovered> {
        let outage = self.outage.take()?;
        Some(Recovered {
            failures: outage.total,
            outage_ms: now_ms.saturating_sub(outage.started_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_then_one_summary_per_interval_then_the_recovery() {
        let mut log = Repeated::new(30_000);
        assert!(!log.failing());
        assert_eq!(log.success(0), None, "nothing to report without an outage");
        assert_eq!(log.failure(1_000), Failed::First);
        assert!(log.failing());
        // Every 500 ms for a minute: two summaries, each 30 s after the line before.
        let mut lines = Vec::new();
        for attempt in 1..=120u64 {
            let now = 1_000 + attempt * 500;
            match log.failure(now) {
                Failed::Quiet => {}
                line => lines.push((now, line)),
            }
        }
        assert_eq!(
            lines,
            vec![
                (
                    31_000,
                    Failed::Summary {
                        failures: 60,
                        outage_ms: 30_000
                    }
                ),
                (
                    61_000,
                    Failed::Summary {
                        failures: 60,
                        outage_ms: 60_000
                    }
                ),
            ]
        );
        assert_eq!(
            log.success(61_200),
            Some(Recovered {
                failures: 121,
                outage_ms: 60_200
            })
        );
        assert!(!log.failing());
        // The next outage starts over with a full line.
        assert_eq!(log.failure(61_700), Failed::First);
        assert_eq!(log.failure(62_000), Failed::Quiet);
        assert_eq!(
            log.success(62_500),
            Some(Recovered {
                failures: 2,
                outage_ms: 800
            })
        );
    }

    #[test]
    fn a_slow_retry_gets_a_summary_at_each_attempt_past_the_interval() {
        let mut log = Repeated::new(30_000);
        assert_eq!(log.failure(0), Failed::First);
        assert_eq!(
            log.failure(60_000),
            Failed::Summary {
                failures: 1,
                outage_ms: 60_000
            }
        );
        assert_eq!(
            log.failure(u64::MAX),
            Failed::Summary {
                failures: 1,
                outage_ms: u64::MAX
            }
        );
        // A clock that went back (a caller's mistake) writes nothing rather than panicking.
        assert_eq!(log.failure(5), Failed::Quiet);
    }
}
