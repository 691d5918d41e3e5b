//! The drills as data: each scenario is a plan of fault steps over abstract targets and the
//! expectations its measurements must meet.
//!
//! Steps name roles, not processes: the *primary* is the region active when the drill starts,
//! the *secondary* the next one. Whoever runs the drill resolves roles to real processes and
//! fault-proxy links by implementing [`FaultTarget`] (the lab does; so does the drill's own
//! deployment-file target).

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::checker::CheckResult;
use crate::measure::Measurements;

/// Default seconds of normal traffic before the fault (the baseline).
pub const WARMUP_MS_DEFAULT: u64 = 10_000;
/// Default seconds the fault lasts (`--duration-s`).
pub const FAULT_MS_DEFAULT: u64 = 20_000;
/// After DNS answers the original region again, how long the providers (later steps of the
/// failback runbook, polled by the drill) have to follow before the drill asks that they did.
pub const PROVIDER_FAILBACK_GRACE_MS: u64 = 5_000;
/// Default seconds after healing (convergence, failback, the RTO window).
pub const SETTLE_MS_DEFAULT: u64 = 30_000;
/// Flapping-health toggles the region's health this often.
pub const FLAP_PERIOD_MS: u64 = 3_000;
/// Bound on RTO(DNS) in the lab with defaults (the number to reach).
pub const RTO_DNS_MS_MAX: u64 = 5_000;
/// Bound on RTO(99%) before the record's TTL is added.
pub const RTO_99_MS_MAX_BEFORE_TTL: u64 = 5_000;
/// Latency the slow-region scenario adds on each of the region's links, in each direction.
/// A health check of the region crosses two slowed links (the front door, then the shop's
/// store) both ways, so it takes 4 × (50 ± 10) = 160–240 ms longer: a region that is much
/// slower but still inside the default 500 ms check timeout. Slow is not dead only while the
/// slowdown stays under the checks' timeouts; past them a failover is the right answer.
pub const SLOW_LATENCY_MS: u64 = 50;
pub const SLOW_JITTER_MS: u64 = 10;
/// A slow region must keep serving: RTO(99%) may cover the second the fault lands in, no more.
pub const SLOW_RTO_99_MS_MAX: u64 = 1_000;
/// `db-lag`: the standby's replica is delayed this long (at most half the fault) before the
/// primary region dies, so the orders of that window are received and not yet applied.
pub const DB_LAG_LEAD_MS: u64 = 3_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionRole {
    /// The region active when the drill starts.
    Primary,
    /// The next region (the failover target in a two-region lab).
    Secondary,
}

/// A process, or a group of processes, of the deployment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "component", content = "of", rename_all = "snake_case")]
pub enum Component {
    Store(RegionRole),
    /// Every demo app server of the region.
    Apps(RegionRole),
    Proxy(RegionRole),
    /// Every process of the region: store, app servers, proxy.
    Region(RegionRole),
    Controller,
    Vantage(u32),
    /// With several controllers: the member that leads when a step first names it (found at
    /// run time and then pinned, so the heal restarts the member that was killed, not whoever
    /// leads by then).
    Leader,
    /// Everything at a region's site: its processes and, with several controllers, the
    /// controller member and the etcd member that run there.
    Site(RegionRole),
}

/// A connection between components that runs through the fault proxy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "link", rename_all = "snake_case")]
pub enum Link {
    /// Replication from one region's store to another's.
    Replication { from: RegionRole, to: RegionRole },
    /// A vantage agent's health checks of a region (`vantage` none: every vantage).
    Health { vantage: Option<u32>, region: RegionRole },
    /// The controller's calls to a region (its store's and proxy's admin APIs).
    Controller { region: RegionRole },
    /// Clients → the region's proxy (the shop's front door).
    Frontend { region: RegionRole },
    /// The region's app servers → its store.
    AppStore { region: RegionRole },
    /// Everyone else → the region's databases (a lab with `--databases`: the controller's
    /// steps and checks and the other regions' replicas; the region's own shops and guard
    /// reach them directly).
    Database { region: RegionRole },
    /// With several controllers: the (pinned) leader's links to every etcd member and the
    /// other members' link to it. Cut, it still sees the regions but not etcd.
    LeaderIsolation,
    /// With several controllers: the (pinned) leader's link to the DNS server's admin API,
    /// which its runbook's DNS step pushes through.
    LeaderDns,
}

