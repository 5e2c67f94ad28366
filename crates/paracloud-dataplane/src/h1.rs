//! The HTTP/1.1 fast path: a client connection served in its own task, request heads and response heads parsed with httparse, bodies relayed as raw bytes, backends reached over pooled keep-alive connections.
//!
//! Per request: parse the head, count it, choose a backend ([`forward::choose`]), take an idle
//! connection to it from its pool (or connect), write the rewritten head (hop-by-hop headers
//! removed, `x-forwarded-for` appended, `x-forwarded-proto: http`) and the body, parse the
//! response head, relay the head and the body to the client, and give the connection back to the
//! pool when its response ended cleanly. No task, channel or header map sits in between.
//!
//! Bodies keep their framing: Content-Length bodies are relayed by count, chunked ones as the raw
//! chunked bytes while a [`ChunkedTracker`] finds where they end, others (responses only) until
//! the backend closes. Request bodies of at most [`BUFFER_BODY`] bytes whose end is at hand are
//! read whole before the request goes out, so that an idempotent request can be sent again on
//! another backend; larger bodies, and chunked ones not yet received in full, are streamed and
//! their requests are retried only when the connect failed (nothing was sent). A client that
//! leaves within a streamed body counts as an error of the listener, never of the backend.
//!
//! Once the data plane drains, the next response on a connection carries `connection: close` and
//! the connection ends after it; a connection waiting for its next request closes once it has been
//! idle for [`Tuning::idle_grace`].
//!
//! What this path does not serve is handed, with the bytes already read, to the hyper server of
//! [`crate::http`]: HTTP/2 (the connection starts with the HTTP/2 preface), HTTP/1.0 clients,
//! `Upgrade` and `CONNECT` requests, and request targets that are not a path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

use crate::calls::CallGraph;
use crate::chunked::ChunkedTracker;
use crate::draining::until_draining;
use crate::forward::{self, BackendState, ListenerState, Route};
use crate::hop::HOP_BY_HOP;
use crate::inflight::InFlight;
use crate::split::REVISION_HEADER;
use crate::stats::Counters;
use crate::Tuning;

/// Request bodies up to this size are read whole before forwarding, so their requests can be
/// retried; larger ones are streamed.
pub(crate) const BUFFER_BODY: u64 = 64 << 10;
/// The largest request or response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Headers per request or response at most.
const MAX_HEADERS: usize = 100;
/// Bytes read from a socket at once (at least).
const READ_SIZE: usize = 8 << 10;

/// The most of a response body read at once (a socket's default window): a 100 KB file
/// crosses in two reads rather than thirteen.
const BODY_READ_SIZE: usize = 64 << 10;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A read buffer: bytes from `pos` on are unread.
#[derive(Debug, Default)]
pub(crate) struct Buf {
    data: Vec<u8>,
    pos: usize,
}

impl Buf {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    fn len(&self) -> usize {
        self.data.len() - self.pos
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.data.len() {
            self.data.clear();
            self.pos = 0;
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.pos = 0;
    }

    /// Reads more bytes after the unread ones; 0 at end of stream.
    async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        self.fill_up_to(stream, READ_SIZE).await
    }

    /// As [`Buf::fill`], with room for `size` bytes at once (a large body's next piece).
    async fn fill_up_to(&mut self, stream: &mut TcpStream, size: usize) -> io::Result<usize> {
        if self.pos > 0 {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
        if self.data.capacity() - self.data.len() < size / 4 {
            self.data.reserve(size);
        }
        stream.read_buf(&mut self.data).await
    }

    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        self.data.drain(..self.pos);
        self.data
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (responses only).
    Close,
}

/// What the request head says, owned so the read buffer can move on.
#[derive(Debug)]
struct Head {
    len: usize,
    idempotent: bool,
    is_head: bool,
    body: Framing,
    keep_alive: bool,
    expect_continue: bool,
    revision: Option<Box<[u8]>>,
}

/// The outcome of parsing the bytes at the start of the client buffer.
#[derive(Debug)]
enum Parsed {
    Partial,
    Request(Head),
    /// Served by hyper instead (HTTP/1.0, Upgrade, CONNECT, a target that is not a path).
    Hyper,
    Bad,
}

/// What the connection does after a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    KeepAlive,
    Close,
    /// Hand the connection and the bytes read so far to hyper.
    Hyper,
}

