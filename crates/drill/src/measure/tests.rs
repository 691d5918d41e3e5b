use super::*;

/// Builds a history from scripted seconds: `(second, ok, failed)` client requests, plus
/// authoritative lookups `(at_ms, answer)`.
fn scripted(seconds: &[(u64, u64, u64)], lookups: &[(u64, &[&str])]) -> History {
    let mut ops: Vec<(u64, u32, Action, Phase)> = Vec::new();
    for &(second, ok, failed) in seconds {
        for i in 0..ok + failed {
            let at = second * 1000 + i * (900 / (ok + failed));
            let phase = if i < ok { Phase::Ok } else { Phase::Fail };
            ops.push((
                at,
                1,
                Action::Request {
                    operation: "place_order".into(),
                    region: None,
                },
                phase,
            ));
        }
    }
    for &(at, answer) in lookups {
        ops.push((
            at,
            2,
            Action::Lookup {
                name: "shop.lab.".into(),
                authoritative: true,
                answer: answer.iter().map(|s| s.to_string()).collect(),
                ttl_s: 5,
            },
            Phase::Ok,
        ));
    }
    ops.sort_by_key(|(at, process, ..)| (*at, *process));
    let mut history = History::new();
    for (at, process, action, phase) in ops {
        history.invoke(process, at, action.clone()).expect("valid");
        history.complete(process, at, phase, Some(action), None).expect("valid");
    }
    history
}

fn event(at_ms: u64, kind: EventKind) -> Event {
    Event { at_ms, kind }
}

fn active(at_ms: u64, region: &str, generation: u64) -> Event {
    event(
        at_ms,
        EventKind::ActiveRegion {
            region: region.into(),
            generation,
        },
    )
}

fn lag(at_ms: u64, lag_ms: Option<u64>) -> Event {
    event(at_ms, EventKind::ReplicationLag { lag_ms })
}

#[test]
fn region_outage_timeline() {
    // Healthy 0..10 s, fault at 10.5 s, failures until 13 s, one bad second at 14 s, healthy from 15 s.
    let mut seconds: Vec<(u64, u64, u64)> = (0..10).map(|s| (s, 20, 0)).collect();
    seconds.extend([(10, 10, 10), (11, 0, 20), (12, 5, 15), (13, 20, 0), (14, 19, 1)]);
    seconds.extend((15..30).map(|s| (s, 20, 0)));
    let history = scripted(
        &seconds,
        &[
            (500, &["127.0.0.11"]),
            (10_000, &["127.0.0.11"]),
            (12_000, &[]),
            (13_200, &["127.0.0.12"]),
            (20_100, &["127.0.0.12"]),
            (24_300, &["127.0.0.11"]),
        ],
    );
    let events = vec![
        active(100, "r1", 3),
        lag(9_000, Some(40)),
        event(10_500, EventKind::FaultStart),
        lag(11_000, None),
        lag(12_000, Some(900)),
        active(12_900, "r2", 4),
        event(20_000, EventKind::Heal),
        lag(21_000, Some(5_000)),
        lag(23_000, Some(300)),
        active(24_000, "r1", 5),
    ];
    let m = measure(&history, &events, &MeasureParams::new(true));
    assert_eq!(m.fault_ms, Some(10_500));
    assert_eq!(m.heal_ms, Some(20_000));
    assert_eq!(m.dns_answer_before, vec!["127.0.0.11".to_string()]);
    assert_eq!(
        m.rto_dns_ms,
        Some(2_700),
        "13.2 s - 10.5 s; the empty answer is not a switch"
    );
    assert_eq!(m.dns_answer_switched_to, Some(vec!["127.0.0.12".to_string()]));
    assert_eq!(m.rto_99_ms, Some(4_500), "14 s had 95%: recovery counts from 15 s");
    assert_eq!(m.failover_decided_ms, Some(2_400));
    assert_eq!(m.generation_start, Some(3));
    assert_eq!(m.generation_end, Some(5));
    assert_eq!(m.failovers, 2);
    assert_eq!(m.false_failovers, 0);
    assert_eq!(m.region_changes, 2);
    assert_eq!(
        m.region_changes_during_fault, 1,
        "the failback at 24 s came after the heal"
    );
    assert_eq!(m.lag_at_failover_ms, Some(900));
    assert_eq!(m.lag_max_ms, Some(5_000));
    assert_eq!(m.converge_ms, Some(3_000));
    assert_eq!(m.failback_ms, Some(4_300));
    assert_eq!(m.requests, m.success.iter().map(|b| b.total).sum::<u64>());
    assert_eq!(m.success.len(), 30);
}

