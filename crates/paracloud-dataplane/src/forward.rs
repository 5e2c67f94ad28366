//! One client connection: pick a backend, connect with timeout and retries, then copy both ways.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, warn};

use crate::budget::RetryBudget;
use crate::pick::{pick, Candidate};
use crate::split::{self, Side, SmoothWeighted};
use crate::stats::{BackendSnapshot, Counters, ListenerSnapshot};
use crate::Waiting;
use crate::{Listener, Protocol, Tuning};

/// How fast an unrefreshed latency estimate fades (e-folding time), so a backend that once was
/// slow is tried again and measured anew.
const EWMA_DECAY: f64 = 10.0;
/// How often a request waiting for a backend announces it again, in case the first announcement
/// was missed (the control plane was restarting, say).
const WAITING_ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Weight of a new measurement in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;

/// A backend as the forwarder sees it; kept across reloads while its id and address stay.
#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    weight: AtomicU32,
    pub(crate) counters: Counters,
    failed_until: Mutex<Option<Instant>>,
    /// Failed requests in a row; reset by any answer.
    consecutive_failures: AtomicU32,
    /// Latency EWMA in microseconds and when it was last updated.
    ewma: Mutex<Option<(f64, Instant)>>,
    /// Idle keep-alive HTTP/1.1 connections to this backend (see [`crate::h1`]).
    pub(crate) idle: crate::pool::Idle,
}

impl BackendState {
    fn new(id: String, addr: SocketAddr, weight: u32) -> Self {
        Self {
            id,
            addr,
            weight: AtomicU32::new(weight),
            counters: Counters::default(),
            failed_until: Mutex::new(None),
            consecutive_failures: AtomicU32::new(0),
            ewma: Mutex::new(None),
            idle: crate::pool::Idle::default(),
        }
    }

    /// The latency estimate in microseconds, decayed by the time since it was last updated;
    /// 0 when unknown.
    pub(crate) fn latency_us(&self, now: Instant) -> u64 {
        self.ewma
            .lock()
            .map_or(0, |ewma| decayed(&ewma, now) as u64)
    }

    /// Records an answer that took `latency_us`: updates the estimate and ends a failure streak.
    pub(crate) fn succeeded(&self, now: Instant, latency_us: u64) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let sample = latency_us.max(1) as f64;
        if let Ok(mut ewma) = self.ewma.lock() {
            let next = match *ewma {
                None => sample,
                Some(_) => {
                    let current = decayed(&ewma, now);
                    current + EWMA_ALPHA * (sample - current)
                }
            };
            *ewma = Some((next, now));
        }
    }

    /// Records a failed request; `tuning.eject_after` of them in a row skip the backend for
    /// `tuning.eject_for`.
    pub(crate) fn failed(&self, now: Instant, tuning: &Tuning) {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= tuning.eject_after {
            if streak == tuning.eject_after {
                warn!(backend = %self.id, addr = %self.addr, streak, "ejecting backend after consecutive failures");
            }
            self.mark_failed(now + tuning.eject_for);
        }
    }

    pub(crate) fn failed_recently(&self, now: Instant) -> bool {
        self.failed_until
            .lock()
            .map(|until| until.is_some_and(|t| now < t))
            .unwrap_or(false)
    }

    /// Skips the backend until `until` (a later deadline already set stays).
    pub(crate) fn mark_failed(&self, until: Instant) {
        if let Ok(mut slot) = self.failed_until.lock() {
            if slot.is_none_or(|t| t < until) {
                *slot = Some(until);
            }
        }
    }

    pub(crate) fn candidate(&self, now: Instant, tried: &[Arc<BackendState>]) -> Candidate {
        Candidate {
            active: Counters::get(&self.counters.active) + Counters::get(&self.counters.in_flight),
            latency_us: self.latency_us(now),
            weight: self.weight.load(Ordering::Relaxed),
            available: !self.failed_recently(now)
                && !tried.iter().any(|t| std::ptr::eq(Arc::as_ptr(t), self)),
        }
    }
}

/// An EWMA value as of `now`, having faded since its last update.
fn decayed(ewma: &Option<(f64, Instant)>, now: Instant) -> f64 {
    ewma.map_or(0.0, |(value, at)| {
        let age = now.saturating_duration_since(at).as_secs_f64();
        value * (-age / EWMA_DECAY).exp()
    })
}

