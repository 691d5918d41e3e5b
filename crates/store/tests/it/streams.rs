//! DynamoDB Streams through the store's entry points, with a clock the tests move: records
//! written with the items (single, batch, transactional, TTL), iterators of every type,
//! expiry, shard rollover, retention, and the stream's life across UpdateTable/DeleteTable.

use dynamo_protocol::ErrorKind;
use serde_json::{Value, json};
use store::streams::{ITERATOR_LIFETIME_MS, StreamLimits};

use crate::support::{Calls, ClockedStore, START_MS, on_demand_table};

/// This module's helpers on a [`ClockedStore`].
struct Streams;

type Harness = ClockedStore<Streams>;

impl Harness {
    async fn create(&self, name: &str, view_type: Option<&str>) -> Value {
        let mut request = on_demand_table(name, "id");
        if let Some(view_type) = view_type {
            request["StreamSpecification"] = json!({"StreamEnabled": true, "StreamViewType": view_type});
        }
        self.ok("CreateTable", request).await["TableDescription"].clone()
    }

    async fn put(&self, table: &str, id: &str, value: i64) {
        self.ok(
            "PutItem",
            json!({"TableName": table, "Item": {"id": {"S": id}, "v": {"N": value.to_string()}}}),
        )
        .await;
    }

    /// Items b00..b24 in one BatchWriteItem: one job, so one batch of the writer.
    async fn put_25_in_one_batch(&self, table: &str) {
        let puts: Vec<Value> = (0..25)
            .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("b{i:02}")}}}}))
            .collect();
        self.ok("BatchWriteItem", json!({"RequestItems": {table: puts}})).await;
    }

    async fn stream_arn(&self, table: &str) -> String {
        let table = self.ok("DescribeTable", json!({"TableName": table})).await;
        table["Table"]["LatestStreamArn"]
            .as_str()
            .expect("LatestStreamArn")
            .to_string()
    }

    async fn shards(&self, arn: &str) -> Vec<Value> {
        let description = self.ok("DescribeStream", json!({"StreamArn": arn})).await;
        description["StreamDescription"]["Shards"]
            .as_array()
            .expect("shards")
            .clone()
    }

    async fn iterator(&self, arn: &str, shard: &str, kind: &str, sequence: Option<&str>) -> String {
        let mut request = json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": kind});
        if let Some(sequence) = sequence {
            request["SequenceNumber"] = json!(sequence);
        }
        self.ok("GetShardIterator", request).await["ShardIterator"]
            .as_str()
            .expect("iterator")
            .to_string()
    }

    /// Every record of every shard from the trim horizon, in order.
    async fn all_records(&self, arn: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for shard in self.shards(arn).await {
            let id = shard["ShardId"].as_str().expect("shard id");
            let mut iterator = Some(self.iterator(arn, id, "TRIM_HORIZON", None).await);
            while let Some(current) = iterator {
                let page = self.ok("GetRecords", json!({"ShardIterator": current})).await;
                let records = page["Records"].as_array().expect("records").clone();
                let empty = records.is_empty();
                out.extend(records);
                iterator = page["NextShardIterator"].as_str().map(String::from);
                if empty && shard["SequenceNumberRange"].get("EndingSequenceNumber").is_none() {
                    break;
                }
            }
        }
        out
    }
}

fn names(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["eventName"].as_str().expect("eventName"))
        .collect()
}

