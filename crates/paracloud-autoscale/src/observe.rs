//! What a policy sees: one observation per second of every service, kept in a bounded history.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::Millis;

/// The caller of requests that come from outside the application (the data plane's name).
pub const EXTERNAL: &str = "external";

/// One second of the application, observed at its end (`at`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub at: Millis,
    pub services: BTreeMap<String, ServiceSample>,
    /// Calls made in this second, per (caller, callee); the caller is [`EXTERNAL`] for requests
    /// from outside the application.
    pub calls: Vec<Call>,
}

/// One service during one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSample {
    /// Requests that arrived (including those held while no instance was ready).
    pub arrivals: u64,
    /// Requests answered.
    pub completions: u64,
    /// Requests refused or given up on (no instance in time, queue full).
    pub dropped: u64,
    /// Response time of the requests answered in this second, as their callers saw it (so it
    /// includes the time spent in the services this one calls).
    pub latency: LatencySummary,
    /// In-flight requests averaged over the second (what Knative's queue-proxy reports).
    pub concurrency: f64,
    /// In-flight requests at the end of the second.
    pub in_flight: u32,
    /// Every instance that exists and is not on its way out: starting or ready. Instances being
    /// drained are left out (as Kubernetes leaves terminating pods out of a workload's count).
    pub instances: Vec<InstanceSample>,
}

/// Response-time figures of one second, in milliseconds; all zero when nothing was answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// One instance during one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    pub id: String,
    /// Passing its readiness check and receiving traffic.
    pub ready: bool,
    /// Time since the instance was created.
    pub age_ms: Millis,
    /// Cores used, averaged over the second (CPU-seconds per second).
    pub cpu_used: f64,
    /// Its CPU limit in cores (the cgroup quota).
    pub cpu_limit: f64,
    /// Requests it answered in this second.
    pub completions: u64,
    /// Its in-flight requests averaged over the second.
    pub concurrency: f64,
    /// What the instance said about itself through PaCI, when it did lately.
    #[serde(default)]
    pub reported: Option<Reported>,
}

/// A load report older than this is no longer used, on one machine and in a cluster.
pub const REPORT_TTL_MS: crate::Millis = 5_000;

/// An instance's own account of its load (PaCI's load report); what it leaves out is unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub in_flight: Option<u32>,
    pub queue: Option<u32>,
    /// Requests per second it can serve with its current CPU.
    pub capacity: Option<f64>,
}

/// What the platform knows of one instance during an interval, besides the data plane's
/// figures: on one machine its state and cgroups, in a cluster its pod and metrics-server.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceFacts {
    pub service: String,
    /// Its name, the data plane's backend id: `api.2` on one machine, the pod's name in a cluster.
    pub name: String,
    pub ready: bool,
    pub age_ms: Millis,
    /// Cores used, averaged over the interval.
    pub cpu_used: f64,
    /// Its CPU limit in cores (when unlimited: the machine's cores, or the nominal size).
    pub cpu_limit: f64,
    /// Its latest load report through PaCI, if recent.
    pub reported: Option<Reported>,
    /// The queries per second a database server says it ran ([`crate::queries`]): its
    /// service's requests are then the queries its instances ran, not the data plane's
    /// connections.
    pub queries_per_second: Option<f64>,
}

/// Calls from one service (or [`EXTERNAL`]) to another during one second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub from: String,
    pub to: String,
    pub count: u64,
}

impl ServiceSample {
    pub fn ready_instances(&self) -> usize {
        self.instances.iter().filter(|i| i.ready).count()
    }

    /// CPU-seconds used by all instances in this second.
    pub fn cpu_used(&self) -> f64 {
        self.instances.iter().map(|i| i.cpu_used).sum()
    }

    /// The service demand (CPU-seconds per request) its ready instances report: each one's CPU
    /// limit over the capacity it reported. `None` unless every ready instance reported one.
    pub fn reported_demand(&self) -> Option<f64> {
        let ready: Vec<&InstanceSample> = self.instances.iter().filter(|i| i.ready).collect();
        let demands: Vec<f64> = ready
            .iter()
            .filter_map(|i| {
                let capacity = i.reported.as_ref()?.capacity?;
                (capacity > 0.0 && i.cpu_limit > 0.0).then(|| i.cpu_limit / capacity)
            })
            .collect();
        (!demands.is_empty() && demands.len() == ready.len())
            .then(|| demands.iter().sum::<f64>() / demands.len() as f64)
    }
}

/// The last observations, oldest first, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct History {
    observations: VecDeque<Observation>,
    capacity: usize,
}

impl Default for History {
    /// Ten minutes of seconds: more than any policy here looks back (HPA: 5 min).
    fn default() -> Self {
        Self::with_capacity(600)
    }
}

impl History {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            observations: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, observation: Observation) {
        if self.observations.len() == self.capacity {
            self.observations.pop_front();
        }
        self.observations.push_back(observation);
    }

    pub fn latest(&self) -> Option<&Observation> {
        self.observations.back()
    }

    pub fn len(&self) -> usize {
        self.observations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    /// The observations of the last `seconds` seconds (fewer at the start), oldest first.
    pub fn last(&self, seconds: usize) -> impl DoubleEndedIterator<Item = &Observation> + '_ {
        let skip = self.observations.len().saturating_sub(seconds);
        self.observations.iter().skip(skip)
    }

    /// One service's samples over the last `seconds` seconds, oldest first; seconds in which
    /// the service was not observed are left out.
    pub fn service<'a>(
        &'a self,
        service: &'a str,
        seconds: usize,
    ) -> impl DoubleEndedIterator<Item = &'a ServiceSample> + 'a {
        self.last(seconds)
            .filter_map(move |observation| observation.services.get(service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: Millis) -> Observation {
        Observation {
            at,
            ..Observation::default()
        }
    }

    #[test]
    fn history_keeps_the_newest_up_to_its_capacity() {
        let mut history = History::with_capacity(3);
        for second in 1..=5 {
            history.push(at(second * 1000));
        }
        let kept: Vec<Millis> = history.last(10).map(|o| o.at).collect();
        assert_eq!(kept, [3000, 4000, 5000]);
        let last_two: Vec<Millis> = history.last(2).map(|o| o.at).collect();
        assert_eq!(last_two, [4000, 5000]);
        assert_eq!(history.latest().map(|o| o.at), Some(5000));
    }

    #[test]
    fn reported_demand_needs_every_ready_instance_to_report() {
        let instance = |ready: bool, capacity: Option<f64>| InstanceSample {
            ready,
            cpu_limit: 0.5,
            reported: capacity.map(|c| Reported {
                capacity: Some(c),
                ..Reported::default()
            }),
            ..InstanceSample::default()
        };
        let sample = |instances| ServiceSample {
            instances,
            ..ServiceSample::default()
        };
        let both = sample(vec![
            instance(true, Some(100.0)),
            instance(true, Some(50.0)),
        ]);
        let demand = both.reported_demand().unwrap();
        assert!((demand - 0.0075).abs() < 1e-12, "{demand}");
        let one_silent = sample(vec![instance(true, Some(100.0)), instance(true, None)]);
        assert_eq!(one_silent.reported_demand(), None);
        let starting_silent = sample(vec![instance(true, Some(100.0)), instance(false, None)]);
        assert_eq!(starting_silent.reported_demand(), Some(0.005));
        assert_eq!(sample(vec![]).reported_demand(), None);
    }
}
