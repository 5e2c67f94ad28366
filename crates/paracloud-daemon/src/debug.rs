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
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use paracloud_api::{CapsuleRunRequest, DebugQuery, TerminalQuery, TerminalSize, DEBUG_UPGRADE};
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
    let (prepared, master, replica) = open(&engine, &caller, &q)?;
    let run = prepared.run;
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => {
                session(engine, prepared, master, replica, TokioIo::new(upgraded)).await
            }
            Err(e) => {
                tracing::warn!("debug session: the connection was not upgraded: {e}");
                forget_terminal(&engine, run);
            }
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(DEBUG_UPGRADE));
    headers.insert("x-paracloud-run", HeaderValue::from(run));
    Ok(response)
}

/// `GET /v1/capsules/debug/terminal`: the same session as a WebSocket, for the dashboard's
/// terminal. The first message (text) is `{"run": ID}`; then binary messages carry the
/// terminal's bytes both ways.
pub async fn terminal<D: Driver>(
    State(engine): State<Arc<Engine<D>>>,
    caller: Peer,
    query: Result<Query<TerminalQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let q = DebugQuery {
        instance: q.instance,
        app: q.app,
        command: None,
        rows: q.rows,
        cols: q.cols,
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the debug terminal is a WebSocket (use it from the dashboard, or `paracloud debug INSTANCE`): {e}"),
        )
    })?;
    let (prepared, master, replica) = open(&engine, &caller, &q)?;
    let run = prepared.run;
    let failed = engine.clone();
    Ok(upgrade
        .on_failed_upgrade(move |e| {
            tracing::warn!("debug terminal: the connection was not upgraded: {e}");
            forget_terminal(&failed, run);
        })
        .on_upgrade(move |socket| async move {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let pump = tokio::spawn(websocket_pump(socket, theirs, run));
            session(engine, prepared, master, replica, ours).await;
            let _ = pump.await;
        }))
}

/// Carries bytes between a WebSocket and one end of a pipe, until either side ends.
async fn websocket_pump(socket: WebSocket, pipe: tokio::io::DuplexStream, run: i64) {
    use futures::{SinkExt, StreamExt};
    let (mut sink, mut stream) = socket.split();
    let (mut from_session, mut to_session) = tokio::io::split(pipe);
    if sink
        .send(Message::Text(format!("{{\"run\":{run}}}").into()))
        .await
        .is_err()
    {
        return;
    }
    let down = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from_session.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let bytes = axum::body::Bytes::copy_from_slice(&buffer[..n]);
                    if sink.send(Message::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    let up = async move {
        while let Some(Ok(message)) = stream.next().await {
            let written = match message {
                Message::Binary(bytes) => to_session.write_all(&bytes).await,
                Message::Text(text) => to_session.write_all(text.as_bytes()).await,
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if written.is_err() {
                break;
            }
        }
    };
    // The session's end closes the socket; the browser leaving ends the input.
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

fn forget_terminal<D: Driver>(engine: &Engine<D>, run: i64) {
    engine
        .terminals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&run);
}

/// Checks and records a debug run as any capsule run, and opens its pseudo-terminal (master,
/// replica), kept for resizing under the run's id.
fn open<D: Driver>(
    engine: &Arc<Engine<D>>,
    caller: &Peer,
    q: &DebugQuery,
) -> Result<(crate::capsules::Prepared, OwnedFd, OwnedFd), ApiError> {
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
        engine,
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
    Ok((prepared, pty.master, pty.slave))
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
async fn session<D: Driver, C>(
    engine: Arc<Engine<D>>,
    prepared: crate::capsules::Prepared,
    master: OwnedFd,
    replica: OwnedFd,
    connection: C,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let _open = OpenTerminal {
        engine: engine.clone(),
        run: prepared.run,
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
