//! `GET /metrics`: the platform's figures in Prometheus text format (version 0.0.4), written by
//! the `prometheus-client` crate. Read when asked: instances by state and wanted replicas (the
//! state), each live instance's CPU, memory and pids (its cgroup, through the driver, as the
//! autoscaler reads them), capsule runs (their records); counted as they happen
//! ([`Counters`](crate::counters::Counters)): exits, restarts, autoscaler decisions, predicted
//! latency, image pulls. The data plane's traffic families follow, from its own figures
//! (`Snapshot::to_prometheus`, the text its stats socket serves at `/metrics`); their names
//! differ from these. No label names a request: the finest one is an instance.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use paracloud_reconcile::InstanceState;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api_error::ApiError;
use crate::counters::Labels;
use crate::driver::Driver;
use crate::engine::Engine;

/// Every state `ps` shows, so that each service has a series for each, zero included.
const STATES: [&str; 8] = [
    "starting",
    "running",
    "unready",
    "unhealthy",
    "stopping",
    "exited",
    "failed",
    "oom-killed",
];

pub async fn metrics<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
) -> Result<Response, ApiError> {
    let snapshot = engine.store.load()?;
    let mut registry = Registry::default();

    let instances = Family::<Labels, Gauge>::default();
    let replicas = Family::<Labels, Gauge>::default();
    for app in &snapshot.apps {
        for (service, record) in &app.services {
            let labels = |extra: Option<&str>| {
                let mut labels: Labels =
                    vec![("app", app.name.clone()), ("service", service.clone())];
                if let Some(state) = extra {
                    labels.push(("state", state.to_owned()));
                }
                labels
            };
            replicas
                .get_or_create(&labels(None))
                .set(i64::from(record.replicas));
            for state in STATES {
                let count = snapshot
                    .instances
                    .iter()
                    .filter(|i| i.key.app == app.name && &i.key.service == service)
                    .filter(|i| i.state.label() == state)
                    .count();
                instances
                    .get_or_create(&labels(Some(state)))
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
    registry.register(
        "paracloud_instances",
        "Instances by application, service and state (as ps shows it).",
        instances,
    );
    registry.register(
        "paracloud_service_replicas",
        "Instances wanted by application and service.",
        replicas,
    );

    // Each live instance's cgroup, read off the async threads.
    let live: Vec<_> = snapshot
        .instances
        .iter()
        .filter(|i| {
            matches!(
                i.state,
                InstanceState::Running { .. } | InstanceState::Stopping { .. }
            )
        })
        .map(|i| i.key.clone())
        .collect();
    let reader = engine.clone();
    let usage = tokio::task::spawn_blocking(move || {
        live.into_iter()
            .filter_map(|key| Some((reader.driver.usage(&key.id()).ok()?, key)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let memory = Family::<Labels, Gauge>::default();
    let pids = Family::<Labels, Gauge>::default();
    for (usage, key) in usage {
        let labels: Labels = vec![
            ("app", key.app.clone()),
            ("service", key.service.clone()),
            ("instance", key.name()),
        ];
        cpu.get_or_create(&labels)
            .inc_by(usage.cpu_usage_ns as f64 / 1e9);
        memory
            .get_or_create(&labels)
            .set(i64::try_from(usage.memory_bytes).unwrap_or(i64::MAX));
        pids.get_or_create(&labels)
            .set(i64::try_from(usage.pids).unwrap_or(i64::MAX));
    }
    registry.register(
        "paracloud_instance_cpu_seconds",
        "CPU time used by each running instance's cgroup.",
        cpu,
    );
    registry.register(
        "paracloud_instance_memory_bytes",
        "Memory used by each running instance's cgroup.",
        memory,
    );
    registry.register(
        "paracloud_instance_pids",
        "Processes and threads in each running instance's cgroup.",
        pids,
    );

    // The catalogue's database servers, as their health checks last said.
    let queries = Family::<Labels, Counter>::default();
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let servers = engine.servers.all(crate::clock::now_ms());
    for instance in snapshot.instances.iter() {
        let Some(figures) = servers.get(&instance.key.id()) else {
            continue;
        };
        let key = &instance.key;
        let labels: Labels = vec![
            ("app", key.app.clone()),
            ("service", key.service.clone()),
            ("instance", key.name()),
        ];
        queries.get_or_create(&labels).inc_by(figures.queries);
        if let Some(ms) = figures.lag_ms {
            lag.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
    }
    registry.register(
        "paracloud_database_queries",
        "Queries each database server of the catalogue ran since it started, as it counts them (PostgreSQL: transactions ended; MariaDB: statements from clients; Redis: commands processed).",
        queries,
    );
    registry.register(
        "paracloud_database_replication_lag_seconds",
        "How far each database replica of the catalogue is behind its primary.",
        lag,
    );

    let counters = &engine.counters;
    registry.register(
        "paracloud_instance_exits",
        "Instance exits by application, service and reason, since the daemon started.",
        counters.exits.clone(),
    );
    registry.register(
        "paracloud_instance_restarts",
        "Instance restarts by application, service and reason (policy: the restart policy after an exit; requested: paracloud restart), since the daemon started.",
        counters.restarts.clone(),
    );
    registry.register(
        "paracloud_autoscaler_decisions",
        "Autoscaler decisions by application, service and direction (out, in, cpu_up, cpu_down), since the daemon started.",
        counters.decisions.clone(),
    );
    registry.register(
        "paracloud_autoscaler_predicted_latency_seconds",
        "The end-to-end latency at the SLO's percentile that the model policy's latest plan predicts for an application's entry service.",
        counters.predicted.clone(),
    );
    registry.register(
        "paracloud_image_pulls",
        "Image pulls by outcome, since the daemon started.",
        counters.pulls.clone(),
    );

    let runs = Family::<Labels, Counter>::default();
    for (capsule, outcome, count) in engine.store.capsule_run_counts()? {
        runs.get_or_create(&vec![("capsule", capsule), ("outcome", outcome)])
            .inc_by(count);
    }
    registry.register(
        "paracloud_capsule_runs",
        "Capsule runs that ended, by capsule and outcome (ok, failed, timeout, refused).",
        runs,
    );

    let client = paracloud_api::Client::new(engine.dataplane_stats_path());
    let traffic = client
        .call(&paracloud_dataplane::routes::GetStats)
        .await
        .ok();
    let up = Gauge::<i64>::default();
    up.set(i64::from(traffic.is_some()));
    registry.register(
        "paracloud_dataplane_up",
        "Whether the data plane answered for its figures (1) or not (0: its traffic families are left out).",
        up,
    );

    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the metrics: {e}"),
        )
    })?;
    if let Some(snapshot) = traffic {
        text.push_str(&snapshot.to_prometheus());
    }
    Ok((
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response())
}
