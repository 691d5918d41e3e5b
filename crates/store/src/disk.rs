//! The data directory's disk: the free-space watermark (like Elasticsearch's flood stage), the
//! reserve file that lets deletes commit on a full disk, and a fault-injecting storage backend
//! for tests.
//!
//! Below the watermark the store refuses new writes but still takes deletes, TTL expiry and
//! replicated tombstones (they are how space comes back); writes resume by themselves once the
//! space is there again. The reserve is a preallocated file in the data directory: while the
//! disk is above the watermark it holds `reserve_bytes`, below it the file is deleted so the
//! deletes that are still accepted (and a database reopen after an I/O error) find room.
//!
//! [`judge`] is the decision, pure; [`DiskGuard`] does the I/O around it (statvfs, the
//! reserve file) and publishes what it saw. Depends on nothing else in the store.

use redb::BackendError;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The watermark's floor when none is configured: 1 GiB...
pub const DISK_FREE_BYTES_MIN_FLOOR_BYTES: u64 = 1 << 30;
/// ...or this share of the filesystem, whichever is larger.
pub const DISK_FREE_PERCENT_MIN: u64 = 5;
/// Bytes the reserve file holds by default.
pub const DISK_RESERVE_BYTES_DEFAULT: u64 = 64 << 20;
/// The largest reserve accepted.
pub const DISK_RESERVE_BYTES_MAX: u64 = 16 << 30;
/// The reserve file's name inside the data directory.
pub const RESERVE_FILE_NAME: &str = "disk-reserve.bin";
/// A reserve that could not be created is tried again after this long at the earliest.
pub const RESERVE_RETRY_INTERVAL_MS: u64 = 10_000;

/// Space on the data directory's filesystem, as an unprivileged process may use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// Measures the free space of the filesystem holding a directory (injected for tests).
pub trait SpaceProbe: Send + Sync + 'static {
    fn space(&self, dir: &Path) -> io::Result<Space>;
}

/// The real filesystem, through `statvfs(3)`.
pub struct Statvfs;

impl SpaceProbe for Statvfs {
    fn space(&self, dir: &Path) -> io::Result<Space> {
        let stat = rustix::fs::statvfs(dir)?;
        Ok(Space {
            available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }
}

/// The watermark for a filesystem of `total_bytes` when none is configured:
/// max(1 GiB, 5 % of the filesystem).
pub fn default_free_bytes_min(total_bytes: u64) -> u64 {
    DISK_FREE_BYTES_MIN_FLOOR_BYTES.max(total_bytes / 100 * DISK_FREE_PERCENT_MIN)
}

/// What the watermark says about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New writes are accepted.
    Room,
    /// New writes are refused; deletes, expiry and tombstones are still accepted.
    Low,
}

/// The pure decision. Free space counts the reserve the store holds (space it can give back
/// at once), so releasing or re-creating the reserve never flips the verdict by itself.
pub fn judge(space: Space, reserve_held_bytes: u64, free_bytes_min: Option<u64>) -> (Verdict, u64, u64) {
    let free = space.available_bytes.saturating_add(reserve_held_bytes);
    let min = free_bytes_min.unwrap_or_else(|| default_free_bytes_min(space.total_bytes));
    let verdict = if free < min { Verdict::Low } else { Verdict::Room };
    (verdict, free, min)
}

/// The watermark's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSettings {
    /// `None`: max(1 GiB, 5 % of the filesystem).
    pub free_bytes_min: Option<u64>,
    /// 0 keeps no reserve file.
    pub reserve_bytes: u64,
}

impl Default for DiskSettings {
    fn default() -> DiskSettings {
        DiskSettings {
            free_bytes_min: None,
            reserve_bytes: DISK_RESERVE_BYTES_DEFAULT,
        }
    }
}

/// What the guard saw last, for `/health` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStatus {
    /// Free bytes including the reserve the store holds; 0 before the first measurement.
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_bytes_min: u64,
    pub low: bool,
    pub reserve_held_bytes: u64,
    /// Why the disk could not be measured or the reserve not kept, if so.
    pub problem: Option<String>,
    /// Set when the database file the store has open is no longer the one at its path
    /// (deleted, or replaced, while the store runs): what it writes is lost at the next start.
    pub files_gone: Option<String>,
}