async fn every_kind_of_write_is_recorded_once_in_order(h: Harness) {
    let created = h.create("items", Some("NEW_AND_OLD_IMAGES")).await;
    assert_eq!(
        created["StreamSpecification"],
        json!({"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    );
    let label = created["LatestStreamLabel"].as_str().expect("label");
    assert_eq!(label.len(), "2027-01-15T08:00:00.000".len());
    let arn = h.stream_arn("items").await;
    assert_eq!(
        arn,
        format!("arn:aws:dynamodb:us-east-1:000000000000:table/items/stream/{label}")
    );
    h.put("items", "a", 1).await;
    h.put("items", "a", 1).await; // changes nothing: no record
    h.ok(
        "UpdateItem",
        json!({"TableName": "items", "Key": {"id": {"S": "a"}}, "UpdateExpression": "SET v = :v",
               "ExpressionAttributeValues": {":v": {"N": "2"}}}),
    )
    .await;
    h.ok(
        "BatchWriteItem",
        json!({"RequestItems": {"items": [
            {"PutRequest": {"Item": {"id": {"S": "b"}}}},
            {"DeleteRequest": {"Key": {"id": {"S": "a"}}}}
        ]}}),
    )
    .await;
    h.ok(
        "DeleteItem",
        json!({"TableName": "items", "Key": {"id": {"S": "missing"}}}),
    )
    .await; // deletes nothing: no record
    h.ok(
        "TransactWriteItems",
        json!({"TransactItems": [
            {"Put": {"TableName": "items", "Item": {"id": {"S": "c"}}}},
            {"Delete": {"TableName": "items", "Key": {"id": {"S": "b"}}}}
        ]}),
    )
    .await;
    let records = h.all_records(&arn).await;
    // DynamoDB orders a stream's records per item, not across the items of one BatchWriteItem:
    // the store records a batch's deletes and replacements in request order, then its new
    // items in key order (`put_new_items`), so b's INSERT follows a's REMOVE here.
    assert_eq!(
        names(&records),
        ["INSERT", "MODIFY", "REMOVE", "INSERT", "INSERT", "REMOVE"]
    );
    let modify = &records[1]["dynamodb"];
    assert_eq!(modify["OldImage"]["v"], json!({"N": "1"}));
    assert_eq!(modify["NewImage"]["v"], json!({"N": "2"}));
    // Old images are copied from the stored item this region wrote: whole, as it was.
    assert_eq!(modify["OldImage"], json!({"id": {"S": "a"}, "v": {"N": "1"}}));
    assert_eq!(
        records[2]["dynamodb"]["OldImage"],
        json!({"id": {"S": "a"}, "v": {"N": "2"}})
    );
    let sequences: Vec<&str> = records
        .iter()
        .map(|r| r["dynamodb"]["SequenceNumber"].as_str().expect("sequence"))
        .collect();
    let mut sorted = sequences.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, sequences, "sequence numbers increase");
    assert!(sequences.iter().all(|s| s.len() >= 21));
}

async fn iterator_types_position_as_dynamodb_does(h: Harness) {
    h.create("items", Some("KEYS_ONLY")).await;
    let arn = h.stream_arn("items").await;
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        h.put("items", id, i as i64).await;
    }
    let shards = h.shards(&arn).await;
    assert_eq!(shards.len(), 1);
    let shard = shards[0]["ShardId"].as_str().expect("shard").to_string();
    assert!(shards[0]["SequenceNumberRange"].get("EndingSequenceNumber").is_none());
    let latest = h.iterator(&arn, &shard, "LATEST", None).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": latest})).await;
    assert_eq!(page["Records"], json!([]), "LATEST starts after the last record");
    let next = page["NextShardIterator"]
        .as_str()
        .expect("an open shard always has a next iterator");
    h.put("items", "d", 3).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": next})).await;
    assert_eq!(page["Records"][0]["dynamodb"]["Keys"], json!({"id": {"S": "d"}}));
    assert!(page["Records"][0]["dynamodb"].get("NewImage").is_none(), "KEYS_ONLY");

    let horizon = h.iterator(&arn, &shard, "TRIM_HORIZON", None).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": horizon, "Limit": 2})).await;
    let first_two = page["Records"].as_array().expect("records").clone();
    assert_eq!(first_two.len(), 2, "Limit bounds the page");
    let second = first_two[1]["dynamodb"]["SequenceNumber"].as_str().expect("seq");
    let at = h.iterator(&arn, &shard, "AT_SEQUENCE_NUMBER", Some(second)).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": at, "Limit": 1})).await;
    assert_eq!(page["Records"][0]["dynamodb"]["SequenceNumber"], json!(second));
    let after = h.iterator(&arn, &shard, "AFTER_SEQUENCE_NUMBER", Some(second)).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": after, "Limit": 1})).await;
    assert_eq!(page["Records"][0]["dynamodb"]["Keys"], json!({"id": {"S": "c"}}));

    for limit in [0, 1001] {
        let error = h
            .err("GetRecords", json!({"ShardIterator": after, "Limit": limit}))
            .await;
        assert_eq!(error.kind, ErrorKind::Validation, "Limit {limit}");
    }
    let error = h
        .err(
            "GetShardIterator",
            json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "AT_SEQUENCE_NUMBER"}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation, "AT_SEQUENCE_NUMBER needs a number");
    let error = h
        .err(
            "GetShardIterator",
            json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                   "SequenceNumber": "999999999999999999999"}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation, "a sequence number never issued");
    let error = h
        .err(
            "GetShardIterator",
            json!({"StreamArn": arn, "ShardId": "shardId-00000000000000000000-00000000", "ShardIteratorType": "LATEST"}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::ResourceNotFound);

    h.advance(ITERATOR_LIFETIME_MS + 1);
    let error = h.err("GetRecords", json!({"ShardIterator": after})).await;
    assert_eq!(error.kind, ErrorKind::ExpiredIterator);
}

