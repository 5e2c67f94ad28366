//! Images: references, the content-addressed OCI store under the daemon's state root, layers
//! unpacked once for overlayfs, micro-images from host programs, and import and export of OCI
//! layouts and `docker save` archives.
//!
//! Pure parts (no I/O): [`reference`], [`digest`] parsing, [`config::ImageDefaults`] and
//! [`micro::elf_needs`]. The store ([`store`]) and what writes to it do I/O.

pub mod assemble;
pub mod build;
pub mod config;
pub mod containerfile;
pub mod digest;
pub mod layout;
pub mod micro;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use config::ImageDefaults;
pub use digest::Digest;
pub use reference::{Reference, ReferenceError};
pub use store::{ImageSummary, PruneReport, Store, StoreError, StoredImage};
