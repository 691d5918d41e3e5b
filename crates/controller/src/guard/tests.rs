use super::*;

fn fresh(region: &str, generation: u64) -> Heard {
    Heard::Fresh {
        region: Some(region.to_string()),
        generation,
        moving: None,
    }
}

fn report(address: &str, outcome: GuardOutcome) -> GuardReport {
    GuardReport {
        address: address.to_string(),
        outcome,
    }
}

#[test]
fn another_active_region_fences_at_once_and_the_guard_never_undoes_it() {
    let mut guard = Guard::new("us", None, 0);
    assert_eq!(guard.observe(0, fresh("us", 3)), Decision::Hold);
    let elsewhere = Decision::Fence(Why::Elsewhere {
        region: "eu".into(),
        generation: 4,
    });
    assert_eq!(guard.observe(500, fresh("eu", 4)), elsewhere);
    guard.fenced(&[report("db1:3306", GuardOutcome::Fenced { ended: 1 })]);
    // Kept while nobody answers (Redis pauses are renewed), without isolation_fence_ms too.
    assert_eq!(guard.observe(1_000, Heard::Nothing), elsewhere);
    assert_eq!(guard.observe(600_000, Heard::Nothing), elsewhere);
    // A failback: the runbook promotes a server here itself; the guard unfences nothing.
    assert_eq!(guard.observe(601_000, fresh("us", 5)), Decision::Hold);
    assert_eq!(guard.observe(601_500, fresh("us", 5)), Decision::Hold);
    assert!(guard.isolation_fenced().is_empty());
}

#[test]
fn without_isolation_fence_ms_silence_fences_nothing() {
    let mut guard = Guard::new("us", None, 0);
    assert_eq!(guard.observe(0, fresh("us", 1)), Decision::Hold);
    assert_eq!(guard.observe(10_000_000, Heard::Nothing), Decision::Hold);
}

#[test]
fn isolation_fences_once_the_limit_has_passed_since_the_last_fresh_word() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(100, fresh("us", 7)), Decision::Hold);
    assert_eq!(guard.observe(3_099, Heard::Nothing), Decision::Hold);
    assert_eq!(
        guard.observe(3_100, Heard::Nothing),
        Decision::Fence(Why::Isolated { silent_ms: 3_000 })
    );
    // A fresh word in between starts the count again.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(2_000, fresh("us", 7)), Decision::Hold);
    assert_eq!(guard.observe(4_000, Heard::Nothing), Decision::Hold);
    assert!(matches!(
        guard.observe(5_000, Heard::Nothing),
        Decision::Fence(Why::Isolated { .. })
    ));
}

#[test]
fn a_guard_that_never_heard_a_member_fences_after_the_limit_from_its_start() {
    let mut guard = Guard::new("us", Some(3_000), 1_000);
    assert_eq!(guard.observe(3_999, Heard::Nothing), Decision::Hold);
    assert!(matches!(
        guard.observe(4_000, Heard::Nothing),
        Decision::Fence(Why::Isolated { .. })
    ));
    guard.fenced(&[report("db0:3306", GuardOutcome::Fenced { ended: 0 })]);
    // No generation was seen before the fence: a runbook may have decided since, so only a
    // server promoted under the generation now heard (or later) is unfenced.
    assert_eq!(
        guard.observe(5_000, fresh("us", 9)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: Some(9)
        }
    );
}

