//! PaCI: one Unix socket per instance, served by the daemon, through which the instance learns
//! its environment and takes part in load balancing, scaling and migration.
//!
//! The socket lives in `<root>/paci/<instance id>/paci.sock`; that directory is mounted read-only
//! at `/run/paracloud` inside the instance (and only that instance), so the socket a request comes
//! through says which instance speaks: there is no name to forge. Events the platform sends an
//! instance wait in its [`Hub`] until answered or until their deadline, and reach every open
//! event stream of the instance.

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use paracloud_paci::{
    routes, Ack, AckAnswer, Addresses, ErrorBody, LoadReport, Peer, Peers, ReplicasAnswer,
    ReplicasRequest, Resources, WeightAnswer, WeightRequest, Whoami, FULL_WEIGHT, MAX_BODY,
    SOCKET_NAME,
};
use paracloud_reconcile::InstanceKey;
use paracloud_state::{AppRecord, Snapshot};
use serde::Deserialize;
use tokio::net::UnixListener;

use paracloud_command::{Caller, Command, Outcome};

use crate::clock::now_ms;
use crate::commands::{status_of, CommandError};
use crate::driver::Driver;
use crate::engine::Engine;
use crate::paci_hub::{socket_dir, AckError};

/// An error answer of the PaCI.
pub struct PaciError {
    status: StatusCode,
    message: String,
}

impl PaciError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for PaciError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<JsonRejection> for PaciError {
    fn from(e: JsonRejection) -> Self {
        PaciError::bad(format!("the request body is not valid: {}", e.body_text()))
    }
}

impl From<QueryRejection> for PaciError {
    fn from(e: QueryRejection) -> Self {
        PaciError::bad(format!("the query string is not valid: {}", e.body_text()))
    }
}

impl From<PathRejection> for PaciError {
    fn from(e: PathRejection) -> Self {
        PaciError::bad(format!("the path is not valid: {}", e.body_text()))
    }
}

impl From<CommandError> for PaciError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Refused(refusal) => PaciError::new(status_of(&refusal), refusal.message),
            CommandError::State(e) => e.into(),
        }
    }
}

impl From<paracloud_state::Error> for PaciError {
    fn from(e: paracloud_state::Error) -> Self {
        PaciError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// The instance a socket belongs to, and the daemon behind it.
struct Ctx<D: Driver> {
    engine: Arc<Engine<D>>,
    key: InstanceKey,
}

impl<D: Driver> Clone for Ctx<D> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            key: self.key.clone(),
        }
    }
}

/// Binds the instance's socket (replacing a stale one) and serves it until [`Hub::forget`].
impl<D: Driver> Engine<D> {
    pub(crate) fn serve_paci(self: &Arc<Self>, key: &InstanceKey) -> std::io::Result<PathBuf> {
        serve(self, key)
    }
}

fn serve<D: Driver>(engine: &Arc<Engine<D>>, key: &InstanceKey) -> std::io::Result<PathBuf> {
    let dir = socket_dir(&engine.config.root, key);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(SOCKET_NAME);
    if engine.paci.serving(key) && path.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // The instance's user alone may connect: the runtime hands the directory and the socket to
    // it when the instance starts; a socket bound again for a running one (a daemon restart)
    // goes to the directory's owner, that same user.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(&dir)?;
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()))?;
    let ctx = Ctx {
        engine: engine.clone(),
        key: key.clone(),
    };
    let task = tokio::spawn(async move {
        let app = router(ctx).into_make_service_with_connect_info::<Connection>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("PaCI server stopped: {e}");
        }
    });
    engine.paci.set_server(key, task.abort_handle());
    Ok(dir)
}

fn router<D: Driver>(ctx: Ctx<D>) -> Router {
    Router::new()
        .route(routes::WHOAMI, get(whoami::<D>))
        .route(routes::PEERS, get(peers::<D>))
        .route(routes::LOAD, put(load::<D>))
        .route(routes::WEIGHT, put(weight::<D>))
        .route(routes::REPLICAS, put(replicas::<D>))
        .route(routes::EVENTS, get(events::<D>))
        .route(routes::ACK, post(ack::<D>))
        .fallback(|| async {
            PaciError::new(
                StatusCode::NOT_FOUND,
                "no such PaCI route: paths start with /v1 (whoami, peers, load, weight, services/NAME/replicas, events, events/ID/ack); see docs/paci.md",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            only_the_instance::<D>,
        ))
        .with_state(ctx)
}

/// Who is at the other end of a connection to an instance's socket (`SO_PEERCRED`, taken when
/// it connected).
#[derive(Debug, Clone, Copy)]
struct Connection {
    pid: Option<i32>,
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        Connection {
            pid: cred.and_then(|c| c.pid()),
            uid: cred.map(|c| c.uid()),
        }
    }
}

