//! Multi-item operations: BatchGetItem, BatchWriteItem, TransactWriteItems, TransactGetItems.
//!
//! A transaction runs as one job of the writer: every condition is checked against the
//! current items first, and only if all hold are the writes applied — in the same durable
//! batch, so readers see all of it or none of it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use dynamo_protocol::error::CancellationReason;
use dynamo_protocol::{ApiError, AttributeValue, ErrorKind, Item};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::items::{
    build_condition, build_projection, build_update, parse_return_on_failure, validate_key, validate_put,
    validate_put_key,
};
use super::transaction::{self, TxAction, TxStep};
use super::{
    BATCH_GET_KEYS_MAX, BATCH_GET_RESPONSE_BYTES_MAX, BATCH_WRITE_ITEMS_MAX, Capacity, ExpressionInputs, Store,
    TRANSACTION_ITEMS_MAX, TRANSACTION_PAYLOAD_BYTES_MAX, capacity_list, capacity_wanted, item_json, read_units,
    validate_item_limits,
};
use crate::catalog::TableMeta;
use crate::expr::{self, Path};

/// How long a ClientRequestToken makes a TransactWriteItems idempotent (DynamoDB: 10 minutes).
pub const TRANSACTION_TOKEN_TTL_MS: u64 = 10 * 60 * 1000;
/// Tokens remembered at most; the oldest are forgotten first.
pub const TRANSACTION_TOKENS_MAX: usize = 100_000;

#[derive(Default)]
pub struct TransactionTokens {
    seen: Mutex<(HashMap<String, ([u8; 32], u64)>, VecDeque<(String, u64)>)>,
}

impl TransactionTokens {
    /// `Some(true)` if this token already committed this same request; an error if the token
    /// was used for a different request.
    pub(super) fn check(&self, token: &str, digest: [u8; 32], now_ms: u64) -> Result<bool, ApiError> {
        let mut guard = self.seen.lock().expect("token lock is never poisoned");
        let (map, order) = &mut *guard;
        while let Some((oldest, at)) = order.front() {
            if now_ms.saturating_sub(*at) > TRANSACTION_TOKEN_TTL_MS || map.len() > TRANSACTION_TOKENS_MAX {
                map.remove(oldest);
                order.pop_front();
            } else {
                break;
            }
        }
        match map.get(token) {
            Some((seen, _)) if *seen == digest => Ok(true),
            Some(_) => Err(ApiError::new(
                ErrorKind::IdempotentParameterMismatch,
                "The request uses the same client token as a previous, but non-identical request. Use a new ClientRequestToken",
            )),
            None => Ok(false),
        }
    }

    pub(super) fn remember(&self, token: String, digest: [u8; 32], now_ms: u64) {
        let mut guard = self.seen.lock().expect("token lock is never poisoned");
        let (map, order) = &mut *guard;
        map.insert(token.clone(), (digest, now_ms));
        order.push_back((token, now_ms));
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeysAndAttributes {
    keys: Vec<Item>,
    projection_expression: Option<String>,
    attributes_to_get: Option<Vec<String>>,
    #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
    expression_attribute_names: Option<HashMap<String, String>>,
    consistent_read: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchGetRequest {
    request_items: Tables<KeysAndAttributes, BATCH_GET_KEYS_MAX>,
    return_consumed_capacity: Option<String>,
}

/// One table's entry of a batch's `RequestItems`: what it counts toward the call's limit
/// (keys, writes), and how to count that without building the entry.
trait Counted: serde::de::DeserializeOwned {
    fn count(&self) -> usize;
    /// Reads one entry, counting its elements without building them.
    fn skip<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error>;
}

impl Counted for KeysAndAttributes {
    fn count(&self) -> usize {
        self.keys.len()
    }
    fn skip<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_map(CountKeys)
    }
}

impl Counted for Vec<WriteRequest> {
    fn count(&self) -> usize {
        self.len()
    }
    fn skip<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        Ok(deserializer.deserialize_seq(Room::<serde::de::IgnoredAny>::new(0))?.1)
    }
}

/// A batch's `RequestItems` (BatchGetItem's keys, BatchWriteItem's writes), read within the
/// call's limit of `LIMIT` elements in all: once that many are kept, the further tables'
/// elements are counted, not built (nor their names kept). Such a request is refused, and a
/// hostile body of hundreds of thousands of them (16 MiB) no longer takes hundreds of MB to
/// decode first. (One table's own list is held to the limit before, by `shapes::check`.)
struct Tables<V, const LIMIT: usize> {
    /// Every table's entry, when the elements in all are within the limit.
    kept: BTreeMap<String, V>,
    /// Elements in all (a table named twice counts its last entry while its first was kept,
    /// as a map read by serde keeps the last).
    total: usize,
    /// The first table by name whose own elements pass the limit.
    over: Option<String>,
    /// Tables named.
    tables: usize,
}

impl<'de, V: Counted, const LIMIT: usize> Deserialize<'de> for Tables<V, LIMIT> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TablesVisitor::<V, LIMIT>(std::marker::PhantomData))
    }
}

