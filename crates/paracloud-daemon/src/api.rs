//! The HTTP/JSON API on the daemon's Unix socket (routes listed in the paracloud-api crate).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use paracloud_api::{
    AppView, BuiltImage, CpuRequest, ErrorBody, Event, ExportRequest, Health, ImageDetail,
    ImageRef, ImageView, ImportRequest, InstanceView, MicroImageRequest, MigrateRequest,
    MigrateResponse, PruneView, RemovedImages, ScaleRequest, ServiceView, TrafficRequest,
    UpRequest, UpResponse,
};
use paracloud_manifest::{parse, FileSystem, Origin};
use paracloud_state::{AppRecord, Snapshot};
use serde::Deserialize;

use crate::driver::Driver;
use crate::engine::{now_ms, Engine};
use crate::images::{self, ImageError, Images};
use crate::logs;
use crate::views::{app_view, instance_view, service_view};

/// The most instances one service may be scaled to.
pub const MAX_REPLICAS: u32 = 200;

pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                diagnostics: vec![],
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<paracloud_state::Error> for ApiError {
    fn from(e: paracloud_state::Error) -> Self {
        let status = match e {
            paracloud_state::Error::NoApp(_) | paracloud_state::Error::NoService { .. } => {
                StatusCode::NOT_FOUND
            }
            paracloud_state::Error::AddressesExhausted { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the query string is not valid: {}", e.body_text()),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid: {}", e.body_text()),
        )
    }
}

/// The real filesystem, for the manifest's path checks.
pub struct HostFs;

impl FileSystem for HostFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

type Shared<D> = State<Arc<Engine<D>>>;

pub fn router<D: Driver>(engine: Arc<Engine<D>>) -> Router {
    Router::new()
        .route("/v1/health", get(health::<D>))
        .route("/v1/apps", post(up::<D>).get(list_apps::<D>))
        .route("/v1/apps/{app}", get(get_app::<D>).delete(down::<D>))
        .route("/v1/instances", get(instances::<D>))
        .route("/v1/apps/{app}/services/{service}", get(describe::<D>))
        .route(
            "/v1/apps/{app}/services/{service}/replicas",
            put(scale::<D>),
        )
        .route("/v1/apps/{app}/services/{service}/cpu", put(cpu::<D>))
        .route(
            "/v1/apps/{app}/services/{service}/restart",
            post(restart::<D>),
        )
        .route(
            "/v1/apps/{app}/services/{service}/traffic",
            put(traffic::<D>),
        )
        .route(
            "/v1/apps/{app}/instances/{instance}/migrate",
            post(migrate::<D>),
        )
        .route("/v1/apps/{app}/logs", get(logs_of::<D>))
        .route("/v1/events", get(events::<D>))
        .route("/v1/stats", get(stats::<D>))
        .route(
            "/v1/images",
            get(list_images::<D>).delete(remove_image::<D>),
        )
        .route("/v1/images/inspect", get(inspect_image::<D>))
        .route("/v1/images/prune", post(prune_images::<D>))
        .route("/v1/images/micro", post(build_micro::<D>))
        .route("/v1/images/import", post(import_images::<D>))
        .route("/v1/images/export", post(export_images::<D>))
        .route("/v1/images/build", post(build_image::<D>))
        .route("/v1/images/pull", post(pull_image::<D>))
        .route("/v1/images/push", post(push_image::<D>))
        .route("/v1/capsules", get(list_capsules::<D>))
        .route("/v1/capsules/run", post(run_capsule::<D>))
        .route("/v1/capsules/history", get(capsule_history::<D>))
        .route(
            "/v1/capsules/runs/{run}/files/{instance}/{name}",
            get(capsule_file::<D>),
        )
        .route("/v1/capsules/debug", get(crate::debug::debug::<D>))
        .route(
            "/v1/capsules/runs/{run}/resize",
            post(crate::debug::resize::<D>),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API route: see the paracloud-api crate for the routes",
            )
        })
        .with_state(engine)
}

