//! User namespaces of instances: root inside an instance is an unprivileged range of host ids
//! (one range per application, as Docker's userns-remap and Podman's auto userns give), so that
//! an instance's root is nobody on the host.
//!
//! sandbox-init builds the instance's root as today, as the host's root, then enters the user
//! namespace last, just before it takes the instance's identity. The image layers, the host
//! directories of `image = "host"` and the bind mounts are idmapped mounts of that namespace:
//! their files keep their owners on disk and are seen with the same owners inside, so that
//! nothing is copied or chowned. Only the writable layer's two directories, new and empty, are
//! given to the range's root.
//!
//! The other namespaces (mount, network, pid...) stay owned by the host's user namespace: the
//! instance's root cannot mount, configure its network or change sysctls, whatever capabilities
//! it keeps. Ports below 1024 are opened to every user of the instance's network namespace,
//! which only the instance uses.

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;

use crate::sys::{self, Forked};
use crate::IdRange;

type InitResult<T> = Result<T, String>;

/// A user namespace the spawner made ahead for a range, left here for the sandbox-init it
/// clones next (the child inherits this process's memory and fds); taken by [`create`].
static MADE_AHEAD: Mutex<Option<(IdRange, OwnedFd)>> = Mutex::new(None);

/// Leaves `made` for the next [`create`] of its range (`None`: drops what was left).
pub(crate) fn leave_made_ahead(made: Option<(IdRange, OwnedFd)>) {
    *MADE_AHEAD.lock().unwrap_or_else(|e| e.into_inner()) = made;
}

/// The fd of the user namespace left by [`leave_made_ahead`], if any.
pub(crate) fn made_ahead_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let made = MADE_AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    made.as_ref().map(|(_, namespace)| namespace.as_raw_fd())
}

/// A new user namespace mapping ids 0..size inside to host..host+size, as an open namespace
/// file: the one made ahead for `range` if there is one, else made now by a short-lived child
/// (a namespace cannot be made for another process), whose maps this process, root of the
/// host's namespace, writes.
pub(crate) fn create(range: &IdRange) -> InitResult<OwnedFd> {
    let made = MADE_AHEAD.lock().unwrap_or_else(|e| e.into_inner()).take();
    match made {
        Some((made_for, namespace)) if made_for == *range => return Ok(namespace),
        _ => {}
    }
    let proof = sys::single_threaded().map_err(|e| format!("cannot make a user namespace: {e}"))?;
    let pipe = || nix::unistd::pipe().map_err(|e| format!("cannot make a pipe: {e}"));
    let (ready_read, ready_write) = pipe()?;
    let (release_read, release_write) = pipe()?;
    match sys::fork(&proof, None).map_err(|e| format!("cannot fork: {e}"))? {
        Forked::Child => {
            drop(ready_read);
            drop(release_write);
            // Our pid as the host's /proc (still mounted here) knows it.
            let answer = match nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
                Ok(()) => fs::read_link("/proc/self")
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                Err(e) => format!("error {e}"),
            };
            let _ = nix::unistd::write(&ready_write, answer.as_bytes());
            drop(ready_write);
            let mut byte = [0u8; 1];
            let _ = nix::unistd::read(&release_read, &mut byte);
            std::process::exit(0);
        }
        Forked::Parent(child) => {
            drop(ready_write);
            drop(release_read);
            let mut answer = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                match nix::unistd::read(&ready_read, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("cannot hear from the namespace's child: {e}")),
                }
            }
            let answer = String::from_utf8_lossy(&answer).into_owned();
            let namespace = (|| {
                let pid: u32 = answer
                    .parse()
                    .map_err(|_| format!("cannot make a user namespace: {answer}"))?;
                let map = format!("0 {} {}\n", range.host, range.size);
                for file in ["uid_map", "gid_map"] {
                    let path = format!("/proc/{pid}/{file}");
                    fs::write(&path, &map).map_err(|e| format!("cannot write {path}: {e}"))?;
                }
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(format!("/proc/{pid}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(|e| format!("cannot open the user namespace: {e}"))
            })();
            drop(release_write);
            let _ = nix::sys::wait::waitpid(child, None);
            namespace
        }
    }
}

