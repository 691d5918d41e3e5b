//! `postgres_promote`: moves the primary of a PostgreSQL (13 or newer) streaming-replication
//! cluster into the order's active region (what Patroni does for one cluster, driven by the
//! controller's decision instead of a DCS lock).
//!
//! One run: survey every server (`pg_is_in_recovery()`, WAL positions, timeline, upstream, the
//! promotion record); [`plan`] (pure) names the last primary and the candidate — the standby of
//! the region that received the most WAL; fence the old primary if it answers
//! (`ALTER SYSTEM SET default_transaction_read_only = on` + `pg_reload_conf()`, verified from a
//! new session, then its client backends terminated) and read its final LSN — its WAL insert
//! position, which covers commits acknowledged under `synchronous_commit = off` that are not
//! written yet ([`FINAL_LSN_QUERY`]); let the candidate replay everything known to exist
//! (replay resumed if paused), waiting at most `promote_lag_max_ms`; refuse if WAL is still
//! missing, saying how many bytes, unless the order forces data loss (and then give the old
//! primary its writes back, since the runbook stops);
//! `pg_promote(wait => true)` with a bound, verified out of recovery, unfenced, the promotion
//! record written. Then every other server: a standby that can follow the new timeline is
//! repointed (`ALTER SYSTEM SET primary_conninfo` + reload, verified streaming); a former
//! primary, or a standby that went past the fork point, is rejoined by the configured `rejoin`
//! command (which runs `pg_rewind` when [`rejoin_path`] says the timelines need it) or left
//! fenced with the reason.
//!
//! Requirements: PostgreSQL 13+ (`primary_conninfo` reloadable), `recovery_target_timeline =
//! 'latest'` (the default) on standbys; the step's user is a superuser (ALTER SYSTEM,
//! `pg_promote`, `pg_read_file` of the timeline history, `primary_conninfo`); for `pg_rewind`,
//! `wal_log_hints = on` or data checksums on every server.
//!
//! Fencing is `default_transaction_read_only`: every new transaction is read-only unless a
//! client explicitly asks for `READ WRITE`. Applications do not; one that does defeats it, so the
//! load balancer is fenced too (the `haproxy` step) where that matters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use toml::Spanned;

use super::{CONNECT_TIMEOUT_MS, Member, Notes, QUERY_TIMEOUT_MS};
use crate::{Checker, Failure, Order, Outcome};

/// Default PostgreSQL port.
pub const POSTGRES_PORT_DEFAULT: u16 = 5432;
/// Oldest server accepted (`server_version_num`): 13 reloads `primary_conninfo`.
pub const VERSION_NUM_MIN: u32 = 130_000;
/// `pg_promote(wait_seconds => ...)`: how long the step waits for the end of recovery.
pub const PROMOTE_WAIT_S: u64 = 10;
/// How often the catch-up and follow waits read positions.
pub const POLL_MS: u64 = 20;
/// How long a repointed or rejoined standby gets to stream from the new primary.
pub const FOLLOW_WAIT_MS: u64 = 10_000;
/// How long a detached standby's WAL receiver gets to stop (`primary_conninfo = ''`).
pub const DETACH_WAIT_MS: u64 = 5_000;
/// Client backends terminated at most when fencing (the rest are counted, not terminated).
pub const TERMINATED_BACKENDS_MAX: usize = 10_000;
/// The promotion record's table.
pub const RECORD_TABLE: &str = "switchyard.promotion";
/// `rejoin.timeout_ms` when left out, and its largest value.
pub const REJOIN_TIMEOUT_MS_DEFAULT: u64 = 120_000;
pub const REJOIN_TIMEOUT_MS_MAX: u64 = 600_000;
/// Bytes of the rejoin command's output kept for the outcome line.
pub const REJOIN_OUTPUT_BYTES_MAX: usize = 600;
/// Longest name accepted for users and the database (PostgreSQL's NAMEDATALEN - 1).
pub const NAME_CHARS_MAX: usize = 63;
/// How a loss is worded ([`judge_loss`]).
const LOSS: super::LossWords = super::LossWords::new(
    "the transactions in them are lost",
    "the transactions in them",
    "wait for it to catch up",
);
/// What happens to a server the first survey of a run cannot reach.
const UNREACHABLE: &str = "not fenced at the database by this step — its region's guard fences it (switchyard guard), or fence it at the load balancer; it stays fenced (its promotion record is older) and rejoins when it answers";

promote_settings! {
    replicating
    /// The `[runbook.postgres_promote]` table: the replication account is the role standbys
    /// stream with (`primary_conninfo`).
    pub struct Settings {
        /// The database the step connects to and keeps its promotion record in.
        #[serde(default = "default_database")]
        pub database: Spanned<String>,
        /// How a former primary (or a standby past the fork point) becomes a standby of the new
        /// primary; without it such a server is left fenced and named.
        #[serde(default)]
        pub rejoin: Option<Spanned<RejoinSettings>>,
    }
}

/// `rejoin = { program = "/usr/local/sbin/pg-rejoin", args = [], timeout_ms = 120000 }`: a
/// program run on the controller's host (typically `ssh db-host sudo -u postgres ...`) with
/// the environment described in the README: stop the server, `pg_rewind` when
/// `SWITCHYARD_PG_REWIND=1`, write `standby.signal` and `primary_conninfo`, start it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejoinSettings {
    pub program: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_rejoin_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
}

fn default_database() -> Spanned<String> {
    Spanned::new(0..0, "postgres".to_string())
}

fn default_rejoin_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, REJOIN_TIMEOUT_MS_DEFAULT)
}

impl Settings {
    /// Checks the settings (every problem reported) and builds the actuator.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<PostgresPromote> {
        let (what, mut shared) = self.check_shared(("postgres_promote", step), POSTGRES_PORT_DEFAULT, checker);
        for (name, value) in [
            ("user", &self.user),
            ("replication_user", &self.replication_user),
            ("database", &self.database),
        ] {
            let text = value.get_ref();
            if text.is_empty() || text.chars().count() > NAME_CHARS_MAX || text.chars().any(char::is_control) {
                checker.error(
                    value.span(),
                    format!("{what}: {name} '{text}' is empty, has control characters or is longer than {NAME_CHARS_MAX} characters"),
                    "name an existing role or database".into(),
                );
                shared.ok = false;
            }
        }
        let rejoin = match &self.rejoin {
            None => None,
            Some(rejoin) => {
                let r = rejoin.get_ref();
                let program = std::path::Path::new(r.program.get_ref());
                let program = if program.is_relative() {
                    checker.folder().join(program)
                } else {
                    program.to_path_buf()
                };
                if !program.is_file() {
                    checker.error(
                        r.program.span(),
                        format!("{what}: rejoin program {} does not exist", program.display()),
                        "name an executable file (relative paths start at the config file's folder)".into(),
                    );
                    shared.ok = false;
                }
                if *r.timeout_ms.get_ref() == 0 || *r.timeout_ms.get_ref() > REJOIN_TIMEOUT_MS_MAX {
                    checker.error(
                        r.timeout_ms.span(),
                        format!(
                            "{what}: rejoin timeout_ms = {} is not between 1 and {REJOIN_TIMEOUT_MS_MAX}",
                            r.timeout_ms.get_ref()
                        ),
                        "a pg_rewind of a small divergence takes seconds; allow a few minutes at most".into(),
                    );
                    shared.ok = false;
                }
                Some(Rejoin {
                    program: program.display().to_string(),
                    args: r.args.clone(),
                    timeout_ms: *r.timeout_ms.get_ref(),
                })
            }
        };
        let (members, tls, accounts) = self.check_accounts(&what, shared, checker)?;
        Some(PostgresPromote {
            inner: Arc::new(Inner {
                database: self.database.get_ref().clone(),
                members,
                accounts,
                promote_lag_max_ms: *self.promote_lag_max_ms.get_ref(),
                rejoin,
                tls,
            }),
        })
    }
}

/// The ready `postgres_promote` step.
#[derive(Clone, Debug)]
pub struct PostgresPromote {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    database: String,
    members: Vec<Member>,
    accounts: super::Accounts,
    promote_lag_max_ms: u64,
    rejoin: Option<Rejoin>,
    tls: Option<super::tls::Tls>,
}

// Beyond the catch-up: the promotion, a detach and a follow, and a rejoin if configured.
promote_step!(PostgresPromote, survey by inspect, waits |inner| (PROMOTE_WAIT_S * 1000)
    .saturating_add(FOLLOW_WAIT_MS)
    .saturating_add(DETACH_WAIT_MS)
    .saturating_add(inner.rejoin.as_ref().map_or(0, |r| r.timeout_ms)));

#[derive(Clone, Debug)]
struct Rejoin {
    program: String,
    args: Vec<String>,
    timeout_ms: u64,
}