async fn health<D: Driver>(State(engine): Shared<D>) -> Json<Health> {
    Json(Health {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        root: engine.config.root.clone(),
    })
}

fn find_app<'a>(snapshot: &'a Snapshot, app: &str) -> Result<&'a AppRecord, ApiError> {
    snapshot.apps.iter().find(|a| a.name == app).ok_or_else(|| {
        let known: Vec<&str> = snapshot.apps.iter().map(|a| a.name.as_str()).collect();
        let hint = if known.is_empty() {
            "none runs".to_string()
        } else {
            format!("running: {}", known.join(", "))
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no application named {app} ({hint})"),
        )
    })
}

async fn up<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<UpRequest>, JsonRejection>,
) -> Result<Json<UpResponse>, ApiError> {
    let Json(request) = body?;
    if !request.base_dir.is_absolute() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "base_dir must be an absolute path",
        ));
    }
    let origin = Origin {
        file: request.origin.clone(),
        base_dir: request.base_dir.clone(),
    };
    let manifest = parse(&request.source, &origin, &HostFs).map_err(|e| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: ErrorBody {
            error: e.to_string(),
            diagnostics: e.diagnostics.clone(),
        },
    })?;
    // `build = "DIR"`: built first (from the step cache when nothing changed), named
    // APP-SERVICE:latest.
    let mut manifest = manifest;
    let app_name = manifest.app.clone();
    for (name, service) in manifest.services.iter_mut() {
        if let paracloud_manifest::Image::Build { context, digest } = &mut service.image {
            let request = paracloud_api::BuildRequest {
                context: context.clone(),
                file: None,
                tag: format!("{app_name}-{}:latest", name.replace('@', "-")),
                build_args: Default::default(),
            };
            let built = crate::build::build(&engine, request).await.map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{}: service {name}: {}", origin.file, e.message),
                )
            })?;
            *digest = Some(built.digest);
        }
    }
    // Images of the store: pinned to a digest, their config's defaults filled in.
    let manifest = engine
        .images
        .with(move |store| {
            let mut manifest = manifest;
            Images::resolve_manifest(store, &mut manifest).map(|()| manifest)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                if e.not_found {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                format!("{}: {}", request.origin, e.message),
            )
        })?;
    let snapshot = engine.store.load()?;
    let ours: BTreeSet<_> = manifest
        .services
        .values()
        .flat_map(|s| s.ports.iter().filter_map(|p| p.publish))
        .collect();
    for other in snapshot
        .apps
        .iter()
        .filter(|a| a.name != manifest.app && a.removing.is_none())
    {
        for (name, service) in &other.manifest.services {
            for port in service.ports.iter().filter_map(|p| p.publish) {
                if ours.contains(&port) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "{}: port clash: {port} is already published by service {name} of application {}; \
                             publish another host port, or take {} down first",
                            request.origin, other.name, other.name
                        ),
                    ));
                }
            }
        }
    }
    let changed = engine
        .store
        .put_app(&manifest, &request.source, &request.origin, now_ms())?;
    // Make sure the network has the addresses of any new service.
    engine.store.set_network(&manifest.app, false)?;
    let what = if changed.is_empty() {
        "deployed".to_string()
    } else {
        format!("deployed; changed: {}", changed.join(", "))
    };
    engine
        .store
        .add_event(now_ms(), &manifest.app, &manifest.app, &what)?;
    engine.wake();
    Ok(Json(UpResponse {
        app: manifest.app,
        changed,
    }))
}

async fn list_apps<D: Driver>(State(engine): Shared<D>) -> Result<Json<Vec<AppView>>, ApiError> {
    let snapshot = engine.store.load()?;
    let waiting = engine.waiting();
    let now = now_ms();
    Ok(Json(
        snapshot
            .apps
            .iter()
            .map(|a| app_view(a, &snapshot, engine.config.subnet_pool, now, &waiting))
            .collect(),
    ))
}

