//! Global tables at run time: the replication endpoints other regions call, and one shipping
//! task per peer that drives the sans-IO [`replication::Shipper`] over HTTP.
//!
//! Invariants:
//! - traffic between regions is authenticated: every request carries an HMAC-SHA256 of its
//!   region header and body under the shared replication key; anything else is refused;
//! - a batch is checked whole (signature, decoding, every record) before its job starts, so a
//!   corrupt batch applies nothing; replays are recognised by sequence numbers and apply nothing;
//! - changes apply by last-writer-wins on `(hlc, origin)` in the writer, together with the
//!   receiver's durable position for that source, so a crash never applies a batch twice or
//!   half; local writes never wait for peers (eventual mode).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use dynamo_protocol::{ApiError, ErrorKind};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use replication::digest::{Digest, Range as DigestRange, Walk};
use replication::shipper::{Acceptance, accept};
use replication::{Command, Mark, PeerClocks, PeerOffset, Shipper, ShipperConfig, Watermarks};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::catalog::TableMeta;
use crate::engine::Engine;
use crate::record;
use crate::replication_log::{self, Change};

pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";
pub const REGION_HEADER: &str = "x-switchyard-region";
/// When the request was signed, in Unix milliseconds (part of the signature).
pub const DATE_HEADER: &str = "x-switchyard-date";
/// A signed request older or newer than this (by this store's clock) is refused: a captured
/// request cannot be replayed later, and the regions' clocks must agree within it (NTP).
pub const REQUEST_SKEW_MS_MAX: u64 = 300_000;
/// Bytes of changes per batch at most (a batch also stops at the shipper's change count).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Records per anti-entropy request at most.
pub const REPAIR_RECORDS_PER_REQUEST_MAX: usize = 1_000;
/// Key ranges per digest request at most (one level of the tree under 16 parents).
pub const DIGEST_RANGES_PER_REQUEST_MAX: usize = 256;
/// A differing key range with at most this many records here is pushed whole instead of
/// being split further.
pub const REPAIR_LEAF_RECORDS_MAX: u64 = 128;
/// A running repair (backfill) logs its progress at most this often.
pub const REPAIR_PROGRESS_LOG_MS: u64 = 5_000;
/// Bytes the replication log may hold for the slowest peer before it is trimmed anyway (that
/// peer is then repaired by anti-entropy), unless configured otherwise
/// (`--replication-backlog-bytes-max`); the backlog alarm fires at 80 % of the bound.
pub const LOG_BACKLOG_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;
pub const LOG_BACKLOG_ALARM_PERCENT: u64 = 80;
/// How often the log is trimmed behind the slowest peer.
pub const TRIM_INTERVAL_MS: u64 = 2_000;
/// A shipping task with nothing to do wakes at least this often.
pub const IDLE_WAKE_MS: u64 = 1_000;
/// Timeout of one replication HTTP request.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How often this region takes a watermark mark, sends it to its peers and purges tombstones
/// below its watermark (see `replication::watermark`).
pub const MARK_INTERVAL_MS: u64 = 1_000;
/// Purge jobs one round runs at most (each visits `TOMBSTONE_PURGES_PER_JOB_MAX` entries).
pub const PURGE_JOBS_PER_ROUND_MAX: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub region: String,
    /// Base URL of the peer's store, e.g. `http://10.0.0.2:8000`.
    pub url: String,
}

impl Peer {
    /// Parses `REGION=URL` (the `--peer` flag's form; a trailing `/` is dropped).
    pub fn parse(text: &str) -> Result<Peer, String> {
        let (region, url) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not REGION=URL; write it like eu-west-1=http://127.0.0.1:8001"))?;
        check_region_name(region)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("'{url}' is not a URL: write it like http://127.0.0.1:8001"));
        }
        Ok(Peer {
            region: region.to_string(),
            url: url.trim_end_matches('/').to_string(),
        })
    }
}

/// The setting that records a backfill of `peer` still to finish (set with the replica
/// list that adds the peer, cleared when a repair to it finishes).
pub fn backfill_setting(peer: &str) -> String {
    format!("backfill_pending/{peer}")
}

/// A region name: letters, digits, dashes and underscores (`eu-west-1`).
pub fn check_region_name(region: &str) -> Result<(), String> {
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "'{region}' is not a region name: use letters, digits and dashes, like eu-west-1"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub peers: Vec<Peer>,
    /// The shared secret that authenticates traffic between regions.
    pub key: Vec<u8>,
    /// Bytes of replication log kept for a peer that is behind (see `LOG_BACKLOG_BYTES_DEFAULT`).
    pub backlog_bytes_max: u64,
    /// A peer's clock further off than this raises an alarm (`CLOCK_OFFSET_ALARM_MS_DEFAULT`).
    pub clock_offset_alarm_ms: u64,
    /// Local stamps never run further ahead of the wall clock (`CLOCK_OFFSET_MAX_MS_DEFAULT`).
    pub clock_offset_max_ms: u64,
    /// How `https://` peers are verified (`--peer-ca`); `None`: against the Mozilla roots.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
}

pub use replication::clock_offset::CLOCK_OFFSET_ALARM_MS_DEFAULT;
pub use replication::hlc::CLOCK_OFFSET_MAX_MS_DEFAULT;

/// What the operator and DescribeTable see of one peer.
#[derive(Default)]
pub struct PeerStatus {
    pub pending_changes: AtomicU64,
    pub pending_bytes: AtomicU64,
    pub acked: AtomicU64,
    /// Age of the oldest change the peer does not have yet (0 when caught up).
    pub lag_ms: AtomicU64,
    pub repairing: AtomicBool,
    /// A backfill (replica creation) was asked for and has not finished: the replica shows as
    /// CREATING. Other repairs (anti-entropy after an outage) leave it ACTIVE.
    pub backfilling: AtomicBool,
    pub repaired_records: AtomicU64,
    /// Items the running repair has to copy (the shared tables' item counts at its start).
    pub repair_total: AtomicU64,
    pub consecutive_failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When `last_error` happened (0: never), so a healed peer's old error reads as old.
    pub last_error_at_unix_ms: AtomicU64,
    /// Anti-entropy repairs finished, and what the last one compared and moved.
    pub repairs: AtomicU64,
    pub last_repair_ranges_compared: AtomicU64,
    pub last_repair_records_pushed: AtomicU64,
    repair_requested: AtomicBool,
    wake: tokio::sync::Notify,
}

type HttpClient = Client<common::tls_client::Connector, Full<Bytes>>;

/// The replication side of one store.
pub struct Replication {
    region: String,
    config: ReplicationConfig,
    engine: Engine,
    client: HttpClient,
    pub status: BTreeMap<String, Arc<PeerStatus>>,
    /// Held while a replica-definition request is numbered and sent, so each peer receives
    /// them in sequence order.
    definitions: tokio::sync::Mutex<()>,
    /// The peers' clock offsets, from the signing times of their requests.
    clocks: Mutex<PeerClocks>,
    /// The peers' marks, and so when a tombstone may be purged.
    watermarks: Mutex<Watermarks>,
    /// This region's latest mark, sent to every peer.
    mark: tokio::sync::watch::Sender<Option<Mark>>,
    pub tombstones: TombstoneStatus,
}

