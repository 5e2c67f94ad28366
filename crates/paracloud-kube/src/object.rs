//! A Kubernetes object as the renderer and the reconciler hand it around: its identity and its
//! JSON body, ordered so that output is stable.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What names an object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects (namespaces, cluster roles, custom resource definitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// The order `kubectl apply` needs: what others refer to before what refers to it.
    fn rank(&self) -> u8 {
        match self.kind.as_str() {
            "CustomResourceDefinition" => 0,
            "Namespace" => 1,
            "ServiceAccount" => 2,
            "ClusterRole" | "Role" => 3,
            "ClusterRoleBinding" | "RoleBinding" => 4,
            "ConfigMap" => 5,
            "Secret" => 6,
            "PersistentVolumeClaim" => 7,
            "Service" => 8,
            "StatefulSet" => 9,
            "Deployment" => 10,
            "DaemonSet" => 11,
            "Job" => 12,
            "PodDisruptionBudget" => 13,
            "NetworkPolicy" => 14,
            _ => 15,
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.rank(), &self.kind, &self.namespace, &self.name).cmp(&(
            other.rank(),
            &other.kind,
            &other.namespace,
            &other.name,
        ))
    }
}

/// One object: its key and the whole body (`apiVersion`, `kind`, `metadata`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub body: Value,
}

impl Object {
    /// An object of one of the API's types.
    pub fn of<K>(typed: &K) -> Object
    where
        K: k8s_openapi::Resource + Serialize,
    {
        let body = serde_json::to_value(typed).expect("the API's types serialize to JSON");
        Object::from_body(body).expect("the API's types carry their kind and name")
    }

    /// An object from its JSON body; `None` when it lacks `apiVersion`, `kind` or a name.
    pub fn from_body(body: Value) -> Option<Object> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let key = ObjectKey {
            api_version: text(body.get("apiVersion"))?,
            kind: text(body.get("kind"))?,
            namespace: text(body.pointer("/metadata/namespace")),
            name: text(body.pointer("/metadata/name"))?,
        };
        Some(Object { key, body })
    }
}

/// Objects as one YAML stream, `---` between documents, in the order of their keys: the same
/// objects give the same bytes.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut sorted: Vec<&Object> = objects.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = String::new();
    for object in sorted {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml_ng::to_string(&object.body).expect("JSON values serialize to YAML"),
        );
    }
    out
}

/// Objects as a Kubernetes `List`, for `kubectl apply -f -` and tools that read JSON.
pub fn to_json_list(objects: &[Object]) -> Value {
    let mut sorted: Vec<&Object> = objects.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": sorted.iter().map(|o| o.body.clone()).collect::<Vec<_>>(),
    })
}
