//! DynamoDB Streams: the change log of a table as DynamoDB's Streams API serves it.
//!
//! This module is pure (no storage, no clock of its own): the stream specification and its
//! validation, the names (stream ARNs and labels, shard ids, sequence numbers), shard
//! iterators, and the shape of a stream record. The records themselves are written by the
//! engine in the same transaction as the item they describe (`engine::streams`), and the
//! Streams API reads them back (`api`).

pub mod api;

use base64::Engine as _;
use dynamo_protocol::value::item_size_bytes;
use dynamo_protocol::{ApiError, ErrorKind, Item};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use crate::catalog::KeySchema;
use crate::config::{overlay, positive_from};

/// How long a stream keeps its records (DynamoDB: 24 hours).
pub const RETENTION_MS_DEFAULT: u64 = 24 * 3600 * 1000;
/// A shard is closed and a child shard opened once it is this old (DynamoDB: about 4 hours).
pub const SHARD_AGE_MS_DEFAULT: u64 = 4 * 3600 * 1000;
/// ...or once it holds this many records.
pub const SHARD_RECORDS_MAX_DEFAULT: u64 = 100_000;
/// ...or this many bytes of records (as GetRecords returns them).
pub const SHARD_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// What GetRecords adds to a stored compact record ([`render_compact_record`]): the field
/// names, sequence number, event id, region and constants, about this many bytes. A shard's
/// byte count adds it per record, so [`SHARD_BYTES_MAX_DEFAULT`] bounds the records a reader
/// gets, as it did when records were stored as that JSON.
pub const RENDERED_RECORD_OVERHEAD_BYTES: u64 = 260;
/// A shard iterator is good for 15 minutes after GetShardIterator or GetRecords issued it.
pub const ITERATOR_LIFETIME_MS: u64 = 15 * 60 * 1000;
/// GetRecords returns at most this many records (DynamoDB's limit, and its default)...
pub const GET_RECORDS_LIMIT_MAX: i64 = 1000;
/// ...and stops once the records returned reach this many bytes.
pub const GET_RECORDS_BYTES_MAX: usize = 1024 * 1024;
/// ListStreams returns at most this many streams (its default and maximum).
pub const LIST_STREAMS_LIMIT_MAX: i64 = 100;
/// DescribeStream returns at most this many shards (its default and maximum).
pub const DESCRIBE_STREAM_LIMIT_MAX: i64 = 100;
/// Records one retention sweep deletes at most, so a sweep never stalls the writer.
pub const TRIM_RECORDS_PER_SWEEP_MAX: usize = 10_000;
/// botocore's bounds on a shard iterator's length.
pub const SHARD_ITERATOR_LENGTH_MAX: usize = 2048;
/// botocore's bounds on a stream ARN's length.
pub const STREAM_ARN_LENGTH_MIN: usize = 37;
pub const STREAM_ARN_LENGTH_MAX: usize = 1024;
/// The account the store puts in its ARNs (as in `TableMeta::arn`).
const ACCOUNT: &str = "000000000000";

/// How long a stream reports ENABLING after it was enabled, and DISABLING after it was
/// disabled, before it reports ENABLED and DISABLED. DynamoDB takes a few seconds for each
/// step; here the stream records from the first moment and stops at once, so only the reported
/// status waits, for a short and bounded time.
pub const STATUS_TRANSITION_MS: u64 = 1_000;

/// The StreamStatus DescribeStream reports at `now_ms` for a stream enabled at `created_ms`
/// and disabled at `disabled_ms`.
pub fn stream_status(created_ms: u64, disabled_ms: Option<u64>, now_ms: u64) -> &'static str {
    match disabled_ms {
        Some(at) if now_ms.saturating_sub(at) < STATUS_TRANSITION_MS => "DISABLING",
        Some(_) => "DISABLED",
        None if now_ms.saturating_sub(created_ms) < STATUS_TRANSITION_MS => "ENABLING",
        None => "ENABLED",
    }
}

/// The environment variables that override the stream limits (tests, tuning); the `[store]`
/// keys `stream_retention_ms`, `stream_shard_age_ms` and `stream_shard_records_max` set the
/// same limits in the deployment file, and a variable that is set wins over its key.
pub const ENV_RETENTION_MS: &str = "SWITCHYARD_STREAM_RETENTION_MS";
pub const ENV_SHARD_AGE_MS: &str = "SWITCHYARD_STREAM_SHARD_AGE_MS";
pub const ENV_SHARD_RECORDS_MAX: &str = "SWITCHYARD_STREAM_SHARD_RECORDS_MAX";

/// The stream limits a `[store]` section sets (`None`: not in the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamLimitKeys {
    pub retention_ms: Option<u64>,
    pub shard_age_ms: Option<u64>,
    pub shard_records_max: Option<u64>,
}

