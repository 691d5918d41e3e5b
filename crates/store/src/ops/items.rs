//! Single-item operations: PutItem, GetItem, DeleteItem, UpdateItem.

use std::collections::HashMap;
use std::sync::Arc;

use dynamo_protocol::{ApiError, AttributeValue, Item};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Capacity, ExpressionInputs, Store, capacity_wanted, item_json, read_units, refuse_mixed, validate_item_limits,
    validate_return_consumed_capacity, write_capacity_json,
};
use crate::catalog::{self, TableMeta};
use crate::engine;
use crate::expr::legacy::{self, AttributeValueUpdate, ExpectedAttributeValue};
use crate::expr::{self, Condition, Path, PathElement, UpdateExpression};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReturnValues {
    None,
    AllOld,
    UpdatedOld,
    AllNew,
    UpdatedNew,
}

pub fn parse_return_values(text: Option<&str>, allowed: &[ReturnValues]) -> Result<ReturnValues, ApiError> {
    let value = match text {
        None | Some("NONE") => ReturnValues::None,
        Some("ALL_OLD") => ReturnValues::AllOld,
        Some("UPDATED_OLD") => ReturnValues::UpdatedOld,
        Some("ALL_NEW") => ReturnValues::AllNew,
        Some("UPDATED_NEW") => ReturnValues::UpdatedNew,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'returnValues' failed to satisfy constraint: Member must satisfy enum value set: [ALL_NEW, UPDATED_OLD, ALL_OLD, NONE, UPDATED_NEW]"
            )));
        }
    };
    if value != ReturnValues::None && !allowed.contains(&value) {
        return Err(ApiError::validation("Return values set to invalid value"));
    }
    Ok(value)
}

/// Whether a failed condition should carry the old item (ReturnValuesOnConditionCheckFailure).
pub fn parse_return_on_failure(text: Option<&str>) -> Result<bool, ApiError> {
    match text {
        None | Some("NONE") => Ok(false),
        Some("ALL_OLD") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'returnValuesOnConditionCheckFailure' failed to satisfy constraint: Member must satisfy enum value set: [ALL_OLD, NONE]"
        ))),
    }
}

/// A condition from either ConditionExpression or the legacy Expected map.
pub fn build_condition(
    context: &expr::Context<'_>,
    expression: Option<&str>,
    expected: Option<&HashMap<String, ExpectedAttributeValue>>,
    conditional_operator: Option<&str>,
) -> Result<Option<Condition>, ApiError> {
    refuse_mixed(
        &[("ConditionExpression", expression.is_some())],
        &[
            ("ConditionalOperator", conditional_operator.is_some()),
            ("Expected", expected.is_some()),
        ],
    )?;
    if let Some(text) = expression {
        return expr::parse_condition(text, context, expr::ExpressionKind::Condition).map(Some);
    }
    match expected {
        Some(expected) if !expected.is_empty() => {
            legacy::expected_to_condition(expected, conditional_operator).map(Some)
        }
        _ => {
            legacy::check_conditional_operator(conditional_operator, 0)?;
            Ok(None)
        }
    }
}

/// Projection from either ProjectionExpression or the legacy AttributesToGet.
pub fn build_projection(
    context: &expr::Context<'_>,
    expression: Option<&str>,
    attributes_to_get: Option<&[String]>,
) -> Result<Option<Vec<Path>>, ApiError> {
    refuse_mixed(
        &[("ProjectionExpression", expression.is_some())],
        &[("AttributesToGet", attributes_to_get.is_some())],
    )?;
    match (expression, attributes_to_get) {
        (Some(text), _) => expr::parse_projection(text, context).map(Some),
        (None, Some(names)) => legacy::attributes_to_get_to_projection(names).map(Some),
        (None, None) => Ok(None),
    }
}

