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
//! With the write-ahead log, blocks stay out of `stream_records` until the log's pass ends, in
//! memory ([`RecordOverlay`], which says how), and go in joined, up to
//! [`MOVED_BLOCK_BYTES_MAX`] each.
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

/// A stored block of records: its key in `stream_records` (stream id, first sequence number)
/// and its value.
pub(super) type Block = ((u64, u64), Arc<[u8]>);

/// With the write-ahead log, the blocks of stream records written since the last checkpoint,
/// kept out of redb: each batch logs its blocks (`LoggedTxn::log_insert`) and publishes them
/// here, and redb gets them in bulk when the log's pass ends: the checkpoint (or a batch too
/// big for the log, whose durable commit restarts it) inserts every block held here, then they
/// are forgotten here. A batch that trims streams moves them too, so that retention sees
/// them. So a batch's redb commit carries none of the stream's pages (the leaf of its block
/// and the branch pages above it, rewritten by every batch), which were most of what a stream
/// cost PutItem (BENCHMARKS.md, Streams).
///
/// Invariants:
/// - a block is published after its batch's record is durable in the log and before the
///   batch commits to redb, so a reader that sees the batch's shard metadata finds its
///   records here or (once moved) in redb;
/// - every move inserts *every* block held, and a block is forgotten only after the commit
///   that inserted it: the blocks here and in redb together are every block published, and a
///   reader that takes its copy of these before it starts its read of redb
///   (`Snapshot::visit_record_entries`) misses none of them;
/// - the blocks here are at most what the log holds since its last checkpoint (both regions,
///   `2 × WAL_REGION_BYTES`): a durable commit that restarts the log moves them all first;
/// - after the writer reopens the database (an I/O error), the replay of the log has put every
///   block in redb: the overlay is emptied.
#[derive(Default)]
pub(super) struct RecordOverlay {
    blocks: Mutex<BTreeMap<(u64, u64), Arc<[u8]>>>,
}

impl RecordOverlay {
    fn locked(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), Arc<[u8]>>> {
        self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a batch's blocks visible to readers (see the invariants).
    pub(super) fn publish(&self, blocks: Vec<Block>) {
        if blocks.is_empty() {
            return;
        }
        self.locked().extend(blocks);
    }

    /// Every block held, to move into redb.
    pub(super) fn all(&self) -> Vec<Block> {
        self.locked()
            .iter()
            .map(|(key, value)| (*key, Arc::clone(value)))
            .collect()
    }

    /// Forgets blocks a committed transaction inserted into redb.
    pub(super) fn forget(&self, keys: impl IntoIterator<Item = (u64, u64)>) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            // Most batches moved nothing: no lock.
            return;
        }
        let mut blocks = self.locked();
        for key in keys {
            blocks.remove(&key);
        }
    }

    /// Forgets every block (the database was reopened and its log replayed).
    pub(super) fn clear(&self) {
        self.locked().clear();
    }

    /// The blocks and bytes held.
    pub(super) fn held(&self) -> (usize, usize) {
        let blocks = self.locked();
        (blocks.len(), blocks.values().map(|value| value.len()).sum())
    }

    /// The blocks of stream `stream_id` a read from `position` through `end` needs: the last
    /// one keyed at or before `position` (it may hold it), then at most `max_after` of those
    /// after it through `end`; and whether more than that were there.
    fn entries(&self, stream_id: u64, position: u64, end: u64, max_after: usize) -> (Vec<Block>, bool) {
        let blocks = self.locked();
        let before = blocks.range((stream_id, 0)..=(stream_id, position)).next_back();
        let mut after = blocks.range((
            Bound::Excluded((stream_id, position)),
            Bound::Included((stream_id, end.max(position))),
        ));
        let mut out: Vec<Block> = before
            .map(|(key, value)| (*key, Arc::clone(value)))
            .into_iter()
            .collect();
        out.extend(
            after
                .by_ref()
                .take(max_after)
                .map(|(key, value)| (*key, Arc::clone(value))),
        );
        (out, after.next().is_some())
    }
}

