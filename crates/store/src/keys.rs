//! Order-preserving key encoding for ordered storage.
//!
//! A stored key is `hash32(partition key) ++ encode(partition key) ++ encode(sort key)`:
//! - the 4-byte hash prefix spreads partitions over the key space (as DynamoDB's partitioning
//!   does) and gives parallel Scan its segments: segment `s` of `T` is a contiguous hash range;
//! - every encoding is self-delimiting, so a partition is a byte prefix and sort keys inside it
//!   are ordered as DynamoDB orders them (numbers numerically, strings and binaries bytewise).
//!
//! Invariant: this encoding and [`partition_hash`] are persisted; changing either is a storage
//! format change that needs a migration.

use dynamo_protocol::AttributeValue;

/// Bytes of the partition hash prefix.
pub const HASH_PREFIX_BYTES: usize = 4;

/// FNV-1a over the type tag and canonical bytes of a partition key. Stable across versions.
pub fn partition_hash(value: &AttributeValue) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    match value {
        AttributeValue::S(s) => {
            feed(b"S");
            feed(s.as_bytes());
        }
        AttributeValue::B(b) => {
            feed(b"B");
            feed(b);
        }
        AttributeValue::N(n) => {
            feed(b"N");
            feed(n.to_string().as_bytes());
        }
        other => feed(other.value_type().descriptor().as_bytes()),
    }
    hash
}

/// Appends the self-delimiting, order-preserving encoding of a key attribute value.
/// Key attributes are S, N or B (the schema guarantees it); other types encode by their
/// type tag only and never reach storage.
pub fn encode_key_value(value: &AttributeValue, out: &mut Vec<u8>) {
    match value {
        AttributeValue::S(s) => encode_bytes(s.as_bytes(), out),
        AttributeValue::B(b) => encode_bytes(b, out),
        AttributeValue::N(n) => n.encode_ordered(out),
        other => out.extend_from_slice(other.value_type().descriptor().as_bytes()),
    }
}

/// Escapes 0x00 as 0x00 0xFF and terminates with 0x00 0x01: bytewise order is kept and no
/// encoding is a prefix of another.
pub fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    encode_bytes_unterminated(bytes, out);
    out.extend_from_slice(&[0x00, 0x01]);
}

/// The escaped bytes without the terminator: every encoding of a value that starts with
/// `bytes` starts with this (used by `begins_with`).
pub fn encode_bytes_unterminated(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0x00 {
            out.push(0xFF);
        }
    }
}

/// The key prefix of one partition.
pub fn partition_prefix(partition: &AttributeValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&partition_hash(partition).to_be_bytes());
    encode_key_value(partition, &mut out);
    out
}

/// The full stored key of an item.
pub fn item_key(partition: &AttributeValue, sort: Option<&AttributeValue>) -> Vec<u8> {
    let mut out = partition_prefix(partition);
    if let Some(sort) = sort {
        encode_key_value(sort, &mut out);
    }
    out
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when no such string exists (the prefix is all 0xFF).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The smallest byte string strictly greater than `key`.
pub fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.extend_from_slice(key);
    out.push(0);
    out
}

/// The hash range `[start, end)` of parallel-scan segment `segment` of `total`, as key bounds.
pub fn segment_bounds(segment: u32, total: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    let space: u64 = 1 << 32;
    let start = space * u64::from(segment) / u64::from(total.max(1));
    let end = space * (u64::from(segment) + 1) / u64::from(total.max(1));
    let to_bytes = |v: u64| (v as u32).to_be_bytes().to_vec();
    let upper = if end >= space { None } else { Some(to_bytes(end)) };
    (to_bytes(start), upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(value: &AttributeValue) -> Vec<u8> {
        let mut out = Vec::new();
        encode_key_value(value, &mut out);
        out
    }

    proptest! {
        #[test]
        fn byte_encoding_preserves_order_and_is_prefix_free(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8)) {
            let (ea, eb) = (encoded(&AttributeValue::B(a.clone())), encoded(&AttributeValue::B(b.clone())));
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            if a != b {
                prop_assert!(!ea.starts_with(&eb) && !eb.starts_with(&ea));
            }
        }

        #[test]
        fn begins_with_prefix_covers_exactly_the_values_with_that_prefix(value in proptest::collection::vec(any::<u8>(), 0..8), prefix in proptest::collection::vec(any::<u8>(), 0..3)) {
            let mut escaped = Vec::new();
            encode_bytes_unterminated(&prefix, &mut escaped);
            prop_assert_eq!(value.starts_with(&prefix), encoded(&AttributeValue::B(value.clone())).starts_with(&escaped));
        }

        #[test]
        fn segments_partition_the_hash_space(total in 1u32..2000, hash in any::<u32>()) {
            let key = hash.to_be_bytes();
            let owners = (0..total).filter(|s| {
                let (lower, upper) = segment_bounds(*s, total);
                key.as_slice() >= lower.as_slice() && upper.as_ref().is_none_or(|u| key.as_slice() < u.as_slice())
            }).count();
            prop_assert_eq!(owners, 1);
        }
    }

    #[test]
    fn successors_bound_prefixes() {
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert!(key_successor(b"ab").as_slice() > b"ab".as_slice());
    }
}
