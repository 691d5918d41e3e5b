//! What a crash leaves, and how the store opens it. A copy of `store.redb` taken while the
//! engine has it open is the image a `kill -9` (or a power cut after the last fsync) leaves:
//! redb's header still says the file is in use. Opened again, such a file needs redb's full
//! repair, unless its last commit is an idle checkpoint, which saved the allocator state.
//! Either way nothing acknowledged is lost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::engine::EngineOptions;
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

const ITEMS: usize = 300;
const WAIT_MS: u64 = 20_000;

fn options(no_idle_checkpoints: bool) -> EngineOptions {
    EngineOptions {
        disk: store::disk::DiskSettings {
            free_bytes_min: Some(0),
            reserve_bytes: 0,
        },
        faults: None,
        backup_dir: None,
        cache_bytes: None,
        no_idle_checkpoints,
    }
}

/// Opens the store on `dir`, waiting (with a deadline) while a dropped store's writer still
/// holds the file.
fn open(dir: &Path, no_idle_checkpoints: bool) -> Store {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        match Engine::open_with(dir, "us-east-1", Arc::new(SystemClock), options(no_idle_checkpoints)) {
            Ok(engine) => return Store::new(engine),
            Err(error) if error.to_string().contains("already open") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("open engine: {error}"),
        }
    }
}

async fn call(store: &Store, operation: &str, body: Value) -> Value {
    store
        .handle(operation, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{operation}: {e}"))
}

/// Creates a table and writes `ITEMS` items (every write acknowledged).
async fn write_items(store: &Store) {
    call(store, "CreateTable", on_demand_table("orders", "id")).await;
    for i in 0..ITEMS {
        let item = json!({"TableName": "orders", "Item": {"id": {"S": format!("k{i}")}, "v": {"N": i.to_string()}}});
        call(store, "PutItem", item).await;
    }
}

async fn assert_items(store: &Store) {
    for i in 0..ITEMS {
        let key = json!({"TableName": "orders", "Key": {"id": {"S": format!("k{i}")}}, "ConsistentRead": true});
        let got = call(store, "GetItem", key).await;
        assert_eq!(got["Item"]["v"]["N"], json!(i.to_string()), "item k{i} after the crash");
    }
}

/// The image of a crash of the store open on `from`, as a new data directory.
fn crash_image(from: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(from.join("store.redb"), image.path().join("store.redb")).expect("copy the open file");
    image
}

#[tokio::test]
async fn a_crash_after_ordinary_commits_is_repaired_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    assert_eq!(store.engine().writer_status().checkpoints_total, 0);
    let image = crash_image(dir.path());

    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(
        opened.repaired,
        "a file in use whose last commit is not a checkpoint needs a repair"
    );
    assert_items(&reopened).await;
    // The repaired file takes writes, and a clean close leaves nothing to repair.
    call(
        &reopened,
        "PutItem",
        json!({"TableName": "orders", "Item": {"id": {"S": "after"}}}),
    )
    .await;
    drop(reopened);
    let again = open(image.path(), false);
    assert!(!again.engine().writer_status().opened.repaired);
    assert_items(&again).await;
}

#[tokio::test]
async fn a_crash_after_an_idle_checkpoint_opens_without_a_repair() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), false);
    write_items(&store).await;
    // The writer checkpoints once it has been idle for CHECKPOINT_IDLE_MS; nothing else writes
    // to this store, so its last commit stays the checkpoint.
    wait_checkpointed(&store).await;
    let image = crash_image(dir.path());

    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired, "the last commit was a checkpoint: {opened:?}");
    assert_items(&reopened).await;

    // A write ends the checkpointed state at once, and its own checkpoint follows.
    let checkpoints = store.engine().writer_status().checkpoints_total;
    call(
        &store,
        "PutItem",
        json!({"TableName": "orders", "Item": {"id": {"S": "one-more"}}}),
    )
    .await;
    let status = store.engine().writer_status();
    assert!(
        !status.checkpointed || status.checkpoints_total > checkpoints,
        "a write was acknowledged while /health still said checkpointed: {status:?}"
    );
    wait_checkpointed(&store).await;
    assert!(store.engine().writer_status().checkpoints_total > checkpoints);
}

async fn wait_checkpointed(store: &Store) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while !store.engine().writer_status().checkpointed {
        assert!(Instant::now() < deadline, "no checkpoint while idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_closed_engine_leaves_a_file_that_opens_without_a_repair() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // No idle checkpoints: the one that counts is close's.
    let store = open(dir.path(), true);
    write_items(&store).await;
    assert!(store.engine().close().await, "the last checkpoint committed");
    assert!(store.engine().writer_status().checkpointed);
    let refused = store
        .handle(
            "PutItem",
            json!({"TableName": "orders", "Item": {"id": {"S": "late"}}})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect_err("no writes after close");
    assert!(refused.message.contains("shutting down"), "{refused}");
    // The store still holds the file (as a process does until it exits): a copy is what the
    // disk holds after the exit.
    let image = crash_image(dir.path());
    let reopened = open(image.path(), false);
    assert!(!reopened.engine().writer_status().opened.repaired);
    assert_items(&reopened).await;
}
