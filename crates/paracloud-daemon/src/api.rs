//! The HTTP/JSON API on the daemon's Unix socket (routes listed in the paracloud-api crate).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use axum::{Json, Router};
use paracloud_api::routes as route;
use paracloud_api::{
    AppQuery, CapsulesQuery, DownQuery, EventsQuery, HistoryQuery, ImageQuery, LogsQuery,
};
use paracloud_api::{
    AppView, BuiltImage, CpuRequest, DataplaneRestartRequest, DataplaneRestartResponse, ErrorBody,
    Event, ExportRequest, Health, HostFs, ImageDetail, ImageRef, ImageView, ImportRequest,
    InstanceView, MicroImageRequest, MigrateRequest, MigrateResponse, PruneView, RemovedImages,
    Route, ScaleRequest, ServiceView, TrafficRequest, UpRequest, UpResponse,
};
use paracloud_command::{authorize_route, Command, Outcome, Role};
use paracloud_manifest::{parse, Origin};
use paracloud_state::{AppRecord, Snapshot};

use crate::api_error::{ApiError, MAX_BODY};
use crate::clock::now_ms;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::images::{self, Images};
use crate::logs;
use crate::peer::Peer;
use crate::views::{app_view, instance_view, service_view};

type Shared<D> = State<Arc<Engine<D>>>;

/// Registers a handler at a route's path and method (the routes are written in `paracloud-api`
/// alone), with the least role a remote caller needs to use it: `read` for a viewer (commands
/// sent through such a route are then authorized by the command layer for what they ask),
/// `admin` for what acts on the host (builds, imports, pulls, debug shells), `open` for the
/// login. A local caller may do everything.
trait On<S> {
    fn read<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self;
    fn admin<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self;
    fn open<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self;
}

fn register<R: Route, T: 'static, S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    least: Option<Role>,
    handler: impl Handler<T, S>,
) -> Router<S> {
    let method = MethodFilter::try_from(R::METHOD)
        .unwrap_or_else(|_| panic!("{} {}: not a method axum routes", R::METHOD, R::PATH));
    let route = axum::routing::on(method, handler);
    let Some(least) = least else {
        return router.route(R::PATH, route);
    };
    let what = format!("use {} {}", R::METHOD, R::PATH);
    let gate = move |peer: Peer, request: axum::extract::Request, next: Next| {
        let what = what.clone();
        async move {
            authorize_route(&peer.caller(), least, &what).map_err(ApiError::from)?;
            Ok::<_, ApiError>(next.run(request).await)
        }
    };
    router.route(R::PATH, route.layer(axum::middleware::from_fn(gate)))
}

impl<S: Clone + Send + Sync + 'static> On<S> for Router<S> {
    fn read<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self {
        register::<R, T, S>(self, Some(Role::Viewer), handler)
    }

    fn admin<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self {
        register::<R, T, S>(self, Some(Role::Admin), handler)
    }

    fn open<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self {
        register::<R, T, S>(self, None, handler)
    }
}

