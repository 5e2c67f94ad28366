//! Starting an instance, daemon side: clone3 into new namespaces (the child only execs
//! sandbox-init), cgroups and veth while sandbox-init builds the root, then the handshake.
//!
//! **Invariant:** between clone3 and execve the child runs only async-signal-safe code on memory
//! prepared before the clone: the daemon is multi-threaded.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::Interest;

use crate::cgroups::CgroupManager;
use crate::criu::{self, Checkpoint};
use crate::netlink::{self, Netlink};
use crate::network::{check_ifname, instance_mac, veth_host_name};
use crate::protocol::{self, write_message, RestorePlan, ToInit};
use crate::spawner::SpawnerSlot;
use crate::start_steps::{self, DaemonSteps};
use crate::{
    disk, identity, paths, procfs, sandbox_init, sys, Error, InstanceConfig, Process, Result,
    RuntimeConfig,
};

/// sandbox-init normally execs within milliseconds; past this the spawn is abandoned.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a failure report that is kept.
const MAX_REPORT: usize = 64 * 1024;

/// The namespaces of a new instance; a restore's helper gets only mount and network ones (CRIU
/// makes the others from the checkpoint).
const INSTANCE_NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC;
const RESTORE_NAMESPACES: libc::c_int = libc::CLONE_NEWNS | libc::CLONE_NEWNET;
/// How long `criu restore` may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn spawn(
    config: &RuntimeConfig,
    cgroups: &dyn CgroupManager,
    spawner: &SpawnerSlot,
    cfg: &InstanceConfig,
    steps: &mut DaemonSteps,
) -> Result<Process> {
    validate(cfg)?;
    steps.mark("config checked");
    let mut guard = Guard {
        cgroups,
        scope: &config.cgroup_parent,
        cfg,
        child: None,
        armed: true,
    };
    if let Some(size) = cfg.limits.disk {
        let dir = cfg.dir.clone();
        tokio::task::spawn_blocking(move || disk::prepare_image(&dir, size))
            .await
            .map_err(|e| sandbox_error(cfg, format!("making the writable layer: {e}")))?
            .map_err(|e| sandbox_error(cfg, e))?;
        steps.mark("writable layer of its own size");
    }
    if cfg.mounts.iter().any(|m| m.size.is_some()) {
        prepare_volumes(cfg).await?;
        steps.mark("sized volumes");
    }
    cgroups.create(&cfg.id, &cfg.limits)?;
    steps.mark("cgroups created");
    let (pid, start_time) = launch(
        config,
        cgroups,
        Some(spawner),
        cfg,
        &mut guard,
        INSTANCE_NAMESPACES,
        None,
        steps,
    )
    .await?;
    let pidfd = guard.child.take().expect("the child was stored by launch");
    guard.armed = false;
    Ok(Process {
        pid,
        start_time,
        pidfd,
        is_child: true,
    })
}

/// Makes the size-limited volumes the instance mounts, where not made yet.
async fn prepare_volumes(cfg: &InstanceConfig) -> Result<()> {
    for m in &cfg.mounts {
        if let Some(size) = m.size {
            let dir = m.source.clone();
            tokio::task::spawn_blocking(move || crate::volume::ensure_sized(&dir, size))
                .await
                .map_err(|e| sandbox_error(cfg, format!("making a volume: {e}")))?
                .map_err(|e| sandbox_error(cfg, e))?;
        }
    }
    Ok(())
}

