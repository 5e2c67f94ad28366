//! The daemon's side of images: it owns the store (`<root>/images`), resolves the images of a
//! manifest at `up` (pinning each to a digest and filling in the image config's defaults), gives
//! the runtime an instance's layers, and serves the image commands. Store work is blocking file
//! I/O, done on blocking threads one operation at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use paracloud_api::{
    BuiltImage, ImageDetail, ImageRef, ImageView, LayerView, PruneView, RemovedImages,
};
use paracloud_image::layout::{self, Naming};
use paracloud_image::micro::{build_micro_image, MicroImageSpec};
use paracloud_image::registries::{self, Registries};
use paracloud_image::registry::{self, ProgressFn};
use paracloud_image::{Digest, ImageDefaults, Reference, Store, StoreError};
use paracloud_manifest::catalog::CatalogImage;
use paracloud_manifest::{Image, Manifest, Port, Protocol, Service};
use paracloud_runtime::Rootfs;
use paracloud_state::Snapshot;

/// The image store and the lock that keeps its writers (and prune) one at a time.
#[derive(Debug, Clone)]
pub struct Images {
    store: Store,
    /// The state root's registries.toml, read at each pull.
    registries: std::path::PathBuf,
    lock: Arc<Mutex<()>>,
    /// Registry transfers run side by side (read); prune waits for them (write), so that it
    /// never removes a blob a pull has written but not yet named.
    pub transfers: Arc<tokio::sync::RwLock<()>>,
}

/// An image error and whether the caller asked for something that is not there.
#[derive(Debug)]
pub struct ImageError {
    pub not_found: bool,
    pub bad_request: bool,
    pub message: String,
}

impl From<StoreError> for ImageError {
    fn from(e: StoreError) -> Self {
        Self {
            not_found: matches!(e, StoreError::NotFound(_)),
            bad_request: matches!(
                e,
                StoreError::Invalid(_) | StoreError::DigestMismatch { .. }
            ),
            message: e.to_string(),
        }
    }
}

impl ImageError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            not_found: false,
            bad_request: true,
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ImageError>;

impl Images {
    pub fn open(root: &Path) -> std::result::Result<Self, StoreError> {
        Ok(Self {
            store: Store::open(root.join("images"))?,
            registries: root.join(registries::FILE),
            lock: Arc::new(Mutex::new(())),
            transfers: Arc::new(tokio::sync::RwLock::new(())),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The mirrors of registries as the state root's registries.toml says now.
    pub fn registries(&self) -> Result<Registries> {
        registries::load(&self.registries).map_err(ImageError::bad)
    }

    /// Runs `f` with the store locked, on a blocking thread.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let images = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = images.lock.lock().unwrap_or_else(|e| e.into_inner());
            f(&images.store)
        })
        .await
        .unwrap_or_else(|e| Err(ImageError::bad(format!("the image task failed: {e}"))))
    }

    /// Pins every store image of `manifest` (its services' and its own capsules') to a digest
    /// and fills in its config's defaults.
    pub fn resolve_manifest(store: &Store, manifest: &mut Manifest) -> Result<()> {
        for (name, service) in manifest.services.iter_mut() {
            let what = format!("service {name}");
            let Some((digest, defaults)) = pin(store, &service.image, &what)? else {
                continue;
            };
            apply_defaults(service, &defaults)
                .map_err(|e| ImageError::bad(format!("{what}: {e}")))?;
            set_digest(&mut service.image, &digest);
        }
        for (name, capsule) in manifest.capsules.iter_mut() {
            let what = format!("capsule {name}");
            let Some((digest, defaults)) = pin(store, &capsule.image, &what)? else {
                continue;
            };
            capsule.take_image_defaults(&defaults);
            set_digest(&mut capsule.image, &digest);
        }
        if let Some(why) = manifest.capsules.values().find_map(|c| c.nothing_to_run()) {
            return Err(ImageError::bad(why));
        }
        Ok(())
    }