/// The error a failed condition produces, carrying the old item when asked.
pub fn condition_failed(old: Option<&Item>, return_old: bool) -> ApiError {
    let mut error = ApiError::conditional_check_failed();
    if return_old {
        error.item = old.map(item_json);
    }
    error
}

pub fn check_condition(condition: Option<&Condition>, old: Option<&Item>, return_old: bool) -> Result<(), ApiError> {
    let Some(condition) = condition else { return Ok(()) };
    let empty = Item::new();
    if condition.evaluate(old.unwrap_or(&empty))? {
        Ok(())
    } else {
        Err(condition_failed(old, return_old))
    }
}

/// One single-item write as a job of the writer: reads the item stored at `key` as committed,
/// checks `condition` against it (a failure carrying it when `return_old`), then `apply`s the
/// write to it.
pub async fn write_checked<T: Send + 'static>(
    store: &Store,
    meta: &Arc<TableMeta>,
    key: Vec<u8>,
    (condition, return_old): (Option<Condition>, bool),
    apply: impl FnOnce(&mut engine::WriteContext<'_>, &TableMeta, &[u8], Option<Item>) -> Result<T, ApiError>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let meta = Arc::clone(meta);
    store
        .engine()
        .write(move |context| {
            context.current_table(&meta)?;
            let old = context.get(&meta, &key)?;
            check_condition(condition.as_ref(), old.as_ref(), return_old)?;
            apply(context, &meta, &key, old)
        })
        .await
}

/// Validates an item for PutItem and returns its stored key.
pub fn validate_put(meta: &TableMeta, item: &Item) -> Result<Vec<u8>, ApiError> {
    validate_item_limits(item)?;
    validate_put_key(meta, item)
}

/// [`validate_put`] after [`validate_item_limits`] (the checks that need the table).
pub fn validate_put_key(meta: &TableMeta, item: &Item) -> Result<Vec<u8>, ApiError> {
    catalog::validate_key_attributes(&meta.key, item, true)?;
    catalog::validate_index_key_types(meta, item)?;
    engine::key_of(meta.key_hash, &meta.key, item)
}

pub fn validate_key(meta: &TableMeta, key: &Item) -> Result<Vec<u8>, ApiError> {
    catalog::validate_key(&meta.key, key)?;
    engine::key_of(meta.key_hash, &meta.key, key)
}

