//! The HTTP side: the API's paths parsed into a target and a verb, each request recorded, and
//! watches streamed as JSON lines.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::selector::Selector;
use crate::store::{verb_of, Change, Deleted, Filter, PatchType, Store, Target};
use crate::{Options, Request, Verb};

#[derive(Clone)]
pub struct App {
    pub store: Arc<Mutex<Store>>,
    pub options: Options,
}

/// The store's lock; a panic while holding it is a bug of the stand-in, and the tests see it.
fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn router(app: App) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

/// A path of the API, split.
struct Parsed {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Parsed> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let namespace_subresource = |plural: &str, tail: &[&str]| {
        group.is_empty() && tail.is_empty() && ["status", "finalize"].contains(&plural)
    };
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !namespace_subresource(plural, tail) => {
            (Some(ns.to_string()), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return None,
    };
    if tail.len() > 2 || plural.is_empty() {
        return None;
    }
    Some(Parsed {
        group: group.into(),
        version: version.into(),
        namespace,
        plural: plural.into(),
        name: tail.first().map(|s| s.to_string()),
        subresource: tail.get(1).map(|s| s.to_string()),
    })
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn selectors(query: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let labels = Selector::labels(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = Selector::fields(query.get("fieldSelector").map_or("", String::as_str))?;
    Ok((labels, fields))
}

/// The manager of a write that names none: the user agent's product, as the real server does
/// (`unknown` when there is no user agent, as kube-rs sends none).
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
}

async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    body: Bytes,
) -> Response {
    match uri.path() {
        "/version" => return Json(version(&app.options)).into_response(),
        "/healthz" | "/readyz" | "/livez" => return "ok".into_response(),
        _ => {}
    }
    if method == Method::GET {
        if let Some(document) = discovery(&app, uri.path()) {
            return document;
        }
    }
    let Some(parsed) = parse_path(uri.path()) else {
        return ApiError::no_such_resource().into_response();
    };
    let watch = flag(&query, "watch");
    let exec = parsed.group.is_empty()
        && parsed.plural == "pods"
        && parsed.subresource.as_deref() == Some("exec");
    let verb = match verb_of(method.as_str(), parsed.name.is_some(), watch) {
        // Exec is `create` on `pods/exec` whichever way it comes: POST always was, and since
        // 1.35 a WebSocket's GET needs `create` too.
        Some(Verb::Get | Verb::Create) if exec => Verb::Create,
        Some(verb) => verb,
        None => return ApiError::method_not_allowed(method.as_str()).into_response(),
    };
    lock(&app.store).record(Request {
        verb,
        group: parsed.group.clone(),
        version: parsed.version.clone(),
        resource: parsed.plural.clone(),
        subresource: parsed.subresource.clone(),
        namespace: parsed.namespace.clone(),
        name: parsed.name.clone(),
    });
    if exec {
        return match pod_exec(&app, &parsed, &method, &uri, &headers, upgrade) {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
    }
    match serve(&app, parsed, verb, &query, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// The discovery documents: `/api`, `/api/v1`, `/apis`, `/apis/GROUP`, `/apis/GROUP/VERSION`.
fn discovery(app: &App, path: &str) -> Option<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let store = lock(&app.store);
    let resources = &store.resources;
    let document = match segments.as_slice() {
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        ["apis"] => resources.group_list(),
        ["api", version] => resources.resource_list("", version, app.options.pod_resize)?,
        ["apis", group] => resources.group_list()["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == *group)
            .map(|g| {
                let mut g = g.clone();
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            })
            .unwrap_or_else(|| ApiError::no_such_resource().status()),
        ["apis", group, version] => resources
            .resource_list(group, version, app.options.pod_resize)
            .unwrap_or_else(|| ApiError::no_such_resource().status()),
        _ => return None,
    };
    if document["kind"] == "Status" {
        return Some(ApiError::no_such_resource().into_response());
    }
    Some(Json(document).into_response())
}

fn version(options: &Options) -> Value {
    let (major, minor) = if options.pod_resize { (1, 35) } else { (1, 32) };
    json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

async fn serve(
    app: &App,
    parsed: Parsed,
    verb: Verb,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let info = lock(&app.store)
        .resources
        .find(&parsed.group, &parsed.version, &parsed.plural)
        .cloned()
        .ok_or_else(ApiError::no_such_resource)?;
    if (!info.namespaced && parsed.namespace.is_some())
        || (info.namespaced && parsed.namespace.is_none() && parsed.name.is_some())
    {
        return Err(ApiError::no_such_resource());
    }
    let subresource = parsed.subresource.clone().unwrap_or_default();
    let served = match subresource.as_str() {
        "" => true,
        "status" => info.status,
        "scale" => info.scale.is_some(),
        "resize" => app.options.pod_resize && info.group.is_empty() && info.plural == "pods",
        "log" => verb == Verb::Get && info.group.is_empty() && info.plural == "pods",
        _ => false,
    };
    if !served {
        return Err(ApiError::no_such_resource());
    }
    let target = Target {
        info: info.clone(),
        namespace: parsed.namespace.clone().unwrap_or_default(),
        name: parsed.name.clone().unwrap_or_default(),
        subresource: subresource.clone(),
    };
    let manager = query.get("fieldManager").cloned();
    let fallback_manager = default_manager(headers);
    let filter = || -> Result<Filter, ApiError> {
        let (labels, fields) = selectors(query)?;
        Ok(Filter {
            group: info.group.clone(),
            version: info.version.clone(),
            plural: info.plural.clone(),
            namespace: parsed.namespace.clone(),
            labels,
            fields,
        })
    };
    let store = &app.store;
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid dry run value {other:?}: only \"All\" is supported"
            )))
        }
    };
    // A dry run writes on a copy thrown away after the answer.
    let writable = || -> WriteGuard<'_> {
        let guard = lock(store);
        if dry_run {
            WriteGuard::Copy(Box::new(guard.dry_run_copy()))
        } else {
            WriteGuard::Store(guard)
        }
    };
    let ok = |value: Value| Ok((StatusCode::OK, Json(value)).into_response());
    match verb {
        Verb::Get if subresource == "log" => pod_log(store, &target, query),
        Verb::Get => ok(lock(store).get(&target)?),
        Verb::List => {
            let filter = filter()?;
            let limit = query.get("limit").and_then(|l| l.parse().ok());
            let after = query
                .get("continue")
                .map(String::as_str)
                .filter(|c| !c.is_empty());
            ok(lock(store).list(&info, &filter, limit, after))
        }
        Verb::Watch => watch(store, filter()?, query, &info),
        Verb::Create => {
            if !subresource.is_empty() || parsed.name.is_some() {
                return Err(ApiError::method_not_allowed("create on a named path"));
            }
            let created = writable().store().create(
                &target,
                body_json(&body)?,
                manager.as_deref().unwrap_or(&fallback_manager),
            )?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        Verb::Update => ok(writable().store().update(
            &target,
            body_json(&body)?,
            manager.as_deref().unwrap_or(&fallback_manager),
        )?),
        Verb::Patch => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(content_type)?;
            let force = flag(query, "force");
            let (object, created) = writable().store().patch(
                &target,
                kind,
                &body,
                manager.as_deref(),
                force,
                &fallback_manager,
            )?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((code, Json(object)).into_response())
        }
        Verb::Delete => {
            let options = body_json(&body)?;
            match writable().store().delete(&target, &options)? {
                Deleted::Pending(object) => ok(object),
                // Pods and service accounts answer with the deleted object, the rest with a
                // Status, as their real registries do.
                Deleted::Gone(object)
                    if info.group.is_empty()
                        && ["pods", "serviceaccounts"].contains(&info.plural.as_str()) =>
                {
                    ok(object)
                }
                Deleted::Gone(object) => ok(json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": target.name,
                        "group": info.group,
                        "kind": info.plural,
                        "uid": object["metadata"]["uid"],
                    },
                })),
            }
        }
        Verb::DeleteCollection => {
            let filter = filter()?;
            ok(writable().store().delete_collection(&info, &filter))
        }
    }
}

