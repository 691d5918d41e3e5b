//! The active-region pointer: how applications learn where to write.
//!
//! Server side, `Pointer` holds `{region, generation}` and only moves forward in generation;
//! `GET /v1/active-region` serves it (long-poll with `?wait_generation=N&timeout_ms=T`).
//! Client side, `watch` follows it and, on every change, atomically rewrites an env file
//! (`AWS_REGION`, `SWITCHYARD_ACTIVE_REGION`, `SWITCHYARD_GENERATION`) and runs a reload command,
//! never for a generation older than one it already applied (also across its own restarts: the
//! env file records the generation).
//!
//! `GET /v1/active-region/stream` serves the same value as Server-Sent Events: the current
//! value at once, then one event per change (`event: active-region`, `id:` the generation,
//! `data:` the JSON document), keep-alive comments in between, and the end of the stream when
//! the controller shuts down (clients reconnect after `retry:`).

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use common::members::ControllerUrls;

use crate::client::HttpClient;

/// How far above the applied generation a received one may be. Generations grow by one per
/// runbook, so a bigger jump is a forged or corrupt answer; applying it would make every later,
/// genuine generation look stale forever.
pub const GENERATION_STEP_MAX: u64 = 1 << 32;

/// What the watcher does with a pointer value it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Newer, within `GENERATION_STEP_MAX`: write the env file and run the command.
    Apply,
    /// Not newer (or no region yet): nothing to do.
    Ignore,
    /// More than `GENERATION_STEP_MAX` ahead: refused, nothing changes.
    TooFarAhead,
    /// Newer, but the region is no region name (see [`env_value_ok`]): refused, nothing
    /// changes. Written into the env file it would add lines of its own (a newline) to what
    /// PHP and the reload command read.
    NotARegion,
}

/// Longest value written into the env file.
pub const ENV_VALUE_BYTES_MAX: usize = 64;

