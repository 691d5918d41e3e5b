//! The legacy request parameters that predate expressions — `Expected`, `QueryFilter`,
//! `ScanFilter`, `KeyConditions`, `AttributeUpdates`, `AttributesToGet` — translated into the
//! same conditions, updates and projections that expressions produce, with DynamoDB's
//! validation messages. Old SDKs still send these, so the semantics follow DynamoDB's quirks
//! (NE holds for a missing attribute, NOT_CONTAINS does not).

use std::collections::HashMap;

use dynamo_protocol::value::ValueType;
use dynamo_protocol::{ApiError, AttributeValue};
use serde::Deserialize;

use super::ast::{Comparator, Condition, Node, Operand, Path};
use super::eval::compare;
use super::keycond::{KeyCondition, KeyOperator};
use super::update::{Action, SetValue, UpdateExpression};

/// One entry of `Expected`: either `Value`/`Exists` or `ComparisonOperator` with its values.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExpectedAttributeValue {
    pub value: Option<AttributeValue>,
    pub exists: Option<bool>,
    pub comparison_operator: Option<String>,
    pub attribute_value_list: Option<Vec<AttributeValue>>,
}

/// One entry of `QueryFilter`, `ScanFilter` or `KeyConditions`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyCondition {
    pub comparison_operator: Option<String>,
    pub attribute_value_list: Option<Vec<AttributeValue>>,
}

/// One entry of `AttributeUpdates`; `Action` defaults to PUT.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributeValueUpdate {
    pub value: Option<AttributeValue>,
    pub action: Option<String>,
}

/// What a legacy map's entries may count together, in bytes: DynamoDB's bound on all
/// substitution variables of the expression such a map stands for (2 MB). A map past it is
/// refused as soon as its entries pass it, so a hostile body of hundreds of thousands of tiny
/// conditions is never built whole (each decodes to many times its bytes).
pub const LEGACY_MAP_BYTES_MAX: usize = dynamo_protocol::value::SUBSTITUTIONS_BYTES_MAX;
/// What each entry counts besides its attribute name and values: the placeholder and the
/// comparison it would be in an expression, and what it costs decoded. At most ~30,000 entries
/// of tiny conditions fit; a real request has a few.
pub const LEGACY_ENTRY_OVERHEAD_BYTES: usize = 64;

/// An entry of a legacy map: the bytes of its values, as an item counts them.
trait LegacyEntry {
    fn value_bytes(&self) -> usize;
}

fn list_bytes(list: Option<&Vec<AttributeValue>>) -> usize {
    list.map_or(0, |values| values.iter().map(AttributeValue::size_bytes).sum())
}

impl LegacyEntry for ExpectedAttributeValue {
    fn value_bytes(&self) -> usize {
        self.value.as_ref().map_or(0, AttributeValue::size_bytes) + list_bytes(self.attribute_value_list.as_ref())
    }
}

impl LegacyEntry for LegacyCondition {
    fn value_bytes(&self) -> usize {
        list_bytes(self.attribute_value_list.as_ref())
    }
}

impl LegacyEntry for AttributeValueUpdate {
    fn value_bytes(&self) -> usize {
        self.value.as_ref().map_or(0, AttributeValue::size_bytes)
    }
}

fn entry_bytes<V: LegacyEntry>(name: &str, entry: &V) -> usize {
    name.len()
        .saturating_add(entry.value_bytes())
        .saturating_add(LEGACY_ENTRY_OVERHEAD_BYTES)
}

fn too_large(parameter: &str, bytes: usize) -> String {
    format!(
        "{parameter} is too large: its entries count {bytes} bytes or more (each entry its attribute \
         name, its values and {LEGACY_ENTRY_OVERHEAD_BYTES}), above {LEGACY_MAP_BYTES_MAX}, DynamoDB's \
         bound on all substitution variables of the expression it stands for; send fewer entries, \
         or use an expression"
    )
}

/// A legacy map read within [`LEGACY_MAP_BYTES_MAX`] (`dynamo_protocol::value::map_within`);
/// past it, a ValidationException naming the parameter.
macro_rules! legacy_map {
    ($parameter:literal, $entry:ty) => {
        |deserializer| {
            dynamo_protocol::value::map_within::<_, $entry>(
                deserializer,
                $parameter,
                LEGACY_MAP_BYTES_MAX,
                entry_bytes,
                |bytes| too_large($parameter, bytes),
            )
        }
    };
}

