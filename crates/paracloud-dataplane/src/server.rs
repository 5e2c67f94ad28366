//! The data-plane process body: listeners diffed on reload, accept loops, graceful shutdown.
//!
//! Listening sockets may be inherited (socket activation, see [`Dataplane::inherit`]): a listener
//! whose bind address equals an inherited socket's adopts it instead of binding anew, so that a
//! restarted data plane serves the very sockets (and their queued connections) of the one before.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::calls::CallGraph;
use crate::forward::{self, ListenerState};
use crate::http::{self, Upstream};
use crate::stats::{Counters, Snapshot};
use crate::{
    bind_stats_socket, load_config, serve_stats, Config, Error, Listener, Protocol, Tuning, Waiting,
};

/// How many connections the kernel completes and queues on a listener that nobody accepts from
/// (capped by net.core.somaxconn): while a data plane restarts, they wait there.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Runs the data plane until SIGTERM: loads `config_path` (a missing file is an empty config),
/// serves its listeners, and re-reads the file on every SIGHUP. With `stats_socket`, serves
/// `GET /stats` and `GET /metrics` on that Unix socket (a stale file there is replaced).
/// `inherited` are listening sockets passed by the process that started this one (see
/// [`Dataplane::inherit`]); empty when run standalone.
pub async fn run(
    config_path: PathBuf,
    stats_socket: Option<PathBuf>,
    inherited: Vec<OwnedFd>,
) -> Result<(), Error> {
    let mut hangup = signal(SignalKind::hangup()).map_err(Error::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let (reload_tx, reload_rx) = watch::channel(());
    let relay = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if reload_tx.send(()).is_err() {
                break;
            }
        }
    });
    let dataplane = Dataplane::new(config_path, Tuning::default()).inherit(inherited);
    let stats_task = match &stats_socket {
        Some(path) => Some(tokio::spawn(serve_stats(
            bind_stats_socket(path)?,
            dataplane.stats(),
        ))),
        None => None,
    };
    let result = dataplane
        .run_with_reload(reload_rx, async move {
            terminate.recv().await;
            info!("SIGTERM received; stopping");
        })
        .await;
    relay.abort();
    if let Some(task) = stats_task {
        task.abort();
    }
    if let Some(path) = stats_socket {
        // Best effort: the file only misleads a later reader.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A data plane reading its configuration from one file; see [`run`] for the process entry point.
#[derive(Debug)]
pub struct Dataplane {
    config_path: PathBuf,
    tuning: Tuning,
    stats: Stats,
    /// Inherited listening sockets by bound address, until the first configuration is applied.
    inherited: BTreeMap<SocketAddr, std::net::TcpListener>,
}

/// A handle on the live counters of a running [`Dataplane`], and on the requests waiting for a
/// backend.
#[derive(Debug, Clone)]
pub struct Stats {
    listeners: Arc<Mutex<Vec<Arc<ListenerState>>>>,
    calls: Arc<CallGraph>,
    waiting: broadcast::Sender<Waiting>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            listeners: Arc::default(),
            calls: Arc::default(),
            waiting: broadcast::channel(WAITING_QUEUE).0,
        }
    }
}

/// Announcements of waiting requests kept for a slow reader (which then misses the oldest; they
/// are repeated while the requests wait).
const WAITING_QUEUE: usize = 256;

impl Stats {
    /// The counters of every configured listener and of its current backends, and the call
    /// graph.
    pub fn snapshot(&self) -> Snapshot {
        let listeners = self.listeners.lock().map(|l| l.clone()).unwrap_or_default();
        Snapshot {
            listeners: listeners.iter().map(|l| l.snapshot()).collect(),
            calls: self.calls.snapshot(tokio::time::Instant::now()),
        }
    }

    /// Announcements of requests and connections waiting for a backend, from now on.
    pub fn waiting(&self) -> broadcast::Receiver<Waiting> {
        self.waiting.subscribe()
    }

    fn publish(&self, slots: &BTreeMap<SocketAddr, Slot>) {
        if let Ok(mut listeners) = self.listeners.lock() {
            *listeners = slots.values().map(|s| s.state.clone()).collect();
        }
    }
}

