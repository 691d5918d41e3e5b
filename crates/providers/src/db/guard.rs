//! What `switchyard guard` does to one region's servers of a promote step: fence every one
//! that takes writes (the step's own fence: MySQL/MariaDB `read_only` and client connections
//! ended, PostgreSQL `default_transaction_read_only` and client backends ended, Redis
//! `CLIENT PAUSE WRITE` renewed every round), and later unfence exactly the servers an
//! isolation fence changed, when they are still primaries.
//!
//! The decision of *when* is the controller crate's (`controller::guard`, sans-IO); this is
//! the acting, bounded per server ([`GUARD_SERVER_MS`]) and run on every server of the region
//! at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Failure;

use super::Member;

/// Longest one server may take to be fenced or unfenced in one round (connection, login and
/// statements); past it the round reports it failed and the next round tries again.
pub const GUARD_SERVER_MS: u64 = 2_000;

/// What the guard did to one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardReport {
    /// `host:port` as configured.
    pub address: String,
    pub outcome: GuardOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardOutcome {
    /// It took writes; now it refuses them. `ended`: client connections (MySQL) or backends
    /// (PostgreSQL) ended so none keeps writing inside an open transaction.
    Fenced { ended: usize },
    /// A Redis master: its writes are paused for `redis::GUARD_PAUSE_MS` from now (renewed
    /// every round while the fence holds; it lapses by itself if the guard stops).
    Paused,
    /// It refuses writes already (read-only, a standby or a replica): nothing done.
    Refusing,
    /// Not fenced: its promotion record is not older than the decision the fence is for (a
    /// runbook moving the active role here promoted it), so it is that decision's primary.
    Promoted { generation: u64 },
    /// It takes writes again.
    Unfenced,
    /// Not unfenced, and why (it replicates from another server now, ...).
    Kept(String),
    /// Not reached in time, or a statement failed before anything changed: the next round
    /// tries again.
    Failed(String),
    /// The fence began and did not finish (a statement failed or the time ran out after it
    /// started changing the server): it may be fenced, and is remembered as fenced.
    Interrupted(String),
}

impl GuardOutcome {
    /// Whether this round changed the server (worth a log line at warning level).
    pub fn changed(&self) -> bool {
        matches!(self, GuardOutcome::Fenced { .. } | GuardOutcome::Unfenced)
    }
}

impl std::fmt::Display for GuardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = &self.address;
        match &self.outcome {
            GuardOutcome::Fenced { ended } => {
                write!(
                    f,
                    "{address} fenced (it took writes; {ended} client connection(s) ended)"
                )
            }
            GuardOutcome::Paused => write!(f, "{address} writes paused (a Redis master)"),
            GuardOutcome::Refusing => write!(f, "{address} refuses writes already"),
            GuardOutcome::Promoted { generation } => write!(
                f,
                "{address} left writable: promoted under generation {generation}, by the decision the fence is for or a newer one"
            ),
            GuardOutcome::Unfenced => write!(f, "{address} unfenced"),
            GuardOutcome::Kept(why) => write!(f, "{address} left fenced: {why}"),
            GuardOutcome::Failed(why) => write!(f, "{address} not reached: {why}"),
            GuardOutcome::Interrupted(why) => write!(f, "{address} fence interrupted (it may be fenced): {why}"),
        }
    }
}

/// Whether a fence for the decision `older_than` (None: any, an isolation fence) applies to a
/// writable server whose promotion record is `record`: only one promoted before that decision
/// (or never, by Switchyard) is an old primary.
pub fn fence_applies(older_than: Option<u64>, record: Option<u64>) -> Result<(), GuardOutcome> {
    match (older_than, record) {
        (Some(decision), Some(generation)) if generation >= decision => Err(GuardOutcome::Promoted { generation }),
        _ => Ok(()),
    }
}

/// Whether an unfence asked for servers promoted since `promoted_since` (None: any, the
/// generation did not move) applies to a server whose promotion record is `record`.
pub fn unfence_applies(promoted_since: Option<u64>, record: Option<u64>) -> Result<(), GuardOutcome> {
    match promoted_since {
        Some(since) if record.is_none_or(|r| r < since) => Err(GuardOutcome::Kept(format!(
            "a runbook decided since the fence (generation {since}) and did not promote it (its promotion record: {})",
            record.map_or_else(|| "none".to_string(), |r| format!("generation {r}"))
        ))),
        _ => Ok(()),
    }
}

