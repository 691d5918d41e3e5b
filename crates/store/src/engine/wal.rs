//! The write-ahead log (`store.wal`, beside `store.redb`): how a batch becomes durable with one
//! sequential append and one `fdatasync`, instead of redb's copy-on-write pages.
//!
//! A durable redb commit writes every page the batch touched, at its place in the file, and
//! syncs them: about 11 KB for a ~130-byte PutItem (BENCHMARKS, "Streams"), and a stream's
//! pages on top. Instead each batch's changes are recorded as they are made — (table, key,
//! value) for every insert, the key of every remove, each table opened or deleted — appended to
//! this log as one checksummed record and synced, and only then committed to redb with
//! `Durability::None` (visible to readers at once, written to the file by the kernel later). A
//! *checkpoint* (`recovery::commit_checkpoint`: a durable commit with redb's quick repair) then
//! makes everything before it durable in redb itself, after which the log starts again.
//!
//! Invariants:
//! - every change of a logged batch goes through [`LoggedTxn`] (the writer never holds redb's
//!   transaction itself), so the record holds all of it; the one exception,
//!   [`LoggedTxn::unlogged`], moves stream records into redb that earlier records since the
//!   last checkpoint hold already (`LoggedTxn::log_insert`, `streams::RecordOverlay`);
//! - a batch is visible (committed to redb) only after its record is durable, so no reader ever
//!   sees a write a crash could take back;
//! - each logged batch stores its sequence number in the settings table ([`WAL_APPLIED`]) in the
//!   same transaction, so redb's durable state says which records it already holds: an open
//!   replays exactly the records after it, in order, and replay is idempotent (each change
//!   sets a key to a value or removes it);
//! - records are numbered without gaps, so a stale record from an earlier pass (lower number)
//!   ends a scan like a torn one;
//! - a damaged record followed by the next expected one, or a log whose first new record does
//!   not follow the store's, refuses the open (acknowledged writes would be lost silently):
//!   nothing is changed and the error says what to do;
//! - every durable commit the writer makes is a quick-repair one, so an open after kill -9
//!   never walks the file: it loads the last checkpoint and replays what followed it: about
//!   [`WAL_CHECKPOINT_BYTES`] of log, plus a batch, or up to both regions (2 ×
//!   [`WAL_REGION_BYTES`]) when a checkpoint's deferred syncs had not finished;
//! - a region is written over only once a durable state holds every record in it
//!   (`Wal::region_last` ≤ `Wal::durable`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    AccessGuard, Database, ReadableDatabase, StorageError, Table, TableDefinition, TableError, TableHandle,
    WriteTransaction,
};

use super::deferred::SyncHandle;
use crate::disk::FaultyDisk;

/// The log's file name in the data directory.
pub const WAL_FILE_NAME: &str = "store.wal";
/// The file's header: magic and format version (the rest of the block is zero).
pub const WAL_HEADER_BYTES: u64 = 4096;
/// The file grows (zero-filled and synced once, so that an append's `fdatasync` never has to
/// write the file's size) in steps of this.
pub const WAL_GROW_BYTES: u64 = 4 << 20;
/// No log is longer than this (releases before the two regions let one grow to it; the log
/// now ends at `WAL_HEADER_BYTES + 2 * WAL_REGION_BYTES`).
pub const WAL_FILE_BYTES_MAX: u64 = 64 << 20;
/// The log is two regions used in turn. A checkpoint does not wait for its syncs (`deferred`),
/// so the records before it stay needed until they are done: the records after it go to the
/// other region, whose own records an earlier checkpoint already made durable. A batch whose
/// record would not fit in what is left of its region commits durably in redb instead (a
/// checkpoint that holds it, which the writer waits for).
pub const WAL_REGION_BYTES: u64 = 16 << 20;
/// Once this much log is in use, the writer checkpoints after the batch: it bounds the replay
/// at an open after a crash, and the dirty pages a checkpoint syncs. The writer checkpoints
/// earlier, down to [`WAL_CHECKPOINT_BYTES_MIN`], where checkpoints hold it long
/// (`engine::CheckpointSizing`).
pub const WAL_CHECKPOINT_BYTES: u64 = 8 << 20;
pub const WAL_CHECKPOINT_BYTES_MIN: u64 = 1 << 20;
/// The settings entry holding the sequence number of the last logged batch in redb's state.
pub const WAL_APPLIED: &str = "wal_applied";
/// The settings entry holding the salt of the log this database goes with.
pub const WAL_SALT: &str = "wal_salt";
/// The settings entry that is 1 after a clean close (the close's checkpoint) and 0 while open.
pub const WAL_CLOSED_CLEANLY: &str = "wal_closed_cleanly";
/// The settings entry that is 0 while the database may have no writes in the log (the store
/// that opened it did not log batches, `write_ahead_log` off, and replayed nothing), and 1 (or
/// absent, as before the entry existed) otherwise: a log missing after a crash is then refused.
pub const WAL_LOGGING: &str = "wal_logging";

const FILE_MAGIC: &[u8; 16] = b"SWITCHYARD-WAL\0\0";
/// 2: two regions ([`WAL_REGION_BYTES`]); 1 (read, and rewritten as 2 at the open): one.
const FILE_VERSION: u32 = 2;
const RECORD_MAGIC: u32 = 0x4c57_5953; // "SYWL"
/// magic u32, payload length u32, sequence u64, the payload's CRC-32 u32, the header's CRC-32
/// u32 (of its first 20 bytes); both CRCs start with the file's salt.
const RECORD_HEADER_BYTES: usize = 24;
const RECORD_ALIGN: u64 = 8;

const OP_OPEN: u8 = 1;
const OP_INSERT: u8 = 2;
const OP_REMOVE: u8 = 3;
const OP_DELETE_TABLE: u8 = 4;

/// A key or value type the log can carry: its code in a record, and how its bytes are checked
/// before redb decodes them (redb's decoders assume well-formed bytes).
pub trait LogType: redb::Value + 'static {
    const CODE: u8;
}
impl LogType for &'static str {
    const CODE: u8 = 1;
}
impl LogType for &'static [u8] {
    const CODE: u8 = 2;
}
impl LogType for u64 {
    const CODE: u8 = 3;
}
impl LogType for (u64, u64) {
    const CODE: u8 = 4;
}

/// Whether `bytes` decode as the type of `code` without redb panicking.
fn well_formed(code: u8, bytes: &[u8]) -> bool {
    match code {
        1 => std::str::from_utf8(bytes).is_ok(),
        2 => true,
        3 => bytes.len() == 8,
        4 => bytes.len() == 16,
        _ => false,
    }
}

/// A batch's record holds at most this much: past it the batch stops recording (and frees what
/// it recorded) and commits durably in redb instead.
const RECORD_PAYLOAD_BYTES_MAX: usize = WAL_REGION_BYTES as usize - RECORD_HEADER_BYTES;
/// What a record read back may hold: a log of a release before the regions had records up to
/// the whole file.
const RECORD_PAYLOAD_READ_BYTES_MAX: usize = (WAL_FILE_BYTES_MAX - WAL_HEADER_BYTES) as usize - RECORD_HEADER_BYTES;

/// Where each region starts.
pub const WAL_REGION_STARTS: [u64; 2] = [WAL_HEADER_BYTES, WAL_HEADER_BYTES + WAL_REGION_BYTES];

/// The region the byte at `at` is in.
fn region_of(at: u64) -> usize {
    usize::from(at >= WAL_REGION_STARTS[1])
}