async fn shards_roll_over_by_count_and_age_with_lineage(h: Harness) {
    h.engine.set_stream_limits(StreamLimits {
        shard_records_max: 2,
        ..StreamLimits::default()
    });
    h.create("items", Some("NEW_IMAGE")).await;
    let arn = h.stream_arn("items").await;
    for i in 0..5 {
        h.put("items", &format!("k{i}"), i).await;
    }
    let shards = h.shards(&arn).await;
    assert_eq!(shards.len(), 3, "{shards:?}");
    for pair in shards.windows(2) {
        assert_eq!(pair[1]["ParentShardId"], pair[0]["ShardId"]);
        let ending = pair[0]["SequenceNumberRange"]["EndingSequenceNumber"]
            .as_str()
            .expect("a closed parent has an end");
        let starting = pair[1]["SequenceNumberRange"]["StartingSequenceNumber"]
            .as_str()
            .expect("start");
        assert!(ending < starting);
    }
    assert!(shards[0].get("ParentShardId").is_none());
    // A closed shard's reader gets no next iterator once it reached the end.
    let first = shards[0]["ShardId"].as_str().expect("shard");
    let iterator = h.iterator(&arn, first, "TRIM_HORIZON", None).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": iterator})).await;
    assert_eq!(page["Records"].as_array().map(Vec::len), Some(2));
    assert!(page.get("NextShardIterator").is_none());
    let records = h.all_records(&arn).await;
    assert_eq!(records.len(), 5);

    // By age: a shard older than the bound closes at the next write.
    h.engine.set_stream_limits(StreamLimits {
        shard_age_ms: 60_000,
        ..StreamLimits::default()
    });
    h.advance(60_000);
    h.put("items", "late", 9).await;
    assert_eq!(h.shards(&arn).await.len(), 4);
    // DescribeStream pages through shards.
    let page = h.ok("DescribeStream", json!({"StreamArn": arn, "Limit": 3})).await;
    let last = page["StreamDescription"]["LastEvaluatedShardId"]
        .as_str()
        .expect("more shards");
    let rest = h
        .ok(
            "DescribeStream",
            json!({"StreamArn": arn, "ExclusiveStartShardId": last}),
        )
        .await;
    assert_eq!(rest["StreamDescription"]["Shards"].as_array().map(Vec::len), Some(1));
    assert!(rest["StreamDescription"].get("LastEvaluatedShardId").is_none());
}

