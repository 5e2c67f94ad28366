//! The daemon's HTTP/JSON API: the types on the wire, and a client over the daemon's Unix socket.
//!
//! Routes (all under `/v1`, JSON bodies; errors are [`ErrorBody`] with a 4xx or 5xx status). Each
//! is a type of [`routes`], the one place a route's path is written: the daemon's router
//! registers its handlers at them and the [`Client`] sends them ([`Client::call`] for JSON
//! answers, [`Client::lines`] for JSON-line streams, [`Client::stream`] for bytes,
//! [`Client::switch`] for the debug session's upgrade).
//!
//! | method and path | route | body | answer |
//! |---|---|---|---|
//! | `GET /v1/health` | [`GetHealth`] | | [`Health`] |
//! | `POST /v1/apps` | [`Up`] | [`UpRequest`] | [`UpResponse`] |
//! | `GET /v1/apps` | [`ListApps`] | | `[AppView]` |
//! | `GET /v1/apps/{app}` | [`GetApp`] | | [`AppView`] |
//! | `DELETE /v1/apps/{app}?volumes=true` | [`Down`] | | [`AppView`] |
//! | `GET /v1/instances?app=APP` | [`ListInstances`] | | `[InstanceView]` |
//! | `GET /v1/apps/{app}/services/{service}` | [`GetService`] | | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/replicas` | [`Scale`] | [`ScaleRequest`] | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/cpu` | [`SetCpu`] | [`CpuRequest`] | [`ServiceView`] |
//! | `POST /v1/apps/{app}/services/{service}/restart` | [`Restart`] | | [`ServiceView`] |
//! | `PUT /v1/apps/{app}/services/{service}/traffic` | [`SetTraffic`] | [`TrafficRequest`] | [`ServiceView`] |
//! | `GET /v1/apps/{app}/logs?target=web&tail=100&follow=true` | [`Logs`] | | text, streamed when following |
//! | `POST /v1/apps/{app}/instances/{instance}/migrate` | [`Migrate`] | [`MigrateRequest`] | [`MigrateResponse`], once the move is complete |
//! | `GET /v1/events?app=APP&after=ID&limit=N` | [`ListEvents`] | | `[Event]` |
//! | `GET /v1/stats?app=APP` | [`GetStats`] | | the data plane's live figures (`paracloud_dataplane::Snapshot`) |
//! | `POST /v1/dataplane/restart` | [`RestartDataplane`] | [`DataplaneRestartRequest`] | [`DataplaneRestartResponse`], once the old data plane has ended |
//! | `GET /v1/images` | [`ListImages`] | | `[ImageView]` |
//! | `GET /v1/images/inspect?name=NAME` | [`InspectImage`] | | [`ImageDetail`] |
//! | `DELETE /v1/images?name=NAME` | [`RemoveImage`] | | [`RemovedImages`] |
//! | `POST /v1/images/prune` | [`PruneImages`] | | [`PruneView`] |
//! | `POST /v1/images/micro` | [`BuildMicroImage`] | [`MicroImageRequest`] | [`BuiltImage`] |
//! | `POST /v1/images/import` | [`ImportImages`] | [`ImportRequest`] | `[ImageRef]` |
//! | `POST /v1/images/export` | [`ExportImages`] | [`ExportRequest`] | `[ImageRef]` |
//! | `POST /v1/images/build` | [`BuildImage`] | [`BuildRequest`] | a stream of [`BuildEvent`], one JSON per line |
//! | `POST /v1/images/sources` | [`ImageSources`] | [`SourcesRequest`] | `[ImageSourceView]` |
//! | `POST /v1/images/pull` | [`PullImage`] | [`TransferRequest`] | a stream of [`TransferEvent`], one JSON per line |
//! | `POST /v1/images/push` | [`PushImage`] | [`TransferRequest`] | a stream of [`TransferEvent`], one JSON per line |
//! | `GET /v1/catalog` | [`ListCatalog`] | | `[CatalogView]` |
//! | `POST /v1/apps/{app}/services/{service}/tasks` | [`SubmitTasks`] | [`TasksRequest`] | [`BatchView`] |
//! | `GET /v1/apps/{app}/batches` | [`ListBatches`] | | `[BatchView]` |
//! | `GET /v1/apps/{app}/batches/{batch}` | [`GetBatch`] | | [`BatchDetail`] |
//! | `DELETE /v1/apps/{app}/batches/{batch}` | [`CancelBatch`] | | [`BatchView`] |
//! | `GET /v1/capsules?app=APP` | [`ListCapsules`] | | `[CapsuleView]` |
//! | `POST /v1/capsules/run` | [`RunCapsule`] | [`CapsuleRunRequest`] | a stream of [`CapsuleRunEvent`], one JSON per line |
//! | `GET /v1/capsules/runs/{run}` | [`GetCapsuleRun`] | | [`CapsuleRunView`] |
//! | `GET /v1/capsules/runs/{run}/files/{instance}/{name}` | [`GetCapsuleFile`] | | the file's bytes |
//! | `GET /v1/capsules/history?app=APP&limit=N` | [`CapsuleHistory`] | | `[CapsuleRunView]` |
//! | `GET /v1/capsules/debug?app=APP&instance=web.1&command=JSON` with `Upgrade: paracloud-tty` | [`DebugSession`] | | 101, then the terminal's bytes both ways |
//! | `POST /v1/capsules/runs/{run}/resize` | [`ResizeTerminal`] | [`TerminalSize`] | 204, no body |
//! | `GET /v1/whoami` | [`GetWhoAmI`] | | [`WhoAmI`] |
//! | `POST /v1/tokens` | [`CreateToken`] | [`TokenRequest`] | [`CreatedToken`] |
//! | `GET /v1/tokens` | [`ListTokens`] | | `[TokenView]` |
//! | `DELETE /v1/tokens/{name}` | [`RevokeToken`] | | 204, no body |
//! | `POST /v1/session` | [`OpenSession`] | [`SessionRequest`] | [`WhoAmI`], and the session's cookie |
//! | `DELETE /v1/session` | [`CloseSession`] | | 204, the cookie cleared |
//! | `GET /v1/openapi.json` | [`GetOpenApi`] | | this API's OpenAPI 3.1 description ([`openapi`]) |
//! | `GET /metrics` | [`GetMetrics`] | | the platform's metrics, Prometheus text format |
//! | `GET /` | [`DashboardPage`] | | the dashboard's page (HTML) |
//! | `GET /assets/{name}` | [`DashboardAsset`] | | one file of the dashboard (script, style) |
//! | `GET /v1/apps/{app}/manifest` | [`GetManifest`] | | [`ManifestView`] |
//! | `GET /v1/capsules/debug/terminal?app=APP&instance=web.1` as a WebSocket | [`DebugTerminal`] | | 101, then `{"run": ID}` and the terminal's bytes both ways, in messages |
//! | `GET /v1/apps/{app}/live` | [`LiveFigures`] | | server-sent events: `history` ([`LiveHistory`]), then `second` ([`LiveSecond`]) and `events` (`[Event]`) as they come |
//!
//! The query strings the daemon reads are types of [`queries`] ([`LogsQuery`], ...), which the
//! OpenAPI description lists as the routes' parameters.

