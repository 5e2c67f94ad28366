//! PaCI's answers made from the cluster's objects, for the node agent (pure): a service's peers
//! are its pods; the load reports of a node's pods are what it writes on their resource's status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use paracloud_paci::{LoadReport, Peer, Peers};
use serde_json::{json, Value};

use crate::resource::PodLoad;

/// A pod's load report as the resource's status keeps it: what the autoscaler uses (its own
/// figures stay on its node), and when it came.
pub fn pod_load(report: &LoadReport, at: Timestamp) -> PodLoad {
    PodLoad {
        in_flight: report.in_flight,
        queue: report.queue,
        capacity: report.capacity,
        at: at.to_string(),
    }
}

/// The server-side apply of `status.load` on the application `app` with the reports of one
/// node's pods: under the node's own field manager it holds exactly these pods, so a pod of the
/// node that no longer reports (or is gone) leaves the status with the next apply, and other
/// nodes' pods are left as they are.
pub fn load_apply(app: &str, loads: &BTreeMap<String, PodLoad>) -> Value {
    json!({
        "apiVersion": format!("{}/v1alpha1", crate::names::GROUP),
        "kind": "ParacloudApp",
        "metadata": { "name": app },
        "status": { "load": loads },
    })
}

/// The pods of `service` as its peers, sorted by name. A peer's index is its StatefulSet
/// ordinal, else its place in that order; its address the pod's IPv4 address (unspecified
/// while it has none); its state `stopping` once deleted, else `running`, `unready` or
/// `starting` by its phase and `Ready` condition. Revisions are not numbered on a cluster:
/// every peer reads revision 0.
pub fn peers(pods: &[Pod], service: &str) -> Peers {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let peers = pods
        .iter()
        .enumerate()
        .map(|(place, pod)| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
            let state = match (pod.metadata.deletion_timestamp.is_some(), phase, ready) {
                (true, _, _) => "stopping",
                (false, "Running", true) => "running",
                (false, "Running", false) => "unready",
                (false, "Pending", _) => "starting",
                (false, "Succeeded", _) => "exited",
                (false, _, _) => "failed",
            };
            let address = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            Peer {
                index: ordinal(pod, &name)
                    .unwrap_or_else(|| u32::try_from(place).unwrap_or(u32::MAX)),
                instance: name,
                address,
                ready: ready && state == "running",
                state: state.to_owned(),
                revision: 0,
            }
        })
        .collect();
    Peers {
        service: service.to_owned(),
        peers,
    }
}

/// What is left at `now` of a pod's drain window, being deleted: its container `container`'s
/// `preStop` sleep (what `render` gives a PaCI pod) from when its deletion started (its
/// `deletionTimestamp` less its `deletionGracePeriodSeconds`). At least a second: a pod without
/// a window, or past it, is still told, racing its stop signal.
pub fn drain_left(pod: &Pod, container: &str, now: Timestamp) -> std::time::Duration {
    const AT_LEAST: std::time::Duration = std::time::Duration::from_secs(1);
    let sleep = pod
        .spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .find(|c| c.name == container)
        .and_then(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .map_or(0, |sleep| sleep.seconds.max(0));
    let Some(deleting) = pod.metadata.deletion_timestamp.as_ref() else {
        return AT_LEAST;
    };
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .unwrap_or(0)
        .max(0);
    let started_ms = deleting.0.as_millisecond() - grace * 1000;
    let left_ms = started_ms + sleep * 1000 - now.as_millisecond();
    std::time::Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).max(AT_LEAST)
}

/// A StatefulSet's pod's ordinal, the number its name ends with.
fn ordinal(pod: &Pod, name: &str) -> Option<u32> {
    let stateful = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
    stateful
        .then(|| name.rsplit_once('-')?.1.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, phase: &str, ready: bool, ip: Option<&str>, owner: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "ownerReferences": [
                { "apiVersion": "apps/v1", "kind": owner, "name": "x", "uid": "u", "controller": true }
            ]},
            "status": {
                "phase": phase,
                "podIP": ip,
                "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn pods_are_peers_in_name_order_with_their_state_and_address() {
        let mut going = pod("web-a", "Running", true, Some("10.0.0.9"), "ReplicaSet");
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let answer = peers(
            &[
                pod("web-c", "Pending", false, None, "ReplicaSet"),
                pod("web-b", "Running", false, Some("10.0.0.2"), "ReplicaSet"),
                going,
                pod("web-d", "Running", true, Some("10.0.0.4"), "ReplicaSet"),
            ],
            "web",
        );
        let seen: Vec<(String, u32, String, bool, String)> = answer
            .peers
            .iter()
            .map(|p| {
                (
                    p.instance.clone(),
                    p.index,
                    p.address.to_string(),
                    p.ready,
                    p.state.clone(),
                )
            })
            .collect();
        assert_eq!(answer.service, "web");
        assert_eq!(
            seen,
            [
                (
                    "web-a".into(),
                    0,
                    "10.0.0.9".into(),
                    false,
                    "stopping".into()
                ),
                (
                    "web-b".into(),
                    1,
                    "10.0.0.2".into(),
                    false,
                    "unready".into()
                ),
                (
                    "web-c".into(),
                    2,
                    "0.0.0.0".into(),
                    false,
                    "starting".into()
                ),
                ("web-d".into(), 3, "10.0.0.4".into(), true, "running".into()),
            ]
        );
    }

    #[test]
    fn a_statefulsets_pods_keep_their_ordinal() {
        let answer = peers(
            &[
                pod("kv-10", "Running", true, Some("10.0.0.10"), "StatefulSet"),
                pod("kv-2", "Running", true, Some("10.0.0.2"), "StatefulSet"),
            ],
            "kv",
        );
        let indexes: Vec<(String, u32)> = answer
            .peers
            .iter()
            .map(|p| (p.instance.clone(), p.index))
            .collect();
        assert_eq!(indexes, [("kv-10".into(), 10), ("kv-2".into(), 2)]);
    }
}