/// What the guard sees of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// It takes the applications' writes (not read-only, not a replica or standby).
    pub writable: bool,
    /// What it replicates from, when it is a replica or standby.
    pub follows: Option<String>,
    /// Its promotion record's generation.
    pub record: Option<u64>,
}

/// One database kind's servers as the guard acts on them: a step's shared state (`Inner`).
pub(crate) trait Guarded: Send + Sync + 'static {
    type Session: Send;
    fn members(&self) -> &[Member];
    /// A logged-in session on member `index`.
    fn open(&self, index: usize) -> impl Future<Output = Result<Self::Session, Failure>> + Send;
    fn view(&self, session: &mut Self::Session) -> impl Future<Output = Result<View, Failure>> + Send;
    /// The kind's fence of a writable server ([`GuardOutcome::Fenced`] or
    /// [`GuardOutcome::Paused`]).
    fn fence(
        &self,
        session: &mut Self::Session,
        index: usize,
    ) -> impl Future<Output = Result<GuardOutcome, Failure>> + Send;
    fn unfence(&self, session: &mut Self::Session, index: usize) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Fences every writable server of `region` ([`fence_applies`] with `older_than`); a replica,
/// or a server read-only already, is left alone.
pub(crate) async fn fence_region<G: Guarded>(step: &Arc<G>, region: &str, older_than: Option<u64>) -> Vec<GuardReport> {
    let indexes = in_region(step.members(), region);
    each(step.members(), indexes, |index, touched| {
        let step = Arc::clone(step);
        async move {
            let mut session = step.open(index).await?;
            let view = step.view(&mut session).await?;
            if !view.writable {
                return Ok(GuardOutcome::Refusing);
            }
            if let Err(outcome) = fence_applies(older_than, view.record) {
                return Ok(outcome);
            }
            touched.store(true, std::sync::atomic::Ordering::SeqCst);
            step.fence(&mut session, index).await
        }
    })
    .await
}

/// Unfences the servers at `addresses`, each only while it replicates from nobody (a failover
/// may have made it a replica meanwhile) and [`unfence_applies`] with `promoted_since`.
pub(crate) async fn unfence_named<G: Guarded>(
    step: &Arc<G>,
    region: &str,
    addresses: &[String],
    promoted_since: Option<u64>,
) -> Vec<GuardReport> {
    let mut indexes = named(step.members(), addresses);
    indexes.retain(|i| step.members()[*i].region == region);
    each(step.members(), indexes, |index, _| {
        let step = Arc::clone(step);
        async move {
            let mut session = step.open(index).await?;
            let view = step.view(&mut session).await?;
            if let Some(source) = view.follows {
                return Ok(GuardOutcome::Kept(format!("it replicates from {source} now")));
            }
            if let Err(outcome) = unfence_applies(promoted_since, view.record) {
                return Ok(outcome);
            }
            step.unfence(&mut session, index).await?;
            Ok(GuardOutcome::Unfenced)
        }
    })
    .await
}

/// Runs `act(index)` on the members at `indexes`, all at once, each within
/// [`GUARD_SERVER_MS`]; one report per member, in order.
pub(crate) async fn each<F, Fut>(members: &[Member], indexes: Vec<usize>, act: F) -> Vec<GuardReport>
where
    F: Fn(usize, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = Result<GuardOutcome, Failure>> + Send + 'static,
{
    each_within(GUARD_SERVER_MS, members, indexes, act).await
}

/// [`each`] with its bound: `act` gets a flag it sets before it starts changing the server, so
/// a failure or a timeout after that is [`GuardOutcome::Interrupted`], not `Failed`.
async fn each_within<F, Fut>(timeout_ms: u64, members: &[Member], indexes: Vec<usize>, act: F) -> Vec<GuardReport>
where
    F: Fn(usize, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = Result<GuardOutcome, Failure>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for index in indexes.iter().copied() {
        let touched = Arc::new(AtomicBool::new(false));
        let acting = act(index, Arc::clone(&touched));
        tasks.spawn(async move {
            let stopped = |why: String| {
                if touched.load(Ordering::SeqCst) {
                    GuardOutcome::Interrupted(why)
                } else {
                    GuardOutcome::Failed(why)
                }
            };
            let outcome = match tokio::time::timeout(Duration::from_millis(timeout_ms), acting).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(failure)) => stopped(failure.to_string()),
                Err(_) => stopped(format!("no answer within {timeout_ms} ms")),
            };
            (index, outcome)
        });
    }
    let mut reports: Vec<(usize, GuardReport)> = Vec::with_capacity(indexes.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, outcome)) = joined {
            reports.push((
                index,
                GuardReport {
                    address: members[index].address.clone(),
                    outcome,
                },
            ));
        }
    }
    // A task that panicked reports nothing; say so rather than drop the server.
    for index in indexes {
        if !reports.iter().any(|(i, _)| *i == index) {
            reports.push((
                index,
                GuardReport {
                    address: members[index].address.clone(),
                    outcome: GuardOutcome::Failed("the attempt stopped unexpectedly".into()),
                },
            ));
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// The members in `region`.
pub(crate) fn in_region(members: &[Member], region: &str) -> Vec<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.region == region)
        .map(|(i, _)| i)
        .collect()
}

