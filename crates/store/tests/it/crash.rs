//! What a crash leaves, and how the store opens it. A copy of `store.redb`, then of
//! `store.wal`, taken while the engine has them open is the image a `kill -9` (or a power cut
//! after the last fsync) leaves: redb's file holds its last durable commit, a checkpoint with
//! its allocator state, so it opens without a repair, and the write-ahead log holds every batch
//! acknowledged since, which the open replays. Nothing acknowledged is lost.

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
        write_ahead_log: true,
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

/// The image of a crash of the store open on `from`, as a new data directory: the database,
/// then the log (so the log is at least as new as the database, as on a disk at any instant).
fn crash_image(from: &Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(from.join("store.redb"), image.path().join("store.redb")).expect("copy the open file");
    std::fs::copy(from.join("store.wal"), image.path().join("store.wal")).expect("copy the open log");
    image
}

#[tokio::test]
async fn a_crash_after_ordinary_commits_replays_the_log_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    assert_eq!(store.engine().writer_status().checkpoints_total, 0);
    let image = crash_image(dir.path());

    // redb's file alone holds none of it: every batch since the open is durable in the log only.
    // (Opened with an empty log, the operator's word to go on without the log.)
    let without_log = tempfile::tempdir().expect("temporary directory");
    std::fs::copy(image.path().join("store.redb"), without_log.path().join("store.redb")).expect("copy");
    std::fs::write(without_log.path().join("store.wal"), b"").expect("an empty log");
    let bare = open(without_log.path(), false);
    let tables = call(&bare, "ListTables", json!({})).await;
    assert!(
        !tables["TableNames"]
            .as_array()
            .expect("names")
            .contains(&json!("orders")),
        "the batches were committed durably in redb, not through the log: {tables}"
    );
    drop(bare);

    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired, "the last durable commit is a checkpoint: {opened:?}");
    assert!(
        opened.replayed.records >= ITEMS as u64,
        "every acknowledged batch is replayed from the log: {opened:?}"
    );
    assert_items(&reopened).await;
    // The replayed store takes writes, and a clean close leaves nothing to replay.
    call(
        &reopened,
        "PutItem",
        json!({"TableName": "orders", "Item": {"id": {"S": "after"}}}),
    )
    .await;
    assert!(reopened.engine().close().await);
    drop(reopened);
    let again = open(image.path(), false);
    let opened = again.engine().writer_status().opened;
    assert!(!opened.repaired && opened.replayed.records == 0, "{opened:?}");
    assert_items(&again).await;
    let after = call(
        &again,
        "GetItem",
        json!({"TableName": "orders", "Key": {"id": {"S": "after"}}, "ConsistentRead": true}),
    )
    .await;
    assert!(after.get("Item").is_some(), "the write after the replay: {after}");
}

#[tokio::test]
async fn a_crash_right_after_a_replay_opens_with_nothing_left_to_replay() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    let image = crash_image(dir.path());
    // The open's own durable commit (the catalog's load, after the replay) holds the replayed
    // records' numbers: a crash right after it finds them in the log already held.
    let first = open(image.path(), true);
    let replayed = first.engine().writer_status().opened.replayed;
    assert!(replayed.records >= ITEMS as u64, "{replayed:?}");
    let second_image = crash_image(image.path());
    drop(first);
    let second = open(second_image.path(), false);
    let opened = second.engine().writer_status().opened;
    assert_eq!(opened.replayed.records, 0, "the replay committed durably: {opened:?}");
    assert!(!opened.repaired, "{opened:?}");
    assert_items(&second).await;
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
    assert!(!store.engine().is_stopping());
    assert!(store.engine().close().await, "the last checkpoint committed");
    assert!(store.engine().writer_status().checkpointed);
    // What a background restore asks when its writes are refused: the stop, not a failure.
    assert!(store.engine().is_stopping());
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

