//! Who leads: the leadership state machine, sans-IO with the clock injected.
//!
//! `Leadership::poll(now_ms)` says what to ask etcd next ([`Action`]); the runtime performs it
//! and feeds the answer back with `Leadership::input(now_ms, Input)`. The machine never does
//! I/O and never reads a clock, so scripted tests replay exactly.
//!
//! The lease rule (the only timing this safety rests on):
//! - a leader renews its etcd lease every third of `lease_ms`;
//! - it acts only while `now < sent + 2/3 lease_ms`, where `sent` is when the last *successful*
//!   renewal (or the grant) was sent. etcd extends the lease from when it *receives* the request,
//!   which is after `sent`, so the lease outlives the member's right to act by at least a third
//!   of `lease_ms`. That third absorbs clock-rate differences between the member and etcd
//!   (bound: the member's clock may run at most 50% slower than etcd's over one lease, far
//!   beyond what NTP-disciplined or even free-running quartz clocks do; the runtime feeds
//!   CLOCK_BOOTTIME, which keeps counting while the host is suspended) and lets in-flight
//!   requests land before another member can win;
//! - every renewal is two requests, both of which must succeed: the keep-alive and a *heartbeat*,
//!   a put of the leader key (same value, same lease) in a transaction conditioned on the key's
//!   create revision (the term), which moves the key's mod revision on;
//! - a new leader can only win after the old key is gone: its lease expired, or a follower
//!   *deposed* it. A follower deposes a key whose mod revision it has seen unchanged for
//!   `lease_ms` — the longer of its own and the leader's, which the key's value carries; a key
//!   without it (a previous version's leader, which renews without a heartbeat) is never
//!   deposed — by its own clock (from the first read that showed it), in a transaction
//!   conditioned on that create and mod revision, then campaigns as usual. The key's last
//!   heartbeat committed before that first read, and was sent before it committed, so its
//!   leader stopped acting at least a third of the lease before the depose, exactly as with an
//!   expiry; a heartbeat landing after the first read moves the mod revision and the depose is
//!   refused.
//!
//! Why deposing: etcd does not keep a lease's remaining time across a change of its raft leader.
//! The new raft leader's lessor gives every lease its whole TTL again plus an election timeout
//! (`Promote`), so when the etcd member that led raft dies with the controller leader (one site
//! lost), the dead controller's key outlived it by ~8–10 s instead of ~5 s. The heartbeat puts
//! the clock that matters on the followers' side, where etcd's leader changes do not reset it.
//!
//! So at any instant at most one member may act, and the generation counter in etcd (written
//! in a transaction conditioned on the leader key) fences whatever an old leader still had in
//! flight.

use serde::Serialize;

/// Longest time between two looks of a follower at the leader key: after a leader dies, its
/// key disappears when the lease expires and a follower notices within this.
pub const OBSERVE_MS_MAX: u64 = 250;

/// Who holds the leader key, as written in its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LeaderInfo {
    pub member: String,
    /// The member's control API, for followers to name (and operators to call).
    pub address: String,
    /// The vantage name its own probes report as (`[controller] vantage` or `--vantage`): a
    /// follower with another name passes its own reports on to the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vantage: Option<String>,
    /// The leader's `lease_ms`: its right to act ends two thirds of it after a renewal, so a
    /// follower deposes its key only once unchanged for at least this (and its own). Absent
    /// in keys of a version before deposing (their leaders renew without a heartbeat): such a
    /// key is never deposed, only its lease's expiry ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// The leader key as one read showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySeen {
    pub leader: LeaderInfo,
    /// Its create revision: the term.
    pub created: i64,
    /// Its mod revision: moved on by every heartbeat of its leader.
    pub modified: i64,
}

/// One leadership term: the leader key's create revision and the lease that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Term {
    pub revision: i64,
    pub lease_id: i64,
}

