//! Housekeeping of global tables. Tombstones: indexed when written, purged only below the
//! watermark, never when a newer write replaced them, and indexed on first open of an older
//! data directory. The replication log: its byte counts and the trim point for a byte bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

const REOPEN_DEADLINE: Duration = Duration::from_secs(10);

fn open(dir: &std::path::Path) -> Engine {
    // A dropped engine releases its file once its writer thread has gone.
    let deadline = Instant::now() + REOPEN_DEADLINE;
    loop {
        match Engine::open(dir, "us-east-1", Arc::new(SystemClock)) {
            Ok(engine) => return engine,
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The store's database file itself, once a dropped engine has released it.
fn open_raw(dir: &std::path::Path) -> redb::Database {
    let deadline = Instant::now() + REOPEN_DEADLINE;
    loop {
        match redb::Database::open(dir.join("store.redb")) {
            Ok(database) => return database,
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

async fn ok(store: &Store, operation: &str, body: Value) -> Value {
    store
        .handle(operation, body.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{operation} failed: {e:?}"))
}

/// A table made global by giving it a second replica (no peer needed to write to it).
async fn global_table(engine: &Engine) -> Store {
    let store = Store::new(engine.clone());
    ok(&store, "CreateTable", on_demand_table("carts", "id")).await;
    let mut meta = (*engine.table("carts").expect("created")).clone();
    meta.replicas = vec!["us-east-1".into(), "eu-west-1".into()];
    engine
        .write_exclusive(move |context| context.put_table(meta))
        .await
        .expect("made global");
    store
}

async fn put(store: &Store, id: &str) {
    ok(
        store,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": id}}}),
    )
    .await;
}

async fn delete(store: &Store, id: &str) {
    ok(
        store,
        "DeleteItem",
        json!({"TableName": "carts", "Key": {"id": {"S": id}}}),
    )
    .await;
}

async fn present(store: &Store, id: &str) -> bool {
    ok(
        store,
        "GetItem",
        json!({"TableName": "carts", "Key": {"id": {"S": id}}, "ConsistentRead": true}),
    )
    .await
    .get("Item")
    .is_some()
}

#[tokio::test]
async fn tombstones_are_purged_below_the_watermark_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = open(dir.path());
    let store = global_table(&engine).await;
    put(&store, "a").await;
    delete(&store, "a").await;
    assert_eq!(engine.tombstone_entries(), 1, "the delete left an indexed tombstone");

    let (before_delete_b, _) = engine.take_mark().await.expect("mark");
    put(&store, "b").await;
    delete(&store, "b").await;
    assert_eq!(engine.tombstone_entries(), 2);
    let (visited, removed) = engine.purge_tombstones(before_delete_b).await.expect("purge");
    assert_eq!(
        (visited, removed),
        (1, 1),
        "only the tombstone below the watermark goes"
    );
    assert_eq!(engine.tombstone_entries(), 1);

    // A tombstone a newer write replaced leaves a stale entry: purging it keeps the item.
    put(&store, "b").await;
    let (now, _) = engine.take_mark().await.expect("mark");
    let (visited, removed) = engine.purge_tombstones(now).await.expect("purge");
    assert_eq!((visited, removed), (1, 0));
    assert!(
        present(&store, "b").await,
        "a write newer than the tombstone survives the purge"
    );
    assert!(!present(&store, "a").await);
    assert_eq!(engine.tombstone_entries(), 0);
}

#[tokio::test]
async fn an_older_data_directory_has_its_tombstones_indexed_on_open() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let engine = open(dir.path());
        let store = global_table(&engine).await;
        for id in ["a", "b", "c"] {
            put(&store, id).await;
        }
        delete(&store, "a").await;
        delete(&store, "c").await;
    }
    // Make it look like a directory written before the index existed.
    let database = open_raw(dir.path());
    let txn = database.begin_write().expect("write");
    txn.delete_table(redb::TableDefinition::<&[u8], &[u8]>::new("tombstones"))
        .expect("drop the index");
    txn.open_table(redb::TableDefinition::<&str, u64>::new("settings"))
        .expect("settings")
        .remove("tombstone_index_version")
        .expect("forget the index");
    txn.commit().expect("commit");
    drop(database);

    let engine = open(dir.path());
    assert_eq!(engine.tombstone_entries(), 2, "both tombstones indexed on open");
    let store = Store::new(engine.clone());
    let (now, _) = engine.take_mark().await.expect("mark");
    assert_eq!(engine.purge_tombstones(now).await.expect("purge"), (2, 2));
    assert!(present(&store, "b").await);
}

#[tokio::test]
async fn the_log_counts_its_bytes_and_trims_to_a_byte_bound() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = open(dir.path());
    let store = global_table(&engine).await;
    for i in 0..50 {
        put(&store, &format!("cart-{i:03}-{}", "x".repeat(i))).await;
    }
    let head = engine.log_head();
    assert_eq!(head, 50);
    let entries = engine
        .snapshot()
        .expect("snapshot")
        .read_log(1, 1_000, usize::MAX)
        .expect("log");
    let sizes: Vec<u64> = entries.iter().map(|(_, e)| e.len() as u64).collect();
    let snapshot = engine.snapshot().expect("snapshot");
    for acked in [0, 1, 25, 49, 50] {
        assert_eq!(
            snapshot.log_bytes_after(acked).expect("bytes"),
            sizes[acked as usize..].iter().sum::<u64>(),
            "bytes pending after {acked}"
        );
    }
    let bound: u64 = sizes[30..].iter().sum::<u64>() + 1;
    let through = snapshot.trim_point_for_bytes(bound).expect("trim point");
    assert_eq!(through, 30, "the fewest changes dropped to fit the bound");
    assert_eq!(snapshot.trim_point_for_bytes(u64::MAX).expect("trim point"), 0);
    drop(snapshot);
    assert_eq!(engine.trim_log(through).await.expect("trim"), 31);
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.log_bytes_after(30).expect("bytes"), bound - 1);
    assert_eq!(
        snapshot.log_bytes_after(3).expect("bytes"),
        bound - 1,
        "a trimmed position needs everything still held"
    );
    assert_eq!(
        snapshot.trim_point_for_bytes(bound).expect("trim point"),
        0,
        "within the bound now"
    );
}

#[tokio::test]
async fn log_entries_from_before_byte_counts_still_read_and_ship() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let changes = {
        let engine = open(dir.path());
        let store = global_table(&engine).await;
        for id in ["a", "b", "c"] {
            put(&store, id).await;
        }
        engine
            .snapshot()
            .expect("snapshot")
            .read_log(1, 10, usize::MAX)
            .expect("log")
    };
    // Rewrite the first two entries the way the previous build stored them: the bare change.
    let database = open_raw(dir.path());
    let txn = database.begin_write().expect("write");
    {
        let mut log = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("replog"))
            .expect("log");
        for (seq, change) in &changes[..2] {
            log.insert(*seq, change.as_slice()).expect("rewrite");
        }
    }
    txn.commit().expect("commit");
    drop(database);

    let engine = open(dir.path());
    let store = Store::new(engine.clone());
    put(&store, "d").await;
    let snapshot = engine.snapshot().expect("snapshot");
    let read = snapshot.read_log(1, 10, usize::MAX).expect("log");
    assert_eq!(read.len(), 4);
    assert_eq!(
        &read[..3],
        &changes[..],
        "old and new entries read back as the same changes"
    );
    let total: u64 = read.iter().map(|(_, c)| c.len() as u64).sum();
    assert_eq!(snapshot.log_bytes_after(0).expect("bytes"), total);
    assert_eq!(
        snapshot.log_bytes_after(3).expect("bytes"),
        read[3].1.len() as u64,
        "counted entries give exact pending bytes"
    );
}

