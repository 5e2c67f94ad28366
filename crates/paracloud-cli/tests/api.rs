//! The daemon's HTTP API answers bad requests with JSON errors that say what is wrong.

mod common;

use common::*;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use paracloud_api::{Client, ClientError, ErrorBody};

const APP: &str = r#"
app = "api"
[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
"#;

/// Sends a request and returns the status and the error body (or the success body as error text).
async fn call(client: &Client, method: Method, path: &str, body: &str) -> (StatusCode, ErrorBody) {
    match client
        .send(method, path, Some(body.as_bytes().to_vec()))
        .await
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

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let p = Platform::new();
    let manifest = p.manifest("api", APP);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("api"));
    let client = Client::new(p.root().join(paracloud_api::SOCKET_NAME));
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

        let up = serde_json::json!({
            "source": "app = \"x\"\n[services.a]\nimage = \"host\"\nreplicas = -1\n",
            "origin": "remote.toml",
            "base_dir": "/",
        });
        let (status, body) = call(&client, Method::POST, "/v1/apps", &up.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let d = body
            .diagnostics
            .iter()
            .find(|d| d.field == "services.a.replicas")
            .expect("a located diagnostic");
        assert_eq!((d.file.as_str(), d.line), ("remote.toml", 4));

        let relative =
            serde_json::json!({"source": APP, "origin": "x.toml", "base_dir": "relative/dir"});
        let (status, body) = call(&client, Method::POST, "/v1/apps", &relative.to_string()).await;
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

        let (status, body) = call(&client, Method::GET, "/v1/apps/nope/services/one", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "no application named nope (running: api)");

        let (status, body) = call(&client, Method::GET, "/v2/whatever", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.error.contains("no such API route"), "{}", body.error);
    });
    assert_eq!(pids(&p.ps("api")), before, "nothing changed");
}