/// What the runtime must ask etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the leader key.
    Observe,
    /// Grant a lease and create the leader key with it in a transaction, if it is absent.
    Campaign,
    /// Send one keep-alive for the term's lease and one heartbeat (the leader key put again,
    /// conditioned on the term's create revision); renewed only if both succeed.
    Renew(Term),
    /// Delete the leader key if its create and mod revision are still these: its leader has
    /// not renewed it for `unchanged_ms` (at least `lease_ms`) by this member's clock.
    Depose {
        member: String,
        created: i64,
        modified: i64,
        unchanged_ms: u64,
    },
    /// Read the shared state (generation, placement, runbook) before acting in `term`.
    Load(Term),
    /// Stop acting at once (abort runbooks at their next step) and revoke the lease if etcd
    /// can still be reached, so another member need not wait for it to expire.
    StepDown { term: Term, reason: String },
}

/// etcd's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The leader key as read: who holds it, or nobody.
    Observed(Option<KeySeen>),
    /// The depose deleted the stale leader key.
    Deposed,
    /// The depose found the key changed (renewed, or already replaced): look again.
    DeposeRefused,
    /// Our campaign created the leader key; the lease grant was sent at `sent_ms`.
    Won { term: Term, sent_ms: u64 },
    /// Our campaign found the key held by `leader`.
    Beaten(LeaderInfo),
    /// A keep-alive sent at `sent_ms` came back: the lease lives.
    Renewed { sent_ms: u64 },
    /// etcd says the lease is gone (expired or revoked).
    LeaseGone,
    /// The shared state is loaded: the member may act.
    Loaded,
    /// A guarded write found the leader key or the shared state changed under us.
    Superseded(String),
    /// A request failed (unreachable, timeout, refused, corrupt answer).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    /// Won the key; loading the shared state before acting.
    Loading,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Follower,
    Loading(Held),
    Leading(Held),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    term: Term,
    /// When the last successful renewal (or the grant) was sent.
    renewed_sent_ms: u64,
}

/// What status shows about leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeadershipStatus {
    pub role: Role,
    /// May decide and act right now.
    pub acting: bool,
    pub term: Option<Term>,
    /// The leader as last seen in etcd (this member when it leads).
    pub leader: Option<LeaderInfo>,
    /// Milliseconds left of the right to act (leader only).
    pub acting_ms_left: Option<u64>,
    /// The last error talking to etcd, cleared by the next success.
    pub etcd_error: Option<String>,
    pub last_etcd_ok_ms_ago: Option<u64>,
    /// Why this member last stopped leading.
    pub last_step_down: Option<String>,
    /// The last stale leader key this member deposed, and why.
    pub last_deposed: Option<String>,
}

/// A leader key a follower watches: since when (its own clock) it has seen these revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Watch {
    created: i64,
    modified: i64,
    since_ms: u64,
}

pub struct Leadership {
    me: LeaderInfo,
    lease_ms: u64,
    phase: Phase,
    leader: Option<LeaderInfo>,
    next_observe_ms: u64,
    next_renew_ms: u64,
    next_load_ms: u64,
    etcd_error: Option<String>,
    last_ok_ms: Option<u64>,
    last_step_down: Option<String>,
    watching: Option<Watch>,
    last_deposed: Option<String>,
}

impl Leadership {
    pub fn new(me: LeaderInfo, lease_ms: u64) -> Leadership {
        Leadership {
            me,
            lease_ms,
            phase: Phase::Follower,
            leader: None,
            next_observe_ms: 0,
            next_renew_ms: 0,
            next_load_ms: 0,
            etcd_error: None,
            last_ok_ms: None,
            last_step_down: None,
            watching: None,
            last_deposed: None,
        }
    }

    /// How often a leader renews its lease.
    pub fn renew_every_ms(&self) -> u64 {
        self.lease_ms / 3
    }

    /// How often a follower looks at the leader key.
    pub fn observe_every_ms(&self) -> u64 {
        self.renew_every_ms().min(OBSERVE_MS_MAX)
    }

    /// How long after a successful renewal was sent the leader may still act.
    pub fn act_for_ms(&self) -> u64 {
        self.lease_ms / 3 * 2
    }

