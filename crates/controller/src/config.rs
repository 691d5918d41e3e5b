//! The controller's TOML configuration and its validation (`switchyard config check`).
//!
//! One file describes a deployment: `[controller]`, `[policy]`, `[quorum]`, `[[regions]]`,
//! `[[checks]]` (the health crate's `CheckSpec`), `[vantage_paths.NAME]` (a vantage point's own
//! addresses of the targets), `[dns]`, `[[runbook]]`, `[[alerts]]` and `[[tokens]]` (who may
//! call the API, see `auth`).
//! Every mistake is reported with its line and column (from the TOML spans) and a fix; the
//! controller refuses to start while any remains. Every URL is parsed (scheme, host, port) and
//! every duration has an upper bound named in its message. Relative paths (the audit log, token
//! files, a command step's program, a check's `ca_file`) are resolved from the folder of the
//! file, not from the working directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::auth::{Credential, Role, TokenDigest};
use crate::engine::{EngineConfig, Policy, RegionId, RegionSpec};

/// Most runbook steps.
pub const RUNBOOK_STEPS_MAX: usize = 64;
/// Most retries of one step.
pub const STEP_RETRIES_MAX: u32 = 20;
/// Longest timeout of one step.
pub const STEP_TIMEOUT_MS_MAX: u64 = 600_000;
/// Most regions.
pub const REGIONS_MAX: usize = 32;
/// Most entries in one vantage point's address map.
pub const VANTAGE_PATH_ENTRIES_MAX: usize = 1024;
/// Most `[[tokens]]` entries.
pub const TOKENS_MAX: usize = 256;
/// Request headers of an http check that carry a credential (a warning when the file is
/// readable by others).
pub const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "x-api-key"];
/// Bytes of a token file read at most (a token has at most `auth::TOKEN_BYTES_MAX`).
pub const TOKEN_FILE_BYTES_MAX: u64 = 8 * 1024;
/// Longest of the policy's holds and windows: a day. Longer would mean "never", which is what
/// `pause` is for.
pub const POLICY_DURATION_MS_MAX: u64 = 86_400_000;
/// Longest wait before a failed runbook is retried, and longest startup grace.
pub const RUNBOOK_RETRY_MS_MAX: u64 = 3_600_000;
/// Longest startup grace (no decision before the first reports have had time to arrive).
pub const STARTUP_GRACE_MS_MAX: u64 = 3_600_000;
/// Shortest and longest engine tick.
pub const TICK_MS_MIN: u64 = 10;
pub const TICK_MS_MAX: u64 = 10_000;
/// Longest time a report stays fresh, and so the longest report interval.
pub const REPORT_STALE_MS_MAX: u64 = 3_600_000;
/// Longest first wait between two attempts of a step (it doubles each retry).
pub const STEP_BACKOFF_MS_MAX: u64 = 60_000;

/// `[vantage_paths.NAME]`: per vantage point, `"host:port" = "host:port"` entries.
pub type VantagePaths = BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<String>>>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub controller: ControllerSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub quorum: QuorumSection,
    #[serde(default)]
    pub regions: Vec<RegionSection>,
    #[serde(default)]
    pub checks: Vec<Spanned<health::CheckSpec>>,
    /// Per vantage point (a name in `[quorum] vantages`), the address it reaches each target
    /// by: `"address in the checks" = "address from this vantage point"`.
    #[serde(default)]
    pub vantage_paths: VantagePaths,
    #[serde(default)]
    pub dns: Option<DnsSection>,
    #[serde(default)]
    pub runbook: Vec<StepSection>,
    #[serde(default)]
    pub alerts: Vec<AlertSection>,
    /// Who may call the API: per agent, operator or reader, a token (its hash or a file).
    #[serde(default)]
    pub tokens: Vec<TokenSection>,
    /// What `switchyard guard` does beyond fencing when another region is active.
    #[serde(default)]
    pub guard: Option<GuardSection>,
}

/// `[guard]`: the region-local guards (`switchyard guard`, see `crate::guard`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    /// Fence a region's database primaries when its guard has had no fresh word from any
    /// controller member naming the region active for this long (opt-in: absent, only a move
    /// to another region fences).
    #[serde(default)]
    pub isolation_fence_ms: Option<Spanned<u64>>,
    /// How many controller members `[controller.ha]` runs: a guard that hears that many, every
    /// one cut off from etcd, knows nobody can fail over (the failsafe). Absent: such a round is
    /// silence.
    #[serde(default)]
    pub controller_members: Option<Spanned<u64>>,
}

/// One `[[tokens]]` entry: `name`, `role` and either `token_sha256` or `token_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// For role `agent` the vantage name it reports as (its `--name`); otherwise who holds it.
    pub name: Spanned<String>,
    /// `agent`, `operator` or `read`.
    pub role: Spanned<String>,
    /// SHA-256 of the token in hex (what `switchyard token new` prints).
    #[serde(default)]
    pub token_sha256: Option<Spanned<String>>,
    /// A file holding the token itself (relative to this file's folder).
    #[serde(default)]
    pub token_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// Address of the control API (and the agents' plan/report endpoints).
    pub listen: SocketAddr,
    /// The controller's own vantage name in `[quorum] vantages`.
    pub vantage: String,
    /// The audit log (JSON lines); rotated at `audit_log_bytes_max`.
    pub audit_log: PathBuf,
    pub audit_log_bytes_max: u64,
    /// Rotated audit files kept (`audit.jsonl.1` …).
    pub audit_files_kept: u32,
    /// How often the engine is ticked and verdicts are taken.
    pub tick_ms: u64,
    /// Several controllers elected through etcd (`crate::ha`); absent: one controller.
    pub ha: Option<crate::ha::HaSection>,
}

