//! Query and Scan: range reads over a table or an index, with key conditions, filters,
//! projections, Limit, the 1 MB page and LastEvaluatedKey, and parallel-scan segments.

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow};

use dynamo_protocol::{ApiError, AttributeValue, Item};
use serde::Deserialize;
use serde_json::{Value, json};

use super::items::build_projection;
use super::{
    Capacity, ExpressionInputs, PAGE_BYTES_MAX, Store, item_json, read_units, refuse_mixed,
    validate_return_consumed_capacity,
};
use crate::catalog::{self, IndexKind, IndexMeta, KeySchema, Projection, TableMeta};
use crate::engine::{self, RangeRequest};
use crate::expr::legacy::{self, LegacyCondition};
use crate::expr::{self, Condition, KeyOperator, Path};
use crate::keys::{self, KeyHash};

pub const TOTAL_SEGMENTS_MAX: i64 = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Select {
    AllAttributes,
    AllProjected,
    Specific,
    Count,
}

fn parse_select(text: Option<&str>, has_projection: bool, index: Option<&IndexMeta>) -> Result<Select, ApiError> {
    let select = match text {
        None if has_projection => Select::Specific,
        None if index.is_some() => Select::AllProjected,
        None => Select::AllAttributes,
        Some("ALL_ATTRIBUTES") => Select::AllAttributes,
        Some("ALL_PROJECTED_ATTRIBUTES") => Select::AllProjected,
        Some("SPECIFIC_ATTRIBUTES") => Select::Specific,
        Some("COUNT") => Select::Count,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'select' failed to satisfy constraint: Member must satisfy enum value set: [SPECIFIC_ATTRIBUTES, COUNT, ALL_ATTRIBUTES, ALL_PROJECTED_ATTRIBUTES]"
            )));
        }
    };
    if has_projection && select != Select::Specific {
        return Err(ApiError::validation(
            "Cannot specify the AttributesToGet or ProjectionExpression when choosing to get ALL_ATTRIBUTES, ALL_PROJECTED_ATTRIBUTES or COUNT",
        ));
    }
    if select == Select::Specific && !has_projection {
        return Err(ApiError::validation(
            "SPECIFIC_ATTRIBUTES requires ProjectionExpression or AttributesToGet",
        ));
    }
    if select == Select::AllProjected && index.is_none() {
        return Err(ApiError::validation(
            "One or more parameter values were invalid: Select type ALL_PROJECTED_ATTRIBUTES is not supported for a table query; it needs an IndexName",
        ));
    }
    if let (Select::AllAttributes, Some(index)) = (select, index)
        && index.kind == IndexKind::Global
        && index.projection != Projection::All
    {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: Select type ALL_ATTRIBUTES is not supported for global secondary index {} because its projection type is not ALL",
            index.name
        )));
    }
    Ok(select)
}

/// The index `name` of the table (none without a name).
pub(crate) fn resolve_index<'a>(meta: &'a TableMeta, name: Option<&str>) -> Result<Option<&'a IndexMeta>, ApiError> {
    match name {
        None => Ok(None),
        Some(name) => match meta.index(name) {
            None => Err(ApiError::validation(format!(
                "The table does not have the specified index: {name}"
            ))),
            // DynamoDB's answer while a GSI created by UpdateTable is being filled.
            Some(index) if index.backfilling => Err(ApiError::validation(format!(
                "Cannot read from backfilling global secondary index: {name}"
            ))),
            Some(index) => Ok(Some(index)),
        },
    }
}

fn parse_limit(limit: Option<i64>) -> Result<Option<usize>, ApiError> {
    match limit {
        None => Ok(None),
        Some(limit) if limit >= 1 => Ok(Some(limit as usize)),
        Some(limit) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ))),
    }
}

/// The stored key an ExclusiveStartKey points at, for the table or an index.
pub(crate) fn start_key(meta: &TableMeta, index: Option<&IndexMeta>, start: &Item) -> Result<Vec<u8>, ApiError> {
    let invalid = || {
        ApiError::validation("The provided starting key is invalid: The provided key element does not match the schema")
    };
    let table_key = meta.key.extract(start).ok_or_else(invalid)?;
    catalog::validate_key(&meta.key, &table_key).map_err(|_| invalid())?;
    let item_key = engine::key_of(meta.key_hash, &meta.key, &table_key)?;
    match index {
        None => {
            if start.len() != table_key.len() {
                return Err(invalid());
            }
            Ok(item_key)
        }
        Some(index) => {
            // Only the table's and the index's key attributes, as LastEvaluatedKey carries.
            if start
                .keys()
                .any(|name| !meta.key.is_key_attribute(name) && !index.key.is_key_attribute(name))
            {
                return Err(invalid());
            }
            for attribute in index.key.attributes() {
                if !start
                    .get(&attribute.name)
                    .is_some_and(|v| attribute.value_type.matches(v))
                {
                    return Err(invalid());
                }
            }
            engine::index_entry_key(meta.key_hash, index, start, &item_key).ok_or_else(invalid)
        }
    }
}

