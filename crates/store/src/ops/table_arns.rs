//! Table ARNs where a request names a table.
//!
//! DynamoDB takes a table's ARN wherever it takes a table's name (`TableName`, the keys of
//! BatchGetItem's and BatchWriteItem's `RequestItems`, a transaction's items), and answers with
//! what the request gave: BatchGetItem's `Responses` and the unprocessed maps are keyed by the
//! ARN, and `ConsumedCapacity.TableName` is the ARN ("If you had specified the Amazon Resource
//! Name (ARN) of a table in the input, you'll see the table ARN in the response"). The store
//! rewrites each ARN of this region's tables to the table's name before the operation runs, and
//! the names back to the ARNs in its answer, so every operation serves ARNs the same way.

use std::collections::HashMap;

use dynamo_protocol::ApiError;
use serde_json::Value;

/// The part of a table ARN before the table's name: `arn:PARTITION:dynamodb:REGION:ACCOUNT:`.
const TABLE_RESOURCE_PREFIX: &str = "table/";

/// A request whose table ARNs were rewritten to names, and how to put them back.
pub struct Rewritten {
    pub body: Vec<u8>,
    /// Whether the answer's maps are keyed by table (BatchGetItem, BatchWriteItem,
    /// TransactWriteItems); a single-item write's `ItemCollectionMetrics` is not.
    keyed_by_table: bool,
    /// Table name → the ARN the request gave for it.
    arns: HashMap<String, String>,
}

/// The table a table ARN of `region` names; `Ok(None)` for a string that is not an ARN.
pub fn table_of_arn<'a>(text: &'a str, region: &str) -> Result<Option<&'a str>, ApiError> {
    if !text.starts_with("arn:") {
        return Ok(None);
    }
    let invalid = |why: &str| {
        ApiError::validation(format!(
            "Invalid table ARN '{text}': {why}. A table ARN reads arn:aws:dynamodb:REGION:ACCOUNT:table/NAME; the table's name alone works too"
        ))
    };
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let [_, partition, service, arn_region, account, resource] = parts[..] else {
        return Err(invalid("it does not have six parts separated by ':'"));
    };
    if partition.is_empty() || service != "dynamodb" || account.is_empty() {
        return Err(invalid("it is not the ARN of a DynamoDB resource"));
    }
    let Some(name) = resource
        .strip_prefix(TABLE_RESOURCE_PREFIX)
        .filter(|n| !n.contains('/'))
    else {
        return Err(invalid(
            "it is not a table's ARN (an index's or a stream's ARN names no table here)",
        ));
    };
    if arn_region != region {
        return Err(ApiError::validation(format!(
            "The table ARN '{text}' is of region {arn_region}, and this endpoint serves {region}: send the request to {arn_region}'s endpoint, or name the table ({name})"
        )));
    }
    Ok(Some(name))
}

/// Rewrites the table ARNs of `operation`'s request to names; `Ok(None)` when it gives none
/// (or is not JSON: the operation then answers that as it always does).
/// Whether a member [`rewrite`] renames holds an ARN, read without building the rest of the
/// body (an item holding an ARN as a value, or TagResource's ResourceArn, is not one). A body
/// this cannot read (a member of the wrong type) answers yes: `rewrite` then judges it whole.
fn names_a_table_by_arn(operation: &str, body: &[u8]) -> bool {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "TableName")]
        table_name: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Named {
        table_name: Option<Value>,
        request_items: Option<HashMap<String, IgnoredAny>>,
        transact_items: Option<Vec<HashMap<String, Inner>>>,
    }
    let Ok(named) = serde_json::from_slice::<Named>(body) else {
        return true;
    };
    let arn = |value: &Option<Value>| {
        value
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("arn:"))
    };
    arn(&named.table_name)
        || (matches!(operation, "BatchGetItem" | "BatchWriteItem")
            && named
                .request_items
                .iter()
                .flatten()
                .any(|(name, _)| name.starts_with("arn:")))
        || (matches!(operation, "TransactWriteItems" | "TransactGetItems")
            && named
                .transact_items
                .iter()
                .flatten()
                .flat_map(|action| action.values())
                .any(|inner| arn(&inner.table_name)))
}

