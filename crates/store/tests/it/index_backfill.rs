//! A global secondary index created by UpdateTable on a table with items: live for writes at
//! once, filled in bounded background jobs, unreadable until filled, counted exactly, and
//! resumed where it was after a restart.

use dynamo_protocol::ErrorKind;
use serde_json::{Value, json};
use store::engine::{BackfillStep, INDEX_BACKFILL_ITEMS_PER_JOB};

use crate::support::{Calls, Opened, on_demand_table, open, open_raw};

/// Items in the table before the index: more than two backfill jobs' worth.
const ITEMS: usize = INDEX_BACKFILL_ITEMS_PER_JOB * 5 / 2;

/// `shop` of item `n`: every third item has none (left out of the index), every fifth a number
/// (the wrong type: left out too).
fn shop_of(n: usize) -> Option<Value> {
    match n {
        n if n % 3 == 0 => None,
        n if n % 5 == 0 => Some(json!({"N": n.to_string()})),
        n => Some(json!({"S": format!("shop-{}", n % 7)})),
    }
}

async fn fill(h: &Opened) {
    h.ok("CreateTable", on_demand_table("orders", "id")).await;
    for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(25) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|&n| {
                let mut item = json!({"id": {"S": format!("order-{n:05}")}, "total": {"N": n.to_string()}});
                if let Some(shop) = shop_of(n) {
                    item["shop"] = shop;
                }
                json!({"PutRequest": {"Item": item}})
            })
            .collect();
        h.ok("BatchWriteItem", json!({"RequestItems": {"orders": requests}}))
            .await;
    }
}

/// UpdateTable creating global index `by_shop` (hash key `shop`) of `orders` with `projection`.
pub(crate) fn create_by_shop_with(projection: &str) -> Value {
    json!({
        "TableName": "orders",
        "AttributeDefinitions": [{"AttributeName": "shop", "AttributeType": "S"}],
        "GlobalSecondaryIndexUpdates": [{"Create": {
            "IndexName": "by_shop",
            "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": projection}
        }}]
    })
}

fn create_by_shop() -> Value {
    create_by_shop_with("ALL")
}

async fn index_description(h: &Opened) -> Value {
    let described = h.ok("DescribeTable", json!({"TableName": "orders"})).await;
    described["Table"]["GlobalSecondaryIndexes"][0].clone()
}