/// The current view of one application.
fn app_answer<D: Driver>(engine: &Engine<D>, app: &str) -> Result<Json<AppView>, ApiError> {
    let snapshot = engine.store.load()?;
    let record = find_app(&snapshot, app)?;
    let pool = engine.config.subnet_pool;
    Ok(Json(app_view(
        record,
        &snapshot,
        pool,
        now_ms(),
        &engine.waiting(),
    )))
}

async fn get_app<D: Driver>(
    State(engine): Shared<D>,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<AppView>, ApiError> {
    app_answer(&engine, &app)
}

#[derive(Deserialize)]
struct DownQuery {
    #[serde(default)]
    volumes: bool,
}

async fn down<D: Driver>(
    State(engine): Shared<D>,
    UrlPath(app): UrlPath<String>,
    query: Result<Query<DownQuery>, QueryRejection>,
) -> Result<Json<AppView>, ApiError> {
    let Query(query) = query?;
    let snapshot = engine.store.load()?;
    find_app(&snapshot, &app)?;
    engine.store.mark_removing(&app, query.volumes)?;
    engine
        .store
        .add_event(now_ms(), &app, &app, "down requested")?;
    engine.wake();
    app_answer(&engine, &app)
}

#[derive(Deserialize)]
struct AppQuery {
    app: Option<String>,
}

async fn instances<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<AppQuery>, QueryRejection>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    let Query(query) = query?;
    let snapshot = engine.store.load()?;
    if let Some(app) = &query.app {
        find_app(&snapshot, app)?;
    }
    let now = now_ms();
    let views = snapshot
        .instances
        .iter()
        .filter(|i| query.app.as_ref().is_none_or(|a| &i.key.app == a))
        .filter_map(|i| {
            let app = snapshot.apps.iter().find(|a| a.name == i.key.app)?;
            Some(instance_view(app, i, engine.config.subnet_pool, now))
        })
        .collect();
    Ok(Json(views))
}

fn service_or_404<D: Driver>(
    engine: &Engine<D>,
    app: &str,
    service: &str,
) -> Result<ServiceView, ApiError> {
    let snapshot = engine.store.load()?;
    let record = find_app(&snapshot, app)?;
    service_view(
        record,
        service,
        &snapshot,
        engine.config.subnet_pool,
        now_ms(),
        &engine.waiting(),
    )
    .ok_or_else(|| {
        let known: Vec<&str> = record
            .manifest
            .services
            .keys()
            .map(String::as_str)
            .collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "application {app} has no service named {service} (it has: {})",
                known.join(", ")
            ),
        )
    })
}

async fn describe<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, service)): UrlPath<(String, String)>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn scale<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, service)): UrlPath<(String, String)>,
    body: Result<Json<ScaleRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let Json(request) = body?;
    if request.replicas > MAX_REPLICAS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "replicas {} is more than the {MAX_REPLICAS} a service may have",
                request.replicas
            ),
        ));
    }
    service_or_404(&engine, &app, &service)?;
    engine
        .store
        .set_replicas(&app, &service, request.replicas)?;
    engine.store.add_event(
        now_ms(),
        &app,
        &service,
        &format!("scaled to {}", request.replicas),
    )?;
    engine.wake();
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

/// The cores of this machine: more CPU per instance than that is never used.
pub fn machine_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Checks a CPU per instance asked for by hand: within [`paracloud_manifest::MIN_CPU`] and the
/// machine's cores.
pub fn check_cpu(cpu: f64, cores: f64) -> Result<f64, String> {
    let min = paracloud_manifest::MIN_CPU;
    if !cpu.is_finite() || cpu < min {
        return Err(format!(
            "cpu {cpu} is too small: an instance gets at least {min} of a core (a number such as 0.5 or 2)"
        ));
    }
    if cpu > cores {
        return Err(format!(
            "cpu {cpu} is more than the {cores} cores of this machine: ask for {cores} at most"
        ));
    }
    Ok(cpu)
}

