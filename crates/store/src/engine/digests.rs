//! Range digests kept by the writer: anti-entropy's Merkle tree, maintained as items change
//! instead of recomputed from every record at each repair.
//!
//! Anti-entropy (`global::repair`, `replication::digest`) compares digests of key ranges. A
//! digest is the record count and the wrapping sum of one hash per record (of its key and
//! version header: `replog::record_digest`), so it is additive: a range's digest is the sum of
//! its parts, and a change moves it by the new record's hash minus the old one's. The writer
//! keeps one digest per *bucket* — the stored keys sharing their first [`DIGEST_BUCKET_BITS`]
//! bits (stored keys begin with a 32-bit partition hash, so buckets split a table evenly) — and
//! a digest of any range of at most that depth is the sum of its buckets: a few thousand small
//! entries, not a pass over the table. Deeper ranges (a bucket's part) are computed from their
//! records, which a bucket holds few of.
//!
//! Tables (redb):
//! - `range_digests`: table id (`u64`, big-endian) and bucket (`u16`, big-endian) → count
//!   (`u64`, little-endian) and sum (`u128`, little-endian); a bucket with no records has no
//!   entry;
//! - `range_digests_built`: table id → how far its buckets are kept: `[1]` all of them, or `[0]`
//!   followed by a stored key: the buckets hold exactly the records below that key (a table
//!   without an entry: none yet). A table created by this version is complete from the start; a
//!   table written by an earlier version is built in the background, a bounded number of records
//!   per writer job ([`DIGEST_BUILD_RECORDS_PER_JOB_MAX`]), and until a range's buckets are
//!   complete its digest is computed from its records as before.
//!
//! Invariants:
//! - every change to a table's data (`WriteContext::store`, the tombstone purge) goes through
//!   [`WriteContext::note_record`] in the same transaction, and the batch's bucket deltas are
//!   written before it commits: a committed snapshot's buckets sum exactly its records below the
//!   built bound;
//! - a scrub compares buckets with their records in a read snapshot, a bounded number of records
//!   per sweep ([`DIGEST_SCRUB_RECORDS_PER_SWEEP_MAX`]), and rewrites a bucket that differs
//!   (counted: `range_digest_mismatches_total`; any is a bug). A wrong bucket could hide a
//!   difference from anti-entropy; the scrub bounds how long.

use std::collections::BTreeMap;

use replication::digest::prefix_of;

use super::*;

pub(crate) const RANGE_DIGESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("range_digests");
pub(crate) const RANGE_DIGESTS_BUILT: TableDefinition<u64, &[u8]> = TableDefinition::new("range_digests_built");
pub(crate) const RANGE_DIGEST_DELTAS: TableDefinition<u64, &[u8]> = TableDefinition::new("range_digest_deltas");
pub(crate) const RANGE_DIGEST_FOLDED: TableDefinition<u64, u64> = TableDefinition::new("range_digest_folded");

/// Bits of the stored keys' prefix that name a bucket: 65,536 buckets per table (about 15
/// records each at a million items).
pub const DIGEST_BUCKET_BITS: u8 = 16;
/// Records one background job reads to build an earlier version's table's buckets, so that the
/// build never holds the writer for long.
pub const DIGEST_BUILD_RECORDS_PER_JOB_MAX: usize = 20_000;
/// Records the scrub reads per sweep (once a second): a million-item table is checked about
/// every eight minutes, at a few milliseconds of reading per second.
pub const DIGEST_SCRUB_RECORDS_PER_SWEEP_MAX: usize = 2_000;

/// Bucket changes the delta log holds before they are folded into the buckets: readers add
/// about this many to what they read, and the fold rewrites each bucket page about once for
/// this many changes instead of once per commit. The fold runs a chunk at a time (see
/// [`DIGEST_FOLD_CHUNKS`]), so no single commit rewrites every bucket page.
pub const DIGEST_DELTAS_PENDING_MAX: u64 = 4096;
/// The buckets are folded in this many chunks (by their top bits, every table alike), one
/// chunk per [`DIGEST_FOLD_STEP_RECORDS`] changes appended. Folding all of them at once
/// rewrote every bucket page of a table (2–3 MB at 65,536 buckets) in one commit, which held
/// the writer for tens of milliseconds every few thousand writes: the p99 of write latency and
/// of replication lag (BENCHMARKS.md).
pub const DIGEST_FOLD_CHUNKS: u16 = 16;
/// Changes appended to the delta log between two fold steps.
pub const DIGEST_FOLD_STEP_RECORDS: u64 = DIGEST_DELTAS_PENDING_MAX / DIGEST_FOLD_CHUNKS as u64;
/// Changes the delta log may hold before a batch folds all of it at once: only a batch that
/// changes thousands of buckets gets there.
pub const DIGEST_DELTAS_HELD_MAX: u64 = 4 * DIGEST_DELTAS_PENDING_MAX;
/// Bucket changes one entry of the delta log holds at most: one page's worth (see
/// [`APPEND_ENTRY_BYTES_MAX`]); a batch changing more buckets appends several entries.
const DELTA_ENTRY_RECORDS_MAX: usize = APPEND_ENTRY_BYTES_MAX / DELTA_RECORD_BYTES;

const BUCKET_VALUE_BYTES: usize = 24;
/// A delta log record: table id (`u64`, big-endian), bucket (`u16`, big-endian), count delta
/// (`u64`, little-endian), sum delta (`u128`, little-endian), both wrapping.
const DELTA_RECORD_BYTES: usize = 8 + 2 + BUCKET_VALUE_BYTES;
const BUILT_COMPLETE: u8 = 1;
const BUILT_BELOW: u8 = 0;

/// How far a table's buckets are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Built {
    Complete,
    /// The buckets hold the records whose stored keys sort below this one (empty: none).
    Below(Vec<u8>),
}

impl Built {
    fn decode(bytes: &[u8]) -> Result<Built, String> {
        match bytes.split_first() {
            Some((&BUILT_COMPLETE, [])) => Ok(Built::Complete),
            Some((&BUILT_BELOW, key)) => Ok(Built::Below(key.to_vec())),
            _ => Err(format!("corrupt range digest build mark ({} bytes)", bytes.len())),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Built::Complete => vec![BUILT_COMPLETE],
            Built::Below(key) => {
                let mut out = Vec::with_capacity(1 + key.len());
                out.push(BUILT_BELOW);
                out.extend_from_slice(key);
                out
            }
        }
    }

    fn covers_key(&self, key: &[u8]) -> bool {
        match self {
            Built::Complete => true,
            Built::Below(bound) => key < bound.as_slice(),
        }
    }

    /// Whether every bucket of `range` (at most [`DIGEST_BUCKET_BITS`] deep) is complete.
    fn covers_range(&self, range: DigestRange) -> bool {
        match (self, range.end()) {
            (Built::Complete, _) => true,
            (Built::Below(_), None) => false,
            (Built::Below(bound), Some(end)) => end.to_be_bytes().as_slice() <= bound.as_slice(),
        }
    }
}

/// The bucket of a stored key.
pub(crate) fn bucket_of(key: &[u8]) -> u16 {
    (prefix_of(key) >> (32 - DIGEST_BUCKET_BITS)) as u16
}

/// The fold chunk of a bucket: its top bits.
fn chunk_of(bucket: u16) -> usize {
    (usize::from(bucket) * usize::from(DIGEST_FOLD_CHUNKS)) >> DIGEST_BUCKET_BITS
}

/// Per fold chunk, the delta log key below which its changes are in the buckets: a change in
/// entry `e` to a bucket of chunk `c` is counted in the buckets if `e < folded[c]`, and is
/// still to be added from the log otherwise. Absent (a store written before chunked folds): 0.
type FoldedMarks = [u64; DIGEST_FOLD_CHUNKS as usize];