/// Lets through the requests of the instance's own processes (those in its cgroup) alone: the
/// socket's mode keeps other users out, this keeps out root and the instance's user outside it.
async fn only_the_instance<D: Driver>(
    State(ctx): Shared<D>,
    ConnectInfo(peer): ConnectInfo<Connection>,
    request: Request,
    next: Next,
) -> Response {
    let id = ctx.key.id();
    if peer
        .pid
        .is_some_and(|pid| pid > 0 && ctx.engine.driver.holds(&id, pid))
    {
        return next.run(request).await;
    }
    let pid = peer.pid.map_or("unknown".into(), |p| p.to_string());
    let uid = peer.uid.map_or("unknown".into(), |u| u.to_string());
    tracing::warn!(
        "PaCI of {}: refused pid {pid} (uid {uid}), not a process of this instance",
        ctx.key
    );
    PaciError::new(
        StatusCode::FORBIDDEN,
        format!(
            "this PaCI socket is instance {}'s alone: pid {pid} is not one of its processes (not in its cgroup)",
            ctx.key
        ),
    )
    .into_response()
}

type Shared<D> = State<Ctx<D>>;

fn app_of<'a>(snapshot: &'a Snapshot, key: &InstanceKey) -> Result<&'a AppRecord, PaciError> {
    snapshot
        .apps
        .iter()
        .find(|a| a.name == key.app)
        .ok_or_else(|| PaciError::new(StatusCode::GONE, "this instance's application is gone"))
}

