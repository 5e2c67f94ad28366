//! The agent's own API, on `<root>/agent.sock` (0600: root on the node alone), for the operator
//! and node administrators: the pods it found (with their latest load reports), a refresh on
//! demand, and capsule runs.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/pods` | | [`PodView`]s |
//! | `POST /v1/refresh` | | [`PodView`]s, after a look at the node now |
//! | `POST /v1/capsules` | [`CapsuleRequest`] | `CapsuleRunEvent`s as JSON lines |
//! | `POST /v1/events` | [`EventRequest`] | [`EventAnswer`]: the pod's answer to `migrate` or `restore` |
//!
//! Errors are `{"error": "..."}`: 400 for a body that is not valid, 404 for an unknown pod,
//! container or capsule, 409 for an event the pod refused or does not follow, 503 for what the
//! node cannot do now, 504 for an event not answered by its deadline.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paracloud_paci::ErrorBody;
use serde::Serialize;
use tokio::net::UnixListener;

use crate::agent::{Agent, Load};
use crate::capsules::{self, CapsuleError, CapsuleRequest};
use crate::handover::{self, EventAnswer, EventRequest, HandoverError};
use crate::oci::Pod;
use crate::refresh::refresh;

/// A pod as the API shows it.
#[derive(Debug, Serialize)]
pub struct PodView {
    #[serde(flatten)]
    pub pod: Pod,
    /// The latest load report through its PaCI socket.
    pub load: Option<Load>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<CapsuleError> for ApiError {
    fn from(e: CapsuleError) -> Self {
        let status = match e {
            CapsuleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CapsuleError::NotFound(_) => StatusCode::NOT_FOUND,
            CapsuleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CapsuleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<HandoverError> for ApiError {
    fn from(e: HandoverError) -> Self {
        let status = match e {
            HandoverError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandoverError::NotFound(_) => StatusCode::NOT_FOUND,
            HandoverError::Refused(_) => StatusCode::CONFLICT,
            HandoverError::NoAnswer(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, e.to_string())
    }
}

/// The caller's user (`SO_PEERCRED`), for the audit log.
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        Caller {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// Serves the API on `listener` until the task ends.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/pods", get(pods))
        .route("/v1/refresh", post(refreshed))
        .route("/v1/capsules", post(capsule))
        .route("/v1/events", post(event))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route of the node agent: GET /v1/pods, POST /v1/refresh, POST /v1/capsules, POST /v1/events"
                    .into(),
            )
        })
        .with_state(agent);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Caller>(),
    )
    .await
}

fn views(agent: &Agent, pods: impl IntoIterator<Item = Pod>) -> Vec<PodView> {
    pods.into_iter()
        .map(|pod| PodView {
            load: agent.load(&pod.pod.uid),
            pod,
        })
        .collect()
}

async fn pods(State(agent): State<Arc<Agent>>) -> Json<Vec<PodView>> {
    Json(views(&agent, agent.pods().into_values()))
}

async fn refreshed(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<PodView>>, ApiError> {
    let pods = refresh(&agent)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(views(&agent, pods.into_values())))
}

async fn capsule(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Json<CapsuleRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the request body is not valid: {} (expected {{\"pod\": UID or NAMESPACE/NAME, \"container\": NAME, \"capsule\": NAME, \"args\": [...]}})",
                e.body_text()
            ),
        )
    })?;
    let events = capsules::run(&agent, caller.uid, request).await?;
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), events))
    });
    Ok((
        [(header::CONTENT_TYPE, paracloud_api::JSON_LINES)],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn event(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Json<EventRequest>, JsonRejection>,
) -> Result<Json<EventAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the request body is not valid: {} (expected {{\"pod\": UID or NAMESPACE/NAME, \"event\": a migrate or restore event, \"wait_listening_ms\": N}})",
                e.body_text()
            ),
        )
    })?;
    Ok(Json(handover::send(&agent, caller.uid, request).await?))
}