/// Defines a write request: its own members, then [`ConditionalWrite`]'s as `write`, decoded
/// through one flat struct of all its members (`$wire`). `#[serde(flatten)]` would first
/// buffer every member the outer struct does not name (expression values, Expected entries)
/// into serde's intermediate `Content`, twenty to thirty times their bytes, and only then
/// decode them (and the limits read within them, like [`SUBSTITUTIONS_BYTES_MAX`], after
/// that).
///
/// [`SUBSTITUTIONS_BYTES_MAX`]: dynamo_protocol::value::SUBSTITUTIONS_BYTES_MAX
macro_rules! conditional_write_request {
    ($name:ident, $wire:ident { $($(#[$attr:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        pub struct $name {
            $($field: $ty,)*
            write: ConditionalWrite,
        }

        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct $wire {
            $($(#[$attr])* $field: $ty,)*
            condition_expression: Option<String>,
            #[serde(default, deserialize_with = "crate::expr::legacy::expected")]
            expected: Option<HashMap<String, ExpectedAttributeValue>>,
            conditional_operator: Option<String>,
            #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
            expression_attribute_names: Option<HashMap<String, String>>,
            #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_values")]
            expression_attribute_values: Option<HashMap<String, AttributeValue>>,
            return_values: Option<String>,
            return_consumed_capacity: Option<String>,
            return_values_on_condition_check_failure: Option<String>,
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let wire = $wire::deserialize(deserializer)?;
                Ok($name {
                    $($field: wire.$field,)*
                    write: ConditionalWrite {
                        condition_expression: wire.condition_expression,
                        expected: wire.expected,
                        conditional_operator: wire.conditional_operator,
                        expression_attribute_names: wire.expression_attribute_names,
                        expression_attribute_values: wire.expression_attribute_values,
                        return_values: wire.return_values,
                        return_consumed_capacity: wire.return_consumed_capacity,
                        return_values_on_condition_check_failure: wire.return_values_on_condition_check_failure,
                    },
                })
            }
        }
    };
}

conditional_write_request!(
    PutItemRequest,
    PutItemWire {
        table_name: String,
        item: Item
    }
);

/// The members PutItem, DeleteItem and UpdateItem share: the condition (an expression or the
/// legacy Expected map), the expressions' names and values, and what to answer.
pub struct ConditionalWrite {
    condition_expression: Option<String>,
    expected: Option<HashMap<String, ExpectedAttributeValue>>,
    conditional_operator: Option<String>,
    expression_attribute_names: Option<HashMap<String, String>>,
    expression_attribute_values: Option<HashMap<String, AttributeValue>>,
    return_values: Option<String>,
    return_consumed_capacity: Option<String>,
    return_values_on_condition_check_failure: Option<String>,
}

impl ConditionalWrite {
    /// Checks ReturnValues (NONE or one of `allowed`), ReturnValuesOnConditionCheckFailure and
    /// ReturnConsumedCapacity; what to return, and whether a failed condition carries the old item.
    fn returns(&self, allowed: &[ReturnValues]) -> Result<(ReturnValues, bool), ApiError> {
        let return_values = parse_return_values(self.return_values.as_deref(), allowed)?;
        let return_old = parse_return_on_failure(self.return_values_on_condition_check_failure.as_deref())?;
        validate_return_consumed_capacity(self.return_consumed_capacity.as_deref())?;
        Ok((return_values, return_old))
    }

    /// The names and values the expressions may use, taken out of the request.
    fn inputs(&mut self) -> ExpressionInputs {
        ExpressionInputs {
            names: self.expression_attribute_names.take(),
            values: self.expression_attribute_values.take(),
        }
    }

    fn condition(&self, context: &expr::Context<'_>) -> Result<Option<Condition>, ApiError> {
        build_condition(
            context,
            self.condition_expression.as_deref(),
            self.expected.as_ref(),
            self.conditional_operator.as_deref(),
        )
    }

    /// The condition of a write that has no other expression: every name and value given
    /// must be used by it.
    fn condition_alone(&mut self) -> Result<Option<Condition>, ApiError> {
        let inputs = self.inputs();
        let given = [("ConditionExpression", self.condition_expression.is_some())];
        super::refuse_inputs_without_expressions(&inputs, &given, &given)?;
        let context = inputs.context();
        let condition = self.condition(&context)?;
        context.check_all_used()?;
        Ok(condition)
    }
}

pub async fn put_item(store: &Store, mut request: PutItemRequest) -> Result<Value, ApiError> {
    // Everything that does not need the table is checked before it is looked up, as DynamoDB
    // does (an invalid request names its problem, whether or not the table exists).
    catalog::validate_table_name(&request.table_name, "tableName")?;
    let (return_values, return_old) = request.write.returns(&[ReturnValues::AllOld])?;
    let condition = request.write.condition_alone()?;
    let item = request.item;
    validate_item_limits(&item)?;
    let meta = store.engine().require_table(&request.table_name)?;
    // The key first, then paths into key attributes, as DynamoDB Local judges a write.
    let key = validate_put_key(&meta, &item)?;
    super::refuse_nested_key_paths(&meta, condition.iter().flat_map(|c| c.paths()))?;
    let mode = request.write.return_consumed_capacity;
    let wants_capacity = capacity_wanted(mode.as_deref());
    let (old, capacity) = write_checked(
        store,
        &meta,
        key,
        (condition, return_old),
        move |context, meta, key, old| {
            context.put(meta, key, old.as_ref(), &item)?;
            let capacity = wants_capacity.then(|| Capacity::write(meta, old.as_ref(), Some(&item)));
            Ok((old, capacity))
        },
    )
    .await?;
    let mut response = json!({});
    if let (ReturnValues::AllOld, Some(old)) = (return_values, &old) {
        response["Attributes"] = item_json(old);
    }
    if let Some(capacity) = capacity.and_then(|c| c.json(mode.as_deref(), &meta.name)) {
        response["ConsumedCapacity"] = capacity;
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetItemRequest {
    table_name: String,
    key: Item,
    projection_expression: Option<String>,
    attributes_to_get: Option<Vec<String>>,
    #[serde(default, deserialize_with = "dynamo_protocol::value::expression_attribute_names")]
    expression_attribute_names: Option<HashMap<String, String>>,
    consistent_read: Option<bool>,
    return_consumed_capacity: Option<String>,
}

pub fn get_item(store: &Store, request: GetItemRequest) -> Result<Value, ApiError> {
    // Checked before the table is looked up, as in PutItem.
    catalog::validate_table_name(&request.table_name, "tableName")?;
    validate_return_consumed_capacity(request.return_consumed_capacity.as_deref())?;
    let inputs = ExpressionInputs {
        names: request.expression_attribute_names,
        values: None,
    };
    super::refuse_inputs_without_expressions(
        &inputs,
        &[("ProjectionExpression", request.projection_expression.is_some())],
        &[],
    )?;
    let projection = {
        let context = inputs.context();
        let projection = build_projection(
            &context,
            request.projection_expression.as_deref(),
            request.attributes_to_get.as_deref(),
        )?;
        context.check_all_used()?;
        projection
    };
    let meta = store.engine().require_table(&request.table_name)?;
    super::refuse_nested_key_paths(&meta, projection.iter().flatten())?;
    let key = validate_key(&meta, &request.key)?;
    let item = store.engine().snapshot()?.get(&meta, &key)?;
    let size = item.as_ref().map(dynamo_protocol::value::item_size_bytes).unwrap_or(0);
    let mut response = json!({});
    if let Some(item) = item {
        let item = match &projection {
            Some(paths) => expr::project(&item, paths),
            None => item,
        };
        response["Item"] = item_json(&item);
    }
    let units = read_units(size, request.consistent_read.unwrap_or(false));
    if let Some(capacity) = Capacity::table(units).json(request.return_consumed_capacity.as_deref(), &meta.name) {
        response["ConsumedCapacity"] = capacity;
    }
    Ok(response)
}

conditional_write_request!(
    DeleteItemRequest,
    DeleteItemWire {
        table_name: String,
        key: Item
    }
);

pub async fn delete_item(store: &Store, mut request: DeleteItemRequest) -> Result<Value, ApiError> {
    // Checked before the table is looked up, as in PutItem.
    catalog::validate_table_name(&request.table_name, "tableName")?;
    let (return_values, return_old) = request.write.returns(&[ReturnValues::AllOld])?;
    let condition = request.write.condition_alone()?;
    let meta = store.engine().require_table(&request.table_name)?;
    // The key first, as in PutItem.
    let key = validate_key(&meta, &request.key)?;
    super::refuse_nested_key_paths(&meta, condition.iter().flat_map(|c| c.paths()))?;
    let old = write_checked(store, &meta, key, (condition, return_old), |context, meta, key, old| {
        context.delete(meta, key, old.as_ref())?;
        Ok(old)
    })
    .await?;
    let mut response = json!({});
    if let (ReturnValues::AllOld, Some(old)) = (return_values, &old) {
        response["Attributes"] = item_json(old);
    }
    let mode = request.write.return_consumed_capacity.as_deref();
    if let Some(capacity) = write_capacity_json(mode, &meta, old.as_ref(), None) {
        response["ConsumedCapacity"] = capacity;
    }
    Ok(response)
}

conditional_write_request!(
    UpdateItemRequest,
    UpdateItemWire {
        table_name: String,
        key: Item,
        update_expression: Option<String>,
        #[serde(default, deserialize_with = "crate::expr::legacy::attribute_updates")]
        attribute_updates: Option<HashMap<String, AttributeValueUpdate>>,
    }
);

/// An update from either UpdateExpression or the legacy AttributeUpdates, checked not to touch
/// key attributes.
pub fn build_update(
    meta: &TableMeta,
    context: &expr::Context<'_>,
    expression: Option<&str>,
    legacy_updates: Option<&HashMap<String, AttributeValueUpdate>>,
) -> Result<Option<UpdateExpression>, ApiError> {
    let update = parse_update_request(context, expression, legacy_updates)?;
    refuse_key_updates(meta, update.as_ref())?;
    Ok(update)
}

/// An update from either UpdateExpression or the legacy AttributeUpdates, checked as far as it
/// can be without the table (DynamoDB checks these before it looks the table up).
fn parse_update_request(
    context: &expr::Context<'_>,
    expression: Option<&str>,
    legacy_updates: Option<&HashMap<String, AttributeValueUpdate>>,
) -> Result<Option<UpdateExpression>, ApiError> {
    refuse_mixed(
        &[("UpdateExpression", expression.is_some())],
        &[("AttributeUpdates", legacy_updates.is_some())],
    )?;
    Ok(match (expression, legacy_updates) {
        (Some(text), _) => Some(expr::parse_update(text, context)?),
        (None, Some(updates)) if !updates.is_empty() => Some(legacy::attribute_updates_to_update(updates)?),
        _ => None,
    })
}

/// Refuses an update that sets or removes a key attribute of `meta`.
fn refuse_key_updates(meta: &TableMeta, update: Option<&UpdateExpression>) -> Result<(), ApiError> {
    if let Some(update) = update {
        for path in update.target_paths() {
            if let Some(PathElement::Attribute(name)) = path.0.first()
                && meta.key.is_key_attribute(name)
            {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Cannot update attribute {name}. This attribute is part of the key"
                )));
            }
        }
    }
    Ok(())
}

/// Applies an update to the current item (or a new one made of the key) without touching `old`.
pub fn updated_item(
    meta: &TableMeta,
    key: &Item,
    old: Option<&Item>,
    update: Option<&UpdateExpression>,
) -> Result<Item, ApiError> {
    let mut new = old.cloned().unwrap_or_else(|| key.clone());
    if let Some(update) = update {
        update.apply(&mut new)?;
    }
    catalog::validate_index_key_types(meta, &new)?;
    super::validate_updated_item_limits(&new)?;
    Ok(new)
}

/// The item an update writes: by its key, as an item and as stored.
pub struct UpdateTarget<'m> {
    pub meta: &'m Arc<TableMeta>,
    pub key: Item,
    pub key_bytes: Vec<u8>,
    /// A missing item fails the condition (PartiQL UPDATE); otherwise it is made of the key.
    pub must_exist: bool,
}

impl UpdateTarget<'_> {
    /// Applies `update` where `checked` (the condition, whether a failure returns the old item)
    /// holds; the item before and after, and the paths the update sets or removes.
    pub async fn update(
        self,
        store: &Store,
        checked: (Option<Condition>, bool),
        update: Option<UpdateExpression>,
    ) -> Result<(Option<Item>, Option<Item>, Vec<Path>), ApiError> {
        let paths = update.as_ref().map(UpdateExpression::target_paths).unwrap_or_default();
        let (key, must_exist, return_old) = (self.key, self.must_exist, checked.1);
        let (old, new) = write_checked(
            store,
            self.meta,
            self.key_bytes,
            checked,
            move |context, meta, key_bytes, old| {
                match &old {
                    None if must_exist => return Err(condition_failed(None, return_old)),
                    // Nothing to take away from: DynamoDB leaves the item absent.
                    None if update.as_ref().is_some_and(UpdateExpression::only_removes) => return Ok((None, None)),
                    _ => {}
                }
                let new = updated_item(meta, &key, old.as_ref(), update.as_ref())?;
                context.put(meta, key_bytes, old.as_ref(), &new)?;
                Ok((old, Some(new)))
            },
        )
        .await?;
        Ok((old, new, paths))
    }
}

