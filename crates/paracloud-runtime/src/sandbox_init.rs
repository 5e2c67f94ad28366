//! sandbox-init: what a new instance runs as pid 1 of its namespaces until it execs the command.
//!
//! It builds the root filesystem (overlayfs, read-only host paths, /proc, /dev, /sys, /tmp,
//! mounts) while the daemon prepares cgroups, veth and files; on the daemon's "go" it joins its
//! v1 cgroups, binds the generated /etc files, pivots, configures the network, switches user and
//! capabilities, installs seccomp and execs. Errors go to the daemon through the error pipe.
//! **Invariant:** nothing of sandbox-init survives the exec (the pid is the command's), except
//! as the minimal init of a service that asks for one (`init`).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::identity;
use crate::mounts::{bind, make_mount_point, make_mount_point_kind, mount_fs, under, BindMode};
use crate::netlink::{self, Netlink, INSTANCE_IFACE};
use crate::paths::{etc_file_path, instance_dirs};
use crate::protocol::{read_message, RestorePlan, ToInit};
use crate::{start_steps, sys, userns, EtcFile, InstanceConfig, Rootfs};

pub(crate) const COMMAND: &str = "__sandbox-init";

type InitResult<T> = std::result::Result<T, String>;

/// Empty directories of the Host rootfs' lower layer (mount points and writable places).
const SKELETON_DIRS: &[&str] = &[
    "etc", "usr", "proc", "dev", "sys", "tmp", "run", "var", "home", "root", "mnt", "opt", "srv",
];
/// Top-level host entries that are either symlinks into /usr (merged-usr) or real directories.
const HOST_LIB_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Host device nodes bound into the instance's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// /proc entries made read-only, and entries hidden under /dev/null, as container runtimes do.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus"];
const PROC_MASKED: &[&str] = &["kcore", "keys", "timer_list", "sched_debug"];
/// Files of the host's /etc that a Host rootfs shares but an instance must not read: they are
/// hidden under /dev/null. Password hashes and the sudo rules.
const HOST_SECRET_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/sudoers",
];
/// Directories of the host's /etc with keys: hidden under an empty read-only tmpfs.
const HOST_SECRET_DIRS: &[&str] = &["etc/ssl/private", "etc/ssh", "etc/sudoers.d"];

/// The error pipe (also for the panic hook).
static REPORT: OnceLock<File> = OnceLock::new();

pub(crate) fn render_hosts(cfg: &InstanceConfig) -> String {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(net) = &cfg.network {
        hosts.push_str(&format!("{}\t{}\n", net.address.addr(), cfg.hostname));
    } else {
        hosts.push_str(&format!("127.0.1.1\t{}\n", cfg.hostname));
    }
    for (name, address) in &cfg.hosts {
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    hosts
}

/// Entry point: argv is [fd of the config pipe, fd of the error pipe].
pub(crate) fn main(args: Vec<OsString>) -> ! {
    let started_ns = start_steps::now_ns();
    let fds: Vec<RawFd> = args
        .iter()
        .filter_map(|a| a.to_str().and_then(|s| s.parse().ok()))
        .collect();
    let [config_fd, report_fd] = fds[..] else {
        eprintln!("{COMMAND}: expected two file descriptors, got {args:?}");
        std::process::exit(125);
    };
    let (config, report_pipe) = match (sys::inherited_fd(config_fd), sys::inherited_fd(report_fd)) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{COMMAND}: {e}");
            std::process::exit(125);
        }
    };
    enter(config, report_pipe, started_ns)
}

/// Runs sandbox-init with its two pipes; `started_ns` is when its process began running (see
/// [`start_steps`]). Used by [`main`] after an exec, and by the spawner's clone directly.
pub(crate) fn enter(config: OwnedFd, report_pipe: OwnedFd, started_ns: u64) -> ! {
    let _ = REPORT.set(File::from(report_pipe));
    std::panic::set_hook(Box::new(|info| {
        report(&format!("sandbox-init panicked: {info}"))
    }));
    let message = match run(config, started_ns) {
        Ok(never) => match never {},
        Err(message) => message,
    };
    report(&message);
    std::process::exit(1);
}

fn report(message: &str) {
    if let Some(mut pipe) = REPORT.get() {
        let _ = pipe.write_all(message.as_bytes());
    }
}