    /// Pulls the store images of `manifest` that the store lacks, as compose does (`nginx` from
    /// Docker Hub or its mirrors), each named by its user in errors. The command pulls them
    /// before, with the caller's credentials and progress; this is for other clients of the API.
    /// Done outside the store's lock, as any pull, so that instances keep starting meanwhile.
    pub async fn pull_missing(
        &self,
        manifest: &Manifest,
        registries: &Registries,
        counters: &crate::counters::Counters,
    ) -> Result<()> {
        let images = manifest
            .services
            .iter()
            .map(|(name, s)| (format!("service {name}"), &s.image))
            .chain(
                manifest
                    .capsules
                    .iter()
                    .map(|(name, c)| (format!("capsule {name}"), &c.image)),
            );
        for (what, image) in images {
            let Image::Stored { reference, .. } = image else {
                continue;
            };
            // A bad name is the resolution's to tell.
            let Ok(parsed) = reference.parse::<Reference>() else {
                continue;
            };
            let wanted = reference.clone();
            let missing = self
                .with(move |store| {
                    Ok(matches!(
                        store.lookup(&wanted),
                        Err(StoreError::NotFound(_))
                    ))
                })
                .await?;
            if !missing {
                continue;
            }
            let _shared = self.transfers.clone().read_owned().await;
            let quiet: ProgressFn = Arc::new(|_| {});
            let pulled = registry::pull_via(
                &self.store,
                &parsed,
                registries,
                &registry::Auths::new(),
                quiet,
            )
            .await;
            counters.pull(pulled.is_ok());
            pulled.map_err(|e| {
                ImageError::bad(format!(
                    "{what}: image {reference} is not in the store and cannot be pulled: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// The root filesystem of an instance of `image`; layers pruned meanwhile are unpacked again.
    pub fn rootfs(&self, image: &Image) -> std::result::Result<Rootfs, String> {
        let digest = match image {
            Image::Host { paths } => {
                return Ok(Rootfs::Host {
                    extra_paths: paths.clone(),
                })
            }
            Image::Dir { path } => return Ok(Rootfs::Dir { path: path.clone() }),
            Image::Stored { digest, .. }
            | Image::Layout { digest, .. }
            | Image::Build { digest, .. } => digest,
        };
        let digest: Digest = digest
            .as_deref()
            .ok_or("the image was not resolved at deploy time; run `paracloud up` again")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let image = self
            .store
            .image_by_digest(&digest)
            .map_err(|e| format!("image {digest}: {e}"))?;
        Ok(Rootfs::Layers {
            layers: image.layers,
        })
    }

    /// The layers of the micro-image tagged `tag`, built first (from `program` and `add`, with
    /// their libraries) when the store does not have it.
    pub fn micro_layers(
        &self,
        tag: &str,
        program: &Path,
        add: &[std::path::PathBuf],
    ) -> std::result::Result<Vec<std::path::PathBuf>, String> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        paracloud_image::capsule_image::micro_layers(&self.store, tag, program, add)
    }

    /// The image of a catalogue service (`paracloud_manifest::catalog`), built as a
    /// micro-image of this machine's own programs when the store lacks it.
    pub async fn catalog_image(&self, recipe: CatalogImage) -> Result<Digest> {
        self.with(move |store| {
            let reference = parse_tag(&recipe.tag)?;
            if let Ok(digest) = store.lookup(&reference.to_string()) {
                return Ok(digest);
            }
            let (binary, add) = catalog_sources(&recipe).map_err(ImageError::bad)?;
            let built = build_micro_image(
                store,
                &MicroImageSpec {
                    binary,
                    add,
                    host_root: "/".into(),
                    files: recipe
                        .files
                        .iter()
                        .map(|(path, content, mode)| (path.into(), content.clone(), *mode))
                        .collect(),
                },
            )?;
            store.tag(&reference, &built.digest)?;
            tracing::info!(image = %reference, size = built.layer.size, "built a catalogue image");
            Ok(built.digest)
        })
        .await
    }

    /// The images the services and capsules of any application use: prune keeps them.
    pub fn pinned(snapshot: &Snapshot) -> Vec<Digest> {
        snapshot
            .apps
            .iter()
            .flat_map(|a| {
                let services = a.manifest.services.values().map(|s| &s.image);
                services.chain(a.manifest.capsules.values().map(|c| &c.image))
            })
            .filter_map(|image| match image {
                Image::Stored { digest, .. }
                | Image::Layout { digest, .. }
                | Image::Build { digest, .. } => digest.as_deref(),
                _ => None,
            })
            .filter_map(|d| d.parse().ok())
            .collect()
    }
}

/// The digest `image` means now (imported from its layout when the store lacks it) and the
/// defaults its config gives; `None` for the host and directories, which are no store images.
/// `what` names its user in errors ("service web").
fn pin(store: &Store, image: &Image, what: &str) -> Result<Option<(Digest, ImageDefaults)>> {
    let digest = match image {
        Image::Stored { reference, .. } => match store.lookup(reference) {
            Ok(digest) => digest,
            // Pulled before, outside the store's lock ([`Images::pull_missing`]).
            Err(StoreError::NotFound(_)) => {
                return Err(ImageError::bad(format!(
                    "{what}: image {reference} is not in the store; pull, build or import it"
                )))
            }
            Err(e) => {
                return Err(ImageError {
                    not_found: false,
                    bad_request: true,
                    message: format!("{what}: image {reference}: {e}"),
                })
            }
        },
        Image::Layout { path, .. } => {
            let imported = layout::import_as(store, path, Naming::Untagged).map_err(|e| {
                ImageError::bad(format!("{what}: OCI image layout {}: {e}", path.display()))
            })?;
            match imported.as_slice() {
                [one] => one.digest.clone(),
                _ => {
                    return Err(ImageError::bad(format!(
                    "{what}: OCI image layout {} holds {} images for this machine; one is needed",
                    path.display(),
                    imported.len()
                )))
                }
            }
        }
        Image::Build {
            digest, context, ..
        } => digest
            .as_deref()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                ImageError::bad(format!(
                    "{what}: the image of {} was not built",
                    context.display()
                ))
            })?,
        Image::Host { .. } | Image::Dir { .. } => return Ok(None),
    };
    let pinned = store
        .image_by_digest(&digest)
        .map_err(|e| ImageError::bad(format!("{what}: image {digest}: {e}")))?;
    Ok(Some((digest, ImageDefaults::from_config(&pinned.config))))
}

/// Records in `image` the digest it was pinned to.
fn set_digest(image: &mut Image, digest: &Digest) {
    match image {
        Image::Stored { digest: d, .. }
        | Image::Layout { digest: d, .. }
        | Image::Build { digest: d, .. } => *d = Some(digest.to_string()),
        Image::Host { .. } | Image::Dir { .. } => {}
    }
}

/// Fills in what the service leaves to its image: the entrypoint (unless the service sets one),
/// the command (the image's cmd, unless the service sets a command or its own entrypoint, as
/// Docker does), the environment under the service's, the working directory, the user, and the
/// exposed TCP ports when the service lists none.
pub fn apply_defaults(
    service: &mut Service,
    defaults: &ImageDefaults,
) -> std::result::Result<(), String> {
    let own_entrypoint = !service.entrypoint.is_empty();
    if !own_entrypoint {
        service.entrypoint = defaults.entrypoint.clone();
    }
    if service.command.is_empty() && !own_entrypoint {
        service.command = defaults.cmd.clone();
    }
    if service.entrypoint.is_empty() && service.command.is_empty() {
        return Err(
            "nothing to run: the image has no entrypoint or cmd; add a `command` to the service"
                .into(),
        );
    }
    let mut env: BTreeMap<String, String> = defaults.env_map();
    env.extend(std::mem::take(&mut service.env));
    service.env = env;
    if service.working_dir.is_none() {
        service.working_dir = defaults.working_dir.clone();
    }
    if service.user.is_none() {
        service.user = defaults.user.clone();
    }
    if service.ports.is_empty() {
        service.ports = defaults
            .tcp_ports()
            .into_iter()
            .map(|port| Port {
                port,
                protocol: Protocol::Tcp,
                publish: None,
            })
            .collect();
    }
    if service.health.is_none() {
        service.health = image_health(defaults);
    }
    Ok(())
}

/// The image's HEALTHCHECK as the service's health check when the manifest has none, with
/// Docker's defaults for what it leaves out (30 s interval and timeout, 3 retries).
fn image_health(defaults: &ImageDefaults) -> Option<paracloud_manifest::HealthCheck> {
    let check = defaults.healthcheck.as_ref()?;
    let command = match check.test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, [shell_text])) if kind == "CMD-SHELL" => {
            paracloud_image::containerfile::CommandForm::Shell(shell_text.clone())
                .argv_with(&defaults.shell)
        }
        // `NONE`, or nothing to run.
        _ => return None,
    };
    let or =
        |ns: u64, default: u64| std::time::Duration::from_nanos(if ns == 0 { default } else { ns });
    Some(paracloud_manifest::HealthCheck {
        probe: paracloud_manifest::Probe::Exec { command },
        interval: or(check.interval, 30_000_000_000),
        timeout: or(check.timeout, 30_000_000_000),
        retries: if check.retries == 0 { 3 } else { check.retries },
        start_period: or(check.start_period, 0),
        restart: true,
    })
}

