//! Attribute values as DynamoDB puts them on the wire (`{"S": "..."}`, `{"N": "1.5"}`, ...).
//!
//! Deserialisation separates two kinds of mistakes, because clients see them as different
//! errors: a JSON shape that is wrong for the type (`{"S": 1}`) is a serde error that the request
//! decoder reports as `SerializationException`; a well-typed value that DynamoDB refuses
//! (`{}`, an empty set, a duplicate in a set, `{"NULL": false}`) carries the
//! [`VALIDATION_MARKER`] prefix and becomes a `ValidationException`.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::number::Number;

/// An item: attribute name → value. Ordered so that encodings and digests are deterministic.
pub type Item = BTreeMap<String, AttributeValue>;

/// Serde error messages that start with this are validation errors, not shape errors.
pub const VALIDATION_MARKER: &str = "\u{1}validation:";

/// Deepest nesting of maps and lists DynamoDB accepts in an attribute value.
pub const NESTING_DEPTH_MAX: usize = 32;

/// A DynamoDB attribute value. Sets are kept sorted and free of duplicates, so two equal sets
/// are structurally equal whatever order the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    S(String),
    N(Number),
    B(Vec<u8>),
    Bool(bool),
    Null,
    M(Item),
    L(Vec<AttributeValue>),
    Ss(Vec<String>),
    Ns(Vec<Number>),
    Bs(Vec<Vec<u8>>),
}

/// The type descriptors of DynamoDB (`S`, `N`, ...), as used by `attribute_type` and key schemas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueType {
    S,
    N,
    B,
    Bool,
    Null,
    M,
    L,
    Ss,
    Ns,
    Bs,
}

impl ValueType {
    pub fn descriptor(self) -> &'static str {
        match self {
            ValueType::S => "S",
            ValueType::N => "N",
            ValueType::B => "B",
            ValueType::Bool => "BOOL",
            ValueType::Null => "NULL",
            ValueType::M => "M",
            ValueType::L => "L",
            ValueType::Ss => "SS",
            ValueType::Ns => "NS",
            ValueType::Bs => "BS",
        }
    }

    pub fn from_descriptor(text: &str) -> Option<ValueType> {
        Some(match text {
            "S" => ValueType::S,
            "N" => ValueType::N,
            "B" => ValueType::B,
            "BOOL" => ValueType::Bool,
            "NULL" => ValueType::Null,
            "M" => ValueType::M,
            "L" => ValueType::L,
            "SS" => ValueType::Ss,
            "NS" => ValueType::Ns,
            "BS" => ValueType::Bs,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.descriptor())
    }
}

