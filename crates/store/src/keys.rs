//! Order-preserving key encoding for ordered storage.
//!
//! A stored key is `hash32(partition key) ++ encode(partition key) ++ encode(sort key)`:
//! - the 4-byte hash prefix spreads partitions over the key space (as DynamoDB's partitioning
//!   does) and gives parallel Scan its segments: segment `s` of `T` is a contiguous hash range;
//! - every encoding is self-delimiting, so a partition is a byte prefix and sort keys inside it
//!   are ordered as DynamoDB orders them (numbers numerically, strings and binaries bytewise).
//!
//! Invariant: this encoding and [`partition_hash`] are persisted; changing either is a storage
//! format change that needs a migration. The hash is chosen per table ([`KeyHash`], kept in the
//! table's metadata): tables created before the mixed hash keep plain FNV-1a.

use dynamo_protocol::AttributeValue;

/// Bytes of the partition hash prefix.
pub const HASH_PREFIX_BYTES: usize = 4;

/// How a table hashes its partition keys into the 4-byte prefix. Persisted in the table's
/// metadata; a table keeps the hash it was created with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyHash {
    /// FNV-1a alone: tables created before the mixed hash (metadata without the field). Its
    /// high bits are poorly spread for short, similar keys (`s1`, `s2`, ...), so parallel
    /// Scan segments of such tables can be very uneven.
    #[default]
    Fnv1a,
    /// FNV-1a finished with MurmurHash3's 32-bit finalizer: every input bit reaches the high
    /// bits, so segments (contiguous hash ranges) hold about equal shares of the partitions.
    Fnv1aFmix32,
}

impl KeyHash {
    /// What tables created by this build use.
    pub const CURRENT: KeyHash = KeyHash::Fnv1aFmix32;
}

/// MurmurHash3's `fmix32`: a bijection on `u32` with full avalanche.
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The partition hash of `value` under `hash`. Stable across versions for each [`KeyHash`].
pub fn partition_hash(hash: KeyHash, value: &AttributeValue) -> u32 {
    let fnv = fnv1a(value);
    match hash {
        KeyHash::Fnv1a => fnv,
        KeyHash::Fnv1aFmix32 => fmix32(fnv),
    }
}

/// The partition hash of a multi-attribute partition key (a global index's key with several
/// HASH attributes): FNV-1a over each value's type tag and self-delimiting encoding, in
/// KeySchema order, finished as `hash` finishes. One value hashes as [`partition_hash`] does.
/// Stable across versions for each [`KeyHash`].
pub fn partition_hash_of(hash: KeyHash, values: &[&AttributeValue]) -> u32 {
    if let [value] = values {
        return partition_hash(hash, value);
    }
    let mut fnv = FNV1A_OFFSET;
    let mut encoded = Vec::new();
    for value in values {
        encoded.clear();
        encoded.extend_from_slice(value.value_type().descriptor().as_bytes());
        encode_key_value(value, &mut encoded);
        fnv = fnv1a_feed(fnv, &encoded);
    }
    match hash {
        KeyHash::Fnv1a => fnv,
        KeyHash::Fnv1aFmix32 => fmix32(fnv),
    }
}

const FNV1A_OFFSET: u32 = 0x811c_9dc5;