/// Bounds of the stream's retention and shard rollover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub retention_ms: u64,
    pub shard_age_ms: u64,
    pub shard_records_max: u64,
    pub shard_bytes_max: u64,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            retention_ms: RETENTION_MS_DEFAULT,
            shard_age_ms: SHARD_AGE_MS_DEFAULT,
            shard_records_max: SHARD_RECORDS_MAX_DEFAULT,
            shard_bytes_max: SHARD_BYTES_MAX_DEFAULT,
        }
    }
}

impl StreamLimits {
    /// The defaults with the overrides of `lookup` (the environment in the binary).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<StreamLimits, String> {
        StreamLimits::default().overridden_by(lookup)
    }

    /// The defaults, then the `[store]` file's keys, then the environment (`lookup`) over both.
    pub fn from_file_and_lookup(
        file: &StreamLimitKeys,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<StreamLimits, String> {
        let mut limits = StreamLimits::default();
        overlay(&mut limits.retention_ms, file.retention_ms);
        overlay(&mut limits.shard_age_ms, file.shard_age_ms);
        overlay(&mut limits.shard_records_max, file.shard_records_max);
        limits.overridden_by(lookup)
    }

    fn overridden_by(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<StreamLimits, String> {
        overlay(&mut self.retention_ms, positive_from(&lookup, ENV_RETENTION_MS)?);
        overlay(&mut self.shard_age_ms, positive_from(&lookup, ENV_SHARD_AGE_MS)?);
        overlay(
            &mut self.shard_records_max,
            positive_from(&lookup, ENV_SHARD_RECORDS_MAX)?,
        );
        Ok(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ViewType {
    KeysOnly,
    NewImage,
    OldImage,
    NewAndOldImages,
}

impl ViewType {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewType::KeysOnly => "KEYS_ONLY",
            ViewType::NewImage => "NEW_IMAGE",
            ViewType::OldImage => "OLD_IMAGE",
            ViewType::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }

    fn parse(text: &str) -> Option<ViewType> {
        [
            ViewType::KeysOnly,
            ViewType::NewImage,
            ViewType::OldImage,
            ViewType::NewAndOldImages,
        ]
        .into_iter()
        .find(|v| v.as_str() == text)
    }

    fn new_image(self) -> bool {
        matches!(self, ViewType::NewImage | ViewType::NewAndOldImages)
    }

    pub(crate) fn old_image(self) -> bool {
        matches!(self, ViewType::OldImage | ViewType::NewAndOldImages)
    }
}

/// A table's stream as its definition holds it: the latest stream (its label) and whether it
/// is enabled. A disabled stream stays readable until its retention ends; its label remains
/// the table's LatestStreamLabel until another stream is enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStream {
    pub enabled: bool,
    pub view_type: ViewType,
    pub label: String,
}

/// Reads `TableMeta::stream`, which builds before streams stored the StreamSpecification
/// request verbatim (never acted on): anything not in the current shape reads as no stream.
pub fn lenient_table_stream<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<TableStream>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// A StreamSpecification as CreateTable and UpdateTable take it, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specification {
    Enable(ViewType),
    Disable,
}

/// Validates a request's StreamSpecification (`{StreamEnabled, StreamViewType}`).
pub fn parse_specification(value: &Value) -> Result<Specification, ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::serialization(
            "StreamSpecification must be an object with StreamEnabled and StreamViewType",
        ));
    };
    let enabled = match object.get("StreamEnabled") {
        None | Some(Value::Null) => {
            return Err(ApiError::validation(
                "1 validation error detected: Value null at 'streamSpecification.streamEnabled' failed to satisfy constraint: Member must not be null",
            ));
        }
        Some(Value::Bool(enabled)) => *enabled,
        Some(other) => {
            return Err(ApiError::serialization(format!(
                "StreamSpecification.StreamEnabled must be a boolean, got {other}"
            )));
        }
    };
    let view_type = match object.get("StreamViewType") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(ViewType::parse(text).ok_or_else(|| {
            ApiError::validation(format!(
                "1 validation error detected: Value '{text}' at 'streamSpecification.streamViewType' failed to satisfy constraint: Member must satisfy enum value set: [NEW_IMAGE, OLD_IMAGE, NEW_AND_OLD_IMAGES, KEYS_ONLY]"
            ))
        })?),
        Some(other) => {
            return Err(ApiError::serialization(format!(
                "StreamSpecification.StreamViewType must be a string, got {other}"
            )));
        }
    };
    match (enabled, view_type) {
        (true, Some(view_type)) => Ok(Specification::Enable(view_type)),
        (true, None) => Err(ApiError::validation(
            "One or more parameter values were invalid: If stream is being enabled then UpdateViewType is required (set StreamViewType to KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES)",
        )),
        (false, Some(_)) => Err(ApiError::validation(
            "One or more parameter values were invalid: StreamViewType cannot be given when StreamEnabled is false; leave it out to disable the stream",
        )),
        (false, None) => Ok(Specification::Disable),
    }
}

