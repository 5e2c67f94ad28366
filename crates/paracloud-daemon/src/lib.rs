//! The daemon: HTTP API on a Unix socket, the reconcile loop, and supervision of instances and of
//! the data-plane process. Crash-only: start-up is recovery from the state database.

pub mod addressing;
pub mod api;
pub mod api_error;
pub mod auth;
pub mod autoscale;
pub mod batches;
pub mod build;
pub mod capsules;
pub mod clock;
pub mod commands;
pub mod counters;
pub mod criu;
pub mod dashboard;
pub mod dataplane;
pub mod debug;
pub mod driver;
pub mod engine;
pub mod failover;
#[cfg(test)]
mod fake;
pub mod follow;
pub mod health;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod migrate;
pub mod paci;
pub mod paci_hub;
pub mod peer;
pub mod ports;
pub mod remote;
pub mod routes;
pub mod seconds;
pub mod servers;
pub mod session;
pub mod settings;
mod switchover;
mod sync;
pub mod taskfarm;
pub mod tls;
pub mod views;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use dataplane::DATAPLANE_COMMAND;
pub use engine::{DaemonConfig, Engine};
use nix::fcntl::{Flock, FlockArg};
use paracloud_runtime::{Runtime, RuntimeConfig};
use paracloud_state::Store;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use the state root {path}: {source}")]
    Root { path: String, source: io::Error },
    #[error("another daemon already runs for the state root {0} (see its daemon.pid); stop it, or use another --root")]
    AlreadyRunning(String),
    #[error(transparent)]
    State(#[from] paracloud_state::Error),
    #[error("bad settings: {0}")]
    Settings(String),
    #[error("the runtime cannot start: {0}")]
    Runtime(#[from] paracloud_runtime::Error),
    #[error("cannot open the image store: {0}")]
    Images(String),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: io::Error },
    #[error("the applications of this state root have subnets cut from {kept}, and this daemon was started with {given}: start it with `{flags}` as before, or take every application down before changing the pool or the subnet size")]
    AddressPlan {
        kept: String,
        given: String,
        flags: String,
    },
}

/// Raises this process's soft limit of open files to its hard limit: the daemon holds three
/// descriptors per instance (its pidfd, the copy it waits on, its PaCI socket), more than the
/// usual soft limit of 1,024 allows past some 330 instances. Returns the limits before (soft,
/// hard) for instances to start with, or `None` when they cannot be read.
fn raise_open_files_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!("open files: raised the soft limit from {soft} to {hard}"),
            Err(e) => {
                tracing::warn!("open files: cannot raise the soft limit from {soft} to {hard}: {e}")
            }
        }
    }
    Some((soft, hard))
}

/// The daemon's flags that give the address plan `kept` (as [`addressing::AddressPlan::key`]
/// writes it).
fn plan_flags(kept: &str) -> String {
    match kept.split_once(" /") {
        Some((pool, prefix)) => format!("--subnet {pool} --app-prefix {prefix}"),
        None => format!("--subnet {kept}"),
    }
}

fn root_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Root {
        path: path.display().to_string(),
        source,
    }
}

/// Files of the state root that are the daemon's alone (0600), whoever made them.
const PRIVATE_FILES: [&str; 11] = [
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "daemon.log",
    "daemon.pid",
    "daemon.lock",
    "dataplane.json",
    "dataplane.log",
    "dataplane.pid",
    "dataplane.retiring",
    "dataplane.drain",
];

/// Creates the state root closed to other users (0700), or closes one made open (an older
/// daemon's, or one made by hand), and its files (0600); says so when it had to.
fn close_root(root: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let mode = fs::metadata(root)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "the state root {} was open to other users (mode {mode:o}): closed it (0700)",
            root.display()
        );
    }
    for name in PRIVATE_FILES {
        let path = root.join(name);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Writes a file of the state root only its owner may read (0600).
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents)
}

