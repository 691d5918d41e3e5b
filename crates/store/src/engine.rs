//! Durable storage: redb tables, one writer thread with group commit, secondary indexes and the
//! TTL index, all maintained in the same transaction as the item they describe.
//!
//! Over 800 lines on purpose: the writer loop, the job context (`WriteContext`) and the
//! snapshot share private state (the transaction, the batch's log position, counters) that
//! submodules reach as children; the replication log, tombstones and digests are in `replog`,
//! recovery in `recovery`, streams in `streams`.
//!
//! Invariants:
//! - every mutation goes through the single writer thread, so conditional writes are
//!   serialised; a write is acknowledged only after its batch committed durably: redb's own
//!   `Durability::Immediate` commit (the default, and for a batch too big for the log), or with
//!   `write_ahead_log` its record synced in the write-ahead log (`wal`) and then the batch
//!   committed to redb without a sync (only then visible);
//! - a job either returns an error having mutated nothing, or its writes are part of the batch;
//!   a failed commit fails every job of the batch and nothing of it is visible;
//! - jobs that change the catalog run alone in their batch, and the in-memory catalog is swapped
//!   only after their commit, so no job ever sees a table that storage does not have;
//! - index entries, TTL entries and counters always match the items (same transaction);
//! - after a storage I/O error the writer closes and reopens the database (`recovery`) before
//!   it runs another batch; below the disk watermark (`crate::disk`) new items are refused and
//!   deletes still run.

mod clock_watch;
mod deferred;
mod digests;
mod index_backfill;
mod pitr;
mod recovery;
mod replog;
mod streams;
mod wal;

pub use clock_watch::{CLOCK_STEP_MS_MIN, ClockStatus};
pub use digests::{DIGEST_BUCKET_BITS, DigestCursor, ScrubReport};
pub use index_backfill::{
    BackfillStep, INDEX_BACKFILL_BYTES_PER_JOB, INDEX_BACKFILL_ITEMS_PER_JOB, INDEX_BACKFILL_WRITER_SHARE_PERCENT,
};
use replog::*;
pub use replog::{
    LOG_BLOCK_BYTES_MAX, LOG_TRIM_CHANGES_PER_JOB_MAX, ReceivedChange, ReplicaWriter, TOMBSTONE_PURGES_PER_JOB_MAX,
    awaiting_backfill_key, stored_record_hash,
};

pub use pitr::{
    ENV_PITR_RESTORABLE_LAG_MS, ENV_PITR_UNDO_BYTES_MAX, PITR_TRIM_ENTRIES_PER_SWEEP_MAX, PitrLimitKeys, PitrLimits,
    PitrView,
};
pub use recovery::{
    COMPACT_RELEASE_MS, CompactError, CompactReport, EngineOptions, OpenReport, REPAIR_CACHE_BYTES, WriterState,
    WriterStatus, compact,
};
pub(crate) use streams::stream_key as stream_key_of;
pub use streams::{ShardMeta, ShardRead, StreamMeta, render_stored_stream_entry};
use wal::{Appended, LoggedTable, LoggedTxn, Wal};
pub use wal::{
    ReplayReport, WAL_CHECKPOINT_BYTES, WAL_CHECKPOINT_BYTES_MIN, WAL_FILE_BYTES_MAX, WAL_FILE_NAME, WAL_GROW_BYTES,
    WAL_REGION_BYTES, WAL_REGION_STARTS, WalError, parse as parse_wal_payload, scan as scan_wal,
};

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use dynamo_protocol::value::item_size_bytes;
use dynamo_protocol::{ApiError, AttributeValue, Item};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use replication::digest::{Digest, Range as DigestRange};
use replication::{Hlc, HlcClock, Version};
use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::{self, IndexMeta, KeySchema, TableMeta, TableStats, TtlSpec};
use crate::disk::{DiskGuard, DiskStatus, Verdict};
use crate::keys::{self, KeyHash};
use crate::record::{self, Record};
use crate::replication_log;

/// Jobs waiting for the writer before submitters are made to wait (back-pressure).
pub const WRITE_QUEUE_JOBS_MAX: usize = 4096;
/// Jobs committed together in one transaction (one log record and fsync) at most.
pub const BATCH_JOBS_MAX: usize = 512;
/// After this long without a batch the writer commits a checkpoint: a durable commit that
/// saves redb's allocator state (so an open after a crash that follows it needs no repair) and,
/// with the write-ahead log, makes every batch since the last one durable in redb itself, after
/// which the log starts again (a store killed later replays the log since it:
/// `wal::WAL_CHECKPOINT_BYTES` at most, which also forces a checkpoint on a busy writer).
/// Without the log, a store killed after other commits needs redb's repair, which walks the
/// whole file (BENCHMARKS, "Store at scale": seconds per GB).
pub const CHECKPOINT_IDLE_MS: u64 = 200;
/// ...and at most this often, so a slow trickle of writes does not double the commits...
pub const CHECKPOINT_INTERVAL_MIN_MS: u64 = 1_000;
/// ...nor, per GiB of file, more often than this: a checkpoint rewrites the allocator state
/// (~64–128 KiB per GiB), and a replicated store commits a watermark mark every second, so
/// without this bound a 20 GiB store would rewrite ~2 MB a second for as long as it runs.
pub const CHECKPOINT_INTERVAL_PER_GIB_MS: u64 = 2_000;
/// With the write-ahead log, how long a checkpoint the log's size calls for should hold the
/// writer: the log it lets grow is sized for this (`CheckpointSizing`).
pub const CHECKPOINT_HOLD_TARGET_US: u64 = 20_000;
/// redb's page: the unit it reads, writes and checksums (its default, which the store keeps).
pub const REDB_PAGE_BYTES: usize = 4096;
/// The most value bytes an entry appended to a log table every batch may hold (replication log
/// blocks, stream blocks, range digest deltas) so that its leaf fits one page. redb writes a
/// leaf at the next power-of-two number of pages, and rewrites the leaf holding the last entry
/// when the next batch appends beside it: an entry of 64 KiB and a few bytes was written as
/// 128 KiB, and its 16–32 KiB leaf written again by the next batch. The margin covers the
/// leaf's header, the entry's lengths and a key of up to 32 bytes.
pub const APPEND_ENTRY_BYTES_MAX: usize = REDB_PAGE_BYTES - 64;
/// Fewest new items following each other in a table that `put_new_items` writes as one run
/// through redb's write cursor (one item alone goes in like any put).
pub const RUN_ITEMS_MIN: usize = 2;

/// Where the run that starts at `start` ends (exclusive), given which keys join the next.
fn run_end(joins_next: &[bool], start: usize) -> usize {
    let mut end = start + 1;
    while end < joins_next.len() && joins_next[end - 1] {
        end += 1;
    }
    end
}
/// TTL sweeps run this often.
pub const TTL_SWEEP_INTERVAL_MS: u64 = 1000;
/// A failed index backfill job (a full disk, an I/O error) is tried again after this long.
pub const INDEX_BACKFILL_RETRY_MS: u64 = 1000;
/// Expired items deleted per table per sweep at most.
pub const TTL_DELETES_PER_SWEEP_MAX: usize = 1000;
/// Items whose TTL lies further than this in the past are not expired (DynamoDB's rule).
pub const TTL_IGNORE_OLDER_THAN_SECONDS: u64 = 5 * 365 * 24 * 3600;

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const STATS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("stats");
const SETTINGS: TableDefinition<&str, u64> = TableDefinition::new("settings");
const NEXT_TABLE_ID: &str = "next_table_id";
/// Sequence number of the last change in the replication log.
pub(crate) const REPLOG_HEAD: &str = "replog_head";
/// The highest HLC this region handed out or observed, so a restart never goes back in time.
const HLC_LAST: &str = "hlc_last";
/// The highest timestamp stored (observed or stamped), which the bounded clock may trail: after
/// a restart a local write must still order after a future-stamped item.
const HLC_CEILING: &str = "hlc_ceiling";
fn data_table_name(id: u64) -> String {
    format!("d{id}")
}

fn index_table_name(id: u64, index: &str) -> String {
    format!("x{id}/{index}")
}

fn ttl_table_name(id: u64) -> String {
    format!("t{id}")
}

fn stats_key(id: u64, index: Option<&str>) -> String {
    match index {
        Some(index) => format!("{id}/{index}"),
        None => id.to_string(),
    }
}

fn bytes_table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// The reserved regional table the write health probe (`write = true`) puts its heartbeat in.
/// The store creates it on open, never lists it (ListTables, `/metrics`), never replicates it,
/// and refuses to change or delete it.
pub const HEALTH_TABLE: &str = "__switchyard_health";

fn storage_error(context: &str, error: impl std::fmt::Display) -> ApiError {
    let text = error.to_string();
    // A snapshot taken before the writer closed the database to reopen it after an I/O error
    // (redb 4 ends every read of a closed database so): the same answer as a read that starts
    // while it reopens.
    if text == redb::StorageError::DatabaseClosed.to_string() {
        return ApiError::new(
            dynamo_protocol::ErrorKind::ServiceUnavailable,
            format!(
                "The store closed its database while {context}, to reopen it after a storage I/O error; retry shortly (its /health says when it is back)"
            ),
        );
    }
    tracing::error!(%error, "storage failure while {context}");
    // The cause (such as "No space left on device") helps the operator and tells the client
    // nothing about the data.
    ApiError::internal(format!(
        "Internal server error: storage failure while {context}: {error}"
    ))
}

/// Milliseconds since the Unix epoch; injected so tests and simulations control time.
pub trait Clock: Send + Sync + 'static {
    fn now_unix_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// How long a measurement of a peer's clock behind this region's holds the sweeps back
/// ([`Engine::hold_sweeps_back`]) when no newer one comes: a peer that is reachable is measured
/// every second (replication's marks), so this covers one that went quiet, an hour.
pub const SWEEP_HOLD_MEMORY_MS: u64 = 3_600_000;

/// The most the sweeps that delete for good hold back from the wall clock, a week: a peer whose
/// clock is far behind (set to 1970, say) delays TTL expiry and retention by at most this much,
/// rather than stopping them in every region while the disk fills.
pub const SWEEP_HOLD_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// How often at most the clock bound's warning is logged.
const CLOCK_BOUND_LOG_INTERVAL_MS: u64 = 10_000;

/// The region's hybrid logical clock, shared by the writer and the replication receiver.
pub struct HybridClock {
    clock: std::sync::Mutex<HlcState>,
    /// How far ahead of the wall clock local stamps may run (`clock_offset_max_ms`).
    max_ahead_ms: std::sync::atomic::AtomicU64,
}

struct HlcState {
    clock: HlcClock,
    /// The highest timestamp stored here so far (observed or stamped): a local stamp above it
    /// is newer than any stored version, so no version needs to be read to order after it.
    ceiling: u64,
    /// When the clock bound was last logged (wall ms).
    bound_logged_ms: u64,
    /// Remote timestamps the bound kept the clock from following.
    capped_total: u64,
}