struct TablesVisitor<V, const LIMIT: usize>(std::marker::PhantomData<V>);

impl<'de, V: Counted, const LIMIT: usize> serde::de::Visitor<'de> for TablesVisitor<V, LIMIT> {
    type Value = Tables<V, LIMIT>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of table names to their requests")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items: Tables<V, LIMIT> = Tables {
            kept: BTreeMap::new(),
            total: 0,
            over: None,
            tables: 0,
        };
        let mut kept_count = 0usize;
        while let Some(name) = map.next_key::<String>()? {
            if let Some(earlier) = items.kept.remove(&name) {
                kept_count -= earlier.count();
                items.total -= earlier.count();
            }
            items.tables += 1;
            let count = if kept_count < LIMIT {
                let entry: V = map.next_value()?;
                let count = entry.count();
                kept_count += count;
                items.kept.insert(name.clone(), entry);
                count
            } else {
                map.next_value_seed(Skip::<V>(std::marker::PhantomData))?
            };
            items.total = items.total.saturating_add(count);
            if count > LIMIT && items.over.as_ref().is_none_or(|over| name < *over) {
                items.over = Some(name);
            }
        }
        Ok(items)
    }
}

/// One table's entry past the limit: counted by [`Counted::skip`].
struct Skip<V>(std::marker::PhantomData<V>);

impl<'de, V: Counted> serde::de::DeserializeSeed<'de> for Skip<V> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        V::skip(deserializer)
    }
}

/// A `KeysAndAttributes` past the limit: its `Keys` counted, the rest skipped.
struct CountKeys;

impl<'de> serde::de::Visitor<'de> for CountKeys {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("keys and attributes")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(member) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if member == "Keys" {
                count = map.next_value_seed(Room::<serde::de::IgnoredAny>::new(0))?.1;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(count)
    }
}

