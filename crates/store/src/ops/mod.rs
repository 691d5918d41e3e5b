//! One function per DynamoDB operation: decode and validate the request, run it against the
//! engine, shape the response as DynamoDB does.
//!
//! Invariant: write jobs handed to the engine validate everything (conditions, expression
//! results, sizes) before their first mutation, so a failed job leaves storage untouched.

mod batch;
mod items;
mod partiql;
mod query;
mod shapes;
mod table_arns;
mod tables;
mod transaction;

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
/// A TransactWriteItems may carry at most this much data: its items, keys and expression
/// values together (DynamoDB's "aggregate size of the items in the transaction", measured on the
/// request: deleting 5 MB of items in one transaction is allowed, putting them is not).
pub const TRANSACTION_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
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

pub use tables::{ALIGN_RETRY_INTERVAL_ENV, ALIGN_RETRY_INTERVAL_MS, align_retry_interval_ms};

/// The store's operation layer; shared by every connection.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    transactions: Arc<batch::TransactionTokens>,
    global: Option<Arc<Replication>>,
    backups: Arc<crate::backup::Backups>,
}

impl Store {
    /// Sends again the TTL and index changes of global tables made here that some replica has
    /// not confirmed (see `tables::align_unconfirmed`); returns how many are still unconfirmed.
    pub async fn align_unconfirmed(&self) -> usize {
        tables::align_unconfirmed(self).await
    }

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

    /// Runs one operation on a JSON request body and returns the JSON response body. A table
    /// may be named by its ARN wherever a name goes (`table_arns`).
    pub async fn handle(&self, operation: &str, body: &[u8]) -> Result<Value, ApiError> {
        match table_arns::rewrite(operation, body, self.engine.region())? {
            Some(rewritten) => {
                let answer = self.handle_named(operation, &rewritten.body).await?;
                Ok(rewritten.restore(answer))
            }
            None => self.handle_named(operation, body).await,
        }
    }

    /// DynamoDB's front end reads the members' types and checks every constraint before the
    /// operation's own checks (`shapes`); a type the operation's decoder refuses is then worded
    /// as DynamoDB words it, or read leniently as DynamoDB reads it.
    async fn handle_named(&self, operation: &str, body: &[u8]) -> Result<Value, ApiError> {
        let Some(shape) = shapes::input(operation) else {
            return self.run(operation, body).await;
        };
        shapes::check(shape, body)?;
        match self.run(operation, body).await {
            // A SerializationException comes from decoding, before the operation did anything.
            Err(error) if error.kind == ErrorKind::Serialization => match shapes::reread(shape, body) {
                shapes::Reread::Refused(refusal) => Err(refusal),
                shapes::Reread::Rewritten(rewritten) => {
                    shapes::check(shape, &rewritten)?;
                    self.run(operation, &rewritten).await
                }
                shapes::Reread::Unchanged => Err(error),
            },
            Err(refusal) if refusal.kind == ErrorKind::Validation => {
                Err(shapes::earlier_refusal(operation, body, &refusal).unwrap_or(refusal))
            }
            answer => answer,
        }
    }

    async fn run(&self, operation: &str, body: &[u8]) -> Result<Value, ApiError> {
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
///
/// A body that is not JSON (an empty one included) gets what DynamoDB answers: a
/// SerializationException with no message at all, `{"__type":
/// "com.amazon.coral.service#SerializationException"}`; what the parser found is logged at
/// debug level for whoever runs the store.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        if message.starts_with(VALIDATION_MARKER) {
            ApiError::validation(strip_marker(&message))
        } else if message.starts_with("recursion limit exceeded") {
            // JSON, but nested past what the decoder follows (DynamoDB allows 32 levels in an item).
            ApiError::serialization(format!(
                "The request's JSON is nested too deeply to decode ({message}); an item may nest 32 levels"
            ))
        } else if error.is_syntax() || error.is_eof() {
            tracing::debug!(%error, "request body is not JSON: SerializationException");
            ApiError::serialization("")
        } else if message.starts_with("missing field") {
            let field = message
                .trim_start_matches("missing field `")
                .split('`')
                .next()
                .unwrap_or_default();
            ApiError::validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                missing_member_path::<T>(body, field)
            ))
        } else {
            ApiError::serialization(strip_marker(&message).to_string())
        }
    })
}