/// The changes of one batch, in the order they were made.
#[derive(Default)]
struct Redo {
    bytes: Vec<u8>,
    /// The record outgrew [`RECORD_PAYLOAD_BYTES_MAX`]: nothing more is recorded.
    overflowed: bool,
    /// Tables opened in this batch, and their number in the record.
    tables: HashMap<String, u32>,
    next_table: u32,
}

impl Redo {
    fn table(&mut self, name: &str, key: u8, value: u8) -> u32 {
        if let Some(&id) = self.tables.get(name) {
            return id;
        }
        let id = self.next_table;
        self.next_table += 1;
        self.tables.insert(name.to_string(), id);
        self.name_fits(name);
        if !self.overflowed {
            self.bytes.push(OP_OPEN);
            self.bytes.push(key);
            self.bytes.push(value);
            put_bytes16(&mut self.bytes, name.as_bytes());
            self.check_size();
        }
        id
    }

    /// A table name the record cannot hold (64 KiB or more; the store's are a few hundred
    /// bytes at most) sends the batch to a durable commit instead.
    fn name_fits(&mut self, name: &str) {
        if name.len() > usize::from(u16::MAX) {
            self.overflowed = true;
            self.bytes = Vec::new();
        }
    }

    fn insert(&mut self, table: u32, key: &[u8], value: &[u8]) {
        if !self.overflowed {
            self.bytes.push(OP_INSERT);
            self.bytes.extend_from_slice(&table.to_le_bytes());
            put_bytes32(&mut self.bytes, key);
            put_bytes32(&mut self.bytes, value);
            self.check_size();
        }
    }

    fn remove(&mut self, table: u32, key: &[u8]) {
        if !self.overflowed {
            self.bytes.push(OP_REMOVE);
            self.bytes.extend_from_slice(&table.to_le_bytes());
            put_bytes32(&mut self.bytes, key);
            self.check_size();
        }
    }

    fn delete_table(&mut self, name: &str) {
        // Opened again later in the batch, it is created again: log that open too.
        self.tables.remove(name);
        self.name_fits(name);
        if !self.overflowed {
            self.bytes.push(OP_DELETE_TABLE);
            put_bytes16(&mut self.bytes, name.as_bytes());
            self.check_size();
        }
    }

    fn check_size(&mut self) {
        if self.bytes.len() > RECORD_PAYLOAD_BYTES_MAX {
            self.overflowed = true;
            self.bytes = Vec::new();
        }
    }

    /// The record's payload; `None` when it outgrew the log.
    fn into_payload(self) -> Option<Vec<u8>> {
        (!self.overflowed).then_some(self.bytes)
    }
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    // `Redo::name_fits` sent longer names to a durable commit.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    // redb refuses keys and values of 3 GiB and more, so this never truncates.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A batch's write transaction that records every change it makes (see the module's docs).
pub struct LoggedTxn {
    inner: WriteTransaction,
    redo: RefCell<Redo>,
}

impl LoggedTxn {
    /// A transaction whose changes are recorded for the log.
    pub fn new(inner: WriteTransaction) -> LoggedTxn {
        LoggedTxn {
            inner,
            redo: RefCell::new(Redo::default()),
        }
    }

    /// A transaction that will commit durably in redb without the log (the store runs without
    /// it, or the open's own commits): its changes are not recorded, so no batch pays for a
    /// copy of every key and value it writes. [`LoggedTxn::finish`] returns no record.
    pub fn unrecorded(inner: WriteTransaction) -> LoggedTxn {
        LoggedTxn {
            inner,
            redo: RefCell::new(Redo {
                overflowed: true,
                ..Redo::default()
            }),
        }
    }

    /// Opens (creating) a table whose changes are logged; reads go to redb's table as they are.
    pub fn open_table<K: redb::Key + LogType, V: LogType>(
        &self,
        definition: TableDefinition<'_, K, V>,
    ) -> Result<LoggedTable<'_, K, V>, TableError> {
        let table = self.inner.open_table(definition)?;
        let id = self.redo.borrow_mut().table(definition.name(), K::CODE, V::CODE);
        Ok(LoggedTable {
            table,
            id,
            redo: &self.redo,
        })
    }

    /// Records an insert of `key` and `value` (their bytes) into `definition` without making
    /// it in redb: for the stream records the writer keeps out of redb until a checkpoint
    /// (`streams::RecordOverlay`). The log still holds them, so a replay after a crash puts
    /// them in redb; the checkpoint that ends this record's pass in the log inserts them first.
    pub fn log_insert<K: redb::Key + LogType, V: LogType>(
        &self,
        definition: TableDefinition<'_, K, V>,
        key: &[u8],
        value: &[u8],
    ) {
        let mut redo = self.redo.borrow_mut();
        let id = redo.table(definition.name(), K::CODE, V::CODE);
        redo.insert(id, key, value);
    }

    /// Records a removal of `key` (its bytes) from `definition` without making it: for keys of
    /// stream blocks the log holds apart and redb holds joined (`streams::move_blocks`), which a
    /// replay must remove one by one.
    pub fn log_remove<K: redb::Key + LogType, V: LogType>(&self, definition: TableDefinition<'_, K, V>, key: &[u8]) {
        let mut redo = self.redo.borrow_mut();
        let id = redo.table(definition.name(), K::CODE, V::CODE);
        redo.remove(id, key);
    }

    /// redb's transaction itself, whose changes are not logged: only for changes an earlier
    /// record of the log holds already (stream records moving from `streams::RecordOverlay`
    /// into redb, each logged by [`LoggedTxn::log_insert`] since the last checkpoint).
    pub fn unlogged(&self) -> &WriteTransaction {
        &self.inner
    }

    /// Deletes a table (logged); `true` if it existed.
    pub fn delete_table<K: redb::Key + LogType, V: LogType>(
        &self,
        definition: TableDefinition<'_, K, V>,
    ) -> Result<bool, TableError> {
        let deleted = self.inner.delete_table(definition)?;
        self.redo.borrow_mut().delete_table(definition.name());
        Ok(deleted)
    }

    /// The transaction and the record of its changes (`None`: too big for the log), to commit.
    pub fn finish(self) -> (WriteTransaction, Option<Vec<u8>>) {
        (self.inner, self.redo.into_inner().into_payload())
    }
}

/// A table of a [`LoggedTxn`]: its mutations are logged; reads deref to redb's table.
pub struct LoggedTable<'t, K: redb::Key + LogType, V: LogType> {
    table: Table<'t, K, V>,
    id: u32,
    redo: &'t RefCell<Redo>,
}

impl<'t, K: redb::Key + LogType, V: LogType> std::ops::Deref for LoggedTable<'t, K, V> {
    type Target = Table<'t, K, V>;

    fn deref(&self) -> &Table<'t, K, V> {
        &self.table
    }
}

