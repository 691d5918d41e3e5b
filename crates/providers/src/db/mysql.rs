//! `mysql_promote`: moves the primary of a MariaDB 10.x or MySQL 8 GTID replication topology
//! into the order's active region (what orchestrator does for one cluster).
//!
//! One run: survey every server; [`plan`] (pure) names the last primary and the candidate;
//! fence the old primary if it is reachable (`read_only` — `super_read_only` on MySQL —, kill
//! client connections, read its final GTID position); let the candidate apply everything known
//! to exist, waiting at most `promote_lag_max_ms` (`MASTER_GTID_WAIT` /
//! `WAIT_FOR_EXECUTED_GTID_SET`); stop its I/O thread and let its SQL thread apply the rest of
//! its relay log — what it received after the survey too, which `RESET SLAVE ALL` would discard
//! — for what is left of `promote_lag_max_ms`, at least [`RELAY_DRAIN_MS`]; refuse if it still
//! lacks transactions, naming them (and those its relay log holds), unless the order carries
//! `force_data_loss` (and then give the old primary its writes back and the candidate its I/O
//! thread, since the runbook stops); stop and reset replication on the candidate, turn
//! `read_only` off, write the promotion record; then point every other server at it — a server
//! that has transactions the new primary never saw (errant GTIDs) is left fenced and named
//! instead.
//!
//! Requirements: GTIDs on (`gtid_mode=ON` on MySQL), `log_bin` and `log_slave_updates` on every
//! server (so each one's GTID state covers what it applied), `gtid_strict_mode=ON` recommended
//! on MariaDB; the step's user needs SUPER (or on MariaDB 10.11 READ_ONLY ADMIN, REPLICATION
//! SLAVE ADMIN, CONNECTION ADMIN, BINLOG MONITOR, SLAVE MONITOR) and CREATE, SELECT, INSERT,
//! UPDATE on `switchyard.*`.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::binlog::ErrantScan;
use super::gtid::{GtidSet, MariaState, Missing, Origin, Position};
use super::{Member, Notes, QUERY_TIMEOUT_MS};
use crate::{Checker, Failure, Order, Outcome};

/// Default MySQL port.
pub const MYSQL_PORT_DEFAULT: u16 = 3306;
/// Client connections killed at most when fencing (the rest are counted, not killed).
pub const KILLED_CONNECTIONS_MAX: usize = 10_000;
/// The promotion record's schema and table.
pub const RECORD_TABLE: &str = "switchyard.promotion";
/// Longest user name accepted (MySQL allows 32 characters).
pub const USER_CHARS_MAX: usize = 80;
/// Reading errant transactions' tables from a binlog: newest files read at most, events read
/// at most, events per `SHOW BINLOG EVENTS` page, and the whole scan's time bound.
pub const BINLOG_FILES_SCANNED_MAX: usize = 8;
pub const BINLOG_EVENTS_SCANNED_MAX: u64 = 200_000;
pub const BINLOG_PAGE_EVENTS: u64 = 5_000;
pub const BINLOG_SCAN_MS: u64 = 5_000;
/// How long a repointed server's I/O thread gets to connect to its new source, and how often
/// it is looked at meanwhile.
pub const LINK_WAIT_MS: u64 = 5_000;
pub const LINK_POLL_MS: u64 = 50;
/// Once the candidate caught up and its I/O thread is stopped, the least time its SQL thread
/// gets to apply the rest of its relay log (it gets what is left of `promote_lag_max_ms` when
/// that is longer). Usually instant — only what arrived after the survey is left — so it is
/// part of [`super::STEP_OVERHEAD_MS`].
pub const RELAY_DRAIN_MS: u64 = 2_000;
/// How a loss is worded ([`judge_loss`]).
const LOSS: super::LossWords = super::LossWords::new("they are lost", "them", "wait for it to catch up");
/// What happens to a server the first survey of a run cannot reach.
const UNREACHABLE: &str = "not fenced at the database by this step — its region's guard fences it (switchyard guard), or fence it at the load balancer; it stays fenced (its promotion record is older) and rejoins only without errant transactions";

promote_settings! {
    replicating
    /// The `[runbook.mysql_promote]` table: the replication account is what `CHANGE MASTER TO`
    /// names.
    pub struct Settings {}
}

impl Settings {
    /// Checks the settings (every problem reported) and builds the actuator.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<MysqlPromote> {
        let (what, mut shared) = self.check_shared(("mysql_promote", step), MYSQL_PORT_DEFAULT, checker);
        for (name, user) in [("user", &self.user), ("replication_user", &self.replication_user)] {
            if user.get_ref().is_empty() || user.get_ref().chars().count() > USER_CHARS_MAX {
                checker.error(
                    user.span(),
                    format!(
                        "{what}: {name} '{}' is empty or longer than {USER_CHARS_MAX} characters",
                        user.get_ref()
                    ),
                    "name an existing account".into(),
                );
                shared.ok = false;
            }
        }
        let (members, tls, accounts) = self.check_accounts(&what, shared, checker)?;
        Some(MysqlPromote {
            inner: Arc::new(Inner {
                members,
                accounts,
                promote_lag_max_ms: *self.promote_lag_max_ms.get_ref(),
                tls,
            }),
        })
    }
}

/// The ready `mysql_promote` step.
#[derive(Clone, Debug)]
pub struct MysqlPromote {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    accounts: super::Accounts,
    promote_lag_max_ms: u64,
    tls: Option<super::tls::Tls>,
}

// Beyond the catch-up, the relay-log drain after it ([`RELAY_DRAIN_MS`] at most past it): a
// run cut between fencing and promoting would leave the old primary read-only with nobody
// writable.
promote_step!(MysqlPromote, survey by inspect, waits |_inner| RELAY_DRAIN_MS);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Mariadb,
    Mysql,
}

/// A replica's replication, from `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    /// `host:port` it replicates from.
    pub source: String,
    /// The I/O thread runs (connected, or connecting and retrying).
    pub io_running: bool,
    /// The I/O thread is connected to the source (`Yes`, not `Connecting`).
    pub io_connected: bool,
    /// The I/O thread's last error, if any (`Last_IO_Error`).
    pub io_error: Option<String>,
    pub sql_running: bool,
    /// The applier's (SQL thread's) last error, if any: the replica may have diverged.
    pub error: Option<String>,
    /// What it received (executed included).
    pub received: Position,
    pub seconds_behind: Option<u64>,
    /// Its TLS to the source, when `Master_SSL_Allowed` / `Source_SSL_Allowed` says Yes.
    pub tls: Option<ReplicationTls>,
}

/// A replica's TLS options towards its source (`MASTER_SSL_*` / `SOURCE_SSL_*`, paths on its
/// own host), carried to the servers the step points at a new source: a fresh `CHANGE MASTER
/// TO` (an old primary, or a server whose replication was reset when it was promoted) would
/// otherwise replicate in plain text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationTls {
    pub ca_file: String,
    pub ca_path: String,
    pub cert: String,
    pub key: String,
    pub verify_server_cert: bool,
}

/// The replication TLS of the topology: the first replica (in the order of `servers`) that
/// replicates over TLS, if any. Pure.
pub fn topology_tls(observed: &[Option<Observed>]) -> Option<ReplicationTls> {
    observed
        .iter()
        .flatten()
        .find_map(|o| o.replication.as_ref().and_then(|r| r.tls.clone()))
}

/// What one reachable server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub flavor: Flavor,
    pub version: String,
    pub read_only: bool,
    /// `log_bin` and `log_slave_updates` (MariaDB) / `gtid_mode` (MySQL) as required.
    pub gtid_ready: Result<(), String>,
    pub replication: Option<Replication>,
    pub executed: Position,
    /// The promotion record's generation, if the table exists.
    pub record: Option<u64>,
    /// What its own writes' GTIDs carry (`server_id` / `server_uuid`); `None` if it did not say.
    pub origin: Option<Origin>,
}

impl Observed {
    fn writable_primary(&self) -> bool {
        self.replication.is_none() && !self.read_only
    }

    /// The transactions written on this server itself that `reference` lacks. A replica of the
    /// primary may be ahead of the survey's reading of the primary, but never by writes of its
    /// own: those came from a user who writes past `read_only` (READ_ONLY ADMIN or SUPER, as the
    /// step's own user has), and the primary never saw them.
    fn own_errant(&self, reference: &Position) -> Missing {
        self.own_errant_beside(reference).0
    }

