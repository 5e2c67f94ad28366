//! One HTTP client connection: the HTTP/1.1 fast path of [`crate::h1`] first, hyper for the rest (HTTP/2, HTTP/1.0, Upgrade, CONNECT), each request forwarded to a backend picked per request over pooled keep-alive connections.
//!
//! The hyper path collects request bodies whole (up to [`MAX_REQUEST_BODY`]) so that a request
//! can be sent again on a retry, and reaches backends through hyper's pooled HTTP/1.1 client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::calls::CallGraph;
use crate::draining::until_draining;
use crate::forward::{self, BackendState, ListenerState};
use crate::h1;
use crate::hop::HOP_BY_HOP;
use crate::inflight::InFlight;
use crate::split::REVISION_HEADER;
use crate::stats::Counters;
use crate::Tuning;

/// The pooled HTTP/1.1 client to instances, shared by every HTTP listener (pooled per address).
pub(crate) type Upstream = Client<HttpConnector, Full<Bytes>>;

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Request bodies are read whole before forwarding, so a request can be sent again on a retry.
const MAX_REQUEST_BODY: usize = 16 << 20;

pub(crate) fn upstream(tuning: &Tuning) -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(tuning.connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// What every request of one client connection needs.
struct Ctx {
    listener: Arc<ListenerState>,
    upstream: Upstream,
    tuning: Tuning,
    peer: SocketAddr,
    calls: Arc<CallGraph>,
}

/// Serves one accepted client connection (HTTP/1.1 with keep-alive, or HTTP/2 with prior
/// knowledge) to its end; once `draining` is set, it ends after its current request (see
/// [`crate::server`]).
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerState>,
    upstream: Upstream,
    draining: watch::Receiver<bool>,
    calls: Arc<CallGraph>,
    tuning: Tuning,
) {
    let _active = listener.counters.open();
    // Nagle only adds latency to small responses; failure to disable it is harmless.
    let _ = client.set_nodelay(true);
    let mut conn = h1::Conn::new(
        client,
        peer,
        listener.clone(),
        calls.clone(),
        draining.clone(),
        tuning,
    );
    if conn.serve().await != h1::Next::Hyper {
        if *draining.borrow() {
            linger(conn.client).await;
        }
        return;
    }
    let client = Prefixed {
        prefix: conn.inbuf.into_vec(),
        pos: 0,
        inner: conn.client,
    };
    let ctx = Arc::new(Ctx {
        listener: listener.clone(),
        upstream,
        tuning,
        peer,
        calls,
    });
    let service = hyper::service::service_fn(move |request| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy(request, &ctx).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(client), service);
    tokio::pin!(connection);
    let mut draining = draining;
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        () = until_draining(&mut draining) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // HTTP/1: no next request, closed once idle; HTTP/2: GOAWAY, open streams finish.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        debug!(bind = %listener.bind, %peer, %error, "HTTP connection ended with an error");
    }
}

/// How long a connection closed by a drain still reads (and drops) what the client sends, so
/// that the kernel does not answer it with a reset that could destroy our last response before
/// the client read it.
const LINGER: Duration = Duration::from_secs(2);

