//! `autoscale-live`: the shop example on a daemon of its own with an autoscaler, a trace replayed
//! against its published port, and what the run cost, in the figures the simulator reports
//! (SLO-violation seconds, instance- and CPU-seconds, latency, drops, actions), measured on the
//! real platform.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use paracloud_api::{AppView, Client, Event};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::load::{self, LoadOptions, LoadReport, Target};
use crate::platform::Platform;

const APP: &str = "shop";
/// The example, as the repository has it; its binaries come from beside the bench.
const SHOP: &str = include_str!("../../examples/shop/paracloud.toml");

#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// The `[autoscale]` policy: model, hpa or kpa.
    pub policy: String,
    /// The load; its target is the shop's published port.
    pub load: LoadOptions,
    /// The `work` of each page (CPU work in the api).
    pub work: u64,
    pub port: u16,
    pub subnet: Ipv4Net,
}

/// What a live run measured, with the simulator's keys.
#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub policy: String,
    pub seed: u64,
    pub services: Vec<String>,
    pub seconds: u64,
    pub slo_violation_seconds: u64,
    pub seconds_with_arrivals: u64,
    /// Existing instances (starting and stopping included) summed over the seconds sampled.
    pub instance_seconds: f64,
    /// CPU allocated (instances times CPU per instance; the machine's cores when unlimited),
    /// in core-seconds.
    pub cpu_seconds: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub requests: u64,
    pub answered: u64,
    pub dropped: u64,
    /// Changes the autoscaler made (events), during the run.
    pub actions: u64,
    pub timeline: Vec<LiveSecond>,
    /// Every change, with its reason, as `paracloud events` shows it.
    pub decisions: Vec<LiveDecision>,
    /// The load generator's own figures (failures by reason, lateness, connections).
    pub load: LoadReport,
}

/// One second of the run: the load's figures and, per service (in `services` order), the
/// instances, the ready ones and the CPU per instance sampled at its start.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveSecond {
    pub t: u64,
    pub arrivals: u64,
    pub answered: u64,
    pub dropped: u64,
    pub p95_ms: f64,
    pub violation: bool,
    pub instances: Vec<u32>,
    pub ready: Vec<u32>,
    pub cpu: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveDecision {
    /// Milliseconds since the load started.
    pub at_ms: i64,
    pub service: String,
    pub message: String,
}

/// Per service: instances, ready, CPU per instance.
type Sample = Vec<(u32, u32, f64)>;

/// The shop's manifest for this run: binaries from `bin_dir`, published on `port`, with an
/// `[autoscale]` table for `policy` and the SLO.
pub fn manifest(bin_dir: &Path, port: u16, policy: &str, slo: (f64, f64)) -> Result<String> {
    let bin_dir = serde_json::to_string(
        bin_dir
            .to_str()
            .context("the bench's directory is not UTF-8")?,
    )?;
    let (percentile, latency_ms) = slo;
    let autoscale = format!(
        "app = \"{APP}\"\n\n[autoscale]\npolicy = \"{policy}\"\nentry = \"web\"\n\
         slo = {{ p{} = \"{}ms\" }}\n",
        (percentile * 100.0).round(),
        latency_ms
    );
    let text = SHOP
        .replace("\"../../target/release\"", &bin_dir)
        .replace("publish = 8080", &format!("publish = {port}"))
        .replacen(&format!("app = \"{APP}\"\n"), &autoscale, 1);
    ensure!(
        text.contains(&bin_dir)
            && text.contains(&format!("publish = {port}"))
            && text.contains("[autoscale]"),
        "the shop's manifest changed shape: update autoscale_live::manifest"
    );
    Ok(text)
}

pub fn run(opts: &LiveOptions, paracloud: &Path, scratch: &Path) -> Result<LiveReport> {
    let bin_dir = paracloud
        .parent()
        .context("the paracloud binary has no directory")?;
    for bin in ["shop-web", "shop-api", "shop-kv"] {
        ensure!(
            bin_dir.join(bin).is_file(),
            "no {bin} beside the bench in {}: build the workspace (cargo build --release --workspace)",
            bin_dir.display()
        );
    }
    if let Some(clash) = crate::host::route_overlapping(opts.subnet)? {
        anyhow::bail!(
            "--live-subnet {} overlaps the host route {clash}: pick another",
            opts.subnet
        );
    }
    let dir = scratch.join("autoscale-live");
    std::fs::create_dir_all(&dir)?;
    let percentile = opts.load.slo_percentile;
    let text = manifest(
        bin_dir,
        opts.port,
        &opts.policy,
        (percentile, opts.load.slo_ms),
    )?;
    let manifest_path = dir.join("paracloud.toml");
    std::fs::write(&manifest_path, text)?;
    let root = dir.join("root");
    let mut platform = Platform::start(paracloud, &root, opts.subnet, "autoscale", APP)?;
    platform.up = true;
    platform.cli(&["up", "-f"], Some(&manifest_path))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(root.join(paracloud_api::SOCKET_NAME));
    let report = runtime.block_on(async {
        let view: AppView = client.get(&format!("/v1/apps/{APP}")).await?;
        platform.bridge = Some(view.bridge.clone()).filter(|b| !b.is_empty());
        let services: Vec<String> = view.services.iter().map(|s| s.name.clone()).collect();
        let last_event = events(&client, 0).await?.last().map_or(0, |e| e.id);

        let mut load = opts.load.clone();
        load.target = Target::parse(&format!(
            "http://127.0.0.1:{}/?work={}",
            opts.port, opts.work
        ))?;
        let start = Instant::now() + Duration::from_millis(200);
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(sample(client.clone(), services.clone(), start, stopped));
        let measured = load::run(&load, start).await;
        let _ = stop.send(true);
        let samples = sampler.await.context("the sampler failed")?;
        let measured = measured?;
        let changes = events(&client, last_event).await?;
        Ok::<_, anyhow::Error>(report(opts, services, measured, &samples, &changes, start))
    })?;
    Ok(report)
}

