//! A deterministic simulation of the controller (aggregator + engine + runbooks), four vantage
//! points and three regions under outages, partitions and report loss, in virtual time.
//!
//! The seed is printed; `SWITCHYARD_SEED=N cargo test -p controller --test it sim` replays a
//! run exactly. Checked at every step:
//! - no failover away from a region unless a quorum of vantage points truly could not reach it
//!   (ground truth, not the reports) within the detection window;
//! - generations strictly increase;
//! - the engine's observed placement is always the target of the last runbook that succeeded;
//! - isolating a single vantage point (from the regions or from the controller) never causes a
//!   failover.

use std::collections::BTreeMap;

use common::rng::Rng;
use controller::engine::{
    Command, Engine, EngineConfig, Event, Generation, Note, Placement, RegionId, RegionSpec, Restored, RunbookOrder,
    RunbookOutcome, TransitionKind, Verdict,
};
use health::{Aggregator, CheckResult, CheckStatus, QuorumConfig, Report};

const STEP_MS: u64 = 100;
const REGIONS: [&str; 3] = ["r1", "r2", "r3"];
const VANTAGES: [&str; 4] = ["controller", "v1", "v2", "v3"];
const FALL: u32 = 3;
const RISE: u32 = 2;
const REPORT_STALE_MS: u64 = 3_000;

fn seed(test: &str) -> u64 {
    common::rng::seed_from_env(test)
}

/// One vantage point's rise/fall counter for one region.
#[derive(Clone, Copy)]
struct Check {
    up: bool,
    streak: u32,
    since_ms: u64,
}

struct World {
    rng: Rng,
    now: u64,
    /// Ground truth: region serving.
    region_up: [bool; 3],
    /// `cut[v][r]`: vantage v cannot reach region r.
    cut: [[bool; 3]; 4],
    /// Vantage v cannot reach the controller (its reports are lost).
    isolated: [bool; 4],
    checks: [[Check; 3]; 4],
    /// Last time vantage v truly could not reach region r.
    last_unreachable: [[Option<u64>; 3]; 4],
    sent: [u64; 4],
    aggregator: Aggregator,
    engine: Engine,
    running: Option<(RunbookOrder, u64)>,
    last_generation: Generation,
    applied: Option<Placement>,
    failovers: Vec<(u64, RunbookOrder)>,
    quorum: usize,
    /// Whether faults may take a whole region down (else only single-vantage faults).
    real_outages: bool,
}

impl World {
    fn new(seed: u64, real_outages: bool) -> World {
        let checks: Vec<health::CheckSpec> = REGIONS
            .iter()
            .map(|r| {
                health::CheckSpec::new(
                    format!("{r}-app"),
                    *r,
                    health::ProbeKind::Tcp {
                        address: "127.0.0.1:9".into(),
                    },
                )
            })
            .collect();
        let mut quorum_config = QuorumConfig::with_checks(VANTAGES.iter().map(|v| v.to_string()).collect(), &checks);
        quorum_config.report_stale_ms = REPORT_STALE_MS;
        let aggregator = Aggregator::new(quorum_config).expect("valid quorum");
        let quorum = aggregator.quorum();
        let mut config = EngineConfig::with_defaults(
            REGIONS
                .iter()
                .enumerate()
                .map(|(i, r)| RegionSpec {
                    id: RegionId::new(*r),
                    priority: i as u32 + 1,
                })
                .collect(),
        );
        config.failback_lag_max_ms = None;
        config.min_hold_ms = 20_000;
        config.stability_window_ms = 15_000;
        config.failovers_per_hour_max = 10;
        let engine = Engine::new(config, Restored::default()).expect("valid engine");
        let check = Check {
            up: true,
            streak: 0,
            since_ms: 0,
        };
        World {
            rng: Rng::new(seed),
            now: 0,
            region_up: [true; 3],
            cut: [[false; 3]; 4],
            isolated: [false; 4],
            checks: [[check; 3]; 4],
            last_unreachable: [[None; 3]; 4],
            sent: [0; 4],
            aggregator,
            engine,
            running: None,
            last_generation: Generation(0),
            applied: None,
            failovers: Vec::new(),
            quorum,
            real_outages,
        }
    }

