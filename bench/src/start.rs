//! The start benchmark: time from "create instance" to "HTTP port answers" for busybox httpd in
//! a Paracloud sandbox, under crun and runc, and under plain unshare, interleaved round-robin in
//! one run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use paracloud_runtime::start_steps::{StartSide, StartSteps};
use paracloud_runtime::{
    IdRange, InstanceConfig, Limits, NetworkAttachment, NetworkConfig, Rootfs, Runtime,
    RuntimeConfig,
};
use serde::Serialize;

use crate::host;
use crate::oci::{OciRuntime, Worker, WorkerSetup};
use crate::probe::{self, Ready};
use crate::rootfs;
use crate::stats::Summary;

/// The port busybox httpd listens on inside Paracloud instances (each has its own address).
const INSTANCE_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Contender {
    Paracloud,
    Crun,
    Runc,
    Unshare,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Paracloud => "paracloud",
            Contender::Crun => "crun",
            Contender::Runc => "runc",
            Contender::Unshare => "unshare",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StartOptions {
    pub runs: usize,
    pub warmup: usize,
    pub contenders: Vec<Contender>,
    /// First loopback port for crun, runc and unshare (one new port per run).
    pub port_base: u16,
    /// The /24 of the bench's own bridge for the Paracloud instances.
    pub subnet: Ipv4Net,
    /// Longest wait for one instance to answer.
    pub limit: Duration,
    /// The binary the runtime re-executes as sandbox-init (None: this bench binary).
    pub helper: Option<PathBuf>,
    /// Paracloud's runs also note when each step of the start ended (daemon side and
    /// sandbox-init), for the per-step table.
    pub steps: bool,
    /// Paracloud's instances get a user namespace of their own, as the daemon gives them by
    /// default.
    pub userns: bool,
}

/// The host ids of the bench's instances with `--userns`: a range far above the daemon's
/// (which hands out ranges from 2^30 up), so that no running application shares it.
const BENCH_ID_RANGE: IdRange = IdRange {
    host: (1 << 31) - (1 << 16),
    size: 1 << 16,
};

#[derive(Debug, Serialize)]
pub struct StartReport {
    pub runs: usize,
    pub warmup: usize,
    pub rows: Vec<Row>,
    /// Facts about the set-up the figures depend on.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub contender: Contender,
    /// Create → first `GET /` answered 200 (the headline figure).
    pub http: Option<Summary>,
    /// Create → first TCP connection accepted.
    pub connect: Option<Summary>,
    /// Paracloud only: create → `Runtime::spawn` returned (the command was exec'd).
    pub spawned: Option<Summary>,
    /// Paracloud with `--steps` only: each step of a start, medians over the measured runs.
    pub steps: Vec<StepRow>,
    pub http_ms: Vec<f64>,
    pub failures: usize,
    /// The first few distinct errors, verbatim.
    pub errors: Vec<String>,
}

impl Row {
    fn new(contender: Contender) -> Self {
        Self {
            contender,
            http: None,
            connect: None,
            spawned: None,
            steps: vec![],
            http_ms: vec![],
            failures: 0,
            errors: vec![],
        }
    }
}

/// One step of a Paracloud start, over the measured runs.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub side: StartSide,
    pub name: String,
    /// Median time since the step before it on the same side.
    pub median_us: f64,
    /// Median time from the start of the spawn to the end of this step.
    pub ends_at_us: f64,
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    ready: Ready,
    spawned_us: Option<u64>,
    steps: Option<StartSteps>,
}

