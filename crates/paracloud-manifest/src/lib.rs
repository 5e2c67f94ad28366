//! The application manifest: parse, validate and normalise `paracloud.toml` into plain data.

mod model;

pub use model::*;
