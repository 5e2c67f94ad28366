//! The build cache's entries as plain data: what a build has made after a step (its layers,
//! run defaults and history) and the key that names it. The store keeps them under
//! `build-cache/` and prunes those whose layers are gone; `build` makes them.

use serde::{Deserialize, Serialize};

use crate::config::ImageDefaults;
use crate::digest::Digest;

/// What a build has made so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildState {
    pub layers: Vec<CachedLayer>,
    pub defaults: ImageDefaults,
    pub history: Vec<String>,
    /// The cache key of the steps so far (a chain: each step's key covers every earlier one).
    pub key: Digest,
}

/// A layer as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    pub blob: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub media_type: String,
}

impl BuildState {
    /// The key of the next step: the chain so far, the step as written after substitution,
    /// and the digest of what it reads.
    pub fn next_key(&self, step: &str, inputs: Option<&Digest>) -> Digest {
        let inputs = inputs.map(|d| d.to_string()).unwrap_or_default();
        Digest::of(format!("{}\n{step}\n{inputs}", self.key).as_bytes())
    }
}
