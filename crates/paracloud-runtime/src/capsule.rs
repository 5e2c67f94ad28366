//! Capsules: a process with its own root filesystem that attaches to a running instance for the
//! duration of one function, then leaves nothing behind.
//!
//! The daemon side ([`attach`]) creates the capsule's cgroup and hands its plan (target,
//! config, cgroup) to `helper __capsule` on its stdin. For capsules without a terminal, runners
//! are started ahead ([`WarmRunners`]) and wait for their plan, so that an attach does not wait
//! for an exec. That hidden command, single-threaded:
//!
//! 1. reads its plan; joins the capsule's v1 cgroups and opens its cgroup2 directory (the fork
//!    below starts there), and opens the target's ipc, uts, net, pid and mnt namespaces;
//! 2. unshares a private mount namespace (a copy of the host's) and builds the capsule's root in
//!    it: an overlay of the capsule image over a scratch tmpfs (mounted in that namespace only),
//!    with /dev (device nodes), /tmp, and the caller's output directory at /out;
//! 3. enters the target's mount namespace just long enough to clone its whole mount tree
//!    (open_tree), makes the copy read-only unless the capsule may write, returns to its own
//!    namespace and attaches the copy at /target (move_mount): the target's namespace is never
//!    changed, and the copy dies with the capsule's namespace;
//! 4. joins the target's ipc, uts, net and pid namespaces and forks the capsule's *reaper* into
//!    the capsule cgroup. The reaper (in the target's pid namespace) mounts /proc, pivots into
//!    the capsule root, and forks the command. It is a child subreaper: every process the
//!    command leaves behind becomes its child, not the target's pid 1. When the command exits
//!    (or on SIGTERM: the deadline) it kills every process left in the capsule cgroup, reaps
//!    them and exits with the command's status.
//!
//! [`detach`] then removes the cgroup (killing anything that escaped).
//! **Invariant:** nothing of a capsule stays in the target: no process, no mount, no file except
//! what a capsule allowed to write changed under /target.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupManager;
use crate::identity::{self, Identity};
use crate::mounts::{bind, make_mount_point_kind, mount_fs, BindMode};
use crate::sys::{self, Forked};
use crate::{procfs, Error, Limits, Process, Result, Rootfs};

pub(crate) const COMMAND: &str = "__capsule";
/// Marks the capsule runner's own failures on stderr, as opposed to the command's.
const FAILURE_PREFIX: &str = "paracloud capsule: ";
/// The runner's exit code when it failed before the command ran.
pub const SETUP_FAILED: i32 = 125;
/// How long the reaper gets to kill and reap everything after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Size of the scratch tmpfs holding the capsule's writable layer and /tmp.
const SCRATCH_SIZE: &str = "size=256m";

/// Capabilities every capsule keeps (Docker's default set without NET_RAW, MKNOD, SETFCAP and
/// AUDIT_WRITE); a capsule asks for more ([`CapsuleConfig::capabilities`]).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
];

/// One capsule attached to one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapsuleConfig {
    /// Unique among instances and capsules (it names the capsule's cgroup), e.g. "cap-12-web-1".
    pub id: String,
    /// Host directory whose `scratch` subdirectory (created once) the runner covers with the
    /// capsule's scratch tmpfs, in its own mount namespace only: capsules may share it, and it
    /// stays empty on the host.
    pub dir: PathBuf,
    /// The capsule's image: [`Rootfs::Dir`] or [`Rootfs::Layers`].
    pub rootfs: Rootfs,
    /// Run inside the capsule root; `argv[0]` is looked up in `env`'s PATH when it has no '/'.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host directory bound read-write at /out: the files the function returns.
    pub out_dir: PathBuf,
    /// The target's filesystem at /target is writable (otherwise read-only, recursively).
    pub write_target: bool,
    /// Capabilities beyond [`DEFAULT_CAPABILITIES`], e.g. "CAP_SYS_PTRACE".
    pub capabilities: Vec<String>,
    pub limits: Limits,
    /// The command's stdin is a terminal: it gets a session of its own with that terminal.
    pub tty: bool,
}

/// What the hidden command reads on its stdin: the target, the config and where its cgroup is.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    /// The target instance's first process, and its start time (against pid reuse).
    target_pid: i32,
    target_start_time: u64,
    config: CapsuleConfig,
    /// v1 `tasks` files to write "0" to.
    join_files: Vec<PathBuf>,
    /// The cgroup2 directory the reaper is forked into.
    clone_into: Option<PathBuf>,
    /// A `cgroup.procs` of the capsule cgroup: what the reaper kills at the end.
    procs_file: PathBuf,
}

