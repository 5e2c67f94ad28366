//! One type per route of the daemon's API: its method, path pattern, query, body and answer.
//! The daemon's router registers each handler at its route's [`Route::PATH`] and
//! [`Route::METHOD`]; the [`Client`](crate::Client) sends route values. Paths and query strings
//! are written, and percent-encoded, by `paracloud-unix-http`'s [`fill`] and [`Query`] alone.

use hyper::body::Incoming;
use hyper::Method;
use paracloud_unix_http::{fill, JsonLines, Query, Route, Upgraded};

use crate::{
    AppView, BuildEvent, BuildRequest, BuiltImage, CapsuleRunEvent, CapsuleRunRequest,
    CapsuleRunView, CapsuleView, CatalogView, CpuRequest, DataplaneRestartRequest,
    DataplaneRestartResponse, Event, ExportRequest, Health, ImageDetail, ImageRef, ImageSourceView,
    ImageView, ImportRequest, InstanceView, ManifestView, MicroImageRequest, MigrateRequest,
    MigrateResponse, PruneView, RemovedImages, ScaleRequest, ServiceView, SourcesRequest,
    TerminalSize, TrafficRequest, TransferEvent, TransferRequest, UpRequest, UpResponse,
};
use crate::{BatchDetail, BatchView, TasksRequest};
use crate::{CreatedToken, SessionRequest, TokenRequest, TokenView, WhoAmI};

/// A route whose request is its body alone: `Name(Body): METHOD "path" -> Answer`.
macro_rules! body_route {
    ($(#[$doc:meta])* $name:ident($body:ty): $method:ident $path:literal -> $answer:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub $body);

        impl Route for $name {
            const METHOD: Method = Method::$method;
            const PATH: &'static str = $path;
            type Body = $body;
            type Answer = $answer;

            fn body(&self) -> Option<&Self::Body> {
                Some(&self.0)
            }
        }
    };
}

/// `GET /v1/health`: the daemon's pid, version and state root: whether one answers.
#[derive(Debug, Clone)]
pub struct GetHealth;

impl Route for GetHealth {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/health";
    type Body = ();
    type Answer = Health;
}

body_route! {
    /// `POST /v1/apps`: deploy (create or update) an application from manifest text.
    Up(UpRequest): POST "/v1/apps" -> UpResponse
}

/// `GET /v1/apps`: every application.
#[derive(Debug, Clone)]
pub struct ListApps;

impl Route for ListApps {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps";
    type Body = ();
    type Answer = Vec<AppView>;
}

/// `GET /v1/apps/{app}`: one application.
#[derive(Debug, Clone)]
pub struct GetApp {
    pub app: String,
}

impl Route for GetApp {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}";
    type Body = ();
    type Answer = AppView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }
}

/// `DELETE /v1/apps/{app}`: remove an application (its volumes too with `volumes`); the answer is the application as its removal starts.
#[derive(Debug, Clone)]
pub struct Down {
    pub app: String,
    pub volumes: bool,
}

impl Route for Down {
    const METHOD: Method = Method::DELETE;
    const PATH: &'static str = "/v1/apps/{app}";
    type Body = ();
    type Answer = AppView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }

    fn query(&self) -> Option<String> {
        Query::new().pair("volumes", self.volumes).build()
    }
}

/// `GET /v1/instances`: the instances of one application, or of all.
#[derive(Debug, Clone)]
pub struct ListInstances {
    pub app: Option<String>,
}

impl Route for ListInstances {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/instances";
    type Body = ();
    type Answer = Vec<InstanceView>;

    fn query(&self) -> Option<String> {
        Query::new().maybe("app", self.app.as_ref()).build()
    }
}

/// `GET /v1/apps/{app}/services/{service}`: one service.
#[derive(Debug, Clone)]
pub struct GetService {
    pub app: String,
    pub service: String,
}

impl Route for GetService {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}";
    type Body = ();
    type Answer = ServiceView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }
}

/// `PUT /v1/apps/{app}/services/{service}/replicas`: set a service's replicas until the next `up`.
#[derive(Debug, Clone)]
pub struct Scale {
    pub app: String,
    pub service: String,
    pub body: ScaleRequest,
}