#[tokio::test]
async fn a_delete_of_an_item_not_here_yet_wins_over_the_older_write_arriving_later() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = open(dir.path());
    let store = global_table(&engine).await;
    delete(&store, "late").await;
    assert_eq!(
        engine.tombstone_entries(),
        1,
        "the delete is a tombstone though nothing was here"
    );
    // The item's older put, written elsewhere before the delete, arrives now.
    let table = engine.table("carts").expect("table");
    let mut item = dynamo_protocol::Item::new();
    item.insert("id".into(), dynamo_protocol::AttributeValue::S("late".into()));
    let key = store::engine::key_of(table.key_hash, &table.key, &item).expect("key");
    let older = store::record::encode(&store::record::Record {
        hlc: 1 << 16,
        origin: "eu-west-1".into(),
        tombstone: false,
        item,
    });
    let applied = engine
        .write(move |context| context.apply_replicated(&table, &key, &older))
        .await
        .expect("apply");
    assert!(!applied, "the older write loses to the delete");
    assert!(!present(&store, "late").await);
}

/// Every record of `carts` with its HLC, by the item's `id`.
fn stamps(engine: &Engine) -> std::collections::BTreeMap<String, u64> {
    let table = engine.table("carts").expect("table");
    let snapshot = engine.snapshot().expect("snapshot");
    let root = replication::digest::Range::new(0, 0).expect("the whole key space");
    snapshot
        .records_in(&table, root, None, 1_000)
        .expect("records")
        .into_iter()
        .map(|(_, bytes)| {
            let record = store::record::decode(&bytes).expect("record");
            let id = match record.item.get("id") {
                Some(dynamo_protocol::AttributeValue::S(id)) => id.clone(),
                _ => String::new(),
            };
            (id, record.hlc)
        })
        .collect()
}

