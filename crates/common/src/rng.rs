//! The one seeded generator (SplitMix64, Steele, Lea and Flood 2014) and the one seed variable.
//!
//! Everything random in Switchyard that must replay — DNS weighted answers, the fault proxy's
//! jitter and toxicity, the drill's workload, every randomized test and simulation — draws from
//! [`Rng`]: 64 bits of state, passes BigCrush, the same sequence on every platform. It is not
//! for secrets (tokens come from the operating system's generator).
//!
//! A randomized test takes its seed from [`seed_from_env`]: `SWITCHYARD_SEED` when set (to
//! replay a failure), else one derived from the clock, and prints it with the line that
//! replays it.

/// The variable that replays a randomized test or simulation with the seed it printed.
pub const SEED_ENV: &str = "SWITCHYARD_SEED";

/// SplitMix64: small, fast, seedable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub const fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (multiply-shift, no modulo bias worth caring about); 0 for a
    /// `bound` of 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `percent` / 100.
    pub fn chance_percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance_per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-spread, spread]`.
    pub fn symmetric(&mut self, spread: u64) -> i64 {
        if spread == 0 {
            return 0;
        }
        let width = spread.saturating_mul(2).saturating_add(1);
        let drawn = i64::try_from(self.below(width)).unwrap_or(i64::MAX);
        drawn.saturating_sub(i64::try_from(spread).unwrap_or(i64::MAX))
    }

    /// An independent generator derived from this one, e.g. one per connection and direction.
    pub fn fork(&mut self, salt: u64) -> Rng {
        Rng::new(self.next_u64() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// The seed for a randomized test or simulation named `what`: [`SEED_ENV`] when set, else one
/// derived from the clock. Printed (test harnesses show it on failure) with the line that
/// replays it. A value that is not a `u64` is refused with the fix, not ignored.
pub fn seed_from_env(what: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    seed_from_env_or(what, clock)
}

/// As [`seed_from_env`], but `default` when [`SEED_ENV`] is unset: for a test that runs a fixed
/// set of seeds in CI (so a run there is reproducible without the printout) and can still be
/// pointed at any other.
pub fn seed_from_env_or(what: &str, default: u64) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(seed) => seed,
            Err(_) => panic!("{SEED_ENV}={text:?} is not a whole number from 0 to 2^64-1: unset it or fix it"),
        },
        Err(_) => default,
    };
    println!("{what}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// The seeds a test that loops over a fixed set runs: only [`SEED_ENV`] when set (to replay the
/// one that failed, which the test names in its message), else `default`. Printed.
pub fn seeds_from_env(what: &str, default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(_) => vec![seed_from_env_or(what, *default.start())],
        Err(_) => {
            println!(
                "{what}: seeds {}..={} (replay one with {SEED_ENV}=N)",
                default.start(),
                default.end()
            );
            default.collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_the_reference_values() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        // SplitMix64's published first outputs for seed 0.
        let mut zero = Rng::new(0);
        assert_eq!(zero.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(zero.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut rng = Rng::new(1);
        let (mut low, mut high) = (false, false);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
            let value = rng.symmetric(3);
            assert!((-3..=3).contains(&value));
            low |= value == -3;
            high |= value == 3;
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(low && high);
        assert_eq!(rng.symmetric(0), 0);
        assert_eq!(rng.below(0), 0);
        assert!(!rng.chance_percent(0) && rng.chance_percent(100));
        assert!(!rng.chance_per_mille(0) && rng.chance_per_mille(1000));
    }

    #[test]
    fn forks_differ_from_their_parent_and_each_other() {
        let mut parent = Rng::new(9);
        let mut a = parent.fork(1);
        let mut b = parent.fork(2);
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