impl HybridClock {
    /// Resumes after `last` (never going back); `ceiling` is the highest timestamp stored
    /// (0 in data directories from before it was saved: then `last`).
    fn resume(last: u64, ceiling: u64) -> HybridClock {
        HybridClock {
            clock: std::sync::Mutex::new(HlcState {
                clock: HlcClock::resume(Hlc(last)),
                ceiling: ceiling.max(last),
                bound_logged_ms: 0,
                capped_total: 0,
            }),
            max_ahead_ms: std::sync::atomic::AtomicU64::new(replication::hlc::CLOCK_OFFSET_MAX_MS_DEFAULT),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HlcState> {
        self.clock.lock().expect("clock lock is never poisoned")
    }

    pub fn tick(&self, physical_ms: u64) -> u64 {
        let mut state = self.state();
        let stamp = state.clock.now(physical_ms).0;
        state.ceiling = state.ceiling.max(stamp);
        stamp
    }

    /// A stamp for a local write replacing a version stamped `existing` (read by the caller
    /// only when [`HybridClock::tick_above`] says it may matter).
    fn stamp_replacing(&self, stamp: u64, existing: Option<u64>) -> u64 {
        let stamp = replication::stamp_after(Hlc(stamp), existing.map(Hlc)).0;
        let mut state = self.state();
        state.ceiling = state.ceiling.max(stamp);
        stamp
    }

    /// A fresh stamp, and whether it is above every timestamp stored here (then no stored
    /// version can be newer than it).
    fn tick_above(&self, physical_ms: u64) -> (u64, bool) {
        let mut state = self.state();
        let ceiling = state.ceiling;
        let stamp = state.clock.now(physical_ms).0;
        state.ceiling = ceiling.max(stamp);
        (stamp, stamp > ceiling)
    }

    /// Folds in a timestamp from another region, never past the bound ahead of the wall clock
    /// (see `replication::HlcClock::observe`); logs remote clocks running ahead.
    pub fn observe(&self, remote: u64, physical_ms: u64) {
        let max_ahead_ms = self.max_ahead_ms.load(std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state();
        state.ceiling = state.ceiling.max(remote);
        let Some(skew) = state.clock.observe(Hlc(remote), physical_ms, max_ahead_ms) else {
            return;
        };
        if skew.capped {
            state.capped_total += 1;
        }
        if physical_ms.saturating_sub(state.bound_logged_ms) >= CLOCK_BOUND_LOG_INTERVAL_MS {
            state.bound_logged_ms = physical_ms;
            if skew.capped {
                tracing::warn!(
                    ahead_ms = skew.ahead_ms,
                    clock_offset_max_ms = max_ahead_ms,
                    "a peer region's clock runs ahead of ours past the bound: its writes apply, but local writes are not stamped into its future (writes to the same items still order after it); fix NTP on the peer"
                );
            } else {
                tracing::warn!(
                    ahead_ms = skew.ahead_ms,
                    "a peer region's clock runs ahead of ours; the HLC keeps writes ordered"
                );
            }
        }
    }

    pub fn last(&self) -> u64 {
        self.state().clock.last().0
    }

    /// The highest timestamp stored here so far (see `HlcState::ceiling`).
    pub fn ceiling(&self) -> u64 {
        self.state().ceiling
    }

    /// Remote timestamps the bound kept the clock from following, since startup.
    pub fn capped_total(&self) -> u64 {
        self.state().capped_total
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TableStatus {
    Active,
}

#[derive(Default)]
struct Catalog {
    tables: BTreeMap<String, Arc<TableMeta>>,
}

enum CatalogChange {
    Put(Arc<TableMeta>),
    Remove(String),
}

type Completion = Box<dyn FnOnce(Result<(), ApiError>) + Send>;

/// A queued write: run inside a batch, or refused without running (the database is being
/// reopened), answering its submitter either way.
trait JobBody: Send {
    fn run(self: Box<Self>, context: &mut WriteContext<'_>) -> Completion;
    fn refuse(self: Box<Self>, error: ApiError);
}

struct JobFn<F, T> {
    job: F,
    reply: oneshot::Sender<Result<T, ApiError>>,
}

impl<F, T> JobBody for JobFn<F, T>
where
    F: FnOnce(&mut WriteContext<'_>) -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, context: &mut WriteContext<'_>) -> Completion {
        let JobFn { job, reply } = *self;
        let outcome = job(context);
        Box::new(move |commit: Result<(), ApiError>| {
            let _ = reply.send(commit.and(outcome));
        })
    }

    fn refuse(self: Box<Self>, error: ApiError) {
        let _ = self.reply.send(Err(error));
    }
}

struct Job {
    exclusive: bool,
    body: Box<dyn JobBody>,
    /// [`Engine::close`]: the writer checkpoints, answers here whether it committed, and stops.
    close: Option<oneshot::Sender<bool>>,
}

/// The replication log's head and the bytes ever appended to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogPosition {
    head: u64,
    bytes: u64,
}

/// What holds the sweeps that delete for good back from the wall clock.
#[derive(Clone, Copy, Debug, Default)]
struct SweepHold {
    /// The peers' last measurement (`Engine::hold_sweeps_back`): how far this region's clock
    /// runs ahead of the furthest-behind peer's, and when (Unix ms). Forgotten
    /// [`SWEEP_HOLD_MEMORY_MS`] after it was taken.
    measured_ms: u64,
    measured_at_ms: u64,
    /// Forward steps of this store's own wall clock since that measurement, less its backward
    /// steps (`Engine::observe_clock`). Neither forgotten with time nor capped: without a peer
    /// to say the clock is right again, a clock that jumped ahead keeps deleting nothing early
    /// for as long as the store runs (a step that corrected a clock that was behind only delays
    /// TTL expiry and retention by the step, until a restart). The next measurement replaces
    /// it, as it measures the stepped clock.
    stepped_ms: u64,
}

struct Shared {
    /// Steps of the wall clock seen so far (`Engine::observe_clock`).
    clock_watch: Mutex<clock_watch::ClockWatch>,
    /// How far the sweeps that delete for good hold back from the wall clock
    /// (`Engine::hold_sweeps_back`, `Engine::observe_clock`).
    sweep_hold: Mutex<SweepHold>,
    /// The key of the MAC in stream iterators (`streams::ShardIterator`).
    iterator_key: [u8; crate::streams::ITERATOR_KEY_BYTES],
    /// This database's identity (`Engine::store_id`), made from `iterator_key` once.
    store_id: u64,
    /// `None` while the writer reopens the database after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    options: EngineOptions,
    /// The free-space watermark and the reserve (locked by the writer once per batch).
    disk: Mutex<DiskGuard>,
    writer_status: Mutex<WriterStatus>,
    region: String,
    catalog: RwLock<Catalog>,
    clock: Arc<dyn Clock>,
    hlc: HybridClock,
    path: PathBuf,
    /// The replication log's head, published after each commit that appended to it.
    replog_head: watch::Sender<u64>,
    /// Bytes ever appended to the log, as of the last commit (the writer's working copy
    /// lives in its `WriteContext` until then).
    replog_bytes: std::sync::atomic::AtomicU64,
    /// Tombstones below this HLC have been (or may be) purged here: a copy arriving again
    /// (a repair from a region that has not purged yet) is not stored.
    purge_below: std::sync::atomic::AtomicU64,
    /// Retention and shard rollover of DynamoDB Streams.
    stream_limits: RwLock<crate::streams::StreamLimits>,
    /// The time of the last stream label minted (labels are unique and increasing).
    stream_label_ms: std::sync::atomic::AtomicU64,
    /// Bounds of the point-in-time recovery undo log.
    pitr_limits: RwLock<PitrLimits>,
    /// Range digest buckets the scrub found different from their records (a bug if ever > 0).
    digest_mismatches: std::sync::atomic::AtomicU64,
    /// The range digest delta log's shape as of the last commit (`None`: read it again).
    digest_log: Mutex<Option<digests::DeltaLog>>,
    /// The write-ahead log (`wal`); `None` while the writer reopens the database. Only the
    /// writer thread locks it.
    wal: Mutex<Option<Wal>>,
    /// With the log: the stream records written since its last checkpoint, kept out of redb.
    stream_overlay: streams::RecordOverlay,
    /// Wakes the index backfill loop (`Engine::run_index_backfills`) when an index is created.
    index_backfill_wake: tokio::sync::Notify,
    /// Set when a TTL index may have a backfill to do (at open, and when one starts); cleared
    /// by the backfill job that finds none.
    ttl_backfill_pending: std::sync::atomic::AtomicBool,
    /// Write jobs ever submitted: the index backfill yields the writer when others came
    /// while its job ran (`Engine::backfill_job`).
    jobs_submitted: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The open database, or the error reads and writes get while it is being reopened.
    fn db(&self) -> Result<Arc<Database>, ApiError> {
        self.db
            .read()
            .expect("database lock is never poisoned")
            .clone()
            .ok_or_else(|| {
                ApiError::new(
                    dynamo_protocol::ErrorKind::ServiceUnavailable,
                    "The store is reopening its database after a storage I/O error; retry shortly (its /health says when it is back)",
                )
            })
    }

    /// Measures the disk; `Some(error)` while it is below the watermark.
    fn refresh_disk(&self) -> Option<ApiError> {
        let mut disk = self.disk.lock().expect("disk lock is never poisoned");
        let verdict = disk.refresh(self.clock.now_unix_ms());
        if let Some(problem) = &disk.status().files_gone {
            return Some(ApiError::new(
                dynamo_protocol::ErrorKind::ServiceUnavailable,
                format!("Writes are refused: {problem}"),
            ));
        }
        match verdict {
            Verdict::Room => None,
            Verdict::Low => Some(low_disk_error(&self.path, disk.status())),
        }
    }

    /// How much the write-ahead log may grow now: half the disk's free bytes above its
    /// watermark (the reserve not counted), as of the batch's measurement, so that the log never
    /// takes the room the checkpoint that empties it needs. A log that may not grow is emptied
    /// by a durable commit of the batch instead (`wal::Appended::TooBig`).
    fn log_room_bytes(&self) -> u64 {
        let disk = self.disk.lock().expect("disk lock is never poisoned");
        let status = disk.status();
        if status.low {
            return 0;
        }
        status
            .free_bytes
            .saturating_sub(status.reserve_held_bytes)
            .saturating_sub(status.free_bytes_min)
            / 2
    }

    fn note_storage_failure(&self, error: &ApiError) {
        let mut status = self.writer_status.lock().expect("status lock is never poisoned");
        status.storage_failures_total += 1;
        status.last_error = Some(error.message.clone());
        status.last_error_at_unix_ms = Some(self.clock.now_unix_ms());
    }
}

/// The error a new write meets below the watermark: the cause, the figures and the fix.
fn low_disk_error(path: &Path, disk: &DiskStatus) -> ApiError {
    let dir = path.parent().unwrap_or(path);
    ApiError::new(
        dynamo_protocol::ErrorKind::ServiceUnavailable,
        format!(
            "Writes are refused: the disk of the data directory {} has {} bytes free, below disk_free_bytes_min ({} bytes). Deletes still work. Free space on that filesystem (or lower --disk-free-bytes-min); writes resume by themselves",
            dir.display(),
            disk.free_bytes,
            disk.free_bytes_min
        ),
    )
}

/// Handle to the store's storage; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Job>,
}

impl Engine {
    /// Opens (or creates) the database under `data_dir` and starts the writer thread, without
    /// the disk watermark or a reserve (embedding and tests: their outcome must not depend on
    /// the host's free space). `switchyard store` opens with [`Engine::open_with`] and the
    /// production settings.
    pub fn open(data_dir: &Path, region: &str, clock: Arc<dyn Clock>) -> Result<Engine, OpenError> {
        let unguarded = EngineOptions {
            disk: crate::disk::DiskSettings {
                free_bytes_min: Some(0),
                reserve_bytes: 0,
            },
            faults: None,
            backup_dir: None,
            cache_bytes: None,
            no_idle_checkpoints: false,
            write_ahead_log: false,
        };
        Engine::open_with(data_dir, region, clock, unguarded)
    }

    /// [`Engine::open`] with the disk watermark's settings (and, in tests, an injected disk).
    pub fn open_with(
        data_dir: &Path,
        region: &str,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Result<Engine, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::Directory {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("store.redb");
        recovery::check_database_not_lost(data_dir).map_err(|problem| OpenError::Lost { problem })?;
        // The disk is measured before the database opens: below the watermark the reserve is
        // given back first, so the open (which commits: its marks, a replay, a repair) finds
        // room on a full disk, and the store starts refusing writes rather than not at all.
        let mut disk = DiskGuard::new(data_dir, options.disk, options.space_probe());
        disk.refresh(clock.now_unix_ms());
        let full = |error: OpenError| match recovery::no_space_left(&error) {
            true => OpenError::DiskFull {
                dir: data_dir.to_path_buf(),
                free_bytes: disk.status().free_bytes,
                source: Box::new(error),
            },
            false => error,
        };
        let (db, mut opened, sync) = recovery::open_database(&path, &options)
            .map_err(|source| OpenError::Database {
                path: path.clone(),
                source: Box::new(source),
            })
            .map_err(full)?;
        let (wal, replayed) =
            Wal::open_and_replay(data_dir, &db, options.write_ahead_log, options.faults.clone(), sync)
                .map_err(|e| full(e.into()))?;
        opened.replayed = replayed;
        let (loaded, iterator_key) = load_catalog(&db, clock.now_unix_ms())
            .map_err(|message| OpenError::Catalog {
                path: path.clone(),
                message,
            })
            .map_err(full)?;
        disk.watch(&path);
        let (replog_head, _) = watch::channel(loaded.replog_head);
        let stream_limits = crate::streams::StreamLimits::from_lookup(|name| std::env::var(name).ok())
            .map_err(|message| OpenError::Setting { message })?;
        let pitr_limits = PitrLimits::from_lookup(|name| std::env::var(name).ok())
            .map_err(|message| OpenError::Setting { message })?;
        let shared = Arc::new(Shared {
            clock_watch: Mutex::new(clock_watch::ClockWatch::default()),
            sweep_hold: Mutex::new(SweepHold::default()),
            db: RwLock::new(Some(Arc::new(db))),
            disk: Mutex::new(disk),
            writer_status: Mutex::new(WriterStatus {
                checkpoint_log_bytes_due: if options.write_ahead_log {
                    WAL_CHECKPOINT_BYTES
                } else {
                    0
                },
                opened,
                ..WriterStatus::default()
            }),
            options,
            region: region.to_string(),
            catalog: RwLock::new(loaded.catalog),
            clock,
            hlc: HybridClock::resume(loaded.hlc_last, loaded.hlc_ceiling),
            path,
            replog_head,
            replog_bytes: std::sync::atomic::AtomicU64::new(loaded.replog_bytes),
            purge_below: std::sync::atomic::AtomicU64::new(0),
            stream_limits: RwLock::new(stream_limits),
            stream_label_ms: std::sync::atomic::AtomicU64::new(0),
            pitr_limits: RwLock::new(pitr_limits),
            digest_mismatches: std::sync::atomic::AtomicU64::new(0),
            digest_log: Mutex::new(None),
            wal: Mutex::new(Some(wal)),
            stream_overlay: streams::RecordOverlay::default(),
            index_backfill_wake: tokio::sync::Notify::new(),
            ttl_backfill_pending: std::sync::atomic::AtomicBool::new(true),
            jobs_submitted: std::sync::atomic::AtomicU64::new(0),
            store_id: store_id_of(&iterator_key),
            iterator_key,
        });
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_JOBS_MAX);
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_shared, receiver))
            .map_err(|source| OpenError::Directory {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let engine = Engine { shared, sender };
        engine.seed_stream_labels();
        Ok(engine)
    }

    /// The key stream iterators are signed with.
    pub fn iterator_key(&self) -> &[u8; crate::streams::ITERATOR_KEY_BYTES] {
        &self.shared.iterator_key
    }

    /// This database's identity: made from the random key the store draws when it creates its
    /// database, so it stays the same across restarts and changes only when the database is
    /// new (a wiped or replaced data directory). Peers compare it between marks
    /// (`global::Replication::observe_peer_store`), and stream records' eventIDs include it
    /// (`streams::write_event_id`). Never 0.
    pub fn store_id(&self) -> u64 {
        self.shared.store_id
    }

    pub fn region(&self) -> &str {
        &self.shared.region
    }

    pub fn now_unix_ms(&self) -> u64 {
        self.shared.clock.now_unix_ms()
    }

    /// The peers' clocks say this region's runs `hold_ms` ahead of the one furthest behind
    /// (replication measures it from every signed request). Until a newer measurement, or for
    /// [`SWEEP_HOLD_MEMORY_MS`] after this one, the sweeps that delete for good by the wall clock
    /// (TTL expiry, stream records and undo entries past retention) run that much behind it: a
    /// clock that jumps ahead (a bad NTP source, a VM restored with the wrong time) then deletes
    /// nothing that the other regions' clocks do not agree is due, and a TTL delete, which
    /// replicates, cannot take items out of every region early.
    ///
    /// The hold is at most [`SWEEP_HOLD_MS_MAX`]. A store with peers starts fully held
    /// ([`Engine::hold_sweeps_until_measured`]) until the first measurement, and a forward step of
    /// its own wall clock holds the sweeps back by the step at once ([`Engine::observe_clock`]).
    pub fn hold_sweeps_back(&self, hold_ms: u64, measured_at_ms: u64) {
        *self.sweep_hold() = SweepHold {
            measured_ms: hold_ms,
            measured_at_ms,
            stepped_ms: 0,
        };
    }

    fn sweep_hold(&self) -> std::sync::MutexGuard<'_, SweepHold> {
        self.shared
            .sweep_hold
            .lock()
            .expect("sweep hold lock is never poisoned")
    }

    /// How far the sweeps hold back from the wall clock now (see [`Engine::hold_sweeps_back`]):
    /// the peers' last measurement while it is remembered (at most [`SWEEP_HOLD_MS_MAX`]), plus
    /// the forward steps of this store's clock since.
    pub fn sweep_hold_ms(&self) -> u64 {
        let hold = *self.sweep_hold();
        let measured = if self.now_unix_ms().saturating_sub(hold.measured_at_ms) > SWEEP_HOLD_MEMORY_MS {
            0
        } else {
            hold.measured_ms
        };
        measured.min(SWEEP_HOLD_MS_MAX).saturating_add(hold.stepped_ms)
    }

    /// A store with peers: until replication has measured a peer's clock (or
    /// [`SWEEP_HOLD_MEMORY_MS`] passes), the sweeps hold back as far as they may — a store
    /// restarted with a clock gone wrong deletes nothing before it can compare.
    pub fn hold_sweeps_until_measured(&self) {
        self.hold_sweeps_back(SWEEP_HOLD_MS_MAX, self.now_unix_ms());
    }

    /// The time by which the sweeps that delete for good judge what is due: the wall clock,
    /// held back by how far the furthest-behind peer's clock runs behind it.
    pub fn sweep_now_ms(&self) -> u64 {
        self.now_unix_ms().saturating_sub(self.sweep_hold_ms())
    }

    /// Compares the wall clock with the monotonic clock (the TTL sweeper does, once a second);
    /// a step since the last call is logged and counted. Returns it (ms, negative: back).
    pub fn observe_clock(&self) -> Option<i64> {
        let wall_ms = self.now_unix_ms();
        let step = self
            .shared
            .clock_watch
            .lock()
            .expect("clock watch lock is never poisoned")
            .observe(std::time::Instant::now(), wall_ms);
        if let Some(step) = step {
            // A forward step holds the sweeps back by the step until the peers' clocks say
            // otherwise (their next measurement replaces it); without peers for as long as the
            // store runs. A backward step gives back what forward steps held.
            {
                let mut hold = self.sweep_hold();
                hold.stepped_ms = if step > 0 {
                    hold.stepped_ms.saturating_add(step.unsigned_abs())
                } else {
                    hold.stepped_ms.saturating_sub(step.unsigned_abs())
                };
            }
            tracing::warn!(
                step_ms = step,
                hold_ms = self.sweep_hold_ms(),
                "the wall clock stepped {} by {} ms: TTL expiry, the point-in-time recovery window and restore times, stream iterator ages and replication timestamps follow it; check the time synchronisation (NTP) of this host. TTL expiry and the retention of stream records and the undo log now hold back {} ms from the wall clock{}",
                if step > 0 { "forward" } else { "back" },
                step.unsigned_abs(),
                self.sweep_hold_ms(),
                if step > 0 {
                    " (until a peer's clock is measured; without peers until the clock steps back, or a restart if the new time is right)"
                } else {
                    ""
                }
            );
        }
        step
    }

    /// The wall clock's steps seen so far.
    pub fn clock_status(&self) -> ClockStatus {
        self.shared
            .clock_watch
            .lock()
            .expect("clock watch lock is never poisoned")
            .status()
            .clone()
    }

    pub fn table(&self, name: &str) -> Option<Arc<TableMeta>> {
        self.shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned: holders do not panic")
            .tables
            .get(name)
            .cloned()
    }

    /// The table for an item operation: it exists and is ACTIVE (a table still being restored
    /// from a backup is not, and DynamoDB answers ResourceNotFoundException for it).
    /// A name that breaks DynamoDB's naming rules is a ValidationException, as DynamoDB answers
    /// on every operation, rather than "not found".
    pub fn require_table(&self, name: &str) -> Result<Arc<TableMeta>, ApiError> {
        crate::catalog::validate_table_name(name, "tableName")?;
        self.table(name).filter(|meta| !meta.restoring()).ok_or_else(|| {
            ApiError::resource_not_found(format!("Requested resource not found: Table: {name} not found"))
        })
    }

    /// The directory holding the database file.
    pub fn data_dir(&self) -> &Path {
        self.shared.path.parent().unwrap_or(Path::new("."))
    }

    /// Where on-demand backups are kept: `EngineOptions::backup_dir`, else `DATA_DIR/backups`.
    pub fn backup_dir(&self) -> PathBuf {
        self.shared
            .options
            .backup_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("backups"))
    }

    /// The users' tables (the reserved [`HEALTH_TABLE`] is left out).
    pub fn table_names(&self) -> Vec<String> {
        self.shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned")
            .tables
            .keys()
            .filter(|name| name.as_str() != HEALTH_TABLE)
            .cloned()
            .collect()
    }

    /// The users' tables (the reserved [`HEALTH_TABLE`] is left out).
    pub fn tables(&self) -> Vec<Arc<TableMeta>> {
        self.shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned")
            .tables
            .values()
            .filter(|table| table.name != HEALTH_TABLE)
            .cloned()
            .collect()
    }

    /// Bytes the database file takes on disk.
    pub fn storage_bytes(&self) -> u64 {
        file_bytes(&self.shared)
    }

    /// Runs `job` on the writer thread inside the next batch; resolves after the batch is durable.
    pub async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut WriteContext<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.submit(false, job).await
    }

