//! PartiQL operations: ExecuteStatement, BatchExecuteStatement, ExecuteTransaction.
//!
//! Statements are parsed and translated by [`crate::partiql`] (pure) and then run through the
//! same paths as the item operations: reads on a snapshot with the Query/Scan page rules, writes
//! as jobs of the one writer (`WriteContext::put`/`delete`), so Streams, global tables, indexes
//! and TTL see a PartiQL write exactly as they see a PutItem or UpdateItem.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine as _;
use dynamo_protocol::error::CancellationReason;
use dynamo_protocol::{ApiError, AttributeValue, ErrorKind, Item};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::items::{
    ReturnValues, UpdateTarget, parse_return_on_failure, returned_attributes, validate_key, validate_put, write_checked,
};
use super::query::{
    PageRequest, Select as SelectMode, in_bounds, read_page, refuse_unprojected, resolve_index, sort_bounds, start_key,
};
use super::transaction::{self, TxAction, TxStep};
use super::{
    Capacity, PAGE_BYTES_MAX, Store, TRANSACTION_ITEMS_MAX, TRANSACTION_PAYLOAD_BYTES_MAX, capacity_list, item_json,
    read_units, validate_return_consumed_capacity,
};
use crate::catalog::{IndexKind, KeySchema, TableMeta};
use crate::expr::{Condition, KeyOperator, Path, PathElement};
use crate::keys;
use crate::partiql::{self, Expr, Parameters, Parsed, Returning, Select, Statement};

/// Most statements in one BatchExecuteStatement (DynamoDB: 25).
pub const BATCH_STATEMENTS_MAX: usize = 25;
/// Longest NextToken accepted, in bytes (the API's constraint).
pub const NEXT_TOKEN_BYTES_MAX: usize = 32_768;
/// Most items one ExecuteStatement page holds when it reads several partitions (`IN`).
pub const IN_PAGE_ITEMS_MAX: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecuteStatementRequest {
    statement: String,
    parameters: Option<Vec<AttributeValue>>,
    consistent_read: Option<bool>,
    next_token: Option<String>,
    return_consumed_capacity: Option<String>,
    limit: Option<i64>,
    return_values_on_condition_check_failure: Option<String>,
}

fn parameters_of(values: Option<&Vec<AttributeValue>>) -> Result<&[AttributeValue], ApiError> {
    match values {
        Some(values) if values.is_empty() => Err(ApiError::validation(
            "1 validation error detected: Value '[]' at 'parameters' failed to satisfy constraint: Member must have length greater than or equal to 1",
        )),
        Some(values) => Ok(values),
        None => Ok(&[]),
    }
}

fn parse_checked(text: &str, parameters: &Parameters<'_>) -> Result<Parsed, ApiError> {
    let parsed = partiql::parse_statement(text)?;
    parameters.check(&parsed)?;
    Ok(parsed)
}

pub async fn execute_statement(store: &Store, request: ExecuteStatementRequest) -> Result<Value, ApiError> {
    validate_return_consumed_capacity(request.return_consumed_capacity.as_deref())?;
    let return_old = parse_return_on_failure(request.return_values_on_condition_check_failure.as_deref())?;
    let limit = match request.limit {
        None => None,
        Some(limit) if limit >= 1 => Some(limit as usize),
        Some(limit) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
            )));
        }
    };
    if request
        .next_token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > NEXT_TOKEN_BYTES_MAX)
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'nextToken' failed to satisfy constraint: Member must have length less than or equal to {NEXT_TOKEN_BYTES_MAX} and greater than or equal to 1"
        )));
    }
    let values = parameters_of(request.parameters.as_ref())?;
    let parameters = Parameters(values);
    let parsed = parse_checked(&request.statement, &parameters)?;
    let mode = request.return_consumed_capacity.as_deref();
    match parsed.statement {
        Statement::Select(select) => {
            let digest = statement_digest(&request.statement, values);
            select_page(
                store,
                &select,
                &parameters,
                SelectOptions {
                    consistent: request.consistent_read.unwrap_or(false),
                    limit,
                    next_token: request.next_token.as_deref(),
                    digest,
                    mode,
                },
            )
        }
        Statement::Exists(_) => Err(exists_outside_transaction()),
        statement => {
            let written = write_statement(store, statement, &parameters, return_old).await?;
            let mut response = json!({"Items": written.items.iter().map(item_json).collect::<Vec<_>>()});
            if let Some(capacity) = written.capacity.json(mode, &written.table) {
                response["ConsumedCapacity"] = capacity;
            }
            Ok(response)
        }
    }
}

/// DynamoDB's refusal of an EXISTS outside ExecuteTransaction (alone, or in a batch).
fn exists_outside_transaction() -> ApiError {
    ApiError::validation("EXISTS can only be used in ExecuteTransaction write requests.")
}

