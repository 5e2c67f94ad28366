//! The stats endpoint on a Unix socket: `GET /stats` (JSON snapshot) and `GET /metrics` (Prometheus text).

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::{Error, Stats};

/// Binds the stats socket at `path`, removing a stale socket file first. Must be called inside a
/// tokio runtime.
pub fn bind_stats_socket(path: &Path) -> Result<UnixListener, Error> {
    let fail = |source| Error::StatsSocket {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    UnixListener::bind(path).map_err(fail)
}

/// Answers stats requests on `socket` for ever (HTTP/1.1, one task per connection).
pub async fn serve_stats(socket: UnixListener, stats: Stats) {
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "stats socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&request, &stats);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "stats connection ended with an error");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => match serde_json::to_vec(&stats.snapshot()) {
            Ok(json) => (StatusCode::OK, "application/json", json),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode the snapshot: {error}\n").into_bytes(),
            ),
        },
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            stats.snapshot().to_prometheus().into_bytes(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"not found; try GET /stats or GET /metrics\n".to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