impl AttributeValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            AttributeValue::S(_) => ValueType::S,
            AttributeValue::N(_) => ValueType::N,
            AttributeValue::B(_) => ValueType::B,
            AttributeValue::Bool(_) => ValueType::Bool,
            AttributeValue::Null => ValueType::Null,
            AttributeValue::M(_) => ValueType::M,
            AttributeValue::L(_) => ValueType::L,
            AttributeValue::Ss(_) => ValueType::Ss,
            AttributeValue::Ns(_) => ValueType::Ns,
            AttributeValue::Bs(_) => ValueType::Bs,
        }
    }

    /// Size in bytes as DynamoDB counts it toward the 400 KB item limit and capacity units
    /// (the attribute name is counted by the caller).
    pub fn size_bytes(&self) -> usize {
        match self {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.size_bytes(),
            AttributeValue::B(b) => b.len(),
            AttributeValue::Bool(_) | AttributeValue::Null => 1,
            AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + v.size_bytes()).sum::<usize>(),
            AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + v.size_bytes()).sum::<usize>(),
            AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
            AttributeValue::Ns(n) => n.iter().map(Number::size_bytes).sum(),
            AttributeValue::Bs(b) => b.iter().map(Vec::len).sum(),
        }
    }

    /// Depth of nested maps and lists; a scalar has depth 0.
    pub fn nesting_depth(&self) -> usize {
        match self {
            AttributeValue::M(m) => 1 + m.values().map(Self::nesting_depth).max().unwrap_or(0),
            AttributeValue::L(l) => 1 + l.iter().map(Self::nesting_depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}

/// Size of a whole item as DynamoDB counts it: names plus values.
pub fn item_size_bytes(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + v.size_bytes()).sum()
}

/// Sorts and checks a set for duplicates; DynamoDB rejects sets with repeated members, in its
/// words for each kind: a string set's members are listed ("Input collection [a, a] contains
/// duplicates."), a binary set's in base64 ("Input collection [Yg==, Yg==]of type BS contains
/// duplicates."), a number set's message has no prefix ("Input collection contains duplicates").
fn canonical_set<T: Ord, E: de::Error>(
    mut members: Vec<T>,
    kind: &str,
    listed: impl FnOnce(&[T]) -> Option<String>,
) -> Result<Vec<T>, E> {
    if members.is_empty() {
        return Err(E::custom(format!(
            "{VALIDATION_MARKER}One or more parameter values were invalid: An {kind} set  may not be empty"
        )));
    }
    // Duplicates are looked for on a sorted view, so the members are listed as sent (the
    // listing is built only for a refusal: a valid set pays a sort of references).
    let mut view: Vec<&T> = members.iter().collect();
    view.sort();
    if view.windows(2).any(|w| w[0] == w[1]) {
        return Err(E::custom(match (kind, listed(&members)) {
            // DynamoDB's words, its missing space included.
            ("binary", Some(listed)) => format!(
                "{VALIDATION_MARKER}One or more parameter values were invalid: Input collection [{listed}]of type BS contains duplicates."
            ),
            (_, Some(listed)) => format!(
                "{VALIDATION_MARKER}One or more parameter values were invalid: Input collection [{listed}] contains duplicates."
            ),
            ("number", None) => format!("{VALIDATION_MARKER}Input collection contains duplicates"),
            _ => format!(
                "{VALIDATION_MARKER}One or more parameter values were invalid: Input collection contains duplicates"
            ),
        }));
    }
    drop(view);
    members.sort();
    Ok(members)
}

/// Builds a set value after checking it, for code that assembles sets (ADD, DELETE).
pub fn string_set(members: Vec<String>) -> Result<AttributeValue, String> {
    canonical_set::<_, serde_json::Error>(members, "string", |m: &[String]| Some(m.join(", ")))
        .map(AttributeValue::Ss)
        .map_err(|e| strip_marker(&e.to_string()).to_string())
}

pub fn number_set(members: Vec<Number>) -> Result<AttributeValue, String> {
    canonical_set::<_, serde_json::Error>(members, "number", |_| None)
        .map(AttributeValue::Ns)
        .map_err(|e| strip_marker(&e.to_string()).to_string())
}

pub fn binary_set(members: Vec<Vec<u8>>) -> Result<AttributeValue, String> {
    canonical_set::<_, serde_json::Error>(members, "binary", |_| None)
        .map(AttributeValue::Bs)
        .map_err(|e| strip_marker(&e.to_string()).to_string())
}

/// Removes the validation marker (and serde's position suffix) from an error message.
pub fn strip_marker(message: &str) -> &str {
    let message = message.strip_prefix(VALIDATION_MARKER).unwrap_or(message);
    match message.find(" at line ") {
        Some(index) => &message[..index],
        None => message,
    }
}

struct Base64Bytes<'a>(&'a [u8]);

impl Serialize for Base64Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(self.0))
    }
}

struct NumberText<'a>(&'a Number);

impl Serialize for NumberText<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

struct NumberSet<'a>(&'a [Number]);

impl Serialize for NumberSet<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for member in self.0 {
            seq.serialize_element(&NumberText(member))?;
        }
        seq.end()
    }
}

struct BinarySet<'a>(&'a [Vec<u8>]);

impl Serialize for BinarySet<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for member in self.0 {
            seq.serialize_element(&Base64Bytes(member))?;
        }
        seq.end()
    }
}

impl Serialize for AttributeValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            AttributeValue::S(s) => map.serialize_entry("S", s)?,
            AttributeValue::N(n) => map.serialize_entry("N", &NumberText(n))?,
            AttributeValue::B(b) => map.serialize_entry("B", &Base64Bytes(b))?,
            AttributeValue::Bool(b) => map.serialize_entry("BOOL", b)?,
            AttributeValue::Null => map.serialize_entry("NULL", &true)?,
            AttributeValue::M(m) => map.serialize_entry("M", m)?,
            AttributeValue::L(l) => map.serialize_entry("L", l)?,
            AttributeValue::Ss(s) => map.serialize_entry("SS", s)?,
            AttributeValue::Ns(n) => map.serialize_entry("NS", &NumberSet(n))?,
            AttributeValue::Bs(b) => map.serialize_entry("BS", &BinarySet(b))?,
        }
        map.end()
    }
}