fn read_folded(table: &impl ReadableTable<u64, u64>) -> Result<FoldedMarks, redb::StorageError> {
    let mut marks = [0; DIGEST_FOLD_CHUNKS as usize];
    for entry in table.iter()? {
        let (chunk, mark) = entry?;
        if let Some(held) = usize::try_from(chunk.value()).ok().and_then(|c| marks.get_mut(c)) {
            *held = mark.value();
        }
    }
    Ok(marks)
}

fn bucket_key(table_id: u64, bucket: u16) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&table_id.to_be_bytes());
    out[8..].copy_from_slice(&bucket.to_be_bytes());
    out
}

fn encode_bucket(digest: Digest) -> [u8; BUCKET_VALUE_BYTES] {
    let mut out = [0u8; BUCKET_VALUE_BYTES];
    out[..8].copy_from_slice(&digest.count.to_le_bytes());
    out[8..].copy_from_slice(&digest.hash.to_le_bytes());
    out
}

fn decode_bucket(bytes: &[u8]) -> Result<Digest, String> {
    let bytes: &[u8; BUCKET_VALUE_BYTES] = bytes.try_into().map_err(|_| {
        format!(
            "corrupt range digest ({} bytes, expected {BUCKET_VALUE_BYTES})",
            bytes.len()
        )
    })?;
    let (count, hash) = bytes.split_at(8);
    Ok(Digest {
        count: u64::from_le_bytes(count.try_into().expect("8 bytes")),
        hash: u128::from_le_bytes(hash.try_into().expect("16 bytes")),
    })
}

/// The stored-key bounds of bucket `bucket` (the end of the key space after the last).
fn bucket_bounds(bucket: u16) -> (Vec<u8>, Option<Vec<u8>>) {
    let shift = 32 - DIGEST_BUCKET_BITS;
    let start = (u32::from(bucket) << shift).to_be_bytes().to_vec();
    let end = (u64::from(bucket) + 1) << shift;
    (start, u32::try_from(end).ok().map(|e| e.to_be_bytes().to_vec()))
}

/// The buckets a range of at most [`DIGEST_BUCKET_BITS`] bits covers: `first..=last`.
fn buckets_of(range: DigestRange) -> (u16, u16) {
    let shift = 32 - DIGEST_BUCKET_BITS;
    let first = (range.start() >> shift) as u16;
    let last = match range.end() {
        Some(end) => ((end - 1) >> shift) as u16,
        None => u16::MAX,
    };
    (first, last)
}

fn corrupt(error: impl std::fmt::Display) -> redb::Error {
    redb::Error::Corrupted(error.to_string())
}

/// Adds `part` (wrapping) to a stored bucket; a bucket that comes to nothing loses its entry.
fn add_to_bucket(
    buckets: &mut LoggedTable<'_, &'static [u8], &'static [u8]>,
    table_id: u64,
    bucket: u16,
    part: Digest,
) -> Result<(), redb::Error> {
    let key = bucket_key(table_id, bucket);
    let held = match buckets.get(key.as_slice())? {
        Some(value) => decode_bucket(value.value()).map_err(corrupt)?,
        None => Digest::default(),
    };
    let sum = Digest {
        count: held.count.wrapping_add(part.count),
        hash: held.hash.wrapping_add(part.hash),
    };
    if sum == Digest::default() {
        buckets.remove(key.as_slice())?;
    } else {
        buckets.insert(key.as_slice(), encode_bucket(sum).as_slice())?;
    }
    Ok(())
}

/// The hash a stored record adds to its bucket.
pub(super) fn hash_of(key: &[u8], value: &[u8]) -> Result<u128, redb::Error> {
    stored_record_hash(key, value).map_err(corrupt)
}

/// A batch's changes to the buckets, written once before it commits.
#[derive(Default)]
pub(crate) struct DigestBatch {
    /// (table id, bucket) → (count delta, sum delta), both wrapping.
    deltas: HashMap<(u64, u16), (u64, u128)>,
    /// The build marks read in this batch.
    built: HashMap<u64, Built>,
    /// The delta log as this batch leaves it (published to [`Shared`] once it commits).
    pub(super) log: Option<DeltaLog>,
}

/// The delta log's shape, kept by the writer so a batch need not count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeltaLog {
    /// Delta records held (an entry stays until every chunk has folded it).
    pub pending: u64,
    /// The key of the next entry.
    pub next: u64,
    /// Delta records appended since the last fold step (not stored: 0 after a start).
    pub since_step: u64,
}

fn encode_delta(out: &mut Vec<u8>, (table_id, bucket): (u64, u16), (count, hash): (u64, u128)) {
    out.extend_from_slice(&table_id.to_be_bytes());
    out.extend_from_slice(&bucket.to_be_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
}

/// The delta records of one log entry.
fn decode_deltas(entry: &[u8]) -> Result<impl Iterator<Item = ((u64, u16), (u64, u128))> + '_, String> {
    if !entry.len().is_multiple_of(DELTA_RECORD_BYTES) {
        return Err(format!(
            "corrupt range digest delta entry ({} bytes, not a multiple of {DELTA_RECORD_BYTES})",
            entry.len()
        ));
    }
    Ok(entry.chunks_exact(DELTA_RECORD_BYTES).map(|record| {
        let table_id = u64::from_be_bytes(record[..8].try_into().expect("8 bytes"));
        let bucket = u16::from_be_bytes(record[8..10].try_into().expect("2 bytes"));
        let count = u64::from_le_bytes(record[10..18].try_into().expect("8 bytes"));
        let hash = u128::from_le_bytes(record[18..34].try_into().expect("16 bytes"));
        ((table_id, bucket), (count, hash))
    }))
}

fn add_delta(into: &mut HashMap<(u64, u16), (u64, u128)>, key: (u64, u16), (count, hash): (u64, u128)) {
    let entry = into.entry(key).or_default();
    entry.0 = entry.0.wrapping_add(count);
    entry.1 = entry.1.wrapping_add(hash);
}