/// The attributes of LastEvaluatedKey: the table key, plus the index key on an index.
fn last_evaluated_key(meta: &TableMeta, index: Option<&IndexMeta>, item: &Item) -> Item {
    item.iter()
        .filter(|(name, _)| meta.key.is_key_attribute(name) || index.is_some_and(|i| i.key.is_key_attribute(name)))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

pub(crate) struct Page {
    pub(crate) items: Vec<Item>,
    pub(crate) count: usize,
    pub(crate) scanned: usize,
    pub(crate) last_key: Option<Item>,
    pub(crate) bytes_read: usize,
    /// Bytes of the items a local index query fetched from the table (attributes the index
    /// does not project): read from the table, on top of the index.
    pub(crate) bytes_fetched: usize,
}

/// What one page of a Query or Scan reads.
pub(crate) struct PageRequest<'a> {
    pub(crate) meta: &'a TableMeta,
    pub(crate) index: Option<&'a IndexMeta>,
    pub(crate) lower: Bound<Vec<u8>>,
    pub(crate) upper: Bound<Vec<u8>>,
    pub(crate) reverse: bool,
    pub(crate) start: Option<Vec<u8>>,
    pub(crate) limit: Option<usize>,
    pub(crate) filter: Option<&'a Condition>,
    pub(crate) projection: Option<&'a [Path]>,
    pub(crate) select: Select,
}

