//! Import and export: OCI image layouts (directories and tar archives) and `docker save`
//! archives (the legacy `manifest.json` layout and the newer one with an OCI index inside).
//! Every blob is checked against its digest on the way in.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::assemble::{
    this_architecture, CONFIG_MEDIA_TYPE, LAYER_TAR, LAYER_TAR_GZIP, LAYER_TAR_ZSTD,
    MANIFEST_MEDIA_TYPE,
};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::{sync_dir, Result, Store, StoreError};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const FULL_NAME: &str = "io.containerd.image.name";

/// An image brought into the store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Imported {
    pub reference: Option<String>,
    pub digest: Digest,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How imported images are named.
#[derive(Debug, Clone, Copy)]
pub enum Naming<'a> {
    /// This name (the source must hold exactly one image).
    Given(&'a Reference),
    /// The names the source gives (an error for an image named by a bare tag).
    FromSource,
    /// None: the caller keeps the digests (as a service's `oci:PATH` image does).
    Untagged,
}

/// Imports every image of a layout or archive at `path`, named by `name` when given (the
/// source must then hold exactly one), else by the names the source gives.
pub fn import(store: &Store, path: &Path, name: Option<&Reference>) -> Result<Vec<Imported>> {
    import_as(store, path, name.map_or(Naming::FromSource, Naming::Given))
}

/// Imports as [`import`] does, with the naming chosen.
pub fn import_as(store: &Store, path: &Path, naming: Naming<'_>) -> Result<Vec<Imported>> {
    let meta = fs::metadata(path).map_err(io_at(path))?;
    if meta.is_dir() {
        return import_dir(store, path, naming);
    }
    // An archive: unpacked (as plain files) into the store's tmp/, then imported from there.
    let temp = store.temp_path("import");
    fs::create_dir(&temp).map_err(io_at(&temp))?;
    let result = (|| {
        let file = File::open(path).map_err(io_at(path))?;
        let mut archive = tar::Archive::new(maybe_gunzip(file).map_err(io_at(path))?);
        archive.set_preserve_permissions(false);
        archive
            .unpack(&temp)
            .map_err(|e| invalid(format!("{} is not a tar archive: {e}", path.display())))?;
        import_dir(store, &temp, naming)
    })();
    let _ = fs::remove_dir_all(&temp);
    result
}

