//! A client of the daemon's API over its Unix socket, one connection per request.

use std::path::{Path, PathBuf};

use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use paracloud_unix_http::{to_json, UnixHttp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon answers on {path}: {source}")]
    Unreachable {
        path: PathBuf,
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
            Error::Unreachable { path, source } => Self::Unreachable { path, source },
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

    pub fn socket(&self) -> &Path {
        self.http.socket()
    }

    /// Sends a request and returns the raw response (for streams).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        Ok(self.http.send(method, path, body).await?)
    }

    /// Sends a GET that asks to switch the connection to `protocol` (`Upgrade:`); returns the
    /// raw connection and the 101 answer's headers.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<(TokioIo<hyper::upgrade::Upgraded>, hyper::HeaderMap), ClientError> {
        Ok(self.http.upgrade(path, protocol).await?)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.http.json(Method::GET, path, None).await?)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.http.json(Method::DELETE, path, None).await?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Ok(self
            .http
            .json(Method::POST, path, Some(to_json(body)?))
            .await?)
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Ok(self
            .http
            .json(Method::PUT, path, Some(to_json(body)?))
            .await?)
    }
}
