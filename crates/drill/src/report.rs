//! The drill's report: JSON for machines, a text table for the terminal, and one
//! self-contained HTML page (no scripts, no external files) with an inline SVG timeline of the
//! success rate, the replication lag and the events.
//!
//! Pure: [`build`] assembles the report from the history, events and final state, so a saved
//! history can be re-reported.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checker::{self, CheckResult, FinalState, Isolation};
use crate::history::History;
use crate::measure::{self, Event, EventKind, MeasureParams, Measurements};
use crate::scenario::{self, Durations, ExpectationResult, FailoverExpectation, Scenario};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub summary: String,
    pub passed: bool,
    pub durations: Durations,
    /// The failover record's TTL the clients honoured.
    pub ttl_s: u32,
    /// Regions by role at the start: the primary first.
    pub regions: Vec<String>,
    pub expectations: Vec<ExpectationResult>,
    pub measurements: Measurements,
    pub check: CheckResult,
    pub isolation: Option<Isolation>,
    pub events: Vec<Event>,
    /// Operations in the history (invocations and completions).
    pub history_ops: usize,
    /// With several controllers: what the scenarios that break the leader found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::HaCheck>,
    /// With databases (`switchyard lab --databases`): per database what its step did and
    /// what was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<crate::databases::DatabaseReport>,
    /// When the drill was interrupted (ms from its start): the report covers the part that ran,
    /// and an expectation not met is one the drill stopped before it could judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_at_ms: Option<u64>,
}

/// Everything a report is computed from.
pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub durations: Durations,
    pub ttl_s: u32,
    pub regions: Vec<String>,
    pub history: &'a History,
    pub events: &'a [Event],
    pub final_state: &'a FinalState,
    pub isolation: Option<Isolation>,
    /// The leader check, for the scenarios that expect one.
    pub ha: Option<crate::ha::HaCheck>,
}

pub fn build(inputs: Inputs<'_>) -> Report {
    let params = MeasureParams::new(inputs.scenario.expectations.failover != FailoverExpectation::Forbidden);
    let measurements = measure::measure(inputs.history, inputs.events, &params);
    let check = checker::check(inputs.history, inputs.final_state, inputs.isolation.as_ref());
    let mut expectations = scenario::evaluate(inputs.scenario, &measurements, &check, inputs.ttl_s);
    if let Some(expected) = inputs.scenario.expectations.ha {
        let ha = inputs.ha.clone().unwrap_or_default();
        expectations.extend(crate::ha::evaluate(expected, &ha));
    }
    Report {
        scenario: inputs.scenario.name.to_string(),
        summary: inputs.scenario.summary.to_string(),
        passed: expectations.iter().all(|e| e.passed),
        durations: inputs.durations,
        ttl_s: inputs.ttl_s,
        regions: inputs.regions,
        expectations,
        measurements,
        check,
        isolation: inputs.isolation,
        events: inputs.events.to_vec(),
        history_ops: inputs.history.len(),
        ha: inputs.ha,
        databases: None,
        interrupted_at_ms: None,
    }
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or_else(|| "—".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0))
}

fn percent(ok: u64, total: u64) -> String {
    if total == 0 {
        "—".into()
    } else {
        format!("{:.2}%", ok as f64 * 100.0 / total as f64)
    }
}

/// The figures as (label, value) rows, shared by the text and HTML renderings.
fn figures(report: &Report) -> Vec<(&'static str, String)> {
    let m = &report.measurements;
    let c = &report.check;
    vec![
        ("fault steps (failed)", format!("{} ({})", m.steps, m.steps_failed)),
        ("RTO (DNS answer switched)", seconds(m.rto_dns_ms)),
        ("RTO (99% of requests succeed)", seconds(m.rto_99_ms)),
        ("failover decided after", seconds(m.failover_decided_ms)),
        ("failovers (false)", format!("{} ({})", m.failovers, m.false_failovers)),
        ("active-region changes", m.region_changes.to_string()),
        (
            "… of them while the fault lasted",
            m.region_changes_during_fault.to_string(),
        ),
        ("replication lag at failover", seconds(m.lag_at_failover_ms)),
        ("replication lag, max", seconds(m.lag_max_ms)),
        ("converged after heal", seconds(m.converge_ms)),
        ("failback after heal", seconds(m.failback_ms)),
        (
            "client requests ok",
            format!(
                "{} / {} ({})",
                m.requests_ok,
                m.requests,
                percent(m.requests_ok, m.requests)
            ),
        ),
        ("client DNS queries (cache misses)", m.client_lookups.to_string()),
        (
            "RPO: acknowledged writes lost",
            // A drill stopped early read the stores before they converged: what it did not
            // find yet may still be on its way, so it is no loss.
            match report.interrupted_at_ms {
                Some(_) if c.lost > 0 => format!(
                    "not judged: {} not found yet (stopped before the stores converged)",
                    c.lost
                ),
                Some(_) => "not judged (stopped before the stores converged)".to_string(),
                None => c.lost.to_string(),
            },
        ),
        (
            "writes acked / present / superseded / overwritten",
            format!(
                "{} / {} / {} / {}",
                c.acknowledged, c.present, c.superseded, c.overwritten
            ),
        ),
        (
            "isolated region: acked / overwritten / lost",
            format!(
                "{} / {} / {}",
                c.isolated_acknowledged, c.isolated_overwritten, c.isolated_lost
            ),
        ),
        (
            "indeterminate writes (present)",
            format!("{} ({})", c.indeterminate, c.indeterminate_present),
        ),
        ("divergent keys", c.divergent_keys.len().to_string()),
    ]
}

