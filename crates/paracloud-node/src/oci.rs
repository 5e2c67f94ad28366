//! The node's containers as its OCI runtime knows them, as plain data: an entry of the runtime's
//! `list` and the parts of its bundle's config.json the agent reads (annotations, cgroups path,
//! user), turned into pods by the annotations containerd's and CRI-O's CRI plugins write.

use std::collections::BTreeMap;

use serde::Deserialize;

/// containerd's CRI annotations.
pub mod containerd {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
}

/// CRI-O's annotations.
pub mod crio {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// The pod's or container's Kubernetes annotations, as one JSON object.
    pub const ANNOTATIONS: &str = "io.kubernetes.cri-o.Annotations";
}

/// Paracloud's own annotations, set by the renderer on the pod template (and passed to the OCI
/// config by the CRI runtime).
pub mod paracloud {
    /// `"true"` on a container that gets its pod's PaCI socket.
    pub const PACI: &str = "paracloud.dev/paci";
    pub const APP: &str = "paracloud.dev/app";
    pub const SERVICE: &str = "paracloud.dev/service";
    /// Where a container mounts its pod's PaCI directory: rendered pods do, which marks them
    /// even where the runtime does not pass pod annotations on (containerd by default).
    pub const PACI_MOUNT: &str = "/run/paracloud";
    /// The environment rendered pods carry their application and service in.
    pub const APP_ENV: &str = "PARACLOUD_APP";
    pub const SERVICE_ENV: &str = "PARACLOUD_SERVICE";
}

/// One entry of `RUNTIME list --format json` (runc's and crun's agree on these fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ListEntry {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    pub status: String,
    pub bundle: String,
}