    /// Like [`Engine::write`], alone in its batch: for jobs that change the catalog.
    pub async fn write_exclusive<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut WriteContext<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.submit(true, job).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        exclusive: bool,
        job: impl FnOnce(&mut WriteContext<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.shared
            .jobs_submitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, result) = oneshot::channel();
        let job = Job {
            exclusive,
            body: Box::new(JobFn { job, reply }),
            close: None,
        };
        self.sender.send(job).await.map_err(|_| {
            ApiError::new(
                dynamo_protocol::ErrorKind::ServiceUnavailable,
                "The store is shutting down",
            )
        })?;
        result
            .await
            .map_err(|_| ApiError::internal("Internal server error: the writer stopped before answering"))?
    }

    /// Stops the writer after a last checkpoint (a graceful shutdown, once nothing else
    /// writes): the file then opens without redb's repair even though other handles keep it
    /// open until the process exits. Writes after it fail with `ServiceUnavailable`. Returns
    /// whether the checkpoint committed (not below the disk watermark, no I/O error).
    pub async fn close(&self) -> bool {
        let (done, committed) = oneshot::channel();
        let (reply, _) = oneshot::channel::<Result<(), ApiError>>();
        let job = Job {
            exclusive: true,
            body: Box::new(JobFn {
                job: |_: &mut WriteContext<'_>| Ok(()),
                reply,
            }),
            close: Some(done),
        };
        if self.sender.send(job).await.is_err() {
            return false;
        }
        committed.await.unwrap_or(false)
    }

    /// Whether the writer has stopped taking writes (the store is closing or closed): a write
    /// refused now was refused for the stop, not for anything it asked.
    pub fn is_stopping(&self) -> bool {
        self.sender.is_closed()
    }

    /// A consistent snapshot for reads.
    pub fn snapshot(&self) -> Result<Snapshot, ApiError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| storage_error("starting a read", e))?;
        let overlay = self.shared.options.write_ahead_log.then(|| Arc::clone(&self.shared));
        Ok(Snapshot { txn, overlay })
    }

    /// Exact item and size counters of a table or one of its indexes.
    pub fn stats(&self, table_id: u64, index: Option<&str>) -> TableStats {
        let read = || -> Result<TableStats, Box<dyn std::error::Error>> {
            let txn = self.shared.db()?.begin_read()?;
            let stats = match txn.open_table(STATS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(TableStats::default()),
                Err(e) => return Err(e.into()),
            };
            Ok(stats
                .get(stats_key(table_id, index).as_str())?
                .map(|v| {
                    let (item_count, size_bytes) = v.value();
                    TableStats { item_count, size_bytes }
                })
                .unwrap_or_default())
        };
        read().unwrap_or_default()
    }

    /// Deletes items whose TTL passed; returns how many. Called by the TTL sweeper.
    pub async fn expire_once(&self) -> Result<usize, ApiError> {
        let now_seconds = self.sweep_now_ms() / 1000;
        let mut deleted = 0;
        for table in self.tables() {
            if !table.ttl.as_ref().is_some_and(|t| t.enabled) {
                continue;
            }
            let due = self
                .snapshot()?
                .expired_keys(&table, now_seconds, TTL_DELETES_PER_SWEEP_MAX)?;
            if due.is_empty() {
                continue;
            }
            let table = Arc::clone(&table);
            deleted += self
                .write(move |context| {
                    let mut count = 0;
                    for (ttl_key, item_key) in due {
                        context
                            .expire(&table, &ttl_key, &item_key, now_seconds)?
                            .then(|| count += 1);
                    }
                    Ok(count)
                })
                .await?;
        }
        Ok(deleted)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}; check the path and its permissions")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open database {path}: {source}; {}", recovery::open_hint(source))]
    Database {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error(
        "cannot open the store: the disk of {dir} is full ({free_bytes} bytes free, the store's reserve file given back if it had one); nothing was changed. Free space on that filesystem and start again. {source}"
    )]
    DiskFull {
        dir: PathBuf,
        free_bytes: u64,
        source: Box<OpenError>,
    },
    #[error("cannot open the store: {problem}; {}", recovery::LOST_HINT)]
    Lost { problem: String },
    #[error("cannot read the table catalog in {path}: {message}")]
    Catalog { path: PathBuf, message: String },
    #[error("cannot open the write-ahead log: {0}")]
    Log(#[from] WalError),
    #[error("{message}")]
    Setting { message: String },
}

/// What startup reads back: the catalog, the HLC high-water mark and the log head.
struct Loaded {
    catalog: Catalog,
    hlc_last: u64,
    hlc_ceiling: u64,
    replog_head: u64,
    replog_bytes: u64,
}

/// The settings holding the store's stream-iterator key, 8 bytes each (made at the first open
/// and kept, so iterators stay valid across restarts).
const ITERATOR_KEY_SETTINGS: [&str; 4] = ["iterator_key_0", "iterator_key_1", "iterator_key_2", "iterator_key_3"];

/// The database identity made from its stream-iterator key (`Engine::store_id`). Never 0.
fn store_id_of(iterator_key: &[u8; crate::streams::ITERATOR_KEY_BYTES]) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"switchyard-store-id")
        .chain_update(iterator_key)
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

/// The store's stream-iterator key, made from the operating system's randomness the first time.
fn iterator_key(txn: &LoggedTxn) -> Result<[u8; crate::streams::ITERATOR_KEY_BYTES], String> {
    let mut settings = txn.open_table(SETTINGS).map_err(|e| e.to_string())?;
    let mut key = [0u8; crate::streams::ITERATOR_KEY_BYTES];
    let mut stored = true;
    for (name, chunk) in ITERATOR_KEY_SETTINGS.iter().zip(key.chunks_mut(8)) {
        match settings.get(*name).map_err(|e| e.to_string())? {
            Some(value) => chunk.copy_from_slice(&value.value().to_le_bytes()),
            None => stored = false,
        }
    }
    if !stored {
        getrandom::fill(&mut key)
            .map_err(|e| format!("the operating system gave no random bytes for the stream-iterator key: {e}"))?;
        for (name, chunk) in ITERATOR_KEY_SETTINGS.iter().zip(key.chunks(8)) {
            let value = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            settings.insert(*name, value).map_err(|e| e.to_string())?;
        }
    }
    Ok(key)
}