/// The error an open of `dir` fails with.
fn open_error(dir: &Path) -> String {
    match Engine::open_with(dir, "us-east-1", Arc::new(SystemClock), options(false)) {
        Ok(_) => panic!("the open should have been refused"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_database_copied_without_its_log_after_a_crash_is_refused_until_told_to_go_on() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    let image = crash_image(dir.path());
    std::fs::remove_file(image.path().join("store.wal")).expect("lose the log");
    let refused = open_error(image.path());
    assert!(
        refused.contains("missing") && refused.contains("touch store.wal") && refused.contains("nothing was changed"),
        "names the problem and both ways on: {refused}"
    );
    // Putting the log back opens with everything...
    let kept = crash_image(dir.path());
    let reopened = open(kept.path(), false);
    assert_items(&reopened).await;
    drop(reopened);
    // ...and an empty log is the operator's word to open store.redb as it is.
    std::fs::write(image.path().join("store.wal"), b"").expect("touch store.wal");
    let as_is = open(image.path(), false);
    let tables = call(&as_is, "ListTables", json!({})).await;
    assert!(
        !tables["TableNames"]
            .as_array()
            .expect("names")
            .contains(&json!("orders")),
        "the log's writes are gone, as the operator chose: {tables}"
    );
}

#[tokio::test]
async fn a_database_closed_cleanly_opens_without_its_log() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    assert!(store.engine().close().await);
    let image = crash_image(dir.path());
    std::fs::remove_file(image.path().join("store.wal")).expect("drop the log");
    let reopened = open(image.path(), false);
    assert_items(&reopened).await;
}

#[tokio::test]
async fn a_log_of_another_database_is_refused_and_nothing_changes() {
    let first = tempfile::tempdir().expect("temporary directory");
    let second = tempfile::tempdir().expect("temporary directory");
    let a = open(first.path(), true);
    let b = open(second.path(), true);
    write_items(&a).await;
    write_items(&b).await;
    let image = crash_image(first.path());
    std::fs::copy(second.path().join("store.wal"), image.path().join("store.wal")).expect("the other log");
    let log_before = std::fs::read(image.path().join("store.wal")).expect("read");
    let refused = open_error(image.path());
    assert!(refused.contains("another database"), "{refused}");
    assert!(
        std::fs::read(image.path().join("store.wal")).expect("read") == log_before,
        "the log was left as it was"
    );
    // Nothing was lost either: with its own log back the database opens with every write.
    std::fs::copy(first.path().join("store.wal"), image.path().join("store.wal")).expect("its own log");
    let reopened = open(image.path(), false);
    assert_items(&reopened).await;
}

#[tokio::test]
async fn a_log_damaged_before_its_last_record_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    let image = crash_image(dir.path());
    // Flip a byte in the first record's payload (just past the 4 KiB header and the record's
    // 24-byte header): later records follow it, so this is damage, not a torn end.
    let path = image.path().join("store.wal");
    let mut log = std::fs::read(&path).expect("read");
    log[4096 + 24] ^= 0xff;
    std::fs::write(&path, &log).expect("write");
    let refused = open_error(image.path());
    assert!(
        refused.contains("damaged") && refused.contains("would be lost") && refused.contains("move store.wal aside"),
        "{refused}"
    );
    assert!(std::fs::read(&path).expect("read") == log, "the log was left as it was");
}

#[tokio::test]
async fn a_crash_after_writes_that_follow_a_checkpoint_replays_them_without_a_repair() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), false);
    write_items(&store).await;
    wait_checkpointed(&store).await;
    // What the server's sweeper runs every second, as the binary would.
    let mut cursor = store::engine::DigestCursor::default();
    store
        .engine()
        .maintain_digests_once(&mut cursor)
        .await
        .expect("digests");
    store.engine().expire_once().await.expect("ttl");
    store.engine().trim_streams_once().await.expect("streams");
    store.engine().trim_pitr_once().await.expect("pitr");
    for i in 0..50 {
        let item = json!({"TableName": "orders", "Item": {"id": {"S": format!("late{i}")}}});
        call(&store, "PutItem", item).await;
    }
    let image = crash_image(dir.path());
    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired, "the last durable commit is a checkpoint: {opened:?}");
    assert!(opened.replayed.records >= 50, "{opened:?}");
    assert_items(&reopened).await;
    let late = call(
        &reopened,
        "GetItem",
        json!({"TableName": "orders", "Key": {"id": {"S": "late49"}}, "ConsistentRead": true}),
    )
    .await;
    assert!(late.get("Item").is_some(), "{late}");
}

