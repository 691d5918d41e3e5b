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
//!
//! What a vantage point sends is bounded before it is held: a report with more results than
//! there are configured checks (its plan has no more) is refused, results naming a (check,
//! region) pair that is not configured are dropped, and so is the second result for one pair,
//! so the work of every verdict depends on the configuration only, never on what a client sent.
//! A report whose `sent_at_ms` is further ahead of the receiver's clock than
//! [`SENT_AHEAD_MS_MAX`] is refused: reports of one vantage point are ordered by it, and one
//! stamped in the far future would otherwise have every later genuine report refused as
//! outdated.
//!
//! Replication lag counts only from checks whose kind reads it (`ProbeKind::reads_replica_lag`),
//! and like the verdict it takes a quorum: a region's lag is known only when at least `quorum`
//! fresh vantage points read one, and it is the `quorum`-th smallest of their readings (each
//! vantage point's largest) — the value a quorum of them read the lag at or below. Fewer than
//! `quorum` vantage points cannot make it look lower than every honest reading; they can make it
//! look higher than every honest one (and hold failback back) only while there are fewer
//! readings than `quorum` plus theirs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::report::{CheckResult, CheckStatus, POSITION_CHARS_MAX, Report};

/// Default age after which a vantage point's last report no longer counts.
pub const DEFAULT_REPORT_STALE_MS: u64 = 3000;
/// Most vantage points a quorum is taken over.
pub const VANTAGES_MAX: usize = 64;
/// Farthest a report's `sent_at_ms` may be ahead of the receiver's wall clock; a report stamped
/// further ahead (forged, or from a host whose clock is wrong) is refused. Clocks synchronised
/// by NTP are milliseconds apart.
pub const SENT_AHEAD_MS_MAX: u64 = 30_000;
/// Longest `detail` of a result held (characters); a longer one is cut.
pub const DETAIL_CHARS_MAX: usize = 512;
/// Checks named per vantage point in a verdict's reason; the others are counted.
pub const REASON_CHECKS_LISTED_MAX: usize = 8;

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
    /// The checks each region is judged on (check names): the only (check, region) pairs a
    /// report's results are kept for. A listed check missing from a vantage point's report
    /// counts as unknown for it; a region without checks is unknown. Fill it from the config
    /// (`QuorumConfig::with_checks`).
    #[serde(default)]
    pub region_checks: BTreeMap<String, BTreeSet<String>>,
    /// Per region, its checks whose kind reads replication lag: the only results whose
    /// `replica_lag_ms` (and `position`) are kept.
    #[serde(default)]
    pub region_lag_checks: BTreeMap<String, BTreeSet<String>>,
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
        let mut region_lag_checks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for check in checks {
            region_checks
                .entry(check.region.clone())
                .or_default()
                .insert(check.name.clone());
            if check.kind.reads_replica_lag() {
                region_lag_checks
                    .entry(check.region.clone())
                    .or_default()
                    .insert(check.name.clone());
            }
        }
        QuorumConfig {
            vantages_expected,
            quorum: None,
            report_stale_ms: DEFAULT_REPORT_STALE_MS,
            region_rules: BTreeMap::new(),
            region_checks,
            region_lag_checks,
        }
    }

    /// The quorum in force: the configured one or a strict majority.
    pub fn effective_quorum(&self) -> usize {
        self.quorum.unwrap_or(self.vantages_expected.len() / 2 + 1)
    }

    /// Whether the quorum is a strict majority of the vantage points. Below one, `quorum`
    /// vantage points that see a region up make the vantage points disagree (unknown) however
    /// many see it down, so a single lying or misplaced one can block a failover at quorum 1.
    pub fn is_majority(&self) -> bool {
        self.effective_quorum() * 2 > self.vantages_expected.len()
    }

    /// Every configured check: what a vantage point's plan holds, so the most results one
    /// report may carry.
    pub fn checks_count(&self) -> usize {
        self.region_checks.values().map(BTreeSet::len).sum()
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
    /// The region's replication lag: known when at least `quorum` fresh vantage points read
    /// one from a check that reads lag; the `quorum`-th smallest of their readings (each
    /// vantage point's largest), so a quorum of them read it at most this high.
    pub replica_lag_ms: Option<u64>,
    /// How many fresh vantage points read a lag for the region.
    #[serde(default)]
    pub lag_readings: usize,
}

