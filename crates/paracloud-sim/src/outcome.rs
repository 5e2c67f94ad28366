//! What a simulation run measured: SLO-violation seconds, cost, latency, drops, and a timeline.

use serde::{Deserialize, Serialize};

/// The results of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The policy's name.
    pub policy: String,
    pub seed: u64,
    /// The services, in the order of the per-service columns of `timeline`.
    pub services: Vec<String>,
    /// Seconds simulated (the trace, and the time given to finish what was in flight).
    pub seconds: u64,
    /// Seconds (by the arrival second of entry requests) whose SLO percentile of end-to-end
    /// latency, counting dropped and unfinished requests as infinitely slow, exceeds the SLO.
    /// Seconds without arrivals are not violations.
    pub slo_violation_seconds: u64,
    /// Seconds with at least one arrival.
    pub seconds_with_arrivals: u64,
    /// Integral of existing instances (starting and draining included) over time, all services.
    pub instance_seconds: f64,
    /// Integral of allocated CPU (instances times CPU per instance) over time, in core-seconds.
    pub cpu_seconds: f64,
    /// Over all answered entry requests (within 1%).
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Exact mean of all answered entry requests.
    pub mean_ms: f64,
    /// Entry requests that arrived.
    pub requests: u64,
    /// Entry requests answered.
    pub answered: u64,
    /// Entry requests refused, given up on, or failed by a dropped call.
    pub dropped: u64,
    /// Entry requests still in flight when the run ended.
    pub in_flight: u64,
    /// Policy decisions that changed the instances or the CPU of a service.
    pub actions: u64,
    /// One row per simulated second (empty unless asked for).
    pub timeline: Vec<Second>,
    /// Every change to a service, with its reason, in time order (policy decisions that changed
    /// nothing are left out).
    pub decisions: Vec<DecisionRecord>,
}

/// The figures policies are compared on, without the timeline and decisions: what
/// `paracloud sim` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub policy: String,
    pub seed: u64,
    pub requests: u64,
    pub slo_violation_seconds: u64,
    pub instance_seconds: f64,
    pub cpu_seconds: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub dropped: u64,
    pub actions: u64,
}

impl Outcome {
    pub fn summary(&self) -> Summary {
        Summary {
            policy: self.policy.clone(),
            seed: self.seed,
            requests: self.requests,
            slo_violation_seconds: self.slo_violation_seconds,
            instance_seconds: self.instance_seconds,
            cpu_seconds: self.cpu_seconds,
            p95_ms: self.p95_ms,
            p99_ms: self.p99_ms,
            dropped: self.dropped,
            actions: self.actions,
        }
    }
}

/// One second of the run, observed at its end (`t` seconds after the start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub t: u64,
    /// Entry requests that arrived in this second.
    pub arrivals: u64,
    /// Entry requests answered in this second.
    pub answered: u64,
    /// Entry requests dropped in this second.
    pub dropped: u64,
    /// p95 of the entry requests answered in this second (0 when none was).
    pub p95_ms: f64,
    /// Whether the requests that arrived in this second missed the SLO (see `Outcome`).
    pub violation: bool,
    /// Per service (in `Outcome::services` order): existing instances, ready ones, CPU per
    /// instance.
    pub instances: Vec<u32>,
    pub ready: Vec<u32>,
    pub cpu: Vec<f64>,
}

/// A change to a service: by the policy, or by the platform when a request woke a service at zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at_ms: u64,
    pub service: String,
    /// Instances wanted and CPU per instance, after clamping to the bounds.
    pub instances: u32,
    pub cpu: f64,
    pub reason: String,
}

/// Latencies in log-spaced buckets of 1% width, from 1 µs to about 11 days: a few kilobytes
/// whatever the number of samples, quantiles within 0.5%.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u32>,
    /// Touched range of `counts`, to clear and scan only that.
    low: usize,
    high: usize,
    total: u64,
    sum_us: f64,
}

const GROWTH: f64 = 1.01;
const BUCKETS: usize = 3000;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            low: BUCKETS,
            high: 0,
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
        let us = us as f64;
        let i = Self::index(us);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.low = self.low.min(i);
        self.high = self.high.max(i);
        self.total += 1;
        self.sum_us += us;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.low <= other.high {
            for i in other.low..=other.high {
                self.counts[i] = self.counts[i].saturating_add(other.counts[i]);
            }
            self.low = self.low.min(other.low);
            self.high = self.high.max(other.high);
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
        let mut seen = 0u64;
        for i in self.low..=self.high {
            seen += u64::from(self.counts[i]);
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

    pub fn clear(&mut self) {
        if self.low <= self.high {
            self.counts[self.low..=self.high].fill(0);
        }
        self.low = BUCKETS;
        self.high = 0;
        self.total = 0;
        self.sum_us = 0.0;
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
        for (q, want) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = h.quantile_ms(q);
            assert!((got / want - 1.0).abs() < 0.01, "q{q}: {got} vs {want}");
        }
        assert!((h.mean_ms() - 500.5).abs() < 1e-9);
        let mut other = Histogram::default();
        other.record(5_000_000);
        let mut merged = h.clone();
        merged.merge(&other);
        assert_eq!(merged.count(), 1001);
        assert!((merged.quantile_ms(1.0) / 5000.0 - 1.0).abs() < 0.01);
        assert!((merged.quantile_ms(0.5) / 500.0 - 1.0).abs() < 0.01);
        h.clear();
        assert_eq!((h.count(), h.quantile_ms(0.5)), (0, 0.0));
        h.record(0);
        assert_eq!(h.quantile_ms(0.99), 0.001);
    }
}
