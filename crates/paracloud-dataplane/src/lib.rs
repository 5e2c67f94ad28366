//! The data plane: HTTP, TCP and UDP load balancing from published ports and stable service addresses to ready instances.
//!
//! The control plane writes a [`Config`] with [`write_config`] and signals the data-plane process
//! (which runs [`run`]) with SIGHUP; the process diffs its listeners by bind address. A TCP
//! listener forwards each accepted connection to a backend picked by power of two choices
//! ([`pick`]); an HTTP listener serves HTTP/1.1 and HTTP/2 and picks a backend per request, over
//! pooled keep-alive connections. A UDP listener relays datagrams per flow (see the `udp` module:
//! a client's address and port keep the backend their first datagram picked until idle for
//! [`Tuning::udp_idle`]). HTTP/1.1 takes a fast path in the client connection's own task
//! (heads parsed with httparse, bodies relayed as raw bytes with their framing); HTTP/2, HTTP/1.0,
//! Upgrade and CONNECT go through hyper. Every backend is chosen by one function, which also
//! receives the request's `x-paracloud-revision` header for revisions served side by side. The
//! process is meant to run on a current-thread tokio runtime. Counters are read through [`Stats`] and, when asked, served on a
//! Unix socket (or, in a cluster, a TCP listener) as JSON (`GET /stats`) and Prometheus text
//! (`GET /metrics`).
//!
//! # Restarts without refused connections
//!
//! The process may inherit listening sockets ([`run`]'s `inherited`, fds passed by socket
//! activation): a configured listener whose `bind` equals an inherited socket's bound address
//! serves that socket instead of binding a new one, and inherited sockets no listener wants are
//! closed once the first configuration is applied. The daemon keeps a duplicate of every listening
//! socket and passes them to the data plane it starts after one died, so the sockets, and the
//! connections the kernel queued on them meanwhile, outlive any one data-plane process.
//!
//! # Planned replacement: draining
//!
//! For a planned restart the daemon starts the next data plane beside this one, on the same
//! inherited sockets, and once that one is ready (it fires [`run`]'s `ready`, which the process
//! passes on as `READY=1` to `NOTIFY_SOCKET`, systemd's readiness convention) sends this one
//! SIGTERM: it drains (see the `server` module): its copies of the listening sockets close,
//! HTTP connections end after their current request (`Connection: close`) or once idle for
//! [`Tuning::idle_grace`], TCP connections run to their end for at most [`Tuning::drain`], and
//! a second SIGTERM ends the drain at once.
//!
//! # Call graph
//!
//! Instances of one app call each other through the listeners on service addresses, so the client
//! address of a connection is, inside an app, an instance address. The data plane counts who
//! called which service: per HTTP request, or per TCP connection, it maps the client's IP address
//! to the service whose listeners list it as a backend address (the port is ignored; the service
//! is the "app/service" part of the listener name, see [`service_of`]) and counts the pair
//! (caller, callee), the callee being the service of the listener that received the call. A client
//! address that no configured backend has counts as [`EXTERNAL_CALLER`] (`"external"`): clients of
//! published ports, and instances not (yet) listed as backends, e.g. before they are ready or of
//! services no listener forwards to. The address table is rebuilt at each config load and reload.
//! The counts are [`Snapshot::calls`] ([`CallSnapshot`]: `from`, `to`, `requests`, `last_second`)
//! and, in Prometheus, `paracloud_calls_total{from="...",to="..."}`.

mod budget;
mod calls;
mod chunked;
mod draining;
mod file;
mod forward;
mod h1;
mod hop;
mod http;
pub mod idle;
mod inflight;
pub mod observe;
pub mod pick;
mod pool;
pub mod routes;
mod server;
mod shared;
pub mod split;
mod stats;
mod stats_server;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use calls::{service_of, EXTERNAL_CALLER};
pub use file::{load_config, write_config};
pub use server::{run, Dataplane, Stats, LISTEN_BACKLOG};
pub use split::REVISION_HEADER;
pub use stats::{
    bucket_bound_us, bucket_index, quantile_ms, BackendSnapshot, CallSnapshot, CounterValues,
    LastSecond, LatencySnapshot, ListenerSnapshot, Snapshot, LATENCY_BUCKETS,
};
pub use stats_server::{bind_stats_socket, serve_stats, serve_stats_tcp};

/// The whole configuration the control plane hands to the data-plane process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub listeners: Vec<Listener>,
}

/// One listening address and where its connections go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// For logs and metrics, e.g. "shop/web:8080 (published)".
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Ready instances of the service; empty while none is ready.
    pub backends: Vec<Backend>,
    /// Revisions of the service running beside it, which take a share of its requests by weight
    /// and the requests whose `x-paracloud-revision` header names them (see [`split`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Revision>,
}