fn validation<E: de::Error>(message: &str) -> E {
    E::custom(format!("{VALIDATION_MARKER}{message}"))
}

/// Longest piece of a refused number quoted back in the error.
const NUMBER_QUOTED_CHARS_MAX: usize = 128;

fn parse_number<E: de::Error>(text: &str) -> Result<Number, E> {
    Number::parse(text).map_err(|e| match e {
        // DynamoDB quotes what it could not read (not an empty string), bounded here.
        crate::number::NumberError::NotANumber if !text.is_empty() => {
            let quoted: String = text.chars().take(NUMBER_QUOTED_CHARS_MAX).collect();
            validation(&format!("{e}: {quoted}"))
        }
        _ => validation(&e.to_string()),
    })
}

/// DynamoDB's limit on "the sum of the lengths of all ExpressionAttributeNames and
/// ExpressionAttributeValues" of a request, in bytes (2 MB): each placeholder's bytes, and each
/// name's bytes or each value's size as an item counts it.
pub const SUBSTITUTIONS_BYTES_MAX: usize = 2 * 1024 * 1024;

/// The refusal of substitution variables past [`SUBSTITUTIONS_BYTES_MAX`].
pub fn substitutions_too_large_message(parameters: &str, bytes: usize) -> String {
    format!(
        "{parameters} exceed the maximum length of all substitution variables in an expression: {bytes} bytes or more, above {SUBSTITUTIONS_BYTES_MAX} (placeholders, names and values together); give each expression only the placeholders it uses"
    )
}

/// `ExpressionAttributeValues` as a request carries them: a value DynamoDB refuses is named
/// with its placeholder, in DynamoDB's words (`ExpressionAttributeValues contains invalid value:
/// PROBLEM for key :v`). Use with `#[serde(default, deserialize_with = ...)]`.
///
/// Read within [`SUBSTITUTIONS_BYTES_MAX`]: a map past it is refused as soon as its entries
/// pass it, so a hostile body of hundreds of thousands of placeholders is never built whole
/// (each entry decodes to several times its bytes).
pub fn expression_attribute_values<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::collections::HashMap<String, AttributeValue>>, D::Error> {
    struct Values(std::collections::HashMap<String, AttributeValue>);
    struct ValuesVisitor;
    impl<'de> Visitor<'de> for ValuesVisitor {
        type Value = Values;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of placeholders to attribute values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
            let mut values = std::collections::HashMap::new();
            let mut bytes = 0usize;
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value::<AttributeValue>().map_err(|error| {
                    let text = error.to_string();
                    if text.starts_with(VALIDATION_MARKER) {
                        validation(&format!(
                            "ExpressionAttributeValues contains invalid value: {} for key {key}",
                            strip_marker(&text)
                        ))
                    } else {
                        error
                    }
                })?;
                bytes = bytes.saturating_add(key.len()).saturating_add(value.size_bytes());
                if bytes > SUBSTITUTIONS_BYTES_MAX {
                    return Err(validation(&substitutions_too_large_message(
                        "ExpressionAttributeValues",
                        bytes,
                    )));
                }
                values.insert(key, value);
            }
            Ok(Values(values))
        }
    }
    impl<'de> Deserialize<'de> for Values {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(ValuesVisitor)
        }
    }
    Ok(Option::<Values>::deserialize(deserializer)?.map(|values| values.0))
}

/// `ExpressionAttributeNames` as a request carries them, read within
/// [`SUBSTITUTIONS_BYTES_MAX`] (see [`expression_attribute_values`]). Use with
/// `#[serde(default, deserialize_with = ...)]`.
pub fn expression_attribute_names<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::collections::HashMap<String, String>>, D::Error> {
    map_within(
        deserializer,
        "ExpressionAttributeNames",
        SUBSTITUTIONS_BYTES_MAX,
        |key, name: &String| key.len() + name.len(),
        |bytes| substitutions_too_large_message("ExpressionAttributeNames", bytes),
    )
}

