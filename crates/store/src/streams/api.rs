//! The DynamoDB Streams API (`DynamoDBStreams_20120810.*` on the store's endpoint):
//! ListStreams, DescribeStream, GetShardIterator, GetRecords. Reads only: the records are
//! written by the engine with the items.

use dynamo_protocol::{ApiError, ErrorKind};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{
    DESCRIBE_STREAM_LIMIT_MAX, GET_RECORDS_BYTES_MAX, GET_RECORDS_LIMIT_MAX, LIST_STREAMS_LIMIT_MAX,
    STREAM_ARN_LENGTH_MAX, STREAM_ARN_LENGTH_MIN, ShardIterator, format_sequence, parse_sequence, parse_stream_arn,
    stream_arn,
};
use crate::engine::{Engine, ShardMeta, Snapshot, StreamMeta};

/// The target prefix of the Streams API.
pub const TARGET_PREFIX: &str = "DynamoDBStreams_20120810.";

/// The operations of the Streams API, as its reference lists them.
pub const OPERATIONS: &[&str] = &["DescribeStream", "GetRecords", "GetShardIterator", "ListStreams"];

/// Runs one Streams operation on a JSON request body; the answer is the response body (JSON).
pub async fn handle(engine: &Engine, operation: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let value = match operation {
        "ListStreams" => list_streams(engine, decode(body)?),
        "DescribeStream" => describe_stream(engine, decode(body)?),
        "GetShardIterator" => get_shard_iterator(engine, decode(body)?),
        "GetRecords" => return get_records(engine, decode(body)?),
        other => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!(
                "Unknown operation: {TARGET_PREFIX}{other}; DynamoDB Streams serves {}",
                OPERATIONS.join(", ")
            ),
        )),
    }?;
    Ok(serde_json::to_vec(&value).expect("a JSON value serialises"))
}

/// As the DynamoDB endpoint decodes (SerializationException for a body that is not JSON or a
/// value of the wrong type, ValidationException for a missing member).
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::ops::decode(body)
}

fn check_limit(limit: Option<i64>, max: i64, field: &str) -> Result<usize, ApiError> {
    match limit {
        None => Ok(max as usize),
        Some(limit) if limit < 1 => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{limit}' at '{field}' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ))),
        Some(limit) if limit > max => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{limit}' at '{field}' failed to satisfy constraint: Member must have value less than or equal to {max}"
        ))),
        Some(limit) => Ok(limit as usize),
    }
}

fn stream_not_found(arn: &str) -> ApiError {
    ApiError::resource_not_found(format!("Requested resource not found: Stream: {arn} not found"))
}

/// The stream an ARN names, read in `snapshot`.
fn find_stream(engine: &Engine, snapshot: &Snapshot, arn: &str) -> Result<StreamMeta, ApiError> {
    let (table, label) = parse_stream_arn(arn, engine.region())?;
    snapshot.stream(table, label)?.ok_or_else(|| stream_not_found(arn))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsRequest {
    table_name: Option<String>,
    limit: Option<i64>,
    exclusive_start_stream_arn: Option<String>,
}

fn list_streams(engine: &Engine, request: ListStreamsRequest) -> Result<Value, ApiError> {
    let limit = check_limit(request.limit, LIST_STREAMS_LIMIT_MAX, "limit")?;
    if let Some(table) = &request.table_name {
        crate::catalog::validate_table_name(table, "tableName")?;
    }
    let after = match &request.exclusive_start_stream_arn {
        Some(arn) => {
            let (table, label) = crate::streams::parse_stream_arn_at(arn, engine.region(), "exclusiveStartStreamArn")?;
            Some(crate::engine::stream_key_of(table, label))
        }
        None => None,
    };
    let snapshot = engine.snapshot()?;
    // One more than the page, to know whether another page follows. `TableName` filters the
    // streams (the reference: "only the streams associated with this table name are
    // returned"): a table that has none — it never had one, or never existed — lists none
    // rather than failing, as DynamoDB Local, moto and LocalStack answer.
    let mut streams = snapshot.streams(request.table_name.as_deref(), after.as_deref(), limit + 1)?;
    let more = streams.len() > limit;
    streams.truncate(limit);
    let region = engine.region();
    let listed: Vec<Value> = streams
        .iter()
        .map(|s| json!({"StreamArn": stream_arn(region, &s.table, &s.label), "TableName": s.table, "StreamLabel": s.label}))
        .collect();
    let mut response = json!({"Streams": listed});
    if more && let Some(last) = streams.last() {
        response["LastEvaluatedStreamArn"] = json!(stream_arn(region, &last.table, &last.label));
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamRequest {
    stream_arn: String,
    limit: Option<i64>,
    exclusive_start_shard_id: Option<String>,
    shard_filter: Option<ShardFilter>,
}

/// DescribeStream's `ShardFilter`: only the children of one shard (`CHILD_SHARDS`, the one
/// type DynamoDB defines), for a reader that finished a closed shard.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    #[serde(rename = "Type")]
    kind: Option<String>,
    shard_id: Option<String>,
}

/// botocore's bounds on a shard id's length.
const SHARD_ID_LENGTH_MIN: usize = 28;
const SHARD_ID_LENGTH_MAX: usize = 65;

fn check_shard_id(id: &str, field: &str) -> Result<(), ApiError> {
    super::check_length(id, field, SHARD_ID_LENGTH_MIN, SHARD_ID_LENGTH_MAX)
}

/// The parent whose children the filter asks for.
fn filter_parent(filter: &ShardFilter) -> Result<&str, ApiError> {
    match filter.kind.as_deref() {
        Some("CHILD_SHARDS") => {}
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'shardFilter.type' failed to satisfy constraint: Member must satisfy enum value set: [CHILD_SHARDS]"
            )));
        }
        None => {
            return Err(ApiError::validation(
                "1 validation error detected: Value null at 'shardFilter.type' failed to satisfy constraint: Member must not be null",
            ));
        }
    }
    let id = filter.shard_id.as_deref().ok_or_else(|| {
        ApiError::validation(
            "1 validation error detected: Value null at 'shardFilter.shardId' failed to satisfy constraint: Member must not be null",
        )
    })?;
    check_shard_id(id, "shardFilter.shardId")?;
    Ok(id)
}

