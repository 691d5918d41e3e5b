//! The replication log of global tables, the tombstone index and its purge, the durable
//! replication positions and join state, and range digests for anti-entropy: the storage side
//! of `crate::global`, whose rules live in `replication::receive`.
//!
//! Invariants:
//! - a change of a global table is appended to the log in the transaction that stores it, so
//!   the log holds exactly what this region applied, in commit order; a batch's changes are
//!   one block (see [`REPLOG`]), stored before the batch commits;
//! - the log is trimmed in whole blocks: a block goes only when every change in it is at or
//!   below the trim point;
//! - a tombstone is indexed in the transaction that writes it; a purge removes it only while it
//!   is still the key's record, and raises the table's purged watermark in the same
//!   transaction;
//! - applied positions, acknowledged positions, definition sequences and backfill waits are
//!   settings written in the transaction of the change they describe.
//!
//! About 1,300 lines (a third of them tests): `ReplicaWriter` (the `replication::receive`
//! storage traits, ~300 lines) could move to a file of its own next; it stays beside the
//! tables it reads for now.

use super::*;

/// The replication log of global tables: a *block* of the changes one write batch appended,
/// keyed by the sequence number of its last change, so the entry holding change `n` is the
/// first one keyed at or after `n` (one range lookup). A block is the tag [`LOG_BLOCK`], the
/// CRC-32 (`u32`, little-endian) of everything after it, the byte count before its first
/// change (`u64`, little-endian), then per change its sequence number (`u64`, little-endian;
/// consecutive, the last one equal to the key), its length (`u32`, little-endian) and the
/// encoded change. A block holds at most [`LOG_BLOCK_BYTES_MAX`] of changes (a change bigger
/// than that is a block of its own), so that it fits one page (see
/// [`APPEND_ENTRY_BYTES_MAX`]): a batch writes a few page-sized entries instead of one per
/// change (BENCHMARKS.md, Global tables), and no bigger leaf is written twice.
///
/// Entries written before blocks hold one change each, keyed by its sequence number, and are
/// still read: [`LOG_ENTRY_COUNTED`] and the byte count through the change (`u64`,
/// big-endian) before the change, or (earlier still) the change alone.
pub(crate) const REPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("replog");
/// Bytes ever appended to the replication log; the log carries the count through each change
/// (so the bytes between any two positions are a subtraction: pending bytes, the bound).
pub(super) const REPLOG_BYTES: &str = "replog_bytes";
/// A log entry of one change with its byte count starts with this byte and the byte count
/// through the entry (`u64`, big-endian), then the change. Entries written before start with
/// the change itself, whose first byte (the high byte of its table name length) is always 0.
pub(super) const LOG_ENTRY_COUNTED: u8 = 1;
/// The format tag of a block of changes (see [`REPLOG`]).
pub(super) const LOG_BLOCK: u8 = 2;
/// Tag, CRC-32 and the byte count before the first change, at the start of a block.
const LOG_BLOCK_HEADER_BYTES: usize = 1 + 4 + 8;
/// Sequence number and length before each change in a block.
const LOG_BLOCK_CHANGE_HEADER_BYTES: usize = 8 + 4;
/// Bytes of changes (each with its sequence number and length) a block holds at most: with
/// its header, one page (see [`APPEND_ENTRY_BYTES_MAX`]). A change that does not fit what is
/// left starts the next block; a change bigger than this is a block of its own.
pub const LOG_BLOCK_BYTES_MAX: usize = APPEND_ENTRY_BYTES_MAX - LOG_BLOCK_HEADER_BYTES;
/// The byte count through the last trimmed entry.
pub(super) const REPLOG_TRIMMED_BYTES: &str = "replog_trimmed_bytes";
/// Tombstones of global tables in HLC order: `(hlc, table id, stored key)`, no value. Entries
/// are not removed when a newer write replaces the tombstone; the purge skips those.
pub(super) const TOMBSTONES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tombstones");
/// Set once the tombstones of a data directory from before the index have been indexed.
pub(super) const TOMBSTONE_INDEX_VERSION: &str = "tombstone_index_version";
/// Tombstone index entries one purge job visits at most, so a purge never stalls the writer.
pub const TOMBSTONE_PURGES_PER_JOB_MAX: usize = 1_000;