#[test]
fn an_isolation_fence_is_undone_for_exactly_the_servers_it_changed_when_nothing_moved() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(guard.observe(3_000, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[
        report("db0:3306", GuardOutcome::Fenced { ended: 2 }),
        report("db1:3306", GuardOutcome::Refusing),
        report("db2:3306", GuardOutcome::Failed("no answer".into())),
        report("cache0:6379", GuardOutcome::Paused),
    ]);
    // Later rounds fence what was missed; what was fenced then is remembered too.
    assert!(matches!(guard.observe(3_500, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[report("db2:3306", GuardOutcome::Fenced { ended: 0 })]);
    // A member answers again, but a runbook is under way: nothing is undone yet.
    let moving = Heard::Fresh {
        region: Some("us".into()),
        generation: 7,
        moving: Some(Moving {
            generation: 8,
            to: "eu".into(),
            waiting: false,
        }),
    };
    assert_eq!(guard.observe(4_000, moving), Decision::Hold);
    let unfence = Decision::Unfence {
        servers: vec!["cache0:6379".into(), "db0:3306".into(), "db2:3306".into()],
        promoted_since: None,
    };
    assert_eq!(guard.observe(4_500, fresh("us", 7)), unfence);
    // One not reached is tried again; one a runbook moved meanwhile is left; the rest done.
    guard.unfenced(&[
        report("cache0:6379", GuardOutcome::Unfenced),
        report("db0:3306", GuardOutcome::Failed("refused".into())),
        report("db2:3306", GuardOutcome::Kept("it replicates from db9 now".into())),
    ]);
    assert_eq!(
        guard.observe(5_000, fresh("us", 7)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: None
        }
    );
    guard.unfenced(&[report("db0:3306", GuardOutcome::Unfenced)]);
    assert!(guard.isolation_fenced().is_empty());
    assert_eq!(guard.observe(5_500, fresh("us", 7)), Decision::Hold);
}

#[test]
fn a_generation_that_moved_during_the_isolation_unfences_only_what_its_runbook_promoted() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(guard.observe(3_000, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[
        report("db0:3306", GuardOutcome::Fenced { ended: 0 }),
        report("db1:3306", GuardOutcome::Fenced { ended: 0 }),
    ]);
    // Failed over and back while the guard heard nothing: the failback promoted a server here
    // (and the guard, still isolated, fenced it again).
    assert_eq!(
        guard.observe(60_000, fresh("us", 9)),
        Decision::Unfence {
            servers: vec!["db0:3306".into(), "db1:3306".into()],
            promoted_since: Some(9)
        }
    );
    guard.unfenced(&[
        report(
            "db0:3306",
            GuardOutcome::Kept("a runbook decided since the fence".into()),
        ),
        report("db1:3306", GuardOutcome::Unfenced),
    ]);
    assert!(guard.isolation_fenced().is_empty());
    assert_eq!(guard.observe(60_500, fresh("us", 9)), Decision::Hold);
    // Another region active ends the isolation the same way.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(guard.observe(3_000, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[report("db0:3306", GuardOutcome::Fenced { ended: 0 })]);
    assert!(matches!(
        guard.observe(4_000, fresh("eu", 8)),
        Decision::Fence(Why::Elsewhere { .. })
    ));
    assert!(guard.isolation_fenced().is_empty());
    assert_eq!(guard.observe(9_000, fresh("us", 9)), Decision::Hold);
}

#[test]
fn nothing_is_fenced_while_a_runbook_moves_the_role_here() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert!(matches!(
        guard.observe(0, fresh("eu", 8)),
        Decision::Fence(Why::Elsewhere { .. })
    ));
    // The failback runbook promotes this region's server before its pointer step runs.
    let back = Heard::Fresh {
        region: Some("eu".into()),
        generation: 8,
        moving: Some(Moving {
            generation: 9,
            to: "us".into(),
            waiting: false,
        }),
    };
    assert_eq!(guard.observe(500, back.clone()), Decision::Hold);
    // Silence after it is neither a move elsewhere nor, yet, an isolation.
    assert_eq!(guard.observe(1_000, Heard::Nothing), Decision::Hold);
    assert_eq!(guard.observe(3_400, back), Decision::Hold);
    assert_eq!(guard.observe(3_900, fresh("us", 9)), Decision::Hold);
    // A move elsewhere is fenced for servers promoted before it.
    match guard.observe(4_400, fresh("eu", 10)) {
        Decision::Fence(why) => assert_eq!(why.older_than(), Some(10)),
        other => panic!("{other:?}"),
    }
    assert_eq!(Why::Isolated { silent_ms: 1 }.older_than(), None);
}

#[test]
fn an_answer_older_than_one_seen_counts_as_none() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert!(matches!(guard.observe(0, fresh("eu", 8)), Decision::Fence(_)));
    assert_eq!(guard.observe(500, fresh("us", 9)), Decision::Hold);
    // A member behind the others still says eu at 8: not a move, and not contact either.
    assert_eq!(guard.observe(1_000, fresh("eu", 8)), Decision::Hold);
    assert_eq!(guard.observe(3_400, fresh("us", 7)), Decision::Hold);
    assert!(matches!(
        guard.observe(3_500, fresh("us", 7)),
        Decision::Fence(Why::Isolated { silent_ms: 3_000 })
    ));
}

#[test]
fn a_generation_too_far_ahead_is_no_answer() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    let forged = 7 + crate::pointer::GENERATION_STEP_MAX + 1;
    assert_eq!(guard.observe(500, fresh("eu", forged)), Decision::Hold);
    // Genuine answers go on counting.
    assert_eq!(guard.observe(2_900, fresh("us", 8)), Decision::Hold);
    assert!(matches!(
        guard.observe(3_000, fresh("eu", 8 + crate::pointer::GENERATION_STEP_MAX)),
        Decision::Fence(Why::Elsewhere { .. })
    ));
}

