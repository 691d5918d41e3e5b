//! Database promotion steps: `mysql_promote` (MariaDB 10.x and MySQL 8 with GTIDs),
//! `postgres_promote` (PostgreSQL 13+ streaming replication) and `redis_promote`. Each step knows every server of one replicated database, grouped by
//! region; an order moves the primary into the order's new active region, fences the old one
//! and points every other server at the new primary.
//!
//! Which server is the primary is decided from what the servers say, and from a *promotion
//! record* the step writes on the primary it promotes (MySQL and PostgreSQL: the row
//! `switchyard.promotion`; Redis: the key `switchyard:promotion`), holding the order's generation. The record
//! replicates, so a server that was cut off and comes back still writable shows an older
//! record than the real primary: it is fenced on sight and never mistaken for the primary. The
//! record is also the compare-and-set: a record newer than the order means a newer decision
//! already acted ([`crate::Failure::Fenced`]), and re-running an order whose promotion is done
//! (a retry, a controller that crashed mid-runbook and rolls forward) promotes nothing twice.

use std::collections::BTreeMap;

use toml::Spanned;

use crate::{Checker, Failure, Order};

/// Servers one step may know (all regions together).
pub const SERVERS_MAX: usize = 32;
/// Longest wait for a server's TCP connection and login.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Longest wait for one statement or command (the catch-up wait has its own bound).
pub const QUERY_TIMEOUT_MS: u64 = 5_000;
/// `promote_lag_max_ms` when the settings leave it out.
pub const PROMOTE_LAG_MS_DEFAULT: u64 = 5_000;
/// Largest `promote_lag_max_ms` accepted (the step waits this long at most to catch up).
pub const PROMOTE_LAG_MS_MAX: u64 = 300_000;
/// What a run needs beyond `promote_lag_max_ms` (surveys, fencing, promotion, rejoins, each
/// bounded by the timeouts above), besides each step's own waits (MySQL's relay-log drain,
/// `mysql::RELAY_DRAIN_MS`): the step's `timeout_ms` must leave at least this much.
pub const STEP_OVERHEAD_MS: u64 = 10_000;
/// Notes kept in one outcome line; the rest are counted.
pub const NOTES_MAX: usize = 16;

