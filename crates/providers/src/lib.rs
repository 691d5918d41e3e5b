//! Actuators for the infrastructure users already run — DNS providers, load balancers,
//! parameter stores, databases, media (rsync, S3) — and alert channels. Each is a runbook step kind the
//! controller runs with the order's generation as fencing token.
//!
//! Must not depend on: `controller` (the controller depends on this crate), `store`, `lab`.
//!
//! # How a provider is built (every module follows this)
//! - `Settings`: its `[runbook.KIND]` sub-table (`#[serde(deny_unknown_fields)]`, fields as
//!   `toml::Spanned` where a problem must point at a line), and `Settings::check`, which
//!   reports every problem through [`Checker`] (line numbers come from the spans), resolves
//!   secrets through [`secret::SecretSource`] and returns the ready actuator.
//! - The actuator: `async fn run(&self, order: &Order) -> Outcome`. It reads the current state
//!   first, acts only when the state differs (idempotent: a retry or a roll-forward is
//!   harmless), makes the change conditional on the value it expects where the provider can
//!   (compare-and-set, prerequisites) so a stale controller's change fails as
//!   [`Failure::Fenced`], and verifies the change by reading it back: it never claims a change
//!   it did not see.
//! - Every network call has a timeout; rate limits (429 / throttling with `Retry-After`) are
//!   retried with bounded, jittered backoff; errors carry the provider's own error text.
//! - Secrets come from files or environment variables ([`secret`]), never from the TOML.

pub mod alerts;
pub mod aws;
pub mod cas;
pub mod cloudflare;
pub mod cloudwatch;
pub mod db;
pub mod digitalocean;
pub mod digitalocean_db;
pub mod haproxy;
pub mod media;
pub mod rds;
pub mod rest;
pub mod rfc2136;
pub mod route53;
pub mod secret;
pub mod ssm;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

/// What a step acts for: one decision of the controller, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The fencing token: strictly greater for every newer decision.
    pub generation: u64,
    /// `failover`, `failback`, `switchover`, ... (the controller's transition kind).
    pub kind: String,
    /// The region that was active, if any.
    pub from: Option<String>,
    /// The region that becomes active.
    pub to: String,
    /// Every region that serves after this decision (the active one included).
    pub serving: Vec<String>,
    pub reason: String,
    /// The operator accepted losing data (`switchyard failover --force-data-loss`).
    pub force_data_loss: bool,
}

/// Why a step did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (timeouts, throttling, a server error).
    Retryable(String),
    /// A newer decision already acted, or the state is not what this controller last wrote:
    /// the runbook stops at once and is never retried with this generation.
    Fenced(String),
    /// Acting would be unsafe (data loss beyond the bound, divergence): the runbook stops and
    /// an operator must decide. Not retried.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retryable(m) => write!(f, "{m}"),
            Failure::Fenced(m) => write!(f, "fenced: {m}"),
            Failure::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

/// A step's result: a one-line description of what was verified, or why not.
pub type Outcome = Result<String, Failure>;

/// Where `Settings::check` reports problems; the controller's config checker implements it
/// (spans are byte ranges into the config file, turned into line:column there).
pub trait Checker {
    fn error(&mut self, span: Range<usize>, message: String, fix: String);
    fn warn(&mut self, span: Range<usize>, message: String, fix: String);
    /// The config file's folder: relative paths in settings start here.
    fn folder(&self) -> &Path;
    /// The configured region names.
    fn regions(&self) -> &BTreeSet<String>;
}

/// Every provider step kind, ready to run. One variant per provider module.
#[derive(Debug)]
pub enum Action {
    Cloudflare(cloudflare::Cloudflare),
    DigitalOcean(digitalocean::DigitalOcean),
    DigitalOceanDbPromote(digitalocean_db::DigitalOceanDbPromote),
    Haproxy(haproxy::Haproxy),
    MediaSync(media::MediaSync),
    Rfc2136(Box<rfc2136::Rfc2136>),
    MysqlPromote(db::mysql::MysqlPromote),
    PostgresPromote(db::postgres::PostgresPromote),
    RedisPromote(db::redis::RedisPromote),
    RdsPromote(rds::RdsPromote),
    AuroraGlobalFailover(rds::AuroraGlobalFailover),
    Route53(route53::Route53),
    Route53FailoverHealth(route53::FailoverHealth),
    SsmParameter(ssm::SsmParameter),
}

