//! The API's OpenAPI 3.1 description, made from the route types rather than written by hand:
//! one operation per route of [`ROUTES`](self#routes), its path parameters read from
//! [`Route::PATH`], its query parameters from the query type the daemon reads, its request body
//! from [`Route::Body`] and its answer from [`Route::Answer`]; every refusal is the `default`
//! answer, an [`ErrorBody`]. The schemas come from the wire types' `ToSchema` derives (utoipa).
//! The daemon serves the document at `GET /v1/openapi.json`; docs/openapi.json is a copy that a
//! test keeps equal to it.

use std::any::TypeId;

use hyper::body::Incoming;
use hyper::Method;
use paracloud_unix_http::{JsonLines, Route, Upgraded};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, KnownFormat, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, RefOr, Required, ResponseBuilder, ResponsesBuilder, Schema,
};
use utoipa::{IntoParams, ToSchema};

use crate::queries::*;
use crate::routes::*;
use crate::*;

/// The schemas an operation refers to, gathered for the document's components.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// What a successful answer of a route is, in OpenAPI's words: its status and its content.
pub trait Answer {
    /// The status (`200`, `101`, `204`) and the response, its schemas pushed to `schemas`.
    fn response(schemas: &mut Schemas) -> (&'static str, utoipa::openapi::Response);
}

/// A reference to `T`'s schema, `T` and the schemas it refers to pushed to `schemas`.
fn reference<T: ToSchema>(schemas: &mut Schemas) -> RefOr<Schema> {
    let name = T::name().into_owned();
    schemas.push((name.clone(), T::schema()));
    T::schemas(schemas);
    Ref::from_schema_name(name).into()
}

fn json(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

/// JSON answers of one wire type.
macro_rules! json_answers {
    ($($ty:ty),* $(,)?) => {$(
        impl Answer for $ty {
            fn response(schemas: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
                ("200", json("the answer", reference::<$ty>(schemas)))
            }
        }
    )*};
}

json_answers!(
    Health,
    UpResponse,
    AppView,
    ServiceView,
    MigrateResponse,
    DataplaneRestartResponse,
    ImageDetail,
    RemovedImages,
    PruneView,
    BuiltImage,
    paracloud_dataplane::Snapshot,
    WhoAmI,
    CreatedToken,
    ManifestView,
    BatchView,
    BatchDetail,
    CapsuleRunView,
);

impl<T: ToSchema> Answer for Vec<T> {
    fn response(schemas: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        let items = ArrayBuilder::new().items(reference::<T>(schemas)).build();
        ("200", json("the answer, a list", items.into()))
    }
}

/// The OpenAPI document itself: any JSON value.
impl Answer for serde_json::Value {
    fn response(_: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        ("200", json("a JSON document", Schema::default().into()))
    }
}

impl<T: ToSchema> Answer for JsonLines<T> {
    fn response(schemas: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        let response = ResponseBuilder::new()
            .description("a stream of JSON lines, each one of this schema, sent as they come")
            .content(
                crate::JSON_LINES,
                ContentBuilder::new()
                    .schema(Some(reference::<T>(schemas)))
                    .build(),
            )
            .build();
        ("200", response)
    }
}

/// Text or bytes as they come: logs, a capsule's file, the metrics.
impl Answer for Incoming {
    fn response(_: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        let text = ObjectBuilder::new().schema_type(Type::String).build();
        let bytes = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .build();
        let text_of = || Some(ObjectBuilder::new().schema_type(Type::String).build());
        let response = ResponseBuilder::new()
            .description("text (logs, metrics, the dashboard's files, its live figures as server-sent events) or bytes (a file), streamed as they come")
            .content(
                "text/plain",
                ContentBuilder::new().schema(Some(text)).build(),
            )
            .content(
                "text/html",
                ContentBuilder::new().schema(text_of()).build(),
            )
            .content(
                "text/javascript",
                ContentBuilder::new().schema(text_of()).build(),
            )
            .content("text/css", ContentBuilder::new().schema(text_of()).build())
            .content(
                "image/svg+xml",
                ContentBuilder::new().schema(text_of()).build(),
            )
            .content(
                "text/event-stream",
                ContentBuilder::new().schema(text_of()).build(),
            )
            .content(
                "application/octet-stream",
                ContentBuilder::new().schema(Some(bytes)).build(),
            )
            .build();
        ("200", response)
    }
}

impl Answer for Upgraded {
    fn response(_: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        let response = ResponseBuilder::new()
            .description(
                "switching protocols: the connection carries the terminal's bytes both ways",
            )
            .build();
        ("101", response)
    }
}

impl Answer for () {
    fn response(_: &mut Schemas) -> (&'static str, utoipa::openapi::Response) {
        (
            "204",
            ResponseBuilder::new().description("done, no body").build(),
        )
    }
}

/// The schema and meaning of a path parameter, by its name in [`Route::PATH`].
fn path_parameter(name: &str) -> Option<(Schema, &'static str)> {
    let string = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .build()
            .into()
    };
    Some(match name {
        "app" => (string(), "the application's name"),
        "service" => (
            string(),
            "the service's name, such as `api` or `api@canary`",
        ),
        "instance" => (string(), "the instance's name, such as `api.2`"),
        "name" => (
            string(),
            "a name: the token's, that of a file in the capsule run's /out, or a dashboard file's (`app.js`)",
        ),
        "batch" => (
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .build()
                .into(),
            "a batch's number",
        ),
        "run" => (
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .build()
                .into(),
            "a capsule run's id",
        ),
        _ => return None,
    })
}

/// The names of a path pattern's parameters, in order.
fn parameter_names(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::GET => HttpMethod::Get,
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        _ => HttpMethod::Trace,
    }
}

