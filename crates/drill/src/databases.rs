//! The databases' part of a drill (`switchyard lab --databases`), pure: from the controller's
//! audit records, the orders and sessions the shop acknowledged during the drill and what the
//! new primaries hold after convergence, per database:
//!
//! - whether it was promoted, and how long from the controller's detection (the first "down"
//!   verdict of the primary region after the fault) and from the fault itself until its step
//!   finished (the standby writable);
//! - a refusal (`promote_lag_max_ms` exceeded) and the would-be loss it names;
//! - acknowledged orders (sessions) missing on the new primary, Jepsen-style;
//! - errant transactions found at rejoin (servers left fenced);
//! - split-brain writes: orders the old primary's side acknowledged after the standby was
//!   promoted (must be 0 once fenced).
//!
//! [`crate::runtime::databases`] gathers the inputs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scenario::ExpectationResult;

/// Lost orders listed by name in a report; the rest are counted.
pub const LOST_LISTED_MAX: usize = 10;

/// What a scenario expects of the databases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbExpectation {
    /// Nothing (no database in the plan, or a scenario that does not move them).
    #[default]
    None,
    /// The standby is promoted; no split-brain write once fenced; with semi-sync no
    /// acknowledged order lost.
    Promote,
    /// The standby lags beyond `promote_lag_max_ms`: promotion refused with the would-be loss.
    Refuse,
    /// The old primary is cut off from the controller (`db-partition`): the standby is
    /// promoted, and the old primary's side acknowledges nothing later than
    /// [`GUARD_WINDOW_MS_MAX`] after the promotion (its region's guard fenced it).
    Guarded,
}

/// `db-partition`: how long after the runbook's pointer step moved the pointer the cut-off old
/// primary may still acknowledge writes: its guard hears the move within a round
/// (`controller::guard::GUARD_POLL_MS` 500 ms and its read) and fences at once. (Between the
/// promotion and the pointer step the runbook's later steps run: the other database, DNS, the
/// TXT record; writes then are reported, not bounded.)
pub const GUARD_WINDOW_MS_MAX: u64 = 2_500;
/// The runbook step that moves the pointer, as the lab names it.
pub const POINTER_STEP: &str = "pointer";

/// One write the shop acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    /// The order's reference (`k-KEY`) or the session id.
    pub key: String,
    /// The region whose database took it.
    pub region: Option<String>,
    /// Wall clock (ms since the epoch) of the acknowledgement.
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseFigures {
    /// `mariadb` or `redis`.
    pub kind: String,
    /// The runbook step that moves it.
    pub step: String,
    pub promoted: bool,
    /// The first step outcome after the fault, as the audit log says it.
    pub detail: Option<String>,
    pub detection_to_writable_ms: Option<u64>,
    pub fault_to_writable_ms: Option<u64>,
    /// The refusal, when the step refused.
    pub refused: Option<String>,
    /// Transactions the refusal says promoting would lose.
    pub would_be_lost: Option<u64>,
    pub acknowledged: u64,
    pub acknowledged_lost: u64,
    pub lost_listed: Vec<String>,
    pub errant_at_rejoin: u64,
    pub split_brain_writes: u64,
    /// How long after the promotion the last of those was acknowledged (none: no such write).
    #[serde(default)]
    pub split_brain_window_ms: Option<u64>,
    /// How long after the promotion the runbook's pointer step finished.
    #[serde(default)]
    pub pointer_moved_ms: Option<u64>,
    /// How long after the pointer moved the old side's last write was acknowledged (none: none
    /// after it).
    #[serde(default)]
    pub split_brain_after_pointer_ms: Option<u64>,
    /// Where the acknowledged writes were looked for (the primary after convergence).
    pub checked_on: Option<String>,
    /// Why they could not be checked.
    pub check_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseReport {
    pub expectation: DbExpectation,
    pub semi_sync: bool,
    pub promote_lag_max_ms: u64,
    pub databases: Vec<DatabaseFigures>,
}

/// The step records (`kind = "step"`) of `step` at or after `from_ms`, oldest first.
fn step_records<'a>(audit: &'a [Value], step: &str, from_ms: u64) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["kind"] == "step" && r["step"] == step && r["at_ms"].as_u64().unwrap_or(0) >= from_ms)
        .collect()
}