#[tokio::test]
async fn without_the_log_every_batch_is_durable_in_the_database_itself() {
    // The default (`--write-ahead-log` off): each batch is redb's own durable commit, so the
    // database file alone holds every acknowledged write, and the log stays empty.
    let dir = tempfile::tempdir().expect("temporary directory");
    let unlogged = EngineOptions {
        write_ahead_log: false,
        ..options(true)
    };
    let engine = Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), unlogged).expect("open");
    let store = Store::new(engine);
    write_items(&store).await;
    assert_eq!(store.engine().writer_status().log_bytes, 0, "nothing was logged");
    let image = crash_image(dir.path());
    std::fs::write(image.path().join("store.wal"), b"").expect("no log at all");
    let reopened = open(image.path(), false);
    assert_eq!(reopened.engine().writer_status().opened.replayed.records, 0);
    assert_items(&reopened).await;
}

fn open_unlogged(dir: &Path) -> Result<Store, String> {
    let unlogged = EngineOptions {
        write_ahead_log: false,
        ..options(true)
    };
    Engine::open_with(dir, "us-east-1", Arc::new(SystemClock), unlogged)
        .map(Store::new)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn without_the_log_a_log_missing_after_a_crash_loses_nothing_and_is_started_again() {
    // The last run did not log (the default), so its writes are all in store.redb: a missing
    // store.wal after a crash (a data directory copied without it) is no reason to refuse.
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_unlogged(dir.path()).expect("open");
    write_items(&store).await;
    let image = crash_image(dir.path());
    std::fs::remove_file(image.path().join("store.wal")).expect("lose the log");
    let reopened = open_unlogged(image.path()).expect("a missing log of an unlogged run is no loss");
    assert_items(&reopened).await;
    assert!(image.path().join("store.wal").exists(), "a new log is started");
    drop(reopened);
    // A store that logs opens it too (nothing to replay), and marks it as logging again.
    let logged = open(image.path(), true);
    assert_items(&logged).await;
}

#[tokio::test]
async fn a_logged_run_replayed_by_an_unlogged_one_still_needs_its_log_until_it_is_durable() {
    // Writes logged by a run with the log on, then a crash; the next run has the log off and
    // replays them without a sync. Crashing again before anything made them durable leaves
    // them in the log only: a missing log is still refused, and the log still brings them back.
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    let first = crash_image(dir.path());
    drop(store);
    let replaying = open_unlogged(first.path()).expect("replays with the log off");
    assert_eq!(
        replaying.engine().writer_status().opened.replayed.records as usize,
        ITEMS + 1
    );
    let second = crash_image(first.path());
    drop(replaying);
    let keep = crash_image(second.path());
    std::fs::remove_file(second.path().join("store.wal")).expect("lose the log");
    let refused = open_unlogged(second.path()).err().expect("refused");
    assert!(refused.contains("missing"), "{refused}");
    let reopened = open_unlogged(keep.path()).expect("the log brings the writes back");
    assert_items(&reopened).await;
}

/// A BatchWriteItem's new items go in as runs through redb's write cursor
/// (`LoggedTable::insert_run`); each is in the batch's log record like any insert, so a crash
/// before a checkpoint replays them all.
#[tokio::test]
async fn a_crash_after_a_batch_of_new_items_replays_every_item_of_its_runs() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    call(&store, "CreateTable", on_demand_table("orders", "id")).await;
    // An empty table: the 25 keys follow each other with nothing between them, one run.
    let puts: Vec<Value> = (0..25)
        .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("b{i:02}")}, "v": {"N": i.to_string()}}}}))
        .collect();
    call(&store, "BatchWriteItem", json!({"RequestItems": {"orders": puts}})).await;
    assert_eq!(store.engine().writer_status().checkpoints_total, 0);
    let image = crash_image(dir.path());
    drop(store);

    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired, "{opened:?}");
    assert!(
        opened.replayed.records >= 2,
        "the table and the batch replayed: {opened:?}"
    );
    for i in 0..25 {
        let key = json!({"TableName": "orders", "Key": {"id": {"S": format!("b{i:02}")}}, "ConsistentRead": true});
        let got = call(&reopened, "GetItem", key).await;
        assert_eq!(
            got["Item"]["v"]["N"],
            json!(i.to_string()),
            "item b{i:02} after the crash"
        );
    }
    let count = call(&reopened, "Scan", json!({"TableName": "orders", "Select": "COUNT"})).await;
    assert_eq!(count["Count"], json!(25));
}