/// `Expected`, read within [`LEGACY_MAP_BYTES_MAX`]. Use with `#[serde(default, deserialize_with = ...)]`.
pub fn expected<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HashMap<String, ExpectedAttributeValue>>, D::Error> {
    (legacy_map!("Expected", ExpectedAttributeValue))(deserializer)
}

/// `AttributeUpdates`, read within [`LEGACY_MAP_BYTES_MAX`].
pub fn attribute_updates<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HashMap<String, AttributeValueUpdate>>, D::Error> {
    (legacy_map!("AttributeUpdates", AttributeValueUpdate))(deserializer)
}

/// `KeyConditions`, read within [`LEGACY_MAP_BYTES_MAX`].
pub fn key_conditions<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HashMap<String, LegacyCondition>>, D::Error> {
    (legacy_map!("KeyConditions", LegacyCondition))(deserializer)
}

/// `QueryFilter`, read within [`LEGACY_MAP_BYTES_MAX`].
pub fn query_filter<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HashMap<String, LegacyCondition>>, D::Error> {
    (legacy_map!("QueryFilter", LegacyCondition))(deserializer)
}

/// `ScanFilter`, read within [`LEGACY_MAP_BYTES_MAX`].
pub fn scan_filter<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HashMap<String, LegacyCondition>>, D::Error> {
    (legacy_map!("ScanFilter", LegacyCondition))(deserializer)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Le,
    Lt,
    Ge,
    Gt,
    NotNull,
    Null,
    Contains,
    NotContains,
    BeginsWith,
    In,
    Between,
}

const OPERATOR_NAMES: &str =
    "[IN, NULL, BETWEEN, LT, NOT_CONTAINS, EQ, GT, NOT_NULL, NE, LE, BEGINS_WITH, GE, CONTAINS]";

impl Operator {
    const ALL: [Operator; 13] = [
        Operator::Eq,
        Operator::Ne,
        Operator::Le,
        Operator::Lt,
        Operator::Ge,
        Operator::Gt,
        Operator::NotNull,
        Operator::Null,
        Operator::Contains,
        Operator::NotContains,
        Operator::BeginsWith,
        Operator::In,
        Operator::Between,
    ];

    fn name(self) -> &'static str {
        match self {
            Operator::Eq => "EQ",
            Operator::Ne => "NE",
            Operator::Le => "LE",
            Operator::Lt => "LT",
            Operator::Ge => "GE",
            Operator::Gt => "GT",
            Operator::NotNull => "NOT_NULL",
            Operator::Null => "NULL",
            Operator::Contains => "CONTAINS",
            Operator::NotContains => "NOT_CONTAINS",
            Operator::BeginsWith => "BEGINS_WITH",
            Operator::In => "IN",
            Operator::Between => "BETWEEN",
        }
    }

    /// Parses the wire name; `location` says where it came from for the error message.
    fn parse(text: Option<&str>, location: &str) -> Result<Operator, ApiError> {
        let Some(text) = text else {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value null at '{location}.member.comparisonOperator' failed to satisfy constraint: Member must not be null"
            )));
        };
        Operator::ALL.into_iter().find(|operator| operator.name() == text).ok_or_else(|| {
            ApiError::validation(format!(
                "1 validation error detected: Value '{text}' at '{location}.member.comparisonOperator' failed to satisfy constraint: Member must satisfy enum value set: {OPERATOR_NAMES}"
            ))
        })
    }

    fn takes_arguments(self, count: usize) -> bool {
        match self {
            Operator::Null | Operator::NotNull => count == 0,
            Operator::In => count >= 1,
            Operator::Between => count == 2,
            _ => count == 1,
        }
    }

    fn accepts(self, value_type: ValueType) -> bool {
        let scalar = matches!(value_type, ValueType::S | ValueType::N | ValueType::B);
        match self {
            Operator::Eq | Operator::Ne => true,
            Operator::BeginsWith => matches!(value_type, ValueType::S | ValueType::B),
            _ => scalar,
        }
    }
}

fn invalid_parameter(message: impl std::fmt::Display) -> ApiError {
    ApiError::validation(format!("One or more parameter values were invalid: {message}"))
}