/// Reads a range with the page rules shared by Query and Scan.
pub(crate) fn read_page(store: &Store, request: PageRequest<'_>) -> Result<Page, ApiError> {
    let PageRequest {
        meta,
        index,
        mut lower,
        mut upper,
        reverse,
        start,
        limit,
        filter,
        projection,
        select,
    } = request;
    if let Some(start) = start {
        if reverse {
            upper = tighter_upper(upper, start);
        } else {
            lower = tighter_lower(lower, start);
        }
    }
    if let Some(index) = index
        && select == Select::Specific
        && let Some(paths) = projection
    {
        refuse_unprojected(meta, index, paths)?;
    }
    let snapshot = store.engine().snapshot()?;
    let fetch_from_table =
        index.is_some_and(|i| i.kind == IndexKind::Local && needs_table_fetch(meta, i, select, projection));
    let mut page = Page {
        items: Vec::new(),
        count: 0,
        scanned: 0,
        last_key: None,
        bytes_read: 0,
        bytes_fetched: 0,
    };
    let mut failure = None;
    let request = RangeRequest {
        table: meta,
        index,
        lower,
        upper,
        reverse,
    };
    snapshot.range(&request, |row| {
        let mut item = row.item;
        if fetch_from_table {
            let item_key = &row.key[row.key.len() - table_key_len(meta, &item)..];
            match snapshot.get(meta, item_key) {
                Ok(Some(full)) => {
                    page.bytes_fetched += dynamo_protocol::value::item_size_bytes(&full);
                    item = full
                }
                Ok(None) => return ControlFlow::Continue(()),
                Err(error) => {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            }
        }
        page.scanned += 1;
        page.bytes_read += row.size_bytes;
        let matches = match filter {
            Some(filter) => match filter.evaluate(&item) {
                Ok(matches) => matches,
                Err(error) => {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            },
            None => true,
        };
        let full_page = limit.is_some_and(|l| page.scanned >= l) || page.bytes_read >= PAGE_BYTES_MAX;
        if full_page {
            page.last_key = Some(last_evaluated_key(meta, index, &item));
        }
        if matches {
            page.count += 1;
            if select != Select::Count {
                page.items.push(match projection {
                    Some(paths) => expr::project(&item, paths),
                    None => item,
                });
            }
        }
        if full_page {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(page)
}

/// A global index cannot read the table: asking it for attributes it does not hold is an
/// error, as on DynamoDB (a local index fetches them instead).
pub(crate) fn refuse_unprojected(meta: &TableMeta, index: &IndexMeta, paths: &[Path]) -> Result<(), ApiError> {
    if index.kind != IndexKind::Global {
        return Ok(());
    }
    let missing: Vec<&str> = paths
        .iter()
        .filter_map(|path| path.top_attribute())
        .filter(|name| !index.projects(&meta.key, name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(format!(
        "One or more parameter values were invalid: Global secondary index {} does not project [{}]",
        index.name,
        missing.join(", ")
    )))
}

/// Length of the table-key suffix of an index entry key.
fn table_key_len(meta: &TableMeta, item: &Item) -> usize {
    engine::key_of(meta.key_hash, &meta.key, item)
        .map(|k| k.len())
        .unwrap_or(0)
}

fn needs_table_fetch(meta: &TableMeta, index: &IndexMeta, select: Select, projection: Option<&[Path]>) -> bool {
    match select {
        Select::AllAttributes => index.projection != Projection::All,
        Select::Specific => projection.is_some_and(|paths| {
            paths.iter().any(|path| match path.0.first() {
                Some(expr::PathElement::Attribute(name)) => !index.projects(&meta.key, name),
                _ => false,
            })
        }),
        _ => false,
    }
}

fn tighter_lower(bound: Bound<Vec<u8>>, start: Vec<u8>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(b) | Bound::Excluded(b) if b > start => Bound::Included(b),
        _ => Bound::Excluded(start),
    }
}

fn tighter_upper(bound: Bound<Vec<u8>>, start: Vec<u8>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(b) | Bound::Excluded(b) if b < start => Bound::Excluded(b),
        _ => Bound::Excluded(start),
    }
}

/// A page's response; a read of an index consumes capacity on the index, not the table.
fn page_response(
    meta: &TableMeta,
    index: Option<&IndexMeta>,
    page: Page,
    select: Select,
    capacity_mode: Option<&str>,
    consistent: bool,
) -> Value {
    let mut response = json!({"Count": page.count, "ScannedCount": page.scanned});
    if select != Select::Count {
        response["Items"] = Value::Array(page.items.iter().map(item_json).collect());
    }
    if let Some(last) = &page.last_key {
        response["LastEvaluatedKey"] = item_json(last);
    }
    let units = read_units(page.bytes_read, consistent);
    let mut capacity = match index {
        Some(index) => Capacity::index(index, units),
        None => Capacity::table(units),
    };
    // A local index query that fetches unprojected attributes also reads those items from the
    // table, and DynamoDB charges the table for them (as DynamoDB Local reports it).
    if page.bytes_fetched > 0 {
        capacity.add(&Capacity::table(read_units(page.bytes_fetched, consistent)));
    }
    if let Some(capacity) = capacity.json(capacity_mode, &meta.name) {
        response["ConsumedCapacity"] = capacity;
    }
    response
}

fn build_filter(
    context: &expr::Context<'_>,
    expression: Option<&str>,
    legacy_filter: Option<&HashMap<String, LegacyCondition>>,
    legacy_name: &str,
    operator: Option<&str>,
) -> Result<Option<Condition>, ApiError> {
    refuse_mixed(
        &[("FilterExpression", expression.is_some())],
        &[(legacy_name, legacy_filter.is_some())],
    )?;
    match (expression, legacy_filter) {
        (Some(text), _) => expr::parse_condition(text, context, expr::ExpressionKind::Filter).map(Some),
        (None, Some(filter)) if !filter.is_empty() => legacy::filter_to_condition(filter, operator).map(Some),
        _ => {
            legacy::check_conditional_operator(operator, 0)?;
            Ok(None)
        }
    }
}

/// A Query of a secondary index filters on what the index holds: DynamoDB refuses a filter
/// naming an attribute the index does not project (local indexes too), rather than matching
/// nothing.
fn refuse_unprojected_filter(filter: &Condition, meta: &TableMeta, index: &IndexMeta) -> Result<(), ApiError> {
    let mut missing: Vec<String> = filter
        .top_attributes()
        .into_iter()
        .filter(|name| !index.projects(&meta.key, name))
        .map(|name| name.to_string())
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::validation(format!(
        "One or more parameter values were invalid: Secondary index {} does not project one or more filter attributes: [{}]",
        index.name,
        missing.join(", ")
    )))
}

/// A Query's or Scan's projection and filter may not look inside a key attribute.
fn refuse_nested_read_paths(
    meta: &TableMeta,
    projection: Option<&[Path]>,
    filter: Option<&Condition>,
) -> Result<(), ApiError> {
    super::refuse_nested_key_paths(
        meta,
        projection
            .into_iter()
            .flatten()
            .chain(filter.into_iter().flat_map(Condition::paths)),
    )
}

/// A Query filters on non-key attributes only: the key belongs in the key condition.
fn refuse_key_in_filter(filter: &Condition, schema: &KeySchema, expression: bool) -> Result<(), ApiError> {
    match filter
        .top_attributes()
        .into_iter()
        .find(|name| schema.attributes().any(|key| key.name == *name))
    {
        Some(key) if expression => Err(ApiError::validation(format!(
            "Filter Expression can only contain non-primary key attributes: Primary key attribute: {key}"
        ))),
        Some(key) => Err(ApiError::validation(format!(
            "QueryFilter can only contain non-primary key attributes: Primary key attribute: {key}"
        ))),
        None => Ok(()),
    }
}

/// Defines a read request: its own members, then [`Read`]'s as `read`, decoded through one flat
/// struct of all its members (`$wire`), not `#[serde(flatten)]`, which would first buffer the
/// members it does not name (expression values, filters) into serde's intermediate `Content`
/// at twenty to thirty times their bytes (as `items::conditional_write_request!`).
macro_rules! read_request {
    ($name:ident, $wire:ident { $($(#[$attr:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        pub struct $name {
            $($field: $ty,)*
            read: Read,
        }

        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct $wire {
            $($(#[$attr])* $field: $ty,)*
            index_name: Option<String>,
            filter_expression: Option<String>,
            conditional_operator: Option<String>,
            projection_expression: Option<String>,
            attributes_to_get: Option<Vec<String>>,
            #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
            expression_attribute_names: Option<HashMap<String, String>>,
            #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_values")]
            expression_attribute_values: Option<HashMap<String, AttributeValue>>,
            select: Option<String>,
            limit: Option<i64>,
            exclusive_start_key: Option<Item>,
            consistent_read: Option<bool>,
            return_consumed_capacity: Option<String>,
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let wire = $wire::deserialize(deserializer)?;
                Ok($name {
                    $($field: wire.$field,)*
                    read: Read {
                        index_name: wire.index_name,
                        filter_expression: wire.filter_expression,
                        conditional_operator: wire.conditional_operator,
                        projection_expression: wire.projection_expression,
                        attributes_to_get: wire.attributes_to_get,
                        expression_attribute_names: wire.expression_attribute_names,
                        expression_attribute_values: wire.expression_attribute_values,
                        select: wire.select,
                        limit: wire.limit,
                        exclusive_start_key: wire.exclusive_start_key,
                        consistent_read: wire.consistent_read,
                        return_consumed_capacity: wire.return_consumed_capacity,
                    },
                })
            }
        }
    };
}

read_request!(
    QueryRequest,
    QueryWire {
        table_name: String,
        key_condition_expression: Option<String>,
        #[serde(default, deserialize_with = "crate::expr::legacy::key_conditions")]
        key_conditions: Option<HashMap<String, LegacyCondition>>,
        #[serde(default, deserialize_with = "crate::expr::legacy::query_filter")]
        query_filter: Option<HashMap<String, LegacyCondition>>,
        scan_index_forward: Option<bool>,
    }
);

/// The members Query and Scan share: the index to read, the filter and the projection (as
/// expressions or in the legacy form), the page and what to answer.
pub struct Read {
    index_name: Option<String>,
    filter_expression: Option<String>,
    conditional_operator: Option<String>,
    projection_expression: Option<String>,
    attributes_to_get: Option<Vec<String>>,
    expression_attribute_names: Option<HashMap<String, String>>,
    expression_attribute_values: Option<HashMap<String, AttributeValue>>,
    select: Option<String>,
    limit: Option<i64>,
    exclusive_start_key: Option<Item>,
    consistent_read: Option<bool>,
    return_consumed_capacity: Option<String>,
}

impl Read {
    /// The index read (if any) and the Limit, after the checks Query and Scan make first.
    /// The checks that do not need the table (DynamoDB makes them before it looks the table
    /// up): the table and index names' constraints, ReturnConsumedCapacity and Limit.
    fn check_request(&self, table_name: &str) -> Result<Option<usize>, ApiError> {
        crate::catalog::validate_table_name(table_name, "tableName")?;
        if let Some(index) = self.index_name.as_deref() {
            crate::catalog::validate_table_name(index, "indexName")?;
        }
        validate_return_consumed_capacity(self.return_consumed_capacity.as_deref())?;
        parse_limit(self.limit)
    }

    /// The index read in `meta` (none: the table), refused if it cannot be read as asked.
    fn index<'m>(&self, meta: &'m TableMeta) -> Result<Option<&'m IndexMeta>, ApiError> {
        let index = resolve_index(meta, self.index_name.as_deref())?;
        if self.consistent_read == Some(true) && index.is_some_and(|i| i.kind == IndexKind::Global) {
            return Err(ApiError::validation(
                "Consistent reads are not supported on global secondary indexes",
            ));
        }
        Ok(index)
    }

    /// Refuses expression parameters (KeyConditionExpression when `key_condition` says it is
    /// there) mixed with legacy ones (the legacy filter `legacy_filter` names).
    fn refuse_mixed(&self, key_condition: Option<bool>, legacy_filter: (&str, bool)) -> Result<(), ApiError> {
        let mut expressions = vec![("FilterExpression", self.filter_expression.is_some())];
        expressions.extend(key_condition.map(|given| ("KeyConditionExpression", given)));
        expressions.push(("ProjectionExpression", self.projection_expression.is_some()));
        refuse_mixed(
            &expressions,
            &[
                ("AttributesToGet", self.attributes_to_get.is_some()),
                ("ConditionalOperator", self.conditional_operator.is_some()),
                legacy_filter,
            ],
        )
    }

    /// Parses `first` (Query's key condition), then the filter (the legacy one is
    /// `legacy_filter`, named `legacy_name`) and the projection, in one context whose names
    /// and values must all be used.
    fn parse<T>(
        &mut self,
        (legacy_filter, key_condition): (Option<&HashMap<String, LegacyCondition>>, Option<bool>),
        legacy_name: &str,
        first: impl FnOnce(&expr::Context<'_>) -> Result<T, ApiError>,
    ) -> Result<(T, Option<Condition>, Option<Vec<Path>>), ApiError> {
        let inputs = ExpressionInputs {
            names: self.expression_attribute_names.take(),
            values: self.expression_attribute_values.take(),
        };
        // Values go with a filter or a key condition (Query); names with a projection too.
        let mut value_expressions = vec![("FilterExpression", self.filter_expression.is_some())];
        value_expressions.extend(key_condition.map(|given| ("KeyConditionExpression", given)));
        let mut expressions = value_expressions.clone();
        expressions.push(("ProjectionExpression", self.projection_expression.is_some()));
        super::refuse_inputs_without_expressions(&inputs, &expressions, &value_expressions)?;
        let context = inputs.context();
        let first = first(&context)?;
        let filter = build_filter(
            &context,
            self.filter_expression.as_deref(),
            legacy_filter,
            legacy_name,
            self.conditional_operator.as_deref(),
        )?;
        let projection = build_projection(
            &context,
            self.projection_expression.as_deref(),
            self.attributes_to_get.as_deref(),
        )?;
        context.check_all_used()?;
        Ok((first, filter, projection))
    }

    /// The stored key ExclusiveStartKey points at.
    fn start(&self, meta: &TableMeta, index: Option<&IndexMeta>) -> Result<Option<Vec<u8>>, ApiError> {
        self.exclusive_start_key
            .as_ref()
            .map(|s| start_key(meta, index, s))
            .transpose()
    }
}

/// A Query or Scan parsed: what it reads and how it shapes the answer.
struct Reading<'m> {
    meta: &'m TableMeta,
    index: Option<&'m IndexMeta>,
    limit: Option<usize>,
    filter: Option<Condition>,
    projection: Option<Vec<Path>>,
    select: Select,
}

impl<'m> Reading<'m> {
    fn new(
        meta: &'m TableMeta,
        index: Option<&'m IndexMeta>,
        limit: Option<usize>,
        (filter, projection): (Option<Condition>, Option<Vec<Path>>),
        select: Select,
    ) -> Reading<'m> {
        Reading {
            meta,
            index,
            limit,
            filter,
            projection,
            select,
        }
    }

    /// Reads the page of `lower..upper` from `start` and answers as Query and Scan do.
    fn answer(
        &self,
        store: &Store,
        read: &Read,
        (lower, upper): (Bound<Vec<u8>>, Bound<Vec<u8>>),
        reverse: bool,
        start: Option<Vec<u8>>,
    ) -> Result<Value, ApiError> {
        let page = read_page(
            store,
            PageRequest {
                meta: self.meta,
                index: self.index,
                lower,
                upper,
                reverse,
                start,
                limit: self.limit,
                filter: self.filter.as_ref(),
                projection: self.projection.as_deref(),
                select: self.select,
            },
        )?;
        Ok(page_response(
            self.meta,
            self.index,
            page,
            self.select,
            read.return_consumed_capacity.as_deref(),
            read.consistent_read.unwrap_or(false),
        ))
    }
}

/// An item as DynamoDB's messages print one (Java's map and AttributeValue formatting):
/// `{p=AttributeValue: {S:text}}`.
fn java_item(item: &Item) -> String {
    let fields: Vec<String> = item
        .iter()
        .map(|(name, value)| {
            let shown = match value {
                dynamo_protocol::AttributeValue::S(text) => format!("S:{text}"),
                dynamo_protocol::AttributeValue::N(number) => format!("N:{number}"),
                dynamo_protocol::AttributeValue::B(bytes) => format!("B:{}", base64_of(bytes)),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            format!("{name}=AttributeValue: {{{shown}}}")
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// DynamoDB refuses an ExclusiveStartKey the query itself could not have returned: one from
/// another partition, or one whose sort key fails the key condition.
fn check_start_within(
    start: &[u8],
    prefix: &[u8],
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
) -> Result<(), ApiError> {
    if !start.starts_with(prefix) {
        return Err(ApiError::validation(
            "The provided starting key is outside query boundaries based on provided conditions",
        ));
    }
    if in_bounds(start, lower, upper) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "The provided starting key does not match the range key predicate",
        ))
    }
}

/// Key bounds of a query: the partition's prefix, and that prefix narrowed by the sort-key
/// condition to the lower and upper bounds of the range read.
fn query_bounds(
    hash: KeyHash,
    schema: &KeySchema,
    conditions: Vec<(String, KeyOperator)>,
) -> Result<(Vec<u8>, Bound<Vec<u8>>, Bound<Vec<u8>>), ApiError> {
    if schema.is_multi_attribute() {
        return multi_attribute_query_bounds(hash, schema, conditions);
    }
    let mut partition = None;
    let mut sort = None;
    for (name, operator) in conditions {
        if name == schema.partition.name {
            match operator {
                KeyOperator::Eq(value) if partition.is_none() => partition = Some(value),
                _ => return Err(ApiError::validation("Query key condition not supported")),
            }
        } else if schema.sort.as_ref().is_some_and(|s| s.name == name) && sort.is_none() {
            sort = Some(operator);
        } else if !schema.is_key_attribute(&name) {
            // A condition on an attribute that is no key of the table or index queried.
            return Err(ApiError::validation("Query key condition not supported"));
        } else {
            return Err(ApiError::validation(format!(
                "Query condition missed key schema element: {}",
                if partition.is_none() {
                    &schema.partition.name
                } else {
                    schema.sort.as_ref().map_or(&name, |s| &s.name)
                }
            )));
        }
    }
    let partition = partition.ok_or_else(|| {
        ApiError::validation(format!(
            "Query condition missed key schema element: {}",
            schema.partition.name
        ))
    })?;
    if !schema.partition.value_type.matches(&partition) {
        return Err(ApiError::validation(
            "One or more parameter values were invalid: Condition parameter type does not match schema type",
        ));
    }
    check_not_empty(&schema.partition, &partition)?;
    let prefix = keys::partition_prefix(hash, &partition);
    let (Some(operator), Some(sort_attribute)) = (sort, schema.sort.as_ref()) else {
        let end_of_partition = keys::prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        return Ok((prefix.clone(), Bound::Included(prefix), end_of_partition));
    };
    let (lower, upper) = sort_bounds(&prefix, sort_attribute, operator)?;
    Ok((prefix, lower, upper))
}

/// The bounds of the entries under `base` (a partition prefix, followed for a multi-attribute
/// key by the encodings of the sort values given with `=`) whose next sort value, of
/// `sort_attribute`, meets `operator`.
pub(crate) fn sort_bounds(
    base: &[u8],
    sort_attribute: &catalog::KeyAttribute,
    operator: KeyOperator,
) -> Result<(Bound<Vec<u8>>, Bound<Vec<u8>>), ApiError> {
    let prefix = base.to_vec();
    let end_of_partition = keys::prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
    let check = |value: &AttributeValue| {
        check_condition_type(sort_attribute, value).and_then(|()| check_not_empty(sort_attribute, value))
    };
    let with = |value: &AttributeValue| {
        let mut out = prefix.clone();
        keys::encode_key_value(value, &mut out);
        out
    };
    // Past every entry whose sort key equals `value` (index entries carry a suffix).
    let after = |value: &AttributeValue| keys::prefix_successor(&with(value)).map_or(Bound::Unbounded, Bound::Excluded);
    let (lower, upper) = match operator {
        KeyOperator::Eq(v) => {
            check(&v)?;
            (Bound::Included(with(&v)), after(&v))
        }
        KeyOperator::Lt(v) => {
            check(&v)?;
            (Bound::Included(prefix.clone()), Bound::Excluded(with(&v)))
        }
        KeyOperator::Le(v) => {
            check(&v)?;
            (Bound::Included(prefix.clone()), after(&v))
        }
        KeyOperator::Gt(v) => {
            check(&v)?;
            let lower = keys::prefix_successor(&with(&v)).unwrap_or_else(|| with(&v));
            (Bound::Included(lower), end_of_partition)
        }
        KeyOperator::Ge(v) => {
            check(&v)?;
            (Bound::Included(with(&v)), end_of_partition)
        }
        KeyOperator::Between(low, high) => {
            check(&low)?;
            check(&high)?;
            if with(&low) > with(&high) {
                return Err(ApiError::validation(format!(
                    "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound operand: AttributeValue: {}, upper bound operand: AttributeValue: {}",
                    serde_json::to_string(&low).unwrap_or_default(),
                    serde_json::to_string(&high).unwrap_or_default()
                )));
            }
            (Bound::Included(with(&low)), after(&high))
        }
        KeyOperator::BeginsWith(v) => {
            let bytes = match (&v, sort_attribute.value_type) {
                (AttributeValue::S(s), catalog::KeyType::S) => s.as_bytes().to_vec(),
                (AttributeValue::B(b), catalog::KeyType::B) => b.clone(),
                _ => {
                    return Err(ApiError::validation(
                        "Invalid KeyConditionExpression: Incorrect operand type for operator or function; operator or function: begins_with, operand type: the sort key must be S or B",
                    ));
                }
            };
            check_not_empty(sort_attribute, &v)?;
            let mut lower = prefix.clone();
            keys::encode_bytes_unterminated(&bytes, &mut lower);
            let upper = keys::prefix_successor(&lower).map_or(Bound::Unbounded, Bound::Excluded);
            (Bound::Included(lower), upper)
        }
    };
    Ok((lower, upper))
}

/// Refuses an empty string or binary as a key condition's value, as DynamoDB does (no key
/// holds one).
fn check_not_empty(attribute: &catalog::KeyAttribute, value: &AttributeValue) -> Result<(), ApiError> {
    let kind = match value {
        AttributeValue::S(text) if text.is_empty() => "string",
        AttributeValue::B(bytes) if bytes.is_empty() => "binary",
        _ => return Ok(()),
    };
    Err(ApiError::validation(format!(
        "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {kind} value. Key: {}",
        attribute.name
    )))
}

/// Refuses a key condition value whose type is not the key attribute's.
fn check_condition_type(attribute: &catalog::KeyAttribute, value: &AttributeValue) -> Result<(), ApiError> {
    if attribute.value_type.matches(value) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "One or more parameter values were invalid: Condition parameter type does not match schema type",
        ))
    }
}

/// [`query_bounds`] for a global index's multi-attribute key: `=` on every partition
/// attribute; on the sort attributes, `=` on a left-to-right prefix of them, optionally followed
/// by one condition of any kind on the next one. The range read is the partition's entries
/// whose sort values start with the equal ones, narrowed by that last condition.
fn multi_attribute_query_bounds(
    hash: KeyHash,
    schema: &KeySchema,
    mut conditions: Vec<(String, KeyOperator)>,
) -> Result<(Vec<u8>, Bound<Vec<u8>>, Bound<Vec<u8>>), ApiError> {
    if conditions.iter().any(|(name, _)| !schema.is_key_attribute(name)) {
        // A condition on an attribute that is no key of the index queried.
        return Err(ApiError::validation("Query key condition not supported"));
    }
    let mut take = |name: &str| {
        conditions
            .iter()
            .position(|(n, _)| n == name)
            .map(|at| conditions.swap_remove(at).1)
    };
    let mut partition = Vec::new();
    let mut missing = Vec::new();
    for attribute in schema.partition_attributes() {
        match take(&attribute.name) {
            Some(KeyOperator::Eq(value)) => partition.push((attribute, value)),
            _ => missing.push(attribute.name.as_str()),
        }
    }
    if !missing.is_empty() {
        // DynamoDB's words.
        return Err(ApiError::validation(format!(
            "HASH key attributes {} must have equality conditions specified in the query",
            missing.join(", ")
        )));
    }
    let sort: Vec<(&catalog::KeyAttribute, Option<KeyOperator>)> = schema
        .sort_attributes()
        .map(|attribute| (attribute, take(&attribute.name)))
        .collect();
    // The last sort attribute with a condition: every one before it needs `=`.
    let last = sort.iter().rposition(|(_, operator)| operator.is_some());
    if let Some(last) = last {
        let missing: Vec<&str> = sort[..last]
            .iter()
            .filter(|(_, operator)| !matches!(operator, Some(KeyOperator::Eq(_))))
            .map(|(attribute, _)| attribute.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::validation(format!(
                "RANGE key attributes {} must have equality conditions specified in the query because a condition is present on key attribute {}",
                missing.join(", "),
                sort[last].0.name
            )));
        }
    }
    for (attribute, value) in &partition {
        check_condition_type(attribute, value)?;
    }
    let values: Vec<&AttributeValue> = partition.iter().map(|(_, value)| value).collect();
    let prefix = keys::partition_prefix_of(hash, &values);
    let Some(last) = last else {
        let end_of_partition = keys::prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        return Ok((prefix.clone(), Bound::Included(prefix), end_of_partition));
    };
    let mut base = prefix.clone();
    let mut sort = sort.into_iter();
    for (attribute, operator) in sort.by_ref().take(last) {
        if let Some(KeyOperator::Eq(value)) = operator {
            check_condition_type(attribute, &value)?;
            keys::encode_key_value(&value, &mut base);
        }
    }
    let Some((attribute, Some(operator))) = sort.next() else {
        return Err(ApiError::internal("the last sort condition vanished"));
    };
    let (lower, upper) = sort_bounds(&base, attribute, operator)?;
    Ok((prefix, lower, upper))
}