impl WriteContext<'_> {
    fn digests_built(&mut self, table_id: u64) -> Result<&Built, redb::Error> {
        if !self.digests.built.contains_key(&table_id) {
            let built = match self.txn.open_table(RANGE_DIGESTS_BUILT)?.get(table_id)? {
                Some(value) => Built::decode(value.value()).map_err(corrupt)?,
                None => Built::Below(Vec::new()),
            };
            self.digests.built.insert(table_id, built);
        }
        Ok(&self.digests.built[&table_id])
    }

    fn set_digests_built(&mut self, table_id: u64, built: Built) -> Result<(), redb::Error> {
        self.txn
            .open_table(RANGE_DIGESTS_BUILT)?
            .insert(table_id, built.encode().as_slice())?;
        self.digests.built.insert(table_id, built);
        Ok(())
    }

    /// Whether the buckets of table `table_id` keep `key` (always, but while an earlier
    /// version's table is being built).
    pub(super) fn digests_cover(&mut self, table_id: u64, key: &[u8]) -> Result<bool, redb::Error> {
        Ok(self.digests_built(table_id)?.covers_key(key))
    }

    /// Records that `key` of table `table_id` changed from a record of hash `old` to one of
    /// hash `new` (`None`: absent), in this transaction; the caller checked
    /// [`WriteContext::digests_cover`].
    pub(super) fn note_hashes(&mut self, table_id: u64, key: &[u8], old: Option<u128>, new: Option<u128>) {
        if old == new {
            return;
        }
        let delta = self.digests.deltas.entry((table_id, bucket_of(key))).or_default();
        if let Some(old) = old {
            delta.0 = delta.0.wrapping_sub(1);
            delta.1 = delta.1.wrapping_sub(old);
        }
        if let Some(new) = new {
            delta.0 = delta.0.wrapping_add(1);
            delta.1 = delta.1.wrapping_add(new);
        }
    }

    /// Records that `key` of table `table_id` changed from the stored record `old` to `new`
    /// (`None`: absent), in this transaction.
    pub(super) fn note_record(
        &mut self,
        table_id: u64,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        if old == new || !self.digests_cover(table_id, key)? {
            return Ok(());
        }
        let old = old.map(|bytes| hash_of(key, bytes)).transpose()?;
        let new = new.map(|bytes| hash_of(key, bytes)).transpose()?;
        self.note_hashes(table_id, key, old, new);
        Ok(())
    }

    /// The delta log's shape as this batch sees it (read once from storage after a start or
    /// a failed batch).
    fn delta_log(&mut self) -> Result<DeltaLog, redb::Error> {
        if let Some(log) = self.digests.log {
            return Ok(log);
        }
        let known = *self
            .shared
            .digest_log
            .lock()
            .expect("digest log lock is never poisoned");
        let log = match known {
            Some(log) => log,
            None => {
                let table = self.txn.open_table(RANGE_DIGEST_DELTAS)?;
                let mut log = DeltaLog {
                    next: read_folded(&*self.txn.open_table(RANGE_DIGEST_FOLDED)?)?
                        .into_iter()
                        .max()
                        .unwrap_or(0),
                    ..DeltaLog::default()
                };
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    log.pending += (value.value().len() / DELTA_RECORD_BYTES) as u64;
                    log.next = log.next.max(key.value() + 1);
                }
                log
            }
        };
        self.digests.log = Some(log);
        Ok(log)
    }

    /// Writes the batch's bucket changes before it commits: entries appended to the delta
    /// log, then, for every [`DIGEST_FOLD_STEP_RECORDS`] appended since the last, a fold step
    /// (one chunk of the buckets); a batch that would take the log past
    /// [`DIGEST_DELTAS_HELD_MAX`] folds all of it.
    pub(super) fn flush_digests(&mut self) -> Result<(), redb::Error> {
        self.digests.deltas.retain(|_, delta| *delta != (0, 0));
        if self.digests.deltas.is_empty() {
            return Ok(());
        }
        let log = self.delta_log()?;
        if log.pending + self.digests.deltas.len() as u64 > DIGEST_DELTAS_HELD_MAX {
            return self.fold_digests();
        }
        let mut deltas: Vec<_> = self.digests.deltas.drain().collect();
        deltas.sort_unstable_by_key(|(key, _)| *key);
        // Entries of one page each (see `APPEND_ENTRY_BYTES_MAX`).
        let mut table = self.txn.open_table(RANGE_DIGEST_DELTAS)?;
        let mut next = log.next;
        let mut entry = Vec::with_capacity(DELTA_ENTRY_RECORDS_MAX * DELTA_RECORD_BYTES);
        for chunk in deltas.chunks(DELTA_ENTRY_RECORDS_MAX) {
            entry.clear();
            for (key, delta) in chunk {
                encode_delta(&mut entry, *key, *delta);
            }
            table.insert(next, entry.as_slice())?;
            next += 1;
        }
        drop(table);
        let since_step = log.since_step + deltas.len() as u64;
        let steps = (since_step / DIGEST_FOLD_STEP_RECORDS).min(u64::from(DIGEST_FOLD_CHUNKS));
        self.digests.log = Some(DeltaLog {
            pending: log.pending + deltas.len() as u64,
            next,
            since_step: if steps == u64::from(DIGEST_FOLD_CHUNKS) {
                0
            } else {
                since_step - steps * DIGEST_FOLD_STEP_RECORDS
            },
        });
        if steps > 0 {
            self.fold_oldest_chunks(steps as usize, HashMap::new())?;
        }
        Ok(())
    }

    /// Folds the logged changes of the `count` chunks folded longest ago (the lowest marks;
    /// ties: the lowest chunk), and `batch` (changes not logged), into the buckets, marks those
    /// chunks folded through the whole log, and removes the entries every chunk has folded.
    fn fold_oldest_chunks(&mut self, count: usize, batch: HashMap<(u64, u16), (u64, u128)>) -> Result<(), redb::Error> {
        let log = self.delta_log()?;
        let mut marks = read_folded(&*self.txn.open_table(RANGE_DIGEST_FOLDED)?)?;
        let mut chunks: Vec<usize> = (0..marks.len()).collect();
        chunks.sort_by_key(|&chunk| (marks[chunk], chunk));
        chunks.truncate(count);
        let mut folding = [false; DIGEST_FOLD_CHUNKS as usize];
        for &chunk in &chunks {
            folding[chunk] = true;
        }
        // (A mark is never above `next`: `delta_log` starts it above them all. `min` keeps a
        // damaged mark from making the range run backwards.)
        let from = chunks
            .iter()
            .map(|&chunk| marks[chunk])
            .min()
            .unwrap_or(log.next)
            .min(log.next);
        let mut all = batch;
        let mut entries = self.txn.open_table(RANGE_DIGEST_DELTAS)?;
        for entry in entries.range(from..log.next)? {
            let (key, value) = entry?;
            for (at, delta) in decode_deltas(value.value()).map_err(corrupt)? {
                let chunk = chunk_of(at.1);
                if folding[chunk] && key.value() >= marks[chunk] {
                    add_delta(&mut all, at, delta);
                }
            }
        }
        let mut all: Vec<_> = all.into_iter().filter(|(_, delta)| *delta != (0, 0)).collect();
        all.sort_unstable_by_key(|(key, _)| *key);
        {
            let mut buckets = self.txn.open_table(RANGE_DIGESTS)?;
            for ((table_id, bucket), (count, hash)) in all {
                add_to_bucket(&mut buckets, table_id, bucket, Digest { count, hash })?;
            }
        }
        let mut folded = self.txn.open_table(RANGE_DIGEST_FOLDED)?;
        for &chunk in &chunks {
            marks[chunk] = log.next;
            folded.insert(chunk as u64, log.next)?;
        }
        // Entries below every chunk's mark are all in the buckets.
        let floor = marks.into_iter().min().unwrap_or(0);
        let mut removed = 0u64;
        entries.retain_in(..floor, |_, value| {
            removed += (value.len() / DELTA_RECORD_BYTES) as u64;
            false
        })?;
        self.digests.log = Some(DeltaLog {
            pending: log.pending.saturating_sub(removed),
            ..log
        });
        Ok(())
    }

    /// Folds the whole delta log and the batch's changes into the buckets and empties the log.
    pub(super) fn fold_digests(&mut self) -> Result<(), redb::Error> {
        let batch = std::mem::take(&mut self.digests.deltas);
        self.fold_oldest_chunks(usize::from(DIGEST_FOLD_CHUNKS), batch)?;
        let log = self.delta_log()?;
        self.digests.log = Some(DeltaLog { since_step: 0, ..log });
        Ok(())
    }

    /// A new table (no records yet) keeps its buckets from its first write.
    pub(super) fn start_digests(&mut self, table_id: u64) -> Result<(), redb::Error> {
        if self.txn.open_table(RANGE_DIGESTS_BUILT)?.get(table_id)?.is_some() {
            return Ok(());
        }
        let empty = self
            .txn
            .open_table(bytes_table(&data_table_name(table_id)))?
            .first()?
            .is_none();
        if empty {
            self.set_digests_built(table_id, Built::Complete)?;
        }
        Ok(())
    }

    /// Removes a deleted table's buckets and build mark.
    pub(super) fn drop_digests(&mut self, table_id: u64) -> Result<(), redb::Error> {
        // Fold first, so no logged change of the table outlives its buckets.
        self.digests.deltas.retain(|(id, _), _| *id != table_id);
        self.fold_digests()?;
        self.digests.built.remove(&table_id);
        self.txn.open_table(RANGE_DIGESTS_BUILT)?.remove(table_id)?;
        let mut buckets = self.txn.open_table(RANGE_DIGESTS)?;
        let first = bucket_key(table_id, 0);
        let last = bucket_key(table_id, u16::MAX);
        buckets.retain_in::<&[u8], _>(first.as_slice()..=last.as_slice(), |_, _| false)?;
        Ok(())
    }

    /// Forgets a table's buckets: the background upkeep builds them again from the records
    /// (what a table written by an earlier version starts from).
    pub fn restart_digests(&mut self, table_id: u64) -> Result<(), ApiError> {
        self.mutations += 1;
        let result = self.drop_digests(table_id);
        result.map_err(|e| self.fail("restarting range digests", e))
    }

    /// Builds up to about `records_max` records more of a table's buckets (written by an
    /// earlier version); returns whether they are now complete.
    pub fn build_digests(&mut self, table_id: u64, records_max: usize) -> Result<bool, ApiError> {
        let result = (|| -> Result<bool, redb::Error> {
            let from = match self.digests_built(table_id)? {
                Built::Complete => return Ok(true),
                Built::Below(bound) => bound.clone(),
            };
            self.mutations += 1;
            let data = self.txn.open_table(bytes_table(&data_table_name(table_id)))?;
            let mut added: BTreeMap<u16, Digest> = BTreeMap::new();
            let mut next = None;
            for (read, entry) in data.range::<&[u8]>(from.as_slice()..)?.enumerate() {
                let (key, value) = entry?;
                if read >= records_max.max(1) {
                    next = Some(key.value().to_vec());
                    break;
                }
                added
                    .entry(bucket_of(key.value()))
                    .or_default()
                    .add(hash_of(key.value(), value.value())?);
            }
            drop(data);
            // The first bucket may be part built already (a bound inside it): add to it.
            let mut buckets = self.txn.open_table(RANGE_DIGESTS)?;
            for (bucket, part) in added {
                add_to_bucket(&mut buckets, table_id, bucket, part)?;
            }
            drop(buckets);
            let complete = next.is_none();
            self.set_digests_built(table_id, next.map_or(Built::Complete, Built::Below))?;
            Ok(complete)
        })();
        result.map_err(|e| self.fail("building range digests", e))
    }

    /// Rewrites buckets of a table from their records (the scrub found them different).
    pub fn rebuild_digest_buckets(&mut self, table_id: u64, buckets: &[u16]) -> Result<(), ApiError> {
        let result = (|| -> Result<(), redb::Error> {
            self.fold_digests()?;
            let built = self.digests_built(table_id)?.clone();
            self.mutations += 1;
            let data = self.txn.open_table(bytes_table(&data_table_name(table_id)))?;
            let mut stored = self.txn.open_table(RANGE_DIGESTS)?;
            for &bucket in buckets {
                let (start, end) = bucket_bounds(bucket);
                if !built.covers_range(bucket_range(bucket)) {
                    continue;
                }
                let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                let mut digest = Digest::default();
                for entry in data.range::<&[u8]>((Bound::Included(start.as_slice()), upper))? {
                    let (key, value) = entry?;
                    digest.add(hash_of(key.value(), value.value())?);
                }
                let key = bucket_key(table_id, bucket);
                if digest == Digest::default() {
                    stored.remove(key.as_slice())?;
                } else {
                    stored.insert(key.as_slice(), encode_bucket(digest).as_slice())?;
                }
            }
            Ok(())
        })();
        result.map_err(|e| self.fail("rewriting range digests", e))
    }
}

