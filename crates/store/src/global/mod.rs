//! Global tables at run time: the replication endpoints other regions call, and one shipping
//! task per peer that drives the sans-IO [`replication::Shipper`] over HTTP. Every decision of
//! the receiving side (apply or skip a change, repairs, join barrier and backfill waits,
//! replica-definition sequences, the tombstone purge) is made by `replication::receive`; this
//! module does the I/O around it and executes what it decides.
//!
//! - `wire`: request types, the HMAC signature, the signed POST and authentication;
//! - `ship`: the per-peer shipping loop, replica definitions sent, the backfill's start, trims;
//! - `repair`: anti-entropy and backfill by range digests (the sending side);
//! - `mark`: watermark marks sent and received, and the purge round;
//! - `receive`: the endpoints that apply what peers send;
//! - `settings`: anti-entropy of the settings that follow a global table (TTL, global indexes,
//!   capacity): each side marks what it holds newer, for its align to send.
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
use replication::receive::{self as rules, BackfillWait, BatchOutcome, Replayed};
use replication::{Command, Mark, PeerClocks, PeerOffset, Shipper, ShipperConfig, Watermarks};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::catalog::TableMeta;
use crate::engine::{Engine, ReceivedChange, ReplicaWriter};
use crate::record;
use crate::replication_log;

mod mark;
mod receive;
mod repair;
mod settings;
mod ship;
mod wire;

pub use settings::{
    HeldSettings, SETTINGS_ANSWER_PATH, SETTINGS_TABLES_PER_REQUEST_MAX, SettingsAnswer, SettingsRequest,
    settings_answer_payload,
};

use wire::*;
pub use wire::{DefinitionAnswer, TableRequest, sign};

pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";
/// The answerer's signature of a 200 answer (`wire::answer_body_payload`): made as a request's
/// from the answerer to the asker, over `answer-body:` and the path, the request's signing time,
/// the SHA-256 of the request's body and the answer's bytes, so it holds for that one request's
/// exact answer. The asker takes no 200 answer without it: a batch's acknowledgement, a range's
/// digests, a replica's join barrier forged or swapped on the way would otherwise make it skip
/// what the peer never applied.
pub const ANSWER_SIGNATURE_HEADER: &str = "x-switchyard-answer-signature";
pub const REGION_HEADER: &str = "x-switchyard-region";
/// The region the request is for (part of the signature): what a region sends one peer (a
/// batch with the entries of tables that peer lacks left out, a replica's delete, a repair's
/// last request) cannot be replayed to another.
pub const TO_REGION_HEADER: &str = "x-switchyard-to-region";
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
/// Records of one range whose hashes a peer lists for a repair (a differing leaf holds at most
/// `REPAIR_LEAF_RECORDS_MAX` on the repairing side; the peer may hold more).
pub const REPAIR_HASHES_PER_RANGE_MAX: usize = 512;
/// Record hashes in one digest answer (about 100 bytes each in JSON).
pub const REPAIR_HASHES_PER_RESPONSE_MAX: usize = 16_384;
/// Repair requests of one range a region keeps in flight to a peer: the next page is read and
/// sent while the peer commits the previous ones (a backfill is otherwise one round trip and
/// one commit at a time).
pub const REPAIR_REQUESTS_IN_FLIGHT_MAX: usize = 4;
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
/// How often the log is trimmed behind the slowest peer. Often, so each trim is small: every
/// 2 s, a trim of 2 s of changes at 1,000 writes/s held the writer long enough to put a
/// 30–50 ms spike in replication lag every 2 s (BENCHMARKS.md).
pub const TRIM_INTERVAL_MS: u64 = 250;
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

/// The setting holding `peer`'s database identity as last seen in its marks.
pub fn peer_store_setting(peer: &str) -> String {
    format!("peer_store:{peer}")
}

/// The setting holding since when (Unix ms) `peer` answers with a new database (0: it never
/// did): the last time its old identity was seen.
pub fn peer_rebuilt_setting(peer: &str) -> String {
    format!("peer_rebuilt:{peer}")
}