/// Checks an operator's values as DynamoDB does: count, one type, a type the operator takes,
/// and ordered BETWEEN bounds.
fn validate(operator: Operator, values: &[AttributeValue]) -> Result<(), ApiError> {
    if !operator.takes_arguments(values.len()) {
        return Err(invalid_parameter(format!(
            "Invalid number of argument(s) for the {} ComparisonOperator",
            operator.name()
        )));
    }
    if let Some(first) = values.first()
        && values.iter().any(|value| value.value_type() != first.value_type())
    {
        return Err(invalid_parameter(
            "AttributeValues inside AttributeValueList must be of same type",
        ));
    }
    if let Some(value) = values.iter().find(|value| !operator.accepts(value.value_type())) {
        return Err(invalid_parameter(format!(
            "ComparisonOperator {} is not valid for {} AttributeValue type",
            operator.name(),
            value.value_type().descriptor()
        )));
    }
    if let [low, high] = values
        && operator == Operator::Between
        && compare(low, high) == Some(std::cmp::Ordering::Greater)
    {
        return Err(ApiError::validation(
            "The BETWEEN condition was provided a range where the lower bound is greater than the upper bound",
        ));
    }
    Ok(())
}

/// The condition node a validated legacy comparison on attribute `key` stands for.
fn comparison_node(key: &str, operator: Operator, values: &[AttributeValue]) -> Node {
    let path = Path::attribute(key);
    let attribute = Operand::Path(path.clone());
    let value = |position: usize| Operand::Value(values.get(position).cloned().unwrap_or(AttributeValue::Null));
    let compare = |comparator| Node::Compare(comparator, attribute.clone(), value(0));
    match operator {
        Operator::Eq => compare(Comparator::Equal),
        Operator::Ne => compare(Comparator::NotEqual),
        Operator::Le => compare(Comparator::LessOrEqual),
        Operator::Lt => compare(Comparator::Less),
        Operator::Ge => compare(Comparator::GreaterOrEqual),
        Operator::Gt => compare(Comparator::Greater),
        Operator::NotNull => Node::Exists(path),
        Operator::Null => Node::NotExists(path),
        Operator::Contains => Node::Contains(attribute, value(0)),
        // Unlike `NOT contains(...)`, NOT_CONTAINS fails when the attribute is missing.
        Operator::NotContains => Node::And(vec![
            Node::Exists(path),
            Node::Not(Box::new(Node::Contains(attribute, value(0)))),
        ]),
        Operator::BeginsWith => Node::BeginsWith(attribute, value(0)),
        Operator::In => Node::In(attribute, values.iter().cloned().map(Operand::Value).collect()),
        Operator::Between => Node::Between(attribute, value(0), value(1)),
    }
}

/// Joins per-attribute conditions with `ConditionalOperator` (AND unless told otherwise).
fn join(nodes: Vec<Node>, conditional_operator: Option<&str>) -> Result<Condition, ApiError> {
    check_conditional_operator(conditional_operator, nodes.len())?;
    let root = match conditional_operator {
        Some("OR") => Node::Or(nodes),
        _ => Node::And(nodes),
    };
    Ok(Condition { root })
}

/// `ConditionalOperator` is `AND` or `OR`, and joins two or more conditions of `Expected`,
/// `QueryFilter` or `ScanFilter` (`conditions`): with fewer (or none at all) DynamoDB refuses it.
pub fn check_conditional_operator(conditional_operator: Option<&str>, conditions: usize) -> Result<(), ApiError> {
    match conditional_operator {
        None => Ok(()),
        Some("AND" | "OR") if conditions >= 2 => Ok(()),
        Some("AND" | "OR") => Err(ApiError::validation(
            "ConditionalOperator can only be used when Filter or Expected has two or more elements",
        )),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'conditionalOperator' failed to satisfy constraint: Member must satisfy enum value set: [OR, AND]"
        ))),
    }
}

