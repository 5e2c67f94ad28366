//! The daemon's HTTP API answers bad requests with JSON errors that say what is wrong.

mod common;

use common::*;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use paracloud_api::{Client, ClientError, ErrorBody, GetService, Route, Up, UpRequest};
use paracloud_unix_http::UnixHttp;
use serde::de::DeserializeOwned;

const APP: &str = r#"
app = "api"
[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
"#;

/// Sends a request as written, malformed or not, and returns the status and the error body (or
/// the success body as error text).
async fn call(
    client: &UnixHttp,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, ErrorBody) {
    match client
        .send(method, path, Some(body.as_bytes().to_vec()))
        .await
        .map_err(ClientError::from)
    {
        Ok(response) => {
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                ErrorBody {
                    error: String::from_utf8_lossy(&bytes).into_owned(),
                    diagnostics: vec![],
                },
            )
        }
        Err(ClientError::Api { status, body }) => (status, body),
        Err(e) => panic!("{e}"),
    }
}

/// Sends a well-formed request the daemon must refuse; returns the status and the error body.
async fn refused<R: Route>(client: &Client, route: &R) -> (StatusCode, ErrorBody)
where
    R::Answer: DeserializeOwned + std::fmt::Debug,
{
    match client.call(route).await {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("{} {}: not refused: {other:?}", R::METHOD, route.target()),
    }
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let p = Platform::new();
    let manifest = p.manifest("api", APP);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("api"));
    let client = UnixHttp::new(p.root().join(paracloud_api::SOCKET_NAME), "paracloud");
    let typed = Client::new(p.root().join(paracloud_api::SOCKET_NAME));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (status, body) = call(&client, Method::POST, "/v1/apps", "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.error.starts_with("the request body is not valid"),
            "{}",
            body.error
        );

        let up = Up(UpRequest {
            source: "app = \"x\"\n[services.a]\nimage = \"host\"\nreplicas = -1\n".into(),
            origin: "remote.toml".into(),
            base_dir: "/".into(),
            ..Default::default()
        });
        let (status, body) = refused(&typed, &up).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let d = body
            .diagnostics
            .iter()
            .find(|d| d.field == "services.a.replicas")
            .expect("a located diagnostic");
        assert_eq!((d.file.as_str(), d.line), ("remote.toml", 4));

        let relative = Up(UpRequest {
            source: APP.into(),
            origin: "x.toml".into(),
            base_dir: "relative/dir".into(),
            ..Default::default()
        });
        let (status, body) = refused(&typed, &relative).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.error.contains("base_dir must be an absolute path"),
            "{}",
            body.error
        );

        let (status, body) = call(
            &client,
            Method::PUT,
            "/v1/apps/api/services/one/replicas",
            "{\"replicas\": -1}",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.error.contains("replicas"), "{}", body.error);

        let (status, body) =
            call(&client, Method::DELETE, "/v1/apps/api?volumes=perhaps", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.error.starts_with("the query string is not valid"),
            "{}",
            body.error
        );

        let nope = GetService {
            app: "nope".into(),
            service: "one".into(),
        };
        let (status, body) = refused(&typed, &nope).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "no application named nope (running: api)");

        let (status, body) = call(&client, Method::GET, "/v2/whatever", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.error.contains("no such API route"), "{}", body.error);
    });
    assert_eq!(pids(&p.ps("api")), before, "nothing changed");
}

#[test]
fn bad_image_requests_get_json_errors_and_leave_the_store_as_it_was() {
    let p = Platform::new();
    p.ok(&[
        "image",
        "build",
        "--from-binary",
        "/bin/true",
        "-t",
        "kept:1",
    ]);
    let client = UnixHttp::new(p.root().join(paracloud_api::SOCKET_NAME), "paracloud");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cases: &[(Method, &str, &str, StatusCode, &str)] = &[
            (
                Method::POST,
                "/v1/images/micro",
                r#"{"binary":"true","tag":"x:1"}"#,
                StatusCode::BAD_REQUEST,
                "the program true must be an absolute path",
            ),
            (
                Method::POST,
                "/v1/images/micro",
                r#"{"binary":"/bin/true","tag":"X"}"#,
                StatusCode::BAD_REQUEST,
                "must start with a lower-case letter",
            ),
            (
                Method::POST,
                "/v1/images/micro",
                "{}",
                StatusCode::BAD_REQUEST,
                "the request body is not valid",
            ),
            (
                Method::POST,
                "/v1/images/import",
                r#"{"path":"relative.tar"}"#,
                StatusCode::BAD_REQUEST,
                "must be an absolute path",
            ),
            (
                Method::POST,
                "/v1/images/export",
                r#"{"names":[],"path":"/tmp/x"}"#,
                StatusCode::BAD_REQUEST,
                "name at least one image",
            ),
            (
                Method::GET,
                "/v1/images/inspect?name=absent:1",
                "",
                StatusCode::NOT_FOUND,
                "no image absent:1 in the store",
            ),
            (
                Method::DELETE,
                "/v1/images?name=absent:1",
                "",
                StatusCode::NOT_FOUND,
                "no image absent:1 in the store",
            ),
            (
                Method::GET,
                "/v1/images/inspect",
                "",
                StatusCode::BAD_REQUEST,
                "the query string is not valid",
            ),
            (
                Method::POST,
                "/v1/images/build",
                r#"{"context":"/nonexistent","tag":"b:1"}"#,
                StatusCode::BAD_REQUEST,
                "the build context /nonexistent is not a directory",
            ),
            (
                Method::POST,
                "/v1/images/push",
                r#"{"reference":"kept:1","target":"app:1"}"#,
                StatusCode::BAD_REQUEST,
                "names no registry to push to",
            ),
            (
                Method::POST,
                "/v1/images/sources",
                r#"{"reference":"Bad"}"#,
                StatusCode::BAD_REQUEST,
                "must start with a lower-case letter or a digit",
            ),
            (
                Method::POST,
                "/v1/images/push",
                r#"{"reference":"kept:1","target":"127.0.0.1:1/x","password":"p"}"#,
                StatusCode::BAD_REQUEST,
                "a password needs a --username",
            ),
        ];
        for (method, path, body, status, message) in cases {
            let (got, error) = call(&client, method.clone(), path, body).await;
            assert_eq!(got, *status, "{method} {path}: {}", error.error);
            assert!(
                error.error.contains(message),
                "{method} {path}: {}",
                error.error
            );
        }
    });
    let listed = p.ok(&["images", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
