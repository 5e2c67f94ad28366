//! UDP listeners: datagrams relayed per flow, a flow being a client's address and port.
//!
//! The listener's task reads every datagram of the listening socket. A client heard from for the
//! first time (or whose flow has ended) begins a flow: a task that picks a backend as a TCP
//! connection does (waiting for one to be ready, announced and counted as held, like a TCP
//! client), opens an upstream UDP socket connected to it, sends it the client's datagrams, and
//! sends its replies back to the client from the listening socket, so that they come from the
//! address the client sent to. The flow keeps its backend while the backend is in the route; its
//! next datagram after the backend left (or after the backend refused one: an ICMP error on the
//! connected socket) picks another. A flow with no datagram either way for [`Tuning::udp_idle`]
//! ends, as the kernel's connection tracking forgets a UDP stream.
//!
//! A listener keeps at most [`Tuning::udp_flows`] flows ([`FlowTable`]): a new flow beyond that
//! ends the flow whose client was heard from the longest ago, so that a burst of new clients
//! cannot lock out the next one (conntrack drops the oldest unreplied entry for the same reason).
//!
//! On reload a listener that stays keeps its flows, which follow the new route. A removed listener
//! ends its flows at once (they hold the socket, which must close). A drain stops reading the
//! socket (the data plane that replaces this one, reading the same socket, takes the new
//! datagrams and so the new flows), and the open flows relay the replies still coming until none
//! has come for [`Tuning::idle_grace`] (no more datagrams reach them to wait for), or the drain
//! ends.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

use crate::calls::CallGraph;
use crate::draining::until_draining;
use crate::forward::{choose, BackendState, ListenerState, Route};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::Tuning;

/// Datagrams of one flow waiting for its task; more are dropped, as a full socket buffer would.
const FLOW_QUEUE: usize = 64;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65535;

/// The flows of a listener by client address, with when each client was last heard from; at most
/// `limit` of them. Pure: the caller passes the time.
#[derive(Debug)]
pub(crate) struct FlowTable<T> {
    flows: HashMap<SocketAddr, (T, Instant)>,
    /// The same flows ordered by when they were last heard from, oldest first.
    by_age: BTreeSet<(Instant, SocketAddr)>,
    limit: usize,
}

impl<T> FlowTable<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            flows: HashMap::new(),
            by_age: BTreeSet::new(),
            limit: limit.max(1),
        }
    }

    /// The flow of `client`, marked as heard from at `now`.
    pub(crate) fn touch(&mut self, client: SocketAddr, now: Instant) -> Option<&T> {
        let (flow, heard) = self.flows.get_mut(&client)?;
        self.by_age.remove(&(*heard, client));
        *heard = now;
        self.by_age.insert((now, client));
        Some(flow)
    }

    /// Adds (or replaces) the flow of `client`, heard from at `now`. When the table is full, the
    /// flow heard from the longest ago makes room and is returned with its client.
    pub(crate) fn insert(
        &mut self,
        client: SocketAddr,
        flow: T,
        now: Instant,
    ) -> Option<(SocketAddr, T)> {
        self.remove(client);
        let evicted = if self.flows.len() >= self.limit {
            let oldest = self.by_age.iter().next().map(|&(_, c)| c);
            oldest.and_then(|c| self.remove(c).map(|flow| (c, flow)))
        } else {
            None
        };
        self.flows.insert(client, (flow, now));
        self.by_age.insert((now, client));
        evicted
    }

    pub(crate) fn remove(&mut self, client: SocketAddr) -> Option<T> {
        let (flow, heard) = self.flows.remove(&client)?;
        self.by_age.remove(&(heard, client));
        Some(flow)
    }

    /// Keeps only the flows for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let gone: Vec<SocketAddr> = self
            .flows
            .iter()
            .filter(|(_, (flow, _))| !keep(flow))
            .map(|(client, _)| *client)
            .collect();
        for client in gone {
            self.remove(client);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }
}