/// Direction of a toxic, as Toxiproxy names them: upstream is client → server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Upstream,
    Downstream,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToxicKind {
    Latency {
        latency_ms: u64,
        jitter_ms: u64,
    },
    /// Toxiproxy's `timeout` with 0: data stops, nothing closes.
    Blackhole,
    ResetPeer,
    Bandwidth {
        rate_kbps: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Toxic {
    /// Unique per link: the name removes it again.
    pub name: String,
    pub stream: Stream,
    #[serde(flatten)]
    pub kind: ToxicKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FaultAction {
    /// SIGKILL.
    Kill {
        target: Component,
    },
    /// SIGSTOP: hung, not dead.
    Stop {
        target: Component,
    },
    /// SIGCONT.
    Cont {
        target: Component,
    },
    /// Start again (after a kill) with the same arguments and data.
    Restart {
        target: Component,
    },
    AddToxic {
        link: Link,
        toxic: Toxic,
    },
    RemoveToxic {
        link: Link,
        name: String,
    },
    /// Cut the region's network link (packets vanish; a lab with `--netns`).
    CutNetwork {
        region: RegionRole,
    },
    HealNetwork {
        region: RegionRole,
    },
    /// Fill the region's data disk below its store's free-space watermark (a lab with
    /// `--disk-mib`): the store refuses new writes and keeps serving reads and deletes.
    FillDisk {
        region: RegionRole,
    },
    FreeDisk {
        region: RegionRole,
    },
    /// With several controllers: wait (at most [`AWAIT_MS_MAX`]) until the leader (pinned
    /// here) has a step of its runbook under way (`/health`'s `ha.step_in_flight`: the step's
    /// guard in etcd passed). Breaks nothing.
    AwaitRunbook,
    /// With several controllers: wait (at most [`AWAIT_MS_MAX`]) until a member other than
    /// the pinned leader acts and no runbook is in progress any more (it rolled the
    /// interrupted one forward). Breaks nothing.
    AwaitTakeover,
    /// With several controllers: wait (at most [`AWAIT_MS_MAX`]) until a member other than the
    /// pinned leader acts, records the region as active and has no runbook in progress: it
    /// took over and failed over. Breaks nothing; the heal waits for it, so the fault lasts
    /// until the failover however long a takeover takes on a busy machine.
    AwaitFailover {
        to: RegionRole,
    },
    /// With several controllers: make the member at the region's site the leader before the
    /// fault (SIGSTOP the other members until it leads, then SIGCONT them) and pin it.
    LeadFrom {
        region: RegionRole,
    },
    /// `switchyard lab --databases`: the region's MariaDB replica applies what it receives
    /// `delay_s` late (`MASTER_DELAY`): it lags behind the primary by that much.
    DelayReplication {
        region: RegionRole,
        delay_s: u64,
    },
    /// Its applier back in step (`MASTER_DELAY = 0`).
    UndelayReplication {
        region: RegionRole,
    },
}

/// Longest an `await` step waits for its condition before it fails.
pub const AWAIT_MS_MAX: u64 = 60_000;
/// The leader lease the HA scenarios assume (`[controller.ha] lease_ms`, the default and the
/// lab's): a dead leader's region fails over at most this much later than a follower's.
pub const HA_LEASE_MS: u64 = 5_000;
/// A killed leader is replaced within the lease plus this (a follower polls etcd every 250 ms;
/// the rest is the renewal cadence and scheduling on a busy machine).
pub const TAKEOVER_SLACK_MS: u64 = 1_000;

impl FaultAction {
    /// The action that undoes this one, if it needs undoing.
    pub fn undo(&self) -> Option<FaultAction> {
        match self {
            FaultAction::Kill { target } => Some(FaultAction::Restart { target: target.clone() }),
            FaultAction::Stop { target } => Some(FaultAction::Cont { target: target.clone() }),
            FaultAction::AddToxic { link, toxic } => Some(FaultAction::RemoveToxic {
                link: link.clone(),
                name: toxic.name.clone(),
            }),
            FaultAction::CutNetwork { region } => Some(FaultAction::HealNetwork { region: *region }),
            FaultAction::FillDisk { region } => Some(FaultAction::FreeDisk { region: *region }),
            FaultAction::DelayReplication { region, .. } => Some(FaultAction::UndelayReplication { region: *region }),
            FaultAction::AwaitRunbook
            | FaultAction::AwaitTakeover
            | FaultAction::AwaitFailover { .. }
            | FaultAction::LeadFrom { .. } => None,
            FaultAction::Cont { .. }
            | FaultAction::Restart { .. }
            | FaultAction::RemoveToxic { .. }
            | FaultAction::HealNetwork { .. }
            | FaultAction::FreeDisk { .. }
            | FaultAction::UndelayReplication { .. } => None,
        }
    }

    /// A short human label for logs and chart markers.
    pub fn label(&self) -> String {
        match self {
            FaultAction::Kill { target } => format!("kill -9 {}", component_label(target)),
            FaultAction::Stop { target } => format!("SIGSTOP {}", component_label(target)),
            FaultAction::Cont { target } => format!("SIGCONT {}", component_label(target)),
            FaultAction::Restart { target } => format!("restart {}", component_label(target)),
            FaultAction::AddToxic { link, toxic } => {
                format!("{} {:?} on {}", toxic.name, toxic.stream, link_label(link)).to_lowercase()
            }
            FaultAction::RemoveToxic { link, name } => format!("remove {name} from {}", link_label(link)),
            FaultAction::CutNetwork { region } => format!("cut the {region:?} region's network").to_lowercase(),
            FaultAction::HealNetwork { region } => format!("heal the {region:?} region's network").to_lowercase(),
            FaultAction::FillDisk { region } => format!("fill the {region:?} store's disk").to_lowercase(),
            FaultAction::FreeDisk { region } => format!("free the {region:?} store's disk").to_lowercase(),
            FaultAction::AwaitRunbook => "wait for a step of the leader's runbook under way".into(),
            FaultAction::AwaitTakeover => "wait for another member to lead and finish the runbook".into(),
            FaultAction::AwaitFailover { to } => {
                format!("wait for another member to lead and fail over to the {}", role(to))
            }
            FaultAction::LeadFrom { region } => format!("make the {} site's controller the leader", role(region)),
            FaultAction::DelayReplication { region, delay_s } => {
                format!("delay the {} database's replica by {delay_s} s", role(region))
            }
            FaultAction::UndelayReplication { region } => {
                format!("end the {} database's replica delay", role(region))
            }
        }
    }

    /// Whether the action breaks the leader itself (the drill records when, to time the
    /// takeover): killing or stopping it, cutting it off, killing the site it leads from.
    pub fn hits_leader(&self) -> bool {
        match self {
            FaultAction::Kill { target } | FaultAction::Stop { target } => {
                matches!(target, Component::Leader | Component::Site(_))
            }
            FaultAction::AddToxic { link, .. } => *link == Link::LeaderIsolation,
            _ => false,
        }
    }
}

fn role(role: &RegionRole) -> &'static str {
    match role {
        RegionRole::Primary => "primary",
        RegionRole::Secondary => "secondary",
    }
}

pub fn component_label(component: &Component) -> String {
    match component {
        Component::Store(r) => format!("{} store", role(r)),
        Component::Apps(r) => format!("{} app servers", role(r)),
        Component::Proxy(r) => format!("{} proxy", role(r)),
        Component::Region(r) => format!("{} region", role(r)),
        Component::Controller => "controller".into(),
        Component::Vantage(v) => format!("vantage {v}"),
        Component::Leader => "leader controller".into(),
        Component::Site(r) => format!("{} site (region, controller, etcd)", role(r)),
    }
}

pub fn link_label(link: &Link) -> String {
    match link {
        Link::Replication { from, to } => format!("replication {}→{}", role(from), role(to)),
        Link::Health { vantage: None, region } => format!("health checks of {}", role(region)),
        Link::Health {
            vantage: Some(v),
            region,
        } => format!("vantage {v} checks of {}", role(region)),
        Link::Controller { region } => format!("controller→{}", role(region)),
        Link::Frontend { region } => format!("clients→{}", role(region)),
        Link::AppStore { region } => format!("{} apps→store", role(region)),
        Link::Database { region } => format!("everyone else→{} databases", role(region)),
        Link::LeaderIsolation => "leader↔etcd and the other members".into(),
        Link::LeaderDns => "leader→DNS admin".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("this deployment cannot {action}: {reason}")]
    Unsupported { action: String, reason: String },
    #[error("{action} failed: {reason}")]
    Failed { action: String, reason: String },
}

/// Which real region plays which role in this run (decided when the drill starts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub primary: String,
    pub secondary: String,
}

impl Roles {
    pub fn region(&self, role: RegionRole) -> &str {
        match role {
            RegionRole::Primary => &self.primary,
            RegionRole::Secondary => &self.secondary,
        }
    }
}

/// What a drill injects faults through. The lab implements it over its process supervisor
/// and fault proxies; the drill's runtime implements it over a deployment file
/// ([`crate::runtime::target::DeploymentTarget`]). `apply` must be idempotent enough to be
/// retried by a heal: removing a toxic that is gone, or continuing a running process, is Ok.
pub trait FaultTarget: Send + Sync {
    fn apply(&self, roles: &Roles, action: &FaultAction) -> impl Future<Output = Result<(), FaultError>> + Send;

    /// With several controllers: the member [`Component::Leader`] stands for, once a step
    /// found it (it stays the same member for the rest of the drill).
    fn leader(&self) -> Option<String> {
        None
    }
}

/// The faults in force, so an interrupted drill can heal exactly what it broke.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    outstanding: Vec<FaultAction>,
}

