//! Checkpoint and restore of a running instance with CRIU: the process tree moves, with its
//! memory, into a new instance slot (address, cgroup, log, /etc files, PaCI socket).
//!
//! **Checkpoint** (`criu dump --leave-stopped`): the tree stays, stopped, until the daemon
//! kills it once the restore succeeded, or resumes it (SIGCONT) if the restore failed. What
//! belongs to the slot is declared external, so that it is not saved but supplied again on
//! restore: the network namespace (`--external net[INODE]`), the instance's log (normally the
//! one file it has open from outside its mount namespace, `--external file[MNT:INO]`), and the bind
//! mounts of the instance's own files (`--external mnt[TARGET]`: /etc/hosts, /etc/hostname,
//! /etc/resolv.conf, volumes, the PaCI socket's directory). Other bind mounts of host paths
//! (host /usr, device nodes) are found by CRIU (`--external mnt[]`) and bound again from the
//! same host paths.
//!
//! **Restore**: the old upper layer is copied into the successor's, then a helper is cloned as
//! for a start ([`crate::spawn`]), but into new mount and network namespaces only, in the
//! successor's cgroup: it mounts the bare overlay root, takes the daemon's veth and configures
//! it, and execs `criu restore --root ROOT --restore-detached --restore-sibling` with the
//! successor's network namespace and log as inherited fds. CRIU creates the pid, mount, uts
//! and ipc namespaces from the checkpoint; the restored first process is a sibling of CRIU,
//! so the daemon's child (**Architecture Invariant** of the runtime: it waits for it as for
//! any instance), and in the successor's cgroup because CRIU runs there (`--manage-cgroups
//! ignore`). The hostname and the environment are part of the restored state: they stay the
//! old instance's.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::RestorePlan;
use crate::{paths, EtcFile, InstanceConfig, Process};

/// The key under which the instance's network namespace is external.
pub(crate) const NET_KEY: &str = "paracloud-net";
/// CRIU's logs and pid file, in the image directory.
pub(crate) const DUMP_LOG: &str = "dump.log";
pub(crate) const RESTORE_LOG: &str = "restore.log";
pub(crate) const PID_FILE: &str = "restored.pid";
/// The most error lines of a CRIU log put in an error message.
const ERROR_LINES: usize = 6;

/// The /etc files bound over the instance's, and where they are.
const ETC_BINDS: &[(EtcFile, &str)] = &[
    (EtcFile::Hosts, "/etc/hosts"),
    (EtcFile::Hostname, "/etc/hostname"),
    (EtcFile::ResolvConf, "/etc/resolv.conf"),
];

/// A checkpoint taken: what a restore needs besides the successor's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// CRIU's image directory.
    pub images: PathBuf,
    /// The instance directory of the checkpointed instance (its upper layer is copied).
    pub from_dir: PathBuf,
    /// `file[MNT:INO]` of the instance's log as its processes have it open (one key per mount
    /// it was opened through; normally one, from outside the instance).
    pub log_keys: Vec<String>,
    /// Mount points whose source belongs to the instance slot, bound on restore from the
    /// successor's sources.
    pub binds: Vec<String>,
    /// How long `criu dump` took.
    pub took: Duration,
}

/// The arguments of `criu dump` for the tree of `pid`.
pub(crate) fn dump_args(
    pid: i32,
    images: &Path,
    net_inode: u64,
    log_keys: &[String],
    binds: &[String],
) -> Vec<String> {
    let mut args = vec![
        "dump".to_string(),
        "--tree".into(),
        pid.to_string(),
        "--images-dir".into(),
        images.display().to_string(),
        "--log-file".into(),
        DUMP_LOG.into(),
        "-v4".into(),
        "--leave-stopped".into(),
        // Nothing to lock: the network namespace is not part of the checkpoint.
        "--network-lock".into(),
        "skip".into(),
        "--manage-cgroups=ignore".into(),
        "--file-locks".into(),
        "--external".into(),
        format!("net[{net_inode}]:{NET_KEY}"),
    ];
    for key in log_keys {
        args.extend(["--external".into(), key.clone()]);
    }
    for target in binds {
        args.extend(["--external".into(), format!("mnt[{target}]:{target}")]);
    }
    args.extend(["--external".into(), "mnt[]".into()]);
    args
}

