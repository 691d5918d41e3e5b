//! The lease rules, sans-IO: every function takes the time (`now_ms`, from an injected clock)
//! and the record read from the store, and says what to write or do. The IO side (`run`)
//! performs it with conditional writes.
//!
//! Two clocks: [`plan_acquire`] and the expiry written to the store use the wall clock
//! (milliseconds since the Unix epoch), the only one other hosts can compare; a holder judges
//! its own lease ([`Holding`]) by its local monotonic clock, counted from before the write that
//! set the expiry, so a step of its wall clock (NTP, a VM resume) never lets its command run
//! longer than the lease it wrote.
//!
//! A lease record (one item per lock name in the global table) holds the holder, its region,
//! the fencing token, the pointer generation it was taken under, and when it expires. The
//! token only grows: a new holder takes `max(old + 1, generation << 32)`, so a holder taken
//! under a newer pointer generation always has a larger token than any holder of an older one,
//! even one whose record never replicated.

/// Wall-clock difference between regions the lease rules tolerate: another holder's lease
/// counts as expired only this long after its `expires_at_ms`. The store bounds its own stamps
/// to the same second (`--clock-offset-max-ms`, 1000 by default).
pub const CLOCK_SKEW_MARGIN_MS: u64 = 1_000;
/// Shortest lease.
pub const TTL_MS_MIN: u64 = 5_000;
/// Longest lease: a day.
pub const TTL_MS_MAX: u64 = 86_400_000;
/// A lease is renewed this many times per TTL.
pub const RENEWALS_PER_TTL: u64 = 3;
/// Longest settle pause after taking a lease.
pub const SETTLE_MS_MAX: u64 = 60_000;
/// Longest grace between SIGTERM and SIGKILL when the command must stop.
pub const KILL_GRACE_MS_MAX: u64 = 600_000;
/// Longest `--max-run-s`: a week.
pub const MAX_RUN_S_MAX: u64 = 7 * 86_400;
/// A renewal's read of the pointer (every controller member at once) ends within this, answer
/// or not; the hand-off wait ([`settle_ms`]) counts it, so a member that is black-holed cannot
/// delay the old region's holder past the new holder's start.
pub const POINTER_READ_MS_MAX: u64 = 1_000;

/// Checks `--max-run-s` (1..=[`MAX_RUN_S_MAX`]); returns it in milliseconds.
pub fn max_run_ms(max_run_s: Option<u64>) -> Result<Option<u64>, String> {
    match max_run_s {
        None => Ok(None),
        Some(seconds) if (1..=MAX_RUN_S_MAX).contains(&seconds) => Ok(Some(seconds * 1000)),
        Some(seconds) => Err(format!(
            "--max-run-s {seconds} is out of range: use 1..={MAX_RUN_S_MAX} seconds (or leave it out for no limit)"
        )),
    }
}

/// The lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: String,
    pub region: String,
    pub token: u64,
    pub generation: u64,
    /// 0 once released.
    pub expires_at_ms: u64,
}

/// How a run is configured, checked by [`Timing::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub ttl_ms: u64,
    pub settle_ms: u64,
    pub kill_grace_ms: u64,
}