mod client;
pub mod openapi;
pub mod queries;
pub mod remote;
pub mod routes;

use std::path::PathBuf;

pub use client::{Client, ClientError};
use paracloud_manifest::{Diagnostic, Service};
use paracloud_reconcile::{ExitInfo, ProbeFailure};
pub use paracloud_unix_http::{JsonLines, Route, Upgraded};
pub use queries::*;
pub use routes::*;
use serde::{Deserialize, Serialize};

/// The machine's own filesystem, for the manifest's path checks: the CLI checks a manifest
/// with it before sending it, and the daemon again when it arrives.
#[derive(Debug, Clone, Copy)]
pub struct HostFs;

impl paracloud_manifest::FileSystem for HostFs {
    fn exists(&self, path: &std::path::Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &std::path::Path) -> bool {
        path.is_dir()
    }
}

/// The name of the API socket inside the state root.
pub const SOCKET_NAME: &str = "paracloud.sock";

/// The content type of an answer streamed as JSON lines.
pub const JSON_LINES: &str = "application/x-ndjson";

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub pid: u32,
    pub version: String,
    #[schema(value_type = String)]
    pub root: PathBuf,
    /// The remote API, when the daemon serves one.
    #[serde(default)]
    pub remote: Option<RemoteView>,
}

/// Where the remote API listens, and the fingerprint of its certificate that clients pin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteView {
    pub address: String,
    /// `sha256:` and 64 hex digits.
    pub fingerprint: String,
}

