//! The autoscaler: once a second, for each application with an `[autoscale]` table, one
//! observation (the data plane's counters and the instances' CPU use), its policy's decisions,
//! and those that change something applied as `paracloud scale` applies them, each an event with
//! the policy's reason.
//!
//! [`Autoscaler::step`] does no I/O: the follower hands it the state, the data plane's snapshot
//! and the CPU counters it read, and [`apply`] writes what it decided to the store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use paracloud_autoscale::{
    Bounded, Current, Decision, History, Millis, Policy, PolicyKind, Reported, ScalingConfig,
};
use paracloud_command::{decide, Caller, Command, Limits};
use paracloud_dataplane::Snapshot;
use paracloud_reconcile::InstanceState;
use paracloud_state::{AppRecord, Snapshot as StateSnapshot, Store};

use crate::commands::CommandError;
use paracloud_dataplane::observe::{observation, InstanceFacts, Interval};

/// Makes the policy an application's `[autoscale]` table names.
pub type PolicyBuilder = Box<dyn Fn(PolicyKind) -> Box<dyn Policy + Send> + Send>;

/// Snapshots further apart than this are not one second: the next observation starts over.
const MAX_INTERVAL_MS: Millis = 5_000;

/// The policies of the autoscaled applications and what they have seen.
pub struct Autoscaler {
    build: PolicyBuilder,
    /// The machine's cores: the CPU limit of an instance without one.
    cores: f64,
    apps: BTreeMap<String, AppScaler>,
    /// The data plane's last snapshot and when it came.
    previous: Option<(Millis, Snapshot)>,
    /// Each instance's CPU counter (by instance id) and when it was read.
    cpu: HashMap<String, (Millis, u64)>,
}

struct AppScaler {
    kind: PolicyKind,
    policy: Box<dyn Policy + Send>,
    history: History,
}

/// What one second of the autoscaler decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Step {
    /// Applications whose autoscaler started (or changed policy), with what it follows.
    pub started: Vec<(String, String)>,
    pub changes: Vec<Change>,
    /// What each model's latest plan predicts: (app, entry service, seconds).
    pub predicted: Vec<(String, String, f64)>,
}

/// A change to one service, within its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub app: String,
    pub service: String,
    pub policy: &'static str,
    /// Instances wanted: from, to.
    pub replicas: Option<(u32, u32)>,
    /// CPU per instance in cores: from (`None`: unlimited), to.
    pub cpu: Option<(Option<f64>, f64)>,
    pub reason: String,
}

impl Change {
    /// The command that makes the change, as the autoscaler asks for it.
    pub fn command(&self) -> Command {
        Command::Scale {
            app: self.app.clone(),
            service: self.service.clone(),
            replicas: self.replicas.map(|(_, to)| to),
            cpu: self.cpu.map(|(_, to)| to),
            reason: Some(self.reason.clone()),
        }
    }
}

impl Autoscaler {
    /// The autoscaler of the daemon: the policies of `paracloud-autoscale`.
    pub fn new(cores: f64) -> Self {
        Self::with_policies(cores, Box::new(PolicyKind::build))
    }

    pub fn with_policies(cores: f64, build: PolicyBuilder) -> Self {
        Self {
            build,
            cores,
            apps: BTreeMap::new(),
            previous: None,
            cpu: HashMap::new(),
        }
    }

    /// The instances (by id) whose CPU counters the next [`Autoscaler::step`] reads: every
    /// instance of an autoscaled application.
    pub fn measured(state: &StateSnapshot) -> Vec<String> {
        state
            .instances
            .iter()
            .filter(|i| observed(&i.state))
            .filter(|i| {
                state
                    .apps
                    .iter()
                    .any(|a| a.name == i.key.app && autoscaled(a).is_some())
            })
            .map(|i| i.key.id())
            .collect()
    }

