//! Gives raw syntax trees their meaning: substitutes expression attribute names and values, and
//! checks what syntax cannot (reserved words, functions and their operands, overlapping paths,
//! limits). When an expression has several problems the one DynamoDB ranks first is reported,
//! so clients see the same message for the same mistake.

use dynamo_protocol::value::ValueType;
use dynamo_protocol::{ApiError, AttributeValue, Number};

use super::ast::{
    Context, ExpressionKind, IN_OPERANDS_MAX, Node, Operand, PATH_ELEMENTS_MAX, Path, PathElement, invalid,
};
use super::eval::{compare, size_of};
use super::parser::{RawAction, RawCondition, RawElement, RawOperand, RawPath, RawSetValue, RawUpdate};
use super::reserved::is_reserved;
use super::update::{Action, SetValue};

/// Kinds of problems an expression can have beyond its syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Problem {
    Limit,
    UnknownFunction,
    MisusedFunction,
    RepeatedSection,
    Reserved,
    Undefined,
    Overlap,
    Conflict,
    OperandCount,
    Distinct,
    OperandType,
}

impl Problem {
    /// The order in which DynamoDB reports problems; update expressions rank a few differently.
    fn rank(self, kind: ExpressionKind) -> u8 {
        let order: [Problem; 11] = if kind == ExpressionKind::Update {
            [
                Problem::Limit,
                Problem::Reserved,
                Problem::UnknownFunction,
                Problem::MisusedFunction,
                Problem::RepeatedSection,
                Problem::Undefined,
                Problem::Overlap,
                Problem::Conflict,
                Problem::OperandCount,
                Problem::OperandType,
                Problem::Distinct,
            ]
        } else {
            [
                Problem::Limit,
                Problem::UnknownFunction,
                Problem::MisusedFunction,
                Problem::Reserved,
                Problem::Undefined,
                Problem::Overlap,
                Problem::Conflict,
                Problem::OperandCount,
                Problem::Distinct,
                Problem::OperandType,
                Problem::RepeatedSection,
            ]
        };
        order.iter().position(|p| *p == self).map_or(u8::MAX, |p| p as u8)
    }
}

/// Functions of condition expressions, plus those of update expressions (known, but misused in
/// a condition).
const CONDITION_FUNCTIONS: [&str; 8] = [
    "attribute_exists",
    "attribute_not_exists",
    "attribute_type",
    "begins_with",
    "contains",
    "size",
    "if_not_exists",
    "list_append",
];

/// How `attribute_type` lists the types it knows when given something else.
const ANY_TYPE: &str = "{NS,SS,L,BS,N,M,B,BOOL,NULL,S}";

pub(crate) fn condition(raw: &RawCondition<'_>, context: &Context<'_>, kind: ExpressionKind) -> Result<Node, ApiError> {
    let mut resolver = Resolver::new(context, kind);
    let node = resolver.condition(raw);
    resolver.finish(node)
}

pub(crate) fn update(raw: &RawUpdate<'_>, context: &Context<'_>) -> Result<Vec<Action>, ApiError> {
    let mut resolver = Resolver::new(context, ExpressionKind::Update);
    for section in &raw.repeated_sections {
        resolver.report(
            Problem::RepeatedSection,
            format!(
                "The \"{}\" section can only be used once in an update expression;",
                section.keyword()
            ),
        );
    }
    let actions: Vec<Action> = raw.actions.iter().map(|action| resolver.action(action)).collect();
    resolver.check_overlaps(actions.iter().map(Action::path));
    resolver.finish(actions)
}

