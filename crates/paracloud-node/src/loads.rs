//! The pods' load reports (PaCI `PUT /v1/load`) on their way to the autoscaler. Every
//! [`LOADS_EVERY`], for each application with pods on this node, the agent writes the reports of
//! those pods on the resource's `status.load`, when they changed since its last write: a
//! server-side apply under this node's own field manager, so each node holds its own pods' part
//! and a pod that leaves the node leaves the status at the next write. Only pods whose owners
//! prove their application ([`Proven`](crate::proven::Proven)) are written. The operator reads them at each autoscaler
//! step and uses those sent in the last 5 s, as the daemon does on one machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paracloud_kube::resource::PodLoad;

use crate::agent::Agent;
use crate::cluster::Cluster;

/// How often the reports are written, at most.
pub const LOADS_EVERY: Duration = Duration::from_secs(2);

/// An application on the API server: its namespace and name.
type AppKey = (String, String);

/// Writes the node's pods' load reports until the task is aborted.
pub async fn run(agent: Arc<Agent>, cluster: Cluster) {
    let mut written: BTreeMap<AppKey, BTreeMap<String, PodLoad>> = BTreeMap::new();
    let mut every = tokio::time::interval(LOADS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let pods = agent.pods();
        let mut proven = agent.proven.lock().await;
        proven.retain(&pods);
        let mut loads: BTreeMap<AppKey, BTreeMap<String, PodLoad>> = BTreeMap::new();
        for (uid, pod) in pods.iter().filter(|(_, p)| p.app.is_some()) {
            let Some(load) = agent.load(uid) else {
                continue;
            };
            let Some(proven) = proven.app(&cluster, pod).await else {
                continue;
            };
            let at = i64::try_from(load.at_ms)
                .ok()
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .unwrap_or_else(Timestamp::now);
            let key = (
                proven.app.namespace().unwrap_or_default(),
                proven.app.name_any(),
            );
            loads.entry(key).or_default().insert(
                pod.pod.name.clone(),
                paracloud_kube::paci::pod_load(&load.report, at),
            );
        }
        drop(proven);
        // An application whose pods here no longer report: its part is emptied once.
        for key in written.keys() {
            loads.entry(key.clone()).or_default();
        }
        for (key, now) in loads {
            if written.get(&key) == Some(&now) {
                continue;
            }
            let (namespace, app) = &key;
            match cluster.write_loads(namespace, app, &now).await {
                Ok(()) if now.is_empty() => {
                    written.remove(&key);
                }
                Ok(()) => {
                    written.insert(key, now);
                }
                Err(e) => tracing::warn!(
                    namespace,
                    app,
                    "cannot write the pods' load reports: {}",
                    e.message
                ),
            }
        }
    }
}