/// Every table definition the catalog table holds.
fn read_catalog(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Catalog, String> {
    let mut catalog = Catalog::default();
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (name, bytes) = entry.map_err(|e| e.to_string())?;
        let meta: TableMeta =
            serde_json::from_slice(bytes.value()).map_err(|e| format!("table {}: {e}", name.value()))?;
        catalog.tables.insert(meta.name.clone(), Arc::new(meta));
    }
    Ok(catalog)
}

/// A counter of the settings table; 0 when it was never written.
fn setting_or_zero(settings: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, String> {
    Ok(settings
        .get(name)
        .map_err(|e| e.to_string())?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Reads the catalog and positions, creating what a new store lacks, in a durable quick-repair
/// commit (after the write-ahead log's replay, which it does not log).
fn load_catalog(db: &Database, now_ms: u64) -> Result<(Loaded, [u8; crate::streams::ITERATOR_KEY_BYTES]), String> {
    let txn = LoggedTxn::unrecorded(db.begin_write().map_err(|e| e.to_string())?);
    let mut catalog = read_catalog(&*txn.open_table(CATALOG).map_err(|e| e.to_string())?)?;
    let (hlc_last, hlc_ceiling, replog_head, replog_bytes);
    {
        txn.open_table(STATS).map_err(|e| e.to_string())?;
        txn.open_table(REPLOG).map_err(|e| e.to_string())?;
        let settings = txn.open_table(SETTINGS).map_err(|e| e.to_string())?;
        let read = |name: &str| setting_or_zero(&*settings, name);
        hlc_last = read(HLC_LAST)?;
        hlc_ceiling = read(HLC_CEILING)?;
        replog_head = read(REPLOG_HEAD)?;
        replog_bytes = read(REPLOG_BYTES)?;
        let indexed = read(TOMBSTONE_INDEX_VERSION)?;
        drop(settings);
        if indexed == 0 {
            index_tombstones(&txn, &catalog).map_err(|e| format!("indexing tombstones: {e}"))?;
        }
    }
    if !catalog.tables.contains_key(HEALTH_TABLE) {
        let meta = create_health_table(&txn, now_ms).map_err(|e| format!("creating {HEALTH_TABLE}: {e}"))?;
        catalog.tables.insert(meta.name.clone(), Arc::new(meta));
    }
    let iterator_key = iterator_key(&txn)?;
    let (mut txn, _) = txn.finish();
    txn.set_quick_repair(true);
    txn.commit().map_err(|e| e.to_string())?;
    Ok((
        Loaded {
            catalog,
            hlc_last,
            hlc_ceiling,
            replog_head,
            replog_bytes,
        },
        iterator_key,
    ))
}

/// Creates the reserved [`HEALTH_TABLE`]: regional, key `pk` (string).
fn create_health_table(txn: &LoggedTxn, now_ms: u64) -> Result<TableMeta, String> {
    let request: crate::catalog::CreateTableRequest = serde_json::from_value(serde_json::json!({
        "TableName": HEALTH_TABLE,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }))
    .map_err(|e| e.to_string())?;
    let mut settings = txn.open_table(SETTINGS).map_err(|e| e.to_string())?;
    let id = settings
        .get(NEXT_TABLE_ID)
        .map_err(|e| e.to_string())?
        .map(|v| v.value())
        .unwrap_or(1);
    settings.insert(NEXT_TABLE_ID, id + 1).map_err(|e| e.to_string())?;
    let meta = crate::catalog::table_from_request(&request, id, now_ms as f64 / 1000.0).map_err(|e| e.to_string())?;
    let bytes = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
    let mut catalog = txn.open_table(CATALOG).map_err(|e| e.to_string())?;
    catalog
        .insert(HEALTH_TABLE, bytes.as_slice())
        .map_err(|e| e.to_string())?;
    txn.open_table(bytes_table(&data_table_name(id)))
        .map_err(|e| e.to_string())?;
    Ok(meta)
}

/// The catalog and positions as the database holds them, read without writing (after a
/// reopen, when the disk may be full).
fn read_state(db: &Database) -> Result<Loaded, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let catalog = read_catalog(&txn.open_table(CATALOG).map_err(|e| e.to_string())?)?;
    let settings = txn.open_table(SETTINGS).map_err(|e| e.to_string())?;
    let read = |name: &str| setting_or_zero(&settings, name);
    Ok(Loaded {
        hlc_last: read(HLC_LAST)?,
        hlc_ceiling: read(HLC_CEILING)?,
        replog_head: read(REPLOG_HEAD)?,
        replog_bytes: read(REPLOG_BYTES)?,
        catalog,
    })
}

fn writer_loop(shared: Arc<Shared>, mut receiver: mpsc::Receiver<Job>) {
    let mut pending: Option<Job> = None;
    let mut checkpoints = Checkpoints::new(!shared.options.no_idle_checkpoints);
    loop {
        let mut first = match pending.take() {
            Some(job) => job,
            None => match checkpoints.next_job(&mut receiver) {
                NextJob::Job(job) => job,
                NextJob::Idle => {
                    if !checkpoint_and_schedule(&shared, &mut checkpoints, &mut receiver, None) {
                        return;
                    }
                    continue;
                }
                NextJob::Closed => return,
            },
        };
        if let Some(done) = first.close.take() {
            let committed = matches!(checkpoint_with(&shared, true), Checkpointed::Yes { .. });
            // Later writes are refused at once ("shutting down"), before the closer hears back.
            receiver.close();
            let _ = done.send(committed);
            return;
        }
        let mut batch = vec![first];
        if !batch[0].exclusive {
            while batch.len() < BATCH_JOBS_MAX {
                match receiver.try_recv() {
                    Ok(job) if job.exclusive => {
                        pending = Some(job);
                        break;
                    }
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // From here until the next checkpoint a crash needs redb's repair (set before the
        // batch's submitters hear back, so /health never shows a stale "checkpointed").
        shared
            .writer_status
            .lock()
            .expect("status lock is never poisoned")
            .checkpointed = false;
        // A panic inside the storage engine (an assertion of redb's after an I/O error) must
        // not stop the writer: the batch's submitters get an error (their replies drop) and
        // the database is reopened like after any other storage failure.
        let end =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(&shared, batch))).unwrap_or_else(|_| {
                shared.note_storage_failure(&ApiError::internal("the storage engine panicked while writing a batch"));
                BatchEnd::Poisoned
            });
        checkpoints.wrote();
        if end == BatchEnd::Poisoned && !recovery::recover(&shared, &mut receiver) {
            return;
        }
        // A long log is checkpointed at once, busy or not: it bounds the replay after a crash.
        // Below its full size, not while the last checkpoint's syncs still run: on a slow disk
        // checkpoints would pile up, and their holds (waiting for the queue) would only shrink
        // the next ones.
        let (log_bytes, syncing) = shared
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or((0, false), |wal| (wal.used_bytes(), wal.checkpoint_syncing()));
        shared
            .writer_status
            .lock()
            .expect("status lock is never poisoned")
            .log_bytes = log_bytes;
        let due = log_bytes >= WAL_CHECKPOINT_BYTES || (log_bytes >= checkpoints.sizing.due && !syncing);
        if due && !checkpoint_and_schedule(&shared, &mut checkpoints, &mut receiver, Some(log_bytes)) {
            return;
        }
    }
}

/// A checkpoint, and when the next one is due; one that did not commit is tried again after
/// the interval (the writer stays "dirty"). `covered_bytes`: the log it covers, when the log's
/// size called for it (the next such one is then due after [`CheckpointSizing::due`]).
/// `false`: the engine shut down while the writer reopened the database after an I/O error.
fn checkpoint_and_schedule(
    shared: &Shared,
    checkpoints: &mut Checkpoints,
    receiver: &mut mpsc::Receiver<Job>,
    covered_bytes: Option<u64>,
) -> bool {
    match checkpoint(shared) {
        Checkpointed::Yes { hold_us } => {
            checkpoints.done(file_bytes(shared));
            if let Some(covered) = covered_bytes {
                checkpoints.sizing.checkpointed(covered, hold_us);
                shared
                    .writer_status
                    .lock()
                    .expect("status lock is never poisoned")
                    .checkpoint_log_bytes_due = checkpoints.sizing.due;
            }
            true
        }
        Checkpointed::No(end) => {
            checkpoints.postpone(file_bytes(shared));
            end != BatchEnd::Poisoned || recovery::recover(shared, receiver)
        }
    }
}

/// When the writer next commits a checkpoint (see [`CHECKPOINT_IDLE_MS`]).
struct Checkpoints {
    /// A timer for the idle wait; `None` if it could not be built (then no checkpoints).
    timer: Option<tokio::runtime::Runtime>,
    /// A batch ran since the last checkpoint.
    dirty: bool,
    last: Option<std::time::Instant>,
    /// The least time between checkpoints (see [`CHECKPOINT_INTERVAL_PER_GIB_MS`]).
    interval: std::time::Duration,
    /// The log's size past which the writer checkpoints after a batch, busy or not.
    sizing: CheckpointSizing,
}

enum NextJob {
    Job(Job),
    /// Nothing arrived for the idle time and a checkpoint is due.
    Idle,
    /// Every sender is gone.
    Closed,
}

impl Checkpoints {
    fn new(enabled: bool) -> Checkpoints {
        let timer = enabled
            .then(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|error| tracing::warn!(%error, "no idle checkpoints: building the writer's timer failed"))
                    .ok()
            })
            .flatten();
        Checkpoints {
            timer,
            // Opening commits (the catalog's load), so the first idle moment checkpoints too.
            dirty: true,
            last: None,
            interval: std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS),
            sizing: CheckpointSizing::new(),
        }
    }

    fn wrote(&mut self) {
        self.dirty = true;
    }

    /// A checkpoint committed; `file_bytes`: the file's size now.
    fn done(&mut self, file_bytes: u64) {
        self.dirty = false;
        self.postpone(file_bytes);
    }

    /// The next checkpoint waits the interval from now (after one, or one that did not commit).
    fn postpone(&mut self, file_bytes: u64) {
        self.last = Some(std::time::Instant::now());
        self.interval = checkpoint_interval(file_bytes);
    }

    /// How long to wait for a job before a checkpoint; `None`: none is due.
    fn wait(&self) -> Option<std::time::Duration> {
        if !self.dirty {
            return None;
        }
        let idle = std::time::Duration::from_millis(CHECKPOINT_IDLE_MS);
        let spacing = self.last.map_or(std::time::Duration::ZERO, |last| {
            self.interval.saturating_sub(last.elapsed())
        });
        Some(idle.max(spacing))
    }

    fn next_job(&self, receiver: &mut mpsc::Receiver<Job>) -> NextJob {
        let received = match (self.wait(), &self.timer) {
            (Some(wait), Some(timer)) => {
                match timer.block_on(async { tokio::time::timeout(wait, receiver.recv()).await }) {
                    Ok(received) => received,
                    Err(_) => return NextJob::Idle,
                }
            }
            _ => receiver.blocking_recv(),
        };
        received.map_or(NextJob::Closed, NextJob::Job)
    }
}

/// The log's size after which the writer next checkpoints (with the write-ahead log), from the
/// checkpoints the log's size called for. A checkpoint holds the writer (and every request
/// queued behind it) while redb writes the pages the batches since the last one dirtied: after
/// random writes to many items that grows with the log it covers (a million items: ~12 ms per
/// MiB plus ~5 ms; BENCHMARKS, "Streams"). Its hold is taken as a fixed part (redb's allocator
/// state, a stream's records) plus a part per byte of log, and the log is sized for a hold of
/// [`CHECKPOINT_HOLD_TARGET_US`], between [`WAL_CHECKPOINT_BYTES_MIN`] and
/// [`WAL_CHECKPOINT_BYTES`]. Where writes come back to the same pages (a small table) holds stay
/// short and the log its full size; where the fixed part alone reaches the target, a smaller
/// log would not shorten the hold, and it is its full size too. Pure: the writer feeds it.
#[derive(Clone, Debug)]
struct CheckpointSizing {
    /// The log's size past which the writer checkpoints.
    due: u64,
    /// The estimate of the hold's fixed part, µs.
    fixed_us: u64,
    /// The last checkpoint fed in: the log it covered and its hold.
    last: Option<(u64, u64)>,
}

impl CheckpointSizing {
    fn new() -> CheckpointSizing {
        CheckpointSizing {
            due: WAL_CHECKPOINT_BYTES,
            fixed_us: 0,
            last: None,
        }
    }

    /// A checkpoint the log's size called for covered `covered_bytes` of log and held the
    /// writer `hold_us`.
    fn checkpointed(&mut self, covered_bytes: u64, hold_us: u64) {
        // Two checkpoints of sizes a quarter or more apart tell the two parts apart (closer
        // ones, the hold's noise would decide): the new estimate of the fixed part is averaged
        // with the last, so one noisy pair moves it halfway.
        if let Some((last_bytes, last_us)) = self.last
            && covered_bytes.abs_diff(last_bytes) >= covered_bytes.max(last_bytes) / 4
        {
            let per_byte = (hold_us as f64 - last_us as f64) / (covered_bytes as f64 - last_bytes as f64);
            let fixed = match per_byte > 0.0 {
                true => hold_us as f64 - per_byte * covered_bytes as f64,
                // A hold that does not grow with the log: all of it is fixed.
                false => hold_us as f64,
            };
            let fixed = fixed.clamp(0.0, hold_us as f64) as u64;
            self.fixed_us = (self.fixed_us + fixed) / 2;
        }
        self.last = Some((covered_bytes, hold_us));
        self.due = sized_log_bytes(covered_bytes, hold_us, self.fixed_us);
    }
}