/// Checks what DescribeStream and GetRecords say of a stream against each other: every record
/// once, sequence numbers increasing across shards, each shard's range holding exactly its
/// records, every shard but the last closed, and each child naming its parent.
async fn check_lineage(h: &Harness, arn: &str) -> (Vec<Value>, Vec<Value>) {
    let shards = h.shards(arn).await;
    let mut records = Vec::new();
    let mut previous_end = String::new();
    for (index, shard) in shards.iter().enumerate() {
        let id = shard["ShardId"].as_str().expect("shard id");
        let range = &shard["SequenceNumberRange"];
        let start = range["StartingSequenceNumber"].as_str().expect("start").to_string();
        let end = range.get("EndingSequenceNumber").and_then(Value::as_str);
        assert_eq!(
            end.is_none(),
            index + 1 == shards.len(),
            "only the last shard is open: {shards:?}"
        );
        if index > 0 {
            assert_eq!(shard["ParentShardId"], shards[index - 1]["ShardId"]);
        }
        let mut iterator = Some(h.iterator(arn, id, "TRIM_HORIZON", None).await);
        let mut own = Vec::new();
        while let Some(current) = iterator {
            let page = h.ok("GetRecords", json!({"ShardIterator": current})).await;
            let page_records = page["Records"].as_array().expect("records").clone();
            let empty = page_records.is_empty();
            own.extend(page_records);
            iterator = page["NextShardIterator"].as_str().map(String::from);
            if empty && end.is_none() {
                break;
            }
        }
        for record in &own {
            let sequence = record["dynamodb"]["SequenceNumber"]
                .as_str()
                .expect("sequence")
                .to_string();
            assert!(sequence > previous_end, "{sequence} after {previous_end}");
            assert!(sequence >= start, "{sequence} before its shard's start {start}");
            if let Some(end) = end {
                assert!(sequence.as_str() <= end, "{sequence} after its shard's end {end}");
            }
            previous_end = sequence;
        }
        if let (Some(end), Some(last)) = (end, own.last()) {
            assert_eq!(
                last["dynamodb"]["SequenceNumber"], end,
                "a closed shard ends at its last record"
            );
        }
        records.extend(own);
    }
    (shards, records)
}

