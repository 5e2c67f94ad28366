//! PaCI on the node: one socket per pod that asks for it, at `<root>/paci/<pod uid>/paci.sock`,
//! which the pod's hostPath volume (`subPathExpr: $(POD_UID)`) mounts at /run/paracloud in that
//! pod alone. The directory (0700) and the socket (0600) belong to the user of the container
//! that asks for it, and a connection is answered only when its peer (`SO_PEERCRED`) is in one
//! of the pod's containers' cgroups: what the daemon checks for an instance on one machine.
//!
//! It speaks the protocol of `paracloud-paci`: `whoami` (the pod's identity), load reports
//! (kept per pod, on the agent's API, and written on the application's status by `loads`), peers,
//! weights and a pod's request for instances of its application's services, carried out through
//! the API server once the pod's owners prove its application (`cluster`), and the pod's event
//! stream with its answers (`paracloud_paci_events`, as the daemon serves it): the agent sends
//! `resize` when the runtime changed the pod's limits in place.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use paracloud_paci::{
    routes, Ack, AckAnswer, Addresses, ErrorBody, LoadReport, ReplicasAnswer, ReplicasRequest,
    Resources, WeightAnswer, WeightRequest, Whoami, FULL_WEIGHT, MAX_BODY, SOCKET_NAME,
};
use tokio::net::UnixListener;

use crate::agent::Agent;
use crate::oci::{Container, Pod};

/// An error answer, as PaCI gives them.
struct PaciError(StatusCode, String);

impl IntoResponse for PaciError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// The pod a socket belongs to.
#[derive(Clone)]
struct Ctx {
    agent: Arc<Agent>,
    uid: String,
}

/// Who is at the other end of a connection (`SO_PEERCRED`, taken when it connected).
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: Option<i32>,
    uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        Peer {
            pid: cred.and_then(|c| c.pid()),
            uid: cred.map(|c| c.uid()),
        }
    }
}

/// Binds the pod's socket (replacing a stale one) and serves it; the task ends when aborted.
/// The directory is made when the kubelet has not made it yet, and never replaced: the pod's
/// bind mount holds that very directory.
pub fn serve(agent: &Arc<Agent>, pod: &Pod) -> std::io::Result<tokio::task::AbortHandle> {
    let owner = pod
        .paci_container()
        .map(|c| (c.uid, c.gid))
        .unwrap_or((0, 0));
    let dir = agent.config.paci_dir(&pod.pod.uid);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1))?;
    let path = dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1))?;
    let ctx = Ctx {
        agent: agent.clone(),
        uid: pod.pod.uid.clone(),
    };
    let task = tokio::spawn(async move {
        let app = router(ctx).into_make_service_with_connect_info::<Peer>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("PaCI server stopped: {e}");
        }
    });
    Ok(task.abort_handle())
}

/// Removes a gone pod's socket and directory; its pending events end unanswered.
pub fn forget(agent: &Agent, uid: &str) {
    agent.events.forget(&uid.to_owned());
    let dir = agent.config.paci_dir(uid);
    let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
    let _ = std::fs::remove_dir(&dir);
}

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(routes::WHOAMI, get(whoami))
        .route(routes::LOAD, put(load))
        .route(routes::PEERS, get(peers))
        .route(routes::WEIGHT, put(weight))
        .route(routes::REPLICAS, put(replicas))
        .route(routes::EVENTS, get(events))
        .route(routes::ACK, post(ack))
        .fallback(|| async {
            PaciError(
                StatusCode::NOT_FOUND,
                "no such PaCI route: paths start with /v1 (whoami, peers, load, weight, services/NAME/replicas, events; see docs/paci.md)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            only_the_pod,
        ))
        .with_state(ctx)
}

/// The container of `pod` that holds process `pid` (in its cgroup or below).
fn holder<'a>(agent: &Agent, pod: &'a Pod, pid: i32) -> Option<&'a Container> {
    pod.containers.iter().find(|c| {
        c.cgroup
            .as_deref()
            .is_some_and(|cgroup| crate::cgroup::holds(&agent.config.cgroup_root, cgroup, pid))
    })
}

