//! The reconcile loop and the thin layer that executes its plans through a [`Driver`].
//!
//! Each turn reads the store, computes `plan(desired, observed, now)`, runs the actions, and pushes
//! the data plane's routes. Instance processes are watched by one waiter task each (a pidfd, no
//! helper process); every change of state is written to the store before anything else looks at it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use paracloud_manifest::{Service, VolumeMount};
use paracloud_reconcile::{
    effective_cpu, plan, restarts_after_exit, Action, Desired, DesiredApp, ExitInfo, Health,
    InstanceKey, InstanceState, Millis, Observed, ObservedInstance, StopReason,
};
use paracloud_runtime::{
    InstanceConfig, Limits, Mount, NetworkAttachment, NetworkConfig, Process, Rootfs,
};
use paracloud_state::{AppRecord, InstanceRecord, Snapshot, Store};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use crate::addressing::{service_address_of, AddressPlan, AppNetwork};
use crate::clock::now_ms;
use crate::dataplane::DataplaneSupervisor;
use crate::driver::Driver;
use crate::health;
use crate::paci_hub::{describe_answer, socket_dir, Hub};
use crate::routes::{dataplane_config, served_on_bridge};
use crate::sync::lock;

/// Where the daemon keeps its state and which kernel objects it may use.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// State root: database, instance directories, volumes, logs, API socket.
    pub root: PathBuf,
    /// cgroup path (relative to each hierarchy) under which instance cgroups are made.
    pub cgroup_parent: String,
    /// Where application subnets are taken from, and their size.
    pub addresses: AddressPlan,
    /// The paracloud binary (sandbox-init, nsexec and the data plane run from it).
    pub exe: PathBuf,
    /// The state root's settings file (`daemon.toml`), read at start.
    pub settings: crate::settings::Settings,
    /// Where the remote API listens (`paracloud daemon --listen`), over the settings' `listen`.
    pub listen: Option<std::net::SocketAddr>,
}

impl DaemonConfig {
    pub fn instance_dir(&self, key: &InstanceKey) -> PathBuf {
        self.root.join("instances").join(&key.app).join(key.name())
    }

    pub fn log_path(&self, key: &InstanceKey) -> PathBuf {
        self.instance_dir(key).join("output.log")
    }

    pub fn volume_dir(&self, app: &str, volume: &str) -> PathBuf {
        self.root.join("volumes").join(app).join(volume)
    }

    /// Where the machine's external volume `name` is: made by its administrator, shared by the
    /// applications that name it, never removed by the platform.
    pub fn external_volume_dir(&self, name: &str) -> PathBuf {
        self.root.join("external-volumes").join(name)
    }

    /// The directory a service's named volume `name` of `app` is.
    pub fn named_volume_dir(&self, app: &AppRecord, name: &str) -> PathBuf {
        match app
            .manifest
            .volumes
            .get(name)
            .and_then(|v| v.external.as_deref())
        {
            Some(external) => self.external_volume_dir(external),
            None => self.volume_dir(&app.name, name),
        }
    }

    /// Where a checkpoint restored as `key` is kept while a CRIU migration runs.
    /// Where a CRIU move into `key` keeps its checkpoint images (those of a failed move stay
    /// there for a look until the application is removed).
    pub fn checkpoint_dir(&self, key: &InstanceKey) -> PathBuf {
        self.checkpoints_of(&key.app).join(key.id())
    }

    fn checkpoints_of(&self, app: &str) -> PathBuf {
        self.root.join("checkpoints").join(app)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.root.join(paracloud_api::SOCKET_NAME)
    }
}

/// How long a stopping instance keeps accepting after it left the routes, so that the data plane
/// has applied the change before the stop signal.
pub(crate) const ROUTE_PROPAGATION: Duration = Duration::from_millis(100);

/// How long a stopping instance waits at most for the data plane to confirm that it left the
/// routes.
const ROUTE_CONFIRMATION: Duration = Duration::from_secs(3);

/// The first host id of the applications' id ranges: above the ids of the host's users and of
/// the usual subordinate ranges (`/etc/subuid` starts at 100000).
const APP_IDS_BASE: u32 = 1 << 30;

/// The host ids of an application's instances with user namespaces: 65536 of them, one range
/// per application (per subnet, which no two applications share).
pub fn app_ids(subnet_index: u32) -> paracloud_runtime::IdRange {
    paracloud_runtime::IdRange {
        host: APP_IDS_BASE + subnet_index * 65536,
        size: 65536,
    }
}

/// How often the reconcile loop makes sure the database's reserve of disk space is in place.
const RESERVE_CHECK: Duration = Duration::from_secs(30);

/// How an instance is started beyond its service's spec (by a migration).
#[derive(Debug, Clone, Default)]
pub struct StartAs {
    /// Kept out of the routes until it takes over.
    pub held: bool,
    /// Its own CPU limit in cores.
    pub cpu: Option<f64>,
    /// Restored from a checkpoint by this CRIU binary instead of started from its command.
    pub restore: Option<Arc<(PathBuf, paracloud_runtime::Checkpoint)>>,
}

/// Why [`Engine::start`] started nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The number is held: by a live instance, a start under way, or a migration's successor.
    #[error("another instance holds its number")]
    Taken,
    #[error("{0}")]
    Failed(String),
}

/// A running instance process the daemon watches.
struct Live {
    process: Arc<Process>,
    /// Turns true when the waiter has recorded the exit.
    exited: watch::Receiver<bool>,
    health: Option<AbortHandle>,
}

