//! The stored form of an item: a small header (format version, flags, hybrid logical clock,
//! origin region) followed by the item as DynamoDB JSON.
//!
//! The header is what replication merges on (last writer wins by `(hlc, origin)`), so every
//! write carries it from the start. Decoding never panics: a corrupt record is an error the
//! caller reports, not a crash.

use dynamo_protocol::Item;

pub const FORMAT_VERSION: u8 = 1;
/// The record marks a deleted item, kept until every replica has seen the delete.
pub const FLAG_TOMBSTONE: u8 = 0b0000_0001;
/// Longest origin region name a record can carry.
pub const ORIGIN_BYTES_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub hlc: u64,
    pub origin: String,
    pub tombstone: bool,
    pub item: Item,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("record format version {0} is not known to this build (it knows {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("record body is not a valid item: {0}")]
    Body(serde_json::Error),
}

pub fn encode(record: &Record) -> Vec<u8> {
    encode_parts(record.hlc, &record.origin, record.tombstone, &record.item)
}

/// [`encode`] from the parts of a record, for a writer that holds them borrowed (no copy of
/// the item to build a [`Record`]).
pub fn encode_parts(hlc: u64, origin: &str, tombstone: bool, item: &Item) -> Vec<u8> {
    let origin = origin.as_bytes();
    let origin = &origin[..origin.len().min(ORIGIN_BYTES_MAX)];
    let mut out = Vec::with_capacity(16 + origin.len() + 64);
    out.push(FORMAT_VERSION);
    out.push(if tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&hlc.to_be_bytes());
    out.push(origin.len() as u8);
    out.extend_from_slice(origin);
    serde_json::to_writer(&mut out, item).expect("serialising an item into a Vec cannot fail");
    out
}

/// Reads only the header: `(hlc, origin, tombstone, body offset)`.
fn header(bytes: &[u8]) -> Result<(u64, &str, bool, usize), RecordError> {
    if bytes.len() < 11 {
        return Err(RecordError::Truncated(bytes.len()));
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(RecordError::UnknownVersion(bytes[0]));
    }
    let tombstone = bytes[1] & FLAG_TOMBSTONE != 0;
    let mut hlc = [0u8; 8];
    hlc.copy_from_slice(&bytes[2..10]);
    let origin_len = usize::from(bytes[10]);
    let body = 11 + origin_len;
    if bytes.len() < body {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let origin = std::str::from_utf8(&bytes[11..body]).unwrap_or("");
    Ok((u64::from_be_bytes(hlc), origin, tombstone, body))
}

pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let (hlc, origin, tombstone, body) = header(bytes)?;
    let item = serde_json::from_slice(&bytes[body..]).map_err(RecordError::Body)?;
    Ok(Record {
        hlc,
        origin: origin.to_string(),
        tombstone,
        item,
    })
}

/// The header bytes (format, flags, HLC, origin): what identifies a record's version, for
/// anti-entropy digests.
pub fn header_bytes(bytes: &[u8]) -> Result<&[u8], RecordError> {
    header(bytes).map(|(_, _, _, body)| &bytes[..body])
}

/// The record's version `(hlc, origin)`, without decoding the body.
pub fn version(bytes: &[u8]) -> Result<(u64, String), RecordError> {
    header(bytes).map(|(hlc, origin, _, _)| (hlc, origin.to_string()))
}

/// The record's origin region, without decoding the body.
pub fn origin(bytes: &[u8]) -> Result<&str, RecordError> {
    header(bytes).map(|(_, origin, _, _)| origin)
}

/// The record's hybrid logical clock, without decoding the body.
pub fn hlc(bytes: &[u8]) -> Result<u64, RecordError> {
    header(bytes).map(|(hlc, _, _, _)| hlc)
}

/// Whether the record is a tombstone, without decoding the body.
pub fn is_tombstone(bytes: &[u8]) -> Result<bool, RecordError> {
    header(bytes).map(|(_, _, tombstone, _)| tombstone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocol::AttributeValue;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut item = Item::new();
        item.insert("id".into(), AttributeValue::S("a".into()));
        let record = Record {
            hlc: 42,
            origin: "us-east-1".into(),
            tombstone: false,
            item,
        };
        let bytes = encode(&record);
        assert_eq!(decode(&bytes).expect("valid record"), record);
        let tombstone = encode_parts(43, "eu-west-1", true, &Item::new());
        let decoded = decode(&tombstone).expect("valid record");
        assert!(decoded.tombstone && decoded.item.is_empty() && decoded.hlc == 43 && decoded.origin == "eu-west-1");
        assert!(decode(&bytes[..5]).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(matches!(decode(&wrong_version), Err(RecordError::UnknownVersion(9))));
        let mut corrupt = bytes;
        let last = corrupt.len() - 1;
        corrupt[last] = b'!';
        assert!(matches!(decode(&corrupt), Err(RecordError::Body(_))));
    }
}