/// The identity of the file the store has open at a path (device and inode).
struct Watched {
    path: PathBuf,
    identity: (u64, u64),
}

fn identity(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// The I/O around [`judge`]: measures, keeps or releases the reserve, remembers the verdict.
pub struct DiskGuard {
    dir: PathBuf,
    settings: DiskSettings,
    probe: Arc<dyn SpaceProbe>,
    reserve_held_bytes: u64,
    reserve_retry_at_ms: u64,
    status: DiskStatus,
    watched: Option<Watched>,
}

impl DiskGuard {
    /// A guard for `dir`; a reserve file left by an earlier run counts as held.
    pub fn new(dir: &Path, settings: DiskSettings, probe: Arc<dyn SpaceProbe>) -> DiskGuard {
        let reserve_held_bytes = std::fs::metadata(dir.join(RESERVE_FILE_NAME))
            .map(|m| m.len())
            .unwrap_or(0);
        DiskGuard {
            dir: dir.to_path_buf(),
            settings,
            probe,
            reserve_held_bytes,
            reserve_retry_at_ms: 0,
            status: DiskStatus::default(),
            watched: None,
        }
    }

    /// Watches the file at `path`, as opened now: each [`DiskGuard::refresh`] checks that it is
    /// still the file there.
    pub fn watch(&mut self, path: &Path) {
        self.watched = identity(path).ok().map(|identity| Watched {
            path: path.to_path_buf(),
            identity,
        });
    }

    /// Why the watched file is no longer the one at its path, if it is not.
    fn files_gone(&self) -> Option<String> {
        let watched = self.watched.as_ref()?;
        let how = match identity(&watched.path) {
            Ok(now) if now == watched.identity => return None,
            Ok(_) => "was replaced by another file",
            Err(error) if error.kind() == io::ErrorKind::NotFound => "was deleted",
            // Not readable now (permissions): not evidence of a lost file.
            Err(_) => return None,
        };
        Some(format!(
            "{} {how} while the store runs: what the store writes now goes to a file no path leads to and is lost at the next start. Stop the store and put the database back (the open file can be copied from /proc/{}/fd/ before the store exits)",
            watched.path.display(),
            std::process::id()
        ))
    }

    pub fn status(&self) -> &DiskStatus {
        &self.status
    }

    /// Measures the disk and acts on the verdict: below the watermark the reserve is released,
    /// above it the reserve is (re)created. A disk that cannot be measured counts as having
    /// room (the store does not stop writing because statvfs failed; the problem is reported).
    pub fn refresh(&mut self, now_ms: u64) -> Verdict {
        let files_gone = self.files_gone();
        let space = match self.probe.space(&self.dir) {
            Ok(space) => space,
            Err(error) => {
                self.status.low = false;
                self.status.problem = Some(format!("cannot measure free space of {}: {error}", self.dir.display()));
                self.status.files_gone = files_gone;
                return Verdict::Room;
            }
        };
        let (verdict, free, min) = judge(space, self.reserve_held_bytes, self.settings.free_bytes_min);
        let mut problem = None;
        match verdict {
            Verdict::Low => self.release_reserve(&mut problem),
            Verdict::Room => self.keep_reserve(now_ms, &mut problem),
        }
        self.status = DiskStatus {
            free_bytes: free,
            total_bytes: space.total_bytes,
            free_bytes_min: min,
            low: verdict == Verdict::Low,
            reserve_held_bytes: self.reserve_held_bytes,
            problem,
            files_gone,
        };
        verdict
    }

    /// Deletes the reserve file so the writes still accepted find room; called below the
    /// watermark and before reopening the database after an I/O error.
    pub fn release_reserve(&mut self, problem: &mut Option<String>) {
        if self.reserve_held_bytes == 0 {
            return;
        }
        let path = self.dir.join(RESERVE_FILE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), bytes = self.reserve_held_bytes, "disk below the watermark: reserve released so deletes can commit");
                self.reserve_held_bytes = 0;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => self.reserve_held_bytes = 0,
            Err(error) => *problem = Some(format!("cannot release the reserve {}: {error}", path.display())),
        }
    }

    fn keep_reserve(&mut self, now_ms: u64, problem: &mut Option<String>) {
        let wanted = self.settings.reserve_bytes;
        if self.reserve_held_bytes >= wanted || wanted == 0 {
            return;
        }
        if now_ms < self.reserve_retry_at_ms {
            *problem = Some(format!("the {wanted}-byte reserve file could not be created; retrying"));
            return;
        }
        let path = self.dir.join(RESERVE_FILE_NAME);
        match preallocate(&path, wanted) {
            Ok(()) => {
                self.reserve_held_bytes = wanted;
                tracing::info!(path = %path.display(), bytes = wanted, "disk reserve in place");
            }
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                self.reserve_held_bytes = 0;
                self.reserve_retry_at_ms = now_ms.saturating_add(RESERVE_RETRY_INTERVAL_MS);
                *problem = Some(format!(
                    "cannot create the {wanted}-byte reserve file {}: {error}; lower disk_reserve_bytes or free space",
                    path.display()
                ));
            }
        }
    }

    /// Releases the reserve regardless of the verdict (before a reopen after an I/O error).
    pub fn release_for_recovery(&mut self) {
        let mut problem = None;
        self.release_reserve(&mut problem);
        if problem.is_some() {
            self.status.problem = problem;
        }
        self.status.reserve_held_bytes = self.reserve_held_bytes;
    }
}

