//! Health checks gate readiness, and the rest of a service's spec reaches its instances: exec
//! probes, bind mounts, working directory, stop signal.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn an_exec_health_check_gates_readiness_and_the_spec_reaches_the_instance() {
    let p = Platform::new();
    let manifest = p.manifest(
        "spec",
        r#"
app = "spec"
[services.slow]
image = "host"
working_dir = "/srv"
volumes = ["./config:/srv/config:ro"]
stop_signal = "SIGUSR1"
stop_grace_period = "5s"
health = { exec = ["/bin/sh", "-c", "test -e /tmp/ready"], interval = "200ms" }
command = ["/bin/sh", "-c", "trap 'echo got usr1; exit 0' USR1; echo pwd: $(pwd); cat config/greeting; touch config/x 2>/dev/null || echo read-only; sleep 0.7; touch /tmp/ready; while true; do sleep 0.1; done"]
[services.never]
image = "host"
stop_grace_period = "1s"
health = { exec = ["/bin/false"], interval = "200ms", retries = 2 }
restart = "no"
command = ["/bin/sleep", "100000"]
"#,
    );
    let config = manifest.parent().unwrap().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("greeting"), "hello from the host\n").unwrap();

    let started = Instant::now();
    p.ok(&["up", "-f", manifest.to_str().unwrap(), "--detach"]);
    // Not ready before the probe passes, ready once it does.
    let ps = p.ps("spec");
    let slow = ps.iter().find(|i| field(i, "service") == "slow");
    if started.elapsed() < Duration::from_millis(500) {
        assert_ne!(slow.map(|i| field(i, "state")), Some("running"), "{ps:?}");
    }
    p.wait_ps(
        "spec",
        Duration::from_secs(20),
        "slow to pass its exec check",
        |ps| {
            ps.iter()
                .any(|i| field(i, "instance") == "slow.1" && field(i, "state") == "running")
        },
    );
    p.wait_ps(
        "spec",
        Duration::from_secs(20),
        "never to fail its exec check",
        |ps| {
            ps.iter()
                .any(|i| field(i, "instance") == "never.1" && field(i, "state") == "unhealthy")
        },
    );
    let logs = p.ok(&["logs", "-a", "spec", "slow.1"]);
    assert!(logs.contains("pwd: /srv"), "{logs}");
    assert!(logs.contains("hello from the host"), "{logs}");
    assert!(
        logs.contains("read-only"),
        "a :ro bind mount is read-only: {logs}"
    );

    // down sends the stop signal of the manifest, which this command handles.
    p.ok(&["scale", "-a", "spec", "slow=0"]);
    let events = p.ok(&["events", "-a", "spec"]);
    assert!(events.contains("stopping (scale-in): SIGUSR1"), "{events}");
    assert!(events.contains("slow.1     exited with code 0"), "{events}");
    assert!(!events.contains("grace period over"), "{events}");
}

#[test]
fn regression_a_failing_http_check_says_what_it_answered() {
    // The event was a bare `web.1 unhealthy`, `describe` had nothing to say and `up` ended with
    // `not ready after 3 s`.
    let p = Platform::new();
    let manifest = p.manifest(
        "nope",
        r#"
app = "nope"
[services.web]
image = "host"
command = ["/usr/bin/python3", "-m", "http.server", "8000", "--directory", "/tmp"]
ports = [{ port = 8000 }]
health = { http = "/nope", interval = "200ms", retries = 2 }
restart = "no"
stop_signal = "KILL"
"#,
    );
    let err = p.fails(&["up", "-f", manifest.to_str().unwrap(), "--timeout", "3s"]);
    assert!(
        err.contains("not ready after 3 s: web.1: GET /nope answered 404 ("),
        "{err}"
    );
    assert!(err.contains("failures in a row)"), "{err}");
    p.wait_ps(
        "nope",
        Duration::from_secs(20),
        "web.1 to be unhealthy",
        |ps| ps.iter().any(|i| field(i, "state") == "unhealthy"),
    );
    let events = p.ok(&["events", "-a", "nope"]);
    assert!(
        events.contains("unhealthy: GET /nope answered 404"),
        "{events}"
    );
    let describe = p.ok(&["describe", "-a", "nope", "web"]);
    assert!(
        describe.contains("health: web.1: GET /nope answered 404 ("),
        "{describe}"
    );
    let ps = p.ps("nope");
    assert_eq!(
        ps[0]["health_failure"]["reason"].as_str(),
        Some("GET /nope answered 404"),
        "{ps:?}"
    );
}

#[test]
fn regression_a_failing_exec_check_says_its_exit_code_and_output() {
    let p = Platform::new();
    let manifest = p.manifest(
        "check",
        r#"
app = "check"
[services.db]
image = "host"
command = ["/bin/sleep", "100000"]
health = { exec = ["/bin/sh", "-c", "echo checking; echo db not reachable; exit 3"], interval = "200ms", retries = 1 }
restart = "no"
stop_signal = "KILL"
"#,
    );
    let err = p.fails(&["up", "-f", manifest.to_str().unwrap(), "--timeout", "2s"]);
    assert!(
        err.contains("db.1: exec check exited with code 3: db not reachable ("),
        "{err}"
    );
    p.wait_ps(
        "check",
        Duration::from_secs(20),
        "db.1 to be unhealthy",
        |ps| ps.iter().any(|i| field(i, "state") == "unhealthy"),
    );
    let events = p.ok(&["events", "-a", "check"]);
    assert!(
        events.contains("unhealthy: exec check exited with code 3: db not reachable"),
        "{events}"
    );
    let describe = p.ok(&["describe", "-a", "check", "db"]);
    assert!(
        describe.contains("health: db.1: exec check exited with code 3: db not reachable"),
        "{describe}"
    );
}