#[test]
fn no_region_yet_is_contact_but_no_move() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    let none = Heard::Fresh {
        region: None,
        generation: 0,
        moving: None,
    };
    assert_eq!(guard.observe(2_900, none.clone()), Decision::Hold);
    assert_eq!(guard.observe(5_800, none), Decision::Hold);
    assert_eq!(guard.observe(8_700, Heard::Nothing), Decision::Hold);
}

fn check(region: &str, fall: u32, fast_interval_ms: u64) -> health::CheckSpec {
    serde_json::from_value(serde_json::json!({
        "name": format!("{region}-{fall}-{fast_interval_ms}"),
        "region": region,
        "kind": {"type": "tcp", "address": "127.0.0.1:1"},
        "fall": fall,
        "fast_interval_ms": fast_interval_ms,
    }))
    .expect("a check")
}

#[test]
fn timing_is_held_to_the_quickest_failover_of_the_region() {
    let checks = [check("us", 3, 250), check("us", 5, 1_000), check("eu", 2, 10)];
    // The quickest us check: 2 × 250 ms after the first failure.
    assert_eq!(earliest_failover_ms(0, &checks, "us"), Some(500));
    assert_eq!(earliest_failover_ms(4_000, &checks, "us"), Some(4_500));
    assert_eq!(earliest_failover_ms(0, &checks, "ap"), None);
    let (message, fix) = check_timing(3_000, 0, &checks, "us").expect_err("too slow");
    assert!(
        message.contains("isolation_fence_ms = 3000") && message.contains("after 500 ms"),
        "{message}"
    );
    let needed = 3_000 + FENCE_DELAY_MS - 500;
    assert!(fix.contains(&format!("down_confirm_ms to at least {needed}")), "{fix}");
    assert!(!fix.contains("lower"), "no isolation_fence_ms is short enough: {fix}");
    let (_, fix) = check_timing(20_000, 20_000, &checks, "us").expect_err("too slow");
    assert!(
        fix.contains(&format!(
            "lower isolation_fence_ms to at most {}",
            20_500 - FENCE_DELAY_MS
        )),
        "{fix}"
    );
    assert!(check_timing(3_000, needed, &checks, "us").is_ok());
    assert!(check_timing(3_000, needed - 1, &checks, "us").is_err());
    assert!(
        check_timing(3_000, 0, &checks, "ap").is_ok(),
        "no check: only an operator fails it over"
    );
}

#[test]
fn silence_fences_for_isolation_also_while_another_region_is_active() {
    // us is passive; its link to the controller fails, and the role may come here unheard
    // (the controller still reaches us's databases): past the limit every writable server
    // here is fenced, the newly promoted one too.
    let mut guard = Guard::new("us", Some(3_000), 0);
    let elsewhere = Decision::Fence(Why::Elsewhere {
        region: "eu".into(),
        generation: 8,
    });
    assert_eq!(guard.observe(0, fresh("eu", 8)), elsewhere);
    assert_eq!(
        guard.observe(60_000, fresh("eu", 8)),
        elsewhere,
        "an answer naming eu is contact"
    );
    assert_eq!(guard.observe(62_999, Heard::Nothing), elsewhere);
    match guard.observe(63_000, Heard::Nothing) {
        Decision::Fence(why) => assert_eq!(why.older_than(), None, "{why}"),
        other => panic!("{other:?}"),
    }
    guard.fenced(&[report("db0:3306", GuardOutcome::Fenced { ended: 0 })]);
    // The role had come here under 9: only a server that runbook promoted is unfenced.
    assert_eq!(
        guard.observe(70_000, fresh("us", 9)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: Some(9)
        }
    );
}

