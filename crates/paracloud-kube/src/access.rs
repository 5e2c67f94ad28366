//! What the operator may do in a cluster, written once: the kinds it manages, and every
//! (resource, verb) its code uses. The ClusterRole it is installed with is made from this list,
//! and a test of the operator checks that the requests it makes are exactly these.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// A kind of object the operator renders, applies and prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedKind {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl ManagedKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every kind the operator's `render` makes in an application's namespace (Secrets are made by
/// the deploying CLI, from the user's files, and the operator never reads them).
pub const MANAGED_KINDS: &[ManagedKind] = &[
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
    },
    ManagedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    ManagedKind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
    },
    ManagedKind {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
    },
    ManagedKind {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
    },
    ManagedKind {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
    },
    ManagedKind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
    },
    // The data plane's identity and its one permission (see `delegated_permissions`).
    ManagedKind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
    },
    ManagedKind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
    },
];

/// The managed kind of an object's `apiVersion` and `kind`.
pub fn managed_kind(api_version: &str, kind: &str) -> Option<&'static ManagedKind> {
    MANAGED_KINDS
        .iter()
        .find(|m| m.kind == kind && m.api_version() == api_version)
}

/// One permission: verbs on resources of a group (subresources as `pods/resize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
}

impl Permission {
    /// (group, resource, verb), as a request is compared with it.
    pub fn triple(&self) -> (String, String, String) {
        (
            self.group.to_owned(),
            self.resource.to_owned(),
            self.verb.to_owned(),
        )
    }
}

/// Every request the operator's code makes, by group, resource and verb (RBAC's names).
pub fn operator_permissions() -> Vec<Permission> {
    let mut all = Vec::new();
    let mut add = |group, resource, verbs: &[&'static str]| {
        for verb in verbs {
            all.push(Permission {
                group,
                resource,
                verb,
            });
        }
    };
    // Its own resource: watched, its finalizer and status written.
    add(
        "paracloud.dev",
        "paracloudapps",
        &["list", "watch", "patch"],
    );
    add("paracloud.dev", "paracloudapps/status", &["patch"]);
    // What it renders: observed, applied (server-side), pruned.
    for kind in MANAGED_KINDS {
        add(
            kind.group,
            kind.plural,
            &["list", "watch", "patch", "delete"],
        );
    }
    // Pod counts of autoscaled workloads, and CPU in place.
    add("apps", "deployments/scale", &["patch"]);
    add("apps", "statefulsets/scale", &["patch"]);
    add("", "pods", &["list"]);
    add("", "pods/resize", &["patch"]);
    // The autoscaler's CPU use per pod, from metrics-server.
    add("metrics.k8s.io", "pods", &["list"]);
    // What it did, said on the resource.
    add("", "events", &["create"]);
    // One operator acts at a time: leader election.
    add(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    );
    all.sort();
    all.dedup();
    all
}

/// Every request an application's data plane makes, in its namespace: the EndpointSlices of its
/// services' pods, and its resource, for the pods' weights.
pub fn dataplane_permissions() -> Vec<Permission> {
    let mut all = Vec::new();
    for (group, resource) in [
        ("discovery.k8s.io", "endpointslices"),
        ("paracloud.dev", "paracloudapps"),
    ] {
        for verb in ["list", "watch"] {
            all.push(Permission {
                group,
                resource,
                verb,
            });
        }
    }
    all
}

/// The data plane's Role's rules (`render` applies them in each application's namespace).
pub fn dataplane_rules() -> Vec<PolicyRule> {
    rules(&dataplane_permissions())
}

/// What the operator holds without asking for it: what the data plane's Role grants beyond the
/// operator's own requests, since Kubernetes lets a subject grant only what it holds itself.
pub fn delegated_permissions() -> Vec<Permission> {
    let own = operator_permissions();
    dataplane_permissions()
        .into_iter()
        .filter(|p| !own.contains(p))
        .collect()
}

/// The operator's ClusterRole's rules (its lease aside: a Role in its own namespace).
pub fn operator_rules() -> Vec<PolicyRule> {
    let mut all = operator_permissions();
    all.extend(delegated_permissions());
    all.retain(|p| p.resource != "leases");
    rules(&all)
}

