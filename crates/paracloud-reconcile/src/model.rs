//! Desired and observed state, and the actions of a plan.

use std::collections::{BTreeMap, BTreeSet};

use paracloud_manifest::{Manifest, Service};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// What the user asked for: the applications that should run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub apps: BTreeMap<String, DesiredApp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredApp {
    pub manifest: Manifest,
    /// Per service: instances wanted (the manifest's replicas until `scale` says otherwise).
    pub replicas: BTreeMap<String, u32>,
    /// Per service: the revision instances must run; raised when the spec changes or on restart.
    pub revisions: BTreeMap<String, u64>,
    /// Per service: CPU per instance in cores set since `up` (`paracloud scale --cpu`, the
    /// autoscaler), over the manifest's `resources.cpu`.
    pub cpu: BTreeMap<String, f64>,
}

impl DesiredApp {
    pub fn replicas_of(&self, service: &str) -> u32 {
        self.replicas
            .get(service)
            .copied()
            .or_else(|| self.manifest.services.get(service).map(|s| s.replicas))
            .unwrap_or(0)
    }

    pub fn revision_of(&self, service: &str) -> u64 {
        self.revisions.get(service).copied().unwrap_or(0)
    }
}

/// What the daemon sees: instances, and the applications whose network exists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub instances: Vec<ObservedInstance>,
    pub networks: BTreeSet<String>,
    /// Applications being removed (`down`), with whether their volumes go too.
    pub removing: BTreeMap<String, bool>,
    /// Services (app, service) with a migration under way: the planner leaves them alone.
    pub migrating: BTreeSet<(String, String)>,
    /// The CPU limit last written to each live instance's cgroup by this daemon (`None` inside:
    /// unlimited). An instance missing here has had none written since the daemon started.
    pub applied_cpu: BTreeMap<InstanceKey, Option<f64>>,
}

/// Names one instance: `api.2` of application `shop`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub app: String,
    pub service: String,
    pub index: u32,
}

impl InstanceKey {
    pub fn new(app: &str, service: &str, index: u32) -> Self {
        Self {
            app: app.to_string(),
            service: service.to_string(),
            index,
        }
    }

    /// The name users see and the instance's hostname, e.g. `api.2`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.index)
    }

    /// A name safe for files, cgroups and interfaces, e.g. `shop-api-2`.
    pub fn id(&self) -> String {
        format!("{}-{}-{}", self.app, self.service, self.index)
    }
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app, self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedInstance {
    pub key: InstanceKey,
    /// The service revision this instance was started with.
    pub revision: u64,
    pub state: InstanceState,
    /// Restarts in a row without a stable run in between (drives the backoff).
    pub restarts: u32,
    /// When the instance entered its current state.
    pub since: Millis,
    /// CPU in cores for this instance alone (`paracloud migrate --cpus`), over its service's.
    pub cpu: Option<f64>,
}

/// The CPU limit of an instance in cores (`None`: unlimited): its own (`migrate --cpus`), else
/// its service's set since `up` (`scale --cpu`, the autoscaler), else the manifest's
/// `resources.cpu`. The one rule, wherever an instance's CPU is needed.
pub fn effective_cpu(own: Option<f64>, service: Option<f64>, spec: &Service) -> Option<f64> {
    own.or(service).or(spec.resources.cpu)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum InstanceState {
    /// The sandbox is being created.
    Starting,
    /// The first process runs.
    Running { health: Health },
    /// The stop signal was sent; waiting for the exit.
    Stopping { reason: StopReason },
    /// The first process ended (or never started).
    Exited { exit: ExitInfo },
}

impl InstanceState {
    /// Ready for traffic: running, and healthy when the service has a health check.
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            InstanceState::Running {
                health: Health::Healthy | Health::None
            }
        )
    }

    pub fn is_running(&self) -> bool {
        matches!(self, InstanceState::Running { .. })
    }

    /// The word `ps` shows.
    pub fn label(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running {
                health: Health::Healthy | Health::None,
            } => "running",
            InstanceState::Running {
                health: Health::Unknown,
            } => "unready",
            InstanceState::Running {
                health: Health::Unhealthy,
            } => "unhealthy",
            InstanceState::Stopping { .. } => "stopping",
            InstanceState::Exited { exit } if exit.oom_killed => "oom-killed",
            InstanceState::Exited { exit } if exit.error.is_some() => "failed",
            InstanceState::Exited { .. } => "exited",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The service has no health check: running means ready.
    None,
    /// Not yet checked, or still within the start period.
    Unknown,
    Healthy,
    Unhealthy,
}