/// Why an exchange with a backend failed.
struct Failure {
    connect: bool,
    error: io::Error,
}

/// Which side broke off sending a request.
enum SendError {
    Backend(io::Error),
    Client(io::Error),
}

/// One client connection on the fast path.
pub(crate) struct Conn {
    pub(crate) client: TcpStream,
    pub(crate) inbuf: Buf,
    upbuf: Buf,
    /// The request head (and buffered body) for the backend.
    out: Vec<u8>,
    /// The response head (and first body bytes) for the client.
    resp: Vec<u8>,
    peer: SocketAddr,
    peer_ip: Vec<u8>,
    listener: Arc<ListenerState>,
    routes: watch::Receiver<Arc<Route>>,
    calls: Arc<CallGraph>,
    /// Set once the data plane drains: the next response closes the connection, and an idle
    /// connection closes after `tuning.idle_grace`.
    draining: watch::Receiver<bool>,
    tuning: Tuning,
}

impl Conn {
    pub(crate) fn new(
        client: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerState>,
        calls: Arc<CallGraph>,
        draining: watch::Receiver<bool>,
        tuning: Tuning,
    ) -> Self {
        Self {
            client,
            inbuf: Buf::default(),
            upbuf: Buf::default(),
            out: Vec::new(),
            resp: Vec::new(),
            peer,
            peer_ip: peer.ip().to_canonical().to_string().into_bytes(),
            routes: listener.route.subscribe(),
            listener,
            calls,
            draining,
            tuning,
        }
    }

    fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Reads more of the client's bytes (0 at its end). While nothing of a next request has
    /// come (the connection is idle), a drain closes the connection once it has been idle for
    /// `tuning.idle_grace`: 0 then too. A client that sends a request at that very moment sees
    /// the connection closed without an answer, which HTTP clients retry on a new one for
    /// idempotent requests; the grace keeps that to connections idle a while.
    async fn fill_client(&mut self) -> io::Result<usize> {
        if self.inbuf.len() > 0 {
            return self.inbuf.fill(&mut self.client).await;
        }
        let idle_since = Instant::now();
        let grace = self.tuning.idle_grace;
        let mut draining = self.draining.clone();
        let closing = async move {
            until_draining(&mut draining).await;
            tokio::time::sleep_until(idle_since + grace).await;
        };
        tokio::select! {
            read = self.inbuf.fill(&mut self.client) => read,
            () = closing => {
                debug!(bind = %self.listener.bind, peer = %self.peer, "idle keep-alive connection closed by the drain");
                Ok(0)
            }
        }
    }

    /// Serves requests until the client leaves, or the connection is for hyper.
    pub(crate) async fn serve(&mut self) -> Next {
        match self.sniff().await {
            Ok(true) => return Next::Hyper,
            Ok(false) => {}
            Err(_) => return Next::Close,
        }
        loop {
            match self.request().await {
                Next::KeepAlive => {}
                other => return other,
            }
        }
    }

