//! Migration of a catalogue primary by switchover (`paracloud migrate db.1`): two servers must
//! never share its data, so its successor cannot start beside it as any other service's does.
//! Instead:
//!
//! 1. the old primary's address goes into its data volume ([`SWITCHOVER_FILE`]) and the
//!    successor starts, held out of the routes: its entry script finds the volume locked by the
//!    old server, copies it into the volume's next data directory and follows it as a standby,
//!    while the old one serves;
//! 2. once the successor is ready, the old primary leaves the routes (new connections wait in
//!    the data plane) and is fenced ([`fence_command`]: MariaDB turns read-only and ends its
//!    clients' connections, Redis pauses its clients' writes, and each says how far its log
//!    goes; PostgreSQL's fence is its shutdown);
//! 3. the successor receives all of it while the old primary still answers
//!    ([`receive_command`]), the old primary is stopped (PostgreSQL's fast shutdown sends its
//!    last WAL to its standbys), and the successor takes over ([`take_over_command`]): it
//!    applies all the old primary wrote (PostgreSQL up to the shutdown checkpoint its control
//!    file names, the others up to the fence's position), so that it holds every acknowledged
//!    write, and becomes the primary;
//! 4. it joins the routes, and the read service is renewed replica by replica from it, as after
//!    a failover.
//!
//! The writes pause from step 2 to step 4. A successor that does not become ready leaves the old
//! primary serving; when a step of the pause fails, the successor is removed and the old primary
//! starts again on its own data, which it left whole (a restart ends its fence).

use std::sync::Arc;
use std::time::{Duration, Instant};

use paracloud_manifest::catalog::{
    data_volume_name, fence_command, receive_command, take_over_command, SWITCHOVER_FILE,
};
use paracloud_manifest::MigrateMethod;
use paracloud_reconcile::{InstanceKey, StopReason};
use paracloud_state::{AppRecord, InstanceRecord};

use crate::driver::Driver;
use crate::engine::{configured_env, Engine, StartAs};
use crate::migrate::{MigrateError, Migrating, Options, Outcome};

/// How long each entry-script step of the pause (fence, receive, take-over) may take.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(90);

impl<D: Driver> Engine<D> {
    /// Moves the catalogue primary `old` of `app` to a successor by switchover; returns when
    /// the old one has ended.
    pub(crate) async fn switch_over(
        self: &Arc<Self>,
        app: &AppRecord,
        old: &InstanceRecord,
        options: Options,
    ) -> Result<Outcome, MigrateError> {
        let begun = Instant::now();
        let key = &old.key;
        let spec = app
            .manifest
            .services
            .get(&key.service)
            .ok_or_else(|| MigrateError::NotFound(format!("no service {}", key.service)))?;
        let _migrating = Migrating::mark(self, key, options.reserved)?;
        let successor = self.reserve_successor(key)?;
        let new = successor.key.clone();
        let (from, to) = (key.name(), new.name());
        let note = |message: String| self.event(&key.app, &from, &message);
        let address = self
            .instance_address(app, old.slot)
            .ok_or_else(|| MigrateError::Failed(format!("{from} has no address")))?;
        let file = self
            .config
            .named_volume_dir(app, &data_volume_name(&key.service))
            .join(SWITCHOVER_FILE);
        std::fs::write(&file, format!("{}\n", address.addr()))
            .map_err(|e| MigrateError::Failed(format!("cannot write {}: {e}", file.display())))?;
        let forget = || {
            let _ = std::fs::remove_file(&file);
        };
        note(format!(
            "switchover to {to}: starting {to}, which copies {from} and follows it"
        ));

        let started = Instant::now();
        let start_as = StartAs {
            held: true,
            cpu: options.cpu,
            restore: None,
        };
        if let Err(e) = self.start(app, &new, false, start_as) {
            forget();
            return Err(MigrateError::Failed(e.to_string()));
        }
        // Its copy of the old primary comes first: it has its health check's start period.
        let copying = spec
            .health
            .as_ref()
            .map_or(Duration::from_secs(300), |h| h.start_period);
        if let Err(e) = self.wait_ready_within(&new, copying).await {
            self.abandon(&new).await;
            forget();
            note(format!("switchover to {to} abandoned: {e}"));
            return Err(MigrateError::Failed(format!(
                "{to} did not become ready: {e}; {from} keeps serving"
            )));
        }
        note(format!(
            "{to} follows {from}, ready in {} ms; {from} stops and {to} takes over",
            started.elapsed().as_millis()
        ));

        // The pause: new connections wait in the data plane while neither takes writes.
        let paused = Instant::now();
        self.store
            .update_instance(key, |record| record.held = true)?;
        self.push_routes();
        let mut steps = Vec::new();
        let handed = self
            .switch_primaries(app, (key, &new), spec.stop_grace_period, &mut steps)
            .await;
        if let Err(e) = handed {
            // Fenced or stopped, the old primary starts again on its own data, which it left
            // whole: its fence does not outlive its server.
            self.abandon(&new).await;
            forget();
            note(format!(
                "switchover to {to} abandoned: {e}; {from} starts again on its own data"
            ));
            if self.process_of(key).is_some() {
                let _ = self.mark_stopping(key, StopReason::Replace);
                self.stop(key, StopReason::Replace);
                let grace = spec.stop_grace_period * 2 + Duration::from_secs(5);
                self.wait_exit(key, grace).await;
            }
            self.store
                .update_instance(key, |record| record.held = false)?;
            if let Err(e) = self.start(app, key, true, StartAs::default()) {
                note(format!("cannot start: {e}"));
            }
            return Err(MigrateError::Failed(format!(
                "{e}; {from} starts again on its own data"
            )));
        }
        self.store
            .update_instance(&new, |record| record.held = false)?
            .ok_or_else(|| MigrateError::Failed(format!("{to} vanished from the state")))?;
        self.push_routes();
        let pause_ms = paused.elapsed().as_millis() as u64;
        note(format!(
            "switched: {to} takes the writes of {from}, after a pause of {pause_ms} ms ({})",
            steps.join(", ")
        ));
        self.renew_replicas(&new, "switchover").await;
        let took_ms = begun.elapsed().as_millis() as u64;
        note(format!("migrated to {to} via switchover in {took_ms} ms"));
        Ok(Outcome {
            from,
            to,
            via: MigrateMethod::Switchover,
            took_ms,
            handover_ms: Some(pause_ms),
            state_bytes: None,
        })
    }

