//! Health checks: exec, TCP and HTTP probes, and the loop that turns results into a health state.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use paracloud_manifest::{HealthCheck, Probe};
use paracloud_reconcile::{Health, Millis, ProbeFailure};
use paracloud_runtime::{ExecOutput, Process};
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::driver::Driver;

/// At most this many characters of an exec check's output go into its failure reason.
const REASON_OUTPUT_CHARS: usize = 200;

/// Runs one probe; `Err` says what failed, in words for events, `describe` and `up`.
/// An exec probe runs with `env`, the instance's configured environment; what it printed on
/// its standard output comes with the result (nothing for the other probes).
pub async fn probe<D: Driver>(
    driver: &D,
    process: &Process,
    address: Ipv4Addr,
    probe: &Probe,
    env: &[(String, String)],
    timeout: Duration,
) -> (Result<(), String>, String) {
    let attempt = async {
        match probe {
            Probe::Tcp { port } => (tcp(address, *port).await, String::new()),
            Probe::Http { port, path } => (http(address, *port, path).await, String::new()),
            Probe::Exec { command } => match driver.exec(process, command, env, timeout).await {
                Ok(output) => {
                    let result = if output.code == 0 {
                        Ok(())
                    } else {
                        Err(exec_failure(&output))
                    };
                    (result, String::from_utf8_lossy(&output.stdout).into_owned())
                }
                Err(e) => (Err(format!("exec check could not run: {e}")), String::new()),
            },
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| (Err(timed_out(probe, timeout)), String::new()))
}

fn timed_out(probe: &Probe, timeout: Duration) -> String {
    match probe {
        Probe::Tcp { port } => format!("connect to {port} timed out after {timeout:?}"),
        Probe::Http { path, .. } => format!("GET {path} timed out after {timeout:?}"),
        Probe::Exec { .. } => format!("exec check timed out after {timeout:?}"),
    }
}

async fn tcp(address: Ipv4Addr, port: u16) -> Result<(), String> {
    match TcpStream::connect((address, port)).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("connect to {port} refused"))
        }
        Err(e) => Err(format!("connect to {port} failed: {e}")),
    }
}

async fn http(address: Ipv4Addr, port: u16, path: &str) -> Result<(), String> {
    let stream = match TcpStream::connect((address, port)).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(format!("GET {path}: connection refused on {port}"));
        }
        Err(e) => return Err(format!("GET {path}: cannot connect to {port}: {e}")),
    };
    let failed = |e: hyper::Error| format!("GET {path}: {e}");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", format!("{address}:{port}"))
        .header("user-agent", "paracloud-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = sender.send_request(request).await.map_err(failed)?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {}", status.as_u16()))
    }
}

/// `exec check exited with code 3: <the last line it printed>`: on stderr if it printed
/// anything there, else on stdout, cut to [`REASON_OUTPUT_CHARS`].
fn exec_failure(output: &ExecOutput) -> String {
    let last_line = [&output.stderr, &output.stdout]
        .into_iter()
        .find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim)
                .rfind(|line| !line.is_empty())
                .map(|line| {
                    let mut cut: String = line.chars().take(REASON_OUTPUT_CHARS).collect();
                    if cut.len() < line.len() {
                        cut.push('…');
                    }
                    cut
                })
        });
    match last_line {
        Some(line) => format!("exec check exited with code {}: {line}", output.code),
        None => format!("exec check exited with code {}", output.code),
    }
}

/// Probes until aborted. The first probes come quickly (so that a fresh instance becomes ready in
/// milliseconds, not after a whole interval), then once per interval. Failures of the quick first
/// probes and inside the start period (until a first probe passes) do not count; `retries` failures in a row make the instance
/// unhealthy; one success makes it healthy again. `report` hears of each change: the new health
/// when it changes, and the failure (what failed, how many in a row) whenever it changes, `None`
/// once a probe passes. `printed` hears what each exec probe printed on its standard output,
/// when it printed something.
pub async fn run<D: Driver>(
    check: HealthCheck,
    env: Vec<(String, String)>,
    (address, process): (Ipv4Addr, Arc<Process>),
    started: Millis,
    driver: &D,
    report: impl Fn(Option<Health>, Option<&ProbeFailure>),
    printed: impl Fn(&str),
) {
    let mut current = Health::Unknown;
    let mut failure: Option<ProbeFailure> = None;
    let mut failures = 0u32;
    // The start period ends early at the first success, as Docker's does.
    let mut passed_once = false;
    let mut delay = Duration::from_millis(20);
    loop {
        tokio::time::sleep(delay).await;
        let (result, output) =
            probe(driver, &process, address, &check.probe, &env, check.timeout).await;
        if !output.is_empty() {
            printed(&output);
        }
        let (next, next_failure) = match result {
            Ok(()) => {
                failures = 0;
                passed_once = true;
                (Health::Healthy, None)
            }
            Err(reason) => {
                // The quick first probes only look for the first success; failures count at
                // the regular interval, outside the start period.
                let in_start_period = !passed_once
                    && now_ms().saturating_sub(started) < check.start_period.as_millis() as u64;
                if !in_start_period && delay >= check.interval {
                    failures += 1;
                }
                let in_a_row = failure.as_ref().map_or(0, |f| f.in_a_row) + 1;
                let next = if failures >= check.retries.max(1) {
                    Health::Unhealthy
                } else {
                    current
                };
                (next, Some(ProbeFailure { reason, in_a_row }))
            }
        };
        let changed = (next != current).then_some(next);
        if changed.is_some() || next_failure != failure {
            current = next;
            failure = next_failure;
            report(changed, failure.as_ref());
        }
        delay = if current == Health::Unknown {
            (delay * 2).min(check.interval)
        } else {
            check.interval
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn exec_output(code: i32, stdout: &str, stderr: &str) -> ExecOutput {
        ExecOutput {
            code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn an_exec_failure_names_its_code_and_last_line() {
        assert_eq!(
            exec_failure(&exec_output(3, "checking\ndb not reachable\n\n", "")),
            "exec check exited with code 3: db not reachable"
        );
        assert_eq!(
            exec_failure(&exec_output(1, "progress\n", "  connection reset  \n")),
            "exec check exited with code 1: connection reset",
            "stderr first"
        );
        assert_eq!(
            exec_failure(&exec_output(2, "", "")),
            "exec check exited with code 2"
        );
        let long = exec_failure(&exec_output(1, &"é".repeat(500), ""));
        assert!(long.ends_with('…'), "{long}");
        assert_eq!(
            long.chars().filter(|c| *c == 'é').count(),
            REASON_OUTPUT_CHARS
        );
    }

    #[tokio::test]
    async fn an_http_failure_says_what_answered_or_what_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let localhost = Ipv4Addr::LOCALHOST;
        assert_eq!(
            http(localhost, port, "/nope").await,
            Err("GET /nope answered 404".to_string())
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            http(localhost, closed_port, "/healthz").await,
            Err(format!("GET /healthz: connection refused on {closed_port}"))
        );
        assert_eq!(
            tcp(localhost, closed_port).await,
            Err(format!("connect to {closed_port} refused"))
        );
    }

    #[test]
    fn a_failure_says_how_many_in_a_row() {
        let failure = ProbeFailure {
            reason: "GET /nope answered 404".into(),
            in_a_row: 3,
        };
        assert_eq!(
            failure.to_string(),
            "GET /nope answered 404 (3 failures in a row)"
        );
    }
}