/// Every item the index holds, by a paginated Scan of it: `(id, shop)`.
async fn scan_index(h: &Opened) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut start: Option<Value> = None;
    loop {
        let mut request = json!({"TableName": "orders", "IndexName": "by_shop"});
        if let Some(start) = start.take() {
            request["ExclusiveStartKey"] = start;
        }
        let page = h.ok("Scan", request).await;
        for item in page["Items"].as_array().expect("Items") {
            let id = item["id"]["S"].as_str().expect("id").to_string();
            let shop = item["shop"]["S"].as_str().expect("shop").to_string();
            out.push((id, shop));
        }
        match page.get("LastEvaluatedKey") {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    out.sort();
    out
}

/// Every item of the table whose `shop` the index holds (a string), by a Scan of the table.
async fn expected_entries(h: &Opened) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut start: Option<Value> = None;
    loop {
        let mut request = json!({"TableName": "orders"});
        if let Some(start) = start.take() {
            request["ExclusiveStartKey"] = start;
        }
        let page = h.ok("Scan", request).await;
        for item in page["Items"].as_array().expect("Items") {
            if let Some(shop) = item["shop"]["S"].as_str() {
                out.push((item["id"]["S"].as_str().expect("id").to_string(), shop.to_string()));
            }
        }
        match page.get("LastEvaluatedKey") {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    out.sort();
    out
}

pub(crate) async fn step(h: &Opened) -> BackfillStep {
    let engine = h.store.engine().clone();
    let table = engine.table("orders").expect("table");
    engine
        .write_exclusive(move |context| context.backfill_index_step(&table, "by_shop"))
        .await
        .expect("a backfill job")
}

fn put(id: &str, shop: Option<&str>) -> Value {
    let mut item = json!({"id": {"S": id}, "total": {"N": "1"}});
    if let Some(shop) = shop {
        item["shop"] = json!({"S": shop});
    }
    json!({"TableName": "orders", "Item": item})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_filled_in_bounded_jobs_while_writes_go_on_and_counts_each_item_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    fill(&h).await;

    let answer = h.ok("UpdateTable", create_by_shop()).await;
    let created = &answer["TableDescription"]["GlobalSecondaryIndexes"][0];
    // As DynamoDB answers: CREATING, Backfilling false (its first phase); then the copy.
    assert_eq!(created["IndexStatus"], "CREATING");
    assert_eq!(created["Backfilling"], false);
    let described = index_description(&h).await;
    assert_eq!(
        (&described["IndexStatus"], &described["Backfilling"]),
        (&json!("CREATING"), &json!(true))
    );

    // Unreadable until filled, with DynamoDB's answer.
    let query = json!({"TableName": "orders", "IndexName": "by_shop",
        "KeyConditionExpression": "shop = :s", "ExpressionAttributeValues": {":s": {"S": "shop-1"}}});
    let refused = h.err("Query", query.clone()).await;
    assert_eq!(refused.kind, ErrorKind::Validation);
    assert_eq!(
        refused.message,
        "Cannot read from backfilling global secondary index: by_shop"
    );
    let refused = h
        .err("Scan", json!({"TableName": "orders", "IndexName": "by_shop"}))
        .await;
    assert!(refused.message.contains("backfilling"), "{}", refused.message);
    // A write that violates the new key is taken while the index fills (and left out of it),
    // as DynamoDB documents; refused once the index is ACTIVE (below).
    let wrong = json!({"TableName": "orders", "Item": {"id": {"S": "wrong-type"}, "shop": {"N": "1"}}});
    h.ok("PutItem", wrong.clone()).await;

    // One job copies one job's worth, in key order, and the index stays CREATING.
    assert_eq!(step(&h).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));
    assert_eq!(index_description(&h).await["IndexStatus"], "CREATING");

    // Writes between jobs, spread over the key space (stored keys are in hash order), so on
    // both sides of where the backfill is: changed, emptied, deleted and new items.
    for n in (0..ITEMS).step_by(12) {
        h.ok(
            "PutItem",
            put(&format!("order-{n:05}"), Some(&format!("moved-{}", n % 4))),
        )
        .await;
    }
    for n in (1..ITEMS).step_by(12) {
        h.ok("PutItem", put(&format!("order-{n:05}"), None)).await;
    }
    for n in (2..ITEMS).step_by(12) {
        h.ok(
            "DeleteItem",
            json!({"TableName": "orders", "Key": {"id": {"S": format!("order-{n:05}")}}}),
        )
        .await;
    }
    for n in 0..100 {
        h.ok("PutItem", put(&format!("new-{n}"), Some("shop-1"))).await;
    }

    let mut steps = 1;
    loop {
        match step(&h).await {
            BackfillStep::Copied(n) => assert!(n <= INDEX_BACKFILL_ITEMS_PER_JOB),
            BackfillStep::Finished(_) => break,
            other => panic!("unexpected {other:?}"),
        }
        steps += 1;
        assert!(steps < 10, "the backfill does not end");
    }
    assert_eq!(step(&h).await, BackfillStep::Gone, "nothing left to do once ACTIVE");

    let described = index_description(&h).await;
    assert_eq!(described["IndexStatus"], "ACTIVE");
    let refused = h.err("PutItem", wrong).await;
    assert!(refused.message.contains("mismatch"), "{}", refused.message);
    assert!(described.get("Backfilling").is_none(), "{described}");
    let held = scan_index(&h).await;
    let expected = expected_entries(&h).await;
    assert_eq!(held, expected);
    assert!(held.contains(&("order-00012".into(), "moved-0".into())));
    assert!(!held.iter().any(|(id, _)| id == "order-00013" || id == "order-00014"));
    // Counted once each, whether the backfill or a write put it there first.
    assert_eq!(described["ItemCount"], json!(expected.len()));
    assert_eq!(
        h.ok("Query", query).await["Count"],
        json!(expected.iter().filter(|(_, s)| s == "shop-1").count())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_resumes_after_a_restart_where_it_was() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let h = open(dir.path());
        fill(&h).await;
        h.ok("UpdateTable", create_by_shop()).await;
        assert_eq!(step(&h).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));
        assert!(h.store.engine().close().await);
    }
    let h = open(dir.path());
    assert_eq!(index_description(&h).await["Backfilling"], true);
    // What is left is what the first job did not copy: the restart goes on from there.
    assert_eq!(step(&h).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));
    assert_eq!(
        step(&h).await,
        BackfillStep::Finished(ITEMS - 2 * INDEX_BACKFILL_ITEMS_PER_JOB)
    );
    let expected = expected_entries(&h).await;
    assert_eq!(scan_index(&h).await, expected);
    assert_eq!(index_description(&h).await["ItemCount"], json!(expected.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_index_change_at_a_time_and_a_backfilling_index_can_be_deleted() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    fill(&h).await;
    h.ok("UpdateTable", create_by_shop()).await;
    assert_eq!(step(&h).await, BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB));

    // Another index while this one fills: DynamoDB's LimitExceededException.
    let other = json!({
        "TableName": "orders",
        "AttributeDefinitions": [{"AttributeName": "total", "AttributeType": "N"}],
        "GlobalSecondaryIndexUpdates": [{"Create": {
            "IndexName": "by_total",
            "KeySchema": [{"AttributeName": "total", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"}
        }}]
    });
    let refused = h.err("UpdateTable", other.clone()).await;
    assert_eq!(refused.kind, ErrorKind::LimitExceeded);

    // The filling index itself can go (DynamoDB: while Backfilling is true); its job ends.
    // The answer lists it DELETING, as DynamoDB's does; DescribeTable no longer does.
    let deleted = h
        .ok(
            "UpdateTable",
            json!({"TableName": "orders", "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": "by_shop"}}]}),
        )
        .await;
    let listed = &deleted["TableDescription"]["GlobalSecondaryIndexes"];
    assert_eq!(
        (&listed[0]["IndexName"], &listed[0]["IndexStatus"]),
        (&json!("by_shop"), &json!("DELETING"))
    );
    let described = h.ok("DescribeTable", json!({"TableName": "orders"})).await;
    assert!(
        described["Table"].get("GlobalSecondaryIndexes").is_none(),
        "{described}"
    );
    assert_eq!(step(&h).await, BackfillStep::Gone);

    // Made again under the same name, it starts from the first item, not where the old one was.
    h.ok("UpdateTable", create_by_shop()).await;
    h.store.engine().finish_index_backfills().await.expect("backfill");
    let expected = expected_entries(&h).await;
    assert_eq!(scan_index(&h).await, expected);
    assert_eq!(index_description(&h).await["ItemCount"], json!(expected.len()));

    // And once it is ACTIVE the other index may come.
    h.ok("UpdateTable", other).await;

    // A table deleted while an index fills: its job finds nothing to do.
    h.store.engine().finish_index_backfills().await.expect("backfill");
    h.ok(
        "UpdateTable",
        json!({"TableName": "orders", "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": "by_total"}}]}),
    )
    .await;
    h.ok(
        "UpdateTable",
        json!({"TableName": "orders", "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": "by_shop"}}]}),
    )
    .await;
    h.ok("UpdateTable", create_by_shop()).await;
    let table = h.store.engine().table("orders").expect("table");
    h.ok("DeleteTable", json!({"TableName": "orders"})).await;
    assert!(h.store.engine().backfilling_indexes().is_empty());
    let engine = h.store.engine().clone();
    let step = engine
        .write_exclusive(move |context| context.backfill_index_step(&table, "by_shop"))
        .await
        .expect("a backfill job");
    assert_eq!(step, BackfillStep::Gone);

    // Nothing of the dropped table's backfill is left in storage.
    assert!(h.store.engine().close().await);
    drop((h, engine));
    let database = open_raw(dir.path());
    let read = redb::ReadableDatabase::begin_read(&database).expect("read");
    let backfills = read.open_table(INDEX_BACKFILLS).expect("index_backfills");
    assert_eq!(redb::ReadableTableMetadata::len(&backfills).expect("len"), 0);
}