async fn cpu<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, service)): UrlPath<(String, String)>,
    body: Result<Json<CpuRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let Json(request) = body?;
    let cpu = check_cpu(request.cpu, machine_cores())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let before = service_or_404(&engine, &app, &service)?.cpu;
    engine.store.set_cpu(&app, &service, Some(cpu))?;
    engine.store.add_event(
        now_ms(),
        &app,
        &service,
        &format!(
            "cpu per instance set to {cpu} (was {})",
            crate::views::cores(before)
        ),
    )?;
    engine.wake();
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn traffic<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, service)): UrlPath<(String, String)>,
    body: Result<Json<TrafficRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let Json(request) = body?;
    let view = service_or_404(&engine, &app, &service)?;
    if let Some(of) = &view.spec.revision_of {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{service} is revision {} of {}: set its share on {}, as in `paracloud traffic {} {}=10`",
                of.revision, of.service, of.service, of.service, of.revision
            ),
        ));
    }
    let revisions: Vec<&str> = view
        .traffic
        .iter()
        .filter_map(|t| t.revision.as_deref())
        .collect();
    let mut total = 0;
    for share in &view.traffic {
        let Some(revision) = &share.revision else {
            continue;
        };
        total += request
            .weights
            .get(revision)
            .copied()
            .unwrap_or(share.weight);
    }
    for (revision, weight) in &request.weights {
        if !revisions.contains(&revision.as_str()) {
            let known = if revisions.is_empty() {
                "it has none; declare one in the manifest under [services.NAME.revisions.REVISION]"
                    .to_string()
            } else {
                format!("its revisions: {}", revisions.join(", "))
            };
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{service} has no revision named {revision} ({known})"),
            ));
        }
        if *weight > 100 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{revision}={weight}: a share is a percent, from 0 to 100"),
            ));
        }
    }
    if total > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the revisions of {service} would get {total}% of its traffic together, more than 100%; \
                 lower some shares (a revision not named keeps its share; set it to 0 to take it out)"
            ),
        ));
    }
    for (revision, weight) in &request.weights {
        let name = paracloud_manifest::revision_service_name(&service, revision);
        engine.store.set_weight(&app, &name, Some(*weight))?;
    }
    let view = service_or_404(&engine, &app, &service)?;
    let split: Vec<String> = view
        .traffic
        .iter()
        .map(|t| format!("{} {}%", t.service, t.weight))
        .collect();
    engine.store.add_event(
        now_ms(),
        &app,
        &service,
        &format!("traffic: {}", split.join(", ")),
    )?;
    engine.wake();
    Ok(Json(view))
}