fn maybe_gunzip(file: File) -> io::Result<Box<dyn Read>> {
    let mut reader = io::BufReader::new(file);
    let magic = io::BufRead::fill_buf(&mut reader)?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

fn import_dir(store: &Store, dir: &Path, naming: Naming<'_>) -> Result<Vec<Imported>> {
    if dir.join("manifest.json").is_file() {
        import_docker_save(store, dir, naming)
    } else if dir.join("index.json").is_file() {
        import_oci_layout(store, dir, naming)
    } else {
        Err(invalid(format!(
            "{} is neither an OCI image layout (no index.json) nor a `docker save` archive (no manifest.json)",
            dir.display()
        )))
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

fn blob_in_layout(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// Copies a blob of a layout into the store, checking its digest.
fn copy_blob(store: &Store, dir: &Path, digest: &Digest) -> Result<()> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let path = blob_in_layout(dir, digest);
    let file = File::open(&path).map_err(|e| {
        invalid(format!(
            "the layout lacks blob {digest} ({}): {e}",
            path.display()
        ))
    })?;
    store.put_blob(file, Some(digest))?;
    Ok(())
}

fn digest_field(v: &Value, what: &str) -> Result<Digest> {
    v["digest"]
        .as_str()
        .ok_or_else(|| invalid(format!("{what} has no digest")))?
        .parse()
        .map_err(|e| invalid(format!("{what}: {e}")))
}

fn platform_matches(descriptor: &Value) -> bool {
    let p = &descriptor["platform"];
    p.is_null() || (p["os"] == "linux" && p["architecture"] == this_architecture())
}

fn import_oci_layout(store: &Store, dir: &Path, naming: Naming<'_>) -> Result<Vec<Imported>> {
    let index = read_json(&dir.join("index.json"))?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| invalid("index.json lists no manifests"))?;
    let mut found: Vec<(Option<String>, Digest)> = Vec::new();
    for descriptor in manifests {
        let label = descriptor["annotations"][FULL_NAME]
            .as_str()
            .or(descriptor["annotations"][REF_NAME].as_str())
            .map(str::to_owned);
        let Some(digest) = resolve_manifest(store, dir, descriptor)? else {
            continue;
        };
        found.push((label, digest));
    }
    if found.is_empty() {
        return Err(invalid(format!(
            "the layout holds no image for linux/{}",
            this_architecture()
        )));
    }
    if !matches!(naming, Naming::FromSource) && found.len() > 1 {
        return Err(invalid(format!(
            "the layout holds {} images; a name can be given to one only (import without a name to keep theirs)",
            found.len()
        )));
    }
    let mut out = Vec::new();
    for (label, digest) in found {
        let reference = match (naming, label) {
            (Naming::Given(name), _) => Some(name.clone()),
            (Naming::Untagged, _) => None,
            (Naming::FromSource, Some(label)) if label.contains(':') || label.contains('/') => {
                Some(label.parse::<Reference>().map_err(|e| {
                    invalid(format!("the layout names an image {label:?}, which is not a reference: {e}"))
                })?)
            }
            (Naming::FromSource, Some(label)) => {
                return Err(invalid(format!(
                    "the layout names its image only by the tag {label:?}; give it a full name (such as `-t web:{label}`)"
                )))
            }
            (Naming::FromSource, None) => None,
        };
        if let Some(reference) = &reference {
            store.tag(reference, &digest)?;
        }
        out.push(Imported {
            reference: reference.map(|r| r.normalized().to_string()),
            digest,
        });
    }
    Ok(out)
}

/// Brings the image a descriptor names into the store, choosing this machine's platform in an
/// index; `None` when an index has nothing for it.
fn resolve_manifest(store: &Store, dir: &Path, descriptor: &Value) -> Result<Option<Digest>> {
    let digest = digest_field(descriptor, "a manifest descriptor")?;
    if !platform_matches(descriptor) {
        return Ok(None);
    }
    copy_blob(store, dir, &digest)?;
    let bytes = store.read_blob(&digest)?;
    let doc: Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
    let media_type = doc["mediaType"]
        .as_str()
        .or(descriptor["mediaType"].as_str())
        .unwrap_or(MANIFEST_MEDIA_TYPE);
    if media_type == INDEX_MEDIA_TYPE
        || media_type == DOCKER_MANIFEST_LIST
        || doc["manifests"].is_array()
    {
        for child in doc["manifests"].as_array().into_iter().flatten() {
            if platform_matches(child) && !child["platform"].is_null() {
                return resolve_manifest(store, dir, child);
            }
        }
        return Ok(None);
    }
    copy_blob(
        store,
        dir,
        &digest_field(&doc["config"], "the manifest's config")?,
    )?;
    for layer in doc["layers"].as_array().into_iter().flatten() {
        copy_blob(store, dir, &digest_field(layer, "a layer")?)?;
    }
    store.add_image(&bytes).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file of the archive, checked against its digest when its name is one
/// (`blobs/sha256/<hex>` or `<hex>.json`), put in the store.
fn put_archive_file(store: &Store, dir: &Path, name: &str) -> Result<(Digest, u64)> {
    if name.contains("..") || name.starts_with('/') {
        return Err(invalid(format!(
            "the archive names a file outside itself: {name:?}"
        )));
    }
    let path = dir.join(name);
    let expected = Path::new(name)
        .file_name()
        .and_then(|f| f.to_str())
        .map(|f| f.trim_end_matches(".json"))
        .and_then(|f| Digest::from_hex(f).ok());
    let file = File::open(&path).map_err(|e| invalid(format!("the archive lacks {name}: {e}")))?;
    store.put_blob(file, expected.as_ref())
}

fn import_docker_save(store: &Store, dir: &Path, naming: Naming<'_>) -> Result<Vec<Imported>> {
    let entries: Vec<SaveEntry> = serde_json::from_value(read_json(&dir.join("manifest.json"))?)
        .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    if !matches!(naming, Naming::FromSource) && entries.len() > 1 {
        return Err(invalid(format!(
            "the archive holds {} images; a name can be given to one only",
            entries.len()
        )));
    }
    let mut out = Vec::new();
    for entry in entries {
        let (config_digest, config_size) = put_archive_file(store, dir, &entry.config)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (digest, size) = put_archive_file(store, dir, layer)?;
            let mut magic = [0u8; 4];
            let read = store.open_blob(&digest)?.read(&mut magic).unwrap_or(0);
            let media_type = match &magic[..read.min(4)] {
                [0x1f, 0x8b, ..] => LAYER_TAR_GZIP,
                [0x28, 0xb5, 0x2f, 0xfd] => LAYER_TAR_ZSTD,
                _ => LAYER_TAR,
            };
            layers.push(
                json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size }),
            );
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_size },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(e.to_string()))?;
        let digest = store.add_image(&bytes)?;
        let names: Vec<Reference> = match naming {
            Naming::Given(name) => vec![name.clone()],
            Naming::Untagged => Vec::new(),
            Naming::FromSource => entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    t.parse()
                        .map_err(|e| invalid(format!("RepoTags {t:?}: {e}")))
                })
                .collect::<Result<_>>()?,
        };
        if names.is_empty() {
            out.push(Imported {
                reference: None,
                digest: digest.clone(),
            });
        }
        for reference in names {
            store.tag(&reference, &digest)?;
            out.push(Imported {
                reference: Some(reference.normalized().to_string()),
                digest: digest.clone(),
            });
        }
    }
    Ok(out)
}

