//! The open-loop load generator: a trace replayed as Poisson arrivals against an HTTP URL. Each
//! request leaves at its scheduled time on a keep-alive connection of its own (an idle one, else
//! a new one), so no request waits for another in the generator; its latency runs from its
//! scheduled time to the end of its answer, so a generator that falls behind shows as latency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::latency::{Histogram, Second, SecondReport};
use paracloud_sim::Trace;

/// Where the requests go: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parses an `http://` URL whose host is an IP address or `localhost`.
    pub fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| {
            format!("--url {url} is not a URL: write it as http://127.0.0.1:8080/path")
        })?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url}: only http:// URLs are replayed (the generator speaks HTTP/1.1 without TLS)");
        }
        let authority = uri.authority().with_context(|| {
            format!("--url {url} names no host: write it as http://127.0.0.1:8080/path")
        })?;
        let host = match authority.host() {
            "localhost" => "127.0.0.1",
            host => host.trim_start_matches('[').trim_end_matches(']'),
        };
        let ip: std::net::IpAddr = host.parse().with_context(|| {
            format!("--url {url}: the host must be an IP address (or localhost), so that no lookup is timed")
        })?;
        Ok(Target {
            addr: SocketAddr::new(ip, authority.port_u16().unwrap_or(80)),
            authority: authority.to_string(),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub target: Target,
    /// The replay (already windowed, time-compressed and scaled): run time, requests.
    pub replay: Trace,
    pub seed: u64,
    pub slo_ms: f64,
    /// As a fraction: 0.95 for p95.
    pub slo_percentile: f64,
    /// A request without an answer by then failed.
    pub timeout: Duration,
    /// Open connections at most; a request that would need more fails (and says so).
    pub max_connections: usize,
}

/// What a run measured. Seconds are counted by the arrival (scheduled) second of requests.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub seconds: u64,
    pub requests: u64,
    pub answered: u64,
    /// Failed requests: refused, an error status, or no answer within the timeout.
    pub dropped: u64,
    /// Why requests failed, with how many.
    pub failures: BTreeMap<String, u64>,
    pub slo_ms: f64,
    pub slo_percentile: f64,
    /// Seconds whose SLO percentile, failures counted as infinitely slow, is above `slo_ms`.
    pub slo_violation_seconds: u64,
    pub seconds_with_arrivals: u64,
    /// Over every answered request (within 1%).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub connections_opened: u64,
    /// How late the generator sent requests after their scheduled time (it kept up when small).
    pub late_p99_ms: f64,
    pub late_max_ms: f64,
    pub timeline: Vec<SecondReport>,
}

/// What the request tasks share.
struct Shared {
    target: Target,
    start: Instant,
    timeout: Duration,
    slo: Duration,
    max_connections: usize,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    open: Arc<AtomicUsize>,
    opened: AtomicU64,
    seconds: Mutex<Vec<Second>>,
    failures: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only counters are behind these locks: a poisoned one still holds consistent numbers.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Replays `opts.replay` from `start` (an instant in the near future) and returns what it saw,
/// once every request has an answer or timed out.
pub async fn run(opts: &LoadOptions, start: Instant) -> Result<LoadReport> {
    let seconds = opts.replay.duration().as_secs_f64().ceil() as usize;
    let shared = Arc::new(Shared {
        target: opts.target.clone(),
        start,
        timeout: opts.timeout,
        slo: Duration::from_secs_f64(opts.slo_ms / 1000.0),
        max_connections: opts.max_connections,
        idle: Mutex::new(Vec::new()),
        open: Arc::new(AtomicUsize::new(0)),
        opened: AtomicU64::new(0),
        seconds: Mutex::new(vec![Second::default(); seconds.max(1)]),
        failures: Mutex::new(BTreeMap::new()),
    });
    let mut late = Histogram::default();
    let mut tasks = JoinSet::new();
    for (at_us, _size) in opts.replay.arrivals(opts.seed) {
        crate::check_interrupted()?;
        let when = start + Duration::from_micros(at_us);
        tokio::time::sleep_until(when).await;
        late.record(when.elapsed().as_micros() as u64);
        tasks.spawn(request(shared.clone(), when));
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}

    let seconds = std::mem::take(&mut *lock(&shared.seconds));
    let mut all = Histogram::default();
    let mut report = LoadReport {
        url: format!("http://{}{}", opts.target.authority, opts.target.path),
        seconds: seconds.len() as u64,
        requests: 0,
        answered: 0,
        dropped: 0,
        failures: lock(&shared.failures).clone(),
        slo_ms: opts.slo_ms,
        slo_percentile: opts.slo_percentile,
        slo_violation_seconds: 0,
        seconds_with_arrivals: 0,
        p50_ms: 0.0,
        p95_ms: 0.0,
        p99_ms: 0.0,
        mean_ms: 0.0,
        connections_opened: shared.opened.load(Ordering::Relaxed),
        late_p99_ms: late.quantile_ms(0.99),
        late_max_ms: late.quantile_ms(1.0),
        timeline: Vec::with_capacity(seconds.len()),
    };
    for (t, second) in seconds.iter().enumerate() {
        let row = second.report(t as u64, opts.slo_percentile);
        report.requests += second.arrivals;
        report.answered += row.answered;
        report.dropped += second.failed;
        report.slo_violation_seconds += u64::from(row.violation);
        report.seconds_with_arrivals += u64::from(second.arrivals > 0);
        all.merge(&second.answered);
        report.timeline.push(row);
    }
    report.p50_ms = all.quantile_ms(0.5);
    report.p95_ms = all.quantile_ms(0.95);
    report.p99_ms = all.quantile_ms(0.99);
    report.mean_ms = all.mean_ms();
    Ok(report)
}

/// One request scheduled at `when`: sent, answered (or not), recorded in its arrival second.
async fn request(shared: Arc<Shared>, when: Instant) {
    let deadline = when + shared.timeout;
    let outcome = match tokio::time::timeout_at(deadline, send(&shared)).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timeout".to_owned()),
    };
    let latency = when.elapsed();
    let index = when.saturating_duration_since(shared.start).as_secs() as usize;
    let mut seconds = lock(&shared.seconds);
    let last = seconds.len() - 1;
    let second = &mut seconds[index.min(last)];
    second.arrivals += 1;
    match outcome {
        Ok(()) => {
            second.answered.record(latency.as_micros() as u64);
            second.slow += u64::from(latency > shared.slo);
        }
        Err(why) => {
            second.failed += 1;
            drop(seconds);
            *lock(&shared.failures).entry(why).or_default() += 1;
        }
    }
}

