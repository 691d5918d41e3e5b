//! The resolved forms of expressions and the request context they are resolved against.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use dynamo_protocol::value::{NESTING_DEPTH_MAX, ValueType};
use dynamo_protocol::{ApiError, AttributeValue};

/// Longest expression DynamoDB accepts, in bytes of UTF-8.
pub const EXPRESSION_SIZE_MAX_BYTES: usize = 4096;

/// Most operators and functions (comparators, `AND`, `OR`, `NOT`, `BETWEEN`, `IN`, `+`, `-`,
/// function calls) in one expression.
pub const OPERATORS_MAX: usize = 300;

/// Most values in the list of `IN` (the operand on its left not counted: DynamoDB's "up to 100
/// values", and the count its error names).
pub const IN_OPERANDS_MAX: usize = 100;

/// Most elements in a document path, the top-level attribute included: DynamoDB's 32 levels
/// (`a.b…` with 33 elements is "too many nesting levels; nesting levels: 33").
pub const PATH_ELEMENTS_MAX: usize = NESTING_DEPTH_MAX;

/// Which request parameter an expression came from; error messages start with its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpressionKind {
    Condition,
    Filter,
    KeyCondition,
    Projection,
    Update,
}

impl ExpressionKind {
    /// The request parameter's name, as DynamoDB uses it in `Invalid <parameter>: ...`.
    pub fn parameter(self) -> &'static str {
        match self {
            ExpressionKind::Condition => "ConditionExpression",
            ExpressionKind::Filter => "FilterExpression",
            ExpressionKind::KeyCondition => "KeyConditionExpression",
            ExpressionKind::Projection => "ProjectionExpression",
            ExpressionKind::Update => "UpdateExpression",
        }
    }
}

/// A validation error about an expression, prefixed the way DynamoDB prefixes them.
pub(crate) fn invalid(kind: ExpressionKind, message: impl fmt::Display) -> ApiError {
    ApiError::validation(format!("Invalid {}: {message}", kind.parameter()))
}

/// One step of a document path: a map key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathElement {
    Attribute(String),
    Index(usize),
}

/// A document path such as `a.b[2].c`, with expression attribute names already substituted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<PathElement>);

impl Path {
    /// A path to one top-level attribute, taken literally (dots are part of the name).
    pub fn attribute(name: impl Into<String>) -> Path {
        Path(vec![PathElement::Attribute(name.into())])
    }

    /// The top-level attribute the path starts in.
    pub fn top_attribute(&self) -> Option<&str> {
        match self.0.first() {
            Some(PathElement::Attribute(name)) => Some(name),
            _ => None,
        }
    }

    /// The form DynamoDB prints paths in error messages: `[a, b, [2]]`.
    pub fn bracketed(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|element| match element {
                PathElement::Attribute(name) => name.clone(),
                PathElement::Index(index) => format!("[{index}]"),
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, element) in self.0.iter().enumerate() {
            match element {
                PathElement::Attribute(name) if position == 0 => f.write_str(name)?,
                PathElement::Attribute(name) => write!(f, ".{name}")?,
                PathElement::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A request's `ExpressionAttributeNames` and `ExpressionAttributeValues`. Parsing records which
/// placeholders the expressions used, because DynamoDB refuses requests that supply unused ones.
pub struct Context<'a> {
    names: Option<&'a HashMap<String, String>>,
    values: Option<&'a HashMap<String, AttributeValue>>,
    // Mutexes rather than cells so a context can be shared by reference across await points.
    used_names: Mutex<BTreeSet<String>>,
    used_values: Mutex<BTreeSet<String>>,
}

impl<'a> Context<'a> {
    pub fn new(
        names: Option<&'a HashMap<String, String>>,
        values: Option<&'a HashMap<String, AttributeValue>>,
    ) -> Self {
        Context {
            names,
            values,
            used_names: Mutex::new(BTreeSet::new()),
            used_values: Mutex::new(BTreeSet::new()),
        }
    }

    /// A context without names or values, for expressions that use neither.
    pub fn empty() -> Context<'static> {
        Context::new(None, None)
    }

    /// The attribute name behind `#placeholder`, marking it used.
    pub(crate) fn name(&self, placeholder: &str) -> Option<&'a str> {
        let name = self.names?.get(placeholder)?;
        self.used_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(placeholder.to_string());
        Some(name)
    }

    /// The value behind `:placeholder`, marking it used.
    pub(crate) fn value(&self, placeholder: &str) -> Option<&'a AttributeValue> {
        let value = self.values?.get(placeholder)?;
        self.used_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(placeholder.to_string());
        Some(value)
    }