/// Writes images as an OCI image layout that is also a `docker save` archive (an `index.json`
/// and a `manifest.json` over the same blobs, as `docker save` writes since Docker 25): a
/// directory, or a tar archive when `dest` ends in `.tar`.
pub fn export(store: &Store, names: &[String], dest: &Path) -> Result<Vec<Imported>> {
    let mut images = Vec::new();
    for name in names {
        let digest = store.lookup(name)?;
        let reference = name
            .parse::<Reference>()
            .ok()
            .filter(|r| r.digest.is_none() && !name.starts_with("sha256:"))
            .map(|r| r.normalized());
        images.push((reference, digest));
    }
    let mut files: BTreeMap<String, FileSource> = BTreeMap::new();
    let mut index = Vec::new();
    let mut save = Vec::new();
    for (reference, digest) in &images {
        let bytes = store.read_blob(digest)?;
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let config = digest_field(&manifest["config"], "the manifest's config")?;
        let layers: Vec<Digest> = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| digest_field(l, "a layer"))
            .collect::<Result<_>>()?;
        for d in std::iter::once(digest)
            .chain(std::iter::once(&config))
            .chain(&layers)
        {
            files.insert(
                format!("blobs/sha256/{}", d.hex()),
                FileSource::Blob(d.clone()),
            );
        }
        let mut descriptor = json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest.to_string(),
            "size": bytes.len(),
        });
        if let Some(r) = reference {
            descriptor["annotations"] = json!({
                FULL_NAME: r.to_string(),
                REF_NAME: r.tag.clone().unwrap_or_default(),
            });
        }
        index.push(descriptor);
        save.push(json!({
            "Config": format!("blobs/sha256/{}", config.hex()),
            "RepoTags": reference.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "Layers": layers.iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect::<Vec<_>>(),
        }));
    }
    let text = |v: Value| FileSource::Bytes(serde_json::to_vec(&v).unwrap_or_default());
    files.insert(
        "oci-layout".into(),
        text(json!({ "imageLayoutVersion": "1.0.0" })),
    );
    files.insert(
        "index.json".into(),
        text(json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": index })),
    );
    files.insert("manifest.json".into(), text(Value::Array(save)));

    let is_archive = dest.extension().is_some_and(|e| e == "tar");
    if is_archive {
        write_archive(store, &files, dest)?;
    } else {
        write_dir(store, &files, dest)?;
    }
    Ok(images
        .into_iter()
        .map(|(r, digest)| Imported {
            reference: r.map(|r| r.to_string()),
            digest,
        })
        .collect())
}

enum FileSource {
    Blob(Digest),
    Bytes(Vec<u8>),
}

fn write_dir(store: &Store, files: &BTreeMap<String, FileSource>, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.join("blobs/sha256")).map_err(io_at(dest))?;
    for (name, source) in files {
        let path = dest.join(name);
        match source {
            FileSource::Blob(d) => {
                let from = store.blob_path(d);
                // A hard link when on the same filesystem (blobs are never written in place).
                if fs::hard_link(&from, &path).is_err() {
                    let _ = fs::remove_file(&path);
                    fs::copy(&from, &path).map_err(io_at(&path))?;
                }
            }
            FileSource::Bytes(b) => fs::write(&path, b).map_err(io_at(&path))?,
        }
    }
    sync_dir(dest)
}

fn write_archive(store: &Store, files: &BTreeMap<String, FileSource>, dest: &Path) -> Result<()> {
    let temp = dest.with_extension("tar.partial");
    let result = (|| -> io::Result<()> {
        let file = File::create(&temp)?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        for d in ["blobs", "blobs/sha256"] {
            tar.append_data(&mut dir.clone(), d, io::empty())?;
        }
        for (name, source) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            match source {
                FileSource::Blob(d) => {
                    let f = store.open_blob(d).map_err(io::Error::other)?;
                    header.set_size(f.metadata()?.len());
                    tar.append_data(&mut header, name, f)?;
                }
                FileSource::Bytes(b) => {
                    header.set_size(b.len() as u64);
                    tar.append_data(&mut header, name, &b[..])?;
                }
            }
        }
        let file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(io_at(dest)(e));
    }
    fs::rename(&temp, dest).map_err(io_at(dest))
}
