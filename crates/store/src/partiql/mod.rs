//! PartiQL for DynamoDB: the statements `ExecuteStatement`, `BatchExecuteStatement` and
//! `ExecuteTransaction` take (SELECT, INSERT, UPDATE, DELETE and, in transactions,
//! `EXISTS(SELECT ...)`), parsed and translated into the store's own forms: conditions become
//! [`crate::expr`] condition trees, updates become update actions, key equalities become the
//! item key. Execution lives in `ops::partiql`; this module is pure (no storage, no I/O) and
//! never panics on input: statements are at most [`STATEMENT_BYTES_MAX`] bytes and nesting is
//! bounded by [`parser::NESTING_MAX`].

pub(crate) mod lexer;
pub(crate) mod parser;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use dynamo_protocol::value::{ValueType, number_set, string_set};
use dynamo_protocol::{ApiError, AttributeValue, Item, Number, NumberError};

use crate::catalog::KeySchema;
use crate::expr::{
    Action, Comparator, Condition, KeyOperator, Node, Operand, Path, PathElement, SetValue, UpdateExpression,
};
pub(crate) use parser::{Assignment, CompareOp, Expr, Literal, Parsed, Returning, Select, Statement, parse};

/// Longest statement DynamoDB accepts, in characters (the API's `Statement` constraint).
pub const STATEMENT_BYTES_MAX: usize = 8192;
/// Most values in an `IN` list on the partition key (DynamoDB: 50 hash-key values).
pub const IN_PARTITION_VALUES_MAX: usize = 50;

/// DynamoDB's refusal of an `IN` without a list of values (`IN []`, `IN ?`).
pub(crate) const IN_SEQUENCE: &str = "IN operator must have a left hand argument of type Variable Reference and right hand argument of type Seq with at least one member";
/// DynamoDB's refusal of `MISSING` where a value stands.
const MISSING_COMPARED: &str = "MISSING must be compared using IS operator";

/// A syntax error, in DynamoDB's words.
pub(crate) fn malformed(detail: &str) -> ApiError {
    ApiError::validation(format!("Statement wasn't well formed, can't be processed: {detail}"))
}

/// Checks the statement's length and parses it.
pub(crate) fn parse_statement(text: &str) -> Result<Parsed, ApiError> {
    if text.is_empty() || text.chars().count() > STATEMENT_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'statement' failed to satisfy constraint: Member must have length less than or equal to {STATEMENT_BYTES_MAX} and greater than or equal to 1"
        )));
    }
    parse(text)
}

/// Whether a PartiQL request (`ExecuteStatement`, `BatchExecuteStatement`,
/// `ExecuteTransaction`) only reads: every statement in it parses as a SELECT (or an `EXISTS`
/// check). The replay guard lets such requests repeat, as it does GetItem and Query (a client
/// polling with one SELECT sends the same signed body again). Anything unreadable counts as
/// a write.
///
/// Only the statements are read (every other member, the parameters included, is skipped, not
/// built), and only for those three operations: every other signed write passes through here.
pub(crate) fn reads_only(operation: &str, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct One {
        #[serde(rename = "Statement")]
        statement: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Statements {
        statement: Option<String>,
        statements: Option<Vec<One>>,
        transact_statements: Option<Vec<One>>,
    }
    if !matches!(
        operation,
        "ExecuteStatement" | "BatchExecuteStatement" | "ExecuteTransaction"
    ) {
        return false;
    }
    let Ok(request) = serde_json::from_slice::<Statements>(body) else {
        return false;
    };
    let reads = |statement: Option<&String>| {
        statement
            .and_then(|text| parse_statement(text).ok())
            .is_some_and(|parsed| matches!(parsed.statement, Statement::Select(_) | Statement::Exists(_)))
    };
    let all = |list: Option<&Vec<One>>| {
        list.is_some_and(|items| !items.is_empty() && items.iter().all(|item| reads(item.statement.as_ref())))
    };
    match operation {
        "ExecuteStatement" => reads(request.statement.as_ref()),
        "BatchExecuteStatement" => all(request.statements.as_ref()),
        _ => all(request.transact_statements.as_ref()),
    }
}

/// The values bound to a statement's `?` placeholders, in order.
pub(crate) struct Parameters<'a>(pub &'a [AttributeValue]);