/// Whether `value` may go into the env file as it is: 1 to [`ENV_VALUE_BYTES_MAX`] letters,
/// digits, `-`, `_` or `.` (region names, AWS region names). Anything else (a newline, `=`,
/// quotes, `$`) would change what `parse_ini_file` or a shell sourcing the file reads.
pub fn env_value_ok(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= ENV_VALUE_BYTES_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The watcher's rule for a received value, given the generation it applied last.
pub fn judge(applied: u64, value: &PointerValue) -> Received {
    if value.region.is_none() || value.generation <= applied {
        Received::Ignore
    } else if !value.region.as_deref().is_some_and(env_value_ok) {
        Received::NotARegion
    } else if value.generation - applied > GENERATION_STEP_MAX {
        Received::TooFarAhead
    } else {
        Received::Apply
    }
}

/// Longest long-poll the server holds a request.
pub const LONG_POLL_MS_MAX: u64 = 60_000;
/// Long-poll the watcher asks for.
pub const WATCH_POLL_MS: u64 = 25_000;
/// Longest wait between reconnects of the watcher.
pub const WATCH_BACKOFF_MS_MAX: u64 = 10_000;
/// Attempts of the reload command per change.
pub const EXEC_ATTEMPTS_MAX: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointerValue {
    pub region: Option<String>,
    pub generation: u64,
}

/// Most Server-Sent Events streams of the pointer open at once; more are answered 503. Half
/// the API's default connections (`common::http::CONNECTIONS_MAX_DEFAULT`): a stream is never
/// idle, so a full listener cannot close one to make room, and holders of a read token must
/// not be able to fill every connection agents and operators need.
pub const SSE_STREAMS_MAX: usize = common::http::CONNECTIONS_MAX_DEFAULT / 2;
/// Time between keep-alive comments on an idle stream (proxies close silent connections).
pub const SSE_KEEPALIVE_MS: u64 = 15_000;
/// Reconnect delay a stream suggests to its client (`retry:`).
pub const SSE_RETRY_MS: u64 = 1_000;
/// The event name of a pointer value on the stream.
pub const SSE_EVENT: &str = "active-region";

/// The server-side cell.
#[derive(Clone)]
pub struct Pointer {
    sender: watch::Sender<PointerValue>,
    streams: Arc<AtomicUsize>,
}

/// One open stream, counted until dropped.
pub struct StreamSlot {
    streams: Arc<AtomicUsize>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pointer {
    pub fn new(initial: PointerValue) -> Pointer {
        let (sender, _) = watch::channel(initial);
        Pointer {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Streams open now.
    pub fn streams_open(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// The events of one stream: the current value, then every change, until `closing` turns
    /// true or the pointer is dropped. `None` when [`SSE_STREAMS_MAX`] streams are open.
    pub fn event_stream(
        &self,
        closing: watch::Receiver<bool>,
    ) -> Option<impl Stream<Item = Result<Event, Infallible>> + Send + 'static> {
        let previous = self.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot {
            streams: Arc::clone(&self.streams),
        };
        if previous >= SSE_STREAMS_MAX {
            return None;
        }
        let receiver = self.sender.subscribe();
        Some(futures_util::stream::unfold(
            (receiver, closing, true, slot),
            |(mut receiver, mut closing, first, slot)| async move {
                if !first {
                    tokio::select! {
                        changed = receiver.changed() => changed.ok()?,
                        _ = closing.wait_for(|closing| *closing) => return None,
                    }
                }
                let value = receiver.borrow_and_update().clone();
                let mut event = Event::default()
                    .event(SSE_EVENT)
                    .id(value.generation.to_string())
                    .data(serde_json::json!(value).to_string());
                if first {
                    event = event.retry(Duration::from_millis(SSE_RETRY_MS));
                }
                Some((Ok(event), (receiver, closing, false, slot)))
            },
        ))
    }

    pub fn get(&self) -> PointerValue {
        self.sender.borrow().clone()
    }

    /// Sets the pointer; refuses a generation older than the current one (idempotent for the
    /// same generation).
    pub fn publish(&self, region: &str, generation: u64) -> Result<(), String> {
        let mut refused = None;
        self.sender.send_if_modified(|value| {
            if generation < value.generation {
                refused = Some(value.generation);
                return false;
            }
            let changed = value.generation != generation || value.region.as_deref() != Some(region);
            value.generation = generation;
            value.region = Some(region.to_string());
            changed
        });
        match refused {
            Some(current) => Err(format!("pointer is at generation {current}, newer than {generation}")),
            None => Ok(()),
        }
    }

    /// Waits until the generation is above `seen` or `timeout_ms` passes; returns the value.
    pub async fn wait_past(&self, seen: u64, timeout_ms: u64) -> PointerValue {
        let mut receiver = self.sender.subscribe();
        let wait = receiver.wait_for(|value| value.generation > seen);
        let _ = tokio::time::timeout(Duration::from_millis(timeout_ms.min(LONG_POLL_MS_MAX)), wait).await;
        self.get()
    }
}

/// Options of `switchyard pointer watch`.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Every member of the group of controllers (or the one controller).
    pub controllers: ControllerUrls,
    pub token: Option<String>,
    pub env_file: PathBuf,
    /// Run with `sh -c` after each change.
    pub exec: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller refused the token (HTTP {0}): check --token-file or SWITCHYARD_CONTROL_TOKEN")]
    Unauthorized(u16),
    #[error(
        "not writing {name}={value:?} into {path}: use 1 to {ENV_VALUE_BYTES_MAX} letters, digits, '-', '_' or '.' (a region name)"
    )]
    BadValue {
        path: String,
        name: &'static str,
        value: String,
    },
}

/// The generation recorded in an env file written earlier, if any.
pub fn applied_generation(env_file: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(env_file) else {
        return 0;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("SWITCHYARD_GENERATION="))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the env file atomically: temporary file, fsync, rename, fsync of the directory. The
/// temporary file's name is this writer's own (`FILE.PID.N.tmp`, created exclusively), so two
/// writers (an overlapping restart, a second watcher on the same file) never write into one
/// temporary file and rename a mix of both into place.
pub fn write_env_file(path: &Path, region: &str, generation: u64) -> Result<(), WatchError> {
    write_env_values(path, region, region, generation)
}

/// [`write_env_file`] with an `AWS_REGION` that differs from the region's name (read from an
/// SSM parameter that maps regions to AWS regions).
pub fn write_env_values(path: &Path, aws_region: &str, region: &str, generation: u64) -> Result<(), WatchError> {
    static TEMPORARIES: AtomicUsize = AtomicUsize::new(0);
    for (name, value) in [("AWS_REGION", aws_region), ("SWITCHYARD_ACTIVE_REGION", region)] {
        if !env_value_ok(value) {
            return Err(WatchError::BadValue {
                path: path.display().to_string(),
                name,
                value: value.chars().take(ENV_VALUE_BYTES_MAX * 2).collect(),
            });
        }
    }
    let fail = |source| WatchError::Write {
        path: path.display().to_string(),
        source,
    };
    let text =
        format!("AWS_REGION={aws_region}\nSWITCHYARD_ACTIVE_REGION={region}\nSWITCHYARD_GENERATION={generation}\n");
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TEMPORARIES.fetch_add(1, Ordering::Relaxed)
    ));
    let temporary = PathBuf::from(temporary);
    // Exclusive: never into a file (or through a symlink) someone else put there.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(fail)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&temporary, path)
        });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(error));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Why reading the pointer from one member failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the controller refused the token (HTTP {status})")]
    Unauthorized { url: String, status: u16 },
    #[error("{0}")]
    Other(String),
}

