//! In-process tests of the store's operations through `Store::handle`, the same entry point
//! the HTTP server uses. The black-box suite with boto3 and the AWS CLI lives in
//! `tests/integration` at the repository root.

use std::sync::Arc;

use dynamo_protocol::{ApiError, ErrorKind};
use serde_json::{Value, json};
use store::{Engine, Store, SystemClock};
use support::{Calls, on_demand_table};

struct Harness {
    store: Store,
    _dir: tempfile::TempDir,
}

impl Calls for Harness {
    async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError> {
        self.store.handle(operation, body.to_string().as_bytes()).await
    }
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
        Harness {
            store: Store::new(engine),
            _dir: dir,
        }
    }

    /// A harness with the `orders` table.
    async fn with_orders() -> Harness {
        let h = Harness::new();
        h.create_orders().await;
        h
    }

    /// A harness with the `orders` table holding ann's order 1, open.
    async fn with_an_order() -> Harness {
        let h = Harness::with_orders().await;
        h.put_order("ann", 1, "open").await;
        h
    }

    async fn create_orders(&self) {
        self.ok(
            "CreateTable",
            json!({
                "TableName": "orders",
                "AttributeDefinitions": [
                    {"AttributeName": "customer", "AttributeType": "S"},
                    {"AttributeName": "order", "AttributeType": "N"},
                    {"AttributeName": "status", "AttributeType": "S"}
                ],
                "KeySchema": [
                    {"AttributeName": "customer", "KeyType": "HASH"},
                    {"AttributeName": "order", "KeyType": "RANGE"}
                ],
                "GlobalSecondaryIndexes": [{
                    "IndexName": "by-status",
                    "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "order", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"}
                }],
                "BillingMode": "PAY_PER_REQUEST"
            }),
        )
        .await;
    }

    async fn put_order(&self, customer: &str, order: i64, status: &str) {
        self.ok(
            "PutItem",
            json!({"TableName": "orders", "Item": {
                "customer": {"S": customer}, "order": {"N": order.to_string()}, "status": {"S": status}, "total": {"N": "9.99"}
            }}),
        )
        .await;
    }
}

fn numbers(items: &Value, attribute: &str) -> Vec<String> {
    items
        .as_array()
        .expect("Items is a list")
        .iter()
        .map(|i| i[attribute]["N"].as_str().expect("number").to_string())
        .collect()
}

#[tokio::test]
async fn create_describe_list_and_delete_tables() {
    let h = Harness::with_orders().await;
    let described = h.ok("DescribeTable", json!({"TableName": "orders"})).await;
    assert_eq!(described["Table"]["TableStatus"], "ACTIVE");
    assert_eq!(described["Table"]["KeySchema"][1]["AttributeName"], "order");
    assert_eq!(
        described["Table"]["GlobalSecondaryIndexes"][0]["IndexName"],
        "by-status"
    );
    let again = h.err("CreateTable", on_demand_table("orders", "customer")).await;
    assert_eq!(again.kind, ErrorKind::ResourceInUse);
    let listed = h.ok("ListTables", json!({})).await;
    assert_eq!(listed["TableNames"], json!(["orders"]));
    h.ok("DeleteTable", json!({"TableName": "orders"})).await;
    let missing = h.err("DescribeTable", json!({"TableName": "orders"})).await;
    assert_eq!(missing.kind, ErrorKind::ResourceNotFound);
}

#[tokio::test]
async fn attribute_names_are_at_least_one_character_and_under_64_kb() {
    let h = Harness::with_orders().await;
    let key = json!({"customer": {"S": "c1"}, "order": {"N": "1"}});
    let mut item = key.clone();
    item[""] = json!({"S": "no name"});
    let error = h.err("PutItem", json!({"TableName": "orders", "Item": item})).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(error.message.contains("Empty attribute name"), "{}", error.message);
    let error = h
        .err(
            "UpdateItem",
            json!({
                "TableName": "orders", "Key": key,
                "UpdateExpression": "SET #n = :v",
                "ExpressionAttributeNames": {"#n": ""},
                "ExpressionAttributeValues": {":v": {"S": "x"}},
            }),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation, "{}", error.message);
    let mut item = key.clone();
    item["n".repeat(70_000)] = json!({"S": "long name"});
    let error = h.err("PutItem", json!({"TableName": "orders", "Item": item})).await;
    assert!(
        error.message.contains("above the limit of 65535 bytes"),
        "{}",
        error.message
    );
    let found = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": key, "ConsistentRead": true}),
        )
        .await;
    assert!(found.get("Item").is_none(), "nothing was stored: {found}");
}

