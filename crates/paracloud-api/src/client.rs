//! A client of the daemon's API over its Unix socket, or over HTTPS to a remote daemon
//! ([`crate::remote`]), one connection per request: it sends
//! [`Route`]s and turns refusals into [`ClientError`]s.

use std::path::{Path, PathBuf};

use hyper::body::Incoming;
use hyper::StatusCode;
use paracloud_unix_http::{JsonLines, Route, UnixHttp, Upgraded};
use serde::de::DeserializeOwned;

use crate::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon answers on {target}: {source}")]
    Unreachable {
        target: String,
        source: std::io::Error,
    },
    #[error("the daemon's connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("{}", .body.error)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("the daemon answered something unexpected: {0}")]
    Decode(String),
}

impl From<paracloud_unix_http::Error> for ClientError {
    fn from(e: paracloud_unix_http::Error) -> Self {
        use paracloud_unix_http::Error;
        match e {
            Error::Unreachable { target, source } => Self::Unreachable { target, source },
            Error::Http(e) => Self::Http(e),
            // The daemon's refusals are an ErrorBody; anything else is shown as it came.
            Error::Status { status, body } => Self::Api {
                status,
                body: serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                    error: format!("{status}: {}", String::from_utf8_lossy(&body)),
                    diagnostics: vec![],
                }),
            },
            Error::Decode(message) => Self::Decode(message),
        }
    }
}

/// A client of the daemon's API over its Unix socket, one connection per request.
#[derive(Debug, Clone)]
pub struct Client {
    http: UnixHttp,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            http: UnixHttp::new(socket, "paracloud"),
        }
    }

    /// A client of the daemon that `remote` reaches over HTTPS.
    pub fn remote(remote: crate::remote::Remote) -> Self {
        let host = remote.address.clone();
        Self {
            http: UnixHttp::with_dial(remote, &host),
        }
    }

    /// What it reaches: the socket's path, or `https://host:port`.
    pub fn target(&self) -> String {
        self.http.target()
    }

    pub fn socket(&self) -> &Path {
        self.http.socket()
    }

    /// Sends `route`'s request and reads its JSON answer.
    pub async fn call<R: Route>(&self, route: &R) -> Result<R::Answer, ClientError>
    where
        R::Answer: DeserializeOwned,
    {
        Ok(self.http.call(route).await?)
    }

    /// Sends `route`'s request and reads its answer, a stream of JSON lines, one at a time.
    pub async fn lines<R, T>(&self, route: &R) -> Result<JsonLines<T>, ClientError>
    where
        R: Route<Answer = JsonLines<T>>,
        T: DeserializeOwned,
    {
        Ok(self.http.lines(route).await?)
    }

    /// Sends `route`'s request and returns its answer's body as it comes (text, a file).
    pub async fn stream<R: Route<Answer = Incoming>>(
        &self,
        route: &R,
    ) -> Result<Incoming, ClientError> {
        Ok(self.http.stream(route).await?)
    }

    /// Sends `route`'s request asking to switch the connection to `protocol` (`Upgrade:`).
    pub async fn switch<R: Route<Answer = Upgraded>>(
        &self,
        route: &R,
        protocol: &str,
    ) -> Result<Upgraded, ClientError> {
        Ok(self.http.switch(route, protocol).await?)
    }
}
