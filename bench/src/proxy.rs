//! `proxy`: wrk against one fast backend directly, through Paracloud's data plane, through
//! HAProxy and through nginx, in HTTP and in TCP mode, at several connection counts (issue 3).
//!
//! Every process runs in the foreground from config files the bench writes into its temp dir,
//! on loopback ports only, pinned with `taskset`: the proxies on CPU 0, wrk and the backend on
//! CPU 1. Everything started here is stopped by its pid when the [`Fleet`] is dropped.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::json;

/// Goal of issue 3: Paracloud at this many times the better peer's requests per second.
const GOAL_RATIO: f64 = 1.15;
/// Goals of issue 21, where every proxy comes close to the backend served directly: the data
/// plane's CPU per request at most this many times the better peer's...
const GOAL_CPU_RATIO: f64 = 0.8;
/// ... and its requests per second at least this share of the direct figure.
const GOAL_OF_DIRECT: f64 = 0.95;
/// The CPU of the proxies; wrk and the backend share the other one.
pub(crate) const PROXY_CPU: &str = "0";
pub(crate) const CLIENT_CPU: &str = "1";
pub(crate) const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub duration: u64,
    pub warmup: u64,
    pub connections: Vec<u32>,
    pub rounds: usize,
    pub port_base: u16,
    pub paracloud: Option<PathBuf>,
    /// The backend: the shop's `web` instance (one, on a daemon of the bench's own) instead of
    /// nginx's fixed answer, and the path wrk asks it for.
    pub shop: Option<ShopBackend>,
}

/// The shop's `web` tier as the backend: `path` is "/" for the page, which asks `api` and `kv`
/// behind it, or "/healthz" for web's own answer.
#[derive(Debug, Clone)]
pub struct ShopBackend {
    pub path: String,
    /// The address pool of the bench's daemon.
    pub subnet: ipnet::Ipv4Net,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Direct,
    Paracloud,
    Haproxy,
    Nginx,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct (no proxy)",
            Peer::Paracloud => "paracloud",
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        }
    }
}

/// One wrk run, as parsed from its output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors (connect + read + write + timeout) plus non-2xx/3xx answers.
    pub errors: u64,
    /// The proxy's on-CPU time over the measured run (schedstat, every thread) ÷ the requests
    /// wrk completed, in microseconds; none for the backend served directly.
    #[serde(default)]
    pub cpu_us_per_request: Option<f64>,
    /// The share of that CPU time spent in the kernel (`stime` over `utime + stime` of
    /// `/proc/PID/stat` over the run): what a proxy's own code cannot cut.
    #[serde(default)]
    pub kernel_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: Mode,
    pub peer: Peer,
    pub connections: u32,
    /// Every measured round, in order.
    pub samples: Vec<WrkResult>,
    /// Medians over the rounds (each figure on its own).
    pub median: Option<WrkResult>,
    /// Why there is no figure (the proxy did not start, wrk failed, ...).
    pub failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProxyReport {
    pub date: String,
    pub kernel: String,
    pub cores: usize,
    pub load_average: String,
    pub versions: Vec<(String, String)>,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub rounds: usize,
    pub rows: Vec<Row>,
    /// Targets left out, with the reason.
    pub skipped: Vec<String>,
    pub method: String,
}

