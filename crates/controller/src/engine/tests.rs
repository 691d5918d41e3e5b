//! Scripted observation sequences against the engine.

use super::*;

const PRIMARY: &str = "us-east-1";
const SECONDARY: &str = "eu-west-1";

fn r(name: &str) -> RegionId {
    RegionId::new(name)
}

fn two_regions() -> EngineConfig {
    EngineConfig::with_defaults(vec![
        RegionSpec {
            id: r(PRIMARY),
            priority: 1,
        },
        RegionSpec {
            id: r(SECONDARY),
            priority: 2,
        },
    ])
}

/// Drives an engine; runbooks complete (with `next_outcome`) when `finish` is called.
struct Harness {
    engine: Engine,
    now: u64,
    running: Option<RunbookOrder>,
    started: Vec<RunbookOrder>,
    alerts: Vec<String>,
    answers: Vec<(bool, String)>,
    /// Generation of every runbook that succeeded, with its target.
    applied: Vec<(Generation, Placement)>,
    auto_succeed: bool,
    /// Generations cancelled mid-flight by a newer decision.
    cancelled: Vec<Generation>,
}

impl Harness {
    fn new(config: EngineConfig) -> Harness {
        Harness::restored(config, Restored::default())
    }

    fn restored(config: EngineConfig, restored: Restored) -> Harness {
        Harness {
            engine: Engine::new(config, restored).expect("valid config"),
            now: 1_000,
            running: None,
            started: Vec::new(),
            alerts: Vec::new(),
            answers: Vec::new(),
            applied: Vec::new(),
            auto_succeed: true,
            cancelled: Vec::new(),
        }
    }

    fn feed(&mut self, event: Event) {
        let commands = self.engine.step(self.now, event);
        for command in commands {
            match command {
                Command::RunRunbook(order) => {
                    if let Some(last) = self.started.last() {
                        assert!(order.generation > last.generation, "generations strictly increase");
                    }
                    assert!(self.running.is_none(), "one runbook at a time");
                    self.started.push(order.clone());
                    self.running = Some(order);
                }
                Command::CancelRunbook { generation } => {
                    let running = self.running.take().expect("only a running runbook is cancelled");
                    assert_eq!(running.generation, generation);
                    self.cancelled.push(generation);
                }
                Command::Alert { message, .. } => self.alerts.push(message),
                Command::Answer { accepted, reason } => self.answers.push((accepted, reason)),
                Command::Resolved { .. } | Command::Record { .. } => {}
            }
        }
        if self.auto_succeed && self.running.is_some() {
            self.finish(RunbookOutcome::Succeeded);
        }
    }

    fn finish(&mut self, outcome: RunbookOutcome) {
        let order = self.running.take().expect("a runbook runs");
        if outcome == RunbookOutcome::Succeeded {
            self.applied.push((order.generation, order.to.clone()));
        }
        self.feed(Event::RunbookFinished {
            generation: order.generation,
            outcome,
        });
    }

    /// A verdict, then a tick (as the runtime does after each round).
    fn verdict(&mut self, region: &str, verdict: Verdict) {
        self.feed(Event::Verdict {
            region: r(region),
            verdict,
            reason: format!("scripted {verdict:?}"),
        });
        self.feed(Event::Tick);
    }

    fn lag(&mut self, region: &str, lag_ms: u64) {
        self.feed(Event::ReplicationLag {
            region: r(region),
            lag_ms,
        });
        self.feed(Event::Tick);
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.feed(Event::Tick);
    }

    fn manual(&mut self, command: Manual) -> (bool, String) {
        self.feed(Event::Manual(command));
        self.answers.pop().expect("every manual command is answered")
    }

    fn active(&self) -> Option<RegionId> {
        self.engine.observed().map(|p| p.active.clone())
    }

    fn reasons(&self) -> String {
        self.engine.status(self.now).reasons.join(" | ")
    }

