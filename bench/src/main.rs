//! `paracloud-bench`: Paracloud against its peers, measured in one run on one machine.
//!
//! `start` times "create instance" to "HTTP port answers" for the same busybox httpd under the
//! Paracloud runtime, crun, runc and plain unshare; `scale` brings N instances up through the
//! real CLI and daemon and measures what the platform adds per idle instance; `load` replays a
//! request trace against a URL, and `autoscale-live` against the shop run by an autoscaler. See
//! README.md.

mod autoscale;
mod autoscale_live;
mod builds;
mod capsule;
mod catalog;
mod checks;
mod compose;
mod dashboard;
mod density;
mod host;
mod images;
mod latency;
mod load;
mod migrate;
mod oci;
mod platform;
mod probe;
mod proxy;
mod remote_api;
mod report;
mod restart;
mod rootfs;
mod scale;
mod start;
mod static_site;
mod stats;
mod taskfarm;
mod udp;
mod wordpress;

use std::path::{Path, PathBuf};
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
    /// Pull + unpack of a ~100 MB layered image from a local registry against skopeo + umoci,
    /// and instance start from that image against from `host`
    Images(ImagesArgs),
    /// A cold multi-stage build with and without a RUN cache mount
    Builds(BuildsArgs),
    /// One service brought up in steps to a thousand idle instances: time per instance,
    /// platform memory and idle CPU, the daemon's descriptors, `ps` and API latency per step
    Density(DensityArgs),
    /// `paracloud up` of a Compose application from a warm image store
    Compose(ComposeArgs),
    /// The catalogue's PostgreSQL under pgbench: through its addresses against straight at the
    /// server, reads with 0, 1 and 2 replicas, a replica's copy against the database's size, and
    /// the primary killed under writes
    Catalog(CatalogArgs),
    /// The catalogue's database health checks (run every second, with the server's query count)
    /// against the exec probe peers run (pg_isready, mariadb-admin ping, redis-cli ping): CPU per
    /// check in the instance (root)
    Checks(ChecksArgs),
    /// The catalogue's static site against nginx straight on the host: wrk for the same files
    /// (root)
    Static(StaticArgs),
    /// The task farm against fixed worker pools chosen by hand: finish time and cost (instance
    /// time) on one bag of tasks with varied run times (root)
    Taskfarm(TaskfarmArgs),
    /// The ConPaaS example (examples/wordpress) under load: fixed web instance counts chosen by
    /// hand against the autoscaler's model, HPA and KPA policies (root)
    Wordpress(WordpressArgs),
    /// The API's latency with 50 concurrent clients, over HTTPS with a token (remote) and over
    /// the Unix socket (local)
    RemoteApi(RemoteApiArgs),
    /// The dashboard's first load (files, bytes, time) and the daemon's CPU per open dashboard
    Dashboard(DashboardArgs),
    /// The same stateful service moved under a constant request rate: PaCI handover,
    /// stop-and-start, and CRIU alone
    Migrate(MigrateArgs),
    /// The same keep-alive load through the data plane, steady and while `paracloud dataplane
    /// restart` replaces it again and again: failed requests and latency percentiles
    Restart(RestartArgs),
    /// Request and answer datagrams from several flows directly, through Paracloud's data plane
    /// (a UDP listener) and through nginx's stream UDP proxy
    Udp(UdpArgs),
    /// Attach to a running instance: `paracloud capsule run` against nsenter, crun exec and
    /// runc exec, and one capsule run on 50 instances at once
    Capsule(CapsuleArgs),
    /// The autoscaling report: every trace under the model, HPA and KPA policies, simulated
    /// (no root needed)
    Autoscale(AutoscaleArgs),
    /// Replay a request trace against a URL, open loop; print the latency and SLO figures as JSON
    Load {
        #[command(flatten)]
        load: LoadArgs,
        /// Where the requests go: http://IP:PORT/PATH
        #[arg(long)]
        url: String,
    },
    /// The shop with an autoscaler on a daemon of its own, under a replayed trace: SLO
    /// violations, instance- and CPU-seconds, actions, as JSON
    AutoscaleLive(LiveArgs),
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
struct AutoscaleArgs {
    /// The folder of real traces (worldcup98/, nasa95/, azure-llm-2023/)
    #[arg(long, value_name = "DIR", default_value = "../shared/traces")]
    traces: PathBuf,
    /// Where the report (report.md, results.json, one SVG per scenario) goes [default:
    /// bench/results/autoscale, or bench/results/autoscale-cluster with --platform cluster]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What the platform adds to starting instances and changing their CPU: `local` (Paracloud
    /// on one host) or `cluster` (a Kubernetes cluster's pod start and in-place resize
    /// latencies, simulated)
    #[arg(long, value_name = "local|cluster", default_value = "local")]
    platform: paracloud_sim::Platform,
    /// Only this scenario (step, ramp, diurnal, flash-crowd, worldcup98, nasa95, azure-code,
    /// azure-conv, moving-bottleneck)
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Also write every run's per-second timeline and decisions as `<scenario>.json`
    #[arg(long)]
    timelines: bool,
}