impl Timing {
    /// Checks the bounds and that a holder that cannot confirm its lease stops its command
    /// (grace included) before anyone else may take the lease, with at least one renewal in
    /// between.
    pub fn new(ttl_ms: u64, settle_ms: u64, kill_grace_ms: u64) -> Result<Timing, String> {
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
            return Err(format!(
                "--ttl-s {} is out of range: use {}..={} seconds",
                ttl_ms / 1000,
                TTL_MS_MIN / 1000,
                TTL_MS_MAX / 1000
            ));
        }
        if settle_ms > SETTLE_MS_MAX {
            return Err(format!(
                "--settle-ms {settle_ms} is out of range: use 0..={SETTLE_MS_MAX} milliseconds"
            ));
        }
        if kill_grace_ms > KILL_GRACE_MS_MAX {
            return Err(format!(
                "--kill-grace-s {} is out of range: use 0..={} seconds",
                kill_grace_ms / 1000,
                KILL_GRACE_MS_MAX / 1000
            ));
        }
        let timing = Timing {
            ttl_ms,
            settle_ms,
            kill_grace_ms,
        };
        if timing.unconfirmed_ms_max() <= timing.renew_every_ms() {
            return Err(format!(
                "--ttl-s {} is too short for --kill-grace-s {}: a holder that cannot renew must stop its command \
                 {} ms (clock margin) plus the grace before the lease expires, with a renewal ({} ms) in between; \
                 use --ttl-s {} or more, or a shorter --kill-grace-s",
                ttl_ms / 1000,
                kill_grace_ms / 1000,
                CLOCK_SKEW_MARGIN_MS,
                timing.renew_every_ms(),
                // unconfirmed > ttl/3  <=>  ttl * 2/3 > margin + grace
                ((CLOCK_SKEW_MARGIN_MS + kill_grace_ms) * 3 / 2) / 1000 + 1
            ));
        }
        Ok(timing)
    }

    /// Time between renewals.
    pub fn renew_every_ms(&self) -> u64 {
        self.ttl_ms / RENEWALS_PER_TTL
    }

    /// How long after its last confirmation a holder may let the command run: the lease's TTL
    /// less the clock margin and the kill grace, so the command is gone before the lease counts
    /// as expired anywhere.
    pub fn unconfirmed_ms_max(&self) -> u64 {
        self.ttl_ms
            .saturating_sub(CLOCK_SKEW_MARGIN_MS)
            .saturating_sub(self.kill_grace_ms)
    }
}

/// What the conditional write of a new lease expects to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No record yet (`attribute_not_exists`).
    Absent,
    /// The record read, unchanged: same token and same expiry (a renewal in between moves the
    /// expiry and makes the write fail).
    Unchanged { token: u64, expires_at_ms: u64 },
}

/// The decision on a lease someone wants to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Write this record if the store still holds what `expect` says.
    Take { record: LeaseRecord, expect: Expect },
    /// Someone holds it: skip.
    Held {
        holder: String,
        region: String,
        token: u64,
        /// Until the lease counts as expired here (clock margin included).
        remaining_ms: u64,
    },
}

/// The fencing token of a new holder after `previous` (0 without a record) under the pointer's
/// `generation`: above every earlier token, and above every token of an older generation.
pub fn next_token(previous: u64, generation: u64) -> u64 {
    let floor = generation
        .checked_shl(32)
        .filter(|_| generation < (1 << 32))
        .unwrap_or(u64::MAX);
    previous.saturating_add(1).max(floor)
}

/// Whether `record` still holds the lease at `now_ms`, seen by someone else (margin included).
pub fn is_held(record: &LeaseRecord, now_ms: u64) -> bool {
    record.expires_at_ms != 0 && now_ms <= record.expires_at_ms.saturating_add(CLOCK_SKEW_MARGIN_MS)
}

/// Decides whether `holder` in `region` may take the lease, given the record read.
pub fn plan_acquire(
    now_ms: u64,
    existing: Option<&LeaseRecord>,
    holder: &str,
    region: &str,
    generation: u64,
    timing: &Timing,
) -> Acquire {
    let new = |previous: u64| LeaseRecord {
        holder: holder.to_string(),
        region: region.to_string(),
        token: next_token(previous, generation),
        generation,
        expires_at_ms: now_ms.saturating_add(timing.ttl_ms),
    };
    match existing {
        None => Acquire::Take {
            record: new(0),
            expect: Expect::Absent,
        },
        Some(record) if is_held(record, now_ms) => Acquire::Held {
            holder: record.holder.clone(),
            region: record.region.clone(),
            token: record.token,
            remaining_ms: record
                .expires_at_ms
                .saturating_add(CLOCK_SKEW_MARGIN_MS)
                .saturating_sub(now_ms),
        },
        Some(record) => Acquire::Take {
            record: new(record.token),
            expect: Expect::Unchanged {
                token: record.token,
                expires_at_ms: record.expires_at_ms,
            },
        },
    }
}

/// How long a new holder waits after writing its lease before it confirms it and starts the
/// command. When the record it replaced (or found missing) was taken under an older pointer
/// generation, this is a hand-off between regions: the old region's holder may still run, its
/// latest record not yet replicated here, and last-writer-wins would hide it. The wait then
/// lasts one renewal period plus the longest pointer read ([`POINTER_READ_MS_MAX`]), the kill
/// grace and the clock margin (slack), by which time such a holder has read the moved pointer
/// (or its renewal failed on this new record) and stopped its command. Under the same
/// generation only `settle_ms` applies.
pub fn settle_ms(timing: &Timing, replaced: Option<&LeaseRecord>, generation: u64) -> u64 {
    if handoff(replaced, generation).is_some() {
        timing.settle_ms.max(
            timing
                .renew_every_ms()
                .saturating_add(POINTER_READ_MS_MAX)
                .saturating_add(timing.kill_grace_ms)
                .saturating_add(CLOCK_SKEW_MARGIN_MS),
        )
    } else {
        timing.settle_ms
    }
}

