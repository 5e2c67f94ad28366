//! Reaching remote daemons: contexts (as `docker context` and kubeconfig keep them), the
//! certificates trusted for each address, and the tokens of the remote API.
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
use paracloud_api::{
    Client, CreateToken, GetHealth, GetWhoAmI, Health, ListTokens, RevokeToken, Role, TokenRequest,
    TokenView,
};
use serde::{Deserialize, Serialize};

use crate::cli::{ContextCommand, Global, TokenCommand};
use crate::client::{connect, explain};
use crate::output::{format_time, print, table};

/// The context that is this machine's daemon (of `--root`).
pub const DEFAULT_CONTEXT: &str = "default";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contexts {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContextEntry {
    host: String,
    token: String,
    fingerprint: String,
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

fn load_contexts() -> Result<(PathBuf, Contexts)> {
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

fn save_contexts(path: &Path, contexts: &Contexts) -> Result<()> {
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

pub async fn token(global: &Global, command: TokenCommand) -> Result<()> {
    let client = connect(global).await?;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let role = Role::from_name(&role).expect("clap checks the role");
            let created = client
                .call(&CreateToken(TokenRequest {
                    name,
                    role,
                    expires_in_secs: expires.map(|d| d.as_secs().max(1)),
                }))
                .await
                .map_err(explain)?;
            let until = created
                .expires
                .map(|at| format!(", until {}", format_time(at)))
                .unwrap_or_default();
            eprintln!(
                "created token {} with the {} role{until}; it is shown once, below:",
                created.name,
                created.role.name()
            );
            // Where it is used from, when this daemon serves the remote API.
            if let Ok(Health {
                remote: Some(remote),
                ..
            }) = client.call(&GetHealth).await
            {
                eprintln!(
                    "use it from another machine with: paracloud context add NAME --host https://{} --token-file FILE --fingerprint {}",
                    remote.address, remote.fingerprint
                );
            }
            println!("{}", created.token);
            Ok(())
        }
        TokenCommand::Ls => {
            let tokens = client.call(&ListTokens).await.map_err(explain)?;
            print(global.output, &tokens, |tokens: &Vec<TokenView>| {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.role.name().into(),
                            t.state.clone(),
                            format_time(t.created),
                            t.expires.map(format_time).unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                table(&["NAME", "ROLE", "STATE", "CREATED", "EXPIRES"], &rows)
            })
        }
        TokenCommand::Revoke { name } => {
            client
                .call(&RevokeToken { name: name.clone() })
                .await
                .map_err(explain)?;
            eprintln!("revoked token {name}: it is refused from now on");
            Ok(())
        }
    }
}

pub async fn context(global: &Global, command: ContextCommand) -> Result<()> {
    let (path, mut contexts) = load_contexts()?;
    match command {
        ContextCommand::Add {
            name,
            host,
            token_file,
            fingerprint,
        } => {
            if name == DEFAULT_CONTEXT {
                bail!("{DEFAULT_CONTEXT} is this machine's daemon: choose another name");
            }
            if let Some(f) = &fingerprint {
                if !is_fingerprint(f) {
                    bail!("--fingerprint {f}: write it as the daemon printed it, sha256: and 64 lowercase hex digits");
                }
            }
            let token = if token_file == Path::new("-") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text
            } else {
                std::fs::read_to_string(&token_file).with_context(|| {
                    format!("cannot read the token file {}", token_file.display())
                })?
            };
            let token = token.trim().to_owned();
            if token.is_empty() {
                bail!(
                    "the token file {} is empty: put the last line of `paracloud token create` in it",
                    token_file.display()
                );
            }
            let remote = Remote::new(&host, fingerprint.clone(), Some(token.clone()))
                .map_err(|e| anyhow!("--host {e}"))?;
            let client = Client::remote(remote.clone());
            let me = client.call(&GetWhoAmI).await.map_err(|e| {
                anyhow!(
                    "cannot add context {name}: {}",
                    explain(e).to_string().trim_end()
                )
            })?;
            let Some(seen) = remote.seen() else {
                bail!("{host} presented no certificate");
            };
            contexts.contexts.insert(
                name.clone(),
                ContextEntry {
                    host: format!("https://{}", remote.address),
                    token,
                    fingerprint: seen.clone(),
                },
            );
            save_contexts(&path, &contexts)?;
            let how = if fingerprint.is_some() {
                "matches the fingerprint given"
            } else {
                "trusted now: compare it with the fingerprint the daemon printed at its start"
            };
            eprintln!(
                "added context {name}: {} as token {} ({} role); certificate {seen} {how}",
                remote.address,
                me.name,
                me.role.name()
            );
            eprintln!("use it with: paracloud context use {name}   (or --context {name})");
            Ok(())
        }
        ContextCommand::Use { name } => {
            if name != DEFAULT_CONTEXT && !contexts.contexts.contains_key(&name) {
                bail!(
                    "no context named {name}: see paracloud context ls, or add it with paracloud context add"
                );
            }
            contexts.current = (name != DEFAULT_CONTEXT).then(|| name.clone());
            save_contexts(&path, &contexts)?;
            eprintln!("now using context {name}");
            Ok(())
        }
        ContextCommand::Rm { name } => {
            if contexts.contexts.remove(&name).is_none() {
                bail!("no context named {name}: see paracloud context ls");
            }
            if contexts.current.as_deref() == Some(&name) {
                contexts.current = None;
            }
            save_contexts(&path, &contexts)?;
            eprintln!("removed context {name}");
            Ok(())
        }
        ContextCommand::Ls => {
            let current = global
                .context
                .clone()
                .or(contexts.current.clone())
                .unwrap_or_else(|| DEFAULT_CONTEXT.into());
            #[derive(Serialize)]
            struct Row {
                name: String,
                current: bool,
                host: String,
                fingerprint: String,
            }
            let mut rows = vec![Row {
                name: DEFAULT_CONTEXT.into(),
                current: current == DEFAULT_CONTEXT,
                host: format!("{} (this machine)", global.root.display()),
                fingerprint: String::new(),
            }];
            rows.extend(contexts.contexts.iter().map(|(name, entry)| Row {
                name: name.clone(),
                current: *name == current,
                host: entry.host.clone(),
                fingerprint: entry.fingerprint.clone(),
            }));
            print(global.output, &rows, |rows: &Vec<Row>| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            format!("{}{}", r.name, if r.current { " *" } else { "" }),
                            r.host.clone(),
                            r.fingerprint.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "HOST", "CERTIFICATE"], &cells)
            })
        }
    }
}