pub fn query(store: &Store, mut request: QueryRequest) -> Result<Value, ApiError> {
    // Everything that does not need the table is checked before it is looked up, as DynamoDB
    // does (an invalid request names its problem, whether or not the table exists).
    let limit = request.read.check_request(&request.table_name)?;
    request.read.refuse_mixed(
        Some(request.key_condition_expression.is_some()),
        ("QueryFilter", request.query_filter.is_some()),
    )?;
    // KeyConditions go with ProjectionExpression and FilterExpression on DynamoDB; only the
    // two forms of the key condition exclude each other.
    refuse_mixed(
        &[("KeyConditionExpression", request.key_condition_expression.is_some())],
        &[("KeyConditions", request.key_conditions.is_some())],
    )?;
    // A multi-attribute key's query may name any of its attributes (conditions on other
    // attributes are refused with the others, once the schema is matched). The key is the
    // table's or index's, where they exist; else a key of two, refused as missing next.
    let found = store
        .engine()
        .table(&request.table_name)
        .filter(|meta| !meta.restoring());
    // An index the table lacks is named before the key condition is judged against its key.
    if let Some(meta) = &found {
        request.read.index(meta)?;
    }
    let conditions_max = found
        .as_deref()
        .and_then(|meta| {
            let schema = match request.read.index_name.as_deref() {
                None => &meta.key,
                Some(name) => &meta.index(name)?.key,
            };
            Some(if schema.is_multi_attribute() {
                catalog::INDEX_PARTITION_ATTRIBUTES_MAX + catalog::INDEX_SORT_ATTRIBUTES_MAX
            } else {
                schema.attributes().count()
            })
        })
        .unwrap_or(2);
    let (key_condition, filter, projection) = request.read.parse(
        (
            request.query_filter.as_ref(),
            Some(request.key_condition_expression.is_some()),
        ),
        "QueryFilter",
        |context| match (&request.key_condition_expression, &request.key_conditions) {
            (Some(text), _) => expr::parse_key_condition_checked(text, context, conditions_max, |paths| {
                found
                    .as_deref()
                    .map_or(Ok(()), |meta| super::refuse_nested_key_paths(meta, paths))
            }),
            (None, Some(conditions)) => legacy::key_conditions_to_key_condition(conditions, conditions_max),
            (None, None) => Err(ApiError::validation(
                "Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.",
            )),
        },
    )?;
    let meta = store.engine().require_table(&request.table_name)?;
    let index = request.read.index(&meta)?;
    refuse_nested_read_paths(&meta, projection.as_deref(), filter.as_ref())?;
    let schema = index.map_or(&meta.key, |i| &i.key);
    let select = parse_select(request.read.select.as_deref(), projection.is_some(), index)?;
    if let Some(filter) = &filter {
        refuse_key_in_filter(filter, schema, request.read.filter_expression.is_some())?;
        if let Some(index) = index {
            refuse_unprojected_filter(filter, &meta, index)?;
        }
    }
    let (prefix, lower, upper) = query_bounds(meta.key_hash, schema, key_condition.conditions)?;
    let start = request.read.start(&meta, index)?;
    if let Some(start) = &start {
        check_start_within(start, &prefix, &lower, &upper)?;
        if index.is_none() && meta.key.sort.is_none() && !meta.key.is_multi_attribute() {
            // A partition of a table without a sort key holds one item, so a start key
            // *after* it leaves nothing to read: DynamoDB refuses it.
            let given = request
                .read
                .exclusive_start_key
                .as_ref()
                .map(java_item)
                .unwrap_or_default();
            return Err(ApiError::validation(format!(
                "The provided exclusive start key is invalid: ExclusiveStartKey: {given}"
            )));
        }
    }
    let reverse = !request.scan_index_forward.unwrap_or(true);
    let reading = Reading::new(&meta, index, limit, (filter, projection), select);
    let mut response = reading.answer(store, &request.read, (lower, upper), reverse, start)?;
    if index.is_none() && meta.key.sort.is_none() && !meta.key.is_multi_attribute() {
        // Nothing follows the one item of such a partition, and a start key is refused above:
        // a Limit reached is no page to continue.
        if let Some(response) = response.as_object_mut() {
            response.remove("LastEvaluatedKey");
        }
    }
    Ok(response)
}

