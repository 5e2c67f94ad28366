//! What the application asks of its autoscaler: the SLO at the entry service and bounds per
//! service.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Decision, Millis};

/// CPU per instance is set in hundredths of a core (the smallest CFS quota is 1 ms per 100 ms);
/// a smaller difference is no change.
const CPU_STEPS_PER_CORE: f64 = 100.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingConfig {
    /// The service clients call; the SLO is measured there, end to end.
    pub entry: String,
    pub slo: Slo,
    /// Every service the autoscaler may act on.
    pub services: BTreeMap<String, Bounds>,
    /// The cores the services may hold together, where they share a machine (its cores);
    /// `None` where they do not (a cluster, the simulator). The model policy plans within it;
    /// HPA and KPA, which scale instances of a fixed size, do not know of it.
    #[serde(default)]
    pub cpu_budget: Option<f64>,
}

/// A response-time objective: the `percentile` of end-to-end latency stays under `latency_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub latency_ms: f64,
    /// As a fraction: 0.95 for p95.
    pub percentile: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            latency_ms: 200.0,
            percentile: 0.95,
        }
    }
}

/// Limits for one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Fewest instances; 0 allows scaling to zero (after `idle_ms` without requests).
    pub min_instances: u32,
    pub max_instances: u32,
    /// CPU per instance, in cores, as the manifest asks for it: the request that HPA measures
    /// utilisation against and the size that policies without vertical scaling keep.
    pub cpu: f64,
    /// The range of CPU per instance a policy that scales vertically may set.
    pub cpu_min: f64,
    pub cpu_max: f64,
    /// How long without a request before a service with `min_instances == 0` goes to zero.
    pub idle_ms: Millis,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            min_instances: 1,
            max_instances: 20,
            cpu: 1.0,
            cpu_min: 0.25,
            cpu_max: 2.0,
            idle_ms: 30_000,
        }
    }
}

impl ScalingConfig {
    pub fn bounds(&self, service: &str) -> Bounds {
        self.services.get(service).cloned().unwrap_or_default()
    }
}

/// What a service has when a decision comes: its instances wanted and CPU per instance
/// (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Current {
    pub replicas: u32,
    pub cpu: Option<f64>,
}

/// What a decision changes once kept within its service's bounds: instances wanted (from, to)
/// and CPU per instance in cores (from, to).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bounded {
    pub replicas: Option<(u32, u32)>,
    pub cpu: Option<(Option<f64>, f64)>,
}

impl Bounded {
    pub fn is_empty(&self) -> bool {
        self.replicas.is_none() && self.cpu.is_none()
    }
}

impl Bounds {
    /// `decision` kept within these bounds and the `cores` an instance can use, measured
    /// against what the service has now. A service with requests under way (`busy`) is never
    /// taken to zero: it would have to be started again at once. CPU moves in hundredths of a
    /// core, and an unlimited service counts as its nominal size.
    pub fn bound(&self, decision: &Decision, current: Current, cores: f64, busy: bool) -> Bounded {
        // Bounds come checked from the manifest; `max` then `min` never panics as `clamp` would.
        let mut instances = decision
            .instances
            .min(self.max_instances)
            .max(self.min_instances);
        if instances == 0 && busy {
            instances = current.replicas;
        }
        let replicas = (instances != current.replicas).then_some((current.replicas, instances));
        let cpu = decision.cpu.is_finite().then(|| {
            // More CPU than an instance can have is never used (nor accepted).
            let wanted = decision.cpu.min(self.cpu_max).min(cores).max(self.cpu_min);
            (wanted * CPU_STEPS_PER_CORE).round() / CPU_STEPS_PER_CORE
        });
        let cpu = cpu
            .filter(|wanted| {
                (wanted - current.cpu.unwrap_or(self.cpu)).abs() * CPU_STEPS_PER_CORE >= 0.5
            })
            .map(|wanted| (current.cpu, wanted));
        Bounded { replicas, cpu }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(instances: u32, cpu: f64) -> Decision {
        Decision {
            service: "api".into(),
            instances,
            cpu,
            reason: "test".into(),
        }
    }

    const NOW: Current = Current {
        replicas: 2,
        cpu: Some(0.5),
    };

    #[test]
    fn a_decision_is_kept_within_the_bounds_and_the_cores() {
        let bounds = Bounds {
            min_instances: 1,
            max_instances: 4,
            cpu: 0.5,
            cpu_min: 0.25,
            cpu_max: 2.0,
            idle_ms: 0,
        };
        let many = bounds.bound(&decision(9, 8.0), NOW, 1.5, false);
        assert_eq!(many.replicas, Some((2, 4)));
        assert_eq!(many.cpu, Some((Some(0.5), 1.5)));
        let none = bounds.bound(&decision(0, 0.0), NOW, 4.0, false);
        assert_eq!(none.replicas, Some((2, 1)));
        assert_eq!(none.cpu, Some((Some(0.5), 0.25)));
    }

    #[test]
    fn what_the_service_has_already_is_no_change() {
        let bounds = Bounds::default();
        assert!(bounds
            .bound(&decision(2, 0.504), NOW, 4.0, false)
            .is_empty());
        assert!(bounds
            .bound(&decision(2, f64::NAN), NOW, 4.0, false)
            .is_empty());
        let unlimited = Current {
            replicas: 2,
            cpu: None,
        };
        // Unlimited counts as the nominal size (1 core by default).
        assert!(bounds
            .bound(&decision(2, 1.0), unlimited, 4.0, false)
            .is_empty());
        assert_eq!(
            bounds.bound(&decision(2, 0.5), unlimited, 4.0, false).cpu,
            Some((None, 0.5))
        );
    }

    #[test]
    fn a_busy_service_is_not_taken_to_zero() {
        let bounds = Bounds {
            min_instances: 0,
            ..Bounds::default()
        };
        assert_eq!(
            bounds
                .bound(&decision(0, f64::NAN), NOW, 4.0, false)
                .replicas,
            Some((2, 0))
        );
        assert!(bounds
            .bound(&decision(0, f64::NAN), NOW, 4.0, true)
            .is_empty());
    }
}