/// Chooses the backend of a TCP connection or an HTTP request: the one place where a backend
/// is chosen, among the backends of the `side` of the listener's current `route` that
/// [`ListenerState::wait_for_backend`] chose for it (the service itself or one of its revisions,
/// by weight or by the request's `x-paracloud-revision` header). Backends in `tried` already
/// failed this request. `None` when that side has no backend.
pub(crate) fn choose(
    route: &Route,
    side: Side,
    now: Instant,
    tried: &[Arc<BackendState>],
) -> Option<Arc<BackendState>> {
    match route.side(side) {
        [] => None,
        // One backend: nothing to compare, skip gathering the candidates.
        [only] => Some(only.clone()),
        backends => {
            let candidates: Vec<Candidate> =
                backends.iter().map(|b| b.candidate(now, tried)).collect();
            let index = pick(&candidates, &mut rand::rng())?;
            Some(backends[index].clone())
        }
    }
}

/// What a listener forwards to; replaced as a whole on reload so a connection sees one version.
#[derive(Debug, Default)]
pub(crate) struct Route {
    pub(crate) name: String,
    /// The "app/service" part of the name: the callee in the call graph.
    pub(crate) service: Arc<str>,
    pub(crate) protocol: Option<Protocol>,
    /// The service's own ready instances.
    pub(crate) backends: Vec<Arc<BackendState>>,
    /// Revisions running beside it.
    pub(crate) revisions: Vec<RevisionRoute>,
}

/// A revision of a listener's service and its ready instances.
#[derive(Debug)]
pub(crate) struct RevisionRoute {
    pub(crate) name: String,
    pub(crate) weight: u32,
    pub(crate) backends: Vec<Arc<BackendState>>,
}

impl Route {
    /// The backends of one side of the split.
    pub(crate) fn side(&self, side: Side) -> &[Arc<BackendState>] {
        match side {
            Side::Main => &self.backends,
            Side::Revision(i) => self.revisions.get(i).map_or(&[], |r| &r.backends),
        }
    }

    /// Every backend, the service's and its revisions'.
    pub(crate) fn all_backends(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.backends
            .iter()
            .chain(self.revisions.iter().flat_map(|r| &r.backends))
    }
}

/// A configured listener, bound or not, shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub(crate) bind: SocketAddr,
    pub(crate) counters: Counters,
    pub(crate) route: watch::Sender<Arc<Route>>,
    pub(crate) bound: std::sync::atomic::AtomicBool,
    pub(crate) retry_budget: Mutex<RetryBudget>,
    /// The weighted split between the service and its revisions.
    smooth: Mutex<SmoothWeighted>,
    /// Where requests waiting for a backend are announced (see [`crate::Waiting`]).
    waiting: broadcast::Sender<Waiting>,
}

impl ListenerState {
    #[cfg(test)]
    pub(crate) fn new(bind: SocketAddr, tuning: &Tuning) -> Self {
        Self::announcing(bind, tuning, broadcast::channel(1).0)
    }

    /// A listener that announces requests waiting for a backend on `waiting`.
    pub(crate) fn announcing(
        bind: SocketAddr,
        tuning: &Tuning,
        waiting: broadcast::Sender<Waiting>,
    ) -> Self {
        Self {
            waiting,
            retry_budget: Mutex::new(RetryBudget::new(
                tuning.retry_budget_percent,
                tuning.retry_budget_floor,
            )),
            bind,
            counters: Counters::default(),
            route: watch::Sender::new(Arc::new(Route::default())),
            bound: std::sync::atomic::AtomicBool::new(false),
            smooth: Mutex::new(SmoothWeighted::default()),
        }
    }

    /// Waits until `deadline` for the route to have a backend on the side a request goes to
    /// (`revision`: its `x-paracloud-revision` header; see [`crate::split`]), and returns that
    /// route and side; `None` when none appears in time. While it waits it announces so every
    /// second (the control plane starts an instance of a service scaled to zero), and a wait
    /// that ends with a backend counts as held (a cold start).
    pub(crate) async fn wait_for_backend(
        &self,
        routes: &mut watch::Receiver<Arc<Route>>,
        revision: Option<&str>,
        deadline: Instant,
    ) -> Option<(Arc<Route>, Side)> {
        let mut waiting_since: Option<Instant> = None;
        let mut announce_at = Instant::now();
        loop {
            let route = routes.borrow_and_update().clone();
            let side = self.choose_side(&route, revision);
            let now = Instant::now();
            if !route.side(side).is_empty() {
                if let Some(since) = waiting_since {
                    let waited = now.saturating_duration_since(since).as_micros() as u64;
                    self.counters.held(waited);
                }
                return Some((route, side));
            }
            waiting_since.get_or_insert(now);
            if now >= announce_at {
                self.announce(&route, side);
                announce_at = now + WAITING_ANNOUNCE_EVERY;
            }
            match timeout_at(deadline.min(announce_at), routes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return None,
                Err(_) if Instant::now() >= deadline => return None,
                Err(_) => continue,
            }
        }
    }

