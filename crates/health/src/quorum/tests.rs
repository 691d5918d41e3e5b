use super::*;
use crate::report::CheckResult;

use crate::testing::check_result as result;

/// `observe` with the receiver's wall clock reading what its monotonic clock reads.
trait ObserveNow {
    fn observe_now(&mut self, report: Report, now_ms: u64) -> Observed;
}

impl ObserveNow for Aggregator {
    fn observe_now(&mut self, report: Report, now_ms: u64) -> Observed {
        self.observe(report, now_ms, now_ms)
    }
}

fn report(vantage: &str, sent_at_ms: u64, results: Vec<CheckResult>) -> Report {
    Report {
        vantage: vantage.into(),
        sent_at_ms,
        results,
    }
}

fn one_check(vantage: &str, sent_at_ms: u64, status: CheckStatus) -> Report {
    report(vantage, sent_at_ms, vec![result("app", "east", status)])
}

fn three_vantages() -> Aggregator {
    let mut config = QuorumConfig {
        vantages_expected: vec!["controller".into(), "agent-a".into(), "agent-b".into()],
        quorum: None,
        report_stale_ms: 1000,
        region_rules: BTreeMap::new(),
        region_checks: BTreeMap::new(),
        region_lag_checks: BTreeMap::new(),
    };
    config
        .region_checks
        .insert("east".into(), ["app".to_string()].into_iter().collect());
    Aggregator::new(config).expect("valid config")
}

use CheckStatus::{Down, Up};

#[test]
fn majority_is_the_default_quorum() {
    assert_eq!(three_vantages().quorum(), 2);
}

