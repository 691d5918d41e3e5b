use super::*;
use crate::history::{Action, Phase};

fn drill_inputs() -> (History, Vec<Event>, FinalState) {
    let mut history = History::new();
    let mut t = 0;
    for i in 0..40u64 {
        let ok = !(12..15).contains(&i);
        history
            .invoke(
                1,
                t,
                Action::Request {
                    operation: "place_order".into(),
                    region: Some("r1".into()),
                },
            )
            .expect("valid");
        history
            .complete(1, t + 100, if ok { Phase::Ok } else { Phase::Info }, None, None)
            .expect("valid");
        let write = Action::Write {
            key: format!("k{i}"),
            value: format!("v{i}"),
            region: "r1".into(),
        };
        history.invoke(2, t + 100, write).expect("valid");
        history.complete(2, t + 200, Phase::Ok, None, None).expect("valid");
        t += 500;
    }
    let events = vec![
        Event {
            at_ms: 0,
            kind: EventKind::ActiveRegion {
                region: "r1".into(),
                generation: 1,
            },
        },
        Event {
            at_ms: 5_000,
            kind: EventKind::FaultStart,
        },
        Event {
            at_ms: 5_000,
            kind: EventKind::Step {
                label: "kill -9 <primary> region".into(),
                ok: true,
            },
        },
        Event {
            at_ms: 7_000,
            kind: EventKind::ActiveRegion {
                region: "r2".into(),
                generation: 2,
            },
        },
        Event {
            at_ms: 8_000,
            kind: EventKind::ReplicationLag { lag_ms: Some(1_500) },
        },
        Event {
            at_ms: 10_000,
            kind: EventKind::Heal,
        },
        Event {
            at_ms: 12_000,
            kind: EventKind::ReplicationLag { lag_ms: Some(0) },
        },
    ];
    let table: std::collections::BTreeMap<String, String> =
        (0..39u64).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
    let state = FinalState {
        regions: [("r1".to_string(), table.clone()), ("r2".to_string(), table)].into(),
    };
    (history, events, state)
}

fn report() -> Report {
    let (history, events, state) = drill_inputs();
    let scenario = scenario::by_name("store-crash").expect("exists");
    build(Inputs {
        scenario: &scenario,
        durations: Durations {
            warmup_ms: 5_000,
            fault_ms: 5_000,
            settle_ms: 10_000,
        },
        ttl_s: 5,
        regions: vec!["r1".into(), "r2".into()],
        history: &history,
        events: &events,
        final_state: &state,
        isolation: None,
        ha: None,
    })
}

#[test]
fn a_lost_write_fails_the_drill_and_is_listed() {
    let report = report();
    assert!(!report.passed, "k39 is missing in both regions");
    assert_eq!(report.check.lost, 1);
    assert_eq!((report.measurements.steps, report.measurements.steps_failed), (1, 0));
    assert_eq!(report.check.listed[0].key, "k39");
    let text = render_text(&report);
    assert!(text.starts_with("drill store-crash: FAILED"));
    assert!(text.contains("RPO: acknowledged writes lost"));
    assert!(text.contains("FAIL RPO (acknowledged writes lost)"));
    assert!(text.contains("k39=v39"));
}

#[test]
fn html_is_self_contained_with_the_chart_and_figures() {
    let report = report();
    let html = render_html(&report);
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(html.contains("<polyline class=\"success\""));
    assert!(html.contains("<polyline class=\"lag\""));
    assert!(html.contains("class=\"fault-window\""));
    assert!(html.contains(">fault</text>") && html.contains(">heal</text>"));
    assert!(html.contains("gen 2: r2"));
    assert!(html.contains("FAILED"));
    assert!(html.contains("<td>k39</td>"));
    assert!(html.contains("kill -9 &lt;primary&gt; region"), "event text is escaped");
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("src=\"http"), "no external resources");
    let figure = format!("{} / {}", report.measurements.requests_ok, report.measurements.requests);
    assert!(html.contains(&figure), "request figures appear: {figure}");
}

#[test]
fn json_round_trips() {
    let report = report();
    let text = serde_json::to_string_pretty(&report).expect("serialises");
    let again: Report = serde_json::from_str(&text).expect("parses");
    assert_eq!(again, report);
    let value: serde_json::Value = serde_json::from_str(&text).expect("parses");
    assert_eq!(value["check"]["lost"], 1);
    assert_eq!(value["measurements"]["failovers"], 1);
    assert_eq!(value["events"][1]["kind"], "fault_start");
}

#[test]
fn escape_covers_markup() {
    assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
}

#[test]
fn the_quiet_line_is_one_line_with_the_verdict_and_the_failures() {
    let report = report();
    let line = render_line(&report);
    assert_eq!(line.matches('\n').count(), 1, "{line}");
    assert!(line.starts_with("drill store-crash: FAIL — "), "{line}");
    assert!(line.contains("lost writes 1"), "{line}");
    assert!(line.contains("(failed: RPO (acknowledged writes lost)"), "{line}");
}

#[test]
fn marker_labels_never_share_a_row_where_they_overlap() {
    // "fault" and "DNS switched" 2 px apart, then one far to the right.
    let rows = label_rows(
        &[100.0, 102.0, 104.0, 600.0],
        &["fault", "DNS switched", "gen 2: eu-west-1", "heal"],
    );
    assert_eq!(rows, vec![0, 1, 2, 0]);
    let svg = render_svg(&report());
    assert!(svg.contains(">100%</text>"), "the y axis is labelled up to 100 %");
    assert!(!svg.contains(">99%</text>"), "no 99 % label crowding the 100 % one");
    assert!(svg.contains("class=\"threshold\""), "the 99 % line stays, dashed");
}

#[test]
fn the_database_figures_appear_in_the_text_and_html_reports() {
    let mut report = report();
    report.databases = Some(crate::databases::DatabaseReport {
        expectation: crate::databases::DbExpectation::Promote,
        semi_sync: true,
        promote_lag_max_ms: 1_000,
        databases: vec![crate::databases::DatabaseFigures {
            kind: "mariadb".into(),
            step: "orders-db".into(),
            promoted: true,
            detection_to_writable_ms: Some(1_200),
            acknowledged: 10,
            acknowledged_lost: 1,
            lost_listed: vec!["k-lost-order".into()],
            ..Default::default()
        }],
    });
    let text = render_text(&report);
    assert!(
        text.contains("mariadb: detection → writable standby") && text.contains("1.2 s"),
        "{text}"
    );
    assert!(text.contains("1 of 10"), "{text}");
    let html = render_html(&report);
    assert!(
        html.contains("<h2>Databases</h2>") && html.contains("k-lost-order"),
        "{html}"
    );
}
