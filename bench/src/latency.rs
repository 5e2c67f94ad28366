//! Latencies of a load run: the figures of one arrival second against an SLO, kept in the
//! simulator's histogram so live and simulated quantiles are read the same way (pure).

pub use paracloud_sim::Histogram;
use serde::Serialize;

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
