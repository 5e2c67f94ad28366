//! The pure parts of images: references, digests, the Containerfile parser, what an image's
//! config says about running it, and where a registry's images are pulled from (its mirrors).
//!
//! **Architecture Invariant:** this crate does no I/O, and nothing it depends on does: the
//! manifest, the fuzz targets and anything else that only names images link it without a
//! registry client or a store. Hashing a stream as it is read or written, and everything that
//! touches files or sockets, is `paracloud-image`'s.

pub mod config;
pub mod containerfile;
pub mod digest;
pub mod dockerignore;
pub mod reference;
pub mod registries;

pub use config::ImageDefaults;
pub use digest::{Digest, DigestError};
pub use reference::{Reference, ReferenceError};