impl Default for ControllerSection {
    fn default() -> Self {
        ControllerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            vantage: "controller".into(),
            audit_log: PathBuf::from("switchyard-audit.jsonl"),
            audit_log_bytes_max: 64 * 1024 * 1024,
            audit_files_kept: 4,
            tick_ms: 250,
            ha: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    pub mode: Spanned<String>,
    pub down_confirm_ms: u64,
    pub min_hold_ms: u64,
    pub stability_window_ms: u64,
    pub failback_lag_check: bool,
    pub failback_lag_max_ms: u64,
    pub lag_stale_ms: u64,
    /// Failback waits until the home region lacks at most this many media objects (the
    /// `media_sync` steps' lag); absent: failback does not look at media.
    pub failback_media_objects_max: Option<Spanned<u64>>,
    pub failovers_per_hour_max: Spanned<u32>,
    pub auto_failback: bool,
    pub runbook_retry_ms: u64,
    pub startup_grace_ms: u64,
}

impl Default for PolicySection {
    fn default() -> Self {
        let engine = EngineConfig::with_defaults(Vec::new());
        PolicySection {
            mode: Spanned::new(NOWHERE..NOWHERE, "active-passive".into()),
            down_confirm_ms: engine.down_confirm_ms,
            min_hold_ms: engine.min_hold_ms,
            stability_window_ms: engine.stability_window_ms,
            failback_lag_check: true,
            failback_lag_max_ms: engine.failback_lag_max_ms.unwrap_or(1_000),
            lag_stale_ms: engine.lag_stale_ms,
            failback_media_objects_max: None,
            failovers_per_hour_max: Spanned::new(NOWHERE..NOWHERE, engine.failovers_per_hour_max),
            auto_failback: engine.auto_failback,
            runbook_retry_ms: engine.runbook_retry_ms,
            startup_grace_ms: engine.startup_grace_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuorumSection {
    /// Every vantage point whose vote counts: the controller's own (`[controller] vantage`)
    /// and each agent's `--name`.
    pub vantages: Spanned<Vec<String>>,
    /// Votes needed to call a region up or down; default: a majority of `vantages`.
    pub quorum: Option<Spanned<usize>>,
    pub report_stale_ms: u64,
    /// How often agents report (sent to them in their plan).
    pub report_interval_ms: u64,
}

impl Default for QuorumSection {
    fn default() -> Self {
        QuorumSection {
            vantages: Spanned::new(NOWHERE..NOWHERE, vec!["controller".into()]),
            quorum: None,
            report_stale_ms: health::quorum::DEFAULT_REPORT_STALE_MS,
            report_interval_ms: health::report::DEFAULT_REPORT_INTERVAL_MS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    pub name: Spanned<String>,
    /// Lower is preferred; the lowest is the home region failback returns to.
    pub priority: Spanned<u32>,
    /// Where the region serves, as URLs (for status and docs; checks say what is probed).
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    /// How the region's checks combine: "all", "any" or { at_least = N }.
    #[serde(default)]
    pub rule: health::RegionRule,
    /// DNS health targets this region's records use; default: the region's name.
    #[serde(default)]
    pub dns_targets: Option<Vec<String>>,
}

impl RegionSection {
    pub fn targets(&self) -> Vec<String> {
        self.dns_targets
            .clone()
            .unwrap_or_else(|| vec![self.name.get_ref().clone()])
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Base URL of `switchyard dns`'s admin API, like http://127.0.0.1:8053.
    pub admin_url: Spanned<String>,
    /// Name of the TXT record naming the active region (for `dns_txt` steps).
    #[serde(default)]
    pub txt_name: Option<String>,
    /// File holding the admin API's bearer token (role `dns`; relative to this file's folder);
    /// default: the controller's control token.
    #[serde(default)]
    pub token_file: Option<Spanned<PathBuf>>,
}

/// The built-in step kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    DnsHealth,
    DnsTxt,
    Pointer,
    Command,
    Webhook,
    /// A step of the `providers` crate (Route 53, HAProxy, MariaDB, ...): `Step::action`.
    Provider,
}

impl StepKind {
    pub const NAMES: [&'static str; 5] = ["dns_health", "dns_txt", "pointer", "command", "webhook"];

    /// Every kind a step may name: the built-in ones and the providers'.
    pub fn all_names() -> Vec<&'static str> {
        StepKind::NAMES.iter().chain(providers::KINDS).copied().collect()
    }

    pub fn parse(name: &str) -> Option<StepKind> {
        Some(match name {
            "dns_health" => StepKind::DnsHealth,
            "dns_txt" => StepKind::DnsTxt,
            "pointer" => StepKind::Pointer,
            "command" => StepKind::Command,
            "webhook" => StepKind::Webhook,
            other if providers::KINDS.contains(&other) => StepKind::Provider,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSection {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    #[serde(default = "default_step_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    #[serde(default = "default_step_retries")]
    pub retries: Spanned<u32>,
    /// First wait between attempts; doubles each retry.
    #[serde(default = "default_step_backoff_ms")]
    pub backoff_ms: Spanned<u64>,
    /// Run only when the new active region is one of these; default: always.
    #[serde(default)]
    pub when_to: Option<Vec<Spanned<String>>>,
    /// `command`: the program and its arguments (no shell).
    #[serde(default)]
    pub program: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// `webhook`: where to POST the JSON.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub cloudflare: Option<Spanned<providers::cloudflare::Settings>>,
    #[serde(default)]
    pub digitalocean: Option<Spanned<providers::digitalocean::Settings>>,
    #[serde(default)]
    pub digitalocean_db_promote: Option<Spanned<providers::digitalocean_db::Settings>>,
    /// `haproxy`: its `[runbook.haproxy]` table.
    #[serde(default)]
    pub haproxy: Option<Spanned<providers::haproxy::Settings>>,
    /// `rfc2136`: its `[runbook.rfc2136]` table.
    #[serde(default)]
    pub rfc2136: Option<Spanned<providers::rfc2136::Settings>>,
    #[serde(default)]
    pub mysql_promote: Option<Spanned<providers::db::mysql::Settings>>,
    #[serde(default)]
    pub postgres_promote: Option<Spanned<providers::db::postgres::Settings>>,
    #[serde(default)]
    pub redis_promote: Option<Spanned<providers::db::redis::Settings>>,
    #[serde(default)]
    pub rds_promote: Option<Spanned<providers::rds::RdsSettings>>,
    #[serde(default)]
    pub aurora_global_failover: Option<Spanned<providers::rds::AuroraSettings>>,
    #[serde(default)]
    pub route53: Option<Spanned<providers::route53::Settings>>,
    #[serde(default)]
    pub route53_failover_health: Option<Spanned<providers::route53::FailoverHealthSettings>>,
    #[serde(default)]
    pub ssm_parameter: Option<Spanned<providers::ssm::Settings>>,
    /// `media_sync`: its `[runbook.media_sync]` table (rsync or S3).
    #[serde(default)]
    pub media_sync: Option<Spanned<providers::media::Settings>>,
}

fn default_step_timeout_ms() -> Spanned<u64> {
    Spanned::new(NOWHERE..NOWHERE, 5_000)
}
fn default_step_retries() -> Spanned<u32> {
    Spanned::new(NOWHERE..NOWHERE, 3)
}
const STEP_BACKOFF_MS_DEFAULT: u64 = 200;
fn default_step_backoff_ms() -> Spanned<u64> {
    Spanned::new(NOWHERE..NOWHERE, STEP_BACKOFF_MS_DEFAULT)
}

/// One `[[alerts]]` entry: webhook, Slack, PagerDuty or email (see `providers::alerts`).
pub use providers::alerts::AlertSection;

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}\n    fix: {}",
            self.line, self.column, self.message, self.fix
        )
    }
}

/// Every mistake found in a file, rendered with the file name.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(f, "{}: {count} problem(s)", self.file)?;
        for problem in &self.problems {
            if problem.line == 0 {
                writeln!(f, "{}: error: {}\n    fix: {}", self.file, problem.message, problem.fix)?;
            } else {
                writeln!(
                    f,
                    "{}:{}:{}: error: {}\n    fix: {}",
                    self.file, problem.line, problem.column, problem.message, problem.fix
                )?;
            }
        }
        Ok(())
    }
}

/// A validated configuration: what the controller runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: ConfigFile,
    pub engine: EngineConfig,
    pub quorum: health::QuorumConfig,
    pub steps: Vec<Step>,
    /// Warnings: legal but probably not what was meant.
    pub warnings: Vec<Problem>,
    /// `[[tokens]]`, resolved to hashes.
    pub credentials: Vec<Credential>,
    /// The token read from `[dns] token_file`.
    pub dns_token: Option<String>,
    /// The token read from `[controller.ha] token_file`: what a follower sends with its own
    /// reports to the leader.
    pub member_token: Option<String>,
    /// `[[alerts]]`, checked and ready to start.
    pub alert_channels: Vec<providers::alerts::Channel>,
    /// What start refuses besides the file's mistakes when no deprecated control token is
    /// given: `[controller] listen` reachable from other machines while a role has no token
    /// (`server::check_exposure`). `check_file` reports it as an error.
    pub exposure: Option<Problem>,
    /// Where a secret is written into the file itself (a check's password, secret key or
    /// credential header): `load` warns about each when others may read the file.
    pub inline_secrets: Vec<Problem>,
}

/// A runbook step ready to run.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    pub timeout_ms: u64,
    pub retries: u32,
    pub backoff_ms: u64,
    pub when_to: Option<Vec<String>>,
    pub program: Option<String>,
    pub args: Vec<String>,
    pub url: Option<String>,
    /// A provider step's checked settings, ready to run (kind `Provider` only).
    pub action: Option<std::sync::Arc<providers::Action>>,
}

impl Step {
    /// The kind as the TOML names it (`dns_health`, `route53`, ...).
    pub fn kind_name(&self) -> &'static str {
        match (self.kind, &self.action) {
            (StepKind::DnsHealth, _) => "dns_health",
            (StepKind::DnsTxt, _) => "dns_txt",
            (StepKind::Pointer, _) => "pointer",
            (StepKind::Command, _) => "command",
            (StepKind::Webhook, _) => "webhook",
            (StepKind::Provider, Some(action)) => action.kind(),
            (StepKind::Provider, None) => "provider",
        }
    }
}

impl Config {
    pub fn region_names(&self) -> Vec<String> {
        self.file.regions.iter().map(|r| r.name.get_ref().clone()).collect()
    }

    pub fn checks(&self) -> Vec<health::CheckSpec> {
        self.file.checks.iter().map(|c| c.get_ref().clone()).collect()
    }

    /// The address map of one vantage point (empty when it has no `[vantage_paths.NAME]`).
    pub fn address_map(&self, vantage: &str) -> health::spec::AddressMap {
        self.file
            .vantage_paths
            .get(vantage)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(from, to)| (from.get_ref().clone(), to.get_ref().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The checks as `vantage` probes them: every target through its address map.
    pub fn checks_for(&self, vantage: &str) -> Vec<health::CheckSpec> {
        let map = self.address_map(vantage);
        self.file
            .checks
            .iter()
            .map(|c| c.get_ref().with_address_map(&map))
            .collect()
    }

    /// DNS health targets per region.
    pub fn dns_targets(&self) -> BTreeMap<String, Vec<String>> {
        self.file
            .regions
            .iter()
            .map(|r| (r.name.get_ref().clone(), r.targets()))
            .collect()
    }
}

/// Parses and validates `text` (the contents of `file`); relative paths in it are resolved from
/// the folder of `file`.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let folder = Path::new(file).parent().unwrap_or(Path::new("")).to_path_buf();
    parse_in(file, text, &folder)
}

/// Like `parse`, with relative paths resolved from `folder`.
pub fn parse_in(file: &str, text: &str, folder: &Path) -> Result<Config, ConfigError> {
    let lines = LineIndex::new(text);
    let fail = |problems: Vec<Problem>| ConfigError {
        file: file.to_string(),
        problems,
    };
    let parsed: ConfigFile = match toml::from_str(text) {
        Ok(parsed) => parsed,
        Err(error) => return Err(fail(syntax_problems(text, &lines, error))),
    };
    let mut checker = Checker {
        lines: &lines,
        text,
        folder,
        problems: Vec::new(),
        warnings: Vec::new(),
        regions: BTreeSet::new(),
    };
    let config = checker.check(parsed);
    checker.problems.sort_by_key(|p| (p.line, p.column));
    if checker.problems.is_empty()
        && let Some(mut config) = config
    {
        config.warnings = checker.warnings;
        return Ok(config);
    }
    Err(fail(checker.problems))
}

/// Reads and validates a file; warns about secrets written into it when other users may read it.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut config = parse_in(&file, &text, path.parent().unwrap_or(Path::new("")))?;
            if readable_by_others(path) {
                let secrets = std::mem::take(&mut config.inline_secrets);
                config.warnings.extend(secrets.iter().map(|secret| Problem {
                    message: format!("{}, and other users can read {file}", secret.message),
                    fix: format!(
                        "chmod 600 {file} (readable by the controller's user only); {}",
                        secret.fix
                    ),
                    ..secret.clone()
                }));
                config.inline_secrets = secrets;
                config.warnings.sort_by_key(|p| (p.line, p.column));
            }
            Ok(config)
        }
        Err(error) => Err(ConfigError {
            file: file.clone(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                message: format!("cannot read the file: {error}"),
                fix: "check the path and its permissions".into(),
            }],
        }),
    }
}