/// The setting holding since when (Unix ms, `peer`'s clock) `peer` says this region's database
/// lacks replicas it lists here (0: it does not): the alarm outlives a restart, so a wiped region
/// never answers `ready` until the peer answers again ([`MissingHere`]).
pub fn missing_here_setting(peer: &str) -> String {
    format!("missing_here:{peer}")
}

/// The setting holding when (Unix ms) the replica of table `table_id` in `peer` was last created
/// (by an UpdateTable here, or a definition received that added it).
pub fn replica_made_setting(peer: &str, table_id: u64) -> String {
    format!("replica_made:{peer}:{table_id}")
}

/// A setting of a global table that follows it across its replicas, versioned
/// (`catalog::SettingVersion`): its TTL, one of its global indexes (created or deleted), or its
/// capacity (billing mode and write capacity of the table and its global indexes,
/// `catalog::FollowedCapacity`; read capacity is each replica's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed<'a> {
    Ttl,
    Index(&'a str),
    Capacity,
}

impl Followed<'_> {
    /// The setting that records a change of it in table `table_id` made here that some replica
    /// has not confirmed yet: the HLC of the change's version (0, or another HLC than the
    /// version held: every replica confirmed it, or a newer change replaced it). Until then the
    /// TTL says ENABLING or DISABLING, the index CREATING or DELETING, the table (for its
    /// capacity) UPDATING, and the same request sent here again sends it again instead of being
    /// refused as changing nothing.
    pub fn mark(self, table_id: u64) -> String {
        match self {
            Followed::Ttl => format!("ttl_unaligned/{table_id}"),
            Followed::Index(name) => format!("index_unaligned/{table_id}/{name}"),
            Followed::Capacity => format!("capacity_unaligned/{table_id}"),
        }
    }

    /// The version of the change `meta` holds.
    pub fn version(self, meta: &TableMeta) -> Option<&crate::catalog::SettingVersion> {
        match self {
            Followed::Ttl => meta.ttl.as_ref().and_then(|t| t.version.as_ref()),
            Followed::Index(name) => meta.index_version(name),
            Followed::Capacity => meta.capacity_version.as_ref(),
        }
    }

    /// The version a peer's replica holds after a definition, from its answer: `None` from a
    /// build before this setting followed global tables (it keeps its own).
    pub fn held_by(self, answer: &DefinitionAnswer) -> Option<Option<replication::Version>> {
        match self {
            Followed::Ttl => answer
                .ttl
                .as_ref()
                .map(|ttl| crate::catalog::TtlSpec::version_of(ttl.as_ref())),
            Followed::Index(name) => answer
                .index_versions
                .as_ref()
                .map(|versions| crate::catalog::setting_version(versions.get(name))),
            Followed::Capacity => answer
                .capacity
                .as_ref()
                .map(|version| crate::catalog::setting_version(version.as_ref())),
        }
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

impl ReplicationConfig {
    /// Replication with these peers and key, every limit at its default, peers verified
    /// against the Mozilla roots.
    pub fn new(peers: Vec<Peer>, key: Vec<u8>) -> ReplicationConfig {
        ReplicationConfig {
            peers,
            key,
            backlog_bytes_max: LOG_BACKLOG_BYTES_DEFAULT,
            clock_offset_alarm_ms: CLOCK_OFFSET_ALARM_MS_DEFAULT,
            clock_offset_max_ms: CLOCK_OFFSET_MAX_MS_DEFAULT,
            peer_tls: None,
        }
    }
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
    /// 200 answers from the peer refused for want of a valid signature for their request
    /// (`ANSWER_SIGNATURE_HEADER`): forged or changed on the way, or the peer runs an earlier
    /// build.
    pub answers_refused: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When `last_error` happened (0: never), so a healed peer's old error reads as old.
    pub last_error_at_unix_ms: AtomicU64,
    /// Anti-entropy repairs finished, and what the last one compared and moved.
    pub repairs: AtomicU64,
    pub last_repair_ranges_compared: AtomicU64,
    pub last_repair_records_pushed: AtomicU64,
    repair_requested: AtomicBool,
    /// The peer sent an authenticated request: a retry to it waiting out its backoff runs now.
    heard: AtomicBool,
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
    /// The peers' database identities as last seen in this process, and when (Unix ms).
    peer_stores: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// What each peer last answered to this region's mark about this region's own database:
    /// since when (Unix ms) it has been new there, and the global tables the peer lists with a
    /// replica here that were not created again since (absent: nothing missing, or an older
    /// peer). Kept until the peer answers otherwise, and across restarts (its `since`, in
    /// [`missing_here_setting`]; `tables` is empty until the peer's next answer names them).
    missing_here: Mutex<std::collections::BTreeMap<String, MissingHere>>,
    /// When this process started replicating (Unix ms).
    started_ms: u64,
}

/// A peer's word that this region's database is new while it lists replicas here (the answer to
/// a mark, `MarkAnswer::replicas_missing_here`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingHere {
    /// Since when the peer has seen this region's new database (Unix ms, the peer's clock).
    pub since: u64,
    /// The global tables the peer lists with a replica here that this database lacks (empty
    /// in this region's memory when the alarm was read back at start, not yet answered again).
    pub tables: Vec<String>,
}