fn shard_json(shard: &ShardMeta) -> Value {
    let mut range = json!({"StartingSequenceNumber": format_sequence(shard.first_seq)});
    if shard.closed {
        // A shard closed without records ends where it starts (as DynamoDB Local shows it).
        let last = shard.last_seq.unwrap_or(shard.first_seq);
        range["EndingSequenceNumber"] = json!(format_sequence(last));
    }
    let mut out = json!({"ShardId": shard.id, "SequenceNumberRange": range});
    if let Some(parent) = &shard.parent {
        out["ParentShardId"] = json!(parent);
    }
    out
}

fn describe_stream(engine: &Engine, request: DescribeStreamRequest) -> Result<Value, ApiError> {
    super::check_length(
        &request.stream_arn,
        "streamArn",
        STREAM_ARN_LENGTH_MIN,
        STREAM_ARN_LENGTH_MAX,
    )?;
    let limit = check_limit(request.limit, DESCRIBE_STREAM_LIMIT_MAX, "limit")?;
    let parent = request.shard_filter.as_ref().map(filter_parent).transpose()?;
    if let Some(id) = &request.exclusive_start_shard_id {
        check_shard_id(id, "exclusiveStartShardId")?;
    }
    let snapshot = engine.snapshot()?;
    let stream = find_stream(engine, &snapshot, &request.stream_arn)?;
    let mut shards = snapshot.shards(stream.id)?;
    if let Some(parent) = parent {
        shards.retain(|s| s.parent.as_deref() == Some(parent));
    }
    // Shard ids sort by creation, as the shards are listed: a start id that is no (longer a)
    // shard continues after where it would be, as DynamoDB does, instead of failing the page.
    let start = match &request.exclusive_start_shard_id {
        None => 0,
        Some(id) => match shards.iter().position(|s| s.id == *id) {
            Some(at) => at + 1,
            None => shards
                .iter()
                .position(|s| s.id.as_str() > id.as_str())
                .unwrap_or(shards.len()),
        },
    };
    let page: Vec<&ShardMeta> = shards.iter().skip(start).take(limit).collect();
    let mut description = json!({
        "StreamArn": stream_arn(engine.region(), &stream.table, &stream.label),
        "StreamLabel": stream.label,
        "StreamStatus": stream.status(engine.now_unix_ms()),
        "StreamViewType": stream.view_type.as_str(),
        // When the stream was asked for: its label is that time to the millisecond (as
        // DynamoDB's label and CreationRequestDateTime agree); the stored creation time, a
        // moment later when the writer made it, only for a label not in that form.
        "CreationRequestDateTime": super::label_ms(&stream.label).unwrap_or(stream.created_ms) as f64 / 1000.0,
        "TableName": stream.table,
        "KeySchema": stream.key.to_json(),
        "Shards": page.iter().map(|s| shard_json(s)).collect::<Vec<_>>(),
    });
    if start + page.len() < shards.len()
        && let Some(last) = page.last()
    {
        description["LastEvaluatedShardId"] = json!(last.id);
    }
    Ok(json!({"StreamDescription": description}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorRequest {
    stream_arn: String,
    shard_id: String,
    shard_iterator_type: String,
    sequence_number: Option<String>,
    /// For AT_TIMESTAMP: seconds since the Unix epoch, with milliseconds (a JSON number, as
    /// the SDKs send a timestamp).
    timestamp: Option<f64>,
}

fn trimmed(arn: &str, seq: u64) -> ApiError {
    ApiError::new(
        ErrorKind::TrimmedDataAccess,
        format!(
            "The operation attempted to read past the oldest stream record in a shard: sequence number {} of stream {arn} was trimmed (records are kept for the stream's retention); start from TRIM_HORIZON instead",
            format_sequence(seq)
        ),
    )
}

fn find_shard<'a>(shards: &'a [ShardMeta], id: &str, arn: &str) -> Result<&'a ShardMeta, ApiError> {
    shards.iter().find(|s| s.id == id).ok_or_else(|| {
        ApiError::resource_not_found(format!(
            "Requested resource not found: Shard: {id} in Stream: {arn} not found (it may have been trimmed; DescribeStream lists the shards)"
        ))
    })
}

/// Where GetShardIterator's request asks to start, checked before any stream or shard is
/// looked up (as DynamoDB checks a request's members first): the type, and the SequenceNumber
/// or Timestamp that type takes and the others must not have.
enum Start {
    TrimHorizon,
    Latest,
    AtSequence(u64),
    AfterSequence(u64),
    /// The second AT_TIMESTAMP starts at ([`timestamp_second`]).
    AtTimestamp(u64),
}

fn requested_start(request: &GetShardIteratorRequest, now_ms: u64) -> Result<Start, ApiError> {
    let kind = request.shard_iterator_type.as_str();
    if !matches!(
        kind,
        "TRIM_HORIZON" | "LATEST" | "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER" | "AT_TIMESTAMP"
    ) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{kind}' at 'shardIteratorType' failed to satisfy constraint: Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, LATEST, AT_SEQUENCE_NUMBER, TRIM_HORIZON, AT_TIMESTAMP]"
        )));
    }
    let takes_sequence = matches!(kind, "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER");
    if !takes_sequence && request.sequence_number.is_some() {
        return Err(ApiError::validation(format!(
            "One or more parameter values were invalid: SequenceNumber should not be passed for this iterator type ({kind}); it is for AT_SEQUENCE_NUMBER and AFTER_SEQUENCE_NUMBER"
        )));
    }
    if kind != "AT_TIMESTAMP" && request.timestamp.is_some() {
        return Err(ApiError::validation(format!(
            "Timestamp must not be given with ShardIteratorType {kind}; it is for AT_TIMESTAMP"
        )));
    }
    let sequence = || -> Result<u64, ApiError> {
        let text = request.sequence_number.as_deref().ok_or_else(|| {
            ApiError::validation(format!(
                "One or more parameter values were invalid: Invalid SequenceNumber: a SequenceNumber is required for ShardIteratorType {kind}; give one of the shard's records' sequence numbers"
            ))
        })?;
        parse_sequence(text)
    };
    Ok(match kind {
        "TRIM_HORIZON" => Start::TrimHorizon,
        "LATEST" => Start::Latest,
        "AT_SEQUENCE_NUMBER" => Start::AtSequence(sequence()?),
        "AFTER_SEQUENCE_NUMBER" => Start::AfterSequence(sequence()?),
        _ => Start::AtTimestamp(timestamp_second(request.timestamp, now_ms)?),
    })
}