async fn restart<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, service)): UrlPath<(String, String)>,
) -> Result<Json<ServiceView>, ApiError> {
    service_or_404(&engine, &app, &service)?;
    engine.store.bump_revision(&app, &service)?;
    engine
        .store
        .add_event(now_ms(), &app, &service, "restart requested")?;
    engine.wake();
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

/// Reads `via` of a migrate request.
pub fn parse_via(via: &str) -> Result<paracloud_manifest::MigrateMethod, String> {
    use paracloud_manifest::MigrateMethod;
    match via {
        "paci" => Ok(MigrateMethod::Paci),
        "criu" => Ok(MigrateMethod::Criu),
        "restart" => Ok(MigrateMethod::Restart),
        other => Err(format!(
            "unknown migration method {other:?}: use paci (the application hands its state over), criu (checkpoint and restore) or restart (stateless)"
        )),
    }
}

/// Splits an instance name such as `kv.2` into its service and index.
pub fn parse_instance(name: &str) -> Result<(String, u32), String> {
    name.rsplit_once('.')
        .and_then(|(service, index)| Some((service.to_string(), index.parse().ok()?)))
        .filter(|(service, _)| !service.is_empty())
        .ok_or_else(|| {
            format!("{name:?} is not an instance name: instances are named SERVICE.N, such as kv.1 (see paracloud ps)")
        })
}

async fn migrate<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((app, instance)): UrlPath<(String, String)>,
    body: Result<Json<MigrateRequest>, JsonRejection>,
) -> Result<Json<MigrateResponse>, ApiError> {
    use crate::migrate::MigrateError;
    let Json(request) = body?;
    let (service, index) =
        parse_instance(&instance).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let via = request
        .via
        .as_deref()
        .map(parse_via)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let cpu = request
        .cpus
        .map(|c| check_cpu(c, machine_cores()))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("--cpus: {e}")))?;
    let view = service_or_404(&engine, &app, &service)?;
    if let Some(revision) = &request.revision {
        let current = view.revision;
        let asked: Option<u64> = match revision.as_str() {
            "latest" => Some(current),
            n => n.parse().ok(),
        };
        match asked {
            Some(r) if r == current => {}
            Some(r) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{service} is at revision {current}: an instance can only be moved to it (the state keeps one spec per service; `up` the manifest of the revision you want, which moves every instance, or run it beside the service as [services.{service}.revisions.NAME]); asked for {r}"
                    ),
                ))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("--revision {revision:?} is not a revision: give a number such as {current}, or latest"),
                ))
            }
        }
    }
    let key = paracloud_reconcile::InstanceKey::new(&app, &service, index);
    let outcome = engine
        .migrate(
            &key,
            crate::migrate::Options {
                via,
                cpu,
                reserved: false,
            },
        )
        .await
        .map_err(|e| {
            let status = match e {
                MigrateError::NotFound(_) => StatusCode::NOT_FOUND,
                MigrateError::Refused(_) => StatusCode::CONFLICT,
                MigrateError::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(status, e.to_string())
        })?;
    Ok(Json(MigrateResponse {
        from: outcome.from,
        to: outcome.to,
        via: outcome.via.name().to_string(),
        took_ms: outcome.took_ms,
        handover_ms: outcome.handover_ms,
        state_bytes: outcome.state_bytes,
    }))
}

#[derive(Deserialize)]
struct LogQuery {
    target: Option<String>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// The log files a logs request covers, with the prefix shown before their lines.
fn log_files<D: Driver>(
    engine: &Engine<D>,
    app: &str,
    target: Option<&str>,
) -> Result<Vec<(String, PathBuf)>, ApiError> {
    let snapshot = engine.store.load()?;
    let record = find_app(&snapshot, app)?;
    if let Some(target) = target {
        let known_service = record.manifest.services.contains_key(target);
        let known_instance = snapshot
            .instances
            .iter()
            .any(|i| i.key.app == app && i.key.name() == target);
        if !known_service && !known_instance {
            let services: Vec<&str> = record
                .manifest
                .services
                .keys()
                .map(String::as_str)
                .collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "application {app} has no service or instance named {target} (services: {}; instances are named like web.1)",
                    services.join(", ")
                ),
            ));
        }
    }
    Ok(snapshot
        .instances
        .iter()
        .filter(|i| i.key.app == app)
        .filter(|i| target.is_none_or(|t| i.key.service == t || i.key.name() == t))
        .map(|i| (i.key.name(), engine.config.log_path(&i.key)))
        .collect())
}