/// Where the runner mounts the scratch tmpfs under which the capsule's root is built.
fn scratch_dir(config: &CapsuleConfig) -> PathBuf {
    config.dir.join("scratch")
}

/// Runners kept started ahead, waiting for their plan: an attach takes one instead of waiting
/// for the exec of the helper binary.
const WARM_RUNNERS: usize = 2;

/// A started `helper __capsule`, waiting for its plan on its stdin.
struct Runner {
    child: tokio::process::Child,
    /// The write end of the runner's stdin.
    plan: File,
}

/// Runners started ahead for capsules without a terminal (stdout and stderr piped).
#[derive(Default)]
pub(crate) struct WarmRunners {
    ready: std::sync::Mutex<Vec<Runner>>,
    /// Held by the one [`WarmRunners::fill`] at work.
    filling: std::sync::Mutex<()>,
}

impl std::fmt::Debug for WarmRunners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = self.ready.lock().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("WarmRunners")
            .field("ready", &ready)
            .finish()
    }
}

impl WarmRunners {
    /// A started runner that has not exited, if one is ready.
    fn take(&self) -> Option<Runner> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut runner) = ready.pop() {
            if matches!(runner.child.try_wait(), Ok(None)) {
                return Some(runner);
            }
        }
        None
    }

    /// Starts runners until [`WARM_RUNNERS`] wait. Needs a Tokio runtime (the runners are its
    /// child processes).
    pub(crate) fn fill(&self, helper: &Path) -> Result<()> {
        let Ok(_filling) = self.filling.try_lock() else {
            return Ok(());
        };
        loop {
            let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
            if ready >= WARM_RUNNERS {
                return Ok(());
            }
            let runner = start_runner(helper, None)?;
            self.ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(runner);
        }
    }
}

/// Starts `helper __capsule`: it reads its plan on stdin. `terminal` becomes its stdout and
/// stderr (and its stdin once the plan is read); `None` pipes stdout and stderr.
fn start_runner(helper: &Path, terminal: Option<OwnedFd>) -> Result<Runner> {
    let (plan_out, plan_in) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("creating the capsule plan pipe", e.into()))?;
    let mut command = tokio::process::Command::new(helper);
    command
        .arg(COMMAND)
        .env_clear()
        .kill_on_drop(true)
        .stdin(Stdio::from(plan_out));
    match terminal {
        Some(terminal) => {
            let out = terminal
                .try_clone()
                .map_err(|e| Error::sys("duplicating the terminal", e))?;
            command
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(terminal));
        }
        None => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let child = command
        .spawn()
        .map_err(|e| Error::sys(format!("starting {} {COMMAND}", helper.display()), e))?;
    Ok(Runner {
        child,
        plan: File::from(plan_in),
    })
}

/// Hands `plan` to `runner` and closes its stdin: the runner goes on from there.
fn feed(runner: Runner, plan: &[u8]) -> std::io::Result<tokio::process::Child> {
    use std::io::Write;
    let Runner {
        child,
        plan: mut stdin,
    } = runner;
    stdin.write_all(plan)?;
    Ok(child)
}

