//! The command-line grammar (clap structs only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "paracloud",
    version,
    about = "Run multi-service applications as sandboxed, elastic instances"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// State root: database, instances, volumes, logs and the API socket
    #[arg(
        long,
        env = "PARACLOUD_ROOT",
        default_value = "/var/lib/paracloud",
        global = true
    )]
    pub root: PathBuf,
    /// Application to act on (default: the manifest's, or the only one running)
    #[arg(short = 'a', long, env = "PARACLOUD_APP", global = true)]
    pub app: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// A remote daemon to talk to, by the name of a context (see `paracloud context`); `default`
    /// is this machine's daemon of --root. (Its id is not `context`: `build` has a positional
    /// argument of that name.)
    #[arg(
        id = "remote_context",
        long = "context",
        value_name = "NAME",
        env = "PARACLOUD_CONTEXT",
        global = true
    )]
    pub context: Option<String>,
    /// Act on the application in a Kubernetes cluster (deployed with `paracloud deploy
    /// --kubernetes`) instead of a daemon: ps, logs, scale, describe, events, capsule ls and run;
    /// --context then names a context of the kubeconfig
    #[arg(long, env = "PARACLOUD_KUBERNETES", global = true)]
    pub kubernetes: bool,
    /// A remote daemon's address (https://HOST:PORT), with its token in PARACLOUD_TOKEN; its
    /// certificate is pinned at the first use (beats --context)
    #[arg(long, value_name = "URL", env = "PARACLOUD_HOST", global = true)]
    pub host: Option<String>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Settings of the daemon; `up` passes them on when it starts one.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// cgroup path (in each hierarchy) under which instance cgroups are made
    #[arg(
        long,
        env = "PARACLOUD_CGROUP_PARENT",
        default_value = "paracloud",
        global = true
    )]
    pub cgroup_parent: String,
    /// Address pool for application networks (one subnet of --app-prefix per application)
    #[arg(
        long,
        env = "PARACLOUD_SUBNET",
        default_value = "10.213.0.0/16",
        global = true
    )]
    pub subnet: ipnet::Ipv4Net,
    /// Prefix length of each application's subnet: 24 holds 239 instances per application, 22
    /// holds 1,007 (22 to 27). Pool and size stay as they are while applications exist
    #[arg(
        long,
        env = "PARACLOUD_APP_PREFIX",
        default_value_t = 24,
        global = true,
        value_name = "LENGTH"
    )]
    pub app_prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy an application from its manifest and wait until every service is ready
    Up {
        /// Manifest file: a paracloud.toml or a Compose file; default: ./paracloud.toml, else
        /// ./compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml. Several
        /// Compose files merge, each over the ones before (override files)
        #[arg(short = 'f', long = "file")]
        file: Vec<PathBuf>,
        /// Return once the manifest is accepted, without waiting for readiness
        #[arg(short = 'd', long)]
        detach: bool,
        /// How long to wait for readiness
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Run a Compose file's services of this profile too (repeatable; COMPOSE_PROFILES
        /// works as well)
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<String>,
        /// Check everything (manifest, images in the store or a registry, Containerfiles) and
        /// start, build and pull nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a Compose file as the equivalent paracloud.toml
    Convert {
        /// The Compose file; default: ./compose.yaml, compose.yml, docker-compose.yaml,
        /// docker-compose.yml. Several merge, each over the ones before
        #[arg(short = 'f', long = "file")]
        file: Vec<PathBuf>,
        /// Include the services of this profile (repeatable)
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<String>,
    },
    /// Stop and remove an application (volumes are kept unless --volumes)
    Down {
        /// Manifest file naming the application
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Remove the application's named volumes too
        #[arg(long, short = 'v')]
        volumes: bool,
    },
    /// List instances: app, service, instance, state, pid, address, uptime
    Ps {
        /// Manifest file naming the application
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Instances of every application
        #[arg(long, short = 'A')]
        all_apps: bool,
    },
    /// Show the output of a service's instances (web) or of one instance (web.2)
    Logs {
        /// Service or instance; all services when omitted
        target: Option<String>,
        /// Keep printing new lines
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines to show from the end of each log
        #[arg(short = 'n', long = "tail", default_value_t = 100)]
        tail: usize,
    },
    /// Set the number of instances of services, or their CPU per instance:
    /// paracloud scale api=3 web=2, paracloud scale api --cpu 1.5
    Scale {
        /// SERVICE=COUNT pairs; with --cpu, a SERVICE alone keeps its count
        #[arg(required = true, value_name = "SERVICE=COUNT")]
        services: Vec<String>,
        /// CPU per instance, in cores (such as 0.5 or 2), for every service named: running
        /// instances get it at once, until the next `up`
        #[arg(long, value_name = "CORES")]
        cpu: Option<String>,
        /// Return without waiting for the instances
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Show or set how a service's requests are split with its revisions:
    /// paracloud traffic api canary=20 (requests with the header `x-paracloud-revision: canary`
    /// always go to canary)
    Traffic {
        service: String,
        /// REVISION=PERCENT pairs; none shows the split
        #[arg(value_name = "REVISION=PERCENT")]
        shares: Vec<String>,
    },
    /// Replace the instances of services one by one (all services when none is named)
    Restart { services: Vec<String> },
    /// Move an instance to a new one without failing a request: the new one starts beside it,
    /// takes its state, then the traffic; returns when the old one has ended
    Migrate {
        /// The instance, such as kv.1
        instance: String,
        /// How its state moves: paci (the application hands it over), criu (checkpoint and
        /// restore) or restart (none: stateless); the service's `migrate` by default, and
        /// switchover for the primary of a catalogue database (its successor follows it, then takes
        /// over)
        #[arg(long, value_parser = ["paci", "criu", "restart", "switchover"])]
        via: Option<String>,
        /// The revision to run: the service's current one (a number, or latest)
        #[arg(long)]
        revision: Option<String>,
        /// CPU of the new instance, in cores (such as 0.5 or 2)
        #[arg(long, value_name = "CORES")]
        cpus: Option<String>,
        /// With --kubernetes: the namespace of the node agents (`paracloud k8s install -n`)
        #[arg(long, value_name = "NAMESPACE", default_value = "paracloud-system")]
        agent_namespace: String,
    },
    /// Show a service in detail: spec, address, instances, recent events
    Describe { service: String },
    /// Show the event log
    Events {
        /// Keep printing new events
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Live traffic per service and instance: requests per second, errors, latency, in flight
    Top {
        /// Print once and exit (the default refreshes every second)
        #[arg(long)]
        once: bool,
    },
    /// Build an image from a Containerfile (the Dockerfile language as BuildKit reads it:
    /// stages, RUN --mount, heredocs, .dockerignore): paracloud build -t web:1 ./web
    Build(BuildArgs),
    /// List the images of the store
    Images,
    /// Images: build a micro-image from a host program, inspect, remove, prune, import, export
    #[command(subcommand)]
    Image(ImageCommand),
    /// The catalogue: services the platform runs and manages itself (catalog = "postgres")
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Task farms (catalog = "taskfarm"): run a bag of tasks by a deadline, or within a budget,
    /// on as many workers as that needs
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Capsules: functions (checksum, archive, logrotate, scan, metrics, strace, gdb, tcpdump, pg-dump, mariadb-dump,
    /// debug) that attach to running instances for as long as they run, then leave nothing
    #[command(subcommand)]
    Capsule(CapsuleCommand),
    /// Open a shell in the debug capsule attached to an instance, like `kubectl debug`
    /// (paracloud debug api.1, or paracloud debug api.1 -- ps); it detaches on exit
    Debug {
        /// The instance, such as api.1
        instance: String,
        /// The command to run instead of the interactive shell
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Simulate the application under a trace with an autoscaling policy, faster than real time
    /// (no daemon needed): paracloud sim --model sim.toml --trace load.csv --policy model
    Sim(SimArgs),
    /// Run the daemon in the foreground; with --install, write a systemd unit that runs it
    /// (restarted whenever it ends) instead
    Daemon {
        /// Also serve the API and the dashboard over HTTPS on ADDR:PORT, for tokens (see
        /// `paracloud token`); daemon.toml's `listen` by default
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// Write a systemd service unit for this root and settings, then print how to enable it
        #[arg(long)]
        install: bool,
        /// Where --install writes the unit
        #[arg(long, default_value = "/etc/systemd/system", requires = "install")]
        unit_dir: PathBuf,
    },
    /// The Kubernetes node agent, in the foreground: each pod's PaCI socket under --root and
    /// capsules attached to its containers, found through the node's OCI runtime
    NodeAgent {
        /// The OCI runtime the node's containers run under
        #[arg(long, value_enum)]
        runtime: NodeRuntime,
        /// That runtime's state directory (its --root), e.g. /run/containerd/runc/k8s.io
        #[arg(long, value_name = "DIR")]
        runtime_root: PathBuf,
    },
    /// Tokens of the remote API: create (printed once), list, revoke
    #[command(subcommand)]
    Token(TokenCommand),
    /// Deploy an application onto a Kubernetes cluster running the Paracloud operator (`paracloud
    /// k8s install`), with the kubeconfig's current context or --context
    Deploy {
        /// Manifest file, as for `up`
        #[arg(short = 'f', long = "file")]
        file: Vec<PathBuf>,
        /// Include a Compose file's services of this profile (repeatable)
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<String>,
        /// The namespace; default: the application's name
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Registry the images made on this machine were pushed to (as for `k8s render`)
        #[arg(long)]
        registry: Option<String>,
    },
    /// Run the Paracloud operator (what `paracloud k8s install` deploys): reconcile every
    /// ParacloudApp of the cluster, one operator at a time by a Lease
    Operator(OperatorArgs),
    /// Run an application's data plane in its cluster (what the data plane's pods run): its
    /// listeners route to the ready endpoints of the application's EndpointSlices
    ClusterDataplane {
        /// The application's namespace
        #[arg(long)]
        namespace: String,
        /// The application
        #[arg(long)]
        app: String,
        /// The routes file, as `paracloud k8s render --dataplane-image` writes it in the data
        /// plane's ConfigMap
        #[arg(long, default_value = "/etc/paracloud/dataplane/routes.json")]
        routes: PathBuf,
        /// Where the data plane's configuration file is written
        #[arg(long, default_value = "/run/paracloud")]
        state_dir: PathBuf,
        /// Where GET /stats, /metrics and /watch answer (ADDR:PORT)
        #[arg(long, default_value = "0.0.0.0:9090")]
        stats_listen: std::net::SocketAddr,
        /// The address the listeners bind
        #[arg(long, default_value = "0.0.0.0")]
        listen_address: std::net::IpAddr,
        /// Bind the listener of a service's port elsewhere than its route says, as
        /// api:8000=18000 or dns:53/udp=18053 (repeatable; to run beside others on one host)
        #[arg(long = "listen-port", value_name = "SERVICE:PORT=PORT")]
        listen_ports: Vec<paracloud_operator::dataplane::ListenPort>,
    },
    /// The application on Kubernetes: its objects (render) and the custom resource's
    /// definition (crd)
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Remote daemons this CLI talks to, as `docker context`: add, use, ls, rm
    #[command(subcommand)]
    Context(ContextCommand),
    /// Print a shell completion script: paracloud completion bash > /etc/bash_completion.d/paracloud
    Completion { shell: clap_complete::Shell },
    /// The data plane (the process serving published ports and service addresses)
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Inside the node agent's container: runs a built-in capsule through the agent's own socket
    /// (under --root) and writes its events as JSON lines; what `capsule run --kubernetes`
    /// executes there through the API server
    #[command(name = "__agent-capsule", hide = true)]
    AgentCapsule {
        /// The pod's uid
        #[arg(long)]
        pod: String,
        /// The container in the pod
        #[arg(long)]
        container: String,
        /// The built-in capsule
        #[arg(long)]
        capsule: String,
        /// Deadline in milliseconds instead of the capsule's own
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Arguments of the capsule's function
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Inside the node agent's container: writes a file a capsule run left (under --root) to
    /// standard output; what `capsule run --kubernetes` executes there to fetch it
    #[command(name = "__agent-capsule-file", hide = true)]
    AgentCapsuleFile {
        /// The run's number, from its events
        #[arg(long)]
        run: u64,
        /// The file's name in the run's /out
        #[arg(long)]
        name: String,
    },
    /// Inside the node agent's container: sends a pod `migrate` or `restore` (the event as
    /// JSON on standard input) through the agent's own socket (under --root) and writes the
    /// pod's answer as JSON; what `migrate --kubernetes` executes there through the API server
    #[command(name = "__agent-event", hide = true)]
    AgentEvent {
        /// The pod's uid
        #[arg(long)]
        pod: String,
        /// Only say whether the pod follows its events (no event is read or sent)
        #[arg(long)]
        listening: bool,
        /// How long to wait for the pod to open its event stream, in milliseconds
        #[arg(long, default_value_t = 0)]
        wait_listening_ms: u64,
    },
    /// The data-plane process (started by the daemon)
    #[command(name = "__dataplane", hide = true)]
    DataplaneProcess {
        #[arg(long)]
        config: PathBuf,
        /// Unix socket serving GET /stats (JSON) and GET /metrics (Prometheus)
        #[arg(long)]
        stats: Option<PathBuf>,
        /// How long a drain (SIGTERM) lets open connections run
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
        /// A file that, when it exists at SIGTERM, holds that drain's limit in milliseconds
        #[arg(long)]
        drain_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Replace the data plane without failing a request (as after an upgrade): a new one starts
    /// on the same listening sockets, and once it is ready the old one drains: HTTP connections
    /// close after their current request, TCP connections run to their end (up to
    /// --drain-timeout); prints both pids and how long the drain took
    Restart {
        /// How long the old data plane's TCP connections (and requests under way) may run
        /// before they are closed (at most 10m)
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once, alone on the last line
    Create {
        /// A name for it (who or what uses it: ci-deploy, alice@laptop)
        name: String,
        /// viewer reads; operator also scales, restarts, migrates and runs read-only capsules;
        /// admin does everything
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// How long it is accepted (30d, 12h); until revoked by default
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens (never their secrets)
    Ls,
    /// Revoke a token: it is refused from now on
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Add (or replace) a remote daemon: checks the token and pins the daemon's certificate
    Add {
        name: String,
        /// The daemon's address, https://HOST:PORT
        #[arg(long)]
        host: String,
        /// A file holding the token (from `paracloud token create`); - reads standard input
        #[arg(long)]
        token_file: PathBuf,
        /// The fingerprint the daemon printed at its start (sha256:...); without it, the
        /// certificate presented now is trusted and its fingerprint shown
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Make a context the one commands use (`default`: this machine's daemon)
    Use { name: String },
    /// List the contexts; the one in use is marked
    Ls,
    /// Remove a context
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List the services of the catalogue: their keys, their addresses, and whether the daemon's
    /// machine can run them
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Submit a bag of tasks to a task farm, one `sh -c` command line per line of FILE (blank
    /// lines and lines starting with # are skipped): paracloud tasks submit render -f
    /// frames.txt --deadline 10m
    Submit {
        /// The task farm: a service with catalog = "taskfarm"
        service: String,
        /// The file of tasks, one per line (- reads standard input)
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Every task done within this long from now (such as 90s, 10m, 2h): the fewest workers
        /// that meet it
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "budget", required_unless_present = "budget")]
        deadline: Option<std::time::Duration>,
        /// As soon as it can within this many instance-minutes (workers × minutes, such as 30
        /// or 2.5): the most workers it pays for
        #[arg(long, value_parser = parse_budget)]
        budget: Option<f64>,
        /// Follow the batch until it ends, then exit 0 if every task succeeded, 1 if not
        #[arg(long)]
        wait: bool,
    },
    /// List the application's batches: their goal, progress, workers and cost
    Ls,
    /// A batch's progress, workers, cost, and each task's state, runs and run time
    Status {
        /// The batch's number, as submit printed it
        batch: u64,
    },
    /// What a task's last run wrote: its stdout, then its stderr
    Logs {
        /// The batch's number
        batch: u64,
        /// The task's line among the submitted tasks, from 1
        task: u32,
    },
    /// Cancel a running batch: its waiting tasks are not run, its workers stop
    Cancel {
        /// The batch's number
        batch: u64,
    },
}

/// A budget in instance-minutes: a positive number.
fn parse_budget(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(minutes) if minutes.is_finite() && minutes > 0.0 => Ok(minutes),
        _ => Err(format!(
            "{text:?} is not a budget: give instance-minutes (workers × minutes) as a positive number, such as 30 or 2.5"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum CapsuleCommand {
    /// List the capsules: built-in ones and the applications' own
    Ls,
    /// Run a capsule on every running instance the selector matches, at once:
    /// paracloud capsule run checksum --selector service=web -- /srv/www
    Run {
        /// The capsule, such as checksum
        name: String,
        /// KEY=VALUE[,...]: app, service, instance (web.1) or a label
        #[arg(short = 'l', long, value_name = "KEY=VALUE[,...]")]
        selector: String,
        /// Where files the capsule returns go, as DIR/INSTANCE/FILE
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// With --kubernetes: the namespace of the node agents (`paracloud k8s install -n`)
        #[arg(long, value_name = "NAMESPACE", default_value = "paracloud-system")]
        agent_namespace: String,
        /// Deadline (such as 30s or 2m) instead of the capsule's own; it is stopped then
        #[arg(long)]
        timeout: Option<String>,
        /// Arguments of the capsule's function
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Fetch the files a past run left and the daemon still keeps (those of the last 50 runs,
    /// and of the runs a schedule's `keep` holds): paracloud capsule files 12 --out backups
    Files {
        /// The run, as `paracloud capsule history` numbers it
        run: i64,
        /// Where they go, as DIR/INSTANCE/FILE
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// The recorded runs: who, capsule, targets, arguments, start, duration, status, output size
    History {
        /// How many of the last runs
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a micro-image: a host program, its ELF interpreter and shared libraries, the paths
    /// added, and a minimal /etc, as one layer (paracloud image build --from-binary
    /// /usr/sbin/nginx --add /etc/nginx -t web:1)
    Build {
        /// The program: the image's entrypoint
        #[arg(long = "from-binary", value_name = "PATH")]
        from_binary: PathBuf,
        /// A file or directory to add as it is on this machine (repeatable)
        #[arg(long, value_name = "PATH")]
        add: Vec<PathBuf>,
        /// The image's name, such as web:1
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        tag: String,
    },
    /// Pull an image from a registry: paracloud image pull 127.0.0.1:5000/team/web:1
    Pull {
        /// HOST:PORT/NAME[:TAG] or HOST:PORT/NAME@sha256:...
        reference: String,
        #[command(flatten)]
        auth: RegistryAuth,
    },
    /// Push an image of the store to a registry: paracloud image push web:1 127.0.0.1:5000/team/web:1
    Push {
        /// The image in the store
        name: String,
        /// Where to push it (HOST:PORT/NAME[:TAG]); default: NAME itself, when it names a registry
        target: Option<String>,
        #[command(flatten)]
        auth: RegistryAuth,
    },
    /// List the images of the store (as `paracloud images`)
    Ls,
    /// Show an image: digest, layers, entrypoint, cmd, env, user, ports, history
    Inspect { name: String },
    /// Remove image names (a digest removes every name of its image); `prune` frees the space
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every blob and layer that no image name and no service needs
    Prune,
    /// Import an OCI image layout (directory or .tar) or a `docker save` archive
    Import {
        path: PathBuf,
        /// Name the image so (the source must hold one); without it the source's names are kept
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        tag: Option<String>,
    },
    /// Export images as an OCI image layout that is also a `docker save` archive: a directory,
    /// or a tar archive when PATH ends in .tar
    Export {
        #[arg(required = true)]
        names: Vec<String>,
        /// Where to write it
        #[arg(long = "to", value_name = "PATH")]
        to: PathBuf,
    },
}

/// Credentials for a registry that asks for them (basic auth, or its token service's).
#[derive(Debug, Args)]
pub struct RegistryAuth {
    /// User name at the registry
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
    /// Read the password from standard input (else PARACLOUD_REGISTRY_PASSWORD is used)
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The application model (services, CPU demands, calls, bounds): see docs/sim.md
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// The load: counts per bucket (numbers, or CSV `time,count`), or the Azure LLM CSV
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The autoscaling policy deciding every simulated second
    #[arg(long, value_parser = parse_policy, value_name = "model|hpa|kpa")]
    pub policy: paracloud_autoscale::PolicyKind,
    /// Seed of every random draw: the same seed gives the same result
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds each number of a plain list of counts covers
    #[arg(long, value_name = "SECONDS", value_parser = positive)]
    pub bucket: Option<f64>,
    /// Multiply the trace's rates
    #[arg(long, value_name = "F", value_parser = positive)]
    pub scale: Option<f64>,
    /// Play the trace F times faster (after --start and --duration)
    #[arg(long, value_name = "F", value_parser = positive)]
    pub speedup: Option<f64>,
    /// Start this far into the trace (as in the trace's own time)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub start: Option<std::time::Duration>,
    /// Keep only this much of the trace (as in the trace's own time)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Also write the whole outcome as JSON, with the per-second timeline and every decision
    /// with its reason
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
}

fn parse_policy(s: &str) -> Result<paracloud_autoscale::PolicyKind, String> {
    s.parse()
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a number above 0 (such as 2 or 0.5)")),
    }
}

/// `paracloud build`'s options.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context: COPY and ADD sources are inside it
    pub context: PathBuf,
    /// The image's name, such as web:1
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tag: String,
    /// The Containerfile (default: Containerfile, else Dockerfile, in the context)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// NAME=VALUE for an ARG (repeatable)
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last); the stages it does not need are not built
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Only this machine's platform is built (such as linux/amd64)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// A secret for RUN --mount=type=secret: id=NAME,src=FILE (repeatable); never in the image
    #[arg(long = "secret", value_name = "id=NAME,src=FILE")]
    pub secrets: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_grammar_holds_together_and_global_options_do_not_shadow_arguments() {
        Cli::command().debug_assert();
        for args in [
            &["paracloud", "build", "-t", "web:1", "./web"][..],
            &[
                "paracloud",
                "--context",
                "prod",
                "build",
                "-t",
                "web:1",
                ".",
            ],
            &["paracloud", "--context", "prod", "ps"],
            &[
                "paracloud",
                "context",
                "add",
                "prod",
                "--host",
                "https://h:8443",
                "--token-file",
                "t",
            ],
            &["paracloud", "--host", "https://h:8443", "ps"],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
        let cli =
            Cli::try_parse_from(["paracloud", "--context", "prod", "build", "-t", "x", "dir"])
                .unwrap();
        assert_eq!(cli.global.context.as_deref(), Some("prod"));
    }
}

#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print the Kubernetes objects that run the application: workloads, Services,
    /// ConfigMaps, Secrets, PodDisruptionBudgets, NetworkPolicies (the same input gives the
    /// same bytes); YAML documents, or a List with -o json
    Render {
        /// Manifest file: a paracloud.toml or a Compose file (several Compose files merge);
        /// default: as for `up`
        #[arg(short = 'f', long = "file")]
        file: Vec<PathBuf>,
        /// Include a Compose file's services of this profile (repeatable)
        #[arg(long = "profile", value_name = "PROFILE")]
        profiles: Vec<String>,
        /// Namespace of the objects; default: the application's name
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Registry the images made on this machine are pushed to, such as
        /// registry.example.com/team (a service `web` of `shop` runs REGISTRY/shop-web:latest)
        #[arg(long)]
        registry: Option<String>,
        /// Leave out the Namespace object (the namespace exists already)
        #[arg(long)]
        no_namespace: bool,
        /// Give pods their PaCI socket from Paracloud's node agent (installed by `k8s install`)
        #[arg(long)]
        paci: bool,
        /// Run Paracloud's data plane beside the application from this image (holding the
        /// paracloud binary): its Services then lead to the data plane, which routes to the pods
        #[arg(long, value_name = "IMAGE")]
        dataplane_image: Option<String>,
    },
    /// Print the ParacloudApp CustomResourceDefinition
    Crd,
    /// Print what runs Paracloud in a cluster: the custom resource's definition and the
    /// operator (its ServiceAccount, least-privilege roles and Deployment), for `kubectl apply`
    Install {
        /// The image holding the paracloud binary, pushed where the cluster pulls from
        #[arg(long)]
        image: String,
        /// The operator's namespace
        #[arg(short = 'n', long, default_value = "paracloud-system")]
        namespace: String,
        /// Operators to run; one leads at a time, the others wait for its lease
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// Leave out the node agent (pods then get no PaCI socket and no capsules)
        #[arg(long)]
        no_node_agent: bool,
        /// The nodes' OCI runtime, for the node agent: runc or crun (the image must hold it)
        #[arg(long, default_value = "runc", value_parser = ["runc", "crun"])]
        node_runtime: String,
        /// That runtime's state directory on the nodes (containerd's CRI: /run/containerd/runc/k8s.io)
        #[arg(long, default_value = "/run/containerd/runc/k8s.io")]
        node_runtime_root: String,
        /// The image the operator runs applications' data planes from; default: --image
        #[arg(long, value_name = "IMAGE")]
        dataplane_image: Option<String>,
    },
}

/// The OCI runtimes the node agent reads.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NodeRuntime {
    Crun,
    Runc,
}

/// How `paracloud operator` runs.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// The namespace of the operator's Lease
    #[arg(long, default_value = "paracloud-system")]
    pub lease_namespace: String,
    /// The Lease's name
    #[arg(long, default_value = "paracloud-operator")]
    pub lease_name: String,
    /// This operator's name in the Lease; default: $POD_NAME, else the host name
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the Lease holds without renewal
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: std::time::Duration,
    /// Where /healthz answers (ADDR:PORT)
    #[arg(long)]
    pub health: Option<std::net::SocketAddr>,
    /// How often each application is looked at again besides on changes
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync: std::time::Duration,
    /// Where each application's data plane serves its stats ({app} and {namespace} are
    /// replaced), to scale services with scale_to_zero to zero and back and to run the
    /// applications' [autoscale] policies, such as
    /// http://{app}-dataplane-stats.{namespace}.svc:9090; not followed when not given
    #[arg(long, value_name = "URL")]
    pub dataplane_stats: Option<String>,
    /// Give pods their PaCI socket from Paracloud's node agent (which `k8s install` runs on
    /// every node)
    #[arg(long)]
    pub paci: bool,
    /// Run each application's data plane from this image (holding the paracloud binary), its
    /// Services leading to it; without it, Services select the pods directly
    #[arg(long, value_name = "IMAGE")]
    pub dataplane_image: Option<String>,
}
