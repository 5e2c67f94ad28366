//! The last ten minutes of every application, one figure a second, for the dashboard's charts:
//! a ring buffer per application, and a channel that hands each new second to the pages that
//! follow it (`GET /v1/apps/{app}/live`).
//!
//! The follower feeds it with each of the data plane's snapshots ([`Recorder::step`], pure: the
//! state, the snapshot and the instances' cgroup counters come in), so a second costs one pass
//! over the snapshot whether or not a page is open, and nothing at all is polled per page.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use paracloud_api::{LiveCall, LiveInstance, LiveSecond, LiveService};
use paracloud_autoscale::{Millis, Observation};
use paracloud_dataplane::{service_of, Snapshot};
use paracloud_reconcile::InstanceState;
use paracloud_runtime::Usage;
use paracloud_state::Snapshot as StateSnapshot;
use tokio::sync::broadcast;

use paracloud_dataplane::observe::{observation, InstanceFacts, Interval};

/// Seconds kept per application: ten minutes.
pub const KEEP: usize = 600;

/// Snapshots further apart than this are not one second: the next one starts over.
const MAX_INTERVAL_MS: Millis = 5_000;

/// A new second of one application.
pub type NewSecond = Arc<(String, LiveSecond)>;

/// The seconds of every application, and their followers.
pub struct Seconds {
    apps: Mutex<BTreeMap<String, VecDeque<LiveSecond>>>,
    sender: broadcast::Sender<NewSecond>,
}

impl Default for Seconds {
    fn default() -> Self {
        Self {
            apps: Mutex::new(BTreeMap::new()),
            // A page that falls this far behind skips seconds rather than holding the others.
            sender: broadcast::channel(64).0,
        }
    }
}

impl Seconds {
    /// The seconds kept of `app`, oldest first.
    pub fn history(&self, app: &str) -> Vec<LiveSecond> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.get(app)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Each new second of every application, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NewSecond> {
        self.sender.subscribe()
    }

    /// Keeps the seconds of one step, forgets applications that are gone, and tells followers.
    pub fn record(&self, apps: &[String], seconds: Vec<(String, LiveSecond)>) {
        {
            let mut kept = self.apps.lock().unwrap_or_else(|e| e.into_inner());
            kept.retain(|name, _| apps.contains(name));
            for (app, second) in &seconds {
                let ring = kept.entry(app.clone()).or_default();
                if ring.len() == KEEP {
                    ring.pop_front();
                }
                ring.push_back(second.clone());
            }
        }
        for second in seconds {
            // No page follows: nothing to tell.
            let _ = self.sender.send(Arc::new(second));
        }
    }
}

/// What the recorder keeps between two snapshots.
#[derive(Default)]
pub struct Recorder {
    previous: Option<(Millis, Snapshot)>,
    /// Each instance's CPU counter (by instance id), and when it was read.
    cpu: HashMap<String, (Millis, u64)>,
}

impl Recorder {
    /// One second of every application from the data plane's `snapshot` at `now`, the state,
    /// and the cgroup counters of its instances (by instance id) read at the same moment, with
    /// the queries per second of the catalogue's database servers (by instance id). The first
    /// snapshot, and one after a gap, only start the count.
    pub fn step(
        &mut self,
        now: Millis,
        state: &StateSnapshot,
        snapshot: &Snapshot,
        (usage, queries): (&HashMap<String, Usage>, &HashMap<String, f64>),
    ) -> Vec<(String, LiveSecond)> {
        let mut seconds = Vec::new();
        let interval = self
            .previous
            .as_ref()
            .map(|(at, previous)| (now.saturating_sub(*at), previous))
            .filter(|(elapsed, _)| (1..=MAX_INTERVAL_MS).contains(elapsed));
        if let Some((elapsed_ms, previous)) = interval {
            for app in state.apps.iter().filter(|a| a.removing.is_none()) {
                let facts = self.facts(now, &app.name, state, usage, queries);
                let services: Vec<&str> =
                    app.manifest.services.keys().map(String::as_str).collect();
                let seen = observation(
                    &app.manifest,
                    &services,
                    Interval {
                        previous,
                        current: snapshot,
                        elapsed_ms,
                        at: now,
                    },
                    &facts,
                );
                seconds.push((
                    app.name.clone(),
                    second(&app.name, &seen, snapshot, &facts, usage, state),
                ));
            }
        }
        self.cpu = usage
            .iter()
            .map(|(id, u)| (id.clone(), (now, u.cpu_usage_ns)))
            .collect();
        self.previous = Some((now, snapshot.clone()));
        seconds
    }