pub fn rewrite(operation: &str, body: &[u8], region: &str) -> Result<Option<Rewritten>, ApiError> {
    if memchr::memmem::find(body, b"\"arn:").is_none() || !names_a_table_by_arn(operation, body) {
        return Ok(None);
    }
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let mut arns = HashMap::new();
    let mut rename = |field: &mut Value| -> Result<(), ApiError> {
        if let Some(text) = field.as_str()
            && let Some(name) = table_of_arn(text, region)?
        {
            let name = name.to_string();
            arns.insert(name.clone(), text.to_string());
            *field = Value::String(name);
        }
        Ok(())
    };
    if let Some(field) = request.get_mut("TableName") {
        rename(field)?;
    }
    match operation {
        "BatchGetItem" | "BatchWriteItem" => {
            if let Some(Value::Object(items)) = request.get_mut("RequestItems") {
                let given = std::mem::take(items);
                for (key, value) in given {
                    let mut field = Value::String(key.clone());
                    rename(&mut field)?;
                    let name = field.as_str().unwrap_or(&key).to_string();
                    if items.insert(name.clone(), value).is_some() {
                        return Err(ApiError::validation(format!(
                            "RequestItems gives table {name} twice, by its name and by its ARN: give each table once"
                        )));
                    }
                }
            }
        }
        "TransactWriteItems" | "TransactGetItems" => {
            if let Some(Value::Array(items)) = request.get_mut("TransactItems") {
                for action in items.iter_mut().filter_map(Value::as_object_mut) {
                    for (_, inner) in action.iter_mut() {
                        if let Some(field) = inner.get_mut("TableName") {
                            rename(field)?;
                        }
                    }
                }
            }
        }
        _ => {}
    }
    if arns.is_empty() {
        return Ok(None);
    }
    let body = serde_json::to_vec(&request).expect("a JSON value always serialises");
    let keyed_by_table = matches!(operation, "BatchGetItem" | "BatchWriteItem" | "TransactWriteItems");
    Ok(Some(Rewritten {
        body,
        arns,
        keyed_by_table,
    }))
}

impl Rewritten {
    /// Puts the request's ARNs back where the answer names its tables.
    pub fn restore(&self, mut answer: Value) -> Value {
        let maps: &[&str] = if self.keyed_by_table {
            &[
                "Responses",
                "UnprocessedKeys",
                "UnprocessedItems",
                "ItemCollectionMetrics",
            ]
        } else {
            &[]
        };
        for &map in maps {
            if let Some(Value::Object(tables)) = answer.get_mut(map) {
                let given = std::mem::take(tables);
                for (name, value) in given {
                    let key = self.arns.get(&name).cloned().unwrap_or(name);
                    tables.insert(key, value);
                }
            }
        }
        match answer.get_mut("ConsumedCapacity") {
            Some(Value::Array(entries)) => entries.iter_mut().for_each(|entry| self.restore_name(entry)),
            Some(entry) => self.restore_name(entry),
            None => {}
        }
        answer
    }

