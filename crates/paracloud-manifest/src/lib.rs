//! The application manifest: parse, validate and normalise `paracloud.toml` into plain data.
//!
//! **Architecture Invariant:** this crate does no I/O. The caller reads the file and answers path
//! questions through [`FileSystem`], so parsing is a pure function of its inputs and can be fuzzed.

mod autoscale;
mod capsule;
pub mod catalog;
mod check;
mod draft;
mod error;
mod known_capsules;
mod location;
mod model;
mod networks;
mod reader;
mod sandbox;
mod service;
mod units;

use std::path::{Path, PathBuf};

use toml::de::DeTable;

pub use autoscale::{scaling_config, MAX_CPU, MAX_INSTANCES, MIN_CPU};
pub use error::{Diagnostic, ManifestError};
pub use model::*;
pub use reader::child as field_path;
pub use units::suggest;
pub use units::{parse_memory as parse_size, MAX_MEMORY, MAX_PIDS, MIN_DISK};

/// Where a manifest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file as shown in diagnostics, such as `examples/shop/paracloud.toml`.
    pub file: String,
    /// The absolute directory relative paths in the manifest resolve against (the manifest's own).
    pub base_dir: PathBuf,
}

/// The questions the manifest asks about host paths, answered by the caller.
pub trait FileSystem {
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
}

/// Parses, validates and normalises a manifest.
///
/// On error, every semantic problem is reported in source order; a TOML syntax error stops parsing
/// and comes alone.
pub fn parse(
    source: &str,
    origin: &Origin,
    fs: &dyn FileSystem,
) -> Result<Manifest, ManifestError> {
    let mut checker = reader::Checker::new(source, origin, fs);
    let root = match DeTable::parse(source) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let hint = (e.message() == "duplicate key")
                .then(|| "a key may be set only once in a table".to_owned());
            checker.error(span, "", format!("invalid TOML: {}", e.message()), hint);
            return Err(checker.into_error());
        }
    };
    let manifest = checker.manifest(&root);
    match (manifest, checker.finish()) {
        (_, Some(error)) => Err(error),
        (Some(manifest), None) => Ok(manifest),
        (None, None) => {
            // Every path that yields no manifest records a diagnostic first; should one ever
            // forget, say so rather than panic in the daemon.
            debug_assert!(false, "a manifest was rejected without a diagnostic");
            let mut checker = reader::Checker::new(source, origin, fs);
            checker.error(
                0..0,
                "",
                "the manifest was rejected without a reason (a bug)",
                None,
            );
            Err(checker.into_error())
        }
    }
}

#[cfg(test)]
mod tests;