/// What UpdateTable's StreamSpecification does to the table's stream, or DynamoDB's error.
/// `Ok(None)` never happens for a valid change: enabling needs a new label (the caller mints
/// it), disabling keeps the label.
pub fn change_stream(
    table: &str,
    current: Option<&TableStream>,
    global: bool,
    specification: Specification,
    new_label: impl FnOnce() -> String,
) -> Result<TableStream, ApiError> {
    let enabled = current.filter(|s| s.enabled);
    match (specification, enabled) {
        (Specification::Enable(_), Some(_)) => Err(ApiError::validation(format!(
            "Table already has an enabled stream: TableName: {table}"
        ))),
        (Specification::Enable(view_type), None) => Ok(TableStream {
            enabled: true,
            view_type,
            label: new_label(),
        }),
        (Specification::Disable, None) => Err(ApiError::validation(format!(
            "Table has no stream to disable: TableName: {table}"
        ))),
        (Specification::Disable, Some(_)) if global => Err(ApiError::validation(format!(
            "One or more parameter values were invalid: Disabling the stream is not allowed on a Global Table (TableName: {table}): its replicas replicate through it; remove the replicas first"
        ))),
        (Specification::Disable, Some(stream)) => Ok(TableStream {
            enabled: false,
            ..stream.clone()
        }),
    }
}

/// DescribeTable's stream fields: StreamSpecification while enabled, LatestStreamArn and
/// LatestStreamLabel while any stream was ever enabled.
pub fn describe_into(
    table: &mut serde_json::Map<String, Value>,
    stream: Option<&TableStream>,
    region: &str,
    name: &str,
) {
    let Some(stream) = stream else {
        return;
    };
    if stream.enabled {
        table.insert(
            "StreamSpecification".into(),
            json!({"StreamEnabled": true, "StreamViewType": stream.view_type.as_str()}),
        );
    }
    table.insert("LatestStreamLabel".into(), json!(stream.label));
    table.insert("LatestStreamArn".into(), json!(stream_arn(region, name, &stream.label)));
}

pub fn stream_arn(region: &str, table: &str, label: &str) -> String {
    format!("arn:aws:dynamodb:{region}:{ACCOUNT}:table/{table}/stream/{label}")
}

/// The table name and label of a stream ARN of `region` (a request's `StreamArn`).
pub fn parse_stream_arn<'a>(arn: &'a str, region: &str) -> Result<(&'a str, &'a str), ApiError> {
    parse_stream_arn_at(arn, region, "streamArn")
}

/// [`parse_stream_arn`] of the request member `field` (named in a length error).
pub fn parse_stream_arn_at<'a>(arn: &'a str, region: &str, field: &str) -> Result<(&'a str, &'a str), ApiError> {
    check_length(arn, field, STREAM_ARN_LENGTH_MIN, STREAM_ARN_LENGTH_MAX)?;
    let invalid = || {
        ApiError::validation(format!(
            "Invalid StreamArn: {arn} (expected arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL, as ListStreams and DescribeTable's LatestStreamArn give it)"
        ))
    };
    let rest = arn.strip_prefix("arn:aws:dynamodb:").ok_or_else(invalid)?;
    let (arn_region, rest) = rest.split_once(':').ok_or_else(invalid)?;
    let (account, rest) = rest.split_once(':').ok_or_else(invalid)?;
    let rest = rest.strip_prefix("table/").ok_or_else(invalid)?;
    let (table, label) = rest.split_once("/stream/").ok_or_else(invalid)?;
    if table.is_empty() || label.is_empty() || table.contains('/') {
        return Err(invalid());
    }
    if arn_region != region {
        return Err(ApiError::resource_not_found(format!(
            "Requested resource not found: Stream: {arn} not found (this endpoint serves region {region})"
        )));
    }
    // Another account's stream is not one of this store's (DynamoDB answers it not found, as
    // it answers another account's table).
    if account != ACCOUNT {
        return Err(ApiError::resource_not_found(format!(
            "Requested resource not found: Stream: {arn} not found (this store's streams are in account {ACCOUNT})"
        )));
    }
    Ok((table, label))
}

/// A stream label: the creation time, ISO 8601 with milliseconds (`2026-12-02T11:41:34.123`).
pub fn label_at(unix_ms: u64) -> String {
    let date = dynamo_protocol::sigv4::format_amz_date((unix_ms / 1000) as i64);
    // `20150830T123600Z`
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15],
        unix_ms % 1000
    )
}

