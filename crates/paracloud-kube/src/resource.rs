//! The `ParacloudApp` custom resource: one application, as its manifest, with what the operator
//! reports back in its status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The application, as `paracloud deploy --kubernetes` applies it.
// Each printed column is an attribute of its own, which the lint takes for a repeat.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "paracloud.dev",
    version = "v1alpha1",
    kind = "ParacloudApp",
    plural = "paracloudapps",
    shortname = "pcapp",
    category = "paracloud",
    namespaced,
    status = "ParacloudAppStatus",
    doc = "A Paracloud application: its manifest, run by the Paracloud operator",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Services",
        type_ = "integer",
        json_path = ".status.serviceCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct ParacloudAppSpec {
    /// The application's `paracloud.toml` (a Compose file is converted to it by the CLI).
    #[schemars(length(min = 1, max = 262144))]
    pub manifest: String,
    /// Where the images made on the deploying machine were pushed (see `paracloud k8s render
    /// --registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Pods and CPU per service set after the manifest (`paracloud scale`, the autoscaler), by
    /// service name: what the manifest says until then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale: BTreeMap<String, ServiceScale>,
    /// Pods' PaCI weights, by pod name: the percent (0 to 100) of its full share of traffic a
    /// pod asked for through the node agent; a pod not named takes its full share. Written by
    /// the node agent, read by the application's data plane.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
    /// Services under a migration (`paracloud migrate --kubernetes`), each with the pods that
    /// take requests meanwhile: its other pods (the successor) take none until it holds the
    /// state, and the autoscaler leaves the service alone. Written by the migrating CLI before
    /// it scales the service up, removed at the end; read by the data plane and the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub migrating: BTreeMap<String, Vec<String>>,
    /// The bind mounts' sources that were directories on the deploying machine: mounted as the
    /// node's path. Every other bind source is a file, whose ConfigMap (or Secret, under
    /// `/run/secrets/`) the CLI applied beside the resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<String>,
}

/// One service's pods and CPU, when changed after the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScale {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<u32>,
    /// Cores per pod, changed in place (in-place pod resize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 64.0))]
    pub cpu: Option<f64>,
}

/// What the operator last saw and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParacloudAppStatus {
    /// The generation of the spec this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub service_count: u32,
    /// Each service's pods: wanted, ready.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceStatus>,
    /// The SHA-256 of the manifest the objects were last rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// The pods' latest load reports through PaCI, by pod name. Each node's agent writes those
    /// of its node's pods (server-side apply, a field manager per node); the operator reads
    /// them and never writes here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load: BTreeMap<String, PodLoad>,
}

/// A pod's latest load report (docs/paci.md), and when it came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodLoad {
    /// Requests it is working on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
    /// Requests waiting inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Requests per second it can serve with its current CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// When the pod sent it, on its node's clock (RFC 3339).
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub replicas: u32,
    pub ready: u32,
}

/// The CustomResourceDefinition of `ParacloudApp`, its schema made from the types above.
pub fn definition(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    <ParacloudApp as kube_core::CustomResourceExt>::crd()
}
