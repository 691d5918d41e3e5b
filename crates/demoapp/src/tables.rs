//! The shop's three tables, and `--tables-create`: create them if missing and, with several
//! regional stores, make them global tables (UpdateTable with ReplicaUpdates).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::dynamo::{Client, DynamoError};

/// How long to wait for a store to answer and a table to become ACTIVE.
pub const TABLES_WAIT_MS: u64 = 30_000;
/// Pause between checks while waiting.
pub const TABLES_POLL_MS: u64 = 200;

/// Table names: `{prefix}sessions`, `{prefix}carts`, `{prefix}orders`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    /// HASH `session` (S).
    pub sessions: String,
    /// HASH `session` (S), RANGE `product` (S); attribute `quantity` (N).
    pub carts: String,
    /// HASH `session` (S), RANGE `order_id` (S, time-ordered).
    pub orders: String,
}

impl TableNames {
    pub fn with_prefix(prefix: &str) -> TableNames {
        TableNames {
            sessions: format!("{prefix}sessions"),
            carts: format!("{prefix}carts"),
            orders: format!("{prefix}orders"),
        }
    }

    fn definitions(&self) -> Vec<Value> {
        let hash_only = |name: &str| {
            json!({
                "TableName": name,
                "AttributeDefinitions": [{"AttributeName": "session", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "session", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST"
            })
        };
        let with_range = |name: &str, range: &str| {
            json!({
                "TableName": name,
                "AttributeDefinitions": [
                    {"AttributeName": "session", "AttributeType": "S"},
                    {"AttributeName": range, "AttributeType": "S"}
                ],
                "KeySchema": [
                    {"AttributeName": "session", "KeyType": "HASH"},
                    {"AttributeName": range, "KeyType": "RANGE"}
                ],
                "BillingMode": "PAY_PER_REQUEST"
            })
        };
        vec![
            hash_only(&self.sessions),
            with_range(&self.carts, "product"),
            with_range(&self.orders, "order_id"),
        ]
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.sessions, &self.carts, &self.orders]
    }
}

/// Creates the missing tables on `store` and adds a replica in each of `other_regions` that
/// the table lacks. Safe to run again and from several instances.
pub async fn ensure(store: &Client, names: &TableNames, other_regions: &[String]) -> Result<(), DynamoError> {
    for definition in names.definitions() {
        let table = definition["TableName"].as_str().unwrap_or_default().to_string();
        let description = match describe_waiting(store, &table).await {
            Ok(description) => description,
            Err(error) if error.kind() == Some("ResourceNotFoundException") => {
                match store.call("CreateTable", &definition).await {
                    Ok(_) => tracing::info!(%table, store = %store.endpoint(), "table created"),
                    Err(error) if error.kind() == Some("ResourceInUseException") => {}
                    Err(error) => return Err(error),
                }
                wait_active(store, &table).await?
            }
            Err(error) => return Err(error),
        };
        let replicas: Vec<&str> = description["Replicas"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["RegionName"].as_str()).collect())
            .unwrap_or_default();
        let missing: Vec<&String> = other_regions
            .iter()
            .filter(|region| !replicas.contains(&region.as_str()))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let updates: Vec<Value> = missing
            .iter()
            .map(|region| json!({"Create": {"RegionName": region}}))
            .collect();
        match store
            .call("UpdateTable", &json!({"TableName": table, "ReplicaUpdates": updates}))
            .await
        {
            Ok(_) => tracing::info!(%table, replicas = ?missing, "table made global"),
            Err(error) if error.kind() == Some("ReplicaAlreadyExistsException") => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// DescribeTable, retrying while the store is unreachable (it may still be starting).
async fn describe_waiting(store: &Client, table: &str) -> Result<Value, DynamoError> {
    let deadline = Instant::now() + Duration::from_millis(TABLES_WAIT_MS);
    loop {
        match store.call("DescribeTable", &json!({"TableName": table})).await {
            Ok(value) => return Ok(value["Table"].clone()),
            Err(error @ DynamoError::Unreachable { .. }) if Instant::now() < deadline => {
                tracing::debug!(%error, "store not reachable yet");
                tokio::time::sleep(Duration::from_millis(TABLES_POLL_MS)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn wait_active(store: &Client, table: &str) -> Result<Value, DynamoError> {
    let deadline = Instant::now() + Duration::from_millis(TABLES_WAIT_MS);
    loop {
        let description = describe_waiting(store, table).await?;
        if description["TableStatus"] == "ACTIVE" || Instant::now() >= deadline {
            return Ok(description);
        }
        tokio::time::sleep(Duration::from_millis(TABLES_POLL_MS)).await;
    }
}
