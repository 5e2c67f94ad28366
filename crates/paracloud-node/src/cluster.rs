//! The agent's side of the API server, for the PaCI requests about the application: which
//! `ParacloudApp` a pod of this node runs for, proven by the pod's owners; a service's peers (its
//! pods); and a pod's request for instances of its application's services, written to that
//! resource's `spec.scale` (which the operator carries out) with an Event.
//!
//! A pod names its application in its environment and annotations, which whoever made the pod
//! wrote. That is enough to say who it is (`whoami`), never to act for the application or to see
//! its pods: before either, the agent follows the pod's controlling owners (ReplicaSet, then
//! Deployment; or StatefulSet; or Job) up to the `ParacloudApp` that owns them, by uid, and the
//! pod's own uid must be the one the kubelet gave its containers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use paracloud_kube::names::{object_name, APP_LABEL, SERVICE_LABEL};
use paracloud_kube::reconcile::{Note, Reporter};
use paracloud_kube::resource::PodLoad;
use paracloud_kube::ParacloudApp;
use paracloud_paci::{Peers, ReplicasAnswer, ReplicasRequest};
use serde_json::{json, Value};

use crate::oci::PodRef;

/// How many owners a pod's chain may have before its `ParacloudApp` (Pod, ReplicaSet,
/// Deployment).
const MAX_OWNERS: usize = 3;

/// Why the agent did not carry out a request, with the HTTP status PaCI answers.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The API server, as the agent's ServiceAccount reaches it.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    /// Who records the Events: the node's agent.
    identity: String,
}

/// The resources a pod's owners may be, by kind.
fn owner_resource(kind: &str) -> Option<ApiResource> {
    let (group, version, plural) = match kind {
        "ReplicaSet" => ("apps", "v1", "replicasets"),
        "Deployment" => ("apps", "v1", "deployments"),
        "StatefulSet" => ("apps", "v1", "statefulsets"),
        "Job" => ("batch", "v1", "jobs"),
        "ParacloudApp" => (paracloud_kube::names::GROUP, "v1alpha1", "paracloudapps"),
        _ => return None,
    };
    Some(ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    })
}

