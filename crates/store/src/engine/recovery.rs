//! Recovery from storage I/O errors without a restart.
//!
//! After one I/O error redb refuses every later write ("Previous I/O error occurred. Please
//! close and re-open the database."), and reads of pages not in its cache. So when a batch
//! fails and the database reports such an error, the writer fails that batch (nothing of it
//! is acknowledged), closes the database and opens it again — redb repairs it to its last
//! committed state — retrying with capped exponential backoff. Meanwhile reads and writes
//! fail at once with `ServiceUnavailable` (the queue is drained, never left waiting), and
//! `/health` says `degraded` with the error. The disk reserve is released before each attempt
//! so the repair finds room on a full disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};
use tokio::sync::mpsc;

use super::deferred::{DeferredSync, SyncHandle};
use super::{BatchEnd, Job, Shared, read_state};
use crate::disk::{DiskSettings, FaultyBackend, FaultyDisk, SpaceProbe, Statvfs};

/// The first wait before reopening again after a failed attempt...
pub const REOPEN_BACKOFF_INITIAL_MS: u64 = 50;
/// ...doubling up to this.
pub const REOPEN_BACKOFF_MAX_MS: u64 = 5_000;
/// While waiting, queued jobs are refused this often.
const REOPEN_WAIT_SLICE_MS: u64 = 20;

/// How the engine treats its disk.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub disk: DiskSettings,
    /// Tests: put the database on this fault-injecting disk (also the watermark's measure).
    pub faults: Option<Arc<FaultyDisk>>,
    /// Where on-demand backups are kept (`--backup-dir`); `None`: `DATA_DIR/backups`.
    pub backup_dir: Option<std::path::PathBuf>,
    /// redb's page cache in bytes (`--cache-bytes`); `None`: redb's default (1 GiB).
    pub cache_bytes: Option<usize>,
    /// Tests: never commit idle checkpoints (`CHECKPOINT_IDLE_MS`), so that a copy of the open
    /// file is the image a crash leaves, which needs redb's repair.
    pub no_idle_checkpoints: bool,
    /// Commit batches through the write-ahead log (`wal`: one append and sync per batch, redb
    /// synced at checkpoints) instead of with redb's own durable commit per batch
    /// (`--write-ahead-log`; off by default: see `commit`).
    pub write_ahead_log: bool,
}

impl EngineOptions {
    /// Tests: the database on the fault-injecting disk `faults`, with these disk settings.
    pub fn on_faulty_disk(faults: &Arc<FaultyDisk>, disk: DiskSettings) -> EngineOptions {
        EngineOptions {
            disk,
            faults: Some(Arc::clone(faults)),
            backup_dir: None,
            cache_bytes: None,
            no_idle_checkpoints: false,
            write_ahead_log: false,
        }
    }

    pub(super) fn space_probe(&self) -> Arc<dyn SpaceProbe> {
        match &self.faults {
            Some(disk) => Arc::clone(disk) as Arc<dyn SpaceProbe>,
            None => Arc::new(Statvfs),
        }
    }
}

/// redb's page cache while it repairs the file after an unclean shutdown. The repair walks
/// every page twice (checksums, then allocations) and a large cache only adds fresh memory to
/// fault in and pages to evict: at 1M items (2.1 GB) the default 1 GiB took 5.0–6.2 s, this
/// 2.8–3.1 s (BENCHMARKS, "Store at scale"). The store then reopens with its own cache size.
pub const REPAIR_CACHE_BYTES: usize = 16 << 20;

/// How the database was found at its last open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// It was not shut down cleanly and its last commit was not a checkpoint: redb repaired it
    /// (a walk of the whole file, linear in its size).
    pub repaired: bool,
    /// How long the repair took.
    pub repair_ms: u64,
    /// The file was in the format of a release before redb 4 and was upgraded in place (redb 4
    /// then rebuilds its allocator state once: `repaired` is set too).
    pub upgraded: bool,
    /// The write-ahead log's records that the database lacked, replayed into it.
    pub replayed: super::ReplayReport,
}

