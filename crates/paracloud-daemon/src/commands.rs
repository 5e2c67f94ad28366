//! The one way in: a [`Command`] from any caller is decided by `paracloud_command::decide`
//! against the state and written in the transaction that read it; then the loop is woken.

use axum::http::StatusCode;
use paracloud_command::{decide, Caller, Command, Decision, Limits, Refusal, RefusalKind};

use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;

/// Why a command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    State(#[from] paracloud_state::Error),
}

/// The HTTP status a refusal is answered with, on the API socket and on PaCI sockets alike.
pub fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal.kind {
        RefusalKind::Invalid => StatusCode::BAD_REQUEST,
        RefusalKind::NotFound => StatusCode::NOT_FOUND,
        RefusalKind::Conflict => StatusCode::CONFLICT,
        RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        RefusalKind::Gone => StatusCode::GONE,
        RefusalKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// The cores of this machine: more CPU per instance than that is never used.
pub fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The memory of this machine in bytes (`MemTotal` of /proc/meminfo), read once; without it, no
/// bound beyond the manifest's own.
pub fn machine_memory() -> u64 {
    static MEMORY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                kib.checked_mul(1024)
            })
            .unwrap_or(u64::MAX)
    })
}

impl<D: Driver> Engine<D> {
    /// What this machine allows, whoever asks.
    pub fn limits(&self) -> Limits {
        Limits {
            max_replicas: self.config.addresses.instance_slots(),
            wider_subnet: self.config.addresses.wider(),
            cores: machine_cores(),
            memory: machine_memory(),
        }
    }

    /// Decides `command` for `caller` and writes what it changes, events included, in one
    /// transaction; wakes the reconcile loop when the desired state changed, and pushes the
    /// routes when they did.
    /// What [`Engine::submit`] would decide now, with nothing written: a dry run's check of
    /// the deployment's rules.
    pub fn check(&self, caller: &Caller, command: &Command) -> Result<Decision, CommandError> {
        let snapshot = self.store.load()?;
        Ok(decide(caller, command, &snapshot, &self.limits())?)
    }

    pub fn submit(&self, caller: &Caller, command: &Command) -> Result<Decision, CommandError> {
        let limits = self.limits();
        let decision = self.store.transact(now_ms(), |snapshot| {
            let decision = decide(caller, command, snapshot, &limits)?;
            Ok::<_, CommandError>((decision.changes.clone(), decision))
        })?;
        for change in &decision.changes {
            if let paracloud_command::Change::Event {
                app,
                subject,
                message,
            } = change
            {
                tracing::info!(app, subject, "{message}");
            }
        }
        if let Command::Restart { app, service } = command {
            self.counters.requested_restart(app, service);
        }
        if decision.changes_desired_state() {
            self.wake();
        }
        if decision.changes_routes() {
            self.routes_changed();
        }
        Ok(decision)
    }
}
