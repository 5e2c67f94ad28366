//! The API's latency with many clients at once, remote against local: `clients` concurrent
//! clients each send `GET /v1/apps` (an application of three services deployed) `requests` times
//! in a row, through the remote API (HTTPS on loopback, a token checked on every request, a
//! TLS handshake per request as the CLI makes one connection per command) and through the Unix
//! socket (peer credentials, no TLS), in one run against the same daemon. The client is the
//! CLI's own (`paracloud_api::Client`), so the figures are what a remote `paracloud ps` pays.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use paracloud_api::remote::Remote;
use paracloud_api::{Client, ListApps};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct RemoteApiOptions {
    pub clients: usize,
    pub requests: usize,
    pub subnet: Ipv4Net,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct Transport {
    pub name: &'static str,
    pub requests: usize,
    pub failures: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct RemoteApiReport {
    pub clients: usize,
    pub transports: Vec<Transport>,
}

const APP: &str = r#"
app = "bench-api"
[services.web]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
[services.api]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
[services.kv]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn measure(name: &'static str, client: Client, opts: &RemoteApiOptions) -> Result<Transport> {
    // One request first: the daemon and the connection path warm.
    client.call(&ListApps).await.context("first request")?;
    let client = Arc::new(client);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.clients {
        let client = client.clone();
        let requests = opts.requests;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(requests);
            let mut failures = 0;
            for _ in 0..requests {
                let sent = Instant::now();
                match client.call(&ListApps).await {
                    Ok(apps) if apps.len() == 1 => {
                        samples.push(sent.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => failures += 1,
                }
            }
            (samples, failures)
        }));
    }
    let mut samples = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (s, f) = task.await?;
        samples.extend(s);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    anyhow::ensure!(!samples.is_empty(), "{name}: every request failed");
    Ok(Transport {
        name,
        requests: samples.len() + failures,
        failures,
        p50_ms: percentile(&samples, 0.5),
        p99_ms: percentile(&samples, 0.99),
        max_ms: samples[samples.len() - 1],
        requests_per_s: samples.len() as f64 / elapsed,
    })
}

pub fn run(opts: &RemoteApiOptions, scratch: &Path) -> Result<RemoteApiReport> {
    let (platform, token) =
        crate::platform::start_remote(scratch, opts.subnet, "api", "bench-api", APP, opts.port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let transports = runtime.block_on(async {
        let local = Client::new(platform.root.join(paracloud_api::SOCKET_NAME));
        let remote = Remote::new(&format!("127.0.0.1:{}", opts.port), None, Some(token))
            .map_err(anyhow::Error::msg)?;
        let remote = Client::remote(remote);
        let unix = measure("Unix socket (local)", local, opts).await?;
        let https = measure("HTTPS + token (remote)", remote, opts).await?;
        anyhow::Ok(vec![unix, https])
    })?;
    Ok(RemoteApiReport {
        clients: opts.clients,
        transports,
    })
}

pub fn markdown(report: &RemoteApiReport) -> String {
    let mut out = format!(
        "### API latency, {} concurrent clients, GET /v1/apps\n\n| transport | requests | failed | p50 ms | p99 ms | max ms | requests/s |\n|---|---|---|---|---|---|---|\n",
        report.clients
    );
    for t in &report.transports {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            t.name, t.requests, t.failures, t.p50_ms, t.p99_ms, t.max_ms, t.requests_per_s
        ));
    }
    if let [unix, https] = &report.transports[..] {
        out.push_str(&format!(
            "\nremote / local: p50 {:.2}x, p99 {:.2}x\n",
            https.p50_ms / unix.p50_ms,
            https.p99_ms / unix.p99_ms
        ));
    }
    out
}