async fn logs_of<D: Driver>(
    State(engine): Shared<D>,
    UrlPath(app): UrlPath<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let files = log_files(&engine, &app, query.target.as_deref())?;
    let prefix = files.len() > 1 || query.target.as_deref().is_none_or(|t| !t.contains('.'));
    let mut text = String::new();
    for (name, path) in &files {
        let lines = logs::tail(path, query.tail.unwrap_or(100)).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        for line in lines {
            if prefix {
                text.push_str(&format!("{name} | {line}\n"));
            } else {
                text.push_str(&line);
                text.push('\n');
            }
        }
    }
    if !query.follow {
        return Ok(text.into_response());
    }
    let offsets: Vec<(String, PathBuf, u64)> = files
        .into_iter()
        .map(|(name, path)| {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            (name, path, len)
        })
        .collect();
    let target = query.target.clone();
    let state = (engine, app, target, offsets, Some(text));
    let stream = futures::stream::unfold(
        state,
        move |(engine, app, target, mut offsets, first)| async move {
            if let Some(first) = first {
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(first)),
                    (engine, app, target, offsets, None),
                ));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Instances that appeared since (scale-out, restarts) are followed from their start.
                let files = log_files(&engine, &app, target.as_deref()).ok()?;
                for (name, path) in files {
                    if !offsets.iter().any(|(n, _, _)| *n == name) {
                        offsets.push((name, path, 0));
                    }
                }
                let mut out = String::new();
                for (name, path, offset) in offsets.iter_mut() {
                    if let Ok((lines, next)) = logs::read_new_lines(path, *offset) {
                        *offset = next;
                        for line in lines {
                            if prefix {
                                out.push_str(&format!("{name} | {line}\n"));
                            } else {
                                out.push_str(&line);
                                out.push('\n');
                            }
                        }
                    }
                }
                if !out.is_empty() {
                    return Some((Ok(Bytes::from(out)), (engine, app, target, offsets, None)));
                }
            }
        },
    );
    Ok(Body::from_stream(stream).into_response())
}

#[derive(Deserialize)]
struct EventQuery {
    app: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

async fn events<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let Query(query) = query?;
    let events = engine.store.events(
        query.app.as_deref(),
        query.after,
        query.limit.unwrap_or(100),
    )?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| Event {
                id: e.id,
                at: e.at,
                app: e.app,
                subject: e.subject,
                message: e.message,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct StatsQuery {
    app: Option<String>,
}

/// The data plane's live figures (its `GET /stats`), optionally only the listeners of one app.
async fn stats<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<paracloud_dataplane::Snapshot>, ApiError> {
    let Query(query) = query?;
    if let Some(app) = &query.app {
        find_app(&engine.store.load()?, app)?;
    }
    let client = paracloud_api::Client::new(engine.dataplane_stats_path());
    let mut snapshot: paracloud_dataplane::Snapshot = client.get("/stats").await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the data plane does not answer for its figures: {e}; it is restarted within a second, try again"),
        )
    })?;
    if let Some(app) = &query.app {
        let prefix = format!("{app}/");
        snapshot.listeners.retain(|l| l.name.starts_with(&prefix));
        snapshot.calls.retain(|c| c.to.starts_with(&prefix));
    }
    Ok(Json(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_by_hand_stays_within_a_hundredth_and_the_machine() {
        assert_eq!(check_cpu(1.5, 2.0), Ok(1.5));
        assert_eq!(check_cpu(0.01, 2.0), Ok(0.01));
        assert!(check_cpu(0.001, 2.0).unwrap_err().contains("at least 0.01"));
        assert!(check_cpu(f64::NAN, 2.0).unwrap_err().contains("too small"));
        assert!(check_cpu(3.0, 2.0)
            .unwrap_err()
            .contains("more than the 2 cores of this machine"));
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = if e.not_found {
            StatusCode::NOT_FOUND
        } else if e.bad_request {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.message)
    }
}

#[derive(Deserialize)]
struct ImageName {
    name: String,
}

async fn list_images<D: Driver>(
    State(engine): Shared<D>,
) -> Result<Json<Vec<ImageView>>, ApiError> {
    Ok(Json(engine.images.with(images::list).await?))
}

async fn inspect_image<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<ImageName>, QueryRejection>,
) -> Result<Json<ImageDetail>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        engine
            .images
            .with(move |store| images::inspect(store, &q.name))
            .await?,
    ))
}

