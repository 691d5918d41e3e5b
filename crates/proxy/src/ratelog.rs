//! Rate limiting for log lines about bad input, so a flood of bad clients cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one line per kind in this many milliseconds; the next line says how many were skipped.
pub const LOG_INTERVAL_MS: u64 = 1000;

#[derive(Default)]
pub struct RateLimitedLog {
    /// Time of the last line plus one (0: never logged).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    /// `Some(lines skipped since the last one)` when a line may be written at `now_ms`.
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && stamp < last + LOG_INTERVAL_MS {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_skipped_count() {
        let log = RateLimitedLog::default();
        assert_eq!(log.allow(0), Some(0));
        assert_eq!(log.allow(10), None);
        assert_eq!(log.allow(999), None);
        assert_eq!(log.allow(1000), Some(2));
        assert_eq!(log.allow(1500), None);
        assert_eq!(log.allow(5000), Some(1));
    }
}
