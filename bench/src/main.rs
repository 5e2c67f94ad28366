//! `paracloud-bench`: Paracloud against its peers, measured in one run on one machine.
//!
//! `start` times "create instance" to "HTTP port answers" for the same busybox httpd under the
//! Paracloud runtime, crun, runc and plain unshare; `scale` brings N instances up through the
//! real CLI and daemon and measures what the platform adds per idle instance. See README.md.

mod autoscale;
mod host;
mod migrate;
mod oci;
mod probe;
mod proxy;
mod report;
mod rootfs;
mod scale;
mod start;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;

use crate::report::Report;
use crate::start::Contender;

#[derive(Debug, Parser)]
#[command(
    name = "paracloud-bench",
    about = "Benchmarks of Paracloud against crun, runc and unshare, in one run (needs root)"
)]
struct Cli {
    /// Also write the results, samples included, as JSON to this file
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Keep the temp dir (root filesystems, logs, the scale daemon's state root) for a look
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time from "create instance" to "HTTP port answers", per runtime
    Start(StartArgs),
    /// Time `paracloud up` of N instances; memory and processes per idle instance
    Scale(ScaleArgs),
    /// wrk directly, through Paracloud's data plane, HAProxy and nginx (HTTP and TCP)
    Proxy(ProxyArgs),
    /// The same stateful service moved under a constant request rate: PaCI handover,
    /// stop-and-start, and CRIU alone
    Migrate(MigrateArgs),
    /// The autoscaling report: every trace under the model, HPA and KPA policies, simulated
    /// (no root needed)
    Autoscale(AutoscaleArgs),
    /// `start` then `scale` (then `proxy` with --with-proxy)
    All {
        #[command(flatten)]
        start: StartArgs,
        #[command(flatten)]
        scale: ScaleArgs,
        /// Also run the proxy benchmark (about 90 s more)
        #[arg(long)]
        with_proxy: bool,
        #[command(flatten)]
        proxy: ProxyArgs,
    },
    /// crun and runc runs inside a private mount namespace (started by `start`)
    #[command(name = oci::WORKER_COMMAND, hide = true)]
    OciWorker {
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long)]
        workdir: PathBuf,
        #[arg(long)]
        cgroup_parent: String,
    },
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Requests per second, on schedule (open loop)
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Host port the service is published on (the CRIU peer takes the next one)
    #[arg(long, default_value_t = 21190)]
    migrate_port: u16,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.250.0.0/16")]
    migrate_subnet: Ipv4Net,
    /// Seconds of load before and after each move
    #[arg(long, default_value_t = 1)]
    settle: u64,
    /// MiB of memory of the heavier CRIU peer (0: only the small one)
    #[arg(long, default_value_t = 256)]
    ballast: u32,
}

#[derive(Debug, Args)]
struct AutoscaleArgs {
    /// The folder of real traces (worldcup98/, nasa95/, azure-llm-2023/)
    #[arg(long, value_name = "DIR", default_value = "../shared/traces")]
    traces: PathBuf,
    /// Where the report (report.md, results.json, one SVG per scenario) goes
    #[arg(long, value_name = "DIR", default_value = "bench/results/autoscale")]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only this scenario (step, ramp, diurnal, flash-crowd, worldcup98, nasa95, azure-code,
    /// azure-conv, moving-bottleneck)
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Also write every run's per-second timeline and decisions as `<scenario>.json`
    #[arg(long)]
    timelines: bool,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Measured runs per runtime
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Rounds run first and not counted (caches, lazy set-up)
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Runtimes to compare
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "paracloud,crun,runc,unshare"
    )]
    runtimes: Vec<Contender>,
    /// First loopback port of the crun, runc and unshare servers (a new port per run)
    #[arg(long, default_value_t = 20080)]
    port_base: u16,
    /// Subnet of the bench's bridge for the Paracloud instances
    #[arg(long, default_value = "10.252.0.0/24")]
    subnet: Ipv4Net,
    /// Longest wait for one instance to answer, in seconds
    #[arg(long, default_value_t = 10)]
    limit: u64,
    /// Binary the runtime re-executes as sandbox-init (default: this one, which calls
    /// `run_hidden_command_if_requested` first, as the paracloud binary does)
    #[arg(long, value_name = "FILE")]
    helper: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// Instances of the service
    #[arg(long, default_value_t = 50)]
    instances: usize,
    /// Address pool of the bench's daemon (PARACLOUD_SUBNET)
    #[arg(long, default_value = "10.251.0.0/16")]
    scale_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// Seconds of each measured wrk run
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Seconds of the warm-up wrk run before each measured one (not counted)
    #[arg(long, default_value_t = 1)]
    proxy_warmup: u64,
    /// wrk connection counts
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    connections: Vec<u32>,
    /// Rounds over all targets per connection count (the median is shown)
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// First of 7 loopback ports: the backend, then the proxies' listeners
    #[arg(long, default_value_t = 21080)]
    proxy_port_base: u16,
    /// The paracloud binary (default: `paracloud` beside this one)
    #[arg(long, value_name = "FILE")]
    paracloud: Option<PathBuf>,
}