/// The range that is exactly one bucket.
fn bucket_range(bucket: u16) -> DigestRange {
    DigestRange::new(DIGEST_BUCKET_BITS, u32::from(bucket)).expect("a bucket is a valid range")
}

/// What a scrub of some buckets found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Records read.
    pub records: usize,
    /// Buckets whose stored digest differs from their records.
    pub mismatched: Vec<u16>,
    /// The bucket to start from next time (`None`: the table is done).
    pub next: Option<u16>,
}

impl Snapshot {
    fn digests_built(&self, table_id: u64) -> Result<Built, ApiError> {
        let built = match self.txn.open_table(RANGE_DIGESTS_BUILT) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Built::Below(Vec::new())),
            Err(e) => return Err(storage_error("opening range digests", e)),
        };
        match built
            .get(table_id)
            .map_err(|e| storage_error("reading range digests", e))?
        {
            Some(value) => Built::decode(value.value()).map_err(|e| storage_error("reading range digests", e)),
            None => Ok(Built::Below(Vec::new())),
        }
    }

    /// A table's changes in the delta log, per bucket (not yet folded into the buckets).
    fn pending_deltas(&self, table_id: u64) -> Result<BTreeMap<u16, (u64, u128)>, ApiError> {
        let mut out = BTreeMap::new();
        let log = match self.txn.open_table(RANGE_DIGEST_DELTAS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(storage_error("opening range digests", e)),
        };
        let marks = match self.txn.open_table(RANGE_DIGEST_FOLDED) {
            Ok(t) => read_folded(&t).map_err(|e| storage_error("reading range digests", e))?,
            Err(TableError::TableDoesNotExist(_)) => [0; DIGEST_FOLD_CHUNKS as usize],
            Err(e) => return Err(storage_error("opening range digests", e)),
        };
        let from = marks.iter().copied().min().unwrap_or(0);
        for entry in log
            .range(from..)
            .map_err(|e| storage_error("reading range digests", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading range digests", e))?;
            for ((id, bucket), (count, hash)) in
                decode_deltas(value.value()).map_err(|e| storage_error("reading range digests", e))?
            {
                if id == table_id && key.value() >= marks[chunk_of(bucket)] {
                    let held: &mut (u64, u128) = out.entry(bucket).or_default();
                    held.0 = held.0.wrapping_add(count);
                    held.1 = held.1.wrapping_add(hash);
                }
            }
        }
        Ok(out)
    }

    /// Whether a table's buckets are complete (tests and the build's progress).
    pub fn digests_complete(&self, table_id: u64) -> Result<bool, ApiError> {
        Ok(self.digests_built(table_id)? == Built::Complete)
    }

    /// Digests of a table's records in each of `ranges` (anti-entropy): the count and the sum
    /// of a SHA-256 over each record's key and version header. Ranges of at most
    /// [`DIGEST_BUCKET_BITS`] bits whose buckets are built are summed from them; others are read
    /// from their records.
    pub fn digests(&self, table: &TableMeta, ranges: &[DigestRange]) -> Result<Vec<Digest>, ApiError> {
        let built = self.digests_built(table.id)?;
        let buckets = match self.txn.open_table(RANGE_DIGESTS) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage_error("opening range digests", e)),
        };
        let pending = self.pending_deltas(table.id)?;
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let digest = if range.depth <= DIGEST_BUCKET_BITS && built.covers_range(*range) {
                let (first, last) = buckets_of(*range);
                let mut digest = Digest::default();
                if let Some(buckets) = &buckets {
                    let (lower, upper) = (bucket_key(table.id, first), bucket_key(table.id, last));
                    for entry in buckets
                        .range::<&[u8]>(lower.as_slice()..=upper.as_slice())
                        .map_err(|e| storage_error("reading range digests", e))?
                    {
                        let (_, value) = entry.map_err(|e| storage_error("reading range digests", e))?;
                        let part =
                            decode_bucket(value.value()).map_err(|e| storage_error("reading range digests", e))?;
                        digest.count = digest.count.wrapping_add(part.count);
                        digest.hash = digest.hash.wrapping_add(part.hash);
                    }
                }
                for (_, (count, hash)) in pending.range(first..=last) {
                    digest.count = digest.count.wrapping_add(*count);
                    digest.hash = digest.hash.wrapping_add(*hash);
                }
                digest
            } else {
                self.digests_from_records(table, std::slice::from_ref(range))?[0]
            };
            out.push(digest);
        }
        Ok(out)
    }

    /// Digests of `ranges` computed from the records themselves (what the buckets must equal).
    pub fn digests_from_records(&self, table: &TableMeta, ranges: &[DigestRange]) -> Result<Vec<Digest>, ApiError> {
        let name = data_table_name(table.id);
        let data = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(vec![Digest::default(); ranges.len()]),
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let (lower, upper) = range_bounds(*range);
            let mut digest = Digest::default();
            for entry in data
                .range::<&[u8]>((as_slice_bound(&lower), as_slice_bound(&upper)))
                .map_err(|e| storage_error("reading a table", e))?
            {
                let (key, value) = entry.map_err(|e| storage_error("reading a table", e))?;
                let header = record::header_bytes(value.value()).map_err(|e| storage_error("decoding an item", e))?;
                digest.add(record_digest(key.value(), header));
            }
            out.push(digest);
        }
        Ok(out)
    }

    /// Compares a table's built buckets from `from` on with their records, reading whole
    /// buckets until about `records_max` records.
    pub fn scrub_digests(&self, table: &TableMeta, from: u16, records_max: usize) -> Result<ScrubReport, ApiError> {
        let built = self.digests_built(table.id)?;
        let mut report = ScrubReport::default();
        if !built.covers_range(bucket_range(from)) {
            return Ok(report);
        }
        let read_error = |e: redb::StorageError| storage_error("reading a table", e);
        // One pass over the records from `from` on, whole buckets, until about `records_max`.
        let mut computed: BTreeMap<u16, Digest> = BTreeMap::new();
        let mut end: Option<u16> = None;
        let data = match self.txn.open_table(bytes_table(&data_table_name(table.id))) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        if let Some(data) = &data {
            let start = bucket_bounds(from).0;
            for entry in data.range::<&[u8]>(start.as_slice()..).map_err(read_error)? {
                let (key, value) = entry.map_err(read_error)?;
                let bucket = bucket_of(key.value());
                if !built.covers_range(bucket_range(bucket))
                    || (report.records >= records_max.max(1) && !computed.contains_key(&bucket))
                {
                    end = Some(bucket);
                    break;
                }
                computed
                    .entry(bucket)
                    .or_default()
                    .add(hash_of(key.value(), value.value()).map_err(|e| storage_error("decoding an item", e))?);
                report.records += 1;
            }
        }
        // What the buckets and the delta log hold for the same buckets.
        let last = match end {
            Some(0) => return Ok(report),
            Some(end) => end - 1,
            None => u16::MAX,
        };
        let mut stored: BTreeMap<u16, Digest> = BTreeMap::new();
        match self.txn.open_table(RANGE_DIGESTS) {
            Ok(buckets) => {
                let (lower, upper) = (bucket_key(table.id, from), bucket_key(table.id, last));
                for entry in buckets
                    .range::<&[u8]>(lower.as_slice()..=upper.as_slice())
                    .map_err(|e| storage_error("reading range digests", e))?
                {
                    let (key, value) = entry.map_err(|e| storage_error("reading range digests", e))?;
                    let bucket = u16::from_be_bytes(key.value()[8..10].try_into().map_err(|_| {
                        storage_error(
                            "reading range digests",
                            format!("corrupt bucket key ({} bytes)", key.value().len()),
                        )
                    })?);
                    let part = decode_bucket(value.value()).map_err(|e| storage_error("reading range digests", e))?;
                    stored.insert(bucket, part);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage_error("opening range digests", e)),
        }
        for (bucket, (count, hash)) in self.pending_deltas(table.id)?.range(from..=last) {
            let held = stored.entry(*bucket).or_default();
            held.count = held.count.wrapping_add(*count);
            held.hash = held.hash.wrapping_add(*hash);
        }
        let buckets: std::collections::BTreeSet<u16> = computed.keys().chain(stored.keys()).copied().collect();
        for bucket in buckets {
            let want = computed.get(&bucket).copied().unwrap_or_default();
            let held = stored.get(&bucket).copied().unwrap_or_default();
            if want != held {
                report.mismatched.push(bucket);
            }
        }
        report.next = end;
        Ok(report)
    }
}

