//! Tokens of DynamoDB's PartiQL dialect: keywords and names (bare, case-insensitive; or in
//! double quotes, case-sensitive), string literals in single quotes, numbers, `?` parameters,
//! punctuation and the bag brackets `<<` `>>`. Comments (`--` to the end of the line and
//! `/* ... */`) are skipped. Pure and bounded: one pass over at most
//! [`STATEMENT_BYTES_MAX`](super::STATEMENT_BYTES_MAX) bytes, never panics.

use super::malformed;
use dynamo_protocol::ApiError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Token {
    /// A bare word: a keyword or a name, as written.
    Word(String),
    /// A name in double quotes (`""` inside stands for one quote).
    Quoted(String),
    /// A string literal in single quotes (`''` inside stands for one quote).
    Text(String),
    /// A number literal, as written.
    Number(String),
    Parameter,
    Symbol(&'static str),
}

impl Token {
    /// Whether this is the bare keyword `word` (any case).
    pub(crate) fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

const SYMBOLS: [&str; 20] = [
    "<<", ">>", "<=", ">=", "<>", "!=", "||", "(", ")", "[", "]", "{", "}", ",", ".", ":", ";", "*", "=", "?",
];
const SINGLE: [&str; 5] = ["<", ">", "+", "-", "/"];

pub(crate) fn tokens(text: &str) -> Result<Vec<Token>, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte.is_ascii_whitespace() {
            at += 1;
            continue;
        }
        if text[at..].starts_with("--") {
            at = text[at..].find('\n').map_or(bytes.len(), |end| at + end + 1);
            continue;
        }
        if text[at..].starts_with("/*") {
            let end = text[at + 2..]
                .find("*/")
                .ok_or_else(|| malformed(&format!("Unterminated comment at {}", column(text, at))))?;
            at += 2 + end + 2;
            continue;
        }
        match byte {
            b'\'' | b'"' => {
                let (value, next) = quoted(text, at, byte as char)?;
                out.push(if byte == b'\'' {
                    Token::Text(value)
                } else {
                    Token::Quoted(value)
                });
                at = next;
            }
            b'0'..=b'9' => {
                let (number, next) = number(text, at);
                out.push(Token::Number(number));
                at = next;
            }
            b'.' if bytes.get(at + 1).is_some_and(u8::is_ascii_digit) => {
                let (number, next) = number(text, at);
                out.push(Token::Number(number));
                at = next;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' => {
                let end = text[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                    .map_or(bytes.len(), |end| at + end);
                out.push(Token::Word(text[at..end].to_string()));
                at = end;
            }
            b'?' => {
                out.push(Token::Parameter);
                at += 1;
            }
            _ => {
                let symbol = SYMBOLS
                    .iter()
                    .chain(SINGLE.iter())
                    .find(|symbol| text[at..].starts_with(**symbol))
                    .ok_or_else(|| {
                        let found = text[at..].chars().next().unwrap_or(' ');
                        malformed(&format!("Invalid character {found:?} at {}", column(text, at)))
                    })?;
                out.push(Token::Symbol(symbol));
                at += symbol.len();
            }
        }
    }
    Ok(out)
}

/// A quoted literal starting at `start`; the doubled quote stands for one.
fn quoted(text: &str, start: usize, quote: char) -> Result<(String, usize), ApiError> {
    let mut value = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        if c != quote {
            value.push(c);
            continue;
        }
        let after = start + 1 + offset + 1;
        if text[after..].starts_with(quote) {
            value.push(quote);
            chars.next();
        } else {
            return Ok((value, after));
        }
    }
    let what = if quote == '\'' {
        "string literal"
    } else {
        "quoted identifier"
    };
    Err(malformed(&format!(
        "Unterminated {what} starting at {}",
        column(text, start)
    )))
}

/// Where byte offset `at` of `text` is, for a message: `column C` (1-based, in characters) on a
/// statement's first line, `line L, column C` past it.
fn column(text: &str, at: usize) -> String {
    let before = text.get(..at).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    match before.matches('\n').count() {
        0 => format!("column {column}"),
        lines => format!("line {}, column {column}", lines + 1),
    }
}

/// Digits, an optional fraction and an optional exponent.
fn number(text: &str, start: usize) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut at = start;
    while at < bytes.len() && bytes[at].is_ascii_digit() {
        at += 1;
    }
    if at < bytes.len() && bytes[at] == b'.' && bytes.get(at + 1).is_none_or(|b| !b.is_ascii_alphabetic()) {
        at += 1;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
    }
    if at < bytes.len() && (bytes[at] == b'e' || bytes[at] == b'E') {
        let mut end = at + 1;
        if end < bytes.len() && (bytes[end] == b'+' || bytes[end] == b'-') {
            end += 1;
        }
        if end < bytes.len() && bytes[end].is_ascii_digit() {
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            at = end;
        }
    }
    (text[start..at].to_string(), at)
}