impl Route for Scale {
    const METHOD: Method = Method::PUT;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}/replicas";
    type Body = ScaleRequest;
    type Answer = ServiceView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `PUT /v1/apps/{app}/services/{service}/cpu`: set a service's CPU per instance until the next `up`.
#[derive(Debug, Clone)]
pub struct SetCpu {
    pub app: String,
    pub service: String,
    pub body: CpuRequest,
}

impl Route for SetCpu {
    const METHOD: Method = Method::PUT;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}/cpu";
    type Body = CpuRequest;
    type Answer = ServiceView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `POST /v1/apps/{app}/services/{service}/restart`: replace a service's instances one by one, make before break.
#[derive(Debug, Clone)]
pub struct Restart {
    pub app: String,
    pub service: String,
}

impl Route for Restart {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}/restart";
    type Body = ();
    type Answer = ServiceView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }
}

/// `PUT /v1/apps/{app}/services/{service}/traffic`: set the traffic shares of a service's revisions until the next `up`.
#[derive(Debug, Clone)]
pub struct SetTraffic {
    pub app: String,
    pub service: String,
    pub body: TrafficRequest,
}

impl Route for SetTraffic {
    const METHOD: Method = Method::PUT;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}/traffic";
    type Body = TrafficRequest;
    type Answer = ServiceView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `GET /v1/apps/{app}/logs`: the output of an application's instances (or of one service or instance, `target`): the last `tail` lines (default 100) as text, then, when following, the lines as they come.
#[derive(Debug, Clone)]
pub struct Logs {
    pub app: String,
    pub tail: Option<usize>,
    pub follow: bool,
    pub target: Option<String>,
}

impl Route for Logs {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/logs";
    type Body = ();
    type Answer = Incoming;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }

    fn query(&self) -> Option<String> {
        Query::new()
            .maybe("tail", self.tail.as_ref())
            .pair("follow", self.follow)
            .maybe("target", self.target.as_ref())
            .build()
    }
}

/// `POST /v1/apps/{app}/instances/{instance}/migrate`: move an instance to a new one, make before break; answered once the move is complete.
#[derive(Debug, Clone)]
pub struct Migrate {
    pub app: String,
    pub instance: String,
    pub body: MigrateRequest,
}

impl Route for Migrate {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/v1/apps/{app}/instances/{instance}/migrate";
    type Body = MigrateRequest;
    type Answer = MigrateResponse;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.instance])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `GET /v1/events`: the event log after event `after` (default: from the start), at most `limit` lines (default 100), of one application or all.
#[derive(Debug, Clone)]
pub struct ListEvents {
    pub after: Option<i64>,
    pub limit: Option<u32>,
    pub app: Option<String>,
}

impl Route for ListEvents {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/events";
    type Body = ();
    type Answer = Vec<Event>;

    fn query(&self) -> Option<String> {
        Query::new()
            .maybe("after", self.after.as_ref())
            .maybe("limit", self.limit.as_ref())
            .maybe("app", self.app.as_ref())
            .build()
    }
}

/// `GET /v1/stats`: the data plane's live figures, of one application's listeners or of all.
#[derive(Debug, Clone)]
pub struct GetStats {
    pub app: Option<String>,
}

impl Route for GetStats {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/stats";
    type Body = ();
    type Answer = paracloud_dataplane::Snapshot;

    fn query(&self) -> Option<String> {
        Query::new().maybe("app", self.app.as_ref()).build()
    }
}

body_route! {
    /// `POST /v1/dataplane/restart`: start a new data plane on the same listening sockets and,
    /// once it is ready, drain the old one; answered once the old one has ended.
    RestartDataplane(DataplaneRestartRequest): POST "/v1/dataplane/restart" -> DataplaneRestartResponse
}

/// `GET /v1/images`: the images of the store.
#[derive(Debug, Clone)]
pub struct ListImages;

impl Route for ListImages {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/images";
    type Body = ();
    type Answer = Vec<ImageView>;
}

/// `GET /v1/images/inspect`: what the store knows of one image.
#[derive(Debug, Clone)]
pub struct InspectImage {
    pub name: String,
}

impl Route for InspectImage {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/images/inspect";
    type Body = ();
    type Answer = ImageDetail;

    fn query(&self) -> Option<String> {
        Query::new().pair("name", &self.name).build()
    }
}

/// `DELETE /v1/images`: remove an image's reference; its blobs stay until a prune.
#[derive(Debug, Clone)]
pub struct RemoveImage {
    pub name: String,
}