/// What ReturnValues (or PartiQL's RETURNING) returns of a write from `old` to `new`; `paths`
/// are the ones an update set or removed.
pub fn returned_attributes(
    return_values: ReturnValues,
    old: Option<&Item>,
    new: Option<&Item>,
    paths: &[Path],
) -> Option<Item> {
    match return_values {
        ReturnValues::None => None,
        ReturnValues::AllOld => old.cloned(),
        ReturnValues::AllNew => new.cloned(),
        ReturnValues::UpdatedOld => old.map(|o| expr::project(o, paths)),
        ReturnValues::UpdatedNew => new.map(|n| expr::project(n, paths)),
    }
}

pub async fn update_item(store: &Store, mut request: UpdateItemRequest) -> Result<Value, ApiError> {
    // Everything that does not need the table is checked before it is looked up, as DynamoDB
    // does (an invalid request names its problem, whether or not the table exists).
    catalog::validate_table_name(&request.table_name, "tableName")?;
    let write = &mut request.write;
    let (return_values, return_old) = write.returns(&[
        ReturnValues::AllOld,
        ReturnValues::AllNew,
        ReturnValues::UpdatedOld,
        ReturnValues::UpdatedNew,
    ])?;
    refuse_mixed(
        &[
            ("ConditionExpression", write.condition_expression.is_some()),
            ("UpdateExpression", request.update_expression.is_some()),
        ],
        &[
            ("AttributeUpdates", request.attribute_updates.is_some()),
            ("ConditionalOperator", write.conditional_operator.is_some()),
            ("Expected", write.expected.is_some()),
        ],
    )?;
    let inputs = write.inputs();
    let given = [
        ("UpdateExpression", request.update_expression.is_some()),
        ("ConditionExpression", write.condition_expression.is_some()),
    ];
    super::refuse_inputs_without_expressions(&inputs, &given, &given)?;
    let (condition, update) = {
        let context = inputs.context();
        let update = parse_update_request(
            &context,
            request.update_expression.as_deref(),
            request.attribute_updates.as_ref(),
        )?;
        let condition = request.write.condition(&context)?;
        context.check_all_used()?;
        (condition, update)
    };
    let meta = store.engine().require_table(&request.table_name)?;
    // The key first, as in PutItem (DynamoDB Local names a bad key before an update of a key
    // attribute or a path into one).
    let key_bytes = validate_key(&meta, &request.key)?;
    refuse_key_updates(&meta, update.as_ref())?;
    super::refuse_nested_key_paths(
        &meta,
        update
            .iter()
            .flat_map(|u| u.paths())
            .chain(condition.iter().flat_map(|c| c.paths())),
    )?;
    let key = request.key;
    let target = UpdateTarget {
        meta: &meta,
        key,
        key_bytes,
        must_exist: false,
    };
    let (old, new, paths) = target.update(store, (condition, return_old), update).await?;
    let attributes = returned_attributes(return_values, old.as_ref(), new.as_ref(), &paths);
    let mut response = json!({});
    if let Some(attributes) = attributes.filter(|a| !a.is_empty()) {
        response["Attributes"] = item_json(&attributes);
    }
    let mode = request.write.return_consumed_capacity.as_deref();
    if let Some(capacity) = write_capacity_json(mode, &meta, old.as_ref(), new.as_ref()) {
        response["ConsumedCapacity"] = capacity;
    }
    Ok(response)
}
