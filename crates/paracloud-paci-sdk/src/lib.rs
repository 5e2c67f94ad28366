//! The Rust SDK of the Paracloud interface (PaCI): a typed, async client of the socket every
//! Paracloud instance has (its path is in `PARACLOUD_PACI`).
//!
//! Through it an instance learns who it is and who its peers are, reports its load, sets its
//! load-balancing weight, asks for more or fewer instances of a service, and answers the
//! platform's events (drain, migrate, restore, resize, checkpoint) by their deadline. The
//! protocol itself (paths, bodies, what happens without an answer) is described in the
//! `paracloud-paci` crate, re-exported here as [`protocol`].
//!
//! ```no_run
//! use paracloud_paci_sdk::{Ack, EventKind, LoadReport, Paci};
//!
//! # async fn run() -> Result<(), paracloud_paci_sdk::Error> {
//! let paci = Paci::from_env()?;
//! let me = paci.whoami().await?;
//! println!("{} of {} at {}", me.instance, me.app, me.addresses.instance);
//!
//! // Low weight while a cache warms, full share afterwards.
//! paci.set_weight(Some(10)).await?;
//! paci.set_weight(None).await?;
//!
//! paci.report_load(&LoadReport { in_flight: Some(3), capacity: Some(400.0), ..Default::default() })
//!     .await?;
//!
//! let mut events = paci.events().await?;
//! while let Some(event) = events.next().await? {
//!     let ack = match &event.kind {
//!         EventKind::Migrate { .. } => Ack { state: Some(serde_json::json!({"counter": 41})), ..Default::default() },
//!         _ => Ack::default(),
//!     };
//!     paci.ack(event.id, &ack).await?;
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
pub use paracloud_paci as protocol;
use paracloud_paci::routes;
pub use paracloud_paci::{
    Ack, AckAnswer, EventKind, LoadReport, Peer, Peers, PlatformEvent, ReplicasAnswer,
    ReplicasRequest, Target, WeightAnswer, WeightRequest, Whoami,
};
use paracloud_unix_http::{fill, Query, UnixHttp};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{} is not set: this process does not run as a Paracloud instance (or PaCI is off)",
        paracloud_paci::ENV
    )]
    NotAnInstance,
    #[error("cannot reach the PaCI socket {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the PaCI connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// The platform refused the request; `message` says why and how to fix it.
    #[error("{message} ({status})")]
    Refused { status: StatusCode, message: String },
    #[error("PaCI answered something unexpected: {0}")]
    Decode(String),
}

impl From<paracloud_unix_http::Error> for Error {
    fn from(e: paracloud_unix_http::Error) -> Self {
        use paracloud_unix_http::Error as Http;
        match e {
            Http::Unreachable { target, source } => Self::Unreachable {
                path: target.into(),
                source,
            },
            Http::Http(e) => Self::Http(e),
            // PaCI's refusals are an ErrorBody; anything else is shown as it came.
            Http::Status { status, body } => Self::Refused {
                status,
                message: serde_json::from_slice::<paracloud_paci::ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
            },
            Http::Decode(message) => Self::Decode(message),
        }
    }
}

/// A client of the instance's PaCI socket; cheap to clone, one connection per request.
#[derive(Debug, Clone)]
pub struct Paci {
    http: UnixHttp,
}

impl Paci {
    /// The socket named by `PARACLOUD_PACI`.
    pub fn from_env() -> Result<Self, Error> {
        let path = std::env::var_os(paracloud_paci::ENV).ok_or(Error::NotAnInstance)?;
        Ok(Self::at(path))
    }

    /// A socket at a given path.
    pub fn at(socket: impl Into<PathBuf>) -> Self {
        Self {
            http: UnixHttp::new(socket, "paci"),
        }
    }

    pub fn socket(&self) -> &Path {
        self.http.socket()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Error> {
        Ok(self.http.send(method, path, body).await?)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Error> {
        Ok(self.http.json(method, path, body).await?)
    }

    fn body<B: Serialize>(body: &B) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(paracloud_unix_http::to_json(body)?))
    }

    /// Who this instance is: app, service, name, index, revision, resources, addresses.
    pub async fn whoami(&self) -> Result<Whoami, Error> {
        self.json(Method::GET, routes::WHOAMI, None).await
    }

    /// The instances of a service of this application (this instance's own when `None`).
    pub async fn peers(&self, service: Option<&str>) -> Result<Peers, Error> {
        self.json(Method::GET, &peers_path(service, false), None)
            .await
    }

    /// The instances of a service now, then again each time they change.
    pub async fn watch_peers(&self, service: Option<&str>) -> Result<Lines<Peers>, Error> {
        let response = self
            .send(Method::GET, &peers_path(service, true), None)
            .await?;
        Ok(Lines::new(response))
    }

    /// Reports this instance's load; the autoscaler uses what is given for five seconds.
    pub async fn report_load(&self, report: &LoadReport) -> Result<LoadReport, Error> {
        self.json(Method::PUT, routes::LOAD, Self::body(report)?)
            .await
    }

    /// Sets this instance's load-balancing weight in percent of its full share (`None`: full).
    pub async fn set_weight(&self, weight: Option<u32>) -> Result<u32, Error> {
        let answer: WeightAnswer = self
            .json(
                Method::PUT,
                routes::WEIGHT,
                Self::body(&WeightRequest { weight })?,
            )
            .await?;
        Ok(answer.weight)
    }

    /// Asks for `replicas` instances of `service`, within the manifest's bounds.
    pub async fn ask_replicas(
        &self,
        service: &str,
        replicas: u32,
        reason: Option<&str>,
    ) -> Result<ReplicasAnswer, Error> {
        let body = ReplicasRequest {
            replicas,
            reason: reason.map(str::to_string),
        };
        self.json(
            Method::PUT,
            &fill(routes::REPLICAS, &[service]),
            Self::body(&body)?,
        )
        .await
    }

    /// The platform's events for this instance: those waiting for an answer, then each new one.
    pub async fn events(&self) -> Result<Lines<PlatformEvent>, Error> {
        let response = self.send(Method::GET, routes::EVENTS, None).await?;
        Ok(Lines::new(response))
    }

    /// Answers event `id`.
    pub async fn ack(&self, id: u64, ack: &Ack) -> Result<AckAnswer, Error> {
        self.json(
            Method::POST,
            &fill(routes::ACK, &[&id.to_string()]),
            Self::body(ack)?,
        )
        .await
    }
}

fn peers_path(service: Option<&str>, watch: bool) -> String {
    let query = Query::new()
        .maybe("service", service)
        .maybe("watch", watch.then_some(true));
    match query.build() {
        Some(query) => format!("{}?{query}", routes::PEERS),
        None => routes::PEERS.to_owned(),
    }
}

/// A stream of JSON lines from the platform (events, peer changes).
#[derive(Debug)]
pub struct Lines<T> {
    lines: paracloud_unix_http::JsonLines<T>,
}

impl<T: DeserializeOwned> Lines<T> {
    fn new(response: Response<Incoming>) -> Self {
        Self {
            lines: paracloud_unix_http::JsonLines::new(response),
        }
    }

    /// The next item; `None` when the platform closed the stream.
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        Ok(self.lines.next().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_paths_carry_their_query() {
        assert_eq!(peers_path(None, false), "/v1/peers");
        assert_eq!(peers_path(Some("kv"), false), "/v1/peers?service=kv");
        assert_eq!(
            peers_path(Some("kv"), true),
            "/v1/peers?service=kv&watch=true"
        );
        assert_eq!(peers_path(None, true), "/v1/peers?watch=true");
    }
}