    fn announce(&self, route: &Route, side: Side) {
        let revision = match side {
            Side::Main => None,
            Side::Revision(i) => route.revisions.get(i).map(|r| r.name.clone()),
        };
        // Nobody listening is fine: a data plane may run without a control plane.
        let _ = self.waiting.send(Waiting {
            service: route.service.to_string(),
            revision,
            listener: route.name.clone(),
        });
    }

    fn choose_side(&self, route: &Route, revision: Option<&str>) -> Side {
        if route.revisions.is_empty() {
            return Side::Main;
        }
        let revisions: Vec<(&str, u32)> = route
            .revisions
            .iter()
            .map(|r| (r.name.as_str(), r.weight))
            .collect();
        let ready = |side: Side| !route.side(side).is_empty();
        match self.smooth.lock() {
            Ok(mut smooth) => split::choose(revision, &revisions, ready, &mut smooth),
            Err(_) => Side::Main,
        }
    }

    pub(crate) fn name(&self) -> String {
        self.route.borrow().name.clone()
    }

    /// Installs the listener's new name and backends, keeping the state (counters, recent
    /// failures) of backends whose id and address are unchanged.
    pub(crate) fn update(&self, listener: &Listener) {
        let old = self.route.borrow().clone();
        let keep = |backends: &[crate::Backend]| -> Vec<Arc<BackendState>> {
            backends
                .iter()
                .map(|b| {
                    match old
                        .all_backends()
                        .find(|o| o.id == b.id && o.addr == b.addr)
                    {
                        Some(existing) => {
                            existing.weight.store(b.weight, Ordering::Relaxed);
                            existing.clone()
                        }
                        None => Arc::new(BackendState::new(b.id.clone(), b.addr, b.weight)),
                    }
                })
                .collect()
        };
        let backends = keep(&listener.backends);
        let revisions = listener
            .revisions
            .iter()
            .map(|r| RevisionRoute {
                name: r.name.clone(),
                weight: r.weight,
                backends: keep(&r.backends),
            })
            .collect();
        self.route.send_replace(Arc::new(Route {
            name: listener.name.clone(),
            service: Arc::from(crate::calls::service_of(&listener.name)),
            protocol: Some(listener.protocol),
            backends,
            revisions,
        }));
    }