async fn appends_in_one_batch_roll_shards_over_and_keep_their_order(h: Harness) {
    h.engine.set_stream_limits(StreamLimits {
        shard_records_max: 4,
        ..StreamLimits::default()
    });
    h.create("items", Some("KEYS_ONLY")).await;
    let arn = h.stream_arn("items").await;
    // One job of 25 puts: one batch, six rollovers inside it.
    h.put_25_in_one_batch("items").await;
    let (shards, records) = check_lineage(&h, &arn).await;
    assert_eq!(records.len(), 25);
    assert_eq!(shards.len(), 7, "25 records, 4 a shard: {shards:?}");
    // Concurrent jobs, which the writer groups into batches: eight keys written five times
    // each with the same item, so only each key's first write changes anything (and records).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = h.store.clone();
        let request = json!({"TableName": "items", "Item": {"id": {"S": format!("c{}", i % 8)}, "v": {"N": "7"}}});
        tasks.spawn(async move { store.handle("PutItem", request.to_string().as_bytes()).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("the task ran").expect("PutItem succeeded");
    }
    let (shards, records) = check_lineage(&h, &arn).await;
    let inserts = records.iter().filter(|r| r["eventName"] == "INSERT").count();
    assert_eq!((records.len(), inserts), (33, 33));
    assert_eq!(shards.len(), records.len().div_ceil(4), "{shards:?}");
}

async fn iterators_and_limits_reach_into_the_middle_of_a_batchs_block(h: Harness) {
    h.create("items", Some("KEYS_ONLY")).await;
    let arn = h.stream_arn("items").await;
    // One job of 25 puts: one batch, its records stored in a block or a few page-sized ones.
    h.put_25_in_one_batch("items").await;
    let shards = h.shards(&arn).await;
    assert_eq!(shards.len(), 1);
    let shard = shards[0]["ShardId"].as_str().expect("shard").to_string();
    let all = h.all_records(&arn).await;
    let seqs: Vec<String> = all
        .iter()
        .map(|r| r["dynamodb"]["SequenceNumber"].as_str().expect("seq").to_string())
        .collect();
    assert_eq!(seqs.len(), 25);
    let key = |r: &Value| r["dynamodb"]["Keys"]["id"]["S"].as_str().expect("key").to_string();
    // AT and AFTER a sequence number inside the block.
    let at = h.iterator(&arn, &shard, "AT_SEQUENCE_NUMBER", Some(&seqs[10])).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": at, "Limit": 3})).await;
    let got: Vec<String> = page["Records"].as_array().expect("records").iter().map(key).collect();
    // The batch's new items are recorded in key order (`put_new_items`), not request order.
    let expected: Vec<String> = all[10..13].iter().map(key).collect();
    assert_eq!(got, expected);
    // The next page starts where the limit stopped, still inside the block.
    let next = page["NextShardIterator"].as_str().expect("open shard").to_string();
    let page = h.ok("GetRecords", json!({"ShardIterator": next, "Limit": 2})).await;
    let got: Vec<String> = page["Records"].as_array().expect("records").iter().map(key).collect();
    assert_eq!(got, all[13..15].iter().map(key).collect::<Vec<_>>());
    let after = h.iterator(&arn, &shard, "AFTER_SEQUENCE_NUMBER", Some(&seqs[23])).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": after})).await;
    let got: Vec<String> = page["Records"].as_array().expect("records").iter().map(key).collect();
    assert_eq!(got, [key(&all[24])]);
    // Later writes (other batches) follow the block, in order.
    h.put("items", "later", 1).await;
    let page = h
        .ok("GetRecords", json!({"ShardIterator": page["NextShardIterator"]}))
        .await;
    let got: Vec<String> = page["Records"].as_array().expect("records").iter().map(key).collect();
    assert_eq!(got, ["later"]);
}

async fn retention_trims_records_and_forgets_disabled_streams(h: Harness) {
    h.engine.set_stream_limits(StreamLimits {
        retention_ms: 10_000,
        shard_records_max: 1,
        ..StreamLimits::default()
    });
    h.create("items", Some("NEW_IMAGE")).await;
    let arn = h.stream_arn("items").await;
    h.put("items", "old", 1).await;
    let shards = h.shards(&arn).await;
    let shard = shards[0]["ShardId"].as_str().expect("shard").to_string();
    let stale = h.iterator(&arn, &shard, "TRIM_HORIZON", None).await;
    h.advance(5_000);
    h.put("items", "new", 2).await;
    h.advance(6_000);
    assert_eq!(h.engine.trim_streams_once().await.expect("sweep"), 1);
    let error = h.err("GetRecords", json!({"ShardIterator": stale})).await;
    assert_eq!(error.kind, ErrorKind::TrimmedDataAccess);
    let shards = h.shards(&arn).await;
    assert!(
        shards.iter().all(|s| s["ShardId"] != json!(shard)),
        "the trimmed shard is gone"
    );
    let records = h.all_records(&arn).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["dynamodb"]["Keys"], json!({"id": {"S": "new"}}));

    // Disabling keeps the stream readable (DISABLED) until retention ends.
    h.ok(
        "UpdateTable",
        json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": false}}),
    )
    .await;
    // DISABLING for a moment, as DynamoDB reports it, then DISABLED.
    let description = h.ok("DescribeStream", json!({"StreamArn": arn})).await;
    assert_eq!(description["StreamDescription"]["StreamStatus"], "DISABLING");
    h.advance(store::streams::STATUS_TRANSITION_MS);
    let description = h.ok("DescribeStream", json!({"StreamArn": arn})).await;
    assert_eq!(description["StreamDescription"]["StreamStatus"], "DISABLED");
    assert_eq!(h.all_records(&arn).await.len(), 1);
    h.put("items", "unrecorded", 3).await;
    assert_eq!(h.all_records(&arn).await.len(), 1, "a disabled stream records nothing");
    h.advance(10_000);
    h.engine.trim_streams_once().await.expect("sweep");
    let error = h.err("DescribeStream", json!({"StreamArn": arn})).await;
    assert_eq!(error.kind, ErrorKind::ResourceNotFound);
    let listed = h.ok("ListStreams", json!({"TableName": "items"})).await;
    assert_eq!(listed["Streams"], json!([]));
}