read_request!(
    ScanRequest,
    ScanWire {
        table_name: String,
        #[serde(default, deserialize_with = "crate::expr::legacy::scan_filter")]
        scan_filter: Option<HashMap<String, LegacyCondition>>,
        segment: Option<i64>,
        total_segments: Option<i64>,
    }
);

fn scan_bounds(segment: Option<i64>, total: Option<i64>) -> Result<(Bound<Vec<u8>>, Bound<Vec<u8>>), ApiError> {
    match (segment, total) {
        (None, None) => Ok((Bound::Unbounded, Bound::Unbounded)),
        (Some(segment), Some(total)) => {
            if !(1..=TOTAL_SEGMENTS_MAX).contains(&total) {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{total}' at 'totalSegments' failed to satisfy constraint: Member must have value less than or equal to {TOTAL_SEGMENTS_MAX} and greater than or equal to 1"
                )));
            }
            if !(0..total).contains(&segment) {
                return Err(ApiError::validation(format!(
                    "The Segment parameter is zero-based and must be less than parameter TotalSegments: Segment: {segment} is not less than TotalSegments: {total}"
                )));
            }
            let (lower, upper) = keys::segment_bounds(segment as u32, total as u32);
            Ok((Bound::Included(lower), upper.map_or(Bound::Unbounded, Bound::Excluded)))
        }
        (Some(_), None) => Err(ApiError::validation(
            "The TotalSegments parameter is required but was not present in the request when Segment parameter is present",
        )),
        (None, Some(_)) => Err(ApiError::validation(
            "The Segment parameter is required but was not present in the request when parameter TotalSegments is present",
        )),
    }
}

