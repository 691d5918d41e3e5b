//! Amazon RDS and Aurora: `rds_promote` (a cross-region read replica becomes a standalone
//! primary, `PromoteReadReplica`) and `aurora_global_failover` (the writer of an Aurora Global
//! Database moves to the order's region, `SwitchoverGlobalCluster` when planned,
//! `FailoverGlobalCluster` with `AllowDataLoss` when the writer's region is lost).
//!
//! Both name their resources by ARN, one per Switchyard region; the ARN's region is the AWS
//! region each call is signed for (RDS's API is regional).
//!
//! **Fencing.** The order's generation is written as the tag `switchyard:generation` on the
//! resource before it is acted on, and read back: a tag holding a newer generation means a newer
//! decision acted, and the run is `Fenced` without acting. A read replica promoted in another
//! region (a second standalone instance beside the target's source) also fences
//! `rds_promote`: promoting a second replica would make two primaries. In an unplanned failover
//! another region's instance that cannot be read (its region is the one being lost) is
//! unknown, not an error, and the outcome says it was not checked: see [`decide_rds`].
//!
//! **Idempotent and verified.** A run reads the state first: a replica that is already
//! standalone, or a global cluster whose writer already is the target, is only waited for. After
//! acting, the step polls (every `poll_ms`, at most `wait_ms`) until `DescribeDBInstances` says
//! `available` with no `ReadReplicaSourceDBInstanceIdentifier`, or `DescribeGlobalClusters`
//! shows the target as the writer with no `FailoverState` and status `available`. A wait cut
//! short is retried by the next attempt without acting twice.
//!
//! **Failback.** RDS cannot turn a promoted instance back into a replica: `rds_promote`
//! refuses to move back to the old source (create a new read replica of the promoted instance
//! first). Aurora can: a failback is a switchover back.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::aws::{self, Access, StaticCredentials};
use crate::{Checker, Failure, Order};

/// Default and longest wait within one attempt for a promotion or a global switchover to
/// finish (RDS takes minutes; the longest is a step's longest `timeout_ms`).
pub const WAIT_MS_DEFAULT: u64 = 540_000;
pub const WAIT_MS_MAX: u64 = 600_000;
/// Default and shortest interval between two polls.
pub const POLL_MS_DEFAULT: u64 = 5_000;
pub const POLL_MS_MIN: u64 = 10;
/// The tag holding the generation of the last order that acted on the resource.
pub const GENERATION_TAG: &str = "switchyard:generation";
/// Longest ARN accepted, in bytes (RDS identifiers are at most 63 characters).
pub const ARN_BYTES_MAX: usize = 256;
/// `DBInstanceStatus` / cluster `Status` of a resource that serves.
pub const AVAILABLE: &str = "available";

/// An RDS ARN: `arn:PARTITION:rds:REGION:ACCOUNT:KIND:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arn {
    pub text: String,
    pub region: String,
    pub kind: String,
    pub name: String,
}

impl Arn {
    /// Parses an ARN of `kind` (`db`, `cluster` or `global-cluster`).
    pub fn parse(text: &str, kind: &str) -> Result<Arn, String> {
        if text.len() > ARN_BYTES_MAX {
            return Err(format!("is longer than {ARN_BYTES_MAX} bytes"));
        }
        let parts: Vec<&str> = text.split(':').collect();
        let [arn, partition, service, region, account, found_kind, name] = parts.as_slice() else {
            return Err(format!(
                "is not an RDS ARN like arn:aws:rds:eu-west-1:111122223333:{kind}:NAME"
            ));
        };
        if *arn != "arn" || !partition.starts_with("aws") || *service != "rds" {
            return Err(format!(
                "is not an RDS ARN like arn:aws:rds:eu-west-1:111122223333:{kind}:NAME"
            ));
        }
        if !aws::valid_region(region) {
            return Err(format!("has '{region}' where the AWS region goes"));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("has '{account}' where the 12-digit account goes"));
        }
        if *found_kind != kind {
            return Err(format!("names a {found_kind}, not a {kind}"));
        }
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !valid_name {
            return Err(format!(
                "has '{name}', not an RDS identifier (1-63 letters, digits, hyphens; a letter first)"
            ));
        }
        Ok(Arn {
            text: text.to_string(),
            region: region.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        })
    }
}