/// Binds a UDP listening socket that may precede its address (IP_FREEBIND, as for TCP).
pub(crate) fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Serves an inherited UDP socket.
pub(crate) fn adopt_socket(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Reads the listener's datagrams and hands each to its client's flow until `stop` fires or is
/// dropped (the listener is removed: its flows end) or a drain begins (the flows go on; see the
/// module's documentation).
pub(crate) async fn serve(
    socket: UdpSocket,
    state: Arc<ListenerState>,
    tuning: Tuning,
    mut stop: oneshot::Receiver<()>,
    shared: Shared,
    calls: Arc<CallGraph>,
) {
    let socket = Arc::new(socket);
    let mut flows: FlowTable<mpsc::Sender<Vec<u8>>> = FlowTable::new(tuning.udp_flows);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut draining = shared.draining.clone();
    // Ended flows (idle, or their backend gone for good) leave the table now and then.
    let mut sweep = tokio::time::interval(tuning.udp_idle);
    let drained = loop {
        let received = tokio::select! {
            _ = &mut stop => break false,
            () = until_draining(&mut draining) => break true,
            _ = sweep.tick() => {
                flows.retain(|flow| !flow.is_closed());
                continue;
            }
            received = socket.recv_from(&mut buf) => received,
        };
        let (n, client) = match received {
            Ok(received) => received,
            Err(error) => {
                warn!(bind = %state.bind, %error, "receiving a datagram failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let datagram = buf[..n].to_vec();
        let datagram = match flows.touch(client, now) {
            Some(flow) => match flow.try_send(datagram) {
                Ok(()) => continue,
                Err(TrySendError::Full(_)) => {
                    debug!(bind = %state.bind, %client, "flow's queue full; datagram dropped");
                    continue;
                }
                // The flow ended (idle): the datagram begins a new one.
                Err(TrySendError::Closed(datagram)) => datagram,
            },
            None => datagram,
        };
        let (sender, receiver) = mpsc::channel(FLOW_QUEUE);
        if let Some((evicted, _)) = flows.insert(client, sender, now) {
            debug!(bind = %state.bind, %evicted, flows = flows.len(), "too many flows; the one idle longest ends");
        }
        let service = state.route.borrow().service.clone();
        calls.count(client.ip(), &service, now);
        tokio::spawn(flow(
            Client {
                addr: client,
                socket: socket.clone(),
            },
            datagram,
            receiver,
            state.clone(),
            tuning,
            shared.clone(),
        ));
    };
    state
        .bound
        .store(false, std::sync::atomic::Ordering::Relaxed);
    if drained {
        // The flows keep relaying until they idle out; dropping the table would end them.
        drop((socket, shared));
        let _ = stop.await;
    }
}

/// Where a flow's replies go: its client, from the listening socket.
struct Client {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
}

/// A flow's backend and the socket connected to it; counts as an open flow of the backend.
struct Upstream {
    backend: Arc<BackendState>,
    socket: UdpSocket,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.backend
            .counters
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One flow, from its first datagram until idle for `tuning.udp_idle` (or its listener is
/// removed: `datagrams` closes). `shared` holds the drain open until it ends.
async fn flow(
    client: Client,
    first: Vec<u8>,
    mut datagrams: mpsc::Receiver<Vec<u8>>,
    state: Arc<ListenerState>,
    tuning: Tuning,
    shared: Shared,
) {
    let _active = state.counters.open();
    Counters::add(&state.counters.accepted, 1);
    let mut routes = state.route.subscribe();
    let mut upstream: Option<Upstream> = None;
    let mut next = Some(first);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut draining = shared.draining.clone();
    // How long the flow lives on after its last datagram either way.
    let mut idle = tuning.udp_idle;
    let mut last = Instant::now();
    loop {
        if let Some(datagram) = next.take() {
            let route = routes.borrow_and_update().clone();
            if upstream
                .as_ref()
                .is_some_and(|u| !serves(&route, &u.backend))
            {
                debug!(bind = %state.bind, client = %client.addr, "flow's backend left; picking another");
                upstream = None;
            }
            if upstream.is_none() {
                upstream = connect(&state, &tuning, &mut routes).await;
            }
            let Some(up) = &upstream else {
                debug!(bind = %state.bind, client = %client.addr, "no backend for the flow; datagram dropped");
                return;
            };
            match up.socket.send(&datagram).await {
                Ok(n) => {
                    for counters in [&state.counters, &up.backend.counters] {
                        Counters::add(&counters.datagrams_in, 1);
                        Counters::add(&counters.bytes_in, n as u64);
                    }
                }
                Err(error) => refused(&state, &tuning, &mut upstream, error),
            }
        }
        tokio::select! {
            received = datagrams.recv() => match received {
                Some(datagram) => {
                    next = Some(datagram);
                    last = Instant::now();
                }
                None => break,
            },
            () = until_draining(&mut draining), if idle > tuning.idle_grace => {
                idle = tuning.idle_grace;
            }
            reply = receive(upstream.as_ref(), &mut buf) => match reply {
                Ok(n) => {
                    last = Instant::now();
                    if let Err(error) = client.socket.send_to(&buf[..n], client.addr).await {
                        debug!(bind = %state.bind, client = %client.addr, %error, "reply not sent");
                        continue;
                    }
                    if let Some(up) = &upstream {
                        for counters in [&state.counters, &up.backend.counters] {
                            Counters::add(&counters.datagrams_out, 1);
                            Counters::add(&counters.bytes_out, n as u64);
                        }
                    }
                }
                Err(error) => refused(&state, &tuning, &mut upstream, error),
            },
            () = sleep_until(last + idle) => break,
        }
    }
    drop(shared);
}

/// Whether `backend` is still one of the route's.
fn serves(route: &Route, backend: &Arc<BackendState>) -> bool {
    route.all_backends().any(|b| Arc::ptr_eq(b, backend))
}

/// The backend refused a datagram (ICMP port unreachable, reported on the connected socket): it
/// is skipped for `tuning.failure_hold`, and the flow's next datagram picks again.
fn refused(
    state: &ListenerState,
    tuning: &Tuning,
    upstream: &mut Option<Upstream>,
    error: io::Error,
) {
    if let Some(up) = upstream.take() {
        debug!(bind = %state.bind, backend = %up.backend.id, %error, "backend refused a datagram");
        Counters::add(&up.backend.counters.failed_connects, 1);
        Counters::add(&state.counters.failed_connects, 1);
        up.backend.mark_failed(Instant::now() + tuning.failure_hold);
    }
}

/// The next reply on the flow's upstream socket; pending while it has none.
async fn receive(upstream: Option<&Upstream>, buf: &mut [u8]) -> io::Result<usize> {
    match upstream {
        Some(up) => up.socket.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// Picks a backend for a flow (waiting up to `tuning.backend_wait` for one to be ready) and
/// opens a socket connected to it.
async fn connect(
    state: &ListenerState,
    tuning: &Tuning,
    routes: &mut watch::Receiver<Arc<Route>>,
) -> Option<Upstream> {
    let wait_until = Instant::now() + tuning.backend_wait;
    let (route, side) = state.wait_for_backend(routes, None, wait_until).await?;
    let backend = choose(&route, side, Instant::now(), &[])?;
    let local: SocketAddr = match backend.addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = match UdpSocket::bind(local).await {
        Ok(socket) => socket,
        Err(error) => {
            warn!(bind = %state.bind, %error, "cannot open a UDP socket to a backend");
            return None;
        }
    };
    if let Err(error) = socket.connect(backend.addr).await {
        warn!(bind = %state.bind, backend = %backend.id, %error, "cannot address the backend");
        Counters::add(&backend.counters.failed_connects, 1);
        return None;
    }
    Counters::add(&backend.counters.accepted, 1);
    Counters::add(&backend.counters.active, 1);
    Some(Upstream { backend, socket })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn a_flow_is_found_by_its_client_address_and_port() {
        let mut table = FlowTable::new(4);
        let now = Instant::now();
        table.insert(client(1), "a", now);
        table.insert(client(2), "b", now);
        assert_eq!(table.touch(client(1), now), Some(&"a"));
        assert_eq!(table.touch(client(2), now), Some(&"b"));
        assert_eq!(table.touch(client(3), now), None);
        assert_eq!(table.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_ends_the_flow_heard_from_the_longest_ago() {
        let mut table = FlowTable::new(2);
        let start = Instant::now();
        table.insert(client(1), 1, start);
        table.insert(client(2), 2, start + Duration::from_secs(1));
        // Client 1 speaks again: client 2 is now the one heard from the longest ago.
        table.touch(client(1), start + Duration::from_secs(2));
        let evicted = table.insert(client(3), 3, start + Duration::from_secs(3));
        assert_eq!(evicted, Some((client(2), 2)));
        assert_eq!(table.len(), 2);
        assert!(table.touch(client(2), start).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn inserting_a_client_again_replaces_its_flow() {
        let mut table = FlowTable::new(1);
        let now = Instant::now();
        table.insert(client(1), "old", now);
        assert_eq!(table.insert(client(1), "new", now), None);
        assert_eq!(table.touch(client(1), now), Some(&"new"));
        table.retain(|flow| *flow != "new");
        assert_eq!(table.len(), 0);
    }
}
