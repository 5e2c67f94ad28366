//! Writing new images into the store: a layer from a tar builder, then the config and manifest
//! that name the layers.

use std::fs::{self, File};
use std::io::{self, BufWriter};

use serde_json::json;

use crate::config::ImageDefaults;
use crate::digest::{Digest, HashingWriter};
use crate::store::{Result, Store, StoreError};

/// The media types the store writes.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layer blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub blob: Digest,
    pub size: u64,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    pub media_type: String,
}

/// Writes an uncompressed layer whose entries `fill` appends, as a blob of the store.
pub fn write_layer(
    store: &Store,
    fill: impl FnOnce(&mut tar::Builder<HashingWriter<BufWriter<File>>>) -> io::Result<()>,
) -> Result<LayerBlob> {
    let temp = store.temp_path("layer-tar");
    let written = (|| -> io::Result<(Digest, u64)> {
        let file = File::create(&temp)?;
        let mut builder =
            tar::Builder::new(HashingWriter::new(BufWriter::with_capacity(1 << 20, file)));
        builder.mode(tar::HeaderMode::Deterministic);
        builder.follow_symlinks(false);
        fill(&mut builder)?;
        let (buffered, digest, size) = builder.into_inner()?.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((digest, size))
    })();
    let (digest, size) = match written {
        Ok(v) => v,
        Err(source) => {
            let _ = fs::remove_file(&temp);
            return Err(StoreError::Io { path: temp, source });
        }
    };
    store.commit_blob(&temp, &digest)?;
    Ok(LayerBlob {
        blob: digest.clone(),
        size,
        diff_id: digest,
        media_type: LAYER_TAR.into(),
    })
}

/// The architecture name OCI uses for this machine.
pub fn this_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "arm" => "arm",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Writes the config and the manifest of an image made of `layers` (bottom first), unpacks the
/// layers, and returns the manifest's digest. `history` describes each layer.
pub fn commit_image(
    store: &Store,
    layers: &[LayerBlob],
    defaults: &ImageDefaults,
    history: &[String],
    created: Option<&str>,
) -> Result<Digest> {
    let mut config = json!({
        "architecture": this_architecture(),
        "os": "linux",
        "config": defaults.to_oci_json(),
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
        "history": history.iter().map(|h| json!({ "created_by": h })).collect::<Vec<_>>(),
    });
    if let Some(created) = created {
        config["created"] = json!(created);
    }
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let config_digest = store.put_blob_bytes(&config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.blob.to_string(),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
    store.add_image(&manifest_bytes)
}