/// A configured listener and, when bound, its accept loop.
struct Slot {
    state: Arc<ListenerState>,
    accepting: Option<Accepting>,
}

struct Accepting {
    /// Dropping or firing it stops the accept loop, which then closes the socket.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Dataplane {
    pub fn new(config_path: PathBuf, tuning: Tuning) -> Self {
        Self {
            config_path,
            tuning,
            stats: Stats::default(),
            inherited: BTreeMap::new(),
        }
    }

    /// Listening sockets to adopt: the first configuration's listener whose bind address equals a
    /// socket's bound address (getsockname) takes it over instead of binding anew; sockets no
    /// listener wants are closed once that configuration is applied. Fds that are not TCP sockets
    /// are closed at once.
    pub fn inherit(mut self, sockets: Vec<OwnedFd>) -> Self {
        for fd in sockets {
            let socket = socket2::Socket::from(fd);
            let bound = match (socket.r#type(), socket.local_addr()) {
                (Ok(socket2::Type::STREAM), Ok(addr)) => addr.as_socket(),
                _ => None,
            };
            match bound {
                Some(addr) => {
                    if self.inherited.insert(addr, socket.into()).is_some() {
                        warn!(%addr, "two inherited sockets have the same address; keeping the last");
                    }
                }
                None => warn!("an inherited fd is not a bound TCP socket; closing it"),
            }
        }
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Serves until `shutdown` completes, re-reading the configuration whenever `reload` changes.
    ///
    /// An unreadable file at start is an error; at a reload it is logged and the previous
    /// configuration stays. On shutdown the listeners close at once and open connections get
    /// `tuning.drain` to finish.
    pub async fn run_with_reload(
        mut self,
        mut reload: watch::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let config = load_config(&self.config_path)?;
        // Every connection holds a clone of `in_flight`; the channel closes when the last ends.
        let (in_flight, mut all_done) = mpsc::channel::<()>(1);
        let mut slots = BTreeMap::new();
        let upstream = http::upstream(&self.tuning);
        let in_flight = (in_flight, upstream);
        let mut inherited = std::mem::take(&mut self.inherited);
        self.apply(&mut slots, &config, &in_flight, &mut inherited)
            .await;
        for addr in inherited.into_keys() {
            info!(%addr, "inherited listening socket not in the configuration; closed");
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                changed = reload.changed() => {
                    if changed.is_err() {
                        // Nobody can ask for a reload any more; serve on until shutdown.
                        (&mut shutdown).await;
                        break;
                    }
                    match load_config(&self.config_path) {
                        Ok(config) => {
                            self.apply(&mut slots, &config, &in_flight, &mut BTreeMap::new())
                                .await
                        }
                        Err(error) => error!(%error, "reload failed; keeping the previous configuration"),
                    }
                }
            }
        }
        let stopping: Vec<_> = slots
            .into_values()
            .filter_map(|slot| slot.accepting)
            .collect();
        for accepting in stopping {
            drop(accepting.stop);
            let _ = accepting.task.await;
        }
        drop(in_flight);
        // HTTP keep-alive connections idle at shutdown also wait out the drain period.
        if tokio::time::timeout(self.tuning.drain, all_done.recv())
            .await
            .is_err()
        {
            warn!(drain = ?self.tuning.drain, "connections still open after the drain period; closing them");
        }
        Ok(())
    }

