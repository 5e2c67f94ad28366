//! The local node runtime: sandboxed instances (namespaces, cgroups, overlayfs) and their network.
//!
//! The daemon describes an instance with plain data ([`InstanceConfig`]); this crate turns it into
//! kernel objects. No helper process stays per instance: [`Runtime::spawn`] has the runtime's
//! spawner (one small single-threaded process, the paracloud binary's `__spawner` mode, see
//! [`run_hidden_command_if_requested`]) clone a child into new namespaces, which runs sandbox-init
//! at once: it builds the root filesystem and then execs the service's command, keeping the pid.
//!
//! # Code map
//!
//! - `spawn`: daemon side of a start (clone3, pipes, veth, handshake); `spawner`: the process
//!   that clones sandbox-init for the daemon, and its protocol; `sandbox_init`: child side;
//!   `protocol`: the typed messages between them (a restore's plan included); `paths`: where an
//!   instance's own files lie in its instance directory; `start_steps`: when each step of a start
//!   ended, on both sides, when asked ([`Runtime::spawn_with_steps`], for benchmarks).
//! - `cgroups`: [`CgroupManager`] with v1 (hybrid included) and v2 implementations over a root
//!   path; `procfs`: pids, pidfds, adoption, waiting; `nsexec`: [`Runtime::exec`].
//! - `network` (bridges, async rtnetlink) and `netlink` (blocking requests with rtnetlink's
//!   message builders); `firewall` (the host's nftables rules for each bridge: what instances
//!   reach of the host); `mounts`, `identity` (user, capabilities, env, exec), `seccomp`.
//! - `handover`: listening sockets duplicated out of a process and passed to its successor
//!   (socket activation), for the daemon's supervision of the data plane.
//! - `criu`: checkpoint of a running instance and restore into a new slot with CRIU
//!   ([`Runtime::checkpoint`], [`Runtime::restore`]; the restore's helper is sandbox-init).
//! - `sys`: **Architecture Invariant:** the only module with `unsafe`.
//!
//! # Spawn, step by step
//!
//! 1. Create the instance cgroup in every hierarchy, with its limits.
//! 2. The spawner's clone3(NEWNS|NEWPID|NEWNET|NEWUTS|NEWIPC, CLONE_PARENT, CLONE_PIDFD,
//!    CLONE_INTO_CGROUP of the cgroup2 directory); the child runs sandbox-init with the two pipes
//!    the daemon passed. Without a spawner (it died; CRIU's restores), the daemon's own clone3,
//!    whose child only execs `helper_exe __sandbox-init CFG_FD ERR_FD`.
//! 3. Then: config to the child, log file, veth (peer created as eth0 directly in the child's
//!    netns), then "go".
//! 4. The child makes the instance directories and the /etc files and builds the root
//!    meanwhile, and on "go" joins its v1 cgroups by writing "0" to
//!    their `tasks` files (moving oneself skips the global threadgroup lock whose writer waits an
//!    RCU grace period, ~10 ms per cgroup.procs write), pivots, sets up eth0, drops privileges
//!    and execs the command.
//! 5. The error pipe closes at that exec (close-on-exec): EOF is success, text is the failure.
//!
//! **Architecture Invariant:** the instance's process is the daemon's direct child (the spawner's
//! clone takes CLONE_PARENT; no double fork), so [`Runtime::wait`] gets its exit status; it outlives the daemon and is re-adopted
//! with [`Runtime::adopt`] (pid plus start time).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod capsule;
pub mod capsule_output;
pub mod cgroups;
mod criu;
mod disk;
mod firewall;
pub mod handover;
mod identity;
mod init;
pub mod limits;
mod mounts;
mod netlink;
mod network;
mod nsexec;
mod paths;
mod procfs;
mod protocol;
mod sandbox_init;
mod seccomp;
mod spawn;
mod spawner;
pub mod start_steps;
mod sys;
mod userns;
pub mod volume;

