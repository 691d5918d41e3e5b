//! Stream storage: the records of DynamoDB Streams, written by the writer in the same
//! transaction as the item change they describe.
//!
//! Every item change of every table goes through `WriteContext::store` (local writes, batch
//! and transactional writes, TTL deletions, and replicated changes that won last-writer-wins),
//! so that is where a table's stream gets its record: a change that loses, or a write that
//! leaves the item as it was, stores nothing and so records nothing. A region's stream thus
//! shows every change applied in that region exactly once, local or replicated.
//!
//! Tables (redb):
//! - `streams`: `TABLE/LABEL` → [`StreamMeta`] (JSON): one per stream ever enabled, kept
//!   (DISABLED) after the table's stream is disabled or the table deleted, until retention ends;
//! - `stream_shards`: `(stream id, first sequence number)` → [`ShardMeta`] (JSON); the last
//!   shard of a stream is its open one until it rolls over (age, records or bytes) or the
//!   stream is disabled;
//! - `stream_records`: `(stream id, sequence number)` → a *block*: the records one write batch
//!   appended to one shard, keyed by the first one's sequence number. The creation time of its
//!   newest record (`u64` ms, big-endian; retention trims whole blocks), the format tag 2, the
//!   format tag 3, the CRC-32 of the rest (4 bytes, little-endian), the region the records
//!   were written in (its length in LEB128, then its bytes), then per record its sequence
//!   number (`u64`, little-endian), its length (`u32`, little-endian) and the record in its
//!   compact form (`streams::write_compact_record`: the flags, times and images, without the
//!   ~260 bytes of names and constants a reader renders back, `streams::render_compact_record`).
//!   A block holds at most `STREAM_BLOCK_BYTES_MAX` of records, one page (a change bigger than
//!   that is a block of its own). A few page-sized entries per batch instead of one per change,
//!   and compact records in them, are most of what a stream saves PutItem (BENCHMARKS.md,
//!   Streams). Earlier formats are still read: blocks with the tag 2, no region and each record
//!   as GetRecords returns it (JSON); one record per entry, with the tag 1 and the record's
//!   CRC-32 before its JSON; or, before the tag existed, the JSON right after the time (it
//!   starts with `{`), checked by parsing.
//!
//! Sequence numbers come from one counter (`settings.stream_seq`), so they increase within a
//! shard, across a shard and its child, and across streams.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::*;
use crate::streams::{self, StreamLimits, TableStream, ViewType};

pub(crate) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
pub(crate) const STREAM_SHARDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("stream_shards");
pub(crate) const STREAM_RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("stream_records");
/// The last sequence number handed out.
const STREAM_SEQ: &str = "stream_seq";
const NEXT_STREAM_ID: &str = "next_stream_id";

/// One stream of a table (the table may have been deleted since).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    pub id: u64,
    pub table: String,
    pub label: String,
    pub view_type: ViewType,
    pub key: KeySchema,
    pub created_ms: u64,
    /// When the stream was disabled (its table's stream disabled or the table deleted).
    pub disabled_ms: Option<u64>,
    /// Records up to this sequence number were trimmed (retention); 0: none.
    pub trimmed_through: u64,
}

impl StreamMeta {
    /// StreamStatus at `now_ms`: ENABLING, then ENABLED; DISABLING, then DISABLED.
    pub fn status(&self, now_ms: u64) -> &'static str {
        streams::stream_status(self.created_ms, self.disabled_ms, now_ms)
    }
}

/// One shard of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub id: String,
    pub parent: Option<String>,
    pub created_ms: u64,
    /// The shard's records have sequence numbers from here (StartingSequenceNumber).
    pub first_seq: u64,
    /// The last record written to it (EndingSequenceNumber once closed).
    pub last_seq: Option<u64>,
    pub records: u64,
    pub bytes: u64,
    pub closed: bool,
}

pub(crate) fn stream_key(table: &str, label: &str) -> String {
    format!("{table}/{label}")
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, redb::Error> {
    serde_json::from_slice(bytes).map_err(|e| redb::Error::Corrupted(format!("stream metadata: {e}")))
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialising stream metadata cannot fail")
}

fn shard_range(stream_id: u64) -> std::ops::RangeInclusive<(u64, u64)> {
    (stream_id, 0)..=(stream_id, u64::MAX)
}

/// The format tag of a stored record that carries its CRC-32 (one record per entry).
const RECORD_WITH_CRC32: u8 = 1;
/// The format tag of a block of records as JSON (written before compact records).
const RECORD_BLOCK: u8 = 2;
/// The format tag of a block of compact records, with the region they were written in.
const RECORD_COMPACT_BLOCK: u8 = 3;
/// Creation time, tag and CRC-32 before a stored record's JSON, or before a block's body.
const RECORD_HEADER_BYTES: usize = 8 + 1 + 4;
/// Sequence number and length before each record in a block's body.
const BLOCK_RECORD_HEADER_BYTES: usize = 8 + 4;
/// Bytes of records (each with its sequence number and length) a block holds at most: with
/// its header, one page (see [`APPEND_ENTRY_BYTES_MAX`]), so a batch writes a few page-sized
/// entries and no bigger leaf is written twice. A record that does not fit what is left starts
/// the next block; a record bigger than this is a block of its own.
pub(crate) const STREAM_BLOCK_BYTES_MAX: usize =
    APPEND_ENTRY_BYTES_MAX - RECORD_HEADER_BYTES - BLOCK_REGION_ALLOWANCE_BYTES;
/// Room a block keeps for the name of its region (and its length): a name of up to 31 bytes
/// keeps a full block in one page; a longer one makes full blocks a little bigger, no more.
const BLOCK_REGION_ALLOWANCE_BYTES: usize = 32;

/// Appends the compact record of `change` to a block's body, written straight into it (no
/// record is built and copied); returns whether there was one (a change that changed nothing
/// has none, and leaves the body as it was).
fn append_to_block(
    body: &mut Vec<u8>,
    change: &streams::Change<'_>,
    new_json: Option<&[u8]>,
    old_json: Option<&[u8]>,
) -> bool {
    let start = body.len();
    body.extend_from_slice(&change.seq.to_le_bytes());
    let at = body.len();
    body.extend_from_slice(&[0; 4]);
    if !streams::write_compact_record(change, new_json, old_json, body) {
        body.truncate(start);
        return false;
    }
    // A record is at most a few item images (400 KB each), far below 4 GiB.
    let len = u32::try_from(body.len() - at - 4).unwrap_or(u32::MAX);
    body[at..at + 4].copy_from_slice(&len.to_le_bytes());
    true
}

/// The item JSON of a stored form this region wrote (`record::encode` of the item the change
/// stores): the record's NewImage is then these bytes, copied instead of serialised a second
/// time. A replicated change's stored form was serialised by its origin region, possibly by
/// another build; its image is serialised here, so that records are written one way.
fn local_item_json<'r>(stored: &'r [u8], region: &str) -> Option<&'r [u8]> {
    if record::is_tombstone(stored).ok()? || record::origin(stored).ok()? != region {
        return None;
    }
    let header = record::header_bytes(stored).ok()?;
    stored.get(header.len()..)
}

