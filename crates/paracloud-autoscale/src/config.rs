//! What the application asks of its autoscaler: the SLO at the entry service and bounds per
//! service.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingConfig {
    /// The service clients call; the SLO is measured there, end to end.
    pub entry: String,
    pub slo: Slo,
    /// Every service the autoscaler may act on.
    pub services: BTreeMap<String, Bounds>,
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
