//! Deterministic tests of the HA decision parts: the leadership machine against a model of
//! etcd (leases that expire on etcd's clock, the campaign transaction, guarded writes), in
//! virtual time; and the shared state's transitions.

use std::collections::BTreeMap;

use super::leadership::{Action, Input, KeySeen, LeaderInfo, Leadership, Role, Term};
use super::{HaSection, HoldTimers, SharedState, StateError};
use crate::engine::{
    FAILOVER_WINDOW_MS, Generation, Placement, RegionId, RunbookOrder, RunbookOutcome, TransitionKind,
};

const LEASE_MS: u64 = 3_000;

fn info(name: &str) -> LeaderInfo {
    LeaderInfo {
        member: name.into(),
        address: format!("http://{name}:7400"),
        vantage: Some(format!("{name}-probes")),
        lease_ms: Some(LEASE_MS),
    }
}

/// etcd's election timeout, which a new raft leader adds to every lease it promotes.
const ELECTION_MS: u64 = 1_000;

/// The leader key in [`FakeEtcd`].
struct Key {
    holder: LeaderInfo,
    lease: i64,
    created: i64,
    modified: i64,
}

/// etcd as the leadership machine needs it: one leader key, leases with expiry times on
/// etcd's own clock (and etcd's lessor `Promote`: a new raft leader gives every lease its whole
/// TTL again plus an election timeout), the campaign transaction, the heartbeat and the depose
/// transactions and the guarded state write.
#[derive(Default)]
struct FakeEtcd {
    revision: i64,
    next_lease: i64,
    leases: BTreeMap<i64, u64>,
    key: Option<Key>,
    state: SharedState,
    state_mod: i64,
}

impl FakeEtcd {
    fn expire(&mut self, now_ms: u64) {
        self.leases.retain(|_, expiry| *expiry > now_ms);
        if let Some(key) = &self.key
            && !self.leases.contains_key(&key.lease)
        {
            self.key = None;
            self.revision += 1;
        }
    }

    /// A new raft leader at `now_ms`: every lease lives a whole TTL and an election from now.
    fn promote(&mut self, now_ms: u64) {
        self.expire(now_ms);
        for expiry in self.leases.values_mut() {
            *expiry = now_ms + LEASE_MS + ELECTION_MS;
        }
    }

    fn seen(&self) -> Option<KeySeen> {
        self.key.as_ref().map(|key| KeySeen {
            leader: key.holder.clone(),
            created: key.created,
            modified: key.modified,
        })
    }

    /// Handles `action` from `me`, received at `now_ms` (etcd's clock).
    fn handle(&mut self, now_ms: u64, me: &LeaderInfo, action: &Action, sent_ms: u64) -> Option<Input> {
        self.expire(now_ms);
        match action {
            Action::Observe => Some(Input::Observed(self.seen())),
            Action::Depose { created, modified, .. } => match &self.key {
                Some(key) if key.created == *created && key.modified == *modified => {
                    self.key = None;
                    self.revision += 1;
                    Some(Input::Deposed)
                }
                _ => Some(Input::DeposeRefused),
            },
            Action::Campaign => {
                self.next_lease += 1;
                let lease = self.next_lease;
                self.leases.insert(lease, now_ms + LEASE_MS);
                if let Some(key) = &self.key {
                    let holder = key.holder.clone();
                    self.leases.remove(&lease);
                    return Some(Input::Beaten(holder));
                }
                self.revision += 1;
                self.key = Some(Key {
                    holder: me.clone(),
                    lease,
                    created: self.revision,
                    modified: self.revision,
                });
                Some(Input::Won {
                    term: Term {
                        revision: self.revision,
                        lease_id: lease,
                    },
                    sent_ms,
                })
            }
            Action::Renew(term) => match self.leases.get_mut(&term.lease_id) {
                // The keep-alive, then the heartbeat (guarded by the term).
                Some(expiry) => {
                    *expiry = now_ms + LEASE_MS;
                    if !self.holds(*term) {
                        return Some(Input::Superseded("the leader key is another term's".into()));
                    }
                    self.revision += 1;
                    if let Some(key) = &mut self.key {
                        key.modified = self.revision;
                    }
                    Some(Input::Renewed { sent_ms })
                }
                None => Some(Input::LeaseGone),
            },
            Action::Load(term) => {
                if self.holds(*term) {
                    Some(Input::Loaded)
                } else {
                    Some(Input::Superseded("not the leader key's holder".into()))
                }
            }
            Action::StepDown { term, .. } => {
                self.leases.remove(&term.lease_id);
                self.expire(now_ms);
                None
            }
        }
    }

    fn holds(&self, term: Term) -> bool {
        self.key.as_ref().is_some_and(|key| key.created == term.revision)
    }

    /// The guarded write: the term must hold the key and nobody wrote since `expect_mod`.
    fn write(&mut self, term: Term, expect_mod: i64, state: SharedState) -> Option<i64> {
        if !self.holds(term) || self.state_mod != expect_mod {
            return None;
        }
        self.revision += 1;
        self.state = state;
        self.state_mod = self.revision;
        Some(self.revision)
    }
}

/// One member in the simulation: its machine and the request it has in flight.
struct Sim {
    machine: Leadership,
    /// (action, sent at, processed by etcd at, answer at); the answer once processed.
    pending: Option<(Action, u64, u64, u64, Option<Input>)>,
    partitioned: bool,
}

#[test]
fn a_lone_member_campaigns_loads_and_acts() {
    let mut machine = Leadership::new(info("a"), LEASE_MS);
    assert_eq!(machine.poll(0), Some(Action::Observe));
    assert_eq!(machine.input(5, Input::Observed(None)), Some(Action::Campaign));
    let term = Term {
        revision: 7,
        lease_id: 1,
    };
    assert_eq!(machine.input(10, Input::Won { term, sent_ms: 6 }), None);
    assert_eq!(machine.role(), Role::Loading);
    assert_eq!(machine.acting(10), None, "no acting before the shared state is loaded");
    assert_eq!(machine.poll(11), Some(Action::Load(term)));
    machine.input(12, Input::Loaded);
    assert_eq!(machine.acting(12), Some(term));
    assert_eq!(machine.leader(), Some(&info("a")));
}