#[test]
fn no_recovery_within_the_drill_means_no_rto() {
    let mut seconds: Vec<(u64, u64, u64)> = (0..5).map(|s| (s, 10, 0)).collect();
    seconds.extend((5..12).map(|s| (s, 1, 9)));
    seconds.extend((12..15).map(|s| (s, 10, 0)));
    let history = scripted(&seconds, &[(100, &["a"])]);
    let events = vec![event(5_000, EventKind::FaultStart)];
    let m = measure(&history, &events, &MeasureParams::new(true));
    assert_eq!(
        m.rto_99_ms, None,
        "three good seconds at the end are shorter than the window"
    );
    assert_eq!(m.rto_dns_ms, None);
    assert_eq!(m.failback_ms, None);
}

#[test]
fn a_second_without_requests_is_not_a_good_second() {
    let mut seconds: Vec<(u64, u64, u64)> = (0..20).map(|s| (s, 10, 0)).collect();
    seconds.retain(|(s, ..)| *s != 6);
    let history = scripted(&seconds, &[]);
    let m = measure(
        &history,
        &[event(5_000, EventKind::FaultStart)],
        &MeasureParams::new(true),
    );
    assert_eq!(m.success[6].total, 0);
    assert_eq!(m.rto_99_ms, Some(2_000), "second 6 is empty, recovery from second 7");
}

#[test]
fn unaffected_traffic_recovers_at_once() {
    let history = scripted(&(0..20).map(|s| (s, 10, 0)).collect::<Vec<_>>(), &[]);
    let m = measure(
        &history,
        &[event(5_300, EventKind::FaultStart)],
        &MeasureParams::new(false),
    );
    assert_eq!(m.rto_99_ms, Some(0));
}

#[test]
fn failovers_in_a_scenario_that_expects_none_are_false() {
    let history = scripted(&[(0, 1, 0)], &[]);
    let events = vec![
        active(0, "r1", 7),
        event(1_000, EventKind::FaultStart),
        active(2_000, "r1", 7),
        active(3_000, "r2", 8),
        active(4_000, "r1", 9),
        event(5_000, EventKind::Heal),
    ];
    let m = measure(&history, &events, &MeasureParams::new(false));
    assert_eq!(m.failovers, 2);
    assert_eq!(m.false_failovers, 2);
    assert_eq!(m.region_changes, 2);
    let expected = measure(&history, &events, &MeasureParams::new(true));
    assert_eq!(expected.false_failovers, 0);
}

#[test]
fn convergence_needs_every_region_answering() {
    let history = scripted(&[(0, 1, 0)], &[]);
    let events = vec![
        event(1_000, EventKind::FaultStart),
        event(5_000, EventKind::Heal),
        lag(5_500, None),
        lag(6_000, Some(2_000)),
        lag(7_000, Some(0)),
    ];
    let m = measure(&history, &events, &MeasureParams::new(true));
    assert_eq!(m.converge_ms, Some(2_000));
}