/// Bytes of records a block moved from the overlay into redb holds at most: a stream's blocks
/// of consecutive batches are joined up to this (`join_blocks`), so a move inserts a few large
/// entries, not one page-sized entry per batch (each an insert into the B-tree, and a page of
/// its own to write and checksum). A read of one record then checks the CRC-32 of up to this
/// much (about 20 µs).
pub(crate) const MOVED_BLOCK_BYTES_MAX: usize = 256 << 10;

/// The region and body of a compact block, if `value` is one (with its newest record's time).
fn compact_block_parts(value: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    if value.get(8) != Some(&RECORD_COMPACT_BLOCK) {
        return None;
    }
    let newest_ms = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let mut rest = value.get(RECORD_HEADER_BYTES..)?;
    let len = usize::try_from(streams::read_leb128(&mut rest).ok()?).ok()?;
    let region = rest.get(..len)?;
    Some((newest_ms, region, rest.get(len..)?))
}

/// The records a joined block holds were created within this of each other: retention trims
/// whole blocks (by their newest record), so a joined block keeps its oldest record at most
/// this much past its retention.
pub(crate) const MOVED_BLOCK_SPAN_MS_MAX: u64 = 1_000;

/// Joins the consecutive compact blocks of each shard in `blocks` (ascending keys, as the
/// overlay holds them: newer than any block of the stream in redb) into blocks of up to
/// [`MOVED_BLOCK_BYTES_MAX`] of records created within [`MOVED_BLOCK_SPAN_MS_MAX`], each keyed
/// by its first record. `shard_starts`: the (stream id, first sequence number) of shards, which
/// start a block of their own (a block belongs to one shard: trimming a shard's records drops
/// it). A block that is not compact, or bigger than the bound, stays as it is.
fn join_blocks(blocks: &[Block], shard_starts: &std::collections::BTreeSet<(u64, u64)>) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut joining: Option<Joining> = None;
    let finish = |joining: Option<Joining>, out: &mut Vec<Block>| {
        if let Some(Joining {
            key,
            newest_ms,
            region,
            body,
            ..
        }) = joining
        {
            let region = String::from_utf8_lossy(&region).into_owned();
            out.push((key, Arc::from(encode_block(newest_ms, &region, &body))));
        }
    };
    for (key, value) in blocks {
        let parts = compact_block_parts(value)
            .filter(|(_, region, body)| body.len() <= MOVED_BLOCK_BYTES_MAX && std::str::from_utf8(region).is_ok());
        let Some((newest_ms, region, body)) = parts else {
            finish(joining.take(), &mut out);
            out.push((*key, Arc::clone(value)));
            continue;
        };
        if let Some(joined) = &mut joining
            && joined.key.0 == key.0
            && !shard_starts.contains(key)
            && joined.region.as_slice() == region
            && joined.body.len() + body.len() <= MOVED_BLOCK_BYTES_MAX
            && newest_ms.abs_diff(joined.first_ms) <= MOVED_BLOCK_SPAN_MS_MAX
        {
            joined.newest_ms = joined.newest_ms.max(newest_ms);
            joined.body.extend_from_slice(body);
            continue;
        }
        finish(joining.take(), &mut out);
        joining = Some(Joining {
            key: *key,
            first_ms: newest_ms,
            newest_ms,
            region: region.to_vec(),
            body: body.to_vec(),
        });
    }
    finish(joining, &mut out);
    out
}

/// A block being joined by `join_blocks`.
struct Joining {
    key: (u64, u64),
    /// The newest record's time of the first block joined, and of all of them.
    first_ms: u64,
    newest_ms: u64,
    region: Vec<u8>,
    body: Vec<u8>,
}