#[test]
fn a_follower_names_the_leader_and_looks_again_soon() {
    let mut machine = Leadership::new(info("b"), LEASE_MS);
    assert_eq!(machine.poll(0), Some(Action::Observe));
    let seen = KeySeen {
        leader: info("a"),
        created: 4,
        modified: 4,
    };
    assert_eq!(machine.input(1, Input::Observed(Some(seen))), None);
    assert_eq!(machine.leader(), Some(&info("a")));
    let every = (LEASE_MS / 3).min(super::leadership::OBSERVE_MS_MAX);
    assert_eq!(machine.poll(every), None);
    assert_eq!(machine.poll(every + 1), Some(Action::Observe));
    assert_eq!(machine.status(2).role, Role::Follower);
    assert!(!machine.status(2).acting);
}

fn leading(machine: &mut Leadership, sent_ms: u64) -> Term {
    let term = Term {
        revision: 3,
        lease_id: 9,
    };
    machine.poll(sent_ms);
    machine.input(sent_ms, Input::Observed(None));
    machine.input(sent_ms, Input::Won { term, sent_ms });
    machine.poll(sent_ms);
    machine.input(sent_ms, Input::Loaded);
    term
}

#[test]
fn partitioned_from_etcd_the_leader_stops_acting_at_two_thirds_of_the_lease() {
    let mut machine = Leadership::new(info("a"), LEASE_MS);
    let term = leading(&mut machine, 1_000);
    // Renewals at a third of the lease fail (etcd unreachable): retried, never acting longer.
    let mut now = 1_000;
    let mut renewals = 0;
    loop {
        now += 10;
        match machine.poll(now) {
            Some(Action::Renew(t)) => {
                assert_eq!(t, term);
                renewals += 1;
                assert_eq!(machine.input(now, Input::Failed("unreachable".into())), None);
            }
            Some(Action::StepDown { term: ended, reason }) => {
                assert_eq!(ended, term);
                assert!(reason.contains("could not renew"), "{reason}");
                break;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
        let until = 1_000 + LEASE_MS * 2 / 3;
        assert_eq!(machine.acting(now).is_some(), now < until, "at {now}");
    }
    assert!(renewals >= 2, "renewal retried: {renewals}");
    // It stops before the lease can expire in etcd (granted at 1000 at the earliest).
    assert!(now < 1_000 + LEASE_MS);
    assert_eq!(machine.role(), Role::Follower);
    assert!(machine.status(now).last_step_down.is_some());
    assert_eq!(machine.leader(), None, "it no longer names itself");
}

#[test]
fn renewals_keep_the_right_to_act_counted_from_when_they_were_sent() {
    let mut machine = Leadership::new(info("a"), LEASE_MS);
    let term = leading(&mut machine, 0);
    assert_eq!(machine.poll(LEASE_MS / 3), Some(Action::Renew(term)));
    // The answer arrives late: the right to act counts from the send time, not the answer.
    machine.input(LEASE_MS / 3 + 500, Input::Renewed { sent_ms: LEASE_MS / 3 });
    assert!(machine.acting(LEASE_MS / 3 + LEASE_MS * 2 / 3 - 1).is_some());
    assert!(machine.acting(LEASE_MS / 3 + LEASE_MS * 2 / 3).is_none());
}

#[test]
fn a_lost_lease_mid_runbook_stops_the_leader_at_once() {
    let mut machine = Leadership::new(info("a"), LEASE_MS);
    let term = leading(&mut machine, 0);
    assert!(machine.acting(100).is_some());
    let action = machine.input(200, Input::LeaseGone);
    assert!(matches!(action, Some(Action::StepDown { term: t, .. }) if t == term));
    assert_eq!(machine.acting(201), None);
    // A guarded write that finds another term is the same: stop.
    let mut machine = Leadership::new(info("a"), LEASE_MS);
    leading(&mut machine, 0);
    let action = machine.input(10, Input::Superseded("the leader key changed".into()));
    assert!(matches!(action, Some(Action::StepDown { .. })));
    assert_eq!(machine.acting(11), None);
    // A late answer of the old term changes nothing.
    assert_eq!(machine.input(12, Input::Renewed { sent_ms: 11 }), None);
    assert_eq!(machine.acting(13), None);
}

#[test]
fn two_members_racing_for_an_empty_key_one_wins_the_other_follows_it() {
    let mut etcd = FakeEtcd::default();
    let mut a = Leadership::new(info("a"), LEASE_MS);
    let mut b = Leadership::new(info("b"), LEASE_MS);
    // Both see no leader, both campaign; etcd orders the two transactions.
    let observe_a = a.poll(0).expect("observe");
    let observe_b = b.poll(0).expect("observe");
    let seen_a = etcd.handle(0, &info("a"), &observe_a, 0).expect("answer");
    let seen_b = etcd.handle(0, &info("b"), &observe_b, 0).expect("answer");
    let campaign_a = a.input(1, seen_a).expect("campaign");
    let campaign_b = b.input(1, seen_b).expect("campaign");
    let answer_b = etcd.handle(2, &info("b"), &campaign_b, 1).expect("answer");
    let answer_a = etcd.handle(3, &info("a"), &campaign_a, 1).expect("answer");
    assert!(matches!(answer_b, Input::Won { .. }));
    assert_eq!(answer_a, Input::Beaten(info("b")));
    a.input(4, answer_a);
    b.input(4, answer_b);
    let load = b.poll(5).expect("load");
    let loaded = etcd.handle(5, &info("b"), &load, 5).expect("answer");
    b.input(6, loaded);
    assert!(b.acting(6).is_some());
    assert!(a.acting(6).is_none());
    assert_eq!(a.leader(), Some(&info("b")));
}

/// Runs `members` against `etcd` in lockstep (every request answered at once) from `from_ms`
/// to `until_ms` in steps of 10 ms; `alive[i]` false: member i sends nothing (dead). Calls
/// `each(now, etcd)` every step. Answers who acted at the end.
fn run_lockstep(
    etcd: &mut FakeEtcd,
    members: &mut [(LeaderInfo, Leadership)],
    alive: &[bool],
    from_ms: u64,
    until_ms: u64,
    mut each: impl FnMut(u64, &mut FakeEtcd, &[(LeaderInfo, Leadership)]),
) {
    let mut now = from_ms;
    while now < until_ms {
        now += 10;
        for (index, (me, machine)) in members.iter_mut().enumerate() {
            if !alive[index] {
                continue;
            }
            let mut next = machine.poll(now);
            while let Some(action) = next.take() {
                let answer = etcd.handle(now, me, &action, now);
                if let Some(input) = answer {
                    next = machine.input(now, input);
                }
            }
        }
        each(now, etcd, members);
    }
}

#[test]
fn a_dead_leaders_key_that_etcd_keeps_extending_is_deposed_a_lease_after_its_last_heartbeat() {
    let mut etcd = FakeEtcd::default();
    let mut members = vec![
        (info("a"), Leadership::new(info("a"), LEASE_MS)),
        (info("b"), Leadership::new(info("b"), LEASE_MS)),
    ];
    // a campaigns first and leads; b follows.
    run_lockstep(&mut etcd, &mut members, &[true, false], 0, 100, |_, _, _| {});
    run_lockstep(&mut etcd, &mut members, &[true, true], 100, 5_000, |_, _, _| {});
    assert!(members[0].1.acting(5_000).is_some());
    let last_heartbeat = etcd.key.as_ref().map(|k| k.modified).expect("a holds the key");
    // a dies at 5000; etcd's raft leader changes at 5500 and again at 8000, each time giving
    // every lease its whole TTL again: the key alone would outlive a until 12000.
    let mut took_over_at = None;
    run_lockstep(
        &mut etcd,
        &mut members,
        &[false, true],
        5_000,
        12_000,
        |now, etcd, members| {
            if now == 5_500 || now == 8_000 {
                etcd.promote(now);
            }
            if took_over_at.is_none() && members[1].1.acting(now).is_some() {
                took_over_at = Some(now);
            }
        },
    );
    let took_over_at = took_over_at.expect("b takes over while etcd still holds a's lease");
    // a's last heartbeat was sent at most a third of the lease before it died, and b saw it
    // within one look: b deposes a lease after that, not after etcd's extended lease.
    assert!(
        took_over_at <= 5_000 + LEASE_MS + super::leadership::OBSERVE_MS_MAX + 20,
        "took over at {took_over_at}"
    );
    assert!(
        took_over_at >= 5_000 + LEASE_MS - LEASE_MS / 3,
        "took over at {took_over_at}: too early"
    );
    assert!(
        etcd.leases.len() >= 2,
        "a's lease still lives in etcd: deposing, not expiry, ended its term"
    );
    let status = members[1].1.status(took_over_at);
    let why = status.last_deposed.expect("b says it deposed a");
    assert!(why.contains("deposed a's leader key"), "{why}");
    assert!(
        etcd.key
            .as_ref()
            .is_some_and(|k| k.holder == info("b") && k.created > last_heartbeat)
    );
}

#[test]
fn a_live_leader_renewing_through_raft_leader_changes_is_never_deposed() {
    let mut etcd = FakeEtcd::default();
    let mut members = vec![
        (info("a"), Leadership::new(info("a"), LEASE_MS)),
        (info("b"), Leadership::new(info("b"), LEASE_MS)),
        (info("c"), Leadership::new(info("c"), LEASE_MS)),
    ];
    run_lockstep(&mut etcd, &mut members, &[true, false, false], 0, 100, |_, _, _| {});
    let term = members[0].1.acting(100).expect("a leads");
    run_lockstep(
        &mut etcd,
        &mut members,
        &[true, true, true],
        100,
        60_000,
        |now, etcd, members| {
            if now % 2_500 == 0 {
                etcd.promote(now);
            }
            assert_eq!(members[0].1.acting(now), Some(term), "a acts throughout, at {now}");
        },
    );
    assert!(members[1].1.status(60_000).last_deposed.is_none());
    assert!(members[2].1.status(60_000).last_deposed.is_none());
}

#[test]
fn a_heartbeat_landing_after_the_followers_first_look_refuses_its_depose() {
    let mut etcd = FakeEtcd::default();
    let (a, b) = (info("a"), info("b"));
    let mut leader = Leadership::new(a.clone(), LEASE_MS);
    let mut follower = Leadership::new(b.clone(), LEASE_MS);
    let term = leading(&mut leader, 0);
    // Kept alive (etcd promoted it) past the whole test.
    etcd.leases.insert(term.lease_id, 10 * LEASE_MS);
    etcd.key = Some(Key {
        holder: a.clone(),
        lease: term.lease_id,
        created: term.revision,
        modified: term.revision,
    });
    etcd.revision = term.revision;
    // The follower first sees the key at 100, then not again until a lease later: it deposes.
    follower.poll(100);
    let seen = etcd.handle(100, &b, &Action::Observe, 100).expect("answer");
    assert_eq!(follower.input(100, seen), None);
    follower.poll(100 + LEASE_MS);
    let seen = etcd
        .handle(100 + LEASE_MS, &b, &Action::Observe, 100 + LEASE_MS)
        .expect("answer");
    let depose = follower.input(100 + LEASE_MS, seen).expect("a lease unchanged: depose");
    assert!(matches!(depose, Action::Depose { unchanged_ms, .. } if unchanged_ms == LEASE_MS));
    // The leader's renewal lands first (it had been slow): the depose finds another revision.
    etcd.handle(100 + LEASE_MS, &a, &Action::Renew(term), 100 + LEASE_MS)
        .expect("renewed");
    let refused = etcd.handle(100 + LEASE_MS + 1, &b, &depose, 0).expect("answer");
    assert_eq!(refused, Input::DeposeRefused);
    assert_eq!(follower.input(100 + LEASE_MS + 1, refused), None);
    // It looks again at once, and counts the new revision from now.
    assert_eq!(follower.poll(100 + LEASE_MS + 1), Some(Action::Observe));
    let seen = etcd
        .handle(100 + LEASE_MS + 2, &b, &Action::Observe, 0)
        .expect("answer");
    assert_eq!(follower.input(100 + LEASE_MS + 2, seen), None);
    assert!(etcd.holds(term));
}

/// Members configured with different `lease_ms` (a rolling change from 3 s to 6 s): the leader
/// renews every 2 s and acts until 4 s after its last renewal was sent; a follower still on 3 s
/// must wait out the leader's 6 s, which the key names, not its own 3 s. The leader is cut off
/// etcd at 5000 (found by a review: deposing by the follower's own lease let both act).
#[test]
fn a_follower_with_a_shorter_lease_waits_out_the_leaders_before_deposing_it() {
    let mut etcd = FakeEtcd::default();
    let a = LeaderInfo {
        lease_ms: Some(2 * LEASE_MS),
        ..info("a")
    };
    let b = info("b");
    let mut leader = Leadership::new(a.clone(), 2 * LEASE_MS);
    let mut follower = Leadership::new(b.clone(), LEASE_MS);
    let (mut now, mut both, mut took_over_at) = (0, Vec::new(), None);
    while now < 20_000 {
        now += 10;
        // etcd keeps a's 6 s lease alive (promoted) for the whole run: only a depose ends it.
        if let Some(key) = &etcd.key
            && key.holder == a
        {
            etcd.leases.insert(key.lease, now + 2 * LEASE_MS);
        }
        if now < 5_000 {
            let mut next = leader.poll(now);
            while let Some(action) = next.take() {
                if let Some(input) = etcd.handle(now, &a, &action, now) {
                    next = leader.input(now, input);
                }
            }
        } else if let Some(action) = leader.poll(now)
            && !matches!(action, Action::StepDown { .. })
        {
            leader.input(now, Input::Failed("unreachable".into()));
        }
        if now > 100 {
            let mut next = follower.poll(now);
            while let Some(action) = next.take() {
                if let Some(input) = etcd.handle(now, &b, &action, now) {
                    next = follower.input(now, input);
                }
            }
        }
        if leader.acting(now).is_some() && follower.acting(now).is_some() {
            both.push(now);
        }
        if took_over_at.is_none() && follower.acting(now).is_some() {
            took_over_at = Some(now);
        }
    }
    assert!(
        both.is_empty(),
        "a and b both act from {:?} to {:?}",
        both.first(),
        both.last()
    );
    let took_over_at = took_over_at.expect("b takes over once a's own lease has passed");
    assert!(
        took_over_at >= 5_000 - 2 * LEASE_MS / 3 + 2 * LEASE_MS,
        "took over at {took_over_at}"
    );
}

/// A rolling upgrade: the leader still runs a version before deposing (its renewal is a
/// keep-alive only, its key names no lease_ms); an upgraded follower never deposes it and
/// waits for its lease to expire (found by a review: it deposed it, and the old leader,
/// its keep-alives still answered, went on acting).
#[test]
fn a_leader_of_a_version_before_deposing_is_never_deposed_only_outlived() {
    let mut etcd = FakeEtcd::default();
    let a = LeaderInfo {
        lease_ms: None,
        ..info("a")
    };
    let b = info("b");
    let mut old = Leadership::new(a.clone(), LEASE_MS);
    let mut follower = Leadership::new(b.clone(), LEASE_MS);
    let (mut now, mut both) = (0, Vec::new());
    while now < 20_000 {
        now += 10;
        etcd.expire(now);
        // The old leader dies at 15000; until then it renews with keep-alives only.
        if now < 15_000 {
            let mut next = old.poll(now);
            while let Some(action) = next.take() {
                let input = match &action {
                    Action::Renew(term) => match etcd.leases.get_mut(&term.lease_id) {
                        Some(expiry) => {
                            *expiry = now + LEASE_MS;
                            Some(Input::Renewed { sent_ms: now })
                        }
                        None => Some(Input::LeaseGone),
                    },
                    _ => etcd.handle(now, &a, &action, now),
                };
                if let Some(input) = input {
                    next = old.input(now, input);
                }
            }
        }
        if now > 100 {
            let mut next = follower.poll(now);
            while let Some(action) = next.take() {
                assert!(
                    !matches!(action, Action::Depose { .. }),
                    "deposed a key without lease_ms at {now}"
                );
                if let Some(input) = etcd.handle(now, &b, &action, now) {
                    next = follower.input(now, input);
                }
            }
        }
        if old.acting(now).is_some() && follower.acting(now).is_some() {
            both.push(now);
        }
    }
    assert!(
        both.is_empty(),
        "a and b both act from {:?} to {:?}",
        both.first(),
        both.last()
    );
    assert!(follower.acting(20_000).is_some(), "b leads once a's lease expired");
}

fn order(generation: u64, to: &str) -> RunbookOrder {
    RunbookOrder {
        generation: Generation(generation),
        kind: TransitionKind::Failover,
        from: Some(Placement::single(RegionId::new("us"))),
        to: Placement::single(RegionId::new(to)),
        reason: "test".into(),
        force_data_loss: false,
        continues: None,
    }
}

#[test]
fn the_shared_state_records_a_runbook_before_its_steps_and_rolls_it_forward() {
    let state = SharedState::default();
    let started = state
        .start(&order(4, "eu"), &HoldTimers::default(), "a", 1)
        .expect("starts above 0");
    assert_eq!(started.generation, Generation(4));
    let one = started.step_done(Generation(4), "dns", "a", 2).expect("in progress");
    let again = one.step_done(Generation(4), "dns", "a", 3).expect("idempotent");
    assert_eq!(
        again.runbook.as_ref().map(|p| p.steps_done.clone()),
        Some(vec!["dns".to_string()])
    );
    // The leader dies here: the next one restores the interrupted runbook and rolls it forward
    // with a generation above 4.
    let restored = again.restored(Generation(0), 0, 0, 60_000);
    assert_eq!(restored.generation, Generation(4));
    assert_eq!(restored.interrupted, Some(Placement::single(RegionId::new("eu"))));
    let mut engine = crate::engine::Engine::new(
        crate::engine::EngineConfig::with_defaults(vec![
            crate::engine::RegionSpec {
                id: RegionId::new("us"),
                priority: 1,
            },
            crate::engine::RegionSpec {
                id: RegionId::new("eu"),
                priority: 2,
            },
        ]),
        restored,
    )
    .expect("engine");
    let commands = engine.step(1, crate::engine::Event::Tick);
    let rolled = commands
        .iter()
        .find_map(|c| match c {
            crate::engine::Command::RunRunbook(order) => Some(order.clone()),
            _ => None,
        })
        .expect("rolled forward at once");
    assert_eq!(rolled.kind, TransitionKind::RollForward);
    assert_eq!(rolled.generation, Generation(5));
    // An old leader's late step report for generation 4 is refused once 5 started.
    let next = again
        .start(&rolled, &HoldTimers::default(), "b", 4)
        .expect("5 is above 4");
    assert_eq!(
        next.step_done(Generation(4), "dns", "a", 5),
        Err(StateError::NotInProgress(4))
    );
    // The roll-forward knows generation 4 applied "dns": it is not applied again.
    assert_eq!(
        next.runbook.as_ref().map(|p| p.applied_earlier.clone()),
        Some(BTreeMap::from([("dns".to_string(), 4)]))
    );
    assert_eq!(
        next.start(&order(5, "eu"), &HoldTimers::default(), "a", 6),
        Err(StateError::GenerationNotAbove { order: 5, recorded: 5 })
    );
    let done = next
        .finish(Generation(5), &RunbookOutcome::Succeeded, "b", 7)
        .expect("finishes");
    assert_eq!(done.observed, Some(Placement::single(RegionId::new("eu"))));
    assert_eq!(done.observed_generation, Generation(5));
    assert_eq!(done.runbook, None);
    assert_eq!(done.restored(Generation(0), 0, 0, 60_000).interrupted, None);
    // A floor lifts the generation (migrating from a single controller).
    assert_eq!(done.restored(Generation(40), 0, 0, 60_000).generation, Generation(40));
}

#[test]
fn a_failed_runbook_stays_recorded_for_the_next_leader() {
    let state = SharedState::default()
        .start(&order(1, "eu"), &HoldTimers::default(), "a", 1)
        .expect("start");
    let failed = state
        .finish(
            Generation(1),
            &RunbookOutcome::Failed {
                step: "dns".into(),
                error: "HTTP 503".into(),
            },
            "a",
            2,
        )
        .expect("finish");
    assert_eq!(
        failed.runbook.as_ref().and_then(|p| p.failed.clone()),
        Some("step 'dns': HTTP 503".to_string())
    );
    assert_eq!(
        failed.restored(Generation(0), 0, 0, 60_000).interrupted,
        Some(Placement::single(RegionId::new("eu")))
    );
}

use common::rng::Rng;

/// Three members, etcd partitions that come and go, raft leader changes that extend every
/// lease (`promote`), request delays up to the timeout, a
/// leader that writes a new generation whenever it can: at every instant at most one member
/// acts, a member acts only while etcd still holds its key, every accepted write comes from the
/// term holding the key, and the generation only grows.
#[test]
fn simulation_at_most_one_member_acts_and_generations_grow() {
    let timeout_ms = LEASE_MS / 6;
    let mut handovers = 0;
    let mut deposes = 0;
    for seed in common::rng::seeds_from_env("simulation_at_most_one_member_acts_and_generations_grow", 1..=40) {
        let mut rng = Rng::new(seed);
        let mut etcd = FakeEtcd::default();
        let names = ["a", "b", "c"];
        let mut sims: Vec<Sim> = names
            .iter()
            .map(|n| Sim {
                machine: Leadership::new(info(n), LEASE_MS),
                pending: None,
                partitioned: false,
            })
            .collect();
        // Each member's view of the state's mod revision (what a guarded write expects).
        let mut expect_mod: Vec<i64> = vec![0; names.len()];
        let mut generations = Vec::new();
        let mut leaders = std::collections::BTreeSet::new();
        let mut now = 0u64;
        while now < 120_000 {
            now += 10;
            etcd.expire(now);
            if rng.below(700) == 0 {
                etcd.promote(now);
            }
            if rng.below(400) == 0 {
                let who = rng.below(3) as usize;
                sims[who].partitioned = !sims[who].partitioned;
            }
            for (index, sim) in sims.iter_mut().enumerate() {
                let me = info(names[index]);
                // Deliver or process the request in flight.
                if let Some((action, sent, process_at, answer_at, answer)) = sim.pending.take() {
                    let mut answer = answer;
                    if answer.is_none() && now >= process_at && !sim.partitioned {
                        answer = etcd.handle(now, &me, &action, sent);
                        if matches!(action, Action::Load(_)) && matches!(answer, Some(Input::Loaded)) {
                            expect_mod[index] = etcd.state_mod;
                        }
                    }
                    if now >= answer_at {
                        let input = answer.unwrap_or_else(|| Input::Failed("timed out".into()));
                        deposes += usize::from(input == Input::Deposed);
                        if let Some(next) = sim.machine.input(now, input) {
                            start(sim, next, now, &mut rng, timeout_ms, &mut etcd, &me);
                        }
                    } else {
                        sim.pending = Some((action, sent, process_at, answer_at, answer));
                    }
                }
                if sim.pending.is_none()
                    && let Some(action) = sim.machine.poll(now)
                {
                    start(sim, action, now, &mut rng, timeout_ms, &mut etcd, &me);
                }
                // The acting leader writes a new generation now and then.
                if let Some(term) = sim.machine.acting(now) {
                    assert!(
                        etcd.holds(term),
                        "seed {seed}: {} acts at {now} without the key",
                        names[index]
                    );
                    leaders.insert(index);
                    if !sim.partitioned && rng.below(50) == 0 {
                        let generation = etcd.state.generation.next();
                        let next = etcd
                            .state
                            .start(&order(generation.0, "eu"), &HoldTimers::default(), names[index], now)
                            .expect("above");
                        if let Some(revision) = etcd.write(term, expect_mod[index], next) {
                            expect_mod[index] = revision;
                            generations.push(generation);
                        }
                    }
                }
            }
            let acting = sims.iter().filter(|s| s.machine.acting(now).is_some()).count();
            assert!(acting <= 1, "seed {seed}: {acting} members act at {now}");
        }
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: {generations:?}"
        );
        assert!(!generations.is_empty(), "seed {seed}: somebody led at some point");
        handovers += leaders.len() - 1;
    }
    assert!(
        handovers >= 20,
        "partitions moved the leadership only {handovers} times"
    );
    // Raft leader changes keep cut-off leaders' leases alive: some handovers go by deposing.
    assert!(deposes >= 5, "only {deposes} deposes");
}

fn start(
    sim: &mut Sim,
    action: Action,
    now: u64,
    rng: &mut Rng,
    timeout_ms: u64,
    etcd: &mut FakeEtcd,
    me: &LeaderInfo,
) {
    if let Action::StepDown { .. } = action {
        // Revoking is best effort: only when etcd is reachable.
        if !sim.partitioned {
            etcd.handle(now, me, &action, now);
        }
        return;
    }
    let to = rng.below(timeout_ms / 2);
    let back = rng.below(timeout_ms / 2);
    // Some requests take longer than the timeout: they may still be applied, unanswered.
    let slow = rng.below(20) == 0;
    let process_at = now + if slow { timeout_ms } else { to };
    let answer_at = now + if slow { timeout_ms } else { to + back };
    sim.pending = Some((action, now, process_at, answer_at, None));
}

#[test]
fn the_section_names_each_mistake_with_a_fix() {
    let section = HaSection {
        etcd: vec!["10.0.0.1:2379".into()],
        member: "a b".into(),
        lease_ms: 1500,
        prefix: "switchyard".into(),
        compact_history_s: 5,
        advertise: Some("10.0.0.2:7400".into()),
        ca_file: None,
        cert_file: Some("/nonexistent/cert.pem".into()),
        key_file: None,
        user: Some("root".into()),
        password_file: None,
        token_file: Some("/nonexistent/member.token".into()),
    };
    let keys: Vec<&str> = section.problems().iter().map(|(key, _, _)| *key).collect();
    for key in [
        "etcd",
        "member",
        "lease_ms",
        "prefix",
        "compact_history_s",
        "advertise",
        "cert_file",
        "user",
        "token_file",
    ] {
        assert!(keys.contains(&key), "{key} not reported: {keys:?}");
    }
    let good = HaSection {
        etcd: vec!["http://127.0.0.1:2379".into()],
        member: "us-east-1".into(),
        lease_ms: 5000,
        prefix: "/switchyard".into(),
        compact_history_s: super::COMPACT_HISTORY_S_DEFAULT,
        advertise: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password_file: None,
        token_file: None,
    };
    if cfg!(feature = "etcd") {
        assert!(good.problems().is_empty(), "{:?}", good.problems());
    } else {
        let problems = good.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("without etcd support"), "{problems:?}");
    }
    // URLs with a bad port or no host are named too (config check parses every URL).
    for (etcd, advertise) in [
        ("http://127.0.0.1:99999", "http://127.0.0.1:7400"),
        ("http://127.0.0.1:0", "http://127.0.0.1:7400"),
        ("http://:2379", "http://127.0.0.1:7400"),
        ("http://127.0.0.1:2379", "http://127.0.0.1:99999"),
    ] {
        let bad = HaSection {
            etcd: vec![etcd.into()],
            advertise: Some(advertise.into()),
            ..good.clone()
        };
        let problems = bad.problems();
        assert!(
            problems
                .iter()
                .any(|(key, problem, _)| (*key == "etcd" && problem.contains(etcd))
                    || (*key == "advertise" && problem.contains(advertise))),
            "{etcd} {advertise}: {problems:?}"
        );
    }
    assert_eq!(good.leader_key(), "/switchyard/leader");
    assert_eq!(good.state_key(), "/switchyard/state");
}

