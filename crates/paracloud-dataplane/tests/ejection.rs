//! Passive health checking under concurrent load: an instance that starts failing is ejected and
//! the clients never see it, their idempotent requests being retried on the others.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paracloud_dataplane::{Protocol, Tuning};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP backend answering its id, or, once `failing` is set, dropping every connection
/// without an answer (a crashed or wedged process behind a live socket).
async fn switchable_backend(
    id: &'static str,
    failing: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let failing = failing.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let failing = failing.load(Ordering::Relaxed);
                    if !failing {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    async move {
                        if failing {
                            Err("failing")
                        } else {
                            Ok(Response::new(Full::new(Bytes::from(id))))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_ejected_under_load_and_no_client_sees_it() {
    let healthy = Arc::new(AtomicBool::new(false));
    let failing = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let a = switchable_backend("a", healthy.clone(), counts[0].clone()).await;
    let b = switchable_backend("b", healthy.clone(), counts[1].clone()).await;
    let c = switchable_backend("c", failing.clone(), counts[2].clone()).await;
    let bind = free_addr();
    let tuning = Tuning {
        eject_for: Duration::from_secs(60),
        ..Tuning::default()
    };
    let harness = Harness::serving(
        vec![listener_of(
            bind,
            Protocol::Http,
            &[("api.1", a), ("api.2", b), ("api.3", c)],
        )],
        tuning,
    )
    .await;

    let clients = 8;
    let per_client = 300;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let stream = TcpStream::connect(bind).await.unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let mut failures = 0;
                for _ in 0..per_client {
                    let request = Request::get("/")
                        .header("host", "api")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    sender.ready().await.unwrap();
                    match sender.send_request(request).await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let _ = response.into_body().collect().await;
                        }
                        _ => failures += 1,
                    }
                }
                failures
            })
        })
        .collect();
    // Let the load settle on all three, then break one.
    eventually("api.3 serves", || async {
        counts[2].load(Ordering::Relaxed) > 50
    })
    .await;
    failing.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for task in tasks {
        failures += task.await.unwrap();
    }
    let snapshot = harness.stats.snapshot();
    let listener = snapshot.listener(bind).unwrap();
    let broken = listener.backend("api.3").unwrap();
    eprintln!(
        "{} requests, {failures} failed; api.3: {} errors before ejection, {} retries",
        clients * per_client,
        broken.counters.errors,
        listener.counters.retries
    );
    assert_eq!(failures, 0, "no client sees the failing instance");
    assert!(broken.ejected, "the failing instance is ejected");
    // Requests already on their way to it when it is ejected fail too (and are retried).
    let eject_after = u64::from(Tuning::default().eject_after);
    assert!(
        (eject_after..eject_after + clients as u64).contains(&broken.counters.errors),
        "ejected after eject_after failures in a row, then left alone: {} errors",
        broken.counters.errors
    );
    assert_eq!(listener.counters.requests, (clients * per_client) as u64);
    assert_eq!(
        listener.counters.responses_2xx,
        (clients * per_client) as u64
    );
    assert_eq!(
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>(),
        (clients * per_client) as u64,
        "every request was served once"
    );
    harness.stop().await;
}