    /// Both regions up, initial placement applied.
    fn started_up(config: EngineConfig) -> Harness {
        let mut h = Harness::new(config);
        h.verdict(PRIMARY, Verdict::Up);
        h.verdict(SECONDARY, Verdict::Up);
        h.lag(PRIMARY, 0);
        h.lag(SECONDARY, 0);
        assert_eq!(h.active(), Some(r(PRIMARY)));
        h
    }
}

#[test]
fn initial_placement_waits_for_verdicts_then_picks_the_preferred_region() {
    let mut h = Harness::new(two_regions());
    h.verdict(PRIMARY, Verdict::Up);
    assert!(h.started.is_empty(), "waits for a verdict on every region");
    assert!(h.reasons().contains("starting"));
    h.verdict(SECONDARY, Verdict::Up);
    assert_eq!(h.started.len(), 1);
    assert_eq!(h.started[0].kind, TransitionKind::Initial);
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert_eq!(h.engine.generation(), Generation(1));
}

#[test]
fn a_down_primary_fails_over_at_once_and_the_first_failover_is_never_blocked() {
    let mut config = two_regions();
    config.failovers_per_hour_max = 1;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    let last = h.started.last().expect("a failover ran");
    assert_eq!(last.kind, TransitionKind::Failover);
    assert!(last.reason.contains("is down"), "{}", last.reason);
}

#[test]
fn first_failover_is_not_blocked_by_hold_or_rate_limit_right_after_start() {
    let mut config = two_regions();
    config.failovers_per_hour_max = 1;
    config.min_hold_ms = 3_600_000;
    let mut h = Harness::started_up(config);
    // Immediately: no time passed since the initial placement.
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn unknown_verdicts_never_cause_a_failover() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(PRIMARY, Verdict::Unknown);
    for _ in 0..100 {
        h.advance(1_000);
    }
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert_eq!(h.engine.region_state(&r(PRIMARY)), Some(RegionState::Suspect));
    assert!(h.reasons().contains("suspect"), "{}", h.reasons());
}

#[test]
fn flapping_primary_causes_exactly_one_failover_in_ten_minutes() {
    let mut h = Harness::started_up(two_regions());
    let initial_runbooks = h.started.len();
    // Toggle every 3 s for 10 simulated minutes.
    let mut up = true;
    for _ in 0..200 {
        up = !up;
        h.verdict(PRIMARY, if up { Verdict::Up } else { Verdict::Down });
        h.advance(3_000);
    }
    let transitions = h.started.len() - initial_runbooks;
    assert_eq!(transitions, 1, "one failover, zero flaps: {:?}", h.started);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.reasons().contains("failback to us-east-1 waits"), "{}", h.reasons());
}

#[test]
fn failback_waits_for_the_stability_window_then_happens() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    h.advance(5_000);
    h.verdict(PRIMARY, Verdict::Up);
    h.lag(PRIMARY, 10);
    h.advance(30_000);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.reasons().contains("recovering"), "{}", h.reasons());
    for _ in 0..31 {
        h.lag(PRIMARY, 10);
        h.advance(1_000);
    }
    assert_eq!(h.engine.region_state(&r(PRIMARY)), Some(RegionState::Healthy));
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert_eq!(h.started.last().map(|o| o.kind), Some(TransitionKind::Failback));
    let reason = &h.started.last().expect("the failback").reason;
    assert!(reason.contains("its data has caught up"), "{reason}");
}

#[test]
fn a_failback_without_the_lag_check_does_not_claim_the_data_caught_up() {
    let mut config = two_regions();
    config.failback_lag_max_ms = None;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    h.verdict(PRIMARY, Verdict::Up);
    for _ in 0..70 {
        h.advance(1_000);
    }
    assert_eq!(h.active(), Some(r(PRIMARY)));
    let reason = &h.started.last().expect("the failback").reason;
    assert!(
        !reason.contains("caught up") && reason.contains("not checked"),
        "{reason}"
    );
}