/// A target wrk can hit: who serves it, in which mode, on which port, and the proxy's process.
#[derive(Debug, Clone, Copy)]
struct Target {
    peer: Peer,
    mode: Mode,
    addr: SocketAddr,
    pid: Option<i32>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The processes the bench started; stopped (SIGTERM, then SIGKILL) by pid on drop.
#[derive(Default)]
pub(crate) struct Fleet {
    children: Vec<(String, Child)>,
}

impl Fleet {
    pub(crate) fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> Result<()> {
        let out = fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// The pid of the process started as `name`.
    pub(crate) fn pid(&self, name: &str) -> Option<i32> {
        let (_, child) = self.children.iter().find(|(n, _)| n == name)?;
        i32::try_from(child.id()).ok()
    }

    /// Fails with the log's tail when `name` has exited already.
    pub(crate) fn check_alive(&mut self, name: &str, log: &Path) -> Result<()> {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            if let Some(status) = child.try_wait()? {
                let text = fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                bail!(
                    "{name} exited ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!("proxy: {name} did not stop on SIGTERM, killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

pub(crate) fn pinned(cpu: &str, program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, program]);
    cmd
}

/// Ports: base = backend, +1/+2/+3 = Paracloud/HAProxy/nginx in HTTP, +4/+5/+6 the same in TCP.
fn port_of(base: u16, peer: Peer, mode: Mode) -> u16 {
    let offset = match (peer, mode) {
        (Peer::Direct, _) => 0,
        (Peer::Paracloud, Mode::Http) => 1,
        (Peer::Haproxy, Mode::Http) => 2,
        (Peer::Nginx, Mode::Http) => 3,
        (Peer::Paracloud, Mode::Tcp) => 4,
        (Peer::Haproxy, Mode::Tcp) => 5,
        (Peer::Nginx, Mode::Tcp) => 6,
    };
    base + offset
}

fn nginx_temp_paths(dir: &Path) -> String {
    [
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    ]
    .iter()
    .map(|d| format!("    {d} {};\n", dir.join(d).display()))
    .collect()
}

pub fn backend_nginx_conf(dir: &Path, port: u16) -> String {
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {dir}/backend.pid;\nerror_log {dir}/backend.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n    keepalive_timeout 300s;\n\
         {temps}    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n\
         location / {{ default_type text/plain; return 200 \"ok\"; }}\n    }}\n}}\n",
        dir = dir.display(),
        temps = nginx_temp_paths(&dir.join("backend")),
    )
}

pub fn proxy_nginx_conf(
    dir: &Path,
    backend: SocketAddr,
    http_port: u16,
    stream_port: Option<u16>,
) -> String {
    let mut conf = String::new();
    if stream_port.is_some() {
        let _ = writeln!(conf, "load_module {NGINX_STREAM_MODULE};");
    }
    let _ = write!(
        conf,
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/nginx.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n    keepalive_timeout 300s;\n\
         {temps}    upstream backend {{\n        server {backend};\n        keepalive 64;\n\
         keepalive_requests 1000000;\n        keepalive_timeout 300s;\n    }}\n\
         server {{\n        listen 127.0.0.1:{http_port} backlog=4096;\n        location / {{\n\
         proxy_pass http://backend;\n            proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n",
        dir = dir.display(),
        temps = nginx_temp_paths(&dir.join("nginx")),
    );
    if let Some(port) = stream_port {
        let _ = write!(
            conf,
            "stream {{\n    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n\
             proxy_pass {backend};\n    }}\n}}\n"
        );
    }
    conf
}

pub fn haproxy_conf(backend: SocketAddr, http_port: u16, tcp_port: u16) -> String {
    format!(
        "global\n    nbthread 1\n    maxconn 4096\n\n\
         defaults\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\
         timeout http-keep-alive 300s\n\n\
         frontend fe_http\n    mode http\n    bind 127.0.0.1:{http_port}\n    option http-keep-alive\n\
         default_backend be_http\n\n\
         backend be_http\n    mode http\n    http-reuse always\n    option http-keep-alive\n\
         server s1 {backend}\n\n\
         frontend fe_tcp\n    mode tcp\n    bind 127.0.0.1:{tcp_port}\n    default_backend be_tcp\n\n\
         backend be_tcp\n    mode tcp\n    server s1 {backend}\n"
    )
}

/// The data plane's configuration (`paracloud_dataplane::Config` as JSON): one HTTP and one TCP
/// listener, both to the backend.
pub fn dataplane_config(backend: SocketAddr, http_port: u16, tcp_port: u16) -> serde_json::Value {
    let backends = json!([{ "id": "backend.1", "addr": backend.to_string(), "weight": 1 }]);
    json!({
        "listeners": [
            { "name": "bench/http", "bind": format!("127.0.0.1:{http_port}"),
              "protocol": "http", "backends": backends },
            { "name": "bench/tcp", "bind": format!("127.0.0.1:{tcp_port}"),
              "protocol": "tcp", "backends": backends },
        ]
    })
}

/// Waits until `addr` answers `GET /healthz` (nginx's backend: any path) with 200 and a body
/// that ends in "ok".
fn wait_ok(addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match get_once(addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{addr} did not answer 200 \"ok\" within {limit:?}: {last}")
}

fn get_once(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    if !text.starts_with("HTTP/1.1 200") || !text.trim_end().ends_with("ok") {
        bail!(
            "unexpected answer: {:?}",
            text.chars().take(80).collect::<String>()
        );
    }
    Ok(())
}

/// Parses a wrk latency figure ("812.00us", "1.23ms", "2.01s") into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Requests/sec, the 50% and 99% lines of `--latency`, the request count and the errors.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = 0;
    let mut errors = 0;
    for line in out.lines() {
        let line = line.trim();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if fields.len() == 2 && fields[0] == "50%" {
            p50 = parse_duration_ms(fields[1]);
        } else if fields.len() == 2 && fields[0] == "99%" {
            p99 = parse_duration_ms(fields[1]);
        } else if fields.len() > 2 && fields[1] == "requests" && fields[2] == "in" {
            requests = fields[0].parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    match (rps, p50, p99) {
        (Some(requests_per_sec), Some(p50_ms), Some(p99_ms)) => Ok(WrkResult {
            requests_per_sec,
            p50_ms,
            p99_ms,
            requests,
            errors,
            cpu_us_per_request: None,
            kernel_share: None,
        }),
        _ => bail!("cannot read wrk's output: {out}"),
    }
}

pub(crate) fn run_wrk(
    addr: SocketAddr,
    path: &str,
    connections: u32,
    seconds: u64,
) -> Result<WrkResult> {
    let out = pinned(CLIENT_CPU, "wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}{path}"),
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_result(samples: &[WrkResult]) -> Option<WrkResult> {
    if samples.is_empty() {
        return None;
    }
    let m = |f: fn(&WrkResult) -> f64| median(samples.iter().map(f).collect());
    Some(WrkResult {
        requests_per_sec: m(|r| r.requests_per_sec),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        requests: m(|r| r.requests as f64) as u64,
        errors: samples.iter().map(|r| r.errors).sum(),
        cpu_us_per_request: median_of_some(samples.iter().map(|r| r.cpu_us_per_request)),
        kernel_share: median_of_some(samples.iter().map(|r| r.kernel_share)),
    })
}

/// The median of the figures that are there; none when none is.
fn median_of_some(figures: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let there: Vec<f64> = figures.flatten().collect();
    (!there.is_empty()).then(|| median(there))
}

/// The kernel's share of the CPU time between two `(user, system)` tick readings; none when
/// no tick passed.
pub fn kernel_share(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let user = after.0.saturating_sub(before.0);
    let system = after.1.saturating_sub(before.1);
    (user + system > 0).then(|| system as f64 / (user + system) as f64)
}

/// Microseconds of CPU per request: `cpu_ns` over `requests`; none without a request.
pub fn cpu_us_per_request(cpu_ns: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_ns as f64 / 1000.0 / requests as f64)
}

fn paracloud_binary(opts: &ProxyOptions) -> Result<PathBuf> {
    let path = match &opts.paracloud {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("paracloud"),
    };
    if !path.is_file() {
        bail!(
            "no paracloud binary at {} (build the workspace, or pass --paracloud)",
            path.display()
        );
    }
    Ok(path)
}

pub fn run(opts: &ProxyOptions, scratch: &Path) -> Result<ProxyReport> {
    let dir = scratch.join("proxy");
    for sub in ["backend", "nginx"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let mut versions = vec![];
    for (name, args) in [
        ("wrk", &["-v"][..]),
        ("nginx", &["-v"][..]),
        ("haproxy", &["-v"][..]),
        ("taskset", &["--version"][..]),
    ] {
        let out = Command::new(name)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {name}: apt-get install {name}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        versions.push((
            name.to_string(),
            text.lines().next().unwrap_or_default().trim().to_string(),
        ));
    }
    for port in 0..=6 {
        let addr = SocketAddr::from(([127, 0, 0, 1], opts.port_base + port));
        if crate::probe::is_listening(addr) {
            bail!("{addr} is in use already: pick another --proxy-port-base");
        }
    }

    let base = opts.port_base;
    let mut fleet = Fleet::default();
    let mut skipped = vec![];
    // The backend: the shop's web instance, or nginx, one process; either on the client's CPU.
    let (backend, path, _shop) = match &opts.shop {
        Some(shop) => {
            let (platform, web) = start_shop(opts, shop, scratch)?;
            (web, shop.path.as_str(), Some(platform))
        }
        None => {
            let conf = dir.join("backend.conf");
            fs::write(&conf, backend_nginx_conf(&dir, base))?;
            let log = dir.join("backend.log");
            spawn_nginx(
                &mut fleet,
                "backend nginx",
                CLIENT_CPU,
                &dir,
                "backend",
                &conf,
                &log,
            )?;
            wait_ok(loopback(base), Duration::from_secs(5))
                .and_then(|()| fleet.check_alive("backend nginx", &log))
                .context("the backend did not start")?;
            (loopback(base), "/", None)
        }
    };
    let mut targets = vec![Target {
        peer: Peer::Direct,
        mode: Mode::Http,
        addr: backend,
        pid: None,
    }];

    // Paracloud's data plane: one process, both listeners; tokio sizes its worker pool from the
    // CPU affinity (1), and TOKIO_WORKER_THREADS says so explicitly.
    let http_p = port_of(base, Peer::Paracloud, Mode::Http);
    let tcp_p = port_of(base, Peer::Paracloud, Mode::Tcp);
    let started = (|| -> Result<()> {
        let bin = paracloud_binary(opts)?;
        let conf = dir.join("dataplane.json");
        fs::write(
            &conf,
            serde_json::to_vec_pretty(&dataplane_config(backend, http_p, tcp_p))?,
        )?;
        let log = dir.join("dataplane.log");
        fleet.spawn(
            "paracloud data plane",
            pinned(PROXY_CPU, &bin.to_string_lossy())
                .arg("__dataplane")
                .arg("--config")
                .arg(&conf)
                .env("TOKIO_WORKER_THREADS", "1")
                .env("RUST_LOG", "warn"),
            &log,
        )?;
        wait_ok(loopback(http_p), Duration::from_secs(5))?;
        wait_ok(loopback(tcp_p), Duration::from_secs(5))?;
        fleet.check_alive("paracloud data plane", &log)
    })();
    match started {
        Ok(()) => targets.extend([
            Target {
                peer: Peer::Paracloud,
                mode: Mode::Http,
                addr: loopback(http_p),
                pid: fleet.pid("paracloud data plane"),
            },
            Target {
                peer: Peer::Paracloud,
                mode: Mode::Tcp,
                addr: loopback(tcp_p),
                pid: fleet.pid("paracloud data plane"),
            },
        ]),
        Err(e) => skipped.push(format!("paracloud: {e:#}")),
    }

    // HAProxy.
    let http_p = port_of(base, Peer::Haproxy, Mode::Http);
    let tcp_p = port_of(base, Peer::Haproxy, Mode::Tcp);
    let started = (|| -> Result<()> {
        let conf = dir.join("haproxy.cfg");
        fs::write(&conf, haproxy_conf(backend, http_p, tcp_p))?;
        let log = dir.join("haproxy.log");
        fleet.spawn(
            "haproxy",
            pinned(PROXY_CPU, "haproxy").arg("-db").arg("-f").arg(&conf),
            &log,
        )?;
        wait_ok(loopback(http_p), Duration::from_secs(5))?;
        wait_ok(loopback(tcp_p), Duration::from_secs(5))?;
        fleet.check_alive("haproxy", &log)
    })();
    match started {
        Ok(()) => targets.extend([
            Target {
                peer: Peer::Haproxy,
                mode: Mode::Http,
                addr: loopback(http_p),
                pid: fleet.pid("haproxy"),
            },
            Target {
                peer: Peer::Haproxy,
                mode: Mode::Tcp,
                addr: loopback(tcp_p),
                pid: fleet.pid("haproxy"),
            },
        ]),
        Err(e) => skipped.push(format!("haproxy: {e:#}")),
    }

    // nginx as reverse proxy (and `stream` for TCP when the module is installed).
    let http_p = port_of(base, Peer::Nginx, Mode::Http);
    let stream_p = Path::new(NGINX_STREAM_MODULE)
        .is_file()
        .then(|| port_of(base, Peer::Nginx, Mode::Tcp));
    if stream_p.is_none() {
        skipped.push(format!(
            "nginx tcp: no stream module at {NGINX_STREAM_MODULE} (apt-get install libnginx-mod-stream)"
        ));
    }
    let started = (|| -> Result<()> {
        let conf = dir.join("nginx.conf");
        fs::write(&conf, proxy_nginx_conf(&dir, backend, http_p, stream_p))?;
        let log = dir.join("nginx.log");
        spawn_nginx(&mut fleet, "nginx", PROXY_CPU, &dir, "nginx", &conf, &log)?;
        wait_ok(loopback(http_p), Duration::from_secs(5))?;
        if let Some(p) = stream_p {
            wait_ok(loopback(p), Duration::from_secs(5))?;
        }
        fleet.check_alive("nginx", &log)
    })();
    match started {
        Ok(()) => {
            targets.push(Target {
                peer: Peer::Nginx,
                mode: Mode::Http,
                addr: loopback(http_p),
                pid: fleet.pid("nginx"),
            });
            if let Some(port) = stream_p {
                targets.push(Target {
                    peer: Peer::Nginx,
                    mode: Mode::Tcp,
                    addr: loopback(port),
                    pid: fleet.pid("nginx"),
                });
            }
        }
        Err(e) => skipped.push(format!("nginx: {e:#}")),
    }
    for s in &skipped {
        eprintln!("proxy: skipped {s}");
    }

    // Order of a round: direct, then HTTP and TCP targets; the first rotates from round to round.
    targets.sort_by_key(|t| (t.mode == Mode::Tcp, t.peer as u8));
    let mut rows: Vec<Row> = vec![];
    for &connections in &opts.connections {
        for t in &targets {
            rows.push(Row {
                mode: t.mode,
                peer: t.peer,
                connections,
                samples: vec![],
                median: None,
                failure: None,
            });
        }
        for round in 0..opts.rounds {
            for i in 0..targets.len() {
                crate::check_interrupted()?;
                let t = targets[(i + round) % targets.len()];
                let row = rows
                    .iter_mut()
                    .find(|r| r.connections == connections && r.mode == t.mode && r.peer == t.peer)
                    .expect("a row per target");
                if row.failure.is_some() {
                    continue;
                }
                eprintln!(
                    "proxy: {} {} at {connections} connections (round {}/{}) ...",
                    t.peer.name(),
                    t.mode.name(),
                    round + 1,
                    opts.rounds
                );
                let result = (|| {
                    if opts.warmup > 0 {
                        run_wrk(t.addr, path, connections, opts.warmup)?;
                    }
                    let before = t.pid.and_then(crate::host::cpu_time_ns);
                    let split_before = t.pid.and_then(crate::host::cpu_split_ticks);
                    let mut result = run_wrk(t.addr, path, connections, opts.duration)?;
                    let after = t.pid.and_then(crate::host::cpu_time_ns);
                    let split_after = t.pid.and_then(crate::host::cpu_split_ticks);
                    result.cpu_us_per_request = before.zip(after).and_then(|(b, a)| {
                        cpu_us_per_request(a.saturating_sub(b), result.requests)
                    });
                    result.kernel_share = split_before
                        .zip(split_after)
                        .and_then(|(b, a)| kernel_share(b, a));
                    Ok::<_, anyhow::Error>(result)
                })();
                match result {
                    Ok(r) => row.samples.push(r),
                    Err(e) => row.failure = Some(format!("{e:#}")),
                }
            }
        }
    }
    for row in &mut rows {
        row.median = median_result(&row.samples);
    }
    drop(fleet);
    drop(_shop);

    Ok(ProxyReport {
        date: crate::host::utc_date(),
        kernel: crate::host::kernel(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: crate::host::load_average(),
        versions,
        duration_s: opts.duration,
        warmup_s: opts.warmup,
        rounds: opts.rounds,
        rows,
        skipped,
        method: match &opts.shop {
            Some(shop) => format!("{}{METHOD}", shop_backend(&shop.path)),
            None => format!("{NGINX_BACKEND}{METHOD}"),
        },
    })
}

/// The shop on a daemon of the bench's own, with one `web` instance; returns the daemon and
/// that instance's address. The shop's processes and the daemon's data plane (which carries
/// web's calls to api and api's to kv) are moved to the client's CPU, so that the proxy under
/// test has the other one to itself.
fn start_shop(
    opts: &ProxyOptions,
    shop: &ShopBackend,
    scratch: &Path,
) -> Result<(crate::platform::Platform, SocketAddr)> {
    if let Some(clash) = crate::host::route_overlapping(shop.subnet)? {
        bail!(
            "--shop-subnet {} overlaps the host route {clash}: pick another",
            shop.subnet
        );
    }
    let paracloud = paracloud_binary(opts)?;
    let bin_dir = paracloud
        .parent()
        .context("the paracloud binary has no directory")?
        .to_path_buf();
    for program in ["shop-web", "shop-api", "shop-kv"] {
        ensure!(
            bin_dir.join(program).is_file(),
            "{program} is not beside {}: cargo build --release --workspace",
            paracloud.display()
        );
    }
    let mut platform = crate::platform::Platform::start(
        &paracloud,
        &scratch.join("shop-root"),
        shop.subnet,
        "proxy",
        SHOP_APP,
    )?;
    let manifest = scratch.join("shop.toml");
    fs::write(&manifest, shop_manifest(&bin_dir))?;
    // Set first: a failed `up` leaves instances that Drop must take down too.
    platform.up = true;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    let instances = platform.ps()?;
    let web = instances
        .iter()
        .find(|i| i.instance == "web.1")
        .and_then(|i| i.address.as_deref())
        .context("web.1 has no address")?;
    let web = SocketAddr::new(web.parse()?, 8080);
    let mut pids: Vec<i32> = instances.iter().filter_map(|i| i.pid).collect();
    pids.push(platform.daemon_pid);
    pids.push(platform.current_dataplane()?);
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", CLIENT_CPU, &pid.to_string()])
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "taskset of pid {pid} failed");
    }
    wait_ok(web, Duration::from_secs(10)).context("the shop's web did not answer")?;
    Ok((platform, web))
}

const SHOP_APP: &str = "proxyshop";

/// examples/shop/paracloud.toml with one `web` instance, no published port and no CPU limits
/// (the tier's capacity, not a quota, bounds it).
fn shop_manifest(bin_dir: &Path) -> String {
    let paths = format!("paths = [{:?}]", bin_dir.display().to_string());
    format!(
        "app = \"{SHOP_APP}\"\n\n\
         [services.kv]\nimage = \"host\"\n{paths}\n\
         command = [\"shop-kv\", \"--listen\", \"0.0.0.0:7000\", \"--data\", \"/data\"]\n\
         ports = [{{ port = 7000, protocol = \"tcp\" }}]\nvolumes = [\"kvdata:/data\"]\n\
         health = {{ tcp = 7000, interval = \"2s\" }}\n\n\
         [services.api]\nimage = \"host\"\n{paths}\n\
         command = [\"shop-api\", \"--listen\", \"0.0.0.0:8000\", \"--kv\", \"kv:7000\"]\n\
         ports = [{{ port = 8000, protocol = \"http\" }}]\n\
         health = {{ http = \"/healthz\", interval = \"2s\" }}\n\
         depends_on = {{ kv = \"healthy\" }}\n\n\
         [services.web]\nimage = \"host\"\n{paths}\n\
         command = [\"shop-web\", \"--listen\", \"0.0.0.0:8080\", \"--api\", \"http://api:8000\"]\n\
         ports = [{{ port = 8080, protocol = \"http\" }}]\n\
         health = {{ http = \"/healthz\", interval = \"2s\" }}\n\
         depends_on = {{ api = \"healthy\" }}\n"
    )
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn find(report: &ProxyReport, mode: Mode, peer: Peer, c: u32) -> Option<&WrkResult> {
    report
        .rows
        .iter()
        .find(|r| r.mode == mode && r.peer == peer && r.connections == c)
        .and_then(|r| r.median.as_ref())
}

pub fn markdown(report: &ProxyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Proxy: wrk through Paracloud, HAProxy and nginx ({}, kernel {}, {} cores, load average {} at the start)\n",
        report.date, report.kernel, report.cores, report.load_average
    );
    let _ = writeln!(
        out,
        "wrk -t1, {} s measured after {} s of warm-up, {} round(s), median shown. {}\n",
        report.duration_s,
        report.warmup_s,
        report.rounds,
        report
            .versions
            .iter()
            .map(|(n, v)| format!("{n}: `{v}`"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut conns: Vec<u32> = report.rows.iter().map(|r| r.connections).collect();
    conns.dedup();
    for mode in [Mode::Http, Mode::Tcp] {
        let _ = writeln!(
            out,
            "### {} proxying\n\n| connections | target | req/s | p50 | p99 | errors | proxy CPU per request | Paracloud ÷ this (req/s) | Paracloud ÷ this (p99) | Paracloud ÷ this (CPU per request) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            mode.name().to_uppercase()
        );
        for &c in &conns {
            let pc = find(report, mode, Peer::Paracloud, c);
            for row in report
                .rows
                .iter()
                .filter(|r| r.connections == c && (r.mode == mode || r.peer == Peer::Direct))
            {
                let name = if row.peer == Peer::Direct {
                    row.peer.name().to_string()
                } else {
                    format!("{} ({})", row.peer.name(), mode.name())
                };
                match (&row.median, &row.failure) {
                    (Some(m), _) => {
                        let (rr, rp) = match pc {
                            Some(p) => (
                                format!("{:.2}×", p.requests_per_sec / m.requests_per_sec),
                                format!("{:.2}×", p.p99_ms / m.p99_ms),
                            ),
                            None => ("–".into(), "–".into()),
                        };
                        let cpu = match (m.cpu_us_per_request, m.kernel_share) {
                            (Some(us), Some(k)) => {
                                format!("{us:.1} µs ({:.0}% kernel)", k * 100.0)
                            }
                            (Some(us), None) => format!("{us:.1} µs"),
                            _ => "–".into(),
                        };
                        let rc = match (pc.and_then(|p| p.cpu_us_per_request), m.cpu_us_per_request)
                        {
                            (Some(p), Some(this)) => format!("{:.2}×", p / this),
                            _ => "–".into(),
                        };
                        let _ = writeln!(
                            out,
                            "| {c} | {name} | {:.0} | {} | {} | {} | {cpu} | {rr} | {rp} | {rc} |",
                            m.requests_per_sec,
                            fmt_ms(m.p50_ms),
                            fmt_ms(m.p99_ms),
                            m.errors
                        );
                    }
                    (None, failure) => {
                        let _ = writeln!(
                            out,
                            "| {c} | {name} | failed: {} | | | | | | | |",
                            failure.as_deref().unwrap_or("no sample")
                        );
                    }
                }
            }
        }
        let _ = writeln!(out);
        for &c in &conns {
            let Some(pc) = find(report, mode, Peer::Paracloud, c) else {
                continue;
            };
            let best = [Peer::Haproxy, Peer::Nginx]
                .into_iter()
                .filter_map(|p| find(report, mode, p, c).map(|r| (p, r)))
                .max_by(|a, b| a.1.requests_per_sec.total_cmp(&b.1.requests_per_sec));
            if let Some((peer, b)) = best {
                let ratio = pc.requests_per_sec / b.requests_per_sec;
                let met = ratio >= GOAL_RATIO && pc.p99_ms <= b.p99_ms;
                let _ = writeln!(
                    out,
                    "- {} at {c} connections: Paracloud {ratio:.2}× the better peer ({}), p99 {} vs {}; goal (≥ {GOAL_RATIO}× and p99 no worse): **{}**",
                    mode.name().to_uppercase(),
                    peer.name(),
                    fmt_ms(pc.p99_ms),
                    fmt_ms(b.p99_ms),
                    if met { "met" } else { "not met" }
                );
            }
            if let Some(line) = closer_goals(report, mode, c, pc) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out);
    }
    for s in &report.skipped {
        let _ = writeln!(out, "- skipped: {s}");
    }
    let _ = writeln!(out, "\n### Method\n\n{}", report.method);
    out
}

/// The goals of issue 21 for `mode` at `c` connections, where the peers come within 15-25% of
/// the backend served directly: Paracloud's CPU per request at most [`GOAL_CPU_RATIO`]× the
/// lower of the peers', its req/s at least [`GOAL_OF_DIRECT`]× direct, its p99 no worse than the
/// lower of the peers'.
fn closer_goals(report: &ProxyReport, mode: Mode, c: u32, pc: &WrkResult) -> Option<String> {
    let peers: Vec<(Peer, &WrkResult)> = [Peer::Haproxy, Peer::Nginx]
        .into_iter()
        .filter_map(|p| find(report, mode, p, c).map(|r| (p, r)))
        .collect();
    let cpu = pc.cpu_us_per_request?;
    let (cpu_peer, peer_cpu) = peers
        .iter()
        .filter_map(|(p, r)| Some((*p, r.cpu_us_per_request?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let (p99_peer, peer_p99) = peers
        .iter()
        .map(|(p, r)| (*p, r.p99_ms))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    let direct = find(report, Mode::Http, Peer::Direct, c)?;
    let cpu_ratio = cpu / peer_cpu;
    let of_direct = pc.requests_per_sec / direct.requests_per_sec;
    let verdict = |met: bool| if met { "met" } else { "not met" };
    // The kernel's part of Paracloud's CPU per request: the floor left if its own code took
    // no time at all.
    let floor = pc.kernel_share.map_or(String::new(), |share| {
        let kernel = cpu * share;
        format!(
            "; in the kernel alone {kernel:.1} µs, {:.2}× the lower peer's whole",
            kernel / peer_cpu
        )
    });
    Some(format!(
        "- {} at {c} connections, the goals of issue 21: CPU per request {cpu:.1} µs, {cpu_ratio:.2}× the lower peer's ({}, {peer_cpu:.1} µs{floor}; goal ≤ {GOAL_CPU_RATIO}×: **{}**); {of_direct:.2}× of direct's req/s (goal ≥ {GOAL_OF_DIRECT}×: **{}**); p99 {} against {}'s {} (goal no worse: **{}**)",
        mode.name().to_uppercase(),
        cpu_peer.name(),
        verdict(cpu_ratio <= GOAL_CPU_RATIO),
        verdict(of_direct >= GOAL_OF_DIRECT),
        fmt_ms(pc.p99_ms),
        p99_peer.name(),
        fmt_ms(peer_p99),
        verdict(pc.p99_ms <= peer_p99),
    ))
}

/// The backend line of the method when it is nginx's fixed answer.
const NGINX_BACKEND: &str = "\
- Backend: nginx (Debian) with `daemon off`, `master_process off` (one process), `return 200 \"ok\"`, \
access log off, `keepalive_requests 1000000`, pinned to CPU 1; the same backend for every target.
";

/// The backend line of the method with `--shop PATH`.
fn shop_backend(path: &str) -> String {
    format!(
        "- Backend: the shop's `web` tier, one instance (`shop-web`, axum) on a daemon of the \
         bench's own, wrk asking `{path}` (`/` is the page, for which web asks `api` and api asks \
         `kv`, through the daemon's data plane; `/healthz` is web's own answer). The shop's \
         processes, the daemon and its data plane are moved to CPU 1 with `taskset -a -p`; no CPU \
         quota on any service. The same instance for every target, reached at its bridge \
         address.\n"
    )
}

pub const METHOD: &str = "\
- Client: `wrk -t1 -cN -dD --latency`, pinned to CPU 1 beside the backend (the machine has 2 cores: \
the client and the backend share one, the proxy under test has the other to itself). A warm-up run \
precedes each measured run and is not counted. Targets are interleaved per connection count, the \
first rotating from round to round.
- Proxies, pinned to CPU 0, one worker each, keep-alive to the backend, logs off; all run from \
config files in the bench's temp dir, in the foreground, on loopback ports: \
HAProxy `nbthread 1`, `mode http`, `option http-keep-alive`, `http-reuse always` (and `mode tcp`); \
nginx `worker_processes 1` (`master_process off`), an upstream with `keepalive 64`, \
`proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, `access_log off` (and `stream` \
`proxy_pass` for TCP); Paracloud: `paracloud __dataplane --config FILE` with one `http` and one \
`tcp` listener, `TOKIO_WORKER_THREADS=1`, `RUST_LOG=warn`.
- Figures: wrk's Requests/sec and the 50% and 99% lines of its latency distribution; errors are \
wrk's socket errors plus non-2xx answers. Ratios are Paracloud's figure ÷ the row's (above 1 is \
better for req/s, below 1 is better for p99). The goal of issue 3: Paracloud at 1.15× the better \
peer's req/s or more, with p99 no worse than that peer's.
- CPU per request: each proxy's on-CPU time over the measured run (the first field of \
`/proc/PID/task/*/schedstat`, every thread, read just before and just after wrk) ÷ the requests \
wrk completed; other load on the machine disturbs it far less than req/s. The kernel's share of \
it is `stime` over `utime + stime` of `/proc/PID/stat` over the same run: the part the proxy's own \
code cannot cut (the loopback TCP path of its receives and sends). The goals of issue 21: \
Paracloud's CPU per request at most 0.8× the lower of the peers', its req/s at least 0.95× of \
direct, and its p99 no worse than the lower of the peers'.
";

/// Starts an nginx of the bench's own on `cpu`, its error log beside the config as `NAME.err`.
fn spawn_nginx(
    fleet: &mut Fleet,
    what: &str,
    cpu: &str,
    dir: &Path,
    name: &str,
    conf: &Path,
    log: &Path,
) -> Result<()> {
    fleet.spawn(
        what,
        pinned(cpu, "nginx")
            .arg("-e")
            .arg(dir.join(format!("{name}.err")))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf),
        log,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:21080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.25ms  204.51us   7.81ms   91.02%
    Req/Sec    51.36k     1.90k   53.90k    84.00%
  Latency Distribution
     50%    1.21ms
     75%    1.30ms
     90%    1.42ms
     99%  812.00us
  255546 requests in 5.00s, 38.99MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  51109.12
Transfer/sec:      7.80MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests_per_sec, 51109.12);
        assert!((r.p50_ms - 1.21).abs() < 1e-9);
        assert!((r.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.requests, 255_546);
        assert_eq!(r.errors, 7);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("3.5ms"), Some(3.5));
        assert_eq!(parse_duration_ms("bogus"), None);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn dataplane_config_has_both_listeners() {
        let v = dataplane_config(loopback(1), 2, 3);
        assert_eq!(v["listeners"][0]["protocol"], "http");
        assert_eq!(v["listeners"][1]["protocol"], "tcp");
        assert_eq!(v["listeners"][1]["backends"][0]["addr"], "127.0.0.1:1");
    }

    #[test]
    fn medians_per_figure() {
        let s = |rps, p99, cpu| WrkResult {
            requests_per_sec: rps,
            p50_ms: 1.0,
            p99_ms: p99,
            requests: 10,
            errors: 1,
            cpu_us_per_request: cpu,
            kernel_share: cpu.map(|_| 0.5),
        };
        let m = median_result(&[
            s(3.0, 9.0, Some(20.0)),
            s(1.0, 1.0, None),
            s(2.0, 5.0, Some(10.0)),
        ])
        .unwrap();
        assert_eq!((m.requests_per_sec, m.p99_ms, m.errors), (2.0, 5.0, 3));
        assert_eq!(
            m.cpu_us_per_request,
            Some(15.0),
            "over the runs that have one"
        );
        let direct = median_result(&[s(1.0, 1.0, None)]).unwrap();
        assert_eq!(direct.cpu_us_per_request, None);
    }

    #[test]
    fn cpu_per_request_is_microseconds_over_the_completed_requests() {
        assert_eq!(cpu_us_per_request(2_000_000_000, 100_000), Some(20.0));
        assert_eq!(cpu_us_per_request(5, 0), None);
    }

    #[test]
    fn kernel_share_is_system_over_all_ticks_of_the_run() {
        assert_eq!(kernel_share((100, 300), (120, 380)), Some(0.8));
        assert_eq!(kernel_share((100, 300), (100, 300)), None, "no tick passed");
        assert_eq!(
            kernel_share((100, 300), (90, 310)),
            Some(1.0),
            "never negative"
        );
    }
}