#[test]
fn every_member_stale_is_no_isolation() {
    // etcd is down: every member answers, each cut off from it; none can fail anything over.
    let stale = |region: &str, generation| Heard::EveryMemberStale {
        region: Some(region.to_string()),
        generation,
    };
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    for at in (500..20_000).step_by(500) {
        assert_eq!(guard.observe(at, stale("us", 7)), Decision::Hold, "at {at}");
    }
    // One member unreachable too (it might be the one that reaches etcd): silence counts.
    assert_eq!(guard.observe(22_000, Heard::Nothing), Decision::Hold);
    assert!(matches!(
        guard.observe(22_500, Heard::Nothing),
        Decision::Fence(Why::Isolated { .. })
    ));
    // While another region is active, it keeps that fence.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert!(matches!(guard.observe(0, fresh("eu", 8)), Decision::Fence(_)));
    assert!(matches!(
        guard.observe(10_000, stale("eu", 8)),
        Decision::Fence(Why::Elsewhere { .. })
    ));
    // What etcd recorded last, when it is news, is a move: us active, then every member stale
    // naming eu at a newer generation.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(
        guard.observe(500, stale("eu", 8)),
        Decision::Fence(Why::Elsewhere { generation: 8, .. })
    ));
    // An isolation fence in force stays (Redis pauses renewed) until a fresh answer.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(
        guard.observe(3_000, Heard::Nothing),
        Decision::Fence(Why::Isolated { .. })
    ));
    guard.fenced(&[report("cache0:6379", GuardOutcome::Paused)]);
    for at in [3_500, 4_000, 60_000] {
        assert!(
            matches!(guard.observe(at, stale("us", 7)), Decision::Fence(Why::Isolated { .. })),
            "at {at}"
        );
    }
    assert!(matches!(
        guard.observe(60_500, fresh("us", 7)),
        Decision::Unfence { .. }
    ));
}

#[test]
fn a_fence_that_failed_midway_is_remembered_for_the_unfence() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(guard.observe(3_000, Heard::Nothing), Decision::Fence(_)));
    // The first statement went through, the rest ran out of time: the next round finds it
    // read-only already.
    guard.fenced(&[
        report("db0:3306", GuardOutcome::Interrupted("no answer within 2000 ms".into())),
        // Not reached at all: nothing changed, nothing to undo.
        report("db1:3306", GuardOutcome::Failed("connection refused".into())),
    ]);
    assert!(matches!(guard.observe(3_500, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[report("db0:3306", GuardOutcome::Refusing)]);
    assert_eq!(guard.isolation_fenced(), ["db0:3306"]);
    assert_eq!(
        guard.observe(4_000, fresh("us", 7)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: None
        }
    );
}

fn reading(region: Option<&str>, generation: u64, stale: bool, moving: Option<(u64, &str)>) -> Reading {
    Reading {
        value: crate::pointer::PointerValue {
            region: region.map(str::to_string),
            generation,
        },
        stale: stale.then(|| "cut off from etcd for 5000 ms".to_string()),
        moving: moving.map(|(generation, to)| Moving {
            generation,
            to: to.to_string(),
            waiting: false,
        }),
    }
}

#[test]
fn a_round_takes_the_newest_fresh_answer_with_any_moving_of_its_generation() {
    let known = ["us".to_string(), "eu".to_string()];
    let answers = vec![
        ("http://a".to_string(), Ok(reading(Some("us"), 7, false, None))),
        (
            "http://b".to_string(),
            Ok(reading(Some("us"), 7, false, Some((8, "eu")))),
        ),
        ("http://c".to_string(), Ok(reading(Some("eu"), 9, true, None))),
        ("http://d".to_string(), Err("http://d: connection refused".to_string())),
        ("http://e".to_string(), Ok(reading(Some("mars"), 99, false, None))),
    ];
    let (heard, problems) = combine(answers, &known, Some(5));
    assert_eq!(
        heard,
        Heard::Fresh {
            region: Some("us".into()),
            generation: 7,
            moving: Some(Moving {
                generation: 8,
                to: "eu".into(),
                waiting: false,
            })
        },
        "a follower's view without the runbook must not hide the leader's moving"
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("stale")));
    assert!(problems.iter().any(|p| p.contains("'mars'")), "{problems:?}");
    // Every member stale: etcd is down everywhere.
    let all_stale = vec![
        ("http://a".to_string(), Ok(reading(Some("us"), 7, true, None))),
        ("http://b".to_string(), Ok(reading(Some("us"), 7, true, None))),
    ];
    assert_eq!(
        combine(all_stale.clone(), &known, Some(2)).0,
        Heard::EveryMemberStale {
            region: Some("us".into()),
            generation: 7
        }
    );
    // Without the number of members, or with more members than answered: one left out might
    // reach etcd and act, so it is silence.
    assert_eq!(combine(all_stale.clone(), &known, None).0, Heard::Nothing);
    assert_eq!(combine(all_stale, &known, Some(3)).0, Heard::Nothing);
    // One of them not answering: it may be the one that reaches etcd.
    let one_down = vec![
        ("http://a".to_string(), Ok(reading(Some("us"), 7, true, None))),
        ("http://b".to_string(), Err("timed out".to_string())),
    ];
    assert_eq!(combine(one_down, &known, Some(2)).0, Heard::Nothing);
    assert_eq!(combine(Vec::new(), &known, Some(2)).0, Heard::Nothing);
}

