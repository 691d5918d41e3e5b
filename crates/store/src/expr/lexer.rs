//! Splits expression text into tokens. Every character ends up in some token (unknown ones in a
//! one-character `Unknown` token), so the parser can report any mistake as DynamoDB does:
//! `Syntax error; token: "<token>", near: "<neighbourhood>"`.

use super::ast::Comparator;

/// The kinds of tokens; keywords are identifiers the parser recognises by their text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `[A-Za-z_][A-Za-z0-9_]*`: attribute names, function names, keywords.
    Identifier,
    /// `#` followed by word characters: an expression attribute name.
    Name,
    /// `:` followed by word characters: an expression attribute value.
    Value,
    /// Decimal digits: only valid as a list index.
    Integer,
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
    Comma,
    Dot,
    /// `=`, `<>`, `<`, `<=`, `>`, `>=`.
    Compare(Comparator),
    Plus,
    Minus,
    /// A character that starts no token.
    Unknown,
    /// End of input; its text is empty.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'t> {
    pub kind: TokenKind,
    pub text: &'t str,
    /// Byte offset of the token in the expression.
    pub start: usize,
}

impl Token<'_> {
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// Whether the token is the keyword `word` (keywords ignore case).
    pub fn is_keyword(&self, word: &str) -> bool {
        self.kind == TokenKind::Identifier && self.text.eq_ignore_ascii_case(word)
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Tokenizes `text`; the last token is always `End`.
pub(crate) fn tokenize(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let byte = bytes[position];
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            position += 1;
            continue;
        }
        let start = position;
        let word_end = |from: usize| {
            (from..bytes.len())
                .find(|&i| !is_word_byte(bytes[i]))
                .unwrap_or(bytes.len())
        };
        let (kind, end) = match byte {
            // Names start with a letter (DynamoDB: `Syntax error; token: "_"` for `_a`); an
            // underscore or digit may follow.
            b'a'..=b'z' | b'A'..=b'Z' => (TokenKind::Identifier, word_end(start)),
            b'0'..=b'9' => {
                let end = (start..bytes.len())
                    .find(|&i| !bytes[i].is_ascii_digit())
                    .unwrap_or(bytes.len());
                (TokenKind::Integer, end)
            }
            b'#' | b':' => {
                let end = word_end(start + 1);
                if end == start + 1 {
                    (TokenKind::Unknown, end)
                } else if byte == b'#' {
                    (TokenKind::Name, end)
                } else {
                    (TokenKind::Value, end)
                }
            }
            b'(' => (TokenKind::LeftParen, start + 1),
            b')' => (TokenKind::RightParen, start + 1),
            b'[' => (TokenKind::LeftBracket, start + 1),
            b']' => (TokenKind::RightBracket, start + 1),
            b',' => (TokenKind::Comma, start + 1),
            b'.' => (TokenKind::Dot, start + 1),
            b'=' => (TokenKind::Compare(Comparator::Equal), start + 1),
            b'+' => (TokenKind::Plus, start + 1),
            b'-' => (TokenKind::Minus, start + 1),
            b'<' => match bytes.get(start + 1) {
                Some(b'=') => (TokenKind::Compare(Comparator::LessOrEqual), start + 2),
                Some(b'>') => (TokenKind::Compare(Comparator::NotEqual), start + 2),
                _ => (TokenKind::Compare(Comparator::Less), start + 1),
            },
            b'>' => match bytes.get(start + 1) {
                Some(b'=') => (TokenKind::Compare(Comparator::GreaterOrEqual), start + 2),
                _ => (TokenKind::Compare(Comparator::Greater), start + 1),
            },
            _ => {
                // One whole (possibly multi-byte) character.
                let length = text[start..].chars().next().map_or(1, char::len_utf8);
                (TokenKind::Unknown, start + length)
            }
        };
        tokens.push(Token {
            kind,
            text: &text[start..end],
            start,
        });
        position = end;
    }
    tokens.push(Token {
        kind: TokenKind::End,
        text: "",
        start: text.len(),
    });
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(TokenKind, &str)> {
        tokenize(text).into_iter().map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn splits_every_token_kind() {
        use TokenKind::*;
        assert_eq!(
            kinds("a.#b[10] <> :v_1,(<=>=<>)+-"),
            vec![
                (Identifier, "a"),
                (Dot, "."),
                (Name, "#b"),
                (LeftBracket, "["),
                (Integer, "10"),
                (RightBracket, "]"),
                (Compare(Comparator::NotEqual), "<>"),
                (Value, ":v_1"),
                (Comma, ","),
                (LeftParen, "("),
                (Compare(Comparator::LessOrEqual), "<="),
                (Compare(Comparator::GreaterOrEqual), ">="),
                (Compare(Comparator::NotEqual), "<>"),
                (RightParen, ")"),
                (Plus, "+"),
                (Minus, "-"),
                (End, ""),
            ]
        );
    }

    #[test]
    fn unknown_characters_are_single_tokens() {
        use TokenKind::*;
        assert_eq!(kinds("#"), vec![(Unknown, "#"), (End, "")]);
        assert_eq!(kinds("é!"), vec![(Unknown, "é"), (Unknown, "!"), (End, "")]);
        assert_eq!(kinds("a:b"), vec![(Identifier, "a"), (Value, ":b"), (End, "")]);
        assert_eq!(kinds(" \t\r\n"), vec![(End, "")]);
    }

    #[test]
    fn keywords_ignore_case() {
        let tokens = tokenize("aNd");
        assert!(tokens[0].is_keyword("AND"));
        assert!(!tokens[0].is_keyword("OR"));
    }
}