/// What `observe` did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Held as the vantage point's latest report. `dropped` results were left out: they named
    /// a (check, region) pair that is not configured, or one the report had already given.
    Accepted { dropped: usize },
    /// The vantage point is not in `vantages_expected`; the report is ignored.
    UnknownVantage,
    /// Older (`sent_at_ms`) than the fresh report already held for this vantage point, which
    /// stays: two senders report under one name, or the sender's clock went back.
    Outdated { held_sent_at_ms: u64 },
    /// `sent_at_ms` is `ahead_ms` ahead of the receiver's wall clock, more than
    /// [`SENT_AHEAD_MS_MAX`]; refused.
    ClockAhead { ahead_ms: u64 },
    /// `sent_at_ms` is `behind_ms` behind the receiver's wall clock, more than `report_stale_ms`
    /// plus [`SENT_AHEAD_MS_MAX`] (the clocks' tolerance): a report captured and replayed, or a
    /// sender whose clock is far behind; refused, so an old report never counts as a fresh vote.
    TooOld { behind_ms: u64 },
    /// More results (`count`) than there are configured checks (`max`); refused.
    TooManyResults { count: usize, max: usize },
}

impl Observed {
    /// A stable name of a refusal (for metrics and API error codes); `None` when accepted.
    pub fn refusal_code(&self) -> Option<&'static str> {
        match self {
            Observed::Accepted { .. } => None,
            Observed::UnknownVantage => Some("unknown_vantage"),
            Observed::Outdated { .. } => Some("outdated"),
            Observed::ClockAhead { .. } => Some("clock_ahead"),
            Observed::TooOld { .. } => Some("too_old"),
            Observed::TooManyResults { .. } => Some("too_many_results"),
        }
    }
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

    /// Takes a vantage point's report, received at `now_ms` (the clock freshness is judged on)
    /// when the receiver's wall clock read `wall_ms` (what `sent_at_ms` may not be far ahead
    /// of). Only the latest report of each vantage point is kept, and of it only the results of
    /// configured checks: memory and the work of a verdict are bounded by the configuration.
    pub fn observe(&mut self, mut report: Report, now_ms: u64, wall_ms: u64) -> Observed {
        if !self.config.vantages_expected.contains(&report.vantage) {
            return Observed::UnknownVantage;
        }
        let max = self.config.checks_count();
        if report.results.len() > max {
            return Observed::TooManyResults {
                count: report.results.len(),
                max,
            };
        }
        let ahead_ms = report.sent_at_ms.saturating_sub(wall_ms);
        if ahead_ms > SENT_AHEAD_MS_MAX {
            return Observed::ClockAhead { ahead_ms };
        }
        let behind_ms = wall_ms.saturating_sub(report.sent_at_ms);
        if behind_ms > self.config.report_stale_ms.saturating_add(SENT_AHEAD_MS_MAX) {
            return Observed::TooOld { behind_ms };
        }
        if let Some(held) = self.latest.get(&report.vantage)
            && report.sent_at_ms < held.report.sent_at_ms
            && self.is_fresh(held, now_ms)
        {
            return Observed::Outdated {
                held_sent_at_ms: held.report.sent_at_ms,
            };
        }
        let dropped = self.keep_configured(&mut report.results);
        self.latest.insert(
            report.vantage.clone(),
            Held {
                report,
                received_at_ms: now_ms,
            },
        );
        Observed::Accepted { dropped }
    }

    /// Keeps the results of configured (check, region) pairs, the first of each, sorted by
    /// (region, check) for `find`; cuts long details and drops a lag (and position) from a check
    /// that does not read one. Returns how many results were left out.
    fn keep_configured(&self, results: &mut Vec<CheckResult>) -> usize {
        let before = results.len();
        let configured_in = |map: &BTreeMap<String, BTreeSet<String>>, result: &CheckResult| {
            map.get(&result.region)
                .is_some_and(|checks| checks.contains(&result.check))
        };
        results.retain(|result| configured_in(&self.config.region_checks, result));
        // Stable: of two results for one pair, the first stays first and is kept.
        results.sort_by(|a, b| (&a.region, &a.check).cmp(&(&b.region, &b.check)));
        results.dedup_by(|later, earlier| later.region == earlier.region && later.check == earlier.check);
        for result in results.iter_mut() {
            if let Some((cut, _)) = result.detail.char_indices().nth(DETAIL_CHARS_MAX) {
                result.detail.truncate(cut);
            }
            if !configured_in(&self.config.region_lag_checks, result) {
                result.replica_lag_ms = None;
                result.position = None;
            }
            let too_long = |text: &str| text.len() > POSITION_CHARS_MAX;
            if result.position.as_ref().is_some_and(|p| {
                too_long(&p.role)
                    || too_long(&p.kind)
                    || too_long(&p.received)
                    || p.applied.as_deref().is_some_and(too_long)
            }) {
                result.position = None;
            }
        }
        before - results.len()
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

    /// Every configured region with its verdict at `now_ms` (reports name no others: their
    /// results for other regions are never held).
    pub fn verdicts(&self, now_ms: u64) -> BTreeMap<String, RegionVerdict> {
        let mut regions: BTreeSet<&str> = BTreeSet::new();
        regions.extend(self.config.region_rules.keys().map(String::as_str));
        regions.extend(self.config.region_checks.keys().map(String::as_str));
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
        let mut lag_readings: Vec<u64> = Vec::new();
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
                    lag_readings.extend(judgement.replica_lag_ms);
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
        let replica_lag_ms = quorum_lag(&mut lag_readings, quorum);
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
            lag_readings: lag_readings.len(),
        }
    }

    /// One vantage point's three-valued judgement of a region from one fresh report (whose
    /// results `observe` kept sorted), and the largest lag it read for the region.
    fn judge(&self, region: &str, rule: RegionRule, report: &Report) -> Judgement {
        let Some(expected) = self.config.region_checks.get(region).filter(|c| !c.is_empty()) else {
            return Judgement::unknown("no checks configured");
        };
        let mut up = 0usize;
        let mut down = Vec::new();
        let mut missing = Vec::new();
        let mut replica_lag_ms: Option<u64> = None;
        for check in expected {
            match find(report, region, check) {
                None => missing.push(check.as_str()),
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
            why.push_str(&format!(": {}", listed(&down)));
        }
        if !missing.is_empty() {
            why.push_str(&format!("; not reported: {}", listed(&missing)));
        }
        Judgement {
            state,
            why,
            replica_lag_ms,
        }
    }
}

/// The result for (`region`, `check`) in a report whose results are sorted by (region, check).
fn find<'r>(report: &'r Report, region: &str, check: &str) -> Option<&'r CheckResult> {
    report
        .results
        .binary_search_by(|r| (r.region.as_str(), r.check.as_str()).cmp(&(region, check)))
        .ok()
        .map(|index| &report.results[index])
}

/// The first [`REASON_CHECKS_LISTED_MAX`] items, then how many more.
fn listed<T: AsRef<str>>(items: &[T]) -> String {
    let shown: Vec<&str> = items.iter().take(REASON_CHECKS_LISTED_MAX).map(AsRef::as_ref).collect();
    let mut text = shown.join(", ");
    if items.len() > shown.len() {
        text.push_str(&format!(" and {} more", items.len() - shown.len()));
    }
    text
}

/// A region's lag from the fresh vantage points' readings: known with at least `quorum` of
/// them, the `quorum`-th smallest — a quorum read it at most this high, so fewer than `quorum`
/// readings cannot pull it below every other one.
fn quorum_lag(readings: &mut [u64], quorum: usize) -> Option<u64> {
    if quorum == 0 || readings.len() < quorum {
        return None;
    }
    readings.sort_unstable();
    Some(readings[quorum - 1])
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