fn get_shard_iterator(engine: &Engine, request: GetShardIteratorRequest) -> Result<Value, ApiError> {
    // The model's constraints on every member first, as DynamoDB checks them.
    super::check_length(
        &request.stream_arn,
        "streamArn",
        STREAM_ARN_LENGTH_MIN,
        STREAM_ARN_LENGTH_MAX,
    )?;
    check_shard_id(&request.shard_id, "shardId")?;
    let start = requested_start(&request, engine.now_unix_ms())?;
    let snapshot = engine.snapshot()?;
    let stream = find_stream(engine, &snapshot, &request.stream_arn)?;
    let shards = snapshot.shards(stream.id)?;
    let shard = find_shard(&shards, &request.shard_id, &request.stream_arn)?;
    let in_shard = |seq: u64| -> Result<u64, ApiError> {
        let formatted = format_sequence(seq);
        let text = request.sequence_number.as_deref().unwrap_or(&formatted);
        let end = shard.closed.then_some(shard.last_seq.unwrap_or(shard.first_seq));
        if seq < shard.first_seq || end.is_some_and(|end| seq > end) {
            return Err(ApiError::validation(format!(
                "Invalid SequenceNumber for the shard: {text} is not in the range of shard {} ({} to {})",
                shard.id,
                format_sequence(shard.first_seq),
                end.map_or_else(|| "open".to_string(), format_sequence)
            )));
        }
        // The next number to be issued is valid: it starts an open shard that has no record yet
        // (its StartingSequenceNumber).
        if seq > snapshot.stream_seq()?.saturating_add(1) {
            return Err(ApiError::validation(format!(
                "Invalid SequenceNumber for the shard: {text} was never issued (the stream's records so far end before it)"
            )));
        }
        if seq <= stream.trimmed_through {
            return Err(trimmed(&request.stream_arn, seq));
        }
        Ok(seq)
    };
    // Where the shard's next record will be: after its last one once it is closed.
    let after_last = || -> Result<u64, ApiError> {
        Ok(match (shard.closed, shard.last_seq) {
            (true, Some(last)) => last + 1,
            _ => snapshot.stream_seq()? + 1,
        })
    };
    let position = match start {
        Start::TrimHorizon => shard.first_seq.max(stream.trimmed_through + 1),
        Start::Latest => after_last()?,
        Start::AtSequence(seq) => in_shard(seq)?,
        Start::AfterSequence(seq) => in_shard(seq)? + 1,
        Start::AtTimestamp(at_s) => {
            let from = shard.first_seq.max(stream.trimmed_through + 1);
            match snapshot.shard_position_at(stream.id, shard, from, at_s)? {
                Some(seq) => seq,
                // No record that recent yet: where the next one will be, as LATEST.
                None => after_last()?,
            }
        }
    };
    let iterator = ShardIterator {
        arn: stream_arn(engine.region(), &stream.table, &stream.label),
        shard_id: shard.id.clone(),
        position,
        issued_ms: engine.now_unix_ms(),
    };
    Ok(json!({"ShardIterator": iterator.encode(engine.iterator_key())}))
}