    /// Takes in the data plane's `snapshot` at `now`, with the state, the CPU counters (in
    /// nanoseconds, by instance id) read at the same moment and what the instances said of
    /// themselves; returns what the policies decided
    /// that changes something. The first snapshot, and one after a gap, only start the count.
    pub fn step(
        &mut self,
        now: Millis,
        state: &StateSnapshot,
        snapshot: Snapshot,
        cpu_ns: &HashMap<String, u64>,
        said: &Said,
    ) -> Step {
        let mut step = Step::default();
        self.apps.retain(|name, _| {
            state
                .apps
                .iter()
                .any(|a| &a.name == name && autoscaled(a).is_some())
        });
        let interval = self
            .previous
            .as_ref()
            .map(|(at, previous)| (now.saturating_sub(*at), previous))
            .filter(|(elapsed, _)| (1..=MAX_INTERVAL_MS).contains(elapsed));
        for app in &state.apps {
            let Some((kind, mut config)) = autoscaled(app) else {
                continue;
            };
            // Its services share this machine: together they hold at most its cores.
            config.cpu_budget = Some(self.cores);
            if self.apps.get(&app.name).is_none_or(|s| s.kind != kind) {
                let history = self
                    .apps
                    .remove(&app.name)
                    .map(|s| s.history)
                    .unwrap_or_default();
                self.apps.insert(
                    app.name.clone(),
                    AppScaler {
                        kind,
                        policy: (self.build)(kind),
                        history,
                    },
                );
                step.started
                    .push((app.name.clone(), follows(kind, &app.name, &config)));
            }
            let Some((elapsed_ms, previous)) = interval else {
                continue;
            };
            let facts = self.facts(now, app, state, &config, cpu_ns, said);
            let services: Vec<&str> = config.services.keys().map(String::as_str).collect();
            let seen = observation(
                &app.manifest,
                &services,
                Interval {
                    previous,
                    current: &snapshot,
                    elapsed_ms,
                    at: now,
                },
                &facts,
            );
            let Some(scaler) = self.apps.get_mut(&app.name) else {
                continue;
            };
            scaler.history.push(seen);
            let decisions = scaler.policy.decide(now, &scaler.history, &config);
            if let Some(seconds) = scaler.policy.predicted_latency() {
                step.predicted
                    .push((app.name.clone(), config.entry.clone(), seconds));
            }
            let latest = scaler.history.latest();
            for decision in decisions {
                let busy = latest
                    .and_then(|o| o.services.get(&decision.service))
                    .is_some_and(|s| s.in_flight > 0 || s.arrivals > 0);
                if let Some(change) = change(app, kind, &config, decision, busy, self.cores) {
                    step.changes.push(change);
                }
            }
        }
        self.cpu = cpu_ns
            .iter()
            .map(|(id, ns)| (id.clone(), (now, *ns)))
            .collect();
        self.previous = Some((now, snapshot));
        step
    }

    /// The instances of `app` its policy acts on, with their CPU use since the last step.
    fn facts(
        &self,
        now: Millis,
        app: &AppRecord,
        state: &StateSnapshot,
        config: &ScalingConfig,
        cpu_ns: &HashMap<String, u64>,
        said: &Said,
    ) -> Vec<InstanceFacts> {
        state
            .instances
            .iter()
            .filter(|i| i.key.app == app.name && config.services.contains_key(&i.key.service))
            .filter(|i| observed(&i.state))
            .map(|i| {
                let id = i.key.id();
                let age_ms = now.saturating_sub(i.started);
                let cpu_used = match (cpu_ns.get(&id), self.cpu.get(&id)) {
                    (Some(&ns), Some(&(at, before))) if ns >= before && now > at => {
                        (ns - before) as f64 / ((now - at) as f64 * 1e6)
                    }
                    // First seen: its average since it started.
                    (Some(&ns), _) if age_ms > 0 => ns as f64 / (age_ms as f64 * 1e6),
                    _ => 0.0,
                };
                let limit = app
                    .manifest
                    .services
                    .get(&i.key.service)
                    .zip(app.services.get(&i.key.service))
                    .and_then(|(spec, record)| record.cpu(spec));
                InstanceFacts {
                    service: i.key.service.clone(),
                    name: i.key.name(),
                    ready: i.state.is_ready(),
                    age_ms,
                    cpu_used,
                    cpu_limit: limit.unwrap_or(self.cores),
                    reported: said.reports.get(&id).cloned(),
                    queries_per_second: said.queries.get(&id).copied(),
                }
            })
            .collect()
    }
}

/// What instances said about themselves, by instance id: their load reports through PaCI, and
/// the queries per second of the catalogue's database servers.
#[derive(Debug, Default)]
pub struct Said {
    pub reports: HashMap<String, Reported>,
    pub queries: HashMap<String, f64>,
}