#[tokio::test]
async fn a_database_deleted_or_truncated_beside_its_log_is_refused_not_started_empty() {
    // redb makes a new, empty database of a missing or zero-length store.redb: beside the log
    // of the store that was there, that is a lost database, not a first start.
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_unlogged(dir.path()).expect("open");
    write_items(&store).await;
    for (name, lose) in [
        (
            "truncated",
            (|path: &Path| std::fs::write(path, b"")) as fn(&Path) -> std::io::Result<()>,
        ),
        ("deleted", |path: &Path| std::fs::remove_file(path)),
    ] {
        let image = crash_image(dir.path());
        let database = image.path().join("store.redb");
        lose(&database).expect("lose the database");
        let refused = open_unlogged(image.path())
            .err()
            .unwrap_or_else(|| panic!("{name}: opened empty"));
        assert!(
            refused.contains(&database.display().to_string())
                && refused.contains("store.wal is there")
                && refused.contains("nothing was changed")
                && refused.contains("move store.wal aside"),
            "{name}: names the file, the problem and the fix: {refused}"
        );
        assert_eq!(
            std::fs::metadata(&database).map(|m| m.len()).ok(),
            if name == "deleted" { None } else { Some(0) },
            "{name}: nothing was created"
        );
        // Moving the log aside is the operator's word for an empty store.
        std::fs::remove_file(image.path().join("store.wal")).expect("move the log aside");
        let fresh = open_unlogged(image.path()).expect("an empty store when told so");
        let tables = call(&fresh, "ListTables", json!({})).await;
        assert_eq!(tables["TableNames"], json!([]), "{name}");
    }
    // A first start (nothing there) still creates the store.
    let empty = tempfile::tempdir().expect("temporary directory");
    open_unlogged(empty.path()).expect("a first start");
}