    fn perturb(&mut self) {
        // Roughly one fault change every 2 s of virtual time.
        if !self.rng.chance_percent(5) {
            return;
        }
        match self.rng.below(4) {
            0 if self.real_outages => {
                let r = self.rng.below(3) as usize;
                self.region_up[r] = !self.region_up[r];
            }
            1 => {
                // Partition one vantage from one region.
                let v = self.rng.below(4) as usize;
                let r = self.rng.below(3) as usize;
                self.cut[v][r] = !self.cut[v][r];
            }
            2 => {
                let v = self.rng.below(4) as usize;
                self.isolated[v] = !self.isolated[v];
            }
            _ => {
                // Heal everything partition-like, sometimes.
                if self.rng.chance_percent(30) {
                    self.cut = [[false; 3]; 4];
                    self.isolated = [false; 4];
                }
            }
        }
        if !self.real_outages {
            // Only ever one vantage point misbehaves at a time.
            let bad: Vec<usize> = (0..4)
                .filter(|&v| self.isolated[v] || self.cut[v].iter().any(|&c| c))
                .collect();
            for &v in bad.iter().skip(1) {
                self.isolated[v] = false;
                self.cut[v] = [false; 3];
            }
        }
    }

    fn probe(&mut self) {
        for v in 0..4 {
            for r in 0..3 {
                let reachable = self.region_up[r] && !self.cut[v][r];
                if !reachable {
                    self.last_unreachable[v][r] = Some(self.now);
                }
                let check = &mut self.checks[v][r];
                if reachable == check.up {
                    check.streak = 0;
                } else {
                    check.streak += 1;
                    let needed = if check.up { FALL } else { RISE };
                    if check.streak >= needed {
                        check.up = reachable;
                        check.streak = 0;
                        check.since_ms = self.now;
                    }
                }
            }
        }
    }

    fn report(&mut self) {
        #[allow(clippy::needless_range_loop)]
        for v in 0..4 {
            // Reports every 500 ms, 10% lost, none while isolated from the controller.
            if !(self.now / STEP_MS + v as u64).is_multiple_of(5) || self.isolated[v] || self.rng.chance_percent(10) {
                continue;
            }
            self.sent[v] += 1;
            let results = (0..3)
                .map(|r| {
                    let check = self.checks[v][r];
                    CheckResult {
                        check: format!("{}-app", REGIONS[r]),
                        region: REGIONS[r].into(),
                        status: if check.up { CheckStatus::Up } else { CheckStatus::Down },
                        since_ms: check.since_ms,
                        detail: String::new(),
                        latency_ms: None,
                        replica_lag_ms: None,
                        position: None,
                    }
                })
                .collect();
            let report = Report {
                vantage: VANTAGES[v].into(),
                sent_at_ms: self.sent[v],
                results,
            };
            self.aggregator.observe(report, self.now);
        }
    }

    fn feed(&mut self, event: Event) {
        let commands = self.engine.step(self.now, event);
        for command in commands {
            if let Command::Record {
                note:
                    Note::Decision {
                        kind: TransitionKind::Failover,
                        from: Some(from),
                        ..
                    },
                ..
            } = &command
            {
                // An automatic failover decision away from `from`.
                self.check_quorum_saw_down(&from.active);
            }
            if let Command::RunRunbook(order) = command {
                assert!(
                    order.generation > self.last_generation,
                    "generation {} after {}",
                    order.generation,
                    self.last_generation
                );
                self.last_generation = order.generation;
                assert!(self.running.is_none(), "two runbooks at once");
                if order.kind == TransitionKind::Failover {
                    self.failovers.push((self.now, order.clone()));
                }
                let duration = 100 + self.rng.below(2_000);
                self.running = Some((order, self.now + duration));
            }
        }
        assert_eq!(
            self.engine.observed(),
            self.applied.as_ref(),
            "the engine claims a placement no runbook applied"
        );
    }

