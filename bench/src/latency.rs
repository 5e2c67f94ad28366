//! Latencies of a load run: a log-bucketed histogram (1% wide buckets, as the simulator's), and
//! the figures of one arrival second against an SLO (pure).

use serde::Serialize;

const GROWTH: f64 = 1.01;
/// From 1 µs to about 11 days.
const BUCKETS: usize = 3000;

/// Latencies in microseconds, in buckets 1% wide: quantiles within 0.5%.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_us: 0.0,
        }
    }
}

impl Histogram {
    fn index(us: f64) -> usize {
        if us <= 1.0 {
            return 0;
        }
        ((us.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us as f64)] += 1;
        self.total += 1;
        self.sum_us += us as f64;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn mean_ms(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_us / self.total as f64 / 1000.0
        }
    }

    /// The `q` quantile (nearest rank) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64 - 1e-9).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                // The bucket's geometric middle (bucket 0 holds everything up to 1 µs).
                let us = if i == 0 {
                    1.0
                } else {
                    GROWTH.powf(i as f64 + 0.5)
                };
                return us / 1000.0;
            }
        }
        0.0
    }
}

/// The requests that arrived in one second (by their scheduled time) and how they ended.
#[derive(Debug, Clone, Default)]
pub struct Second {
    pub arrivals: u64,
    /// Latencies of the answered ones.
    pub answered: Histogram,
    /// Failed: refused, an error status, or no answer within the timeout.
    pub failed: u64,
    /// Answered ones slower than the SLO (counted exactly, not from the histogram).
    pub slow: u64,
}

/// One second of the timeline, as printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondReport {
    pub t: u64,
    pub arrivals: u64,
    pub answered: u64,
    pub dropped: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub violation: bool,
}

impl Second {
    /// Whether these requests missed the SLO: its percentile of their latency, failures counted
    /// as infinitely slow, is above the SLO latency. A second without arrivals misses nothing.
    pub fn violates(&self, percentile: f64) -> bool {
        let n = self.arrivals;
        if n == 0 {
            return false;
        }
        // The percentile (nearest rank) is above the SLO exactly when fewer than its rank of
        // requests were answered within it.
        let rank = ((percentile * n as f64 - 1e-9).ceil() as u64).clamp(1, n);
        let within = n.saturating_sub(self.failed + self.slow);
        within < rank
    }

    pub fn report(&self, t: u64, percentile: f64) -> SecondReport {
        SecondReport {
            t,
            arrivals: self.arrivals,
            answered: self.answered.count(),
            dropped: self.failed,
            p50_ms: self.answered.quantile_ms(0.5),
            p95_ms: self.answered.quantile_ms(0.95),
            p99_ms: self.answered.quantile_ms(0.99),
            violation: self.violates(percentile),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1000);
        }
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q);
            assert!((got / want - 1.0).abs() < 0.01, "q{q}: {got} vs {want}");
        }
        assert!((h.mean_ms() - 500.5).abs() < 1e-9);
        let mut other = Histogram::default();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert!((h.quantile_ms(1.0) / 5000.0 - 1.0).abs() < 0.01);
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn a_second_violates_when_its_percentile_with_failures_is_over() {
        let second = |arrivals, failed, slow| Second {
            arrivals,
            failed,
            slow,
            ..Second::default()
        };
        assert!(!second(0, 0, 0).violates(0.95), "no arrivals, no violation");
        assert!(
            !second(100, 5, 0).violates(0.95),
            "p95 is the 95th: answered in time"
        );
        assert!(second(100, 5, 1).violates(0.95), "the 95th is slow");
        assert!(
            second(100, 6, 0).violates(0.95),
            "failures are infinitely slow"
        );
        assert!(second(1, 0, 1).violates(0.95));
        assert!(
            !second(20, 0, 1).violates(0.95),
            "19 of 20 within: p95 is the 19th"
        );
        assert!(second(20, 1, 1).violates(0.95));
        assert!(!second(100, 1, 0).violates(0.99));
        assert!(second(100, 1, 1).violates(0.99));
    }
}
