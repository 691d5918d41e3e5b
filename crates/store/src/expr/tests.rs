//! Tests of parsing and evaluating whole expressions, including the proptest fuzzers of every
//! parser (the same entry points as the cargo-fuzz target `fuzz/fuzz_targets/expression.rs`):
//! arbitrary text never panics, is refused with a ValidationException, and what parses
//! evaluates, applies and projects without panicking.

use std::collections::HashMap;

use dynamo_protocol::{AttributeValue, ErrorKind, Item};
use proptest::prelude::*;

use super::*;

fn item(json: &str) -> Item {
    serde_json::from_str(json).expect("test item is valid")
}

fn sample_item() -> Item {
    item(
        r#"{"pk": {"S": "a"}, "n": {"N": "5"}, "s": {"S": "hello"}, "l": {"L": [{"N": "1"}, {"M": {"x": {"S": "y"}}}]},
            "m": {"M": {"a": {"M": {"b": {"N": "2"}}}}}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]},
            "b": {"B": "AAE="}, "t": {"BOOL": true}, "z": {"NULL": true}}"#,
    )
}

fn names() -> HashMap<String, String> {
    [("#n", "n"), ("#s", "size"), ("#m", "m"), ("#pk", "pk")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
}

fn values() -> HashMap<String, AttributeValue> {
    serde_json::from_str(
        r#"{":v": {"N": "1"}, ":s": {"S": "he"}, ":l": {"L": [{"N": "3"}]}, ":ss": {"SS": ["c"]}, ":t": {"S": "N"},
            ":big": {"N": "9.9999999999999999999999999999999999999E+125"}}"#,
    )
    .expect("test values are valid")
}

/// Parses `text` as `kind`, and uses what parsed on the sample item.
fn exercise(kind: u8, text: &str) -> Result<(), ApiError> {
    let (names, values) = (names(), values());
    let context = Context::new(Some(&names), Some(&values));
    let mut item = sample_item();
    match kind % 5 {
        0 => parse_condition(text, &context, ExpressionKind::Condition).map(|c| {
            let _ = c.evaluate(&item);
        }),
        1 => parse_condition(text, &context, ExpressionKind::Filter).map(|c| {
            let _ = c.evaluate(&item);
        }),
        2 => parse_update(text, &context).map(|u| {
            let _ = u.target_paths();
            let _ = u.apply(&mut item);
        }),
        3 => parse_projection(text, &context).map(|paths| {
            let _ = project(&item, &paths);
        }),
        _ => parse_key_condition(text, &context, 2).map(|_| ()),
    }
}

fn assert_refused_or_ok(kind: u8, text: &str) {
    if let Err(error) = exercise(kind, text) {
        assert_eq!(error.kind, ErrorKind::Validation, "{text:?}: {error}");
        assert!(!error.message.is_empty());
    }
}

#[test]
fn hostile_nesting_never_exhausts_the_stack() {
    for kind in 0..5 {
        for text in [
            "(".repeat(4000),
            format!("{}a = :v{}", "(".repeat(2000), ")".repeat(2000)),
            "NOT ".repeat(1000) + "a = :v",
            "a".to_string() + &".a".repeat(2000),
            "a".to_string() + &"[0]".repeat(1000),
            format!("SET a = {}:v{}", "list_append(".repeat(500), ", :l)".repeat(500)),
            format!("size({}a{})", "size(".repeat(600), ")".repeat(600)),
            format!("{}a = :v", "a = :v AND ".repeat(350)),
        ] {
            // Redundant parentheses are not operators, so balanced ones within 4 KB may parse;
            // everything else here breaks a limit. Either way: an answer, not a crash.
            assert_refused_or_ok(kind, &text);
        }
        for text in [
            "(".repeat(4000),
            "NOT ".repeat(1000) + "a = :v",
            "a".to_string() + &".a".repeat(2000),
        ] {
            assert!(
                exercise(kind, &text).is_err(),
                "kind {kind}: {}... was accepted",
                &text[..40]
            );
        }
    }
}