/// Where DynamoDB says a missing member `field` is, as its generated messages name members:
/// each structure's member in camel case, a list element as its 1-based index then `member`,
/// a map entry (RequestItems' tables) as its key then `member` — `keySchema.1.member.keyType`,
/// `transactItems.1.member.put.item`, `requestItems.orders.member.keys`. Only a failed decode
/// pays for it: the body is decoded again, recording the path.
fn missing_member_path<T: DeserializeOwned>(body: &[u8], field: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    if let Err(error) = serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        let mut map_keys_follow = false;
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    parts.push(index.saturating_add(1).to_string());
                    parts.push("member".to_string());
                }
                serde_path_to_error::Segment::Map { key } if map_keys_follow => {
                    parts.push(key.clone());
                    parts.push("member".to_string());
                    map_keys_follow = false;
                }
                serde_path_to_error::Segment::Map { key } => {
                    // The maps whose keys are names (tables), not members.
                    map_keys_follow = key == "RequestItems";
                    parts.push(lower_first(key));
                }
                serde_path_to_error::Segment::Enum { variant } => parts.push(lower_first(variant)),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
    }
    parts.push(lower_first(field));
    parts.join(".")
}

pub(crate) fn lower_first(text: &str) -> String {
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
    check_item_limits(item, "Item size has exceeded the maximum allowed size")
}

/// [`validate_item_limits`] of the item an update makes, in DynamoDB's words for it.
pub fn validate_updated_item_limits(item: &Item) -> Result<(), ApiError> {
    check_item_limits(item, "Item size to update has exceeded the maximum allowed size")
}

fn check_item_limits(item: &Item, too_big: &'static str) -> Result<(), ApiError> {
    let mut names: Vec<&String> = item.keys().collect();
    names.sort();
    if let Some(problem) = names.into_iter().find_map(|name| expr::attribute_name_problem(name)) {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: {problem}"
        )));
    }
    if item_size_bytes(item) > ITEM_BYTES_MAX {
        return Err(ApiError::validation(too_big));
    }
    validate_nesting(item)
}