/// The document as it is built, route by route.
struct Document {
    paths: PathsBuilder,
    schemas: Schemas,
}

impl Document {
    /// Adds route `R`, whose query string the daemon reads as `Q`.
    fn add<R, Q>(&mut self, name: &str)
    where
        R: Route,
        R::Body: ToSchema + 'static,
        R::Answer: Answer,
        Q: IntoParams,
    {
        let mut operation = OperationBuilder::new().operation_id(Some(name));
        for parameter in parameter_names(R::PATH) {
            let (schema, description) = path_parameter(parameter)
                .unwrap_or_else(|| panic!("{}: no schema for path parameter {parameter}", R::PATH));
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name(parameter)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(description))
                    .schema(Some(schema)),
            );
        }
        operation = operation.parameters(Some(Q::into_params(|| Some(ParameterIn::Query))));
        if TypeId::of::<R::Body>() != TypeId::of::<()>() {
            let body = reference::<R::Body>(&mut self.schemas);
            operation = operation.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(body)).build(),
                    )
                    .build(),
            ));
        }
        let (status, answer) = R::Answer::response(&mut self.schemas);
        let refusal = json(
            "a refusal: the status says which (400 bad input, 403 not allowed, 404 not found, 409 conflict, 422 cannot be done as asked, 5xx the daemon failed), the body what went wrong and how to fix it",
            reference::<ErrorBody>(&mut self.schemas),
        );
        let responses = ResponsesBuilder::new()
            .response(status, answer)
            .response("default", refusal)
            .build();
        let operation = operation.responses(responses).build();
        let paths = std::mem::take(&mut self.paths);
        self.paths = paths.path(
            R::PATH,
            utoipa::openapi::PathItem::new(http_method(&R::METHOD), operation),
        );
    }
}

/// Every route of the API with the type of its query string: the one list the document is
/// made from (a test checks that it names every route type of `routes.rs`).
macro_rules! routes {
    ($($route:ident => $query:ty),* $(,)?) => {
        fn add_routes(document: &mut Document) {
            $(document.add::<$route, $query>(stringify!($route));)*
        }

        /// The route types the document is made from, by name.
        pub const ROUTES: &[&str] = &[$(stringify!($route)),*];
    };
}

routes! {
    GetHealth => NoQuery,
    Up => NoQuery,
    ListApps => NoQuery,
    GetApp => NoQuery,
    Down => DownQuery,
    ListInstances => AppQuery,
    GetService => NoQuery,
    Scale => NoQuery,
    SetCpu => NoQuery,
    Restart => NoQuery,
    SetTraffic => NoQuery,
    Logs => LogsQuery,
    Migrate => NoQuery,
    ListEvents => EventsQuery,
    GetStats => AppQuery,
    RestartDataplane => NoQuery,
    ListImages => NoQuery,
    InspectImage => ImageQuery,
    RemoveImage => ImageQuery,
    PruneImages => NoQuery,
    BuildMicroImage => NoQuery,
    ImportImages => NoQuery,
    ExportImages => NoQuery,
    BuildImage => NoQuery,
    ImageSources => NoQuery,
    PullImage => NoQuery,
    PushImage => NoQuery,
    ListCatalog => NoQuery,
    SubmitTasks => NoQuery,
    ListBatches => NoQuery,
    GetBatch => NoQuery,
    CancelBatch => NoQuery,
    ListCapsules => CapsulesQuery,
    RunCapsule => NoQuery,
    CapsuleHistory => HistoryQuery,
    GetCapsuleRun => NoQuery,
    GetCapsuleFile => NoQuery,
    DebugSession => DebugQuery,
    ResizeTerminal => NoQuery,
    GetWhoAmI => NoQuery,
    CreateToken => NoQuery,
    ListTokens => NoQuery,
    RevokeToken => NoQuery,
    OpenSession => NoQuery,
    CloseSession => NoQuery,
    GetOpenApi => NoQuery,
    GetMetrics => NoQuery,
    DashboardPage => NoQuery,
    DashboardAsset => NoQuery,
    GetManifest => NoQuery,
    LiveFigures => NoQuery,
    DebugTerminal => TerminalQuery,
}