pub(crate) fn projection(raw: &[RawPath<'_>], context: &Context<'_>) -> Result<Vec<Path>, ApiError> {
    let mut resolver = Resolver::new(context, ExpressionKind::Projection);
    let paths: Vec<Path> = raw.iter().map(|path| resolver.path(path)).collect();
    resolver.check_overlaps(paths.iter());
    resolver.finish(paths)
}

/// DynamoDB's long type names, used by the ADD and DELETE operand checks.
fn long_type_name(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::S => "STRING",
        ValueType::N => "NUMBER",
        ValueType::B => "BINARY",
        ValueType::Bool => "BOOLEAN",
        ValueType::Null => "NULL",
        ValueType::M => "MAP",
        ValueType::L => "LIST",
        ValueType::Ss => "STRING SET",
        ValueType::Ns => "NUMBER SET",
        ValueType::Bs => "BINARY SET",
    }
}

/// A scalar as DynamoDB prints it in messages: `{N:5}`, `{S:text}`.
pub(crate) fn render(value: &AttributeValue) -> String {
    let descriptor = value.value_type().descriptor();
    let inner = match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => match map.into_iter().next() {
            Some((_, serde_json::Value::String(text))) => text,
            Some((_, other)) => other.to_string(),
            None => String::new(),
        },
        _ => String::new(),
    };
    format!("{{{descriptor}:{inner}}}")
}

fn misused(name: &str) -> String {
    format!("The function is not allowed to be used this way in an expression; function: {name}")
}

fn incorrect_operand(operator: &str, operand_type: &str) -> String {
    format!(
        "Incorrect operand type for operator or function; operator or function: {operator}, operand type: {operand_type}"
    )
}

fn operand_count(function: &str, count: usize) -> String {
    format!(
        "Incorrect number of operands for operator or function; operator or function: {function}, number of operands: {count}"
    )
}

fn requires_path(function: &str) -> String {
    format!("Operator or function requires a document path; operator or function: {function}")
}