    fn restore_name(&self, entry: &mut Value) {
        if let Some(field) = entry.get_mut("TableName")
            && let Some(arn) = field.as_str().and_then(|name| self.arns.get(name))
        {
            *field = Value::String(arn.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:dynamodb:eu-west-1:123456789012:table/carts";

    #[test]
    fn table_arns_of_this_region_name_their_table_and_others_are_refused_clearly() {
        assert_eq!(table_of_arn(ARN, "eu-west-1").ok().flatten(), Some("carts"));
        assert_eq!(table_of_arn("carts", "eu-west-1").ok().flatten(), None);
        let other = table_of_arn(ARN, "us-east-1").expect_err("another region");
        assert!(other.message.contains("region eu-west-1"), "{}", other.message);
        for bad in [
            "arn:aws:dynamodb:eu-west-1:123456789012:table/carts/index/by_shop",
            "arn:aws:dynamodb:eu-west-1:123456789012:backup/x",
            "arn:aws:s3:eu-west-1:123456789012:table/carts",
            "arn:aws:dynamodb:eu-west-1",
        ] {
            let error = table_of_arn(bad, "eu-west-1").expect_err(bad);
            assert!(error.message.contains("Invalid table ARN"), "{}", error.message);
        }
    }

    #[test]
    fn a_batch_keyed_by_arn_is_answered_by_arn() {
        let body =
            json!({"RequestItems": {ARN: {"Keys": []}, "other": {"Keys": []}}, "ReturnConsumedCapacity": "TOTAL"});
        let rewritten = rewrite("BatchGetItem", body.to_string().as_bytes(), "eu-west-1")
            .expect("valid")
            .expect("rewritten");
        let request: Value = serde_json::from_slice(&rewritten.body).expect("json");
        assert!(request["RequestItems"].get("carts").is_some() && request["RequestItems"].get(ARN).is_none());
        let answer = rewritten.restore(json!({
            "Responses": {"carts": [], "other": []},
            "UnprocessedKeys": {"carts": {}},
            "ConsumedCapacity": [{"TableName": "carts"}, {"TableName": "other"}]
        }));
        assert_eq!(
            answer,
            json!({
                "Responses": {ARN: [], "other": []},
                "UnprocessedKeys": {ARN: {}},
                "ConsumedCapacity": [{"TableName": ARN}, {"TableName": "other"}]
            })
        );
        let twice = json!({"RequestItems": {ARN: {}, "carts": {}}});
        assert!(rewrite("BatchWriteItem", twice.to_string().as_bytes(), "eu-west-1").is_err());
    }

    #[test]
    fn transactions_and_single_item_operations_take_arns() {
        let body = json!({"TransactItems": [{"Put": {"TableName": ARN, "Item": {}}}, {"Delete": {"TableName": "x"}}]});
        let rewritten = rewrite("TransactWriteItems", body.to_string().as_bytes(), "eu-west-1")
            .expect("valid")
            .expect("rewritten");
        let request: Value = serde_json::from_slice(&rewritten.body).expect("json");
        assert_eq!(request["TransactItems"][0]["Put"]["TableName"], "carts");
        let body = json!({"TableName": ARN, "Key": {"id": {"S": "arn:not-a-table"}}});
        let rewritten = rewrite("GetItem", body.to_string().as_bytes(), "eu-west-1")
            .expect("valid")
            .expect("rewritten");
        let request: Value = serde_json::from_slice(&rewritten.body).expect("json");
        assert_eq!(request["TableName"], "carts");
        assert_eq!(request["Key"]["id"]["S"], "arn:not-a-table", "values are left alone");
        let answer = rewritten.restore(json!({"ConsumedCapacity": {"TableName": "carts", "CapacityUnits": 0.5}}));
        assert_eq!(answer["ConsumedCapacity"]["TableName"], ARN);
        // A single-item write's ItemCollectionMetrics is no map of tables: left as it is.
        let body = json!({"TableName": "arn:aws:dynamodb:eu-west-1:1:table/ItemCollectionKey", "Item": {}});
        let rewritten = rewrite("PutItem", body.to_string().as_bytes(), "eu-west-1")
            .expect("valid")
            .expect("rewritten");
        let metrics = json!({"ItemCollectionMetrics": {"ItemCollectionKey": {}, "SizeEstimateRangeGB": [0.0, 1.0]}});
        assert_eq!(rewritten.restore(metrics.clone()), metrics);
        assert!(
            rewrite("GetItem", br#"{"TableName":"carts"}"#, "eu-west-1")
                .expect("valid")
                .is_none()
        );
    }
}