/// The controlling owner among `owners`.
fn controller(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true))
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(client: Client, identity: String) -> Self {
        Self { client, identity }
    }

    /// The `ParacloudApp` the pod runs for, by its chain of controlling owners, and the pod as
    /// the API server has it.
    pub async fn app_of(&self, pod: &PodRef) -> Result<(ParacloudApp, Pod), Refusal> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let found = pods
            .get_opt(&pod.name)
            .await
            .map_err(|e| self.unreachable(e))?
            .ok_or_else(|| {
                Refusal::new(410, format!("pod {}/{} is gone", pod.namespace, pod.name))
            })?;
        if found.uid().as_deref() != Some(pod.uid.as_str()) {
            return Err(Refusal::new(
                410,
                format!(
                    "pod {}/{} is not the one on this node any more (another pod took its name)",
                    pod.namespace, pod.name
                ),
            ));
        }
        let mut owners = found.metadata.owner_references.clone().unwrap_or_default();
        for _ in 0..MAX_OWNERS {
            let owner = controller(&owners)
                .cloned()
                .ok_or_else(|| not_paracloud(pod))?;
            let resource = owner_resource(&owner.kind).ok_or_else(|| not_paracloud(pod))?;
            if owner.kind == "ParacloudApp" {
                let apps: Api<ParacloudApp> = Api::namespaced(self.client.clone(), &pod.namespace);
                let app = apps
                    .get_opt(&owner.name)
                    .await
                    .map_err(|e| self.unreachable(e))?
                    .ok_or_else(|| not_paracloud(pod))?;
                if app.uid().as_deref() != Some(owner.uid.as_str()) {
                    return Err(not_paracloud(pod));
                }
                return Ok((app, found));
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &pod.namespace, &resource);
            let object = api
                .get_opt(&owner.name)
                .await
                .map_err(|e| self.unreachable(e))?
                .filter(|o| o.uid().as_deref() == Some(owner.uid.as_str()))
                .ok_or_else(|| not_paracloud(pod))?;
            owners = object.metadata.owner_references.unwrap_or_default();
        }
        Err(not_paracloud(pod))
    }

    /// A pod asks for `request.replicas` instances of `service` of its application: within the
    /// manifest's `autoscale` bounds for the service, as on one machine.
    pub async fn ask_replicas(
        &self,
        pod: &PodRef,
        service: &str,
        request: &ReplicasRequest,
    ) -> Result<ReplicasAnswer, Refusal> {
        let (app, _) = self.app_of(pod).await?;
        let manifest = manifest_of(&app)?;
        known_service(&manifest, service)?;
        let bounds = manifest
            .autoscale
            .as_ref()
            .and_then(|a| a.services.get(service))
            .map(|s| (s.min, s.max));
        let (min, max) = paracloud_paci::check_replicas(service, request.replicas, bounds)
            .map_err(|e| Refusal::new(409, e))?;
        let namespace = app.namespace().unwrap_or_default();
        let apps: Api<ParacloudApp> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({ "spec": { "scale": { service: { "replicas": request.replicas } } } });
        apps.patch(
            &app.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        let because = request
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let message = format!(
            "{service}: scaled to {} (asked by pod {} through PaCI{because})",
            request.replicas, pod.name
        );
        tracing::info!(namespace, app = %app.name_any(), "{message}");
        self.record(&app, "Normal", "ScaledByPod", &message).await;
        Ok(ReplicasAnswer {
            service: service.to_owned(),
            replicas: request.replicas,
            min,
            max,
        })
    }

    /// A pod sets its weight (a percent of its full share; `None` is the full share again): the
    /// resource's `spec.weights`, which its data plane reads. Weights of pods that are gone are
    /// dropped in the same change.
    pub async fn set_weight(&self, pod: &PodRef, weight: Option<u32>) -> Result<(), Refusal> {
        let (app, _) = self.app_of(pod).await?;
        let namespace = app.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let selector = format!("{APP_LABEL}={}", app.name_any());
        let living: Vec<String> = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.unreachable(e))?
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let mut weights = serde_json::Map::new();
        for gone in app.spec.weights.keys().filter(|p| !living.contains(p)) {
            weights.insert(gone.clone(), Value::Null);
        }
        weights.insert(pod.name.clone(), json!(weight));
        let patch = json!({ "spec": { "weights": weights } });
        let apps: Api<ParacloudApp> = Api::namespaced(self.client.clone(), &namespace);
        apps.patch(
            &app.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    /// The pods the API server has on this node (the agent's identity is its node's name).
    pub async fn pods_of_node(&self) -> Result<Vec<Pod>, Refusal> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on = ListParams::default().fields(&format!("spec.nodeName={}", self.identity));
        let list = pods.list(&on).await.map_err(|e| self.unreachable(e))?;
        Ok(list.items)
    }

    /// Writes the load reports of this node's pods of application `app` on its resource's
    /// `status.load`, under the node's own field manager: the pods not in `loads` that this
    /// node wrote before leave the status, other nodes' pods stay.
    pub async fn write_loads(
        &self,
        namespace: &str,
        app: &str,
        loads: &BTreeMap<String, PodLoad>,
    ) -> Result<(), Refusal> {
        let apps: Api<ParacloudApp> = Api::namespaced(self.client.clone(), namespace);
        let manager = format!("paracloud-node-agent/{}", self.identity);
        let body = paracloud_kube::paci::load_apply(app, loads);
        apps.patch_status(
            app,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    /// The application and service whose peers the pod may see: its own application, proven by
    /// its owners, and `service` or else the pod's own.
    pub async fn peers_of(&self, pod: &PodRef, service: Option<&str>) -> Result<PeersOf, Refusal> {
        let (app, found) = self.app_of(pod).await?;
        let manifest = manifest_of(&app)?;
        let service = match service {
            Some(service) => service.to_owned(),
            None => {
                let label = found
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_LABEL))
                    .cloned()
                    .unwrap_or_default();
                manifest
                    .services
                    .keys()
                    .find(|s| object_name(s) == label)
                    .cloned()
                    .ok_or_else(|| {
                        Refusal::new(
                            404,
                            format!(
                                "pod {}/{} names no service of application {} (label {SERVICE_LABEL}): ask for one with ?service=NAME",
                                pod.namespace, pod.name, manifest.app
                            ),
                        )
                    })?
            }
        };
        known_service(&manifest, &service)?;
        Ok(PeersOf {
            namespace: pod.namespace.clone(),
            app: manifest.app.clone(),
            service,
        })
    }

    /// The pods of `of.service`, as its peers now.
    pub async fn peers(&self, of: &PeersOf) -> Result<Peers, Refusal> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &of.namespace);
        let selector = format!(
            "{APP_LABEL}={},{SERVICE_LABEL}={}",
            of.app,
            object_name(&of.service)
        );
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(paracloud_kube::paci::peers(&list.items, &of.service))
    }

    /// An Event on the resource (`kind` `Normal` or `Warning`); a failure to record is logged,
    /// what it tells stands.
    pub async fn record(
        &self,
        app: &ParacloudApp,
        kind: &'static str,
        reason: &'static str,
        message: &str,
    ) {
        let namespace = app.namespace().unwrap_or_default();
        let resource = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
        };
        let events: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &resource);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let note = Note {
            kind,
            reason,
            message: message.to_owned(),
        };
        let reporter = Reporter {
            component: "node-agent",
            instance: &self.identity,
        };
        let body = note.event(app, reporter, &now, rand::random());
        let event = match serde_json::from_value::<DynamicObject>(body) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("cannot make the Event: {e}");
                return;
            }
        };
        if let Err(e) = events.create(&Default::default(), &event).await {
            tracing::warn!(
                "cannot record the Event on {namespace}/{}: {e}",
                app.name_any()
            );
        }
    }

    fn unreachable(&self, e: kube::Error) -> Refusal {
        match e {
            kube::Error::Api(status) if status.code == 403 => Refusal::new(
                503,
                format!(
                    "the node agent may not do this on the API server ({}): its ClusterRole is older than this agent; apply `paracloud k8s install` again",
                    status.message
                ),
            ),
            kube::Error::Api(status) if status.code == 409 => Refusal::new(
                409,
                format!("the application changed meanwhile: {}; ask again", status.message),
            ),
            other => Refusal::new(503, format!("the API server did not answer: {other}")),
        }
    }
}

/// Whose peers a pod asked for: a service of its application.
#[derive(Debug, Clone)]
pub struct PeersOf {
    pub namespace: String,
    pub app: String,
    pub service: String,
}

fn manifest_of(app: &ParacloudApp) -> Result<paracloud_manifest::Manifest, Refusal> {
    paracloud_kube::reconcile::manifest(app).map_err(|e| {
        Refusal::new(
            409,
            format!("the application's manifest does not load: {e}"),
        )
    })
}

fn known_service(manifest: &paracloud_manifest::Manifest, service: &str) -> Result<(), Refusal> {
    if manifest.services.contains_key(service) {
        return Ok(());
    }
    let known: Vec<&str> = manifest.services.keys().map(String::as_str).collect();
    Err(Refusal::new(
        404,
        format!(
            "no service {service} in application {}: it has {}",
            manifest.app,
            known.join(", ")
        ),
    ))
}

fn not_paracloud(pod: &PodRef) -> Refusal {
    Refusal::new(
        403,
        format!(
            "pod {}/{} is not run by a ParacloudApp (its controlling owners do not lead to one), so it may not change an application",
            pod.namespace, pod.name
        ),
    )
}