/// The steps of every run, in the order of the first run's; a step missing from some runs gets
/// the median of the runs that have it. The client's own two steps close the table: the first
/// accepted connection and the first HTTP answer, counted from the exec.
fn step_rows(samples: &[Sample]) -> Vec<StepRow> {
    let mut order: Vec<(StartSide, String)> = Vec::new();
    let mut durations: BTreeMap<(StartSide, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for sample in samples {
        let Some(steps) = &sample.steps else { continue };
        let begin = steps.steps.first().map(|s| s.at_ns).unwrap_or(0);
        for ((side, name, us), step) in steps.durations_us().into_iter().zip(&steps.steps) {
            let key = (side, name.to_string());
            if !durations.contains_key(&key) {
                order.push(key.clone());
            }
            let (took, ends) = durations.entry(key).or_default();
            took.push(us);
            ends.push(step.at_ns.saturating_sub(begin) as f64 / 1000.0);
        }
    }
    let mut rows: Vec<StepRow> = order
        .into_iter()
        .map(|key| {
            let (took, ends) = &durations[&key];
            StepRow {
                side: key.0,
                name: key.1,
                median_us: median(took),
                ends_at_us: median(ends),
            }
        })
        .collect();
    let with_steps: Vec<&Sample> = samples.iter().filter(|s| s.steps.is_some()).collect();
    if !with_steps.is_empty() {
        let since_spawn = |us: fn(&Sample) -> u64| {
            let from_exec: Vec<f64> = with_steps
                .iter()
                .map(|s| us(s).saturating_sub(s.spawned_us.unwrap_or(0)) as f64)
                .collect();
            let ends: Vec<f64> = with_steps.iter().map(|s| us(s) as f64).collect();
            (median(&from_exec), median(&ends))
        };
        let (accept, accept_end) = since_spawn(|s| s.ready.connect_us);
        let (answer, answer_end) = since_spawn(|s| s.ready.http_us);
        // The client's clock starts a little before the spawn's first step; close enough for
        // steps of tens of microseconds and more.
        rows.push(StepRow {
            side: StartSide::Daemon,
            name: "client: first TCP connection accepted (after the exec)".into(),
            median_us: accept,
            ends_at_us: accept_end,
        });
        rows.push(StepRow {
            side: StartSide::Daemon,
            name: "client: first HTTP answer (after the exec)".into(),
            median_us: answer,
            ends_at_us: answer_end,
        });
    }
    rows
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[n / 2],
    }
}