/// Lets through the requests of the pod's own processes alone: the socket's mode keeps other
/// users out, this keeps out root and the pod's user outside the pod. Every refusal is logged.
async fn only_the_pod(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let pod = ctx.agent.pod(&ctx.uid);
    let held = match (&pod, peer.pid) {
        (Some(pod), Some(pid)) if pid > 0 => holder(&ctx.agent, pod, pid).is_some(),
        _ => false,
    };
    if held {
        return next.run(request).await;
    }
    let pid = peer.pid.map_or("unknown".into(), |p| p.to_string());
    let uid = peer.uid.map_or("unknown".into(), |u| u.to_string());
    let name = pod
        .as_ref()
        .map(|p| format!("{}/{}", p.pod.namespace, p.pod.name))
        .unwrap_or_else(|| ctx.uid.clone());
    tracing::warn!("PaCI of pod {name}: refused pid {pid} (uid {uid}), not a process of this pod");
    PaciError(
        StatusCode::FORBIDDEN,
        format!(
            "this PaCI socket is pod {name}'s alone: pid {pid} is not one of its processes (not in its containers' cgroups)"
        ),
    )
    .into_response()
}

/// A request's JSON body, or the 400 that says what is wrong with it.
fn valid<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, PaciError> {
    body.map(|Json(value)| value).map_err(|e| {
        PaciError(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid: {}", e.body_text()),
        )
    })
}

fn gone() -> PaciError {
    PaciError(StatusCode::GONE, "this pod is no longer on the node".into())
}

