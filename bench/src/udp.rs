//! `udp`: request and answer datagrams, back to back, from several flows (a socket each) to one
//! echo backend: directly, through Paracloud's data plane (a UDP listener) and through nginx's
//! `stream` UDP proxy (issue 17).
//!
//! The backend and the clients run in the bench's own process, on one CPU; each proxy is pinned
//! to the other. Everything the bench starts is stopped by its pid at the end.

use std::fmt::Write as _;
use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::proxy::{pinned, Fleet, CLIENT_CPU, NGINX_STREAM_MODULE, PROXY_CPU};

/// How long a client waits for an answer before counting its datagram as lost.
const LOST_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct UdpOptions {
    /// Flow counts to measure, each a client socket sending back to back.
    pub flows: Vec<usize>,
    pub seconds: u64,
    /// The backend's port; Paracloud's listener takes the next, nginx the one after.
    pub port_base: u16,
    pub paracloud: Option<PathBuf>,
}

/// One measured run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct UdpRow {
    pub target: String,
    pub flows: usize,
    /// Answered datagrams per second.
    pub answers_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Datagrams with no answer within 200 ms.
    pub lost: u64,
}

#[derive(Debug, Serialize)]
pub struct UdpReport {
    pub kernel: String,
    pub cores: usize,
    pub load_average: String,
    pub seconds: u64,
    pub rows: Vec<UdpRow>,
    pub skipped: Vec<String>,
}

/// The data plane's configuration: one UDP listener to the backend.
pub fn dataplane_config(backend: u16, port: u16) -> serde_json::Value {
    json!({
        "listeners": [
            { "name": "bench/udp", "bind": format!("127.0.0.1:{port}"), "protocol": "udp",
              "backends": [{ "id": "backend.1", "addr": format!("127.0.0.1:{backend}"), "weight": 1 }] },
        ]
    })
}

/// nginx with its `stream` module proxying UDP, sessions kept for 30 s as Paracloud's flows are.
pub fn nginx_conf(dir: &Path, backend: u16, port: u16) -> String {
    format!(
        "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
         worker_rlimit_nofile 16384;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err warn;\n\
         events {{ worker_connections 8192; }}\n\
         stream {{\n    server {{\n        listen 127.0.0.1:{port} udp;\n\
         proxy_pass 127.0.0.1:{backend};\n        proxy_timeout 30s;\n    }}\n}}\n",
        dir = dir.display(),
    )
}

/// Answers every datagram with itself until `stop`.
fn echo_backend(port: u16, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let socket = UdpSocket::bind(("127.0.0.1", port)).context("cannot bind the echo backend")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    }))
}

