//! What the platform under the application adds to its changes, as plain data: how long a new
//! instance takes beyond the application's own start, and how long a CPU change takes to apply.
//!
//! Two profiles:
//!
//! - `local`, the default: Paracloud on one host. An instance is ready after the service's own
//!   `startup` (sandbox to port ready, as the runtime measures it) and a CPU change is a cgroup
//!   write, applied at once.
//! - `cluster`: a Kubernetes cluster's latencies (simulated; no cluster is involved). A new pod
//!   first waits for the scheduler, the sandbox and the container start; then the application
//!   starts (the service's own `startup`); then the kubelet's readiness probe has to see it ready
//!   before it gets requests. A CPU change in place (the pod's `resize` subresource) takes effect
//!   when the kubelet applies it, not when it is asked for.
//!
//! The cluster's figures and where they come from:
//!
//! - Pod start (creation to containers started): log-normal with a median of 2.5 s and a p99 of
//!   5 s. Kubernetes' SIG Scalability SLO for pod start-up latency is that 99% of stateless pods
//!   with pre-pulled images (no image pull, no init containers) start within 5 s, measured from
//!   creation to containers started and seen by a watch, per cluster-day
//!   (kubernetes/community, `sig-scalability/slos/pod_startup_latency.md`): the profile is a
//!   cluster that just meets its SLO. The median is an assumption (half the bound).
//! - Readiness: a readiness probe every 5 s (`periodSeconds: 5`; Kubernetes' default is 10). The
//!   kubelet's probe worker ticks from when it was created for the pod, not from when the
//!   container came up (an extra probe as soon as the kubelet sees the container running finds
//!   an application still starting), so the wait from the application being ready to the probe
//!   that sees it is taken as uniform over one period (mean 2.5 s).
//! - Together: a mean of about 5.1 s from creation to ready beyond the application's own start, a
//!   p99 of about 8.8 s (the shop starts in 70 ms on top of it).
//! - In-place resize: applied after a delay uniform between 0.5 and 1.5 s. The kubelet applies a
//!   resize when it syncs the pod after the change (an event from its watch on the API server,
//!   then the container runtime's `UpdateContainerResources`), so on the order of a second; the
//!   spread is an assumption. Each instance gets its own delay, as each pod has its own sync.
//!
//! Draws come from the simulation's seeded random streams, so a profile changes nothing about
//! determinism: the same seed and profile give the same outcome.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A platform's latencies for starting instances and changing their CPU. Times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// The profile's name, for reports.
    pub name: String,
    /// Time from an instance's creation to its application starting (scheduling, sandbox,
    /// container start): log-normal with this median and p99; a median of 0 means none.
    pub schedule_median_ms: f64,
    pub schedule_p99_ms: f64,
    /// The readiness probe's period: after its application has started, an instance waits a
    /// uniform share of one period for the probe that sees it ready; 0 means it is ready at once.
    pub readiness_period_ms: f64,
    /// A CPU change reaches a running instance after a delay uniform in this range; 0 and 0 mean
    /// at once.
    pub resize_min_ms: f64,
    pub resize_max_ms: f64,
}

impl Default for Platform {
    fn default() -> Self {
        Self::local()
    }
}

impl Platform {
    /// Paracloud on one host: nothing beyond the service's own start, CPU changes at once.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            schedule_median_ms: 0.0,
            schedule_p99_ms: 0.0,
            readiness_period_ms: 0.0,
            resize_min_ms: 0.0,
            resize_max_ms: 0.0,
        }
    }

    /// A Kubernetes cluster's latencies (see the module documentation for their sources).
    pub fn cluster() -> Self {
        Self {
            name: "cluster".into(),
            schedule_median_ms: 2500.0,
            schedule_p99_ms: 5000.0,
            readiness_period_ms: 5000.0,
            resize_min_ms: 500.0,
            resize_max_ms: 1500.0,
        }
    }

    /// The profiles by name.
    pub const NAMES: [&'static str; 2] = ["local", "cluster"];

    /// Whether CPU changes wait for anything.
    pub fn resize_delayed(&self) -> bool {
        self.resize_max_ms > 0.0
    }

    /// The log-normal's parameters (μ, σ) of the pod start, in ln(ms); `None` without one.
    fn schedule_lognormal(&self) -> Option<(f64, f64)> {
        if self.schedule_median_ms <= 0.0 {
            return None;
        }
        let mu = self.schedule_median_ms.ln();
        // z of the 99th percentile of the standard normal.
        const Z99: f64 = 2.326_347_874;
        let sigma = (self.schedule_p99_ms.max(self.schedule_median_ms).ln() - mu) / Z99;
        Some((mu, sigma))
    }

    /// The mean time the platform adds to an instance's start, in milliseconds.
    pub fn mean_start_overhead_ms(&self) -> f64 {
        let schedule = self
            .schedule_lognormal()
            .map_or(0.0, |(mu, sigma)| (mu + sigma * sigma / 2.0).exp());
        schedule + self.readiness_period_ms / 2.0
    }

    /// The time the platform adds to one instance's start, in milliseconds, from uniform draws
    /// in [0, 1): `u1` and `u2` for the pod start, `u3` for the probe's phase.
    pub fn start_overhead_ms(&self, u1: f64, u2: f64, u3: f64) -> f64 {
        let schedule = self.schedule_lognormal().map_or(0.0, |(mu, sigma)| {
            // Box–Muller; 1 - u1 is in (0, 1], so its logarithm is finite.
            let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mu + sigma * z).exp()
        });
        schedule + self.readiness_period_ms * u3
    }

    /// How many uniform draws [`Platform::start_overhead_ms`] needs: none for a platform that
    /// adds nothing, so that the local profile draws exactly what the simulator always drew.
    pub fn start_draws(&self) -> usize {
        if self.schedule_median_ms > 0.0 || self.readiness_period_ms > 0.0 {
            3
        } else {
            0
        }
    }

    /// The delay of one instance's CPU change, in milliseconds, from a uniform draw in [0, 1).
    pub fn resize_delay_ms(&self, u: f64) -> f64 {
        self.resize_min_ms + (self.resize_max_ms - self.resize_min_ms).max(0.0) * u
    }
}

