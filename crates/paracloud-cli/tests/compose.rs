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

/// The sandbox keys of a Compose file reach the instance: an init that passes the stop signal
/// on (a shell as pid 1 would ignore it), a read-only root beside writable tmpfs mounts, the
/// size of /dev/shm, resource limits and namespaced kernel parameters.
#[test]
fn sandbox_keys_shape_the_instance_and_init_passes_the_stop_signal_on() {
    let p = Platform::new();
    p.busybox_image();
    let script = "cat /proc/self/limits | grep -i 'open files'; \
        echo somaxconn=$$(cat /proc/sys/net/core/somaxconn); \
        touch /rootfile 2>/dev/null && echo root-writable || echo root-read-only; \
        touch /cache/x && echo cache-writable; \
        grep -E ' /(cache|dev/shm) ' /proc/mounts; \
        echo host=$$(hostname); echo pid=$$$$; echo ready; sleep 1000";
    let compose = format!(
        r#"name: sandboxed
services:
  boxed:
    image: busybox:1
    command: ["/bin/busybox", "sh", "-c", "{script}"]
    init: true
    hostname: boxed-host
    read_only: true
    tmpfs: ["/cache:size=8m,mode=1777"]
    shm_size: 32m
    ulimits:
      nofile: {{soft: 1000, hard: 2000}}
    sysctls:
      net.core.somaxconn: 777
    deploy:
      resources:
        reservations: {{memory: 16m, cpus: '0.5'}}
    stop_grace_period: 60s
  bare:
    image: busybox:1
    command: ["/bin/busybox", "sh", "-c", "echo ready; sleep 1000"]
    stop_grace_period: 2s
"#
    );
    let dir = project(&p, "sandboxed", &compose);
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "up failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = p.ok(&["logs", "-a", "sandboxed", "boxed"]);
        let bare = p.ok(&["logs", "-a", "sandboxed", "bare"]);
        if logs.contains("ready") && bare.contains("ready") {
            break logs;
        }
        assert!(Instant::now() < deadline, "never ready: {logs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let open_files = logs
        .lines()
        .find(|l| l.contains("open files"))
        .unwrap_or_default();
    let words: Vec<&str> = open_files.split_whitespace().collect();
    assert!(words.contains(&"1000") && words.contains(&"2000"), "{logs}");
    assert!(logs.contains("somaxconn=777"), "{logs}");
    assert!(logs.contains("host=boxed-host"), "{logs}");
    assert!(logs.contains("root-read-only"), "{logs}");
    assert!(logs.contains("cache-writable"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(" /cache tmpfs") && l.contains("size=8192k")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains(" /dev/shm tmpfs") && l.contains("size=32768k")),
        "{logs}"
    );
    // The shell is not pid 1: the init is.
    assert!(!logs.contains("pid=1\n"), "{logs}");
    // The reservations are the instance cgroup's soft limits (v1 here, or v2).
    let id = "sandboxed-boxed-1";
    let parent = p.cgroup_parent();
    let read = |candidates: &[String]| {
        candidates
            .iter()
            .find_map(|c| std::fs::read_to_string(c).ok())
            .map(|v| v.trim().to_owned())
    };
    let low = read(&[
        format!("/sys/fs/cgroup/memory/{parent}/{id}/memory.soft_limit_in_bytes"),
        format!("/sys/fs/cgroup/{parent}/{id}/memory.low"),
    ]);
    assert_eq!(low.as_deref(), Some("16777216"));
    let shares = read(&[
        format!("/sys/fs/cgroup/cpu,cpuacct/{parent}/{id}/cpu.shares"),
        format!("/sys/fs/cgroup/cpu/{parent}/{id}/cpu.shares"),
        format!("/sys/fs/cgroup/{parent}/{id}/cpu.weight"),
    ]);
    assert!(
        matches!(shares.as_deref(), Some("512" | "20")),
        "{shares:?}"
    );

    // Stopped by a scale to zero, which keeps the application and its events.
    p.ok(&["scale", "-a", "sandboxed", "boxed=0", "bare=0"]);
    let events = p.events("sandboxed");
    let killed: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("grace period over"))
        .collect();
    // The shell without an init ignores SIGTERM as pid 1 and is killed after its grace period;
    // the one under an init gets the signal and ends.
    assert!(killed.iter().any(|l| l.contains("bare.1")), "{events}");
    assert!(!killed.iter().any(|l| l.contains("boxed.1")), "{events}");
    p.ok(&["down", "-a", "sandboxed"]);
}