async fn update_table_follows_dynamodbs_stream_rules(h: Harness) {
    h.create("items", None).await;
    let error = h
        .err(
            "UpdateTable",
            json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": false}}),
        )
        .await;
    assert_eq!(error.message, "Table has no stream to disable: TableName: items");
    let enabled = h
        .ok(
            "UpdateTable",
            json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "OLD_IMAGE"}}),
        )
        .await;
    let first_arn = enabled["TableDescription"]["LatestStreamArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let error = h
        .err(
            "UpdateTable",
            json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "KEYS_ONLY"}}),
        )
        .await;
    assert_eq!(error.message, "Table already has an enabled stream: TableName: items");
    let disabled = h
        .ok(
            "UpdateTable",
            json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": false}}),
        )
        .await;
    assert!(disabled["TableDescription"].get("StreamSpecification").is_none());
    assert_eq!(disabled["TableDescription"]["LatestStreamArn"], json!(first_arn));
    let reenabled = h
        .ok(
            "UpdateTable",
            json!({"TableName": "items", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}}),
        )
        .await;
    let second_arn = reenabled["TableDescription"]["LatestStreamArn"]
        .as_str()
        .expect("arn")
        .to_string();
    assert_ne!(first_arn, second_arn, "re-enabling mints a new stream");
    h.put("items", "a", 1).await;
    assert_eq!(h.all_records(&second_arn).await.len(), 1);
    assert_eq!(h.all_records(&first_arn).await.len(), 0);

    // ListStreams pages by ARN; deleting the table leaves its streams DISABLED and listed.
    let page = h.ok("ListStreams", json!({"Limit": 1})).await;
    assert_eq!(page["Streams"][0]["StreamArn"], json!(first_arn));
    assert_eq!(page["Streams"][0]["TableName"], "items");
    let last = page["LastEvaluatedStreamArn"].as_str().expect("a second page");
    let rest = h
        .ok("ListStreams", json!({"Limit": 1, "ExclusiveStartStreamArn": last}))
        .await;
    assert_eq!(rest["Streams"][0]["StreamArn"], json!(second_arn));
    assert!(rest.get("LastEvaluatedStreamArn").is_none());
    h.ok("DeleteTable", json!({"TableName": "items"})).await;
    h.advance(store::streams::STATUS_TRANSITION_MS);
    let description = h.ok("DescribeStream", json!({"StreamArn": second_arn})).await;
    assert_eq!(description["StreamDescription"]["StreamStatus"], "DISABLED");
    assert_eq!(h.all_records(&second_arn).await.len(), 1);
    // TableName filters: no such table lists no streams.
    let none = h.ok("ListStreams", json!({"TableName": "nothing-here"})).await;
    assert_eq!(none, json!({"Streams": []}));
}