fn statement_digest(statement: &str, parameters: &[AttributeValue]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(statement.as_bytes());
    hasher.update(serde_json::to_vec(parameters).unwrap_or_default());
    hex::encode(&hasher.finalize()[..16])
}

struct SelectOptions<'a> {
    consistent: bool,
    limit: Option<usize>,
    next_token: Option<&'a str>,
    digest: String,
    mode: Option<&'a str>,
}

/// Where a SELECT left off: the statement it belongs to, the partition (index into the
/// statement's partition list; 0 for a scan) and the last key read there.
#[derive(serde::Serialize, Deserialize)]
struct Continuation {
    statement: String,
    partition: usize,
    key: Option<Item>,
}

fn encode_token(continuation: &Continuation) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(continuation).expect("a continuation always serialises"))
}

fn decode_token(token: &str, digest: &str) -> Result<Continuation, ApiError> {
    let continuation: Continuation = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::validation("Invalid NextToken"))?;
    if continuation.statement != digest {
        return Err(ApiError::validation(
            "The provided starting key is invalid: the NextToken belongs to another statement or other parameters",
        ));
    }
    Ok(continuation)
}

/// One attribute name, if the path is just that.
fn single_attribute(path: &Path) -> Option<&str> {
    match path.0.as_slice() {
        [PathElement::Attribute(name)] => Some(name),
        _ => None,
    }
}

/// The range of one partition (its key prefix) a SELECT reads: the whole partition, or the
/// part of it every sort-key operator allows (their intersection).
fn partition_range(prefix: Vec<u8>, schema: &KeySchema, operators: &[KeyOperator]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut lower = Bound::Included(prefix.clone());
    let mut upper = keys::prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
    let Some(sort) = schema.sort.as_ref() else {
        return (lower, upper);
    };
    for operator in operators {
        // An operator the key condition rules refuse stays a filter only.
        let Ok((low, high)) = sort_bounds(&prefix, sort, operator.clone()) else {
            continue;
        };
        lower = higher_lower(lower, low);
        upper = lower_upper(upper, high);
    }
    (lower, upper)
}

fn higher_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if y > x || (y == x && matches!(b, Bound::Excluded(_))) {
                b
            } else {
                a
            }
        }
    }
}

fn lower_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if y < x || (y == x && matches!(b, Bound::Excluded(_))) {
                b
            } else {
                a
            }
        }
    }
}

/// Whether no key lies between `lower` and `upper`.
fn range_is_empty(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) | (Bound::Excluded(l), Bound::Included(u)) => {
            l >= u
        }
        _ => false,
    }
}