/// Opens the database. A file left by a clean shutdown, or by a crash right after a checkpoint
/// (see `CHECKPOINT_IDLE_MS`), opens at once. Any other needs redb's full repair: that runs
/// with a small page cache ([`REPAIR_CACHE_BYTES`]), logging its stages, and the file is then
/// closed (cleanly) and opened again with the configured cache.
/// Refuses to create a database where one was lost: `store.redb` missing or empty (redb would
/// make a new, empty store of it) while the write-ahead log its first open wrote beside it is
/// still there. Returns the problem, for [`super::OpenError::Lost`].
pub(super) fn check_database_not_lost(data_dir: &std::path::Path) -> Result<(), String> {
    let database = data_dir.join("store.redb");
    let state = match std::fs::metadata(&database) {
        Ok(meta) if meta.len() > 0 => return Ok(()),
        Ok(_) => "is empty",
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "is missing",
        // Opening it says what is wrong.
        Err(_) => return Ok(()),
    };
    let log = data_dir.join(super::wal::WAL_FILE_NAME);
    match std::fs::metadata(&log) {
        Ok(meta) if meta.len() > 0 => Err(format!(
            "{} {state}, but {} is there: this data directory held a store whose database was deleted or truncated",
            database.display(),
            log.display()
        )),
        _ => Ok(()),
    }
}

/// Whether opening failed because the disk is full (ENOSPC anywhere in the error's chain).
pub(super) fn no_space_left(error: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(ENOSPC))
        {
            return true;
        }
        next = error.source();
    }
    // redb and the log carry some I/O errors as text.
    error.to_string().contains("No space left on device")
}

/// The fix [`check_database_not_lost`]'s refusal names.
pub const LOST_HINT: &str = "nothing was changed. Put store.redb back (with the store.wal copied beside it); to start an empty store in this directory instead, move store.wal aside too. A region whose tables are global-table replicas gets their items back from its peers, and on-demand backups in the backup directory can be restored with RestoreTableFromBackup";

/// The writer's handle of the database's deferred syncs (`deferred`) comes with it when the
/// store runs with the write-ahead log.
pub(super) fn open_database(
    path: &std::path::Path,
    options: &EngineOptions,
) -> Result<(Database, OpenReport, Option<SyncHandle>), DatabaseError> {
    let mut upgraded = false;
    let first = match open_with_cache(path, options, options.cache_bytes, RepairPolicy::Refuse) {
        Err(DatabaseError::UpgradeRequired(version)) => {
            upgrade_file_format(path, version)?;
            upgraded = true;
            open_with_cache(path, options, options.cache_bytes, RepairPolicy::Refuse)
        }
        other => other,
    };
    match first {
        Err(DatabaseError::RepairAborted) => {}
        other => {
            let report = OpenReport {
                upgraded,
                ..OpenReport::default()
            };
            return other.map(|(db, sync)| (db, report, sync));
        }
    }
    if upgraded {
        // redb 4 keeps its allocator state in a form redb 2 does not write.
        tracing::warn!(
            path = %path.display(),
            "rebuilding the allocator state of the upgraded file (once: reads the whole file once or twice)"
        );
    } else {
        tracing::warn!(
            path = %path.display(),
            "the database was not shut down cleanly and its last commit was not a checkpoint: repairing it (reads the whole file once or twice; nothing committed is lost)"
        );
    }
    let started = Instant::now();
    let repair_cache = options
        .cache_bytes
        .map_or(REPAIR_CACHE_BYTES, |bytes| bytes.min(REPAIR_CACHE_BYTES));
    let prefetch = Prefetch::start(path);
    let repaired = open_with_cache(path, options, Some(repair_cache), RepairPolicy::Log);
    let prefetched = prefetch.stop();
    tracing::info!(prefetched_bytes = prefetched, "read ahead of the repair");
    let repaired = repaired?;
    let (db, sync) = if options.cache_bytes.is_some_and(|bytes| bytes <= REPAIR_CACHE_BYTES) {
        // Kept as it is; its allocator state is saved now, so a crash before the writer's
        // first checkpoint does not repair again.
        if let Err(error) = commit_checkpoint(&repaired.0, false, &[]) {
            tracing::warn!(%error, "saving the repaired database's state failed: a crash before the next checkpoint repairs again");
        }
        repaired
    } else {
        reopen_with_own_cache(repaired, path, options)?
    };
    let report = OpenReport {
        repaired: true,
        upgraded,
        repair_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..OpenReport::default()
    };
    tracing::info!(took_ms = report.repair_ms, "database repaired");
    Ok((db, report, sync))
}