/// The arguments of `criu restore`, with the successor's network namespace open as `net_fd`
/// and its log as `log_fds`, one for each of the plan's log keys (criu takes each fd over).
pub(crate) fn restore_args(
    plan: &RestorePlan,
    root: &Path,
    net_fd: i32,
    log_fds: &[i32],
) -> Vec<String> {
    let mut args = vec![
        "restore".to_string(),
        "--images-dir".into(),
        plan.images.display().to_string(),
        "--log-file".into(),
        RESTORE_LOG.into(),
        "-v4".into(),
        "--root".into(),
        root.display().to_string(),
        "--restore-detached".into(),
        "--restore-sibling".into(),
        "--pidfile".into(),
        plan.images.join(PID_FILE).display().to_string(),
        "--network-lock".into(),
        "skip".into(),
        "--manage-cgroups=ignore".into(),
        "--file-locks".into(),
        "--inherit-fd".into(),
        format!("fd[{net_fd}]:{NET_KEY}"),
    ];
    for (key, fd) in plan.log_keys.iter().zip(log_fds) {
        args.extend(["--inherit-fd".into(), format!("fd[{fd}]:{key}")]);
    }
    for (target, source) in &plan.binds {
        args.extend([
            "--external".into(),
            format!("mnt[{target}]:{}", source.display()),
        ]);
    }
    args.extend(["--external".into(), "mnt[]".into()]);
    args
}

/// The mount points of `cfg` whose source belongs to the instance slot.
pub(crate) fn slot_binds(cfg: &InstanceConfig) -> Vec<String> {
    let mut binds: Vec<String> = ETC_BINDS.iter().map(|(_, t)| t.to_string()).collect();
    binds.extend(cfg.mounts.iter().map(|m| m.target.clone()));
    binds
}

/// Where the successor's source of each of `binds` is; an error names a mount point the
/// successor lacks.
pub(crate) fn successor_sources(
    binds: &[String],
    cfg: &InstanceConfig,
) -> Result<Vec<(String, PathBuf)>, String> {
    binds
        .iter()
        .map(|target| {
            let etc = ETC_BINDS.iter().find(|(_, t)| t == target);
            let source = match etc {
                Some((file, _)) => Some(paths::etc_file_path(&cfg.dir, *file)),
                None => cfg
                    .mounts
                    .iter()
                    .find(|m| &m.target == target)
                    .map(|m| m.source.clone()),
            };
            source.map(|s| (target.clone(), s)).ok_or_else(|| {
                format!("the checkpoint has a mount at {target} that the new instance lacks: restore it into an instance of the same spec")
            })
        })
        .collect()
}

/// Mount points CRIU cannot take in `mnt[...]` (it ends the key at the first ']').
pub(crate) fn check_binds(binds: &[String]) -> Result<(), String> {
    match binds.iter().find(|b| b.contains(']') || b.contains(',')) {
        Some(b) => Err(format!(
            "mount point {b:?} has a ']' or ',', which CRIU cannot name: use another path"
        )),
        None => Ok(()),
    }
}

/// Errors CRIU logs that do not stop it (as root in a cgroup that caps open files).
const HARMLESS: &[&str] = &["Can't setup RLIMIT_NOFILE"];

/// Failures with a known cause, and what to do about them.
const KNOWN: &[(&str, &str)] = &[(
    "Can't get 1:16 opt",
    "the instance has a TCP or UDP socket, and CRIU cannot checkpoint one on this kernel (it refuses SO_PASSCRED on inet sockets); migrate it with --via paci or --via restart",
)];

