//! The data-plane process body: listeners diffed on reload, accept loops, draining.
//!
//! Listening sockets may be inherited (socket activation, see [`Dataplane::inherit`]): a listener
//! whose bind address equals an inherited socket's (TCP for TCP and HTTP listeners, UDP for UDP
//! ones) adopts it instead of binding anew, so that a restarted data plane serves the very sockets
//! (and their queued connections or datagrams) of the one before.
//!
//! # Draining
//!
//! A drain (SIGTERM for the process) hands the listening sockets over to whoever else holds them
//! (the daemon and the data plane that replaces this one) and finishes what is open: the accept
//! loops stop and close this process's copies of the sockets, HTTP/1.1 connections answer their
//! next request with `Connection: close` and close after it, keep-alive connections with no
//! request under way close once idle for [`Tuning::idle_grace`], hyper's connections (HTTP/2,
//! HTTP/1.0, upgrades) shut down gracefully (GOAWAY for HTTP/2), TCP connections run to their
//! end, UDP listeners stop reading and their flows relay replies until idle (see the `udp`
//! module), and `GET /watch` streams end so that the control plane follows the new process. Routes
//! still follow reloads while draining (no listener is bound any more). The drain ends when the
//! last connection does, after [`Tuning::drain`], or at once on a second SIGTERM.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::calls::CallGraph;
use crate::draining::until_draining;
use crate::forward::{self, ListenerState};
use crate::http;
use crate::shared::Shared;
use crate::stats::{Counters, Snapshot};
use crate::{
    bind_stats_socket, load_config, serve_stats, udp, Config, Endpoint, Error, Listener, Protocol,
    Tuning, Waiting,
};

/// How many connections the kernel completes and queues on a listener that nobody accepts from
/// (capped by net.core.somaxconn): while a data plane restarts, they wait there.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Runs the data plane until it has drained: loads `config_path` (a missing file is an empty
/// config), serves its listeners, and re-reads the file on every SIGHUP. SIGTERM starts a drain
/// (see the module's documentation) bounded by `tuning.drain`, or by the milliseconds written in
/// `drain_file` when that file exists then (so the process that sends the signal chooses); a
/// second SIGTERM ends it at once.
///
/// With `stats_socket`, serves `GET /stats`, `GET /metrics` and `GET /watch` on that Unix socket,
/// bound beside the path and moved there (over what was there) once the first configuration is
/// applied, so that until then the path leads to the data plane this one replaces, which keeps
/// it if this one never gets that far; removed at exit unless another data plane has put its own
/// there since. `inherited` are listening sockets passed by the process that started this one
/// (see [`Dataplane::inherit`]); empty when run standalone. `ready` fires once the first
/// configuration is applied (its listeners adopted or bound) and the stats socket is in place.
pub async fn run(
    config_path: PathBuf,
    stats_socket: Option<PathBuf>,
    inherited: Vec<OwnedFd>,
    tuning: Tuning,
    drain_file: Option<PathBuf>,
    ready: Option<oneshot::Sender<()>>,
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
    // How many SIGTERMs came: the first drains, the second ends the drain.
    let (terms_tx, terms) = watch::channel(0u32);
    let counting = tokio::spawn(async move {
        while terminate.recv().await.is_some() {
            terms_tx.send_modify(|n| *n += 1);
        }
    });
    let sigterm = |nth: u32| {
        let mut terms = terms.clone();
        async move {
            if terms.wait_for(|n| *n >= nth).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let (applied, first_applied) = oneshot::channel();
    let dataplane = Dataplane::new(config_path, tuning)
        .inherit(inherited)
        .on_ready(applied);
    let beside = |path: &PathBuf| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}", std::process::id()));
        PathBuf::from(name)
    };
    let mut stats_file = None;
    let mut stats_task = None;
    let mut stats_moves = None;
    if let Some(path) = &stats_socket {
        let first = beside(path);
        let socket = bind_stats_socket(&first)?;
        stats_file = std::fs::metadata(&first).ok().map(|m| (m.dev(), m.ino()));
        stats_task = Some(tokio::spawn(serve_stats(socket, dataplane.stats())));
        stats_moves = Some((first, path.clone()));
    }
    let announcing = tokio::spawn(async move {
        if first_applied.await.is_err() {
            return;
        }
        if let Some((first, path)) = stats_moves {
            if let Err(error) = std::fs::rename(&first, &path) {
                error!(%error, path = %path.display(), "cannot put the stats socket in place");
            }
        }
        if let Some(ready) = ready {
            let _ = ready.send(());
        }
    });
    let first = sigterm(1);
    let second = sigterm(2);
    let result = dataplane
        .run_with_drain(
            reload_rx,
            async move {
                first.await;
                let asked = drain_file.as_deref().and_then(read_drain_file);
                info!(pid = std::process::id(), limit = ?asked.unwrap_or(tuning.drain),
                    "SIGTERM received; draining (a second SIGTERM ends the drain at once)");
                asked
            },
            async move {
                second.await;
                info!(
                    pid = std::process::id(),
                    "second SIGTERM received; ending the drain"
                );
            },
        )
        .await;
    relay.abort();
    counting.abort();
    announcing.abort();
    if let Some(task) = stats_task {
        task.abort();
    }
    if let Some(path) = stats_socket {
        // Only our own socket file: a data plane that replaced this one puts its own there.
        for path in [beside(&path), path] {
            let ours = std::fs::metadata(&path)
                .ok()
                .is_some_and(|m| Some((m.dev(), m.ino())) == stats_file);
            if ours {
                // Best effort: the file only misleads a later reader.
                let _ = std::fs::remove_file(path);
            }
        }
    }
    result
}