fn run(config: OwnedFd, started_ns: u64) -> InitResult<std::convert::Infallible> {
    // Every inherited fd, the two pipes included, closes at exec: the error pipe's EOF is the
    // daemon's sign that the command runs.
    sys::close_range_cloexec(3)
        .map_err(|e| format!("cannot mark inherited fds close-on-exec: {e}"))?;
    let mut from_daemon = File::from(config);
    let (cfg, join_cgroups, restore) = match read_message(&mut from_daemon) {
        Ok(ToInit::Config {
            config,
            join_cgroups,
            restore,
            record_steps,
        }) => {
            if record_steps {
                record_steps_in(&config.dir, started_ns)?;
            }
            (*config, join_cgroups, restore)
        }
        Ok(other) => return Err(format!("expected the instance config, got {other:?}")),
        Err(e) => return Err(format!("cannot read the instance config: {e}")),
    };
    start_steps::init_mark("config read");
    for dir in instance_dirs(&cfg) {
        create_dir(&dir)?;
    }
    write_etc_files(&cfg).map_err(|e| format!("cannot write the /etc files: {e}"))?;
    start_steps::init_mark("instance directories, /etc files");
    // Opened while the host's paths are in reach; handed over once the user is known.
    let owned = open_owned(&cfg)?;
    let userns = match (&cfg.userns, &restore) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err("CRIU does not restore an instance in a user namespace of its own".into())
        }
        (Some(range), None) => Some(userns::create(range)?),
    };
    if userns.is_some() {
        start_steps::init_mark("user namespace");
    }
    let (root, sysctl_dir) = match &restore {
        None => build_rootfs(&cfg, userns.as_ref())?,
        // CRIU mounts the rest from the checkpoint.
        Some(_) => (mount_root(&cfg, None)?.0, None),
    };

    // Go: the cgroups, the veth and the files of the instance directory are ready.
    match read_message(&mut from_daemon) {
        Ok(ToInit::Go) => {}
        Ok(other) => return Err(format!("expected go, got {other:?}")),
        Err(e) => return Err(format!("the daemon went away before go: {e}")),
    }
    start_steps::init_mark("go received");
    for file in join_cgroups {
        fs::write(&file, "0").map_err(|e| format!("cannot join cgroup {}: {e}", file.display()))?;
    }
    start_steps::init_mark("v1 cgroups joined");
    if let Some(plan) = restore {
        // The restored processes keep their ids; the user is looked up in the same root.
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        let group = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        let user = identity::resolve_user(cfg.user.as_deref(), &passwd, &group)?;
        hand_over(&owned, &user)?;
        return exec_criu_restore(&cfg, &plan, &root);
    }
    bind_etc_files(&cfg, &root)?;
    if cfg.sandbox.read_only {
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("cannot make the root filesystem read-only: {e}"))?;
    }
    let log = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&cfg.log_path)
        .map_err(|e| format!("cannot open log file {}: {e}", cfg.log_path.display()))?;
    nix::unistd::sethostname(&cfg.hostname)
        .map_err(|e| format!("cannot set hostname {:?}: {e}", cfg.hostname))?;
    start_steps::init_mark("/etc files bound, log opened, hostname");
    pivot_into(&root)?;
    start_steps::init_mark("pivot_root");
    configure_network(&cfg, sysctl_dir.as_ref())?;
    start_steps::init_mark("network (lo, eth0, routes, neighbours)");
    if let Some(dir) = &sysctl_dir {
        crate::limits::set_sysctls(dir, &cfg.sandbox.sysctls)?;
    }

    let null = File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    let user = identity::resolve_user(cfg.user.as_deref(), &passwd, &group)?;
    hand_over(&owned, &user)?;
    let kept = identity::parse_capabilities(&cfg.capabilities)?;
    let env = identity::build_env(
        &cfg.env,
        &path_prefix(&cfg),
        &cfg.hostname,
        user.home.as_deref(),
    );
    let working_dir = cfg.working_dir.clone().unwrap_or_else(|| "/".into());
    if !Path::new(&working_dir).exists() {
        // As a container runtime does for WORKDIR; a read-only place fails at chdir below.
        let _ = fs::create_dir_all(&working_dir);
    }
    identity::reset_signals();
    // A session (and process group) of its own, led by the command: otherwise its session is
    // the daemon's, outside its pid namespace, and CRIU refuses to checkpoint it ("a session
    // leader is outside of its pid namespace"). A terminal's signals no longer reach it either.
    nix::unistd::setsid().map_err(|e| format!("cannot start a session of its own: {e}"))?;
    for (fd, target) in [(null.as_fd(), 0), (log.as_fd(), 1), (log.as_fd(), 2)] {
        sys::dup_onto_stdio(fd, target).map_err(|e| format!("cannot redirect fd {target}: {e}"))?;
    }
    if let Some(namespace) = &userns {
        userns::enter(namespace)?;
    }
    // Before the identity switch: raising a hard limit needs CAP_SYS_RESOURCE.
    crate::limits::set_rlimits(&cfg.sandbox.rlimits)?;
    identity::switch_identity(&user, &kept)?;
    std::env::set_current_dir(&working_dir)
        .map_err(|e| format!("cannot enter working directory {working_dir}: {e}"))?;
    start_steps::init_mark("user, session, stdio, limits, identity");
    if cfg.sandbox.init {
        start_steps::init_write();
        return crate::init::fork_command(
            || crate::seccomp::apply_default(&kept),
            || identity::exec(&cfg.argv, &env),
        );
    }
    crate::seccomp::apply_default(&kept)?;
    start_steps::init_mark("seccomp filter");
    start_steps::init_write();
    Err(identity::exec(&cfg.argv, &env))
}