impl<K: redb::Key + LogType, V: LogType> LoggedTable<'_, K, V> {
    pub fn insert<'k, 'v>(
        &mut self,
        key: impl std::borrow::Borrow<K::SelfType<'k>>,
        value: impl std::borrow::Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError> {
        self.redo.borrow_mut().insert(
            self.id,
            K::as_bytes(key.borrow()).as_ref(),
            V::as_bytes(value.borrow()).as_ref(),
        );
        self.table.insert(key, value)
    }

    pub fn remove<'a>(
        &mut self,
        key: impl std::borrow::Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StorageError> {
        self.redo
            .borrow_mut()
            .remove(self.id, K::as_bytes(key.borrow()).as_ref());
        self.table.remove(key)
    }

    /// redb's `retain_in`: removes the entries of `range` that `predicate` refuses (logged).
    pub fn retain_in<'a, KR, F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool>(
        &mut self,
        range: impl std::ops::RangeBounds<KR> + 'a,
        mut predicate: F,
    ) -> Result<(), StorageError>
    where
        KR: std::borrow::Borrow<K::SelfType<'a>> + 'a,
    {
        let (redo, id) = (self.redo, self.id);
        self.table.retain_in(range, |key, value| {
            let removed_key = K::as_bytes(&key).as_ref().to_vec();
            let keep = predicate(key, value);
            if !keep {
                redo.borrow_mut().remove(id, &removed_key);
            }
            keep
        })
    }
}

impl LoggedTable<'_, &'static [u8], &'static [u8]> {
    /// Inserts `entries` (keys strictly ascending, none in the table, and no key of the table
    /// between the first and the last) through redb's write cursor, which buffers an ascending
    /// run and packs it into full leaves; `Table::insert` splits a full leaf in half, so a run
    /// of ~1 KB records inserted one by one leaves every leaf behind it half empty. Each entry
    /// is logged once the cursor took it. An entry out of order is
    /// `redb::Error::UnorderedKey`, and the caller's batch must then fail: what the cursor took
    /// before it is in the transaction.
    pub fn insert_run(&mut self, entries: &[(&[u8], &[u8])]) -> Result<(), redb::Error> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        let mut cursor = self.table.lower_bound_mut(std::ops::Bound::Included(*first))?;
        for (key, value) in entries {
            cursor.insert_before(*key, *value)?;
            self.redo.borrow_mut().insert(self.id, key, value);
        }
        cursor.close()?;
        Ok(())
    }
}

/// A problem with the log that stops an open: nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}; check the disk, the file's permissions and the kernel log")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {problem}; {hint}")]
    Damaged {
        path: PathBuf,
        problem: String,
        hint: &'static str,
    },
    #[error("replaying {path} into the database: {source}")]
    Replay { path: PathBuf, source: Box<redb::Error> },
}

const DAMAGED_LOG_HINT: &str = "nothing was changed. The log holds acknowledged writes that store.redb does not have yet: keep both files for diagnosis. To open the store as store.redb has it, losing those writes, move store.wal aside; a region whose tables are global-table replicas gets them back from its peers";
const MISSING_LOG_HINT: &str = "nothing was changed. Put store.wal back beside store.redb (they are copied and backed up together). To open store.redb as it is, losing the writes that were only in the log, create an empty store.wal (`touch store.wal` in the data directory); a region whose tables are global-table replicas gets them back from its peers";
const FOREIGN_LOG_HINT: &str = "nothing was changed. store.wal belongs with the store.redb it was written beside (was one of them replaced, or restored from a different copy?). Put the matching file back, or move store.wal aside to open store.redb as it is";

/// How an open found the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records (batches) replayed into the database.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    pub took_ms: u64,
}

/// What [`Wal::append`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// The record is durable.
    Logged,
    /// The record would not fit in the log: commit this batch durably in redb instead.
    TooBig,
    /// Not offered to the log (the store runs without it): a durable commit of redb's own.
    Durable,
}

/// The open log file and where its next record goes.
pub struct Wal {
    file: File,
    path: PathBuf,
    /// The file's length (zero-filled up to here).
    len: u64,
    /// Where the next record goes, in `region`.
    used: u64,
    region: usize,
    /// Where in `region` the records after the last checkpoint start.
    since_checkpoint: u64,
    /// Per region, the number of the last record it holds that redb's durable state may lack
    /// (0: none): it is written over only once `durable` reaches that.
    region_last: [u64; 2],
    /// The last batch redb's durable state holds.
    durable: u64,
    /// Checkpoints whose syncs run on the backend's thread: the number of their last sync, and
    /// the last batch they hold.
    pending: std::collections::VecDeque<(u64, u64)>,
    /// The database's deferred syncs (`deferred`); `None` when checkpoints wait for their syncs.
    sync: Option<SyncHandle>,
    /// The sequence number of the next record.
    next_seq: u64,
    /// Mixed into every record's checksum, so that no bytes but the log's own pass for a record.
    salt: u64,
    faults: Option<Arc<FaultyDisk>>,
    buffer: Vec<u8>,
}

