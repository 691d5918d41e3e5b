//! The online index backfill across an index's lifecycle and its neighbours: an index deleted
//! and created again mid-fill under writes, TTL expiry deleting items mid-fill, and a backup
//! taken mid-fill. Each ends compared with a table made with the index and given the same items.

use std::time::Duration;

use serde_json::{Value, json};
use store::engine::{BackfillStep, INDEX_BACKFILL_ITEMS_PER_JOB};

use crate::index_backfill::{create_by_shop_with, scan_all, step};
use crate::support::{Calls, Opened, open};

const ITEMS: usize = INDEX_BACKFILL_ITEMS_PER_JOB * 5 / 2;

async fn make_table(h: &Opened, name: &str, with_index: Option<Value>) {
    let mut create = json!({
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST"
    });
    if let Some(index) = with_index {
        create["AttributeDefinitions"] =
            json!([{"AttributeName": "id", "AttributeType": "S"}, {"AttributeName": "shop", "AttributeType": "S"}]);
        create["GlobalSecondaryIndexes"] = json!([index]);
    }
    h.ok("CreateTable", create).await;
}

async fn fill(h: &Opened, name: &str, ttl_of: impl Fn(usize) -> Option<u64>) {
    for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(25) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|&n| {
                let mut item = json!({"id": {"S": format!("order-{n:05}")}, "total": {"N": n.to_string()}, "shop": {"S": format!("shop-{}", n % 7)}});
                if let Some(ttl) = ttl_of(n) {
                    item["exp"] = json!({"N": ttl.to_string()});
                }
                json!({"PutRequest": {"Item": item}})
            })
            .collect();
        h.ok("BatchWriteItem", json!({"RequestItems": {name: requests}})).await;
    }
}

fn index_def(projection: &str) -> Value {
    json!({
        "IndexName": "by_shop",
        "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": projection}
    })
}

/// Bound on waiting for a background backup or restore (never a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

