//! Reaching the daemon of a root: its client, and its errors turned into what to do.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use paracloud_api::{Client, ClientError, GetHealth};

use crate::cli::{DaemonArgs, Global};

/// The client of the daemon of `--root`, whether one answers or not.
fn client(global: &Global) -> Client {
    Client::new(global.root.join(paracloud_api::SOCKET_NAME))
}

/// Turns a client error into a message that says what to do.
pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Unreachable { target, source } if target.starts_with("https://") => {
            anyhow!("cannot reach the remote daemon {target}: {source}")
        }
        ClientError::Unreachable { target, .. } => anyhow!(
            "the paracloud daemon of this root stopped answering (socket {target}): run the command again to start a new one, and see daemon.log beside the socket"
        ),
        ClientError::Api { body, .. } if !body.diagnostics.is_empty() => anyhow!("{}", body.error),
        other => anyhow!(other),
    }
}

/// Connects to the daemon the global options name: a remote one (`--host`, `--context`, the
/// context in use), or the daemon of this root, started in the background when none answers.
pub(crate) async fn connect(global: &Global) -> Result<Client> {
    if let Some(remote) = crate::contexts::remote_of(global)? {
        let client = Client::remote(remote.clone());
        client.call(&GetHealth).await.map_err(explain)?;
        crate::contexts::remember_first_use(&remote)?;
        return Ok(client);
    }
    let client = client(global);
    if client.call(&GetHealth).await.is_ok() {
        return Ok(client);
    }
    let root = absolute(&global.root)?;
    // Closed to other users, as the daemon keeps it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("cannot create the state root {}", root.display()))?;
    let log_path = root.join("daemon.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)?;
    let exe = std::env::current_exe()?;
    let DaemonArgs {
        cgroup_parent,
        subnet,
        app_prefix,
    } = &global.daemon;
    let mut child = std::process::Command::new(exe)
        .arg("daemon")
        .arg("--root")
        .arg(&root)
        .arg("--cgroup-parent")
        .arg(cgroup_parent)
        .arg("--subnet")
        .arg(subnet.to_string())
        .arg("--app-prefix")
        .arg(app_prefix.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the daemon")?;
    eprintln!(
        "started the paracloud daemon (pid {}, root {})",
        child.id(),
        root.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if client.call(&GetHealth).await.is_ok() {
            return Ok(client);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "the daemon exited at start ({status}); its log {} ends with:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not answer within 15 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `path` made absolute against the current directory, `.` and `..` resolved as written (links
/// are not followed: `a/link/..` is `a`).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}