/// Checks `{ region = "arn:...", ... }`: configured regions, valid ARNs of `kind`, at least two.
fn check_arns(
    what: &str,
    map: &Spanned<BTreeMap<String, Spanned<String>>>,
    kind: &str,
    checker: &mut dyn Checker,
) -> Option<BTreeMap<String, Arn>> {
    let mut ok = true;
    let mut out = BTreeMap::new();
    for (region, arn) in map.get_ref() {
        if !checker.regions().contains(region) {
            checker.error(
                map.span(),
                format!("{what}: '{region}' is not a configured region"),
                format!(
                    "use the names of [[regions]]: {}",
                    checker.regions().iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            ok = false;
        }
        match Arn::parse(arn.get_ref(), kind) {
            Ok(parsed) => {
                out.insert(region.clone(), parsed);
            }
            Err(problem) => {
                checker.error(
                    arn.span(),
                    format!("{what}: the ARN of region '{region}' {problem}"),
                    format!("copy the {kind}'s ARN from the RDS console or `aws rds describe-*`"),
                );
                ok = false;
            }
        }
    }
    if map.get_ref().len() < 2 {
        checker.error(
            map.span(),
            format!("{what}: needs the ARNs of at least two regions (the primary's and a standby's)"),
            "add one entry per region: { us-east-1 = \"arn:...\", eu-west-1 = \"arn:...\" }".into(),
        );
        ok = false;
    }
    ok.then_some(out)
}

/// Checks `wait_ms` and `poll_ms`.
fn check_timing(
    what: &str,
    wait_ms: &Option<Spanned<u64>>,
    poll_ms: &Option<Spanned<u64>>,
    checker: &mut dyn Checker,
) -> Option<(u64, u64)> {
    let mut ok = true;
    let wait = wait_ms.as_ref().map(|w| *w.get_ref()).unwrap_or(WAIT_MS_DEFAULT);
    if let Some(w) = wait_ms
        && (*w.get_ref() == 0 || *w.get_ref() > WAIT_MS_MAX)
    {
        checker.error(
            w.span(),
            format!("{what}: wait_ms = {} is outside 1..={WAIT_MS_MAX}", w.get_ref()),
            format!("leave it out for {WAIT_MS_DEFAULT} ms"),
        );
        ok = false;
    }
    let poll = poll_ms.as_ref().map(|p| *p.get_ref()).unwrap_or(POLL_MS_DEFAULT);
    if let Some(p) = poll_ms
        && (*p.get_ref() < POLL_MS_MIN || *p.get_ref() > wait)
    {
        checker.error(
            p.span(),
            format!(
                "{what}: poll_ms = {} is outside {POLL_MS_MIN}..=wait_ms ({wait})",
                p.get_ref()
            ),
            format!("leave it out for {POLL_MS_DEFAULT} ms"),
        );
        ok = false;
    }
    ok.then_some((wait, poll))
}

fn aws_access(
    what: &str,
    table: Range<usize>,
    profile: &Option<Spanned<String>>,
    endpoint_url: &Option<Spanned<String>>,
    checker: &mut dyn Checker,
) -> Option<Access> {
    let access = Access::check(
        what,
        table.clone(),
        &None,
        profile,
        endpoint_url,
        Some("us-east-1"),
        checker,
    );
    if !cfg!(feature = "rds") {
        checker.error(
            table,
            format!("{what}: this switchyard was built without RDS support"),
            "use a build with the `rds` feature (a default of the switchyard binary)".into(),
        );
        return None;
    }
    access
}

/// Declares the table of an RDS step (`deny_unknown_fields`): its own fields, then the keys
/// both steps have (`profile`, `endpoint_url`, `wait_ms`, `poll_ms`), with `check_common`. A
/// macro for the reason `promote_settings!` is one: serde cannot combine
/// `deny_unknown_fields` with a flattened shared struct.
macro_rules! rds_settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($own)*
            #[serde(default)]
            pub profile: Option<Spanned<String>>,
            #[serde(default)]
            pub endpoint_url: Option<Spanned<String>>,
            #[serde(default)]
            pub wait_ms: Option<Spanned<u64>>,
            #[serde(default)]
            pub poll_ms: Option<Spanned<u64>>,
        }

        impl $name {
            /// Checks the keys both steps have (the table at `table`).
            fn check_common(&self, what: &str, table: Range<usize>, checker: &mut dyn Checker) -> Option<Common> {
                let timing = check_timing(what, &self.wait_ms, &self.poll_ms, checker);
                let access = aws_access(what, table, &self.profile, &self.endpoint_url, checker);
                let ((wait_ms, poll_ms), access) = (timing?, access?);
                Some(Common {
                    access,
                    wait_ms,
                    poll_ms,
                    credentials: None,
                    #[cfg(feature = "rds")]
                    clients: Default::default(),
                })
            }
        }
    };
}

rds_settings! {
    /// The `[runbook.rds_promote]` table.
    pub struct RdsSettings {
        /// Per region, the DB instance that serves it: the source in the primary's region, a
        /// cross-region read replica of it in each other region.
        pub instances: Spanned<BTreeMap<String, Spanned<String>>>,
    }
}

impl RdsSettings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<RdsPromote> {
        let what = format!("rds_promote step '{step}'");
        let instances = check_arns(&what, &self.instances, "db", checker);
        let common = self.check_common(&what, self.instances.span(), checker);
        Some(RdsPromote {
            instances: instances?,
            common: common?,
        })
    }
}

rds_settings! {
    /// The `[runbook.aurora_global_failover]` table.
    pub struct AuroraSettings {
        /// The global database's identifier.
        pub global_cluster: Spanned<String>,
        /// Per region, its member DB cluster.
        pub clusters: Spanned<BTreeMap<String, Spanned<String>>>,
        /// Let an unplanned failover (the writer's region lost) use `FailoverGlobalCluster` with
        /// `AllowDataLoss`: what had not replicated yet is lost. Without it only `switchyard
        /// failover --force-data-loss` allows that.
        #[serde(default)]
        pub allow_data_loss: bool,
        /// How an unplanned move is made: `failover` (FailoverGlobalCluster, the default) or
        /// `detach` (RemoveFromGlobalCluster: the target leaves the global database and writes
        /// on its own — for when the global failover itself cannot run; no failback
        /// afterwards).
        #[serde(default)]
        pub unplanned: Option<Spanned<String>>,
    }
}

impl AuroraSettings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<AuroraGlobalFailover> {
        let what = format!("aurora_global_failover step '{step}'");
        let mut ok = true;
        let id = self.global_cluster.get_ref();
        if Arn::parse(
            &format!("arn:aws:rds::000000000000:global-cluster:{id}"),
            "global-cluster",
        )
        .is_err()
            && Arn::parse(
                &format!("arn:aws:rds:us-east-1:000000000000:global-cluster:{id}"),
                "global-cluster",
            )
            .is_err()
        {
            checker.error(
                self.global_cluster.span(),
                format!("{what}: global_cluster '{id}' is not an RDS identifier (1-63 letters, digits, hyphens; a letter first)"),
                "give the global database's identifier, as `aws rds describe-global-clusters` shows it".into(),
            );
            ok = false;
        }
        let detach = match &self.unplanned {
            None => false,
            Some(u) if u.get_ref() == "failover" => false,
            Some(u) if u.get_ref() == "detach" => true,
            Some(u) => {
                checker.error(
                    u.span(),
                    format!(
                        "{what}: unplanned = \"{}\" is neither \"failover\" nor \"detach\"",
                        u.get_ref()
                    ),
                    "leave it out for FailoverGlobalCluster, or write \"detach\" for RemoveFromGlobalCluster".into(),
                );
                ok = false;
                false
            }
        };
        let clusters = check_arns(&what, &self.clusters, "cluster", checker);
        let common = self.check_common(&what, self.clusters.span(), checker);
        let (clusters, common, true) = (clusters?, common?, ok) else {
            return None;
        };
        Some(AuroraGlobalFailover {
            global_cluster: id.clone(),
            clusters,
            allow_data_loss: self.allow_data_loss,
            detach,
            common,
        })
    }
}

/// What both steps share: access, timing and one client per AWS region.
#[cfg_attr(not(feature = "rds"), allow(dead_code))]
struct Common {
    access: Access,
    wait_ms: u64,
    poll_ms: u64,
    credentials: Option<StaticCredentials>,
    #[cfg(feature = "rds")]
    clients: tokio::sync::Mutex<BTreeMap<String, aws_sdk_rds::Client>>,
}