/// The Unix milliseconds a label made by [`label_at`] stands for; `None` for any other text.
pub fn label_ms(label: &str) -> Option<u64> {
    let (date_time, millis) = label.split_once('.')?;
    if millis.len() != 3 || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let compact: String = date_time.chars().filter(|c| *c != '-' && *c != ':').collect();
    let seconds = dynamo_protocol::sigv4::parse_amz_date(&format!("{compact}Z"))?;
    let seconds = u64::try_from(seconds).ok()?;
    seconds.checked_mul(1000)?.checked_add(millis.parse().ok()?)
}

/// botocore's bounds on a sequence number's length (the store writes 21 digits).
pub const SEQUENCE_LENGTH_MIN: usize = 21;
pub const SEQUENCE_LENGTH_MAX: usize = 40;

/// DynamoDB's answer to a request member outside its model's length bounds: one bound named,
/// in the words of its generated validation (`Member must have length greater than or equal
/// to MIN` / `less than or equal to MAX`), as the rest of the store words them.
pub fn check_length(value: &str, field: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let bound = if value.len() < min {
        format!("greater than or equal to {min}")
    } else if value.len() > max {
        format!("less than or equal to {max}")
    } else {
        return Ok(());
    };
    Err(ApiError::validation(format!(
        "1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: Member must have length {bound}"
    )))
}

/// Sequence numbers are decimal strings of 21 digits (botocore: 21 to 40), increasing.
pub fn format_sequence(seq: u64) -> String {
    format!("{seq:021}")
}

pub fn parse_sequence(text: &str) -> Result<u64, ApiError> {
    check_length(text, "sequenceNumber", SEQUENCE_LENGTH_MIN, SEQUENCE_LENGTH_MAX)?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::validation(format!(
            "Invalid SequenceNumber: '{text}' is not a sequence number (they are {SEQUENCE_LENGTH_MIN} to {SEQUENCE_LENGTH_MAX} decimal digits, as records' SequenceNumber and shards' SequenceNumberRange give them)"
        )));
    }
    text.parse::<u128>()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::validation(format!(
                "Invalid SequenceNumber: {text} was never issued by this stream"
            ))
        })
}

/// A shard id: `shardId-` + creation time (20 digits) + `-` + 8 hex digits.
pub fn shard_id(created_ms: u64, stream_id: u64, first_seq: u64) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(stream_id.to_be_bytes());
    hasher.update(first_seq.to_be_bytes());
    let digest = hasher.finalize();
    format!("shardId-{created_ms:020}-{}", hex::encode(&digest[..4]))
}

/// An event id: 32 hex digits, unique per database, region, stream and sequence number.
#[cfg(test)]
fn event_id(store_id: u64, region: &str, stream_id: u64, seq: u64) -> String {
    let mut out = [0u8; EVENT_ID_DIGITS];
    write_event_id(store_id, region, stream_id, seq, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Hex digits of an event id.
const EVENT_ID_DIGITS: usize = 32;

/// Writes the event id of `(store_id, region, stream_id, seq)` into `out` (no allocation: a
/// record's id is written once per change). DynamoDB's eventID is globally unique: the regions
/// of a global table number their streams and records alike (the first stream of a store is 1
/// in every region, and its records 1, 2, ...), so without the region the records of two
/// different changes in two regions' streams would share an id; and a region rebuilt on an
/// empty data directory numbers them from 1 again, so without the database's identity
/// (`Engine::store_id`, new with every new database) its new records would repeat the ids of
/// records a consumer read before the rebuild.
fn write_event_id(store_id: u64, region: &str, stream_id: u64, seq: u64, out: &mut [u8; EVENT_ID_DIGITS]) {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"event");
    hasher.update(store_id.to_be_bytes());
    hasher.update((region.len() as u64).to_be_bytes());
    hasher.update(region.as_bytes());
    hasher.update(stream_id.to_be_bytes());
    hasher.update(seq.to_be_bytes());
    let digest = hasher.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(&digest[..EVENT_ID_DIGITS / 2]) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// One change of an item as the stream records it.
pub struct Change<'a> {
    /// The identity of the database the record is stored in (`Engine::store_id`).
    pub store_id: u64,
    pub stream_id: u64,
    pub seq: u64,
    pub view_type: ViewType,
    pub key: &'a KeySchema,
    pub region: &'a str,
    pub old: Option<&'a Item>,
    pub new: Option<&'a Item>,
    /// A deletion by Time to Live (carries DynamoDB's service identity).
    pub ttl: bool,
    pub now_ms: u64,
}

/// A stream record as GetRecords returns it: the reference shape [`write_record`]'s bytes are
/// checked against (tests). Fields are declared in the order in which they are written
/// (alphabetical, as a `serde_json::Map` would order them).
#[cfg(test)]
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    #[serde(rename = "awsRegion")]
    aws_region: &'a str,
    dynamodb: RecordChange<'a>,
    #[serde(rename = "eventID")]
    event_id: String,
    #[serde(rename = "eventName")]
    event_name: &'static str,
    #[serde(rename = "eventSource")]
    event_source: &'static str,
    #[serde(rename = "eventVersion")]
    event_version: &'static str,
    #[serde(rename = "userIdentity", skip_serializing_if = "Option::is_none")]
    user_identity: Option<UserIdentity>,
}

