//! What an image's config says about running it (entrypoint, cmd, env, working directory, user,
//! exposed ports), as plain data.

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The run defaults of an image; the manifest's fields override them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` pairs in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `8080/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageDefaults {
    pub fn from_config(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
            labels: c
                .labels()
                .clone()
                .map(|l| l.into_iter().collect())
                .unwrap_or_default(),
        }
    }

    /// The environment as a map (a later `KEY=` wins, as Docker does).
    pub fn env_map(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// TCP ports it exposes (`8080/tcp` or `8080`).
    pub fn tcp_ports(&self) -> Vec<u16> {
        self.exposed_ports
            .iter()
            .filter_map(|p| match p.split_once('/') {
                Some((port, "tcp")) => port.parse().ok(),
                Some(_) => None,
                None => p.parse().ok(),
            })
            .collect()
    }

    /// The `config` object of an OCI image config.
    pub fn to_oci_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        if !self.entrypoint.is_empty() {
            out.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            out.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.env.is_empty() {
            out.insert("Env".into(), json!(self.env));
        }
        if let Some(w) = &self.working_dir {
            out.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.user {
            out.insert("User".into(), json!(u));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            out.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.labels.is_empty() {
            out.insert("Labels".into(), json!(self.labels));
        }
        Value::Object(out)
    }
}
