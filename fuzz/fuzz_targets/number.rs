//! `Number::parse` on arbitrary text: never panics; what it accepts prints and re-parses to the
//! same number, keeps its order-preserving encoding, and negation round-trips.
#![no_main]

use dynamo_protocol::Number;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(number) = Number::parse(text) else { return };
    let printed = number.to_string();
    let again = Number::parse(&printed).expect("a printed number parses");
    assert_eq!(again, number, "{text:?} printed as {printed:?}");
    let mut a = Vec::new();
    let mut b = Vec::new();
    number.encode_ordered(&mut a);
    again.encode_ordered(&mut b);
    assert_eq!(a, b);
    assert_eq!(number.negated().negated(), number);
    let _ = number.checked_add(&again);
    let _ = number.checked_sub(&again);
});