impl Report {
    /// The verdict in one word: `PASSED`, `FAILED`, or `INTERRUPTED` (the drill was stopped, so
    /// what it did not reach is no failure of the system under test).
    pub fn verdict(&self) -> &'static str {
        if self.interrupted_at_ms.is_some() {
            "INTERRUPTED"
        } else if self.passed {
            "PASSED"
        } else {
            "FAILED"
        }
    }

    /// How an expectation is marked: met, not met, or not judged (an interrupted drill's).
    fn mark(&self, expectation: &ExpectationResult) -> Mark {
        if expectation.passed {
            Mark::Met
        } else if self.interrupted_at_ms.is_some() {
            Mark::NotJudged
        } else {
            Mark::NotMet
        }
    }

    /// What an interrupted drill's verdict line adds: when it stopped, of how long.
    fn interrupted_note(&self) -> Option<String> {
        self.interrupted_at_ms.map(|at_ms| {
            format!(
                "stopped after {:.1} s of {:.1} s; the faults it injected were healed, and an expectation not met is one it stopped before judging",
                at_ms as f64 / 1000.0,
                self.durations.total_ms() as f64 / 1000.0
            )
        })
    }

    /// The names of the expectations that were not met, in the report's order.
    pub fn failed_expectations(&self) -> Vec<&str> {
        self.expectations
            .iter()
            .filter(|e| !e.passed)
            .map(|e| e.name.as_str())
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Met,
    NotMet,
    NotJudged,
}

/// The report as one line for CI logs (`drill --quiet`): verdict, RTO, RPO, false failovers
/// and the failed expectations.
pub fn render_line(report: &Report) -> String {
    let seconds =
        |value: Option<u64>| value.map_or_else(|| "never".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0));
    let passed = report.expectations.iter().filter(|e| e.passed).count();
    let failed = report.failed_expectations();
    let mut line = format!(
        "drill {}: {} — RTO (DNS) {}, RTO (99 % ok) {}, lost writes {}, false failovers {}, expectations {passed}/{} met",
        report.scenario,
        match report.verdict() {
            "PASSED" => "PASS",
            "FAILED" => "FAIL",
            other => other,
        },
        seconds(report.measurements.rto_dns_ms),
        seconds(report.measurements.rto_99_ms),
        match report.interrupted_at_ms {
            Some(_) => "not judged".to_string(),
            None => report.check.lost.to_string(),
        },
        report.measurements.false_failovers,
        report.expectations.len()
    );
    if let Some(at_ms) = report.interrupted_at_ms {
        line.push_str(&format!(" (stopped after {:.1} s", at_ms as f64 / 1000.0));
        if !failed.is_empty() {
            line.push_str(&format!("; not judged: {}", failed.join(", ")));
        }
        line.push(')');
    } else if !failed.is_empty() {
        line.push_str(&format!(" (failed: {})", failed.join(", ")));
    }
    line.push('\n');
    line
}

pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "drill {}: {}", report.scenario, report.verdict());
    let _ = writeln!(out, "  {}", report.summary);
    if let Some(note) = report.interrupted_note() {
        let _ = writeln!(out, "  {note}");
    }
    if !report.regions.is_empty() {
        let _ = writeln!(out, "  regions: {} (primary first)", report.regions.join(", "));
    }
    let _ = writeln!(out);
    let mut rows: Vec<(String, String)> = figures(report).into_iter().map(|(l, v)| (l.to_string(), v)).collect();
    if let Some(databases) = &report.databases {
        rows.extend(crate::databases::rows(databases));
    }
    let width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<width$}  {value}");
    }
    let _ = writeln!(out);
    let width = report
        .expectations
        .iter()
        .map(|e| e.name.chars().count())
        .max()
        .unwrap_or(0);
    for e in &report.expectations {
        let mark = match report.mark(e) {
            Mark::Met => "ok  ",
            Mark::NotMet => "FAIL",
            Mark::NotJudged => "n/a ",
        };
        let _ = writeln!(
            out,
            "  {mark} {:<width$}  expected {}; got {}",
            e.name, e.expected, e.actual
        );
    }
    let listed_as = |class: &dyn std::fmt::Debug| match report.interrupted_at_ms {
        Some(_) => format!("{class:?} (not judged: the drill stopped before the stores converged)"),
        None => format!("{class:?}"),
    };
    for lost in report.check.listed.iter().take(10) {
        let _ = writeln!(
            out,
            "  {}: {}={} written via {} at {} ms, found {:?} in {}{}",
            listed_as(&lost.class),
            lost.key,
            lost.value,
            lost.region,
            lost.ack_ms,
            lost.found,
            lost.judged_in,
            if lost.isolated { " (isolated region)" } else { "" }
        );
    }
    out
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CHART_WIDTH: f64 = 960.0;
const CHART_HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 50.0;
const MARGIN_RIGHT: f64 = 60.0;
const MARGIN_TOP: f64 = 20.0;
const MARGIN_BOTTOM: f64 = 40.0;

/// Height of one row of marker labels.
const LABEL_ROW_PX: f64 = 13.0;
/// Width of one character of a marker label (11 px sans-serif), generously.
const LABEL_CHAR_PX: f64 = 7.0;

/// The row of each label (starting at `starts`) so that no two labels of one row overlap.
/// Each label takes the first row where its box meets no box already placed there (any order of
/// starts works: a label moved left to stay inside the plot may start before its predecessor).
pub fn label_rows(starts: &[f64], labels: &[&str]) -> Vec<usize> {
    let mut rows_taken: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut rows = Vec::with_capacity(starts.len());
    for (start, label) in starts.iter().zip(labels) {
        let end = start + label_width_px(label);
        let free = |row: &Vec<(f64, f64)>| row.iter().all(|(s, e)| end <= *s || *start >= *e);
        let row = match rows_taken.iter().position(free) {
            Some(row) => row,
            None => {
                rows_taken.push(Vec::new());
                rows_taken.len() - 1
            }
        };
        rows_taken[row].push((*start, end));
        rows.push(row);
    }
    rows
}

/// The width a marker label is given (a generous estimate of 11 px sans-serif), with a gap.
pub fn label_width_px(label: &str) -> f64 {
    label.chars().count() as f64 * LABEL_CHAR_PX + 4.0
}

/// Where each marker's label starts: just right of its line (`line_xs`), or further left so it
/// ends inside the plot (`right_edge`).
pub fn label_starts(line_xs: &[f64], labels: &[&str], right_edge: f64) -> Vec<f64> {
    line_xs
        .iter()
        .zip(labels)
        .map(|(x, label)| (x + 3.0).min(right_edge - label_width_px(label)).max(0.0))
        .collect()
}

