//! `redis_promote`: moves the master of a Redis replication group into the order's active
//! region (what Sentinel does, driven by the controller's decision instead of its own vote).
//!
//! One run: survey every server (`INFO replication`, the promotion record `switchyard:promotion`);
//! [`plan`] (pure) names the last master and the candidate (the replica of the region with the
//! highest replication offset); if the old master answers, pause its writers
//! (`CLIENT PAUSE WRITE`, renewed every [`PAUSE_RENEW_MS`] until it is a replica), read its
//! final offset and wait at most `promote_lag_max_ms` for the candidate to reach it, refusing
//! (and unpausing) if it does not, unless the order forces data loss (with the old master gone, the furthest replica of its stream, in any region, stands in
//! for its final offset); `REPLICAOF NO ONE` on the candidate and the record written (a script that never lowers
//! it); the old master becomes a replica of the new one (`REPLICAOF`, then `CLIENT UNPAUSE`);
//! every other server is pointed at the new master. A master that was cut off and comes back is
//! made a replica on sight: Redis has no errant-transaction check, so its writes since the cut
//! are discarded by the resynchronisation, and the outcome says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{CONNECT_TIMEOUT_MS, Member, Notes, QUERY_TIMEOUT_MS};
use crate::secret::Secret;
use crate::{Checker, Failure, Order, Outcome};

/// Default Redis port.
pub const REDIS_PORT_DEFAULT: u16 = 6379;
/// The promotion record's key: `"<generation> <address> <region>"`.
pub const RECORD_KEY: &str = "switchyard:promotion";
/// How often the catch-up wait reads the candidate's offset.
pub const CATCH_UP_POLL_MS: u64 = 20;
/// Longest `INFO` answer read, in bytes.
pub const INFO_BYTES_MAX: usize = 64 * 1024;
/// Extra pause beyond the catch-up wait, and what every renewal of the pause sets (from the
/// time it is renewed): the old master stays paused until it is a replica however long the
/// steps after the catch-up take, and no longer than this after a run that stops.
pub const PAUSE_MARGIN_MS: u64 = 10_000;
/// How often the old master's pause is renewed while the promotion runs.
pub const PAUSE_RENEW_MS: u64 = 1_000;
/// How long one `switchyard guard` round pauses a master's writes; the guard renews it every
/// round (far more often), so it only matters once the guard stops: the pause lapses then.
pub const GUARD_PAUSE_MS: u64 = 10_000;
/// How long a repointed server gets to link up with its new master (or start a full
/// resynchronisation), and how often it is looked at meanwhile.
pub const LINK_WAIT_MS: u64 = 5_000;
pub const LINK_POLL_MS: u64 = 50;
/// `repl-diskless-sync-delay` assumed when the master does not say (Redis' default, 5 s), and
/// the most waited for it.
pub const FULL_SYNC_DELAY_MS_DEFAULT: u64 = 5_000;
pub const FULL_SYNC_DELAY_MS_MAX: u64 = 30_000;
/// How a loss is worded ([`judge_loss`]).
const LOSS: super::LossWords = super::LossWords::new("those writes are lost", "those writes", "wait");
/// What happens to a server the first survey of a run cannot reach.
const UNREACHABLE: &str = "not fenced by this step — its region's guard pauses it (switchyard guard), or fence it at the load balancer; it is made a replica when it answers again";

/// Sets the record unless it holds a newer generation; returns what it holds afterwards.
const RECORD_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    if v then local g = tonumber(string.match(v, '^(%d+)')) \
    if g and g > tonumber(ARGV[1]) then return v end end \
    redis.call('SET', KEYS[1], ARGV[2]) return ARGV[2]";

promote_settings! {
    /// The `[runbook.redis_promote]` table.
    pub struct Settings {
        /// An ACL user (Redis 6+); without it the password is the `default` user's.
        #[serde(default)]
        pub username: Option<Spanned<String>>,
    }
}

