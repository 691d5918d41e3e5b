//! The DynamoDB calls the drill makes on the global table: create it (and its replicas) if
//! missing, put items, scan a region's copy. Unsigned JSON 1.0 requests, as the lab's stores
//! on loopback accept them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::http::{HttpClient, HttpError};

/// Deadline of one write: past it the write is indeterminate.
pub const WRITE_TIMEOUT_MS: u64 = 2_000;
/// Deadline of table administration and scan pages.
pub const ADMIN_TIMEOUT_MS: u64 = 10_000;
/// Pages a scan reads at most (a bound on a runaway table).
pub const SCAN_PAGES_MAX: usize = 10_000;
/// The table's partition key attribute.
pub const KEY_ATTRIBUTE: &str = "key";
pub const VALUE_ATTRIBUTE: &str = "value";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamoError {
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The store answered with an error; 4xx errors mean the request was refused.
    #[error("{operation} answered {status}: {body}")]
    Status {
        operation: String,
        status: u16,
        body: String,
    },
}

impl DynamoError {
    /// True when the write certainly did not happen.
    pub fn is_definite(&self) -> bool {
        match self {
            DynamoError::Http(e) => e.is_definite(),
            DynamoError::Status { status, .. } => (400..500).contains(status),
        }
    }

    fn error_type(&self) -> Option<&str> {
        match self {
            DynamoError::Status { body, .. } => body.split('#').next_back().and_then(|t| t.split('"').next()),
            DynamoError::Http(_) => None,
        }
    }
}

pub async fn call(
    http: &HttpClient,
    store_url: &str,
    operation: &str,
    body: &Value,
    timeout_ms: u64,
) -> Result<Value, DynamoError> {
    let target = format!("DynamoDB_20120810.{operation}");
    let response = http
        .send(
            "POST",
            &format!("{}/", store_url.trim_end_matches('/')),
            &[
                ("x-amz-target", target.as_str()),
                ("content-type", "application/x-amz-json-1.0"),
            ],
            Some(body.to_string().into_bytes()),
            timeout_ms,
        )
        .await?;
    if response.status != 200 {
        return Err(DynamoError::Status {
            operation: operation.to_string(),
            status: response.status,
            body: String::from_utf8_lossy(&response.body).chars().take(500).collect(),
        });
    }
    Ok(response.json().unwrap_or(Value::Null))
}

pub async fn put(http: &HttpClient, store_url: &str, table: &str, key: &str, value: &str) -> Result<(), DynamoError> {
    let body = json!({
        "TableName": table,
        "Item": {KEY_ATTRIBUTE: {"S": key}, VALUE_ATTRIBUTE: {"S": value}},
    });
    call(http, store_url, "PutItem", &body, WRITE_TIMEOUT_MS)
        .await
        .map(|_| ())
}

/// Creates `table` in the first region if missing and makes it global over every region.
pub async fn ensure_global_table(http: &HttpClient, stores: &[(String, String)], table: &str) -> Result<(), String> {
    let Some((first_region, first_url)) = stores.first() else {
        return Err("no regions".into());
    };
    let describe = json!({"TableName": table});
    let described = match call(http, first_url, "DescribeTable", &describe, ADMIN_TIMEOUT_MS).await {
        Ok(value) => value,
        Err(e) if e.error_type() == Some("ResourceNotFoundException") => {
            let create = json!({
                "TableName": table,
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
            });
            call(http, first_url, "CreateTable", &create, ADMIN_TIMEOUT_MS)
                .await
                .map_err(|e| format!("create table {table} in {first_region}: {e}"))?;
            call(http, first_url, "DescribeTable", &describe, ADMIN_TIMEOUT_MS)
                .await
                .map_err(|e| format!("describe table {table} in {first_region}: {e}"))?
        }
        Err(e) => return Err(format!("describe table {table} in {first_region} ({first_url}): {e}")),
    };
    let replicas: Vec<&str> = described["Table"]["Replicas"]
        .as_array()
        .map(|list| list.iter().filter_map(|r| r["RegionName"].as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<Value> = stores
        .iter()
        .skip(1)
        .filter(|(region, _)| !replicas.contains(&region.as_str()))
        .map(|(region, _)| json!({"Create": {"RegionName": region}}))
        .collect();
    if !missing.is_empty() {
        let update = json!({"TableName": table, "ReplicaUpdates": missing});
        call(http, first_url, "UpdateTable", &update, ADMIN_TIMEOUT_MS)
            .await
            .map_err(|e| format!("make table {table} global from {first_region}: {e}"))?;
    }
    Ok(())
}

/// Every item of `table` in one region whose key starts with `prefix`: key → value.
pub async fn scan(
    http: &HttpClient,
    store_url: &str,
    table: &str,
    prefix: &str,
) -> Result<BTreeMap<String, String>, DynamoError> {
    let mut items = BTreeMap::new();
    let mut start: Option<Value> = None;
    for _ in 0..SCAN_PAGES_MAX {
        let mut body = json!({"TableName": table, "ConsistentRead": true});
        if let Some(key) = start.take() {
            body["ExclusiveStartKey"] = key;
        }
        let page = call(http, store_url, "Scan", &body, ADMIN_TIMEOUT_MS).await?;
        for item in page["Items"].as_array().into_iter().flatten() {
            let (Some(key), Some(value)) = (item[KEY_ATTRIBUTE]["S"].as_str(), item[VALUE_ATTRIBUTE]["S"].as_str())
            else {
                continue;
            };
            if key.starts_with(prefix) {
                items.insert(key.to_string(), value.to_string());
            }
        }
        match page.get("LastEvaluatedKey") {
            Some(key) if !key.is_null() => start = Some(key.clone()),
            _ => return Ok(items),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_and_definiteness() {
        let e = DynamoError::Status {
            operation: "DescribeTable".into(),
            status: 400,
            body: r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"x"}"#.into(),
        };
        assert_eq!(e.error_type(), Some("ResourceNotFoundException"));
        assert!(e.is_definite());
        let e = DynamoError::Status {
            operation: "PutItem".into(),
            status: 500,
            body: String::new(),
        };
        assert!(!e.is_definite(), "a 500 may have written");
        assert!(!DynamoError::Http(HttpError::Timeout(5)).is_definite());
        assert!(DynamoError::Http(HttpError::NotSent("refused".into())).is_definite());
    }
}