/// An optional map (`null` or absent: `None`) decoded entry by entry and refused, with a
/// ValidationException of `refused(bytes)`, as soon as its entries' `entry_bytes` pass
/// `bytes_max`: a hostile body of hundreds of thousands of small entries is never built whole.
/// `what` names the map in type errors.
pub fn map_within<'de, D, V>(
    deserializer: D,
    what: &'static str,
    bytes_max: usize,
    entry_bytes: fn(&str, &V) -> usize,
    refused: fn(usize) -> String,
) -> Result<Option<std::collections::HashMap<String, V>>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V> {
        what: &'static str,
        bytes_max: usize,
        entry_bytes: fn(&str, &V) -> usize,
        refused: fn(usize) -> String,
    }
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
        type Value = Option<std::collections::HashMap<String, V>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{} as a map, or null", self.what)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, deserializer: D2) -> Result<Self::Value, D2::Error> {
            deserializer.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = std::collections::HashMap::new();
            let mut bytes = 0usize;
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value::<V>()?;
                bytes = bytes.saturating_add((self.entry_bytes)(&key, &value));
                if bytes > self.bytes_max {
                    return Err(validation(&(self.refused)(bytes)));
                }
                entries.insert(key, value);
            }
            Ok(Some(entries))
        }
    }
    deserializer.deserialize_option(Entries {
        what,
        bytes_max,
        entry_bytes,
        refused,
    })
}

fn decode_base64<E: de::Error>(text: &str) -> Result<Vec<u8>, E> {
    BASE64
        .decode(text.as_bytes())
        .map_err(|_| E::custom("Base64 encoded length is expected a multiple of 4 bytes but found: bad input"))
}

struct NumberStrings(Vec<Number>);

impl<'de> Deserialize<'de> for NumberStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts: Vec<std::borrow::Cow<'de, str>> = Vec::deserialize(deserializer)?;
        texts
            .iter()
            .map(|t| parse_number::<D::Error>(t))
            .collect::<Result<Vec<_>, _>>()
            .map(NumberStrings)
    }
}

struct BinaryStrings(Vec<Vec<u8>>);