/// redb's file format before redb 3: data directories written by Switchyard before it moved to
/// redb 4 (2026-12). redb 4 refuses such a file (`UpgradeRequired`); redb 2.6 upgrades it in
/// place: it repairs the file first if it was not shut down cleanly, commits twice in two
/// phases, and then rewrites both header slots with the new version; no item is rewritten. redb
/// 4 then rebuilds its allocator state once (the walk of a repair: ~30 s at 10M items), since
/// redb 2 does not leave it in the form redb 4 reads.
pub const OLD_FILE_FORMAT: u8 = 2;

/// Upgrades a file in redb's format v2 (see [`OLD_FILE_FORMAT`]) to the format redb 4 reads.
/// redb 2 runs with the repair's small page cache, logging a repair's progress, while the
/// read-ahead thread reads the file; a panic inside redb 2 (a damaged file) becomes
/// `Corrupted`, and its errors keep their kind, so `open_hint` names the right fix.
fn upgrade_file_format(path: &std::path::Path, version: u8) -> Result<(), DatabaseError> {
    if version != OLD_FILE_FORMAT {
        return Err(DatabaseError::Storage(redb::StorageError::Corrupted(format!(
            "the file says redb file format v{version}, which no Switchyard release wrote (v{OLD_FILE_FORMAT} is upgraded)"
        ))));
    }
    tracing::warn!(
        path = %path.display(),
        "the store file was written by an earlier Switchyard (redb file format v2): upgrading it in place to v3 (redb 2 repairs it first if it was not shut down cleanly, then rewrites its header)"
    );
    let started = Instant::now();
    let prefetch = Prefetch::start(path);
    let outcome = quiet_panics_on_this_thread(|| {
        let mut builder = redb2::Database::builder();
        builder.set_cache_size(REPAIR_CACHE_BYTES);
        builder.set_repair_callback(|session| {
            tracing::info!(
                progress_percent = (session.progress() * 100.0).round() as u32,
                "repairing the database (redb 2, before the upgrade)"
            )
        });
        let mut old = builder.create(path).map_err(|error| from_redb2_open(error, path))?;
        old.upgrade().map_err(|error| match error {
            redb2::UpgradeError::Storage(error) => DatabaseError::Storage(from_redb2_storage(error, path)),
            other => DatabaseError::Storage(redb::StorageError::Io(std::io::Error::other(format!(
                "upgrading {} to redb's file format v3: {other}",
                path.display()
            )))),
        })?;
        drop(old);
        Ok(())
    });
    prefetch.stop();
    outcome.unwrap_or_else(|message| {
        Err(DatabaseError::Storage(redb::StorageError::Corrupted(format!(
            "redb 2 could not read the file to upgrade it: {message}"
        ))))
    })?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "store file upgraded to redb's format v3"
    );
    Ok(())
}

/// redb 2's open error as redb 4's, of the same kind.
fn from_redb2_open(error: redb2::DatabaseError, path: &std::path::Path) -> DatabaseError {
    match error {
        redb2::DatabaseError::DatabaseAlreadyOpen => DatabaseError::DatabaseAlreadyOpen,
        redb2::DatabaseError::Storage(error) => DatabaseError::Storage(from_redb2_storage(error, path)),
        other => DatabaseError::Storage(redb::StorageError::Io(std::io::Error::other(format!(
            "opening {} with redb 2 to upgrade it: {other}",
            path.display()
        )))),
    }
}

/// redb 2's storage error as redb 4's, of the same kind (an I/O error keeps its `ErrorKind`).
fn from_redb2_storage(error: redb2::StorageError, path: &std::path::Path) -> redb::StorageError {
    let context = format!("upgrading {} from redb's file format v2", path.display());
    match error {
        redb2::StorageError::Corrupted(message) => redb::StorageError::Corrupted(format!("{context}: {message}")),
        redb2::StorageError::Io(io) => {
            redb::StorageError::Io(std::io::Error::new(io.kind(), format!("{context}: {io}")))
        }
        other => redb::StorageError::Io(std::io::Error::other(format!("{context}: {other}"))),
    }
}

