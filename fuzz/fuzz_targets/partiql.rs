//! PartiQL statements on arbitrary text: parsing and translation (conditions, keys, updates,
//! values) never panic and refuse with a ValidationException.
#![no_main]

use dynamo_protocol::{AttributeValue, ErrorKind};
use libfuzzer_sys::fuzz_target;
use store::catalog::{KeyAttribute, KeySchema, KeyType};

fuzz_target!(|text: &str| {
    let schema = KeySchema::simple(
        KeyAttribute { name: "pk".into(), value_type: KeyType::S },
        Some(KeyAttribute { name: "sk".into(), value_type: KeyType::N }),
    );
    let parameters = vec![AttributeValue::S("p".into()); 4];
    if let Err(error) = store::partiql::check_statement(text, &parameters, &schema) {
        assert_eq!(error.kind, ErrorKind::Validation, "{text:?}: {error}");
    }
});
