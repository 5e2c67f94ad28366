//! The stats endpoint on a Unix socket: `GET /stats` (JSON snapshot), `GET /metrics` (Prometheus
//! text) and `GET /watch` (a stream of [`WatchEvent`]s: waiting requests at once, a snapshot each
//! second), which is how the control plane follows the data plane.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use paracloud_unix_http::Route;

use crate::routes::{GetStats, Metrics, Watch};
use crate::{Error, Stats, WatchEvent};

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
        match socket.accept().await {
            Ok((stream, _)) => serve_connection(stream, stats.clone()),
            Err(error) => {
                warn!(%error, "stats socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// As [`serve_stats`], on a TCP listener: where the data plane runs in a cluster, its follower
/// (the operator) reaches it over the network.
pub async fn serve_stats_tcp(socket: TcpListener, stats: Stats) {
    loop {
        match socket.accept().await {
            Ok((stream, _)) => serve_connection(stream, stats.clone()),
            Err(error) => {
                warn!(%error, "stats listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn serve_connection<S>(stream: S, stats: Stats)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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

type AnswerBody = UnsyncBoxBody<Bytes, Infallible>;

fn answer(request: &Request<Incoming>, stats: &Stats) -> Response<AnswerBody> {
    if is::<Watch>(request) {
        let mut response = Response::new(watch_stream(stats.clone()).boxed_unsync());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return response;
    }
    let (status, content_type, body) = if is::<GetStats>(request) {
        match serde_json::to_vec(&stats.snapshot()) {
            Ok(json) => (StatusCode::OK, "application/json", json),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode the snapshot: {error}\n").into_bytes(),
            ),
        }
    } else if is::<Metrics>(request) {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            stats.snapshot().to_prometheus().into_bytes(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!(
                "not found; try {} {}, {} {} or {} {}\n",
                GetStats::METHOD,
                GetStats::PATH,
                Metrics::METHOD,
                Metrics::PATH,
                Watch::METHOD,
                Watch::PATH
            )
            .into_bytes(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Whether `request` asks for route `R`.
fn is<R: Route>(request: &Request<Incoming>) -> bool {
    request.method() == R::METHOD && request.uri().path() == R::PATH
}

/// The body of `GET /watch`: one JSON line per [`WatchEvent`], until the reader goes away or the
/// data plane drains (its successor has the figures from then on).
fn watch_stream(stats: Stats) -> ChannelBody {
    let (lines, body) = mpsc::channel::<Bytes>(64);
    let mut waiting = stats.waiting();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let drained = stats.drained();
        tokio::pin!(drained);
        loop {
            let event = tokio::select! {
                () = &mut drained => break,
                received = waiting.recv() => match received {
                    Ok(w) => WatchEvent::Waiting(w),
                    // Missed announcements are repeated while their requests wait.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => WatchEvent::Snapshot(stats.snapshot()),
            };
            let Ok(mut line) = serde_json::to_vec(&event) else {
                continue;
            };
            line.push(b'\n');
            if lines.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
    });
    ChannelBody(body)
}

/// A response body fed line by line from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}