impl Common {
    fn set_static_credentials(&mut self, credentials: StaticCredentials) {
        self.credentials = Some(credentials);
    }
}

impl std::fmt::Debug for Common {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Common")
            .field("access", &self.access)
            .field("wait_ms", &self.wait_ms)
            .field("poll_ms", &self.poll_ms)
            .finish()
    }
}

/// One DB instance as a run sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instance {
    /// `DBInstanceNotFound`.
    Missing,
    /// A read replica of `source` (an identifier or ARN, as RDS reports it); `generation`: its
    /// tag, written just before an earlier run's `PromoteReadReplica`.
    Replica {
        status: String,
        source: String,
        generation: Option<u64>,
    },
    /// No source: a primary (the original source, or a promoted replica).
    Standalone { status: String, generation: Option<u64> },
    /// Another region's instance whose state is unknown: its region's RDS API did not answer
    /// (a lost region) or answered with an error (`problem`). Only ever among the others.
    Unreadable { problem: String },
}

/// What a `rds_promote` run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RdsDecision {
    /// Tag the replica with the generation, then `PromoteReadReplica`, then wait.
    Promote,
    /// Standalone already (the source while nothing was promoted, or an earlier run's
    /// promotion): wait until available.
    Done,
    /// An earlier run tagged the replica and promoted it (it is no longer `available`; a
    /// controller that died mid-wait rolls forward here): only wait, never promote twice.
    Promoting,
}

/// Decides a `rds_promote` run (pure): the target region's instance and every other one's.
///
/// Another region's instance that could not be read (`Instance::Unreadable`: its region is the
/// one being lost, as a rule) is an error for a `planned` move, which needs every region. An
/// unplanned failover goes on without it, with the checks of every instance that was read:
/// promoting a replica needs nothing from its source, and waiting for the source's region
/// to answer would block the failover for as long as the disaster lasts. Only a target that no
/// order ever acted on (an untagged standalone: the original source) still waits for every
/// region, since a replica promoted in an unread region would make it a second, stale primary.
pub fn decide_rds(
    generation: u64,
    planned: bool,
    target: (&str, &Arn, &Instance),
    others: &[(&str, &Arn, &Instance)],
) -> Result<RdsDecision, Failure> {
    let (region, arn, state) = target;
    let standalone_others: Vec<&(&str, &Arn, &Instance)> = others
        .iter()
        .filter(|(_, _, s)| matches!(s, Instance::Standalone { .. }))
        .collect();
    let unreadable = others.iter().find_map(|(other, other_arn, s)| match s {
        Instance::Unreadable { problem } => Some((*other, *other_arn, problem)),
        _ => None,
    });
    let target_fenced = matches!(
        state,
        Instance::Standalone { generation: Some(g), .. } | Instance::Replica { generation: Some(g), .. } if *g > generation
    );
    if planned
        && !target_fenced
        && !matches!(state, Instance::Missing)
        && let Some((other, other_arn, problem)) = unreadable
    {
        return Err(Failure::Retryable(format!(
            "cannot read the DB instance {} of {other} ({problem}): a planned move checks every region's instance first (an unplanned failover goes on without it)",
            other_arn.text
        )));
    }
    match state {
        Instance::Missing => Err(Failure::Refused(format!(
            "the DB instance {} of {region} does not exist (DBInstanceNotFound); fix instances",
            arn.text
        ))),
        Instance::Unreadable { problem } => Err(Failure::Retryable(format!(
            "cannot read the DB instance {} of {region}: {problem}",
            arn.text
        ))),
        Instance::Standalone {
            generation: Some(g), ..
        } if *g > generation => Err(Failure::Fenced(format!(
            "{} carries {GENERATION_TAG}={g}, newer than this order's {generation}",
            arn.text
        ))),
        Instance::Standalone { generation: tag, .. } => {
            // A replica an earlier order tagged and that is no longer available is being
            // promoted: RDS cannot stop that, so this region would end up beside a second
            // primary.
            let promoting = others.iter().find(
                |(_, _, s)| matches!(s, Instance::Replica { status, generation: Some(_), .. } if status != AVAILABLE),
            );
            if let Some((
                other,
                other_arn,
                Instance::Replica {
                    generation: Some(g), ..
                },
            )) = promoting
            {
                return Err(Failure::Refused(format!(
                    "the read replica {} of {other} is being promoted (tagged by generation {g}) and RDS cannot undo that: {} of {region} would be a second primary; move to {other} instead",
                    other_arn.text, arn.text
                )));
            }
            let newer = standalone_others
                .iter()
                .find(|(_, _, s)| matches!(s, Instance::Standalone { generation: Some(g), .. } if Some(*g) > *tag));
            match (newer, unreadable) {
                (Some((other, other_arn, _)), _) if tag.is_none() => Err(Failure::Refused(format!(
                    "the replica {} of {other} was promoted, so {} of {region} is no longer the primary and RDS cannot make it a replica again: create a read replica of {} in {region}, point instances at it, then switch over",
                    other_arn.text, arn.text, other_arn.text
                ))),
                (Some((other, other_arn, _)), _) => Err(Failure::Fenced(format!(
                    "{} of {other} was promoted by a newer order than {} of {region}",
                    other_arn.text, arn.text
                ))),
                (None, Some((other, other_arn, problem))) if tag.is_none() => Err(Failure::Retryable(format!(
                    "cannot read the DB instance {} of {other} ({problem}): if an earlier failover promoted it, {} of {region} is an old primary and must not serve again; retried until {other} answers",
                    other_arn.text, arn.text
                ))),
                (None, _) => Ok(RdsDecision::Done),
            }
        }
        Instance::Replica {
            generation: Some(g), ..
        } if *g > generation => Err(Failure::Fenced(format!(
            "{} carries {GENERATION_TAG}={g}, newer than this order's {generation}",
            arn.text
        ))),
        Instance::Replica {
            status,
            source,
            generation: tag,
        } => {
            let promoted = standalone_others
                .iter()
                .find(|(_, other_arn, _)| other_arn.text != *source && other_arn.name != *source);
            if let Some((other, other_arn, _)) = promoted {
                return Err(Failure::Fenced(format!(
                    "{} of {other} is a standalone primary already and is not the source ({source}) of {} of {region}: promoting it too would make two primaries",
                    other_arn.text, arn.text
                )));
            }
            if status != AVAILABLE && tag.is_some() {
                return Ok(RdsDecision::Promoting);
            }
            if status != AVAILABLE {
                return Err(Failure::Retryable(format!(
                    "the read replica {} of {region} is {status}; PromoteReadReplica needs it available",
                    arn.text
                )));
            }
            Ok(RdsDecision::Promote)
        }
    }
}