    pub fn me(&self) -> &LeaderInfo {
        &self.me
    }

    /// The term this member acts in, if it may act at `now_ms`.
    pub fn acting(&self, now_ms: u64) -> Option<Term> {
        match &self.phase {
            Phase::Leading(held) if now_ms < held.renewed_sent_ms.saturating_add(self.act_for_ms()) => Some(held.term),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Follower => Role::Follower,
            Phase::Loading(_) => Role::Loading,
            Phase::Leading(_) => Role::Leader,
        }
    }

    /// The leader as last seen (this member while it holds the key).
    pub fn leader(&self) -> Option<&LeaderInfo> {
        self.leader.as_ref()
    }

    /// The next request to etcd, if one is due at `now_ms`. Ask again after each answer.
    pub fn poll(&mut self, now_ms: u64) -> Option<Action> {
        match self.phase.clone() {
            Phase::Follower => (now_ms >= self.next_observe_ms).then_some(Action::Observe),
            Phase::Loading(held) | Phase::Leading(held) => {
                if now_ms >= held.renewed_sent_ms.saturating_add(self.act_for_ms()) {
                    let last_error = self
                        .etcd_error
                        .as_deref()
                        .map(|error| format!(" (last error: {error})"))
                        .unwrap_or_default();
                    let reason = format!(
                        "could not renew the leader lease for {} ms (2/3 of lease_ms {}); stopped acting before it can expire in etcd{last_error}",
                        now_ms.saturating_sub(held.renewed_sent_ms),
                        self.lease_ms
                    );
                    return Some(self.step_down(now_ms, held.term, reason));
                }
                if now_ms >= self.next_renew_ms {
                    return Some(Action::Renew(held.term));
                }
                match self.phase {
                    Phase::Loading(_) if now_ms >= self.next_load_ms => Some(Action::Load(held.term)),
                    _ => None,
                }
            }
        }
    }