/// What the operator sees of tombstone purging.
#[derive(Default)]
pub struct TombstoneStatus {
    /// Tombstones with an HLC below this may be purged (0: not yet known since startup).
    pub purge_below: AtomicU64,
    pub purged_total: AtomicU64,
    /// The peer holding purging back the most.
    pub held_back_by: Mutex<Option<String>>,
}

#[derive(Serialize, Deserialize)]
struct MarkRequest {
    clock: u64,
    received: u64,
    head: u64,
}

#[derive(Serialize, Deserialize)]
struct BatchRequest {
    batch: u64,
    from_seq: u64,
    to_seq: u64,
    /// Encoded changes (see `replication_log`), base64.
    changes: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct BatchResponse {
    through: Option<u64>,
    expected_from: Option<u64>,
    applied: u64,
}

#[derive(Serialize, Deserialize)]
struct RepairRequest {
    records: Vec<String>,
    /// Set on the last request of a repair: the source's log head when the repair began.
    complete_through: Option<u64>,
    /// Set with `complete_through` when the repair was the backfill of replicas the receiver
    /// joined: the receiver's join barrier it completes (the source's pending backfill
    /// setting, read before the tables). The receiver stops waiting for the backfills of
    /// the replicas it joined at or below it.
    #[serde(default)]
    backfill_barrier: u64,
}

#[derive(Serialize, Deserialize)]
struct DigestRequest {
    table: String,
    /// `(depth, index)` of each range (see `replication::digest::Range`).
    ranges: Vec<(u8, u32)>,
}

#[derive(Serialize, Deserialize)]
struct DigestResponse {
    /// `(count, hash as hex)` per requested range, in order.
    digests: Vec<(u64, String)>,
}

struct RepairProgress {
    logged_at: std::time::Instant,
    total: u64,
}

#[derive(Serialize, Deserialize)]
pub struct TableRequest {
    pub table: TableMeta,
    /// Delete this region's replica instead of creating or updating it.
    pub delete: bool,
    /// The sender's replica-definition sequence: strictly increasing per sender, durable on
    /// both sides, so a replayed request is refused after any number of restarts.
    #[serde(default)]
    pub sequence: u64,
    /// The sender adds the receiver as a replica and will backfill it. A receiver that holds
    /// the replica already, still awaiting its backfill (an `UpdateTable` retried after a
    /// failure), hands the wait over to the sender and answers with its join barrier.
    #[serde(default)]
    pub joining: bool,
}

/// The sender's durable counter of replica-definition requests.
const DEFINITION_SENT_SETTING: &str = "definition_sent";

/// The receiver's durable record of the highest replica-definition sequence from `source`.
fn definition_received_setting(source: &str) -> String {
    format!("definition_received/{source}")
}

/// The signature a peer sends with a replication request (`SIGNATURE_HEADER`): HMAC-SHA256,
/// with the shared replication key, over the sending region, the request path, the signing
/// time (`DATE_HEADER`, Unix ms) and the body.
pub fn sign(key: &[u8], region: &str, path: &str, date_ms: u64, body: &[u8]) -> String {
    hex::encode(mac(key, region, path, date_ms, body).finalize().into_bytes())
}

fn mac(key: &[u8], region: &str, path: &str, date_ms: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("switchyard-replication-v2\n{region}\n{path}\n{date_ms}\n").as_bytes());
    mac.update(body);
    mac
}

fn verify(key: &[u8], region: &str, path: &str, date_ms: u64, body: &[u8], signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    mac(key, region, path, date_ms, body).verify_slice(&signature).is_ok()
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::AccessDenied, message)
}

