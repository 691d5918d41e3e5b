//! The I/O side of high availability: the etcd client, the driver loop that feeds the
//! leadership machine, and `Member`, the handle the server holds.
//!
//! Invariants: every etcd request has a timeout (`request_timeout_ms`, a sixth of the lease, so
//! a renewal can fail and be retried before the right to act runs out); every write of the
//! shared state is one transaction conditioned on the leader key's create revision (this
//! member's term) and on the state's mod revision as last read or written (nobody wrote in
//! between); a write whose answer was lost is not guessed at: the state is read back before the
//! next write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::repeated::{Failed, Repeated, SUMMARY_INTERVAL_MS};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
};

use super::incidents::IncidentList;
use super::leadership::{Action, Input, KeySeen, LeaderInfo, Leadership, LeadershipStatus, Role, Term};
use super::{
    GuardError, HaSection, HoldTimers, LEADER_VALUE_BYTES_MAX, Notice, STATE_BYTES_MAX, SharedState, StateError,
};
use crate::engine::{RegionId, RunbookOrder, RunbookOutcome};

/// Longest sleep of the driver loop between two looks at the leadership machine.
pub const DRIVER_STEP_MS_MAX: u64 = 50;
/// Shortest etcd request timeout (a sixth of the lease, but never below this).
pub const REQUEST_TIMEOUT_MS_MIN: u64 = 300;

/// gRPC status codes after which a request is tried again on another endpoint. CANCELLED is
/// what tonic answers when the connection the request went on closed under it (its endpoint,
/// an etcd member, died): the client's balancer still picks that connection now and then, so
/// without a retry a fenced step failed at random after a member's death (the lab's
/// `leader-region-outage` drill: every retry of the runbook failed at some step).
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_UNAVAILABLE: i32 = 14;
/// Pause between two tries of a request.
const RETRY_PAUSE_MS: u64 = 20;

/// An etcd client error in words: a gRPC status as its code and message and what caused it
/// (the connection refused, say), without tonic's dump of the status and its metadata.
fn described(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{:?}: {}", status.code(), status.message());
            if let Some(cause) = std::error::Error::source(status) {
                text.push_str(": ");
                text.push_str(&common::error::chain(cause));
            }
            if let Some(fix) = fix_for(status.message()) {
                text.push_str("\n    fix: ");
                text.push_str(fix);
            }
            text
        }
        other => common::error::chain(other),
    }
}

/// What an operator does about an etcd refusal no controller can get past by retrying.
fn fix_for(message: &str) -> Option<&'static str> {
    // etcd's ErrNoSpace: its NOSPACE alarm is raised, and until it is disarmed etcd refuses
    // every write and lease grant, so no member can take (or keep) the leadership.
    message.contains("database space exceeded").then_some(
        "etcd's NOSPACE alarm is raised: its database reached --quota-backend-bytes, and until the \
         alarm is disarmed it refuses every write and lease grant, so no controller can lead. \
         Free the space and disarm it: `etcdctl compact <current revision>`, `etcdctl defrag` on \
         each member, then `etcdctl alarm disarm` (or raise --quota-backend-bytes). The leader \
         compacts the history it no longer needs every compact_history_s; something else may be \
         writing to this etcd.",
    )
}

/// Milliseconds on CLOCK_BOOTTIME: monotonic, and it counts time the host spent suspended.
/// CLOCK_MONOTONIC (behind `Instant`) stops during a suspend, so a leader that slept through
/// its lease would wake believing it still holds it.
fn boot_ms() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
    seconds.saturating_mul(1000).saturating_add(millis)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A key as one read found it.
struct Found {
    value: Vec<u8>,
    created: i64,
    modified: i64,
}

/// The etcd client with the keys of this group of controllers.
#[derive(Clone)]
struct Etcd {
    client: Client,
    leader_key: String,
    state_key: String,
    incidents_key: String,
    timeout: Duration,
}

/// Reads a secret or certificate file, naming it in the error.
fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("[controller.ha] {what} {}: {e}", path.display()))
}

fn parse_leader(value: &[u8]) -> Result<LeaderInfo, String> {
    if value.len() > LEADER_VALUE_BYTES_MAX {
        return Err(format!(
            "the leader key holds {} bytes (at most {LEADER_VALUE_BYTES_MAX}); something else writes under this prefix",
            value.len()
        ));
    }
    serde_json::from_slice(value).map_err(|e| format!("the leader key does not name a member: {e}"))
}

fn parse_state(value: &[u8]) -> Result<SharedState, String> {
    if value.len() > STATE_BYTES_MAX {
        return Err(format!(
            "the shared state holds {} bytes (at most {STATE_BYTES_MAX}); refusing to act on it",
            value.len()
        ));
    }
    serde_json::from_slice(value)
        .map_err(|e| format!("the shared state in etcd is not readable ({e}); refusing to act on it"))
}

/// Whether a failed request may be tried again (on another endpoint): the transport failed, or
/// the connection it went on did.
fn retryable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => retryable_code(i32::from(status.code())),
        _ => false,
    }
}