/// Keys in a fixed order, so the first problem reported does not depend on hashing.
fn sorted_keys<V>(map: &HashMap<String, V>) -> Vec<(&String, &V)> {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Translates `Expected` (with `ConditionalOperator`) into a condition.
pub fn expected_to_condition(
    expected: &HashMap<String, ExpectedAttributeValue>,
    conditional_operator: Option<&str>,
) -> Result<Condition, ApiError> {
    let nodes = sorted_keys(expected)
        .into_iter()
        .map(|(key, entry)| expected_node(key, entry))
        .collect::<Result<Vec<Node>, ApiError>>()?;
    join(nodes, conditional_operator)
}

fn expected_node(key: &str, entry: &ExpectedAttributeValue) -> Result<Node, ApiError> {
    if entry.attribute_value_list.is_some() && entry.value.is_some() {
        return Err(invalid_parameter(format!(
            "Value and AttributeValueList cannot be used together for Attribute: {key}"
        )));
    }
    if let Some(operator_name) = &entry.comparison_operator {
        if entry.exists.is_some() {
            return Err(invalid_parameter(format!(
                "Exists and ComparisonOperator cannot be used together for Attribute: {key}"
            )));
        }
        let operator = Operator::parse(Some(operator_name), &format!("expected.{key}"))?;
        let values = match (&entry.attribute_value_list, &entry.value) {
            (Some(list), _) => list.clone(),
            (None, Some(value)) => vec![value.clone()],
            (None, None) if matches!(operator, Operator::Null | Operator::NotNull) => Vec::new(),
            (None, None) => {
                return Err(invalid_parameter(format!(
                    "Value or AttributeValueList must be used with ComparisonOperator: {} for Attribute: {key}",
                    operator.name()
                )));
            }
        };
        validate(operator, &values)?;
        return Ok(comparison_node(key, operator, &values));
    }
    if entry.attribute_value_list.is_some() {
        return Err(invalid_parameter(format!(
            "AttributeValueList can only be used with a ComparisonOperator for Attribute: {key}"
        )));
    }
    match (entry.exists, &entry.value) {
        (Some(false), Some(_)) => Err(invalid_parameter(format!(
            "Value cannot be used when Exists is false for Attribute: {key}"
        ))),
        (Some(false), None) => Ok(Node::NotExists(Path::attribute(key))),
        (exists, None) => Err(invalid_parameter(format!(
            "Value must be provided when Exists is {} for Attribute: {key}",
            if exists.is_some() { "true" } else { "null" }
        ))),
        (_, Some(value)) => Ok(Node::Compare(
            Comparator::Equal,
            Operand::Path(Path::attribute(key)),
            Operand::Value(value.clone()),
        )),
    }
}

fn legacy_comparison(
    key: &str,
    condition: &LegacyCondition,
    location: &str,
) -> Result<(Operator, Vec<AttributeValue>), ApiError> {
    let operator = Operator::parse(condition.comparison_operator.as_deref(), &format!("{location}.{key}"))?;
    let values = condition.attribute_value_list.clone().unwrap_or_default();
    validate(operator, &values)?;
    Ok((operator, values))
}

/// Translates `QueryFilter` or `ScanFilter` (with `ConditionalOperator`) into a condition.
pub fn filter_to_condition(
    filter: &HashMap<String, LegacyCondition>,
    conditional_operator: Option<&str>,
) -> Result<Condition, ApiError> {
    let nodes = sorted_keys(filter)
        .into_iter()
        .map(|(key, condition)| {
            let (operator, values) = legacy_comparison(key, condition, "filter")?;
            Ok(comparison_node(key, operator, &values))
        })
        .collect::<Result<Vec<Node>, ApiError>>()?;
    join(nodes, conditional_operator)
}

/// Translates `KeyConditions` into a key condition; more than `conditions_max` conditions (the
/// key's attribute count, at least 2) are refused.
pub fn key_conditions_to_key_condition(
    map: &HashMap<String, LegacyCondition>,
    conditions_max: usize,
) -> Result<KeyCondition, ApiError> {
    let max = conditions_max.max(2);
    if map.is_empty() || map.len() > max {
        return Err(ApiError::validation(if max == 2 {
            "Conditions can be of length 1 or 2 only".to_string()
        } else {
            format!("Conditions can be of length 1 to {max} only")
        }));
    }
    let conditions = sorted_keys(map)
        .into_iter()
        .map(|(key, condition)| {
            let (operator, values) = legacy_comparison(key, condition, "keyConditions")?;
            let mut values = values.into_iter();
            let mut next = || values.next().unwrap_or(AttributeValue::Null);
            let operator = match operator {
                Operator::Eq => KeyOperator::Eq(next()),
                Operator::Le => KeyOperator::Le(next()),
                Operator::Lt => KeyOperator::Lt(next()),
                Operator::Ge => KeyOperator::Ge(next()),
                Operator::Gt => KeyOperator::Gt(next()),
                Operator::BeginsWith => KeyOperator::BeginsWith(next()),
                Operator::Between => {
                    let low = next();
                    KeyOperator::Between(low, next())
                }
                _ => {
                    return Err(ApiError::validation(
                        "Attempted conditional constraint is not an indexable operation",
                    ));
                }
            };
            Ok((key.clone(), operator))
        })
        .collect::<Result<Vec<(String, KeyOperator)>, ApiError>>()?;
    Ok(KeyCondition { conditions })
}

/// Translates `AttributeUpdates` into an update.
pub fn attribute_updates_to_update(
    updates: &HashMap<String, AttributeValueUpdate>,
) -> Result<UpdateExpression, ApiError> {
    let actions = sorted_keys(updates)
        .into_iter()
        .map(|(key, update)| attribute_update(key, update))
        .collect::<Result<Vec<Action>, ApiError>>()?;
    Ok(UpdateExpression { actions })
}

fn attribute_update(key: &str, update: &AttributeValueUpdate) -> Result<Action, ApiError> {
    if let Some(problem) = crate::expr::attribute_name_problem(key) {
        return Err(invalid_parameter(format!("AttributeUpdates: {problem}")));
    }
    let path = Path::attribute(key);
    let action = update.action.as_deref().unwrap_or("PUT");
    if !matches!(action, "PUT" | "DELETE" | "ADD") {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{action}' at 'attributeUpdates.{key}.member.action' failed to satisfy constraint: Member must satisfy enum value set: [ADD, PUT, DELETE]"
        )));
    }
    let Some(value) = &update.value else {
        if action == "DELETE" {
            return Ok(Action::Remove(path));
        }
        return Err(invalid_parameter(
            "Only DELETE action is allowed when no attribute value is specified",
        ));
    };
    let value_type = value.value_type();
    match action {
        "DELETE" if matches!(value_type, ValueType::Ss | ValueType::Ns | ValueType::Bs) => {
            Ok(Action::LegacyDelete(path, value.clone()))
        }
        "DELETE" => Err(invalid_parameter(format!(
            "DELETE action with value is not supported for the type {}",
            value_type.descriptor()
        ))),
        "ADD"
            if matches!(
                value_type,
                ValueType::N | ValueType::Ss | ValueType::Ns | ValueType::Bs | ValueType::L
            ) =>
        {
            Ok(Action::LegacyAdd(path, value.clone()))
        }
        "ADD" => Err(invalid_parameter(format!(
            "ADD action is not supported for the type {}",
            value_type.descriptor()
        ))),
        _ => Ok(Action::Set(path, SetValue::Value(value.clone()))),
    }
}