    /// Call after parsing every expression of a request: DynamoDB refuses empty maps, keys that
    /// are not placeholders, and placeholders that no expression used.
    pub fn check_all_used(&self) -> Result<(), ApiError> {
        self.check_maps()?;
        let used = self.used_names.lock().unwrap_or_else(PoisonError::into_inner);
        check_unused("ExpressionAttributeNames", self.names.map(|names| names.keys()), &used)?;
        let used = self.used_values.lock().unwrap_or_else(PoisonError::into_inner);
        check_unused(
            "ExpressionAttributeValues",
            self.values.map(|values| values.keys()),
            &used,
        )
    }

    /// The maps themselves, as DynamoDB checks them before it parses the expressions: neither
    /// empty, every key a placeholder, every name an attribute name.
    pub fn check_maps(&self) -> Result<(), ApiError> {
        // Each map was read within the limit; together they must be too.
        let names_bytes: usize = self
            .names
            .map_or(0, |names| names.iter().map(|(key, name)| key.len() + name.len()).sum());
        let values_bytes: usize = self.values.map_or(0, |values| {
            values.iter().map(|(key, value)| key.len() + value.size_bytes()).sum()
        });
        let bytes = names_bytes.saturating_add(values_bytes);
        if bytes > dynamo_protocol::value::SUBSTITUTIONS_BYTES_MAX {
            return Err(ApiError::validation(
                dynamo_protocol::value::substitutions_too_large_message(
                    "ExpressionAttributeNames and ExpressionAttributeValues",
                    bytes,
                ),
            ));
        }
        check_keys("ExpressionAttributeNames", self.names.map(|names| names.keys()), '#')?;
        if let Some(names) = self.names {
            let mut names: Vec<(&String, &String)> = names.iter().collect();
            names.sort();
            for (key, name) in names {
                if let Some(problem) = attribute_name_problem(name) {
                    return Err(ApiError::validation(format!(
                        "ExpressionAttributeNames contains invalid value: {problem} for key {key}"
                    )));
                }
            }
        }
        check_keys(
            "ExpressionAttributeValues",
            self.values.map(|values| values.keys()),
            ':',
        )
    }
}

/// Longest attribute name, in bytes (DynamoDB: under 64 KB).
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 65_535;

/// Why `name` cannot name an attribute, in DynamoDB's words, or `None`.
pub fn attribute_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Empty attribute name".to_string());
    }
    (name.len() > ATTRIBUTE_NAME_BYTES_MAX).then(|| {
        format!(
            "Attribute name is {} bytes long, above the limit of {ATTRIBUTE_NAME_BYTES_MAX} bytes",
            name.len()
        )
    })
}

fn check_keys<'k>(
    parameter: &str,
    keys: Option<impl Iterator<Item = &'k String>>,
    sigil: char,
) -> Result<(), ApiError> {
    let Some(keys) = keys else { return Ok(()) };
    let keys: BTreeSet<&String> = keys.collect();
    if keys.is_empty() {
        return Err(ApiError::validation(format!("{parameter} must not be empty")));
    }
    match keys.into_iter().find(|key| !is_placeholder(key, sigil)) {
        Some(key) => Err(ApiError::validation(format!(
            "{parameter} contains invalid key: Syntax error; key: \"{key}\""
        ))),
        None => Ok(()),
    }
}

fn check_unused<'k>(
    parameter: &str,
    keys: Option<impl Iterator<Item = &'k String>>,
    used: &BTreeSet<String>,
) -> Result<(), ApiError> {
    let Some(keys) = keys else { return Ok(()) };
    let unused: BTreeSet<&str> = keys.filter(|key| !used.contains(*key)).map(String::as_str).collect();
    if unused.is_empty() {
        return Ok(());
    }
    let unused: Vec<&str> = unused.into_iter().collect();
    Err(ApiError::validation(format!(
        "Value provided in {parameter} unused in expressions: keys: {{{}}}",
        unused.join(", ")
    )))
}

/// `#name` or `:value`: the sigil and then one or more of `[A-Za-z0-9_]`.
pub(crate) fn is_placeholder(text: &str, sigil: char) -> bool {
    let Some(rest) = text.strip_prefix(sigil) else {
        return false;
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The comparators of condition expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Comparator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparator {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Comparator::Equal => "=",
            Comparator::NotEqual => "<>",
            Comparator::Less => "<",
            Comparator::LessOrEqual => "<=",
            Comparator::Greater => ">",
            Comparator::GreaterOrEqual => ">=",
        }
    }

    /// Whether the comparator orders its operands (and so accepts only S, N and B constants).
    pub(crate) fn is_ordering(self) -> bool {
        !matches!(self, Comparator::Equal | Comparator::NotEqual)
    }
}