#[test]
fn failback_with_lagging_data_waits_and_says_why() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(PRIMARY, Verdict::Down);
    h.verdict(PRIMARY, Verdict::Up);
    for _ in 0..20 {
        h.lag(PRIMARY, 5_000);
        h.advance(10_000);
    }
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.reasons().contains("above the 1000 ms bound"), "{}", h.reasons());
    // Manual failback refuses too, and says how to force it.
    let (accepted, reason) = h.manual(Manual::Failback);
    assert!(!accepted);
    assert!(reason.contains("switchover --to us-east-1"), "{reason}");
    // Lag readings that stop count as unknown.
    h.advance(40_000);
    assert!(h.reasons().contains("unknown"), "{}", h.reasons());
    h.lag(PRIMARY, 200);
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn failback_waits_for_the_media_the_home_region_lacks() {
    let mut config = two_regions();
    config.failback_media_objects_max = Some(10);
    config.media_stale_ms = 300_000;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    h.verdict(PRIMARY, Verdict::Up);
    for _ in 0..10 {
        h.lag(PRIMARY, 0);
        h.advance(10_000);
    }
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(
        h.reasons().contains("media lag of us-east-1 is unknown"),
        "{}",
        h.reasons()
    );
    h.feed(Event::MediaLag {
        region: r(PRIMARY),
        objects: 250,
    });
    h.lag(PRIMARY, 0);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(
        h.reasons()
            .contains("us-east-1 lacks 250 media objects, above failback_media_objects_max = 10"),
        "{}",
        h.reasons()
    );
    h.feed(Event::MediaLag {
        region: r(PRIMARY),
        objects: 3,
    });
    h.lag(PRIMARY, 0);
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn hold_time_delays_failback() {
    let mut config = two_regions();
    config.min_hold_ms = 120_000;
    config.stability_window_ms = 10_000;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    h.verdict(PRIMARY, Verdict::Up);
    h.lag(PRIMARY, 0);
    h.advance(20_000);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.reasons().contains("holding"), "{}", h.reasons());
    for _ in 0..11 {
        h.lag(PRIMARY, 0);
        h.advance(10_000);
    }
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn all_regions_down_keeps_the_last_good_placement_and_alerts() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(SECONDARY, Verdict::Down);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(PRIMARY)), "never routes to nothing");
    assert!(
        h.alerts.iter().any(|a| a.contains("static stability")),
        "{:?}",
        h.alerts
    );
    assert!(h.reasons().contains("static stability"));
    // The secondary comes back: failover to it (it is recovering, better than down).
    h.verdict(SECONDARY, Verdict::Up);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn partial_partition_with_suspect_secondary_does_not_move_traffic() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(SECONDARY, Verdict::Unknown);
    h.verdict(PRIMARY, Verdict::Down);
    // No healthy target: static stability, stay.
    assert_eq!(h.active(), Some(r(PRIMARY)));
    h.verdict(SECONDARY, Verdict::Up);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn rate_limit_blocks_after_the_limit_until_acknowledged() {
    let mut config = two_regions();
    config.failovers_per_hour_max = 2;
    config.min_hold_ms = 0;
    config.stability_window_ms = 1_000;
    config.failback_lag_max_ms = None;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down); // 1: failover
    h.verdict(PRIMARY, Verdict::Up);
    h.advance(2_000); // 2: failback
    assert_eq!(h.active(), Some(r(PRIMARY)));
    h.verdict(PRIMARY, Verdict::Down); // 3: blocked
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert!(h.reasons().contains("acknowledge"), "{}", h.reasons());
    assert!(h.alerts.iter().any(|a| a.contains("failovers_per_hour_max")));
    let (accepted, _) = h.manual(Manual::Acknowledge);
    assert!(accepted);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn runbook_failure_never_claims_the_failover_and_retries_with_a_new_generation() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    let first = h.running.clone().expect("failover started");
    h.finish(RunbookOutcome::Failed {
        step: "dns".into(),
        error: "connection refused".into(),
    });
    assert_eq!(
        h.active(),
        Some(r(PRIMARY)),
        "observed unchanged after a failed runbook"
    );
    assert!(h.alerts.iter().any(|a| a.contains("failed at step 'dns'")));
    assert!(h.running.is_none(), "waits before retrying");
    h.advance(2_000);
    let retry = h.running.clone().expect("retried");
    assert!(retry.generation > first.generation);
    assert_eq!(retry.kind, TransitionKind::Retry);
    h.finish(RunbookOutcome::Succeeded);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn a_retried_or_rolled_forward_failback_says_it_continues_a_failback() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(PRIMARY, Verdict::Down);
    h.advance(5_000);
    h.verdict(PRIMARY, Verdict::Up);
    h.auto_succeed = false;
    for _ in 0..62 {
        h.lag(PRIMARY, 10);
        h.advance(1_000);
        if h.running.is_some() {
            break;
        }
    }
    let failback = h.running.clone().expect("failback started");
    assert_eq!(failback.kind, TransitionKind::Failback);
    assert_eq!(failback.continues, None);
    assert_eq!(failback.move_kind(), TransitionKind::Failback);
    h.finish(RunbookOutcome::Failed {
        step: "media".into(),
        error: "rsync exited 23".into(),
    });
    h.advance(2_000);
    let retry = h.running.clone().expect("retried");
    assert_eq!(retry.kind, TransitionKind::Retry);
    assert_eq!(retry.continues, Some(TransitionKind::Failback));
    assert_eq!(retry.move_kind(), TransitionKind::Failback);
    // A second failure keeps what the retries continue.
    h.finish(RunbookOutcome::Failed {
        step: "media".into(),
        error: "rsync exited 23".into(),
    });
    h.advance(10_000);
    let again = h.running.clone().expect("retried again");
    assert!(again.generation > retry.generation);
    assert_eq!(again.continues, Some(TransitionKind::Failback));

    // After a restart the audit's interrupted kind carries over to the roll-forward.
    let restored = Restored {
        generation: Generation(7),
        observed: Some(Placement::single(r(SECONDARY))),
        interrupted: Some(Placement::single(r(PRIMARY))),
        interrupted_kind: Some(TransitionKind::Failback),
        ..Restored::default()
    };
    let mut h = Harness::restored(two_regions(), restored);
    h.feed(Event::Tick);
    let order = h.started.first().expect("rolled forward at once");
    assert_eq!(order.kind, TransitionKind::RollForward);
    assert_eq!(order.move_kind(), TransitionKind::Failback);
}

