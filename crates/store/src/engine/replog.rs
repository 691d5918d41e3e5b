//! The replication log of global tables, the tombstone index and its purge, the durable
//! replication positions and join state, and range digests for anti-entropy: the storage side
//! of `crate::global`, whose rules live in `replication::receive`.
//!
//! Invariants:
//! - a change of a global table is appended to the log in the transaction that stores it, so
//!   the log holds exactly what this region applied, in commit order;
//! - a tombstone is indexed in the transaction that writes it; a purge removes it only while it
//!   is still the key's record, and raises the table's purged watermark in the same
//!   transaction;
//! - applied positions, acknowledged positions, definition sequences and backfill waits are
//!   settings written in the transaction of the change they describe.
//!
//! About 900 lines: `ReplicaWriter` (the `replication::receive` storage traits, ~300 lines)
//! could move to a file of its own next; it stays beside the tables it reads for now.

use super::*;

/// The replication log of global tables: sequence number → encoded change.
pub(crate) const REPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("replog");
/// Bytes ever appended to the replication log; each entry carries the same count through
/// itself (so the bytes between any two positions are a subtraction: pending bytes, the bound).
pub(super) const REPLOG_BYTES: &str = "replog_bytes";
/// A log entry in this format starts with this byte and the byte count through the entry
/// (`u64`, big-endian), then the change. Entries written before start with the change itself,
/// whose first byte (the high byte of its table name length) is always 0.
pub(super) const LOG_ENTRY_COUNTED: u8 = 1;
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
pub(super) fn index_tombstones(txn: &WriteTransaction, catalog: &Catalog) -> Result<(), redb::Error> {
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
pub(super) fn save_log_position(txn: &WriteTransaction, log: LogPosition) -> Result<(), ApiError> {
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

/// The encoded log entry for `change`, whose bytes through itself are `end`.
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
        let position = self.log_position();
        let next = LogPosition {
            head: position.head + 1,
            bytes: position.bytes + change.len() as u64,
        };
        let mut log = self.txn.open_table(REPLOG)?;
        log.insert(next.head, log_entry(next.bytes, &change).as_slice())?;
        self.log = Some(next);
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

    /// Drops log entries through `through` (at most [`LOG_TRIM_CHANGES_PER_JOB_MAX`] per call);
    /// returns the first sequence number still in the log.
    pub async fn trim_log(&self, through: u64) -> Result<u64, ApiError> {
        self.write(move |context| {
            let result = (|| -> Result<u64, redb::Error> {
                let mut log = context.txn.open_table(REPLOG)?;
                let first = log.first()?.map(|(k, _)| k.value());
                let Some(first) = first else { return Ok(through + 1) };
                let end = through.min(first + LOG_TRIM_CHANGES_PER_JOB_MAX - 1);
                if end < first {
                    return Ok(first);
                }
                let trimmed = log.get(end)?.and_then(|v| split_log_entry(v.value()).0);
                log.retain_in(first..=end, |_, _| false)?;
                if let Some(trimmed) = trimmed {
                    context
                        .txn
                        .open_table(SETTINGS)?
                        .insert(REPLOG_TRIMMED_BYTES, trimmed)?;
                }
                Ok(end + 1)
            })();
            result.map_err(|e| context.fail("trimming the replication log", e))
        })
        .await
    }
}

impl WriteContext<'_> {
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
        for entry in log
            .range(from_seq..)
            .map_err(|e| storage_error("reading the replication log", e))?
        {
            let (seq, value) = entry.map_err(|e| storage_error("reading the replication log", e))?;
            let change = split_log_entry(value.value()).1;
            bytes += change.len();
            out.push((seq.value(), change.to_vec()));
            if out.len() >= changes_max || bytes >= bytes_max {
                break;
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
        let entry = log
            .get(seq)
            .map_err(|e| storage_error("reading the replication log", e))?;
        Ok(entry.and_then(|v| split_log_entry(v.value()).0))
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
        let bounds = (
            log.first().map_err(|e| storage_error("reading the log", e))?,
            log.last().map_err(|e| storage_error("reading the log", e))?,
        );
        let (Some(first), Some(last)) = bounds else {
            return Ok(0);
        };
        let (mut low, mut high) = (first.0.value(), last.0.value());
        drop((first, last));
        // The first entry whose count reaches `keep_from_bytes`: trim through it. Counts grow
        // with the sequence number; an uncounted (older) entry counts as not reaching it.
        while low < high {
            let middle = low + (high - low) / 2;
            let end = log
                .get(middle)
                .map_err(|e| storage_error("reading the log", e))?
                .and_then(|v| split_log_entry(v.value()).0)
                .unwrap_or(0);
            if end >= keep_from_bytes {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
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
        Ok(first.map(|(k, _)| k.value()).unwrap_or(head + 1))
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
        let waiting = awaiting_backfills(&settings).map_err(|e| storage_error("reading settings", e))?;
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