/// A peer whose clock runs two minutes ahead sends a write: it applies, but this region's
/// clock does not follow it past `clock_offset_max_ms`, so unrelated local writes keep real
/// time; a local write replacing that very item still orders after it (or it would lose).
#[tokio::test]
async fn a_peer_clock_far_ahead_does_not_drag_local_stamps_into_its_future() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = open(dir.path());
    engine.set_clock_offset_max_ms(1_000);
    let store = global_table(&engine).await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    };
    let table = engine.table("carts").expect("table");
    let mut item = dynamo_protocol::Item::new();
    item.insert("id".into(), dynamo_protocol::AttributeValue::S("ahead".into()));
    let key = store::engine::key_of(table.key_hash, &table.key, &item).expect("key");
    let future = replication::Hlc::from_parts(now_ms() + 120_000, 0).0;
    let record = store::record::encode(&store::record::Record {
        hlc: future,
        origin: "eu-west-1".into(),
        tombstone: false,
        item,
    });
    let applied = engine
        .write(move |context| context.apply_replicated(&table, &key, &record))
        .await
        .expect("apply");
    assert!(applied, "the peer's write applies");
    assert_eq!(engine.clock_capped_total(), 1);
    let bound = |hlc: u64| (hlc >> replication::hlc::LOGICAL_BITS) <= now_ms() + 1_000;
    assert!(bound(engine.clock_last()), "the clock stays within the bound");

    // After a restart the clock still knows a stored stamp runs ahead of it.
    drop(store);
    drop(engine);
    let engine = open(dir.path());
    engine.set_clock_offset_max_ms(1_000);
    assert!(bound(engine.clock_last()), "the clock resumes within the bound");
    let store = Store::new(engine.clone());
    put(&store, "mine").await;
    put(&store, "ahead").await;
    let stamps = stamps(&engine);
    assert!(
        bound(stamps["mine"]),
        "an unrelated local write is stamped near real time"
    );
    assert!(
        stamps["ahead"] > future,
        "a local write replacing the future-stamped item orders after it"
    );
    assert!(present(&store, "ahead").await);
}

/// Puts items `{prefix}-00 ..` of about `size` bytes each in one BatchWriteItem: one write
/// job, so one batch.
async fn put_batch(store: &Store, prefix: &str, count: usize, size: usize) {
    let requests: Vec<Value> = (0..count)
        .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("{prefix}-{i:02}")}, "pad": {"S": "p".repeat(size)}}}}))
        .collect();
    ok(store, "BatchWriteItem", json!({"RequestItems": {"carts": requests}})).await;
}

/// The replication log's stored entries: each key (the entry's last sequence number) and size.
fn log_entries(dir: &std::path::Path) -> Vec<(u64, usize)> {
    let database = open_raw(dir);
    let txn = redb::ReadableDatabase::begin_read(&database).expect("read");
    let log = txn
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("replog"))
        .expect("log");
    redb::ReadableTable::iter(&log)
        .expect("entries")
        .map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.value(), value.value().len())
        })
        .collect()
}

