//! A real application, from its Compose file and Dockerfiles as a Docker user writes them
//! (`tests/apps/counter`): a web front end and an API built from multi-stage Dockerfiles on
//! `busybox:1.36`, and `redis:7`, whose images come from Docker Hub's names through a local
//! registry acting as the `docker.io` mirror. It runs end to end through the CLI: the services
//! reach each other by name and alias, the front end cannot reach Redis (the network split), the
//! Redis password is a mounted secret, the API starts once Redis is healthy, and stopping an
//! `init: true` service is prompt.

mod common;
#[path = "../../paracloud-image/tests/common/registry.rs"]
mod registry_server;

use std::path::Path;

use common::*;
use registry_server::RegistryServer;

/// Builds `tag` from a Containerfile text on `p`.
fn build(p: &Platform, tag: &str, containerfile: &str) {
    let dir = p
        .root()
        .join(format!("ctx-{}", tag.replace([':', '/'], "-")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Containerfile"), containerfile).unwrap();
    p.ok(&["build", "-t", tag, dir.to_str().unwrap()]);
}

/// A registry holding what the application's files name on Docker Hub: busybox with its applets
/// installed, and Redis (this machine's, run as the official image runs it: `redis-server` as
/// the command, with `redis-cli` beside it).
fn docker_hub() -> RegistryServer {
    let registry = RegistryServer::start(None);
    let builder = Platform::new();
    builder.busybox_image();
    build(
        &builder,
        "busybox:1.36",
        "FROM busybox:1\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    );
    builder.ok(&[
        "image",
        "build",
        "--from-binary",
        "/usr/bin/redis-server",
        "--add",
        "/usr/bin/redis-cli",
        "-t",
        "redis-binary:7",
    ]);
    build(
        &builder,
        "redis:7",
        "FROM redis-binary:7\nENTRYPOINT []\nCMD [\"redis-server\"]\n",
    );
    for (local, hub) in [
        ("busybox:1.36", "library/busybox:1.36"),
        ("redis:7", "library/redis:7"),
    ] {
        builder.ok(&[
            "image",
            "push",
            local,
            &format!("{}/{hub}", registry.host()),
        ]);
    }
    registry
}

fn get(port: u16, path: &str) -> String {
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[test]
fn a_compose_application_runs_from_its_unmodified_files() {
    let hub = docker_hub();
    let p = Platform::new();
    std::fs::write(
        p.root().join("registries.toml"),
        format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{}\"]\nmirrors_only = true\n",
            hub.host()
        ),
    )
    .unwrap();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/counter");
    let port = p.port(0);
    let out = p
        .command()
        .current_dir(&app)
        .env("WEB_PORT", port.to_string())
        .args(["up", "--timeout", "240s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "up failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pulling redis:7"), "{stderr}");

    // Web -> api (by its alias) -> Redis (by name, with the secret password), counting.
    assert!(get(port, "/").contains("Hits are counted"));
    let logs = || p.ok(&["logs", "-a", "counter"]);
    assert_eq!(get(port, "/cgi-bin/count").trim(), "hits=1", "{}", logs());
    assert_eq!(get(port, "/cgi-bin/count").trim(), "hits=2", "{}", logs());

    // The front end is not on Redis's network: neither its name nor its address answer.
    let describe: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "counter", "cache", "-o", "json"])).unwrap();
    let cache = describe["address"].as_str().unwrap().to_owned();
    for target in ["cache:6379".to_owned(), format!("{cache}:6379")] {
        let body = get(port, &format!("/cgi-bin/probe?{target}"));
        assert_eq!(body.trim(), format!("unreachable {target}"), "{body}");
    }

    // The API started once Redis was healthy, not before.
    let events = p.events("counter");
    let healthy = events
        .lines()
        .position(|l| l.contains("cache.1") && l.contains("healthy"))
        .unwrap_or_else(|| panic!("no healthy event for cache: {events}"));
    let api_started = events
        .lines()
        .position(|l| l.contains("api.1") && l.contains("started"))
        .unwrap_or_else(|| panic!("no start of api: {events}"));
    assert!(healthy < api_started, "{events}");

    // busybox httpd, as pid 1, would ignore SIGTERM for the whole grace period (30 s); under its
    // init it gets the signal and ends.
    p.ok(&["scale", "-a", "counter", "api=0"]);
    let events = p.events("counter");
    assert!(
        !events
            .lines()
            .any(|l| l.contains("api.1") && l.contains("grace period over")),
        "{events}"
    );
    p.ok(&["down", "-a", "counter"]);
}