impl Ledger {
    /// Notes that `action` was applied (successfully or not: a failed kill may have killed).
    pub fn applied(&mut self, action: &FaultAction) {
        if let Some(position) = self
            .outstanding
            .iter()
            .position(|fault| fault.undo().as_ref() == Some(action))
        {
            self.outstanding.remove(position);
        } else if action.undo().is_some() && !self.outstanding.contains(action) {
            self.outstanding.push(action.clone());
        }
    }

    /// The actions that undo every outstanding fault, newest first.
    pub fn heal_plan(&self) -> Vec<FaultAction> {
        self.outstanding.iter().rev().filter_map(FaultAction::undo).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Before the fault, at its time: sets the stage (which member leads); not a fault.
    Prepare,
    Fault,
    Heal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds after the drill started.
    pub at_ms: u64,
    pub phase: StepPhase,
    pub action: FaultAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub warmup_ms: u64,
    pub fault_ms: u64,
    pub settle_ms: u64,
}

impl Default for Durations {
    fn default() -> Durations {
        Durations {
            warmup_ms: WARMUP_MS_DEFAULT,
            fault_ms: FAULT_MS_DEFAULT,
            settle_ms: SETTLE_MS_DEFAULT,
        }
    }
}

impl Durations {
    pub fn heal_at_ms(&self) -> u64 {
        self.warmup_ms + self.fault_ms
    }