impl Wal {
    /// Opens (creating) the log of the database `db` in `dir`, replays into `db` every record
    /// its durable state lacks (one durable quick-repair commit), and starts the log again.
    ///
    /// `logging`: whether this store logs its batches (`write_ahead_log`). A store that does
    /// not, and has nothing to replay, marks the database so: its log can then go missing after
    /// a crash and nothing is lost (a new one is started).
    /// `sync`: the database's deferred syncs, if its checkpoints do not wait for them.
    pub fn open_and_replay(
        dir: &Path,
        db: &Database,
        logging: bool,
        faults: Option<Arc<FaultyDisk>>,
        sync: Option<SyncHandle>,
    ) -> Result<(Wal, ReplayReport), WalError> {
        let path = dir.join(WAL_FILE_NAME);
        let io_error = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        let damaged = |problem: String, hint: &'static str| WalError::Damaged {
            path: path.clone(),
            problem,
            hint,
        };
        let stored = StoredState::read(db).map_err(|source| WalError::Replay {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let created = match path.try_exists().map_err(io_error)? {
            false if stored.salt.is_some() && !stored.clean && stored.logging => {
                return Err(damaged(
                    "the write-ahead log is missing, and store.redb was not closed cleanly after it was last written: its last writes may be in that log only".to_string(),
                    MISSING_LOG_HINT,
                ));
            }
            false => {
                if stored.salt.is_some() && !stored.clean {
                    // The last store logged nothing and left nothing to replay: every write it
                    // acknowledged is in store.redb.
                    tracing::warn!(path = %path.display(), "the write-ahead log is missing after an unclean stop, but the last run did not log (write_ahead_log off): nothing is lost, starting a new one");
                }
                create(dir, &path).map_err(io_error)?;
                true
            }
            true if std::fs::metadata(&path).map_err(io_error)?.len() == 0 => {
                // An empty file is how an operator says to go on without the lost log.
                tracing::warn!(path = %path.display(), "the write-ahead log is an empty file: starting a new one; writes that were only in the lost log are lost");
                create(dir, &path).map_err(io_error)?;
                true
            }
            true => false,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let image = read_image(&file, len).map_err(io_error)?;
        let damaged = |problem: String, hint: &'static str| WalError::Damaged {
            path: path.clone(),
            problem,
            hint,
        };
        let (salt, version) = check_header(&image).map_err(|problem| damaged(problem, FOREIGN_LOG_HINT))?;
        if !created && stored.salt.is_some_and(|own| own != salt) {
            return Err(damaged(
                "this log was written beside another database than this store.redb".to_string(),
                FOREIGN_LOG_HINT,
            ));
        }
        let applied = stored.applied;
        let started = std::time::Instant::now();
        let records = scan(&image, applied).map_err(|problem| {
            damaged(
                problem.message,
                if problem.foreign {
                    FOREIGN_LOG_HINT
                } else {
                    DAMAGED_LOG_HINT
                },
            )
        })?;
        if stored.salt.is_none() && !records.is_empty() {
            return Err(damaged(
                "store.redb has no record of a write-ahead log, so this log's records are not its own".to_string(),
                FOREIGN_LOG_HINT,
            ));
        }
        let bytes = records.iter().map(|r| r.payload.len() as u64).sum();
        if !records.is_empty() {
            tracing::info!(records = records.len(), bytes, path = %path.display(), "replaying the write-ahead log");
        }
        let storage = |source: redb::Error| WalError::Replay {
            path: path.clone(),
            source: Box::new(source),
        };
        // The marks saying which log this database goes with and that it is open (not closed
        // cleanly), durably, before anything is logged. They change only for a new log or after
        // a clean close, and then no record is replayed (checked above, and a clean close's
        // checkpoint holds every record).
        // Logging off is marked only once nothing is left to replay: records replayed now sit in
        // redb without a sync until the next checkpoint, and the log must not be let go before.
        let logging_mark = logging || !records.is_empty();
        if stored.salt != Some(salt) || stored.clean || (stored.logging != logging_mark && records.is_empty()) {
            mark_open(db, salt, logging_mark).map_err(storage)?;
        }
        // The replay commits without a sync (`Durability::None`), like the batches it repeats:
        // the records stay in the log, which goes on after them, until the next checkpoint. So
        // a reopen after an I/O error on a full disk needs no room to replay.
        // A log of one region (format 1) is read as two from now on: said so in its header
        // before anything is written in the second, so that the release that wrote it refuses
        // it by its version rather than as damaged.
        if version != FILE_VERSION {
            file.write_all_at(&FILE_VERSION.to_le_bytes(), 16)
                .and_then(|()| file.sync_data())
                .map_err(io_error)?;
        }
        let (used, region) = match records.last() {
            Some(last) => {
                replay(db, &records).map_err(|failure| match failure {
                    ReplayFailure::Damaged(problem) => damaged(problem, DAMAGED_LOG_HINT),
                    ReplayFailure::Storage(source) => storage(source),
                })?;
                (last.end as u64, region_of(last.start as u64))
            }
            None => (WAL_HEADER_BYTES, 0),
        };
        let mut region_last = [0u64; 2];
        for record in &records {
            let touched = region_of(record.start as u64)..=region_of(record.end as u64 - 1);
            for last in &mut region_last[touched] {
                *last = (*last).max(record.seq);
            }
        }
        if version == 1 && !records.is_empty() {
            // A log of one region: its records run on from the file's start, across where the
            // second region starts, and a scan finds them only from there. Neither region is
            // written over until a durable commit of the writer's own (a batch that does not
            // fit, `skip_committed`) holds them all.
            region_last = [u64::MAX; 2];
        }
        let report = ReplayReport {
            records: records.len() as u64,
            bytes,
            took_ms: started.elapsed().as_millis() as u64,
        };
        let next_seq = applied.saturating_add(report.records).saturating_add(1);
        Ok((
            Wal {
                file,
                path,
                len,
                used,
                region,
                since_checkpoint: WAL_REGION_STARTS[region],
                region_last,
                durable: applied,
                pending: std::collections::VecDeque::new(),
                sync,
                next_seq,
                salt,
                faults,
                buffer: Vec::new(),
            },
            report,
        ))
    }

    /// The sequence number the next logged batch must store as [`WAL_APPLIED`].
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of log since the last checkpoint.
    pub fn used_bytes(&self) -> u64 {
        self.used.saturating_sub(self.since_checkpoint)
    }

    /// A checkpoint's syncs still run on the backend's thread: until they are done, an open
    /// after a crash replays from the checkpoint before it.
    pub fn checkpoint_syncing(&self) -> bool {
        match (&self.sync, self.pending.back()) {
            (Some(sync), Some(&(number, _))) => sync.completed() < number,
            _ => false,
        }
    }

    /// The database's deferred syncs, if its checkpoints hand them over.
    pub fn sync_handle(&self) -> Option<SyncHandle> {
        self.sync.clone()
    }

    /// The failure of a deferred sync, if one failed: the database must be reopened.
    pub fn sync_failure(&self) -> Option<String> {
        self.sync.as_ref().and_then(SyncHandle::failure)
    }

    /// Notes the checkpoints whose syncs are done.
    fn poll(&mut self) {
        let Some(sync) = &self.sync else {
            return;
        };
        let completed = sync.completed();
        while let Some(&(number, holds)) = self.pending.front() {
            if number > completed {
                break;
            }
            self.durable = self.durable.max(holds);
            self.pending.pop_front();
        }
    }

    /// A checkpoint committed holding every record so far; `sync`: the number of its last
    /// sync if the backend's thread runs it (`None`: it is durable already). The records after
    /// it go to the other region if that region's records are durable; if an earlier
    /// checkpoint's syncs that hold them still run, they go on in this region (never waiting),
    /// and the next checkpoint tries again. A region that fills up meanwhile sends its batch to
    /// a durable commit of its own (`Appended::TooBig`), which waits for every sync.
    pub fn checkpointed(&mut self, sync: Option<u64>) {
        let holds = self.next_seq - 1;
        let Some(number) = sync.filter(|_| self.sync.is_some()) else {
            self.durable = holds;
            self.pending.clear();
            self.restart();
            return;
        };
        self.pending.push_back((number, holds));
        self.poll();
        let other = 1 - self.region;
        if self.region_last[other] <= self.durable {
            self.region = other;
            self.used = WAL_REGION_STARTS[other];
            self.region_last[other] = 0;
        }
        self.since_checkpoint = self.used;
    }

    /// Appends the record of batch [`Wal::next_seq`] and syncs it. After an error the record
    /// may or may not be in the file: the writer reopens (and replays) before logging again.
    /// `room_bytes`: how much the file may grow now (the disk's free bytes above its watermark).
    pub fn append(&mut self, payload: &[u8], room_bytes: u64) -> io::Result<Appended> {
        let Ok(payload_len) = u32::try_from(payload.len()) else {
            return Ok(Appended::TooBig);
        };
        let record_bytes = (RECORD_HEADER_BYTES as u64 + payload.len() as u64).next_multiple_of(RECORD_ALIGN);
        let end = self.used + record_bytes;
        if end > WAL_REGION_STARTS[self.region] + WAL_REGION_BYTES {
            return Ok(Appended::TooBig);
        }
        if end > self.len
            && let Err(error) = self.grow(end, room_bytes)
        {
            // The log may not or could not grow (a disk near full): this batch commits durably
            // in redb, which empties the log, and reports the disk's state its own way.
            if error.kind() == io::ErrorKind::StorageFull {
                tracing::debug!(%error, "the write-ahead log may not grow: committing the batch directly");
            } else {
                tracing::warn!(%error, path = %self.path.display(), "the write-ahead log could not grow: committing the batch directly");
            }
            return Ok(Appended::TooBig);
        }
        self.buffer.clear();
        encode_record(&mut self.buffer, self.salt, self.next_seq, payload_len, payload);
        if let Some(disk) = &self.faults {
            disk.write_fault(&self.path, end.min(self.len))?;
        }
        self.file.write_all_at(&self.buffer, self.used)?;
        if let Some(disk) = &self.faults {
            disk.sync_fault()?;
        }
        self.file.sync_data()?;
        self.used = end;
        self.region_last[self.region] = self.next_seq;
        self.next_seq += 1;
        Ok(Appended::Logged)
    }

    /// Zero-fills the file to at least `end` (a step of [`WAL_GROW_BYTES`]) and syncs it with
    /// its new size, so that appends within it never change the file's metadata.
    fn grow(&mut self, end: u64, room_bytes: u64) -> io::Result<()> {
        let last = WAL_REGION_STARTS[1] + WAL_REGION_BYTES;
        let new_len = end.next_multiple_of(WAL_GROW_BYTES).min(last).max(end);
        if new_len - self.len > room_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "growing the log by {} bytes would take the disk below its watermark",
                    new_len - self.len
                ),
            ));
        }
        if let Some(disk) = &self.faults {
            disk.write_fault(&self.path, new_len)?;
        }
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.len;
        while at < new_len {
            let n = (new_len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = new_len;
        Ok(())
    }

    /// A durable commit now holds every record (the last one's number is `next_seq - 1`), and
    /// every checkpoint's syncs are done: the log starts again from its region's beginning.
    fn restart(&mut self) {
        self.used = WAL_REGION_STARTS[self.region];
        self.since_checkpoint = self.used;
        self.region_last = [0, 0];
    }

    /// A batch that was not logged committed durably with [`WAL_APPLIED`] = `next_seq` (its
    /// sync waited for every deferred one): the numbers go on after it.
    pub fn skip_committed(&mut self) {
        self.durable = self.next_seq;
        self.pending.clear();
        self.next_seq += 1;
        self.restart();
    }
}

