//! Checkpoints that do not hold the writer: a redb storage backend whose syncs, while a
//! checkpoint commits, run on a thread of their own (with `write_ahead_log` on).
//!
//! A checkpoint is redb's durable commit with quick repair: it writes every page the batches
//! since the last one dirtied, syncs them, writes the header and syncs again (two phases). The
//! writer thread used to wait for both syncs, and every request queued behind it with it: the
//! stream table's p99 went from 2 to 14–27 ms, and to 214 ms with a million items (BENCHMARKS,
//! "Streams"). Nothing needs the checkpoint durable at once: every batch it holds is already
//! durable in the log. So while the writer commits a checkpoint ([`SyncHandle::defer`]), a
//! `sync_data` is handed to this backend's thread and returns at once, and every write after
//! it waits in a queue for that thread to apply it after the sync, in order. The file thus
//! only ever holds what it would have held had the writer waited, an earlier moment of it at
//! any crash: redb's own ordering (its pages of the last durable commit are rewritten only
//! after the next one is durable) is kept. Readers see queued writes (they are laid over what
//! the file returns). Outside a checkpoint a sync waits for the queue and then syncs, as before.
//!
//! The log is let go of only once the checkpoint is durable ([`SyncHandle::completed`]), see
//! `wal`. A failed write or sync on the thread is kept: every later write, sync and resize
//! fails with it, so the writer reopens the database (`recovery`), which replays the log.

use std::collections::VecDeque;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use redb::{BackendError, StorageBackend};

/// Bytes of writes held in the queue at most: past it a write waits for the thread to apply
/// what is queued (the writer then waits as it did before, but only then).
pub const QUEUED_BYTES_MAX: usize = 64 << 20;

/// What the backend's thread does next, in order.
enum Op {
    Write(u64, Arc<[u8]>),
    /// A sync handed over during a checkpoint; its number.
    Sync(u64),
    /// A resize: a checkpoint that shrinks the file does so after its header is durable.
    SetLen(u64),
}

#[derive(Default)]
struct State {
    /// The thread's work, in order; the op at the front stays there while the thread applies
    /// it, so readers find a write in the queue until it is in the file.
    queue: VecDeque<Op>,
    queued_bytes: usize,
    /// The file's length once the queue is applied, if a resize is queued.
    queued_len: Option<u64>,
    /// The first failure of the thread's writes or syncs, kept.
    failed: Option<(io::ErrorKind, String)>,
    /// Set when the backend closes: the thread ends once the queue is empty.
    closing: bool,
}

impl State {
    fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    fn error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, message)| {
            io::Error::new(*kind, format!("an earlier deferred write or sync failed: {message}"))
        })
    }
}

struct Inner {
    backend: Box<dyn StorageBackend>,
    state: Mutex<State>,
    changed: Condvar,
    /// Syncs are handed to the thread (a checkpoint commits).
    defer: AtomicBool,
    /// Writes may be queued: readers must look at the queue.
    queued_writes: AtomicBool,
    /// A write or sync of the thread failed: the writes queued behind it were dropped, so the
    /// file no longer holds what redb wrote, and reads fail too (redb then refuses everything
    /// until the writer reopens the database).
    failed: AtomicBool,
    /// Syncs handed to the thread so far, and the last it completed (they complete in order).
    submitted: AtomicU64,
    completed: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the thread applied everything queued.
    fn drained(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while state.pending() {
            state = self.wait(state);
        }
        state
    }