/// Restores `checkpoint` as the instance `cfg`: its writable layer becomes a copy of the old
/// one, then sandbox-init prepares its root and network and execs `criu restore`, whose first
/// restored process becomes our child (see [`crate::criu`]).
pub(crate) async fn restore(
    config: &RuntimeConfig,
    cgroups: &dyn CgroupManager,
    cfg: &InstanceConfig,
    criu_path: &std::path::Path,
    checkpoint: &Checkpoint,
) -> Result<Process> {
    validate(cfg)?;
    let failed = |message: String| Error::Criu {
        id: cfg.id.clone(),
        action: "restore",
        message,
    };
    let binds = criu::successor_sources(&checkpoint.binds, cfg).map_err(failed)?;
    let plan = RestorePlan {
        criu: criu_path.to_path_buf(),
        images: checkpoint.images.clone(),
        log_keys: checkpoint.log_keys.clone(),
        binds,
    };
    let [_, upper, _] = paths::instance_dirs(cfg);
    if upper.exists() {
        std::fs::remove_dir_all(&upper)
            .map_err(|e| failed(format!("cannot empty {}: {e}", upper.display())))?;
    }
    std::fs::create_dir_all(&cfg.dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", cfg.dir.display())))?;
    let old_upper = checkpoint.from_dir.join("upper");
    criu::copy_tree(&old_upper, &upper).map_err(|e| {
        failed(format!(
            "cannot copy the writable layer {} to {}: {e}",
            old_upper.display(),
            upper.display()
        ))
    })?;
    let pid_file = checkpoint.images.join(criu::PID_FILE);
    let _ = std::fs::remove_file(&pid_file);

    let mut guard = Guard {
        cgroups,
        scope: &config.cgroup_parent,
        cfg,
        child: None,
        armed: true,
    };
    cgroups.create(&cfg.id, &cfg.limits)?;
    // CRIU's helper is exec'd from a clone of the daemon.
    let (criu_pid, criu_start) = launch(
        config,
        cgroups,
        None,
        cfg,
        &mut guard,
        RESTORE_NAMESPACES,
        Some(plan),
        &mut DaemonSteps::new(false),
    )
    .await?;
    // sandbox-init exec'd criu: its exit says whether the restore worked.
    let criu_process = Process {
        pid: criu_pid,
        start_time: criu_start,
        pidfd: guard
            .child
            .as_ref()
            .expect("the child was stored by launch")
            .try_clone()
            .map_err(|e| Error::sys("duplicating the pidfd of criu", e))?,
        is_child: true,
    };
    let status = tokio::time::timeout(RESTORE_TIMEOUT, procfs::wait_exit(&criu_process))
        .await
        .map_err(|_| {
            failed(format!(
                "criu restore did not end within {RESTORE_TIMEOUT:?}"
            ))
        })??;
    guard.child = None;
    let log_path = checkpoint.images.join(criu::RESTORE_LOG);
    if status != (Some(0), None) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let how = match status {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "an unknown status".into(),
        };
        return Err(failed(format!(
            "criu restore ended with {how}: {} (log: {})",
            criu::log_errors(&log),
            log_path.display()
        )));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            failed(format!(
                "criu restore wrote no pid to {}",
                pid_file.display()
            ))
        })?;
    let start_time = procfs::read_stat(pid)
        .map_err(|e| failed(format!("the restored process {pid} is gone: {e}")))?
        .start_time;
    let process = procfs::adopt(pid, start_time)?
        .ok_or_else(|| failed(format!("the restored process {pid} ended at once")))?;
    if !process.is_child {
        // Its exit status would be lost; CRIU did not restore it as our child.
        let _ = procfs::pidfd_send_signal(&process.pidfd, libc::SIGKILL);
        return Err(failed(format!(
            "the restored process {pid} is not a child of the daemon (--restore-sibling failed)"
        )));
    }
    guard.armed = false;
    Ok(process)
}