/// Why a wait before the command is a hand-off between regions ([`handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// No record of the lease has reached this store: either it was never taken, or another
    /// region's latest record has not replicated here yet.
    NoRecord,
    /// The record replaced was taken under this older pointer generation.
    OlderGeneration { previous: u64 },
}

/// Whether taking the lease over `replaced` under `generation` is a hand-off between regions
/// (what makes [`settle_ms`] wait out a holder in the previous region).
pub fn handoff(replaced: Option<&LeaseRecord>, generation: u64) -> Option<Handoff> {
    match replaced {
        None => Some(Handoff::NoRecord),
        Some(record) if record.generation < generation => Some(Handoff::OlderGeneration {
            previous: record.generation,
        }),
        Some(_) => None,
    }
}

/// The one line a new holder prints before a hand-off's wait (`wait_ms`, from [`settle_ms`]),
/// so that a first run after the pointer moved, silent for tens of seconds, is not taken for a
/// hang: that it waits, how long, why, and that later runs do not.
pub fn handoff_notice(name: &str, timing: &Timing, handoff: Handoff, generation: u64, wait_ms: u64) -> String {
    let why = match handoff {
        Handoff::NoRecord => "no lease record has reached this store yet (never taken, or the previous region's \
                              latest record has not replicated here)"
            .to_string(),
        Handoff::OlderGeneration { previous } => {
            format!("the lease was last taken under pointer generation {previous}, the pointer is now at {generation}")
        }
    };
    let made_of = if timing.settle_ms >= wait_ms {
        format!("--settle-ms {}", timing.settle_ms)
    } else {
        format!(
            "a renewal period ({}, a third of --ttl-s) + the longest pointer read ({}) + --kill-grace-s ({}) + \
             clock margin ({})",
            seconds(timing.renew_every_ms()),
            seconds(POINTER_READ_MS_MAX),
            seconds(timing.kill_grace_ms),
            seconds(CLOCK_SKEW_MARGIN_MS)
        )
    };
    format!(
        "'{name}': hand-off: waiting {} before starting the command, then confirming the lease: {why}, so a holder \
         in the previous region may still be running it until its next renewal sees the pointer move and it stops \
         ({made_of}); later runs under generation {generation} wait only --settle-ms",
        seconds(wait_ms)
    )
}

/// Milliseconds for a person: `32 s`, `4.7 s`, `0.2 s`.
fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        // Tenths, rounded.
        let tenths = (ms + 50) / 100;
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

/// Why a holder stops its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The pointer names another region now.
    PointerMoved { region: String, generation: u64 },
    /// The store holds another token or holder: someone took the lease.
    LeaseLost { detail: String },
    /// Neither the pointer nor the lease could be confirmed for too long.
    Unconfirmed { since_ms: u64, last_error: String },
    /// The command ran longer than `--max-run-s`.
    MaxRunTime { max_run_ms: u64 },
    /// The guard between `lock run` and the command died of this signal (SIGKILL, a crash):
    /// what the command left runs on without it, and would run on without a lease if `lock run`
    /// died too.
    GuardDied { signal: i32 },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::PointerMoved { region, generation } => write!(
                f,
                "the active region moved to {region} (generation {generation}) while the command ran"
            ),
            StopReason::LeaseLost { detail } => write!(f, "the lease was lost: {detail}"),
            StopReason::Unconfirmed { since_ms, last_error } => write!(
                f,
                "the lease could not be confirmed for {since_ms} ms (last error: {last_error}); stopped before it \
                 can expire for others"
            ),
            StopReason::GuardDied { signal } => write!(
                f,
                "its guard (lock exec-guard) was killed by signal {signal}; what the command started must not run on \
                 without it"
            ),
            StopReason::MaxRunTime { max_run_ms } => write!(
                f,
                "it ran longer than --max-run-s {} (still running, or something it started is)",
                max_run_ms / 1000
            ),
        }
    }
}

