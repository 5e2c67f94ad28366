//! One look at the node: its pods from the OCI runtime, then each PaCI socket bound for a pod
//! that asks for one and removed for a pod that is gone, and a `resize` event for each PaCI pod
//! whose limits the runtime changed in place since the last look (the kubelet's in-place resize).

use std::collections::BTreeMap;
use std::sync::Arc;

use paracloud_paci::EventKind;

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
    drop(servers);
    tell_resized(agent, &pods);
    Ok(pods)
}

/// Sends `resize` to each PaCI pod whose container (the one holding the socket) has other CPU
/// or memory limits than at the last look; a pod's first look only records them.
fn tell_resized(agent: &Agent, pods: &BTreeMap<String, Pod>) {
    let mut limits = agent.limits.lock().unwrap_or_else(|e| e.into_inner());
    limits.retain(|uid, _| pods.contains_key(uid));
    for pod in pods.values() {
        let Some(now) = pod
            .paci_container()
            .and_then(|c| c.cgroup.as_deref())
            .and_then(|cgroup| crate::cgroup::limits(&agent.config.cgroup_root, cgroup))
        else {
            continue;
        };
        let Some(before) = limits.insert(pod.pod.uid.clone(), now) else {
            continue;
        };
        if before == now {
            continue;
        }
        let (cpu, memory) = now;
        let sent = agent.events.notify(
            &pod.pod.uid,
            EventKind::Resize { cpu, memory },
            paracloud_paci_events::RESIZE_DEADLINE,
        );
        tracing::info!(
            "pod {}/{} resized in place: cpu {before_cpu:?} -> {cpu:?} cores, memory {before_memory:?} -> {memory:?} bytes{told}",
            pod.pod.namespace,
            pod.pod.name,
            before_cpu = before.0,
            before_memory = before.1,
            told = if sent { "; told through PaCI" } else { "" },
        );
    }
}
