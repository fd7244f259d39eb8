//! Order statistics of measured runs and request latencies.

/// The median of sorted values (the mean of the two middle ones for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The `p`-th percentile (0..=100) of sorted values, interpolating linearly between the two
/// closest ranks (numpy's default `linear` method). `sorted` must not be empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (rank - lo as f64) * (sorted[hi] - sorted[lo])
}

/// `values` sorted ascending.
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_runs() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile(np.arange(1, 11), [0, 50, 90, 99, 100]) = 1, 5.5, 9.1, 9.91, 10
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 50.0), 5.5));
        assert!(close(percentile(&v, 90.0), 9.1));
        assert!(close(percentile(&v, 99.0), 9.91));
        assert!(close(percentile(&v, 100.0), 10.0));
        // One value: every percentile is that value; numpy.percentile([3, 7], 25) = 4.
        assert_eq!(percentile(&[4.0], 99.0), 4.0);
        assert!(close(percentile(&[3.0, 7.0], 25.0), 4.0));
    }

    #[test]
    fn sorted_orders_ascending() {
        assert_eq!(sorted(&[3.0, 1.0, 2.0]), vec![1.0, 2.0, 3.0]);
    }
}