/// Writes a new, empty log at `path`: complete under a temporary name, then renamed, so that a
/// crash leaves either no log or a whole one.
fn create(dir: &Path, path: &Path) -> io::Result<()> {
    let mut header = vec![0u8; WAL_HEADER_BYTES as usize];
    header[..16].copy_from_slice(FILE_MAGIC);
    header[16..20].copy_from_slice(&FILE_VERSION.to_le_bytes());
    header[20..28].copy_from_slice(&new_salt().to_le_bytes());
    let temporary = path.with_extension("wal.new");
    let file = File::create(&temporary)?;
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

/// 64 unpredictable bits (the standard library's hasher keys come from the OS's randomness).
fn new_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// What the database's durable state says about its log.
struct StoredState {
    /// The last logged batch it holds (0: none).
    applied: u64,
    /// The salt of the log it goes with; `None` for a database never opened with a log.
    salt: Option<u64>,
    /// It was closed cleanly (its last commit is the close's checkpoint): the log holds nothing
    /// it lacks.
    clean: bool,
    /// The log may hold writes it lacks (see [`WAL_LOGGING`]).
    logging: bool,
}

impl StoredState {
    fn read(db: &Database) -> Result<StoredState, redb::Error> {
        let txn = db.begin_read()?;
        let settings = match txn.open_table(super::SETTINGS) {
            Ok(settings) => settings,
            Err(TableError::TableDoesNotExist(_)) => {
                return Ok(StoredState {
                    applied: 0,
                    salt: None,
                    clean: false,
                    logging: true,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let get = |name: &str| -> Result<Option<u64>, redb::Error> {
            Ok(redb::ReadableTable::get(&settings, name)?.map(|v| v.value()))
        };
        Ok(StoredState {
            applied: get(WAL_APPLIED)?.unwrap_or(0),
            salt: get(WAL_SALT)?,
            clean: get(WAL_CLOSED_CLEANLY)? == Some(1),
            logging: get(WAL_LOGGING)? != Some(0),
        })
    }
}

fn read_image(file: &File, len: u64) -> io::Result<Vec<u8>> {
    if len > WAL_FILE_BYTES_MAX + WAL_GROW_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the log is {len} bytes, more than it ever grows to ({WAL_FILE_BYTES_MAX}): not a Switchyard log"),
        ));
    }
    let mut image = vec![0u8; len as usize];
    file.read_exact_at(&mut image, 0)?;
    Ok(image)
}

/// The file's salt and format version, if its header is one this release reads.
fn check_header(image: &[u8]) -> Result<(u64, u32), String> {
    if image.len() < 28 || &image[..16] != FILE_MAGIC {
        return Err("not a Switchyard write-ahead log (its header is not one)".to_string());
    }
    let version = u32::from_le_bytes(image[16..20].try_into().expect("4 bytes"));
    if !(1..=FILE_VERSION).contains(&version) {
        return Err(format!(
            "a write-ahead log of format {version}, which this release does not read (it reads 1 to {FILE_VERSION}): open it with the release that wrote it"
        ));
    }
    Ok((u64::from_le_bytes(image[20..28].try_into().expect("8 bytes")), version))
}

/// A record's checksum: CRC-32 of the file's salt, the length, the number and the payload.
fn checksum(salt: u64, bytes: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&salt.to_le_bytes());
    crc.update(bytes);
    crc.finalize()
}

fn encode_record(out: &mut Vec<u8>, salt: u64, seq: u64, payload_len: u32, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&checksum(salt, payload).to_le_bytes());
    let header_crc = checksum(salt, &out[start..start + 20]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    while !(out.len() as u64).is_multiple_of(RECORD_ALIGN) {
        out.push(0);
    }
}

/// A whole, checksummed record of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
    /// Where it starts.
    pub start: usize,
    /// Where the next record would start.
    pub end: usize,
}

/// A record header at `at` whose own checksum holds: its number, and where its payload is and
/// the payload's checksum. Checked before any payload byte is read, so that bytes that are not
/// a record (an item's, in a stale part of the log) cost a 20-byte checksum at most.
fn header_at(image: &[u8], salt: u64, at: usize) -> Option<(u64, std::ops::Range<usize>, u32)> {
    let header = image.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != RECORD_MAGIC || checksum(salt, &header[..20]) != word(20) {
        return None;
    }
    let payload_len = word(4) as usize;
    if payload_len > RECORD_PAYLOAD_READ_BYTES_MAX {
        return None;
    }
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let start = at + RECORD_HEADER_BYTES;
    Some((seq, start..start + payload_len, word(16)))
}

/// The record at `at`, if one is there whole with good checksums.
fn record_at(image: &[u8], salt: u64, at: usize) -> Option<Record<'_>> {
    let (seq, range, payload_crc) = header_at(image, salt, at)?;
    let payload = image.get(range.clone())?;
    if checksum(salt, payload) != payload_crc {
        return None;
    }
    let end = (range.end as u64).next_multiple_of(RECORD_ALIGN) as usize;
    Some(Record {
        seq,
        payload,
        start: at,
        end,
    })
}

/// Why a scan refuses the log.
#[derive(Debug)]
pub struct ScanProblem {
    pub message: String,
    /// The log does not belong to this database (rather than being damaged).
    pub foreign: bool,
}