async fn wait_until(h: &Opened, what: &str, mut condition: impl AsyncFnMut(&Opened) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition(h).await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gsi(h: &Opened, table: &str) -> Value {
    h.ok("DescribeTable", json!({"TableName": table})).await["Table"]["GlobalSecondaryIndexes"][0].clone()
}

/// Compares `table`'s by_shop (index and counters) to a reference table made with the index.
async fn compare_to_reference(h: &Opened, table: &str, projection: &str) {
    let reference = format!("{table}-ref");
    make_table(h, &reference, Some(index_def(projection))).await;
    for item in scan_all(h, table, None).await {
        h.ok("PutItem", json!({"TableName": reference, "Item": item})).await;
    }
    let held = scan_all(h, table, Some("by_shop")).await;
    let expected = scan_all(h, &reference, Some("by_shop")).await;
    assert_eq!(held.len(), expected.len(), "entries");
    assert_eq!(held, expected);
    let (a, b) = (gsi(h, table).await, gsi(h, &reference).await);
    assert_eq!(
        (a["ItemCount"].clone(), a["IndexSizeBytes"].clone()),
        (b["ItemCount"].clone(), b["IndexSizeBytes"].clone()),
        "counters"
    );
    assert_eq!(a["IndexStatus"], "ACTIVE");
    assert!(a.get("Backfilling").is_none(), "{a}");
}

/// A store whose table `orders` holds [`ITEMS`] items and whose index `by_shop` (ALL) has had
/// one backfill job.
async fn mid_fill(dir: &std::path::Path) -> Opened {
    let h = open(dir);
    make_table(&h, "orders", None).await;
    fill(&h, "orders", |_| None).await;
    h.ok("UpdateTable", create_by_shop_with("ALL")).await;
    assert!(matches!(step(&h).await, BackfillStep::Copied(_)));
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_deleted_and_created_again_mid_fill_under_writes_starts_afresh_and_ends_whole() {
    let dir = tempfile::tempdir().expect("dir");
    let h = mid_fill(dir.path()).await;
    for n in (0..ITEMS).step_by(5) {
        h.ok("PutItem", json!({"TableName": "orders", "Item": {"id": {"S": format!("order-{n:05}")}, "shop": {"S": "moved"}, "x": {"S": "y"}}})).await;
    }
    h.ok(
        "UpdateTable",
        json!({"TableName": "orders", "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": "by_shop"}}]}),
    )
    .await;
    for n in (1..ITEMS).step_by(5) {
        h.ok(
            "DeleteItem",
            json!({"TableName": "orders", "Key": {"id": {"S": format!("order-{n:05}")}}}),
        )
        .await;
    }
    h.ok("UpdateTable", create_by_shop_with("KEYS_ONLY")).await;
    let d = gsi(&h, "orders").await;
    assert_eq!(d["IndexStatus"], "CREATING");
    assert_eq!(d["Backfilling"], true);
    assert_eq!(d["ItemCount"], 0, "{d}");
    assert!(matches!(step(&h).await, BackfillStep::Copied(_)));
    for n in (2..ITEMS).step_by(5) {
        h.ok(
            "PutItem",
            json!({"TableName": "orders", "Item": {"id": {"S": format!("order-{n:05}")}, "shop": {"S": "again"}}}),
        )
        .await;
    }
    while !matches!(step(&h).await, BackfillStep::Finished(_)) {}
    compare_to_reference(&h, "orders", "KEYS_ONLY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_expired_by_ttl_mid_fill_leave_the_index_as_if_never_there() {
    let dir = tempfile::tempdir().expect("dir");
    let h = open(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    make_table(&h, "orders", None).await;
    h.ok(
        "UpdateTimeToLive",
        json!({"TableName": "orders", "TimeToLiveSpecification": {"Enabled": true, "AttributeName": "exp"}}),
    )
    .await;
    fill(&h, "orders", |n| (n % 4 == 0).then_some(now - 100)).await;
    // The TTL index filled first.
    let engine = h.store.engine().clone();
    loop {
        let ttl = engine
            .write_exclusive(|c| c.backfill_ttl_step())
            .await
            .expect("ttl step");
        if !matches!(ttl, Some(BackfillStep::Copied(_))) {
            break;
        }
    }
    h.ok("UpdateTable", create_by_shop_with("ALL")).await;
    assert!(matches!(step(&h).await, BackfillStep::Copied(_)));
    let expired = engine.expire_once().await.expect("expire");
    assert!(expired > 0);
    while engine.expire_once().await.expect("expire") > 0 {}
    while !matches!(step(&h).await, BackfillStep::Finished(_)) {}
    let items = scan_all(&h, "orders", None).await;
    assert!(items.iter().all(|i| i.get("exp").is_none()), "expired items left");
    assert_eq!(
        items.len(),
        ITEMS - ITEMS.div_ceil(4),
        "every fourth item expired, no other"
    );
    compare_to_reference(&h, "orders", "ALL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_mid_fill_restores_its_index_active_and_whole_while_the_source_fill_finishes() {
    let dir = tempfile::tempdir().expect("dir");
    let h = mid_fill(dir.path()).await;
    let created = h
        .ok("CreateBackup", json!({"TableName": "orders", "BackupName": "bkp"}))
        .await;
    let arn = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
    wait_until(&h, "the backup AVAILABLE", async |h: &Opened| {
        h.ok("DescribeBackup", json!({"BackupArn": arn})).await["BackupDescription"]["BackupDetails"]["BackupStatus"]
            == "AVAILABLE"
    })
    .await;
    h.ok(
        "RestoreTableFromBackup",
        json!({"TargetTableName": "copy", "BackupArn": arn}),
    )
    .await;
    wait_until(&h, "the restored table ACTIVE", async |h: &Opened| {
        h.ok("DescribeTable", json!({"TableName": "copy"})).await["Table"]["TableStatus"] == "ACTIVE"
    })
    .await;
    let d = gsi(&h, "copy").await;
    assert_eq!(d["IndexStatus"], "ACTIVE");
    assert!(d.get("Backfilling").is_none());
    assert_eq!(scan_all(&h, "copy", Some("by_shop")).await.len(), ITEMS);
    assert_eq!(d["ItemCount"], ITEMS);
    // The source's fill finishes too.
    while !matches!(step(&h).await, BackfillStep::Finished(_)) {}
    compare_to_reference(&h, "orders", "ALL").await;
}
