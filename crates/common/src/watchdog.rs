//! When a connection that is not serving a request must be closed: the decision, without I/O
//! or a clock of its own (times are milliseconds since the connection opened, passed in).
//!
//! A connection is in one of three phases. While a request is being served (its body read, its
//! handler run) the watchdog leaves it alone: the body read timeout belongs to the body. Between
//! requests it is idle until a byte arrives, and then receiving a request head until the
//! request is dispatched. Each of the two waits has its own timeout, so a keep-alive connection
//! may sit idle longer than a client may take to send a head.

/// The two timeouts the watchdog enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its dispatch.
    pub header_read_timeout_ms: u64,
    /// From the end of the last response (or the connection's start) to the first byte of the
    /// next request.
    pub idle_timeout_ms: u64,
}

/// What the connection's counters said at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests dispatched and not yet answered.
    pub active_requests: u32,
    /// When the first byte of the next request head arrived, if one has since the connection
    /// went idle.
    pub head_started_ms: Option<u64>,
    /// When the connection last went idle (opened, or answered its last request).
    pub idle_since_ms: u64,
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No byte of a new request within the idle timeout.
    Idle,
    /// A request head started but was not complete within the header read timeout.
    HeaderTimeout,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle timeout",
            CloseReason::HeaderTimeout => "header read timeout",
        }
    }
}

/// The watchdog's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it; look again at this time.
    Keep {
        recheck_at_ms: u64,
    },
    Close(CloseReason),
}

/// Decides for `snapshot` at `now_ms`.
pub fn verdict(timeouts: &Timeouts, snapshot: &Snapshot, now_ms: u64) -> Verdict {
    if snapshot.active_requests > 0 {
        // A request's own limits apply; look again after the shorter wait, in case it ends.
        let period = timeouts.header_read_timeout_ms.min(timeouts.idle_timeout_ms).max(1);
        return Verdict::Keep {
            recheck_at_ms: now_ms.saturating_add(period),
        };
    }
    let (deadline, reason) = match snapshot.head_started_ms {
        Some(started) => (
            started.saturating_add(timeouts.header_read_timeout_ms),
            CloseReason::HeaderTimeout,
        ),
        None => (
            snapshot.idle_since_ms.saturating_add(timeouts.idle_timeout_ms),
            CloseReason::Idle,
        ),
    };
    if now_ms >= deadline {
        Verdict::Close(reason)
    } else {
        Verdict::Keep {
            recheck_at_ms: deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read_timeout_ms: 1_000,
        idle_timeout_ms: 5_000,
    };

    #[test]
    fn idle_connection_closes_after_the_idle_timeout() {
        let idle = Snapshot {
            idle_since_ms: 100,
            ..Snapshot::default()
        };
        assert_eq!(verdict(&TIMEOUTS, &idle, 4_000), Verdict::Keep { recheck_at_ms: 5_100 });
        assert_eq!(verdict(&TIMEOUTS, &idle, 5_100), Verdict::Close(CloseReason::Idle));
    }

    #[test]
    fn a_started_head_has_the_shorter_header_timeout() {
        let receiving = Snapshot {
            idle_since_ms: 0,
            head_started_ms: Some(3_000),
            ..Snapshot::default()
        };
        assert_eq!(
            verdict(&TIMEOUTS, &receiving, 3_500),
            Verdict::Keep { recheck_at_ms: 4_000 }
        );
        assert_eq!(
            verdict(&TIMEOUTS, &receiving, 4_000),
            Verdict::Close(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn a_request_in_progress_is_left_alone() {
        let busy = Snapshot {
            active_requests: 1,
            head_started_ms: Some(0),
            idle_since_ms: 0,
        };
        assert_eq!(
            verdict(&TIMEOUTS, &busy, 1_000_000),
            Verdict::Keep {
                recheck_at_ms: 1_001_000
            }
        );
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let timeouts = Timeouts {
            header_read_timeout_ms: u64::MAX,
            idle_timeout_ms: u64::MAX,
        };
        let idle = Snapshot {
            idle_since_ms: 10,
            ..Snapshot::default()
        };
        assert_eq!(
            verdict(&timeouts, &idle, u64::MAX - 1),
            Verdict::Keep {
                recheck_at_ms: u64::MAX
            }
        );
    }
}
