//! Following the data plane's `GET /watch` stream: a request waiting for a service scaled to zero
//! starts it again, a service with `scale_to_zero` that got no request for that long is scaled to
//! zero, and each second's snapshot feeds the autoscaler.
//!
//! In an application with an autoscaler, its policy decides when a service goes to zero (after
//! `scale_to_zero` idle, its `idle_ms`); a waiting request still starts a service at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use paracloud_command::{Caller, Command};
use paracloud_dataplane::idle::IdleTracker;
use paracloud_dataplane::routes::Watch;
use paracloud_dataplane::{Snapshot, Waiting, WatchEvent};
use paracloud_reconcile::Millis;

use crate::autoscale::Autoscaler;
use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::seconds::Recorder;

/// How long to wait before following the stream again after it ended (the data plane restarts).
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

/// A waiting service is looked at once per this period at most: every request waiting for it
/// announces it, and one look at the state starts it.
const WAKE_AT_MOST_EVERY: Millis = 500;

/// Follows the data plane for as long as the daemon runs.
pub async fn follow<D: Driver>(engine: Arc<Engine<D>>) {
    let mut idle = IdleTracker::default();
    let mut woken: BTreeMap<Waiting, Millis> = BTreeMap::new();
    let mut autoscaler = Autoscaler::new(crate::commands::machine_cores());
    let mut recorder = Recorder::default();
    loop {
        let followed = follow_once(
            &engine,
            &mut idle,
            &mut woken,
            &mut autoscaler,
            &mut recorder,
        )
        .await;
        if let Err(e) = followed {
            tracing::debug!("following the data plane: {e}");
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

async fn follow_once<D: Driver>(
    engine: &Engine<D>,
    idle: &mut IdleTracker,
    woken: &mut BTreeMap<Waiting, Millis>,
    autoscaler: &mut Autoscaler,
    recorder: &mut Recorder,
) -> Result<(), String> {
    let client = paracloud_api::Client::new(engine.dataplane_stats_path());
    let mut events = client.lines(&Watch).await.map_err(|e| e.to_string())?;
    loop {
        let event = match events.next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(paracloud_unix_http::Error::Decode(e)) => {
                tracing::warn!("unreadable line from the data plane: {e}");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        match event {
            WatchEvent::Waiting(waiting) => {
                let now = now_ms();
                idle.touch(&waiting.service, now);
                woken.retain(|_, at| now.saturating_sub(*at) < WAKE_AT_MOST_EVERY);
                if let std::collections::btree_map::Entry::Vacant(entry) = woken.entry(waiting) {
                    wake(engine, entry.key());
                    entry.insert(now);
                }
            }
            WatchEvent::Snapshot(snapshot) => {
                let idle_for = idle.observe(&snapshot, now_ms());
                scale_idle_to_zero(engine, &idle_for);
                let queries = record(engine, recorder, &snapshot);
                autoscale(engine, autoscaler, snapshot, queries);
            }
        }
    }
}

/// Starts a service scaled to zero (with `scale_to_zero`) that a request waits for.
fn wake<D: Driver>(engine: &Engine<D>, waiting: &Waiting) {
    let Some((app, service)) = waiting.service.split_once('/') else {
        return;
    };
    let name = match &waiting.revision {
        Some(revision) => paracloud_manifest::revision_service_name(service, revision),
        None => service.to_owned(),
    };
    let Ok(snapshot) = engine.store.load() else {
        return;
    };
    let Some(record) = snapshot.apps.iter().find(|a| a.name == app) else {
        return;
    };
    let (Some(spec), Some(current)) = (
        record.manifest.services.get(&name),
        record.services.get(&name),
    ) else {
        return;
    };
    if spec.scale_to_zero.is_none() || current.replicas > 0 || record.removing.is_some() {
        return;
    }
    let replicas = spec.replicas.max(1);
    let command = Command::Scale {
        app: app.to_owned(),
        service: name.clone(),
        replicas: Some(replicas),
        cpu: None,
        reason: Some(format!(
            "a request is waiting: starting {replicas} instance(s) (scale_to_zero)"
        )),
    };
    if let Err(e) = engine.submit(&Caller::Follower, &command) {
        tracing::error!("cannot wake {app}/{name}: {e}");
    }
}

/// One second of every application for the dashboard: the instances' cgroup counters read,
/// the figures kept and handed to the pages that follow them. Returns the database servers'
/// queries per second it counted them with, for the autoscaler's same second.
fn record<D: Driver>(
    engine: &Engine<D>,
    recorder: &mut Recorder,
    snapshot: &Snapshot,
) -> HashMap<String, f64> {
    let Ok(state) = engine.store.load() else {
        return HashMap::new();
    };
    let usage: HashMap<String, paracloud_runtime::Usage> = state
        .instances
        .iter()
        .filter(|i| !matches!(i.state, paracloud_reconcile::InstanceState::Exited { .. }))
        .filter_map(|i| {
            let id = i.key.id();
            let usage = engine.driver.usage(&id).ok()?;
            Some((id, usage))
        })
        .collect();
    let queries = server_queries(engine, &state);
    let seconds = recorder.step(now_ms(), &state, snapshot, (&usage, &queries));
    measure_capacities(engine, &state, &seconds);
    let apps: Vec<String> = state.apps.iter().map(|a| a.name.clone()).collect();
    engine.seconds.record(&apps, seconds);
    queries
}

/// The queries per second each database server of the catalogue ran lately, by instance id;
/// the figures of instances no longer in the state are forgotten.
fn server_queries<D: Driver>(
    engine: &Engine<D>,
    state: &paracloud_state::Snapshot,
) -> HashMap<String, f64> {
    let live: std::collections::HashSet<String> = state
        .instances
        .iter()
        .filter(|i| !matches!(i.state, paracloud_reconcile::InstanceState::Exited { .. }))
        .map(|i| i.key.id())
        .collect();
    engine.servers.retain(|id| live.contains(id));
    let now = now_ms();
    live.into_iter()
        .filter_map(|id| Some((id.clone(), engine.servers.queries_per_second(&id, now)?)))
        .collect()
}

/// Each instance's second (CPU used, requests answered) into its measured capacity; the routes
/// are pushed again when some are measured, so that the data plane's weights follow them (the
/// push sends only a changed configuration).
fn measure_capacities<D: Driver>(
    engine: &Engine<D>,
    state: &paracloud_state::Snapshot,
    seconds: &[(String, paracloud_api::LiveSecond)],
) {
    let measured = {
        let mut capacities = crate::sync::lock(&engine.capacities);
        for (app, second) in seconds {
            for service in second.services.values() {
                for (instance, live) in &service.by_instance {
                    capacities.observe(
                        &crate::routes::measured_key(app, instance),
                        live.cpu,
                        live.completions,
                    );
                }
            }
        }
        let live: std::collections::HashSet<String> = state
            .instances
            .iter()
            .map(|i| crate::routes::measured_key(&i.key.app, &i.key.name()))
            .collect();
        capacities.retain(|key| live.contains(key));
        !capacities.costs().is_empty()
    };
    if measured {
        engine.push_dataplane();
    }
}

/// One second of the autoscaler: the instances' CPU counters read, its policies run (with the
/// database servers' `queries` per second the dashboard's second counted), their changes
/// stored.
fn autoscale<D: Driver>(
    engine: &Engine<D>,
    autoscaler: &mut Autoscaler,
    snapshot: Snapshot,
    queries: HashMap<String, f64>,
) {
    let Ok(state) = engine.store.load() else {
        return;
    };
    let now = now_ms();
    let cpu_ns: HashMap<String, u64> = Autoscaler::measured(&state)
        .into_iter()
        .filter_map(|id| {
            let usage = engine.driver.usage(&id).ok()?;
            Some((id, usage.cpu_usage_ns))
        })
        .collect();
    // What instances reported through PaCI, by instance id.
    let reports = state
        .instances
        .iter()
        .filter_map(|i| {
            let report = engine.paci.load(&i.key, now)?;
            Some((
                i.key.id(),
                paracloud_autoscale::Reported {
                    in_flight: report.in_flight,
                    queue: report.queue,
                    capacity: report.capacity,
                },
            ))
        })
        .collect();
    let said = crate::autoscale::Said { reports, queries };
    let step = autoscaler.step(now, &state, snapshot, &cpu_ns, &said);
    for (app, service, seconds) in &step.predicted {
        engine.counters.predicted_latency(app, service, *seconds);
    }
    match crate::autoscale::apply(&engine.store, &engine.limits(), &step, now) {
        Ok(changed) => {
            for change in &step.changes {
                for direction in crate::autoscale::directions(change) {
                    engine
                        .counters
                        .decision(&change.app, &change.service, direction);
                }
            }
            if changed {
                engine.wake();
            }
        }
        Err(e) => tracing::error!("cannot apply the autoscaler's decisions: {e}"),
    }
}

/// Scales to zero each service with `scale_to_zero` whose listeners had no traffic for that long
/// (in applications without an autoscaler: with one, its policy decides).
fn scale_idle_to_zero<D: Driver>(engine: &Engine<D>, idle_for: &BTreeMap<String, Millis>) {
    let Ok(snapshot) = engine.store.load() else {
        return;
    };
    let followed = snapshot
        .apps
        .iter()
        .filter(|a| a.removing.is_none() && a.manifest.autoscale.is_none());
    for app in followed {
        for (name, spec) in &app.manifest.services {
            let Some(after) = spec.scale_to_zero else {
                continue;
            };
            // A revision is reached through its service's listeners.
            let listened = spec
                .revision_of
                .as_ref()
                .map_or(name.as_str(), |of| of.service.as_str());
            let Some(&quiet) = idle_for.get(&format!("{}/{listened}", app.name)) else {
                continue;
            };
            let replicas = app.services.get(name).map_or(0, |s| s.replicas);
            if replicas == 0 || u128::from(quiet) < after.as_millis() {
                continue;
            }
            let command = Command::Scale {
                app: app.name.clone(),
                service: name.clone(),
                replicas: Some(0),
                cpu: None,
                reason: Some(format!(
                    "no request for {}: scaled to zero (scale_to_zero); the next request starts it",
                    humantime::format_duration(Duration::from_millis(quiet / 1000 * 1000))
                )),
            };
            if let Err(e) = engine.submit(&Caller::Follower, &command) {
                tracing::error!("cannot scale {}/{name} to zero: {e}", app.name);
            }
        }
    }
}