pub fn list(store: &Store) -> Result<Vec<ImageView>> {
    Ok(store
        .list()?
        .into_iter()
        .map(|s| ImageView {
            reference: s.reference.unwrap_or_default(),
            digest: s.digest.to_string(),
            layers: s.layers,
            size: s.size,
            created: s.created,
        })
        .collect())
}

pub fn inspect(store: &Store, name: &str) -> Result<ImageDetail> {
    let image = store.image(name)?;
    let config = store.read_blob(&paracloud_image::store::descriptor_digest(
        image.manifest.config().digest(),
    )?)?;
    let defaults = ImageDefaults::from_config(&image.config).with_docker_extras(&config);
    let references = store
        .refs()?
        .into_iter()
        .filter(|(_, d)| *d == image.digest)
        .map(|(r, _)| r)
        .collect();
    let layers = image
        .manifest
        .layers()
        .iter()
        .zip(image.config.rootfs().diff_ids())
        .map(|(l, diff_id)| LayerView {
            digest: l.digest().to_string(),
            diff_id: diff_id.clone(),
            media_type: l.media_type().to_string(),
            size: l.size(),
        })
        .collect();
    Ok(ImageDetail {
        references,
        digest: image.digest.to_string(),
        architecture: image.config.architecture().to_string(),
        os: image.config.os().to_string(),
        size: image.size(),
        layers,
        entrypoint: defaults.entrypoint,
        cmd: defaults.cmd,
        env: defaults.env,
        working_dir: defaults.working_dir,
        user: defaults.user,
        exposed_ports: defaults.exposed_ports,
        history: image
            .config
            .history()
            .iter()
            .flatten()
            .map(|h| h.created_by().clone().unwrap_or_default())
            .collect(),
        labels: defaults.labels,
        shell: defaults.shell,
        healthcheck: defaults.healthcheck.map(|h| h.to_docker_json()),
        stop_signal: defaults.stop_signal,
        volumes: defaults.volumes,
    })
}