impl Settings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<RedisPromote> {
        let (what, mut shared) = self.check_shared(("redis_promote", step), REDIS_PORT_DEFAULT, checker);
        if let Some(user) = &self.username
            && (user.get_ref().is_empty() || user.get_ref().chars().any(char::is_whitespace))
        {
            checker.error(
                user.span(),
                format!("{what}: username '{}' is empty or has spaces", user.get_ref()),
                "name an ACL user, or leave username out to use the default user".into(),
            );
            shared.ok = false;
        }
        let (Some(members), Some(password), Some(tls), true) = (shared.members, shared.password, shared.tls, shared.ok)
        else {
            return None;
        };
        Some(RedisPromote {
            inner: Arc::new(Inner {
                members,
                username: self.username.as_ref().map(|u| u.get_ref().clone()),
                password,
                promote_lag_max_ms: *self.promote_lag_max_ms.get_ref(),
                tls,
            }),
        })
    }
}

/// The ready `redis_promote` step.
#[derive(Clone, Debug)]
pub struct RedisPromote {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    username: Option<String>,
    password: Option<Secret>,
    promote_lag_max_ms: u64,
    tls: Option<super::tls::Tls>,
}

// No waits beyond the catch-up: a cut run's pause expires by itself at most
// `promote_lag_max_ms` + [`PAUSE_MARGIN_MS`] after it began, or [`PAUSE_MARGIN_MS`] after its
// last renewal.
promote_step!(RedisPromote, survey by observe, waits |_inner| 0);

/// What one reachable server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `Some("host:port")` for a replica.
    pub replica_of: Option<String>,
    pub link_up: bool,
    /// A full resynchronisation from its master is under way (`master_sync_in_progress:1`).
    pub syncing: bool,
    /// The replication offset it has processed (`master_repl_offset`).
    pub offset: u64,
    pub replid: String,
    /// The replication id it followed before it was promoted (`master_replid2`).
    pub replid2: String,
    pub record: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Done {
        primary: usize,
    },
    Promote {
        old: Option<usize>,
        candidate: usize,
        /// The candidate is a stale master: it becomes a replica of `old` first.
        rejoin: bool,
    },
}

/// Parses `INFO replication` (`key:value` lines).
pub fn parse_info(text: &str) -> Result<Observed, String> {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.trim_end().split_once(':'))
        .collect();
    let number = |key: &str| -> Result<u64, String> {
        fields
            .get(key)
            .ok_or_else(|| format!("INFO replication has no {key}"))?
            .parse()
            .map_err(|_| format!("INFO replication: {key} is not a number"))
    };
    let replica_of = match fields.get("role").copied() {
        Some("master") => None,
        Some("slave") => Some(format!(
            "{}:{}",
            fields.get("master_host").copied().unwrap_or_default(),
            fields.get("master_port").copied().unwrap_or_default()
        )),
        other => return Err(format!("INFO replication: unknown role {other:?}")),
    };
    Ok(Observed {
        link_up: fields.get("master_link_status").copied() == Some("up"),
        syncing: fields.get("master_sync_in_progress").copied() == Some("1"),
        replica_of,
        offset: number("master_repl_offset")?,
        replid: fields.get("master_replid").copied().unwrap_or_default().to_string(),
        replid2: fields.get("master_replid2").copied().unwrap_or_default().to_string(),
        record: None,
    })
}