/// The API's routes. Each listener names the caller of a request first (`peer::local_peer` on
/// the Unix socket, the token check of `remote` on the remote listener).
pub fn router<D: Driver>(engine: Arc<Engine<D>>) -> Router {
    Router::new()
        .read::<route::GetHealth, _>(health::<D>)
        .admin::<route::Up, _>(up::<D>)
        .read::<route::ListApps, _>(list_apps::<D>)
        .read::<route::GetApp, _>(get_app::<D>)
        .read::<route::Down, _>(down::<D>)
        .read::<route::ListInstances, _>(instances::<D>)
        .read::<route::GetService, _>(describe::<D>)
        .read::<route::Scale, _>(scale::<D>)
        .read::<route::SetCpu, _>(cpu::<D>)
        .read::<route::Restart, _>(restart::<D>)
        .read::<route::SetTraffic, _>(traffic::<D>)
        .read::<route::Migrate, _>(migrate::<D>)
        .read::<route::Logs, _>(logs_of::<D>)
        .read::<route::ListEvents, _>(events::<D>)
        .read::<route::GetStats, _>(stats::<D>)
        .admin::<route::RestartDataplane, _>(restart_dataplane::<D>)
        .read::<route::ListImages, _>(list_images::<D>)
        .admin::<route::RemoveImage, _>(remove_image::<D>)
        .read::<route::InspectImage, _>(inspect_image::<D>)
        .admin::<route::PruneImages, _>(prune_images::<D>)
        .admin::<route::BuildMicroImage, _>(build_micro::<D>)
        .admin::<route::ImportImages, _>(import_images::<D>)
        .admin::<route::ExportImages, _>(export_images::<D>)
        .admin::<route::BuildImage, _>(build_image::<D>)
        .read::<route::ImageSources, _>(image_sources::<D>)
        .admin::<route::PullImage, _>(pull_image::<D>)
        .admin::<route::PushImage, _>(push_image::<D>)
        .read::<route::ListCatalog, _>(list_catalog)
        .read::<route::SubmitTasks, _>(crate::batches::submit::<D>)
        .read::<route::ListBatches, _>(crate::batches::list::<D>)
        .read::<route::GetBatch, _>(crate::batches::get::<D>)
        .read::<route::CancelBatch, _>(crate::batches::cancel::<D>)
        .read::<route::ListCapsules, _>(list_capsules::<D>)
        .read::<route::RunCapsule, _>(run_capsule::<D>)
        .read::<route::CapsuleHistory, _>(capsule_history::<D>)
        .read::<route::GetCapsuleRun, _>(capsule_run::<D>)
        .read::<route::GetCapsuleFile, _>(capsule_file::<D>)
        .admin::<route::DebugSession, _>(crate::debug::debug::<D>)
        .admin::<route::ResizeTerminal, _>(crate::debug::resize::<D>)
        .read::<route::GetWhoAmI, _>(crate::session::whoami)
        .read::<route::CreateToken, _>(crate::session::create_token::<D>)
        .admin::<route::ListTokens, _>(crate::session::list_tokens::<D>)
        .read::<route::RevokeToken, _>(crate::session::revoke_token::<D>)
        .open::<route::OpenSession, _>(crate::session::open_session::<D>)
        .open::<route::CloseSession, _>(crate::session::close_session)
        .read::<route::GetOpenApi, _>(openapi)
        .read::<route::GetMetrics, _>(crate::metrics::metrics::<D>)
        .open::<route::DashboardPage, _>(crate::dashboard::page)
        .open::<route::DashboardAsset, _>(crate::dashboard::asset)
        .read::<route::GetManifest, _>(crate::dashboard::manifest::<D>)
        .read::<route::LiveFigures, _>(crate::dashboard::live::<D>)
        .admin::<route::DebugTerminal, _>(crate::debug::terminal::<D>)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API route: see the paracloud-api crate for the routes",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method: see GET /v1/openapi.json for its methods",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(engine)
}

async fn health<D: Driver>(State(engine): Shared<D>) -> Json<Health> {
    Json(Health {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        root: engine.config.root.clone(),
        remote: engine.remote.get().cloned(),
    })
}

/// The API's OpenAPI description, made once.
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(paracloud_api::openapi::document_json);
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str(),
    )
        .into_response()
}

/// A stream of JSON lines, with its content type.
fn json_lines(body: Body) -> Response {
    ([(header::CONTENT_TYPE, paracloud_api::JSON_LINES)], body).into_response()
}

fn find_app<'a>(snapshot: &'a Snapshot, app: &str) -> Result<&'a AppRecord, ApiError> {
    Ok(paracloud_command::find_app(snapshot, app)?)
}