/// Starts a capsule on `target` (the instance's first process). `terminal`: the command's
/// stdin, stdout and stderr (a terminal's replica); `None` pipes stdout and stderr and gives
/// the command an empty stdin, from a runner started ahead when one is ready. Returns the
/// running capsule; call [`detach`] once it has exited.
pub(crate) fn attach(
    helper: &Path,
    warm: &WarmRunners,
    cgroups: &dyn CgroupManager,
    target: &Process,
    config: &CapsuleConfig,
    terminal: Option<OwnedFd>,
) -> Result<tokio::process::Child> {
    if config.argv.is_empty() {
        return Err(Error::Sandbox {
            id: config.id.clone(),
            message: "a capsule needs a command".into(),
        });
    }
    if matches!(config.rootfs, Rootfs::Host { .. }) {
        return Err(Error::Sandbox {
            id: config.id.clone(),
            message: "a capsule's root must be an image (Dir or Layers), not the host".into(),
        });
    }
    if config.tty != terminal.is_some() {
        return Err(Error::Sandbox {
            id: config.id.clone(),
            message: "a capsule has a terminal exactly when its config says tty".into(),
        });
    }
    for dir in [scratch_dir(config), config.out_dir.clone()] {
        fs::create_dir_all(&dir)
            .map_err(|e| Error::sys(format!("creating {}", dir.display()), e))?;
    }
    cgroups.create(&config.id, &config.limits)?;
    let join_files = cgroups.join_files(&config.id);
    let clone_into = cgroups.clone_into_dir(&config.id);
    let procs_file = match (join_files.first(), &clone_into) {
        (Some(tasks), _) => tasks.with_file_name("cgroup.procs"),
        (None, Some(dir)) => dir.join("cgroup.procs"),
        (None, None) => {
            return Err(Error::Cgroup(format!(
                "no cgroup hierarchy to hold capsule {}",
                config.id
            )))
        }
    };
    let plan = Plan {
        target_pid: target.pid,
        target_start_time: target.start_time,
        config: config.clone(),
        join_files,
        clone_into,
        procs_file,
    };
    let plan = serde_json::to_vec(&plan).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let failed = |e| Error::sys(format!("handing capsule {} its plan", config.id), e);
    if let Some(terminal) = terminal {
        return feed(start_runner(helper, Some(terminal))?, &plan).map_err(failed);
    }
    if let Some(Ok(child)) = warm.take().map(|runner| feed(runner, &plan)) {
        return Ok(child);
    }
    // None was ready, or the one taken had died since it started: start one now.
    feed(start_runner(helper, None)?, &plan).map_err(failed)
}

/// Removes what is left of a capsule: its processes and cgroup (its mounts died with its mount
/// namespace, and its output directory is the caller's); idempotent.
pub(crate) fn detach(cgroups: &dyn CgroupManager, config: &CapsuleConfig) -> Result<()> {
    cgroups.destroy(&config.id)
}

/// The runner's own failure in a finished capsule's stderr: `Some(message)` when it failed
/// before the command ran.
pub fn setup_failure(code: i32, stderr: &[u8]) -> Option<String> {
    if code != SETUP_FAILED {
        return None;
    }
    let stderr = String::from_utf8_lossy(stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(FAILURE_PREFIX))
        .map(str::to_string)
}

/// Entry point of the hidden command: argv is [PID, START_TIME, PLAN_JSON].
pub(crate) fn main(args: Vec<OsString>) -> ! {
    let message = match enter(args) {
        Ok(never) => match never {},
        Err(message) => message,
    };
    eprintln!("{FAILURE_PREFIX}{message}");
    std::process::exit(SETUP_FAILED);
}

/// Namespaces joined after the root is built (mnt is handled apart).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
];