pub use paracloud_state::Role;

/// Who the caller is to the daemon: a remote client's token, or a user of the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's name, or the local user's.
    pub name: String,
    pub role: Role,
}

/// Creates a token of the remote API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    pub name: String,
    pub role: Role,
    /// Seconds it is accepted for (`None`: until revoked).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    /// When it stops being accepted, in milliseconds since the epoch.
    pub expires: Option<u64>,
    pub token: String,
}

/// A token as `token ls` shows it (its secret is not kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    /// Milliseconds since the epoch.
    pub created: u64,
    pub expires: Option<u64>,
    pub revoked: Option<u64>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

/// Logs a browser in: the token becomes a cookie of the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionRequest {
    pub token: String,
}

/// Deploy (create or update) an application from manifest text.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpRequest {
    /// The manifest text.
    pub source: String,
    /// The file name shown in error messages.
    pub origin: String,
    /// The absolute directory that relative paths in the manifest resolve against.
    #[schema(value_type = String)]
    pub base_dir: PathBuf,
    /// Check everything (manifest, images, Containerfiles, the deployment's rules) and change
    /// nothing: no build, pull or start.
    #[serde(default)]
    pub dry_run: bool,
    /// Credentials by registry for a dry run's look-ups (as [`TransferRequest::auths`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub auths: std::collections::BTreeMap<String, RegistryCredentials>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpResponse {
    pub app: String,
    /// Services whose spec changed (their instances are being replaced).
    pub changed: Vec<String>,
    /// A dry run's findings, one per image (nothing was changed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<ImageCheck>,
}

/// How a dry run found one service's (or capsule's) image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageCheck {
    /// `service web` or `capsule audit`.
    pub user: String,
    pub image: String,
    /// `in the store (sha256:...)`, `would be pulled from HOST/REPO`, `would be built from FILE (N steps)`.
    pub status: String,
}

/// Where a pull of `reference` would look, in order (the state root's registries.toml).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourcesRequest {
    pub reference: String,
}

/// One place a pull tries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSourceView {
    /// The registry as named (`docker.io`, `HOST:PORT`): whose credentials it takes.
    pub registry: String,
    /// `HOST/REPOSITORY` as reached.
    pub location: String,
    pub mirror: bool,
}

/// Move an instance to a new one, make before break.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrateResponse {
    pub from: String,
    pub to: String,
    pub via: String,
    pub took_ms: u64,
    /// The state handover (PaCI) or checkpoint and restore (CRIU), when there was one.
    pub handover_ms: Option<u64>,
    pub state_bytes: Option<u64>,
}

/// Replace the data plane by a new one on the same listening sockets, draining the old one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataplaneRestartRequest {
    /// How long the old data plane's open connections (TCP ones, requests under way) may run
    /// once it drains, in milliseconds; the rest are closed then. Default 30 000, at most
    /// [`MAX_DRAIN_TIMEOUT_MS`].
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
}

/// The longest drain a data-plane restart may ask for (10 minutes).
pub const MAX_DRAIN_TIMEOUT_MS: u64 = 600_000;