/// The members named in `addresses`.
pub(crate) fn named(members: &[Member], addresses: &[String]) -> Vec<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| addresses.contains(&m.address))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Member> {
        ["eu", "us", "eu"]
            .iter()
            .enumerate()
            .map(|(i, region)| Member {
                address: format!("db{i}:3306"),
                host: format!("db{i}"),
                port: 3306,
                region: region.to_string(),
            })
            .collect()
    }

    #[tokio::test]
    async fn each_reports_every_server_in_order_failures_and_timeouts_included() {
        let members = members();
        let reports = each_within(50, &members, vec![0, 1, 2], |index, touched| async move {
            match index {
                0 => Ok(GuardOutcome::Fenced { ended: 2 }),
                1 => Err(Failure::Retryable("refused".into())),
                _ => {
                    // Began changing the server, then hung.
                    touched.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(GuardOutcome::Refusing)
                }
            }
        })
        .await;
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0].outcome, GuardOutcome::Fenced { ended: 2 });
        assert_eq!(reports[1].outcome, GuardOutcome::Failed("refused".into()));
        assert!(
            matches!(&reports[2].outcome, GuardOutcome::Interrupted(why) if why.contains("no answer")),
            "{:?}",
            reports[2]
        );
        assert_eq!(
            reports.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            ["db0:3306", "db1:3306", "db2:3306"]
        );
    }

    #[test]
    fn servers_are_picked_by_region_and_by_name() {
        let members = members();
        assert_eq!(in_region(&members, "eu"), [0, 2]);
        assert_eq!(in_region(&members, "ap"), Vec::<usize>::new());
        assert_eq!(named(&members, &["db1:3306".into(), "gone:1".into()]), [1]);
        let report = GuardReport {
            address: "db0:3306".into(),
            outcome: GuardOutcome::Fenced { ended: 3 },
        };
        assert!(report.to_string().contains("db0:3306 fenced") && report.outcome.changed());
        assert!(!GuardOutcome::Refusing.changed());
    }

    #[test]
    fn the_promotion_record_decides_which_primary_a_fence_or_unfence_is_for() {
        // An isolation fence takes every writable server.
        assert_eq!(fence_applies(None, Some(9)), Ok(()));
        // A move to generation 8 fences a primary promoted before it, or never by Switchyard...
        assert_eq!(fence_applies(Some(8), Some(7)), Ok(()));
        assert_eq!(fence_applies(Some(8), None), Ok(()));
        // ...but not one a runbook promoted under 8 or later (moving the role back here).
        assert_eq!(
            fence_applies(Some(8), Some(8)),
            Err(GuardOutcome::Promoted { generation: 8 })
        );
        assert_eq!(
            fence_applies(Some(8), Some(9)),
            Err(GuardOutcome::Promoted { generation: 9 })
        );
        assert_eq!(unfence_applies(None, Some(1)), Ok(()));
        assert_eq!(unfence_applies(Some(9), Some(9)), Ok(()));
        assert!(
            matches!(unfence_applies(Some(9), Some(7)), Err(GuardOutcome::Kept(why)) if why.contains("generation 7"))
        );
        assert!(matches!(unfence_applies(Some(9), None), Err(GuardOutcome::Kept(why)) if why.contains("none")));
    }
}