pub use capsule::CapsuleConfig;
pub use cgroups::{CgroupManager, CgroupMode};
pub use criu::Checkpoint;

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
    /// argv of the first process; `argv[0]` is looked up in PATH of `env` when it has no '/'.
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
    /// Host paths handed to the instance's user (owner and group as `user` resolves in the
    /// instance) before its command runs: its PaCI socket directory and socket, the volumes of a
    /// service with a `user`.
    #[serde(default)]
    pub owned: Vec<PathBuf>,
    /// The host ids root and the other users of the instance are (see `userns`); `None`: the
    /// host's own ids.
    #[serde(default)]
    pub userns: Option<IdRange>,
    /// What the service asks of its sandbox beyond the image (an init, a read-only root, tmpfs
    /// mounts, resource limits of the process, kernel parameters).
    #[serde(default)]
    pub sandbox: Sandbox,
}

/// Settings of an instance's sandbox that Compose files use; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// A minimal init is pid 1: it runs the command as its child, forwards every signal to it,
    /// reaps orphans, and exits as the command does.
    pub init: bool,
    /// The root filesystem is read-only; volumes, tmpfs mounts, /tmp and /dev/shm stay
    /// writable.
    pub read_only: bool,
    pub tmpfs: Vec<Tmpfs>,
    /// Bytes of /dev/shm; `None`: 64 MiB, as Docker.
    pub shm_size: Option<u64>,
    /// Process resource limits (setrlimit) the command starts with.
    pub rlimits: Vec<Rlimit>,
    /// Kernel parameters of the instance's own namespaces, as `("net.core.somaxconn", "1024")`.
    pub sysctls: Vec<(String, String)>,
}

/// A tmpfs mounted in the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    /// Absolute path inside the instance.
    pub target: String,
    /// Bytes; `None`: the kernel's default (half of the memory).
    pub size: Option<u64>,
    /// Permission bits of its root, such as 0o1777.
    pub mode: Option<u32>,
}