impl Route for RemoveImage {
    const METHOD: Method = Method::DELETE;
    const PATH: &'static str = "/v1/images";
    type Body = ();
    type Answer = RemovedImages;

    fn query(&self) -> Option<String> {
        Query::new().pair("name", &self.name).build()
    }
}

/// `POST /v1/images/prune`: remove the blobs and unpacked layers no image and no service uses.
#[derive(Debug, Clone)]
pub struct PruneImages;

impl Route for PruneImages {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/v1/images/prune";
    type Body = ();
    type Answer = PruneView;
}

body_route! {
    /// `POST /v1/images/micro`: build a micro-image from a host program.
    BuildMicroImage(MicroImageRequest): POST "/v1/images/micro" -> BuiltImage
}

body_route! {
    /// `POST /v1/images/import`: import an OCI layout or a `docker save` archive.
    ImportImages(ImportRequest): POST "/v1/images/import" -> Vec<ImageRef>
}

body_route! {
    /// `POST /v1/images/export`: export images as an OCI layout that is also a `docker save` archive.
    ExportImages(ExportRequest): POST "/v1/images/export" -> Vec<ImageRef>
}

body_route! {
    /// `POST /v1/images/build`: build an image from a Containerfile; answered with its steps and the RUN steps' output as they come, one JSON line each.
    BuildImage(BuildRequest): POST "/v1/images/build" -> JsonLines<BuildEvent>
}

body_route! {
    /// `POST /v1/images/sources`: where a pull of an image would look, mirrors first.
    ImageSources(SourcesRequest): POST "/v1/images/sources" -> Vec<ImageSourceView>
}

body_route! {
    /// `POST /v1/images/pull`: pull an image from a registry; answered with its progress, one JSON line each.
    PullImage(TransferRequest): POST "/v1/images/pull" -> JsonLines<TransferEvent>
}

body_route! {
    /// `POST /v1/images/push`: push an image to a registry; answered with its progress, one JSON line each.
    PushImage(TransferRequest): POST "/v1/images/push" -> JsonLines<TransferEvent>
}

/// `GET /v1/catalog`: the services of the catalogue, with what the daemon's machine lacks to run
/// each.
#[derive(Debug, Clone)]
pub struct ListCatalog;

impl Route for ListCatalog {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/catalog";
    type Body = ();
    type Answer = Vec<CatalogView>;
}

/// `POST /v1/apps/{app}/services/{service}/tasks`: submit a bag of tasks to a task farm.
#[derive(Debug, Clone)]
pub struct SubmitTasks {
    pub app: String,
    pub service: String,
    pub body: TasksRequest,
}

impl Route for SubmitTasks {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/v1/apps/{app}/services/{service}/tasks";
    type Body = TasksRequest;
    type Answer = BatchView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.service])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `GET /v1/apps/{app}/batches`: the application's batches, oldest first.
#[derive(Debug, Clone)]
pub struct ListBatches {
    pub app: String,
}

impl Route for ListBatches {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/batches";
    type Body = ();
    type Answer = Vec<BatchView>;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }
}

/// `GET /v1/apps/{app}/batches/{batch}`: a batch and its tasks, their runs and output.
#[derive(Debug, Clone)]
pub struct GetBatch {
    pub app: String,
    pub batch: u64,
}

impl Route for GetBatch {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/batches/{batch}";
    type Body = ();
    type Answer = BatchDetail;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.batch.to_string()])
    }
}

/// `DELETE /v1/apps/{app}/batches/{batch}`: cancel a running batch.
#[derive(Debug, Clone)]
pub struct CancelBatch {
    pub app: String,
    pub batch: u64,
}

impl Route for CancelBatch {
    const METHOD: Method = Method::DELETE;
    const PATH: &'static str = "/v1/apps/{app}/batches/{batch}";
    type Body = ();
    type Answer = BatchView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app, &self.batch.to_string()])
    }
}

/// `GET /v1/capsules`: the capsules that can attach: the built-in ones and, with `app`, the application's own.
#[derive(Debug, Clone)]
pub struct ListCapsules {
    pub app: Option<String>,
}

impl Route for ListCapsules {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules";
    type Body = ();
    type Answer = Vec<CapsuleView>;

