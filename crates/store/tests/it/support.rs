//! What the integration test modules share: a clock the tests move, the `call`/`ok`/`err`
//! trio over an operation entry point, the CreateTable body most tests start from (testkit's),
//! and a writer held inside a job so later jobs queue up in a known order.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynamo_protocol::ApiError;
use serde_json::{Value, json};
use store::engine::Clock;
use store::{Engine, Store, SystemClock};
pub use testkit::on_demand_table;

/// Where a [`ManualClock`] starts: a fixed time in 2027.
pub const START_MS: u64 = 1_800_000_000_000;

/// A clock that stands still until a test moves it.
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn starting_at(ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(ms))
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn rewind(&self, ms: u64) {
        self.0.fetch_sub(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now()
    }
}

/// A store in a temporary directory whose engine runs on a [`ManualClock`] from [`START_MS`].
/// `M` names the test module whose helpers an `impl ClockedStore<M>` there adds.
pub struct ClockedStore<M> {
    pub store: Store,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
    _module: PhantomData<M>,
}

impl<M> ClockedStore<M> {
    pub fn new() -> ClockedStore<M> {
        Self::with(None)
    }

    /// The store with the write-ahead log and no idle checkpoints: what the log holds stays
    /// out of redb's durable state until something commits a checkpoint.
    pub fn with_write_ahead_log() -> ClockedStore<M> {
        Self::with(Some(store::engine::EngineOptions {
            disk: store::disk::DiskSettings {
                free_bytes_min: Some(0),
                reserve_bytes: 0,
            },
            no_idle_checkpoints: true,
            write_ahead_log: true,
            ..store::engine::EngineOptions::default()
        }))
    }

    fn with(options: Option<store::engine::EngineOptions>) -> ClockedStore<M> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let clock = Arc::new(ManualClock::starting_at(START_MS));
        let engine = match options {
            None => Engine::open(dir.path(), "us-east-1", clock.clone()),
            Some(options) => Engine::open_with(dir.path(), "us-east-1", clock.clone(), options),
        }
        .expect("open engine");
        ClockedStore {
            store: Store::new(engine.clone()),
            engine,
            clock,
            _dir: dir,
            _module: PhantomData,
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn advance(&self, ms: u64) {
        self.clock.advance(ms);
    }

    /// Sets the clock back by `ms` (a step back).
    pub fn rewind(&self, ms: u64) {
        self.clock.rewind(ms);
    }
}

/// The Streams operations go to the Streams API's entry point, the others to `Store::handle`.
impl<M> Calls for ClockedStore<M> {
    async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError> {
        match operation {
            "ListStreams" | "DescribeStream" | "GetShardIterator" | "GetRecords" => {
                store::streams::api::handle(&self.engine, operation, body.to_string().as_bytes())
                    .await
                    .map(|answer| serde_json::from_slice(&answer).expect("a Streams answer is JSON"))
            }
            _ => self.store.handle(operation, body.to_string().as_bytes()).await,
        }
    }
}

/// A harness that sends operations somewhere and expects them to succeed or to fail.
pub trait Calls {
    async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError>;

    async fn ok(&self, operation: &str, body: Value) -> Value {
        match self.call(operation, body).await {
            Ok(value) => value,
            Err(error) => panic!("{operation} failed: {error}"),
        }
    }

    async fn err(&self, operation: &str, body: Value) -> ApiError {
        match self.call(operation, body).await {
            Ok(value) => panic!("{operation} succeeded unexpectedly: {value}"),
            Err(error) => error,
        }
    }
}

/// Waits (with a deadline) until `engine`'s write queue has `free` free slots.
pub async fn wait_for_queue_free(engine: &Engine, free: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.write_queue_free() != free {
        assert!(
            Instant::now() < deadline,
            "the write queue never reached {free} free slots (now {})",
            engine.write_queue_free()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `operation` on `store` so that it reads the table before a TagResource of `arn`
/// commits and writes after it: the writer is held inside a job while TagResource and then
/// `operation` queue up. Returns the operation's answer and the tags of `arn` afterwards.
pub async fn run_behind_a_queued_tag(store: &Store, arn: &str, operation: &'static str, body: Value) -> (Value, Value) {
    let engine = store.engine().clone();
    let held = HeldWriter::hold(&engine).await;
    let idle = engine.write_queue_free();
    let handle = |operation: &'static str, body: Value| {
        let store = store.clone();
        async move { store.handle(operation, body.to_string().as_bytes()).await }
    };
    let tag = tokio::spawn(handle(
        "TagResource",
        json!({"ResourceArn": arn, "Tags": [{"Key": "team", "Value": "billing"}]}),
    ));
    wait_for_queue_free(&engine, idle - 1).await;
    // The operation reads the table (without the tag, still queued) and queues its write.
    let change = tokio::spawn(handle(operation, body));
    wait_for_queue_free(&engine, idle - 2).await;
    held.release().await;
    tag.await.expect("tag task").expect("TagResource");
    let answer = match change.await.expect("operation task") {
        Ok(answer) => answer,
        Err(error) => panic!("{operation} failed: {error}"),
    };
    let tags = handle("ListTagsOfResource", json!({"ResourceArn": arn}))
        .await
        .expect("ListTagsOfResource");
    (answer, tags["Tags"].clone())
}

/// A store opened on a data directory the test keeps (to reopen it, or read it raw).
pub struct Opened {
    pub store: Store,
}

impl Calls for Opened {
    async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError> {
        self.store.handle(operation, body.to_string().as_bytes()).await
    }
}

/// Opens the data directory, waiting (bounded) for an engine dropped just before to let go of it.
pub fn open(dir: &std::path::Path) -> Opened {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Engine::open(dir, "us-east-1", Arc::new(SystemClock)) {
            Ok(engine) => {
                return Opened {
                    store: Store::new(engine),
                };
            }
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

pub fn open_raw(dir: &std::path::Path) -> redb::Database {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redb::Database::open(dir.join("store.redb")) {
            Ok(database) => return database,
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The writer held inside an exclusive job, so that jobs submitted meanwhile queue up in a
/// known order behind it.
pub struct HeldWriter {
    release: std::sync::mpsc::Sender<()>,
    job: tokio::task::JoinHandle<Result<(), ApiError>>,
}

impl HeldWriter {
    /// Returns once the holding job runs.
    pub async fn hold(engine: &Engine) -> HeldWriter {
        let (inside_tx, inside_rx) = tokio::sync::oneshot::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn({
            let engine = engine.clone();
            async move {
                engine
                    .write_exclusive(move |_| {
                        let _ = inside_tx.send(());
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            }
        });
        inside_rx.await.expect("the holding job ran");
        HeldWriter { release, job }
    }

    /// Lets the writer go on, and waits for the holding job's end.
    pub async fn release(self) {
        self.release.send(()).expect("the holding job waits");
        self.job.await.expect("holding task").expect("holding job");
    }
}