/// What a node becomes when it has a problem; never evaluated, because the problem is reported.
fn placeholder() -> Node {
    Node::And(Vec::new())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Relation {
    Disjoint,
    Overlap,
    Conflict,
}

fn relation(one: &Path, two: &Path) -> Relation {
    for (a, b) in one.0.iter().zip(&two.0) {
        match (a, b) {
            (PathElement::Attribute(x), PathElement::Attribute(y)) if x != y => return Relation::Disjoint,
            (PathElement::Index(x), PathElement::Index(y)) if x != y => return Relation::Disjoint,
            (PathElement::Attribute(_), PathElement::Index(_)) | (PathElement::Index(_), PathElement::Attribute(_)) => {
                return Relation::Conflict;
            }
            _ => {}
        }
    }
    Relation::Overlap
}

struct Resolver<'c, 'a> {
    context: &'c Context<'a>,
    kind: ExpressionKind,
    /// The best-ranked problem so far and its message.
    problem: Option<(u8, String)>,
}

impl<'c, 'a> Resolver<'c, 'a> {
    fn new(context: &'c Context<'a>, kind: ExpressionKind) -> Self {
        Resolver {
            context,
            kind,
            problem: None,
        }
    }

    fn report(&mut self, problem: Problem, message: impl Into<String>) {
        let rank = problem.rank(self.kind);
        if self.problem.as_ref().is_none_or(|(best, _)| rank < *best) {
            self.problem = Some((rank, message.into()));
        }
    }

    fn finish<T>(self, resolved: T) -> Result<T, ApiError> {
        match self.problem {
            Some((_, message)) => Err(invalid(self.kind, message)),
            None => Ok(resolved),
        }
    }

    fn path(&mut self, raw: &RawPath<'_>) -> Path {
        if raw.0.len() > PATH_ELEMENTS_MAX {
            self.report(
                Problem::Limit,
                format!(
                    "The document path has too many nesting levels; nesting levels: {}, maximum: {PATH_ELEMENTS_MAX}",
                    raw.0.len()
                ),
            );
        }
        let elements = raw
            .0
            .iter()
            .map(|element| match element {
                RawElement::Identifier(name) => {
                    if is_reserved(name) {
                        self.report(
                            Problem::Reserved,
                            format!("Attribute name is a reserved keyword; reserved keyword: {name}"),
                        );
                    }
                    PathElement::Attribute((*name).to_string())
                }
                RawElement::Name(placeholder) => match self.context.name(placeholder) {
                    Some(name) => PathElement::Attribute(name.to_string()),
                    None => {
                        self.report(
                            Problem::Undefined,
                            format!(
                                "An expression attribute name used in the document path is not defined; attribute name: {placeholder}"
                            ),
                        );
                        PathElement::Attribute((*placeholder).to_string())
                    }
                },
                RawElement::Index(index) => PathElement::Index(*index),
            })
            .collect();
        Path(elements)
    }

    fn value(&mut self, placeholder: &str) -> AttributeValue {
        match self.context.value(placeholder) {
            Some(value) => value.clone(),
            None => {
                self.report(
                    Problem::Undefined,
                    format!("An expression attribute value used in expression is not defined; attribute value: {placeholder}"),
                );
                AttributeValue::Null
            }
        }
    }

    fn check_overlaps<'p>(&mut self, paths: impl Iterator<Item = &'p Path>) {
        let paths: Vec<&Path> = paths.collect();
        let (mut overlap, mut conflict) = (false, false);
        for (position, two) in paths.iter().enumerate() {
            for one in &paths[..position] {
                match relation(one, two) {
                    Relation::Overlap if !overlap => {
                        overlap = true;
                        self.report(
                            Problem::Overlap,
                            format!(
                                "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: {}, path two: {}",
                                one.bracketed(),
                                two.bracketed()
                            ),
                        );
                    }
                    Relation::Conflict if !conflict => {
                        conflict = true;
                        self.report(
                            Problem::Conflict,
                            format!(
                                "Two document paths conflict with each other; must remove or rewrite one of these paths; path one: {}, path two: {}",
                                one.bracketed(),
                                two.bracketed()
                            ),
                        );
                    }
                    _ => {}
                }
                if overlap && conflict {
                    return;
                }
            }
        }
    }

    fn condition(&mut self, raw: &RawCondition<'_>) -> Node {
        match raw {
            RawCondition::Compare(comparator, left, right) => {
                let left = self.operand(left);
                let right = self.operand(right);
                self.check_distinct(comparator.symbol(), &left, &right);
                if comparator.is_ordering() {
                    self.check_orderable(comparator.symbol(), &left);
                    self.check_orderable(comparator.symbol(), &right);
                }
                Node::Compare(*comparator, left, right)
            }
            RawCondition::Between(value, low, high) => {
                let value = self.operand(value);
                let low = self.operand(low);
                let high = self.operand(high);
                for operand in [&value, &low, &high] {
                    self.check_orderable("BETWEEN", operand);
                }
                if let (Operand::Value(low), Operand::Value(high)) = (&low, &high) {
                    self.check_bounds(low, high);
                }
                Node::Between(value, low, high)
            }
            RawCondition::In(value, list) => {
                let value = self.operand(value);
                let list: Vec<Operand> = list.iter().map(|operand| self.operand(operand)).collect();
                if list.len() > IN_OPERANDS_MAX {
                    self.report(
                        Problem::OperandCount,
                        format!(
                            "The IN operator is provided with too many operands; number of operands: {}",
                            list.len()
                        ),
                    );
                }
                Node::In(value, list)
            }
            RawCondition::Call(name, arguments) => self.function(name, arguments),
            RawCondition::Not(inner) => Node::Not(Box::new(self.condition(inner))),
            RawCondition::And(left, right) => {
                let mut children = Vec::new();
                for side in [left, right] {
                    match self.condition(side) {
                        Node::And(inner) if !inner.is_empty() => children.extend(inner),
                        other => children.push(other),
                    }
                }
                Node::And(children)
            }
            RawCondition::Or(left, right) => {
                let mut children = Vec::new();
                for side in [left, right] {
                    match self.condition(side) {
                        Node::Or(inner) => children.extend(inner),
                        other => children.push(other),
                    }
                }
                Node::Or(children)
            }
        }
    }

    fn check_distinct(&mut self, operator: &str, first: &Operand, second: &Operand) {
        if let (Operand::Path(one), Operand::Path(two)) = (first, second)
            && one == two
        {
            self.report(
                Problem::Distinct,
                format!(
                    "The first operand must be distinct from the remaining operands for this operator or function; operator: {operator}, first operand: {}",
                    one.bracketed()
                ),
            );
        }
    }

    /// Ordering comparisons refuse constants that have no order (sets, lists, maps, ...).
    fn check_orderable(&mut self, operator: &str, operand: &Operand) {
        if let Operand::Value(value) = operand
            && !matches!(value.value_type(), ValueType::S | ValueType::N | ValueType::B)
        {
            self.report(
                Problem::OperandType,
                incorrect_operand(operator, value.value_type().descriptor()),
            );
        }
    }

    fn check_bounds(&mut self, low: &AttributeValue, high: &AttributeValue) {
        let bounds = format!(
            "lower bound operand: AttributeValue: {}, upper bound operand: AttributeValue: {}",
            render(low),
            render(high)
        );
        if low.value_type() != high.value_type() {
            self.report(
                Problem::OperandType,
                format!("The BETWEEN operator requires same data type for lower and upper bounds; {bounds}"),
            );
        } else if compare(low, high) == Some(std::cmp::Ordering::Greater) {
            self.report(
                Problem::OperandType,
                format!(
                    "The BETWEEN operator requires upper bound to be greater than or equal to lower bound; {bounds}"
                ),
            );
        }
    }

    fn function(&mut self, name: &str, arguments: &[RawOperand<'_>]) -> Node {
        let arguments: Vec<Operand> = arguments.iter().map(|argument| self.operand(argument)).collect();
        let expected = match name {
            "attribute_exists" | "attribute_not_exists" => 1,
            "attribute_type" | "begins_with" | "contains" => 2,
            _ if CONDITION_FUNCTIONS.contains(&name) => {
                self.report(Problem::MisusedFunction, misused(name));
                return placeholder();
            }
            _ => {
                self.report(
                    Problem::UnknownFunction,
                    format!("Invalid function name; function: {name}"),
                );
                return placeholder();
            }
        };
        if arguments.len() != expected {
            self.report(Problem::OperandCount, operand_count(name, arguments.len()));
            return placeholder();
        }
        let mut arguments = arguments.into_iter();
        let (Some(first), second) = (arguments.next(), arguments.next()) else {
            return placeholder();
        };
        match (name, first, second) {
            ("attribute_exists", Operand::Path(path), None) => Node::Exists(path),
            ("attribute_not_exists", Operand::Path(path), None) => Node::NotExists(path),
            ("attribute_exists" | "attribute_not_exists", _, None) => {
                self.report(Problem::OperandType, requires_path(name));
                placeholder()
            }
            ("attribute_type", first, Some(second)) => self.attribute_type(first, second),
            ("begins_with", first, Some(second)) => {
                self.check_distinct(name, &first, &second);
                for operand in [&first, &second] {
                    let operand_type = match operand {
                        Operand::Value(value) => value.value_type(),
                        Operand::Size(_) => ValueType::N,
                        Operand::Path(_) => continue,
                    };
                    if !matches!(operand_type, ValueType::S | ValueType::B) {
                        self.report(Problem::OperandType, incorrect_operand(name, operand_type.descriptor()));
                    }
                }
                Node::BeginsWith(first, second)
            }
            ("contains", first, Some(second)) => {
                self.check_distinct(name, &first, &second);
                Node::Contains(first, second)
            }
            _ => placeholder(),
        }
    }

    fn attribute_type(&mut self, value: Operand, type_name: Operand) -> Node {
        let name = "attribute_type";
        match type_name {
            Operand::Value(AttributeValue::S(descriptor)) => match ValueType::from_descriptor(&descriptor) {
                Some(value_type) => Node::Type(value, value_type),
                None => {
                    self.report(
                        Problem::OperandType,
                        format!(
                            "Invalid attribute type name found; type: {descriptor}, valid types: {{B,NULL,SS,BOOL,L,BS,N,NS,S,M}}"
                        ),
                    );
                    placeholder()
                }
            },
            Operand::Value(other) => {
                self.report(
                    Problem::OperandType,
                    incorrect_operand(name, other.value_type().descriptor()),
                );
                placeholder()
            }
            Operand::Size(_) => {
                self.report(Problem::OperandType, incorrect_operand(name, "N"));
                placeholder()
            }
            Operand::Path(_) => {
                self.report(Problem::OperandType, incorrect_operand(name, ANY_TYPE));
                placeholder()
            }
        }
    }

    fn operand(&mut self, raw: &RawOperand<'_>) -> Operand {
        match raw {
            RawOperand::Path(path) => Operand::Path(self.path(path)),
            RawOperand::Value(placeholder) => Operand::Value(self.value(placeholder)),
            RawOperand::Call(name, arguments) => self.operand_function(name, arguments),
        }
    }

    /// A function used as an operand; only `size` returns a value a condition can compare.
    fn operand_function(&mut self, name: &str, arguments: &[RawOperand<'_>]) -> Operand {
        let mut arguments: Vec<Operand> = arguments.iter().map(|argument| self.operand(argument)).collect();
        let invalid_operand = Operand::Value(AttributeValue::Null);
        if name != "size" {
            if CONDITION_FUNCTIONS.contains(&name) {
                self.report(Problem::MisusedFunction, misused(name));
            } else {
                self.report(
                    Problem::UnknownFunction,
                    format!("Invalid function name; function: {name}"),
                );
            }
            return invalid_operand;
        }
        if arguments.len() != 1 {
            self.report(Problem::OperandCount, operand_count(name, arguments.len()));
            return invalid_operand;
        }
        match arguments.pop() {
            Some(Operand::Path(path)) => Operand::Size(path),
            Some(Operand::Value(value)) => match size_of(&value) {
                Some(size) => Operand::Value(AttributeValue::N(Number::from_i64(
                    i64::try_from(size).unwrap_or(i64::MAX),
                ))),
                None => {
                    self.report(
                        Problem::OperandType,
                        incorrect_operand(name, value.value_type().descriptor()),
                    );
                    invalid_operand
                }
            },
            _ => {
                self.report(Problem::OperandType, incorrect_operand(name, "N"));
                invalid_operand
            }
        }
    }

    fn action(&mut self, raw: &RawAction<'_>) -> Action {
        match raw {
            RawAction::Set(path, value) => {
                let path = self.path(path);
                Action::Set(path, self.set_value(value))
            }
            RawAction::Remove(path) => Action::Remove(self.path(path)),
            RawAction::Add(path, placeholder) => {
                let path = self.path(path);
                let value = self.value(placeholder);
                if !matches!(
                    value.value_type(),
                    ValueType::N | ValueType::Ss | ValueType::Ns | ValueType::Bs
                ) {
                    self.report(
                        Problem::OperandType,
                        format!(
                            "Incorrect operand type for operator or function; operator: ADD, operand type: {}",
                            long_type_name(value.value_type())
                        ),
                    );
                }
                Action::Add(path, value)
            }
            RawAction::Delete(path, placeholder) => {
                let path = self.path(path);
                let value = self.value(placeholder);
                if !matches!(value.value_type(), ValueType::Ss | ValueType::Ns | ValueType::Bs) {
                    self.report(
                        Problem::OperandType,
                        format!(
                            "Incorrect operand type for operator or function; operator: DELETE, operand type: {}",
                            long_type_name(value.value_type())
                        ),
                    );
                }
                Action::Delete(path, value)
            }
        }
    }

    fn set_value(&mut self, raw: &RawSetValue<'_>) -> SetValue {
        match raw {
            RawSetValue::Path(path) => SetValue::Path(self.path(path)),
            RawSetValue::Value(placeholder) => SetValue::Value(self.value(placeholder)),
            RawSetValue::Plus(left, right) | RawSetValue::Minus(left, right) => {
                let plus = matches!(raw, RawSetValue::Plus(..));
                let left = self.set_value(left);
                let right = self.set_value(right);
                for operand in [&left, &right] {
                    if let SetValue::Value(value) = operand
                        && value.value_type() != ValueType::N
                    {
                        let operator = if plus { "+" } else { "-" };
                        self.report(
                            Problem::OperandType,
                            incorrect_operand(operator, value.value_type().descriptor()),
                        );
                    }
                }
                if plus {
                    SetValue::Plus(Box::new(left), Box::new(right))
                } else {
                    SetValue::Minus(Box::new(left), Box::new(right))
                }
            }
            RawSetValue::Call(name, arguments) => self.update_function(name, arguments),
        }
    }

    fn update_function(&mut self, name: &str, arguments: &[RawSetValue<'_>]) -> SetValue {
        let arguments: Vec<SetValue> = arguments.iter().map(|argument| self.set_value(argument)).collect();
        let invalid_value = SetValue::Value(AttributeValue::Null);
        if name != "if_not_exists" && name != "list_append" {
            self.report(
                Problem::UnknownFunction,
                format!("Invalid function name; function: {name}"),
            );
            return invalid_value;
        }
        if arguments.len() != 2 {
            self.report(Problem::OperandCount, operand_count(name, arguments.len()));
            return invalid_value;
        }
        let mut arguments = arguments.into_iter();
        let (Some(first), Some(second)) = (arguments.next(), arguments.next()) else {
            return invalid_value;
        };
        if name == "if_not_exists" {
            return match first {
                SetValue::Path(path) => SetValue::IfNotExists(path, Box::new(second)),
                _ => {
                    self.report(Problem::OperandType, requires_path(name));
                    invalid_value
                }
            };
        }
        // DynamoDB refuses list_append as an operand of list_append (if_not_exists is fine):
        // "The function is not allowed to be used this way in an expression".
        if [&first, &second]
            .iter()
            .any(|operand| matches!(operand, SetValue::ListAppend(..)))
        {
            self.report(Problem::MisusedFunction, misused(name));
            return invalid_value;
        }
        for operand in [&first, &second] {
            if let SetValue::Value(value) = operand
                && value.value_type() != ValueType::L
            {
                self.report(
                    Problem::OperandType,
                    incorrect_operand(name, value.value_type().descriptor()),
                );
            }
        }
        SetValue::ListAppend(Box::new(first), Box::new(second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Path {
        Path(
            text.split('.')
                .map(|part| match part.parse::<usize>() {
                    Ok(index) => PathElement::Index(index),
                    Err(_) => PathElement::Attribute(part.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn relations_between_paths() {
        assert!(relation(&path("a"), &path("a.b")) == Relation::Overlap);
        assert!(relation(&path("a.b"), &path("a.b")) == Relation::Overlap);
        assert!(relation(&path("a.b"), &path("a.c")) == Relation::Disjoint);
        assert!(relation(&path("a.0"), &path("a.1")) == Relation::Disjoint);
        assert!(relation(&path("a.b"), &path("a.0")) == Relation::Conflict);
        assert!(relation(&path("a.c.d"), &path("a.b.0")) == Relation::Disjoint);
    }

    #[test]
    fn problems_rank_by_kind() {
        assert!(Problem::UnknownFunction.rank(ExpressionKind::Filter) < Problem::Reserved.rank(ExpressionKind::Filter));
        assert!(Problem::Reserved.rank(ExpressionKind::Update) < Problem::UnknownFunction.rank(ExpressionKind::Update));
    }

    #[test]
    fn renders_scalars_like_dynamodb() {
        assert_eq!(render(&AttributeValue::S("dog".into())), "{S:dog}");
        assert_eq!(render(&AttributeValue::B(vec![0, 1, 2])), "{B:AAEC}");
        assert_eq!(long_type_name(ValueType::Bool), "BOOLEAN");
    }
}
