//! Which `ParacloudApp` each pod of the node runs for, proven by its owners
//! (`Cluster::app_of`), kept for [`APP_TTL`] and then read again (a changed manifest, new
//! schedules). The agent's loops (schedules, load reports) ask it instead of the API server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod as ApiPod;
use paracloud_kube::ParacloudApp;
use paracloud_manifest::Manifest;

use crate::cluster::Cluster;
use crate::oci::Pod;

/// How long a pod's proven application is used before it is read again.
pub const APP_TTL: Duration = Duration::from_secs(30);

/// A pod's application: the resource, its manifest, and the pod as the API server has it.
#[derive(Debug)]
pub struct ProvenApp {
    pub app: ParacloudApp,
    pub manifest: Manifest,
    pub pod: ApiPod,
}

/// A pod's application as last read (none: not proven), and when.
#[derive(Debug)]
struct Known {
    app: Option<ProvenApp>,
    at: Instant,
}

/// The node's pods' applications, by pod uid.
#[derive(Debug, Default)]
pub struct Proven {
    known: BTreeMap<String, Known>,
}

impl Proven {
    /// Forgets the pods no longer on the node.
    pub fn retain(&mut self, pods: &BTreeMap<String, Pod>) {
        self.known.retain(|uid, _| pods.contains_key(uid));
    }

    /// The application `pod` runs for, read from the API server when not known or older than
    /// [`APP_TTL`]; none when its owners do not lead to one (or its manifest does not load).
    pub async fn app(&mut self, cluster: &Cluster, pod: &Pod) -> Option<&ProvenApp> {
        let fresh = self
            .known
            .get(&pod.pod.uid)
            .is_some_and(|k| k.at.elapsed() < APP_TTL);
        if !fresh {
            let app = cluster
                .app_of(&pod.pod)
                .await
                .ok()
                .and_then(|(app, found)| {
                    let manifest = paracloud_kube::reconcile::manifest(&app).ok()?;
                    Some(ProvenApp {
                        app,
                        manifest,
                        pod: found,
                    })
                });
            let known = Known {
                app,
                at: Instant::now(),
            };
            self.known.insert(pod.pod.uid.clone(), known);
        }
        self.known.get(&pod.pod.uid)?.app.as_ref()
    }
}
