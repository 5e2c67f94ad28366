//! The scale benchmark, through the real CLI and daemon: `paracloud up` of one service with N
//! busybox httpd instances, then what the platform adds per idle instance in memory and in
//! processes.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::host;
use crate::platform::Platform;
use crate::probe;
use crate::rootfs;

pub(crate) const APP: &str = "bench";
/// How long the daemon and the instances are left alone before memory is read.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub instances: usize,
    /// The daemon's address pool (`PARACLOUD_SUBNET`).
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct ScaleReport {
    pub instances: usize,
    /// `paracloud daemon` spawned → its API answers.
    pub daemon_start_s: f64,
    /// `paracloud up -f FILE` with the daemon already running: until it returned, every instance
    /// ready (its first HTTP health probe passed).
    pub up_s: f64,
    /// `paracloud down`: every instance stopped (stop signal SIGKILL) and removed.
    pub down_s: f64,
    /// Instances that answered `GET /` on their own address after `up`.
    pub answered: usize,
    pub daemon_rss_kib: (u64, u64),
    pub dataplane_rss_kib: (u64, u64),
    /// (daemon + data plane RSS with N instances − with none) / N.
    pub platform_kib_per_instance: f64,
    /// Mean of the instances' memory cgroup usage (page cache charged to them included).
    pub instance_cgroup_kib_mean: Option<f64>,
    /// Mean VmRSS of the instances' first processes (pids from `paracloud ps -o json`).
    pub instance_rss_kib_mean: f64,
    /// Processes inside the instances' cgroups, and children of the daemon that are instances.
    pub processes_in_instance_cgroups: usize,
    pub instance_children_of_daemon: usize,
    /// Children of the daemon other than the data plane, its spawner and the instances (the
    /// goal: none).
    pub other_daemon_children: Vec<String>,
    /// Children of the daemon other than the data plane and its spawner after `down` (the goal:
    /// none).
    pub leftover_after_down: Vec<String>,
    /// The daemon's spawner, the process that clones its instances: pid and VmRSS with N
    /// instances (a fixed cost, not one per instance).
    pub spawner: Option<(i32, u64)>,
    /// Data-plane pids seen during the run, oldest first (more than one: the daemon replaced it).
    pub dataplane_pids: Vec<i32>,
}

