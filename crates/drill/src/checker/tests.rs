use super::*;
use common::rng::{Rng, seed_from_env};

fn write(key: &str, value: &str, region: &str) -> Action {
    Action::Write {
        key: key.into(),
        value: value.into(),
        region: region.into(),
    }
}

fn state(regions: &[(&str, &[(&str, &str)])]) -> FinalState {
    FinalState {
        regions: regions
            .iter()
            .map(|(region, items)| {
                (
                    region.to_string(),
                    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                )
            })
            .collect(),
    }
}

/// Writes in sequence, each acknowledged before the next starts.
fn sequential(writes: &[(&str, &str, &str)]) -> History {
    let mut history = History::new();
    for (i, (key, value, region)) in writes.iter().enumerate() {
        let t = i as u64 * 10;
        history.invoke(1, t, write(key, value, region)).expect("valid");
        history.complete(1, t + 5, Phase::Ok, None, None).expect("valid");
    }
    history
}

#[test]
fn present_superseded_and_lost() {
    let history = sequential(&[
        ("a", "a1", "r1"),
        ("a", "a2", "r1"),
        ("b", "b1", "r1"),
        ("c", "c1", "r1"),
    ]);
    let result = check(&history, &state(&[("r1", &[("a", "a2"), ("b", "b1")])]), None);
    assert_eq!(result.acknowledged, 4);
    assert_eq!(result.present, 2, "a2 and b1");
    assert_eq!(result.superseded, 1, "a1 was replaced by the newer a2");
    assert_eq!(result.lost, 1, "c1 is missing");
    assert_eq!(result.listed[0].value, "c1");
    assert_eq!(result.listed[0].found, None);
    assert!(!result.is_clean());
}

#[test]
fn an_older_value_coming_back_is_a_loss() {
    let history = sequential(&[("a", "a1", "r1"), ("a", "a2", "r1")]);
    let result = check(&history, &state(&[("r1", &[("a", "a1")])]), None);
    assert_eq!(result.lost, 1);
    assert_eq!(result.listed[0].value, "a2");
    assert_eq!(result.listed[0].found.as_deref(), Some("a1"));
    assert_eq!(result.present, 1);
}

#[test]
fn concurrent_writes_overwritten_by_lww_are_reported_and_isolated_ones_flagged() {
    let mut history = History::new();
    // r1 (isolated) and r2 write key k concurrently during the partition.
    history.invoke(1, 100, write("k", "from-r1", "r1")).expect("valid");
    history.invoke(2, 101, write("k", "from-r2", "r2")).expect("valid");
    history.complete(1, 102, Phase::Ok, None, None).expect("valid");
    history.complete(2, 103, Phase::Ok, None, None).expect("valid");
    history.invoke(1, 110, write("u", "only-r1", "r1")).expect("valid");
    history.complete(1, 111, Phase::Ok, None, None).expect("valid");
    let isolation = Isolation {
        region: "r1".into(),
        from_ms: 50,
        to_ms: 200,
    };
    let after = state(&[
        ("r1", &[("k", "from-r2"), ("u", "only-r1")]),
        ("r2", &[("k", "from-r2"), ("u", "only-r1")]),
    ]);
    let result = check(&history, &after, Some(&isolation));
    assert_eq!(result.overwritten, 1);
    assert_eq!(
        result.lost, 0,
        "last writer wins between concurrent writes is not a loss"
    );
    assert_eq!(result.isolated_acknowledged, 2);
    assert_eq!(result.isolated_overwritten, 1);
    assert_eq!(result.isolated_lost, 0);
    assert!(result.listed[0].isolated);
    assert_eq!(result.listed[0].class, WriteClass::Overwritten);
    assert!(result.is_clean());
}

#[test]
fn worst_region_decides_and_divergence_is_reported() {
    let history = sequential(&[("a", "a1", "r1"), ("b", "b1", "r2")]);
    let result = check(
        &history,
        &state(&[("r1", &[("a", "a1"), ("b", "b1")]), ("r2", &[("b", "b1")])]),
        None,
    );
    assert_eq!(result.lost, 1);
    assert_eq!(result.listed[0].judged_in, "r2");
    assert_eq!(result.divergent_keys, vec!["a".to_string()]);
}

#[test]
fn indeterminate_and_failed_writes() {
    let mut history = History::new();
    history.invoke(1, 0, write("a", "a1", "r1")).expect("valid");
    history
        .complete(1, 1, Phase::Info, None, Some("timeout".into()))
        .expect("valid");
    history.invoke(1, 2, write("b", "b1", "r1")).expect("valid");
    history
        .complete(1, 3, Phase::Fail, None, Some("400".into()))
        .expect("valid");
    history.invoke(2, 4, write("c", "c1", "r1")).expect("valid");
    // c1 never completes: the drill ended.
    let result = check(
        &history,
        &state(&[("r1", &[("a", "a1"), ("b", "b1"), ("x", "??")])]),
        None,
    );
    assert_eq!(result.acknowledged, 0);
    assert_eq!(result.indeterminate, 2);
    assert_eq!(result.indeterminate_present, 1);
    assert_eq!(
        result.failed_present, 1,
        "a refused write that is present is an anomaly"
    );
    assert_eq!(result.unknown_values, 1);
    assert!(!result.is_clean());
}