pub fn run(opts: &StartOptions, scratch: &Path) -> Result<StartReport> {
    let total = opts.runs + opts.warmup;
    if total == 0 {
        bail!("nothing to measure: --runs is 0");
    }
    let rootfs = rootfs::build(&scratch.join("rootfs"))?;
    let mut notes = Vec::new();
    let mut contenders: Vec<Contender> = Vec::new();
    for &c in &opts.contenders {
        if !contenders.contains(&c) {
            contenders.push(c);
        }
    }
    let mut rows: BTreeMap<Contender, Row> = contenders.iter().map(|&c| (c, Row::new(c))).collect();
    let mut samples: BTreeMap<Contender, Vec<Sample>> =
        contenders.iter().map(|&c| (c, vec![])).collect();
    // Contenders that could not be set up, or failed their first three runs: skipped.
    let mut disabled: BTreeSet<Contender> = BTreeSet::new();
    let mut setup_failed = |rows: &mut BTreeMap<Contender, Row>, c: Contender, e: anyhow::Error| {
        fail(rows.get_mut(&c), format!("set-up: {e:#}"));
        disabled.insert(c);
    };

    // Set up every contender first; one that cannot be set up is reported, not fatal.
    let mut paracloud = None;
    if opts.contenders.contains(&Contender::Paracloud) {
        match ParacloudRunner::new(
            &rootfs,
            &scratch.join("paracloud"),
            opts.subnet,
            total,
            opts.helper.as_deref(),
        ) {
            Ok(runner) => {
                notes.push(format!(
                    "paracloud: sandbox-init helper {}",
                    runner.runtime.config.helper_exe.display()
                ));
                notes.push(format!(
                    "paracloud: cgroup layout {:?}, bridge {} ({}), a new instance address per run from {}, port {INSTANCE_PORT}",
                    runner.runtime.cgroup_mode(),
                    runner.bridge,
                    runner.gateway,
                    host_at(runner.gateway, 2),
                ));
                if opts.userns {
                    notes.push(format!(
                        "paracloud: a user namespace per instance, root inside is host uid {} \
                         (the daemon's default; the peers run without one)",
                        BENCH_ID_RANGE.host
                    ));
                }
                paracloud = Some(runner);
            }
            Err(e) => setup_failed(&mut rows, Contender::Paracloud, e),
        }
    }
    let wants_oci = opts
        .contenders
        .iter()
        .any(|c| matches!(c, Contender::Crun | Contender::Runc));
    let mut worker = None;
    if wants_oci {
        for runtime in [OciRuntime::Crun, OciRuntime::Runc] {
            let c = oci_contender(runtime);
            if opts.contenders.contains(&c) {
                match host::version_of(runtime.binary()) {
                    Ok(version) => notes.push(format!("{}: {version}", runtime.binary())),
                    Err(e) => setup_failed(&mut rows, c, e),
                }
            }
        }
        let setup = WorkerSetup {
            rootfs: rootfs.clone(),
            workdir: scratch.join("oci"),
            cgroup_parent: oci_cgroup_parent(),
        };
        match Worker::start(&setup) {
            Ok(w) => {
                notes.push(format!(
                    "crun, runc: run from a private mount namespace{}",
                    if w.unified_unmounted {
                        " with /sys/fs/cgroup/unified unmounted"
                    } else {
                        " (/sys/fs/cgroup/unified was not mounted)"
                    }
                ));
                worker = Some(OciGuard { worker: Some(w) });
            }
            Err(e) => {
                for c in [Contender::Crun, Contender::Runc] {
                    setup_failed(&mut rows, c, anyhow::anyhow!("{e:#}"));
                }
            }
        }
    }
    if opts.contenders.contains(&Contender::Unshare) {
        match host::version_of("unshare") {
            Ok(version) => notes.push(format!("unshare: {version}")),
            Err(e) => setup_failed(&mut rows, Contender::Unshare, e),
        }
    }

    let mut ports = PortCounter::new(opts.port_base, total * 3)?;
    let mut successes: BTreeMap<Contender, usize> = BTreeMap::new();
    for round in 0..total {
        crate::check_interrupted()?;
        let measured = round >= opts.warmup;
        // Rotate who goes first, so no contender always runs right after the same other one.
        let n = contenders.len();
        for k in 0..n {
            let c = contenders[(round + k) % n];
            if disabled.contains(&c) {
                continue;
            }
            let result = match c {
                Contender::Paracloud => match paracloud.as_mut() {
                    Some(p) => p.run_once(round, opts.limit, opts.steps, opts.userns),
                    None => continue,
                },
                Contender::Crun | Contender::Runc => {
                    let Some(w) = worker.as_mut().and_then(|w| w.worker.as_mut()) else {
                        continue;
                    };
                    let runtime = if c == Contender::Crun {
                        OciRuntime::Crun
                    } else {
                        OciRuntime::Runc
                    };
                    let id = format!("pcbench-{}-{}-{round}", std::process::id(), c.name());
                    ports
                        .next()
                        .and_then(|port| w.run(runtime, &id, port, opts.limit))
                        .map(|ready| Sample {
                            ready,
                            spawned_us: None,
                            steps: None,
                        })
                }
                Contender::Unshare => ports.next().and_then(|port| {
                    run_unshare(&rootfs, &scratch.join("unshare"), port, opts.limit)
                }),
            };
            match result {
                Ok(sample) => {
                    *successes.entry(c).or_default() += 1;
                    if measured {
                        samples.get_mut(&c).expect("listed").push(sample);
                    }
                }
                Err(e) => {
                    fail(rows.get_mut(&c), format!("run {round}: {e:#}"));
                    if rows[&c].failures >= 3 && !successes.contains_key(&c) {
                        disabled.insert(c);
                    }
                }
            }
        }
    }
    drop(worker);
    drop(paracloud);

    let rows = rows
        .into_values()
        .map(|mut row| {
            let s = &samples[&row.contender];
            let ms = |us: u64| us as f64 / 1000.0;
            row.http_ms = s.iter().map(|x| ms(x.ready.http_us)).collect();
            row.http = Summary::of(&row.http_ms);
            row.connect =
                Summary::of(&s.iter().map(|x| ms(x.ready.connect_us)).collect::<Vec<_>>());
            row.spawned = Summary::of(
                &s.iter()
                    .filter_map(|x| x.spawned_us.map(ms))
                    .collect::<Vec<_>>(),
            );
            row.steps = step_rows(s);
            row
        })
        .collect();
    Ok(StartReport {
        runs: opts.runs,
        warmup: opts.warmup,
        rows,
        notes,
    })
}

fn fail(row: Option<&mut Row>, error: String) {
    if let Some(row) = row {
        row.failures += 1;
        if row.errors.len() < 3 && !row.errors.contains(&error) {
            eprintln!("{}: {error}", row.contender.name());
            row.errors.push(error);
        }
    }
}

fn oci_contender(runtime: OciRuntime) -> Contender {
    match runtime {
        OciRuntime::Crun => Contender::Crun,
        OciRuntime::Runc => Contender::Runc,
    }
}

fn oci_cgroup_parent() -> String {
    format!("paracloud-bench-{}-oci", std::process::id())
}

/// Hands out a fresh loopback port per run, so no run can meet the previous run's server.
struct PortCounter {
    next: u16,
    end: u16,
}