/// Allocates `bytes` for real (not a sparse file), so the space is taken now and given back
/// when the file is deleted.
fn preallocate(path: &Path, bytes: u64) -> io::Result<()> {
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)?;
    file.sync_all()
}

/// A fault-injecting disk for tests: a byte capacity for the data directory (which can be
/// raised again) and switches that fail writes or syncs, under a redb [`FaultyBackend`]. It is
/// also the [`SpaceProbe`] of that directory, so the watermark sees the same disk.
#[derive(Debug, Default)]
pub struct FaultyDisk {
    /// Bytes all files of the data directory may take together; `u64::MAX` for no limit.
    capacity_bytes: AtomicU64,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
    /// While set, the database file's syncs that a checkpoint handed to their own thread
    /// (`engine::deferred`, the `store-sync` thread) wait: a slow disk, held still by a test.
    hold_syncs: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// Write or sync calls that failed because of a fault.
    pub faults_injected: AtomicU64,
}

impl FaultyDisk {
    pub fn new() -> Arc<FaultyDisk> {
        Arc::new(FaultyDisk {
            capacity_bytes: AtomicU64::new(u64::MAX),
            ..FaultyDisk::default()
        })
    }

    pub fn set_capacity_bytes(&self, bytes: u64) {
        self.capacity_bytes.store(bytes, Ordering::SeqCst);
    }

    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    pub fn set_fail_syncs(&self, fail: bool) {
        self.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// Holds (`true`) or releases the checkpoints' deferred syncs: a held one waits until
    /// released.
    pub fn set_hold_syncs(&self, hold: bool) {
        *self
            .hold_syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = hold;
        self.released.notify_all();
    }

    fn wait_while_held(&self) {
        if std::thread::current().name() != Some("store-sync") {
            return;
        }
        let mut held = self
            .hold_syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *held {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn injected(&self, error: io::Error) -> io::Error {
        self.faults_injected.fetch_add(1, Ordering::SeqCst);
        error
    }

    /// The fault, if any, of a write that makes the file at `path` `end` bytes long (for files
    /// the store writes itself, such as the write-ahead log).
    pub(crate) fn write_fault(&self, path: &Path, end: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(self.injected(io::Error::from_raw_os_error(5))); // EIO
        }
        let capacity = self.capacity_bytes.load(Ordering::SeqCst);
        if capacity == u64::MAX {
            return Ok(());
        }
        let own = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let dir = path.parent().unwrap_or(Path::new("."));
        let others = used_bytes(dir).saturating_sub(own);
        if others.saturating_add(end.max(own)) > capacity {
            return Err(self.injected(no_space()));
        }
        Ok(())
    }

    /// The fault, if any, of a sync.
    pub(crate) fn sync_fault(&self) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(self.injected(io::Error::from_raw_os_error(5)));
        }
        Ok(())
    }
}