/// The drain a data-plane restart gets when it asks for none (30 seconds).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataplaneRestartResponse {
    /// The data plane replaced; `None` when none was running (one was started).
    pub old_pid: Option<i32>,
    pub new_pid: i32,
    /// From the new data plane's start to its readiness (its configuration applied).
    pub ready_ms: u64,
    /// From the old one's drain signal to its end.
    pub drain_ms: u64,
    /// Whether the old one ended by itself, every connection finished, within the drain
    /// timeout (false: what was still open was closed).
    pub drained: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// CPU per instance of a service, in cores: applied to its running instances at once and to
/// every instance started after, until the next `up`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CpuRequest {
    pub cpu: f64,
}

/// New traffic shares for revisions of a service, by revision name, in percent; revisions not
/// named keep theirs, and the service itself gets what its revisions leave.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrafficRequest {
    pub weights: std::collections::BTreeMap<String, u32>,
}

/// One side of a service's traffic split: the service itself or one of its revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

/// One instance as `ps` shows it. Scripts rely on these field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Why its health probes fail, while they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_failure: Option<ProbeFailure>,
    /// Requests per second it serves with its CPU, measured from its own completions and CPU
    /// once it has answered requests for a few seconds; the data plane's weights follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_rps: Option<f64>,
    /// The queries per second a database server of the catalogue ran lately, as it counts
    /// them (its requests, for the autoscaler and `capacity_rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries_per_second: Option<f64>,
    /// How far a database replica of the catalogue is behind its primary, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The service as the manifest declares it, normalised (see the manifest's reference).
    #[schema(value_type = Object)]
    pub spec: Service,
    pub instances: Vec<InstanceView>,
    /// Why instances are not started yet, if they wait.
    pub waiting: Vec<String>,
    /// How its requests are split with the revisions running beside it (empty without any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficShare>,
    /// Why its instances run with host ids, without user namespaces of their own; absent when
    /// each one has its own (root inside is an unprivileged host user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ids: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    pub app: String,
    pub subject: String,
    pub message: String,
}

/// One image of the store, as `paracloud images` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageView {
    /// `name:tag`.
    pub reference: String,
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    pub layers: usize,
    /// Bytes of its layer blobs.
    pub size: u64,
    pub created: Option<String>,
}

/// A layer of an image, as `image inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LayerView {
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
    pub size: u64,
}

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageDetail {
    /// The references naming it.
    pub references: Vec<String>,
    pub digest: String,
    pub architecture: String,
    pub os: String,
    pub size: u64,
    pub layers: Vec<LayerView>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
    /// The config's history: how each layer was made.
    pub history: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// SHELL (empty: `/bin/sh -c`).
    #[serde(default)]
    pub shell: Vec<String>,
    /// HEALTHCHECK, as Docker writes it (`Test`, `Interval`... in nanoseconds).
    #[serde(default)]
    pub healthcheck: Option<serde_json::Value>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemovedImages {
    /// The references removed; blobs stay until `image prune`.
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PruneView {
    pub blobs: usize,
    pub layers: usize,
    /// Bytes of the blobs removed.
    pub bytes: u64,
}

/// Build a micro-image from a host program (absolute paths on the daemon's machine).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MicroImageRequest {
    #[schema(value_type = String)]
    pub binary: PathBuf,
    /// Files or directories added as they are on the host (and the libraries of ELF files in them).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub add: Vec<PathBuf>,
    /// The name to give it, such as `web:1`.
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuiltImage {
    pub reference: String,
    pub digest: String,
    /// Bytes of its one layer (an uncompressed tar).
    pub size: u64,
    /// Entries of the layer (files, directories, links).
    pub files: usize,
}

/// Import an OCI image layout (directory or archive) or a `docker save` archive.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportRequest {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// The name to give the image (the source must hold one); without it, the names the source
    /// gives are kept.
    #[serde(default)]
    pub tag: Option<String>,
}

/// Export images as an OCI layout that is also a `docker save` archive: a directory, or a tar
/// archive when `path` ends in `.tar`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportRequest {
    pub names: Vec<String>,
    #[schema(value_type = String)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRef {
    pub reference: Option<String>,
    pub digest: String,
}