/// The `rds_promote` step, ready to run.
#[derive(Debug)]
#[cfg_attr(not(feature = "rds"), allow(dead_code))]
pub struct RdsPromote {
    instances: BTreeMap<String, Arn>,
    common: Common,
}

/// The `aurora_global_failover` step, ready to run.
#[derive(Debug)]
#[cfg_attr(not(feature = "rds"), allow(dead_code))]
pub struct AuroraGlobalFailover {
    global_cluster: String,
    clusters: BTreeMap<String, Arn>,
    allow_data_loss: bool,
    detach: bool,
    common: Common,
}

/// One global cluster as a run sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub status: String,
    /// The writer member's ARN, if any.
    pub writer: Option<String>,
    pub members: Vec<String>,
    /// A switchover or failover in progress: (status, to-cluster ARN).
    pub failover: Option<(String, String)>,
}

/// What an `aurora_global_failover` run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuroraDecision {
    Switchover,
    Failover,
    /// `RemoveFromGlobalCluster` (`unplanned = "detach"`).
    Detach,
    /// A move to the target is under way, or done: wait.
    Wait,
    /// The target was detached by an earlier run: wait until it is an available cluster.
    Detached,
}

/// Whether an order is planned (both regions up: no data loss) or not.
pub fn planned(kind: &str) -> bool {
    matches!(kind, "switchover" | "failback" | "initial")
}

/// Decides an `aurora_global_failover` run (pure).
pub fn decide_aurora(
    order: &Order,
    target: &Arn,
    global: &Global,
    target_generation: Option<u64>,
    allow_data_loss: bool,
    detach: bool,
    detached: &[&Arn],
) -> Result<AuroraDecision, Failure> {
    if let Some(g) = target_generation
        && g > order.generation
    {
        return Err(Failure::Fenced(format!(
            "{} carries {GENERATION_TAG}={g}, newer than this order's {}",
            target.text, order.generation
        )));
    }
    if let Some(other) = detached.iter().find(|a| a.text != target.text) {
        return Err(Failure::Refused(format!(
            "{} was detached from the global cluster (RemoveFromGlobalCluster) by an earlier order and writes on its own; Aurora cannot make it a secondary again: create a new global database from it (or add {} to one), fix clusters, then switch over",
            other.text, target.text
        )));
    }
    if !global.members.contains(&target.text) {
        if detach && target_generation.is_some() {
            return Ok(AuroraDecision::Detached);
        }
        return Err(Failure::Refused(format!(
            "{} is not a member of the global cluster (members: {}); add it, or fix clusters",
            target.text,
            global.members.join(", ")
        )));
    }
    if let Some((status, to)) = &global.failover {
        return if *to == target.text {
            Ok(AuroraDecision::Wait)
        } else {
            Err(Failure::Retryable(format!(
                "a global failover to {to} is {status}; waiting for it to end before moving to {}",
                target.text
            )))
        };
    }
    if global.writer.as_deref() == Some(target.text.as_str()) {
        return Ok(AuroraDecision::Wait);
    }
    if planned(&order.kind) {
        Ok(AuroraDecision::Switchover)
    } else if allow_data_loss || order.force_data_loss {
        Ok(if detach {
            AuroraDecision::Detach
        } else {
            AuroraDecision::Failover
        })
    } else {
        Err(Failure::Refused(format!(
            "an unplanned move of the writer to {} (FailoverGlobalCluster with AllowDataLoss) loses what had not replicated yet; accept that with `switchyard failover --force-data-loss` or allow_data_loss = true, or switch over while {} still answers",
            target.text,
            global.writer.as_deref().unwrap_or("the writer")
        )))
    }
}

aws::step_entry_points!(RdsPromote, common, "rds", not_built());
aws::step_entry_points!(AuroraGlobalFailover, common, "rds", not_built());

/// The answer of a step run by a build without the `rds` feature.
#[cfg(not(feature = "rds"))]
fn not_built() -> Failure {
    Failure::Refused("this switchyard was built without RDS support (feature `rds`)".into())
}

impl RdsPromote {
    pub fn least_timeout_ms(&self) -> u64 {
        self.common.wait_ms
    }

    #[cfg(feature = "rds")]
    async fn run_live(&self, order: &Order) -> crate::Outcome {
        let Some(arn) = self.instances.get(&order.to) else {
            return Err(Failure::Refused(format!(
                "no DB instance is configured for region {}; add it under instances",
                order.to
            )));
        };
        // The target first: when its own region does not answer there is nothing to decide.
        let state = self.common.instance(arn).await?;
        // Another region that does not answer (the region being lost, as a rule) is unknown,
        // not an error: `decide_rds` says when that is enough.
        let mut others = Vec::new();
        let mut unread = Vec::new();
        for (region, other) in &self.instances {
            if region != &order.to {
                let seen = match self.common.instance(other).await {
                    Ok(seen) => seen,
                    Err(failure) => {
                        let problem = failure.to_string();
                        unread.push(format!("{} of {region} ({problem})", other.text));
                        Instance::Unreadable { problem }
                    }
                };
                others.push((region.as_str(), other, seen));
            }
        }
        let others_ref: Vec<(&str, &Arn, &Instance)> = others.iter().map(|(r, a, s)| (*r, *a, s)).collect();
        let decision = decide_rds(
            order.generation,
            planned(&order.kind),
            (order.to.as_str(), arn, &state),
            &others_ref,
        )?;
        let unread = if unread.is_empty() {
            String::new()
        } else {
            tracing::warn!(
                target_instance = %arn.text,
                unread = %unread.join("; "),
                "rds_promote: another region's DB instance could not be read; going on without it (unplanned failover)"
            );
            format!(
                "; could not read {}: not checked for a second primary",
                unread.join(", ")
            )
        };
        let promoted_now = decision == RdsDecision::Promote;
        if promoted_now {
            self.common.claim(arn, order.generation).await?;
            let client = self.common.client(&arn.region).await;
            match client
                .promote_read_replica()
                .db_instance_identifier(&arn.name)
                .send()
                .await
            {
                Ok(_) => {}
                // Promoted meanwhile (a run that died after the call): the wait verifies it.
                Err(e) if aws::error_code(&e) == Some("InvalidDBInstanceState") => {}
                Err(e) => return Err(aws::failure("RDS PromoteReadReplica", &e)),
            }
        }
        let waited = self
            .common
            .wait(|| async {
                Ok(match self.common.instance(arn).await? {
                    Instance::Standalone { status, .. } if status == AVAILABLE => None,
                    other => Some(format!("{other:?}")),
                })
            })
            .await?;
        let tag = if !matches!(state, Instance::Standalone { generation: None, .. }) {
            self.common.claim(arn, order.generation).await?;
            format!(", {GENERATION_TAG}={}", order.generation)
        } else {
            String::new()
        };
        Ok(match (promoted_now, &state) {
            (true, _) => format!(
                "promoted the read replica {} of {} (PromoteReadReplica); standalone and available after {waited} ms{tag}{unread}",
                arn.text, order.to
            ),
            (false, Instance::Standalone { generation: None, .. }) => format!(
                "{} of {} is the primary (no source); nothing promoted{unread}",
                arn.text, order.to
            ),
            (false, _) => format!(
                "an earlier run promoted {} of {}; standalone and available after {waited} ms{tag}{unread}",
                arn.text, order.to
            ),
        })
    }
}