fn select_page(
    store: &Store,
    select: &Select,
    parameters: &Parameters<'_>,
    options: SelectOptions<'_>,
) -> Result<Value, ApiError> {
    let meta = store.engine().require_table(&select.table)?;
    let index = resolve_index(&meta, select.index.as_deref())?;
    if options.consistent && index.is_some_and(|i| i.kind == IndexKind::Global) {
        return Err(ApiError::validation(
            "Consistent reads are not supported on global secondary indexes",
        ));
    }
    let schema = index.map_or(&meta.key, |i| &i.key);
    if let Some(paths) = &select.projection {
        partiql::check_projection(paths)?;
        if let Some(index) = index {
            refuse_unprojected(&meta, index, paths)?;
        }
    }
    let filter = partiql::where_condition(select.condition.as_ref(), parameters)?;
    // A global index with a multi-attribute key is read whole, its WHERE clause a filter: the
    // partitions a SELECT pins are values of a single partition attribute.
    let mut partitions = if schema.is_multi_attribute() {
        None
    } else {
        partiql::partitions(select.condition.as_ref(), schema, parameters)?
    };
    if partitions.is_some() {
        partiql::check_sort_equalities(select.condition.as_ref(), schema, parameters)?;
    }
    let mut reverse = false;
    if !select.order_by.is_empty() {
        let Some(values) = partitions.as_mut() else {
            return Err(ApiError::validation(
                "Must have at least one non-optional hash key condition in WHERE clause when using ORDER BY clause.",
            ));
        };
        for (path, descending) in &select.order_by {
            match single_attribute(path) {
                Some(name) if name == schema.partition.name => {
                    // By the key's value (its order-preserving encoding), not by the stored
                    // key, which starts with the partition's hash.
                    values.sort_by_key(|v| {
                        let mut encoded = Vec::new();
                        keys::encode_key_value(v, &mut encoded);
                        encoded
                    });
                    if *descending {
                        values.reverse();
                    }
                }
                Some(name) if schema.sort.as_ref().is_some_and(|s| s.name == name) => reverse = *descending,
                _ => {
                    return Err(ApiError::validation(format!(
                        "Variable reference {path} in ORDER BY clause must be part of the primary key"
                    )));
                }
            }
        }
    }
    // Items come back whole (or as the index holds them) and are projected here, flat: a
    // projection inside read_page would compact lists (`l[3]` becomes `l[0]`). A projection
    // from a local index reads the table's item, as DynamoDB fetches unprojected attributes.
    let mode = match index {
        Some(index) if index.kind == IndexKind::Local && select.projection.is_some() => SelectMode::AllAttributes,
        Some(_) => SelectMode::AllProjected,
        None => SelectMode::AllAttributes,
    };
    let continuation = options
        .next_token
        .map(|token| decode_token(token, &options.digest))
        .transpose()?;
    let (mut position, mut start_item) = match continuation {
        Some(c) => (c.partition, c.key),
        None => (0, None),
    };
    // Each partition's range, narrowed by the conditions on the sort key as a Query's key
    // condition narrows it (an empty range reads nothing).
    let sort_operators = partiql::sort_key_operators(select.condition.as_ref(), schema, parameters);
    let ranges: Vec<(Bound<Vec<u8>>, Bound<Vec<u8>>)> = match &partitions {
        None => vec![(Bound::Unbounded, Bound::Unbounded)],
        Some(values) => values
            .iter()
            .map(|value| partition_range(keys::partition_prefix(meta.key_hash, value), schema, &sort_operators))
            .collect(),
    };
    // A token names a partition of this statement's (the digest binds it to the statement,
    // not the token's contents, which a client can rewrite).
    if position >= ranges.len() {
        return Err(ApiError::validation("Invalid NextToken"));
    }
    let page_items_max = match &partitions {
        Some(values) if values.len() > 1 => Some(IN_PAGE_ITEMS_MAX),
        _ => None,
    };
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut fetched = 0usize;
    let mut read = 0usize;
    let mut next: Option<Continuation> = None;
    let mut last_key = None;
    while position < ranges.len() {
        let remaining = options.limit.map(|l| l.saturating_sub(read));
        let room = page_items_max.map(|m| m.saturating_sub(items.len()));
        let cap = match (remaining, room) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if cap == Some(0) || bytes >= PAGE_BYTES_MAX {
            next = Some(Continuation {
                statement: options.digest.clone(),
                partition: position,
                key: None,
            });
            break;
        }
        let start = start_item.take().map(|key| start_key(&meta, index, &key)).transpose()?;
        let (lower, upper) = ranges[position].clone();
        // A key the statement could not have returned from this partition (a rewritten
        // token) would restart it or read another's: refused, as Query refuses such a start.
        if start.as_ref().is_some_and(|start| !in_bounds(start, &lower, &upper)) {
            return Err(ApiError::validation(
                "The provided starting key is outside query boundaries based on provided conditions",
            ));
        }
        if range_is_empty(&lower, &upper) {
            position += 1;
            continue;
        }
        let page = read_page(
            store,
            PageRequest {
                meta: &meta,
                index,
                lower,
                upper,
                reverse,
                start,
                limit: cap,
                filter: filter.as_ref(),
                projection: None,
                select: mode,
            },
        )?;
        read += page.scanned;
        bytes += page.bytes_read;
        fetched += page.bytes_fetched;
        items.extend(
            page.items
                .iter()
                .map(|item| partiql::project(item, select.projection.as_deref())),
        );
        if let Some(key) = page.last_key {
            last_key = Some(key.clone());
            next = Some(Continuation {
                statement: options.digest.clone(),
                partition: position,
                key: Some(key),
            });
            break;
        }
        position += 1;
    }
    let mut response = json!({"Items": items.iter().map(item_json).collect::<Vec<_>>()});
    if let Some(next) = &next {
        response["NextToken"] = json!(encode_token(next));
        if let (Some(_), Some(key)) = (options.limit, &last_key) {
            response["LastEvaluatedKey"] = item_json(key);
        }
    }
    // A read of an index consumes capacity on the index, as Query's does; a local index's
    // fetches of unprojected attributes are charged to the table.
    let units = read_units(bytes, options.consistent);
    let mut capacity = match index {
        Some(index) => Capacity::index(index, units),
        None => Capacity::table(units),
    };
    if fetched > 0 {
        capacity.add(&Capacity::table(read_units(fetched, options.consistent)));
    }
    if let Some(capacity) = capacity.json(options.mode, &meta.name) {
        response["ConsumedCapacity"] = capacity;
    }
    Ok(response)
}

/// What a write statement did: the items RETURNING asked for, its table and capacity.
struct Written {
    items: Vec<Item>,
    table: String,
    capacity: Capacity,
}

fn duplicate_item() -> ApiError {
    ApiError::new(ErrorKind::DuplicateItem, "Duplicate primary key exists in table")
}