    pub fn total_ms(&self) -> u64 {
        self.heal_at_ms() + self.settle_ms
    }

    /// The phase a drill is in `elapsed_ms` after its start: `warmup`, `fault` or `settle`.
    pub fn phase_at(&self, elapsed_ms: u64) -> &'static str {
        if elapsed_ms < self.warmup_ms {
            "warmup"
        } else if elapsed_ms < self.heal_at_ms() {
            "fault"
        } else {
            "settle"
        }
    }
}

#[cfg(test)]
mod phase_tests {
    use super::Durations;

    #[test]
    fn the_phase_follows_the_durations() {
        let durations = Durations {
            warmup_ms: 10_000,
            fault_ms: 20_000,
            settle_ms: 5_000,
        };
        assert_eq!(durations.phase_at(0), "warmup");
        assert_eq!(durations.phase_at(9_999), "warmup");
        assert_eq!(durations.phase_at(10_000), "fault");
        assert_eq!(durations.phase_at(29_999), "fault");
        assert_eq!(durations.phase_at(30_000), "settle");
        assert_eq!(durations.phase_at(99_000), "settle");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverExpectation {
    Required,
    Forbidden,
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectations {
    pub failover: FailoverExpectation,
    pub rto_dns_ms_max: Option<u64>,
    /// Bound on RTO(99%) before the record's TTL is added.
    pub rto_99_ms_max_before_ttl: Option<u64>,
    /// Whether the TTL is added to that bound (clients keep the old answer that long).
    pub rto_99_plus_ttl: bool,
    /// Lost acknowledged writes allowed (RPO, in writes).
    pub lost_max: usize,
    /// Active-region changes allowed before the heal (flapping: at most one move, no back and
    /// forth while the health flaps; the failback after the heal is not counted).
    pub region_changes_max: Option<u64>,
    /// The DNS answer must come back to the pre-fault region after healing.
    pub failback: bool,
    /// The primary is partitioned during the fault: its writes are reported separately.
    pub primary_isolated: bool,
    /// With several controllers: what the audit logs and the members must show
    /// ([`crate::ha`]).
    #[serde(default)]
    pub ha: Option<HaExpectation>,
    /// With databases (`switchyard lab --databases`): what their steps must do.
    #[serde(default)]
    pub database: crate::databases::DbExpectation,
}

/// What a scenario that breaks the leader of several controllers expects of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaExpectation {
    /// The leader was killed mid-runbook: another member leads within the lease plus
    /// [`TAKEOVER_SLACK_MS`] and finishes the failover with a higher generation, and no step is
    /// applied under two generations.
    Crash,
    /// The leader was cut off from etcd and the other members: it stops acting, another member
    /// leads and finishes the failover, and the old leader's late pushes are refused.
    Isolation,
    /// The leader's whole site was lost: another member leads and fails over.
    SiteLoss,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    pub expectations: Expectations,
}

pub const NAMES: [&str; 16] = [
    "region-outage",
    "region-partition",
    "vantage-partition",
    "flapping-health",
    "slow-region",
    "store-crash",
    "failback",
    "region-hang",
    "controller-partition",
    "region-isolation",
    "disk-full",
    "controller-crash",
    "controller-isolation",
    "leader-region-outage",
    "db-lag",
    "db-partition",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario '{0}': choose one of {names}", names = NAMES.join(", "))]
pub struct UnknownScenario(pub String);

fn expect(failover: FailoverExpectation) -> Expectations {
    Expectations {
        failover,
        rto_dns_ms_max: None,
        rto_99_ms_max_before_ttl: None,
        rto_99_plus_ttl: false,
        lost_max: 0,
        region_changes_max: None,
        failback: false,
        primary_isolated: false,
        ha: None,
        database: crate::databases::DbExpectation::None,
    }
}

/// A failover within the RTO bounds of a region lost: [`RTO_DNS_MS_MAX`], and
/// [`RTO_99_MS_MAX_BEFORE_TTL`] plus the TTL.
fn moved_within_rto() -> Expectations {
    Expectations {
        rto_dns_ms_max: Some(RTO_DNS_MS_MAX),
        rto_99_ms_max_before_ttl: Some(RTO_99_MS_MAX_BEFORE_TTL),
        rto_99_plus_ttl: true,
        ..expect(FailoverExpectation::Required)
    }
}

pub fn by_name(name: &str) -> Result<Scenario, UnknownScenario> {
    use FailoverExpectation::*;
    let (summary, expectations) = match name {
        "region-outage" => (
            "kill -9 every process of the primary region: traffic must move to the secondary",
            Expectations {
                database: crate::databases::DbExpectation::Promote,
                ..moved_within_rto()
            },
        ),
        // A hang fails health checks by timeout (the check timeout, 500 ms by default) instead
        // of a fast refusal: each failed round lasts that much longer, which the outage's
        // RTO(DNS) bound still covers.
        "region-hang" => (
            "SIGSTOP every process of the primary region (hung, not dead: timeouts, not refusals), SIGCONT at heal: traffic must move to the secondary",
            Expectations {
                database: crate::databases::DbExpectation::Promote,
                ..moved_within_rto()
            },
        ),
        "region-partition" => (
            "cut the primary off from the other regions, the controller and the vantage points while its clients still reach it (split brain)",
            Expectations {
                // Its databases stay reachable by the controller (their links are not cut), so
                // the old primary is fenced before the standby is promoted.
                database: crate::databases::DbExpectation::Promote,
                primary_isolated: true,
                ..expect(Required)
            },
        ),
        "vantage-partition" => (
            "cut one vantage point off from the primary: one observer's view must not move traffic",
            Expectations {
                region_changes_max: Some(0),
                ..expect(Forbidden)
            },
        ),
        // Packets vanish: like a hang, each check runs to its timeout.
        "region-isolation" => (
            "cut the primary region's network link (a lab started with --netns): traffic must move to the secondary, nothing acknowledged lost",
            moved_within_rto(),
        ),
        // Reads still work, so only the write probe (the store check's `write = true`) sees
        // it: each failed round ends at once (a refusal), like an outage.
        "disk-full" => (
            "fill the primary store's data disk (a lab started with --disk-mib): writes are refused, traffic must move to the secondary, nothing acknowledged lost; free it at heal",
            Expectations {
                rto_dns_ms_max: Some(RTO_DNS_MS_MAX),
                ..expect(Required)
            },
        ),
        // The three below need several controllers (`switchyard lab --controllers 3`).
        "controller-crash" => (
            "with several controllers: hold the leader's DNS step, kill the primary region, and kill -9 the leader while its runbook is in flight; restart nothing: another member must finish the failover with a higher generation, no step applied under two generations",
            Expectations {
                ha: Some(HaExpectation::Crash),
                ..expect(Required)
            },
        ),
        "controller-isolation" => (
            "with several controllers: hold the leader's DNS step, kill the primary region, and cut the leader off from etcd and the other members while its runbook is in flight (it still sees the regions): it must stop acting, another member finishes the failover, the old leader's late pushes are refused",
            Expectations {
                ha: Some(HaExpectation::Isolation),
                ..expect(Required)
            },
        ),
        // The leader's lease must run out before anyone acts: RTO(DNS) grows by at most it.
        "leader-region-outage" => (
            "with several controllers: make the primary site's controller the leader, then kill -9 the whole site (region, controller, etcd member): another member must lead and fail over, RTO(DNS) at most the lease longer than region-outage's",
            Expectations {
                rto_dns_ms_max: Some(RTO_DNS_MS_MAX + HA_LEASE_MS),
                rto_99_ms_max_before_ttl: Some(RTO_99_MS_MAX_BEFORE_TTL + HA_LEASE_MS),
                rto_99_plus_ttl: true,
                ha: Some(HaExpectation::SiteLoss),
                ..expect(Required)
            },
        ),
        "controller-partition" => (
            "cut the controller's own checks off from the primary (its uplink, not the region): the controller alone must not move traffic",
            Expectations {
                region_changes_max: Some(0),
                ..expect(Forbidden)
            },
        ),
        "flapping-health" => (
            "make the primary's health checks fail and pass every few seconds: no back and forth",
            Expectations {
                region_changes_max: Some(1),
                ..expect(Any)
            },
        ),
        "slow-region" => (
            "add latency to the primary's links: slow is not dead, no failover and no failed requests",
            Expectations {
                rto_99_ms_max_before_ttl: Some(SLOW_RTO_99_MS_MAX),
                region_changes_max: Some(0),
                ..expect(Forbidden)
            },
        ),
        "store-crash" => (
            "kill -9 the primary's store and restart it: no acknowledged write may be lost",
            expect(Any),
        ),
        "failback" => (
            "kill the primary region, let traffic fail over, restore it and check traffic returns with nothing lost",
            Expectations {
                failback: true,
                database: crate::databases::DbExpectation::Promote,
                ..expect(Required)
            },
        ),
        // A lab with --databases: the standby's MariaDB applies DB_LAG_DELAY_S late when the
        // primary region dies, so the mysql_promote step must refuse and name the loss.
        "db-lag" => (
            "with --databases: delay the secondary's MariaDB replica far beyond promote_lag_max_ms, then kill -9 the primary region: promotion must be refused, naming the transactions it would lose",
            Expectations {
                database: crate::databases::DbExpectation::Refuse,
                ..expect(Any)
            },
        ),
        // A lab with --databases: region-partition, and the databases of the primary cut off
        // from the controller too (its steps cannot fence the old primary), while the region's
        // shops keep writing to them. Only the region's guard can stop those writes.
        "db-partition" => (
            "with --databases: cut the primary off from the other regions, the controller and the vantage points, its databases included, while its shops still write to them: the standby is promoted and the old primary's guard must stop its writes within a bound",
            Expectations {
                database: crate::databases::DbExpectation::Guarded,
                primary_isolated: true,
                ..expect(Required)
            },
        ),
        other => return Err(UnknownScenario(other.to_string())),
    };
    let name = NAMES
        .iter()
        .find(|n| **n == name)
        .expect("every scenario matched above is in NAMES");
    Ok(Scenario {
        name,
        summary,
        expectations,
    })
}

/// The toxic `kind` on both directions of `link`, named `PREFIX-up` and `PREFIX-down`.
fn both_ways(link: Link, prefix: &str, kind: ToxicKind) -> Vec<FaultAction> {
    [Stream::Upstream, Stream::Downstream]
        .into_iter()
        .map(|stream| FaultAction::AddToxic {
            link: link.clone(),
            toxic: Toxic {
                name: format!("{prefix}-{}", if stream == Stream::Upstream { "up" } else { "down" }),
                stream,
                kind: kind.clone(),
            },
        })
        .collect()
}

fn blackhole(link: Link, prefix: &str) -> Vec<FaultAction> {
    both_ways(link, prefix, ToxicKind::Blackhole)
}

fn latency(link: Link) -> Vec<FaultAction> {
    both_ways(
        link,
        "drill-slow",
        ToxicKind::Latency {
            latency_ms: SLOW_LATENCY_MS,
            jitter_ms: SLOW_JITTER_MS,
        },
    )
}

/// Faults at `at`, and at `heal` their undoing in reverse order.
fn fault_then_heal(faults: Vec<FaultAction>, at: u64, heal: u64) -> Vec<Step> {
    let undo: Vec<Step> = faults
        .iter()
        .rev()
        .filter_map(FaultAction::undo)
        .map(|action| Step {
            at_ms: heal,
            phase: StepPhase::Heal,
            action,
        })
        .collect();
    faults
        .into_iter()
        .map(|action| Step {
            at_ms: at,
            phase: StepPhase::Fault,
            action,
        })
        .chain(undo)
        .collect()
}

/// `controller-crash` (`crash`) and `controller-isolation`: the leader's DNS pushes are held
/// (its link to the DNS admin API blackholed, so the DNS step cannot finish), the primary region
/// is killed, and once the leader's runbook is in flight the leader is killed (crash) or cut off
/// from etcd and the other members (isolation). The hold is lifted only after another member
/// took over and finished: what the old leader had sent (the fault proxy holds a held link's
/// bytes, so even a dead leader's request is still delivered) or still retries arrives late,
/// with the old generation, and must be refused; the DNS answer moves by the new leader's
/// push alone.
fn leader_plan(crash: bool, at: u64, heal: u64) -> Vec<Step> {
    use RegionRole::Primary;
    let hold = blackhole(Link::LeaderDns, "drill-hold-dns");
    let isolate = blackhole(Link::LeaderIsolation, "drill-isolate-leader");
    let region = FaultAction::Kill {
        target: Component::Region(Primary),
    };
    let mut fault: Vec<FaultAction> = hold.clone();
    fault.push(region.clone());
    fault.push(FaultAction::AwaitRunbook);
    let mut heals: Vec<FaultAction> = Vec::new();
    if crash {
        let kill = FaultAction::Kill {
            target: Component::Leader,
        };
        fault.push(kill.clone());
        heals.extend(kill.undo());
    } else {
        fault.extend(isolate.iter().cloned());
        heals.extend(isolate.iter().rev().filter_map(FaultAction::undo));
    }
    fault.push(FaultAction::AwaitTakeover);
    fault.extend(hold.iter().rev().filter_map(FaultAction::undo));
    heals.extend(region.undo());
    staged(fault, at, heals, heal)
}

/// `faults` in order at `at`, then `heals` in order at `heal`.
fn staged(
    faults: impl IntoIterator<Item = FaultAction>,
    at: u64,
    heals: impl IntoIterator<Item = FaultAction>,
    heal: u64,
) -> Vec<Step> {
    faults
        .into_iter()
        .map(|action| Step {
            at_ms: at,
            phase: StepPhase::Fault,
            action,
        })
        .chain(heals.into_iter().map(|action| Step {
            at_ms: heal,
            phase: StepPhase::Heal,
            action,
        }))
        .collect()
}

impl Scenario {
    /// The fault steps, in time order.
    pub fn plan(&self, durations: &Durations) -> Vec<Step> {
        use RegionRole::*;
        let at = durations.warmup_ms;
        let heal = durations.heal_at_ms();
        match self.name {
            "region-outage" | "failback" => fault_then_heal(
                vec![FaultAction::Kill {
                    target: Component::Region(Primary),
                }],
                at,
                heal,
            ),
            // The processes region-outage kills (proxy, app servers, store), frozen one group
            // per step; the heal resumes them in reverse, the store first, so the front door
            // comes back with its backends already answering.
            "region-hang" => fault_then_heal(
                vec![
                    FaultAction::Stop {
                        target: Component::Proxy(Primary),
                    },
                    FaultAction::Stop {
                        target: Component::Apps(Primary),
                    },
                    FaultAction::Stop {
                        target: Component::Store(Primary),
                    },
                ],
                at,
                heal,
            ),
            "store-crash" => fault_then_heal(
                vec![FaultAction::Kill {
                    target: Component::Store(Primary),
                }],
                at,
                heal,
            ),
            "region-partition" | "db-partition" => {
                let mut faults = Vec::new();
                if self.name == "db-partition" {
                    faults.extend(blackhole(Link::Database { region: Primary }, "drill-cut-db"));
                }
                faults.extend(blackhole(
                    Link::Replication {
                        from: Primary,
                        to: Secondary,
                    },
                    "drill-cut-repl-out",
                ));
                faults.extend(blackhole(
                    Link::Replication {
                        from: Secondary,
                        to: Primary,
                    },
                    "drill-cut-repl-in",
                ));
                faults.extend(blackhole(Link::Controller { region: Primary }, "drill-cut-controller"));
                faults.extend(blackhole(
                    Link::Health {
                        vantage: None,
                        region: Primary,
                    },
                    "drill-cut-health",
                ));
                fault_then_heal(faults, at, heal)
            }
            "vantage-partition" => fault_then_heal(
                blackhole(
                    Link::Health {
                        vantage: Some(0),
                        region: Primary,
                    },
                    "drill-cut-vantage",
                ),
                at,
                heal,
            ),
            "region-isolation" => fault_then_heal(vec![FaultAction::CutNetwork { region: Primary }], at, heal),
            "controller-crash" | "controller-isolation" => leader_plan(self.name == "controller-crash", at, heal),
            "leader-region-outage" => {
                let mut steps = vec![Step {
                    at_ms: at,
                    phase: StepPhase::Prepare,
                    action: FaultAction::LeadFrom { region: Primary },
                }];
                let kill = FaultAction::Kill {
                    target: Component::Site(Primary),
                };
                let await_failover = FaultAction::AwaitFailover { to: Secondary };
                let heals = kill.undo();
                steps.extend(staged([kill, await_failover], at, heals, heal));
                steps
            }
            "disk-full" => fault_then_heal(vec![FaultAction::FillDisk { region: Primary }], at, heal),
            // The delay first, the region's death DB_LAG_LEAD_MS later (writes in between are
            // received and not yet applied); healed in reverse.
            "db-lag" => {
                let delay = FaultAction::DelayReplication {
                    region: Secondary,
                    delay_s: crate::runtime::databases::DB_LAG_DELAY_S,
                };
                let kill = FaultAction::Kill {
                    target: Component::Region(Primary),
                };
                let kill_at = at + DB_LAG_LEAD_MS.min(durations.fault_ms / 2);
                vec![
                    Step {
                        at_ms: at,
                        phase: StepPhase::Fault,
                        action: delay.clone(),
                    },
                    Step {
                        at_ms: kill_at,
                        phase: StepPhase::Fault,
                        action: kill.clone(),
                    },
                ]
                .into_iter()
                .chain([kill, delay].iter().filter_map(FaultAction::undo).map(|action| Step {
                    at_ms: heal,
                    phase: StepPhase::Heal,
                    action,
                }))
                .collect()
            }
            "controller-partition" => fault_then_heal(
                blackhole(Link::Controller { region: Primary }, "drill-cut-controller"),
                at,
                heal,
            ),
            "slow-region" => {
                let mut faults = latency(Link::Frontend { region: Primary });
                faults.extend(latency(Link::AppStore { region: Primary }));
                fault_then_heal(faults, at, heal)
            }
            "flapping-health" => {
                let mut steps = Vec::new();
                let mut t = at;
                let mut down = true;
                while t < heal {
                    let faults = blackhole(
                        Link::Health {
                            vantage: None,
                            region: Primary,
                        },
                        "drill-flap",
                    );
                    let actions: Vec<FaultAction> = if down {
                        faults
                    } else {
                        faults.iter().rev().filter_map(FaultAction::undo).collect()
                    };
                    steps.extend(actions.into_iter().map(|action| Step {
                        at_ms: t,
                        phase: StepPhase::Fault,
                        action,
                    }));
                    down = !down;
                    t += FLAP_PERIOD_MS;
                }
                if !down {
                    // The last toggle left the checks cut: heal them.
                    let faults = blackhole(
                        Link::Health {
                            vantage: None,
                            region: Primary,
                        },
                        "drill-flap",
                    );
                    steps.extend(faults.iter().rev().filter_map(FaultAction::undo).map(|action| Step {
                        at_ms: heal,
                        phase: StepPhase::Heal,
                        action,
                    }));
                }
                steps
            }
            other => unreachable!("scenario {other} is built by by_name only"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectationResult {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub passed: bool,
}

fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "never".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0))
}

/// Judges the measurements against the scenario. `ttl_s` is the failover record's TTL.
pub fn evaluate(
    scenario: &Scenario,
    measured: &Measurements,
    check: &CheckResult,
    ttl_s: u32,
) -> Vec<ExpectationResult> {
    let e = &scenario.expectations;
    let mut results = Vec::new();
    let mut push = |name: &str, expected: String, actual: String, passed: bool| {
        results.push(ExpectationResult {
            name: name.to_string(),
            expected,
            actual,
            passed,
        })
    };
    push(
        "faults injected",
        "every fault step succeeded".into(),
        format!("{} of {} failed", measured.steps_failed, measured.steps),
        measured.steps > 0 && measured.steps_failed == 0,
    );
    match e.failover {
        FailoverExpectation::Required => push(
            "failover",
            "the controller fails over (generation rises)".into(),
            format!("{} failover(s)", measured.failovers),
            measured.failovers >= 1,
        ),
        FailoverExpectation::Forbidden => push(
            "no false failover",
            "0 failovers".into(),
            format!("{} failover(s)", measured.false_failovers),
            measured.false_failovers == 0,
        ),
        FailoverExpectation::Any => {}
    }
    if let Some(max) = e.rto_dns_ms_max {
        push(
            "RTO(DNS)",
            format!("≤ {}", ms(Some(max))),
            ms(measured.rto_dns_ms),
            measured.rto_dns_ms.is_some_and(|v| v <= max),
        );
    }
    if let Some(max) = e.rto_99_ms_max_before_ttl {
        let max = max + if e.rto_99_plus_ttl { u64::from(ttl_s) * 1000 } else { 0 };
        push(
            "RTO(99%)",
            format!("≤ {}", ms(Some(max))),
            ms(measured.rto_99_ms),
            measured.rto_99_ms.is_some_and(|v| v <= max),
        );
    }
    if e.failover == FailoverExpectation::Required {
        // Every provider the runbook drives must have followed the failover.
        for provider in &measured.providers {
            push(
                &format!("RTO({})", provider.provider),
                format!("{} points at another region after the fault", provider.provider),
                match (&provider.switched_to, provider.rto_ms) {
                    (Some(region), Some(rto)) => format!("{} ({region})", ms(Some(rto))),
                    _ => format!("unchanged ({})", provider.before.as_deref().unwrap_or("no region")),
                },
                provider.rto_ms.is_some(),
            );
        }
    }
    if let Some(max) = e.region_changes_max {
        push(
            "active-region changes while the fault lasts",
            format!("≤ {max}"),
            measured.region_changes_during_fault.to_string(),
            measured.region_changes_during_fault <= max,
        );
    }
    if e.failback {
        push(
            "failback",
            "DNS answers the original region again after healing".into(),
            ms(measured.failback_ms),
            measured.failback_ms.is_some(),
        );
    }
    let failback_seen_at = measured
        .failback_ms
        .zip(measured.heal_ms)
        .map(|(back, heal)| heal + back);
    if failback_seen_at.is_some_and(|at| measured.end_ms >= at + PROVIDER_FAILBACK_GRACE_MS) {
        // The controller failed back: every provider that followed the failover must follow
        // the failback too (a step refused at failback leaves it, and the controller, stuck).
        // Only asked when the drill watched long enough after DNS moved back.
        for provider in measured.providers.iter().filter(|p| p.switched_to.is_some()) {
            let before = provider.before.as_deref().unwrap_or("the original region");
            push(
                &format!("failback({})", provider.provider),
                format!("{} points at {before} again after the failback", provider.provider),
                match provider.back_ms {
                    Some(back) => format!("{} after heal", ms(Some(back))),
                    None => format!("still at {}", provider.last.as_deref().unwrap_or("no region")),
                },
                provider.back_ms.is_some(),
            );
        }
    }
    push(
        "RPO (acknowledged writes lost)",
        format!("≤ {}", e.lost_max),
        check.lost.to_string(),
        check.lost <= e.lost_max,
    );
    if e.primary_isolated {
        push(
            "isolated writes reported",
            "writes acknowledged by the isolated region are accounted for".into(),
            format!(
                "{} acknowledged, {} overwritten by last-writer-wins, {} lost",
                check.isolated_acknowledged, check.isolated_overwritten, check.isolated_lost
            ),
            check.isolated_acknowledged > 0,
        );
    }
    push(
        "anomalies",
        "none (refused writes present, unknown values)".into(),
        format!(
            "{} refused-but-present, {} unknown",
            check.failed_present, check.unknown_values
        ),
        check.failed_present == 0 && check.unknown_values == 0,
    );
    push(
        "converged",
        "every region holds the same data after healing".into(),
        format!(
            "{} divergent key(s); lag ≤ {} ms after {}",
            check.divergent_keys.len(),
            crate::measure::CONVERGED_LAG_MS_MAX,
            ms(measured.converge_ms)
        ),
        check.divergent_keys.is_empty(),
    );
    results
}

#[cfg(test)]
mod tests;