/// Runs the daemon until SIGTERM or SIGINT. Instances and the data plane keep running after it
/// ends; the next daemon for the same root re-adopts them.
pub async fn run(mut config: DaemonConfig) -> Result<(), Error> {
    let root = config.root.clone();
    close_root(&root).map_err(root_error(&root))?;
    config.settings = settings::load(&root).map_err(Error::Settings)?;
    // Read again at each pull (edits need no restart); a bad file stops the start here first.
    paracloud_image::registries::load(&root.join(paracloud_image::registries::FILE))
        .map_err(Error::Settings)?;
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(root.join("daemon.lock"))
        .map_err(root_error(&root))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::AlreadyRunning(root.display().to_string()))?;
    write_private(
        &root.join("daemon.pid"),
        format!("{}\n", std::process::id()).as_bytes(),
    )
    .map_err(root_error(&root))?;

    // SQLite gives the WAL and shared-memory files the database's mode.
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(root.join("state.db"))
        .map_err(root_error(&root))?;
    config.settings.instance_open_files = raise_open_files_limit();
    let store = Store::open(&root.join("state.db"))?;
    let given = config.addresses.key();
    if let Some(kept) = store.keep_address_plan(&given)? {
        return Err(Error::AddressPlan {
            flags: plan_flags(&kept),
            kept: kept.replace(" /", " in /"),
            given: given.replace(" /", " in /"),
        });
    }
    let runtime = Runtime::new(RuntimeConfig {
        cgroup_root: "/sys/fs/cgroup".into(),
        cgroup_parent: config.cgroup_parent.clone(),
        helper_exe: config.exe.clone(),
    })?;
    config.settings.userns = Some(match config.settings.userns {
        Some(said) => said,
        None => match runtime.check_user_namespaces(&root) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "instances run with host ids, without user namespaces of their own: this machine cannot give them one ({why}); `userns = false` in {} says so and silences this",
                    root.join(settings::FILE).display()
                );
                config.settings.userns_unavailable = Some(why);
                false
            }
        },
    });
    let images = images::Images::open(&root).map_err(|e| Error::Images(e.to_string()))?;
    // What RUN steps of builds cut short by a crash left (their sandboxes died with the daemon's
    // children or were never adopted).
    let _ = fs::remove_dir_all(root.join("builds"));
    let engine = Engine::new(config.clone(), store, runtime, images);
    engine.recover()?;
    engine.settle_interrupted_capsule_runs()?;
    engine.start_dataplane();

    let socket = config.socket_path();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| Error::Listen {
        path: socket.display().to_string(),
        source,
    })?;
    tracing::info!(
        "paracloud daemon {} listening on {}",
        std::process::id(),
        socket.display()
    );
    // The remote API, when asked for: bound now, so that a port in use stops the start.
    let remote_handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let remote = match config.listen.or(config.settings.listen) {
        None => None,
        Some(addr) => {
            let listen_error = |source| Error::Listen {
                path: addr.to_string(),
                source,
            };
            let identity = tls::load(
                &root,
                config
                    .settings
                    .tls_cert
                    .as_deref()
                    .zip(config.settings.tls_key.as_deref()),
            )
            .map_err(Error::Settings)?;
            let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
            listener.set_nonblocking(true).map_err(listen_error)?;
            let bound = listener.local_addr().map_err(listen_error)?;
            // Said on stdout too: the fingerprint is what a remote CLI pins at its first use.
            println!(
                "remote API and dashboard on https://{bound} (certificate {}, fingerprint {})",
                identity.cert_path.display(),
                identity.fingerprint
            );
            tracing::info!(
                "remote API on https://{bound}, certificate fingerprint {}",
                identity.fingerprint
            );
            let _ = engine.remote.set(paracloud_api::RemoteView {
                address: bound.to_string(),
                fingerprint: identity.fingerprint.clone(),
            });
            let engine = engine.clone();
            let handle = remote_handle.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = remote::serve(engine, listener, &identity, handle).await {
                    tracing::error!("the remote API stopped: {e}");
                }
            }))
        }
    };

    let reconcile = tokio::spawn(engine.clone().run());
    let rotation = tokio::spawn(rotate_logs(engine.clone()));
    let following = tokio::spawn(follow::follow(engine.clone()));
    let scheduling = tokio::spawn(capsules::run_schedules(engine.clone()));
    let farming = tokio::spawn(taskfarm::run(engine.clone()));
    let mut term = signal(SignalKind::terminate()).map_err(root_error(&root))?;
    let mut int = signal(SignalKind::interrupt()).map_err(root_error(&root))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("daemon stopping; instances and the data plane keep running");
    };
    let served = axum::serve(
        listener,
        api::router(engine.clone())
            .layer(axum::middleware::from_fn(peer::local_peer))
            .into_make_service_with_connect_info::<peer::UnixCredentials>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    remote_handle.graceful_shutdown(Some(Duration::from_secs(1)));
    if let Some(remote) = remote {
        let _ = tokio::time::timeout(Duration::from_secs(2), remote).await;
    }
    reconcile.abort();
    rotation.abort();
    following.abort();
    scheduling.abort();
    farming.abort();
    let _ = fs::remove_file(&socket);
    served.map_err(|source| Error::Listen {
        path: socket.display().to_string(),
        source,
    })
}

async fn rotate_logs<D: driver::Driver>(engine: Arc<Engine<D>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for key in engine.live_keys() {
            let path = engine.config.log_path(&key);
            if let Err(e) = logs::rotate_if_needed(&path, logs::MAX_LOG_BYTES, logs::KEEP_ROTATED) {
                tracing::warn!("cannot rotate {}: {e}", path.display());
            }
        }
    }
}
