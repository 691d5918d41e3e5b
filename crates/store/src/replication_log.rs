//! The encoded form of one change in the replication log, and of a batch on the wire.
//!
//! A change names its table by name (storage ids differ between regions), carries the stored
//! key and the full record (header with HLC, origin and tombstone flag, then the item), so the
//! receiver can apply it with the last-writer-wins rule without any other context.

/// Longest table name a change can carry (DynamoDB's limit).
const TABLE_NAME_BYTES_MAX: usize = 255;
/// Longest stored key a change can carry (partition and sort key limits plus encoding).
const KEY_BYTES_MAX: usize = 8 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    pub key: Vec<u8>,
    pub record: Vec<u8>,
}

pub fn encode_change(table: &str, key: &[u8], record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + table.len() + 4 + key.len() + record.len());
    out.extend_from_slice(&(table.len() as u16).to_be_bytes());
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(record);
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("change is truncated at byte {0}")]
    Truncated(usize),
    #[error("change names a table of {0} bytes, more than {TABLE_NAME_BYTES_MAX}")]
    TableName(usize),
    #[error("change carries a key of {0} bytes, more than {KEY_BYTES_MAX}")]
    Key(usize),
    #[error("change names a table that is not UTF-8")]
    NotUtf8,
}

pub fn decode_change(bytes: &[u8]) -> Result<Change, ChangeError> {
    let take = |at: usize, len: usize| bytes.get(at..at + len).ok_or(ChangeError::Truncated(at));
    let table_len = usize::from(u16::from_be_bytes(
        take(0, 2)?.try_into().map_err(|_| ChangeError::Truncated(0))?,
    ));
    if table_len > TABLE_NAME_BYTES_MAX {
        return Err(ChangeError::TableName(table_len));
    }
    let table = std::str::from_utf8(take(2, table_len)?)
        .map_err(|_| ChangeError::NotUtf8)?
        .to_string();
    let at = 2 + table_len;
    let key_len = u32::from_be_bytes(take(at, 4)?.try_into().map_err(|_| ChangeError::Truncated(at))?) as usize;
    if key_len > KEY_BYTES_MAX {
        return Err(ChangeError::Key(key_len));
    }
    let key = take(at + 4, key_len)?.to_vec();
    let record = bytes[at + 4 + key_len..].to_vec();
    Ok(Change { table, key, record })
}

/// The table name of an encoded change, without copying (`None` if the change is malformed).
pub fn table_of(bytes: &[u8]) -> Option<&str> {
    let table_len = usize::from(u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?));
    std::str::from_utf8(bytes.get(2..2 + table_len)?).ok()
}

/// The record inside an encoded change, without copying (`None` if the change is malformed).
pub fn record_of(bytes: &[u8]) -> Option<&[u8]> {
    let table_len = usize::from(u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?));
    let at = 2 + table_len;
    let key_len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    bytes.get(at + 4 + key_len..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let bytes = encode_change("orders", b"key", b"record");
        let change = decode_change(&bytes).expect("valid change");
        assert_eq!(
            change,
            Change {
                table: "orders".into(),
                key: b"key".to_vec(),
                record: b"record".to_vec()
            }
        );
        assert!(decode_change(&bytes[..5]).is_err());
        assert_eq!(record_of(&bytes), Some(&b"record"[..]));
        assert_eq!(record_of(&bytes[..5]), None);
        assert_eq!(table_of(&bytes), Some("orders"));
        assert_eq!(table_of(&bytes[..3]), None);
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_change(&bytes);
            let _ = record_of(&bytes);
            let _ = table_of(&bytes);
        }
    }
}
