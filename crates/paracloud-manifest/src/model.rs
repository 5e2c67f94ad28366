//! The normalised manifest: plain data, the same for every source format, free of I/O.
//!
//! Every path in here is absolute (resolved against the manifest's directory), every duration and
//! size is parsed, and every cross-reference (depends_on, volumes) has been checked. The control
//! plane stores these values as JSON, so every type is serde round-trippable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use paracloud_autoscale::PolicyKind;
use serde::{Deserialize, Serialize};

/// A whole application: the services of one manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Application name: a DNS label (lower-case letters, digits, '-'), at most 32 characters.
    pub app: String,
    /// Services by name (DNS labels as well), in name order.
    pub services: BTreeMap<String, Service>,
    /// Named volumes the services use, by name.
    pub volumes: BTreeMap<String, Volume>,
    /// The application's autoscaler (`[autoscale]`); `None`: instance counts and CPU change only
    /// by hand (`paracloud scale`) and by `scale_to_zero`.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// Capsules run on a cron schedule (`[schedules.NAME]`), by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduledCapsule>,
    /// The application's own capsules (`[capsules.NAME]`), beside the built-in ones, by name.
    #[serde(default)]
    pub capsules: BTreeMap<String, AppCapsule>,
    /// Networks declared beside the implicit `default` one (`[networks.NAME]`): services reach
    /// only the services they share a network with.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
}

/// The network every service without `networks` is on.
pub const DEFAULT_NETWORK: &str = "default";

/// A network of the application: a set of services that reach each other.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub labels: BTreeMap<String, String>,
    /// The subnet its services' fixed addresses (`address`) are in, when it says one.
    #[serde(default)]
    pub subnet: Option<ipnet::Ipv4Net>,
}

/// A service's membership in one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// More names the service is reached by, from the services on this network.
    pub aliases: Vec<String>,
    /// The service's fixed address (Compose's `ipv4_address`): its stable address, where its
    /// ports are served, instead of one the daemon picks.
    #[serde(default)]
    pub address: Option<std::net::Ipv4Addr>,
}

impl Manifest {
    /// The networks `service` is on: those it names, else `default`.
    pub fn networks_of(&self, service: &str) -> Vec<&str> {
        match self.services.get(service) {
            Some(s) if !s.networks.is_empty() => s.networks.keys().map(String::as_str).collect(),
            _ => vec![DEFAULT_NETWORK],
        }
    }

    /// Every network some service is on, by name.
    pub fn network_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .services
            .keys()
            .flat_map(|s| self.networks_of(s))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The fixed address of `service`, if it has one (on any of its networks).
    pub fn fixed_address(&self, service: &str) -> Option<std::net::Ipv4Addr> {
        self.services
            .get(service)?
            .networks
            .values()
            .find_map(|m| m.address)
    }

    /// Whether some services cannot reach others: a network besides `default` is in use.
    pub fn is_split(&self) -> bool {
        self.services
            .values()
            .any(|s| s.networks.keys().any(|n| n != DEFAULT_NETWORK))
    }

    /// Whether `from` may reach `to`: they share a network.
    pub fn reaches(&self, from: &str, to: &str) -> bool {
        let theirs = self.networks_of(to);
        self.networks_of(from).iter().any(|n| theirs.contains(n))
    }

    /// The names `from` reaches `to` by: its name and its aliases on the networks they share.
    pub fn names_of(&self, from: &str, to: &str) -> Vec<String> {
        if !self.reaches(from, to) {
            return Vec::new();
        }
        let mut names = vec![to.to_owned()];
        if let Some(target) = self.services.get(to) {
            let mine = self.networks_of(from);
            for (network, membership) in &target.networks {
                if mine.contains(&network.as_str()) {
                    names.extend(membership.aliases.iter().cloned());
                }
            }
        }
        names.dedup();
        names
    }
}

/// A capsule the application defines: an image with its tools, and the command that runs them
/// against the instance it attaches to (whose files are at `/target`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppCapsule {
    pub name: String,
    pub description: String,
    /// Its arguments, e.g. `TABLE...`.
    pub usage: String,
    /// An image of the store, an OCI layout or a directory (never the host).
    pub image: Image,
    /// Run with the run's arguments appended; when the manifest sets none, the image's
    /// entrypoint and cmd (filled in by the daemon at `up`).
    pub command: Vec<String>,
    /// The environment of its command, over the image's (filled in at `up`); the platform's
    /// own variables (`TARGET`, `OUT`, `PARACLOUD_INSTANCE`, ...) are set over both.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub access: paracloud_capsule::Access,
    /// Capabilities beyond the default set, names like `CAP_SYS_PTRACE`.
    pub capabilities: Vec<String>,
    pub limits: paracloud_capsule::Limits,
    pub timeout: Duration,
}