impl AuroraGlobalFailover {
    pub fn least_timeout_ms(&self) -> u64 {
        self.common.wait_ms
    }

    #[cfg(feature = "rds")]
    async fn run_live(&self, order: &Order) -> crate::Outcome {
        let Some(target) = self.clusters.get(&order.to) else {
            return Err(Failure::Refused(format!(
                "no DB cluster is configured for region {}; add it under clusters",
                order.to
            )));
        };
        // Signed for the target's region: in an unplanned failover the writer's region may
        // not answer.
        let global = self.global(&target.region).await?;
        let generation = self.common.generation(target).await?;
        // Configured clusters that left the global database with an order's tag: detached.
        let mut detached = Vec::new();
        for arn in self.clusters.values() {
            if !global.members.contains(&arn.text)
                && arn.text != target.text
                && self.common.generation(arn).await?.is_some()
            {
                detached.push(arn);
            }
        }
        let decision = decide_aurora(
            order,
            target,
            &global,
            generation,
            self.allow_data_loss,
            self.detach,
            &detached,
        )?;
        let was_writer = global.writer.as_deref() == Some(target.text.as_str()) && global.failover.is_none();
        // The writer's tag too: a newer decision that moved the writer there fences this one (a
        // stale controller must not move it back). In an unplanned failover the writer's
        // region may not answer; then only the target's tag fences.
        let mut unread = String::new();
        if matches!(
            decision,
            AuroraDecision::Switchover | AuroraDecision::Failover | AuroraDecision::Detach
        ) && let Some(writer) = global.writer.as_deref()
            && let Ok(writer_arn) = Arn::parse(writer, "cluster")
        {
            match self.common.generation(&writer_arn).await {
                Ok(Some(g)) if g > order.generation => {
                    return Err(Failure::Fenced(format!(
                        "the writer {writer} carries {GENERATION_TAG}={g}, newer than this order's {}: a newer decision moved it there",
                        order.generation
                    )));
                }
                Ok(_) => {}
                Err(e) if decision == AuroraDecision::Switchover => return Err(e),
                Err(e) => unread = format!(" (the writer's {GENERATION_TAG} was unreadable: {e})"),
            }
        }
        let client = self.common.client(&target.region).await;
        let action = match decision {
            AuroraDecision::Wait | AuroraDecision::Detached => None,
            AuroraDecision::Detach => {
                self.common.claim(target, order.generation).await?;
                client
                    .remove_from_global_cluster()
                    .global_cluster_identifier(&self.global_cluster)
                    .db_cluster_identifier(&target.text)
                    .send()
                    .await
                    .map_err(|e| aws::failure("RDS RemoveFromGlobalCluster", &e))?;
                Some(
                    "detached from (RemoveFromGlobalCluster; what had not replicated is lost, and the old writer must be fenced at the application)",
                )
            }
            AuroraDecision::Switchover => {
                self.common.claim(target, order.generation).await?;
                client
                    .switchover_global_cluster()
                    .global_cluster_identifier(&self.global_cluster)
                    .target_db_cluster_identifier(&target.text)
                    .send()
                    .await
                    .map_err(|e| aws::failure("RDS SwitchoverGlobalCluster", &e))?;
                Some("switched over (SwitchoverGlobalCluster)")
            }
            AuroraDecision::Failover => {
                self.common.claim(target, order.generation).await?;
                client
                    .failover_global_cluster()
                    .global_cluster_identifier(&self.global_cluster)
                    .target_db_cluster_identifier(&target.text)
                    .allow_data_loss(true)
                    .send()
                    .await
                    .map_err(|e| aws::failure("RDS FailoverGlobalCluster", &e))?;
                Some("failed over (FailoverGlobalCluster, AllowDataLoss: what had not replicated is lost)")
            }
        };
        let waited = self
            .common
            .wait(|| async {
                let now = self.global(&target.region).await?;
                if matches!(decision, AuroraDecision::Detach | AuroraDecision::Detached) {
                    let status = self.common.cluster_status(target).await?;
                    let done = !now.members.contains(&target.text) && status == AVAILABLE;
                    return Ok(
                        (!done).then(|| format!("member: {}, status {status}", now.members.contains(&target.text)))
                    );
                }
                let done = now.writer.as_deref() == Some(target.text.as_str())
                    && now.failover.is_none()
                    && now.status == AVAILABLE;
                Ok((!done).then(|| format!("{now:?}")))
            })
            .await?;
        if action.is_some() || !was_writer || generation.is_some_and(|g| g < order.generation) {
            self.common.claim(target, order.generation).await?;
        }
        Ok(match action {
            Some(what) => format!(
                "{what} global cluster {} to {} of {}; the writer after {waited} ms, {GENERATION_TAG}={}{unread}",
                self.global_cluster, target.text, order.to, order.generation
            ),
            None if decision == AuroraDecision::Detached => format!(
                "an earlier run detached {} of {} from global cluster {}; it writes on its own, available after {waited} ms",
                target.text, order.to, self.global_cluster
            ),
            None if was_writer => format!(
                "{} of {} is the writer of global cluster {} already; nothing moved",
                target.text, order.to, self.global_cluster
            ),
            None => format!(
                "an earlier run moved the writer of global cluster {} to {} of {}; done after {waited} ms",
                self.global_cluster, target.text, order.to
            ),
        })
    }