pub fn remove(store: &Store, name: &str) -> Result<RemovedImages> {
    Ok(RemovedImages {
        removed: store.remove(name)?,
    })
}

pub fn prune(store: &Store, pinned: &[Digest]) -> Result<PruneView> {
    let r = store.prune(pinned)?;
    Ok(PruneView {
        blobs: r.blobs,
        layers: r.layers,
        bytes: r.bytes,
    })
}

/// What a catalogue image is made of on this machine: its first program, and the other
/// programs and the entries of its trees (but those it leaves out); an error naming the package
/// to install when the machine lacks one.
pub fn catalog_sources(
    recipe: &CatalogImage,
) -> std::result::Result<(std::path::PathBuf, Vec<std::path::PathBuf>), String> {
    let missing = |path: &str| {
        format!(
            "{path} is missing: the catalogue's image is made of this machine's {package}; install it (apt-get install {package})",
            package = recipe.package
        )
    };
    let mut programs = Vec::new();
    for program in &recipe.programs {
        if !Path::new(program).exists() {
            return Err(missing(program));
        }
        programs.push(std::path::PathBuf::from(program));
    }
    let mut add = programs.split_off(1.min(programs.len()));
    let binary = programs.pop().ok_or("a catalogue image names no program")?;
    for tree in &recipe.trees {
        let path = Path::new(tree);
        if path.is_file() {
            add.push(path.to_owned());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|_| missing(tree))?;
        let mut kept: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                !recipe
                    .leave_out
                    .iter()
                    .any(|l| *l == *e.file_name().to_string_lossy())
            })
            .map(|e| e.path())
            .collect();
        kept.sort();
        add.extend(kept);
    }
    Ok((binary, add))
}

fn parse_tag(tag: &str) -> Result<Reference> {
    let reference: Reference = tag.parse().map_err(|e: paracloud_image::ReferenceError| {
        ImageError::bad(format!("{e}; {}", e.hint()))
    })?;
    if reference.digest.is_some() {
        return Err(ImageError::bad(format!(
            "{tag:?} names a digest; a new image is named by `name:tag`"
        )));
    }
    Ok(reference.normalized())
}

fn absolute(path: &Path, what: &str) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ImageError::bad(format!(
            "{what} {} must be an absolute path",
            path.display()
        )))
    }
}

pub fn build_micro(
    store: &Store,
    binary: &Path,
    add: &[std::path::PathBuf],
    tag: &str,
) -> Result<BuiltImage> {
    let reference = parse_tag(tag)?;
    absolute(binary, "the program")?;
    for a in add {
        absolute(a, "the added path")?;
    }
    let built = build_micro_image(
        store,
        &MicroImageSpec {
            binary: binary.to_owned(),
            add: add.to_vec(),
            host_root: "/".into(),
            files: Vec::new(),
        },
    )?;
    store.tag(&reference, &built.digest)?;
    Ok(BuiltImage {
        reference: reference.to_string(),
        digest: built.digest.to_string(),
        size: built.layer.size,
        files: built.files,
    })
}