impl Engine {
    /// One sweep of range digest upkeep: builds the buckets of a table an earlier version
    /// wrote (one bounded job), then scrubs about [`DIGEST_SCRUB_RECORDS_PER_SWEEP_MAX`]
    /// records' worth of buckets from `cursor` (table id → next bucket), rewriting any that
    /// differ. Returns the buckets found wrong.
    pub async fn maintain_digests_once(&self, cursor: &mut DigestCursor) -> Result<usize, ApiError> {
        let tables = self.tables();
        let snapshot = self.snapshot()?;
        let unbuilt = tables
            .iter()
            .map(|t| Ok((t.id, snapshot.digests_complete(t.id)?)))
            .collect::<Result<Vec<_>, ApiError>>()?
            .into_iter()
            .find(|(_, complete)| !complete)
            .map(|(id, _)| id);
        // Below the disk watermark the store only takes what frees space: the build (which adds
        // entries) waits, and tables not built yet are compared from their records meanwhile.
        let disk_low = self.disk_status().low;
        if let Some(table_id) = unbuilt.filter(|_| !disk_low) {
            self.write(move |context| context.build_digests(table_id, DIGEST_BUILD_RECORDS_PER_JOB_MAX))
                .await?;
        }
        if tables.is_empty() {
            return Ok(0);
        }
        let table = tables
            .iter()
            .find(|t| t.id >= cursor.table_id)
            .unwrap_or(&tables[0])
            .clone();
        if table.id != cursor.table_id {
            *cursor = DigestCursor {
                table_id: table.id,
                bucket: 0,
            };
        }
        let from = cursor.bucket;
        let scan_table = Arc::clone(&table);
        let report = tokio::task::spawn_blocking(move || {
            snapshot.scrub_digests(&scan_table, from, DIGEST_SCRUB_RECORDS_PER_SWEEP_MAX)
        })
        .await
        .map_err(|e| ApiError::internal(format!("range digest scrub failed: {e}")))??;
        *cursor = match report.next {
            Some(bucket) => DigestCursor {
                table_id: table.id,
                bucket,
            },
            None => DigestCursor {
                table_id: table.id + 1,
                bucket: 0,
            },
        };
        if report.mismatched.is_empty() {
            return Ok(0);
        }
        let found = report.mismatched.len();
        tracing::error!(
            table = %table.name,
            buckets = ?report.mismatched,
            "range digests differed from their records; rewritten (a bug: please report it)"
        );
        self.shared
            .digest_mismatches
            .fetch_add(found as u64, std::sync::atomic::Ordering::Relaxed);
        let table_id = table.id;
        let buckets = report.mismatched;
        self.write(move |context| context.rebuild_digest_buckets(table_id, &buckets))
            .await?;
        Ok(found)
    }