/// Sends the request on an idle connection, else a new one; a pooled connection the server
/// closed meanwhile is replaced once. Fails with a short reason.
async fn send(shared: &Shared) -> Result<(), String> {
    for _ in 0..2 {
        let pooled = lock(&shared.idle).pop();
        let fresh = pooled.is_none();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => connect(shared).await?,
        };
        if sender.ready().await.is_err() {
            if fresh {
                return Err("connection closed".to_owned());
            }
            continue;
        }
        let request = Request::get(shared.target.path.as_str())
            .header(hyper::header::HOST, shared.target.authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            // A GET is safe to send again when a kept-alive connection was closed under it.
            Err(e) if !fresh && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                continue
            }
            Err(e) => return Err(format!("http: {e}")),
        };
        let status = response.status();
        if response.into_body().collect().await.is_err() {
            return Err("body cut short".to_owned());
        }
        if !sender.is_closed() {
            lock(&shared.idle).push(sender);
        }
        if status.is_success() || status.is_redirection() {
            return Ok(());
        }
        return Err(format!("status {}", status.as_u16()));
    }
    Err("connection closed".to_owned())
}

async fn connect(shared: &Shared) -> Result<SendRequest<Empty<Bytes>>, String> {
    if shared.open.load(Ordering::Relaxed) >= shared.max_connections {
        return Err("generator: --max-connections reached".to_owned());
    }
    let stream = TcpStream::connect(shared.target.addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    shared.open.fetch_add(1, Ordering::Relaxed);
    shared.opened.fetch_add(1, Ordering::Relaxed);
    let open = shared.open.clone();
    tokio::spawn(async move {
        let _ = connection.await;
        open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_an_http_url_with_an_ip() {
        let t = Target::parse("http://127.0.0.1:8080/?work=5").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/?work=5")
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        for (bad, why) in [
            ("https://127.0.0.1/", "only http://"),
            ("http://example.com/", "IP address"),
            ("not a url", "not a URL"),
        ] {
            let err = format!("{:#}", Target::parse(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// A server of our own on loopback, answering 200 after 5 ms (503 to `/fail`): the replay's
    /// requests all arrive, with their latency, and failures count as such.
    #[tokio::test]
    async fn a_replay_against_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: Request<_>| async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let status = if request.uri().path() == "/fail" {
                            503
                        } else {
                            200
                        };
                        hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let options = |path: &str| LoadOptions {
            target: Target::parse(&format!("http://{addr}{path}")).unwrap(),
            replay: Trace::Counts {
                bucket_us: 1_000_000,
                counts: vec![200.0, 0.0],
            },
            seed: 1,
            slo_ms: 1.0,
            slo_percentile: 0.95,
            timeout: Duration::from_secs(5),
            max_connections: 1000,
        };
        let report = run(&options("/"), Instant::now()).await.unwrap();
        assert!((120..280).contains(&report.requests), "{}", report.requests);
        assert_eq!(report.answered, report.requests);
        assert_eq!(report.dropped, 0);
        assert!(report.p50_ms >= 5.0, "{}", report.p50_ms);
        assert_eq!(report.seconds, 2);
        assert_eq!(
            report.slo_violation_seconds, 1,
            "5 ms is over a 1 ms SLO; the empty second is no violation"
        );
        assert!(report.connections_opened < report.requests, "kept alive");

        let failing = run(&options("/fail"), Instant::now()).await.unwrap();
        assert_eq!(failing.dropped, failing.requests);
        assert_eq!(failing.failures.get("status 503"), Some(&failing.requests));
        assert_eq!(failing.timeline[0].dropped, failing.requests);
    }
}