    /// The pause's steps, once `old` is out of the routes: `old` is fenced, `new` receives all
    /// it logged, `old` stops, and `new` takes over; each step's time goes into `steps`.
    async fn switch_primaries(
        self: &Arc<Self>,
        app: &AppRecord,
        (old, new): (&InstanceKey, &InstanceKey),
        grace: Duration,
        steps: &mut Vec<String>,
    ) -> Result<(), String> {
        let (from, to) = (old.name(), new.name());
        let step = Instant::now();
        let position = self
            .run_entry(app, old, &fence_command())
            .await
            .map_err(|e| format!("{from} could not be fenced: {e}"))?;
        steps.push(format!("fence {} ms", step.elapsed().as_millis()));
        let step = Instant::now();
        self.run_entry(app, new, &receive_command(&position))
            .await
            .map_err(|e| format!("{to} did not receive all {from} logged: {e}"))?;
        steps.push(format!("received {} ms", step.elapsed().as_millis()));
        let step = Instant::now();
        self.mark_stopping(old, StopReason::Replace)
            .map_err(|e| e.to_string())?;
        self.stop(old, StopReason::Replace);
        let grace = grace * 2 + Duration::from_secs(5);
        if !self.wait_exit(old, grace).await {
            return Err(format!("{from} has not ended after {} s", grace.as_secs()));
        }
        steps.push(format!("stop {} ms", step.elapsed().as_millis()));
        let step = Instant::now();
        self.run_entry(app, new, &take_over_command(&position))
            .await
            .map_err(|e| format!("{to} could not take over: {e}"))?;
        steps.push(format!("take-over {} ms", step.elapsed().as_millis()));
        Ok(())
    }

    /// Runs `command` of the entry script in instance `key`; its standard output, trimmed, or
    /// why it failed.
    async fn run_entry(
        &self,
        app: &AppRecord,
        key: &InstanceKey,
        command: &[String],
    ) -> Result<String, String> {
        let spec = app
            .manifest
            .services
            .get(&key.service)
            .ok_or("its service is gone")?;
        let process = self.process_of(key).ok_or("it is not running")?;
        let env: Vec<(String, String)> = configured_env(spec, key).into_iter().collect();
        let output = self
            .driver
            .exec(&process, command, &env, ENTRY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if output.code == 0 {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
        }
        let why = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "exit code {}: {}",
            output.code,
            why.lines().last().unwrap_or("").trim()
        ))
    }
}