/// Pull an image from a registry (`reference` names it; Docker Hub's when it names none,
/// through the mirrors of the state root's registries.toml), or push the
/// store's image `reference` to `target` (default: `reference` itself).
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferRequest {
    pub reference: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Credentials by registry (`docker.io`, `HOST:PORT`) for a pull through mirrors: the
    /// caller's own, used for this transfer and never kept.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub auths: std::collections::BTreeMap<String, RegistryCredentials>,
}

impl std::fmt::Debug for TransferRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a password, in any log.
        f.debug_struct("TransferRequest")
            .field("reference", &self.reference)
            .field("target", &self.target)
            .field("username", &self.username)
            .field("auths", &self.auths)
            .finish_non_exhaustive()
    }
}

/// A user name and password (or identity token as the password) for one registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, in any log.
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A line of a pull's or push's answer stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum TransferEvent {
    /// A layer (or the config) starts moving.
    Started { digest: String, size: u64 },
    /// Bytes of it moved so far.
    Bytes { digest: String, done: u64 },
    /// It is complete (unpacked, when pulling).
    Done { digest: String },
    /// The whole image is done: the last line of a transfer that worked.
    Finished { reference: String, digest: String },
    /// The transfer failed: the last line of one that did not.
    Failed { error: String },
}

/// Build an image from a Containerfile (the Dockerfile language, as BuildKit reads it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildRequest {
    /// The build context: an absolute directory; COPY and ADD sources are inside it.
    #[schema(value_type = String)]
    pub context: PathBuf,
    /// The Containerfile (default: `Containerfile`, else `Dockerfile`, in the context).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
    pub tag: String,
    /// `--build-arg NAME=VALUE`.
    #[serde(default)]
    pub build_args: std::collections::BTreeMap<String, String>,
    /// `--target STAGE`: the stage to build (default: the last); stages it does not need are
    /// not built.
    #[serde(default)]
    pub target: Option<String>,
    /// `--platform`: only this machine's (such as `linux/amd64`) is built.
    #[serde(default)]
    pub platform: Option<String>,
    /// `--secret id=ID,src=FILE`: files on the daemon's machine that `RUN --mount=type=secret`
    /// mounts; never in a layer or a cache key.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub secrets: std::collections::BTreeMap<String, PathBuf>,
}

/// One step of a build, as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildStepView {
    /// The stage: its `AS` name, else its index.
    #[serde(default)]
    pub stage: String,
    pub line: usize,
    pub instruction: String,
    /// Taken from the cache of an earlier build instead of done again.
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildResponse {
    pub reference: String,
    pub digest: String,
    pub layers: usize,
    /// Bytes of its layer blobs.
    pub size: u64,
    pub steps: Vec<BuildStepView>,
}

/// A line of a build's answer stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum BuildEvent {
    /// A step is done (or taken from the cache).
    Step { step: BuildStepView },
    /// A line a RUN step wrote, as it ran.
    Output {
        stage: String,
        line: usize,
        text: String,
    },
    /// The image is built: the last line of a build that worked.
    Finished { build: BuildResponse },
    /// The build failed: the last line of one that did not.
    Failed { error: String },
}

/// A capsule that can attach to instances, as `paracloud capsule ls` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapsuleView {
    pub name: String,
    pub description: String,
    /// Its arguments, e.g. `PATH...`.
    pub usage: String,
    /// `read` or `write`: the access to the target's filesystem it needs.
    pub access: String,
    /// Capabilities beyond the default set, e.g. `CAP_SYS_PTRACE`.
    pub capabilities: Vec<String>,
    /// Its default deadline in milliseconds.
    pub timeout_ms: u64,
    /// The application that defines it (`[capsules.NAME]`); `None` for a built-in one.
    pub app: Option<String>,
    /// Host programs it is made of that this machine lacks: it cannot run until they are
    /// installed.
    pub missing: Vec<String>,
}

