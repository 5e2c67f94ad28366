//! Bad input at every entry point gets a precise error and leaves what runs untouched.

mod common;

use common::*;

const GOOD: &str = r#"
app = "good"
[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_grace_period = "1s"
ports = [{ port = 9000, publish = PUBLISH }]
"#;

#[test]
fn broken_manifests_get_precise_errors_and_leave_running_apps_untouched() {
    let p = Platform::new();
    let good = p.manifest("good", &GOOD.replace("PUBLISH", &p.port(1).to_string()));
    p.ok(&["up", "-f", good.to_str().unwrap()]);
    let before = pids(&p.ps("good"));

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax", "app = \"bad\"\n[services.x\nimage = \"host\"\n".into(), vec!["paracloud.toml:2:"]),
        (
            "unknown-key",
            "app = \"bad\"\n[services.x]\nimage = \"host\"\ncommand = [\"true\"]\nreplica = 2\n".into(),
            vec!["paracloud.toml:5:1", "replica", "replicas"],
        ),
        (
            "wrong-type",
            "app = \"bad\"\n[services.x]\nimage = \"host\"\ncommand = [\"true\"]\nreplicas = \"three\"\n".into(),
            vec!["paracloud.toml:5:12", "services.x.replicas"],
        ),
        (
            "cycle",
            "app = \"bad\"\n[services.a]\nimage = \"host\"\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n[services.b]\nimage = \"host\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n".into(),
            vec!["paracloud.toml:", "cycle", "a -> b -> a"],
        ),
        (
            "port-clash",
            "app = \"bad\"\n[services.a]\nimage = \"host\"\ncommand = [\"true\"]\nports = [{ port = 1, publish = 7 }]\n[services.b]\nimage = \"host\"\ncommand = [\"true\"]\nports = [{ port = 2, publish = 7 }]\n".into(),
            vec!["paracloud.toml:9:", "127.0.0.1:7"],
        ),
        (
            "missing-image-path",
            "app = \"bad\"\n[services.a]\nimage = \"dir:./no-such-rootfs\"\ncommand = [\"true\"]\n".into(),
            vec!["paracloud.toml:3:", "no-such-rootfs"],
        ),
    ];
    for (name, text, expected) in cases {
        let path = p.manifest(name, &text);
        let err = p.fails(&["up", "-f", path.to_str().unwrap()]);
        for e in expected {
            assert!(err.contains(e), "{name}: {e:?} missing from:\n{err}");
        }
        assert!(
            err.contains("hint:") || name == "syntax",
            "{name}: every semantic error says how to fix it:\n{err}"
        );
    }

    // A port already published by another application is refused by the daemon.
    let clash = p.manifest(
        "clash",
        &GOOD
            .replace("good", "other")
            .replace("PUBLISH", &p.port(1).to_string()),
    );
    let err = p.fails(&["up", "-f", clash.to_str().unwrap()]);
    assert!(
        err.contains("port clash") && err.contains("application good"),
        "{err}"
    );

    assert_eq!(
        pids(&p.ps("good")),
        before,
        "the running app was not touched"
    );
    assert!(p.ok(&["ps", "-A", "-o", "json"]).matches("\"app\"").count() == 1);
}

#[test]
fn command_line_mistakes_say_how_to_fix_them() {
    let p = Platform::new();
    let good = p.manifest("good", &GOOD.replace("PUBLISH", &p.port(2).to_string()));
    p.ok(&["up", "-f", good.to_str().unwrap()]);
    assert!(p
        .fails(&["scale", "-a", "good", "one"])
        .contains("write for example api=3"));
    assert!(p
        .fails(&["scale", "-a", "good", "one=-2"])
        .contains("whole number"));
    assert!(p
        .fails(&["scale", "-a", "good", "two=1"])
        .contains("has no service named two (it has: one)"));
    assert!(p
        .fails(&["scale", "-a", "good", "one=100000"])
        .contains("more than"));
    assert!(p
        .fails(&["logs", "-a", "good", "nope"])
        .contains("no service or instance named nope"));
    assert!(p
        .fails(&["ps", "-a", "nope"])
        .contains("no application named nope (running: good)"));
    assert!(p
        .fails(&["up", "-f", "/no/such/file.toml"])
        .contains("cannot read the manifest /no/such/file.toml"));
    assert_eq!(p.ps("good").len(), 1);
}

#[test]
fn a_command_that_cannot_run_fails_up_with_the_reason_and_the_output() {
    let p = Platform::new();
    let manifest = p.manifest(
        "nocmd",
        "app = \"nocmd\"\n[services.x]\nimage = \"host\"\ncommand = [\"no-such-program\", \"--flag\"]\n",
    );
    let err = p.fails(&["up", "-f", manifest.to_str().unwrap()]);
    assert!(err.contains("service x does not come up"), "{err}");
    assert!(err.contains("no-such-program"), "names the command: {err}");
    let crash = p.manifest(
        "crash",
        "app = \"crash\"\n[services.y]\nimage = \"host\"\ncommand = [\"/bin/sh\", \"-c\", \"echo config missing >&2; exit 3\"]\n",
    );
    let err = p.fails(&["up", "-f", crash.to_str().unwrap()]);
    assert!(
        err.contains("config missing"),
        "shows the last output: {err}"
    );
    let ps = p.ps("crash");
    assert_eq!(ps[0]["exit"]["code"].as_i64(), Some(3), "{ps:?}");
}