    fn facts(
        &self,
        now: Millis,
        app: &str,
        state: &StateSnapshot,
        usage: &HashMap<String, Usage>,
        queries: &HashMap<String, f64>,
    ) -> Vec<InstanceFacts> {
        state
            .instances
            .iter()
            .filter(|i| i.key.app == app && !matches!(i.state, InstanceState::Exited { .. }))
            .map(|i| {
                let id = i.key.id();
                let age_ms = now.saturating_sub(i.started);
                let ns = usage.get(&id).map(|u| u.cpu_usage_ns);
                let cpu_used = match (ns, self.cpu.get(&id)) {
                    (Some(ns), Some(&(at, before))) if ns >= before && now > at => {
                        (ns - before) as f64 / ((now - at) as f64 * 1e6)
                    }
                    _ => 0.0,
                };
                InstanceFacts {
                    service: i.key.service.clone(),
                    name: i.key.name(),
                    ready: i.state.is_ready(),
                    age_ms,
                    cpu_used,
                    cpu_limit: 0.0,
                    reported: None,
                    queries_per_second: queries.get(&id).copied(),
                }
            })
            .collect()
    }
}

/// The dashboard's second of `app` from its observation: errors from the listeners' last
/// second, memory from the cgroups.
fn second(
    app: &str,
    seen: &Observation,
    snapshot: &Snapshot,
    facts: &[InstanceFacts],
    usage: &HashMap<String, Usage>,
    state: &StateSnapshot,
) -> LiveSecond {
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for listener in &snapshot.listeners {
        if let Some((a, service)) = service_of(&listener.name).split_once('/') {
            if a == app {
                *errors.entry(service).or_default() += listener.last_second.errors;
            }
        }
    }
    let memory: HashMap<String, u64> = state
        .instances
        .iter()
        .filter(|i| i.key.app == app)
        .filter_map(|i| Some((i.key.name(), usage.get(&i.key.id())?.memory_bytes)))
        .collect();
    let services = seen
        .services
        .iter()
        .map(|(name, sample)| {
            let mine: Vec<&InstanceFacts> = facts.iter().filter(|f| &f.service == name).collect();
            let by_instance: BTreeMap<String, LiveInstance> = mine
                .iter()
                .map(|f| {
                    let completions = sample
                        .instances
                        .iter()
                        .find(|s| s.id == f.name)
                        .map_or(0, |s| s.completions);
                    let instance = LiveInstance {
                        cpu: f.cpu_used,
                        memory_bytes: memory.get(&f.name).copied().unwrap_or(0),
                        completions,
                    };
                    (f.name.clone(), instance)
                })
                .collect();
            let count = mine.len() as u32;
            let cpu: f64 = mine.iter().map(|f| f.cpu_used).sum();
            let live = LiveService {
                arrivals: sample.arrivals,
                errors: errors.get(name.as_str()).copied().unwrap_or(0) + sample.dropped,
                p50_ms: sample.latency.p50_ms,
                p95_ms: sample.latency.p95_ms,
                p99_ms: sample.latency.p99_ms,
                in_flight: sample.in_flight,
                instances: count,
                ready: mine.iter().filter(|f| f.ready).count() as u32,
                cpu_per_instance: if count == 0 {
                    0.0
                } else {
                    cpu / f64::from(count)
                },
                memory_bytes: by_instance.values().map(|i| i.memory_bytes).sum(),
                by_instance,
            };
            (name.clone(), live)
        })
        .collect();
    LiveSecond {
        at: seen.at,
        services,
        calls: seen
            .calls
            .iter()
            .map(|c| LiveCall {
                from: c.from.clone(),
                to: c.to.clone(),
                count: c.count,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second_at(at: u64) -> (String, LiveSecond) {
        (
            "shop".into(),
            LiveSecond {
                at,
                ..LiveSecond::default()
            },
        )
    }

    #[test]
    fn ten_minutes_are_kept_per_application_and_followers_get_each_new_second() {
        let seconds = Seconds::default();
        let mut follower = seconds.subscribe();
        let apps = vec!["shop".to_owned()];
        for at in 0..(KEEP as u64 + 5) {
            seconds.record(&apps, vec![second_at(at)]);
        }
        let history = seconds.history("shop");
        assert_eq!(history.len(), KEEP);
        assert_eq!(history[0].at, 5, "the oldest went first");
        assert_eq!(history[KEEP - 1].at, KEEP as u64 + 4);
        assert!(matches!(
            follower.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert_eq!(follower.try_recv().unwrap().1.at, KEEP as u64 + 4 - 63);
        seconds.record(&[], Vec::new());
        assert!(
            seconds.history("shop").is_empty(),
            "a removed application is forgotten"
        );
    }

    #[test]
    fn the_first_snapshot_only_starts_the_count() {
        let mut recorder = Recorder::default();
        let state = StateSnapshot::default();
        let snapshot = Snapshot {
            listeners: Vec::new(),
            calls: Vec::new(),
        };
        assert!(recorder
            .step(1_000, &state, &snapshot, (&HashMap::new(), &HashMap::new()))
            .is_empty());
        assert!(
            recorder
                .step(2_000, &state, &snapshot, (&HashMap::new(), &HashMap::new()))
                .is_empty(),
            "no app"
        );
    }
}
