//! The data plane: TCP forwarding from published ports and stable service addresses to ready instances.

//!
//! The control plane writes a [`Config`] with [`write_config`] and signals the data-plane process
//! (which runs [`run`]) with SIGHUP; the process diffs its listeners by bind address and forwards
//! each accepted TCP connection to a backend picked by power of two choices ([`pick`]).

mod file;
mod forward;
pub mod pick;
mod server;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use file::{load_config, write_config};
pub use server::{run, Dataplane, Stats};
pub use stats::{BackendSnapshot, CounterValues, ListenerSnapshot, Snapshot};

/// The whole configuration the control plane hands to the data-plane process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub listeners: Vec<Listener>,
}

/// One listening address and where its connections go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// For logs and metrics, e.g. "shop/web:8080 (published)".
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Ready instances of the service; empty while none is ready.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// Instance name, e.g. "web.2".
    pub id: String,
    pub addr: SocketAddr,
    /// Relative weight (1 by default).
    pub weight: u32,
}

/// Timing and retry limits of the forwarder; [`Tuning::default`] is what [`run`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// How long one connect to a backend may take before the next backend is tried.
    pub connect_timeout: Duration,
    /// Connect attempts per client connection, each on a different backend while one is left.
    pub tries: u32,
    /// How long a backend that failed to connect is skipped (unless every backend is).
    pub failure_hold: Duration,
    /// How long a client waits for a backend when the listener has none (one may be starting).
    pub backend_wait: Duration,
    /// How long open connections may go on after shutdown begins.
    pub drain: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            tries: 3,
            failure_hold: Duration::from_secs(2),
            backend_wait: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        }
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read data-plane config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data-plane config {path} is not valid JSON for a Config ({source}); write it with write_config")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot install the data plane's signal handlers: {0}")]
    Signal(std::io::Error),
}