#[test]
fn one_isolated_vantage_never_makes_a_region_down() {
    let mut aggregator = three_vantages();
    aggregator.observe_now(one_check("agent-a", 1, Down), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
    assert_eq!((verdict.votes_down, verdict.votes_unknown), (1, 2));
    aggregator.observe_now(one_check("agent-b", 1, Up), 100);
    aggregator.observe_now(one_check("controller", 1, Up), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Up, "{}", verdict.reason);
    assert_eq!((verdict.votes_down, verdict.votes_up), (1, 2));
}

#[test]
fn controller_cut_off_while_two_agents_see_the_region_up_is_up() {
    let mut aggregator = three_vantages();
    // The controller's own uplink is broken: its probes of every region fail.
    aggregator.observe_now(one_check("controller", 5, Down), 100);
    aggregator.observe_now(one_check("agent-a", 5, Up), 100);
    aggregator.observe_now(one_check("agent-b", 5, Up), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Up, "{}", verdict.reason);
    // And if the agents' reports cannot reach the controller either, it knows nothing.
    let verdict = aggregator.verdict("east", 2000);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
}

#[test]
fn two_of_three_down_is_down() {
    let mut aggregator = three_vantages();
    aggregator.observe_now(one_check("controller", 1, Up), 100);
    aggregator.observe_now(one_check("agent-a", 1, Down), 100);
    aggregator.observe_now(one_check("agent-b", 1, Down), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Down, "{}", verdict.reason);
    assert_eq!(verdict.votes_down, 2);
    assert!(verdict.reason.contains("agent-a: down"), "{}", verdict.reason);
}

#[test]
fn stale_reports_age_into_unknown() {
    let mut aggregator = three_vantages();
    aggregator.observe_now(one_check("agent-a", 1, Down), 100);
    aggregator.observe_now(one_check("agent-b", 1, Down), 600);
    assert_eq!(aggregator.verdict("east", 1100).state, RegionState::Down);
    // agent-a's report is now 1001 ms old: only one fresh down vote is left.
    let verdict = aggregator.verdict("east", 1101);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
    assert!(verdict.reason.contains("1001 ms old"), "{}", verdict.reason);
    let vantages = aggregator.vantages(1101);
    assert_eq!(
        vantages.iter().map(|v| v.fresh).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    assert_eq!(aggregator.verdict("east", 5000).votes_unknown, 3);
}

#[test]
fn outdated_and_unknown_reports_are_ignored() {
    let mut aggregator = three_vantages();
    assert_eq!(
        aggregator.observe_now(one_check("agent-a", 10, Up), 100),
        Observed::Accepted { dropped: 0 }
    );
    assert_eq!(
        aggregator.observe_now(one_check("agent-a", 9, Down), 101),
        Observed::Outdated { held_sent_at_ms: 10 }
    );
    assert_eq!(
        aggregator.observe_now(one_check("stranger", 9, Down), 101),
        Observed::UnknownVantage
    );
    assert_eq!(aggregator.latest("agent-a").map(|(r, _)| r.sent_at_ms), Some(10));
    // Once the held report is stale, a vantage whose clock went back is heard again.
    assert_eq!(
        aggregator.observe_now(one_check("agent-a", 9, Down), 5000),
        Observed::Accepted { dropped: 0 }
    );
}

#[test]
fn missing_data_is_never_down() {
    let mut aggregator = three_vantages();
    assert_eq!(aggregator.verdict("east", 0).state, RegionState::Unknown);
    // Reports that do not mention the region's check: unknown, not down.
    for vantage in ["controller", "agent-a", "agent-b"] {
        aggregator.observe_now(report(vantage, 1, vec![result("app", "west", Down)]), 10);
    }
    let verdict = aggregator.verdict("east", 10);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
    assert_eq!(verdict.votes_unknown, 3);
}

#[test]
fn results_for_checks_and_regions_not_configured_are_dropped() {
    // East has three checks: a report may carry three results.
    let mut aggregator = rule_aggregator(RegionRule::All);
    // A made-up check, the configured one twice, then a configured check under another region.
    let results = vec![
        result("ghost", "east", Down),
        result("app", "east", Up),
        result("app", "east", Down),
    ];
    assert_eq!(
        aggregator.observe_now(report("v", 1, results), 10),
        Observed::Accepted { dropped: 2 }
    );
    let (held, _) = aggregator.latest("v").expect("held");
    assert_eq!(
        held.results,
        vec![result("app", "east", Up)],
        "the first result for a pair counts"
    );
    assert_eq!(
        aggregator.observe_now(report("v", 2, vec![result("db", "mars", Down)]), 10),
        Observed::Accepted { dropped: 1 }
    );
    // Only configured regions have verdicts, whatever a report named.
    assert_eq!(
        aggregator.verdicts(10).keys().collect::<Vec<_>>(),
        vec!["east"],
        "a reported region that is not configured is never judged"
    );
    assert_eq!(aggregator.verdict("mars", 10).state, RegionState::Unknown);
}

/// The attack: one agent's report naming thousands of made-up regions (and stamped at 2^63).
/// It is refused whole, and a report can never make the aggregator hold more than the
/// configured checks, so a verdict's work depends on the configuration alone.
#[test]
fn a_report_with_more_results_than_checks_is_refused() {
    let mut aggregator = three_vantages();
    let flood: Vec<CheckResult> = std::iter::once(result("app", "east", Down))
        .chain((0..12_000).map(|i| result("c", &format!("r{i}"), Down)))
        .collect();
    assert_eq!(
        aggregator.observe_now(report("agent-a", 1, flood), 10),
        Observed::TooManyResults { count: 12_001, max: 1 }
    );
    assert!(aggregator.latest("agent-a").is_none());
    assert_eq!(aggregator.verdicts(10).len(), 1);
}

#[test]
fn a_report_stamped_far_ahead_of_the_receivers_clock_cannot_lock_out_later_ones() {
    let mut aggregator = three_vantages();
    let wall = 1_700_000_000_000u64;
    // A stolen token's report at 2^63: refused, so the real agent's next report is held.
    assert_eq!(
        aggregator.observe(one_check("agent-a", 1 << 63, Down), 100, wall),
        Observed::ClockAhead {
            ahead_ms: (1 << 63) - wall
        }
    );
    assert_eq!(
        aggregator.observe(one_check("agent-a", wall, Up), 101, wall),
        Observed::Accepted { dropped: 0 }
    );
    // Just past the bound: refused; at the bound: taken, and it orders the later ones.
    let ahead = wall + SENT_AHEAD_MS_MAX;
    assert_eq!(
        aggregator.observe(one_check("agent-a", ahead + 1, Down), 102, wall),
        Observed::ClockAhead {
            ahead_ms: SENT_AHEAD_MS_MAX + 1
        }
    );
    assert_eq!(
        aggregator.observe(one_check("agent-a", ahead, Down), 103, wall),
        Observed::Accepted { dropped: 0 }
    );
    assert_eq!(
        aggregator.observe(one_check("agent-a", wall + 500, Up), 104, wall + 500),
        Observed::Outdated { held_sent_at_ms: ahead },
        "the caller learns that a newer report holds the vantage point"
    );
}

#[test]
fn long_details_are_cut() {
    let mut aggregator = three_vantages();
    let mut long = result("app", "east", Down);
    long.detail = "é".repeat(DETAIL_CHARS_MAX * 4);
    aggregator.observe_now(report("agent-a", 1, vec![long]), 10);
    let (held, _) = aggregator.latest("agent-a").expect("held");
    assert_eq!(held.results[0].detail.chars().count(), DETAIL_CHARS_MAX);
    let reason = aggregator.verdict("east", 10).reason;
    assert!(reason.len() < 4 * DETAIL_CHARS_MAX, "{reason}");
}

fn rule_aggregator(rule: RegionRule) -> Aggregator {
    let checks: BTreeSet<String> = ["app", "db", "cache"].iter().map(|s| s.to_string()).collect();
    let config = QuorumConfig {
        vantages_expected: vec!["v".into()],
        quorum: None,
        report_stale_ms: 1000,
        region_rules: [("east".to_string(), rule)].into_iter().collect(),
        region_checks: [("east".to_string(), checks)].into_iter().collect(),
        region_lag_checks: BTreeMap::new(),
    };
    Aggregator::new(config).expect("valid config")
}

fn judge(rule: RegionRule, statuses: &[(&str, CheckStatus)]) -> RegionState {
    let mut aggregator = rule_aggregator(rule);
    let results = statuses.iter().map(|(c, s)| result(c, "east", *s)).collect();
    aggregator.observe_now(report("v", 1, results), 0);
    aggregator.verdict("east", 0).state
}

#[test]
fn region_rules_combine_checks_like_calculated_health_checks() {
    let all_up = [("app", Up), ("db", Up), ("cache", Up)];
    let one_down = [("app", Up), ("db", Down), ("cache", Up)];
    let two_down = [("app", Down), ("db", Down), ("cache", Up)];
    let all_down = [("app", Down), ("db", Down), ("cache", Down)];
    let one_missing_rest_up = [("app", Up), ("db", Up)];
    let one_missing_rest_down = [("app", Down), ("db", Down)];

    assert_eq!(judge(RegionRule::All, &all_up), RegionState::Up);
    assert_eq!(judge(RegionRule::All, &one_down), RegionState::Down);
    assert_eq!(judge(RegionRule::All, &one_missing_rest_up), RegionState::Unknown);

    assert_eq!(judge(RegionRule::Any, &two_down), RegionState::Up);
    assert_eq!(judge(RegionRule::Any, &all_down), RegionState::Down);
    assert_eq!(judge(RegionRule::Any, &one_missing_rest_down), RegionState::Unknown);

    assert_eq!(judge(RegionRule::AtLeast(2), &one_down), RegionState::Up);
    assert_eq!(judge(RegionRule::AtLeast(2), &two_down), RegionState::Down);
    assert_eq!(judge(RegionRule::AtLeast(2), &one_missing_rest_up), RegionState::Up);
    assert_eq!(
        judge(RegionRule::AtLeast(2), &[("app", Up), ("db", Down)]),
        RegionState::Unknown
    );
}

#[test]
fn bad_configs_are_refused_with_the_fix() {
    let base = QuorumConfig {
        vantages_expected: vec!["a".into(), "b".into()],
        quorum: Some(3),
        report_stale_ms: 1000,
        region_rules: BTreeMap::new(),
        region_checks: BTreeMap::new(),
        region_lag_checks: BTreeMap::new(),
    };
    let error = Aggregator::new(base.clone()).err().expect("quorum 3 of 2");
    assert!(error.to_string().contains("1..=2"), "{error}");
    let mut config = base.clone();
    config.quorum = None;
    config.vantages_expected.push("a".into());
    assert_eq!(
        Aggregator::new(config).err(),
        Some(QuorumError::DuplicateVantage("a".into()))
    );
    let mut config = base.clone();
    config.quorum = None;
    config.region_rules.insert("east".into(), RegionRule::AtLeast(3));
    config
        .region_checks
        .insert("east".into(), ["app".to_string()].into_iter().collect());
    assert!(matches!(
        Aggregator::new(config).err(),
        Some(QuorumError::RuleOutOfRange {
            count: 3,
            checks: 1,
            ..
        })
    ));
    let mut config = base;
    config.vantages_expected.clear();
    assert_eq!(Aggregator::new(config).err(), Some(QuorumError::NoVantages));
}

#[test]
fn rules_parse_from_toml() {
    #[derive(Deserialize)]
    struct Rules {
        rules: BTreeMap<String, RegionRule>,
    }
    let rules: Rules = toml::from_str("[rules]\na = \"all\"\nb = \"any\"\nc = { at_least = 2 }\n").expect("valid");
    assert_eq!(rules.rules["a"], RegionRule::All);
    assert_eq!(rules.rules["b"], RegionRule::Any);
    assert_eq!(rules.rules["c"], RegionRule::AtLeast(2));
}

/// Three vantage points, majority quorum; east has `app` (http, reads no lag) and `db` (reads
/// replication lag).
fn lag_aggregator() -> Aggregator {
    let checks = [
        crate::CheckSpec::new(
            "app",
            "east",
            crate::ProbeKind::Tcp {
                address: "10.0.0.5:80".into(),
            },
        ),
        crate::CheckSpec::new(
            "db",
            "east",
            crate::ProbeKind::Sql {
                driver: crate::SqlDriver::Mysql,
                address: "10.0.0.6:3306".into(),
                user: "probe".into(),
                password: None,
                database: None,
                replica_lag: true,
                max_replica_lag_ms: None,
            },
        ),
    ];
    let config = QuorumConfig::with_checks(vec!["controller".into(), "agent-a".into(), "agent-b".into()], &checks);
    Aggregator::new(config).expect("valid config")
}

/// A report of east with `app` up and, when given, `db` up with that lag.
fn lag_report(vantage: &str, app_lag: Option<u64>, db_lag: Option<Option<u64>>) -> Report {
    let mut app = result("app", "east", Up);
    app.replica_lag_ms = app_lag;
    let mut results = vec![app];
    if let Some(lag) = db_lag {
        let mut db = result("db", "east", Up);
        db.replica_lag_ms = lag;
        results.push(db);
    }
    report(vantage, 1, results)
}

#[test]
fn a_lag_on_a_check_that_reads_none_is_ignored() {
    let mut aggregator = lag_aggregator();
    // The attack: one agent adds `replica_lag_ms: 0` to its (truthful) http result.
    for vantage in ["controller", "agent-a", "agent-b"] {
        let app_lag = (vantage == "agent-a").then_some(0);
        aggregator.observe_now(lag_report(vantage, app_lag, Some(None)), 0);
    }
    let verdict = aggregator.verdict("east", 0);
    assert_eq!(verdict.replica_lag_ms, None, "{verdict:?}");
    assert_eq!(verdict.lag_readings, 0);
    let (held, _) = aggregator.latest("agent-a").expect("held");
    assert_eq!(held.results[0].replica_lag_ms, None, "not shown in status either");
}

#[test]
fn the_lag_takes_a_quorum_of_readings_and_no_single_one_decides() {
    let mut aggregator = lag_aggregator();
    // One reading is no quorum: unknown, whatever it says.
    aggregator.observe_now(lag_report("agent-a", None, Some(Some(0))), 0);
    assert_eq!(aggregator.verdict("east", 0).replica_lag_ms, None);
    assert_eq!(aggregator.verdict("east", 0).lag_readings, 1);
    // Honest readings of 5 s and 4 s and one liar's 0: the lag is an honest one, not 0.
    aggregator.observe_now(lag_report("controller", None, Some(Some(5_000))), 0);
    aggregator.observe_now(lag_report("agent-b", None, Some(Some(4_000))), 0);
    assert_eq!(aggregator.verdict("east", 0).replica_lag_ms, Some(4_000));
    // Two honest readings of ~0 and one liar's 10^9: the lag is the honest one.
    aggregator.observe_now(lag_report("controller", None, Some(Some(20))), 1);
    aggregator.observe_now(lag_report("agent-b", None, Some(Some(10))), 1);
    aggregator.observe_now(lag_report("agent-a", None, Some(Some(1_000_000_000))), 1);
    assert_eq!(aggregator.verdict("east", 1).replica_lag_ms, Some(20));
    // One honest reading left fresh plus the liar's 0: a quorum of readings, but the liar
    // cannot pull the lag below the honest one.
    aggregator.observe_now(lag_report("controller", None, Some(Some(5_000))), 2_000);
    aggregator.observe_now(lag_report("agent-a", None, Some(Some(0))), 2_000);
    let verdict = aggregator.verdict("east", 3_500);
    assert_eq!((verdict.replica_lag_ms, verdict.lag_readings), (Some(5_000), 2));
    // Readings age out with their reports.
    assert_eq!(aggregator.verdict("east", 10_000).replica_lag_ms, None);
}

/// For any readings with fewer than `quorum` of them lies: the lag is never below every honest
/// reading, and, when the honest readings are a quorum and the liars are fewer than the
/// readings beyond it, never above every honest one.
#[test]
fn randomized_lag_liars_stay_within_the_honest_readings() {
    let seed = common::rng::seed_from_env("randomized_lag_liars_stay_within_the_honest_readings");
    let mut rng = common::rng::Rng::new(seed);
    for round in 0..2_000 {
        let quorum = 1 + rng.below(4) as usize;
        let honest: Vec<u64> = (0..rng.below(6)).map(|_| rng.below(10_000)).collect();
        let liars = rng.below(quorum as u64) as usize;
        let mut readings = honest.clone();
        readings.extend((0..liars).map(|_| if rng.below(2) == 0 { 0 } else { u64::MAX }));
        let context = format!("seed {seed} round {round}: quorum {quorum}, honest {honest:?}, {liars} liar(s)");
        match quorum_lag(&mut readings, quorum) {
            None => assert!(honest.len() + liars < quorum, "{context}"),
            Some(lag) => {
                let low = honest.iter().min().expect("a quorum has an honest reading");
                assert!(lag >= *low, "{context}: {lag}");
                if honest.len() + liars - quorum >= liars {
                    assert!(lag <= *honest.iter().max().expect("honest"), "{context}: {lag}");
                }
            }
        }
    }
}

/// Safety under random reports, staleness, rules and quorums: Down is never declared without
/// at least `quorum` fresh reports whose checks, under the region's rule, say down; Up likewise.
#[test]
fn randomized_down_needs_a_fresh_down_quorum() {
    let seed = common::rng::seed_from_env("randomized_down_needs_a_fresh_down_quorum");
    let mut rng = common::rng::Rng::new(seed);
    for round in 0..300 {
        let vantage_count = 1 + rng.below(5) as usize;
        let vantages: Vec<String> = (0..vantage_count).map(|i| format!("v{i}")).collect();
        let quorum = if rng.below(2) == 0 {
            None
        } else {
            Some(1 + rng.below(vantage_count as u64) as usize)
        };
        let checks = ["app", "db", "cache"];
        let check_count = 1 + rng.below(3) as usize;
        let rule = match rng.below(3) {
            0 => RegionRule::All,
            1 => RegionRule::Any,
            _ => RegionRule::AtLeast(1 + rng.below(check_count as u64) as usize),
        };
        let stale = 100 + rng.below(1000);
        let config = QuorumConfig {
            vantages_expected: vantages.clone(),
            quorum,
            report_stale_ms: stale,
            region_rules: [("east".to_string(), rule)].into_iter().collect(),
            region_checks: [(
                "east".to_string(),
                checks[..check_count].iter().map(|s| s.to_string()).collect(),
            )]
            .into_iter()
            .collect(),
            region_lag_checks: BTreeMap::new(),
        };
        let mut aggregator = Aggregator::new(config).expect("valid config");
        let q = aggregator.quorum();
        // The model: per vantage, the last accepted report and when it arrived.
        let mut model: BTreeMap<String, (u64, Vec<CheckResult>)> = BTreeMap::new();
        let mut now = 0u64;
        for step in 0..60 {
            now += rng.below(400);
            let vantage = vantages[rng.below(vantage_count as u64) as usize].clone();
            let mut results = Vec::new();
            for check in &checks[..check_count] {
                match rng.below(4) {
                    0 => {} // not reported
                    1 => results.push(result(check, "east", Down)),
                    _ => results.push(result(check, "east", Up)),
                }
            }
            if aggregator.observe_now(report(&vantage, now, results.clone()), now)
                == (Observed::Accepted { dropped: 0 })
            {
                model.insert(vantage, (now, results));
            }
            let check_time = now + rng.below(2 * stale);
            let verdict_at = aggregator.verdict("east", check_time);
            let fresh: Vec<&Vec<CheckResult>> = model
                .values()
                .filter(|(received, _)| check_time.saturating_sub(*received) <= stale)
                .map(|(_, results)| results)
                .collect();
            let needed = match rule {
                RegionRule::All => check_count,
                RegionRule::Any => 1,
                RegionRule::AtLeast(n) => n,
            };
            let down_votes = fresh
                .iter()
                .filter(|results| {
                    let up = results.iter().filter(|r| r.status == Up).count();
                    let missing = check_count - results.len();
                    up + missing < needed
                })
                .count();
            let up_votes = fresh
                .iter()
                .filter(|results| results.iter().filter(|r| r.status == Up).count() >= needed)
                .count();
            let context = format!("seed {seed} round {round} step {step}: {}", verdict_at.reason);
            assert_eq!(verdict_at.votes_down, down_votes, "{context}");
            assert_eq!(verdict_at.votes_up, up_votes, "{context}");
            if verdict_at.state == RegionState::Down {
                assert!(down_votes >= q, "{context}");
            }
            if verdict_at.state == RegionState::Up {
                assert!(up_votes >= q, "{context}");
            }
            if down_votes < q && up_votes < q {
                assert_eq!(verdict_at.state, RegionState::Unknown, "{context}");
            }
            assert_eq!(
                verdict_at.votes_up + verdict_at.votes_down + verdict_at.votes_unknown,
                vantage_count
            );
        }
    }
}

#[test]
fn a_report_stamped_long_before_the_receivers_clock_is_refused_so_a_replay_never_votes() {
    let mut aggregator = three_vantages();
    let wall = 1_700_000_000_000u64;
    let tolerance = 1000 + SENT_AHEAD_MS_MAX;
    // A "down" report captured long ago and sent again: refused, no vote.
    assert_eq!(
        aggregator.observe(one_check("agent-a", 1000, Down), 100, wall),
        Observed::TooOld { behind_ms: wall - 1000 }
    );
    assert_eq!(
        aggregator.observe(one_check("agent-a", wall - tolerance - 1, Down), 101, wall),
        Observed::TooOld {
            behind_ms: tolerance + 1
        }
    );
    // Within the clocks' tolerance: taken.
    assert_eq!(
        aggregator.observe(one_check("agent-a", wall - tolerance, Down), 102, wall),
        Observed::Accepted { dropped: 0 }
    );
}