/// The parts of a bundle's config.json the agent reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Bundle {
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub process: Option<BundleProcess>,
    #[serde(default)]
    pub linux: Option<BundleLinux>,
    #[serde(default)]
    pub mounts: Vec<BundleMount>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BundleMount {
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BundleProcess {
    #[serde(default)]
    pub user: BundleUser,
    /// `NAME=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
}

impl Bundle {
    /// A variable of the container's environment.
    fn env(&self, name: &str) -> Option<String> {
        self.process.as_ref()?.env.iter().find_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    /// An annotation of the container, else the variable the renderer sets instead.
    fn marked(&self, annotation: &str, env: &str) -> Option<String> {
        kubernetes_annotation(&self.annotations, annotation).or_else(|| self.env(env))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BundleUser {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleLinux {
    #[serde(default)]
    pub cgroups_path: Option<String>,
}

/// Whether a container is its pod's sandbox (the pause container) or one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sandbox,
    Container,
}

/// A running container of a pod, with what the agent needs of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Container {
    /// The runtime's id of the container.
    pub id: String,
    pub kind: Kind,
    /// Its name in the pod (empty for the sandbox).
    pub name: String,
    /// Its first process, in the node's pid namespace.
    pub pid: i32,
    /// Its cgroup as `/proc/PID/cgroup` shows it (cgroupfs form), e.g. `/kubepods/podUID/ID`.
    pub cgroup: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Asks for the pod's PaCI socket.
    pub paci: bool,
}

/// Who a pod is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// A pod on this node: its identity, its containers, and the application it runs for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pod {
    #[serde(flatten)]
    pub pod: PodRef,
    /// `paracloud.dev/app` and `paracloud.dev/service`, when the annotations carry them.
    pub app: Option<String>,
    pub service: Option<String>,
    pub containers: Vec<Container>,
}

impl Pod {
    /// Whether a container of the pod asks for its PaCI socket.
    pub fn wants_paci(&self) -> bool {
        self.containers.iter().any(|c| c.paci)
    }

    /// The container of the pod that takes the PaCI socket's ownership: the first asking for it.
    pub fn paci_container(&self) -> Option<&Container> {
        self.containers.iter().find(|c| c.paci)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers
            .iter()
            .find(|c| c.kind == Kind::Container && c.name == name)
    }
}

/// A container's pod, kind and name, from containerd's annotations or CRI-O's; `None` for a
/// container that no CRI runtime started (not a pod's).
fn pod_of(annotations: &BTreeMap<String, String>) -> Option<(PodRef, Kind, String)> {
    let get = |key: &str| annotations.get(key).cloned();
    let (uid, namespace, name, kind, container) =
        if let Some(kind) = get(containerd::CONTAINER_TYPE) {
            (
                get(containerd::SANDBOX_UID)?,
                get(containerd::SANDBOX_NAMESPACE)?,
                get(containerd::SANDBOX_NAME)?,
                kind,
                get(containerd::CONTAINER_NAME).unwrap_or_default(),
            )
        } else {
            (
                get(crio::POD_UID)?,
                get(crio::POD_NAMESPACE)?,
                get(crio::POD_NAME)?,
                get(crio::CONTAINER_TYPE).unwrap_or_else(|| "container".into()),
                get(crio::CONTAINER_NAME).unwrap_or_default(),
            )
        };
    let kind = match kind.as_str() {
        "sandbox" => Kind::Sandbox,
        _ => Kind::Container,
    };
    Some((
        PodRef {
            uid,
            namespace,
            name,
        },
        kind,
        container,
    ))
}

/// A Kubernetes annotation of the container: an OCI annotation of that key, or one inside
/// CRI-O's JSON of the Kubernetes annotations.
fn kubernetes_annotation(annotations: &BTreeMap<String, String>, key: &str) -> Option<String> {
    if let Some(value) = annotations.get(key) {
        return Some(value.clone());
    }
    let nested: BTreeMap<String, String> =
        serde_json::from_str(annotations.get(crio::ANNOTATIONS)?).ok()?;
    nested.get(key).cloned()
}

/// The cgroup of an OCI `cgroupsPath` as `/proc/PID/cgroup` shows it: a cgroupfs path as it is
/// (made absolute), a systemd one (`SLICE:PREFIX:NAME`) expanded as runc and crun expand it
/// (`a-b.slice` lies in `a.slice/a-b.slice`, the unit is `PREFIX-NAME.scope`).
pub fn cgroup_of(cgroups_path: &str) -> Option<String> {
    let path = cgroups_path.trim();
    if path.is_empty() {
        return None;
    }
    let parts: Vec<&str> = path.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        let mut dirs = Vec::new();
        if let Some(stem) = slice.strip_suffix(".slice") {
            if stem != "-" && !stem.is_empty() {
                let mut prefix_parts = String::new();
                for part in stem.split('-') {
                    if !prefix_parts.is_empty() {
                        prefix_parts.push('-');
                    }
                    prefix_parts.push_str(part);
                    dirs.push(format!("{prefix_parts}.slice"));
                }
            }
        }
        let unit = match (prefix, name.ends_with(".slice")) {
            (_, true) => name.to_string(),
            ("", false) => format!("{name}.scope"),
            (prefix, false) => format!("{prefix}-{name}.scope"),
        };
        dirs.push(unit);
        return Some(format!("/{}", dirs.join("/")));
    }
    Some(format!("/{}", path.trim_matches('/')))
}

/// The container of a list entry and its bundle, or `None` when it is not a running pod
/// container. Returns the pod it belongs to with it.
pub fn container_of(entry: &ListEntry, bundle: &Bundle) -> Option<(PodRef, Container)> {
    if entry.status != "running" || entry.pid <= 0 {
        return None;
    }
    let (pod, kind, name) = pod_of(&bundle.annotations)?;
    let user = bundle
        .process
        .as_ref()
        .map(|p| p.user.clone())
        .unwrap_or_default();
    let paci = kind == Kind::Container
        && (kubernetes_annotation(&bundle.annotations, paracloud::PACI).as_deref() == Some("true")
            || bundle
                .mounts
                .iter()
                .any(|m| m.destination.trim_end_matches('/') == paracloud::PACI_MOUNT));
    let cgroup = bundle
        .linux
        .as_ref()
        .and_then(|l| l.cgroups_path.as_deref())
        .and_then(cgroup_of);
    Some((
        pod,
        Container {
            id: entry.id.clone(),
            kind,
            name,
            pid: entry.pid,
            cgroup,
            uid: user.uid,
            gid: user.gid,
            paci,
        },
    ))
}

/// The pods of the node's containers (each container with its bundle), by pod uid. A pod's app
/// and service come from the first of its containers that carries them.
pub fn pods(containers: &[(ListEntry, Bundle)]) -> BTreeMap<String, Pod> {
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for (entry, bundle) in containers {
        let Some((pod, container)) = container_of(entry, bundle) else {
            continue;
        };
        let app = bundle.marked(paracloud::APP, paracloud::APP_ENV);
        let service = bundle.marked(paracloud::SERVICE, paracloud::SERVICE_ENV);
        let slot = pods.entry(pod.uid.clone()).or_insert_with(|| Pod {
            pod,
            app: None,
            service: None,
            containers: Vec::new(),
        });
        slot.app = slot.app.take().or(app);
        slot.service = slot.service.take().or(service);
        slot.containers.push(container);
    }
    for pod in pods.values_mut() {
        pod.containers
            .sort_by(|a, b| (a.kind as u8, &a.name).cmp(&(b.kind as u8, &b.name)));
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_pod_asks_for_paci_by_its_mount_and_names_itself_by_its_environment() {
        // containerd passes no pod annotation to the container's bundle by default.
        let bundle: Bundle = serde_json::from_str(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-uid":"u9","io.kubernetes.cri.sandbox-name":"api-0","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"api"},"process":{"user":{"uid":0,"gid":0},"env":["PATH=/bin","PARACLOUD_APP=shop","PARACLOUD_SERVICE=api"]},"mounts":[{"destination":"/run/paracloud","source":"/var/lib/paracloud-agent/paci/u9"}]}"#,
        )
        .unwrap();
        let entry = ListEntry {
            id: "c9".into(),
            pid: 42,
            status: "running".into(),
            bundle: "/b".into(),
        };
        let pods = pods(&[(entry, bundle)]);
        let pod = &pods["u9"];
        assert!(pod.wants_paci());
        assert_eq!(pod.app.as_deref(), Some("shop"));
        assert_eq!(pod.service.as_deref(), Some("api"));
    }

    fn entry(id: &str, pid: i32) -> ListEntry {
        ListEntry {
            id: id.into(),
            pid,
            status: "running".into(),
            bundle: format!("/run/bundles/{id}"),
        }
    }

    fn bundle(json: &str) -> Bundle {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn runc_and_crun_list_entries_parse() {
        let runc = r#"[{"ociVersion":"1.0.2-dev","id":"c1","pid":25515,"status":"running","bundle":"/tmp/b","rootfs":"/tmp/b/rootfs","created":"2026-12-05T05:50:19Z","annotations":{"x":"y"},"owner":"root"}]"#;
        // crun writes these four fields alone.
        let crun = r#"[{"id":"c1","pid":25515,"status":"running","bundle":"/tmp/b"},{"id":"c2","pid":0,"status":"stopped","bundle":"/tmp/c"}]"#;
        let a: Vec<ListEntry> = serde_json::from_str(runc).unwrap();
        let b: Vec<ListEntry> = serde_json::from_str(crun).unwrap();
        assert_eq!(a[0], b[0]);
        assert_eq!(b[1].status, "stopped");
    }

    #[test]
    fn containerd_annotations_make_a_pod_with_its_sandbox() {
        let sandbox = bundle(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-uid":"u1","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"},"linux":{"cgroupsPath":"/kubepods/podu1/s1"}}"#,
        );
        let web = bundle(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-uid":"u1","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"web","paracloud.dev/paci":"true","paracloud.dev/app":"shop","paracloud.dev/service":"web"},"process":{"user":{"uid":1000,"gid":1000}},"linux":{"cgroupsPath":"kubepods/podu1/c1"}}"#,
        );
        let pods = pods(&[(entry("s1", 10), sandbox), (entry("c1", 11), web)]);
        let pod = &pods["u1"];
        assert_eq!(pod.pod.namespace, "shop");
        assert_eq!(pod.pod.name, "web-0");
        assert_eq!(pod.app.as_deref(), Some("shop"));
        assert_eq!(pod.service.as_deref(), Some("web"));
        assert!(pod.wants_paci());
        let web = pod.container("web").unwrap();
        assert_eq!((web.uid, web.pid), (1000, 11));
        assert_eq!(web.cgroup.as_deref(), Some("/kubepods/podu1/c1"));
        assert_eq!(pod.containers[0].kind, Kind::Sandbox);
        assert!(
            pod.container("").is_none(),
            "the sandbox is no named container"
        );
    }

    #[test]
    fn crio_annotations_and_its_nested_kubernetes_annotations_are_read() {
        let c = bundle(
            r#"{"annotations":{"io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.pod.uid":"u2","io.kubernetes.pod.name":"api-1","io.kubernetes.pod.namespace":"default","io.kubernetes.container.name":"api","io.kubernetes.cri-o.Annotations":"{\"paracloud.dev/paci\":\"true\",\"paracloud.dev/app\":\"shop\"}"}}"#,
        );
        let pods = pods(&[(entry("c", 5), c)]);
        let pod = &pods["u2"];
        assert_eq!(pod.pod.name, "api-1");
        assert_eq!(pod.app.as_deref(), Some("shop"));
        assert_eq!(pod.service, None);
        assert!(pod.container("api").unwrap().paci);
    }

    #[test]
    fn containers_outside_pods_and_stopped_ones_are_left_out() {
        let plain = bundle(r#"{"annotations":{"x":"y"}}"#);
        let pod = bundle(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-uid":"u","io.kubernetes.cri.sandbox-name":"p","io.kubernetes.cri.sandbox-namespace":"n"}}"#,
        );
        let mut stopped = entry("s", 0);
        stopped.status = "stopped".into();
        assert!(pods(&[(entry("a", 3), plain), (stopped, pod)]).is_empty());
    }

    #[test]
    fn the_paci_annotation_must_say_true_and_never_counts_on_the_sandbox() {
        let sandbox = bundle(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-uid":"u","io.kubernetes.cri.sandbox-name":"p","io.kubernetes.cri.sandbox-namespace":"n","paracloud.dev/paci":"true"}}"#,
        );
        let other = bundle(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-uid":"u","io.kubernetes.cri.sandbox-name":"p","io.kubernetes.cri.sandbox-namespace":"n","io.kubernetes.cri.container-name":"c","paracloud.dev/paci":"yes"}}"#,
        );
        assert!(!pods(&[(entry("s", 3), sandbox), (entry("c", 4), other)])["u"].wants_paci());
    }

    #[test]
    fn cgroups_paths_of_both_drivers_become_proc_paths() {
        assert_eq!(
            cgroup_of("/kubepods/burstable/podu/c1").unwrap(),
            "/kubepods/burstable/podu/c1"
        );
        assert_eq!(cgroup_of("kubepods/podu/c1").unwrap(), "/kubepods/podu/c1");
        assert_eq!(
            cgroup_of("kubepods-besteffort-podu.slice:cri-containerd:abc").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu.slice/cri-containerd-abc.scope"
        );
        assert_eq!(cgroup_of("").as_deref(), None);
    }
}