impl<'de> Deserialize<'de> for BinaryStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts: Vec<std::borrow::Cow<'de, str>> = Vec::deserialize(deserializer)?;
        texts
            .iter()
            .map(|t| decode_base64::<D::Error>(t))
            .collect::<Result<Vec<_>, _>>()
            .map(BinaryStrings)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = AttributeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AttributeValue object such as {\"S\": \"text\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributeValue, A::Error> {
        let mut found: Option<AttributeValue> = None;
        let mut extra = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = match key.as_ref() {
                "S" => AttributeValue::S(map.next_value()?),
                "N" => {
                    let text: std::borrow::Cow<'de, str> = map.next_value()?;
                    AttributeValue::N(parse_number(&text)?)
                }
                "B" => {
                    let text: std::borrow::Cow<'de, str> = map.next_value()?;
                    AttributeValue::B(decode_base64(&text)?)
                }
                "BOOL" => AttributeValue::Bool(map.next_value()?),
                "NULL" => {
                    let flag: bool = map.next_value()?;
                    if !flag {
                        return Err(validation(
                            "One or more parameter values were invalid: Null attribute value types must have the value of true",
                        ));
                    }
                    AttributeValue::Null
                }
                "M" => AttributeValue::M(map.next_value()?),
                "L" => AttributeValue::L(map.next_value()?),
                "SS" => AttributeValue::Ss(canonical_set(map.next_value()?, "string", |members: &[String]| {
                    Some(members.join(", "))
                })?),
                "NS" => {
                    let NumberStrings(numbers) = map.next_value()?;
                    AttributeValue::Ns(canonical_set(numbers, "number", |_| None)?)
                }
                "BS" => {
                    let BinaryStrings(blobs) = map.next_value()?;
                    AttributeValue::Bs(canonical_set(blobs, "binary", |members: &[Vec<u8>]| {
                        Some(members.iter().map(|b| BASE64.encode(b)).collect::<Vec<_>>().join(", "))
                    })?)
                }
                // DynamoDB ignores a member it does not know, as it does in any request
                // structure: `{"dog": "cat"}` is then an empty AttributeValue (a
                // ValidationException below), and `{"S": "x", "dog": 1}` is the string "x".
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            if found.is_some() {
                extra = true;
            }
            found = Some(value);
        }
        if extra {
            return Err(validation(
                "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
            ));
        }
        found.ok_or_else(|| {
            validation("Supplied AttributeValue is empty, must contain exactly one of the supported datatypes")
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<AttributeValue, A::Error> {
        Err(de::Error::custom(
            "Start of list found where not expected: an AttributeValue is an object such as {\"S\": \"text\"}",
        ))
    }
}

impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<AttributeValue, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn round_trips_every_type() {
        let json = r#"{"M":{"b":{"B":"AAEC"},"bool":{"BOOL":true},"bs":{"BS":["AQ==","Ag=="]},"l":{"L":[{"S":"x"},{"NULL":true}]},"n":{"N":"1.5"},"ns":{"NS":["-1","2"]},"s":{"S":"hi"},"ss":{"SS":["a","b"]}}}"#;
        let value = parse(json).expect("valid attribute value");
        assert_eq!(serde_json::to_string(&value).expect("serializes"), json);
    }

    #[test]
    fn unknown_members_are_ignored_as_dynamodb_ignores_them() {
        let error = parse(r#"{"dog":"cat"}"#).expect_err("no type");
        assert!(error.to_string().starts_with(VALIDATION_MARKER), "{error}");
        assert!(
            error.to_string().contains("Supplied AttributeValue is empty"),
            "{error}"
        );
        assert_eq!(
            parse(r#"{"dog":{"deep":[1,2]},"S":"x"}"#).expect("a string"),
            AttributeValue::S("x".into())
        );
        let error = parse(r#"{"S":"x","dog":1,"N":"1"}"#).expect_err("two types");
        assert!(error.to_string().contains("more than one datatypes"), "{error}");
    }

    #[test]
    fn sets_are_sorted_and_reject_duplicates() {
        let value = parse(r#"{"SS":["b","a"]}"#).expect("valid set");
        assert_eq!(value, AttributeValue::Ss(vec!["a".into(), "b".into()]));
        let error = parse(r#"{"SS":["b","a","b"]}"#).expect_err("duplicates");
        assert!(error.to_string().starts_with(VALIDATION_MARKER));
        // DynamoDB's words: a string set's members as sent; a number set's without a prefix.
        assert!(
            error
                .to_string()
                .contains("One or more parameter values were invalid: Input collection [b, a, b] contains duplicates."),
            "{error}"
        );
        let error = parse(r#"{"NS":["1","1.0"]}"#).expect_err("duplicates");
        assert!(
            error
                .to_string()
                .contains(&format!("{VALIDATION_MARKER}Input collection contains duplicates")),
            "{error}"
        );
        let error = parse(r#"{"NS":[]}"#).expect_err("empty set");
        assert!(error.to_string().contains("may not be empty"));
    }

    #[test]
    fn shape_errors_are_not_validation_errors() {
        let error = parse(r#"{"S":1}"#).expect_err("wrong json type");
        assert!(!error.to_string().starts_with(VALIDATION_MARKER));
        let error = parse(r#"{}"#).expect_err("empty");
        assert!(error.to_string().starts_with(VALIDATION_MARKER));
        let error = parse(r#"{"S":"a","N":"1"}"#).expect_err("two types");
        assert!(error.to_string().contains("more than one datatypes"));
        let error = parse(r#"{"NULL":false}"#).expect_err("null false");
        assert!(error.to_string().contains("Null attribute value"));
        let error = parse(r#"{"N":"abc"}"#).expect_err("bad number");
        assert!(error.to_string().starts_with(VALIDATION_MARKER));
    }

    #[test]
    fn depth_and_size_follow_dynamodb_rules() {
        let value = parse(r#"{"L":[{"M":{"a":{"S":"xyz"}}}]}"#).expect("valid");
        assert_eq!(value.nesting_depth(), 2);
        // list: 3 + (1 + map(3 + (1 + 1 + 3)))
        assert_eq!(value.size_bytes(), 3 + 1 + 3 + 1 + 1 + 3);
    }
}