/// The number before `marker` in `text` (`still lacks 12 transaction(s)` → 12).
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

/// Sum of the numbers before every `marker` in `text`.
fn numbers_before(text: &str, marker: &str) -> u64 {
    text.match_indices(marker)
        .filter_map(|(at, _)| text[..at].split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Figures of one database from the audit records and the acknowledged writes.
/// `present` is what the primary holds after convergence (`Err`: why it could not be read).
#[allow(clippy::too_many_arguments)]
pub fn figures(
    kind: &str,
    step: &str,
    audit: &[Value],
    primary_region: &str,
    fault_ms: u64,
    acked: &[Acked],
    present: Result<(String, std::collections::BTreeSet<String>), String>,
) -> DatabaseFigures {
    let mut out = DatabaseFigures {
        kind: kind.to_string(),
        step: step.to_string(),
        acknowledged: acked.len() as u64,
        ..DatabaseFigures::default()
    };
    let detected = audit
        .iter()
        .filter(|r| {
            r["kind"] == "verdict"
                && r["region"] == primary_region
                && r["verdict"] == "down"
                && r["at_ms"].as_u64().unwrap_or(0) >= fault_ms
        })
        .filter_map(|r| r["at_ms"].as_u64())
        .next();
    let records = step_records(audit, step, fault_ms);
    let first = records
        .iter()
        .find(|r| r["outcome"] == "ok" || r["outcome"] == "refused");
    let mut promoted_at = None;
    if let Some(record) = first {
        let detail = record["detail"].as_str().unwrap_or_default().to_string();
        let at = record["at_ms"].as_u64().unwrap_or(0);
        if record["outcome"] == "ok" {
            out.promoted = detail.contains("promoted ");
            if out.promoted {
                promoted_at = Some(at);
                out.fault_to_writable_ms = Some(at.saturating_sub(fault_ms));
                out.detection_to_writable_ms = detected.map(|d| at.saturating_sub(d));
            }
        } else {
            out.would_be_lost = number_before(&detail, "transaction(s)");
            out.refused = Some(detail.clone());
        }
        out.detail = Some(detail);
    }
    out.errant_at_rejoin = records
        .iter()
        .filter_map(|r| r["detail"].as_str())
        .map(|d| numbers_before(d, "errant transaction(s)"))
        .sum();
    if let Some(promoted_at) = promoted_at {
        // While the standby is the primary: until a later run of the step moves the primary
        // back into the old region (a failback), which makes its writes legitimate again.
        let back = format!(" in {primary_region} ");
        let until = records
            .iter()
            .filter(|r| r["outcome"] == "ok" && r["at_ms"].as_u64().unwrap_or(0) > promoted_at)
            .filter(|r| {
                r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("promoted ") && d.contains(&back))
            })
            .filter_map(|r| r["at_ms"].as_u64())
            .next()
            .unwrap_or(u64::MAX);
        let split: Vec<&Acked> = acked
            .iter()
            .filter(|a| a.region.as_deref() == Some(primary_region) && a.at_ms > promoted_at && a.at_ms < until)
            .collect();
        out.split_brain_writes = split.len() as u64;
        out.split_brain_window_ms = split.iter().map(|a| a.at_ms - promoted_at).max();
        let pointer_at = step_records(audit, POINTER_STEP, promoted_at)
            .iter()
            .find(|r| r["outcome"] == "ok")
            .and_then(|r| r["at_ms"].as_u64());
        if let Some(pointer_at) = pointer_at {
            out.pointer_moved_ms = Some(pointer_at.saturating_sub(promoted_at));
            out.split_brain_after_pointer_ms = split
                .iter()
                .filter(|a| a.at_ms > pointer_at)
                .map(|a| a.at_ms - pointer_at)
                .max();
        }
    }
    match present {
        Ok((server, present)) => {
            let lost: Vec<&Acked> = acked.iter().filter(|a| !present.contains(&a.key)).collect();
            out.acknowledged_lost = lost.len() as u64;
            out.lost_listed = lost.iter().take(LOST_LISTED_MAX).map(|a| a.key.clone()).collect();
            out.checked_on = Some(server);
        }
        Err(error) => out.check_error = Some(error),
    }
    out
}

/// "promoted": the standby promoted by its step after the fault.
fn promoted(db: &DatabaseFigures) -> ExpectationResult {
    ExpectationResult {
        name: format!("{} promoted", db.kind),
        expected: "the standby promoted by its step".into(),
        actual: db
            .detail
            .clone()
            .unwrap_or_else(|| "no step outcome after the fault".into()),
        passed: db.promoted,
    }
}

/// The expectations the report adds for the databases.
pub fn evaluate(report: &DatabaseReport) -> Vec<ExpectationResult> {
    let mut results = Vec::new();
    for db in &report.databases {
        match report.expectation {
            DbExpectation::None => {}
            DbExpectation::Promote => {
                results.push(promoted(db));
                results.push(ExpectationResult {
                    name: format!("{} split-brain writes once fenced", db.kind),
                    expected: "0".into(),
                    actual: db.split_brain_writes.to_string(),
                    passed: db.split_brain_writes == 0,
                });
                // MariaDB with semi-sync: an acknowledged order is on a replica. Redis (and
                // asynchronous MariaDB) may lose the last writes: reported, not bounded.
                if report.semi_sync && db.kind == "mariadb" {
                    results.push(ExpectationResult {
                        name: "mariadb acknowledged orders lost (semi-sync)".into(),
                        expected: "0".into(),
                        actual: match &db.check_error {
                            Some(error) => format!("not checked: {error}"),
                            None => format!("{} of {}", db.acknowledged_lost, db.acknowledged),
                        },
                        passed: db.check_error.is_none() && db.acknowledged_lost == 0,
                    });
                }
            }
            DbExpectation::Refuse if db.kind == "mariadb" => {
                results.push(ExpectationResult {
                    name: "mariadb promotion refused beyond promote_lag_max_ms".into(),
                    expected: format!(
                        "refused, naming the transactions a promotion would lose (promote_lag_max_ms = {})",
                        report.promote_lag_max_ms
                    ),
                    actual: match (&db.refused, db.would_be_lost) {
                        (Some(_), Some(n)) => format!("refused: {n} transaction(s) would be lost"),
                        (Some(why), None) => format!("refused: {why}"),
                        (None, _) if db.promoted => "promoted".into(),
                        (None, _) => db.detail.clone().unwrap_or_else(|| "no step outcome".into()),
                    },
                    passed: db.refused.is_some() && db.would_be_lost.is_some_and(|n| n > 0),
                });
            }
            DbExpectation::Refuse => {}
            DbExpectation::Guarded => {
                results.push(promoted(db));
                let seconds = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
                results.push(ExpectationResult {
                    name: format!("{} writes on the cut-off old primary stopped by its guard", db.kind),
                    expected: format!(
                        "none acknowledged later than {} after the pointer moved",
                        seconds(GUARD_WINDOW_MS_MAX)
                    ),
                    actual: match (db.pointer_moved_ms, db.split_brain_after_pointer_ms) {
                        (None, _) => "the pointer step never finished after the promotion".into(),
                        (Some(_), None) => format!(
                            "none after the pointer moved ({} after the promotion, {} between)",
                            db.split_brain_writes,
                            db.split_brain_window_ms.map_or_else(|| "none".into(), seconds)
                        ),
                        (Some(_), Some(ms)) => format!("the last {} after the pointer moved", seconds(ms)),
                    },
                    passed: db.promoted
                        && db.pointer_moved_ms.is_some()
                        && db
                            .split_brain_after_pointer_ms
                            .is_none_or(|ms| ms <= GUARD_WINDOW_MS_MAX),
                });
            }
        }
    }
    results
}

/// Rows for the text report.
pub fn rows(report: &DatabaseReport) -> Vec<(String, String)> {
    let seconds = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0));
    let mut rows = Vec::new();
    for db in &report.databases {
        let k = &db.kind;
        rows.push((
            format!("{k}: detection → writable standby"),
            seconds(db.detection_to_writable_ms),
        ));
        rows.push((
            format!("{k}: fault → writable standby"),
            seconds(db.fault_to_writable_ms),
        ));
        if let Some(n) = db.would_be_lost {
            rows.push((
                format!("{k}: promotion refused, would lose"),
                format!("{n} transaction(s)"),
            ));
        }
        rows.push((
            format!("{k}: acknowledged lost"),
            match &db.check_error {
                Some(error) => format!("not checked: {error}"),
                None => format!("{} of {}", db.acknowledged_lost, db.acknowledged),
            },
        ));
        rows.push((
            format!("{k}: errant transactions at rejoin"),
            db.errant_at_rejoin.to_string(),
        ));
        rows.push((
            format!("{k}: split-brain writes once fenced"),
            db.split_brain_writes.to_string(),
        ));
        if let Some(ms) = db.split_brain_window_ms {
            rows.push((
                format!("{k}: old side's last write after the promotion"),
                seconds(Some(ms)),
            ));
        }
        if db.pointer_moved_ms.is_some() && report.expectation == DbExpectation::Guarded {
            rows.push((
                format!("{k}: old side's last write after the pointer moved"),
                seconds(db.split_brain_after_pointer_ms),
            ));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `orders-db` step's figures for a MariaDB whose primary was in `us`, faulted at 1 s.
    fn orders_db(
        audit: &[Value],
        writes: &[Acked],
        present: Result<(String, std::collections::BTreeSet<String>), String>,
    ) -> DatabaseFigures {
        figures("mariadb", "orders-db", audit, "us", 1_000, writes, present)
    }

    fn audit() -> Vec<Value> {
        vec![
            json!({"kind": "verdict", "region": "us", "verdict": "down", "at_ms": 900}),
            json!({"kind": "verdict", "region": "us", "verdict": "down", "at_ms": 2_000}),
            json!({"kind": "step", "step": "orders-db", "outcome": "ok", "at_ms": 500, "detail": "promoted a in us"}),
            json!({"kind": "step", "step": "orders-db", "outcome": "ok", "at_ms": 3_500,
                   "detail": "promoted 127.0.0.1:2 in eu at GTID position 0-1-9; b left fenced and detached, not rejoined: 3 errant transaction(s)"}),
        ]
    }

    fn acked(key: &str, region: &str, at_ms: u64) -> Acked {
        Acked {
            key: key.into(),
            region: Some(region.into()),
            at_ms,
        }
    }

    #[test]
    fn promotion_times_count_from_detection_and_fault_and_losses_from_the_new_primary() {
        let writes = vec![
            acked("k-1", "us", 1_500),
            acked("k-2", "us", 1_900),
            acked("k-3", "eu", 4_000),
        ];
        let present = ["k-1", "k-3"].iter().map(|k| k.to_string()).collect();
        let f = orders_db(&audit(), &writes, Ok(("eu:1".into(), present)));
        assert!(f.promoted);
        assert_eq!(f.fault_to_writable_ms, Some(2_500));
        assert_eq!(f.detection_to_writable_ms, Some(1_500));
        assert_eq!(f.acknowledged, 3);
        assert_eq!(f.acknowledged_lost, 1);
        assert_eq!(f.lost_listed, ["k-2"]);
        assert_eq!(f.errant_at_rejoin, 3);
        assert_eq!(f.split_brain_writes, 0);
        let report = DatabaseReport {
            expectation: DbExpectation::Promote,
            semi_sync: true,
            promote_lag_max_ms: 1_000,
            databases: vec![f],
        };
        let results = evaluate(&report);
        assert!(results.iter().any(|r| r.name == "mariadb promoted" && r.passed));
        let lost = results
            .iter()
            .find(|r| r.name.contains("acknowledged orders lost"))
            .expect("semi-sync bound");
        assert!(!lost.passed, "{lost:?}");
    }

    #[test]
    fn a_write_acknowledged_by_the_old_side_after_the_promotion_is_a_split_brain_write() {
        let writes = vec![acked("k-9", "us", 3_600)];
        let present = ["k-9"].iter().map(|k| k.to_string()).collect();
        let f = orders_db(&audit(), &writes, Ok(("eu:1".into(), present)));
        assert_eq!(f.split_brain_writes, 1);
    }

    #[test]
    fn db_partition_passes_when_the_old_side_stops_writing_within_the_guard_window() {
        let promoted = json!({"kind": "step", "step": "orders-db", "outcome": "ok", "at_ms": 5_000,
            "detail": "promoted 127.0.0.1:2 in eu; 127.0.0.1:1 unreachable"});
        // The pointer moves 3 s after the promotion (the runbook's later steps).
        let pointer = json!({"kind": "step", "step": POINTER_STEP, "outcome": "ok", "at_ms": 8_000});
        let write = |at_ms: u64| Acked {
            key: format!("k-{at_ms}"),
            region: Some("us".into()),
            at_ms,
        };
        let report = |audit: &[Value], writes: &[Acked]| DatabaseReport {
            expectation: DbExpectation::Guarded,
            databases: vec![orders_db(audit, writes, Err("not read".into()))],
            ..DatabaseReport::default()
        };
        let audit = [promoted.clone(), pointer];
        let within = report(
            &audit,
            &[write(4_000), write(5_500), write(8_000 + GUARD_WINDOW_MS_MAX)],
        );
        let db = &within.databases[0];
        assert_eq!(db.split_brain_writes, 2);
        assert_eq!(db.split_brain_window_ms, Some(3_000 + GUARD_WINDOW_MS_MAX));
        assert_eq!(db.pointer_moved_ms, Some(3_000));
        assert_eq!(db.split_brain_after_pointer_ms, Some(GUARD_WINDOW_MS_MAX));
        let results = evaluate(&within);
        assert!(results.iter().all(|r| r.passed), "{results:?}");
        // Before the pointer moved only: none after it.
        let early = report(&audit, &[write(5_500), write(7_900)]);
        assert!(evaluate(&early).iter().all(|r| r.passed));
        assert_eq!(early.databases[0].split_brain_after_pointer_ms, None);
        // No guard: the old side went on writing.
        let unguarded = report(&audit, &[write(5_500), write(8_000 + GUARD_WINDOW_MS_MAX + 1)]);
        let results = evaluate(&unguarded);
        let stopped = results
            .iter()
            .find(|r| r.name.contains("stopped by its guard"))
            .expect("the guard's row");
        assert!(
            !stopped.passed && stopped.actual.contains("after the pointer moved"),
            "{stopped:?}"
        );
        assert!(
            rows(&unguarded)
                .iter()
                .any(|(name, _)| name.contains("last write after the pointer moved"))
        );
        // The pointer never moved: not passed.
        let stuck = report(std::slice::from_ref(&promoted), &[]);
        assert!(!evaluate(&stuck).iter().all(|r| r.passed));
        // Nothing promoted: not passed either way.
        let none = DatabaseReport {
            expectation: DbExpectation::Guarded,
            databases: vec![orders_db(&[], &[], Err("not read".into()))],
            ..DatabaseReport::default()
        };
        assert!(evaluate(&none).iter().all(|r| !r.passed));
    }

    #[test]
    fn writes_after_a_failback_into_the_old_region_are_not_split_brain() {
        let mut audit = audit();
        audit.push(json!({"kind": "step", "step": "orders-db", "outcome": "ok", "at_ms": 9_000,
            "detail": "fenced old primary 127.0.0.1:2 (read_only); promoted 127.0.0.1:1 in us at GTID position 0-2-40"}));
        let writes = vec![acked("k-8", "us", 3_600), acked("k-9", "us", 9_500)];
        let present = ["k-8", "k-9"].iter().map(|k| k.to_string()).collect();
        let f = orders_db(&audit, &writes, Ok(("us:1".into(), present)));
        assert_eq!(
            f.split_brain_writes, 1,
            "only the write between the promotion and the failback"
        );
    }

    #[test]
    fn a_refusal_reports_the_would_be_loss() {
        let audit = vec![
            json!({"kind": "step", "step": "orders-db", "outcome": "refused", "at_ms": 5_000,
            "detail": "127.0.0.1:2 still lacks 42 transaction(s) after waiting promote_lag_max_ms = 1000: 0-1-10..51"}),
        ];
        let f = orders_db(&audit, &[], Err("no primary".into()));
        assert!(!f.promoted);
        assert_eq!(f.would_be_lost, Some(42));
        assert_eq!(f.check_error.as_deref(), Some("no primary"));
        let report = DatabaseReport {
            expectation: DbExpectation::Refuse,
            semi_sync: false,
            promote_lag_max_ms: 1_000,
            databases: vec![f],
        };
        let results = evaluate(&report);
        assert_eq!(results.len(), 1);
        assert!(results[0].passed, "{:?}", results[0]);
        assert!(results[0].actual.contains("42 transaction(s)"));
    }
}