/// A value a condition compares: an attribute of the item, a constant, or `size(path)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Operand {
    Path(Path),
    Value(AttributeValue),
    Size(Path),
}

/// A condition tree. `And` and `Or` hold any number of children so that conditions built from
/// large legacy maps stay shallow.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Compare(Comparator, Operand, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(Path),
    NotExists(Path),
    Type(Operand, ValueType),
    BeginsWith(Operand, Operand),
    Contains(Operand, Operand),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

/// A parsed condition (ConditionExpression, FilterExpression or a legacy equivalent), ready to
/// evaluate against items.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub(crate) root: Node,
}

impl Condition {
    /// Whether `item` satisfies the condition. A missing item is an empty one.
    pub fn evaluate(&self, item: &dynamo_protocol::Item) -> Result<bool, ApiError> {
        Ok(crate::expr::eval::condition(&self.root, item))
    }

    /// Every document path the condition reads, in expression order.
    pub fn paths(&self) -> Vec<&Path> {
        fn operand<'a>(operand: &'a Operand, out: &mut Vec<&'a Path>) {
            match operand {
                Operand::Path(path) | Operand::Size(path) => out.push(path),
                Operand::Value(_) => {}
            }
        }
        fn node<'a>(current: &'a Node, out: &mut Vec<&'a Path>) {
            match current {
                Node::Compare(_, a, b) | Node::BeginsWith(a, b) | Node::Contains(a, b) => {
                    operand(a, out);
                    operand(b, out);
                }
                Node::Between(a, b, c) => [a, b, c].into_iter().for_each(|o| operand(o, out)),
                Node::In(a, list) => {
                    operand(a, out);
                    list.iter().for_each(|o| operand(o, out));
                }
                Node::Exists(path) | Node::NotExists(path) => out.push(path),
                Node::Type(a, _) => operand(a, out),
                Node::Not(inner) => node(inner, out),
                Node::And(children) | Node::Or(children) => children.iter().for_each(|c| node(c, out)),
            }
        }
        let mut out = Vec::new();
        node(&self.root, &mut out);
        out
    }

    /// The top-level attributes the condition reads, in order of first mention.
    pub fn top_attributes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in self.paths().into_iter().filter_map(Path::top_attribute) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_dynamodb() {
        let path = Path(vec![
            PathElement::Attribute("a".into()),
            PathElement::Attribute("b".into()),
            PathElement::Index(2),
        ]);
        assert_eq!(path.bracketed(), "[a, b, [2]]");
        assert_eq!(path.to_string(), "a.b[2]");
        assert_eq!(path.top_attribute(), Some("a"));
    }

    #[test]
    fn placeholders_need_a_sigil_and_word_characters() {
        assert!(is_placeholder("#a_1", '#'));
        assert!(is_placeholder(":V", ':'));
        assert!(!is_placeholder("#", '#'));
        assert!(!is_placeholder("a", '#'));
        assert!(!is_placeholder("#a-b", '#'));
        assert!(!is_placeholder(":a", '#'));
    }

    #[test]
    fn check_all_used_reports_empty_invalid_and_unused() {
        let empty = HashMap::new();
        let error = Context::new(Some(&empty), None)
            .check_all_used()
            .expect_err("empty names");
        assert_eq!(error.message, "ExpressionAttributeNames must not be empty");

        let values: HashMap<String, AttributeValue> = HashMap::new();
        let error = Context::new(None, Some(&values))
            .check_all_used()
            .expect_err("empty values");
        assert_eq!(error.message, "ExpressionAttributeValues must not be empty");

        let names: HashMap<String, String> = [("n".to_string(), "x".to_string())].into();
        let error = Context::new(Some(&names), None).check_all_used().expect_err("bad key");
        assert_eq!(
            error.message,
            "ExpressionAttributeNames contains invalid key: Syntax error; key: \"n\""
        );

        let names: HashMap<String, String> =
            [("#b".to_string(), "x".to_string()), ("#a".to_string(), "y".to_string())].into();
        let values: HashMap<String, AttributeValue> = [(":v".to_string(), AttributeValue::Null)].into();
        let context = Context::new(Some(&names), Some(&values));
        let error = context.check_all_used().expect_err("unused names");
        assert_eq!(
            error.message,
            "Value provided in ExpressionAttributeNames unused in expressions: keys: {#a, #b}"
        );
        assert_eq!(context.name("#a"), Some("y"));
        assert_eq!(context.name("#b"), Some("x"));
        let error = context.check_all_used().expect_err("unused values");
        assert_eq!(
            error.message,
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {:v}"
        );
        assert_eq!(context.value(":v"), Some(&AttributeValue::Null));
        assert_eq!(context.value(":w"), None);
        context.check_all_used().expect("all used");
    }
}