/// One resource limit, by its name without `RLIMIT_` (`nofile`, `nproc`, `core`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// Ids `0..size` inside an instance are host ids `host..host + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rootfs {
    /// Host /usr, /bin, /sbin, /lib*, /etc read-only, plus extra host paths at the same place.
    Host { extra_paths: Vec<PathBuf> },
    /// A directory as the read-only lower layer.
    Dir { path: PathBuf },
    /// Image layers (unpacked directories, bottom first) stacked read-only as overlayfs lower
    /// layers, shared by every instance of the image.
    Layers { layers: Vec<PathBuf> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the instance.
    pub target: String,
    pub read_only: bool,
    /// A named volume of this size: `source` becomes a filesystem of its own of that size
    /// (see [`volume`]) before the instance starts.
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The application's bridge (made by [`Runtime::ensure_network`]).
    pub bridge: String,
    /// The instance's address and prefix on the bridge, e.g. 10.213.0.16/24.
    pub address: Ipv4Net,
    /// For an application split into networks: every network of the bridge, and whether the
    /// instance is on it. Empty: the application is one network.
    #[serde(default)]
    pub segments: Vec<(String, bool)>,
    /// Addresses outside the bridge's subnet that the instance reaches through its gateway
    /// (the application's fixed service addresses), with that gateway.
    #[serde(default)]
    pub routes: Vec<Ipv4Addr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Addresses the bridge itself answers on besides the gateway (the application's service
    /// addresses). The instance knows the bridge's link-layer address for these and the
    /// gateway from its start (permanent neighbour entries), so it never asks for them: learned
    /// entries of many instances would fill the kernel's neighbour table, which all network
    /// namespaces share.
    #[serde(default)]
    pub bridge_addresses: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Fraction of cores.
    pub cpu: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes of the writable layer, a filesystem of its own (see `disk`); `None`: on the
    /// state root's filesystem, unlimited.
    pub disk: Option<u64>,
    /// Bytes of memory the kernel reclaims from the instance last under memory pressure
    /// (memory.low; memory.soft_limit_in_bytes in v1).
    #[serde(default)]
    pub memory_low: Option<u64>,
    /// Its share of the CPU under contention, in v1 cpu.shares (1024 a core's; cpu.weight in v2,
    /// converted as systemd does).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
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

/// Pins any process (not only an instance) by pid and start time through a pidfd, as
/// [`Runtime::adopt`] does: None if it is gone.
pub fn adopt_process(pid: i32, start_time: u64) -> Result<Option<Process>> {
    procfs::adopt(pid, start_time)
}

/// Waits until the process exits; for a child, reaps it and returns (exit code, signal number).
pub async fn wait_process(process: &Process) -> Result<(Option<i32>, Option<i32>)> {
    procfs::wait_exit(process).await
}

/// Sends `signal` to the process through its pidfd (never to a process that reused its pid).
pub fn signal_process(process: &Process, signal: nix::sys::signal::Signal) -> Result<()> {
    procfs::pidfd_send_signal(&process.pidfd, signal as i32)
        .map_err(|e| Error::sys(format!("signalling pid {}", process.pid), e))
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
    /// The TCP endpoints the host serves this bridge's instances on (the data plane's listeners
    /// on the service addresses): the only ones of the host they can open a connection to.
    #[serde(default)]
    pub served: Vec<SocketAddrV4>,
    /// The UDP endpoints the host serves them on: the only ones of the host they can send
    /// datagrams to.
    #[serde(default)]
    pub served_udp: Vec<SocketAddrV4>,
    /// When the application is split into networks: each network, whose instances reach only
    /// each other and the endpoints served to that network. Empty: one network, `served` for
    /// all.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

/// One network of a split application on its bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The network's name, a DNS label.
    pub name: String,
    /// The TCP endpoints served to its instances (its services' addresses and ports).
    pub served: Vec<SocketAddrV4>,
    /// The UDP endpoints served to them.
    #[serde(default)]
    pub served_udp: Vec<SocketAddrV4>,
    /// The addresses of its instances at the time the rules are written; instances started
    /// later join with their attachment's `segments`.
    pub members: Vec<Ipv4Addr>,
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
    #[error("{action} of {id} by CRIU failed: {message}")]
    Criu {
        id: String,
        action: &'static str,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An OS error with what was being done and on which object.
    pub(crate) fn sys(context: impl Into<String>, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) => Error::Sys {
                context: context.into(),
                source: nix::Error::from_raw(code),
            },
            None => Error::Io(std::io::Error::new(
                err.kind(),
                format!("{}: {err}", context.into()),
            )),
        }
    }
}

/// What [`Runtime::exec_output`] saw of a command run inside an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, or 128 + the signal number when a signal ended it.
    pub code: i32,
    /// The last [`EXEC_OUTPUT_LIMIT`] bytes it wrote to stdout (the rest is read and dropped, so
    /// a chatty command never blocks on a full pipe nor fills the daemon's memory).
    pub stdout: Vec<u8>,
    /// The same for stderr.
    pub stderr: Vec<u8>,
}

/// What [`ExecOutput`] keeps of each stream: its last 64 KiB.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// The first call of the paracloud binary's `main`: when `argv[1]` is one of the runtime's hidden
/// commands (sandbox-init for [`Runtime::spawn`], nsexec for [`Runtime::exec`]) it runs it and never
/// returns; otherwise it returns at once.
pub fn run_hidden_command_if_requested() {
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        return;
    };
    if command == sandbox_init::COMMAND {
        sandbox_init::main(args.collect());
    } else if command == nsexec::COMMAND {
        nsexec::main(args.collect());
    } else if command == capsule::COMMAND {
        capsule::main(args.collect());
    } else if command == spawner::COMMAND {
        spawner::main(args.collect());
    } else if command == userns::PROBE_COMMAND {
        userns::probe_main(args.collect());
    }
}