/// Closes a client connection gracefully: our side first (FIN), then whatever the client still
/// sends is read and dropped until it closes too, for at most [`LINGER`].
async fn linger(mut client: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

async fn proxy(request: Request<Incoming>, ctx: &Ctx) -> Response<ProxyBody> {
    let started = Instant::now();
    let listener = &ctx.listener;
    listener.counters.request(started);
    let (callee, mut routes) = {
        let routes = listener.route.subscribe();
        let callee = routes.borrow().service.clone();
        (callee, routes)
    };
    ctx.calls.count(ctx.peer.ip(), &callee, started);
    let mut in_flight = InFlight {
        listener: listener.clone(),
        backend: None,
    };
    if let Ok(mut budget) = listener.retry_budget.lock() {
        budget.deposit(started);
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            debug!(bind = %listener.bind, %error, "cannot read the request body");
            return own_response(listener, started, StatusCode::BAD_REQUEST, false);
        }
    };
    Counters::add(&listener.counters.bytes_in, body.len() as u64);
    let headers = forwarded_headers(&parts.headers, parts.uri.authority(), Some(ctx.peer));
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let idempotent = is_idempotent(&parts.method);
    let wait_until = started + ctx.tuning.backend_wait;
    let mut tried: Vec<Arc<BackendState>> = Vec::new();
    let revision = parts
        .headers
        .get(REVISION_HEADER)
        .and_then(|v| v.to_str().ok());
    for attempt in 1..=ctx.tuning.tries.max(1) {
        let Some((route, side)) = listener
            .wait_for_backend(&mut routes, revision, wait_until)
            .await
        else {
            warn!(bind = %listener.bind, "no backend became ready in time; answering 503");
            return own_response(listener, started, StatusCode::SERVICE_UNAVAILABLE, true);
        };
        let now = Instant::now();
        let Some(backend) = forward::choose(&route, side, now, &tried) else {
            continue;
        };
        let Some(outbound) = outbound(&parts.method, &path, &headers, &body, backend.addr) else {
            return own_response(listener, started, StatusCode::BAD_REQUEST, false);
        };
        backend.counters.request(now);
        Counters::add(&backend.counters.bytes_in, body.len() as u64);
        let sent = Instant::now();
        match ctx.upstream.request(outbound).await {
            Ok(response) => {
                let now = Instant::now();
                let status = response.status().as_u16();
                let micros =
                    |since: Instant| now.saturating_duration_since(since).as_micros() as u64;
                backend.counters.response(now, status, micros(sent));
                backend.succeeded(now, micros(sent));
                listener.counters.response(now, status, micros(started));
                in_flight.backend = Some(backend.clone());
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = CountedBody {
                    inner: incoming,
                    listener: listener.clone(),
                    backend,
                    _in_flight: in_flight,
                };
                return Response::from_parts(parts, body.boxed_unsync());
            }
            Err(error) => {
                let now = Instant::now();
                backend.counters.request_done();
                backend.counters.error(now);
                backend.failed(now, &ctx.tuning);
                let connect = error.is_connect();
                if connect {
                    Counters::add(&backend.counters.failed_connects, 1);
                    Counters::add(&listener.counters.failed_connects, 1);
                    backend.mark_failed(now + ctx.tuning.failure_hold);
                }
                let retry = attempt < ctx.tuning.tries
                    && (connect
                        || (idempotent
                            && listener
                                .retry_budget
                                .lock()
                                .is_ok_and(|mut budget| budget.withdraw(now))));
                warn!(listener = %route.name, backend = %backend.id, addr = %backend.addr,
                    error = %error_chain(&error), connect, retry, "request to backend failed");
                if !retry {
                    break;
                }
                Counters::add(&listener.counters.retries, 1);
                tried.push(backend);
            }
        }
    }
    own_response(listener, started, StatusCode::BAD_GATEWAY, false)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An answer of the data plane itself (400, 502, 503), counted as a response and an error.
fn own_response(
    listener: &ListenerState,
    started: Instant,
    status: StatusCode,
    retry_after: bool,
) -> Response<ProxyBody> {
    let now = Instant::now();
    let micros = now.saturating_duration_since(started).as_micros() as u64;
    listener.counters.error(now);
    listener.counters.response(now, status.as_u16(), micros);
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    Counters::add(&listener.counters.bytes_out, text.len() as u64);
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in &named {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers sent to a backend: hop-by-hop ones removed, `host` kept (or taken from an HTTP/2
/// `:authority`), the client's address appended to `x-forwarded-for`, `x-forwarded-proto` set.
fn forwarded_headers(
    incoming: &HeaderMap,
    authority: Option<&hyper::http::uri::Authority>,
    peer: Option<SocketAddr>,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    if !headers.contains_key(header::HOST) {
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, value);
        }
    }
    if let Some(peer) = peer {
        let mut chain: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        chain.push(peer.ip().to_string());
        if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert("x-forwarded-for", value);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers
}

fn outbound(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    addr: SocketAddr,
) -> Option<Request<Full<Bytes>>> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .ok()?;
    let mut request = Request::new(Full::new(body.clone()));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers.clone();
    Some(request)
}

/// A client connection whose first bytes were already read (by the fast path), served again
/// from the start.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A backend's response body that counts the bytes it passes and holds the request in flight.
struct CountedBody {
    inner: Incoming,
    listener: Arc<ListenerState>,
    backend: Arc<BackendState>,
    _in_flight: InFlight,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                Counters::add(&this.listener.counters.bytes_out, n);
                Counters::add(&this.backend.counters.bytes_out, n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        incoming.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        incoming.insert("x-secret", HeaderValue::from_static("1"));
        incoming.insert("te", HeaderValue::from_static("trailers"));
        incoming.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        incoming.insert("accept", HeaderValue::from_static("*/*"));
        let authority: hyper::http::uri::Authority = "shop.local:8080".parse().unwrap();
        let peer: SocketAddr = "127.0.0.7:5000".parse().unwrap();
        let headers = forwarded_headers(&incoming, Some(&authority), Some(peer));
        for gone in ["connection", "keep-alive", "x-secret", "te"] {
            assert!(!headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(headers["accept"], "*/*");
        assert_eq!(headers["host"], "shop.local:8080");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn only_safe_or_idempotent_methods_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
