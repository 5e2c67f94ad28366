//! Draining, as a planned replacement uses it: the listening sockets close at once, a kept-alive
//! HTTP connection gets `Connection: close` on its next response and ends after it, an idle one
//! ends after the idle grace, and the `GET /watch` streams end so that the control plane follows
//! the next data plane.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use paracloud_dataplane::{bind_stats_socket, serve_stats, Protocol, Tuning};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::Instant;

/// An HTTP/1.1 keep-alive backend answering `ok`.
async fn http_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn tuning() -> Tuning {
    Tuning {
        idle_grace: Duration::from_millis(300),
        ..Tuning::default()
    }
}

/// Sends one GET on a kept-alive connection and reads the response: (status, whether the server
/// said `connection: close`).
async fn get(client: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    client
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut line = String::new();
    if client.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (mut length, mut close) = (0, false);
    loop {
        line.clear();
        client.read_line(&mut line).await?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        if header.starts_with("connection:") && header.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0; length];
    client.read_exact(&mut body).await?;
    Ok((status, close))
}

async fn connect(bind: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(bind).await.unwrap())
}

/// Reads until the server closes; true for a clean close (end of stream, no reset).
async fn closed_cleanly(client: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn a_busy_connection_gets_connection_close_on_its_next_response_and_an_idle_one_closes_after_the_grace(
) {
    let backend = http_backend().await;
    let bind = free_addr();
    let mut dp = Harness::serving(
        vec![listener_of(bind, Protocol::Http, &[("b", backend)])],
        tuning(),
    )
    .await;
    let mut busy = connect(bind).await;
    let mut idle = connect(bind).await;
    assert_eq!(get(&mut busy).await.unwrap(), (200, false));
    assert_eq!(get(&mut idle).await.unwrap(), (200, false));

    let began = Instant::now();
    dp.shutdown.take().unwrap().send(()).unwrap();
    eventually("the listening socket closed", || async {
        TcpStream::connect(bind).await.is_err()
    })
    .await;
    // The busy client's next request is served, and told that the connection ends with it.
    assert_eq!(get(&mut busy).await.unwrap(), (200, true));
    assert!(closed_cleanly(&mut busy).await);
    // The idle one was left its grace, then closed without a reset.
    assert!(closed_cleanly(&mut idle).await);
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "closed {:?} after the drain began, before the idle grace",
        began.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), &mut dp.task)
        .await
        .expect("the drain ends with the last connection")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_request_under_way_when_the_drain_begins_is_answered() {
    // A backend slow to answer: the request is in flight when the drain begins.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("slow"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let bind = free_addr();
    let mut dp = Harness::serving(
        vec![listener_of(bind, Protocol::Http, &[("b", backend)])],
        tuning(),
    )
    .await;
    let mut client = connect(bind).await;
    let answer = tokio::spawn(async move {
        let answer = get(&mut client).await;
        (answer, closed_cleanly(&mut client).await)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    dp.shutdown.take().unwrap().send(()).unwrap();
    let (answer, closed) = answer.await.unwrap();
    assert_eq!(answer.unwrap(), (200, true));
    assert!(closed);
    tokio::time::timeout(Duration::from_secs(5), &mut dp.task)
        .await
        .expect("the drain ends with the last connection")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_drain_ends_the_watch_streams() {
    let dp = Harness::start(None, tuning());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.sock");
    tokio::spawn(serve_stats(
        bind_stats_socket(&path).unwrap(),
        dp.stats.clone(),
    ));
    let mut stream = UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /watch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let mut dp = dp;
    dp.shutdown.take().unwrap().send(()).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the stream ends with the drain")
        .unwrap();
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "the chunked body ends properly: {}",
        String::from_utf8_lossy(&rest)
    );
}