pub(super) fn tombstone_entry_key(hlc: u64, table_id: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + key.len());
    out.extend_from_slice(&hlc.to_be_bytes());
    out.extend_from_slice(&table_id.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Indexes the tombstones of a data directory written before the tombstone index existed.
pub(super) fn index_tombstones(txn: &LoggedTxn, catalog: &Catalog) -> Result<(), redb::Error> {
    let mut tombstones = txn.open_table(TOMBSTONES)?;
    for table in catalog.tables.values() {
        let data = match txn.open_table(bytes_table(&data_table_name(table.id))) {
            Ok(data) => data,
            Err(TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in data.iter()? {
            let (key, value) = entry?;
            if record::is_tombstone(value.value()).unwrap_or(false) {
                let hlc = record::hlc(value.value()).unwrap_or(0);
                tombstones.insert(tombstone_entry_key(hlc, table.id, key.value()).as_slice(), &[][..])?;
            }
        }
    }
    txn.open_table(SETTINGS)?.insert(TOMBSTONE_INDEX_VERSION, 1)?;
    Ok(())
}

/// The log's head and byte count, saved once per batch rather than per change.
pub(super) fn save_log_position(txn: &LoggedTxn, log: LogPosition) -> Result<(), ApiError> {
    let mut settings = txn
        .open_table(SETTINGS)
        .map_err(|e| storage_error("opening settings", e))?;
    settings
        .insert(REPLOG_HEAD, log.head)
        .map_err(|e| storage_error("saving the log position", e))?;
    settings
        .insert(REPLOG_BYTES, log.bytes)
        .map_err(|e| storage_error("saving the log position", e))?;
    Ok(())
}

/// The log entry of one change, whose bytes through itself are `end`, as stored before blocks
/// (tests write it to check that such entries still read).
#[cfg(test)]
pub(super) fn log_entry(end: u64, change: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + change.len());
    out.push(LOG_ENTRY_COUNTED);
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(change);
    out
}

/// A log entry's byte count through itself (`None` for entries from before the count) and its
/// change.
pub(super) fn split_log_entry(entry: &[u8]) -> (Option<u64>, &[u8]) {
    match entry.first() {
        Some(&LOG_ENTRY_COUNTED) if entry.len() >= 9 => {
            let end = u64::from_be_bytes(entry[1..9].try_into().expect("8 bytes"));
            (Some(end), &entry[9..])
        }
        _ => (None, entry),
    }
}

/// One change as the log holds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct LoggedChange<'a> {
    pub seq: u64,
    /// The log's byte count through this change (`None` for entries from before the count).
    pub end: Option<u64>,
    pub change: &'a [u8],
}

/// The changes of one stored log entry keyed `key`, checked: a block against its CRC-32 and
/// its structure (consecutive sequence numbers ending at `key`, lengths inside the block), an
/// entry of one change (the formats before blocks) as it is. Damage is an error, never a panic.
pub(super) fn stored_changes(key: u64, value: &[u8]) -> Result<Vec<LoggedChange<'_>>, String> {
    if value.first() != Some(&LOG_BLOCK) {
        let (end, change) = split_log_entry(value);
        return Ok(vec![LoggedChange { seq: key, end, change }]);
    }
    let (Some(crc), Some(checked)) = (value.get(1..5), value.get(5..)) else {
        return Err(format!(
            "a block of the replication log keyed {key} ({} bytes) is shorter than its header",
            value.len()
        ));
    };
    let Some(before) = checked.get(..8) else {
        return Err(format!(
            "a block of the replication log keyed {key} ({} bytes) is shorter than its header",
            value.len()
        ));
    };
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32fast::hash(checked);
    if stored != actual {
        return Err(format!(
            "a block of the replication log keyed {key} has CRC-32 {actual:08x}, not the {stored:08x} stored with it (damaged on disk)"
        ));
    }
    let mut end = u64::from_le_bytes(before.try_into().expect("8 bytes"));
    let mut rest = &value[LOG_BLOCK_HEADER_BYTES..];
    let mut changes: Vec<LoggedChange<'_>> = Vec::new();
    while !rest.is_empty() {
        let (Some(seq), Some(len)) = (rest.get(..8), rest.get(8..LOG_BLOCK_CHANGE_HEADER_BYTES)) else {
            return Err(format!(
                "a block of the replication log keyed {key} ends inside a change's header"
            ));
        };
        let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(change) = rest.get(LOG_BLOCK_CHANGE_HEADER_BYTES..LOG_BLOCK_CHANGE_HEADER_BYTES.saturating_add(len))
        else {
            return Err(format!(
                "a change of {len} bytes runs past the end of its block of the replication log (keyed {key})"
            ));
        };
        if let Some(previous) = changes.last()
            && previous.seq.checked_add(1) != Some(seq)
        {
            return Err(format!(
                "a block of the replication log keyed {key} holds sequence number {seq} after {}",
                previous.seq
            ));
        }
        end = end
            .checked_add(len as u64)
            .ok_or_else(|| format!("a block of the replication log keyed {key} counts more bytes than a u64 holds"))?;
        changes.push(LoggedChange {
            seq,
            end: Some(end),
            change,
        });
        rest = &rest[LOG_BLOCK_CHANGE_HEADER_BYTES + len..];
    }
    match changes.last() {
        None => Err(format!("a block of the replication log keyed {key} is empty")),
        Some(last) if last.seq != key => Err(format!(
            "a block of the replication log keyed {key} ends with sequence number {}",
            last.seq
        )),
        Some(_) => Ok(changes),
    }
}

/// The changes a write batch appends to the log, stored as one block (see [`REPLOG`]) when
/// the batch ends or the block reaches [`LOG_BLOCK_BYTES_MAX`]. Dropped with the batch, so a
/// batch that fails leaves nothing behind.
#[derive(Default)]
pub(super) struct LogBlock {
    /// The block as it will be stored: room for the header, then the changes.
    value: Vec<u8>,
    /// The sequence number of its last change (its key).
    last_seq: u64,
}

impl LogBlock {
    /// Appends change `seq`, with the log's byte count before it `before`.
    fn push(&mut self, seq: u64, before: u64, change: &[u8]) {
        if self.value.is_empty() {
            self.value
                .reserve(LOG_BLOCK_HEADER_BYTES + LOG_BLOCK_CHANGE_HEADER_BYTES + change.len());
            self.value.push(LOG_BLOCK);
            self.value.extend_from_slice(&[0; 4]);
            self.value.extend_from_slice(&before.to_le_bytes());
        }
        self.value.extend_from_slice(&seq.to_le_bytes());
        // A change is an item of at most 400 KB and its key, far below 4 GiB.
        let len = u32::try_from(change.len()).unwrap_or(u32::MAX);
        self.value.extend_from_slice(&len.to_le_bytes());
        self.value.extend_from_slice(change);
        self.last_seq = seq;
    }

    /// Whether a change of `len` bytes fits what is left of the block (an empty block takes
    /// any change).
    fn fits(&self, len: usize) -> bool {
        self.value.is_empty()
            || self.value.len() + LOG_BLOCK_CHANGE_HEADER_BYTES + len <= LOG_BLOCK_HEADER_BYTES + LOG_BLOCK_BYTES_MAX
    }

    /// Whether no further change fits.
    fn is_full(&self) -> bool {
        self.value.len() + LOG_BLOCK_CHANGE_HEADER_BYTES >= LOG_BLOCK_HEADER_BYTES + LOG_BLOCK_BYTES_MAX
    }

    /// The finished block and its key, if it holds anything; the block is empty after.
    fn take(&mut self) -> Option<(u64, Vec<u8>)> {
        if self.value.is_empty() {
            return None;
        }
        let mut value = std::mem::take(&mut self.value);
        let crc = crc32fast::hash(&value[5..]);
        value[1..5].copy_from_slice(&crc.to_le_bytes());
        Some((self.last_seq, value))
    }
}

/// The changes of the log entry that holds change `seq` (the first keyed at or after it), or
/// `None` when no entry does (trimmed, or past the head).
fn entry_holding<T: ReadableTable<u64, &'static [u8]>>(
    log: &T,
    seq: u64,
) -> Result<Option<(u64, redb::AccessGuard<'_, &'static [u8]>)>, redb::Error> {
    let Some(entry) = log.range(seq..)?.next() else {
        return Ok(None);
    };
    let (key, value) = entry?;
    Ok(Some((key.value(), value)))
}