/// What a failed CRIU run logged: the known cause first, then the last few error lines (or
/// the last lines when none says "Error").
pub fn log_errors(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .filter(|l| !HARMLESS.iter().any(|h| l.contains(h)))
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        log.lines().collect()
    } else {
        errors
    };
    let tail = &lines[lines.len().saturating_sub(ERROR_LINES)..];
    let tail = tail.iter().map(|l| l.trim()).collect::<Vec<_>>().join("; ");
    match KNOWN.iter().find(|(needle, _)| log.contains(needle)) {
        Some((_, cause)) => format!("{cause} (criu: {tail})"),
        None => tail,
    }
}

/// `file[MNT:INO]`, as CRIU names a file it is told is external (both in hex).
pub(crate) fn file_key(mnt_id: u64, inode: u64) -> String {
    format!("file[{mnt_id:x}:{inode:x}]")
}

/// The `mnt_id:` field of /proc/PID/fdinfo/N.
pub(crate) fn fdinfo_mnt_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()
}

/// The mount ids (first field) of a mountinfo file.
pub(crate) fn mount_ids(mountinfo: &str) -> BTreeSet<u64> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The id of the mount at / in a mountinfo file.
pub(crate) fn root_mount_id(mountinfo: &str) -> Option<u64> {
    mountinfo.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(4) == Some(&"/")).then(|| fields[0].parse().ok())?
    })
}

/// The children pids listed in /proc/PID/task/TID/children.
pub(crate) fn parse_children(content: &str) -> Vec<i32> {
    content
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `pid` and every descendant.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let p = tree[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            tree.extend(parse_children(&children));
        }
    }
    tree
}

/// Finds how the tree of `pid` has its log (`log`) open: the keys under which the log is
/// external (it is the slot's, wherever it was opened through, even a bind mount of the state
/// root inside the instance); any other file open from outside the instance's mount namespace
/// is an error naming it.
pub(crate) fn log_keys(pid: i32, log: &Path) -> Result<Vec<String>, String> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("cannot read /proc/{pid}/mountinfo: {e}"))?;
    let inside = mount_ids(&mountinfo);
    let root_mount = root_mount_id(&mountinfo);
    let log_inode = std::fs::metadata(log).ok().map(|m| (m.dev(), m.ino()));
    let mut keys = BTreeSet::new();
    for p in process_tree(pid) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let text = link.display().to_string();
            if !text.starts_with('/') {
                // socket:[..], pipe:[..], anon_inode:..: not files of a mount.
                continue;
            }
            let name = fd.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/{p}/fdinfo/{}", name.to_string_lossy()))
                    .unwrap_or_default();
            let (Some(mnt_id), Ok(meta)) = (fdinfo_mnt_id(&info), std::fs::metadata(fd.path()))
            else {
                continue;
            };
            if Some((meta.dev(), meta.ino())) == log_inode {
                keys.insert(file_key(mnt_id, meta.ino()));
                // CRIU names a file it can also reach through the instance's overlay root (a
                // bind mount of the state root inside it) by the root mount instead.
                let through_root = Path::new(&format!("/proc/{pid}/root")).join(&text[1..]);
                if let (Some(root), Ok(m)) = (root_mount, std::fs::metadata(through_root)) {
                    if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                        keys.insert(file_key(root, meta.ino()));
                    }
                }
                continue;
            }
            if inside.contains(&mnt_id) {
                continue;
            }
            return Err(format!(
                "pid {p} of the instance has {text} open (fd {}), a file from outside the instance that CRIU cannot restore in a new one: close it, or migrate with --via paci or --via restart",
                name.to_string_lossy()
            ));
        }
    }
    Ok(keys.into_iter().collect())
}

