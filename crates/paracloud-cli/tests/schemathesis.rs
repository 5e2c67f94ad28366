//! schemathesis (PyPI) against a live daemon's OpenAPI description, over the remote listener
//! (HTTPS, a token): no answer is a server error, and every answer conforms to the description
//! (status, content type, headers, body schema).

mod common;

use std::time::Duration;

use common::*;

const APP: &str = r#"
app = "probed"
[services.web]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
[services.web.capsules]
checksum = "read"
"#;

/// The operations left out, and why: each would act on the host outside the test's root, reach
/// outside the machine, cannot be followed by an HTTP client, or (the login) would make the
/// daemon refuse the test's own address.
const EXCLUDED: [(&str, &str); 12] = [
    (
        "Up",
        "a manifest may build from, mount or run any path of the host",
    ),
    ("BuildImage", "builds from any context directory of the host"),
    ("BuildMicroImage", "reads any program and file of the host"),
    ("ImportImages", "reads any path of the host"),
    ("ExportImages", "writes any path of the host"),
    ("PullImage", "reaches registries outside the machine"),
    ("PushImage", "reaches registries outside the machine"),
    (
        "RestartDataplane",
        "drains the data plane for as long as asked, up to 10 minutes",
    ),
    (
        "DebugSession",
        "switches protocols (101), which schemathesis cannot follow",
    ),
    (
        "DebugTerminal",
        "switches protocols to a WebSocket (101), which schemathesis cannot follow",
    ),
    (
        "LiveFigures",
        "a stream of server-sent events that ends only when its reader leaves",
    ),
    (
        "OpenSession",
        "its made-up tokens are guesses, and the brake on guessing then answers 429 to every request from the address",
    ),
];

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_description() {
    let p = Platform::new();
    let port = p.listen_remotely();
    let manifest = p.manifest("probed", APP);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    p.wait_ps("probed", Duration::from_secs(20), "web running", |ps| {
        ps.iter().any(|i| field(i, "state") == "running")
    });
    let token = p.token("schemathesis", "admin", &[]);

    let schemathesis = python_tool("schemathesis");
    // schemathesis keeps a cache in its working directory: a directory of the test's own.
    let scratch = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(&schemathesis);
    command
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("https://127.0.0.1:{port}/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // The daemon's certificate is self-signed, made at its first start.
        .args(["--tls-verify", "false"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "40", "--seed", "18", "--workers", "2"])
        .args(["--no-color", "--output-truncate", "false"]);
    for (operation, _why) in EXCLUDED {
        command.args(["--exclude-operation-id", operation]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/deps.sh", schemathesis.display()));
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n--- daemon log ---\n{}",
        p.daemon_log()
    );
    assert!(
        !report.contains("Rate limited"),
        "the daemon throttled the test, whose operations went untested: {report}"
    );
    // Every operation but the excluded ones and the description itself, which schemathesis
    // loads rather than tests.
    let tested = paracloud_api::openapi::ROUTES.len() - EXCLUDED.len() - 1;
    assert!(
        report.contains(&format!("Tested: {tested}")),
        "every operation but the excluded ones is tested: {report}"
    );
}