/// Clones sandbox-init into `namespaces`, prepares what it needs and waits until it has exec'd
/// (the command, or criu for a restore); returns its pid and start time. The child's pidfd is
/// left in `guard`, which undoes everything on an error.
#[allow(clippy::too_many_arguments)]
async fn launch(
    config: &RuntimeConfig,
    cgroups: &dyn CgroupManager,
    spawner: Option<&SpawnerSlot>,
    cfg: &InstanceConfig,
    guard: &mut Guard<'_>,
    namespaces: libc::c_int,
    restore: Option<RestorePlan>,
    steps: &mut DaemonSteps,
) -> Result<(i32, u64)> {
    let message = ToInit::Config {
        config: Box::new(cfg.clone()),
        join_cgroups: cgroups.join_files(&cfg.id),
        restore,
        record_steps: steps.recording(),
    };
    let frame = protocol::frame(&message)
        .map_err(|e| Error::sys(format!("encoding the config of {}", cfg.id), e))?;
    // sandbox-init makes the directories and files inside, while this side makes the veth.
    if !cfg.dir.is_dir() {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| Error::sys(format!("creating {}", cfg.dir.display()), e))?;
    }
    let (pid, pidfd, to_init, from_init, preloaded) =
        clone_sandbox_init(config, cgroups, spawner, cfg, namespaces, &frame)?;
    steps.mark(start_steps::CLONED);
    guard.child = Some(pidfd);
    let setup = prepare_child(
        &config.cgroup_parent,
        cfg,
        pid,
        to_init,
        &frame[preloaded..],
        steps,
    );
    let start_time = match setup {
        Ok(start_time) => start_time,
        Err(e) => {
            // The child may have said why (e.g. the helper could not be executed).
            guard.kill_child();
            let report = read_report_blocking(File::from(from_init));
            return Err(if report.is_empty() {
                e
            } else {
                sandbox_error(cfg, report)
            });
        }
    };
    let report = match tokio::time::timeout(EXEC_TIMEOUT, read_report(from_init)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            return Err(Error::sys(
                format!("reading the error pipe of {}", cfg.id),
                e,
            ))
        }
        Err(_) => {
            return Err(sandbox_error(
                cfg,
                format!("sandbox-init did not exec the command within {EXEC_TIMEOUT:?}"),
            ))
        }
    };
    if !report.is_empty() {
        return Err(sandbox_error(cfg, report));
    }
    steps.mark("exec seen (the error pipe closed)");
    Ok((pid, start_time))
}

fn sandbox_error(cfg: &InstanceConfig, message: String) -> Error {
    Error::Sandbox {
        id: cfg.id.clone(),
        message,
    }
}

/// Undoes a spawn that did not finish (error or cancelled future): kills and reaps the child,
/// removes the cgroup and the veth.
struct Guard<'a> {
    cgroups: &'a dyn CgroupManager,
    /// The runtime's cgroup parent, which scopes veth names.
    scope: &'a str,
    cfg: &'a InstanceConfig,
    child: Option<OwnedFd>,
    armed: bool,
}

impl Guard<'_> {
    fn kill_child(&mut self) {
        if let Some(pidfd) = self.child.take() {
            procfs::kill_and_reap(&pidfd);
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.kill_child();
        if let Err(e) = self.cgroups.destroy(&self.cfg.id) {
            tracing::warn!(id = %self.cfg.id, "cleanup after a failed spawn: {e}");
        }
        if self.cfg.network.is_some() {
            if let Err(e) =
                netlink::delete_link_if_exists(&veth_host_name(self.scope, &self.cfg.id))
            {
                tracing::warn!(id = %self.cfg.id, "cleanup after a failed spawn: {e}");
            }
        }
    }
}

/// Checks what can be checked before any kernel object exists.
fn validate(cfg: &InstanceConfig) -> Result<()> {
    let invalid = |message: String| Err(sandbox_error(cfg, message));
    if cfg.id.is_empty() || cfg.id.contains('/') || cfg.id == "." || cfg.id == ".." {
        return invalid(format!(
            "invalid instance id {:?}: use a single file-name safe component",
            cfg.id
        ));
    }
    if cfg.argv.is_empty() {
        return invalid("the command is empty".into());
    }
    if cfg.hostname.is_empty() || cfg.hostname.len() > 64 {
        return invalid(format!(
            "invalid hostname {:?}: use 1 to 64 bytes",
            cfg.hostname
        ));
    }
    if !cfg.dir.is_absolute() {
        return invalid(format!(
            "instance directory {} is not absolute",
            cfg.dir.display()
        ));
    }
    if let Err(e) = identity::parse_capabilities(&cfg.capabilities) {
        return invalid(e);
    }
    if let Some(m) = cfg.mounts.iter().find(|m| !m.target.starts_with('/')) {
        return invalid(format!("mount target {:?} is not absolute", m.target));
    }
    if let Some(net) = &cfg.network {
        check_ifname(&net.bridge)?;
    }
    Ok(())
}

