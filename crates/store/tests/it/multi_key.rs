//! Global secondary indexes with multi-attribute keys (several HASH and RANGE attributes), and
//! data directories written before they existed.

use redb::ReadableTable;
use serde_json::{Value, json};

use crate::support::{Calls, open, open_raw};

const CATALOG: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("catalog");

fn match_item(tournament: &str, league: &str, round: &str, game: i64, id: &str) -> Value {
    json!({
        "id": {"S": id}, "tournament": {"S": tournament}, "league": {"S": league},
        "round": {"S": round}, "game": {"N": game.to_string()}, "winner": {"S": "ann"}
    })
}

fn ids(answer: &Value) -> Vec<String> {
    answer["Items"]
        .as_array()
        .expect("Items")
        .iter()
        .map(|i| i["id"]["S"].as_str().expect("id").to_string())
        .collect()
}

fn by_round_query(extra_condition: &str, values: Value) -> Value {
    let mut all = json!({":t": {"S": "winter"}, ":r": {"S": "eu"}});
    for (name, value) in values.as_object().expect("values") {
        all[name] = value.clone();
    }
    json!({
        "TableName": "matches", "IndexName": "by-round",
        "KeyConditionExpression": format!("tournament = :t AND league = :r{extra_condition}"),
        "ExpressionAttributeValues": all
    })
}