pub fn run(opts: &ScaleOptions, scratch: &Path) -> Result<ScaleReport> {
    let n = opts.instances;
    ensure!(n > 0, "--instances must be at least 1");
    let exe = std::env::current_exe().context("cannot find the bench binary")?;
    let paracloud = exe.with_file_name("paracloud");
    ensure!(
        paracloud.is_file(),
        "no paracloud binary beside the bench ({}): build the workspace (cargo build --release --workspace)",
        paracloud.display()
    );
    if let Some(clash) = host::route_overlapping(opts.subnet)? {
        bail!(
            "--scale-subnet {} overlaps the host route {clash}: pick another",
            opts.subnet
        );
    }
    let dir = scratch.join("scale");
    let rootfs = rootfs::build(&dir.join("rootfs"))?;
    let manifest = dir.join("paracloud.toml");
    fs::write(&manifest, manifest_text(&rootfs, n)?)?;
    let mut platform = Platform::start(&paracloud, &dir.join("root"), opts.subnet, "scale", APP)?;

    let daemon_start_s = platform.started_in.as_secs_f64();
    std::thread::sleep(SETTLE);
    let daemon_idle = sample_rss(platform.daemon_pid)?;
    let dataplane_idle = sample_rss(platform.current_dataplane()?)?;

    crate::check_interrupted()?;
    let start = Instant::now();
    platform.up = true;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    let up_s = start.elapsed().as_secs_f64();

    let ps = platform.ps()?;
    let ready = ps.iter().filter(|i| i.state == "running").count();
    ensure!(
        ps.len() == n && ready == n,
        "after `up`, {ready} of {} instances are running, {n} wanted; not running: {}",
        ps.len(),
        ps.iter()
            .filter(|i| i.state != "running")
            .map(|i| format!("{} ({})", i.instance, i.state))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(address) = ps.iter().find_map(|i| i.address.as_deref()) {
        platform.bridge = bridge_of(address);
    }
    let answered = ps
        .iter()
        .filter(|i| answers(i.address.as_deref()).is_ok())
        .count();

    crate::check_interrupted()?;
    std::thread::sleep(SETTLE);
    let daemon_loaded = sample_rss(platform.daemon_pid)?;
    let dataplane_loaded = sample_rss(platform.current_dataplane()?)?;
    let instance_pids: Vec<i32> = ps.iter().filter_map(|i| i.pid).collect();
    ensure!(
        instance_pids.len() == n,
        "`paracloud ps` shows {} pids for {n} instances",
        instance_pids.len()
    );
    let instance_rss: Vec<u64> = instance_pids
        .iter()
        .filter_map(|&p| host::vm_rss_kib(p))
        .collect();
    let instance_rss_kib_mean = mean(&instance_rss);
    let instance_cgroup_kib_mean =
        instance_cgroup_memory(&platform.cgroup_parent).map(|v| mean(&v));

    let in_cgroups: BTreeSet<i32> = instance_cgroup_pids(&platform.cgroup_parent);
    let procs = host::processes();
    let children: Vec<i32> = procs
        .iter()
        .filter(|(_, ppid)| *ppid == platform.daemon_pid)
        .map(|(pid, _)| *pid)
        .collect();
    let instance_children_of_daemon = children
        .iter()
        .filter(|p| instance_pids.contains(p))
        .count();
    let spawner = children
        .iter()
        .find(|&&p| is_spawner(p))
        .and_then(|&p| Some((p, host::vm_rss_kib(p)?)));
    let other_daemon_children: Vec<String> = children
        .iter()
        .filter(|&&p| p != platform.dataplane_pid && !instance_pids.contains(&p) && !is_spawner(p))
        .map(|&p| describe(p))
        .collect();
    if ps.iter().any(|i| i.pid.is_none()) {
        eprintln!("scale: some instances have no pid in `paracloud ps`: {ps:?}");
    }

    crate::check_interrupted()?;
    let start = Instant::now();
    platform.cli(&["down", "-f"], Some(&manifest))?;
    let down_s = start.elapsed().as_secs_f64();
    platform.up = false;
    let leftover_after_down: Vec<String> = host::processes()
        .iter()
        .filter(|(pid, ppid)| {
            *ppid == platform.daemon_pid && *pid != platform.dataplane_pid && !is_spawner(*pid)
        })
        .map(|(pid, _)| describe(*pid))
        .collect();

    let added = (daemon_loaded + dataplane_loaded) as f64 - (daemon_idle + dataplane_idle) as f64;
    Ok(ScaleReport {
        instances: n,
        daemon_start_s,
        up_s,
        down_s,
        answered,
        daemon_rss_kib: (daemon_idle, daemon_loaded),
        dataplane_rss_kib: (dataplane_idle, dataplane_loaded),
        platform_kib_per_instance: added / n as f64,
        instance_cgroup_kib_mean,
        instance_rss_kib_mean,
        processes_in_instance_cgroups: in_cgroups.len(),
        instance_children_of_daemon,
        other_daemon_children,
        leftover_after_down,
        spawner,
        dataplane_pids: platform.dataplane_pids.clone(),
    })
}

/// One service of `n` busybox httpd instances over `rootfs`, with an HTTP health check every
/// second.
fn manifest_text(rootfs: &Path, n: usize) -> Result<String> {
    httpd_manifest(APP, rootfs, n, ", interval = \"1s\"")
}

/// Application `app` of one service, `web`, of `n` busybox httpd instances over `rootfs`, with
/// an HTTP health check (`health_more` adds its settings, such as `, interval = "1s"`). The
/// stop signal is SIGKILL: httpd has no SIGTERM handler, and pid 1 of a pid namespace ignores
/// signals it does not handle, so SIGTERM would only make `down` wait out the grace period.
pub(crate) fn httpd_manifest(
    app: &str,
    rootfs: &Path,
    n: usize,
    health_more: &str,
) -> Result<String> {
    let image = serde_json::to_string(&format!(
        "dir:{}",
        rootfs.to_str().context("the temp dir path is not UTF-8")?
    ))?;
    Ok(format!(
        "app = \"{app}\"\n\n\
         [services.web]\n\
         image = {image}\n\
         command = [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n\
         ports = [{{ port = 8080, protocol = \"http\" }}]\n\
         health = {{ http = \"/\"{health_more} }}\n\
         replicas = {n}\n\
         stop_signal = \"KILL\"\n"
    ))
}

/// The daemon's bridge for the application whose instance has `address` (a.b.c.d/len): it is
/// named after the /24.
fn bridge_of(address: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = address.split('/').next()?.parse().ok()?;
    let net = Ipv4Net::new(ip, 24).ok()?.trunc();
    Some(format!("pc{:08x}", u32::from(net.network())))
}

pub(crate) fn answers(address: Option<&str>) -> Result<()> {
    let ip = address
        .and_then(|a| a.split('/').next())
        .context("no address")?;
    let addr = SocketAddr::new(ip.parse()?, 8080);
    probe::wait_http(addr, Instant::now(), Duration::from_secs(1), &mut || Ok(())).map(|_| ())
}

/// The median of five VmRSS readings 100 ms apart.
pub(crate) fn sample_rss(pid: i32) -> Result<u64> {
    let mut readings = Vec::new();
    for _ in 0..5 {
        readings.push(host::vm_rss_kib(pid).with_context(|| format!("pid {pid} is gone"))?);
        std::thread::sleep(Duration::from_millis(100));
    }
    readings.sort_unstable();
    Ok(readings[readings.len() / 2])
}

fn mean(values: &[u64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<u64>() as f64 / values.len() as f64
}

/// Memory usage in KiB of each instance cgroup (v1 memory hierarchy, or cgroup2).
fn instance_cgroup_memory(parent: &str) -> Option<Vec<u64>> {
    for dir in host::cgroup_dirs(parent) {
        let usage: Vec<u64> = host::cgroup_procs(&dir)
            .iter()
            .filter_map(|(cg, _)| {
                ["memory.usage_in_bytes", "memory.current"]
                    .iter()
                    .find_map(|f| fs::read_to_string(cg.join(f)).ok())
                    .and_then(|s| s.trim().parse::<u64>().ok())
            })
            .map(|bytes| bytes / 1024)
            .collect();
        if !usage.is_empty() {
            return Some(usage);
        }
    }
    None
}

/// Every process in the instance cgroups, from the hierarchy that tracks them all (pids, or the
/// largest set found).
fn instance_cgroup_pids(parent: &str) -> BTreeSet<i32> {
    host::cgroup_dirs(parent)
        .iter()
        .map(|dir| {
            host::cgroup_procs(dir)
                .into_iter()
                .flat_map(|(_, pids)| pids)
                .collect::<BTreeSet<i32>>()
        })
        .max_by_key(BTreeSet::len)
        .unwrap_or_default()
}

/// Whether `pid` runs the runtime's hidden `__spawner` command.
fn is_spawner(pid: i32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|b| *b == 0).nth(1) == Some(b"__spawner".as_slice())
}

fn describe(pid: i32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("{pid} ({})", comm.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::autoscale_live::AnyPathExists;

    #[test]
    fn the_manifest_names_the_rootfs_and_the_replicas() {
        let text = manifest_text(Path::new("/tmp/x y/rootfs"), 50).unwrap();
        assert!(text.contains("image = \"dir:/tmp/x y/rootfs\""), "{text}");
        assert!(text.contains("replicas = 50"));
        let origin = paracloud_manifest::Origin {
            file: "paracloud.toml".into(),
            base_dir: "/tmp".into(),
        };
        let manifest = paracloud_manifest::parse(&text, &origin, &AnyPathExists).unwrap();
        let web = &manifest.services["web"];
        assert_eq!((manifest.app.as_str(), web.replicas), ("bench", 50));
        assert_eq!(web.stop_signal, "SIGKILL");
    }

    #[test]
    fn the_bridge_is_named_after_the_application_subnet() {
        assert_eq!(bridge_of("10.251.0.16/24").as_deref(), Some("pc0afb0000"));
        assert_eq!(bridge_of("nonsense"), None);
    }
}
