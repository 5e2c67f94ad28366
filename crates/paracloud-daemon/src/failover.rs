//! Failover of a catalogue primary that cannot come back on its own data (its server failed
//! its restarts in a row; the planner's `Action::Failover`): the platform asks each running
//! replica how much of the primary's log it received, writes the address of the most advanced
//! one in the primary's data volume ([`FAILOVER_FILE`]), and starts the primary again. Its
//! entry script then sets the old data aside and starts as a primary from a copy of that
//! replica, at the write address the application already uses.
//!
//! While it chooses, the primary's service is marked as migrating, so that the reconcile loop
//! neither restarts it nor asks for another failover. Once the new primary is ready, the read
//! service is restarted (replica by replica, each new one a fresh copy of the new primary): a
//! replica may have received log of the old primary that the copy does not hold, and must not
//! go on from it.

use std::sync::Arc;
use std::time::Duration;

use paracloud_manifest::catalog::{data_volume_name, position_command, FAILOVER_FILE};
use paracloud_reconcile::InstanceKey;

use crate::driver::Driver;
use crate::engine::{configured_env, Engine, StartAs};
use crate::sync::lock;

/// How long a replica has to say its position.
const POSITION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the new primary may take to be ready (its copy included) before its replicas are
/// left as they are.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The replica a failover copies: the one that received the most of the primary's log (the
/// lowest-numbered among equals). `None` when none answered.
pub fn most_advanced(positions: &[(InstanceKey, Result<u64, String>)]) -> Option<&InstanceKey> {
    positions
        .iter()
        .filter_map(|(key, position)| position.as_ref().ok().map(|p| (key, *p)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.index.cmp(&a.0.index)))
        .map(|(key, _)| key)
}

impl<D: Driver> Engine<D> {
    /// Fails the primary `key` over to the most advanced of `replicas`, in a task of its own.
    pub(crate) fn failover(self: &Arc<Self>, key: InstanceKey, replicas: Vec<InstanceKey>) {
        let service = (key.app.clone(), key.service.clone());
        if !lock(&self.migrating).insert(service.clone()) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let started = engine.fail_over(&key, &replicas).await;
            lock(&engine.migrating).remove(&service);
            engine.wake();
            if started {
                engine.renew_replicas(&key, "failover").await;
            }
        });
    }

    /// Once the new primary `key` is ready, restarts its read service: each replica is
    /// replaced by a fresh copy of it. `after` names what made it primary, for the event.
    pub(crate) async fn renew_replicas(self: &Arc<Self>, key: &InstanceKey, after: &str) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let state = self
                .store
                .load()
                .ok()
                .and_then(|s| s.instances.into_iter().find(|i| &i.key == key))
                .map(|i| i.state);
            match state {
                Some(state) if state.is_ready() => break,
                Some(paracloud_reconcile::InstanceState::Exited { .. }) | None => return,
                Some(_) if tokio::time::Instant::now() >= deadline => return,
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let read = paracloud_manifest::catalog::read_service_name(&key.service);
        let renew = [paracloud_state::Change::BumpRevision {
            app: key.app.clone(),
            service: read.clone(),
        }];
        match self.store.apply(&renew, crate::clock::now_ms()) {
            Ok(()) => self.event(
                &key.app,
                &key.name(),
                &format!("{after}: the new primary is ready; {read} is renewed replica by replica, each a fresh copy of it"),
            ),
            Err(e) => tracing::error!("cannot restart {read} after the failover of {key}: {e}"),
        }
        self.wake();
    }

    /// Chooses the replica and starts the primary from it; whether it started the primary
    /// from a copy.
    async fn fail_over(self: &Arc<Self>, key: &InstanceKey, replicas: &[InstanceKey]) -> bool {
        let subject = key.name();
        // One snapshot: the application, and the replicas' address slots (a running instance
        // keeps its slot).
        let Ok(snapshot) = self.store.load() else {
            return false;
        };
        let Some(app) = snapshot.apps.iter().find(|a| a.name == key.app) else {
            return false;
        };
        let mut positions = Vec::new();
        for replica in replicas {
            positions.push((replica.clone(), self.position_of(app, replica).await));
        }
        let said: Vec<String> = positions
            .iter()
            .map(|(replica, position)| match position {
                Ok(bytes) => format!("{} at {bytes}", replica.name()),
                Err(e) => format!("{}: {e}", replica.name()),
            })
            .collect();
        let chosen = most_advanced(&positions).cloned();
        let address = chosen.as_ref().and_then(|replica| {
            let slot = snapshot.instances.iter().find(|i| &i.key == replica)?.slot;
            Some(self.instance_address(app, slot)?.addr())
        });
        let (Some(replica), Some(address)) = (chosen, address) else {
            self.event(
                &key.app,
                &subject,
                &format!(
                    "failover: no replica can take over ({}); restarting on its own data",
                    said.join("; ")
                ),
            );
            if let Err(e) = self.start(app, key, true, StartAs::default()) {
                self.event(&key.app, &subject, &format!("cannot start: {e}"));
            }
            return false;
        };
        let volume = self
            .config
            .named_volume_dir(app, &data_volume_name(&key.service));
        let file = volume.join(FAILOVER_FILE);
        if let Err(e) = std::fs::write(&file, format!("{address}\n")) {
            self.event(
                &key.app,
                &subject,
                &format!("failover: cannot write {}: {e}", file.display()),
            );
            return false;
        }
        self.event(
            &key.app,
            &subject,
            &format!(
                "failover: it cannot come back on its own data; {} is the most advanced replica (positions in the primary's log: {}), and the primary starts from a copy of it",
                replica.name(),
                said.join(", ")
            ),
        );
        match self.start(app, key, true, StartAs::default()) {
            Ok(()) => true,
            Err(e) => {
                self.event(&key.app, &subject, &format!("cannot start: {e}"));
                false
            }
        }
    }

    /// How much of the primary's log `replica` received, as its entry script says.
    async fn position_of(
        &self,
        app: &paracloud_state::AppRecord,
        replica: &InstanceKey,
    ) -> Result<u64, String> {
        let spec = app
            .manifest
            .services
            .get(&replica.service)
            .ok_or("its service is gone")?;
        let process = self.process_of(replica).ok_or("not running")?;
        let env: Vec<(String, String)> = configured_env(spec, replica).into_iter().collect();
        let output = self
            .driver
            .exec(&process, &position_command(), &env, POSITION_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let said = String::from_utf8_lossy(&output.stdout);
        if output.code != 0 {
            let why = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "exit code {}: {}",
                output.code,
                why.lines().last().unwrap_or("").trim()
            ));
        }
        said.trim()
            .parse::<u64>()
            .map_err(|_| format!("not a position: {:?}", said.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_that_received_the_most_is_copied() {
        let key = |i| InstanceKey::new("shop", "db-read", i);
        let positions = [
            (key(1), Ok(100)),
            (key(2), Err("not running".to_string())),
            (key(3), Ok(250)),
            (key(4), Ok(250)),
        ];
        assert_eq!(most_advanced(&positions), Some(&key(3)));
        assert_eq!(most_advanced(&positions[..2]), Some(&key(1)));
        assert_eq!(most_advanced(&positions[1..2]), None);
    }
}