fn retryable_code(code: i32) -> bool {
    matches!(code, GRPC_CANCELLED | GRPC_UNKNOWN | GRPC_UNAVAILABLE)
}

impl Etcd {
    async fn connect(section: &HaSection, timeout: Duration) -> Result<Etcd, String> {
        let mut options = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout);
        if let (Some(user), Some(path)) = (&section.user, &section.password_file) {
            let password = String::from_utf8_lossy(&read_file("password_file", path)?)
                .trim()
                .to_string();
            // etcd's JWT tokens expire (`ttl`, 5 min by default): authenticate again when a
            // request is refused for its token. Without it every read and write fails from
            // then on, while keep-alives (which etcd does not authenticate) still pass: the
            // leader would keep the key forever without being able to act.
            options = options.with_user(user.clone(), password).with_auto_token_refresh(true);
        }
        if section.ca_file.is_some() || section.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(path) = &section.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_file("ca_file", path)?));
            }
            if let (Some(cert), Some(key)) = (&section.cert_file, &section.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_file("cert_file", cert)?,
                    read_file("key_file", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let connect = Client::connect(&section.etcd, Some(options));
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| format!("connecting to etcd {} timed out", section.etcd.join(", ")))?
            .map_err(|e| format!("connecting to etcd {}: {}", section.etcd.join(", "), described(&e)))?;
        Ok(Etcd {
            client,
            leader_key: section.leader_key(),
            state_key: section.state_key(),
            incidents_key: section.incidents_key(),
            timeout,
        })
    }

    /// One request, tried again (within the timeout) when the endpoint it went to is down:
    /// the client spreads requests over the endpoints, so the next try may go to another. A
    /// try whose answer was lost may have been applied; every request here is a read, a
    /// compare-and-set, a keep-alive or a lease grant (an extra lease expires unused), and
    /// callers read back before trusting a refused compare.
    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let error = match tokio::time::timeout_at(deadline, call(self.client.clone())).await {
                Err(_) => {
                    return Err(etcd_client::Error::InvalidArgs(format!(
                        "etcd did not answer the {what} within {} ms",
                        self.timeout.as_millis()
                    )));
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => error,
            };
            if !retryable(&error) || tokio::time::Instant::now() + Duration::from_millis(RETRY_PAUSE_MS) >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, String> {
        self.retrying("transaction", |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
        .map_err(|e| described(&e))
    }

    /// One key's value and mod revision, read at `revision` (0: the latest); also the revision
    /// the answer was read at.
    ///
    /// Plain range reads only: a transaction's `op_responses()` in etcd-client unwraps each
    /// response op, so a malformed answer from the network would panic the controller.
    async fn get(&self, key: &str, revision: i64) -> Result<(Option<(Vec<u8>, i64)>, i64), String> {
        let (found, read_at) = self.get_kv(key, revision).await?;
        Ok((found.map(|kv| (kv.value, kv.modified)), read_at))
    }

    /// [`Etcd::get`], with the key's create revision too.
    async fn get_kv(&self, key: &str, revision: i64) -> Result<(Option<Found>, i64), String> {
        let options = etcd_client::GetOptions::new().with_revision(revision);
        let answer = self
            .retrying("read", |mut client| {
                let options = options.clone();
                async move { client.get(key, Some(options)).await }
            })
            .await
            .map_err(|e| described(&e))?;
        let read_at = answer
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| format!("etcd answered the read of {key} without a header"))?;
        let found = answer
            .kvs()
            .iter()
            .find(|kv| kv.key() == key.as_bytes())
            .map(|kv| Found {
                value: kv.value().to_vec(),
                created: kv.create_revision(),
                modified: kv.mod_revision(),
            });
        Ok((found, read_at))
    }

    /// The leader key with its create and mod revision, and the shared state read at the same
    /// revision (a follower's look).
    async fn observe(&self) -> Result<(Option<KeySeen>, SharedState), String> {
        let (found, read_at) = self.get_kv(&self.leader_key, 0).await?;
        let seen = match found {
            Some(found) => Some(KeySeen {
                leader: parse_leader(&found.value)?,
                created: found.created,
                modified: found.modified,
            }),
            None => None,
        };
        let (state, _) = self.get(&self.state_key, read_at).await?;
        let state = match state {
            Some((value, _)) => parse_state(&value)?,
            None => SharedState::default(),
        };
        Ok((seen, state))
    }

    /// The leader's heartbeat: puts the leader key again (its value, its lease) if `term` still
    /// holds it, which moves its mod revision on. `Ok(false)`: the key is another term's (or
    /// gone); `Err` names a lease etcd no longer has as such.
    async fn heartbeat(&self, term: Term, me: &LeaderInfo) -> Result<bool, String> {
        let value = serde_json::to_vec(me).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                term.revision,
            )])
            .and_then([TxnOp::put(
                self.leader_key.clone(),
                value,
                Some(PutOptions::new().with_lease(term.lease_id)),
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Deletes the leader key if its create and mod revision are still `created` and
    /// `modified` (its leader has not renewed it since): `Ok(false)` when it changed.
    async fn depose(&self, created: i64, modified: i64) -> Result<bool, String> {
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.leader_key.clone(), CompareOp::Equal, created),
                Compare::mod_revision(self.leader_key.clone(), CompareOp::Equal, modified),
            ])
            .and_then([TxnOp::delete(self.leader_key.clone(), None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// The leader key and the shared state (with its mod revision), read together: the state
    /// is read at the very revision the leader key was read at, so both come from one snapshot.
    async fn read(&self) -> Result<(Option<LeaderInfo>, SharedState, i64), String> {
        self.read_at()
            .await
            .map(|(leader, state, mod_revision, _)| (leader, state, mod_revision))
    }

    /// [`Etcd::read`], and the revision both were read at.
    async fn read_at(&self) -> Result<(Option<LeaderInfo>, SharedState, i64, i64), String> {
        let (leader, read_at) = self.get(&self.leader_key, 0).await?;
        let leader = leader.map(|(value, _)| parse_leader(&value)).transpose()?;
        let (state, _) = self.get(&self.state_key, read_at).await?;
        let (state, mod_revision) = match state {
            Some((value, mod_revision)) => (parse_state(&value)?, mod_revision),
            None => (SharedState::default(), 0),
        };
        Ok((leader, state, mod_revision, read_at))
    }

    /// The list of open incidents at `revision` (`None`: none written yet); entries left out
    /// as unreadable are logged.
    async fn read_incidents(&self, revision: i64) -> Result<Option<IncidentList>, String> {
        let (value, _) = self.get(&self.incidents_key, revision).await?;
        let Some((value, _)) = value else {
            return Ok(None);
        };
        let (list, problems) = IncidentList::decode(&value)?;
        for problem in problems {
            tracing::warn!(key = %self.incidents_key, %problem, "list of open incidents in etcd");
        }
        Ok(Some(list))
    }

    /// Writes the list of open incidents if `term` still holds the leader key: a deposed
    /// leader's write is refused (`Ok(false)`), so it never overwrites its successor's list.
    /// The list is the writer's whole set, so no other condition is needed: within a term only
    /// its leader writes, and a later write carries everything the earlier one did.
    async fn write_incidents(&self, term: Term, value: Vec<u8>) -> Result<bool, String> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                term.revision,
            )])
            .and_then([TxnOp::put(self.incidents_key.clone(), value, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Grants a lease and creates the leader key with it, if nobody holds the key.
    async fn campaign(&self, me: &LeaderInfo, ttl_s: i64) -> Result<Result<Term, LeaderInfo>, String> {
        let grant = self
            .retrying("lease grant", |mut client| async move {
                client.lease_grant(ttl_s, None).await
            })
            .await
            .map_err(|e| format!("etcd lease grant: {}", described(&e)))?;
        let lease_id = grant.id();
        let value = serde_json::to_vec(me).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([Compare::create_revision(self.leader_key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                self.leader_key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let answer = match self.txn(txn).await {
            Ok(answer) => answer,
            Err(error) => {
                self.revoke(lease_id).await;
                return Err(error);
            }
        };
        if answer.succeeded() {
            let revision = answer
                .header()
                .map(|h| h.revision())
                .ok_or("etcd answered the campaign without a header")?;
            return Ok(Ok(Term { revision, lease_id }));
        }
        self.revoke(lease_id).await;
        match self.get(&self.leader_key, 0).await? {
            (Some((value, _)), _) => Ok(Err(parse_leader(&value)?)),
            (None, _) => Err("the leader key vanished during the campaign; trying again".into()),
        }
    }

    /// One keep-alive: `Ok(false)` when etcd says the lease is gone.
    async fn renew(&self, lease_id: i64) -> Result<bool, String> {
        let renewed = self
            .retrying("keep-alive", |mut client| async move {
                client.lease_keep_alive(lease_id).await
            })
            .await;
        match renewed {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(message)) if message.contains("not found") => Ok(false),
            Err(error) => Err(format!("etcd lease keep-alive: {}", described(&error))),
        }
    }

    /// Best effort: a lease that cannot be revoked expires by itself.
    async fn revoke(&self, lease_id: i64) {
        let mut client = self.client.clone();
        let _ = tokio::time::timeout(self.timeout, client.lease_revoke(lease_id)).await;
    }

    /// Compacts etcd's history up to `revision` (an earlier compaction past it is no error).
    async fn compact(&self, revision: i64) -> Result<(), String> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.compact(revision, None)).await {
            Err(_) => Err(format!(
                "etcd did not answer the compaction within {} ms",
                self.timeout.as_millis()
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.to_string().contains("required revision has been compacted") => Ok(()),
            Ok(Err(error)) => Err(format!("etcd compaction: {}", described(&error))),
        }
    }

    /// Writes `state` if `term` still holds the leader key and nobody wrote the state since
    /// `expect_mod`; returns the new mod revision, or `None` when the condition failed.
    async fn write(&self, term: Term, expect_mod: i64, state: &SharedState) -> Result<Option<i64>, String> {
        let value = serde_json::to_vec(state).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.leader_key.clone(), CompareOp::Equal, term.revision),
                Compare::mod_revision(self.state_key.clone(), CompareOp::Equal, expect_mod),
            ])
            .and_then([TxnOp::put(self.state_key.clone(), value, None)]);
        let answer = self.txn(txn).await?;
        if !answer.succeeded() {
            return Ok(None);
        }
        answer
            .header()
            .map(|h| Some(h.revision()))
            .ok_or_else(|| "etcd answered the write without a header".into())
    }
}

/// The leader's copy of the shared state.
struct View {
    term: Option<Term>,
    state: SharedState,
    mod_revision: i64,
    /// A write's answer was lost: read the state back before the next write.
    stale: bool,
}

/// One member of a group of controllers: its leadership, its view of etcd, and the guarded
/// writes the runbook makes.
pub struct Member {
    section: HaSection,
    base_ms: u64,
    timeout: Duration,
    leadership: Mutex<Leadership>,
    etcd: Mutex<Option<Etcd>>,
    view: tokio::sync::Mutex<View>,
    /// The state loaded at the start of a term, for the server to rebuild its engine from.
    takeover: Mutex<Option<SharedState>>,
    /// The list of open incidents loaded at the start of a term (with the state, at the same
    /// revision), or why it could not be: the server adopts them before it sends any alert.
    takeover_incidents: Mutex<Option<Result<Option<IncidentList>, String>>>,
    /// The state as last read (followers show it and follow its pointer).
    seen: Mutex<Option<SharedState>>,
    /// The version of the state last read or written (its writer and `written_at_ms`) and
    /// when (this member's clock) it was first seen: how long ago it was written, measured
    /// without comparing two members' wall clocks.
    version_seen: Mutex<Option<(String, u64, u64)>>,
    /// Hears of every start and end of a term (set by `drive`).
    notify: std::sync::OnceLock<Box<dyn Fn(Notice) + Send + Sync>>,
    compaction: Mutex<Compaction>,
    /// Failed requests to etcd once connected (an endpoint that does not answer): the first is
    /// logged, then a summary at most every `SUMMARY_INTERVAL_MS`, and the first success after.
    request_failures: Mutex<Repeated>,
    /// A live leader key naming this member was seen (and said so, once); the revisions of
    /// the last one seen at this member's own address (its key from before a restart, until
    /// it is renewed by someone: then another controller has this name).
    namesake_seen: std::sync::atomic::AtomicBool,
    own_name_key: Mutex<Option<(i64, i64)>>,
}

/// The leader's compaction of etcd's history: every `compact_history_s` it compacts up to the
/// revision it noted the round before, so at least that much history is always kept.
#[derive(Default)]
struct Compaction {
    next_at_ms: u64,
    /// etcd's revision at the last round.
    marked: Option<i64>,
    running: bool,
}

impl Member {
    /// `address` is this member's API URL (used when `advertise` is not set); `vantage` the
    /// name its own probes report as.
    pub fn new(section: HaSection, address: String, vantage: String) -> Member {
        let me = LeaderInfo {
            member: section.member.clone(),
            address: section.advertise.clone().unwrap_or(address),
            vantage: Some(vantage),
            lease_ms: Some(section.lease_ms),
        };
        let timeout = Duration::from_millis((section.lease_ms / 6).max(REQUEST_TIMEOUT_MS_MIN));
        Member {
            leadership: Mutex::new(Leadership::new(me, section.lease_ms)),
            section,
            base_ms: boot_ms(),
            timeout,
            etcd: Mutex::new(None),
            view: tokio::sync::Mutex::new(View {
                term: None,
                state: SharedState::default(),
                mod_revision: 0,
                stale: true,
            }),
            takeover: Mutex::new(None),
            takeover_incidents: Mutex::new(None),
            seen: Mutex::new(None),
            version_seen: Mutex::new(None),
            notify: std::sync::OnceLock::new(),
            compaction: Mutex::new(Compaction::default()),
            request_failures: Mutex::new(Repeated::new(SUMMARY_INTERVAL_MS)),
            namesake_seen: std::sync::atomic::AtomicBool::new(false),
            own_name_key: Mutex::new(None),
        }
    }

    /// The leadership machine's clock: milliseconds since this member started, on
    /// CLOCK_BOOTTIME.
    fn now_ms(&self) -> u64 {
        boot_ms().saturating_sub(self.base_ms)
    }

    fn leadership(&self) -> std::sync::MutexGuard<'_, Leadership> {
        self.leadership.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.section.member
    }

    pub fn lease_ms(&self) -> u64 {
        self.section.lease_ms
    }

    /// The term this member may act in right now, if any.
    pub fn acting(&self) -> Option<Term> {
        let now = self.now_ms();
        self.leadership().acting(now)
    }

    /// Resolves once this member no longer acts in `term` (stepped down, superseded, or its
    /// right to act ran out by its own clock): the runbook drops the step in flight then, so a
    /// step outlasting the lease (a long copy, a promotion's wait, a hook) does not act on after
    /// another member may have taken over. Checked at least every [`DRIVER_STEP_MS_MAX`].
    pub async fn term_ended(&self, term: Term) {
        loop {
            let left_ms = {
                let now = self.now_ms();
                let leadership = self.leadership();
                if leadership.acting(now) != Some(term) {
                    return;
                }
                leadership.status(now).acting_ms_left.unwrap_or(0)
            };
            tokio::time::sleep(Duration::from_millis(left_ms.clamp(1, DRIVER_STEP_MS_MAX))).await;
        }
    }

    /// Why this member's pointer may be stale, if it may: it does not act and has not read
    /// etcd for longer than the lease (or never), so another member may have moved the active
    /// region since. A follower cut off from etcd would otherwise go on naming the old region to
    /// `lock run` and `pointer watch` for as long as the partition lasts.
    pub fn pointer_stale(&self) -> Option<String> {
        let status = self.status();
        if status.acting {
            return None;
        }
        let lease_ms = self.section.lease_ms;
        match status.last_etcd_ok_ms_ago {
            Some(ago) if ago <= lease_ms => None,
            Some(ago) => Some(format!(
                "controller member {} has not reached etcd for {ago} ms (longer than lease_ms {lease_ms}): another member may have moved the active region since; ask a member that reaches etcd",
                self.name()
            )),
            None => Some(format!(
                "controller member {} has not reached etcd yet: it cannot tell the active region; ask a member that reaches etcd",
                self.name()
            )),
        }
    }

    /// The leader as last seen in etcd.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.leadership().leader().cloned()
    }

    pub fn role(&self) -> Role {
        self.leadership().role()
    }

    pub fn status(&self) -> LeadershipStatus {
        let now = self.now_ms();
        self.leadership().status(now)
    }

    /// The shared state a new term starts from, once (the server rebuilds its engine from it
    /// before the first tick of the term).
    pub fn take_over(&self) -> Option<SharedState> {
        self.takeover.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The list of open incidents loaded with the shared state at the start of this term, once
    /// (`Ok(None)`: none written yet; `Err`: unreadable or etcd failed: go by the audit log).
    pub fn take_over_incidents(&self) -> Option<Result<Option<IncidentList>, String>> {
        self.takeover_incidents.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Writes the list of open incidents, guarded by `term` (see [`IncidentList`]).
    pub async fn save_incidents(&self, term: Term, list: &IncidentList) -> Result<(), GuardError> {
        if self.acting() != Some(term) {
            return Err(GuardError::NotLeading(term));
        }
        let etcd = self.client().ok_or_else(|| GuardError::Etcd("not connected".into()))?;
        match etcd.write_incidents(term, list.encode()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(GuardError::Superseded(
                "the leader key is no longer this term's: the list of open incidents is the new leader's to write"
                    .into(),
            )),
            Err(error) => Err(GuardError::Etcd(error)),
        }
    }

    /// The shared state as last read from etcd.
    pub fn seen(&self) -> Option<SharedState> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records `state` as the one last read or written (also the first time its version was
    /// seen).
    fn note_seen(&self, state: &SharedState) {
        let now = self.now_ms();
        {
            let mut version = self.version_seen.lock().unwrap_or_else(|p| p.into_inner());
            let same = version
                .as_ref()
                .is_some_and(|(by, at, _)| *by == state.written_by && *at == state.written_at_ms);
            if !same {
                *version = Some((state.written_by.clone(), state.written_at_ms, now));
            }
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
    }

    /// "Now" on the clock of whoever last wrote `state`: its `written_at_ms` plus the time this
    /// member has seen that version for (0 when it only just read it). The hold timers in the
    /// state are that writer's wall-clock times, so ages computed from this do not depend on
    /// how far this member's clock is from the writer's; they may only come out shorter than
    /// the truth (by the time between the write and this member first seeing it), which makes
    /// a hold longer, never shorter.
    pub fn wall_now_for(&self, state: &SharedState) -> u64 {
        if state.written_at_ms == 0 {
            return wall_ms();
        }
        let now = self.now_ms();
        let version = self.version_seen.lock().unwrap_or_else(|p| p.into_inner());
        let since = version
            .as_ref()
            .filter(|(by, at, _)| *by == state.written_by && *at == state.written_at_ms)
            .map_or(0, |(_, _, first)| now.saturating_sub(*first));
        state.written_at_ms.saturating_add(since)
    }

    fn client(&self) -> Option<Etcd> {
        self.etcd.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs the leadership machine forever; `notify` hears of every start and end of a term.
    pub async fn drive(self: Arc<Self>, notify: impl Fn(Notice) + Send + Sync + 'static) {
        let _ = self.notify.set(Box::new(notify));
        let step = Duration::from_millis((self.section.lease_ms / 12).clamp(1, DRIVER_STEP_MS_MAX));
        // Retried every timeout while etcd is out of reach: the first failure is logged, then
        // a summary at most every SUMMARY_INTERVAL_MS, and the connection made.
        let mut connect_failures = Repeated::new(SUMMARY_INTERVAL_MS);
        loop {
            let Some(etcd) = self.client() else {
                match Etcd::connect(&self.section, self.timeout).await {
                    Ok(etcd) => {
                        if let Some(back) = connect_failures.success(connect_failures.now_ms()) {
                            tracing::info!(
                                failures = back.failures,
                                outage_ms = back.outage_ms,
                                "connected to etcd"
                            );
                        }
                        *self.etcd.lock().unwrap_or_else(|p| p.into_inner()) = Some(etcd);
                    }
                    Err(error) => {
                        match connect_failures.failure(connect_failures.now_ms()) {
                            Failed::First => tracing::warn!(%error,
                                "cannot connect to etcd; not acting, retrying (further failures are summed up at most every {SUMMARY_INTERVAL_MS} ms)"),
                            Failed::Summary { failures, outage_ms } => tracing::warn!(%error, failures, outage_ms,
                                "still cannot connect to etcd; not acting"),
                            Failed::Quiet => {}
                        }
                        let now = self.now_ms();
                        self.leadership().input(now, Input::Failed(error));
                        tokio::time::sleep(self.timeout).await;
                    }
                }
                continue;
            };
            self.maybe_compact(&etcd);
            let now = self.now_ms();
            let action = self.leadership().poll(now);
            match action {
                None => tokio::time::sleep(step).await,
                Some(mut action) => loop {
                    let follow = self.perform(&etcd, action).await;
                    match follow {
                        Some(next) => action = next,
                        None => break,
                    }
                },
            }
        }
    }

    /// While acting, every `compact_history_s`: compacts etcd's history up to the revision
    /// noted the round before, and notes the current one (in a task of its own: the loop's
    /// renewals never wait for it). Errors are logged; the next round tries again.
    fn maybe_compact(self: &Arc<Self>, etcd: &Etcd) {
        let history_ms = self.section.compact_history_s.saturating_mul(1000);
        if history_ms == 0 || self.acting().is_none() {
            return;
        }
        let now = self.now_ms();
        let marked = {
            let mut compaction = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
            if compaction.running || now < compaction.next_at_ms {
                return;
            }
            compaction.running = true;
            compaction.next_at_ms = now.saturating_add(history_ms);
            compaction.marked
        };
        let (member, etcd) = (Arc::clone(self), etcd.clone());
        tokio::spawn(async move {
            let result = async {
                let (_, current) = etcd.get(&etcd.leader_key, 0).await?;
                if let Some(marked) = marked {
                    etcd.compact(marked).await?;
                    tracing::debug!(revision = marked, "compacted etcd's history (compact_history_s)");
                }
                Ok::<i64, String>(current)
            }
            .await;
            let mut compaction = member.compaction.lock().unwrap_or_else(|p| p.into_inner());
            compaction.running = false;
            match result {
                Ok(current) => compaction.marked = Some(current),
                Err(error) => {
                    tracing::warn!(%error, "could not compact etcd's history; trying again in compact_history_s")
                }
            }
        });
    }

    /// Performs one action and feeds its answer; returns an action that must follow at once.
    fn notice(&self, notice: Notice) {
        if let Some(notify) = self.notify.get() {
            notify(notice);
        }
    }

    async fn perform(&self, etcd: &Etcd, action: Action) -> Option<Action> {
        let input = match action {
            Action::Observe => match etcd.observe().await {
                Ok((seen, state)) => {
                    self.note_seen(&state);
                    if let Some(seen) = &seen {
                        self.check_namesake(seen);
                    }
                    Input::Observed(seen)
                }
                Err(error) => Input::Failed(error),
            },
            Action::Depose {
                member,
                created,
                modified,
                unchanged_ms,
            } => match etcd.depose(created, modified).await {
                Ok(true) => {
                    tracing::warn!(%member, revision = created, unchanged_ms, lease_ms = self.section.lease_ms,
                        "deposed the leader key: its leader has not renewed it for longer than the lease (it stopped acting a third of the lease ago); campaigning");
                    self.notice(Notice::Deposed { member, unchanged_ms });
                    Input::Deposed
                }
                Ok(false) => Input::DeposeRefused,
                Err(error) => Input::Failed(error),
            },
            Action::Campaign => {
                let me = self.leadership().me().clone();
                let sent_ms = self.now_ms();
                let ttl_s = i64::try_from(self.section.lease_ms / 1000).unwrap_or(i64::MAX);
                match etcd.campaign(&me, ttl_s).await {
                    Ok(Ok(term)) => Input::Won { term, sent_ms },
                    Ok(Err(leader)) => Input::Beaten(leader),
                    Err(error) => Input::Failed(error),
                }
            }
            Action::Renew(term) => {
                // Sent before either request: the right to act counts from here. Both at once,
                // so a slow one does not eat the other's time (the heartbeat is a raft write).
                let sent_ms = self.now_ms();
                let me = self.leadership().me().clone();
                let (kept, beat) = tokio::join!(etcd.renew(term.lease_id), etcd.heartbeat(term, &me));
                match (kept, beat) {
                    (Ok(false), _) => Input::LeaseGone,
                    (_, Err(error)) if error.contains("lease not found") => Input::LeaseGone,
                    (_, Ok(false)) => Input::Superseded(
                        "the leader key is no longer this term's (a follower deposed it, or it expired)".into(),
                    ),
                    (Err(error), _) | (_, Err(error)) => Input::Failed(error),
                    (Ok(true), Ok(true)) => Input::Renewed { sent_ms },
                }
            }
            Action::Load(term) => match etcd.read_at().await {
                Ok((leader, state, mod_revision, read_at)) => {
                    let me = self.leadership().me().clone();
                    if leader.as_ref() != Some(&me) {
                        Input::Superseded(format!(
                            "the leader key names {} while loading the state",
                            leader.map(|l| l.member).unwrap_or_else(|| "nobody".into())
                        ))
                    } else {
                        let generation = state.generation;
                        {
                            let mut view = self.view.lock().await;
                            *view = View {
                                term: Some(term),
                                state: state.clone(),
                                mod_revision,
                                stale: false,
                            };
                        }
                        self.note_seen(&state);
                        // Read in the same snapshot as the state; a failure here does not stop
                        // the term (paging never waits on etcd): the audit log stands in.
                        let incidents = etcd.read_incidents(read_at).await;
                        *self.takeover_incidents.lock().unwrap_or_else(|p| p.into_inner()) = Some(incidents);
                        *self.takeover.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
                        tracing::info!(member = %me.member, revision = term.revision, %generation, "leading: won the leader key and loaded the shared state");
                        self.notice(Notice::Leading { term, generation });
                        Input::Loaded
                    }
                }
                Err(error) => Input::Failed(error),
            },
            Action::StepDown { term, reason } => {
                self.end_term(term).await;
                tracing::warn!(%reason, "stepped down: not acting");
                self.notice(Notice::SteppedDown { reason });
                etcd.revoke(term.lease_id).await;
                return None;
            }
        };
        self.log_request(&input);
        let now = self.now_ms();
        self.leadership().input(now, input)
    }

    /// A leader key that names this member while it follows is another controller run with
    /// the same `member` if it has another address, or is renewed (this member's own key from
    /// before a restart has its address and nobody renews it): the two would share a name in
    /// etcd, the leader's audit records and its vantage. Said once.
    fn check_namesake(&self, seen: &KeySeen) {
        let me = self.leadership().me().clone();
        let leader = &seen.leader;
        if leader.member != me.member {
            return;
        }
        let renewed = {
            let mut own = self.own_name_key.lock().unwrap_or_else(|p| p.into_inner());
            let renewed = own.is_some_and(|(created, modified)| created == seen.created && modified != seen.modified);
            *own = Some((seen.created, seen.modified));
            renewed
        };
        if (leader.address != me.address || renewed)
            && !self.namesake_seen.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(member = %me.member, other_address = %leader.address, own_address = %me.address,
                "another controller runs with this member name: give each member its own ([controller.ha] member, or --member), and each its own --audit-log");
        }
    }

    /// Logs the first of a run of failed requests, summaries, and the end of the run: a member
    /// that cannot reach etcd does not act, and its log must say why.
    fn log_request(&self, input: &Input) {
        let mut failures = self.request_failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = failures.now_ms();
        match input {
            Input::Failed(error) => match failures.failure(now) {
                Failed::First => tracing::warn!(%error, endpoints = %self.section.etcd.join(", "),
                    "etcd does not answer: not acting, retrying (check [controller.ha] etcd and that etcd runs; further failures are summed up at most every {SUMMARY_INTERVAL_MS} ms)"),
                Failed::Summary { failures, outage_ms } => tracing::warn!(%error, failures, outage_ms,
                    "etcd still does not answer: not acting"),
                Failed::Quiet => {}
            },
            _ => {
                if let Some(back) = failures.success(now) {
                    tracing::info!(
                        failures = back.failures,
                        outage_ms = back.outage_ms,
                        "etcd answers again"
                    );
                }
            }
        }
    }

    async fn end_term(&self, term: Term) {
        let mut view = self.view.lock().await;
        if view.term == Some(term) {
            view.term = None;
            view.stale = true;
        }
        *self.takeover.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.takeover_incidents.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Applies `change` to the shared state in etcd, guarded by `term`: refused unless this
    /// member acts in `term` now and the transaction finds the leader key and the state as it
    /// left them.
    async fn guarded(
        &self,
        term: Term,
        change: impl FnOnce(&SharedState, &str, u64) -> Result<SharedState, StateError>,
    ) -> Result<SharedState, GuardError> {
        if self.acting() != Some(term) {
            return Err(GuardError::NotLeading(term));
        }
        let etcd = self.client().ok_or_else(|| GuardError::Etcd("not connected".into()))?;
        let mut view = self.view.lock().await;
        if view.term != Some(term) {
            return Err(GuardError::NotLeading(term));
        }
        if view.stale {
            // Only this term writes the state while it holds the key, so what is there now is
            // this member's own last write (applied or not).
            let (leader, state, mod_revision) = etcd.read().await.map_err(GuardError::Etcd)?;
            if leader.as_ref().map(|l| l.member.as_str()) != Some(self.name()) {
                drop(view);
                self.supersede(term, "the leader key names another member").await;
                return Err(GuardError::Superseded("the leader key names another member".into()));
            }
            view.state = state;
            view.mod_revision = mod_revision;
            view.stale = false;
        }
        let next = change(&view.state, self.name(), wall_ms())?;
        match etcd.write(term, view.mod_revision, &next).await {
            Ok(Some(mod_revision)) => {
                view.state = next.clone();
                view.mod_revision = mod_revision;
                self.note_seen(&next);
                Ok(next)
            }
            Ok(None) => {
                // Refused: either another member leads, or an earlier try of this very write
                // was applied and its answer lost. Read back to tell which.
                if let Ok((Some(leader), state, mod_revision)) = etcd.read().await
                    && leader.member == self.name()
                    && state == next
                {
                    view.state = next.clone();
                    view.mod_revision = mod_revision;
                    return Ok(next);
                }
                drop(view);
                let why = "the leader key or the shared state changed in etcd (another member leads)";
                self.supersede(term, why).await;
                Err(GuardError::Superseded(why.into()))
            }
            Err(error) => {
                view.stale = true;
                Err(GuardError::Etcd(error))
            }
        }
    }

    async fn supersede(&self, term: Term, why: &str) {
        let now = self.now_ms();
        let action = self.leadership().input(now, Input::Superseded(why.into()));
        if let Some(Action::StepDown { term: ended, reason }) = action {
            self.end_term(ended).await;
            tracing::warn!(%reason, "stepped down: not acting");
            self.notice(Notice::SteppedDown { reason });
            if let Some(etcd) = self.client() {
                etcd.revoke(term.lease_id).await;
            }
        }
    }

    /// At shutdown: gives the leader key up at once (revoking the lease deletes it), so
    /// another member need not wait for the lease to expire.
    pub async fn resign(&self) {
        let now = self.now_ms();
        let term = self.leadership().status(now).term;
        if let (Some(term), Some(etcd)) = (term, self.client()) {
            let action = self.leadership().input(now, Input::Superseded("shutting down".into()));
            if action.is_some() {
                self.end_term(term).await;
            }
            etcd.revoke(term.lease_id).await;
            tracing::info!(member = %self.name(), "resigned the leader key at shutdown");
        }
    }

    /// Records the start of `order` (its generation becomes the counter) before any step runs.
    /// Answers the steps an earlier generation of the same decision applied (see
    /// [`RunbookProgress::applied_earlier`](crate::ha::RunbookProgress)), with that generation.
    pub async fn start_runbook(
        &self,
        term: Term,
        order: &RunbookOrder,
        timers: &HoldTimers,
    ) -> Result<BTreeMap<String, u64>, GuardError> {
        let state = self
            .guarded(term, |state, me, at| state.start(order, timers, me, at))
            .await?;
        Ok(state
            .runbook
            .map(|progress| progress.applied_earlier)
            .unwrap_or_default())
    }

    /// Checks the term is still held (in etcd, not only locally) before a step runs, and
    /// records the steps done so far.
    pub async fn before_step(&self, term: Term, order: &RunbookOrder, done: Option<&str>) -> Result<(), GuardError> {
        self.guarded(term, |state, me, at| match done {
            Some(step) => state.step_done(order.generation, step, me, at),
            None => {
                let mut next = state.clone();
                next.written_by = me.to_string();
                next.written_at_ms = at;
                Ok(next)
            }
        })
        .await
        .map(|_| ())
    }

    /// Records how the runbook of `order` ended.
    pub async fn finish_runbook(
        &self,
        term: Term,
        order: &RunbookOrder,
        outcome: &RunbookOutcome,
    ) -> Result<(), GuardError> {
        self.guarded(term, |state, me, at| state.finish(order.generation, outcome, me, at))
            .await
            .map(|_| ())
    }

    /// Records the operator's preferences when they differ from what etcd holds.
    pub async fn save_preferences(&self, term: Term, preferred: &RegionId, paused: bool) -> Result<(), GuardError> {
        {
            let view = self.view.lock().await;
            if view.term == Some(term)
                && !view.stale
                && view.state.preferred.as_ref() == Some(preferred)
                && view.state.paused == paused
            {
                return Ok(());
            }
        }
        self.guarded(term, |state, me, at| {
            Ok(state.with_preferences(preferred, paused, me, at))
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn requests_cut_by_a_dead_member_are_retried_and_refusals_are_not() {
        // gRPC's codes (tonic's numbering): a connection closed under the request (CANCELLED,
        // tonic's answer when an etcd member died), an unknown failure, an unreachable endpoint:
        // another endpoint may answer.
        for code in [1, 2, 14] {
            assert!(retryable_code(code), "{code}");
        }
        // etcd's own answers (invalid argument, not found, permission denied, resource
        // exhausted, failed precondition, unauthenticated): trying again cannot change them.
        for code in [3, 5, 7, 8, 9, 16] {
            assert!(!retryable_code(code), "{code}");
        }
        assert!(!retryable(&etcd_client::Error::InvalidArgs("x".into())));
    }

    #[test]
    fn an_etcd_out_of_space_is_named_with_the_operators_fix() {
        let fix = fix_for("etcdserver: mvcc: database space exceeded").expect("NOSPACE has a fix");
        assert!(fix.contains("NOSPACE") && fix.contains("etcdctl alarm disarm"), "{fix}");
        assert_eq!(fix_for("etcdserver: request timed out"), None);
    }
}
