//! `autoscale-live`: the shop example on a daemon of its own with an autoscaler, a trace replayed
//! against its published port, and what the run cost, in the figures the simulator reports
//! (SLO-violation seconds, instance- and CPU-seconds, latency, drops, actions), measured on the
//! real platform.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use paracloud_api::{Client, Event, GetApp, ListEvents};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::load::{self, LoadOptions, LoadReport, Target};
use crate::platform::Platform;

const APP: &str = "shop";
/// The example, as the repository has it; its binaries come from beside the bench.
const SHOP: &str = include_str!("../../examples/shop/paracloud.toml");
/// The shop as the simulator sees it: its services' demands and calls.
const SHOP_SIM: &str = include_str!("../../examples/shop/sim.toml");

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
    /// What the simulator predicts for the same trace, seed and policy (see [`sim_model`]).
    pub simulated: Predicted,
    /// The load generator's own figures (failures by reason, lateness, connections).
    pub load: LoadReport,
}

/// The simulator's figures for a run, under the same keys as the live ones.
#[derive(Debug, Clone, Serialize)]
pub struct Predicted {
    /// The api's CPU time per request the model was given, measured on this machine.
    pub api_demand_ms: f64,
    #[serde(flatten)]
    pub figures: paracloud_sim::Summary,
}

/// The paths of a manifest are not checked here: the live run's daemon checks them.
pub(crate) struct AnyPathExists;

impl paracloud_manifest::FileSystem for AnyPathExists {
    fn exists(&self, _: &Path) -> bool {
        true
    }
    fn is_dir(&self, _: &Path) -> bool {
        true
    }
}

/// The runs side by side, live and as the simulator predicted them, as a Markdown table.
pub fn table(reports: &[LiveReport]) -> String {
    let mut out = String::from(
        "| policy | requests | SLO-violation s live / sim | instance-s live / sim | \
         CPU-s live / sim | p95 ms live / sim | p99 ms live / sim | dropped live / sim | \
         actions live / sim |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let p = &r.simulated.figures;
        out.push_str(&format!(
            "| {} | {} | {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} / {} | {} / {} |\n",
            r.policy,
            r.requests,
            r.slo_violation_seconds,
            p.slo_violation_seconds,
            r.instance_seconds,
            p.instance_seconds,
            r.cpu_seconds,
            p.cpu_seconds,
            r.p95_ms,
            p.p95_ms,
            r.p99_ms,
            p.p99_ms,
            r.dropped,
            p.dropped,
            r.actions,
            p.actions,
        ));
    }
    out
}

/// CPU time of the api's work for one page of `work` rounds, on this machine, in milliseconds:
/// the thread's own CPU time over repeated runs, so other load on the machine does not count.
pub fn api_demand_ms(work: u64) -> Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let cpu_us = || -> Result<i64> {
        let usage = getrusage(UsageWho::RUSAGE_THREAD)?;
        let (user, system) = (usage.user_time(), usage.system_time());
        Ok((user.tv_sec() + system.tv_sec()) * 1_000_000 + user.tv_usec() + system.tv_usec())
    };
    let before = cpu_us()?;
    let mut runs = 0u64;
    let mut checksum = 0u64;
    // At least 20 runs and 200 ms of CPU: the clock ticks in microseconds.
    while runs < 20 || cpu_us()? - before < 200_000 {
        checksum ^= shop::work::cpu_work(std::hint::black_box(work));
        runs += 1;
    }
    std::hint::black_box(checksum);
    Ok((cpu_us()? - before) as f64 / runs as f64 / 1000.0)
}

/// The model the simulator runs for a live run: the services, demands and calls of the shop's
/// `sim.toml`, the api's demand replaced by `api_demand_ms`, and the SLO, bounds, starting
/// instances and CPU of the manifest the live run deploys (`manifest_text`).
pub fn sim_model(manifest_text: &str, api_demand_ms: f64) -> Result<paracloud_sim::Model> {
    let origin = paracloud_manifest::Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    let manifest = paracloud_manifest::parse(manifest_text, &origin, &AnyPathExists)
        .map_err(|e| anyhow::anyhow!("the shop's manifest: {e}"))?;
    let config = paracloud_manifest::scaling_config(&manifest)
        .context("the shop's manifest has no [autoscale] table")?;
    let mut model = paracloud_sim::Model::parse(SHOP_SIM, "examples/shop/sim.toml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    model.slo = config.slo;
    for (name, service) in &mut model.services {
        let live = manifest
            .services
            .get(name)
            .with_context(|| format!("sim.toml's service {name} is not in the manifest"))?;
        let bounds = config.bounds(name);
        service.instances = live.replicas;
        service.cpu = bounds.cpu;
        service.min = bounds.min_instances;
        service.max = bounds.max_instances;
        service.cpu_min = bounds.cpu_min;
        service.cpu_max = bounds.cpu_max;
        if name == "api" {
            service.demand_ms = api_demand_ms;
        }
    }
    Ok(model)
}

/// What the simulator predicts for `opts`'s trace, seed and policy.
pub fn predict(
    opts: &LiveOptions,
    model: &paracloud_sim::Model,
    api_demand_ms: f64,
) -> Result<Predicted> {
    let mut policy = opts
        .policy
        .parse::<paracloud_autoscale::PolicyKind>()
        .map_err(anyhow::Error::msg)?
        .build();
    let outcome =
        paracloud_sim::simulate(model, &opts.load.replay, policy.as_mut(), opts.load.seed);
    Ok(Predicted {
        api_demand_ms,
        figures: outcome.summary(),
    })
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
    let api_demand_ms = api_demand_ms(opts.work)?;
    let simulated = predict(opts, &sim_model(&text, api_demand_ms)?, api_demand_ms)?;
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
        let view = client.call(&GetApp { app: APP.into() }).await?;
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
        Ok::<_, anyhow::Error>(report(
            opts, services, measured, &samples, &changes, start, simulated,
        ))
    })?;
    Ok(report)
}

/// Events of the shop after event `after`, oldest first.
async fn events(client: &Client, after: i64) -> Result<Vec<Event>> {
    let route = ListEvents {
        app: Some(APP.into()),
        after: Some(after),
        limit: Some(1_000_000),
    };
    Ok(client.call(&route).await?)
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
        let Ok(view) = client.call(&GetApp { app: APP.into() }).await else {
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
    simulated: Predicted,
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
        simulated,
        load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_simulated_shop_has_the_live_bounds_and_the_measured_demand() {
        let text = manifest(Path::new("/opt/bin"), 21280, "model", (0.95, 200.0)).unwrap();
        let model = sim_model(&text, 3.5).unwrap();
        assert_eq!(model.slo.latency_ms, 200.0);
        let api = &model.services["api"];
        assert_eq!(api.demand_ms, 3.5);
        assert_eq!(
            (api.instances, api.cpu),
            (2, 1.0),
            "as the manifest starts it"
        );
        assert_eq!(
            (api.min, api.max, api.cpu_min, api.cpu_max),
            (1, 10, 0.25, 2.0),
            "the manifest's default bounds"
        );
        assert_eq!(model.services["kv"].demand_ms, 1.0, "sim.toml's own");
    }

    #[test]
    fn the_api_demand_grows_with_its_work() {
        let small = api_demand_ms(100_000).unwrap();
        let large = api_demand_ms(1_000_000).unwrap();
        assert!(small > 0.0);
        assert!(
            large > 4.0 * small,
            "ten times the rounds, {large} ms against {small} ms"
        );
    }
}