impl Parameters<'_> {
    /// DynamoDB refuses fewer values than placeholders (and ignores extra ones).
    pub(crate) fn check(&self, parsed: &Parsed) -> Result<(), ApiError> {
        if self.0.len() < parsed.parameters {
            return Err(ApiError::validation(
                "Number of parameters in request and statement don't match.",
            ));
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<&AttributeValue, ApiError> {
        self.0
            .get(index)
            .ok_or_else(|| ApiError::validation("Number of parameters in request and statement don't match."))
    }
}

/// The constant value of `expr` (a literal, a parameter, a constructed list, map or bag, or an
/// INSERT's item); `at` names the place inside the value for DynamoDB's messages (`root`,
/// `root.a`, `root.1`: each attribute of an INSERT's item is a root of its own).
pub(crate) fn value(expr: &Expr, parameters: &Parameters<'_>, at: &str) -> Result<AttributeValue, ApiError> {
    match expr {
        Expr::Item(entries) => map(entries, parameters, at, true),
        _ => value_in(expr, parameters, at, false),
    }
}

/// DynamoDB's words for a number it cannot store.
fn number(text: &str) -> Result<Number, ApiError> {
    Number::parse(text).map_err(|error| match error {
        NumberError::TooManyDigits => ApiError::validation("DynamoDB only supports precision up to 38 digits"),
        other => ApiError::validation(other.to_string()),
    })
}

/// `value` of one member; `attribute` when it is an attribute of an INSERT's item (DynamoDB
/// names what it refuses there as written, and by its kind deeper down).
fn value_in(expr: &Expr, parameters: &Parameters<'_>, at: &str, attribute: bool) -> Result<AttributeValue, ApiError> {
    match expr {
        Expr::Literal(Literal::Text(text)) => Ok(AttributeValue::S(text.clone())),
        Expr::Literal(Literal::Number(text)) => number(text).map(AttributeValue::N),
        Expr::Literal(Literal::Bool(b)) => Ok(AttributeValue::Bool(*b)),
        Expr::Literal(Literal::Null) => Ok(AttributeValue::Null),
        Expr::Parameter(index) => parameters.get(*index).cloned(),
        Expr::List(members) => members
            .iter()
            .enumerate()
            .map(|(i, member)| value_in(member, parameters, &format!("{at}.{i}"), false))
            .collect::<Result<Vec<_>, _>>()
            .map(AttributeValue::L),
        Expr::Map(entries) | Expr::Item(entries) => map(entries, parameters, at, false),
        Expr::Bag(members) => bag(members),
        other => {
            let kind = match other {
                Expr::Path(path) if attribute && path.0.len() == 1 => path.to_string(),
                Expr::Path(path) if path.0.len() > 1 => "PATH".to_string(),
                Expr::Path(_) => "VariableReference".to_string(),
                Expr::Literal(Literal::Missing) if attribute => "MISSING".to_string(),
                Expr::Literal(Literal::Missing) => "LiteralMissing".to_string(),
                Expr::Call(name, _) => name.clone(),
                Expr::Plus(..) => "+".to_string(),
                Expr::Minus(..) => "-".to_string(),
                _ => "expression".to_string(),
            };
            Err(ApiError::validation(format!(
                "Unsupported data type: {kind} under key {at}"
            )))
        }
    }
}

/// A `{...}` map; `item` when it is an INSERT's item, whose attributes are each at `at`.
fn map(
    entries: &[(String, Expr)],
    parameters: &Parameters<'_>,
    at: &str,
    item: bool,
) -> Result<AttributeValue, ApiError> {
    let mut map = BTreeMap::new();
    for (key, member) in entries {
        let member = if item {
            value_in(member, parameters, at, true)?
        } else {
            value_in(member, parameters, &format!("{at}.{key}"), false)?
        };
        if map.insert(key.clone(), member).is_some() {
            return Err(ApiError::validation(format!(
                "Duplicate keys in tuple. Key: {key} under {at}"
            )));
        }
    }
    Ok(AttributeValue::M(map.into_iter().collect()))
}

/// `<<...>>`: a string or number set of literals.
fn bag(members: &[Expr]) -> Result<AttributeValue, ApiError> {
    const BAG_TYPES: &str = "Unsupported data type in Bag. DynamoDB only supports either numbers or strings in bags";
    if members.is_empty() {
        return Err(ApiError::validation("Empty bags are not supported"));
    }
    let mut strings = Vec::new();
    let mut numbers = Vec::new();
    for member in members {
        match member {
            Expr::Literal(Literal::Text(text)) => strings.push(text.clone()),
            Expr::Literal(Literal::Number(text)) => numbers.push(number(text)?),
            _ => return Err(ApiError::validation(BAG_TYPES)),
        }
    }
    let duplicates = {
        let distinct_strings: std::collections::BTreeSet<&String> = strings.iter().collect();
        let distinct_numbers: std::collections::BTreeSet<&Number> = numbers.iter().collect();
        distinct_strings.len() != strings.len() || distinct_numbers.len() != numbers.len()
    };
    if !strings.is_empty() && !numbers.is_empty() {
        return Err(ApiError::validation(BAG_TYPES));
    }
    if duplicates {
        return Err(ApiError::validation("Input collection contains duplicates"));
    }
    let set = if strings.is_empty() {
        number_set(numbers)
    } else {
        string_set(strings)
    };
    let set = set.map_err(ApiError::validation)?;
    Ok(set)
}

fn is_constant(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Literal(Literal::Text(_) | Literal::Number(_) | Literal::Bool(_) | Literal::Null)
            | Expr::Parameter(_)
            | Expr::List(_)
            | Expr::Map(_)
            | Expr::Item(_)
            | Expr::Bag(_)
    )
}

/// DynamoDB's refusal of a function called with `count` operands.
fn operand_count(name: &str, count: usize) -> ApiError {
    ApiError::validation(format!(
        "Incorrect number of operands for operator or function; operator or function: {name}, number of operands: {count}"
    ))
}

/// DynamoDB's refusal of a constant of the wrong type given to an operator or function.
fn operand_type(function: &str, value: &AttributeValue) -> ApiError {
    ApiError::validation(format!(
        "Incorrect operand type for operator or function; operator or function: {function}, operand type: {}",
        value.value_type().descriptor()
    ))
}

