//! Process plumbing shared by the three binaries: hostname, shutdown signals, logs, HTTP serving.

use std::future::IntoFuture;
use std::io::{self, IsTerminal};
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

/// How long open HTTP connections may go on once a shutdown signal arrived.
const HTTP_GRACE: Duration = Duration::from_secs(2);

/// The host name of this instance: the UTS namespace's (the sandbox sets it to the instance
/// name), else /etc/hostname, else "unknown".
pub fn hostname() -> String {
    hostname_from(
        Path::new("/proc/sys/kernel/hostname"),
        Path::new("/etc/hostname"),
    )
}

fn hostname_from(kernel: &Path, etc: &Path) -> String {
    [kernel, etc]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// SIGTERM and SIGINT handlers. Installed first thing, because as pid 1 of its pid namespace the
/// process would otherwise ignore both.
#[derive(Debug)]
pub struct Shutdown {
    terminate: Signal,
    interrupt: Signal,
}

impl Shutdown {
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes when either signal arrives.
    pub async fn wait(mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        info!("{name} received; exiting");
    }
}

/// A tokio runtime sized for a small sandbox: the pids limit counts threads, so workers are
/// capped at 4 and blocking threads (DNS lookups, the api's CPU work) at 16, whatever the host's
/// core count.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.min(4))
        .max_blocking_threads(16)
        .enable_all()
        .build()
}

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Instance logs are files: colour codes would only clutter them.
        .with_ansi(io::stderr().is_terminal())
        .init();
}

/// Serves `app` until `shutdown`, then lets open requests finish for at most two seconds.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    shutdown: Shutdown,
) -> io::Result<()> {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .into_future();
    let deadline = async move {
        shutdown.wait().await;
        let _ = stop.send(true);
        tokio::time::sleep(HTTP_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            warn!("requests still open after {HTTP_GRACE:?}; exiting anyway");
            Ok(())
        }
    }
}

/// The body of each shop binary's `main`: logs, args, a small runtime, `serve` until it returns,
/// then exit promptly without waiting for CPU work still running on blocking threads.
pub fn main_with<A: clap::Parser, F: std::future::Future<Output = anyhow::Result<()>>>(
    serve: impl FnOnce(A) -> F,
) -> anyhow::Result<()> {
    init_tracing();
    let args = A::parse();
    let runtime = runtime().map_err(|e| anyhow::anyhow!("cannot start the tokio runtime: {e}"))?;
    let result = runtime.block_on(serve(args));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_prefers_the_kernel_then_etc() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, etc) = (dir.path().join("k"), dir.path().join("e"));
        assert_eq!(hostname_from(&kernel, &etc), "unknown");
        std::fs::write(&etc, "host-etc\n").unwrap();
        assert_eq!(hostname_from(&kernel, &etc), "host-etc");
        std::fs::write(&kernel, "web.2\n").unwrap();
        assert_eq!(hostname_from(&kernel, &etc), "web.2");
    }
}