    #[cfg(feature = "rds")]
    async fn global(&self, region: &str) -> Result<Global, Failure> {
        let client = self.common.client(region).await;
        let answer = match client
            .describe_global_clusters()
            .global_cluster_identifier(&self.global_cluster)
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(e) if aws::error_code(&e) == Some("GlobalClusterNotFoundFault") => {
                return Err(Failure::Refused(format!(
                    "the global cluster {} does not exist (GlobalClusterNotFoundFault); fix global_cluster",
                    self.global_cluster
                )));
            }
            Err(e) => return Err(aws::failure("RDS DescribeGlobalClusters", &e)),
        };
        let Some(found) = answer
            .global_clusters()
            .iter()
            .find(|g| g.global_cluster_identifier() == Some(self.global_cluster.as_str()))
        else {
            return Err(Failure::Retryable(format!(
                "DescribeGlobalClusters did not list {}",
                self.global_cluster
            )));
        };
        let members = found.global_cluster_members();
        Ok(Global {
            status: found.status().unwrap_or_default().to_string(),
            writer: members
                .iter()
                .find(|m| m.is_writer() == Some(true))
                .and_then(|m| m.db_cluster_arn())
                .map(String::from),
            members: members
                .iter()
                .filter_map(|m| m.db_cluster_arn())
                .map(String::from)
                .collect(),
            failover: failover_in_progress(found.failover_state()),
        })
    }
}

/// A global cluster's `FailoverState` as a move in progress: (status, to-cluster ARN). AWS
/// documents the element as "empty unless a switchover or failover operation is scheduled or is
/// in progress", so one without a `Status` is no move at all.
#[cfg(feature = "rds")]
fn failover_in_progress(state: Option<&aws_sdk_rds::types::FailoverState>) -> Option<(String, String)> {
    let status = state?.status()?.as_str().trim();
    if status.is_empty() {
        return None;
    }
    Some((
        status.to_string(),
        state?.to_db_cluster_arn().unwrap_or_default().to_string(),
    ))
}

#[cfg(feature = "rds")]
impl Common {
    async fn client(&self, region: &str) -> aws_sdk_rds::Client {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(region) {
            return client.clone();
        }
        let config = self
            .access
            .in_region(region)
            .sdk_config(self.credentials.as_ref())
            .await;
        let client = aws_sdk_rds::Client::new(&config);
        clients.insert(region.to_string(), client.clone());
        client
    }

