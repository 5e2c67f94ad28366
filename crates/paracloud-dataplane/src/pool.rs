//! Idle keep-alive HTTP/1.1 connections to one backend, reused most recent first.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per backend at most; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// A connection idle this long is closed rather than reused (backends close theirs after a
/// while too; nginx after 75 s, Node.js after 5 s).
const IDLE_FOR: Duration = Duration::from_secs(30);
/// A connection idle this long is checked for a close by the backend before it is reused (one
/// non-blocking read); younger ones are reused without it, and a request that finds one closed
/// anyway is sent again on a fresh connection when that is safe (see `crate::h1`).
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// The idle connections of one backend, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    conns: Mutex<Vec<(TcpStream, Instant)>>,
}

impl Idle {
    /// The most recently used idle connection that is still usable, if any.
    pub(crate) fn take(&self, now: Instant) -> Option<TcpStream> {
        loop {
            let (stream, since) = self.conns.lock().ok()?.pop()?;
            let idle = now.saturating_duration_since(since);
            if idle >= IDLE_FOR {
                // The rest are older still.
                let stale = self.conns.lock().map(|mut c| std::mem::take(&mut *c));
                drop(stale);
                return None;
            }
            if idle < CHECK_AFTER || still_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// Returns a connection whose last response was read to its end.
    pub(crate) fn put(&self, stream: TcpStream, now: Instant) {
        if let Ok(mut conns) = self.conns.lock() {
            if conns.len() < MAX_IDLE {
                conns.push((stream, now));
            }
        }
    }
}

/// False when the backend closed the connection (or sent something unasked).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}