/// Instances a policy sees: starting, running (ready or not) and draining.
fn observed(state: &InstanceState) -> bool {
    !matches!(state, InstanceState::Exited { .. })
}

/// The policy and configuration of an application that has an autoscaler and is not going away.
fn autoscaled(app: &AppRecord) -> Option<(PolicyKind, ScalingConfig)> {
    if app.removing.is_some() {
        return None;
    }
    let kind = app.manifest.autoscale.as_ref()?.policy;
    Some((kind, paracloud_manifest::scaling_config(&app.manifest)?))
}

fn follows(kind: PolicyKind, app: &str, config: &ScalingConfig) -> String {
    let latency = Duration::from_micros((config.slo.latency_ms * 1000.0).round() as u64);
    format!(
        "autoscaler {} follows {app}: SLO p{} under {} at {}",
        kind.name(),
        (config.slo.percentile * 100.0).round(),
        humantime::format_duration(latency),
        config.entry
    )
}

/// What `decision` changes for its service, kept within the service's bounds; `None` when it
/// changes nothing or names no service the policy acts on. A service with requests under way
/// (`busy`) is never taken to zero: the follower would have to start it again at once.
fn change(
    app: &AppRecord,
    kind: PolicyKind,
    config: &ScalingConfig,
    decision: Decision,
    busy: bool,
    cores: f64,
) -> Option<Change> {
    let Some(bounds) = config.services.get(&decision.service) else {
        tracing::warn!(
            app = app.name,
            "the {} policy decided for {}, which it does not scale",
            kind.name(),
            decision.service
        );
        return None;
    };
    let spec = app.manifest.services.get(&decision.service)?;
    let record = app.services.get(&decision.service)?;
    let current = Current {
        replicas: record.replicas,
        cpu: record.cpu(spec),
    };
    let Bounded { replicas, cpu } = bounds.bound(&decision, current, cores, busy);
    if replicas.is_none() && cpu.is_none() {
        return None;
    }
    Some(Change {
        app: app.name.clone(),
        service: decision.service,
        policy: kind.name(),
        replicas,
        cpu,
        reason: decision.reason,
    })
}

/// The directions of a change, for the metrics: `out` or `in` (instances), `cpu_up` or
/// `cpu_down` (CPU per instance; from unlimited counts as down).
pub fn directions(change: &Change) -> Vec<&'static str> {
    let mut directions = Vec::new();
    if let Some((from, to)) = change.replicas {
        directions.push(if to > from { "out" } else { "in" });
    }
    if let Some((from, to)) = change.cpu {
        directions.push(if from.is_some_and(|f| to > f) {
            "cpu_up"
        } else {
            "cpu_down"
        });
    }
    directions
}

