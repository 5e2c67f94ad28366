//! The data-plane restart benchmark: the same keep-alive load through the data plane, once
//! steady and once while `paracloud dataplane restart` replaces it again and again; failed
//! requests and latency percentiles of both, and their ratio.
//!
//! Each client holds one HTTP/1.1 keep-alive connection and sends its requests back to back
//! (closed loop), as a client pool of a busy service does; after a response that says
//! `Connection: close` it opens a new connection, as HTTP clients do. Anything else (a refused
//! connect, a reset, a connection closed before or within a response, a status other than 200)
//! is a failed request. A request's latency runs from its write to the end of its response, and,
//! for the first request of a new connection, from the connect.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::scale::APP;

#[derive(Debug, Clone)]
pub struct RestartOptions {
    /// Keep-alive clients, one connection each.
    pub clients: usize,
    /// Length of each phase.
    pub duration: Duration,
    /// Time between two restarts in the restart phase.
    pub every: Duration,
    /// Host port the service is published on.
    pub port: u16,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub requests: u64,
    pub failed: u64,
    /// Connections the data plane ended with `Connection: close` (the client opened another).
    pub closed_by_server: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// What `paracloud dataplane restart` said, one line per restart.
    pub restarts: Vec<String>,
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RestartReport {
    pub clients: usize,
    pub duration_s: f64,
    pub every_s: f64,
    pub steady: Phase,
    pub restarting: Phase,
}

/// The service: an HTTP/1.1 keep-alive responder of the host's Python (Nagle off, so that a
/// response is not held back by delayed acknowledgements).
const RESPONDER: &str = r#"
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True
    def do_GET(self):
        body = b'ok\n'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.ThreadingHTTPServer(('0.0.0.0', 8000), Handler).serve_forever()
"#;

pub fn run(opts: &RestartOptions, scratch: &Path) -> Result<RestartReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    ensure!(
        paracloud.is_file(),
        "no paracloud binary beside the bench ({}): build the workspace",
        paracloud.display()
    );
    let dir = scratch.join("restart");
    std::fs::create_dir_all(&dir)?;
    let manifest = dir.join("paracloud.toml");
    std::fs::write(
        &manifest,
        format!(
            "app = \"{APP}\"\n[services.web]\nimage = \"host\"\n\
             command = [\"/usr/bin/python3\", \"-c\", {RESPONDER:?}]\n\
             ports = [{{ port = 8000, protocol = \"http\", publish = {} }}]\n\
             health = {{ tcp = 8000, interval = \"1s\" }}\nreplicas = 2\n",
            opts.port
        ),
    )?;
    let mut platform = Platform::start(&paracloud, &dir.join("root"), opts.subnet, "restart", APP)?;
    platform.up = true;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    // Warm up: the data plane's pooled connections to the instances, the instances' threads.
    phase(opts, "warm-up", Duration::from_secs(1), None)?;
    let steady = phase(opts, "steady", opts.duration, None)?;
    let restarting = phase(opts, "restarting", opts.duration, Some(&mut platform))?;
    Ok(RestartReport {
        clients: opts.clients,
        duration_s: opts.duration.as_secs_f64(),
        every_s: opts.every.as_secs_f64(),
        steady,
        restarting,
    })
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failed: u64,
    closed_by_server: u64,
    failures: Vec<String>,
}

/// Runs the load for `length`; with a platform, restarts its data plane every `opts.every`
/// meanwhile.
fn phase(
    opts: &RestartOptions,
    name: &str,
    length: Duration,
    platform: Option<&mut Platform>,
) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..opts.clients).map(|_| Arc::default()).collect();
    let clients: Vec<_> = tallies
        .iter()
        .map(|tally| {
            let (stop, tally, port) = (stop.clone(), tally.clone(), opts.port);
            std::thread::spawn(move || client(port, &stop, &tally))
        })
        .collect();
    let began = Instant::now();
    let mut restarts = Vec::new();
    if let Some(platform) = platform {
        let mut next = began + opts.every / 2;
        while next < began + length {
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let out = platform.cli(&["dataplane", "restart"], None)?;
            restarts.push(
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', "; "),
            );
            platform.current_dataplane()?;
            next += opts.every;
        }
    }
    if let Some(wait) = (began + length).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = began.elapsed();
    for client in clients {
        client
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))?;
    }
    let mut all = Tally::default();
    for tally in &tallies {
        let tally = std::mem::take(&mut *tally.lock().unwrap());
        all.latencies.extend(tally.latencies);
        all.failed += tally.failed;
        all.closed_by_server += tally.closed_by_server;
        all.failures.extend(tally.failures.into_iter().take(5));
    }
    all.latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        let n = all.latencies.len();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        ms(all.latencies[rank - 1])
    };
    let answered = all.latencies.len() as u64;
    Ok(Phase {
        name: name.to_string(),
        requests: answered + all.failed,
        failed: all.failed,
        closed_by_server: all.closed_by_server,
        requests_per_second: answered as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: all.latencies.last().map_or(0.0, |d| ms(*d)),
        restarts,
        failures: all.failures,
    })
}

