//! A recursive-descent parser for the statements DynamoDB's PartiQL accepts:
//!
//! ```text
//! statement := select | insert | update | delete | EXISTS '(' select ')'     [';']
//! select    := SELECT ( '*' | path {',' path} ) FROM name ['.' name] [WHERE expr]
//!              [ORDER BY path [ASC|DESC] {',' path [ASC|DESC]}]
//! insert    := INSERT INTO name VALUE '{' 'key' ':' expr {',' 'key' ':' expr} '}'
//! update    := UPDATE name (SET path '=' expr {',' path '=' expr} | REMOVE path {',' path})+
//!              WHERE expr [returning]
//! delete    := DELETE FROM name WHERE expr [returning]
//! returning := RETURNING (ALL | MODIFIED) (OLD | NEW) '*'
//! expr      := or;  or := and {OR and};  and := not {AND not};  not := NOT not | predicate
//! predicate := sum [ (= | <> | != | < | <= | > | >=) sum | [NOT] BETWEEN sum AND sum
//!              | [NOT] IN (list | '(' expr {',' expr} ')') | IS [NOT] (MISSING | NULL) ]
//! sum       := primary {(+ | -) primary}
//! primary   := path | literal | '?' | name '(' [expr {',' expr}] ')' | '(' expr ')'
//!              | '[' ... ']' | '{' 'key' ':' expr ... '}' | '<<' ... '>>'
//! ```
//!
//! Nesting (parentheses, NOT, constructed values) is bounded by [`NESTING_MAX`], so hostile
//! input cannot exhaust the stack; every error is a `ValidationException` in DynamoDB's words
//! ("Statement wasn't well formed, can't be processed: ...").

use dynamo_protocol::ApiError;
use dynamo_protocol::value::ValueType;

use super::lexer::{Token, tokens};
use super::malformed;
use crate::expr::{Path, PathElement};

/// Deepest nesting of parentheses, NOT, and constructed values in one statement.
pub const NESTING_MAX: usize = 64;

/// Words that cannot be bare names: PartiQL's reserved keywords (SQL-92's and PartiQL's own, as
/// the PartiQL reference implementation that DynamoDB's PartiQL follows lists them), which
/// DynamoDB refuses unquoted ("Unexpected keyword"); quote them ("date") to use them as names.
/// Sorted: looked up by binary search.
const RESERVED: &[&str] = &[
    "absolute",
    "action",
    "add",
    "all",
    "allocate",
    "alter",
    "and",
    "any",
    "are",
    "as",
    "asc",
    "assertion",
    "at",
    "authorization",
    "avg",
    "bag",
    "begin",
    "between",
    "bigint",
    "bit",
    "bit_length",
    "blob",
    "bool",
    "boolean",
    "by",
    "can_cast",
    "can_lossless_cast",
    "cascade",
    "cascaded",
    "case",
    "cast",
    "catalog",
    "char",
    "char_length",
    "character",
    "character_length",
    "check",
    "clob",
    "close",
    "coalesce",
    "collate",
    "collation",
    "column",
    "commit",
    "conflict",
    "connect",
    "connection",
    "constraint",
    "constraints",
    "continue",
    "convert",
    "corresponding",
    "count",
    "create",
    "cross",
    "current",
    "current_date",
    "current_time",
    "current_timestamp",
    "current_user",
    "cursor",
    "date",
    "date_add",
    "date_diff",
    "deallocate",
    "dec",
    "decimal",
    "declare",
    "default",
    "deferrable",
    "deferred",
    "delete",
    "desc",
    "describe",
    "descriptor",
    "diagnostics",
    "disconnect",
    "distinct",
    "do",
    "domain",
    "double",
    "drop",
    "else",
    "end",
    "escape",
    "except",
    "exception",
    "exec",
    "execute",
    "exists",
    "external",
    "extract",
    "false",
    "fetch",
    "first",
    "float",
    "for",
    "foreign",
    "found",
    "from",
    "full",
    "get",
    "global",
    "go",
    "goto",
    "grant",
    "group",
    "having",
    "identity",
    "immediate",
    "in",
    "index",
    "indicator",
    "initially",
    "inner",
    "input",
    "insensitive",
    "insert",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "integer2",
    "integer4",
    "integer8",
    "intersect",
    "interval",
    "into",
    "is",
    "isolation",
    "join",
    "key",
    "language",
    "last",
    "left",
    "let",
    "level",
    "like",
    "limit",
    "list",
    "local",
    "lower",
    "match",
    "max",
    "min",
    "missing",
    "modified",
    "module",
    "names",
    "national",
    "natural",
    "nchar",
    "new",
    "next",
    "no",
    "not",
    "nothing",
    "null",
    "nullif",
    "numeric",
    "octet_length",
    "of",
    "offset",
    "old",
    "on",
    "only",
    "open",
    "option",
    "or",
    "order",
    "outer",
    "output",
    "overlaps",
    "pad",
    "partial",
    "pivot",
    "position",
    "precision",
    "prepare",
    "preserve",
    "primary",
    "prior",
    "privileges",
    "procedure",
    "public",
    "read",
    "real",
    "references",
    "relative",
    "remove",
    "replace",
    "restrict",
    "returning",
    "revoke",
    "right",
    "rollback",
    "rows",
    "schema",
    "scroll",
    "section",
    "select",
    "session",
    "session_user",
    "set",
    "sexp",
    "size",
    "smallint",
    "some",
    "space",
    "sql",
    "sqlcode",
    "sqlerror",
    "sqlstate",
    "string",
    "struct",
    "substring",
    "sum",
    "symbol",
    "system_user",
    "table",
    "temporary",
    "then",
    "time",
    "timestamp",
    "to",
    "transaction",
    "translate",
    "translation",
    "trim",
    "true",
    "tuple",
    "union",
    "unique",
    "unknown",
    "unpivot",
    "update",
    "upper",
    "upsert",
    "usage",
    "user",
    "using",
    "value",
    "values",
    "varchar",
    "varying",
    "view",
    "when",
    "whenever",
    "where",
    "with",
    "work",
    "write",
    "zone",
];