/// A service of the catalogue, as `paracloud catalog ls` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogView {
    /// What `catalog = "..."` names, such as `postgres`.
    pub name: String,
    pub summary: String,
    /// The server versions it runs, the default first.
    pub versions: Vec<String>,
    /// Its keys, each with what it means.
    pub keys: Vec<CatalogKeyView>,
    /// The addresses the application reaches it at (`NAME` is the service's name).
    pub addresses: Vec<CatalogKeyView>,
    /// The package of the daemon's machine its image is made of.
    pub package: String,
    /// What the daemon's machine lacks to run it; `None` when it can.
    pub missing: Option<String>,
}

/// A bag of tasks for a task farm, each a `sh -c` command line, and its goal: a deadline or a
/// budget, exactly one of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TasksRequest {
    pub tasks: Vec<String>,
    /// Every task done within this many seconds from now.
    pub deadline_s: Option<u64>,
    /// As soon as it can, within this many instance-seconds (workers × seconds).
    pub budget_instance_s: Option<u64>,
}

/// A batch of a task farm: its goal, progress, workers and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchView {
    pub id: u64,
    pub app: String,
    pub service: String,
    /// `running`, `done`, `cancelled` or `budget spent`.
    pub state: String,
    /// Milliseconds since the epoch.
    pub submitted_ms: u64,
    pub ended_ms: Option<u64>,
    /// When every task was to be done (a deadline), in milliseconds since the epoch.
    pub deadline_ms: Option<u64>,
    /// The instance time it may spend (a budget), in milliseconds.
    pub budget_instance_ms: Option<u64>,
    /// Instance time its workers have run so far: its cost.
    pub spent_instance_ms: u64,
    /// The workers the farm asks for now, and the most it ran at once.
    pub workers: u32,
    pub peak_workers: u32,
    /// Why that many workers: the farm's last plan.
    pub plan: String,
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
    pub pending: u32,
    /// Tasks that were never run (cancelled, or the budget spent).
    pub not_run: u32,
}

/// A batch and its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchDetail {
    pub batch: BatchView,
    pub tasks: Vec<TaskView>,
}

/// One task of a batch: its runs and the end of what the last one wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Its line among the submitted tasks, from 1.
    pub index: u32,
    pub command: String,
    /// `pending`, `running`, `succeeded`, `failed` or `not run`.
    pub state: String,
    pub attempts: Vec<AttemptView>,
    /// The last 64 KiB of what the last run wrote to stdout, and to stderr.
    pub stdout: String,
    pub stderr: String,
}

/// One run of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// The worker it ran on, such as `render.2`.
    pub worker: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// Its exit code, when it ended by itself.
    pub code: Option<i32>,
    /// Why it did not end by itself.
    pub error: Option<String>,
}

/// A key or an address of a catalogue service, with what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogKeyView {
    pub name: String,
    pub meaning: String,
}

