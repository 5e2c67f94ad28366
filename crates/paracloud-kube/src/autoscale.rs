//! The autoscaler in the cluster, its pure part: an application's pods as its policy sees them
//! (with metrics-server's CPU use), and the policy's decisions as changes to the resource's
//! `spec.scale`, which the reconcile carries out (the scale subresource for pods, in-place
//! resize for CPU, a rolling change where the cluster cannot resize).
//!
//! The policies, their bounds and the observation built from the data plane's figures are the
//! ones the daemon uses on one machine (`paracloud_autoscale`, `paracloud_dataplane::observe`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use paracloud_autoscale::{
    Current, Decision, InstanceFacts, Observation, Reported, ScalingConfig, REPORT_TTL_MS,
};
use paracloud_manifest::Manifest;
use serde_json::{json, Value};

use crate::names::{cpu_cores, object_name, REVISION_LABEL, SERVICE_LABEL};
use crate::reconcile::Note;
use crate::ParacloudApp;

/// The Event reason of a change the autoscaler made.
pub const AUTOSCALED: &str = "Autoscaled";

/// The pods of the services `config` scales, as facts for one observation at `now`: ready by
/// their `Ready` condition, aged from their start, their CPU limit as the kubelet applied it
/// (the container status's, which follows an in-place resize) or else as their spec asks, and
/// their CPU use from `usage` (cores by pod name, as metrics-server reports it; 0 while it has
/// none). Pods being deleted and those of a revision are left out, as on one machine.
pub fn instance_facts(
    pods: &[Pod],
    usage: &BTreeMap<String, f64>,
    reports: &BTreeMap<String, Reported>,
    now: Timestamp,
    config: &ScalingConfig,
) -> Vec<InstanceFacts> {
    let mut facts: Vec<InstanceFacts> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let labels = pod.metadata.labels.as_ref()?;
            if labels.contains_key(REVISION_LABEL) {
                return None;
            }
            let label = labels.get(SERVICE_LABEL)?;
            let (service, bounds) = config
                .services
                .iter()
                .find(|(service, _)| object_name(service) == *label)?;
            let name = pod.metadata.name.clone()?;
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            let started = status
                .and_then(|s| s.start_time.as_ref())
                .or(pod.metadata.creation_timestamp.as_ref())
                .map(|t| t.0);
            let age_ms = started.map_or(0, |started| {
                u64::try_from(now.as_millisecond() - started.as_millisecond()).unwrap_or(0)
            });
            Some(InstanceFacts {
                service: service.clone(),
                cpu_used: usage.get(&name).copied().unwrap_or(0.0),
                cpu_limit: cpu_limit(pod, service).unwrap_or(bounds.cpu),
                reported: reports.get(&name).cloned(),
                // The catalogue does not run on a cluster.
                queries_per_second: None,
                name,
                ready,
                age_ms,
            })
        })
        .collect();
    facts.sort_by(|a, b| a.name.cmp(&b.name));
    facts
}

/// The pods' load reports on the resource's status that are recent at `now` (as on one machine:
/// at most [`REPORT_TTL_MS`] old), by pod name. A report from a node whose clock is ahead counts
/// as just sent.
pub fn fresh_reports(app: &ParacloudApp, now: Timestamp) -> BTreeMap<String, Reported> {
    let Some(status) = app.status.as_ref() else {
        return BTreeMap::new();
    };
    status
        .load
        .iter()
        .filter(|(_, load)| {
            load.at.parse::<Timestamp>().is_ok_and(|at| {
                let age = now.as_millisecond() - at.as_millisecond();
                age <= REPORT_TTL_MS as i64
            })
        })
        .map(|(pod, load)| {
            let reported = Reported {
                in_flight: load.in_flight,
                queue: load.queue,
                capacity: load.capacity,
            };
            (pod.clone(), reported)
        })
        .collect()
}

/// The CPU limit of the pod's container for `service`: what the kubelet applied (the container
/// status's resources) or else what the spec asks.
fn cpu_limit(pod: &Pod, service: &str) -> Option<f64> {
    let container = object_name(service);
    let applied = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|s| s.name == container))
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|limits| limits.get("cpu"));
    let asked = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|limits| limits.get("cpu"));
    applied.or(asked).and_then(|q| cpu_cores(&q.0))
}

