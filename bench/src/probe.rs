//! The readiness probe shared by every runtime: poll-connect to the HTTP port, then a GET whose
//! status line must come back 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Pause between two connection attempts.
pub const POLL: Duration = Duration::from_micros(200);
/// Longest a single connect may take. On loopback and on a local bridge a connect is answered in
/// microseconds (accepted or refused); a SYN sent to an instance whose link is not up yet is lost,
/// and TCP would resend it only after its 1 s initial timeout, so a new attempt is made instead.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(10);
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// When, counted from the start of the run, the port first accepted a connection and when the
/// first HTTP answer came back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ready {
    pub connect_us: u64,
    pub http_us: u64,
}

/// Polls `addr` until it answers `GET /` with 200, or fails after `limit` from `start`, or as soon
/// as `alive` (called between attempts) says the server is gone.
pub fn wait_http(
    addr: SocketAddr,
    start: Instant,
    limit: Duration,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<Ready> {
    let mut connect_us = None;
    let mut last_error;
    loop {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let connected = micros(start.elapsed());
                let connect_us = *connect_us.get_or_insert(connected);
                match http_get(stream) {
                    Ok(()) => {
                        return Ok(Ready {
                            connect_us,
                            http_us: micros(start.elapsed()),
                        })
                    }
                    Err(e) => last_error = format!("HTTP: {e}"),
                }
            }
            Err(e) => last_error = format!("connect: {e}"),
        }
        alive()?;
        crate::check_interrupted()?;
        if start.elapsed() > limit {
            bail!("{addr} did not answer HTTP within {limit:?} (last attempt: {last_error})");
        }
        std::thread::sleep(POLL);
    }
}

/// True when something already accepts connections on `addr` (a port the bench is about to use).
pub fn is_listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).is_ok()
}

fn http_get(mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    check_status_line(&head)
}

/// Accepts `HTTP/1.x 200 ...`.
fn check_status_line(head: &[u8]) -> Result<()> {
    let line = String::from_utf8_lossy(head);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => bail!("unexpected status line {line:?}"),
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_status_line_is_an_answer() {
        assert!(check_status_line(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n").is_ok());
        assert!(check_status_line(b"HTTP/1.0 200 OK\r\n").is_ok());
        assert!(check_status_line(b"HTTP/1.1 404 Not Found\r\n").is_err());
        assert!(check_status_line(b"").is_err());
        assert!(check_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn a_local_server_is_found_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nhi").unwrap();
        });
        let ready =
            wait_http(addr, Instant::now(), Duration::from_secs(5), &mut || Ok(())).unwrap();
        assert!(ready.connect_us <= ready.http_us);
        server.join().unwrap();
    }
}