/// Gives the writable layer's directories to the range's root: what the instance's root
/// creates in `/` lands there.
pub(crate) fn give_layer(range: &IdRange, dirs: &[&Path]) -> InitResult<()> {
    for dir in dirs {
        std::os::unix::fs::chown(dir, Some(range.host), Some(range.host))
            .map_err(|e| format!("cannot give {} to the instance: {e}", dir.display()))?;
    }
    Ok(())
}

/// Mounts `source` at `target` as an idmapped mount of `userns`, with `attributes`: the whole
/// tree below it, or when a filesystem below cannot be idmapped (an overlay, proc), the mount
/// of `source` alone. An error when neither can be: then the caller binds it as it is.
pub(crate) fn bind(
    source: &Path,
    target: &Path,
    attributes: u64,
    userns: &OwnedFd,
) -> InitResult<()> {
    let failed = |what: &str, e: std::io::Error| {
        format!(
            "cannot {what} {} for {} (idmapped): {e}",
            source.display(),
            target.display()
        )
    };
    let idmapped = |recursive: bool| -> InitResult<OwnedFd> {
        let tree =
            sys::clone_mount(source, recursive).map_err(|e| failed("clone the mount of", e))?;
        sys::mount_fd_idmap_recursive(tree.as_fd(), attributes, userns.as_fd())
            .map_err(|e| failed("idmap", e))?;
        Ok(tree)
    };
    let tree = idmapped(true).or_else(|_| idmapped(false))?;
    sys::move_mount(tree.as_fd(), target).map_err(|e| failed("attach", e))
}

/// Lets every user of this network namespace open ports below 1024: the instance's root is
/// not root of the host's user namespace, which owns the network namespace. Written through
/// `proc`, the instance's own /proc: in the host's, the kernel finds the entry among those of
/// every network namespace on the machine, a lookup that grew with the number of instances
/// (a tenth of the daemon's time starting the thousandth).
pub(crate) fn open_low_ports(proc: &Path) -> InitResult<()> {
    fs::write(proc.join("sys/net/ipv4/ip_unprivileged_port_start"), "0")
        .map_err(|e| format!("cannot open ports below 1024 to the instance: {e}"))
}

/// Enters `userns`: from here on ids are the namespace's (see [`create`]).
pub(crate) fn enter(userns: &OwnedFd) -> InitResult<()> {
    nix::sched::setns(userns, CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("cannot enter the instance's user namespace: {e}"))
}

/// The hidden command that tries, in a process of its own, what an instance in a user namespace
/// needs of the machine: `__probe-userns DIR`, DIR an empty directory on the filesystem of the
/// image layers. Exits 0 when it all works, else 1 with the reason on stderr.
pub(crate) const PROBE_COMMAND: &str = "__probe-userns";

/// The host ids the probe's namespace maps (nothing runs as them; nothing is left owned by them).
const PROBE_RANGE: IdRange = IdRange {
    host: 1 << 30,
    size: 1,
};

pub(crate) fn probe_main(args: Vec<OsString>) -> ! {
    let [dir] = args.as_slice() else {
        eprintln!("usage: {PROBE_COMMAND} DIR");
        std::process::exit(2);
    };
    match probe(Path::new(dir)) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}

/// In a mount namespace of its own (gone with the process): a user namespace, an idmapped mount
/// of a directory of `dir`, and an overlay over it, as [`crate::sandbox_init`] builds an
/// instance's root.
fn probe(dir: &Path) -> InitResult<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot make a mount namespace: {e}"))?;
    crate::mounts::make_mounts_private()?;
    let namespace = create(&PROBE_RANGE)?;
    let [lower, mapped, upper, work, merged] =
        ["lower", "mapped", "upper", "work", "merged"].map(|name| dir.join(name));
    for path in [&lower, &mapped, &upper, &work, &merged] {
        fs::create_dir(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    bind(&lower, &mapped, 0, &namespace)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        mapped.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| format!("cannot mount an overlay over an idmapped layer: {e}"))
}