/// Moves blocks of the overlay into redb's `stream_records`, joined (`join_blocks`) within
/// the shards `stream_shards` holds in `txn`; the overlay forgets them once `txn` commits.
pub(super) fn move_blocks(txn: &redb::WriteTransaction, blocks: &[Block]) -> Result<(), redb::Error> {
    let mut shard_starts = std::collections::BTreeSet::new();
    if !blocks.is_empty() {
        let shards = txn.open_table(STREAM_SHARDS)?;
        let mut streams: Vec<(u64, u64)> = Vec::new();
        for ((stream, first), _) in blocks {
            if streams.last().is_none_or(|(last, _)| last != stream) {
                streams.push((*stream, *first));
            }
        }
        for (stream, from) in streams {
            for entry in shards.range((stream, from)..=(stream, u64::MAX))? {
                shard_starts.insert(entry?.0.value());
            }
        }
    }
    insert_blocks(txn, &join_blocks(blocks, &shard_starts))
}

/// Inserts blocks into redb's `stream_records` as they are.
fn insert_blocks(txn: &redb::WriteTransaction, blocks: &[Block]) -> Result<(), redb::Error> {
    if blocks.is_empty() {
        return Ok(());
    }
    let mut records = txn.open_table(STREAM_RECORDS)?;
    for (key, value) in blocks {
        records.insert(*key, &value[..])?;
    }
    Ok(())
}

