//! The daemon's HTTP/JSON API: the types on the wire, and a client over the daemon's Unix socket.
//!
//! Routes (all under `/v1`, JSON bodies; errors are [`ErrorBody`] with a 4xx or 5xx status):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | | [`Health`] |
//! | `POST /v1/apps` | [`UpRequest`] | [`UpResponse`] |
//! | `GET /v1/apps` | | `[AppView]` |
//! | `GET /v1/apps/{app}` | | [`AppView`] |
//! | `DELETE /v1/apps/{app}?volumes=true` | | [`AppView`] |
//! | `GET /v1/instances?app=APP` | | `[InstanceView]` |
//! | `GET /v1/apps/{app}/services/{service}` | | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/replicas` | [`ScaleRequest`] | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/cpu` | [`CpuRequest`] | [`ServiceView`] |
//! | `POST /v1/apps/{app}/services/{service}/restart` | | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/traffic` | [`TrafficRequest`] | [`ServiceView`] |
//! | `GET /v1/apps/{app}/logs?target=web&tail=100&follow=true` | | text, streamed when following |
//! | `POST /v1/apps/{app}/instances/{instance}/migrate` | [`MigrateRequest`] | [`MigrateResponse`], once the move is complete |
//! | `GET /v1/events?app=APP&after=ID` | | `[Event]` |
//! | `GET /v1/stats?app=APP` | | the data plane's live figures (`paracloud_dataplane::Snapshot`) |

mod client;

use std::path::PathBuf;

pub use client::{Client, ClientError};
use paracloud_manifest::{Diagnostic, Service};
use paracloud_reconcile::ExitInfo;
use serde::{Deserialize, Serialize};

/// The name of the API socket inside the state root.
pub const SOCKET_NAME: &str = "paracloud.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    pub version: String,
    pub root: PathBuf,
}

/// Deploy (create or update) an application from manifest text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpRequest {
    /// The manifest text.
    pub source: String,
    /// The file name shown in error messages.
    pub origin: String,
    /// The absolute directory that relative paths in the manifest resolve against.
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpResponse {
    pub app: String,
    /// Services whose spec changed (their instances are being replaced).
    pub changed: Vec<String>,
}

/// Move an instance to a new one, make before break.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// `paci`, `criu` or `restart`; the service's `migrate` when left out.
    #[serde(default)]
    pub via: Option<String>,
    /// The revision to run: the service's current one (a number, or `latest`).
    #[serde(default)]
    pub revision: Option<String>,
    /// CPU of the new instance in cores.
    #[serde(default)]
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateResponse {
    pub from: String,
    pub to: String,
    pub via: String,
    pub took_ms: u64,
    /// The state handover (PaCI) or checkpoint and restore (CRIU), when there was one.
    pub handover_ms: Option<u64>,
    pub state_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// CPU per instance of a service, in cores: applied to its running instances at once and to
/// every instance started after, until the next `up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuRequest {
    pub cpu: f64,
}

/// New traffic shares for revisions of a service, by revision name, in percent; revisions not
/// named keep theirs, and the service itself gets what its revisions leave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficRequest {
    pub weights: std::collections::BTreeMap<String, u32>,
}

/// One side of a service's traffic split: the service itself or one of its revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficShare {
    /// The revision's name, such as `canary`; `None` for the service itself.
    pub revision: Option<String>,
    /// The service running it, such as `api@canary`.
    pub service: String,
    /// Percent of the requests the `x-paracloud-revision` header does not route.
    pub weight: u32,
    /// Its instances ready for traffic.
    pub ready: u32,
}

/// An error answer: what went wrong, and for manifests, each problem with its place.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

/// One instance as `ps` shows it. Scripts rely on these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub app: String,
    pub service: String,
    /// `service.index`, e.g. `api.2`.
    pub instance: String,
    /// `starting`, `running` (ready), `unready`, `unhealthy`, `stopping`, `exited`, `failed`, `oom-killed`.
    pub state: String,
    /// Host pid of the instance's first process.
    pub pid: Option<i32>,
    /// Address on the application network.
    pub address: Option<String>,
    pub uptime_seconds: Option<u64>,
    pub restarts: u32,
    pub revision: u64,
    /// How the last process ended, when it has.
    pub exit: Option<ExitInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub app: String,
    pub name: String,
    /// Instances wanted.
    pub replicas: u32,
    /// Instances ready for traffic.
    pub ready: u32,
    pub revision: u64,
    /// CPU limit per instance in cores (the manifest's `resources.cpu` unless `scale --cpu` or
    /// the autoscaler changed it); `None`: unlimited.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// The stable service address on the application network.
    pub address: String,
    /// Published host addresses, e.g. `127.0.0.1:8080 -> 8080/http`.
    pub published: Vec<String>,
    pub spec: Service,
    pub instances: Vec<InstanceView>,
    /// Why instances are not started yet, if they wait.
    pub waiting: Vec<String>,
    /// How its requests are split with the revisions running beside it (empty without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficShare>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    /// The manifest file it came from.
    pub origin: String,
    pub subnet: String,
    pub bridge: String,
    /// Being removed by `down`.
    pub removing: bool,
    pub services: Vec<ServiceView>,
}

pub use paracloud_reconcile::InstanceKey;

/// A line of the event log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    pub app: String,
    pub subject: String,
    pub message: String,
}
