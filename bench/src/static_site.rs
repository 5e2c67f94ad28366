//! The catalogue's static site (`catalog = "static"`) against nginx run straight on the host,
//! in one run on one machine: wrk asks both for the same files (a small page and a 100 KB
//! file) of the same directory, with the same nginx configuration, rounds alternated.
//!
//! Through Paracloud a request goes to the published port, through the data plane, to nginx in
//! its instance; the peer is the machine's nginx serving the directory on a loopback port. The
//! ratio is what serving a site from the static tier costs against serving it by hand.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::proxy::{run_wrk, WrkResult};

#[derive(Debug, Clone)]
pub struct StaticOptions {
    pub seconds: u64,
    pub rounds: usize,
    pub connections: u32,
    pub subnet: Ipv4Net,
    /// The published port of the site, and the port of the host's nginx.
    pub ports: (u16, u16),
}

#[derive(Debug, Serialize)]
pub struct StaticRow {
    pub path: String,
    pub paracloud: Vec<WrkResult>,
    pub nginx: Vec<WrkResult>,
}

#[derive(Debug, Serialize)]
pub struct StaticReport {
    pub seconds: u64,
    pub connections: u32,
    pub rows: Vec<StaticRow>,
}

/// The host's nginx, serving `root` on `port` with the static site's own configuration.
struct HostNginx(Child);

impl HostNginx {
    fn start(scratch: &Path, root: &Path, port: u16) -> Result<Self> {
        let dir = scratch.join("host-nginx");
        std::fs::create_dir_all(&dir)?;
        let conf = include_str!("../../crates/paracloud-manifest/src/catalog/static-nginx.conf")
            // The workers read the bench's scratch directory, which only root may enter.
            .replace("user nginx nginx;", "user root root;")
            .replace("/var/lib/nginx", &dir.display().to_string())
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace("root /srv/www;", &format!("root {};", root.display()));
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("error.log"))?)
            .spawn()
            .context("cannot start nginx (apt-get install nginx)")?;
        let mut nginx = Self(child);
        wait_http(port)?;
        // The port answered: make sure it is this nginx (it exits at once when the port is taken).
        std::thread::sleep(Duration::from_millis(200));
        ensure!(
            matches!(nginx.0.try_wait(), Ok(None)),
            "nginx exited at start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Ok(nginx)
    }
}

impl Drop for HostNginx {
    /// SIGTERM, so that the master stops its workers (SIGKILL would leave them serving);
    /// SIGKILL only if it has not exited within 5 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_http(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nothing listens on {port} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(opts: &StaticOptions, scratch: &Path) -> Result<StaticReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let public = scratch.join("app/public");
    std::fs::create_dir_all(&public)?;
    std::fs::write(
        public.join("index.html"),
        format!(
            "<!doctype html><h1>hello</h1>{}\n",
            "<p>static</p>".repeat(60)
        ),
    )?;
    std::fs::write(public.join("file.bin"), vec![b'x'; 100 * 1024])?;
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "static",
        "site",
    )?;
    let manifest = scratch.join("app/paracloud.toml");
    std::fs::write(
        &manifest,
        format!(
            "app = \"site\"\n\n[services.www]\ncatalog = \"static\"\nroot = \"public\"\nports = [\"{}:80/http\"]\n",
            opts.ports.0
        ),
    )?;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    platform.up = true;
    wait_http(opts.ports.0)?;
    let _nginx = HostNginx::start(scratch, &public, opts.ports.1)?;
    let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut rows = Vec::new();
    for path in ["/", "/file.bin"] {
        let mut row = StaticRow {
            path: path.to_owned(),
            paracloud: Vec::new(),
            nginx: Vec::new(),
        };
        // Warm both, then alternate which goes first.
        run_wrk(address(opts.ports.0), path, opts.connections, 2)?;
        run_wrk(address(opts.ports.1), path, opts.connections, 2)?;
        for round in 0..opts.rounds {
            let mut sides = [(true, opts.ports.0), (false, opts.ports.1)];
            if round % 2 == 1 {
                sides.reverse();
            }
            for (paracloud, port) in sides {
                let result = run_wrk(address(port), path, opts.connections, opts.seconds)?;
                ensure!(
                    result.errors == 0,
                    "{} answered {} of {} requests for {path} with an error",
                    if paracloud {
                        "the static site"
                    } else {
                        "the host's nginx"
                    },
                    result.errors,
                    result.requests
                );
                eprintln!(
                    "static: {path} {}: {:.0} req/s, p99 {:.2} ms",
                    if paracloud { "paracloud" } else { "nginx" },
                    result.requests_per_sec,
                    result.p99_ms
                );
                if paracloud {
                    row.paracloud.push(result);
                } else {
                    row.nginx.push(result);
                }
            }
        }
        rows.push(row);
    }
    Ok(StaticReport {
        seconds: opts.seconds,
        connections: opts.connections,
        rows,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut all: Vec<f64> = values.collect();
    all.sort_by(f64::total_cmp);
    all.get(all.len() / 2).copied().unwrap_or(0.0)
}

pub fn markdown(report: &StaticReport) -> String {
    let mut text = format!(
        "wrk, 1 thread, {} connections, {} s a run; medians\n\n| path | static site (req/s) | host nginx (req/s) | ratio | static site p99 (ms) | host nginx p99 (ms) |\n|---|---|---|---|---|---|\n",
        report.connections, report.seconds
    );
    for row in &report.rows {
        let ours = median(row.paracloud.iter().map(|r| r.requests_per_sec));
        let theirs = median(row.nginx.iter().map(|r| r.requests_per_sec));
        text.push_str(&format!(
            "| {} | {ours:.0} | {theirs:.0} | {:.2} | {:.2} | {:.2} |\n",
            row.path,
            ours / theirs.max(1.0),
            median(row.paracloud.iter().map(|r| r.p99_ms)),
            median(row.nginx.iter().map(|r| r.p99_ms)),
        ));
    }
    text
}