/// The item an INSERT's VALUE names.
fn insert_item(value: &partiql::Expr, parameters: &Parameters<'_>) -> Result<Item, ApiError> {
    match partiql::value(value, parameters, "root")? {
        AttributeValue::M(map) => Ok(map.into_iter().collect()),
        _ => Err(ApiError::validation(
            "Unsupported value in INSERT: VALUE takes a map {'attribute': value, ...} or an M parameter",
        )),
    }
}

/// The table an INSERT writes to, the item, and its stored key.
fn insert_target(
    store: &Store,
    table: &str,
    value: &Expr,
    parameters: &Parameters<'_>,
) -> Result<(Arc<TableMeta>, Item, Vec<u8>), ApiError> {
    let meta = store.engine().require_table(table)?;
    let item = insert_item(value, parameters)?;
    partiql::check_item_key(&item, &meta.key)?;
    let key = validate_put(&meta, &item)?;
    Ok((meta, item, key))
}

async fn write_statement(
    store: &Store,
    statement: Statement,
    parameters: &Parameters<'_>,
    return_old: bool,
) -> Result<Written, ApiError> {
    let returning = returning_of(&statement);
    match &statement {
        Statement::Select(_) | Statement::Exists(_) => {
            return Err(ApiError::internal(
                "Internal server error: a read statement reached the write path",
            ));
        }
        Statement::Delete { .. } => refuse_returning_in_delete(returning)?,
        Statement::Insert { .. } | Statement::Update { .. } => {}
    }
    let TxStep {
        meta,
        key: key_bytes,
        condition,
        action,
        ..
    } = plan_write(store, statement, parameters, return_old)?;
    match action {
        TxAction::Insert(item) => {
            // An INSERT only ever creates the item.
            let capacity = Capacity::write(&meta, None, Some(&item));
            write_checked(
                store,
                &meta,
                key_bytes,
                (None, return_old),
                move |context, meta, key, old| {
                    if old.is_some() {
                        return Err(duplicate_item());
                    }
                    context.put(meta, key, None, &item)
                },
            )
            .await?;
            Ok(Written {
                items: Vec::new(),
                table: meta.name.clone(),
                capacity,
            })
        }
        TxAction::Update(key, update) => {
            let target = UpdateTarget {
                meta: &meta,
                key,
                key_bytes,
                must_exist: true,
            };
            let (old, new, paths) = target.update(store, (condition, return_old), update).await?;
            let return_values = match returning {
                None => ReturnValues::None,
                Some(Returning::AllOld) => ReturnValues::AllOld,
                Some(Returning::AllNew) => ReturnValues::AllNew,
                Some(Returning::ModifiedOld) => ReturnValues::UpdatedOld,
                Some(Returning::ModifiedNew) => ReturnValues::UpdatedNew,
            };
            let returned = returned_attributes(return_values, old.as_ref(), new.as_ref(), &paths);
            Ok(Written {
                items: returned.into_iter().filter(|item| !item.is_empty()).collect(),
                table: meta.name.clone(),
                capacity: Capacity::write(&meta, old.as_ref(), new.as_ref()),
            })
        }
        TxAction::Check | TxAction::Put(_) | TxAction::Delete => Err(ApiError::internal(
            "Internal server error: a statement planned as no PartiQL write reached the write path",
        )),
        TxAction::DeleteExisting => {
            let checked = (condition, return_old);
            let old = write_checked(store, &meta, key_bytes, checked, |context, meta, key, old| {
                if old.is_some() {
                    context.delete(meta, key, old.as_ref())?;
                }
                Ok(old)
            })
            .await?;
            let capacity = Capacity::write(&meta, old.as_ref(), None);
            Ok(Written {
                items: match returning {
                    Some(Returning::AllOld) => old.into_iter().collect(),
                    _ => Vec::new(),
                },
                table: meta.name.clone(),
                capacity,
            })
        }
    }
}

/// The RETURNING clause of an UPDATE or DELETE.
fn returning_of(statement: &Statement) -> Option<Returning> {
    match statement {
        Statement::Update { returning, .. } | Statement::Delete { returning, .. } => *returning,
        _ => None,
    }
}