/// A crash while an index is being filled, in the write-ahead log's mode: the open replays
/// the jobs' progress and the writes between them, and the fill goes on from where the last
/// acknowledged job left it, counting each item once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_an_index_backfill_resumes_it_from_the_log() {
    use store::engine::{BackfillStep, INDEX_BACKFILL_ITEMS_PER_JOB};
    const FILLED: usize = INDEX_BACKFILL_ITEMS_PER_JOB * 2 + 300;
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    call(&store, "CreateTable", on_demand_table("orders", "id")).await;
    for chunk in (0..FILLED).collect::<Vec<_>>().chunks(25) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"PutRequest": {"Item": {"id": {"S": format!("k{n}")}, "shop": {"S": format!("s{}", n % 3)}}}}))
            .collect();
        call(&store, "BatchWriteItem", json!({"RequestItems": {"orders": requests}})).await;
    }
    call(
        &store,
        "UpdateTable",
        crate::index_backfill::create_by_shop_with("KEYS_ONLY"),
    )
    .await;
    let step = |store: &Store| {
        let engine = store.engine().clone();
        async move {
            let table = engine.table("orders").expect("table");
            engine
                .write_exclusive(move |context| context.backfill_index_step(&table, "by_shop"))
                .await
                .expect("a backfill job")
        }
    };
    assert_eq!(step(&store).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));
    // Writes between the jobs: items changed, moved out of the index, deleted, new.
    for n in (0..FILLED).step_by(7) {
        call(
            &store,
            "PutItem",
            json!({"TableName": "orders", "Item": {"id": {"S": format!("k{n}")}, "shop": {"S": "moved"}}}),
        )
        .await;
    }
    for n in (1..FILLED).step_by(7) {
        call(
            &store,
            "DeleteItem",
            json!({"TableName": "orders", "Key": {"id": {"S": format!("k{n}")}}}),
        )
        .await;
    }
    assert_eq!(step(&store).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));
    let image = crash_image(dir.path());
    drop(store);

    let reopened = open(image.path(), false);
    let opened = reopened.engine().writer_status().opened;
    assert!(opened.replayed.records > 0, "{opened:?}");
    let described = call(&reopened, "DescribeTable", json!({"TableName": "orders"})).await;
    assert_eq!(described["Table"]["GlobalSecondaryIndexes"][0]["Backfilling"], true);
    // Two jobs were acknowledged: one left, the items after the second's last.
    match step(&reopened).await {
        BackfillStep::Finished(n) => assert!(n < INDEX_BACKFILL_ITEMS_PER_JOB, "{n} left"),
        other => panic!("not where the second job left it: {other:?}"),
    }
    let described = call(&reopened, "DescribeTable", json!({"TableName": "orders"})).await;
    let index = &described["Table"]["GlobalSecondaryIndexes"][0];
    assert_eq!(index["IndexStatus"], "ACTIVE");
    let table_count = call(&reopened, "Scan", json!({"TableName": "orders", "Select": "COUNT"})).await;
    assert_eq!(table_count["Count"], json!(FILLED - (FILLED - 1).div_ceil(7)));
    let mut held = 0;
    let mut moved = 0;
    let mut start: Option<Value> = None;
    loop {
        let mut request = json!({"TableName": "orders", "IndexName": "by_shop"});
        if let Some(start) = start.take() {
            request["ExclusiveStartKey"] = start;
        }
        let page = call(&reopened, "Scan", request).await;
        for item in page["Items"].as_array().expect("items") {
            held += 1;
            moved += usize::from(item["shop"]["S"] == "moved");
        }
        match page.get("LastEvaluatedKey") {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    assert_eq!(
        held,
        FILLED - (FILLED - 1).div_ceil(7),
        "every item the table holds, once"
    );
    assert_eq!(moved, FILLED.div_ceil(7));
    assert_eq!(index["ItemCount"], json!(held));
}

/// Puts `count` items of ~300 KB named `{prefix}{i}`: about 28 fill a checkpoint's 8 MiB of log.
async fn put_big(store: &Store, prefix: &str, count: usize) {
    let blob = "x".repeat(300_000);
    for i in 0..count {
        let item = json!({"TableName": "orders", "Item": {"id": {"S": format!("{prefix}{i}")}, "blob": {"S": blob}}});
        call(store, "PutItem", item).await;
    }
}

async fn assert_big(store: &Store, prefix: &str, count: usize) {
    for i in 0..count {
        let key = json!({"TableName": "orders", "Key": {"id": {"S": format!("{prefix}{i}")}}, "ConsistentRead": true});
        let got = call(store, "GetItem", key).await;
        assert_eq!(
            got["Item"]["blob"]["S"].as_str().map(str::len),
            Some(300_000),
            "{prefix}{i}"
        );
    }
}

/// Releases the held syncs when dropped, so that a failing test does not leave threads waiting.
struct Held(Arc<store::disk::FaultyDisk>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.set_hold_syncs(false);
    }
}