#[test]
fn a_restarted_guard_goes_on_where_it_stopped() {
    // Fenced for isolation at wall time 100 s, the guard stops and restarts 60 s later.
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert_eq!(guard.observe(0, fresh("us", 7)), Decision::Hold);
    assert!(matches!(guard.observe(3_000, Heard::Nothing), Decision::Fence(_)));
    guard.fenced(&[report("db0:3306", GuardOutcome::Fenced { ended: 1 })]);
    let saved = guard.saved(3_500, 100_000);
    assert_eq!((saved.silent_ms, saved.saved_at_wall_ms), (3_500, 100_000));
    let text = serde_json::to_string(&saved).expect("serialises");
    let back: Saved = serde_json::from_str(&text).expect("parses");
    assert_eq!(back, saved);
    let mut other = Guard::new("eu", Some(3_000), 5);
    assert!(
        other
            .restore(back.clone(), 5, 160_000)
            .expect_err("another region's file")
            .contains("region 'us'")
    );
    let mut restarted = Guard::new("us", Some(3_000), 5);
    restarted.restore(back.clone(), 5, 160_000).expect("its own region's");
    assert_eq!(restarted.isolation_fenced(), ["db0:3306"]);
    // Still cut off: it fences at once (the silence before the restart counts).
    assert!(matches!(
        restarted.observe(10, Heard::Nothing),
        Decision::Fence(Why::Isolated { silent_ms }) if silent_ms >= 63_000
    ));
    // Heard again at the same generation: the servers it fenced before the restart go back.
    assert_eq!(
        restarted.observe(500, fresh("us", 7)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: None
        }
    );
    // A guard restarted shortly after contact waits out the rest of the limit only.
    let mut calm = Guard::new("us", Some(3_000), 0);
    assert_eq!(calm.observe(0, fresh("us", 7)), Decision::Hold);
    let saved = calm.saved(0, 50_000);
    let mut restarted = Guard::new("us", Some(3_000), 0);
    restarted.restore(saved.clone(), 0, 51_000).expect("restored");
    assert_eq!(restarted.observe(1_999, Heard::Nothing), Decision::Hold);
    assert!(matches!(restarted.observe(2_000, Heard::Nothing), Decision::Fence(_)));
    // A wall clock stepped back loses only the time the guard was down, not the silence.
    let mut stepped = Guard::new("us", Some(3_000), 0);
    stepped.restore(back, 0, 10_000).expect("restored");
    assert!(matches!(
        stepped.observe(0, Heard::Nothing),
        Decision::Fence(Why::Isolated { silent_ms: 3_500 })
    ));
    // An address no step names any more leaves the isolation when the unfence finds nobody.
    assert_eq!(
        stepped.observe(100, fresh("us", 7)),
        Decision::Unfence {
            servers: vec!["db0:3306".into()],
            promoted_since: None
        }
    );
    stepped.unfenced(&[]);
    assert!(stepped.isolation_fenced().is_empty());
}

#[test]
fn the_state_file_is_written_whole_and_read_back_bounded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("guard.json");
    assert_eq!(read_state(&path), Ok(None));
    let saved = Saved {
        region: "us".into(),
        newest: Some(7),
        silent_ms: 0,
        saved_at_wall_ms: 42,
        elsewhere: Some(("eu".into(), 8)),
        isolation: Some(SavedIsolation {
            generation: Some(7),
            servers: vec!["db0:3306".into()],
        }),
    };
    write_state(&path, &saved).expect("written");
    assert_eq!(read_state(&path), Ok(Some(saved)));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    std::fs::write(&path, b"{not json").expect("write");
    assert!(
        read_state(&path)
            .expect_err("damaged")
            .contains("not a guard state file")
    );
    std::fs::write(&path, vec![b' '; (STATE_FILE_BYTES_MAX + 1) as usize]).expect("write");
    assert!(read_state(&path).expect_err("too large").contains("larger than"));
}

#[test]
fn a_failed_move_here_waiting_for_its_retry_keeps_the_fence() {
    let mut guard = Guard::new("us", Some(3_000), 0);
    assert!(matches!(guard.observe(0, fresh("eu", 8)), Decision::Fence(_)));
    let waiting = Heard::Fresh {
        region: Some("eu".into()),
        generation: 9,
        moving: Some(Moving {
            generation: 9,
            to: "us".into(),
            waiting: true,
        }),
    };
    // The move to us failed and waits: eu is still active, its fence holds (a server the retry
    // promotes has a newer record and is left alone).
    match guard.observe(500, waiting) {
        Decision::Fence(why) => assert_eq!(why.older_than(), Some(9)),
        other => panic!("{other:?}"),
    }
}