fn refs(imported: Vec<layout::Imported>) -> Vec<ImageRef> {
    imported
        .into_iter()
        .map(|i| ImageRef {
            reference: i.reference,
            digest: i.digest.to_string(),
        })
        .collect()
}

pub fn import(store: &Store, path: &Path, tag: Option<&str>) -> Result<Vec<ImageRef>> {
    absolute(path, "the import source")?;
    let reference = tag.map(parse_tag).transpose()?;
    Ok(refs(layout::import(store, path, reference.as_ref())?))
}

pub fn export(store: &Store, names: &[String], path: &Path) -> Result<Vec<ImageRef>> {
    absolute(path, "the export destination")?;
    if names.is_empty() {
        return Err(ImageError::bad("name at least one image to export"));
    }
    Ok(refs(layout::export(store, names, path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(entrypoint: &[&str], command: &[&str]) -> Service {
        let source = format!(
            "app = \"a\"\n[services.s]\nimage = \"img\"\nentrypoint = {entrypoint:?}\ncommand = {command:?}\nenv = {{ MINE = \"1\", SHARED = \"service\" }}\n"
        );
        let origin = paracloud_manifest::Origin {
            file: "paracloud.toml".into(),
            base_dir: "/".into(),
        };
        struct NoFs;
        impl paracloud_manifest::FileSystem for NoFs {
            fn exists(&self, _: &Path) -> bool {
                false
            }
            fn is_dir(&self, _: &Path) -> bool {
                false
            }
        }
        let mut m = paracloud_manifest::parse(&source, &origin, &NoFs).unwrap();
        m.services.remove("s").unwrap()
    }

    fn defaults() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/bin/server".into()],
            cmd: vec!["--default".into()],
            env: vec!["SHARED=image".into(), "PATH=/bin".into()],
            working_dir: Some("/srv".into()),
            user: Some("nobody".into()),
            exposed_ports: vec!["8080/tcp".into(), "53/udp".into()],
            labels: BTreeMap::new(),
            ..ImageDefaults::default()
        }
    }

    #[test]
    fn the_image_fills_in_what_the_service_leaves_out() {
        let mut s = service(&[], &[]);
        apply_defaults(&mut s, &defaults()).unwrap();
        assert_eq!(s.argv(), ["/bin/server", "--default"]);
        assert_eq!(s.env["SHARED"], "service");
        assert_eq!(s.env["PATH"], "/bin");
        assert_eq!(s.env["MINE"], "1");
        assert_eq!(s.working_dir.as_deref(), Some("/srv"));
        assert_eq!(s.user.as_deref(), Some("nobody"));
        assert_eq!(s.ports.iter().map(|p| p.port).collect::<Vec<_>>(), [8080]);
    }

    #[test]
    fn the_image_s_healthcheck_is_the_health_check_of_a_service_without_one() {
        use paracloud_image::config::Healthcheck;
        use paracloud_manifest::Probe;
        let mut image = defaults();
        image.healthcheck = Some(Healthcheck {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: 5_000_000_000,
            ..Healthcheck::default()
        });
        let mut s = service(&[], &[]);
        apply_defaults(&mut s, &image).unwrap();
        let health = s.health.unwrap();
        assert_eq!(
            health.probe,
            Probe::Exec {
                command: vec!["/bin/sh".into(), "-c".into(), "wget -q localhost".into()]
            }
        );
        assert_eq!(health.interval, std::time::Duration::from_secs(5));
        assert_eq!(health.timeout, std::time::Duration::from_secs(30));
        assert_eq!(health.retries, 3);
        image.healthcheck = Some(Healthcheck {
            test: vec!["NONE".into()],
            ..Healthcheck::default()
        });
        let mut s = service(&[], &[]);
        apply_defaults(&mut s, &image).unwrap();
        assert!(s.health.is_none(), "HEALTHCHECK NONE");
    }

    #[test]
    fn a_command_replaces_cmd_and_an_entrypoint_drops_it() {
        let mut s = service(&[], &["--port", "9"]);
        apply_defaults(&mut s, &defaults()).unwrap();
        assert_eq!(s.argv(), ["/bin/server", "--port", "9"]);
        let mut s = service(&["/bin/other"], &[]);
        apply_defaults(&mut s, &defaults()).unwrap();
        assert_eq!(s.argv(), ["/bin/other"]);
    }

    #[test]
    fn an_image_with_nothing_to_run_needs_a_command() {
        let mut s = service(&[], &[]);
        let e = apply_defaults(&mut s, &ImageDefaults::default()).unwrap_err();
        assert!(e.contains("add a `command`"), "{e}");
    }
}