#[test]
fn client_requery_gap_shows_ttl_honouring() {
    let mut history = History::new();
    let lookup = |answer: &[&str]| Action::Lookup {
        name: "shop.".into(),
        authoritative: false,
        answer: answer.iter().map(|s| s.to_string()).collect(),
        ttl_s: 5,
    };
    for (at, answer) in [
        (0u64, vec!["a"]),
        (5_100, vec!["a"]),
        (10_300, vec![]),
        (10_400, vec!["b"]),
    ] {
        history.invoke(3, at, lookup(&[])).expect("valid");
        history
            .complete(3, at + 10, Phase::Ok, Some(lookup(&answer)), None)
            .expect("valid");
    }
    let m = measure(&history, &[], &MeasureParams::new(false));
    assert_eq!(m.client_lookups, 4);
    assert_eq!(
        m.client_requery_gap_ms_min,
        Some((5_100, 5)),
        "an empty answer is not cached"
    );
}

#[test]
fn a_provider_switch_is_timed_from_the_fault() {
    let provider = |at_ms: u64, region: Option<&str>| Event {
        at_ms,
        kind: EventKind::Provider {
            provider: "haproxy".into(),
            region: region.map(String::from),
            state: String::new(),
        },
    };
    let events = vec![
        provider(100, Some("us")),
        Event {
            at_ms: 1_000,
            kind: EventKind::FaultStart,
        },
        provider(1_500, None),
        provider(2_300, Some("eu")),
        provider(9_000, Some("us")),
    ];
    let switches = provider_switches(&events, Some(1_000), Some(5_000), None);
    assert_eq!(switches.len(), 1);
    assert_eq!(switches[0].before.as_deref(), Some("us"));
    assert_eq!(switches[0].switched_to.as_deref(), Some("eu"));
    assert_eq!(switches[0].rto_ms, Some(1_300));
    assert_eq!(switches[0].back_ms, Some(4_000), "heal at 5 s, back at 9 s");
    assert_eq!(switches[0].last.as_deref(), Some("us"));
    let unchanged = provider_switches(&events[..3], Some(1_000), None, None);
    assert_eq!(unchanged[0].rto_ms, None);
    // Switched and never back: the provider did not follow the failback.
    let stuck = provider_switches(&events[..4], Some(1_000), Some(5_000), None);
    assert_eq!(stuck[0].switched_to.as_deref(), Some("eu"));
    assert_eq!(stuck[0].back_ms, None);
    assert_eq!(stuck[0].last.as_deref(), Some("eu"));
}

#[test]
fn a_reading_naming_no_region_neither_starts_nor_ends_a_switch() {
    let provider = |at_ms: u64, region: Option<&str>| Event {
        at_ms,
        kind: EventKind::Provider {
            provider: "rfc2136".into(),
            region: region.map(String::from),
            state: String::new(),
        },
    };
    let fault = Event {
        at_ms: 1_000,
        kind: EventKind::FaultStart,
    };
    // Pointing nowhere at the fault, then at the region it pointed at before: no switch.
    let events = vec![
        provider(100, Some("us")),
        provider(900, None),
        fault.clone(),
        provider(1_300, Some("us")),
        provider(2_500, Some("eu")),
    ];
    let switches = provider_switches(&events, Some(1_000), None, Some("us"));
    assert_eq!(switches[0].before.as_deref(), Some("us"));
    assert_eq!(switches[0].switched_to.as_deref(), Some("eu"));
    assert_eq!(switches[0].rto_ms, Some(1_500));
    // Never read naming a region before the fault: the controller's region then stands in.
    let events = vec![
        provider(100, None),
        fault,
        provider(1_300, Some("us")),
        provider(2_500, Some("eu")),
    ];
    let switches = provider_switches(&events, Some(1_000), None, Some("us"));
    assert_eq!(switches[0].before.as_deref(), Some("us"));
    assert_eq!(switches[0].rto_ms, Some(1_500));
    let unknown = provider_switches(&events, Some(1_000), None, None);
    assert_eq!(unknown[0].before, None);
    assert_eq!(unknown[0].switched_to.as_deref(), Some("us"), "nothing to compare with");
}