/// Swaps the repaired handle (small cache) for one with the configured cache. A checkpoint
/// first saves the allocator state, so the reopen needs no second repair. If that commit fails
/// (a full disk), redb refuses the handle from then on: the file is repaired once more, with
/// the small cache, and that handle is kept until the next restart.
fn reopen_with_own_cache(
    repaired: (Database, Option<SyncHandle>),
    path: &std::path::Path,
    options: &EngineOptions,
) -> Result<(Database, Option<SyncHandle>), DatabaseError> {
    let saved = commit_checkpoint(&repaired.0, false, &[]);
    drop(repaired);
    if let Err(error) = saved {
        tracing::warn!(%error, "saving the repaired database's state failed: repairing it again, to keep the repair's 16 MiB page cache until the next restart");
        return open_with_cache(path, options, Some(REPAIR_CACHE_BYTES), RepairPolicy::Log);
    }
    match open_with_cache(path, options, options.cache_bytes, RepairPolicy::Refuse) {
        Err(DatabaseError::RepairAborted) => {
            tracing::warn!("the repaired database needs a repair again after a clean close; repairing");
            open_with_cache(path, options, options.cache_bytes, RepairPolicy::Log)
        }
        other => other,
    }
}

/// A checkpoint: a durable commit with redb's quick repair, which saves the allocator state
/// with it (and commits in two phases), so that an open after a crash that follows it needs no
/// repair; it makes every earlier commit durable. It changes no table, except that it inserts
/// the stream records kept out of redb since the last one (`blocks`, `streams::RecordOverlay`),
/// and that the close's (`closing`) marks the database closed cleanly
/// (`wal::WAL_CLOSED_CLEANLY`): the write-ahead log then holds nothing it lacks.
pub(super) fn commit_checkpoint(
    db: &Database,
    closing: bool,
    blocks: &[super::streams::Block],
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    super::streams::move_blocks(&txn, blocks)?;
    if closing {
        txn.open_table(super::SETTINGS)?
            .insert(super::wal::WAL_CLOSED_CLEANLY, 1)?;
    }
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_quick_repair(true);
    txn.commit()?;
    Ok(())
}

/// The read-ahead of a repair: redb walks the file in B-tree order, one page at a time, which
/// on a file outside the page cache is a random read per page. A thread reading the file in
/// order beside it brings the pages in at the disk's sequential speed (1M items, cold cache:
/// 4.6–4.7 s to open; read first, 1.2 s + 1.7 s). Only when the file fits in the memory the
/// kernel could give the page cache (`MemAvailable`), else it would evict the walk's pages.
struct Prefetch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

/// The read-ahead's reads.
const PREFETCH_CHUNK_BYTES: usize = 8 << 20;

impl Prefetch {
    fn start(path: &std::path::Path) -> Prefetch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fits = match (std::fs::metadata(path), mem_available_bytes()) {
            (Ok(meta), Some(available)) => meta.len() <= available,
            _ => false,
        };
        if !fits {
            tracing::info!("no read-ahead of the repair: the file is larger than the memory available to cache it");
            return Prefetch { stop, thread: None };
        }
        let (flag, path) = (Arc::clone(&stop), path.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("store-prefetch".into())
            .spawn(move || read_ahead(&path, &flag))
            .map_err(|error| tracing::warn!(%error, "no read-ahead of the repair"))
            .ok();
        Prefetch { stop, thread }
    }

    /// Stops the read-ahead; returns the bytes it read.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |thread| thread.join().unwrap_or(0))
    }
}

impl Drop for Prefetch {
    /// Also when the repair panics: the thread stops at its next read.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads `path` from start to end (or until `stop`), discarding what it reads; returns the
/// bytes read. A read error ends it: the repair reads for itself and reports errors.
fn read_ahead(path: &std::path::Path, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::io::Read as _;
    let Ok(mut file) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buffer = vec![0u8; PREFETCH_CHUNK_BYTES];
    let mut total = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match file.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => total += read as u64,
        }
    }
    total
}

/// `MemAvailable` from `/proc/meminfo`: what the kernel could give the page cache.
fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What a repair callback does.
#[derive(Clone, Copy)]
enum RepairPolicy {
    /// Refuse to repair (the open fails with `RepairAborted` before any work).
    Refuse,
    /// Repair, logging each of redb's stages.
    Log,
}