    async fn instance(&self, arn: &Arn) -> Result<Instance, Failure> {
        let client = self.client(&arn.region).await;
        let answer = match client
            .describe_db_instances()
            .db_instance_identifier(&arn.name)
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(e) if aws::error_code(&e) == Some("DBInstanceNotFound") => return Ok(Instance::Missing),
            Err(e) => return Err(aws::failure("RDS DescribeDBInstances", &e)),
        };
        let Some(found) = answer
            .db_instances()
            .iter()
            .find(|i| i.db_instance_identifier() == Some(arn.name.as_str()))
        else {
            return Ok(Instance::Missing);
        };
        let status = found.db_instance_status().unwrap_or_default().to_string();
        Ok(match found.read_replica_source_db_instance_identifier() {
            Some(source) if !source.is_empty() => Instance::Replica {
                status,
                source: source.to_string(),
                generation: self.generation(arn).await?,
            },
            _ => Instance::Standalone {
                status,
                generation: self.generation(arn).await?,
            },
        })
    }

    /// A DB cluster's `Status` (`DescribeDBClusters`).
    async fn cluster_status(&self, arn: &Arn) -> Result<String, Failure> {
        let client = self.client(&arn.region).await;
        let answer = client
            .describe_db_clusters()
            .db_cluster_identifier(&arn.text)
            .send()
            .await
            .map_err(|e| aws::failure("RDS DescribeDBClusters", &e))?;
        Ok(answer
            .db_clusters()
            .iter()
            .find(|c| {
                c.db_cluster_arn() == Some(arn.text.as_str()) || c.db_cluster_identifier() == Some(arn.name.as_str())
            })
            .and_then(|c| c.status())
            .unwrap_or("missing")
            .to_string())
    }

    /// The generation tag of a resource, if any.
    async fn generation(&self, arn: &Arn) -> Result<Option<u64>, Failure> {
        let client = self.client(&arn.region).await;
        let answer = client
            .list_tags_for_resource()
            .resource_name(&arn.text)
            .send()
            .await
            .map_err(|e| aws::failure("RDS ListTagsForResource", &e))?;
        Ok(answer
            .tag_list()
            .iter()
            .find(|t| t.key() == Some(GENERATION_TAG))
            .and_then(|t| t.value())
            .and_then(|v| v.parse().ok()))
    }

    /// Writes the order's generation on the resource unless a newer one is there, and reads it
    /// back: a newer generation seen before or after is `Fenced`.
    async fn claim(&self, arn: &Arn, generation: u64) -> Result<(), Failure> {
        match self.generation(arn).await? {
            Some(g) if g > generation => {
                return Err(Failure::Fenced(format!(
                    "{} carries {GENERATION_TAG}={g}, newer than this order's {generation}",
                    arn.text
                )));
            }
            Some(g) if g == generation => return Ok(()),
            _ => {}
        }
        let tag = aws_sdk_rds::types::Tag::builder()
            .key(GENERATION_TAG)
            .value(generation.to_string())
            .build();
        self.client(&arn.region)
            .await
            .add_tags_to_resource()
            .resource_name(&arn.text)
            .tags(tag)
            .send()
            .await
            .map_err(|e| aws::failure("RDS AddTagsToResource", &e))?;
        match self.generation(arn).await? {
            Some(g) if g == generation => Ok(()),
            Some(g) if g > generation => Err(Failure::Fenced(format!(
                "{}: generation {g} tagged it after this order's {generation}",
                arn.text
            ))),
            other => Err(Failure::Retryable(format!(
                "{}: {GENERATION_TAG} reads {other:?} after tagging generation {generation}",
                arn.text
            ))),
        }
    }

    /// Polls `pending` (Ok(None): done; Ok(Some(state)): not yet) every `poll_ms`, at most
    /// `wait_ms`; returns the milliseconds waited.
    async fn wait<F, Fut>(&self, mut pending: F) -> Result<u64, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, Failure>>,
    {
        use std::time::Duration;
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(self.wait_ms);
        loop {
            let Some(state) = pending().await? else {
                return Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
            };
            if tokio::time::Instant::now() + Duration::from_millis(self.poll_ms) > deadline {
                return Err(Failure::Retryable(format!(
                    "not done within wait_ms = {} (last seen: {state}); the next attempt waits again without acting twice",
                    self.wait_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(self.poll_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(region: &str, name: &str) -> Arn {
        Arn::parse(&format!("arn:aws:rds:{region}:111122223333:db:{name}"), "db").expect("a valid ARN")
    }

    fn order(generation: u64, kind: &str, force: bool) -> Order {
        Order {
            generation,
            kind: kind.into(),
            from: Some("us".into()),
            to: "eu".into(),
            serving: vec!["eu".into()],
            reason: "test".into(),
            force_data_loss: force,
        }
    }

    #[test]
    fn arns_are_checked() {
        let parsed =
            Arn::parse("arn:aws:rds:eu-west-1:111122223333:cluster:shop-euw1", "cluster").expect("a valid ARN");
        assert_eq!(
            (parsed.region.as_str(), parsed.name.as_str()),
            ("eu-west-1", "shop-euw1")
        );
        for (bad, why) in [
            ("shop", "not an RDS ARN"),
            ("arn:aws:s3:eu-west-1:111122223333:cluster:x", "not an RDS ARN"),
            ("arn:aws:rds:eu-west:111122223333:cluster:x", "AWS region"),
            ("arn:aws:rds:eu-west-1:1111:cluster:x", "12-digit"),
            ("arn:aws:rds:eu-west-1:111122223333:db:x", "names a db"),
            ("arn:aws:rds:eu-west-1:111122223333:cluster:1x", "not an RDS identifier"),
            (
                "arn:aws:rds:eu-west-1:111122223333:cluster:a--b",
                "not an RDS identifier",
            ),
        ] {
            let problem = Arn::parse(bad, "cluster").expect_err("refused");
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }

    #[test]
    fn rds_promotes_a_replica_finishes_an_earlier_promotion_and_fences() {
        let (us, eu, ap) = (
            arn("us-east-1", "src"),
            arn("eu-west-1", "rep"),
            arn("ap-south-1", "rep2"),
        );
        let source = Instance::Standalone {
            status: AVAILABLE.into(),
            generation: None,
        };
        let replica = |status: &str| Instance::Replica {
            status: status.into(),
            source: us.text.clone(),
            generation: None,
        };
        let tagged = |status: &str, g| Instance::Replica {
            status: status.into(),
            source: us.text.clone(),
            generation: Some(g),
        };
        // Back to the source while a replica is being promoted: refused.
        let Err(Failure::Refused(message)) =
            decide_rds(6, false, ("us", &us, &source), &[("eu", &eu, &tagged("modifying", 5))])
        else {
            panic!("not refused")
        };
        assert!(message.contains("would be a second primary"), "{message}");
        // Promoted by an earlier run that died while waiting: only waited for.
        assert_eq!(
            decide_rds(6, false, ("eu", &eu, &tagged("modifying", 5)), &[("us", &us, &source)]),
            Ok(RdsDecision::Promoting)
        );
        assert_eq!(
            decide_rds(6, false, ("eu", &eu, &tagged("available", 5)), &[("us", &us, &source)]),
            Ok(RdsDecision::Promote)
        );
        assert!(matches!(
            decide_rds(4, false, ("eu", &eu, &tagged("modifying", 5)), &[("us", &us, &source)]),
            Err(Failure::Fenced(_))
        ));
        let promoted = |g| Instance::Standalone {
            status: AVAILABLE.into(),
            generation: Some(g),
        };
        assert_eq!(
            decide_rds(5, false, ("eu", &eu, &replica("available")), &[("us", &us, &source)]),
            Ok(RdsDecision::Promote)
        );
        assert!(matches!(
            decide_rds(5, false, ("eu", &eu, &replica("modifying")), &[("us", &us, &source)]),
            Err(Failure::Retryable(_))
        ));
        assert_eq!(
            decide_rds(5, false, ("eu", &eu, &promoted(5)), &[("us", &us, &source)]),
            Ok(RdsDecision::Done)
        );
        assert!(matches!(
            decide_rds(5, false, ("eu", &eu, &promoted(6)), &[("us", &us, &source)]),
            Err(Failure::Fenced(_))
        ));
        // Another region's replica was promoted: a second promotion would make two primaries.
        let Err(Failure::Fenced(message)) = decide_rds(
            7,
            false,
            ("ap", &ap, &replica("available")),
            &[("us", &us, &source), ("eu", &eu, &promoted(5))],
        ) else {
            panic!("not fenced")
        };
        assert!(message.contains("two primaries"), "{message}");
        // Back to the old source: RDS cannot demote the promoted one.
        let Err(Failure::Refused(message)) = decide_rds(8, false, ("us", &us, &source), &[("eu", &eu, &promoted(5))])
        else {
            panic!("not refused")
        };
        assert!(message.contains("cannot make it a replica again"), "{message}");
        // The source while nothing was promoted.
        assert_eq!(
            decide_rds(1, false, ("us", &us, &source), &[("eu", &eu, &replica("available"))]),
            Ok(RdsDecision::Done)
        );
        assert!(matches!(
            decide_rds(1, false, ("eu", &eu, &Instance::Missing), &[]),
            Err(Failure::Refused(_))
        ));
    }

    #[test]
    fn rds_an_unreadable_other_region_is_unknown_for_an_unplanned_failover_only() {
        let (us, eu, ap) = (
            arn("us-east-1", "src"),
            arn("eu-west-1", "rep"),
            arn("ap-south-1", "rep2"),
        );
        let down = Instance::Unreadable {
            problem: "RDS DescribeDBInstances: ServiceUnavailable".into(),
        };
        let replica = Instance::Replica {
            status: AVAILABLE.into(),
            source: us.text.clone(),
            generation: None,
        };
        let promoted = |g| Instance::Standalone {
            status: AVAILABLE.into(),
            generation: Some(g),
        };
        // The source's region is lost: the replica is promoted all the same.
        assert_eq!(
            decide_rds(5, false, ("eu", &eu, &replica), &[("us", &us, &down)]),
            Ok(RdsDecision::Promote)
        );
        // A planned move waits for every region.
        assert!(matches!(
            decide_rds(5, true, ("eu", &eu, &replica), &[("us", &us, &down)]),
            Err(Failure::Retryable(m)) if m.contains("planned move") && m.contains("ServiceUnavailable")
        ));
        // What was read still counts: a replica promoted in a region that answers fences.
        assert!(matches!(
            decide_rds(
                7,
                false,
                ("ap", &ap, &replica),
                &[("us", &us, &down), ("eu", &eu, &promoted(5))]
            ),
            Err(Failure::Fenced(m)) if m.contains("two primaries")
        ));
        // An earlier run of this order promoted it, then the wait ran out: still done.
        assert_eq!(
            decide_rds(5, false, ("eu", &eu, &promoted(5)), &[("us", &us, &down)]),
            Ok(RdsDecision::Done)
        );
        assert_eq!(
            decide_rds(
                5,
                false,
                (
                    "eu",
                    &eu,
                    &Instance::Replica {
                        status: "modifying".into(),
                        source: us.text.clone(),
                        generation: Some(5),
                    }
                ),
                &[("us", &us, &down)]
            ),
            Ok(RdsDecision::Promoting)
        );
        // The target's own newer tag fences whatever the others.
        assert!(matches!(
            decide_rds(4, true, ("eu", &eu, &promoted(5)), &[("us", &us, &down)]),
            Err(Failure::Fenced(_))
        ));
        // The untagged original source, the replica's region unread: that replica may have
        // been promoted, making the source an old primary: not done until it answers.
        let source = Instance::Standalone {
            status: AVAILABLE.into(),
            generation: None,
        };
        assert!(matches!(
            decide_rds(8, false, ("us", &us, &source), &[("eu", &eu, &down)]),
            Err(Failure::Retryable(m)) if m.contains("old primary")
        ));
    }

    #[cfg(feature = "rds")]
    #[test]
    fn an_empty_failover_state_is_no_move_in_progress() {
        use aws_sdk_rds::types::{FailoverState, FailoverStatus};
        let to = "arn:aws:rds:eu-west-1:111122223333:cluster:euw1";
        assert_eq!(failover_in_progress(None), None);
        assert_eq!(failover_in_progress(Some(&FailoverState::builder().build())), None);
        let only_the_target = FailoverState::builder().to_db_cluster_arn(to).build();
        assert_eq!(failover_in_progress(Some(&only_the_target)), None);
        let blank = FailoverState::builder().status(FailoverStatus::from("")).build();
        assert_eq!(failover_in_progress(Some(&blank)), None);
        let failing = FailoverState::builder()
            .status(FailoverStatus::FailingOver)
            .to_db_cluster_arn(to)
            .build();
        assert_eq!(
            failover_in_progress(Some(&failing)),
            Some(("failing-over".to_string(), to.to_string()))
        );
        let moving = FailoverState::builder()
            .status(FailoverStatus::from("switching-over"))
            .to_db_cluster_arn(to)
            .build();
        assert_eq!(
            failover_in_progress(Some(&moving)),
            Some(("switching-over".to_string(), to.to_string()))
        );
    }

    #[test]
    fn aurora_switches_over_when_planned_and_fails_over_only_when_loss_is_allowed() {
        let us = Arn::parse("arn:aws:rds:us-east-1:111122223333:cluster:use1", "cluster").expect("a valid ARN");
        let eu = Arn::parse("arn:aws:rds:eu-west-1:111122223333:cluster:euw1", "cluster").expect("a valid ARN");
        let global = Global {
            status: AVAILABLE.into(),
            writer: Some(us.text.clone()),
            members: vec![us.text.clone(), eu.text.clone()],
            failover: None,
        };
        assert_eq!(
            decide_aurora(&order(3, "switchover", false), &eu, &global, None, false, false, &[]),
            Ok(AuroraDecision::Switchover)
        );
        assert!(matches!(
            decide_aurora(&order(3, "failover", false), &eu, &global, None, false, false, &[]),
            Err(Failure::Refused(m)) if m.contains("--force-data-loss")
        ));
        assert_eq!(
            decide_aurora(&order(3, "failover", true), &eu, &global, None, false, false, &[]),
            Ok(AuroraDecision::Failover)
        );
        assert_eq!(
            decide_aurora(&order(3, "failover", false), &eu, &global, None, true, false, &[]),
            Ok(AuroraDecision::Failover)
        );
        assert!(matches!(
            decide_aurora(&order(3, "switchover", false), &eu, &global, Some(4), false, false, &[]),
            Err(Failure::Fenced(_))
        ));
        let moving = Global {
            failover: Some(("switching-over".into(), eu.text.clone())),
            ..global.clone()
        };
        assert_eq!(
            decide_aurora(&order(3, "failover", false), &eu, &moving, Some(3), false, false, &[]),
            Ok(AuroraDecision::Wait)
        );
        let done = Global {
            writer: Some(eu.text.clone()),
            ..global.clone()
        };
        assert_eq!(
            decide_aurora(&order(3, "failover", false), &eu, &done, Some(3), false, false, &[]),
            Ok(AuroraDecision::Wait)
        );
        // Detach instead of failover, then a roll-forward finds it detached.
        assert_eq!(
            decide_aurora(&order(3, "failover", true), &eu, &global, None, false, true, &[]),
            Ok(AuroraDecision::Detach)
        );
        let gone = Global {
            members: vec![us.text.clone()],
            ..global.clone()
        };
        assert_eq!(
            decide_aurora(&order(4, "failover", false), &eu, &gone, Some(3), false, true, &[]),
            Ok(AuroraDecision::Detached)
        );
        // A failback after a detach is refused: Aurora cannot make it a secondary again.
        assert!(matches!(
            decide_aurora(&order(5, "failback", false), &us, &gone, None, false, true, &[&eu]),
            Err(Failure::Refused(m)) if m.contains("cannot make it a secondary again")
        ));
        let other = Global {
            members: vec![us.text.clone()],
            ..global
        };
        assert!(matches!(
            decide_aurora(&order(3, "switchover", false), &eu, &other, None, false, false, &[]),
            Err(Failure::Refused(_))
        ));
    }
}