/// The API's OpenAPI 3.1 document.
pub fn document() -> OpenApi {
    let mut document = Document {
        paths: PathsBuilder::new(),
        schemas: Vec::new(),
    };
    add_routes(&mut document);
    // The remote listener takes a token (`Authorization: Bearer`) or a browser's session
    // cookie; the Unix socket takes neither (the caller is the socket's peer).
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("paracloud_session"))),
        );
    for (name, schema) in document.schemas {
        components = components.schema(name, schema);
    }
    let info = InfoBuilder::new()
        .title("Paracloud API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The Paracloud daemon's HTTP/JSON API: on its Unix socket (<root>/paracloud.sock), \
             where the caller is the socket's peer, and on the remote listener \
             (`paracloud daemon --listen`, HTTPS), where it is a token's. Generated from the \
             route types of the paracloud-api crate.",
        ))
        .build();
    OpenApiBuilder::new()
        .info(info)
        .paths(document.paths.build())
        .components(Some(components.build()))
        .security(Some([
            SecurityRequirement::new("token", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]))
        .build()
}

/// The document as docs/openapi.json holds it: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("an OpenAPI document always serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the route types `routes.rs` declares: every `impl Route for X` and every
    /// `body_route!` invocation.
    fn declared_routes() -> Vec<String> {
        let source = include_str!("routes.rs");
        let mut names = Vec::new();
        for line in source.lines() {
            // (`$name` is body_route!'s own impl, whose uses are read below.)
            if let Some(rest) = line
                .trim()
                .strip_prefix("impl Route for ")
                .filter(|r| !r.starts_with('$'))
            {
                names.push(rest.trim_end_matches(" {").to_string());
            }
        }
        let mut rest = source;
        while let Some(at) = rest.find("body_route! {") {
            rest = &rest[at + "body_route! {".len()..];
            let invocation = rest
                .lines()
                .find(|l| l.contains('(') && !l.trim().starts_with("///"));
            if let Some(line) = invocation {
                names.push(line.trim().split('(').next().unwrap().to_string());
            }
        }
        names
    }

    #[test]
    fn every_route_type_is_in_the_document() {
        let declared = declared_routes();
        assert!(declared.len() > 30, "found the route types: {declared:?}");
        for name in &declared {
            assert!(
                ROUTES.contains(&name.as_str()),
                "route type {name} is missing from the OpenAPI list in openapi.rs"
            );
        }
        assert_eq!(declared.len(), ROUTES.len(), "{declared:?}");
        let document = serde_json::to_value(document()).unwrap();
        let operations: usize = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, ROUTES.len(), "one operation per route");
    }

    #[test]
    fn operations_carry_their_parameters_body_and_answers() {
        let document = serde_json::to_value(document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let scale = &document["paths"]["/v1/apps/{app}/services/{service}/replicas"]["put"];
        assert_eq!(scale["operationId"], "Scale");
        let names: Vec<&str> = scale["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app", "service"]);
        assert_eq!(
            scale["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ScaleRequest"
        );
        assert_eq!(
            scale["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ServiceView"
        );
        assert_eq!(
            scale["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        let logs = &document["paths"]["/v1/apps/{app}/logs"]["get"];
        let query: Vec<&str> = logs["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(query, ["target", "tail", "follow"]);
        let pull = &document["paths"]["/v1/images/pull"]["post"]["responses"]["200"];
        assert_eq!(
            pull["content"]["application/x-ndjson"]["schema"]["$ref"],
            "#/components/schemas/TransferEvent"
        );
        let debug = &document["paths"]["/v1/capsules/debug"]["get"]["responses"];
        assert!(debug.get("101").is_some(), "{debug}");
        for schema in ["Diagnostic", "ExitInfo", "Snapshot", "BackendSnapshot"] {
            assert!(
                document["components"]["schemas"].get(schema).is_some(),
                "no schema {schema}"
            );
        }
    }

    /// docs/openapi.json is the generated document; `PARACLOUD_WRITE_OPENAPI=1 cargo test -p
    /// paracloud-api` writes it again after a change of the API.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = document_json();
        if std::env::var_os("PARACLOUD_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the API's routes: write it again with \
             `PARACLOUD_WRITE_OPENAPI=1 cargo test -p paracloud-api the_checked_in_document`"
        );
    }

    /// A program of the Python virtual environment scripts/deps.sh makes:
    /// `$XDG_CACHE_HOME/paracloud/venv` (`~/.cache/paracloud/venv`).
    fn python_tool(name: &str) -> std::path::PathBuf {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .expect("HOME or XDG_CACHE_HOME is set");
        cache.join("paracloud/venv/bin").join(name)
    }

    /// A real validator of OpenAPI 3.1 (PyPI's openapi-spec-validator, installed by
    /// scripts/deps.sh into the cache's virtual environment) accepts the document.
    #[test]
    fn the_document_is_valid_openapi_3_1() {
        let validator = python_tool("openapi-spec-validator");
        let file =
            std::env::temp_dir().join(format!("paracloud-openapi-{}.json", std::process::id()));
        std::fs::write(&file, document_json()).unwrap();
        let output = std::process::Command::new(&validator)
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}: run scripts/deps.sh", validator.display()));
        let _ = std::fs::remove_file(&file);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the document is not valid: {text}");
        assert!(text.contains("OK"), "{text}");
    }
}
