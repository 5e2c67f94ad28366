//! The images of the built-in capsules: a micro-image of static busybox and the host programs a
//! capsule names (tagged `paracloud-capsule/NAME:KEY` in the store), plus a small directory
//! layer with the capsule's entry script at /capsule/run and busybox's applets. KEY digests
//! everything the image is made of, so a changed script or program makes a new image. Whoever
//! runs capsules on a machine (the daemon, the Kubernetes node agent) builds them here.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::micro::{build_micro_image, MicroImageSpec};
use crate::{Reference, Store};

/// What a built-in capsule's image is made of (the catalog's `CapsuleSpec`, in its parts).
#[derive(Debug, Clone, Copy)]
pub struct BuiltinCapsule<'a> {
    pub name: &'a str,
    /// Written at /capsule/run.
    pub script: &'a str,
    /// Host programs, with their libraries.
    pub programs: &'a [String],
    /// Host directories copied whole when present.
    pub trees: &'a [String],
}

/// `program` on this machine's PATH (or itself when absolute).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The busybox every built-in capsule is made of, and the capsule's programs, that this machine
/// lacks.
pub fn missing_programs(programs: &[String]) -> Vec<String> {
    std::iter::once("busybox")
        .chain(programs.iter().map(String::as_str))
        .filter(|p| which(p).is_none())
        .map(str::to_string)
        .collect()
}

/// The layers of the micro-image tagged `tag` in `store`, built first (from `program` and
/// `add`, with their libraries) when the store does not have it. Callers keep the store's
/// writers one at a time.
pub fn micro_layers(
    store: &Store,
    tag: &str,
    program: &Path,
    add: &[PathBuf],
) -> Result<Vec<PathBuf>, String> {
    if let Ok(image) = store.image(tag) {
        return Ok(image.layers);
    }
    let reference: Reference = tag
        .parse()
        .map_err(|e: crate::ReferenceError| format!("{e}; {}", e.hint()))?;
    let reference = reference.normalized();
    let built = build_micro_image(
        store,
        &MicroImageSpec {
            binary: program.to_owned(),
            add: add.to_vec(),
            host_root: "/".into(),
            files: Vec::new(),
        },
    )
    .map_err(|e| format!("cannot build the capsule image {tag}: {e}"))?;
    store
        .tag(&reference, &built.digest)
        .map_err(|e| e.to_string())?;
    store
        .image_by_digest(&built.digest)
        .map(|i| i.layers)
        .map_err(|e| e.to_string())
}

/// The layers (bottom first) of a built-in capsule's root: its micro-image, made by `micro`
/// (tag, busybox, the other programs and trees; [`micro_layers`] under the caller's lock), and
/// its script layer, written once under `layers_dir`.
pub fn builtin_layers(
    capsule: BuiltinCapsule<'_>,
    layers_dir: &Path,
    micro: impl FnOnce(&str, &Path, &[PathBuf]) -> Result<Vec<PathBuf>, String>,
) -> Result<Vec<PathBuf>, String> {
    let busybox =
        which("busybox").ok_or("built-in capsules need busybox: apt-get install busybox-static")?;
    let mut programs = Vec::new();
    for name in capsule.programs {
        programs.push(which(name).ok_or_else(|| {
            format!(
                "capsule {} needs {name} on this machine; install it",
                capsule.name
            )
        })?);
    }
    programs.extend(
        capsule
            .trees
            .iter()
            .map(PathBuf::from)
            .filter(|tree| tree.exists()),
    );
    // Everything the image is made of, so a changed script or program makes a new image.
    let mut hasher = Sha256::new();
    hasher.update(capsule.script.as_bytes());
    for path in std::iter::once(&busybox).chain(&programs) {
        hasher.update(path.as_os_str().as_encoded_bytes());
        if let Ok(meta) = std::fs::metadata(path) {
            hasher.update(meta.len().to_le_bytes());
            if let Ok(modified) = meta.modified() {
                hasher.update(format!("{modified:?}").as_bytes());
            }
        }
    }
    let key: String = hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("paracloud-capsule/{}:{key}", capsule.name);
    let mut layers = micro(&tag, &busybox, &programs)?;
    let script_layer = layers_dir.join(format!("{}-{key}", capsule.name));
    write_script_layer(&script_layer, &busybox, capsule.script)?;
    layers.push(script_layer);
    Ok(layers)
}

/// The layer with /capsule/run and busybox's applets in /capsule/bin (and /bin/sh), written
/// once (to a temporary name, then renamed).
fn write_script_layer(dir: &Path, busybox: &Path, script: &str) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let failed = |what: &str, e: std::io::Error| format!("cannot write capsule layer {what}: {e}");
    let parent = dir.parent().ok_or("capsule layer without parent")?;
    std::fs::create_dir_all(parent).map_err(|e| failed("directory", e))?;
    let temporary = tempfile::Builder::new()
        .prefix(".layer-")
        .tempdir_in(parent)
        .map_err(|e| failed("directory", e))?;
    let capsule = temporary.path().join("capsule");
    let bin = capsule.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| failed("bin", e))?;
    std::fs::write(capsule.join("run"), script).map_err(|e| failed("script", e))?;
    let applets = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| failed("applets", e))?;
    // busybox sits at its host path in the image (the micro-image keeps paths).
    let target = busybox.to_string_lossy().into_owned();
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink(&target, bin.join(applet)).map_err(|e| failed(applet, e))?;
    }
    // Scripts and shells expect /bin/sh: beside busybox, and /bin as on the host (a link to
    // usr/bin on a merged-/usr system).
    let real_bin = std::fs::canonicalize("/bin").unwrap_or_else(|_| "/bin".into());
    let sh_dir = temporary
        .path()
        .join(real_bin.strip_prefix("/").unwrap_or(&real_bin));
    std::fs::create_dir_all(&sh_dir).map_err(|e| failed("/bin", e))?;
    std::os::unix::fs::symlink(&target, sh_dir.join("sh")).map_err(|e| failed("/bin/sh", e))?;
    if let Ok(link) = std::fs::read_link("/bin") {
        std::os::unix::fs::symlink(link, temporary.path().join("bin"))
            .map_err(|e| failed("/bin", e))?;
    }
    let kept = temporary.keep();
    match std::fs::rename(&kept, dir) {
        Ok(()) => Ok(()),
        // Another run wrote it meanwhile.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&kept);
            Ok(())
        }
        Err(e) => Err(failed("rename", e)),
    }
}