/// Submits a step's changes as the autoscaler's commands (decided and written as
/// `paracloud scale` is), and records the autoscalers started. Returns whether a service changed.
pub fn apply(
    store: &Store,
    limits: &Limits,
    step: &Step,
    now: Millis,
) -> Result<bool, CommandError> {
    for (app, message) in &step.started {
        tracing::info!(app, "{message}");
        store.add_event(now, app, app, message)?;
    }
    let mut changed = false;
    for change in &step.changes {
        let caller = Caller::Autoscaler {
            policy: change.policy.to_owned(),
        };
        let command = change.command();
        let decision = store.transact(now, |snapshot| {
            let decision = decide(&caller, &command, snapshot, limits)?;
            Ok::<_, CommandError>((decision.changes.clone(), decision))
        })?;
        changed |= decision.changes_desired_state();
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use paracloud_autoscale::Observation;
    use paracloud_dataplane::{CounterValues, LastSecond, LatencySnapshot, ListenerSnapshot};
    use paracloud_manifest::{parse, FileSystem, Origin};
    use paracloud_reconcile::{Health, InstanceKey};
    use paracloud_state::InstanceRecord;

    use super::*;

    const LIMITS: Limits = Limits {
        max_replicas: 200,
        wider_subnet: None,
        cores: 4.0,
        memory: 8 << 30,
    };

    struct AnyFs;

    impl FileSystem for AnyFs {
        fn exists(&self, _: &std::path::Path) -> bool {
            true
        }
        fn is_dir(&self, _: &std::path::Path) -> bool {
            true
        }
    }

    const SHOP: &str = r#"app = "shop"
[autoscale]
policy = "hpa"
[services.web]
image = "host"
command = "web"
ports = [{ port = 8080, protocol = "http", publish = 8080 }]
resources = { cpu = 0.5 }
autoscale = { max = 4, cpu_max = 1 }
[services.web.revisions.canary]
weight = 10
[services.idle]
image = "host"
command = "idle"
ports = [9000]
scale_to_zero = "1m"
"#;

    fn manifest(source: &str) -> paracloud_manifest::Manifest {
        let origin = Origin {
            file: "paracloud.toml".into(),
            base_dir: "/".into(),
        };
        parse(source, &origin, &AnyFs).unwrap()
    }

    /// The shop deployed in a real store, with one ready `web` instance and one of `idle`.
    fn deployed(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("state.db")).unwrap();
        store
            .put_app(&manifest(SHOP), SHOP, "paracloud.toml", 0)
            .unwrap();
        for (service, slot) in [("web", 0), ("idle", 1)] {
            store
                .put_instance(&InstanceRecord {
                    key: InstanceKey::new("shop", service, 1),
                    revision: 0,
                    state: InstanceState::Running {
                        health: Health::None,
                    },
                    restarts: 0,
                    since: 0,
                    started: 1_000,
                    pid: Some(1),
                    start_time: Some(1),
                    slot,
                    weight: None,
                    held: false,
                    frozen: false,
                    cpu: None,
                    health_failure: None,
                })
                .unwrap();
        }
        store
    }

    /// A policy the test writes: asks every service for `arrivals / 10` instances, `web` for 3
    /// cores and the others for their nominal size, and keeps what it saw.
    struct Proportional {
        seen: Arc<Mutex<Vec<Observation>>>,
    }

    impl Policy for Proportional {
        fn name(&self) -> &'static str {
            "proportional"
        }

        fn decide(
            &mut self,
            _: Millis,
            history: &History,
            config: &ScalingConfig,
        ) -> Vec<Decision> {
            let Some(latest) = history.latest() else {
                return Vec::new();
            };
            self.seen.lock().unwrap().push(latest.clone());
            let mut decisions: Vec<Decision> = config
                .services
                .iter()
                .map(|(service, bounds)| {
                    let arrivals = latest.services[service].arrivals;
                    Decision {
                        service: service.clone(),
                        instances: (arrivals / 10) as u32,
                        cpu: if service == "web" { 3.0 } else { bounds.cpu },
                        reason: format!("{arrivals} requests in the last second"),
                    }
                })
                .collect();
            decisions.push(Decision {
                service: "web@canary".into(),
                instances: 7,
                cpu: 1.0,
                reason: "revisions are not the policy's".into(),
            });
            decisions
        }
    }

    fn autoscaler() -> (Autoscaler, Arc<Mutex<Vec<Observation>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = seen.clone();
        let build: PolicyBuilder = Box::new(move |kind| {
            assert_eq!(kind, PolicyKind::Hpa, "the manifest's policy");
            Box::new(Proportional {
                seen: shared.clone(),
            })
        });
        (Autoscaler::with_policies(2.0, build), seen)
    }

    fn snapshot(web_requests: u64, idle_in_flight: u64) -> Snapshot {
        let listener = |name: &str, counters: CounterValues| ListenerSnapshot {
            name: name.into(),
            bind: "127.0.0.1:1".parse().unwrap(),
            udp: false,
            bound: true,
            counters,
            latency: LatencySnapshot::default(),
            last_second: LastSecond::default(),
            backends: Vec::new(),
        };
        Snapshot {
            listeners: vec![
                listener(
                    "shop/web:8080 published",
                    CounterValues {
                        requests: web_requests,
                        responses_2xx: web_requests,
                        ..CounterValues::default()
                    },
                ),
                listener(
                    "shop/idle:9000",
                    CounterValues {
                        accepted: idle_in_flight,
                        active: idle_in_flight,
                        ..CounterValues::default()
                    },
                ),
            ],
            calls: Vec::new(),
        }
    }

    #[test]
    fn decisions_within_the_bounds_become_changes_with_their_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let store = deployed(dir.path());
        let (mut autoscaler, seen) = autoscaler();
        let cpu: HashMap<String, u64> = [("shop-web-1".to_owned(), 1_000_000_000)].into();
        assert_eq!(
            Autoscaler::measured(&store.load().unwrap()),
            ["shop-idle-1", "shop-web-1"]
        );

        let first = autoscaler.step(
            2_000,
            &store.load().unwrap(),
            snapshot(0, 1),
            &cpu,
            &Said::default(),
        );
        assert_eq!(
            first.started,
            [(
                "shop".to_owned(),
                "autoscaler hpa follows shop: SLO p95 under 200ms at web".to_owned()
            )]
        );
        assert!(first.changes.is_empty(), "one snapshot is no second yet");
        assert!(!apply(&store, &LIMITS, &first, 2_000).unwrap());

        let cpu: HashMap<String, u64> = [("shop-web-1".to_owned(), 1_400_000_000)].into();
        let second = autoscaler.step(
            3_000,
            &store.load().unwrap(),
            snapshot(90, 1),
            &cpu,
            &Said::default(),
        );
        let observed = seen.lock().unwrap().last().cloned().unwrap();
        let web = &observed.services["web"];
        assert_eq!(web.arrivals, 90);
        assert_eq!(web.instances.len(), 1);
        assert!(
            (web.instances[0].cpu_used - 0.4).abs() < 1e-9,
            "0.4 s of CPU in 1 s"
        );
        assert_eq!(web.instances[0].cpu_limit, 0.5);
        assert_eq!(
            observed.services.keys().collect::<Vec<_>>(),
            ["idle", "web"],
            "revisions are not observed as services"
        );
        assert_eq!(
            second.changes,
            [Change {
                app: "shop".into(),
                service: "web".into(),
                policy: "hpa",
                replicas: Some((1, 4)),
                cpu: Some((Some(0.5), 1.0)),
                reason: "90 requests in the last second".into(),
            }],
            "9 instances and 3 cores asked, 4 and 1 allowed; idle has a connection open, so it \
             stays; the revision is not the policy's to scale"
        );
        assert!(apply(&store, &LIMITS, &second, 3_000).unwrap());
        let state = store.load().unwrap();
        let web = &state.apps[0].services["web"];
        assert_eq!((web.replicas, web.cpu), (4, Some(1.0)));
        let events = store.events(Some("shop"), 0, 10).unwrap();
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages.last(),
            Some(&"autoscaler hpa: instances 1 -> 4, cpu per instance 0.5 -> 1: 90 requests in the last second"),
            "{messages:?}"
        );

        // The same wish again changes nothing; an idle service with nothing open goes to zero.
        let third = autoscaler.step(4_000, &state, snapshot(180, 0), &cpu, &Said::default());
        assert_eq!(third.changes.len(), 1, "{third:?}");
        assert_eq!(
            (third.changes[0].service.as_str(), third.changes[0].replicas),
            ("idle", Some((1, 0)))
        );
    }

    #[test]
    fn a_gap_in_the_snapshots_starts_the_count_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = deployed(dir.path());
        let (mut autoscaler, seen) = autoscaler();
        let state = store.load().unwrap();
        let none = HashMap::new();
        autoscaler.step(1_000, &state, snapshot(0, 0), &none, &Said::default());
        let late = autoscaler.step(60_000, &state, snapshot(5_000, 0), &none, &Said::default());
        assert!(
            late.changes.is_empty(),
            "a minute of counts is not a second"
        );
        assert!(seen.lock().unwrap().is_empty());
        autoscaler.step(61_000, &state, snapshot(5_020, 0), &none, &Said::default());
        assert_eq!(seen.lock().unwrap()[0].services["web"].arrivals, 20);
    }

    #[test]
    fn an_application_without_autoscale_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let plain = SHOP
            .replace("[autoscale]\npolicy = \"hpa\"\n", "")
            .replace("autoscale = { max = 4, cpu_max = 1 }\n", "");
        store
            .put_app(&manifest(&plain), &plain, "paracloud.toml", 0)
            .unwrap();
        let (mut autoscaler, seen) = autoscaler();
        let state = store.load().unwrap();
        let none = HashMap::new();
        for at in [1_000, 2_000] {
            assert_eq!(
                autoscaler.step(at, &state, snapshot(100, 0), &none, &Said::default()),
                Step::default()
            );
        }
        assert!(seen.lock().unwrap().is_empty());
        assert!(Autoscaler::measured(&state).is_empty());
    }
}
