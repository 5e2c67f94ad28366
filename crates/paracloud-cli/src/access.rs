//! The commands of remote access: `paracloud token` (the tokens of a daemon's remote API) and
//! `paracloud context` (the remote daemons this CLI talks to, kept by `contexts`).

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use paracloud_api::remote::{is_fingerprint, Remote};
use paracloud_api::{
    Client, CreateToken, GetHealth, GetWhoAmI, Health, ListTokens, RevokeToken, Role, TokenRequest,
    TokenView,
};
use serde::Serialize;

use crate::cli::{ContextCommand, Global, TokenCommand};
use crate::client::{connect, explain};
use crate::contexts::{load_contexts, save_contexts, ContextEntry, DEFAULT_CONTEXT};
use crate::output::{format_time, print, table};

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