impl AppCapsule {
    /// The capsule as the policy, the scheduler and the runtime see it.
    pub fn spec(&self) -> paracloud_capsule::CapsuleSpec {
        paracloud_capsule::CapsuleSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            usage: self.usage.clone(),
            access: self.access,
            capabilities: self.capabilities.clone(),
            limits: self.limits,
            timeout: self.timeout,
            programs: Vec::new(),
            trees: Vec::new(),
            script: "",
            runs_arguments: false,
            entry: self.command.clone(),
        }
    }

    /// Why it cannot run, when neither the manifest nor its image says what to run.
    pub fn nothing_to_run(&self) -> Option<String> {
        self.command.is_empty().then(|| {
            format!(
                "capsule {}: neither the manifest nor its image says what to run; set `command = [\"/path/to/program\"]` under [capsules.{}]",
                self.name, self.name
            )
        })
    }

    /// Takes what the manifest leaves to the capsule's image: its variables under the
    /// manifest's, and its entrypoint and cmd as the command when the manifest sets none.
    pub fn take_image_defaults(&mut self, defaults: &paracloud_image_spec::ImageDefaults) {
        let mut env = defaults.env_map();
        env.append(&mut self.env);
        self.env = env;
        if self.command.is_empty() {
            self.command = defaults
                .entrypoint
                .iter()
                .chain(&defaults.cmd)
                .cloned()
                .collect();
        }
    }
}

/// A capsule run on the instances its selector matches whenever its cron schedule fires (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledCapsule {
    /// A built-in capsule's name, or one of the application's own.
    pub capsule: String,
    pub cron: paracloud_capsule::Schedule,
    /// `KEY=VALUE[,...]`, as `paracloud capsule run --selector` takes it.
    pub selector: String,
    pub args: Vec<String>,
    /// Overrides the capsule's deadline.
    pub timeout: Option<Duration>,
    /// How many of its last successful runs keep their files (backups kept by the platform),
    /// whatever other capsules run meanwhile; `None`: its runs' files go with the daemon's
    /// window of recent runs, as any run's.
    #[serde(default)]
    pub keep: Option<u32>,
}

/// The most runs a schedule's `keep` holds on to.
pub const MAX_KEEP: u64 = 1000;

/// The daemon keeps the files of this many last capsule runs, besides those schedules keep.
pub const RECENT_RUNS_KEPT: u64 = 50;

/// The application's autoscaler: which policy, where the SLO is measured, and each service's
/// bounds. Kept apart from the services' specs, so that adding or tuning it replaces no instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Autoscale {
    pub policy: PolicyKind,
    /// The service clients call: the SLO is measured on its listeners, end to end.
    pub entry: String,
    pub slo: LatencySlo,
    /// Bounds of every service (revisions are not autoscaled), defaults filled in.
    pub services: BTreeMap<String, ServiceScaling>,
}

/// A response-time objective: the `percentile` of the entry's latency stays under `latency`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySlo {
    /// As a fraction: 0.95 for `p95`.
    pub percentile: f64,
    pub latency: Duration,
}

/// What the autoscaler may do to one service: instances within `min..=max`, CPU per instance
/// within `cpu_min..=cpu_max`, starting from `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServiceScaling {
    pub min: u32,
    pub max: u32,
    /// CPU per instance the service starts with, in cores: `resources.cpu`, else 1.
    pub cpu: f64,
    pub cpu_min: f64,
    pub cpu_max: f64,
}

