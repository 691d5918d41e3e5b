//! Quorum over vantage points: turns the latest `Report` of each vantage point into one
//! verdict per region. Sans-IO: the clock is the `now_ms` argument, on the receiver's clock.
//!
//! Per vantage point, a region's judgement comes from its checks through the region's
//! `RegionRule` (three-valued: up, down or unknown). Then, over the expected vantage points:
//! a region is **Down** only when at least `quorum` of them judge it down on fresh reports,
//! **Up** when at least `quorum` judge it up, and **Unknown** otherwise. A vantage point that
//! never reported, whose last report is older than `report_stale_ms`, or that lacks a check
//! counts as unknown — never as down. So one isolated vantage point, or the controller's own
//! broken uplink, cannot bring a region down: the others still see it up.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::report::{CheckStatus, Report};

/// Default age after which a vantage point's last report no longer counts.
pub const DEFAULT_REPORT_STALE_MS: u64 = 3000;
/// Most vantage points a quorum is taken over.
pub const VANTAGES_MAX: usize = 64;

/// How a region's checks combine into one judgement per vantage point (Route 53's calculated
/// health checks). In TOML: `"all"`, `"any"` or `{ at_least = 2 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RegionRule {
    /// Up only if every check is up; down as soon as one is down.
    #[default]
    All,
    /// Up if one check is up; down only when every check is down.
    Any,
    /// Up if at least N checks are up; down when fewer than N can still be up.
    AtLeast(usize),
}

/// Settings of the aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumConfig {
    /// Every vantage point whose vote counts, the controller's own included.
    pub vantages_expected: Vec<String>,
    /// Votes needed to call a region up or down; `None` = a majority of `vantages_expected`.
    #[serde(default)]
    pub quorum: Option<usize>,
    /// A report older than this (received longer ago) counts as unknown.
    #[serde(default = "default_report_stale_ms")]
    pub report_stale_ms: u64,
    /// Rule per region; regions not listed use `RegionRule::All`.
    #[serde(default)]
    pub region_rules: BTreeMap<String, RegionRule>,
    /// The checks each region is judged on (check names). A listed check missing from a
    /// vantage point's report counts as unknown for it. A region not listed here is judged on
    /// the checks each report contains. Fill it from the config (`QuorumConfig::with_checks`).
    #[serde(default)]
    pub region_checks: BTreeMap<String, BTreeSet<String>>,
}

fn default_report_stale_ms() -> u64 {
    DEFAULT_REPORT_STALE_MS
}

impl QuorumConfig {
    /// Majority quorum, default staleness, `All` for every region, and the region → checks
    /// map taken from `checks`.
    pub fn with_checks<'a>(
        vantages_expected: Vec<String>,
        checks: impl IntoIterator<Item = &'a crate::spec::CheckSpec>,
    ) -> QuorumConfig {
        let mut region_checks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for check in checks {
            region_checks
                .entry(check.region.clone())
                .or_default()
                .insert(check.name.clone());
        }
        QuorumConfig {
            vantages_expected,
            quorum: None,
            report_stale_ms: DEFAULT_REPORT_STALE_MS,
            region_rules: BTreeMap::new(),
            region_checks,
        }
    }

    /// The quorum in force: the configured one or a strict majority.
    pub fn effective_quorum(&self) -> usize {
        self.quorum.unwrap_or(self.vantages_expected.len() / 2 + 1)
    }
}

/// A mistake in a `QuorumConfig`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("no vantage points: list at least one in vantages_expected (the controller's own counts)")]
    NoVantages,
    #[error("{count} vantage points is more than {VANTAGES_MAX}; use fewer")]
    TooManyVantages { count: usize },
    #[error("vantage point '{0}' is listed twice; give each name once")]
    DuplicateVantage(String),
    #[error("quorum = {quorum} is out of range: use 1..={vantages} (the number of vantage points)")]
    QuorumOutOfRange { quorum: usize, vantages: usize },
    #[error("report_stale_ms = 0 would make every report stale; use at least a few report intervals")]
    ZeroStaleness,
    #[error("region '{region}': at_least = {count} needs 1..={checks} (the region has {checks} checks)")]
    RuleOutOfRange {
        region: String,
        count: usize,
        checks: usize,
    },
}

/// The aggregated state of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    Up,
    Down,
    /// Not enough fresh, agreeing votes either way: act on nothing.
    Unknown,
}

/// One region's verdict with the votes behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionVerdict {
    pub state: RegionState,
    pub votes_down: usize,
    pub votes_up: usize,
    pub votes_unknown: usize,
    /// The quorum in force, for the reason and the audit log.
    pub quorum: usize,
    /// Why, in words: the count and each vantage point's judgement.
    pub reason: String,
    /// The highest replication lag any fresh vantage point read for the region's checks.
    pub replica_lag_ms: Option<u64>,
}