/// The records of the log image `image` that a database holding every batch through `applied`
/// lacks, in order. Each region holds one run of records numbered one after the other from its
/// start, ended by the first place without a whole record that continues the numbering (a torn
/// last append, zeros, or a record of an earlier pass); the records needed are `applied + 1`
/// onwards in the run that holds it, then on in the other region's run if that starts where
/// the first ends (a checkpoint moved to the other region, and its syncs were not done).
pub fn scan(image: &[u8], applied: u64) -> Result<Vec<Record<'_>>, ScanProblem> {
    let (salt, _) = check_header(image).map_err(|message| ScanProblem { message, foreign: true })?;
    let Some(first_needed) = applied.checked_add(1) else {
        return Err(ScanProblem {
            message: "the database's log position is the largest number there is, which no store writes".to_string(),
            foreign: true,
        });
    };
    let mut runs: Vec<Vec<Record<'_>>> = WAL_REGION_STARTS
        .iter()
        .filter(|&&start| (start as usize) < image.len())
        .map(|&start| run_at(image, salt, start as usize))
        .collect();
    let mut out: Vec<Record<'_>> = Vec::new();
    let mut next = first_needed;
    while let Some(run) = runs.iter_mut().find(|run| run.iter().any(|record| record.seq == next)) {
        out.extend(std::mem::take(run).into_iter().filter(|record| record.seq >= next));
        next = out.last().map_or(next, |last| last.seq.saturating_add(1));
    }
    if out.is_empty()
        && let Some(record) = runs.iter().flatten().find(|record| record.seq > applied)
    {
        return Err(ScanProblem {
            message: format!(
                "its record {} at byte {} follows batch {} but the database holds only through batch {applied}",
                record.seq,
                record.start,
                record.seq - 1
            ),
            foreign: true,
        });
    }
    // Anywhere else: a record numbered after every one needed means damage, not a torn append
    // (appends are in order, each synced before the next; records of earlier passes are
    // numbered lower). The salt keeps an item's bytes from passing for a record, and a header
    // is checked (20 bytes) before its payload.
    let end = out.last().map_or(WAL_HEADER_BYTES as usize, |last| last.end);
    let mut probe = WAL_HEADER_BYTES as usize;
    while probe.saturating_add(RECORD_HEADER_BYTES) <= image.len() {
        if let Some((seq, _, _)) = header_at(image, salt, probe)
            && seq >= next
            && let Some(record) = record_at(image, salt, probe)
        {
            return Err(ScanProblem {
                message: format!(
                    "the record at byte {end} is damaged or missing, and record {} at byte {probe} follows it: the writes in between would be lost",
                    record.seq
                ),
                foreign: false,
            });
        }
        probe += RECORD_ALIGN as usize;
    }
    Ok(out)
}

/// The records numbered one after the other from `start`.
fn run_at(image: &[u8], salt: u64, start: usize) -> Vec<Record<'_>> {
    let mut run: Vec<Record<'_>> = Vec::new();
    let mut at = start;
    while let Some(record) = record_at(image, salt, at) {
        if run
            .last()
            .is_some_and(|previous| previous.seq.checked_add(1) != Some(record.seq))
        {
            break;
        }
        at = record.end;
        run.push(record);
    }
    run
}

/// One change of a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Open {
        table: u32,
        name: &'a str,
        key: u8,
        value: u8,
    },
    Insert {
        table: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        table: u32,
        key: &'a [u8],
    },
    DeleteTable {
        name: &'a str,
    },
}