async fn up<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
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
    if request.dry_run {
        return dry_run(&engine, &peer, request, manifest).await;
    }
    // `build = "DIR"`: built first (from the step cache when nothing changed), named
    // APP-SERVICE:latest.
    let mut manifest = manifest;
    let app_name = manifest.app.clone();
    for (name, service) in manifest.services.iter_mut() {
        if let paracloud_manifest::Image::Build {
            context,
            dockerfile,
            target,
            args,
            digest,
        } = &mut service.image
        {
            let request = paracloud_api::BuildRequest {
                context: context.clone(),
                file: dockerfile.clone(),
                tag: format!("{app_name}-{}:latest", name.replace('@', "-")),
                build_args: args.clone(),
                target: target.clone(),
                ..Default::default()
            };
            let built = crate::build::build(&engine, request, None)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("{}: service {name}: {}", origin.file, e.message),
                    )
                })?;
            *digest = Some(built.digest);
        }
    }
    // The catalogue's images: built from this machine's programs when the store lacks them.
    for (name, service) in &manifest.services {
        let recipe = service.catalog.as_ref().and_then(|catalogued| {
            paracloud_manifest::catalog::entry_of(catalogued.kind).image(&catalogued.version)
        });
        if let Some(recipe) = recipe {
            engine.images.catalog_image(recipe).await.map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{}: service {name}: {}", origin.file, e.message),
                )
            })?;
        }
    }
    // Images of the store: pinned to a digest, their config's defaults filled in.
    let registries = engine
        .images
        .registries()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.message))?;
    engine
        .images
        .pull_missing(&manifest, &registries, &engine.counters)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{}: {}", request.origin, e.message),
            )
        })?;
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
    check_machine(&engine, &manifest, &request.origin)?;
    let app = manifest.app.clone();
    let command = Command::Up {
        manifest,
        source: request.source,
        origin: request.origin,
    };
    let changed = match engine.submit(&peer.caller(), &command)?.outcome {
        Outcome::Deployed { changed } => changed,
        _ => Vec::new(),
    };
    Ok(Json(UpResponse {
        app,
        changed,
        checked: Vec::new(),
    }))
}

/// What `up` and its dry run check of a manifest against this machine: its published ports, its
/// external volumes and its fixed service addresses.
fn check_machine<D: Driver>(
    engine: &Arc<Engine<D>>,
    manifest: &paracloud_manifest::Manifest,
    origin: &str,
) -> Result<(), ApiError> {
    // A published port something else holds would never be served: say who holds it. Ports our
    // own applications publish are the data plane's (a clash between applications is the
    // command layer's to refuse).
    let published = |p: &paracloud_manifest::Port| p.publish.map(|a| (a, p.protocol.is_udp()));
    let ours: std::collections::BTreeSet<(std::net::SocketAddr, bool)> = engine
        .store
        .load()?
        .apps
        .iter()
        .filter(|a| a.removing.is_none())
        .flat_map(|a| a.manifest.services.values())
        .flat_map(|s| s.ports.iter().filter_map(published))
        .collect();
    for (name, service) in &manifest.services {
        for (publish, udp) in service.ports.iter().filter_map(published) {
            if !ours.contains(&(publish, udp)) {
                crate::ports::check_free(publish, udp).map_err(|e| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        format!("{origin}: services.{name}.ports: {e}"),
                    )
                })?;
            }
        }
    }
    check_fixed(engine, manifest, origin)
}

/// The external volumes of a manifest exist, and its fixed service addresses are free on this
/// machine (see `addressing::check_fixed_addresses`).
fn check_fixed<D: Driver>(
    engine: &Arc<Engine<D>>,
    manifest: &paracloud_manifest::Manifest,
    origin: &str,
) -> Result<(), ApiError> {
    // The external volumes it names exist: they are the machine's, made before.
    for (name, volume) in &manifest.volumes {
        if let Some(external) = &volume.external {
            let dir = engine.config.external_volume_dir(external);
            if !dir.is_dir() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "{origin}: volumes.{name}: the external volume `{external}` does not exist: create it with `mkdir -p {}` (as root), or drop `external` to make it the application's own",
                        dir.display()
                    ),
                ));
            }
        }
    }
    let snapshot = engine.store.load()?;
    let ours = snapshot
        .apps
        .iter()
        .flat_map(|a| {
            a.manifest
                .services
                .keys()
                .filter_map(|name| a.manifest.fixed_address(name))
        })
        .collect();
    crate::addressing::check_fixed_addresses(manifest, engine.config.addresses.pool, &ours, origin)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