/// Every request the node agent's code makes: it proves which `ParacloudApp` a pod runs for by
/// the pod's controlling owners, lists a service's pods as its peers, and writes the scale a pod
/// asks for with an Event.
pub fn node_agent_permissions() -> Vec<Permission> {
    let mut all = Vec::new();
    for (group, resource, verb) in [
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("apps", "replicasets", "get"),
        ("apps", "deployments", "get"),
        ("apps", "statefulsets", "get"),
        ("batch", "jobs", "get"),
        ("paracloud.dev", "paracloudapps", "get"),
        ("paracloud.dev", "paracloudapps", "patch"),
        ("paracloud.dev", "paracloudapps/status", "patch"),
        ("", "events", "create"),
    ] {
        all.push(Permission {
            group,
            resource,
            verb,
        });
    }
    all.sort();
    all
}

/// The node agent's ClusterRole's rules.
pub fn node_agent_rules() -> Vec<PolicyRule> {
    rules(&node_agent_permissions())
}

/// Rules granting exactly `permissions`: one rule per group and set of verbs.
fn rules(permissions: &[Permission]) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    for p in permissions.iter().copied() {
        let verbs: Vec<String> = permissions
            .iter()
            .filter(|q| q.group == p.group && q.resource == p.resource)
            .map(|q| q.verb.to_owned())
            .collect();
        match rules.iter_mut().find(|r| {
            r.api_groups.as_deref() == Some(&[p.group.to_owned()][..]) && r.verbs == verbs
        }) {
            Some(rule) => {
                let resources = rule.resources.get_or_insert_with(Vec::new);
                if !resources.iter().any(|r| r == p.resource) {
                    resources.push(p.resource.to_owned());
                }
            }
            None => rules.push(PolicyRule {
                api_groups: Some(vec![p.group.to_owned()]),
                resources: Some(vec![p.resource.to_owned()]),
                verbs,
                ..Default::default()
            }),
        }
    }
    rules
}

/// The rule of the operator's Role in its own namespace: its lease.
pub fn lease_rule() -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        verbs: operator_permissions()
            .iter()
            .filter(|p| p.resource == "leases")
            .map(|p| p.verb.to_owned())
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What rules grant, one (group, resource, verb) at a time, sorted.
    fn granted(rules: impl IntoIterator<Item = PolicyRule>) -> Vec<(String, String, String)> {
        let mut granted = Vec::new();
        for rule in rules {
            for group in rule.api_groups.unwrap() {
                for resource in rule.resources.clone().unwrap() {
                    for verb in &rule.verbs {
                        granted.push((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
        granted.sort();
        granted
    }

    fn triples(permissions: impl IntoIterator<Item = Permission>) -> Vec<(String, String, String)> {
        let mut triples: Vec<(String, String, String)> = permissions
            .into_iter()
            .map(|p| (p.group.into(), p.resource.into(), p.verb.into()))
            .collect();
        triples.sort();
        triples
    }

    #[test]
    fn every_permission_is_granted_by_exactly_one_rule_and_nothing_more() {
        let operator = granted(operator_rules().into_iter().chain([lease_rule()]));
        let wanted = triples(
            operator_permissions()
                .into_iter()
                .chain(delegated_permissions()),
        );
        assert_eq!(operator, wanted);
        assert!(!operator.iter().any(|(_, r, v)| r == "*" || v == "*"));
        assert_eq!(granted(dataplane_rules()), triples(dataplane_permissions()));
        // Whatever the data plane's Role grants, the operator holds.
        let holds = triples(
            operator_permissions()
                .into_iter()
                .chain(delegated_permissions()),
        );
        assert!(triples(dataplane_permissions())
            .iter()
            .all(|p| holds.contains(p)));
        let agent = granted(node_agent_rules());
        assert_eq!(agent, triples(node_agent_permissions()));
        assert!(!agent.iter().any(|(_, r, v)| r == "*" || v == "*"));
    }
}