/// The first sequence number an entry holds.
fn first_seq_of(key: u64, value: &[u8]) -> Result<u64, redb::Error> {
    let changes = stored_changes(key, value).map_err(redb::Error::Corrupted)?;
    Ok(changes.first().map_or(key, |c| c.seq))
}

/// The byte count through change `seq`, if the log holds it and it is counted.
fn end_of<T: ReadableTable<u64, &'static [u8]>>(log: &T, seq: u64) -> Result<Option<u64>, redb::Error> {
    let Some((key, value)) = entry_holding(log, seq)? else {
        return Ok(None);
    };
    let changes = stored_changes(key, value.value()).map_err(redb::Error::Corrupted)?;
    Ok(changes.iter().find(|c| c.seq == seq).and_then(|c| c.end))
}

impl WriteContext<'_> {
    /// Applies a change replicated from another region by the rules of
    /// `replication::receive::apply_change` (as the backfill of the table does); returns
    /// whether it was applied.
    pub fn apply_replicated(&mut self, table: &TableMeta, key: &[u8], incoming: &[u8]) -> Result<bool, ApiError> {
        let record = record::decode(incoming)
            .map_err(|e| ApiError::validation(format!("replicated change for table {} is corrupt: {e}", table.name)))?;
        let change = ReceivedChange {
            change: replication_log::Change {
                table: table.name.clone(),
                key: key.to_vec(),
                record: incoming.to_vec(),
            },
            record,
        };
        let applied = replication::receive::apply_change(
            &mut ReplicaWriter::new(self),
            &change,
            replication::receive::Path::Repair { backfills: &[table.id] },
        )?;
        Ok(applied == replication::receive::Applied::Yes)
    }

    /// Appends a change of a global table to the replication log.
    pub(super) fn log_change(&mut self, table: &TableMeta, key: &[u8], record: &[u8]) -> Result<(), redb::Error> {
        if !table.is_global() {
            return Ok(());
        }
        let change = replication_log::encode_change(&table.name, key, record);
        if !self.log_block.fits(change.len()) {
            self.flush_log()?;
        }
        let position = self.log_position();
        let next = LogPosition {
            head: position.head + 1,
            bytes: position.bytes + change.len() as u64,
        };
        self.log_block.push(next.head, position.bytes, &change);
        self.log = Some(next);
        if self.log_block.is_full() {
            self.flush_log()?;
        }
        Ok(())
    }

    /// Stores the block of changes this batch appended, if any (before the batch commits, and
    /// before a job of the batch reads the log).
    pub(super) fn flush_log(&mut self) -> Result<(), redb::Error> {
        if let Some((key, value)) = self.log_block.take() {
            self.txn.open_table(REPLOG)?.insert(key, value.as_slice())?;
        }
        Ok(())
    }
}

/// The stored-key bounds of a digest range (keys begin with their 32-bit partition hash).
pub(super) fn range_bounds(range: DigestRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lower = Bound::Included(range.start().to_be_bytes().to_vec());
    let upper = match range.end() {
        Some(end) => Bound::Excluded(end.to_be_bytes().to_vec()),
        None => Bound::Unbounded,
    };
    (lower, upper)
}

/// A record's contribution to a range digest: SHA-256 over its key and version header.
pub(super) fn record_digest(key: &[u8], header: &[u8]) -> u128 {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update((key.len() as u32).to_be_bytes());
    hasher.update(key);
    hasher.update(header);
    let hash = hasher.finalize();
    u128::from_be_bytes(hash[..16].try_into().expect("SHA-256 has 32 bytes"))
}

/// The hash of one stored record (key and version) that range digests sum, from its stored
/// bytes; anti-entropy compares it with the peer's to push only the records that differ.
pub fn stored_record_hash(key: &[u8], value: &[u8]) -> Result<u128, String> {
    let header = record::header_bytes(value).map_err(|e| format!("decoding an item: {e}"))?;
    Ok(record_digest(key, header))
}

pub(super) fn as_slice_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Replication-log entries removed per trim job at most, so a trim never stalls the writer.
pub const LOG_TRIM_CHANGES_PER_JOB_MAX: u64 = 10_000;

pub(super) fn applied_key(source: &str) -> String {
    format!("applied_from/{source}")
}

pub(super) fn acked_key(peer: &str) -> String {
    format!("acked/{peer}")
}

/// The setting holding a table's durable purge watermark: tombstones of the table were purged
/// here below it, so a received change below it for an absent key is refused
/// (`replication::applies`). Raised in the transaction that purges.
pub(super) fn purged_below_key(table_id: u64) -> String {
    format!("purged_below/{table_id}")
}

pub(super) const AWAITING_BACKFILL_PREFIX: &str = "awaiting_backfill/";

/// The setting that records a replica this region joined (created at a peer's request) whose
/// backfill from `source` has not completed; its value is the join barrier. While any is set,
/// no tombstone is purged here: the backfill may still bring writes older than the watermark.
pub fn awaiting_backfill_key(table_id: u64, source: &str) -> String {
    format!("{AWAITING_BACKFILL_PREFIX}{table_id}/{source}")
}

/// `(table id, source region, barrier)` of an awaiting-backfill setting's key and value.
pub(super) fn parse_awaiting_backfill(key: &str, barrier: u64) -> Option<(u64, String, u64)> {
    let rest = key.strip_prefix(AWAITING_BACKFILL_PREFIX)?;
    let (id, source) = rest.split_once('/')?;
    Some((id.parse().ok()?, source.to_string(), barrier))
}