/// A child of the daemon in new `namespaces`, with a pidfd, placed in the cgroup2 directory at
/// once when there is one, running sandbox-init: cloned by the `spawner` when one is given
/// (sandbox-init runs in the clone), else a clone of the daemon that execs
/// `helper_exe __sandbox-init CFG ERR` (also when the spawner fails).
///
/// `config_frame` goes into the config pipe before the clone, as much of it as the pipe holds:
/// the child finds its config there at once, and the daemon does not wake it (waking it would
/// let it take the daemon's CPU while the daemon has the veth to make).
/// Returns (pid, pidfd, config pipe writer, error pipe reader, bytes of the frame written).
fn clone_sandbox_init(
    config: &RuntimeConfig,
    cgroups: &dyn CgroupManager,
    spawner: Option<&SpawnerSlot>,
    cfg: &InstanceConfig,
    namespaces: libc::c_int,
    config_frame: &[u8],
) -> Result<(i32, OwnedFd, File, OwnedFd, usize)> {
    let cgroup_dir = match cgroups.clone_into_dir(&cfg.id) {
        Some(dir) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&dir)
                .map_err(|e| Error::sys(format!("opening cgroup {}", dir.display()), e))?,
        ),
        None => None,
    };
    let cgroup = cgroup_dir.as_ref().map(|d| d.as_fd());
    if let Some(spawner) = spawner {
        let pipes = Pipes::new(cfg, config_frame)?;
        let ends = [pipes.init_reads.as_fd(), pipes.init_reports.as_fd()];
        match spawner.clone_sandbox_init(&config.helper_exe, namespaces, cgroup, ends, cfg.userns) {
            Ok((pid, pidfd)) => return Ok(pipes.daemon_side(pid, pidfd)),
            // Fresh pipes below: a spawner that died after its clone left a child reading these,
            // which ends at their EOF.
            Err(e) => tracing::warn!(
                id = %cfg.id,
                "the spawner failed ({e}); cloning the daemon and executing sandbox-init instead"
            ),
        }
    }
    let Pipes {
        init_reads,
        to_init,
        from_init,
        init_reports,
        preloaded,
    } = Pipes::new(cfg, config_frame)?;

    let exe = CString::new(config.helper_exe.as_os_str().as_bytes()).map_err(|_| {
        sandbox_error(
            cfg,
            format!("helper path {} has a NUL byte", config.helper_exe.display()),
        )
    })?;
    let number = |fd: &OwnedFd| CString::new(fd.as_raw_fd().to_string()).expect("digits");
    let args = vec![
        exe.clone(),
        CString::new(sandbox_init::COMMAND).expect("no NUL"),
        number(&init_reads),
        number(&init_reports),
    ];
    let failure = format!(
        "cannot execute the sandbox helper {}: os error ",
        config.helper_exe.display()
    );
    let plan = sys::ExecPlan::new(exe, args, failure);
    let (pid, pidfd) = sys::clone_exec(
        namespaces,
        cgroup,
        &plan,
        [init_reads.as_fd(), init_reports.as_fd()],
        init_reports.as_fd(),
    )
    .map_err(|e| Error::sys(format!("clone3 of the sandbox of {}", cfg.id), e))?;
    // Drop our copies of the child's ends: the error pipe reaches EOF only when all writers close.
    drop(init_reads);
    drop(init_reports);
    Ok((pid, pidfd, File::from(to_init), from_init, preloaded))
}

/// The config and error pipes of one sandbox-init, the config already in as far as it fits.
/// Both are close-on-exec, so children that other threads start concurrently never keep them
/// past their own exec; the child clears the flag on its two ends alone.
struct Pipes {
    init_reads: OwnedFd,
    to_init: OwnedFd,
    from_init: OwnedFd,
    init_reports: OwnedFd,
    /// Bytes of the config frame already in the config pipe.
    preloaded: usize,
}

impl Pipes {
    fn new(cfg: &InstanceConfig, config_frame: &[u8]) -> Result<Self> {
        let pipe = || {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Sys {
                context: format!("creating a pipe for {}", cfg.id),
                source: e,
            })
        };
        let (init_reads, to_init) = pipe()?;
        let (from_init, init_reports) = pipe()?;
        let preloaded = preload(&to_init, config_frame)
            .map_err(|e| Error::sys(format!("writing the config of {}", cfg.id), e))?;
        Ok(Pipes {
            init_reads,
            to_init,
            from_init,
            init_reports,
            preloaded,
        })
    }

    /// What the daemon keeps once the child has its ends (dropped here).
    fn daemon_side(self, pid: i32, pidfd: OwnedFd) -> (i32, OwnedFd, File, OwnedFd, usize) {
        (
            pid,
            pidfd,
            File::from(self.to_init),
            self.from_init,
            self.preloaded,
        )
    }
}