fn open_with_cache(
    path: &std::path::Path,
    options: &EngineOptions,
    cache_bytes: Option<usize>,
    policy: RepairPolicy,
) -> Result<(Database, Option<SyncHandle>), DatabaseError> {
    let mut builder = Database::builder();
    if let Some(bytes) = cache_bytes {
        builder.set_cache_size(bytes);
    }
    builder.set_repair_callback(move |session| match policy {
        RepairPolicy::Refuse => session.abort(),
        RepairPolicy::Log => {
            tracing::info!(
                progress_percent = (session.progress() * 100.0).round() as u32,
                "repairing the database"
            )
        }
    });
    // redb asserts on some damaged files (one shorter than its header says, for one) instead
    // of returning an error: that is input from the disk, so it becomes an error here.
    quiet_panics_on_this_thread(|| {
        if !options.write_ahead_log {
            let db = match &options.faults {
                Some(disk) => builder.create_with_backend(FaultyBackend::open(path, Arc::clone(disk))?),
                None => builder.create(path),
            };
            return db.map(|db| (db, None));
        }
        // With the log, checkpoints hand their syncs to a thread (`deferred`).
        let backend: Box<dyn redb::StorageBackend> = match &options.faults {
            Some(disk) => Box::new(FaultyBackend::open(path, Arc::clone(disk))?),
            None => Box::new(redb::backends::FileBackend::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)?,
            )?),
        };
        let (backend, sync) = DeferredSync::new(backend)?;
        builder.create_with_backend(backend).map(|db| (db, Some(sync)))
    })
    .unwrap_or_else(|message| {
        Err(DatabaseError::Storage(redb::StorageError::Corrupted(format!(
            "redb could not read the file: {message}"
        ))))
    })
}

thread_local! {
    /// Set while this thread runs [`quiet_panics_on_this_thread`]: the panic hook stays silent.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(its message)` without the panic hook's report (other
/// threads' panics are reported as before). Only for code that reads input, never for our own
/// invariants.
fn quiet_panics_on_this_thread<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|quiet| quiet.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|quiet| quiet.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// What to do about a damaged database file.
const DAMAGED_HINT: &str = "the file is damaged or not a Switchyard store, and nothing was changed. Move store.redb aside (keep it for diagnosis), and store.wal with it, and start again: a region whose tables are global-table replicas gets their items back from its peers, and on-demand backups in the backup directory can be restored with RestoreTableFromBackup";

/// What to do about an error opening the database, for the message.
pub fn open_hint(error: &DatabaseError) -> &'static str {
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            "another process holds it: is another store running on this --data-dir?"
        }
        DatabaseError::Storage(redb::StorageError::Corrupted(_)) | DatabaseError::UpgradeRequired(_) => DAMAGED_HINT,
        DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            DAMAGED_HINT
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
            "the filesystem holding the data directory is mounted read-only: remount it read-write (a filesystem remounts itself read-only after disk errors: check the kernel log first), or point --data-dir at a writable one"
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            "the store's user may not read and write it: give that user the data directory and its files (chown -R), or run the store as their owner"
        }
        _ => "check the disk, the file's permissions and the kernel log",
    }
}

/// What the writer is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriterState {
    #[default]
    Ok,
    /// Closing and reopening the database after an I/O error; everything fails meanwhile.
    Reopening,
}

impl WriterState {
    pub fn as_str(self) -> &'static str {
        match self {
            WriterState::Ok => "ok",
            WriterState::Reopening => "reopening",
        }
    }
}