/// A fenced primary's final position: the WAL insert position (every record inserted, the
/// commits acknowledged under `synchronous_commit = off` included), and the WAL block and
/// segment sizes in bytes ([`inserted_end`]).
pub const FINAL_LSN_QUERY: &str = "SELECT pg_current_wal_insert_lsn()::text, \
     (SELECT setting FROM pg_settings WHERE name = 'wal_block_size'), \
     (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')";
/// Sizes of a WAL page's header (`SizeOfXLogShortPHD`) and of the first page of a segment's
/// (`SizeOfXLogLongPHD`), in bytes.
pub const WAL_PAGE_HEADER_BYTES: u64 = 24;
pub const WAL_SEGMENT_HEADER_BYTES: u64 = 40;

/// The end of the last WAL record inserted, from `pg_current_wal_insert_lsn()` (`insert`),
/// with WAL pages of `block` bytes in segments of `segment` bytes: where a standby that
/// replayed everything stands (`pg_last_wal_replay_lsn()`). The insert position points past
/// the page header when the last record ended at a page boundary, where replay stops: that
/// header is taken off. Pure.
pub fn inserted_end(insert: Lsn, block: u64, segment: u64) -> Lsn {
    if block == 0 || segment == 0 {
        return insert;
    }
    let in_segment = insert.0 % segment;
    let header = if in_segment == WAL_SEGMENT_HEADER_BYTES {
        WAL_SEGMENT_HEADER_BYTES
    } else if in_segment >= block && insert.0 % block == WAL_PAGE_HEADER_BYTES {
        WAL_PAGE_HEADER_BYTES
    } else {
        0
    };
    Lsn(insert.0.saturating_sub(header))
}

/// A WAL position (`pg_lsn`): `X/Y` in hexadecimal, a byte offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(text: &str) -> Result<Lsn, String> {
        let (high, low) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not an LSN (X/Y)"))?;
        let high = u32::from_str_radix(high, 16).map_err(|_| format!("'{text}' is not an LSN (X/Y)"))?;
        let low = u32::from_str_radix(low, 16).map_err(|_| format!("'{text}' is not an LSN (X/Y)"))?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }

    /// Bytes of WAL from `self` up to `later` (0 when `later` is not after it).
    pub fn bytes_to(self, later: Lsn) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What one reachable server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub version_num: u32,
    pub in_recovery: bool,
    /// New sessions start read-only (`default_transaction_read_only`): fenced.
    pub read_only: bool,
    /// A primary's `pg_current_wal_lsn()`.
    pub current: Option<Lsn>,
    /// A standby's `pg_last_wal_receive_lsn()` / `pg_last_wal_replay_lsn()`.
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
    pub replay_paused: bool,
    /// The timeline it writes (primary) or last received / checkpointed (standby).
    pub timeline: u32,
    /// A standby's configured upstream (`host:port` from `primary_conninfo`).
    pub upstream: Option<String>,
    /// Its WAL receiver streams (`pg_stat_wal_receiver.status`).
    pub streaming: bool,
    /// `pg_rewind` can use it as a target (`wal_log_hints` or data checksums, full page writes).
    pub rewindable: Result<(), String>,
    /// The promotion record's generation, if the table exists.
    pub record: Option<u64>,
    /// A standby's `primary_slot_name`: the physical replication slot it streams through.
    pub slot: Option<String>,
    /// The newest timeline whose history file is in its `pg_wal` (0: none): a server that
    /// followed a promotion holds the new timeline's history.
    pub newest_history: u32,
}

impl Observed {
    fn writable_primary(&self) -> bool {
        !self.in_recovery && !self.read_only
    }

    /// The furthest WAL position it holds: written (primary) or received or replayed (standby).
    /// The newest timeline it is on or has followed: its `timeline` (a standby's reads the
    /// last checkpoint's when no WAL receiver runs, which may lag) or its newest history file.
    pub fn known_timeline(&self) -> u32 {
        self.timeline.max(self.newest_history)
    }

    pub fn position(&self) -> Lsn {
        [self.current, self.received, self.replayed]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default()
    }
}

/// What a run does, decided from the survey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The primary is already in the order's region (an earlier run of this or an older
    /// generation promoted it): nothing is promoted again; `unfence` when a run stopped before
    /// making it writable.
    Done { primary: usize, unfence: bool },
    Promote {
        /// The last primary (reachable), fenced before the candidate takes over.
        old: Option<usize>,
        candidate: usize,
    },
}

/// Decides the run from the survey (`observed[i]` is `None` for an unreachable member). Pure.
pub fn plan(order: &Order, members: &[Member], observed: &[Option<Observed>]) -> Result<Plan, Failure> {
    let reachable = super::reachable(observed);
    if reachable.is_empty() {
        return Err(Failure::Retryable("no server answered".into()));
    }
    if let Some((i, o)) = reachable.iter().find(|(_, o)| o.version_num < VERSION_NUM_MIN) {
        return Err(Failure::Refused(format!(
            "{} runs PostgreSQL {}.{}: postgres_promote needs 13 or newer (primary_conninfo reloads without a restart)",
            members[*i].address,
            o.version_num / 10_000,
            o.version_num % 10_000
        )));
    }
    super::refuse_newer_record(order, members, &reachable, |o| o.record)?;
    let old = last_primary(order, members, &reachable)?;
    if let Some(old) = old
        && members[old].region == order.to
    {
        let unfence = observed[old].as_ref().is_some_and(|o| o.read_only);
        return Ok(Plan::Done { primary: old, unfence });
    }
    let mut passed = Vec::new();
    let mut best: Option<((Lsn, Lsn, std::cmp::Reverse<usize>), usize)> = None;
    let (required, whose) = required_timeline(members, observed, old);
    for (i, o) in reachable.iter().filter(|(i, _)| members[*i].region == order.to) {
        if !o.in_recovery {
            passed.push(format!(
                "{} is a former primary, not a standby: it must rejoin first (configure rejoin, or rebuild it with pg_basebackup)",
                members[*i].address
            ));
            continue;
        }
        // WAL positions of two timelines do not compare: a standby that never followed the
        // last promotion (cut off with the old primary, which kept writing) may be "ahead" in
        // bytes while it lacks everything written since the fork.
        if o.known_timeline() < required {
            passed.push(format!(
                "{} is on timeline {} and never followed timeline {required} ({whose}): past the fork point its WAL is not that history, and promoting it would drop what was written there since; rejoin it (pg_rewind) or rebuild it with pg_basebackup",
                members[*i].address,
                o.known_timeline()
            ));
            continue;
        }
        let key = (o.position(), o.replayed.unwrap_or_default(), std::cmp::Reverse(*i));
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, *i));
        }
    }
    match best {
        Some((_, candidate)) => Ok(Plan::Promote { old, candidate }),
        None => Err(super::no_candidate(order, members, observed, &passed)),
    }
}

/// The timeline a candidate must have followed: the last primary's (`old`), or with it gone
/// the newest any reachable standby followed; with what holds it, for messages. Pure.
pub fn required_timeline(members: &[Member], observed: &[Option<Observed>], old: Option<usize>) -> (u32, String) {
    if let Some(old) = old
        && let Some(o) = &observed[old]
    {
        return (o.timeline, format!("the primary {}'s", members[old].address));
    }
    observed
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().filter(|o| o.in_recovery).map(|o| (o.known_timeline(), i)))
        .max()
        .map(|(t, i)| (t, format!("followed by {}", members[i].address)))
        .unwrap_or((0, String::new()))
}

/// The last primary among the reachable servers out of recovery: the highest promotion
/// record, a writable one before a fenced one, then the highest timeline; `None` if every
/// reachable server is a standby (the primary is gone).
fn last_primary(order: &Order, members: &[Member], reachable: &[(usize, &Observed)]) -> Result<Option<usize>, Failure> {
    let roots: Vec<&(usize, &Observed)> = reachable.iter().filter(|(_, o)| !o.in_recovery).collect();
    let Some(top) = roots.iter().map(|(_, o)| o.record.unwrap_or(0)).max() else {
        return Ok(None);
    };
    let tied: Vec<&&(usize, &Observed)> = roots.iter().filter(|(_, o)| o.record.unwrap_or(0) == top).collect();
    let writable: Vec<&&&(usize, &Observed)> = tied.iter().filter(|(_, o)| o.writable_primary()).collect();
    // A promoted standby is on a newer timeline than the primary it left.
    let newest = |list: &[&&&(usize, &Observed)]| -> Option<usize> {
        let high = list.iter().map(|(_, o)| o.timeline).max()?;
        let on_it: Vec<usize> = list
            .iter()
            .filter(|(_, o)| o.timeline == high)
            .map(|(i, _)| *i)
            .collect();
        (on_it.len() == 1).then(|| on_it[0])
    };
    match writable.as_slice() {
        [] => {}
        [one] => return Ok(Some(one.0)),
        several => {
            return match newest(several) {
                Some(one) => Ok(Some(one)),
                None => Err(Failure::Refused(format!(
                    "{} are writable primaries on the same timeline with the same promotion record ({top}): fence the stale one (ALTER SYSTEM SET default_transaction_read_only = on), then run again",
                    addresses(members, several.iter().map(|(i, _)| *i))
                ))),
            };
        }
    }
    // Fenced primaries only: a run stopped between fencing and promoting, or between
    // promoting and unfencing. Prefer one in the order's region, then the newest timeline.
    let fenced: Vec<&&&(usize, &Observed)> = tied.iter().collect();
    if let Some(here) = fenced.iter().find(|(i, _)| members[*i].region == order.to) {
        return Ok(Some(here.0));
    }
    match newest(&fenced) {
        Some(one) => Ok(Some(one)),
        None => Err(Failure::Refused(format!(
            "{} are fenced primaries on the same timeline: make one a standby of the other, then run again",
            addresses(members, fenced.iter().map(|(i, _)| *i))
        ))),
    }
}

