//! Commands: every change a caller can ask of the daemon, decided by one pure function.
//!
//! Whoever asks (the CLI over the API socket, a remote client with a token, an instance through
//! PaCI, the autoscaler, the scale-to-zero follower) builds a [`Command`] and names itself as a
//! [`Caller`]. [`decide`] checks who may ask for what ([`authorize`]), checks the request against
//! a snapshot of the state and the machine's [`Limits`], and returns a [`Decision`]: the
//! [`Change`]s to write (events included) and what the caller gets back. The daemon writes a
//! decision's changes in the same transaction its snapshot was read in
//! (`paracloud_state::Store::transact`), then wakes its reconcile loop. Nothing here does I/O or
//! reads a clock, so every rule is unit-tested on plain data.

mod caller;
mod decide;

pub use caller::{authorize, authorize_route, Caller};
pub use decide::MAX_TASKS;
pub use decide::{
    check_cpu, cores, decide, find_app, find_service, parse_instance, parse_via, revisions_of,
};
pub use paracloud_state::Change;
pub use paracloud_state::Role;

use std::collections::BTreeMap;

use paracloud_manifest::{Manifest, MigrateMethod};
use paracloud_reconcile::InstanceKey;

/// Every change a caller can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Creates or updates an application from a validated manifest whose images are resolved.
    Up {
        manifest: Manifest,
        /// The manifest as its author wrote it, and the file it came from.
        source: String,
        origin: String,
    },
    /// Takes an application down: its instances stop, then it is forgotten.
    Down { app: String, volumes: bool },
    /// Sets a service's instances, its CPU per instance, or both (`None`: unchanged).
    Scale {
        app: String,
        service: String,
        replicas: Option<u32>,
        cpu: Option<f64>,
        /// Why, for the event log (the autoscaler's reason, the follower's, an instance's).
        reason: Option<String>,
    },
    /// Sets the traffic share in percent of revisions running beside `service`, by revision
    /// name; revisions not named keep theirs.
    SetTraffic {
        app: String,
        service: String,
        weights: BTreeMap<String, u32>,
    },
    /// Replaces a service's instances one by one, make before break.
    Restart { app: String, service: String },
    /// Sets an instance's load-balancing weight in percent of its full share (`None`: full).
    SetWeight {
        instance: InstanceKey,
        weight: Option<u32>,
    },
    /// Moves an instance (`kv.1`) to a new one, to the service's current revision.
    Migrate {
        app: String,
        instance: String,
        /// `paci`, `criu` or `restart` (`None`: the service's `migrate` key).
        via: Option<String>,
        /// CPU in cores for the new instance alone.
        cpus: Option<f64>,
        /// A revision number or `latest`: only the current one can be asked for.
        revision: Option<String>,
    },
    /// Runs a capsule on an application's instances (checked against the application's
    /// capsule policy where it runs; here, whether the caller may run it at all).
    RunCapsule {
        app: String,
        capsule: String,
        /// Whether the capsule may write to its targets (`access = "write"`).
        writes: bool,
    },
    /// Creates a token of the remote API; the daemon made its secret and keeps only its hash.
    CreateToken {
        name: String,
        role: Role,
        /// SHA-256 of the token in lowercase hex.
        hash: String,
        /// When it stops being accepted (`None`: never).
        expires: Option<paracloud_reconcile::Millis>,
    },
    /// Revokes a token: it is refused from now on.
    RevokeToken { name: String },
    /// Submits a bag of tasks (each a `sh -c` command line) to a task farm, for a goal.
    SubmitTasks {
        app: String,
        service: String,
        tasks: Vec<String>,
        goal: paracloud_state::BatchGoal,
        /// When it was asked (a deadline must be after it).
        submitted: paracloud_reconcile::Millis,
    },
    /// Cancels a running batch: its waiting tasks are not run, its workers stop.
    CancelBatch { app: String, batch: u64 },
}

impl Command {
    /// The command's name in refusals: `scale`, `traffic`, ...
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Up { .. } => "up",
            Command::Down { .. } => "down",
            Command::Scale { cpu: Some(_), .. } => "scale --cpu",
            Command::Scale { .. } => "scale",
            Command::SetTraffic { .. } => "traffic",
            Command::Restart { .. } => "restart",
            Command::SetWeight { .. } => "set a weight",
            Command::Migrate { .. } => "migrate",
            Command::RunCapsule { writes: true, .. } => "run a capsule that writes",
            Command::RunCapsule { .. } => "run a capsule",
            Command::CreateToken { .. } => "create a token",
            Command::RevokeToken { .. } => "revoke a token",
            Command::SubmitTasks { .. } => "submit tasks",
            Command::CancelBatch { .. } => "cancel a batch",
        }
    }

    /// The application it acts on (none for the platform's tokens).
    pub fn app(&self) -> &str {
        match self {
            Command::CreateToken { .. } | Command::RevokeToken { .. } => "",
            Command::Up { manifest, .. } => &manifest.app,
            Command::Down { app, .. }
            | Command::Scale { app, .. }
            | Command::SetTraffic { app, .. }
            | Command::Restart { app, .. }
            | Command::Migrate { app, .. }
            | Command::RunCapsule { app, .. }
            | Command::SubmitTasks { app, .. }
            | Command::CancelBatch { app, .. } => app,
            Command::SetWeight { instance, .. } => &instance.app,
        }
    }
}

/// What the machine allows, whoever asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The most instances a service may have: as many as its application's subnet holds.
    pub max_replicas: u32,
    /// A larger subnet per application the daemon could be started with, as its prefix length
    /// and the instances it holds, when there is one: what a refusal of more replicas suggests.
    pub wider_subnet: Option<(u8, u32)>,
    /// The machine's cores: the most CPU an instance can use.
    pub cores: f64,
    /// The machine's memory in bytes: the most an instance can be given.
    pub memory: u64,
}

/// What [`decide`] concluded: the changes to write, in order, and what the caller learns.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub changes: Vec<Change>,
    pub outcome: Outcome,
}

impl Decision {
    fn changes(changes: Vec<Change>) -> Self {
        Self {
            changes,
            outcome: Outcome::Done,
        }
    }

    /// Whether the reconcile loop has work after it (the desired state changed).
    pub fn changes_desired_state(&self) -> bool {
        self.changes
            .iter()
            .any(|c| !matches!(c, Change::Event { .. } | Change::InstanceWeight { .. }))
    }

    /// Whether the data plane's routes change with it (an instance's weight).
    pub fn changes_routes(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, Change::InstanceWeight { .. }))
    }
}

/// What a caller gets back besides the changes being written.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// `up`: the services whose revision changed (their instances are replaced).
    Deployed {
        changed: Vec<String>,
    },
    /// An instance's request for instances: the bounds it was checked against.
    Replicas {
        min: u32,
        max: u32,
    },
    /// A migration to run now (it is not a state change of its own: it runs and records its
    /// steps as it goes).
    Migrate {
        key: InstanceKey,
        via: Option<MigrateMethod>,
        cpu: Option<f64>,
    },
    /// A batch of tasks submitted, by its number.
    Batch {
        id: u64,
    },
}

/// Why a command was refused: what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// The kind of a refusal, which each way in maps to its own answer (an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request itself is malformed or out of bounds whatever the state.
    Invalid,
    /// It names an application, service, instance or revision that does not exist.
    NotFound,
    /// It cannot be done in the current state (a port already published, bounds).
    Conflict,
    /// The caller may not ask for it.
    Forbidden,
    /// It names an instance that was there and is gone.
    Gone,
    /// It is larger than a way in takes.
    TooLarge,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