    pub(crate) fn snapshot(&self) -> ListenerSnapshot {
        let route = self.route.borrow().clone();
        let now = Instant::now();
        ListenerSnapshot {
            name: route.name.clone(),
            bind: self.bind,
            udp: route.protocol == Some(Protocol::Udp),
            bound: self.bound.load(Ordering::Relaxed),
            counters: self.counters.read(),
            latency: self.counters.latency(),
            last_second: self.counters.last_second(now),
            backends: route
                .all_backends()
                .map(|b| BackendSnapshot {
                    id: b.id.clone(),
                    addr: b.addr,
                    counters: b.counters.read(),
                    latency: b.counters.latency(),
                    last_second: b.counters.last_second(now),
                    ewma_ms: b.latency_us(now) as f64 / 1000.0,
                    ejected: b.failed_recently(now),
                    weight: b.weight.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// The buffer of each direction of a relayed connection: 32 KiB, so that a large answer crosses
/// in a few reads and writes rather than tokio's default 8 KiB at a time (a 100 KB file: 7,500
/// answers a second with 8 KiB, 10,800 with 32 KiB, 12,500 with 64 KiB, on two cores), at
/// 64 KiB per open connection, which idle database connections hold too.
const RELAY_BUFFER: usize = 32 * 1024;

/// Serves one accepted client connection to its end.
pub(crate) async fn serve(client: TcpStream, listener: &ListenerState, tuning: &Tuning) {
    let _active = listener.counters.open();
    let peer = client.peer_addr().ok();
    // As towards the backend: Nagle holds the last segment of an answer until the client's
    // delayed acknowledgement (up to 40 ms) when the relay writes it in pieces.
    let _ = client.set_nodelay(true);
    let Some((backend, upstream)) = connect(listener, tuning).await else {
        debug!(bind = %listener.bind, ?peer, "closing client: no backend could be reached");
        return;
    };
    let _backend_active = backend.counters.open();
    let mut client = Counted::new(client, |n| {
        Counters::add(&listener.counters.bytes_in, n);
        Counters::add(&backend.counters.bytes_in, n);
    });
    let mut upstream = Counted::new(upstream, |n| {
        Counters::add(&listener.counters.bytes_out, n);
        Counters::add(&backend.counters.bytes_out, n);
    });
    if let Err(error) = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    {
        debug!(bind = %listener.bind, backend = %backend.id, ?peer, %error, "connection ended with an error");
    }
}

/// Connects to a backend: waits for one to exist, then tries up to `tuning.tries` of them.
async fn connect(
    listener: &ListenerState,
    tuning: &Tuning,
) -> Option<(Arc<BackendState>, TcpStream)> {
    let mut routes = listener.route.subscribe();
    let wait_until = Instant::now() + tuning.backend_wait;
    let mut tried: Vec<Arc<BackendState>> = Vec::new();
    for _ in 0..tuning.tries {
        let Some((route, side)) = listener
            .wait_for_backend(&mut routes, None, wait_until)
            .await
        else {
            warn!(bind = %listener.bind, "no backend became ready in time; closing client");
            return None;
        };
        let backend = choose(&route, side, Instant::now(), &tried)?;
        let error = match timeout(tuning.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => {
                // Nagle only adds latency to a byte pipe; failure to disable it is harmless.
                let _ = stream.set_nodelay(true);
                Counters::add(&backend.counters.accepted, 1);
                return Some((backend, stream));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", tuning.connect_timeout),
        };
        warn!(listener = %route.name, backend = %backend.id, addr = %backend.addr, %error,
            "connect to backend failed; trying another");
        Counters::add(&backend.counters.failed_connects, 1);
        Counters::add(&listener.counters.failed_connects, 1);
        backend.mark_failed(Instant::now() + tuning.failure_hold);
        tried.push(backend);
    }
    None
}

/// A stream that reports every successful read to a callback, so counters move while data flows.
struct Counted<S, F> {
    inner: S,
    on_read: F,
}

impl<S, F> Counted<S, F> {
    fn new(inner: S, on_read: F) -> Self {
        Self { inner, on_read }
    }
}

impl<S: AsyncRead + Unpin, F: Fn(u64) + Unpin> AsyncRead for Counted<S, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            (this.on_read)((buf.filled().len() - before) as u64);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin, F: Unpin> AsyncWrite for Counted<S, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Backend;

    fn listener(backends: &[(&str, u16, u32)]) -> Listener {
        Listener {
            name: "test".into(),
            bind: "127.0.0.1:1".parse().unwrap(),
            protocol: crate::Protocol::Tcp,
            backends: backends
                .iter()
                .map(|&(id, port, weight)| Backend {
                    id: id.into(),
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    weight,
                })
                .collect(),
            revisions: Vec::new(),
        }
    }

    #[test]
    fn update_keeps_state_of_unchanged_backends() {
        let state = ListenerState::new("127.0.0.1:1".parse().unwrap(), &Tuning::default());
        state.update(&listener(&[("a.1", 10, 1), ("a.2", 11, 1)]));
        let first = state.route.borrow().backends[0].clone();
        Counters::add(&first.counters.accepted, 5);
        state.update(&listener(&[("a.1", 10, 3), ("a.3", 12, 1)]));
        let route = state.route.borrow().clone();
        assert!(Arc::ptr_eq(&route.backends[0], &first));
        assert_eq!(route.backends[0].weight.load(Ordering::Relaxed), 3);
        assert_eq!(route.backends[1].id, "a.3");
        assert_eq!(state.snapshot().backends[0].counters.accepted, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_backend_is_skipped_for_the_hold_time() {
        let backend = BackendState::new("a.1".into(), "127.0.0.1:1".parse().unwrap(), 1);
        let hold = Duration::from_secs(2);
        backend.mark_failed(Instant::now() + hold);
        assert!(!backend.candidate(Instant::now(), &[]).available);
        tokio::time::advance(hold).await;
        assert!(backend.candidate(Instant::now(), &[]).available);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gives_up_when_no_backend_appears() {
        let state = ListenerState::new("127.0.0.1:1".parse().unwrap(), &Tuning::default());
        let tuning = Tuning::default();
        let started = Instant::now();
        assert!(connect(&state, &tuning).await.is_none());
        assert_eq!(started.elapsed(), tuning.backend_wait);
    }
}