/// The drain limit written in `path` (milliseconds), when the file exists and holds one.
fn read_drain_file(path: &std::path::Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse::<u64>() {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(error) => {
            warn!(path = %path.display(), %error, "the drain file holds no milliseconds; using the default limit");
            None
        }
    }
}

/// A data plane reading its configuration from one file; see [`run`] for the process entry point.
#[derive(Debug)]
pub struct Dataplane {
    config_path: PathBuf,
    tuning: Tuning,
    stats: Stats,
    /// Inherited listening sockets by bound address, until the first configuration is applied.
    inherited: BTreeMap<Endpoint, socket2::Socket>,
    /// Set once a drain begins; every connection and `GET /watch` stream watches it.
    draining: watch::Sender<bool>,
    /// Fired once the first configuration is applied.
    ready: Option<oneshot::Sender<()>>,
}

/// A handle on the live counters of a running [`Dataplane`], and on the requests waiting for a
/// backend.
#[derive(Debug, Clone)]
pub struct Stats {
    listeners: Arc<Mutex<Vec<Arc<ListenerState>>>>,
    calls: Arc<CallGraph>,
    waiting: broadcast::Sender<Waiting>,
    draining: watch::Receiver<bool>,
}

/// Announcements of waiting requests kept for a slow reader (which then misses the oldest; they
/// are repeated while the requests wait).
const WAITING_QUEUE: usize = 256;

impl Stats {
    fn new(draining: watch::Receiver<bool>) -> Self {
        Self {
            listeners: Arc::default(),
            calls: Arc::default(),
            waiting: broadcast::channel(WAITING_QUEUE).0,
            draining,
        }
    }

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

    /// Completes once the data plane drains (never, if it stops without draining).
    pub async fn drained(&self) {
        until_draining(&mut self.draining.clone()).await;
    }

    fn publish(&self, slots: &BTreeMap<Endpoint, Slot>) {
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
        let (draining, watching) = watch::channel(false);
        Self {
            config_path,
            tuning,
            stats: Stats::new(watching),
            inherited: BTreeMap::new(),
            draining,
            ready: None,
        }
    }

    /// Listening sockets to adopt: the first configuration's listener whose bind address equals a
    /// socket's bound address (getsockname) takes it over instead of binding anew, a TCP socket
    /// (SO_TYPE stream) for a TCP or HTTP listener and a UDP one (datagram) for a UDP listener;
    /// sockets no listener wants are closed once that configuration is applied. Fds that are not
    /// bound TCP or UDP sockets are closed at once.
    pub fn inherit(mut self, sockets: Vec<OwnedFd>) -> Self {
        for fd in sockets {
            let socket = socket2::Socket::from(fd);
            let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
            let bound = match (socket.r#type(), addr) {
                (Ok(socket2::Type::STREAM), Some(addr)) => Some(Endpoint::Tcp(addr)),
                (Ok(socket2::Type::DGRAM), Some(addr)) => Some(Endpoint::Udp(addr)),
                _ => None,
            };
            match bound {
                Some(endpoint) => {
                    if self.inherited.insert(endpoint, socket).is_some() {
                        warn!(%endpoint, "two inherited sockets have the same address; keeping the last");
                    }
                }
                None => warn!("an inherited fd is not a bound TCP or UDP socket; closing it"),
            }
        }
        self
    }