#[cfg(feature = "etcd")]
const CONFIG: &str = include_str!("../../tests/data/ha.toml");

#[cfg(feature = "etcd")]
#[test]
fn the_config_file_takes_an_ha_section_with_paths_from_its_folder() {
    let folder = tempfile::tempdir().expect("temp dir");
    std::fs::write(folder.path().join("etcd-password"), "secret\n").expect("write");
    let config = crate::config::parse_in("c.toml", CONFIG, folder.path()).expect("valid");
    let ha = config.file.controller.ha.expect("ha section");
    assert_eq!(ha.lease_ms, super::LEASE_MS_DEFAULT);
    assert_eq!(ha.prefix, "/switchyard");
    assert_eq!(ha.password_file, Some(folder.path().join("etcd-password")));
    // Without the password file, and with a lease etcd cannot grant, the file is refused with
    // the line of each mistake.
    let text = CONFIG.replace("member = \"us-east-1\"", "member = \"us-east-1\"\nlease_ms = 2500");
    let error = crate::config::parse_in("c.toml", &text, std::path::Path::new("/nonexistent")).expect_err("invalid");
    let lease = error
        .problems
        .iter()
        .find(|p| p.message.contains("lease_ms 2500"))
        .expect("lease_ms reported");
    assert_eq!(lease.line, 8);
    assert!(
        error.problems.iter().any(|p| p.message.contains("password_file")),
        "{:?}",
        error.problems
    );
    // Without the section: one controller, as before.
    let start = CONFIG.find("[controller.ha]").expect("section");
    let end = CONFIG.find("[quorum]").expect("section");
    let single = format!("{}{}", &CONFIG[..start], &CONFIG[end..]);
    let config = crate::config::parse_in("c.toml", &single, folder.path()).expect("valid");
    assert_eq!(config.file.controller.ha, None);
}

