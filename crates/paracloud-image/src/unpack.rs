//! Unpacking a layer (a tar: uncompressed, gzip or zstd) into a directory that overlayfs stacks as
//! a lower layer: OCI whiteouts become overlay whiteouts (`.wh.NAME` a 0/0 character device,
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute), and the uncompressed stream's digest
//! (the diff id) is checked against what the image's config says.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The attribute overlayfs reads to hide what lower layers hold in a directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read the layer (a corrupt or truncated blob?): {0}")]
    Read(#[source] io::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("layer entry {0:?} leaves the layer (absolute or with '..')")]
    Escapes(String),
    #[error("the layer's content has digest {actual}, but the image says {expected}: the blob is corrupt or not this image's")]
    DiffId { expected: Digest, actual: Digest },
}

/// What the uncompressed stream was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub size: u64,
}

/// Unpacks the layer read from `blob` into `dest` (an empty directory), checking the diff id
/// when `expected` is given. On error `dest` holds a partial tree the caller throws away.
pub fn unpack_layer(
    blob: impl Read,
    dest: &Path,
    expected: Option<&Digest>,
) -> Result<Unpacked, UnpackError> {
    let mut reader = BufReader::with_capacity(1 << 20, blob);
    let magic = reader.fill_buf().map_err(UnpackError::Read)?;
    let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(UnpackError::Read)?)
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let relative = relative_path(&raw)?;
        let Some(name) = relative.file_name().and_then(|n| n.to_str()) else {
            // The root directory itself ("./"): nothing to create.
            continue;
        };
        let parent = dest.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            create_dirs(&parent)?;
            xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(|source| UnpackError::Write {
                path: parent.clone(),
                source,
            })?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            create_dirs(&parent)?;
            let target = parent.join(hidden);
            remove_any(&target)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                UnpackError::Write {
                    path: target.clone(),
                    source: e.into(),
                }
            })?;
            continue;
        }
        entry.unpack_in(dest).map_err(|source| UnpackError::Write {
            path: dest.join(&relative),
            source,
        })?;
    }
    let (diff_id, size) = archive.into_inner().finish().map_err(UnpackError::Read)?;
    if let Some(expected) = expected {
        if *expected != diff_id {
            return Err(UnpackError::DiffId {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(Unpacked { diff_id, size })
}

/// The entry's path inside the layer: leading `/` and `./` dropped, `..` refused.
fn relative_path(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escapes(raw.display().to_string()))
            }
        }
    }
    Ok(out)
}

fn create_dirs(dir: &Path) -> Result<(), UnpackError> {
    fs::create_dir_all(dir).map_err(|source| UnpackError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(|source| UnpackError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is an overlay whiteout (a 0/0 character device).
pub fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}