/// A revision running beside a listener's service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// The name requests ask for in the `x-paracloud-revision` header, such as "canary".
    pub name: String,
    /// Percent of the requests not routed by header (0 to 100, all revisions together at most
    /// 100); the service itself gets the rest.
    pub weight: u32,
    /// Its ready instances.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Http,
    /// Datagrams relayed per flow (see the `udp` module).
    Udp,
}

/// What a listener is bound to: an address and whether for datagrams. A UDP and a TCP (or HTTP)
/// listener may share an address; listeners are told apart, diffed on reload and matched to
/// inherited sockets by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

impl Endpoint {
    pub fn addr(self) -> SocketAddr {
        match self {
            Endpoint::Tcp(addr) | Endpoint::Udp(addr) => addr,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Udp(addr) => write!(f, "{addr}/udp"),
        }
    }
}

impl Listener {
    /// The socket the listener is bound to.
    pub fn endpoint(&self) -> Endpoint {
        match self.protocol {
            Protocol::Udp => Endpoint::Udp(self.bind),
            Protocol::Tcp | Protocol::Http => Endpoint::Tcp(self.bind),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// Instance name, e.g. "web.2".
    pub id: String,
    pub addr: SocketAddr,
    /// Relative weight (1 by default).
    pub weight: u32,
}

/// A request (HTTP) or connection (TCP) waiting because its side of a listener has no ready
/// instance: announced on the stats socket's `GET /watch` stream, so that the control plane can
/// start an instance of a service scaled to zero.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Waiting {
    /// The service ("app/service", from the listener's name).
    pub service: String,
    /// The revision asked for by the `x-paracloud-revision` header, if that side is waiting.
    pub revision: Option<String>,
    /// The listener's name.
    pub listener: String,
}

/// One line of the `GET /watch` stream (newline-delimited JSON): a [`Waiting`] as soon as it
/// happens, and a [`Snapshot`] of every counter once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchEvent {
    Waiting(Waiting),
    Snapshot(Snapshot),
}

/// Timing and retry limits of the forwarder; [`Tuning::default`] is what [`run`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// How long one connect to a backend may take before the next backend is tried. Longer than
    /// the kernel's first SYN retransmission (one second after the SYN): a backend whose accept
    /// queue was full drops the SYN, and the one sent again must still find us waiting.
    pub connect_timeout: Duration,
    /// Connect attempts per client connection (TCP) or request (HTTP), each on a different
    /// backend while one is left.
    pub tries: u32,
    /// How long a backend that failed to connect is skipped (unless every backend is).
    pub failure_hold: Duration,
    /// Failed HTTP requests in a row after which a backend is ejected (passive health check).
    pub eject_after: u32,
    /// How long an ejected backend is skipped (unless every backend is).
    pub eject_for: Duration,
    /// Retries of idempotent HTTP requests may add this share (percent) of the requests of the
    /// last ten seconds...
    pub retry_budget_percent: u32,
    /// ...plus this many.
    pub retry_budget_floor: u32,
    /// How long a client (TCP) or request (HTTP) waits for a backend when the listener has none
    /// (one may be starting); an HTTP request then gets 503 with `Retry-After: 1`.
    pub backend_wait: Duration,
    /// How long open connections may go on once a drain begins (SIGTERM): HTTP connections
    /// close after their current request, TCP ones run to their end until then.
    pub drain: Duration,
    /// While draining, an HTTP keep-alive connection with no request under way is closed once it
    /// has been idle this long (one busy with requests answers its next one with
    /// `Connection: close` instead).
    pub idle_grace: Duration,
    /// A UDP flow with no datagram either way for this long ends (its backend is picked again by
    /// its next datagram); 30 s, as the kernel's connection tracking keeps a UDP stream.
    pub udp_idle: Duration,
    /// The most UDP flows a listener keeps; a new flow beyond it ends the flow idle the longest.
    pub udp_flows: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(1500),
            tries: 3,
            failure_hold: Duration::from_secs(2),
            eject_after: 5,
            eject_for: Duration::from_secs(5),
            retry_budget_percent: 20,
            retry_budget_floor: 10,
            backend_wait: Duration::from_secs(5),
            drain: Duration::from_secs(30),
            idle_grace: Duration::from_secs(1),
            udp_idle: Duration::from_secs(30),
            udp_flows: 65536,
        }
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read data-plane config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data-plane config {path} is not valid JSON for a Config ({source}); write it with write_config")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot install the data plane's signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("cannot listen on the stats socket {path}: {source}; check that its directory exists and is writable")]
    StatsSocket {
        path: PathBuf,
        source: std::io::Error,
    },
}