impl ProxyArgs {
    fn options(&self) -> proxy::ProxyOptions {
        proxy::ProxyOptions {
            duration: self.duration,
            warmup: self.proxy_warmup,
            connections: self.connections.clone(),
            rounds: self.rounds.max(1),
            port_base: self.proxy_port_base,
            paracloud: self.paracloud.clone(),
        }
    }
}

/// Set by SIGINT or SIGTERM: the benchmarks stop at the next check and clean up on the way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once the bench was asked to stop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Catches SIGINT and SIGTERM on a thread of its own, so that an interrupted run still removes
/// its bridge, cgroups, daemon and temp dir (the default action would skip every Drop).
fn catch_interrupts() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::Relaxed);
        eprintln!("interrupted: stopping after the current step and cleaning up");
    });
    Ok(())
}

fn main() {
    // The runtime re-executes this binary as sandbox-init: before anything else.
    paracloud_runtime::run_hidden_command_if_requested();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let (start, scale, proxy) = match cli.command {
        Command::OciWorker {
            rootfs,
            workdir,
            cgroup_parent,
        } => {
            return oci::worker_main(&oci::WorkerSetup {
                rootfs,
                workdir,
                cgroup_parent,
            })
        }
        Command::Autoscale(args) => {
            return autoscale::run(
                &args.traces,
                &args.out,
                args.seed,
                args.only.as_deref(),
                args.timelines,
            )
        }
        Command::Migrate(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench needs root (namespaces, cgroups, bridges, CRIU): run it with sudo"
            );
            catch_interrupts()?;
            let scratch = tempfile::Builder::new()
                .prefix("paracloud-bench-")
                .disable_cleanup(cli.keep)
                .tempdir()
                .context("cannot create a temp dir")?;
            let opts = migrate::MigrateOptions {
                rate: args.rate,
                port: args.migrate_port,
                subnet: args.migrate_subnet,
                settle: Duration::from_secs(args.settle),
                ballast_mib: args.ballast,
            };
            eprintln!(
                "migrate: {} requests/s, PaCI handover, stop and start, CRIU alone ...",
                opts.rate
            );
            let report = migrate::run(&opts, scratch.path())?;
            print!("{}", migrate::markdown(&report));
            if let Some(path) = cli.json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            return Ok(());
        }
        Command::Start(start) => (Some(start), None, None),
        Command::Scale(scale) => (None, Some(scale), None),
        Command::Proxy(proxy) => (None, None, Some(proxy)),
        Command::All {
            start,
            scale,
            with_proxy,
            proxy,
        } => (Some(start), Some(scale), with_proxy.then_some(proxy)),
    };
    ensure!(
        nix::unistd::geteuid().is_root(),
        "paracloud-bench needs root (namespaces, cgroups, bridges): run it with sudo"
    );
    catch_interrupts()?;
    let scratch = tempfile::Builder::new()
        .prefix("paracloud-bench-")
        .disable_cleanup(cli.keep)
        .tempdir()
        .context("cannot create a temp dir")?;
    if cli.keep {
        eprintln!("the temp dir {} will be kept", scratch.path().display());
    }

    let mut report = Report {
        date: host::utc_date(),
        kernel: host::kernel(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: host::load_average(),
        start: None,
        scale: None,
        method: report::METHOD.to_string(),
    };
    if let Some(args) = start {
        eprintln!(
            "start: {} runs (+{} warm-up) of {} ...",
            args.runs,
            args.warmup,
            args.runtimes
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let opts = start::StartOptions {
            runs: args.runs,
            warmup: args.warmup,
            contenders: args.runtimes,
            port_base: args.port_base,
            subnet: args.subnet,
            limit: Duration::from_secs(args.limit),
            helper: args.helper,
        };
        report.start = Some(start::run(&opts, scratch.path())?);
    }
    if let Some(args) = scale {
        eprintln!(
            "scale: {} instances through paracloud up ...",
            args.instances
        );
        let opts = scale::ScaleOptions {
            instances: args.instances,
            subnet: args.scale_subnet,
        };
        report.scale = Some(scale::run(&opts, scratch.path())?);
    }
    let proxy_report = match proxy {
        Some(args) => {
            eprintln!("proxy: wrk through Paracloud, HAProxy and nginx ...");
            Some(proxy::run(&args.options(), scratch.path())?)
        }
        None => None,
    };
    if report.start.is_some() || report.scale.is_some() {
        print!("{}", report::markdown(&report));
    }
    if let Some(p) = &proxy_report {
        print!("{}", proxy::markdown(p));
    }

    if let Some(path) = cli.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(p), Some(map)) = (&proxy_report, json.as_object_mut()) {
            map.insert("proxy".to_string(), serde_json::to_value(p)?);
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