/// A failback whose target goes down again mid-runbook is superseded: the failover runs at
/// once (a higher generation), not after the failback's slow steps, and the failback's late
/// outcome changes nothing.
#[test]
fn a_failover_supersedes_a_failback_still_running_toward_the_region_that_went_down() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    h.advance(5_000);
    h.verdict(PRIMARY, Verdict::Up);
    h.auto_succeed = false;
    for _ in 0..200 {
        h.lag(PRIMARY, 10);
        h.advance(1_000);
        if h.running.is_some() {
            break;
        }
    }
    let failback = h.running.clone().expect("the failback runs");
    assert_eq!(failback.kind, TransitionKind::Failback);
    assert_eq!(failback.to.active, r(PRIMARY));
    // The primary fails again while the failback's steps run.
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.cancelled, vec![failback.generation], "the failback is cancelled");
    let failover = h
        .running
        .clone()
        .unwrap_or_else(|| panic!("the failover runs at once: {}", h.reasons()));
    assert!(failover.generation > failback.generation);
    assert_eq!(failover.to.active, r(SECONDARY));
    assert_eq!(failover.kind, TransitionKind::Failover, "a new move, not a retry");
    // The failback's outcome, arriving late, is stale.
    h.feed(Event::RunbookFinished {
        generation: failback.generation,
        outcome: RunbookOutcome::Succeeded,
    });
    assert_eq!(h.running.as_ref().map(|o| o.generation), Some(failover.generation));
    h.finish(RunbookOutcome::Succeeded);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn stale_runbook_reports_are_ignored() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    let order = h.running.clone().expect("running");
    h.feed(Event::RunbookFinished {
        generation: Generation(order.generation.0 - 1),
        outcome: RunbookOutcome::Succeeded,
    });
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn fenced_runbook_stops_actuation_until_resumed() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    h.finish(RunbookOutcome::Fenced {
        step: "dns".into(),
        error: "409".into(),
    });
    let count = h.started.len();
    h.advance(60_000);
    assert_eq!(h.started.len(), count, "a fenced engine starts nothing");
    assert!(h.engine.status(h.now).fenced);
    assert!(h.reasons().contains("fenced"));
    let (accepted, _) = h.manual(Manual::Resume);
    assert!(accepted);
    assert_eq!(h.started.len(), count + 1);
}