/// What `switchyard config check` runs: `load`, and then what the controller refuses at start
/// with this file and no deprecated control token (`Config::exposure`), as an error, so that
/// the check and the start agree.
pub fn check_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    let config = load(path)?;
    match &config.exposure {
        Some(problem) => Err(ConfigError {
            file: path.display().to_string(),
            problems: vec![problem.clone()],
        }),
        None => Ok(config),
    }
}

/// Whether users other than the file's owner may read it (group or others).
fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The serde error of the whole file gives only its first mistake; deserializing each section
/// on its own finds one per section.
fn syntax_problems(text: &str, lines: &LineIndex<'_>, whole: toml::de::Error) -> Vec<Problem> {
    let mut errors: Vec<toml::de::Error> = Vec::new();
    if text.parse::<toml::Table>().is_ok() {
        macro_rules! section {
            ($name:ident, $ty:ty) => {{
                #[derive(Deserialize)]
                #[allow(dead_code)]
                struct Only {
                    #[serde(default)]
                    $name: Option<$ty>,
                }
                if let Err(error) = toml::from_str::<Only>(text) {
                    errors.push(error);
                }
            }};
        }
        section!(controller, ControllerSection);
        section!(policy, PolicySection);
        section!(quorum, QuorumSection);
        section!(regions, Vec<RegionSection>);
        section!(checks, Vec<Spanned<health::CheckSpec>>);
        section!(vantage_paths, VantagePaths);
        section!(dns, DnsSection);
        section!(runbook, Vec<StepSection>);
        section!(alerts, Vec<AlertSection>);
        section!(tokens, Vec<TokenSection>);
    }
    errors.push(whole);
    let mut problems: Vec<Problem> = Vec::new();
    for error in errors {
        let problem = lines.problem_from_toml(&error);
        if !problems
            .iter()
            .any(|p| p.line == problem.line && p.column == problem.column)
        {
            problems.push(problem);
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

/// A span for a mistake that has no place in the file (a missing section): reported as line 0.
const NOWHERE: usize = usize::MAX;

/// The file's text with its line starts ([`common::text`]: columns in characters).
struct LineIndex<'t> {
    text: &'t str,
    index: common::text::LineIndex,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> LineIndex<'t> {
        LineIndex {
            text,
            index: common::text::LineIndex::new(text),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        self.index.position(self.text, offset)
    }

    fn problem(&self, span: std::ops::Range<usize>, message: impl Into<String>, fix: impl Into<String>) -> Problem {
        let (line, column) = if span.start == NOWHERE {
            (0, 0)
        } else {
            self.position(span.start)
        };
        Problem {
            line,
            column,
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn problem_from_toml(&self, error: &toml::de::Error) -> Problem {
        let (line, column) = error.span().map(|s| self.position(s.start)).unwrap_or((0, 0));
        let message = error.message().to_string();
        if message.contains("expected a borrowed string")
            && let Some(problem) = error
                .span()
                .and_then(|span| self.table_without_header(span.start, line, column))
        {
            return problem;
        }
        let fix = if message.contains("unknown field") {
            "remove the key or fix its spelling (the message lists the expected keys)"
        } else if message.contains("missing field") {
            "add the missing key"
        } else if message.contains("invalid type") {
            "give the value the type the message expects (strings in quotes, numbers without)"
        } else {
            "see the example in docs/examples/switchyard.toml"
        };
        Problem {
            line,
            column,
            message,
            fix: fix.into(),
        }
    }
}

impl LineIndex<'_> {
    /// toml's message when a table that only its sub-tables' headers define (`[runbook.media_sync.locations]`
    /// with no `[runbook.media_sync]`) is read where the file's position of it is wanted:
    /// "invalid type: string \"locations\", expected a borrowed string". Says which header is missing.
    fn table_without_header(&self, offset: usize, line: usize, column: usize) -> Option<Problem> {
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        let header = self.text[start..end].split('#').next()?.trim();
        let inner = header.trim_start_matches('[').trim_end_matches(']').trim();
        if !header.starts_with('[') || inner.is_empty() {
            return None;
        }
        let (parent, _) = inner.rsplit_once('.')?;
        let parent = parent.trim();
        Some(Problem {
            line,
            column,
            message: format!("[{inner}] has no [{parent}] header above it, so [{parent}] has none of its own keys"),
            fix: format!("write [{parent}] with its keys (see the README's example) before [{inner}]"),
        })
    }
}

struct Checker<'a> {
    lines: &'a LineIndex<'a>,
    text: &'a str,
    /// The folder relative paths are resolved from.
    folder: &'a Path,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The configured region names, once `[[regions]]` is checked.
    regions: BTreeSet<String>,
}

/// Provider settings report their problems through the same checker.
impl providers::Checker for Checker<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: String, fix: String) {
        Checker::error(self, span, message, fix);
    }
    fn warn(&mut self, span: std::ops::Range<usize>, message: String, fix: String) {
        Checker::warn(self, span, message, fix);
    }
    fn folder(&self) -> &Path {
        self.folder
    }
    fn regions(&self) -> &BTreeSet<String> {
        &self.regions
    }
}