/// After a poll that did not see what it waits for: retryable with `message` once `until` has
/// passed, otherwise a pause of [`POLL_MS`] before the next poll.
async fn poll_again(until: Instant, message: impl FnOnce() -> String) -> Result<(), Failure> {
    if Instant::now() >= until {
        return Err(Failure::Retryable(message()));
    }
    tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    Ok(())
}

/// The addresses of the members at `indexes`, joined with "and".
fn addresses(members: &[Member], indexes: impl Iterator<Item = usize>) -> String {
    indexes
        .map(|i| members[i].address.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Whether to promote a candidate `missing_bytes` of WAL short of what is known to exist.
pub fn judge_loss(
    missing_bytes: u64,
    force: bool,
    candidate: &str,
    target: Lsn,
    lag_max_ms: u64,
) -> Result<Option<String>, Failure> {
    let what = (missing_bytes > 0).then(|| {
        format!(
            "{candidate} still lacks {missing_bytes} byte(s) of WAL up to {target} after waiting promote_lag_max_ms = {lag_max_ms}"
        )
    });
    super::judge_loss(what, force, LOSS)
}

/// One line of a timeline history file: timeline `tli` was left at `switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    pub tli: u32,
    pub switch: Lsn,
}

/// Parses a `0000000N.history` file (`parentTLI<TAB>switchpoint<TAB>reason`; `#` comments).
pub fn parse_history(text: &str) -> Result<Vec<Fork>, String> {
    let mut forks = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(switch)) = (fields.next(), fields.next()) else {
            return Err(format!("timeline history line '{line}' has no switch point"));
        };
        forks.push(Fork {
            tli: tli
                .parse()
                .map_err(|_| format!("timeline history line '{line}': '{tli}' is not a timeline"))?,
            switch: Lsn::parse(switch)?,
        });
    }
    Ok(forks)
}

/// How a server joins the new primary as a standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejoinPath {
    /// It holds nothing past the fork point: streaming from the new primary is enough (a
    /// standby is repointed; a former primary restarts as a standby).
    Follow,
    /// It has WAL past the fork point the new primary never saw: `pg_rewind` first.
    Rewind { past_fork_bytes: u64, fork: Lsn },
}