async fn remove_image<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<ImageName>, QueryRejection>,
) -> Result<Json<RemovedImages>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        engine
            .images
            .with(move |store| images::remove(store, &q.name))
            .await?,
    ))
}

async fn prune_images<D: Driver>(State(engine): Shared<D>) -> Result<Json<PruneView>, ApiError> {
    let _no_transfer = engine.images.transfers.clone().write_owned().await;
    // What services use stays, named or not: their instances may start again at any time.
    let pinned = Images::pinned(&engine.store.load()?);
    Ok(Json(
        engine
            .images
            .with(move |store| images::prune(store, &pinned))
            .await?,
    ))
}

async fn build_micro<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<MicroImageRequest>, JsonRejection>,
) -> Result<Json<BuiltImage>, ApiError> {
    let Json(r) = body?;
    Ok(Json(
        engine
            .images
            .with(move |store| images::build_micro(store, &r.binary, &r.add, &r.tag))
            .await?,
    ))
}

async fn import_images<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<ImportRequest>, JsonRejection>,
) -> Result<Json<Vec<ImageRef>>, ApiError> {
    let Json(r) = body?;
    Ok(Json(
        engine
            .images
            .with(move |store| images::import(store, &r.path, r.tag.as_deref()))
            .await?,
    ))
}

async fn export_images<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<ExportRequest>, JsonRejection>,
) -> Result<Json<Vec<ImageRef>>, ApiError> {
    let Json(r) = body?;
    Ok(Json(
        engine
            .images
            .with(move |store| images::export(store, &r.names, &r.path))
            .await?,
    ))
}

/// Runs a pull or push, answering with its progress as JSON lines; the last line says how it
/// ended. Byte counts are sent at most once per MiB of each blob.
fn transfer_stream(
    engine_images: Images,
    request: paracloud_api::TransferRequest,
    push: bool,
) -> Result<Response, ApiError> {
    use paracloud_api::TransferEvent;
    use paracloud_image::registry::{self, Credentials, Progress, ProgressFn};

    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let parse = |s: &str| -> Result<paracloud_image::Reference, ApiError> {
        s.parse::<paracloud_image::Reference>()
            .map_err(|e| bad(format!("{e}; {}", e.hint())))
    };
    let source = if push {
        None
    } else {
        Some(parse(&request.reference)?)
    };
    let target = match (&request.target, push) {
        (Some(t), true) => Some(parse(t)?),
        (None, true) => Some(parse(&request.reference)?),
        (_, false) => None,
    };
    for r in source.iter().chain(target.iter()) {
        if r.registry.is_none() {
            return Err(bad(format!(
                "{r} names no registry: write HOST[:PORT]/NAME[:TAG], such as 127.0.0.1:5000/{}",
                r.repository
            )));
        }
    }
    let credentials = match (request.username.clone(), request.password.clone()) {
        (Some(username), password) => Some(Credentials {
            username,
            password: password.unwrap_or_default(),
        }),
        (None, Some(_)) => return Err(bad("a password needs a --username".into())),
        (None, None) => None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<TransferEvent>();
    let reported = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    let progress_tx = tx.clone();
    let progress: ProgressFn = Arc::new(move |p| {
        let event = match p {
            Progress::Started { digest, size } => TransferEvent::Started {
                digest: digest.to_string(),
                size,
            },
            Progress::Bytes { digest, done } => {
                let mut last = reported.lock().unwrap_or_else(|e| e.into_inner());
                let seen = last.entry(digest.to_string()).or_insert(0);
                if done < *seen + (1 << 20) {
                    return;
                }
                *seen = done;
                TransferEvent::Bytes {
                    digest: digest.to_string(),
                    done,
                }
            }
            Progress::Done { digest } => TransferEvent::Done {
                digest: digest.to_string(),
            },
        };
        let _ = progress_tx.send(event);
    });
    tokio::spawn(async move {
        let _shared = engine_images.transfers.clone().read_owned().await;
        let store = engine_images.store().clone();
        let result = match (source, target) {
            (Some(source), _) => registry::pull(&store, &source, credentials, progress)
                .await
                .map(|d| (source.normalized().to_string(), d)),
            (None, Some(target)) => {
                registry::push(&store, &request.reference, &target, credentials, progress)
                    .await
                    .map(|d| (target.normalized().to_string(), d))
            }
            (None, None) => unreachable!("a transfer has a source or a target"),
        };
        let last = match result {
            Ok((reference, digest)) => TransferEvent::Finished {
                reference,
                digest: digest.to_string(),
            },
            Err(e) => TransferEvent::Failed {
                error: e.to_string(),
            },
        };
        let _ = tx.send(last);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx))
    });
    Ok(Body::from_stream(stream).into_response())
}

