//! The syntax of the expression grammars. Parsing builds raw trees that still hold the
//! placeholder and attribute-name text; [`super::resolve`] gives them meaning. Only syntax
//! errors and the size limits are reported here, so they win over every other error, as in
//! DynamoDB.
//!
//! Conditions are parsed with an explicit operator stack (no recursion per parenthesis or
//! `NOT`), and every function call, comparator and logical operator counts toward
//! [`OPERATORS_MAX`], which bounds the only recursion (operands nested in function calls).

use dynamo_protocol::ApiError;

use super::ast::{Comparator, EXPRESSION_SIZE_MAX_BYTES, ExpressionKind, OPERATORS_MAX, invalid};
use super::lexer::{Token, TokenKind, tokenize};

/// Highest list index a path may name (a signed 32-bit integer, as DynamoDB).
const LIST_INDEX_MAX: u32 = i32::MAX as u32;

/// Deepest nesting of parentheses around parts of a SET value, e.g. `SET a = ((b))`.
const SET_VALUE_PARENTHESES_MAX: usize = 32;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawElement<'t> {
    Identifier(&'t str),
    Name(&'t str),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawPath<'t>(pub Vec<RawElement<'t>>);

/// An operand of a condition: a path, a `:value`, or a function call such as `size(a)`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawOperand<'t> {
    Path(RawPath<'t>),
    Value(&'t str),
    Call(&'t str, Vec<RawOperand<'t>>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawCondition<'t> {
    Compare(Comparator, RawOperand<'t>, RawOperand<'t>),
    Between(RawOperand<'t>, RawOperand<'t>, RawOperand<'t>),
    In(RawOperand<'t>, Vec<RawOperand<'t>>),
    Call(&'t str, Vec<RawOperand<'t>>),
    Not(Box<RawCondition<'t>>),
    And(Box<RawCondition<'t>>, Box<RawCondition<'t>>),
    Or(Box<RawCondition<'t>>, Box<RawCondition<'t>>),
}

/// The right-hand side of a SET action.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawSetValue<'t> {
    Path(RawPath<'t>),
    Value(&'t str),
    Call(&'t str, Vec<RawSetValue<'t>>),
    Plus(Box<RawSetValue<'t>>, Box<RawSetValue<'t>>),
    Minus(Box<RawSetValue<'t>>, Box<RawSetValue<'t>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Section {
    Set,
    Remove,
    Add,
    Delete,
}

impl Section {
    const ALL: [Section; 4] = [Section::Set, Section::Remove, Section::Add, Section::Delete];

    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Section::Set => "SET",
            Section::Remove => "REMOVE",
            Section::Add => "ADD",
            Section::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawAction<'t> {
    Set(RawPath<'t>, RawSetValue<'t>),
    Remove(RawPath<'t>),
    Add(RawPath<'t>, &'t str),
    Delete(RawPath<'t>, &'t str),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawUpdate<'t> {
    pub actions: Vec<RawAction<'t>>,
    /// Sections written more than once; syntactically fine, refused by the resolver.
    pub repeated_sections: Vec<Section>,
}

/// Parses a condition, filter or key condition.
pub(crate) fn parse_condition(text: &str, kind: ExpressionKind) -> Result<RawCondition<'_>, ApiError> {
    let mut parser = Parser::new(text, kind)?;
    parser.condition()
}

pub(crate) fn parse_update(text: &str) -> Result<RawUpdate<'_>, ApiError> {
    let mut parser = Parser::new(text, ExpressionKind::Update)?;
    parser.update()
}

pub(crate) fn parse_projection(text: &str) -> Result<Vec<RawPath<'_>>, ApiError> {
    let mut parser = Parser::new(text, ExpressionKind::Projection)?;
    let mut paths = vec![parser.path()?];
    while parser.peek().kind == TokenKind::Comma {
        parser.advance();
        paths.push(parser.path()?);
    }
    parser.finish()?;
    Ok(paths)
}

/// Operators waiting on the condition parser's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// An opening parenthesis, at this token index.
    Group(usize),
    Not,
    And,
    Or,
}

impl Pending {
    fn precedence(self) -> u8 {
        match self {
            Pending::Group(_) => 0,
            Pending::Or => 1,
            Pending::And => 2,
            Pending::Not => 3,
        }
    }
}

/// Applies a pending operator to the conditions on the output stack. The parser only pushes an
/// operator after its left operand and reduces it after its right one, so the operands exist.
fn reduce<'t>(operator: Pending, output: &mut Vec<RawCondition<'t>>) {
    match operator {
        Pending::Group(_) => {}
        Pending::Not => {
            if let Some(operand) = output.pop() {
                output.push(RawCondition::Not(Box::new(operand)));
            }
        }
        Pending::And | Pending::Or => {
            if output.len() >= 2 {
                let right = Box::new(output.pop().expect("length checked above"));
                let left = Box::new(output.pop().expect("length checked above"));
                output.push(if operator == Pending::And {
                    RawCondition::And(left, right)
                } else {
                    RawCondition::Or(left, right)
                });
            }
        }
    }
}

fn comparator_of(kind: TokenKind) -> Option<Comparator> {
    match kind {
        TokenKind::Compare(comparator) => Some(comparator),
        _ => None,
    }
}

struct Parser<'t> {
    text: &'t str,
    /// Never empty: the last token is `End`, and `position` never moves past it.
    tokens: Vec<Token<'t>>,
    position: usize,
    operators: usize,
    kind: ExpressionKind,
    /// An operand was wrapped in two pairs of parentheses (`((a)) = :v`): DynamoDB's
    /// "redundant parentheses", reported once the syntax is known to be right.
    redundant_operand: bool,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str, kind: ExpressionKind) -> Result<Self, ApiError> {
        if text.is_empty() {
            return Err(invalid(kind, "The expression can not be empty;"));
        }
        if text.len() > EXPRESSION_SIZE_MAX_BYTES {
            return Err(invalid(
                kind,
                format!(
                    "Expression size has exceeded the maximum allowed size; expression size: {}",
                    text.len()
                ),
            ));
        }
        Ok(Parser {
            text,
            tokens: tokenize(text),
            position: 0,
            operators: 0,
            kind,
            redundant_operand: false,
        })
    }

    fn peek(&self) -> Token<'t> {
        self.tokens[self.position]
    }

    fn peek_kind_at(&self, offset: usize) -> TokenKind {
        self.tokens
            .get(self.position + offset)
            .map_or(TokenKind::End, |token| token.kind)
    }

    fn advance(&mut self) -> Token<'t> {
        let token = self.peek();
        if token.kind != TokenKind::End {
            self.position += 1;
        }
        token
    }

    fn expect(&mut self, kind: TokenKind) -> Result<Token<'t>, ApiError> {
        if self.peek().kind == kind {
            Ok(self.advance())
        } else {
            Err(self.unexpected())
        }
    }

    fn finish(&self) -> Result<(), ApiError> {
        if self.peek().kind == TokenKind::End {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn count_operator(&mut self) -> Result<(), ApiError> {
        self.operators += 1;
        if self.operators > OPERATORS_MAX {
            return Err(invalid(
                self.kind,
                format!("The expression contains too many operators or functions; maximum: {OPERATORS_MAX}"),
            ));
        }
        Ok(())
    }

    /// A syntax error at the current token, quoting it and its neighbours as DynamoDB does.
    fn unexpected(&self) -> ApiError {
        let index = self.position;
        let token = self.tokens[index];
        let (shown, near) = if token.kind == TokenKind::End {
            let near = match index.checked_sub(1) {
                Some(last) => &self.text[self.tokens[index.saturating_sub(2)].start..self.tokens[last].end()],
                None => "",
            };
            ("<EOF>", near)
        } else {
            let first = self.tokens[index.saturating_sub(1)];
            let next = self.tokens[index + 1];
            let last = if next.kind == TokenKind::End { token } else { next };
            (token.text, &self.text[first.start..last.end()])
        };
        invalid(self.kind, format!("Syntax error; token: \"{shown}\", near: \"{near}\""))
    }

    /// Words that are keywords in this grammar and so cannot name attributes.
    fn keywords(&self) -> &'static [&'static str] {
        match self.kind {
            ExpressionKind::Condition | ExpressionKind::Filter | ExpressionKind::KeyCondition => {
                &["AND", "OR", "NOT", "BETWEEN", "IN"]
            }
            ExpressionKind::Update => &["SET", "REMOVE", "ADD", "DELETE"],
            ExpressionKind::Projection => &[],
        }
    }

    fn is_keyword(&self, token: Token<'_>) -> bool {
        self.keywords().iter().any(|word| token.is_keyword(word))
    }

    fn at_call(&self) -> bool {
        let token = self.peek();
        token.kind == TokenKind::Identifier && !self.is_keyword(token) && self.peek_kind_at(1) == TokenKind::LeftParen
    }

    fn path(&mut self) -> Result<RawPath<'t>, ApiError> {
        let mut elements = vec![self.path_name()?];
        loop {
            match self.peek().kind {
                TokenKind::Dot => {
                    self.advance();
                    elements.push(self.path_name()?);
                }
                TokenKind::LeftBracket => {
                    self.advance();
                    let token = self.peek();
                    if token.kind != TokenKind::Integer {
                        return Err(self.unexpected());
                    }
                    let index = match token.text.parse::<u32>() {
                        Ok(index) if index <= LIST_INDEX_MAX => index as usize,
                        _ => {
                            return Err(invalid(
                                self.kind,
                                format!("List index is not within the allowable range; index: [{}]", token.text),
                            ));
                        }
                    };
                    self.advance();
                    self.expect(TokenKind::RightBracket)?;
                    elements.push(RawElement::Index(index));
                }
                _ => return Ok(RawPath(elements)),
            }
        }
    }

    fn path_name(&mut self) -> Result<RawElement<'t>, ApiError> {
        let token = self.peek();
        match token.kind {
            TokenKind::Name => {
                self.advance();
                Ok(RawElement::Name(token.text))
            }
            TokenKind::Identifier if !self.is_keyword(token) => {
                self.advance();
                Ok(RawElement::Identifier(token.text))
            }
            _ => Err(self.unexpected()),
        }
    }

    fn operand(&mut self) -> Result<RawOperand<'t>, ApiError> {
        let token = self.peek();
        if token.kind == TokenKind::Value {
            self.advance();
            Ok(RawOperand::Value(token.text))
        } else if self.at_call() {
            let (name, arguments) = self.call()?;
            Ok(RawOperand::Call(name, arguments))
        } else {
            self.path().map(RawOperand::Path)
        }
    }

    /// `name(operand, ...)`; the caller has checked that a call starts here.
    fn call(&mut self) -> Result<(&'t str, Vec<RawOperand<'t>>), ApiError> {
        let name = self.advance().text;
        self.count_operator()?;
        self.expect(TokenKind::LeftParen)?;
        let arguments = self.operand_list()?;
        self.expect(TokenKind::RightParen)?;
        Ok((name, arguments))
    }

    /// Operands of a function call or an IN list, each in one pair of parentheses or none.
    fn operand_list(&mut self) -> Result<Vec<RawOperand<'t>>, ApiError> {
        let mut operands = vec![self.wrapped_operand()?];
        while self.peek().kind == TokenKind::Comma {
            self.advance();
            operands.push(self.wrapped_operand()?);
        }
        Ok(operands)
    }

    fn condition(&mut self) -> Result<RawCondition<'t>, ApiError> {
        let mut pending: Vec<Pending> = Vec::new();
        let mut output: Vec<RawCondition<'t>> = Vec::new();
        // The token indexes of the last group closed, and whether a group held nothing but
        // another group (`((a < b))`): DynamoDB's "redundant parentheses", reported once the
        // syntax is known to be right (syntax errors win).
        let mut last_group: Option<(usize, usize)> = None;
        let mut redundant = false;
        loop {
            // A condition may start with any number of opening parentheses and NOTs.
            loop {
                let token = self.peek();
                if token.kind == TokenKind::LeftParen {
                    pending.push(Pending::Group(self.position));
                    self.advance();
                } else if token.is_keyword("NOT") {
                    self.advance();
                    self.count_operator()?;
                    pending.push(Pending::Not);
                } else {
                    break;
                }
            }
            // Parentheses opened right before the atom may wrap its first operand instead
            // (`(size(a)) = :n`): DynamoDB's grammar allows one pair around an operand.
            let start = self.position;
            let opened = pending
                .iter()
                .rev()
                .zip(1..)
                .take_while(|(operator, back)| matches!(operator, Pending::Group(open) if open + back == start))
                .count();
            let (atom, closed) = self.atom(opened)?;
            output.push(atom);
            pending.truncate(pending.len() - closed);
            self.redundant_operand |= closed > 1;
            // It may end with closing parentheses.
            while self.peek().kind == TokenKind::RightParen {
                loop {
                    match pending.pop() {
                        Some(Pending::Group(open)) => {
                            let close = self.position;
                            redundant |= last_group == Some((open + 1, close - 1));
                            last_group = Some((open, close));
                            break;
                        }
                        Some(operator) => reduce(operator, &mut output),
                        None => return Err(self.unexpected()),
                    }
                }
                self.advance();
            }
            let token = self.peek();
            let operator = if token.is_keyword("AND") {
                Pending::And
            } else if token.is_keyword("OR") {
                Pending::Or
            } else if token.kind == TokenKind::End {
                break;
            } else {
                return Err(self.unexpected());
            };
            while let Some(&top) = pending.last() {
                if top.precedence() < operator.precedence() {
                    break;
                }
                pending.pop();
                reduce(top, &mut output);
            }
            self.count_operator()?;
            self.advance();
            pending.push(operator);
        }
        while let Some(operator) = pending.pop() {
            if matches!(operator, Pending::Group(_)) {
                return Err(self.unexpected());
            }
            reduce(operator, &mut output);
        }
        match (output.pop(), output.is_empty()) {
            (Some(_), true) if redundant || self.redundant_operand => {
                Err(invalid(self.kind, "The expression has redundant parentheses;"))
            }
            (Some(condition), true) => Ok(condition),
            _ => Err(self.unexpected()),
        }
    }

    /// A condition without logical operators: a comparison, BETWEEN, IN, or a function call.
    /// `opened`: parentheses opened right before it, which may wrap its first operand; returns
    /// the condition and how many of them did (closed here).
    fn atom(&mut self, opened: usize) -> Result<(RawCondition<'t>, usize), ApiError> {
        let left = if self.at_call() {
            let (name, arguments) = self.call()?;
            let closed = self.operand_closers(opened);
            if closed == 0 && !self.at_comparison() {
                return Ok((RawCondition::Call(name, arguments), 0));
            }
            RawOperand::Call(name, arguments)
        } else {
            self.operand()?
        };
        let closed = self.operand_closers(opened);
        for _ in 0..closed {
            self.advance();
        }
        self.comparison(left).map(|condition| (condition, closed))
    }

    /// How many (at most `opened`) closing parentheses here end a wrapped operand: the ones a
    /// comparison, BETWEEN or IN follows.
    /// Linear in `opened`: only the run of closing parentheses here can be followed by one.
    fn operand_closers(&self, opened: usize) -> usize {
        let closers = (0..opened)
            .take_while(|&i| self.peek_kind_at(i) == TokenKind::RightParen)
            .count();
        if closers > 0 && self.comparison_at(closers) {
            closers
        } else {
            0
        }
    }

    /// Whether the token `offset` ahead starts a comparison, BETWEEN or IN.
    fn comparison_at(&self, offset: usize) -> bool {
        self.tokens.get(self.position + offset).is_some_and(|token| {
            comparator_of(token.kind).is_some() || token.is_keyword("BETWEEN") || token.is_keyword("IN")
        })
    }

    /// An operand on the right of a comparison or of BETWEEN, in one pair of parentheses or
    /// none (two pairs or more: DynamoDB's "redundant parentheses", as on the left; a loop, so
    /// thousands of them cost no recursion).
    fn wrapped_operand(&mut self) -> Result<RawOperand<'t>, ApiError> {
        let mut pairs = 0;
        while self.peek().kind == TokenKind::LeftParen {
            self.advance();
            pairs += 1;
        }
        let operand = self.operand()?;
        for _ in 0..pairs {
            self.expect(TokenKind::RightParen)?;
        }
        self.redundant_operand |= pairs > 1;
        Ok(operand)
    }

    /// The rest of a comparison, BETWEEN or IN whose first operand is `left`.
    fn comparison(&mut self, left: RawOperand<'t>) -> Result<RawCondition<'t>, ApiError> {
        let token = self.peek();
        if let Some(comparator) = comparator_of(token.kind) {
            self.advance();
            self.count_operator()?;
            let right = self.wrapped_operand()?;
            Ok(RawCondition::Compare(comparator, left, right))
        } else if token.is_keyword("BETWEEN") {
            self.advance();
            self.count_operator()?;
            let low = self.wrapped_operand()?;
            if !self.peek().is_keyword("AND") {
                return Err(self.unexpected());
            }
            self.advance();
            let high = self.wrapped_operand()?;
            Ok(RawCondition::Between(left, low, high))
        } else if token.is_keyword("IN") {
            self.advance();
            self.count_operator()?;
            self.expect(TokenKind::LeftParen)?;
            let list = self.operand_list()?;
            self.expect(TokenKind::RightParen)?;
            Ok(RawCondition::In(left, list))
        } else {
            Err(self.unexpected())
        }
    }

    fn at_comparison(&self) -> bool {
        let token = self.peek();
        comparator_of(token.kind).is_some() || token.is_keyword("BETWEEN") || token.is_keyword("IN")
    }

    fn update(&mut self) -> Result<RawUpdate<'t>, ApiError> {
        let mut update = RawUpdate {
            actions: Vec::new(),
            repeated_sections: Vec::new(),
        };
        let mut seen: Vec<Section> = Vec::new();
        loop {
            let token = self.peek();
            let Some(section) = Section::ALL.into_iter().find(|s| token.is_keyword(s.keyword())) else {
                if token.kind == TokenKind::End && !seen.is_empty() {
                    return Ok(update);
                }
                return Err(self.unexpected());
            };
            self.advance();
            if !seen.contains(&section) {
                seen.push(section);
            } else if !update.repeated_sections.contains(&section) {
                update.repeated_sections.push(section);
            }
            loop {
                update.actions.push(self.action(section)?);
                if self.peek().kind != TokenKind::Comma {
                    break;
                }
                self.advance();
            }
        }
    }

    fn action(&mut self, section: Section) -> Result<RawAction<'t>, ApiError> {
        let path = self.path()?;
        match section {
            Section::Set => {
                self.expect(TokenKind::Compare(Comparator::Equal))?;
                Ok(RawAction::Set(path, self.set_value(0)?))
            }
            Section::Remove => Ok(RawAction::Remove(path)),
            Section::Add => Ok(RawAction::Add(path, self.expect(TokenKind::Value)?.text)),
            Section::Delete => Ok(RawAction::Delete(path, self.expect(TokenKind::Value)?.text)),
        }
    }

    /// `operand`, or `operand + operand` / `operand - operand`: DynamoDB's grammar adds or
    /// subtracts exactly two operands (`:a + :b + :c` is a syntax error).
    fn set_value(&mut self, parentheses: usize) -> Result<RawSetValue<'t>, ApiError> {
        let value = self.set_term(parentheses)?;
        let kind = self.peek().kind;
        if kind != TokenKind::Plus && kind != TokenKind::Minus {
            return Ok(value);
        }
        self.advance();
        self.count_operator()?;
        let right = Box::new(self.set_term(parentheses)?);
        Ok(if kind == TokenKind::Plus {
            RawSetValue::Plus(Box::new(value), right)
        } else {
            RawSetValue::Minus(Box::new(value), right)
        })
    }

    fn set_term(&mut self, parentheses: usize) -> Result<RawSetValue<'t>, ApiError> {
        let token = self.peek();
        match token.kind {
            TokenKind::LeftParen => {
                if parentheses >= SET_VALUE_PARENTHESES_MAX {
                    return Err(self.unexpected());
                }
                self.advance();
                let inner = self.set_value(parentheses + 1)?;
                self.expect(TokenKind::RightParen)?;
                Ok(inner)
            }
            TokenKind::Value => {
                self.advance();
                Ok(RawSetValue::Value(token.text))
            }
            _ if self.at_call() => {
                let name = self.advance().text;
                self.count_operator()?;
                self.expect(TokenKind::LeftParen)?;
                // A function's arguments are operands: `f(:a + :b)` is a syntax error, as on
                // DynamoDB (`f(:a) + :b` is fine).
                let mut arguments = vec![self.set_term(parentheses)?];
                while self.peek().kind == TokenKind::Comma {
                    self.advance();
                    arguments.push(self.set_term(parentheses)?);
                }
                self.expect(TokenKind::RightParen)?;
                Ok(RawSetValue::Call(name, arguments))
            }
            _ => self.path().map(RawSetValue::Path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax_message(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        result.expect_err("syntax error").message
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let parsed = parse_condition("a = :a OR NOT b = :b AND c = :c", ExpressionKind::Condition).expect("parses");
        let RawCondition::Or(left, right) = parsed else {
            panic!("OR at the top: {parsed:?}")
        };
        assert!(matches!(*left, RawCondition::Compare(..)));
        let RawCondition::And(and_left, _) = *right else {
            panic!("AND under OR")
        };
        assert!(matches!(*and_left, RawCondition::Not(_)));
    }

    #[test]
    fn parentheses_override_precedence() {
        let parsed = parse_condition("(a = :a OR b = :b) AND (c = :c)", ExpressionKind::Condition).expect("parses");
        let RawCondition::And(left, _) = parsed else {
            panic!("AND at the top: {parsed:?}")
        };
        assert!(matches!(*left, RawCondition::Or(..)));
    }

    #[test]
    fn syntax_errors_quote_the_token_and_its_neighbours() {
        assert_eq!(
            syntax_message(parse_condition("a =", ExpressionKind::Condition)),
            "Invalid ConditionExpression: Syntax error; token: \"<EOF>\", near: \"a =\""
        );
        assert_eq!(
            syntax_message(parse_condition("a-b", ExpressionKind::Filter)),
            "Invalid FilterExpression: Syntax error; token: \"-\", near: \"a-b\""
        );
        assert_eq!(
            syntax_message(parse_update("INVALID SYNTAX HERE")),
            "Invalid UpdateExpression: Syntax error; token: \"INVALID\", near: \"INVALID SYNTAX\""
        );
        assert_eq!(
            syntax_message(parse_projection("!!")),
            "Invalid ProjectionExpression: Syntax error; token: \"!\", near: \"!!\""
        );
        assert_eq!(
            syntax_message(parse_update("SET hits : incr")),
            "Invalid UpdateExpression: Syntax error; token: \":\", near: \"hits : incr\""
        );
        assert_eq!(
            syntax_message(parse_condition("   ", ExpressionKind::Condition)),
            "Invalid ConditionExpression: Syntax error; token: \"<EOF>\", near: \"\""
        );
    }

    #[test]
    fn malformed_conditions_are_syntax_errors() {
        for text in [
            "a",
            "a = :v :w",
            "(a = :v",
            "a = :v)",
            "a IN ()",
            "a BETWEEN :x",
            "a BETWEEN :x OR :y",
            "NOT",
            "a = :v AND",
            "and = :v",
            "a.or = :v",
            "a[x] = :v",
            "f()",
            "a = 1",
            "#",
            "() = :v",
        ] {
            let message = syntax_message(parse_condition(text, ExpressionKind::Condition));
            assert!(message.contains("Syntax error"), "{text}: {message}");
        }
    }

    #[test]
    fn update_values_follow_dynamodbs_grammar() {
        for text in [
            "SET a = :x + :y",
            "SET a = if_not_exists(a, :x) + :y",
            "SET a = list_append(if_not_exists(a, :l), :m)",
            "SET a1_ = :x",
        ] {
            assert!(parse_update(text).is_ok(), "{text}");
        }
        for text in [
            "SET a = :x + :y + :z",
            "SET a = if_not_exists(a, :x + :y)",
            "SET _a = :x",
            "SET a = _f(:x)",
        ] {
            let message = syntax_message(parse_update(text));
            assert!(message.contains("Syntax error"), "{text}: {message}");
        }
    }

    #[test]
    fn list_indexes_are_bounded_as_dynamodb_bounds_them() {
        assert!(parse_condition("a[2147483647] = :v", ExpressionKind::Condition).is_ok());
        for text in ["a[2147483648] = :v", "a[99999999999999999999999] = :v"] {
            let message = syntax_message(parse_condition(text, ExpressionKind::Condition));
            assert!(
                message.contains("List index is not within the allowable range"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn empty_and_oversized_expressions_are_refused() {
        assert_eq!(
            syntax_message(parse_condition("", ExpressionKind::KeyCondition)),
            "Invalid KeyConditionExpression: The expression can not be empty;"
        );
        let long = format!("a = :v{}", " ".repeat(EXPRESSION_SIZE_MAX_BYTES));
        assert_eq!(
            syntax_message(parse_condition(&long, ExpressionKind::Filter)),
            format!(
                "Invalid FilterExpression: Expression size has exceeded the maximum allowed size; expression size: {}",
                long.len()
            )
        );
    }

    #[test]
    fn operators_are_limited() {
        let mut text = "a = :v".to_string();
        for _ in 0..150 {
            text.push_str(" AND a = :v");
        }
        let message = syntax_message(parse_condition(&text, ExpressionKind::Condition));
        assert!(message.contains("too many operators"), "{message}");
        let nested = format!("SET a = {}b{}", "f(".repeat(400), ")".repeat(400));
        let message = syntax_message(parse_update(&nested));
        assert!(message.contains("too many operators"), "{message}");
    }

    #[test]
    fn deep_parentheses_do_not_recurse() {
        let text = format!("{}a = :v{}", "(".repeat(2000), ")".repeat(2000));
        let message = syntax_message(parse_condition(&text, ExpressionKind::Condition));
        assert_eq!(
            message,
            "Invalid ConditionExpression: The expression has redundant parentheses;"
        );
    }

    #[test]
    fn one_pair_of_parentheses_per_level_is_allowed() {
        for text in [
            "(a = :v)",
            "((a = :v) AND b = :v)",
            "((a = :v) AND (b = :v))",
            "(NOT (a = :v))",
            "NOT (a = :v)",
            "(a = :v) OR ((b = :v) AND c = :v)",
        ] {
            assert!(parse_condition(text, ExpressionKind::Condition).is_ok(), "{text}");
        }
        for text in ["((a = :v))", "((c = :v) AND ((p = :v)))", "(a = :v) OR (((b = :v)))"] {
            let message = syntax_message(parse_condition(text, ExpressionKind::KeyCondition));
            assert_eq!(
                message, "Invalid KeyConditionExpression: The expression has redundant parentheses;",
                "{text}"
            );
        }
        // A syntax error wins.
        let message = syntax_message(parse_condition("((a = :v)) AND", ExpressionKind::Condition));
        assert!(message.contains("Syntax error"), "{message}");
    }

    #[test]
    fn an_operand_may_be_wrapped_in_one_pair_of_parentheses() {
        let same = |wrapped: &str, plain: &str| {
            let parse = |text| format!("{:?}", parse_condition(text, ExpressionKind::Condition));
            assert_eq!(parse(wrapped), parse(plain), "{wrapped}");
            assert!(parse(plain).starts_with("Ok"), "{plain}");
        };
        same("(size(b)) = :n", "size(b) = :n");
        same("((size(b)) = :n) AND c = :c", "(size(b) = :n) AND c = :c");
        same("(b) = :s", "b = :s");
        same("b = (:s)", "b = :s");
        same("NOT (b) = :s", "NOT b = :s");
        same("c BETWEEN (:a) AND (:b)", "c BETWEEN :a AND :b");
        same("(b) IN ((:s), :t)", "b IN (:s, :t)");
        same("size((b)) = :n", "size(b) = :n");
        same("(size(b)) BETWEEN :a AND :b", "size(b) BETWEEN :a AND :b");
        same("(b) <> :t OR (c) > :o", "b <> :t OR c > :o");
        // A group whose condition is a function call stays a group.
        same("(attribute_exists(b))", "attribute_exists(b)");
        for text in [
            "((b)) = :s",
            "b = ((:s))",
            "(((b)) = :s)",
            // Three pairs or more are as redundant on the right as on the left (DynamoDB Local
            // answers these so; they were syntax errors).
            "(((b))) = :s",
            "b = (((:s)))",
            "b = ((((:s))))",
            "size((((b)))) = :n",
            "b IN ((((:s))), :t)",
            "b BETWEEN (((:a))) AND :b",
            "begins_with((((b))), :s)",
        ] {
            let message = syntax_message(parse_condition(text, ExpressionKind::Condition));
            assert_eq!(
                message, "Invalid ConditionExpression: The expression has redundant parentheses;",
                "{text}"
            );
        }
        for text in ["(b = :s) = :s", "(b) (= :s)", "(b)", "b = (:s", "(b, c) = :s"] {
            let message = syntax_message(parse_condition(text, ExpressionKind::Condition));
            assert!(message.contains("Syntax error"), "{text}: {message}");
        }
    }

    #[test]
    fn thousands_of_parentheses_around_an_operand_are_judged_without_recursion() {
        let deep = 1_300;
        let open = "(".repeat(deep);
        let close = ")".repeat(deep);
        for (text, expected) in [
            (format!("{open}b{close} = :s"), "redundant parentheses"),
            (format!("b = {open}:s{close}"), "redundant parentheses"),
            (format!("size({open}b{close}) = :n"), "redundant parentheses"),
            (format!("b = {open}:s"), "Syntax error"),
            (format!("{open}b{close}"), "Syntax error"),
            (format!("{open}attribute_exists(b){close}"), "redundant parentheses"),
        ] {
            let message = syntax_message(parse_condition(&text, ExpressionKind::Condition));
            assert!(message.contains(expected), "{:.40}: {message}", text);
        }
    }

    #[test]
    fn update_sections_parse_in_any_order() {
        let update =
            parse_update("remove a, b[1] SET c = :c + d, e = list_append(:l, e) ADD f :f delete g :g").expect("parses");
        assert_eq!(update.actions.len(), 6);
        assert!(update.repeated_sections.is_empty());
        let update = parse_update("SET a = :a SET b = :b").expect("parses");
        assert_eq!(update.repeated_sections, vec![Section::Set]);
        for text in [
            "SET",
            "SET a",
            "SET a = ",
            "ADD a b",
            "REMOVE",
            "a = :v",
            "SET a = :v,",
            "DELETE a",
        ] {
            let message = syntax_message(parse_update(text));
            assert!(message.contains("Syntax error"), "{text}: {message}");
        }
    }

    #[test]
    fn projections_are_lists_of_paths() {
        let paths = parse_projection("a, #b.c[3], d").expect("parses");
        assert_eq!(paths.len(), 3);
        assert_eq!(
            paths[1],
            RawPath(vec![
                RawElement::Name("#b"),
                RawElement::Identifier("c"),
                RawElement::Index(3)
            ])
        );
        for text in ["a,", ",a", "a b", ":v", "a.", "a[", "a[1"] {
            let message = syntax_message(parse_projection(text));
            assert!(message.contains("Syntax error"), "{text}: {message}");
        }
    }
}