impl PortCounter {
    fn new(base: u16, count: usize) -> Result<Self> {
        let end = usize::from(base) + count;
        if base < 1024 || end > usize::from(u16::MAX) {
            bail!("--port-base {base} leaves no room for {count} ports below 65536 (use 1024..)");
        }
        Ok(Self {
            next: base,
            end: end as u16,
        })
    }

    fn next(&mut self) -> Result<u16> {
        if self.next >= self.end {
            bail!("out of ports");
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// Shuts the OCI worker down and removes the cgroups crun and runc left behind.
struct OciGuard {
    worker: Option<Worker>,
}

impl Drop for OciGuard {
    fn drop(&mut self) {
        drop(self.worker.take());
        host::remove_cgroup_tree(&oci_cgroup_parent());
    }
}

/// `unshare --fork --pid --mount --uts --ipc --mount-proc chroot ROOTFS busybox httpd` on the
/// host network; killed (its whole process group) after the clock stops.
fn run_unshare(rootfs: &Path, logs: &Path, port: u16, limit: Duration) -> Result<Sample> {
    fs::create_dir_all(logs)?;
    let log_path = logs.join(format!("{port}.log"));
    let log = File::create(&log_path)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if probe::is_listening(addr) {
        bail!("{addr} is already in use: pick another --port-base");
    }
    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args([
            "--fork",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--mount-proc",
            "--kill-child",
        ])
        .arg("chroot")
        .arg(rootfs)
        .args([
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            &port.to_string(),
            "-h",
            "/www",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot run unshare")?;
    let ready = probe::wait_http(addr, start, limit, &mut || match child.try_wait()? {
        Some(status) => bail!("unshare exited: {status}"),
        None => Ok(()),
    });
    let group = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    let ready = ready.with_context(|| {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        format!("unshare, output {:?}", log.trim())
    })?;
    let _ = fs::remove_file(&log_path);
    Ok(Sample {
        ready,
        spawned_us: None,
        steps: None,
    })
}

/// The runtime crate used directly: a bridge of the bench's own and one instance per run.
struct ParacloudRunner {
    tokio: tokio::runtime::Runtime,
    runtime: Runtime,
    bridge: String,
    gateway: Ipv4Net,
    rootfs: PathBuf,
    dir: PathBuf,
}

impl ParacloudRunner {
    fn new(
        rootfs: &Path,
        dir: &Path,
        subnet: Ipv4Net,
        runs: usize,
        helper: Option<&Path>,
    ) -> Result<Self> {
        if subnet.prefix_len() > 24 {
            bail!("--subnet {subnet}: use a /24 or larger");
        }
        // One fresh address per run: a reused one would meet the host's neighbour entry for
        // the previous instance's MAC address.
        if runs > 250 {
            bail!("at most 250 runs (warm-up included) fit the bench's /24, not {runs}");
        }
        if let Some(clash) = host::route_overlapping(subnet)? {
            bail!("--subnet {subnet} overlaps the host route {clash}: pick another");
        }
        let gateway = Ipv4Net::new(host_at(subnet, 1), 24)?;
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let runtime = Runtime::new(RuntimeConfig {
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: paracloud_cgroup_parent(),
            helper_exe: match helper {
                Some(path) => path
                    .canonicalize()
                    .with_context(|| format!("--helper {}", path.display()))?,
                None => std::env::current_exe().context("cannot find the bench binary")?,
            },
        })
        .context("Runtime::new")?;
        let bridge = format!("pcbench{}", std::process::id() % 100_000_000);
        let net = NetworkConfig {
            bridge: bridge.clone(),
            gateway,
            service_addresses: vec![],
            // No data plane serves this bridge: its instances reach nothing of the host.
            served: vec![],
            served_udp: vec![],
            segments: Vec::new(),
        };
        fs::create_dir_all(dir)?;
        let runner = Self {
            tokio,
            runtime,
            bridge,
            gateway,
            rootfs: rootfs.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        // From here on, Drop removes the bridge and the cgroups.
        runner
            .tokio
            .block_on(runner.runtime.ensure_network(&net))
            .context("ensure_network")?;
        Ok(runner)
    }

    fn run_once(
        &mut self,
        round: usize,
        limit: Duration,
        steps: bool,
        userns: bool,
    ) -> Result<Sample> {
        let id = format!("bench-{round}");
        let dir = self.dir.join(&id);
        let ip = host_at(
            self.gateway,
            u8::try_from(round + 2).context("out of addresses")?,
        );
        let cfg = InstanceConfig {
            id: id.clone(),
            hostname: "bench".into(),
            dir: dir.clone(),
            rootfs: Rootfs::Dir {
                path: self.rootfs.clone(),
            },
            argv: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
                .map(String::from)
                .to_vec(),
            env: BTreeMap::from([("PATH".to_string(), "/bin".to_string())]),
            working_dir: None,
            user: None,
            mounts: vec![],
            hosts: vec![],
            network: Some(NetworkAttachment {
                bridge: self.bridge.clone(),
                address: Ipv4Net::new(ip, 24)?,
                segments: Vec::new(),
                routes: Vec::new(),
                // As the daemon configures its instances: the gateway and 14 service addresses
                // on the bridge, whose link-layer address the instance is told.
                gateway: Some(host_of(ip, 1)),
                bridge_addresses: (2..16).map(|n| host_of(ip, n)).collect(),
            }),
            limits: Limits::default(),
            capabilities: vec![],
            log_path: dir.join("output.log"),
            owned: Vec::new(),
            userns: userns.then_some(BENCH_ID_RANGE),
            sandbox: Default::default(),
        };
        let addr = SocketAddr::new(IpAddr::V4(ip), INSTANCE_PORT);

        let start = Instant::now();
        fs::create_dir_all(&dir)?;
        let spawned = match steps {
            true => self
                .tokio
                .block_on(self.runtime.spawn_with_steps(&cfg))
                .map(|(p, steps)| (p, Some(steps))),
            false => self
                .tokio
                .block_on(self.runtime.spawn(&cfg))
                .map(|p| (p, None)),
        };
        let (process, steps) = match spawned {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e).context("Runtime::spawn");
            }
        };
        let spawned_us = probe::micros(start.elapsed());
        let ready = probe::wait_http(addr, start, limit, &mut || Ok(()));

        let log = fs::read_to_string(&cfg.log_path).unwrap_or_default();
        let stopped = self.stop(&id, &process);
        let _ = fs::remove_dir_all(&dir);
        let ready = ready.with_context(|| format!("instance output: {:?}", log.trim()))?;
        stopped?;
        Ok(Sample {
            ready,
            spawned_us: Some(spawned_us),
            steps,
        })
    }

    fn stop(&self, id: &str, process: &paracloud_runtime::Process) -> Result<()> {
        self.runtime
            .signal(process, Signal::SIGKILL)
            .context("signal")?;
        let exit = self
            .tokio
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), self.runtime.wait(id, process)).await
            })
            .context("the instance did not exit within 10 s of SIGKILL")?
            .context("wait")?;
        if exit.signal != Some(Signal::SIGKILL as i32) {
            eprintln!("paracloud: {id} ended with {exit:?}, not by SIGKILL");
        }
        self.runtime.cleanup(id).context("cleanup")
    }
}

