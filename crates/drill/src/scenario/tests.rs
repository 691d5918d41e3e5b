use super::*;
use crate::checker::CheckResult;

#[test]
fn every_named_scenario_exists_and_unknown_ones_list_the_choices() {
    for name in NAMES {
        let scenario = by_name(name).expect("named scenarios exist");
        assert_eq!(scenario.name, name);
        let plan = scenario.plan(&Durations::default());
        assert!(!plan.is_empty(), "{name} injects something");
        assert!(
            plan.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "{name}: steps in time order"
        );
    }
    let error = by_name("region-outtage").expect_err("unknown");
    let message = error.to_string();
    assert!(message.contains("'region-outtage'") && message.contains("region-outage, region-partition"));
}

/// Every plan leaves nothing broken: replaying it through a ledger leaves no outstanding fault.
#[test]
fn every_plan_heals_what_it_breaks() {
    for name in NAMES {
        let scenario = by_name(name).expect("exists");
        for fault_ms in [1_000, 4_000, 20_000, 21_000] {
            let durations = Durations {
                warmup_ms: 5_000,
                fault_ms,
                settle_ms: 10_000,
            };
            let mut ledger = Ledger::default();
            for step in scenario.plan(&durations) {
                assert!(step.at_ms >= durations.warmup_ms && step.at_ms <= durations.heal_at_ms());
                ledger.applied(&step.action);
            }
            assert!(
                ledger.is_empty(),
                "{name} with fault {fault_ms} ms leaves {:?}",
                ledger.heal_plan()
            );
        }
    }
}

#[test]
fn ledger_heals_outstanding_faults_newest_first() {
    let kill = FaultAction::Kill {
        target: Component::Store(RegionRole::Primary),
    };
    let stop = FaultAction::Stop {
        target: Component::Proxy(RegionRole::Secondary),
    };
    let toxic = FaultAction::AddToxic {
        link: Link::Frontend {
            region: RegionRole::Primary,
        },
        toxic: Toxic {
            name: "t".into(),
            stream: Stream::Upstream,
            kind: ToxicKind::Blackhole,
        },
    };
    let mut ledger = Ledger::default();
    ledger.applied(&kill);
    ledger.applied(&stop);
    ledger.applied(&toxic);
    ledger.applied(&FaultAction::Cont {
        target: Component::Proxy(RegionRole::Secondary),
    });
    assert_eq!(
        ledger.heal_plan(),
        vec![
            FaultAction::RemoveToxic {
                link: Link::Frontend {
                    region: RegionRole::Primary
                },
                name: "t".into()
            },
            FaultAction::Restart {
                target: Component::Store(RegionRole::Primary)
            },
        ]
    );
}

#[test]
fn region_partition_cuts_replication_control_and_health_but_not_clients() {
    let plan = by_name("region-partition").expect("exists").plan(&Durations::default());
    let links: Vec<&Link> = plan
        .iter()
        .filter(|s| s.phase == StepPhase::Fault)
        .filter_map(|s| match &s.action {
            FaultAction::AddToxic { link, .. } => Some(link),
            _ => None,
        })
        .collect();
    assert_eq!(links.len(), 8, "four links, both directions");
    assert!(!links.iter().any(|l| matches!(l, Link::Frontend { .. })));
    assert!(
        by_name("region-partition")
            .expect("exists")
            .expectations
            .primary_isolated
    );
}

#[test]
fn flapping_toggles_every_period() {
    let durations = Durations {
        warmup_ms: 0,
        fault_ms: 10_000,
        settle_ms: 0,
    };
    let plan = by_name("flapping-health").expect("exists").plan(&durations);
    let adds: Vec<u64> = plan
        .iter()
        .filter(|s| matches!(s.action, FaultAction::AddToxic { .. }))
        .map(|s| s.at_ms)
        .collect();
    assert_eq!(adds, vec![0, 0, 6_000, 6_000]);
    let removes = plan
        .iter()
        .filter(|s| matches!(s.action, FaultAction::RemoveToxic { .. }))
        .count();
    assert_eq!(removes, 4, "removed at 3 s and at 9 s: the plan ends healed");
}