/// Secrets and configs are the host's files, read-only in the instance; a profile's services
/// run only when it is asked for; `extends` brings the base service's keys.
#[test]
fn secrets_profiles_and_extends_work_as_in_compose() {
    let p = Platform::new();
    p.busybox_image();
    let compose = r#"name: filed
secrets:
  token: {file: ./token.txt}
configs:
  app: {file: ./app.conf}
volumes:
  shared: {external: true, name: team_data}
x-base: &base
  image: busybox:1
services:
  base:
    <<: *base
    command: ["/bin/busybox", "sleep", "1000"]
    environment: [GREETING=hello]
  reader:
    extends: base
    command: ["/bin/busybox", "sh", "-c", "echo $$GREETING; cat /run/secrets/token /etc/app.conf /shared/note; echo x > /run/secrets/token || echo secret-read-only; sleep 1000"]
    volumes: [shared:/shared]
    secrets: [token]
    configs: [{source: app, target: /etc/app.conf}]
  debug:
    extends: base
    profiles: [tools]
"#;
    let dir = project(&p, "filed", compose);
    std::fs::write(dir.join("token.txt"), "s3cret\n").unwrap();
    std::fs::write(dir.join("app.conf"), "mode=fast\n").unwrap();

    // An external volume is the machine's: `up` wants it made first.
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the external volume `team-data` does not exist"),
        "{stderr}"
    );
    let shared = p.root().join("external-volumes/team-data");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note"), "from the team\n").unwrap();
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: Vec<String> = p
        .ps("filed")
        .iter()
        .map(|i| field(i, "service").to_owned())
        .collect();
    assert!(!services.contains(&"debug".to_owned()), "{services:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "filed", "reader"]);
        if logs.contains("secret-read-only") {
            for line in ["| hello", "| s3cret", "| mode=fast", "| from the team"] {
                assert!(logs.contains(line), "{logs}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = in_dir(&p, &dir, &["up", "--profile", "tools", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: Vec<String> = p
        .ps("filed")
        .iter()
        .map(|i| field(i, "service").to_owned())
        .collect();
    assert!(services.contains(&"debug".to_owned()), "{services:?}");
    p.ok(&["down", "-a", "filed", "--volumes"]);
    assert!(
        shared.join("note").is_file(),
        "down --volumes keeps external volumes"
    );
}

/// A split across networks holds: a service reaches another by name and alias only through a
/// network they share, and neither its service address (here a fixed one, outside the
/// application's subnet) nor its instances' addresses otherwise.
#[test]
fn networks_split_the_application_and_aliases_name_services() {
    let p = Platform::new();
    p.busybox_image();
    // Each service serves a page on 8080 and, every half second, fetches the URLs listed in
    // /targets/list, saying which it got.
    let probe = "/bin/busybox httpd -p 8080 -h /srv; while true; do for u in $$(cat /targets/list 2>/dev/null); do if timeout 2 wget -q -O /dev/null $$u; then echo ok $$u; else echo fail $$u; fi; done; sleep 0.5; done";
    // db's fixed address (Compose's ipv4_address), this test's own: tests run side by side.
    let port = p.port(0);
    let fixed = format!("172.31.{}.{}", port / 250 % 250, port % 250 + 2);
    let compose = format!(
        r#"name: split
networks:
  front: {{}}
  back:
    ipam:
      config:
        - subnet: 172.31.0.0/16
x-probe: &probe
  image: busybox:1
  command: ["/bin/busybox", "sh", "-c", "{probe}"]
  volumes: ["./site:/srv:ro", "./targets:/targets:ro"]
  expose: ["8080"]
services:
  web:
    <<: *probe
    networks: [front]
  api:
    <<: *probe
    networks:
      front: {{aliases: [backend]}}
      back:
  db:
    <<: *probe
    networks:
      back:
        ipv4_address: {fixed}
"#
    );
    let dir = project(&p, "split", &compose);
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let service_address = |name: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&p.ok(&["describe", "-a", "split", name, "-o", "json"])).unwrap();
        v["address"].as_str().unwrap().to_owned()
    };
    let ps = p.ps("split");
    let instance_address = |service: &str| -> String {
        let i = ps.iter().find(|i| field(i, "service") == service).unwrap();
        field(i, "address").split('/').next().unwrap().to_owned()
    };
    let db = service_address("db");
    assert_eq!(db, fixed, "db's stable address is its fixed one");
    let db_instance = instance_address("db");
    let targets = [
        "http://backend:8080/index.html".to_owned(),
        "http://api:8080/index.html".to_owned(),
        "http://db:8080/index.html".to_owned(),
        format!("http://{db}:8080/index.html"),
        format!("http://{db_instance}:8080/index.html"),
    ];
    std::fs::write(dir.join("targets/list"), targets.join("\n")).unwrap();

    // Waits until every target has been tried twice by `service`, and returns what it got.
    let results = |service: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = p.ok(&["logs", "-a", "split", service]);
            if targets
                .iter()
                .all(|t| logs.matches(&format!(" {t}")).count() >= 2)
            {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "{service} did not try every target: {logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let got = |logs: &str, target: &str| logs.contains(&format!("ok {target}"));
    let web = results("web");
    assert!(
        got(&web, &targets[0]),
        "web reaches api by its alias on front: {web}"
    );
    assert!(got(&web, &targets[1]), "web reaches api by name: {web}");
    for target in &targets[2..] {
        assert!(
            !got(&web, target),
            "web must not reach db ({target}): {web}"
        );
    }
    let api = results("api");
    for target in &targets {
        assert!(
            got(&api, target),
            "api, on both networks, reaches all ({target}): {api}"
        );
    }
    p.ok(&["down", "-a", "split"]);
}

/// `service_completed_successfully` waits for a one-off job's exit 0, and `up` counts the job
/// done rather than waiting for it to run.
#[test]
fn a_service_starts_after_the_job_it_depends_on_completes() {
    let p = Platform::new();
    p.busybox_image();
    let compose = r#"name: jobs
volumes:
  data: {}
services:
  migrate:
    image: busybox:1
    command: ["/bin/busybox", "sh", "-c", "sleep 1; echo migrated > /data/flag"]
    volumes: [data:/data]
  app:
    image: busybox:1
    command: ["/bin/busybox", "sh", "-c", "cat /data/flag; sleep 1000"]
    volumes: [data:/data]
    depends_on:
      migrate: {condition: service_completed_successfully}
"#;
    let dir = project(&p, "jobs", compose);
    let out = in_dir(&p, &dir, &["up", "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "jobs", "app"]);
        if logs.contains("| migrated") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app did not see the job's work: {logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.ok(&["down", "-a", "jobs"]);
}

/// `-f` twice merges the second file over the first, as `docker compose` does; without `-f`,
/// `up` reads compose.override.yaml beside compose.yaml.
#[test]
fn override_files_merge_over_the_compose_file() {
    let p = Platform::new();
    let dir = project(
        &p,
        "over",
        "name: over\nservices:\n  web:\n    image: busybox:1\n    environment: [A=1]\n",
    );
    std::fs::write(
        dir.join("prod.yaml"),
        "services:\n  web:\n    environment: [B=2]\n    deploy: {replicas: 3}\n",
    )
    .unwrap();
    let toml = String::from_utf8(
        in_dir(
            &p,
            &dir,
            &["convert", "-f", "compose.yaml", "-f", "prod.yaml"],
        )
        .stdout,
    )
    .unwrap();
    assert!(
        toml.contains("A = \"1\"") && toml.contains("B = \"2\"") && toml.contains("replicas = 3"),
        "{toml}"
    );
    let out = in_dir(
        &p,
        &dir,
        &["convert", "-f", "compose.yaml", "-f", "missing.yaml"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the manifest missing.yaml"));
    std::fs::write(
        dir.join("prod.yaml"),
        "services:\n  web:\n    privileged: true\n",
    )
    .unwrap();
    let out = in_dir(
        &p,
        &dir,
        &["convert", "-f", "compose.yaml", "-f", "prod.yaml"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prod.yaml:3:5: services.web.privileged"),
        "{stderr}"
    );
}