/// A record's `dynamodb` member.
#[cfg(test)]
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RecordChange<'a> {
    approximate_creation_date_time: u64,
    keys: Item,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_image: Option<&'a Item>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_image: Option<&'a Item>,
    sequence_number: String,
    size_bytes: usize,
    stream_view_type: &'static str,
}

/// Who made a change that no client made: DynamoDB's TTL service.
#[cfg(test)]
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct UserIdentity {
    principal_id: &'static str,
    #[serde(rename = "Type")]
    kind: &'static str,
}

/// The stream record of `change` as GetRecords returns it, or `None` when the write changed
/// nothing (DynamoDB writes no record then).
#[cfg(test)]
pub fn shape_record<'a>(change: &Change<'a>) -> Option<Record<'a>> {
    let event_name = match (change.old, change.new) {
        (None, None) => return None,
        (Some(old), Some(new)) if old == new => return None,
        (None, Some(_)) => "INSERT",
        (Some(_), Some(_)) => "MODIFY",
        (Some(_), None) => "REMOVE",
    };
    let keys = change.key.extract(change.new.or(change.old)?)?;
    let new_image = change.new.filter(|_| change.view_type.new_image());
    let old_image = change.old.filter(|_| change.view_type.old_image());
    let size_bytes = item_size_bytes(&keys)
        + new_image.map(item_size_bytes).unwrap_or(0)
        + old_image.map(item_size_bytes).unwrap_or(0);
    Some(Record {
        aws_region: change.region,
        dynamodb: RecordChange {
            approximate_creation_date_time: change.now_ms / 1000,
            keys,
            new_image,
            old_image,
            sequence_number: format_sequence(change.seq),
            size_bytes,
            stream_view_type: change.view_type.as_str(),
        },
        event_id: event_id(change.store_id, change.region, change.stream_id, change.seq),
        event_name,
        event_source: "aws:dynamodb",
        event_version: "1.1",
        user_identity: change.ttl.then_some(UserIdentity {
            principal_id: "dynamodb.amazonaws.com",
            kind: "Service",
        }),
    })
}

/// Writes the stream record of `change` into `out` as GetRecords returns it, byte for byte
/// what serialising [`shape_record`]'s record gives (the fields in sorted order, as a
/// `serde_json::Value` would write them), and returns whether there was one: the compact form
/// ([`write_compact_record`]) rendered ([`render_compact_record`]), as a reader renders it.
///
/// `new_json`, when given, is `change.new` already serialised (the body of the item's stored
/// form, written just before): it is copied instead of serialising the item a second time.
pub fn write_record(change: &Change<'_>, new_json: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    let mut compact = Vec::new();
    if !write_compact_record(change, new_json, None, &mut compact) {
        return false;
    }
    render_compact_record(
        change.store_id,
        change.stream_id,
        change.seq,
        change.region,
        &compact,
        out,
    )
    .expect("a record just written renders");
    true
}

/// A compact record's first byte: the event (bits 0–1: 1 INSERT, 2 MODIFY, 3 REMOVE), a TTL
/// deletion (bit 2), the view type (bits 3–4, in [`ViewType`]'s order), and whether a NewImage
/// (bit 5) and an OldImage (bit 6) follow.
const COMPACT_EVENT_MASK: u8 = 0b11;
const COMPACT_TTL: u8 = 1 << 2;
const COMPACT_VIEW_SHIFT: u8 = 3;
const COMPACT_NEW_IMAGE: u8 = 1 << 5;
const COMPACT_OLD_IMAGE: u8 = 1 << 6;
const VIEW_TYPES: [ViewType; 4] = [
    ViewType::KeysOnly,
    ViewType::NewImage,
    ViewType::OldImage,
    ViewType::NewAndOldImages,
];
const EVENT_NAMES: [&str; 4] = ["", "INSERT", "MODIFY", "REMOVE"];