    fn query(&self) -> Option<String> {
        Query::new().maybe("app", self.app.as_ref()).build()
    }
}

body_route! {
    /// `POST /v1/capsules/run`: run a capsule on every running instance a selector matches; answered with the run's events, one JSON line each.
    RunCapsule(CapsuleRunRequest): POST "/v1/capsules/run" -> JsonLines<CapsuleRunEvent>
}

/// `GET /v1/capsules/history`: the recorded capsule runs, latest first: at most `limit` (default 50), of one application or all.
#[derive(Debug, Clone)]
pub struct CapsuleHistory {
    pub limit: Option<u32>,
    pub app: Option<String>,
}

impl Route for CapsuleHistory {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules/history";
    type Body = ();
    type Answer = Vec<CapsuleRunView>;

    fn query(&self) -> Option<String> {
        Query::new()
            .maybe("limit", self.limit.as_ref())
            .maybe("app", self.app.as_ref())
            .build()
    }
}

/// `GET /v1/capsules/runs/{run}`: one recorded capsule run, with the files it left that are
/// still kept.
#[derive(Debug, Clone)]
pub struct GetCapsuleRun {
    pub run: i64,
}

impl Route for GetCapsuleRun {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules/runs/{run}";
    type Body = ();
    type Answer = CapsuleRunView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.run.to_string()])
    }
}

/// `GET /v1/capsules/runs/{run}/files/{instance}/{name}`: a file a capsule run left in /out on one instance: its bytes.
#[derive(Debug, Clone)]
pub struct GetCapsuleFile {
    pub run: i64,
    pub instance: String,
    pub name: String,
}

impl Route for GetCapsuleFile {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules/runs/{run}/files/{instance}/{name}";
    type Body = ();
    type Answer = Incoming;

    fn path(&self) -> String {
        fill(
            Self::PATH,
            &[&self.run.to_string(), &self.instance, &self.name],
        )
    }
}

/// `GET /v1/capsules/debug`: `paracloud debug`, the debug capsule on a terminal. Sent with
/// `Upgrade: paracloud-tty` ([`crate::DEBUG_UPGRADE`]); answered 101 with the run's id in
/// `x-paracloud-run`, then the terminal's bytes go both ways on the connection.
#[derive(Debug, Clone)]
pub struct DebugSession {
    /// The instance, such as `web.1`.
    pub instance: String,
    pub app: Option<String>,
    /// The command to run; the capsule's interactive shell when empty.
    pub command: Vec<String>,
    /// The terminal's size, when the client has one.
    pub size: Option<TerminalSize>,
}

impl Route for DebugSession {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules/debug";
    type Body = ();
    type Answer = Upgraded;

    fn query(&self) -> Option<String> {
        // The command travels as a JSON array of strings, which always serialises.
        let command = (!self.command.is_empty())
            .then(|| serde_json::to_string(&self.command).ok())
            .flatten();
        Query::new()
            .pair("instance", &self.instance)
            .maybe("app", self.app.as_ref())
            .maybe("command", command)
            .maybe("rows", self.size.map(|s| s.rows))
            .maybe("cols", self.size.map(|s| s.cols))
            .build()
    }
}

/// `POST /v1/capsules/runs/{run}/resize`: the client's terminal changed size; so does the debug
/// session's. Answered 204, with no body.
#[derive(Debug, Clone)]
pub struct ResizeTerminal {
    pub run: i64,
    pub body: TerminalSize,
}

impl Route for ResizeTerminal {
    const METHOD: Method = Method::POST;
    const PATH: &'static str = "/v1/capsules/runs/{run}/resize";
    type Body = TerminalSize;
    type Answer = ();

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.run.to_string()])
    }

    fn body(&self) -> Option<&Self::Body> {
        Some(&self.body)
    }
}

/// `GET /v1/openapi.json`: this API's OpenAPI 3.1 description, generated from these route types
/// ([`crate::openapi`]).
#[derive(Debug, Clone)]
pub struct GetOpenApi;

impl Route for GetOpenApi {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/openapi.json";
    type Body = ();
    type Answer = serde_json::Value;
}

/// `GET /metrics`: the platform's metrics in Prometheus text format (version 0.0.4): instances,
/// restarts and exits, each instance's CPU, memory and pids, the autoscaler's decisions, capsule
/// runs, image pulls, and the data plane's traffic families.
#[derive(Debug, Clone)]
pub struct GetMetrics;