/// `criu dump` of the instance run by `process` (config `cfg`) into `images`; the tree is left
/// stopped.
pub(crate) async fn checkpoint(
    criu: &Path,
    process: &Process,
    cfg: &InstanceConfig,
    images: &Path,
) -> crate::Result<Checkpoint> {
    let failed = |message: String| crate::Error::Criu {
        id: cfg.id.clone(),
        action: "checkpoint",
        message,
    };
    let pid = process.pid;
    let binds = slot_binds(cfg);
    check_binds(&binds).map_err(failed)?;
    let net_inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map_err(|e| {
            failed(format!(
                "cannot read the network namespace of pid {pid}: {e}"
            ))
        })?
        .ino();
    let log_keys = log_keys(pid, &cfg.log_path).map_err(failed)?;
    std::fs::create_dir_all(images)
        .map_err(|e| failed(format!("cannot create {}: {e}", images.display())))?;
    let args = dump_args(pid, images, net_inode, &log_keys, &binds);
    let begun = Instant::now();
    let status = run_criu(criu, &args).await.map_err(failed)?;
    let took = begun.elapsed();
    if !status.success() {
        let log = std::fs::read_to_string(images.join(DUMP_LOG)).unwrap_or_default();
        return Err(failed(format!(
            "criu dump failed ({status}): {} (log: {})",
            log_errors(&log),
            images.join(DUMP_LOG).display()
        )));
    }
    Ok(Checkpoint {
        images: images.to_path_buf(),
        from_dir: cfg.dir.clone(),
        log_keys,
        binds,
        took,
    })
}

async fn run_criu(criu: &Path, args: &[String]) -> Result<std::process::ExitStatus, String> {
    tokio::process::Command::new(criu)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run {}: {e}", criu.display()))
}

/// Copies a directory tree as overlayfs reads it (an upper layer): files, directories,
/// symlinks, device nodes (whiteouts are 0/0 character devices), fifos, with modes, owners
/// and extended attributes (opaque directories). Sockets are skipped: they are bound again.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        if !to.is_dir() {
            std::fs::create_dir(to)?;
        }
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if kind.is_file() {
        std::fs::copy(from, to)?;
    } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
        let sflag = if kind.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else if kind.is_block_device() {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFIFO
        };
        nix::sys::stat::mknod(
            to,
            sflag,
            nix::sys::stat::Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )?;
    } else {
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !kind.is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(from, to)
}

fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    // The l* calls: a symlink's own attributes, not its target's.
    for name in xattr::list(from)? {
        if let Some(value) = xattr::get(from, &name)? {
            xattr::set(to, &name, &value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_declares_the_slot_external_and_finds_the_other_binds() {
        let args = dump_args(
            42,
            Path::new("/s/img"),
            4026532000,
            &["file[1f:a]".to_string()],
            &["/etc/hosts".into(), "/run/paracloud".into()],
        );
        let text = args.join(" ");
        assert!(
            text.starts_with("dump --tree 42 --images-dir /s/img"),
            "{text}"
        );
        for want in [
            "--leave-stopped",
            "--manage-cgroups=ignore",
            "--external net[4026532000]:paracloud-net",
            "--external file[1f:a]",
            "--external mnt[/etc/hosts]:/etc/hosts",
            "--external mnt[/run/paracloud]:/run/paracloud",
            "--external mnt[]",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    #[test]
    fn restore_takes_the_successors_namespace_log_and_sources() {
        let plan = RestorePlan {
            criu: "/usr/local/sbin/criu".into(),
            images: "/s/img".into(),
            log_keys: vec!["file[1f:a]".into()],
            binds: vec![("/run/paracloud".into(), "/s/paci/app-x-2".into())],
        };
        let text = restore_args(&plan, Path::new("/s/i/rootfs/merged"), 5, &[6]).join(" ");
        for want in [
            "--root /s/i/rootfs/merged",
            "--restore-detached --restore-sibling",
            "--pidfile /s/img/restored.pid",
            "--inherit-fd fd[5]:paracloud-net",
            "--inherit-fd fd[6]:file[1f:a]",
            "--external mnt[/run/paracloud]:/s/paci/app-x-2",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    #[test]
    fn a_mount_the_successor_lacks_is_named() {
        let cfg: InstanceConfig = serde_json::from_value(serde_json::json!({
            "id": "a-x-2", "hostname": "x.2", "dir": "/s/i/x.2",
            "rootfs": {"Host": {"extra_paths": []}}, "argv": ["/bin/true"], "env": {},
            "working_dir": null, "user": null,
            "mounts": [{"source": "/s/v/data", "target": "/data", "read_only": false}],
            "hosts": [], "network": null, "limits": {}, "capabilities": [],
            "log_path": "/s/i/x.2/output.log"
        }))
        .unwrap();
        let sources = successor_sources(&["/etc/hosts".into(), "/data".into()], &cfg).unwrap();
        assert_eq!(
            sources,
            [
                (
                    "/etc/hosts".to_string(),
                    PathBuf::from("/s/i/x.2/etc-hosts")
                ),
                ("/data".to_string(), PathBuf::from("/s/v/data")),
            ]
        );
        let err = successor_sources(&["/cache".into()], &cfg).unwrap_err();
        assert!(
            err.contains("mount at /cache that the new instance lacks"),
            "{err}"
        );
        assert!(check_binds(&["/a]b".into()]).is_err());
    }

    #[test]
    fn criu_logs_are_cut_to_their_errors() {
        let log = "(00.001) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self\n(00.002) Error (criu/files.c:9): Unable to open fd=1\n(00.003) Error (criu/cr-restore.c:1): Restoring FAILED.\n";
        assert_eq!(
            log_errors(log),
            "(00.002) Error (criu/files.c:9): Unable to open fd=1; (00.003) Error (criu/cr-restore.c:1): Restoring FAILED."
        );
        assert_eq!(log_errors("a\nb\n"), "a; b");
        let tcp = "(00.05) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported\n";
        let said = log_errors(tcp);
        assert!(
            said.starts_with("the instance has a TCP or UDP socket") && said.contains("--via paci"),
            "{said}"
        );
    }

    /// Needs root (a whiteout is a device node, an opaque directory a trusted.* attribute).
    #[test]
    fn an_upper_layer_is_copied_with_whiteouts_and_opaque_directories() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
        std::fs::create_dir_all(from.join("etc/opaque")).unwrap();
        std::fs::write(from.join("etc/app.conf"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink("app.conf", from.join("etc/link")).unwrap();
        nix::sys::stat::mknod(
            &from.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .unwrap();
        xattr::set(from.join("etc/opaque"), "trusted.overlay.opaque", b"y").unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("etc/app.conf")).unwrap(),
            "x = 1\n"
        );
        assert_eq!(
            std::fs::read_link(to.join("etc/link")).unwrap(),
            Path::new("app.conf")
        );
        let gone = std::fs::symlink_metadata(to.join("etc/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert_eq!(
            xattr::get(to.join("etc/opaque"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }

    #[test]
    fn proc_files_are_read() {
        assert_eq!(file_key(31, 0xbeef), "file[1f:beef]");
        assert_eq!(
            fdinfo_mnt_id("pos:\t0\nflags:\t02\nmnt_id:\t31\nino:\t7\n"),
            Some(31)
        );
        assert_eq!(
            mount_ids("31 1 0:5 / / rw - overlay o rw\n40 31 0:6 / /proc rw - proc p rw\n"),
            BTreeSet::from([31, 40])
        );
        assert_eq!(parse_children("12 13 "), vec![12, 13]);
        assert_eq!(
            root_mount_id("40 31 0:6 / /proc rw - proc p rw\n31 1 0:5 / / rw - overlay o rw\n"),
            Some(31)
        );
    }
}
