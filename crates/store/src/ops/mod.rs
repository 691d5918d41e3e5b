//! One function per DynamoDB operation: decode and validate the request, run it against the
//! engine, shape the response as DynamoDB does.
//!
//! Invariant: write jobs handed to the engine validate everything (conditions, expression
//! results, sizes) before their first mutation, so a failed job leaves storage untouched.

mod batch;
mod items;
mod partiql;
mod query;
mod tables;

use std::collections::HashMap;
use std::sync::Arc;

use dynamo_protocol::value::{NESTING_DEPTH_MAX, VALIDATION_MARKER, item_size_bytes, strip_marker};
use dynamo_protocol::{ApiError, AttributeValue, ErrorKind, Item};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::expr;
use crate::global::Replication;

/// Largest item DynamoDB stores: 400 KB, names and values together.
pub const ITEM_BYTES_MAX: usize = 400 * 1024;
/// Query and Scan stop reading after this much data and return LastEvaluatedKey.
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
pub const BATCH_WRITE_ITEMS_MAX: usize = 25;
pub const BATCH_GET_KEYS_MAX: usize = 100;
pub const TRANSACTION_ITEMS_MAX: usize = 100;
/// BatchGetItem answers at most this much and leaves the rest in UnprocessedKeys.
pub const BATCH_GET_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const LIST_TABLES_LIMIT_MAX: usize = 100;

/// The operations this store serves, in the order DynamoDB's API reference lists them.
pub const OPERATIONS: &[&str] = &[
    "BatchGetItem",
    "BatchExecuteStatement",
    "BatchWriteItem",
    "CreateBackup",
    "CreateGlobalTable",
    "CreateTable",
    "DeleteBackup",
    "DeleteItem",
    "DeleteTable",
    "DescribeBackup",
    "DescribeContinuousBackups",
    "DescribeEndpoints",
    "DescribeGlobalTable",
    "DescribeGlobalTableSettings",
    "DescribeLimits",
    "DescribeTable",
    "DescribeTimeToLive",
    "ExecuteStatement",
    "ExecuteTransaction",
    "GetItem",
    "ListBackups",
    "ListGlobalTables",
    "ListTables",
    "ListTagsOfResource",
    "PutItem",
    "Query",
    "RestoreTableFromBackup",
    "RestoreTableToPointInTime",
    "Scan",
    "TagResource",
    "TransactGetItems",
    "TransactWriteItems",
    "UntagResource",
    "UpdateContinuousBackups",
    "UpdateGlobalTable",
    "UpdateGlobalTableSettings",
    "UpdateItem",
    "UpdateTable",
    "UpdateTimeToLive",
];

/// The store's operation layer; shared by every connection.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    transactions: Arc<batch::TransactionTokens>,
    global: Option<Arc<Replication>>,
    backups: Arc<crate::backup::Backups>,
}

impl Store {
    /// A store keeping its backups in [`Engine::backup_dir`].
    pub fn new(engine: Engine) -> Store {
        let backups = Arc::new(crate::backup::Backups::new(engine.backup_dir()));
        Store {
            engine,
            transactions: Arc::new(batch::TransactionTokens::default()),
            global: None,
            backups,
        }
    }

    pub fn backups(&self) -> &Arc<crate::backup::Backups> {
        &self.backups
    }

    /// DescribeTable's shape of `meta` (CREATING while a restore fills it).
    pub fn describe_table_json(&self, meta: &crate::catalog::TableMeta) -> Value {
        tables::describe(self, meta, "ACTIVE")
    }