/// The log that would hold the writer [`CHECKPOINT_HOLD_TARGET_US`], given one that covered
/// `covered_bytes` and held it `hold_us`, of which `fixed_us` does not grow with the log.
fn sized_log_bytes(covered_bytes: u64, hold_us: u64, fixed_us: u64) -> u64 {
    let fixed_us = fixed_us.min(hold_us);
    let growing_us = hold_us - fixed_us;
    if fixed_us >= CHECKPOINT_HOLD_TARGET_US || growing_us == 0 {
        return WAL_CHECKPOINT_BYTES;
    }
    let sized = u128::from(covered_bytes) * u128::from(CHECKPOINT_HOLD_TARGET_US - fixed_us) / u128::from(growing_us);
    u64::try_from(sized)
        .unwrap_or(u64::MAX)
        .clamp(WAL_CHECKPOINT_BYTES_MIN, WAL_CHECKPOINT_BYTES)
}

/// The least time between checkpoints for a file of `file_bytes`.
fn checkpoint_interval(file_bytes: u64) -> std::time::Duration {
    let per_gib = (file_bytes >> 30).saturating_mul(CHECKPOINT_INTERVAL_PER_GIB_MS);
    std::time::Duration::from_millis(per_gib.max(CHECKPOINT_INTERVAL_MIN_MS))
}

/// The database file's size (0 if it cannot be read).
fn file_bytes(shared: &Shared) -> u64 {
    std::fs::metadata(&shared.path).map_or(0, |meta| meta.len())
}

/// Whether a checkpoint committed.
#[derive(Debug, PartialEq, Eq)]
enum Checkpointed {
    /// Committed, holding the writer this long.
    Yes { hold_us: u64 },
    /// Skipped (disk below the watermark) or failed; with what the writer does next.
    No(BatchEnd),
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_checkpoint_is_due_only_after_a_write_and_not_more_often_than_the_interval() {
        let mut checkpoints = Checkpoints::new(true);
        assert_eq!(
            checkpoints.wait(),
            Some(Duration::from_millis(CHECKPOINT_IDLE_MS)),
            "opening commits: the first idle moment checkpoints"
        );
        checkpoints.done(0);
        assert_eq!(checkpoints.wait(), None, "nothing written since: no checkpoint due");
        checkpoints.wrote();
        let wait = checkpoints.wait().expect("due after a write");
        assert!(wait >= Duration::from_millis(CHECKPOINT_IDLE_MS), "{wait:?}");
        checkpoints.done(0);
        assert_eq!(checkpoints.wait(), None, "an idle writer checkpoints once");
        checkpoints.wrote();
        let wait = checkpoints.wait().expect("due after the next write");
        assert!(
            wait > Duration::from_millis(CHECKPOINT_IDLE_MS)
                && wait <= Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS),
            "spaced by the interval from the last one: {wait:?}"
        );
    }

    #[test]
    fn a_checkpoint_that_did_not_commit_is_tried_again_after_the_interval() {
        let mut checkpoints = Checkpoints::new(true);
        checkpoints.postpone(0);
        let wait = checkpoints.wait().expect("still due");
        assert!(wait > Duration::from_millis(CHECKPOINT_IDLE_MS), "{wait:?}");
    }

    /// Feeds `sizing` checkpoints whose hold is `hold(bytes)` µs, `rounds` times; the sizes due.
    fn settle(sizing: &mut CheckpointSizing, hold: impl Fn(u64) -> u64, rounds: usize) -> Vec<u64> {
        (0..rounds)
            .map(|_| {
                let covered = sizing.due;
                sizing.checkpointed(covered, hold(covered));
                sizing.due
            })
            .collect()
    }

    #[test]
    fn the_log_a_checkpoint_covers_is_sized_for_the_hold_the_last_one_showed() {
        let mib = 1u64 << 20;
        let target = CHECKPOINT_HOLD_TARGET_US;
        // Short holds (a small table's pages, written again and again): the whole log.
        let mut small = CheckpointSizing::new();
        assert_eq!(settle(&mut small, |_| target / 4, 5), vec![WAL_CHECKPOINT_BYTES; 5]);
        // A hold in proportion to the log: the log that holds the writer for the target.
        assert_eq!(sized_log_bytes(8 * mib, 4 * target, 0), 2 * mib);
        assert_eq!(sized_log_bytes(8 * mib, 2 * target, 0), 4 * mib);
        // Never below the floor, whatever the hold (a hold of 0 µs is all fixed).
        assert_eq!(sized_log_bytes(8 * mib, 1_000 * target, 0), WAL_CHECKPOINT_BYTES_MIN);
        assert_eq!(sized_log_bytes(8 * mib, 0, 0), WAL_CHECKPOINT_BYTES);
        assert_eq!(sized_log_bytes(u64::MAX, 1, 0), WAL_CHECKPOINT_BYTES);
        // A million items (~5 ms plus ~12 ms per MiB): it settles where the hold is the target.
        let mut many = CheckpointSizing::new();
        let hold = |bytes: u64| 5_000 + bytes * 12_000 / mib;
        let due = *settle(&mut many, hold, 20).last().expect("sized");
        let settled = (target - 5_000) * mib / 12_000;
        assert!(due.abs_diff(settled) < settled / 20, "{due} against {settled}");
        // (Where it settles does not depend on the estimate of the fixed part, only how fast
        // it gets there: the estimate only moves when sizes a quarter apart are fed in.)
        assert!(many.fixed_us > 0 && many.fixed_us <= 5_000, "{many:?}");
    }

    #[test]
    fn a_hold_mostly_fixed_keeps_the_log_whole() {
        let mib = 1u64 << 20;
        // 25 ms whatever the log (the allocator state of a big file, a slow disk's queue) and
        // 1 ms per MiB: a smaller log would not bring the hold to the target.
        let mut sizing = CheckpointSizing::new();
        let dues = settle(&mut sizing, |bytes| 25_000 + bytes * 1_000 / mib, 12);
        assert!(
            dues[dues.len() - 4..].iter().all(|due| *due == WAL_CHECKPOINT_BYTES),
            "{dues:?}"
        );
        // A hold that does not grow with the log at all: the same.
        let mut flat = CheckpointSizing::new();
        let dues = settle(&mut flat, |_| 30_000, 12);
        assert!(
            dues[dues.len() - 4..].iter().all(|due| *due == WAL_CHECKPOINT_BYTES),
            "{dues:?}"
        );
    }

    #[test]
    fn big_files_checkpoint_less_often() {
        let gib = 1u64 << 30;
        assert_eq!(
            checkpoint_interval(0),
            Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS)
        );
        assert_eq!(
            checkpoint_interval(gib - 1),
            Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS)
        );
        assert_eq!(
            checkpoint_interval(20 * gib),
            Duration::from_millis(20 * CHECKPOINT_INTERVAL_PER_GIB_MS)
        );
        assert!(checkpoint_interval(u64::MAX) > checkpoint_interval(20 * gib));
        let mut checkpoints = Checkpoints::new(true);
        checkpoints.done(20 * gib);
        checkpoints.wrote();
        let wait = checkpoints.wait().expect("due");
        assert!(wait > Duration::from_millis(CHECKPOINT_INTERVAL_MIN_MS), "{wait:?}");
    }

    #[test]
    fn without_checkpoints_the_writer_just_waits() {
        let mut checkpoints = Checkpoints::new(false);
        checkpoints.wrote();
        assert!(checkpoints.timer.is_none());
        let (sender, mut receiver) = mpsc::channel::<Job>(1);
        drop(sender);
        assert!(matches!(checkpoints.next_job(&mut receiver), NextJob::Closed));
    }
}

/// The writer's checkpoint (`recovery::commit_checkpoint`), counted in the status. Skipped
/// below the disk watermark (it allocates pages).
fn checkpoint(shared: &Shared) -> Checkpointed {
    checkpoint_with(shared, false)
}

/// [`checkpoint`], or the close's (`closing`: it also marks the database closed cleanly).
fn checkpoint_with(shared: &Shared, closing: bool) -> Checkpointed {
    if shared.refresh_disk().is_some() {
        return Checkpointed::No(BatchEnd::Done);
    }
    let Ok(db) = shared.db() else {
        return Checkpointed::No(BatchEnd::Poisoned);
    };
    let started = std::time::Instant::now();
    // With the log, a checkpoint's syncs run on the backend's thread (`deferred`), except the
    // close's, which must be durable when the close says so.
    let sync = match closing {
        true => None,
        false => shared
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(Wal::sync_handle),
    };
    // The stream records kept out of redb since the last checkpoint go in with this one.
    let moved = shared.stream_overlay.all();
    let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), redb::Error> {
        let number = match &sync {
            Some(handle) => {
                let (committed, number) = handle.defer(|| recovery::commit_checkpoint(&db, false, &moved));
                committed?;
                Some(number)
            }
            None => {
                recovery::commit_checkpoint(&db, closing, &moved)?;
                None
            }
        };
        shared.stream_overlay.forget(moved.iter().map(|(key, _)| *key));
        // Everything logged so far is in redb now: the log goes on in its other region (or
        // starts again), once what that region holds is durable.
        if let Some(wal) = shared
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            wal.checkpointed(number);
        }
        Ok(())
    }));
    match committed {
        Ok(Ok(())) => {
            let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::debug!(took_us, "checkpoint committed");
            let mut status = shared.writer_status.lock().expect("status lock is never poisoned");
            status.checkpoints_total += 1;
            status.last_checkpoint_unix_ms = Some(shared.clock.now_unix_ms());
            status.last_checkpoint_us = took_us;
            status.log_bytes = 0;
            status.checkpointed = true;
            status.checkpoint_syncing = sync.is_some();
            Checkpointed::Yes { hold_us: took_us }
        }
        Ok(Err(error)) => {
            shared.note_storage_failure(&storage_error("committing a checkpoint", error));
            // A deferred sync that failed leaves redb unaware: the database is reopened.
            let deferred_failed = shared
                .wal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|wal| wal.sync_failure().is_some());
            match deferred_failed {
                true => Checkpointed::No(BatchEnd::Poisoned),
                false => Checkpointed::No(recovery::end_of_failed_batch(&db)),
            }
        }
        Err(_) => {
            shared.note_storage_failure(&ApiError::internal(
                "the storage engine panicked while committing a checkpoint",
            ));
            Checkpointed::No(BatchEnd::Poisoned)
        }
    }
}

/// How a batch ended for the writer.
#[derive(Debug, PartialEq, Eq)]
enum BatchEnd {
    /// Committed, or failed with the database still usable.
    Done,
    /// The database refuses everything after an I/O error: close and reopen it.
    Poisoned,
}

fn run_batch(shared: &Shared, batch: Vec<Job>) -> BatchEnd {
    let low_disk = shared.refresh_disk();
    let db = match shared.db() {
        Ok(db) => db,
        Err(error) => {
            for job in batch {
                job.body.refuse(error.clone());
            }
            return BatchEnd::Poisoned;
        }
    };
    let txn = match db.begin_write() {
        Ok(txn) if shared.options.write_ahead_log => LoggedTxn::new(txn),
        Ok(txn) => LoggedTxn::unrecorded(txn),
        Err(error) => {
            // The jobs never ran, so they mutated nothing.
            let error = storage_error("starting a write", error);
            shared.note_storage_failure(&error);
            for job in batch {
                job.body.refuse(error.clone());
            }
            return recovery::end_of_failed_batch(&db);
        }
    };
    // Every change goes through `txn`, which records it for the write-ahead log (`commit`).
    let mut context = WriteContext {
        txn: &txn,
        shared,
        stats: HashMap::new(),
        catalog_changes: Vec::new(),
        failed: None,
        log: None,
        low_disk,
        mutations: 0,
        job_mutations_from: 0,
        refused_for_space: false,
        ttl_delete: false,
        pitr_ms: None,
        streams: streams::StreamBatch::default(),
        digests: digests::DigestBatch::default(),
        log_block: LogBlock::default(),
        stream_blocks: streams::StagedBlocks {
            keep_out: shared.options.write_ahead_log,
            ..streams::StagedBlocks::default()
        },
    };
    let completions: Vec<Completion> = batch
        .into_iter()
        .map(|job| {
            context.job_mutations_from = context.mutations;
            job.body.run(&mut context)
        })
        .collect();
    if context.failed.is_none()
        && let Err(error) = context.flush_streams()
    {
        context.fail("writing stream metadata", error);
    }
    if context.failed.is_none()
        && let Err(error) = context.flush_digests()
    {
        context.fail("writing range digests", error);
    }
    if context.failed.is_none()
        && let Err(error) = context.flush_log()
    {
        context.fail("appending to the replication log", error);
    }
    let digest_log = context.digests.log;
    let WriteContext {
        stats,
        catalog_changes,
        failed,
        log,
        refused_for_space,
        stream_blocks,
        ..
    } = context;
    let outcome = match failed {
        Some(error) => Err(error),
        None => flush_stats(&txn, stats)
            .and_then(|()| save_hlc(&txn, shared.hlc.last(), shared.hlc.ceiling()))
            .and_then(|()| log.map_or(Ok(()), |log| save_log_position(&txn, log))),
    };
    let mut reopen = false;
    let outcome = match outcome {
        Ok(()) => commit(shared, txn, stream_blocks).map_err(|(error, after_logging)| {
            reopen = after_logging;
            error
        }),
        Err(error) => {
            // Dropping aborts; unlike `abort()` it also copes with a transaction whose storage
            // failed (redb asserts on an explicit abort then, and the writer would die).
            drop(txn);
            Err(error)
        }
    };
    let end = match &outcome {
        Err(error) if !refused_for_space => {
            shared.note_storage_failure(error);
            if reopen {
                BatchEnd::Poisoned
            } else {
                recovery::end_of_failed_batch(&db)
            }
        }
        _ => BatchEnd::Done,
    };
    if let (Ok(()), Some(log)) = (&outcome, log) {
        shared
            .replog_bytes
            .store(log.bytes, std::sync::atomic::Ordering::SeqCst);
        shared.replog_head.send_replace(log.head);
    }
    {
        // The delta log as this batch left it, or read again after a batch that did not commit.
        let mut known = shared.digest_log.lock().expect("digest log lock is never poisoned");
        match &outcome {
            Ok(()) if digest_log.is_some() => *known = digest_log,
            Ok(()) => {}
            Err(_) => *known = None,
        }
    }
    if outcome.is_ok() {
        let mut catalog = shared.catalog.write().expect("catalog lock is never poisoned");
        for change in catalog_changes {
            match change {
                CatalogChange::Put(meta) => {
                    catalog.tables.insert(meta.name.clone(), meta);
                }
                CatalogChange::Remove(name) => {
                    catalog.tables.remove(&name);
                }
            }
        }
    }
    for completion in completions {
        completion(outcome.clone());
    }
    end
}