/// One role of the application and how to run its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub image: Image,
    /// Overrides the image's entrypoint when not empty.
    pub entrypoint: Vec<String>,
    /// Arguments (or the whole command when `entrypoint` is empty).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub health: Option<HealthCheck>,
    pub resources: Resources,
    /// Instances wanted when the application comes up; `paracloud scale` overrides it.
    pub replicas: u32,
    pub restart: RestartPolicy,
    /// Services that must be started (or healthy) before this one starts.
    pub depends_on: BTreeMap<String, DependsCondition>,
    pub volumes: Vec<VolumeMount>,
    pub labels: BTreeMap<String, String>,
    /// `uid`, `uid:gid`, `name` or `name:group`, resolved inside the instance's root filesystem.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// The host name its instances see (`SERVICE.N`, their instance name, when not set).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Signal name, such as `SIGTERM`.
    pub stop_signal: String,
    pub stop_grace_period: Duration,
    /// Capabilities kept (all others are dropped), names like `CAP_NET_BIND_SERVICE`.
    pub cap_add: Vec<String>,
    /// After this long without a request the service is scaled to zero, and the next request
    /// starts it again (held by the data plane meanwhile); `None` keeps it running.
    #[serde(default)]
    pub scale_to_zero: Option<Duration>,
    /// How its instances move (`paracloud migrate`, rolling updates): make before break, with
    /// the state handed over as this says.
    #[serde(default)]
    pub migrate: MigrateMethod,
    /// `[services.NAME.capsules]`: which capsules may attach to its instances, with which access
    /// to their files; every other capsule is refused.
    #[serde(default)]
    pub capsules: BTreeMap<String, paracloud_capsule::Access>,
    /// Set when this is a revision running beside its service (`[services.api.revisions.NAME]`,
    /// named `api@NAME` in the manifest's services): it serves the service's ports and gets a
    /// share of its traffic.
    #[serde(default)]
    pub revision_of: Option<RevisionOf>,
    /// `init`, `read_only`, `tmpfs`, `shm_size`, `ulimits`, `sysctls` and `userns`: how its sandbox
    /// differs from the default one.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// The networks it is on, by name, with its aliases there; empty: `default` only.
    #[serde(default)]
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// Set when the service is one part of a service of the catalogue (`catalog = "postgres"`):
    /// which one, and this part's role in it.
    #[serde(default)]
    pub catalog: Option<Catalogued>,
}

/// The part a service plays in a service of the catalogue (see `catalog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogued {
    pub kind: CatalogKind,
    /// The server's major version, such as `15`.
    pub version: String,
    pub role: CatalogRole,
    /// Each commit of the primary waits until a replica has applied it (PostgreSQL's
    /// `synchronous`): it then needs a replica at all times.
    #[serde(default)]
    pub synchronous: bool,
}

/// The most read replicas a catalogue service takes.
pub const MAX_REPLICAS: u64 = 8;

/// The services of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogKind {
    Postgres,
    Mariadb,
    Redis,
    Static,
    Php,
    TaskFarm,
}

impl CatalogKind {
    /// Whether a primary that cannot come back on its data is started from a copy of its most
    /// advanced replica (failover): the servers', PostgreSQL's, MariaDB's and Redis's.
    pub fn promotes_replicas(self) -> bool {
        matches!(
            self,
            CatalogKind::Postgres | CatalogKind::Mariadb | CatalogKind::Redis
        )
    }
}

/// What one service made of a catalogue service does there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum CatalogRole {
    /// The one instance that takes writes, on the catalogue service's own name (the write
    /// address), its data on a volume of its own. Never more than one instance, and replaced
    /// stop first: two servers must never share its data.
    Primary,
    /// Streaming replicas of `primary`, on `NAME-read` (the read address), which balances reads
    /// over them and the primary. Each is seeded from the primary when it starts.
    ReadReplicas { primary: String },
    /// The workers of a task farm: instances of the application's own image that do nothing
    /// until the platform runs tasks in them, as many as the farm's goal needs (none while no
    /// batch runs).
    Workers(TaskFarm),
    /// The instances of a static site or a PHP web tier: each an nginx serving the site's
    /// directory (in front of php-fpm for PHP).
    Site,
}

/// How a task farm runs its tasks (`catalog = "taskfarm"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFarm {
    /// The most workers it runs at once.
    pub max_workers: u32,
    /// How many times a failed task is run again before it counts as failed.
    pub retries: u32,
    /// How long one run of a task may take before it is stopped (and counts as failed), in
    /// milliseconds.
    pub task_timeout_ms: u64,
}

impl Service {
    /// Whether this is the primary of a catalogue service: one instance at most, never two at
    /// once.
    pub fn is_catalog_primary(&self) -> bool {
        matches!(
            self.catalog,
            Some(Catalogued {
                role: CatalogRole::Primary,
                ..
            })
        )
    }

    /// The task farm this service's instances are the workers of.
    pub fn task_farm(&self) -> Option<&TaskFarm> {
        match &self.catalog {
            Some(Catalogued {
                role: CatalogRole::Workers(farm),
                ..
            }) => Some(farm),
            _ => None,
        }
    }