/// The writer's state and counters, for `/health` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterStatus {
    pub state: WriterState,
    pub reopening_since_unix_ms: Option<u64>,
    /// Failed reopen attempts of the recovery under way.
    pub reopen_attempts: u64,
    /// Batches failed by a storage error (never acknowledged).
    pub storage_failures_total: u64,
    /// Successful reopens since startup.
    pub reopens_total: u64,
    /// Writes refused because the disk was below the watermark.
    pub writes_refused_total: u64,
    /// The last storage error and when it happened (kept after recovery, with its time).
    pub last_error: Option<String>,
    pub last_error_at_unix_ms: Option<u64>,
    pub recovered_at_unix_ms: Option<u64>,
    /// How the database was found at the last open (startup or a reopen).
    pub opened: OpenReport,
    /// Checkpoints committed since startup (see `CHECKPOINT_IDLE_MS`).
    pub checkpoints_total: u64,
    pub last_checkpoint_unix_ms: Option<u64>,
    /// The last commit is a checkpoint: nothing to replay from the write-ahead log after a crash
    /// once its syncs are done (`checkpoint_syncing`).
    pub checkpointed: bool,
    /// The last checkpoint's syncs still run on their own thread (`deferred`): the writer did
    /// not wait for them.
    pub checkpoint_syncing: bool,
    /// How long the last checkpoint took (the writer waits for it), in microseconds.
    pub last_checkpoint_us: u64,
    /// Bytes of write-ahead log since the last checkpoint (what an open after a crash replays).
    pub log_bytes: u64,
    /// With the log: its size past which the writer checkpoints after a batch
    /// (`engine::CheckpointSizing`); 0 without the log.
    pub checkpoint_log_bytes_due: u64,
    /// Stream record blocks, and their bytes, written since the last checkpoint and kept out
    /// of redb until the next (`streams::RecordOverlay`; with the log only).
    pub stream_overlay_blocks: usize,
    pub stream_overlay_bytes: usize,
}

/// The wait before reopen attempt `attempt + 1` (`attempt` ≥ 1 attempts failed so far).
pub fn reopen_backoff_ms(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(16);
    REOPEN_BACKOFF_INITIAL_MS
        .saturating_mul(1 << doublings)
        .min(REOPEN_BACKOFF_MAX_MS)
}

/// After a failed batch: whether the database still takes writes. redb checks for an earlier
/// I/O error first thing when a write begins, so a trial begin tells.
pub(super) fn end_of_failed_batch(db: &Database) -> BatchEnd {
    match db.begin_write() {
        Ok(txn) => {
            drop(txn);
            BatchEnd::Done
        }
        Err(redb::TransactionError::Storage(_)) => BatchEnd::Poisoned,
        Err(_) => BatchEnd::Done,
    }
}

/// Closes and reopens the database until it opens; `false` when the engine shut down meanwhile.
pub(super) fn recover(shared: &Shared, receiver: &mut mpsc::Receiver<Job>) -> bool {
    let started = shared.clock.now_unix_ms();
    {
        let mut status = shared.writer_status.lock().expect("status lock is never poisoned");
        status.state = WriterState::Reopening;
        status.reopening_since_unix_ms = Some(started);
        status.reopen_attempts = 0;
    }
    tracing::error!(path = %shared.path.display(), "storage I/O error: closing and reopening the database; reads and writes fail until it is back");
    // Our handle goes now. A reader still holding the database keeps the file (and its lock)
    // until it ends, which a reopen attempt meets as "already open" and retries after its
    // backoff; a read transaction that outlives the last handle fails with redb 4's
    // `DatabaseClosed`, answered `ServiceUnavailable` (`storage_error`).
    let closed = shared.db.write().expect("database lock is never poisoned").take();
    drop(closed);
    // The replay below puts every stream record the overlay holds in redb: each is in the log.
    shared.stream_overlay.clear();
    // The log is opened again (and replayed) with the database: a record whose batch did not
    // commit is applied then, or was never whole.
    drop(
        shared
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(),
    );
    let mut attempt: u32 = 0;
    loop {
        shared
            .disk
            .lock()
            .expect("disk lock is never poisoned")
            .release_for_recovery();
        let dir = shared.path.parent().unwrap_or(std::path::Path::new("."));
        // A database deleted meanwhile is not made again, empty, here: the reopen waits for
        // it (its reason on /health).
        let opened = check_database_not_lost(dir)
            .map_err(|problem| format!("{problem}; {LOST_HINT}"))
            .and_then(|()| open_database(&shared.path, &shared.options).map_err(|e| format!("{e}; {}", open_hint(&e))))
            .and_then(|(db, mut report, sync)| {
                let (wal, replayed) = super::Wal::open_and_replay(
                    dir,
                    &db,
                    shared.options.write_ahead_log,
                    shared.options.faults.clone(),
                    sync,
                )
                .map_err(|e| e.to_string())?;
                report.replayed = replayed;
                read_state(&db).map(|loaded| (db, report, loaded, wal))
            });
        match opened {
            Ok((db, report, loaded, wal)) => {
                shared
                    .disk
                    .lock()
                    .expect("disk lock is never poisoned")
                    .watch(&shared.path);
                *shared.wal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(wal);
                {
                    let mut catalog = shared.catalog.write().expect("catalog lock is never poisoned");
                    *catalog = loaded.catalog;
                }
                shared
                    .replog_bytes
                    .store(loaded.replog_bytes, std::sync::atomic::Ordering::SeqCst);
                shared.replog_head.send_if_modified(|head| {
                    let changed = *head != loaded.replog_head;
                    *head = loaded.replog_head;
                    changed
                });
                // The delta log's shape is read again from the reopened file: a batch that
                // panicked after its commit reached the disk did not publish what it wrote.
                *shared.digest_log.lock().expect("digest log lock is never poisoned") = None;
                *shared.db.write().expect("database lock is never poisoned") = Some(Arc::new(db));
                let now = shared.clock.now_unix_ms();
                let mut status = shared.writer_status.lock().expect("status lock is never poisoned");
                status.state = WriterState::Ok;
                status.reopening_since_unix_ms = None;
                status.reopen_attempts = 0;
                status.reopens_total += 1;
                status.recovered_at_unix_ms = Some(now);
                status.opened = report;
                tracing::info!(
                    failed_attempts = attempt,
                    took_ms = now.saturating_sub(started),
                    "database reopened after the I/O error; writes resume"
                );
                return true;
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                let message = format!("reopening the database after an I/O error failed: {error}");
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::error!(attempt, %error, "reopening the database failed; retrying with backoff");
                }
                {
                    let mut status = shared.writer_status.lock().expect("status lock is never poisoned");
                    status.reopen_attempts = u64::from(attempt);
                    status.last_error = Some(message);
                    status.last_error_at_unix_ms = Some(shared.clock.now_unix_ms());
                }
                if !wait_refusing(shared, receiver, reopen_backoff_ms(attempt)) {
                    return false;
                }
            }
        }
    }
}

