//! Evaluates conditions against items, with DynamoDB's semantics: a missing attribute makes a
//! comparison false (except `<>`, which it makes true), values of different types are unequal
//! and unordered, strings and binaries order bytewise, numbers numerically.

use std::borrow::Cow;
use std::cmp::Ordering;

use dynamo_protocol::{AttributeValue, Item, Number};

use super::ast::{Comparator, Node, Operand, Path, PathElement};

/// The value at `path` in `item`, if every step exists and has the right type.
pub(crate) fn get<'i>(item: &'i Item, path: &Path) -> Option<&'i AttributeValue> {
    let (first, rest) = path.0.split_first()?;
    let PathElement::Attribute(name) = first else {
        return None;
    };
    let mut value = item.get(name)?;
    for element in rest {
        value = match (value, element) {
            (AttributeValue::M(map), PathElement::Attribute(key)) => map.get(key)?,
            (AttributeValue::L(list), PathElement::Index(index)) => list.get(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

/// What `size()` returns: string length in UTF-16 code units (as DynamoDB counts it), binary
/// length in bytes, element counts of sets, lists and maps; nothing for other types.
pub(crate) fn size_of(value: &AttributeValue) -> Option<usize> {
    Some(match value {
        AttributeValue::S(text) => text.encode_utf16().count(),
        AttributeValue::B(bytes) => bytes.len(),
        AttributeValue::Ss(members) => members.len(),
        AttributeValue::Ns(members) => members.len(),
        AttributeValue::Bs(members) => members.len(),
        AttributeValue::L(list) => list.len(),
        AttributeValue::M(map) => map.len(),
        AttributeValue::N(_) | AttributeValue::Bool(_) | AttributeValue::Null => return None,
    })
}

/// The order of two values of the same orderable type (S, N or B); `None` otherwise.
pub(crate) fn compare(left: &AttributeValue, right: &AttributeValue) -> Option<Ordering> {
    match (left, right) {
        (AttributeValue::N(a), AttributeValue::N(b)) => Some(a.cmp(b)),
        (AttributeValue::S(a), AttributeValue::S(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (AttributeValue::B(a), AttributeValue::B(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn operand<'i>(operand: &'i Operand, item: &'i Item) -> Option<Cow<'i, AttributeValue>> {
    match operand {
        Operand::Path(path) => get(item, path).map(Cow::Borrowed),
        Operand::Value(value) => Some(Cow::Borrowed(value)),
        Operand::Size(path) => {
            let size = size_of(get(item, path)?)?;
            Some(Cow::Owned(AttributeValue::N(Number::from_i64(
                i64::try_from(size).unwrap_or(i64::MAX),
            ))))
        }
    }
}

fn comparison(comparator: Comparator, left: Option<&AttributeValue>, right: Option<&AttributeValue>) -> bool {
    let (Some(left), Some(right)) = (left, right) else {
        // A missing attribute equals nothing, so only `<>` holds.
        return comparator == Comparator::NotEqual;
    };
    match comparator {
        Comparator::Equal => left == right,
        Comparator::NotEqual => left != right,
        Comparator::Less => compare(left, right) == Some(Ordering::Less),
        Comparator::LessOrEqual => matches!(compare(left, right), Some(Ordering::Less | Ordering::Equal)),
        Comparator::Greater => compare(left, right) == Some(Ordering::Greater),
        Comparator::GreaterOrEqual => matches!(compare(left, right), Some(Ordering::Greater | Ordering::Equal)),
    }
}

fn begins_with(value: &AttributeValue, prefix: &AttributeValue) -> bool {
    match (value, prefix) {
        (AttributeValue::S(value), AttributeValue::S(prefix)) => value.starts_with(prefix.as_str()),
        (AttributeValue::B(value), AttributeValue::B(prefix)) => value.starts_with(prefix),
        _ => false,
    }
}

fn contains(container: &AttributeValue, member: &AttributeValue) -> bool {
    match (container, member) {
        (AttributeValue::S(text), AttributeValue::S(part)) => text.contains(part.as_str()),
        (AttributeValue::B(bytes), AttributeValue::B(part)) => {
            part.is_empty() || bytes.windows(part.len()).any(|window| window == part.as_slice())
        }
        (AttributeValue::Ss(members), AttributeValue::S(member)) => members.binary_search(member).is_ok(),
        (AttributeValue::Ns(members), AttributeValue::N(member)) => members.binary_search(member).is_ok(),
        (AttributeValue::Bs(members), AttributeValue::B(member)) => members.binary_search(member).is_ok(),
        (AttributeValue::L(list), member) => list.contains(member),
        _ => false,
    }
}

/// Evaluates a condition tree. Recursion follows the tree, whose depth the parser bounds by the
/// operator limit and the legacy translations keep flat.
pub(crate) fn condition(node: &Node, item: &Item) -> bool {
    match node {
        Node::Compare(comparator, left, right) => comparison(
            *comparator,
            operand(left, item).as_deref(),
            operand(right, item).as_deref(),
        ),
        Node::Between(value, low, high) => {
            let (Some(value), Some(low), Some(high)) = (operand(value, item), operand(low, item), operand(high, item))
            else {
                return false;
            };
            matches!(compare(&value, &low), Some(Ordering::Greater | Ordering::Equal))
                && matches!(compare(&value, &high), Some(Ordering::Less | Ordering::Equal))
        }
        Node::In(value, list) => {
            let Some(value) = operand(value, item) else {
                return false;
            };
            list.iter()
                .any(|candidate| operand(candidate, item).is_some_and(|candidate| candidate == value))
        }
        Node::Exists(path) => get(item, path).is_some(),
        Node::NotExists(path) => get(item, path).is_none(),
        Node::Type(value, value_type) => operand(value, item).is_some_and(|value| value.value_type() == *value_type),
        Node::BeginsWith(value, prefix) => match (operand(value, item), operand(prefix, item)) {
            (Some(value), Some(prefix)) => begins_with(&value, &prefix),
            _ => false,
        },
        Node::Contains(container, member) => match (operand(container, item), operand(member, item)) {
            (Some(container), Some(member)) => contains(&container, &member),
            _ => false,
        },
        Node::Not(inner) => !condition(inner, item),
        Node::And(children) => children.iter().all(|child| condition(child, item)),
        Node::Or(children) => children.iter().any(|child| condition(child, item)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> AttributeValue {
        AttributeValue::S(text.into())
    }

    #[test]
    fn get_follows_maps_and_lists() {
        let item: Item = [(
            "a".to_string(),
            AttributeValue::M([("b".to_string(), AttributeValue::L(vec![s("x"), s("y")]))].into()),
        )]
        .into();
        let path = |elements: Vec<PathElement>| Path(elements);
        use PathElement::{Attribute, Index};
        assert_eq!(
            get(
                &item,
                &path(vec![Attribute("a".into()), Attribute("b".into()), Index(1)])
            ),
            Some(&s("y"))
        );
        assert_eq!(
            get(
                &item,
                &path(vec![Attribute("a".into()), Attribute("b".into()), Index(2)])
            ),
            None
        );
        assert_eq!(get(&item, &path(vec![Attribute("a".into()), Index(0)])), None);
        assert_eq!(
            get(
                &item,
                &path(vec![
                    Attribute("a".into()),
                    Attribute("b".into()),
                    Attribute("c".into())
                ])
            ),
            None
        );
        assert_eq!(get(&item, &path(vec![])), None);
    }

    #[test]
    fn size_counts_utf16_units_bytes_and_elements() {
        assert_eq!(size_of(&s("hello")), Some(5));
        assert_eq!(size_of(&s("é𝄞")), Some(3));
        assert_eq!(size_of(&AttributeValue::B(vec![1, 2, 3])), Some(3));
        assert_eq!(size_of(&AttributeValue::L(vec![AttributeValue::Null; 4])), Some(4));
        assert_eq!(size_of(&AttributeValue::M(Item::new())), Some(0));
        assert_eq!(size_of(&AttributeValue::Bool(true)), None);
        assert_eq!(size_of(&AttributeValue::Null), None);
    }

    #[test]
    fn strings_and_binaries_order_bytewise() {
        assert_eq!(compare(&s("a"), &s("b")), Some(Ordering::Less));
        assert_eq!(compare(&s("Z"), &s("a")), Some(Ordering::Less));
        assert_eq!(compare(&s("é"), &s("z")), Some(Ordering::Greater));
        assert_eq!(
            compare(&AttributeValue::B(vec![0xff]), &AttributeValue::B(vec![0x00, 0x01])),
            Some(Ordering::Greater)
        );
        assert_eq!(compare(&s("1"), &AttributeValue::B(vec![b'1'])), None);
        assert_eq!(compare(&AttributeValue::Bool(false), &AttributeValue::Bool(true)), None);
    }

    #[test]
    fn contains_handles_substrings_sets_and_lists() {
        assert!(contains(&s("hello"), &s("ell")));
        assert!(!contains(&s("hello"), &s("elk")));
        assert!(contains(
            &AttributeValue::B(b"hi there".to_vec()),
            &AttributeValue::B(b"here".to_vec())
        ));
        assert!(contains(&AttributeValue::Ss(vec!["a".into(), "b".into()]), &s("b")));
        assert!(!contains(&AttributeValue::Ss(vec!["a".into(), "b".into()]), &s("c")));
        assert!(contains(
            &AttributeValue::L(vec![s("x"), AttributeValue::Null]),
            &AttributeValue::Null
        ));
        assert!(!contains(&s("1"), &AttributeValue::Ss(vec!["1".into()])));
    }

    #[test]
    fn begins_with_needs_matching_types() {
        assert!(begins_with(&s("hello"), &s("he")));
        assert!(!begins_with(&s("hello"), &AttributeValue::B(b"he".to_vec())));
        assert!(begins_with(
            &AttributeValue::B(b"hello".to_vec()),
            &AttributeValue::B(b"he".to_vec())
        ));
    }

    #[test]
    fn missing_operands_fail_all_but_not_equal() {
        let value = s("x");
        for comparator in [
            Comparator::Equal,
            Comparator::Less,
            Comparator::LessOrEqual,
            Comparator::Greater,
            Comparator::GreaterOrEqual,
        ] {
            assert!(!comparison(comparator, None, Some(&value)));
            assert!(!comparison(comparator, None, None));
        }
        assert!(comparison(Comparator::NotEqual, None, Some(&value)));
        assert!(comparison(Comparator::NotEqual, None, None));
        assert!(comparison(
            Comparator::NotEqual,
            Some(&value),
            Some(&AttributeValue::B(b"x".to_vec()))
        ));
        assert!(!comparison(
            Comparator::Less,
            Some(&value),
            Some(&AttributeValue::B(b"y".to_vec()))
        ));
    }
}