impl Checker<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: impl Into<String>, fix: impl Into<String>) {
        let problem = self.lines.problem(span, message, fix);
        self.problems.push(problem);
    }

    /// Where `key` is set in `[section]` (or the section header, or nowhere: line 0).
    fn key_span(&self, section: &str, key: &str) -> std::ops::Range<usize> {
        let mut offset = 0;
        let mut in_section = section.is_empty();
        let mut header = None;
        for line in self.text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                in_section = trimmed.trim_end().trim_start_matches('[').trim_end_matches(']') == section;
                if in_section && header.is_none() {
                    header = Some(offset + line.len() - trimmed.len());
                }
            } else if in_section
                && !key.is_empty()
                && trimmed
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                let start = offset + line.len() - trimmed.len();
                return start..start + key.len();
            }
            offset += line.len();
        }
        match header {
            Some(start) => start..start + 1,
            None => NOWHERE..NOWHERE,
        }
    }

    /// Where `key = ...` is written inside the table at `span` (a `[[checks]]` entry), its
    /// inline tables and its sub-tables (`[checks.kind]`, up to the next `[[...]]` or top-level
    /// `[...]` header) included; `span` itself when it is not there.
    fn key_within(&self, span: std::ops::Range<usize>, key: &str) -> std::ops::Range<usize> {
        let Some(rest) = self.text.get(span.start..) else {
            return span;
        };
        let mut end = span.end.saturating_sub(span.start);
        let mut offset = 0;
        for (index, line) in rest.split_inclusive('\n').enumerate() {
            let header = line.trim_start();
            let next_table = header.starts_with("[[")
                || (header.starts_with('[') && !header.split(']').next().unwrap_or_default().contains('.'));
            if index > 0 && offset >= end && next_table {
                break;
            }
            offset += line.len();
            end = end.max(offset);
        }
        let text = &rest[..end.min(rest.len())];
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        let mut from = 0;
        while let Some(found) = text[from..].find(key) {
            let start = from + found;
            let after = &text[start + key.len()..];
            let whole = start == 0 || !word(text.as_bytes()[start - 1]);
            let quoted = text.as_bytes().get(start.wrapping_sub(1)) == Some(&b'"');
            let after = if quoted {
                after.strip_prefix('"').unwrap_or(after)
            } else {
                after
            };
            if whole && after.trim_start_matches([' ', '\t']).starts_with('=') {
                let start = start - usize::from(quoted);
                return span.start + start..span.start + start + key.len();
            }
            from = start + key.len();
        }
        span
    }

    fn error_at(&mut self, section: &str, key: &str, message: impl Into<String>, fix: impl Into<String>) {
        let span = self.key_span(section, key);
        self.error(span, message, fix);
    }

    fn warn(&mut self, span: std::ops::Range<usize>, message: impl Into<String>, fix: impl Into<String>) {
        let problem = self.lines.problem(span, message, fix);
        self.warnings.push(problem);
    }

    fn check(&mut self, mut file: ConfigFile) -> Option<Config> {
        self.resolve_paths(&mut file);
        let regions = self.check_regions(&file);
        let known: BTreeSet<String> = regions.iter().map(|r| r.id.0.clone()).collect();
        self.regions = known.clone();
        self.check_controller(&file);
        if let Some(ha) = file.controller.ha.as_mut() {
            ha.resolve_paths(self.folder);
            for (key, message, fix) in ha.problems() {
                self.error_at("controller.ha", key, message, fix);
            }
        }
        let policy = self.check_policy(&file.policy);
        self.check_checks(&file, &known);
        let quorum = self.check_quorum(&file);
        self.check_vantage_paths(&file);
        let steps = self.check_runbook(&file, &known);
        // By the kind as written: a media_sync step with a mistake of its own (reported at
        // its line) is still the step the gate needs, not a second, misleading problem.
        if let Some(max) = &file.policy.failback_media_objects_max
            && !file.runbook.iter().any(|step| step.kind.get_ref() == "media_sync")
        {
            self.error(
                max.span(),
                "[policy] failback_media_objects_max is set but no runbook step has kind = \"media_sync\": the media lag is never measured, so failback would wait forever",
                "add a media_sync step (see README, Media sync), or remove failback_media_objects_max",
            );
        }
        self.check_guard(&file, &steps);
        let alert_channels = self.check_alerts(&file);
        let credentials = self.check_tokens(&file);
        let dns_token = self.read_dns_token(&file);
        let member_token = self.read_member_token(&file, &credentials);
        let exposure = self.exposure(&file, &credentials);
        let inline_secrets = self.inline_secrets(&file);
        let (policy, quorum) = (policy?, quorum?);
        let mut engine = EngineConfig::with_defaults(regions);
        let p = &file.policy;
        engine.policy = policy;
        engine.down_confirm_ms = p.down_confirm_ms;
        engine.min_hold_ms = p.min_hold_ms;
        engine.stability_window_ms = p.stability_window_ms;
        engine.failback_lag_max_ms = p.failback_lag_check.then_some(p.failback_lag_max_ms);
        engine.lag_stale_ms = p.lag_stale_ms;
        engine.failback_media_objects_max = p.failback_media_objects_max.as_ref().map(|m| *m.get_ref());
        engine.media_stale_ms = steps
            .iter()
            .filter_map(|step| step.action.as_ref().and_then(|a| a.media()))
            .map(|media| {
                media
                    .lag_interval_ms
                    .saturating_mul(2)
                    .saturating_add(media.limits.run_timeout_ms)
            })
            .max()
            .unwrap_or(engine.media_stale_ms);
        engine.failovers_per_hour_max = *p.failovers_per_hour_max.get_ref();
        engine.auto_failback = p.auto_failback;
        engine.runbook_retry_ms = p.runbook_retry_ms;
        engine.startup_grace_ms = p.startup_grace_ms;
        Some(Config {
            file,
            engine,
            quorum,
            steps,
            warnings: Vec::new(),
            credentials,
            dns_token,
            member_token,
            alert_channels,
            exposure,
            inline_secrets,
        })
    }

    /// `[controller] listen` reachable from other machines while a role has no token: the
    /// controller refuses to start then (unless the deprecated control token holds the roles).
    fn exposure(&self, file: &ConfigFile, credentials: &[Credential]) -> Option<Problem> {
        let listen = file.controller.listen;
        let access = crate::auth::Access::new(credentials.to_vec(), None);
        let open: Vec<&str> = access.open_roles().iter().map(|role| role.name()).collect();
        if !common::secret::open_to_network(listen, open.is_empty()) {
            return None;
        }
        Some(self.lines.problem(
            self.key_span("controller", "listen"),
            format!(
                "[controller] listen = \"{listen}\" is reachable from other machines while role(s) {} have no token, so the controller refuses to start: anyone who can connect could use them (and fail over your regions)",
                open.join(", ")
            ),
            format!(
                "add [[tokens]] for each of them (`switchyard token new --role {} --name NAME`), or listen on a loopback address such as 127.0.0.1",
                open[0]
            ),
        ))
    }

    /// Secrets written into the file itself: a check's password or secret key, or a
    /// credential header of an http check.
    fn inline_secrets(&self, file: &ConfigFile) -> Vec<Problem> {
        let mut found = Vec::new();
        for check in &file.checks {
            let spec = check.get_ref();
            let keys: Vec<String> = match &spec.kind {
                health::ProbeKind::Sql { password: Some(_), .. }
                | health::ProbeKind::Redis { password: Some(_), .. } => {
                    vec!["password".into()]
                }
                health::ProbeKind::Dynamodb {
                    secret_access_key: Some(_),
                    ..
                } => vec!["secret_access_key".into()],
                health::ProbeKind::Http { headers, url, .. } => {
                    let mut keys: Vec<String> = headers
                        .keys()
                        .filter(|name| CREDENTIAL_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)))
                        .cloned()
                        .collect();
                    // `http://user:password@host/`: sent as Basic authorization.
                    let authority = url.split_once("://").map_or("", |(_, rest)| rest);
                    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
                    if authority.contains('@') {
                        keys.push("url".into());
                    }
                    keys
                }
                _ => Vec::new(),
            };
            for key in keys {
                found.push(self.lines.problem(
                    self.key_within(check.span(), &key),
                    if key == "url" {
                        format!("check '{}' holds a password in its url in this file", spec.name)
                    } else {
                        format!("check '{}' holds its {key} in this file", spec.name)
                    },
                    "every agent's plan carries it too: give the probe an account that can do nothing but be probed",
                ));
            }
        }
        found
    }

    /// Makes every relative path absolute from the config file's folder, as a reader of the
    /// file expects, not from wherever the controller happens to be started.
    fn resolve_paths(&self, file: &mut ConfigFile) {
        let folder = self.folder;
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = folder.join(&*path);
            }
        };
        resolve(&mut file.controller.audit_log);
        if let Some(token_file) = file.dns.as_mut().and_then(|d| d.token_file.as_mut()) {
            resolve(token_file.get_mut());
        }
        for token in &mut file.tokens {
            if let Some(token_file) = token.token_file.as_mut() {
                resolve(token_file.get_mut());
            }
        }
        // A program named with a path is a file next to the config; a bare name is found
        // through PATH, as before.
        for step in &mut file.runbook {
            if let Some(program) = step.program.as_mut()
                && program.contains('/')
                && Path::new(program.as_str()).is_relative()
            {
                *program = folder.join(program.as_str()).display().to_string();
            }
        }
        for check in &mut file.checks {
            if let health::ProbeKind::Http {
                ca_file: Some(ca_file), ..
            } = &mut check.get_mut().kind
                && Path::new(ca_file.as_str()).is_relative()
            {
                *ca_file = folder.join(ca_file.as_str()).display().to_string();
            }
        }
    }

    /// A duration that must lie in `min..=max` milliseconds; the message names the bound.
    /// `[guard] isolation_fence_ms`: within its bounds, and for every region with servers a
    /// guard fences, early enough that the controller cannot fail the region over first
    /// (`crate::guard::check_timing`).
    fn check_guard(&mut self, file: &ConfigFile, steps: &[Step]) {
        if let Some(members) = file.guard.as_ref().and_then(|g| g.controller_members.as_ref()) {
            let most = common::members::CONTROLLER_URLS_MAX as u64;
            if !(1..=most).contains(members.get_ref()) {
                self.error(
                    members.span(),
                    format!("[guard] controller_members = {} is outside 1..={most}", members.get_ref()),
                    "give the number of controller members of [controller.ha], and list each in the guards' --controller",
                );
            }
        }
        let Some(limit) = file.guard.as_ref().and_then(|g| g.isolation_fence_ms.as_ref()) else {
            return;
        };
        let (min, max) = (
            crate::guard::ISOLATION_FENCE_MS_MIN,
            crate::guard::ISOLATION_FENCE_MS_MAX,
        );
        if !(min..=max).contains(limit.get_ref()) {
            self.error(
                limit.span(),
                format!(
                    "[guard] isolation_fence_ms = {} is outside {min}..={max}",
                    limit.get_ref()
                ),
                format!("use at least {min} (two of the guard's rounds) and at most {max}"),
            );
            return;
        }
        let regions: BTreeSet<String> = steps
            .iter()
            .filter_map(|s| s.action.as_ref())
            .flat_map(|a| a.guarded_regions())
            .collect();
        if regions.is_empty() {
            self.warn(
                limit.span(),
                "[guard] isolation_fence_ms is set but no runbook step has servers a guard fences (mysql_promote, postgres_promote, redis_promote)",
                "remove [guard], or add the database promote steps",
            );
            return;
        }
        let checks: Vec<health::CheckSpec> = file.checks.iter().map(|c| c.get_ref().clone()).collect();
        for region in regions {
            if let Err((message, fix)) =
                crate::guard::check_timing(*limit.get_ref(), file.policy.down_confirm_ms, &checks, &region)
            {
                self.error(limit.span(), message, fix);
            }
        }
    }

    fn bounded_ms(&mut self, section: &str, key: &str, value: u64, min: u64, max: u64, default: u64) {
        if (min..=max).contains(&value) {
            return;
        }
        let bound = if value < min {
            format!("below the minimum of {min} ms")
        } else {
            format!("above the bound of {max} ms ({})", human_ms(max))
        };
        self.error_at(
            section,
            key,
            format!("[{section}] {key} = {value} is {bound}"),
            format!("use {min}..={max} milliseconds (default {default})"),
        );
    }

    /// Parses a URL the controller itself calls (http:// or https://, verified against the
    /// public roots and `--ca-file`), reporting at its span.
    fn check_url(&mut self, url: &Spanned<String>, what: &str, example: &str) {
        if let Err(message) = health::spec::parse_url(url.get_ref(), true) {
            self.error(
                url.span(),
                format!("{what}: {message}"),
                format!("write it like {example}"),
            );
        }
    }

    fn check_tokens(&mut self, file: &ConfigFile) -> Vec<Credential> {
        // Per name, the role and line of its first entry: a name is one holder, who has one
        // role (two entries of one role are a rotation: the old token and the new one).
        let mut holders: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        for token in &file.tokens {
            let (name, role) = (token.name.get_ref().as_str(), token.role.get_ref().as_str());
            match holders.get(name) {
                Some((first_role, first)) if *first_role != role => {
                    let (line, _) = self.lines.position(*first);
                    self.error(
                        token.role.span(),
                        format!(
                            "token name '{name}' is given role '{role}' here and role '{first_role}' on line {line}: the log and the audit trail name the holder of a token by it"
                        ),
                        "give each holder one name and one role: rename one of them (an operator also reads; a name with role agent is the agent's --name)",
                    );
                }
                Some(_) => {}
                None => {
                    holders.insert(name, (role, token.name.span().start));
                }
            }
        }
        if file.tokens.len() > TOKENS_MAX {
            self.error(
                file.tokens[TOKENS_MAX].name.span(),
                format!("{} [[tokens]] is more than {TOKENS_MAX}", file.tokens.len()),
                "give each agent, operator and reader one token; remove old ones after rotating",
            );
        }
        let vantages = file.quorum.vantages.get_ref();
        let own = &file.controller.vantage;
        let mut credentials: Vec<Credential> = Vec::new();
        for token in &file.tokens {
            let name = token.name.get_ref();
            if !valid_name(name) {
                self.error(
                    token.name.span(),
                    format!("token name '{name}' is not valid"),
                    "use letters, digits, '-' and '_' only",
                );
            }
            let role = Role::parse(token.role.get_ref());
            match role {
                None => self.error(
                    token.role.span(),
                    format!("token '{name}' has unknown role '{}'", token.role.get_ref()),
                    format!(
                        "use one of {} (the DNS token goes in [dns] token_file, not here)",
                        Role::NAMES.join(", ")
                    ),
                ),
                Some(Role::Agent) if name == own => self.error(
                    token.name.span(),
                    format!("agent token '{name}' names the controller's own vantage point"),
                    "the controller's own probes need no token; name the agent by its --name",
                ),
                Some(Role::Member) if !vantages.contains(name) => self.error(
                    token.name.span(),
                    format!("member token '{name}' names a vantage point not in [quorum] vantages"),
                    format!(
                        "use the member's vantage name (`switchyard controller --vantage`), one of {}",
                        vantages.join(", ")
                    ),
                ),
                Some(Role::Agent) if !vantages.contains(name) => self.error(
                    token.name.span(),
                    format!("agent token '{name}' names a vantage point not in [quorum] vantages"),
                    format!(
                        "use the agent's --name, one of {} (or add it to vantages)",
                        vantages.join(", ")
                    ),
                ),
                Some(_) => {}
            }
            let digest = match (&token.token_sha256, &token.token_file) {
                (Some(hash), None) => {
                    let digest = TokenDigest::parse_hex(hash.get_ref().trim());
                    if digest.is_none() {
                        self.error(
                            hash.span(),
                            format!("token '{name}': token_sha256 is not 64 hexadecimal digits"),
                            "paste the hash `switchyard token new` printed (or `printf %s TOKEN | sha256sum`)",
                        );
                    }
                    digest
                }
                (None, Some(path)) => self
                    .read_token_file(path, &format!("token '{name}'"))
                    .map(|t| TokenDigest::of(&t)),
                (Some(_), Some(_)) | (None, None) => {
                    self.error(
                        token.name.span(),
                        format!("token '{name}' needs exactly one of token_sha256 and token_file"),
                        "give token_sha256 = \"<hash>\" (preferred: the secret stays with its holder) or token_file = \"FILE\"",
                    );
                    None
                }
            };
            if let (Some(role), Some(digest)) = (role, digest) {
                if let Some(other) = credentials.iter().find(|c| c.digest == digest) {
                    self.error(
                        token.name.span(),
                        format!("token '{name}' is the same token as '{}'", other.name),
                        "give every agent, operator and reader a token of its own (`switchyard token new`)",
                    );
                    continue;
                }
                credentials.push(Credential {
                    name: name.clone(),
                    role,
                    digest,
                });
            }
        }
        let agents: BTreeSet<&str> = credentials
            .iter()
            .filter(|c| matches!(c.role, Role::Agent | Role::Member))
            .map(|c| c.name.as_str())
            .collect();
        if !agents.is_empty() {
            for vantage in vantages.iter().filter(|v| *v != own && !agents.contains(v.as_str())) {
                self.warn(
                    file.quorum.vantages.span(),
                    format!(
                        "vantage '{vantage}' has no agent token: its reports are refused unless it uses the deprecated control token"
                    ),
                    format!("add [[tokens]] with name = \"{vantage}\", role = \"agent\" (`switchyard token new --role agent --name {vantage}`)"),
                );
            }
        }
        credentials
    }

    /// `[controller.ha] token_file`: read, checked, and required to be a `member` credential
    /// of `[[tokens]]` (the leader runs the same file, so it accepts only listed tokens).
    fn read_member_token(&mut self, file: &ConfigFile, credentials: &[Credential]) -> Option<String> {
        let path = file.controller.ha.as_ref()?.token_file.as_ref()?;
        let shown = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(bytes) if bytes.len() as u64 <= TOKEN_FILE_BYTES_MAX => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(_) => {
                self.error_at(
                    "controller.ha",
                    "token_file",
                    format!("token_file {shown} has more than {TOKEN_FILE_BYTES_MAX} bytes"),
                    "put only the member's token in the file",
                );
                return None;
            }
            // `problems()` already said it cannot be read.
            Err(_) => return None,
        };
        let token = text.trim().to_string();
        if let Err(problem) = crate::auth::check_token(&token) {
            self.error_at(
                "controller.ha",
                "token_file",
                format!("token_file {shown}: {problem}"),
                "make one with `switchyard token new --role member --name VANTAGE`",
            );
            return None;
        }
        let digest = TokenDigest::of(&token);
        if !credentials
            .iter()
            .any(|c| c.role == Role::Member && c.digest.same(&digest))
        {
            self.error_at(
                "controller.ha",
                "token_file",
                format!("the token in {shown} is not a [[tokens]] entry with role \"member\""),
                "list it in [[tokens]] with name = this member's vantage name and role = \"member\" (`switchyard token new --role member --name VANTAGE`), so the leader accepts the reports it passes on",
            );
            return None;
        }
        Some(token)
    }

    fn read_dns_token(&mut self, file: &ConfigFile) -> Option<String> {
        let path = file.dns.as_ref()?.token_file.as_ref()?;
        self.read_token_file(path, "[dns] token_file")
    }

    /// Reads a token file: bounded, trimmed, checked; problems point at the `token_file` key.
    fn read_token_file(&mut self, path: &Spanned<PathBuf>, what: &str) -> Option<String> {
        use std::io::Read as _;
        let shown = path.get_ref().display().to_string();
        let mut text = String::new();
        let read = std::fs::File::open(path.get_ref())
            .and_then(|file| file.take(TOKEN_FILE_BYTES_MAX + 1).read_to_string(&mut text));
        match read {
            Err(error) => {
                self.error(
                    path.span(),
                    format!("{what}: cannot read {shown}: {error}"),
                    "check the path (relative paths start at this file's folder) and its permissions",
                );
                return None;
            }
            Ok(bytes) if bytes as u64 > TOKEN_FILE_BYTES_MAX => {
                self.error(
                    path.span(),
                    format!("{what}: {shown} has more than {TOKEN_FILE_BYTES_MAX} bytes"),
                    "put only the token in the file",
                );
                return None;
            }
            Ok(_) => {}
        }
        let token = text.trim();
        if let Err(message) = crate::auth::check_token(token) {
            self.error(
                path.span(),
                format!("{what}: {shown}: {message}"),
                "write a token made by `switchyard token new` into the file",
            );
            return None;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(metadata) = std::fs::metadata(path.get_ref())
                && metadata.permissions().mode() & 0o077 != 0
            {
                self.warn(
                    path.span(),
                    format!("{what}: {shown} can be read by other users"),
                    format!("chmod 600 {shown}"),
                );
            }
        }
        Some(token.to_string())
    }

    fn check_controller(&mut self, file: &ConfigFile) {
        let c = &file.controller;
        let defaults = ControllerSection::default();
        self.bounded_ms(
            "controller",
            "tick_ms",
            c.tick_ms,
            TICK_MS_MIN,
            TICK_MS_MAX,
            defaults.tick_ms,
        );
        if c.audit_log.as_os_str().is_empty() {
            self.error_at(
                "controller",
                "audit_log",
                "[controller] audit_log is empty, so the controller could not open its audit log and would not start",
                "name a file, like audit_log = \"/var/lib/switchyard/audit.jsonl\" (relative paths start at this file's folder), or leave the key out for switchyard-audit.jsonl",
            );
        } else if c.audit_log.is_dir() {
            self.error_at(
                "controller",
                "audit_log",
                format!(
                    "[controller] audit_log = \"{}\" is a directory, so the controller could not open its audit log and would not start",
                    c.audit_log.display()
                ),
                "name a file in it, like audit.jsonl",
            );
        }
        if c.audit_log_bytes_max < 4096 {
            self.error_at(
                "controller",
                "audit_log_bytes_max",
                format!(
                    "[controller] audit_log_bytes_max = {} is too small",
                    c.audit_log_bytes_max
                ),
                "use at least 4096 (default 67108864, 64 MiB)",
            );
        }
    }

    fn check_regions(&mut self, file: &ConfigFile) -> Vec<RegionSpec> {
        if file.regions.is_empty() {
            self.error(
                NOWHERE..NOWHERE,
                "no regions configured",
                "add [[regions]] tables with name and priority, like name = \"us-east-1\", priority = 1",
            );
        }
        if file.regions.len() > REGIONS_MAX {
            self.error(
                file.regions[REGIONS_MAX].name.span(),
                format!("{} regions is more than {REGIONS_MAX}", file.regions.len()),
                "use fewer regions",
            );
        }
        let mut names: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
        let mut priorities: BTreeMap<u32, String> = BTreeMap::new();
        let mut specs = Vec::new();
        for region in &file.regions {
            let name = region.name.get_ref();
            if !valid_name(name) {
                self.error(
                    region.name.span(),
                    format!("region name '{name}' is not valid"),
                    "use letters, digits, '-' and '_' only, like eu-west-1",
                );
            }
            if let Some(first) = names.get(name) {
                let (line, _) = self.lines.position(first.start);
                self.error(
                    region.name.span(),
                    format!("region '{name}' is defined twice (first on line {line})"),
                    "give each region once; rename or remove one",
                );
                continue;
            }
            names.insert(name.clone(), region.name.span());
            let priority = *region.priority.get_ref();
            if let Some(other) = priorities.get(&priority) {
                self.error(
                    region.priority.span(),
                    format!("regions '{other}' and '{name}' both have priority {priority}"),
                    "give every region a different priority: the lowest is the home region failback returns to",
                );
            } else {
                priorities.insert(priority, name.clone());
            }
            for endpoint in &region.endpoints {
                if let Err(message) = health::spec::parse_url(endpoint.get_ref(), true) {
                    self.error(
                        endpoint.span(),
                        format!("region '{name}': endpoints entry: {message}"),
                        "write where the region serves as a URL, like https://shop.example.com or http://10.0.1.10:8080",
                    );
                }
            }
            for target in region.dns_targets.iter().flatten() {
                if target.is_empty() {
                    self.error(
                        region.name.span(),
                        format!("region '{name}' has an empty dns_targets entry"),
                        "name the DNS health target, or leave dns_targets out to use the region's name",
                    );
                }
            }
            specs.push(RegionSpec {
                id: RegionId::new(name.clone()),
                priority,
            });
        }
        specs
    }

    fn check_policy(&mut self, policy: &PolicySection) -> Option<Policy> {
        let defaults = PolicySection::default();
        let mode = match policy.mode.get_ref().as_str() {
            "active-passive" => Some(Policy::ActivePassive),
            "active-active" => Some(Policy::ActiveActive),
            other => {
                self.error(
                    policy.mode.span(),
                    format!("unknown policy mode '{other}'"),
                    "use \"active-passive\" or \"active-active\"",
                );
                None
            }
        };
        if *policy.failovers_per_hour_max.get_ref() == 0 {
            self.error(
                policy.failovers_per_hour_max.span(),
                "failovers_per_hour_max = 0",
                "use at least 1 (default 3); the first failover is never blocked anyway",
            );
        }
        if policy.runbook_retry_ms == 0 {
            self.error_at(
                "policy",
                "runbook_retry_ms",
                "[policy] runbook_retry_ms = 0 would retry a failing runbook in a busy loop",
                "use at least 100 (default 2000)",
            );
        } else {
            self.bounded_ms(
                "policy",
                "runbook_retry_ms",
                policy.runbook_retry_ms,
                1,
                RUNBOOK_RETRY_MS_MAX,
                defaults.runbook_retry_ms,
            );
        }
        for (key, value, default) in [
            ("down_confirm_ms", policy.down_confirm_ms, defaults.down_confirm_ms),
            ("min_hold_ms", policy.min_hold_ms, defaults.min_hold_ms),
            (
                "stability_window_ms",
                policy.stability_window_ms,
                defaults.stability_window_ms,
            ),
            (
                "failback_lag_max_ms",
                policy.failback_lag_max_ms,
                defaults.failback_lag_max_ms,
            ),
            ("lag_stale_ms", policy.lag_stale_ms, defaults.lag_stale_ms),
        ] {
            self.bounded_ms("policy", key, value, 0, POLICY_DURATION_MS_MAX, default);
        }
        self.bounded_ms(
            "policy",
            "startup_grace_ms",
            policy.startup_grace_ms,
            0,
            STARTUP_GRACE_MS_MAX,
            defaults.startup_grace_ms,
        );
        mode
    }

    fn check_checks(&mut self, file: &ConfigFile, known: &BTreeSet<String>) {
        if file.checks.len() > health::runner::CHECKS_MAX {
            self.error(
                file.checks[health::runner::CHECKS_MAX].span(),
                format!(
                    "{} checks is more than {}: no vantage point (the controller's own included) runs a plan that large",
                    file.checks.len(),
                    health::runner::CHECKS_MAX
                ),
                "check each region by a few checks that stand for it (rule = \"any\" or { at_least = N } combines them)",
            );
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for check in &file.checks {
            let spec = check.get_ref();
            if let Err(error) = spec.validate() {
                // The field the message starts with, where the check sets it.
                let field: String = error
                    .message
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let (span, fix) = if field.is_empty() {
                    (check.span(), "change this check as the message says".to_string())
                } else {
                    (
                        self.key_within(check.span(), &field),
                        format!("change `{field}` of this check as the message says"),
                    )
                };
                self.error(span, error.to_string(), fix);
            } else if spec.timeout_ms > spec.interval_ms {
                self.warn(
                    self.key_within(check.span(), "timeout_ms"),
                    format!(
                        "check '{}': timeout_ms = {} is longer than interval_ms = {}: probes never overlap, so while the target hangs they come timeout_ms apart and it is called down only after {} ms",
                        spec.name,
                        spec.timeout_ms,
                        spec.interval_ms,
                        spec.detection_bound_ms()
                    ),
                    "use a timeout_ms at most interval_ms (the defaults are 500 and 1000); raise interval_ms if the target is far away",
                );
            }
            if !known.contains(&spec.region) {
                self.error(
                    check.span(),
                    format!("check '{}' names unknown region '{}'", spec.name, spec.region),
                    format!("use one of the configured regions: {}", join(known)),
                );
            }
            if let Some(first) = names.get(&spec.name) {
                let (line, _) = self.lines.position(*first);
                self.error(
                    check.span(),
                    format!("check '{}' is defined twice (first on line {line})", spec.name),
                    "give every check a unique name",
                );
            } else {
                names.insert(spec.name.clone(), check.span().start);
            }
        }
        for region in &file.regions {
            let name = region.name.get_ref();
            let checks: Vec<&health::CheckSpec> = file
                .checks
                .iter()
                .map(|c| c.get_ref())
                .filter(|c| &c.region == name)
                .collect();
            if checks.is_empty() {
                self.error(
                    region.name.span(),
                    format!("region '{name}' has no checks, so it can never be judged up or down"),
                    format!("add a [[checks]] table with region = \"{name}\""),
                );
            }
            if let health::RegionRule::AtLeast(count) = region.rule
                && (count == 0 || count > checks.len())
            {
                self.error(
                    region.name.span(),
                    format!(
                        "region '{name}': rule at_least = {count} but it has {} check(s)",
                        checks.len()
                    ),
                    format!("use 1..={}", checks.len().max(1)),
                );
            }
            if file.policy.failback_lag_check
                && !checks.is_empty()
                && !checks.iter().any(|c| c.kind.reads_replica_lag())
            {
                self.warn(
                    region.name.span(),
                    format!(
                        "region '{name}' has no check that reads replication lag, so automatic failback to it waits forever"
                    ),
                    "add a dynamodb check with lag_sources = [the other regions' stores] (or cloudwatch_lag for AWS DynamoDB), an sql check with replica_lag = true or a redis check with replication = true, or set [policy] failback_lag_check = false",
                );
            }
        }
    }

    fn check_quorum(&mut self, file: &ConfigFile) -> Option<health::QuorumConfig> {
        let q = &file.quorum;
        let vantages = q.vantages.get_ref();
        let span = q.vantages.span();
        if !vantages.contains(&file.controller.vantage) {
            self.error(
                span.clone(),
                format!(
                    "[quorum] vantages does not list the controller's own vantage '{}'",
                    file.controller.vantage
                ),
                format!(
                    "add \"{}\" to vantages (the controller probes too)",
                    file.controller.vantage
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for name in vantages {
            if !valid_name(name) {
                self.error(
                    span.clone(),
                    format!("vantage name '{name}' is not valid"),
                    "use letters, digits, '-' and '_' only",
                );
            }
            if !seen.insert(name) {
                self.error(
                    span.clone(),
                    format!("vantage '{name}' is listed twice"),
                    "list each vantage point once",
                );
            }
        }
        let mut config = health::QuorumConfig::with_checks(vantages.clone(), file.checks.iter().map(|c| c.get_ref()));
        config.report_stale_ms = q.report_stale_ms;
        if let Some(quorum) = &q.quorum {
            let value = *quorum.get_ref();
            if value == 0 || value > vantages.len() {
                self.error(
                    quorum.span(),
                    format!("quorum = {value} but there are {} vantage point(s)", vantages.len()),
                    format!(
                        "use 1..={} (default: a majority, {})",
                        vantages.len(),
                        vantages.len() / 2 + 1
                    ),
                );
                return None;
            }
            config.quorum = Some(value);
        }
        if config.effective_quorum() == 1 && vantages.len() <= 2 {
            self.warn(
                span.clone(),
                "a single vote decides: a vantage point's own network failure can cause a failover",
                "run agents in other places (`switchyard agent`), list them in vantages, and keep the default majority quorum",
            );
        }
        if let Some(quorum) = &q.quorum
            && vantages.len() >= 2
            && !config.is_majority()
        {
            let value = *quorum.get_ref();
            self.warn(
                quorum.span(),
                format!(
                    "quorum = {value} is not a majority of the {} vantage points: {value} of them that see a region up — one compromised agent, or one whose own path still reaches the region — make the vantage points disagree, and the region is not failed over however many see it down",
                    vantages.len()
                ),
                format!(
                    "leave quorum out (a majority: {}), or list more vantage points; below a majority no vantage point's vote is safe to lose",
                    vantages.len() / 2 + 1
                ),
            );
        }
        for region in &file.regions {
            if region.rule != health::RegionRule::All {
                config.region_rules.insert(region.name.get_ref().clone(), region.rule);
            }
        }
        if q.report_stale_ms == 0 {
            self.error_at(
                "quorum",
                "report_stale_ms",
                "[quorum] report_stale_ms = 0",
                "use a few report intervals (default 3000)",
            );
            return None;
        }
        if q.report_stale_ms > REPORT_STALE_MS_MAX {
            self.bounded_ms(
                "quorum",
                "report_stale_ms",
                q.report_stale_ms,
                1,
                REPORT_STALE_MS_MAX,
                health::quorum::DEFAULT_REPORT_STALE_MS,
            );
            return None;
        }
        if q.report_interval_ms == 0 || q.report_interval_ms >= q.report_stale_ms {
            self.error_at(
                "quorum",
                "report_interval_ms",
                format!(
                    "[quorum] report_interval_ms = {} must be above 0 and below report_stale_ms = {}",
                    q.report_interval_ms, q.report_stale_ms
                ),
                "use e.g. 500 with report_stale_ms 3000",
            );
        }
        match health::Aggregator::new(config.clone()) {
            Ok(_) => Some(config),
            Err(error) => {
                self.error(span_or_zero(&q.vantages), error.to_string(), "fix the [quorum] section");
                None
            }
        }
    }

    fn check_vantage_paths(&mut self, file: &ConfigFile) {
        let vantages = file.quorum.vantages.get_ref();
        let probed: BTreeSet<String> = file.checks.iter().flat_map(|c| target_addresses(c.get_ref())).collect();
        for (vantage, entries) in &file.vantage_paths {
            if !vantages.contains(vantage.get_ref()) {
                self.error(
                    vantage.span(),
                    format!("[vantage_paths.{}] names an unknown vantage point", vantage.get_ref()),
                    format!(
                        "use a name listed in [quorum] vantages ({}), or add it there",
                        vantages.join(", ")
                    ),
                );
            }
            if entries.len() > VANTAGE_PATH_ENTRIES_MAX {
                self.error(
                    vantage.span(),
                    format!(
                        "[vantage_paths.{}] has {} entries, more than {VANTAGE_PATH_ENTRIES_MAX}",
                        vantage.get_ref(),
                        entries.len()
                    ),
                    "map only the addresses the checks use",
                );
            }
            for (from, to) in entries {
                for (side, address) in [("key", from), ("value", to)] {
                    if let Err(message) = health::spec::validate_host_port(address.get_ref()) {
                        self.error(
                            address.span(),
                            format!("[vantage_paths.{}] {side}: {message}", vantage.get_ref()),
                            "write entries as \"host:port in the checks\" = \"host:port from this vantage point\"",
                        );
                    }
                }
                if !probed.contains(from.get_ref()) {
                    self.warn(
                        from.span(),
                        format!(
                            "[vantage_paths.{}] maps '{}' but no check connects to that address",
                            vantage.get_ref(),
                            from.get_ref()
                        ),
                        "use the host:port exactly as a check's url, endpoint, lag_sources, address or server gives it (with the port)",
                    );
                }
            }
        }
    }

    fn check_runbook(&mut self, file: &ConfigFile, known: &BTreeSet<String>) -> Vec<Step> {
        if file.runbook.len() > RUNBOOK_STEPS_MAX {
            self.error(
                file.runbook[RUNBOOK_STEPS_MAX].name.span(),
                format!("{} runbook steps is more than {RUNBOOK_STEPS_MAX}", file.runbook.len()),
                "use fewer steps",
            );
        }
        if file.runbook.is_empty() {
            self.warn(
                NOWHERE..NOWHERE,
                "the runbook has no steps: decisions change nothing outside the controller",
                "add [[runbook]] steps such as kind = \"dns_health\" and kind = \"pointer\"",
            );
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut steps = Vec::new();
        for step in &file.runbook {
            let name = step.name.get_ref();
            if let Some(first) = names.get(name) {
                let (line, _) = self.lines.position(*first);
                self.error(
                    step.name.span(),
                    format!("runbook step '{name}' is defined twice (first on line {line})"),
                    "give every step a unique name",
                );
            } else {
                names.insert(name.clone(), step.name.span().start);
            }
            let kind = StepKind::parse(step.kind.get_ref());
            if kind.is_none() {
                self.error(
                    step.kind.span(),
                    format!("step '{name}' has unknown kind '{}'", step.kind.get_ref()),
                    format!("use one of {}", StepKind::all_names().join(", ")),
                );
            }
            let timeout = *step.timeout_ms.get_ref();
            if timeout == 0 || timeout > STEP_TIMEOUT_MS_MAX {
                self.error(
                    step.timeout_ms.span(),
                    format!(
                        "step '{name}': timeout_ms = {timeout} is out of range: the bound is 1..={STEP_TIMEOUT_MS_MAX} ms ({})",
                        human_ms(STEP_TIMEOUT_MS_MAX)
                    ),
                    format!("use 1..={STEP_TIMEOUT_MS_MAX} milliseconds (default 5000)"),
                );
            }
            let backoff_ms = *step.backoff_ms.get_ref();
            if backoff_ms > STEP_BACKOFF_MS_MAX {
                self.error(
                    step.backoff_ms.span(),
                    format!(
                        "step '{name}': backoff_ms = {backoff_ms} is above the bound of {STEP_BACKOFF_MS_MAX} ms ({})",
                        human_ms(STEP_BACKOFF_MS_MAX)
                    ),
                    format!("use 0..={STEP_BACKOFF_MS_MAX} milliseconds (default {STEP_BACKOFF_MS_DEFAULT})"),
                );
            }
            if *step.retries.get_ref() > STEP_RETRIES_MAX {
                self.error(
                    step.retries.span(),
                    format!(
                        "step '{name}': retries = {} is more than {STEP_RETRIES_MAX}",
                        step.retries.get_ref()
                    ),
                    format!("use 0..={STEP_RETRIES_MAX}"),
                );
            }
            for region in step.when_to.iter().flatten() {
                if !known.contains(region.get_ref()) {
                    self.error(
                        region.span(),
                        format!("step '{name}' names unknown region '{}'", region.get_ref()),
                        format!("use one of the configured regions: {}", join(known)),
                    );
                }
            }
            match kind {
                Some(StepKind::Command) if step.program.as_deref().is_none_or(str::is_empty) => self.error(
                    step.kind.span(),
                    format!("command step '{name}' has no program"),
                    "add program = \"/path/to/program\" (and args = [...]); no shell is used",
                ),
                Some(StepKind::Webhook) => match &step.url {
                    None => self.error(
                        step.kind.span(),
                        format!("webhook step '{name}' has no url"),
                        "add url = \"http://host:port/path\"",
                    ),
                    Some(url) => self.check_url(
                        url,
                        &format!("webhook step '{name}'"),
                        "http://host:port/path or https://host/path",
                    ),
                },
                Some(StepKind::DnsHealth | StepKind::DnsTxt) if file.dns.is_none() => self.error(
                    step.kind.span(),
                    format!("step '{name}' updates DNS but there is no [dns] section"),
                    "add [dns] with admin_url = \"http://127.0.0.1:8053\"",
                ),
                Some(StepKind::DnsTxt) if file.dns.as_ref().is_some_and(|d| d.txt_name.is_none()) => self.error(
                    step.kind.span(),
                    format!("dns_txt step '{name}' needs [dns] txt_name"),
                    "add txt_name = \"_active-region.shop.example.\" to [dns]",
                ),
                _ => {}
            }
            let action = match kind {
                Some(StepKind::Provider) => match self.provider_action(step) {
                    Some(action) => Some(std::sync::Arc::new(action)),
                    None => continue,
                },
                _ => None,
            };
            if let Some(kind) = kind {
                steps.push(Step {
                    name: name.clone(),
                    kind,
                    timeout_ms: timeout,
                    retries: *step.retries.get_ref(),
                    backoff_ms,
                    when_to: step
                        .when_to
                        .as_ref()
                        .map(|list| list.iter().map(|r| r.get_ref().clone()).collect()),
                    program: step.program.clone(),
                    args: step.args.clone(),
                    url: step.url.as_ref().map(|u| u.get_ref().clone()),
                    action,
                });
            }
        }
        if let Some(dns) = &file.dns {
            self.check_url(
                &dns.admin_url,
                "[dns] admin_url",
                "http(s)://host:port of `switchyard dns`'s admin API, like http://127.0.0.1:8053",
            );
        }
        steps
    }

    /// Checks a provider step's `[runbook.KIND]` table and builds its action; `None` after
    /// reporting a problem.
    fn provider_action(&mut self, step: &StepSection) -> Option<providers::Action> {
        let name = step.name.get_ref();
        match step.kind.get_ref().as_str() {
            // One arm per provider, like:
            // "haproxy" => self.settings(step, "haproxy", &step.haproxy)?.check(name, self).map(providers::Action::Haproxy),
            "cloudflare" => self
                .settings(step, "cloudflare", &step.cloudflare)?
                .check(name, self)
                .map(providers::Action::Cloudflare),
            "digitalocean" => {
                let action = self
                    .settings(step, "digitalocean", &step.digitalocean)?
                    .check(name, self)?;
                let timeout_ms = *step.timeout_ms.get_ref();
                if let Some(least) = action.least_timeout_ms()
                    && timeout_ms <= least
                {
                    self.warn(
                        step.kind.span(),
                        format!("step '{name}': timeout_ms = {timeout_ms} cuts the reserved IP's action off before action_wait_ms = {least} has passed"),
                        format!("set timeout_ms above {least} (say {}) on the step", least + 10_000),
                    );
                }
                Some(providers::Action::DigitalOcean(action))
            }
            "digitalocean_db_promote" => {
                let action = self
                    .settings(step, "digitalocean_db_promote", &step.digitalocean_db_promote)?
                    .check(name, self)?;
                let (timeout_ms, least) = (*step.timeout_ms.get_ref(), action.least_timeout_ms());
                if timeout_ms <= least {
                    self.warn(
                        step.timeout_ms.span(),
                        format!("step '{name}': timeout_ms = {timeout_ms} cuts the promotion off before wait_ms = {least} has passed"),
                        format!("set timeout_ms above {least} (say {}) on the step", least + 30_000),
                    );
                }
                Some(providers::Action::DigitalOceanDbPromote(action))
            }
            "media_sync" => {
                let action = self.settings(step, "media_sync", &step.media_sync)?.check(name, self)?;
                let (timeout_ms, needed) = (*step.timeout_ms.get_ref(), action.limits.run_timeout_ms);
                if timeout_ms < needed {
                    self.error(
                        step.timeout_ms.span(),
                        format!("step '{name}': timeout_ms = {timeout_ms} cuts the copy off before its run_timeout_ms = {needed}"),
                        format!("set timeout_ms = {needed} or more on the step, or lower run_timeout_ms under [runbook.media_sync]"),
                    );
                }
                Some(providers::Action::MediaSync(action))
            }
            "haproxy" => self
                .settings(step, "haproxy", &step.haproxy)?
                .check(name, self)
                .map(providers::Action::Haproxy),
            "rfc2136" => self
                .settings(step, "rfc2136", &step.rfc2136)?
                .check(name, self)
                .map(|step| providers::Action::Rfc2136(Box::new(step))),
            "mysql_promote" => {
                let action = self
                    .settings(step, "mysql_promote", &step.mysql_promote)?
                    .check(name, self)?;
                self.check_step_time(step, action.timeout_needed_ms());
                Some(providers::Action::MysqlPromote(action))
            }
            "postgres_promote" => {
                let action = self
                    .settings(step, "postgres_promote", &step.postgres_promote)?
                    .check(name, self)?;
                self.check_step_time(step, action.timeout_needed_ms());
                Some(providers::Action::PostgresPromote(action))
            }
            "redis_promote" => {
                let action = self
                    .settings(step, "redis_promote", &step.redis_promote)?
                    .check(name, self)?;
                self.check_step_time(step, action.timeout_needed_ms());
                Some(providers::Action::RedisPromote(action))
            }
            "rds_promote" => {
                let action = self
                    .settings(step, "rds_promote", &step.rds_promote)?
                    .check(name, self)?;
                self.warn_wait(step, name, action.least_timeout_ms());
                Some(providers::Action::RdsPromote(action))
            }
            "aurora_global_failover" => {
                let action = self
                    .settings(step, "aurora_global_failover", &step.aurora_global_failover)?
                    .check(name, self)?;
                self.warn_wait(step, name, action.least_timeout_ms());
                Some(providers::Action::AuroraGlobalFailover(action))
            }
            "route53" => {
                let action = self.settings(step, "route53", &step.route53)?.check(name, self)?;
                let timeout_ms = *step.timeout_ms.get_ref();
                if timeout_ms < action.insync_timeout_ms() {
                    self.warn(
                        step.timeout_ms.span(),
                        format!(
                            "step '{name}': timeout_ms = {timeout_ms} is shorter than its insync_timeout_ms = {}: the step may time out while Route 53 propagates",
                            action.insync_timeout_ms()
                        ),
                        "set timeout_ms above insync_timeout_ms (Route 53 takes up to a minute), like timeout_ms = 150000",
                    );
                }
                Some(providers::Action::Route53(action))
            }
            "route53_failover_health" => self
                .settings(step, "route53_failover_health", &step.route53_failover_health)?
                .check(name, self)
                .map(providers::Action::Route53FailoverHealth),
            "ssm_parameter" => self
                .settings(step, "ssm_parameter", &step.ssm_parameter)?
                .check(name, self)
                .map(providers::Action::SsmParameter),
            other => {
                self.error(
                    step.kind.span(),
                    format!("step '{name}': kind '{other}' is not wired to its settings"),
                    "this is a bug in switchyard; please report it",
                );
                None
            }
        }
    }

    /// A step whose run waits (a database's catch-up) must not be cut short by its timeout.
    fn check_step_time(&mut self, step: &StepSection, needed_ms: u64) {
        if *step.timeout_ms.get_ref() < needed_ms {
            self.error(
                step.timeout_ms.span(),
                format!(
                    "step '{}': timeout_ms = {} is shorter than this step needs ({needed_ms} ms: promote_lag_max_ms plus the step's other bounded waits)",
                    step.name.get_ref(),
                    step.timeout_ms.get_ref(),
                ),
                format!("set timeout_ms = {needed_ms} or more on the step, or lower promote_lag_max_ms"),
            );
        }
    }

    /// A step that waits up to `wait_ms` for a managed database should not be cut off first
    /// (the next attempt would wait again, without acting twice, so only a warning).
    fn warn_wait(&mut self, step: &StepSection, name: &str, wait_ms: u64) {
        let timeout_ms = *step.timeout_ms.get_ref();
        if timeout_ms <= wait_ms {
            self.warn(
                step.timeout_ms.span(),
                format!(
                    "step '{name}': timeout_ms = {timeout_ms} cuts the wait off before wait_ms = {wait_ms} has passed"
                ),
                format!(
                    "set timeout_ms above {wait_ms} (say {}) on the step, or lower wait_ms",
                    wait_ms + 30_000
                ),
            );
        }
    }

    /// The `[runbook.KIND]` table a provider step needs; reports its absence.
    fn settings<'s, T>(&mut self, step: &StepSection, kind: &str, table: &'s Option<Spanned<T>>) -> Option<&'s T> {
        match table {
            Some(settings) => Some(settings.get_ref()),
            None => {
                self.error(
                    step.kind.span(),
                    format!(
                        "step '{}' (kind = \"{kind}\") has no [runbook.{kind}] table",
                        step.name.get_ref()
                    ),
                    format!("add the {kind} settings under the step, as [runbook.{kind}] (see README, Runbook steps)"),
                );
                None
            }
        }
    }

    fn check_alerts(&mut self, file: &ConfigFile) -> Vec<providers::alerts::Channel> {
        if let Some(extra) = file.alerts.get(providers::alerts::CHANNELS_MAX) {
            self.error(
                extra.kind.span(),
                format!(
                    "{} [[alerts]] is more than {}",
                    file.alerts.len(),
                    providers::alerts::CHANNELS_MAX
                ),
                "send to fewer channels (a webhook can fan out)",
            );
        }
        let mut channels = Vec::new();
        for (index, alert) in file.alerts.iter().enumerate() {
            if let Some(channel) = alert.check(index, self) {
                channels.push(channel);
            }
        }
        channels
    }
}

fn span_or_zero<T>(spanned: &Spanned<T>) -> std::ops::Range<usize> {
    spanned.span()
}

/// The `host:port`s a check connects to, as an address map would match them: found by mapping
/// each through a map that renames everything it is asked about.
fn target_addresses(check: &health::CheckSpec) -> Vec<String> {
    let text = match serde_json::to_value(&check.kind) {
        Ok(value) => value,
        Err(_) => return Vec::new(),
    };
    let mut candidates: Vec<String> = Vec::new();
    let mut strings = vec![&text];
    while let Some(value) = strings.pop() {
        match value {
            serde_json::Value::String(s) => candidates.push(s.clone()),
            serde_json::Value::Array(items) => strings.extend(items),
            serde_json::Value::Object(map) => strings.extend(map.values()),
            _ => {}
        }
    }
    // A candidate is a target when mapping it to a marker changes the check.
    candidates
        .into_iter()
        .flat_map(|s| {
            let authority = s
                .split_once("://")
                .map_or(s.as_str(), |(_, rest)| {
                    rest.split(['/', '?', '#']).next().unwrap_or(rest)
                })
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_string();
            let mut keys = vec![authority.clone()];
            for port in [53, 80, 443] {
                keys.push(format!("{authority}:{port}"));
            }
            keys
        })
        .filter(|key| {
            let map = health::spec::AddressMap::from([(key.clone(), "mapped.invalid:1".to_string())]);
            check.with_address_map(&map) != *check
        })
        .collect()
}

/// "1 day", "1 h", "60 s": a bound in words.
fn human_ms(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} day(s)", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 1_000 == 0 => format!("{} s", ms / 1_000),
        ms => format!("{ms} ms"),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