#[tokio::test]
async fn a_checkpoint_does_not_wait_for_its_syncs_and_a_crash_before_them_replays_both_regions() {
    // The database's syncs are held: the checkpoint the log's 8 MiB call for commits and the
    // writer goes on into the log's other region while its syncs wait. A crash then leaves
    // redb at the commit before it (the checkpoint's header waits behind its first sync), so
    // every acknowledged write must come back from the log, across both regions.
    let dir = tempfile::tempdir().expect("temporary directory");
    let faults = store::disk::FaultyDisk::new();
    let options = EngineOptions {
        faults: Some(Arc::clone(&faults)),
        ..options(false)
    };
    let store = Store::new(Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), options).expect("open"));
    call(&store, "CreateTable", on_demand_table("orders", "id")).await;
    // The file grows first, and its pages are freed again: growing it syncs (redb makes a
    // longer file durable at once), and that sync would wait for the held ones.
    put_big(&store, "warm", 70).await;
    for i in 0..70 {
        call(
            &store,
            "DeleteItem",
            json!({"TableName": "orders", "Key": {"id": {"S": format!("warm{i}")}}}),
        )
        .await;
    }
    for round in 0..2 {
        wait_checkpointed(&store).await;
        call(
            &store,
            "PutItem",
            json!({"TableName": "orders", "Item": {"id": {"S": format!("tick{round}")}}}),
        )
        .await;
    }
    wait_checkpointed(&store).await;
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while store.engine().writer_status().checkpoint_syncing {
        assert!(Instant::now() < deadline, "the idle checkpoint's syncs never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checkpoints_before = store.engine().writer_status().checkpoints_total;

    faults.set_hold_syncs(true);
    let held = Held(Arc::clone(&faults));
    let writes = async {
        put_big(&store, "before", 40).await;
        let status = store.engine().writer_status();
        assert!(
            status.checkpoints_total > checkpoints_before,
            "the log's size called for a checkpoint, which did not wait: {status:?}"
        );
        put_big(&store, "after", 10).await;
    };
    tokio::time::timeout(Duration::from_millis(WAIT_MS), writes)
        .await
        .expect("the writer did not wait for the held syncs");
    let log_bytes = std::fs::metadata(dir.path().join("store.wal")).expect("log").len();
    assert!(
        log_bytes > store::engine::WAL_REGION_STARTS[1],
        "the writer went on in the second region ({log_bytes} bytes)"
    );
    let image = crash_image(dir.path());
    drop(held);
    drop(store);

    let reopened = open(image.path(), true);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired, "{opened:?}");
    assert!(opened.replayed.records >= 50, "both regions replayed: {opened:?}");
    assert_big(&reopened, "before", 40).await;
    assert_big(&reopened, "after", 10).await;
}

#[tokio::test]
async fn checkpoints_alternate_the_log_regions_and_a_crash_loses_nothing() {
    // Several checkpoints whose syncs complete: the log moves between its regions and a crash
    // image at the end replays only what the last durable checkpoint lacks.
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    call(&store, "CreateTable", on_demand_table("orders", "id")).await;
    put_big(&store, "item", 100).await;
    assert!(store.engine().writer_status().checkpoints_total >= 3);
    let image = crash_image(dir.path());
    drop(store);
    let reopened = open(image.path(), true);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired && opened.replayed.records < 100, "{opened:?}");
    assert_big(&reopened, "item", 100).await;
}

