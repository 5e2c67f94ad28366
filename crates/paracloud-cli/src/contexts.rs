//! Where remote daemons are: contexts (as `docker context` and kubeconfig keep them) and the
//! certificates trusted for each address, read and written in the CLI's own files.
//!
//! The CLI's own files live in `$PARACLOUD_CONFIG`, else `$XDG_CONFIG_HOME/paracloud`, else
//! `~/.config/paracloud`, closed to other users:
//! - `contexts.toml`: the contexts (address, token, the certificate's fingerprint) and the one
//!   in use;
//! - `known_hosts`: `HOST:PORT sha256:...` lines, the certificates trusted for addresses reached
//!   through `--host` / `PARACLOUD_HOST`, pinned at the first use.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use paracloud_api::remote::{is_fingerprint, parse_url, Remote};
use serde::{Deserialize, Serialize};

use crate::cli::Global;

/// The context that is this machine's daemon (of `--root`).
pub const DEFAULT_CONTEXT: &str = "default";

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Contexts {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current: Option<String>,
    #[serde(default)]
    pub(crate) contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContextEntry {
    pub(crate) host: String,
    pub(crate) token: String,
    pub(crate) fingerprint: String,
}

fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PARACLOUD_CONFIG") {
        return Ok(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(Path::new(&dir).join("paracloud"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither PARACLOUD_CONFIG nor HOME is set: set PARACLOUD_CONFIG to a directory for the CLI's contexts"))?;
    Ok(Path::new(&home).join(".config/paracloud"))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let temporary = path.with_extension("new");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub(crate) fn load_contexts() -> Result<(PathBuf, Contexts)> {
    let path = config_dir()?.join("contexts.toml");
    let contexts = match read_optional(&path)? {
        None => Contexts::default(),
        Some(text) => toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{} is not a valid contexts file: {e}fix it, or remove it and add the contexts again",
                path.display()
            )
        })?,
    };
    Ok((path, contexts))
}

pub(crate) fn save_contexts(path: &Path, contexts: &Contexts) -> Result<()> {
    write_private(path, &toml::to_string(contexts)?)
}

/// The certificates trusted for addresses: `HOST:PORT sha256:...` per line.
fn known_hosts() -> Result<(PathBuf, BTreeMap<String, String>)> {
    let path = config_dir()?.join("known_hosts");
    let mut hosts = BTreeMap::new();
    for (n, line) in read_optional(&path)?
        .unwrap_or_default()
        .lines()
        .enumerate()
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some((address, fingerprint)) if is_fingerprint(fingerprint.trim()) => {
                hosts.insert(address.to_owned(), fingerprint.trim().to_owned());
            }
            _ => bail!(
                "{} line {}: write HOST:PORT and a fingerprint (sha256:...) separated by a space, or remove the line",
                path.display(),
                n + 1
            ),
        }
    }
    Ok((path, hosts))
}

/// The remote daemon the global options name, if any: `--host` (with `PARACLOUD_TOKEN`), else
/// `--context` or the context in use. `None`: this machine's daemon.
pub fn remote_of(global: &Global) -> Result<Option<Remote>> {
    if let Some(host) = &global.host {
        let address = parse_url(host).map_err(|e| anyhow!("--host / PARACLOUD_HOST {e}"))?;
        let token = std::env::var("PARACLOUD_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        if token.is_none() {
            bail!("--host {host} needs a token in PARACLOUD_TOKEN (or add a context: paracloud context add NAME --host {host} --token-file FILE)");
        }
        let (_, hosts) = known_hosts()?;
        let pinned = hosts.get(&address).cloned();
        return Ok(Some(
            Remote::new(host, pinned, token).map_err(|e| anyhow!(e))?,
        ));
    }
    let (path, contexts) = load_contexts()?;
    let name = match global.context.as_deref().or(contexts.current.as_deref()) {
        None | Some(DEFAULT_CONTEXT) => return Ok(None),
        Some(name) => name,
    };
    let entry = contexts.contexts.get(name).ok_or_else(|| {
        let known: Vec<&str> = contexts.contexts.keys().map(String::as_str).collect();
        anyhow!(
            "no context named {name} in {} (there are: default{}{}); add it with paracloud context add {name} --host https://HOST:PORT --token-file FILE",
            path.display(),
            if known.is_empty() { "" } else { ", " },
            known.join(", ")
        )
    })?;
    let remote = Remote::new(
        &entry.host,
        Some(entry.fingerprint.clone()),
        Some(entry.token.clone()),
    )
    .map_err(|e| anyhow!("context {name}: {e}"))?;
    Ok(Some(remote))
}

/// After the first connection through `--host`: pins the certificate it presented.
pub fn remember_first_use(remote: &Remote) -> Result<()> {
    if remote.pinned.is_some() {
        return Ok(());
    }
    let Some(seen) = remote.seen() else {
        return Ok(());
    };
    let (path, mut hosts) = known_hosts()?;
    hosts.insert(remote.address.clone(), seen.clone());
    let text: String = hosts.iter().map(|(a, f)| format!("{a} {f}\n")).collect();
    write_private(&path, &text)?;
    eprintln!(
        "trusting the certificate of {} from now on ({seen}, first use; pinned in {})",
        remote.address,
        path.display()
    );
    Ok(())
}