/// The timeline: success rate (left axis, %), replication lag (right axis, s), markers.
pub fn render_svg(report: &Report) -> String {
    let m = &report.measurements;
    let end_ms = m.end_ms.max(1000) as f64;
    let plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |ms: f64| MARGIN_LEFT + ms / end_ms * plot_w;
    let y_rate = |rate: f64| MARGIN_TOP + (1.0 - rate) * plot_h;
    let lag_max = m.lag_max_ms.unwrap_or(0).max(1000) as f64;
    let y_lag = |lag: f64| MARGIN_TOP + (1.0 - lag / lag_max) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" aria-label="drill timeline" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>"##
    );
    // Shade the fault window.
    if let Some(fault) = m.fault_ms {
        let heal = m.heal_ms.unwrap_or(m.end_ms) as f64;
        let _ = write!(
            svg,
            r##"<rect class="fault-window" x="{:.1}" y="{MARGIN_TOP}" width="{:.1}" height="{plot_h}" fill="#fde2e2" opacity="0.6"/>"##,
            x(fault as f64),
            (x(heal) - x(fault as f64)).max(0.0)
        );
    }
    // Axes: 0/50/100% on the left (and the 99 % line the RTO uses, dashed), lag on the right,
    // seconds below.
    let _ = write!(
        svg,
        r##"<line class="threshold" x1="{MARGIN_LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#bbb" stroke-dasharray="3 3"/>"##,
        MARGIN_LEFT + plot_w,
        y_rate(0.99),
        y_rate(0.99)
    );
    for rate in [0.0, 0.5, 1.0] {
        let yy = y_rate(rate);
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 4.0,
            yy + 4.0,
            rate * 100.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="start" fill="#b26b00">lag {:.1} s</text><text x="{:.1}" y="{:.1}" text-anchor="start" fill="#b26b00">0</text>"##,
        MARGIN_LEFT + plot_w + 4.0,
        MARGIN_TOP + 14.0,
        lag_max / 1000.0,
        MARGIN_LEFT + plot_w + 4.0,
        MARGIN_TOP + plot_h + 4.0
    );
    let step_s = ((end_ms / 1000.0 / 10.0).ceil() as u64).max(1);
    let mut tick = 0u64;
    while (tick * 1000) as f64 <= end_ms {
        let xx = x((tick * 1000) as f64);
        let _ = write!(
            svg,
            r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{tick} s</text>"##,
            MARGIN_TOP + plot_h + 14.0
        );
        tick += step_s;
    }
    // Success rate per second.
    let points: Vec<String> = m
        .success
        .iter()
        .map(|bucket| {
            let rate = if bucket.total == 0 {
                0.0
            } else {
                bucket.ok as f64 / bucket.total as f64
            };
            format!("{:.1},{:.1}", x(bucket.second as f64 * 1000.0 + 500.0), y_rate(rate))
        })
        .collect();
    if !points.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline class="success" points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            points.join(" ")
        );
    }
    // Replication lag samples.
    let lag_points: Vec<String> = report
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ReplicationLag { lag_ms: Some(lag) } => {
                Some(format!("{:.1},{:.1}", x(e.at_ms as f64), y_lag(lag as f64)))
            }
            _ => None,
        })
        .collect();
    if !lag_points.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline class="lag" points="{}" fill="none" stroke="#ff9900" stroke-width="1.5" stroke-dasharray="4 2"/>"##,
            lag_points.join(" ")
        );
    }
    // Markers.
    let mut markers: Vec<(u64, &str, String)> = Vec::new();
    if let Some(fault) = m.fault_ms {
        markers.push((fault, "#d62728", "fault".into()));
        if let Some(rto) = m.rto_dns_ms {
            markers.push((fault + rto, "#9467bd", "DNS switched".into()));
        }
    }
    if let Some(heal) = m.heal_ms {
        markers.push((heal, "#2ca02c", "heal".into()));
    }
    let mut previous_generation = None;
    for event in &report.events {
        if let EventKind::ActiveRegion { region, generation } = &event.kind {
            if previous_generation.is_some_and(|g| g != *generation) {
                markers.push((event.at_ms, "#17becf", format!("gen {generation}: {region}")));
            }
            previous_generation = Some(*generation);
        }
    }
    markers.sort_by_key(|(at, _, _)| *at);
    for (at, color, _) in &markers {
        let xx = x(*at as f64);
        let _ = write!(
            svg,
            r##"<line class="marker" x1="{xx:.1}" x2="{xx:.1}" y1="{MARGIN_TOP}" y2="{:.1}" stroke="{color}" stroke-width="1.5"/>"##,
            MARGIN_TOP + plot_h,
        );
    }
    // Labels after every line, each on the first row where it does not run into the previous
    // label of that row, with a white halo so no line crosses its text.
    let line_xs: Vec<f64> = markers.iter().map(|(at, _, _)| x(*at as f64)).collect();
    let labels: Vec<&str> = markers.iter().map(|(_, _, label)| label.as_str()).collect();
    let starts = label_starts(&line_xs, &labels, MARGIN_LEFT + plot_w);
    let rows = label_rows(&starts, &labels);
    for (((_, color, label), row), start) in markers.iter().zip(rows).zip(starts) {
        let _ = write!(
            svg,
            r##"<text class="marker-label" x="{:.1}" y="{:.1}" fill="{color}" stroke="#fff" stroke-width="3" paint-order="stroke">{}</text>"##,
            start,
            MARGIN_TOP + 12.0 + row as f64 * LABEL_ROW_PX,
            escape(label)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{MARGIN_LEFT}" y="{:.1}" fill="#1f77b4">— requests succeeding per second</text><text x="{:.1}" y="{:.1}" fill="#ff9900">- - replication lag</text>"##,
        CHART_HEIGHT - 6.0,
        MARGIN_LEFT + 260.0,
        CHART_HEIGHT - 6.0
    );
    svg.push_str("</svg>");
    svg
}