/// The changes of a record's payload; an error names the first malformed byte.
pub fn parse(payload: &[u8]) -> Result<Vec<Op<'_>>, String> {
    let mut reader = Reader { bytes: payload, at: 0 };
    let mut ops = Vec::new();
    let mut tables: Vec<(u8, u8)> = Vec::new();
    while reader.at < payload.len() {
        let at = reader.at;
        let op = match reader.u8()? {
            OP_OPEN => {
                let key = reader.u8()?;
                let value = reader.u8()?;
                let name = reader.str16()?;
                if !known_type(key) || !known_type(value) {
                    return Err(format!("byte {at}: table {name:?} has an unknown key or value type"));
                }
                let table = tables.len() as u32;
                tables.push((key, value));
                Op::Open {
                    table,
                    name,
                    key,
                    value,
                }
            }
            OP_INSERT => {
                let table = reader.u32()?;
                let (key_type, value_type) = *tables
                    .get(table as usize)
                    .ok_or_else(|| format!("byte {at}: an insert into table {table}, which was not opened"))?;
                let key = reader.bytes32()?;
                let value = reader.bytes32()?;
                if !well_formed(key_type, key) || !well_formed(value_type, value) {
                    return Err(format!(
                        "byte {at}: an insert whose key or value is not of its table's type"
                    ));
                }
                Op::Insert { table, key, value }
            }
            OP_REMOVE => {
                let table = reader.u32()?;
                let (key_type, _) = *tables
                    .get(table as usize)
                    .ok_or_else(|| format!("byte {at}: a removal from table {table}, which was not opened"))?;
                let key = reader.bytes32()?;
                if !well_formed(key_type, key) {
                    return Err(format!("byte {at}: a removal whose key is not of its table's type"));
                }
                Op::Remove { table, key }
            }
            OP_DELETE_TABLE => Op::DeleteTable { name: reader.str16()? },
            other => return Err(format!("byte {at}: unknown change {other}")),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn known_type(code: u8) -> bool {
    (1..=4).contains(&code)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("byte {}: the record ends inside a change", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn bytes32(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A table name: UTF-8, not empty (redb refuses an empty name).
    fn str16(&mut self) -> Result<&'a str, String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let at = self.at;
        if len == 0 {
            return Err(format!("byte {at}: an empty table name"));
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| format!("byte {at}: a table name that is not UTF-8"))
    }
}

enum ReplayFailure {
    Damaged(String),
    Storage(redb::Error),
}

macro_rules! storage_failure_from {
    ($($error:ty),*) => {
        $(impl From<$error> for ReplayFailure {
            fn from(error: $error) -> ReplayFailure {
                ReplayFailure::Storage(error.into())
            }
        })*
    };
}
storage_failure_from!(
    redb::Error,
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Marks the database as open with the log of `salt`, logging or not (see [`WAL_LOGGING`]): a
/// durable quick-repair commit.
fn mark_open(db: &Database, salt: u64, logging: bool) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    {
        let mut settings = txn.open_table(super::SETTINGS)?;
        settings.insert(WAL_SALT, salt)?;
        settings.insert(WAL_CLOSED_CLEANLY, 0)?;
        settings.insert(WAL_LOGGING, u64::from(logging))?;
    }
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_quick_repair(true);
    txn.commit()?;
    Ok(())
}

/// Applies `records` (in order) in one transaction, committed without a sync: the records stay
/// in the log until a checkpoint.
fn replay(db: &Database, records: &[Record<'_>]) -> Result<(), ReplayFailure> {
    let mut txn = db.begin_write()?;
    for record in records {
        let ops = parse(record.payload)
            .map_err(|problem| ReplayFailure::Damaged(format!("record {}: {problem}", record.seq)))?;
        let mut tables: Vec<(&str, u8, u8)> = Vec::new();
        for op in ops {
            match op {
                Op::Open { name, key, value, .. } => {
                    tables.push((name, key, value));
                    dispatch(&txn, name, key, value, Change::Open)?;
                }
                Op::Insert { table, key, value } => {
                    let (name, k, v) = tables[table as usize];
                    dispatch(&txn, name, k, v, Change::Insert(key, value))?;
                }
                Op::Remove { table, key } => {
                    let (name, k, v) = tables[table as usize];
                    dispatch(&txn, name, k, v, Change::Remove(key))?;
                }
                Op::DeleteTable { name } => {
                    txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(name))?;
                }
            }
        }
        txn.open_table(super::SETTINGS)?.insert(WAL_APPLIED, record.seq)?;
    }
    txn.set_durability(redb::Durability::None)?;
    txn.commit()?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Change<'a> {
    Open,
    Insert(&'a [u8], &'a [u8]),
    Remove(&'a [u8]),
}

fn apply<K: redb::Key + LogType, V: LogType>(
    txn: &WriteTransaction,
    name: &str,
    change: Change<'_>,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(TableDefinition::<K, V>::new(name))?;
    match change {
        Change::Open => {}
        Change::Insert(key, value) => {
            table.insert(K::from_bytes(key), V::from_bytes(value))?;
        }
        Change::Remove(key) => {
            table.remove(K::from_bytes(key))?;
        }
    }
    Ok(())
}

/// [`apply`] with the key and value types of the codes (checked by [`parse`]).
fn dispatch(txn: &WriteTransaction, name: &str, key: u8, value: u8, change: Change<'_>) -> Result<(), ReplayFailure> {
    macro_rules! by_value {
        ($k:ty) => {
            match value {
                1 => apply::<$k, &'static str>(txn, name, change),
                2 => apply::<$k, &'static [u8]>(txn, name, change),
                3 => apply::<$k, u64>(txn, name, change),
                4 => apply::<$k, (u64, u64)>(txn, name, change),
                other => return Err(ReplayFailure::Damaged(format!("unknown value type {other}"))),
            }
        };
    }
    let applied = match key {
        1 => by_value!(&'static str),
        2 => by_value!(&'static [u8]),
        3 => by_value!(u64),
        4 => by_value!((u64, u64)),
        other => return Err(ReplayFailure::Damaged(format!("unknown key type {other}"))),
    };
    applied.map_err(ReplayFailure::Storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5eed;

    fn image(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; WAL_HEADER_BYTES as usize];
        out[..16].copy_from_slice(FILE_MAGIC);
        out[16..20].copy_from_slice(&FILE_VERSION.to_le_bytes());
        out[20..28].copy_from_slice(&SALT.to_le_bytes());
        for (seq, payload) in records {
            encode_record(&mut out, SALT, *seq, payload.len() as u32, payload);
        }
        out.extend_from_slice(&[0u8; 64]);
        out
    }

    fn seqs(records: &[Record<'_>]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn a_scan_returns_the_records_after_the_applied_one_and_stops_at_a_torn_one() {
        let log = image(&[(5, b"a"), (6, b"bb"), (7, b"ccc")]);
        assert_eq!(seqs(&scan(&log, 4).expect("scan")), vec![5, 6, 7]);
        assert_eq!(seqs(&scan(&log, 6).expect("scan")), vec![7]);
        assert_eq!(seqs(&scan(&log, 7).expect("scan")), Vec::<u64>::new());
        // The last append torn: its checksum fails, and the log ends before it.
        let mut torn = log.clone();
        let last = WAL_HEADER_BYTES as usize + 32 + 32 + RECORD_HEADER_BYTES;
        torn[last] ^= 0xff;
        assert_eq!(seqs(&scan(&torn, 4).expect("scan")), vec![5, 6]);
    }

    #[test]
    fn records_of_an_earlier_pass_after_the_new_ones_end_the_log() {
        // The log restarted after batch 9: 10 and 11 overwrote the start of 3..=8.
        let mut log = image(&[(10, b"x"), (11, b"y")]);
        let stale = image(&[(5, b"old"), (6, b"old"), (7, b"old")]);
        log.truncate(log.len() - 64);
        log.extend_from_slice(&stale[WAL_HEADER_BYTES as usize..]);
        assert_eq!(seqs(&scan(&log, 9).expect("scan")), vec![10, 11]);
        // Nothing new since the restart: every record is one the database holds.
        let only_stale = image(&[(5, b"old"), (6, b"old")]);
        assert!(scan(&only_stale, 9).expect("scan").is_empty());
    }

    #[test]
    fn a_damaged_record_followed_by_the_next_one_refuses_the_open() {
        let mut log = image(&[(1, b"first"), (2, b"second"), (3, b"third")]);
        let second = WAL_HEADER_BYTES as usize + 32 + RECORD_HEADER_BYTES;
        log[second] ^= 0x01;
        let problem = scan(&log, 0).expect_err("damage in the middle");
        assert!(!problem.foreign);
        assert!(problem.message.contains("record 3"), "{}", problem.message);
    }

    #[test]
    fn a_log_that_does_not_continue_the_database_is_refused() {
        let log = image(&[(7, b"a"), (8, b"b")]);
        let problem = scan(&log, 3).expect_err("a gap");
        assert!(problem.foreign, "{}", problem.message);
        let mut foreign = log.clone();
        foreign[0] = b'X';
        assert!(scan(&foreign, 0).expect_err("no header").foreign);
        let mut newer = log;
        newer[16] = 3;
        assert!(scan(&newer, 0).expect_err("newer format").message.contains("format 3"));
        // A log of one region (format 1) is read as it is.
        let mut older = image(&[(4, b"a"), (5, b"b")]);
        older[16] = 1;
        assert_eq!(seqs(&scan(&older, 3).expect("format 1")), vec![4, 5]);
    }

    /// A log with `first` at the start of region 0 and `second` at the start of region 1.
    fn two_regions(first: &[(u64, &[u8])], second: &[(u64, &[u8])]) -> Vec<u8> {
        let mut log = image(first);
        log.resize(WAL_REGION_STARTS[1] as usize, 0);
        for (seq, payload) in second {
            encode_record(&mut log, SALT, *seq, payload.len() as u32, payload);
        }
        log.extend_from_slice(&[0u8; 64]);
        log
    }

    #[test]
    fn the_records_needed_go_on_from_one_region_into_the_other() {
        // A checkpoint holding 1..=7 moved the log to region 1 before its syncs were done;
        // the durable state holds 1..=4 (an earlier checkpoint's).
        let log = two_regions(&[(5, b"a"), (6, b"b"), (7, b"c")], &[(8, b"d"), (9, b"e")]);
        assert_eq!(seqs(&scan(&log, 4).expect("scan")), vec![5, 6, 7, 8, 9]);
        assert_eq!(seqs(&scan(&log, 7).expect("scan")), vec![8, 9]);
        assert_eq!(seqs(&scan(&log, 8).expect("scan")), vec![9]);
        assert!(scan(&log, 9).expect("scan").is_empty());
        let regions: Vec<usize> = scan(&log, 4)
            .expect("scan")
            .iter()
            .map(|r| region_of(r.start as u64))
            .collect();
        assert_eq!(regions, vec![0, 0, 0, 1, 1]);
        // And back: region 1 holds 8..=10, then the log moved to region 0.
        let log = two_regions(&[(11, b"f"), (12, b"g")], &[(8, b"d"), (9, b"e"), (10, b"x")]);
        assert_eq!(seqs(&scan(&log, 7).expect("scan")), vec![8, 9, 10, 11, 12]);
        // Region 0's records of an earlier pass (lower numbers) end nothing and are not needed.
        let log = two_regions(&[(3, b"old"), (4, b"old")], &[(8, b"d"), (9, b"e")]);
        assert_eq!(seqs(&scan(&log, 7).expect("scan")), vec![8, 9]);
    }

    #[test]
    fn a_region_that_does_not_continue_the_other_is_damage_or_foreign() {
        // Region 0 ends at 7 and region 1 starts at 10: 8 and 9 are lost.
        let log = two_regions(&[(5, b"a"), (6, b"b"), (7, b"c")], &[(10, b"d")]);
        let problem = scan(&log, 4).expect_err("a gap between the regions");
        assert!(
            !problem.foreign && problem.message.contains("record 10"),
            "{}",
            problem.message
        );
        // The database holds through 4, but the log starts at 8 in either region.
        let log = two_regions(&[(1, b"old")], &[(8, b"d")]);
        assert!(scan(&log, 4).expect_err("a gap").foreign);
    }

    #[test]
    fn bytes_that_look_like_records_but_lack_the_salt_are_not_records() {
        // An item's bytes in a stale part of the log, crafted as a record numbered far ahead:
        // without the file's salt its checksums fail, so it neither ends the scan as damage nor
        // gets replayed.
        let mut log = image(&[(1, b"a")]);
        log.truncate(log.len() - 64);
        let mut forged = Vec::new();
        encode_record(&mut forged, SALT ^ 1, u64::MAX - 1, 3, b"xyz");
        log.extend_from_slice(&[0u8; 8]);
        log.extend_from_slice(&forged);
        assert_eq!(seqs(&scan(&log, 0).expect("scan")), vec![1]);
    }

    #[test]
    fn a_log_full_of_record_magic_scans_in_linear_time() {
        // Every 8 bytes a magic and the largest length: each costs a 20-byte header checksum,
        // never a checksum over the rest of the file.
        let mut log = image(&[]);
        for _ in 0..(4 << 20) / 8 {
            log.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            log.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        assert!(scan(&log, 0).expect("scan").is_empty());
    }

    #[test]
    fn replay_applies_any_change_that_parses_or_errors_without_a_panic() {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory database");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut records = Vec::new();
        for seq in 1..=200u64 {
            let mut redo = Redo::default();
            for _ in 0..(next() % 6) {
                // One name has one pair of types within a batch (as in redb), which may differ
                // from the pair of an earlier batch.
                let which = next() % 5;
                let key = ((which + seq / 50) % 4) as u8 + 1;
                let value = ((which * 3 + seq / 70) % 4) as u8 + 1;
                let name = format!("t{which}");
                let table = redo.table(&name, key, value);
                let bytes = |code: u8, n: u64| match code {
                    1 => format!("k{n}").into_bytes(),
                    2 => n.to_le_bytes()[..(n % 8) as usize].to_vec(),
                    3 => n.to_le_bytes().to_vec(),
                    _ => [n.to_le_bytes(), (!n).to_le_bytes()].concat(),
                };
                match next() % 4 {
                    0 => redo.remove(table, &bytes(key, next() % 16)),
                    1 => redo.delete_table(&name),
                    _ => redo.insert(table, &bytes(key, next() % 16), &bytes(value, next())),
                }
            }
            records.push((seq, redo.bytes));
        }
        let mut applied = 0;
        for (seq, payload) in &records {
            let ops = parse(payload).expect("what a batch records parses");
            assert!(!ops.is_empty() || payload.is_empty());
            let record = Record {
                seq: *seq,
                payload,
                start: 0,
                end: 0,
            };
            // A name opened with other types than before is redb's TableTypeMismatch: an error.
            if replay(&db, &[record]).is_ok() {
                applied += 1;
            }
        }
        assert!(applied > 0, "some records applied");
        mark_open(&db, SALT, true).expect("mark");
        let stored = StoredState::read(&db).expect("state");
        assert_eq!(stored.salt, Some(SALT));
        assert!(!stored.clean);
        assert!(stored.applied >= 1);
    }

    #[test]
    fn only_a_recorded_transaction_keeps_its_changes_for_the_log() {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory database");
        let table = TableDefinition::<&str, u64>::new("t");
        let recorded = LoggedTxn::new(db.begin_write().expect("write"));
        recorded
            .open_table(table)
            .expect("open")
            .insert("a", 1)
            .expect("insert");
        let (txn, payload) = recorded.finish();
        txn.commit().expect("commit");
        let payload = payload.expect("a record");
        let ops = parse(&payload).expect("parse");
        assert!(
            ops.contains(&Op::Insert {
                table: 0,
                key: b"a",
                value: &1u64.to_le_bytes()
            }),
            "{ops:?}"
        );
        let unrecorded = LoggedTxn::unrecorded(db.begin_write().expect("write"));
        unrecorded
            .open_table(table)
            .expect("open")
            .insert("b", 2)
            .expect("insert");
        let (txn, payload) = unrecorded.finish();
        txn.commit().expect("commit");
        assert_eq!(payload, None, "nothing recorded");
        let read = db.begin_read().expect("read");
        let stored = read.open_table(table).expect("table");
        assert_eq!(
            redb::ReadableTable::get(&stored, "b").expect("get").map(|v| v.value()),
            Some(2)
        );
    }

    #[test]
    fn a_batch_parses_back_to_its_changes() {
        let mut redo = Redo::default();
        let a = redo.table("d7", 2, 2);
        redo.insert(a, b"k1", b"v1");
        let s = redo.table("settings", 1, 3);
        redo.insert(s, b"hlc_last", &9u64.to_le_bytes());
        assert_eq!(redo.table("d7", 2, 2), a, "a table is opened once per batch");
        redo.remove(a, b"k0");
        redo.delete_table("d7");
        let again = redo.table("d7", 2, 2);
        assert_ne!(again, a, "a table deleted and opened again is logged as opened again");
        let ops = parse(&redo.bytes).expect("parse");
        assert_eq!(
            ops,
            vec![
                Op::Open {
                    table: 0,
                    name: "d7",
                    key: 2,
                    value: 2
                },
                Op::Insert {
                    table: 0,
                    key: b"k1",
                    value: b"v1"
                },
                Op::Open {
                    table: 1,
                    name: "settings",
                    key: 1,
                    value: 3
                },
                Op::Insert {
                    table: 1,
                    key: b"hlc_last",
                    value: &9u64.to_le_bytes()
                },
                Op::Remove { table: 0, key: b"k0" },
                Op::DeleteTable { name: "d7" },
                Op::Open {
                    table: 2,
                    name: "d7",
                    key: 2,
                    value: 2
                },
            ]
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut redo = Redo::default();
        let t = redo.table("stats", 1, 4);
        redo.insert(t, b"k", &[0u8; 16]);
        let good = redo.bytes.clone();
        let open_bytes = 1 + 2 + 2 + "stats".len();
        for cut in (1..good.len()).filter(|&cut| cut != open_bytes) {
            assert!(parse(&good[..cut]).is_err(), "a payload cut at {cut}, inside a change");
        }
        assert_eq!(parse(&good[..open_bytes]).expect("whole changes").len(), 1);
        let mut wrong_width = Redo::default();
        let t = wrong_width.table("stats", 1, 4);
        wrong_width.insert(t, b"k", &[0u8; 15]);
        assert!(parse(&wrong_width.bytes).is_err(), "a (u64, u64) of 15 bytes");
        let mut bad_str = Redo::default();
        let t = bad_str.table("settings", 1, 3);
        bad_str.insert(t, &[0xff, 0xfe], &[0u8; 8]);
        assert!(parse(&bad_str.bytes).is_err(), "a &str key that is not UTF-8");
        assert!(
            parse(&[OP_INSERT, 0, 0, 0, 0]).is_err(),
            "an insert into a table never opened"
        );
        assert!(parse(&[OP_OPEN, 9, 2, 0, 0]).is_err(), "an unknown key type");
        assert!(parse(&[77]).is_err(), "an unknown change");
        assert!(
            parse(&[OP_OPEN, 1, 2, 0, 0]).is_err(),
            "an empty table name (redb asserts on one)"
        );
        assert!(
            parse(&[OP_DELETE_TABLE, 0, 0]).is_err(),
            "an empty table name to delete"
        );
        // Seeded noise: never a panic, whatever the bytes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (state % 64) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(if state.is_multiple_of(3) {
                    (state % 5) as u8
                } else {
                    (state >> 8) as u8
                });
            }
            let _ = parse(&bytes);
            let mut log = image(&[]);
            log.extend_from_slice(&bytes);
            let _ = scan(&log, state % 4);
        }
    }
}