/// `up --dry-run`: every check `up` makes, with nothing built, pulled, written or started. Each
/// image is found in the store, in a registry (through its mirrors) or, for a build, its
/// Containerfile parsed; every problem is told at once.
async fn dry_run<D: Driver>(
    engine: &Arc<Engine<D>>,
    peer: &Peer,
    request: UpRequest,
    manifest: paracloud_manifest::Manifest,
) -> Result<Json<UpResponse>, ApiError> {
    use paracloud_image::registry::{self, Credentials};
    use paracloud_manifest::Image;

    let origin = request.origin.clone();
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let registries = engine
        .images
        .registries()
        .map_err(|e| unprocessable(e.message))?;
    let auths: registry::Auths = request
        .auths
        .iter()
        .map(|(r, c)| {
            (
                r.clone(),
                Credentials {
                    username: c.username.clone(),
                    password: c.password.clone(),
                },
            )
        })
        .collect();
    let images = manifest
        .services
        .iter()
        .map(|(name, s)| (format!("service {name}"), name.as_str(), &s.image))
        .chain(
            manifest
                .capsules
                .iter()
                .map(|(name, c)| (format!("capsule {name}"), name.as_str(), &c.image)),
        );
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for (user, name, image) in images {
        let recipe = manifest
            .services
            .get(name)
            .filter(|s| &s.image == image)
            .and_then(|s| s.catalog.as_ref())
            .and_then(|catalogued| {
                paracloud_manifest::catalog::entry_of(catalogued.kind).image(&catalogued.version)
            });
        let found = match (image, recipe) {
            (Image::Stored { reference, .. }, Some(recipe)) => {
                let store = engine.images.store().clone();
                let wanted = reference.clone();
                match tokio::task::spawn_blocking(move || store.lookup(&wanted)).await {
                    Ok(Ok(digest)) => Ok((reference.clone(), format!("in the store ({digest})"))),
                    _ => crate::images::catalog_sources(&recipe).map(|_| {
                        (
                            reference.clone(),
                            format!("would be built from this machine's {}", recipe.package),
                        )
                    }),
                }
            }
            (Image::Stored { reference, .. }, None) => {
                let store = engine.images.store().clone();
                let wanted = reference.clone();
                match tokio::task::spawn_blocking(move || store.lookup(&wanted)).await {
                    Ok(Ok(digest)) => Ok((reference.clone(), format!("in the store ({digest})"))),
                    _ => match reference.parse::<paracloud_image::Reference>() {
                        Err(e) => Err(format!("image {reference}: {e}; {}", e.hint())),
                        Ok(parsed) => {
                            match registry::find(engine.images.store(), &parsed, &registries, &auths)
                                .await
                            {
                                Ok((source, _)) => Ok((
                                    reference.clone(),
                                    format!("would be pulled from {source}"),
                                )),
                                Err(e) => Err(format!(
                                    "image {reference} is not in the store and cannot be pulled: {e}"
                                )),
                            }
                        }
                    },
                }
            }
            (
                Image::Build {
                    context,
                    dockerfile,
                    target,
                    args,
                    ..
                },
                _,
            ) => {
                let build = paracloud_api::BuildRequest {
                    context: context.clone(),
                    file: dockerfile.clone(),
                    tag: format!("{}-{}:latest", manifest.app, name.replace('@', "-")),
                    build_args: args.clone(),
                    target: target.clone(),
                    ..Default::default()
                };
                crate::build::check(&build)
                    .map(|(file, steps)| {
                        (
                            context.display().to_string(),
                            format!("would be built from {} ({steps} steps)", file.display()),
                        )
                    })
                    .map_err(|e| e.message)
            }
            (Image::Layout { path, .. }, _) => Ok((
                path.display().to_string(),
                "would be imported from its OCI layout".to_owned(),
            )),
            (Image::Host { .. } | Image::Dir { .. }, _) => continue,
        };
        match found {
            Ok((image, status)) => checked.push(paracloud_api::ImageCheck {
                user,
                image,
                status,
            }),
            Err(e) => problems.push(format!("{origin}: {user}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(unprocessable(problems.join("\n")));
    }
    check_machine(engine, &manifest, &origin)?;
    let app = manifest.app.clone();
    let command = Command::Up {
        manifest,
        source: request.source,
        origin: request.origin,
    };
    let changed = match engine.check(&peer.caller(), &command)?.outcome {
        Outcome::Deployed { changed } => changed,
        _ => Vec::new(),
    };
    Ok(Json(UpResponse {
        app,
        changed,
        checked,
    }))
}

async fn image_sources<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::SourcesRequest>, JsonRejection>,
) -> Result<Json<Vec<paracloud_api::ImageSourceView>>, ApiError> {
    let Json(r) = body?;
    let reference: paracloud_image::Reference =
        r.reference
            .parse()
            .map_err(|e: paracloud_image::ReferenceError| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("{e}; {}", e.hint()))
            })?;
    let registries = engine
        .images
        .registries()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.message))?;
    Ok(Json(
        registries
            .sources(&reference)
            .into_iter()
            .map(|s| paracloud_api::ImageSourceView {
                location: format!("{}/{}", s.host, s.repository),
                registry: s.registry,
                mirror: s.mirror,
            })
            .collect(),
    ))
}