/// Events of the shop after event `after`, oldest first.
async fn events(client: &Client, after: i64) -> Result<Vec<Event>> {
    Ok(client
        .get(&format!("/v1/events?app={APP}&after={after}&limit=1000000"))
        .await?)
}

/// The shop's instances and CPU, once a second from `start` until told to stop.
async fn sample(
    client: Client,
    services: Vec<String>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return samples,
        }
        let Ok(view) = client.get::<AppView>(&format!("/v1/apps/{APP}")).await else {
            // A missed sample repeats the previous one: the platform did not change by itself.
            let previous = samples.last().cloned().unwrap_or_default();
            samples.push(previous);
            continue;
        };
        let sample = services
            .iter()
            .map(
                |name| match view.services.iter().find(|s| &s.name == name) {
                    Some(s) => {
                        let existing = s
                            .instances
                            .iter()
                            .filter(|i| {
                                !matches!(i.state.as_str(), "exited" | "failed" | "oom-killed")
                            })
                            .count() as u32;
                        (existing, s.ready, s.cpu.unwrap_or(cores))
                    }
                    None => (0, 0, 0.0),
                },
            )
            .collect();
        samples.push(sample);
    }
}

/// The run's figures from the load, the samples (one per second from `start`) and the events.
fn report(
    opts: &LiveOptions,
    services: Vec<String>,
    load: LoadReport,
    samples: &[Sample],
    events: &[Event],
    start: Instant,
) -> LiveReport {
    let started_ms = crate::host::epoch_ms() as i64
        - Instant::now().saturating_duration_since(start).as_millis() as i64;
    let decisions: Vec<LiveDecision> = events
        .iter()
        .filter(|e| e.message.starts_with("autoscaler ") && !e.message.contains(" follows "))
        .map(|e| LiveDecision {
            at_ms: e.at as i64 - started_ms,
            service: e.subject.clone(),
            message: e.message.clone(),
        })
        .collect();
    let instance_seconds = samples
        .iter()
        .flatten()
        .map(|(n, _, _)| f64::from(*n))
        .sum();
    let cpu_seconds = samples
        .iter()
        .flatten()
        .map(|(n, _, cpu)| f64::from(*n) * cpu)
        .sum();
    let timeline = load
        .timeline
        .iter()
        .map(|second| {
            let sample = samples
                .get(second.t as usize)
                .or(samples.last())
                .cloned()
                .unwrap_or_default();
            LiveSecond {
                t: second.t,
                arrivals: second.arrivals,
                answered: second.answered,
                dropped: second.dropped,
                p95_ms: second.p95_ms,
                violation: second.violation,
                instances: sample.iter().map(|s| s.0).collect(),
                ready: sample.iter().map(|s| s.1).collect(),
                cpu: sample.iter().map(|s| s.2).collect(),
            }
        })
        .collect();
    LiveReport {
        policy: opts.policy.clone(),
        seed: opts.load.seed,
        services,
        seconds: load.seconds,
        slo_violation_seconds: load.slo_violation_seconds,
        seconds_with_arrivals: load.seconds_with_arrivals,
        instance_seconds,
        cpu_seconds,
        p95_ms: load.p95_ms,
        p99_ms: load.p99_ms,
        mean_ms: load.mean_ms,
        requests: load.requests,
        answered: load.answered,
        dropped: load.dropped,
        actions: decisions.len() as u64,
        timeline,
        decisions,
        load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AnyPathExists;

    impl paracloud_manifest::FileSystem for AnyPathExists {
        fn exists(&self, _: &Path) -> bool {
            true
        }
        fn is_dir(&self, _: &Path) -> bool {
            true
        }
    }

    #[test]
    fn the_shop_gets_the_policy_the_slo_and_this_build() {
        let text = manifest(Path::new("/opt/bench bin"), 21280, "kpa", (0.99, 150.0)).unwrap();
        let origin = paracloud_manifest::Origin {
            file: "paracloud.toml".into(),
            base_dir: "/tmp".into(),
        };
        let parsed = paracloud_manifest::parse(&text, &origin, &AnyPathExists).unwrap();
        let autoscale = parsed.autoscale.unwrap();
        assert_eq!(autoscale.policy.name(), "kpa");
        assert_eq!(autoscale.entry, "web");
        assert_eq!(autoscale.slo.percentile, 0.99);
        assert_eq!(autoscale.slo.latency, Duration::from_millis(150));
        let web = &parsed.services["web"];
        assert_eq!(web.ports[0].publish.map(|a| a.port()), Some(21280));
        assert!(text.contains("\"/opt/bench bin\""), "{text}");
    }
}