fn measured(failovers: u64, rto_dns: Option<u64>, rto_99: Option<u64>) -> Measurements {
    Measurements {
        failovers,
        false_failovers: failovers,
        region_changes: failovers,
        region_changes_during_fault: failovers,
        rto_dns_ms: rto_dns,
        rto_99_ms: rto_99,
        steps: 2,
        ..Measurements::default()
    }
}

fn verdicts(results: &[ExpectationResult]) -> Vec<(&str, bool)> {
    results.iter().map(|r| (r.name.as_str(), r.passed)).collect()
}

#[test]
fn region_outage_bounds_include_the_ttl() {
    let scenario = by_name("region-outage").expect("exists");
    let clean = CheckResult::default();
    let results = evaluate(&scenario, &measured(1, Some(4_000), Some(9_500)), &clean, 5);
    assert!(results.iter().all(|r| r.passed), "{results:?}");
    let results = evaluate(&scenario, &measured(1, Some(6_000), Some(10_500)), &clean, 5);
    assert_eq!(
        verdicts(&results)[1..4],
        [("failover", true), ("RTO(DNS)", false), ("RTO(99%)", false)]
    );
    let results = evaluate(&scenario, &measured(0, None, None), &clean, 5);
    assert!(!results[1].passed);
    assert_eq!(results[2].actual, "never");
}

#[test]
fn vantage_partition_fails_on_any_failover_and_lost_writes_fail_everywhere() {
    let scenario = by_name("vantage-partition").expect("exists");
    let clean = CheckResult::default();
    assert!(
        evaluate(&scenario, &measured(0, None, None), &clean, 5)
            .iter()
            .all(|r| r.passed)
    );
    let results = evaluate(&scenario, &measured(1, None, None), &clean, 5);
    assert!(!results[1].passed);
    let lossy = CheckResult {
        lost: 2,
        ..CheckResult::default()
    };
    let results = evaluate(&scenario, &measured(0, None, None), &lossy, 5);
    let rpo = results
        .iter()
        .find(|r| r.name.starts_with("RPO"))
        .expect("always judged");
    assert!(!rpo.passed);
    assert_eq!(rpo.actual, "2");
}

#[test]
fn split_brain_requires_the_isolated_writes_to_be_accounted_for() {
    let scenario = by_name("region-partition").expect("exists");
    let check = CheckResult {
        isolated_acknowledged: 10,
        isolated_overwritten: 3,
        overwritten: 3,
        ..CheckResult::default()
    };
    let results = evaluate(&scenario, &measured(1, Some(3_000), None), &check, 5);
    let isolated = results
        .iter()
        .find(|r| r.name == "isolated writes reported")
        .expect("judged");
    assert!(isolated.passed);
    assert!(isolated.actual.contains("3 overwritten"));
}

#[test]
fn a_drill_whose_faults_failed_does_not_pass() {
    let scenario = by_name("vantage-partition").expect("exists");
    let clean = CheckResult::default();
    let mut m = measured(0, None, None);
    m.steps_failed = 1;
    let results = evaluate(&scenario, &m, &clean, 5);
    assert_eq!(results[0].name, "faults injected");
    assert!(
        !results[0].passed,
        "no failover proves nothing when the cut was never made"
    );
    assert_eq!(results[0].actual, "1 of 2 failed");
    let none = Measurements::default();
    assert!(!evaluate(&scenario, &none, &clean, 5)[0].passed, "no step ran at all");
}