    /// The service whose instances also serve this one's reads (a catalogue service's primary,
    /// behind its read address).
    pub fn reads_also_from(&self) -> Option<&str> {
        match &self.catalog {
            Some(Catalogued {
                role: CatalogRole::ReadReplicas { primary },
                ..
            }) => Some(primary),
            _ => None,
        }
    }
}

/// How a service's sandbox differs from the default one (the keys Compose files use).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// A minimal init runs as pid 1: it forwards signals to the command and reaps orphans.
    pub init: bool,
    /// The root filesystem is read-only (volumes, `tmpfs`, /tmp and /dev/shm stay writable).
    pub read_only: bool,
    pub tmpfs: Vec<TmpfsMount>,
    /// Bytes of /dev/shm (64 MiB when not set).
    pub shm_size: Option<u64>,
    /// Resource limits of the command, by name without `RLIMIT_` (`nofile`, `nproc`, ...).
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Kernel parameters of the instance's own network and IPC namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// The instance runs with host ids, without a user namespace of its own (`userns = false`):
    /// for capabilities that must act on what the host owns, such as `NET_ADMIN` on the
    /// instance's network.
    #[serde(default)]
    pub host_ids: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Absolute path inside the instance.
    pub target: String,
    /// Bytes; `None`: the kernel's default.
    pub size: Option<u64>,
    /// Permission bits of its root (`None`: 1777).
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

/// How an instance's state reaches its successor when it is migrated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateMethod {
    /// The application hands its state over through PaCI (migrate, then restore events).
    Paci,
    /// The process is checkpointed and restored with CRIU, memory and all.
    Criu,
    /// Nothing is handed over: the new instance starts afresh (stateless services).
    #[default]
    Restart,
    /// A catalogue primary's: its successor follows it as a standby and takes over once it has
    /// stopped, with every transaction it committed (never a manifest's choice).
    Switchover,
}

impl MigrateMethod {
    pub fn name(self) -> &'static str {
        match self {
            MigrateMethod::Paci => "paci",
            MigrateMethod::Criu => "criu",
            MigrateMethod::Restart => "restart",
            MigrateMethod::Switchover => "switchover",
        }
    }
}

/// What a revision running beside its service (see [`Service::revision_of`]) gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionOf {
    /// The service it is a revision of, such as `api`.
    pub service: String,
    /// Its name, such as `canary`: requests with the header `x-paracloud-revision: canary` go to
    /// it.
    pub revision: String,
    /// Percent of the service's other requests it gets (0 to 100); the service itself gets what
    /// its revisions leave.
    pub weight: u32,
}

/// The character between a service name and a revision name, as in `api@canary`.
pub const REVISION_SEPARATOR: char = '@';

/// The name of a service's revision in [`Manifest::services`], such as `api@canary`.
pub fn revision_service_name(service: &str, revision: &str) -> String {
    format!("{service}{REVISION_SEPARATOR}{revision}")
}

impl Service {
    /// The full argv the instance's first process runs: entrypoint then command.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.command.iter())
            .cloned()
            .collect()
    }

    /// Whether instances of `self` run as those of `other` would. A service whose spec changes
    /// otherwise gets a new revision (its instances are replaced); these keys do not say how an
    /// instance runs, so changing them replaces none: how many there are (`replicas`), when they
    /// go to zero (`scale_to_zero`), how they are moved (`migrate`), who may attach capsules
    /// (`capsules`), a revision's share of the traffic, and the CPU limit, which running
    /// instances take in place.
    pub fn runs_as(&self, other: &Service) -> bool {
        let mut this = self.clone();
        this.replicas = other.replicas;
        this.scale_to_zero = other.scale_to_zero;
        this.migrate = other.migrate;
        this.capsules = other.capsules.clone();
        this.resources.cpu = other.resources.cpu;
        if let (Some(mine), Some(theirs)) = (&mut this.revision_of, &other.revision_of) {
            mine.weight = theirs.weight;
        }
        this == *other
    }
}