/// A table with a plain GSI written by this build is read back as it was written before
/// multi-attribute keys existed, a catalog entry in the old form opens, and a multi-attribute
/// index created then (with a backfill) serves queries and survives reopening.
#[tokio::test]
async fn a_data_directory_from_before_multi_attribute_keys_opens_and_gains_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let h = open(dir.path());
        h.ok(
            "CreateTable",
            json!({
                "TableName": "matches",
                "AttributeDefinitions": [
                    {"AttributeName": "id", "AttributeType": "S"},
                    {"AttributeName": "winner", "AttributeType": "S"}
                ],
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "GlobalSecondaryIndexes": [{
                    "IndexName": "by-winner",
                    "KeySchema": [{"AttributeName": "winner", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"}
                }],
                "BillingMode": "PAY_PER_REQUEST"
            }),
        )
        .await;
        for (id, round, game) in [("m1", "final", 1), ("m2", "semi", 2), ("m3", "semi", 1)] {
            h.ok(
                "PutItem",
                json!({"TableName": "matches", "Item": match_item("winter", "eu", round, game, id)}),
            )
            .await;
        }
        h.ok(
            "PutItem",
            json!({"TableName": "matches", "Item": {"id": {"S": "m4"}, "winner": {"S": "ann"}}}),
        )
        .await;
    }
    {
        // The entry holds the keys in the old form; put the index key back as an older build
        // wrote it, field for field.
        let database = open_raw(dir.path());
        let txn = database.begin_write().expect("write");
        {
            let mut catalog = txn.open_table(CATALOG).expect("catalog");
            let mut entry: Value = {
                let bytes = catalog.get("matches").expect("read").expect("entry");
                serde_json::from_slice(bytes.value()).expect("json")
            };
            let key = &entry["indexes"][0]["key"];
            let fields: Vec<&String> = key.as_object().expect("key").keys().collect();
            assert_eq!(fields, ["partition", "sort"], "a plain key is written in the old form");
            entry["indexes"][0]["key"] =
                serde_json::from_str(r#"{"partition":{"name":"winner","value_type":"S"},"sort":null}"#)
                    .expect("old key");
            let bytes = serde_json::to_vec(&entry).expect("bytes");
            catalog.insert("matches", bytes.as_slice()).expect("write back");
        }
        txn.commit().expect("commit");
    }
    {
        let h = open(dir.path());
        let winners = h
            .ok(
                "Query",
                json!({"TableName": "matches", "IndexName": "by-winner",
                       "KeyConditionExpression": "winner = :w", "ExpressionAttributeValues": {":w": {"S": "ann"}}}),
            )
            .await;
        assert_eq!(winners["Count"], 4);
        h.ok(
            "UpdateTable",
            json!({
                "TableName": "matches",
                "AttributeDefinitions": [
                    {"AttributeName": "tournament", "AttributeType": "S"},
                    {"AttributeName": "league", "AttributeType": "S"},
                    {"AttributeName": "round", "AttributeType": "S"},
                    {"AttributeName": "game", "AttributeType": "N"}
                ],
                "GlobalSecondaryIndexUpdates": [{"Create": {
                    "IndexName": "by-round",
                    "KeySchema": [
                        {"AttributeName": "tournament", "KeyType": "HASH"},
                        {"AttributeName": "league", "KeyType": "HASH"},
                        {"AttributeName": "round", "KeyType": "RANGE"},
                        {"AttributeName": "game", "KeyType": "RANGE"}
                    ],
                    "Projection": {"ProjectionType": "ALL"}
                }}]
            }),
        )
        .await;
        h.store.engine().finish_index_backfills().await.expect("backfill");
        // Backfilled: m4 lacks the key attributes and is left out; (final, 1) < (semi, 1) < (semi, 2).
        assert_eq!(
            ids(&h.ok("Query", by_round_query("", json!({}))).await),
            ["m1", "m3", "m2"]
        );
    }
    let h = open(dir.path());
    let described = h.ok("DescribeTable", json!({"TableName": "matches"})).await;
    let index = described["Table"]["GlobalSecondaryIndexes"]
        .as_array()
        .expect("indexes")
        .iter()
        .find(|i| i["IndexName"] == "by-round")
        .expect("by-round")
        .clone();
    let names: Vec<(&str, &str)> = index["KeySchema"]
        .as_array()
        .expect("KeySchema")
        .iter()
        .map(|e| {
            (
                e["AttributeName"].as_str().expect("name"),
                e["KeyType"].as_str().expect("type"),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("tournament", "HASH"),
            ("league", "HASH"),
            ("round", "RANGE"),
            ("game", "RANGE")
        ]
    );
    assert_eq!(
        ids(&h
            .ok(
                "Query",
                by_round_query(" AND round = :round", json!({":round": {"S": "semi"}}))
            )
            .await),
        ["m3", "m2"]
    );
}

/// Query on a multi-attribute key: equality on the partition attributes, a left-to-right
/// prefix of sort equalities, one range condition on the next, pages that resume from
/// LastEvaluatedKey, and DynamoDB's refusals.
#[tokio::test]
async fn multi_attribute_index_queries_follow_the_left_to_right_rule() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let h = open(dir.path());
    h.ok(
        "CreateTable",
        json!({
            "TableName": "matches",
            "AttributeDefinitions": [
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "tournament", "AttributeType": "S"},
                {"AttributeName": "league", "AttributeType": "S"},
                {"AttributeName": "round", "AttributeType": "S"},
                {"AttributeName": "game", "AttributeType": "N"}
            ],
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{
                "IndexName": "by-round",
                "KeySchema": [
                    {"AttributeName": "tournament", "KeyType": "HASH"},
                    {"AttributeName": "league", "KeyType": "HASH"},
                    {"AttributeName": "round", "KeyType": "RANGE"},
                    {"AttributeName": "game", "KeyType": "RANGE"}
                ],
                "Projection": {"ProjectionType": "ALL"}
            }],
            "BillingMode": "PAY_PER_REQUEST"
        }),
    )
    .await;
    // Games 2 and 10 sort numerically; another league is another partition.
    for (id, league, round, game) in [
        ("a", "eu", "quarter", 10),
        ("b", "eu", "quarter", 2),
        ("c", "eu", "semi", 1),
        ("d", "us", "quarter", 1),
    ] {
        h.ok(
            "PutItem",
            json!({"TableName": "matches", "Item": match_item("winter", league, round, game, id)}),
        )
        .await;
    }
    assert_eq!(
        ids(&h.ok("Query", by_round_query("", json!({}))).await),
        ["b", "a", "c"]
    );
    let q = |condition: &str, values: Value| by_round_query(condition, values);
    assert_eq!(
        ids(&h
            .ok(
                "Query",
                q(
                    " AND round = :x AND game > :g",
                    json!({":x": {"S": "quarter"}, ":g": {"N": "2"}})
                )
            )
            .await),
        ["a"]
    );
    assert_eq!(
        ids(&h
            .ok("Query", q(" AND begins_with(round, :x)", json!({":x": {"S": "qu"}})))
            .await),
        ["b", "a"]
    );
    let mut descending = q(" AND round <= :x", json!({":x": {"S": "semi"}}));
    descending["ScanIndexForward"] = json!(false);
    assert_eq!(ids(&h.ok("Query", descending).await), ["c", "a", "b"]);
    // Pages of one item resume from LastEvaluatedKey, which names every key attribute.
    let mut seen = Vec::new();
    let mut start: Option<Value> = None;
    for _ in 0..5 {
        let mut page = q("", json!({}));
        page["Limit"] = json!(1);
        if let Some(start) = start.take() {
            page["ExclusiveStartKey"] = start;
        }
        let answer = h.ok("Query", page).await;
        seen.extend(ids(&answer));
        match answer.get("LastEvaluatedKey") {
            Some(last) => {
                let mut names: Vec<&String> = last.as_object().expect("key").keys().collect();
                names.sort();
                assert_eq!(names, ["game", "id", "league", "round", "tournament"]);
                start = Some(last.clone());
            }
            None => break,
        }
    }
    assert_eq!(seen, ["b", "a", "c"]);
    // Refusals.
    let refused = |body: Value| async { h.err("Query", body).await.message };
    let only_one = json!({"TableName": "matches", "IndexName": "by-round",
        "KeyConditionExpression": "tournament = :t", "ExpressionAttributeValues": {":t": {"S": "winter"}}});
    assert_eq!(
        refused(only_one).await,
        "HASH key attributes league must have equality conditions specified in the query"
    );
    assert_eq!(
        refused(q(" AND game = :g", json!({":g": {"N": "1"}}))).await,
        "RANGE key attributes round must have equality conditions specified in the query because a condition is present on key attribute game"
    );
    assert_eq!(
        refused(q(
            " AND round > :x AND game = :g",
            json!({":x": {"S": "a"}, ":g": {"N": "1"}})
        ))
        .await,
        "RANGE key attributes round must have equality conditions specified in the query because a condition is present on key attribute game"
    );
    assert!(
        refused(q(" AND round = :x", json!({":x": {"N": "1"}})))
            .await
            .contains("Condition parameter type does not match schema type")
    );
    let mut filtered = q("", json!({":x": {"S": "semi"}}));
    filtered["FilterExpression"] = json!("round = :x");
    assert!(
        refused(filtered)
            .await
            .contains("Filter Expression can only contain non-primary key attributes: Primary key attribute: round")
    );
    // An item without every key attribute stays out; a mistyped one is refused.
    h.ok(
        "PutItem",
        json!({"TableName": "matches", "Item": {"id": {"S": "e"}, "tournament": {"S": "winter"}, "league": {"S": "eu"}}}),
    )
    .await;
    assert_eq!(h.ok("Query", q("", json!({}))).await["Count"], 3);
    let mistyped = h
        .err(
            "PutItem",
            json!({"TableName": "matches", "Item": match_item("winter", "eu", "final", 1, "f").as_object().map(|o| {
            let mut o = o.clone();
            o.insert("game".into(), json!({"S": "one"}));
            Value::Object(o)
        }).expect("item")}),
        )
        .await;
    assert!(
        mistyped
            .message
            .contains("Type mismatch for Index Key game Expected: N Actual: S"),
        "{}",
        mistyped.message
    );
}