pub struct Engine<D: Driver> {
    pub config: DaemonConfig,
    pub store: Store,
    pub driver: D,
    /// The image store (`<root>/images`).
    pub images: crate::images::Images,
    live: Mutex<HashMap<InstanceKey, Live>>,
    wake: Notify,
    /// Why instances wait, from the last plan (for `describe`).
    waiting: Mutex<Vec<(InstanceKey, String)>>,
    /// The CPU limit last written to each live instance's cgroup, so that a changed one is
    /// written once (and all of them once after a daemon restart).
    applied_cpu: Mutex<HashMap<InstanceKey, Option<f64>>>,
    dataplane: Arc<DataplaneSupervisor>,
    /// Every instance's PaCI: servers, events waiting for answers, reported load.
    pub paci: Arc<Hub>,
    /// Services (app, service) with a migration under way; the planner leaves them alone.
    pub(crate) migrating: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// The numbers migrations chose for their successors, not yet started: no other start
    /// takes them.
    pub(crate) successors: Mutex<std::collections::BTreeSet<InstanceKey>>,
    /// The last failure to set up each application's network, said once in its events.
    network_failures: Mutex<HashMap<String, String>>,
    /// The pseudo-terminals of the open `paracloud debug` sessions, by run: resized when the
    /// client's terminal is.
    pub(crate) terminals: Mutex<HashMap<i64, std::os::fd::OwnedFd>>,
    /// What `GET /metrics` reports that nothing else keeps (exits, restarts, decisions, pulls).
    pub counters: crate::counters::Counters,
    /// The brake on guessing tokens of the remote API.
    pub auth: crate::auth::Gate,
    /// The remote API's address and certificate fingerprint, once it listens.
    pub remote: std::sync::OnceLock<paracloud_api::RemoteView>,
    /// The last ten minutes of every application, a figure a second, for the dashboard.
    pub seconds: crate::seconds::Seconds,
    /// Each instance's measured CPU per request (by `routes::measured_key`), fed every second
    /// by the follower; the data plane's weights follow it.
    pub capacities: Mutex<paracloud_autoscale::capacity::Capacities>,
    /// The catalogue's database servers' figures, from their health checks.
    pub servers: crate::servers::Servers,
}

impl<D: Driver> Engine<D> {
    pub fn new(
        config: DaemonConfig,
        store: Store,
        driver: D,
        images: crate::images::Images,
    ) -> Arc<Self> {
        let dataplane = Arc::new(DataplaneSupervisor::new(&config.root, &config.exe));
        Arc::new(Self {
            config,
            store,
            driver,
            images,
            live: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            waiting: Mutex::new(Vec::new()),
            applied_cpu: Mutex::new(HashMap::new()),
            dataplane,
            paci: Arc::new(Hub::default()),
            migrating: Mutex::new(std::collections::BTreeSet::new()),
            successors: Mutex::new(std::collections::BTreeSet::new()),
            network_failures: Mutex::new(HashMap::new()),
            terminals: Mutex::new(HashMap::new()),
            counters: crate::counters::Counters::default(),
            auth: Default::default(),
            remote: Default::default(),
            seconds: Default::default(),
            capacities: Default::default(),
            servers: Default::default(),
        })
    }

    /// Removes what is left of an instance; blocks while the kernel finishes kills, so off the
    /// async threads.
    async fn cleanup(self: &Arc<Self>, id: String) {
        let engine = self.clone();
        let result = tokio::task::spawn_blocking(move || engine.driver.cleanup(&id)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!("cleanup: {e}");
        }
    }

    /// The process of a running instance the daemon watches.
    pub fn live_process(&self, key: &InstanceKey) -> Option<Arc<Process>> {
        lock(&self.live).get(key).map(|l| l.process.clone())
    }

