//! What the API shows: application, service and instance views built from a state snapshot.

use std::collections::BTreeMap;

use paracloud_api::{AppView, InstanceView, ServiceView, TrafficShare};
use paracloud_reconcile::{InstanceKey, InstanceState, Millis};
use paracloud_state::{AppRecord, InstanceRecord, Snapshot};

use crate::addressing::AddressPlan;
use crate::servers::ServerFigures;

pub use paracloud_command::cores;

/// What the daemon measured of its instances, for the views.
#[derive(Debug, Default)]
pub struct Measured {
    /// Each instance's measured CPU per request (`routes::measured_key`), which gives its
    /// capacity.
    pub costs: BTreeMap<String, f64>,
    /// The catalogue's database servers' own figures, by instance id.
    pub servers: std::collections::HashMap<String, ServerFigures>,
}

pub fn instance_view(
    app: &AppRecord,
    record: &InstanceRecord,
    addresses: AddressPlan,
    now: Millis,
    measured: &Measured,
) -> InstanceView {
    let server = measured.servers.get(&record.key.id());
    let address = addresses
        .network(app.subnet_index)
        .ok()
        .and_then(|n| n.instance_address(record.slot).ok())
        .map(|a| a.addr().to_string());
    let running = matches!(
        record.state,
        InstanceState::Running { .. } | InstanceState::Stopping { .. }
    );
    InstanceView {
        app: record.key.app.clone(),
        service: record.key.service.clone(),
        instance: record.key.name(),
        state: record.state.label().to_string(),
        pid: record.pid,
        address,
        uptime_seconds: running.then(|| now.saturating_sub(record.started) / 1000),
        restarts: record.restarts,
        revision: record.revision,
        exit: match &record.state {
            InstanceState::Exited { exit } => Some(exit.clone()),
            _ => None,
        },
        health_failure: record.health_failure.clone(),
        capacity_rps: crate::routes::measured_capacity(app, record, &measured.costs),
        queries_per_second: server.and_then(|s| s.queries_per_second),
        lag_ms: server.and_then(|s| s.lag_ms),
    }
}

pub fn service_view(
    app: &AppRecord,
    name: &str,
    snapshot: &Snapshot,
    addresses: AddressPlan,
    now: Millis,
    waiting: &[(InstanceKey, String)],
    measured: &Measured,
) -> Option<ServiceView> {
    let spec = app.manifest.services.get(name)?.clone();
    let record = app.services.get(name)?;
    let instances: Vec<InstanceView> = snapshot
        .instances
        .iter()
        .filter(|i| i.key.app == app.name && i.key.service == name)
        .map(|i| instance_view(app, i, addresses, now, measured))
        .collect();
    let ready_of = |service: &str| {
        snapshot
            .instances
            .iter()
            .filter(|i| i.key.app == app.name && i.key.service == service && i.state.is_ready())
            .count() as u32
    };
    let ready = ready_of(name);
    let revisions: Vec<TrafficShare> = crate::routes::revisions_of(app, name)
        .map(|(service, revision, weight)| TrafficShare {
            revision: Some(revision.to_owned()),
            service: service.to_owned(),
            weight,
            ready: ready_of(service),
        })
        .collect();
    let traffic = if revisions.is_empty() {
        Vec::new()
    } else {
        let taken: u32 = revisions.iter().map(|r| r.weight).sum();
        std::iter::once(TrafficShare {
            revision: None,
            service: name.to_owned(),
            weight: 100u32.saturating_sub(taken),
            ready,
        })
        .chain(revisions)
        .collect()
    };
    let address = addresses
        .network(app.subnet_index)
        .map(|n| {
            crate::addressing::service_address_of(app, &n, name)
                .unwrap_or_else(|| n.service_address(record.slot))
                .to_string()
        })
        .unwrap_or_default();
    let published = spec
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = p.protocol.name();
            p.publish
                .map(|addr| format!("{addr} -> {}/{protocol}", p.port))
        })
        .collect();
    Some(ServiceView {
        app: app.name.clone(),
        name: name.to_string(),
        replicas: record.replicas,
        ready,
        revision: record.revision,
        cpu: record.cpu(&spec),
        address,
        published,
        spec,
        instances,
        waiting: waiting
            .iter()
            .filter(|(k, _)| k.app == app.name && k.service == name)
            .map(|(k, why)| format!("{}: {why}", k.name()))
            .collect(),
        traffic,
        // Filled by the caller, which knows the daemon's settings.
        host_ids: None,
    })
}

pub fn app_view(
    app: &AppRecord,
    snapshot: &Snapshot,
    addresses: AddressPlan,
    now: Millis,
    waiting: &[(InstanceKey, String)],
    measured: &Measured,
) -> AppView {
    let network = addresses.network(app.subnet_index).ok();
    AppView {
        name: app.name.clone(),
        origin: app.origin.clone(),
        subnet: network.map(|n| n.subnet.to_string()).unwrap_or_default(),
        bridge: network.map(|n| n.bridge()).unwrap_or_default(),
        removing: app.removing.is_some(),
        services: app
            .manifest
            .services
            .keys()
            .filter_map(|name| service_view(app, name, snapshot, addresses, now, waiting, measured))
            .collect(),
    }
}

/// A recorded run, with the files of each target that `root` still keeps.
pub fn capsule_run_view(
    root: &std::path::Path,
    id: i64,
    run: paracloud_state::CapsuleRun,
) -> paracloud_api::CapsuleRunView {
    paracloud_api::CapsuleRunView {
        id,
        who: run.who,
        capsule: run.capsule,
        app: run.app,
        selector: run.selector,
        args: run.args,
        targets: run
            .targets
            .into_iter()
            .map(|t| paracloud_api::CapsuleTargetView {
                files: crate::capsules::kept_files(root, id, &t.instance),
                instance: t.instance,
                exit_code: t.exit_code,
                duration_ms: t.duration_ms,
                output_bytes: t.output_bytes,
            })
            .collect(),
        started: run.started,
        duration_ms: run.duration_ms,
        status: run.status,
        detail: run.detail,
        output_bytes: run.output_bytes,
    }
}
