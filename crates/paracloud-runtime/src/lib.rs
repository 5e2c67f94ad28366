//! The local node runtime: sandboxed instances (namespaces, cgroups, overlayfs) and their network.
//!
//! The daemon describes an instance with plain data ([`InstanceConfig`]); this crate turns it into
//! kernel objects. No helper process stays per instance: [`Runtime::spawn`] clones a child into new
//! namespaces that re-executes the paracloud binary in its sandbox-init mode
//! ([`run_hidden_command_if_requested`]),
//! which builds the root filesystem and then execs the service's command, keeping the pid.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where the runtime keeps its kernel objects; every test gets its own values.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The cgroup filesystem root, normally /sys/fs/cgroup.
    pub cgroup_root: PathBuf,
    /// Relative path under each hierarchy (v1) or the unified root (v2), e.g. "paracloud".
    pub cgroup_parent: String,
    /// The binary whose `main` starts with [`run_hidden_command_if_requested`] (normally the
    /// running paracloud binary, /proc/self/exe): the runtime re-executes it for sandbox-init and exec.
    pub helper_exe: PathBuf,
}

/// Everything needed to start one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceConfig {
    /// Unique, file-name and cgroup safe, e.g. "shop-api-2".
    pub id: String,
    /// Hostname inside the instance, e.g. "api.2".
    pub hostname: String,
    /// Private directory of the instance: writable layer, work dir, mount point, logs.
    pub dir: PathBuf,
    pub rootfs: Rootfs,
    /// argv of the first process; argv[0] is looked up in PATH of `env` when it has no '/'.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group` (names from the instance's /etc/passwd, /etc/group).
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    /// Lines of the instance's /etc/hosts beyond localhost and its own name.
    pub hosts: Vec<(String, Ipv4Addr)>,
    pub network: Option<NetworkAttachment>,
    pub limits: Limits,
    /// Capability names kept, e.g. "CAP_NET_BIND_SERVICE"; every other one is dropped.
    pub capabilities: Vec<String>,
    /// stdout and stderr of the instance are appended to this file.
    pub log_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rootfs {
    /// Host /usr, /bin, /sbin, /lib*, /etc read-only, plus extra host paths at the same place.
    Host { extra_paths: Vec<PathBuf> },
    /// A directory as the read-only lower layer.
    Dir { path: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the instance.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The application's bridge (made by [`Runtime::ensure_network`]).
    pub bridge: String,
    /// The instance's address and prefix on the bridge, e.g. 10.213.0.16/24.
    pub address: Ipv4Net,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Fraction of cores.
    pub cpu: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// A started (or re-adopted) instance process.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it names the
    /// process without ambiguity across pid reuse.
    pub start_time: u64,
    /// Readable when the process exits.
    pub pidfd: OwnedFd,
    /// Whether this process is our child (only children give their exit status).
    pub is_child: bool,
}

/// How an instance process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code when it exited normally (None when killed or unknown).
    pub code: Option<i32>,
    /// Signal number when it was killed.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended a process of the instance.
    pub oom_killed: bool,
}

/// A bridge for one application.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Interface name, at most 15 bytes.
    pub bridge: String,
    /// The bridge's own address and the subnet, e.g. 10.213.0.1/24.
    pub gateway: Ipv4Net,
    /// Extra addresses put on the bridge (the stable service addresses), in the same subnet.
    pub service_addresses: Vec<Ipv4Addr>,
}

/// Resource use of one instance, read from its cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_usage_ns: u64,
    pub pids: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{context}: {source}")]
    Sys { context: String, source: nix::Error },
    #[error("network: {0}")]
    Network(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("sandbox of {id} failed before the command ran: {message}")]
    Sandbox { id: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The first call of the paracloud binary's `main`: when argv[1] is one of the runtime's hidden
/// commands (sandbox-init for [`Runtime::spawn`], nsexec for [`Runtime::exec`]) it runs it and never
/// returns; otherwise it returns at once.
pub fn run_hidden_command_if_requested() {
    unimplemented!()
}

pub struct Runtime {
    pub config: RuntimeConfig,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        Ok(Self { config })
    }
    /// Creates (or completes) the bridge with its addresses; idempotent.
    pub async fn ensure_network(&self, _net: &NetworkConfig) -> Result<()> {
        unimplemented!()
    }
    /// Removes the bridge; idempotent.
    pub async fn remove_network(&self, _bridge: &str) -> Result<()> {
        unimplemented!()
    }
    /// Starts an instance; returns once its command has been exec'd (or fails with the reason).
    pub async fn spawn(&self, _cfg: &InstanceConfig) -> Result<Process> {
        unimplemented!()
    }
    /// Re-adopts a process started earlier (by this or a previous daemon): None if it is gone.
    pub fn adopt(&self, _pid: i32, _start_time: u64) -> Result<Option<Process>> {
        unimplemented!()
    }
    /// Waits until the process exits and says how.
    pub async fn wait(&self, _id: &str, _process: &Process) -> Result<Exit> {
        unimplemented!()
    }
    /// Sends a signal to the instance's first process.
    pub fn signal(&self, _process: &Process, _signal: nix::sys::signal::Signal) -> Result<()> {
        unimplemented!()
    }
    /// Kills every process left in the instance's cgroup and removes the cgroup; idempotent.
    pub fn cleanup(&self, _id: &str) -> Result<()> {
        unimplemented!()
    }
    pub fn usage(&self, _id: &str) -> Result<Usage> {
        unimplemented!()
    }
    /// Runs a command inside a running instance (its namespaces, root and cgroup), for exec health
    /// checks; returns the exit code, or an error after the timeout.
    pub async fn exec(&self, _process: &Process, _argv: &[String], _timeout: Duration) -> Result<i32> {
        unimplemented!()
    }
}