    /// Fires `ready` once the first configuration is applied.
    pub fn on_ready(mut self, ready: oneshot::Sender<()>) -> Self {
        self.ready = Some(ready);
        self
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Serves until `shutdown` completes, re-reading the configuration whenever `reload` changes,
    /// then drains (see the module's documentation) for at most `tuning.drain`.
    ///
    /// An unreadable file at start is an error; at a reload it is logged and the previous
    /// configuration stays.
    pub async fn run_with_reload(
        self,
        reload: watch::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let drain = async move {
            shutdown.await;
            None
        };
        self.run_with_drain(reload, drain, std::future::pending())
            .await
    }

    /// As [`Dataplane::run_with_reload`], where the drain lasts at most what `drain` returns
    /// (`None`: `tuning.drain`), and `stop`, once the drain has begun, ends it at once (what is
    /// still open is closed when the runtime drops its tasks).
    pub async fn run_with_drain(
        mut self,
        mut reload: watch::Receiver<()>,
        drain: impl Future<Output = Option<Duration>>,
        stop: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let config = load_config(&self.config_path)?;
        // Every connection holds a clone of the sender; the channel closes when the last ends.
        let (in_flight, mut all_done) = mpsc::channel::<()>(1);
        let mut slots = BTreeMap::new();
        let shared = Shared::new(
            in_flight,
            http::upstream(&self.tuning),
            self.draining.subscribe(),
        );
        let mut inherited = std::mem::take(&mut self.inherited);
        self.apply(&mut slots, &config, Some(&shared), &mut inherited)
            .await;
        for addr in inherited.into_keys() {
            info!(%addr, "inherited listening socket not in the configuration; closed");
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        tokio::pin!(drain);
        tokio::pin!(stop);
        let mut reloads = true;
        let limit = loop {
            tokio::select! {
                asked = &mut drain => break asked.unwrap_or(self.tuning.drain),
                changed = reload.changed(), if reloads => {
                    if changed.is_err() {
                        // Nobody can ask for a reload any more; serve on until the drain.
                        reloads = false;
                        continue;
                    }
                    self.reload(&mut slots, Some(&shared)).await;
                }
            }
        };
        let began = Instant::now();
        // Our copies of the listening sockets close; whoever else holds them accepts from now on.
        // UDP listeners stop reading when they see the drain, and keep their flows until then.
        for (_, slot) in slots
            .iter_mut()
            .filter(|(e, _)| matches!(e, Endpoint::Tcp(_)))
        {
            if let Some(accepting) = slot.accepting.take() {
                drop(accepting.stop);
                let _ = accepting.task.await;
            }
        }
        self.draining.send_replace(true);
        drop(shared);
        let open = |slots: &BTreeMap<Endpoint, Slot>| -> u64 {
            slots
                .values()
                .map(|s| Counters::get(&s.state.counters.active))
                .sum()
        };
        let pid = std::process::id();
        info!(
            pid,
            connections = open(&slots),
            ?limit,
            "draining: listening sockets closed"
        );
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = all_done.recv() => {
                    info!(pid, took = ?began.elapsed(), "drained: every connection ended");
                    break;
                }
                () = &mut deadline => {
                    warn!(pid, connections = open(&slots), ?limit,
                        "connections still open after the drain period; closing them");
                    break;
                }
                () = &mut stop => {
                    warn!(pid, connections = open(&slots), took = ?began.elapsed(),
                        "drain ended early; closing what is open");
                    break;
                }
                changed = reload.changed(), if reloads => {
                    if changed.is_err() {
                        reloads = false;
                        continue;
                    }
                    // Backends still change (an instance stopping leaves the routes first).
                    self.reload(&mut slots, None).await;
                }
            }
        }
        Ok(())
    }