/// Waits `wait_ms`, refusing queued jobs meanwhile; `false` when every sender is gone.
fn wait_refusing(shared: &Shared, receiver: &mut mpsc::Receiver<Job>, wait_ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        loop {
            match receiver.try_recv() {
                Ok(job) => job.body.refuse(shared.db().err().unwrap_or_else(|| {
                    dynamo_protocol::ApiError::new(
                        dynamo_protocol::ErrorKind::ServiceUnavailable,
                        "The store is reopening its database; retry shortly",
                    )
                })),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(REOPEN_WAIT_SLICE_MS)));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_read_only_or_foreign_data_directory_is_named_with_its_fix() {
        let io = |code| redb::DatabaseError::Storage(redb::StorageError::Io(std::io::Error::from_raw_os_error(code)));
        assert!(super::open_hint(&io(30)).contains("mounted read-only"), "EROFS");
        assert!(super::open_hint(&io(13)).contains("chown"), "EACCES");
        assert!(super::open_hint(&io(5)).contains("kernel log"), "EIO");
    }

    use super::*;

    #[test]
    fn the_read_ahead_reads_the_whole_file_and_stops_when_told() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("file");
        std::fs::write(&path, vec![7u8; 3 * PREFETCH_CHUNK_BYTES + 5]).expect("write");
        let running = std::sync::atomic::AtomicBool::new(false);
        assert_eq!(read_ahead(&path, &running), 3 * PREFETCH_CHUNK_BYTES as u64 + 5);
        let stopped = std::sync::atomic::AtomicBool::new(true);
        assert_eq!(read_ahead(&path, &stopped), 0);
        assert_eq!(read_ahead(&dir.path().join("missing"), &running), 0);
        if cfg!(target_os = "linux") {
            assert!(mem_available_bytes().is_some_and(|bytes| bytes > 0));
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do_not_a_panic() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("store.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn
                    .open_table(redb::TableDefinition::<u64, &[u8]>::new("t"))
                    .expect("table");
                for i in 0..2_000u64 {
                    table.insert(i, [7u8; 512].as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let error = open_database(&path, &EngineOptions::default()).expect_err("a truncated file");
        let hint = open_hint(&error);
        assert!(hint.contains("damaged"), "{error}: {hint}");
        // Garbage with redb's magic number, and garbage without it.
        std::fs::write(&path, b"redb\x1a\x0a\xa9\x0d\x0a and then nothing a header should hold").expect("write");
        let error = open_database(&path, &EngineOptions::default()).expect_err("garbage");
        assert!(open_hint(&error).contains("damaged"), "{error}");
        // The file was left as it was.
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"redb\x1a\x0a\xa9\x0d\x0a and then nothing a header should hold"
        );
    }

    #[test]
    fn reopen_backoff_doubles_and_is_capped() {
        assert_eq!(reopen_backoff_ms(1), REOPEN_BACKOFF_INITIAL_MS);
        assert_eq!(reopen_backoff_ms(2), 2 * REOPEN_BACKOFF_INITIAL_MS);
        assert_eq!(reopen_backoff_ms(3), 4 * REOPEN_BACKOFF_INITIAL_MS);
        assert_eq!(reopen_backoff_ms(100), REOPEN_BACKOFF_MAX_MS);
        assert_eq!(reopen_backoff_ms(u32::MAX), REOPEN_BACKOFF_MAX_MS);
    }
}

/// How long [`compact`] waits for the closed engine's last handles (its writer thread, the
/// checkpoint thread) to let go of the file.
pub const COMPACT_RELEASE_MS: u64 = 30_000;

/// What [`compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub took_ms: u64,
}

/// Why [`compact`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("{0}")]
    Open(#[from] super::OpenError),
    #[error(
        "the last checkpoint before compacting did not commit (the disk below its watermark, or an I/O error): nothing was compacted; free some space on the filesystem and run it again"
    )]
    Checkpoint,
    #[error(
        "the store's file {path} is still open {waited_ms} ms after it was closed: is a `switchyard store` running on this data directory? Stop it first"
    )]
    StillOpen { path: PathBuf, waited_ms: u64 },
    #[error(
        "cannot compact {path}: {message}; nothing was lost (a compaction stopped midway is finished or undone by the next open)"
    )]
    Compaction { path: PathBuf, message: String },
}