/// Run a capsule on every running instance the selector matches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapsuleRunRequest {
    pub capsule: String,
    /// `KEY=VALUE[,...]`: app, service, instance, or a label.
    pub selector: String,
    /// Arguments of the capsule's function.
    #[serde(default)]
    pub args: Vec<String>,
    /// Overrides the capsule's deadline, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One line of the stream a capsule run answers with (JSON lines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CapsuleRunEvent {
    /// The run is recorded and attaches to these instances.
    Started { run: i64, targets: Vec<String> },
    /// Output of the function on one instance (`stream`: `stdout` or `stderr`).
    Output {
        instance: String,
        stream: String,
        text: String,
    },
    /// The capsule on one instance ended and is gone.
    Exited {
        instance: String,
        /// Exit code, 128 + the signal when killed; `None` when it never started.
        exit_code: Option<i32>,
        duration_ms: u64,
        timed_out: bool,
        /// Files it left in /out, fetched with `GET /v1/capsules/runs/{run}/files/{instance}/{name}`.
        files: Vec<CapsuleFile>,
        /// Why it could not run, when it could not.
        error: Option<String>,
    },
    /// Every target is done.
    Finished {
        run: i64,
        status: String,
        duration_ms: u64,
        output_bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapsuleFile {
    pub name: String,
    pub size: u64,
}

/// One recorded capsule run, as `paracloud capsule history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapsuleRunView {
    pub id: i64,
    pub who: String,
    pub capsule: String,
    pub app: String,
    pub selector: String,
    pub args: Vec<String>,
    pub targets: Vec<CapsuleTargetView>,
    /// Milliseconds since the Unix epoch.
    pub started: u64,
    pub duration_ms: Option<u64>,
    /// `running`, `ok`, `failed`, `timeout` or `refused`.
    pub status: String,
    pub detail: String,
    pub output_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapsuleTargetView {
    pub instance: String,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub output_bytes: u64,
    /// The files it left in /out that the daemon still keeps (those of the last runs, and of
    /// the runs a schedule's `keep` holds), fetched with
    /// `GET /v1/capsules/runs/{run}/files/{instance}/{name}`.
    #[serde(default)]
    pub files: Vec<CapsuleFile>,
}

/// The protocol name of `paracloud debug`'s upgraded connection: after the 101 answer, the
/// connection carries the terminal's bytes both ways. Its size changes through
/// `POST /v1/capsules/runs/{run}/resize` with a [`TerminalSize`].
pub const DEBUG_UPGRADE: &str = "paracloud-tty";

/// The new size of a debug session's terminal, as the client's terminal has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// An application's manifest as it was deployed: what the dashboard shows and edits.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ManifestView {
    pub app: String,
    /// The manifest text as the user wrote it.
    pub source: String,
    /// The file it came from, as the CLI named it.
    pub origin: String,
    /// The directory its relative paths resolve against (the file's, when it was named by an
    /// absolute path; otherwise `/`).
    #[schema(value_type = String)]
    pub base_dir: PathBuf,
}

/// One second of one service, as the dashboard's charts draw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveService {
    /// Requests that arrived in the second.
    pub arrivals: u64,
    /// Requests answered with an error (5xx) or given up on.
    pub errors: u64,
    /// Response time percentiles of the requests answered in the second, in milliseconds.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests in flight at the end of the second.
    pub in_flight: u32,
    /// Instances starting or ready, and those ready.
    pub instances: u32,
    pub ready: u32,
    /// Cores used per instance, averaged over its instances and the second.
    pub cpu_per_instance: f64,
    /// Memory its instances use, in bytes, all together.
    pub memory_bytes: u64,
    /// Each instance (`api.2`) during the second.
    pub by_instance: std::collections::BTreeMap<String, LiveInstance>,
}

/// One instance during one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveInstance {
    /// Cores used, averaged over the second.
    pub cpu: f64,
    /// Memory used at the end of the second, in bytes (its cgroup's count).
    pub memory_bytes: u64,
    /// Requests it answered in the second.
    pub completions: u64,
}

/// One second of an application, each of its services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveSecond {
    /// When the second ended, in milliseconds since the Unix epoch.
    pub at: u64,
    pub services: std::collections::BTreeMap<String, LiveService>,
    /// Requests from one service to another in the second (`from` is `external` for requests
    /// from outside the application): the call graph.
    #[serde(default)]
    pub calls: Vec<LiveCall>,
}