#[test]
fn region_hang_stops_the_primarys_processes_and_continues_them_in_reverse_at_heal() {
    let durations = Durations::default();
    let scenario = by_name("region-hang").expect("exists");
    let plan = scenario.plan(&durations);
    let stopped = [
        Component::Proxy(RegionRole::Primary),
        Component::Apps(RegionRole::Primary),
        Component::Store(RegionRole::Primary),
    ];
    let expected: Vec<Step> = stopped
        .iter()
        .map(|target| Step {
            at_ms: durations.warmup_ms,
            phase: StepPhase::Fault,
            action: FaultAction::Stop { target: target.clone() },
        })
        .chain(stopped.iter().rev().map(|target| Step {
            at_ms: durations.heal_at_ms(),
            phase: StepPhase::Heal,
            action: FaultAction::Cont { target: target.clone() },
        }))
        .collect();
    assert_eq!(plan, expected);
    // The same processes region-outage kills, hung instead of dead, with its expectations.
    assert_eq!(
        scenario.expectations,
        by_name("region-outage").expect("exists").expectations
    );
    assert_eq!(scenario.expectations.failover, FailoverExpectation::Required);
    assert_eq!(scenario.expectations.lost_max, 0);
}

#[test]
fn controller_partition_cuts_only_the_controllers_view_and_forbids_failover() {
    let scenario = by_name("controller-partition").expect("exists");
    let durations = Durations::default();
    let plan = scenario.plan(&durations);
    let faults: Vec<&FaultAction> = plan
        .iter()
        .filter(|s| s.at_ms == durations.warmup_ms)
        .map(|s| &s.action)
        .collect();
    assert!(!faults.is_empty());
    for action in &faults {
        match action {
            FaultAction::AddToxic { link, .. } => {
                assert_eq!(
                    *link,
                    Link::Controller {
                        region: RegionRole::Primary
                    }
                );
            }
            other => panic!("unexpected fault {other:?}"),
        }
    }
    let clean = CheckResult::default();
    assert!(
        evaluate(&scenario, &measured(0, None, None), &clean, 5)
            .iter()
            .all(|r| r.passed)
    );
    assert!(
        evaluate(&scenario, &measured(1, None, None), &clean, 5)
            .iter()
            .any(|r| !r.passed),
        "a failover fails the drill"
    );
}

/// The scenario `name` and its plan's actions with their times.
fn timed_actions(name: &str, durations: &Durations) -> (Scenario, Vec<(u64, FaultAction)>) {
    let scenario = by_name(name).expect("exists");
    let actions = scenario
        .plan(durations)
        .into_iter()
        .map(|s| (s.at_ms, s.action))
        .collect();
    (scenario, actions)
}

#[test]
fn region_isolation_cuts_the_primary_network_and_heals_it() {
    let durations = Durations::default();
    let (scenario, actions) = timed_actions("region-isolation", &durations);
    assert_eq!(
        actions,
        [
            (
                durations.warmup_ms,
                FaultAction::CutNetwork {
                    region: RegionRole::Primary
                }
            ),
            (
                durations.warmup_ms + durations.fault_ms,
                FaultAction::HealNetwork {
                    region: RegionRole::Primary
                }
            ),
        ]
    );
    let clean = CheckResult::default();
    assert!(
        evaluate(&scenario, &measured(0, None, None), &clean, 5)
            .iter()
            .any(|r| !r.passed),
        "no failover fails the drill"
    );
}