/// Notes the steps of this start from now on, into the instance directory's steps file.
fn record_steps_in(instance_dir: &Path, started_ns: u64) -> InitResult<()> {
    let path = start_steps::file(instance_dir);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {} for the start's steps: {e}", path.display()))?;
    start_steps::init_record(file, started_ns);
    Ok(())
}

/// Writes the generated /etc files into the instance directory.
fn write_etc_files(cfg: &InstanceConfig) -> std::io::Result<()> {
    for (file, content) in etc_contents(cfg) {
        fs::write(etc_file_path(&cfg.dir, file), content)?;
    }
    Ok(())
}

fn etc_contents(cfg: &InstanceConfig) -> [(EtcFile, String); 3] {
    [
        (EtcFile::Hosts, render_hosts(cfg)),
        (EtcFile::Hostname, format!("{}\n", cfg.hostname)),
        (EtcFile::ResolvConf, String::new()),
    ]
}

/// For a Host rootfs: its extra paths that are directories, searched before the default PATH.
fn path_prefix(cfg: &InstanceConfig) -> Vec<String> {
    match &cfg.rootfs {
        Rootfs::Host { extra_paths } => extra_paths
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| p.display().to_string())
            .collect(),
        Rootfs::Dir { .. } | Rootfs::Layers { .. } => Vec::new(),
    }
}

