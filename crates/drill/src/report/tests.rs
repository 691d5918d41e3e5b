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

/// The boxes of the chart's marker labels, read back from the SVG: (left, top, right, bottom).
fn label_boxes(svg: &str) -> Vec<(String, f64, f64, f64, f64)> {
    let mut boxes = Vec::new();
    for piece in svg.split("<text class=\"marker-label\"").skip(1) {
        let attribute = |name: &str| -> f64 {
            let rest = &piece[piece.find(&format!(" {name}=\"")).expect(name) + name.len() + 3..];
            rest[..rest.find('"').expect("quote")].parse().expect("number")
        };
        let text = &piece[piece.find('>').expect(">") + 1..piece.find("</text>").expect("</text>")];
        let (x, y) = (attribute("x"), attribute("y"));
        // The baseline is at y; 11 px text reaches about 10 px above it.
        boxes.push((text.to_string(), x, y - 10.0, x + label_width_px(text), y + 2.0));
    }
    boxes
}

#[test]
fn close_markers_get_label_boxes_that_do_not_overlap_and_stay_in_the_plot() {
    let mut report = report();
    // The fault, DNS switched 40 ms later, a new generation 80 ms later (all within a pixel or
    // two on a 20 s chart), and the heal at the very end of the chart.
    report.measurements.fault_ms = Some(10_000);
    report.measurements.rto_dns_ms = Some(40);
    report.measurements.heal_ms = Some(report.measurements.end_ms);
    report.events.push(Event {
        at_ms: 10_080,
        kind: EventKind::ActiveRegion {
            region: "r2".into(),
            generation: 2,
        },
    });
    report.events.sort_by_key(|e| e.at_ms);
    let svg = render_svg(&report);
    let boxes = label_boxes(&svg);
    let names: Vec<&str> = boxes.iter().map(|b| b.0.as_str()).collect();
    for wanted in ["fault", "DNS switched", "gen 2: r2", "heal"] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    for (i, a) in boxes.iter().enumerate() {
        assert!(
            a.1 >= MARGIN_LEFT && a.3 <= CHART_WIDTH - MARGIN_RIGHT,
            "{a:?} leaves the plot"
        );
        for b in &boxes[i + 1..] {
            let apart = a.3 <= b.1 || b.3 <= a.1 || a.4 <= b.2 || b.4 <= a.2;
            assert!(apart, "labels overlap: {a:?} and {b:?}");
        }
    }
    // "fault" and "DNS switched" are stacked, not side by side on one row.
    let row = |name: &str| boxes.iter().find(|b| b.0 == name).map(|b| b.2).expect(name);
    assert_ne!(row("fault"), row("DNS switched"));
}

#[test]
fn label_rows_handle_labels_moved_left_of_their_predecessor() {
    // The second label starts left of the first (pushed in from the right edge): a row search
    // by the last end only would put it on row 0 over the first.
    let rows = label_rows(&[800.0, 760.0, 100.0], &["heal", "gen 3: r1", "fault"]);
    assert_eq!(rows, vec![0, 1, 0]);
    let starts = label_starts(&[895.0], &["heal"], 900.0);
    assert!(starts[0] + label_width_px("heal") <= 900.0);
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

#[test]
fn an_interrupted_drill_says_so_instead_of_failed() {
    let mut report = report();
    report.interrupted_at_ms = Some(7_250);
    assert!(!report.passed, "the JSON verdict stays not-passed for scripts");
    let text = render_text(&report);
    assert!(text.starts_with("drill store-crash: INTERRUPTED"), "{text}");
    assert!(text.contains("stopped after 7.2 s of 20.0 s"), "{text}");
    assert!(text.contains("n/a  RPO (acknowledged writes lost)"), "{text}");
    assert!(!text.contains("FAIL"), "nothing is called failed: {text}");
    // k39, not found when it stopped, is not called lost: it may not have replicated yet.
    assert!(
        text.contains("not judged: 1 not found yet (stopped before the stores converged)"),
        "{text}"
    );
    assert!(
        text.contains("Lost (not judged: the drill stopped before the stores converged): k39"),
        "{text}"
    );
    let line = render_line(&report);
    assert!(line.contains("lost writes not judged"), "{line}");
    assert!(line.starts_with("drill store-crash: INTERRUPTED"), "{line}");
    assert!(line.contains("(stopped after 7.2 s; not judged: "), "{line}");
    assert!(!line.contains("failed:"), "{line}");
    let html = render_html(&report);
    assert!(html.contains(">INTERRUPTED</span>") && html.contains("<strong>Interrupted:</strong>"));
    assert!(html.contains(r#"<tr class="unjudged">"#) && !html.contains(r#"<tr class="fail">"#));
    let json = serde_json::to_string(&report).expect("encodes");
    assert!(json.contains(r#""interrupted_at_ms":7250"#));
    let back: Report = serde_json::from_str(&json).expect("decodes");
    assert_eq!(back, report);
}

#[test]
fn a_finished_drill_has_no_interruption_in_its_json() {
    let json = serde_json::to_string(&report()).expect("encodes");
    assert!(!json.contains("interrupted_at_ms"));
}
