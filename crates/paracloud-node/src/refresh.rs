//! One look at the node: its pods from the OCI runtime, then each PaCI socket bound for a pod
//! that asks for one and removed for a pod that is gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agent::Agent;
use crate::oci::Pod;
use crate::{oci, paci, scan, Error};

/// Finds the node's pods now and serves their PaCI sockets; returns the pods.
pub async fn refresh(agent: &Arc<Agent>) -> Result<BTreeMap<String, Pod>, Error> {
    let _one = agent.refreshing.lock().await;
    let containers = scan::containers(&agent.config).await?;
    let pods = oci::pods(&containers);
    agent.set_pods(pods.clone());
    let mut servers = agent.servers.lock().unwrap_or_else(|e| e.into_inner());
    servers.retain(|uid, server| {
        let keep = pods.get(uid).is_some_and(Pod::wants_paci);
        if !keep {
            server.abort();
            paci::forget(agent, uid);
            tracing::info!("PaCI socket of pod {uid} removed: the pod is gone");
        }
        keep
    });
    for pod in pods.values().filter(|p| p.wants_paci()) {
        if servers.contains_key(&pod.pod.uid) {
            continue;
        }
        match paci::serve(agent, pod) {
            Ok(server) => {
                tracing::info!(
                    "PaCI socket of pod {}/{} ({}) bound",
                    pod.pod.namespace,
                    pod.pod.name,
                    pod.pod.uid
                );
                servers.insert(pod.pod.uid.clone(), server);
            }
            Err(e) => tracing::warn!(
                "cannot bind the PaCI socket of pod {}/{}: {e}",
                pod.pod.namespace,
                pod.pod.name
            ),
        }
    }
    Ok(pods)
}
