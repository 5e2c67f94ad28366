//! A client of the daemon's API over its Unix socket, one connection per request.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

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

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new HTTP/1 connection to the daemon's socket.
    async fn connect(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            hyper::client::conn::http1::Connection<TokioIo<UnixStream>, Full<Bytes>>,
        ),
        ClientError,
    > {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.socket.clone(),
                    source,
                })?;
        Ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
    }

    /// Sends a request and returns the raw response (for streams).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let (mut sender, connection) = self.connect().await?;
        tokio::spawn(async move {
            // The connection ends with the response; its error is the request's.
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "paracloud")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response).await)
    }

    /// Sends a GET that asks to switch the connection to `protocol` (`Upgrade:`); returns the
    /// raw connection and the 101 answer's headers.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
    ) -> Result<(TokioIo<hyper::upgrade::Upgraded>, hyper::HeaderMap), ClientError> {
        let (mut sender, connection) = self.connect().await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "paracloud")
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(api_error(response).await);
        }
        let headers = response.headers().clone();
        let upgraded = hyper::upgrade::on(response).await?;
        Ok((TokioIo::new(upgraded), headers))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.json(Method::PUT, path, Some(body)).await
    }
}

/// The error a non-success answer carries (its JSON body, or its text).
async fn api_error(response: Response<Incoming>) -> ClientError {
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return ClientError::Http(e),
    };
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
        error: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
        diagnostics: vec![],
    });
    ClientError::Api { status, body }
}
