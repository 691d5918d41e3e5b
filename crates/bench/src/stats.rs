//! Percentiles over recorded samples.

/// The `q`-quantile (0.0..=1.0) of `samples` by the nearest-rank method; `None` when empty.
pub fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.saturating_sub(1).min(samples.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), Some(50.0));
        assert_eq!(quantile(&mut samples, 0.99), Some(99.0));
        assert_eq!(quantile(&mut samples, 1.0), Some(100.0));
        assert_eq!(quantile(&mut samples, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    proptest! {
        #[test]
        fn quantile_is_a_sample_and_monotone(mut samples in proptest::collection::vec(0.0f64..1e6, 1..200), a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let q_low = quantile(&mut samples, low).expect("non-empty");
            let q_high = quantile(&mut samples, high).expect("non-empty");
            prop_assert!(samples.contains(&q_low));
            prop_assert!(q_low <= q_high);
        }
    }
}
