//! What `paracloud k8s install` prints: the custom resource's definition and the operator, with
//! the least privilege its code needs (`access`), leader election through a Lease in its own
//! namespace, and a locked-down pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::access::{lease_rule, node_agent_rules, operator_rules};
use crate::names::FIELD_MANAGER;
use crate::object::Object;

/// The operator's name: its Deployment, ServiceAccount, roles and Lease.
pub const OPERATOR: &str = "paracloud-operator";

/// The port of the operator's health endpoint (`/healthz`).
pub const HEALTH_PORT: u16 = 8081;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The namespace the operator runs in.
    pub namespace: String,
    /// The image holding the `paracloud` binary.
    pub image: String,
    /// Operators running; one leads at a time.
    pub replicas: u32,
    /// The node agent on every node (PaCI sockets and capsules), for this OCI runtime (`runc`
    /// or `crun`) and its state directory; `None`: no agent, and pods get no PaCI socket.
    pub node_agent: Option<NodeAgent>,
    /// The image of the applications' data planes (holding the `paracloud` binary).
    pub dataplane_image: String,
}

/// The node agent's view of its node's container runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    pub runtime: String,
    /// The runtime's state directory, where containerd's CRI keeps it:
    /// `/run/containerd/runc/k8s.io`.
    pub runtime_root: String,
}

/// The node agent's DaemonSet's name.
pub const NODE_AGENT: &str = "paracloud-node-agent";

/// Where the node agent keeps its state on each node (pods' PaCI directories, its socket, the
/// audit log).
pub const NODE_AGENT_ROOT: &str = "/var/lib/paracloud-agent";

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), OPERATOR.to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            ),
        ])),
        ..Default::default()
    }
}