/// Writes the record of `change` in the compact form the writer stores, and returns whether
/// there was one (a change that changed nothing has none, and writes nothing). Only what
/// varies is kept: the flags byte, the creation time in seconds and SizeBytes (LEB128), then
/// the Keys, NewImage and OldImage JSON, each after its length (LEB128). The sequence number
/// is stored beside the record; the event id, the region, the event source and version and
/// the JSON around the fields are the reader's to add ([`render_compact_record`]). That is
/// ~260 bytes less per record than its JSON: a stream's cost to a write is the bytes it adds
/// (BENCHMARKS.md, Streams).
///
/// `new_json` and `old_json`, when given, are `change.new` and `change.old` already serialised
/// (the JSON of the item's stored forms, new and replaced): copied instead of serialising the
/// items again.
pub fn write_compact_record(
    change: &Change<'_>,
    new_json: Option<&[u8]>,
    old_json: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> bool {
    let event: u8 = match (change.old, change.new) {
        (None, None) => return false,
        (Some(old), Some(new)) if old == new => return false,
        (None, Some(_)) => 1,
        (Some(_), Some(_)) => 2,
        (Some(_), None) => 3,
    };
    let Some(item) = change.new.or(change.old) else {
        return false;
    };
    // The key attributes in name order (an item's order); a table key has one or two.
    let mut keys: Vec<(&str, &dynamo_protocol::AttributeValue)> = Vec::with_capacity(2);
    for attribute in change.key.attributes() {
        let Some(value) = item.get(&attribute.name) else {
            return false;
        };
        keys.push((attribute.name.as_str(), value));
    }
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    let new_image = change.new.filter(|_| change.view_type.new_image());
    let old_image = change.old.filter(|_| change.view_type.old_image());
    let size_bytes = keys.iter().map(|(k, v)| k.len() + v.size_bytes()).sum::<usize>()
        + new_image.map(item_size_bytes).unwrap_or(0)
        + old_image.map(item_size_bytes).unwrap_or(0);
    let view = VIEW_TYPES.iter().position(|v| *v == change.view_type).unwrap_or(0) as u8;
    let mut flags = event | (view << COMPACT_VIEW_SHIFT);
    if change.ttl {
        flags |= COMPACT_TTL;
    }
    if new_image.is_some() {
        flags |= COMPACT_NEW_IMAGE;
    }
    if old_image.is_some() {
        flags |= COMPACT_OLD_IMAGE;
    }
    out.push(flags);
    write_leb128(out, change.now_ms / 1000);
    write_leb128(out, size_bytes as u64);
    let mut field = Vec::with_capacity(64);
    field.push(b'{');
    for (at, (name, value)) in keys.iter().enumerate() {
        if at > 0 {
            field.push(b',');
        }
        write_json(&mut field, *name);
        field.push(b':');
        write_json(&mut field, *value);
    }
    field.push(b'}');
    write_leb128(out, field.len() as u64);
    out.extend_from_slice(&field);
    if let Some(new) = new_image {
        write_image(out, &mut field, new, new_json);
    }
    if let Some(old) = old_image {
        write_image(out, &mut field, old, old_json);
    }
    true
}

/// Writes an image into `out` after its length: `json` when given (the item already
/// serialised), else `item` serialised through `scratch`.
fn write_image(out: &mut Vec<u8>, scratch: &mut Vec<u8>, item: &Item, json: Option<&[u8]>) {
    let bytes = match json {
        Some(json) => json,
        None => {
            scratch.clear();
            write_json(scratch, item);
            scratch.as_slice()
        }
    };
    write_leb128(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Renders a compact record ([`write_compact_record`]) of stream `stream_id`, sequence number
/// `seq`, written in `region` into the database `store_id`, as GetRecords returns it: the bytes [`write_record`] documents.
/// A record whose structure is damaged (flags, numbers, lengths, a field that is not an
/// object) is an error naming what is wrong. The images' bytes themselves are spliced as the
/// writer serialised them, not parsed again: on disk the block's CRC-32 guards them.
pub fn render_compact_record(
    store_id: u64,
    stream_id: u64,
    seq: u64,
    region: &str,
    compact: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut rest = compact;
    let (&flags, tail) = rest.split_first().ok_or("a compact stream record is empty")?;
    rest = tail;
    let event = EVENT_NAMES[usize::from(flags & COMPACT_EVENT_MASK)];
    if event.is_empty() || flags & 0x80 != 0 {
        return Err(format!("a compact stream record has unknown flags {flags:#04x}"));
    }
    let view = VIEW_TYPES[usize::from((flags >> COMPACT_VIEW_SHIFT) & 0b11)];
    let created_s = read_leb128(&mut rest)?;
    let size_bytes = read_leb128(&mut rest)?;
    let keys = read_field(&mut rest, "Keys")?;
    let new_image = if flags & COMPACT_NEW_IMAGE != 0 {
        Some(read_field(&mut rest, "NewImage")?)
    } else {
        None
    };
    let old_image = if flags & COMPACT_OLD_IMAGE != 0 {
        Some(read_field(&mut rest, "OldImage")?)
    } else {
        None
    };
    if !rest.is_empty() {
        return Err(format!(
            "a compact stream record has {} bytes after its fields",
            rest.len()
        ));
    }
    out.reserve(keys.len() + new_image.map_or(0, <[u8]>::len) + old_image.map_or(0, <[u8]>::len) + 300);
    out.extend_from_slice(b"{\"awsRegion\":");
    write_json(out, region);
    out.extend_from_slice(b",\"dynamodb\":{\"ApproximateCreationDateTime\":");
    out.extend_from_slice(itoa_u64(created_s, &mut [0; 20]));
    out.extend_from_slice(b",\"Keys\":");
    out.extend_from_slice(keys);
    if let Some(new) = new_image {
        out.extend_from_slice(b",\"NewImage\":");
        out.extend_from_slice(new);
    }
    if let Some(old) = old_image {
        out.extend_from_slice(b",\"OldImage\":");
        out.extend_from_slice(old);
    }
    out.extend_from_slice(b",\"SequenceNumber\":\"");
    let mut buffer = [0; 20];
    let digits = itoa_u64(seq, &mut buffer);
    // Zero-padded to 21 digits, as `format_sequence` writes it.
    out.extend(std::iter::repeat_n(b'0', SEQUENCE_DIGITS.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\",\"SizeBytes\":");
    out.extend_from_slice(itoa_u64(size_bytes, &mut [0; 20]));
    out.extend_from_slice(b",\"StreamViewType\":\"");
    out.extend_from_slice(view.as_str().as_bytes());
    out.extend_from_slice(b"\"},\"eventID\":\"");
    let mut id = [0u8; EVENT_ID_DIGITS];
    write_event_id(store_id, region, stream_id, seq, &mut id);
    out.extend_from_slice(&id);
    out.extend_from_slice(b"\",\"eventName\":\"");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\",\"eventSource\":\"aws:dynamodb\",\"eventVersion\":\"1.1\"");
    if flags & COMPACT_TTL != 0 {
        out.extend_from_slice(b",\"userIdentity\":{\"PrincipalId\":\"dynamodb.amazonaws.com\",\"Type\":\"Service\"}");
    }
    out.push(b'}');
    Ok(())
}

/// The creation second a compact record ([`write_compact_record`]) carries: its
/// ApproximateCreationDateTime.
pub(crate) fn compact_record_created_s(compact: &[u8]) -> Result<u64, String> {
    let mut rest = compact.get(1..).ok_or("a compact stream record is empty")?;
    read_leb128(&mut rest)
}

/// Bytes a LEB128 `u64` takes at most.
const LEB128_BYTES_MAX: usize = 10;

pub(crate) fn write_leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(crate) fn read_leb128(rest: &mut &[u8]) -> Result<u64, String> {
    let mut n: u64 = 0;
    for (at, &byte) in rest.iter().enumerate().take(LEB128_BYTES_MAX) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * at as u32;
        if shift == 63 && bits > 1 {
            return Err("a compact stream record holds a number over 64 bits".to_string());
        }
        n |= bits << shift;
        if byte & 0x80 == 0 {
            *rest = &rest[at + 1..];
            return Ok(n);
        }
    }
    Err("a compact stream record ends inside a number".to_string())
}

/// A JSON field of a compact record: its length, then its bytes (which must be a JSON object).
fn read_field<'a>(rest: &mut &'a [u8], name: &str) -> Result<&'a [u8], String> {
    let len = read_leb128(rest)?;
    let len = usize::try_from(len).map_err(|_| format!("a compact stream record's {name} is too long"))?;
    let field = rest
        .get(..len)
        .ok_or_else(|| format!("a compact stream record's {name} of {len} bytes runs past its end"))?;
    if field.first() != Some(&b'{') || field.last() != Some(&b'}') {
        return Err(format!("a compact stream record's {name} is not a JSON object"));
    }
    *rest = &rest[len..];
    Ok(field)
}

