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
//!   failover;
//! - one vantage point lying about replication lag neither fails back without a lag reading
//!   nor holds failback back while the others read none.

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

/// How the lying vantage point `v1` lies, in the lag simulations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lie {
    /// The checks read no lag; v1 adds `replica_lag_ms: 0` to its results (and floods its
    /// reports with results for made-up checks, stamped far in the future half of the time).
    ZeroLagWhereNoneIsRead,
    /// The checks read lag and the honest vantage points read 0; v1 reads 10^9.
    HugeLag,
}

const LIAR: usize = 1;
const FAILBACK_LAG_MAX_MS: u64 = 1_000;

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
    /// Whether and how `LIAR` lies about replication lag (then failback waits for the lag).
    lie: Option<Lie>,
    /// Automatic failback decisions.
    failbacks: Vec<u64>,
}

impl World {
    fn new(seed: u64, real_outages: bool) -> World {
        World::with_lie(seed, real_outages, None)
    }

    fn with_lie(seed: u64, real_outages: bool, lie: Option<Lie>) -> World {
        let checks: Vec<health::CheckSpec> = REGIONS
            .iter()
            .map(|r| {
                let kind = if lie == Some(Lie::HugeLag) {
                    health::ProbeKind::Sql {
                        driver: health::SqlDriver::Mysql,
                        address: "127.0.0.1:9".into(),
                        user: "probe".into(),
                        password: None,
                        database: None,
                        replica_lag: true,
                        max_replica_lag_ms: None,
                    }
                } else {
                    health::ProbeKind::Tcp {
                        address: "127.0.0.1:9".into(),
                    }
                };
                health::CheckSpec::new(format!("{r}-app"), *r, kind)
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
        config.failback_lag_max_ms = lie.map(|_| FAILBACK_LAG_MAX_MS);
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
            lie,
            failbacks: Vec::new(),
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
            // Stamped with the simulated clock (a report stamped long before it is a replay,
            // refused), and later than the vantage point's previous one.
            self.sent[v] = (self.sent[v] + 1).max(self.now);
            // Honest vantage points read lag only from checks that read it (0 here); the liar
            // reads whatever its lie is.
            let lag = match (self.lie, v == LIAR) {
                (None, _) | (Some(Lie::ZeroLagWhereNoneIsRead), false) => None,
                (Some(Lie::HugeLag), false) => Some(0),
                (Some(Lie::ZeroLagWhereNoneIsRead), true) => Some(0),
                (Some(Lie::HugeLag), true) => Some(1_000_000_000),
            };
            let mut results: Vec<CheckResult> = (0..3)
                .map(|r| {
                    let check = self.checks[v][r];
                    CheckResult {
                        check: format!("{}-app", REGIONS[r]),
                        region: REGIONS[r].into(),
                        status: if check.up { CheckStatus::Up } else { CheckStatus::Down },
                        since_ms: check.since_ms,
                        detail: String::new(),
                        latency_ms: None,
                        replica_lag_ms: lag,
                        position: None,
                    }
                })
                .collect();
            let mut sent_at_ms = self.sent[v];
            if self.lie == Some(Lie::ZeroLagWhereNoneIsRead) && v == LIAR && self.rng.chance_percent(50) {
                // Made-up results in place of its own, and a stamp far ahead of the clock.
                results.truncate(1);
                results.push(CheckResult {
                    check: "made-up".into(),
                    region: format!("r{}", self.rng.below(1_000)),
                    ..results[0].clone()
                });
                sent_at_ms = 1 << 63;
            }
            let report = Report {
                vantage: VANTAGES[v].into(),
                sent_at_ms,
                results,
            };
            self.aggregator.observe(report, self.now, self.now);
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
            if let Command::Record {
                note:
                    Note::Decision {
                        kind: TransitionKind::Failback,
                        automatic: true,
                        ..
                    },
                ..
            } = &command
            {
                self.failbacks.push(self.now);
            }
            if let Command::CancelRunbook { generation } = &command {
                // Superseded by a newer decision: dropped before it applied anything here.
                let running = self.running.take().expect("only a running runbook is cancelled");
                assert_eq!(running.0.generation, *generation);
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
            // As the server does: a known lag is passed on.
            if let Some(lag_ms) = verdicts.get(region).and_then(|v| v.replica_lag_ms) {
                self.feed(Event::ReplicationLag {
                    region: RegionId::new(region),
                    lag_ms,
                });
            }
        }
        self.feed(Event::Tick);
        self.finish_runbook();
    }
}

fn simulate(seed: u64, real_outages: bool, minutes: u64) -> World {
    run(World::new(seed, real_outages), minutes)
}

fn run(mut world: World, minutes: u64) -> World {
    for _ in 0..(minutes * 60_000 / STEP_MS) {
        world.step();
    }
    world
}

#[test]
fn a_lag_reading_from_one_vantage_point_never_allows_a_failback() {
    let seed = seed("a_lag_reading_from_one_vantage_point_never_allows_a_failback");
    let mut failovers = 0;
    for attempt in 0..4u64 {
        let seed = seed.wrapping_add(attempt);
        let world = run(World::with_lie(seed, true, Some(Lie::ZeroLagWhereNoneIsRead)), 10);
        // No check reads lag, so the lag is unknown and automatic failback waits for ever.
        assert!(
            world.failbacks.is_empty(),
            "seed {seed}: failback at {:?} on one vantage point's lag",
            world.failbacks
        );
        failovers += world.failovers.len();
    }
    assert!(failovers > 0, "no failover, so failback was never in question");
}

#[test]
fn one_vantage_point_reading_a_huge_lag_does_not_hold_failback_back() {
    // A fixed set of worlds (a clock seed made this fail in about one run in seven: some
    // worlds see no failover that recovers within their 10 minutes, whatever the liar says).
    let seeds = common::rng::seeds_from_env(
        "one_vantage_point_reading_a_huge_lag_does_not_hold_failback_back",
        1..=6,
    );
    let failbacks: usize = seeds
        .iter()
        .map(|seed| {
            run(World::with_lie(*seed, true, Some(Lie::HugeLag)), 10)
                .failbacks
                .len()
        })
        .sum();
    assert!(
        failbacks > 0,
        "seeds {seeds:?}: three vantage points read no lag, one reads 10^9, and no failback in 10 minutes of any world"
    );
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
