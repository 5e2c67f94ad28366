//! Images: the content-addressed OCI store under the daemon's state root, layers unpacked once
//! for overlayfs, micro-images from host programs, builds' file work, pull and push, and import
//! and export of OCI layouts and `docker save` archives.
//!
//! The pure parts (references, digests, the Containerfile parser, [`config::ImageDefaults`], the
//! rules of registry mirrors) are
//! `paracloud-image-spec`'s, re-exported here under the paths they always had; [`digest`] adds
//! the hashing of streams. [`micro::elf_needs`] is pure too, but stays with the micro-images that
//! use it. Everything else does I/O.
//!
//! Modules are layered, each importing only from those below it (and from the spec crate, below
//! them all), so that none needs another that needs it back:
//!
//! ```text
//! capsule_image                    the built-in capsules' images, on micro-images
//! layout  micro  registry  build   OCI layouts and archives, micro-images, pull and push, builds
//! assemble                         new layers and images, written into the store
//! store                            blobs, unpacked layers, refs, the build cache, prune
//! unpack  build_cache              a layer tar into a directory; the build cache's entries
//! digest                           hashing streams
//! ```

pub mod assemble;
pub mod build;
pub mod build_cache;
pub mod capsule_image;
pub mod digest;
pub mod layout;
pub mod micro;
pub mod registry;
pub mod store;
pub mod unpack;

pub use paracloud_image_spec::{config, containerfile, dockerignore, reference};

/// Where a registry's images are pulled from: the spec's rules, and the file they are read from.
pub mod registries {
    pub use paracloud_image_spec::registries::*;

    /// Reads the registries file at `path` (no rules when there is none). An error names the
    /// file, the line and what is wrong.
    pub fn load(path: &std::path::Path) -> Result<Registries, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Registries::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

pub use config::ImageDefaults;
pub use digest::Digest;
pub use reference::{Reference, ReferenceError};
pub use store::{ImageSummary, PruneReport, Store, StoreError, StoredImage};