/// Digits of a sequence number as records show it.
const SEQUENCE_DIGITS: usize = 21;

/// The decimal digits of `n`, written into `buffer`.
fn itoa_u64(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buffer[at..]
}

/// Serialises a string (escaped) or an attribute value or item into `out`.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("serialising into a Vec cannot fail");
}

/// A shard iterator: where in which shard of which stream the next GetRecords reads, and when
/// it was issued. Opaque to clients, but shaped as DynamoDB's: the stream's ARN, `|`, a
/// one-digit format version, `|`, then the rest (`arn:aws:dynamodb:...:table/T/stream/LABEL|3|...`),
/// which clients and tools written against DynamoDB look at to tell the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardIterator {
    pub arn: String,
    pub shard_id: String,
    /// The first sequence number the next read may return.
    pub position: u64,
    pub issued_ms: u64,
}

/// An iterator's format: version 3 is `ARN|3|` and the base64 of the other fields and the MAC;
/// version 2 (before) was the base64 of all of it, and still reads (an iterator lives 15
/// minutes, across an upgrade); version 1 (before that) carried no MAC.
const ITERATOR_VERSION: &str = "3";
const ITERATOR_VERSION_WHOLLY_ENCODED: &str = "2";
const ITERATOR_VERSION_UNSIGNED: &str = "1";
/// Bytes of an iterator's HMAC-SHA256 kept in it (128 bits).
const ITERATOR_MAC_BYTES: usize = 16;
/// Bytes of the store's iterator key (kept in its settings, made at its first open).
pub const ITERATOR_KEY_BYTES: usize = 32;