/// The self-contained HTML page.
pub fn render_html(report: &Report) -> String {
    let verdict = report.verdict();
    let color = match verdict {
        "PASSED" => "#2ca02c",
        "FAILED" => "#d62728",
        _ => "#ff7f0e",
    };
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Switchyard drill {name}: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 10px;text-align:left}}.pass{{color:#2ca02c}}.fail{{color:#d62728;font-weight:bold}}.unjudged{{color:#888}}</style></head><body>
<h1>Drill <code>{name}</code>: <span style="color:{color}">{verdict}</span></h1><p>{summary}</p>"#,
        name = escape(&report.scenario),
        summary = escape(&report.summary),
    );
    if let Some(note) = report.interrupted_note() {
        let _ = write!(html, "<p><strong>Interrupted:</strong> {}.</p>", escape(&note));
    }
    if !report.regions.is_empty() {
        let _ = write!(
            html,
            "<p>Regions: {} (primary first). Failover record TTL {} s. Warm-up {} s, fault {} s, settle {} s.</p>",
            escape(&report.regions.join(", ")),
            report.ttl_s,
            report.durations.warmup_ms / 1000,
            report.durations.fault_ms / 1000,
            report.durations.settle_ms / 1000
        );
    }
    html.push_str(&render_svg(report));
    html.push_str("<h2>Expectations</h2><table><tr><th></th><th>check</th><th>expected</th><th>measured</th></tr>");
    for e in &report.expectations {
        let (class, mark) = match report.mark(e) {
            Mark::Met => ("pass", "✔"),
            Mark::NotMet => ("fail", "✘"),
            Mark::NotJudged => ("unjudged", "–"),
        };
        let _ = write!(
            html,
            r#"<tr class="{class}"><td>{mark}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(&e.name),
            escape(&e.expected),
            escape(&e.actual)
        );
    }
    html.push_str("</table><h2>Figures</h2><table>");
    for (label, value) in figures(report) {
        let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(label), escape(&value));
    }
    html.push_str("</table>");
    if let Some(databases) = &report.databases {
        html.push_str("<h2>Databases</h2><table>");
        for (label, value) in crate::databases::rows(databases) {
            let _ = write!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(&label), escape(&value));
        }
        for db in &databases.databases {
            if !db.lost_listed.is_empty() {
                let _ = write!(
                    html,
                    "<tr><th>{}: acknowledged, missing</th><td>{}</td></tr>",
                    escape(&db.kind),
                    escape(&db.lost_listed.join(", "))
                );
            }
        }
        html.push_str("</table>");
    }
    if !report.check.listed.is_empty() {
        html.push_str("<h2>Writes not present</h2><table><tr><th>class</th><th>key</th><th>value</th><th>written via</th><th>acked at</th><th>found</th><th>in</th><th>isolated</th></tr>");
        for w in &report.check.listed {
            let _ = write!(
                html,
                "<tr><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                w.class,
                escape(&w.key),
                escape(&w.value),
                escape(&w.region),
                w.ack_ms,
                escape(w.found.as_deref().unwrap_or("(missing)")),
                escape(&w.judged_in),
                if w.isolated { "yes" } else { "" }
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Events</h2><table><tr><th>at</th><th>event</th></tr>");
    for event in &report.events {
        let text = match &event.kind {
            EventKind::ReplicationLag { .. } => continue,
            EventKind::FaultStart => "fault phase starts".to_string(),
            EventKind::Heal => "heal phase starts".to_string(),
            EventKind::Step { label, ok } => format!("{label}{}", if *ok { "" } else { " (FAILED)" }),
            EventKind::ActiveRegion { region, generation } => {
                format!("controller: active {region}, generation {generation}")
            }
            EventKind::Note { text } => text.clone(),
            EventKind::Provider { provider, state, .. } => format!("{provider}: {state}"),
            EventKind::Leader {
                member: Some(member),
                generation,
            } => {
                format!("controller {member} acts (generation {generation})")
            }
            EventKind::Leader { member: None, .. } => "no controller acts".to_string(),
            EventKind::LeaderFault { member } => format!("the fault hits the leader, {member}"),
        };
        let _ = write!(
            html,
            "<tr><td>{:.1} s</td><td>{}</td></tr>",
            event.at_ms as f64 / 1000.0,
            escape(&text)
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

#[cfg(test)]
mod tests;
