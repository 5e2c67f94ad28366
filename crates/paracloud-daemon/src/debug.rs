//! `paracloud debug INSTANCE`: the debug capsule on a terminal, like `kubectl debug`.
//!
//! The client asks `GET /v1/capsules/debug?instance=web.1` with `Upgrade: paracloud-tty`. The
//! daemon checks the run as any capsule run (policy, record), opens a pseudo-terminal, attaches
//! the debug capsule with the terminal's replica as its stdin, stdout and stderr, answers 101
//! with the run's id (`x-paracloud-run`), and relays bytes between the upgraded connection and
//! the terminal until the capsule exits. The run is recorded before the connection closes, so
//! the client reads the exit code from the history. While the session is open,
//! `POST /v1/capsules/runs/{run}/resize` sets its terminal's size (the client's SIGWINCH).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use paracloud_api::{CapsuleRunRequest, DebugQuery, TerminalSize, DEBUG_UPGRADE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api_error::ApiError;
use crate::driver::Driver;
use crate::engine::Engine;
use crate::peer::Peer;

/// The capsule `paracloud debug` attaches.
pub const DEBUG_CAPSULE: &str = "debug";

pub async fn debug<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    caller: Peer,
    query: Result<Query<DebugQuery>, QueryRejection>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if upgrade != Some(DEBUG_UPGRADE) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("a debug session needs the header `Upgrade: {DEBUG_UPGRADE}`: use `paracloud debug INSTANCE`"),
        ));
    }
    let args: Vec<String> = match &q.command {
        None => Vec::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("command must be a JSON array of strings, such as [\"ps\",\"aux\"]: {e}"),
            )
        })?,
    };
    let mut selector = format!("instance={}", q.instance);
    if let Some(app) = &q.app {
        selector = format!("app={app},{selector}");
    }
    let prepared = crate::capsules::prepare(
        &engine,
        &caller.caller(),
        &caller.who(),
        &CapsuleRunRequest {
            capsule: DEBUG_CAPSULE.into(),
            selector,
            args,
            timeout_ms: None,
        },
    )?;
    let run = prepared.run;
    let size = nix::pty::Winsize {
        ws_row: q.rows.unwrap_or(24),
        ws_col: q.cols.unwrap_or(80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot open a terminal: {e}"),
        )
    })?;
    let resizer = pty.master.try_clone().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot open a terminal: {e}"),
        )
    })?;
    engine
        .terminals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run, resizer);
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(session(engine, prepared, pty.master, pty.slave, upgraded));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(DEBUG_UPGRADE));
    headers.insert("x-paracloud-run", HeaderValue::from(run));
    Ok(response)
}

/// A session's terminal, open for resizing until the session ends, however it ends.
struct OpenTerminal<D: Driver> {
    engine: Arc<Engine<D>>,
    run: i64,
}

impl<D: Driver> Drop for OpenTerminal<D> {
    fn drop(&mut self) {
        self.engine
            .terminals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.run);
    }
}

/// Relays the terminal until the capsule exits, then closes the connection.
async fn session<D: Driver>(
    engine: Arc<Engine<D>>,
    prepared: crate::capsules::Prepared,
    master: OwnedFd,
    replica: OwnedFd,
    upgraded: hyper::upgrade::OnUpgrade,
) {
    let _open = OpenTerminal {
        engine: engine.clone(),
        run: prepared.run,
    };
    let connection = match upgraded.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => {
            tracing::warn!("debug session: the connection was not upgraded: {e}");
            // Record the run as not started.
            drop((master, replica));
            return;
        }
    };
    let (mut from_client, mut to_client) = tokio::io::split(connection);
    let master = std::fs::File::from(master);
    let master_writer = match master.try_clone() {
        Ok(m) => tokio::fs::File::from_std(m),
        Err(e) => {
            tracing::warn!("debug session: {e}");
            return;
        }
    };
    let mut master_reader = tokio::fs::File::from_std(master);
    let capsule = tokio::spawn(crate::capsules::execute_on_terminal(
        engine, prepared, replica,
    ));
    // Terminal to client, until the capsule's side closes (EIO once no replica is open).
    let output = tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match master_reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    let _ = to_client.flush().await;
                }
            }
        }
        to_client
    });
    let input = tokio::spawn(async move {
        let mut master_writer = master_writer;
        let _ = tokio::io::copy(&mut from_client, &mut master_writer).await;
    });
    let _ = capsule.await;
    if let Ok(mut to_client) = output.await {
        let _ = to_client.shutdown().await;
    }
    input.abort();
}

/// `POST /v1/capsules/runs/{run}/resize`: the client's terminal changed size; so does the
/// session's, and the programs on it get SIGWINCH.
pub async fn resize<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    path: Result<UrlPath<i64>, PathRejection>,
    body: Result<Json<TerminalSize>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let UrlPath(run) = path?;
    let Json(size) = body?;
    if size.rows == 0 || size.cols == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a terminal of {} rows and {} columns cannot be: both must be at least 1",
                size.rows, size.cols
            ),
        ));
    }
    let terminals = engine.terminals.lock().unwrap_or_else(|e| e.into_inner());
    let terminal = terminals.get(&run).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no debug session of run {run} is open (`paracloud capsule history` lists the runs)"),
        )
    })?;
    paracloud_runtime::set_terminal_size(terminal.as_fd(), size.rows, size.cols).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot resize the terminal of run {run}: {e}"),
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}