/// Translates `AttributesToGet` into projection paths; names are taken literally.
pub fn attributes_to_get_to_projection(names: &[String]) -> Result<Vec<Path>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::validation(
            "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy constraint: Member must have length greater than or equal to 1",
        ));
    }
    if let Some(problem) = names.iter().find_map(|name| crate::expr::attribute_name_problem(name)) {
        return Err(invalid_parameter(format!("AttributesToGet: {problem}")));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(duplicate) = names.iter().find(|name| !seen.insert(name.as_str())) {
        return Err(invalid_parameter(format!(
            "Duplicate value in attribute name: {duplicate}"
        )));
    }
    Ok(names.iter().map(Path::attribute).collect())
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[derive(Deserialize)]
    struct Scan {
        #[serde(default, rename = "ScanFilter", deserialize_with = "scan_filter")]
        filter: Option<HashMap<String, LegacyCondition>>,
    }

    fn filter_of(entries: usize, value_bytes: usize) -> String {
        let value = "v".repeat(value_bytes);
        let entries: Vec<String> = (0..entries)
            .map(|i| format!(r#""a{i:06}":{{"ComparisonOperator":"EQ","AttributeValueList":[{{"S":"{value}"}}]}}"#))
            .collect();
        format!(r#"{{"ScanFilter":{{{}}}}}"#, entries.join(","))
    }

    #[test]
    fn a_legacy_map_is_read_up_to_its_bound_and_refused_past_it() {
        // Each entry: a 7-byte name, its value's bytes, and the overhead.
        let per_entry = 7 + 1000 + LEGACY_ENTRY_OVERHEAD_BYTES;
        let fits = LEGACY_MAP_BYTES_MAX / per_entry;
        let read: Scan = serde_json::from_str(&filter_of(fits, 1000)).expect("within the bound");
        assert_eq!(read.filter.map(|f| f.len()), Some(fits));
        let error = serde_json::from_str::<Scan>(&filter_of(fits + 1, 1000))
            .err()
            .expect("past the bound")
            .to_string();
        assert!(error.starts_with(dynamo_protocol::value::VALIDATION_MARKER), "{error}");
        assert!(error.contains("ScanFilter is too large: its entries count"), "{error}");
        // Absent and null are no map.
        assert!(serde_json::from_str::<Scan>("{}").expect("absent").filter.is_none());
        assert!(
            serde_json::from_str::<Scan>(r#"{"ScanFilter":null}"#)
                .expect("null")
                .filter
                .is_none()
        );
    }
}