fn create_dir(dir: &Path) -> InitResult<()> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Mounts the instance's root and everything below it; returns where the root is mounted.
/// The instance's root, and /proc/sys kept open when sysctls are to be set.
fn build_rootfs(
    cfg: &InstanceConfig,
    userns: Option<&OwnedFd>,
) -> InitResult<(PathBuf, Option<File>)> {
    let (root, host_dirs) = mount_root(cfg, userns)?;
    start_steps::init_mark("private mounts, scratch tmpfs, overlay root");
    let rootfs = root.as_path();
    // Bind mounts of an instance with a user namespace are idmapped mounts of it; a host path
    // on a filesystem that cannot be idmapped is bound as it is (its files show as nobody's).
    let bind = |source: &Path, target: &Path, mode: BindMode| match userns {
        None => bind(source, target, mode),
        Some(namespace) => userns::bind(source, target, mode.attributes(), namespace)
            .or_else(|_| bind(source, target, mode)),
    };

    for dir in host_dirs {
        let source = Path::new("/").join(dir);
        bind(&source, &rootfs.join(dir), BindMode::ReadOnly)?;
    }
    if matches!(cfg.rootfs, Rootfs::Host { .. }) {
        hide_host_secrets(rootfs)?;
    }
    for dir in ["proc", "dev", "sys", "tmp", "etc"] {
        make_mount_point_kind(&rootfs.join(dir), true)?;
    }
    start_steps::init_mark("host directories, mount points");
    let proc = rootfs.join("proc");
    mount_fs(
        "proc",
        &proc,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    if userns.is_some() {
        userns::open_low_ports(&proc)?;
    }
    // Kept writable for the sysctls, which wait for the network (eth0) before they are set, and
    // for eth0's own settings.
    let sysctl_dir = match cfg.sandbox.sysctls.is_empty() && cfg.network.is_none() {
        true => None,
        false => Some(
            File::open(proc.join("sys"))
                .map_err(|e| format!("cannot open /proc/sys for the sysctls: {e}"))?,
        ),
    };
    protect_proc(&proc)?;
    start_steps::init_mark("/proc and its masks");
    mount_dev(&rootfs.join("dev"), DeviceFiles::Bind)?;
    start_steps::init_mark("/dev");
    if let Some(size) = cfg.sandbox.shm_size {
        let shm = rootfs.join("dev/shm");
        mount(
            None::<&str>,
            &shm,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,size={size}").as_str()),
        )
        .map_err(|e| format!("cannot size /dev/shm to {size} bytes: {e}"))?;
    }
    mount_fs(
        "sysfs",
        &rootfs.join("sys"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "tmpfs",
        &rootfs.join("tmp"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    start_steps::init_mark("/sys and /tmp");
    // After /tmp and the others, so that paths below them are not hidden.
    if let Rootfs::Host { extra_paths } = &cfg.rootfs {
        for path in extra_paths {
            if !path.is_absolute() {
                return Err(format!(
                    "extra host path {} is not absolute",
                    path.display()
                ));
            }
            let target = under(rootfs, path);
            make_mount_point(path, &target)?;
            bind(path, &target, BindMode::ReadOnly)?;
        }
    }
    for m in &cfg.mounts {
        let target = under(rootfs, Path::new(&m.target));
        make_mount_point(&m.source, &target)?;
        let mode = if m.read_only {
            BindMode::ReadOnly
        } else {
            BindMode::ReadWrite
        };
        bind(&m.source, &target, mode)?;
    }
    for t in &cfg.sandbox.tmpfs {
        let target = under(rootfs, Path::new(&t.target));
        make_mount_point_kind(&target, true)?;
        let mut data = format!("mode={:o}", t.mode.unwrap_or(0o1777));
        if let Some(size) = t.size {
            data.push_str(&format!(",size={size}"));
        }
        mount_fs(
            "tmpfs",
            &target,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(&data),
        )?;
    }
    start_steps::init_mark("the service's mounts");
    Ok((root, sysctl_dir))
}

/// Makes the mount tree private and mounts the bare overlay root (nothing below it); returns
/// where, and the host directories of a Host rootfs to bind into it.
///
/// `dir/rootfs` gets a small tmpfs holding the Host rootfs' lower skeleton and the overlay's
/// mount point: the skeleton costs no disk writes (on some hosts a mkdir on disk takes 0.25 ms)
/// and the mount namespace drops it all when the instance ends.
fn mount_root(
    cfg: &InstanceConfig,
    userns: Option<&OwnedFd>,
) -> InitResult<(PathBuf, Vec<&'static str>)> {
    crate::mounts::make_mounts_private()?;

    let [scratch, upper, work] = instance_dirs(cfg);
    mount_fs(
        "tmpfs",
        &scratch,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=1m"),
    )?;
    let rootfs = scratch.join("merged");
    create_dir(&rootfs)?;
    let (upper, work) = match cfg.limits.disk {
        None => (upper, work),
        // The writable layer on its own filesystem, mounted in this namespace only.
        Some(_) => {
            let layer = scratch.join("disk");
            create_dir(&layer)?;
            let (device, _held) = crate::disk::attach(&crate::disk::image_path(&cfg.dir))?;
            mount(
                Some(device.as_path()),
                &layer,
                Some("ext4"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| {
                format!(
                    "cannot mount the writable layer {} on {}: {e}",
                    device.display(),
                    layer.display()
                )
            })?;
            let (upper, work) = (layer.join("upper"), layer.join("work"));
            create_dir(&upper)?;
            create_dir(&work)?;
            (upper, work)
        }
    };
    let (lowers, host_dirs) = match &cfg.rootfs {
        Rootfs::Host { .. } => {
            let lower = scratch.join("lower");
            let host_dirs = host_skeleton(&lower)?;
            (vec![lower], host_dirs)
        }
        Rootfs::Dir { path } => (vec![path.clone()], Vec::new()),
        // overlayfs lists the top layer first. On top of the image's layers, a layer on the
        // scratch tmpfs holds the mount points and the /etc files bound below, so that none is
        // created on disk in the instance's upper layer (as the host form's skeleton does).
        Rootfs::Layers { layers } => {
            let stubs = scratch.join("stubs");
            mount_point_stubs(&stubs, layers)?;
            let mut lowers = vec![stubs];
            lowers.extend(layers.iter().rev().cloned());
            (lowers, Vec::new())
        }
    };
    let lowers = match (userns, &cfg.userns) {
        (Some(namespace), Some(range)) => {
            userns::give_layer(range, &[&upper, &work])?;
            // Each lower layer through an idmapped mount, attached on the scratch tmpfs.
            let mut mapped = Vec::with_capacity(lowers.len());
            for (i, lower) in lowers.iter().enumerate() {
                let at = scratch.join(format!("idmapped-{i}"));
                create_dir(&at)?;
                userns::bind(lower, &at, 0, namespace)?;
                mapped.push(at);
            }
            mapped
        }
        _ => lowers,
    };
    for path in lowers.iter().chain([&upper, &work]) {
        let s = path.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(format!(
                "overlay layer path {s} contains ',' or ':', which overlayfs cannot take"
            ));
        }
    }
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
    // The kernel takes mount options of at most one page.
    if data.len() >= 4096 {
        return Err(format!(
            "the image's {} layers make an overlay mount option of {} bytes, more than the kernel's 4096: use an image with fewer layers, or a shorter state root",
            lowers.len(),
            data.len()
        ));
    }
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the overlay root on {} ({data}): {e}",
            rootfs.display()
        )
    })?;
    Ok((rootfs, host_dirs))
}

/// Execs `criu restore` of `plan` with `root` (the bare overlay) as the root, in this network
/// namespace (eth0 configured for the new slot) and with the new log; returns only on failure.
fn exec_criu_restore(
    cfg: &InstanceConfig,
    plan: &RestorePlan,
    root: &Path,
) -> InitResult<std::convert::Infallible> {
    configure_network(cfg, None)?;
    let inherit = |file: File| -> InitResult<OwnedFd> {
        let fd = OwnedFd::from(file);
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(|e| format!("cannot pass a file to criu: {e}"))?;
        Ok(fd)
    };
    let net = inherit(
        File::open("/proc/self/ns/net")
            .map_err(|e| format!("cannot open the network namespace: {e}"))?,
    )?;
    let logs = plan
        .log_keys
        .iter()
        .map(|_| {
            inherit(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&cfg.log_path)
                    .map_err(|e| format!("cannot open log file {}: {e}", cfg.log_path.display()))?,
            )
        })
        .collect::<InitResult<Vec<OwnedFd>>>()?;
    use std::os::fd::AsRawFd;
    let log_fds: Vec<i32> = logs.iter().map(|l| l.as_raw_fd()).collect();
    let mut argv = vec![plan.criu.display().to_string()];
    argv.extend(crate::criu::restore_args(
        plan,
        root,
        net.as_raw_fd(),
        &log_fds,
    ));
    // criu runs tar (tmpfs contents) and ip from PATH.
    let env = [(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    )];
    std::env::set_current_dir(&plan.images)
        .map_err(|e| format!("cannot enter {}: {e}", plan.images.display()))?;
    let error = identity::exec(&argv, &env);
    Err(format!("cannot run {}: {error}", plan.criu.display()))
}

