//! A kv client keeping a few pooled connections, reconnecting when one breaks.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::kv::{Command, Reply};

/// At most this many idle connections are kept; more may be open while requests overlap. As many
/// as the requests a busy api has at once: with a pool of 4, every request beyond the fourth
/// opened and closed a connection, whose TIME-WAIT entries piled up by the ten thousand and made
/// each new connect slower, until the tier served a sixth of its rate.
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("cannot connect to kv at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("kv at {addr} did not answer: {source}")]
    Io { addr: String, source: io::Error },
    #[error("kv at {addr} answered {reply}, expected {expected}")]
    Unexpected {
        addr: String,
        reply: String,
        expected: &'static str,
    },
}

type Conn = BufReader<TcpStream>;

#[derive(Debug)]
pub struct KvClient {
    addr: String,
    idle: Mutex<Vec<Conn>>,
}

impl KvClient {
    /// A client for `addr` (`host:port`, resolved at each connect so a restarted kv is found).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command. A pooled connection that fails is replaced by a fresh one once, since
    /// the usual cause is a kv restart that closed every pooled connection.
    pub async fn call(&self, command: &Command) -> Result<Reply, KvError> {
        let line = format!("{command}\n");
        if let Some(mut conn) = self.take_idle() {
            if let Ok(reply) = self.exchange(&mut conn, &line).await {
                self.put_idle(conn);
                return Ok(reply);
            }
        }
        let mut conn = self.connect().await?;
        let reply = self.exchange(&mut conn, &line).await?;
        self.put_idle(conn);
        Ok(reply)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self.call(&Command::Get { key: key.into() }).await? {
            Reply::Value(value) => Ok(Some(value)),
            Reply::NotFound => Ok(None),
            other => Err(self.unexpected(other, "VALUE or NOTFOUND")),
        }
    }

    pub async fn set(&self, key: &str, value: &str) -> Result<(), KvError> {
        let command = Command::Set {
            key: key.into(),
            value: value.into(),
        };
        match self.call(&command).await? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(other, "OK")),
        }
    }

    pub async fn incr(&self, key: &str) -> Result<i64, KvError> {
        match self.call(&Command::Incr { key: key.into() }).await? {
            Reply::Value(value) => value
                .parse()
                .map_err(|_| self.unexpected(Reply::Value(value), "VALUE n")),
            other => Err(self.unexpected(other, "VALUE n")),
        }
    }

    fn unexpected(&self, reply: Reply, expected: &'static str) -> KvError {
        KvError::Unexpected {
            addr: self.addr.clone(),
            reply: reply.to_string(),
            expected,
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().ok()?.pop()
    }

    fn put_idle(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, KvError> {
        let connect_error = |source| KvError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| connect_error(io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        // Requests are single small lines: send them at once.
        let _ = stream.set_nodelay(true);
        Ok(BufReader::new(stream))
    }

    async fn exchange(&self, conn: &mut Conn, line: &str) -> Result<Reply, KvError> {
        let io_error = |source| KvError::Io {
            addr: self.addr.clone(),
            source,
        };
        let mut answer = String::new();
        timeout(REQUEST_TIMEOUT, async {
            conn.get_mut().write_all(line.as_bytes()).await?;
            if conn.read_line(&mut answer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            Ok(())
        })
        .await
        .map_err(|_| io_error(io::ErrorKind::TimedOut.into()))?
        .map_err(io_error)?;
        let answer = answer.trim_end_matches('\n');
        Reply::parse(answer).map_err(|_| KvError::Unexpected {
            addr: self.addr.clone(),
            reply: answer.to_owned(),
            expected: "a kv reply",
        })
    }
}