/// Where a batch's blocks go: into redb at once (no write-ahead log), or, with the log, held
/// for the overlay (`RecordOverlay`).
#[derive(Default)]
pub(super) struct StagedBlocks {
    /// Keep blocks out of redb (the store runs with the write-ahead log).
    pub(super) keep_out: bool,
    /// This batch's blocks, logged and not in redb: published before the batch commits.
    pub(super) staged: Vec<Block>,
    /// Overlay blocks this batch inserted into redb: forgotten once it commits.
    pub(super) moved: Vec<(u64, u64)>,
}

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
    fn store_block(&mut self, txn: &LoggedTxn, region: &str, blocks: &mut StagedBlocks) -> Result<(), redb::Error> {
        if self.block.is_empty() {
            return Ok(());
        }
        let value = encode_block(self.block_newest_ms, region, &self.block);
        let key = (self.stream_id, self.block_first_seq);
        if blocks.keep_out {
            txn.log_insert(STREAM_RECORDS, &<(u64, u64) as redb::Value>::as_bytes(&key), &value);
            blocks.staged.push((key, Arc::from(value)));
        } else {
            txn.open_table(STREAM_RECORDS)?.insert(key, value.as_slice())?;
        }
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
            roll_over(
                self.txn,
                &self.shared.region,
                open,
                now_ms,
                seq,
                &mut self.stream_blocks,
            )?;
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
            open.store_block(self.txn, &self.shared.region, &mut self.stream_blocks)?;
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
            open.store_block(self.txn, &self.shared.region, &mut self.stream_blocks)?;
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
            open.store_block(self.txn, &self.shared.region, &mut self.stream_blocks)?;
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

    /// Inserts the overlay's blocks and this batch's own into redb, so that a read of
    /// `stream_records` in this transaction sees every record. Unlogged: the log holds every
    /// one of them since the last checkpoint (see `RecordOverlay`).
    fn move_overlay_into_redb(&mut self) -> Result<(), redb::Error> {
        if !self.stream_blocks.keep_out {
            return Ok(());
        }
        // A second sweep in the same batch moves only what came since the first.
        let moved: std::collections::HashSet<(u64, u64)> = self.stream_blocks.moved.iter().copied().collect();
        let mut blocks: Vec<Block> = self
            .shared
            .stream_overlay
            .all()
            .into_iter()
            .filter(|(key, _)| !moved.contains(key))
            .collect();
        self.stream_blocks.moved.extend(blocks.iter().map(|(key, _)| *key));
        blocks.append(&mut self.stream_blocks.staged);
        blocks.sort_unstable_by_key(|(key, _)| *key);
        move_blocks(self.txn.unlogged(), &blocks)?;
        Ok(())
    }

    /// One retention sweep over every stream: trims records older than the retention, drops
    /// closed shards left without records, and forgets disabled streams whose retention ended.
    /// Returns the records deleted.
    fn trim_streams(&mut self, now_ms: u64, limits: StreamLimits) -> Result<usize, redb::Error> {
        self.flush_streams()?;
        self.move_overlay_into_redb()?;
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
            let mut joined_keys = Vec::new();
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
                    if self.stream_blocks.keep_out {
                        // The entry may join blocks the log holds apart (`move_blocks`, not
                        // logged): a replay after a crash inserts them apart, and must remove
                        // each, keyed by one of these.
                        joined_keys.extend(held.iter().skip(1).map(|(seq, _)| *seq));
                    }
                }
            }
            budget = budget.saturating_sub(count);
            deleted += count;
            let mut records = self.txn.open_table(STREAM_RECORDS)?;
            for seq in &trimmed {
                records.remove((meta.id, *seq))?;
            }
            for seq in joined_keys {
                self.txn
                    .log_remove(STREAM_RECORDS, &<(u64, u64) as redb::Value>::as_bytes(&(meta.id, seq)));
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
    blocks: &mut StagedBlocks,
) -> Result<(), redb::Error> {
    // A block belongs to one shard: the closing shard's records are stored now.
    open.store_block(txn, region, blocks)?;
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
            self.open_shard_end()?
        };
        let mut read = ShardRead {
            count: 0,
            next: position,
            ended: shard.closed && position > end,
        };
        if read.ended {
            return Ok(read);
        }
        let mut bytes = 0;
        let mut exhausted = true;
        let mut failed = None;
        // Each entry holds at least one record from `position` on, except the first, which
        // may start before it.
        let entries_max = limit.saturating_add(1);
        let complete = self.visit_record_entries(stream_id, position, end, entries_max, |first, value| {
            let held = match stored_records(first, value) {
                Ok(held) => held,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            for (seq, record) in held {
                // Below `read.next`: read already, from a block that is also in redb joined
                // with others (a move committed, not yet forgotten by the overlay).
                if seq < read.next || seq > end {
                    continue;
                }
                if read.count >= limit {
                    exhausted = false;
                    return false;
                }
                let mark = out.len();
                if read.count > 0 {
                    out.push(b',');
                }
                if let Err(e) = record.write_json(store_id, stream_id, seq, out) {
                    failed = Some(e);
                    return false;
                }
                let len = out.len() - mark;
                if read.count > 0 && bytes + len > bytes_max {
                    out.truncate(mark);
                    exhausted = false;
                    return false;
                }
                bytes += len;
                read.count += 1;
                read.next = seq + 1;
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(storage_error("reading stream records", e));
        }
        read.ended = shard.closed && exhausted && complete;
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
            self.open_shard_end()?
        };
        if from > end {
            return Ok(None);
        }
        let mut found = None;
        let mut failed = None;
        // Every block after `from` is copied (`usize::MAX`), so the visit is complete.
        self.visit_record_entries(stream_id, from, end, usize::MAX, |first, value| {
            let entry_s = stored_created_ms(value) / 1000;
            if entry_s < at_s {
                return true;
            }
            let held = match stored_records(first, value) {
                Ok(held) => held,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            for (seq, record) in held {
                if seq < from || seq > end {
                    continue;
                }
                let created_s = match record {
                    StoredRecord::Compact { record, .. } => match streams::compact_record_created_s(record) {
                        Ok(created_s) => created_s,
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    },
                    // Records of earlier formats: the entry's time (a block's newest record's).
                    StoredRecord::Json(_) => entry_s,
                };
                if created_s >= at_s {
                    found = Some(seq);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(storage_error("reading stream records", e));
        }
        Ok(found)
    }

    /// Visits the stored entries of stream `stream_id` that hold records from `position`
    /// through `end`, in order: the last one keyed at or before `position` (it may hold it),
    /// then the rest; `visit` gets each one's first sequence number and value and returns
    /// whether to go on. With the write-ahead log the entries are those of redb and of the
    /// overlay (`RecordOverlay`: at most `overlay_max` after the one holding `position`): the
    /// overlay's are copied first, and redb read after, in a read transaction of its own on the
    /// database as it is now, so that a block moved from one to the other in between is seen in
    /// redb (see the overlay's invariants). A block moved meanwhile may be read twice, once
    /// joined with others: the caller skips records it has read. Returns `false` when the visit
    /// stopped early because the overlay had more entries than were copied.
    fn visit_record_entries(
        &self,
        stream_id: u64,
        position: u64,
        end: u64,
        overlay_max: usize,
        mut visit: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool, ApiError> {
        let read_error = |e: redb::StorageError| storage_error("reading stream records", e);
        let (held, truncated, fresh) = match &self.overlay {
            Some(shared) => {
                let (held, truncated) = shared.stream_overlay.entries(stream_id, position, end, overlay_max);
                let fresh = shared
                    .db()?
                    .begin_read()
                    .map_err(|e| storage_error("starting a read", e))?;
                (held, truncated, Some(fresh))
            }
            None => (Vec::new(), false, None),
        };
        // Past the last block copied, the overlay's next ones are not known: stop there.
        let last_held = match truncated {
            true => held.last().map(|((_, first), _)| *first),
            false => None,
        };
        let txn = fresh.as_ref().unwrap_or(&self.txn);
        let records = match txn.open_table(STREAM_RECORDS) {
            Ok(table) => Some(table),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage_error("opening stream storage", e)),
        };
        // Where the entry holding `position` starts: the earlier of the two, since a block
        // moved after the copy may be in redb joined into an entry that starts before it.
        let stored_from = match &records {
            Some(records) => records
                .range((stream_id, 0)..=(stream_id, position))
                .map_err(read_error)?
                .next_back()
                .transpose()
                .map_err(read_error)?
                .map(|(key, _)| key.value().1),
            None => None,
        };
        let held_from = held
            .first()
            .map(|((_, first), _)| *first)
            .filter(|first| *first <= position);
        let from = match (stored_from, held_from) {
            (Some(stored), Some(held)) => stored.min(held),
            (stored, held) => stored.or(held).unwrap_or(position),
        };
        let end = last_held.map_or(end, |last| end.min(last));
        if from > end {
            return Ok(last_held.is_none());
        }
        let mut held = held.into_iter().filter(|((_, first), _)| *first >= from).peekable();
        let mut stored = match &records {
            Some(records) => Some(
                records
                    .range((stream_id, from)..=(stream_id, end))
                    .map_err(read_error)?,
            ),
            None => None,
        };
        let mut next_stored = || -> Result<Option<(u64, redb::AccessGuard<'_, &'static [u8]>)>, ApiError> {
            match stored.as_mut().and_then(Iterator::next) {
                Some(entry) => {
                    let (key, value) = entry.map_err(read_error)?;
                    Ok(Some((key.value().1, value)))
                }
                None => Ok(None),
            }
        };
        let mut stored_entry = next_stored()?;
        loop {
            let held_first = held.peek().map(|((_, first), _)| *first);
            match (&stored_entry, held_first) {
                (None, None) => return Ok(last_held.is_none()),
                // A block in both (moved, not yet forgotten) is the same bytes: redb's is read.
                (Some((first, value)), held_first) if held_first.is_none_or(|h| *first <= h) => {
                    if held_first == Some(*first) {
                        held.next();
                    }
                    if !visit(*first, value.value()) {
                        return Ok(true);
                    }
                    stored_entry = next_stored()?;
                }
                _ => {
                    let Some(((_, first), value)) = held.next() else {
                        return Ok(last_held.is_none());
                    };
                    if !visit(first, &value) {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// The last sequence number a read of an open shard may return: with the write-ahead log,
    /// the last one this snapshot handed out (the overlay and a read transaction of redb's own
    /// may hold later records: another shard's after a rollover, or a batch not yet committed),
    /// without it any (the snapshot holds no later one).
    fn open_shard_end(&self) -> Result<u64, ApiError> {
        match self.overlay {
            Some(_) => self.stream_seq(),
            None => Ok(u64::MAX),
        }
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
            let mut due = false;
            for meta in snapshot.streams(None, None, usize::MAX)? {
                if meta.disabled_ms.is_some_and(|at| at <= horizon) {
                    due = true;
                    break;
                }
                let mut first_ms = None;
                snapshot.visit_record_entries(meta.id, 0, u64::MAX, 1, |_, value| {
                    first_ms = Some(stored_created_ms(value));
                    false
                })?;
                if first_ms.is_some_and(|ms| ms <= horizon) {
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

    /// Joined blocks hold every record of the blocks they join, in order, each within
    /// `MOVED_BLOCK_BYTES_MAX` and `MOVED_BLOCK_SPAN_MS_MAX`, never across streams or shards;
    /// a block that is not compact stays as it is.
    #[test]
    fn moved_blocks_are_joined_per_shard_within_the_bounds() {
        let block = |first: u64, count: u64, bytes: usize, newest_ms: u64| {
            let mut body = Vec::new();
            for seq in first..first + count {
                body.extend_from_slice(&seq.to_le_bytes());
                body.extend_from_slice(&(bytes as u32).to_le_bytes());
                body.extend(std::iter::repeat_n(b'r', bytes));
            }
            Arc::<[u8]>::from(encode_block(newest_ms, "us-east-1", &body))
        };
        const T: u64 = 1_800_000_000_000;
        let mut blocks: Vec<Block> = vec![((1, 1), Arc::from(record_of(r#"{"eventID":"e1"}"#)))];
        // Stream 1: 100 blocks of 4 records of 1000 bytes (about 400 KB) within 400 ms; its
        // shard starting at 210 starts a block of its own.
        for i in 0..100 {
            blocks.push(((1, 10 + i * 4), block(10 + i * 4, 4, 1000, T + i * 4)));
        }
        // Stream 2: two blocks a second apart and one more 2 s later.
        blocks.push(((2, 1000), block(1000, 2, 10, T)));
        blocks.push(((2, 1002), block(1002, 1, 10, T + MOVED_BLOCK_SPAN_MS_MAX)));
        blocks.push(((2, 1003), block(1003, 1, 10, T + 2 * MOVED_BLOCK_SPAN_MS_MAX + 1)));
        let starts = std::collections::BTreeSet::from([(1, 210)]);
        let joined = join_blocks(&blocks, &starts);
        fn records(blocks: &[Block]) -> Vec<(u64, u64, StoredRecord<'_>)> {
            let mut out = Vec::new();
            for ((stream, first), value) in blocks {
                for (seq, record) in stored_records(*first, value).expect("a well-formed block") {
                    out.push((*stream, seq, record));
                }
            }
            out
        }
        assert_eq!(records(&joined), records(&blocks));
        let keys: Vec<(u64, u64)> = joined.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys[0], (1, 1), "the JSON entry stays");
        assert_eq!(joined[0].1, blocks[0].1);
        assert!(keys.contains(&(1, 210)), "the shard starts a block: {keys:?}");
        // Stream 1: 200 KB before the shard's start, 200 KB after: each fits one block.
        assert_eq!(keys.iter().filter(|(stream, _)| *stream == 1).count(), 3, "{keys:?}");
        assert_eq!(
            keys.iter()
                .filter(|(stream, _)| *stream == 2)
                .copied()
                .collect::<Vec<_>>(),
            [(2, 1000), (2, 1003)],
            "joined within a second of the first block's time"
        );
        for (at, (key, value)) in joined.iter().enumerate() {
            assert!(
                value.len() <= MOVED_BLOCK_BYTES_MAX + 64,
                "{key:?}: {} bytes",
                value.len()
            );
            // Its time is the newest of the blocks it joined.
            let next = joined.get(at + 1).map_or((u64::MAX, u64::MAX), |(key, _)| *key);
            let newest = blocks
                .iter()
                .filter(|(k, _)| *k >= *key && *k < next)
                .map(|(_, v)| stored_created_ms(v))
                .max();
            assert_eq!(Some(stored_created_ms(value)), newest, "{key:?}");
        }
        // A shard of more than the bound: joined in several blocks.
        let big: Vec<Block> = (0..100).map(|i| ((3, i * 4), block(i * 4, 4, 1000, T))).collect();
        let joined = join_blocks(&big, &std::collections::BTreeSet::new());
        assert_eq!(joined.len(), 2);
        assert_eq!(records(&joined), records(&big));
    }

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

    /// Creates the table `tab` (key `pk`) with a stream of `view_type`.
    async fn create_stream_table(store: &Store, view_type: &str) {
        call(
            store,
            "CreateTable",
            json!({
                "TableName": "tab",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
                "StreamSpecification": {"StreamEnabled": true, "StreamViewType": view_type},
            }),
        )
        .await;
    }

    /// Puts items k00, k01, ... into `tab`, one request (so one batch) each.
    async fn put_keys(store: &Store, count: usize) {
        for i in 0..count {
            call(
                store,
                "PutItem",
                json!({"TableName": "tab", "Item": {"pk": {"S": format!("k{i:02}")}}}),
            )
            .await;
        }
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
        create_stream_table(&store, "NEW_AND_OLD_IMAGES").await;
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
        create_stream_table(&store, "KEYS_ONLY").await;
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

    /// Every record of the table's one shard, in pages of `limit` from the trim horizon, so
    /// that reads start in the middle of blocks and across the seam between redb and the
    /// overlay.
    async fn records_in_pages(store: &Store, table: &str, limit: usize) -> Vec<Value> {
        let described = call(store, "DescribeTable", json!({"TableName": table})).await;
        let arn = described["Table"]["LatestStreamArn"].clone();
        let stream = call(store, "DescribeStream", json!({"StreamArn": arn})).await;
        let shard = stream["StreamDescription"]["Shards"][0]["ShardId"].clone();
        let request = json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"});
        let mut iterator = call(store, "GetShardIterator", request).await["ShardIterator"].clone();
        let mut out = Vec::new();
        loop {
            let page = call(store, "GetRecords", json!({"ShardIterator": iterator, "Limit": limit})).await;
            let got = page["Records"].as_array().expect("records").clone();
            if got.is_empty() {
                return out;
            }
            out.extend(got);
            iterator = page["NextShardIterator"].clone();
        }
    }

    /// With the write-ahead log, blocks move from the overlay into redb, and the overlay forgets
    /// them only after that commit: meanwhile a block is in both. Reads merge the two and see
    /// every record once, in order, in every state a move passes through.
    #[tokio::test]
    async fn records_in_the_overlay_and_in_redb_are_read_once_in_order() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = Engine::open_with(
            dir.path(),
            "us-east-1",
            Arc::new(crate::engine::SystemClock),
            wal_options(),
        )
        .expect("open engine");
        let store = Store::new(engine.clone());
        create_stream_table(&store, "NEW_IMAGE").await;
        put_keys(&store, 40).await;
        let overlay = &engine.shared.stream_overlay;
        let held = overlay.all();
        assert!(held.len() >= 2, "one block per batch, all kept out: {}", held.len());
        let in_redb = || {
            let snapshot = engine.snapshot().expect("snapshot");
            match snapshot.txn.open_table(STREAM_RECORDS) {
                Ok(table) => redb::ReadableTableMetadata::len(&table).expect("count"),
                Err(_) => 0,
            }
        };
        assert_eq!(in_redb(), 0, "nothing in redb before a move");
        let all = records_in_pages(&store, "tab", 1000).await;
        let keys: Vec<&str> = all
            .iter()
            .map(|r| r["dynamodb"]["Keys"]["pk"]["S"].as_str().expect("key"))
            .collect();
        let expected: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
        assert_eq!(keys, expected);
        let move_into_redb = |blocks: &[Block]| {
            let db = engine.shared.db().expect("database");
            let txn = db.begin_write().expect("write");
            insert_blocks(&txn, blocks).expect("insert");
            txn.commit().expect("commit");
        };
        // The first half moved and forgotten, the rest only in the overlay: the state after a
        // trim moved them and later batches wrote more.
        let half = held.len() / 2;
        move_into_redb(&held[..half]);
        overlay.forget(held[..half].iter().map(|(key, _)| *key));
        assert_eq!(in_redb() as usize, half);
        for limit in [1000, 7, 1] {
            assert_eq!(
                records_in_pages(&store, "tab", limit).await,
                all,
                "half in redb, Limit {limit}"
            );
        }
        // Every block in both, the second half joined into larger blocks in redb: a move
        // committed, not yet forgotten.
        let db = engine.shared.db().expect("database");
        let txn = db.begin_write().expect("write");
        move_blocks(&txn, &held[half..]).expect("move");
        txn.commit().expect("commit");
        drop(db);
        assert!((in_redb() as usize) < held.len(), "the moved blocks were joined");
        for limit in [1000, 7, 1] {
            assert_eq!(
                records_in_pages(&store, "tab", limit).await,
                all,
                "all in both, Limit {limit}"
            );
        }
        // Every block joined in redb and only a middle slice still in the overlay: what a
        // reader that copied that slice finds when a checkpoint moved the blocks after its copy.
        // The entry holding a position in the slice starts before it, in redb.
        let slice = held.len() / 4..held.len() * 3 / 4;
        let outside = held[..slice.start].iter().chain(&held[slice.end..]);
        overlay.forget(outside.map(|(key, _)| *key));
        let db = engine.shared.db().expect("database");
        let txn = db.begin_write().expect("write");
        txn.delete_table(STREAM_RECORDS).expect("clear");
        move_blocks(&txn, &held).expect("move");
        txn.commit().expect("commit");
        drop(db);
        assert!(in_redb() < 3, "all joined: {}", in_redb());
        for limit in [1000, 7, 1] {
            assert_eq!(
                records_in_pages(&store, "tab", limit).await,
                all,
                "slice in both, Limit {limit}"
            );
        }
        overlay.forget(held.iter().map(|(key, _)| *key));
        assert_eq!(overlay.held().0, 0);
        assert_eq!(records_in_pages(&store, "tab", 7).await, all, "all in redb");
    }

    fn wal_options() -> EngineOptions {
        EngineOptions {
            disk: crate::disk::DiskSettings {
                free_bytes_min: Some(0),
                reserve_bytes: 0,
            },
            no_idle_checkpoints: true,
            write_ahead_log: true,
            ..EngineOptions::default()
        }
    }

    /// A retention sweep moves the overlay's blocks into redb joined, unlogged (the log holds
    /// them apart), and trims the joined entry: its removal is logged for every block it joined,
    /// so a replay after a crash, which inserts them apart, removes them all. None comes back.
    #[tokio::test]
    async fn records_trimmed_after_their_move_stay_trimmed_after_a_crash() {
        const T0: u64 = 1_800_000_000_000;
        let dir = tempfile::tempdir().expect("temporary directory");
        let clock = Arc::new(StepClock(std::sync::atomic::AtomicU64::new(T0)));
        let engine = Engine::open_with(dir.path(), "us-east-1", clock.clone(), wal_options()).expect("open engine");
        let store = Store::new(engine.clone());
        create_stream_table(&store, "KEYS_ONLY").await;
        put_keys(&store, 30).await;
        assert_eq!(
            engine.shared.stream_overlay.held().0,
            30,
            "a block per batch, all kept out"
        );
        clock.0.store(T0 + 10_000, std::sync::atomic::Ordering::SeqCst);
        engine.set_stream_limits(StreamLimits {
            retention_ms: 5_000,
            ..StreamLimits::default()
        });
        assert_eq!(engine.trim_streams_once().await.expect("sweep"), 30);
        assert_eq!(engine.shared.stream_overlay.held().0, 0);
        let count = |engine: &Engine| {
            let snapshot = engine.snapshot().expect("snapshot");
            match snapshot.txn.open_table(STREAM_RECORDS) {
                Ok(table) => redb::ReadableTableMetadata::len(&table).expect("count"),
                Err(_) => 0,
            }
        };
        assert_eq!(count(&engine), 0);
        // The image a crash leaves: the database (no checkpoint since the writes), then the log.
        let image = tempfile::tempdir().expect("temporary directory");
        for name in ["store.redb", "store.wal"] {
            std::fs::copy(dir.path().join(name), image.path().join(name)).expect("copy");
        }
        let reopened = Engine::open_with(image.path(), "us-east-1", clock.clone(), wal_options()).expect("reopen");
        assert!(reopened.writer_status().opened.replayed.records >= 31);
        assert_eq!(count(&reopened), 0, "a trimmed record came back with the replay");
    }
}
