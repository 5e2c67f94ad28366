//! The agent's state, shared by its servers: its settings, the pods last found on the node, the
//! PaCI servers it runs for them, their load reports, the runtime that attaches capsules, and
//! the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use paracloud_paci::LoadReport;

use crate::oci::Pod;

/// The OCI runtime the node's CRI runtime starts containers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciRuntime {
    Crun,
    Runc,
}

impl OciRuntime {
    /// Its program, found on PATH.
    pub fn program(self) -> &'static str {
        match self {
            OciRuntime::Crun => "crun",
            OciRuntime::Runc => "runc",
        }
    }
}

/// Where the agent keeps its files and finds the node's containers.
#[derive(Debug, Clone)]
pub struct Config {
    /// `agent.sock`, `audit.log`, `paci/<pod uid>/paci.sock`, `capsules/`, `images/`, and
    /// `paracloud`, a link to its own binary.
    pub root: PathBuf,
    pub runtime: OciRuntime,
    /// The OCI runtime's state directory (its `--root`), e.g. /run/containerd/runc/k8s.io.
    pub runtime_root: PathBuf,
    /// The cgroup filesystem root, normally /sys/fs/cgroup.
    pub cgroup_root: PathBuf,
    /// Where capsules' cgroups are made (under each hierarchy).
    pub cgroup_parent: String,
    /// The paracloud binary, re-executed as a capsule's runner.
    pub helper_exe: PathBuf,
}

impl Config {
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// The pod's PaCI directory: what its hostPath volume with `subPathExpr: $(POD_UID)` mounts
    /// at /run/paracloud.
    pub fn paci_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join("paci").join(pod_uid)
    }
}

/// A pod's latest load report and when it came (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Load {
    pub report: LoadReport,
    pub at_ms: u64,
}

/// The agent's shared state.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    /// Attaches capsules (its cgroups under [`Config::cgroup_parent`]).
    pub runtime: paracloud_runtime::Runtime,
    /// The pods found by the last refresh, by uid.
    pods: RwLock<BTreeMap<String, Pod>>,
    /// The PaCI server of each pod that has one, by uid.
    pub servers: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
    loads: Mutex<BTreeMap<String, Load>>,
    /// The image store of built-in capsules, its writers one at a time.
    pub images: Mutex<paracloud_image::Store>,
    /// Refreshes one at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    /// The next capsule run's number (names its cgroup and output directory).
    pub next_run: std::sync::atomic::AtomicU64,
    /// The API server, for what pods ask to change; `None`: the agent runs without it.
    pub cluster: Option<crate::cluster::Cluster>,
    /// The events sent to the pods (by uid) and waiting for their answers.
    pub events: paracloud_paci_events::Events<String>,
    /// Each PaCI pod's CPU and memory limits as last seen, to tell it when they change.
    pub limits: Mutex<BTreeMap<String, Limits>>,
    /// Which application each pod runs for, proven by its owners: one cache for the loops that
    /// ask (schedules, load reports), so that a pod's owners are read once per
    /// [`crate::proven::APP_TTL`].
    pub proven: tokio::sync::Mutex<crate::proven::Proven>,
}

/// A container's CPU (cores) and memory (bytes) limits; `None`: unlimited.
pub type Limits = (Option<f64>, Option<u64>);

impl Agent {
    pub fn new(
        config: Config,
        runtime: paracloud_runtime::Runtime,
        images: paracloud_image::Store,
        cluster: Option<crate::cluster::Cluster>,
    ) -> Self {
        Self {
            config,
            runtime,
            pods: RwLock::default(),
            servers: Mutex::default(),
            loads: Mutex::default(),
            images: Mutex::new(images),
            refreshing: tokio::sync::Mutex::new(()),
            next_run: std::sync::atomic::AtomicU64::new(now_ms()),
            cluster,
            events: paracloud_paci_events::Events::new(now_ms),
            limits: Mutex::default(),
            proven: tokio::sync::Mutex::default(),
        }
    }

    pub fn pods(&self) -> BTreeMap<String, Pod> {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pod(&self, uid: &str) -> Option<Pod> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn set_pods(&self, pods: BTreeMap<String, Pod>) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.retain(|uid, _| pods.contains_key(uid));
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = pods;
    }

    pub fn load(&self, uid: &str) -> Option<Load> {
        self.loads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn set_load(&self, uid: &str, report: LoadReport) {
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).insert(
            uid.to_string(),
            Load {
                report,
                at_ms: now_ms(),
            },
        );
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