/// The cores each pod uses, summed over its containers, from metrics-server's `PodMetrics`
/// (`metrics.k8s.io/v1beta1`) as JSON; entries it cannot read are left out.
pub fn pod_usage(pod_metrics: &[Value]) -> BTreeMap<String, f64> {
    pod_metrics
        .iter()
        .filter_map(|metrics| {
            let name = metrics["metadata"]["name"].as_str()?;
            let cores = metrics["containers"]
                .as_array()?
                .iter()
                .filter_map(|c| cpu_cores(c["usage"]["cpu"].as_str()?))
                .sum::<f64>();
            Some((name.to_owned(), cores))
        })
        .collect()
}

/// What one decision of the autoscaler changes for one service, within its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceChange {
    pub service: String,
    /// Pods wanted: from, to.
    pub replicas: Option<(u32, u32)>,
    /// CPU per pod in cores: from (`None`: unlimited), to.
    pub cpu: Option<(Option<f64>, f64)>,
    pub reason: String,
}

/// What `service` has now: the resource's scale, else the manifest's replicas and CPU.
pub fn current(app: &ParacloudApp, manifest: &Manifest, service: &str) -> Option<Current> {
    let spec = manifest.services.get(service)?;
    let scale = app.spec.scale.get(service);
    Some(Current {
        replicas: scale.and_then(|s| s.replicas).unwrap_or(spec.replicas),
        cpu: scale.and_then(|s| s.cpu).or(spec.resources.cpu),
    })
}

/// The policy's `decisions` kept within each service's bounds, measured against what the
/// resource asks now; those that change nothing are dropped, and so are those of a service
/// under a migration (its pod count is the migration's until it ends). A service the `latest`
/// observation saw requests for is never taken to zero. CPU is bounded by the service's own
/// `cpu_max`: a node's size is the scheduler's to weigh.
pub fn changes(
    app: &ParacloudApp,
    manifest: &Manifest,
    config: &ScalingConfig,
    decisions: Vec<Decision>,
    latest: Option<&Observation>,
) -> Vec<ServiceChange> {
    decisions
        .into_iter()
        .filter(|decision| !app.spec.migrating.contains_key(&decision.service))
        .filter_map(|decision| {
            let bounds = config.services.get(&decision.service)?;
            let current = current(app, manifest, &decision.service)?;
            let busy = latest
                .and_then(|o| o.services.get(&decision.service))
                .is_some_and(|s| s.in_flight > 0 || s.arrivals > 0);
            let bounded = bounds.bound(&decision, current, f64::INFINITY, busy);
            (!bounded.is_empty()).then_some(ServiceChange {
                service: decision.service,
                replicas: bounded.replicas,
                cpu: bounded.cpu,
                reason: decision.reason,
            })
        })
        .collect()
}

impl ServiceChange {
    /// The merge patch of the resource that asks for it.
    pub fn patch(&self) -> Value {
        let mut scale = serde_json::Map::new();
        if let Some((_, to)) = self.replicas {
            scale.insert("replicas".into(), json!(to));
        }
        if let Some((_, to)) = self.cpu {
            scale.insert("cpu".into(), json!(to));
        }
        json!({ "spec": { "scale": { self.service.clone(): scale } } })
    }

    /// The Event that says it, in the words the daemon's events use on one machine.
    pub fn note(&self, policy: &str) -> Note {
        let mut parts = Vec::new();
        if let Some((from, to)) = self.replicas {
            parts.push(format!("pods {from} -> {to}"));
        }
        if let Some((from, to)) = self.cpu {
            let from = from.map_or("unlimited".to_owned(), |c| format!("{c}"));
            parts.push(format!("cpu per pod {from} -> {to}"));
        }
        Note {
            kind: "Normal",
            reason: AUTOSCALED,
            message: format!(
                "{}: autoscaler {policy}: {}: {}",
                self.service,
                parts.join(", "),
                self.reason
            ),
        }
    }
}

#[cfg(test)]
mod tests;
