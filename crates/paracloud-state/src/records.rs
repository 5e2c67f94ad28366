//! The state as plain data: applications, services, instances, events, capsule runs, a
//! snapshot of all of them, and the changes a decision writes. No I/O: the command layer decides
//! on these without linking the database.

use std::collections::{BTreeMap, BTreeSet};

use paracloud_manifest::Manifest;
use paracloud_reconcile::{InstanceKey, InstanceState, Millis, ProbeFailure};
use serde::{Deserialize, Serialize};

/// Service address slots per application (host part .2 to .15 of its subnet).
pub const SERVICE_SLOTS: u32 = 14;

#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub name: String,
    pub manifest: Manifest,
    /// The manifest text as the user wrote it, and the file it came from.
    pub source: String,
    pub origin: String,
    /// Which subnet of the daemon's pool the application's network uses.
    pub subnet_index: u32,
    /// Being removed by `down`: Some(remove volumes too).
    pub removing: Option<bool>,
    pub services: BTreeMap<String, ServiceRecord>,
    pub created: Millis,
}

impl AppRecord {
    /// The record of `manifest` as just deployed from `source` on the pool's first subnet: each
    /// service at its manifest's replicas, revision 1, address slots in service order (for
    /// decisions made on plain data, in tests and fuzzing).
    pub fn deployed(manifest: Manifest, source: &str) -> Self {
        let services = manifest
            .services
            .iter()
            .enumerate()
            .map(|(slot, (name, spec))| {
                let record = ServiceRecord {
                    replicas: spec.replicas,
                    revision: 1,
                    slot: slot as u32,
                    weight: None,
                    cpu: None,
                };
                (name.clone(), record)
            })
            .collect();
        AppRecord {
            name: manifest.app.clone(),
            manifest,
            source: source.into(),
            origin: "paracloud.toml".into(),
            subnet_index: 0,
            removing: None,
            services,
            created: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub replicas: u32,
    pub revision: u64,
    /// Service address slot: the stable address is the subnet's host number 2 + slot. A revision
    /// running beside its service has its service's slot.
    pub slot: u32,
    /// For a revision running beside its service: the share of traffic `paracloud traffic` set,
    /// overriding the manifest's weight until the next `up`.
    pub weight: Option<u32>,
    /// CPU per instance in cores set by `paracloud scale --cpu` or the autoscaler, overriding
    /// the manifest's `resources.cpu` until the next `up`.
    pub cpu: Option<f64>,
}

impl ServiceRecord {
    /// The CPU limit of its instances in cores: the override, else the manifest's (`None`:
    /// unlimited).
    pub fn cpu(&self, spec: &paracloud_manifest::Service) -> Option<f64> {
        paracloud_reconcile::effective_cpu(None, self.cpu, spec)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub key: InstanceKey,
    pub revision: u64,
    pub state: InstanceState,
    pub restarts: u32,
    pub since: Millis,
    /// When its current (or last) process started.
    pub started: Millis,
    pub pid: Option<i32>,
    /// Process start time in clock ticks, to tell the pid from a reused one.
    pub start_time: Option<u64>,
    /// Address slot: the instance's address is the subnet's host number 16 + slot.
    pub slot: u32,
    /// Its load-balancing weight in percent of its full share, set by the instance through PaCI
    /// (`None`: the full share). Kept across a restart of the instance under the same name.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Kept out of the routes: started by a migration until it takes over, or the old
    /// instance of a CRIU move while it is checkpointed.
    #[serde(default)]
    pub held: bool,
    /// Left stopped by the checkpoint of a CRIU move under way. A daemon that restarts before
    /// the move ends resumes it ([`InstanceRecord::held`] too is set).
    #[serde(default)]
    pub frozen: bool,
    /// CPU in cores for this instance alone (`paracloud migrate --cpus`), over its service's.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Why its health probes fail, while they do (the last reason stays once it has exited).
    #[serde(default)]
    pub health_failure: Option<ProbeFailure>,
}

impl InstanceRecord {
    /// Its CPU limit in cores: its own, else its service's (`None`: unlimited).
    pub fn cpu(
        &self,
        service: Option<&ServiceRecord>,
        spec: &paracloud_manifest::Service,
    ) -> Option<f64> {
        paracloud_reconcile::effective_cpu(self.cpu, service.and_then(|s| s.cpu), spec)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: Millis,
    pub app: String,
    /// What it is about: a service, an instance (`api.2`) or the app itself.
    pub subject: String,
    pub message: String,
}

/// One run of a capsule, as `paracloud capsule history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleRun {
    /// Who asked: the caller's user (API), or `schedule NAME`.
    pub who: String,
    pub capsule: String,
    pub app: String,
    pub selector: String,
    pub args: Vec<String>,
    /// Instances it attached to (`web.1`), with how each ended.
    pub targets: Vec<CapsuleTarget>,
    /// Milliseconds since the Unix epoch.
    pub started: Millis,
    /// `None` while it runs.
    pub duration_ms: Option<u64>,
    /// `running`, `ok`, `failed`, `timeout` or `refused`.
    pub status: String,
    /// Why it was refused or failed, empty otherwise.
    pub detail: String,
    /// Bytes of stdout, stderr and files returned, over all targets.
    pub output_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleTarget {
    pub instance: String,
    /// Exit code (128 + signal when killed); `None` while it runs or when it never started.
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub output_bytes: u64,
}

/// What a remote client's token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: no command at all.
    Viewer,
    /// Scales, restarts, migrates and runs capsules that only read.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A token of the remote API: only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the whole token, in lowercase hex.
    pub hash: String,
    pub created: Millis,
    /// When it stops being accepted (`None`: never).
    pub expires: Option<Millis>,
    /// When it was revoked (`None`: it was not).
    pub revoked: Option<Millis>,
}

impl TokenRecord {
    /// Why the token is not accepted at `now`, if it is not.
    pub fn unusable(&self, now: Millis) -> Option<&'static str> {
        if self.revoked.is_some() {
            Some("was revoked")
        } else if self.expires.is_some_and(|at| at <= now) {
            Some("has expired")
        } else {
            None
        }
    }
}

/// Everything in the store, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub apps: Vec<AppRecord>,
    pub instances: Vec<InstanceRecord>,
    pub networks: BTreeSet<String>,
    pub tokens: Vec<TokenRecord>,
    /// The task farms' batches still running (ended ones are read on demand).
    pub batches: Vec<BatchRecord>,
    /// The number the next batch gets (numbers are never reused).
    pub next_batch: u64,
}

/// A bag of tasks submitted to a task farm (`paracloud tasks submit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: u64,
    pub app: String,
    pub service: String,
    pub submitted: Millis,
    pub goal: BatchGoal,
    pub state: BatchState,
    /// When it ended (every task done or failed, cancelled, or its budget spent).
    pub ended: Option<Millis>,
    /// Instance time its workers have run, in milliseconds.
    pub spent_ms: u64,
    /// The workers the farm last asked for, the most it ran at once, and why.
    pub workers: u32,
    pub peak_workers: u32,
    pub plan: String,
    /// Tasks by state: done, failed for good, running, waiting, never run.
    pub counts: TaskCounts,
}

