//! Key condition expressions: one condition per key attribute (one partition and optionally one
//! sort attribute; up to eight for a global index's multi-attribute key), joined by AND. Parsed
//! with the condition grammar, then narrowed to what a query can use.

use dynamo_protocol::{ApiError, AttributeValue};

use super::ast::{Comparator, Context, ExpressionKind, Node, Operand, Path, PathElement};
use super::{parser, resolve};

/// How a query constrains one key attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyOperator {
    Eq(AttributeValue),
    Lt(AttributeValue),
    Le(AttributeValue),
    Gt(AttributeValue),
    Ge(AttributeValue),
    Between(AttributeValue, AttributeValue),
    BeginsWith(AttributeValue),
}

/// Conditions, each on a distinct top-level attribute; the caller matches the attribute names
/// against the table's or index's key schema.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyCondition {
    pub conditions: Vec<(String, KeyOperator)>,
}

/// Parses a KeyConditionExpression against the request's names and values; more than
/// `conditions_max` conditions (the key's attribute count, at least 2) are refused.
pub fn parse_key_condition(text: &str, context: &Context, conditions_max: usize) -> Result<KeyCondition, ApiError> {
    parse_key_condition_checked(text, context, conditions_max, |_| Ok(()))
}

/// [`parse_key_condition`], with the expression's document paths given to `check_paths` before
/// it is narrowed to key conditions (a table known by then refuses a path into a key attribute
/// in its own words, before "nested attributes").
pub fn parse_key_condition_checked(
    text: &str,
    context: &Context,
    conditions_max: usize,
    check_paths: impl FnOnce(Vec<&Path>) -> Result<(), ApiError>,
) -> Result<KeyCondition, ApiError> {
    let raw = parser::parse_condition(text, ExpressionKind::KeyCondition)?;
    let root = resolve::condition(&raw, context, ExpressionKind::KeyCondition)?;
    let whole = super::ast::Condition { root };
    check_paths(whole.paths())?;
    let root = whole.root;
    let mut conditions = Vec::new();
    collect(&root, &mut conditions, conditions_max.max(2))?;
    Ok(KeyCondition { conditions })
}

fn unsupported(operator: &str) -> ApiError {
    ApiError::validation(format!("Invalid operator used in KeyConditionExpression: {operator}"))
}

/// Collects the conjuncts of `node`, refusing anything a query cannot evaluate on keys.
fn collect(node: &Node, conditions: &mut Vec<(String, KeyOperator)>, max: usize) -> Result<(), ApiError> {
    let (name, operator) = match node {
        Node::And(children) => {
            return children.iter().try_for_each(|child| collect(child, conditions, max));
        }
        Node::Or(_) => return Err(unsupported("OR")),
        Node::Not(_) => return Err(unsupported("NOT")),
        Node::In(..) => return Err(unsupported("IN")),
        Node::Exists(_) => return Err(unsupported("attribute_exists")),
        Node::NotExists(_) => return Err(unsupported("attribute_not_exists")),
        Node::Type(..) => return Err(unsupported("attribute_type")),
        Node::Contains(..) => return Err(unsupported("contains")),
        Node::Compare(Comparator::NotEqual, ..) => return Err(unsupported("<>")),
        Node::Compare(comparator, left, right) => comparison(*comparator, left, right)?,
        Node::Between(key, low, high) => {
            let name = key_name(key, "BETWEEN")?;
            match (low, high) {
                (Operand::Value(low), Operand::Value(high)) => (name, KeyOperator::Between(low.clone(), high.clone())),
                _ => return Err(operands_error(low, high)),
            }
        }
        Node::BeginsWith(key, prefix) => {
            let name = key_name(key, "begins_with")?;
            match prefix {
                Operand::Value(prefix) => (name, KeyOperator::BeginsWith(prefix.clone())),
                other => return Err(operands_error(other, other)),
            }
        }
    };
    if conditions.iter().any(|(existing, _)| *existing == name) {
        return Err(ApiError::validation(
            "KeyConditionExpressions must only contain one condition per key",
        ));
    }
    if conditions.len() >= max {
        return Err(ApiError::validation(
            "KeyConditionExpressions must only contain one condition per key",
        ));
    }
    conditions.push((name, operator));
    Ok(())
}

fn operands_error(first: &Operand, second: &Operand) -> ApiError {
    if matches!(first, Operand::Size(_)) || matches!(second, Operand::Size(_)) {
        ApiError::validation("KeyConditionExpressions cannot contain nested operations")
    } else {
        ApiError::validation(
            "Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition",
        )
    }
}

/// The key attribute an operator applies to, which must come first.
fn key_name(operand: &Operand, operator: &str) -> Result<String, ApiError> {
    match operand {
        Operand::Path(path) => top_level(path),
        Operand::Size(_) => Err(ApiError::validation(
            "KeyConditionExpressions cannot contain nested operations",
        )),
        Operand::Value(_) => Err(ApiError::validation(format!(
            "Invalid condition in KeyConditionExpression: {operator} operator must have the key attribute as its first operand"
        ))),
    }
}

fn top_level(path: &Path) -> Result<String, ApiError> {
    match path.0.as_slice() {
        [PathElement::Attribute(name)] => Ok(name.clone()),
        _ => Err(ApiError::validation(
            "KeyConditionExpressions cannot have conditions on nested attributes",
        )),
    }
}

/// `key <op> :value` or `:value <op> key` (the operator is mirrored).
fn comparison(comparator: Comparator, left: &Operand, right: &Operand) -> Result<(String, KeyOperator), ApiError> {
    let (path, value, mirrored) = match (left, right) {
        (Operand::Size(_), _) | (_, Operand::Size(_)) => {
            return Err(ApiError::validation(
                "KeyConditionExpressions cannot contain nested operations",
            ));
        }
        (Operand::Path(path), Operand::Value(value)) => (path, value, false),
        (Operand::Value(value), Operand::Path(path)) => (path, value, true),
        (Operand::Path(_), Operand::Path(_)) => {
            return Err(ApiError::validation(
                "Invalid condition in KeyConditionExpression: Multiple attribute names used in one condition",
            ));
        }
        (Operand::Value(_), Operand::Value(_)) => {
            return Err(ApiError::validation(
                "Invalid condition in KeyConditionExpression: No key attribute specified",
            ));
        }
    };
    let name = top_level(path)?;
    let value = value.clone();
    let operator = match (comparator, mirrored) {
        (Comparator::Equal, _) => KeyOperator::Eq(value),
        (Comparator::Less, false) | (Comparator::Greater, true) => KeyOperator::Lt(value),
        (Comparator::LessOrEqual, false) | (Comparator::GreaterOrEqual, true) => KeyOperator::Le(value),
        (Comparator::Greater, false) | (Comparator::Less, true) => KeyOperator::Gt(value),
        (Comparator::GreaterOrEqual, false) | (Comparator::LessOrEqual, true) => KeyOperator::Ge(value),
        (Comparator::NotEqual, _) => return Err(unsupported("<>")),
    };
    Ok((name, operator))
}