async fn whoami<D: Driver>(State(ctx): Shared<D>) -> Result<Json<Whoami>, PaciError> {
    let snapshot = ctx.engine.store.load()?;
    let app = app_of(&snapshot, &ctx.key)?;
    let gone = || PaciError::new(StatusCode::GONE, "this instance is no longer in the state");
    let record = snapshot
        .instances
        .iter()
        .find(|i| i.key == ctx.key)
        .ok_or_else(gone)?;
    let spec = app
        .manifest
        .services
        .get(&ctx.key.service)
        .ok_or_else(gone)?;
    let service = app.services.get(&ctx.key.service).ok_or_else(gone)?;
    let network = ctx
        .engine
        .config
        .addresses
        .network(app.subnet_index)
        .map_err(|e| PaciError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let address = network
        .instance_address(record.slot)
        .map_err(|e| PaciError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(Whoami {
        app: ctx.key.app.clone(),
        service: ctx.key.service.clone(),
        instance: ctx.key.name(),
        index: ctx.key.index,
        revision: record.revision,
        resources: Resources {
            cpu: record.cpu(Some(service), spec),
            memory: spec.resources.memory,
            pids: spec.resources.pids,
            disk: spec.resources.disk,
        },
        addresses: Addresses {
            instance: address.addr(),
            service: crate::addressing::service_address_of(app, &network, &ctx.key.service)
                .unwrap_or_else(|| network.service_address(service.slot)),
            ports: spec.ports.iter().map(|p| p.port).collect(),
        },
        weight: record.weight.unwrap_or(FULL_WEIGHT),
        paci: paracloud_paci::VERSION.to_string(),
        pod: None,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersQuery {
    service: Option<String>,
    #[serde(default)]
    watch: bool,
}

fn peers_of<D: Driver>(ctx: &Ctx<D>, service: &str) -> Result<Peers, PaciError> {
    let snapshot = ctx.engine.store.load()?;
    let app = app_of(&snapshot, &ctx.key)?;
    if !app.manifest.services.contains_key(service) {
        let known: Vec<&str> = app.manifest.services.keys().map(String::as_str).collect();
        return Err(PaciError::new(
            StatusCode::NOT_FOUND,
            format!(
                "application {} has no service named {service} (it has: {})",
                app.name,
                known.join(", ")
            ),
        ));
    }
    let network = ctx.engine.config.addresses.network(app.subnet_index).ok();
    let peers = snapshot
        .instances
        .iter()
        .filter(|i| i.key.app == app.name && i.key.service == service)
        .filter_map(|i| {
            let address = network.as_ref()?.instance_address(i.slot).ok()?.addr();
            Some(Peer {
                instance: i.key.name(),
                index: i.key.index,
                address,
                ready: i.state.is_ready(),
                state: i.state.label().to_string(),
                revision: i.revision,
            })
        })
        .collect();
    Ok(Peers {
        service: service.to_string(),
        peers,
    })
}

fn json_line<T: serde::Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn ndjson(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn peers<D: Driver>(
    State(ctx): Shared<D>,
    query: Result<Query<PeersQuery>, QueryRejection>,
) -> Result<Response, PaciError> {
    let Query(query) = query?;
    let service = query.service.unwrap_or_else(|| ctx.key.service.clone());
    let first = peers_of(&ctx, &service)?;
    if !query.watch {
        return Ok(Json(first).into_response());
    }
    let changes = ctx.engine.paci.changes.subscribe();
    let state = (ctx, service, changes, None::<Peers>, Some(first));
    let stream = futures::stream::unfold(
        state,
        |(ctx, service, mut changes, last, first)| async move {
            if let Some(first) = first {
                let line = json_line(&first);
                return Some((
                    Ok::<Bytes, Infallible>(line),
                    (ctx, service, changes, Some(first), None),
                ));
            }
            loop {
                changes.changed().await.ok()?;
                let now = peers_of(&ctx, &service).ok()?;
                if Some(&now) != last.as_ref() {
                    let line = json_line(&now);
                    return Some((Ok(line), (ctx, service, changes, Some(now), None)));
                }
            }
        },
    );
    Ok(ndjson(Body::from_stream(stream)))
}

async fn load<D: Driver>(
    State(ctx): Shared<D>,
    body: Result<Json<LoadReport>, JsonRejection>,
) -> Result<Json<LoadReport>, PaciError> {
    let Json(report) = body?;
    report.check().map_err(PaciError::bad)?;
    ctx.engine.paci.set_load(&ctx.key, report.clone(), now_ms());
    Ok(Json(report))
}

async fn weight<D: Driver>(
    State(ctx): Shared<D>,
    body: Result<Json<WeightRequest>, JsonRejection>,
) -> Result<Json<WeightAnswer>, PaciError> {
    let Json(request) = body?;
    let command = Command::SetWeight {
        instance: ctx.key.clone(),
        weight: request.weight,
    };
    ctx.engine
        .submit(&Caller::Instance(ctx.key.clone()), &command)?;
    Ok(Json(WeightAnswer {
        weight: request.weight.unwrap_or(FULL_WEIGHT),
    }))
}

async fn replicas<D: Driver>(
    State(ctx): Shared<D>,
    path: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<ReplicasRequest>, JsonRejection>,
) -> Result<Json<ReplicasAnswer>, PaciError> {
    let UrlPath(service) = path?;
    let Json(request) = body?;
    let command = Command::Scale {
        app: ctx.key.app.clone(),
        service: service.clone(),
        replicas: Some(request.replicas),
        cpu: None,
        reason: request.reason,
    };
    let decision = ctx
        .engine
        .submit(&Caller::Instance(ctx.key.clone()), &command)?;
    let (min, max) = match decision.outcome {
        Outcome::Replicas { min, max } => (min, max),
        _ => (request.replicas, request.replicas),
    };
    Ok(Json(ReplicasAnswer {
        service,
        replicas: request.replicas,
        min,
        max,
    }))
}

async fn events<D: Driver>(State(ctx): Shared<D>) -> Response {
    let Some(events) = ctx.engine.paci.events.subscribe(&ctx.key) else {
        return PaciError::new(StatusCode::CONFLICT, paracloud_paci_events::STREAM_OPEN)
            .into_response();
    };
    let lines = events.map(|event| Ok::<Bytes, Infallible>(json_line(&event)));
    ndjson(Body::from_stream(lines))
}

async fn ack<D: Driver>(
    State(ctx): Shared<D>,
    path: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<Ack>, JsonRejection>,
) -> Result<Json<AckAnswer>, PaciError> {
    let UrlPath(id) = path?;
    let id = paracloud_paci_events::event_id(&id).map_err(PaciError::bad)?;
    let Json(ack) = body?;
    let answer = ctx
        .engine
        .paci
        .events
        .ack(&ctx.key, id, ack)
        .map_err(|e| match e {
            AckError::NoEvent(_) => PaciError::new(StatusCode::NOT_FOUND, e.to_string()),
            AckError::Invalid(message) => PaciError::bad(message),
        })?;
    Ok(Json(answer))
}