    /// The failover's source region was truly unreachable from a quorum of vantage points
    /// within the detection window (fall probes plus report staleness).
    fn check_quorum_saw_down(&self, from: &RegionId) {
        let r = REGIONS
            .iter()
            .position(|name| *name == from.as_str())
            .expect("known region");
        let window = REPORT_STALE_MS + u64::from(FALL + 1) * STEP_MS + 1_000;
        let saw = (0..4)
            .filter(|&v| self.last_unreachable[v][r].is_some_and(|at| self.now.saturating_sub(at) <= window))
            .count();
        assert!(
            saw >= self.quorum,
            "failover from {} at {} ms but only {saw} vantage point(s) could not reach it (quorum {})",
            from,
            self.now,
            self.quorum
        );
    }

    fn finish_runbook(&mut self) {
        let Some((order, at)) = self.running.clone() else {
            return;
        };
        if at > self.now {
            return;
        }
        self.running = None;
        let outcome = if self.rng.chance_percent(15) {
            RunbookOutcome::Failed {
                step: "dns".into(),
                error: "simulated failure".into(),
            }
        } else {
            self.applied = Some(order.to.clone());
            RunbookOutcome::Succeeded
        };
        self.feed(Event::RunbookFinished {
            generation: order.generation,
            outcome,
        });
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        self.perturb();
        self.probe();
        self.report();
        let verdicts: BTreeMap<String, health::RegionVerdict> = self.aggregator.verdicts(self.now);
        for region in REGIONS {
            let verdict = match verdicts.get(region).map(|v| v.state) {
                Some(health::RegionState::Up) => Verdict::Up,
                Some(health::RegionState::Down) => Verdict::Down,
                _ => Verdict::Unknown,
            };
            self.feed(Event::Verdict {
                region: RegionId::new(region),
                verdict,
                reason: String::new(),
            });
        }
        self.feed(Event::Tick);
        self.finish_runbook();
    }
}

fn simulate(seed: u64, real_outages: bool, minutes: u64) -> World {
    let mut world = World::new(seed, real_outages);
    for _ in 0..(minutes * 60_000 / STEP_MS) {
        world.step();
    }
    world
}

#[test]
fn simulation_with_outages_and_partitions_keeps_the_invariants() {
    let seed = seed("simulation_with_outages_and_partitions_keeps_the_invariants");
    let mut failovers = 0;
    for run in 0..4u64 {
        let world = simulate(seed.wrapping_add(run), true, 10);
        assert!(
            world.last_generation.0 > 0,
            "seed {}: never placed",
            seed.wrapping_add(run)
        );
        failovers += world.failovers.len();
    }
    assert!(
        failovers > 0,
        "real outages in 40 simulated minutes caused no failover at all"
    );
}

#[test]
fn a_single_misbehaving_vantage_point_never_causes_a_failover() {
    let seed = seed("a_single_misbehaving_vantage_point_never_causes_a_failover");
    for run in 0..4u64 {
        let world = simulate(seed.wrapping_add(run), false, 10);
        assert!(
            world.failovers.is_empty(),
            "seed {}: failovers {:?}",
            seed.wrapping_add(run),
            world.failovers
        );
        assert_eq!(
            world.applied.as_ref().map(|p| p.active.as_str()),
            Some("r1"),
            "stays on the home region"
        );
    }
}

#[test]
fn simulation_replays_exactly_from_its_seed() {
    let seed = seed("simulation_replays_exactly_from_its_seed");
    let a = simulate(seed, true, 3);
    let b = simulate(seed, true, 3);
    let describe = |w: &World| {
        (
            w.last_generation,
            w.applied.clone(),
            w.failovers
                .iter()
                .map(|(at, o)| (*at, o.generation))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(describe(&a), describe(&b));
}