    /// Moves the running listeners to `config`: removed ones stop accepting, kept ones take their
    /// new backends, new ones (and ones that failed to bind before) adopt the `inherited` socket
    /// of their address, or are bound.
    async fn apply(
        &self,
        slots: &mut BTreeMap<SocketAddr, Slot>,
        config: &Config,
        in_flight: &(mpsc::Sender<()>, Upstream),
        inherited: &mut BTreeMap<SocketAddr, std::net::TcpListener>,
    ) {
        let mut wanted: BTreeMap<SocketAddr, &Listener> = BTreeMap::new();
        for listener in &config.listeners {
            if wanted.insert(listener.bind, listener).is_some() {
                warn!(bind = %listener.bind, "address listed twice in the config; the last entry wins");
            }
        }
        self.stats.calls.rebuild(wanted.values().copied());
        let removed: Vec<SocketAddr> = slots
            .keys()
            .filter(|bind| !wanted.contains_key(bind))
            .copied()
            .collect();
        for bind in removed {
            if let Some(slot) = slots.remove(&bind) {
                info!(listener = %slot.state.name(), %bind, "listener removed; open connections continue");
                if let Some(accepting) = slot.accepting {
                    drop(accepting.stop);
                    // Wait for the socket to close so the address can be bound again right away.
                    let _ = accepting.task.await;
                }
            }
        }
        for (bind, listener) in wanted {
            let slot = slots.entry(bind).or_insert_with(|| Slot {
                state: Arc::new(ListenerState::announcing(
                    bind,
                    &self.tuning,
                    self.stats.waiting.clone(),
                )),
                accepting: None,
            });
            slot.state.update(listener);
            if slot.accepting.is_some() {
                continue;
            }
            let (socket, how) = match inherited.remove(&bind) {
                Some(socket) => (adopt_listener(socket), "inherited"),
                None => (bind_listener(bind), "bound"),
            };
            match socket {
                Ok(socket) => {
                    info!(listener = %listener.name, %bind, backends = listener.backends.len(), socket = how, "listening");
                    slot.state.bound.store(true, Ordering::Relaxed);
                    let (stop, stopped) = oneshot::channel();
                    let task = tokio::spawn(accept_loop(
                        socket,
                        slot.state.clone(),
                        self.tuning,
                        stopped,
                        in_flight.clone(),
                        self.stats.calls.clone(),
                    ));
                    slot.accepting = Some(Accepting { stop, task });
                }
                Err(error) => {
                    error!(listener = %listener.name, %bind, %error,
                        "cannot bind listener; will retry on the next reload");
                }
            }
        }
        self.stats.publish(slots);
    }
}

/// Binds a listening socket that may precede its address: IP_FREEBIND lets a service address be
/// bound before the bridge carries it, SO_REUSEADDR lets a restarted data plane rebind at once.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Serves an inherited socket. listen() again: a socket passed bound but not yet listening starts
/// listening, a listening one keeps its queue and takes our backlog.
fn adopt_listener(socket: std::net::TcpListener) -> io::Result<TcpListener> {
    let socket = socket2::Socket::from(socket);
    socket.set_nonblocking(true)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    socket: TcpListener,
    state: Arc<ListenerState>,
    tuning: Tuning,
    mut stop: oneshot::Receiver<()>,
    in_flight: (mpsc::Sender<()>, Upstream),
    calls: Arc<CallGraph>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                spawn_connection(client, peer, &state, tuning, &in_flight, &calls);
            }
            Err(error) => {
                // Typically EMFILE: pause instead of spinning until descriptors free up.
                warn!(bind = %state.bind, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    state.bound.store(false, Ordering::Relaxed);
}

/// Serves one accepted connection by the listener's protocol; `in_flight` holds the drain
/// channel open and carries the shared pooled HTTP client. A TCP connection counts as one call
/// in `calls` here; an HTTP one counts each of its requests.
fn spawn_connection(
    client: TcpStream,
    peer: SocketAddr,
    state: &Arc<ListenerState>,
    tuning: Tuning,
    in_flight: &(mpsc::Sender<()>, Upstream),
    calls: &Arc<CallGraph>,
) {
    Counters::add(&state.counters.accepted, 1);
    let state = state.clone();
    let (in_flight, upstream) = in_flight.clone();
    let (protocol, service) = {
        let route = state.route.borrow();
        (route.protocol, route.service.clone())
    };
    if protocol != Some(Protocol::Http) {
        calls.count(peer.ip(), &service, tokio::time::Instant::now());
    }
    let calls = calls.clone();
    tokio::spawn(async move {
        match protocol {
            Some(Protocol::Http) => http::serve(client, peer, state, upstream, calls, tuning).await,
            Some(Protocol::Tcp) | None => forward::serve(client, &state, &tuning).await,
        }
        drop(in_flight);
    });
}