/// Commits a batch: its record appended to the write-ahead log and synced, then the transaction
/// committed without redb's own sync (`Durability::None`). A batch too big for the log commits
/// durably instead, with quick repair (a checkpoint holding it). The error's flag: the record
/// may be in the log (the append failed partway, or the commit after it), so the database must
/// be reopened, which replays the log, before anything else is logged.
///
/// `blocks`: the batch's stream blocks kept out of redb, published to the overlay between the
/// append and the commit; a durable commit instead inserts them, and every block the overlay
/// holds, since it restarts the log (`streams::RecordOverlay`).
fn commit(shared: &Shared, txn: LoggedTxn, blocks: streams::StagedBlocks) -> Result<(), (ApiError, bool)> {
    let mut guard = shared.wal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(wal) = guard.as_mut() else {
        return Err((
            ApiError::new(
                dynamo_protocol::ErrorKind::ServiceUnavailable,
                "The store is reopening its database; retry shortly",
            ),
            true,
        ));
    };
    if let Some(failure) = wal.sync_failure() {
        return Err((
            storage_error("making a checkpoint durable", std::io::Error::other(failure)),
            true,
        ));
    }
    let seq = wal.next_seq();
    txn.open_table(SETTINGS)
        .and_then(|mut settings| {
            settings.insert(wal::WAL_APPLIED, seq).map_err(TableError::Storage)?;
            Ok(())
        })
        .map_err(|e| (storage_error("numbering the batch", e), false))?;
    let (mut txn, redo) = txn.finish();
    let appended = match &redo {
        // Without the log every batch is a durable commit of redb's own (one sync; after a
        // crash redb repairs the file unless the last commit was a checkpoint), unrecorded.
        _ if !shared.options.write_ahead_log => Ok(Appended::Durable),
        Some(redo) => wal.append(redo, shared.log_room_bytes()),
        None => Ok(Appended::TooBig),
    };
    match appended {
        Ok(Appended::Logged) => {
            shared.stream_overlay.publish(blocks.staged);
            txn.set_durability(redb::Durability::None)
                .map_err(|e| (storage_error("committing", e), true))?;
            txn.commit().map_err(|e| (storage_error("committing", e), true))?;
            shared.stream_overlay.forget(blocks.moved);
            Ok(())
        }
        Ok(Appended::Durable) => {
            txn.commit().map_err(|e| (storage_error("committing", e), false))?;
            wal.skip_committed();
            Ok(())
        }
        Ok(Appended::TooBig) => {
            // Blocks a retention sweep of this batch moved are in the transaction already (and
            // may have been trimmed since): not again.
            let held = shared.stream_overlay.all();
            let moved: std::collections::HashSet<(u64, u64)> = blocks.moved.iter().copied().collect();
            let mut moving: Vec<streams::Block> =
                held.iter().filter(|(key, _)| !moved.contains(key)).cloned().collect();
            moving.extend(blocks.staged);
            moving.sort_unstable_by_key(|(key, _)| *key);
            streams::move_blocks(&txn, &moving).map_err(|e| (storage_error("storing stream records", e), false))?;
            txn.set_quick_repair(true);
            txn.commit().map_err(|e| (storage_error("committing", e), false))?;
            wal.skip_committed();
            shared
                .stream_overlay
                .forget(held.into_iter().map(|(key, _)| key).chain(blocks.moved));
            Ok(())
        }
        Err(error) => {
            drop(txn);
            Err((storage_error("appending to the write-ahead log", error), true))
        }
    }
}

fn save_hlc(txn: &LoggedTxn, last: u64, ceiling: u64) -> Result<(), ApiError> {
    let mut settings = txn
        .open_table(SETTINGS)
        .map_err(|e| storage_error("opening settings", e))?;
    settings
        .insert(HLC_LAST, last)
        .map_err(|e| storage_error("saving the clock", e))?;
    settings
        .insert(HLC_CEILING, ceiling)
        .map_err(|e| storage_error("saving the clock", e))?;
    Ok(())
}

fn flush_stats(txn: &LoggedTxn, deltas: HashMap<String, (i64, i64)>) -> Result<(), ApiError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut table = txn
        .open_table(STATS)
        .map_err(|e| storage_error("opening counters", e))?;
    for (key, (count_delta, size_delta)) in deltas {
        let (count, size) = table
            .get(key.as_str())
            .map_err(|e| storage_error("reading counters", e))?
            .map(|v| v.value())
            .unwrap_or((0, 0));
        let count = (count as i64 + count_delta).max(0) as u64;
        let size = (size as i64 + size_delta).max(0) as u64;
        table
            .insert(key.as_str(), (count, size))
            .map_err(|e| storage_error("writing counters", e))?;
    }
    Ok(())
}

/// What a write job sees: the open write transaction of its batch.
pub struct WriteContext<'a> {
    txn: &'a LoggedTxn,
    shared: &'a Shared,
    stats: HashMap<String, (i64, i64)>,
    catalog_changes: Vec<CatalogChange>,
    /// A storage failure after a job began mutating: the whole batch must not commit.
    failed: Option<ApiError>,
    /// The replication log's new head, if this batch appended to it.
    /// The log's head and byte count after this batch's appends (none yet: `None`).
    log: Option<LogPosition>,
    /// Set while the disk is below the watermark: the error new items are refused with.
    low_disk: Option<ApiError>,
    /// Mutations made in this batch, and the count when the running job started: a job
    /// refused for space before its first mutation fails alone, after it the whole batch.
    mutations: u64,
    job_mutations_from: u64,
    /// The batch failed because a job that had mutated met the watermark (not a storage fault).
    refused_for_space: bool,
    /// Set while a TTL expiry deletes an item: its stream record names the TTL service.
    ttl_delete: bool,
    /// The time of this batch's changes in the PITR undo log, once one was logged.
    pitr_ms: Option<u64>,
    /// The streams this batch appends to, written back before it commits.
    streams: streams::StreamBatch,
    /// The batch's changes to the range digests, written before it commits.
    digests: digests::DigestBatch,
    /// Where the batch's stream blocks go (with the log: the overlay, after the log).
    stream_blocks: streams::StagedBlocks,
    /// The changes this batch appends to the replication log, stored as one block.
    log_block: LogBlock,
}

/// The index entry key of an item, if the item has the index's key attributes: the partition
/// prefix of its partition values (`keys::partition_prefix_of`), its sort values' encodings in
/// KeySchema order, then the item's stored key.
pub fn index_entry_key(hash: KeyHash, index: &IndexMeta, item: &Item, item_key: &[u8]) -> Option<Vec<u8>> {
    let partition = index_key_values(item, index.key.partition_attributes(), catalog::PARTITION_KEY_BYTES_MAX)?;
    let sort = index_key_values(item, index.key.sort_attributes(), catalog::SORT_KEY_BYTES_MAX)?;
    let mut out = keys::partition_prefix_of(hash, &partition);
    for value in sort {
        keys::encode_key_value(value, &mut out);
    }
    out.extend_from_slice(item_key);
    Some(out)
}

/// The item's values for a group of index key attributes (the partition's or the sort's), or
/// `None` when the item has no entry in the index: an attribute is missing, or is an *index key
/// violation* (DynamoDB's term: the wrong type, an empty string or binary, or over
/// `limit_bytes`, alone or together with the group's other values). Writes refuse violations
/// once the index is ACTIVE, so only items older than the index or written while it filled
/// (both left out, as DynamoDB leaves them out) or replicated from elsewhere carry one.
fn index_key_values<'i, 'a>(
    item: &'i Item,
    attributes: impl Iterator<Item = &'a catalog::KeyAttribute>,
    limit_bytes: usize,
) -> Option<Vec<&'i AttributeValue>> {
    let mut values = Vec::new();
    let mut total_bytes = 0;
    for attribute in attributes {
        let value = item.get(&attribute.name)?;
        let size = value.size_bytes();
        if !attribute.value_type.matches(value) || size == 0 {
            return None;
        }
        total_bytes += size;
        values.push(value);
    }
    (total_bytes <= limit_bytes).then_some(values)
}

/// The stored key of an item under `schema` (the item must carry the key attributes).
pub fn key_of(hash: KeyHash, schema: &KeySchema, item: &Item) -> Result<Vec<u8>, ApiError> {
    let partition = item
        .get(&schema.partition.name)
        .ok_or_else(|| ApiError::validation("The provided key element does not match the schema"))?;
    let sort = match &schema.sort {
        Some(sort) => Some(
            item.get(&sort.name)
                .ok_or_else(|| ApiError::validation("The provided key element does not match the schema"))?,
        ),
        None => None,
    };
    Ok(keys::item_key(hash, partition, sort))
}

fn ttl_seconds(table: &TableMeta, item: &Item) -> Option<u64> {
    let spec = table.ttl.as_ref().filter(|t| t.enabled)?;
    match item.get(&spec.attribute)? {
        // Fractional seconds count from their whole second, as on DynamoDB.
        AttributeValue::N(n) => n.floor_i64().and_then(|v| u64::try_from(v).ok()),
        _ => None,
    }
}

fn ttl_entry_key(seconds: u64, item_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + item_key.len());
    out.extend_from_slice(&seconds.to_be_bytes());
    out.extend_from_slice(item_key);
    out
}