    /// [`Observed::own_errant`], and what is known to exist beside it: `reference` and what this
    /// server replicated (the primary's writes it read after the survey read the primary's
    /// position), which a binlog scan for its own writes must not count.
    fn own_errant_beside(&self, reference: &Position) -> (Missing, Position) {
        let mut known = reference.clone();
        match &self.origin {
            Some(origin) => {
                known.merge(&self.executed.written_elsewhere(origin));
                (self.executed.written_by(origin).own_missing_from(&known), known)
            }
            None => (Missing::default(), known),
        }
    }

    /// Everything it has or will apply.
    fn received(&self) -> Position {
        let mut position = self.executed.clone();
        if let Some(replication) = &self.replication {
            position.merge(&replication.received);
        }
        position
    }
}

/// What a run does, decided from the survey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The primary is already in the order's region (an earlier run of this or an older
    /// generation promoted it): nothing is promoted again.
    Done { primary: usize },
    Promote {
        /// The last primary (reachable), fenced before the candidate takes over.
        old: Option<usize>,
        candidate: usize,
        /// The candidate replicates from nobody (a fenced ex-primary): it rejoins `old` first.
        rejoin: bool,
    },
}

/// Decides the run from the survey (`observed[i]` is `None` for an unreachable member). Pure.
pub fn plan(order: &Order, members: &[Member], observed: &[Option<Observed>]) -> Result<Plan, Failure> {
    let reachable = super::reachable(observed);
    if reachable.is_empty() {
        return Err(Failure::Retryable("no server answered".into()));
    }
    if let Some((i, o)) = reachable.iter().find(|(_, o)| o.flavor != reachable[0].1.flavor) {
        return Err(Failure::Refused(format!(
            "{} runs {} while {} runs {}: one step promotes one flavour",
            members[*i].address, o.version, members[reachable[0].0].address, reachable[0].1.version
        )));
    }
    for (i, o) in &reachable {
        if let Err(why) = &o.gtid_ready {
            return Err(Failure::Refused(format!("{}: {why}", members[*i].address)));
        }
    }
    super::refuse_newer_record(order, members, &reachable, |o| o.record)?;
    let old = last_primary(order, members, &reachable)?;
    if let Some(old) = old
        && members[old].region == order.to
    {
        return Ok(match observed[old].as_ref().map(|o| o.read_only) {
            Some(false) => Plan::Done { primary: old },
            // Reset but not yet writable (a run stopped between the two): finish it.
            _ => Plan::Promote {
                old: None,
                candidate: old,
                rejoin: false,
            },
        });
    }
    let reference = reference(old, &reachable);
    let mut refusals = Vec::new();
    let mut best: Option<((u64, u64, usize), usize, bool)> = None;
    for (i, o) in reachable.iter().filter(|(i, _)| members[*i].region == order.to) {
        let rejoin = o.replication.is_none();
        if let Some(replication) = &o.replication
            && let Some(error) = &replication.error
        {
            refusals.push(format!("{} has a replication error: {error}", members[*i].address));
            continue;
        }
        // A replica of another source too: one that kept receiving from a primary cut off from
        // the step (the promote window) holds transactions the last primary never saw. (A
        // replica of the last primary may be ahead of the survey's reading of it: the servers
        // are read one after the other while it still takes writes.)
        let errant = o.executed.missing_from(&reference);
        let why = if rejoin { "cannot rejoin" } else { "cannot be promoted" };
        let primary = old.map(|o| format!(" {}", members[o].address)).unwrap_or_default();
        if !errant.is_empty() && !follows(o, old, members) {
            refusals.push(format!(
                "{} {why}: it has {} errant transaction(s) the primary{primary} never saw: {errant}",
                members[*i].address, errant.count,
            ));
            continue;
        }
        // ...but a replica of the last primary may not hold writes of its own.
        let own = o.own_errant(&reference);
        if !own.is_empty() && follows(o, old, members) {
            refusals.push(format!(
                "{} {why}: it has {} errant transaction(s) written on it directly ({}; a user with \
                 READ_ONLY ADMIN or SUPER writes past read_only), which the primary{primary} never saw: {own}",
                members[*i].address,
                own.count,
                o.origin.as_ref().map(ToString::to_string).unwrap_or_default(),
            ));
            continue;
        }
        if rejoin && old.is_none() {
            refusals.push(format!(
                "{} replicates from nobody and no primary answered to rejoin it to",
                members[*i].address
            ));
            continue;
        }
        let received = o.received();
        let key = (
            reference.missing_from(&received).count,
            received.missing_from(&o.executed).count,
            *i,
        );
        if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
            best = Some((key, *i, rejoin));
        }
    }
    match best {
        Some((_, candidate, rejoin)) => Ok(Plan::Promote { old, candidate, rejoin }),
        None => Err(super::no_candidate(order, members, observed, &refusals)),
    }
}

/// The last primary among the reachable servers that replicate from nobody: the highest
/// promotion record, a writable one before a fenced one; `None` if every reachable server is a
/// replica (the primary is gone).
/// Everything known to exist: the last primary's transactions, or else what any replica
/// received. `reachable` is not empty.
fn reference(old: Option<usize>, reachable: &[(usize, &Observed)]) -> Position {
    match old.and_then(|old| reachable.iter().find(|(i, _)| *i == old)) {
        Some((_, o)) => o.executed.clone(),
        None => {
            let mut all = reachable[0].1.executed.empty_like();
            for (_, o) in reachable.iter().filter(|(_, o)| o.replication.is_some()) {
                all.merge(&o.received());
            }
            all
        }
    }
}

/// Whether `o` replicates from the last primary `old`.
fn follows(o: &Observed, old: Option<usize>, members: &[Member]) -> bool {
    match (&o.replication, old) {
        (Some(replication), Some(old)) => replication.source == members[old].address,
        _ => false,
    }
}

/// The servers of the order's region that [`plan`] refuses as candidates because they hold
/// transactions the reference never saw: each with that reference and how many. Pure.
pub fn errant_rejoiners(
    order: &Order,
    members: &[Member],
    observed: &[Option<Observed>],
) -> Vec<(usize, Position, u64)> {
    let reachable = super::reachable(observed);
    if reachable.is_empty() {
        return Vec::new();
    }
    let Ok(old) = last_primary(order, members, &reachable) else {
        return Vec::new();
    };
    let reference = reference(old, &reachable);
    reachable
        .iter()
        .filter(|(i, _)| members[*i].region == order.to && Some(*i) != old)
        .filter_map(|(i, o)| {
            let (errant, known) = if follows(o, old, members) {
                // The binlog scan then looks only for its own writes.
                o.own_errant_beside(&reference)
            } else {
                (o.executed.missing_from(&reference), reference.clone())
            };
            (!errant.is_empty()).then_some((*i, known, errant.count))
        })
        .collect()
}

