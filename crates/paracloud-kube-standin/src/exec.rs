//! `pods/NAME/exec`: the request checked as the API server checks it, then the process a test's
//! [`ExecHandler`] gives run behind the remote-command channel protocol over a WebSocket.
//!
//! The protocol (`v5.channel.k8s.io`, or `v4.channel.k8s.io` for older clients) carries binary
//! frames whose first byte is the channel: 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`,
//! 4 terminal resizes; with v5 a client frame `[255, channel]` closes that channel. Output is
//! sent as the process writes it, and the `Status` only once both its outputs ended, since a
//! client stops reading at the `Status`.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// A command to run in a pod's container, for the test's [`ExecHandler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    /// The container asked for, or the pod's only one.
    pub container: String,
    /// The argv, never empty.
    pub command: Vec<String>,
}

/// Plays the kubelet and the container runtime: the local process that runs an exec, or why
/// it cannot start (which the client reads as a failure on the status channel). The stand-in
/// sets the process's stdin, stdout and stderr.
pub type ExecHandler =
    Arc<dyn Fn(&ExecRequest) -> Result<std::process::Command, String> + Send + Sync>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The channel protocols served, in the order of preference.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// How long a finished exec waits for the client to answer its close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// An exec's query, as `PodExecOptions` carries it; an absent flag is false.
#[derive(Debug, Default, PartialEq, Eq)]
struct ExecOptions {
    command: Vec<String>,
    container: Option<String>,
    streams: Streams,
}

/// Which of the process's streams the client attached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    /// No terminal is allocated: stderr then goes to stdout, as behind a real terminal, and
    /// resizes are ignored.
    tty: bool,
}

impl ExecOptions {
    /// `command` repeats, one argv element each.
    fn parse(query: &[(String, String)]) -> Self {
        let mut options = ExecOptions::default();
        for (key, value) in query {
            match key.as_str() {
                "command" => options.command.push(value.clone()),
                "container" if !value.is_empty() => options.container = Some(value.clone()),
                "stdin" => options.streams.stdin = truth(value),
                "stdout" => options.streams.stdout = truth(value),
                "stderr" => options.streams.stderr = truth(value),
                "tty" => options.streams.tty = truth(value),
                _ => {}
            }
        }
        options
    }
}

/// A boolean query parameter, read as Go's `strconv.ParseBool` reads it.
fn truth(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// A frame from the client, by what it asks of the process.
#[derive(Debug, PartialEq, Eq)]
enum ClientFrame {
    Stdin(Bytes),
    CloseStdin,
    /// A terminal's new size.
    Resize,
    /// An empty frame, a close of another channel, a channel the client does not write.
    Ignored,
}

impl ClientFrame {
    fn parse(frame: &Bytes, protocol: &str) -> Self {
        match frame.first() {
            Some(&STDIN) if frame.len() > 1 => ClientFrame::Stdin(frame.slice(1..)),
            Some(&CLOSE) if protocol == PROTOCOLS[0] && frame.get(1) == Some(&STDIN) => {
                ClientFrame::CloseStdin
            }
            Some(&RESIZE) => ClientFrame::Resize,
            _ => ClientFrame::Ignored,
        }
    }
}

/// Serves an exec into `pod` (the stored object, found by the caller): refused as the real
/// server refuses it, else upgraded to a WebSocket on which the handler's process runs.
pub(crate) fn serve(
    pod: &Value,
    namespace: &str,
    name: &str,
    query: &[(String, String)],
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: &HeaderMap,
    handler: Option<&ExecHandler>,
) -> Result<Response, ApiError> {
    let options = ExecOptions::parse(query);
    let container = crate::containers::container_of(pod, name, options.container.as_deref())?;
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return Err(ApiError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    if options.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let streams = options.streams;
    if !(streams.stdin || streams.stdout || streams.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        // The real server's answer to a request that asks for no upgrade at all.
        Err(_) if !headers.contains_key(header::UPGRADE) => {
            return Err(ApiError::bad_request("Upgrade request required"))
        }
        Err(rejection) => {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: {}; the stand-in serves exec over a WebSocket \
                 (GET with {} or {}), not SPDY",
                rejection.body_text(),
                PROTOCOLS[0],
                PROTOCOLS[1]
            )))
        }
    };
    let offered: Vec<String> = upgrade
        .requested_protocols()
        .filter_map(|p| p.to_str().ok().map(str::to_owned))
        .collect();
    let upgrade = upgrade.protocols(PROTOCOLS);
    let Some(protocol) = upgrade.selected_protocol().and_then(|p| {
        PROTOCOLS
            .into_iter()
            .find(|known| p.as_bytes() == known.as_bytes())
    }) else {
        // The kubelet's WebSocket handshake refuses with 403 and no body; a Status says why.
        return Err(ApiError::forbidden(format!(
            "requested protocol(s) are not supported: {offered:?}; supports {PROTOCOLS:?}"
        )));
    };
    let Some(handler) = handler.cloned() else {
        return Err(ApiError::backend_unreachable(
            "dial tcp: connect: connection refused (the stand-in has no kubelet: a test plays \
             one with Options::exec)",
        ));
    };
    let request = ExecRequest {
        namespace: namespace.to_owned(),
        pod: name.to_owned(),
        container,
        command: options.command,
    };
    Ok(upgrade.on_upgrade(move |socket| session(socket, protocol, handler, request, streams)))
}

