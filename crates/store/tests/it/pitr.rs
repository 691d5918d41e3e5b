//! Point-in-time recovery in process, with a clock the tests move: UpdateContinuousBackups and
//! DescribeContinuousBackups, restores to times between writes (exact items), DynamoDB's
//! errors, the undo log trimmed by its window and its byte bound, and a restore a crash
//! interrupted done again at the next start.

use std::sync::Arc;
use std::time::Duration;

use dynamo_protocol::{ApiError, ErrorKind};
use serde_json::{Value, json};
use store::catalog::RestoreSummary;
use store::engine::PitrLimits;

use crate::support::{Calls, ClockedStore};

const DAY_MS: u64 = 24 * 3600 * 1000;
/// Bound on waiting for a background restore (never a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

/// This module's helpers on a [`ClockedStore`].
struct Pitr;

type Harness = ClockedStore<Pitr>;

impl Harness {
    async fn create(&self, name: &str) {
        self.ok(
            "CreateTable",
            json!({"TableName": name, "BillingMode": "PAY_PER_REQUEST",
                   "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                   "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                            {"AttributeName": "color", "AttributeType": "S"}],
                   "GlobalSecondaryIndexes": [{"IndexName": "by-color",
                       "KeySchema": [{"AttributeName": "color", "KeyType": "HASH"}],
                       "Projection": {"ProjectionType": "ALL"}}]}),
        )
        .await;
    }

    async fn enable(&self, name: &str, days: Option<u32>) -> Value {
        let mut specification = json!({"PointInTimeRecoveryEnabled": true});
        if let Some(days) = days {
            specification["RecoveryPeriodInDays"] = json!(days);
        }
        self.ok(
            "UpdateContinuousBackups",
            json!({"TableName": name, "PointInTimeRecoverySpecification": specification}),
        )
        .await
    }

    async fn put(&self, table: &str, pk: &str, n: i64) {
        self.ok(
            "PutItem",
            json!({"TableName": table, "Item": {"pk": {"S": pk}, "n": {"N": n.to_string()}, "color": {"S": "red"}}}),
        )
        .await;
    }

    async fn delete(&self, table: &str, pk: &str) {
        self.ok("DeleteItem", json!({"TableName": table, "Key": {"pk": {"S": pk}}}))
            .await;
    }

    async fn pitr(&self, table: &str) -> Value {
        self.ok("DescribeContinuousBackups", json!({"TableName": table})).await["ContinuousBackupsDescription"]
            ["PointInTimeRecoveryDescription"]
            .clone()
    }

    async fn restore_at(&self, source: &str, target: &str, at_ms: u64) -> Result<Value, ApiError> {
        self.call(
            "RestoreTableToPointInTime",
            json!({"SourceTableName": source, "TargetTableName": target, "RestoreDateTime": at_ms as f64 / 1000.0}),
        )
        .await
    }

    async fn wait_active(&self, table: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let described = self.ok("DescribeTable", json!({"TableName": table})).await;
            if described["Table"]["TableStatus"] == "ACTIVE" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} not ACTIVE within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The table's items as `pk → n`, sorted.
    async fn items(&self, table: &str) -> Vec<(String, i64)> {
        let scanned = self.ok("Scan", json!({"TableName": table})).await;
        let mut out: Vec<(String, i64)> = scanned["Items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|item| {
                (
                    item["pk"]["S"].as_str().expect("pk").to_string(),
                    item["n"]["N"].as_str().expect("n").parse().expect("number"),
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn pairs(items: &[(&str, i64)]) -> Vec<(String, i64)> {
    items.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[tokio::test]
async fn restores_give_the_exact_items_of_each_point_in_time() {
    let h = Harness::new();
    h.create("orders").await;
    h.put("orders", "before", 0).await;
    let described = h.pitr("orders").await;
    assert_eq!(described, json!({"PointInTimeRecoveryStatus": "DISABLED"}));

    let enabled = h.enable("orders", None).await;
    let t0 = h.now();
    let description = &enabled["ContinuousBackupsDescription"];
    assert_eq!(description["ContinuousBackupsStatus"], "ENABLED");
    assert_eq!(
        description["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
        "ENABLED"
    );
    assert_eq!(
        description["PointInTimeRecoveryDescription"]["RecoveryPeriodInDays"],
        35
    );
    assert_eq!(
        description["PointInTimeRecoveryDescription"]["EarliestRestorableDateTime"],
        json!(t0 as f64 / 1000.0)
    );

    h.advance(10_000);
    h.put("orders", "a", 1).await;
    h.put("orders", "b", 1).await;
    let t1 = h.now();
    h.advance(10_000);
    h.put("orders", "a", 2).await;
    h.delete("orders", "b").await;
    h.put("orders", "c", 3).await;
    h.delete("orders", "before").await;
    let t2 = h.now();
    h.advance(10_000);
    let described = h.pitr("orders").await;
    assert_eq!(
        described["LatestRestorableDateTime"],
        json!((h.now() - 1000) as f64 / 1000.0)
    );

    h.restore_at("orders", "at-t0", t0 + 5_000)
        .await
        .expect("restore to t0");
    let restored = h
        .restore_at("orders", "at-t1", t1 + 5_000)
        .await
        .expect("restore to t1");
    let table = &restored["TableDescription"];
    assert_eq!(table["TableStatus"], "CREATING");
    assert_eq!(table["RestoreSummary"]["RestoreInProgress"], true);
    assert_eq!(
        table["RestoreSummary"]["RestoreDateTime"],
        json!((t1 + 5_000) as f64 / 1000.0)
    );
    assert!(table["RestoreSummary"].get("SourceBackupArn").is_none(), "{table}");
    assert_eq!(
        table["RestoreSummary"]["SourceTableArn"],
        "arn:aws:dynamodb:us-east-1:000000000000:table/orders"
    );
    h.ok(
        "RestoreTableToPointInTime",
        json!({"SourceTableName": "orders", "TargetTableName": "latest", "UseLatestRestorableTime": true}),
    )
    .await;
    h.restore_at("orders", "at-t2", t2).await.expect("restore to t2");
    for table in ["at-t0", "at-t1", "latest", "at-t2"] {
        h.wait_active(table).await;
    }
    assert_eq!(h.items("at-t0").await, pairs(&[("before", 0)]));
    assert_eq!(h.items("at-t1").await, pairs(&[("a", 1), ("b", 1), ("before", 0)]));
    assert_eq!(h.items("latest").await, pairs(&[("a", 2), ("c", 3)]));
    assert_eq!(h.items("at-t2").await, pairs(&[("a", 2), ("c", 3)]));
    // The restored table has the source's index, filled.
    let by_color = h
        .ok(
            "Query",
            json!({"TableName": "at-t1", "IndexName": "by-color",
                   "KeyConditionExpression": "color = :c", "ExpressionAttributeValues": {":c": {"S": "red"}}}),
        )
        .await;
    assert_eq!(by_color["Count"], 3);
    // ...and no PITR of its own.
    assert_eq!(h.pitr("at-t1").await["PointInTimeRecoveryStatus"], "DISABLED");
    // The source is untouched.
    assert_eq!(h.items("orders").await, pairs(&[("a", 2), ("c", 3)]));
}

#[tokio::test]
async fn dynamodb_errors() {
    let h = Harness::new();
    h.create("plain").await;
    h.create("kept").await;
    let error = h
        .restore_at("plain", "copy", h.now() - 2000)
        .await
        .expect_err("no PITR");
    assert_eq!(error.kind, ErrorKind::PointInTimeRecoveryUnavailable);
    assert_eq!(error.message, "Point in time recovery is not enabled for table 'plain'");
    let error = h
        .restore_at("missing", "copy", h.now() - 2000)
        .await
        .expect_err("missing");
    assert_eq!(error.kind, ErrorKind::TableNotFound);

    h.enable("kept", Some(1)).await;
    let enabled_at = h.now();
    // Just enabled: the latest restorable time (a second behind) has not reached the earliest,
    // and the answer says so rather than naming a RestoreDateTime nobody sent.
    let latest = json!({"SourceTableName": "kept", "TargetTableName": "copy", "UseLatestRestorableTime": true});
    let error = h.err("RestoreTableToPointInTime", latest).await;
    assert_eq!(error.kind, ErrorKind::InvalidRestoreTime);
    assert!(
        error
            .message
            .contains("no point in time of table 'kept' is restorable yet")
            && !error.message.contains("RestoreDateTime ("),
        "{}",
        error.message
    );
    h.advance(60_000);
    let error = h.restore_at("kept", "plain", h.now() - 2000).await.expect_err("exists");
    assert_eq!(error.kind, ErrorKind::TableAlreadyExists);
    let error = h
        .restore_at("kept", "copy", enabled_at - 1)
        .await
        .expect_err("too early");
    assert_eq!(error.kind, ErrorKind::InvalidRestoreTime);
    let error = h.restore_at("kept", "copy", h.now()).await.expect_err("too late");
    assert_eq!(error.kind, ErrorKind::InvalidRestoreTime);
    assert!(error.message.contains("LatestRestorableDateTime"), "{}", error.message);
    let error = h
        .err(
            "RestoreTableToPointInTime",
            json!({"SourceTableName": "kept", "TargetTableName": "copy"}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation);
    let error = h
        .err(
            "RestoreTableToPointInTime",
            json!({"SourceTableName": "kept", "SourceTableArn": "arn:aws:dynamodb:us-east-1:000000000000:table/kept",
                   "TargetTableName": "copy", "UseLatestRestorableTime": true}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation);
    // By ARN works.
    h.ok(
        "RestoreTableToPointInTime",
        json!({"SourceTableArn": "arn:aws:dynamodb:us-east-1:000000000000:table/kept",
               "TargetTableName": "by-arn", "UseLatestRestorableTime": true}),
    )
    .await;
    h.wait_active("by-arn").await;
    for days in [0, 36] {
        let error = h
            .err(
                "UpdateContinuousBackups",
                json!({"TableName": "kept", "PointInTimeRecoverySpecification":
                       {"PointInTimeRecoveryEnabled": true, "RecoveryPeriodInDays": days}}),
            )
            .await;
        assert_eq!(error.kind, ErrorKind::Validation);
        assert!(error.message.contains("recoveryPeriodInDays"), "{}", error.message);
    }
    assert_eq!(h.pitr("kept").await["RecoveryPeriodInDays"], 1);
    let error = h
        .err(
            "UpdateContinuousBackups",
            json!({"TableName": "missing", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": true}}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::TableNotFound);
}

#[tokio::test]
async fn the_undo_log_is_trimmed_by_window_bytes_and_disabling() {
    let h = Harness::new();
    h.create("trimmed").await;
    h.enable("trimmed", Some(1)).await;
    h.advance(1000);
    h.put("trimmed", "old", 1).await;
    assert_eq!(h.engine.trim_pitr_once().await.expect("sweep"), 0, "nothing due yet");
    // Two days later the change is out of the one-day window.
    h.advance(2 * DAY_MS);
    h.put("trimmed", "new", 2).await;
    assert_eq!(h.engine.trim_pitr_once().await.expect("sweep"), 1);
    let described = h.pitr("trimmed").await;
    assert_eq!(
        described["EarliestRestorableDateTime"],
        json!((h.now() - DAY_MS) as f64 / 1000.0)
    );

    // Over the byte bound, the oldest entries go and the earliest time moves past them.
    h.engine.set_pitr_limits(PitrLimits {
        undo_bytes_max: 300,
        restorable_lag_ms: 1000,
    });
    let mut times = Vec::new();
    for n in 0..20 {
        h.advance(1000);
        h.put("trimmed", &format!("k{n}"), n).await;
        times.push(h.now());
    }
    assert!(h.engine.trim_pitr_once().await.expect("sweep") > 0);
    let earliest = (h.pitr("trimmed").await["EarliestRestorableDateTime"]
        .as_f64()
        .expect("time")
        * 1000.0)
        .round() as u64;
    assert!(earliest > times[0] && earliest <= times[19], "{earliest} in {times:?}");
    h.advance(2000);
    let error = h
        .restore_at("trimmed", "too-early", times[0])
        .await
        .expect_err("trimmed");
    assert_eq!(error.kind, ErrorKind::InvalidRestoreTime);
    // Still exact from the earliest restorable time on.
    h.restore_at("trimmed", "at-earliest", earliest)
        .await
        .expect("restorable");
    h.wait_active("at-earliest").await;
    let n = h.items("at-earliest").await.len();
    let expected = 2 + times.iter().filter(|t| **t <= earliest).count();
    assert_eq!(n, expected);

    // Disabling forgets the log.
    h.ok(
        "UpdateContinuousBackups",
        json!({"TableName": "trimmed", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": false}}),
    )
    .await;
    assert!(h.engine.trim_pitr_once().await.expect("sweep") > 0);
    assert_eq!(h.engine.trim_pitr_once().await.expect("sweep"), 0);
    assert_eq!(
        h.pitr("trimmed").await,
        json!({"PointInTimeRecoveryStatus": "DISABLED"})
    );
}

#[tokio::test]
async fn an_interrupted_point_in_time_restore_is_done_again_at_the_next_start() {
    let h = Harness::new();
    h.create("src").await;
    h.enable("src", None).await;
    h.advance(1000);
    h.put("src", "a", 1).await;
    h.put("src", "b", 1).await;
    let at = h.now();
    h.advance(1000);
    h.put("src", "a", 2).await;
    h.delete("src", "b").await;
    let source = h.engine.table("src").expect("source");
    for (name, source_id) in [("redo", source.id), ("orphan", source.id + 1000)] {
        let source = Arc::clone(&source);
        let name = name.to_string();
        h.engine
            .write_exclusive(move |context| {
                let mut meta = (*source).clone();
                meta.id = context.next_table_id()?;
                meta.name = name;
                meta.pitr = None;
                meta.restore = Some(RestoreSummary {
                    source_backup_arn: String::new(),
                    source_table_arn: source.arn("us-east-1"),
                    restore_date_time_seconds: at as f64 / 1000.0,
                    in_progress: true,
                    point_in_time: Some((source_id, at)),
                });
                context.put_table(meta)
            })
            .await
            .expect("catalog entry");
    }
    Arc::clone(h.store.backups()).recover(&h.store).expect("recover");
    h.wait_active("redo").await;
    assert_eq!(h.items("redo").await, pairs(&[("a", 1), ("b", 1)]));
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.call("DescribeTable", json!({"TableName": "orphan"})).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "orphan not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn after_the_clock_steps_back_the_latest_restorable_time_keeps_the_changes_made_before() {
    let h = Harness::new();
    h.create("orders").await;
    h.enable("orders", None).await;
    h.advance(10_000);
    h.put("orders", "a", 1).await;
    let t1 = h.now();
    h.advance(10_000);
    h.put("orders", "a", 2).await;
    h.put("orders", "b", 2).await;
    let stepped_from = h.now();
    h.advance(10_000);
    // The clock steps back an hour (an NTP correction after it ran ahead): changes from now on
    // are stamped with the time the undo log had reached.
    h.clock
        .0
        .store(stepped_from - 3_600_000, std::sync::atomic::Ordering::SeqCst);
    h.put("orders", "a", 3).await;
    h.put("orders", "c", 3).await;
    h.advance(5_000);
    // The latest restorable time is measured from the undo log's present, not from the clock
    // alone (which would put it an hour before the last changes, before PITR was enabled).
    let described = h.pitr("orders").await;
    assert_eq!(
        described["LatestRestorableDateTime"],
        json!((stepped_from - 1000) as f64 / 1000.0),
        "{described}"
    );
    h.ok(
        "RestoreTableToPointInTime",
        json!({"SourceTableName": "orders", "TargetTableName": "latest", "UseLatestRestorableTime": true}),
    )
    .await;
    h.restore_at("orders", "at-t1", t1).await.expect("restore to t1");
    h.wait_active("latest").await;
    h.wait_active("at-t1").await;
    // Everything up to a second before the log's present: the changes before the step.
    assert_eq!(h.items("latest").await, pairs(&[("a", 1)]));
    assert_eq!(h.items("at-t1").await, pairs(&[("a", 1)]));
    // Once the clock has passed that present (plus the lag), the changes since are restorable.
    h.clock
        .0
        .store(stepped_from + 1_000, std::sync::atomic::Ordering::SeqCst);
    h.ok(
        "RestoreTableToPointInTime",
        json!({"SourceTableName": "orders", "TargetTableName": "caught-up", "UseLatestRestorableTime": true}),
    )
    .await;
    h.wait_active("caught-up").await;
    assert_eq!(h.items("caught-up").await, pairs(&[("a", 3), ("b", 2), ("c", 3)]));
}

#[tokio::test]
async fn a_step_of_the_wall_clock_is_seen_and_kept_for_health() {
    let h = Harness::new();
    assert_eq!(h.engine.observe_clock(), None, "the first look");
    assert_eq!(h.engine.clock_status().steps_total, 0);
    h.advance(3_600_000);
    let step = h.engine.observe_clock().expect("an hour forward in no time is a step");
    assert!((3_590_000..=3_600_000).contains(&step), "{step}");
    h.clock
        .0
        .store(h.now() - 7_200_000, std::sync::atomic::Ordering::SeqCst);
    let back = h.engine.observe_clock().expect("two hours back");
    assert!(back <= -7_200_000, "{back}");
    let status = h.engine.clock_status();
    assert_eq!(status.steps_total, 2);
    assert_eq!(status.last_step_ms, Some(back));
    assert_eq!(status.last_step_at_unix_ms, Some(h.now()));
}