    /// The thread: applies the queue in order until the backend closes.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            let next = match state.queue.front() {
                Some(Op::Write(offset, data)) => Op::Write(*offset, Arc::clone(data)),
                Some(Op::Sync(number)) => Op::Sync(*number),
                Some(Op::SetLen(len)) => Op::SetLen(*len),
                None => {
                    state.queued_len = None;
                    self.queued_writes.store(false, Ordering::Release);
                    self.changed.notify_all();
                    if state.closing {
                        return;
                    }
                    state = self.wait(state);
                    continue;
                }
            };
            drop(state);
            let result = match &next {
                Op::Write(offset, data) => self.backend.write(*offset, data),
                Op::Sync(_) => self.backend.sync_data(),
                Op::SetLen(len) => self.backend.set_len(*len),
            };
            state = self.lock();
            state.queue.pop_front();
            match (result, next) {
                (Ok(()), Op::Write(_, data)) => state.queued_bytes -= data.len(),
                (Ok(()), Op::Sync(number)) => self.completed.store(number, Ordering::Release),
                (Ok(()), Op::SetLen(_)) => {}
                (Err(error), _) => {
                    tracing::error!(%error, "a deferred write or sync of the database failed: the database is reopened");
                    state.failed.get_or_insert((error.kind(), error.to_string()));
                    self.failed.store(true, Ordering::Release);
                    // Nothing after a failed write or sync may reach the file.
                    state.queue.clear();
                    state.queued_bytes = 0;
                    state.queued_len = None;
                }
            }
            self.changed.notify_all();
        }
    }
}

/// The storage backend (see the module's docs).
pub struct DeferredSync {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DeferredSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredSync")
            .field("backend", &self.inner.backend)
            .finish()
    }
}

/// The writer's side of a [`DeferredSync`].
#[derive(Clone)]
pub struct SyncHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle")
            .field("completed", &self.completed())
            .finish()
    }
}

impl DeferredSync {
    /// Wraps `backend`; its thread starts here.
    pub fn new(backend: Box<dyn StorageBackend>) -> io::Result<(DeferredSync, SyncHandle)> {
        let inner = Arc::new(Inner {
            backend,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            defer: AtomicBool::new(false),
            queued_writes: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        });
        let thread = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || thread.run())?;
        Ok((
            DeferredSync {
                inner: Arc::clone(&inner),
            },
            SyncHandle { inner },
        ))
    }
}

impl Drop for DeferredSync {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.closing = true;
        self.inner.changed.notify_all();
    }
}

