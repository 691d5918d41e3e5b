//! The lease table in the local regional store: one item per lock name, read with a
//! consistent GetItem and changed only by conditional writes (DynamoDB's `ConditionExpression`).

use demoapp::dynamo::{Client, DynamoError};
use serde_json::{Value, json};

use crate::lease::{Expect, LeaseRecord};

/// The partition key of the lease table (a string).
pub const KEY_ATTRIBUTE: &str = "name";
/// The default table name.
pub const TABLE_DEFAULT: &str = "switchyard_locks";
/// Longest lock name (bytes).
pub const NAME_BYTES_MAX: usize = 255;

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The condition failed: the record is not what the writer expected.
    #[error("the lease record changed (someone else wrote it)")]
    Conflict,
    #[error(transparent)]
    Store(#[from] DynamoError),
}

/// Checks a lock name: 1..=255 bytes of letters, digits and `-_.:/`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("--name must have 1..={NAME_BYTES_MAX} bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        return Err(format!(
            "--name '{name}' contains '{bad}': use letters, digits and - _ . : / (e.g. magento-cron)"
        ));
    }
    Ok(())
}

/// The lease table of one store.
pub struct LeaseTable {
    pub client: Client,
    pub table: String,
}

fn number(value: &Value, attribute: &str) -> Option<u64> {
    value.get(attribute)?.get("N")?.as_str()?.parse().ok()
}

fn string(value: &Value, attribute: &str) -> Option<String> {
    Some(value.get(attribute)?.get("S")?.as_str()?.to_string())
}

/// Reads a lease item; `Err` names the attribute that is missing or malformed.
pub fn parse_record(item: &Value) -> Result<LeaseRecord, String> {
    let missing = |what: &str| format!("the lease item lacks a valid '{what}' attribute");
    Ok(LeaseRecord {
        holder: string(item, "holder").ok_or_else(|| missing("holder"))?,
        region: string(item, "region").ok_or_else(|| missing("region"))?,
        token: number(item, "token").ok_or_else(|| missing("token"))?,
        generation: number(item, "generation").ok_or_else(|| missing("generation"))?,
        expires_at_ms: number(item, "expires_at_ms").ok_or_else(|| missing("expires_at_ms"))?,
    })
}

impl LeaseTable {
    fn key(&self, name: &str) -> Value {
        json!({ KEY_ATTRIBUTE: {"S": name} })
    }

    /// Checks the table exists and returns the regions it replicates to (other than this one).
    pub async fn replicas(&self) -> Result<Vec<String>, DynamoError> {
        let mut regions = self.regions().await?;
        regions.retain(|r| r != self.client.region());
        Ok(regions)
    }

    /// Checks the table exists and returns every region of its replicas (this one among them
    /// when it is a global table; none when it is not one).
    pub async fn regions(&self) -> Result<Vec<String>, DynamoError> {
        let answer = self
            .client
            .call("DescribeTable", &json!({"TableName": self.table}))
            .await?;
        Ok(answer["Table"]["Replicas"]
            .as_array()
            .map(|replicas| {
                replicas
                    .iter()
                    .filter_map(|r| r["RegionName"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The current record, if any.
    pub async fn read(&self, name: &str) -> Result<Option<LeaseRecord>, DynamoError> {
        let answer = self
            .client
            .call(
                "GetItem",
                &json!({"TableName": self.table, "Key": self.key(name), "ConsistentRead": true}),
            )
            .await?;
        match answer.get("Item") {
            None | Some(Value::Null) => Ok(None),
            Some(item) => parse_record(item).map(Some).map_err(|reason| DynamoError::Protocol {
                endpoint: self.client.endpoint().to_string(),
                reason: format!("table {} item {name}: {reason}", self.table),
            }),
        }
    }

    /// Writes a new lease if the record is still what `expect` says.
    pub async fn take(&self, name: &str, record: &LeaseRecord, expect: &Expect, now_ms: u64) -> Result<(), WriteError> {
        let item = json!({
            KEY_ATTRIBUTE: {"S": name},
            "holder": {"S": record.holder},
            "region": {"S": record.region},
            "token": {"N": record.token.to_string()},
            "generation": {"N": record.generation.to_string()},
            "expires_at_ms": {"N": record.expires_at_ms.to_string()},
            "acquired_at_ms": {"N": now_ms.to_string()},
        });
        let mut request = json!({"TableName": self.table, "Item": item});
        match expect {
            Expect::Absent => {
                request["ConditionExpression"] = json!("attribute_not_exists(#k)");
                request["ExpressionAttributeNames"] = json!({"#k": KEY_ATTRIBUTE});
            }
            Expect::Unchanged { token, expires_at_ms } => {
                request["ConditionExpression"] = json!("#t = :t AND #e = :e");
                request["ExpressionAttributeNames"] = json!({"#t": "token", "#e": "expires_at_ms"});
                request["ExpressionAttributeValues"] =
                    json!({":t": {"N": token.to_string()}, ":e": {"N": expires_at_ms.to_string()}});
            }
        }
        self.conditional("PutItem", &request).await
    }

    /// Moves the expiry of our lease (same holder and token) to `expires_at_ms`; 0 releases it.
    pub async fn set_expiry(&self, name: &str, holder: &str, token: u64, expires_at_ms: u64) -> Result<(), WriteError> {
        let request = json!({
            "TableName": self.table,
            "Key": self.key(name),
            "UpdateExpression": "SET #e = :e",
            "ConditionExpression": "#t = :t AND #h = :h",
            "ExpressionAttributeNames": {"#e": "expires_at_ms", "#t": "token", "#h": "holder"},
            "ExpressionAttributeValues": {
                ":e": {"N": expires_at_ms.to_string()},
                ":t": {"N": token.to_string()},
                ":h": {"S": holder},
            },
        });
        self.conditional("UpdateItem", &request).await
    }

    async fn conditional(&self, operation: &str, request: &Value) -> Result<(), WriteError> {
        match self.client.call(operation, request).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == Some("ConditionalCheckFailedException") => Err(WriteError::Conflict),
            Err(error) => Err(WriteError::Store(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("magento-cron").is_ok());
        assert!(check_name("wp/cron:events.1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(256)).is_err());
        let error = check_name("cron job").expect_err("refused");
        assert!(error.contains("contains ' '"), "{error}");
    }

    #[test]
    fn records_parse_and_name_what_is_missing() {
        let item = json!({
            "name": {"S": "cron"}, "holder": {"S": "web-1:7:ab"}, "region": {"S": "us-east-1"},
            "token": {"N": "4294967297"}, "generation": {"N": "1"}, "expires_at_ms": {"N": "0"},
        });
        let record = parse_record(&item).expect("valid");
        assert_eq!(record.token, (1 << 32) + 1);
        assert_eq!(record.expires_at_ms, 0);
        let mut broken = item.clone();
        broken["token"] = json!({"S": "x"});
        assert!(parse_record(&broken).expect_err("refused").contains("'token'"));
    }
}