/// Whether `word` (any case) is reserved.
/// DynamoDB's refusal of a PartiQL type name IS does not take.
fn unsupported_is_type(name: &str) -> ApiError {
    ApiError::validation(format!(
        "Unsupported data type for IS operator: {name}. Supported data types are [MISSING, NULL, BOOLEAN, BLOB, STRING, NUMERIC, STRUCT, TUPLE, LIST]"
    ))
}

fn reserved(word: &str) -> bool {
    RESERVED.binary_search(&word.to_ascii_lowercase().as_str()).is_ok()
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Text(String),
    Number(String),
    Bool(bool),
    Null,
    /// `MISSING` where a value stands: DynamoDB refuses it everywhere but in `IS [NOT] MISSING`.
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Path(Path),
    Literal(Literal),
    /// The n-th `?` of the statement (from 0).
    Parameter(usize),
    List(Vec<Expr>),
    Map(Vec<(String, Expr)>),
    /// An INSERT's item: the `{...}` after VALUE (each attribute's value is a root of its own
    /// in DynamoDB's messages).
    Item(Vec<(String, Expr)>),
    Bag(Vec<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    Between(Box<Expr>, Box<Expr>, Box<Expr>),
    In(Box<Expr>, Vec<Expr>),
    IsMissing(Box<Expr>),
    IsNull(Box<Expr>),
    /// `IS BOOLEAN`, `IS STRING`, ...: whether the operand is of a DynamoDB type.
    IsType(Box<Expr>, ValueType),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// A function call, its name lower-cased.
    Call(String, Vec<Expr>),
    Plus(Box<Expr>, Box<Expr>),
    Minus(Box<Expr>, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Returning {
    AllOld,
    AllNew,
    ModifiedOld,
    ModifiedNew,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Assignment {
    Set(Path, Expr),
    Remove(Path),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Select {
    /// `None` for `*`.
    pub projection: Option<Vec<Path>>,
    pub table: String,
    pub index: Option<String>,
    pub condition: Option<Expr>,
    /// Paths with `true` for DESC.
    pub order_by: Vec<(Path, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Statement {
    Select(Select),
    Insert {
        table: String,
        value: Expr,
    },
    Update {
        table: String,
        assignments: Vec<Assignment>,
        condition: Expr,
        returning: Option<Returning>,
    },
    Delete {
        table: String,
        condition: Expr,
        returning: Option<Returning>,
    },
    /// `EXISTS(SELECT ...)`: a condition check, only inside ExecuteTransaction.
    Exists(Select),
}

/// A parsed statement and the number of `?` parameters it holds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Parsed {
    pub statement: Statement,
    pub parameters: usize,
}

pub(crate) fn parse(text: &str) -> Result<Parsed, ApiError> {
    let tokens = tokens(text)?;
    if tokens.is_empty() {
        return Err(malformed("Unexpected end of statement"));
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        parameters: 0,
        depth: 0,
    };
    let statement = parser.statement()?;
    if parser.peek_symbol(";") {
        parser.at += 1;
    }
    if parser.at < parser.tokens.len() {
        return Err(malformed("Unexpected token after expression"));
    }
    Ok(Parsed {
        statement,
        parameters: parser.parameters,
    })
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    parameters: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_word(&self, word: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(word))
    }

    fn peek_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.peek_word(word);
        if found {
            self.at += 1;
        }
        found
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        let found = self.peek_symbol(symbol);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_word(&mut self, word: &str) -> Result<(), ApiError> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("Expected {}", word.to_uppercase())))
        }
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), ApiError> {
        if self.eat_symbol(symbol) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("Expected '{symbol}'")))
        }
    }

    /// The error for the token at the cursor, or for the end of the statement.
    fn unexpected(&self, expected: &str) -> ApiError {
        match self.peek() {
            None => malformed("Unexpected term"),
            Some(Token::Word(word)) if reserved(word) => malformed("Unexpected keyword"),
            Some(_) => malformed(&format!("Unexpected token: {expected}")),
        }
    }

    fn enter(&mut self) -> Result<(), ApiError> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(malformed(&format!(
                "Statement nests deeper than {NESTING_MAX} levels of parentheses, NOT and values"
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn statement(&mut self) -> Result<Statement, ApiError> {
        if self.eat_word("select") {
            return self.select_body().map(Statement::Select);
        }
        if self.eat_word("insert") {
            self.expect_word("into")?;
            let table = self.name()?;
            if self.peek_symbol(".") {
                return Err(ApiError::validation(
                    "FROM clause may only contain a single table name in data manipulation statements",
                ));
            }
            if self.eat_word("as") || matches!(self.peek(), Some(Token::Word(w)) if !w.eq_ignore_ascii_case("value")) {
                return Err(malformed("Unexpected token after expression"));
            }
            self.expect_word("value")?;
            // DynamoDB takes the item as a literal `{...}` only (not a parameter, not a list).
            if !self.peek_symbol("{") {
                return Err(ApiError::validation(
                    "Unsupported format in item expression. Please use struct format {...} to express item values for insert statement.",
                ));
            }
            let value = match self.expr()? {
                Expr::Map(entries) => Expr::Item(entries),
                _ => return Err(malformed("Unexpected token after expression")),
            };
            if self.peek_word("returning") {
                return Err(ApiError::validation("RETURNING is not supported in INSERT"));
            }
            return Ok(Statement::Insert { table, value });
        }
        if self.eat_word("update") {
            let table = self.name()?;
            self.refuse_index()?;
            self.refuse_alias()?;
            let mut assignments = Vec::new();
            loop {
                if self.eat_word("set") {
                    loop {
                        let path = self.path()?;
                        self.expect_symbol("=")?;
                        assignments.push(Assignment::Set(path, self.expr()?));
                        if !self.eat_symbol(",") {
                            break;
                        }
                    }
                } else if self.eat_word("remove") {
                    loop {
                        assignments.push(Assignment::Remove(self.path()?));
                        if !self.eat_symbol(",") {
                            break;
                        }
                    }
                } else {
                    break;
                }
            }
            if assignments.is_empty() {
                return Err(self.unexpected("Expected SET or REMOVE"));
            }
            self.expect_where()?;
            let condition = self.expr()?;
            let returning = self.returning()?;
            return Ok(Statement::Update {
                table,
                assignments,
                condition,
                returning,
            });
        }
        if self.eat_word("delete") {
            self.expect_word("from")?;
            let table = self
                .name()
                .map_err(|_| malformed("Expected identifier for simple path"))?;
            self.refuse_index()?;
            self.refuse_alias()?;
            self.expect_where()?;
            let condition = self.expr()?;
            let returning = self.returning()?;
            return Ok(Statement::Delete {
                table,
                condition,
                returning,
            });
        }
        if self.eat_word("exists") {
            self.expect_symbol("(")?;
            self.expect_word("select")?;
            let select = self.select_body()?;
            self.expect_symbol(")")?;
            return Ok(Statement::Exists(select));
        }
        match self.peek() {
            Some(Token::Word(word)) => {
                let word = word.to_ascii_uppercase();
                if ["UPSERT", "REPLACE", "CREATE", "DROP", "ALTER", "BEGIN", "COMMIT"].contains(&word.as_str()) {
                    Err(ApiError::validation(format!("Unsupported operation: {word}")))
                } else {
                    Err(malformed("Expected data manipulation"))
                }
            }
            _ => Err(malformed("Expected data manipulation")),
        }
    }

    /// `"table"."index"` in UPDATE or DELETE: DynamoDB writes to tables only.
    fn refuse_index(&mut self) -> Result<(), ApiError> {
        if self.peek_symbol(".") {
            return Err(ApiError::validation("This operation is not supported on an index"));
        }
        Ok(())
    }

    /// The WHERE of an UPDATE or DELETE; a statement ending without one names no item, which
    /// DynamoDB answers as a WHERE clause without the key.
    fn expect_where(&mut self) -> Result<(), ApiError> {
        let ends = self.peek().is_none() || self.peek_symbol(";") || self.peek_word("returning");
        if ends {
            return Err(ApiError::validation(
                "Where clause does not contain a mandatory equality on all key attributes",
            ));
        }
        self.expect_word("where")
    }

    /// A table alias (`t` or `AS t` after the table name) is refused as DynamoDB refuses it.
    fn refuse_alias(&mut self) -> Result<(), ApiError> {
        match self.peek() {
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("as") || !reserved(word) => {
                Err(ApiError::validation("Aliasing is not supported"))
            }
            Some(Token::Quoted(_)) => Err(ApiError::validation("Aliasing is not supported")),
            _ => Ok(()),
        }
    }

    fn select_body(&mut self) -> Result<Select, ApiError> {
        let projection = if self.eat_symbol("*") {
            None
        } else {
            let mut paths = Vec::new();
            loop {
                if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("("))) {
                    return Err(ApiError::validation(
                        "Unsupported operation: functions and aggregates in the SELECT list; name attributes or document paths",
                    ));
                }
                paths.push(self.path()?);
                if self.peek_word("as") {
                    return Err(ApiError::validation("Aliasing is not supported"));
                }
                if !self.eat_symbol(",") {
                    break;
                }
            }
            Some(paths)
        };
        self.expect_word("from")?;
        let table = self.name()?;
        let index = if self.eat_symbol(".") { Some(self.name()?) } else { None };
        self.refuse_alias()?;
        let condition = if self.eat_word("where") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.eat_word("order") {
            self.expect_word("by")?;
            if condition.is_none() {
                return Err(ApiError::validation(
                    "Must have WHERE clause in the statement when using ORDER BY clause.",
                ));
            }
            loop {
                let path = self.path()?;
                if path.0.len() > 1 {
                    return Err(ApiError::validation(
                        "Argument to ORDER BY must be of type VariableReference. Type: PATH",
                    ));
                }
                let descending = if self.eat_word("desc") {
                    true
                } else {
                    self.eat_word("asc");
                    false
                };
                order_by.push((path, descending));
                if !self.eat_symbol(",") {
                    break;
                }
            }
        }
        if self.peek_word("limit") {
            return Err(ApiError::validation("Unsupported clause: LIMIT"));
        }
        if self.peek_word("group") {
            return Err(ApiError::validation("Unsupported clause: GROUP BY"));
        }
        Ok(Select {
            projection,
            table,
            index,
            condition,
            order_by,
        })
    }

    fn returning(&mut self) -> Result<Option<Returning>, ApiError> {
        if !self.eat_word("returning") {
            return Ok(None);
        }
        let all = if self.eat_word("all") {
            true
        } else if self.eat_word("modified") {
            false
        } else {
            return Err(self.unexpected("Expected ALL or MODIFIED"));
        };
        let new = if self.eat_word("new") {
            true
        } else if self.eat_word("old") {
            false
        } else {
            return Err(self.unexpected("Expected OLD or NEW"));
        };
        if !self.eat_symbol("*") {
            return Err(ApiError::validation(
                "Expected '*' after ( MODIFIED | ALL ) ( NEW | OLD ) in RETURNING clause",
            ));
        }
        if self.peek_symbol(",") {
            return Err(ApiError::validation(
                "Invalid syntax with multiple returning elements in RETURNING clause",
            ));
        }
        Ok(Some(match (all, new) {
            (true, false) => Returning::AllOld,
            (true, true) => Returning::AllNew,
            (false, false) => Returning::ModifiedOld,
            (false, true) => Returning::ModifiedNew,
        }))
    }

    /// A table, index or attribute name: a bare word that is not a keyword, or a quoted name.
    fn name(&mut self) -> Result<String, ApiError> {
        match self.peek() {
            Some(Token::Quoted(name)) => {
                let name = name.clone();
                self.at += 1;
                Ok(name)
            }
            Some(Token::Word(word)) if !reserved(word) => {
                let word = word.clone();
                self.at += 1;
                Ok(word)
            }
            _ => Err(self.unexpected("Expected identifier")),
        }
    }

    fn path(&mut self) -> Result<Path, ApiError> {
        let mut elements = vec![PathElement::Attribute(self.name()?)];
        loop {
            if self.eat_symbol(".") {
                elements.push(PathElement::Attribute(self.name()?));
            } else if self.eat_symbol("[") {
                let index = match self.peek() {
                    Some(Token::Number(digits)) => digits
                        .parse::<usize>()
                        .map_err(|_| malformed(&format!("List index {digits} is not a whole number below 2^32")))?,
                    _ => return Err(self.unexpected("Expected a list index")),
                };
                self.at += 1;
                self.expect_symbol("]")?;
                elements.push(PathElement::Index(index));
            } else {
                break;
            }
            if elements.len() > crate::expr::PATH_ELEMENTS_MAX {
                return Err(malformed(&format!(
                    "A document path has more than {} elements",
                    crate::expr::PATH_ELEMENTS_MAX
                )));
            }
        }
        Ok(Path(elements))
    }

    pub(crate) fn expr(&mut self) -> Result<Expr, ApiError> {
        self.enter()?;
        let result = self.or();
        self.leave();
        result
    }

    fn or(&mut self) -> Result<Expr, ApiError> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            if self.peek().is_none() {
                return Err(malformed("Missing right-hand side expression of infix operator"));
            }
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ApiError> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            if self.peek().is_none() {
                return Err(malformed("Missing right-hand side expression of infix operator"));
            }
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ApiError> {
        if self.eat_word("not") {
            self.enter()?;
            let inner = self.not();
            self.leave();
            return Ok(Expr::Not(Box::new(inner?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, ApiError> {
        let left = self.sum()?;
        let comparator = match self.peek() {
            Some(Token::Symbol("=")) => Some(CompareOp::Eq),
            Some(Token::Symbol("<>" | "!=")) => Some(CompareOp::Ne),
            Some(Token::Symbol("<")) => Some(CompareOp::Lt),
            Some(Token::Symbol("<=")) => Some(CompareOp::Le),
            Some(Token::Symbol(">")) => Some(CompareOp::Gt),
            Some(Token::Symbol(">=")) => Some(CompareOp::Ge),
            _ => None,
        };
        if let Some(comparator) = comparator {
            self.at += 1;
            let right = self.sum()?;
            return Ok(Expr::Compare(comparator, Box::new(left), Box::new(right)));
        }
        let negated = self.peek_word("not")
            && self
                .tokens
                .get(self.at + 1)
                .is_some_and(|t| t.is_word("between") || t.is_word("in"));
        if negated {
            self.at += 1;
        }
        let wrap = |expr: Expr| if negated { Expr::Not(Box::new(expr)) } else { expr };
        if self.eat_word("between") {
            let low = self.sum()?;
            self.expect_word("and")?;
            let high = self.sum()?;
            return Ok(wrap(Expr::Between(Box::new(left), Box::new(low), Box::new(high))));
        }
        if self.eat_word("in") {
            let members = if self.eat_symbol("[") {
                self.list_members("]")?
            } else if self.eat_symbol("(") {
                self.list_members(")")?
            } else if matches!(self.peek(), Some(Token::Parameter)) {
                // A parameter is one value, not the list IN takes (`IN (?)` is a list of one).
                return Err(ApiError::validation(super::IN_SEQUENCE));
            } else {
                return Err(self.unexpected("Expected a list after IN"));
            };
            return Ok(wrap(Expr::In(Box::new(left), members)));
        }
        if self.eat_word("is") {
            let not = self.eat_word("not");
            let test = if self.eat_word("missing") {
                Expr::IsMissing(Box::new(left))
            } else if self.eat_word("null") {
                Expr::IsNull(Box::new(left))
            } else if let Some(Token::Word(word)) = self.peek() {
                let word = word.to_ascii_lowercase();
                let value_type = self.is_type(&word)?;
                self.at += 1;
                Expr::IsType(Box::new(left), value_type)
            } else {
                return Err(self.unexpected("Expected MISSING or NULL"));
            };
            return Ok(if not { Expr::Not(Box::new(test)) } else { test });
        }
        Ok(left)
    }

    /// The DynamoDB type a PartiQL type name after IS stands for (`word` in lower case; the
    /// parser stands on it). DynamoDB takes MISSING, NULL, BOOLEAN, BLOB, STRING, NUMERIC,
    /// STRUCT, TUPLE and LIST, and refuses PartiQL's other type names by name.
    fn is_type(&self, word: &str) -> Result<ValueType, ApiError> {
        let unsupported = match word {
            "boolean" | "bool" => return Ok(ValueType::Bool),
            "string" => return Ok(ValueType::S),
            "numeric" => return Ok(ValueType::N),
            "blob" => return Ok(ValueType::B),
            "list" => return Ok(ValueType::L),
            "struct" | "tuple" => return Ok(ValueType::M),
            "int" | "integer" => "INTEGER",
            "double" => "DOUBLE_PRECISION",
            "varchar" => "CHARACTER_VARYING",
            "char" | "character" if self.tokens.get(self.at + 1).is_some_and(|t| t.is_word("varying")) => {
                "CHARACTER_VARYING"
            }
            "char" | "character" => "CHARACTER",
            "decimal" | "float" | "real" | "smallint" | "bag" | "clob" | "symbol" | "sexp" | "timestamp" | "date"
            | "time" => return Err(unsupported_is_type(&word.to_ascii_uppercase())),
            _ => return Err(malformed("Expected type name")),
        };
        Err(unsupported_is_type(unsupported))
    }

    fn list_members(&mut self, close: &str) -> Result<Vec<Expr>, ApiError> {
        let mut members = Vec::new();
        if self.eat_symbol(close) {
            return Ok(members);
        }
        loop {
            members.push(self.expr()?);
            if self.eat_symbol(close) {
                return Ok(members);
            }
            self.expect_symbol(",")?;
        }
    }

    /// `a + b - c ...`: each operator nests the tree one level, so it counts toward the depth.
    fn sum(&mut self) -> Result<Expr, ApiError> {
        let mut left = self.primary()?;
        let mut operators = 0;
        let result = loop {
            let plus = if self.eat_symbol("+") {
                true
            } else if self.eat_symbol("-") {
                false
            } else {
                break Ok(left);
            };
            if let Err(error) = self.enter() {
                break Err(error);
            }
            operators += 1;
            let right = match self.primary() {
                Ok(right) => right,
                Err(error) => break Err(error),
            };
            left = if plus {
                Expr::Plus(Box::new(left), Box::new(right))
            } else {
                Expr::Minus(Box::new(left), Box::new(right))
            };
        };
        self.depth -= operators;
        result
    }

    fn primary(&mut self) -> Result<Expr, ApiError> {
        let Some(token) = self.peek().cloned() else {
            return Err(malformed("Unexpected term"));
        };
        match token {
            Token::Parameter => {
                self.at += 1;
                self.parameters += 1;
                Ok(Expr::Parameter(self.parameters - 1))
            }
            Token::Text(text) => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Text(text)))
            }
            Token::Number(number) => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Number(number)))
            }
            Token::Symbol("-") => {
                self.at += 1;
                match self.peek().cloned() {
                    Some(Token::Number(number)) => {
                        self.at += 1;
                        Ok(Expr::Literal(Literal::Number(format!("-{number}"))))
                    }
                    _ => Err(self.unexpected("Expected a number after '-'")),
                }
            }
            Token::Symbol("(") => {
                self.at += 1;
                let inner = self.expr()?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            Token::Symbol("[") => {
                self.at += 1;
                self.enter()?;
                let members = self.list_members("]");
                self.leave();
                Ok(Expr::List(members?))
            }
            Token::Symbol("<<") => {
                self.at += 1;
                self.enter()?;
                let members = self.list_members(">>");
                self.leave();
                Ok(Expr::Bag(members?))
            }
            Token::Symbol("{") => {
                self.at += 1;
                self.enter()?;
                let entries = self.map_entries();
                self.leave();
                Ok(Expr::Map(entries?))
            }
            Token::Word(word) => {
                let lower = word.to_ascii_lowercase();
                match lower.as_str() {
                    "true" | "false" => {
                        self.at += 1;
                        Ok(Expr::Literal(Literal::Bool(lower == "true")))
                    }
                    "null" => {
                        self.at += 1;
                        Ok(Expr::Literal(Literal::Null))
                    }
                    // A literal, not a function: `missing(x)` is not well formed.
                    "missing" if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("("))) => {
                        Err(malformed("Unexpected keyword"))
                    }
                    "missing" => {
                        self.at += 1;
                        Ok(Expr::Literal(Literal::Missing))
                    }
                    _ if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol("("))) => {
                        self.at += 2;
                        self.enter()?;
                        let arguments = self.list_members(")");
                        self.leave();
                        Ok(Expr::Call(lower, arguments?))
                    }
                    _ if reserved(&lower) => Err(self.unexpected("Expected an expression")),
                    _ => self.path().map(Expr::Path),
                }
            }
            Token::Quoted(_) => self.path().map(Expr::Path),
            Token::Symbol(_) => Err(malformed("Unexpected operator")),
        }
    }

    fn map_entries(&mut self) -> Result<Vec<(String, Expr)>, ApiError> {
        let mut entries = Vec::new();
        if self.eat_symbol("}") {
            return Ok(entries);
        }
        loop {
            let key = match self.peek() {
                Some(Token::Text(key)) => key.clone(),
                _ => return Err(self.unexpected("Expected a string as a map key")),
            };
            self.at += 1;
            self.expect_symbol(":")?;
            entries.push((key, self.expr()?));
            if self.eat_symbol("}") {
                return Ok(entries);
            }
            self.expect_symbol(",")?;
        }
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn the_reserved_words_are_sorted_and_any_case() {
        assert!(
            RESERVED.windows(2).all(|w| w[0] < w[1]),
            "RESERVED must stay sorted and unique"
        );
        for word in ["date", "VALUE", "Key", "user", "size", "count", "timestamp", "index"] {
            assert!(reserved(word), "{word}");
        }
        for word in ["name", "status", "pk", "begins_with", "attribute_exists"] {
            assert!(!reserved(word), "{word}");
        }
    }
}