fn operand(expr: &Expr, parameters: &Parameters<'_>) -> Result<Operand, ApiError> {
    match expr {
        Expr::Path(path) => Ok(Operand::Path(path.clone())),
        Expr::Call(name, arguments) if name == "size" => match arguments.as_slice() {
            [Expr::Path(path)] => Ok(Operand::Size(path.clone())),
            [constant] if is_constant(constant) => Err(operand_type("size", &value(constant, parameters, "root")?)),
            [_] => Err(ApiError::validation(
                "Incorrect operand for function size: it takes one attribute name or document path",
            )),
            _ => Err(operand_count("size", arguments.len())),
        },
        Expr::Literal(Literal::Missing) => Err(ApiError::validation(MISSING_COMPARED)),
        constant if is_constant(constant) => value(constant, parameters, "root").map(Operand::Value),
        Expr::Plus(..) | Expr::Minus(..) => Err(ApiError::validation(
            "Unsupported operation: arithmetic (+, -) is allowed only on the right of SET in UPDATE",
        )),
        _ => Err(ApiError::validation(
            "Unsupported operand: compare attribute paths, size(path), literals or parameters",
        )),
    }
}

fn path_argument(name: &str, expr: &Expr) -> Result<Path, ApiError> {
    match expr {
        Expr::Path(path) => Ok(path.clone()),
        _ => Err(ApiError::validation(format!(
            "Incorrect operand for function {name}: the first argument must be an attribute name or document path"
        ))),
    }
}