/// A block of compact records written in `region`, as `stream_records` stores it: header,
/// region, then `body`.
fn encode_block(newest_ms: u64, region: &str, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_HEADER_BYTES + 2 + region.len() + body.len());
    value.extend_from_slice(&newest_ms.to_be_bytes());
    value.push(RECORD_COMPACT_BLOCK);
    value.extend_from_slice(&[0; 4]);
    streams::write_leb128(&mut value, region.len() as u64);
    value.extend_from_slice(region.as_bytes());
    value.extend_from_slice(body);
    let crc = crc32fast::hash(&value[RECORD_HEADER_BYTES..]);
    value[9..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    value
}

/// One record of a stored entry, as it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoredRecord<'a> {
    /// As GetRecords returns it (the formats before compact records).
    Json(&'a [u8]),
    /// Compact (`streams::write_compact_record`), written in `region`.
    Compact { region: &'a str, record: &'a [u8] },
}

impl StoredRecord<'_> {
    /// Appends the record as GetRecords returns it (JSON) to `out`, for stream `stream_id` of
    /// the database `store_id` at sequence number `seq`.
    pub(crate) fn write_json(&self, store_id: u64, stream_id: u64, seq: u64, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            StoredRecord::Json(json) => {
                out.extend_from_slice(json);
                Ok(())
            }
            StoredRecord::Compact { region, record } => {
                streams::render_compact_record(store_id, stream_id, seq, region, record, out)
            }
        }
    }
}

/// The records of one stored entry, keyed `first_seq`, each with its sequence number, checked:
/// a block against its CRC-32 and its structure (sequence numbers from `first_seq` up, lengths
/// inside the block), a single record against its CRC-32 or by parsing. A damaged entry is an
/// error; a compact record's structure is checked again as it is rendered.
fn stored_records(first_seq: u64, value: &[u8]) -> Result<Vec<(u64, StoredRecord<'_>)>, String> {
    let tag = value.get(8).copied();
    if tag != Some(RECORD_BLOCK) && tag != Some(RECORD_COMPACT_BLOCK) {
        return stored_record_json(value).map(|json| vec![(first_seq, StoredRecord::Json(json))]);
    }
    let (Some(crc), Some(rest)) = (value.get(9..RECORD_HEADER_BYTES), value.get(RECORD_HEADER_BYTES..)) else {
        return Err(format!(
            "a block of stream records of {} bytes is shorter than its header",
            value.len()
        ));
    };
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32fast::hash(rest);
    if stored != actual {
        return Err(format!(
            "a block of stream records has CRC-32 {actual:08x}, not the {stored:08x} stored with it (damaged on disk)"
        ));
    }
    let (region, body) = if tag == Some(RECORD_COMPACT_BLOCK) {
        let mut body = rest;
        let len = streams::read_leb128(&mut body)
            .map_err(|_| "a block of stream records has a damaged length of its region's name".to_string())?;
        let region = usize::try_from(len)
            .ok()
            .and_then(|len| body.get(..len))
            .ok_or("a block of stream records ends inside its region's name")?;
        let region = std::str::from_utf8(region)
            .map_err(|_| "a block of stream records names its region in bytes that are not UTF-8")?;
        (Some(region), &body[region.len()..])
    } else {
        (None, rest)
    };
    let mut records = Vec::new();
    let mut rest = body;
    let mut expected_at_least = first_seq;
    while !rest.is_empty() {
        let (Some(seq), Some(len)) = (rest.get(..8), rest.get(8..BLOCK_RECORD_HEADER_BYTES)) else {
            return Err("a block of stream records ends inside a record's header".to_string());
        };
        let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(record) = rest.get(BLOCK_RECORD_HEADER_BYTES..BLOCK_RECORD_HEADER_BYTES.saturating_add(len)) else {
            return Err(format!("a record of {len} bytes runs past the end of its block"));
        };
        if seq < expected_at_least || (records.is_empty() && seq != first_seq) {
            return Err(format!(
                "a block of stream records keyed {first_seq} holds sequence number {seq} out of order"
            ));
        }
        expected_at_least = seq.saturating_add(1);
        let record = match region {
            Some(region) => StoredRecord::Compact { region, record },
            None => StoredRecord::Json(record),
        };
        records.push((seq, record));
        rest = &rest[BLOCK_RECORD_HEADER_BYTES + len..];
    }
    if records.is_empty() {
        return Err("a block of stream records is empty".to_string());
    }
    Ok(records)
}

/// Reads a stored `stream_records` entry keyed `(stream_id, first_seq)` as GetRecords would,
/// rendering each record's JSON into `out` (comma-separated); returns how many it held. For
/// the fuzz target and tools: any bytes give records or an error naming the damage.
pub fn render_stored_stream_entry(
    store_id: u64,
    stream_id: u64,
    first_seq: u64,
    value: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let records = stored_records(first_seq, value)?;
    for (at, (seq, record)) in records.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        record.write_json(store_id, stream_id, *seq, out)?;
    }
    Ok(records.len())
}