/// Every awaiting-backfill setting in `settings` (see [`awaiting_backfill_key`]).
pub(super) fn awaiting_backfills(
    settings: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<(u64, String, u64)>, redb::StorageError> {
    let mut out = Vec::new();
    // '0' is the character after '/': the range holds exactly the prefixed keys.
    for entry in settings.range(AWAITING_BACKFILL_PREFIX..AWAITING_BACKFILL_PREFIX.replace('/', "0").as_str())? {
        let (key, value) = entry?;
        if value.value() != 0
            && let Some(parsed) = parse_awaiting_backfill(key.value(), value.value())
        {
            out.push(parsed);
        }
    }
    Ok(out)
}

impl Engine {
    /// Watches the replication log's head (the sequence number of its last change).
    pub fn subscribe_log(&self) -> watch::Receiver<u64> {
        self.shared.replog_head.subscribe()
    }

    pub fn log_head(&self) -> u64 {
        *self.shared.replog_head.borrow()
    }

    pub(super) fn setting(&self, name: &str) -> u64 {
        let read = || -> Result<u64, Box<dyn std::error::Error>> {
            let txn = self.shared.db()?.begin_read()?;
            let settings = txn.open_table(SETTINGS)?;
            Ok(settings.get(name)?.map(|v| v.value()).unwrap_or(0))
        };
        read().unwrap_or(0)
    }

    /// A durable setting's value (0 when absent).
    pub fn setting_value(&self, name: &str) -> u64 {
        self.setting(name)
    }

    /// The position `peer` last acknowledged, as recorded durably.
    pub fn acked(&self, peer: &str) -> u64 {
        self.setting(&acked_key(peer))
    }

    /// The position this region applied `source`'s log through, as recorded durably.
    pub fn applied_from(&self, source: &str) -> u64 {
        self.setting(&applied_key(source))
    }

    /// This region's watermark mark: its HLC (every later own write is newer) and its log head
    /// (every own write at or below that HLC is at or before it), taken together in the writer.
    pub async fn take_mark(&self) -> Result<(u64, u64), ApiError> {
        self.write(|context| {
            let clock = context.shared.hlc.tick(context.shared.clock.now_unix_ms());
            Ok((clock, context.log_position().head))
        })
        .await
    }

    /// Removes tombstones with an HLC below `below` (at most [`TOMBSTONE_PURGES_PER_JOB_MAX`]
    /// index entries per call); returns `(entries visited, tombstones removed)`.
    pub async fn purge_tombstones(&self, below: u64) -> Result<(usize, usize), ApiError> {
        self.write(move |context| {
            replication::receive::purge_tombstones(
                &mut ReplicaWriter::new(context),
                below,
                TOMBSTONE_PURGES_PER_JOB_MAX,
            )
        })
        .await
    }

    /// Tombstones waiting in the purge index (including entries a newer write made stale).
    pub fn tombstone_entries(&self) -> u64 {
        let read = || -> Result<u64, Box<dyn std::error::Error>> {
            let txn = self.shared.db()?.begin_read()?;
            let index = match txn.open_table(TOMBSTONES) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            Ok(redb::ReadableTableMetadata::len(&index)?)
        };
        read().unwrap_or(0)
    }

    /// Replicas this region joined whose backfill has not completed: `(table id, source
    /// region, barrier)`. Purging waits for them.
    pub fn awaiting_backfills(&self) -> Vec<(u64, String, u64)> {
        let read = || -> Result<Vec<(u64, String, u64)>, Box<dyn std::error::Error>> {
            let txn = self.shared.db()?.begin_read()?;
            let settings = match txn.open_table(SETTINGS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            Ok(awaiting_backfills(&settings)?)
        };
        read().unwrap_or_default()
    }

    /// A table's durable purge watermark (0: nothing purged), for status and tests.
    pub fn table_purged_below(&self, table_id: u64) -> u64 {
        self.setting(&purged_below_key(table_id))
    }

    /// Bounds how far ahead of the wall clock local stamps may run (`clock_offset_max_ms`).
    pub fn set_clock_offset_max_ms(&self, max_ahead_ms: u64) {
        self.shared
            .hlc
            .max_ahead_ms
            .store(max_ahead_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves this region's clock up to `stamp` (within the bound ahead of the wall clock) and
    /// says whether it has passed it: every later local write is then newer than `stamp`.
    pub fn advance_clock_past(&self, stamp: u64) -> bool {
        self.shared.hlc.observe(stamp, self.shared.clock.now_unix_ms());
        self.shared.hlc.last() >= stamp
    }

    /// This region's clock (the last HLC stamp issued or followed).
    pub fn clock_last(&self) -> u64 {
        self.shared.hlc.last()
    }

    /// Peer timestamps the clock bound kept this region's clock from following, since startup.
    pub fn clock_capped_total(&self) -> u64 {
        self.shared.hlc.capped_total()
    }

    /// Records the tombstone purge watermark (see [`Shared::purge_below`]).
    pub fn set_purge_below(&self, below: u64) {
        self.shared
            .purge_below
            .fetch_max(below, std::sync::atomic::Ordering::SeqCst);
    }

    /// The HLC of the oldest entry in the tombstone index, if any (a read, so an idle purge
    /// round costs no write).
    pub fn oldest_tombstone_hlc(&self) -> Option<u64> {
        let read = || -> Result<Option<u64>, Box<dyn std::error::Error>> {
            let txn = self.shared.db()?.begin_read()?;
            let index = match txn.open_table(TOMBSTONES) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(index.first()?.and_then(|(key, _)| {
                key.value()
                    .get(..8)
                    .map(|hlc| u64::from_be_bytes(hlc.try_into().expect("8 bytes")))
            }))
        };
        read().unwrap_or(None)
    }

    /// Records that `peer` holds every change through `seq`.
    pub async fn save_acked(&self, peer: &str, seq: u64) -> Result<(), ApiError> {
        let key = acked_key(peer);
        self.write(move |context| context.set_setting(&key, seq)).await
    }

    /// Drops the log's changes through `through` (at most [`LOG_TRIM_CHANGES_PER_JOB_MAX`] per
    /// call), in whole blocks: a block that also holds a later change stays until a later call
    /// can drop it whole, so no change after `through` is ever dropped. Returns the first
    /// sequence number still in the log.
    pub async fn trim_log(&self, through: u64) -> Result<u64, ApiError> {
        self.write(move |context| {
            let result = (|| -> Result<u64, redb::Error> {
                context.flush_log()?;
                let mut log = context.txn.open_table(REPLOG)?;
                let first = match log.first()? {
                    Some((key, value)) => first_seq_of(key.value(), value.value())?,
                    None => return Ok(through + 1),
                };
                let end = through.min(first.saturating_add(LOG_TRIM_CHANGES_PER_JOB_MAX - 1));
                if end < first {
                    return Ok(first);
                }
                // Whole entries only: those keyed at or below `end` hold nothing after it (an
                // entry is keyed by its last change). A block `end` falls inside stays whole.
                let last_trimmed = match log.range(..=end)?.next_back() {
                    Some(entry) => {
                        let (key, value) = entry?;
                        let changes = stored_changes(key.value(), value.value()).map_err(redb::Error::Corrupted)?;
                        Some((key.value(), changes.last().and_then(|c| c.end)))
                    }
                    None => None,
                };
                let Some((last_key, trimmed)) = last_trimmed else {
                    return Ok(first);
                };
                log.retain_in(..=last_key, |_, _| false)?;
                if let Some(trimmed) = trimmed {
                    context
                        .txn
                        .open_table(SETTINGS)?
                        .insert(REPLOG_TRIMMED_BYTES, trimmed)?;
                }
                Ok(last_key + 1)
            })();
            result.map_err(|e| context.fail("trimming the replication log", e))
        })
        .await
    }
}

impl WriteContext<'_> {
    /// The committed table named `name`, if any.
    pub fn table_named(&self, name: &str) -> Option<Arc<TableMeta>> {
        self.shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned")
            .tables
            .get(name)
            .cloned()
    }

    pub fn setting(&self, name: &str) -> Result<u64, ApiError> {
        let settings = self
            .txn
            .open_table(SETTINGS)
            .map_err(|e| storage_error("opening settings", e))?;
        let value = settings.get(name).map_err(|e| storage_error("reading settings", e))?;
        Ok(value.map(|v| v.value()).unwrap_or(0))
    }

    pub fn set_setting(&mut self, name: &str, value: u64) -> Result<(), ApiError> {
        self.mutations += 1;
        let result = self
            .txn
            .open_table(SETTINGS)
            .and_then(|mut s| s.insert(name, value).map(|_| ()).map_err(Into::into));
        result.map_err(|e| self.fail("writing settings", e))
    }

    /// A fresh timestamp of this region's hybrid logical clock.
    pub fn tick_clock(&self) -> u64 {
        self.shared.hlc.tick(self.shared.clock.now_unix_ms())
    }

    /// The log's head and byte count including this batch's appends so far.
    pub(crate) fn log_position(&self) -> LogPosition {
        self.log.unwrap_or_else(|| LogPosition {
            head: *self.shared.replog_head.borrow(),
            bytes: self.shared.replog_bytes.load(std::sync::atomic::Ordering::SeqCst),
        })
    }

    /// The highest sequence number from `source` applied here.
    pub fn applied_from(&self, source: &str) -> Result<u64, ApiError> {
        self.setting(&applied_key(source))
    }

    pub fn set_applied_from(&mut self, source: &str, seq: u64) -> Result<(), ApiError> {
        self.set_setting(&applied_key(source), seq)
    }
}

impl Snapshot {
    /// Up to `changes_max` log entries from `from_seq` on, stopping after `bytes_max` bytes
    /// (at least one entry is returned if any exists).
    pub fn read_log(
        &self,
        from_seq: u64,
        changes_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, ApiError> {
        let log = match self.txn.open_table(REPLOG) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage_error("opening the replication log", e)),
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        // An entry is keyed by its last change: the first keyed at or after `from_seq` holds it.
        'entries: for entry in log
            .range(from_seq..)
            .map_err(|e| storage_error("reading the replication log", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading the replication log", e))?;
            let changes = stored_changes(key.value(), value.value())
                .map_err(|e| storage_error("reading the replication log", e))?;
            for logged in changes.into_iter().filter(|c| c.seq >= from_seq) {
                bytes += logged.change.len();
                out.push((logged.seq, logged.change.to_vec()));
                if out.len() >= changes_max || bytes >= bytes_max {
                    break 'entries;
                }
            }
        }
        Ok(out)
    }

    /// Bytes of log entries after `seq` (what a peer that acknowledged `seq` still needs).
    /// Entries written before byte counts existed count as 0.
    pub fn log_bytes_after(&self, seq: u64) -> Result<u64, ApiError> {
        let (total, trimmed) = self.log_byte_settings()?;
        let through = match seq {
            0 => 0,
            _ => self.log_end(seq)?.unwrap_or(trimmed),
        };
        Ok(total.saturating_sub(through))
    }

    pub(super) fn log_byte_settings(&self) -> Result<(u64, u64), ApiError> {
        let settings = match self.txn.open_table(SETTINGS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
            Err(e) => return Err(storage_error("opening settings", e)),
        };
        let setting = |name: &str| -> Result<u64, ApiError> {
            Ok(settings
                .get(name)
                .map_err(|e| storage_error("reading settings", e))?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok((setting(REPLOG_BYTES)?, setting(REPLOG_TRIMMED_BYTES)?))
    }

    /// The byte count through log entry `seq`, if it is in the log and counted.
    pub(super) fn log_end(&self, seq: u64) -> Result<Option<u64>, ApiError> {
        let log = match self.txn.open_table(REPLOG) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage_error("opening the replication log", e)),
        };
        end_of(&log, seq).map_err(|e| storage_error("reading the replication log", e))
    }

    /// The lowest position to trim through so that at most `bytes_max` bytes of log remain
    /// (0 when the log is within the bound already).
    pub fn trim_point_for_bytes(&self, bytes_max: u64) -> Result<u64, ApiError> {
        let (total, trimmed) = self.log_byte_settings()?;
        if total.saturating_sub(trimmed) <= bytes_max {
            return Ok(0);
        }
        let keep_from_bytes = total - bytes_max;
        let log = match self.txn.open_table(REPLOG) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(storage_error("opening the replication log", e)),
        };
        let first = match log.first().map_err(|e| storage_error("reading the log", e))? {
            Some((key, value)) => {
                first_seq_of(key.value(), value.value()).map_err(|e| storage_error("reading the log", e))?
            }
            None => return Ok(0),
        };
        let Some(last) = log.last().map_err(|e| storage_error("reading the log", e))? else {
            return Ok(0);
        };
        let (mut low, mut high) = (first, last.0.value());
        drop(last);
        // The first change whose count reaches `keep_from_bytes`: trim through it. Counts grow
        // with the sequence number; an uncounted (older) entry counts as not reaching it.
        while low < high {
            let middle = low + (high - low) / 2;
            let end = end_of(&log, middle)
                .map_err(|e| storage_error("reading the log", e))?
                .unwrap_or(0);
            if end >= keep_from_bytes {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        // The trim drops whole blocks: through the end of the block holding that change, so
        // the log keeps at most the bound (the rest of the block goes too: past the bound the
        // log is trimmed regardless, and anti-entropy repairs a peer that missed it).
        let block_end = log
            .range(low..)
            .map_err(|e| storage_error("reading the log", e))?
            .next()
            .transpose()
            .map_err(|e| storage_error("reading the log", e))?
            .map(|(key, _)| key.value());
        Ok(block_end.unwrap_or(low))
    }

    /// The first sequence number still in the log (`head + 1` when it is empty).
    pub fn log_first(&self, head: u64) -> Result<u64, ApiError> {
        let log = match self.txn.open_table(REPLOG) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(head + 1),
            Err(e) => return Err(storage_error("opening the replication log", e)),
        };
        let first = log
            .first()
            .map_err(|e| storage_error("reading the replication log", e))?;
        match first {
            Some((key, value)) => {
                first_seq_of(key.value(), value.value()).map_err(|e| storage_error("reading the replication log", e))
            }
            None => Ok(head + 1),
        }
    }

    /// Per range, the key and record hash (the one [`Snapshot::digests`] sums) of each stored
    /// record — `None` for a range holding more than `per_range_max` records, or once the
    /// answer holds `total_max` of them: the peer then pushes that range whole.
    pub fn record_hashes(
        &self,
        table: &TableMeta,
        ranges: &[DigestRange],
        per_range_max: usize,
        total_max: usize,
    ) -> Result<Vec<Option<Vec<(Vec<u8>, u128)>>>, ApiError> {
        let name = data_table_name(table.id);
        let data = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(vec![Some(Vec::new()); ranges.len()]),
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        let mut out = Vec::with_capacity(ranges.len());
        let mut total = 0;
        for range in ranges {
            let (lower, upper) = range_bounds(*range);
            let mut hashes = Vec::new();
            let mut whole = true;
            for entry in data
                .range::<&[u8]>((as_slice_bound(&lower), as_slice_bound(&upper)))
                .map_err(|e| storage_error("reading a table", e))?
            {
                if hashes.len() >= per_range_max || total + hashes.len() >= total_max {
                    whole = false;
                    break;
                }
                let (key, value) = entry.map_err(|e| storage_error("reading a table", e))?;
                let header = record::header_bytes(value.value()).map_err(|e| storage_error("decoding an item", e))?;
                hashes.push((key.value().to_vec(), record_digest(key.value(), header)));
            }
            if whole {
                total += hashes.len();
                out.push(Some(hashes));
            } else {
                out.push(None);
            }
        }
        Ok(out)
    }

    /// Up to `limit` stored records of a table inside `range`, after `after`.
    pub fn records_in(
        &self,
        table: &TableMeta,
        range: DigestRange,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ApiError> {
        let name = data_table_name(table.id);
        let data = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        let (lower, upper) = range_bounds(range);
        let lower = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => lower,
        };
        let mut out = Vec::new();
        for entry in data
            .range::<&[u8]>((as_slice_bound(&lower), as_slice_bound(&upper)))
            .map_err(|e| storage_error("reading a table", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("reading a table", e))?;
            out.push((key.value().to_vec(), value.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// A change received from a peer (a batch or a repair), decoded and checked before its job
/// starts: the wire form and its decoded record.
#[derive(Clone, Debug)]
pub struct ReceivedChange {
    pub change: replication_log::Change,
    pub record: Record,
}

impl replication::receive::Received for ReceivedChange {
    fn table(&self) -> &str {
        &self.change.table
    }

    fn key(&self) -> &[u8] {
        &self.change.key
    }

    fn version(&self) -> Version {
        Version::new(Hlc(self.record.hlc), self.record.origin.clone())
    }

    fn is_tombstone(&self) -> bool {
        self.record.tombstone
    }
}

/// The store's side of `replication::receive`: its rules read and write through this, inside
/// one write job's transaction.
pub struct ReplicaWriter<'c, 't> {
    context: &'c mut WriteContext<'t>,
    /// The record last read by `stored_version`, which `store` needs again (the old item).
    read: Option<(u64, Vec<u8>, Option<Vec<u8>>)>,
}

impl<'c, 't> ReplicaWriter<'c, 't> {
    pub fn new(context: &'c mut WriteContext<'t>) -> ReplicaWriter<'c, 't> {
        ReplicaWriter { context, read: None }
    }

    pub fn context(&mut self) -> &mut WriteContext<'t> {
        self.read = None;
        self.context
    }

    fn record_bytes(&mut self, table_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        if let Some((id, read_key, bytes)) = &self.read
            && *id == table_id
            && read_key == key
        {
            return Ok(bytes.clone());
        }
        let name = data_table_name(table_id);
        let data = self
            .context
            .txn
            .open_table(bytes_table(&name))
            .map_err(|e| storage_error("opening a table", e))?;
        let bytes = data
            .get(key)
            .map_err(|e| storage_error("reading an item", e))?
            .map(|b| b.value().to_vec());
        self.read = Some((table_id, key.to_vec(), bytes.clone()));
        Ok(bytes)
    }
}

impl replication::receive::ReplicaStorage for ReplicaWriter<'_, '_> {
    type Error = ApiError;
    type Change = ReceivedChange;

    fn replica(&mut self, table: &str) -> Result<Option<replication::receive::Replica>, ApiError> {
        Ok(self
            .context
            .table_named(table)
            .map(|meta| replication::receive::Replica {
                id: meta.id,
                joined_below: meta.joined_below,
            }))
    }

    fn stored_version(
        &mut self,
        replica: &replication::receive::Replica,
        key: &[u8],
    ) -> Result<Option<Version>, ApiError> {
        // Versions compare on the header alone: a change that loses (a relayed duplicate, the
        // common case) costs no item decoding. A stored record that does not decode is a
        // storage fault: the whole job fails, so a batch never applies in part.
        match self.record_bytes(replica.id, key)? {
            Some(bytes) => {
                let (hlc, origin) = record::version(&bytes).map_err(|e| self.context.fail("decoding an item", e))?;
                Ok(Some(Version::new(Hlc(hlc), origin)))
            }
            None => Ok(None),
        }
    }

    fn purged_below(&mut self, table_id: u64) -> Result<u64, ApiError> {
        self.context.setting(&purged_below_key(table_id))
    }

    fn set_purged_below(&mut self, table_id: u64, below: u64) -> Result<(), ApiError> {
        self.context.set_setting(&purged_below_key(table_id), below)
    }

    fn purge_horizon(&self) -> u64 {
        self.context
            .shared
            .purge_below
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn store(&mut self, replica: &replication::receive::Replica, change: &ReceivedChange) -> Result<(), ApiError> {
        let table = self
            .context
            .table_named(&change.change.table)
            .filter(|t| t.id == replica.id)
            .ok_or_else(|| ApiError::internal(format!("table {} changed during a job", change.change.table)))?;
        if !change.record.tombstone {
            // Replicated tombstones still apply below the disk watermark; new items wait.
            self.context.check_room()?;
        }
        let existing = self.record_bytes(replica.id, &change.change.key)?;
        self.read = None;
        let old = match &existing {
            Some(bytes) => {
                let record = record::decode(bytes).map_err(|e| self.context.fail("decoding an item", e))?;
                (!record.tombstone).then_some(record.item)
            }
            None => None,
        };
        let context = &mut *self.context;
        context
            .shared
            .hlc
            .observe(change.record.hlc, context.shared.clock.now_unix_ms());
        let new = (!change.record.tombstone).then_some(&change.record.item);
        let key = &change.change.key;
        let result = context
            .store(&table, key, old.as_ref(), new, Some(&change.change.record))
            .and_then(|()| context.log_change(&table, key, &change.change.record));
        result.map_err(|e| context.fail("applying a replicated change", e))
    }

    fn store_absent(
        &mut self,
        replica: &replication::receive::Replica,
        changes: &[&ReceivedChange],
    ) -> Result<(), ApiError> {
        let Some(first) = changes.first() else {
            return Ok(());
        };
        let table = self
            .context
            .table_named(&first.change.table)
            .filter(|t| t.id == replica.id)
            .ok_or_else(|| ApiError::internal(format!("table {} changed during a job", first.change.table)))?;
        self.context.check_room()?;
        self.read = None;
        let context = &mut *self.context;
        let now = context.shared.clock.now_unix_ms();
        for change in changes {
            context.shared.hlc.observe(change.record.hlc, now);
        }
        let entries: Vec<(&[u8], &Item, &[u8])> = changes
            .iter()
            .map(|c| (c.change.key.as_slice(), &c.record.item, c.change.record.as_slice()))
            .collect();
        context.store_absent_records(&table, &entries)
    }

    fn applied_from(&mut self, source: &str) -> Result<u64, ApiError> {
        self.context.applied_from(source)
    }

    fn set_applied_from(&mut self, source: &str, seq: u64) -> Result<(), ApiError> {
        self.context.set_applied_from(source, seq)
    }

    fn awaited_backfills(&mut self) -> Result<Vec<replication::receive::Awaited>, ApiError> {
        let settings = self
            .context
            .txn
            .open_table(SETTINGS)
            .map_err(|e| storage_error("opening settings", e))?;
        let waiting = awaiting_backfills(&*settings).map_err(|e| storage_error("reading settings", e))?;
        Ok(waiting
            .into_iter()
            .map(|(table_id, source, barrier)| replication::receive::Awaited {
                table_id,
                source,
                barrier,
            })
            .collect())
    }

    fn set_awaited_backfill(&mut self, table_id: u64, source: &str, barrier: u64) -> Result<(), ApiError> {
        let key = awaiting_backfill_key(table_id, source);
        if barrier != 0 {
            return self.context.set_setting(&key, barrier);
        }
        self.context.mutations += 1;
        let result = self
            .context
            .txn
            .open_table(SETTINGS)
            .and_then(|mut s| s.remove(key.as_str()).map(|_| ()).map_err(Into::into));
        result.map_err(|e| self.context.fail("ending a backfill wait", e))
    }

    fn definition_received(&mut self, source: &str) -> Result<u64, ApiError> {
        self.context.setting(&definition_received_key(source))
    }

    fn set_definition_received(&mut self, source: &str, sequence: u64) -> Result<(), ApiError> {
        self.context.set_setting(&definition_received_key(source), sequence)
    }
}

impl replication::receive::PurgeStorage for ReplicaWriter<'_, '_> {
    fn table_exists(&mut self, table_id: u64) -> Result<bool, ApiError> {
        Ok(self
            .context
            .shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned")
            .tables
            .values()
            .any(|t| t.id == table_id))
    }

    fn tombstones_below(
        &mut self,
        below: u64,
        limit: usize,
    ) -> Result<Vec<replication::receive::DueTombstone>, ApiError> {
        let index = self
            .context
            .txn
            .open_table(TOMBSTONES)
            .map_err(|e| storage_error("opening the tombstone index", e))?;
        let upper = below.to_be_bytes();
        let mut due = Vec::new();
        for entry in index
            .range::<&[u8]>(..upper.as_slice())
            .map_err(|e| storage_error("reading the tombstone index", e))?
        {
            let entry = entry.map_err(|e| storage_error("reading the tombstone index", e))?;
            let entry = entry.0.value();
            let (Some(hlc), Some(id)) = (entry.get(..8), entry.get(8..16)) else {
                continue;
            };
            due.push(replication::receive::DueTombstone {
                hlc: u64::from_be_bytes(hlc.try_into().expect("8 bytes")),
                table_id: u64::from_be_bytes(id.try_into().expect("8 bytes")),
                key: entry[16..].to_vec(),
            });
            if due.len() >= limit {
                break;
            }
        }
        Ok(due)
    }

    fn remove_tombstone(&mut self, due: &replication::receive::DueTombstone) -> Result<bool, ApiError> {
        self.read = None;
        let exists = self.table_exists(due.table_id)?;
        let context = &mut *self.context;
        context.mutations += 1;
        let result = (|| -> Result<bool, redb::Error> {
            context
                .txn
                .open_table(TOMBSTONES)?
                .remove(tombstone_entry_key(due.hlc, due.table_id, &due.key).as_slice())?;
            if !exists {
                return Ok(false);
            }
            let mut data = context.txn.open_table(bytes_table(&data_table_name(due.table_id)))?;
            let current = data.get(due.key.as_slice())?.map(|v| v.value().to_vec());
            let still = current.as_ref().is_some_and(|current| {
                record::is_tombstone(current).unwrap_or(false) && record::hlc(current).ok() == Some(due.hlc)
            });
            if still {
                data.remove(due.key.as_slice())?;
                drop(data);
                context.note_record(due.table_id, &due.key, current.as_deref(), None)?;
            }
            Ok(still)
        })();
        result.map_err(|e| context.fail("purging tombstones", e))
    }
}

/// The receiver's durable record of the highest replica-definition sequence from `source`.
fn definition_received_key(source: &str) -> String {
    format!("definition_received/{source}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block `changes` (sequence number, change) make, the log holding `before` bytes
    /// before them.
    fn block_of(before: u64, changes: &[(u64, &[u8])]) -> (u64, Vec<u8>) {
        let mut block = LogBlock::default();
        let mut bytes = before;
        for (seq, change) in changes {
            block.push(*seq, bytes, change);
            bytes += change.len() as u64;
        }
        block.take().expect("a block holding changes")
    }

    /// A block with `body` as its changes, sealed with the right CRC-32.
    fn sealed(before: u64, body: &[u8]) -> Vec<u8> {
        let mut value = vec![LOG_BLOCK, 0, 0, 0, 0];
        value.extend_from_slice(&before.to_le_bytes());
        value.extend_from_slice(body);
        let crc = crc32fast::hash(&value[5..]);
        value[1..5].copy_from_slice(&crc.to_le_bytes());
        value
    }

    #[test]
    fn a_block_holds_a_batchs_changes_with_their_byte_counts() {
        let (key, value) = block_of(100, &[(5, b"abc"), (6, b""), (7, b"defgh")]);
        assert_eq!(key, 7, "a block is keyed by its last change");
        assert_eq!(
            stored_changes(key, &value),
            Ok(vec![
                LoggedChange {
                    seq: 5,
                    end: Some(103),
                    change: b"abc"
                },
                LoggedChange {
                    seq: 6,
                    end: Some(103),
                    change: b""
                },
                LoggedChange {
                    seq: 7,
                    end: Some(108),
                    change: b"defgh"
                },
            ])
        );
        let mut block = LogBlock::default();
        assert!(block.take().is_none(), "an empty batch stores nothing");
        // A change counts with its sequence number and length.
        assert!(block.fits(10 * LOG_BLOCK_BYTES_MAX), "an empty block takes any change");
        let almost = LOG_BLOCK_BYTES_MAX - 2 * LOG_BLOCK_CHANGE_HEADER_BYTES - 1;
        block.push(1, 0, &vec![0; almost]);
        assert!(!block.is_full());
        assert!(block.fits(1), "one byte of change is left");
        assert!(!block.fits(2), "two bytes are not");
        block.push(2, almost as u64, b"x");
        assert!(block.is_full(), "full once no change fits");
        let (key, value) = block.take().expect("block");
        assert_eq!(key, 2);
        assert_eq!(
            value.len(),
            APPEND_ENTRY_BYTES_MAX,
            "a full block is one page's entry exactly"
        );
        assert_eq!(stored_changes(key, &value).expect("block").len(), 2);
        assert!(block.take().is_none(), "taking a block leaves an empty one");
        // A change bigger than a block is a block of its own.
        block.push(3, 0, &vec![0; 2 * LOG_BLOCK_BYTES_MAX]);
        assert!(block.is_full());
    }

    #[test]
    fn entries_of_one_change_from_before_blocks_still_read() {
        let change = replication_log::encode_change("carts", b"k", b"record");
        let counted = log_entry(4_242, &change);
        assert_eq!(
            stored_changes(9, &counted),
            Ok(vec![LoggedChange {
                seq: 9,
                end: Some(4_242),
                change: &change
            }])
        );
        assert_eq!(
            stored_changes(3, &change),
            Ok(vec![LoggedChange {
                seq: 3,
                end: None,
                change: &change
            }]),
            "a bare change, from before byte counts"
        );
    }

    #[test]
    fn a_damaged_block_is_an_error_naming_the_damage() {
        let (key, value) = block_of(0, &[(5, b"abc"), (6, b"def")]);
        let mut flipped = value.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(stored_changes(key, &flipped).expect_err("crc").contains("CRC-32"));
        assert!(stored_changes(7, &value).expect_err("key").contains("ends with"));
        let mut gap = Vec::new();
        for seq in [5u64, 7] {
            gap.extend_from_slice(&seq.to_le_bytes());
            gap.extend_from_slice(&1u32.to_le_bytes());
            gap.push(b'x');
        }
        assert!(
            stored_changes(7, &sealed(0, &gap))
                .expect_err("gap")
                .contains("after 5")
        );
        let mut long = 9u64.to_le_bytes().to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        long.extend_from_slice(b"xy");
        assert!(
            stored_changes(9, &sealed(0, &long))
                .expect_err("length")
                .contains("past the end")
        );
        let cut = sealed(0, &9u64.to_le_bytes());
        assert!(stored_changes(9, &cut).expect_err("cut").contains("header"));
        assert!(stored_changes(9, &sealed(0, &[])).expect_err("empty").contains("empty"));
        let mut counted_past_u64 = 9u64.to_le_bytes().to_vec();
        counted_past_u64.extend_from_slice(&2u32.to_le_bytes());
        counted_past_u64.extend_from_slice(b"xy");
        assert!(
            stored_changes(9, &sealed(u64::MAX - 1, &counted_past_u64))
                .expect_err("overflow")
                .contains("u64")
        );
        for cut in 1..LOG_BLOCK_HEADER_BYTES {
            assert!(stored_changes(key, &value[..cut]).is_err(), "header cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_stored_bytes_read_as_changes_or_an_error(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            tag in 0u8..4,
            key in 0u64..4,
            seal in proptest::prelude::any::<bool>(),
        ) {
            let mut value = value;
            if let Some(first) = value.first_mut() {
                *first = tag;
            }
            if seal && tag == LOG_BLOCK && value.len() >= 5 {
                let crc = crc32fast::hash(&value[5..]);
                value[1..5].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(changes) = stored_changes(key, &value) {
                proptest::prop_assert!(!changes.is_empty());
                proptest::prop_assert_eq!(changes.last().map(|c| c.seq), Some(key));
            }
        }
    }
}