#[test]
fn a_retried_runbook_pages_once_and_again_only_when_the_failing_step_or_error_changes() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    let fail = |h: &mut Harness, step: &str, error: &str| {
        h.finish(RunbookOutcome::Failed {
            step: step.into(),
            error: error.into(),
        });
        h.advance(RUNBOOK_RETRY_MS_MAX + 1);
        assert!(h.running.is_some(), "retried");
    };
    let pages = |h: &Harness| h.alerts.iter().filter(|a| a.contains("failed at step")).count();
    for attempt in 1..=6 {
        fail(
            &mut h,
            "dns",
            &format!("HTTP 503 from 10.0.0.{attempt} (after {attempt} attempt(s))"),
        );
    }
    assert_eq!(pages(&h), 1, "retries of one failure page once: {:?}", h.alerts);
    assert!(h.engine.alert_open("runbook"));
    fail(&mut h, "pointer", "HTTP 503 from 10.0.0.1 (after 1 attempt(s))");
    assert_eq!(pages(&h), 2, "another step pages");
    fail(&mut h, "pointer", "connection refused");
    assert_eq!(pages(&h), 3, "another kind of error pages");
    h.finish(RunbookOutcome::Succeeded);
    assert!(!h.engine.alert_open("runbook"), "resolved at success");
}

#[test]
fn resume_resolves_the_fenced_alert_and_an_adopted_alert_is_resolved_by_the_engine() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    h.finish(RunbookOutcome::Fenced {
        step: "dns".into(),
        error: "409".into(),
    });
    assert!(h.engine.alert_open("fenced"));
    let (accepted, _) = h.manual(Manual::Resume);
    assert!(accepted);
    assert!(!h.engine.alert_open("fenced"), "resumed: the fence is over");
    // An incident restored from the audit log: the engine owns it without paging again.
    let before = h.alerts.len();
    h.engine.adopt_alert("all_down", "every region is down");
    h.verdict(SECONDARY, Verdict::Up);
    assert_eq!(h.alerts.len(), before);
    assert!(!h.engine.alert_open("all_down"), "a region is up: resolved");
}

#[test]
fn pause_stops_automation_but_manual_commands_work() {
    let mut h = Harness::started_up(two_regions());
    assert!(h.manual(Manual::Pause).0);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert!(h.reasons().contains("paused"));
    let (accepted, reason) = h.manual(Manual::Failover { force_data_loss: false });
    assert!(accepted, "{reason}");
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.manual(Manual::Resume).0);
}