/// The mount points an image's root needs (/proc, /dev, /sys, /tmp) and the /etc files bound
/// over it, empty, in `dir`; none where a layer has something other than a directory (a
/// symlink to follow), which a directory above would hide.
fn mount_point_stubs(dir: &Path, layers: &[PathBuf]) -> InitResult<()> {
    create_dir(dir)?;
    let not_a_dir = |rel: &str| {
        layers
            .iter()
            .any(|l| fs::symlink_metadata(l.join(rel)).is_ok_and(|m| !m.is_dir()))
    };
    for sub in ["proc", "dev", "sys", "tmp", "etc"] {
        if !not_a_dir(sub) {
            create_dir(&dir.join(sub))?;
        }
    }
    if dir.join("etc").is_dir() {
        for file in ["hosts", "hostname", "resolv.conf"] {
            let path = dir.join("etc").join(file);
            fs::write(&path, b"").map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Hides the host's secrets that a Host rootfs' read-only /etc would show: files under /dev/null,
/// directories under an empty read-only tmpfs. What does not exist on this host is skipped.
fn hide_host_secrets(rootfs: &Path) -> InitResult<()> {
    for file in HOST_SECRET_FILES {
        let path = rootfs.join(file);
        if path.is_file() {
            bind(Path::new("/dev/null"), &path, BindMode::ReadOnly)?;
        }
    }
    for dir in HOST_SECRET_DIRS {
        let path = rootfs.join(dir);
        if path.is_dir() {
            mount_fs(
                "tmpfs",
                &path,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=700,size=4k"),
            )?;
        }
    }
    Ok(())
}

/// Creates the Host rootfs' lower layer; returns the host directories to bind read-only.
fn host_skeleton(lower: &Path) -> InitResult<Vec<&'static str>> {
    for dir in SKELETON_DIRS {
        create_dir(&lower.join(dir))?;
    }
    let mut binds = vec!["usr", "etc"];
    for name in HOST_LIB_DIRS {
        let host = Path::new("/").join(name);
        let ours = lower.join(name);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && fs::symlink_metadata(&ours).is_err() => {
                let target = fs::read_link(&host)
                    .map_err(|e| format!("cannot read link {}: {e}", host.display()))?;
                symlink(&target, &ours)
                    .map_err(|e| format!("cannot create link {}: {e}", ours.display()))?;
            }
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(m) if m.is_dir() => {
                create_dir(&ours)?;
                binds.push(name);
            }
            _ => {}
        }
    }
    Ok(binds)
}

pub(crate) fn mount_proc(proc: &Path) -> InitResult<()> {
    mount_fs(
        "proc",
        proc,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    protect_proc(proc)
}

/// Makes a fresh /proc's kernel knobs read-only and hides what leaks the host's state.
fn protect_proc(proc: &Path) -> InitResult<()> {
    for entry in PROC_READ_ONLY {
        let path = proc.join(entry);
        if path.exists() {
            bind(&path, &path, BindMode::ReadOnly)?;
        }
    }
    for entry in PROC_MASKED {
        let path = proc.join(entry);
        if path.exists() {
            bind(Path::new("/dev/null"), &path, BindMode::ReadOnly)?;
        }
    }
    Ok(())
}

/// How /dev gets its device files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceFiles {
    /// Bind mounts of the host's: what works whatever the namespaces.
    Bind,
    /// Device nodes made like the host's (mknod), a bind mount where that is refused: a mount
    /// less per device, for processes with CAP_MKNOD in the initial user namespace.
    Nodes,
}

pub(crate) fn mount_dev(dev: &Path, files: DeviceFiles) -> InitResult<()> {
    mount_fs(
        "tmpfs",
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let Ok(meta) = fs::metadata(&host) else {
            continue;
        };
        let target = dev.join(name);
        if files == DeviceFiles::Nodes && make_device_node(&target, &meta).is_ok() {
            continue;
        }
        make_mount_point_kind(&target, false)?;
        bind(&host, &target, BindMode::Device)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, dev.join(link))
            .map_err(|e| format!("cannot create link {}: {e}", dev.join(link).display()))?;
    }
    let pts = dev.join("pts");
    create_dir(&pts)?;
    mount_fs(
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    create_dir(&shm)?;
    mount_fs(
        "tmpfs",
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
}

/// A character device at `target` like the host's `meta` (type, numbers and permissions).
fn make_device_node(target: &Path, meta: &fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    if !meta.file_type().is_char_device() {
        return Err(std::io::Error::other("not a character device"));
    }
    let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o777);
    nix::sys::stat::mknod(target, nix::sys::stat::SFlag::S_IFCHR, mode, meta.rdev())?;
    // mknod applies the umask.
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o777))
}