/// Every object of the installation.
pub fn install(options: &InstallOptions) -> Vec<Object> {
    let ns = options.namespace.as_str();
    let subject = rbac::Subject {
        kind: "ServiceAccount".into(),
        name: OPERATOR.into(),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    };
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_owned(), OPERATOR.to_owned())]);
    let deployment = apps::Deployment {
        metadata: meta(OPERATOR, Some(ns)),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(i32::try_from(options.replicas).unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    service_account_name: Some(OPERATOR.into()),
                    security_context: Some(crate::names::non_root_pod()),
                    containers: vec![core::Container {
                        name: "operator".into(),
                        image: Some(options.image.clone()),
                        // The image's entrypoint is the paracloud binary (a micro-image of it
                        // runs it wherever it lies).
                        args: Some(
                            [
                                "operator".to_owned(),
                                "--lease-namespace".into(),
                                ns.to_owned(),
                                "--health".into(),
                                format!("0.0.0.0:{HEALTH_PORT}"),
                                "--dataplane-image".into(),
                                options.dataplane_image.clone(),
                                // The data planes it runs, followed to scale to zero and back.
                                "--dataplane-stats".into(),
                                format!(
                                    "http://{}-stats.{{namespace}}.svc:{}",
                                    crate::dataplane::dataplane_name("{app}"),
                                    crate::dataplane::STATS_PORT
                                ),
                            ]
                            .into_iter()
                            .chain(options.node_agent.as_ref().map(|_| "--paci".to_owned()))
                            .collect(),
                        ),
                        env: Some(vec![core::EnvVar {
                            name: "POD_NAME".into(),
                            value_from: Some(core::EnvVarSource {
                                field_ref: Some(core::ObjectFieldSelector {
                                    field_path: "metadata.name".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        ports: Some(vec![core::ContainerPort {
                            container_port: i32::from(HEALTH_PORT),
                            name: Some("health".into()),
                            ..Default::default()
                        }]),
                        liveness_probe: Some(core::Probe {
                            http_get: Some(core::HTTPGetAction {
                                path: Some("/healthz".into()),
                                port: IntOrString::String("health".into()),
                                ..Default::default()
                            }),
                            period_seconds: Some(10),
                            ..Default::default()
                        }),
                        resources: Some(crate::names::resources(
                            ("500m", "128Mi"),
                            ("50m", "64Mi"),
                        )),
                        security_context: Some(crate::names::locked_down()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut objects = vec![
        Object::of(&crate::resource::definition()),
        Object::of(&core::Namespace {
            metadata: meta(ns, None),
            ..Default::default()
        }),
        Object::of(&core::ServiceAccount {
            metadata: meta(OPERATOR, Some(ns)),
            ..Default::default()
        }),
        Object::of(&rbac::ClusterRole {
            metadata: meta(OPERATOR, None),
            rules: Some(operator_rules()),
            ..Default::default()
        }),
        Object::of(&rbac::ClusterRoleBinding {
            metadata: meta(OPERATOR, None),
            role_ref: rbac::RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: OPERATOR.into(),
            },
            subjects: Some(vec![subject.clone()]),
        }),
        Object::of(&rbac::Role {
            metadata: meta(OPERATOR, Some(ns)),
            rules: Some(vec![lease_rule()]),
        }),
        Object::of(&rbac::RoleBinding {
            metadata: meta(OPERATOR, Some(ns)),
            role_ref: rbac::RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: OPERATOR.into(),
            },
            subjects: Some(vec![subject]),
        }),
        Object::of(&deployment),
    ];
    if let Some(agent) = &options.node_agent {
        let subject = rbac::Subject {
            kind: "ServiceAccount".into(),
            name: NODE_AGENT.into(),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        };
        objects.extend([
            Object::of(&core::ServiceAccount {
                metadata: meta(NODE_AGENT, Some(ns)),
                ..Default::default()
            }),
            Object::of(&rbac::ClusterRole {
                metadata: meta(NODE_AGENT, None),
                rules: Some(node_agent_rules()),
                ..Default::default()
            }),
            Object::of(&rbac::ClusterRoleBinding {
                metadata: meta(NODE_AGENT, None),
                role_ref: rbac::RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: NODE_AGENT.into(),
                },
                subjects: Some(vec![subject]),
            }),
            Object::of(&node_agent(options, agent)),
        ]);
    }
    objects
}

/// The node agent on every node. It attaches capsules into pods' namespaces and checks which
/// pod a PaCI caller belongs to by its cgroup, so it runs privileged in the node's pid
/// namespace, with the runtime's state, the node's cgroups and its own directory mounted.
fn node_agent(options: &InstallOptions, agent: &NodeAgent) -> apps::DaemonSet {
    let ns = options.namespace.as_str();
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_owned(), NODE_AGENT.to_owned())]);
    let host = |name: &str, path: &str, kind: &str| core::Volume {
        name: name.to_owned(),
        host_path: Some(core::HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(kind.to_owned()),
        }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| core::VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..Default::default()
    };
    apps::DaemonSet {
        metadata: meta(NODE_AGENT, Some(ns)),
        spec: Some(apps::DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    host_pid: Some(true),
                    // Its token: it writes the scale a pod asks for through PaCI, once the
                    // pod's owners prove its application (`access::node_agent_permissions`).
                    service_account_name: Some(NODE_AGENT.into()),
                    tolerations: Some(vec![core::Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    containers: vec![core::Container {
                        name: "agent".into(),
                        image: Some(options.image.clone()),
                        args: Some(vec![
                            "--root".into(),
                            NODE_AGENT_ROOT.into(),
                            "node-agent".into(),
                            "--runtime".into(),
                            agent.runtime.clone(),
                            "--runtime-root".into(),
                            agent.runtime_root.clone(),
                        ]),
                        // The node's name, which its Events report.
                        env: Some(vec![core::EnvVar {
                            name: "NODE_NAME".into(),
                            value_from: Some(core::EnvVarSource {
                                field_ref: Some(core::ObjectFieldSelector {
                                    field_path: "spec.nodeName".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        security_context: Some(core::SecurityContext {
                            privileged: Some(true),
                            ..Default::default()
                        }),
                        resources: Some(crate::names::resources(
                            ("500m", "256Mi"),
                            ("20m", "32Mi"),
                        )),
                        volume_mounts: Some(vec![
                            core::VolumeMount {
                                // Pods' PaCI directories are mounted from here: the sockets
                                // bound later must reach them.
                                mount_propagation: Some("Bidirectional".into()),
                                ..mount("agent", NODE_AGENT_ROOT)
                            },
                            mount("runtime", &agent.runtime_root),
                            mount("containerd", "/run/containerd"),
                            mount("cgroup", "/sys/fs/cgroup"),
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        host("agent", NODE_AGENT_ROOT, "DirectoryOrCreate"),
                        host("runtime", &agent.runtime_root, "DirectoryOrCreate"),
                        host("containerd", "/run/containerd", "Directory"),
                        host("cgroup", "/sys/fs/cgroup", "Directory"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