    /// A store that replicates global tables to its peers.
    pub fn with_replication(engine: Engine, replication: Arc<Replication>) -> Store {
        Store {
            global: Some(replication),
            ..Store::new(engine)
        }
    }

    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.global.as_ref()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs one operation on a JSON request body and returns the JSON response body.
    pub async fn handle(&self, operation: &str, body: &[u8]) -> Result<Value, ApiError> {
        match operation {
            "CreateTable" => tables::create_table(self, decode(body)?).await,
            "DeleteTable" => tables::delete_table(self, decode(body)?).await,
            "DescribeTable" => tables::describe_table(self, decode(body)?),
            "ListTables" => tables::list_tables(self, decode(body)?),
            "UpdateTable" => tables::update_table(self, decode(body)?).await,
            "DescribeEndpoints" => Ok(tables::describe_endpoints()),
            "DescribeLimits" => Ok(tables::describe_limits()),
            "TagResource" => tables::tag_resource(self, decode(body)?).await,
            "UntagResource" => tables::untag_resource(self, decode(body)?).await,
            "ListTagsOfResource" => tables::list_tags(self, decode(body)?),
            "UpdateTimeToLive" => tables::update_ttl(self, decode(body)?).await,
            backup if crate::backup::OPERATIONS.contains(&backup) => crate::backup::handle(self, backup, body).await,
            "DescribeTimeToLive" => tables::describe_ttl(self, decode(body)?),
            "PutItem" => items::put_item(self, decode(body)?).await,
            "GetItem" => items::get_item(self, decode(body)?),
            "DeleteItem" => items::delete_item(self, decode(body)?).await,
            "UpdateItem" => items::update_item(self, decode(body)?).await,
            "Query" => query::query(self, decode(body)?),
            "Scan" => query::scan(self, decode(body)?),
            "BatchGetItem" => batch::batch_get(self, decode(body)?),
            "BatchWriteItem" => batch::batch_write(self, decode(body)?).await,
            "TransactWriteItems" => batch::transact_write(self, decode(body)?, body).await,
            "TransactGetItems" => batch::transact_get(self, decode(body)?),
            "ExecuteStatement" => partiql::execute_statement(self, decode(body)?).await,
            "BatchExecuteStatement" => partiql::batch_execute_statement(self, decode(body)?).await,
            "ExecuteTransaction" => partiql::execute_transaction(self, decode(body)?).await,
            "DescribeGlobalTable" | "DescribeGlobalTableSettings" => Err(tables::legacy_global_table_not_found(body)),
            "ListGlobalTables" => Ok(serde_json::json!({"GlobalTables": []})),
            "CreateGlobalTable" | "UpdateGlobalTable" | "UpdateGlobalTableSettings" => Err(ApiError::validation(
                "Global tables version 2017.11.29 is not supported for new tables: use UpdateTable with ReplicaUpdates (version 2019.11.21)",
            )),
            other => Err(ApiError::new(
                ErrorKind::UnknownOperation,
                format!("Unknown operation {other}: this store serves {}", OPERATIONS.join(", ")),
            )),
        }
    }
}

/// Decodes a request body, telling shape errors (SerializationException) from values DynamoDB
/// refuses (ValidationException).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        if message.starts_with(VALIDATION_MARKER) {
            ApiError::validation(strip_marker(&message))
        } else if error.is_syntax() || error.is_eof() {
            ApiError::serialization(format!(
                "Start of structure or map found where not expected, or the body is not valid JSON: {message}"
            ))
        } else if message.starts_with("missing field") {
            let field = message
                .trim_start_matches("missing field `")
                .split('`')
                .next()
                .unwrap_or_default();
            ApiError::validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                member_path(field)
            ))
        } else {
            ApiError::serialization(strip_marker(&message).to_string())
        }
    })
}

/// Where DynamoDB says a missing member is: its camel-case name, under the structure that holds
/// it where serde's error names only the field (the capacity units of a ProvisionedThroughput).
fn member_path(field: &str) -> String {
    match field {
        "ReadCapacityUnits" | "WriteCapacityUnits" => format!("provisionedThroughput.{}", lower_first(field)),
        _ => lower_first(field),
    }
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub fn item_json(item: &Item) -> Value {
    serde_json::to_value(item).expect("an item always serialises")
}

/// Longest attribute name DynamoDB accepts, in bytes (names are under 64 KB).
pub use crate::expr::ATTRIBUTE_NAME_BYTES_MAX;

/// Checks an item for the limits DynamoDB enforces on every stored item.
pub fn validate_item_limits(item: &Item) -> Result<(), ApiError> {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    if let Some(problem) = names.into_iter().find_map(|name| expr::attribute_name_problem(name)) {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: {problem}"
        )));
    }
    if item_size_bytes(item) > ITEM_BYTES_MAX {
        return Err(ApiError::validation("Item size has exceeded the maximum allowed size"));
    }
    validate_nesting(item)
}