/// Binds the generated /etc/hosts, /etc/hostname and /etc/resolv.conf (written by the daemon
/// into the instance directory) over the (possibly read-only) /etc of the root.
fn bind_etc_files(cfg: &InstanceConfig, rootfs: &Path) -> InitResult<()> {
    for (file, name) in [
        (EtcFile::Hosts, "hosts"),
        (EtcFile::Hostname, "hostname"),
        (EtcFile::ResolvConf, "resolv.conf"),
    ] {
        let source = etc_file_path(&cfg.dir, file);
        let target = rootfs.join("etc").join(name);
        if fs::symlink_metadata(&target).is_err() && make_mount_point_kind(&target, false).is_err()
        {
            // A read-only host /etc without this file: the instance goes without it.
            continue;
        }
        if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            // A symlink would be followed out of the instance's /etc (e.g. resolv.conf into /run).
            continue;
        }
        bind(&source, &target, BindMode::ReadOnly)?;
    }
    Ok(())
}

/// The host paths to hand to the instance's user, opened without following a link.
fn open_owned(cfg: &InstanceConfig) -> InitResult<Vec<(PathBuf, OwnedFd)>> {
    use nix::fcntl::{open, OFlag};
    cfg.owned
        .iter()
        .map(|path| {
            let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            open(path, flags, nix::sys::stat::Mode::empty())
                .map(|fd| (path.clone(), fd))
                .map_err(|e| format!("cannot open {}: {e}", path.display()))
        })
        .collect()
}