impl WriteContext<'_> {
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    pub fn now_unix_ms(&self) -> u64 {
        self.shared.clock.now_unix_ms()
    }

    /// The current definition of `name`, checked to be the same table the request validated
    /// against (it may have been deleted and created again meanwhile).
    pub fn current_table(&self, meta: &TableMeta) -> Result<(), ApiError> {
        let catalog = self.shared.catalog.read().expect("catalog lock is never poisoned");
        match catalog.tables.get(&meta.name) {
            Some(current) if current.id == meta.id => Ok(()),
            _ => Err(ApiError::resource_not_found(format!(
                "Requested resource not found: Table: {} not found",
                meta.name
            ))),
        }
    }

    /// The table's definition as committed now (an exclusive job runs alone, after every earlier
    /// commit): the base for a change read-modify-written by a catalog job, so concurrent
    /// changes (two TagResource calls, say) do not overwrite each other. Fails as
    /// [`WriteContext::current_table`] does when the table was deleted or recreated.
    pub fn latest_table(&self, meta: &TableMeta) -> Result<Arc<TableMeta>, ApiError> {
        self.current_table(meta)?;
        let catalog = self.shared.catalog.read().expect("catalog lock is never poisoned");
        catalog.tables.get(&meta.name).cloned().ok_or_else(|| {
            ApiError::resource_not_found(format!("Requested resource not found: Table: {} not found", meta.name))
        })
    }

    /// The newest definition of `table` (same name and storage id): one this job put and has
    /// not committed yet, else the committed one; `None` when there is neither (a table this
    /// job is still creating, or one deleted meanwhile).
    fn effective_table(&self, table: &TableMeta) -> Option<Arc<TableMeta>> {
        let pending = self.catalog_changes.iter().rev().find_map(|change| match change {
            CatalogChange::Put(meta) if meta.name == table.name => Some(Some(Arc::clone(meta))),
            CatalogChange::Remove(name) if *name == table.name => Some(None),
            _ => None,
        });
        let found = match pending {
            Some(found) => found,
            None => self
                .shared
                .catalog
                .read()
                .expect("catalog lock is never poisoned")
                .tables
                .get(&table.name)
                .cloned(),
        };
        found.filter(|meta| meta.id == table.id)
    }

    /// Refuses a write that adds data while the disk is below the watermark. Before the job's
    /// first mutation only the job fails; after it, the whole batch (nothing half-done commits).
    fn check_room(&mut self) -> Result<(), ApiError> {
        let Some(error) = self.low_disk.clone() else {
            return Ok(());
        };
        self.shared
            .writer_status
            .lock()
            .expect("status lock is never poisoned")
            .writes_refused_total += 1;
        if self.mutations > self.job_mutations_from {
            self.refused_for_space = true;
            self.failed.get_or_insert_with(|| error.clone());
        }
        Err(error)
    }

    pub(crate) fn fail(&mut self, context: &str, error: impl std::fmt::Display) -> ApiError {
        let error = storage_error(context, error);
        self.failed.get_or_insert_with(|| error.clone());
        error
    }

    pub fn get(&self, table: &TableMeta, key: &[u8]) -> Result<Option<Item>, ApiError> {
        let name = data_table_name(table.id);
        let data = self
            .txn
            .open_table(bytes_table(&name))
            .map_err(|e| storage_error("opening a table", e))?;
        let Some(bytes) = data.get(key).map_err(|e| storage_error("reading an item", e))? else {
            return Ok(None);
        };
        let record = record::decode(bytes.value()).map_err(|e| storage_error("decoding an item", e))?;
        Ok((!record.tombstone).then_some(record.item))
    }

    /// Writes `new` at `key` (replacing `old`, which the caller read in this batch), keeping
    /// indexes, TTL entries and counters in step.
    pub fn put(&mut self, table: &TableMeta, key: &[u8], old: Option<&Item>, new: &Item) -> Result<(), ApiError> {
        self.check_room()?;
        let hlc = self.local_stamp(table, key)?;
        let bytes = record::encode_parts(hlc, &self.shared.region, false, new);
        let result = self
            .store(table, key, old, Some(new), Some(&bytes))
            .and_then(|()| self.log_change(table, key, &bytes));
        result.map_err(|e| self.fail("writing an item", e))
    }

    /// Puts items that no item is stored at (tombstones aside), like `put` with no old item
    /// for each, in any order. Keys that follow each other with nothing stored between them
    /// (a run: the items of a partition a loader writes in sort-key order, a restore's items)
    /// go into the data table through redb's write cursor, which packs a run into full leaves:
    /// inserted one by one, ~1 KB records leave every leaf behind the run half empty, and the
    /// table takes twice the disk and page cache (BENCHMARKS.md, "Store at scale"). Each item
    /// is otherwise written, indexed, streamed and logged exactly as `put` writes it.
    ///
    /// A key given twice (BatchWriteItem refuses that, a damaged restore file might not) is
    /// never part of a run: its later item replaces the earlier one, as two puts in a row would.
    pub fn put_new_items(&mut self, table: &TableMeta, mut puts: Vec<(&[u8], &Item)>) -> Result<(), ApiError> {
        // Stable: of a key given twice, the later item is put last.
        puts.sort_by(|a, b| a.0.cmp(b.0));
        let keys: Vec<&[u8]> = puts.iter().map(|(key, _)| *key).collect();
        let joins_next = self.run_joins(table, &keys)?;
        let mut start = 0;
        while start < puts.len() {
            let end = run_end(&joins_next, start);
            if end - start >= RUN_ITEMS_MIN {
                self.put_run(table, &puts[start..end])?;
            } else {
                for (key, item) in &puts[start..end] {
                    let repeated = start > 0 && puts[start - 1].0 == *key;
                    let old = if repeated { self.get(table, key)? } else { None };
                    self.put(table, key, old.as_ref(), item)?;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Which of `keys` (ascending; a key may repeat) can be written in one run with the key
    /// after it: nothing is stored from the key up to and including the next one, and the two
    /// differ. A repeated key joins no run. Reads the first stored key at or after each.
    fn run_joins(&mut self, table: &TableMeta, keys: &[&[u8]]) -> Result<Vec<bool>, ApiError> {
        let mut joins_next = vec![false; keys.len()];
        if keys.len() < RUN_ITEMS_MIN {
            return Ok(joins_next);
        }
        let result = (|| -> Result<(), redb::Error> {
            let data = self.txn.open_table(bytes_table(&data_table_name(table.id)))?;
            for (at, pair) in keys.windows(2).enumerate() {
                let (key, next) = (pair[0], pair[1]);
                let repeated = at > 0 && keys[at - 1] == key;
                if repeated || key == next {
                    continue;
                }
                let stored = data.range::<&[u8]>(key..)?.next().transpose()?;
                joins_next[at] = stored.is_none_or(|(found, _)| found.value() > next);
            }
            Ok(())
        })();
        result.map_err(|e| self.fail("reading items", e))?;
        Ok(joins_next)
    }

    /// Puts a run (see `put_new_items`): keys ascending, nothing stored from the first to the
    /// last.
    fn put_run(&mut self, table: &TableMeta, run: &[(&[u8], &Item)]) -> Result<(), ApiError> {
        self.check_room()?;
        let mut records = Vec::with_capacity(run.len());
        for (key, item) in run {
            let hlc = self.local_stamp(table, key)?;
            records.push(record::encode_parts(hlc, &self.shared.region, false, item));
        }
        let entries: Vec<(&[u8], &Item, &[u8])> = run
            .iter()
            .zip(&records)
            .map(|((key, item), record)| (*key, *item, record.as_slice()))
            .collect();
        self.insert_run(table, &entries)
            .map_err(|e| self.fail("writing items", e))
    }

    /// Stores replicated items (`record`: the stored form their origin wrote) at keys that hold
    /// nothing, not even a tombstone, keys strictly ascending: a repair's or a backfill's items
    /// (`replication::receive::ReplicaStorage::store_absent`). Items with nothing stored
    /// between them go in as runs, as `put_new_items` puts them; each is otherwise written,
    /// indexed, streamed and logged as a replicated change that replaces nothing is.
    pub(crate) fn store_absent_records(
        &mut self,
        table: &TableMeta,
        entries: &[(&[u8], &Item, &[u8])],
    ) -> Result<(), ApiError> {
        let keys: Vec<&[u8]> = entries.iter().map(|(key, _, _)| *key).collect();
        let joins_next = self.run_joins(table, &keys)?;
        let mut start = 0;
        while start < entries.len() {
            let end = run_end(&joins_next, start);
            let result = if end - start >= RUN_ITEMS_MIN {
                self.insert_run(table, &entries[start..end])
            } else {
                entries[start..end].iter().try_for_each(|(key, item, record)| {
                    self.store(table, key, None, Some(item), Some(record))
                        .and_then(|()| self.log_change(table, key, record))
                })
            };
            result.map_err(|e| self.fail("applying replicated changes", e))?;
            start = end;
        }
        Ok(())
    }

    /// Inserts a run's records through redb's write cursor (keys ascending, nothing stored
    /// from the first to the last, no old item at any), then does for each what `store` does
    /// beside the data table, and logs it.
    fn insert_run(&mut self, table: &TableMeta, run: &[(&[u8], &Item, &[u8])]) -> Result<(), redb::Error> {
        let latest = self.effective_table(table);
        let current: &TableMeta = latest.as_deref().unwrap_or(table);
        let entries: Vec<(&[u8], &[u8])> = run.iter().map(|(key, _, record)| (*key, *record)).collect();
        self.txn
            .open_table(bytes_table(&data_table_name(current.id)))?
            .insert_run(&entries)?;
        for (key, item, record) in run {
            self.mutations += 1;
            if self.digests_cover(current.id, key)? {
                let new_hash = digests::hash_of(key, record)?;
                self.note_hashes(current.id, key, None, Some(new_hash));
            }
            self.store_beside(current, key, None, Some(item), Some(record))?;
            self.log_change(table, key, record)?;
        }
        Ok(())
    }

    /// The timestamp of a local write to `key`: newer than the version stored there, even when
    /// a peer's clock ran past the bound and stamped that version further ahead than this
    /// region's clock may go (the stored header is read only then).
    fn local_stamp(&mut self, table: &TableMeta, key: &[u8]) -> Result<u64, ApiError> {
        let (stamp, above_all) = self.shared.hlc.tick_above(self.shared.clock.now_unix_ms());
        // A replica joined here orders its local writes after its join barrier too: the
        // barrier counts writes this region vouched for without holding them (deletes among
        // them may be purged everywhere), so an older local stamp would diverge.
        if !table.is_global() || (above_all && stamp > table.joined_below) {
            return Ok(stamp);
        }
        let existing = {
            let data = self
                .txn
                .open_table(bytes_table(&data_table_name(table.id)))
                .map_err(|e| storage_error("opening a table", e))?;
            let bytes = data.get(key).map_err(|e| storage_error("reading an item", e))?;
            match bytes {
                Some(bytes) => Some(record::hlc(bytes.value()).map_err(|e| storage_error("decoding an item", e))?),
                None => None,
            }
        };
        let floor = (table.joined_below != 0).then_some(table.joined_below);
        Ok(self.shared.hlc.stamp_replacing(stamp, existing.max(floor)))
    }

    /// Deletes the item at `key` (`old`, as read in this batch; `None` if there is none). In a
    /// global table the delete is a tombstone even when nothing is stored here yet: the delete
    /// is a write like any other, and must win over older writes still on their way here
    /// (last writer wins), such as the item's backfill into a replica being created.
    pub fn delete(&mut self, table: &TableMeta, key: &[u8], old: Option<&Item>) -> Result<(), ApiError> {
        let result = if table.is_global() {
            // A global table keeps the delete as a tombstone so it can win over older writes
            // that other regions have not shipped yet.
            let hlc = self.local_stamp(table, key)?;
            let bytes = record::encode_parts(hlc, &self.shared.region, true, &Item::new());
            self.store(table, key, old, None, Some(&bytes))
                .and_then(|()| self.log_change(table, key, &bytes))
        } else if old.is_some() {
            self.store(table, key, old, None, None)
        } else {
            Ok(())
        };
        result.map_err(|e| self.fail("deleting an item", e))
    }

    fn store(
        &mut self,
        table: &TableMeta,
        key: &[u8],
        old: Option<&Item>,
        new: Option<&Item>,
        record: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        self.mutations += 1;
        // Maintain the indexes, stream, TTL and undo log of the table as defined now, not as the
        // request read it before its job was queued: an index created meanwhile (UpdateTable
        // runs alone, between batches) must get this write, and one deleted must not.
        let latest = self.effective_table(table);
        let table: &TableMeta = latest.as_deref().unwrap_or(table);
        {
            let name = data_table_name(table.id);
            // The range digests move by the new record's hash minus the one it replaces.
            let digested = self.digests_cover(table.id, key)?;
            let txn = self.txn;
            let mut data = txn.open_table(bytes_table(&name))?;
            let previous = match record {
                Some(record) => data.insert(key, record)?,
                None => data.remove(key)?,
            };
            if old.is_some()
                && table
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.enabled && s.view_type.old_image())
            {
                self.streams
                    .keep_old_json(previous.as_ref().map(|v| v.value()), &self.shared.region);
            }
            if digested {
                let old_hash = previous.map(|v| digests::hash_of(key, v.value())).transpose()?;
                let new_hash = record.map(|r| digests::hash_of(key, r)).transpose()?;
                self.note_hashes(table.id, key, old_hash, new_hash);
            }
        }
        self.store_beside(table, key, old, new, record)
    }

    /// What a write changes besides the item's own record in the data table: the tombstone
    /// index, the table's statistics, its index entries, stream record, undo log and TTL entry.
    /// `table` is the table as defined now (`effective_table`).
    fn store_beside(
        &mut self,
        table: &TableMeta,
        key: &[u8],
        old: Option<&Item>,
        new: Option<&Item>,
        record: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        if let (None, Some(record)) = (new, record) {
            // A record without an item is a tombstone: index it for the purge.
            let hlc = record::hlc(record).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            let mut tombstones = self.txn.open_table(TOMBSTONES)?;
            tombstones.insert(tombstone_entry_key(hlc, table.id, key).as_slice(), &[][..])?;
        }
        let size = |item: Option<&Item>| item.map(|i| item_size_bytes(i) as i64).unwrap_or(0);
        let presence = |item: Option<&Item>| i64::from(item.is_some());
        let entry = self.stats.entry(stats_key(table.id, None)).or_default();
        entry.0 += presence(new) - presence(old);
        entry.1 += size(new) - size(old);
        for index in &table.indexes {
            let old_entry = old.and_then(|item| index_entry_key(table.key_hash, index, item, key));
            let new_entry = new.and_then(|item| index_entry_key(table.key_hash, index, item, key));
            let name = index_table_name(table.id, &index.name);
            let mut entries = self.txn.open_table(bytes_table(&name))?;
            // The old entry counts only if the storage held it: an index still being
            // backfilled (`index_backfill`) has no entry yet for an item it has not reached.
            let mut old_held = false;
            if let Some(old_entry) = &old_entry
                && new_entry.as_ref() != Some(old_entry)
            {
                old_held = entries.remove(old_entry.as_slice())?.is_some();
            }
            let projected_new = match (&new_entry, new) {
                (Some(entry), Some(item)) => {
                    let projected = index.project(&table.key, item);
                    let bytes = serde_json::to_vec(&projected).expect("serialising an item cannot fail");
                    let replaced = entries.insert(entry.as_slice(), bytes.as_slice())?.is_some();
                    if old_entry.as_ref() == Some(entry) {
                        old_held = replaced;
                    }
                    Some(projected)
                }
                _ => None,
            };
            let projected_old = old_entry
                .as_ref()
                .filter(|_| old_held)
                .and(old)
                .map(|i| index.project(&table.key, i));
            let stats = self.stats.entry(stats_key(table.id, Some(&index.name))).or_default();
            stats.0 += i64::from(projected_new.is_some()) - i64::from(projected_old.is_some());
            stats.1 += size(projected_new.as_ref()) - size(projected_old.as_ref());
        }
        self.stream_append(table, old, new, record)?;
        if table.pitr.is_some() {
            self.pitr_append(table, key, old, new)?;
        }
        if table.ttl.as_ref().is_some_and(|t| t.enabled) {
            let old_ttl = old.and_then(|i| ttl_seconds(table, i));
            let new_ttl = new.and_then(|i| ttl_seconds(table, i));
            if old_ttl != new_ttl {
                let name = ttl_table_name(table.id);
                let mut ttl = self.txn.open_table(bytes_table(&name))?;
                if let Some(seconds) = old_ttl {
                    ttl.remove(ttl_entry_key(seconds, key).as_slice())?;
                }
                if let Some(seconds) = new_ttl {
                    ttl.insert(ttl_entry_key(seconds, key).as_slice(), &[][..])?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the item behind a TTL entry if it is still expired; returns whether it did.
    fn expire(
        &mut self,
        table: &TableMeta,
        ttl_key: &[u8],
        item_key: &[u8],
        now_seconds: u64,
    ) -> Result<bool, ApiError> {
        if self.current_table(table).is_err() {
            return Ok(false);
        }
        let Some(item) = self.get(table, item_key)? else {
            let name = ttl_table_name(table.id);
            let result = self
                .txn
                .open_table(bytes_table(&name))
                .and_then(|mut t| t.remove(ttl_key).map(|_| ()).map_err(Into::into));
            result.map_err(|e| self.fail("removing a TTL entry", e))?;
            return Ok(false);
        };
        match ttl_seconds(table, &item) {
            Some(seconds) if seconds <= now_seconds && now_seconds - seconds <= TTL_IGNORE_OLDER_THAN_SECONDS => {
                self.ttl_delete = true;
                let deleted = self.delete(table, item_key, Some(&item));
                self.ttl_delete = false;
                deleted?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Allocates a storage id for a new table.
    pub fn next_table_id(&mut self) -> Result<u64, ApiError> {
        self.check_room()?;
        self.mutations += 1;
        let result = (|| -> Result<u64, redb::Error> {
            let mut settings = self.txn.open_table(SETTINGS)?;
            let id = settings.get(NEXT_TABLE_ID)?.map(|v| v.value()).unwrap_or(1);
            settings.insert(NEXT_TABLE_ID, id + 1)?;
            Ok(id)
        })();
        result.map_err(|e| self.fail("allocating a table id", e))
    }

    /// Persists a table definition; the in-memory catalog follows after commit.
    pub fn put_table(&mut self, meta: TableMeta) -> Result<(), ApiError> {
        refuse_reserved(&meta.name)?;
        self.check_room()?;
        self.mutations += 1;
        let bytes = serde_json::to_vec(&meta).expect("serialising a table definition cannot fail");
        let result = (|| -> Result<(), redb::Error> {
            let mut catalog = self.txn.open_table(CATALOG)?;
            catalog.insert(meta.name.as_str(), bytes.as_slice())?;
            // Create the data and index tables now so readers never miss them.
            self.txn.open_table(bytes_table(&data_table_name(meta.id)))?;
            for index in &meta.indexes {
                self.txn
                    .open_table(bytes_table(&index_table_name(meta.id, &index.name)))?;
            }
            self.sync_streams(&meta, false)?;
            self.start_digests(meta.id)?;
            Ok(())
        })();
        result.map_err(|e| self.fail("saving a table definition", e))?;
        self.catalog_changes.push(CatalogChange::Put(Arc::new(meta)));
        Ok(())
    }

    pub fn drop_table(&mut self, meta: &TableMeta) -> Result<(), ApiError> {
        refuse_reserved(&meta.name)?;
        // The table as defined now: a DeleteTable that read it before an UpdateTable creating
        // an index committed (it queued behind it) drops that index's storage and counters too
        // (the storage id is never used again: what is left stays on disk for good).
        let latest = self.effective_table(meta);
        let meta: &TableMeta = latest.as_deref().unwrap_or(meta);
        self.mutations += 1;
        let result = (|| -> Result<(), redb::Error> {
            let mut catalog = self.txn.open_table(CATALOG)?;
            catalog.remove(meta.name.as_str())?;
            self.txn.delete_table(bytes_table(&data_table_name(meta.id)))?;
            self.txn.delete_table(bytes_table(&ttl_table_name(meta.id)))?;
            let mut stats = self.txn.open_table(STATS)?;
            stats.remove(stats_key(meta.id, None).as_str())?;
            for index in &meta.indexes {
                self.txn
                    .delete_table(bytes_table(&index_table_name(meta.id, &index.name)))?;
                stats.remove(stats_key(meta.id, Some(&index.name)).as_str())?;
            }
            index_backfill::forget_table(self.txn, meta.id)?;
            let mut settings = self.txn.open_table(SETTINGS)?;
            settings.remove(purged_below_key(meta.id).as_str())?;
            let awaiting: Vec<String> = awaiting_backfills(&*settings)?
                .into_iter()
                .filter(|(id, ..)| *id == meta.id)
                .map(|(id, source, _)| awaiting_backfill_key(id, &source))
                .collect();
            for key in awaiting {
                settings.remove(key.as_str())?;
            }
            drop(settings);
            drop(stats);
            self.sync_streams(meta, true)?;
            self.drop_digests(meta.id)?;
            Ok(())
        })();
        result.map_err(|e| self.fail("deleting a table", e))?;
        self.catalog_changes.push(CatalogChange::Remove(meta.name.clone()));
        Ok(())
    }

    /// Brings the TTL index in line with `next`'s TTL after a change from `previous`: dropped
    /// when the active TTL attribute changes or TTL is disabled, built from the items when it
    /// is enabled (on another attribute too); nothing when the active attribute is the same.
    pub fn align_ttl_index(&mut self, previous: Option<&TtlSpec>, next: &TableMeta) -> Result<(), ApiError> {
        let (before, after) = (TtlSpec::active(previous), TtlSpec::active(next.ttl.as_ref()));
        if before == after {
            return Ok(());
        }
        if before.is_some() {
            self.drop_ttl_index(next)?;
        }
        if after.is_some() {
            // Filled from the items in the background (`index_backfill`); writes keep it
            // from now on.
            self.start_ttl_backfill(next)?;
        }
        Ok(())
    }

    pub fn drop_ttl_index(&mut self, meta: &TableMeta) -> Result<(), ApiError> {
        let result = (|| -> Result<(), redb::Error> {
            self.txn.delete_table(bytes_table(&ttl_table_name(meta.id)))?;
            index_backfill::forget_key(self.txn, &ttl_table_name(meta.id))
        })();
        result.map_err(|e| self.fail("dropping the TTL index", e))
    }

    pub fn drop_index(&mut self, meta: &TableMeta, index: &str) -> Result<(), ApiError> {
        let result = (|| -> Result<(), redb::Error> {
            self.txn.delete_table(bytes_table(&index_table_name(meta.id, index)))?;
            index_backfill::forget(self.txn, meta.id, index)?;
            self.txn
                .open_table(STATS)?
                .remove(stats_key(meta.id, Some(index)).as_str())?;
            Ok(())
        })();
        result.map_err(|e| self.fail("dropping an index", e))
    }
}

/// The reserved health table is the store's own: no request changes or deletes it.
fn refuse_reserved(name: &str) -> Result<(), ApiError> {
    if name == HEALTH_TABLE {
        return Err(ApiError::validation(format!(
            "Table {HEALTH_TABLE} is reserved for the store's write health probe and cannot be changed or deleted; use another table name"
        )));
    }
    Ok(())
}

/// Which stored rows a range read visits.
pub struct RangeRequest<'a> {
    pub table: &'a TableMeta,
    pub index: Option<&'a IndexMeta>,
    pub lower: Bound<Vec<u8>>,
    pub upper: Bound<Vec<u8>>,
    pub reverse: bool,
}

/// One row visited by a range read.
pub struct Row<'a> {
    /// The stored key (for an index: index key followed by the item's table key).
    pub key: &'a [u8],
    pub item: Item,
    /// Bytes read, as DynamoDB counts them toward the 1 MB page and capacity.
    pub size_bytes: usize,
}

/// A read-only, consistent view of storage.
pub struct Snapshot {
    txn: ReadTransaction,
    /// With the write-ahead log: the engine's state, for the stream records kept out of redb
    /// (`streams::RecordOverlay`) and the database as it is when a stream read runs (which
    /// takes a read transaction of its own). Not a handle of the database: a snapshot must not
    /// keep a database the writer reopens open.
    overlay: Option<Arc<Shared>>,
}

impl Snapshot {
    pub fn get(&self, table: &TableMeta, key: &[u8]) -> Result<Option<Item>, ApiError> {
        let name = data_table_name(table.id);
        let data = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        let Some(bytes) = data.get(key).map_err(|e| storage_error("reading an item", e))? else {
            return Ok(None);
        };
        let record = record::decode(bytes.value()).map_err(|e| storage_error("decoding an item", e))?;
        Ok((!record.tombstone).then_some(record.item))
    }

    /// Visits rows in key order (or reverse) until `visit` breaks.
    pub fn range(
        &self,
        request: &RangeRequest<'_>,
        mut visit: impl FnMut(Row<'_>) -> ControlFlow<()>,
    ) -> Result<(), ApiError> {
        let name = match request.index {
            Some(index) => index_table_name(request.table.id, &index.name),
            None => data_table_name(request.table.id),
        };
        let table = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(storage_error("opening a table", e)),
        };
        let bounds = (as_slice_bound(&request.lower), as_slice_bound(&request.upper));
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) = bounds
            && l > u
        {
            return Ok(());
        }
        let range = table
            .range::<&[u8]>(bounds)
            .map_err(|e| storage_error("reading a range", e))?;
        let mut step = |entry: Result<
            (
                redb::AccessGuard<'_, &'static [u8]>,
                redb::AccessGuard<'_, &'static [u8]>,
            ),
            redb::StorageError,
        >|
         -> Result<ControlFlow<()>, ApiError> {
            let (key, value) = entry.map_err(|e| storage_error("reading a range", e))?;
            let bytes = value.value();
            let item = if request.index.is_some() {
                serde_json::from_slice(bytes).map_err(|e| storage_error("decoding an index entry", e))?
            } else {
                let record = record::decode(bytes).map_err(|e| storage_error("decoding an item", e))?;
                if record.tombstone {
                    return Ok(ControlFlow::Continue(()));
                }
                record.item
            };
            let size_bytes = item_size_bytes(&item);
            Ok(visit(Row {
                key: key.value(),
                item,
                size_bytes,
            }))
        };
        if request.reverse {
            for entry in range.rev() {
                if step(entry)?.is_break() {
                    break;
                }
            }
        } else {
            for entry in range {
                if step(entry)?.is_break() {
                    break;
                }
            }
        }
        Ok(())
    }

    fn expired_keys(
        &self,
        table: &TableMeta,
        now_seconds: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ApiError> {
        let name = ttl_table_name(table.id);
        let ttl = match self.txn.open_table(bytes_table(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage_error("opening the TTL index", e)),
        };
        let oldest = now_seconds.saturating_sub(TTL_IGNORE_OLDER_THAN_SECONDS).to_be_bytes();
        let upper = (now_seconds + 1).to_be_bytes();
        let mut out = Vec::new();
        for entry in ttl
            .range::<&[u8]>(&oldest[..]..&upper[..])
            .map_err(|e| storage_error("reading the TTL index", e))?
        {
            let (key, _) = entry.map_err(|e| storage_error("reading the TTL index", e))?;
            let key = key.value().to_vec();
            let item_key = key[8..].to_vec();
            out.push((key, item_key));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl WriteContext<'_> {
    pub fn current_table_named(&self, name: &str) -> bool {
        self.shared
            .catalog
            .read()
            .expect("catalog lock is never poisoned")
            .tables
            .contains_key(name)
    }
}

impl Engine {
    /// Whether the writer thread still takes jobs.
    pub fn writer_alive(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Free slots in the write queue (back-pressure starts at zero).
    pub fn write_queue_free(&self) -> usize {
        self.sender.capacity()
    }

    /// Measures the disk now (releasing or restoring the reserve as the watermark says) and
    /// returns what it saw.
    pub fn disk_status(&self) -> DiskStatus {
        let _ = self.shared.refresh_disk();
        self.shared
            .disk
            .lock()
            .expect("disk lock is never poisoned")
            .status()
            .clone()
    }

    /// The writer's state and counters.
    pub fn writer_status(&self) -> WriterStatus {
        let mut status = self
            .shared
            .writer_status
            .lock()
            .expect("status lock is never poisoned")
            .clone();
        // Not waiting for the log's lock (held across a batch's append and commit): while the
        // writer holds it, the value the last checkpoint left.
        if let Ok(wal) = self.shared.wal.try_lock() {
            status.checkpoint_syncing = wal.as_ref().is_some_and(Wal::checkpoint_syncing);
        }
        (status.stream_overlay_blocks, status.stream_overlay_bytes) = self.shared.stream_overlay.held();
        status
    }
}
