//! Reading manifests on the client side: `paracloud.toml` or Compose files (converted here, with
//! this shell's environment), checked before any daemon or cluster is involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use paracloud_api::{Client, HostFs, ListApps, UpRequest};
use paracloud_manifest::{parse, Origin};

use crate::cli::Global;
use crate::client::{absolute, explain};

/// A manifest read and checked on the client side, so errors show before any daemon is involved.
pub(crate) struct LoadedManifest {
    pub(crate) app: String,
    /// The manifest as read and checked here.
    pub(crate) manifest: paracloud_manifest::Manifest,
    pub(crate) request: UpRequest,
    /// The store images its services and capsules name (`image = "..."`), each with the
    /// first that names it (`service web`).
    pub(crate) images: Vec<(String, String)>,
}

/// The manifest of the current directory, as `docker compose` finds its file: `paracloud.toml`
/// first, then the Compose file names.
pub(crate) fn default_manifest() -> Option<PathBuf> {
    std::iter::once("paracloud.toml")
        .chain(paracloud_compose::FILE_NAMES.iter().copied())
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// The files of `-f`, else the manifest found here with, for a Compose file, its override file
/// beside it (`compose.override.yaml` for `compose.yaml`, ...), as `docker compose` reads them.
pub(crate) fn manifest_files(files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !files.is_empty() {
        return Ok(files.to_vec());
    }
    let found = manifest_file(None)?;
    let mut files = vec![found.clone()];
    if let (Some(stem), Some(ext)) = (
        found.file_stem().and_then(|s| s.to_str()),
        found.extension().and_then(|e| e.to_str()),
    ) {
        if matches!(ext, "yaml" | "yml") {
            let over = found.with_file_name(format!("{stem}.override.{ext}"));
            if over.is_file() {
                files.push(over);
            }
        }
    }
    Ok(files)
}

/// The file `-f` names, else the one found here.
pub(crate) fn manifest_file(file: Option<&Path>) -> Result<PathBuf> {
    match file {
        Some(file) => Ok(file.to_path_buf()),
        None => default_manifest().ok_or_else(|| {
            anyhow!(
                "no paracloud.toml, compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml here: pass the manifest with -f"
            )
        }),
    }
}

/// What the Compose reader reads on this machine: the manifest's path checks, and the `.env`
/// and `env_file` files.
struct ComposeHost;

impl paracloud_manifest::FileSystem for ComposeHost {
    fn exists(&self, path: &Path) -> bool {
        paracloud_manifest::FileSystem::exists(&HostFs, path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        paracloud_manifest::FileSystem::is_dir(&HostFs, path)
    }
}

impl paracloud_compose::Host for ComposeHost {
    fn read_to_string(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Reads a manifest, `paracloud.toml` or a Compose file. A Compose file is converted here, with
/// this shell's environment for its variables, and the daemon gets the equivalent TOML under the
/// Compose file's name.
/// `profiles` are the Compose profiles activated beside those of `COMPOSE_PROFILES` (`*`: all).
pub(crate) fn load_manifest(file: &Path, profiles: &[String]) -> Result<LoadedManifest> {
    load_manifests(&[file.to_path_buf()], profiles)
}

/// Reads one manifest, or several Compose files merged as override files (`-f a -f b`).
pub(crate) fn load_manifests(files: &[PathBuf], profiles: &[String]) -> Result<LoadedManifest> {
    let mut sources = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the manifest {}: check the path, or pass one with -f",
                file.display()
            )
        })?;
        sources.push((file.display().to_string(), source));
    }
    let Some(file) = files.first() else {
        bail!("no manifest given: pass one with -f");
    };
    let absolute = absolute(file)?;
    let base_dir = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let origin = Origin {
        file: file.display().to_string(),
        base_dir: base_dir.clone(),
    };
    let compose: Vec<bool> = files
        .iter()
        .zip(&sources)
        .map(|(f, (_, source))| paracloud_compose::is_compose(f, source))
        .collect();
    let (manifest, source) = if compose.iter().all(|c| *c) {
        let mut env: BTreeMap<String, String> = std::env::vars().collect();
        if !profiles.is_empty() {
            let mut active: Vec<String> = env
                .get("COMPOSE_PROFILES")
                .map(|p| p.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            active.extend(profiles.iter().cloned());
            env.insert("COMPOSE_PROFILES".into(), active.join(","));
        }
        let converted = paracloud_compose::parse_files(&sources, &origin, &env, &ComposeHost)
            .map_err(|e| anyhow!("the Compose file is not valid:\n{e}"))?;
        (converted.manifest, converted.toml)
    } else if files.len() > 1 {
        bail!(
            "several -f files merge only as Compose files, and {} is a paracloud.toml: pass it alone",
            files[compose.iter().position(|c| !c).unwrap_or(0)].display()
        );
    } else {
        let source = sources.remove(0).1;
        let manifest = parse(&source, &origin, &HostFs)
            .map_err(|e| anyhow!("the manifest is not valid:\n{e}"))?;
        (manifest, source)
    };
    let mut images: Vec<(String, String)> = Vec::new();
    let users = manifest
        .services
        .iter()
        // The daemon builds the catalogue's servers' images from its machine's programs (a
        // task farm runs the application's own image, pulled as any).
        .filter(|(_, s)| {
            s.catalog.as_ref().is_none_or(|c| {
                paracloud_manifest::catalog::entry_of(c.kind)
                    .image(&c.version)
                    .is_none()
            })
        })
        .map(|(name, s)| (format!("service {name}"), &s.image))
        .chain(
            manifest
                .capsules
                .iter()
                .map(|(name, c)| (format!("capsule {name}"), &c.image)),
        );
    for (user, image) in users {
        if let paracloud_manifest::Image::Stored { reference, .. } = image {
            if !images.iter().any(|(r, _)| r == reference) {
                images.push((reference.clone(), user));
            }
        }
    }
    Ok(LoadedManifest {
        app: manifest.app.clone(),
        manifest,
        request: UpRequest {
            source,
            origin: file.display().to_string(),
            base_dir,
            ..Default::default()
        },
        images,
    })
}

/// Which application a command is about: -a, else the manifest's, else ./paracloud.toml's, else
/// the only one running.
pub(crate) async fn resolve_app(
    global: &Global,
    client: &Client,
    file: Option<&Path>,
) -> Result<String> {
    if let Some(app) = &global.app {
        return Ok(app.clone());
    }
    if let Some(file) = file {
        // Every service names the same application, whichever profiles run.
        return Ok(load_manifest(file, &["*".into()])?.app);
    }
    if let Some(local) = default_manifest() {
        if let Ok(m) = load_manifest(&local, &["*".into()]) {
            return Ok(m.app);
        }
    }
    let apps = client.call(&ListApps).await.map_err(explain)?;
    match apps.as_slice() {
        [only] => Ok(only.name.clone()),
        [] => bail!(
            "no application runs here (root {}): start one with `paracloud up -f FILE`",
            global.root.display()
        ),
        many => bail!(
            "several applications run ({}): say which with -a APP",
            many.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