/// The second AT_TIMESTAMP starts at: records show their creation time to the second
/// (ApproximateCreationDateTime), so a record of the timestamp's own second is included rather
/// than missed. A timestamp before the first record or the trim horizon starts at the oldest
/// record kept (TRIM_HORIZON); one in the future is refused, as DynamoDB refuses it.
fn timestamp_second(timestamp: Option<f64>, now_ms: u64) -> Result<u64, ApiError> {
    let timestamp = timestamp.ok_or_else(|| {
        ApiError::validation(
            "A Timestamp is required for ShardIteratorType AT_TIMESTAMP; give the time to start reading at, in seconds since the Unix epoch",
        )
    })?;
    if !timestamp.is_finite() {
        return Err(ApiError::validation(format!(
            "Invalid Timestamp {timestamp}: give the time to start reading at, in seconds since the Unix epoch"
        )));
    }
    // Milliseconds, as the timestamp's precision is.
    if (timestamp * 1000.0).floor() > now_ms as f64 {
        return Err(ApiError::validation(format!(
            "Invalid Timestamp {timestamp}: it is in the future (now is {}.{:03}); give a time at or before now",
            now_ms / 1000,
            now_ms % 1000
        )));
    }
    Ok(timestamp.max(0.0).floor() as u64)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsRequest {
    shard_iterator: String,
    limit: Option<i64>,
}

fn get_records(engine: &Engine, request: GetRecordsRequest) -> Result<Vec<u8>, ApiError> {
    let limit = check_limit(request.limit, GET_RECORDS_LIMIT_MAX, "limit")?;
    let iterator = ShardIterator::decode(&request.shard_iterator, engine.iterator_key())?;
    let now_ms = engine.now_unix_ms();
    iterator.check_fresh(now_ms)?;
    let snapshot = engine.snapshot()?;
    let stream = find_stream(engine, &snapshot, &iterator.arn)?;
    let shards = snapshot.shards(stream.id)?;
    let Some(shard) = shards.iter().find(|s| s.id == iterator.shard_id) else {
        // A shard that is gone was trimmed with its last records.
        return Err(trimmed(&iterator.arn, iterator.position));
    };
    if iterator.position <= stream.trimmed_through {
        return Err(trimmed(&iterator.arn, iterator.position));
    }
    // {"Records":[...],"NextShardIterator":"..."} with the stored records spliced in as they are.
    let mut body = Vec::with_capacity(limit.saturating_mul(512).min(GET_RECORDS_BYTES_MAX) + 1024);
    body.extend_from_slice(b"{\"Records\":[");
    let read = snapshot.read_shard(
        engine.store_id(),
        stream.id,
        shard,
        iterator.position,
        (limit, GET_RECORDS_BYTES_MAX),
        &mut body,
    )?;
    body.push(b']');
    if !read.ended {
        let next = ShardIterator {
            position: read.next,
            issued_ms: now_ms,
            ..iterator
        };
        body.extend_from_slice(b",\"NextShardIterator\":");
        serde_json::to_writer(&mut body, &next.encode(engine.iterator_key())).expect("a string serialises");
    }
    body.push(b'}');
    Ok(body)
}