/// Translates a WHERE clause (or a part of one) into a condition tree.
pub(crate) fn condition(expr: &Expr, parameters: &Parameters<'_>) -> Result<Node, ApiError> {
    Ok(match expr {
        Expr::Compare(op, left, right) => {
            let comparator = match op {
                CompareOp::Eq => Comparator::Equal,
                CompareOp::Ne => Comparator::NotEqual,
                CompareOp::Lt => Comparator::Less,
                CompareOp::Le => Comparator::LessOrEqual,
                CompareOp::Gt => Comparator::Greater,
                CompareOp::Ge => Comparator::GreaterOrEqual,
            };
            Node::Compare(comparator, operand(left, parameters)?, operand(right, parameters)?)
        }
        Expr::Between(subject, low, high) => Node::Between(
            operand(subject, parameters)?,
            operand(low, parameters)?,
            operand(high, parameters)?,
        ),
        Expr::In(subject, members) => {
            if members.is_empty() {
                return Err(ApiError::validation(IN_SEQUENCE));
            }
            if members.len() > crate::expr::IN_OPERANDS_MAX {
                return Err(ApiError::validation(format!(
                    "The IN operator is provided with too many operands; number of operands: {}",
                    members.len()
                )));
            }
            Node::In(
                operand(subject, parameters)?,
                members
                    .iter()
                    .map(|member| operand(member, parameters))
                    .collect::<Result<_, _>>()?,
            )
        }
        Expr::IsMissing(subject) => match &**subject {
            Expr::Path(path) => Node::NotExists(path.clone()),
            _ => {
                return Err(ApiError::validation(
                    "Operator or function requires a document path; operator or function: attribute_not_exists",
                ));
            }
        },
        Expr::IsNull(subject) => Node::Type(Operand::Path(path_argument("IS NULL", subject)?), ValueType::Null),
        Expr::IsType(subject, value_type) => Node::Type(Operand::Path(path_argument("IS", subject)?), *value_type),
        // Chains of AND and OR are flattened without recursion: a long chain is deep as a tree.
        Expr::And(..) => Node::And(
            conjuncts(expr)
                .into_iter()
                .map(|part| condition(part, parameters))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Or(..) => Node::Or(
            disjuncts(expr)
                .into_iter()
                .map(|part| condition(part, parameters))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(inner) => Node::Not(Box::new(condition(inner, parameters)?)),
        Expr::Call(name, arguments) => function(name, arguments, parameters)?,
        Expr::Literal(Literal::Missing) => return Err(ApiError::validation(MISSING_COMPARED)),
        _ => {
            return Err(ApiError::validation(
                "Unsupported condition: a WHERE clause is made of comparisons, BETWEEN, IN, IS [NOT] MISSING, IS [NOT] NULL and the functions begins_with, contains, attribute_type, attribute_exists and attribute_not_exists",
            ));
        }
    })
}

fn function(name: &str, arguments: &[Expr], parameters: &Parameters<'_>) -> Result<Node, ApiError> {
    let count = |expected: usize| {
        if arguments.len() == expected {
            Ok(())
        } else {
            Err(operand_count(name, arguments.len()))
        }
    };
    match name {
        "attribute_exists" => {
            count(1)?;
            Ok(Node::Exists(path_argument(name, &arguments[0])?))
        }
        "attribute_not_exists" => {
            count(1)?;
            Ok(Node::NotExists(path_argument(name, &arguments[0])?))
        }
        "begins_with" => {
            count(2)?;
            Ok(Node::BeginsWith(
                operand(&arguments[0], parameters)?,
                operand(&arguments[1], parameters)?,
            ))
        }
        "contains" => {
            count(2)?;
            Ok(Node::Contains(
                operand(&arguments[0], parameters)?,
                operand(&arguments[1], parameters)?,
            ))
        }
        "attribute_type" => {
            count(2)?;
            let subject = operand(&arguments[0], parameters)?;
            let type_name = match value(&arguments[1], parameters, "root") {
                Ok(AttributeValue::S(text)) => text,
                _ => {
                    return Err(ApiError::validation(
                        "The second argument of attribute_type is a type name: one of S, SS, N, NS, B, BS, BOOL, NULL, L, M",
                    ));
                }
            };
            let value_type = ValueType::from_descriptor(&type_name).ok_or_else(|| {
                ApiError::validation(format!(
                    "Invalid attribute type name found; type: {type_name}, valid types: {{B,NULL,SS,BOOL,L,BS,N,NS,S,M}}"
                ))
            })?;
            Ok(Node::Type(subject, value_type))
        }
        // `size` compares (`size(a) > 1`); it is no condition by itself.
        "size" => Err(ApiError::validation(
            "Unsupported condition: size(path) is compared with a value, as in size(path) > 1",
        )),
        other => Err(ApiError::validation(format!("Unrecognized function: {other}"))),
    }
}

/// The top-level AND-ed parts of a WHERE clause.
pub(crate) fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(expr) = stack.pop() {
        match expr {
            Expr::And(left, right) => {
                stack.push(right);
                stack.push(left);
            }
            other => out.push(other),
        }
    }
    out
}

/// The top-level OR-ed parts of a condition.
fn disjuncts(expr: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(expr) = stack.pop() {
        match expr {
            Expr::Or(left, right) => {
                stack.push(right);
                stack.push(left);
            }
            other => out.push(other),
        }
    }
    out
}

/// `name = constant` (either way round) on a top-level attribute: the name and the constant.
fn key_equality(expr: &Expr) -> Option<(&str, &Expr)> {
    let Expr::Compare(CompareOp::Eq, left, right) = expr else {
        return None;
    };
    let (path, constant) = match (&**left, &**right) {
        (Expr::Path(path), constant) if is_constant(constant) => (path, constant),
        (constant, Expr::Path(path)) if is_constant(constant) => (path, constant),
        _ => return None,
    };
    match path.0.as_slice() {
        [PathElement::Attribute(name)] => Some((name.as_str(), constant)),
        _ => None,
    }
}

/// DynamoDB's words for a key value of the wrong type (inside ExecuteTransaction, a
/// ValidationError cancellation reason rather than a refusal of the request).
pub(crate) const KEY_TYPE_MISMATCH: &str =
    "Key attribute's data type should match its data type in table's schema: Key ";
/// DynamoDB's words for an INSERT whose item lacks a key attribute (inside ExecuteTransaction,
/// a cancellation reason too).
pub(crate) const KEY_NOT_IN_ITEM: &str = "Key attribute should be present in the item: Key ";

/// Whether `error` is one DynamoDB reports inside ExecuteTransaction as the statement's
/// ValidationError cancellation reason (a key of the wrong type, an INSERT without its key).
pub(crate) fn cancels_transaction(error: &ApiError) -> bool {
    error.kind == dynamo_protocol::ErrorKind::Validation
        && (error.message.starts_with(KEY_TYPE_MISMATCH) || error.message.starts_with(KEY_NOT_IN_ITEM))
}

/// An INSERT's item has every key attribute, each of its type, in the key's order (as
/// DynamoDB checks it before the values themselves: empty strings, index keys).
pub(crate) fn check_item_key(item: &Item, schema: &KeySchema) -> Result<(), ApiError> {
    for attribute in schema.attributes() {
        match item.get(&attribute.name) {
            None => return Err(ApiError::validation(format!("{KEY_NOT_IN_ITEM}{}", attribute.name))),
            Some(value) if !attribute.value_type.matches(value) => {
                return Err(ApiError::validation(format!("{KEY_TYPE_MISMATCH}{}", attribute.name)));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether a SELECT's WHERE names exactly one item, as a read in BatchExecuteStatement or
/// ExecuteTransaction must: nothing but equalities of key attributes to S, N or B values, every
/// key attribute among them (one attribute named twice with the same value still names one
/// item). Value errors are the values' own.
pub(crate) fn names_one_item(
    expr: Option<&Expr>,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<bool, ApiError> {
    let Some(expr) = expr else { return Ok(false) };
    let mut key = Item::new();
    for part in conjuncts(expr) {
        let Some((name, constant)) = key_equality(part) else {
            return Ok(false);
        };
        if !schema.is_key_attribute(name) {
            return Ok(false);
        }
        let value = value(constant, parameters, "root")?;
        if !matches!(
            value,
            AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
        ) || key.get(name).is_some_and(|known| *known != value)
        {
            return Ok(false);
        }
        key.insert(name.to_string(), value);
    }
    Ok(schema.attributes().all(|a| key.contains_key(&a.name)))
}

/// Whether an EXISTS's WHERE is what DynamoDB requires of it: a single item read (an equality
/// on every key attribute) with an additional condition (anything more than one equality per
/// key attribute).
pub(crate) fn is_checked_item_read(expr: Option<&Expr>, schema: &KeySchema) -> bool {
    let Some(expr) = expr else { return false };
    let parts = conjuncts(expr);
    let named: std::collections::BTreeSet<&str> = parts
        .iter()
        .filter_map(|part| key_equality(part))
        .map(|(name, _)| name)
        .filter(|name| schema.is_key_attribute(name))
        .collect();
    schema.attributes().all(|a| named.contains(a.name.as_str())) && parts.len() > named.len()
}

fn check_key_value(schema: &KeySchema, name: &str, value: &AttributeValue) -> Result<(), ApiError> {
    if !matches!(
        value,
        AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
    ) {
        return Err(ApiError::validation(format!(
            "Key value must be of type S, N, or B. Key name: {name}, Key type: {}",
            value.value_type().descriptor()
        )));
    }
    let attribute = schema.attributes().find(|a| a.name == name);
    if attribute.is_some_and(|a| !a.value_type.matches(value)) {
        return Err(ApiError::validation(format!("{KEY_TYPE_MISMATCH}{name}")));
    }
    let empty = match value {
        AttributeValue::S(text) if text.is_empty() => "string",
        AttributeValue::B(bytes) if bytes.is_empty() => "binary",
        _ => return Ok(()),
    };
    Err(ApiError::validation(format!(
        "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {empty} value. Key: {name}"
    )))
}

/// DynamoDB's refusal of an operand of a type `operator` does not take.
fn incorrect_operand(operator: &str, value: &AttributeValue) -> ApiError {
    ApiError::validation(format!(
        "Incorrect operand type for operator or function; operator or function: {operator}, operand type: {}",
        value.value_type().descriptor()
    ))
}

/// Checks the values a SELECT's top-level conditions on the sort key give it (`sk = v`,
/// `sk < v`, `sk BETWEEN a AND b`, `begins_with(sk, v)` beside the partition's): of the key's
/// type and not empty, as for a Query's key condition.
pub(crate) fn check_sort_equalities(
    expr: Option<&Expr>,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<(), ApiError> {
    let (Some(expr), Some(sort)) = (expr, schema.sort.as_ref()) else {
        return Ok(());
    };
    let on_sort = |expr: &Expr| matches!(expr, Expr::Path(Path(p)) if p.as_slice() == [PathElement::Attribute(sort.name.clone())]);
    // A bound of a key condition: a string, number or binary of the key's type, not empty.
    let check_bound = |operator: &str, value: &AttributeValue| -> Result<(), ApiError> {
        if !matches!(
            value,
            AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
        ) {
            return Err(incorrect_operand(operator, value));
        }
        check_key_value(schema, &sort.name, value)
    };
    for part in conjuncts(expr) {
        if let Some((found, constant)) = key_equality(part)
            && found == sort.name
        {
            check_key_value(schema, found, &value(constant, parameters, "root")?)?;
        }
        // `sk < v` (either way round) and the like: a Query's key condition.
        if let Expr::Compare(op, left, right) = part {
            let symbol = match op {
                CompareOp::Lt => "<",
                CompareOp::Le => "<=",
                CompareOp::Gt => ">",
                CompareOp::Ge => ">=",
                CompareOp::Eq | CompareOp::Ne => "",
            };
            let constant = match (&**left, &**right) {
                (subject, constant) if on_sort(subject) && is_constant(constant) => Some(constant),
                (constant, subject) if on_sort(subject) && is_constant(constant) => Some(constant),
                _ => None,
            };
            if let Some(constant) = constant
                && !symbol.is_empty()
            {
                check_bound(symbol, &value(constant, parameters, "root")?)?;
            }
        }
        // `begins_with(sk, v)`: a string or binary prefix, not empty.
        if let Expr::Call(name, arguments) = part
            && name == "begins_with"
            && let [subject, prefix] = arguments.as_slice()
            && on_sort(subject)
            && is_constant(prefix)
            && sort.value_type != crate::catalog::KeyType::N
        {
            let prefix = value(prefix, parameters, "root")?;
            if !matches!(prefix, AttributeValue::S(_) | AttributeValue::B(_)) {
                return Err(incorrect_operand("begins_with", &prefix));
            }
            check_key_value(schema, &sort.name, &prefix)?;
        }
        // `sk BETWEEN a AND b` with both bounds given: of one type, the key's, and in order, as
        // a Query's key condition.
        if let Expr::Between(subject, low, high) = part
            && on_sort(subject)
            && is_constant(low)
            && is_constant(high)
        {
            let (low, high) = (value(low, parameters, "root")?, value(high, parameters, "root")?);
            if low.value_type() != high.value_type() {
                return Err(ApiError::validation(format!(
                    "The BETWEEN operator requires same data type for lower and upper bounds; lower bound operand: AttributeValue: {}, upper bound operand: AttributeValue: {}",
                    crate::expr::render(&low),
                    crate::expr::render(&high)
                )));
            }
            check_bound("BETWEEN", &low)?;
            check_bound("BETWEEN", &high)?;
            if low.value_type() == high.value_type() && sort.value_type.matches(&low) {
                let encode = |v: &AttributeValue| {
                    let mut out = Vec::new();
                    crate::keys::encode_key_value(v, &mut out);
                    out
                };
                if encode(&low) > encode(&high) {
                    return Err(ApiError::validation(format!(
                        "The BETWEEN operator requires upper bound to be greater than or equal to lower bound; lower bound operand: AttributeValue: {}, upper bound operand: AttributeValue: {}",
                        crate::expr::render(&low),
                        crate::expr::render(&high)
                    )));
                }
            }
        }
        // `begins_with(sk, v)` on a number sort key.
        if let Expr::Call(name, arguments) = part
            && name == "begins_with"
            && arguments.first().is_some_and(on_sort)
            && sort.value_type == crate::catalog::KeyType::N
        {
            return Err(ApiError::validation(
                "Incorrect operand type for operator or function; operator or function: begins_with, operand type: N",
            ));
        }
    }
    Ok(())
}

/// A WHERE clause that names one item: the key from its equalities on every key attribute,
/// and the rest of it as a condition (one that holds when the item is absent). UPDATE,
/// DELETE, transactions and batches need one.
pub(crate) struct KeyedWhere {
    pub key: Item,
    pub rest: Option<Node>,
}

pub(crate) fn keyed_where(
    expr: &Expr,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<KeyedWhere, ApiError> {
    let mut key = Item::new();
    let mut rest = Vec::new();
    for part in conjuncts(expr) {
        match key_equality(part) {
            Some((name, constant)) if schema.is_key_attribute(name) => {
                let value = value(constant, parameters, "root")?;
                check_key_value(schema, name, &value)?;
                // The same equality twice still names one item; two values name none.
                if key.get(name).is_some_and(|known| *known != value) {
                    return Err(ApiError::validation(format!(
                        "Multiple conditions on same key {name}. Only single item Update/Insert/Delete are supported"
                    )));
                }
                key.insert(name.to_string(), value);
            }
            _ => rest.push(condition(part, parameters)?),
        }
    }
    if schema.attributes().any(|a| !key.contains_key(&a.name)) {
        return Err(ApiError::validation(
            "Where clause does not contain a mandatory equality on all key attributes",
        ));
    }
    let rest = match rest.len() {
        0 => None,
        1 => rest.pop(),
        _ => Some(Node::And(rest)),
    };
    // The rest is a condition on the item when it is there: DynamoDB's DELETE of an absent
    // item is a no-op whatever the rest says (UPDATE and EXISTS fail on the absence by
    // themselves; a read filters only what it found).
    let rest = rest.map(|rest| {
        let absent = Node::NotExists(Path(vec![PathElement::Attribute(schema.partition.name.clone())]));
        Node::Or(vec![absent, rest])
    });
    Ok(KeyedWhere { key, rest })
}

/// The partition-key values a SELECT's WHERE pins (`pk = v`, `pk IN [...]`, or an OR of those,
/// such as `pk = 1 OR pk = 2`, at the top level), so it reads those partitions only; `None`
/// means a scan. The whole WHERE clause still filters what is read.
pub(crate) fn partitions(
    expr: Option<&Expr>,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<Option<Vec<AttributeValue>>, ApiError> {
    let Some(expr) = expr else { return Ok(None) };
    for part in conjuncts(expr) {
        let mut values: Vec<AttributeValue> = Vec::new();
        let mut pinned = true;
        for alternative in disjuncts(part) {
            match pinned_values(alternative, schema, parameters)? {
                Some(found) => {
                    for value in found {
                        if !values.contains(&value) {
                            values.push(value);
                        }
                    }
                }
                None => {
                    pinned = false;
                    break;
                }
            }
        }
        if !pinned {
            continue;
        }
        if values.len() > IN_PARTITION_VALUES_MAX {
            return Err(ApiError::validation(format!(
                "IN or OR on the partition key takes at most {IN_PARTITION_VALUES_MAX} values; this one has {}",
                values.len()
            )));
        }
        return Ok(Some(values));
    }
    Ok(None)
}

/// The conditions on the sort key among a SELECT's top-level conjuncts (`sk = v`, `sk < v` and
/// the like either way round, `sk BETWEEN a AND b`, `begins_with(sk, v)`), each with constant
/// operands of the key's type, as a Query's key condition operators: they narrow the range of
/// each partition a SELECT reads, as DynamoDB runs such a SELECT as a Query (its Limit counts,
/// its 1 MB page holds and its capacity is charged for, only the items in that range). The
/// whole WHERE clause still filters what is read; anything else is left to that filter.
pub(crate) fn sort_key_operators(
    expr: Option<&Expr>,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Vec<KeyOperator> {
    let (Some(expr), Some(sort)) = (expr, schema.sort.as_ref()) else {
        return Vec::new();
    };
    let on_sort = |expr: &Expr| matches!(expr, Expr::Path(Path(p)) if p.as_slice() == [PathElement::Attribute(sort.name.clone())]);
    let usable = |constant: &Expr| -> Option<AttributeValue> {
        if !is_constant(constant) {
            return None;
        }
        let value = value(constant, parameters, "root").ok()?;
        let empty = matches!(&value, AttributeValue::S(s) if s.is_empty())
            || matches!(&value, AttributeValue::B(b) if b.is_empty());
        (sort.value_type.matches(&value) && !empty).then_some(value)
    };
    let mut operators = Vec::new();
    for part in conjuncts(expr) {
        let operator = match part {
            Expr::Compare(op, left, right) => {
                let (op, constant) = if on_sort(left) {
                    (*op, &**right)
                } else if on_sort(right) {
                    // `v < sk` is `sk > v`.
                    let flipped = match op {
                        CompareOp::Lt => CompareOp::Gt,
                        CompareOp::Le => CompareOp::Ge,
                        CompareOp::Gt => CompareOp::Lt,
                        CompareOp::Ge => CompareOp::Le,
                        other => *other,
                    };
                    (flipped, &**left)
                } else {
                    continue;
                };
                let Some(value) = usable(constant) else { continue };
                match op {
                    CompareOp::Eq => KeyOperator::Eq(value),
                    CompareOp::Lt => KeyOperator::Lt(value),
                    CompareOp::Le => KeyOperator::Le(value),
                    CompareOp::Gt => KeyOperator::Gt(value),
                    CompareOp::Ge => KeyOperator::Ge(value),
                    CompareOp::Ne => continue,
                }
            }
            Expr::Between(subject, low, high) if on_sort(subject) => {
                let (Some(low), Some(high)) = (usable(low), usable(high)) else {
                    continue;
                };
                KeyOperator::Between(low, high)
            }
            Expr::Call(name, arguments) if name == "begins_with" && arguments.len() == 2 && on_sort(&arguments[0]) => {
                let Some(prefix) = usable(&arguments[1]) else { continue };
                if !matches!(prefix, AttributeValue::S(_) | AttributeValue::B(_)) {
                    continue;
                }
                KeyOperator::BeginsWith(prefix)
            }
            _ => continue,
        };
        operators.push(operator);
    }
    operators
}

/// The partition-key values one condition (`pk = v` or `pk IN [...]`) pins, if it is one.
fn pinned_values(
    part: &Expr,
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<Option<Vec<AttributeValue>>, ApiError> {
    let name = &schema.partition.name;
    if let Some((found, constant)) = key_equality(part)
        && found == name
    {
        let value = value(constant, parameters, "root")?;
        check_key_value(schema, name, &value)?;
        return Ok(Some(vec![value]));
    }
    if let Expr::In(subject, members) = part
        && matches!(&**subject, Expr::Path(Path(p)) if p.as_slice() == [PathElement::Attribute(name.clone())])
        && members.iter().all(is_constant)
    {
        if members.len() > IN_PARTITION_VALUES_MAX {
            return Err(ApiError::validation(format!(
                "IN on the partition key takes at most {IN_PARTITION_VALUES_MAX} values; this one has {}",
                members.len()
            )));
        }
        let mut values: Vec<AttributeValue> = Vec::with_capacity(members.len());
        for member in members {
            let value = value(member, parameters, "root")?;
            check_key_value(schema, name, &value)?;
            values.push(value);
        }
        return Ok(Some(values));
    }
    Ok(None)
}

/// A whole WHERE clause as a condition.
pub(crate) fn where_condition(expr: Option<&Expr>, parameters: &Parameters<'_>) -> Result<Option<Condition>, ApiError> {
    expr.map(|expr| condition(expr, parameters).map(|root| Condition { root }))
        .transpose()
}

fn set_value(expr: &Expr, parameters: &Parameters<'_>) -> Result<SetValue, ApiError> {
    Ok(match expr {
        Expr::Path(path) => SetValue::Path(path.clone()),
        Expr::Plus(left, right) => SetValue::Plus(
            Box::new(typed_set_value("+", left, parameters)?),
            Box::new(typed_set_value("+", right, parameters)?),
        ),
        Expr::Minus(left, right) => SetValue::Minus(
            Box::new(typed_set_value("-", left, parameters)?),
            Box::new(typed_set_value("-", right, parameters)?),
        ),
        Expr::Call(name, arguments) if name == "list_append" => match arguments.as_slice() {
            [first, second] => SetValue::ListAppend(
                Box::new(typed_set_value(name, first, parameters)?),
                Box::new(typed_set_value(name, second, parameters)?),
            ),
            _ => return Err(operand_count(name, arguments.len())),
        },
        Expr::Call(name, arguments) if name == "if_not_exists" => match arguments.as_slice() {
            [path, fallback] => {
                SetValue::IfNotExists(path_argument(name, path)?, Box::new(set_value(fallback, parameters)?))
            }
            _ => return Err(operand_count(name, arguments.len())),
        },
        Expr::Literal(Literal::Missing) => return Err(ApiError::validation(MISSING_COMPARED)),
        constant if is_constant(constant) => SetValue::Value(value(constant, parameters, "root")?),
        Expr::Call(name, _) if name == "set_add" || name == "set_delete" => {
            return Err(ApiError::validation(format!(
                "Unsupported use of {name}: it is the whole value of a SET, as in SET s = {name}(s, <<...>>)"
            )));
        }
        Expr::Call(name, _) => return Err(ApiError::validation(format!("Unrecognized function: {name}"))),
        _ => return Err(ApiError::validation("Unsupported value in SET")),
    })
}

/// An operand of `+`, `-` (numbers) or `list_append` (lists): a constant of another type is
/// refused before anything is read, in DynamoDB's words.
fn typed_set_value(function: &str, expr: &Expr, parameters: &Parameters<'_>) -> Result<SetValue, ApiError> {
    let operand = set_value(expr, parameters)?;
    if let SetValue::Value(constant) = &operand {
        let fits = match function {
            "list_append" => matches!(constant, AttributeValue::L(_)),
            _ => matches!(constant, AttributeValue::N(_)),
        };
        if !fits {
            return Err(operand_type(function, constant));
        }
    }
    Ok(operand)
}

/// The update an UPDATE statement's SET and REMOVE clauses make, checked not to touch key
/// attributes nor to name overlapping paths.
pub(crate) fn update(
    assignments: &[Assignment],
    schema: &KeySchema,
    parameters: &Parameters<'_>,
) -> Result<UpdateExpression, ApiError> {
    let mut actions = Vec::with_capacity(assignments.len());
    for assignment in assignments {
        actions.push(match assignment {
            Assignment::Remove(path) => Action::Remove(path.clone()),
            Assignment::Set(path, Expr::Call(name, arguments)) if name == "set_add" || name == "set_delete" => {
                let upper = name.to_uppercase();
                let [target, members] = arguments.as_slice() else {
                    return Err(ApiError::validation(format!("{upper} must have exactly two arguments")));
                };
                if !matches!(target, Expr::Path(target) if target == path) {
                    return Err(ApiError::validation(format!(
                        "The first argument to {upper} must equal the assignment value"
                    )));
                }
                let not_a_set =
                    || ApiError::validation(format!("The second argument to {upper} must be a value with type SET"));
                if !is_constant(members) {
                    return Err(not_a_set());
                }
                let members = value(members, parameters, "root")?;
                if !matches!(
                    members,
                    AttributeValue::Ss(_) | AttributeValue::Ns(_) | AttributeValue::Bs(_)
                ) {
                    return Err(not_a_set());
                }
                if name == "set_add" {
                    Action::Add(path.clone(), members)
                } else {
                    Action::Delete(path.clone(), members)
                }
            }
            Assignment::Set(path, expr) => Action::Set(path.clone(), set_value(expr, parameters)?),
        });
    }
    for action in &actions {
        if let Some(name) = action.path().top_attribute()
            && schema.is_key_attribute(name)
        {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Cannot update attribute {name}. This attribute is part of the key"
            )));
        }
    }
    for (i, first) in actions.iter().enumerate() {
        for second in &actions[i + 1..] {
            let (a, b) = (&first.path().0, &second.path().0);
            let shorter = a.len().min(b.len());
            if a[..shorter] == b[..shorter] {
                // DynamoDB names the later path first.
                return Err(ApiError::validation(format!(
                    "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: {}, path two: {}",
                    second.path().bracketed(),
                    first.path().bracketed()
                )));
            }
        }
    }
    Ok(UpdateExpression { actions })
}

/// The name a projected path has in a SELECT's result: its last attribute name and any list
/// indexes after it (`m.k[1]` → `k[1]`), as DynamoDB flattens projections.
pub(crate) fn output_name(path: &Path) -> String {
    let start = path
        .0
        .iter()
        .rposition(|element| matches!(element, PathElement::Attribute(_)))
        .unwrap_or(0);
    let mut name = String::new();
    for element in &path.0[start..] {
        match element {
            PathElement::Attribute(attribute) => name.push_str(attribute),
            PathElement::Index(index) => name.push_str(&format!("[{index}]")),
        }
    }
    name
}

/// Refuses two projected paths with one output name, as DynamoDB does.
pub(crate) fn check_projection(paths: &[Path]) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    for path in paths {
        let name = output_name(path);
        if !seen.insert(name.clone()) {
            return Err(ApiError::validation(format!(
                "Duplicate identifiers in select clause: {name}"
            )));
        }
    }
    Ok(())
}

/// A SELECT's projection applied to an item: flat, under each path's output name.
pub(crate) fn project(item: &Item, paths: Option<&[Path]>) -> Item {
    match paths {
        None => item.clone(),
        Some(paths) => paths
            .iter()
            .filter_map(|path| crate::expr::value_at(item, path).map(|value| (output_name(path), value.clone())))
            .collect(),
    }
}

/// Parses `text` and translates everything in it that does not need storage (conditions,
/// keys against `schema`, update actions, values) the way ExecuteStatement does before it reads
/// or writes: the entry point of the fuzz target and the property tests.
pub fn check_statement(text: &str, parameters: &[AttributeValue], schema: &KeySchema) -> Result<(), ApiError> {
    let parsed = parse_statement(text)?;
    let parameters = Parameters(parameters);
    parameters.check(&parsed)?;
    match &parsed.statement {
        Statement::Select(select) | Statement::Exists(select) => {
            if let Some(paths) = &select.projection {
                check_projection(paths)?;
            }
            where_condition(select.condition.as_ref(), &parameters)?;
            if partitions(select.condition.as_ref(), schema, &parameters)?.is_some() {
                check_sort_equalities(select.condition.as_ref(), schema, &parameters)?;
                sort_key_operators(select.condition.as_ref(), schema, &parameters);
            }
        }
        Statement::Update {
            assignments, condition, ..
        } => {
            keyed_where(condition, schema, &parameters)?;
            update(assignments, schema, &parameters)?;
        }
        Statement::Delete { condition, .. } => {
            keyed_where(condition, schema, &parameters)?;
        }
        Statement::Insert { value: v, .. } => {
            value(v, &parameters, "root")?;
        }
    }
    Ok(())
}