pub fn validate_nesting(item: &Item) -> Result<(), ApiError> {
    if item.values().any(|v| v.nesting_depth() > NESTING_DEPTH_MAX) {
        // DynamoDB's words (the limit, 32 levels, is in its documentation, not its message).
        return Err(ApiError::validation(
            "Nesting Levels have exceeded supported limits: Attributes in the item have nested levels beyond supported limit",
        ));
    }
    Ok(())
}

/// The values and names of a request's expressions, with the rule that the maps, when given,
/// are not empty.
pub struct ExpressionInputs {
    pub names: Option<HashMap<String, String>>,
    pub values: Option<HashMap<String, AttributeValue>>,
}

impl ExpressionInputs {
    pub fn context(&self) -> expr::Context<'_> {
        expr::Context::new(self.names.as_ref(), self.values.as_ref())
    }
}

/// DynamoDB refuses a request that mixes expression and legacy parameters.
pub fn refuse_mixed(expression_params: &[(&str, bool)], legacy_params: &[(&str, bool)]) -> Result<(), ApiError> {
    let expressions: Vec<&str> = expression_params
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
    let legacy: Vec<&str> = legacy_params.iter().filter(|(_, set)| *set).map(|(n, _)| *n).collect();
    if !expressions.is_empty() && !legacy.is_empty() {
        return Err(ApiError::validation(format!(
            "Can not use both expression and non-expression parameters in the same request: Non-expression parameters: {{{}}} Expression parameters: {{{}}}",
            legacy.join(", "),
            expressions.join(", ")
        )));
    }
    Ok(())
}

/// Capacity units as DynamoDB computes them: reads in 4 KB units (halved for eventually
/// consistent reads), writes in 1 KB units, at least one unit per item touched.
pub fn read_units(size_bytes: usize, consistent: bool) -> f64 {
    let units = (size_bytes.max(1)).div_ceil(4096) as f64;
    if consistent { units } else { units / 2.0 }
}

pub fn write_units(size_bytes: usize) -> f64 {
    (size_bytes.max(1)).div_ceil(1024) as f64
}

pub fn consumed_capacity(mode: Option<&str>, table: &str, units: f64) -> Option<Value> {
    match mode {
        Some("TOTAL") => Some(json!({"TableName": table, "CapacityUnits": units})),
        Some("INDEXES") => Some(json!({"TableName": table, "CapacityUnits": units, "Table": {"CapacityUnits": units}})),
        _ => None,
    }
}

pub fn validate_return_consumed_capacity(mode: Option<&str>) -> Result<(), ApiError> {
    match mode {
        None | Some("NONE" | "TOTAL" | "INDEXES") => Ok(()),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum value set: [INDEXES, TOTAL, NONE]"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct Sample {
        table_name: String,
        item: Option<Item>,
    }

    #[test]
    fn decode_separates_shape_from_validation_errors() {
        let error = decode::<Sample>(b"{not json").expect_err("syntax");
        assert_eq!(error.kind, ErrorKind::Serialization);
        let error = decode::<Sample>(br#"{"TableName": 5}"#).expect_err("wrong type");
        assert_eq!(error.kind, ErrorKind::Serialization);
        let error = decode::<Sample>(br#"{"TableName": "t", "Item": {"a": {}}}"#).expect_err("empty value");
        assert_eq!(error.kind, ErrorKind::Validation);
        assert!(
            error.message.contains("Supplied AttributeValue is empty"),
            "{}",
            error.message
        );
        let error = decode::<Sample>(br#"{}"#).expect_err("missing field");
        assert_eq!(error.kind, ErrorKind::Validation);
        assert!(error.message.contains("'tableName'"), "{}", error.message);
    }

    #[test]
    fn capacity_units_round_up() {
        assert_eq!(write_units(1), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(10, false), 0.5);
    }
}