async fn whoami(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Whoami>, PaciError> {
    let pod = ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    let container = peer
        .pid
        .and_then(|pid| holder(&ctx.agent, &pod, pid))
        .map(|c| c.name.clone())
        .unwrap_or_default();
    Ok(Json(identity(&pod, &container)))
}

/// What the node knows of a pod, as PaCI's answer: the Kubernetes identity in `pod`; `app` and
/// `service` from the pod's annotations (the namespace and the container's name without them);
/// `instance` is the pod's name. The cluster's addresses and resources are the operator's to
/// know, not the node's: they read as unspecified (0.0.0.0, none).
pub fn identity(pod: &Pod, container: &str) -> Whoami {
    Whoami {
        app: pod.app.clone().unwrap_or_else(|| pod.pod.namespace.clone()),
        service: pod.service.clone().unwrap_or_else(|| container.to_string()),
        instance: pod.pod.name.clone(),
        index: 0,
        revision: 0,
        resources: Resources {
            cpu: None,
            memory: None,
            pids: None,
            disk: None,
        },
        addresses: Addresses {
            instance: std::net::Ipv4Addr::UNSPECIFIED,
            service: std::net::Ipv4Addr::UNSPECIFIED,
            ports: Vec::new(),
        },
        weight: FULL_WEIGHT,
        paci: paracloud_paci::VERSION.to_string(),
        pod: Some(paracloud_paci::Pod {
            namespace: pod.pod.namespace.clone(),
            name: pod.pod.name.clone(),
            uid: pod.pod.uid.clone(),
            container: container.to_string(),
        }),
    }
}

async fn load(
    State(ctx): State<Ctx>,
    body: Result<Json<LoadReport>, JsonRejection>,
) -> Result<Json<LoadReport>, PaciError> {
    let report = valid(body)?;
    report
        .check()
        .map_err(|e| PaciError(StatusCode::BAD_REQUEST, e))?;
    ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    ctx.agent.set_load(&ctx.uid, report.clone());
    Ok(Json(report))
}

/// How often a watch of peers looks at the pods again.
const PEERS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersQuery {
    service: Option<String>,
    #[serde(default)]
    watch: bool,
}

/// The pods of a service of the pod's application (its own by default); with `watch=true`, as
/// JSON lines: one at once, then one each time they change (looked at every second).
async fn peers(
    State(ctx): State<Ctx>,
    query: Result<Query<PeersQuery>, QueryRejection>,
) -> Result<Response, PaciError> {
    let Query(query) = query.map_err(|e| PaciError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let pod = ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    let cluster = cluster(&ctx)?;
    let of = cluster
        .peers_of(&pod.pod, query.service.as_deref())
        .await
        .map_err(|r| refused(&pod, r))?;
    let first = cluster.peers(&of).await.map_err(|r| refused(&pod, r))?;
    if !query.watch {
        return Ok(Json(first).into_response());
    }
    let lines = futures::stream::unfold(
        (cluster, of, None::<paracloud_paci::Peers>, Some(first)),
        |(cluster, of, last, first)| async move {
            if let Some(first) = first {
                let line = json_line(&first);
                return Some((
                    Ok::<_, std::convert::Infallible>(line),
                    (cluster, of, Some(first), None),
                ));
            }
            loop {
                tokio::time::sleep(PEERS_EVERY).await;
                // The pods may be out of reach for a moment: the next look tells.
                let Ok(now) = cluster.peers(&of).await else {
                    continue;
                };
                if Some(&now) != last.as_ref() {
                    let line = json_line(&now);
                    return Some((Ok(line), (cluster, of, Some(now), None)));
                }
            }
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

fn json_line<T: serde::Serialize>(value: &T) -> axum::body::Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// The API server, or the answer of an agent that runs without it.
fn cluster(ctx: &Ctx) -> Result<crate::cluster::Cluster, PaciError> {
    ctx.agent.cluster.clone().ok_or_else(|| {
        PaciError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node agent runs without the API server (it found no ServiceAccount token or kubeconfig), so it cannot answer for the application: run it as `paracloud k8s install` does".into(),
        )
    })
}

/// The answer to a refused request; a pod refused as a stranger to the application is logged.
fn refused(pod: &Pod, refusal: crate::cluster::Refusal) -> PaciError {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::FORBIDDEN {
        tracing::warn!(
            "PaCI of pod {}/{}: {}",
            pod.pod.namespace,
            pod.pod.name,
            refusal.message
        );
    }
    PaciError(status, refusal.message)
}

/// A pod sets its own weight: the percent of its full share of traffic its data plane gives it.
async fn weight(
    State(ctx): State<Ctx>,
    body: Result<Json<WeightRequest>, JsonRejection>,
) -> Result<Json<WeightAnswer>, PaciError> {
    let request = valid(body)?;
    let weight = request
        .check()
        .map_err(|e| PaciError(StatusCode::BAD_REQUEST, e))?;
    let pod = ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    cluster(&ctx)?
        .set_weight(&pod.pod, request.weight)
        .await
        .map_err(|refusal| refused(&pod, refusal))?;
    Ok(Json(WeightAnswer { weight }))
}

/// A pod asks for instances of a service of its application.
async fn replicas(
    State(ctx): State<Ctx>,
    path: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<ReplicasRequest>, JsonRejection>,
) -> Result<Json<ReplicasAnswer>, PaciError> {
    let UrlPath(service) = path.map_err(|e| PaciError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let request = valid(body)?;
    let pod = ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    cluster(&ctx)?
        .ask_replicas(&pod.pod, &service, &request)
        .await
        .map(Json)
        .map_err(|refusal| refused(&pod, refusal))
}

/// The pod's event stream, as JSON lines: the events waiting for its answer, then each new one.
async fn events(State(ctx): State<Ctx>) -> Result<Response, PaciError> {
    ctx.agent.pod(&ctx.uid).ok_or_else(gone)?;
    let events = ctx.agent.events.subscribe(&ctx.uid).ok_or_else(|| {
        PaciError(
            StatusCode::CONFLICT,
            paracloud_paci_events::STREAM_OPEN.into(),
        )
    })?;
    let lines = events.map(|event| Ok::<_, std::convert::Infallible>(json_line(&event)));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

/// The pod's answer to one of its events.
async fn ack(
    State(ctx): State<Ctx>,
    path: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<Ack>, JsonRejection>,
) -> Result<Json<AckAnswer>, PaciError> {
    let UrlPath(id) = path.map_err(|e| PaciError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let id =
        paracloud_paci_events::event_id(&id).map_err(|e| PaciError(StatusCode::BAD_REQUEST, e))?;
    let ack = valid(body)?;
    ctx.agent
        .events
        .ack(&ctx.uid, id, ack)
        .map(Json)
        .map_err(|e| match e {
            paracloud_paci_events::AckError::NoEvent(_) => {
                PaciError(StatusCode::NOT_FOUND, e.to_string())
            }
            paracloud_paci_events::AckError::Invalid(message) => {
                PaciError(StatusCode::BAD_REQUEST, message)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Kind, PodRef};

    #[test]
    fn a_pods_identity_names_its_namespace_pod_and_container() {
        let pod = Pod {
            pod: PodRef {
                uid: "u".into(),
                namespace: "shop".into(),
                name: "web-7d9".into(),
            },
            app: Some("shop".into()),
            service: None,
            containers: vec![Container {
                id: "c".into(),
                kind: Kind::Container,
                name: "web".into(),
                pid: 1,
                cgroup: None,
                uid: 0,
                gid: 0,
                paci: true,
            }],
        };
        let me = identity(&pod, "web");
        assert_eq!((me.app.as_str(), me.service.as_str()), ("shop", "web"));
        assert_eq!(me.instance, "web-7d9");
        let pod = me.pod.unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.container.as_str()),
            ("shop", "web")
        );
    }
}