/// Tables one peer may name in [`MissingHere`] (more are cut, the count kept in the message).
pub const MISSING_HERE_TABLES_MAX: usize = 256;

/// What the operator sees of tombstone purging.
#[derive(Default)]
pub struct TombstoneStatus {
    /// Tombstones with an HLC below this may be purged (0: not yet known since startup).
    pub purge_below: AtomicU64,
    pub purged_total: AtomicU64,
    /// The peer holding purging back the most.
    pub held_back_by: Mutex<Option<String>>,
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
        let engine_now_ms = engine.now_unix_ms();
        // What the peers said before this process started: the tables are named again by
        // their next signed answer, which also clears it.
        let missing_here = config
            .peers
            .iter()
            .filter_map(|peer| {
                let since = engine.setting_value(&missing_here_setting(&peer.region));
                (since != 0).then(|| {
                    (
                        peer.region.clone(),
                        MissingHere {
                            since,
                            tables: Vec::new(),
                        },
                    )
                })
            })
            .collect();
        engine.set_clock_offset_max_ms(config.clock_offset_max_ms);
        if !config.peers.is_empty() {
            engine.hold_sweeps_until_measured();
        }
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
            peer_stores: Mutex::new(std::collections::HashMap::new()),
            missing_here: Mutex::new(missing_here),
            started_ms: engine_now_ms,
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
            sweeps_held_back_ms: self.engine.sweep_hold_ms(),
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
    /// How far TTL expiry and the retention sweeps run behind the wall clock, because a peer's
    /// clock runs that far behind this region's (`Engine::hold_sweeps_back`).
    pub sweeps_held_back_ms: u64,
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
            "ttl_and_retention_held_back_ms": self.sweeps_held_back_ms,
            "peers": self.peers.iter().map(|p| (p.peer.clone(), serde_json::json!({
                "offset_ms": p.offset_ms,
                "measured_age_ms": p.age_ms,
                "alarm": p.alarm,
                "beyond_signing_window": p.beyond_window,
            }))).collect::<serde_json::Map<String, serde_json::Value>>(),
        })
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
    fn signatures_bind_both_regions_path_date_and_body() {
        let (key, regions, path, date_ms, body): (&[u8], (&str, &str), &str, u64, &[u8]) = (
            b"key",
            ("us-east-1", "eu-west-1"),
            "/replication/v1/table",
            1_000,
            b"body",
        );
        let signature = sign(key, regions.0, regions.1, path, date_ms, body);
        assert!(verify(key, regions, path, date_ms, body, &signature));
        // Any one part changed, the signature no longer verifies.
        assert!(!verify(b"other", regions, path, date_ms, body, &signature));
        assert!(!verify(key, ("ap-south-1", regions.1), path, date_ms, body, &signature));
        assert!(!verify(key, (regions.0, "ap-south-1"), path, date_ms, body, &signature));
        assert!(!verify(key, (regions.1, regions.0), path, date_ms, body, &signature));
        assert!(!verify(
            key,
            regions,
            "/replication/v1/batch",
            date_ms,
            body,
            &signature
        ));
        assert!(!verify(key, regions, path, 1_001, body, &signature));
        assert!(!verify(key, regions, path, date_ms, b"bodY", &signature));
        assert!(!verify(key, regions, path, date_ms, body, "not hex"));
    }
}
