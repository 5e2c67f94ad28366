//! Registry credentials of the user who runs the command, from Docker's config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): `auths` (a base64 `auth`, or
//! `username` and `password`), and `credHelpers` or `credsStore`, which run
//! `docker-credential-NAME get` with the registry on stdin, as Docker does. The command reads
//! them, as its own user, and hands the daemon only those of the registries one pull reaches,
//! for that pull: the daemon, which serves every local user, never reads anyone's file and never
//! keeps them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use paracloud_api::RegistryCredentials;
use serde::Deserialize;

/// What the file says that matters here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, in any log.
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Docker's config file of this user: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The registry a key of the file names, as references name it: `https://index.docker.io/v1/`
/// is `docker.io`, a scheme and a path are dropped.
fn registry_of_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        other => other.to_owned(),
    }
}

/// What a credential helper is asked for: Docker Hub by the URL Docker uses for it.
fn server_url(registry: &str) -> &str {
    if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text
        .trim()
        .bytes()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

impl DockerConfig {
    /// This user's file, or nothing when there is none.
    pub fn load() -> Result<Self> {
        let Some(path) = path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).with_context(|| {
                format!(
                    "{}: Docker's config file is not valid JSON; fix it, or point DOCKER_CONFIG at another directory",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// The credentials of `registry` (`docker.io`, `HOST[:PORT]`): its credential helper's
    /// (`credHelpers`, else `credsStore`) when one is set, else its `auths` entry. `search`
    /// is the PATH the helper is looked up in.
    pub fn credentials(
        &self,
        registry: &str,
        search: Option<&std::ffi::OsStr>,
    ) -> Result<Option<RegistryCredentials>> {
        let helper = self
            .cred_helpers
            .iter()
            .find(|(key, _)| registry_of_key(key) == registry)
            .map(|(_, helper)| helper)
            .or(self.creds_store.as_ref());
        if let Some(helper) = helper {
            if let Some(found) = run_helper(helper, registry, search)? {
                return Ok(Some(found));
            }
        }
        let Some((key, entry)) = self
            .auths
            .iter()
            .find(|(key, _)| registry_of_key(key) == registry)
        else {
            return Ok(None);
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64_decode(auth)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| anyhow!("Docker's config: auths.{key:?}.auth is not base64 of USER:PASSWORD; log in again (docker login {registry})"))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                anyhow!("Docker's config: auths.{key:?}.auth does not hold USER:PASSWORD; log in again (docker login {registry})")
            })?;
            return Ok(Some(RegistryCredentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        Ok(match (&entry.username, &entry.password) {
            (Some(username), Some(password)) => Some(RegistryCredentials {
                username: username.clone(),
                password: password.clone(),
            }),
            _ => None,
        })
    }
}

/// Finds `docker-credential-NAME` in `search` (a PATH).
fn find_helper(name: &str, search: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let program = format!("docker-credential-{name}");
    std::env::split_paths(search?)
        .map(|dir| dir.join(&program))
        .find(|p| p.is_file())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// `docker-credential-NAME get`, the registry on stdin, JSON on stdout; "not found" is none.
fn run_helper(
    name: &str,
    registry: &str,
    search: Option<&std::ffi::OsStr>,
) -> Result<Option<RegistryCredentials>> {
    let Some(program) = find_helper(name, search) else {
        bail!(
            "Docker's config names the credential helper {name:?} for {registry}, but docker-credential-{name} is not on PATH: install it, or remove it from credHelpers/credsStore in {}",
            path().map(|p| p.display().to_string()).unwrap_or_default()
        );
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server_url(registry).as_bytes())?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("{} get", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's answer for a registry it has nothing for.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "{} get for {registry} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let answer: HelperAnswer = serde_json::from_str(&stdout).map_err(|e| {
        anyhow!(
            "{} get for {registry} did not answer {{\"Username\": ..., \"Secret\": ...}}: {e}",
            program.display()
        )
    })?;
    Ok(Some(RegistryCredentials {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_registries_as_references_do() {
        assert_eq!(registry_of_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_of_key("docker.io"), "docker.io");
        assert_eq!(registry_of_key("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_of_key("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn auths_give_basic_credentials() {
        let config = DockerConfig::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "YWxpY2U6czNjcmV0"},
                "127.0.0.1:5000": {"username": "bob", "password": "pw"},
                "bad.io": {"auth": "!!!"}
            }}"#,
        )
        .unwrap();
        let hub = config.credentials("docker.io", None).unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        let local = config.credentials("127.0.0.1:5000", None).unwrap().unwrap();
        assert_eq!(local.username, "bob");
        assert!(config.credentials("ghcr.io", None).unwrap().is_none());
        let e = config.credentials("bad.io", None).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        // The secret never shows in a debug print.
        assert!(!format!("{config:?}").contains("YWxp"));
    }

    #[test]
    fn a_missing_helper_is_named() {
        let config = DockerConfig::parse(r#"{"credHelpers": {"ghcr.io": "nowhere"}}"#).unwrap();
        let e = config
            .credentials("ghcr.io", Some(std::ffi::OsStr::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("docker-credential-nowhere is not on PATH"),
            "{e}"
        );
        // Other registries do not ask the helper.
        assert!(config.credentials("docker.io", None).unwrap().is_none());
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        assert!(base64_decode("Z").is_none());
    }
}