/// Decides from timelines whether `server` (on timeline `tli`, at `position`) can follow a
/// primary on `primary_tli` whose history is `history`, and whether it needs `pg_rewind`. A
/// former primary (`restart`) always does once it forked: stopping it writes a shutdown
/// checkpoint past the fork point. Pure.
#[allow(clippy::too_many_arguments)]
pub fn rejoin_path(
    server: &str,
    tli: u32,
    position: Lsn,
    restart: bool,
    rewindable: &Result<(), String>,
    primary: &str,
    primary_tli: u32,
    history: &[Fork],
) -> Result<RejoinPath, String> {
    if tli == primary_tli {
        return Ok(RejoinPath::Follow);
    }
    if tli > primary_tli {
        return Err(format!(
            "{server} is on timeline {tli}, newer than {primary}'s {primary_tli}: it was promoted later; rebuild one of them with pg_basebackup"
        ));
    }
    let Some(fork) = history.iter().find(|f| f.tli == tli) else {
        return Err(format!(
            "{server}'s timeline {tli} is not in the history of {primary} (timeline {primary_tli}: {}); the two diverged before the last promotion — rebuild {server} with pg_basebackup",
            history
                .iter()
                .map(|f| format!("{} until {}", f.tli, f.switch))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if position <= fork.switch && !restart {
        return Ok(RejoinPath::Follow);
    }
    let past_fork_bytes = fork.switch.bytes_to(position);
    match rewindable {
        Ok(()) => Ok(RejoinPath::Rewind {
            past_fork_bytes,
            fork: fork.switch,
        }),
        Err(why) if past_fork_bytes == 0 => Err(format!(
            "{server} must restart as a standby, which writes a shutdown checkpoint past the fork point {} of timeline {tli}, and pg_rewind cannot repair that: {why}; rebuild it with pg_basebackup",
            fork.switch
        )),
        Err(why) => Err(format!(
            "{server} has {past_fork_bytes} byte(s) of WAL past the fork point {} of timeline {tli} that {primary} never saw, and pg_rewind cannot repair it: {why}; rebuild it with pg_basebackup",
            fork.switch
        )),
    }
}

/// Reads `host` and `port` from a libpq key/value connection string (`host=a port=5433`,
/// values optionally single-quoted with backslash escapes).
pub fn conninfo_address(conninfo: &str) -> Option<String> {
    let mut fields = BTreeMap::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        fields.insert(key, value);
    }
    let host = fields.get("host").or_else(|| fields.get("hostaddr"))?;
    let port = fields.get("port").map(String::as_str).unwrap_or("5432");
    Some(format!("{host}:{port}"))
}

/// A libpq connection-string value, quoted.
fn conninfo_value(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SQL string literal (`standard_conforming_strings` is on in our sessions).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl PostgresPromote {
    pub async fn run(&self, order: &Order) -> Outcome {
        let inner = &self.inner;
        let (observed, mut notes) = super::first_survey(&inner.members, survey(inner).await, UNREACHABLE);
        let primary = match plan(order, &inner.members, &observed)? {
            Plan::Done { primary, unfence } => {
                let record = observed[primary].as_ref().and_then(|o| o.record).unwrap_or(0);
                let member = &inner.members[primary];
                notes.push(super::already_note(
                    &member.address,
                    "primary",
                    record,
                    order.generation,
                ));
                let mut session = inner.connect(primary).await?;
                // The record before the unfence, as a promotion does (see `promote`).
                if record < order.generation {
                    session.write_record(order, member).await?;
                }
                if unfence {
                    session.unfence(inner, primary).await?;
                    notes.push(format!("{} made writable (a run had stopped before)", member.address));
                }
                primary
            }
            Plan::Promote { old, candidate } => {
                self.promote(order, &observed, old, candidate, &mut notes).await?;
                candidate
            }
        };
        let reached: Vec<bool> = observed.iter().map(Option::is_some).collect();
        self.rejoin_others(order, primary, &reached, &mut notes).await?;
        Ok(notes.join())
    }

    async fn promote(
        &self,
        order: &Order,
        observed: &[Option<Observed>],
        old: Option<usize>,
        candidate: usize,
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
                let (final_lsn, terminated) = session.fence(inner, old).await?;
                notes.push(format!(
                    "fenced old primary {} (default_transaction_read_only, {terminated} client backend(s) terminated, final LSN {final_lsn})",
                    inner.members[old].address
                ));
                if was_writable {
                    fenced_now = Some(old);
                }
                final_lsn
            }
            // Everything any standby of the newest timeline received (the candidate's own
            // included); positions on an older timeline are another history.
            None => {
                let (newest, _) = required_timeline(&inner.members, observed, None);
                observed
                    .iter()
                    .flatten()
                    .filter(|o| o.in_recovery && o.known_timeline() >= newest)
                    .map(Observed::position)
                    .max()
                    .unwrap_or_default()
            }
        };
        let mut session = inner.connect(candidate).await?;
        if let Some(old) = old
            && observed[candidate]
                .as_ref()
                .is_some_and(|o| o.upstream.is_none() && !o.streaming)
        {
            // An earlier run detached it and stopped before promoting: it catches up first.
            session.follow(inner, &inner.members[old]).await?;
            notes.push(format!(
                "{} streams from {} again to catch up",
                member.address, inner.members[old].address
            ));
        }
        if observed[candidate].as_ref().is_some_and(|o| o.replay_paused) {
            session.run("SELECT pg_wal_replay_resume()").await?;
            notes.push(format!("{} had replay paused: resumed", member.address));
        }
        let replayed = session.wait_for_replay(target, lag_max_ms).await?;
        let missing = replayed.bytes_to(target);
        let judged = judge_loss(missing, order.force_data_loss, &member.address, target, lag_max_ms);
        let unfence = fenced_now.map(|old| {
            (inner.members[old].address.as_str(), async move {
                inner.connect(old).await?.unfence(inner, old).await
            })
        });
        let loss = super::loss_or_unfence(judged, unfence, notes).await?;
        // Freeze every standby before the fork: none receives more from the old primary (a
        // fenced primary still writes checkpoints and snapshots), so the positions
        // `rejoin_others` reads decide repoint or rewind against the real fork point.
        let detach: Vec<usize> = observed
            .iter()
            .enumerate()
            .filter(|(i, o)| {
                o.as_ref()
                    .is_some_and(|o| *i == candidate || needs_detach(o, &member.address))
            })
            .map(|(i, _)| i)
            .collect();
        self.detach(&detach, notes).await?;
        // Out of recovery the candidate starts read-only and takes the record first: a region's
        // guard fences a writable primary whose record is older than the move it fences for, and
        // must never see this one so (this step's own session writes past the setting).
        session.read_only_for_new_sessions(inner, candidate).await?;
        let promoted = session
            .value_within(
                &format!("SELECT pg_promote(true, {PROMOTE_WAIT_S})"),
                PROMOTE_WAIT_S * 1000 + QUERY_TIMEOUT_MS,
            )
            .await?;
        if promoted.as_deref() != Some("t") {
            return Err(Failure::Retryable(format!(
                "{}: pg_promote did not finish within {PROMOTE_WAIT_S} s",
                member.address
            )));
        }
        let now = session.inspect().await?;
        if now.in_recovery {
            return Err(Failure::Retryable(format!(
                "{}: still in recovery after pg_promote",
                member.address
            )));
        }
        session.write_record(order, member).await?;
        session.unfence(inner, candidate).await?;
        let promoted = format!(
            "promoted {} in {} at LSN {replayed}, now timeline {}",
            member.address, member.region, now.timeline
        );
        // With no primary found every server answering is a standby, which follows a primary
        // somewhere: what only that one committed is unknown, first placement or not.
        super::note_promoted(notes, promoted, loss, super::OldPrimary::of(old, false), "standby");
        Ok(())
    }

    /// Every other server the first survey `reached` becomes a standby of `primary`: repointed when it can
    /// follow, rejoined by the `rejoin` command when it needs a restart or `pg_rewind`, left
    /// fenced and named otherwise.
    async fn rejoin_others(
        &self,
        order: &Order,
        primary: usize,
        reached: &[bool],
        notes: &mut Notes,
    ) -> Result<(), Failure> {
        let inner = &self.inner;
        let primary_address = &inner.members[primary].address;
        let mut observed = survey_reached(inner, reached).await;
        // Standbys still receiving from elsewhere (a fenced old primary, a cascade) stop first,
        // so their positions hold still while the path is decided.
        let detach: Vec<usize> = observed
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_ref().is_ok_and(|o| needs_detach(o, primary_address)))
            .map(|(i, _)| i)
            .collect();
        if !detach.is_empty() {
            self.detach(&detach, notes).await?;
            observed = survey_reached(inner, reached).await;
        }
        let primary_state = super::new_primary_state(&inner.members, &observed, primary)?;
        let primary_member = &inner.members[primary];
        let history = if primary_state.timeline > 1 {
            inner.connect(primary).await?.history(primary_state.timeline).await?
        } else {
            Vec::new()
        };
        let mut checkpointed = false;
        for (i, o) in observed.iter().enumerate() {
            let Ok(o) = o else { continue };
            if i == primary {
                continue;
            }
            let member = &inner.members[i];
            if o.in_recovery && o.upstream.as_deref() == Some(primary_member.address.as_str()) && o.streaming {
                continue;
            }
            let not_rejoined = |why: String| format!("{} left {}, not rejoined: {why}", member.address, fenced_word(o));
            let mut session = inner.connect(i).await?;
            if !o.in_recovery {
                let (final_lsn, terminated) = session.fence(inner, i).await?;
                if o.writable_primary() {
                    notes.push(format!(
                        "fenced stray primary {} ({terminated} client backend(s) terminated, final LSN {final_lsn})",
                        member.address
                    ));
                }
            }
            let position = o.position();
            let mut path = match rejoin_path(
                &member.address,
                o.timeline,
                position,
                !o.in_recovery,
                &o.rewindable,
                &primary_member.address,
                primary_state.timeline,
                &history,
            ) {
                Ok(path) => path,
                Err(why) => {
                    notes.push(not_rejoined(why));
                    continue;
                }
            };
            if o.in_recovery && path == RejoinPath::Follow {
                // A standby that streams through a slot asks the new primary for it by name:
                // without it there, its WAL receiver fails until someone creates it.
                if let Some(slot) = &o.slot {
                    let mut primary_session = inner.connect(primary).await?;
                    if primary_session.ensure_slot(slot).await? {
                        notes.push(format!(
                            "created replication slot {slot} on {} for {}",
                            primary_member.address, member.address
                        ));
                    }
                }
                match session.follow(inner, primary_member).await {
                    Ok(()) => {
                        notes.push(format!(
                            "{} now streams from {}",
                            member.address, primary_member.address
                        ));
                        continue;
                    }
                    Err(not_streaming) => {
                        // The old primary may have sent it WAL past the fork point after the
                        // survey (a fenced primary still writes checkpoints and snapshots until
                        // it stops): read its position again, and rewind it if so.
                        let fresh = session.inspect().await?;
                        match rejoin_path(
                            &member.address,
                            fresh.timeline,
                            fresh.position(),
                            false,
                            &fresh.rewindable,
                            &primary_member.address,
                            primary_state.timeline,
                            &history,
                        ) {
                            Ok(rewind @ RejoinPath::Rewind { .. }) => path = rewind,
                            Ok(RejoinPath::Follow) => return Err(not_streaming),
                            Err(why) => {
                                notes.push(not_rejoined(why));
                                continue;
                            }
                        }
                    }
                }
            }
            drop(session);
            let why = match path {
                RejoinPath::Follow => "restart as a standby".to_string(),
                RejoinPath::Rewind { past_fork_bytes, fork } => {
                    format!("pg_rewind to the fork point {fork} ({past_fork_bytes} byte(s) of WAL past it discarded)")
                }
            };
            let Some(rejoin) = &inner.rejoin else {
                notes.push(format!(
                    "{} left {}: rejoining it needs {why}; configure rejoin, or rebuild it with pg_basebackup",
                    member.address,
                    fenced_word(o)
                ));
                continue;
            };
            if !checkpointed {
                // pg_rewind reads the source's timeline from its control file, which a
                // promotion updates only at its next checkpoint.
                inner
                    .connect(primary)
                    .await?
                    .rows_within("CHECKPOINT", rejoin.timeout_ms)
                    .await?
                    .map_err(|e| {
                        Failure::Retryable(format!("{}: CHECKPOINT: {}", primary_member.address, describe(&e)))
                    })?;
                checkpointed = true;
            }
            match run_rejoin(
                inner,
                rejoin,
                order,
                i,
                primary,
                matches!(path, RejoinPath::Rewind { .. }),
            )
            .await
            {
                Ok(()) => {}
                Err(error) => {
                    notes.push(format!(
                        "{} left {}: rejoin command failed: {error}",
                        member.address,
                        fenced_word(o)
                    ));
                    continue;
                }
            }
            // The rejoined server restarts: reconnect until it streams from the primary.
            let until = Instant::now() + Duration::from_millis(FOLLOW_WAIT_MS);
            let mut last = String::from("did not answer");
            let mut slot_ensured = false;
            let streaming = loop {
                match inner.connect(i).await {
                    Ok(mut s) => match s.inspect().await {
                        Ok(now)
                            if now.in_recovery
                                && now.streaming
                                && now.upstream.as_deref() == Some(primary_member.address.as_str()) =>
                        {
                            break true;
                        }
                        Ok(now) => {
                            // Restarted with a slot (kept, or written by the command) that the
                            // new primary has not: created once, as for a repointed standby.
                            if let Some(slot) = now.slot.as_ref().filter(|_| !slot_ensured && now.in_recovery) {
                                slot_ensured = true;
                                if inner.connect(primary).await?.ensure_slot(slot).await? {
                                    notes.push(format!(
                                        "created replication slot {slot} on {} for {}",
                                        primary_member.address, member.address
                                    ));
                                }
                            }
                            last = format!(
                                "in recovery: {}, upstream {:?}, streaming: {}",
                                now.in_recovery, now.upstream, now.streaming
                            );
                        }
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= until {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            };
            if streaming {
                notes.push(format!(
                    "{} rejoined by {why} and streams from {}",
                    member.address, primary_member.address
                ));
            } else {
                notes.push(format!(
                    "{} ran the rejoin command but does not stream from {} within {FOLLOW_WAIT_MS} ms ({last})",
                    member.address, primary_member.address
                ));
            }
        }
        Ok(())
    }
}

impl PostgresPromote {
    /// Stops the WAL receivers of `standbys` (`primary_conninfo = ''` + reload, verified):
    /// their received positions are final until they are repointed or rejoined.
    async fn detach(&self, standbys: &[usize], notes: &mut Notes) -> Result<(), Failure> {
        let inner = &self.inner;
        for &i in standbys {
            let mut session = inner.connect(i).await?;
            session.detach().await?;
        }
        if !standbys.is_empty() {
            notes.push(format!(
                "detached {} from their upstream (primary_conninfo = '')",
                standbys
                    .iter()
                    .map(|i| inner.members[*i].address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}

/// A standby that streams, or is set to stream, from anything but `keep`.
fn needs_detach(o: &Observed, keep: &str) -> bool {
    o.in_recovery && (o.streaming || o.upstream.is_some()) && o.upstream.as_deref() != Some(keep)
}

fn fenced_word(o: &Observed) -> &'static str {
    if o.in_recovery {
        "a standby of its old upstream"
    } else {
        "fenced"
    }
}

/// Runs the rejoin command for `target` (bounded; killed at the bound).
async fn run_rejoin(
    inner: &Inner,
    rejoin: &Rejoin,
    order: &Order,
    target: usize,
    primary: usize,
    rewind: bool,
) -> Result<(), String> {
    let target = &inner.members[target];
    let source = &inner.members[primary];
    let mut command = tokio::process::Command::new(&rejoin.program);
    command
        .args(&rejoin.args)
        .env("SWITCHYARD_PG_TARGET", &target.address)
        .env("SWITCHYARD_PG_TARGET_HOST", &target.host)
        .env("SWITCHYARD_PG_TARGET_PORT", target.port.to_string())
        .env("SWITCHYARD_PG_SOURCE", &source.address)
        .env("SWITCHYARD_PG_SOURCE_HOST", &source.host)
        .env("SWITCHYARD_PG_SOURCE_PORT", source.port.to_string())
        .env("SWITCHYARD_PG_REWIND", if rewind { "1" } else { "0" })
        .env(
            "SWITCHYARD_PG_SOURCE_SERVER",
            format!(
                "host={} port={} user={} dbname={}",
                conninfo_value(&source.host),
                source.port,
                conninfo_value(&inner.accounts.user),
                conninfo_value(&inner.database)
            ),
        )
        .env("SWITCHYARD_PG_PRIMARY_CONNINFO", inner.primary_conninfo(source))
        .env("SWITCHYARD_GENERATION", order.generation.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = &inner.accounts.password {
        command.env("PGPASSWORD", password.expose());
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", rejoin.program))?;
    let output = tokio::time::timeout(Duration::from_millis(rejoin.timeout_ms), child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} did not finish within {} ms (killed)",
                rejoin.program, rejoin.timeout_ms
            )
        })?
        .map_err(|e| format!("{}: {e}", rejoin.program))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} exited with {}: {}",
        rejoin.program,
        output.status,
        output_tail(&output.stdout, &output.stderr, &inner.secret_forms())
    ))
}

/// What a failed rejoin command said (its stderr, else its stdout), its last
/// [`REJOIN_OUTPUT_BYTES_MAX`] bytes, with the `secrets` hidden: a script that traces its
/// commands (`set -x`) prints the `primary_conninfo` and `PGPASSWORD` it was given.
fn output_tail(stdout: &[u8], stderr: &[u8], secrets: &[String]) -> String {
    let mut text = String::from_utf8_lossy(stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(stdout).into_owned();
    }
    // Hidden before the cut, so no part of a secret is left at the start of the tail.
    let text = super::hide_secrets(text.trim(), secrets);
    let start = text.len().saturating_sub(REJOIN_OUTPUT_BYTES_MAX);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
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
        let observed = session.inspect().await?;
        Ok(super::guard::View {
            writable: observed.writable_primary(),
            follows: observed.in_recovery.then(|| {
                observed
                    .upstream
                    .clone()
                    .unwrap_or_else(|| "a primary (it is a standby)".into())
            }),
            record: observed.record,
        })
    }

    async fn fence(&self, session: &mut Session, index: usize) -> Result<super::guard::GuardOutcome, Failure> {
        let (_, ended) = session.fence(self, index).await?;
        Ok(super::guard::GuardOutcome::Fenced { ended })
    }

    async fn unfence(&self, session: &mut Session, index: usize) -> Result<(), Failure> {
        session.unfence(self, index).await
    }
}

impl Inner {
    /// The passwords as configured, as [`conninfo_value`] writes them into `primary_conninfo`,
    /// and that again as a SQL [`literal`]: hidden in failure messages and in the rejoin
    /// command's output ([`super::hide_secrets`]).
    fn secret_forms(&self) -> Vec<String> {
        [&self.accounts.password, &self.accounts.replication_password]
            .into_iter()
            .flatten()
            .flat_map(|p| {
                let conninfo = conninfo_value(p.expose());
                let inner = &conninfo[1..conninfo.len() - 1];
                let sql = literal(inner);
                [
                    p.expose().to_string(),
                    inner.to_string(),
                    sql[1..sql.len() - 1].to_string(),
                ]
            })
            .collect()
    }

    /// The statement pointing a standby at `source`.
    fn follow_statement(&self, source: &Member) -> String {
        format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            literal(&self.primary_conninfo(source))
        )
    }

    /// `primary_conninfo` for a standby of `source`.
    fn primary_conninfo(&self, source: &Member) -> String {
        let mut conninfo = format!(
            "host={} port={} user={} application_name=switchyard",
            conninfo_value(&source.host),
            source.port,
            conninfo_value(&self.accounts.replication_user)
        );
        if let Some(password) = &self.accounts.replication_password {
            conninfo.push_str(&format!(" password={}", conninfo_value(password.expose())));
        }
        conninfo
    }

    async fn connect(&self, index: usize) -> Result<Session, Failure> {
        let member = &self.members[index];
        let mut config = tokio_postgres::Config::new();
        config
            .host(&member.host)
            .port(member.port)
            .user(&self.accounts.user)
            .dbname(&self.database)
            .application_name("switchyard")
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        if let Some(password) = &self.accounts.password {
            config.password(password.expose());
        }
        let client = match &self.tls {
            None => {
                let (client, connection) =
                    super::login(&member.address, config.connect(tokio_postgres::NoTls), |e| describe(&e)).await?;
                // The connection's I/O runs beside the client; it ends when the client is dropped.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Some(tls) => {
                // TLS required: a server that refuses it is an error, never a plain fallback.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let make = super::tls::PostgresMakeTls::new(
                    tls.client_config()
                        .map_err(|problem| Failure::Refused(format!("{}: {problem}", member.address)))?,
                );
                let (client, connection) =
                    super::login(&member.address, config.connect(make), |e| describe(&e)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        let mut session = Session {
            client,
            address: member.address.clone(),
            secrets: self.secret_forms(),
        };
        // Our own statements quote one way, and write even on a fenced server.
        session
            .run("SET standard_conforming_strings = on; SET default_transaction_read_only = off")
            .await?;
        Ok(session)
    }
}

/// The server's own error text (code and message) where there is one.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// One logged-in connection to one server.
struct Session {
    client: tokio_postgres::Client,
    address: String,
    /// What failure messages never show ([`Inner::secret_forms`]).
    secrets: Vec<String>,
}

/// The message of `statement` failing on `address` with `error` (the server's words), with the
/// `secrets` hidden.
fn statement_failure(address: &str, statement: &str, error: &str, secrets: &[String]) -> String {
    super::hide_secrets(&format!("{address}: {statement}: {error}"), secrets)
}

type Rows = Vec<Vec<Option<String>>>;

impl Session {
    async fn rows_within(
        &mut self,
        statement: &str,
        timeout_ms: u64,
    ) -> Result<Result<Rows, tokio_postgres::Error>, Failure> {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.client.simple_query(statement)).await {
            Ok(Ok(messages)) => Ok(Ok(messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect())),
            Ok(Err(error)) => Ok(Err(error)),
            Err(_) => Err(Failure::Retryable(statement_failure(
                &self.address,
                statement,
                &format!("no answer within {timeout_ms} ms"),
                &self.secrets,
            ))),
        }
    }

    /// The failure of `statement` with `error`, secrets hidden.
    fn failure(&self, statement: &str, error: &tokio_postgres::Error) -> Failure {
        Failure::Retryable(statement_failure(
            &self.address,
            statement,
            &describe(error),
            &self.secrets,
        ))
    }

    async fn rows(&mut self, statement: &str) -> Result<Rows, Failure> {
        self.rows_within(statement, QUERY_TIMEOUT_MS)
            .await?
            .map_err(|e| self.failure(statement, &e))
    }

    async fn run(&mut self, statement: &str) -> Result<(), Failure> {
        self.rows(statement).await.map(|_| ())
    }

    async fn value_within(&mut self, statement: &str, timeout_ms: u64) -> Result<Option<String>, Failure> {
        let rows = self
            .rows_within(statement, timeout_ms)
            .await?
            .map_err(|e| self.failure(statement, &e))?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()).flatten())
    }

    async fn value(&mut self, statement: &str) -> Result<Option<String>, Failure> {
        self.value_within(statement, QUERY_TIMEOUT_MS).await
    }

    fn lsn(&self, text: Option<&String>) -> Result<Option<Lsn>, Failure> {
        text.map(|t| Lsn::parse(t).map_err(|e| Failure::Retryable(format!("{}: {e}", self.address))))
            .transpose()
    }

    async fn inspect(&mut self) -> Result<Observed, Failure> {
        let rows = self
            .rows(
                "SELECT current_setting('server_version_num'), pg_is_in_recovery()::text, \
                 (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only'), \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                 pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                 CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused()::text END, \
                 current_setting('primary_conninfo'), current_setting('wal_log_hints'), \
                 current_setting('data_checksums'), current_setting('full_page_writes'), \
                 (SELECT timeline_id FROM pg_control_checkpoint())::text, \
                 (SELECT received_tli FROM pg_stat_wal_receiver)::text, \
                 (SELECT status FROM pg_stat_wal_receiver), \
                 current_setting('primary_slot_name')",
            )
            .await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let get = |i: usize| row.get(i).cloned().flatten();
        // Column 2 is the server's configured value (`reset_val`): our own session turned it
        // off in `connect`.
        let version_num = get(0).and_then(|v| v.parse().ok()).unwrap_or(0);
        let in_recovery = get(1).as_deref() == Some("true");
        let current = self.lsn(get(3).as_ref())?;
        let timeline = match (get(4), get(13), get(12)) {
            (Some(walfile), _, _) => walfile.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()),
            (None, Some(received), _) => received.parse().ok(),
            (None, None, checkpoint) => checkpoint.and_then(|t| t.parse().ok()),
        }
        .unwrap_or(0);
        let rewindable = if get(11).as_deref() != Some("on") {
            Err("full_page_writes is off".to_string())
        } else if get(9).as_deref() != Some("on") && get(10).as_deref() != Some("on") {
            Err("neither wal_log_hints nor data checksums are on (set wal_log_hints = on and restart)".to_string())
        } else {
            Ok(())
        };
        let record = self.record().await?;
        Ok(Observed {
            version_num,
            in_recovery,
            read_only: get(2).as_deref() == Some("on"),
            current,
            received: self.lsn(get(5).as_ref())?,
            replayed: self.lsn(get(6).as_ref())?,
            replay_paused: get(7).as_deref() == Some("true"),
            timeline,
            upstream: if in_recovery {
                get(8).as_deref().and_then(conninfo_address)
            } else {
                None
            },
            streaming: get(14).as_deref() == Some("streaming"),
            rewindable,
            record,
            slot: get(15).filter(|slot| in_recovery && !slot.is_empty()),
            newest_history: self.newest_history().await?,
        })
    }

    /// The newest timeline whose history file is in `pg_wal` (0: none, or `pg_ls_waldir` is not
    /// allowed to the step's user: then a standby's timeline alone says what it followed).
    async fn newest_history(&mut self) -> Result<u32, Failure> {
        let statement = "SELECT max(('x' || substr(name, 1, 8))::bit(32)::int)::text FROM pg_ls_waldir() \
                         WHERE name ~ '^[0-9A-F]{8}\\.history$'";
        Ok(match self.rows_within(statement, QUERY_TIMEOUT_MS).await? {
            Ok(rows) => rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .flatten()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            Err(_) => 0,
        })
    }

    async fn record(&mut self) -> Result<Option<u64>, Failure> {
        let statement = format!("SELECT generation FROM {RECORD_TABLE} WHERE id = 1");
        match self.rows_within(&statement, QUERY_TIMEOUT_MS).await? {
            Ok(rows) => Ok(rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .flatten()
                .and_then(|g| g.parse().ok())),
            // Never promoted by Switchyard.
            Err(e) if matches!(e.code(), Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME) => {
                Ok(None)
            }
            Err(e) => Err(self.failure(&statement, &e)),
        }
    }

    /// Raises the promotion record to the order's generation (never lowers it), then reads it
    /// back: a newer generation there means a newer decision acted.
    async fn write_record(&mut self, order: &Order, member: &Member) -> Result<(), Failure> {
        if self.record().await?.is_none() {
            self.run(&format!(
                "CREATE SCHEMA IF NOT EXISTS switchyard; \
                 CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (id smallint PRIMARY KEY, generation bigint NOT NULL, \
                 primary_address text NOT NULL, region text NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        }
        let (generation, address, region) = (order.generation, literal(&member.address), literal(&member.region));
        self.run(&format!(
            "INSERT INTO {RECORD_TABLE} AS r (id, generation, primary_address, region) VALUES (1, {generation}, {address}, {region}) \
             ON CONFLICT (id) DO UPDATE SET generation = EXCLUDED.generation, primary_address = EXCLUDED.primary_address, \
             region = EXCLUDED.region, promoted_at = now() WHERE r.generation < EXCLUDED.generation"
        ))
        .await?;
        let record = self.record().await?;
        super::check_record_written(&self.address, order, record)
    }

    /// Sets `default_transaction_read_only` in the server's configuration and reloads it,
    /// waits until a new session sees it (bounded), terminates client backends, and returns
    /// the final LSN.
    async fn fence(&mut self, inner: &Inner, index: usize) -> Result<(Lsn, usize), Failure> {
        self.read_only_for_new_sessions(inner, index).await?;
        let terminated = self
            .value(&format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() LIMIT {TERMINATED_BACKENDS_MAX}) AS clients"
            ))
            .await?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // Not pg_current_wal_lsn(), what is written out of the WAL buffers: a commit under
        // synchronous_commit = off is acknowledged once inserted, before it is written. With
        // the server fenced and its clients gone, everything inserted is final.
        let rows = self.rows(FINAL_LSN_QUERY).await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let get = |i: usize| row.get(i).cloned().flatten();
        let insert = self.lsn(get(0).as_ref())?.unwrap_or_default();
        let sizes = (get(1).and_then(|b| b.parse().ok()), get(2).and_then(|s| s.parse().ok()));
        let lsn = match sizes {
            (Some(block), Some(segment)) => inserted_end(insert, block, segment),
            _ => {
                return Err(Failure::Retryable(format!(
                    "{}: {FINAL_LSN_QUERY}: no WAL block or segment size in {sizes:?}",
                    self.address
                )));
            }
        };
        Ok((lsn, terminated))
    }

    /// `default_transaction_read_only` on in the server's configuration, reloaded, and seen by
    /// a new session (a standby too: its configuration file is written, and holds after
    /// promotion).
    async fn read_only_for_new_sessions(&mut self, inner: &Inner, index: usize) -> Result<(), Failure> {
        self.run("ALTER SYSTEM SET default_transaction_read_only = on").await?;
        self.run("SELECT pg_reload_conf()").await?;
        self.wait_setting(inner, index, "on").await
    }

    async fn unfence(&mut self, inner: &Inner, index: usize) -> Result<(), Failure> {
        self.run("ALTER SYSTEM RESET default_transaction_read_only").await?;
        self.run("SELECT pg_reload_conf()").await?;
        self.wait_setting(inner, index, "off").await
    }

    /// Waits (bounded) until a new session on the server starts with
    /// `default_transaction_read_only` = `value` (the reload is asynchronous).
    async fn wait_setting(&mut self, inner: &Inner, index: usize, value: &str) -> Result<(), Failure> {
        let until = Instant::now() + Duration::from_millis(QUERY_TIMEOUT_MS);
        loop {
            // `connect` turns it off in its own session: read the server's value instead.
            let seen = inner
                .connect(index)
                .await?
                .value("SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only'")
                .await?;
            if seen.as_deref() == Some(value) {
                return Ok(());
            }
            poll_again(until, || {
                format!(
                    "{}: default_transaction_read_only reads {seen:?} in new sessions {QUERY_TIMEOUT_MS} ms after the reload, not {value}",
                    self.address
                )
            })
            .await?;
        }
    }

    /// Waits at most `timeout_ms` until the standby replayed `target`; returns what it replayed.
    async fn wait_for_replay(&mut self, target: Lsn, timeout_ms: u64) -> Result<Lsn, Failure> {
        let until = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let replayed = self.value("SELECT pg_last_wal_replay_lsn()::text").await?;
            let replayed = self.lsn(replayed.as_ref())?.unwrap_or_default();
            if replayed >= target || Instant::now() >= until {
                return Ok(replayed);
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// The switch points of every timeline before `timeline` (`pg_read_file` of its history).
    async fn history(&mut self, timeline: u32) -> Result<Vec<Fork>, Failure> {
        let text = self
            .value(&format!("SELECT pg_read_file('pg_wal/{timeline:08X}.history')"))
            .await?
            .unwrap_or_default();
        parse_history(&text).map_err(|e| Failure::Retryable(format!("{}: {e}", self.address)))
    }

    /// Empties `primary_conninfo` and reloads, then waits (bounded) until the WAL receiver is
    /// gone: nothing more arrives from the old upstream.
    async fn detach(&mut self) -> Result<(), Failure> {
        self.run("ALTER SYSTEM SET primary_conninfo = ''").await?;
        self.run("SELECT pg_reload_conf()").await?;
        let until = Instant::now() + Duration::from_millis(DETACH_WAIT_MS);
        loop {
            let receivers = self.value("SELECT count(*) FROM pg_stat_wal_receiver").await?;
            if receivers.as_deref() == Some("0") {
                return Ok(());
            }
            poll_again(until, || {
                format!(
                    "{}: its WAL receiver still runs {DETACH_WAIT_MS} ms after primary_conninfo = '' and a reload",
                    self.address
                )
            })
            .await?;
        }
    }

    /// Creates the physical replication slot `slot` unless it exists; whether it was created.
    /// It reserves WAL from the standby's first connection only (`immediately_reserve =>
    /// false`): a standby that never connects (left fenced, rejoin failed) holds no WAL back
    /// on the new primary.
    async fn ensure_slot(&mut self, slot: &str) -> Result<bool, Failure> {
        let slot = literal(slot);
        let rows = self
            .rows(&format!(
                "SELECT pg_create_physical_replication_slot({slot}, false) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    /// Points a standby at `primary` (`primary_conninfo` + reload) and waits (bounded) until
    /// its WAL receiver streams from it.
    async fn follow(&mut self, inner: &Inner, primary: &Member) -> Result<(), Failure> {
        self.run(&inner.follow_statement(primary)).await?;
        // A standby in recovery refuses writes anyway; a candidate a run set read-only before a
        // `pg_promote` that never came (another standby was chosen) must not keep the setting
        // into a later promotion of its own.
        self.run("ALTER SYSTEM RESET default_transaction_read_only").await?;
        self.run("SELECT pg_reload_conf()").await?;
        let until = Instant::now() + Duration::from_millis(FOLLOW_WAIT_MS);
        loop {
            let rows = self
                .rows("SELECT status, sender_host, sender_port::text FROM pg_stat_wal_receiver")
                .await?;
            let row = rows.into_iter().next().unwrap_or_default();
            let get = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let streaming_from = format!("{}:{}", get(1), get(2));
            if get(0) == "streaming" && streaming_from == primary.address {
                return Ok(());
            }
            poll_again(until, || {
                format!(
                    "{}: does not stream from {} within {FOLLOW_WAIT_MS} ms after repointing (WAL receiver: {} from {streaming_from}); see its log",
                    self.address,
                    primary.address,
                    if get(0).is_empty() {
                        "not running".to_string()
                    } else {
                        get(0)
                    }
                )
            })
            .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::{Collect, accepted, assert_refused};

    use crate::db::test_support::order;

    fn members() -> Vec<Member> {
        crate::db::test_support::members(5432)
    }

    fn primary(lsn: u64, timeline: u32, record: Option<u64>) -> Observed {
        Observed {
            version_num: 150_010,
            in_recovery: false,
            read_only: false,
            current: Some(Lsn(lsn)),
            received: None,
            replayed: None,
            replay_paused: false,
            timeline,
            upstream: None,
            streaming: false,
            rewindable: Ok(()),
            record,
            slot: None,
            newest_history: 0,
        }
    }

    fn standby(received: u64, replayed: u64) -> Observed {
        Observed {
            in_recovery: true,
            read_only: false,
            current: None,
            received: Some(Lsn(received)),
            replayed: Some(Lsn(replayed)),
            upstream: Some("a:5432".into()),
            streaming: true,
            ..primary(0, 1, None)
        }
    }

    #[test]
    fn a_standby_that_never_followed_the_primary_s_timeline_is_no_candidate() {
        // b (us) was promoted to timeline 2; a (eu) stayed cut off with the old primary, which
        // kept writing on timeline 1: a is "ahead" in bytes of another history. Failing back to
        // eu must not promote it.
        let members = members();
        let stale = standby(900, 900);
        let observed = vec![Some(stale.clone()), Some(primary(500, 2, Some(5))), None];
        let order = order(6, "eu", false);
        let Err(Failure::Refused(message)) = plan(&order, &members, &observed) else {
            panic!("refused");
        };
        assert!(
            message.contains("a:5432 is on timeline 1 and never followed timeline 2 (the primary b:5432's)"),
            "{message}"
        );
        // One that followed (its history file holds timeline 2, its checkpoint still reads 1).
        let followed = Observed {
            newest_history: 2,
            ..stale.clone()
        };
        let observed = vec![Some(followed), Some(primary(500, 2, Some(5))), None];
        assert_eq!(
            plan(&order, &members, &observed).expect("plan"),
            Plan::Promote {
                old: Some(1),
                candidate: 0
            }
        );
        // With the primary gone, the newest timeline any standby followed is required.
        let observed = vec![
            Some(stale),
            None,
            Some(Observed {
                timeline: 2,
                ..standby(100, 100)
            }),
        ];
        assert_eq!(required_timeline(&members, &observed, None).0, 2);
        assert!(matches!(
            plan(&order, &members, &observed),
            Err(Failure::Refused(m)) if m.contains("never followed timeline 2 (followed by c:5432)")
        ));
    }

    #[test]
    fn the_final_position_is_the_insert_position_without_a_page_header_it_points_past() {
        // Not the write position: a commit acknowledged under synchronous_commit = off may
        // still be in the WAL buffers, past it.
        assert!(FINAL_LSN_QUERY.starts_with("SELECT pg_current_wal_insert_lsn()"));
        assert!(!FINAL_LSN_QUERY.contains("pg_current_wal_lsn()"));
        let (block, segment) = (8192, 16 << 20);
        // Mid-page: the end of the last record.
        assert_eq!(inserted_end(Lsn(0x300_0148), block, segment), Lsn(0x300_0148));
        // At the start of a page, or of a segment: past its header.
        assert_eq!(inserted_end(Lsn(0x300_2018), block, segment), Lsn(0x300_2000));
        assert_eq!(inserted_end(Lsn(0x400_0028), block, segment), Lsn(0x400_0000));
        // A record ending 24 bytes into a segment's first page is past the 40-byte header.
        assert_eq!(inserted_end(Lsn(0x400_0018), block, segment), Lsn(0x400_0018));
        assert_eq!(inserted_end(Lsn(24), 0, 0), Lsn(24), "no size: no header taken off");
    }

    #[test]
    fn lsns_parse_print_and_count_bytes() {
        let lsn = Lsn::parse("16/B374D848").expect("lsn");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(
            Lsn::parse("0/3000148")
                .expect("lsn")
                .bytes_to(Lsn::parse("0/3000200").expect("lsn")),
            0xB8
        );
        assert_eq!(Lsn(10).bytes_to(Lsn(5)), 0);
        assert!(Lsn::parse("3000148").is_err());
        assert!(Lsn::parse("x/1").is_err());
    }

    #[test]
    fn the_standby_of_the_region_that_received_most_is_the_candidate() {
        let observed = vec![
            Some(primary(1000, 1, None)),
            Some(standby(900, 900)),
            Some(standby(990, 500)),
        ];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: Some(0),
                candidate: 2
            }
        );
        // Equal received: the one that replayed more, then the first listed.
        let observed = vec![None, Some(standby(990, 980)), Some(standby(990, 500))];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Promote {
                old: None,
                candidate: 1
            }
        );
        assert!(matches!(
            plan(&order(7, "us", false), &members(), &[None, None, None]),
            Err(Failure::Retryable(_))
        ));
    }

    #[test]
    fn a_promoted_standby_is_done_and_a_run_stopped_before_unfencing_finishes() {
        // Crash after pg_promote, before the record: b is writable on timeline 2, a fenced.
        let fenced_a = Observed {
            read_only: true,
            ..primary(1000, 1, Some(3))
        };
        let observed = vec![
            Some(fenced_a.clone()),
            Some(primary(1200, 2, Some(3))),
            Some(standby(1000, 1000)),
        ];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Done {
                primary: 1,
                unfence: false
            }
        );
        // Both writable with the same record: the newer timeline wins.
        let observed = vec![Some(primary(1000, 1, Some(3))), Some(primary(1200, 2, Some(3))), None];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Done {
                primary: 1,
                unfence: false
            }
        );
        // Same timeline: refused, naming both.
        let observed = vec![Some(primary(1000, 2, None)), Some(primary(1200, 2, None)), None];
        let Err(Failure::Refused(message)) = plan(&order(7, "us", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("a:5432 and b:5432"), "{message}");
        // Promoted but still fenced (it was a fenced ex-primary): unfence it.
        let observed = vec![
            Some(fenced_a),
            Some(Observed {
                read_only: true,
                ..primary(1200, 2, Some(3))
            }),
            None,
        ];
        assert_eq!(
            plan(&order(7, "us", false), &members(), &observed).expect("plan"),
            Plan::Done {
                primary: 1,
                unfence: true
            }
        );
    }

    #[test]
    fn a_newer_record_fences_and_a_stale_primary_loses_to_it() {
        let observed = vec![
            Some(primary(1500, 1, Some(2))),
            Some(primary(1200, 2, Some(7))),
            Some(standby(1200, 1200)),
        ];
        assert!(matches!(
            plan(&order(6, "eu", false), &members(), &observed),
            Err(Failure::Fenced(_))
        ));
        // Failing back to eu: a is a former primary, not a standby; it must rejoin first.
        let observed = vec![Some(primary(1500, 1, Some(2))), Some(primary(1200, 2, Some(7))), None];
        let Err(Failure::Refused(message)) = plan(&order(8, "eu", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("a:5432 is a former primary"), "{message}");
    }

    #[test]
    fn old_servers_are_refused() {
        let observed = vec![
            Some(Observed {
                version_num: 120_004,
                ..primary(1, 1, None)
            }),
            None,
            None,
        ];
        let Err(Failure::Refused(message)) = plan(&order(2, "us", false), &members(), &observed) else {
            panic!("refused");
        };
        assert!(message.contains("PostgreSQL 12.4"), "{message}");
    }

    #[test]
    fn loss_is_refused_unless_forced_and_counted_in_bytes() {
        let Err(Failure::Refused(message)) = judge_loss(4096, false, "b:5432", Lsn(0x3000000), 300) else {
            panic!("refused");
        };
        assert!(message.contains("4096 byte(s) of WAL up to 0/3000000"), "{message}");
        assert!(message.contains("--force-data-loss"), "{message}");
        let forced = judge_loss(4096, true, "b", Lsn(1), 300)
            .expect("forced")
            .expect("a note");
        assert!(forced.contains("lost"), "{forced}");
        assert_eq!(judge_loss(0, false, "b", Lsn(1), 300), Ok(None));
    }

    #[test]
    fn timelines_decide_follow_rewind_or_refusal() {
        let history =
            parse_history("1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n")
                .expect("history");
        assert_eq!(
            history,
            vec![
                Fork {
                    tli: 1,
                    switch: Lsn(0x3000148)
                },
                Fork {
                    tli: 2,
                    switch: Lsn(0x5000000)
                }
            ]
        );
        let ok = Ok(());
        assert_eq!(
            rejoin_path("a", 1, Lsn(0x3000100), false, &ok, "b", 3, &history),
            Ok(RejoinPath::Follow)
        );
        // A former primary restarts, writing past the fork point: pg_rewind even so.
        assert_eq!(
            rejoin_path("a", 1, Lsn(0x3000100), true, &ok, "b", 3, &history),
            Ok(RejoinPath::Rewind {
                past_fork_bytes: 0,
                fork: Lsn(0x3000148)
            })
        );
        assert_eq!(
            rejoin_path("a", 1, Lsn(0x3000200), false, &ok, "b", 3, &history),
            Ok(RejoinPath::Rewind {
                past_fork_bytes: 0xB8,
                fork: Lsn(0x3000148)
            })
        );
        assert_eq!(
            rejoin_path("a", 3, Lsn(1), false, &ok, "b", 3, &history),
            Ok(RejoinPath::Follow)
        );
        let no_hints = Err("neither wal_log_hints nor data checksums are on".to_string());
        let refused = rejoin_path("a", 2, Lsn(0x5000010), false, &no_hints, "b", 3, &history).expect_err("refused");
        assert!(
            refused.contains("16 byte(s) of WAL past the fork point 0/5000000 of timeline 2")
                && refused.contains("wal_log_hints"),
            "{refused}"
        );
        let restart = rejoin_path("a", 1, Lsn(1), true, &no_hints, "b", 3, &history).expect_err("refused");
        assert!(restart.contains("shutdown checkpoint"), "{restart}");
        let unrelated = rejoin_path("a", 4, Lsn(1), false, &ok, "b", 3, &history).expect_err("newer");
        assert!(unrelated.contains("newer"), "{unrelated}");
        let missing = rejoin_path("a", 1, Lsn(1), false, &ok, "b", 3, &history[1..]).expect_err("not in history");
        assert!(missing.contains("not in the history"), "{missing}");
        assert!(parse_history("1").is_err());
    }

    #[test]
    fn conninfo_addresses_are_read_with_quoting() {
        assert_eq!(
            conninfo_address("user=repl password='it''s' host=10.0.0.5 port=5433").as_deref(),
            None,
            "'' is not libpq quoting"
        );
        assert_eq!(
            conninfo_address("user=repl password='it\\'s x' host=10.0.0.5 port=5433 sslmode=prefer").as_deref(),
            Some("10.0.0.5:5433")
        );
        assert_eq!(conninfo_address("host = db1 ").as_deref(), Some("db1:5432"));
        assert_eq!(conninfo_address("").as_deref(), None);
        assert_eq!(conninfo_value("it's\\"), "'it\\'s\\\\'");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn failure_messages_and_the_rejoin_output_never_show_the_passwords() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let password = r"re'pl\pa ss";
        std::fs::write(dir.path().join("sw"), "sw-s3cret\n").expect("write");
        std::fs::write(dir.path().join("repl"), format!("{password}\n")).expect("write");
        let step = accepted(
            &format!(
                "servers = {{ eu = [\"a\"], us = [\"b\"] }}\nuser = \"postgres\"\nreplication_user = \"repl\"\n\
                 password = {{ file = {:?} }}\nreplication_password = {{ file = {:?} }}\n",
                dir.path().join("sw"),
                dir.path().join("repl")
            ),
            |settings: &Settings, checker: &mut Collect| settings.check("db", checker),
        );
        let inner = &step.inner;
        let secrets = inner.secret_forms();
        let statement = inner.follow_statement(&members()[0]);
        assert!(statement.contains(r"password=''re\''pl"), "{statement}");
        let message = statement_failure("b:5432", &statement, "no answer within 5000 ms", &secrets);
        assert!(!message.contains("re\\''pl") && !message.contains("pa ss"), "{message}");
        assert!(
            message.contains("password=''<hidden>''") && message.contains("user=''repl''"),
            "{message}"
        );
        // A rejoin script tracing its commands prints what it was given.
        let traced = format!(
            "+ export PGPASSWORD=sw-s3cret\n+ echo \"primary_conninfo = '{}'\"\npg_rewind: error",
            inner.primary_conninfo(&members()[0])
        );
        let tail = output_tail(b"", traced.as_bytes(), &secrets);
        assert!(!tail.contains("sw-s3cret") && !tail.contains("pa ss"), "{tail}");
        assert!(tail.ends_with("pg_rewind: error"), "{tail}");
        assert_eq!(output_tail(b"only stdout", b"  ", &secrets), "only stdout");
    }

    #[test]
    fn settings_name_every_problem() {
        let text = r#"
            servers = { eu = ["a:5432"], mars = ["b:99999"] }
            user = ""
            replication_user = "repl"
            password = { env = "SWITCHYARD_TEST_UNSET_PG" }
            promote_lag_max_ms = 900000
            rejoin = { program = "/nonexistent/pg-rejoin", timeout_ms = 0 }
        "#;
        let check = |settings: &Settings, checker: &mut Collect| settings.check("db", checker);
        assert_refused(
            text,
            check,
            &[
                "region 'mars'",
                "port '99999'",
                "user ''",
                "SWITCHYARD_TEST_UNSET_PG",
                "promote_lag_max_ms = 900000",
                "/nonexistent/pg-rejoin does not exist",
                "rejoin timeout_ms = 0",
            ],
        );
        let step = accepted(
            "servers = { eu = [\"a\"], us = [\"b:5433\"] }\nuser = \"postgres\"\nreplication_user = \"repl\"\n",
            check,
        );
        assert_eq!(step.members()[0].address, "a:5432");
        assert_eq!(step.inner.database, "postgres");
        assert_eq!(
            step.timeout_needed_ms(),
            super::super::PROMOTE_LAG_MS_DEFAULT
                + super::super::STEP_OVERHEAD_MS
                + PROMOTE_WAIT_S * 1000
                + FOLLOW_WAIT_MS
                + DETACH_WAIT_MS
        );
    }
}