#[tokio::test]
async fn query_orders_numbers_and_pages() {
    let h = Harness::with_orders().await;
    for order in [20, -10, 3, 0, -2] {
        h.put_order("ann", order, if order > 0 { "open" } else { "shipped" })
            .await;
    }
    h.put_order("bob", 1, "open").await;
    // A Query of ann's orders, with `extra` members.
    let ann = |extra: Value| {
        let mut query = json!({
            "TableName": "orders",
            "KeyConditionExpression": "customer = :c",
            "ExpressionAttributeValues": {":c": {"S": "ann"}}
        });
        for (member, value) in extra.as_object().expect("members") {
            query[member] = value.clone();
        }
        query
    };
    let all = h.ok("Query", ann(json!({}))).await;
    assert_eq!(numbers(&all["Items"], "order"), ["-10", "-2", "0", "3", "20"]);
    let backwards = h
        .ok(
            "Query",
            json!({
                "TableName": "orders",
                "KeyConditionExpression": "customer = :c AND #o BETWEEN :lo AND :hi",
                "ExpressionAttributeNames": {"#o": "order"},
                "ExpressionAttributeValues": {":c": {"S": "ann"}, ":lo": {"N": "-2"}, ":hi": {"N": "3"}},
                "ScanIndexForward": false
            }),
        )
        .await;
    assert_eq!(numbers(&backwards["Items"], "order"), ["3", "0", "-2"]);
    let first = h.ok("Query", ann(json!({"Limit": 2}))).await;
    assert_eq!(numbers(&first["Items"], "order"), ["-10", "-2"]);
    let rest = h
        .ok("Query", ann(json!({"ExclusiveStartKey": first["LastEvaluatedKey"]})))
        .await;
    assert_eq!(numbers(&rest["Items"], "order"), ["0", "3", "20"]);
    assert!(rest.get("LastEvaluatedKey").is_none());
    let open = h
        .ok(
            "Query",
            json!({
                "TableName": "orders",
                "IndexName": "by-status",
                "KeyConditionExpression": "#s = :s",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": {"S": "open"}}
            }),
        )
        .await;
    assert_eq!(open["Count"], 3);
    assert!(
        open["Items"][0].get("total").is_none(),
        "KEYS_ONLY projection must drop non-key attributes"
    );
}

#[tokio::test]
async fn conditions_updates_and_return_values() {
    let h = Harness::with_an_order().await;
    let failed = h
        .err(
            "PutItem",
            json!({
                "TableName": "orders",
                "Item": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                "ConditionExpression": "attribute_not_exists(customer)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"
            }),
        )
        .await;
    assert_eq!(failed.kind, ErrorKind::ConditionalCheckFailed);
    assert_eq!(failed.item.expect("old item returned")["status"]["S"], "open");
    let updated = h.ok("UpdateItem", json!({
        "TableName": "orders",
        "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
        "UpdateExpression": "SET #total = #total + :d, tags = list_append(if_not_exists(tags, :empty), :t) REMOVE #s",
        "ExpressionAttributeNames": {"#s": "status", "#total": "total"},
        "ExpressionAttributeValues": {":d": {"N": "0.01"}, ":t": {"L": [{"S": "gift"}]}, ":empty": {"L": []}},
        "ReturnValues": "ALL_NEW"
    })).await;
    assert_eq!(updated["Attributes"]["total"]["N"], "10");
    assert_eq!(updated["Attributes"]["tags"]["L"][0]["S"], "gift");
    assert!(updated["Attributes"].get("status").is_none());
    let key_update = h
        .err(
            "UpdateItem",
            json!({
                "TableName": "orders",
                "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                "UpdateExpression": "SET customer = :c",
                "ExpressionAttributeValues": {":c": {"S": "zed"}}
            }),
        )
        .await;
    assert!(key_update.message.contains("part of the key"), "{}", key_update.message);
    let old = h
        .ok(
            "DeleteItem",
            json!({
                "TableName": "orders",
                "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                "ReturnValues": "ALL_OLD"
            }),
        )
        .await;
    assert_eq!(old["Attributes"]["total"]["N"], "10");
    let gone = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}),
        )
        .await;
    assert!(gone.get("Item").is_none());
}