#[test]
fn region_outage_fails_when_a_provider_did_not_switch() {
    let scenario = by_name("region-outage").expect("exists");
    let clean = CheckResult::default();
    let mut m = measured(1, Some(4_000), Some(9_500));
    m.providers = vec![
        crate::measure::ProviderMeasure {
            provider: "rfc2136".into(),
            before: Some("us".into()),
            switched_to: Some("eu".into()),
            rto_ms: Some(1_200),
            ..Default::default()
        },
        crate::measure::ProviderMeasure {
            provider: "haproxy".into(),
            before: Some("us".into()),
            switched_to: None,
            rto_ms: None,
            ..Default::default()
        },
    ];
    let results = evaluate(&scenario, &m, &clean, 5);
    let found = |name: &str| {
        results
            .iter()
            .find(|r| r.name == name)
            .expect("an expectation per provider")
    };
    assert!(found("RTO(rfc2136)").passed && found("RTO(rfc2136)").actual.contains("eu"));
    assert!(!found("RTO(haproxy)").passed && found("RTO(haproxy)").actual.contains("unchanged (us)"));
    // Without a failback the providers are not asked to come back.
    assert!(results.iter().all(|r| !r.name.starts_with("failback(")));
    // After a failback, a provider that followed the failover must follow it back.
    m.failback_ms = Some(6_000);
    m.heal_ms = Some(20_000);
    m.end_ms = 26_000 + PROVIDER_FAILBACK_GRACE_MS - 1;
    m.providers[0].last = Some("eu".into());
    let too_soon = evaluate(&scenario, &m, &clean, 5);
    assert!(
        too_soon.iter().all(|r| !r.name.starts_with("failback(")),
        "a failback seen at the very end leaves the providers no time to follow"
    );
    m.end_ms = 26_000 + PROVIDER_FAILBACK_GRACE_MS;
    let stuck = evaluate(&scenario, &m, &clean, 5);
    let back = stuck
        .iter()
        .find(|r| r.name == "failback(rfc2136)")
        .expect("a failback expectation per switched provider");
    assert!(!back.passed && back.actual.contains("still at eu"), "{back:?}");
    assert!(stuck.iter().all(|r| r.name != "failback(haproxy)"), "never switched");
    m.providers[0].back_ms = Some(7_000);
    let followed = evaluate(&scenario, &m, &clean, 5);
    assert!(followed.iter().any(|r| r.name == "failback(rfc2136)" && r.passed));
    // A scenario that forbids failover does not ask the providers to move.
    let quiet = by_name("vantage-partition").expect("exists");
    assert!(
        evaluate(&quiet, &m, &clean, 5)
            .iter()
            .all(|r| !r.name.starts_with("RTO(rfc"))
    );
}

#[test]
fn disk_full_fills_the_primary_disk_and_frees_it_at_heal() {
    let durations = Durations::default();
    let (scenario, actions) = timed_actions("disk-full", &durations);
    assert_eq!(
        actions,
        [
            (
                durations.warmup_ms,
                FaultAction::FillDisk {
                    region: RegionRole::Primary
                }
            ),
            (
                durations.warmup_ms + durations.fault_ms,
                FaultAction::FreeDisk {
                    region: RegionRole::Primary
                }
            ),
        ]
    );
    assert_eq!(scenario.expectations.lost_max, 0);
    assert!(
        evaluate(&scenario, &measured(0, None, None), &CheckResult::default(), 5)
            .iter()
            .any(|r| !r.passed),
        "no failover fails the drill"
    );
}