/// What the daemon measured of its instances, for the views: each one's CPU per request, and
/// the database servers' own figures.
fn measured<D: Driver>(engine: &Engine<D>) -> crate::views::Measured {
    crate::views::Measured {
        costs: engine.measured_costs(),
        servers: engine.servers.all(now_ms()),
    }
}

async fn list_apps<D: Driver>(State(engine): Shared<D>) -> Result<Json<Vec<AppView>>, ApiError> {
    let snapshot = engine.store.load()?;
    let waiting = engine.waiting();
    let measured = measured(&engine);
    let now = now_ms();
    Ok(Json(
        snapshot
            .apps
            .iter()
            .map(|a| {
                with_host_ids(
                    &engine,
                    app_view(
                        a,
                        &snapshot,
                        engine.config.addresses,
                        now,
                        &waiting,
                        &measured,
                    ),
                )
            })
            .collect(),
    ))
}

/// The current view of one application.
fn app_answer<D: Driver>(engine: &Engine<D>, app: &str) -> Result<Json<AppView>, ApiError> {
    let snapshot = engine.store.load()?;
    let record = find_app(&snapshot, app)?;
    let addresses = engine.config.addresses;
    Ok(Json(with_host_ids(
        engine,
        app_view(
            record,
            &snapshot,
            addresses,
            now_ms(),
            &engine.waiting(),
            &measured(engine),
        ),
    )))
}

/// `view` with each service's reason to run with host ids, from the daemon's settings.
fn with_host_ids<D: Driver>(engine: &Engine<D>, mut view: AppView) -> AppView {
    for service in &mut view.services {
        service.host_ids = engine.host_ids_reason(&service.spec);
    }
    view
}

async fn get_app<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<AppView>, ApiError> {
    let UrlPath(app) = path?;
    app_answer(&engine, &app)
}

async fn down<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<DownQuery>, QueryRejection>,
) -> Result<Json<AppView>, ApiError> {
    let UrlPath(app) = path?;
    let Query(query) = query?;
    let command = Command::Down {
        app: app.clone(),
        volumes: query.volumes,
    };
    engine.submit(&peer.caller(), &command)?;
    app_answer(&engine, &app)
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
    let measured = measured(&engine);
    let views = snapshot
        .instances
        .iter()
        .filter(|i| query.app.as_ref().is_none_or(|a| &i.key.app == a))
        .filter_map(|i| {
            let app = snapshot.apps.iter().find(|a| a.name == i.key.app)?;
            Some(instance_view(
                app,
                i,
                engine.config.addresses,
                now,
                &measured,
            ))
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
    paracloud_command::find_service(record, service)?;
    let addresses = engine.config.addresses;
    service_view(
        record,
        service,
        &snapshot,
        addresses,
        now_ms(),
        &engine.waiting(),
        &measured(engine),
    )
    .map(|mut view| {
        view.host_ids = engine.host_ids_reason(&view.spec);
        view
    })
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the state of service {service} of {app} is incomplete"),
        )
    })
}

async fn describe<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let UrlPath((app, service)) = path?;
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn scale<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<ScaleRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let UrlPath((app, service)) = path?;
    let Json(request) = body?;
    let command = Command::Scale {
        app: app.clone(),
        service: service.clone(),
        replicas: Some(request.replicas),
        cpu: None,
        reason: None,
    };
    engine.submit(&peer.caller(), &command)?;
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn cpu<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<CpuRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let UrlPath((app, service)) = path?;
    let Json(request) = body?;
    let command = Command::Scale {
        app: app.clone(),
        service: service.clone(),
        replicas: None,
        cpu: Some(request.cpu),
        reason: None,
    };
    engine.submit(&peer.caller(), &command)?;
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn traffic<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<TrafficRequest>, JsonRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let UrlPath((app, service)) = path?;
    let Json(request) = body?;
    let command = Command::SetTraffic {
        app: app.clone(),
        service: service.clone(),
        weights: request.weights,
    };
    engine.submit(&peer.caller(), &command)?;
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn restart<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
) -> Result<Json<ServiceView>, ApiError> {
    let UrlPath((app, service)) = path?;
    let command = Command::Restart {
        app: app.clone(),
        service: service.clone(),
    };
    engine.submit(&peer.caller(), &command)?;
    Ok(Json(service_or_404(&engine, &app, &service)?))
}