#[tokio::test]
async fn a_log_of_one_region_is_replayed_upgraded_and_not_written_over_before_it_is_durable() {
    // A crash image whose log says format 1 (one region, as releases before the two regions
    // wrote it): it replays, its header says 2 from then on, and the writes that follow (more
    // than a region's worth, through checkpoints) come back after a second crash with it.
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_items(&store).await;
    let image = crash_image(dir.path());
    drop(store);
    let log = image.path().join("store.wal");
    let mut bytes = std::fs::read(&log).expect("read the log");
    bytes[16..20].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&log, &bytes).expect("write the log");

    let upgraded = open(image.path(), true);
    assert!(upgraded.engine().writer_status().opened.replayed.records >= ITEMS as u64);
    let header = std::fs::read(&log).expect("read the log");
    assert_eq!(&header[16..20], &2u32.to_le_bytes(), "the header says two regions now");
    put_big(&upgraded, "after", 70).await;
    assert!(upgraded.engine().writer_status().checkpoints_total >= 1);
    let second = crash_image(image.path());
    drop(upgraded);
    let reopened = open(second.path(), true);
    assert_items(&reopened).await;
    assert_big(&reopened, "after", 70).await;
}

/// A table with a NEW_AND_OLD_IMAGES stream, and `ITEMS` changes of 100 items (inserts, then
/// modifications).
async fn write_stream_changes(store: &Store) {
    let mut table = on_demand_table("feed", "id");
    table["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"});
    call(store, "CreateTable", table).await;
    for i in 0..ITEMS {
        let item =
            json!({"TableName": "feed", "Item": {"id": {"S": format!("k{}", i % 100)}, "v": {"N": i.to_string()}}});
        call(store, "PutItem", item).await;
    }
}

/// Every record of the table's stream, in order, read through GetRecords from the trim
/// horizon of each shard (pages of 50, so reads start in the middle of blocks).
async fn stream_records(store: &Store) -> Vec<Value> {
    let streams = |operation: &'static str, body: Value| async move {
        let answer = store::streams::api::handle(store.engine(), operation, body.to_string().as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{operation}: {e}"));
        serde_json::from_slice::<Value>(&answer).expect("a Streams answer is JSON")
    };
    let arn = call(store, "DescribeTable", json!({"TableName": "feed"})).await["Table"]["LatestStreamArn"].clone();
    let described = streams("DescribeStream", json!({"StreamArn": arn})).await;
    let mut records = Vec::new();
    for shard in described["StreamDescription"]["Shards"].as_array().expect("shards") {
        let request = json!({"StreamArn": arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"});
        let mut iterator = streams("GetShardIterator", request).await["ShardIterator"].clone();
        loop {
            let page = streams("GetRecords", json!({"ShardIterator": iterator, "Limit": 50})).await;
            let got = page["Records"].as_array().expect("records").clone();
            if got.is_empty() {
                break;
            }
            records.extend(got);
            iterator = page["NextShardIterator"].clone();
        }
    }
    records
}

/// With the log a batch's stream records stay out of redb until a checkpoint
/// (`engine::streams::RecordOverlay`). Meanwhile they are read from memory; a crash leaves
/// them in the log only, and the replay puts them in redb; a checkpoint moves them in. The
/// records read the same at every step: none lost, none twice, in order.
#[tokio::test]
async fn stream_records_kept_out_of_redb_read_the_same_after_a_crash_and_after_a_checkpoint() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    write_stream_changes(&store).await;
    let status = store.engine().writer_status();
    assert!(
        status.stream_overlay_blocks > 0 && status.stream_overlay_bytes > 0,
        "the records wait for a checkpoint: {status:?}"
    );
    let before = stream_records(&store).await;
    assert_eq!(before.len(), ITEMS);
    let values: Vec<&Value> = before.iter().map(|r| &r["dynamodb"]["NewImage"]["v"]["N"]).collect();
    let expected: Vec<Value> = (0..ITEMS).map(|i| json!(i.to_string())).collect();
    assert!(
        values.iter().zip(&expected).all(|(got, want)| *got == want),
        "{values:?}"
    );

    let image = crash_image(dir.path());
    {
        let reopened = open(image.path(), true);
        let opened = reopened.engine().writer_status();
        assert!(opened.opened.replayed.records >= ITEMS as u64, "{opened:?}");
        assert_eq!(opened.stream_overlay_blocks, 0, "the replay put every record in redb");
        assert_eq!(stream_records(&reopened).await, before, "after the crash");
    }

    // The close's checkpoint moves them into redb; the database alone then holds them.
    assert!(store.engine().close().await, "the last checkpoint committed");
    assert_eq!(store.engine().writer_status().stream_overlay_blocks, 0);
    assert_eq!(stream_records(&store).await, before, "after the checkpoint");
    let image = crash_image(dir.path());
    std::fs::remove_file(image.path().join("store.wal")).expect("remove the log");
    let reopened = open(image.path(), true);
    assert_eq!(
        stream_records(&reopened).await,
        before,
        "from the database without its log"
    );
}

/// A checkpoint that does not wait for its syncs moves the records too, and a crash after it
/// (its syncs done or not) loses none.
#[tokio::test]
async fn an_idle_checkpoint_moves_stream_records_into_redb_and_a_crash_after_it_loses_none() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), false);
    write_stream_changes(&store).await;
    wait_checkpointed(&store).await;
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while store.engine().writer_status().stream_overlay_blocks > 0 {
        assert!(Instant::now() < deadline, "the checkpoint left records out of redb");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = stream_records(&store).await;
    assert_eq!(before.len(), ITEMS);
    // More records after the checkpoint: these wait for the next one.
    for i in 0..20 {
        let item = json!({"TableName": "feed", "Item": {"id": {"S": format!("late{i}")}}});
        call(&store, "PutItem", item).await;
    }
    let all = stream_records(&store).await;
    assert_eq!(all.len(), ITEMS + 20);
    assert_eq!(all[..ITEMS], before[..]);
    let image = crash_image(dir.path());
    let reopened = open(image.path(), false);
    assert_eq!(stream_records(&reopened).await, all);
}