#[tokio::test]
async fn a_batchs_changes_share_one_log_block_read_from_any_change_and_trimmed_whole() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sizes: Vec<u64> = {
        let engine = open(dir.path());
        let store = global_table(&engine).await;
        put(&store, "first").await;
        put_batch(&store, "batch", 25, 10).await;
        put(&store, "last").await;
        assert_eq!(engine.log_head(), 27);
        let read = engine
            .snapshot()
            .expect("snapshot")
            .read_log(1, 1_000, usize::MAX)
            .expect("log");
        assert_eq!(
            read.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (1..=27).collect::<Vec<u64>>()
        );
        read.iter().map(|(_, change)| change.len() as u64).collect()
    };
    let entries = log_entries(dir.path());
    assert_eq!(
        entries.iter().map(|(key, _)| *key).collect::<Vec<_>>(),
        vec![1, 26, 27],
        "one entry per batch, keyed by its last change"
    );

    let engine = open(dir.path());
    let snapshot = engine.snapshot().expect("snapshot");
    let all = snapshot.read_log(1, 1_000, usize::MAX).expect("log");
    // From the middle of the block, bounded by count and by bytes, as the shipper reads.
    let middle = snapshot.read_log(10, 5, usize::MAX).expect("log");
    assert_eq!(middle, all[9..14].to_vec(), "five changes from the block's tenth");
    let across = snapshot.read_log(25, 10, usize::MAX).expect("log");
    assert_eq!(across, all[24..].to_vec(), "from the block into the next entry");
    let two = (sizes[11] + sizes[12]) as usize;
    assert_eq!(snapshot.read_log(12, 1_000, two).expect("log"), all[11..13].to_vec());
    assert!(snapshot.read_log(28, 10, usize::MAX).expect("log").is_empty());
    assert_eq!(snapshot.log_first(27).expect("first"), 1);
    for acked in 0..=27u64 {
        assert_eq!(
            snapshot.log_bytes_after(acked).expect("bytes"),
            sizes[acked as usize..].iter().sum::<u64>(),
            "bytes pending after {acked}"
        );
    }
    let bound: u64 = sizes[13..].iter().sum::<u64>() + 1;
    // Change 13 is the first whose count reaches the bound; it lies inside the block of
    // changes 2..=26, which is trimmed whole, so the log keeps no more than the bound.
    let point = snapshot.trim_point_for_bytes(bound).expect("trim point");
    assert_eq!(point, 26, "through the end of the block holding change 13");
    assert!(snapshot.log_bytes_after(point).expect("bytes") <= bound);
    drop(snapshot);

    // A trim point inside the block drops what is before the block and keeps the block whole.
    assert_eq!(engine.trim_log(13).await.expect("trim"), 2);
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.log_first(27).expect("first"), 2);
    assert_eq!(snapshot.read_log(2, 1_000, usize::MAX).expect("log"), all[1..].to_vec());
    assert_eq!(
        snapshot.read_log(1, 1, usize::MAX).expect("log")[0].0,
        2,
        "a trimmed position reads from the first change held"
    );
    for acked in [1u64, 13, 26] {
        assert_eq!(
            snapshot.log_bytes_after(acked).expect("bytes"),
            sizes[acked as usize..].iter().sum::<u64>(),
            "bytes pending after {acked} once the block's predecessor is trimmed"
        );
    }
    drop(snapshot);
    assert_eq!(engine.trim_log(25).await.expect("trim"), 2, "the block still holds 26");
    assert_eq!(engine.trim_log(26).await.expect("trim"), 27, "now the block goes whole");
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.log_first(27).expect("first"), 27);
    assert_eq!(snapshot.log_bytes_after(26).expect("bytes"), sizes[26]);
    assert_eq!(
        snapshot.log_bytes_after(5).expect("bytes"),
        sizes[26],
        "a trimmed position needs everything still held"
    );
    assert_eq!(snapshot.read_log(5, 10, usize::MAX).expect("log"), all[26..].to_vec());
    drop(snapshot);
    assert_eq!(engine.trim_log(27).await.expect("trim"), 28);
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(
        snapshot.log_first(27).expect("first"),
        28,
        "empty: the head's successor"
    );
    assert_eq!(snapshot.log_bytes_after(27).expect("bytes"), 0);
}

