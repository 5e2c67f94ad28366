//! `drain` on a cluster. The kubelet stops a pod without asking anyone; a PaCI pod's rendered
//! `preStop` sleep (`render::DRAIN_WINDOW_SECONDS`) holds its stop signal back for a drain window,
//! and its endpoint is no longer ready meanwhile, so its data plane sends it nothing new. Once a
//! second, while a pod of this node follows its events, the agent lists the node's pods on the
//! API server; each pod being deleted that follows its events gets `drain` once, with what is
//! left of its window as its deadline. The answer is an Event on the pod's application
//! (`Drained`, or a Warning `DrainNotAcknowledged` saying what happened), once its owners prove
//! it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paracloud_paci::EventKind;
use paracloud_paci_events::{describe_answer, Answer};

use crate::agent::Agent;
use crate::cluster::Cluster;
use crate::oci::Pod;

/// How often the node's pods are looked at while one follows its events.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Sends `drain` to this node's pods as they are deleted, until the task is aborted.
pub async fn run(agent: Arc<Agent>, cluster: Cluster) {
    let mut drained: BTreeSet<String> = BTreeSet::new();
    let mut every = tokio::time::interval(DRAIN_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let pods = agent.pods();
        drained.retain(|uid| pods.contains_key(uid));
        if !pods.keys().any(|uid| agent.events.listening(uid)) {
            continue;
        }
        let found = match cluster.pods_of_node().await {
            Ok(found) => found,
            Err(refusal) => {
                tracing::warn!("cannot look for pods being deleted: {}", refusal.message);
                continue;
            }
        };
        for found in found {
            let Some(uid) = found.uid() else {
                continue;
            };
            let Some(pod) = pods.get(&uid) else {
                continue;
            };
            if found.metadata.deletion_timestamp.is_none()
                || drained.contains(&uid)
                || !agent.events.listening(&uid)
            {
                continue;
            }
            drained.insert(uid);
            let container = pod.paci_container().map(|c| c.name.as_str()).unwrap_or("");
            let window = paracloud_kube::paci::drain_left(&found, container, Timestamp::now());
            tokio::spawn(drain(agent.clone(), cluster.clone(), pod.clone(), window));
        }
    }
}

/// Asks the pod to drain within `window`, and records its answer on its application.
async fn drain(agent: Arc<Agent>, cluster: Cluster, pod: Pod, window: Duration) {
    let asked = Instant::now();
    let kind = EventKind::Drain {
        reason: "the pod is being deleted".into(),
    };
    let answer = agent.events.send(&pod.pod.uid, kind, window).await;
    let what = format!("drain of pod {}", pod.pod.name);
    let message = describe_answer(&what, &answer, asked.elapsed());
    tracing::info!(namespace = %pod.pod.namespace, "{message}");
    let (kind, reason) = match answer {
        Answer::Acked(_) => ("Normal", "Drained"),
        _ => ("Warning", "DrainNotAcknowledged"),
    };
    if let Ok((app, _)) = cluster.app_of(&pod.pod).await {
        cluster.record(&app, kind, reason, &message).await;
    }
}
