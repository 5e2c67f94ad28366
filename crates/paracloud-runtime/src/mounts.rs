//! Mount primitives for sandbox-init: filesystems, (recursively read-only) bind mounts, mount
//! points. Errors are messages for the daemon, naming the path.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use nix::mount::{mount, MsFlags};

pub(crate) type InitResult<T> = std::result::Result<T, String>;

/// Makes every mount of this process's mount namespace private, so that what it mounts from
/// now on stays in it (and nothing mounted outside reaches it).
pub(crate) fn make_mounts_private() -> InitResult<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount tree private: {e}"))
}

// From linux/mount.h; libc does not export them for glibc targets yet.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

pub(crate) fn mount_fs(
    fstype: &str,
    target: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> InitResult<()> {
    mount(Some(fstype), target, Some(fstype), flags, data)
        .map_err(|e| format!("cannot mount {fstype} on {}: {e}", target.display()))
}

/// Restrictions of a bind mount, applied to the whole mounted tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindMode {
    /// nosuid, nodev.
    ReadWrite,
    /// nosuid, nodev, read-only.
    ReadOnly,
    /// A device node: nosuid, noexec (nodev would make it unusable).
    Device,
}

impl BindMode {
    pub(crate) fn attributes(self) -> u64 {
        match self {
            BindMode::ReadWrite => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            BindMode::ReadOnly => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_RDONLY,
            BindMode::Device => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        }
    }
}

/// Binds `source` (with its submounts) on `target` with the restrictions of `mode`.
pub(crate) fn bind(source: &Path, target: &Path, mode: BindMode) -> InitResult<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "cannot bind-mount {} on {}: {e}",
            source.display(),
            target.display()
        )
    })?;
    set_attr_recursive(target, mode.attributes()).map_err(|e| {
        format!(
            "cannot restrict the bind mount on {} ({mode:?}): {e}",
            target.display()
        )
    })
}

/// mount_setattr(2) over the whole tree (Linux 5.12+); older kernels get a remount of the top
/// mount only.
fn set_attr_recursive(target: &Path, attr_set: u64) -> std::io::Result<()> {
    let err = match crate::sys::mount_setattr_recursive(target, attr_set) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    for (attr, flag) in [
        (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
        (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if attr_set & attr != 0 {
            flags |= flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(std::io::Error::from)
}

/// Creates what a bind mount of `source` needs at `target`: a directory, or an empty file.
pub(crate) fn make_mount_point(source: &Path, target: &Path) -> InitResult<()> {
    let source_is_dir = fs::metadata(source)
        .map_err(|e| format!("cannot use {} as a mount source: {e}", source.display()))?
        .is_dir();
    make_mount_point_kind(target, source_is_dir)
}

pub(crate) fn make_mount_point_kind(target: &Path, dir: bool) -> InitResult<()> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let failed = |e: std::io::Error| format!("cannot create mount point {}: {e}", target.display());
    if dir {
        return fs::create_dir_all(target).map_err(failed);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(failed)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// `path` (absolute, inside the instance) below `root`.
pub(crate) fn under(root: &Path, path: &Path) -> std::path::PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}
