//! Offline compaction (`switchyard store --compact`): the space of deleted items goes back to
//! the filesystem, and everything else stays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::engine::{CompactError, EngineOptions, OpenError};
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
const ITEMS: usize = 3_000;
const KEPT: usize = 100;

async fn ok(store: &Store, operation: &str, body: Value) -> Value {
    store
        .handle(operation, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{operation} failed: {e:?}"))
}

/// Options as `Engine::open` takes them: no disk watermark, no reserve file.
fn unguarded() -> EngineOptions {
    EngineOptions {
        disk: store::disk::DiskSettings {
            free_bytes_min: Some(0),
            reserve_bytes: 0,
        },
        ..EngineOptions::default()
    }
}

/// Compacts once the engine dropped before has let go of the file.
async fn compact(dir: &std::path::Path) -> store::engine::CompactReport {
    let deadline = Instant::now() + RELEASE_DEADLINE;
    loop {
        match store::engine::compact(dir, "us-east-1", unguarded()).await {
            Ok(report) => return report,
            Err(CompactError::Open(OpenError::Database { source, .. }))
                if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("compaction failed: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_back_the_space_of_deleted_items_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let payload = "x".repeat(4_000);
    {
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open");
        let store = Store::new(engine.clone());
        ok(&store, "CreateTable", on_demand_table("carts", "id")).await;
        for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(25) {
            let requests: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("c{i:05}")}, "v": {"S": payload}}}}))
                .collect();
            ok(&store, "BatchWriteItem", json!({"RequestItems": {"carts": requests}})).await;
        }
        for chunk in (KEPT..ITEMS).collect::<Vec<_>>().chunks(25) {
            let requests: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"DeleteRequest": {"Key": {"id": {"S": format!("c{i:05}")}}}}))
                .collect();
            ok(&store, "BatchWriteItem", json!({"RequestItems": {"carts": requests}})).await;
        }
        assert!(engine.close().await, "closed with a checkpoint");
    }
    let report = compact(dir.path()).await;
    assert!(
        report.bytes_before > (ITEMS * payload.len()) as u64,
        "the file held every item once: {report:?}"
    );
    assert!(
        report.bytes_after * 3 < report.bytes_before,
        "most of the file went back to the filesystem: {report:?}"
    );
    let on_disk = std::fs::metadata(dir.path().join("store.redb")).expect("file").len();
    assert_eq!(on_disk, report.bytes_after);

    let deadline = Instant::now() + RELEASE_DEADLINE;
    let engine = loop {
        match Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)) {
            Ok(engine) => break engine,
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let store = Store::new(engine);
    let scanned = ok(&store, "Scan", json!({"TableName": "carts", "Select": "COUNT"})).await;
    assert_eq!(scanned["Count"], KEPT, "{scanned}");
    let item = ok(
        &store,
        "GetItem",
        json!({"TableName": "carts", "Key": {"id": {"S": "c00042"}}}),
    )
    .await;
    assert_eq!(item["Item"]["v"]["S"].as_str().map(str::len), Some(payload.len()));
    ok(
        &store,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "after"}, "v": {"S": "written after"}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_store_is_not_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open");
    let error = store::engine::compact(dir.path(), "us-east-1", unguarded())
        .await
        .expect_err("the file is open");
    assert!(error.to_string().contains("already open"), "{error}");
    drop(engine);
}
