//! The Kubernetes node agent: what the platform gives instances on one machine, given to the
//! pods of a node. It runs on each node (a DaemonSet with the host's pid namespace), finds the
//! node's containers through its OCI runtime's own state, serves each pod that asks for it a PaCI
//! socket of its own, and attaches capsules to a pod's container with the local runtime's code.
//!
//! # Code map
//!
//! Modules are layered, each importing only from those below it:
//!
//! ```text
//! api                 the agent's API on <root>/agent.sock: pods, refresh, capsule runs,
//!                     a migration's events
//! handover            `migrate` and `restore` sent to a pod on request, answers returned
//! schedules  loads    the applications' scheduled capsules, run on this node's pods; the
//! drain               pods' load reports, written on their applications' status; `drain`
//!                     sent to the node's pods as they are deleted
//! proven              which application each pod runs for, proven by its owners, cached
//! capsules            a built-in capsule attached to one container, streamed, audited
//! refresh             one look at the node: pods found, PaCI sockets bound and removed,
//!                     `resize` sent to pods whose limits changed in place
//! paci                a pod's PaCI socket: peer check, whoami, load reports, peers, weight,
//!                     replicas, events and their answers
//! agent  scan  audit  shared state; the runtime's list and bundles; the audit log
//! cluster             the API server: the pod's ParacloudApp by its owners, replicas asked
//! oci  cgroup         containers and pods as plain data; who is in a container's cgroup
//! ```
//!
//! **Architecture Invariant:** a pod's PaCI socket answers only the processes of that pod's
//! containers (their cgroups, by `SO_PEERCRED`), speaks for that pod alone, and every refusal is
//! logged; a capsule leaves nothing in the pod it attached to.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

pub mod agent;
pub mod api;
mod audit;
pub mod capsules;
mod cgroup;
pub mod cluster;
mod drain;
pub mod handover;
mod loads;
pub mod oci;
mod paci;
mod proven;
pub mod refresh;
mod scan;
mod schedules;

pub use agent::{Config, OciRuntime};
pub use cluster::Cluster;

/// How often the agent looks at the node's containers.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OCI runtime could not say what runs.
    #[error("{0}")]
    Runtime(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The agent's own binary, linked under its root at start: `capsule run --kubernetes` executes
/// it in the agent's container (as `ROOT/paracloud __agent-capsule ...`) wherever the image put
/// it.
pub const OWN_BINARY: &str = "paracloud";

/// Runs the agent until SIGTERM or SIGINT; with `cluster`, pods' PaCI requests that change their
/// application are carried out through the API server.
pub async fn run(config: Config, cluster: Option<Cluster>) -> Result<(), Error> {
    let root = config.root.clone();
    std::fs::create_dir_all(root.join("paci"))
        .map_err(io(format!("creating {}", root.display())))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("closing {} to other users", root.display())))?;
    let own = root.join(OWN_BINARY);
    let _ = std::fs::remove_file(&own);
    std::os::unix::fs::symlink(&config.helper_exe, &own)
        .map_err(io(format!("linking its binary at {}", own.display())))?;
    let runtime = paracloud_runtime::Runtime::new(paracloud_runtime::RuntimeConfig {
        cgroup_root: config.cgroup_root.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        helper_exe: config.helper_exe.clone(),
    })
    .map_err(|e| Error::Setup(e.to_string()))?;
    let images = paracloud_image::Store::open(root.join("images"))
        .map_err(|e| Error::Setup(format!("cannot open the capsule image store: {e}")))?;
    let agent = Arc::new(agent::Agent::new(config, runtime, images, cluster));
    if let Err(e) = refresh::refresh(&agent).await {
        tracing::warn!("{e}");
    }
    let socket = agent.config.api_socket();
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(io(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("closing {}", socket.display())))?;
    tracing::info!(
        "node agent serving {} ({} containers of {})",
        socket.display(),
        agent.config.runtime.program(),
        agent.config.runtime_root.display()
    );
    let api = tokio::spawn(api::serve(agent.clone(), listener));
    // The applications' scheduled capsules, for the pods of this node.
    let scheduling = agent
        .cluster
        .clone()
        .map(|cluster| tokio::spawn(schedules::run(agent.clone(), cluster)));
    // The pods' load reports, for the operator's autoscaler.
    let reporting = agent
        .cluster
        .clone()
        .map(|cluster| tokio::spawn(loads::run(agent.clone(), cluster)));
    // `drain` for the pods being deleted.
    let draining = agent
        .cluster
        .clone()
        .map(|cluster| tokio::spawn(drain::run(agent.clone(), cluster)));
    let looking = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = refresh::refresh(&agent).await {
                    tracing::warn!("{e}");
                }
            }
        })
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("handling SIGTERM"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        result = api => {
            looking.abort();
            for task in scheduling.iter().chain(&reporting).chain(&draining) {
                task.abort();
            }
            return match result {
                Ok(Err(e)) => Err(Error::Io { what: "serving the agent's API".into(), source: e }),
                _ => Ok(()),
            };
        }
    }
    looking.abort();
    for task in scheduling.iter().chain(&reporting).chain(&draining) {
        task.abort();
    }
    // The pods' sockets stay: the next agent binds them again at the same paths.
    let _ = std::fs::remove_file(&socket);
    tracing::info!("node agent stopped");
    Ok(())
}