async fn ttl_deletions_carry_the_service_identity(h: Harness) {
    h.create("items", Some("NEW_AND_OLD_IMAGES")).await;
    h.ok(
        "UpdateTimeToLive",
        json!({"TableName": "items", "TimeToLiveSpecification": {"Enabled": true, "AttributeName": "expires"}}),
    )
    .await;
    let arn = h.stream_arn("items").await;
    let expires = START_MS / 1000 + 5;
    h.ok(
        "PutItem",
        json!({"TableName": "items", "Item": {"id": {"S": "a"}, "expires": {"N": expires.to_string()}}}),
    )
    .await;
    h.ok(
        "DeleteItem",
        json!({"TableName": "items", "Key": {"id": {"S": "missing"}}}),
    )
    .await;
    h.advance(10_000);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
    let records = h.all_records(&arn).await;
    assert_eq!(names(&records), ["INSERT", "REMOVE"]);
    assert!(records[0].get("userIdentity").is_none());
    assert_eq!(
        records[1]["userIdentity"],
        json!({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
    );
    assert_eq!(records[1]["dynamodb"]["OldImage"]["id"], json!({"S": "a"}));
}

async fn get_records_stops_at_one_megabyte(h: Harness) {
    h.create("items", Some("NEW_IMAGE")).await;
    let arn = h.stream_arn("items").await;
    let big = "x".repeat(390 * 1024);
    for id in ["a", "b", "c"] {
        h.ok(
            "PutItem",
            json!({"TableName": "items", "Item": {"id": {"S": id}, "blob": {"S": big}}}),
        )
        .await;
    }
    let shard = h.shards(&arn).await[0]["ShardId"].as_str().expect("shard").to_string();
    let iterator = h.iterator(&arn, &shard, "TRIM_HORIZON", None).await;
    let page = h.ok("GetRecords", json!({"ShardIterator": iterator})).await;
    assert_eq!(
        page["Records"].as_array().map(Vec::len),
        Some(2),
        "1 MB holds two records"
    );
    let next = page["NextShardIterator"].as_str().expect("more to read");
    let rest = h.ok("GetRecords", json!({"ShardIterator": next})).await;
    assert_eq!(rest["Records"][0]["dynamodb"]["Keys"], json!({"id": {"S": "c"}}));
}

/// The items of a BatchWriteItem that no item is stored at go in as sorted runs through redb's
/// write cursor (`WriteContext::put_new_items`); everything a PutItem of each would change must
/// come out the same: the items, the index, the table's counts and the stream's records.
async fn new_items_of_a_batch_are_written_as_the_same_items_put_one_by_one(h: Harness) {
    let item = |pk: &str, sk: u32| {
        json!({"pk": {"S": pk}, "sk": {"N": sk.to_string()}, "g": {"S": format!("g{}", sk % 3)},
               "v": {"S": format!("{pk}-{sk}-{}", "x".repeat(300))}})
    };
    for table in ["runs", "single"] {
        h.ok(
            "CreateTable",
            json!({
                "TableName": table,
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "N"},
                    {"AttributeName": "g", "AttributeType": "S"}
                ],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                "GlobalSecondaryIndexes": [{
                    "IndexName": "by-g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"}
                }],
                "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"},
                "BillingMode": "PAY_PER_REQUEST"
            }),
        )
        .await;
        // Stored before the batch: items it replaces split its new keys into several runs, and
        // a deleted item leaves nothing behind.
        for (pk, sk) in [("p0", 3), ("p0", 10), ("p1", 7), ("p0", 20)] {
            let mut old = item(pk, sk);
            old["v"] = json!({"S": "before"});
            h.ok("PutItem", json!({"TableName": table, "Item": old})).await;
        }
        h.ok(
            "DeleteItem",
            json!({"TableName": table, "Key": {"pk": {"S": "p0"}, "sk": {"N": "20"}}}),
        )
        .await;
    }
    // p0 0..=15 around the stored 3 and 10, p1 0..=8 around 7, and p0 20 where an item was.
    let mut keys: Vec<(&str, u32)> = (0..=15).map(|sk| ("p0", sk)).collect();
    keys.extend((0..=7).map(|sk| ("p1", sk)));
    keys.push(("p0", 20));
    assert_eq!(keys.len(), 25);
    let puts: Vec<Value> = keys
        .iter()
        .rev()
        .map(|(pk, sk)| json!({"PutRequest": {"Item": item(pk, *sk)}}))
        .collect();
    h.ok("BatchWriteItem", json!({"RequestItems": {"runs": puts}})).await;
    for (pk, sk) in keys.iter().rev() {
        h.ok("PutItem", json!({"TableName": "single", "Item": item(pk, *sk)}))
            .await;
    }

    let scan = |table: &'static str| {
        let h = &h;
        async move {
            let mut items = h.ok("Scan", json!({"TableName": table})).await["Items"]
                .as_array()
                .expect("items")
                .clone();
            items.sort_by_key(|i| {
                (
                    i["pk"]["S"].to_string(),
                    i["sk"]["N"].as_str().map(|n| n.parse::<u32>().ok()),
                )
            });
            items
        }
    };
    let (runs, single) = (scan("runs").await, scan("single").await);
    assert_eq!(runs.len(), 25, "the batch's 25 items, 3 of them replacing stored ones");
    assert_eq!(runs, single);
    for g in ["g0", "g1", "g2"] {
        let query = |table: &str| {
            json!({"TableName": table, "IndexName": "by-g", "KeyConditionExpression": "g = :g",
                   "ExpressionAttributeValues": {":g": {"S": g}}})
        };
        let by_runs = h.ok("Query", query("runs")).await["Items"].clone();
        assert!(by_runs.as_array().is_some_and(|items| !items.is_empty()));
        assert_eq!(by_runs, h.ok("Query", query("single")).await["Items"]);
    }
    let counts = |table: Value| {
        (
            table["Table"]["ItemCount"].clone(),
            table["Table"]["TableSizeBytes"].clone(),
        )
    };
    assert_eq!(
        counts(h.ok("DescribeTable", json!({"TableName": "runs"})).await),
        counts(h.ok("DescribeTable", json!({"TableName": "single"})).await)
    );
    let changes = |records: Vec<Value>| {
        let mut changes: Vec<String> = records
            .iter()
            .map(|r| {
                let d = &r["dynamodb"];
                json!([r["eventName"], d["Keys"], d["NewImage"], d["OldImage"], d["SizeBytes"]]).to_string()
            })
            .collect();
        changes.sort();
        changes
    };
    let (arn_runs, arn_single) = (h.stream_arn("runs").await, h.stream_arn("single").await);
    let from_runs = changes(h.all_records(&arn_runs).await);
    assert_eq!(from_runs.len(), 5 + 25, "4 puts and a delete, then the batch");
    assert_eq!(from_runs.iter().filter(|c| c.starts_with("[\"MODIFY\"")).count(), 3);
    assert_eq!(from_runs, changes(h.all_records(&arn_single).await));
}

