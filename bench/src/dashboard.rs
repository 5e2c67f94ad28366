//! The dashboard's cost: what its first load transfers and how long it takes over the remote
//! API (HTTPS on loopback, each file on a connection of its own, as the CLI's client makes
//! them: an upper bound on a browser, which reuses one), the time until a page's live stream
//! has delivered its history, and the daemon's CPU for each open dashboard (its live stream),
//! measured as the daemon's CPU time with `pages` streams open against the same time with none.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use ipnet::Ipv4Net;
use paracloud_api::remote::Remote;
use paracloud_api::{Client, DashboardAsset, DashboardPage, LiveFigures};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Dashboards open at once for the CPU figure.
    pub pages: usize,
    /// How long each CPU measurement lasts.
    pub window: Duration,
    pub subnet: Ipv4Net,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    /// Files of the first load (the page and what it names).
    pub files: usize,
    pub first_load_bytes: u64,
    pub first_load_ms: f64,
    /// From opening the live stream to its `history` event.
    pub live_history_ms: f64,
    pub pages: usize,
    pub window_s: f64,
    /// The daemon's CPU with no page open and with `pages` open, in cores.
    pub idle_cores: f64,
    pub open_cores: f64,
    /// Per open dashboard, in percent of a core.
    pub per_page_percent: f64,
}

const APP: &str = r#"
app = "bench-dash"
[services.web]
image = "host"
command = ["/bin/sleep", "100000"]
ports = [8000]
stop_signal = "KILL"
replicas = 2
[services.api]
image = "host"
command = ["/bin/sleep", "100000"]
ports = [9000]
stop_signal = "KILL"
replicas = 2
[services.kv]
image = "host"
command = ["/bin/sleep", "100000"]
ports = [7000]
stop_signal = "KILL"
"#;

/// The daemon's CPU time so far (user and system), from /proc.
fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("an unreadable /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks as f64 / hz)
}

async fn cores_over(pid: i32, window: Duration) -> Result<f64> {
    let before = cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    Ok((cpu_seconds(pid)? - before) / started.elapsed().as_secs_f64())
}

async fn body_bytes(body: hyper::body::Incoming) -> Result<u64> {
    Ok(body.collect().await?.to_bytes().len() as u64)
}

pub fn run(opts: &DashboardOptions, scratch: &Path) -> Result<DashboardReport> {
    let (platform, token) =
        crate::platform::start_remote(scratch, opts.subnet, "dash", "bench-dash", APP, opts.port)?;
    let pid = platform.daemon_pid;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = || -> Result<Client> {
            let remote = Remote::new(
                &format!("127.0.0.1:{}", opts.port),
                None,
                Some(token.clone()),
            )
            .map_err(anyhow::Error::msg)?;
            Ok(Client::remote(remote))
        };
        let client = client()?;

        // The first load: the page, then every file it and its scripts name, at once (the debug
        // terminal's files come when a terminal opens, not with the page).
        let started = Instant::now();
        let page = client.stream(&DashboardPage).await.context("GET /")?;
        let mut bytes = body_bytes(page).await?;
        let names: Vec<&str> = paracloud_dashboard::ASSETS
            .iter()
            .map(|a| a.name)
            .filter(|n| *n != "index.html" && !paracloud_dashboard::ON_DEMAND.contains(n))
            .collect();
        let fetches = names.iter().map(|name| {
            let client = &client;
            async move {
                let asset = DashboardAsset {
                    name: (*name).to_owned(),
                };
                let body = client
                    .stream(&asset)
                    .await
                    .with_context(|| format!("GET {name}"))?;
                body_bytes(body).await
            }
        });
        for got in futures::future::join_all(fetches).await {
            bytes += got?;
        }
        let first_load_ms = started.elapsed().as_secs_f64() * 1000.0;

        // A page's live stream, until its first event (the history).
        let started = Instant::now();
        let mut live = client
            .stream(&LiveFigures {
                app: "bench-dash".into(),
            })
            .await
            .context("GET live")?;
        while let Some(frame) = live.frame().await {
            if frame?
                .data_ref()
                .is_some_and(|d| d.starts_with(b"event: history"))
            {
                break;
            }
        }
        let live_history_ms = started.elapsed().as_secs_f64() * 1000.0;
        drop(live);

        // The daemon's CPU with no page, then with `pages` pages reading their streams.
        let idle_cores = cores_over(pid, opts.window).await?;
        let mut readers = Vec::new();
        for _ in 0..opts.pages {
            let mut stream = client
                .stream(&LiveFigures {
                    app: "bench-dash".into(),
                })
                .await
                .context("GET live")?;
            readers.push(tokio::spawn(async move {
                let mut seconds = 0u64;
                while let Some(Ok(frame)) = stream.frame().await {
                    if frame
                        .data_ref()
                        .is_some_and(|d| d.starts_with(b"event: second"))
                    {
                        seconds += 1;
                    }
                }
                seconds
            }));
        }
        let open_cores = cores_over(pid, opts.window).await?;
        for reader in &readers {
            reader.abort();
        }
        let pages = opts.pages.max(1) as f64;
        anyhow::Ok(DashboardReport {
            files: names.len() + 1,
            first_load_bytes: bytes,
            first_load_ms,
            live_history_ms,
            pages: opts.pages,
            window_s: opts.window.as_secs_f64(),
            idle_cores,
            open_cores,
            per_page_percent: ((open_cores - idle_cores) / pages * 100.0).max(0.0),
        })
    })
}

pub fn markdown(r: &DashboardReport) -> String {
    format!(
        "### Dashboard\n\n| figure | value |\n|---|---|\n\
         | first load: files | {} |\n\
         | first load: bytes (uncompressed) | {} |\n\
         | first load: time over HTTPS, a connection per file | {:.1} ms |\n\
         | live stream: time to its history | {:.1} ms |\n\
         | daemon CPU, no dashboard open ({:.0} s) | {:.2}% of a core |\n\
         | daemon CPU, {} dashboards open ({:.0} s) | {:.2}% of a core |\n\
         | daemon CPU per open dashboard | {:.3}% of a core |\n",
        r.files,
        r.first_load_bytes,
        r.first_load_ms,
        r.live_history_ms,
        r.window_s,
        r.idle_cores * 100.0,
        r.pages,
        r.window_s,
        r.open_cores * 100.0,
        r.per_page_percent
    )
}