/// One keep-alive client, until `stop`.
fn client(port: u16, stop: &AtomicBool, tally: &Mutex<Tally>) {
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut mine = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if connection.is_none() {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    connection = Some(BufReader::new(stream));
                }
                Err(e) => {
                    fail(&mut mine, format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let reader = connection.as_mut().expect("connected above");
        let answer = reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n")
            .context("write")
            .and_then(|()| response(reader));
        match answer {
            Ok((200, keep)) => {
                mine.latencies.push(started.elapsed());
                if !keep {
                    mine.closed_by_server += 1;
                    let mut rest = Vec::new();
                    if !matches!(reader.read_to_end(&mut rest), Ok(0)) {
                        fail(
                            &mut mine,
                            "bytes or an error after Connection: close".into(),
                        );
                    }
                    connection = None;
                }
            }
            Ok((status, _)) => {
                fail(&mut mine, format!("status {status}"));
                connection = None;
            }
            Err(e) => {
                fail(&mut mine, format!("{e:#}"));
                connection = None;
            }
        }
    }
    *tally.lock().unwrap() = mine;
}

fn fail(tally: &mut Tally, what: String) {
    tally.failed += 1;
    if tally.failures.len() < 5 {
        tally.failures.push(what);
    }
}

/// Reads one response with a Content-Length body: its status, and whether the connection stays.
fn response(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool)> {
    let mut line = String::new();
    ensure!(
        reader.read_line(&mut line)? > 0,
        "the connection closed before the response"
    );
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not a status line: {line:?}"))?;
    let (mut length, mut keep) = (0usize, true);
    loop {
        line.clear();
        ensure!(reader.read_line(&mut line)? > 0, "closed within the head");
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().context("content-length")?;
        } else if header.starts_with("connection:") && header.contains("close") {
            keep = false;
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .context("closed within the body")?;
    Ok((status, keep))
}

/// The report as markdown.
pub fn markdown(report: &RestartReport) -> String {
    let mut out = format!(
        "## Data-plane restart under keep-alive load\n\n{} keep-alive clients, back to back, \
         {:.0} s per phase; in the second, `paracloud dataplane restart` every {:.1} s.\n\n\
         | phase | requests | failed | closed by the server | requests/s | p50 ms | p99 ms | \
         p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n",
        report.clients, report.duration_s, report.every_s
    );
    for phase in [&report.steady, &report.restarting] {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} |\n",
            phase.name,
            phase.requests,
            phase.failed,
            phase.closed_by_server,
            phase.requests_per_second,
            phase.p50_ms,
            phase.p99_ms,
            phase.p999_ms,
            phase.max_ms
        ));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    out.push_str(&format!(
        "\nrestarting ÷ steady: p50 {:.2}, p99 {:.2}, p99.9 {:.2}; {} restarts:\n\n",
        ratio(report.restarting.p50_ms, report.steady.p50_ms),
        ratio(report.restarting.p99_ms, report.steady.p99_ms),
        ratio(report.restarting.p999_ms, report.steady.p999_ms),
        report.restarting.restarts.len()
    ));
    for line in &report.restarting.restarts {
        out.push_str(&format!("- {line}\n"));
    }
    for failure in report
        .steady
        .failures
        .iter()
        .chain(&report.restarting.failures)
    {
        out.push_str(&format!("- failed: {failure}\n"));
    }
    out
}