/// Why an instance's health probes fail, while they do: the latest probe's reason and how many
/// failed in a row (a passing probe ends it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeFailure {
    /// What failed, e.g. `GET /healthz answered 503` or `connect to 7000 refused`.
    pub reason: String,
    /// Probes failed in a row, counting those of the start period.
    pub in_a_row: u32,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.in_a_row == 1 { "" } else { "s" };
        write!(
            f,
            "{} ({} failure{plural} in a row)",
            self.reason, self.in_a_row
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Fewer instances wanted.
    ScaleIn,
    /// The application is being removed.
    Down,
    /// A newer revision (restart or changed spec) replaces it.
    Replace,
    /// Its health check failed.
    Unhealthy,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// The platform stopped it (scale-in, restart, down), as opposed to a crash.
    pub requested: Option<StopReason>,
    /// It could not be started at all, or its end was not seen.
    pub error: Option<String>,
    /// How long it ran.
    #[schema(value_type = u64)]
    pub ran_ms: Millis,
}

impl ExitInfo {
    /// A failure for the on-failure restart policy: anything but a clean exit 0.
    pub fn is_failure(&self) -> bool {
        self.code != Some(0) || self.oom_killed || self.error.is_some()
    }

    /// How the process ended, in words: `exited with code 3`, `killed by SIGKILL`.
    pub fn describe(&self) -> String {
        if self.oom_killed {
            return "killed by the kernel: out of memory (memory limit reached)".into();
        }
        if let Some(e) = &self.error {
            return format!("exited: {e}");
        }
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => match signal_name(signal) {
                Some(name) => format!("killed by {name}"),
                None => format!("killed by {signal}"),
            },
            (None, None) => "exited".into(),
        }
    }
}

/// The name of a signal by its number on Linux (x86-64 and arm64 share the numbering).
fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let index = usize::try_from(signal).ok()?.checked_sub(1)?;
    NAMES.get(index).copied()
}

/// What the daemon must do to move the observed state toward the desired one.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create the application's bridge and service addresses.
    EnsureNetwork { app: String },
    /// Start an instance at the service's current revision; `restart` when the restart policy brings
    /// it back after a failure (it counts toward the backoff).
    Start { key: InstanceKey, restart: bool },
    /// Send the stop signal, wait the grace period, then kill.
    Stop {
        key: InstanceKey,
        reason: StopReason,
    },
    /// Replace a running instance by one of the service's current revision, make before
    /// break: the new one starts beside it and takes over (state handed over as the service's
    /// `migrate` method says), then the old one drains and stops.
    Migrate { key: InstanceKey },
    /// Write a running instance's CPU limit (`None`: unlimited) to its cgroup, at once;
    /// `resize` when it changes under the instance (not the first write after a daemon start),
    /// which is then told through PaCI.
    SetCpu {
        key: InstanceKey,
        cpu: Option<f64>,
        resize: bool,
    },
    /// Start a catalogue primary that cannot come back on its own data from a copy of its most
    /// advanced replica, the one of `replicas` (the running instances of its read service)
    /// that received the most of its log.
    Failover {
        key: InstanceKey,
        replicas: Vec<InstanceKey>,
    },
    /// Forget an exited instance and delete its private files.
    Remove { key: InstanceKey },
    /// Delete the application's bridge.
    RemoveNetwork { app: String },
    /// The application is gone: delete its records (and its volumes when asked).
    Forget { app: String, volumes: bool },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The earliest time something waits for (a restart backoff); the loop wakes by then.
    pub wake_at: Option<Millis>,
    /// Why instances wait, for `describe` and events: (instance, reason).
    pub waiting: Vec<(InstanceKey, String)>,
}

/// The service spec of an instance, if its app and service are desired.
pub fn service_of<'a>(desired: &'a Desired, key: &InstanceKey) -> Option<&'a Service> {
    desired
        .apps
        .get(&key.app)?
        .manifest
        .services
        .get(&key.service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_described_by_its_most_telling_cause() {
        let exit = |f: fn(&mut ExitInfo)| {
            let mut info = ExitInfo::default();
            f(&mut info);
            info.describe()
        };
        assert_eq!(exit(|i| i.code = Some(3)), "exited with code 3");
        assert_eq!(exit(|i| i.signal = Some(9)), "killed by SIGKILL");
        assert_eq!(exit(|i| i.signal = Some(15)), "killed by SIGTERM");
        assert_eq!(exit(|i| i.signal = Some(64)), "killed by 64");
        assert_eq!(
            exit(|i| {
                i.signal = Some(9);
                i.oom_killed = true;
            }),
            "killed by the kernel: out of memory (memory limit reached)"
        );
        assert_eq!(
            exit(|i| i.error = Some("no such file".into())),
            "exited: no such file"
        );
        assert_eq!(exit(|_| {}), "exited");
    }
}