impl Replication {
    pub fn new(engine: Engine, config: ReplicationConfig) -> Arc<Replication> {
        let tls = config.peer_tls.clone().unwrap_or_else(|| {
            common::tls_client::client_config(None).expect("the TLS configuration with the Mozilla roots builds")
        });
        let client = Client::builder(TokioExecutor::new()).build(common::tls_client::Connector::new(tls));
        let status = config
            .peers
            .iter()
            .map(|p| (p.region.clone(), Arc::new(PeerStatus::default())))
            .collect();
        engine.set_clock_offset_max_ms(config.clock_offset_max_ms);
        let clocks = PeerClocks::new(config.peers.iter().map(|p| p.region.clone()));
        let mut watermarks = Watermarks::new(config.peers.iter().map(|p| p.region.clone()));
        for peer in &config.peers {
            watermarks.on_applied(&peer.region, engine.applied_from(&peer.region));
        }
        Arc::new(Replication {
            region: engine.region().to_string(),
            config,
            engine,
            client,
            status,
            definitions: tokio::sync::Mutex::new(()),
            clocks: Mutex::new(clocks),
            watermarks: Mutex::new(watermarks),
            mark: tokio::sync::watch::Sender::new(None),
            tombstones: TombstoneStatus::default(),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn peer(&self, region: &str) -> Option<&Peer> {
        self.config.peers.iter().find(|p| p.region == region)
    }

    pub fn backlog_bytes_max(&self) -> u64 {
        self.config.backlog_bytes_max
    }

    pub fn peers(&self) -> &[Peer] {
        &self.config.peers
    }

    /// Starts one shipping task per peer and the log trimmer.
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .config
            .peers
            .iter()
            .map(|peer| {
                let replication = Arc::clone(self);
                let peer = peer.clone();
                tokio::spawn(async move { replication.ship_loop(peer).await })
            })
            .collect();
        let replication = Arc::clone(self);
        tasks.push(tokio::spawn(async move { replication.trim_loop().await }));
        let replication = Arc::clone(self);
        tasks.push(tokio::spawn(async move { replication.mark_loop().await }));
        tasks
    }

    /// Makes the next shipping round to `region` a full repair (backfill of a new replica).
    pub fn request_repair(&self, region: &str) {
        if let Some(status) = self.status.get(region) {
            status.backfilling.store(true, Ordering::SeqCst);
            status.repair_requested.store(true, Ordering::SeqCst);
            status.wake.notify_one();
        }
    }

    async fn post(&self, peer: &Peer, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let date_ms = self.engine.now_unix_ms();
        let signature = sign(&self.config.key, &self.region, path, date_ms, &body);
        let request = hyper::Request::post(format!("{}{path}", peer.url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .header(REGION_HEADER, &self.region)
            .header(DATE_HEADER, date_ms.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request to {}: {e}", peer.url))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{}: {}", peer.url, error_chain(&e)))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{}: {e}", peer.url))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
            .await
            .map_err(|_| format!("{}: no answer within {REQUEST_TIMEOUT_MS} ms", peer.url))?
    }

    /// Tells a peer to create, update or delete its replica of `table`.
    /// Returns the peer's join barrier when it created its replica just now (see
    /// `TableMeta::joined_below`): its backfill must wait until this region has received
    /// everything up to it.
    pub async fn send_table(
        &self,
        region: &str,
        table: &TableMeta,
        delete: bool,
        joining: bool,
    ) -> Result<Option<u64>, ApiError> {
        let peer = self.peer(region).ok_or_else(|| {
            ApiError::validation(format!(
                "Region {region} is not a peer of this store; start it with --peer {region}=http://HOST:PORT"
            ))
        })?;
        // One definition request at a time, so they reach each peer in sequence order.
        let _serial = self.definitions.lock().await;
        let sequence = self
            .engine
            .write(|context| {
                let next = context.setting(DEFINITION_SENT_SETTING)? + 1;
                context.set_setting(DEFINITION_SENT_SETTING, next)?;
                Ok(next)
            })
            .await?;
        let body = serde_json::to_vec(&TableRequest {
            table: table.clone(),
            delete,
            sequence,
            joining,
        })
        .expect("a table definition serialises");
        match self.post(peer, "/replication/v1/table", body).await {
            Ok((200, body)) => Ok(serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|answer| answer["joined_below"].as_u64())),
            Ok((status, body)) => Err(ApiError::validation(format!(
                "Region {region} refused the replica of {}: HTTP {status}: {}",
                table.name,
                String::from_utf8_lossy(&body)
            ))),
            Err(error) => Err(ApiError::new(
                ErrorKind::ServiceUnavailable,
                format!(
                    "Cannot reach region {region} to change the replica of {}: {error}; try again when it is up",
                    table.name
                ),
            )),
        }
    }

    async fn ship_loop(self: Arc<Self>, peer: Peer) {
        let status = Arc::clone(&self.status[&peer.region]);
        let mut head = self.engine.subscribe_log();
        let first = self
            .engine
            .snapshot()
            .and_then(|s| s.log_first(*head.borrow()))
            .unwrap_or(1);
        let acked = self.engine.acked(&peer.region);
        let config = ShipperConfig {
            request_timeout_ms: REQUEST_TIMEOUT_MS + 1_000,
            ..ShipperConfig::default()
        };
        let mut shipper = Shipper::new(config, acked, *head.borrow(), first);
        if self.engine.setting_value(&backfill_setting(&peer.region)) != 0 {
            tracing::info!(peer = %peer.region, "a backfill of this peer did not finish before the restart; starting it again");
            status.backfilling.store(true, Ordering::SeqCst);
            shipper.request_repair();
        }
        let mut last_saved = acked;
        let mut marks = self.mark.subscribe();
        let mut mark_sent: Option<Mark> = None;
        loop {
            let mark = *marks.borrow_and_update();
            if mark != mark_sent
                && let Some(mark) = mark
            {
                // Sent once per mark, failed or not: the next one follows within a second.
                self.send_mark(&peer, mark).await;
                mark_sent = Some(mark);
            }
            if status.repair_requested.swap(false, Ordering::SeqCst) {
                shipper.request_repair();
            }
            shipper.on_appended(*head.borrow_and_update());
            let now = self.engine.now_unix_ms();
            match shipper.poll(now) {
                Some(Command::Send {
                    batch,
                    from_seq,
                    changes_max,
                }) => match self.send_batch(&peer, batch, from_seq, changes_max).await {
                    Ok(Outcome::Acked(through)) => shipper.on_acked(batch, through),
                    Ok(Outcome::Gap(expected)) => shipper.on_gap(batch, expected),
                    Ok(Outcome::Trimmed(first)) => shipper.on_trimmed(first),
                    Err(error) => self.record_failure(&status, &mut shipper, batch, error),
                },
                Some(Command::Repair { batch }) => {
                    status.repairing.store(true, Ordering::SeqCst);
                    let setting = backfill_setting(&peer.region);
                    let barrier = self.engine.setting_value(&setting);
                    let outcome = match self.backfill_ready(barrier) {
                        Ok(()) => self.repair(&peer, &status, barrier).await,
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Ok(through) => {
                            shipper.on_repaired(batch, through);
                            if barrier != 0 {
                                // Cleared only if no newer join raised it meanwhile.
                                let cleared = self
                                    .engine
                                    .write(move |context| {
                                        let current = context.setting(&setting)?;
                                        if current == barrier {
                                            context.set_setting(&setting, 0)?;
                                        }
                                        Ok(current == barrier)
                                    })
                                    .await;
                                match cleared {
                                    Ok(true) => status.backfilling.store(false, Ordering::SeqCst),
                                    Ok(false) => status.repair_requested.store(true, Ordering::SeqCst),
                                    Err(error) => {
                                        tracing::warn!(%error, "recording a finished backfill failed; it runs again");
                                        status.repair_requested.store(true, Ordering::SeqCst);
                                    }
                                }
                            }
                            tracing::info!(peer = %peer.region, through, "repair finished: the peer holds everything through this change");
                        }
                        Err(error) => self.record_failure(&status, &mut shipper, batch, error),
                    }
                    status.repairing.store(false, Ordering::SeqCst);
                }
                None => {
                    let wait = shipper
                        .next_deadline_ms()
                        .map_or(IDLE_WAKE_MS, |d| d.saturating_sub(now).clamp(1, IDLE_WAKE_MS));
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        _ = marks.changed() => {},
                        () = status.wake.notified() => {},
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {},
                    }
                }
            }
            if shipper.acked() != last_saved && self.engine.save_acked(&peer.region, shipper.acked()).await.is_ok() {
                last_saved = shipper.acked();
            }
            self.update_status(&status, &shipper);
        }
    }

    fn record_failure(&self, status: &PeerStatus, shipper: &mut Shipper, batch: u64, error: String) {
        shipper.on_failed(batch, self.engine.now_unix_ms());
        let failures = u64::from(shipper.consecutive_failures());
        status.consecutive_failures.store(failures, Ordering::Relaxed);
        // Log the first failure and then every tenth: a peer that is down is not news each second.
        if failures == 1 || failures % 10 == 0 {
            tracing::warn!(failures, %error, "replication to a peer failed; retrying with backoff");
        }
        *status.last_error.lock().expect("status lock is never poisoned") = Some(error);
        status
            .last_error_at_unix_ms
            .store(self.engine.now_unix_ms(), Ordering::Relaxed);
    }

    fn update_status(&self, status: &PeerStatus, shipper: &Shipper) {
        status.acked.store(shipper.acked(), Ordering::Relaxed);
        status.pending_changes.store(shipper.pending(), Ordering::Relaxed);
        if shipper.consecutive_failures() == 0 {
            status.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let (lag, bytes) = match shipper.pending() {
            0 => (0, 0),
            _ => self.oldest_pending(shipper.acked()),
        };
        status.lag_ms.store(lag, Ordering::Relaxed);
        status.pending_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Age of the first change after `acked`, and the bytes of every change after it.
    fn oldest_pending(&self, acked: u64) -> (u64, u64) {
        let Ok(snapshot) = self.engine.snapshot() else {
            return (0, 0);
        };
        let bytes = snapshot.log_bytes_after(acked).unwrap_or(0);
        let Ok(entries) = snapshot.read_log(acked + 1, 1, BATCH_BYTES_MAX) else {
            return (0, bytes);
        };
        let lag = entries
            .first()
            .and_then(|(_, entry)| replication_log::decode_change(entry).ok())
            .and_then(|change| record::hlc(&change.record).ok())
            .map(|hlc| {
                self.engine
                    .now_unix_ms()
                    .saturating_sub(hlc >> replication::hlc::LOGICAL_BITS)
            })
            .unwrap_or(0);
        (lag, bytes)
    }

    /// Whether a log entry goes to `peer`: the change did not originate there, and its table
    /// has a replica there (or is gone here, in which case the peer decides).
    fn ships_to(&self, entry: &[u8], peer: &str) -> bool {
        let from_peer = replication_log::record_of(entry)
            .and_then(|r| record::origin(r).ok())
            .is_some_and(|origin| origin == peer);
        let replica_there = match replication_log::table_of(entry).map(|name| self.engine.table(name)) {
            Some(Some(table)) => table.replicas.iter().any(|r| r == peer),
            Some(None) => true,
            None => false,
        };
        replica_there && !from_peer
    }

    async fn send_batch(&self, peer: &Peer, batch: u64, from_seq: u64, changes_max: usize) -> Result<Outcome, String> {
        let snapshot = self.engine.snapshot().map_err(|e| e.message)?;
        let entries = snapshot
            .read_log(from_seq, changes_max, BATCH_BYTES_MAX)
            .map_err(|e| e.message)?;
        match entries.first() {
            None => return Ok(Outcome::Acked(from_seq.saturating_sub(1))),
            Some((first, _)) if *first != from_seq => return Ok(Outcome::Trimmed(*first)),
            Some(_) => {}
        }
        let to_seq = entries.last().map_or(from_seq, |(seq, _)| *seq);
        let request = BatchRequest {
            batch,
            from_seq,
            to_seq,
            // Left out (an empty entry keeps the numbering): a change that originated at the
            // peer, which holds it or something newer already, and a change of a table the
            // peer has no replica of. The latter matters for purging tombstones: a region
            // vouches (in its marks) only for changes it applied, never for ones it skipped.
            changes: entries
                .iter()
                .map(|(_, entry)| {
                    if self.ships_to(entry, &peer.region) {
                        BASE64.encode(entry)
                    } else {
                        String::new()
                    }
                })
                .collect(),
        };
        let body = serde_json::to_vec(&request).expect("a batch serialises");
        let response: BatchResponse = self.exchange(peer, "/replication/v1/batch", body).await?;
        match (response.through, response.expected_from) {
            (Some(through), _) => Ok(Outcome::Acked(through)),
            (None, Some(expected)) => Ok(Outcome::Gap(expected)),
            (None, None) => Err(format!("{}: answer has neither through nor expected_from", peer.url)),
        }
    }

    /// Anti-entropy with `peer` over every global table they share (also the backfill of a new
    /// replica): range digests find where the peer differs (`replication::digest`), and this
    /// region's records there are pushed; a peer with an empty table gets everything at once.
    /// Returns the log head as of the start: the peer then holds everything through it.
    /// `barrier`: the peer's join barrier this repair backfills (0 for anti-entropy only), read
    /// before the tables so that every replica joined at or below it is among them.
    async fn repair(&self, peer: &Peer, status: &PeerStatus, barrier: u64) -> Result<u64, String> {
        let head = self.engine.log_head();
        status.repaired_records.store(0, Ordering::Relaxed);
        let tables: Vec<Arc<TableMeta>> = self
            .engine
            .tables()
            .into_iter()
            .filter(|t| t.replicas.iter().any(|r| r == &peer.region))
            .collect();
        let total: u64 = tables.iter().map(|t| self.engine.stats(t.id, None).item_count).sum();
        status.repair_total.store(total, Ordering::Relaxed);
        let mut progress = RepairProgress {
            logged_at: std::time::Instant::now(),
            total,
        };
        let mut compared = 0;
        for table in tables {
            let mut walk = Walk::new(REPAIR_LEAF_RECORDS_MAX);
            while !walk.is_done() {
                let ranges = walk.next_ranges(DIGEST_RANGES_PER_REQUEST_MAX);
                let local = self.local_digests(&table, ranges.clone()).await?;
                let remote = self.remote_digests(peer, &table.name, &ranges).await?;
                for range in walk.on_digests(&ranges, &local, &remote) {
                    self.push_range(peer, status, &table, range, &mut progress).await?;
                }
            }
            compared += walk.compared;
        }
        self.send_repair(
            peer,
            RepairRequest {
                records: Vec::new(),
                complete_through: Some(head),
                backfill_barrier: barrier,
            },
        )
        .await?;
        let pushed = status.repaired_records.load(Ordering::Relaxed);
        status.repairs.fetch_add(1, Ordering::Relaxed);
        status.last_repair_ranges_compared.store(compared, Ordering::Relaxed);
        status.last_repair_records_pushed.store(pushed, Ordering::Relaxed);
        tracing::info!(
            peer = %peer.region,
            ranges_compared = compared,
            records_pushed = pushed,
            items = total,
            "anti-entropy compared range digests and pushed the differences"
        );
        Ok(head)
    }

    /// This region's digests of `ranges`, computed off the async threads (a range can be the
    /// whole table).
    async fn local_digests(&self, table: &Arc<TableMeta>, ranges: Vec<DigestRange>) -> Result<Vec<Digest>, String> {
        let engine = self.engine.clone();
        let table = Arc::clone(table);
        tokio::task::spawn_blocking(move || engine.snapshot()?.digests(&table, &ranges))
            .await
            .map_err(|e| format!("digest task failed: {e}"))?
            .map_err(|e| e.message)
    }

    async fn remote_digests(&self, peer: &Peer, table: &str, ranges: &[DigestRange]) -> Result<Vec<Digest>, String> {
        let body = serde_json::to_vec(&DigestRequest {
            table: table.to_string(),
            ranges: ranges.iter().map(|r| (r.depth, r.index)).collect(),
        })
        .expect("a digest request serialises");
        let response: DigestResponse = self.exchange(peer, "/replication/v1/digest", body).await?;
        if response.digests.len() != ranges.len() {
            return Err(format!(
                "{}: {} digests for {} ranges",
                peer.url,
                response.digests.len(),
                ranges.len()
            ));
        }
        response
            .digests
            .iter()
            .map(|(count, hash)| {
                Ok(Digest {
                    count: *count,
                    hash: u128::from_str_radix(hash, 16)
                        .map_err(|e| format!("{}: bad digest {hash}: {e}", peer.url))?,
                })
            })
            .collect()
    }

    /// Sends every record of `table` in `range` to the peer, a page at a time.
    async fn push_range(
        &self,
        peer: &Peer,
        status: &PeerStatus,
        table: &TableMeta,
        range: DigestRange,
        progress: &mut RepairProgress,
    ) -> Result<(), String> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let snapshot = self.engine.snapshot().map_err(|e| e.message)?;
            let records = snapshot
                .records_in(table, range, after.as_deref(), REPAIR_RECORDS_PER_REQUEST_MAX)
                .map_err(|e| e.message)?;
            let Some((last, _)) = records.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let encoded = records
                .iter()
                .map(|(key, record)| BASE64.encode(replication_log::encode_change(&table.name, key, record)))
                .collect();
            self.send_repair(
                peer,
                RepairRequest {
                    records: encoded,
                    complete_through: None,
                    backfill_barrier: 0,
                },
            )
            .await?;
            let copied = status
                .repaired_records
                .fetch_add(records.len() as u64, Ordering::Relaxed)
                + records.len() as u64;
            if progress.logged_at.elapsed() >= Duration::from_millis(REPAIR_PROGRESS_LOG_MS) {
                progress.logged_at = std::time::Instant::now();
                tracing::info!(
                    peer = %peer.region,
                    table = %table.name,
                    copied,
                    total = progress.total,
                    percent = repair_percent(copied, progress.total),
                    "repair (backfill) in progress"
                );
            }
            if records.len() < REPAIR_RECORDS_PER_REQUEST_MAX {
                return Ok(());
            }
        }
    }

    /// `POST /replication/v1/digest`: this region's digests of key ranges of a table.
    pub async fn receive_digest(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        self.authenticate(headers, "/replication/v1/digest", body)?;
        let request: DigestRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("corrupt digest request: {e}")))?;
        if request.ranges.len() > DIGEST_RANGES_PER_REQUEST_MAX {
            return Err(ApiError::validation(format!(
                "digest request for {} ranges; at most {DIGEST_RANGES_PER_REQUEST_MAX}",
                request.ranges.len()
            )));
        }
        let ranges = request
            .ranges
            .iter()
            .map(|(depth, index)| {
                DigestRange::new(*depth, *index)
                    .ok_or_else(|| ApiError::validation(format!("digest range {depth}/{index:#x} does not exist")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let digests = match self.engine.table(&request.table) {
            // No replica here: nothing held, so the peer pushes and the changes are skipped.
            None => vec![Digest::default(); ranges.len()],
            Some(table) => {
                let engine = self.engine.clone();
                tokio::task::spawn_blocking(move || engine.snapshot()?.digests(&table, &ranges))
                    .await
                    .map_err(|e| ApiError::internal(format!("digest task failed: {e}")))??
            }
        };
        Ok(serde_json::to_value(DigestResponse {
            digests: digests.iter().map(|d| (d.count, format!("{:x}", d.hash))).collect(),
        })
        .expect("a digest response serialises"))
    }

    /// POSTs a replication request and decodes its 200 answer; anything else is an error that
    /// names the peer and the path.
    async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, String> {
        let (status, body) = self.post(peer, path, body).await?;
        if status != 200 {
            return Err(format!(
                "{} answered HTTP {status} to {path}: {}",
                peer.url,
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{}: bad answer to {path}: {e}", peer.url))
    }

    async fn send_repair(&self, peer: &Peer, request: RepairRequest) -> Result<(), String> {
        let body = serde_json::to_vec(&request).expect("a repair request serialises");
        self.exchange::<serde_json::Value>(peer, "/replication/v1/repair", body)
            .await
            .map(|_| ())
    }

    /// Every `MARK_INTERVAL_MS`: takes this region's mark for the peers, then purges the
    /// tombstones below the watermark.
    async fn mark_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_millis(MARK_INTERVAL_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // What this region has received is read *before* the clock and log head are
            // captured: changes applied in between are re-logged after the head, so a
            // `received` read later could claim writes this mark's head does not cover.
            // Reading it early only understates it (it never decreases).
            let received_before = self
                .watermarks
                .lock()
                .expect("watermark lock is never poisoned")
                .received(u64::MAX);
            let (clock, head) = match self.engine.take_mark().await {
                Ok(mark) => mark,
                Err(error) => {
                    tracing::warn!(%error, "taking the watermark mark failed; retrying");
                    continue;
                }
            };
            let received = received_before.min(clock);
            let (below, slowest) = {
                let watermarks = self.watermarks.lock().expect("watermark lock is never poisoned");
                (
                    watermarks.purge_below(clock),
                    watermarks.slowest().map(|(peer, _)| peer.to_string()),
                )
            };
            self.mark.send_replace(Some(Mark { clock, received, head }));
            // A replica joined here and not yet backfilled may still receive writes older than
            // the watermark: nothing is purged until its backfill completes.
            let awaiting = self.engine.awaiting_backfills();
            let held_back_by = match awaiting.first() {
                Some((id, source, _)) => {
                    let table = self
                        .engine
                        .tables()
                        .into_iter()
                        .find(|t| t.id == *id)
                        .map_or_else(|| format!("#{id}"), |t| t.name.clone());
                    Some(format!("backfill of table {table} from {source}"))
                }
                None => slowest,
            };
            *self
                .tombstones
                .held_back_by
                .lock()
                .expect("status lock is never poisoned") = held_back_by;
            if !awaiting.is_empty() {
                continue;
            }
            self.engine.set_purge_below(below);
            self.tombstones.purge_below.store(below, Ordering::Relaxed);
            for _ in 0..PURGE_JOBS_PER_ROUND_MAX {
                if self.engine.oldest_tombstone_hlc().is_none_or(|oldest| oldest >= below) {
                    break;
                }
                match self.engine.purge_tombstones(below).await {
                    Ok((visited, removed)) => {
                        self.tombstones
                            .purged_total
                            .fetch_add(removed as u64, Ordering::Relaxed);
                        if visited < crate::engine::TOMBSTONE_PURGES_PER_JOB_MAX {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "purging tombstones failed; retrying later");
                        break;
                    }
                }
            }
        }
    }

    /// A backfill whose peer joined at `barrier` may start once this region has received
    /// every write up to it (it then holds all the peer skipped before joining).
    fn backfill_ready(&self, barrier: u64) -> Result<(), String> {
        let received = self
            .watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .received(u64::MAX);
        if received < barrier {
            return Err(format!(
                "backfill waits until this region has received every write up to the peer's join (HLC {barrier}; received {received}): are all peers up?"
            ));
        }
        // This region's own later writes must be newer than the barrier, or the joining region
        // would ignore them in the log while the backfill, read now, lacks them.
        if !self.engine.advance_clock_past(barrier) {
            return Err(format!(
                "backfill waits until this region's clock passes the peer's join (HLC {barrier}, this clock {}): the peer's clock runs ahead of this one by more than clock_offset_max_ms",
                self.engine.clock_last()
            ));
        }
        Ok(())
    }

    async fn send_mark(&self, peer: &Peer, mark: Mark) {
        let body = serde_json::to_vec(&MarkRequest {
            clock: mark.clock,
            received: mark.received,
            head: mark.head,
        })
        .expect("a mark serialises");
        match self.post(peer, "/replication/v1/mark", body).await {
            Ok((200, _)) => {}
            Ok((status, body)) => tracing::debug!(
                peer = %peer.region,
                status,
                body = %String::from_utf8_lossy(&body),
                "peer refused a watermark mark; tombstones are kept until it takes them"
            ),
            Err(error) => tracing::debug!(peer = %peer.region, %error, "sending a watermark mark failed"),
        }
    }

    /// `POST /replication/v1/mark`: a peer's watermark mark.
    pub async fn receive_mark(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/mark", body)?;
        let request: MarkRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::serialization(format!("corrupt mark: {e}")))?;
        self.watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .on_mark(
                &source,
                Mark {
                    clock: request.clock,
                    received: request.received,
                    head: request.head,
                },
            );
        Ok(serde_json::json!({}))
    }

    fn applied(&self, source: &str, through: u64) {
        self.watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .on_applied(source, through);
    }

    async fn trim_loop(self: Arc<Self>) {
        let mut alarmed = false;
        // Logged once per episode of trimming what a peer still needs, not every round.
        let mut trimmed_needed_before = false;
        loop {
            tokio::time::sleep(Duration::from_millis(TRIM_INTERVAL_MS)).await;
            let head = self.engine.log_head();
            let slowest = self
                .status
                .values()
                .map(|s| s.acked.load(Ordering::Relaxed))
                .min()
                .unwrap_or(head);
            let limit = self.config.backlog_bytes_max;
            let (backlog_bytes, bound) = match self.engine.snapshot() {
                Ok(snapshot) => (
                    snapshot.log_bytes_after(slowest).unwrap_or(0),
                    snapshot.trim_point_for_bytes(limit).unwrap_or(0),
                ),
                Err(_) => (0, 0),
            };
            let alarm = backlog_alarm(backlog_bytes, limit);
            if alarm && !alarmed {
                tracing::error!(
                    backlog_bytes,
                    limit_bytes = limit,
                    backlog_changes = head.saturating_sub(slowest),
                    "replication backlog near its bound: a peer is far behind; past the bound its log is trimmed and it is repaired by anti-entropy"
                );
            }
            alarmed = alarm;
            let trimming_needed = bound > slowest;
            if trimming_needed && !trimmed_needed_before {
                tracing::warn!(
                    through = bound,
                    limit_bytes = limit,
                    "replication log past its bound: trimming changes a peer still needs; it will be repaired by anti-entropy"
                );
            }
            trimmed_needed_before = trimming_needed;
            let through = slowest.max(bound);
            if through > 0
                && let Err(error) = self.engine.trim_log(through).await
            {
                tracing::warn!(%error, "trimming the replication log failed; retrying later");
            }
        }
    }

    fn authenticate(&self, headers: &axum::http::HeaderMap, path: &str, body: &[u8]) -> Result<String, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let region = header(REGION_HEADER).to_string();
        let signature = header(SIGNATURE_HEADER);
        if self.peer(&region).is_none() {
            tracing::warn!(%region, "replication request from a region that is not a peer refused");
            return Err(unauthorized(format!(
                "region '{region}' is not a peer of {}",
                self.region
            )));
        }
        let Ok(date_ms) = header(DATE_HEADER).parse::<u64>() else {
            tracing::warn!(%region, "replication request without a signing date refused: is the peer an older build?");
            return Err(unauthorized(format!(
                "replication request without {DATE_HEADER}: the peer must run a build that signs its requests with a date"
            )));
        };
        if !verify(&self.config.key, &region, path, date_ms, body, signature) {
            tracing::warn!(%region, "replication request with a bad signature refused: check that both stores use the same replication key");
            return Err(unauthorized(
                "bad replication signature: the stores' replication keys differ",
            ));
        }
        // The signing time is authentic now: a sample of the peer's clock (a replay carries an
        // older time than the peer's last request and is no sample), also when it is refused.
        let now = self.engine.now_unix_ms();
        self.clocks
            .lock()
            .expect("clock lock is never poisoned")
            .on_request(&region, date_ms, now);
        let skew = now.abs_diff(date_ms);
        if skew > REQUEST_SKEW_MS_MAX {
            tracing::warn!(%region, skew_ms = skew, "replication request signed too far from this store's clock refused (replayed, or a clock is wrong)");
            return Err(unauthorized(format!(
                "replication request signed {skew} ms away from this store's clock (at most {REQUEST_SKEW_MS_MAX}): an old request replayed, or a region's clock is wrong; check NTP in both regions"
            )));
        }
        Ok(region)
    }

    /// `POST /replication/v1/batch`: applies a batch of changes from a peer.
    pub async fn receive_batch(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/batch", body)?;
        let request: BatchRequest = serde_json::from_slice(body).map_err(|e| {
            tracing::warn!(%source, error = %e, "corrupt replication batch refused; nothing applied");
            ApiError::serialization(format!("corrupt replication batch: {e}"))
        })?;
        let changes = decode_changes(&source, &request.changes)?;
        let span = request
            .to_seq
            .checked_sub(request.from_seq)
            .and_then(|d| d.checked_add(1));
        if request.from_seq == 0 || span != Some(changes.len() as u64) {
            tracing::warn!(%source, "replication batch whose sequence range does not match its changes refused; nothing applied");
            return Err(ApiError::validation(
                "replication batch sequence range does not match its changes",
            ));
        }
        let (from_seq, to_seq) = (request.from_seq, request.to_seq);
        let job_source = source.clone();
        let (response, replayed) = self
            .engine
            .write(move |context| {
                let applied = context.applied_from(&job_source)?;
                match accept(applied, from_seq, to_seq) {
                    Acceptance::Duplicate => Ok((
                        BatchResponse {
                            through: Some(applied),
                            ..BatchResponse::default()
                        },
                        true,
                    )),
                    Acceptance::Gap { expected_from } => Ok((
                        BatchResponse {
                            expected_from: Some(expected_from),
                            ..BatchResponse::default()
                        },
                        false,
                    )),
                    Acceptance::Apply { skip_through } => {
                        let mut count = 0;
                        for (offset, change) in changes.iter().enumerate() {
                            if from_seq + offset as u64 <= skip_through {
                                continue;
                            }
                            count += u64::from(apply_change(context, change, true)?);
                        }
                        context.set_applied_from(&job_source, to_seq)?;
                        Ok((
                            BatchResponse {
                                through: Some(to_seq),
                                applied: count,
                                ..BatchResponse::default()
                            },
                            false,
                        ))
                    }
                }
            })
            .await?;
        if let Some(through) = response.through {
            self.applied(&source, through);
        }
        if replayed {
            tracing::info!(%source, from_seq, to_seq, "replayed or repeated replication batch (already applied through {}): nothing applied", response.through.unwrap_or(0));
        }
        Ok(serde_json::to_value(response).expect("a batch response serialises"))
    }

    /// `POST /replication/v1/repair`: applies records of an anti-entropy transfer.
    pub async fn receive_repair(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/repair", body)?;
        let request: RepairRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("corrupt repair request: {e}")))?;
        let changes = decode_changes(&source, &request.records)?;
        let complete = request.complete_through;
        let backfill_barrier = request.backfill_barrier;
        let job_source = source.clone();
        let (applied, through, backfilled) = self
            .engine
            .write(move |context| {
                let mut count = 0u64;
                for change in &changes {
                    count += u64::from(apply_change(context, change, false)?);
                }
                let mut through = None;
                let mut backfilled = Vec::new();
                if let Some(complete) = complete {
                    let applied = context.applied_from(&job_source)?.max(complete);
                    context.set_applied_from(&job_source, applied)?;
                    through = Some(applied);
                    if backfill_barrier != 0 {
                        backfilled = context.complete_backfills(&job_source, backfill_barrier)?;
                    }
                }
                Ok((count, through, backfilled))
            })
            .await?;
        if !backfilled.is_empty() {
            tracing::info!(%source, tables = ?backfilled, "backfill of joined replicas complete; tombstone purging may resume");
        }
        if let Some(through) = through {
            self.applied(&source, through);
        }
        Ok(serde_json::json!({"applied": applied}))
    }

    /// `POST /replication/v1/table`: creates, updates or deletes this region's replica.
    pub async fn receive_table(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/table", body)?;
        let request: TableRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::serialization(format!("corrupt table request: {e}")))?;
        let TableRequest {
            table,
            delete,
            sequence,
            joining,
        } = request;
        let job_source = source.clone();
        let name = table.name.clone();
        // Everything this region may have vouched for so far (see `TableMeta::joined_below`).
        let vouched = self
            .watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .max_direct();
        let joined_below = self
            .engine
            .write_exclusive(move |context| {
                // Checked and recorded in the transaction that changes the replica: a request
                // seen before (replayed, even after restarts) changes nothing.
                let setting = definition_received_setting(&job_source);
                let last = context.setting(&setting)?;
                if sequence <= last {
                    tracing::warn!(source = %job_source, sequence, last, "replica-definition request older than the last one applied refused (replayed)");
                    return Err(unauthorized(format!(
                        "replica-definition request {sequence} from {job_source} is not newer than the last one applied ({last}): a replayed request, or a peer running an older build"
                    )));
                }
                // A refused request returns before its first mutation (a job's error does not
                // roll its transaction back); the sequence is recorded only with a change.
                let existing = context.table_named(&table.name);
                let changed = match (existing, delete) {
                    (Some(existing), true) => context.drop_table(&existing).map(|()| None),
                    (None, true) => Ok(None),
                    (Some(existing), false) => {
                        if existing.key != table.key {
                            return Err(ApiError::new(
                                ErrorKind::ResourceInUse,
                                format!(
                                    "Table {} exists here with a different key schema; delete it first",
                                    table.name
                                ),
                            ));
                        }
                        if existing.key_hash != table.key_hash {
                            // Stored keys travel between replicas as they are: the same hash
                            // on both sides, or changes would land under the wrong keys.
                            return Err(ApiError::new(
                                ErrorKind::ResourceInUse,
                                format!(
                                    "Table {} exists here with another key hash ({:?}, the peer's is {:?}); delete it here and let the peer backfill it",
                                    table.name, existing.key_hash, table.key_hash
                                ),
                            ));
                        }
                        // Still waiting for this replica's backfill (an UpdateTable retried):
                        // the requester backfills it now, up to the barrier set at the join.
                        let awaited = if joining {
                            context.hand_over_backfill(existing.id, &job_source)?
                        } else {
                            None
                        };
                        let mut next = (*existing).clone();
                        next.replicas = table.replicas.clone();
                        // The replica gets the global table's stream where it has none.
                        if next.stream.as_ref().is_none_or(|s| !s.enabled) {
                            next.stream = table.stream.clone();
                        }
                        context.put_table(next).map(|()| awaited)
                    }
                    (None, false) => {
                        let id = context.next_table_id()?;
                        let mut created = table.clone();
                        created.id = id;
                        created.ttl = None;
                        created.joined_below = vouched.max(context.tick_clock());
                        let joined_below = created.joined_below;
                        // Purging waits until the requester's backfill of this replica completes.
                        context.await_backfill(id, &job_source, joined_below)?;
                        context.put_table(created).map(|()| Some(joined_below))
                    }
                }?;
                context.set_setting(&setting, sequence)?;
                Ok(changed)
            })
            .await?;
        tracing::info!(%source, table = %name, delete, "replica definition changed by a peer");
        Ok(match joined_below {
            Some(joined_below) => serde_json::json!({"joined_below": joined_below}),
            None => serde_json::json!({}),
        })
    }

