//! Every expression parser on arbitrary text, against fixed names and values: never panics,
//! refuses with a ValidationException, and what parses evaluates / applies / projects on a
//! sample item without panicking.
#![no_main]

use std::collections::HashMap;

use dynamo_protocol::{AttributeValue, ErrorKind, Item};
use libfuzzer_sys::fuzz_target;
use store::expr::{self, Context, ExpressionKind};

fn sample_item() -> Item {
    serde_json::from_str(
        r#"{"pk": {"S": "a"}, "n": {"N": "5"}, "s": {"S": "hello"}, "l": {"L": [{"N": "1"}, {"M": {"x": {"S": "y"}}}]},
            "m": {"M": {"a": {"M": {"b": {"N": "2"}}}}}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]},
            "b": {"B": "AAE="}, "t": {"BOOL": true}, "z": {"NULL": true}}"#,
    )
    .expect("the sample item is valid")
}

fuzz_target!(|input: (u8, &str)| {
    let (selector, text) = input;
    let names: HashMap<String, String> = [("#n", "n"), ("#s", "size"), ("#m", "m"), ("#pk", "pk")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    let values: HashMap<String, AttributeValue> = serde_json::from_str(
        r#"{":v": {"N": "1"}, ":s": {"S": "he"}, ":l": {"L": [{"N": "3"}]}, ":ss": {"SS": ["c"]}, ":t": {"S": "N"}}"#,
    )
    .expect("the sample values are valid");
    let context = Context::new(Some(&names), Some(&values));
    let mut item = sample_item();
    let outcome = match selector % 5 {
        0 => expr::parse_condition(text, &context, ExpressionKind::Condition).map(|c| {
            let _ = c.evaluate(&item);
        }),
        1 => expr::parse_condition(text, &context, ExpressionKind::Filter).map(|c| {
            let _ = c.evaluate(&item);
        }),
        2 => expr::parse_update(text, &context).map(|u| {
            let _ = u.target_paths();
            let _ = u.apply(&mut item);
        }),
        3 => expr::parse_projection(text, &context).map(|paths| {
            let _ = expr::project(&item, &paths);
        }),
        _ => expr::parse_key_condition(text, &context, 8).map(|_| ()),
    };
    if let Err(error) = outcome {
        assert_eq!(error.kind, ErrorKind::Validation, "{text:?}: {error}");
    }
});
