//! Health checks: exec, TCP and HTTP probes, and the loop that turns results into a health state.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use paracloud_manifest::{HealthCheck, Probe};
use paracloud_reconcile::{Health, Millis};
use paracloud_runtime::Process;
use tokio::net::TcpStream;

use crate::clock::now_ms;
use crate::driver::Driver;

/// Runs one probe; true when it passes within the timeout.
pub async fn probe<D: Driver>(
    driver: &D,
    process: &Process,
    address: Ipv4Addr,
    probe: &Probe,
    timeout: Duration,
) -> bool {
    let attempt = async {
        match probe {
            Probe::Tcp { port } => TcpStream::connect((address, *port)).await.is_ok(),
            Probe::Http { port, path } => http_ok(address, *port, path).await,
            Probe::Exec { command } => {
                matches!(driver.exec(process, command, timeout).await, Ok(0))
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_ok(address: Ipv4Addr, port: u16, path: &str) -> bool {
    let Ok(stream) = TcpStream::connect((address, port)).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let Ok(request) = hyper::Request::get(path)
        .header("host", format!("{address}:{port}"))
        .header("user-agent", "paracloud-health")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => response.status().is_success() || response.status().is_redirection(),
        Err(_) => false,
    }
}

/// Probes until aborted. The first probes come quickly (so that a fresh instance becomes ready in
/// milliseconds, not after a whole interval), then once per interval. Failures of the quick first
/// probes and inside the start period do not count; `retries` failures in a row make the instance unhealthy; one success makes
/// it healthy again.
pub async fn run<D: Driver>(
    check: HealthCheck,
    address: Ipv4Addr,
    process: Arc<Process>,
    started: Millis,
    driver: &D,
    report: impl Fn(Health),
) {
    let mut current = Health::Unknown;
    let mut failures = 0u32;
    let mut delay = Duration::from_millis(20);
    loop {
        tokio::time::sleep(delay).await;
        let ok = probe(driver, &process, address, &check.probe, check.timeout).await;
        let next = if ok {
            failures = 0;
            Health::Healthy
        } else {
            // The quick first probes only look for the first success; failures count at the
            // regular interval, outside the start period.
            let in_start_period =
                now_ms().saturating_sub(started) < check.start_period.as_millis() as u64;
            if !in_start_period && delay >= check.interval {
                failures += 1;
            }
            if failures >= check.retries.max(1) {
                Health::Unhealthy
            } else {
                current
            }
        };
        if next != current {
            current = next;
            report(current);
        }
        delay = if current == Health::Unknown {
            (delay * 2).min(check.interval)
        } else {
            check.interval
        };
    }
}
