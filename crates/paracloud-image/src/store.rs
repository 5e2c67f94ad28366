//! The content-addressed image store under a state root:
//!
//! ```text
//! images/blobs/sha256/<hex>   manifests, configs and layer blobs, named by their digest
//! images/layers/<diff-id hex> each layer unpacked once, shared read-only by every instance
//! images/refs/<reference>     the digest of the manifest a name points at ('/' written %2F)
//! images/tmp/                 work in progress, emptied when the store is opened
//! images/partial/<hex>        downloads cut short, resumed by the next pull (see `registry`)
//! images/build-cache/<key>    the state after each build step (see `build_cache`)
//! ```
//!
//! Crash safety: a blob is written to `tmp/`, its digest checked, fsynced and only then renamed to
//! its name; a layer is unpacked into `tmp/`, its diff id checked, synced and renamed into
//! `layers/`. Whatever a crash leaves is in `tmp/`, never under a name that is used.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};
use serde::Serialize;

use crate::build_cache::BuildState;
use crate::digest::{Digest, HashingWriter};
use crate::reference::Reference;
use crate::unpack::{unpack_layer, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no image {0} in the store; `paracloud images` lists them (build one with `paracloud image build` or import one with `paracloud image import`)")]
    NotFound(String),
    #[error("blob {expected} arrived with digest {actual}: it is corrupt or not what was asked for, and was not kept")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} in the store no longer matches its digest (corrupt on disk); remove the image and fetch it again")]
    Corrupt(Digest),
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    #[error("{0}")]
    Invalid(String),
    #[error("layer {layer}: {source}")]
    Unpack { layer: Digest, source: UnpackError },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An image in the store, its layers unpacked.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The digest of its manifest: the image's identity.
    pub digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
}

impl StoredImage {
    /// Bytes of its layer blobs, as they are stored and transferred.
    pub fn size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).sum()
    }
}