/// The engine's defaults for regions `us` (priority 1) and `eu` (2).
fn us_then_eu() -> crate::engine::EngineConfig {
    use crate::engine::{EngineConfig, RegionSpec};
    EngineConfig::with_defaults(vec![
        RegionSpec {
            id: RegionId::new("us"),
            priority: 1,
        },
        RegionSpec {
            id: RegionId::new("eu"),
            priority: 2,
        },
    ])
}

#[test]
fn a_new_leader_keeps_the_hold_and_the_hourly_count_of_the_old_one() {
    use crate::engine::{Command, Engine, Event, Verdict};
    let mut config = us_then_eu();
    config.stability_window_ms = 0;
    config.failback_lag_max_ms = None;
    // The old leader failed over at wall time 1 000 000 (its engine clock: 40 000).
    let timers = HoldTimers::from_engine(Some(40_000), &[40_000], 50_000, 1_010_000);
    assert_eq!(timers.last_transition_at_ms, Some(1_000_000));
    let state = SharedState {
        observed: Some(Placement::single(RegionId::new("eu"))),
        observed_generation: Generation(2),
        generation: Generation(2),
        last_transition_at_ms: timers.last_transition_at_ms,
        transitions_at_ms: timers.transitions_at_ms.clone(),
        ..SharedState::default()
    };
    // A new leader takes over 30 s later, its engine clock at 100 000: the transition was at
    // 70 000 on that clock, so the 60 s hold ends at 130 000.
    let restored = state.restored(Generation(0), 100_000, 1_030_000, 60_000);
    assert_eq!(restored.last_transition_ms, Some(70_000));
    let mut engine = Engine::new(config, restored).expect("engine");
    let up = |region: &str| Event::Verdict {
        region: RegionId::new(region),
        verdict: Verdict::Up,
        reason: "ok".into(),
    };
    let starts = |commands: Vec<Command>| commands.iter().any(|c| matches!(c, Command::RunRunbook(_)));
    engine.step(100_000, up("us"));
    engine.step(100_000, up("eu"));
    assert!(!starts(engine.step(100_001, Event::Tick)), "the hold still runs");
    let status = engine.status(100_001);
    assert!(
        status.reasons.iter().any(|r| r.contains("holding")),
        "{:?}",
        status.reasons
    );
    assert_eq!(status.transitions_last_hour, 1, "the old leader's failover counts");
    assert!(starts(engine.step(130_001, Event::Tick)), "failback after the hold");
    // A wall time ahead of this member's clock counts as now: the hold is never shortened.
    let ahead = SharedState {
        last_transition_at_ms: Some(2_000_000),
        ..state
    };
    assert_eq!(
        ahead
            .restored(Generation(0), 100_000, 1_030_000, 60_000)
            .last_transition_ms,
        Some(100_000)
    );
}

