//! HTTP load balancing over real loopback sockets: per-request picking on kept-alive and HTTP/2
//! connections, retries, 503 when no backend appears, exact counters and the stats socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
mod common;

use common::*;
use paracloud_dataplane::{
    bind_stats_socket, serve_stats, Listener, Protocol, Revision, Snapshot, Tuning, WatchEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// An HTTP/1.1 backend answering every request with its id, and echoing the forwarding headers.
async fn http_backend(id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<Incoming>| async move {
                        let seen = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let response = Response::builder()
                            .header("x-backend", id)
                            .header("x-seen-for", seen("x-forwarded-for"))
                            .header("x-seen-proto", seen("x-forwarded-proto"))
                            .header("x-seen-host", seen("host"))
                            .body(Full::new(Bytes::from(id)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A backend that reads a request and closes the connection without answering.
async fn rude_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

fn http_listener(bind: SocketAddr, backends: &[(&str, SocketAddr)]) -> Listener {
    listener_of(bind, Protocol::Http, backends)
}

fn quick() -> Tuning {
    Tuning {
        backend_wait: Duration::from_millis(300),
        drain: Duration::from_millis(100),
        ..Tuning::default()
    }
}

/// One HTTP/1.1 client connection (kept alive across requests).
async fn http1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

fn request(method: &str, bind: SocketAddr, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/hello?x=1")
        .header("host", format!("app.test:{}", bind.port()))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kept_alive_connection_spreads_requests_and_counts_exactly() {
    let a = http_backend("a").await;
    let b = http_backend("b").await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("a", a), ("b", b)])], quick()).await;
    let mut client = http1_client(bind).await;
    let n = 100;
    let mut seen = std::collections::HashMap::<String, u64>::new();
    for _ in 0..n {
        let (status, headers, body) = send(&mut client, request("GET", bind, "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-seen-for"], "127.0.0.1");
        assert_eq!(headers["x-seen-proto"], "http");
        assert_eq!(
            headers["x-seen-host"].to_str().unwrap(),
            format!("app.test:{}", bind.port())
        );
        *seen
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_default() += 1;
    }
    // Both answer alike, so each gets a share; a scheduling stall on a busy machine can make one
    // look slow for a while (its share shrinks then, by design), so only "both" is asserted.
    assert!(
        seen.get("a").copied().unwrap_or(0) >= 1 && seen.get("b").copied().unwrap_or(0) >= 1,
        "per-request picking should use both backends: {seen:?}"
    );
    // The client may read the last answer before its relay counts the bytes it wrote.
    eventually("every response body counted", || {
        let counted = harness
            .stats
            .snapshot()
            .listener(bind)
            .map(|l| l.counters.bytes_out);
        std::future::ready(counted == Some(n))
    })
    .await;
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(listener.counters.accepted, 1, "one client connection");
    assert_eq!(listener.counters.requests, n);
    assert_eq!(listener.counters.responses_2xx, n);
    assert_eq!(listener.counters.errors, 0);
    assert_eq!(listener.latency.count, n);
    assert_eq!(listener.counters.bytes_out, n, "one body byte per response");
    for id in ["a", "b"] {
        let backend = listener.backend(id).unwrap();
        assert_eq!(backend.counters.requests, seen[id], "{id}");
        assert_eq!(backend.counters.responses_2xx, seen[id], "{id}");
        assert_eq!(backend.latency.count, seen[id], "{id}");
    }
    drop(client);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_served() {
    let a = http_backend("a").await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("a", a)])], quick()).await;
    let stream = TcpStream::connect(bind).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut answers = Vec::new();
    for _ in 0..10 {
        let request = Request::builder()
            .uri(format!("http://app.test:{}/h2", bind.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        answers.push(sender.send_request(request));
    }
    for answer in answers {
        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(
            response.headers()["x-seen-host"].to_str().unwrap(),
            format!("app.test:{}", bind.port())
        );
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "a"
        );
    }
    assert_eq!(
        harness
            .stats
            .snapshot()
            .listener(bind)
            .unwrap()
            .counters
            .requests,
        10
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_is_retried_on_another_backend() {
    let rude = rude_backend().await;
    let good = http_backend("good").await;
    let bind = free_addr();
    let harness = Harness::serving(
        vec![http_listener(bind, &[("rude", rude), ("good", good)])],
        quick(),
    )
    .await;
    let mut client = http1_client(bind).await;
    for _ in 0..20 {
        let (status, _, body) = send(&mut client, request("GET", bind, "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "good");
    }
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    let rude = listener.backend("rude").unwrap();
    assert!(rude.counters.errors > 0, "the rude backend was never tried");
    assert_eq!(listener.counters.retries, rude.counters.errors);
    assert_eq!(listener.counters.responses_2xx, 20);
    assert_eq!(listener.counters.errors, 0);
    assert_eq!(listener.backend("good").unwrap().counters.requests, 20);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_and_gets_502() {
    let rude = rude_backend().await;
    let good = http_backend("good").await;
    let bind = free_addr();
    let tuning = Tuning {
        // Keep the rude backend in play for every request.
        eject_after: u32::MAX,
        ..quick()
    };
    let harness = Harness::serving(
        vec![http_listener(bind, &[("rude", rude), ("good", good)])],
        tuning,
    )
    .await;
    let mut bad_gateways = 0;
    for _ in 0..20 {
        // A fresh connection each time: after a 502 the proxy may still keep the client's.
        let mut client = http1_client(bind).await;
        let (status, _, _) = send(&mut client, request("POST", bind, "order=1")).await;
        match status {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => bad_gateways += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert!(bad_gateways > 0, "the rude backend was never picked");
    assert_eq!(
        listener.backend("rude").unwrap().counters.requests,
        bad_gateways
    );
    assert_eq!(
        listener.backend("good").unwrap().counters.requests,
        20 - bad_gateways
    );
    assert_eq!(listener.counters.retries, 0);
    assert_eq!(listener.counters.responses_5xx, bad_gateways);
    assert_eq!(listener.counters.errors, bad_gateways);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_in_time_gets_503_with_retry_after() {
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[])], quick()).await;
    let mut client = http1_client(bind).await;
    let started = std::time::Instant::now();
    let (status, headers, _) = send(&mut client, request("GET", bind, "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(
        (
            listener.counters.requests,
            listener.counters.responses_5xx,
            listener.counters.errors
        ),
        (1, 1, 1)
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_even_for_a_post() {
    let dead = free_addr();
    let good = http_backend("good").await;
    let bind = free_addr();
    let harness = Harness::serving(
        vec![http_listener(bind, &[("dead", dead), ("good", good)])],
        quick(),
    )
    .await;
    let mut client = http1_client(bind).await;
    for _ in 0..10 {
        let (status, _, body) = send(&mut client, request("POST", bind, "x")).await;
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("good")));
    }
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(listener.counters.failed_connects, listener.counters.retries);
    harness.stop().await;
}

/// Sends one GET over the Unix socket and returns the status and body.
/// An HTTP/1.1 client connection from source address `ip` (any port).
async fn http1_client_from(
    ip: [u8; 4],
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_per_caller_service_and_unknown_callers_are_external() {
    let api = http_backend("api.1").await;
    let web_bind = free_addr();
    let api_bind = free_addr();
    let mut web = http_listener(web_bind, &[("web.1", "127.0.0.2:80".parse().unwrap())]);
    web.name = "app/web:80".into();
    let mut api_listener = http_listener(api_bind, &[("api.1", api)]);
    api_listener.name = "app/api:8000".into();
    let harness = Harness::serving(vec![web, api_listener], quick()).await;
    const N: u64 = 25;
    // Two kept-alive connections from web's instance address: every request counts.
    for _ in 0..2 {
        let mut client = http1_client_from([127, 0, 0, 2], api_bind).await;
        for _ in 0..N {
            let (status, _, _) = send(&mut client, request("GET", api_bind, "")).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let mut stranger = http1_client_from([127, 0, 0, 3], api_bind).await;
    for _ in 0..3 {
        send(&mut stranger, request("GET", api_bind, "")).await;
    }
    let snapshot = harness.stats.snapshot();
    assert_eq!(
        snapshot.call("app/web", "app/api").map(|c| c.requests),
        Some(2 * N),
        "{:?}",
        snapshot.calls
    );
    assert_eq!(
        snapshot.call("external", "app/api").map(|c| c.requests),
        Some(3)
    );
    assert_eq!(snapshot.calls.len(), 2, "{:?}", snapshot.calls);
    let text = snapshot.to_prometheus();
    assert!(
        text.contains(&format!(
            "paracloud_calls_total{{from=\"app/web\",to=\"app/api\"}} {}\n",
            2 * N
        )),
        "{text}"
    );
    harness.stop().await;
}

async fn unix_get(path: &PathBuf, uri: &str) -> (StatusCode, String) {
    let stream = UnixStream::connect(path).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(uri)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_are_served_on_the_unix_socket() {
    let a = http_backend("a").await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("a", a)])], quick()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("stats.sock");
    std::fs::write(&socket_path, "stale").unwrap();
    let server = tokio::spawn(serve_stats(
        bind_stats_socket(&socket_path).unwrap(),
        harness.stats.clone(),
    ));
    let mut client = http1_client(bind).await;
    let n = 37;
    for _ in 0..n {
        assert_eq!(
            send(&mut client, request("GET", bind, "")).await.0,
            StatusCode::OK
        );
    }
    let (status, json) = unix_get(&socket_path, "/stats").await;
    assert_eq!(status, StatusCode::OK);
    let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(listener.counters.requests, n);
    assert_eq!(listener.counters.responses_2xx, n);
    assert_eq!(listener.backend("a").unwrap().counters.requests, n);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let first = &value["listeners"][0];
    for key in [
        "requests",
        "responses_2xx",
        "responses_5xx",
        "in_flight",
        "errors",
        "bytes_in",
    ] {
        assert!(first[key].is_u64(), "{key} missing in {first}");
    }
    for key in ["requests", "errors", "p50_ms", "p95_ms", "p99_ms"] {
        assert!(
            !first["last_second"][key].is_null(),
            "last_second.{key} missing"
        );
    }
    let (status, metrics) = unix_get(&socket_path, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let name = format!("test/{bind}");
    assert!(
        metrics.contains(&format!(
            "paracloud_requests_total{{listener=\"{name}\"}} {n}\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "paracloud_requests_total{{listener=\"{name}\",backend=\"a\"}} {n}\n"
    )));
    assert!(metrics.contains(&format!(
        "paracloud_request_duration_seconds_count{{listener=\"{name}\"}} {n}\n"
    )));
    assert!(metrics.contains(&format!(
        "paracloud_bytes_total{{listener=\"{name}\",direction=\"out\"}} {n}\n"
    )));
    assert!(metrics.contains("# TYPE paracloud_in_flight gauge\n"));
    assert_eq!(
        unix_get(&socket_path, "/nothing").await.0,
        StatusCode::NOT_FOUND
    );
    server.abort();
    harness.stop().await;
}

/// A listener whose service has a canary revision taking `weight` percent and a `test` revision
/// reached only by header.
fn split_listener(
    bind: SocketAddr,
    main: &[(&str, SocketAddr)],
    canary: &[(&str, SocketAddr)],
    weight: u32,
    test: &[(&str, SocketAddr)],
) -> Listener {
    let revision = |name: &str, weight: u32, backends: &[(&str, SocketAddr)]| Revision {
        name: name.into(),
        weight,
        backends: listener_of(bind, Protocol::Http, backends).backends,
    };
    Listener {
        revisions: vec![
            revision("canary", weight, canary),
            revision("test", 0, test),
        ],
        ..http_listener(bind, main)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_exactly_and_the_header_picks_a_revision() {
    let (v1a, v1b) = (http_backend("v1").await, http_backend("v1").await);
    let v2 = http_backend("v2").await;
    let test = http_backend("test").await;
    let bind = free_addr();
    let listener = split_listener(
        bind,
        &[("api.1", v1a), ("api.2", v1b)],
        &[("api@canary.1", v2)],
        10,
        &[("api@test.1", test)],
    );
    let harness = Harness::serving(vec![listener], quick()).await;
    let mut client = http1_client(bind).await;
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..1000 {
        let (status, _, body) = send(&mut client, request("GET", bind, "")).await;
        assert_eq!(status, StatusCode::OK);
        *seen
            .entry(String::from_utf8(body.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        seen,
        [("v1".to_string(), 900), ("v2".to_string(), 100)].into(),
        "a 10% canary gets 100 of 1000 requests and the header-only revision none"
    );
    for (header, expected) in [("test", "test"), ("canary", "v2"), ("nope", "v1")] {
        for _ in 0..20 {
            let mut routed = request("GET", bind, "");
            routed.headers_mut().insert(
                paracloud_dataplane::REVISION_HEADER,
                header.parse().unwrap(),
            );
            let (status, _, body) = send(&mut client, routed).await;
            assert_eq!(status, StatusCode::OK);
            let body = String::from_utf8(body.to_vec()).unwrap();
            // An unknown revision name is an ordinary request: v1 or, by weight, v2.
            if header == "nope" {
                assert!(body == "v1" || body == "v2", "{body}");
            } else {
                assert_eq!(body, expected, "x-paracloud-revision: {header}");
            }
        }
    }
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    let test_backend = listener
        .backends
        .iter()
        .find(|b| b.id == "api@test.1")
        .unwrap();
    assert_eq!(
        test_backend.counters.requests, 20,
        "revision backends are counted"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_without_instances_leaves_its_share_to_the_others() {
    let v1 = http_backend("v1").await;
    let bind = free_addr();
    let harness = Harness::serving(
        vec![split_listener(bind, &[("api.1", v1)], &[], 50, &[])],
        quick(),
    )
    .await;
    let mut client = http1_client(bind).await;
    for _ in 0..50 {
        let (status, _, body) = send(&mut client, request("GET", bind, "")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
    }
    // Asked for by name, it is waited for like a service at zero, then 503.
    let mut routed = request("GET", bind, "");
    routed.headers_mut().insert(
        paracloud_dataplane::REVISION_HEADER,
        "canary".parse().unwrap(),
    );
    let (status, headers, _) = send(&mut client, routed).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_service_at_zero_is_announced_held_and_served_once_one_is_ready() {
    let bind = free_addr();
    let tuning = Tuning {
        backend_wait: Duration::from_secs(10),
        ..quick()
    };
    let harness = Harness::serving(vec![http_listener(bind, &[])], tuning).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("stats.sock");
    let server = tokio::spawn(serve_stats(
        bind_stats_socket(&socket_path).unwrap(),
        harness.stats.clone(),
    ));
    // Follow the stream the control plane follows.
    let stream = UnixStream::connect(&socket_path).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let watch = Request::builder()
        .uri("/watch")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut events = sender.send_request(watch).await.unwrap().into_body();

    let request = tokio::spawn(async move {
        let mut client = http1_client(bind).await;
        send(&mut client, request("GET", bind, "")).await
    });
    let mut seen = String::new();
    let waiting = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), events.frame())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        let line = seen
            .lines()
            .filter_map(|l| serde_json::from_str::<WatchEvent>(l).ok())
            .find_map(|e| match e {
                WatchEvent::Waiting(w) => Some(w),
                WatchEvent::Snapshot(_) => None,
            });
        if let Some(waiting) = line {
            break waiting;
        }
    };
    assert_eq!(waiting.listener, format!("test/{bind}"));
    assert_eq!(
        waiting.service,
        paracloud_dataplane::service_of(&waiting.listener)
    );
    assert_eq!(waiting.revision, None);
    assert!(!request.is_finished(), "the request is held");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = http_backend("a").await;
    harness.reconfigure(&paracloud_dataplane::Config {
        listeners: vec![http_listener(bind, &[("a", a)])],
    });
    let (status, _, body) = request.await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"a"[..]));
    let snapshot = harness.stats.snapshot();
    let counters = snapshot.listener(bind).unwrap().counters;
    assert_eq!(counters.held, 1);
    assert!(
        counters.held_max_us >= 200_000 && counters.held_us == counters.held_max_us,
        "the cold start is measured: {counters:?}"
    );
    let (_, metrics) = unix_get(&socket_path, "/metrics").await;
    assert!(
        metrics.contains("paracloud_held_total{listener="),
        "{metrics}"
    );
    server.abort();
    harness.stop().await;
}

/// A response body of unknown length: hyper sends it chunked.
struct Unsized(Option<Bytes>);

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .take()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }
}

/// An HTTP/1.1 backend echoing each request body in a chunked response, saying which of the
/// `x-secret` and `x-kept` headers it saw; counts the connections it accepted.
async fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<Incoming>| async move {
                        let has = |name: &str| request.headers().contains_key(name).to_string();
                        let seen = format!("secret={} kept={}", has("x-secret"), has("x-kept"));
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let response = Response::builder()
                            .header("x-seen", seen)
                            .body(Unsized(Some(body)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Writes `request` on a raw connection and reads until the data plane closes it.
async fn raw_exchange(bind: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(bind).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the data plane closes the connection")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_large_bodies_are_relayed_over_one_reused_backend_connection() {
    let (echo, accepted) = echo_backend().await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("e", echo)])], quick()).await;
    let mut client = http1_client(bind).await;
    // Chunked request bodies (hyper's client sends a body of unknown size chunked).
    let stream = TcpStream::connect(bind).await.unwrap();
    let (mut chunked, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "app.test")
            .body(Unsized(Some(Bytes::from_static(b"hello chunks"))))
            .unwrap();
        chunked.ready().await.unwrap();
        let response = chunked.send_request(request).await.unwrap();
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello chunks");
    }
    // Bodies larger than what is buffered for retries are streamed, both ways.
    let large: Bytes = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        let request = Request::builder()
            .method("PUT")
            .uri("/large")
            .header("host", "app.test")
            .body(Full::new(large.clone()))
            .unwrap();
        let (status, _, body) = send(&mut client, request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body == large, "the large body came back altered");
    }
    let payload = 3 * 12 + 2 * 1_000_000;
    // A request stops being in flight when its response body is dropped, which the data plane
    // does just after relaying the last byte, so both are waited for.
    eventually("every response body counted and finished", || {
        let counted = harness
            .stats
            .snapshot()
            .listener(bind)
            .map(|l| (l.counters.bytes_out, l.counters.in_flight));
        std::future::ready(counted == Some((payload, 0)))
    })
    .await;
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(listener.counters.requests, 5);
    assert_eq!(listener.counters.responses_2xx, 5);
    assert_eq!(listener.counters.bytes_in, payload);
    assert_eq!(listener.backend("e").unwrap().counters.bytes_out, payload);
    // Sequential requests, even over two client connections, share one backend connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured_and_headers_it_names_are_not_forwarded() {
    let (echo, _) = echo_backend().await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("e", echo)])], quick()).await;
    let answer = raw_exchange(
        bind,
        b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close, x-secret\r\nx-secret: 1\r\nx-kept: 2\r\nkeep-alive: timeout=5\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-seen: secret=false kept=true\r\n"),
        "{answer}"
    );
    assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("0\r\n\r\n"),
        "the chunked body ends: {answer}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let a = http_backend("a").await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("a", a)])], quick()).await;
    let answer = raw_exchange(
        bind,
        b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nPOST /2 HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(
        (listener.counters.requests, listener.counters.bytes_in),
        (3, 3)
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_http10_clients_are_served() {
    let a = http_backend("a").await;
    let bind = free_addr();
    let harness = Harness::serving(vec![http_listener(bind, &[("a", a)])], quick()).await;
    for bad in [
        &b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let answer = raw_exchange(bind, bad).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    }
    // HTTP/1.0 goes through hyper: the answer comes, then the connection closes.
    let answer = raw_exchange(bind, b"GET / HTTP/1.0\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\na"), "{answer}");
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    assert_eq!(
        (
            listener.counters.requests,
            listener.counters.responses_4xx,
            listener.counters.responses_2xx,
            listener.counters.errors
        ),
        (4, 3, 1, 3)
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_within_a_streamed_body_is_not_held_against_the_backend() {
    let (echo, _) = echo_backend().await;
    let bind = free_addr();
    let tuning = Tuning {
        eject_after: 1,
        ..quick()
    };
    let harness = Harness::serving(vec![http_listener(bind, &[("e", echo)])], tuning).await;
    let mut stream = TcpStream::connect(bind).await.unwrap();
    // A body far above what is buffered, of which only a part is sent.
    stream
        .write_all(b"PUT /big HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[7u8; 100_000]).await.unwrap();
    drop(stream);
    eventually("the request ends", || async {
        let snapshot = harness.stats.snapshot();
        let listener = snapshot.listener(bind).unwrap();
        listener.counters.in_flight == 0 && listener.counters.errors == 1
    })
    .await;
    let snapshot = harness.stats.snapshot();
    let backend = snapshot
        .listener(bind)
        .unwrap()
        .backend("e")
        .unwrap()
        .clone();
    assert_eq!((backend.counters.errors, backend.ejected), (0, false));
    assert_eq!(backend.counters.in_flight, 0);
    // The backend still serves.
    let mut client = http1_client(bind).await;
    let (status, _, body) = send(&mut client, request("POST", bind, "still here")).await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("still here")));
    harness.stop().await;
}