/// Makes the instance's user (and group) the owner of what it alone may use.
fn hand_over(owned: &[(PathBuf, OwnedFd)], user: &identity::Identity) -> InitResult<()> {
    for (path, fd) in owned {
        nix::unistd::fchownat(
            fd,
            "",
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| format!("cannot give {} to uid {}: {e}", path.display(), user.uid))?;
    }
    Ok(())
}

/// Gives eth0 no IPv6, before it goes up: the application networks are IPv4 (as Docker's are
/// unless a network enables IPv6), and an interface with IPv6 announces itself (duplicate
/// address detection, multicast listener reports) in multicast frames that the bridge floods to
/// every instance of the application: a cost that grew with their number, the largest while
/// the thousandth started. lo keeps ::1; a service's own sysctl
/// `net.ipv6.conf.eth0.disable_ipv6 = 0`, set after this, turns it back on.
fn turn_ipv6_off(sysctl_dir: &File) -> InitResult<()> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let path = format!("net/ipv6/conf/{INSTANCE_IFACE}/disable_ipv6");
    match openat(
        sysctl_dir,
        path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => File::from(fd)
            .write_all(b"1")
            .map_err(|e| format!("cannot turn IPv6 off on {INSTANCE_IFACE}: {e}")),
        // A kernel without IPv6.
        Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(format!("cannot open /proc/sys/{path}: {e}")),
    }
}

fn pivot_into(rootfs: &Path) -> InitResult<()> {
    std::env::set_current_dir(rootfs)
        .map_err(|e| format!("cannot enter {}: {e}", rootfs.display()))?;
    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the new.
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| format!("cannot pivot_root into {}: {e}", rootfs.display()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("cannot enter the new root: {e}"))
}

/// lo up; eth0 (created by the daemon in our netns) gets no IPv6 (see [`turn_ipv6_off`]), the
/// instance's address, goes up and knows the bridge's link-layer address for the gateway and
/// the service addresses. No default route: nothing leaves the machine. `sysctl_dir` is the
/// instance's /proc/sys, opened before /proc was made read-only.
fn configure_network(cfg: &InstanceConfig, sysctl_dir: Option<&File>) -> InitResult<()> {
    let mut nl = Netlink::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let lo = netlink::link_index("lo").map_err(|e| format!("cannot find lo: {e}"))?;
    nl.set_up(lo)
        .map_err(|e| format!("cannot set lo up: {e}"))?;
    if let Some(net) = &cfg.network {
        let index = netlink::link_index(INSTANCE_IFACE)
            .map_err(|e| format!("cannot find {INSTANCE_IFACE}: {e}"))?;
        if let Some(dir) = sysctl_dir {
            turn_ipv6_off(dir)?;
        }
        nl.add_address(index, net.address.addr(), net.address.prefix_len())
            .map_err(|e| format!("cannot add {} to {INSTANCE_IFACE}: {e}", net.address))?;
        nl.set_up(index)
            .map_err(|e| format!("cannot set {INSTANCE_IFACE} up: {e}"))?;
        let bridge_mac = crate::network::bridge_mac(&net.bridge);
        for address in net.gateway.iter().chain(&net.bridge_addresses) {
            nl.set_neighbour(index, *address, &bridge_mac)
                .map_err(|e| format!("cannot set the neighbour entry of {address}: {e}"))?;
        }
        if let Some(gateway) = net.gateway {
            for destination in &net.routes {
                nl.add_host_route(index, *destination, gateway)
                    .map_err(|e| format!("cannot route {destination} through {gateway}: {e}"))?;
            }
        }
    }
    Ok(())
}