    /// Range digest buckets the scrub found wrong, since start.
    pub fn digest_mismatches_total(&self) -> u64 {
        self.shared.digest_mismatches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Where the range digest scrub goes on next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestCursor {
    pub table_id: u64,
    pub bucket: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use serde_json::{Value, json};

    #[test]
    fn bucket_bounds_tile_the_key_space() {
        assert_eq!(bucket_of(&[0x12, 0x34, 0x56, 0x78, 9]), 0x1234);
        assert_eq!(bucket_of(&[0xff]), 0xff00);
        assert_eq!(bucket_bounds(0), (vec![0, 0, 0, 0], Some(vec![0, 1, 0, 0])));
        assert_eq!(bucket_bounds(u16::MAX), (vec![0xff, 0xff, 0, 0], None));
        let root = DigestRange::ROOT;
        assert_eq!(buckets_of(root), (0, u16::MAX));
        let quarter = DigestRange::new(2, 1).expect("valid");
        assert_eq!(buckets_of(quarter), (0x4000, 0x7fff));
        assert_eq!(buckets_of(bucket_range(7)), (7, 7));
    }

    #[test]
    fn build_marks_round_trip_and_bound_what_they_cover() {
        for built in [Built::Complete, Built::Below(Vec::new()), Built::Below(vec![1, 2, 3])] {
            assert_eq!(Built::decode(&built.encode()), Ok(built));
        }
        assert!(Built::decode(&[]).is_err());
        assert!(Built::decode(&[1, 0]).is_err());
        assert!(Built::decode(&[7]).is_err());
        let half = Built::Below(vec![0x80, 0, 0, 0]);
        assert!(half.covers_key(&[0x7f, 0xff, 0xff, 0xff, 1]));
        assert!(!half.covers_key(&[0x80, 0, 0, 0]));
        assert!(half.covers_range(DigestRange::new(1, 0).expect("valid")));
        assert!(!half.covers_range(DigestRange::new(1, 1).expect("valid")));
        assert!(!half.covers_range(DigestRange::ROOT));
        assert!(!Built::Below(Vec::new()).covers_range(bucket_range(0)));
        assert!(Built::Complete.covers_range(DigestRange::ROOT));
    }

    #[test]
    fn bucket_values_refuse_the_wrong_length() {
        let digest = Digest {
            count: 3,
            hash: u128::MAX - 5,
        };
        assert_eq!(decode_bucket(&encode_bucket(digest)), Ok(digest));
        assert!(decode_bucket(&[0; 23]).is_err());
        assert!(decode_bucket(&[0; 25]).is_err());
    }

    #[test]
    fn delta_entries_round_trip_and_refuse_a_torn_length() {
        let mut entry = Vec::new();
        encode_delta(&mut entry, (7, 0xbeef), (u64::MAX, 3));
        encode_delta(&mut entry, (8, 1), (1, u128::MAX));
        let decoded: Vec<_> = decode_deltas(&entry).expect("whole records").collect();
        assert_eq!(decoded, vec![((7, 0xbeef), (u64::MAX, 3)), ((8, 1), (1, u128::MAX))]);
        for cut in [1, DELTA_RECORD_BYTES - 1, DELTA_RECORD_BYTES + 5] {
            assert!(decode_deltas(&entry[..cut]).is_err(), "{cut} bytes");
        }
        assert_eq!(decode_deltas(&[]).expect("empty").count(), 0);
    }

    /// A store with table `tab` (key `pk`), global (replicated with eu-west-1, so deletes leave
    /// tombstones) or not.
    async fn store_with_table(global: bool) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
        let store = Store::new(engine.clone());
        let create = json!({
            "TableName": "tab",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        });
        store
            .handle("CreateTable", create.to_string().as_bytes())
            .await
            .expect("created");
        if global {
            let mut meta = (*engine.table("tab").expect("table")).clone();
            meta.replicas = vec!["eu-west-1".into(), "us-east-1".into()];
            engine
                .write_exclusive(move |context| context.put_table(meta))
                .await
                .expect("made global");
        }
        (store, dir)
    }

    async fn call(store: &Store, operation: &str, body: Value) -> Value {
        store
            .handle(operation, body.to_string().as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{operation}: {e}"))
    }

    /// Every range the walk can ask for, at each depth up to below a bucket, served from the
    /// buckets (where built) equals the digest of the records themselves.
    fn assert_buckets_match_records(engine: &Engine, seed: u64) {
        let table = engine.table("tab").expect("table");
        let snapshot = engine.snapshot().expect("snapshot");
        let mut ranges: Vec<DigestRange> = vec![DigestRange::ROOT];
        ranges.extend(DigestRange::ROOT.descendants(4));
        ranges.extend(DigestRange::ROOT.descendants(8));
        let mut rng = common::rng::Rng::new(seed);
        for depth in [12u8, 16, 20, 32] {
            for _ in 0..64 {
                let bits = rng.next_u64() as u32;
                let index = if depth == 32 { bits } else { bits >> (32 - depth) };
                ranges.push(DigestRange::new(depth, index).expect("valid"));
            }
        }
        let served = snapshot.digests(&table, &ranges).expect("digests");
        let computed = snapshot.digests_from_records(&table, &ranges).expect("digests");
        for ((range, served), computed) in ranges.iter().zip(&served).zip(&computed) {
            assert_eq!(served, computed, "range {range:?}");
        }
    }

    fn item(n: u64, version: u64) -> Value {
        json!({"pk": {"S": format!("key-{n}")}, "v": {"N": version.to_string()}})
    }

    /// Puts, updates, deletes, batches, transactions, replicated changes and the tombstone purge
    /// all keep the buckets equal to the records.
    async fn every_kind_of_write_keeps_the_buckets(global: bool) {
        let (store, _dir) = store_with_table(global).await;
        let engine = store.engine().clone();
        let table = engine.table("tab").expect("table");
        assert!(
            engine
                .snapshot()
                .expect("snapshot")
                .digests_complete(table.id)
                .expect("mark")
        );
        let mut rng = common::rng::Rng::new(7);
        for round in 0..400u64 {
            let n = rng.next_u64() % 150;
            match rng.next_u64() % 6 {
                0 | 1 => {
                    call(&store, "PutItem", json!({"TableName": "tab", "Item": item(n, round)})).await;
                }
                2 => {
                    call(
                        &store,
                        "UpdateItem",
                        json!({"TableName": "tab", "Key": {"pk": {"S": format!("key-{n}")}},
                            "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"N": round.to_string()}}}),
                    )
                    .await;
                }
                3 => {
                    call(
                        &store,
                        "DeleteItem",
                        json!({"TableName": "tab", "Key": {"pk": {"S": format!("key-{n}")}}}),
                    )
                    .await;
                }
                4 => {
                    let requests: Vec<Value> = (n..n + 5)
                        .map(|m| {
                            if m % 2 == 0 {
                                json!({"PutRequest": {"Item": item(m, round)}})
                            } else {
                                json!({"DeleteRequest": {"Key": {"pk": {"S": format!("key-{m}")}}}})
                            }
                        })
                        .collect();
                    call(&store, "BatchWriteItem", json!({"RequestItems": {"tab": requests}})).await;
                }
                _ => {
                    call(
                        &store,
                        "TransactWriteItems",
                        json!({"TransactItems": [
                            {"Put": {"TableName": "tab", "Item": item(n, round)}},
                            {"Delete": {"TableName": "tab", "Key": {"pk": {"S": format!("key-{}", n + 1)}}}}
                        ]}),
                    )
                    .await;
                }
            }
            if round % 100 == 99 {
                assert_buckets_match_records(&engine, round);
            }
        }
        // A change replicated from the peer (newer than what is held) moves the buckets too.
        let key = crate::engine::key_of(
            table.key_hash,
            &table.key,
            &serde_json::from_value(item(3, 0)).expect("item"),
        )
        .expect("key");
        let incoming = record::encode(&Record {
            hlc: u64::MAX / 2,
            origin: "eu-west-1".into(),
            tombstone: false,
            item: serde_json::from_value(item(3, 999)).expect("item"),
        });
        let (meta, written) = (Arc::clone(&table), key.clone());
        let applied = engine
            .write(move |context| context.apply_replicated(&meta, &written, &incoming))
            .await
            .expect("applied");
        assert!(applied);
        assert_buckets_match_records(&engine, 1);
        if global {
            let before = engine.tombstone_entries();
            assert!(before > 0, "deletes of a global table leave tombstones");
            let (_, removed) = engine.purge_tombstones(u64::MAX / 4).await.expect("purge");
            assert!(removed > 0, "the purge removed tombstones");
            assert_buckets_match_records(&engine, 2);
        }
    }

    #[tokio::test]
    async fn every_kind_of_write_keeps_a_tables_buckets() {
        every_kind_of_write_keeps_the_buckets(false).await;
    }

    #[tokio::test]
    async fn every_kind_of_write_keeps_a_global_tables_buckets_through_tombstones_and_their_purge() {
        every_kind_of_write_keeps_the_buckets(true).await;
    }

    fn bucket_entries(engine: &Engine, table_id: u64) -> usize {
        let snapshot = engine.snapshot().expect("snapshot");
        let Ok(buckets) = snapshot.txn.open_table(RANGE_DIGESTS) else {
            return 0;
        };
        let (first, last) = (bucket_key(table_id, 0), bucket_key(table_id, u16::MAX));
        buckets
            .range::<&[u8]>(first.as_slice()..=last.as_slice())
            .expect("range")
            .count()
    }

    /// Delta records of table `table_id` in the log, not yet folded.
    fn logged_deltas(engine: &Engine, table_id: u64) -> usize {
        engine
            .snapshot()
            .expect("snapshot")
            .pending_deltas(table_id)
            .expect("deltas")
            .len()
    }

    async fn fold(engine: &Engine) {
        engine
            .write(|context| context.fold_digests().map_err(|e| context.fail("folding", e)))
            .await
            .expect("folded");
    }

    async fn put_many(store: &Store, from: u64, count: u64, version: u64) {
        for first in (from..from + count).step_by(25) {
            let requests: Vec<Value> = (first..(first + 25).min(from + count))
                .map(|n| json!({"PutRequest": {"Item": item(n, version)}}))
                .collect();
            call(store, "BatchWriteItem", json!({"RequestItems": {"tab": requests}})).await;
        }
    }

    /// A table written by an earlier version (no buckets) is built a few records per job while
    /// it is written to, below and above the build's bound; digests are right throughout.
    #[tokio::test]
    async fn an_earlier_versions_table_is_built_in_bounded_steps_while_written() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        put_many(&store, 0, 200, 1).await;
        assert_eq!(bucket_entries(&engine, id), 0, "the changes wait in the delta log");
        assert!(logged_deltas(&engine, id) > 0);
        put_many(&store, 200, 100, 1).await;
        fold(&engine).await;
        assert_eq!(logged_deltas(&engine, id), 0);
        assert!(bucket_entries(&engine, id) > 0);
        engine
            .write(move |context| context.restart_digests(id))
            .await
            .expect("restarted");
        assert_eq!(bucket_entries(&engine, id), 0);
        assert!(!engine.snapshot().expect("snapshot").digests_complete(id).expect("mark"));
        let mut steps = 0;
        loop {
            let complete = engine
                .write(move |context| context.build_digests(id, 7))
                .await
                .expect("built a step");
            assert_buckets_match_records(&engine, steps);
            if complete {
                break;
            }
            steps += 1;
            assert!(steps < 100, "300 records in steps of 7 take about 43 steps");
            // Writes on both sides of the bound, and a delete.
            put_many(&store, steps * 3, 4, 10 + steps).await;
            call(
                &store,
                "DeleteItem",
                json!({"TableName": "tab", "Key": {"pk": {"S": format!("key-{}", 299 - steps)}}}),
            )
            .await;
        }
        // At least 255 records remain (300 less one delete a step), 7 a step at most.
        assert!(steps >= 36, "{steps} steps: each reads at most 7 records");
        assert!(engine.snapshot().expect("snapshot").digests_complete(id).expect("mark"));
        assert_buckets_match_records(&engine, 99);
    }

    /// The background upkeep builds an unbuilt table, and its scrub finds a bucket that differs
    /// from its records, counts it and rewrites it.
    #[tokio::test]
    async fn the_upkeep_builds_unbuilt_tables_and_the_scrub_rewrites_a_wrong_bucket() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let table = engine.table("tab").expect("table");
        let id = table.id;
        put_many(&store, 0, 200, 1).await;
        engine
            .write(move |context| context.restart_digests(id))
            .await
            .expect("restarted");
        let mut cursor = DigestCursor::default();
        engine.maintain_digests_once(&mut cursor).await.expect("upkeep");
        assert!(engine.snapshot().expect("snapshot").digests_complete(id).expect("mark"));
        assert_eq!(engine.digest_mismatches_total(), 0);
        // A bug's effect: one bucket off by one record.
        let key = crate::engine::key_of(
            table.key_hash,
            &table.key,
            &serde_json::from_value(item(5, 1)).expect("item"),
        )
        .expect("key");
        let bucket = bucket_of(&key);
        engine
            .write(move |context| {
                context.flush_digests().map_err(|e| context.fail("test", e))?;
                let mut buckets = context
                    .txn
                    .open_table(RANGE_DIGESTS)
                    .map_err(|e| context.fail("test", e))?;
                let wrong = encode_bucket(Digest { count: 99, hash: 1 });
                buckets
                    .insert(bucket_key(id, bucket).as_slice(), wrong.as_slice())
                    .map_err(|e| context.fail("test", e))?;
                Ok(())
            })
            .await
            .expect("corrupted");
        let table_range = bucket_range(bucket);
        let snapshot = engine.snapshot().expect("snapshot");
        assert_ne!(
            snapshot.digests(&table, &[table_range]).expect("digest"),
            snapshot.digests_from_records(&table, &[table_range]).expect("digest")
        );
        drop(snapshot);
        // A whole pass over the table (200 records, in sweeps of up to 2,000).
        let mut found = 0;
        for _ in 0..3 {
            found += engine.maintain_digests_once(&mut cursor).await.expect("upkeep");
        }
        assert_eq!(found, 1);
        assert_eq!(engine.digest_mismatches_total(), 1);
        assert_buckets_match_records(&engine, 3);
    }

    /// A batch that changes more buckets than one page of the delta log holds appends several
    /// entries, each within a page, and readers count every change.
    #[tokio::test]
    async fn a_batch_changing_many_buckets_appends_page_sized_entries() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        let buckets = 3 * DELTA_ENTRY_RECORDS_MAX + 7;
        // Buckets of the last fold chunk: the step this batch takes folds the first.
        add_in_one_batch(
            &engine,
            id,
            (0..buckets as u32).map(|n| (0xF000 | n, u128::from(n) + 1)),
        )
        .await;
        let snapshot = engine.snapshot().expect("snapshot");
        let log = snapshot.txn.open_table(RANGE_DIGEST_DELTAS).expect("log");
        let sizes: Vec<usize> = log
            .iter()
            .expect("entries")
            .map(|entry| entry.expect("entry").1.value().len())
            .collect();
        assert_eq!(sizes.len(), 4, "three full entries and one of 7 changes: {sizes:?}");
        assert!(sizes.iter().all(|size| *size <= APPEND_ENTRY_BYTES_MAX), "{sizes:?}");
        let pending = snapshot.pending_deltas(id).expect("deltas");
        assert_eq!(pending.len(), buckets);
        assert_eq!(pending.get(&0xF005), Some(&(1, 6)));
        assert_eq!(
            read_folded(&snapshot.txn.open_table(RANGE_DIGEST_FOLDED).expect("marks")).expect("marks")[0],
            4
        );
    }

    /// Reopens the store in `dir` once the previous engine's writer has let go of the file.
    async fn reopen(dir: &std::path::Path) -> Engine {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Engine::open(dir, "us-east-1", Arc::new(SystemClock)) {
                Ok(engine) => return engine,
                Err(error) if std::time::Instant::now() > deadline => panic!("still locked: {error}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Notes, in one write batch, a new record of hash `hash` in each bucket `bucket` of table
    /// `table_id` (no record is stored).
    async fn add_in_one_batch(engine: &Engine, table_id: u64, buckets: impl Iterator<Item = (u32, u128)>) {
        let buckets: Vec<(u32, u128)> = buckets.collect();
        engine
            .write(move |context| {
                for (bucket, hash) in buckets {
                    context.note_hashes(table_id, &(bucket << 16).to_be_bytes(), None, Some(hash));
                }
                Ok(())
            })
            .await
            .expect("written");
    }

    /// The delta records the log holds, counted from storage.
    fn held_deltas(engine: &Engine) -> u64 {
        let snapshot = engine.snapshot().expect("snapshot");
        let log = snapshot.txn.open_table(RANGE_DIGEST_DELTAS).expect("log");
        log.iter()
            .expect("entries")
            .map(|entry| (entry.expect("entry").1.value().len() / DELTA_RECORD_BYTES) as u64)
            .sum()
    }

    /// The fold chunks that have bucket entries of table `table_id`.
    fn chunks_with_buckets(engine: &Engine, table_id: u64) -> std::collections::BTreeSet<usize> {
        let snapshot = engine.snapshot().expect("snapshot");
        let Ok(buckets) = snapshot.txn.open_table(RANGE_DIGESTS) else {
            return Default::default();
        };
        let (first, last) = (bucket_key(table_id, 0), bucket_key(table_id, u16::MAX));
        buckets
            .range::<&[u8]>(first.as_slice()..=last.as_slice())
            .expect("range")
            .map(|entry| {
                let key = entry.expect("entry").0.value().to_vec();
                chunk_of(u16::from_be_bytes([key[8], key[9]]))
            })
            .collect()
    }

    /// The delta log is folded into the buckets a chunk at a time as it grows, stays bounded,
    /// and digests are the same throughout; the writer's count of it is what storage holds.
    #[tokio::test]
    async fn the_delta_log_folds_into_the_buckets_a_chunk_at_a_time() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        // Up to one step's records, nothing is folded.
        put_many(&store, 0, DIGEST_FOLD_STEP_RECORDS - 25, 1).await;
        assert_eq!(bucket_entries(&engine, id), 0);
        // The first step folds the first chunk's buckets, and only them.
        put_many(&store, DIGEST_FOLD_STEP_RECORDS - 25, 50, 1).await;
        assert_eq!(chunks_with_buckets(&engine, id), [0].into());
        assert_buckets_match_records(&engine, 0);
        for round in 0..12 {
            put_many(&store, 1000 + round * 500, 500, 1).await;
            let held = held_deltas(&engine);
            assert!(
                held <= DIGEST_DELTAS_PENDING_MAX + 2 * DIGEST_FOLD_STEP_RECORDS,
                "the log stays bounded: {held} records"
            );
            assert_buckets_match_records(&engine, round);
        }
        assert_eq!(
            chunks_with_buckets(&engine, id).len(),
            usize::from(DIGEST_FOLD_CHUNKS),
            "7,000 items in distinct buckets: every chunk was folded"
        );
        let known = *engine.shared.digest_log.lock().expect("lock");
        assert_eq!(
            known.map(|k| k.pending),
            Some(held_deltas(&engine)),
            "the writer's count is the log's"
        );
        // A whole fold leaves an empty log and the same digests.
        fold(&engine).await;
        assert_eq!(held_deltas(&engine), 0);
        assert_eq!(logged_deltas(&engine, id), 0);
        assert_buckets_match_records(&engine, 99);
    }

    /// No single commit folds more than a few chunks: a batch of single-item writes (what a
    /// busy table gets) never rewrites more than one chunk's buckets at a time.
    #[tokio::test]
    async fn a_fold_step_rewrites_one_chunk_of_the_buckets() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        let mut chunks_before = 0;
        for n in 0..(3 * DIGEST_FOLD_STEP_RECORDS + 10) {
            call(&store, "PutItem", json!({"TableName": "tab", "Item": item(n, 1)})).await;
            let chunks = chunks_with_buckets(&engine, id).len();
            assert!(
                chunks <= chunks_before + 1,
                "one write folded {} chunks",
                chunks - chunks_before
            );
            chunks_before = chunks;
        }
        assert_eq!(chunks_before, 3, "three steps' worth of writes: three chunks folded");
        assert_buckets_match_records(&engine, 7);
    }

    /// What the fold marks say survives a restart in the middle of a cycle: digests after
    /// reopening equal the records, and writing on keeps them so.
    #[tokio::test]
    async fn the_fold_marks_survive_a_restart_mid_cycle() {
        let (store, dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        put_many(&store, 0, 5 * DIGEST_FOLD_STEP_RECORDS + 100, 1).await;
        put_many(&store, 0, 300, 2).await;
        assert_buckets_match_records(&engine, 1);
        let held = held_deltas(&engine);
        assert!(
            held > 0 && bucket_entries(&engine, id) > 0,
            "mid-cycle: some folded, some logged"
        );
        drop((store, engine));
        let engine = reopen(dir.path()).await;
        let store = Store::new(engine.clone());
        assert_eq!(held_deltas(&engine), held);
        assert_buckets_match_records(&engine, 2);
        for round in 0..4 {
            put_many(&store, 2000 + round * 700, 700, 3).await;
            assert_buckets_match_records(&engine, 3 + round);
        }
        let known = *engine.shared.digest_log.lock().expect("lock");
        assert_eq!(known.map(|k| k.pending), Some(held_deltas(&engine)));
        // After a whole fold the log is empty but the marks stay: a restart must key new
        // entries above them, or their changes would read as folded and be lost.
        fold(&engine).await;
        assert_eq!(held_deltas(&engine), 0);
        drop((store, engine));
        let engine = reopen(dir.path()).await;
        let store = Store::new(engine.clone());
        put_many(&store, 0, 100, 4).await;
        assert!(
            logged_deltas(&engine, id) > 0,
            "the new changes are logged, not read as folded"
        );
        assert_buckets_match_records(&engine, 10);
    }

    /// A store written before chunked folds has delta entries and no marks: everything logged
    /// reads as not folded. A batch that takes several steps at once folds chunks whose marks
    /// differ, and counts every change once.
    #[tokio::test]
    async fn a_log_without_marks_reads_as_unfolded_and_a_batch_may_fold_several_chunks() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        put_many(&store, 0, 200, 1).await;
        // What an earlier version leaves: entries, no marks table.
        engine
            .write(|context| {
                context
                    .txn
                    .delete_table(RANGE_DIGEST_FOLDED)
                    .map_err(|e| context.fail("dropping the marks", e))?;
                Ok(())
            })
            .await
            .expect("dropped");
        assert!(held_deltas(&engine) > 0);
        assert_buckets_match_records(&engine, 1);
        // Steps on the way: the chunks' marks now differ.
        put_many(&store, 200, 2 * DIGEST_FOLD_STEP_RECORDS, 1).await;
        assert!(bucket_entries(&engine, engine.table("tab").expect("table").id) > 0);
        // One batch of 3 steps' worth of changes to buckets of a table with no records (its
        // digests are what this batch added: 768 records).
        let other = 9_999;
        let many = 3 * DIGEST_FOLD_STEP_RECORDS as u32;
        add_in_one_batch(&engine, other, (0..many).map(|n| (n * 83, u128::from(n) + 1))).await;
        let snapshot = engine.snapshot().expect("snapshot");
        let mut total = Digest::default();
        let buckets = snapshot.txn.open_table(RANGE_DIGESTS).expect("buckets");
        let (first, last) = (bucket_key(other, 0), bucket_key(other, u16::MAX));
        let mut folded = 0;
        for entry in buckets
            .range::<&[u8]>(first.as_slice()..=last.as_slice())
            .expect("range")
        {
            let part = decode_bucket(entry.expect("entry").1.value()).expect("bucket");
            total.count += part.count;
            total.hash = total.hash.wrapping_add(part.hash);
            folded += 1;
        }
        for (count, hash) in snapshot.pending_deltas(other).expect("deltas").values() {
            total.count = total.count.wrapping_add(*count);
            total.hash = total.hash.wrapping_add(*hash);
        }
        assert!(folded > 0, "the batch's steps folded some of its own changes");
        assert_eq!(total.count, u64::from(many), "every change counted once");
        assert_eq!(total.hash, (1..=u128::from(many)).sum::<u128>());
        drop((buckets, snapshot));
        assert_buckets_match_records(&engine, 3);
    }

    #[tokio::test]
    async fn deleting_a_table_drops_its_buckets() {
        let (store, _dir) = store_with_table(false).await;
        let engine = store.engine().clone();
        let id = engine.table("tab").expect("table").id;
        put_many(&store, 0, 50, 1).await;
        fold(&engine).await;
        assert!(bucket_entries(&engine, id) > 0);
        put_many(&store, 50, 50, 1).await;
        assert!(logged_deltas(&engine, id) > 0);
        call(&store, "DeleteTable", json!({"TableName": "tab"})).await;
        assert_eq!(bucket_entries(&engine, id), 0);
        assert_eq!(logged_deltas(&engine, id), 0, "a deleted table leaves no logged change");
        let snapshot = engine.snapshot().expect("snapshot");
        assert_eq!(snapshot.digests_built(id).expect("mark"), Built::Below(Vec::new()));
    }
}