/// One exec on its upgraded connection: the process run, its `Status` sent, the socket closed.
async fn session(
    mut socket: WebSocket,
    protocol: &'static str,
    handler: ExecHandler,
    request: ExecRequest,
    streams: Streams,
) {
    let status = match start(&handler, &request, streams) {
        Ok(child) => match run(&mut socket, protocol, child, streams.tty).await {
            Some(status) => status,
            None => return,
        },
        Err(why) => cannot_run(&why),
    };
    let mut frame = vec![STATUS];
    frame.extend_from_slice(status.to_string().as_bytes());
    if socket.send(Message::Binary(frame.into())).await.is_err() {
        return;
    }
    let close = CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_ok() {
        // Read on until the client answers the close (or goes), for a clean closing handshake.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// The handler's process, started with the streams the client attached (the others discarded);
/// killed if the exec ends before it does.
fn start(handler: &ExecHandler, request: &ExecRequest, streams: Streams) -> Result<Child, String> {
    let piped_if = |attached: bool| {
        if attached {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut command = tokio::process::Command::from(handler(request)?);
    command
        .stdin(piped_if(streams.stdin))
        .stdout(piped_if(streams.stdout))
        .stderr(piped_if(streams.stderr || (streams.tty && streams.stdout)))
        .kill_on_drop(true);
    command.spawn().map_err(|e| {
        format!(
            "cannot start {:?}: {e}",
            command.as_std().get_program().to_string_lossy()
        )
    })
}

/// Relays the process's output to the client and the client's input to the process until the
/// process exited and its output ended; the `Status` to send then, or `None` when the client
/// went first (and the process is killed).
async fn run(
    socket: &mut WebSocket,
    protocol: &'static str,
    mut child: Child,
    tty: bool,
) -> Option<Value> {
    let (frames_to, mut frames) = mpsc::channel(16);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(relay(stdout, STDOUT, frames_to.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        let channel = if tty { STDOUT } else { STDERR };
        tokio::spawn(relay(stderr, channel, frames_to.clone()));
    }
    drop(frames_to);
    let mut stdin = child.stdin.take().map(feed);
    let mut output_open = true;
    let mut exit = None;
    let waited = loop {
        if !output_open {
            if let Some(waited) = exit.take() {
                break waited;
            }
        }
        tokio::select! {
            frame = frames.recv(), if output_open => match frame {
                Some(frame) => socket.send(Message::Binary(frame)).await.ok()?,
                None => output_open = false,
            },
            waited = child.wait(), if exit.is_none() => exit = Some(waited),
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(frame))) => match ClientFrame::parse(&frame, protocol) {
                    ClientFrame::Stdin(data) => {
                        if let Some(stdin) = &stdin {
                            // The process may have closed its stdin: what it did not read is lost,
                            // as in a container.
                            let _ = stdin.send(data);
                        }
                    }
                    ClientFrame::CloseStdin => stdin = None,
                    // No terminal is allocated, so there is none to resize.
                    ClientFrame::Resize | ClientFrame::Ignored => {}
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            },
        }
    };
    Some(match waited {
        Ok(status) => exit_status(exit_code(status)),
        Err(e) => cannot_run(&format!("cannot wait for the process: {e}")),
    })
}

/// Sends what `from` gives as frames of `channel`, as it comes.
async fn relay(mut from: impl AsyncRead + Unpin, channel: u8, to: mpsc::Sender<Bytes>) {
    let mut buffer = vec![0; 32 * 1024];
    while let Ok(read @ 1..) = from.read(&mut buffer).await {
        let mut frame = Vec::with_capacity(read + 1);
        frame.push(channel);
        frame.extend_from_slice(&buffer[..read]);
        if to.send(frame.into()).await.is_err() {
            return;
        }
    }
}

/// A writer of the process's stdin that never holds up the relay of its output; dropping the
/// sender closes the process's stdin once what was sent is written.
fn feed(mut stdin: ChildStdin) -> mpsc::UnboundedSender<Bytes> {
    let (sender, mut received) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(data) = received.recv().await {
            if stdin.write_all(&data).await.is_err() {
                return;
            }
        }
    });
    sender
}

/// A process killed by a signal reports 128 + the signal, as container runtimes do.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

/// The `Status` the kubelet sends on the status channel when the command exited.
fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The `Status` the kubelet sends when the command could not run: an internal error.
fn cannot_run(why: &str) -> Value {
    let why = format!("error executing command in container: {why}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {why}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": why}]},
        "code": 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_command_repeats_and_absent_flags_are_false() {
        let options = ExecOptions::parse(&pairs(&[
            ("stdout", "true"),
            ("command", "sh"),
            ("container", "c"),
            ("command", "-c"),
            ("command", "echo a b"),
            ("stdin", "1"),
        ]));
        assert_eq!(
            options,
            ExecOptions {
                command: vec!["sh".into(), "-c".into(), "echo a b".into()],
                container: Some("c".into()),
                streams: Streams {
                    stdin: true,
                    stdout: true,
                    stderr: false,
                    tty: false
                },
            }
        );
        assert_eq!(
            ExecOptions::parse(&pairs(&[("container", "")])).container,
            None
        );
    }

    #[test]
    fn only_v5_closes_stdin() {
        let frame = |bytes: &'static [u8]| Bytes::from_static(bytes);
        let (v5, v4) = (PROTOCOLS[0], PROTOCOLS[1]);
        assert_eq!(
            ClientFrame::parse(&frame(b"\x00hi"), v4),
            ClientFrame::Stdin(frame(b"hi"))
        );
        assert_eq!(
            ClientFrame::parse(&frame(b"\xff\x00"), v5),
            ClientFrame::CloseStdin
        );
        assert_eq!(
            ClientFrame::parse(&frame(b"\xff\x00"), v4),
            ClientFrame::Ignored
        );
        assert_eq!(
            ClientFrame::parse(&frame(b"\x04{\"Width\":80,\"Height\":24}"), v5),
            ClientFrame::Resize
        );
        for ignored in [&b"\x00"[..], b"", b"\xff\x01", b"\x01out"] {
            assert_eq!(
                ClientFrame::parse(&Bytes::copy_from_slice(ignored), v5),
                ClientFrame::Ignored
            );
        }
    }

    #[test]
    fn exit_statuses_read_as_the_kubelet_writes_them() {
        assert_eq!(
            exit_status(0),
            serde_json::from_str::<Value>(r#"{"metadata":{},"status":"Success"}"#).unwrap()
        );
        let failure = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(
            exit_status(3),
            serde_json::from_str::<Value>(failure).unwrap()
        );
        // The client reads them as a metav1 Status.
        for status in [exit_status(0), exit_status(3), cannot_run("no such file")] {
            let read: Status = serde_json::from_value(status).unwrap();
            assert!(read.status.is_some());
        }
    }
}
