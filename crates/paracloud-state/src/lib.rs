//! Desired and observed state in SQLite: WAL journal, one transaction per change.
//!
//! The daemon is crash-only: every change it makes is one transaction here, and start-up reads it
//! all back ([`Store::load`]) to re-adopt instances and carry on. Domain values (manifests,
//! instance states) are stored as JSON columns; rows never leave this crate.
//!
//! The records ([`records`]'s types: [`Snapshot`], [`Change`], ...) are plain data; the store is
//! the `store` feature (on by default), so a crate that only decides on the state
//! (`paracloud-command`) links no database.

pub mod records;
#[cfg(feature = "store")]
mod store;

pub use records::*;
#[cfg(feature = "store")]
pub use store::{Error, Result, Store};