    /// Reads the first bytes; true when they are the HTTP/2 preface.
    async fn sniff(&mut self) -> io::Result<bool> {
        loop {
            let seen = self.inbuf.bytes();
            let n = seen.len().min(PREFACE.len());
            if seen[..n] != PREFACE[..n] {
                return Ok(false);
            }
            if n == PREFACE.len() {
                return Ok(true);
            }
            if self.fill_client().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Serves one request, reading its head first.
    async fn request(&mut self) -> Next {
        let head = loop {
            match parse_request(self.inbuf.bytes(), &self.peer_ip, &mut self.out) {
                Parsed::Request(head) => break head,
                Parsed::Hyper => return Next::Hyper,
                Parsed::Bad => {
                    let started = Instant::now();
                    self.listener.counters.request(started);
                    let _in_flight = self.in_flight();
                    self.own_response(started, 400, false).await;
                    return Next::Close;
                }
                Parsed::Partial if self.inbuf.len() > MAX_HEAD => {
                    let started = Instant::now();
                    self.listener.counters.request(started);
                    let _in_flight = self.in_flight();
                    self.own_response(started, 400, false).await;
                    return Next::Close;
                }
                Parsed::Partial => match self.fill_client().await {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                },
            }
        };
        self.inbuf.consume(head.len);
        let started = Instant::now();
        let listener = self.listener.clone();
        listener.counters.request(started);
        let mut in_flight = self.in_flight();
        let callee = self.routes.borrow().service.clone();
        self.calls.count(self.peer.ip(), &callee, started);
        if let Ok(mut budget) = listener.retry_budget.lock() {
            budget.deposit(started);
        }
        // Read a small body whole; `streamed` is true when the body is still to be relayed.
        let (buffered_len, streamed) = match self.buffer_body(&head).await {
            Ok(found) => found,
            Err(()) => {
                self.own_response(started, 400, false).await;
                return Next::Close;
            }
        };
        if let Some(n) = buffered_len {
            Counters::add(&listener.counters.bytes_in, n);
        }
        let wait_until = started + self.tuning.backend_wait;
        let mut tried: Vec<Arc<BackendState>> = Vec::new();
        let mut body_sent = false;
        for attempt in 1..=self.tuning.tries.max(1) {
            let revision = head
                .revision
                .as_deref()
                .and_then(|r| std::str::from_utf8(r).ok());
            let listener = self.listener.clone();
            let Some((route, side)) = listener
                .wait_for_backend(&mut self.routes, revision, wait_until)
                .await
            else {
                warn!(bind = %listener.bind, "no backend became ready in time; answering 503");
                let keep = head.keep_alive && !streamed && !self.draining();
                self.own_response(started, 503, keep).await;
                return if keep { Next::KeepAlive } else { Next::Close };
            };
            let now = Instant::now();
            let Some(backend) = forward::choose(&route, side, now, &tried) else {
                continue;
            };
            backend.counters.request(now);
            if let Some(n) = buffered_len {
                Counters::add(&backend.counters.bytes_in, n);
            }
            match self
                .exchange(
                    &backend,
                    &head,
                    streamed,
                    started,
                    &mut in_flight,
                    &mut body_sent,
                )
                .await
            {
                Ok(next) => return next,
                Err(failure) => {
                    let now = Instant::now();
                    backend.counters.request_done();
                    backend.counters.error(now);
                    backend.failed(now, &self.tuning);
                    let connect = failure.connect;
                    if connect {
                        Counters::add(&backend.counters.failed_connects, 1);
                        Counters::add(&listener.counters.failed_connects, 1);
                        backend.mark_failed(now + self.tuning.failure_hold);
                    }
                    let replayable = !body_sent;
                    let retry = attempt < self.tuning.tries
                        && replayable
                        && (connect
                            || (head.idempotent
                                && listener
                                    .retry_budget
                                    .lock()
                                    .is_ok_and(|mut budget| budget.withdraw(now))));
                    warn!(listener = %route.name, backend = %backend.id, addr = %backend.addr,
                        error = %failure.error, connect, retry, "request to backend failed");
                    if !retry {
                        break;
                    }
                    Counters::add(&listener.counters.retries, 1);
                    tried.push(backend);
                }
            }
        }
        let keep = head.keep_alive && !streamed && !self.draining();
        self.own_response(started, 502, keep).await;
        if keep {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            listener: self.listener.clone(),
            backend: None,
        }
    }

    /// Appends the request body to `out` when it is small and at hand (after answering
    /// `Expect: 100-continue`). Returns its payload size when buffered, and whether the body is
    /// instead still to be streamed; an error for a malformed or truncated body.
    async fn buffer_body(&mut self, head: &Head) -> Result<(Option<u64>, bool), ()> {
        let expect = |missing: bool| head.expect_continue && missing;
        match head.body {
            Framing::Empty | Framing::Close => Ok((Some(0), false)),
            Framing::Length(n) if n <= BUFFER_BODY => {
                let n = n as usize;
                if expect(self.inbuf.len() < n) {
                    self.client.write_all(CONTINUE).await.map_err(drop)?;
                }
                while self.inbuf.len() < n {
                    match self.inbuf.fill(&mut self.client).await {
                        Ok(0) | Err(_) => return Err(()),
                        Ok(_) => {}
                    }
                }
                self.out.extend_from_slice(&self.inbuf.bytes()[..n]);
                self.inbuf.consume(n);
                Ok((Some(n as u64), false))
            }
            Framing::Length(_) => {
                if expect(true) {
                    self.client.write_all(CONTINUE).await.map_err(drop)?;
                }
                Ok((None, true))
            }
            Framing::Chunked => {
                let mut tracker = ChunkedTracker::default();
                match tracker.feed(self.inbuf.bytes()) {
                    Ok(Some(end)) if end as u64 <= BUFFER_BODY => {
                        self.out.extend_from_slice(&self.inbuf.bytes()[..end]);
                        self.inbuf.consume(end);
                        Ok((Some(tracker.data_bytes()), false))
                    }
                    Ok(_) => {
                        if expect(true) {
                            self.client.write_all(CONTINUE).await.map_err(drop)?;
                        }
                        Ok((None, true))
                    }
                    Err(_) => Err(()),
                }
            }
        }
    }

    /// Sends the request to `backend` and relays its response. An error means no response head
    /// came back (nothing was sent to the client).
    async fn exchange(
        &mut self,
        backend: &Arc<BackendState>,
        head: &Head,
        streamed: bool,
        started: Instant,
        in_flight: &mut InFlight,
        body_sent: &mut bool,
    ) -> Result<Next, Failure> {
        let mut pooled = true;
        let (mut up, response, sent) = loop {
            let (mut up, reused) = match pooled.then(|| backend.idle.take(Instant::now())).flatten()
            {
                Some(up) => (up, true),
                None => (self.connect(backend.addr).await?, false),
            };
            // The backend's latency is measured from here: a connect is paid once per pooled
            // connection and would make a backend look slow for its first request.
            let sent = Instant::now();
            let result = match self.send(&mut up, head, streamed, backend, body_sent).await {
                Ok(()) => self.read_head(&mut up, head.is_head).await,
                Err(SendError::Backend(error)) => Err(error),
                Err(SendError::Client(error)) => {
                    // Not the backend's fault: no failure counted against it, nothing to answer.
                    debug!(bind = %self.listener.bind, %error, "client broke off within the request body");
                    self.listener.counters.error(Instant::now());
                    in_flight.backend = Some(backend.clone());
                    return Ok(Next::Close);
                }
            };
            match result {
                Ok(response) => break (up, response, sent),
                // A pooled connection the backend closed before our request reached it: send
                // the request again on a fresh one when doing so is harmless.
                Err(_) if reused && !*body_sent && head.idempotent && self.upbuf.len() == 0 => {
                    debug!(backend = %backend.id, "pooled connection was closed; reconnecting");
                    pooled = false;
                }
                Err(error) => {
                    return Err(Failure {
                        connect: false,
                        error,
                    })
                }
            }
        };
        let now = Instant::now();
        let micros = |since: Instant| now.saturating_duration_since(since).as_micros() as u64;
        backend
            .counters
            .response(now, response.status, micros(sent));
        backend.succeeded(now, micros(sent));
        self.listener
            .counters
            .response(now, response.status, micros(started));
        in_flight.backend = Some(backend.clone());
        self.upbuf.consume(response.len);
        // A drain closes the connection after this response, telling the client so.
        let keep = head.keep_alive && response.framing != Framing::Close && !self.draining();
        if !keep {
            self.resp.extend_from_slice(b"connection: close\r\n");
        }
        self.resp.extend_from_slice(b"\r\n");
        match self
            .relay_response(&mut up, response.framing, backend)
            .await
        {
            Ok(clean) => {
                if clean && response.reusable {
                    backend.idle.put(up, Instant::now());
                }
                Ok(if keep { Next::KeepAlive } else { Next::Close })
            }
            Err(error) => {
                debug!(bind = %self.listener.bind, backend = %backend.id, %error,
                    "response body not relayed to its end; closing the client connection");
                Ok(Next::Close)
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Failure> {
        let error = match timeout(self.tuning.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Nagle only adds latency to small requests; failure to disable it is harmless.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "no answer to connect in time"),
        };
        Err(Failure {
            connect: true,
            error,
        })
    }

    /// Writes the request head (with a buffered body) and relays a streamed body.
    async fn send(
        &mut self,
        up: &mut TcpStream,
        head: &Head,
        streamed: bool,
        backend: &BackendState,
        body_sent: &mut bool,
    ) -> Result<(), SendError> {
        up.write_all(&self.out).await.map_err(SendError::Backend)?;
        if !streamed {
            return Ok(());
        }
        *body_sent = true;
        let count = |n: u64| {
            Counters::add(&self.listener.counters.bytes_in, n);
            Counters::add(&backend.counters.bytes_in, n);
        };
        let mut left = match head.body {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut tracker = ChunkedTracker::default();
        loop {
            let bytes = self.inbuf.bytes();
            let (take, done, payload) = if head.body == Framing::Chunked {
                let before = tracker.data_bytes();
                let end = tracker
                    .feed(bytes)
                    .map_err(|e| SendError::Client(invalid(e)))?;
                let take = end.unwrap_or(bytes.len());
                (take, end.is_some(), tracker.data_bytes() - before)
            } else {
                let take = (bytes.len() as u64).min(left);
                left -= take;
                (take as usize, left == 0, take)
            };
            if take > 0 {
                up.write_all(&bytes[..take])
                    .await
                    .map_err(SendError::Backend)?;
            }
            self.inbuf.consume(take);
            count(payload);
            if done {
                return Ok(());
            }
            match self.inbuf.fill(&mut self.client).await {
                Ok(0) => {
                    return Err(SendError::Client(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection within the request body",
                    )))
                }
                Ok(_) => {}
                Err(error) => return Err(SendError::Client(error)),
            }
        }
    }

    /// Reads the response head into `upbuf`, skipping interim (1xx) responses; the head for the
    /// client is left in `resp`.
    async fn read_head(&mut self, up: &mut TcpStream, is_head: bool) -> io::Result<ResponseHead> {
        self.upbuf.clear();
        loop {
            match parse_response(self.upbuf.bytes(), is_head, &mut self.resp) {
                Ok(Some(response)) if response.status == 101 => {
                    return Err(invalid(
                        "101 Switching Protocols to a request without Upgrade",
                    ))
                }
                Ok(Some(response)) if response.status < 200 => self.upbuf.consume(response.len),
                Ok(Some(response)) => return Ok(response),
                Ok(None) if self.upbuf.len() > MAX_HEAD => {
                    return Err(invalid("response head too large"))
                }
                Ok(None) => {
                    if self.upbuf.fill(up).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed the connection before answering",
                        ));
                    }
                }
                Err(()) => return Err(invalid("invalid response head")),
            }
        }
    }

    /// Relays the response head in `resp` and the body. True when the body ended cleanly with
    /// nothing after it, so the backend connection can be reused.
    async fn relay_response(
        &mut self,
        up: &mut TcpStream,
        framing: Framing,
        backend: &BackendState,
    ) -> io::Result<bool> {
        let mut tracker = ChunkedTracker::default();
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        loop {
            let bytes = self.upbuf.bytes();
            let (take, done, payload) = match framing {
                Framing::Empty => (0, true, 0),
                Framing::Length(_) => {
                    let take = (bytes.len() as u64).min(left);
                    left -= take;
                    (take as usize, left == 0, take)
                }
                Framing::Chunked => {
                    let before = tracker.data_bytes();
                    let end = tracker.feed(bytes).map_err(invalid)?;
                    let take = end.unwrap_or(bytes.len());
                    (take, end.is_some(), tracker.data_bytes() - before)
                }
                Framing::Close => (bytes.len(), false, bytes.len() as u64),
            };
            if self.resp.is_empty() {
                if take > 0 {
                    self.client.write_all(&bytes[..take]).await?;
                }
            } else {
                // The head and the first body bytes in one write.
                self.resp.extend_from_slice(&bytes[..take]);
                self.client.write_all(&self.resp).await?;
                self.resp.clear();
            }
            self.upbuf.consume(take);
            Counters::add(&self.listener.counters.bytes_out, payload);
            Counters::add(&backend.counters.bytes_out, payload);
            if done {
                // Bytes after the response were never asked for: do not reuse the connection.
                let clean = self.upbuf.len() == 0;
                self.upbuf.clear();
                return Ok(clean);
            }
            // A large body is read in pieces of up to BODY_READ_SIZE: fewer reads and writes
            // for each of its bytes; a small one, and the head, in READ_SIZE.
            let piece = match framing {
                Framing::Length(_) => (left as usize).clamp(READ_SIZE, BODY_READ_SIZE),
                Framing::Chunked | Framing::Close => BODY_READ_SIZE,
                Framing::Empty => READ_SIZE,
            };
            if self.upbuf.fill_up_to(up, piece).await? == 0 {
                if framing == Framing::Close {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection within the response body",
                ));
            }
        }
    }