/// One member's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub value: PointerValue,
    /// Why the value may be stale: a member cut off from etcd still names the region it last
    /// knew, and another member may have moved it since.
    pub stale: Option<String>,
    /// A runbook under way, when the member says so: its generation and the region it moves
    /// the active role to.
    pub moving: Option<Moving>,
}

/// A runbook under way, as `GET /v1/active-region` says in `moving`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moving {
    pub generation: u64,
    pub to: String,
    /// Not under way: a failed runbook waits to be tried again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// Reads `GET /v1/active-region` from the member at `base`: with `wait_ms` above 0 a long-poll
/// that answers once the generation is past `seen` or `wait_ms` has passed.
pub async fn fetch(
    client: &HttpClient,
    base: &str,
    token: Option<&str>,
    seen: u64,
    wait_ms: u64,
    timeout_ms: u64,
) -> Result<Reading, FetchError> {
    let base = base.trim_end_matches('/');
    let url = if wait_ms > 0 {
        format!("{base}/v1/active-region?wait_generation={seen}&timeout_ms={wait_ms}")
    } else {
        format!("{base}/v1/active-region")
    };
    let answer = client
        .request(Method::GET, &url, token, None, timeout_ms)
        .await
        .map_err(|e| FetchError::Other(e.to_string()))?;
    if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
        return Err(FetchError::Unauthorized {
            url,
            status: answer.status.as_u16(),
        });
    }
    if !answer.status.is_success() {
        return Err(FetchError::Other(format!(
            "{url}: HTTP {}: {}",
            answer.status.as_u16(),
            answer.text()
        )));
    }
    let document: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| FetchError::Other(format!("{url}: not a pointer document: {e}")))?;
    let stale = document
        .get("stale")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let moving = match document.get("moving") {
        None | Some(serde_json::Value::Null) => None,
        Some(moving) => Some(
            serde_json::from_value(moving.clone())
                .map_err(|e| FetchError::Other(format!("{url}: not a pointer document: moving: {e}")))?,
        ),
    };
    let value = serde_json::from_value(document)
        .map_err(|e| FetchError::Other(format!("{url}: not a pointer document: {e}")))?;
    Ok(Reading { value, stale, moving })
}