fn enter(args: Vec<OsString>) -> std::result::Result<std::convert::Infallible, String> {
    if !args.is_empty() {
        return Err(format!(
            "usage: {COMMAND} (the plan comes as JSON on stdin, from the daemon)"
        ));
    }
    let plan = read_plan()?;
    let (pid, start_time) = (plan.target_pid, plan.target_start_time);
    let config = &plan.config;
    let single = sys::single_threaded().map_err(|e| e.to_string())?;
    let kept = {
        let mut names: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        names.extend(config.capabilities.iter().cloned());
        identity::parse_capabilities(&names)?
    };
    for file in &plan.join_files {
        fs::write(file, "0").map_err(|e| format!("cannot join cgroup {}: {e}", file.display()))?;
    }
    let unified = plan
        .clone_into
        .as_ref()
        .map(|dir| {
            File::open(dir).map_err(|e| format!("cannot open cgroup {}: {e}", dir.display()))
        })
        .transpose()?;
    let procs = File::open(&plan.procs_file)
        .map_err(|e| format!("cannot open {}: {e}", plan.procs_file.display()))?;
    let mut entries: Vec<String> = NAMESPACES.iter().map(|(n, _)| format!("ns/{n}")).collect();
    entries.push("ns/mnt".into());
    let mut files = procfs::open_pinned(
        pid,
        start_time,
        &entries.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let target_mnt = files.pop().expect("ns/mnt");
    let namespaces: Vec<_> = files
        .into_iter()
        .zip(NAMESPACES.iter().map(|(_, flag)| *flag))
        .collect();

    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot unshare a mount namespace: {e}"))?;
    crate::mounts::make_mounts_private()?;
    let own_mnt = File::open("/proc/self/ns/mnt")
        .map_err(|e| format!("cannot open our mount namespace: {e}"))?;
    let root = build_root(config)?;
    attach_target(
        &target_mnt,
        &own_mnt,
        config.write_target,
        &root.join("target"),
    )?;
    drop((target_mnt, own_mnt));
    for (fd, flag) in &namespaces {
        setns(fd.as_fd(), *flag)
            .map_err(|e| format!("cannot join the {flag:?} of pid {pid}: {e}"))?;
    }
    drop(namespaces);

    // SIGTERM (the caller's deadline) and SIGCHLD are taken synchronously; the command's mask is
    // reset before its exec.
    let signals = blocked_signals()?;
    let reaper = match sys::fork(&single, unified.as_ref().map(|f| f.as_fd()))
        .map_err(|e| format!("cannot fork into pid {pid}'s namespace: {e}"))?
    {
        Forked::Child => {
            let code = match reap(config, &root, procs, &single, &kept, &signals) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("{FAILURE_PREFIX}{message}");
                    SETUP_FAILED
                }
            };
            std::process::exit(code);
        }
        Forked::Parent(child) => child,
    };
    // This process stays outside the target's pid namespace: it forwards SIGTERM to the reaper
    // and exits with its status.
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        match waitpid(reaper, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => std::process::exit(128 + signal as i32),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(format!("cannot wait for the capsule: {e}")),
        }
        if let Some(at) = deadline {
            if std::time::Instant::now() >= at {
                let _ = kill(reaper, Signal::SIGKILL);
                let _ = waitpid(reaper, None);
                std::process::exit(128 + Signal::SIGTERM as i32);
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if let Ok(Signal::SIGTERM) = signals.wait() {
            let _ = kill(reaper, Signal::SIGTERM);
            deadline = Some(std::time::Instant::now() + TERM_GRACE);
        }
    }
}

/// Reads the plan from stdin up to its end, then gives the command its stdin: the terminal
/// (already our stdout) with a tty, otherwise /dev/null.
fn read_plan() -> std::result::Result<Plan, String> {
    let mut plan = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut plan)
        .map_err(|e| format!("cannot read the capsule plan: {e}"))?;
    let plan: Plan =
        serde_json::from_slice(&plan).map_err(|e| format!("invalid capsule plan: {e}"))?;
    let stdin = if plan.config.tty {
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate the terminal: {e}"))?
    } else {
        File::open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null: {e}"))?
            .into()
    };
    nix::unistd::dup2_stdin(&stdin).map_err(|e| format!("cannot set the command's stdin: {e}"))?;
    Ok(plan)
}

fn blocked_signals() -> std::result::Result<SigSet, String> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(signals)
}

/// Mounts the capsule's root (in our private mount namespace) and returns where: a scratch
/// tmpfs holding the overlay's writable layer, the image as its lower layers, /dev, /tmp and
/// /out, and empty mount points for /proc, /sys and /target.
fn build_root(config: &CapsuleConfig) -> std::result::Result<PathBuf, String> {
    let scratch = scratch_dir(config);
    mount_fs(
        "tmpfs",
        &scratch,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=755,{SCRATCH_SIZE}")),
    )?;
    let (upper, work, root) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("root"),
    );
    for dir in [&upper, &work, &root] {
        fs::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lowers: Vec<PathBuf> = match &config.rootfs {
        Rootfs::Dir { path } => vec![path.clone()],
        Rootfs::Layers { layers } => layers.iter().rev().cloned().collect(),
        Rootfs::Host { .. } => return Err("a capsule's root cannot be the host".into()),
    };
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(data.as_str()),
    )
    .map_err(|e| format!("cannot mount the capsule root ({data}): {e}"))?;
    for dir in ["proc", "sys", "dev", "tmp", "out", "target"] {
        make_mount_point_kind(&root.join(dir), true)?;
    }
    crate::sandbox_init::mount_dev(&root.join("dev"), crate::sandbox_init::DeviceFiles::Nodes)?;
    mount_fs(
        "tmpfs",
        &root.join("tmp"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=64m"),
    )?;
    bind(&config.out_dir, &root.join("out"), BindMode::ReadWrite)?;
    Ok(root)
}