    /// An answer of the data plane itself (400, 502, 503), counted as a response and an error.
    async fn own_response(&mut self, started: Instant, status: u16, keep: bool) {
        let now = Instant::now();
        let micros = now.saturating_duration_since(started).as_micros() as u64;
        self.listener.counters.error(now);
        self.listener.counters.response(now, status, micros);
        let reason = match status {
            400 => "Bad Request",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "",
        };
        let text = format!("{status} {reason}\n");
        Counters::add(&self.listener.counters.bytes_out, text.len() as u64);
        let answer = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}{}\r\n{text}",
            text.len(),
            if status == 503 { "retry-after: 1\r\n" } else { "" },
            if keep { "" } else { "connection: close\r\n" },
        );
        if let Err(error) = self.client.write_all(answer.as_bytes()).await {
            debug!(bind = %self.listener.bind, %error, "cannot answer the client");
        }
    }
}

/// Parses the request head at the start of `buf` and writes the head for the backend into
/// `out`.
fn parse_request(buf: &[u8], peer_ip: &[u8], out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Parsed::Bad;
    };
    if version == 0 || method == "CONNECT" || !path.starts_with('/') {
        return Parsed::Hyper;
    }
    let headers = request.headers;
    let has_connection = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    let mut keep_alive = true;
    if has_connection && connection_names(headers, "close") {
        keep_alive = false;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut revision = None;
    let mut forwarded_for = false;
    for h in headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            return Parsed::Hyper;
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Parsed::Bad;
            }
            match parse_length(h.value) {
                Some(n) => length = Some(n),
                None => return Parsed::Bad,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding counts; it must be chunked in a request.
            chunked = last_coding_is_chunked(h.value);
            if !chunked {
                return Parsed::Bad;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(REVISION_HEADER) {
            revision = Some(Box::from(h.value));
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = true;
        }
    }
    if chunked && length.is_some() {
        return Parsed::Bad;
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers.iter() {
        if is_hop_by_hop(h.name)
            || h.name.eq_ignore_ascii_case("x-forwarded-for")
            || h.name.eq_ignore_ascii_case("x-forwarded-proto")
            || h.name.eq_ignore_ascii_case("expect")
            || (has_connection && is_named_by_connection(headers, h.name))
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer_ip);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
    let body = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    Parsed::Request(Head {
        len,
        idempotent: is_idempotent(method),
        is_head: method == "HEAD",
        body,
        keep_alive,
        expect_continue,
        revision,
    })
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a header describes one hop ([`HOP_BY_HOP`]); `transfer-encoding` is kept here, as
/// bodies are relayed with their framing unchanged.
fn is_hop_by_hop(name: &str) -> bool {
    !name.eq_ignore_ascii_case("transfer-encoding")
        && HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a `Connection` header names `name` (framing headers are never taken away).
fn is_named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    !name.eq_ignore_ascii_case("content-length")
        && !name.eq_ignore_ascii_case("transfer-encoding")
        && connection_names(headers, name)
}

/// Whether any `Connection` header lists `token`.
fn connection_names(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// What the response head says.
#[derive(Debug)]
struct ResponseHead {
    len: usize,
    status: u16,
    framing: Framing,
    reusable: bool,
}

/// Parses the response head at the start of `buf`; writes the head for the client into `out`
/// (without its final empty line, so the caller can add `connection: close`).
fn parse_response(
    buf: &[u8],
    request_is_head: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(());
    };
    let headers = response.headers;
    let has_connection = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    let mut reusable = version == 1 && !(has_connection && connection_names(headers, "close"));
    let mut length = None;
    let mut chunked = None;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Err(()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(last_coding_is_chunked(h.value));
        }
    }
    let framing = if request_is_head || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::Close {
        reusable = false;
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers.iter() {
        if is_hop_by_hop(h.name)
            || (chunked.is_some() && h.name.eq_ignore_ascii_case("content-length"))
            || (has_connection && is_named_by_connection(headers, h.name))
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        reusable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8]) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = parse_request(raw, b"10.0.0.9", &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_forwarded_head_drops_hop_by_hop_headers_and_appends_the_client() {
        let raw =
            b"GET /a?b=1 HTTP/1.1\r\nHost: shop.local\r\nConnection: keep-alive, X-Secret\r\n\
            Keep-Alive: timeout=5\r\nX-Secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n\
            X-Forwarded-Proto: https\r\nX-Paracloud-Revision: 7\r\nAccept: */*\r\n\r\nnext";
        let (parsed, out) = request(raw);
        let Parsed::Request(head) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.local\r\nX-Paracloud-Revision: 7\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert_eq!(head.revision.as_deref(), Some(&b"7"[..]));
        assert!(head.keep_alive && head.idempotent && !head.is_head);
        assert_eq!(head.body, Framing::Empty);
    }

    #[test]
    fn request_framing_is_read_strictly() {
        let framing = |raw: &[u8]| match request(raw).0 {
            Parsed::Request(head) => Some((head.body, head.keep_alive)),
            _ => None,
        };
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"),
            Some((Framing::Length(12), false))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Some((Framing::Chunked, true))
        );
        for bad in [
            &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(request(bad).0, Parsed::Bad), "{bad:?}");
        }
        for hyper in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(request(hyper).0, Parsed::Hyper), "{hyper:?}");
        }
        assert!(matches!(
            request(b"GET / HTTP/1.1\r\nhost").0,
            Parsed::Partial
        ));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let response = |raw: &[u8], head: bool| {
            let mut out = Vec::new();
            let parsed = parse_response(raw, head, &mut out).unwrap().unwrap();
            (
                parsed.framing,
                parsed.reusable,
                String::from_utf8(out).unwrap(),
            )
        };
        let (framing, reusable, out) = response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
            false,
        );
        assert_eq!((framing, reusable), (Framing::Chunked, true));
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n");
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).0,
            Framing::Empty
        );
        assert_eq!(
            response(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                false
            )
            .0,
            Framing::Empty
        );
        let (framing, reusable, _) = response(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::Close, false));
        let (framing, reusable, _) = response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
            false,
        );
        assert_eq!((framing, reusable), (Framing::Length(2), false));
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            false,
            &mut Vec::new()
        )
        .is_err());
    }
}