#[test]
fn no_regions_means_every_acknowledged_write_is_lost() {
    let history = sequential(&[("a", "a1", "r1")]);
    let result = check(&history, &FinalState::default(), None);
    assert_eq!(result.lost, 1);
}

/// A generated run: concurrent processes writing a few shared keys and unique keys; each write
/// takes effect at a point between its invocation and completion (or never), a single register
/// per key keeps the last write by that point, and some acknowledged writes are dropped.
struct Run {
    history: History,
    state: FinalState,
    dropped: BTreeSet<String>,
    /// Dropped acknowledged writes that were the only write to their key.
    dropped_sole: BTreeSet<String>,
    indeterminate_applied_final: usize,
}

fn generate(rng: &mut Rng) -> Run {
    struct Pending {
        process: u32,
        key: String,
        value: String,
        invoke_ms: u64,
        effect_ms: u64,
        complete_ms: u64,
        phase: Phase,
        applied: bool,
    }
    let processes = 1 + rng.below(5) as u32;
    let mut pending: Vec<Pending> = Vec::new();
    let mut seq = 0u64;
    for process in 0..processes {
        let mut t = rng.below(20);
        for _ in 0..rng.below(30) {
            seq += 1;
            let key = if rng.chance_per_mille(400) {
                format!("hot-{}", rng.below(3))
            } else {
                format!("unique-{seq}")
            };
            let duration = 1 + rng.below(30);
            let effect = t + rng.below(duration + 1);
            let (phase, applied) = match rng.below(10) {
                0 => (Phase::Fail, false),
                1 => (Phase::Info, rng.chance_per_mille(500)),
                _ => (Phase::Ok, true),
            };
            pending.push(Pending {
                process,
                key,
                value: format!("v{seq}"),
                invoke_ms: t,
                effect_ms: effect,
                complete_ms: t + duration,
                phase,
                applied,
            });
            t += duration + 1 + rng.below(5);
        }
    }
    // Events in time order; invocations before completions at equal times, which keeps the
    // recorded order consistent with the effect points.
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        events.push((p.invoke_ms, 0, i));
        events.push((p.complete_ms, 1, i));
    }
    events.sort();
    let mut history = History::new();
    for (at, kind, i) in events {
        let p = &pending[i];
        if kind == 0 {
            history
                .invoke(p.process, at, write(&p.key, &p.value, "r1"))
                .expect("generated history is valid");
        } else {
            history
                .complete(p.process, at, p.phase, None, None)
                .expect("generated history is valid");
        }
    }
    let mut dropped = BTreeSet::new();
    let mut dropped_sole = BTreeSet::new();
    for p in &pending {
        if p.phase == Phase::Ok && rng.chance_per_mille(100) {
            dropped.insert(p.value.clone());
            if pending.iter().filter(|q| q.key == p.key).count() == 1 {
                dropped_sole.insert(p.value.clone());
            }
        }
    }
    let mut register: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        if !p.applied || dropped.contains(&p.value) {
            continue;
        }
        let newer = register
            .get(&p.key)
            .is_none_or(|&(effect, j)| (p.effect_ms, i) > (effect, j));
        if newer {
            register.insert(p.key.clone(), (p.effect_ms, i));
        }
    }
    let table: BTreeMap<String, String> = register
        .iter()
        .map(|(key, &(_, i))| (key.clone(), pending[i].value.clone()))
        .collect();
    let indeterminate_applied_final = register
        .values()
        .filter(|&&(_, i)| pending[i].phase == Phase::Info)
        .count();
    let regions = if rng.chance_per_mille(500) {
        BTreeMap::from([("r1".to_string(), table)])
    } else {
        BTreeMap::from([("r1".to_string(), table.clone()), ("r2".to_string(), table)])
    };
    Run {
        history,
        state: FinalState { regions },
        dropped,
        dropped_sole,
        indeterminate_applied_final,
    }
}

#[test]
fn randomized_histories_lose_exactly_what_was_dropped() {
    let seed = seed_from_env("randomized_histories_lose_exactly_what_was_dropped");
    let mut rng = Rng::new(seed);
    for round in 0..500 {
        let run = generate(&mut rng);
        let result = check(&run.history, &run.state, None);
        let lost: BTreeSet<String> = result
            .listed
            .iter()
            .filter(|v| v.class == WriteClass::Lost)
            .map(|v| v.value.clone())
            .collect();
        assert!(
            lost.is_subset(&run.dropped),
            "seed {seed} round {round}: reported lost {lost:?} but only {:?} were dropped",
            run.dropped
        );
        assert!(
            run.dropped_sole.is_subset(&lost),
            "seed {seed} round {round}: dropped sole writes {:?} not all reported lost ({lost:?})",
            run.dropped_sole
        );
        assert_eq!(result.failed_present, 0, "seed {seed} round {round}");
        assert_eq!(result.unknown_values, 0, "seed {seed} round {round}");
        assert!(result.divergent_keys.is_empty(), "seed {seed} round {round}");
        assert_eq!(
            result.indeterminate_present, run.indeterminate_applied_final,
            "seed {seed} round {round}"
        );
        assert_eq!(
            result.present + result.superseded + result.overwritten + result.lost,
            result.acknowledged,
            "seed {seed} round {round}: every acknowledged write gets one class"
        );
        if run.dropped.is_empty() {
            assert_eq!(
                result.lost, 0,
                "seed {seed} round {round}: nothing dropped, nothing lost"
            );
        }
    }
}