/// For the command line's client commands: when the reader of standard output goes away
/// (`paracloud events | head`), a failed write to it ends the process by SIGPIPE, quietly, as
/// `ls | head` ends. SIGPIPE itself stays ignored, so that a write to a socket whose peer has
/// closed (a daemon that went away mid-request) is an error the command reports, never the
/// silent end of the process.
pub fn end_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `println!` panics when its write fails.
        end_if_stdout_reader_gone();
        default(info)
    }));
}

/// Ends the process by SIGPIPE when the reader of standard output has gone; returns otherwise.
pub fn end_if_stdout_reader_gone() {
    if sys::stdout_reader_gone() {
        sys::die_of_sigpipe()
    }
}

/// The rows and columns of the terminal `fd`; `None` when it is not a terminal.
pub fn terminal_size(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u16, u16)> {
    sys::terminal_size(fd).ok()
}

/// Sets the rows and columns of the terminal `fd` (its foreground processes get SIGWINCH).
pub fn set_terminal_size(
    fd: std::os::fd::BorrowedFd<'_>,
    rows: u16,
    cols: u16,
) -> std::io::Result<()> {
    sys::set_terminal_size(fd, rows, cols)
}

/// The files sandbox-init writes into the instance directory and bind-mounts over the instance's
/// /etc/hosts, /etc/hostname and /etc/resolv.conf. Rewrite them in place (not by rename) to change
/// what a running instance sees.
pub fn etc_file_path(instance_dir: &Path, name: EtcFile) -> PathBuf {
    paths::etc_file_path(instance_dir, name)
}

/// One of the generated /etc files of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcFile {
    Hosts,
    Hostname,
    ResolvConf,
}

/// The content of an instance's /etc/hosts: localhost, its own address and name, then `cfg.hosts`.
pub fn render_hosts(cfg: &InstanceConfig) -> String {
    sandbox_init::render_hosts(cfg)
}

pub struct Runtime {
    pub config: RuntimeConfig,
    cgroups: Box<dyn CgroupManager>,
    capsule_runners: capsule::WarmRunners,
    spawner: spawner::SpawnerSlot,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("cgroups", &self.cgroups)
            .field("capsule_runners", &self.capsule_runners)
            .field("spawner", &self.spawner)
            .finish()
    }
}