impl SyncHandle {
    /// Runs `commit` (a checkpoint's) with its syncs handed to the thread; returns what it
    /// returned and the number of the last sync handed over (durable once
    /// [`SyncHandle::completed`] reaches it).
    pub fn defer<T>(&self, commit: impl FnOnce() -> T) -> (T, u64) {
        /// Ends the deferral however `commit` ends (a panic inside redb included).
        struct Deferring<'a>(&'a AtomicBool);
        impl Drop for Deferring<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.inner.defer.store(true, Ordering::SeqCst);
        let deferring = Deferring(&self.inner.defer);
        let result = commit();
        drop(deferring);
        (result, self.inner.submitted.load(Ordering::SeqCst))
    }

    /// The number of the last sync the thread completed: every sync up to it is durable.
    pub fn completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Acquire)
    }

    /// Waits until sync `number` is durable; the kept failure if the thread failed first.
    #[cfg(test)]
    pub fn wait_for(&self, number: u64) -> io::Result<()> {
        let mut state = self.inner.lock();
        loop {
            if self.completed() >= number {
                return Ok(());
            }
            if let Some(error) = state.error() {
                return Err(error);
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The thread's kept failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner.lock().failed.as_ref().map(|(_, message)| message.clone())
    }
}

impl StorageBackend for DeferredSync {
    fn len(&self) -> Result<u64, io::Error> {
        let state = self.inner.lock();
        if let Some(error) = state.error() {
            return Err(error);
        }
        match state.queued_len {
            Some(len) => Ok(len),
            None => self.inner.backend.len(),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        if self.inner.failed.load(Ordering::Acquire)
            && let Some(error) = self.inner.lock().error()
        {
            return Err(error);
        }
        if !self.inner.queued_writes.load(Ordering::Acquire) {
            return self.inner.backend.read(offset, out);
        }
        // The file and then the queue, under the lock: the thread takes a write off the queue
        // only after it is in the file, and only under the lock.
        let state = self.inner.lock();
        // A queued resize may have grown the file beyond what it holds yet: zeros there.
        let end = offset + out.len() as u64;
        let held = self.inner.backend.len()?.clamp(offset, end);
        let (within, beyond) = out.split_at_mut((held - offset) as usize);
        if !within.is_empty() {
            self.inner.backend.read(offset, within)?;
        }
        beyond.fill(0);
        for op in &state.queue {
            if let Op::Write(at, data) = op {
                let (from, to) = ((*at).max(offset), (*at + data.len() as u64).min(end));
                if from < to {
                    out[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                }
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.inner.lock();
        if let Some(error) = state.error() {
            return Err(error);
        }
        let shrinks = state.queued_len.is_some() || len < self.inner.backend.len()?;
        if state.pending() && shrinks {
            // After what is queued (a checkpoint's shrink comes after its header's sync). A
            // growth goes ahead: the queued writes are all within the file's length, and a
            // crash that kept the longer file loses nothing.
            state.queue.push_back(Op::SetLen(len));
            state.queued_len = Some(len);
            self.inner.queued_writes.store(true, Ordering::Release);
            self.inner.changed.notify_all();
            return Ok(());
        }
        let result = self.inner.backend.set_len(len);
        drop(state);
        result
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if self.inner.defer.load(Ordering::SeqCst) {
            let mut state = self.inner.lock();
            if let Some(error) = state.error() {
                return Err(error);
            }
            let number = self.inner.submitted.fetch_add(1, Ordering::SeqCst) + 1;
            state.queue.push_back(Op::Sync(number));
            self.inner.changed.notify_all();
            return Ok(());
        }
        // A caller's writes queued behind the checkpoint's must be durable when this returns:
        // it waits for the queue. With none (the queue ends with the checkpoint's own sync, or
        // is empty), nothing this caller wrote is waiting: redb making a grown file's length
        // durable does not wait for the checkpoint's syncs, and writes nothing they order.
        let state = self.inner.lock();
        let state = match state.queue.back() {
            None | Some(Op::Sync(_)) => state,
            Some(_) => {
                drop(state);
                self.inner.drained()
            }
        };
        if let Some(error) = state.error() {
            return Err(error);
        }
        drop(state);
        self.inner.backend.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.inner.lock();
        if let Some(error) = state.error() {
            return Err(error);
        }
        if state.pending() && state.queued_bytes + data.len() > QUEUED_BYTES_MAX {
            drop(state);
            state = self.inner.drained();
            if let Some(error) = state.error() {
                return Err(error);
            }
        }
        if state.pending() {
            state.queued_bytes += data.len();
            state.queue.push_back(Op::Write(offset, Arc::from(data)));
            self.inner.queued_writes.store(true, Ordering::Release);
            self.inner.changed.notify_all();
            return Ok(());
        }
        // Held while writing, so that no sync is handed over between the check and the write.
        let result = self.inner.backend.write(offset, data);
        drop(state);
        result
    }

    fn close(&self) -> Result<(), io::Error> {
        let failed = self.inner.drained().error();
        self.inner.backend.close()?;
        failed.map_or(Ok(()), Err)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.backend.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.backend.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.backend.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.backend.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.backend.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.backend.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;
    use redb::backends::InMemoryBackend;

    /// An in-memory backend whose syncs wait until the test opens the gate, or fail.
    #[derive(Debug, Default)]
    struct Gated {
        memory: InMemoryBackend,
        gate: Mutex<(bool, bool)>,
        opened: Condvar,
        syncs: AtomicU64,
    }

    impl Gated {
        fn open(&self, fail: bool) {
            *self.gate.lock().expect("gate") = (true, fail);
            self.opened.notify_all();
        }
    }

    /// The test's handle on the backend it gives the wrapper.
    #[derive(Debug)]
    struct Shared(Arc<Gated>);

    impl StorageBackend for Shared {
        fn len(&self) -> Result<u64, io::Error> {
            self.0.memory.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.0.memory.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.0.memory.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            let mut gate = self.0.gate.lock().expect("gate");
            while !gate.0 {
                gate = self.0.opened.wait(gate).expect("gate");
            }
            self.0.syncs.fetch_add(1, Ordering::SeqCst);
            match gate.1 {
                true => Err(io::Error::from_raw_os_error(5)),
                false => Ok(()),
            }
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.0.memory.write(offset, data)
        }
    }

    fn read(backend: &DeferredSync, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        backend.read(offset, &mut out).expect("read");
        out
    }

    #[test]
    fn a_deferred_sync_returns_at_once_and_later_writes_wait_behind_it_in_order() {
        let gated = Arc::new(Gated::default());
        let (backend, handle) = DeferredSync::new(Box::new(Shared(Arc::clone(&gated)))).expect("backend");
        backend.set_len(4096).expect("grow");
        backend.write(0, b"page one").expect("write");
        // A checkpoint: its syncs are handed over, the write between them is queued.
        let ((), number) = handle.defer(|| {
            backend.sync_data().expect("first sync");
            backend.write(0, b"header 2").expect("queued write");
            backend.sync_data().expect("second sync");
        });
        assert_eq!(number, 2);
        assert_eq!(handle.completed(), 0, "the gate holds the thread's first sync");
        assert_eq!(read(&backend, 0, 8), b"header 2", "a reader sees the queued write");
        let mut file = vec![0u8; 8];
        gated.memory.read(0, &mut file).expect("read");
        assert_eq!(file, b"page one", "the file does not have it before the sync");
        // Outside a checkpoint, a write queues behind the pending ones too.
        backend.write(8, b"+later").expect("queued");
        assert_eq!(read(&backend, 0, 14), b"header 2+later");
        gated.open(false);
        handle.wait_for(number).expect("durable");
        assert_eq!(gated.syncs.load(Ordering::SeqCst), 2);
        // The queue drains after the last sync; a sync outside a checkpoint waits for it.
        backend.sync_data().expect("sync");
        gated.memory.read(0, &mut file).expect("read");
        assert_eq!(file, b"header 2");
        assert_eq!(read(&backend, 8, 6), b"+later");
        assert!(handle.failure().is_none());
    }

    #[test]
    fn a_failed_deferred_sync_is_kept_and_nothing_after_it_reaches_the_file() {
        let gated = Arc::new(Gated::default());
        let (backend, handle) = DeferredSync::new(Box::new(Shared(Arc::clone(&gated)))).expect("backend");
        backend.set_len(4096).expect("grow");
        let ((), number) = handle.defer(|| {
            backend.sync_data().expect("handed over");
            backend.write(0, b"after the sync").expect("queued");
        });
        gated.open(true);
        let error = handle.wait_for(number).expect_err("the sync failed");
        assert!(error.to_string().contains("deferred"), "{error}");
        assert!(handle.failure().is_some());
        // The queued write was dropped: the file no longer holds what redb wrote, so reads fail
        // rather than answer from it.
        let mut out = [0u8; 5];
        assert!(backend.read(0, &mut out).is_err());
        assert!(backend.len().is_err());
        assert!(backend.write(0, b"x").is_err());
        assert!(backend.sync_data().is_err());
        assert!(backend.set_len(8192).is_err());
        assert!(backend.close().is_err());
    }

    #[test]
    fn a_database_on_the_backend_commits_checkpoints_without_waiting_for_their_syncs() {
        let gated = Arc::new(Gated::default());
        let (backend, handle) = DeferredSync::new(Box::new(Shared(Arc::clone(&gated)))).expect("backend");
        gated.open(false);
        let db = redb::Database::builder().create_with_backend(backend).expect("create");
        let table = redb::TableDefinition::<u64, u64>::new("t");
        // The gate closed: a checkpoint's commit still returns, and what it wrote reads back.
        *gated.gate.lock().expect("gate") = (false, false);
        let ((), number) = handle.defer(|| {
            let txn = db.begin_write().expect("write");
            txn.open_table(table).expect("table").insert(1, 10).expect("insert");
            txn.commit().expect("commit");
        });
        assert!(handle.completed() < number);
        let read = db.begin_read().expect("read");
        assert_eq!(
            redb::ReadableTable::get(&read.open_table(table).expect("table"), 1)
                .expect("get")
                .map(|v| v.value()),
            Some(10)
        );
        drop(read);
        gated.open(false);
        handle.wait_for(number).expect("durable");
        drop(db);
    }
}