#[test]
fn the_leader_scenarios_hold_the_dns_step_then_break_the_leader_mid_runbook() {
    use FaultAction::*;
    let durations = Durations {
        warmup_ms: 5_000,
        fault_ms: 10_000,
        settle_ms: 10_000,
    };
    let labels = |name: &str| -> Vec<(StepPhase, String)> {
        by_name(name)
            .expect("exists")
            .plan(&durations)
            .iter()
            .map(|s| (s.phase, s.action.label()))
            .collect()
    };
    let crash = by_name("controller-crash").expect("exists").plan(&durations);
    let actions: Vec<&FaultAction> = crash.iter().map(|s| &s.action).collect();
    let kill_leader = Kill {
        target: Component::Leader,
    };
    let position = |a: &FaultAction| actions.iter().position(|b| *b == a).expect("in the plan");
    // The hold comes first, the runbook is awaited before the kill, and the hold is lifted only
    // once another member took over (what the dead leader sent arrives late); nothing restarts
    // before the heal.
    assert!(matches!(
        actions[0],
        AddToxic {
            link: Link::LeaderDns,
            ..
        }
    ));
    assert!(position(&AwaitRunbook) < position(&kill_leader));
    let lifted = actions
        .iter()
        .rposition(|a| {
            matches!(
                a,
                RemoveToxic {
                    link: Link::LeaderDns,
                    ..
                }
            )
        })
        .expect("lifted");
    assert!(lifted > position(&AwaitTakeover) && position(&AwaitTakeover) > position(&kill_leader));
    assert!(crash[lifted].phase == StepPhase::Fault);
    assert!(
        crash
            .iter()
            .filter(|s| matches!(s.action, Restart { .. }))
            .all(|s| s.phase == StepPhase::Heal && s.at_ms == durations.heal_at_ms())
    );
    assert!(kill_leader.hits_leader() && !AwaitRunbook.hits_leader());

    let isolation = by_name("controller-isolation").expect("exists").plan(&durations);
    let actions: Vec<&FaultAction> = isolation.iter().map(|s| &s.action).collect();
    let cut = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                AddToxic {
                    link: Link::LeaderIsolation,
                    ..
                }
            )
        })
        .expect("cut");
    let takeover = actions.iter().position(|a| **a == AwaitTakeover).expect("awaited");
    let lifted = actions
        .iter()
        .position(|a| {
            matches!(
                a,
                RemoveToxic {
                    link: Link::LeaderDns,
                    ..
                }
            )
        })
        .expect("lifted");
    // The old leader's held DNS step is let through only once another member took over, so
    // what it sends then is late; the cut lasts until the heal.
    assert!(actions.iter().position(|a| **a == AwaitRunbook).expect("awaited") < cut);
    assert!(cut < takeover && takeover < lifted);
    assert!(
        isolation
            .iter()
            .filter(|s| matches!(
                s.action,
                RemoveToxic {
                    link: Link::LeaderIsolation,
                    ..
                }
            ))
            .all(|s| s.phase == StepPhase::Heal)
    );
    assert!(actions[cut].hits_leader());

    assert_eq!(
        labels("leader-region-outage"),
        vec![
            (
                StepPhase::Prepare,
                "make the primary site's controller the leader".to_string()
            ),
            (
                StepPhase::Fault,
                "kill -9 primary site (region, controller, etcd)".to_string()
            ),
            (
                StepPhase::Fault,
                "wait for another member to lead and fail over to the secondary".to_string()
            ),
            (
                StepPhase::Heal,
                "restart primary site (region, controller, etcd)".to_string()
            ),
        ]
    );
    let outage = by_name("leader-region-outage").expect("exists").expectations;
    assert_eq!(outage.rto_dns_ms_max, Some(RTO_DNS_MS_MAX + HA_LEASE_MS));
    assert_eq!(outage.ha, Some(HaExpectation::SiteLoss));
    assert_eq!(by_name("region-outage").expect("exists").expectations.ha, None);
}

#[test]
fn db_lag_delays_the_standby_then_kills_the_primary_and_expects_a_refusal() {
    let scenario = by_name("db-lag").expect("exists");
    assert_eq!(scenario.expectations.database, crate::databases::DbExpectation::Refuse);
    let durations = Durations {
        warmup_ms: 5_000,
        fault_ms: 12_000,
        settle_ms: 3_000,
    };
    let plan = scenario.plan(&durations);
    let delay = FaultAction::DelayReplication {
        region: RegionRole::Secondary,
        delay_s: crate::runtime::databases::DB_LAG_DELAY_S,
    };
    let kill = FaultAction::Kill {
        target: Component::Region(RegionRole::Primary),
    };
    let actions: Vec<(u64, &FaultAction)> = plan.iter().map(|s| (s.at_ms, &s.action)).collect();
    assert_eq!(
        actions,
        [
            (5_000, &delay),
            (5_000 + DB_LAG_LEAD_MS, &kill),
            (
                17_000,
                &FaultAction::Restart {
                    target: Component::Region(RegionRole::Primary)
                }
            ),
            (
                17_000,
                &FaultAction::UndelayReplication {
                    region: RegionRole::Secondary
                }
            ),
        ]
    );
    // The region-death scenarios expect the databases promoted.
    for name in ["region-outage", "region-hang", "region-partition", "failback"] {
        assert_eq!(
            by_name(name).expect("exists").expectations.database,
            crate::databases::DbExpectation::Promote,
            "{name}"
        );
    }
}