/// The engine under leadership changes at arbitrary points: members take over from the shared
/// state (rebuilding their engine), a runbook is guarded step by step, an old leader's step
/// may still land late, and the world (DNS, the pointer) refuses a generation older than one
/// it applied. Checked: the current leader's steps are never refused (the generation from etcd
/// is above anything an old leader used), generations in etcd only grow, and once leadership
/// and health settle every decision is applied (world == the leader's intent == etcd's
/// observed placement).
#[test]
fn simulation_engine_under_leadership_changes_applies_every_decision_once_per_generation() {
    use crate::engine::{Command, Engine, Event, Verdict};
    const STEPS: [&str; 2] = ["dns", "pointer"];
    const TICK_MS: u64 = 50;
    const END_MS: u64 = 240_000;
    const QUIET_MS: u64 = 60_000;
    let mut config = us_then_eu();
    config.min_hold_ms = 2_000;
    config.stability_window_ms = 2_000;
    config.failback_lag_max_ms = None;
    config.runbook_retry_ms = 100;
    config.startup_grace_ms = 0;
    config.failovers_per_hour_max = 10_000;
    struct Run {
        term: u64,
        order: RunbookOrder,
        started: bool,
        next_step: usize,
        /// When an old leader's step (passed its guard before the term ended) lands, if ever.
        late_at: Option<u64>,
    }
    // Across seeds: an old leader's late steps that the world refused, and that landed before
    // any newer generation (both paths must be exercised for the check to mean anything).
    let (mut late_refused, mut late_landed) = (0u32, 0u32);
    let seeds = common::rng::seeds_from_env(
        "simulation_engine_under_leadership_changes_applies_every_decision_once_per_generation",
        1..=30,
    );
    let replaying = seeds.len() == 1;
    for seed in seeds {
        let mut rng = Rng::new(seed.wrapping_mul(7919));
        // Every step the world applied, as (generation, step): a generation applies each step
        // at most once, and the generations applied never go back (at most one generation
        // acts on the world at a time, whatever the leadership did).
        let mut applied: Vec<(u64, usize)> = Vec::new();
        let mut state = SharedState::default();
        let mut term = 1u64;
        let mut leader: Option<usize> = Some(0);
        let mut handover_at = 0u64;
        let mut engine =
            Some(Engine::new(config.clone(), state.restored(Generation(0), 0, 0, config.min_hold_ms)).expect("engine"));
        let mut runs: Vec<Run> = Vec::new();
        // The world: the highest generation applied and the placement it holds.
        let (mut world_generation, mut world_active) = (0u64, None::<RegionId>);
        let mut up = [true, true];
        let mut handovers = 0;
        let mut now = 0u64;
        while now < END_MS {
            now += TICK_MS;
            let quiet = now > END_MS - QUIET_MS;
            if quiet {
                up = [true, true];
            } else if rng.below(200) == 0 {
                let region = rng.below(2) as usize;
                up[region] = !up[region];
                if !up[0] && !up[1] {
                    up[region] = true;
                }
            }
            // Leadership moves at arbitrary points (a dead or cut leader; another takes over
            // once the lease expired).
            // Often mid-runbook, at a step boundary, where losing the leader matters most.
            let mid_runbook = runs.iter().any(|run| run.late_at.is_none() && run.started);
            if !quiet && leader.is_some() && (rng.below(150) == 0 || (mid_runbook && rng.below(4) == 0)) {
                leader = None;
                engine = None;
                handover_at = now + rng.below(3_000);
            }
            if leader.is_none() && now >= handover_at {
                term += 1;
                handovers += 1;
                leader = Some(rng.below(3) as usize);
                engine = Some(
                    Engine::new(
                        config.clone(),
                        state.restored(Generation(0), now, now, config.min_hold_ms),
                    )
                    .expect("engine from etcd"),
                );
            }
            // Runbooks: one step per tick; guarded writes only succeed in the current term.
            for run in runs.iter_mut() {
                let current = leader.is_some() && run.term == term;
                let generation = run.order.generation;
                if !current {
                    // An old leader's step that passed its guard before the term ended may
                    // still land, at any time later (a slow network, a paused process): the
                    // world refuses it once a newer generation was applied.
                    if run.started && run.next_step < STEPS.len() {
                        let at = *run.late_at.get_or_insert_with(|| {
                            if rng.below(2) == 0 {
                                now + rng.below(8_000)
                            } else {
                                u64::MAX
                            }
                        });
                        if at == u64::MAX {
                            run.next_step = usize::MAX;
                            continue;
                        }
                        if now < at {
                            continue;
                        }
                        if generation.0 >= world_generation {
                            world_generation = generation.0;
                            world_active = Some(run.order.to.active.clone());
                            applied.push((generation.0, run.next_step));
                            late_landed += 1;
                        } else {
                            late_refused += 1;
                        }
                    }
                    run.next_step = usize::MAX;
                    continue;
                }
                if !run.started {
                    state = state
                        .start(&run.order, &HoldTimers::default(), "leader", now)
                        .unwrap_or_else(|e| panic!("seed {seed}: the current term's start refused: {e}"));
                    run.started = true;
                } else if run.next_step < STEPS.len() {
                    assert!(
                        generation.0 >= world_generation,
                        "seed {seed}: the current leader's generation {generation} is below {world_generation} applied before"
                    );
                    world_generation = generation.0;
                    world_active = Some(run.order.to.active.clone());
                    assert!(
                        !applied.contains(&(generation.0, run.next_step)),
                        "seed {seed}: generation {generation} applied step {} twice",
                        STEPS[run.next_step]
                    );
                    applied.push((generation.0, run.next_step));
                    state = state
                        .step_done(generation, STEPS[run.next_step], "leader", now)
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    run.next_step += 1;
                } else if run.next_step == STEPS.len() {
                    state = state
                        .finish(generation, &RunbookOutcome::Succeeded, "leader", now)
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    run.next_step = usize::MAX;
                    if let Some(engine) = engine.as_mut() {
                        engine.step(
                            now,
                            Event::RunbookFinished {
                                generation,
                                outcome: RunbookOutcome::Succeeded,
                            },
                        );
                    }
                }
            }
            runs.retain(|run| run.next_step != usize::MAX);
            let Some(engine) = engine.as_mut() else {
                continue;
            };
            let mut commands = Vec::new();
            for (index, region) in ["us", "eu"].iter().enumerate() {
                commands.extend(engine.step(
                    now,
                    Event::Verdict {
                        region: RegionId::new(*region),
                        verdict: if up[index] { Verdict::Up } else { Verdict::Down },
                        reason: String::new(),
                    },
                ));
            }
            commands.extend(engine.step(now, Event::Tick));
            for command in commands {
                if let Command::CancelRunbook { generation } = &command {
                    // Superseded by a newer decision: the runtime aborts it between steps.
                    runs.retain(|run| run.order.generation != *generation);
                }
                if let Command::RunRunbook(order) = command {
                    assert!(order.generation > state.generation, "seed {seed}: generation reused");
                    runs.push(Run {
                        term,
                        order,
                        started: false,
                        next_step: 0,
                        late_at: None,
                    });
                }
            }
        }
        let engine = engine.expect("a leader at the end");
        let status = engine.status(now);
        let intent = status.intent.expect("an intent");
        assert_eq!(
            intent.active,
            RegionId::new("us"),
            "seed {seed}: settled on the preferred region"
        );
        assert_eq!(
            world_active,
            Some(intent.active.clone()),
            "seed {seed}: the world holds the decision"
        );
        assert_eq!(state.observed, Some(intent), "seed {seed}: etcd records it");
        assert_eq!(state.runbook, None, "seed {seed}: nothing left in progress");
        assert!(handovers > 3, "seed {seed}: leadership moved only {handovers} times");
        assert!(
            applied.windows(2).all(|w| w[0].0 <= w[1].0),
            "seed {seed}: an older generation acted after a newer one: {applied:?}"
        );
    }
    // Across all the seeds, not necessarily in the one replayed.
    assert!(
        replaying || (late_refused > 0 && late_landed > 0),
        "late steps refused {late_refused}, landed {late_landed}: both paths must occur"
    );
}

