//! What the data-plane tests share: free addresses, listeners, and a data plane run in a task
//! with its config file, reload trigger and shutdown.

#![allow(dead_code, reason = "each test file uses its own part of the harness")]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use paracloud_dataplane::{write_config, Backend, Config, Dataplane, Listener, Protocol, Tuning};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// An address nothing listens on (bound, then released), on a loopback address of this test
/// process's own, 127.X.Y.Z from its pid. On 127.0.0.1 the port would come from the ephemeral
/// range, where an outgoing connection of a test running beside (whose source address is
/// 127.0.0.1) could take it before the data plane binds it.
pub fn free_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind((own_loopback(), 0)).unwrap();
    socket.local_addr().unwrap()
}

/// This process's own loopback address (pids stay below 2^22, and none here is 1).
pub fn own_loopback() -> std::net::Ipv4Addr {
    let [_, x, y, z] = std::process::id().to_be_bytes();
    std::net::Ipv4Addr::new(127, x, y, z)
}

/// A listener named after its address, with weight-1 backends.
pub fn listener_of(
    bind: SocketAddr,
    protocol: Protocol,
    backends: &[(&str, SocketAddr)],
) -> Listener {
    Listener {
        name: format!("test/{bind}"),
        bind,
        protocol,
        backends: backends
            .iter()
            .map(|&(id, addr)| Backend {
                id: id.into(),
                addr,
                weight: 1,
            })
            .collect(),
        revisions: Vec::new(),
    }
}

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub reload: watch::Sender<()>,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), paracloud_dataplane::Error>>,
    pub stats: paracloud_dataplane::Stats,
}

impl Harness {
    pub fn start(config: Option<&Config>, tuning: Tuning) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dataplane.json");
        if let Some(config) = config {
            write_config(&path, config).unwrap();
        }
        let (reload, reload_rx) = watch::channel(());
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let dataplane = Dataplane::new(path.clone(), tuning);
        let stats = dataplane.stats();
        let task = tokio::spawn(dataplane.run_with_reload(reload_rx, async move {
            let _ = shutdown_rx.await;
        }));
        Self {
            _dir: dir,
            path,
            reload,
            shutdown: Some(shutdown),
            task,
            stats,
        }
    }

    pub fn reconfigure(&self, config: &Config) {
        write_config(&self.path, config).unwrap();
        self.reload.send(()).unwrap();
    }

    pub fn bound(&self, bind: SocketAddr) -> bool {
        self.stats
            .snapshot()
            .listener(bind)
            .is_some_and(|l| l.bound)
    }

    pub async fn wait_bound(&self, bind: SocketAddr) {
        eventually("listener bound", || async { self.bound(bind) }).await;
    }

    /// Starts a data plane serving `listeners`, once the last of them is bound.
    pub async fn serving(listeners: Vec<Listener>, tuning: Tuning) -> Self {
        let bind = listeners.last().expect("a listener").bind;
        let harness = Self::start(Some(&Config { listeners }), tuning);
        harness.wait_bound(bind).await;
        harness
    }

    /// Shuts the data plane down and checks that it stops cleanly.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("data plane stops")
            .unwrap()
            .unwrap();
    }
}

/// Polls `check` every 20 ms for up to 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}