/// Writes as much of `frame` into the empty pipe `to_init` as it takes without blocking.
fn preload(to_init: &OwnedFd, frame: &[u8]) -> io::Result<usize> {
    use nix::fcntl::{fcntl, FcntlArg};
    fcntl(to_init, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let written = match nix::unistd::write(to_init, frame) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => return Err(e.into()),
    };
    fcntl(to_init, FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(written)
}

/// While the child builds the root: sends what of the config did not fit the pipe before the
/// clone, creates the log, puts the child on its bridge, then says go. Returns the child's
/// start time.
fn prepare_child(
    scope: &str,
    cfg: &InstanceConfig,
    pid: i32,
    mut to_init: File,
    config_rest: &[u8],
    steps: &mut DaemonSteps,
) -> Result<u64> {
    let start_time = procfs::read_stat(pid)
        .map_err(|e| Error::sys(format!("reading /proc/{pid}/stat"), e))?
        .start_time;
    steps.mark("start time read");
    let send = |to_init: &mut File, message: &ToInit| {
        write_message(to_init, message)
            .map_err(|e| Error::sys(format!("sending {} to sandbox-init", cfg.id), e))
    };
    if !config_rest.is_empty() {
        to_init
            .write_all(config_rest)
            .map_err(|e| Error::sys(format!("sending {} to sandbox-init", cfg.id), e))?;
        steps.mark("the rest of the config sent");
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&cfg.log_path)
        .map_err(|e| Error::sys(format!("creating log file {}", cfg.log_path.display()), e))?;
    steps.mark("log file");
    if let Some(net) = &cfg.network {
        if !net.segments.is_empty() {
            crate::firewall::admit(&net.bridge, net.address.addr(), &net.segments)?;
            steps.mark("firewall admits its segments");
        }
        attach_veth(scope, &cfg.id, &net.bridge, net.address.addr(), pid)?;
        steps.mark("veth and neighbour entry");
    }
    send(&mut to_init, &ToInit::Go)?;
    steps.mark("go sent");
    Ok(start_time)
}

fn attach_veth(scope: &str, id: &str, bridge: &str, address: Ipv4Addr, pid: i32) -> Result<()> {
    let host = veth_host_name(scope, id);
    let bridge_index = netlink::link_index(bridge).map_err(|e| {
        Error::Network(format!(
            "bridge {bridge} of {id}: {e} (create it with ensure_network first)"
        ))
    })?;
    let failed = |e: io::Error| Error::Network(format!("cannot create veth {host} for {id}: {e}"));
    let mut nl = Netlink::open().map_err(failed)?;
    let mac = instance_mac(address);
    match nl.create_veth(&host, bridge_index, pid, mac.clone()) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Left by an earlier instance of this id whose netns the kernel has not freed yet.
            nl.delete_link(&host).map_err(failed)?;
            nl.create_veth(&host, bridge_index, pid, mac.clone())
                .map_err(failed)?;
        }
        other => other.map_err(failed)?,
    }
    nl.set_neighbour(bridge_index, address, &mac).map_err(|e| {
        Error::Network(format!(
            "cannot set the neighbour entry of {address} on {bridge}: {e}"
        ))
    })
}

/// Reads the error pipe to EOF: empty means the command was exec'd.
async fn read_report(from_init: OwnedFd) -> io::Result<String> {
    nix::fcntl::fcntl(&from_init, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let pipe = sys::async_fd(from_init, Interest::READABLE)?;
    let mut report = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut ready = pipe.readable().await?;
        match ready.try_io(|p| nix::unistd::read(p.get_ref(), &mut chunk).map_err(io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if report.len() < MAX_REPORT {
                    report.extend_from_slice(&chunk[..n]);
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(String::from_utf8_lossy(&report).into_owned())
}

/// For error paths once the child is dead: what it wrote before dying.
fn read_report_blocking(from_init: File) -> String {
    let mut report = Vec::new();
    let _ = from_init.take(MAX_REPORT as u64).read_to_end(&mut report);
    String::from_utf8_lossy(&report).into_owned()
}