async fn migrate<D: Driver>(
    State(engine): Shared<D>,
    peer: Peer,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Json<MigrateRequest>, JsonRejection>,
) -> Result<Json<MigrateResponse>, ApiError> {
    let UrlPath((app, instance)) = path?;
    use crate::migrate::MigrateError;
    let Json(request) = body?;
    let command = Command::Migrate {
        app,
        instance,
        via: request.via,
        cpus: request.cpus,
        revision: request.revision,
    };
    let decision = engine.submit(&peer.caller(), &command)?;
    let Outcome::Migrate { key, via, cpu } = decision.outcome else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the migration was decided without an instance to move",
        ));
    };
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

async fn restart_dataplane<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<DataplaneRestartRequest>, JsonRejection>,
) -> Result<Json<DataplaneRestartResponse>, ApiError> {
    use crate::dataplane::ReplaceError;
    let Json(request) = body?;
    let ms = request
        .drain_timeout_ms
        .unwrap_or(paracloud_api::DEFAULT_DRAIN_TIMEOUT_MS);
    if ms > paracloud_api::MAX_DRAIN_TIMEOUT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a drain timeout of {} is longer than the longest, {}: ask for less",
                humantime::format_duration(Duration::from_millis(ms)),
                humantime::format_duration(Duration::from_millis(
                    paracloud_api::MAX_DRAIN_TIMEOUT_MS
                )),
            ),
        ));
    }
    let replaced = engine
        .restart_dataplane(Duration::from_millis(ms))
        .await
        .map_err(|e| {
            let status = match e {
                ReplaceError::Start(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ReplaceError::NotReady { .. } => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(status, e.to_string())
        })?;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(Json(DataplaneRestartResponse {
        old_pid: replaced.old_pid,
        new_pid: replaced.new_pid,
        ready_ms: ms(replaced.ready),
        drain_ms: ms(replaced.drain),
        drained: replaced.drained,
    }))
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
    path: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let UrlPath(app) = path?;
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
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn events<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<EventsQuery>, QueryRejection>,
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

/// The data plane's live figures (its `GET /stats`), optionally only the listeners of one app.
async fn stats<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<AppQuery>, QueryRejection>,
) -> Result<Json<paracloud_dataplane::Snapshot>, ApiError> {
    let Query(query) = query?;
    if let Some(app) = &query.app {
        find_app(&engine.store.load()?, app)?;
    }
    let client = paracloud_api::Client::new(engine.dataplane_stats_path());
    let mut snapshot = client.call(&paracloud_dataplane::routes::GetStats).await.map_err(|e| {
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

async fn list_images<D: Driver>(
    State(engine): Shared<D>,
) -> Result<Json<Vec<ImageView>>, ApiError> {
    Ok(Json(engine.images.with(images::list).await?))
}

async fn inspect_image<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<ImageQuery>, QueryRejection>,
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
    query: Result<Query<ImageQuery>, QueryRejection>,
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
    counters: crate::counters::Counters,
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
    // A pull of `nginx` is Docker Hub's (through its mirrors); a push goes only where it says.
    if let Some(r) = target.iter().find(|r| r.registry.is_none()) {
        return Err(bad(format!(
            "{r} names no registry to push to: write HOST[:PORT]/NAME[:TAG], such as 127.0.0.1:5000/{} (or docker.io/{} for Docker Hub)",
            r.repository, r.repository
        )));
    }
    let credentials = match (request.username.clone(), request.password.clone()) {
        (Some(username), password) => Some(Credentials {
            username,
            password: password.unwrap_or_default(),
        }),
        (None, Some(_)) => return Err(bad("a password needs a --username".into())),
        (None, None) => None,
    };
    // The caller's credentials by registry (from its own Docker config), used for this
    // transfer only; --username wins for the registry the reference names.
    let mut auths: registry::Auths = request
        .auths
        .iter()
        .map(|(registry, c)| {
            (
                registry.clone(),
                Credentials {
                    username: c.username.clone(),
                    password: c.password.clone(),
                },
            )
        })
        .collect();
    if let (Some(source), Some(c)) = (&source, &credentials) {
        auths.insert(source.registry_or_hub().to_owned(), c.clone());
    }
    let registries = if push {
        Default::default()
    } else {
        engine_images
            .registries()
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.message))?
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
            (Some(source), _) => registry::pull_via(&store, &source, &registries, &auths, progress)
                .await
                .map(|d| (source.normalized().to_string(), d)),
            (None, Some(target)) => {
                registry::push(&store, &request.reference, &target, credentials, progress)
                    .await
                    .map(|d| (target.normalized().to_string(), d))
            }
            (None, None) => unreachable!("a transfer has a source or a target"),
        };
        if !push {
            counters.pull(result.is_ok());
        }
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
    Ok(json_lines(Body::from_stream(stream)))
}

async fn pull_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::TransferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    transfer_stream(engine.images.clone(), r, false, engine.counters.clone())
}