/// The outcome of one renewal round (pointer read, then the conditional renewal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The pointer still names our region and the store renewed the lease.
    Confirmed,
    /// The pointer names another region.
    PointerMoved { region: String, generation: u64 },
    /// The conditional renewal failed: the record is not ours any more.
    Lost { detail: String },
    /// The pointer or the store could not be reached, or the pointer had no region.
    Failed { error: String },
}

/// What the holder does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep the command running; renew again at this time.
    RenewAt(u64),
    /// Stop the command (SIGTERM, then SIGKILL after the grace).
    Stop(StopReason),
}

/// A held lease while the command runs. Its times are the holder's monotonic clock
/// (milliseconds from any fixed start), never the wall clock or a stamp from the store.
#[derive(Clone, Debug)]
pub struct Holding {
    pub token: u64,
    timing: Timing,
    confirmed_at_ms: u64,
    last_error: Option<String>,
    /// When the command must be stopped (`--max-run-s`), once it started.
    run_deadline_ms: Option<u64>,
    max_run_ms: u64,
}

impl Holding {
    /// The write of the lease started at `now_ms` (so it expires `ttl` after this at the
    /// earliest).
    pub fn new(token: u64, timing: Timing, now_ms: u64) -> Holding {
        Holding {
            token,
            timing,
            confirmed_at_ms: now_ms,
            last_error: None,
            run_deadline_ms: None,
            max_run_ms: 0,
        }
    }

    /// The command started at `now_ms`; with `max_run_ms` it is stopped that much later.
    pub fn start_command(&mut self, now_ms: u64, max_run_ms: Option<u64>) {
        self.run_deadline_ms = max_run_ms.map(|max| now_ms.saturating_add(max));
        self.max_run_ms = max_run_ms.unwrap_or(0);
    }

    /// When the holder must wake next: the renewal due at `renew_at_ms`, or the end of
    /// `--max-run-s` if that comes first.
    pub fn wake_at_ms(&self, renew_at_ms: u64) -> u64 {
        self.run_deadline_ms
            .map_or(renew_at_ms, |deadline| deadline.min(renew_at_ms))
    }

    /// When the next renewal is due.
    pub fn next_renewal_ms(&self) -> u64 {
        self.confirmed_at_ms.saturating_add(self.timing.renew_every_ms())
    }

    /// The last moment the command may still run without a confirmation.
    pub fn stop_deadline_ms(&self) -> u64 {
        self.confirmed_at_ms.saturating_add(self.timing.unconfirmed_ms_max())
    }

    /// Whether this holder may still write the record at `now_ms` (a release): only while the
    /// lease it last wrote is unexpired by its own clock. Later, another region may hold the
    /// lease in a record that has not replicated here yet, and a write here would overwrite it
    /// (last writer wins) with an older token.
    pub fn may_write(&self, now_ms: u64) -> bool {
        now_ms < self.confirmed_at_ms.saturating_add(self.timing.ttl_ms)
    }

    /// The expiry to write on a renewal at `now_ms`.
    pub fn renewed_expiry_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.timing.ttl_ms)
    }

    /// Takes the result of a renewal round that started at `started_ms` and ended at `now_ms`.
    /// A confirmation counts from when the round started (the expiry written is later than that).
    pub fn on_renewal(&mut self, started_ms: u64, now_ms: u64, result: Renewal) -> Next {
        match result {
            Renewal::Confirmed => {
                self.confirmed_at_ms = self.confirmed_at_ms.max(started_ms);
                self.last_error = None;
                self.after_failure_or_ok(now_ms)
            }
            Renewal::PointerMoved { region, generation } => Next::Stop(StopReason::PointerMoved { region, generation }),
            Renewal::Lost { detail } => Next::Stop(StopReason::LeaseLost { detail }),
            Renewal::Failed { error } => {
                self.last_error = Some(error);
                self.after_failure_or_ok(now_ms)
            }
        }
    }

    /// At `now_ms` with nothing new: keep running or stop because a deadline passed (the
    /// lease's, or `--max-run-s`).
    pub fn check(&self, now_ms: u64) -> Option<StopReason> {
        if let Some(deadline) = self.run_deadline_ms
            && now_ms >= deadline
        {
            return Some(StopReason::MaxRunTime {
                max_run_ms: self.max_run_ms,
            });
        }
        (now_ms >= self.stop_deadline_ms()).then(|| StopReason::Unconfirmed {
            since_ms: now_ms.saturating_sub(self.confirmed_at_ms),
            last_error: self.last_error.clone().unwrap_or_else(|| "none".to_string()),
        })
    }

    fn after_failure_or_ok(&self, now_ms: u64) -> Next {
        if let Some(reason) = self.check(now_ms) {
            return Next::Stop(reason);
        }
        if self.last_error.is_none() {
            return Next::RenewAt(self.next_renewal_ms());
        }
        // After a failure try again soon, but never past the deadline.
        let retry = now_ms.saturating_add(RETRY_AFTER_FAILURE_MS.min(self.timing.renew_every_ms()));
        Next::RenewAt(retry.min(self.stop_deadline_ms()))
    }
}