pub fn batch_get(store: &Store, request: BatchGetRequest) -> Result<Value, ApiError> {
    let total = request.request_items.total;
    // One table's keys past the limit break the API model's constraint on that list; several
    // tables' lists that are each within it, but not together, get DynamoDB's sentence.
    if let Some(name) = &request.request_items.over {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '[...]' at 'requestItems.{name}.member.keys' failed to satisfy constraint: Member must have length less than or equal to {BATCH_GET_KEYS_MAX}"
        )));
    }
    if total > BATCH_GET_KEYS_MAX {
        // DynamoDB's sentence, as it is (the limit is BATCH_GET_KEYS_MAX keys in all tables).
        return Err(ApiError::validation(
            "Too many items requested for the BatchGetItem call",
        ));
    }
    // Within the limit, every table's entry was kept.
    let request_items = &request.request_items.kept;
    if request.request_items.tables == 0 || request_items.values().any(|r| r.keys.is_empty()) {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    struct Plan {
        meta: Arc<TableMeta>,
        keys: Vec<(Item, Vec<u8>)>,
        projection: Option<Vec<Path>>,
        consistent: bool,
    }
    // Everything that does not need the tables is checked before any is looked up, as DynamoDB
    // does (an invalid request names its problem, whether or not its tables exist).
    let mut checked = Vec::new();
    for (name, entry) in request_items {
        crate::catalog::validate_table_name(name, "tableName")?;
        let inputs = ExpressionInputs {
            names: entry.expression_attribute_names.clone(),
            values: None,
        };
        super::refuse_inputs_without_expressions(
            &inputs,
            &[("ProjectionExpression", entry.projection_expression.is_some())],
            &[],
        )?;
        let context = inputs.context();
        let projection = build_projection(
            &context,
            entry.projection_expression.as_deref(),
            entry.attributes_to_get.as_deref(),
        )?;
        context.check_all_used()?;
        let mut distinct = HashSet::new();
        if !entry.keys.iter().all(|key| distinct.insert(key)) {
            return Err(ApiError::validation("Provided list of item keys contains duplicates"));
        }
        checked.push((name, entry, projection));
    }
    let mut plans = Vec::new();
    for (name, entry, projection) in checked {
        let meta = store.engine().require_table(name)?;
        // Keys that differ as given and are the same key of the table (a number written
        // another way): duplicates too.
        let mut seen = HashSet::new();
        let mut keys = Vec::new();
        for key in &entry.keys {
            let bytes = validate_key(&meta, key)?;
            if !seen.insert(bytes.clone()) {
                return Err(ApiError::validation("Provided list of item keys contains duplicates"));
            }
            keys.push((key.clone(), bytes));
        }
        // After the keys, as DynamoDB Local judges them.
        super::refuse_nested_key_paths(&meta, projection.iter().flatten())?;
        plans.push((
            name.clone(),
            Plan {
                meta,
                keys,
                projection,
                consistent: entry.consistent_read.unwrap_or(false),
            },
        ));
    }
    let snapshot = store.engine().snapshot()?;
    let mut responses = serde_json::Map::new();
    let mut unprocessed = serde_json::Map::new();
    let mut capacity = Vec::new();
    let mut bytes = 0usize;
    for (name, plan) in plans {
        let mut found = Vec::new();
        let mut left = Vec::new();
        // DynamoDB reads each key as a GetItem: its item rounded up to 4 KB units (halved for
        // eventually consistent reads), and a key without an item one read all the same
        // (Developer Guide, "Capacity unit consumption for read operations").
        let mut units = 0.0;
        for (key, key_bytes) in &plan.keys {
            if bytes >= BATCH_GET_RESPONSE_BYTES_MAX {
                left.push(item_json(key));
                continue;
            }
            let Some(item) = snapshot.get(&plan.meta, key_bytes)? else {
                units += read_units(0, plan.consistent);
                continue;
            };
            let size = dynamo_protocol::value::item_size_bytes(&item);
            bytes += size;
            units += read_units(size, plan.consistent);
            let item = match &plan.projection {
                Some(paths) => expr::project(&item, paths),
                None => item,
            };
            found.push(item_json(&item));
        }
        responses.insert(name.clone(), Value::Array(found));
        if !left.is_empty() {
            let original = &request_items[&name];
            let mut entry = json!({"Keys": left});
            if let Some(p) = &original.projection_expression {
                entry["ProjectionExpression"] = json!(p);
            }
            if let Some(n) = &original.expression_attribute_names {
                entry["ExpressionAttributeNames"] = json!(n);
            }
            unprocessed.insert(name.clone(), entry);
        }
        capacity.extend(Capacity::table(units).json(request.return_consumed_capacity.as_deref(), &name));
    }
    let mut response = json!({"Responses": responses, "UnprocessedKeys": unprocessed});
    if capacity_wanted(request.return_consumed_capacity.as_deref()) {
        response["ConsumedCapacity"] = Value::Array(capacity);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRequest {
    item: Item,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteRequest {
    key: Item,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WriteRequest {
    put_request: Option<PutRequest>,
    delete_request: Option<DeleteRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchWriteRequest {
    request_items: Tables<Vec<WriteRequest>, BATCH_WRITE_ITEMS_MAX>,
    return_consumed_capacity: Option<String>,
}

/// A list read with room for `room` elements: that many built, the rest counted, not built.
struct Room<T> {
    room: usize,
    element: std::marker::PhantomData<T>,
}

impl<T> Room<T> {
    fn new(room: usize) -> Self {
        Room {
            room,
            element: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Room<T> {
    type Value = (Vec<T>, usize);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        let mut count = 0usize;
        loop {
            let more = if kept.len() < self.room {
                seq.next_element::<T>()?.map(|element| kept.push(element))
            } else {
                seq.next_element::<serde::de::IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok((kept, count));
            }
            count += 1;
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for Room<T> {
    type Value = (Vec<T>, usize);
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

/// A request's list with a limit of `LIMIT` elements (TransactItems' 100), read within it: past
/// the limit its elements are counted, not built. The request is refused then, and a hostile
/// body of hundreds of thousands of them is never built first.
pub struct Bounded<T, const LIMIT: usize> {
    /// Every element, when `count` is within the limit.
    kept: Vec<T>,
    count: usize,
}

impl<'de, T: Deserialize<'de>, const LIMIT: usize> Deserialize<'de> for Bounded<T, LIMIT> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (kept, count) = deserializer.deserialize_seq(Room::new(LIMIT))?;
        Ok(Bounded { kept, count })
    }
}

enum Mutation {
    Put(Item),
    Delete,
}

pub async fn batch_write(store: &Store, request: BatchWriteRequest) -> Result<Value, ApiError> {
    let items = &request.request_items;
    let total = items.total;
    // One table's list past the limit breaks the API model's constraint on the map's values;
    // several tables' lists that are each within it, but not together, get DynamoDB's sentence.
    if total > BATCH_WRITE_ITEMS_MAX && items.over.is_none() {
        return Err(ApiError::validation(
            "Too many items requested for the BatchWriteItem call",
        ));
    }
    if total > BATCH_WRITE_ITEMS_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{{...}}' at 'requestItems' failed to satisfy constraint: Map value must satisfy constraint: [Member must have length less than or equal to {BATCH_WRITE_ITEMS_MAX}, Member must have length greater than or equal to 1]"
        )));
    }
    // Within the limit, every table's list was kept.
    if items.tables == 0 || items.kept.values().any(Vec::is_empty) {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    // Everything that does not need the tables is checked before any is looked up, as DynamoDB
    // does: the names, each request's form, each item's size.
    let mut checked = Vec::new();
    for (name, requests) in request.request_items.kept {
        crate::catalog::validate_table_name(&name, "tableName")?;
        let mutations = requests
            .into_iter()
            .map(|write| match (write.put_request, write.delete_request) {
                (Some(put), None) => validate_item_limits(&put.item).map(|()| (put.item, true)),
                (None, Some(delete)) => Ok((delete.key, false)),
                _ => Err(ApiError::validation(
                    "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes: a WriteRequest holds exactly one of PutRequest and DeleteRequest",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        checked.push((name, mutations));
    }
    let mut writes: Vec<(Arc<TableMeta>, Vec<u8>, Mutation)> = Vec::new();
    let mut seen = HashSet::new();
    for (name, mutations) in checked {
        let meta = store.engine().require_table(&name)?;
        for (item, put) in mutations {
            let (key, mutation) = if put {
                (validate_put_key(&meta, &item)?, Mutation::Put(item))
            } else {
                (validate_key(&meta, &item)?, Mutation::Delete)
            };
            if !seen.insert((meta.id, key.clone())) {
                return Err(ApiError::validation("Provided list of item keys contains duplicates"));
            }
            writes.push((Arc::clone(&meta), key, mutation));
        }
    }
    let mode = request.return_consumed_capacity;
    let wants_capacity = capacity_wanted(mode.as_deref());
    // Each write consumes what the same PutItem or DeleteItem would (old and new item, with
    // the index entries it changes), summed per table.
    let capacity = store
        .engine()
        .write(move |context| {
            for (meta, _, _) in &writes {
                context.current_table(meta)?;
            }
            let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
            // The keys are distinct, so reading every old item first reads what each write
            // would have read in turn. New items go in together per table, in key order
            // (`put_new_items`: a loader's sorted runs are packed into full leaves).
            let mut new_items: BTreeMap<u64, (&TableMeta, Vec<(&[u8], &Item)>)> = BTreeMap::new();
            for (meta, key, mutation) in &writes {
                let old = context.get(meta, key)?;
                let new = match mutation {
                    Mutation::Put(item) if old.is_none() => {
                        new_items
                            .entry(meta.id)
                            .or_insert_with(|| (meta.as_ref(), Vec::new()))
                            .1
                            .push((key.as_slice(), item));
                        Some(item)
                    }
                    Mutation::Put(item) => {
                        context.put(meta, key, old.as_ref(), item)?;
                        Some(item)
                    }
                    Mutation::Delete => {
                        context.delete(meta, key, old.as_ref())?;
                        None
                    }
                };
                if wants_capacity {
                    let consumed = Capacity::write(meta, old.as_ref(), new);
                    capacity.entry(meta.name.clone()).or_default().add(&consumed);
                }
            }
            for (meta, puts) in new_items.into_values() {
                context.put_new_items(meta, puts)?;
            }
            Ok(capacity)
        })
        .await?;
    let mut response = json!({"UnprocessedItems": {}});
    if let Some(list) = capacity_list(mode.as_deref(), &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactOperation {
    table_name: String,
    key: Option<Item>,
    item: Option<Item>,
    condition_expression: Option<String>,
    update_expression: Option<String>,
    #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
    expression_attribute_names: Option<HashMap<String, String>>,
    #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_values")]
    expression_attribute_values: Option<HashMap<String, AttributeValue>>,
    return_values_on_condition_check_failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactWriteItem {
    condition_check: Option<TransactOperation>,
    put: Option<TransactOperation>,
    delete: Option<TransactOperation>,
    update: Option<TransactOperation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactWriteRequest {
    transact_items: Bounded<TransactWriteItem, TRANSACTION_ITEMS_MAX>,
    client_request_token: Option<String>,
    return_consumed_capacity: Option<String>,
}

/// `position`: the element's place in TransactItems (from 0), for the messages.
fn plan_step(store: &Store, position: usize, item: TransactWriteItem) -> Result<TxStep, ApiError> {
    let (kind, operation) = match (item.condition_check, item.put, item.delete, item.update) {
        (Some(o), None, None, None) => ("ConditionCheck", o),
        (None, Some(o), None, None) => ("Put", o),
        (None, None, Some(o), None) => ("Delete", o),
        (None, None, None, Some(o)) => ("Update", o),
        _ => {
            return Err(ApiError::validation(
                "TransactItems can only contain one of Check, Put, Update or Delete in each element",
            ));
        }
    };
    let meta = store.engine().require_table(&operation.table_name)?;
    let return_old = parse_return_on_failure(operation.return_values_on_condition_check_failure.as_deref())?;
    let inputs = ExpressionInputs {
        names: operation.expression_attribute_names,
        values: operation.expression_attribute_values,
    };
    // As the single-item operations answer it (an Update's own expression counts).
    let mut given = vec![];
    if kind == "Update" {
        given.push(("UpdateExpression", operation.update_expression.is_some()));
    }
    given.push(("ConditionExpression", operation.condition_expression.is_some()));
    super::refuse_inputs_without_expressions(&inputs, &given, &given)?;
    let context = inputs.context();
    let condition = build_condition(&context, operation.condition_expression.as_deref(), None, None)?;
    let missing = |field: &str| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at 'transactItems.{}.member.{}.{field}' failed to satisfy constraint: Member must not be null",
            position + 1,
            super::lower_first(kind)
        ))
    };
    let (key, action) = match kind {
        "Put" => {
            let item = operation.item.ok_or_else(|| missing("item"))?;
            (validate_put(&meta, &item)?, TxAction::Put(item))
        }
        "Update" => {
            let key_item = operation.key.ok_or_else(|| missing("key"))?;
            let update = build_update(
                &meta,
                &context,
                Some(
                    operation
                        .update_expression
                        .as_deref()
                        .ok_or_else(|| missing("updateExpression"))?,
                ),
                None,
            )?;
            let key = validate_key(&meta, &key_item)?;
            super::refuse_nested_key_paths(&meta, update.iter().flat_map(|u| u.paths()))?;
            (key, TxAction::Update(key_item, update))
        }
        "Delete" => (
            validate_key(&meta, &operation.key.ok_or_else(|| missing("key"))?)?,
            TxAction::Delete,
        ),
        _ => {
            if condition.is_none() {
                return Err(missing("conditionExpression"));
            }
            (
                validate_key(&meta, &operation.key.ok_or_else(|| missing("key"))?)?,
                TxAction::Check,
            )
        }
    };
    // Paths into key attributes after the key, as DynamoDB Local judges a write.
    super::refuse_nested_key_paths(&meta, condition.iter().flat_map(|c| c.paths()))?;
    context.check_all_used()?;
    Ok(TxStep {
        meta,
        key,
        must_exist: false,
        condition,
        return_old,
        action,
    })
}

/// DynamoDB's message when `item` is a Put alone whose item carries a key attribute of its
/// table with the wrong type.
fn put_key_type_mismatch(store: &Store, item: &TransactWriteItem) -> Option<String> {
    let put = match item {
        TransactWriteItem {
            put: Some(put),
            condition_check: None,
            delete: None,
            update: None,
        } => put,
        _ => return None,
    };
    let meta = store.engine().require_table(&put.table_name).ok()?;
    let values = put.item.as_ref()?;
    meta.key.attributes().find_map(|attribute| {
        let value = values.get(&attribute.name)?;
        (!attribute.value_type.matches(value)).then(|| {
            format!(
                "One or more parameter values were invalid: Type mismatch for key {} expected: {} actual: {}",
                attribute.name,
                attribute.value_type.descriptor(),
                value.value_type().descriptor()
            )
        })
    })
}

/// Digest of everything a TransactWriteItems request asks for (its `TransactItems`, with map
/// keys in canonical order): a reused ClientRequestToken must come with an identical request.
fn request_digest(body: &[u8]) -> [u8; 32] {
    let items = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut value| value.get_mut("TransactItems").map(Value::take))
        .unwrap_or(Value::Null);
    Sha256::digest(items.to_string().as_bytes()).into()
}

/// `body` is the raw request, digested for ClientRequestToken idempotency.
pub async fn transact_write(store: &Store, request: TransactWriteRequest, body: &[u8]) -> Result<Value, ApiError> {
    let count = request.transact_items.count;
    if count == 0 || count > TRANSACTION_ITEMS_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '[...]' at 'transactItems' failed to satisfy constraint: Member must have length less than or equal to {TRANSACTION_ITEMS_MAX} and greater than or equal to 1"
        )));
    }
    // Within the limit, every element was kept.
    let payload: usize = request
        .transact_items
        .kept
        .iter()
        .flat_map(|item| [&item.condition_check, &item.put, &item.delete, &item.update])
        .flatten()
        .map(|operation| {
            operation
                .item
                .as_ref()
                .map_or(0, dynamo_protocol::value::item_size_bytes)
                + operation
                    .key
                    .as_ref()
                    .map_or(0, dynamo_protocol::value::item_size_bytes)
                + operation
                    .expression_attribute_values
                    .iter()
                    .flatten()
                    .map(|(name, value)| name.len() + value.size_bytes())
                    .sum::<usize>()
        })
        .sum();
    if payload > TRANSACTION_PAYLOAD_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "Transaction payload size cannot exceed 4 MB: its items, keys and values total {payload} bytes; split it into smaller transactions"
        )));
    }
    // A Put whose item has a key attribute of the wrong type is a "user error, such as an
    // invalid data format": DynamoDB cancels the transaction with a ValidationError reason for
    // that action (the first one, the others "None") instead of refusing the request. Errors
    // in the request itself (expressions, missing members) still win, as they come first.
    let mut invalid_put: Option<(usize, String)> = None;
    let mut steps = Vec::with_capacity(count);
    for (position, item) in request.transact_items.kept.into_iter().enumerate() {
        match put_key_type_mismatch(store, &item) {
            Some(message) => {
                invalid_put.get_or_insert((position, message));
            }
            None => steps.push(plan_step(store, position, item)?),
        }
    }
    if let Some((position, message)) = invalid_put {
        let mut reasons = vec![CancellationReason::none(); count];
        reasons[position] = CancellationReason {
            code: "ValidationError".into(),
            message: Some(message),
            item: None,
        };
        return Err(ApiError::transaction_canceled(reasons));
    }
    let mode = request.return_consumed_capacity;
    let digest = request_digest(body);
    let capacity = transaction::commit(store, steps, request.client_request_token, digest).await?;
    let mut response = json!({});
    if let Some(list) = capacity_list(mode.as_deref(), &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactGet {
    table_name: String,
    key: Item,
    projection_expression: Option<String>,
    #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
    expression_attribute_names: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactGetItem {
    get: TransactGet,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactGetRequest {
    transact_items: Bounded<TransactGetItem, TRANSACTION_ITEMS_MAX>,
    return_consumed_capacity: Option<String>,
}

/// DynamoDB refuses a transaction whose items total more than 4 MB, read as well as written
/// ("The aggregate size of the items in the transaction cannot exceed 4 MB").
pub(crate) fn refuse_read_size(read_bytes: usize) -> Result<(), ApiError> {
    if read_bytes > TRANSACTION_PAYLOAD_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "Transaction size cannot exceed 4 MB: the items it reads total more ({read_bytes} bytes so far); read them in smaller transactions"
        )));
    }
    Ok(())
}

pub fn transact_get(store: &Store, request: TransactGetRequest) -> Result<Value, ApiError> {
    let count = request.transact_items.count;
    if count == 0 || count > TRANSACTION_ITEMS_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '[...]' at 'transactItems' failed to satisfy constraint: Member must have length less than or equal to {TRANSACTION_ITEMS_MAX} and greater than or equal to 1"
        )));
    }
    let mut plans = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    for entry in &request.transact_items.kept {
        let get = &entry.get;
        let meta = store.engine().require_table(&get.table_name)?;
        let inputs = ExpressionInputs {
            names: get.expression_attribute_names.clone(),
            values: None,
        };
        super::refuse_inputs_without_expressions(
            &inputs,
            &[("ProjectionExpression", get.projection_expression.is_some())],
            &[],
        )?;
        let context = inputs.context();
        let projection = build_projection(&context, get.projection_expression.as_deref(), None)?;
        context.check_all_used()?;
        super::refuse_nested_key_paths(&meta, projection.iter().flatten())?;
        let key = validate_key(&meta, &get.key)?;
        if !seen.insert((meta.id, key.clone())) {
            return Err(ApiError::validation(
                "Transaction request cannot include multiple operations on one item",
            ));
        }
        plans.push((meta, key, projection));
    }
    let snapshot = store.engine().snapshot()?;
    let mut responses = Vec::with_capacity(count);
    // Each item read twice (prepare and commit), in strongly consistent 4 KB units, per table.
    let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
    let mut read_bytes = 0usize;
    for (meta, key, projection) in &plans {
        let item = snapshot.get(meta, key)?;
        let size = item.as_ref().map(dynamo_protocol::value::item_size_bytes).unwrap_or(0);
        read_bytes += size;
        refuse_read_size(read_bytes)?;
        let units = 2.0 * read_units(size, true);
        capacity
            .entry(meta.name.clone())
            .or_default()
            .add(&Capacity::table(units));
        match item {
            Some(item) => {
                let item = match projection {
                    Some(paths) => expr::project(&item, paths),
                    None => item,
                };
                responses.push(json!({"Item": item_json(&item)}));
            }
            None => responses.push(json!({})),
        }
    }
    let mut response = json!({"Responses": responses});
    if let Some(list) = capacity_list(request.return_consumed_capacity.as_deref(), &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Tables<Vec<WriteRequest>, BATCH_WRITE_ITEMS_MAX> {
        serde_json::from_str::<BatchWriteRequest>(body)
            .expect("decodes")
            .request_items
    }

    fn put(key: &str) -> String {
        format!(r#"{{"PutRequest":{{"Item":{{"pk":{{"S":"{key}"}}}}}}}}"#)
    }

    #[test]
    fn writes_past_the_limit_are_counted_and_not_kept() {
        let tables: Vec<String> = (0..40).map(|i| format!(r#""t{i:03}":[{}]"#, put("k"))).collect();
        let items = read(&format!(r#"{{"RequestItems":{{{}}}}}"#, tables.join(",")));
        assert_eq!((items.total, items.over.as_deref(), items.tables), (40, None, 40));
        assert_eq!(items.kept.values().map(Vec::len).sum::<usize>(), BATCH_WRITE_ITEMS_MAX);

        // One table's long list: counted whole, and named as the one over the limit.
        let long: Vec<String> = (0..30).map(|i| put(&i.to_string())).collect();
        let items = read(&format!(
            r#"{{"RequestItems":{{"a":[{}],"b":[{}],"c":[{}]}}}}"#,
            put("x"),
            long.join(","),
            put("y")
        ));
        assert_eq!((items.total, items.over.as_deref(), items.tables), (32, Some("b"), 3));
        assert_eq!(items.kept.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn within_the_limit_everything_is_kept_and_a_table_named_again_counts_its_last_list() {
        let items = read(&format!(
            r#"{{"RequestItems":{{"a":[{p},{p}],"b":[],"a":[{p}]}}}}"#,
            p = put("x")
        ));
        assert_eq!(items.total, 1);
        assert_eq!(items.kept["a"].len(), 1);
        assert!(items.kept["b"].is_empty());
        // A wrong type anywhere in a kept write is still the decoder's error.
        assert!(
            serde_json::from_str::<BatchWriteRequest>(r#"{"RequestItems":{"a":[{"PutRequest":{"Item":7}}]}}"#).is_err()
        );
        assert!(serde_json::from_str::<BatchWriteRequest>(r#"{"RequestItems":[]}"#).is_err());
    }
}