/// Compacts the store in `data_dir` offline: opens it as `switchyard store` would (replaying
/// the write-ahead log, repairing after a crash), closes it with a checkpoint, then has redb
/// move the live pages to the front of the file and shorten it, so the space of deleted items
/// and tables goes back to the filesystem (redb reuses freed pages but never shrinks its file
/// on its own). The store must not be running: its open database is refused.
pub async fn compact(
    data_dir: &std::path::Path,
    region: &str,
    options: EngineOptions,
) -> Result<CompactReport, CompactError> {
    let path = data_dir.join("store.redb");
    let started = Instant::now();
    let cache_bytes = options.cache_bytes;
    let engine = super::Engine::open_with(data_dir, region, Arc::new(crate::SystemClock), options)?;
    let closed = engine.close().await;
    drop(engine);
    if !closed {
        return Err(CompactError::Checkpoint);
    }
    let bytes_before = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(COMPACT_RELEASE_MS);
    let db = loop {
        let mut builder = Database::builder();
        if let Some(bytes) = cache_bytes {
            builder.set_cache_size(bytes);
        }
        // The close's checkpoint saved the allocator state: nothing to repair.
        builder.set_repair_callback(|session| session.abort());
        match builder.create(&path) {
            Ok(db) => break db,
            Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(CompactError::StillOpen {
                    path,
                    waited_ms: COMPACT_RELEASE_MS,
                });
            }
            Err(error) => {
                return Err(CompactError::Compaction {
                    path,
                    message: error.to_string(),
                });
            }
        }
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let mut db = db;
        // One pass moves what it can; a further pass may shorten the file more.
        let mut passes = 0;
        while passes < COMPACT_PASSES_MAX && db.compact().map_err(|error| error.to_string())? {
            passes += 1;
        }
        drop(db);
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|error| Err(format!("the compaction stopped: {error}")));
    outcome.map_err(|message| CompactError::Compaction {
        path: path.clone(),
        message,
    })?;
    let bytes_after = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(CompactReport {
        bytes_before,
        bytes_after,
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Compaction passes at most (redb's `compact` returns whether it moved anything).
const COMPACT_PASSES_MAX: u32 = 8;
