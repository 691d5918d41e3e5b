//! Data directories written before the store moved to redb 4: their `store.redb` is in redb's
//! file format v2, which redb 4 refuses. The engine upgrades such a file in place at open
//! (`engine::recovery::OLD_FILE_FORMAT`). The files here were made by the release before the
//! move (`tests/fixtures/make-redb2-fixtures.py` says how).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use store::engine::EngineOptions;
use store::{Engine, Store, SystemClock};

/// A data directory holding the (gunzipped) fixture as its `store.redb`.
fn data_dir_from(fixture: &str) -> tempfile::TempDir {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let compressed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut file = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_slice())
        .read_to_end(&mut file)
        .expect("gunzip the fixture");
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("store.redb"), file).expect("write store.redb");
    dir
}

fn open(dir: &Path) -> Store {
    let options = EngineOptions {
        disk: store::disk::DiskSettings {
            free_bytes_min: Some(0),
            reserve_bytes: 0,
        },
        ..EngineOptions::default()
    };
    let engine = Engine::open_with(dir, "us-east-1", Arc::new(SystemClock), options).expect("open the engine");
    Store::new(engine)
}

async fn call(store: &Store, operation: &str, body: Value) -> Value {
    let body = body.to_string();
    let answer = match operation {
        "DescribeStream" | "GetShardIterator" | "GetRecords" => {
            store::streams::api::handle(store.engine(), operation, body.as_bytes())
                .await
                .map(|answer| serde_json::from_slice(&answer).expect("a Streams answer is JSON"))
        }
        _ => store.handle(operation, body.as_bytes()).await,
    };
    answer.unwrap_or_else(|e| panic!("{operation}: {e}"))
}

/// Every item of `table`, by Scan.
async fn scan(store: &Store, table: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut request = json!({"TableName": table, "ConsistentRead": true});
    loop {
        let page = call(store, "Scan", request.clone()).await;
        items.extend(page["Items"].as_array().expect("Items").iter().cloned());
        match page.get("LastEvaluatedKey") {
            Some(key) => request["ExclusiveStartKey"] = key.clone(),
            None => return items,
        }
    }
}

