//! The controller's TOML configuration and its validation (`switchyard config check`).
//!
//! One file describes a deployment: `[controller]`, `[policy]`, `[quorum]`, `[[regions]]`,
//! `[[checks]]` (the health crate's `CheckSpec`), `[vantage_paths.NAME]` (a vantage point's own
//! addresses of the targets), `[dns]`, `[[runbook]]` and `[[alerts]]`.
//! Every mistake is reported with its line and column (from the TOML spans) and a fix; the
//! controller refuses to start while any remains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

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
    /// Where the region serves (for status and docs; checks say what is probed).
    #[serde(default)]
    pub endpoints: Vec<String>,
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
    /// Base URL of `switchyard dns`'s admin API, like http://127.0.0.1:5380.
    pub admin_url: Spanned<String>,
    /// Name of the TXT record naming the active region (for `dns_txt` steps).
    #[serde(default)]
    pub txt_name: Option<String>,
    /// File holding the admin API's bearer token; default: the controller's control token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The built-in step kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    DnsHealth,
    DnsTxt,
    Pointer,
    Command,
    Webhook,
}

impl StepKind {
    pub const NAMES: [&'static str; 5] = ["dns_health", "dns_txt", "pointer", "command", "webhook"];

    pub fn parse(name: &str) -> Option<StepKind> {
        Some(match name {
            "dns_health" => StepKind::DnsHealth,
            "dns_txt" => StepKind::DnsTxt,
            "pointer" => StepKind::Pointer,
            "command" => StepKind::Command,
            "webhook" => StepKind::Webhook,
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
    pub backoff_ms: u64,
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
}

fn default_step_timeout_ms() -> Spanned<u64> {
    Spanned::new(NOWHERE..NOWHERE, 5_000)
}
fn default_step_retries() -> Spanned<u32> {
    Spanned::new(NOWHERE..NOWHERE, 3)
}
fn default_step_backoff_ms() -> u64 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSection {
    /// Only "webhook" for now: POSTs `{key, message, generation, at_ms}`.
    pub kind: Spanned<String>,
    pub url: Spanned<String>,
}

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
}

/// A runbook step ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Parses and validates `text` (the contents of `file`).
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
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
        problems: Vec::new(),
        warnings: Vec::new(),
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

/// Reads and validates a file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&file, &text),
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

/// The serde error of the whole file gives only its first mistake; deserializing each section
/// on its own finds one per section.
fn syntax_problems(text: &str, lines: &LineIndex, whole: toml::de::Error) -> Vec<Problem> {
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

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based line and column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let column = offset - self.starts[line - 1] + 1;
        (line, column)
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

struct Checker<'a> {
    lines: &'a LineIndex,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
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

    fn error_at(&mut self, section: &str, key: &str, message: impl Into<String>, fix: impl Into<String>) {
        let span = self.key_span(section, key);
        self.error(span, message, fix);
    }

    fn warn(&mut self, span: std::ops::Range<usize>, message: impl Into<String>, fix: impl Into<String>) {
        let problem = self.lines.problem(span, message, fix);
        self.warnings.push(problem);
    }

    fn check(&mut self, file: ConfigFile) -> Option<Config> {
        let regions = self.check_regions(&file);
        let known: BTreeSet<String> = regions.iter().map(|r| r.id.0.clone()).collect();
        self.check_controller(&file);
        let policy = self.check_policy(&file.policy);
        self.check_checks(&file, &known);
        let quorum = self.check_quorum(&file);
        self.check_vantage_paths(&file);
        let steps = self.check_runbook(&file, &known);
        self.check_alerts(&file);
        let (policy, quorum) = (policy?, quorum?);
        let mut engine = EngineConfig::with_defaults(regions);
        let p = &file.policy;
        engine.policy = policy;
        engine.down_confirm_ms = p.down_confirm_ms;
        engine.min_hold_ms = p.min_hold_ms;
        engine.stability_window_ms = p.stability_window_ms;
        engine.failback_lag_max_ms = p.failback_lag_check.then_some(p.failback_lag_max_ms);
        engine.lag_stale_ms = p.lag_stale_ms;
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
        })
    }

    fn check_controller(&mut self, file: &ConfigFile) {
        let c = &file.controller;
        if c.tick_ms == 0 || c.tick_ms > 10_000 {
            self.error_at(
                "controller",
                "tick_ms",
                format!("[controller] tick_ms = {} is out of range", c.tick_ms),
                "use 10..=10000 (default 250)",
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
        }
        mode
    }

    fn check_checks(&mut self, file: &ConfigFile, known: &BTreeSet<String>) {
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for check in &file.checks {
            let spec = check.get_ref();
            if let Err(error) = spec.validate() {
                self.error(check.span(), error.to_string(), "fix the field the message names");
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
            if file.policy.failback_lag_check && !checks.is_empty() && !checks.iter().any(|c| reads_lag(c)) {
                self.warn(
                    region.name.span(),
                    format!(
                        "region '{name}' has no check that reads replication lag, so automatic failback to it waits forever"
                    ),
                    "add a dynamodb check with lag_sources = [the other regions' stores], an sql check with replica_lag = true or a redis check with replication = true, or set [policy] failback_lag_check = false",
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
                span,
                "a single vote decides: a vantage point's own network failure can cause a failover",
                "run agents in other places (`switchyard agent`), list them in vantages, and keep the default majority quorum",
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
                    format!("use one of {}", StepKind::NAMES.join(", ")),
                );
            }
            let timeout = *step.timeout_ms.get_ref();
            if timeout == 0 || timeout > STEP_TIMEOUT_MS_MAX {
                self.error(
                    step.timeout_ms.span(),
                    format!("step '{name}': timeout_ms = {timeout} is out of range"),
                    format!("use 1..={STEP_TIMEOUT_MS_MAX}"),
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
                    Some(url) if !url.get_ref().starts_with("http://") => self.error(
                        url.span(),
                        format!("webhook step '{name}': url '{}' is not an http:// URL", url.get_ref()),
                        "use http://host:port/path (HTTPS is not supported yet; put a local TLS proxy in front)",
                    ),
                    Some(_) => {}
                },
                Some(StepKind::DnsHealth | StepKind::DnsTxt) if file.dns.is_none() => self.error(
                    step.kind.span(),
                    format!("step '{name}' updates DNS but there is no [dns] section"),
                    "add [dns] with admin_url = \"http://127.0.0.1:5380\"",
                ),
                Some(StepKind::DnsTxt) if file.dns.as_ref().is_some_and(|d| d.txt_name.is_none()) => self.error(
                    step.kind.span(),
                    format!("dns_txt step '{name}' needs [dns] txt_name"),
                    "add txt_name = \"_active-region.shop.example.\" to [dns]",
                ),
                _ => {}
            }
            if let Some(kind) = kind {
                steps.push(Step {
                    name: name.clone(),
                    kind,
                    timeout_ms: timeout,
                    retries: *step.retries.get_ref(),
                    backoff_ms: step.backoff_ms,
                    when_to: step
                        .when_to
                        .as_ref()
                        .map(|list| list.iter().map(|r| r.get_ref().clone()).collect()),
                    program: step.program.clone(),
                    args: step.args.clone(),
                    url: step.url.as_ref().map(|u| u.get_ref().clone()),
                });
            }
        }
        if let Some(dns) = &file.dns
            && !dns.admin_url.get_ref().starts_with("http://")
        {
            self.error(
                dns.admin_url.span(),
                format!("[dns] admin_url '{}' is not an http:// URL", dns.admin_url.get_ref()),
                "use http://host:port of `switchyard dns`'s admin API",
            );
        }
        steps
    }

    fn check_alerts(&mut self, file: &ConfigFile) {
        for alert in &file.alerts {
            if alert.kind.get_ref() != "webhook" {
                self.error(
                    alert.kind.span(),
                    format!("unknown alert kind '{}'", alert.kind.get_ref()),
                    "use kind = \"webhook\"",
                );
            }
            if !alert.url.get_ref().starts_with("http://") {
                self.error(
                    alert.url.span(),
                    format!("alert url '{}' is not an http:// URL", alert.url.get_ref()),
                    "use http://host:port/path",
                );
            }
        }
    }
}

fn span_or_zero<T>(spanned: &Spanned<T>) -> std::ops::Range<usize> {
    spanned.span()
}

/// Whether a check reports replication lag (its kind asks for it).
fn reads_lag(check: &health::CheckSpec) -> bool {
    let Ok(value) = serde_json::to_value(&check.kind) else {
        return false;
    };
    ["replica_lag", "replication"]
        .iter()
        .any(|key| value.get(key) == Some(&serde_json::Value::Bool(true)))
        || value.get("max_replica_lag_ms").is_some_and(|v| !v.is_null())
        || value
            .get("lag_sources")
            .and_then(|v| v.as_array())
            .is_some_and(|sources| !sources.is_empty())
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

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
