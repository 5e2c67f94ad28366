//! `pods/NAME/exec` through the real kube-rs client: a test's handler runs the command here, its
//! output streams back, and its end comes on the status channel as the kubelet tells it.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, AttachedProcess, PostParams};
use paracloud_kube_standin::{ExecHandler, ExecRequest, Gvr, Options, StandIn, Verb};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAMESPACE: &str = "shop";

/// A bound on every exec, so that a broken stream fails its test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

type Seen = Arc<Mutex<Vec<ExecRequest>>>;

/// Plays a kubelet whose containers are this machine: runs the argv here, and keeps each
/// request it was given.
fn local(seen: &Seen) -> ExecHandler {
    let seen = seen.clone();
    Arc::new(move |request: &ExecRequest| {
        seen.lock().unwrap().push(request.clone());
        let (program, args) = request
            .command
            .split_first()
            .ok_or_else(|| "no command".to_string())?;
        let mut command = Command::new(program);
        command.args(args);
        Ok(command)
    })
}

/// A stand-in with the namespace `shop` and its pods `p` (one container, `c`) and `two`
/// (containers `a` and `b`).
async fn cluster(exec: Option<ExecHandler>) -> (StandIn, Api<Pod>) {
    let standin = StandIn::start(Options {
        exec,
        ..Options::default()
    })
    .await
    .unwrap();
    let client = standin.client();
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    for (name, containers) in [("p", &["c"][..]), ("two", &["a", "b"])] {
        let containers: Vec<_> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "busybox:1"}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": containers},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    (standin, pods)
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn outputs() -> AttachParams {
    AttachParams::default()
        .container("c")
        .stdin(false)
        .stdout(true)
        .stderr(true)
}

/// What the process wrote on stdout and stderr, read to their ends, and the status it ended
/// with.
async fn finish(mut attached: AttachedProcess) -> (String, String, Status) {
    tokio::time::timeout(PATIENCE, async move {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let Some(mut reader) = attached.stdout() {
            reader.read_to_string(&mut stdout).await.unwrap();
        }
        if let Some(mut reader) = attached.stderr() {
            reader.read_to_string(&mut stderr).await.unwrap();
        }
        let status = attached.take_status().unwrap().await.expect("a status");
        attached.join().await.unwrap();
        (stdout, stderr, status)
    })
    .await
    .expect("the exec ends")
}

fn refusal(result: Result<AttachedProcess, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        Err(other) => panic!("expected an API error, got {other:?}"),
        Ok(_) => panic!("expected an API error, got a running exec"),
    }
}

#[tokio::test]
async fn output_streams_back_and_a_non_zero_exit_is_told_with_its_code() {
    let seen = Seen::default();
    let (_standin, pods) = cluster(Some(local(&seen))).await;
    let script = "echo out; echo err >&2; exit 3";
    let attached = pods.exec("p", sh(script), &outputs()).await.unwrap();
    let (stdout, stderr, status) = finish(attached).await;
    assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"));
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    assert_eq!(
        status.message.as_deref(),
        Some("command terminated with non-zero exit code: exit status 3")
    );
    let causes = status.details.unwrap().causes.unwrap();
    assert_eq!(causes[0].reason.as_deref(), Some("ExitCode"));
    assert_eq!(causes[0].message.as_deref(), Some("3"));
    assert_eq!(
        *seen.lock().unwrap(),
        [ExecRequest {
            namespace: NAMESPACE.into(),
            pod: "p".into(),
            container: "c".into(),
            command: sh(script),
        }]
    );
}

#[tokio::test]
async fn a_command_that_exits_0_succeeds_in_the_pods_only_container() {
    let seen = Seen::default();
    let (_standin, pods) = cluster(Some(local(&seen))).await;
    let attached = pods
        .exec("p", ["echo", "hi"], &AttachParams::default())
        .await
        .unwrap();
    let (stdout, stderr, status) = finish(attached).await;
    assert_eq!((stdout.as_str(), stderr.as_str()), ("hi\n", ""));
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(seen.lock().unwrap()[0].container, "c");
}

#[tokio::test]
async fn stdin_reaches_the_command_until_the_client_closes_it() {
    let (_standin, pods) = cluster(Some(local(&Seen::default()))).await;
    let params = outputs().stdin(true).stderr(false);
    let mut attached = pods.exec("p", ["cat"], &params).await.unwrap();
    let mut stdin = attached.stdin().unwrap();
    stdin.write_all(b"hello\nworld\n").await.unwrap();
    // The end of stdin is what lets `cat` exit.
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let (stdout, _, status) = finish(attached).await;
    assert_eq!(stdout, "hello\nworld\n");
    assert_eq!(status.status.as_deref(), Some("Success"));
}

