//! Shipping one region's replication log to one peer: in order, one batch in flight
//! (back-pressure), retried with capped exponential backoff, and handed over to anti-entropy
//! when the log no longer holds what the peer needs.
//!
//! The log is a sequence of changes numbered from 1. The peer acknowledges a batch only after
//! applying it durably, answering with the highest sequence number it holds; that number is
//! the shipper's `acked`, the trim point for this peer.

/// Limits of one peer's shipping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShipperConfig {
    /// Changes per batch at most.
    pub batch_changes_max: usize,
    /// A batch not answered within this is counted as failed.
    pub request_timeout_ms: u64,
    /// First retry delay; doubles per consecutive failure up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// An anti-entropy repair not finished within this is counted as failed and started again.
    pub repair_timeout_ms: u64,
}

impl Default for ShipperConfig {
    fn default() -> ShipperConfig {
        ShipperConfig {
            batch_changes_max: 500,
            request_timeout_ms: 5_000,
            retry_initial_ms: 50,
            retry_max_ms: 5_000,
            repair_timeout_ms: 60_000,
        }
    }
}

/// What the runtime must do next for this peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read up to `changes_max` changes starting at `from_seq` and send them as batch `batch`.
    Send {
        batch: u64,
        from_seq: u64,
        changes_max: usize,
    },
    /// The log was trimmed past what the peer holds: run anti-entropy with the peer, then
    /// report [`Shipper::on_repaired`] with the log head at the start of the repair.
    Repair { batch: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    InFlight {
        batch: u64,
        deadline_ms: u64,
    },
    Backoff {
        until_ms: u64,
    },
    NeedsRepair,
    Repairing {
        batch: u64,
        deadline_ms: u64,
    },
    /// A repair failed: start it again at `until_ms` (the same capped backoff as batches).
    RepairBackoff {
        until_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Shipper {
    config: ShipperConfig,
    /// The peer holds every change up to and including this sequence number.
    acked: u64,
    /// The last sequence number in the local log.
    head: u64,
    /// The first sequence number still in the local log (earlier ones were trimmed).
    first_available: u64,
    state: State,
    next_batch: u64,
    failures: u32,
}

impl Shipper {
    /// `acked` is the peer's durable position as last recorded (0 for a new peer).
    pub fn new(config: ShipperConfig, acked: u64, head: u64, first_available: u64) -> Shipper {
        let mut shipper = Shipper {
            config,
            acked,
            head,
            first_available: first_available.max(1),
            state: State::Idle,
            next_batch: 1,
            failures: 0,
        };
        shipper.check_trim();
        shipper
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Changes the peer does not have yet.
    pub fn pending(&self) -> u64 {
        self.head.saturating_sub(self.acked)
    }

    pub fn needs_repair(&self) -> bool {
        matches!(
            self.state,
            State::NeedsRepair | State::Repairing { .. } | State::RepairBackoff { .. }
        )
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn on_appended(&mut self, head: u64) {
        self.head = self.head.max(head);
    }

    /// The local log dropped everything before `first_available`.
    pub fn on_trimmed(&mut self, first_available: u64) {
        self.first_available = self.first_available.max(first_available);
        self.check_trim();
    }

    fn check_trim(&mut self) {
        if self.acked + 1 < self.first_available && !self.needs_repair() {
            self.state = State::NeedsRepair;
        }
    }

    /// Asks for a full anti-entropy repair (e.g. to backfill a new replica), unless one runs.
    pub fn request_repair(&mut self) {
        if !self.needs_repair() {
            self.state = State::NeedsRepair;
        }
    }

    /// The peer applied batch `batch` and now holds everything through `through_seq`.
    pub fn on_acked(&mut self, batch: u64, through_seq: u64) {
        if self.in_flight() == Some(batch) {
            self.acked = self.acked.max(through_seq.min(self.head));
            self.failures = 0;
            self.state = State::Idle;
        }
    }

    /// The peer refused the batch because it expects `expected_from` next (a gap after its
    /// restore, or a replay): resume from there.
    pub fn on_gap(&mut self, batch: u64, expected_from: u64) {
        if self.in_flight() == Some(batch) {
            self.acked = expected_from.saturating_sub(1).min(self.head);
            self.state = State::Idle;
            self.check_trim();
        }
    }

    pub fn on_failed(&mut self, batch: u64, now_ms: u64) {
        if self.in_flight() == Some(batch) || matches!(self.state, State::Repairing { batch: b, .. } if b == batch) {
            let repairing = matches!(self.state, State::Repairing { .. });
            self.failures = self.failures.saturating_add(1);
            let delay = self
                .config
                .retry_initial_ms
                .saturating_mul(1u64 << self.failures.saturating_sub(1).min(20))
                .min(self.config.retry_max_ms);
            self.state = if repairing {
                State::RepairBackoff {
                    until_ms: now_ms + delay,
                }
            } else {
                State::Backoff {
                    until_ms: now_ms + delay,
                }
            };
        }
    }

    /// The peer was heard from (it sent an authenticated request): a batch or repair waiting
    /// out its backoff is due now. The failure count stays, so another failure backs off
    /// further; a peer is heard at most as often as it sends marks (about once a second).
    pub fn on_peer_heard(&mut self, now_ms: u64) {
        match &mut self.state {
            State::Backoff { until_ms } | State::RepairBackoff { until_ms } => {
                *until_ms = (*until_ms).min(now_ms);
            }
            _ => {}
        }
    }

    /// Anti-entropy finished: the peer holds everything through `through_seq`.
    pub fn on_repaired(&mut self, batch: u64, through_seq: u64) {
        if matches!(self.state, State::Repairing { batch: b, .. } if b == batch) {
            self.acked = through_seq.min(self.head);
            self.failures = 0;
            self.state = State::Idle;
            self.check_trim();
        }
    }

    fn in_flight(&self) -> Option<u64> {
        match self.state {
            State::InFlight { batch, .. } => Some(batch),
            _ => None,
        }
    }

    /// The next command, if any is due at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Command> {
        match self.state.clone() {
            State::InFlight { batch, deadline_ms } if now_ms >= deadline_ms => {
                self.on_failed(batch, now_ms);
                None
            }
            State::Backoff { until_ms } if now_ms >= until_ms => {
                self.state = State::Idle;
                self.poll(now_ms)
            }
            State::Idle if self.acked < self.head => {
                let batch = self.take_batch_id();
                self.state = State::InFlight {
                    batch,
                    deadline_ms: now_ms + self.config.request_timeout_ms,
                };
                Some(Command::Send {
                    batch,
                    from_seq: self.acked + 1,
                    changes_max: self.config.batch_changes_max,
                })
            }
            State::Repairing { batch, deadline_ms } if now_ms >= deadline_ms => {
                self.on_failed(batch, now_ms);
                self.poll(now_ms)
            }
            State::RepairBackoff { until_ms } if now_ms >= until_ms => {
                self.state = State::NeedsRepair;
                self.poll(now_ms)
            }
            State::NeedsRepair => {
                let batch = self.take_batch_id();
                self.state = State::Repairing {
                    batch,
                    deadline_ms: now_ms + self.config.repair_timeout_ms,
                };
                Some(Command::Repair { batch })
            }
            _ => None,
        }
    }

    /// When the runtime should poll again at the latest (for timers), if anything is waiting.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.state {
            State::InFlight { deadline_ms, .. } => Some(deadline_ms),
            State::Backoff { until_ms } => Some(until_ms),
            State::Repairing { deadline_ms, .. } => Some(deadline_ms),
            State::RepairBackoff { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    fn take_batch_id(&mut self) -> u64 {
        let batch = self.next_batch;
        self.next_batch += 1;
        batch
    }
}

/// The receiving side's rule for a batch covering `from_seq..=to_seq` from one source, given
/// the highest sequence number from that source it already applied durably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// Apply the changes with sequence numbers greater than `skip_through`.
    Apply { skip_through: u64 },
    /// Everything in it is already applied (a retry or a replay): acknowledge, apply nothing.
    Duplicate,
    /// Changes are missing before it: refuse and ask for `expected_from`.
    Gap { expected_from: u64 },
}

pub fn accept(applied_through: u64, from_seq: u64, to_seq: u64) -> Acceptance {
    if to_seq <= applied_through {
        Acceptance::Duplicate
    } else if from_seq > applied_through + 1 {
        Acceptance::Gap {
            expected_from: applied_through + 1,
        }
    } else {
        Acceptance::Apply {
            skip_through: applied_through,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ShipperConfig {
        ShipperConfig {
            batch_changes_max: 10,
            request_timeout_ms: 100,
            retry_initial_ms: 10,
            retry_max_ms: 40,
            repair_timeout_ms: 500,
        }
    }

    #[test]
    fn ships_in_order_with_one_batch_in_flight() {
        let mut shipper = Shipper::new(config(), 0, 0, 1);
        assert_eq!(shipper.poll(0), None);
        shipper.on_appended(25);
        assert_eq!(
            shipper.poll(0),
            Some(Command::Send {
                batch: 1,
                from_seq: 1,
                changes_max: 10
            })
        );
        assert_eq!(shipper.poll(1), None, "only one batch in flight");
        shipper.on_acked(1, 10);
        assert_eq!(
            shipper.poll(2),
            Some(Command::Send {
                batch: 2,
                from_seq: 11,
                changes_max: 10
            })
        );
        shipper.on_acked(1, 99);
        assert_eq!(shipper.acked(), 10, "a stale acknowledgement changes nothing");
        shipper.on_acked(2, 25);
        assert_eq!(shipper.pending(), 0);
        assert_eq!(shipper.poll(3), None);
    }

    #[test]
    fn backs_off_exponentially_up_to_the_cap() {
        let mut shipper = Shipper::new(config(), 0, 5, 1);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            let Some(Command::Send { batch, .. }) = shipper.poll(now) else {
                panic!("expected a send")
            };
            shipper.on_failed(batch, now);
            let until = shipper.next_deadline_ms().expect("backing off");
            delays.push(until - now);
            now = until;
        }
        assert_eq!(delays, [10, 20, 40, 40, 40]);
    }

    #[test]
    fn a_lost_answer_times_out_and_is_retried_from_the_same_position() {
        let mut shipper = Shipper::new(config(), 3, 8, 1);
        assert_eq!(
            shipper.poll(0),
            Some(Command::Send {
                batch: 1,
                from_seq: 4,
                changes_max: 10
            })
        );
        assert_eq!(shipper.poll(100), None, "timed out: now backing off");
        assert_eq!(
            shipper.poll(110),
            Some(Command::Send {
                batch: 2,
                from_seq: 4,
                changes_max: 10
            })
        );
    }

    #[test]
    fn trimmed_past_the_peer_means_repair() {
        let mut shipper = Shipper::new(config(), 2, 50, 1);
        shipper.on_trimmed(20);
        assert!(shipper.needs_repair());
        assert_eq!(shipper.poll(0), Some(Command::Repair { batch: 1 }));
        assert_eq!(shipper.poll(499), None);
        assert_eq!(shipper.poll(500), None, "a lost repair waits out its backoff");
        assert_eq!(
            shipper.poll(510),
            Some(Command::Repair { batch: 2 }),
            "a lost repair is started again"
        );
        shipper.on_repaired(1, 50);
        assert!(shipper.needs_repair(), "the answer to the abandoned repair is ignored");
        shipper.on_repaired(2, 50);
        assert!(!shipper.needs_repair());
        assert_eq!(shipper.pending(), 0);
    }

    #[test]
    fn a_peer_heard_from_is_retried_at_once_not_after_its_backoff() {
        let config = ShipperConfig {
            retry_initial_ms: 1_000,
            retry_max_ms: 5_000,
            ..ShipperConfig::default()
        };
        let mut shipper = Shipper::new(config, 0, 10, 1);
        let mut now = 0;
        // The peer is down: failures back off up to 5 s.
        for _ in 0..5 {
            let Some(Command::Send { batch, .. }) = shipper.poll(now) else {
                panic!("a batch is due at {now}");
            };
            shipper.on_failed(batch, now);
            now += 1;
            assert_eq!(shipper.poll(now), None, "backing off");
            now += 5_000;
        }
        let Some(Command::Send { batch, .. }) = shipper.poll(now) else {
            panic!("a batch is due");
        };
        shipper.on_failed(batch, now);
        assert_eq!(shipper.poll(now + 100), None, "5 s of backoff left");
        // It comes back and sends a mark: the batch goes now, not in 5 s.
        shipper.on_peer_heard(now + 100);
        assert!(matches!(shipper.poll(now + 100), Some(Command::Send { .. })));
        assert_eq!(shipper.consecutive_failures(), 6, "another failure backs off further");
        // Heard while nothing waits: nothing changes.
        let before = shipper.clone();
        shipper.on_peer_heard(now + 200);
        assert_eq!(format!("{before:?}"), format!("{shipper:?}"));
    }

    #[test]
    fn a_repair_that_fails_at_once_is_retried_with_backoff_not_in_a_loop() {
        let mut shipper = Shipper::new(config(), 0, 5, 1);
        shipper.request_repair();
        let Some(Command::Repair { batch }) = shipper.poll(0) else {
            panic!("expected a repair")
        };
        shipper.on_failed(batch, 0);
        assert!(shipper.needs_repair());
        assert_eq!(shipper.poll(0), None, "not again at once");
        assert_eq!(shipper.next_deadline_ms(), Some(10));
        assert!(matches!(shipper.poll(10), Some(Command::Repair { .. })));
    }

    #[test]
    fn receivers_apply_once_and_report_gaps() {
        assert_eq!(accept(10, 11, 20), Acceptance::Apply { skip_through: 10 });
        assert_eq!(accept(10, 5, 20), Acceptance::Apply { skip_through: 10 });
        assert_eq!(accept(10, 5, 10), Acceptance::Duplicate);
        assert_eq!(accept(10, 12, 20), Acceptance::Gap { expected_from: 11 });
    }
}