#[test]
fn regression_up_after_a_failed_deploy_does_not_fail_on_the_old_instance() {
    // The fixed manifest's `up` failed within milliseconds with the old revision's exit, its
    // restart count and its output, while the fixed instance came up seconds later.
    let p = Platform::new();
    let broken = p.manifest(
        "fix",
        "app = \"fix\"\n[services.web]\nimage = \"host\"\ncommand = [\"/bin/sh\", \"-c\", \"echo port is not a number >&2; exit 1\"]\n",
    );
    let err = p.fails(&["up", "-f", broken.to_str().unwrap()]);
    assert!(err.contains("service web does not come up"), "{err}");
    let fixed = p.manifest(
        "fix",
        "app = \"fix\"\n[services.web]\nimage = \"host\"\ncommand = [\"/bin/sh\", \"-c\", \"echo serving; exec sleep 100000\"]\nstop_grace_period = \"1s\"\n",
    );
    p.ok(&["up", "-f", fixed.to_str().unwrap()]);
    let ps = p.ps("fix");
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(field(&ps[0], "state"), "running", "{ps:#?}");
    assert_eq!(
        ps[0]["restarts"].as_u64(),
        Some(0),
        "a new revision starts afresh: {ps:#?}"
    );
    let describe = p.ok(&["describe", "-a", "fix", "web"]);
    let instances = describe
        .split("Instances:")
        .nth(1)
        .and_then(|rest| rest.split("Events:").next())
        .unwrap_or_default();
    // INSTANCE STATE PID ADDRESS UPTIME RESTARTS CAPACITY: the sixth column.
    assert!(
        instances
            .lines()
            .any(|l| l.contains("running") && l.split_whitespace().nth(5) == Some("0")),
        "describe shows the new instance with 0 restarts: {describe}"
    );
    let logs = p.ok(&["logs", "-a", "fix", "web"]);
    assert!(logs.contains("serving"), "{logs}");
    assert!(
        !logs.contains("port is not a number"),
        "the old revision's output is not the new instance's: {logs}"
    );
}

#[test]
fn regression_a_published_port_held_by_another_program_fails_up_with_the_holder_named() {
    // `up` said `deployed` and exited 0; only the data plane's log said the bind failed, and the
    // port was never served.
    let p = Platform::new();
    let port = p.port(2);
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let manifest = p.manifest("good", &GOOD.replace("PUBLISH", &port.to_string()));
    let refused = p.fails(&["up", "-f", manifest.to_str().unwrap()]);
    let me = std::process::id();
    assert!(
        refused.contains(&format!(
            "services.one.ports: 127.0.0.1:{port} is already in use by pid {me} ("
        )),
        "{refused}"
    );
    assert!(refused.contains("publish another host port"), "{refused}");
    assert!(p
        .fails(&["ps", "-a", "good"])
        .contains("no application named good"));

    drop(holder);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    assert_eq!(p.ps("good").len(), 1);
}

/// `paracloud events | head` panicked on the broken pipe; a command whose reader goes away
/// now ends quietly, as `ls | head` does.
#[test]
fn regression_a_command_piped_into_head_ends_quietly() {
    let bin = bin_dir().join("paracloud");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} completion bash | head -c 10 >/dev/null; echo status=${{PIPESTATUS[0]}}",
            bin.display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("status=141"), "ended by SIGPIPE: {stdout}");
}

/// `paracloud up` died of SIGPIPE, printing nothing, when its daemon closed the connection
/// while the request was still being written: the broken-pipe handling meant for `| head` had
/// made every write to a closed socket fatal. A daemon that hangs up mid-request is now an
/// error the command names.
#[test]
fn regression_a_daemon_hanging_up_mid_request_is_reported_not_a_silent_death() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    let root = tempfile::tempdir().unwrap();
    // A daemon that answers its health check and hangs up on every other request as soon as
    // it has read the request line, leaving a large body unread.
    let listener =
        std::os::unix::net::UnixListener::bind(root.path().join("paracloud.sock")).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            if line.starts_with("GET /v1/health ") {
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let body = r#"{"pid":1,"version":"0","root":"/"}"#;
                let _ = write!(
                    &stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    // A manifest far larger than a socket's buffer, so its upload is cut off mid-way.
    let manifest = root.path().join("paracloud.toml");
    let padding = "# padding to make the request outgrow the socket buffer\n".repeat(100_000);
    std::fs::write(
        &manifest,
        format!("{padding}app = \"big\"\n[services.one]\nimage = \"host\"\ncommand = [\"true\"]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin_dir().join("paracloud"))
        .arg("--root")
        .arg(root.path())
        .args(["up", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "ended by a signal: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
}
