//! The density benchmark, through the real CLI and daemon: one service of busybox httpd
//! instances (an HTTP health check at the default interval, 2 s) brought up in steps to a
//! thousand, on an application subnet of /22. At each step: how long the step's `up` took per
//! added instance, the memory the platform adds per instance, the daemon's and the data plane's
//! CPU while the instances idle, the descriptors the daemon holds, and how long `paracloud ps`
//! and the API take with that many. The growth column of each figure is its per-instance value
//! at the last step over the first: 1.0 is linear.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use paracloud_api::{Client, GetApp, ListInstances};
use serde::Serialize;

use crate::host;
use crate::platform::Platform;
use crate::rootfs;
use crate::scale::sample_rss;

const APP: &str = "bench-density";
/// An application subnet that holds 1,007 instances.
const APP_PREFIX: u8 = 22;
/// How long the daemon and the instances are left alone before memory and CPU are read.
const SETTLE: Duration = Duration::from_secs(3);
/// The window over which the idle CPU is read.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Samples of each latency figure (the median is reported).
const CLI_SAMPLES: usize = 7;
const API_SAMPLES: usize = 21;

#[derive(Debug, Clone)]
pub struct DensityOptions {
    /// Instance counts, ascending.
    pub steps: Vec<usize>,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct DensityStep {
    pub instances: usize,
    /// `paracloud up` from the previous step's count to this one, until every instance is ready.
    pub up_s: f64,
    pub up_ms_per_added_instance: f64,
    /// Instances that answered `GET /` on their own address.
    pub answered: usize,
    pub daemon_rss_kib: u64,
    pub dataplane_rss_kib: u64,
    /// (daemon + data plane RSS − with no application) / instances.
    pub platform_kib_per_instance: f64,
    /// On-CPU time over the idle window, in percent of one core.
    pub daemon_idle_cpu_percent: f64,
    pub dataplane_idle_cpu_percent: f64,
    /// The daemon's idle CPU per instance, in microseconds per second.
    pub daemon_idle_cpu_us_per_instance_s: f64,
    pub daemon_fds: usize,
    /// Medians: `paracloud ps -a APP -o json` (a process start included), and the API's
    /// `GET /v1/instances?app=APP` and `GET /v1/apps/APP` over the Unix socket.
    pub ps_ms: f64,
    pub api_instances_ms: f64,
    pub api_app_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct DensityReport {
    pub health_interval_s: f64,
    pub daemon_idle_rss_kib: u64,
    pub dataplane_idle_rss_kib: u64,
    pub steps: Vec<DensityStep>,
}

pub fn run(opts: &DensityOptions, scratch: &Path) -> Result<DensityReport> {
    ensure!(
        !opts.steps.is_empty() && opts.steps.windows(2).all(|w| w[0] < w[1]),
        "--steps must be ascending instance counts, such as 250,500,750,1000"
    );
    ensure!(
        opts.steps.iter().all(|&n| (1..=1007).contains(&n)),
        "--steps: an application holds 1 to 1,007 instances on its /22"
    );
    if let Some(clash) = host::route_overlapping(opts.subnet)? {
        anyhow::bail!(
            "--density-subnet {} overlaps the host route {clash}: pick another",
            opts.subnet
        );
    }
    let exe = std::env::current_exe().context("cannot find the bench binary")?;
    let paracloud = exe.with_file_name("paracloud");
    let dir = scratch.join("density");
    let rootfs = rootfs::build(&dir.join("rootfs"))?;
    let manifest = dir.join("paracloud.toml");
    let mut platform = Platform::start_with_app_prefix(
        &paracloud,
        &dir.join("root"),
        opts.subnet,
        APP_PREFIX,
        "density",
        APP,
    )?;
    std::thread::sleep(SETTLE);
    let daemon_idle_rss_kib = sample_rss(platform.daemon_pid)?;
    let dataplane_idle_rss_kib = sample_rss(platform.current_dataplane()?)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(platform.root.join(paracloud_api::SOCKET_NAME));

    let mut steps = Vec::new();
    let mut before = 0;
    for &n in &opts.steps {
        crate::check_interrupted()?;
        fs::write(&manifest, manifest_text(&rootfs, n)?)?;
        let start = Instant::now();
        platform.up = true;
        platform.cli(&["up", "--timeout", "600s", "-f"], Some(&manifest))?;
        let up_s = start.elapsed().as_secs_f64();
        let ps = platform.ps()?;
        let running = ps.iter().filter(|i| i.state == "running").count();
        ensure!(
            ps.len() == n && running == n,
            "after `up`, {running} of {} instances run, {n} wanted",
            ps.len()
        );
        if platform.bridge.is_none() {
            platform.bridge = ps
                .iter()
                .find_map(|i| i.address.as_deref())
                .and_then(bridge_of);
        }
        let answered = ps
            .iter()
            .filter(|i| crate::scale::answers(i.address.as_deref()).is_ok())
            .count();

        std::thread::sleep(SETTLE);
        let daemon_rss_kib = sample_rss(platform.daemon_pid)?;
        let dataplane_rss_kib = sample_rss(platform.current_dataplane()?)?;
        let (daemon_cpu, dataplane_cpu) = idle_cpu(platform.daemon_pid, platform.dataplane_pid)?;
        let daemon_fds = fs::read_dir(format!("/proc/{}/fd", platform.daemon_pid))?.count();

        let ps_ms = median_ms(CLI_SAMPLES, || {
            let listed = platform.ps()?.len();
            ensure!(listed == n, "ps lists {listed}");
            Ok(())
        })?;
        let api_instances_ms = runtime.block_on(median_ms_async(API_SAMPLES, || async {
            let list = client
                .call(&ListInstances {
                    app: Some(APP.into()),
                })
                .await?;
            ensure!(list.len() == n, "the API lists {}", list.len());
            Ok(())
        }))?;
        let api_app_ms = runtime.block_on(median_ms_async(API_SAMPLES, || async {
            client.call(&GetApp { app: APP.into() }).await?;
            Ok(())
        }))?;

        let platform_kib = (daemon_rss_kib + dataplane_rss_kib) as f64
            - (daemon_idle_rss_kib + dataplane_idle_rss_kib) as f64;
        steps.push(DensityStep {
            instances: n,
            up_s,
            up_ms_per_added_instance: up_s * 1000.0 / (n - before) as f64,
            answered,
            daemon_rss_kib,
            dataplane_rss_kib,
            platform_kib_per_instance: platform_kib / n as f64,
            daemon_idle_cpu_percent: daemon_cpu * 100.0,
            dataplane_idle_cpu_percent: dataplane_cpu * 100.0,
            daemon_idle_cpu_us_per_instance_s: daemon_cpu * 1e6 / n as f64,
            daemon_fds,
            ps_ms,
            api_instances_ms,
            api_app_ms,
        });
        eprintln!("density: {n} instances measured");
        before = n;
    }
    Ok(DensityReport {
        health_interval_s: health_interval(&manifest_text(&rootfs, 1)?)?.as_secs_f64(),
        daemon_idle_rss_kib,
        dataplane_idle_rss_kib,
        steps,
    })
}

/// One service of `n` busybox httpd instances over `rootfs`, with an HTTP health check at the
/// default interval.
fn manifest_text(rootfs: &Path, n: usize) -> Result<String> {
    crate::scale::httpd_manifest(APP, rootfs, n, "")
}

/// The health check interval the daemon reads in `text` (the default, as it is not written).
fn health_interval(text: &str) -> Result<Duration> {
    let origin = paracloud_manifest::Origin {
        file: "paracloud.toml".into(),
        base_dir: "/".into(),
    };
    let manifest = paracloud_manifest::parse(text, &origin, &crate::autoscale_live::AnyPathExists)
        .map_err(|e| anyhow::anyhow!("the bench's manifest: {e:?}"))?;
    manifest.services["web"]
        .health
        .as_ref()
        .map(|h| h.interval)
        .context("the bench's service has no health check")
}

/// The bridge of the application whose instance has `address` (a.b.c.d): named after its /22.
fn bridge_of(address: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = address.split('/').next()?.parse().ok()?;
    let net = Ipv4Net::new(ip, APP_PREFIX).ok()?.trunc();
    Some(format!("pc{:08x}", u32::from(net.network())))
}

/// The share of one core the daemon and the data plane were on the CPU over the idle window.
fn idle_cpu(daemon: i32, dataplane: i32) -> Result<(f64, f64)> {
    let read = |pid: i32| host::cpu_time_ns(pid).with_context(|| format!("pid {pid} is gone"));
    let (d0, p0) = (read(daemon)?, read(dataplane)?);
    let start = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let (d1, p1) = (read(daemon)?, read(dataplane)?);
    let window = start.elapsed().as_nanos() as f64;
    Ok(((d1 - d0) as f64 / window, (p1 - p0) as f64 / window))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median_ms(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(samples))
}

async fn median_ms_async<F, Fut>(n: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(samples))
}

/// A figure's per-instance value at the last step over the first (1.0: it grows linearly).
fn growth(steps: &[DensityStep], per_instance: impl Fn(&DensityStep) -> f64) -> Option<f64> {
    let (first, last) = (steps.first()?, steps.last()?);
    let base = per_instance(first);
    (steps.len() > 1 && base > 0.0).then(|| per_instance(last) / base)
}

pub fn markdown(report: &DensityReport) -> String {
    let steps = &report.steps;
    let mut out = format!(
        "## Density: one service up to {} idle instances (application subnet /{APP_PREFIX}, HTTP health check every {} s)\n\n\
         Platform with no application: daemon {} KiB, data plane {} KiB.\n\n\
         | figure |{} growth per instance, last ÷ first |\n|---|{}---:|\n",
        steps.last().map_or(0, |s| s.instances),
        report.health_interval_s,
        report.daemon_idle_rss_kib,
        report.dataplane_idle_rss_kib,
        steps
            .iter()
            .map(|s| format!(" {} |", s.instances))
            .collect::<String>(),
        "---:|".repeat(steps.len()),
    );
    let row = |name: &str,
               value: &dyn Fn(&DensityStep) -> String,
               per_instance: Option<&dyn Fn(&DensityStep) -> f64>| {
        let cells: String = steps.iter().map(|s| format!(" {} |", value(s))).collect();
        let growth = per_instance
            .and_then(|f| growth(steps, f))
            .map_or("".to_string(), |g| format!("{g:.2}×"));
        format!("| {name} |{cells} {growth} |\n")
    };
    out += &row(
        "`up` of the step, per added instance",
        &|s| format!("{:.1} ms", s.up_ms_per_added_instance),
        Some(&|s| s.up_ms_per_added_instance),
    );
    out += &row(
        "instances answering `GET /`",
        &|s| format!("{}/{}", s.answered, s.instances),
        None,
    );
    out += &row(
        "daemon RSS",
        &|s| format!("{:.1} MiB", s.daemon_rss_kib as f64 / 1024.0),
        None,
    );
    out += &row(
        "data plane RSS",
        &|s| format!("{:.1} MiB", s.dataplane_rss_kib as f64 / 1024.0),
        None,
    );
    out += &row(
        "**platform memory per instance**",
        &|s| format!("{:.0} KiB", s.platform_kib_per_instance),
        Some(&|s| s.platform_kib_per_instance),
    );
    out += &row(
        "daemon CPU while idle",
        &|s| format!("{:.1}%", s.daemon_idle_cpu_percent),
        Some(&|s| s.daemon_idle_cpu_us_per_instance_s),
    );
    out += &row(
        "data plane CPU while idle",
        &|s| format!("{:.2}%", s.dataplane_idle_cpu_percent),
        None,
    );
    out += &row(
        "daemon's descriptors",
        &|s| s.daemon_fds.to_string(),
        Some(&|s| s.daemon_fds as f64 / s.instances as f64),
    );
    out += &row(
        "`paracloud ps -o json`",
        &|s| format!("{:.1} ms", s.ps_ms),
        Some(&|s| s.ps_ms / s.instances as f64),
    );
    out += &row(
        "API `GET /v1/instances`",
        &|s| format!("{:.2} ms", s.api_instances_ms),
        Some(&|s| s.api_instances_ms / s.instances as f64),
    );
    out += &row(
        "API `GET /v1/apps/APP`",
        &|s| format!("{:.2} ms", s.api_app_ms),
        Some(&|s| s.api_app_ms / s.instances as f64),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(instances: usize, per_instance_kib: f64) -> DensityStep {
        DensityStep {
            instances,
            up_s: 1.0,
            up_ms_per_added_instance: 10.0,
            answered: instances,
            daemon_rss_kib: 10240,
            dataplane_rss_kib: 6144,
            platform_kib_per_instance: per_instance_kib,
            daemon_idle_cpu_percent: 1.0,
            dataplane_idle_cpu_percent: 0.0,
            daemon_idle_cpu_us_per_instance_s: 10.0,
            daemon_fds: instances * 3,
            ps_ms: instances as f64 / 100.0,
            api_instances_ms: 1.0,
            api_app_ms: 1.0,
        }
    }

    #[test]
    fn growth_is_the_last_per_instance_value_over_the_first() {
        let steps = vec![step(250, 50.0), step(1000, 75.0)];
        assert_eq!(growth(&steps, |s| s.platform_kib_per_instance), Some(1.5));
        assert_eq!(growth(&steps, |s| s.ps_ms / s.instances as f64), Some(1.0));
        assert_eq!(growth(&steps[..1], |s| s.platform_kib_per_instance), None);
        let table = markdown(&DensityReport {
            health_interval_s: 2.0,
            daemon_idle_rss_kib: 9000,
            dataplane_idle_rss_kib: 6000,
            steps,
        });
        assert!(
            table.contains("| **platform memory per instance** | 50 KiB | 75 KiB | 1.50× |"),
            "{table}"
        );
        assert!(
            table.contains("| figure | 250 | 1000 | growth per instance, last ÷ first |\n|---|---:|---:|---:|\n"),
            "{table}"
        );
    }

    #[test]
    fn the_manifest_asks_for_n_instances_with_the_default_health_interval() {
        let text = manifest_text(Path::new("/tmp/r"), 1000).unwrap();
        assert!(text.contains("replicas = 1000"), "{text}");
        assert!(text.contains("health = { http = \"/\" }"), "{text}");
        assert_eq!(health_interval(&text).unwrap(), Duration::from_secs(2));
        assert_eq!(bridge_of("10.242.0.16").as_deref(), Some("pc0af20000"));
        assert_eq!(bridge_of("10.242.7.200").as_deref(), Some("pc0af20400"));
    }
}