/// A DELETE may return the old item only.
fn refuse_returning_in_delete(returning: Option<Returning>) -> Result<(), ApiError> {
    match returning {
        None | Some(Returning::AllOld) => Ok(()),
        Some(other) => Err(ApiError::validation(format!(
            "Invalid returning clause: RETURNING {}. Only RETURNING ALL OLD * is allowed in DELETE statements.",
            match other {
                Returning::AllNew => "ALL NEW *",
                Returning::ModifiedOld => "MODIFIED OLD *",
                _ => "MODIFIED NEW *",
            }
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchStatementRequest {
    statement: String,
    parameters: Option<Vec<AttributeValue>>,
    consistent_read: Option<bool>,
    return_values_on_condition_check_failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchExecuteStatementRequest {
    statements: Vec<BatchStatementRequest>,
    return_consumed_capacity: Option<String>,
}

/// BatchStatementError's code for an error (botocore's BatchStatementErrorCodeEnum); `None`
/// for faults that fail the whole request.
fn batch_error_code(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::Validation | ErrorKind::Serialization => "ValidationError",
        ErrorKind::ConditionalCheckFailed => "ConditionalCheckFailed",
        ErrorKind::ResourceNotFound => "ResourceNotFound",
        ErrorKind::DuplicateItem => "DuplicateItem",
        ErrorKind::TransactionConflict => "TransactionConflict",
        ErrorKind::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
        ErrorKind::RequestLimitExceeded => "RequestLimitExceeded",
        ErrorKind::ItemCollectionSizeLimitExceeded => "ItemCollectionSizeLimitExceeded",
        ErrorKind::AccessDenied => "AccessDenied",
        _ => return None,
    })
}

fn batch_error(error: ApiError, table: Option<&str>) -> Result<Value, ApiError> {
    let Some(code) = batch_error_code(error.kind) else {
        return Err(error);
    };
    let mut entry = json!({"Error": {"Code": code, "Message": error.message}});
    if let Some(item) = error.item {
        entry["Error"]["Item"] = item;
    }
    if let Some(table) = table {
        entry["TableName"] = json!(table);
    }
    Ok(entry)
}

/// The table a statement names, for TableName in batch answers.
fn table_of(statement: &Statement) -> &str {
    match statement {
        Statement::Select(select) | Statement::Exists(select) => &select.table,
        Statement::Insert { table, .. } | Statement::Update { table, .. } | Statement::Delete { table, .. } => table,
    }
}

/// Where a keyed read stands: DynamoDB words each one's refusals its own way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadIn {
    /// A SELECT in BatchExecuteStatement.
    Batch,
    /// A SELECT in ExecuteTransaction.
    Transaction,
    /// An EXISTS(SELECT ...) in ExecuteTransaction.
    Exists,
}

/// A SELECT naming one item by its full primary key (batches and transactions read only so).
struct KeyedRead {
    meta: Arc<TableMeta>,
    key: Vec<u8>,
    filter: Option<Condition>,
    projection: Option<Vec<Path>>,
}

/// The item `select` reads, in `context`. DynamoDB's (and DynamoDB Local's) refusals: a
/// batch's SELECT and a transaction's SELECT name one item by nothing but its key ("Only
/// single item select is supported"; "Select statements within ExecuteTransaction must
/// specify the primary key in the where clause."), neither reads an index, and an EXISTS
/// names one item by its key with some condition more ("EXISTS() must contain a single item
/// read with additional condition").
fn keyed_read(
    store: &Store,
    select: &Select,
    parameters: &Parameters<'_>,
    context: ReadIn,
) -> Result<KeyedRead, ApiError> {
    let meta = store.engine().require_table(&select.table)?;
    let not_one_item = || {
        ApiError::validation(match context {
            ReadIn::Batch => "Only single item select is supported",
            ReadIn::Transaction => {
                "Select statements within ExecuteTransaction must specify the primary key in the where clause."
            }
            ReadIn::Exists => "EXISTS() must contain a single item read with additional condition",
        })
    };
    if select.index.is_some() {
        return Err(match context {
            ReadIn::Batch => not_one_item(),
            ReadIn::Transaction => ApiError::validation("Reads on indices are not supported within transactions."),
            ReadIn::Exists => ApiError::validation("Operations on indices are not supported in transactions"),
        });
    }
    if let Some(paths) = &select.projection {
        partiql::check_projection(paths)?;
    }
    let one_item = match context {
        ReadIn::Exists => partiql::is_checked_item_read(select.condition.as_ref(), &meta.key),
        ReadIn::Batch | ReadIn::Transaction => {
            partiql::names_one_item(select.condition.as_ref(), &meta.key, parameters)?
        }
    };
    let Some(condition) = select.condition.as_ref().filter(|_| one_item) else {
        return Err(not_one_item());
    };
    let keyed = partiql::keyed_where(condition, &meta.key, parameters)?;
    let key = validate_key(&meta, &keyed.key)?;
    Ok(KeyedRead {
        meta,
        key,
        filter: keyed.rest.map(|root| Condition { root }),
        projection: select.projection.clone(),
    })
}

/// Refuses a list of `count` statements (the request's member `member`) outside 1..=`max`.
fn check_statement_count(count: usize, max: usize, member: &str) -> Result<(), ApiError> {
    if count == 0 || count > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '[...]' at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max} and greater than or equal to 1"
        )));
    }
    Ok(())
}