    /// The peers' clock offsets as `/health` shows them, and whether any raises an alarm or is
    /// beyond the signing window (the regions then refuse each other's requests).
    pub fn clock_status(&self) -> ClockStatus {
        let now = self.engine.now_unix_ms();
        let peers = self.clocks.lock().expect("clock lock is never poisoned").offsets(
            now,
            self.config.clock_offset_alarm_ms,
            REQUEST_SKEW_MS_MAX,
        );
        ClockStatus {
            alarm_ms: self.config.clock_offset_alarm_ms,
            max_ms: self.config.clock_offset_max_ms,
            capped_total: self.engine.clock_capped_total(),
            peers,
        }
    }

    /// DescribeTable's `Replicas` for a global table.
    pub fn describe_replicas(&self, table: &TableMeta) -> serde_json::Value {
        let replicas: Vec<serde_json::Value> = table
            .replicas
            .iter()
            .map(|region| {
                let mut replica = serde_json::json!({"RegionName": region, "ReplicaStatus": "ACTIVE"});
                if let Some(status) = self.status.get(region) {
                    let repairing = status.repairing.load(Ordering::Relaxed);
                    if status.backfilling.load(Ordering::Relaxed) {
                        replica["ReplicaStatus"] = serde_json::json!("CREATING");
                        replica["ReplicaStatusPercentProgress"] = serde_json::json!(
                            repair_percent(
                                status.repaired_records.load(Ordering::Relaxed),
                                status.repair_total.load(Ordering::Relaxed)
                            )
                            .to_string()
                        );
                    }
                    replica["ReplicaStatusDescription"] = serde_json::json!(format!(
                        "replication from {} to {region}: lag {} ms, {} changes ({} bytes) pending, applied through change {}{}",
                        self.region,
                        status.lag_ms.load(Ordering::Relaxed),
                        status.pending_changes.load(Ordering::Relaxed),
                        status.pending_bytes.load(Ordering::Relaxed),
                        status.acked.load(Ordering::Relaxed),
                        if repairing {
                            format!(
                                ", repair (anti-entropy) pushed {} records so far",
                                status.repaired_records.load(Ordering::Relaxed)
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
                replica
            })
            .collect();
        serde_json::Value::Array(replicas)
    }
}

/// An error with its causes, so a failed TLS handshake says why ("invalid peer certificate:
/// UnknownIssuer"), not only that the connection failed. At most a few levels deep.
fn error_chain(error: &dyn std::error::Error) -> String {
    const DEPTH_MAX: usize = 8;
    let mut text = error.to_string();
    let mut source = error.source();
    for _ in 0..DEPTH_MAX {
        let Some(cause) = source else { break };
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether a backlog of `bytes` is past the alarm threshold of the log's bound `limit`.
pub fn backlog_alarm(bytes: u64, limit: u64) -> bool {
    bytes > 0 && u128::from(bytes) * 100 >= u128::from(limit) * u128::from(LOG_BACKLOG_ALARM_PERCENT)
}

/// A repair's progress in whole percent: 99 at most until it has finished (records written
/// while it runs, or tombstones, can make the copied count pass the starting total).
fn repair_percent(copied: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (copied.saturating_mul(100) / total).min(99)
}

/// The peers' clocks as this region sees them (see [`Replication::clock_status`]).
pub struct ClockStatus {
    pub alarm_ms: u64,
    pub max_ms: u64,
    /// Peer timestamps the bound kept this region's clock from following, since startup.
    pub capped_total: u64,
    pub peers: Vec<PeerOffset>,
}

impl ClockStatus {
    pub fn alarm(&self) -> bool {
        self.peers.iter().any(|p| p.alarm)
    }

    /// Peers beyond the signing window: replication with them is refused both ways.
    pub fn split_from(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| p.beyond_window)
            .map(|p| p.peer.as_str())
            .collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "alarm": self.alarm(),
            "offset_alarm_ms": self.alarm_ms,
            "offset_max_ms": self.max_ms,
            "beyond_signing_window": self.split_from(),
            "stamps_capped_total": self.capped_total,
            "peers": self.peers.iter().map(|p| (p.peer.clone(), serde_json::json!({
                "offset_ms": p.offset_ms,
                "measured_age_ms": p.age_ms,
                "alarm": p.alarm,
                "beyond_signing_window": p.beyond_window,
            }))).collect::<serde_json::Map<String, serde_json::Value>>(),
        })
    }
}

enum Outcome {
    Acked(u64),
    Gap(u64),
    Trimmed(u64),
}

/// Decodes and checks every change of a batch before anything is applied.
/// An empty entry stands for a change left out because it originated at the receiver.
fn decode_changes(source: &str, encoded: &[String]) -> Result<Vec<Option<(Change, record::Record)>>, ApiError> {
    encoded
        .iter()
        .enumerate()
        .map(|(index, text)| {
            if text.is_empty() {
                return Ok(None);
            }
            let bytes = BASE64
                .decode(text)
                .map_err(|e| format!("change {index} is not base64: {e}"))?;
            let change = replication_log::decode_change(&bytes).map_err(|e| format!("change {index}: {e}"))?;
            let decoded = record::decode(&change.record)
                .map_err(|e| format!("change {index} for table {}: {e}", change.table))?;
            Ok(Some((change, decoded)))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|message| {
            tracing::warn!(%source, %message, "corrupt replication batch refused; nothing applied");
            ApiError::validation(format!("corrupt replication batch: {message}"))
        })
}

/// Applies one received change; `from_log` for batches (which honour a join barrier), not for
/// repairs.
fn apply_change(
    context: &mut crate::engine::WriteContext<'_>,
    change: &Option<(Change, record::Record)>,
    from_log: bool,
) -> Result<bool, ApiError> {
    let Some((change, decoded)) = change else {
        return Ok(false);
    };
    match context.table_named(&change.table) {
        // Joined after this change was written: the backfill brings it (or something newer).
        Some(table) if from_log && decoded.hlc <= table.joined_below => Ok(false),
        Some(table) => context.apply_decoded(&table, &change.key, &change.record, decoded),
        None => {
            tracing::warn!(table = %change.table, "replicated change for a table that does not exist here skipped");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_alarm_fires_at_80_percent_of_the_bound() {
        let limit = LOG_BACKLOG_BYTES_DEFAULT;
        assert!(!backlog_alarm(0, limit));
        let threshold = (limit * 80).div_ceil(100);
        assert!(!backlog_alarm(threshold - 1, limit));
        assert!(backlog_alarm(threshold, limit));
        assert!(backlog_alarm(u64::MAX, u64::MAX));
        assert!(!backlog_alarm(0, 0), "nothing pending is never an alarm");
    }

    #[test]
    fn repair_progress_stays_below_100_until_done() {
        assert_eq!(repair_percent(0, 0), 0);
        assert_eq!(repair_percent(0, 200), 0);
        assert_eq!(repair_percent(50, 200), 25);
        assert_eq!(repair_percent(200, 200), 99, "done only when the repair says so");
        assert_eq!(repair_percent(500, 200), 99, "writes during the backfill add records");
        assert_eq!(repair_percent(u64::MAX, 1), 99);
    }

    #[test]
    fn signatures_bind_region_path_date_and_body() {
        let signature = sign(b"key", "us-east-1", "/replication/v1/table", 1_000, b"body");
        assert!(verify(
            b"key",
            "us-east-1",
            "/replication/v1/table",
            1_000,
            b"body",
            &signature
        ));
        assert!(!verify(
            b"other",
            "us-east-1",
            "/replication/v1/table",
            1_000,
            b"body",
            &signature
        ));
        assert!(!verify(
            b"key",
            "eu-west-1",
            "/replication/v1/table",
            1_000,
            b"body",
            &signature
        ));
        assert!(!verify(
            b"key",
            "us-east-1",
            "/replication/v1/batch",
            1_000,
            b"body",
            &signature
        ));
        assert!(!verify(
            b"key",
            "us-east-1",
            "/replication/v1/table",
            1_001,
            b"body",
            &signature
        ));
        assert!(!verify(
            b"key",
            "us-east-1",
            "/replication/v1/table",
            1_000,
            b"bodY",
            &signature
        ));
        assert!(!verify(
            b"key",
            "us-east-1",
            "/replication/v1/table",
            1_000,
            b"body",
            "not hex"
        ));
    }
}