/// Two streams written in turn number their records with gaps (one counter for all); their
/// shards roll over and close. Every closed shard is read whole in pages of 2, in order, and
/// then ends: none is cut short where a page ends on a block without records past it.
async fn closed_shards_of_interleaved_streams_are_read_whole_in_small_pages(h: Harness) {
    h.engine.set_stream_limits(StreamLimits {
        shard_records_max: 7,
        ..StreamLimits::default()
    });
    h.create("left", Some("KEYS_ONLY")).await;
    h.create("right", Some("KEYS_ONLY")).await;
    for i in 0..30 {
        h.put("left", &format!("l{i:02}"), i).await;
        h.put("right", &format!("r{i:02}"), i).await;
    }
    for table in ["left", "right"] {
        let arn = h.stream_arn(table).await;
        let mut keys = Vec::new();
        let shards = h.shards(&arn).await;
        assert!(shards.len() >= 4, "{shards:?}");
        for shard in &shards {
            let id = shard["ShardId"].as_str().expect("shard");
            let closed = shard["SequenceNumberRange"].get("EndingSequenceNumber").is_some();
            let mut iterator = Some(h.iterator(&arn, id, "TRIM_HORIZON", None).await);
            let mut own = Vec::new();
            while let Some(current) = iterator {
                let page = h.ok("GetRecords", json!({"ShardIterator": current, "Limit": 2})).await;
                let records = page["Records"].as_array().expect("records");
                own.extend(
                    records
                        .iter()
                        .map(|r| r["dynamodb"]["Keys"]["id"]["S"].as_str().expect("key").to_string()),
                );
                iterator = page["NextShardIterator"].as_str().map(str::to_string);
                if !closed && records.is_empty() {
                    break;
                }
            }
            if closed {
                assert_eq!(own.len(), 7, "closed shard {id} read whole: {own:?}");
            }
            keys.extend(own);
        }
        let prefix = &table[..1];
        let expected: Vec<String> = (0..30).map(|i| format!("{prefix}{i:02}")).collect();
        assert_eq!(keys, expected, "{table}");
    }
}

/// Every test above runs twice: with redb's durable commit per batch (the default), and with
/// the write-ahead log, where a batch's stream records stay out of redb until a checkpoint
/// (`engine::streams::RecordOverlay`; no idle checkpoints here, so they stay out unless a
/// trim moves them) and every read merges the two.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod redb_commits {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Harness::new()).await
            })*
        }
        mod write_ahead_log {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Harness::with_write_ahead_log()).await
            })*
        }
    };
}

in_both_modes!(
    every_kind_of_write_is_recorded_once_in_order,
    iterator_types_position_as_dynamodb_does,
    shards_roll_over_by_count_and_age_with_lineage,
    appends_in_one_batch_roll_shards_over_and_keep_their_order,
    iterators_and_limits_reach_into_the_middle_of_a_batchs_block,
    retention_trims_records_and_forgets_disabled_streams,
    update_table_follows_dynamodbs_stream_rules,
    ttl_deletions_carry_the_service_identity,
    get_records_stops_at_one_megabyte,
    new_items_of_a_batch_are_written_as_the_same_items_put_one_by_one,
    closed_shards_of_interleaved_streams_are_read_whole_in_small_pages,
);
