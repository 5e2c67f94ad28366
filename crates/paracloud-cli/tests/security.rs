//! Least privilege as an attacker meets it: a local unprivileged user (uid 65534) and a root
//! process outside an instance try an instance's PaCI socket and the state root's files; the
//! instance itself, root or not, still speaks PaCI.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use paracloud_paci_sdk::{Error, Paci};

/// A service speaking PaCI from inside: its whoami and a weight change, in its log.
const SPEAKER: &str = r#"
import socket, time
def call(method, path, body=""):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/paracloud/paci.sock")
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: paci\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
    answer = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        answer += data
    head, _, rest = answer.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], rest
print("whoami", *call("GET", "/v1/whoami"), flush=True)
print("weight", *call("PUT", "/v1/weight", '{"weight": 50}'), flush=True)
time.sleep(100000)
"#;

fn manifest() -> String {
    let command = serde_json::to_string(&["/usr/bin/python3", "-c", SPEAKER]).unwrap();
    format!(
        r#"
app = "sec"

[services.web]
image = "host"
command = {command}
stop_signal = "KILL"
user = "65534:65534"
ports = [{{ port = 9000, protocol = "http" }}]
volumes = [{{ source = "data", target = "/data" }}]

[services.kv]
image = "host"
command = {command}
stop_signal = "KILL"
ports = [{{ port = 9001, protocol = "http" }}]
"#
    )
}

/// Runs `argv` as the unprivileged user nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(argv: &[&str]) -> Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .output()
        .expect("cannot run setpriv")
}

fn connect_as_nobody(socket: &Path) -> Output {
    as_nobody(&[
        "/usr/bin/python3",
        "-c",
        "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
        socket.to_str().unwrap(),
    ])
}

fn log_until(p: &Platform, instance: &str, needle: &str) -> String {
    let path = p
        .root()
        .join("instances/sec")
        .join(instance)
        .join("output.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log of {instance}: {log}\n--- daemon ---\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn another_user_reaches_neither_an_instance_s_paci_nor_the_state_root() {
    let p = Platform::new();
    // A root left open by hand (or an older daemon) is closed at start.
    std::fs::set_permissions(p.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = p.manifest("sec", &manifest());
    p.ok(&["up", "-f", path.to_str().unwrap()]);
    log_until(&p, "web.1", "weight");
    assert_eq!(mode(p.root()), 0o700);
    assert!(
        p.daemon_log().contains("was open to other users"),
        "{}",
        p.daemon_log()
    );

    // The instance's socket and directory are its user's alone.
    let web = p.paci_socket_of("sec", "web.1");
    let dir = web.parent().unwrap();
    assert_eq!((mode(dir), mode(&web)), (0o700, 0o600));
    for path in [dir, web.as_path()] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{}",
            path.display()
        );
    }
    let kv = p.paci_socket_of("sec", "kv.1");
    assert_eq!(std::fs::metadata(&kv).unwrap().uid(), 0);
    let volume = p.root().join("volumes/sec/data");
    assert_eq!(mode(&volume), 0o700);
    assert_eq!(std::fs::metadata(&volume).unwrap().uid(), 65534);

    // The finding: nobody connected to any instance's socket and read the state. Refused now,
    // even where the root's own mode would let it through.
    for socket in [&web, &kv] {
        let out = connect_as_nobody(socket);
        assert!(
            !out.status.success(),
            "nobody connected to {}",
            socket.display()
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in [
        "state.db",
        "daemon.log",
        "dataplane.json",
        "dataplane.log",
        "daemon.pid",
    ] {
        let path = p.root().join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
        let out = as_nobody(&["cat", path.to_str().unwrap()]);
        assert!(!out.status.success(), "nobody read {name}");
    }
    for wal in ["state.db-wal", "state.db-shm"] {
        let path = p.root().join(wal);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{wal}");
        }
    }
    let log = p.root().join("instances/sec/web.1/output.log");
    assert_eq!(mode(&log) & 0o007, 0, "{}", log.display());
}

#[test]
fn only_the_instance_s_own_processes_speak_through_its_socket() {
    let p = Platform::new();
    let path = p.manifest("sec", &manifest());
    p.ok(&["up", "-f", path.to_str().unwrap()]);

    // The instances themselves, as nobody and as root, are who they are and set their weight.
    for instance in ["web.1", "kv.1"] {
        let log = log_until(&p, instance, "weight");
        assert!(log.contains("whoami HTTP/1.1 200"), "{instance}: {log}");
        assert!(
            log.contains(&format!("\"instance\":\"{instance}\"")),
            "{instance}: {log}"
        );
        assert!(log.contains("weight HTTP/1.1 200"), "{instance}: {log}");
    }

    // Root outside the instance (this test) is refused by the peer check, and the daemon says
    // whom it turned away.
    let (status, body) = unix_http(&p.paci_socket_of("sec", "kv.1"), "GET", "/v1/whoami", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not one of its processes"), "{body}");
    let (status, body) = unix_http(
        &p.paci_socket_of("sec", "web.1"),
        "PUT",
        "/v1/weight",
        r#"{"weight": 0}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        p.daemon_log().contains("not a process of this instance"),
        "{}",
        p.daemon_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_has_one_event_stream_at_a_time() {
    let p = Platform::new();
    let path = p.manifest("sec", &manifest());
    p.ok(&["up", "-f", path.to_str().unwrap()]);
    log_until(&p, "kv.1", "weight");
    let paci = Paci::at(p.paci_socket("sec", "kv.1"));
    let first = paci.events().await.expect("the first stream opens");
    match paci.events().await {
        Err(Error::Refused { status, message }) => {
            assert_eq!(status.as_u16(), 409, "{message}");
            assert!(message.contains("already open"), "{message}");
        }
        other => panic!("a second stream: {other:?}"),
    }
    drop(first);
    // Once closed, the instance may open it again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match paci.events().await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no stream after the first closed: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On a server, the daemon comes back by itself: `daemon --install` writes the unit that runs
/// this root's daemon and restarts it whenever it ends.
#[test]
fn daemon_install_writes_a_unit_that_restarts_the_daemon() {
    let p = Platform::new();
    let units = p.root().join("units");
    let out = p.ok(&["daemon", "--install", "--unit-dir", units.to_str().unwrap()]);
    let written: Vec<_> = std::fs::read_dir(&units).unwrap().flatten().collect();
    assert_eq!(written.len(), 1, "{out}");
    let unit = std::fs::read_to_string(written[0].path()).unwrap();
    let root = p.root().to_str().unwrap();
    assert!(
        unit.contains(&format!("--root \"{root}\"")) && unit.contains(" daemon\n"),
        "{unit}"
    );
    assert!(unit.contains("Restart=always"), "{unit}");
    assert!(
        out.contains("systemctl daemon-reload && systemctl enable --now paracloud-"),
        "{out}"
    );
    // systemd's own check, where the machine has it.
    if let Ok(verify) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(written[0].path())
        .output()
    {
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    // Nothing was started: the unit does that.
    assert!(p.daemon_pid().is_none());
}