#[derive(Debug, Args)]
struct UdpArgs {
    /// Flow counts, each flow a client socket sending back to back
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    flows: Vec<usize>,
    /// Seconds of each measured run (after a second of warm-up)
    #[arg(long, default_value_t = 5)]
    udp_seconds: u64,
    /// The echo backend's loopback port; Paracloud takes the next, nginx the one after
    #[arg(long, default_value_t = 21180)]
    udp_port_base: u16,
    /// The `paracloud` binary whose `__dataplane` is measured (default: the one beside the bench)
    #[arg(long, value_name = "FILE")]
    paracloud: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RestartArgs {
    /// Keep-alive clients, one connection each, requests back to back
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of each phase (steady, then restarting)
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds between two restarts in the restarting phase
    #[arg(long, default_value_t = 1.0)]
    every: f64,
    /// Host port the service is published on
    #[arg(long, default_value_t = 23195)]
    restart_port: u16,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.247.0.0/16")]
    restart_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// Requests per second, on schedule (open loop)
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Host port the service is published on (the CRIU peer takes the next one)
    #[arg(long, default_value_t = 23190)]
    migrate_port: u16,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.254.0.0/16")]
    migrate_subnet: Ipv4Net,
    /// Seconds of load before and after each move
    #[arg(long, default_value_t = 1)]
    settle: u64,
    /// MiB of memory of the heavier CRIU peer (0: only the small one)
    #[arg(long, default_value_t = 256)]
    ballast: u32,
}

#[derive(Debug, Args)]
struct CapsuleArgs {
    /// Rounds of each contender (interleaved)
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Instances the fan-out run attaches to at once
    #[arg(long, default_value_t = 50)]
    fan_out: u32,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.248.0.0/16")]
    capsule_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct BuildsArgs {
    /// Builds of each variant after the first (interleaved)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// MiB the slow step compresses
    #[arg(long, default_value_t = 64)]
    megabytes: u32,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.246.0.0/16")]
    builds_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// Dashboards open at once while the daemon's CPU is measured
    #[arg(long, default_value_t = 10)]
    pages: usize,
    /// How long each CPU measurement lasts
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    window: std::time::Duration,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.243.0.0/16")]
    dashboard_subnet: Ipv4Net,
    /// Loopback port of the remote API
    #[arg(long, default_value_t = 18444)]
    dashboard_port: u16,
}

#[derive(Debug, Args)]
struct DensityArgs {
    /// Instance counts, ascending (at most 1,007: one application's /22)
    #[arg(long, value_delimiter = ',', default_value = "250,500,750,1000")]
    steps: Vec<usize>,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.242.0.0/16")]
    density_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct RemoteApiArgs {
    /// Clients sending at once
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Requests each client sends, one after the other
    #[arg(long, default_value_t = 40)]
    requests: usize,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.244.0.0/16")]
    api_subnet: Ipv4Net,
    /// Loopback port of the remote API
    #[arg(long, default_value_t = 18443)]
    api_port: u16,
}

#[derive(Debug, Args)]
struct ComposeArgs {
    /// `down` and `up` rounds after the first `up`
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.245.0.0/16")]
    compose_subnet: Ipv4Net,
    /// Loopback port the application's web front end is published on
    #[arg(long, default_value_t = 28080)]
    compose_port: u16,
}

#[derive(Debug, Args)]
struct CatalogArgs {
    /// Seconds of each pgbench run
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// Rounds of each side-by-side comparison, and primaries killed
    #[arg(long, default_value_t = 3)]
    pgbench_rounds: usize,
    /// pgbench's clients
    #[arg(long, default_value_t = 8)]
    pgbench_clients: u32,
    /// pgbench scale factors a replica's copy is timed at
    #[arg(long, value_delimiter = ',', default_value = "1,5,20")]
    pgbench_sizes: Vec<u32>,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.241.0.0/16")]
    catalog_subnet: Ipv4Net,
    /// Loopback port of the HAProxy the data plane is compared with
    #[arg(long, default_value_t = 25432)]
    haproxy_port: u16,
}

#[derive(Debug, Args)]
struct ChecksArgs {
    /// Checks run back to back in one measurement
    #[arg(long, default_value_t = 50)]
    check_runs: usize,
    /// Measurements of each command, alternated
    #[arg(long, default_value_t = 5)]
    check_rounds: usize,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.249.0.0/16")]
    checks_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct StaticArgs {
    /// Seconds of each measured wrk run
    #[arg(long, default_value_t = 10)]
    static_seconds: u64,
    /// Rounds (the sides alternate which goes first)
    #[arg(long, default_value_t = 3)]
    static_rounds: usize,
    /// wrk's connections
    #[arg(long, default_value_t = 16)]
    static_connections: u32,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.243.0.0/16")]
    static_subnet: Ipv4Net,
    /// The site's published port, and the host nginx's
    #[arg(long, default_value_t = 28090)]
    static_port: u16,
}

#[derive(Debug, Args)]
struct TaskfarmArgs {
    /// Tasks in the bag (run times from 0.3 s to 3 s)
    #[arg(long, default_value_t = 40)]
    farm_tasks: usize,
    /// The farm's deadline, in seconds
    #[arg(long, default_value_t = 30)]
    farm_deadline: u64,
    /// Sizes of the fixed pools it is compared with
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    farm_pools: Vec<u32>,
    /// Rounds of the whole comparison
    #[arg(long, default_value_t = 2)]
    farm_rounds: usize,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.242.0.0/16")]
    farm_subnet: Ipv4Net,
}

#[derive(Debug, Args)]
struct WordpressArgs {
    /// Seconds of load in each arm
    #[arg(long, default_value_t = 30)]
    wp_seconds: u64,
    /// wrk's connections
    #[arg(long, default_value_t = 16)]
    wp_connections: u32,
    /// Fixed web instance counts it is compared with
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    wp_fixed: Vec<u32>,
    /// Address pool of the bench's daemon
    #[arg(long, default_value = "10.241.0.0/16")]
    wp_subnet: Ipv4Net,
    /// The site's published port
    #[arg(long, default_value_t = 28190)]
    wp_port: u16,
}

#[derive(Debug, Args)]
struct ImagesArgs {
    /// Layers of the image (plus one holding busybox)
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Megabytes of the image, unpacked
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    /// Pull rounds (one Paracloud pull and one skopeo + umoci each, order alternating)
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Instance starts per root filesystem
    #[arg(long, default_value_t = 20)]
    starts: usize,
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
    /// Paracloud's runs also note when each step of a start ends, for a table of where the
    /// time goes (a file write more per start)
    #[arg(long)]
    steps: bool,
    /// Paracloud's instances get a user namespace of their own, as the daemon's do by default
    /// (the peers run without one)
    #[arg(long)]
    userns: bool,
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
    /// The backend is the shop's `web` tier (one instance, on a daemon of the bench's own)
    /// instead of nginx's fixed answer; wrk asks it for PATH: `/` is the page, which asks `api`
    /// and `kv` behind it, `/healthz` web's own answer
    #[arg(long, value_name = "PATH", value_parser = url_path)]
    shop: Option<String>,
    /// Address pool of the daemon that runs the shop with --shop
    #[arg(long, default_value = "10.246.0.0/16")]
    shop_subnet: Ipv4Net,
    /// Also write DIR/report.md (the live and simulated figures side by side, with the run's
    /// parameters) and DIR/results.json
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
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
            shop: self.shop.clone().map(|path| proxy::ShopBackend {
                path,
                subnet: self.shop_subnet,
            }),
        }
    }
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Requests per bucket: numbers (one per line or separated by spaces), CSV `time,count`
    /// (seconds or `YYYY-MM-DD HH:MM:SS`), or the Azure LLM CSV (one request per row)
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Seconds each number of a plain trace covers (CSV traces carry their times)
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    bucket: f64,
    /// Trace time to start from, in seconds
    #[arg(long = "from", default_value_t = 0.0, value_name = "SECONDS")]
    from: f64,
    /// Trace time to replay, in seconds (default: to its end)
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Play the trace this many times faster (its rates go up as much)
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    speedup: f64,
    /// Multiply every rate by this
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    scale: f64,
    /// Seed of the Poisson arrivals
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// SLO latency in milliseconds
    #[arg(long, default_value_t = 200.0)]
    slo_ms: f64,
    /// SLO percentile: 50, 90, 95 or 99
    #[arg(long, default_value_t = 95.0)]
    slo_percentile: f64,
    /// A request without an answer after this many milliseconds failed
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Most connections open at once (a request that needs one more fails)
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
}

impl LoadArgs {
    /// The options of a replay against `target`, checked, with what it will send on stderr.
    fn options(&self, target: load::Target) -> Result<load::LoadOptions> {
        ensure!(
            self.speedup.is_finite() && self.speedup > 0.0,
            "--speedup {} must be a number above 0, such as 60 (an hour in a minute)",
            self.speedup
        );
        ensure!(
            self.scale.is_finite() && self.scale >= 0.0,
            "--scale {} must be a number, 0 or more, such as 0.5",
            self.scale
        );
        ensure!(
            self.slo_ms.is_finite() && self.slo_ms > 0.0,
            "--slo-ms {} must be above 0, such as 200",
            self.slo_ms
        );
        ensure!(
            [50.0, 90.0, 95.0, 99.0].contains(&self.slo_percentile),
            "--slo-percentile {} must be 50, 90, 95 or 99",
            self.slo_percentile
        );
        ensure!(
            self.bucket.is_finite() && self.bucket > 0.0,
            "--bucket {} must be a number of seconds above 0, such as 60 for a per-minute trace",
            self.bucket
        );
        let seconds = |s: f64| s.is_finite() && (0.0..1e12).contains(&s);
        ensure!(
            seconds(self.from) && self.duration.is_none_or(|d| seconds(d) && d > 0.0),
            "--from must be 0 or more and --duration above 0 (seconds of trace time)"
        );
        let text = std::fs::read_to_string(&self.trace).with_context(|| {
            format!(
                "cannot read the trace {}: check the path (compressed traces must be unpacked first)",
                self.trace.display()
            )
        })?;
        let options = paracloud_sim::ParseOptions {
            bucket: Some(Duration::from_secs_f64(self.bucket)),
        };
        let trace = paracloud_sim::Trace::parse(&text, &options)
            .map_err(|e| anyhow::anyhow!(e.in_file(&self.trace.display().to_string())))?;
        let window = trace.window(
            Duration::from_secs_f64(self.from),
            self.duration.map_or(Duration::MAX, Duration::from_secs_f64),
        );
        ensure!(
            !window.duration().is_zero(),
            "the trace {} holds {:.0} s; --from {} is past its end",
            self.trace.display(),
            trace.duration().as_secs_f64(),
            self.from
        );
        let replay = window.speedup(self.speedup).scale(self.scale);
        eprintln!(
            "replaying {:.0} requests over {:.0} s (trace {:.0} s from {:.0} s; peak {:.0}/s)",
            replay.total(),
            replay.duration().as_secs_f64(),
            window.duration().as_secs_f64(),
            self.from,
            replay.peak()
        );
        Ok(load::LoadOptions {
            target,
            replay,
            seed: self.seed,
            slo_ms: self.slo_ms,
            slo_percentile: self.slo_percentile / 100.0,
            timeout: Duration::from_millis(self.timeout_ms),
            max_connections: self.max_connections,
        })
    }
}

#[derive(Debug, Args)]
struct LiveArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// The autoscaling policy: model, hpa or kpa; several, comma-separated (model,hpa,kpa), run
    /// one after the other on the same trace and seed
    #[arg(long)]
    policy: String,
    /// CPU work per page, passed on to the api (`/?work=N`)
    #[arg(long, default_value_t = 20_000)]
    work: u64,
    /// Host port the shop is published on (127.0.0.1)
    #[arg(long, default_value_t = 23280)]
    port: u16,
    /// Address pool of the run's daemon
    #[arg(long, default_value = "10.253.0.0/16")]
    live_subnet: Ipv4Net,
    /// The paracloud binary (default: `paracloud` beside this one)
    #[arg(long, value_name = "FILE")]
    paracloud: Option<PathBuf>,
    /// The backend is the shop's `web` tier (one instance, on a daemon of the bench's own)
    /// instead of nginx's fixed answer; wrk asks it for PATH: `/` is the page, which asks `api`
    /// and `kv` behind it, `/healthz` web's own answer
    #[arg(long, value_name = "PATH", value_parser = url_path)]
    shop: Option<String>,
    /// Address pool of the daemon that runs the shop with --shop
    #[arg(long, default_value = "10.246.0.0/16")]
    shop_subnet: Ipv4Net,
    /// Also write DIR/report.md (the live and simulated figures side by side, with the run's
    /// parameters) and DIR/results.json
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Lets the generator open as many connections as the process may.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The run's temp dir (under `under`, else the system's), kept afterwards when asked.
fn scratch_dir(keep: bool, under: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("paracloud-bench-").disable_cleanup(keep);
    match under {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("cannot create a temp dir")
}

/// Writes `value` as JSON into `file` when asked.
fn write_json(value: &impl serde::Serialize, file: Option<&PathBuf>) -> Result<()> {
    if let Some(path) = file {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Prints `value` as JSON on stdout, and into `file` when asked.
fn print_json(value: &impl serde::Serialize, file: Option<&PathBuf>) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    write_json(value, file)
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

fn autoscale_live(args: &LiveArgs, json: Option<&PathBuf>, keep: bool) -> Result<()> {
    let policies: Vec<&str> = args.policy.split(',').map(str::trim).collect();
    for policy in &policies {
        policy
            .parse::<paracloud_autoscale::PolicyKind>()
            .map_err(|e| anyhow::anyhow!("--policy {}: {e}", args.policy))?;
    }
    // Checked here, so that a bad trace is reported before any daemon starts.
    let load = args
        .load
        .options(load::Target::parse("http://127.0.0.1/")?)?;
    ensure!(
        nix::unistd::geteuid().is_root(),
        "autoscale-live needs root (the daemon makes namespaces, cgroups, a bridge): run it with sudo"
    );
    let paracloud = match &args.paracloud {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("paracloud"),
    };
    ensure!(
        paracloud.is_file(),
        "no paracloud binary at {}: build the workspace (cargo build --release --workspace) or pass --paracloud",
        paracloud.display()
    );
    raise_open_files();
    catch_interrupts()?;
    let scratch = scratch_dir(keep, None)?;
    let mut reports = Vec::new();
    for policy in policies {
        eprintln!("policy {policy}: the shop on a daemon of its own");
        let options = autoscale_live::LiveOptions {
            policy: policy.to_owned(),
            load: load.clone(),
            work: args.work,
            port: args.port,
            subnet: args.live_subnet,
        };
        let dir = scratch.path().join(policy);
        std::fs::create_dir_all(&dir)?;
        reports.push(autoscale_live::run(&options, &paracloud, &dir)?);
    }
    let table = autoscale_live::table(&reports);
    eprintln!("{table}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --out {}", dir.display()))?;
        let command: Vec<String> = std::env::args().skip(1).collect();
        let report = format!(
            "# Autoscaling on the live platform, beside the simulator's prediction\n\n\
             `paracloud-bench {}`\n\nGenerated {} on {} cores (load average {}).\n\n{table}",
            command.join(" "),
            host::utc_date(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            host::load_average(),
        );
        std::fs::write(dir.join("report.md"), report)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&reports)?,
        )?;
    }
    match reports.as_slice() {
        [one] => print_json(one, json),
        all => print_json(&all, json),
    }
}

/// A path wrk can ask for: `/` and what follows, without spaces.
fn url_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "{path:?} is not a URL path: give one that starts with / and has no spaces, as / or /healthz"
        ));
    }
    Ok(path.to_string())
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
    if let Command::Load { load, url } = &cli.command {
        let options = load.options(load::Target::parse(url)?)?;
        raise_open_files();
        catch_interrupts()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let report = runtime.block_on(async {
            let start = tokio::time::Instant::now() + Duration::from_millis(100);
            load::run(&options, start).await
        })?;
        return print_json(&report, cli.json.as_ref());
    }
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
            let out = args.out.unwrap_or_else(|| {
                PathBuf::from(if args.platform == paracloud_sim::Platform::local() {
                    "bench/results/autoscale"
                } else {
                    "bench/results/autoscale-cluster"
                })
            });
            return autoscale::run(
                &args.traces,
                &out,
                args.seed,
                &args.platform,
                args.only.as_deref(),
                args.timelines,
            );
        }
        Command::Migrate(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench needs root (namespaces, cgroups, bridges, CRIU): run it with sudo"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let opts = migrate::MigrateOptions {
                rate: args.rate,
                port: args.migrate_port,
                subnet: args.migrate_subnet,
                settle: Duration::from_secs(args.settle),
                ballast_mib: args.ballast,
            };
            eprintln!(
                "migrate: {} requests/s, PaCI handover, stop and start, CRIU on the platform, CRIU alone ...",
                opts.rate
            );
            let report = migrate::run(&opts, scratch.path())?;
            print!("{}", migrate::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Restart(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench restart needs root (namespaces, cgroups, bridges): run it with sudo"
            );
            ensure!(
                args.every > 0.0 && args.every.is_finite(),
                "--every {} is not a number of seconds above 0",
                args.every
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let opts = restart::RestartOptions {
                clients: args.clients.max(1),
                duration: Duration::from_secs(args.seconds.max(1)),
                every: Duration::from_secs_f64(args.every),
                port: args.restart_port,
                subnet: args.restart_subnet,
            };
            eprintln!(
                "restart: {} keep-alive clients, {} s steady, then {} s with a data-plane restart every {} s ...",
                opts.clients, args.seconds, args.seconds, args.every
            );
            let report = restart::run(&opts, scratch.path())?;
            print!("{}", restart::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Udp(args) => {
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let opts = udp::UdpOptions {
                flows: args.flows.iter().map(|&f| f.max(1)).collect(),
                seconds: args.udp_seconds.max(1),
                port_base: args.udp_port_base,
                paracloud: args.paracloud,
            };
            eprintln!(
                "udp: flows {:?}, {} s each, directly, through Paracloud and through nginx ...",
                opts.flows, opts.seconds
            );
            let report = udp::run(&opts, scratch.path())?;
            print!("{}", udp::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Capsule(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench capsule needs root (namespaces, cgroups, crun, runc)"
            );
            capsule::private_mounts()?;
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let report = capsule::run(
                &capsule::CapsuleOptions {
                    rounds: args.rounds.max(1),
                    fan_out: args.fan_out.max(1),
                    subnet: args.capsule_subnet,
                },
                scratch.path(),
            )?;
            print!("{}", capsule::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Builds(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench builds needs root (RUN steps run in sandboxes)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = builds::run(
                &builds::BuildsOptions {
                    rounds: args.rounds.max(1),
                    megabytes: args.megabytes.max(1),
                    subnet: args.builds_subnet,
                },
                scratch.path(),
            )?;
            print!("{}", builds::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Dashboard(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench dashboard needs root (the daemon's instances)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let report = dashboard::run(
                &dashboard::DashboardOptions {
                    pages: args.pages.max(1),
                    window: args.window,
                    subnet: args.dashboard_subnet,
                    port: args.dashboard_port,
                },
                scratch.path(),
            )?;
            print!("{}", dashboard::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::RemoteApi(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench remote-api needs root (the daemon's instances)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let report = remote_api::run(
                &remote_api::RemoteApiOptions {
                    clients: args.clients.max(1),
                    requests: args.requests.max(1),
                    subnet: args.api_subnet,
                    port: args.api_port,
                },
                scratch.path(),
            )?;
            print!("{}", remote_api::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Density(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench density needs root (namespaces, cgroups, bridges)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, None)?;
            let report = density::run(
                &density::DensityOptions {
                    steps: args.steps,
                    subnet: args.density_subnet,
                },
                scratch.path(),
            )?;
            print!("{}", density::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Compose(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench compose needs root (instances, builds)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = compose::run(
                &compose::ComposeOptions {
                    rounds: args.rounds.max(1),
                    subnet: args.compose_subnet,
                    port: args.compose_port,
                },
                scratch.path(),
            )?;
            print!("{}", compose::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Catalog(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench catalog needs root (instances, volumes)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = catalog::run(
                &catalog::CatalogOptions {
                    seconds: args.pgbench_seconds.max(1),
                    rounds: args.pgbench_rounds.max(1),
                    clients: args.pgbench_clients.max(1),
                    sizes: args.pgbench_sizes,
                    subnet: args.catalog_subnet,
                    haproxy_port: args.haproxy_port,
                },
                scratch.path(),
            )?;
            print!("{}", catalog::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Checks(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench checks needs root (instances, cgroups)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = checks::run(
                &checks::ChecksOptions {
                    runs: args.check_runs.max(1),
                    rounds: args.check_rounds.max(1),
                    subnet: args.checks_subnet,
                },
                scratch.path(),
            )?;
            print!("{}", checks::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Static(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench static needs root (instances)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = static_site::run(
                &static_site::StaticOptions {
                    seconds: args.static_seconds.max(1),
                    rounds: args.static_rounds.max(1),
                    connections: args.static_connections.max(1),
                    subnet: args.static_subnet,
                    ports: (args.static_port, args.static_port + 1),
                },
                scratch.path(),
            )?;
            print!("{}", static_site::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Wordpress(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench wordpress needs root (instances)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = wordpress::run(
                &wordpress::WordpressOptions {
                    seconds: args.wp_seconds.max(5),
                    connections: args.wp_connections.max(1),
                    fixed: args.wp_fixed,
                    subnet: args.wp_subnet,
                    port: args.wp_port,
                },
                scratch.path(),
            )?;
            print!("{}", wordpress::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Taskfarm(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench taskfarm needs root (instances, volumes)"
            );
            catch_interrupts()?;
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = taskfarm::run(
                &taskfarm::TaskFarmOptions {
                    tasks: args.farm_tasks.max(1),
                    deadline: std::time::Duration::from_secs(args.farm_deadline.max(1)),
                    pools: args.farm_pools,
                    rounds: args.farm_rounds.max(1),
                    subnet: args.farm_subnet,
                },
                scratch.path(),
            )?;
            print!("{}", taskfarm::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Images(args) => {
            ensure!(
                nix::unistd::geteuid().is_root(),
                "paracloud-bench images needs root (overlay mounts, namespaces, cgroups)"
            );
            catch_interrupts()?;
            // On disk, as image stores are, rather than on a tmpfs /tmp.
            let scratch = scratch_dir(cli.keep, Some(Path::new("/var/tmp")))?;
            let report = images::run(
                &images::ImagesOptions {
                    layers: args.layers.max(1),
                    megabytes: args.megabytes.max(1),
                    rounds: args.rounds.max(1),
                    starts: args.starts.max(1),
                },
                scratch.path(),
            )?;
            print!("{}", images::markdown(&report));
            return write_json(&report, cli.json.as_ref());
        }
        Command::Start(start) => (Some(start), None, None),
        Command::Scale(scale) => (None, Some(scale), None),
        Command::Proxy(proxy) => (None, None, Some(proxy)),
        Command::AutoscaleLive(live) => return autoscale_live(&live, cli.json.as_ref(), cli.keep),
        Command::Load { .. } => unreachable!("answered above"),
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
    let scratch = scratch_dir(cli.keep, None)?;
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
            steps: args.steps,
            userns: args.userns,
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
        write_json(&json, Some(&path))?;
    }
    Ok(())
}