    /// Reads the configuration again and applies it; on error the previous one stays.
    async fn reload(&self, slots: &mut BTreeMap<Endpoint, Slot>, shared: Option<&Shared>) {
        match load_config(&self.config_path) {
            Ok(config) => {
                self.apply(slots, &config, shared, &mut BTreeMap::new())
                    .await
            }
            Err(error) => error!(%error, "reload failed; keeping the previous configuration"),
        }
    }

    /// Moves the running listeners to `config`: removed ones stop accepting, kept ones take their
    /// new backends, new ones (and ones that failed to bind before) adopt the `inherited` socket
    /// of their address, or are bound. Without `shared` (draining) only the routes of the
    /// listeners already there change: nothing is bound.
    async fn apply(
        &self,
        slots: &mut BTreeMap<Endpoint, Slot>,
        config: &Config,
        shared: Option<&Shared>,
        inherited: &mut BTreeMap<Endpoint, socket2::Socket>,
    ) {
        let mut wanted: BTreeMap<Endpoint, &Listener> = BTreeMap::new();
        for listener in &config.listeners {
            if wanted.insert(listener.endpoint(), listener).is_some() {
                warn!(bind = %listener.endpoint(), "address listed twice in the config; the last entry wins");
            }
        }
        self.stats.calls.rebuild(wanted.values().copied());
        let removed: Vec<Endpoint> = slots
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
        for (endpoint, listener) in wanted {
            let Some(shared) = shared else {
                if let Some(slot) = slots.get(&endpoint) {
                    slot.state.update(listener);
                }
                continue;
            };
            let bind = endpoint.addr();
            let slot = slots.entry(endpoint).or_insert_with(|| Slot {
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
            let how = match inherited.contains_key(&endpoint) {
                true => "inherited",
                false => "bound",
            };
            let (stop, stopped) = oneshot::channel();
            let (state, calls) = (slot.state.clone(), self.stats.calls.clone());
            let task = match (endpoint, inherited.remove(&endpoint)) {
                (Endpoint::Tcp(_), Some(socket)) => adopt_listener(socket.into()).map(Bound::Tcp),
                (Endpoint::Tcp(_), None) => bind_listener(bind).map(Bound::Tcp),
                (Endpoint::Udp(_), Some(socket)) => {
                    udp::adopt_socket(socket.into()).map(Bound::Udp)
                }
                (Endpoint::Udp(_), None) => udp::bind_socket(bind).map(Bound::Udp),
            }
            .map(|socket| match socket {
                Bound::Tcp(tcp) => tokio::spawn(accept_loop(
                    tcp,
                    state,
                    self.tuning,
                    stopped,
                    shared.clone(),
                    calls,
                )),
                Bound::Udp(udp) => tokio::spawn(udp::serve(
                    udp,
                    state,
                    self.tuning,
                    stopped,
                    shared.clone(),
                    calls,
                )),
            });
            match task {
                Ok(task) => {
                    info!(listener = %listener.name, bind = %endpoint, backends = listener.backends.len(), socket = how, "listening");
                    slot.state.bound.store(true, Ordering::Relaxed);
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

/// A listening socket ready to serve.
enum Bound {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
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
    shared: Shared,
    calls: Arc<CallGraph>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                spawn_connection(client, peer, &state, tuning, &shared, &calls);
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

/// Serves one accepted connection by the listener's protocol; `shared` holds the drain channel
/// open until it ends. A TCP connection counts as one call in `calls` here; an HTTP one counts
/// each of its requests.
fn spawn_connection(
    client: TcpStream,
    peer: SocketAddr,
    state: &Arc<ListenerState>,
    tuning: Tuning,
    shared: &Shared,
    calls: &Arc<CallGraph>,
) {
    Counters::add(&state.counters.accepted, 1);
    let state = state.clone();
    let shared = shared.clone();
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
            Some(Protocol::Http) => {
                http::serve(
                    client,
                    peer,
                    state,
                    shared.upstream.clone(),
                    shared.draining.clone(),
                    calls,
                    tuning,
                )
                .await
            }
            // A UDP listener has no accept loop; its route never reaches one.
            Some(Protocol::Tcp | Protocol::Udp) | None => {
                forward::serve(client, &state, &tuning).await
            }
        }
        drop(shared);
    });
}