/// Why no member gave a pointer that can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    /// The HTTP status of a refused token, when every member that answered refused it.
    pub refused: Option<u16>,
    /// One line per member: what it answered or why it did not.
    pub members: Vec<String>,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.members.join("; "))
    }
}

/// Asks every member at once (each within `timeout_ms`) and returns the newest pointer among
/// the answers not marked stale: generations only grow, and every member that reaches etcd
/// serves what etcd records, so the newest fresh answer is the pointer. A stale answer counts
/// as none (running a job on it could run it in two regions at once).
pub async fn read_newest(
    client: &HttpClient,
    members: &ControllerUrls,
    token: Option<&str>,
    timeout_ms: u64,
) -> Result<PointerValue, ReadError> {
    let answers = futures_util::future::join_all(
        members
            .urls()
            .iter()
            .map(|url| async move { (url, fetch(client, url, token, 0, 0, timeout_ms).await) }),
    )
    .await;
    let mut newest: Option<PointerValue> = None;
    let mut lines = Vec::new();
    let mut refused = None;
    let mut other_failures = false;
    for (url, answer) in answers {
        match answer {
            Ok(Reading { value, stale: None, .. }) => {
                if newest.as_ref().is_none_or(|n| value.generation > n.generation) {
                    newest = Some(value);
                }
            }
            Ok(Reading { stale: Some(why), .. }) => {
                other_failures = true;
                lines.push(format!("{url}: the pointer may be stale: {why}"));
            }
            Err(FetchError::Unauthorized { url, status }) => {
                refused = Some(status);
                lines.push(format!(
                    "{url}: the controller refused the token (HTTP {status}): pass --token-file with a read token or set SWITCHYARD_CONTROL_TOKEN"
                ));
            }
            Err(FetchError::Other(error)) => {
                other_failures = true;
                lines.push(error);
            }
        }
    }
    match newest {
        Some(value) => {
            for line in &lines {
                tracing::warn!(member = %line, "a controller member gave no pointer; another did");
            }
            Ok(value)
        }
        None => Err(ReadError {
            refused: refused.filter(|_| !other_failures),
            members: lines,
        }),
    }
}
/// Runs the reload command once with the pointer's variables in its environment (the same
/// as in the env file).
pub async fn run_exec_values(command: &str, generation: u64, aws_region: &str, region: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SWITCHYARD_ACTIVE_REGION", region)
        .env("AWS_REGION", aws_region)
        .env("SWITCHYARD_GENERATION", generation.to_string())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run sh -c '{command}': {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("'{command}' failed: {status}"))
    }
}

/// What one member's poller passes to the watcher.
enum MemberSays {
    Value(PointerValue),
    Refused(u16),
}

/// Values the pollers may have queued for the watcher.
const WATCH_QUEUE_MAX: usize = 64;
/// First wait before asking a member again after a failure (doubling up to
/// [`WATCH_BACKOFF_MS_MAX`]).
const WATCH_BACKOFF_MS_MIN: u64 = 250;