/// What `observe` did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Accepted,
    /// The vantage point is not in `vantages_expected`; the report is ignored.
    UnknownVantage,
    /// Older (`sent_at_ms`) than the fresh report already held for this vantage point.
    Outdated,
}

/// The freshness of one vantage point, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VantageStatus {
    pub name: String,
    /// When its last report arrived (receiver's clock), if ever.
    pub received_at_ms: Option<u64>,
    pub fresh: bool,
}

struct Held {
    report: Report,
    received_at_ms: u64,
}

/// The latest report of each expected vantage point, and the verdicts over them.
pub struct Aggregator {
    config: QuorumConfig,
    quorum: usize,
    latest: BTreeMap<String, Held>,
}

impl Aggregator {
    pub fn new(config: QuorumConfig) -> Result<Aggregator, QuorumError> {
        let vantages = config.vantages_expected.len();
        if vantages == 0 {
            return Err(QuorumError::NoVantages);
        }
        if vantages > VANTAGES_MAX {
            return Err(QuorumError::TooManyVantages { count: vantages });
        }
        let mut seen = BTreeSet::new();
        for name in &config.vantages_expected {
            if !seen.insert(name) {
                return Err(QuorumError::DuplicateVantage(name.clone()));
            }
        }
        let quorum = config.effective_quorum();
        if !(1..=vantages).contains(&quorum) {
            return Err(QuorumError::QuorumOutOfRange { quorum, vantages });
        }
        if config.report_stale_ms == 0 {
            return Err(QuorumError::ZeroStaleness);
        }
        for (region, rule) in &config.region_rules {
            if let RegionRule::AtLeast(count) = *rule {
                let checks = config.region_checks.get(region).map(BTreeSet::len);
                let bad = count == 0 || checks.is_some_and(|checks| count > checks);
                if bad {
                    return Err(QuorumError::RuleOutOfRange {
                        region: region.clone(),
                        count,
                        checks: checks.unwrap_or(0),
                    });
                }
            }
        }
        Ok(Aggregator {
            config,
            quorum,
            latest: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &QuorumConfig {
        &self.config
    }

    /// The quorum in force.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Takes a vantage point's report, received at `now_ms`. Only the latest report of each
    /// vantage point is kept: memory is bounded by the number of vantage points.
    pub fn observe(&mut self, report: Report, now_ms: u64) -> Observed {
        if !self.config.vantages_expected.contains(&report.vantage) {
            return Observed::UnknownVantage;
        }
        if let Some(held) = self.latest.get(&report.vantage)
            && report.sent_at_ms < held.report.sent_at_ms
            && self.is_fresh(held, now_ms)
        {
            return Observed::Outdated;
        }
        self.latest.insert(
            report.vantage.clone(),
            Held {
                report,
                received_at_ms: now_ms,
            },
        );
        Observed::Accepted
    }

    /// The latest report of a vantage point and when it arrived, fresh or not.
    pub fn latest(&self, vantage: &str) -> Option<(&Report, u64)> {
        self.latest.get(vantage).map(|held| (&held.report, held.received_at_ms))
    }

    /// Freshness of every expected vantage point, in configuration order.
    pub fn vantages(&self, now_ms: u64) -> Vec<VantageStatus> {
        self.config
            .vantages_expected
            .iter()
            .map(|name| {
                let held = self.latest.get(name);
                VantageStatus {
                    name: name.clone(),
                    received_at_ms: held.map(|held| held.received_at_ms),
                    fresh: held.is_some_and(|held| self.is_fresh(held, now_ms)),
                }
            })
            .collect()
    }

    fn is_fresh(&self, held: &Held, now_ms: u64) -> bool {
        now_ms.saturating_sub(held.received_at_ms) <= self.config.report_stale_ms
    }

    /// Every known region (configured or reported) with its verdict at `now_ms`.
    pub fn verdicts(&self, now_ms: u64) -> BTreeMap<String, RegionVerdict> {
        let mut regions: BTreeSet<&str> = BTreeSet::new();
        regions.extend(self.config.region_rules.keys().map(String::as_str));
        regions.extend(self.config.region_checks.keys().map(String::as_str));
        for held in self.latest.values() {
            regions.extend(held.report.results.iter().map(|result| result.region.as_str()));
        }
        regions
            .into_iter()
            .map(|region| (region.to_string(), self.verdict(region, now_ms)))
            .collect()
    }

    /// One region's verdict at `now_ms`.
    pub fn verdict(&self, region: &str, now_ms: u64) -> RegionVerdict {
        let rule = self.config.region_rules.get(region).copied().unwrap_or_default();
        let mut votes_up = 0;
        let mut votes_down = 0;
        let mut votes_unknown = 0;
        let mut replica_lag_ms: Option<u64> = None;
        let mut words = Vec::with_capacity(self.config.vantages_expected.len());
        for vantage in &self.config.vantages_expected {
            let judgement = match self.latest.get(vantage) {
                None => Judgement::unknown("no report yet"),
                Some(held) if !self.is_fresh(held, now_ms) => Judgement::unknown(format!(
                    "last report {} ms old",
                    now_ms.saturating_sub(held.received_at_ms)
                )),
                Some(held) => {
                    let judgement = self.judge(region, rule, &held.report);
                    if let Some(lag) = judgement.replica_lag_ms {
                        replica_lag_ms = Some(replica_lag_ms.map_or(lag, |max| max.max(lag)));
                    }
                    judgement
                }
            };
            match judgement.state {
                RegionState::Up => votes_up += 1,
                RegionState::Down => votes_down += 1,
                RegionState::Unknown => votes_unknown += 1,
            }
            words.push(format!("{vantage}: {}", judgement.why));
        }
        let quorum = self.quorum;
        let (state, summary) = if votes_down >= quorum && votes_up >= quorum {
            (
                RegionState::Unknown,
                format!("vantage points disagree ({votes_down} down, {votes_up} up, quorum {quorum})"),
            )
        } else if votes_down >= quorum {
            (
                RegionState::Down,
                format!(
                    "{votes_down} of {} vantage points see it down (quorum {quorum})",
                    words.len()
                ),
            )
        } else if votes_up >= quorum {
            (
                RegionState::Up,
                format!(
                    "{votes_up} of {} vantage points see it up (quorum {quorum})",
                    words.len()
                ),
            )
        } else {
            (
                RegionState::Unknown,
                format!("no quorum: {votes_down} down, {votes_up} up, {votes_unknown} unknown (quorum {quorum})"),
            )
        };
        RegionVerdict {
            state,
            votes_down,
            votes_up,
            votes_unknown,
            quorum,
            reason: format!("{summary}; {}", words.join("; ")),
            replica_lag_ms,
        }
    }

    /// One vantage point's three-valued judgement of a region from one fresh report.
    fn judge(&self, region: &str, rule: RegionRule, report: &Report) -> Judgement {
        let results: Vec<_> = report.results.iter().filter(|r| r.region == region).collect();
        let expected: BTreeSet<&str> = match self.config.region_checks.get(region) {
            Some(checks) => checks.iter().map(String::as_str).collect(),
            None => results.iter().map(|r| r.check.as_str()).collect(),
        };
        if expected.is_empty() {
            return Judgement::unknown("no checks reported");
        }
        let mut up = 0usize;
        let mut down = Vec::new();
        let mut missing = Vec::new();
        let mut replica_lag_ms: Option<u64> = None;
        for check in &expected {
            match results.iter().find(|r| r.check == *check) {
                None => missing.push(*check),
                Some(result) => {
                    if let Some(lag) = result.replica_lag_ms {
                        replica_lag_ms = Some(replica_lag_ms.map_or(lag, |max| max.max(lag)));
                    }
                    match result.status {
                        CheckStatus::Up => up += 1,
                        CheckStatus::Down => down.push(format!("{check} down ({})", result.detail)),
                    }
                }
            }
        }
        let total = expected.len();
        let needed = match rule {
            RegionRule::All => total,
            RegionRule::Any => 1,
            RegionRule::AtLeast(count) => count.min(total),
        };
        let could_be_up = up + missing.len();
        let state = if up >= needed {
            RegionState::Up
        } else if could_be_up < needed {
            RegionState::Down
        } else {
            RegionState::Unknown
        };
        let mut why = format!("{state:?} ({up}/{total} checks up, {needed} needed)").to_lowercase();
        if !down.is_empty() {
            why.push_str(&format!(": {}", down.join(", ")));
        }
        if !missing.is_empty() {
            why.push_str(&format!("; not reported: {}", missing.join(", ")));
        }
        Judgement {
            state,
            why,
            replica_lag_ms,
        }
    }
}

struct Judgement {
    state: RegionState,
    why: String,
    replica_lag_ms: Option<u64>,
}

impl Judgement {
    fn unknown(why: impl Into<String>) -> Judgement {
        Judgement {
            state: RegionState::Unknown,
            why: why.into(),
            replica_lag_ms: None,
        }
    }
}

#[cfg(test)]
mod tests;
