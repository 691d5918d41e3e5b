use super::*;
use crate::report::CheckResult;

use crate::testing::check_result as result;

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
    aggregator.observe(one_check("agent-a", 1, Down), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
    assert_eq!((verdict.votes_down, verdict.votes_unknown), (1, 2));
    aggregator.observe(one_check("agent-b", 1, Up), 100);
    aggregator.observe(one_check("controller", 1, Up), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Up, "{}", verdict.reason);
    assert_eq!((verdict.votes_down, verdict.votes_up), (1, 2));
}

#[test]
fn controller_cut_off_while_two_agents_see_the_region_up_is_up() {
    let mut aggregator = three_vantages();
    // The controller's own uplink is broken: its probes of every region fail.
    aggregator.observe(one_check("controller", 5, Down), 100);
    aggregator.observe(one_check("agent-a", 5, Up), 100);
    aggregator.observe(one_check("agent-b", 5, Up), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Up, "{}", verdict.reason);
    // And if the agents' reports cannot reach the controller either, it knows nothing.
    let verdict = aggregator.verdict("east", 2000);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
}

#[test]
fn two_of_three_down_is_down() {
    let mut aggregator = three_vantages();
    aggregator.observe(one_check("controller", 1, Up), 100);
    aggregator.observe(one_check("agent-a", 1, Down), 100);
    aggregator.observe(one_check("agent-b", 1, Down), 100);
    let verdict = aggregator.verdict("east", 100);
    assert_eq!(verdict.state, RegionState::Down, "{}", verdict.reason);
    assert_eq!(verdict.votes_down, 2);
    assert!(verdict.reason.contains("agent-a: down"), "{}", verdict.reason);
}

#[test]
fn stale_reports_age_into_unknown() {
    let mut aggregator = three_vantages();
    aggregator.observe(one_check("agent-a", 1, Down), 100);
    aggregator.observe(one_check("agent-b", 1, Down), 600);
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
        aggregator.observe(one_check("agent-a", 10, Up), 100),
        Observed::Accepted
    );
    assert_eq!(
        aggregator.observe(one_check("agent-a", 9, Down), 101),
        Observed::Outdated
    );
    assert_eq!(
        aggregator.observe(one_check("stranger", 9, Down), 101),
        Observed::UnknownVantage
    );
    assert_eq!(aggregator.latest("agent-a").map(|(r, _)| r.sent_at_ms), Some(10));
    // Once the held report is stale, a vantage whose clock went back is heard again.
    assert_eq!(
        aggregator.observe(one_check("agent-a", 9, Down), 5000),
        Observed::Accepted
    );
}

#[test]
fn missing_data_is_never_down() {
    let mut aggregator = three_vantages();
    assert_eq!(aggregator.verdict("east", 0).state, RegionState::Unknown);
    // Reports that do not mention the region's check: unknown, not down.
    for vantage in ["controller", "agent-a", "agent-b"] {
        aggregator.observe(report(vantage, 1, vec![result("other", "west", Down)]), 10);
    }
    let verdict = aggregator.verdict("east", 10);
    assert_eq!(verdict.state, RegionState::Unknown, "{}", verdict.reason);
    assert_eq!(verdict.votes_unknown, 3);
    // The reported region is judged on what was reported.
    assert_eq!(aggregator.verdict("west", 10).state, RegionState::Down);
    assert!(aggregator.verdicts(10).contains_key("west"));
}

fn rule_aggregator(rule: RegionRule) -> Aggregator {
    let checks: BTreeSet<String> = ["app", "db", "cache"].iter().map(|s| s.to_string()).collect();
    let config = QuorumConfig {
        vantages_expected: vec!["v".into()],
        quorum: None,
        report_stale_ms: 1000,
        region_rules: [("east".to_string(), rule)].into_iter().collect(),
        region_checks: [("east".to_string(), checks)].into_iter().collect(),
    };
    Aggregator::new(config).expect("valid config")
}

fn judge(rule: RegionRule, statuses: &[(&str, CheckStatus)]) -> RegionState {
    let mut aggregator = rule_aggregator(rule);
    let results = statuses.iter().map(|(c, s)| result(c, "east", *s)).collect();
    aggregator.observe(report("v", 1, results), 0);
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

#[test]
fn replica_lag_is_the_highest_fresh_one() {
    let mut aggregator = three_vantages();
    for (vantage, lag) in [("controller", 100), ("agent-a", 2500)] {
        let mut result = result("app", "east", Up);
        result.replica_lag_ms = Some(lag);
        aggregator.observe(report(vantage, 1, vec![result]), 0);
    }
    assert_eq!(aggregator.verdict("east", 0).replica_lag_ms, Some(2500));
    assert_eq!(aggregator.verdict("east", 5000).replica_lag_ms, None);
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
            if aggregator.observe(report(&vantage, now, results.clone()), now) == Observed::Accepted {
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