impl Runtime {
    /// Detects the cgroup layout under `config.cgroup_root` (v2, or v1 with or without the hybrid
    /// unified hierarchy) once, at start.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let cgroups = cgroups::detect(&config.cgroup_root, &config.cgroup_parent)?;
        Ok(Self::with_cgroup_manager(config, cgroups))
    }

    /// A runtime with a given cgroup manager (tests, other layouts).
    pub fn with_cgroup_manager(config: RuntimeConfig, cgroups: Box<dyn CgroupManager>) -> Self {
        Self {
            config,
            cgroups,
            capsule_runners: capsule::WarmRunners::default(),
            spawner: spawner::SpawnerSlot::default(),
        }
    }

    /// The cgroup layout found at start.
    pub fn cgroup_mode(&self) -> CgroupMode {
        self.cgroups.mode()
    }

    /// Creates (or completes) the bridge with its addresses, and installs (or replaces) the
    /// host's firewall rules for it; idempotent. Needs nftables' `nft`.
    pub async fn ensure_network(&self, net: &NetworkConfig) -> Result<()> {
        network::ensure_network(net).await
    }
    /// Removes the bridge and its firewall rules; idempotent.
    pub async fn remove_network(&self, bridge: &str) -> Result<()> {
        network::remove_network(bridge).await
    }
    /// Whether instances can run in user namespaces of their own on this machine, with their
    /// image layers under `layers` (idmapped mounts of that filesystem, an overlay over them):
    /// tried in a helper process, in a mount namespace of its own, in a directory made and
    /// removed under `layers`. An error says what failed.
    pub fn check_user_namespaces(&self, layers: &Path) -> std::result::Result<(), String> {
        let dir = layers.join(format!(".probe-userns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let output = std::process::Command::new(&self.config.helper_exe)
            .arg(userns::PROBE_COMMAND)
            .arg(&dir)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let output =
            output.map_err(|e| format!("cannot run {}: {e}", self.config.helper_exe.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }
    /// Starts an instance; returns once its command has been exec'd (or fails with the reason).
    pub async fn spawn(&self, cfg: &InstanceConfig) -> Result<Process> {
        let mut steps = start_steps::DaemonSteps::new(false);
        spawn::spawn(
            &self.config,
            self.cgroups.as_ref(),
            &self.spawner,
            cfg,
            &mut steps,
        )
        .await
    }
    /// The pid of the process that clones new instances (see the `spawner` module), while one
    /// runs: it starts with the first spawn.
    pub fn spawner_pid(&self) -> Option<u32> {
        self.spawner.pid()
    }
    /// [`Runtime::spawn`], noting when each step of the start ended, on both sides.
    pub async fn spawn_with_steps(
        &self,
        cfg: &InstanceConfig,
    ) -> Result<(Process, start_steps::StartSteps)> {
        let mut steps = start_steps::DaemonSteps::new(true);
        let process = spawn::spawn(
            &self.config,
            self.cgroups.as_ref(),
            &self.spawner,
            cfg,
            &mut steps,
        )
        .await?;
        Ok((process, steps.finish(&cfg.dir)))
    }
    /// Checkpoints the running instance `process` (started with `cfg`) into the directory
    /// `images` with the CRIU binary `criu`; its processes are left stopped: kill them once
    /// the restore succeeded, or send SIGCONT to let them run on.
    pub async fn checkpoint(
        &self,
        criu: &Path,
        process: &Process,
        cfg: &InstanceConfig,
        images: &Path,
    ) -> Result<Checkpoint> {
        let refused = match (cfg.limits.disk, cfg.userns) {
            (Some(_), _) => Some("its writable layer is a filesystem of its own (a disk limit)"),
            (_, Some(_)) => Some("it runs in a user namespace of its own (its service's `migrate = \"criu\"` or `userns = false` runs it with host ids, which CRIU can carry)"),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(Error::Criu {
                id: cfg.id.clone(),
                action: "checkpoint",
                message: format!("{why}, which CRIU migration does not carry: migrate it with --via restart or --via paci"),
            });
        }
        criu::checkpoint(criu, process, cfg, images).await
    }
    /// Restores a checkpoint as the instance `cfg` (a new slot: its address, cgroup, log, /etc
    /// files and mounts); returns once the restored processes run.
    pub async fn restore(
        &self,
        criu: &Path,
        cfg: &InstanceConfig,
        checkpoint: &Checkpoint,
    ) -> Result<Process> {
        spawn::restore(&self.config, self.cgroups.as_ref(), cfg, criu, checkpoint).await
    }
    /// Re-adopts a process started earlier (by this or a previous daemon): None if it is gone.
    pub fn adopt(&self, pid: i32, start_time: u64) -> Result<Option<Process>> {
        procfs::adopt(pid, start_time)
    }
    /// Waits until the process exits and says how.
    pub async fn wait(&self, id: &str, process: &Process) -> Result<Exit> {
        let (code, signal) = procfs::wait_exit(process).await?;
        // Read before cleanup removes the cgroup; a missing counter means no OOM kill was seen.
        let oom_killed = self.cgroups.oom_kills(id).unwrap_or(0) > 0;
        Ok(Exit {
            code,
            signal,
            oom_killed,
        })
    }
    /// Sends a signal to the instance's first process.
    ///
    /// That process is pid 1 of its namespace: the kernel delivers only signals it has a handler
    /// for (SIGKILL always), so a stop falls back to SIGKILL after the grace period.
    pub fn signal(&self, process: &Process, signal: nix::sys::signal::Signal) -> Result<()> {
        procfs::pidfd_send_signal(&process.pidfd, signal as i32)
            .map_err(|e| Error::sys(format!("sending {signal} to pid {}", process.pid), e))
    }
    /// Name of the host side of an instance's veth pair: at most 15 bytes, stable for an id (so a
    /// restarted daemon finds it), distinct between ids and between runtimes of other cgroup
    /// parents.
    pub fn veth_name(&self, id: &str) -> String {
        network::veth_host_name(&self.config.cgroup_parent, id)
    }

    /// Kills every process left in the instance's cgroup and removes the cgroup; idempotent.
    /// The host's neighbour entry for the instance's address stays: it is right for the next
    /// instance at that address (the MAC follows the address) and goes with the bridge.
    ///
    /// Blocks while the kernel finishes the kills (usually a few milliseconds, at most about
    /// 5 s before it gives up with an error); from async code prefer `spawn_blocking`.
    pub fn cleanup(&self, id: &str) -> Result<()> {
        let cgroup = self.cgroups.destroy(id);
        // The veth pair dies with the instance's netns, but the kernel tears a netns down
        // asynchronously: delete the host side now so the name is free and nothing lingers.
        let veth = netlink::delete_link_if_exists(&self.veth_name(id));
        cgroup?;
        veth
    }
    pub fn usage(&self, id: &str) -> Result<Usage> {
        self.cgroups.usage(id)
    }
    /// Whether the process `pid` (of this pid namespace) is one of the instance's: in its cgroup.
    pub fn holds(&self, id: &str, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| self.cgroups.holds(id, &text))
    }
    /// Changes the CPU limit of a running instance in cores (`None`: unlimited), at once.
    pub fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()> {
        self.cgroups.set_cpu(id, cpu)
    }
    /// Runs a command inside a running instance (its namespaces, root and cgroup), for exec health
    /// checks; returns the exit code, or an error after the timeout. The command gets the
    /// environment of the instance's first process, with `env` over it: what the instance was
    /// configured with, which a program that writes its title over its environment (PostgreSQL,
    /// Redis) no longer shows.
    pub async fn exec(
        &self,
        process: &Process,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<i32> {
        Ok(self.exec_output(process, argv, env, timeout).await?.code)
    }
    /// Like [`Runtime::exec`], also returning the end of what the command printed.
    pub async fn exec_output(
        &self,
        process: &Process,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        nsexec::run(&self.config.helper_exe, process, argv, env, timeout).await
    }
    /// Attaches a capsule to a running instance (see [`capsule`]): returns the running capsule
    /// (stdout and stderr piped, or all three on `terminal`). Call [`Runtime::detach`] once it
    /// has exited, whatever happened.
    pub fn attach(
        &self,
        target: &Process,
        config: &CapsuleConfig,
        terminal: Option<OwnedFd>,
    ) -> Result<tokio::process::Child> {
        capsule::attach(
            &self.config.helper_exe,
            &self.capsule_runners,
            self.cgroups.as_ref(),
            target,
            config,
            terminal,
        )
    }
    /// Removes what is left of a capsule (processes, cgroup, scratch directory); idempotent.
    pub fn detach(&self, config: &CapsuleConfig) -> Result<()> {
        capsule::detach(self.cgroups.as_ref(), config)
    }
    /// Starts capsule runners ahead (a few, idle until used), so that the next attaches without
    /// a terminal skip the exec of the helper. Call it from a Tokio runtime, off the critical
    /// path (e.g. after a detach); a runtime that never calls it starts every runner on attach.
    pub fn keep_capsule_runners_warm(&self) -> Result<()> {
        self.capsule_runners.fill(&self.config.helper_exe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon runs these futures with `tokio::spawn`: they must stay `Send`.
    #[allow(dead_code, reason = "compiles or not; never runs")]
    fn futures_are_send(rt: &Runtime, cfg: &InstanceConfig, p: &Process, net: &NetworkConfig) {
        fn send<T: Send>(_: T) {}
        send(rt.spawn(cfg));
        send(rt.wait("id", p));
        send(rt.exec(p, &[], &[], Duration::ZERO));
        send(rt.ensure_network(net));
        send(rt.remove_network("br"));
    }

    #[test]
    fn runtime_is_shareable_between_tasks() {
        fn sync_send<T: Send + Sync>() {}
        sync_send::<Runtime>();
    }
}