    /// Asks the loop to run a turn now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn waiting(&self) -> Vec<(InstanceKey, String)> {
        lock(&self.waiting).clone()
    }

    pub fn event(&self, app: &str, subject: &str, message: &str) {
        tracing::info!(app, subject, "{message}");
        if let Err(e) = self.store.add_event(now_ms(), app, subject, message) {
            tracing::warn!("cannot record an event: {e}");
        }
    }

    /// Start-up is recovery: re-adopt the instances an earlier daemon left running, settle the
    /// ones caught half-way, and make sure the data plane runs.
    pub fn recover(self: &Arc<Self>) -> Result<(), paracloud_state::Error> {
        let snapshot = self.store.load()?;
        // Every network is set up again by the first turns (it is idempotent): its bridge or
        // firewall rules may be gone (a reboot) or older than this daemon.
        for app in snapshot.apps.iter().filter(|a| a.removing.is_none()) {
            if snapshot.networks.contains(&app.name) {
                self.store.set_network(&app.name, false)?;
            }
        }
        let apps: BTreeMap<&str, &AppRecord> =
            snapshot.apps.iter().map(|a| (a.name.as_str(), a)).collect();
        for mut record in snapshot.instances.clone() {
            let id = record.key.id();
            if let Err(e) = self.serve_paci(&record.key) {
                tracing::warn!("cannot serve PaCI for {}: {e}", record.key);
            }
            let alive = match (&record.state, record.pid, record.start_time) {
                (
                    InstanceState::Running { .. } | InstanceState::Stopping { .. },
                    Some(pid),
                    Some(start),
                ) => self.driver.adopt(pid, start).ok().flatten(),
                _ => None,
            };
            match alive {
                Some(process) => {
                    let service = apps
                        .get(record.key.app.as_str())
                        .and_then(|a| a.manifest.services.get(&record.key.service))
                        .cloned();
                    let address = apps
                        .get(record.key.app.as_str())
                        .and_then(|a| self.instance_address(a, record.slot));
                    self.event(
                        &record.key.app,
                        &record.key.name(),
                        &format!("re-adopted pid {}", process.pid),
                    );
                    let process = Arc::new(process);
                    self.watch(record.key.clone(), process.clone(), record.started);
                    if let (Some(service), Some(address)) = (service, address) {
                        if matches!(record.state, InstanceState::Running { .. }) {
                            self.start_health(
                                &record.key,
                                &service,
                                address,
                                process.clone(),
                                record.started,
                            );
                        }
                    }
                    if let InstanceState::Stopping { reason } = record.state {
                        if record.frozen {
                            // Checkpointed and taken over by its successor: it must not run on.
                            let _ = self.driver.signal(&process, Signal::SIGKILL);
                        } else {
                            self.stop(&record.key, reason);
                        }
                    } else if record.held {
                        self.settle_interrupted_move(record, &process)?;
                    }
                }
                None => {
                    if matches!(record.state, InstanceState::Exited { .. }) {
                        continue;
                    }
                    let _ = self.driver.cleanup(&id);
                    let requested = match record.state {
                        InstanceState::Stopping { reason } => Some(reason),
                        _ => None,
                    };
                    let error = match record.state {
                        InstanceState::Starting => {
                            "the daemon restarted while the instance was starting"
                        }
                        _ => "the instance ended while the daemon was away (exit status unknown)",
                    };
                    let exit = ExitInfo {
                        requested,
                        error: Some(error.to_string()),
                        ran_ms: now_ms().saturating_sub(record.started),
                        ..ExitInfo::default()
                    };
                    record.restarts = restarts_after_exit(record.restarts, &exit);
                    self.counters.exit(&record.key, &exit);
                    record.state = InstanceState::Exited { exit };
                    record.since = now_ms();
                    record.pid = None;
                    self.store.put_instance(&record)?;
                    self.event(&record.key.app, &record.key.name(), error);
                }
            }
        }
        Ok(())
    }

    /// A running instance held out of the routes by a migration that the daemon's restart cut
    /// short: the old instance of a CRIU move, stopped by its checkpoint, is resumed and takes
    /// its traffic back; a successor that never took over is stopped (its predecessor still
    /// serves).
    fn settle_interrupted_move(
        self: &Arc<Self>,
        record: InstanceRecord,
        process: &Process,
    ) -> Result<(), paracloud_state::Error> {
        let name = record.key.name();
        if record.frozen {
            if let Err(e) = self.driver.signal(process, Signal::SIGCONT) {
                tracing::warn!("cannot resume {name}: {e}");
            }
            self.store.update_instance(&record.key, |record| {
                record.held = false;
                record.frozen = false;
            })?;
            self.push_routes();
            self.event(
                &record.key.app,
                &name,
                "resumed: the daemon restarted during its CRIU migration, which is abandoned",
            );
        } else {
            self.event(
                &record.key.app,
                &name,
                "stopped: the daemon restarted during the migration that started it, which is abandoned",
            );
            self.stop(&record.key, StopReason::Replace);
        }
        Ok(())
    }

    /// The reconcile loop; runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut reserve_checked = tokio::time::Instant::now();
        loop {
            if reserve_checked.elapsed() >= RESERVE_CHECK {
                reserve_checked = tokio::time::Instant::now();
                if !self.store.keep_reserve() {
                    tracing::warn!(
                        "the state root's filesystem is full: the database's reserve is spent; free space there (an instance's writable layer, volumes or logs may have filled it)"
                    );
                }
            }
            let (next, acted) = match self.turn().await {
                Ok(turn) => turn,
                Err(e) => {
                    tracing::error!("reconcile turn failed: {e}");
                    (None, false)
                }
            };
            let mut delay = next
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(1));
            if acted {
                // What was just done may unlock the next step (removed instances let the network
                // go): look again soon rather than at the next tick.
                delay = delay.min(Duration::from_millis(10));
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// One reconcile step; returns when to wake for a backoff, and whether it did anything.
    async fn turn(self: &Arc<Self>) -> Result<(Option<Millis>, bool), paracloud_state::Error> {
        let snapshot = self.store.load()?;
        let (desired, mut observed) = views(&snapshot);
        observed.migrating = lock(&self.migrating).clone();
        observed.applied_cpu = {
            let live = lock(&self.live);
            let mut applied = lock(&self.applied_cpu);
            applied.retain(|key, _| live.contains_key(key));
            applied.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let plan = plan(&desired, &observed, now_ms());
        *lock(&self.waiting) = plan.waiting.clone();
        // A CPU write unlocks no other step: it does not call for an early next turn.
        let acted = plan
            .actions
            .iter()
            .any(|a| !matches!(a, Action::SetCpu { .. }));
        for action in plan.actions {
            self.execute(&snapshot, action).await;
        }
        self.dataplane.ensure_running();
        self.push_routes();
        Ok((plan.wake_at, acted))
    }

    fn network_of(&self, app: &AppRecord) -> Option<AppNetwork> {
        self.config.addresses.network(app.subnet_index).ok()
    }

    pub(crate) fn instance_address(&self, app: &AppRecord, slot: u32) -> Option<Ipv4Net> {
        self.network_of(app)?.instance_address(slot).ok()
    }

    async fn execute(self: &Arc<Self>, snapshot: &Snapshot, action: Action) {
        let app_of = |name: &str| snapshot.apps.iter().find(|a| a.name == name);
        match action {
            Action::EnsureNetwork { app } => {
                let Some(record) = app_of(&app) else { return };
                let network = match self.config.addresses.network(record.subnet_index) {
                    Ok(n) => n,
                    Err(e) => return self.event(&app, &app, &e.to_string()),
                };
                let (served, served_udp) = served_on_bridge(record, &network);
                let config = NetworkConfig {
                    bridge: network.bridge(),
                    gateway: network.gateway(),
                    // Revisions share their service's slot: one address per slot.
                    service_addresses: record
                        .services
                        .keys()
                        .filter_map(|name| service_address_of(record, &network, name))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    // The one thing of the host its instances may connect to: the data plane.
                    served,
                    served_udp,
                    segments: crate::routes::segments(record, &network, &snapshot.instances),
                };
                match self.driver.ensure_network(&config).await {
                    // Unrecorded, the next turn sets the network up again (it is idempotent).
                    Ok(()) => {
                        lock(&self.network_failures).remove(&app);
                        if let Err(e) = self.store.set_network(&app, true) {
                            tracing::error!("cannot record the network of {app}: {e}");
                        }
                    }
                    Err(e) => {
                        // Tried again every turn: said once, until it changes or works.
                        let message = format!("cannot set up the network: {e}");
                        let mut failures = lock(&self.network_failures);
                        if failures.get(&app) != Some(&message) {
                            failures.insert(app.clone(), message.clone());
                            drop(failures);
                            self.event(&app, &app, &message);
                        }
                    }
                }
            }
            Action::RemoveNetwork { app } => {
                if let Some(network) = app_of(&app).and_then(|a| self.network_of(a)) {
                    if let Err(e) = self.driver.remove_network(&network.bridge()).await {
                        return self.event(&app, &app, &format!("cannot remove the network: {e}"));
                    }
                }
                if let Err(e) = self.store.set_network(&app, false) {
                    tracing::error!("cannot record that the network of {app} is gone: {e}");
                }
            }
            Action::Migrate { key } => self.update(key),
            Action::Failover { key, replicas } => self.failover(key, replicas),
            Action::Start { key, restart } => {
                let Some(app) = app_of(&key.app) else { return };
                match self.start(app, &key, restart, StartAs::default()) {
                    Ok(()) => {}
                    // A migration's successor, or a start already under way: the next turn
                    // plans with it.
                    Err(StartError::Taken) => {}
                    Err(StartError::Failed(e)) => {
                        self.event(&key.app, &key.name(), &format!("cannot start: {e}"))
                    }
                }
            }
            Action::Stop { key, reason } => {
                if let Ok(true) = self.mark_stopping(&key, reason) {
                    // Out of the data plane's routes first, then stopped (see `stop`).
                    self.push_routes();
                    self.stop(&key, reason);
                }
            }
            Action::SetCpu { key, cpu, resize } => {
                match self.driver.set_cpu(&key.id(), cpu) {
                    Ok(()) => {
                        // A change under a running instance: tell it, so that it can size its
                        // thread pools.
                        if resize {
                            let memory = app_of(&key.app)
                                .and_then(|a| a.manifest.services.get(&key.service))
                                .and_then(|s| s.resources.memory);
                            self.paci.events.notify(
                                &key,
                                paracloud_paci::EventKind::Resize { cpu, memory },
                                paracloud_paci_events::RESIZE_DEADLINE,
                            );
                        }
                        lock(&self.applied_cpu).insert(key, cpu);
                    }
                    // The instance may be ending: its waiter removes it from `live`.
                    Err(e) => tracing::warn!("cannot set the cpu limit of {key}: {e}"),
                }
            }
            Action::Remove { key } => {
                self.cleanup(key.id()).await;
                self.paci.forget(&key);
                let _ = std::fs::remove_dir_all(socket_dir(&self.config.root, &key));
                let dir = self.config.instance_dir(&key);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("cannot remove {}: {e}", dir.display());
                    }
                }
                // Undeleted, the next turn removes it again.
                if let Err(e) = self.store.delete_instance(&key) {
                    tracing::error!("cannot forget {key}: {e}");
                }
            }
            Action::Forget { app, volumes } => {
                let _ = std::fs::remove_dir_all(self.config.root.join("instances").join(&app));
                let _ = std::fs::remove_dir_all(self.config.checkpoints_of(&app));
                // Size-limited volumes are filesystems mounted while the application exists;
                // their images stay unless the volumes go.
                paracloud_runtime::volume::release_volumes(
                    &self.config.root.join("volumes").join(&app),
                );
                if volumes {
                    let _ = std::fs::remove_dir_all(self.config.root.join("volumes").join(&app));
                }
                if self.store.forget_app(&app).is_ok() {
                    let what = if volumes {
                        "removed with its volumes"
                    } else {
                        "removed (volumes kept)"
                    };
                    self.event(&app, &app, what);
                }
            }
        }
    }

    /// Records the instance as starting, then creates it in a task of its own.
    pub(crate) fn start(
        self: &Arc<Self>,
        app: &AppRecord,
        key: &InstanceKey,
        restart: bool,
        start_as: StartAs,
    ) -> Result<(), StartError> {
        let service = app
            .manifest
            .services
            .get(&key.service)
            .ok_or_else(|| StartError::Failed("no such service".into()))?
            .clone();
        let revision = app
            .services
            .get(&key.service)
            .map(|s| s.revision)
            .unwrap_or(0);
        let network = self
            .network_of(app)
            .ok_or_else(|| StartError::Failed("the application has no subnet".into()))?;
        let rootfs = self
            .images
            .rootfs(&service.image)
            .map_err(StartError::Failed)?;
        let now = now_ms();
        let mut previous_revision = None;
        let claimed = {
            // A successor's number, chosen by its migration, is its own until it starts.
            let reserved = lock(&self.successors);
            if reserved.contains(key) && !start_as.held {
                return Err(StartError::Taken);
            }
            self.store.claim_instance(key, |previous, free_slot| {
                previous_revision = previous.map(|p| p.revision);
                InstanceRecord {
                    key: key.clone(),
                    revision,
                    state: InstanceState::Starting,
                    // A new revision is a new program: the old one's restarts are not its own.
                    restarts: match (previous, restart) {
                        (Some(p), true) if p.revision == revision => p.restarts + 1,
                        _ => 0,
                    },
                    since: now,
                    started: now,
                    pid: None,
                    start_time: None,
                    slot: previous.map_or(free_slot, |p| p.slot),
                    weight: None,
                    held: start_as.held,
                    frozen: false,
                    cpu: start_as.cpu,
                    health_failure: None,
                }
            })
        };
        let record = claimed
            .map_err(|e| StartError::Failed(e.to_string()))?
            .ok_or(StartError::Taken)?;
        if restart && previous_revision == Some(revision) {
            self.counters.policy_restart(key);
        }
        if previous_revision.is_some_and(|r| r != revision) {
            // Nor is its output: `logs` and `up` show the new revision's alone.
            let _ = crate::logs::set_aside(&self.config.log_path(key), crate::logs::KEEP_ROTATED);
        }
        let address = network
            .instance_address(record.slot)
            .map_err(|e| StartError::Failed(e.to_string()))?;
        let paci_dir = self
            .serve_paci(key)
            .map_err(|e| StartError::Failed(format!("cannot create its PaCI socket: {e}")))?;
        let mut config = self.instance_config(app, &service, key, address, &network, rootfs);
        with_paci(&mut config, paci_dir);
        if start_as.cpu.is_some() {
            config.limits.cpu = start_as.cpu;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            let result = match &start_as.restore {
                Some(restore) => {
                    let (criu, checkpoint) = restore.as_ref();
                    engine.driver.restore(criu, &config, checkpoint).await
                }
                None => engine.driver.start(&config).await,
            };
            let mut record = record;
            let now = now_ms();
            match result {
                Ok(process) => {
                    lock(&engine.applied_cpu).insert(record.key.clone(), config.limits.cpu);
                    record.pid = Some(process.pid);
                    record.start_time = Some(process.start_time);
                    record.started = now;
                    record.since = now;
                    record.state = InstanceState::Running {
                        health: if service.health.is_some() {
                            Health::Unknown
                        } else {
                            Health::None
                        },
                    };
                    let pid = process.pid;
                    if let Err(e) = engine.record_start_outcome(&record) {
                        tracing::error!("cannot record the start of {}: {e}", record.key);
                    }
                    let how = if start_as.restore.is_some() {
                        "restored from its checkpoint"
                    } else {
                        "started"
                    };
                    engine.event(
                        &record.key.app,
                        &record.key.name(),
                        &format!("{how}, pid {pid}"),
                    );
                    let process = Arc::new(process);
                    engine.watch(record.key.clone(), process.clone(), now);
                    engine.start_health(&record.key, &service, address, process, now);
                }
                Err(e) => {
                    engine.cleanup(record.key.id()).await;
                    let exit = ExitInfo {
                        error: Some(e.to_string()),
                        ..ExitInfo::default()
                    };
                    engine.counters.exit(&record.key, &exit);
                    record.state = InstanceState::Exited { exit };
                    record.since = now;
                    if let Err(e) = engine.record_start_outcome(&record) {
                        tracing::error!("cannot record the failed start of {}: {e}", record.key);
                    }
                    engine.event(
                        &record.key.app,
                        &record.key.name(),
                        &format!("failed to start: {e}"),
                    );
                }
            }
            engine.wake();
        });
        Ok(())
    }

    /// Stores how a start ended (state, pid, times) over the current record: what the
    /// instance set meanwhile through PaCI (its weight) stays.
    fn record_start_outcome(&self, outcome: &InstanceRecord) -> Result<(), paracloud_state::Error> {
        let updated = self.store.update_instance(&outcome.key, |record| {
            record.state = outcome.state.clone();
            record.pid = outcome.pid;
            record.start_time = outcome.start_time;
            record.started = outcome.started;
            record.since = outcome.since;
        })?;
        if updated.is_none() {
            self.store.put_instance(outcome)?;
        }
        Ok(())
    }

    /// The config an existing instance was started with (its slot's address, the service's
    /// current spec), PaCI socket included.
    pub(crate) fn config_of(
        &self,
        app: &AppRecord,
        record: &InstanceRecord,
    ) -> Result<InstanceConfig, String> {
        let key = &record.key;
        let service = app
            .manifest
            .services
            .get(&key.service)
            .ok_or("no such service")?;
        let network = self
            .network_of(app)
            .ok_or("the application has no subnet")?;
        let address = network
            .instance_address(record.slot)
            .map_err(|e| e.to_string())?;
        let rootfs = self.images.rootfs(&service.image)?;
        let mut config = self.instance_config(app, service, key, address, &network, rootfs);
        with_paci(&mut config, socket_dir(&self.config.root, key));
        if record.cpu.is_some() {
            config.limits.cpu = record.cpu;
        }
        Ok(config)
    }

    /// The process of a live instance.
    pub(crate) fn process_of(&self, key: &InstanceKey) -> Option<Arc<Process>> {
        lock(&self.live).get(key).map(|l| l.process.clone())
    }

    fn instance_config(
        &self,
        app: &AppRecord,
        service: &Service,
        key: &InstanceKey,
        address: Ipv4Net,
        network: &AppNetwork,
        rootfs: Rootfs,
    ) -> InstanceConfig {
        // Revisions (`api@canary`) are reached through their service's name, and a service by
        // its name and aliases from the services it shares a network with.
        let manifest = &app.manifest;
        let hosts: Vec<(String, Ipv4Addr)> = app
            .services
            .iter()
            .filter(|(name, _)| !name.contains(paracloud_manifest::REVISION_SEPARATOR))
            .flat_map(|(name, s)| {
                let address = service_address_of(app, network, name)
                    .unwrap_or_else(|| network.service_address(s.slot));
                manifest
                    .names_of(&key.service, name)
                    .into_iter()
                    .map(move |n| (n, address))
            })
            .collect();
        let segments = match manifest.is_split() {
            false => Vec::new(),
            true => {
                let mine = manifest.networks_of(&key.service);
                manifest
                    .network_names()
                    .into_iter()
                    .map(|n| (n.to_owned(), mine.contains(&n)))
                    .collect()
            }
        };
        // A volume is its services' alone (0700); one of a service with a `user` is that user's.
        let mut owned = Vec::new();
        let mounts = service
            .volumes
            .iter()
            .map(|v| match v {
                VolumeMount::Named {
                    name,
                    target,
                    read_only,
                } => {
                    let source = self.config.named_volume_dir(app, name);
                    let external = app
                        .manifest
                        .volumes
                        .get(name)
                        .is_some_and(|v| v.external.is_some());
                    // An external volume is its administrator's to make (`up` checks it is there).
                    if !external {
                        if let Err(e) = private_dir(&source) {
                            tracing::warn!("cannot create volume {}: {e}", source.display());
                        }
                    }
                    if service.user.is_some() {
                        owned.push(source.clone());
                    }
                    Mount {
                        source,
                        target: target.clone(),
                        read_only: *read_only,
                        size: app.manifest.volumes.get(name).and_then(|v| v.size),
                    }
                }
                VolumeMount::Bind {
                    source,
                    target,
                    read_only,
                } => Mount {
                    source: source.clone(),
                    target: target.clone(),
                    read_only: *read_only,
                    size: None,
                },
            })
            .collect();
        let env = configured_env(service, key);
        InstanceConfig {
            id: key.id(),
            hostname: service.hostname.clone().unwrap_or_else(|| key.name()),
            dir: self.config.instance_dir(key),
            rootfs,
            argv: service.argv(),
            env,
            working_dir: service.working_dir.clone(),
            user: service.user.clone(),
            mounts,
            hosts,
            network: Some(NetworkAttachment {
                bridge: network.bridge(),
                address,
                segments,
                // Fixed service addresses outside the application's subnet.
                routes: app
                    .services
                    .keys()
                    .filter_map(|name| manifest.fixed_address(name))
                    .filter(|a| !network.subnet.contains(a))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                gateway: Some(network.gateway().addr()),
                bridge_addresses: network.service_addresses().collect(),
            }),
            limits: Limits {
                // `paracloud scale --cpu` and the autoscaler may have changed it since `up`.
                cpu: effective_cpu(
                    None,
                    app.services.get(&key.service).and_then(|r| r.cpu),
                    service,
                ),
                memory: service.resources.memory,
                pids: service.resources.pids,
                disk: service.resources.disk.or(self.config.settings.default_disk),
                memory_low: service.resources.memory_reservation,
                // 1024 shares a core, as Docker's --cpu-shares.
                cpu_shares: service
                    .resources
                    .cpu_reservation
                    .map(|cores| (cores * 1024.0).round().max(2.0) as u64),
            },
            capabilities: service.cap_add.clone(),
            log_path: self.config.log_path(key),
            owned,
            userns: self
                .host_ids_reason(service)
                .is_none()
                .then(|| app_ids(app.subnet_index)),
            sandbox: sandbox(&service.sandbox, self.config.settings.instance_open_files),
        }
    }

    /// Why the instances of `service` run with host ids, without a user namespace of their own;
    /// `None` when each one has its own.
    pub fn host_ids_reason(&self, service: &paracloud_manifest::Service) -> Option<String> {
        let settings = &self.config.settings;
        if let Some(why) = &settings.userns_unavailable {
            return Some(format!(
                "this machine cannot give instances user namespaces ({why})"
            ));
        }
        if settings.userns != Some(true) {
            return Some(
                "user namespaces are off for this daemon (`userns = false` in daemon.toml)".into(),
            );
        }
        if service.sandbox.host_ids {
            return Some("its manifest says `userns = false`".into());
        }
        // CRIU checkpoints only a process whose namespaces all belong to its user namespace; an
        // instance's mount, network and pid namespaces stay the host's (its root cannot mount or
        // configure its network).
        if service.migrate == paracloud_manifest::MigrateMethod::Criu {
            return Some(
                "it migrates by CRIU (`migrate = \"criu\"`), which cannot checkpoint an instance in a user namespace of its own".into(),
            );
        }
        None
    }

    /// One waiter task per process: records its exit and wakes the loop.
    fn watch(self: &Arc<Self>, key: InstanceKey, process: Arc<Process>, started: Millis) {
        let (tx, rx) = watch::channel(false);
        lock(&self.live).insert(
            key.clone(),
            Live {
                process: process.clone(),
                exited: rx,
                health: None,
            },
        );
        let engine = self.clone();
        tokio::spawn(async move {
            let id = key.id();
            let exit = engine.driver.wait(&id, &process).await;
            if let Some(live) = lock(&engine.live).remove(&key) {
                if let Some(h) = live.health {
                    h.abort();
                }
            }
            engine.cleanup(id).await;
            let now = now_ms();
            let mut message = String::new();
            let recorded = engine.store.update_instance(&key, |record| {
                let requested = match record.state {
                    InstanceState::Stopping { reason } => Some(reason),
                    _ => None,
                };
                let mut info = ExitInfo {
                    requested,
                    ran_ms: now.saturating_sub(started),
                    ..ExitInfo::default()
                };
                match &exit {
                    Ok(exit) => {
                        info.code = exit.code;
                        info.signal = exit.signal;
                        info.oom_killed = exit.oom_killed;
                    }
                    Err(e) => info.error = Some(format!("its end could not be observed: {e}")),
                }
                message = info.describe();
                record.restarts = restarts_after_exit(record.restarts, &info);
                engine.counters.exit(&key, &info);
                record.state = InstanceState::Exited { exit: info };
                record.since = now;
                record.pid = None;
            });
            match recorded {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = tx.send(true);
                    return;
                }
                Err(e) => tracing::error!("cannot record the exit of {key}: {e}"),
            }
            engine.event(&key.app, &key.name(), &message);
            let _ = tx.send(true);
            engine.wake();
        });
    }

    fn start_health(
        self: &Arc<Self>,
        key: &InstanceKey,
        service: &Service,
        address: Ipv4Net,
        process: Arc<Process>,
        started: Millis,
    ) {
        let Some(check) = service.health.clone() else {
            return;
        };
        let env = configured_env(service, key).into_iter().collect();
        let engine = self.clone();
        let task_key = key.clone();
        // A database server of the catalogue prints its figures at each check.
        let server = service
            .catalog
            .as_ref()
            .is_some_and(|c| c.kind.promotes_replicas());
        let id = key.id();
        let handle = tokio::spawn(async move {
            health::run(
                check,
                env,
                (address.addr(), process),
                started,
                &engine.driver,
                |health, failure| engine.set_health(&task_key, health, failure),
                |output| {
                    if server {
                        engine.servers.heard(&id, output, now_ms());
                    }
                },
            )
            .await
        });
        if let Some(live) = lock(&self.live).get_mut(key) {
            live.health = Some(handle.abort_handle());
        }
    }

    /// Records that an instance is stopping, unless its end is already recorded: a stop decided
    /// on a snapshot taken before its process ended must not make it `stopping` again, with no
    /// process left whose end would ever be recorded. True when recorded.
    pub(crate) fn mark_stopping(
        &self,
        key: &InstanceKey,
        reason: StopReason,
    ) -> Result<bool, paracloud_state::Error> {
        let mut marked = false;
        self.store.update_instance(key, |record| {
            if !matches!(record.state, InstanceState::Exited { .. }) {
                record.state = InstanceState::Stopping { reason };
                record.since = now_ms();
                marked = true;
            }
        })?;
        Ok(marked)
    }

    /// Records what the probe loop reports: a new health (with an event that says what failed),
    /// and why the probes fail, while they do.
    fn set_health(
        &self,
        key: &InstanceKey,
        health: Option<Health>,
        failure: Option<&paracloud_reconcile::ProbeFailure>,
    ) {
        let mut running = false;
        let updated = self.store.update_instance(key, |record| {
            running = matches!(record.state, InstanceState::Running { .. });
            if running {
                if let Some(health) = health {
                    record.state = InstanceState::Running { health };
                }
                record.health_failure = failure.cloned();
            }
        });
        let Some(health) = health else { return };
        if running && matches!(updated, Ok(Some(_))) {
            let word = match health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                Health::Unknown | Health::None => "health unknown",
            };
            let message = match failure {
                Some(failure) if health == Health::Unhealthy => {
                    format!("{word}: {}", failure.reason)
                }
                _ => word.to_string(),
            };
            self.event(&key.app, &key.name(), &message);
            self.wake();
        }
    }

    /// Waits until the instance's process has ended, at most `timeout`; true when it has (or
    /// was not running).
    pub(crate) async fn wait_exit(&self, key: &InstanceKey, timeout: Duration) -> bool {
        let Some(mut exited) = lock(&self.live).get(key).map(|l| l.exited.clone()) else {
            return true;
        };
        let result = tokio::time::timeout(timeout, exited.wait_for(|e| *e)).await;
        result.is_ok()
    }

    /// Sends the stop signal, waits the grace period, then kills.
    pub(crate) fn stop(self: &Arc<Self>, key: &InstanceKey, reason: StopReason) {
        let Some((process, mut exited)) = lock(&self.live)
            .get(key)
            .map(|l| (l.process.clone(), l.exited.clone()))
        else {
            return;
        };
        let (signal, grace) = self
            .store
            .load()
            .ok()
            .and_then(|s| {
                let app = s.apps.into_iter().find(|a| a.name == key.app)?;
                let service = app.manifest.services.get(&key.service)?;
                Some((service.stop_signal.clone(), service.stop_grace_period))
            })
            .unwrap_or_else(|| ("SIGTERM".to_string(), Duration::from_secs(10)));
        let signal = signal.parse::<Signal>().unwrap_or(Signal::SIGTERM);
        let engine = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let why = match reason {
                StopReason::ScaleIn => "scale-in",
                StopReason::Down => "down",
                StopReason::Replace => "replaced by a new revision",
                StopReason::Unhealthy => "unhealthy",
            };
            engine.event(
                &key.app,
                &key.name(),
                &format!("stopping ({why}): {signal}"),
            );
            let asked = tokio::time::Instant::now();
            // An instance that follows its PaCI events is asked to drain first, and gets its
            // stop signal once it answers or when the grace period is over.
            if engine.paci.events.listening(&key) {
                let drain = paracloud_paci::EventKind::Drain {
                    reason: why.to_string(),
                };
                let answer = engine.paci.events.send(&key, drain, grace).await;
                engine.event(
                    &key.app,
                    &key.name(),
                    &describe_answer("drain", &answer, asked.elapsed()),
                );
            }
            // Let the data plane apply the routes without this instance before it stops
            // accepting: new requests go elsewhere, requests in flight finish in the grace period.
            // A busy machine can take longer than ROUTE_PROPAGATION to reload the routes: wait
            // until the data plane says the instance is out of them (bounded).
            engine.wait_out_of_routes(&key, ROUTE_CONFIRMATION).await;
            tokio::time::sleep(ROUTE_PROPAGATION.saturating_sub(asked.elapsed())).await;
            let _ = engine.driver.signal(&process, signal);
            let ended = tokio::time::timeout(grace, exited.wait_for(|e| *e))
                .await
                .is_ok();
            if !ended {
                engine.event(&key.app, &key.name(), "grace period over: SIGKILL");
                let _ = engine.driver.signal(&process, Signal::SIGKILL);
            }
        });
    }

    /// Publishes routes and makes sure the data plane runs (called once at start-up, in the
    /// runtime): from then on its end is noticed at once through its pidfd, and its listening
    /// sockets are collected after every push (see the `dataplane` module).
    pub fn start_dataplane(&self) {
        self.dataplane.ensure_running();
        self.push_routes();
        tokio::spawn(self.dataplane.clone().watch_loop());
        tokio::spawn(self.dataplane.clone().collect_loop());
    }

    /// Replaces the data plane by a new one and drains the old one for at most `drain`
    /// (`paracloud dataplane restart`), in a task of its own, so that a caller who goes away
    /// does not cut it short.
    pub async fn restart_dataplane(
        &self,
        drain: Duration,
    ) -> Result<crate::dataplane::Replaced, crate::dataplane::ReplaceError> {
        let supervisor = self.dataplane.clone();
        tokio::spawn(async move { supervisor.replace(drain).await })
            .await
            .unwrap_or_else(|e| {
                Err(crate::dataplane::ReplaceError::Start(format!(
                    "the replacement stopped: {e}"
                )))
            })
    }

    /// The routes changed outside a reconcile turn (a weight set through PaCI): push them now.
    pub fn routes_changed(&self) {
        self.push_routes();
    }

    /// Tells the data plane the current routes (only when they changed), and PaCI's peer
    /// streams that something may have changed.
    pub(crate) fn push_routes(&self) {
        self.paci.changed();
        self.push_dataplane();
    }

    /// Each instance's measured CPU per request, by `routes::measured_key`.
    pub fn measured_costs(&self) -> std::collections::BTreeMap<String, f64> {
        lock(&self.capacities).costs()
    }

    /// Tells the data plane the current routes, only when they changed (as when measured
    /// capacities changed a weight).
    pub(crate) fn push_dataplane(&self) {
        self.dataplane.push(|| match self.store.load() {
            Ok(snapshot) => Some(dataplane_config(
                &snapshot,
                self.config.addresses,
                &lock(&self.capacities).costs(),
            )),
            Err(e) => {
                tracing::error!("cannot read the state for the routes: {e}");
                None
            }
        });
    }

    /// Waits until the data plane's routes no longer hold `key` (its live figures list the
    /// backends of the routes it applies), at most `timeout`; true when confirmed.
    pub(crate) async fn wait_out_of_routes(&self, key: &InstanceKey, timeout: Duration) -> bool {
        let client = paracloud_api::Client::new(self.dataplane_stats_path());
        let prefix = format!("{}/", key.app);
        let name = key.name();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(snapshot) = client.call(&paracloud_dataplane::routes::GetStats).await {
                let routed = snapshot
                    .listeners
                    .iter()
                    .filter(|l| l.name.starts_with(&prefix))
                    .any(|l| l.backends.iter().any(|b| b.id == name));
                if !routed {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "the data plane did not confirm within {timeout:?} that {key} left its routes"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The data plane's stats socket.
    pub fn dataplane_stats_path(&self) -> &std::path::Path {
        &self.dataplane.stats_path
    }

    /// Processes of running instances, for log rotation.
    pub fn live_keys(&self) -> Vec<InstanceKey> {
        lock(&self.live).keys().cloned().collect()
    }
}

/// Creates a directory (and its parents) closed to other users: 0700 even where it existed.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Mounts the instance's PaCI socket directory, handed with its socket to the instance's user,
/// and tells it where the socket is.
fn with_paci(config: &mut InstanceConfig, paci_dir: PathBuf) {
    config.owned.push(paci_dir.clone());
    config
        .owned
        .push(paci_dir.join(paracloud_paci::SOCKET_NAME));
    config.mounts.push(Mount {
        source: paci_dir,
        target: paracloud_paci::SOCKET_DIR.to_string(),
        read_only: true,
        size: None,
    });
    config.env.insert(
        paracloud_paci::ENV.into(),
        paracloud_paci::SOCKET_PATH.into(),
    );
}

/// The environment an instance of `service` is configured with (its own and the image's, then
/// the platform's names of it); exec health checks get it too, since a program may write its
/// title over the environment its process shows.
pub(crate) fn configured_env(
    service: &Service,
    key: &InstanceKey,
) -> std::collections::BTreeMap<String, String> {
    let mut env = service.env.clone();
    env.insert("PARACLOUD_APP".into(), key.app.clone());
    env.insert("PARACLOUD_SERVICE".into(), key.service.clone());
    env.insert("PARACLOUD_INSTANCE".into(), key.name());
    env.insert("PARACLOUD_INDEX".into(), key.index.to_string());
    env
}

/// Splits a snapshot into the planner's desired and observed views.
pub fn views(snapshot: &Snapshot) -> (Desired, Observed) {
    let mut desired = Desired::default();
    let mut observed = Observed {
        networks: snapshot.networks.clone(),
        ..Observed::default()
    };
    for app in &snapshot.apps {
        match app.removing {
            Some(volumes) => {
                observed.removing.insert(app.name.clone(), volumes);
            }
            None => {
                desired.apps.insert(
                    app.name.clone(),
                    DesiredApp {
                        manifest: app.manifest.clone(),
                        replicas: app
                            .services
                            .iter()
                            .map(|(n, s)| (n.clone(), s.replicas))
                            .collect(),
                        revisions: app
                            .services
                            .iter()
                            .map(|(n, s)| (n.clone(), s.revision))
                            .collect(),
                        cpu: app
                            .services
                            .iter()
                            .filter_map(|(n, s)| Some((n.clone(), s.cpu?)))
                            .collect(),
                    },
                );
            }
        }
    }
    observed.instances = snapshot
        .instances
        .iter()
        .map(|i| ObservedInstance {
            key: i.key.clone(),
            revision: i.revision,
            state: i.state.clone(),
            restarts: i.restarts,
            since: i.since,
            cpu: i.cpu,
        })
        .collect();
    (desired, observed)
}

/// The runtime's form of a service's sandbox settings; `open_files` (soft, hard) when the
/// service sets no `nofile` of its own.
fn sandbox(
    s: &paracloud_manifest::Sandbox,
    open_files: Option<(u64, u64)>,
) -> paracloud_runtime::Sandbox {
    let default_open_files = open_files
        .filter(|_| !s.ulimits.contains_key("nofile"))
        .map(|(soft, hard)| paracloud_runtime::Rlimit {
            resource: "nofile".into(),
            soft,
            hard,
        });
    paracloud_runtime::Sandbox {
        init: s.init,
        read_only: s.read_only,
        tmpfs: s
            .tmpfs
            .iter()
            .map(|t| paracloud_runtime::Tmpfs {
                target: t.target.clone(),
                size: t.size,
                mode: t.mode,
            })
            .collect(),
        shm_size: s.shm_size,
        rlimits: s
            .ulimits
            .iter()
            .map(|(resource, l)| paracloud_runtime::Rlimit {
                resource: resource.clone(),
                soft: l.soft,
                hard: l.hard,
            })
            .chain(default_open_files)
            .collect(),
        sysctls: s.sysctls.clone().into_iter().collect(),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