#[tokio::test]
async fn transactions_are_all_or_nothing() {
    let h = Harness::with_an_order().await;
    let canceled = h
        .err(
            "TransactWriteItems",
            json!({"TransactItems": [
                {"Put": {"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": {"N": "2"}}}},
                {"ConditionCheck": {"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                    "ConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
                    "ExpressionAttributeValues": {":s": {"S": "shipped"}}}}
            ]}),
        )
        .await;
    assert_eq!(canceled.kind, ErrorKind::TransactionCanceled);
    let codes: Vec<&str> = canceled.cancellation_reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["None", "ConditionalCheckFailed"]);
    let absent = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "2"}}}),
        )
        .await;
    assert!(
        absent.get("Item").is_none(),
        "a canceled transaction must write nothing"
    );
    h.ok(
        "TransactWriteItems",
        json!({"TransactItems": [
            {"Put": {"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": {"N": "2"}}}},
            {"Delete": {"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}}
        ]}),
    )
    .await;
    let got = h
        .ok(
            "TransactGetItems",
            json!({"TransactItems": [
                {"Get": {"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}},
                {"Get": {"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "2"}}}}
            ]}),
        )
        .await;
    assert_eq!(got["Responses"][0], json!({}));
    assert_eq!(got["Responses"][1]["Item"]["order"]["N"], "2");
}

/// The items a transaction reads may total 4 MB at most, as DynamoDB's TransactGetItems and
/// read-only ExecuteTransaction say; up to it they are all returned.
#[tokio::test]
async fn a_transaction_reading_more_than_4_mb_of_items_is_refused() {
    let h = Harness::with_orders().await;
    let blob = "x".repeat(390_000);
    for order in 0..12 {
        h.ok(
            "PutItem",
            json!({"TableName": "orders", "Item": {"customer": {"S": "big"}, "order": {"N": order.to_string()}, "blob": {"S": blob}}}),
        )
        .await;
    }
    let gets = |count: usize| -> Vec<Value> {
        (0..count)
            .map(|order| json!({"Get": {"TableName": "orders", "Key": {"customer": {"S": "big"}, "order": {"N": order.to_string()}}}}))
            .collect()
    };
    let ten = h.ok("TransactGetItems", json!({"TransactItems": gets(10)})).await;
    assert_eq!(ten["Responses"].as_array().map(Vec::len), Some(10));
    let refused = h.err("TransactGetItems", json!({"TransactItems": gets(12)})).await;
    assert_eq!(refused.kind, ErrorKind::Validation, "{}", refused.message);
    assert!(refused.message.contains("cannot exceed 4 MB"), "{}", refused.message);
    let statements: Vec<Value> = (0..12)
        .map(|order| json!({"Statement": format!("SELECT * FROM orders WHERE customer = 'big' AND \"order\" = {order}")}))
        .collect();
    let refused = h
        .err("ExecuteTransaction", json!({"TransactStatements": statements}))
        .await;
    assert_eq!(refused.kind, ErrorKind::Validation, "{}", refused.message);
    assert!(refused.message.contains("cannot exceed 4 MB"), "{}", refused.message);
}

/// A Put whose item has a key attribute of the wrong type cancels the transaction with a
/// ValidationError reason for that action and "None" for the others; nothing is written.
#[tokio::test]
async fn a_put_with_a_mistyped_key_cancels_the_transaction() {
    let h = Harness::with_orders().await;
    let put =
        |order: Value| json!({"Put": {"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": order}}});
    let canceled = h
        .err(
            "TransactWriteItems",
            json!({"TransactItems": [put(json!({"N": "1"})), put(json!({"S": "two"})), put(json!({"S": "three"}))]}),
        )
        .await;
    assert_eq!(canceled.kind, ErrorKind::TransactionCanceled, "{}", canceled.message);
    let codes: Vec<&str> = canceled.cancellation_reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["None", "ValidationError", "None"]);
    let message = canceled.cancellation_reasons[1].message.as_deref().expect("a message");
    assert!(message.contains("Type mismatch for key order"), "{message}");
    let absent = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}),
        )
        .await;
    assert!(absent.get("Item").is_none(), "a canceled transaction writes nothing");
    // A mistake in another action is still a ValidationException for the whole request.
    let mut bad = put(json!({"N": "1"}));
    bad["Put"]["ConditionExpression"] = json!("attribute_exists(#unused)");
    let refused = h
        .err(
            "TransactWriteItems",
            json!({"TransactItems": [put(json!({"S": "two"})), bad]}),
        )
        .await;
    assert_eq!(refused.kind, ErrorKind::Validation, "{}", refused.message);
}

#[tokio::test]
async fn a_reused_client_request_token_needs_the_identical_request() {
    let h = Harness::with_orders().await;
    let request = |amount: &str| {
        json!({"ClientRequestToken": "token-1", "TransactItems": [
            {"Update": {"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                "UpdateExpression": "ADD #t :x", "ExpressionAttributeNames": {"#t": "total"},
                "ExpressionAttributeValues": {":x": {"N": amount}}}}
        ]})
    };
    h.ok("TransactWriteItems", request("1")).await;
    h.ok("TransactWriteItems", request("1")).await;
    let got = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}),
        )
        .await;
    assert_eq!(got["Item"]["total"]["N"], "1", "the replay applied nothing");
    // Same token and key, different values: DynamoDB refuses it rather than replaying.
    let mismatch = h.err("TransactWriteItems", request("2")).await;
    assert_eq!(mismatch.kind, ErrorKind::IdempotentParameterMismatch);
}

/// A condition on an attribute that is no key of the index queried is "Query key condition not
/// supported" (with KeyConditionExpression and with the legacy KeyConditions), not a complaint
/// about a key element that was given.
#[tokio::test]
async fn a_key_condition_on_a_non_key_attribute_is_not_supported() {
    let h = Harness::with_an_order().await;
    let error = h
        .err(
            "Query",
            json!({"TableName": "orders", "IndexName": "by-status",
                "KeyConditionExpression": "#s = :s AND customer = :c",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": {"S": "open"}, ":c": {"S": "ann"}}}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.message, "Query key condition not supported");
    let error = h
        .err(
            "Query",
            json!({"TableName": "orders", "KeyConditions": {
                "total": {"AttributeValueList": [{"N": "9.99"}], "ComparisonOperator": "EQ"},
                "customer": {"AttributeValueList": [{"S": "ann"}], "ComparisonOperator": "EQ"}}}),
        )
        .await;
    assert_eq!(error.message, "Query key condition not supported");
    // A missing partition key is still named.
    let error = h
        .err(
            "Query",
            json!({"TableName": "orders", "KeyConditionExpression": "#o = :o",
                "ExpressionAttributeNames": {"#o": "order"}, "ExpressionAttributeValues": {":o": {"N": "1"}}}),
        )
        .await;
    assert_eq!(error.message, "Query condition missed key schema element: customer");
}

/// An ExclusiveStartKey on an index carries the table's and the index's key attributes and
/// nothing else.
#[tokio::test]
async fn an_index_start_key_with_another_attribute_is_invalid() {
    let h = Harness::with_an_order().await;
    let query = |start: Value| {
        json!({"TableName": "orders", "IndexName": "by-status", "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "open"}},
            "ExclusiveStartKey": start})
    };
    let start = json!({"customer": {"S": "ann"}, "order": {"N": "0"}, "status": {"S": "open"}});
    let page = h.ok("Query", query(start.clone())).await;
    assert_eq!(page["Count"], 1);
    let mut spurious = start;
    spurious["total"] = json!({"N": "9.99"});
    let error = h.err("Query", query(spurious)).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.starts_with("The provided starting key is invalid"),
        "{}",
        error.message
    );
}

/// An index key value over the key size bounds (2048 bytes for a partition key, 1024 for a
/// sort key) is refused, as for the table's keys, rather than left out of the index.
#[tokio::test]
async fn an_index_key_over_the_key_size_limit_is_refused() {
    let h = Harness::with_orders().await;
    let put = |status: String| json!({"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": {"N": "1"}, "status": {"S": status}}});
    h.ok("PutItem", put("s".repeat(2048))).await;
    let error = h.err("PutItem", put("s".repeat(2049))).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.contains("exceeds the limit of 2048 bytes"),
        "{}",
        error.message
    );
    let error = h
        .err(
            "UpdateItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}},
                "UpdateExpression": "SET #s = :s", "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": {"S": "s".repeat(70_000)}}}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation);
    let kept = h
        .ok(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}),
        )
        .await;
    assert_eq!(kept["Item"]["status"]["S"].as_str().map(str::len), Some(2048));
}

