//! Size-limited writable layers: an instance with a disk limit gets its overlay's upper and
//! work directories on an ext4 filesystem of that size, kept in a sparse image file in its
//! instance directory, so that the kernel answers ENOSPC to the instance once it is full and
//! the host's disk never fills through it.
//!
//! The daemon makes the image (once: a restart in place keeps the layer, as Docker keeps a
//! container's); sandbox-init attaches it to a free loop device with autoclear and mounts it in
//! the instance's own mount namespace. When the namespace goes, so do the mount and the loop
//! device: nothing is left to undo. Project quotas would cost less per start, but they need a
//! filesystem mounted with them, which the state root's usually is not.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys;

/// The image's name in the instance directory.
const IMAGE: &str = "disk.img";

/// Where the image of the instance directory `dir` lies.
pub(crate) fn image_path(dir: &Path) -> PathBuf {
    dir.join(IMAGE)
}

/// Makes the image of `size` bytes unless it exists: a sparse file holding an ext4 filesystem
/// owned by root, with no reserved blocks. Blocking (runs mkfs.ext4).
pub(crate) fn prepare_image(dir: &Path, size: u64) -> Result<(), String> {
    let image = image_path(dir);
    match std::fs::metadata(&image) {
        Ok(m) if m.len() == size => return Ok(()),
        // A different size: the spec changed (the layer is the old revision's, not kept).
        Ok(_) => std::fs::remove_file(&image)
            .map_err(|e| format!("cannot replace {}: {e}", image.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", image.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    make_ext4(&image, size, "the writable layer's")
}

/// Makes `image`, a sparse file of `size` bytes holding an empty ext4 filesystem owned by root
/// with no reserved blocks, through a temporary file beside it (`what` names it in errors:
/// "the writable layer's"). Blocking (runs mkfs.ext4).
pub(crate) fn make_ext4(image: &Path, size: u64, what: &str) -> Result<(), String> {
    let partial = PathBuf::from(format!("{}.new", image.display()));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    file.set_len(size)
        .map_err(|e| format!("cannot size {}: {e}", partial.display()))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0")
        .arg(&partial)
        .output()
        .map_err(|e| {
            format!("cannot run mkfs.ext4 to make {what} filesystem: {e} (install e2fsprogs)")
        })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "mkfs.ext4 failed on {}: {}",
            partial.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::rename(&partial, image)
        .map_err(|e| format!("cannot rename {}: {e}", partial.display()))
}

/// Attaches `image` to a free loop device that frees itself once nothing holds it (autoclear);
/// returns the device's path and an open descriptor, which keeps it until the filesystem is
/// mounted.
pub(crate) fn attach(image: &Path) -> Result<(PathBuf, OwnedFd), String> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("cannot open the writable layer {}: {e}", image.display()))?;
    let control = File::open("/dev/loop-control")
        .map_err(|e| format!("cannot open /dev/loop-control for the writable layer: {e}"))?;
    // Another process may take the free device between the two calls: then ask again.
    for _ in 0..64 {
        let number = sys::loop_get_free(&control)
            .map_err(|e| format!("no free loop device for the writable layer: {e}"))?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match sys::loop_configure_autoclear(&device, &backing) {
            Ok(()) => return Ok((path, device.into())),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                return Err(format!(
                    "cannot attach {} to {}: {e}",
                    image.display(),
                    path.display()
                ))
            }
        }
    }
    Err("every free loop device was taken by others 64 times in a row".into())
}
