//! The resources the stand-in serves: the built-in kinds the operator uses, and those that
//! created CustomResourceDefinitions add.

use serde_json::{json, Value};

/// Where `/scale` reads and writes, as JSON paths of keys (`spec.replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: Vec<String>,
    pub status_replicas: Vec<String>,
    /// A string label selector (custom resources), or `None` to make it from
    /// `spec.selector.matchLabels` (deployments, statefulsets).
    pub label_selector: Option<Vec<String>>,
}

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status: bool,
    pub scale: Option<ScalePaths>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `configmaps`: as the real server names it in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn path(dotted: &str) -> Vec<String> {
    dotted
        .trim_start_matches('.')
        .split('.')
        .map(String::from)
        .collect()
}

/// (group, version, plural, kind, namespaced, status subresource, scale subresource)
const BUILT_IN: &[(&str, &str, &str, &str, bool, bool, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false, true, false),
    ("", "v1", "nodes", "Node", false, true, false),
    ("", "v1", "configmaps", "ConfigMap", true, false, false),
    ("", "v1", "secrets", "Secret", true, false, false),
    ("", "v1", "services", "Service", true, true, false),
    ("", "v1", "endpoints", "Endpoints", true, false, false),
    ("", "v1", "pods", "Pod", true, true, false),
    ("", "v1", "events", "Event", true, false, false),
    (
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
        false,
    ),
    (
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        false,
        true,
        false,
    ),
    (
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false,
    ),
    ("apps", "v1", "deployments", "Deployment", true, true, true),
    (
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        true,
        true,
    ),
    ("apps", "v1", "replicasets", "ReplicaSet", true, true, true),
    ("apps", "v1", "daemonsets", "DaemonSet", true, true, false),
    ("batch", "v1", "jobs", "Job", true, true, false),
    ("batch", "v1", "cronjobs", "CronJob", true, true, false),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
        false,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        false,
        false,
    ),
    (
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        true,
        false,
    ),
    // What metrics-server serves (read-only there: a test writes it as metrics-server would).
    (
        "metrics.k8s.io",
        "v1beta1",
        "pods",
        "PodMetrics",
        true,
        false,
        false,
    ),
    // What the EndpointSlice controller writes for each Service (no status subresource).
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
        false,
    ),
    (
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        false,
    ),
    ("events.k8s.io", "v1", "events", "Event", true, false, false),
    (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
        false,
    ),
];

/// Every resource served now.
#[derive(Debug, Clone)]
pub struct Resources {
    served: Vec<ResourceInfo>,
}

impl Resources {
    pub fn built_in() -> Self {
        let served = BUILT_IN
            .iter()
            .map(
                |&(group, version, plural, kind, namespaced, status, scale)| ResourceInfo {
                    group: group.into(),
                    version: version.into(),
                    plural: plural.into(),
                    kind: kind.into(),
                    namespaced,
                    status,
                    scale: scale.then(|| ScalePaths {
                        spec_replicas: path("spec.replicas"),
                        status_replicas: path("status.replicas"),
                        label_selector: None,
                    }),
                },
            )
            .collect();
        Resources { served }
    }

    /// `/api/v1` or `/apis/GROUP/VERSION`: the APIResourceList of a group version, with its
    /// subresources (`deployments/scale`, `pods/exec`, `pods/resize` when `pod_resize`), as clients discover
    /// what a server offers. `None` when nothing is served there.
    pub fn resource_list(&self, group: &str, version: &str, pod_resize: bool) -> Option<Value> {
        let verbs = json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ]);
        let mut entries = Vec::new();
        for r in self
            .served
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            let entry = |name: String, kind: &str, verbs: Value| json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            entries.push(entry(r.plural.clone(), &r.kind, verbs.clone()));
            if r.status {
                entries.push(entry(
                    format!("{}/status", r.plural),
                    &r.kind,
                    json!(["get", "patch", "update"]),
                ));
            }
            if r.scale.is_some() {
                entries.push(entry(
                    format!("{}/scale", r.plural),
                    "Scale",
                    json!(["get", "patch", "update"]),
                ));
            }
            if r.group.is_empty() && r.plural == "pods" {
                entries.push(entry(
                    "pods/exec".into(),
                    "PodExecOptions",
                    json!(["create", "get"]),
                ));
            }
            if pod_resize && r.group.is_empty() && r.plural == "pods" {
                entries.push(entry(
                    "pods/resize".into(),
                    "Pod",
                    json!(["get", "patch", "update"]),
                ));
            }
        }
        if entries.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": entries,
        }))
    }

    /// `/apis`: the APIGroupList of every named group served.
    pub fn group_list(&self) -> Value {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.served.iter().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| g == &r.group) {
                Some((_, versions)) if versions.contains(&r.version) => {}
                Some((_, versions)) => versions.push(r.version.clone()),
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                    .collect();
                json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.served
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Serves what a CustomResourceDefinition declares (its served versions, with their status
    /// and scale subresources), replacing what an earlier version of it declared.
    pub fn define(&mut self, crd: &Value) {
        self.undefine(crd);
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let plural = spec["names"]["plural"].as_str().unwrap_or_default();
        let kind = spec["names"]["kind"].as_str().unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"] == Value::Bool(false) {
                continue;
            }
            let subresources = &version["subresources"];
            let scale = &subresources["scale"];
            self.served.push(ResourceInfo {
                group: group.into(),
                version: version["name"].as_str().unwrap_or_default().into(),
                plural: plural.into(),
                kind: kind.into(),
                namespaced,
                status: subresources.get("status").is_some(),
                scale: scale.is_object().then(|| ScalePaths {
                    spec_replicas: path(
                        scale["specReplicasPath"]
                            .as_str()
                            .unwrap_or(".spec.replicas"),
                    ),
                    status_replicas: path(
                        scale["statusReplicasPath"]
                            .as_str()
                            .unwrap_or(".status.replicas"),
                    ),
                    label_selector: scale["labelSelectorPath"].as_str().map(path),
                }),
            });
        }
    }

    pub fn undefine(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        self.served
            .retain(|r| !(r.group == group && r.plural == plural && !is_built_in(r)));
    }
}

/// Whether the resource is one of the kinds built into the server (not from a definition).
pub fn is_built_in(r: &ResourceInfo) -> bool {
    BUILT_IN
        .iter()
        .any(|b| b.0 == r.group && b.1 == r.version && b.2 == r.plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_serves_its_versions_with_their_subresources() {
        let mut resources = Resources::built_in();
        let crd = json!({"spec": {
            "group": "paracloud.dev", "scope": "Namespaced",
            "names": {"plural": "paracloudapps", "kind": "ParacloudApp"},
            "versions": [
                {"name": "v1alpha1", "served": true, "subresources": {"status": {},
                 "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}}},
                {"name": "v0", "served": false}
            ]
        }});
        resources.define(&crd);
        let app = resources
            .find("paracloud.dev", "v1alpha1", "paracloudapps")
            .unwrap();
        assert!(app.status && app.namespaced);
        assert_eq!(
            app.scale.as_ref().unwrap().spec_replicas,
            vec!["spec", "size"]
        );
        assert!(resources
            .find("paracloud.dev", "v0", "paracloudapps")
            .is_none());
        resources.undefine(&crd);
        assert!(resources
            .find("paracloud.dev", "v1alpha1", "paracloudapps")
            .is_none());
        assert!(resources.find("apps", "v1", "deployments").is_some());
    }
}