/// Declares a promote step's `[runbook.<kind>]` table, `Settings`: the keys every database step
/// has (`servers`, `password`, `promote_lag_max_ms`, and `tls`, `ca_file`, `cert_file`,
/// `key_file`: see [`tls`]), then the step's own fields, with [`Shared`]'s checks. A macro
/// because unknown keys are refused (`deny_unknown_fields`), which serde cannot combine with a
/// flattened shared struct, and `toml::Spanned` keeps no position inside one.
macro_rules! promote_settings {
    // A step whose servers replicate with an account of their own (MySQL, PostgreSQL): its
    // `user`, `replication_user` and `replication_password`, and `check_accounts`.
    (replicating $(#[$meta:meta])* pub struct Settings { $($own:tt)* }) => {
        promote_settings! {
            $(#[$meta])*
            pub struct Settings {
                /// The account the step logs in with (PostgreSQL: a superuser).
                pub user: ::toml::Spanned<String>,
                /// The account replicas use to replicate from the new primary.
                pub replication_user: ::toml::Spanned<String>,
                #[serde(default)]
                pub replication_password: Option<::toml::Spanned<$crate::secret::SecretSource>>,
                $($own)*
            }
        }

        impl Settings {
            /// The keys `check_shared` checked (`shared`) with the step's accounts, or `None`
            /// when any problem was reported.
            fn check_accounts(
                &self,
                what: &str,
                shared: super::Shared,
                checker: &mut dyn $crate::Checker,
            ) -> Option<(Vec<super::Member>, Option<super::tls::Tls>, super::Accounts)> {
                let replication_password =
                    super::resolve_secret(what, "replication_password", &self.replication_password, checker);
                let (Some(members), Some(password), Some(replication_password), Some(tls), true) = (
                    shared.members,
                    shared.password,
                    replication_password,
                    shared.tls,
                    shared.ok,
                ) else {
                    return None;
                };
                let accounts = super::Accounts {
                    user: self.user.get_ref().clone(),
                    password,
                    replication_user: self.replication_user.get_ref().clone(),
                    replication_password,
                };
                Some((members, tls, accounts))
            }
        }
    };
    ($(#[$meta:meta])* pub struct Settings { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            /// Per region, its servers: `{ eu = ["db1.eu"], us = ["db1.us:5432", "db2.us"] }`
            /// (the port defaults to the database's usual one).
            pub servers: ::toml::Spanned<::std::collections::BTreeMap<String, Vec<::toml::Spanned<String>>>>,
            /// The step's password (its user is the step's own key).
            #[serde(default)]
            pub password: Option<::toml::Spanned<$crate::secret::SecretSource>>,
            /// How long the step waits for the candidate to catch up with everything known to
            /// exist; one still behind after that is refused unless the order forces data loss.
            #[serde(default = "super::default_promote_lag_max_ms")]
            pub promote_lag_max_ms: ::toml::Spanned<u64>,
            /// TLS to the servers (`tls = true`, `ca_file`, `cert_file` + `key_file`): see
            /// [`super::tls`].
            #[serde(default)]
            pub tls: Option<::toml::Spanned<bool>>,
            #[serde(default)]
            pub ca_file: Option<::toml::Spanned<::std::path::PathBuf>>,
            #[serde(default)]
            pub cert_file: Option<::toml::Spanned<::std::path::PathBuf>>,
            #[serde(default)]
            pub key_file: Option<::toml::Spanned<::std::path::PathBuf>>,
            $($own)*
        }

        impl Settings {
            /// Checks the keys every database step has: how errors name the step (`kind`
            /// step 'step'), and the checked keys.
            fn check_shared(
                &self,
                (kind, step): (&str, &str),
                default_port: u16,
                checker: &mut dyn $crate::Checker,
            ) -> (String, super::Shared) {
                let what = format!("{kind} step '{step}'");
                let what = what.as_str();
                let tls = super::tls::TlsSettings {
                    tls: self.tls.clone(),
                    ca_file: self.ca_file.clone(),
                    cert_file: self.cert_file.clone(),
                    key_file: self.key_file.clone(),
                }
                .check(what, checker);
                let members = super::check_servers(what, &self.servers, default_port, checker);
                let ok = super::check_lag(what, &self.promote_lag_max_ms, checker);
                let password = super::resolve_secret(what, "password", &self.password, checker);
                let shared = super::Shared {
                    members,
                    tls,
                    ok,
                    password,
                };
                (what.to_string(), shared)
            }
        }
    };
}

/// Declares a module's `survey(inner)`: every member inspected concurrently through
/// `Inner::connect(index)` and the session's `$read()` ([`survey`]).
macro_rules! survey_by {
    ($read:ident) => {
        /// Inspects every member concurrently, each bounded.
        async fn survey(inner: &Arc<Inner>) -> Vec<Result<Observed, String>> {
            super::survey(inner.members.len(), |index| {
                let inner = Arc::clone(inner);
                async move { inner.connect(index).await?.$read().await }
            })
            .await
        }

        /// Inspects the members the run's first survey reached (`reached[i]`), concurrently
        /// ([`super::survey_asking`]).
        async fn survey_reached(inner: &Arc<Inner>, reached: &[bool]) -> Vec<Result<Observed, String>> {
            super::survey_asking(reached, |index| {
                let inner = Arc::clone(inner);
                async move { inner.connect(index).await?.$read().await }
            })
            .await
        }
    };
}

/// The methods every promote step has (`$step` holds `inner: Arc<Inner>`, whose `members` and
/// `promote_lag_max_ms` they read, and `Inner` is [`guard::Guarded`]): its servers, the guard's
/// fence and unfence, and the shortest step `timeout_ms` that never
/// cuts a run short between fencing and promoting — the catch-up bound, [`STEP_OVERHEAD_MS`]
/// and `$waits_ms`, the step's own bounded waits (an expression of `$inner`, the `Inner`); and
/// the module's `survey` ([`survey_by`]).
macro_rules! promote_step {
    ($step:ident, survey by $read:ident, waits |$inner:ident| $waits_ms:expr) => {
        survey_by!($read);

        impl $step {
            pub fn members(&self) -> &[super::Member] {
                &self.inner.members
            }

            /// `switchyard guard`: fences every server of `region` that takes writes, as a
            /// failover fences an old primary; with `older_than` only one promoted before that
            /// generation ([`super::guard::fence_applies`]). A replica, or a server that refuses
            /// writes already, is left alone.
            pub async fn guard_fence(&self, region: &str, older_than: Option<u64>) -> Vec<super::guard::GuardReport> {
                super::guard::fence_region(&self.inner, region, older_than).await
            }

            /// `switchyard guard`: makes the servers of `region` at `addresses` writable again,
            /// each only while it replicates from nobody; with `promoted_since` only one promoted
            /// since ([`super::guard::unfence_applies`]).
            pub async fn guard_unfence(
                &self,
                region: &str,
                addresses: &[String],
                promoted_since: Option<u64>,
            ) -> Vec<super::guard::GuardReport> {
                super::guard::unfence_named(&self.inner, region, addresses, promoted_since).await
            }

            pub fn timeout_needed_ms(&self) -> u64 {
                let $inner = &self.inner;
                $inner
                    .promote_lag_max_ms
                    .saturating_add(super::STEP_OVERHEAD_MS)
                    .saturating_add($waits_ms)
            }
        }
    };
}

/// Surveys `members` (`surveyed`, from [`survey`]) at the start of a run: what each reachable
/// one said, and the run's notes, naming the unreachable ones and the `consequence`.
pub(crate) fn first_survey<T>(
    members: &[Member],
    surveyed: Vec<Result<T, String>>,
    consequence: &str,
) -> (Vec<Option<T>>, Notes) {
    let mut notes = Notes::default();
    let observed = note_unreachable(members, surveyed, consequence, &mut notes);
    (observed, notes)
}

/// The keys every database step has, checked: `None` where a problem was reported.
pub(crate) struct Shared {
    pub members: Option<Vec<Member>>,
    pub tls: Option<Option<tls::Tls>>,
    /// False once a problem was reported that no `None` here shows (the step's own keys
    /// set it too).
    pub ok: bool,
    pub password: Option<Option<crate::secret::Secret>>,
}

/// The accounts of a step whose servers replicate with an account of their own (MySQL,
/// PostgreSQL): the one the step logs in with, and the one replicas use.
#[derive(Debug)]
pub(crate) struct Accounts {
    pub user: String,
    pub password: Option<crate::secret::Secret>,
    pub replication_user: String,
    pub replication_password: Option<crate::secret::Secret>,
}

/// Resolves an optional secret setting (`name`): `Some(None)` when it is left out, `None`
/// when it was reported.
pub(crate) fn resolve_secret(
    what: &str,
    name: &str,
    source: &Option<Spanned<crate::secret::SecretSource>>,
    checker: &mut dyn Checker,
) -> Option<Option<crate::secret::Secret>> {
    match source {
        None => Some(None),
        Some(source) => source
            .get_ref()
            .resolve(source.span(), &format!("{what} {name}"), checker)
            .map(Some),
    }
}

pub mod binlog;
pub mod gtid;
pub mod guard;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod tls;

/// One configured server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `host:port` as configured; also what replicas are pointed at.
    pub address: String,
    pub host: String,
    pub port: u16,
    pub region: String,
}

/// Checks `servers = { region = ["host:port", ...] }`: known regions, well-formed and unique
/// addresses, at least one server, at most [`SERVERS_MAX`].
pub(crate) fn check_servers(
    what: &str,
    servers: &Spanned<BTreeMap<String, Vec<Spanned<String>>>>,
    default_port: u16,
    checker: &mut dyn Checker,
) -> Option<Vec<Member>> {
    let mut members = Vec::new();
    let mut ok = true;
    let total: usize = servers.get_ref().values().map(Vec::len).sum();
    if total == 0 {
        checker.error(
            servers.span(),
            format!("{what}: servers lists no server"),
            "list each region's servers, like servers = { eu = [\"db-eu:3306\"], us = [\"db-us:3306\"] }".into(),
        );
        return None;
    }
    if total > SERVERS_MAX {
        checker.error(
            servers.span(),
            format!("{what}: {total} servers, more than {SERVERS_MAX}"),
            "one step promotes one replicated database; split unrelated databases into steps".into(),
        );
        return None;
    }
    let regions = checker.regions().clone();
    for (region, list) in servers.get_ref() {
        if !regions.contains(region) {
            checker.error(
                servers.span(),
                format!("{what}: servers names region '{region}', which is not configured"),
                format!(
                    "use the names of [[regions]]: {}",
                    regions.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            ok = false;
        }
        for address in list {
            match parse_address(address.get_ref(), default_port) {
                Ok((host, port)) => {
                    let shown = format!("{host}:{port}");
                    if members.iter().any(|m: &Member| m.address == shown) {
                        checker.error(
                            address.span(),
                            format!("{what}: server {shown} is listed twice"),
                            "list each server once, under its region".into(),
                        );
                        ok = false;
                    }
                    members.push(Member {
                        address: shown,
                        host,
                        port,
                        region: region.clone(),
                    });
                }
                Err(message) => {
                    checker.error(
                        address.span(),
                        format!("{what}: {message}"),
                        format!("write host:port, like \"10.0.1.5:{default_port}\" or \"db1.eu.internal\""),
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(members)
}

/// `host[:port]`; hosts are names or IPv4/IPv6 addresses (`[::1]:3306`), nothing that needs
/// quoting in a statement.
pub(crate) fn parse_address(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{text}' opens '[' without closing it"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("'{text}' has text after ']' that is not :port")),
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.len() > 253 {
        return Err(format!("'{text}' has no host name"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':' || c == '_')
    {
        return Err(format!(
            "'{text}': the host may hold letters, digits, '.', '-', '_' and ':' only"
        ));
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("'{text}': port '{port}' is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_string(), port))
}

/// Checks a lag bound: at most [`PROMOTE_LAG_MS_MAX`].
pub(crate) fn check_lag(what: &str, lag: &Spanned<u64>, checker: &mut dyn Checker) -> bool {
    if *lag.get_ref() > PROMOTE_LAG_MS_MAX {
        checker.error(
            lag.span(),
            format!(
                "{what}: promote_lag_max_ms = {} is more than {PROMOTE_LAG_MS_MAX}",
                lag.get_ref()
            ),
            "the step waits this long at most for the new primary to catch up; use a few seconds".into(),
        );
        return false;
    }
    true
}

pub(crate) fn default_promote_lag_max_ms() -> Spanned<u64> {
    Spanned::new(0..0, PROMOTE_LAG_MS_DEFAULT)
}

/// Inspects every member concurrently (`inspect(i)` is bounded by its own timeouts); one
/// result per member, in order, a failure as its text.
pub(crate) async fn survey<T, F, Fut>(count: usize, inspect: F) -> Vec<Result<T, String>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
{
    survey_asking(&vec![true; count], inspect).await
}

/// What a later survey of a run answers for a member the run's first survey could not reach.
pub(crate) const NOT_ASKED_AGAIN: &str = "unreachable in this run's first survey: not asked again";

/// [`survey`] of the members whose `ask` is true; the others answer [`NOT_ASKED_AGAIN`]. A
/// run's later surveys ask only the members its first survey reached: in a partition an
/// unreachable server costs each survey its whole connection timeout
/// ([`CONNECT_TIMEOUT_MS`]), and one that answers again is fenced on sight by its older
/// promotion record (the next run, or its region's guard) all the same.
pub(crate) async fn survey_asking<T, F, Fut>(ask: &[bool], inspect: F) -> Vec<Result<T, String>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
{
    let count = ask.len();
    let mut tasks = tokio::task::JoinSet::new();
    for index in (0..count).filter(|&i| ask[i]) {
        let inspecting = inspect(index);
        tasks.spawn(async move { (index, inspecting.await.map_err(|f| f.to_string())) });
    }
    let mut results: Vec<Result<T, String>> = (0..count)
        .map(|i| Err(if ask[i] { "not inspected" } else { NOT_ASKED_AGAIN }.to_string()))
        .collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined {
            results[index] = result;
        }
    }
    results
}

/// The survey's results as `Some` for the members that answered; a note for each one that did
/// not: `ADDRESS unreachable (ERROR): CONSEQUENCE`.
pub(crate) fn note_unreachable<T>(
    members: &[Member],
    surveyed: Vec<Result<T, String>>,
    consequence: &str,
    notes: &mut Notes,
) -> Vec<Option<T>> {
    for (member, result) in members.iter().zip(&surveyed) {
        if let Err(error) = result {
            notes.push(format!("{} unreachable ({error}): {consequence}", member.address));
        }
    }
    surveyed.into_iter().map(Result::ok).collect()
}

/// The members that answered, with their index.
pub(crate) fn reachable<T>(observed: &[Option<T>]) -> Vec<(usize, &T)> {
    observed
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
        .collect()
}

/// Fenced when any reachable member holds a promotion record (`record_of`) newer than the
/// order: a newer decision already acted.
pub(crate) fn refuse_newer_record<T>(
    order: &Order,
    members: &[Member],
    reachable: &[(usize, &T)],
    record_of: impl Fn(&T) -> Option<u64>,
) -> Result<(), Failure> {
    if let Some((i, record)) = reachable
        .iter()
        .filter_map(|(i, o)| record_of(o).map(|r| (*i, r)))
        .max_by_key(|(_, r)| *r)
        && record > order.generation
    {
        return Err(Failure::Fenced(format!(
            "{} holds a promotion record of generation {record}, newer than this order's {}",
            members[i].address, order.generation
        )));
    }
    Ok(())
}

/// Why no member of the order's region can be promoted: the `refusals` of those that answered,
/// else the ones that did not answer (retryable), else none is configured there.
pub(crate) fn no_candidate<T>(
    order: &Order,
    members: &[Member],
    observed: &[Option<T>],
    refusals: &[String],
) -> Failure {
    if !refusals.is_empty() {
        return Failure::Refused(format!(
            "no server of region {} can be promoted: {}",
            order.to,
            refusals.join("; ")
        ));
    }
    let unreachable: Vec<&str> = members
        .iter()
        .zip(observed)
        .filter(|(m, o)| m.region == order.to && o.is_none())
        .map(|(m, _)| m.address.as_str())
        .collect();
    if unreachable.is_empty() {
        Failure::Refused(format!(
            "no server is configured in region {}; add it under servers",
            order.to
        ))
    } else {
        Failure::Retryable(format!(
            "no server of region {} answered: {}",
            order.to,
            unreachable.join(", ")
        ))
    }
}

/// How a step words a loss in [`judge_loss`].
pub(crate) struct LossWords {
    /// After "promoted anyway (force_data_loss): ", e.g. `they are lost`.
    pub lost: &'static str,
    /// After "Promoting it would lose ", e.g. `them`.
    pub lose: &'static str,
    /// Before ", or accept the loss", e.g. `wait for it to catch up`.
    pub wait: &'static str,
}

impl LossWords {
    /// The words in the order of the fields: `lost`, `lose`, `wait`.
    pub(crate) const fn new(lost: &'static str, lose: &'static str, wait: &'static str) -> LossWords {
        LossWords { lost, lose, wait }
    }
}

/// Whether to promote a candidate that still lacks data (`what` says what, `None` when it
/// lacks nothing): a note when the order forces the loss, refused otherwise.
pub(crate) fn judge_loss(what: Option<String>, force: bool, words: LossWords) -> Result<Option<String>, Failure> {
    let Some(what) = what else { return Ok(None) };
    if force {
        Ok(Some(format!(
            "{what}; promoted anyway (force_data_loss): {}",
            words.lost
        )))
    } else {
        Err(Failure::Refused(format!(
            "{what}. Promoting it would lose {}; {}, or accept the loss with `switchyard failover --force-data-loss`",
            words.lose, words.wait
        )))
    }
}

/// `connect` (a login), bounded by [`CONNECT_TIMEOUT_MS`]: its error (`describe`d) or no login
/// in time is retryable and names `address`.
pub(crate) async fn login<C, E>(
    address: &str,
    connect: impl std::future::Future<Output = Result<C, E>>,
    describe: impl FnOnce(E) -> String,
) -> Result<C, Failure> {
    match tokio::time::timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS), connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(Failure::Retryable(format!("{address}: {}", describe(error)))),
        Err(_) => Err(Failure::Retryable(format!(
            "{address}: no login within {CONNECT_TIMEOUT_MS} ms"
        ))),
    }
}

/// The note of a run whose plan finds the order's region served already by `address`, with
/// the promotion record of `record` (`role`: `primary`, `master`).
/// A run that found the order's region's server already the primary: `record` is the promotion
/// record it holds (0: none), which the run raises to `generation` when older.
pub(crate) fn already_note(address: &str, role: &str, record: u64, generation: u64) -> String {
    let record = match record {
        0 => format!("no promotion record yet; generation {generation}'s written"),
        r if r < generation => format!("promotion record of generation {r}, now {generation}"),
        r => format!("promotion record of generation {r}"),
    };
    format!("{address} already {role} ({record}); nothing promoted")
}

/// The loss note of [`judge_loss`]'s verdict `judged`, or its refusal — after making the old
/// primary this run fenced writable again (`unfence`: its address and what does it), noted,
/// with every note so far in the refusal's message.
pub(crate) async fn loss_or_unfence(
    judged: Result<Option<String>, Failure>,
    unfence: Option<(&str, impl std::future::Future<Output = Result<(), Failure>>)>,
    notes: &mut Notes,
) -> Result<Option<String>, Failure> {
    let refusal = match judged {
        Ok(loss) => return Ok(loss),
        Err(refusal) => refusal,
    };
    if let Some((address, unfencing)) = unfence {
        match unfencing.await {
            Ok(()) => notes.push(format!("{address} is writable again")),
            Err(e) => notes.push(format!("could not make {address} writable again: {e}")),
        }
    }
    Err(match refusal {
        Failure::Refused(message) => Failure::Refused(format!("{message} ({})", notes.join())),
        other => other,
    })
}

/// What became of the primary before a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OldPrimary {
    /// It answered, and was fenced.
    Fenced,
    /// Every server answered, none was primary and none follows one (a first placement):
    /// nothing to fence.
    NoneWas,
    /// No primary answered, and one may exist: a server that did not answer, or the source a
    /// replica follows.
    Unanswered,
}

impl OldPrimary {
    /// From the survey: `old`, the primary found, if any; `none_was`, whether every server
    /// answered and none follows another.
    pub(crate) fn of(old: Option<usize>, none_was: bool) -> OldPrimary {
        match (old, none_was) {
            (Some(_), _) => OldPrimary::Fenced,
            (None, true) => OldPrimary::NoneWas,
            (None, false) => OldPrimary::Unanswered,
        }
    }
}

/// Notes a promotion done (`promoted`), the `loss` accepted, and what became of the old
/// primary: when one may have been among the servers that did not answer, that what only it
/// had is unknown (`others`: what the other servers are, `replica` or `standby`).
pub(crate) fn note_promoted(notes: &mut Notes, promoted: String, loss: Option<String>, old: OldPrimary, others: &str) {
    notes.push(promoted);
    if let Some(loss) = loss {
        notes.push(loss);
    }
    match old {
        OldPrimary::Fenced => {}
        OldPrimary::NoneWas => notes.push("no server was primary before: none to fence".to_string()),
        OldPrimary::Unanswered => notes.push(format!(
            "the old primary did not answer: transactions it committed that no {others} received are unknown"
        )),
    }
}

/// What the new `primary` said in the survey after its promotion; retryable when it no longer
/// answers.
pub(crate) fn new_primary_state<'a, T>(
    members: &[Member],
    surveyed: &'a [Result<T, String>],
    primary: usize,
) -> Result<&'a T, Failure> {
    match surveyed.get(primary) {
        Some(Ok(state)) => Ok(state),
        _ => Err(Failure::Retryable(format!(
            "the new primary {} stopped answering",
            members[primary].address
        ))),
    }
}

/// Checks the promotion record read back after writing `order`'s: its generation, or fenced
/// when it holds a newer one (a newer decision acted), retryable otherwise; `address` is the
/// server's.
pub(crate) fn check_record_written(address: &str, order: &Order, read: Option<u64>) -> Result<(), Failure> {
    match read {
        Some(g) if g == order.generation => Ok(()),
        Some(g) if g > order.generation => Err(Failure::Fenced(format!(
            "{address}: the promotion record holds generation {g}, newer than this order's {}",
            order.generation
        ))),
        other => Err(Failure::Retryable(format!(
            "{address}: the promotion record reads {other:?} after writing generation {}",
            order.generation
        ))),
    }
}

/// `text` with every occurrence of each of `secrets` (a password in each form a statement or
/// a server's message may carry it: as configured, and as escaped in a literal) replaced by
/// `<hidden>`, for failure messages that quote statements or what a server said about them.
/// Longer forms first, so a form holding a shorter one is hidden whole.
pub(crate) fn hide_secrets(text: &str, secrets: &[String]) -> String {
    let mut forms: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut shown = text.to_string();
    for form in forms {
        if shown.contains(form.as_str()) {
            shown = shown.replace(form.as_str(), "<hidden>");
        }
    }
    shown
}

/// The note of a `replica` that now replicates from `primary`.
pub(crate) fn now_replicates(replica: &Member, primary: &Member) -> String {
    format!("{} now replicates from {}", replica.address, primary.address)
}

/// What a run saw and did, joined into the outcome line.
#[derive(Debug, Default)]
pub(crate) struct Notes(Vec<String>);

impl Notes {
    pub(crate) fn push(&mut self, note: impl Into<String>) {
        self.0.push(note.into());
    }

    pub(crate) fn join(&self) -> String {
        let mut shown: Vec<&str> = self.0.iter().take(NOTES_MAX).map(String::as_str).collect();
        let more = self.0.len().saturating_sub(NOTES_MAX);
        let tail = format!("and {more} more note(s)");
        if more > 0 {
            shown.push(&tail);
        }
        shown.join("; ")
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::Member;
    use crate::{Checker, Order};

    /// An order of `generation` moving from `eu` to `to`.
    pub fn order(generation: u64, to: &str, force_data_loss: bool) -> Order {
        Order {
            generation,
            kind: "failover".into(),
            from: Some("eu".into()),
            to: to.into(),
            serving: vec![to.into()],
            reason: "test".into(),
            force_data_loss,
        }
    }

    /// `a` in `eu`, `b` and `c` in `us`, on `port`.
    pub fn members(port: u16) -> Vec<Member> {
        [("a", "eu"), ("b", "us"), ("c", "us")]
            .iter()
            .map(|(host, region)| Member {
                address: format!("{host}:{port}"),
                host: host.to_string(),
                port,
                region: region.to_string(),
            })
            .collect()
    }

    /// A `Checker` that keeps messages, for settings tests.
    pub struct Collect {
        pub folder: PathBuf,
        pub regions: BTreeSet<String>,
        pub errors: Vec<String>,
    }

    impl Collect {
        pub fn new(regions: &[&str]) -> Collect {
            Collect {
                folder: std::env::temp_dir(),
                regions: regions.iter().map(|r| r.to_string()).collect(),
                errors: Vec::new(),
            }
        }
    }

    /// Checks the settings `text` (regions `eu` and `us`) with `check`: the step and the
    /// errors reported.
    fn check_text<S: serde::de::DeserializeOwned, T>(
        text: &str,
        check: impl FnOnce(&S, &mut Collect) -> Option<T>,
    ) -> (Option<T>, Vec<String>) {
        let settings: S = toml::from_str(text).expect("parses");
        let mut checker = Collect::new(&["eu", "us"]);
        let step = check(&settings, &mut checker);
        (step, checker.errors)
    }

    /// `check` refuses the settings `text` (regions `eu` and `us`), reporting each of
    /// `expected` in some error.
    pub fn assert_refused<S: serde::de::DeserializeOwned, T>(
        text: &str,
        check: impl FnOnce(&S, &mut Collect) -> Option<T>,
        expected: &[&str],
    ) {
        let (step, errors) = check_text(text, check);
        assert!(step.is_none(), "accepted: {text}");
        let all = errors.join("\n");
        for expected in expected {
            assert!(all.contains(expected), "{expected} missing in:\n{all}");
        }
    }

    /// The step `check` makes of the settings `text` (regions `eu` and `us`), with no error.
    pub fn accepted<S: serde::de::DeserializeOwned, T>(
        text: &str,
        check: impl FnOnce(&S, &mut Collect) -> Option<T>,
    ) -> T {
        let (step, errors) = check_text(text, check);
        assert!(errors.is_empty(), "{errors:?}");
        step.expect("valid")
    }

    impl Checker for Collect {
        fn error(&mut self, _span: std::ops::Range<usize>, message: String, _fix: String) {
            self.errors.push(message);
        }
        fn warn(&mut self, _span: std::ops::Range<usize>, _message: String, _fix: String) {}
        fn folder(&self) -> &Path {
            &self.folder
        }
        fn regions(&self) -> &BTreeSet<String> {
            &self.regions
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_says_what_became_of_the_old_primary() {
        let noted = |old: Option<usize>, answered: bool| {
            let mut notes = Notes::default();
            note_promoted(
                &mut notes,
                "promoted b".into(),
                None,
                OldPrimary::of(old, answered),
                "replica",
            );
            notes.join()
        };
        assert_eq!(noted(Some(0), false), "promoted b");
        assert!(noted(None, true).contains("no server was primary before"));
        assert!(!noted(None, true).contains("did not answer"));
        assert!(noted(None, false).contains("the old primary did not answer"));
    }

    #[test]
    fn addresses_take_a_default_port_and_refuse_what_needs_quoting() {
        assert_eq!(parse_address("db1:3307", 3306), Ok(("db1".into(), 3307)));
        assert_eq!(parse_address("db1", 3306), Ok(("db1".into(), 3306)));
        assert_eq!(parse_address("[::1]:6379", 6379), Ok(("::1".into(), 6379)));
        assert!(parse_address("db1:0", 3306).expect_err("port 0").contains("port '0'"));
        assert!(parse_address("db'1:3306", 3306).expect_err("quote").contains("letters"));
        assert!(parse_address(":3306", 3306).is_err());
    }

    #[tokio::test]
    async fn a_later_survey_asks_only_the_members_the_first_reached() {
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let surveyed = survey_asking(&[true, false, true], |index| {
            let asked = std::sync::Arc::clone(&asked);
            async move {
                asked.lock().expect("asked").push(index);
                if index == 2 {
                    Err(Failure::Retryable("refused".into()))
                } else {
                    Ok(index * 10)
                }
            }
        })
        .await;
        let mut asked = asked.lock().expect("asked").clone();
        asked.sort_unstable();
        assert_eq!(asked, vec![0, 2], "member 1 is never connected to");
        assert_eq!(surveyed[0], Ok(0));
        assert_eq!(surveyed[1], Err(NOT_ASKED_AGAIN.to_string()));
        assert!(surveyed[2].as_ref().expect_err("2 failed").contains("refused"));
        assert_eq!(
            survey(2, |i| async move { Ok::<_, Failure>(i) }).await,
            vec![Ok(0), Ok(1)]
        );
    }

    #[test]
    fn an_already_primary_note_says_what_record_it_found_and_leaves() {
        assert_eq!(
            already_note("a:1", "master", 0, 3),
            "a:1 already master (no promotion record yet; generation 3's written); nothing promoted"
        );
        assert!(already_note("a:1", "primary", 2, 3).contains("(promotion record of generation 2, now 3)"));
        assert!(already_note("a:1", "primary", 3, 3).contains("(promotion record of generation 3);"));
    }

    #[test]
    fn notes_are_bounded() {
        let mut notes = Notes::default();
        for i in 0..NOTES_MAX + 3 {
            notes.push(format!("n{i}"));
        }
        assert!(notes.join().ends_with("and 3 more note(s)"), "{}", notes.join());
    }
}