/// What a batch is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchGoal {
    /// Every task done by then.
    Deadline { at: Millis },
    /// As soon as it can, within this much instance time (workers × milliseconds).
    Budget { instance_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Running,
    /// Every task ran: succeeded, or failed once its retries were spent.
    Done,
    Cancelled,
    /// Its budget was spent with tasks still waiting; they were not run.
    BudgetSpent,
}

impl BatchState {
    pub fn name(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Done => "done",
            BatchState::Cancelled => "cancelled",
            BatchState::BudgetSpent => "budget spent",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
    pub pending: u32,
    #[serde(default)]
    pub not_run: u32,
}

/// One task of a batch: a `sh -c` command line, its runs, and the output of the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its line in the submitted file, from 1.
    pub index: u32,
    pub command: String,
    pub state: TaskState,
    pub attempts: Vec<Attempt>,
    /// The end of what the last run wrote (see `paracloud_runtime::EXEC_OUTPUT_LIMIT`).
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    /// Its last run failed and no retry is left.
    Failed,
    /// Never run: its batch was cancelled or ran out of budget first.
    NotRun,
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::NotRun => "not run",
        }
    }
}

/// One run of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The worker instance it ran on (`render.2`).
    pub worker: String,
    pub started: Millis,
    pub ended: Option<Millis>,
    /// Its exit code, once it ended by itself.
    pub code: Option<i32>,
    /// Why it did not end by itself (a timeout, a worker that went away).
    pub error: Option<String>,
}

/// One write to the desired state, as decided by the command layer; `Store::transact` writes
/// a decision's changes in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Creates or updates an application from a validated manifest: services whose spec
    /// changed get a new revision, replica counts, traffic shares and CPU go back to the
    /// manifest's.
    PutApp {
        manifest: Manifest,
        source: String,
        origin: String,
    },
    /// Marks an application for removal (`down`), with its volumes or not.
    MarkRemoving { app: String, volumes: bool },
    Replicas {
        app: String,
        service: String,
        replicas: u32,
    },
    /// CPU per instance of a service in cores (`None`: the manifest's).
    Cpu {
        app: String,
        service: String,
        cpu: Option<f64>,
    },
    /// The traffic share of a revision running beside its service (`None`: the manifest's).
    TrafficWeight {
        app: String,
        service: String,
        weight: Option<u32>,
    },
    /// Raises a service's revision so that its instances are replaced one by one.
    BumpRevision { app: String, service: String },
    /// An instance's load-balancing weight in percent of its full share (`None`: full).
    InstanceWeight {
        key: InstanceKey,
        weight: Option<u32>,
    },
    /// The application's network is to be set up again (it gains service addresses).
    NetworkStale { app: String },
    /// A new token of the remote API (a revoked one of the same name is replaced).
    PutToken(TokenRecord),
    /// A token stops being accepted, from `now` on.
    RevokeToken { name: String },
    Event {
        app: String,
        subject: String,
        message: String,
    },
    /// A new batch of a task farm and its tasks, in order, all waiting.
    SubmitBatch {
        batch: BatchRecord,
        tasks: Vec<String>,
    },
    /// A running batch ends, cancelled: its waiting tasks are not run (the running ones are
    /// stopped by the farm).
    CancelBatch { id: u64 },
}
