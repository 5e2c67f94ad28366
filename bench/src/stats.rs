//! Order statistics of timing samples (pure).

use serde::Serialize;

/// Median, 90th percentile and range of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// None when there are no samples.
    pub fn of(samples_ms: &[f64]) -> Option<Self> {
        if samples_ms.is_empty() {
            return None;
        }
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            runs: sorted.len(),
            median_ms: median(&sorted),
            p90_ms: nearest_rank(&sorted, 0.9),
            min_ms: sorted[0],
            max_ms: sorted[sorted.len() - 1],
        })
    }
}

/// The middle value, or the mean of the two middle values; `sorted` is not empty.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The nearest-rank percentile: the smallest sample with at least `p` of the samples at or below it.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn odd_and_even_medians() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).unwrap().median_ms, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median_ms, 2.5);
    }

    #[test]
    fn p90_is_the_nearest_rank() {
        let samples: Vec<f64> = (1..=30).map(f64::from).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.p90_ms, 27.0);
        assert_eq!((s.min_ms, s.max_ms, s.runs), (1.0, 30.0, 30));
        assert_eq!(Summary::of(&[5.0]).unwrap().p90_ms, 5.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Summary::of(&ten).unwrap().p90_ms, 9.0);
    }
}