/// `flows` clients sending 64-byte datagrams to `port` back to back for `seconds`: answered
/// datagrams per second, latency percentiles and losses.
fn measure(target: &str, port: u16, flows: usize, seconds: u64) -> Result<UdpRow> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..flows)
        .map(|_| {
            std::thread::spawn(move || -> Result<(Vec<f64>, u64)> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.connect(("127.0.0.1", port))?;
                socket.set_read_timeout(Some(LOST_AFTER))?;
                let (payload, mut buf) = ([7u8; 64], [0u8; 2048]);
                let (mut latencies, mut lost) = (Vec::new(), 0);
                while Instant::now() < until {
                    let sent = Instant::now();
                    socket.send(&payload)?;
                    match socket.recv(&mut buf) {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => lost += 1,
                    }
                }
                Ok((latencies, lost))
            })
        })
        .collect();
    let (mut all, mut lost) = (Vec::new(), 0);
    for client in clients {
        let (latencies, l) = client
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(latencies);
        lost += l;
    }
    all.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        all.get(((p * all.len() as f64).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(UdpRow {
        target: target.to_string(),
        flows,
        answers_per_sec: all.len() as f64 / seconds as f64,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        lost,
    })
}

/// Waits until `port` echoes a datagram.
fn wait_echo(port: u16) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        let _ = socket.send(b"ping");
        if socket.recv(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("nothing echoes on 127.0.0.1:{port}")
}

fn paracloud_binary(opts: &UdpOptions) -> Result<PathBuf> {
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

pub fn run(opts: &UdpOptions, scratch: &Path) -> Result<UdpReport> {
    let dir = scratch.join("udp");
    fs::create_dir_all(&dir)?;
    // Before this thread is pinned to one of them.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The clients and the backend (this process's threads) on one CPU, the proxies on the other.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(CLIENT_CPU.parse()?)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
    let stop = Arc::new(AtomicBool::new(false));
    let backend_port = opts.port_base;
    let backend = echo_backend(backend_port, stop.clone())?;
    let mut fleet = Fleet::default();
    let mut targets = vec![("direct (no proxy)".to_string(), backend_port)];
    let mut skipped = Vec::new();

    let paracloud_port = opts.port_base + 1;
    let started = paracloud_binary(opts).and_then(|binary| {
        let config = dir.join("dataplane.json");
        fs::write(
            &config,
            serde_json::to_vec(&dataplane_config(backend_port, paracloud_port))?,
        )?;
        let log = dir.join("dataplane.log");
        fleet.spawn(
            "paracloud",
            pinned(PROXY_CPU, &binary.to_string_lossy())
                .args(["__dataplane", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn"),
            &log,
        )?;
        wait_echo(paracloud_port).and_then(|()| fleet.check_alive("paracloud", &log))
    });
    match started {
        Ok(()) => targets.push(("paracloud".to_string(), paracloud_port)),
        Err(e) => skipped.push(format!("paracloud: {e:#}")),
    }

    let nginx_port = opts.port_base + 2;
    let started = if Path::new(NGINX_STREAM_MODULE).is_file() {
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, backend_port, nginx_port))?;
        let log = dir.join("nginx.log");
        fleet
            .spawn(
                "nginx",
                pinned(PROXY_CPU, "nginx")
                    .arg("-e")
                    .arg(dir.join("nginx.err"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf),
                &log,
            )
            .and_then(|()| wait_echo(nginx_port))
            .and_then(|()| fleet.check_alive("nginx", &log))
    } else {
        Err(anyhow::anyhow!(
            "no stream module at {NGINX_STREAM_MODULE} (apt-get install libnginx-mod-stream)"
        ))
    };
    match started {
        Ok(()) => targets.push(("nginx (stream, udp)".to_string(), nginx_port)),
        Err(e) => skipped.push(format!("nginx: {e:#}")),
    }

    let mut rows = Vec::new();
    for &flows in &opts.flows {
        for (name, port) in &targets {
            // A second's warm-up, not counted, then the measured run.
            measure(name, *port, flows, 1)?;
            rows.push(measure(name, *port, flows, opts.seconds)?);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = backend.join();
    drop(fleet);
    Ok(UdpReport {
        kernel: Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        cores,
        load_average: fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        seconds: opts.seconds,
        rows,
        skipped,
    })
}

pub fn markdown(report: &UdpReport) -> String {
    let mut out = format!(
        "## UDP: datagrams through Paracloud and nginx (kernel {}, {} cores, load average {} at the start)\n\n\
         | flows | target | answers/s | p50 | p99 | lost |\n|---:|---|---:|---:|---:|---:|\n",
        report.kernel, report.cores, report.load_average
    );
    for r in &report.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} ms | {:.3} ms | {} |",
            r.flows, r.target, r.answers_per_sec, r.p50_ms, r.p99_ms, r.lost
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "\nskipped: {s}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_name_one_udp_listener() {
        let v = dataplane_config(1, 2);
        assert_eq!(v["listeners"][0]["protocol"], "udp");
        assert_eq!(v["listeners"][0]["bind"], "127.0.0.1:2");
        let conf = nginx_conf(Path::new("/tmp/x"), 1, 2);
        assert!(conf.contains("listen 127.0.0.1:2 udp;"), "{conf}");
        assert!(conf.contains("proxy_pass 127.0.0.1:1;"), "{conf}");
    }
}