/// A batch too big for the log commits durably in redb and starts the log again: it takes the
/// stream records kept out of redb with it, besides its own, or a crash after it would lose
/// them with the log's old records.
#[tokio::test]
async fn a_batch_too_big_for_the_log_takes_the_kept_out_stream_records_into_redb() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open(dir.path(), true);
    let mut table = on_demand_table("feed", "id");
    table["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"});
    call(&store, "CreateTable", table).await;
    for i in 0..10 {
        call(
            &store,
            "PutItem",
            json!({"TableName": "feed", "Item": {"id": {"S": format!("small{i}")}}}),
        )
        .await;
    }
    assert!(store.engine().writer_status().stream_overlay_blocks > 0);
    // 25 items of 380 KB, each with its record's NewImage: about 19 MB, more than a region.
    let blob = "x".repeat(380_000);
    let puts: Vec<Value> = (0..25)
        .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("big{i:02}")}, "blob": {"S": blob}}}}))
        .collect();
    let checkpoints_before = store.engine().writer_status().checkpoints_total;
    call(&store, "BatchWriteItem", json!({"RequestItems": {"feed": puts}})).await;
    let status = store.engine().writer_status();
    assert_eq!(
        status.checkpoints_total, checkpoints_before,
        "no checkpoint ran: {status:?}"
    );
    assert_eq!(
        status.stream_overlay_blocks, 0,
        "the durable commit took every record: {status:?}"
    );
    for i in 0..5 {
        call(
            &store,
            "PutItem",
            json!({"TableName": "feed", "Item": {"id": {"S": format!("late{i}")}}}),
        )
        .await;
    }
    let before = stream_records(&store).await;
    let mut ids: Vec<&str> = before
        .iter()
        .map(|r| r["dynamodb"]["Keys"]["id"]["S"].as_str().expect("id"))
        .collect();
    // One BatchWriteItem's items are applied in the order of their stored keys.
    ids[10..35].sort_unstable();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("small{i}"))
        .chain((0..25).map(|i| format!("big{i:02}")))
        .chain((0..5).map(|i| format!("late{i}")))
        .collect();
    assert_eq!(ids, expected);
    let image = crash_image(dir.path());
    let reopened = open(image.path(), true);
    assert_eq!(stream_records(&reopened).await, before);
}