/// Requests from one service to another during one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveCall {
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// What a page gets first on `GET /v1/apps/{app}/live`: the last minutes, the SLO to draw the
/// latency against, and the application's latest events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveHistory {
    pub app: String,
    /// The autoscaler's latency objective, when the application has one.
    pub slo_ms: Option<f64>,
    /// Its percentile, such as 0.95.
    pub slo_percentile: Option<f64>,
    pub seconds: Vec<LiveSecond>,
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `METHOD PATH` of a route, as the table at the top of this file starts its row.
    fn row<R: Route>() -> String {
        format!("//! | `{} {}", R::METHOD, R::PATH)
    }

    #[test]
    fn the_route_table_lists_every_route_once() {
        let rows = [
            row::<GetHealth>(),
            row::<Up>(),
            row::<ListApps>(),
            row::<GetApp>(),
            row::<Down>(),
            row::<ListInstances>(),
            row::<GetService>(),
            row::<Scale>(),
            row::<SetCpu>(),
            row::<Restart>(),
            row::<SetTraffic>(),
            row::<Logs>(),
            row::<Migrate>(),
            row::<ListEvents>(),
            row::<GetStats>(),
            row::<RestartDataplane>(),
            row::<ListImages>(),
            row::<InspectImage>(),
            row::<RemoveImage>(),
            row::<PruneImages>(),
            row::<BuildMicroImage>(),
            row::<ImportImages>(),
            row::<ExportImages>(),
            row::<BuildImage>(),
            row::<ImageSources>(),
            row::<PullImage>(),
            row::<PushImage>(),
            row::<ListCatalog>(),
            row::<SubmitTasks>(),
            row::<ListBatches>(),
            row::<GetBatch>(),
            row::<CancelBatch>(),
            row::<ListCapsules>(),
            row::<RunCapsule>(),
            row::<GetCapsuleRun>(),
            row::<GetCapsuleFile>(),
            row::<CapsuleHistory>(),
            row::<DebugSession>(),
            row::<ResizeTerminal>(),
            row::<GetWhoAmI>(),
            row::<CreateToken>(),
            row::<ListTokens>(),
            row::<RevokeToken>(),
            row::<OpenSession>(),
            row::<CloseSession>(),
            row::<GetOpenApi>(),
            row::<GetMetrics>(),
            row::<DashboardPage>(),
            row::<DashboardAsset>(),
            row::<GetManifest>(),
            row::<LiveFigures>(),
            row::<DebugTerminal>(),
        ];
        let table: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter(|l| l.starts_with("//! | `"))
            .collect();
        assert_eq!(table.len(), rows.len(), "a row per route, no more");
        for row in &rows {
            let found = table.iter().any(|line| {
                line.strip_prefix(row.as_str())
                    .is_some_and(|rest| rest.starts_with(['`', '?']))
            });
            assert!(found, "no row for {row}");
        }
    }

    #[test]
    fn routes_fill_their_paths_and_queries() {
        let scale = Scale {
            app: "shop".into(),
            service: "api@canary".into(),
            body: ScaleRequest { replicas: 2 },
        };
        assert_eq!(
            scale.target(),
            "/v1/apps/shop/services/api%40canary/replicas"
        );
        let down = Down {
            app: "shop".into(),
            volumes: false,
        };
        assert_eq!(down.target(), "/v1/apps/shop?volumes=false");
        assert_eq!(
            ListInstances { app: None }.target(),
            "/v1/instances",
            "no query without a value"
        );
        let file = GetCapsuleFile {
            run: 7,
            instance: "web.1".into(),
            name: "heap dump.txt".into(),
        };
        assert_eq!(
            file.target(),
            "/v1/capsules/runs/7/files/web.1/heap%20dump.txt"
        );
        let debug = DebugSession {
            instance: "web.1".into(),
            app: Some("shop".into()),
            command: vec!["ps".into(), "aux".into()],
            size: Some(TerminalSize {
                rows: 40,
                cols: 100,
            }),
        };
        assert_eq!(
            debug.target(),
            "/v1/capsules/debug?instance=web.1&app=shop&command=%5B%22ps%22%2C%22aux%22%5D&rows=40&cols=100"
        );
        let image = InspectImage {
            name: "127.0.0.1:5000/web:1".into(),
        };
        assert_eq!(
            image.target(),
            "/v1/images/inspect?name=127.0.0.1%3A5000%2Fweb%3A1"
        );
    }
}