async fn pull_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::TransferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    transfer_stream(engine.images.clone(), r, false)
}

async fn push_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::TransferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    transfer_stream(engine.images.clone(), r, true)
}

async fn build_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::BuildRequest>, JsonRejection>,
) -> Result<Json<paracloud_api::BuildResponse>, ApiError> {
    let Json(r) = body?;
    Ok(Json(crate::build::build(&engine, r).await?))
}

/// Who calls the API: the peer credentials of its Unix socket connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Caller {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Caller {
    /// The user's name (`root`), or `uid N` when it has none.
    pub fn who(&self) -> String {
        match self.uid {
            None => "unknown".into(),
            Some(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid {uid}")),
        }
    }
}

impl From<crate::capsules::CapsuleError> for ApiError {
    fn from(e: crate::capsules::CapsuleError) -> Self {
        use crate::capsules::CapsuleError;
        let status = match &e {
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CapsuleError::Refused(_) => StatusCode::FORBIDDEN,
            CapsuleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CapsuleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsuleListQuery {
    app: Option<String>,
}

async fn list_capsules<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<CapsuleListQuery>, QueryRejection>,
) -> Result<Json<Vec<paracloud_api::CapsuleView>>, ApiError> {
    let Query(q) = query?;
    let snapshot = engine.store.load()?;
    Ok(Json(
        crate::capsules::catalog(&snapshot.apps, q.app.as_deref())
            .iter()
            .map(crate::capsules::view)
            .collect(),
    ))
}

async fn run_capsule<D: Driver>(
    State(engine): Shared<D>,
    axum::extract::ConnectInfo(caller): axum::extract::ConnectInfo<Caller>,
    body: Result<Json<paracloud_api::CapsuleRunRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let prepared = crate::capsules::prepare(&engine, &caller.who(), &request)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::capsules::execute(engine.clone(), prepared, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx))
    });
    Ok(Body::from_stream(stream).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    app: Option<String>,
    limit: Option<u32>,
}

async fn capsule_history<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<paracloud_api::CapsuleRunView>>, ApiError> {
    let Query(q) = query?;
    let runs = engine
        .store
        .capsule_runs(q.app.as_deref(), q.limit.unwrap_or(50).min(10_000))?;
    Ok(Json(
        runs.into_iter()
            .map(|(id, r)| crate::views::capsule_run_view(id, r))
            .collect(),
    ))
}

async fn capsule_file<D: Driver>(
    State(engine): Shared<D>,
    UrlPath((run, instance, name)): UrlPath<(i64, String, String)>,
) -> Result<Response, ApiError> {
    let path = crate::capsules::output_file(&engine.config.root, run, &instance, &name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "run {run} left no file {name:?} on {instance} (the files of the last {} runs are kept)",
                    crate::capsules::KEPT_RUNS
                ),
            )
        })?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        )
    })?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok(Body::from_stream(stream).into_response())
}