impl Drop for ParacloudRunner {
    fn drop(&mut self) {
        if let Err(e) = self
            .tokio
            .block_on(self.runtime.remove_network(&self.bridge))
        {
            eprintln!("paracloud: removing the bridge {}: {e}", self.bridge);
        }
        host::remove_cgroup_tree(&paracloud_cgroup_parent());
    }
}

fn paracloud_cgroup_parent() -> String {
    format!("paracloud-bench-{}", std::process::id())
}

/// Host `n` of the /24 that holds `net`'s network address.
fn host_at(net: Ipv4Net, n: u8) -> Ipv4Addr {
    let octets = net.network().octets();
    Ipv4Addr::new(octets[0], octets[1], octets[2], n)
}

/// Host `n` of the /24 that `ip` is in.
fn host_of(ip: std::net::Ipv4Addr, n: u8) -> std::net::Ipv4Addr {
    let [a, b, c, _] = ip.octets();
    std::net::Ipv4Addr::new(a, b, c, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_handed_out_once() {
        let mut ports = PortCounter::new(20000, 2).unwrap();
        assert_eq!(ports.next().unwrap(), 20000);
        assert_eq!(ports.next().unwrap(), 20001);
        assert!(ports.next().is_err());
        assert!(PortCounter::new(65000, 1000).is_err());
        assert!(PortCounter::new(80, 10).is_err());
    }

    #[test]
    fn hosts_are_numbered_in_the_subnet() {
        let net: Ipv4Net = "10.252.0.0/24".parse().unwrap();
        assert_eq!(host_at(net, 1), Ipv4Addr::new(10, 252, 0, 1));
        let gateway: Ipv4Net = "10.252.0.1/24".parse().unwrap();
        assert_eq!(host_at(gateway, 7), Ipv4Addr::new(10, 252, 0, 7));
    }
}