#[test]
fn switchover_moves_the_preferred_region_and_automation_does_not_undo_it() {
    let mut h = Harness::started_up(two_regions());
    let (accepted, reason) = h.manual(Manual::Switchover { to: r(SECONDARY) });
    assert!(accepted, "{reason}");
    assert_eq!(h.active(), Some(r(SECONDARY)));
    for _ in 0..10 {
        h.advance(60_000);
    }
    assert_eq!(
        h.active(),
        Some(r(SECONDARY)),
        "no automatic failback after a planned switchover"
    );
    let (accepted, reason) = h.manual(Manual::Switchover { to: r("mars-1") });
    assert!(!accepted);
    assert!(reason.contains("unknown region 'mars-1'"), "{reason}");
    // Failback returns to the highest-priority region.
    h.lag(PRIMARY, 0);
    let (accepted, reason) = h.manual(Manual::Failback);
    assert!(accepted, "{reason}");
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn manual_switchover_to_a_down_region_is_refused() {
    let mut h = Harness::started_up(two_regions());
    h.verdict(SECONDARY, Verdict::Down);
    let (accepted, reason) = h.manual(Manual::Switchover { to: r(SECONDARY) });
    assert!(!accepted);
    assert!(reason.contains("is down"));
}

#[test]
fn restart_rolls_an_interrupted_runbook_forward_with_a_new_generation() {
    let restored = Restored {
        generation: Generation(7),
        observed: Some(Placement::single(r(PRIMARY))),
        interrupted: Some(Placement::single(r(SECONDARY))),
        preferred: None,
        paused: false,
        ..Restored::default()
    };
    let mut h = Harness::restored(two_regions(), restored);
    h.feed(Event::Tick);
    let order = h.started.first().expect("rolled forward at once");
    assert_eq!(order.kind, TransitionKind::RollForward);
    assert_eq!(order.generation, Generation(8));
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

#[test]
fn restart_without_interruption_runs_nothing() {
    let restored = Restored {
        generation: Generation(3),
        observed: Some(Placement::single(r(SECONDARY))),
        interrupted: None,
        preferred: Some(r(SECONDARY)),
        paused: false,
        ..Restored::default()
    };
    let mut h = Harness::restored(two_regions(), restored);
    h.verdict(PRIMARY, Verdict::Up);
    h.verdict(SECONDARY, Verdict::Up);
    assert!(h.started.is_empty());
    assert_eq!(h.engine.generation(), Generation(3));
}

#[test]
fn down_confirmation_delays_the_failover() {
    let mut config = two_regions();
    config.down_confirm_ms = 2_000;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.engine.region_state(&r(PRIMARY)), Some(RegionState::Suspect));
    assert_eq!(h.active(), Some(r(PRIMARY)));
    h.advance(2_000);
    assert_eq!(h.active(), Some(r(SECONDARY)));
}

fn three_active_active() -> EngineConfig {
    let mut config = EngineConfig::with_defaults(vec![
        RegionSpec {
            id: r("a"),
            priority: 1,
        },
        RegionSpec {
            id: r("b"),
            priority: 2,
        },
        RegionSpec {
            id: r("c"),
            priority: 3,
        },
    ]);
    config.policy = Policy::ActiveActive;
    config
}

#[test]
fn active_active_drops_a_down_region_and_re_adds_it_after_stability() {
    let mut h = Harness::new(three_active_active());
    for name in ["a", "b", "c"] {
        h.verdict(name, Verdict::Up);
    }
    let serving = |h: &Harness| region_set(h.engine.observed().expect("placed"));
    assert_eq!(serving(&h).len(), 3);
    h.verdict("a", Verdict::Down);
    assert_eq!(serving(&h), [r("b"), r("c")].into_iter().collect());
    assert_eq!(h.active(), Some(r("b")), "write region moves to the next priority");
    h.verdict("a", Verdict::Up);
    for _ in 0..7 {
        h.lag("a", 0);
        h.advance(10_000);
    }
    assert_eq!(serving(&h).len(), 3);
    assert_eq!(h.active(), Some(r("a")));
}

#[test]
fn active_active_all_down_keeps_the_set() {
    let mut h = Harness::new(three_active_active());
    for name in ["a", "b", "c"] {
        h.verdict(name, Verdict::Up);
    }
    h.verdict("a", Verdict::Down);
    h.verdict("b", Verdict::Down);
    h.verdict("c", Verdict::Down);
    assert_eq!(
        region_set(h.engine.observed().expect("placed")),
        [r("c")].into_iter().collect()
    );
    assert!(h.reasons().contains("static stability"));
}

#[test]
fn config_errors_are_reported() {
    let mut config = two_regions();
    config.failovers_per_hour_max = 0;
    assert_eq!(
        Engine::new(config, Restored::default()).err(),
        Some(EngineConfigError::ZeroRateLimit)
    );
    let config = EngineConfig::with_defaults(vec![]);
    assert_eq!(
        Engine::new(config, Restored::default()).err(),
        Some(EngineConfigError::NoRegions)
    );
}

#[test]
fn restart_while_failed_over_does_not_fail_back_before_the_stability_window() {
    let restored = Restored {
        generation: Generation(4),
        observed: Some(Placement::single(r(SECONDARY))),
        interrupted: None,
        preferred: None,
        paused: false,
        ..Restored::default()
    };
    let mut h = Harness::restored(two_regions(), restored);
    h.verdict(PRIMARY, Verdict::Up);
    h.verdict(SECONDARY, Verdict::Up);
    h.lag(PRIMARY, 0);
    assert_eq!(h.engine.region_state(&r(PRIMARY)), Some(RegionState::Recovering));
    assert_eq!(h.active(), Some(r(SECONDARY)), "no failback right after a restart");
    for _ in 0..61 {
        h.lag(PRIMARY, 0);
        h.advance(1_000);
    }
    assert_eq!(h.active(), Some(r(PRIMARY)));
}

#[test]
fn after_a_failed_runbook_returning_to_the_old_placement_still_runs_the_runbook() {
    let mut config = two_regions();
    config.stability_window_ms = 1_000;
    config.min_hold_ms = 0;
    config.failback_lag_max_ms = None;
    let mut h = Harness::started_up(config);
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    h.finish(RunbookOutcome::Failed {
        step: "pointer".into(),
        error: "refused".into(),
    });
    // DNS may already point at the secondary. The primary recovers before the retry.
    h.verdict(PRIMARY, Verdict::Up);
    h.advance(1_000);
    h.advance(2_000);
    let order = h.running.clone().expect("the old placement is applied again");
    assert_eq!(order.to, Placement::single(r(PRIMARY)));
    h.finish(RunbookOutcome::Succeeded);
    assert_eq!(h.active(), Some(r(PRIMARY)));
    h.advance(10_000);
    assert!(h.running.is_none(), "nothing more to do once applied");
}

#[test]
fn a_round_of_verdicts_is_decided_as_a_whole() {
    let mut h = Harness::started_up(two_regions());
    let runbooks = h.started.len();
    // Both regions go down in the same round: no failover to a region that is down too.
    for region in [PRIMARY, SECONDARY] {
        h.feed(Event::Verdict {
            region: r(region),
            verdict: Verdict::Down,
            reason: "round".into(),
        });
    }
    assert_eq!(h.started.len(), runbooks, "verdicts alone decide nothing");
    h.feed(Event::Tick);
    assert_eq!(h.started.len(), runbooks);
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert!(h.reasons().contains("static stability"));
}

#[test]
fn force_data_loss_reaches_the_order_and_retries_a_refused_move_without_choosing_again() {
    let mut h = Harness::started_up(two_regions());
    h.auto_succeed = false;
    h.verdict(PRIMARY, Verdict::Down);
    h.advance(120_000);
    let refused = h.started.last().expect("a failover runbook").clone();
    assert_eq!(refused.to.active, r(SECONDARY));
    assert!(!refused.force_data_loss, "no force unless asked");
    h.finish(RunbookOutcome::Failed {
        step: "orders-db".into(),
        error: "refused: 127.0.0.1:3306 still lacks 3 transaction(s)".into(),
    });
    let (accepted, reason) = h.manual(Manual::Failover { force_data_loss: true });
    assert!(accepted, "{reason}");
    assert!(reason.contains("retried accepting data loss"), "{reason}");
    h.advance(1);
    let forced = h.started.last().expect("the retry").clone();
    assert!(forced.generation > refused.generation);
    assert_eq!(forced.to.active, r(SECONDARY), "the same move, not another region");
    assert!(forced.force_data_loss);

    // A fresh failover with the flag carries it too; without it, it does not.
    let mut h = Harness::started_up(two_regions());
    let (accepted, reason) = h.manual(Manual::Failover { force_data_loss: true });
    assert!(accepted && reason.contains("accepting data loss"), "{reason}");
    assert!(h.started.last().expect("runbook").force_data_loss);
    let (accepted, _) = h.manual(Manual::Failover { force_data_loss: false });
    assert!(accepted);
    assert!(!h.started.last().expect("runbook").force_data_loss);
}

/// A controller killed in the middle of a manual failover (primary healthy, runbook to the
/// secondary started, never finished): the restart rolls the move forward and does not fail
/// straight back over the primary. The primary must prove the stability window, and the hold
/// after the operator's decision (restored from the audit log) still runs.
#[test]
fn restart_in_the_middle_of_a_manual_failover_rolls_forward_without_failing_back_at_once() {
    let mut config = two_regions();
    config.stability_window_ms = 10_000;
    config.min_hold_ms = 30_000;
    config.failback_lag_max_ms = None;
    let restored = Restored {
        generation: Generation(5),
        observed: Some(Placement::single(r(PRIMARY))),
        interrupted: Some(Placement::single(r(SECONDARY))),
        // The manual failover was decided just before the crash (engine clock, restored).
        last_transition_ms: Some(900),
        ..Restored::default()
    };
    let mut h = Harness::restored(config, restored);
    h.verdict(PRIMARY, Verdict::Up);
    h.verdict(SECONDARY, Verdict::Up);
    h.advance(5_000);
    assert_eq!(h.active(), Some(r(SECONDARY)), "the interrupted move is rolled forward");
    assert_eq!(h.started.len(), 1, "{:?}", h.started);
    assert_eq!(
        h.engine.region_state(&r(PRIMARY)),
        Some(RegionState::Recovering),
        "the region the move took traffic from proves the stability window again"
    );
    // Past the stability window, the hold after the decision still runs.
    h.advance(10_000);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    assert!(h.reasons().contains("holding"), "{}", h.reasons());
    // Once both have run out, the automatic failback happens (the failover was not a
    // switchover: the primary is still preferred).
    h.advance(20_000);
    assert_eq!(h.active(), Some(r(PRIMARY)));
    assert_eq!(h.started.len(), 2);
}

/// Without the restored hold (an audit log from before it was recorded), the stability window
/// alone still keeps the restart from failing back at once.
#[test]
fn restart_in_the_middle_of_a_failover_keeps_the_stability_window_without_a_restored_hold() {
    let mut config = two_regions();
    config.stability_window_ms = 10_000;
    config.min_hold_ms = 0;
    config.failback_lag_max_ms = None;
    let restored = Restored {
        generation: Generation(5),
        observed: Some(Placement::single(r(PRIMARY))),
        interrupted: Some(Placement::single(r(SECONDARY))),
        ..Restored::default()
    };
    let mut h = Harness::restored(config, restored);
    h.verdict(PRIMARY, Verdict::Up);
    h.verdict(SECONDARY, Verdict::Up);
    h.advance(9_000);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    h.advance(2_000);
    assert_eq!(h.active(), Some(r(PRIMARY)), "after the stability window, failback");
}

/// The same for an operator's failback: the region failing again supersedes it.
#[test]
fn a_failover_supersedes_a_manual_failback_whose_target_goes_down() {
    let mut config = two_regions();
    config.min_hold_ms = 0;
    let mut h = Harness::started_up(config);
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.active(), Some(r(SECONDARY)));
    h.verdict(PRIMARY, Verdict::Up);
    h.auto_succeed = false;
    let (ok, why) = h.manual(Manual::Failback);
    assert!(ok, "{why}");
    assert!(h.running.is_some(), "{}", h.reasons());
    let failback = h.running.clone().expect("the failback runs");
    h.verdict(PRIMARY, Verdict::Down);
    assert_eq!(h.cancelled, vec![failback.generation], "{}", h.reasons());
    let failover = h.running.clone().expect("the failover runs at once");
    assert_eq!(failover.to.active, r(SECONDARY));
}
