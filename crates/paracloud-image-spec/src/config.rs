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
    /// SHELL: what runs the shell form of RUN, CMD and ENTRYPOINT (empty: `/bin/sh -c`).
    #[serde(default)]
    pub shell: Vec<String>,
    /// HEALTHCHECK, as Docker keeps it in the config (`Test`: `CMD`, `CMD-SHELL` or `NONE`).
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// A HEALTHCHECK: the command and its timing in nanoseconds (0: the default), as Docker's
/// image config writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub start_interval: u64,
    pub retries: u32,
}

impl Healthcheck {
    /// Docker's `Healthcheck` object.
    pub fn to_docker_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("Test".into(), json!(self.test));
        for (name, value) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
        ] {
            if value > 0 {
                out.insert(name.into(), json!(value));
            }
        }
        if self.retries > 0 {
            out.insert("Retries".into(), json!(self.retries));
        }
        Value::Object(out)
    }
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
            shell: Vec::new(),
            healthcheck: None,
            stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
            volumes: c.volumes().clone().unwrap_or_default(),
        }
    }

    /// Adds what an OCI config leaves out and Docker writes into it: `Shell` and
    /// `Healthcheck` (`config_json`: the whole image config as stored).
    pub fn with_docker_extras(mut self, config_json: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<Value>(config_json) else {
            return self;
        };
        let c = &value["config"];
        if let Some(shell) = c["Shell"].as_array() {
            self.shell = shell
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
        }
        let h = &c["Healthcheck"];
        if let Some(test) = h["Test"].as_array() {
            let number = |k: &str| h[k].as_u64().unwrap_or(0);
            self.healthcheck = Some(Healthcheck {
                test: test
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
                interval: number("Interval"),
                timeout: number("Timeout"),
                start_period: number("StartPeriod"),
                start_interval: number("StartInterval"),
                retries: u32::try_from(number("Retries")).unwrap_or(u32::MAX),
            });
        }
        self
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
        if !self.shell.is_empty() {
            out.insert("Shell".into(), json!(self.shell));
        }
        if let Some(h) = &self.healthcheck {
            out.insert("Healthcheck".into(), h.to_docker_json());
        }
        if let Some(s) = &self.stop_signal {
            out.insert("StopSignal".into(), json!(s));
        }
        if !self.volumes.is_empty() {
            let volumes: serde_json::Map<String, Value> = self
                .volumes
                .iter()
                .map(|v| (v.clone(), json!({})))
                .collect();
            out.insert("Volumes".into(), Value::Object(volumes));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_extras_survive_a_round_trip_through_the_config() {
        let defaults = ImageDefaults {
            shell: vec!["/bin/bash".into(), "-c".into()],
            healthcheck: Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval: 1_000_000_000,
                retries: 3,
                ..Healthcheck::default()
            }),
            ..ImageDefaults::default()
        };
        let config = serde_json::to_vec(&json!({ "config": defaults.to_oci_json() })).unwrap();
        assert_eq!(
            ImageDefaults::default().with_docker_extras(&config),
            defaults
        );
    }
}