/// Follows the pointer until `shutdown` resolves. Every member is long-polled at once, each on
/// its own connection with its own backoff, and the newest generation any of them reports is
/// applied: a member that is down, or cut off from etcd and so stuck on an old value, holds
/// nothing back while another answers. A refused token ends the watch once every member has
/// refused it.
pub async fn watch(options: WatchOptions, shutdown: impl Future<Output = ()>) -> Result<(), WatchError> {
    let client = HttpClient::new();
    let mut applied = applied_generation(&options.env_file);
    let (applied_sender, applied_receiver) = watch::channel(applied);
    let (sender, mut received) = tokio::sync::mpsc::channel::<(usize, MemberSays)>(WATCH_QUEUE_MAX);
    // Dropped (and so aborted) when the watch returns.
    let mut pollers = tokio::task::JoinSet::new();
    for (index, url) in options.controllers.urls().iter().enumerate() {
        pollers.spawn(poll_member(
            client.clone(),
            url.clone(),
            options.token.clone(),
            applied_receiver.clone(),
            sender.clone(),
            index,
        ));
    }
    drop(sender);
    let mut refused = vec![false; options.controllers.len()];
    tokio::pin!(shutdown);
    loop {
        let says = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            says = received.recv() => says,
        };
        let value = match says {
            None => return Ok(()),
            Some((index, MemberSays::Refused(status))) => {
                refused[index] = true;
                if refused.iter().all(|r| *r) {
                    return Err(WatchError::Unauthorized(status));
                }
                continue;
            }
            Some((index, MemberSays::Value(value))) => {
                refused[index] = false;
                value
            }
        };
        match judge(applied, &value) {
            Received::Apply => {}
            Received::Ignore => continue,
            Received::NotARegion => {
                tracing::warn!(
                    generation = value.generation,
                    region = ?value.region,
                    "refused a pointer whose region is not a region name; nothing changed"
                );
                continue;
            }
            Received::TooFarAhead => {
                tracing::warn!(
                    generation = value.generation,
                    applied,
                    "refused a pointer generation more than {GENERATION_STEP_MAX} above the applied one; nothing changed"
                );
                continue;
            }
        }
        let Some(region) = value.region.clone() else {
            continue;
        };
        write_env_file(&options.env_file, &region, value.generation)?;
        applied = value.generation;
        let _ = applied_sender.send(applied);
        tracing::info!(%region, generation = value.generation, file = %options.env_file.display(), "active region changed");
        if let Some(command) = &options.exec {
            apply_exec(&client, &options, command, &value, &region).await;
        }
    }
}