#[tokio::test]
async fn output_streams_while_the_command_still_runs() {
    let (_standin, pods) = cluster(Some(local(&Seen::default()))).await;
    let params = outputs().stdin(true);
    let script = "echo ready; read line; echo got $line";
    let mut attached = pods.exec("p", sh(script), &params).await.unwrap();
    let mut stdout = attached.stdout().unwrap();
    let mut first = [0; 6];
    tokio::time::timeout(PATIENCE, stdout.read_exact(&mut first))
        .await
        .expect("the first line comes before the command ends")
        .unwrap();
    assert_eq!(&first, b"ready\n");
    let mut stdin = attached.stdin().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(PATIENCE, stdout.read_to_string(&mut rest))
        .await
        .expect("the command ends")
        .unwrap();
    assert_eq!(rest, "got go\n");
    let (_, _, status) = finish(attached).await;
    assert_eq!(status.status.as_deref(), Some("Success"));
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_on_the_status_channel() {
    let refusing: ExecHandler = Arc::new(|_: &ExecRequest| Err("image not pulled".to_string()));
    for (handler, command, why) in [
        (refusing, "true", "image not pulled"),
        (
            local(&Seen::default()),
            "/nonexistent/program",
            "cannot start \"/nonexistent/program\"",
        ),
    ] {
        let (_standin, pods) = cluster(Some(handler)).await;
        let attached = pods.exec("p", [command], &outputs()).await.unwrap();
        let (stdout, _, status) = finish(attached).await;
        assert_eq!(stdout, "");
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.reason.as_deref(), Some("InternalError"));
        let message = status.message.unwrap();
        assert!(
            message.starts_with("Internal error occurred: error executing command in container: ")
                && message.contains(why),
            "{message}"
        );
    }
}

#[tokio::test]
async fn refused_execs_come_back_as_api_errors_with_the_real_servers_words() {
    let seen = Seen::default();
    let (standin, pods) = cluster(Some(local(&seen))).await;
    let unknown = refusal(pods.exec("nobody", ["true"], &outputs()).await);
    assert_eq!(
        (
            unknown.code,
            unknown.reason.as_str(),
            unknown.message.as_str()
        ),
        (404, "NotFound", "pods \"nobody\" not found")
    );
    let unnamed = refusal(pods.exec("two", ["true"], &AttachParams::default()).await);
    assert_eq!(
        (
            unnamed.code,
            unnamed.reason.as_str(),
            unnamed.message.as_str()
        ),
        (
            400,
            "BadRequest",
            "a container name must be specified for pod two, choose one of: [a b]"
        )
    );
    let wrong = refusal(pods.exec("two", ["true"], &outputs()).await);
    assert_eq!(
        (wrong.code, wrong.message.as_str()),
        (400, "container c is not valid for pod two")
    );
    let nothing = refusal(pods.exec("p", Vec::<String>::new(), &outputs()).await);
    assert_eq!(
        (nothing.code, nothing.message.as_str()),
        (400, "you must specify at least 1 command")
    );
    standin
        .set_status(
            "kubelet",
            &Gvr::new("", "v1", "pods"),
            NAMESPACE,
            "p",
            json!({"phase": "Succeeded"}),
        )
        .unwrap();
    let completed = refusal(pods.exec("p", ["true"], &outputs()).await);
    assert_eq!(
        (completed.code, completed.message.as_str()),
        (
            400,
            "cannot exec into a container in a completed pod; current phase is Succeeded"
        )
    );
    assert!(seen.lock().unwrap().is_empty(), "no command ran");
}

#[tokio::test]
async fn without_a_kubelet_an_exec_is_an_error_dialing_backend() {
    let (_standin, pods) = cluster(None).await;
    let error = refusal(pods.exec("p", ["true"], &outputs()).await);
    assert_eq!((error.code, error.reason.as_str()), (500, ""));
    assert!(
        error.message.starts_with("error dialing backend: ") && error.message.contains("exec"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn an_exec_is_recorded_as_create_on_pods_exec() {
    let (standin, pods) = cluster(Some(local(&Seen::default()))).await;
    standin.clear_requests();
    let attached = pods.exec("p", ["true"], &outputs()).await.unwrap();
    finish(attached).await;
    refusal(pods.exec("nobody", ["true"], &outputs()).await);
    let requests = standin.requests();
    assert_eq!(requests.len(), 2);
    for (request, name) in requests.iter().zip(["p", "nobody"]) {
        assert_eq!(request.verb, Verb::Create);
        assert_eq!(
            request.rbac(),
            ("".into(), "pods/exec".into(), "create".into())
        );
        assert_eq!(request.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(request.name.as_deref(), Some(name));
    }
}

/// The answer to a request written by hand, the connection closed after it.
async fn answer(standin: &StandIn, request: &str) -> String {
    let address = standin.url().trim_start_matches("http://").to_string();
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, connection.read_to_string(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    answer
}

#[tokio::test]
async fn only_a_websocket_with_a_channel_protocol_is_upgraded() {
    let (standin, _pods) = cluster(Some(local(&Seen::default()))).await;
    let path = "/api/v1/namespaces/shop/pods/p/exec?command=true&stdout=true";
    let plain = answer(
        &standin,
        &format!("GET {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("Upgrade request required"), "{plain}");

    let spdy = answer(
        &standin,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: standin\r\nConnection: Upgrade, close\r\n\
             Upgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(spdy.starts_with("HTTP/1.1 400"), "{spdy}");
    assert!(spdy.contains("unable to upgrade connection"), "{spdy}");

    let old = answer(
        &standin,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: standin\r\nConnection: Upgrade, close\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: v3.channel.k8s.io\r\n\r\n"
        ),
    )
    .await;
    assert!(old.starts_with("HTTP/1.1 403"), "{old}");
    assert!(
        old.contains("requested protocol(s) are not supported"),
        "{old}"
    );
}