/// Clones the target's whole mount tree from its namespace and attaches the copy at `at` in
/// ours, read-only unless `write`.
fn attach_target(
    target_mnt: &File,
    own_mnt: &File,
    write: bool,
    at: &Path,
) -> std::result::Result<(), String> {
    setns(target_mnt.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot enter the target's mount namespace: {e}"))?;
    let tree = sys::clone_mount_tree(Path::new("/"));
    // Back home before anything can fail, so that no error leaves us in the target's namespace.
    setns(own_mnt.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot return to the capsule's mount namespace: {e}"))?;
    let tree = tree.map_err(|e| format!("cannot clone the target's mount tree: {e}"))?;
    let mut attributes = crate::mounts::MOUNT_ATTR_NOSUID | crate::mounts::MOUNT_ATTR_NODEV;
    if !write {
        attributes |= crate::mounts::MOUNT_ATTR_RDONLY;
    }
    sys::mount_fd_setattr_recursive(tree.as_fd(), attributes)
        .map_err(|e| format!("cannot restrict the target's filesystem: {e}"))?;
    sys::move_mount(tree.as_fd(), at)
        .map_err(|e| format!("cannot attach the target's filesystem at /target: {e}"))
}

/// The reaper: in the target's pid namespace, inside the capsule cgroup. Mounts /proc and
/// /sys, pivots into the capsule root, runs the command and cleans up after it; returns the
/// command's exit code.
fn reap(
    config: &CapsuleConfig,
    root: &Path,
    mut procs: File,
    single: &sys::SingleThreaded,
    kept: &caps::CapsHashSet,
    signals: &SigSet,
) -> std::result::Result<i32, String> {
    sys::signal_me_with_parent(libc::SIGTERM)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    sys::set_child_subreaper().map_err(|e| format!("cannot become a subreaper: {e}"))?;
    crate::sandbox_init::mount_proc(&root.join("proc"))?;
    mount_fs(
        "sysfs",
        &root.join("sys"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None,
    )?;
    nix::unistd::chdir(root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| format!("cannot pivot into the capsule root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| format!("cannot detach the host's root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("cannot enter /: {e}"))?;

    let command =
        match sys::fork(single, None).map_err(|e| format!("cannot fork the command: {e}"))? {
            Forked::Child => {
                let message = run_command(config, kept);
                eprintln!("{FAILURE_PREFIX}{message}");
                std::process::exit(SETUP_FAILED);
            }
            Forked::Parent(child) => child,
        };
    let mut status = None;
    loop {
        // Reap every child: the command, and whatever it left behind (reparented to us).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == command => status = Some(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                    status = Some(128 + signal as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some(code) = status {
            kill_the_rest(&mut procs);
            return Ok(code);
        }
        if let Ok(Signal::SIGTERM) = signals.wait() {
            let _ = kill(command, Signal::SIGKILL);
            kill_the_rest(&mut procs);
            return Ok(128 + Signal::SIGTERM as i32);
        }
    }
}

/// Kills every other process of the capsule cgroup and reaps them (they are our children or
/// reparented to us), until none is left or the grace period ends.
fn kill_the_rest(procs: &mut File) {
    let me = nix::unistd::getpid().as_raw();
    let until = std::time::Instant::now() + TERM_GRACE;
    loop {
        let mut listed = String::new();
        let _ = procs.rewind();
        let _ = procs.read_to_string(&mut listed);
        // Pids outside our namespace read as 0: the runner, our parent.
        let others: Vec<i32> = listed
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| *p != 0 && *p != me)
            .collect();
        for pid in &others {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        if others.is_empty() || std::time::Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In the command's process: a session (with its terminal), root with the capsule's
/// capabilities, the default seccomp filter, then exec.
fn run_command(config: &CapsuleConfig, kept: &caps::CapsHashSet) -> String {
    identity::reset_signals();
    if config.tty {
        if let Err(e) = nix::unistd::setsid() {
            return format!("cannot start a session: {e}");
        }
        if let Err(e) = sys::set_controlling_terminal(std::io::stdin().as_fd()) {
            return format!("cannot take the terminal: {e}");
        }
    }
    let root = Identity {
        uid: 0,
        gid: 0,
        groups: vec![0],
        home: Some("/".into()),
    };
    if let Err(e) = identity::switch_identity(&root, kept) {
        return e;
    }
    if let Err(e) = crate::seccomp::apply_default(kept) {
        return e;
    }
    identity::exec(&config.argv, &config.env)
}
