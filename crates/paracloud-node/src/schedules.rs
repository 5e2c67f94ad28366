//! The applications' scheduled capsules (`[schedules.NAME]`) on a cluster. Each node's agent
//! runs them against the pods of its own node, so that a run reaches every pod a schedule
//! selects once, where the pod is. Once a second, a schedule whose next time since the last look
//! has come starts a run on each pod of its application that it selects (`service=`,
//! `instance=` the pod's name, the service's labels), after the same policy check as on one
//! machine (`[services.NAME.capsules]`). A pod's application is proven by its owners
//! ([`Proven`](crate::proven::Proven)). Each run is in the audit log, and
//! its outcome an Event on the resource (`ScheduledCapsule`, or a Warning
//! `ScheduledCapsuleRefused` saying why it did not run).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::ResourceExt;
use paracloud_api::CapsuleRunEvent;
use paracloud_capsule::{Access, Selector, Target};
use paracloud_kube::names::{object_name, REVISION_LABEL};
use paracloud_kube::ParacloudApp;
use paracloud_manifest::Manifest;

use crate::agent::Agent;
use crate::capsules::CapsuleRequest;
use crate::cluster::Cluster;
use crate::oci::Pod;

/// Runs the schedules of the pods on this node until the task is aborted.
pub async fn run(agent: Arc<Agent>, cluster: Cluster) {
    let mut last = unix_seconds();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = unix_seconds();
        if now <= last {
            continue;
        }
        let pods = agent.pods();
        let mut proven = agent.proven.lock().await;
        proven.retain(&pods);
        // Pods that say they run for an application (what rendered pods carry); the claim is
        // proven before anything runs.
        for pod in pods.values().filter(|p| p.app.is_some()) {
            let Some(proven) = proven.app(&cluster, pod).await else {
                continue;
            };
            for due in due(&proven.manifest, &proven.pod, pod, last, now) {
                start(&agent, &cluster, &proven.app, pod, due);
            }
        }
        last = now;
    }
}

/// One run a schedule wants on a pod.
struct Due {
    schedule: String,
    capsule: String,
    service: String,
    args: Vec<String>,
    timeout: Option<Duration>,
    /// What the service's policy lets attach (`[services.NAME.capsules]`).
    allowed: BTreeMap<String, Access>,
    /// The capsule as the policy sees it: a built-in one, or the application's own.
    spec: Option<paracloud_capsule::CapsuleSpec>,
}

/// The runs the schedules of `manifest` want on `pod` for the times in (`last`, `now`].
fn due(manifest: &Manifest, found: &ApiPod, pod: &Pod, last: i64, now: i64) -> Vec<Due> {
    let labels = found.metadata.labels.clone().unwrap_or_default();
    // A revision's pods are their own service's, as on one machine.
    if labels.contains_key(REVISION_LABEL) {
        return Vec::new();
    }
    let Some((service, spec)) = paracloud_kube::names::service_of(manifest, &labels) else {
        return Vec::new();
    };
    let target = Target {
        app: manifest.app.clone(),
        service: service.clone(),
        instance: pod.pod.name.clone(),
        labels: spec.labels.clone(),
    };
    manifest
        .schedules
        .iter()
        .filter(|(_, s)| s.cron.next_after(last).is_some_and(|at| at <= now))
        .filter(|(_, s)| Selector::parse(&s.selector).is_ok_and(|sel| sel.matches(&target)))
        .map(|(name, s)| Due {
            schedule: name.clone(),
            capsule: s.capsule.clone(),
            service: service.clone(),
            args: s.args.clone(),
            timeout: s.timeout,
            allowed: spec.capsules.clone(),
            spec: paracloud_capsule::builtin(&s.capsule)
                .or_else(|| manifest.capsules.get(&s.capsule).map(|c| c.spec())),
        })
        .collect()
}

/// Checks the policy and starts the run; its outcome, or why it did not run, becomes an Event
/// when it ends.
fn start(agent: &Arc<Agent>, cluster: &Cluster, app: &ParacloudApp, pod: &Pod, due: Due) {
    let (agent, cluster, app, pod) = (agent.clone(), cluster.clone(), app.clone(), pod.clone());
    tokio::spawn(async move {
        let on = format!(
            "schedule {}: {} on pod {}",
            due.schedule, due.capsule, pod.pod.name
        );
        match attach(&agent, &pod, due).await {
            Ok(ended) => {
                tracing::info!(app = %app.name_any(), "{on} {ended}");
                let message = format!("{on} {ended}");
                cluster
                    .record(&app, "Normal", "ScheduledCapsule", &message)
                    .await;
            }
            Err(why) => {
                let message = format!("{on} did not run: {why}");
                cluster
                    .record(&app, "Warning", "ScheduledCapsuleRefused", &message)
                    .await;
            }
        }
    });
}

/// Runs the capsule on the pod's container once its policy allows it: how it ended, or why it
/// could not start.
async fn attach(agent: &Arc<Agent>, pod: &Pod, due: Due) -> Result<String, String> {
    let spec = due.spec.as_ref().ok_or_else(|| {
        format!(
            "no capsule {:?}: neither a built-in one ({}) nor one of the application's own",
            due.capsule,
            paracloud_capsule::builtin_names().join(", ")
        )
    })?;
    paracloud_capsule::check(spec, &due.service, &due.allowed).map_err(|e| e.to_string())?;
    let request = CapsuleRequest {
        pod: pod.pod.uid.clone(),
        container: object_name(&due.service),
        capsule: due.capsule,
        args: due.args,
        timeout_ms: due
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    };
    let mut events = crate::capsules::run(agent, None, request)
        .await
        .map_err(|e| e.to_string())?;
    let mut ended = String::from("ended");
    while let Some(event) = events.recv().await {
        if let CapsuleRunEvent::Exited {
            exit_code,
            timed_out,
            error,
            ..
        } = event
        {
            ended = match (exit_code, timed_out, error) {
                // Says the deadline it was stopped at.
                (_, true, error) => error.unwrap_or_else(|| "timed out".to_owned()),
                (_, _, Some(error)) => format!("failed: {error}"),
                (Some(code), _, _) => format!("exited {code}"),
                (None, _, _) => "never started".to_owned(),
            };
        }
    }
    Ok(ended)
}

fn unix_seconds() -> i64 {
    i64::try_from(crate::agent::now_ms() / 1000).unwrap_or(i64::MAX)
}