/// NonKeyAttributes names are 1 to 255 characters long (the API's NonKeyAttributeName).
#[tokio::test]
async fn projected_attribute_names_are_at_most_255_characters() {
    let h = Harness::new();
    let table = |name: String| {
        json!({"TableName": "projected", "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "a", "AttributeType": "S"}, {"AttributeName": "c", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{"IndexName": "gsi", "KeySchema": [{"AttributeName": "c", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": [name]}}]})
    };
    let error = h.err("CreateTable", table("x".repeat(256))).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(error.message.contains("255"), "{}", error.message);
    let error = h.err("CreateTable", table(String::new())).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    h.ok("CreateTable", table("x".repeat(255))).await;
}

/// A name given twice in NonKeyAttributes is refused.
#[tokio::test]
async fn projected_attribute_names_are_not_repeated() {
    let h = Harness::new();
    let error = h
        .err(
            "CreateTable",
            json!({"TableName": "projected", "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "a", "AttributeType": "S"}, {"AttributeName": "c", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}],
                "GlobalSecondaryIndexes": [{"IndexName": "gsi", "KeySchema": [{"AttributeName": "c", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["x", "y", "x"]}}]}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.contains("Duplicate attribute name x"),
        "{}",
        error.message
    );
    let missing = h.err("DescribeTable", json!({"TableName": "projected"})).await;
    assert_eq!(missing.kind, ErrorKind::ResourceNotFound);
}

#[tokio::test]
async fn a_query_start_key_must_lie_within_the_key_condition() {
    let h = Harness::with_orders().await;
    for order in 1..=5 {
        h.put_order("ann", order, "open").await;
        h.put_order("bob", order, "open").await;
    }
    let query = |start: Value, condition: &str| {
        json!({"TableName": "orders", "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#o": "order"},
            "ExpressionAttributeValues": {":c": {"S": "ann"}, ":o": {"N": "3"}},
            "ExclusiveStartKey": start})
    };
    let bob = json!({"customer": {"S": "bob"}, "order": {"N": "1"}});
    let error = h.err("Query", query(bob, "customer = :c AND #o >= :o")).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(
        error.message,
        "The provided starting key is outside query boundaries based on provided conditions"
    );
    let below = json!({"customer": {"S": "ann"}, "order": {"N": "2"}});
    let error = h.err("Query", query(below, "customer = :c AND #o >= :o")).await;
    assert_eq!(
        error.message,
        "The provided starting key does not match the range key predicate"
    );
    // A start key inside the condition continues after it, forwards and backwards.
    let inside = json!({"customer": {"S": "ann"}, "order": {"N": "4"}});
    let page = h.ok("Query", query(inside.clone(), "customer = :c AND #o >= :o")).await;
    assert_eq!(numbers(&page["Items"], "order"), ["5"]);
    let mut backwards = query(inside, "customer = :c AND #o >= :o");
    backwards["ScanIndexForward"] = json!(false);
    let page = h.ok("Query", backwards).await;
    assert_eq!(numbers(&page["Items"], "order"), ["3"]);
    // On an index the same holds for the index's partition.
    let error = h
        .err(
            "Query",
            json!({"TableName": "orders", "IndexName": "by-status", "KeyConditionExpression": "#s = :s",
                "ExpressionAttributeNames": {"#s": "status"}, "ExpressionAttributeValues": {":s": {"S": "open"}},
                "ExclusiveStartKey": {"customer": {"S": "ann"}, "order": {"N": "1"}, "status": {"S": "shipped"}}}),
        )
        .await;
    assert_eq!(
        error.message,
        "The provided starting key is outside query boundaries based on provided conditions"
    );
}

#[tokio::test]
async fn parallel_scan_segments_cover_every_item_once() {
    let h = Harness::with_orders().await;
    for order in 0..60 {
        h.put_order(&format!("c{order}"), order, "open").await;
    }
    let mut seen = Vec::new();
    for segment in 0..4 {
        let mut start: Option<Value> = None;
        loop {
            let mut request = json!({"TableName": "orders", "Segment": segment, "TotalSegments": 4, "Limit": 7});
            if let Some(start) = &start {
                request["ExclusiveStartKey"] = start.clone();
            }
            let page = h.ok("Scan", request).await;
            seen.extend(numbers(&page["Items"], "order"));
            match page.get("LastEvaluatedKey") {
                Some(key) => start = Some(key.clone()),
                None => break,
            }
        }
    }
    seen.sort_by_key(|n| n.parse::<i64>().expect("integer"));
    let expected: Vec<String> = (0..60).map(|n: i64| n.to_string()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn bad_input_gets_dynamodb_errors() {
    let h = Harness::new();
    let unknown = h.store.handle("Frobnicate", b"{}").await.expect_err("unknown op");
    assert_eq!(unknown.kind, ErrorKind::UnknownOperation);
    let garbage = h
        .store
        .handle("GetItem", b"{\"TableName\":")
        .await
        .expect_err("bad json");
    assert_eq!(garbage.kind, ErrorKind::Serialization);
    let missing = h
        .err("GetItem", json!({"TableName": "nope", "Key": {"id": {"S": "x"}}}))
        .await;
    assert_eq!(missing.kind, ErrorKind::ResourceNotFound);
    h.create_orders().await;
    let wrong_key = h
        .err(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"N": "1"}, "order": {"N": "1"}}}),
        )
        .await;
    assert_eq!(wrong_key.kind, ErrorKind::Validation);
    let big = "x".repeat(401 * 1024);
    let too_big = h
        .err(
            "PutItem",
            json!({"TableName": "orders", "Item": {"customer": {"S": "a"}, "order": {"N": "1"}, "blob": {"S": big}}}),
        )
        .await;
    assert!(
        too_big.message.contains("Item size has exceeded"),
        "{}",
        too_big.message
    );
}