impl Route for GetMetrics {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/metrics";
    type Body = ();
    type Answer = Incoming;
}

/// `GET /v1/whoami`: the caller, as the daemon knows it (a token's name and role).
#[derive(Debug, Clone)]
pub struct GetWhoAmI;

impl Route for GetWhoAmI {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/whoami";
    type Body = ();
    type Answer = WhoAmI;
}

body_route! {
    /// `POST /v1/tokens`: create a token of the remote API (its secret is in the answer alone).
    CreateToken(TokenRequest): POST "/v1/tokens" -> CreatedToken
}

/// `GET /v1/tokens`: every token, revoked and expired ones included, without their secrets.
#[derive(Debug, Clone)]
pub struct ListTokens;

impl Route for ListTokens {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/tokens";
    type Body = ();
    type Answer = Vec<TokenView>;
}

/// `DELETE /v1/tokens/{name}`: revoke a token; it is refused from then on.
#[derive(Debug, Clone)]
pub struct RevokeToken {
    pub name: String,
}

impl Route for RevokeToken {
    const METHOD: Method = Method::DELETE;
    const PATH: &'static str = "/v1/tokens/{name}";
    type Body = ();
    type Answer = ();

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.name])
    }
}

body_route! {
    /// `POST /v1/session`: a browser logs in with a token, which comes back as the session's
    /// cookie (HttpOnly, Secure, SameSite=Strict); remote listener only.
    OpenSession(SessionRequest): POST "/v1/session" -> WhoAmI
}

/// `DELETE /v1/session`: the browser's session cookie is cleared.
#[derive(Debug, Clone)]
pub struct CloseSession;

impl Route for CloseSession {
    const METHOD: Method = Method::DELETE;
    const PATH: &'static str = "/v1/session";
    type Body = ();
    type Answer = ();
}

/// `GET /`: the dashboard's page, which loads its assets and then speaks to the API.
#[derive(Debug, Clone)]
pub struct DashboardPage;

impl Route for DashboardPage {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/";
    type Body = ();
    type Answer = Incoming;
}

/// `GET /assets/{name}`: one file of the dashboard, built into the daemon.
#[derive(Debug, Clone)]
pub struct DashboardAsset {
    pub name: String,
}

impl Route for DashboardAsset {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/assets/{name}";
    type Body = ();
    type Answer = Incoming;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.name])
    }
}

/// `GET /v1/apps/{app}/manifest`: the manifest an application was deployed from.
#[derive(Debug, Clone)]
pub struct GetManifest {
    pub app: String,
}

impl Route for GetManifest {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/manifest";
    type Body = ();
    type Answer = ManifestView;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }
}

/// `GET /v1/apps/{app}/live`: server-sent events of an application: first `history` (a
/// [`crate::LiveHistory`]: the last ten minutes, one figure a second), then each new second
/// (`second`, a [`crate::LiveSecond`]) and its new events (`events`, `[Event]`) as they come.
#[derive(Debug, Clone)]
pub struct LiveFigures {
    pub app: String,
}

impl Route for LiveFigures {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/apps/{app}/live";
    type Body = ();
    type Answer = Incoming;

    fn path(&self) -> String {
        fill(Self::PATH, &[&self.app])
    }
}

/// `GET /v1/capsules/debug/terminal`: the session of [`DebugSession`] as a WebSocket, for the
/// dashboard's terminal (a browser cannot send `Upgrade: paracloud-tty`). Its first message is
/// the text `{"run": ID}`; then binary messages carry the terminal's bytes both ways.
#[derive(Debug, Clone)]
pub struct DebugTerminal {
    pub instance: String,
    pub app: Option<String>,
    pub size: Option<TerminalSize>,
}

impl Route for DebugTerminal {
    const METHOD: Method = Method::GET;
    const PATH: &'static str = "/v1/capsules/debug/terminal";
    type Body = ();
    type Answer = Upgraded;

    fn query(&self) -> Option<String> {
        Query::new()
            .pair("instance", &self.instance)
            .maybe("app", self.app.as_ref())
            .maybe("rows", self.size.map(|s| s.rows))
            .maybe("cols", self.size.map(|s| s.cols))
            .build()
    }
}