impl Action {
    /// The step kind's name as written in `kind = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Cloudflare(_) => "cloudflare",
            Action::DigitalOcean(_) => "digitalocean",
            Action::DigitalOceanDbPromote(_) => "digitalocean_db_promote",
            Action::Haproxy(_) => haproxy::Haproxy::KIND,
            Action::MediaSync(_) => media::KIND,
            Action::Rfc2136(_) => rfc2136::Rfc2136::KIND,
            Action::MysqlPromote(_) => "mysql_promote",
            Action::PostgresPromote(_) => "postgres_promote",
            Action::RedisPromote(_) => "redis_promote",
            Action::RdsPromote(_) => "rds_promote",
            Action::AuroraGlobalFailover(_) => "aurora_global_failover",
            Action::Route53(_) => "route53",
            Action::Route53FailoverHealth(_) => "route53_failover_health",
            Action::SsmParameter(_) => "ssm_parameter",
        }
    }

    /// Whether `switchyard guard` fences this step's servers (the database promote steps
    /// whose servers Switchyard reaches itself; managed databases fence themselves).
    pub fn guards_servers(&self) -> bool {
        matches!(
            self,
            Action::MysqlPromote(_) | Action::PostgresPromote(_) | Action::RedisPromote(_)
        )
    }

    /// The regions where `switchyard guard` has servers of this step to fence.
    pub fn guarded_regions(&self) -> std::collections::BTreeSet<String> {
        let members = match self {
            Action::MysqlPromote(step) => step.members(),
            Action::PostgresPromote(step) => step.members(),
            Action::RedisPromote(step) => step.members(),
            _ => &[],
        };
        members.iter().map(|m| m.region.clone()).collect()
    }

    /// `switchyard guard`: fences the servers of `region` that take writes, with `older_than`
    /// only those promoted before that generation (see [`db::guard`]); nothing for a step that
    /// guards no servers.
    pub async fn guard_fence(&self, region: &str, older_than: Option<u64>) -> Vec<db::guard::GuardReport> {
        match self {
            Action::MysqlPromote(step) => step.guard_fence(region, older_than).await,
            Action::PostgresPromote(step) => step.guard_fence(region, older_than).await,
            Action::RedisPromote(step) => step.guard_fence(region, older_than).await,
            _ => Vec::new(),
        }
    }

    /// `switchyard guard`: unfences the servers of `region` at `addresses` that are still
    /// primaries, with `promoted_since` only those promoted under that generation or later.
    pub async fn guard_unfence(
        &self,
        region: &str,
        addresses: &[String],
        promoted_since: Option<u64>,
    ) -> Vec<db::guard::GuardReport> {
        match self {
            Action::MysqlPromote(step) => step.guard_unfence(region, addresses, promoted_since).await,
            Action::PostgresPromote(step) => step.guard_unfence(region, addresses, promoted_since).await,
            Action::RedisPromote(step) => step.guard_unfence(region, addresses, promoted_since).await,
            _ => Vec::new(),
        }
    }

    /// The media step's own settings (its lag is measured outside the runbook too).
    pub fn media(&self) -> Option<&media::MediaSync> {
        match self {
            Action::MediaSync(step) => Some(step),
            _ => None,
        }
    }

    /// Runs one attempt; the caller owns the timeout and the retries.
    pub async fn run(&self, order: &Order) -> Outcome {
        match self {
            Action::Cloudflare(step) => step.run(order).await,
            Action::DigitalOcean(step) => step.run(order).await,
            Action::DigitalOceanDbPromote(step) => step.run(order).await,
            Action::Haproxy(step) => step.run(order).await,
            Action::MediaSync(step) => step.run(order).await,
            Action::Rfc2136(step) => step.run(order).await,
            Action::MysqlPromote(step) => step.run(order).await,
            Action::PostgresPromote(step) => step.run(order).await,
            Action::RedisPromote(step) => step.run(order).await,
            Action::RdsPromote(step) => step.run(order).await,
            Action::AuroraGlobalFailover(step) => step.run(order).await,
            Action::Route53(step) => step.run(order).await,
            Action::Route53FailoverHealth(step) => step.run(order).await,
            Action::SsmParameter(step) => step.run(order).await,
        }
    }
}

/// The step kinds this crate provides, for `kind = "..."` validation and messages.
pub const KINDS: &[&str] = &[
    "cloudflare",
    "digitalocean",
    "digitalocean_db_promote",
    haproxy::Haproxy::KIND,
    media::KIND,
    rfc2136::Rfc2136::KIND,
    "mysql_promote",
    "postgres_promote",
    "redis_promote",
    "rds_promote",
    "aurora_global_failover",
    "route53",
    "route53_failover_health",
    "ssm_parameter",
];