/// Long-polls one member for ever, passing on each generation past what was applied and what
/// it passed on before (so a value the watcher refused is not sent again and again).
async fn poll_member(
    client: HttpClient,
    url: String,
    token: Option<String>,
    applied: watch::Receiver<u64>,
    out: tokio::sync::mpsc::Sender<(usize, MemberSays)>,
    index: usize,
) {
    let mut passed_on = 0u64;
    let mut backoff_ms = WATCH_BACKOFF_MS_MIN;
    loop {
        let seen = (*applied.borrow()).max(passed_on);
        let asked = tokio::time::Instant::now();
        let wait_ms = match fetch(
            &client,
            &url,
            token.as_deref(),
            seen,
            WATCH_POLL_MS,
            WATCH_POLL_MS + 5_000,
        )
        .await
        {
            Ok(reading) => {
                if let Some(why) = &reading.stale {
                    tracing::warn!(member = %url, %why, "this controller member's pointer may be stale");
                }
                if reading.value.generation > seen {
                    passed_on = reading.value.generation;
                    backoff_ms = WATCH_BACKOFF_MS_MIN;
                    if out.send((index, MemberSays::Value(reading.value))).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Nothing newer. A long-poll that came back early (a member that does not
                // hold it) is asked again only after a pause, never in a tight loop.
                if asked.elapsed() >= Duration::from_millis(WATCH_POLL_MS / 2) {
                    backoff_ms = WATCH_BACKOFF_MS_MIN;
                    continue;
                }
                backoff_ms
            }
            Err(FetchError::Unauthorized { url, status }) => {
                tracing::error!(member = %url, status, "the controller refused the token: check --token-file or SWITCHYARD_CONTROL_TOKEN");
                if out.send((index, MemberSays::Refused(status))).await.is_err() {
                    return;
                }
                WATCH_BACKOFF_MS_MAX
            }
            Err(FetchError::Other(error)) => {
                tracing::warn!(%error, backoff_ms, "cannot read the active-region pointer from this member; retrying");
                backoff_ms
            }
        };
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        backoff_ms = (backoff_ms * 2).min(WATCH_BACKOFF_MS_MAX);
    }
}

/// Runs the reload command with bounded retries, giving up as soon as a newer generation exists
/// (the next loop round applies that one instead).
async fn apply_exec(client: &HttpClient, options: &WatchOptions, command: &str, value: &PointerValue, region: &str) {
    let superseded = || async {
        match read_newest(
            client,
            &options.controllers,
            options.token.as_deref(),
            WATCH_SUPERSEDED_TIMEOUT_MS,
        )
        .await
        {
            Ok(latest) if latest.generation > value.generation => {
                tracing::info!(
                    generation = value.generation,
                    newer = latest.generation,
                    "a newer generation exists; not retrying the command for the old one"
                );
                true
            }
            _ => false,
        }
    };
    run_exec_retrying(command, value.generation, region, region, superseded).await;
}

/// How long the check for a newer generation between two tries of the reload command waits.
const WATCH_SUPERSEDED_TIMEOUT_MS: u64 = 5_000;

/// Runs the reload command ([`run_exec_values`]) at most [`EXEC_ATTEMPTS_MAX`] times, waiting
/// 200 ms × the attempt between tries; before each retry, `superseded` says whether a newer
/// generation made this one moot. A command that keeps failing is logged, not fatal.
pub async fn run_exec_retrying<F, Fut>(
    command: &str,
    generation: u64,
    aws_region: &str,
    region: &str,
    mut superseded: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for attempt in 1..=EXEC_ATTEMPTS_MAX {
        if attempt > 1 && superseded().await {
            return;
        }
        match run_exec_values(command, generation, aws_region, region).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, attempt, "reload command failed");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(
        command,
        generation,
        "reload command failed {EXEC_ATTEMPTS_MAX} times; waiting for the next change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_never_goes_back() {
        let pointer = Pointer::new(PointerValue::default());
        pointer.publish("a", 3).expect("newer");
        pointer.publish("a", 3).expect("same generation is idempotent");
        assert!(pointer.publish("b", 2).is_err());
        assert_eq!(pointer.get().region.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn long_poll_returns_on_change_or_timeout() {
        let pointer = Pointer::new(PointerValue::default());
        let waiter = {
            let pointer = pointer.clone();
            tokio::spawn(async move { pointer.wait_past(0, 30_000).await })
        };
        pointer.publish("eu", 1).expect("publish");
        let value = waiter.await.expect("join");
        assert_eq!(value.generation, 1);
        let value = pointer.wait_past(1, 10).await;
        assert_eq!(value.generation, 1, "times out with the current value");
    }

    #[tokio::test]
    async fn the_event_stream_sends_the_value_then_each_change_and_ends_on_close() {
        use futures_util::StreamExt;
        let pointer = Pointer::new(PointerValue::default());
        pointer.publish("us", 1).expect("publish");
        let (close, closing) = watch::channel(false);
        let stream = pointer.event_stream(closing).expect("a slot");
        let mut stream = std::pin::pin!(stream);
        assert!(stream.next().await.is_some(), "the current value at once");
        assert_eq!(pointer.streams_open(), 1);
        let next = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(next.is_err(), "nothing more until the pointer changes");
        pointer.publish("eu", 2).expect("publish");
        assert!(stream.next().await.is_some(), "the change");
        close.send(true).expect("close");
        assert!(
            stream.next().await.is_none(),
            "the stream ends when the controller closes"
        );
    }

    #[test]
    fn event_streams_are_capped_and_counted() {
        let pointer = Pointer::new(PointerValue::default());
        let (_close, closing) = watch::channel(false);
        let streams: Vec<_> = (0..SSE_STREAMS_MAX)
            .map(|_| pointer.event_stream(closing.clone()).expect("below the cap"))
            .collect();
        assert_eq!(pointer.streams_open(), SSE_STREAMS_MAX);
        assert!(pointer.event_stream(closing.clone()).is_none(), "one more is refused");
        assert_eq!(
            pointer.streams_open(),
            SSE_STREAMS_MAX,
            "the refused one is not counted"
        );
        drop(streams);
        assert_eq!(pointer.streams_open(), 0);
        assert!(pointer.event_stream(closing).is_some());
    }

    #[test]
    fn a_generation_too_far_ahead_is_refused() {
        let at = |generation: u64| PointerValue {
            region: Some("eu".into()),
            generation,
        };
        assert_eq!(judge(5, &at(6)), Received::Apply);
        assert_eq!(judge(5, &at(5)), Received::Ignore);
        assert_eq!(judge(5, &at(4)), Received::Ignore);
        assert_eq!(judge(5, &at(5 + GENERATION_STEP_MAX)), Received::Apply);
        assert_eq!(judge(5, &at(6 + GENERATION_STEP_MAX)), Received::TooFarAhead);
        assert_eq!(judge(0, &at(u64::MAX)), Received::TooFarAhead);
        let nowhere = PointerValue {
            region: None,
            generation: 9,
        };
        assert_eq!(judge(0, &nowhere), Received::Ignore);
    }

    #[test]
    fn a_region_that_is_no_region_name_is_refused_and_never_written() {
        let at = |region: &str| PointerValue {
            region: Some(region.into()),
            generation: 6,
        };
        assert_eq!(judge(5, &at("eu-west-1")), Received::Apply);
        assert_eq!(judge(5, &at("ap_south.2")), Received::Apply);
        for bad in [
            "eu\nSWITCHYARD_GENERATION=99",
            "",
            "eu west",
            "a=b",
            "\"eu\"",
            "$(reboot)",
            &"x".repeat(65),
        ] {
            assert_eq!(judge(5, &at(bad)), Received::NotARegion, "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("region.env");
        write_env_file(&path, "us-east-1", 4).expect("write");
        let error =
            write_env_values(&path, "eu-west-1\nSWITCHYARD_GENERATION=99", "eu-west-1", 5).expect_err("refused");
        assert!(error.to_string().contains("AWS_REGION"), "{error}");
        assert!(error.to_string().contains("a region name"), "{error}");
        assert!(write_env_file(&path, "eu\nX=1", 5).is_err());
        assert_eq!(applied_generation(&path), 4, "the file is unchanged");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn concurrent_writers_never_leave_a_torn_env_file() {
        // Two writers on one file (an overlapping restart, a second watcher) used one shared
        // temporary file: one could truncate it while the other renamed it into place.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("region.env");
        // Someone else's file (or symlink) where the shared temporary name used to be is
        // never written through.
        let planted = dir.path().join("region.env.tmp");
        std::fs::write(&planted, "planted").expect("plant");
        std::thread::scope(|scope| {
            for writer in 0..4u64 {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..200u64 {
                        let region = if writer % 2 == 0 { "us-east-1" } else { "eu-west-1" };
                        write_env_file(path, region, writer * 1000 + round).expect("write");
                    }
                });
            }
            for _ in 0..400 {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let lines: Vec<&str> = text.lines().collect();
                    assert_eq!(lines.len(), 3, "a whole file: {text:?}");
                    assert!(lines[0].starts_with("AWS_REGION="), "{text:?}");
                    assert!(lines[2].starts_with("SWITCHYARD_GENERATION="), "{text:?}");
                }
            }
        });
        assert_eq!(std::fs::read_to_string(&planted).expect("read"), "planted");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 2, "only the env file and the planted one: {left:?}");
    }

    #[test]
    fn env_file_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("region.env");
        assert_eq!(applied_generation(&path), 0);
        write_env_file(&path, "eu-west-1", 9).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("AWS_REGION=eu-west-1\n"));
        assert_eq!(applied_generation(&path), 9);
    }
}