/// Bytes the files directly inside `dir` take (their lengths).
fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl SpaceProbe for FaultyDisk {
    fn space(&self, dir: &Path) -> io::Result<Space> {
        let capacity = self.capacity_bytes.load(Ordering::SeqCst);
        if capacity == u64::MAX {
            return Statvfs.space(dir);
        }
        Ok(Space {
            available_bytes: capacity.saturating_sub(used_bytes(dir)),
            total_bytes: capacity,
        })
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

/// redb's file backend with the faults of a [`FaultyDisk`].
#[derive(Debug)]
pub struct FaultyBackend {
    inner: redb::backends::FileBackend,
    dir: PathBuf,
    path: PathBuf,
    disk: Arc<FaultyDisk>,
}

impl FaultyBackend {
    /// Opens (creating) the database file at `path`, locked like redb's own backend.
    pub fn open(path: &Path, disk: Arc<FaultyDisk>) -> Result<FaultyBackend, redb::DatabaseError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(FaultyBackend {
            inner: redb::backends::FileBackend::new(file)?,
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            path: path.to_path_buf(),
            disk,
        })
    }

    /// Whether the file may reach `end` bytes within the capacity.
    fn fits(&self, end: u64) -> io::Result<bool> {
        let capacity = self.disk.capacity_bytes.load(Ordering::SeqCst);
        if capacity == u64::MAX {
            return Ok(true);
        }
        let own = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let others = used_bytes(&self.dir).saturating_sub(own);
        Ok(others.saturating_add(end.max(own)) <= capacity)
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if !self.fits(len)? {
            return Err(self.disk.injected(no_space()));
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.disk.wait_while_held();
        if self.disk.fail_syncs.load(Ordering::SeqCst) {
            return Err(self.disk.injected(io::Error::from_raw_os_error(5))); // EIO
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.disk.fail_writes.load(Ordering::SeqCst) {
            return Err(self.disk.injected(io::Error::from_raw_os_error(5)));
        }
        if !self.fits(offset.saturating_add(data.len() as u64))? {
            return Err(self.disk.injected(no_space()));
        }
        self.inner.write(offset, data)
    }

    // The file lock that keeps a second store off this file is the inner backend's.
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_default_watermark_is_a_gibibyte_or_five_percent() {
        assert_eq!(default_free_bytes_min(10 * GIB), GIB);
        assert_eq!(default_free_bytes_min(100 * GIB), 5 * GIB);
        assert_eq!(default_free_bytes_min(0), GIB);
    }

    #[test]
    fn below_the_watermark_is_low_and_the_reserve_counts_as_free() {
        let space = |available_bytes| Space {
            available_bytes,
            total_bytes: 100,
        };
        assert_eq!(judge(space(10), 0, Some(20)), (Verdict::Low, 10, 20));
        assert_eq!(judge(space(20), 0, Some(20)), (Verdict::Room, 20, 20));
        // Releasing a 15-byte reserve turns 5 available + 15 held into 20 available: same verdict.
        assert_eq!(judge(space(5), 15, Some(20)).0, judge(space(20), 0, Some(20)).0);
        assert_eq!(
            judge(space(u64::MAX), u64::MAX, Some(1)).0,
            Verdict::Room,
            "no overflow"
        );
    }

    #[test]
    fn the_guard_releases_the_reserve_when_low_and_restores_it_when_space_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = FaultyDisk::new();
        disk.set_capacity_bytes(10 << 20);
        let settings = DiskSettings {
            free_bytes_min: Some(4 << 20),
            reserve_bytes: 1 << 20,
        };
        let mut guard = DiskGuard::new(dir.path(), settings, disk.clone());
        assert_eq!(guard.refresh(0), Verdict::Room);
        assert_eq!(guard.status().reserve_held_bytes, 1 << 20);
        assert!(dir.path().join(RESERVE_FILE_NAME).exists());
        std::fs::write(dir.path().join("filler"), vec![0u8; 7 << 20]).expect("filler");
        assert_eq!(guard.refresh(1), Verdict::Low, "{:?}", guard.status());
        assert!(!dir.path().join(RESERVE_FILE_NAME).exists(), "released");
        assert_eq!(guard.status().free_bytes, 3 << 20);
        std::fs::remove_file(dir.path().join("filler")).expect("remove filler");
        assert_eq!(guard.refresh(2), Verdict::Room);
        assert_eq!(guard.status().reserve_held_bytes, 1 << 20, "restored");
        assert!(guard.status().problem.is_none(), "{:?}", guard.status());
    }
}