/// The `id`s in `plain`.
async fn plain_ids(store: &Store) -> Vec<String> {
    let mut ids: Vec<String> = scan(store, "plain")
        .await
        .iter()
        .map(|item| item["id"]["S"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

/// What the old release wrote to both fixtures before the clean close or the crash.
async fn assert_the_old_data(store: &Store) {
    let table = call(store, "DescribeTable", json!({"TableName": "orders"})).await;
    assert_eq!(table["Table"]["ItemCount"], json!(60));
    assert_eq!(
        table["Table"]["GlobalSecondaryIndexes"][0]["IndexName"],
        json!("by-status")
    );
    assert_eq!(
        table["Table"]["StreamSpecification"]["StreamViewType"],
        json!("NEW_AND_OLD_IMAGES")
    );

    let shipped = call(
        store,
        "Query",
        json!({"TableName": "orders", "IndexName": "by-status", "KeyConditionExpression": "#s = :s",
               "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "shipped"}}}),
    )
    .await;
    // sk 0, 3, ..., 57 were written shipped, and sk 1 was updated to it.
    assert_eq!(shipped["Count"], json!(21), "{shipped}");

    let item = call(
        store,
        "GetItem",
        json!({"TableName": "orders", "Key": {"pk": {"S": "c1"}, "sk": {"N": "1"}}, "ConsistentRead": true}),
    )
    .await;
    assert_eq!(item["Item"]["status"], json!({"S": "shipped"}));
    assert_eq!(item["Item"]["note"]["S"].as_str().map(str::len), Some(200));

    // The stream kept its records: 60 INSERTs and the MODIFY.
    let arn = table["Table"]["LatestStreamArn"].as_str().expect("LatestStreamArn");
    let described = call(store, "DescribeStream", json!({"StreamArn": arn})).await;
    let mut names = Vec::new();
    for shard in described["StreamDescription"]["Shards"].as_array().expect("Shards") {
        let request = json!({"StreamArn": arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"});
        let mut iterator = call(store, "GetShardIterator", request).await["ShardIterator"].clone();
        while iterator.is_string() {
            let page = call(store, "GetRecords", json!({"ShardIterator": iterator})).await;
            let records = page["Records"].as_array().expect("Records");
            if records.is_empty() {
                break;
            }
            names.extend(
                records
                    .iter()
                    .map(|r| r["eventName"].as_str().expect("eventName").to_string()),
            );
            iterator = page["NextShardIterator"].clone();
        }
    }
    assert_eq!(names.iter().filter(|n| *n == "INSERT").count(), 60, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "MODIFY").count(), 1, "{names:?}");
}

/// The upgraded file is in redb 4's format: redb 4 opens it directly, and the store takes
/// writes and reopens with them.
async fn assert_upgraded_and_writable(dir: &Path, store: Store) {
    call(
        &store,
        "PutItem",
        json!({"TableName": "plain", "Item": {"id": {"S": "after-upgrade"}}}),
    )
    .await;
    assert!(store.engine().close().await, "the closing checkpoint committed");
    drop(store);
    let reopened = open_again(dir);
    let opened = reopened.engine().writer_status().opened;
    assert!(!opened.repaired && !opened.upgraded, "{opened:?}");
    assert!(plain_ids(&reopened).await.contains(&"after-upgrade".to_string()));
    assert_the_old_data(&reopened).await;
    drop(reopened);
    let raw = open_raw(dir);
    let txn = redb::ReadableDatabase::begin_read(&raw).expect("read");
    assert!(txn.list_tables().expect("tables").count() > 2);
}

/// Opens the store again once the dropped one's writer has let the file go.
fn open_again(dir: &Path) -> Store {
    for _ in 0..2_000 {
        match Engine::open_with(dir, "us-east-1", Arc::new(SystemClock), EngineOptions::default()) {
            Ok(engine) => return Store::new(engine),
            Err(error) if error.to_string().contains("already open") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(error) => panic!("reopen: {error}"),
        }
    }
    panic!("the dropped store never let its file go");
}

fn open_raw(dir: &Path) -> redb::Database {
    for _ in 0..2_000 {
        match redb::Database::open(dir.join("store.redb")) {
            Ok(db) => return db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(error) => panic!("redb 4 opens the upgraded file: {error}"),
        }
    }
    panic!("the dropped store never let its file go");
}

#[tokio::test]
async fn a_store_file_of_the_previous_release_is_upgraded_in_place_and_loses_nothing() {
    let dir = data_dir_from("redb2-clean.redb.gz");
    // redb 4 alone refuses the file.
    match redb::Database::open(dir.path().join("store.redb")) {
        Err(redb::DatabaseError::UpgradeRequired(2)) => {}
        other => panic!("expected UpgradeRequired(2), got {:?}", other.map(|_| ())),
    }
    let store = open(dir.path());
    assert!(store.engine().writer_status().opened.upgraded);
    assert_the_old_data(&store).await;
    let expected: Vec<String> = (1..20).map(|i| format!("p{i}")).collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(plain_ids(&store).await, expected);
    assert_upgraded_and_writable(dir.path(), store).await;
}

#[tokio::test]
async fn a_crashed_store_file_of_the_previous_release_is_repaired_then_upgraded() {
    let dir = data_dir_from("redb2-crashed.redb.gz");
    let store = open(dir.path());
    assert_the_old_data(&store).await;
    // The client wrote w0, w1, ... one at a time, each after the last was acknowledged: what
    // the crash kept is a prefix of them, and not an empty one (a second of writes ran).
    let ids = plain_ids(&store).await;
    let written: Vec<u64> = ids
        .iter()
        .filter_map(|id| id.strip_prefix('w'))
        .map(|n| n.parse().expect("w number"))
        .collect();
    assert!(
        !written.is_empty(),
        "the crash image holds no acknowledged write: {ids:?}"
    );
    let mut sorted = written.clone();
    sorted.sort_unstable();
    let prefix: Vec<u64> = (0..sorted.len() as u64).collect();
    assert_eq!(sorted, prefix, "the writes kept are not a prefix");
    assert!(ids.contains(&"p19".to_string()) && !ids.contains(&"p0".to_string()));
    assert_upgraded_and_writable(dir.path(), store).await;
}

#[test]
fn a_damaged_file_of_the_previous_release_gets_the_damaged_file_hint_and_is_left_alone() {
    let dir = data_dir_from("redb2-clean.redb.gz");
    let path = dir.path().join("store.redb");
    let whole = std::fs::read(&path).expect("read");
    // Cut short: redb 4 still sees format v2, and redb 2 asserts on the file.
    let damaged = whole[..whole.len() / 2].to_vec();
    std::fs::write(&path, &damaged).expect("write");
    let error = match Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), EngineOptions::default()) {
        Ok(_) => panic!("a damaged file opened"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("damaged") && error.contains("Move store.redb aside"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        damaged,
        "the damaged file was changed"
    );
}