    /// Feeds etcd's answer to the last action. Returns an action that must happen at once
    /// (a step-down), if any.
    pub fn input(&mut self, now_ms: u64, input: Input) -> Option<Action> {
        match &input {
            Input::Failed(error) => {
                self.etcd_error = Some(error.clone());
            }
            _ => {
                self.etcd_error = None;
                self.last_ok_ms = Some(now_ms);
            }
        }
        match (self.phase.clone(), input) {
            (Phase::Follower, Input::Observed(None)) => {
                self.leader = None;
                self.watching = None;
                // Nobody leads: campaign at once.
                self.phase = Phase::Follower;
                self.next_observe_ms = now_ms;
                Some(Action::Campaign)
            }
            (Phase::Follower, Input::Observed(Some(seen))) => {
                let since_ms = match self.watching {
                    Some(watch) if watch.created == seen.created && watch.modified == seen.modified => watch.since_ms,
                    _ => now_ms,
                };
                self.watching = Some(Watch {
                    created: seen.created,
                    modified: seen.modified,
                    since_ms,
                });
                self.leader = Some(seen.leader.clone());
                self.next_observe_ms = now_ms.saturating_add(self.observe_every_ms());
                let unchanged_ms = now_ms.saturating_sub(since_ms);
                // The leader's lease counts when it is longer than ours (members configured
                // apart, a rolling change of lease_ms); a key without it is never deposed.
                let wait_ms = seen.leader.lease_ms.map(|theirs| theirs.max(self.lease_ms));
                wait_ms
                    .is_some_and(|wait| unchanged_ms >= wait)
                    .then_some(Action::Depose {
                        member: seen.leader.member,
                        created: seen.created,
                        modified: seen.modified,
                        unchanged_ms,
                    })
            }
            (Phase::Follower, Input::Beaten(leader)) => {
                self.leader = Some(leader);
                self.next_observe_ms = now_ms.saturating_add(self.observe_every_ms());
                None
            }
            (Phase::Follower, Input::Deposed) => {
                if let Some(watch) = self.watching.take() {
                    self.last_deposed = Some(format!(
                        "deposed {}'s leader key (revision {}): not renewed for {} ms, at least lease_ms {}",
                        self.leader.as_ref().map_or("an unnamed member", |l| l.member.as_str()),
                        watch.created,
                        now_ms.saturating_sub(watch.since_ms),
                        self.lease_ms
                    ));
                }
                self.leader = None;
                self.next_observe_ms = now_ms;
                Some(Action::Campaign)
            }
            (Phase::Follower, Input::DeposeRefused) => {
                self.next_observe_ms = now_ms;
                None
            }
            (Phase::Follower, Input::Won { term, sent_ms }) => {
                self.leader = Some(self.me.clone());
                self.watching = None;
                self.phase = Phase::Loading(Held {
                    term,
                    renewed_sent_ms: sent_ms,
                });
                self.next_renew_ms = sent_ms.saturating_add(self.renew_every_ms());
                self.next_load_ms = now_ms;
                None
            }
            (Phase::Follower, Input::Failed(_)) => {
                self.next_observe_ms = now_ms.saturating_add(self.observe_every_ms());
                None
            }
            (Phase::Loading(held) | Phase::Leading(held), Input::Renewed { sent_ms }) => {
                let held = Held {
                    term: held.term,
                    renewed_sent_ms: held.renewed_sent_ms.max(sent_ms),
                };
                self.phase = match self.phase {
                    Phase::Loading(_) => Phase::Loading(held),
                    _ => Phase::Leading(held),
                };
                self.next_renew_ms = held.renewed_sent_ms.saturating_add(self.renew_every_ms());
                None
            }
            (Phase::Loading(held), Input::Loaded) => {
                self.phase = Phase::Leading(held);
                None
            }
            (Phase::Loading(held) | Phase::Leading(held), Input::LeaseGone) => Some(self.step_down(
                now_ms,
                held.term,
                "etcd says the leader lease is gone (expired or revoked)".into(),
            )),
            (Phase::Loading(held) | Phase::Leading(held), Input::Superseded(why)) => {
                Some(self.step_down(now_ms, held.term, format!("superseded: {why}")))
            }
            (Phase::Loading(_) | Phase::Leading(_), Input::Failed(_)) => {
                // Retry soon; `poll` steps down when the right to act runs out.
                // (A renewal is asked for first whenever it is due, so a due renewal is what failed.)
                let retry = now_ms.saturating_add((self.renew_every_ms() / 4).max(1));
                if now_ms >= self.next_renew_ms {
                    self.next_renew_ms = retry;
                } else {
                    self.next_load_ms = retry;
                }
                None
            }
            // Answers that do not fit the phase (a late reply) change nothing.
            _ => None,
        }
    }

    fn step_down(&mut self, now_ms: u64, term: Term, reason: String) -> Action {
        self.phase = Phase::Follower;
        self.watching = None;
        if self.leader.as_ref() == Some(&self.me) {
            self.leader = None;
        }
        self.next_observe_ms = now_ms;
        self.last_step_down = Some(reason.clone());
        Action::StepDown { term, reason }
    }

    pub fn status(&self, now_ms: u64) -> LeadershipStatus {
        let (term, acting_ms_left) = match &self.phase {
            Phase::Follower => (None, None),
            Phase::Loading(held) | Phase::Leading(held) => (
                Some(held.term),
                Some(
                    held.renewed_sent_ms
                        .saturating_add(self.act_for_ms())
                        .saturating_sub(now_ms),
                ),
            ),
        };
        LeadershipStatus {
            role: self.role(),
            acting: self.acting(now_ms).is_some(),
            term,
            leader: self.leader.clone(),
            acting_ms_left,
            etcd_error: self.etcd_error.clone(),
            last_etcd_ok_ms_ago: self.last_ok_ms.map(|at| now_ms.saturating_sub(at)),
            last_step_down: self.last_step_down.clone(),
            last_deposed: self.last_deposed.clone(),
        }
    }
}