#[test]
fn hold_timers_drop_what_no_longer_matters_and_never_shorten_the_rest() {
    let wall_now = 10 * FAILOVER_WINDOW_MS;
    let timers = HoldTimers {
        last_transition_at_ms: Some(wall_now - 120_000),
        transitions_at_ms: vec![wall_now - FAILOVER_WINDOW_MS - 1, wall_now - 30_000, wall_now + 5_000],
    };
    // A hold of 60 s ended a minute ago: nothing to restore; the transition an hour and a
    // millisecond old is outside the hourly window.
    let (last, transitions) = timers.to_engine(500_000, wall_now, 60_000);
    assert_eq!(last, None);
    assert_eq!(transitions, vec![470_000, 500_000], "a future time counts as now");
    // A hold of 5 min still runs: 2 min ago on the engine's clock.
    assert_eq!(timers.to_engine(500_000, wall_now, 300_000).0, Some(380_000));
    // An engine that just started: earlier times count as its start (the hold runs longer).
    assert_eq!(timers.to_engine(1, wall_now, 300_000).0, Some(0));
}

#[test]
fn a_roll_forward_carries_what_earlier_generations_of_its_decision_applied() {
    let four = SharedState::default()
        .start(&order(4, "eu"), &HoldTimers::default(), "a", 1)
        .and_then(|s| s.step_done(Generation(4), "db", "a", 2))
        .and_then(|s| s.step_done(Generation(4), "dns", "a", 3))
        .expect("generation 4 applied db and dns");
    let continuing = |generation: u64, to: &str, kind: TransitionKind| RunbookOrder {
        kind,
        continues: Some(TransitionKind::Failover),
        ..order(generation, to)
    };
    // Generation 5 rolls forward, applies "txt", and is cut off in turn.
    let five = four
        .start(
            &continuing(5, "eu", TransitionKind::RollForward),
            &HoldTimers::default(),
            "b",
            4,
        )
        .and_then(|s| s.step_done(Generation(5), "txt", "b", 5))
        .expect("generation 5 applied txt");
    // Generation 6 (a retry) knows all three, each with the generation that applied it.
    let six = five
        .start(
            &continuing(6, "eu", TransitionKind::Retry),
            &HoldTimers::default(),
            "c",
            6,
        )
        .expect("6 is above 5");
    assert_eq!(
        six.runbook.as_ref().map(|p| p.applied_earlier.clone()),
        Some(BTreeMap::from([
            ("db".to_string(), 4),
            ("dns".to_string(), 4),
            ("txt".to_string(), 5)
        ]))
    );
    // Another placement, or a new decision to the same one, starts afresh.
    let elsewhere = five
        .start(
            &continuing(6, "us", TransitionKind::RollForward),
            &HoldTimers::default(),
            "c",
            6,
        )
        .expect("6 is above 5");
    assert_eq!(elsewhere.runbook.map(|p| p.applied_earlier), Some(BTreeMap::new()));
    let fresh = five
        .start(&order(6, "eu"), &HoldTimers::default(), "c", 6)
        .expect("6 is above 5");
    assert_eq!(fresh.runbook.map(|p| p.applied_earlier), Some(BTreeMap::new()));
    // The state a version without the field wrote still reads, with nothing carried.
    let mut json = serde_json::to_value(&four).expect("serializable");
    assert!(json["runbook"].get("applied_earlier").is_none(), "empty is not written");
    json["runbook"]["steps_done"] = serde_json::json!(["dns"]);
    let read: SharedState = serde_json::from_value(json).expect("reads");
    assert_eq!(read.runbook.map(|p| p.applied_earlier), Some(BTreeMap::new()));
}
