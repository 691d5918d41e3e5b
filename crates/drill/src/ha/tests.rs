use super::*;

const START: u64 = 1_000_000;

fn started(at: u64, generation: u64, to: &str) -> String {
    format!(
        r#"{{"seq":1,"at_ms":{at},"generation":{generation},"kind":"engine","note":{{"type":"runbook_started","generation":{generation},"kind":"failover","from":null,"to":{{"active":"{to}","serving":["{to}"]}},"reason":"r"}}}}"#
    )
}

fn finished(at: u64, generation: u64, to: &str) -> String {
    format!(
        r#"{{"seq":2,"at_ms":{at},"generation":{generation},"kind":"engine","note":{{"type":"runbook_finished","generation":{generation},"to":{{"active":"{to}","serving":["{to}"]}},"outcome":{{"outcome":"succeeded"}}}}}}"#
    )
}

fn step(at: u64, generation: u64, name: &str, outcome: &str) -> String {
    format!(
        r#"{{"seq":3,"at_ms":{at},"generation":{generation},"kind":"step","step":"{name}","attempt":1,"outcome":"{outcome}","detail":"d","duration_ms":1}}"#
    )
}

fn stepped_down(at: u64) -> String {
    format!(r#"{{"seq":4,"at_ms":{at},"generation":0,"kind":"leadership","event":"stepped_down","detail":"lease"}}"#)
}

fn log(member: &str, lines: &[String]) -> MemberLog {
    MemberLog {
        member: member.into(),
        text: Ok(lines.join("\n") + "\n"),
    }
}

fn events() -> Vec<Event> {
    vec![
        Event {
            at_ms: 0,
            kind: EventKind::Leader {
                member: Some("a".into()),
                generation: 1,
            },
        },
        Event {
            at_ms: 12_000,
            kind: EventKind::LeaderFault { member: "a".into() },
        },
        Event {
            at_ms: 12_100,
            kind: EventKind::Leader {
                member: None,
                generation: 2,
            },
        },
        Event {
            at_ms: 17_400,
            kind: EventKind::Leader {
                member: Some("b".into()),
                generation: 3,
            },
        },
    ]
}

fn passed(results: &[ExpectationResult], name: &str) -> bool {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no expectation {name}: {results:?}"))
        .passed
}

#[test]
fn a_crash_rolled_forward_by_the_next_leader_passes() {
    let logs = [
        log(
            "a",
            &[
                // Before the drill: ignored.
                started(START - 10, 1, "r1"),
                step(START - 9, 1, "dns", "ok"),
                started(START + 10, 2, "r2"),
                step(START + 5_000, 2, "dns", "error"),
            ],
        ),
        log(
            "b",
            &[
                started(START + 20_000, 3, "r2"),
                step(START + 20_010, 3, "dns", "ok"),
                step(START + 20_020, 3, "pointer", "ok"),
                finished(START + 20_030, 3, "r2"),
            ],
        ),
        log("c", &[]),
    ];
    let check = check(&events(), Some("a"), &logs, START);
    assert_eq!(check.next_leader.as_deref(), Some("b"));
    assert_eq!(check.takeover_ms, Some(5_400));
    assert_eq!(
        (check.interrupted_generation, check.finished_generation),
        (Some(2), Some(3))
    );
    assert_eq!(check.finished_by.as_deref(), Some("b"));
    assert!(check.applied_twice.is_empty(), "{:?}", check.applied_twice);
    let results = evaluate(HaExpectation::Crash, &check);
    assert!(results.iter().all(|r| r.passed), "{results:?}");
}

#[test]
fn a_step_applied_again_under_the_new_generation_fails() {
    let logs = [
        log("a", &[started(START + 10, 2, "r2"), step(START + 20, 2, "dns", "ok")]),
        log(
            "b",
            &[
                started(START + 20_000, 3, "r2"),
                step(START + 20_010, 3, "dns", "ok"),
                finished(START + 20_030, 3, "r2"),
                // The failback is another decision: applying dns again is right.
                started(START + 40_000, 4, "r1"),
                step(START + 40_010, 4, "dns", "ok"),
                finished(START + 40_030, 4, "r1"),
            ],
        ),
    ];
    let check = check(&events(), Some("a"), &logs, START);
    assert_eq!(
        check.applied_twice,
        vec!["step 'dns' applied under generations 2 and 3 (to r2)"]
    );
    let results = evaluate(HaExpectation::Crash, &check);
    assert!(!passed(&results, "no step applied under two generations"));
    assert!(passed(
        &results,
        "interrupted runbook finished with a higher generation"
    ));
}

#[test]
fn a_late_push_that_went_through_fails_the_isolation_drill_and_none_at_all_proves_nothing() {
    let base = |late: &str| {
        [
            log(
                "a",
                &[
                    started(START + 10, 2, "r2"),
                    step(START + 5_000, 2, "dns", "error"),
                    stepped_down(START + 6_000),
                    step(START + 30_000, 2, "dns", late),
                ],
            ),
            log(
                "b",
                &[
                    started(START + 20_000, 3, "r2"),
                    step(START + 20_010, 3, "dns", "ok"),
                    finished(START + 20_030, 3, "r2"),
                ],
            ),
        ]
    };
    let refused = check(&events(), Some("a"), &base("fenced"), START);
    assert!(refused.stepped_down);
    assert_eq!((refused.late_refused, refused.late_applied.len()), (1, 0));
    let results = evaluate(HaExpectation::Isolation, &refused);
    assert!(results.iter().all(|r| r.passed), "{results:?}");

    let applied = check(&events(), Some("a"), &base("ok"), START);
    assert_eq!(applied.late_applied.len(), 1);
    assert!(!passed(
        &evaluate(HaExpectation::Isolation, &applied),
        "late pushes refused"
    ));

    // The old leader dropped its step the moment it stopped acting: nothing late at all.
    let dropped = check(&events(), Some("a"), &base("stopped"), START);
    assert_eq!(
        (dropped.late_stopped, dropped.late_refused, dropped.late_applied.len()),
        (1, 0, 0)
    );
    assert!(passed(
        &evaluate(HaExpectation::Isolation, &dropped),
        "late pushes refused"
    ));

    let silent = check(&events(), Some("a"), &base("error"), START);
    assert_eq!((silent.late_refused, silent.late_applied.len()), (0, 0));
    assert!(!passed(
        &evaluate(HaExpectation::Isolation, &silent),
        "late pushes refused"
    ));
}

#[test]
fn no_takeover_an_unreadable_log_or_no_interrupted_runbook_each_fail() {
    let only_fault = &events()[..3];
    let logs = [
        log("a", &[started(START + 10, 2, "r2")]),
        MemberLog {
            member: "b".into(),
            text: Err("open /x: No such file".into()),
        },
    ];
    let check_result = check(only_fault, Some("a"), &logs, START);
    assert_eq!(check_result.takeover_ms, None);
    let results = evaluate(HaExpectation::SiteLoss, &check_result);
    assert!(!passed(&results, "leader takeover"));
    assert!(!passed(&results, "audit logs read"));
    assert!(
        results
            .iter()
            .find(|r| r.name == "audit logs read")
            .is_some_and(|r| r.actual.contains("/x"))
    );

    let nothing = check(&events(), Some("a"), &[log("a", &[]), log("b", &[])], START);
    let results = evaluate(HaExpectation::Crash, &nothing);
    assert!(!passed(
        &results,
        "interrupted runbook finished with a higher generation"
    ));
}

#[test]
fn torn_and_foreign_lines_are_skipped() {
    let text = format!(
        "{}\n{{\"seq\":9,\"at_ms\":{}\nnot json\n{}\n",
        started(START + 1, 2, "r2"),
        START + 2,
        finished(START + 3, 2, "r2")
    );
    let lines = parse(&text, START);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1].record,
        Record::RunbookSucceeded {
            generation: 2,
            to: "r2".into()
        }
    );
}
