//! Compose files as users bring them: `paracloud up` finds one and runs it, a page is served
//! through its published port and fetched by another service by name, `convert` prints the
//! manifest it reads as, and a key Paracloud refuses fails `up` at its line.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Writes a project directory (a Compose file and a page to serve) and returns it.
fn project(p: &Platform, name: &str, compose: &str) -> PathBuf {
    let dir = p.root().join(name);
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "hello from compose\n").unwrap();
    std::fs::write(dir.join("compose.yaml"), compose).unwrap();
    dir
}

fn in_dir(p: &Platform, dir: &Path, args: &[&str]) -> std::process::Output {
    p.command().current_dir(dir).args(args).output().unwrap()
}

#[test]
fn a_compose_file_comes_up_and_serves_through_its_published_port() {
    let p = Platform::new();
    p.busybox_image();
    let port = p.port(0);
    let compose = format!(
        r#"name: pages
services:
  web:
    image: busybox:1
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv"]
    volumes:
      - ./site:/srv:ro
    ports:
      - "127.0.0.1:{port}:8080"
  client:
    image: busybox:1
    command:
      - /bin/busybox
      - sh
      - -c
      - while true; do /bin/busybox wget -q -O - http://web:8080/index.html; /bin/busybox sleep 1; done
    depends_on:
      - web
"#
    );
    let dir = project(&p, "pages", &compose);

    // `convert` prints a manifest that reads back as the same application.
    let out = in_dir(&p, &dir, &["convert"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains("app = \"pages\""), "{toml}");
    let converted = p.ok(&["convert", "-f", dir.join("compose.yaml").to_str().unwrap()]);
    assert_eq!(converted, toml, "the same file, found or named");

    // `up` without -f finds compose.yaml.
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "up failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let (status, body) = http_get(port, "/index.html").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from compose\n"));

    // The client reaches the web service by its name, as in Compose.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "pages", "client"]);
        if logs.contains("hello from compose") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never got the page: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    p.ok(&["down", "-a", "pages"]);
}

#[test]
fn a_refused_key_fails_up_at_its_line() {
    let p = Platform::new();
    let dir = project(
        &p,
        "refused",
        "services:\n  web:\n    image: busybox:1\n    privileged: true\n",
    );
    let out = in_dir(&p, &dir, &["up"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "compose.yaml:4:5: services.web.privileged: `privileged` is not supported: instances never run privileged"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint: remove `privileged`"), "{stderr}");
}