async fn push_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::TransferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(r) = body?;
    transfer_stream(engine.images.clone(), r, true, engine.counters.clone())
}

/// A build, answered with its steps and RUN output as they come, then how it ended.
async fn build_image<D: Driver>(
    State(engine): Shared<D>,
    body: Result<Json<paracloud_api::BuildRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    use paracloud_api::BuildEvent;
    let Json(r) = body?;
    // A bad request is refused with its status; a build that fails says so in the stream.
    let prepared = crate::build::prepare(r)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
    tokio::spawn(async move {
        let last = match crate::build::run(&engine, prepared, Some(tx.clone())).await {
            Ok(build) => BuildEvent::Finished { build },
            Err(e) => BuildEvent::Failed { error: e.message },
        };
        let _ = tx.send(last);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx))
    });
    Ok(json_lines(Body::from_stream(stream)))
}

/// The catalogue, with what this machine lacks to run each service of it.
async fn list_catalog() -> Result<Json<Vec<paracloud_api::CatalogView>>, ApiError> {
    use paracloud_api::{CatalogKeyView, CatalogView};
    let pairs = |pairs: &[(&str, &str)]| -> Vec<CatalogKeyView> {
        pairs
            .iter()
            .map(|(name, meaning)| CatalogKeyView {
                name: (*name).to_owned(),
                meaning: (*meaning).to_owned(),
            })
            .collect()
    };
    let views = paracloud_manifest::catalog::CATALOG
        .iter()
        .map(|entry| CatalogView {
            name: entry.name.to_owned(),
            summary: entry.summary.to_owned(),
            versions: entry.versions.iter().map(|v| (*v).to_owned()).collect(),
            keys: pairs(entry.keys),
            addresses: pairs(entry.addresses),
            package: entry.package.to_owned(),
            missing: entry
                .versions
                .first()
                .and_then(|version| entry.image(version))
                .and_then(|recipe| crate::images::catalog_sources(&recipe).err()),
        })
        .collect();
    Ok(Json(views))
}

async fn list_capsules<D: Driver>(
    State(engine): Shared<D>,
    query: Result<Query<CapsulesQuery>, QueryRejection>,
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
    caller: Peer,
    body: Result<Json<paracloud_api::CapsuleRunRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let prepared = crate::capsules::prepare(&engine, &caller.caller(), &caller.who(), &request)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::capsules::execute(engine.clone(), prepared, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx))
    });
    Ok(json_lines(Body::from_stream(stream)))
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
            .map(|(id, r)| crate::views::capsule_run_view(&engine.config.root, id, r))
            .collect(),
    ))
}

async fn capsule_run<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<i64>, PathRejection>,
) -> Result<Json<paracloud_api::CapsuleRunView>, ApiError> {
    let UrlPath(run) = path?;
    let record = engine.store.capsule_run(run)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no capsule run {run}: `paracloud capsule history` lists the runs"),
        )
    })?;
    Ok(Json(crate::views::capsule_run_view(
        &engine.config.root,
        run,
        record,
    )))
}

async fn capsule_file<D: Driver>(
    State(engine): Shared<D>,
    path: Result<UrlPath<(i64, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let UrlPath((run, instance, name)) = path?;
    let path = crate::capsules::output_file(&engine.config.root, run, &instance, &name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "run {run} left no file {name:?} on {instance} (the files of the last {} runs are kept, and those of the runs a schedule's `keep` holds)",
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
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