#[test]
fn in_takes_up_to_100_values_and_names_the_count_past_it() {
    let values: HashMap<String, AttributeValue> = (0..101)
        .map(|i| {
            let value = serde_json::from_str(&format!(r#"{{"N": "{i}"}}"#)).expect("a number");
            (format!(":a{i}"), value)
        })
        .collect();
    let context = Context::new(None, Some(&values));
    let list = |n: usize| (0..n).map(|i| format!(":a{i}")).collect::<Vec<_>>().join(", ");
    let hundred = format!("n IN ({})", list(100));
    let context_100 = {
        let subset: HashMap<String, AttributeValue> = values
            .iter()
            .filter(|(k, _)| k.as_str() != ":a100")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        subset
    };
    let context_100 = Context::new(None, Some(&context_100));
    assert!(parse_condition(&hundred, &context_100, ExpressionKind::Condition).is_ok());
    let error =
        parse_condition(&format!("n IN ({})", list(101)), &context, ExpressionKind::Condition).expect_err("101 values");
    assert!(
        error
            .message
            .ends_with("The IN operator is provided with too many operands; number of operands: 101"),
        "{}",
        error.message
    );
}

#[test]
fn arithmetic_overflow_in_an_update_is_a_validation_error() {
    let (names, values) = (names(), values());
    let context = Context::new(Some(&names), Some(&values));
    let update = parse_update("SET n = :big + :big", &context).expect("parses");
    let mut item = sample_item();
    let error = update.apply(&mut item).expect_err("the sum exceeds 38 digits of range");
    assert_eq!(error.kind, ErrorKind::Validation);
}

const TOKENS: &[&str] = &[
    "a",
    "n",
    "s",
    "l",
    "m",
    "pk",
    "#n",
    "#s",
    "#m",
    "#pk",
    "#undefined",
    ":v",
    ":s",
    ":l",
    ":ss",
    ":t",
    ":big",
    ":undefined",
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "(",
    ")",
    "[",
    "]",
    "[0]",
    "[1]",
    "[99999999999]",
    ".",
    ",",
    "+",
    "-",
    "AND",
    "OR",
    "NOT",
    "BETWEEN",
    "IN",
    "SET",
    "REMOVE",
    "ADD",
    "DELETE",
    "size",
    "attribute_exists",
    "attribute_not_exists",
    "attribute_type",
    "begins_with",
    "contains",
    "if_not_exists",
    "list_append",
    "name",
    "l[0]",
    "m.a.b",
    "l[1].x",
    " ",
    "  ",
    "\t",
    "\u{e9}",
    "\u{1F600}",
    "0",
    "-1",
    "\"",
    "'",
    "`",
    ":",
    "#",
];

fn token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..24).prop_map(|tokens| tokens.join(" "))
}

fn glued_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..24).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(kind in 0u8..5, text in token_soup()) {
        assert_refused_or_ok(kind, &text);
    }

    #[test]
    fn glued_tokens_never_panic(kind in 0u8..5, text in glued_soup()) {
        assert_refused_or_ok(kind, &text);
    }

    #[test]
    fn arbitrary_text_never_panics(kind in 0u8..5, text in "\\PC{0,64}") {
        assert_refused_or_ok(kind, &text);
    }

    #[test]
    fn well_formed_conditions_evaluate(
        left in proptest::sample::select(&["n", "s", "l[0]", "m.a.b", "#n", "size(s)", "nothing"][..]),
        operator in proptest::sample::select(&["=", "<>", "<", "<=", ">", ">="][..]),
        right in proptest::sample::select(&[":v", ":s", "l[1].x", "size(l)"][..]),
        negate in any::<bool>(),
    ) {
        let text = format!("{}{left} {operator} {right}", if negate { "NOT " } else { "" });
        let (names, values) = (names(), values());
        let context = Context::new(Some(&names), Some(&values));
        let condition = parse_condition(&text, &context, ExpressionKind::Condition);
        prop_assert!(condition.is_ok(), "{text}: {:?}", condition.err());
        if let Ok(condition) = condition {
            // Comparing different types is false, not an error; a missing attribute is false.
            prop_assert!(condition.evaluate(&sample_item()).is_ok(), "{}", text);
        }
    }
}