const INDEX_BACKFILLS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("index_backfills");

async fn ttl_step(h: &Opened) -> Option<BackfillStep> {
    h.store
        .engine()
        .write_exclusive(|context| context.backfill_ttl_step())
        .await
        .expect("a TTL backfill job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_enabled_on_a_table_with_items_is_filled_in_bounded_jobs_and_expires_them() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    fill(&h).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // Every other item expired a minute ago; the rest expire in a day.
    for n in 0..ITEMS {
        let exp = if n % 2 == 0 { now - 60 } else { now + 86_400 };
        h.ok(
            "UpdateItem",
            json!({"TableName": "orders", "Key": {"id": {"S": format!("order-{n:05}")}},
                   "UpdateExpression": "SET exp = :e", "ExpressionAttributeValues": {":e": {"N": exp.to_string()}}}),
        )
        .await;
    }
    // Nothing to fill before TTL is on.
    assert_eq!(ttl_step(&h).await, None);
    let ttl = |enabled: bool| json!({"TableName": "orders", "TimeToLiveSpecification": {"Enabled": enabled, "AttributeName": "exp"}});
    h.ok("UpdateTimeToLive", ttl(true)).await;
    let described = h.ok("DescribeTimeToLive", json!({"TableName": "orders"})).await;
    assert_eq!(described["TimeToLiveDescription"]["TimeToLiveStatus"], "ENABLED");

    // One job reaches one job's worth of items: only those can expire yet.
    assert_eq!(
        ttl_step(&h).await,
        Some(BackfillStep::Copied(INDEX_BACKFILL_ITEMS_PER_JOB))
    );
    let engine = h.store.engine().clone();
    let mut expired = 0;
    loop {
        match engine.expire_once().await.expect("sweep") {
            0 => break,
            n => expired += n,
        }
    }
    assert!(
        expired > 0 && expired <= INDEX_BACKFILL_ITEMS_PER_JOB,
        "{expired} expired after one job"
    );
    loop {
        match ttl_step(&h).await {
            Some(BackfillStep::Copied(_)) => {}
            Some(BackfillStep::Finished(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ttl_step(&h).await, None);
    while engine.expire_once().await.expect("sweep") > 0 {}
    let left = h.ok("Scan", json!({"TableName": "orders", "Select": "COUNT"})).await;
    assert_eq!(left["Count"], json!(ITEMS / 2), "every expired item deleted, no other");

    // Disabled while a fill is under way: the fill is dropped with the index.
    h.ok("UpdateTimeToLive", ttl(false)).await;
    h.ok(
        "UpdateTimeToLive",
        json!({"TableName": "orders", "TimeToLiveSpecification": {"Enabled": true, "AttributeName": "total"}}),
    )
    .await;
    assert!(matches!(ttl_step(&h).await, Some(BackfillStep::Copied(_))));
    h.ok(
        "UpdateTimeToLive",
        json!({"TableName": "orders", "TimeToLiveSpecification": {"Enabled": false, "AttributeName": "total"}}),
    )
    .await;
    assert_eq!(ttl_step(&h).await, None);
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An item of the differential test: `shop` (the index's partition key; sometimes missing or a
/// number, left out), `total` (its sort key), `note` (projected), `other` (not projected).
fn random_item(rng: &mut Rng, id: &str) -> Value {
    let mut item = json!({"id": {"S": id}, "other": {"S": "x".repeat(rng.below(40) as usize)}});
    match rng.below(6) {
        0 => {}
        // Writes refuse the wrong type once the index exists: only the items before it.
        1 if !id.starts_with('k') => item["shop"] = json!({"N": rng.below(9).to_string()}),
        1 => {}
        _ => item["shop"] = json!({"S": format!("shop-{}", rng.below(5))}),
    }
    if rng.below(5) != 0 {
        item["total"] = json!({"N": rng.below(1000).to_string()});
    }
    if rng.below(2) == 0 {
        item["note"] = json!({"S": "n".repeat(rng.below(60) as usize)});
    }
    item
}

fn by_shop_total() -> Value {
    json!({
        "IndexName": "by_shop_total",
        "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}, {"AttributeName": "total", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["note"]}
    })
}

/// Every item of `table`, by a paginated Scan (of `index` when given), sorted by id.
pub(crate) async fn scan_all(h: &Opened, table: &str, index: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut start: Option<Value> = None;
    loop {
        let mut request = json!({"TableName": table});
        if let Some(index) = index {
            request["IndexName"] = json!(index);
        }
        if let Some(start) = start.take() {
            request["ExclusiveStartKey"] = start;
        }
        let page = h.ok("Scan", request).await;
        out.extend(page["Items"].as_array().expect("Items").iter().cloned());
        match page.get("LastEvaluatedKey") {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    out.sort_by(|a, b| a["id"]["S"].as_str().cmp(&b["id"]["S"].as_str()));
    out
}

/// Every write path (PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems,
/// PartiQL) interleaved at random with backfill jobs: the index filled online ends exactly as
/// one made with the table and given the same items, entries, ItemCount and IndexSizeBytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_filled_online_under_random_writes_equals_one_made_with_the_table() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    h.ok("CreateTable", on_demand_table("orders", "id")).await;
    const KEYS: u64 = 3_000;
    let id = |n: u64| format!("k{n:05}");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(25) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|&n| {
                let mut item = random_item(&mut rng, &format!("old{n:05}"));
                item["id"] = json!({"S": id(n)});
                json!({"PutRequest": {"Item": item}})
            })
            .collect();
        h.ok("BatchWriteItem", json!({"RequestItems": {"orders": requests}}))
            .await;
    }
    h.ok(
        "UpdateTable",
        json!({
            "TableName": "orders",
            "AttributeDefinitions": [{"AttributeName": "shop", "AttributeType": "S"}, {"AttributeName": "total", "AttributeType": "N"}],
            "GlobalSecondaryIndexUpdates": [{"Create": by_shop_total()}]
        }),
    )
    .await;
    let engine = h.store.engine().clone();
    let step_once = || {
        let engine = engine.clone();
        async move {
            let table = engine.table("orders").expect("table");
            engine
                .write_exclusive(move |context| context.backfill_index_step(&table, "by_shop_total"))
                .await
                .expect("a backfill job")
        }
    };
    let mut finished = false;
    let mut round = 0;
    while !finished || round < 60 {
        round += 1;
        for _ in 0..rng.below(60) {
            // Keys beyond KEYS are new items.
            let key = id(rng.below(KEYS + KEYS / 4));
            let answer = match rng.below(7) {
                0 => {
                    h.call("PutItem", json!({"TableName": "orders", "Item": random_item(&mut rng, &key)}))
                        .await
                }
                1 => {
                    let update = match rng.below(4) {
                        0 => "REMOVE shop",
                        1 => "SET note = :n",
                        2 => "SET total = :t",
                        _ => "SET shop = :s, note = :n",
                    };
                    let mut values = serde_json::Map::new();
                    if update.contains(":n") {
                        values.insert(":n".into(), json!({"S": "m".repeat(rng.below(30) as usize)}));
                    }
                    if update.contains(":t") {
                        values.insert(":t".into(), json!({"N": rng.below(1000).to_string()}));
                    }
                    if update.contains(":s") {
                        values.insert(":s".into(), json!({"S": format!("shop-{}", rng.below(5))}));
                    }
                    let mut request =
                        json!({"TableName": "orders", "Key": {"id": {"S": key}}, "UpdateExpression": update});
                    if !values.is_empty() {
                        request["ExpressionAttributeValues"] = Value::Object(values);
                    }
                    h.call("UpdateItem", request).await
                }
                2 => {
                    h.call("DeleteItem", json!({"TableName": "orders", "Key": {"id": {"S": key}}}))
                        .await
                }
                3 => {
                    // New keys in a row: the fast path for items stored nowhere yet.
                    let start = KEYS + rng.below(KEYS);
                    let requests: Vec<Value> = (start..start + 25)
                        .map(|n| json!({"PutRequest": {"Item": random_item(&mut rng, &id(n))}}))
                        .collect();
                    h.call("BatchWriteItem", json!({"RequestItems": {"orders": requests}}))
                        .await
                }
                4 => {
                    let start = rng.below(KEYS);
                    let requests: Vec<Value> = (start..start + 10)
                        .map(|n| {
                            if rng.below(3) == 0 {
                                json!({"DeleteRequest": {"Key": {"id": {"S": id(n)}}}})
                            } else {
                                json!({"PutRequest": {"Item": random_item(&mut rng, &id(n))}})
                            }
                        })
                        .collect();
                    h.call("BatchWriteItem", json!({"RequestItems": {"orders": requests}}))
                        .await
                }
                5 => {
                    let other = id(rng.below(KEYS));
                    let third = id(rng.below(KEYS));
                    if other == key || third == key || other == third {
                        continue;
                    }
                    h.call(
                        "TransactWriteItems",
                        json!({"TransactItems": [
                            {"Put": {"TableName": "orders", "Item": random_item(&mut rng, &key)}},
                            {"Delete": {"TableName": "orders", "Key": {"id": {"S": other}}}},
                            {"Update": {"TableName": "orders", "Key": {"id": {"S": third}},
                                "UpdateExpression": "SET shop = :s",
                                "ExpressionAttributeValues": {":s": {"S": "shop-tx"}}}}
                        ]}),
                    )
                    .await
                }
                _ => {
                    h.call(
                        "ExecuteStatement",
                        json!({"Statement": format!("UPDATE \"orders\" SET note = 'pq' SET shop = 'shop-pq' WHERE id = '{key}'")}),
                    )
                    .await
                }
            };
            if let Err(error) = answer {
                // A PartiQL UPDATE of an item that is not there, say.
                assert!(
                    matches!(error.kind, ErrorKind::ConditionalCheckFailed | ErrorKind::Validation),
                    "{error}"
                );
            }
        }
        if !finished && rng.below(3) != 0 {
            finished = matches!(step_once().await, BackfillStep::Finished(_));
        }
    }

    // The reference: the same items in a table made with the index.
    h.ok(
        "CreateTable",
        json!({
            "TableName": "reference",
            "AttributeDefinitions": [
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "shop", "AttributeType": "S"},
                {"AttributeName": "total", "AttributeType": "N"}
            ],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [by_shop_total()],
            "BillingMode": "PAY_PER_REQUEST"
        }),
    )
    .await;
    let items = scan_all(&h, "orders", None).await;
    for item in &items {
        let mut item = item.clone();
        // The reference refuses the items the index leaves out (a number shop): those go in
        // without it, as the index holds nothing of them either way.
        if item.get("shop").is_some_and(|s| s.get("N").is_some()) {
            item.as_object_mut().expect("item").remove("shop");
        }
        h.ok("PutItem", json!({"TableName": "reference", "Item": item})).await;
    }
    let held = scan_all(&h, "orders", Some("by_shop_total")).await;
    let expected = scan_all(&h, "reference", Some("by_shop_total")).await;
    assert_eq!(held.len(), expected.len(), "entries");
    assert_eq!(held, expected);
    let describe = |table: &'static str| {
        let h = &h;
        async move {
            let described = h.ok("DescribeTable", json!({"TableName": table})).await;
            let index = described["Table"]["GlobalSecondaryIndexes"][0].clone();
            (index["ItemCount"].clone(), index["IndexSizeBytes"].clone())
        }
    };
    assert_eq!(describe("orders").await, describe("reference").await);
    assert_eq!(describe("orders").await.0, json!(expected.len()));
}

/// A DeleteTable that read the table before an UpdateTable creating an index committed (it
/// queued behind it) drops that index's storage and counters too, not only its backfill
/// entry: the table's storage id is never used again, so what it left would stay on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_deleted_behind_an_index_creation_leaves_none_of_the_index_behind() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    fill(&h).await;
    let engine = h.store.engine().clone();
    let id = engine.table("orders").expect("table").id;
    let held = crate::support::HeldWriter::hold(&engine).await;
    let idle = engine.write_queue_free();
    let handle = |operation: &'static str, body: Value| {
        let store = h.store.clone();
        async move { store.handle(operation, body.to_string().as_bytes()).await }
    };
    let create = tokio::spawn(handle("UpdateTable", create_by_shop()));
    crate::support::wait_for_queue_free(&engine, idle - 1).await;
    // A write the new index gets (it is live for writes at once): a counter of it.
    let put = tokio::spawn(handle("PutItem", put("order-new", Some("shop-1"))));
    crate::support::wait_for_queue_free(&engine, idle - 2).await;
    // DeleteTable reads the table without the index (still queued) and queues its drop.
    let delete = tokio::spawn(handle("DeleteTable", json!({"TableName": "orders"})));
    crate::support::wait_for_queue_free(&engine, idle - 3).await;
    held.release().await;
    create.await.expect("task").expect("UpdateTable");
    put.await.expect("task").expect("PutItem");
    delete.await.expect("task").expect("DeleteTable");
    assert!(engine.table("orders").is_none());

    assert!(engine.close().await);
    drop((h, engine));
    let database = open_raw(dir.path());
    let read = redb::ReadableDatabase::begin_read(&database).expect("read");
    let prefix = format!("x{id}/");
    let left: Vec<String> = read
        .list_tables()
        .expect("tables")
        .map(|t| redb::TableHandle::name(&t).to_string())
        .filter(|name| name.starts_with(&prefix) || *name == format!("d{id}"))
        .collect();
    assert!(left.is_empty(), "storage of the deleted table left: {left:?}");
    let stats = read
        .open_table(redb::TableDefinition::<&str, (u64, u64)>::new("stats"))
        .expect("stats");
    let counters: Vec<String> = redb::ReadableTable::iter(&stats)
        .expect("iter")
        .map(|entry| entry.expect("entry").0.value().to_string())
        .filter(|key| key.starts_with(&format!("{id}/")) || *key == id.to_string())
        .collect();
    assert!(counters.is_empty(), "counters of the deleted table left: {counters:?}");
}