fn last_primary(order: &Order, members: &[Member], reachable: &[(usize, &Observed)]) -> Result<Option<usize>, Failure> {
    let roots: Vec<&(usize, &Observed)> = reachable.iter().filter(|(_, o)| o.replication.is_none()).collect();
    let Some(top) = roots.iter().map(|(_, o)| o.record.unwrap_or(0)).max() else {
        return Ok(None);
    };
    let tied: Vec<&&(usize, &Observed)> = roots.iter().filter(|(_, o)| o.record.unwrap_or(0) == top).collect();
    let writable: Vec<usize> = tied
        .iter()
        .filter(|(_, o)| o.writable_primary())
        .map(|(i, _)| *i)
        .collect();
    match writable.as_slice() {
        [one] => return Ok(Some(*one)),
        [a, b, ..] => {
            return Err(Failure::Refused(format!(
                "{} and {} are both writable primaries with the same promotion record ({top}): set read_only=ON on the stale one, then run again",
                members[*a].address, members[*b].address
            )));
        }
        [] => {}
    }
    // Fenced roots only: a run stopped between fencing and promoting. Prefer one in the order's
    // region (the promotion in progress), then one that has everything the others have.
    let pick = tied.iter().find(|(i, _)| members[*i].region == order.to).or_else(|| {
        tied.iter().find(|(_, o)| {
            tied.iter()
                .all(|(_, other)| other.executed.missing_from(&o.executed).is_empty())
        })
    });
    match pick {
        Some((i, _)) => Ok(Some(*i)),
        None => Err(Failure::Refused(format!(
            "{} are read-only, replicate from nobody and have diverged: make one a replica of the other, then run again",
            tied.iter()
                .map(|(i, _)| members[*i].address.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// Whether to promote a candidate that still lacks `missing` after the wait, `unapplied` of
/// them received into its relay log (its I/O thread stopped) but not applied within
/// `drain_ms`: `RESET SLAVE ALL` would discard those.
pub fn judge_loss(
    missing: &Missing,
    unapplied: &Missing,
    force: bool,
    candidate: &str,
    (lag_max_ms, drain_ms): (u64, u64),
) -> Result<Option<String>, Failure> {
    let what = (!missing.is_empty()).then(|| {
        let mut what = format!(
            "{candidate} still lacks {} transaction(s) after waiting promote_lag_max_ms = {lag_max_ms}: {missing}",
            missing.count
        );
        if !unapplied.is_empty() {
            what.push_str(&format!(
                " — {} of them in its relay log, received but not applied within {drain_ms} ms after its I/O thread was stopped: {unapplied} (resetting its replication would discard them)",
                unapplied.count
            ));
        }
        what
    });
    super::judge_loss(what, force, LOSS)
}

impl MysqlPromote {
    pub async fn run(&self, order: &Order) -> Outcome {
        let inner = &self.inner;
        let (observed, mut notes) = super::first_survey(&inner.members, survey(inner).await, UNREACHABLE);
        let planned = match plan(order, &inner.members, &observed) {
            Err(Failure::Refused(message)) => {
                let detail = self.errant_detail(order, &observed).await;
                return Err(Failure::Refused(format!("{message}{detail}")));
            }
            other => other?,
        };
        let primary = match planned {
            Plan::Done { primary } => {
                let record = observed[primary].as_ref().and_then(|o| o.record).unwrap_or(0);
                notes.push(super::already_note(
                    &inner.members[primary].address,
                    "primary",
                    record,
                    order.generation,
                ));
                let mut session = inner.connect(primary).await?;
                if record < order.generation {
                    session.write_record(order, &inner.members[primary]).await?;
                }
                primary
            }
            Plan::Promote { old, candidate, rejoin } => {
                self.promote(order, &observed, old, candidate, rejoin, &mut notes)
                    .await?;
                candidate
            }
        };
        // Read before the promotion resets the candidate's replication.
        let tls = topology_tls(&observed);
        let reached: Vec<bool> = observed.iter().map(Option::is_some).collect();
        self.rejoin_others(primary, &reached, tls, &mut notes).await?;
        Ok(notes.join())
    }

    /// For a refusal: what the errant transactions of each server of the order's region that
    /// cannot rejoin changed (read from its binlog), as `; a:3306's errant transactions: ...`.
    async fn errant_detail(&self, order: &Order, observed: &[Option<Observed>]) -> String {
        let inner = &self.inner;
        let mut detail = String::new();
        for (i, reference, count) in errant_rejoiners(order, &inner.members, observed) {
            let tables = match inner.connect(i).await {
                Ok(mut session) => session.errant_tables(&reference, count).await,
                Err(e) => format!("their tables are unknown: {e}"),
            };
            detail.push_str(&format!(
                "; {}'s errant transactions: {tables}",
                inner.members[i].address
            ));
        }
        detail
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
        let inner = &self.inner;
        let member = &inner.members[candidate];
        let lag_max_ms = inner.promote_lag_max_ms;
        let mut fenced_now = None;
        let target = match old {
            Some(old) => {
                let mut session = inner.connect(old).await?;
                let was_writable = observed[old].as_ref().is_some_and(|o| !o.read_only);
                let (final_position, killed) = session.fence().await?;
                notes.push(format!(
                    "fenced old primary {} (read_only, {killed} client connection(s) killed, final GTID position {final_position})",
                    inner.members[old].address
                ));
                if was_writable {
                    fenced_now = Some(old);
                }
                final_position
            }
            None => {
                let mut all = observed
                    .iter()
                    .flatten()
                    .next()
                    .map(|o| o.executed.empty_like())
                    .expect("plan found a reachable server");
                // As in `plan`: what the replicas received, and the candidate's own.
                for (i, o) in observed.iter().enumerate() {
                    if let Some(o) = o
                        && (o.replication.is_some() || i == candidate)
                    {
                        all.merge(&o.received());
                    }
                }
                all
            }
        };
        let mut session = inner.connect(candidate).await?;
        if rejoin && let Some(old) = old {
            session
                .replicate_from(&inner.members[old], inner, topology_tls(observed).as_ref())
                .await?;
            notes.push(format!(
                "{} rejoined {} to catch up",
                member.address, inner.members[old].address
            ));
        }
        session.ensure_applier().await?;
        let started = std::time::Instant::now();
        // The I/O thread runs meanwhile: it fetches what the candidate lacks from a reachable
        // old primary.
        let applied = session.wait_for(&target, lag_max_ms).await?;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let drain_ms = lag_max_ms.saturating_sub(elapsed_ms).max(RELAY_DRAIN_MS);
        let (applied, full, unapplied, stopped) = session.drain_relay_log(&target, applied, drain_ms).await?;
        let missing = full.missing_from(&applied);
        let judged = judge_loss(
            &missing,
            &unapplied,
            order.force_data_loss,
            &member.address,
            (lag_max_ms, drain_ms),
        );
        if judged.is_err()
            && stopped
            && let Err(e) = session.resume_receiving().await
        {
            notes.push(format!(
                "could not start the I/O thread of {} again: {e}",
                member.address
            ));
        }
        let unfence = fenced_now.map(|old| {
            (inner.members[old].address.as_str(), async move {
                inner.connect(old).await?.unfence().await
            })
        });
        let loss = super::loss_or_unfence(judged, unfence, notes).await?;
        session.make_primary(order, member).await?;
        let promoted = format!(
            "promoted {} in {} at GTID position {applied}",
            member.address, member.region
        );
        // "None was primary" only when every server answered and none replicates: a replica's
        // source outside the list (or one not answering) may be a primary still taking writes.
        let none_was = observed
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| o.replication.is_none()));
        super::note_promoted(notes, promoted, loss, super::OldPrimary::of(old, none_was), "replica");
        Ok(())
    }

    /// Points every other server the first survey `reached` at `primary`, fencing writable
    /// strays; a server with errant transactions is left fenced and named.
    async fn rejoin_others(
        &self,
        primary: usize,
        reached: &[bool],
        tls: Option<ReplicationTls>,
        notes: &mut Notes,
    ) -> Result<(), Failure> {
        let inner = &self.inner;
        let observed = survey_reached(inner, reached).await;
        let now: Vec<Option<Observed>> = observed.iter().map(|o| o.as_ref().ok().cloned()).collect();
        let tls = tls.or_else(|| topology_tls(&now));
        let primary_state = super::new_primary_state(&inner.members, &observed, primary)?;
        let primary_member = &inner.members[primary];
        for (i, o) in observed.iter().enumerate() {
            let Ok(o) = o else { continue };
            if i == primary {
                continue;
            }
            let member = &inner.members[i];
            if let Some(replication) = &o.replication
                && replication.source == primary_member.address
                && replication.io_running
                && replication.sql_running
            {
                // Set up already (a re-run): still said when its I/O thread does not connect.
                if !replication.io_connected {
                    let why = replication
                        .io_error
                        .as_deref()
                        .map(|e| format!(": {}", super::hide_secrets(e, &inner.secret_forms())))
                        .unwrap_or_default();
                    notes.push(format!(
                        "{} replicates from {} but its I/O thread is not connected{why}",
                        member.address, primary_member.address
                    ));
                }
                continue;
            }
            let mut session = inner.connect(i).await?;
            // Detach first, then judge: a server still receiving from a primary cut off from
            // the step would otherwise gain transactions the new primary never saw between
            // this check and the repoint (the promote window), and `replicate_from` would take
            // them as its starting position.
            let executed = if o.replication.is_some() {
                session.stop_replication().await?;
                session.executed().await?
            } else {
                o.executed.clone()
            };
            let primary_executed = match inner.connect(primary).await {
                Ok(mut p) => p.executed().await?,
                Err(_) => primary_state.executed.clone(),
            };
            let errant = executed.missing_from(&primary_executed);
            if o.writable_primary() || !errant.is_empty() {
                let (position, killed) = session.fence().await?;
                if o.writable_primary() {
                    notes.push(format!(
                        "fenced stray primary {} ({killed} connection(s) killed, final GTID position {position})",
                        member.address
                    ));
                }
            }
            if !errant.is_empty() {
                let tables = session.errant_tables(&primary_executed, errant.count).await;
                let detached = if o.replication.is_some() { " and detached" } else { "" };
                notes.push(format!(
                    "{} left fenced{detached}, not rejoined: {} errant transaction(s) {} never saw: {errant}; {tables}",
                    member.address, errant.count, primary_member.address
                ));
                continue;
            }
            let over_tls = session.replicate_from(primary_member, inner, tls.as_ref()).await?;
            // Pointed is not connected: a replication account the new primary refuses (its
            // password, its REQUIRE SSL) leaves the I/O thread retrying for ever.
            let mut note = match session.link_problem().await? {
                None => super::now_replicates(member, primary_member),
                Some(problem) => format!(
                    "{} pointed at {}, but does not replicate: {problem}",
                    member.address, primary_member.address
                ),
            };
            if over_tls {
                note.push_str(" (over TLS, with the other replicas' MASTER_SSL options)");
            }
            notes.push(note);
        }
        Ok(())
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
        let read_only = is_on(session.value("SELECT @@GLOBAL.read_only").await?.as_deref());
        let executed = session.executed().await?;
        let follows = session.replication(&executed).await?.map(|r| r.source);
        Ok(super::guard::View {
            writable: !read_only,
            follows,
            record: session.record().await?,
        })
    }

    async fn fence(&self, session: &mut Session, _index: usize) -> Result<super::guard::GuardOutcome, Failure> {
        let (_, ended) = session.fence().await?;
        Ok(super::guard::GuardOutcome::Fenced { ended })
    }

    async fn unfence(&self, session: &mut Session, _index: usize) -> Result<(), Failure> {
        session.unfence().await
    }
}

impl Inner {
    async fn connect(&self, index: usize) -> Result<Session, Failure> {
        let member = &self.members[index];
        let options = mysql_async::OptsBuilder::default()
            .ip_or_hostname(member.host.clone())
            .tcp_port(member.port)
            .user(Some(self.accounts.user.clone()))
            .pass(self.accounts.password.as_ref().map(|p| p.expose().to_string()))
            .prefer_socket(false)
            .ssl_opts(self.tls.as_ref().map(super::tls::Tls::mysql));
        let conn = super::login(&member.address, mysql_async::Conn::new(options), |e| e.to_string()).await?;
        let mut session = Session {
            conn,
            address: member.address.clone(),
            flavor: Flavor::Mariadb,
            secrets: self.secret_forms(),
        };
        // Our own statements quote strings one way, whatever the server's default mode.
        session.run("SET SESSION sql_mode = ''").await?;
        let version = session.value("SELECT @@GLOBAL.version").await?.unwrap_or_default();
        if !version.contains("MariaDB") {
            session.flavor = Flavor::Mysql;
        }
        Ok(session)
    }

    /// The passwords as configured and as [`quote`] writes them into a statement: hidden in
    /// failure messages ([`super::hide_secrets`]).
    fn secret_forms(&self) -> Vec<String> {
        [&self.accounts.password, &self.accounts.replication_password]
            .into_iter()
            .flatten()
            .flat_map(|p| {
                let quoted = quote(p.expose());
                [p.expose().to_string(), quoted[1..quoted.len() - 1].to_string()]
            })
            .collect()
    }
}

/// One logged-in connection to one server.
struct Session {
    conn: mysql_async::Conn,
    address: String,
    flavor: Flavor,
    /// What failure messages never show ([`Inner::secret_forms`]).
    secrets: Vec<String>,
}

/// The message of `statement` failing on `address` with `error` (the server's words, which may
/// quote the statement), with the `secrets` hidden.
fn statement_failure(address: &str, statement: &str, error: &str, secrets: &[String]) -> String {
    super::hide_secrets(&format!("{address}: {statement}: {error}"), secrets)
}

/// The statement pointing a server at `source` by GTID, with the replication account, and
/// `tls`'s options when given.
fn change_source(flavor: Flavor, source: &Member, user: &str, password: &str, tls: Option<&ReplicationTls>) -> String {
    let (prefix, statement) = match flavor {
        Flavor::Mariadb => (
            "MASTER",
            format!(
                "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos",
                quote(&source.host),
                source.port,
                quote(user),
                quote(password)
            ),
        ),
        Flavor::Mysql => (
            "SOURCE",
            format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {}, SOURCE_PORT = {}, SOURCE_USER = {}, SOURCE_PASSWORD = {}, SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1",
                quote(&source.host),
                source.port,
                quote(user),
                quote(password)
            ),
        ),
    };
    match tls {
        None => statement,
        Some(tls) => format!(
            "{statement}, {prefix}_SSL = 1, {prefix}_SSL_CA = {}, {prefix}_SSL_CAPATH = {}, {prefix}_SSL_CERT = {}, \
             {prefix}_SSL_KEY = {}, {prefix}_SSL_VERIFY_SERVER_CERT = {}",
            quote(&tls.ca_file),
            quote(&tls.ca_path),
            quote(&tls.cert),
            quote(&tls.key),
            u8::from(tls.verify_server_cert)
        ),
    }
}

/// A string literal for our own statements (`sql_mode` is '' in our sessions).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn cell(row: &mysql_async::Row, name: &str) -> Option<String> {
    match row.get_opt::<mysql_async::Value, &str>(name)? {
        Ok(mysql_async::Value::Bytes(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(mysql_async::Value::Int(n)) => Some(n.to_string()),
        Ok(mysql_async::Value::UInt(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn is_on(value: Option<&str>) -> bool {
    matches!(value.map(str::to_ascii_uppercase).as_deref(), Some("1" | "ON" | "YES"))
}

impl Session {
    fn failure(&self, statement: &str, error: mysql_async::Error) -> Failure {
        Failure::Retryable(statement_failure(
            &self.address,
            statement,
            &error.to_string(),
            &self.secrets,
        ))
    }

    async fn rows(&mut self, statement: &str) -> Result<Vec<mysql_async::Row>, Failure> {
        self.rows_within(statement, QUERY_TIMEOUT_MS).await
    }

    async fn rows_within(&mut self, statement: &str, timeout_ms: u64) -> Result<Vec<mysql_async::Row>, Failure> {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.conn.query(statement)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => Err(self.failure(statement, error)),
            Err(_) => Err(Failure::Retryable(statement_failure(
                &self.address,
                statement,
                &format!("no answer within {timeout_ms} ms"),
                &self.secrets,
            ))),
        }
    }

    async fn run(&mut self, statement: &str) -> Result<(), Failure> {
        self.rows(statement).await.map(|_| ())
    }

    async fn value(&mut self, statement: &str) -> Result<Option<String>, Failure> {
        let rows = self.rows(statement).await?;
        Ok(rows.first().and_then(|row| match row.as_ref(0) {
            Some(mysql_async::Value::Bytes(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Some(mysql_async::Value::Int(n)) => Some(n.to_string()),
            Some(mysql_async::Value::UInt(n)) => Some(n.to_string()),
            _ => None,
        }))
    }

    fn position(&self, text: &str) -> Result<Position, Failure> {
        let parsed = match self.flavor {
            Flavor::Mariadb => MariaState::parse(text).map(Position::Mariadb),
            Flavor::Mysql => GtidSet::parse(text).map(Position::Mysql),
        };
        parsed.map_err(|e| Failure::Retryable(format!("{}: {e}", self.address)))
    }

    /// What this server's own writes' GTIDs carry: `server_id` (MariaDB) or `server_uuid`
    /// (MySQL); `None` if the value is missing or not one.
    async fn origin(&mut self) -> Result<Option<Origin>, Failure> {
        Ok(match self.flavor {
            Flavor::Mariadb => self
                .value("SELECT @@GLOBAL.server_id")
                .await?
                .and_then(|id| id.trim().parse().ok())
                .map(Origin::ServerId),
            Flavor::Mysql => self
                .value("SELECT @@GLOBAL.server_uuid")
                .await?
                .map(|uuid| uuid.trim().to_ascii_lowercase())
                .filter(|uuid| uuid.len() == 36)
                .map(Origin::ServerUuid),
        })
    }

    async fn executed(&mut self) -> Result<Position, Failure> {
        match self.flavor {
            Flavor::Mariadb => {
                let rows = self
                    .rows("SELECT @@GLOBAL.gtid_binlog_state AS state, @@GLOBAL.gtid_slave_pos AS slave")
                    .await?;
                let row = rows.first();
                let mut position = self.position(&row.and_then(|r| cell(r, "state")).unwrap_or_default())?;
                position.merge(&self.position(&row.and_then(|r| cell(r, "slave")).unwrap_or_default())?);
                Ok(position)
            }
            Flavor::Mysql => {
                let text = self.value("SELECT @@GLOBAL.gtid_executed").await?.unwrap_or_default();
                self.position(&text)
            }
        }
    }

    /// Reads the newest binlog files (bounded in files, events and time) for what the
    /// transactions `reference` lacks changed; the summary, or why it is unknown. Needs
    /// `SHOW BINLOG EVENTS` (MariaDB: BINLOG MONITOR; MySQL: REPLICATION SLAVE).
    async fn errant_tables(&mut self, reference: &Position, errant_count: u64) -> String {
        let until = std::time::Instant::now() + Duration::from_millis(BINLOG_SCAN_MS);
        let mut scan = ErrantScan::new(reference);
        let files: Vec<String> = match self.rows("SHOW BINARY LOGS").await {
            Ok(rows) => rows.iter().filter_map(|r| cell(r, "Log_name")).collect(),
            Err(e) => return format!("their tables are unknown: {e}"),
        };
        let mut complete = true;
        'files: for (read, file) in files.iter().rev().enumerate() {
            if scan.found >= errant_count {
                break;
            }
            if read >= BINLOG_FILES_SCANNED_MAX {
                complete = false;
                break;
            }
            scan.next_file();
            let mut offset = 0u64;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || scan.events >= BINLOG_EVENTS_SCANNED_MAX {
                    complete = false;
                    break 'files;
                }
                let statement = format!(
                    "SHOW BINLOG EVENTS IN {} LIMIT {offset}, {BINLOG_PAGE_EVENTS}",
                    quote(file)
                );
                let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                let rows = match self.rows_within(&statement, left_ms.min(QUERY_TIMEOUT_MS)).await {
                    Ok(rows) => rows,
                    Err(e) => return format!("{} (then: {e})", scan.summary(errant_count, false)),
                };
                for row in &rows {
                    scan.feed(
                        &cell(row, "Event_type").unwrap_or_default(),
                        &cell(row, "Info").unwrap_or_default(),
                    );
                }
                if (rows.len() as u64) < BINLOG_PAGE_EVENTS {
                    break;
                }
                offset += BINLOG_PAGE_EVENTS;
            }
        }
        scan.summary(errant_count, complete)
    }

    async fn inspect(&mut self) -> Result<Observed, Failure> {
        let version = self.value("SELECT @@GLOBAL.version").await?.unwrap_or_default();
        let read_only = is_on(self.value("SELECT @@GLOBAL.read_only").await?.as_deref());
        let gtid_ready = match self.flavor {
            Flavor::Mariadb => {
                let rows = self
                    .rows("SELECT @@GLOBAL.log_bin AS log_bin, @@GLOBAL.log_slave_updates AS updates")
                    .await?;
                let row = rows.first();
                if !is_on(row.and_then(|r| cell(r, "log_bin")).as_deref()) {
                    Err("log_bin is OFF: start the server with log_bin and log_slave_updates".to_string())
                } else if !is_on(row.and_then(|r| cell(r, "updates")).as_deref()) {
                    Err("log_slave_updates is OFF: start the server with log_slave_updates".to_string())
                } else {
                    Ok(())
                }
            }
            Flavor::Mysql => {
                let mode = self.value("SELECT @@GLOBAL.gtid_mode").await?.unwrap_or_default();
                if mode.eq_ignore_ascii_case("ON") {
                    Ok(())
                } else {
                    Err(format!(
                        "gtid_mode is {mode}: set gtid_mode=ON and enforce_gtid_consistency=ON"
                    ))
                }
            }
        };
        let executed = self.executed().await?;
        let replication = self.replication(&executed).await?;
        let record = self.record().await?;
        let origin = self.origin().await?;
        Ok(Observed {
            flavor: self.flavor,
            version,
            read_only,
            gtid_ready,
            replication,
            executed,
            record,
            origin,
        })
    }

    async fn replication(&mut self, executed: &Position) -> Result<Option<Replication>, Failure> {
        let statement = match self.flavor {
            Flavor::Mariadb => "SHOW SLAVE STATUS",
            Flavor::Mysql => "SHOW REPLICA STATUS",
        };
        let rows = self.rows(statement).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let pick = |names: [&str; 2]| cell(row, names[0]).or_else(|| cell(row, names[1]));
        let host = pick(["Master_Host", "Source_Host"]).unwrap_or_default();
        if host.is_empty() {
            return Ok(None);
        }
        let port = pick(["Master_Port", "Source_Port"]).unwrap_or_default();
        let io = pick(["Slave_IO_Running", "Replica_IO_Running"]).unwrap_or_default();
        let sql = pick(["Slave_SQL_Running", "Replica_SQL_Running"]).unwrap_or_default();
        // Only the applier's error disqualifies: an I/O error is what every replica shows
        // while its primary is down, the very case a failover is for.
        let error = cell(row, "Last_SQL_Error").filter(|e| !e.is_empty());
        let received_text = match self.flavor {
            Flavor::Mariadb => cell(row, "Gtid_IO_Pos"),
            Flavor::Mysql => cell(row, "Retrieved_Gtid_Set"),
        }
        .unwrap_or_default();
        let mut received = self.position(&received_text)?;
        received.merge(executed);
        Ok(Some(Replication {
            source: format!("{host}:{port}"),
            // "Connecting" counts: the thread runs and retries on its own.
            io_running: io.eq_ignore_ascii_case("Yes") || io.eq_ignore_ascii_case("Connecting"),
            io_connected: io.eq_ignore_ascii_case("Yes"),
            io_error: cell(row, "Last_IO_Error").filter(|e| !e.is_empty()),
            sql_running: sql.eq_ignore_ascii_case("Yes"),
            error,
            received,
            seconds_behind: pick(["Seconds_Behind_Master", "Seconds_Behind_Source"]).and_then(|s| s.parse().ok()),
            tls: is_on(pick(["Master_SSL_Allowed", "Source_SSL_Allowed"]).as_deref()).then(|| ReplicationTls {
                ca_file: pick(["Master_SSL_CA_File", "Source_SSL_CA_File"]).unwrap_or_default(),
                ca_path: pick(["Master_SSL_CA_Path", "Source_SSL_CA_Path"]).unwrap_or_default(),
                cert: pick(["Master_SSL_Cert", "Source_SSL_Cert"]).unwrap_or_default(),
                key: pick(["Master_SSL_Key", "Source_SSL_Key"]).unwrap_or_default(),
                verify_server_cert: is_on(
                    pick(["Master_SSL_Verify_Server_Cert", "Source_SSL_Verify_Server_Cert"]).as_deref(),
                ),
            }),
        }))
    }

    async fn record(&mut self) -> Result<Option<u64>, Failure> {
        let statement = format!("SELECT generation FROM {RECORD_TABLE} WHERE id = 1");
        match tokio::time::timeout(
            Duration::from_millis(QUERY_TIMEOUT_MS),
            self.conn.query::<mysql_async::Row, _>(&statement),
        )
        .await
        {
            Ok(Ok(rows)) => Ok(rows
                .first()
                .and_then(|r| cell(r, "generation"))
                .and_then(|g| g.parse().ok())),
            // Unknown database / table: never promoted by Switchyard.
            Ok(Err(mysql_async::Error::Server(e))) if e.code == 1049 || e.code == 1146 => Ok(None),
            Ok(Err(error)) => Err(self.failure(&statement, error)),
            Err(_) => Err(Failure::Retryable(format!("{}: {statement}: no answer", self.address))),
        }
    }

    /// read_only on, client connections killed (replication's own kept so replicas drain),
    /// then the final position.
    async fn fence(&mut self) -> Result<(Position, usize), Failure> {
        match self.flavor {
            Flavor::Mariadb => self.run("SET GLOBAL read_only = ON").await?,
            Flavor::Mysql => self.run("SET GLOBAL super_read_only = ON").await?,
        }
        let rows = self
            .rows(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND USER NOT IN ('system user', 'event_scheduler') \
                 AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker', 'Connect')",
            )
            .await?;
        let mut killed = 0;
        for row in rows.iter().take(KILLED_CONNECTIONS_MAX) {
            let Some(id) = cell(row, "ID").and_then(|id| id.parse::<u64>().ok()) else {
                continue;
            };
            match self.conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                // Gone meanwhile (ER_NO_SUCH_THREAD).
                Err(mysql_async::Error::Server(e)) if e.code == 1094 => {}
                Err(error) => return Err(self.failure("KILL CONNECTION", error)),
            }
        }
        let read_only = self.value("SELECT @@GLOBAL.read_only").await?;
        if !is_on(read_only.as_deref()) {
            return Err(Failure::Retryable(format!(
                "{}: read_only did not stay ON",
                self.address
            )));
        }
        Ok((self.executed().await?, killed))
    }

    async fn unfence(&mut self) -> Result<(), Failure> {
        if self.flavor == Flavor::Mysql {
            self.run("SET GLOBAL super_read_only = OFF").await?;
        }
        self.run("SET GLOBAL read_only = OFF").await
    }

    /// Stops both replication threads (the configuration stays, for an operator to look at).
    async fn stop_replication(&mut self) -> Result<(), Failure> {
        match self.flavor {
            Flavor::Mariadb => self.run("STOP SLAVE").await,
            Flavor::Mysql => self.run("STOP REPLICA").await,
        }
    }

    /// Starts the SQL thread of a replica if it is stopped (its relay log must be applied).
    async fn ensure_applier(&mut self) -> Result<(), Failure> {
        let executed = self.executed().await?;
        if let Some(replication) = self.replication(&executed).await?
            && !replication.sql_running
        {
            match self.flavor {
                Flavor::Mariadb => self.run("START SLAVE SQL_THREAD").await?,
                Flavor::Mysql => self.run("START REPLICA SQL_THREAD").await?,
            }
        }
        Ok(())
    }

    /// Stops the I/O thread of a replica (nothing more is received), then waits at most
    /// `timeout_ms` until the SQL thread applied everything received: the relay log holds
    /// what arrived after the survey too, and resetting replication would discard what is
    /// left in it. Returns what is applied then (`applied` when not a replica), `target` with
    /// everything received, what was received but is not applied, and whether this stopped a
    /// running I/O thread (started again when this fails).
    async fn drain_relay_log(
        &mut self,
        target: &Position,
        applied: Position,
        timeout_ms: u64,
    ) -> Result<(Position, Position, Missing, bool), Failure> {
        let executed = self.executed().await?;
        let Some(replication) = self.replication(&executed).await? else {
            return Ok((applied, target.clone(), Missing::default(), false));
        };
        let stopped = replication.io_running;
        match self.flavor {
            Flavor::Mariadb => self.run("STOP SLAVE IO_THREAD").await?,
            Flavor::Mysql => self.run("STOP REPLICA IO_THREAD").await?,
        }
        let drained = async {
            let executed = self.executed().await?;
            let Some(replication) = self.replication(&executed).await? else {
                return Err(Failure::Retryable(format!(
                    "{}: replication vanished while its relay log was being applied",
                    self.address
                )));
            };
            let received = replication.received;
            let applied = self.wait_for(&received, timeout_ms).await?;
            let mut full = target.clone();
            full.merge(&received);
            let unapplied = received.missing_from(&applied);
            Ok((applied, full, unapplied))
        }
        .await;
        match drained {
            Ok((applied, full, unapplied)) => Ok((applied, full, unapplied, stopped)),
            Err(Failure::Retryable(message)) if stopped => match self.resume_receiving().await {
                Ok(()) => Err(Failure::Retryable(message)),
                Err(again) => Err(Failure::Retryable(format!("{message}; then {again}"))),
            },
            Err(e) => Err(e),
        }
    }

    /// Starts the I/O thread again after [`Self::drain_relay_log`] stopped it, when the
    /// promotion stops short of resetting replication (the candidate stays a replica that
    /// receives).
    async fn resume_receiving(&mut self) -> Result<(), Failure> {
        match self.flavor {
            Flavor::Mariadb => self.run("START SLAVE IO_THREAD").await,
            Flavor::Mysql => self.run("START REPLICA IO_THREAD").await,
        }
    }

    /// Waits (at most `timeout_ms`) until `target` is applied; returns what is applied then.
    async fn wait_for(&mut self, target: &Position, timeout_ms: u64) -> Result<Position, Failure> {
        let executed = self.executed().await?;
        if target.missing_from(&executed).is_empty() {
            return Ok(executed);
        }
        let seconds = format!("{}.{:03}", timeout_ms / 1000, timeout_ms % 1000);
        let statement = match self.flavor {
            Flavor::Mariadb => format!("SELECT MASTER_GTID_WAIT({}, {seconds})", quote(&target.wait_text())),
            Flavor::Mysql => format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {seconds})",
                quote(&target.wait_text())
            ),
        };
        self.rows_within(&statement, timeout_ms.saturating_add(QUERY_TIMEOUT_MS))
            .await?;
        self.executed().await
    }

    /// Replicates from `source` by GTID (a running replication is stopped first). A server
    /// without TLS options of its own takes `tls` (the topology's); whether it did.
    async fn replicate_from(
        &mut self,
        source: &Member,
        inner: &Inner,
        tls: Option<&ReplicationTls>,
    ) -> Result<bool, Failure> {
        let executed = self.executed().await?;
        let own = self.replication(&executed).await?.is_some_and(|r| r.tls.is_some());
        let tls = tls.filter(|_| !own);
        let password = inner
            .accounts
            .replication_password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        match self.flavor {
            Flavor::Mariadb => {
                self.run("STOP SLAVE").await?;
                // An ex-primary's own transactions count as applied: start after them.
                self.run("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos")
                    .await?;
                self.run(&change_source(
                    self.flavor,
                    source,
                    &inner.accounts.replication_user,
                    &password,
                    tls,
                ))
                .await?;
                self.run("START SLAVE").await?;
            }
            Flavor::Mysql => {
                self.run("STOP REPLICA").await?;
                self.run(&change_source(
                    self.flavor,
                    source,
                    &inner.accounts.replication_user,
                    &password,
                    tls,
                ))
                .await?;
                self.run("START REPLICA").await?;
            }
        }
        let executed = self.executed().await?;
        match self.replication(&executed).await? {
            Some(replication) if replication.source == source.address => Ok(tls.is_some()),
            other => Err(Failure::Retryable(format!(
                "{}: replication source reads {:?} after pointing it at {}",
                self.address,
                other.map(|r| r.source),
                source.address
            ))),
        }
    }

    /// Waits at most [`LINK_WAIT_MS`] until the I/O thread is connected to its source: `None`
    /// then, else what `SHOW SLAVE STATUS` says (its last I/O error, or its state).
    async fn link_problem(&mut self) -> Result<Option<String>, Failure> {
        let until = std::time::Instant::now() + Duration::from_millis(LINK_WAIT_MS);
        loop {
            let executed = self.executed().await?;
            let replication = self.replication(&executed).await?;
            if replication.as_ref().is_some_and(|r| r.io_connected) {
                return Ok(None);
            }
            if std::time::Instant::now() >= until {
                let problem = match replication {
                    None => "it has no replication configured".to_string(),
                    Some(r) => match r.io_error {
                        Some(error) => format!("its I/O thread's last error: {error}"),
                        None if r.io_running => format!("its I/O thread is still connecting after {LINK_WAIT_MS} ms"),
                        None => "its I/O thread is stopped".to_string(),
                    },
                };
                return Ok(Some(super::hide_secrets(&problem, &self.secrets)));
            }
            tokio::time::sleep(Duration::from_millis(LINK_POLL_MS)).await;
        }
    }

    /// Stops and forgets replication, turns read_only off, writes the promotion record; then
    /// reads all three back.
    async fn make_primary(&mut self, order: &Order, member: &Member) -> Result<(), Failure> {
        match self.flavor {
            Flavor::Mariadb => {
                self.run("STOP SLAVE").await?;
                self.run("RESET SLAVE ALL").await?;
            }
            Flavor::Mysql => {
                self.run("STOP REPLICA").await?;
                self.run("RESET REPLICA ALL").await?;
            }
        }
        // The record first, while the server still refuses the applications' writes: a
        // region's guard fences a writable server whose record is older than the move it
        // fences for, and must never see this one so between the two statements. MySQL's
        // super_read_only stops even this account; read_only does not (MariaDB: an account
        // with READ_ONLY ADMIN, which ALL PRIVILEGES holds). An account without it writes the
        // record after the unfence, as before.
        if self.flavor == Flavor::Mysql {
            self.run("SET GLOBAL super_read_only = OFF").await?;
        }
        match self.write_record(order, member).await {
            Ok(()) => self.unfence().await?,
            // ER_OPTION_PREVENTS_STATEMENT: this account may not write past read_only.
            Err(Failure::Retryable(why)) if why.contains("ERROR 1290 (") => {
                self.unfence().await?;
                self.write_record(order, member).await?;
            }
            Err(failure) => return Err(failure),
        }
        let executed = self.executed().await?;
        if self.replication(&executed).await?.is_some() {
            return Err(Failure::Retryable(format!(
                "{}: still a replica after RESET",
                self.address
            )));
        }
        if is_on(self.value("SELECT @@GLOBAL.read_only").await?.as_deref()) {
            return Err(Failure::Retryable(format!("{}: read_only is still ON", self.address)));
        }
        Ok(())
    }

    /// Raises the promotion record to the order's generation (never lowers it), then reads it
    /// back: a newer generation there means a newer decision acted.
    async fn write_record(&mut self, order: &Order, member: &Member) -> Result<(), Failure> {
        if self.record().await?.is_none() {
            self.run("CREATE DATABASE IF NOT EXISTS switchyard").await?;
            self.run(&format!(
                "CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (id TINYINT UNSIGNED PRIMARY KEY, \
                 generation BIGINT UNSIGNED NOT NULL, primary_address VARCHAR(300) NOT NULL, \
                 region VARCHAR(200) NOT NULL, promoted_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB"
            ))
            .await?;
        }
        let (generation, address, region) = (order.generation, quote(&member.address), quote(&member.region));
        self.run(&format!(
            "INSERT INTO {RECORD_TABLE} (id, generation, primary_address, region) VALUES (1, {generation}, {address}, {region}) \
             ON DUPLICATE KEY UPDATE \
             primary_address = IF(generation < {generation}, {address}, primary_address), \
             region = IF(generation < {generation}, {region}, region), \
             promoted_at = IF(generation < {generation}, CURRENT_TIMESTAMP(3), promoted_at), \
             generation = GREATEST(generation, {generation})"
        ))
        .await?;
        let record = self.record().await?;
        super::check_record_written(&self.address, order, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::{Collect, accepted, assert_refused};

    use crate::db::test_support::order;

    fn members() -> Vec<Member> {
        crate::db::test_support::members(3306)
    }

    fn maria(text: &str) -> Position {
        Position::Mariadb(MariaState::parse(text).expect("gtid"))
    }

    fn primary(executed: &str, record: Option<u64>) -> Observed {
        Observed {
            flavor: Flavor::Mariadb,
            version: "10.11.6-MariaDB".into(),
            read_only: false,
            gtid_ready: Ok(()),
            replication: None,
            executed: maria(executed),
            record,
            origin: None,
        }
    }

    fn replica(executed: &str, received: &str) -> Observed {
        Observed {
            read_only: true,
            replication: Some(Replication {
                source: "a:3306".into(),
                io_running: true,
                io_connected: true,
                io_error: None,
                sql_running: true,
                error: None,
                received: maria(received),
                seconds_behind: Some(0),
                tls: None,
            }),
            ..primary(executed, None)
        }
    }

    /// The plan of a move to `us` at generation 7.
    fn failover_to_us(observed: &[Option<Observed>]) -> Plan {
        plan(&order(7, "us", false), &members(), observed).expect("plan")
    }

    /// A promotion of `candidate` with `a` (member 0, reachable) the old primary.
    fn replacing_a_with(candidate: usize) -> Plan {
        Plan::Promote {
            old: Some(0),
            candidate,
            rejoin: false,
        }
    }

    #[test]
    fn a_replica_of_another_source_with_errant_transactions_is_never_the_candidate() {
        // b follows a (the last primary) and is read after a took another write: still a
        // candidate. c follows a cut-off server and holds what a never had: refused, named.
        let mut stray = replica("0-1-100,0-2-7", "0-1-100,0-2-7");
        if let Some(replication) = stray.replication.as_mut() {
            replication.source = "d:3306".into();
        }
        let observed = vec![
            Some(primary("0-1-100", Some(3))),
            Some(replica("0-1-101", "0-1-101")),
            Some(stray.clone()),
        ];
        assert_eq!(failover_to_us(&observed), replacing_a_with(1));
        let named = errant_rejoiners(&order(7, "us", false), &members(), &observed);
        assert_eq!(named.iter().map(|(i, _, n)| (*i, *n)).collect::<Vec<_>>(), vec![(2, 7)]);
        let Err(Failure::Refused(message)) = plan(
            &order(7, "us", false),
            &members(),
            &[Some(primary("0-1-100", Some(3))), None, Some(stray)],
        ) else {
            panic!("not refused")
        };
        assert!(
            message.contains("c:3306 cannot be promoted: it has 7 errant transaction(s)"),
            "{message}"
        );
    }

    #[test]
    fn a_replica_of_the_primary_holding_writes_of_its_own_is_never_the_candidate() {
        // b (server_id 2) follows a and holds 0-2-101, written on b itself past read_only: not
        // the primary running ahead of the survey, so b is refused and named; c, behind but
        // clean, is promoted. b's reading of a's newer writes (0-1-101) stays exempt.
        let own = |executed: &str| Observed {
            origin: Some(Origin::ServerId(2)),
            ..replica(executed, executed)
        };
        let c = Observed {
            origin: Some(Origin::ServerId(3)),
            ..replica("0-1-99", "0-1-99")
        };
        let observed = vec![Some(primary("0-1-100", Some(3))), Some(own("0-1-101")), Some(c.clone())];
        assert_eq!(failover_to_us(&observed), replacing_a_with(1));
        let observed = vec![Some(primary("0-1-100", Some(3))), Some(own("0-1-101,0-2-102")), Some(c)];
        assert_eq!(failover_to_us(&observed), replacing_a_with(2));
        // b wrote 0-2-102 after it read a's 0-1-101 (a wrote that after the survey read a):
        // one transaction of its own, and the binlog scan takes 0-1-101 as known.
        let named = errant_rejoiners(&order(7, "us", false), &members(), &observed);
        assert_eq!(named.iter().map(|(i, _, n)| (*i, *n)).collect::<Vec<_>>(), vec![(1, 1)]);
        assert_eq!(named[0].1, maria("0-1-101"));
        let Err(Failure::Refused(message)) = plan(
            &order(7, "us", false),
            &members(),
            &[Some(primary("0-1-100", Some(3))), Some(own("0-1-100,0-2-101")), None],
        ) else {
            panic!("not refused")
        };
        assert!(
            message.contains("b:3306 cannot be promoted")
                && message.contains("written on it directly (server_id 2")
                && message.contains("primary a:3306 never saw: 0-2-101"),
            "{message}"
        );
    }

    #[test]
    fn the_most_advanced_replica_of_the_region_is_the_candidate_and_the_old_primary_is_fenced() {
        let observed = vec![
            Some(primary("0-1-100", None)),
            Some(replica("0-1-90", "0-1-95")),
            Some(replica("0-1-80", "0-1-99")),
        ];
        let plan = plan(&order(7, "us", false), &members(), &observed).expect("plan");
        assert_eq!(
            plan,
            Plan::Promote {
                old: Some(0),
                candidate: 2,
                rejoin: false
            }
        );
    }

    #[test]
    fn a_replica_with_a_replication_error_is_passed_over_and_named_when_alone() {
        let mut broken = replica("0-1-99", "0-1-99");
        if let Some(r) = &mut broken.replication {
            r.error = Some("Duplicate entry '5'".into());
        }
        let observed = vec![
            Some(primary("0-1-100", None)),
            Some(broken.clone()),
            Some(replica("0-1-1", "0-1-1")),
        ];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: Some(0),
                candidate: 2,
                rejoin: false
            }
        );
        let observed = vec![Some(primary("0-1-100", None)), Some(broken), None];
        let Err(Failure::Refused(message)) = plan(&order(7, "us", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("Duplicate entry"), "{message}");
    }

    #[test]
    fn a_writable_primary_with_the_newest_record_in_the_region_is_done_and_a_newer_record_fences() {
        let observed = vec![
            Some(Observed {
                read_only: true,
                ..primary("0-1-100", Some(3))
            }),
            Some(primary("0-1-100,0-2-120", Some(7))),
            Some(replica("0-1-100,0-2-120", "0-1-100,0-2-120")),
        ];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Done { primary: 1 }
        );
        assert_eq!(
            plan(&order(9, "us", false), &members(), &observed).expect("plan"),
            Plan::Done { primary: 1 }
        );
        assert!(matches!(
            plan(&order(6, "us", false), &members(), &observed),
            Err(Failure::Fenced(_))
        ));
    }

    #[test]
    fn a_stale_primary_that_came_back_writable_loses_to_the_newer_record() {
        // a (eu) was cut off, b (us) promoted at generation 7; a returns writable with errant
        // transactions. Failing back to eu must not take a for the primary.
        let observed = vec![
            Some(primary("0-1-105", Some(2))),
            Some(primary("0-1-100,0-2-120", Some(7))),
            None,
        ];
        let Err(Failure::Refused(message)) = plan(&order(8, "eu", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("0-1-101..0-1-105"), "{message}");
        assert!(message.contains("a:3306 cannot rejoin"), "{message}");
        // Without errant transactions it rejoins b first, then takes over.
        let observed = vec![
            Some(Observed {
                read_only: true,
                ..primary("0-1-100", Some(2))
            }),
            Some(primary("0-1-100,0-2-120", Some(7))),
            None,
        ];
        assert_eq!(
            plan(&order(8, "eu", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: Some(1),
                candidate: 0,
                rejoin: true
            }
        );
    }

    #[test]
    fn two_writable_primaries_with_the_same_record_are_refused() {
        let observed = vec![Some(primary("0-1-5", None)), Some(primary("0-2-5", None)), None];
        let Err(Failure::Refused(message)) = plan(&order(3, "us", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("a:3306 and b:3306"), "{message}");
    }

    #[test]
    fn a_run_stopped_after_the_reset_finishes_the_same_candidate() {
        let observed = vec![
            Some(Observed {
                read_only: true,
                ..primary("0-1-100", None)
            }),
            Some(Observed {
                read_only: true,
                ..primary("0-1-100", None)
            }),
            Some(replica("0-1-100", "0-1-100")),
        ];
        assert_eq!(
            plan(&order(4, "us", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: None,
                candidate: 1,
                rejoin: false
            }
        );
    }

    #[test]
    fn with_the_primary_gone_the_reference_is_what_any_replica_received() {
        let observed = vec![
            None,
            Some(replica("0-1-90", "0-1-90")),
            Some(replica("0-1-95", "0-1-97")),
        ];
        assert_eq!(
            plan(&order(4, "us", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: None,
                candidate: 2,
                rejoin: false
            }
        );
        assert!(matches!(
            plan(&order(4, "us", false), &members(), &[None, None, None]),
            Err(Failure::Retryable(_))
        ));
    }

    #[test]
    fn loss_is_refused_unless_forced_and_counted_either_way() {
        let missing = maria("0-1-100").missing_from(&maria("0-1-97"));
        let none = Missing::default();
        let Err(Failure::Refused(message)) = judge_loss(&missing, &none, false, "b:3306", (500, 2_000)) else {
            panic!("refused");
        };
        assert!(
            message.contains("lacks 3 transaction(s)") && message.contains("0-1-98..0-1-100"),
            "{message}"
        );
        assert!(message.contains("--force-data-loss"), "{message}");
        assert!(!message.contains("relay log"), "{message}");
        let forced = judge_loss(&missing, &none, true, "b:3306", (500, 2_000))
            .expect("forced")
            .expect("a note");
        assert!(forced.contains("they are lost"), "{forced}");
        assert_eq!(judge_loss(&none, &none, false, "b", (1, 1)), Ok(None));
        // Received but not applied: named as the relay log's, which a reset would discard.
        let unapplied = maria("0-1-100").missing_from(&maria("0-1-99"));
        let Err(Failure::Refused(message)) = judge_loss(&missing, &unapplied, false, "b:3306", (500, 2_000)) else {
            panic!("refused");
        };
        assert!(
            message.contains("1 of them in its relay log, received but not applied within 2000 ms")
                && message.contains("0-1-100 (resetting its replication would discard them)"),
            "{message}"
        );
    }

    #[test]
    fn settings_name_every_problem() {
        let text = r#"
            servers = { eu = ["a:3306"], mars = ["b:99999"] }
            user = ""
            replication_user = "repl"
            password = { env = "SWITCHYARD_TEST_UNSET_MYSQL" }
            promote_lag_max_ms = 900000
        "#;
        let check = |settings: &Settings, checker: &mut Collect| settings.check("db", checker);
        assert_refused(
            text,
            check,
            &[
                "region 'mars'",
                "port '99999'",
                "user ''",
                "SWITCHYARD_TEST_UNSET_MYSQL",
                "promote_lag_max_ms = 900000",
            ],
        );
        let step = accepted(
            "servers = { eu = [\"a\"], us = [\"b:3307\"] }\nuser = \"sw\"\nreplication_user = \"repl\"\n",
            check,
        );
        assert_eq!(step.members()[0].address, "a:3306");
        assert_eq!(step.inner.promote_lag_max_ms, super::super::PROMOTE_LAG_MS_DEFAULT);
    }

    #[test]
    fn failure_messages_never_show_the_passwords_a_statement_or_the_server_carries() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let password = r"re'pl\pass";
        std::fs::write(dir.path().join("sw"), "sw-pass\n").expect("write");
        std::fs::write(dir.path().join("repl"), format!("{password}\n")).expect("write");
        let step = accepted(
            &format!(
                "servers = {{ eu = [\"a\"], us = [\"b\"] }}\nuser = \"sw\"\nreplication_user = \"repl\"\n\
                 password = {{ file = {:?} }}\nreplication_password = {{ file = {:?} }}\n",
                dir.path().join("sw"),
                dir.path().join("repl")
            ),
            |settings: &Settings, checker: &mut Collect| settings.check("db", checker),
        );
        let secrets = step.inner.secret_forms();
        let source = &members()[1];
        for flavor in [Flavor::Mariadb, Flavor::Mysql] {
            let statement = change_source(flavor, source, "repl", password, None);
            let quoted = quote(password);
            assert!(statement.contains(&quoted), "{statement}");
            // The server's own error may quote the statement (1064: "... near '...'").
            let error = format!("You have an error in your SQL syntax near {quoted}, and sw-pass");
            let message = statement_failure("b:3306", &statement, &error, &secrets);
            assert!(!message.contains("re'pl") && !message.contains(r"re\'pl"), "{message}");
            assert!(!message.contains("sw-pass"), "{message}");
            assert!(
                message.contains("'<hidden>'") && message.contains("b:3306"),
                "{message}"
            );
            assert!(message.contains("repl"), "the user is named: {message}");
        }
    }

    #[test]
    fn the_topology_s_replication_tls_is_what_a_fresh_change_master_names() {
        let tls = ReplicationTls {
            ca_file: "/etc/mysql/ca.pem".into(),
            verify_server_cert: true,
            ..ReplicationTls::default()
        };
        let mut over_tls = replica("0-1-1", "0-1-1");
        if let Some(r) = over_tls.replication.as_mut() {
            r.tls = Some(tls.clone());
        }
        let observed = vec![
            Some(primary("0-1-1", None)),
            Some(replica("0-1-1", "0-1-1")),
            Some(over_tls),
        ];
        assert_eq!(topology_tls(&observed), Some(tls.clone()));
        assert_eq!(topology_tls(&observed[..2]), None);
        let source = &members()[1];
        let maria = change_source(Flavor::Mariadb, source, "repl", "pw", Some(&tls));
        assert!(
            maria.ends_with(
                "MASTER_USE_GTID = slave_pos, MASTER_SSL = 1, MASTER_SSL_CA = '/etc/mysql/ca.pem', MASTER_SSL_CAPATH = '', \
                 MASTER_SSL_CERT = '', MASTER_SSL_KEY = '', MASTER_SSL_VERIFY_SERVER_CERT = 1"
            ),
            "{maria}"
        );
        let mysql = change_source(Flavor::Mysql, source, "repl", "pw", Some(&tls));
        assert!(
            mysql.contains("SOURCE_SSL = 1, SOURCE_SSL_CA = '/etc/mysql/ca.pem'"),
            "{mysql}"
        );
        assert!(!change_source(Flavor::Mariadb, source, "repl", "pw", None).contains("SSL"));
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
    }
}
