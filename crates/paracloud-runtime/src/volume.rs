//! Size-limited named volumes (`[volumes.NAME] size = "1G"`): an ext4 filesystem of that size in
//! a sparse image beside the volume's directory (`NAME.img`), mounted on the directory in the
//! host's mount namespace when the first instance that mounts the volume starts. Instances bind
//! the directory as they bind any volume, so they share one filesystem; once it is full the
//! kernel answers ENOSPC to them and the host's disk and other volumes are untouched.
//!
//! The mount stays while the application exists (instances and the data they write outlive a
//! daemon restart); [`release_volumes`] unmounts an application's volumes when it is removed,
//! and the image goes with the volume's directory on `down --volumes`. The loop device frees
//! itself (autoclear) once the last mount of it is gone.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Two instances of one volume starting at once mount it once.
static MOUNTING: Mutex<()> = Mutex::new(());

/// The image of the volume whose directory is `dir`.
pub fn image_of(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.img", dir.display()))
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(own), Some(Ok(parent))) => own.dev() != parent.dev(),
        _ => false,
    }
}

/// Makes the volume at `dir` a filesystem of `size` bytes, mounted there, unless it is one
/// already. Blocking (mkfs.ext4 the first time). A volume made with another size is refused:
/// its data would not fit, or would be lost.
pub fn ensure_sized(dir: &Path, size: u64) -> Result<(), String> {
    let _one_at_a_time = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let image = image_of(dir);
    let fresh = match std::fs::metadata(&image) {
        Ok(m) if m.len() == size && is_mount_point(dir) => return Ok(()),
        Ok(m) if m.len() == size => false,
        Ok(m) => {
            return Err(format!(
                "the volume {} was made with {} bytes and its size cannot change: keep its size, or remove it with `paracloud down --volumes` (its data goes) to make it anew",
                dir.display(),
                m.len()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::disk::make_ext4(&image, size, "the volume's")?;
            true
        }
        Err(e) => return Err(format!("cannot read {}: {e}", image.display())),
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (device, _held) = crate::disk::attach(&image)?;
    mount(
        Some(&device),
        dir,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "cannot mount the volume's filesystem {} on {}: {e}",
            image.display(),
            dir.display()
        )
    })?;
    if fresh {
        // An empty directory, as an unlimited volume starts (databases refuse to initialise
        // one holding lost+found); e2fsck makes it again when it needs one.
        let _ = std::fs::remove_dir(dir.join("lost+found"));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot close {}: {e}", dir.display()))
}

/// Unmounts every size-limited volume under `app_dir` (an application's volumes directory).
pub fn release_volumes(app_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(app_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_mount_point(&path) {
            if let Err(e) = umount2(&path, MntFlags::MNT_DETACH) {
                tracing::warn!("cannot unmount the volume {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_lies_beside_the_volume() {
        assert_eq!(
            image_of(Path::new("/r/volumes/shop/kv.data")),
            Path::new("/r/volumes/shop/kv.data.img")
        );
    }
}