fn fnv1a_feed(mut hash: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// FNV-1a over the type tag and canonical bytes of a partition key.
fn fnv1a(value: &AttributeValue) -> u32 {
    let mut hash: u32 = FNV1A_OFFSET;
    let mut feed = |bytes: &[u8]| hash = fnv1a_feed(hash, bytes);
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
pub fn partition_prefix(hash: KeyHash, partition: &AttributeValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&partition_hash(hash, partition).to_be_bytes());
    encode_key_value(partition, &mut out);
    out
}

/// The key prefix of one partition of a multi-attribute partition key: its hash
/// ([`partition_hash_of`]), then each value's encoding in KeySchema order. Equal to
/// [`partition_prefix`] for one value. The sort values' encodings follow it in an index entry
/// key, so entries of a partition are ordered by their sort values compared left to right.
pub fn partition_prefix_of(hash: KeyHash, values: &[&AttributeValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 * values.len().max(1));
    out.extend_from_slice(&partition_hash_of(hash, values).to_be_bytes());
    for value in values {
        encode_key_value(value, &mut out);
    }
    out
}

/// The full stored key of an item.
pub fn item_key(hash: KeyHash, partition: &AttributeValue, sort: Option<&AttributeValue>) -> Vec<u8> {
    let mut out = partition_prefix(hash, partition);
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

    #[test]
    fn partition_hashes_are_pinned() {
        // Persisted in every stored key: these values must never change.
        let s1 = AttributeValue::S("s1".into());
        let user = AttributeValue::S("user#42".into());
        assert_eq!(partition_hash(KeyHash::Fnv1a, &s1), 0xe7ca_d036);
        assert_eq!(partition_hash(KeyHash::Fnv1aFmix32, &s1), 0x15cc_5525);
        assert_eq!(partition_hash(KeyHash::Fnv1a, &user), 0x8afb_6520);
        assert_eq!(partition_hash(KeyHash::Fnv1aFmix32, &user), 0x626a_771f);
    }

    /// Which of `total` parallel-scan segments holds `value`'s partition.
    fn segment_of(hash: KeyHash, value: &AttributeValue, total: u32) -> u32 {
        let key = partition_prefix(hash, value);
        (0..total)
            .find(|s| {
                let (lower, upper) = segment_bounds(*s, total);
                key >= lower && upper.is_none_or(|u| key < u)
            })
            .expect("some segment holds every key")
    }

    #[test]
    fn the_mixed_hash_spreads_short_similar_keys_over_segments() {
        // Plain FNV-1a puts all of `s0`..`s49` in the last of 3 segments; the mixed hash
        // gives each segment its share.
        let keys: Vec<AttributeValue> = (0..300).map(|i| AttributeValue::S(format!("s{i}"))).collect();
        for (hash, balanced) in [(KeyHash::Fnv1a, false), (KeyHash::Fnv1aFmix32, true)] {
            let mut counts = [0usize; 3];
            for key in &keys[..50] {
                counts[segment_of(hash, key, 3) as usize] += 1;
            }
            assert_eq!(counts.iter().all(|c| *c >= 10), balanced, "{hash:?}: {counts:?}");
        }
        let mut counts = [0usize; 8];
        for key in &keys {
            counts[segment_of(KeyHash::CURRENT, key, 8) as usize] += 1;
        }
        // 300 keys in 8 segments: 37.5 each on average.
        assert!(counts.iter().all(|c| (20..=55).contains(c)), "{counts:?}");
    }

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
    fn multi_attribute_partition_hashes_are_pinned() {
        // One value hashes as a single-attribute partition key; several as pinned here (both
        // are persisted in index entry keys).
        let s1 = AttributeValue::S("s1".into());
        let n7 = AttributeValue::N(dynamo_protocol::Number::from_i64(7));
        for hash in [KeyHash::Fnv1a, KeyHash::Fnv1aFmix32] {
            assert_eq!(partition_hash_of(hash, &[&s1]), partition_hash(hash, &s1));
            assert_eq!(partition_prefix_of(hash, &[&s1]), partition_prefix(hash, &s1));
        }
        let pair = partition_hash_of(KeyHash::Fnv1aFmix32, &[&s1, &n7]);
        assert_eq!(pair, PINNED_PAIR_HASH);
        assert_ne!(
            pair,
            partition_hash_of(KeyHash::Fnv1aFmix32, &[&n7, &s1]),
            "order matters"
        );
        // The values' boundaries count: ("ab", "c") and ("a", "bc") are other partitions.
        let (ab, c) = (AttributeValue::S("ab".into()), AttributeValue::S("c".into()));
        let (a, bc) = (AttributeValue::S("a".into()), AttributeValue::S("bc".into()));
        assert_ne!(
            partition_prefix_of(KeyHash::CURRENT, &[&ab, &c]),
            partition_prefix_of(KeyHash::CURRENT, &[&a, &bc])
        );
    }

    const PINNED_PAIR_HASH: u32 = 0x6776_01ce;

    /// The encoding of several sort values, as an index entry key carries them.
    fn encoded_tuple(values: &[AttributeValue]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in values {
            encode_key_value(value, &mut out);
        }
        out
    }

    proptest! {
        #[test]
        fn multi_attribute_sort_values_order_left_to_right_by_type(
            a in (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..6), "[a-c\\x00]{0,4}"),
            b in (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..6), "[a-c\\x00]{0,4}"),
        ) {
            // (N, B, S): numbers numerically, binaries and strings bytewise, the first
            // difference deciding.
            let tuple = |(n, bytes, text): &(i32, Vec<u8>, String)| vec![
                AttributeValue::N(dynamo_protocol::Number::from_i64(i64::from(*n))),
                AttributeValue::B(bytes.clone()),
                AttributeValue::S(text.clone()),
            ];
            let expected = a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.as_bytes().cmp(b.2.as_bytes()));
            prop_assert_eq!(encoded_tuple(&tuple(&a)).cmp(&encoded_tuple(&tuple(&b))), expected);
        }
    }

    #[test]
    fn successors_bound_prefixes() {
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert!(key_successor(b"ab").as_slice() > b"ab".as_slice());
    }
}
