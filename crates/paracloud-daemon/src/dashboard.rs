//! The dashboard's routes: its page and files (`paracloud-dashboard`, built into the binary),
//! an application's manifest, and its live figures as server-sent events.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paracloud_api::{Event, LiveHistory, ManifestView};
use paracloud_dashboard::Asset;
use paracloud_state::Store;
use tokio::sync::broadcast::error::RecvError;

use crate::api_error::ApiError;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::seconds::NewSecond;

/// Events a page gets when it opens, the latest.
const OPENING_EVENTS: usize = 200;

/// A comment sent on a quiet stream this often, so that proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What only the page's own files may do: scripts, styles and requests to this origin alone.
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /`: the dashboard's page.
pub async fn page(headers: HeaderMap) -> Response {
    let mut response = serve(paracloud_dashboard::page(), &headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /assets/{name}`: one file of the dashboard.
pub async fn asset(
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asset = paracloud_dashboard::asset(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the dashboard has no file `{name}`: open the dashboard at `/`"),
        )
    })?;
    Ok(serve(asset, &headers))
}

/// A file with its type and entity tag; `304 Not Modified` when the browser has it already.
/// Browsers revalidate each time (`no-cache`): a new binary serves new files at once.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| paracloud_dashboard::matches(asset, v));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(asset.bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /v1/apps/{app}/manifest`: the manifest an application was deployed from.
pub async fn manifest<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    UrlPath(app): UrlPath<String>,
) -> Result<Json<ManifestView>, ApiError> {
    let snapshot = engine.store.load()?;
    let record = paracloud_command::find_app(&snapshot, &app)?;
    let origin = Path::new(&record.origin);
    let base_dir = origin
        .is_absolute()
        .then(|| origin.parent().map(Path::to_path_buf))
        .flatten()
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(Json(ManifestView {
        app: record.name.clone(),
        source: record.source.clone(),
        origin: record.origin.clone(),
        base_dir,
    }))
}

/// `GET /v1/apps/{app}/live`: the kept seconds and latest events of an application, then each
/// new second and its new events, as server-sent events.
pub async fn live<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    UrlPath(app): UrlPath<String>,
) -> Result<Response, ApiError> {
    let snapshot = engine.store.load()?;
    let record = paracloud_command::find_app(&snapshot, &app)?;
    let slo = paracloud_manifest::scaling_config(&record.manifest).map(|c| c.slo);
    // Following before reading the history: no second falls between the two.
    let seconds = engine.seconds.subscribe();
    let events = latest_events(&engine.store, &app)?;
    let history = LiveHistory {
        app: app.clone(),
        slo_ms: slo.as_ref().map(|s| s.latency_ms),
        slo_percentile: slo.as_ref().map(|s| s.percentile),
        seconds: engine.seconds.history(&app),
        events,
    };
    let follow = Follow {
        after: history.events.last().map_or(0, |e| e.id),
        first: Some(frame("history", &history)),
        engine,
        app,
        seconds,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let bytes = follow.next().await?;
        Some((Ok::<_, Infallible>(bytes), follow))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// One page following an application.
struct Follow<D: Driver> {
    engine: Arc<Engine<D>>,
    app: String,
    seconds: tokio::sync::broadcast::Receiver<NewSecond>,
    /// The last event the page has.
    after: i64,
    first: Option<Bytes>,
}

impl<D: Driver> Follow<D> {
    /// The next bytes of the stream; `None` once the daemon stops.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let mut out = match tokio::time::timeout(KEEP_ALIVE, self.seconds.recv()).await {
                Ok(Ok(second)) if second.0 == self.app => frame("second", &second.1).to_vec(),
                Ok(Ok(_)) => continue,
                // A page too slow for the seconds skips some; the chart shows the gap.
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => b": still here\n\n".to_vec(),
            };
            // The events of the second (decisions, scaling, exits), once a second at most.
            match self.engine.store.events(Some(&self.app), self.after, 100) {
                Ok(events) if !events.is_empty() => {
                    self.after = events.last().map_or(self.after, |e| e.id);
                    let events: Vec<Event> = events.into_iter().map(wire_event).collect();
                    out.extend_from_slice(&frame("events", &events));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("the dashboard cannot read the events: {e}"),
            }
            return Some(Bytes::from(out));
        }
    }
}

/// One server-sent event: its name and its JSON on one `data:` line.
fn frame<T: serde::Serialize>(name: &str, value: &T) -> Bytes {
    // Our answers always serialise; JSON has no raw newline to split the line.
    let json = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

fn wire_event(e: paracloud_state::Event) -> Event {
    Event {
        id: e.id,
        at: e.at,
        app: e.app,
        subject: e.subject,
        message: e.message,
    }
}

/// The latest events of an application, oldest first: the log is read forward, page by page.
fn latest_events(store: &Store, app: &str) -> Result<Vec<Event>, ApiError> {
    const PAGE: u32 = 1_000;
    let mut latest = std::collections::VecDeque::with_capacity(OPENING_EVENTS);
    let mut after = 0;
    loop {
        let page = store.events(Some(app), after, PAGE)?;
        let full = page.len() == PAGE as usize;
        for event in page {
            after = event.id;
            if latest.len() == OPENING_EVENTS {
                latest.pop_front();
            }
            latest.push_back(wire_event(event));
        }
        if !full {
            return Ok(latest.into());
        }
    }
}
