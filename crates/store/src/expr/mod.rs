//! DynamoDB's expression language: condition, filter, key-condition, projection and update
//! expressions, plus the legacy parameters (`Expected`, `QueryFilter`, `AttributeUpdates`, ...)
//! translated into the same forms.
//!
//! Pure code over items: it parses text against a request's `ExpressionAttributeNames` and
//! `ExpressionAttributeValues` ([`Context`]) and evaluates or applies the result to an
//! [`Item`](dynamo_protocol::Item). It must not depend on storage, I/O or the server.
//!
//! Parsing happens in two steps so errors come out the way DynamoDB reports them: the parser
//! ([`parser`]) checks only syntax and builds raw trees that still hold placeholder text; the
//! resolver ([`resolve`]) then substitutes names and values and checks everything else (reserved
//! words, functions, operand types, overlapping paths), reporting the highest-ranked problem.
//! Hostile input cannot exhaust the stack: expressions are at most 4 KB, conditions are parsed
//! with an explicit operator stack, and every nested construct counts toward the limit of 300
//! operators and functions, which bounds every recursion over the trees.

mod ast;
mod eval;
mod keycond;
pub mod legacy;
mod lexer;
mod parser;
mod projection;
pub mod reserved;
mod resolve;
pub(crate) use resolve::render;
mod update;

#[cfg(test)]
mod tests;

pub use ast::{
    ATTRIBUTE_NAME_BYTES_MAX, Condition, Context, EXPRESSION_SIZE_MAX_BYTES, ExpressionKind, IN_OPERANDS_MAX,
    OPERATORS_MAX, PATH_ELEMENTS_MAX, Path, PathElement, attribute_name_problem,
};
pub use keycond::{KeyCondition, KeyOperator, parse_key_condition, parse_key_condition_checked};
pub use projection::{parse_projection, project};
pub use update::{UpdateExpression, parse_update};
// The trees PartiQL statements translate into (crate::partiql builds them directly).
pub(crate) use ast::{Comparator, Node, Operand};
/// The value at a path in an item, if every step exists and has the right type.
pub(crate) use eval::get as value_at;
pub(crate) use update::{Action, SetValue};

use dynamo_protocol::ApiError;

/// Parses a condition (ConditionExpression, FilterExpression) against the request's names and
/// values; `kind` names the parameter in error messages.
pub fn parse_condition(text: &str, context: &Context, kind: ExpressionKind) -> Result<Condition, ApiError> {
    let raw = parser::parse_condition(text, kind)?;
    resolve::condition(&raw, context, kind).map(|root| Condition { root })
}