#[tokio::test]
async fn writes_survive_reopening_the_database() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
        let h = Harness {
            store: Store::new(engine),
            _dir: tempfile::tempdir().expect("unused dir"),
        };
        h.create_orders().await;
        h.put_order("ann", 7, "open").await;
    }
    // The writer thread of the first engine exits once its queue closes; wait for the file lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let engine = loop {
        match Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)) {
            Ok(engine) => break engine,
            Err(error) if std::time::Instant::now() > deadline => panic!("database still locked after 10 s: {error}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let store = Store::new(engine);
    let item = store
        .handle(
            "GetItem",
            json!({"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "7"}}})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("get");
    assert_eq!(item["Item"]["status"]["S"], "open");
    let described = store
        .handle("DescribeTable", br#"{"TableName":"orders"}"#)
        .await
        .expect("describe");
    assert_eq!(described["Table"]["ItemCount"], 1);
}

/// A write whose request read the table before an index was created, and whose job runs after
/// the index's backfill committed, still lands in the index (and a delete leaves it).
#[tokio::test]
async fn a_write_queued_before_an_index_was_created_is_indexed() {
    let h = Harness::new();
    h.ok("CreateTable", on_demand_table("late", "pk")).await;
    let engine = h.store.engine().clone();
    let stale = engine.table("late").expect("table");
    let created = h
        .ok(
            "UpdateTable",
            json!({
                "TableName": "late",
                "AttributeDefinitions": [{"AttributeName": "g", "AttributeType": "S"}],
                "GlobalSecondaryIndexUpdates": [{"Create": {
                    "IndexName": "by_g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"}
                }}]
            }),
        )
        .await;
    // Filled in the background, as DynamoDB fills it: CREATING until then.
    let index = &created["TableDescription"]["GlobalSecondaryIndexes"][0];
    assert_eq!(
        (&index["IndexStatus"], &index["Backfilling"]),
        (&json!("CREATING"), &json!(false))
    );
    engine.finish_index_backfills().await.expect("backfill");
    assert!(
        stale.indexes.is_empty(),
        "the definition read before the index has none"
    );
    let item: dynamo_protocol::Item = serde_json::from_value(json!({"pk": {"S": "a"}, "g": {"S": "x"}})).expect("item");
    let key = store::engine::key_of(stale.key_hash, &stale.key, &item).expect("key");
    let (meta, written_key) = (Arc::clone(&stale), key.clone());
    engine
        .write(move |context| context.put(&meta, &written_key, None, &item))
        .await
        .expect("put");
    let query = json!({
        "TableName": "late", "IndexName": "by_g",
        "KeyConditionExpression": "g = :g", "ExpressionAttributeValues": {":g": {"S": "x"}}
    });
    assert_eq!(h.ok("Query", query.clone()).await["Count"], 1);
    let old: dynamo_protocol::Item = serde_json::from_value(json!({"pk": {"S": "a"}, "g": {"S": "x"}})).expect("item");
    engine
        .write(move |context| context.delete(&stale, &key, Some(&old)))
        .await
        .expect("delete");
    assert_eq!(h.ok("Query", query).await["Count"], 0);
}

/// [`support::run_behind_a_queued_tag`] on the `orders` table.
async fn run_behind_a_queued_tag(h: &Harness, operation: &'static str, body: Value) -> (Value, Value) {
    let arn = h.ok("DescribeTable", json!({"TableName": "orders"})).await["Table"]["TableArn"]
        .as_str()
        .expect("TableArn")
        .to_string();
    support::run_behind_a_queued_tag(&h.store, &arn, operation, body).await
}

/// An UpdateTable that read the table before a TagResource committed applies its change to
/// the definition with the tags (it used to write back the one it read, losing them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_table_keeps_a_tag_committed_after_it_read_the_table() {
    let h = Harness::with_orders().await;
    let body = json!({"TableName": "orders", "DeletionProtectionEnabled": true});
    let (updated, tags) = run_behind_a_queued_tag(&h, "UpdateTable", body).await;
    assert_eq!(updated["TableDescription"]["DeletionProtectionEnabled"], json!(true));
    assert_eq!(tags, json!([{"Key": "team", "Value": "billing"}]));
    let described = h.ok("DescribeTable", json!({"TableName": "orders"})).await;
    assert_eq!(described["Table"]["DeletionProtectionEnabled"], json!(true));
}

/// The same for UpdateContinuousBackups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_continuous_backups_keeps_a_tag_committed_after_it_read_the_table() {
    let h = Harness::with_orders().await;
    let body = json!({"TableName": "orders", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": true}});
    let (_, tags) = run_behind_a_queued_tag(&h, "UpdateContinuousBackups", body).await;
    assert_eq!(tags, json!([{"Key": "team", "Value": "billing"}]));
    let described = h.ok("DescribeContinuousBackups", json!({"TableName": "orders"})).await;
    assert_eq!(
        described["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
        json!("ENABLED"),
        "{described}"
    );
}

mod decoder_fuzz {
    //! Arbitrary request bodies for every operation: the store answers with a DynamoDB error or
    //! a result, never a panic, and what was stored before stays readable.

    use super::*;
    use proptest::prelude::*;

    const FIELDS: &[&str] = &[
        "TableName",
        "Key",
        "Item",
        "KeySchema",
        "AttributeDefinitions",
        "AttributeName",
        "AttributeType",
        "KeyType",
        "ConditionExpression",
        "UpdateExpression",
        "ProjectionExpression",
        "FilterExpression",
        "KeyConditionExpression",
        "ExpressionAttributeNames",
        "ExpressionAttributeValues",
        "Limit",
        "ExclusiveStartKey",
        "Segment",
        "TotalSegments",
        "RequestItems",
        "TransactItems",
        "Put",
        "Update",
        "Delete",
        "ConditionCheck",
        "Keys",
        "ReturnValues",
        "Select",
        "IndexName",
        "S",
        "N",
        "B",
        "M",
        "L",
        "SS",
        "NS",
        "BS",
        "BOOL",
        "NULL",
        "id",
        "#n",
        ":v",
        "Expected",
        "AttributeUpdates",
        "KeyConditions",
        "ComparisonOperator",
        "AttributeValueList",
        "Value",
        "Action",
        "BillingMode",
    ];
    const TEXTS: &[&str] = &[
        "t",
        "id",
        "S",
        "N",
        "HASH",
        "RANGE",
        "#n = :v",
        "SET a = :v",
        "a.b[1]",
        "attribute_exists(id)",
        "id = :v AND begins_with(s, :v)",
        "1e400",
        "-0",
        "PAY_PER_REQUEST",
        "ALL_NEW",
        "EQ",
        "PUT",
        "",
        "((((",
        "orders",
        "customer",
        "order",
        "ann",
        "size(a) > :v",
        "REMOVE a[0]",
        ":v",
        "#n",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5000).prop_map(|n| json!(n)),
            proptest::sample::select(TEXTS).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(proptest::sample::select(FIELDS).prop_map(String::from), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_requests_never_panic(operation in proptest::sample::select(store::ops::OPERATIONS), body in json_value()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let h = Harness::new();
                h.create_orders().await;
                h.put_order("ann", 1, "open").await;
                let _ = h.store.handle(operation, body.to_string().as_bytes()).await;
                let _ = h.store.handle(operation, &body.to_string().as_bytes()[..body.to_string().len() / 2]).await;
                let survivor = h.store.handle("GetItem", br#"{"TableName":"orders","Key":{"customer":{"S":"ann"},"order":{"N":"1"}}}"#).await;
                // The request may legitimately have changed the item or deleted the table; the
                // store must still answer, and never with a fault of its own.
                if let Err(error) = &survivor {
                    prop_assert!(!error.kind.is_server_fault(), "GetItem after {operation} failed: {error}");
                }
                Ok(())
            })?;
        }
    }
}

mod backups;
mod clock_hold;
mod compact;
mod crash;
mod disk;
mod global;
mod index_backfill;
mod index_backfill_lifecycle;
mod multi_key;
mod pitr;
mod replication_fuzz;
mod server;
mod streams;
mod support;
mod tombstones;
mod upgrade;

/// A page cache far smaller than the data (`--cache-bytes 4MiB` under 8 MB of items) evicts
/// and reads back pages without losing or mixing up anything.
#[tokio::test]
async fn a_small_page_cache_serves_more_data_than_it_holds() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = store::engine::EngineOptions {
        disk: store::disk::DiskSettings {
            free_bytes_min: Some(0),
            reserve_bytes: 0,
        },
        faults: None,
        backup_dir: None,
        cache_bytes: Some(store::config::CACHE_BYTES_MIN as usize),
        no_idle_checkpoints: false,
        write_ahead_log: false,
    };
    let engine = Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), options).expect("open engine");
    let h = Harness {
        store: Store::new(engine),
        _dir: dir,
    };
    h.ok("CreateTable", on_demand_table("big", "id")).await;
    let items = 4000;
    for first in (0..items).step_by(25) {
        let puts: Vec<Value> = (first..first + 25)
            .map(|n| json!({"PutRequest": {"Item": {"id": {"S": format!("k{n:05}")}, "v": {"S": format!("{n:0>2000}")}}}}))
            .collect();
        let answer = h.ok("BatchWriteItem", json!({"RequestItems": {"big": puts}})).await;
        assert_eq!(answer["UnprocessedItems"], json!({}));
    }
    for n in (0..items).step_by(97) {
        let got = h
            .ok(
                "GetItem",
                json!({"TableName": "big", "Key": {"id": {"S": format!("k{n:05}")}}}),
            )
            .await;
        assert_eq!(got["Item"]["v"]["S"], json!(format!("{n:0>2000}")));
    }
    let mut seen = 0;
    let mut start: Option<Value> = None;
    loop {
        let mut request = json!({"TableName": "big", "Select": "COUNT"});
        if let Some(key) = start.take() {
            request["ExclusiveStartKey"] = key;
        }
        let page = h.ok("Scan", request).await;
        seen += page["Count"].as_u64().expect("a count");
        match page.get("LastEvaluatedKey") {
            Some(key) => start = Some(key.clone()),
            None => break,
        }
    }
    assert_eq!(seen, items as u64);
}

/// A partition of a table without a sort key holds one item: DynamoDB refuses an
/// ExclusiveStartKey for a Query of it (there is nothing after the key), naming the key, and
/// never hands one out (no LastEvaluatedKey, even at Limit 1).
#[tokio::test]
async fn a_query_of_a_hash_only_table_takes_no_start_key() {
    let h = Harness::new();
    h.ok("CreateTable", on_demand_table("users", "id")).await;
    h.ok("PutItem", json!({"TableName": "users", "Item": {"id": {"S": "ann"}}}))
        .await;
    let query = json!({"TableName": "users", "KeyConditionExpression": "id = :id",
        "ExpressionAttributeValues": {":id": {"S": "ann"}}, "Limit": 1});
    let page = h.ok("Query", query.clone()).await;
    assert_eq!(page["Count"], 1);
    assert!(page.get("LastEvaluatedKey").is_none(), "{page}");
    let mut with_start = query;
    with_start["ExclusiveStartKey"] = json!({"id": {"S": "ann"}});
    let error = h.err("Query", with_start).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(
        error.message,
        "The provided exclusive start key is invalid: ExclusiveStartKey: {id=AttributeValue: {S:ann}}"
    );
    // A Scan of the same table pages with it as before.
    let scan = h
        .ok(
            "Scan",
            json!({"TableName": "users", "ExclusiveStartKey": {"id": {"S": "ann"}}}),
        )
        .await;
    assert_eq!(scan["Count"], 0);
}

/// A TransactWriteItems carries at most 4 MB of items, keys and values: putting 5 MB in one
/// is refused whole; 3 MB, and deleting 5 MB of items by key, go through.
#[tokio::test]
async fn a_transaction_carries_at_most_four_megabytes() {
    let h = Harness::new();
    h.ok("CreateTable", on_demand_table("blobs", "id")).await;
    let long = "x".repeat(100_000);
    let puts = |count: usize| {
        let items: Vec<Value> = (0..count)
            .map(|i| json!({"Put": {"TableName": "blobs", "Item": {"id": {"S": format!("k{i}")}, "x": {"S": long}}}}))
            .collect();
        json!({ "TransactItems": items })
    };
    let error = h.err("TransactWriteItems", puts(50)).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(error.message.contains("size cannot exceed 4 MB"), "{}", error.message);
    let none = h.ok("Scan", json!({"TableName": "blobs", "Select": "COUNT"})).await;
    assert_eq!(none["Count"], 0, "nothing of a refused transaction is written");
    h.ok("TransactWriteItems", puts(30)).await;
    for i in 30..50 {
        h.ok(
            "PutItem",
            json!({"TableName": "blobs", "Item": {"id": {"S": format!("k{i}")}, "x": {"S": long}}}),
        )
        .await;
    }
    let deletes: Vec<Value> = (0..50)
        .map(|i| json!({"Delete": {"TableName": "blobs", "Key": {"id": {"S": format!("k{i}")}}}}))
        .collect();
    h.ok("TransactWriteItems", json!({ "TransactItems": deletes })).await;
    let left = h.ok("Scan", json!({"TableName": "blobs", "Select": "COUNT"})).await;
    assert_eq!(left["Count"], 0);
    // PartiQL's ExecuteTransaction has the same bound, on its statements and parameters.
    let inserts = |count: usize| {
        let statements: Vec<Value> = (0..count)
            .map(|i| {
                json!({"Statement": "INSERT INTO \"blobs\" VALUE {'id': ?, 'x': ?}",
                       "Parameters": [{"S": format!("p{i}")}, {"S": long}]})
            })
            .collect();
        json!({ "TransactStatements": statements })
    };
    let error = h.err("ExecuteTransaction", inserts(50)).await;
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(error.message.contains("size cannot exceed 4 MB"), "{}", error.message);
    h.ok("ExecuteTransaction", inserts(30)).await;
    for id in ["p0", "p29"] {
        let item = h
            .ok("GetItem", json!({"TableName": "blobs", "Key": {"id": {"S": id}}}))
            .await;
        assert_eq!(item["Item"]["x"]["S"].as_str().map(str::len), Some(long.len()), "{id}");
    }
}

/// An AttributeValue member DynamoDB does not know is ignored, as DynamoDB ignores it: alone,
/// the value is empty (a ValidationException), and nothing is stored.
#[tokio::test]
async fn an_unknown_attribute_value_member_leaves_the_value_empty() {
    let h = Harness::new();
    h.ok("CreateTable", on_demand_table("users", "id")).await;
    let error = h
        .err(
            "PutItem",
            json!({"TableName": "users", "Item": {"id": {"S": "ann"}, "x": {"dog": "cat"}}}),
        )
        .await;
    assert_eq!(error.kind, ErrorKind::Validation, "{}", error.message);
    assert!(
        error.message.contains("Supplied AttributeValue is empty"),
        "{}",
        error.message
    );
    let absent = h
        .ok("GetItem", json!({"TableName": "users", "Key": {"id": {"S": "ann"}}}))
        .await;
    assert!(absent.get("Item").is_none());
}

/// `put_new_items` with a key given twice (a restore file could hold one; BatchWriteItem
/// refuses them): the later item replaces the earlier, the keys around it still go in, and the
/// table counts one item per key.
#[tokio::test]
async fn new_items_with_a_key_given_twice_keep_the_later_item() {
    let h = Harness::new();
    h.ok("CreateTable", on_demand_table("restored", "pk")).await;
    let engine = h.store.engine().clone();
    let table = engine.table("restored").expect("table");
    let items: Vec<(Vec<u8>, dynamo_protocol::Item)> =
        [("a", "1"), ("b", "first"), ("c", "1"), ("b", "second"), ("d", "1")]
            .iter()
            .map(|(pk, v)| {
                let item: dynamo_protocol::Item =
                    serde_json::from_value(json!({"pk": {"S": pk}, "v": {"S": v}})).expect("item");
                (
                    store::engine::key_of(table.key_hash, &table.key, &item).expect("key"),
                    item,
                )
            })
            .collect();
    engine
        .write(move |context| {
            let puts = items.iter().map(|(key, item)| (key.as_slice(), item)).collect();
            context.put_new_items(&table, puts)
        })
        .await
        .expect("put the items");
    let got = h
        .ok(
            "GetItem",
            json!({"TableName": "restored", "Key": {"pk": {"S": "b"}}, "ConsistentRead": true}),
        )
        .await;
    assert_eq!(got["Item"]["v"], json!({"S": "second"}));
    let scan = h.ok("Scan", json!({"TableName": "restored", "Select": "COUNT"})).await;
    assert_eq!(scan["Count"], json!(4));
    let described = h.ok("DescribeTable", json!({"TableName": "restored"})).await;
    assert_eq!(
        described["Table"]["ItemCount"],
        json!(4),
        "one item per key in the table's counts"
    );
}

/// DescribeTable's ProvisionedThroughput says when the throughput last went up and down and how
/// often it went down today, as DynamoDB's does; and UpdateTable's answer has no index list on
/// a table without indexes (no null member).
#[tokio::test]
async fn throughput_changes_show_their_dates_and_answers_add_no_empty_members() {
    let h = Harness::new();
    h.ok(
        "CreateTable",
        json!({"TableName": "rates", "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
               "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
               "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}}),
    )
    .await;
    let before = h.ok("DescribeTable", json!({"TableName": "rates"})).await;
    let throughput = &before["Table"]["ProvisionedThroughput"];
    assert!(throughput.get("LastIncreaseDateTime").is_none() && throughput.get("LastDecreaseDateTime").is_none());
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let raised = h
        .ok(
            "UpdateTable",
            json!({"TableName": "rates", "ProvisionedThroughput": {"ReadCapacityUnits": 15, "WriteCapacityUnits": 15}}),
        )
        .await;
    let description = &raised["TableDescription"];
    assert!(description.get("GlobalSecondaryIndexes").is_none(), "{description}");
    let increased = description["ProvisionedThroughput"]["LastIncreaseDateTime"]
        .as_f64()
        .expect("LastIncreaseDateTime");
    assert!(increased >= sent - 5.0, "{increased} vs {sent}");
    h.ok(
        "UpdateTable",
        json!({"TableName": "rates", "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}}),
    )
    .await;
    let after = h.ok("DescribeTable", json!({"TableName": "rates"})).await;
    let throughput = &after["Table"]["ProvisionedThroughput"];
    assert_eq!(throughput["LastIncreaseDateTime"].as_f64(), Some(increased));
    assert!(
        throughput["LastDecreaseDateTime"]
            .as_f64()
            .expect("LastDecreaseDateTime")
            >= increased
    );
    assert_eq!(throughput["NumberOfDecreasesToday"], 1);
}