/// The store a write goes to: the real one, or a copy for a dry run.
enum WriteGuard<'a> {
    Store(std::sync::MutexGuard<'a, Store>),
    Copy(Box<Store>),
}

impl WriteGuard<'_> {
    fn store(&mut self) -> &mut Store {
        match self {
            WriteGuard::Store(guard) => guard,
            WriteGuard::Copy(copy) => copy,
        }
    }
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

struct Streaming {
    backlog: VecDeque<Bytes>,
    receiver: Option<broadcast::Receiver<Arc<Change>>>,
    filter: Filter,
    deadline: tokio::time::Instant,
}

/// A watch: the replayed or current objects first, a bookmark when asked for, then each
/// change as it comes, until `timeoutSeconds`.
fn watch(
    store: &Mutex<Store>,
    filter: Filter,
    query: &HashMap<String, String>,
    info: &crate::resources::ResourceInfo,
) -> Result<Response, ApiError> {
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let send_initial = flag(query, "sendInitialEvents");
    let from = if send_initial { None } else { from };
    let bookmarks = flag(query, "allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let mut backlog = VecDeque::new();
    let receiver = match lock(store).watch(&filter, from) {
        Ok((events, rv, receiver)) => {
            for (kind, object) in events {
                backlog.push_back(line(kind.as_str(), object));
            }
            if bookmarks {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if send_initial {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                backlog.push_back(line(
                    "BOOKMARK",
                    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta}),
                ));
            }
            Some(receiver)
        }
        // The real server answers a too old resourceVersion with 200 and one ERROR event.
        Err(expired) => {
            backlog.push_back(line("ERROR", expired.status()));
            None
        }
    };
    let state = Streaming {
        backlog,
        receiver,
        filter,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        if let Some(next) = state.backlog.pop_front() {
            return Some((Ok::<_, Infallible>(next), state));
        }
        let receiver = state.receiver.as_mut()?;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(state.deadline) => return None,
                received = receiver.recv() => match received {
                    Ok(change) => {
                        if let Some(kind) = change.seen_by(&state.filter) {
                            return Some((Ok(line(kind.as_str(), change.object.clone())), state));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a watcher: like the real server, end it with 410 so it
                        // lists again.
                        state.receiver = None;
                        let expired = ApiError::expired(0, 0).status();
                        return Some((Ok(line("ERROR", expired)), state));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A pod's log as the kubelet serves it through the API server: plain text, the last
/// `tailLines` lines; `container` may be left out only when the pod has one container.
fn pod_log(
    store: &Mutex<Store>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let store = lock(store);
    let pod = store.get(target)?;
    let container = crate::containers::container_of(
        &pod,
        &target.name,
        query.get("container").map(String::as_str),
    )?;
    let text = store
        .logs
        .get(&(target.namespace.clone(), target.name.clone(), container))
        .cloned()
        .unwrap_or_default();
    let text = match query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(n)..].join("\n");
            if !tail.is_empty() {
                tail.push('\n');
            }
            tail
        }
        None => text,
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

/// `pods/NAME/exec`: GET from WebSocket clients, POST from the SPDY ones (which the stand-in
/// does not speak, and refuses at the upgrade).
fn pod_exec(
    app: &App,
    parsed: &Parsed,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::POST {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    let (Some(namespace), Some(name)) = (&parsed.namespace, &parsed.name) else {
        return Err(ApiError::no_such_resource());
    };
    let info = lock(&app.store)
        .resources
        .find("", &parsed.version, "pods")
        .cloned()
        .ok_or_else(ApiError::no_such_resource)?;
    let target = Target {
        info,
        namespace: namespace.clone(),
        name: name.clone(),
        subresource: String::new(),
    };
    let pod = lock(&app.store).get(&target)?;
    // `command` repeats, which a map of the query would lose.
    let Query(query) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    crate::exec::serve(
        &pod,
        namespace,
        name,
        &query,
        upgrade,
        headers,
        app.options.exec.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_every_shape() {
        let p = parse_path("/apis/apps/v1/namespaces/ns/deployments/web/scale").unwrap();
        assert_eq!(
            (
                p.group.as_str(),
                p.namespace.as_deref(),
                p.plural.as_str(),
                p.name.as_deref(),
                p.subresource.as_deref()
            ),
            (
                "apps",
                Some("ns"),
                "deployments",
                Some("web"),
                Some("scale")
            )
        );
        let p = parse_path("/api/v1/namespaces/ns").unwrap();
        assert_eq!(
            (p.plural.as_str(), p.name.as_deref(), p.namespace),
            ("namespaces", Some("ns"), None)
        );
        let p = parse_path("/api/v1/namespaces/ns/status").unwrap();
        assert_eq!(
            (p.plural.as_str(), p.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let p = parse_path("/api/v1/pods").unwrap();
        assert_eq!(
            (p.plural.as_str(), p.name, p.namespace),
            ("pods", None, None)
        );
        let p = parse_path("/apis/paracloud.dev/v1alpha1/namespaces/a/paracloudapps").unwrap();
        assert_eq!(
            (p.group.as_str(), p.version.as_str()),
            ("paracloud.dev", "v1alpha1")
        );
        assert!(parse_path("/apis/x/v1/namespaces/a/b/c/d/e").is_none());
        assert!(parse_path("/metrics").is_none());
    }
}
