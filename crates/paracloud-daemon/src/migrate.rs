//! Migration of one instance, make before break: the successor starts beside it (kept out of the
//! routes), takes its state (through PaCI, or by CRIU, or not at all), then the routes switch to
//! it and the old instance drains and stops. `paracloud migrate` and rolling updates both run it.
//!
//! Each step is an event of the application (`paracloud events`). A migration that fails before
//! the switch removes the successor and leaves the old instance serving: nothing is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paracloud_manifest::MigrateMethod;
use paracloud_paci::{EventKind, Target};
use paracloud_paci_events::HANDOVER_DEADLINE;
use paracloud_reconcile::{InstanceKey, InstanceState, StopReason};

use crate::driver::Driver;
use crate::engine::{Engine, StartAs};
use crate::paci_hub::{describe_answer, Answer};
use crate::sync::lock;

/// How long the successor may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restart migration waits for the old instance's checkpoint.
pub const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the successor has to open its event stream once ready.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// What a migration is asked to do beyond the service's spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The method; the service's `migrate` when `None`.
    pub via: Option<MigrateMethod>,
    /// CPU of the successor in cores; the service's when `None`.
    pub cpu: Option<f64>,
    /// The caller has already marked the service as migrating (the reconcile loop does, so
    /// that its next turn does not ask again); the mark is removed at the end all the same.
    pub reserved: bool,
}

/// A migration done.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub from: String,
    pub to: String,
    pub via: MigrateMethod,
    /// From the request to the old instance's end.
    pub took_ms: u64,
    /// From asking the old instance for its state to the successor having it (PaCI), or from the
    /// checkpoint to the restore (CRIU).
    pub handover_ms: Option<u64>,
    /// The size of the state handed over, in bytes.
    pub state_bytes: Option<u64>,
}

/// The bytes of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    NotFound(String),
    /// Not possible now or at all; nothing was started.
    #[error("{0}")]
    Refused(String),
    /// It went wrong on the way; the old instance keeps serving.
    #[error("{0}")]
    Failed(String),
}

impl From<paracloud_state::Error> for MigrateError {
    fn from(e: paracloud_state::Error) -> Self {
        MigrateError::Failed(e.to_string())
    }
}

/// Takes the service off the planner's hands while it lives.
pub(crate) struct Migrating<'a, D: Driver> {
    engine: &'a Engine<D>,
    service: (String, String),
}

impl<'a, D: Driver> Migrating<'a, D> {
    /// Marks `key`'s service as migrating; refused while another migration of it runs, unless
    /// the caller marked it already (`reserved`).
    pub(crate) fn mark(
        engine: &'a Engine<D>,
        key: &InstanceKey,
        reserved: bool,
    ) -> Result<Self, MigrateError> {
        let service = (key.app.clone(), key.service.clone());
        let inserted = lock(&engine.migrating).insert(service.clone());
        if !inserted && !reserved {
            return Err(MigrateError::Refused(format!(
                "a migration of {} is under way; wait for it to end (paracloud events shows its steps)",
                key.service
            )));
        }
        Ok(Self { engine, service })
    }
}

impl<D: Driver> Drop for Migrating<'_, D> {
    fn drop(&mut self) {
        lock(&self.engine.migrating).remove(&self.service);
        self.engine.wake();
    }
}

/// A successor's number, reserved by its migration until the migration ends: by then the
/// successor has a record of its own, or none is wanted.
pub(crate) struct Successor<'a, D: Driver> {
    engine: &'a Engine<D>,
    pub(crate) key: InstanceKey,
}

impl<D: Driver> Drop for Successor<'_, D> {
    fn drop(&mut self) {
        lock(&self.engine.successors).remove(&self.key);
    }
}

fn not_listening(key: &InstanceKey) -> String {
    format!(
        "{} does not follow its PaCI events, so it cannot hand its state over; migrate it with --via restart (its state is not kept), or set the service's `migrate`",
        key.name()
    )
}