/// An unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPlatform(pub String);

impl fmt::Display for UnknownPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no platform profile named {:?} (known: {})",
            self.0,
            Platform::NAMES.join(", ")
        )
    }
}

impl std::error::Error for UnknownPlatform {}

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::local()),
            "cluster" => Ok(Self::cluster()),
            other => Err(UnknownPlatform(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of uniforms for the tests (a fixed LCG; no randomness needed).
    fn uniforms(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    #[test]
    fn local_adds_nothing_and_draws_nothing() {
        let local = Platform::local();
        assert_eq!(local.start_draws(), 0);
        assert_eq!(local.start_overhead_ms(0.3, 0.7, 0.9), 0.0);
        assert_eq!(local.mean_start_overhead_ms(), 0.0);
        assert!(!local.resize_delayed());
        assert_eq!(local.resize_delay_ms(0.5), 0.0);
        assert_eq!(Platform::default(), local);
    }

    #[test]
    fn cluster_pod_start_meets_the_slo_at_its_bound() {
        let cluster = Platform::cluster();
        let u = uniforms(3 * 40_000);
        let mut schedule: Vec<f64> = u
            .chunks(3)
            .map(|c| cluster.start_overhead_ms(c[0], c[1], 0.0))
            .collect();
        schedule.sort_by(f64::total_cmp);
        let q = |p: f64| schedule[(p * (schedule.len() - 1) as f64) as usize];
        assert!((q(0.5) - 2500.0).abs() < 100.0, "median {}", q(0.5));
        assert!((q(0.99) - 5000.0).abs() < 250.0, "p99 {}", q(0.99));
        assert!(schedule.iter().all(|&s| s > 0.0));
    }

    #[test]
    fn cluster_start_is_about_five_seconds_with_a_tail() {
        let cluster = Platform::cluster();
        let u = uniforms(3 * 40_000);
        let starts: Vec<f64> = u
            .chunks(3)
            .map(|c| cluster.start_overhead_ms(c[0], c[1], c[2]))
            .collect();
        let mean = starts.iter().sum::<f64>() / starts.len() as f64;
        let expected = cluster.mean_start_overhead_ms();
        assert!((expected - 5100.0).abs() < 100.0, "{expected}");
        assert!((mean - expected).abs() < 60.0, "{mean} vs {expected}");
        let mut sorted = starts.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[(0.99 * (sorted.len() - 1) as f64) as usize];
        assert!(p99 > 8300.0 && p99 < 9300.0, "p99 {p99}");
    }

    #[test]
    fn cluster_resize_takes_about_a_second() {
        let cluster = Platform::cluster();
        assert!(cluster.resize_delayed());
        assert_eq!(cluster.resize_delay_ms(0.0), 500.0);
        assert_eq!(cluster.resize_delay_ms(0.5), 1000.0);
        assert!(cluster.resize_delay_ms(0.999_999) < 1500.0);
    }

    #[test]
    fn profiles_parse_by_name() {
        assert_eq!("local".parse::<Platform>(), Ok(Platform::local()));
        assert_eq!("cluster".parse::<Platform>(), Ok(Platform::cluster()));
        let err = "k8s".parse::<Platform>().unwrap_err();
        assert!(err.to_string().contains("local, cluster"), "{err}");
        for name in Platform::NAMES {
            assert_eq!(
                name.parse::<Platform>().map(|p| p.name),
                Ok(name.to_owned())
            );
        }
    }
}