/// DynamoDB's 32 levels count the top-level attribute: a value nested 31 maps or lists deep
/// is the deepest it stores (its leaf is a 32-element document path, the longest an expression
/// may name), and one nested 32 deep is refused.
pub fn validate_nesting(item: &Item) -> Result<(), ApiError> {
    if item.values().any(|v| v.nesting_depth() >= NESTING_DEPTH_MAX) {
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

/// DynamoDB refuses expression names and values in a request that gives no expression to use
/// them, before it looks at the maps themselves (checked next, `Context::check_maps`): names need one of `expressions` given, values
/// one of `value_expressions`, which its message then lists as null (`ExpressionAttributeValues
/// can only be specified when using expressions: UpdateExpression and ConditionExpression are
/// null`).
pub fn refuse_inputs_without_expressions(
    inputs: &ExpressionInputs,
    expressions: &[(&str, bool)],
    value_expressions: &[(&str, bool)],
) -> Result<(), ApiError> {
    if inputs.names.is_some() && !expressions.iter().any(|(_, given)| *given) {
        return Err(ApiError::validation(
            "ExpressionAttributeNames can only be specified when using expressions",
        ));
    }
    if inputs.values.is_some() && !value_expressions.iter().any(|(_, given)| *given) {
        let names: Vec<&str> = value_expressions.iter().map(|(name, _)| *name).collect();
        let listed = match names.as_slice() {
            [one] => format!("{one} is null"),
            many => format!("{} are null", many.join(" and ")),
        };
        return Err(ApiError::validation(format!(
            "ExpressionAttributeValues can only be specified when using expressions: {listed}"
        )));
    }
    // Then the maps themselves, before any expression is parsed (DynamoDB's order: an empty
    // map is named as such, not as the expression's problem).
    inputs.context().check_maps()
}

/// DynamoDB refuses a document path that looks inside a key attribute of the table (`Key`) or of
/// one of its indexes (`IndexKey`): key attributes are scalars, so `a.b` or `a[0]` where `a` is
/// one can only be a mistake, in any expression.
pub fn refuse_nested_key_paths<'p>(
    meta: &crate::catalog::TableMeta,
    paths: impl IntoIterator<Item = &'p expr::Path>,
) -> Result<(), ApiError> {
    for path in paths.into_iter().filter(|path| path.0.len() > 1) {
        let Some(top) = path.top_attribute() else { continue };
        let role = if meta.key.is_key_attribute(top) {
            "Key"
        } else if meta.indexes.iter().any(|index| index.key.is_key_attribute(top)) {
            "IndexKey"
        } else {
            continue;
        };
        return Err(ApiError::validation(format!(
            "Key attributes must be scalars; list random access '[]' and map lookup '.' are not allowed: {role}: {top}"
        )));
    }
    Ok(())
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

/// Capacity units an operation consumed, split as ReturnConsumedCapacity=INDEXES reports
/// them: on the table and on each index it touched.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Capacity {
    pub table: f64,
    pub global: std::collections::BTreeMap<String, f64>,
    pub local: std::collections::BTreeMap<String, f64>,
}

impl Capacity {
    /// Capacity consumed on the table alone (reads of the table, writes to a table without
    /// indexes).
    pub fn table(units: f64) -> Capacity {
        Capacity {
            table: units,
            ..Capacity::default()
        }
    }

    /// Capacity consumed on one index alone (a Query or Scan of the index).
    pub fn index(index: &crate::catalog::IndexMeta, units: f64) -> Capacity {
        let mut capacity = Capacity::default();
        capacity.add_index(index, units);
        capacity
    }

    fn add_index(&mut self, index: &crate::catalog::IndexMeta, units: f64) {
        let map = match index.kind {
            crate::catalog::IndexKind::Global => &mut self.global,
            crate::catalog::IndexKind::Local => &mut self.local,
        };
        *map.entry(index.name.clone()).or_default() += units;
    }

    /// What a write of an item from `old` to `new` (either absent) consumes, by DynamoDB's
    /// rules: the table one unit per KB of the larger of the two items; each index one unit per
    /// KB of its entry when the write puts, changes or deletes the entry, twice (a delete and
    /// a put) when it changes the entry's index key, nothing when the item has no entry in the
    /// index before or after or the entry stays the same.
    pub fn write(meta: &crate::catalog::TableMeta, old: Option<&Item>, new: Option<&Item>) -> Capacity {
        let size = old
            .map(item_size_bytes)
            .unwrap_or(0)
            .max(new.map(item_size_bytes).unwrap_or(0));
        let mut capacity = Capacity::table(write_units(size));
        for index in &meta.indexes {
            // The entry's index key, and the entry, of an item that has one in the index.
            let entry = |item: Option<&Item>| {
                let item = item?;
                let key = crate::engine::index_entry_key(meta.key_hash, index, item, &[])?;
                Some((key, index.project(&meta.key, item)))
            };
            let units = match (entry(old), entry(new)) {
                (None, None) => 0.0,
                (Some((_, entry)), None) | (None, Some((_, entry))) => write_units(item_size_bytes(&entry)),
                (Some((old_key, old_entry)), Some((new_key, new_entry))) if old_key != new_key => {
                    write_units(item_size_bytes(&old_entry)) + write_units(item_size_bytes(&new_entry))
                }
                (Some((_, old_entry)), Some((_, new_entry))) if old_entry != new_entry => {
                    write_units(item_size_bytes(&old_entry).max(item_size_bytes(&new_entry)))
                }
                (Some(_), Some(_)) => 0.0,
            };
            if units > 0.0 {
                capacity.add_index(index, units);
            }
        }
        capacity
    }

    /// Adds `other` (another item of the same request) to this.
    pub fn add(&mut self, other: &Capacity) {
        self.table += other.table;
        for (name, units) in &other.global {
            *self.global.entry(name.clone()).or_default() += units;
        }
        for (name, units) in &other.local {
            *self.local.entry(name.clone()).or_default() += units;
        }
    }

    /// Every unit consumed (the table's and its indexes').
    pub fn total(&self) -> f64 {
        self.table + self.global.values().sum::<f64>() + self.local.values().sum::<f64>()
    }

    /// The ConsumedCapacity object for `mode` (TOTAL or INDEXES; `None` otherwise). INDEXES adds
    /// `Table` when the table itself was used and `GlobalSecondaryIndexes` /
    /// `LocalSecondaryIndexes` for the indexes that were, each `{"CapacityUnits": n}`.
    pub fn json(&self, mode: Option<&str>, table: &str) -> Option<Value> {
        let mut value = match mode {
            Some("TOTAL" | "INDEXES") => json!({"TableName": table, "CapacityUnits": self.total()}),
            _ => return None,
        };
        if mode == Some("INDEXES") {
            let units = |map: &std::collections::BTreeMap<String, f64>| -> Value {
                map.iter()
                    .map(|(name, units)| (name.clone(), json!({"CapacityUnits": units})))
                    .collect::<serde_json::Map<String, Value>>()
                    .into()
            };
            // Always, 0 on a read of an index alone: DynamoDB sends `"Table": {"CapacityUnits":
            // 0.0}` beside the index's units (as recorded against it by dynalite's suite, and as
            // DynamoDB Local answers).
            value["Table"] = json!({"CapacityUnits": self.table});
            if !self.global.is_empty() {
                value["GlobalSecondaryIndexes"] = units(&self.global);
            }
            if !self.local.is_empty() {
                value["LocalSecondaryIndexes"] = units(&self.local);
            }
        }
        Some(value)
    }
}

/// The ConsumedCapacity of a write from `old` to `new` when `mode` asks for it.
pub fn write_capacity_json(
    mode: Option<&str>,
    meta: &crate::catalog::TableMeta,
    old: Option<&Item>,
    new: Option<&Item>,
) -> Option<Value> {
    if !capacity_wanted(mode) {
        return None;
    }
    Capacity::write(meta, old, new).json(mode, &meta.name)
}

/// The ConsumedCapacity list of an operation over several tables (one entry a table) when
/// `mode` asks for it.
pub fn capacity_list(mode: Option<&str>, capacity: &std::collections::BTreeMap<String, Capacity>) -> Option<Value> {
    capacity_wanted(mode).then(|| {
        Value::Array(
            capacity
                .iter()
                .filter_map(|(table, consumed)| consumed.json(mode, table))
                .collect(),
        )
    })
}

/// Whether ReturnConsumedCapacity asks for the consumed capacity.
pub fn capacity_wanted(mode: Option<&str>) -> bool {
    matches!(mode, Some("TOTAL" | "INDEXES"))
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
        // DynamoDB's answer to a body that is not JSON carries no message.
        assert_eq!(error.message, "");
        let error = decode::<Sample>(b"").expect_err("empty body");
        assert_eq!(error.kind, ErrorKind::Serialization);
        assert_eq!(error.message, "");
        // JSON nested past the decoder's depth is JSON: its error says what is wrong.
        let deep = format!(
            r#"{{"TableName": "t", "Item": {{"a": {}{{"S": "x"}}{}}}}}"#,
            r#"{"L": ["#.repeat(200),
            "]}".repeat(200)
        );
        let error = decode::<Sample>(deep.as_bytes()).expect_err("too deep");
        assert_eq!(error.kind, ErrorKind::Serialization);
        assert!(error.message.contains("nested too deeply"), "{}", error.message);
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
    fn shared_request_members_keep_their_errors() {
        // Members PutItem shares with DeleteItem and UpdateItem, and Query with Scan, decode
        // with the same kinds of errors as the request's own members.
        let error = decode::<items::PutItemRequest>(br#"{"TableName": "t", "Item": {}, "ConditionExpression": 5}"#)
            .err()
            .expect("a number as ConditionExpression");
        assert_eq!(error.kind, ErrorKind::Serialization);
        assert!(
            error
                .message
                .starts_with("invalid type: integer `5`, expected a string"),
            "{}",
            error.message
        );
        let error = decode::<query::ScanRequest>(br#"{"TableName": "t", "ExpressionAttributeValues": {":v": {}}}"#)
            .err()
            .expect("an empty AttributeValue");
        assert_eq!(error.kind, ErrorKind::Validation);
        assert!(
            error.message.contains("Supplied AttributeValue is empty"),
            "{}",
            error.message
        );
        let error = decode::<query::QueryRequest>(br#"{"Limit": 1}"#)
            .err()
            .expect("no TableName");
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