pub async fn batch_execute_statement(store: &Store, request: BatchExecuteStatementRequest) -> Result<Value, ApiError> {
    validate_return_consumed_capacity(request.return_consumed_capacity.as_deref())?;
    let count = request.statements.len();
    check_statement_count(count, BATCH_STATEMENTS_MAX, "statements")?;
    let mut parsed = Vec::with_capacity(count);
    for entry in &request.statements {
        let values = parameters_of(entry.parameters.as_ref())?;
        parsed.push(parse_checked(&entry.statement, &Parameters(values)));
    }
    let reads = parsed
        .iter()
        .filter(|p| {
            matches!(
                p,
                Ok(Parsed {
                    statement: Statement::Select(_),
                    ..
                })
            )
        })
        .count();
    let writes = parsed
        .iter()
        .filter(|p| {
            matches!(
                p,
                Ok(Parsed {
                    statement: Statement::Insert { .. } | Statement::Update { .. } | Statement::Delete { .. },
                    ..
                })
            )
        })
        .count();
    if reads > 0 && writes > 0 {
        // DynamoDB's words, as DynamoDB Local (AWS's own PartiQL front end) sends them.
        return Err(ApiError::validation(
            "Read and write requests together in the same batch is not supported.",
        ));
    }
    // As BatchGetItem and BatchWriteItem (which a batch of statements runs as): two statements
    // on one item refuse the whole batch. A statement that names no item answers its own error.
    let mut items = std::collections::HashSet::new();
    for (entry, parsed) in request.statements.iter().zip(&parsed) {
        let Ok(parsed) = parsed else { continue };
        let parameters = Parameters(parameters_of(entry.parameters.as_ref())?);
        let item = match &parsed.statement {
            Statement::Select(select) => {
                keyed_read(store, select, &parameters, ReadIn::Batch).map(|read| (read.meta.id, read.key))
            }
            Statement::Exists(_) => continue,
            statement => plan_write(store, statement.clone(), &parameters, false).map(|step| (step.meta.id, step.key)),
        };
        if let Ok(item) = item
            && !items.insert(item)
        {
            return Err(ApiError::validation("Provided list of item keys contains duplicates"));
        }
    }
    let snapshot = if reads > 0 {
        Some(store.engine().snapshot()?)
    } else {
        None
    };
    let mut responses = Vec::with_capacity(count);
    let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
    for (entry, parsed) in request.statements.iter().zip(parsed) {
        let parameters = Parameters(parameters_of(entry.parameters.as_ref())?);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                responses.push(batch_error(error, None)?);
                continue;
            }
        };
        let table = table_of(&parsed.statement).to_string();
        let outcome = match parsed.statement {
            Statement::Select(select) => {
                let snapshot = snapshot.as_ref().expect("a batch with reads has a snapshot");
                match keyed_read(store, &select, &parameters, ReadIn::Batch) {
                    Ok(read) => match snapshot.get(&read.meta, &read.key) {
                        Ok(found) => {
                            let size = found.as_ref().map(dynamo_protocol::value::item_size_bytes).unwrap_or(0);
                            let units = read_units(size, entry.consistent_read.unwrap_or(false));
                            capacity
                                .entry(read.meta.name.clone())
                                .or_default()
                                .add(&Capacity::table(units));
                            let found = found
                                .filter(|item| read.filter.as_ref().is_none_or(|f| f.evaluate(item).unwrap_or(false)));
                            let mut answer = json!({"TableName": read.meta.name});
                            if let Some(item) = found {
                                answer["Item"] = item_json(&partiql::project(&item, read.projection.as_deref()));
                            }
                            Ok(answer)
                        }
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error),
                }
            }
            Statement::Exists(_) => Err(exists_outside_transaction()),
            statement => {
                let return_old = parse_return_on_failure(entry.return_values_on_condition_check_failure.as_deref())?;
                match write_statement(store, statement, &parameters, return_old).await {
                    Ok(written) => {
                        capacity
                            .entry(written.table.clone())
                            .or_default()
                            .add(&written.capacity);
                        // RETURNING answers the item as ExecuteStatement does (BatchStatementResponse's
                        // Item; DynamoDB Local answers so).
                        let mut answer = json!({"TableName": written.table});
                        if let Some(item) = written.items.first() {
                            answer["Item"] = item_json(item);
                        }
                        Ok(answer)
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match outcome {
            Ok(answer) => responses.push(answer),
            Err(error) => responses.push(batch_error(error, Some(&table))?),
        }
    }
    let mut response = json!({"Responses": responses});
    if let Some(list) = capacity_list(request.return_consumed_capacity.as_deref(), &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransactStatement {
    statement: String,
    parameters: Option<Vec<AttributeValue>>,
    return_values_on_condition_check_failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecuteTransactionRequest {
    transact_statements: Vec<TransactStatement>,
    client_request_token: Option<String>,
    return_consumed_capacity: Option<String>,
}

/// A statement's own error inside ExecuteTransaction, prefixed with its position as DynamoDB
/// does (a missing table stays ResourceNotFoundException).
fn in_transaction(position: usize, error: ApiError) -> ApiError {
    if error.kind == ErrorKind::Validation {
        ApiError::validation(format!(
            "Validation failed in TransactStatements[{position}]: {}",
            error.message
        ))
    } else {
        error
    }
}

/// A statement's own error inside ExecuteTransaction (of `count` statements): as
/// [`in_transaction`], except a key of the wrong type or an INSERT without its key, which
/// DynamoDB (DynamoDB Local) reports by cancelling the transaction: that statement's reason is
/// the ValidationError, every other statement's `None` (none of them is checked further).
fn in_transaction_or_cancelled(position: usize, count: usize, error: ApiError) -> ApiError {
    if !partiql::cancels_transaction(&error) {
        return in_transaction(position, error);
    }
    let mut reasons = vec![CancellationReason::none(); count];
    if let Some(reason) = reasons.get_mut(position) {
        *reason = CancellationReason {
            code: "ValidationError".into(),
            message: Some(error.message),
            item: None,
        };
    }
    ApiError::transaction_canceled(reasons)
}

/// A transaction's statements return nothing.
fn refuse_returning(returning: Option<Returning>) -> Result<(), ApiError> {
    match returning {
        Some(_) => Err(ApiError::validation(
            "RETURNING clause is not supported in ExecuteTransaction.",
        )),
        None => Ok(()),
    }
}

/// What the WHERE clause of an UPDATE or DELETE names: the table, the one item it keys (as an
/// item and as stored), and what else the clause says, as a condition on the item.
struct KeyedTarget {
    meta: Arc<TableMeta>,
    key: Item,
    key_bytes: Vec<u8>,
    condition: Option<Condition>,
}

impl KeyedTarget {
    /// The target of `condition` in `table`, and what `then` makes of the table (the UPDATE's
    /// changes) once the clause is read and before the key is checked.
    fn find<T>(
        store: &Store,
        table: &str,
        condition: &Expr,
        parameters: &Parameters<'_>,
        then: impl FnOnce(&TableMeta) -> Result<T, ApiError>,
    ) -> Result<(KeyedTarget, T), ApiError> {
        let meta = store.engine().require_table(table)?;
        let keyed = partiql::keyed_where(condition, &meta.key, parameters)?;
        let made = then(&meta)?;
        let key_bytes = validate_key(&meta, &keyed.key)?;
        let target = KeyedTarget {
            meta,
            key: keyed.key,
            key_bytes,
            condition: keyed.rest.map(|root| Condition { root }),
        };
        Ok((target, made))
    }

    /// The transaction step doing `action` to the target.
    fn step(self, must_exist: bool, return_old: bool, action: TxAction) -> TxStep {
        TxStep {
            meta: self.meta,
            key: self.key_bytes,
            must_exist,
            condition: self.condition,
            return_old,
            action,
        }
    }
}

/// A write statement's step: the item it writes and how (its RETURNING is the caller's
/// business).
fn plan_write(
    store: &Store,
    statement: Statement,
    parameters: &Parameters<'_>,
    return_old: bool,
) -> Result<TxStep, ApiError> {
    match statement {
        Statement::Insert { table, value } => {
            let (meta, item, key) = insert_target(store, &table, &value, parameters)?;
            Ok(TxStep {
                meta,
                key,
                must_exist: false,
                condition: None,
                return_old,
                action: TxAction::Insert(item),
            })
        }
        Statement::Update {
            table,
            assignments,
            condition,
            ..
        } => {
            let (target, update) = KeyedTarget::find(store, &table, &condition, parameters, |meta| {
                partiql::update(&assignments, &meta.key, parameters)
            })?;
            let action = TxAction::Update(target.key.clone(), Some(update));
            Ok(target.step(true, return_old, action))
        }
        Statement::Delete { table, condition, .. } => {
            let (target, ()) = KeyedTarget::find(store, &table, &condition, parameters, |_| Ok(()))?;
            Ok(target.step(false, return_old, TxAction::DeleteExisting))
        }
        Statement::Exists(select) => {
            let read = keyed_read(store, &select, parameters, ReadIn::Exists)?;
            Ok(TxStep {
                meta: read.meta,
                key: read.key,
                must_exist: true,
                condition: read.filter,
                return_old,
                action: TxAction::Check,
            })
        }
        Statement::Select(_) => Err(ApiError::internal(
            "Internal server error: a read statement reached the transaction's write plan",
        )),
    }
}

fn transaction_digest(statements: &[TransactStatement]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for statement in statements {
        hasher.update((statement.statement.len() as u64).to_be_bytes());
        hasher.update(statement.statement.as_bytes());
        hasher.update(serde_json::to_vec(&statement.parameters).unwrap_or_default());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

pub async fn execute_transaction(store: &Store, request: ExecuteTransactionRequest) -> Result<Value, ApiError> {
    validate_return_consumed_capacity(request.return_consumed_capacity.as_deref())?;
    let count = request.transact_statements.len();
    check_statement_count(count, TRANSACTION_ITEMS_MAX, "transactStatements")?;
    // The same 4 MB bound as TransactWriteItems: the statements (their literals are the items)
    // and their parameters.
    let payload: usize = request
        .transact_statements
        .iter()
        .map(|entry| {
            entry.statement.len()
                + entry
                    .parameters
                    .iter()
                    .flatten()
                    .map(AttributeValue::size_bytes)
                    .sum::<usize>()
        })
        .sum();
    if payload > TRANSACTION_PAYLOAD_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "Transaction payload size cannot exceed 4 MB: its statements and parameters total {payload} bytes; split it into smaller transactions"
        )));
    }
    let mut parsed = Vec::with_capacity(count);
    for (position, entry) in request.transact_statements.iter().enumerate() {
        let parameters = Parameters(parameters_of(entry.parameters.as_ref())?);
        parsed.push(parse_checked(&entry.statement, &parameters).map_err(|e| in_transaction(position, e))?);
    }
    let reads = parsed
        .iter()
        .filter(|p| matches!(p.statement, Statement::Select(_)))
        .count();
    if reads > 0 && reads < count {
        return Err(ApiError::validation(
            "ExecuteTransaction API does not support both read and write operations in the same request.",
        ));
    }
    let mode = request.return_consumed_capacity.as_deref();
    if reads > 0 {
        return transaction_reads(store, &request, parsed, mode);
    }
    let mut steps = Vec::with_capacity(count);
    for (position, (entry, parsed)) in request.transact_statements.iter().zip(parsed).enumerate() {
        let parameters = Parameters(parameters_of(entry.parameters.as_ref())?);
        let return_old = parse_return_on_failure(entry.return_values_on_condition_check_failure.as_deref())?;
        steps.push(
            refuse_returning(returning_of(&parsed.statement))
                .and_then(|()| plan_write(store, parsed.statement, &parameters, return_old))
                .map_err(|e| in_transaction_or_cancelled(position, count, e))?,
        );
    }
    let digest = transaction_digest(&request.transact_statements);
    let token = request.client_request_token;
    let capacity = transaction::commit(store, steps, token, digest).await?;
    // DynamoDB answers a transaction of writes with an empty Responses list (as recorded
    // against AWS by LocalStack's validated snapshot of two INSERTs).
    let mut response = json!({"Responses": []});
    if let Some(list) = capacity_list(mode, &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}

fn transaction_reads(
    store: &Store,
    request: &ExecuteTransactionRequest,
    parsed: Vec<Parsed>,
    mode: Option<&str>,
) -> Result<Value, ApiError> {
    let parsed_count = parsed.len();
    let mut reads = Vec::with_capacity(parsed_count);
    let mut seen = HashSet::new();
    for (position, (entry, parsed)) in request.transact_statements.iter().zip(parsed).enumerate() {
        let parameters = Parameters(parameters_of(entry.parameters.as_ref())?);
        let Statement::Select(select) = parsed.statement else {
            return Err(ApiError::internal(
                "Internal server error: a write statement among a transaction's reads",
            ));
        };
        let read = keyed_read(store, &select, &parameters, ReadIn::Transaction)
            .map_err(|e| in_transaction_or_cancelled(position, parsed_count, e))?;
        reads.push(read);
    }
    // After every statement's own checks, as the writes' (a key of the wrong type further on
    // cancels the transaction first).
    for read in &reads {
        if !seen.insert((read.meta.id, read.key.clone())) {
            return Err(ApiError::validation(
                "Transaction request cannot include multiple operations on one item",
            ));
        }
    }
    let snapshot = store.engine().snapshot()?;
    let mut responses = Vec::with_capacity(reads.len());
    let mut capacity: BTreeMap<String, Capacity> = BTreeMap::new();
    let mut read_bytes = 0usize;
    for read in &reads {
        let found = snapshot.get(&read.meta, &read.key)?;
        let size = found.as_ref().map(dynamo_protocol::value::item_size_bytes).unwrap_or(0);
        read_bytes += size;
        super::batch::refuse_read_size(read_bytes)?;
        let units = 2.0 * read_units(size, true);
        capacity
            .entry(read.meta.name.clone())
            .or_default()
            .add(&Capacity::table(units));
        match found.filter(|item| read.filter.as_ref().is_none_or(|f| f.evaluate(item).unwrap_or(false))) {
            Some(item) => {
                responses.push(json!({"Item": item_json(&partiql::project(&item, read.projection.as_deref()))}))
            }
            None => responses.push(json!({})),
        }
    }
    let mut response = json!({"Responses": responses});
    if let Some(list) = capacity_list(mode, &capacity) {
        response["ConsumedCapacity"] = list;
    }
    Ok(response)
}