/// The creation time a stored entry carries (its newest record's, for a block).
fn stored_created_ms(value: &[u8]) -> u64 {
    value
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// The JSON of a stored record, checked: against its CRC-32, or (a record written before
/// records carried one) by parsing it. A damaged record is an error, never bad JSON to a client.
fn stored_record_json(value: &[u8]) -> Result<&[u8], String> {
    match value.get(8) {
        Some(&RECORD_WITH_CRC32) => {
            let (Some(crc), Some(json)) = (value.get(9..RECORD_HEADER_BYTES), value.get(RECORD_HEADER_BYTES..)) else {
                return Err(format!(
                    "a stream record of {} bytes is shorter than its header",
                    value.len()
                ));
            };
            let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
            let actual = crc32fast::hash(json);
            if stored != actual {
                return Err(format!(
                    "a stream record's CRC-32 is {actual:08x}, not the {stored:08x} stored with it (damaged on disk)"
                ));
            }
            Ok(json)
        }
        Some(b'{') => {
            let json = &value[8..];
            serde_json::from_slice::<serde::de::IgnoredAny>(json)
                .map_err(|e| format!("a stream record is not JSON: {e}"))?;
            Ok(json)
        }
        _ => Err("a stream record has an unknown format".to_string()),
    }
}

/// What a batch knows of the streams it appends to: the sequence counter and each stream's
/// open shard are read once per batch, kept here while its jobs append, and written back once,
/// before the batch commits (`WriteContext::flush_streams`). A change then costs its record's
/// insert and nothing else: re-reading and rewriting the stream's metadata, the sequence and
/// the shard's counters per change halved PutItem throughput (BENCHMARKS.md, Streams).
/// Dropped with the batch, so a batch that fails leaves nothing behind.
#[derive(Default)]
pub(super) struct StreamBatch {
    /// The last sequence number handed out, once read; and whether it moved.
    seq: Option<u64>,
    seq_dirty: bool,
    /// Per stream key (`TABLE/LABEL`): the stream's open shard (`None`: the stream is disabled
    /// or gone). A batch appends to one or a few streams: a list, searched without building
    /// the key.
    open: Vec<(String, Option<OpenShard>)>,
    /// The limits in force, read once per batch.
    limits: Option<StreamLimits>,
    /// The JSON of the item the change being stored replaces, when this region wrote it and
    /// the stream shows old images (`old_json_set`): copied into the record as its OldImage.
    old_json: Vec<u8>,
    old_json_set: bool,
}

impl StreamBatch {
    /// Keeps the JSON of `previous` (the stored form a change replaces) for the change's
    /// record, when this region wrote it; forgets the last one otherwise.
    pub(super) fn keep_old_json(&mut self, previous: Option<&[u8]>, region: &str) {
        self.old_json.clear();
        self.old_json_set = false;
        if let Some(json) = previous.and_then(|stored| local_item_json(stored, region)) {
            self.old_json.extend_from_slice(json);
            self.old_json_set = true;
        }
    }
}

impl StreamBatch {
    /// Where stream `table/label` is in `open`.
    fn position(&self, table: &str, label: &str) -> Option<usize> {
        self.open.iter().position(|(key, _)| {
            key.len() == table.len() + 1 + label.len()
                && key.starts_with(table)
                && key.as_bytes()[table.len()] == b'/'
                && key.ends_with(label)
        })
    }
}

struct OpenShard {
    stream_id: u64,
    view_type: ViewType,
    shard: ShardMeta,
    dirty: bool,
    /// The block this batch is filling: its records' bytes (see the module's format), its first
    /// sequence number and its newest record's time.
    block: Vec<u8>,
    block_first_seq: u64,
    block_newest_ms: u64,
}

impl OpenShard {
    /// Stores the block being filled, if it holds anything, and starts an empty one.
    fn store_block(&mut self, txn: &LoggedTxn, region: &str) -> Result<(), redb::Error> {
        if self.block.is_empty() {
            return Ok(());
        }
        let value = encode_block(self.block_newest_ms, region, &self.block);
        txn.open_table(STREAM_RECORDS)?
            .insert((self.stream_id, self.block_first_seq), value.as_slice())?;
        self.block.clear();
        Ok(())
    }
}

impl WriteContext<'_> {
    /// Records the change of one item in the table's stream, if it has an enabled one and the
    /// change changed anything. `stored` is what `store` wrote for `new` (its stored form).
    pub(super) fn stream_append(
        &mut self,
        table: &TableMeta,
        old: Option<&Item>,
        new: Option<&Item>,
        stored: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        let old_json_set = std::mem::take(&mut self.streams.old_json_set);
        let Some(stream) = table.stream.as_ref().filter(|s| s.enabled) else {
            return Ok(());
        };
        if old == new {
            return Ok(());
        }
        let now_ms = self.shared.clock.now_unix_ms();
        let at = match self.streams.position(&table.name, &stream.label) {
            Some(at) => at,
            None => {
                let open = self.load_open_shard(table, stream, now_ms)?;
                self.streams.open.push((stream_key(&table.name, &stream.label), open));
                self.streams.open.len() - 1
            }
        };
        if self.streams.open[at].1.is_none() {
            return Ok(());
        }
        let seq = self.last_stream_seq()? + 1;
        let limits = *self
            .streams
            .limits
            .get_or_insert_with(|| *self.shared.stream_limits.read().expect("limits lock is never poisoned"));
        let open = self.streams.open[at].1.as_mut().expect("checked above");
        if due_for_rollover(&open.shard, &limits, now_ms) {
            roll_over(self.txn, &self.shared.region, open, now_ms, seq)?;
        }
        if open.block.is_empty() {
            open.block_first_seq = seq;
            open.block.reserve(STREAM_BLOCK_BYTES_MAX / 4);
        }
        let before = open.block.len();
        let change = streams::Change {
            store_id: self.shared.store_id,
            stream_id: open.stream_id,
            seq,
            view_type: open.view_type,
            key: &table.key,
            region: &self.shared.region,
            old,
            new,
            ttl: self.ttl_delete,
            now_ms,
        };
        let new_json = new
            .and(stored)
            .and_then(|stored| local_item_json(stored, &self.shared.region));
        let old_json = (old_json_set && old.is_some()).then_some(self.streams.old_json.as_slice());
        if !append_to_block(&mut open.block, &change, new_json, old_json) {
            // Only an item without its key attributes (never stored) has no record.
            return Ok(());
        }
        let record_bytes = (open.block.len() - before) as u64;
        if before > 0 && open.block.len() > STREAM_BLOCK_BYTES_MAX {
            // The record does not fit what was left: the block is stored without it, and the
            // record starts the next one.
            let record = open.block.split_off(before);
            open.store_block(self.txn, &self.shared.region)?;
            open.block = record;
            open.block_first_seq = seq;
            open.block_newest_ms = now_ms;
        }
        open.block_newest_ms = open.block_newest_ms.max(now_ms);
        open.shard.records += 1;
        open.shard.bytes += record_bytes + streams::RENDERED_RECORD_OVERHEAD_BYTES;
        open.shard.last_seq = Some(seq);
        open.dirty = true;
        if open.block.len() >= STREAM_BLOCK_BYTES_MAX {
            open.store_block(self.txn, &self.shared.region)?;
        }
        self.streams.seq = Some(seq);
        self.streams.seq_dirty = true;
        Ok(())
    }

    /// The last sequence number handed out (read once per batch).
    fn last_stream_seq(&mut self) -> Result<u64, redb::Error> {
        if let Some(seq) = self.streams.seq {
            return Ok(seq);
        }
        let seq = self
            .txn
            .open_table(SETTINGS)?
            .get(STREAM_SEQ)?
            .map(|v| v.value())
            .unwrap_or(0);
        self.streams.seq = Some(seq);
        Ok(seq)
    }

    /// The open shard of a table's enabled stream, registering the stream if storage has none
    /// yet; `None` when the stored stream is disabled.
    fn load_open_shard(
        &mut self,
        table: &TableMeta,
        stream: &TableStream,
        now_ms: u64,
    ) -> Result<Option<OpenShard>, redb::Error> {
        let key = stream_key(&table.name, &stream.label);
        let meta = {
            let streams = self.txn.open_table(STREAMS)?;
            let found = streams.get(key.as_str())?;
            found
                .map(|bytes| decode_json::<StreamMeta>(bytes.value()))
                .transpose()?
        };
        let meta = match meta {
            Some(meta) if meta.disabled_ms.is_none() => meta,
            Some(_) => return Ok(None),
            None => self.create_stream(table, stream, now_ms)?,
        };
        let last = {
            let shards = self.txn.open_table(STREAM_SHARDS)?;
            let last = shards.range(shard_range(meta.id))?.next_back().transpose()?;
            last.map(|(_, v)| decode_json::<ShardMeta>(v.value())).transpose()?
        };
        let shard = match last {
            Some(shard) if !shard.closed => shard,
            // A stream whose last shard closed (only `sync_streams` closes one, and it disables
            // the stream too) gets a child, so appends always have an open shard.
            Some(parent) => new_shard(meta.id, Some(parent.id), now_ms, self.last_stream_seq()? + 1),
            None => new_shard(meta.id, None, now_ms, self.last_stream_seq()? + 1),
        };
        Ok(Some(OpenShard {
            stream_id: meta.id,
            view_type: meta.view_type,
            shard,
            dirty: false,
            block: Vec::new(),
            block_first_seq: 0,
            block_newest_ms: 0,
        }))
    }

    /// Writes back what this batch's appends changed: the open shards' counters and the
    /// sequence. Runs before the batch commits, and before anything else in the batch reads or
    /// changes stream metadata (which then reads it from storage again).
    pub(super) fn flush_streams(&mut self) -> Result<(), redb::Error> {
        let batch = std::mem::take(&mut self.streams);
        for mut open in batch
            .open
            .into_iter()
            .filter_map(|(_, open)| open)
            .filter(|open| open.dirty)
        {
            open.store_block(self.txn, &self.shared.region)?;
            self.txn.open_table(STREAM_SHARDS)?.insert(
                (open.stream_id, open.shard.first_seq),
                encode_json(&open.shard).as_slice(),
            )?;
        }
        if let (Some(seq), true) = (batch.seq, batch.seq_dirty) {
            self.txn.open_table(SETTINGS)?.insert(STREAM_SEQ, seq)?;
        }
        Ok(())
    }

    /// Registers a table's newly enabled stream (with its first shard).
    fn create_stream(
        &mut self,
        table: &TableMeta,
        stream: &TableStream,
        now_ms: u64,
    ) -> Result<StreamMeta, redb::Error> {
        let id = {
            let mut settings = self.txn.open_table(SETTINGS)?;
            let id = settings.get(NEXT_STREAM_ID)?.map(|v| v.value()).unwrap_or(1);
            settings.insert(NEXT_STREAM_ID, id + 1)?;
            id
        };
        let next_seq = self.last_stream_seq()? + 1;
        let meta = StreamMeta {
            id,
            table: table.name.clone(),
            label: stream.label.clone(),
            view_type: stream.view_type,
            key: table.key.clone(),
            created_ms: now_ms,
            disabled_ms: None,
            trimmed_through: 0,
        };
        let key = stream_key(&table.name, &stream.label);
        self.txn
            .open_table(STREAMS)?
            .insert(key.as_str(), encode_json(&meta).as_slice())?;
        let shard = new_shard(id, None, now_ms, next_seq);
        self.txn
            .open_table(STREAM_SHARDS)?
            .insert((id, shard.first_seq), encode_json(&shard).as_slice())?;
        Ok(meta)
    }

    /// Brings the stored streams of `table` in line with its definition: the enabled stream
    /// exists, every other stream of the table is disabled (all of them when `dropped`).
    pub(super) fn sync_streams(&mut self, table: &TableMeta, dropped: bool) -> Result<(), redb::Error> {
        self.flush_streams()?;
        let now_ms = self.shared.clock.now_unix_ms();
        let current = table.stream.as_ref().filter(|s| s.enabled && !dropped);
        let prefix = format!("{}/", table.name);
        let mut to_disable = Vec::new();
        let mut current_exists = false;
        {
            let streams = self.txn.open_table(STREAMS)?;
            for entry in streams.range::<&str>(prefix.as_str()..)? {
                let (key, value) = entry?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                let meta: StreamMeta = decode_json(value.value())?;
                if current.is_some_and(|c| c.label == meta.label) {
                    current_exists = true;
                } else if meta.disabled_ms.is_none() {
                    to_disable.push(meta);
                }
            }
        }
        for mut meta in to_disable {
            meta.disabled_ms = Some(now_ms);
            self.close_open_shard(meta.id)?;
            let key = stream_key(&meta.table, &meta.label);
            self.txn
                .open_table(STREAMS)?
                .insert(key.as_str(), encode_json(&meta).as_slice())?;
        }
        if let (Some(stream), false) = (current, current_exists) {
            self.create_stream(table, stream, now_ms)?;
        }
        Ok(())
    }

    /// Closes a stream's open shard. One without records stays, closed and empty, as DynamoDB
    /// keeps it: a reader holding an iterator into it reads its end, not a trimmed shard.
    fn close_open_shard(&mut self, stream_id: u64) -> Result<(), redb::Error> {
        let mut shards = self.txn.open_table(STREAM_SHARDS)?;
        let last = {
            let last = shards.range(shard_range(stream_id))?.next_back().transpose()?;
            last.map(|(k, v)| Ok::<_, redb::Error>((k.value().1, decode_json::<ShardMeta>(v.value())?)))
                .transpose()?
        };
        match last {
            Some((first, mut shard)) if !shard.closed => {
                shard.closed = true;
                shards.insert((stream_id, first), encode_json(&shard).as_slice())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// One retention sweep over every stream: trims records older than the retention, drops
    /// closed shards left without records, and forgets disabled streams whose retention ended.
    /// Returns the records deleted.
    fn trim_streams(&mut self, now_ms: u64, limits: StreamLimits) -> Result<usize, redb::Error> {
        self.flush_streams()?;
        let horizon = now_ms.saturating_sub(limits.retention_ms);
        let metas: Vec<StreamMeta> = {
            let streams = self.txn.open_table(STREAMS)?;
            let mut metas = Vec::new();
            for entry in streams.iter()? {
                let (_, value) = entry?;
                metas.push(decode_json(value.value())?);
            }
            metas
        };
        let mut budget = streams::TRIM_RECORDS_PER_SWEEP_MAX;
        let mut deleted = 0;
        for mut meta in metas {
            if budget == 0 {
                break;
            }
            let forget = meta.disabled_ms.is_some_and(|at| at <= horizon);
            // Whole entries go (a block once its newest record is past retention); `through`
            // is the last sequence number they held.
            let mut trimmed = Vec::new();
            let mut through = None;
            let mut count = 0;
            {
                let records = self.txn.open_table(STREAM_RECORDS)?;
                for entry in records.range(shard_range(meta.id))? {
                    let (key, value) = entry?;
                    let value = value.value();
                    if (!forget && stored_created_ms(value) > horizon) || count >= budget {
                        break;
                    }
                    let first = key.value().1;
                    // A damaged entry past retention goes too; it counts as one record.
                    let held = stored_records(first, value).unwrap_or_default();
                    count += held.len().max(1);
                    through = Some(held.last().map_or(first, |(seq, _)| *seq));
                    trimmed.push(first);
                }
            }
            budget = budget.saturating_sub(count);
            deleted += count;
            let mut records = self.txn.open_table(STREAM_RECORDS)?;
            for seq in &trimmed {
                records.remove((meta.id, *seq))?;
            }
            let left = records.range(shard_range(meta.id))?.next().is_some();
            drop(records);
            let mut shards = self.txn.open_table(STREAM_SHARDS)?;
            if forget && !left {
                shards.retain_in(shard_range(meta.id), |_, _| false)?;
                drop(shards);
                self.txn
                    .open_table(STREAMS)?
                    .remove(stream_key(&meta.table, &meta.label).as_str())?;
                continue;
            }
            let Some(through) = through else {
                continue;
            };
            meta.trimmed_through = meta.trimmed_through.max(through);
            // Closed shards whose every record is gone are dropped (DescribeStream no longer
            // lists them), as DynamoDB drops shards past retention.
            let mut gone = Vec::new();
            for entry in shards.range(shard_range(meta.id))? {
                let (key, value) = entry?;
                let shard: ShardMeta = decode_json(value.value())?;
                if shard.closed && shard.last_seq.is_none_or(|last| last <= meta.trimmed_through) {
                    gone.push(key.value());
                }
            }
            for key in gone {
                shards.remove(key)?;
            }
            drop(shards);
            self.txn.open_table(STREAMS)?.insert(
                stream_key(&meta.table, &meta.label).as_str(),
                encode_json(&meta).as_slice(),
            )?;
        }
        Ok(deleted)
    }
}

/// Closes an open shard (writing it back now) and opens its child, whose first record is
/// `first_seq`.
fn roll_over(
    txn: &LoggedTxn,
    region: &str,
    open: &mut OpenShard,
    now_ms: u64,
    first_seq: u64,
) -> Result<(), redb::Error> {
    // A block belongs to one shard: the closing shard's records are stored now.
    open.store_block(txn, region)?;
    open.shard.closed = true;
    txn.open_table(STREAM_SHARDS)?.insert(
        (open.stream_id, open.shard.first_seq),
        encode_json(&open.shard).as_slice(),
    )?;
    open.shard = new_shard(open.stream_id, Some(open.shard.id.clone()), now_ms, first_seq);
    open.dirty = true;
    Ok(())
}

fn due_for_rollover(shard: &ShardMeta, limits: &StreamLimits, now_ms: u64) -> bool {
    shard.records > 0
        && (shard.records >= limits.shard_records_max
            || shard.bytes >= limits.shard_bytes_max
            || now_ms.saturating_sub(shard.created_ms) >= limits.shard_age_ms)
}

fn new_shard(stream_id: u64, parent: Option<String>, now_ms: u64, first_seq: u64) -> ShardMeta {
    ShardMeta {
        id: streams::shard_id(now_ms, stream_id, first_seq),
        parent,
        created_ms: now_ms,
        first_seq,
        last_seq: None,
        records: 0,
        bytes: 0,
        closed: false,
    }
}

/// What GetRecords read from one shard.
pub struct ShardRead {
    /// The records read (appended to the caller's buffer).
    pub count: usize,
    /// The position after the last record read (the next read starts there).
    pub next: u64,
    /// The shard is closed and the read reached its end: no next iterator.
    pub ended: bool,
}

impl Snapshot {
    fn open_or_empty<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, ApiError> {
        match self.txn.open_table(definition) {
            Ok(table) => Ok(Some(table)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(storage_error("opening stream storage", e)),
        }
    }

    /// Streams in ARN order (table name, then label), from after `after` (a stream key).
    pub fn streams(&self, table: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<StreamMeta>, ApiError> {
        let Some(streams) = self.open_or_empty(STREAMS)? else {
            return Ok(Vec::new());
        };
        let start = match (after, table) {
            (Some(after), _) => Bound::Excluded(after.to_string()),
            (None, Some(table)) => Bound::Included(format!("{table}/")),
            (None, None) => Bound::Unbounded,
        };
        let bounds = (start.as_ref().map(String::as_str), Bound::Unbounded);
        let mut out = Vec::new();
        for entry in streams
            .range::<&str>(bounds)
            .map_err(|e| storage_error("reading streams", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading streams", e))?;
            if let Some(table) = table
                && !key.value().starts_with(&format!("{table}/"))
            {
                if key.value() > format!("{table}/").as_str() {
                    break;
                }
                continue;
            }
            out.push(decode_json(value.value()).map_err(|e| storage_error("decoding a stream", e))?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn stream(&self, table: &str, label: &str) -> Result<Option<StreamMeta>, ApiError> {
        let Some(streams) = self.open_or_empty(STREAMS)? else {
            return Ok(None);
        };
        let found = streams
            .get(stream_key(table, label).as_str())
            .map_err(|e| storage_error("reading a stream", e))?;
        found
            .map(|v| decode_json(v.value()).map_err(|e| storage_error("decoding a stream", e)))
            .transpose()
    }

    /// A stream's shards, oldest first.
    pub fn shards(&self, stream_id: u64) -> Result<Vec<ShardMeta>, ApiError> {
        let Some(shards) = self.open_or_empty(STREAM_SHARDS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in shards
            .range(shard_range(stream_id))
            .map_err(|e| storage_error("reading shards", e))?
        {
            let (_, value) = entry.map_err(|e| storage_error("reading shards", e))?;
            out.push(decode_json(value.value()).map_err(|e| storage_error("decoding a shard", e))?);
        }
        Ok(out)
    }

    /// The last sequence number handed out (the next record gets a higher one).
    pub fn stream_seq(&self) -> Result<u64, ApiError> {
        let settings = self
            .txn
            .open_table(SETTINGS)
            .map_err(|e| storage_error("opening settings", e))?;
        let seq = settings
            .get(STREAM_SEQ)
            .map_err(|e| storage_error("reading settings", e))?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok(seq)
    }

    /// Reads a shard's records from `position`: at most `limit` records and about `bytes_max`
    /// bytes (at least one record). Each record's JSON is appended to `out` as stored (a
    /// response splices them in without parsing and serialising them again, most of a
    /// GetRecords' cost), separated by commas.
    pub fn read_shard(
        &self,
        store_id: u64,
        stream_id: u64,
        shard: &ShardMeta,
        position: u64,
        (limit, bytes_max): (usize, usize),
        out: &mut Vec<u8>,
    ) -> Result<ShardRead, ApiError> {
        let end = if shard.closed {
            shard.last_seq.unwrap_or(shard.first_seq.saturating_sub(1))
        } else {
            u64::MAX
        };
        let mut read = ShardRead {
            count: 0,
            next: position,
            ended: shard.closed && position > end,
        };
        if read.ended {
            return Ok(read);
        }
        let Some(records) = self.open_or_empty(STREAM_RECORDS)? else {
            read.ended = shard.closed;
            return Ok(read);
        };
        // The entry holding `position` may start before it (a block): read from that entry's key.
        let from = records
            .range((stream_id, 0)..=(stream_id, position))
            .map_err(|e| storage_error("reading stream records", e))?
            .next_back()
            .transpose()
            .map_err(|e| storage_error("reading stream records", e))?
            .map_or(position, |(key, _)| key.value().1);
        let mut bytes = 0;
        let mut exhausted = true;
        'entries: for entry in records
            .range((stream_id, from)..=(stream_id, end))
            .map_err(|e| storage_error("reading stream records", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading stream records", e))?;
            let held =
                stored_records(key.value().1, value.value()).map_err(|e| storage_error("reading stream records", e))?;
            for (seq, record) in held {
                if seq < position || seq > end {
                    continue;
                }
                if read.count >= limit {
                    exhausted = false;
                    break 'entries;
                }
                let mark = out.len();
                if read.count > 0 {
                    out.push(b',');
                }
                record
                    .write_json(store_id, stream_id, seq, out)
                    .map_err(|e| storage_error("reading stream records", e))?;
                let len = out.len() - mark;
                if read.count > 0 && bytes + len > bytes_max {
                    out.truncate(mark);
                    exhausted = false;
                    break 'entries;
                }
                bytes += len;
                read.count += 1;
                read.next = seq + 1;
            }
        }
        read.ended = shard.closed && exhausted;
        Ok(read)
    }
}

impl Snapshot {
    /// Where GetShardIterator's AT_TIMESTAMP starts in `shard`: the sequence number of its
    /// first record, from `from` on, whose creation second (the ApproximateCreationDateTime
    /// records show) is `at_s` or later, or `None` when no record of the shard is that recent
    /// yet. Whole blocks older than `at_s` (by their newest record's time) are skipped unread.
    pub fn shard_position_at(
        &self,
        stream_id: u64,
        shard: &ShardMeta,
        from: u64,
        at_s: u64,
    ) -> Result<Option<u64>, ApiError> {
        let end = if shard.closed {
            shard.last_seq.unwrap_or(shard.first_seq.saturating_sub(1))
        } else {
            u64::MAX
        };
        if from > end {
            return Ok(None);
        }
        let Some(records) = self.open_or_empty(STREAM_RECORDS)? else {
            return Ok(None);
        };
        let start = records
            .range((stream_id, 0)..=(stream_id, from))
            .map_err(|e| storage_error("reading stream records", e))?
            .next_back()
            .transpose()
            .map_err(|e| storage_error("reading stream records", e))?
            .map_or(from, |(key, _)| key.value().1);
        for entry in records
            .range((stream_id, start)..=(stream_id, end))
            .map_err(|e| storage_error("reading stream records", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading stream records", e))?;
            let entry_s = stored_created_ms(value.value()) / 1000;
            if entry_s < at_s {
                continue;
            }
            let held =
                stored_records(key.value().1, value.value()).map_err(|e| storage_error("reading stream records", e))?;
            for (seq, record) in held {
                if seq < from || seq > end {
                    continue;
                }
                let created_s = match record {
                    StoredRecord::Compact { record, .. } => streams::compact_record_created_s(record)
                        .map_err(|e| storage_error("reading stream records", e))?,
                    // Records of earlier formats: the entry's time (a block's newest record's).
                    StoredRecord::Json(_) => entry_s,
                };
                if created_s >= at_s {
                    return Ok(Some(seq));
                }
            }
        }
        Ok(None)
    }
}

impl Engine {
    /// The stream limits (retention, shard rollover) in force.
    pub fn stream_limits(&self) -> StreamLimits {
        *self.shared.stream_limits.read().expect("limits lock is never poisoned")
    }

    /// Changes the stream limits (tests use small ones).
    pub fn set_stream_limits(&self, limits: StreamLimits) {
        *self
            .shared
            .stream_limits
            .write()
            .expect("limits lock is never poisoned") = limits;
    }

    /// A new stream label: the current time, later than every label this process minted.
    /// Starts the stream labels after the newest stored one, so a label made after the clock
    /// was set back across a restart is still newer than the table's earlier streams' (an equal
    /// one would make the old, disabled stream the table's current one). Called at open.
    pub(super) fn seed_stream_labels(&self) {
        let newest = self
            .snapshot()
            .and_then(|snapshot| snapshot.streams(None, None, usize::MAX))
            .map(|streams| streams.iter().filter_map(|s| streams::label_ms(&s.label)).max())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "reading the stored streams' labels failed; new labels follow the clock alone");
                None
            });
        // A disabled stream forgotten after retention keeps its label only on its table.
        let on_tables = self
            .tables()
            .iter()
            .filter_map(|table| table.stream.as_ref().and_then(|s| streams::label_ms(&s.label)))
            .max();
        if let Some(newest) = newest.max(on_tables) {
            self.shared
                .stream_label_ms
                .fetch_max(newest, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub fn new_stream_label(&self) -> String {
        let now = self.now_unix_ms();
        let previous = self
            .shared
            .stream_label_ms
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        let ms = if previous >= now {
            self.shared
                .stream_label_ms
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
        } else {
            now
        };
        streams::label_at(ms)
    }

    /// One retention sweep (see `WriteContext::trim_streams`); runs a write only when a
    /// stream has something to trim or forget. Returns the records deleted.
    pub async fn trim_streams_once(&self) -> Result<usize, ApiError> {
        let now_ms = self.sweep_now_ms();
        let limits = self.stream_limits();
        let horizon = now_ms.saturating_sub(limits.retention_ms);
        let due = {
            let snapshot = self.snapshot()?;
            let Some(records) = snapshot.open_or_empty(STREAM_RECORDS)? else {
                return Ok(0);
            };
            let mut due = false;
            for meta in snapshot.streams(None, None, usize::MAX)? {
                if meta.disabled_ms.is_some_and(|at| at <= horizon) {
                    due = true;
                    break;
                }
                let first = records
                    .range(shard_range(meta.id))
                    .map_err(|e| storage_error("reading stream records", e))?
                    .next()
                    .transpose()
                    .map_err(|e| storage_error("reading stream records", e))?;
                if let Some((_, value)) = first
                    && stored_created_ms(value.value()) <= horizon
                {
                    due = true;
                    break;
                }
            }
            due
        };
        if !due {
            return Ok(0);
        }
        self.write(move |context| {
            let result = context.trim_streams(now_ms, limits);
            result.map_err(|e| context.fail("trimming streams", e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(json: &str) -> Vec<u8> {
        let mut value = 1_800_000_000_000u64.to_be_bytes().to_vec();
        value.push(RECORD_WITH_CRC32);
        value.extend_from_slice(&crc32fast::hash(json.as_bytes()).to_le_bytes());
        value.extend_from_slice(json.as_bytes());
        value
    }

    #[test]
    fn stored_records_are_checked_against_their_crc() {
        let value = record_of(r#"{"eventName":"INSERT"}"#);
        assert_eq!(stored_record_json(&value), Ok(&br#"{"eventName":"INSERT"}"#[..]));
        // One flipped bit inside a string: still JSON, but not what was written.
        let mut damaged = value.clone();
        let last = damaged.len() - 4;
        damaged[last] ^= 0x01;
        let error = stored_record_json(&damaged).expect_err("a damaged record is refused");
        assert!(error.contains("CRC-32"), "{error}");
        assert!(stored_record_json(&value[..11]).is_err(), "a cut header");
    }

    /// The body of a block: `records` (sequence number, bytes), each after its header.
    fn body_of(records: &[(u64, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (seq, bytes) in records {
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes.as_bytes());
        }
        body
    }

    /// A block of `records` (sequence number, compact bytes) as the writer stores it.
    fn block_of(records: &[(u64, &str)]) -> Vec<u8> {
        encode_block(1_800_000_000_000, "eu-west-1", &body_of(records))
    }

    /// A block of `records` (sequence number, JSON) as the writer stored it before compact
    /// records (the tag 2).
    fn json_block_of(records: &[(u64, &str)]) -> Vec<u8> {
        let body = body_of(records);
        let mut value = 1_800_000_000_000u64.to_be_bytes().to_vec();
        value.push(RECORD_BLOCK);
        value.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        value.extend_from_slice(&body);
        value
    }

    #[test]
    fn blocks_hold_a_batchs_records_and_are_checked() {
        let compact = |record: &'static str| StoredRecord::Compact {
            region: "eu-west-1",
            record: record.as_bytes(),
        };
        let block = block_of(&[(7, "a"), (8, "bb"), (11, "c")]);
        assert_eq!(stored_created_ms(&block), 1_800_000_000_000);
        assert_eq!(
            stored_records(7, &block),
            Ok(vec![(7, compact("a")), (8, compact("bb")), (11, compact("c"))])
        );
        // Blocks of JSON records, and entries of the formats before blocks, still read.
        assert_eq!(
            stored_records(7, &json_block_of(&[(7, r#"{"a":1}"#), (9, r#"{"b":2}"#)])),
            Ok(vec![
                (7, StoredRecord::Json(br#"{"a":1}"#)),
                (9, StoredRecord::Json(br#"{"b":2}"#))
            ])
        );
        let single = record_of(r#"{"eventName":"INSERT"}"#);
        assert_eq!(
            stored_records(5, &single),
            Ok(vec![(5, StoredRecord::Json(br#"{"eventName":"INSERT"}"#))])
        );
        // Every damage is an error naming it, never a panic.
        let mut flipped = block.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert!(stored_records(7, &flipped).expect_err("crc").contains("CRC-32"));
        assert!(stored_records(6, &block).expect_err("key").contains("out of order"));
        let backwards = block_of(&[(7, "{}"), (7, "{}")]);
        assert!(
            stored_records(7, &backwards)
                .expect_err("repeat")
                .contains("out of order")
        );
        let long = {
            let mut body = 9u64.to_le_bytes().to_vec();
            body.extend_from_slice(&u32::MAX.to_le_bytes());
            body.extend_from_slice(b"{}");
            encode_block(0, "r", &body)
        };
        assert!(stored_records(9, &long).expect_err("length").contains("past the end"));
        let cut = encode_block(0, "r", &9u64.to_le_bytes());
        assert!(stored_records(9, &cut).expect_err("cut").contains("header"));
        assert!(
            stored_records(9, &encode_block(0, "r", &[]))
                .expect_err("empty")
                .contains("empty")
        );
        assert!(stored_records(9, &block[..10]).is_err(), "a cut block header");
        // A region name cut short, or not UTF-8 (the CRC-32 made to match).
        let with_crc = |mut value: Vec<u8>| {
            let crc = crc32fast::hash(&value[RECORD_HEADER_BYTES..]);
            value[9..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            value
        };
        let mut short = encode_block(0, "", &[]);
        short[RECORD_HEADER_BYTES] = 5;
        assert!(
            stored_records(9, &with_crc(short))
                .expect_err("short")
                .contains("region")
        );
        let mut bad = encode_block(0, "ab", &body_of(&[(9, "x")]));
        bad[RECORD_HEADER_BYTES + 1] = 0xff;
        assert!(stored_records(9, &with_crc(bad)).expect_err("utf-8").contains("UTF-8"));
    }

    proptest::proptest! {
        #[test]
        fn any_stored_bytes_read_as_records_or_an_error(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            tag in 0u8..4,
            first in 0u64..4,
        ) {
            let mut value = value;
            if value.len() > 8 {
                value[8] = tag;
            }
            let _ = stored_records(first, &value);
            let _ = stored_created_ms(&value);
        }
    }

    #[test]
    fn records_written_before_the_crc_are_checked_by_parsing() {
        let mut old = 1_800_000_000_000u64.to_be_bytes().to_vec();
        old.extend_from_slice(br#"{"eventName":"MODIFY"}"#);
        assert_eq!(stored_record_json(&old), Ok(&br#"{"eventName":"MODIFY"}"#[..]));
        old.truncate(old.len() - 1);
        assert!(stored_record_json(&old).expect_err("cut JSON").contains("not JSON"));
        let mut unknown = 1_800_000_000_000u64.to_be_bytes().to_vec();
        unknown.push(7);
        assert!(
            stored_record_json(&unknown)
                .expect_err("unknown tag")
                .contains("unknown format")
        );
        assert!(stored_record_json(&[1, 2, 3]).is_err(), "shorter than a time");
    }
}

#[cfg(test)]
mod page_tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::ops::Store;

    async fn call(store: &Store, operation: &str, body: Value) -> Value {
        let answer = match operation {
            "DescribeStream" | "GetShardIterator" | "GetRecords" => {
                crate::streams::api::handle(store.engine(), operation, body.to_string().as_bytes())
                    .await
                    .map(|answer| serde_json::from_slice(&answer).expect("a Streams answer is JSON"))
            }
            _ => store.handle(operation, body.to_string().as_bytes()).await,
        };
        answer.unwrap_or_else(|e| panic!("{operation}: {e}"))
    }

    /// Every record of the table's one shard, from the trim horizon.
    async fn records(store: &Store, table: &str) -> Vec<Value> {
        let described = call(store, "DescribeTable", json!({"TableName": table})).await;
        let arn = described["Table"]["LatestStreamArn"]
            .as_str()
            .expect("stream")
            .to_string();
        let stream = call(store, "DescribeStream", json!({"StreamArn": arn})).await;
        let shard = stream["StreamDescription"]["Shards"][0]["ShardId"]
            .as_str()
            .expect("shard")
            .to_string();
        let iterator = call(
            store,
            "GetShardIterator",
            json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
        )
        .await;
        let page = call(store, "GetRecords", json!({"ShardIterator": iterator["ShardIterator"]})).await;
        page["Records"].as_array().expect("records").clone()
    }

    /// A batch whose records pass one page's worth stores them as several blocks, each within a
    /// page (a record bigger than that as a block of its own), and every record reads back once,
    /// in order.
    #[tokio::test]
    async fn a_batchs_records_are_stored_in_page_sized_blocks() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(crate::engine::SystemClock)).expect("open engine");
        let store = Store::new(engine.clone());
        call(
            &store,
            "CreateTable",
            json!({
                "TableName": "tab",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
                "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"},
            }),
        )
        .await;
        // One BatchWriteItem is one job, so one batch of the writer: 24 records of ~700 bytes
        // and one of ~20 KB.
        let puts: Vec<Value> = (0..25)
            .map(|i| {
                let size = if i == 12 { 20_000 } else { 600 };
                json!({"PutRequest": {"Item": {"pk": {"S": format!("k{i:02}")}, "pad": {"S": "p".repeat(size)}}}})
            })
            .collect();
        call(&store, "BatchWriteItem", json!({"RequestItems": {"tab": puts}})).await;
        let sizes: Vec<usize> = {
            let snapshot = engine.snapshot().expect("snapshot");
            let blocks = snapshot.txn.open_table(STREAM_RECORDS).expect("records");
            blocks
                .iter()
                .expect("blocks")
                .map(|entry| entry.expect("block").1.value().len())
                .collect()
        };
        let big: Vec<&usize> = sizes.iter().filter(|size| **size > APPEND_ENTRY_BYTES_MAX).collect();
        assert_eq!(big.len(), 1, "only the 20 KB record is a block past a page: {sizes:?}");
        assert!(
            sizes.len() >= 5,
            "24 records of ~700 bytes need several pages: {sizes:?}"
        );
        let records = records(&store, "tab").await;
        let seqs: Vec<u128> = records
            .iter()
            .map(|r| {
                r["dynamodb"]["SequenceNumber"]
                    .as_str()
                    .expect("seq")
                    .parse()
                    .expect("number")
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        let keys: Vec<String> = records
            .iter()
            .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().expect("key").to_string())
            .collect();
        let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "every record once");
        assert_eq!(keys.len(), 25);
    }

    /// A clock the test moves.
    struct StepClock(std::sync::atomic::AtomicU64);

    impl crate::engine::Clock for StepClock {
        fn now_unix_ms(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// GetShardIterator's AT_TIMESTAMP starts at the first record created at or after the
    /// timestamp's second (the records' ApproximateCreationDateTime), at the oldest record for
    /// a timestamp before them, after the last record for one past them (the next record is
    /// read), and refuses a timestamp in the future or a missing one.
    #[tokio::test]
    async fn at_timestamp_iterators_start_at_the_first_record_of_that_time() {
        const T0: u64 = 1_800_000_000_000;
        let dir = tempfile::tempdir().expect("temporary directory");
        let clock = Arc::new(StepClock(std::sync::atomic::AtomicU64::new(T0)));
        let engine = Engine::open(dir.path(), "us-east-1", clock.clone()).expect("open engine");
        let store = Store::new(engine.clone());
        let set = |ms: u64| clock.0.store(ms, std::sync::atomic::Ordering::SeqCst);
        call(
            &store,
            "CreateTable",
            json!({
                "TableName": "tab",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
                "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "KEYS_ONLY"},
            }),
        )
        .await;
        for (at, key) in [(T0, "k1"), (T0 + 2_000, "k2"), (T0 + 4_500, "k3")] {
            set(at);
            call(
                &store,
                "PutItem",
                json!({"TableName": "tab", "Item": {"pk": {"S": key}}}),
            )
            .await;
        }
        set(T0 + 10_000);
        let arn = call(&store, "DescribeTable", json!({"TableName": "tab"})).await["Table"]["LatestStreamArn"].clone();
        let shard = call(&store, "DescribeStream", json!({"StreamArn": arn})).await["StreamDescription"]["Shards"][0]
            ["ShardId"]
            .clone();
        let iterator = |timestamp: Value| json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": timestamp});
        let keys_from = |request: Value| {
            let store = &store;
            async move {
                let iterator = call(store, "GetShardIterator", request).await["ShardIterator"].clone();
                let page = call(store, "GetRecords", json!({"ShardIterator": iterator})).await;
                let keys: Vec<String> = page["Records"]
                    .as_array()
                    .expect("records")
                    .iter()
                    .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().expect("key").to_string())
                    .collect();
                (keys, page["NextShardIterator"].clone())
            }
        };
        let t0_s = (T0 / 1000) as f64;
        for (timestamp, expected) in [
            (json!(0), vec!["k1", "k2", "k3"]),
            (json!(t0_s - 3600.0), vec!["k1", "k2", "k3"]),
            (json!(t0_s), vec!["k1", "k2", "k3"]),
            // k1's second (a record of the timestamp's second is included, not missed).
            (json!(t0_s + 0.5), vec!["k1", "k2", "k3"]),
            (json!(t0_s + 1.0), vec!["k2", "k3"]),
            (json!(t0_s + 2.0), vec!["k2", "k3"]),
            (json!(t0_s + 3.0), vec!["k3"]),
            // k3 was written at +4.5 s: its record shows +4 s, the timestamp's second.
            (json!(t0_s + 4.9), vec!["k3"]),
        ] {
            let (keys, _) = keys_from(iterator(timestamp.clone())).await;
            assert_eq!(keys, expected, "AT_TIMESTAMP {timestamp}");
        }
        // Past every record: nothing yet, and the next record is read from there.
        let (keys, next) = keys_from(iterator(json!(t0_s + 6.0))).await;
        assert!(keys.is_empty(), "{keys:?}");
        call(
            &store,
            "PutItem",
            json!({"TableName": "tab", "Item": {"pk": {"S": "k4"}}}),
        )
        .await;
        let page = call(&store, "GetRecords", json!({"ShardIterator": next})).await;
        assert_eq!(page["Records"][0]["dynamodb"]["Keys"]["pk"]["S"], "k4");
        assert_eq!(page["Records"].as_array().map(Vec::len), Some(1));

        let refused = |request: Value| {
            let engine = &engine;
            async move {
                crate::streams::api::handle(engine, "GetShardIterator", request.to_string().as_bytes())
                    .await
                    .expect_err("refused")
            }
        };
        let future = refused(iterator(json!(t0_s + 10.001))).await;
        assert_eq!(future.kind, dynamo_protocol::ErrorKind::Validation);
        assert!(future.message.contains("in the future"), "{}", future.message);
        let missing = refused(json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "AT_TIMESTAMP"})).await;
        assert!(
            missing.message.contains("A Timestamp is required"),
            "{}",
            missing.message
        );
        let with_sequence = refused(
            json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "AT_TIMESTAMP",
            "Timestamp": t0_s, "SequenceNumber": "000000000000000000001"}),
        )
        .await;
        assert!(
            with_sequence
                .message
                .contains("SequenceNumber should not be passed for this iterator type (AT_TIMESTAMP)"),
            "{}",
            with_sequence.message
        );
        let on_latest =
            refused(json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "LATEST", "Timestamp": t0_s}))
                .await;
        assert!(
            on_latest.message.contains("Timestamp must not be given"),
            "{}",
            on_latest.message
        );
        let as_text = refused(iterator(json!("yesterday"))).await;
        assert_eq!(as_text.kind, dynamo_protocol::ErrorKind::Serialization);
    }
}
