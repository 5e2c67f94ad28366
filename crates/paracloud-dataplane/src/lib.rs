//! The data plane: TCP forwarding from published ports and stable service addresses to ready instances.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