/// Pause before another renewal after one failed.
pub const RETRY_AFTER_FAILURE_MS: u64 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::new(30_000, 1_000, 5_000).expect("valid timing")
    }

    fn record(token: u64, expires_at_ms: u64) -> LeaseRecord {
        LeaseRecord {
            holder: "web-1:42".into(),
            region: "us-east-1".into(),
            token,
            generation: 1,
            expires_at_ms,
        }
    }

    #[test]
    fn timing_bounds_and_the_grace_rule() {
        assert!(
            Timing::new(4_000, 0, 0)
                .expect_err("refused")
                .contains("--ttl-s 4 is out of range")
        );
        assert!(Timing::new(TTL_MS_MAX + 1, 0, 0).is_err());
        assert!(
            Timing::new(30_000, SETTLE_MS_MAX + 1, 0)
                .expect_err("refused")
                .contains("--settle-ms")
        );
        let error = Timing::new(10_000, 0, 10_000).expect_err("refused");
        assert!(error.contains("too short for --kill-grace-s 10"), "{error}");
        assert!(error.contains("use --ttl-s 17 or more"), "{error}");
        // The suggested TTL works.
        let fixed = Timing::new(17_000, 0, 10_000).expect("the suggestion is valid");
        assert!(fixed.unconfirmed_ms_max() > fixed.renew_every_ms());
        let t = timing();
        assert_eq!(t.renew_every_ms(), 10_000);
        assert_eq!(t.unconfirmed_ms_max(), 24_000);
    }

    #[test]
    fn tokens_grow_and_order_generations() {
        assert_eq!(next_token(0, 0), 1);
        assert_eq!(next_token(7, 0), 8);
        assert_eq!(next_token(0, 3), 3 << 32);
        assert_eq!(next_token(3 << 32, 3), (3 << 32) + 1);
        // A holder of generation 4 outranks any of generation 3 even without seeing it.
        assert!(next_token(0, 4) > next_token((3 << 32) + 1000, 3));
        // A record from a newer generation than ours still only grows.
        assert_eq!(next_token((5 << 32) + 2, 4), (5 << 32) + 3);
        assert_eq!(next_token(u64::MAX, 1), u64::MAX);
        assert_eq!(next_token(0, 1 << 40), u64::MAX);
    }

    #[test]
    fn a_missing_record_is_taken_with_attribute_not_exists() {
        let plan = plan_acquire(1_000, None, "me", "eu-west-1", 2, &timing());
        let Acquire::Take { record, expect } = plan else {
            panic!("expected Take, got {plan:?}");
        };
        assert_eq!(expect, Expect::Absent);
        assert_eq!(record.token, 2 << 32);
        assert_eq!(record.expires_at_ms, 31_000);
        assert_eq!(record.region, "eu-west-1");
    }

    #[test]
    fn a_live_lease_is_held_until_expiry_plus_the_clock_margin() {
        let existing = record(5, 10_000);
        for now in [0, 9_999, 10_000, 10_000 + CLOCK_SKEW_MARGIN_MS] {
            match plan_acquire(now, Some(&existing), "me", "us-east-1", 1, &timing()) {
                Acquire::Held {
                    holder, remaining_ms, ..
                } => {
                    assert_eq!(holder, "web-1:42");
                    assert_eq!(remaining_ms, 10_000 + CLOCK_SKEW_MARGIN_MS - now);
                }
                other => panic!("at {now}: expected Held, got {other:?}"),
            }
        }
        let later = 10_001 + CLOCK_SKEW_MARGIN_MS;
        match plan_acquire(later, Some(&existing), "me", "us-east-1", 1, &timing()) {
            Acquire::Take { record, expect } => {
                assert_eq!(
                    expect,
                    Expect::Unchanged {
                        token: 5,
                        expires_at_ms: 10_000
                    }
                );
                assert_eq!(record.token, 1 << 32);
                assert_eq!(record.holder, "me");
            }
            other => panic!("expected Take, got {other:?}"),
        }
    }

    #[test]
    fn a_handoff_between_generations_waits_out_the_old_holder() {
        let t = timing();
        let mut same = record(5, 0);
        same.generation = 3;
        assert_eq!(
            settle_ms(&t, Some(&same), 3),
            1_000,
            "same generation: the plain settle"
        );
        let wait = settle_ms(&t, Some(&same), 4);
        // A renewal period, the longest pointer read of the old holder's renewal (a black-holed
        // controller member cannot stretch it), the grace and the margin.
        assert_eq!(wait, 10_000 + POINTER_READ_MS_MAX + 5_000 + CLOCK_SKEW_MARGIN_MS);
        assert_eq!(settle_ms(&t, None, 4), wait, "no record: maybe not replicated yet");
        // The wait ends before the new lease (written just before it) could expire anywhere,
        // so the confirmation after it renews a lease nobody else may have taken.
        assert!(wait < t.ttl_ms);
        let tight = Timing::new(5_000, 200, 1_000).expect("valid");
        assert!(settle_ms(&tight, None, 1) < tight.ttl_ms);
        let long_settle = Timing::new(60_000, 30_000, 1_000).expect("valid");
        assert_eq!(settle_ms(&long_settle, None, 1), 30_000);
    }

    #[test]
    fn a_handoff_says_that_it_waits_how_long_and_why() {
        let t = timing();
        let mut older = record(5, 0);
        older.generation = 3;
        assert_eq!(handoff(Some(&older), 3), None, "same generation: no hand-off");
        assert_eq!(handoff(Some(&older), 4), Some(Handoff::OlderGeneration { previous: 3 }));
        assert_eq!(handoff(None, 4), Some(Handoff::NoRecord));

        let wait = settle_ms(&t, Some(&older), 4);
        let line = handoff_notice("cron", &t, Handoff::OlderGeneration { previous: 3 }, 4, wait);
        assert!(
            line.starts_with("'cron': hand-off: waiting 17 s before starting the command"),
            "{line}"
        );
        assert!(
            line.contains("last taken under pointer generation 3, the pointer is now at 4"),
            "{line}"
        );
        assert!(
            line.contains("(a renewal period (10 s, a third of --ttl-s) + the longest pointer read (1 s) + --kill-grace-s (5 s) + clock margin (1 s))"),
            "{line}"
        );
        assert!(
            line.ends_with("later runs under generation 4 wait only --settle-ms"),
            "{line}"
        );
        let line = handoff_notice("cron", &t, Handoff::NoRecord, 4, wait);
        assert!(line.contains("no lease record has reached this store yet"), "{line}");

        // The defaults (--ttl-s 60, --kill-grace-s 10): the ~32 s the README announces.
        let defaults = Timing::new(60_000, 2_000, 10_000).expect("valid");
        let line = handoff_notice("cron", &defaults, Handoff::NoRecord, 1, settle_ms(&defaults, None, 1));
        assert!(line.contains("waiting 32 s"), "{line}");
        // A --settle-ms longer than the hand-off's own wait is named as the reason for its length.
        let long = Timing::new(60_000, 40_000, 1_000).expect("valid");
        let line = handoff_notice("cron", &long, Handoff::NoRecord, 1, settle_ms(&long, None, 1));
        assert!(
            line.contains("waiting 40 s") && line.contains("(--settle-ms 40000)"),
            "{line}"
        );
        // Short waits in tenths of a second.
        let short = Timing::new(5_000, 200, 1_000).expect("valid");
        let line = handoff_notice("cron", &short, Handoff::NoRecord, 1, settle_ms(&short, None, 1));
        assert!(
            line.contains("waiting 4.7 s") && line.contains("(1.7 s, a third of --ttl-s)"),
            "{line}"
        );
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let released = record(9, 0);
        assert!(!is_held(&released, 0));
        assert!(matches!(
            plan_acquire(0, Some(&released), "me", "us-east-1", 0, &timing()),
            Acquire::Take {
                record: LeaseRecord { token: 10, .. },
                ..
            }
        ));
    }

    #[test]
    fn renewals_keep_the_command_running() {
        let t = timing();
        let mut holding = Holding::new(1, t, 0);
        assert_eq!(holding.next_renewal_ms(), 10_000);
        assert_eq!(
            holding.on_renewal(10_000, 10_050, Renewal::Confirmed),
            Next::RenewAt(20_000)
        );
        assert_eq!(holding.renewed_expiry_ms(20_000), 50_000);
        assert_eq!(holding.stop_deadline_ms(), 34_000);
        assert_eq!(holding.check(33_999), None);
        assert!(
            holding.may_write(39_999),
            "the lease written at the 10 000 confirmation lives until 40 000"
        );
        assert!(!holding.may_write(40_000));
    }

    #[test]
    fn failures_retry_soon_and_stop_before_the_lease_expires_elsewhere() {
        let t = timing();
        let mut holding = Holding::new(1, t, 0);
        let failed = || Renewal::Failed {
            error: "store unreachable".into(),
        };
        assert_eq!(holding.on_renewal(10_000, 10_000, failed()), Next::RenewAt(11_000));
        assert_eq!(holding.on_renewal(23_500, 23_500, failed()), Next::RenewAt(24_000));
        match holding.on_renewal(24_000, 24_000, failed()) {
            Next::Stop(StopReason::Unconfirmed { since_ms, last_error }) => {
                assert_eq!(since_ms, 24_000);
                assert_eq!(last_error, "store unreachable");
            }
            other => panic!("expected a stop, got {other:?}"),
        }
        // The command is gone (grace included) before anyone else may take the lease, which
        // was last written at 0 with expiry 30 000.
        let stop_plus_grace = holding.stop_deadline_ms() + t.kill_grace_ms;
        assert!(stop_plus_grace < 30_000 + CLOCK_SKEW_MARGIN_MS);
        assert!(is_held(&record(1, 30_000), stop_plus_grace));
    }

    #[test]
    fn a_confirmation_after_failures_resets_the_deadline() {
        let mut holding = Holding::new(1, timing(), 0);
        holding.on_renewal(10_000, 10_000, Renewal::Failed { error: "x".into() });
        assert_eq!(
            holding.on_renewal(11_000, 11_200, Renewal::Confirmed),
            Next::RenewAt(21_000)
        );
        assert_eq!(holding.stop_deadline_ms(), 35_000);
    }

    #[test]
    fn a_moved_pointer_or_a_lost_lease_stops_at_once() {
        let mut holding = Holding::new(1, timing(), 0);
        assert_eq!(
            holding.on_renewal(
                10_000,
                10_000,
                Renewal::PointerMoved {
                    region: "eu-west-1".into(),
                    generation: 4
                }
            ),
            Next::Stop(StopReason::PointerMoved {
                region: "eu-west-1".into(),
                generation: 4
            })
        );
        let next = holding.on_renewal(
            10_000,
            10_000,
            Renewal::Lost {
                detail: "token 9".into(),
            },
        );
        assert!(matches!(next, Next::Stop(StopReason::LeaseLost { .. })));
    }

    #[test]
    fn max_run_is_checked_and_stops_the_command() {
        assert_eq!(max_run_ms(None), Ok(None));
        assert_eq!(max_run_ms(Some(90)), Ok(Some(90_000)));
        assert!(
            max_run_ms(Some(0))
                .expect_err("refused")
                .contains("--max-run-s 0 is out of range")
        );
        assert!(max_run_ms(Some(MAX_RUN_S_MAX + 1)).is_err());

        let mut holding = Holding::new(1, timing(), 0);
        assert_eq!(holding.wake_at_ms(10_000), 10_000, "no limit: only renewals");
        holding.start_command(500, Some(7_000));
        assert_eq!(holding.wake_at_ms(10_000), 7_500, "the limit comes before the renewal");
        assert_eq!(holding.check(7_499), None);
        assert_eq!(holding.check(7_500), Some(StopReason::MaxRunTime { max_run_ms: 7_000 }));
        // Renewals going well do not extend it.
        assert_eq!(
            holding.on_renewal(7_600, 7_700, Renewal::Confirmed),
            Next::Stop(StopReason::MaxRunTime { max_run_ms: 7_000 })
        );
    }
}