#[tokio::test]
async fn a_batch_bigger_than_a_block_fills_several() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let count = 8;
    let size = store::engine::LOG_BLOCK_BYTES_MAX / 3;
    {
        let engine = open(dir.path());
        let store = global_table(&engine).await;
        put_batch(&store, "big", count, size).await;
        let read = engine
            .snapshot()
            .expect("snapshot")
            .read_log(1, 1_000, usize::MAX)
            .expect("log");
        assert_eq!(read.len(), count);
    }
    let entries = log_entries(dir.path());
    assert!(entries.len() >= 2, "one batch, several blocks: {entries:?}");
    assert_eq!(entries.last().map(|(key, _)| *key), Some(count as u64));
    for (key, bytes) in &entries {
        assert!(
            *bytes <= store::engine::APPEND_ENTRY_BYTES_MAX,
            "block {key} of {bytes} bytes: every block fits one page"
        );
    }
}

#[tokio::test]
async fn a_log_of_one_change_per_entry_reads_trims_and_grows_in_blocks() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (changes, total) = {
        let engine = open(dir.path());
        let store = global_table(&engine).await;
        put_batch(&store, "old", 6, 10).await;
        let snapshot = engine.snapshot().expect("snapshot");
        let changes = snapshot.read_log(1, 10, usize::MAX).expect("log");
        (changes, snapshot.log_bytes_after(0).expect("bytes"))
    };
    // Store the changes the way the build before blocks did: one entry per change, keyed by
    // its sequence number, holding tag 1, the byte count through it (big-endian), the change.
    let database = open_raw(dir.path());
    let txn = database.begin_write().expect("write");
    {
        let mut log = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("replog"))
            .expect("log");
        log.retain(|_, _| false).expect("clear");
        let mut end = total - changes.iter().map(|(_, c)| c.len() as u64).sum::<u64>();
        for (seq, change) in &changes {
            end += change.len() as u64;
            let mut entry = vec![1u8];
            entry.extend_from_slice(&end.to_be_bytes());
            entry.extend_from_slice(change);
            log.insert(*seq, entry.as_slice()).expect("rewrite");
        }
    }
    txn.commit().expect("commit");
    drop(database);
    assert_eq!(log_entries(dir.path()).len(), 6);

    let engine = open(dir.path());
    let store = Store::new(engine.clone());
    put_batch(&store, "new", 4, 10).await;
    let snapshot = engine.snapshot().expect("snapshot");
    let read = snapshot.read_log(1, 100, usize::MAX).expect("log");
    assert_eq!(read.len(), 10);
    assert_eq!(&read[..6], &changes[..], "old entries read back as the same changes");
    let sizes: Vec<u64> = read.iter().map(|(_, c)| c.len() as u64).collect();
    for acked in 0..=10u64 {
        assert_eq!(
            snapshot.log_bytes_after(acked).expect("bytes"),
            sizes[acked as usize..].iter().sum::<u64>(),
            "bytes pending after {acked}"
        );
    }
    assert_eq!(snapshot.read_log(4, 4, usize::MAX).expect("log"), read[3..7].to_vec());
    let bound: u64 = sizes[3..].iter().sum::<u64>() + 1;
    assert_eq!(snapshot.trim_point_for_bytes(bound).expect("trim point"), 3);
    drop(snapshot);
    assert_eq!(
        engine.trim_log(3).await.expect("trim"),
        4,
        "old entries trim one by one"
    );
    assert_eq!(engine.trim_log(8).await.expect("trim"), 7, "the new block stays whole");
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.log_first(10).expect("first"), 7);
    assert_eq!(snapshot.read_log(7, 100, usize::MAX).expect("log"), read[6..].to_vec());
    assert_eq!(
        snapshot.log_bytes_after(3).expect("bytes"),
        sizes[6..].iter().sum::<u64>()
    );
}