/// One line of `paracloud images`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ImageSummary {
    /// `name:tag`, or `None` for an image only its digest names.
    pub reference: Option<String>,
    pub digest: Digest,
    pub layers: usize,
    /// Bytes of its layer blobs.
    pub size: u64,
    /// The config's `created`, when it says.
    pub created: Option<String>,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub blobs: usize,
    pub layers: usize,
    /// Bytes of the blobs removed.
    pub bytes: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root` (normally `<state root>/images`); what a crash left
    /// in `tmp/` is removed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = Self { root: root.into() };
        let tmp = store.root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        for dir in ["blobs/sha256", "layers", "refs", "tmp"] {
            let path = store.root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// A fresh path in `tmp/` (not created).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Writes a blob from `reader`: into `tmp/`, hashed on the way, fsynced, checked against
    /// `expected` when given, then renamed to its name. Returns its digest and size.
    pub fn put_blob(&self, reader: impl Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let temp = self.temp_path("blob");
        let written = self.write_temp_blob(reader, &temp);
        let (digest, size) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        if let Some(expected) = expected {
            if *expected != digest {
                let _ = fs::remove_file(&temp);
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        self.commit_blob(&temp, &digest)?;
        Ok((digest, size))
    }

    fn write_temp_blob(&self, mut reader: impl Read, temp: &Path) -> Result<(Digest, u64)> {
        let file = File::create(temp).map_err(io_err(temp))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        io::copy(&mut reader, &mut writer).map_err(io_err(temp))?;
        let (buffered, digest, size) = writer.finish();
        let file = buffered.into_inner().map_err(|e| StoreError::Io {
            path: temp.to_owned(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(temp))?;
        Ok((digest, size))
    }

    /// Renames a complete, verified and synced temp file to the blob's name.
    pub(crate) fn commit_blob(&self, temp: &Path, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        fs::rename(temp, &path).map_err(io_err(&path))?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }

    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            self.put_blob(bytes, Some(&digest))?;
        }
        Ok(digest)
    }

    /// A whole blob, its digest checked.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => StoreError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Corrupt(digest.clone()));
        }
        Ok(bytes)
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(digest.clone()),
            _ => StoreError::Io {
                path: path.clone(),
                source: e,
            },
        })
    }

    /// Unpacks a layer blob once: the directory named by its diff id is shared by every image
    /// and instance that has the layer.
    pub fn ensure_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf> {
        let path = self.layer_path(diff_id);
        if path.exists() {
            return Ok(path);
        }
        let file = self.open_blob(blob)?;
        let temp = self.temp_path("layer");
        fs::create_dir(&temp).map_err(io_err(&temp))?;
        let unpacked = unpack_layer(file, &temp, Some(diff_id));
        if let Err(source) = unpacked {
            let _ = fs::remove_dir_all(&temp);
            return Err(StoreError::Unpack {
                layer: blob.clone(),
                source,
            });
        }
        // The tree must be on disk before its name says it is complete.
        sync_filesystem(&temp)?;
        match fs::rename(&temp, &path) {
            Ok(()) => {}
            // Unpacked meanwhile by someone else: theirs is as good as ours.
            Err(_) if path.exists() => {
                let _ = fs::remove_dir_all(&temp);
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        sync_dir(&self.root.join("layers"))?;
        Ok(path)
    }

    /// Records an image whose manifest (JSON) refers to blobs already in the store: the config
    /// and every layer are checked and the layers unpacked. Returns the manifest's digest.
    pub fn add_image(&self, manifest_json: &[u8]) -> Result<Digest> {
        let manifest: ImageManifest = serde_json::from_slice(manifest_json)
            .map_err(|e| StoreError::Invalid(format!("the image manifest is not valid: {e}")))?;
        let config_digest = descriptor_digest(manifest.config().digest())?;
        let config = self.read_config(&config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::Invalid(format!(
                "the image has {} layers but its config lists {} diff ids",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            check_layer_media_type(layer.media_type())?;
            let blob = descriptor_digest(layer.digest())?;
            let diff_id: Digest = diff_id
                .parse()
                .map_err(|e| StoreError::Invalid(format!("the image config's diff id: {e}")))?;
            self.ensure_layer(&blob, &diff_id)?;
        }
        self.put_blob_bytes(manifest_json)
    }

    fn read_config(&self, digest: &Digest) -> Result<ImageConfiguration> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Invalid(format!("the image config {digest} is not valid: {e}"))
        })
    }

    /// Points `reference` (normalised: `name` means `name:latest`) at a manifest.
    pub fn tag(&self, reference: &Reference, manifest: &Digest) -> Result<()> {
        let path = self.ref_path(reference);
        let temp = self.temp_path("ref");
        let mut file = File::create(&temp).map_err(io_err(&temp))?;
        file.write_all(format!("{manifest}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&temp))?;
        fs::rename(&temp, &path).map_err(io_err(&path))?;
        sync_dir(&self.root.join("refs"))
    }

    fn ref_path(&self, reference: &Reference) -> PathBuf {
        let name = reference.clone().normalized().to_string();
        self.root
            .join("refs")
            .join(name.replace('%', "%25").replace('/', "%2F"))
    }

    /// Every reference and the manifest it points at, in name order.
    pub fn refs(&self) -> Result<Vec<(String, Digest)>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry
                .file_name()
                .to_string_lossy()
                .replace("%2F", "/")
                .replace("%25", "%");
            let text = fs::read_to_string(entry.path()).map_err(io_err(&entry.path()))?;
            if let Ok(digest) = text.trim().parse::<Digest>() {
                out.push((name, digest));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The manifest digest `name` means: a reference (`web`, `web:1.0`), a digest
    /// (`sha256:...`), or a unique prefix of at least 6 hex digits of one.
    pub fn lookup(&self, name: &str) -> Result<Digest> {
        if let Ok(digest) = name.parse::<Digest>() {
            return if self.has_blob(&digest) {
                Ok(digest)
            } else {
                Err(StoreError::NotFound(name.into()))
            };
        }
        if let Ok(reference) = name.parse::<Reference>() {
            if let Some(digest) = reference.digest.clone() {
                if self.has_blob(&digest) {
                    return Ok(digest);
                }
            }
            let path = self.ref_path(&reference);
            if let Ok(text) = fs::read_to_string(&path) {
                if let Ok(digest) = text.trim().parse() {
                    return Ok(digest);
                }
            }
        }
        if name.len() >= 6 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: BTreeSet<Digest> = self
                .refs()?
                .into_iter()
                .map(|(_, d)| d)
                .filter(|d| d.hex().starts_with(name))
                .collect();
            if matches.len() == 1 {
                return Ok(matches.into_iter().next().expect("one match"));
            }
        }
        Err(StoreError::NotFound(name.into()))
    }

    /// The image a name means, its layers unpacked (again, if pruned meanwhile).
    pub fn image(&self, name: &str) -> Result<StoredImage> {
        let digest = self.lookup(name)?;
        self.image_by_digest(&digest)
    }

    pub fn image_by_digest(&self, digest: &Digest) -> Result<StoredImage> {
        let bytes = self.read_blob(digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{digest} is not an image manifest: {e}")))?;
        let config = self.read_config(&descriptor_digest(manifest.config().digest())?)?;
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers().iter().zip(config.rootfs().diff_ids()) {
            let diff_id: Digest = diff_id
                .parse()
                .map_err(|e| StoreError::Invalid(format!("the image config's diff id: {e}")))?;
            layers.push(self.ensure_layer(&descriptor_digest(layer.digest())?, &diff_id)?);
        }
        Ok(StoredImage {
            digest: digest.clone(),
            manifest,
            config,
            layers,
        })
    }

    /// Every named image (and the references naming it).
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut out = Vec::new();
        for (name, digest) in self.refs()? {
            let Ok(bytes) = self.read_blob(&digest) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) else {
                continue;
            };
            let created = descriptor_digest(manifest.config().digest())
                .ok()
                .and_then(|d| self.read_config(&d).ok())
                .and_then(|c| c.created().clone());
            out.push(ImageSummary {
                reference: Some(name),
                digest,
                layers: manifest.layers().len(),
                size: manifest.layers().iter().map(|l| l.size()).sum(),
                created,
            });
        }
        Ok(out)
    }

    /// Removes a reference (`web:1.0`), or every reference to a digest; the blobs stay until
    /// [`Store::prune`]. Returns the references removed.
    pub fn remove(&self, name: &str) -> Result<Vec<String>> {
        let digest = self.lookup(name)?;
        let direct = name
            .parse::<Reference>()
            .ok()
            .filter(|r| self.ref_path(r).exists());
        let mut removed = Vec::new();
        match direct {
            Some(reference) => {
                let path = self.ref_path(&reference);
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push(reference.normalized().to_string());
            }
            None => {
                for (reference, d) in self.refs()? {
                    if d == digest {
                        let path = self.ref_path(&reference.parse().map_err(|e| {
                            StoreError::Invalid(format!("a stored reference: {e}"))
                        })?);
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        removed.push(reference);
                    }
                }
            }
        }
        sync_dir(&self.root.join("refs"))?;
        Ok(removed)
    }

    fn build_cache_path(&self, key: &Digest) -> PathBuf {
        self.root.join("build-cache").join(key.hex())
    }

    /// The state a build step left under `key`, if a build made it before and its layers are
    /// still here.
    pub fn build_cache_get(&self, key: &Digest) -> Option<BuildState> {
        let bytes = fs::read(self.build_cache_path(key)).ok()?;
        let state: BuildState = serde_json::from_slice(&bytes).ok()?;
        state
            .layers
            .iter()
            .all(|l| self.has_blob(&l.blob))
            .then_some(state)
    }

    /// Keeps the state after a build step under its key (written whole, then renamed).
    pub fn build_cache_put(&self, state: &BuildState) -> Result<()> {
        let dir = self.root.join("build-cache");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let temp = self.temp_path("cache");
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Invalid(e.to_string()))?;
        fs::write(&temp, bytes).map_err(io_err(&temp))?;
        let path = self.build_cache_path(&state.key);
        fs::rename(&temp, &path).map_err(io_err(&path))
    }

    /// Removes every blob and unpacked layer that no reference and no manifest in `pinned` (the
    /// images services use) needs, downloads cut short (`partial/`), and the build cache
    /// entries whose layers are gone.
    pub fn prune(&self, pinned: &[Digest]) -> Result<PruneReport> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        let roots = self
            .refs()?
            .into_iter()
            .map(|(_, d)| d)
            .chain(pinned.iter().cloned());
        for manifest_digest in roots {
            keep_blobs.insert(manifest_digest.clone());
            let Ok(bytes) = self.read_blob(&manifest_digest) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) else {
                continue;
            };
            if let Ok(config) = descriptor_digest(manifest.config().digest()) {
                if let Ok(c) = self.read_config(&config) {
                    keep_layers.extend(
                        c.rootfs()
                            .diff_ids()
                            .iter()
                            .filter_map(|d| d.parse::<Digest>().ok()),
                    );
                }
                keep_blobs.insert(config);
            }
            for layer in manifest.layers() {
                if let Ok(d) = descriptor_digest(layer.digest()) {
                    keep_blobs.insert(d);
                }
            }
        }
        let mut report = PruneReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let entry = entry.map_err(io_err(&blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Digest::from_hex(&name).is_ok_and(|d| keep_blobs.contains(&d)) {
                continue;
            }
            report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            report.blobs += 1;
        }
        let partial = self.root.join("partial");
        if partial.exists() {
            for entry in fs::read_dir(&partial).map_err(io_err(&partial))? {
                let entry = entry.map_err(io_err(&partial))?;
                report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        let cache = self.root.join("build-cache");
        if cache.exists() {
            for entry in fs::read_dir(&cache).map_err(io_err(&cache))? {
                let entry = entry.map_err(io_err(&cache))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let alive = Digest::from_hex(&name)
                    .ok()
                    .and_then(|key| self.build_cache_get(&key))
                    .is_some();
                if !alive {
                    fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                }
            }
        }
        let layers = self.root.join("layers");
        for entry in fs::read_dir(&layers).map_err(io_err(&layers))? {
            let entry = entry.map_err(io_err(&layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Digest::from_hex(&name).is_ok_and(|d| keep_layers.contains(&d)) {
                continue;
            }
            // Out of `layers/` first, so that no half-removed tree is ever found under its name.
            let doomed = self.temp_path("removed-layer");
            fs::rename(entry.path(), &doomed).map_err(io_err(&entry.path()))?;
            fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
            report.layers += 1;
        }
        Ok(report)
    }
}

/// The store's digest of an OCI descriptor's.
pub fn descriptor_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    Digest::try_from(d).map_err(|e| StoreError::Invalid(format!("unsupported digest: {e}")))
}

fn check_layer_media_type(media_type: &MediaType) -> Result<()> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerGzip | MediaType::ImageLayerZstd => Ok(()),
        MediaType::Other(s)
            if s == "application/vnd.docker.image.rootfs.diff.tar.gzip"
                || s == "application/vnd.docker.image.rootfs.diff.tar" =>
        {
            Ok(())
        }
        other => Err(StoreError::Invalid(format!(
            "layer media type {other} is not an image layer this store can unpack"
        ))),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Flushes the filesystem holding `path` (syncfs): an unpacked tree is made of many files, and
/// one call is cheaper than an fsync of each.
fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = File::open(path).map_err(io_err(path))?;
    nix::unistd::syncfs(&dir).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        source: e.into(),
    })
}
