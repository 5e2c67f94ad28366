//! Following each application's data plane in the cluster (its `GET /watch` stream over TCP), as
//! the daemon follows its own on one machine: a service with `scale_to_zero` that got no request
//! for that long is scaled to zero, and a request waiting for a service at zero brings it back
//! (the data plane holds the request meanwhile); an application with `[autoscale]` gets its
//! policy's decisions each second (`autoscale`). All go through the resource's `spec.scale`, as
//! `paracloud scale` does, so that the reconcile carries them out.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::BodyExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use paracloud_dataplane::idle::IdleTracker;
use paracloud_dataplane::WatchEvent;
use paracloud_kube::reconcile::Note;
use paracloud_kube::ParacloudApp;
use serde_json::json;

use crate::autoscale::Autoscaler;

/// How often the set of applications to follow is read again.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// How long to wait before following a stream again after it ended.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Where an application's data plane serves its stats: `{app}` and `{namespace}` are replaced.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub stats_url: String,
}

impl FollowOptions {
    fn url(&self, app: &ParacloudApp) -> String {
        self.stats_url
            .replace("{app}", &app.name_any())
            .replace("{namespace}", &app.namespace().unwrap_or_default())
    }
}

/// Follows the data plane of every application that has a service with `scale_to_zero` or an
/// autoscaler, for as long as the operator leads.
pub(crate) async fn follow_all(client: Client, options: FollowOptions, identity: String) {
    let mut followers: BTreeMap<(String, String), tokio::task::JoinHandle<()>> = BTreeMap::new();
    let apps: Api<ParacloudApp> = Api::all(client.clone());
    loop {
        match apps.list(&ListParams::default()).await {
            Ok(list) => {
                let mut wanted = BTreeMap::new();
                for app in list.items {
                    let followed = paracloud_kube::reconcile::manifest(&app).is_ok_and(|m| {
                        m.autoscale.is_some()
                            || m.services.values().any(|s| s.scale_to_zero.is_some())
                    });
                    if followed && app.metadata.deletion_timestamp.is_none() {
                        wanted.insert((app.namespace().unwrap_or_default(), app.name_any()), app);
                    }
                }
                followers.retain(|key, task| {
                    let keep = wanted.contains_key(key) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (key, app) in wanted {
                    followers.entry(key).or_insert_with(|| {
                        let url = options.url(&app);
                        tokio::spawn(follow(client.clone(), app, url, identity.clone()))
                    });
                }
            }
            Err(e) => tracing::warn!("cannot list the ParacloudApps to follow: {e}"),
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Follows one application's data plane, reconnecting as it comes and goes.
async fn follow(client: Client, app: ParacloudApp, url: String, identity: String) {
    let mut idle = IdleTracker::default();
    let mut autoscaler = Autoscaler::default();
    let started = tokio::time::Instant::now();
    loop {
        let followed = Followed {
            idle: &mut idle,
            autoscaler: &mut autoscaler,
            started,
        };
        if let Err(e) = follow_once(&client, &app, &url, &identity, followed).await {
            tracing::debug!(app = %app.name_any(), "following the data plane at {url}: {e}");
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// What following one application keeps from one stream to the next.
struct Followed<'a> {
    idle: &'a mut IdleTracker,
    autoscaler: &'a mut Autoscaler,
    started: tokio::time::Instant,
}

async fn follow_once(
    client: &Client,
    app: &ParacloudApp,
    url: &str,
    identity: &str,
    followed: Followed<'_>,
) -> Result<(), String> {
    let Followed {
        idle,
        autoscaler,
        started,
    } = followed;
    let watch = format!("{}/watch", url.trim_end_matches('/'));
    let uri: hyper::Uri = watch.parse().map_err(|e| format!("{watch}: {e}"))?;
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<hyper::body::Bytes>>(connector);
    let response = http.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{watch} answered {}", response.status()));
    }
    let mut body = response.into_body().into_data_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(event) = serde_json::from_slice::<WatchEvent>(&line) else {
                continue;
            };
            let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match event {
                WatchEvent::Waiting(waiting) => {
                    let service = service_name(&waiting.service);
                    idle.touch(&waiting.service, now);
                    wake(client, app, service, identity).await?;
                }
                WatchEvent::Snapshot(snapshot) => {
                    for (service, quiet_ms) in idle.observe(&snapshot, now) {
                        rest(client, app, service_name(&service), quiet_ms, identity).await?;
                    }
                    let Some(app) = current(client, app).await? else {
                        continue;
                    };
                    if let Err(e) = autoscaler.step(client, &app, identity, snapshot).await {
                        tracing::warn!(app = %app.name_any(), "autoscaler: {e}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// The service of a data plane's "app/service" name.
fn service_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The resource as it is now (a list by name: the verb the operator holds).
async fn current(client: &Client, app: &ParacloudApp) -> Result<Option<ParacloudApp>, String> {
    let api: Api<ParacloudApp> =
        Api::namespaced(client.clone(), &app.namespace().unwrap_or_default());
    let params = ListParams::default().fields(&format!("metadata.name={}", app.name_any()));
    api.list(&params)
        .await
        .map(|list| list.items.into_iter().next())
        .map_err(|e| e.to_string())
}

/// The pods a service runs: the resource's scale, else the manifest's.
fn replicas(app: &ParacloudApp, service: &str) -> Option<u32> {
    let manifest = paracloud_kube::reconcile::manifest(app).ok()?;
    let declared = manifest.services.get(service)?.replicas;
    Some(
        app.spec
            .scale
            .get(service)
            .and_then(|s| s.replicas)
            .unwrap_or(declared),
    )
}

/// A request waits for `service`: at zero, it gets its manifest's pods again (at least one).
async fn wake(
    client: &Client,
    app: &ParacloudApp,
    service: &str,
    identity: &str,
) -> Result<(), String> {
    let Some(app) = current(client, app).await? else {
        return Ok(());
    };
    if replicas(&app, service) != Some(0) {
        return Ok(());
    }
    let manifest = paracloud_kube::reconcile::manifest(&app).map_err(|e| e.to_string())?;
    let wanted = manifest
        .services
        .get(service)
        .map_or(1, |s| s.replicas.max(1));
    set_replicas(
        client,
        &app,
        service,
        wanted,
        identity,
        Note {
            kind: "Normal",
            reason: "ScaledFromZero",
            message: format!("{service}: a request is waiting, starting {wanted} pods"),
        },
    )
    .await
}

/// `service` has been quiet for `quiet_ms`: past its `scale_to_zero`, it goes to zero.
async fn rest(
    client: &Client,
    app: &ParacloudApp,
    service: &str,
    quiet_ms: u64,
    identity: &str,
) -> Result<(), String> {
    let Ok(manifest) = paracloud_kube::reconcile::manifest(app) else {
        return Ok(());
    };
    let Some(after) = manifest.services.get(service).and_then(|s| s.scale_to_zero) else {
        return Ok(());
    };
    if u128::from(quiet_ms) < after.as_millis() {
        return Ok(());
    }
    let Some(app) = current(client, app).await? else {
        return Ok(());
    };
    // A service under a migration is the migration's until it ends.
    if replicas(&app, service).unwrap_or(0) == 0 || app.spec.migrating.contains_key(service) {
        return Ok(());
    }
    set_replicas(
        client,
        &app,
        service,
        0,
        identity,
        Note {
            kind: "Normal",
            reason: "ScaledToZero",
            message: format!(
                "{service}: no request for {}, scaled to zero",
                humantime_seconds(quiet_ms)
            ),
        },
    )
    .await
}

fn humantime_seconds(ms: u64) -> String {
    format!("{} s", ms / 1000)
}

async fn set_replicas(
    client: &Client,
    app: &ParacloudApp,
    service: &str,
    replicas: u32,
    identity: &str,
    note: Note,
) -> Result<(), String> {
    let api: Api<ParacloudApp> =
        Api::namespaced(client.clone(), &app.namespace().unwrap_or_default());
    let patch = json!({ "spec": { "scale": { service: { "replicas": replicas } } } });
    api.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| e.to_string())?;
    crate::cluster::record(client, identity, app, &note)
        .await
        .map_err(|e| e.to_string())
}