/// Where an instance's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Image {
    /// The host's /usr, /bin, /lib*, /etc shared read-only, plus `paths` (absolute host paths,
    /// mounted read-only at the same place and prepended to PATH when they are directories).
    Host { paths: Vec<PathBuf> },
    /// A directory used as the read-only lower layer of the root filesystem.
    Dir { path: PathBuf },
    /// An image of the daemon's store by reference (`name:tag`, normalised: `web` is
    /// `web:latest`). Its layers are stacked read-only under each instance's private layer, and
    /// its config's entrypoint, cmd, env, working directory, user and exposed ports apply where
    /// the service sets none.
    Stored {
        reference: String,
        /// The manifest digest the reference meant when the application was deployed (filled
        /// in by the daemon at `up`): instances started later run the same image.
        #[serde(default)]
        digest: Option<String>,
    },
    /// An OCI image layout directory holding one image for this machine, imported into the
    /// store at `up`.
    Layout {
        path: PathBuf,
        /// As for `Stored`: filled in by the daemon at `up`.
        #[serde(default)]
        digest: Option<String>,
    },
    /// An image built at `up` from the Containerfile (or Dockerfile) in `context`, named
    /// `APP-SERVICE:latest` in the store: `build = "DIR"`, or `build = { context = "DIR",
    /// dockerfile = "FILE", target = "STAGE", args = { NAME = "VALUE" } }`.
    Build {
        context: PathBuf,
        /// The Containerfile, when not `Containerfile` or `Dockerfile` in the context.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dockerfile: Option<PathBuf>,
        /// The stage to build (default: the last).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// Values of the Containerfile's ARGs.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        args: BTreeMap<String, String>,
        /// As for `Stored`: filled in by the daemon at `up`.
        #[serde(default)]
        digest: Option<String>,
    },
}

impl Image {
    /// Whether the image is one of the store's (its config supplies defaults).
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            Image::Stored { .. } | Image::Layout { .. } | Image::Build { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Http,
    /// Datagrams, relayed per flow (the client's address and port) to one instance.
    Udp,
}

impl Protocol {
    /// Whether the port carries datagrams: a UDP port and a TCP or HTTP port with the same number
    /// are two ports, bound side by side.
    pub fn is_udp(self) -> bool {
        self == Protocol::Udp
    }

    /// The name as manifests write it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Udp => "udp",
        }
    }
}

/// A port the service listens on inside its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// Port number inside the instance, also the port of the stable service address.
    pub port: u16,
    pub protocol: Protocol,
    /// Host address published to, forwarded to the service (127.0.0.1 unless an address is given).
    pub publish: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the instance is unhealthy.
    pub retries: u32,
    /// Failures during this period after start do not count.
    pub start_period: Duration,
    /// Whether an unhealthy instance is restarted (as its `restart` policy allows); `false`:
    /// it only leaves the routes until its probe passes again (a readiness check).
    #[serde(default = "restarts_when_unhealthy")]
    pub restart: bool,
}

fn restarts_when_unhealthy() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Probe {
    /// Runs the command inside the instance; exit status 0 is healthy.
    Exec { command: Vec<String> },
    /// A TCP connect to the instance's port succeeds.
    Tcp { port: u16 },
    /// `GET path` on the instance's port answers 2xx or 3xx.
    Http { port: u16, path: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU as a fraction of cores (0.5 = half a core).
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Size of the writable layer in bytes (a filesystem of its own, so that an instance
    /// cannot fill the host's disk); `None`: the daemon's default, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Memory the instance keeps under the machine's memory pressure, in bytes (Compose's
    /// `reservations.memory`): reclaimed from it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
    /// Cores the instance is entitled to when the CPU is contended (Compose's
    /// `reservations.cpus`): its CPU weight, relative to the others' (one core = the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_reservation: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Give up after this many restarts in a row (on-failure only); `None` is unlimited.
    pub max_retries: Option<u32>,
    /// First delay between an exit and the restart; doubled on each restart in a row.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    Always,
    OnFailure,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    /// Some instance of the dependency has been started.
    Started,
    /// Some instance of the dependency passes its health check.
    Healthy,
    /// Some instance of the dependency ran to its end with exit code 0 (a one-off job, such as a
    /// database migration, with `restart = "no"` or `"on-failure"`).
    Completed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeMount {
    /// A named volume of the application, kept across `down` unless removed explicitly.
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    /// A host path (absolute) mounted into the instance.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub labels: BTreeMap<String, String>,
    /// Set for a volume that is not the application's own (Compose's `external`): its name
    /// among the machine's external volumes, which exist before the application and outlive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// The most bytes it holds (`size = "1G"`): a filesystem of that size of its own, so that
    /// a full volume fills neither the host's disk nor another volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}