impl ShardIterator {
    /// The iterator as GetShardIterator and GetRecords hand it out: the stream's ARN and
    /// version in the clear, then its fields and a MAC over all of them with the store's
    /// iterator key, so a client cannot move its issue time (and keep it from expiring), its
    /// position, its shard or its stream.
    pub fn encode(&self, key: &[u8; ITERATOR_KEY_BYTES]) -> String {
        let fields = format!(
            "{ITERATOR_VERSION}|{}|{}|{}|{}",
            self.issued_ms, self.position, self.shard_id, self.arn
        );
        let mac = hex::encode(iterator_mac(key, &fields));
        let rest = format!("{}|{}|{}|{mac}", self.issued_ms, self.position, self.shard_id);
        format!(
            "{}|{ITERATOR_VERSION}|{}",
            self.arn,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest)
        )
    }

    pub fn decode(text: &str, key: &[u8; ITERATOR_KEY_BYTES]) -> Result<ShardIterator, ApiError> {
        // The value is left out of this error: a wrong iterator can be long.
        if text.is_empty() || text.len() > SHARD_ITERATOR_LENGTH_MAX {
            let bound = if text.is_empty() {
                "greater than or equal to 1".to_string()
            } else {
                format!("less than or equal to {SHARD_ITERATOR_LENGTH_MAX}")
            };
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value at 'shardIterator' failed to satisfy constraint: Member must have length {bound}"
            )));
        }
        let invalid = || {
            ApiError::validation(
                "Invalid ShardIterator: it is not one GetShardIterator or GetRecords issued; get a new one with GetShardIterator",
            )
        };
        let base64 = |text: &str| -> Result<String, ApiError> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| invalid())?;
            String::from_utf8(bytes).map_err(|_| invalid())
        };
        // `ARN|3|REST` (an ARN has no `|`, nor has base64), else the whole of an earlier version.
        let mut parts = text.split('|');
        let (fields, mac) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(arn), Some(ITERATOR_VERSION), Some(rest), None) => {
                let rest = base64(rest)?;
                let (rest, mac) = rest.rsplit_once('|').ok_or_else(invalid)?;
                (format!("{ITERATOR_VERSION}|{rest}|{arn}"), mac.to_string())
            }
            (Some(_), None, _, _) => {
                let text = base64(text)?;
                if text.starts_with(&format!("{ITERATOR_VERSION_UNSIGNED}|")) {
                    return Err(ApiError::new(
                        ErrorKind::ExpiredIterator,
                        "Iterator expired: it was issued by an earlier version of the store; get a new one with GetShardIterator",
                    ));
                }
                if !text.starts_with(&format!("{ITERATOR_VERSION_WHOLLY_ENCODED}|")) {
                    return Err(invalid());
                }
                let (fields, mac) = text.rsplit_once('|').ok_or_else(invalid)?;
                (fields.to_string(), mac.to_string())
            }
            _ => return Err(invalid()),
        };
        let mac = hex::decode(mac).map_err(|_| invalid())?;
        if mac.len() != ITERATOR_MAC_BYTES || !constant_time_eq(&mac, &iterator_mac(key, &fields)) {
            return Err(invalid());
        }
        let mut parts = fields.splitn(5, '|');
        let (Some(_version), Some(issued), Some(position), Some(shard_id), Some(arn)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(ShardIterator {
            arn: arn.to_string(),
            shard_id: shard_id.to_string(),
            position: position.parse().map_err(|_| invalid())?,
            issued_ms: issued.parse().map_err(|_| invalid())?,
        })
    }

    /// `ExpiredIteratorException` once the iterator is older than its lifetime.
    pub fn check_fresh(&self, now_ms: u64) -> Result<(), ApiError> {
        if now_ms.saturating_sub(self.issued_ms) > ITERATOR_LIFETIME_MS {
            return Err(ApiError::new(
                ErrorKind::ExpiredIterator,
                format!(
                    "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of {ITERATOR_LIFETIME_MS} milliseconds; get a new one with GetShardIterator",
                    label_at(self.issued_ms),
                    label_at(now_ms)
                ),
            ));
        }
        Ok(())
    }
}

fn iterator_mac(key: &[u8; ITERATOR_KEY_BYTES], fields: &str) -> [u8; ITERATOR_MAC_BYTES] {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(fields.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut kept = [0; ITERATOR_MAC_BYTES];
    kept.copy_from_slice(&full[..ITERATOR_MAC_BYTES]);
    kept
}

/// Compares without stopping at the first difference (the time taken says nothing of where).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