/// How long a failed update waits before the planner asks to migrate the instance again.
const UPDATE_RETRY: Duration = Duration::from_secs(2);

impl<D: Driver> Engine<D> {
    /// Replaces an out-of-date instance by one of its service's current revision, as the
    /// planner asked (`Action::Migrate`), in a task of its own; a failed update is tried again
    /// after [`UPDATE_RETRY`], the old instance serving meanwhile.
    pub(crate) fn update(self: &Arc<Self>, key: InstanceKey) {
        // Marked at once, so that the next turn (10 ms on) does not ask again.
        let service = (key.app.clone(), key.service.clone());
        if !lock(&self.migrating).insert(service.clone()) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let options = Options {
                reserved: true,
                ..Default::default()
            };
            if let Err(e) = engine.migrate(&key, options).await {
                engine.event(&key.app, &key.name(), &format!("update: {e}"));
                // The old instance serves on; try again after a pause rather than at once (a
                // successor that cannot start would otherwise be started again and again).
                lock(&engine.migrating).insert(service.clone());
                tokio::time::sleep(UPDATE_RETRY).await;
                lock(&engine.migrating).remove(&service);
                engine.wake();
            }
        });
    }

    /// Reserves the next number of `key`'s service for its successor: above every recorded
    /// instance and every other reservation, chosen under the lock that every start takes.
    pub(crate) fn reserve_successor(
        &self,
        key: &InstanceKey,
    ) -> Result<Successor<'_, D>, MigrateError> {
        let mut reserved = lock(&self.successors);
        let recorded = self.store.load()?;
        let index = recorded
            .instances
            .iter()
            .map(|i| &i.key)
            .chain(reserved.iter())
            .filter(|k| k.app == key.app && k.service == key.service)
            .map(|k| k.index)
            .max()
            .unwrap_or(0)
            + 1;
        let new = InstanceKey::new(&key.app, &key.service, index);
        reserved.insert(new.clone());
        Ok(Successor {
            engine: self,
            key: new,
        })
    }

    /// Moves `key` to a new instance of its service's current revision; returns when the old
    /// one has ended.
    pub async fn migrate(
        self: &Arc<Self>,
        key: &InstanceKey,
        options: Options,
    ) -> Result<Outcome, MigrateError> {
        let begun = Instant::now();
        let snapshot = self.store.load()?;
        let app = snapshot
            .apps
            .iter()
            .find(|a| a.name == key.app)
            .ok_or_else(|| MigrateError::NotFound(format!("no application named {}", key.app)))?;
        let spec = app.manifest.services.get(&key.service).ok_or_else(|| {
            MigrateError::NotFound(format!(
                "application {} has no service named {}",
                key.app, key.service
            ))
        })?;
        let siblings: Vec<_> = snapshot
            .instances
            .iter()
            .filter(|i| i.key.app == key.app && i.key.service == key.service)
            .collect();
        let old = siblings.iter().find(|i| i.key == *key).ok_or_else(|| {
            let names: Vec<String> = snapshot
                .instances
                .iter()
                .filter(|i| i.key.app == key.app)
                .map(|i| i.key.name())
                .collect();
            MigrateError::NotFound(format!(
                "application {} has no instance {} (it has: {})",
                key.app,
                key.name(),
                names.join(", ")
            ))
        })?;
        if !old.state.is_ready() || old.held {
            return Err(MigrateError::Refused(format!(
                "{} is {}: only a running, ready instance can be migrated",
                key.name(),
                old.state.label()
            )));
        }
        if spec.is_catalog_primary() {
            return self.switch_over(app, old, options).await;
        }
        let current = app.services.get(&key.service).map_or(0, |s| s.revision);
        let mut via = options.via.unwrap_or(spec.migrate);
        if via == MigrateMethod::Switchover {
            return Err(MigrateError::Refused(format!(
                "{} is not the primary of a catalogue service: only a primary moves by switchover",
                key.name()
            )));
        }
        let mut criu = None;
        if via == MigrateMethod::Criu {
            criu =
                Some(crate::criu::Criu::find().map_err(|e| MigrateError::Refused(e.to_string()))?);
            if old.revision != current {
                if options.via.is_some() {
                    return Err(MigrateError::Refused(format!(
                        "{} runs revision {} of {}, which is at revision {current}: a checkpoint would bring the old program back; migrate it with --via restart or --via paci",
                        key.name(),
                        old.revision,
                        key.service
                    )));
                }
                // An update: the new revision's program must start, so nothing is restored.
                self.event(
                    &key.app,
                    &key.name(),
                    &format!("runs revision {} of {current}: replaced by a restart, as a checkpoint would bring the old program back", old.revision),
                );
                via = MigrateMethod::Restart;
                criu = None;
            }
        }
        if via == MigrateMethod::Paci && !self.paci.events.listening(key) {
            return Err(MigrateError::Refused(not_listening(key)));
        }
        let _migrating = Migrating::mark(self, key, options.reserved)?;
        let successor = self.reserve_successor(key)?;
        let new = successor.key.clone();
        let (from, to) = (key.name(), new.name());
        let note = |message: String| self.event(&key.app, &from, &message);
        note(format!(
            "migration to {to} via {}: starting {to}",
            via.name()
        ));

        if via == MigrateMethod::Restart && self.paci.events.listening(key) {
            let asked = Instant::now();
            let checkpoint = EventKind::Checkpoint {
                reason: format!("replaced by {to} (restart migration)"),
            };
            let answer = self
                .paci
                .events
                .send(key, checkpoint, CHECKPOINT_DEADLINE)
                .await;
            note(describe_answer("checkpoint", &answer, asked.elapsed()));
        }

        let mut handover_ms = None;
        let mut state_bytes = None;
        let start_as = StartAs {
            held: true,
            cpu: options.cpu,
            restore: None,
        };
        match via {
            MigrateMethod::Criu => {
                let criu = criu.expect("found above for a CRIU migration");
                let (ms, bytes) = self.criu_move(app, old, &new, start_as, &criu.path).await?;
                handover_ms = Some(ms);
                state_bytes = Some(bytes);
            }
            MigrateMethod::Paci | MigrateMethod::Restart | MigrateMethod::Switchover => {
                let started = Instant::now();
                self.start(app, &new, false, start_as)
                    .map_err(|e| MigrateError::Failed(e.to_string()))?;
                if let Err(e) = self.wait_ready(&new).await {
                    self.abandon(&new).await;
                    note(format!("migration to {to} abandoned: {e}"));
                    return Err(MigrateError::Failed(format!(
                        "{to} did not become ready: {e}; {from} keeps serving"
                    )));
                }
                note(format!(
                    "{to} ready in {} ms",
                    started.elapsed().as_millis()
                ));
            }
        }

        if via == MigrateMethod::Paci {
            match self.hand_over(key, &new).await {
                Ok((ms, bytes)) => {
                    handover_ms = Some(ms);
                    state_bytes = Some(bytes);
                    note(format!(
                        "state handed over to {to} through PaCI: {bytes} bytes in {ms} ms"
                    ));
                }
                Err(e) => {
                    self.abandon(&new).await;
                    note(format!("migration to {to} abandoned: {e}"));
                    return Err(MigrateError::Failed(format!("{e}; {from} keeps serving")));
                }
            }
        }

        // The switch: the successor joins the routes as the old instance leaves them.
        self.store
            .update_instance(&new, |successor| successor.held = false)?
            .ok_or_else(|| MigrateError::Failed(format!("{to} vanished from the state")))?;
        self.mark_stopping(key, StopReason::Replace)?;
        self.push_routes();
        note(format!("switched: {to} takes the traffic of {from}"));
        if via == MigrateMethod::Criu {
            // Stopped since its checkpoint, and now running as the successor: it must not run
            // on (a stop signal would wait for SIGCONT).
            if let Some(process) = self.process_of(key) {
                let _ = self
                    .driver
                    .signal(&process, nix::sys::signal::Signal::SIGKILL);
            }
        } else {
            self.stop(key, StopReason::Replace);
        }
        let grace = spec.stop_grace_period * 2 + Duration::from_secs(5);
        if !self.wait_exit(key, grace).await {
            return Err(MigrateError::Failed(format!(
                "{to} serves, but {from} has not ended after {} s",
                grace.as_secs()
            )));
        }
        let took_ms = begun.elapsed().as_millis() as u64;
        note(format!(
            "migrated to {to} via {} in {took_ms} ms",
            via.name()
        ));
        Ok(Outcome {
            from,
            to,
            via,
            took_ms,
            handover_ms,
            state_bytes,
        })
    }

    /// The CRIU way: `old` leaves the routes and is checkpointed (left stopped), `new` is
    /// restored from the checkpoint and waited for until ready. On a failure the old instance
    /// runs on and takes its traffic back. Returns the time from the checkpoint to the
    /// successor's readiness and the checkpoint's size.
    async fn criu_move(
        self: &Arc<Self>,
        app: &paracloud_state::AppRecord,
        old: &paracloud_state::InstanceRecord,
        new: &InstanceKey,
        mut start_as: StartAs,
        criu: &std::path::Path,
    ) -> Result<(u64, u64), MigrateError> {
        let key = &old.key;
        let (from, to) = (key.name(), new.name());
        let note = |message: String| self.event(&key.app, &from, &message);
        let process = self
            .process_of(key)
            .ok_or_else(|| MigrateError::Failed(format!("{from} has no process to checkpoint")))?;
        let config = self.config_of(app, old).map_err(MigrateError::Failed)?;
        let images = self.config.checkpoint_dir(new);
        let _ = std::fs::remove_dir_all(&images);

        // Out of the routes first: requests wait in the data plane rather than in a frozen
        // process, and none is cut by the checkpoint.
        self.set_held(key, true, true)?;
        tokio::time::sleep(crate::engine::ROUTE_PROPAGATION).await;
        let begun = Instant::now();
        let checkpoint = match self
            .driver
            .checkpoint(criu, &process, &config, &images)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // criu dump leaves the tree running when it fails.
                let _ = self
                    .driver
                    .signal(&process, nix::sys::signal::Signal::SIGCONT);
                let _ = self.set_held(key, false, false);
                note(format!("migration to {to} abandoned: {e}"));
                return Err(MigrateError::Failed(format!("{e}; {from} keeps serving")));
            }
        };
        let bytes = dir_size(&images);
        note(format!(
            "checkpointed by CRIU in {} ms ({bytes} bytes of images); restoring it as {to}",
            checkpoint.took.as_millis()
        ));
        start_as.restore = Some(Arc::new((criu.to_path_buf(), checkpoint)));
        let restored = match self.start(app, new, false, start_as) {
            Ok(()) => self.wait_ready(new).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = restored {
            self.abandon(new).await;
            let _ = self
                .driver
                .signal(&process, nix::sys::signal::Signal::SIGCONT);
            let _ = self.set_held(key, false, false);
            note(format!(
                "migration to {to} abandoned: {e}; {from} resumed (checkpoint kept in {})",
                images.display()
            ));
            return Err(MigrateError::Failed(format!(
                "{to} was not restored: {e}; {from} resumed and keeps serving"
            )));
        }
        let ms = begun.elapsed().as_millis() as u64;
        note(format!(
            "{to} restored and ready, {ms} ms after the checkpoint began"
        ));
        let _ = std::fs::remove_dir_all(&images);
        Ok((ms, bytes))
    }

    /// Keeps an instance out of the routes (or lets it back in), at once; `frozen`: it is about
    /// to be left stopped by a checkpoint (or is running again).
    fn set_held(&self, key: &InstanceKey, held: bool, frozen: bool) -> Result<(), MigrateError> {
        self.store.update_instance(key, |record| {
            record.held = held;
            record.frozen = frozen;
        })?;
        self.push_routes();
        Ok(())
    }

    /// Waits until `key` runs and is ready (still held out of the routes).
    pub(crate) async fn wait_ready(&self, key: &InstanceKey) -> Result<(), String> {
        self.wait_ready_within(key, READY_TIMEOUT).await
    }

    /// Waits until `key` runs and is ready, for at most `timeout`.
    pub(crate) async fn wait_ready_within(
        &self,
        key: &InstanceKey,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let failure = match self.store.instance(key).map_err(|e| e.to_string())? {
                Some(record) if record.state.is_ready() => return Ok(()),
                Some(record) => {
                    if let InstanceState::Exited { exit } = &record.state {
                        let why = exit
                            .error
                            .clone()
                            .or_else(|| exit.code.map(|c| format!("exited with code {c}")))
                            .unwrap_or_else(|| "it ended".into());
                        return Err(why);
                    }
                    record.health_failure
                }
                None => return Err("its record is gone".into()),
            };
            if Instant::now() > deadline {
                let why = failure.map(|f| format!(": {f}")).unwrap_or_default();
                return Err(format!("not ready after {} s{why}", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Asks `old` for its state and gives it to `new`; returns the time it took and its size.
    async fn hand_over(&self, old: &InstanceKey, new: &InstanceKey) -> Result<(u64, u64), String> {
        if !self.paci.events.listening(old) {
            return Err(not_listening(old));
        }
        if !self.paci.events.wait_listening(new, LISTEN_WAIT).await {
            return Err(format!(
                "{} did not open its PaCI event stream within {} s of being ready",
                new.name(),
                LISTEN_WAIT.as_secs()
            ));
        }
        let address = self
            .store
            .load()
            .ok()
            .and_then(|s| {
                let app = s.apps.iter().find(|a| a.name == new.app)?.clone();
                let record = s.instances.iter().find(|i| i.key == *new)?.clone();
                self.config
                    .addresses
                    .network(app.subnet_index)
                    .ok()?
                    .instance_address(record.slot)
                    .ok()
            })
            .ok_or_else(|| format!("{} has no address", new.name()))?;
        let asked = Instant::now();
        let migrate = EventKind::Migrate {
            to: Target {
                instance: new.name(),
                address: address.addr(),
            },
        };
        let state = match self.paci.events.send(old, migrate, HANDOVER_DEADLINE).await {
            Answer::Acked(ack) => ack.state.unwrap_or(serde_json::Value::Null),
            other => {
                return Err(describe_answer("migrate", &other, asked.elapsed()));
            }
        };
        let bytes = serde_json::to_vec(&state).map_or(0, |v| v.len() as u64);
        let restore = EventKind::Restore {
            from: old.name(),
            state: state.clone(),
        };
        match self.paci.events.send(new, restore, HANDOVER_DEADLINE).await {
            Answer::Acked(_) => Ok((asked.elapsed().as_millis() as u64, bytes)),
            other => {
                // The old instance handed its state over and waits: give it back, so that it
                // serves on as before.
                let back = EventKind::Restore {
                    from: old.name(),
                    state,
                };
                let _ = self.paci.events.send(old, back, HANDOVER_DEADLINE).await;
                Err(describe_answer("restore", &other, asked.elapsed()))
            }
        }
    }

    /// Stops a successor that will not take over.
    pub(crate) async fn abandon(self: &Arc<Self>, new: &InstanceKey) {
        if let Ok(Some(record)) = self.store.instance(new) {
            if matches!(
                record.state,
                InstanceState::Running { .. } | InstanceState::Starting
            ) {
                // A start under way is recorded as running first, then stopped.
                let _ = self.wait_exit(new, Duration::ZERO).await;
                if let Err(e) = self.mark_stopping(new, StopReason::ScaleIn) {
                    tracing::error!("cannot record that {new} is stopping: {e}");
                }
                self.push_routes();
                self.stop(new, StopReason::ScaleIn);
                let _ = self.wait_exit(new, Duration::from_secs(30)).await;
            }
        }
    }
}