/// Whether `key` lies within the bounds.
pub(crate) fn in_bounds(key: &[u8], lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    let above = match lower {
        Bound::Included(l) => key >= l.as_slice(),
        Bound::Excluded(l) => key > l.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match upper {
        Bound::Included(u) => key <= u.as_slice(),
        Bound::Excluded(u) => key < u.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

pub fn scan(store: &Store, mut request: ScanRequest) -> Result<Value, ApiError> {
    // Everything that does not need the table is checked before it is looked up, as in Query.
    let limit = request.read.check_request(&request.table_name)?;
    let (lower, upper) = scan_bounds(request.segment, request.total_segments)?;
    request
        .read
        .refuse_mixed(None, ("ScanFilter", request.scan_filter.is_some()))?;
    // As in Query: an index the table lacks (or a consistent read of a global one) is named
    // before the filter is judged, as before the table lookup moved and as DynamoDB Local does.
    if let Some(meta) = store.engine().table(&request.table_name).filter(|m| !m.restoring()) {
        request.read.index(&meta)?;
    }
    let ((), filter, projection) =
        request
            .read
            .parse((request.scan_filter.as_ref(), None), "ScanFilter", |_| Ok(()))?;
    let meta = store.engine().require_table(&request.table_name)?;
    let index = request.read.index(&meta)?;
    refuse_nested_read_paths(&meta, projection.as_deref(), filter.as_ref())?;
    let select = parse_select(request.read.select.as_deref(), projection.is_some(), index)?;
    let start = request.read.start(&meta, index)?;
    if let Some(start) = &start
        && request.segment.is_some()
        && !in_bounds(start, &lower, &upper)
    {
        // A parallel scan's segments are disjoint: a LastEvaluatedKey from another segment
        // (a client mixing up its workers) would otherwise read the wrong part of the table.
        return Err(ApiError::validation(
            "The provided Exclusive start key does not map to the provided Segment and TotalSegments values.",
        ));
    }
    let reading = Reading::new(&meta, index, limit, (filter, projection), select);
    reading.answer(store, &request.read, (lower, upper), false, start)
}