/// Decides the run from the survey (`None`: unreachable). Pure.
pub fn plan(order: &Order, members: &[Member], observed: &[Option<Observed>]) -> Result<Plan, Failure> {
    let reachable = super::reachable(observed);
    if reachable.is_empty() {
        return Err(Failure::Retryable("no server answered".into()));
    }
    super::refuse_newer_record(order, members, &reachable, |o| o.record)?;
    let masters: Vec<&(usize, &Observed)> = reachable.iter().filter(|(_, o)| o.replica_of.is_none()).collect();
    let top = masters.iter().map(|(_, o)| o.record.unwrap_or(0)).max();
    let tied: Vec<&&(usize, &Observed)> = masters
        .iter()
        .filter(|(_, o)| Some(o.record.unwrap_or(0)) == top)
        .collect();
    // A master promoted from another's replica carries that one's replication id as replid2:
    // it is the newer of the two.
    let old = match tied.as_slice() {
        [] => None,
        [(one, _)] => Some(*one),
        several => {
            let successors: Vec<usize> = several
                .iter()
                .filter(|(_, o)| {
                    several
                        .iter()
                        .any(|(_, p)| !o.replid2.is_empty() && o.replid2 == p.replid)
                })
                .map(|(i, _)| *i)
                .collect();
            match successors.as_slice() {
                [one] => Some(*one),
                _ => {
                    return Err(Failure::Refused(format!(
                        "{} are all masters with the same promotion record: make the stale ones replicas (REPLICAOF), then run again",
                        several
                            .iter()
                            .map(|(i, _)| members[*i].address.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    if let Some(old) = old
        && members[old].region == order.to
    {
        return Ok(Plan::Done { primary: old });
    }
    // Replicas first (highest offset), then a stale master of the region, which can only
    // catch up by resynchronising from the last master.
    let candidate = reachable
        .iter()
        .filter(|(i, o)| members[*i].region == order.to && (o.replica_of.is_some() || old.is_some()))
        .max_by_key(|(i, o)| (o.replica_of.is_some(), o.offset, std::cmp::Reverse(*i)))
        .map(|(i, o)| (*i, o.replica_of.is_none()));
    match candidate {
        Some((candidate, rejoin)) => Ok(Plan::Promote { old, candidate, rejoin }),
        None if members.iter().any(|m| m.region == order.to) => Err(Failure::Retryable(format!(
            "no replica of region {} answered",
            order.to
        ))),
        None => Err(Failure::Refused(format!(
            "no server is configured in region {}; add it under servers",
            order.to
        ))),
    }
}

/// Whether to promote a candidate `behind_bytes` short of `than` (the old master, or the
/// replica that received most when the old master is gone).
pub fn judge_loss(
    behind_bytes: u64,
    force: bool,
    candidate: &str,
    than: &str,
    lag_max_ms: u64,
) -> Result<Option<String>, Failure> {
    let what = (behind_bytes > 0).then(|| {
        format!(
            "{candidate} is still {behind_bytes} byte(s) of the replication stream behind {than} after waiting promote_lag_max_ms = {lag_max_ms}"
        )
    });
    super::judge_loss(what, force, LOSS)
}

/// With the old master gone: the reachable replica (any region) of the `candidate`'s stream
/// (same replication id) that processed the most, when that is more than the candidate did;
/// with its offset and the stream's id. Pure.
pub fn furthest_replica(observed: &[Option<Observed>], candidate: usize) -> Option<(usize, u64, String)> {
    let mine = observed.get(candidate)?.as_ref()?;
    observed
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
        .filter(|(i, o)| *i != candidate && o.replica_of.is_some() && !o.replid.is_empty() && o.replid == mine.replid)
        .max_by_key(|(i, o)| (o.offset, std::cmp::Reverse(*i)))
        .filter(|(_, o)| o.offset > mine.offset)
        .map(|(i, o)| (i, o.offset, o.replid.clone()))
}

impl RedisPromote {
    pub async fn run(&self, order: &Order) -> Outcome {
        let inner = &self.inner;
        let (observed, mut notes) = super::first_survey(&inner.members, survey(inner).await, UNREACHABLE);
        let primary = match plan(order, &inner.members, &observed)? {
            Plan::Done { primary } => {
                let record = observed[primary].as_ref().and_then(|o| o.record).unwrap_or(0);
                notes.push(super::already_note(
                    &inner.members[primary].address,
                    "master",
                    record,
                    order.generation,
                ));
                if record < order.generation {
                    inner
                        .connect(primary)
                        .await?
                        .write_record(order, &inner.members[primary])
                        .await?;
                }
                primary
            }
            Plan::Promote { old, candidate, rejoin } => {
                self.promote(order, &observed, old, candidate, rejoin, &mut notes)
                    .await?;
                candidate
            }
        };
        let reached: Vec<bool> = observed.iter().map(Option::is_some).collect();
        self.repoint_others(primary, &reached, &mut notes).await?;
        Ok(notes.join())
    }

    async fn promote(
        &self,
        order: &Order,
        observed: &[Option<Observed>],
        old: Option<usize>,
        candidate: usize,
        rejoin: bool,
        notes: &mut Notes,
    ) -> Result<(), Failure> {
        let Self { inner } = self;
        let member = &inner.members[candidate];
        let lag_max_ms = inner.promote_lag_max_ms;
        let mut session = inner.connect(candidate).await?;
        let mut old_session = None;
        let mut keeper = None;
        if let Some(old) = old {
            let mut s = inner.connect(old).await?;
            s.command(
                redis::cmd("CLIENT")
                    .arg("PAUSE")
                    .arg(lag_max_ms + PAUSE_MARGIN_MS)
                    .arg("WRITE"),
            )
            .await?;
            // Renewed until the old master is a replica: the steps after the catch-up are
            // each bounded, but together may outlast any one pause, and writes it took once
            // unpaused would be discarded when it resynchronises from the new master.
            keeper = Some(PauseKeeper::start(inner.connect(old).await?));
            let final_state = s.observe().await?;
            let final_offset = final_state.offset;
            notes.push(format!(
                "paused writes on old master {} at offset {final_offset}",
                inner.members[old].address
            ));
            if rejoin {
                session.replicate_from(&inner.members[old]).await?;
                notes.push(format!(
                    "stale master {} resynchronised from {} (its own writes since it was cut off are discarded)",
                    member.address, inner.members[old].address
                ));
            }
            let reached = session
                .wait_for_offset(&final_state.replid, final_offset, lag_max_ms)
                .await?;
            let behind = final_offset.saturating_sub(reached);
            let than = "the old master";
            if let Err(refusal) = judge_loss(behind, order.force_data_loss, &member.address, than, lag_max_ms) {
                if let Some(keeper) = keeper.take() {
                    keeper.stop().await;
                }
                let _ = s.command(redis::cmd("CLIENT").arg("UNPAUSE")).await;
                return Err(refusal);
            }
            if let Ok(Some(loss)) = judge_loss(behind, order.force_data_loss, &member.address, than, lag_max_ms) {
                notes.push(loss);
            }
            old_session = Some((old, s));
        } else if let Some((ahead, target, replid)) = furthest_replica(observed, candidate) {
            // The old master is gone: what any replica of its stream received is all that is
            // known to exist. The candidate catches up if it still can (a replica of a
            // replica), and a replica left ahead of it would resynchronise from it below,
            // dropping what only it had.
            let reached = session.wait_for_offset(&replid, target, lag_max_ms).await?;
            let behind = target.saturating_sub(reached);
            let than = format!("{} (a replica of the same stream)", inner.members[ahead].address);
            if let Some(loss) = judge_loss(behind, order.force_data_loss, &member.address, &than, lag_max_ms)? {
                notes.push(loss);
            }
        }
        session.command(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await?;
        // A master whose record is older than the move: a region's guard that read the pointer
        // before this runbook began may pause it in this instant, which would hold the record's
        // write. This step decides: any such pause ends here (a replica has none of its own).
        session.command(redis::cmd("CLIENT").arg("UNPAUSE")).await?;
        session.write_record(order, member).await?;
        let now = session.observe().await?;
        if now.replica_of.is_some() {
            return Err(Failure::Retryable(format!(
                "{}: still a replica after REPLICAOF NO ONE",
                member.address
            )));
        }
        notes.push(format!(
            "promoted {} in {} at offset {}",
            member.address, member.region, now.offset
        ));
        match old_session {
            Some((old, mut s)) => {
                s.replicate_from(member).await?;
                if let Some(keeper) = keeper.take() {
                    keeper.stop().await;
                }
                s.command(redis::cmd("CLIENT").arg("UNPAUSE")).await?;
                let delay_ms = session.full_sync_delay_ms().await;
                notes.push(match s.link_problem(delay_ms).await? {
                    None => format!(
                        "old master {} now replicates from {}",
                        inner.members[old].address, member.address
                    ),
                    Some(problem) => format!(
                        "old master {} pointed at {}, but does not replicate: {problem}",
                        inner.members[old].address, member.address
                    ),
                });
            }
            None => notes
                .push("the old master did not answer: writes it took that no replica received are unknown".to_string()),
        }
        Ok(())
    }

    /// Points every other server the first survey `reached` at `primary`.
    async fn repoint_others(&self, primary: usize, reached: &[bool], notes: &mut Notes) -> Result<(), Failure> {
        let inner = &self.inner;
        let observed = survey_reached(inner, reached).await;
        let primary_member = &inner.members[primary];
        let mut delay_ms = None;
        for (i, o) in observed.iter().enumerate() {
            let Ok(o) = o else { continue };
            if i == primary || o.replica_of.as_deref() == Some(primary_member.address.as_str()) {
                continue;
            }
            let mut session = inner.connect(i).await?;
            session.replicate_from(primary_member).await?;
            let member = &inner.members[i];
            let delay_ms = match delay_ms {
                Some(ms) => ms,
                None => *delay_ms.insert(inner.connect(primary).await?.full_sync_delay_ms().await),
            };
            // Pointed is not linked: a login the new master refuses (ACL, password, TLS)
            // leaves the replica retrying for ever.
            if let Some(problem) = session.link_problem(delay_ms).await? {
                notes.push(format!(
                    "{} pointed at {}, but does not replicate: {problem}",
                    member.address, primary_member.address
                ));
                continue;
            }
            if o.replica_of.is_none() {
                notes.push(format!(
                    "stray master {} made a replica of {} (its writes since it was cut off are discarded by the resync)",
                    member.address, primary_member.address
                ));
            } else {
                notes.push(super::now_replicates(member, primary_member));
            }
        }
        Ok(())
    }
}

/// Renews the old master's `CLIENT PAUSE WRITE` every [`PAUSE_RENEW_MS`] for
/// [`PAUSE_MARGIN_MS`] from then, on a session of its own, until stopped (dropped: the renewals
/// end, and the pause within [`PAUSE_MARGIN_MS`]). A renewal that fails is tried again at the
/// next tick.
struct PauseKeeper {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl PauseKeeper {
    fn start(mut session: Session) -> PauseKeeper {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(Duration::from_millis(PAUSE_RENEW_MS)) => {}
                }
                let renew = redis::cmd("CLIENT")
                    .arg("PAUSE")
                    .arg(PAUSE_MARGIN_MS)
                    .arg("WRITE")
                    .clone();
                if let Err(e) = session.query::<redis::Value>(&renew).await {
                    tracing::warn!("renewing the pause: {e}");
                }
            }
        });
        PauseKeeper { stop: Some(stop), task }
    }

    /// Stops the renewals and waits until none is under way (an `UNPAUSE` after this is final).
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for PauseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl super::guard::Guarded for Inner {
    type Session = Session;

    fn members(&self) -> &[Member] {
        &self.members
    }

    async fn open(&self, index: usize) -> Result<Session, Failure> {
        self.connect(index).await
    }

    async fn view(&self, session: &mut Session) -> Result<super::guard::View, Failure> {
        let observed = session.observe().await?;
        Ok(super::guard::View {
            writable: observed.replica_of.is_none(),
            follows: observed.replica_of,
            record: observed.record,
        })
    }

    /// Redis has no read-only master: its writes are paused for [`GUARD_PAUSE_MS`] from now;
    /// the guard renews the pause every round while the fence holds, and it lapses by itself
    /// once the guard stops.
    async fn fence(&self, session: &mut Session, _index: usize) -> Result<super::guard::GuardOutcome, Failure> {
        session
            .command(redis::cmd("CLIENT").arg("PAUSE").arg(GUARD_PAUSE_MS).arg("WRITE"))
            .await?;
        Ok(super::guard::GuardOutcome::Paused)
    }

    async fn unfence(&self, session: &mut Session, _index: usize) -> Result<(), Failure> {
        session.command(redis::cmd("CLIENT").arg("UNPAUSE")).await
    }
}

impl Inner {
    async fn connect(&self, index: usize) -> Result<Session, Failure> {
        let member = &self.members[index];
        let addr = match &self.tls {
            None => redis::ConnectionAddr::Tcp(member.host.clone(), member.port),
            Some(_) => redis::ConnectionAddr::TcpTls {
                host: member.host.clone(),
                port: member.port,
                insecure: false,
                tls_params: None,
            },
        };
        let info = redis::ConnectionInfo {
            addr,
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: self.username.clone(),
                password: self.password.as_ref().map(|p| p.expose().to_string()),
                protocol: redis::ProtocolVersion::RESP2,
            },
        };
        let client = match &self.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                let certificates = tls
                    .redis()
                    .map_err(|problem| Failure::Refused(format!("{}: {problem}", member.address)))?;
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| Failure::Retryable(format!("{}: {e}", member.address)))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .set_response_timeout(Duration::from_millis(QUERY_TIMEOUT_MS));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let conn = super::login(&member.address, connect, |e| e.to_string()).await?;
        Ok(Session {
            conn,
            address: member.address.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
        })
    }
}

struct Session {
    conn: redis::aio::MultiplexedConnection,
    address: String,
    username: Option<String>,
    password: Option<Secret>,
}

impl Session {
    async fn query<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> Result<T, Failure> {
        let run = command.query_async::<T>(&mut self.conn);
        match tokio::time::timeout(Duration::from_millis(QUERY_TIMEOUT_MS), run).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::Retryable(format!("{}: {e}", self.address))),
            Err(_) => Err(Failure::Retryable(format!(
                "{}: no answer within {QUERY_TIMEOUT_MS} ms",
                self.address
            ))),
        }
    }

    async fn command(&mut self, command: &mut redis::Cmd) -> Result<(), Failure> {
        self.query::<redis::Value>(command).await.map(|_| ())
    }

    async fn observe(&mut self) -> Result<Observed, Failure> {
        let text: String = self.query(redis::cmd("INFO").arg("replication")).await?;
        let text: String = text.chars().take(INFO_BYTES_MAX).collect();
        let mut observed = parse_info(&text).map_err(|e| Failure::Retryable(format!("{}: {e}", self.address)))?;
        observed.record = self.record().await?;
        Ok(observed)
    }

    async fn record(&mut self) -> Result<Option<u64>, Failure> {
        let value: Option<String> = self.query(redis::cmd("GET").arg(RECORD_KEY)).await?;
        Ok(value.and_then(|v| v.split_whitespace().next().and_then(|g| g.parse().ok())))
    }

    async fn write_record(&mut self, order: &Order, member: &Member) -> Result<(), Failure> {
        let value = format!("{} {} {}", order.generation, member.address, member.region);
        let held: String = self
            .query(
                redis::cmd("EVAL")
                    .arg(RECORD_SCRIPT)
                    .arg(1)
                    .arg(RECORD_KEY)
                    .arg(order.generation)
                    .arg(&value),
            )
            .await?;
        if held != value {
            return Err(Failure::Fenced(format!(
                "{}: the promotion record holds '{held}', newer than this order's generation {}",
                self.address, order.generation
            )));
        }
        Ok(())
    }

    /// Polls until this server follows `replid` up to `target` or `timeout_ms` passes; returns
    /// the offset reached in that stream (0 while it is not in it: a stale master resyncing).
    async fn wait_for_offset(&mut self, replid: &str, target: u64, timeout_ms: u64) -> Result<u64, Failure> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let now = self.observe().await?;
            let offset = if now.replid == replid { now.offset } else { 0 };
            if offset >= target || tokio::time::Instant::now() >= deadline {
                return Ok(offset);
            }
            tokio::time::sleep(Duration::from_millis(CATCH_UP_POLL_MS)).await;
        }
    }

    /// How long this master may take to answer a replica's full resynchronisation request
    /// (`repl-diskless-sync-delay`, when `repl-diskless-sync` is on: it waits that long for
    /// more replicas before it starts, and the replica shows nothing meanwhile); Redis' default
    /// when it does not say, at most [`FULL_SYNC_DELAY_MS_MAX`].
    async fn full_sync_delay_ms(&mut self) -> u64 {
        let config = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
        let read = |pairs: Result<Vec<String>, Failure>| pairs.ok().and_then(|p| p.get(1).cloned());
        let diskless = read(self.query(&config("repl-diskless-sync")).await);
        if diskless.as_deref() == Some("no") {
            return 0;
        }
        read(self.query(&config("repl-diskless-sync-delay")).await)
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(FULL_SYNC_DELAY_MS_DEFAULT, |s| s.saturating_mul(1000))
            .min(FULL_SYNC_DELAY_MS_MAX)
    }

    /// Waits at most [`LINK_WAIT_MS`] plus the master's `full_sync_delay_ms` until this
    /// replica's link to its master is up or a full resynchronisation runs: `None` then, else
    /// what it says.
    async fn link_problem(&mut self, full_sync_delay_ms: u64) -> Result<Option<String>, Failure> {
        let wait_ms = LINK_WAIT_MS.saturating_add(full_sync_delay_ms);
        let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let now = self.observe().await?;
            if now.link_up || now.syncing {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Some(format!(
                    "its link to the master is still down after {wait_ms} ms (see its log: a login the master refuses?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(LINK_POLL_MS)).await;
        }
    }

    /// `REPLICAOF` the new master, with the step's credentials as the replication login.
    async fn replicate_from(&mut self, master: &Member) -> Result<(), Failure> {
        if let Some(password) = self.password.clone() {
            self.command(redis::cmd("CONFIG").arg("SET").arg("masterauth").arg(password.expose()))
                .await?;
        }
        if let Some(user) = self.username.clone() {
            self.command(redis::cmd("CONFIG").arg("SET").arg("masteruser").arg(user))
                .await?;
        }
        self.command(redis::cmd("REPLICAOF").arg(&master.host).arg(master.port))
            .await?;
        let now = self.observe().await?;
        if now.replica_of.as_deref() != Some(master.address.as_str()) {
            return Err(Failure::Retryable(format!(
                "{}: replicates from {:?} after REPLICAOF {}",
                self.address, now.replica_of, master.address
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::assert_refused;

    fn order(generation: u64, to: &str) -> Order {
        crate::db::test_support::order(generation, to, false)
    }

    fn members() -> Vec<Member> {
        crate::db::test_support::members(6379)
    }

    fn master(offset: u64, replid: &str, replid2: &str, record: Option<u64>) -> Observed {
        Observed {
            replica_of: None,
            link_up: false,
            syncing: false,
            offset,
            replid: replid.into(),
            replid2: replid2.into(),
            record,
        }
    }

    fn replica(offset: u64) -> Observed {
        Observed {
            replica_of: Some("a:6379".into()),
            link_up: true,
            ..master(offset, "r1", "", None)
        }
    }

    #[test]
    fn info_replication_is_read_for_both_roles() {
        let master = parse_info("# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc\r\nmaster_replid2:0000\r\nmaster_repl_offset:1234\r\n").expect("parses");
        assert_eq!(
            (master.replica_of, master.offset, master.replid.as_str()),
            (None, 1234, "abc")
        );
        let replica = parse_info(
            "role:slave\nmaster_host:127.0.0.1\nmaster_port:7001\nmaster_link_status:up\nmaster_repl_offset:99\n",
        )
        .expect("parses");
        assert_eq!(replica.replica_of.as_deref(), Some("127.0.0.1:7001"));
        assert!(replica.link_up);
        assert!(parse_info("role:sentinel\nmaster_repl_offset:1").is_err());
        assert!(
            parse_info("role:master\n")
                .expect_err("no offset")
                .contains("master_repl_offset")
        );
    }

    #[test]
    fn the_replica_with_the_highest_offset_in_the_region_is_the_candidate() {
        let observed = vec![
            Some(master(500, "r1", "", None)),
            Some(replica(400)),
            Some(replica(450)),
        ];
        assert_eq!(
            plan(&order(3, "us"), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: Some(0),
                candidate: 2,
                rejoin: false
            }
        );
        let observed = vec![None, Some(replica(400)), None];
        assert_eq!(
            plan(&order(3, "us"), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: None,
                candidate: 1,
                rejoin: false
            }
        );
    }

    #[test]
    fn a_promoted_replica_is_done_and_wins_over_its_old_master_without_records() {
        // b was promoted from a's stream (replid2 = a's replid) but the run stopped before the
        // record: b is still the newer master.
        let observed = vec![
            Some(master(500, "r1", "", None)),
            Some(master(500, "r2", "r1", None)),
            Some(replica(500)),
        ];
        assert_eq!(
            plan(&order(3, "us"), &members(), &observed).expect("plan"),
            Plan::Done { primary: 1 }
        );
        let unrelated = vec![Some(master(5, "x", "", None)), Some(master(5, "y", "", None)), None];
        assert!(matches!(
            plan(&order(3, "us"), &members(), &unrelated),
            Err(Failure::Refused(_))
        ));
    }

    #[test]
    fn records_decide_between_masters_and_a_newer_record_fences() {
        // a (eu) came back as a master after b (us) was promoted at generation 5: failing back
        // to eu makes a a replica of b first (its stale writes are discarded), then promotes it.
        let observed = vec![
            Some(master(900, "r1", "", Some(2))),
            Some(master(100, "r2", "r1", Some(5))),
            None,
        ];
        assert_eq!(
            plan(&order(6, "eu"), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: Some(1),
                candidate: 0,
                rejoin: true
            }
        );
        assert!(matches!(
            plan(&order(4, "us"), &members(), &observed),
            Err(Failure::Fenced(_))
        ));
    }

    #[test]
    fn loss_is_refused_unless_forced() {
        assert!(
            matches!(judge_loss(10, false, "b", "the old master", 100), Err(Failure::Refused(m)) if m.contains("10 byte(s)"))
        );
        assert!(judge_loss(10, true, "b", "c", 100).expect("forced").is_some());
        assert_eq!(judge_loss(0, false, "b", "c", 100), Ok(None));
    }

    #[test]
    fn with_the_master_gone_a_replica_of_its_stream_ahead_of_the_candidate_is_what_exists() {
        let mut other_stream = replica(900);
        other_stream.replid = "r9".into();
        // c (another region) received more of a's stream than b; d follows another stream.
        let observed = vec![None, Some(replica(400)), Some(replica(450)), Some(other_stream)];
        assert_eq!(furthest_replica(&observed, 1), Some((2, 450, "r1".to_string())));
        assert_eq!(furthest_replica(&observed, 2), None, "the candidate is the furthest");
        let even = vec![None, Some(replica(400)), Some(replica(400))];
        assert_eq!(furthest_replica(&even, 1), None);
        // A master (a stale one come back) is not a replica of the stream.
        let observed = vec![Some(master(999, "r1", "", None)), Some(replica(400)), None];
        assert_eq!(furthest_replica(&observed, 1), None);
    }

    #[test]
    fn settings_name_every_problem() {
        assert_refused(
            "servers = { eu = [\"a\"], us = [\"b:0\"] }\nusername = \"\"\npromote_lag_max_ms = 700000\n",
            |settings: &Settings, checker| settings.check("cache", checker),
            &["port '0'", "username ''", "promote_lag_max_ms = 700000"],
        );
    }
}
