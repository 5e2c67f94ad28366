//! `paracloud build` as a user meets it: a Containerfile with RUN steps (run in sandboxes of the
//! runtime), COPY and ADD, built, rebuilt from the cache step for step, changed, deployed and
//! serving; a step that needs the network fails saying so.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const CONTAINERFILE: &str = r#"# A static site served by busybox httpd.
FROM busybox:1
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG GREETING=hello
ENV GREETING=$GREETING
WORKDIR /srv
COPY page.html ./index.html
ADD bundle.tar.gz /srv/bundle/
RUN echo "$GREETING from a build" > /srv/run.txt && \
    rm /srv/bundle/remove-me
EXPOSE 8080
USER nobody
CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/srv"]
"#;

fn context(dir: &Path) {
    std::fs::create_dir_all(dir.join("bundle")).unwrap();
    std::fs::write(dir.join("Containerfile"), CONTAINERFILE).unwrap();
    std::fs::write(dir.join("page.html"), "first page\n").unwrap();
    std::fs::write(dir.join("bundle/keep.txt"), "kept\n").unwrap();
    std::fs::write(dir.join("bundle/remove-me"), "removed by a RUN step\n").unwrap();
    let out = Command::new("tar")
        .current_dir(dir.join("bundle"))
        .args(["czf", "../bundle.tar.gz", "keep.txt", "remove-me"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(dir.join("bundle")).unwrap();
}

fn cached(build: &Value) -> Vec<bool> {
    build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cached"].as_bool().unwrap())
        .collect()
}

#[test]
fn a_containerfile_builds_rebuilds_from_the_cache_and_the_image_serves() {
    let p = Platform::new();
    p.busybox_image();
    let dir = p.root().join("site");
    context(&dir);
    let ctx = dir.to_str().unwrap();
    let first = json(&p.ok(&["build", "-t", "site:1", ctx, "-o", "json"]));
    // FROM does no work; every other step was done.
    assert_eq!(
        cached(&first),
        [true, false, false, false, false, false, false, false, false, false, false]
    );
    let again = json(&p.ok(&["build", "-t", "site:1", ctx, "-o", "json"]));
    assert!(cached(&again).iter().all(|c| *c), "{again}");
    assert_eq!(
        again["digest"], first["digest"],
        "the same steps, the same image"
    );

    // A changed file: the steps before its COPY come from the cache, the rest are done again.
    std::fs::write(dir.join("page.html"), "second page\n").unwrap();
    let changed = json(&p.ok(&["build", "-t", "site:2", ctx, "-o", "json"]));
    assert_eq!(
        cached(&changed),
        [true, true, true, true, true, false, false, false, false, false, false]
    );
    assert_ne!(changed["digest"], first["digest"]);
    let inspected = json(&p.ok(&["image", "inspect", "site:2", "-o", "json"]));
    assert_eq!(inspected["user"], "nobody");
    assert_eq!(inspected["working_dir"], "/srv");
    assert_eq!(inspected["exposed_ports"], serde_json::json!(["8080/tcp"]));
    assert_eq!(inspected["layers"].as_array().unwrap().len(), 5);

    // No command in the manifest: the image's CMD, user and working directory apply.
    let manifest = p.manifest(
        "site",
        &format!(
            r#"
app = "site"
[services.www]
image = "site:2"
ports = [{{ port = 8080, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "1s" }}
stop_grace_period = "1s"
"#,
            port = p.port(4)
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let get = |path: &str| http_get(p.port(4), path).unwrap();
    assert_eq!(get("/index.html"), (200, "second page\n".into()));
    assert_eq!(get("/run.txt"), (200, "hello from a build\n".into()));
    assert_eq!(get("/bundle/keep.txt"), (200, "kept\n".into()));
    assert_eq!(get("/bundle/remove-me").0, 404, "deleted by a later layer");
    let pid = p.ps("site")[0]["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t65534")),
        "{status}"
    );
    p.ok(&["down", "-a", "site"]);

    // `build = "DIR"`: built at `up` (every step from the cache here) and run.
    let manifest = p.manifest(
        "built",
        &format!(
            r#"
app = "built"
[services.www]
build = "{ctx}"
ports = [{{ port = 8080, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "1s" }}
stop_grace_period = "1s"
"#,
            port = p.port(5)
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    assert_eq!(
        http_get(p.port(5), "/index.html").unwrap(),
        (200, "second page\n".into())
    );
    let inspected = json(&p.ok(&["image", "inspect", "built-www:latest", "-o", "json"]));
    assert_eq!(inspected["digest"], changed["digest"]);
    p.ok(&["down", "-a", "built"]);
}

#[test]
fn a_build_step_that_needs_the_network_fails_saying_so() {
    let p = Platform::new();
    p.busybox_image();
    let dir = p.root().join("online");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM busybox:1\nRUN [\"/bin/busybox\", \"wget\", \"-q\", \"-T\", \"2\", \"http://192.0.2.1/file\"]\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "online:1", dir.to_str().unwrap()]);
    assert!(e.contains("Dockerfile:2: RUN"), "{e}");
    assert!(e.contains("without network"), "{e}");
    std::fs::write(dir.join("Dockerfile"), "FROM nothing:here\n").unwrap();
    let e = p.fails(&["build", "-t", "online:1", dir.to_str().unwrap()]);
    assert!(
        e.contains("Dockerfile:1: FROM nothing:here: not in the store"),
        "{e}"
    );
    std::fs::write(dir.join("Dockerfile"), "FROM busybox:1\nVOLUME /data\n").unwrap();
    let e = p.fails(&["build", "-t", "online:1", dir.to_str().unwrap()]);
    assert!(e.contains("line 2: VOLUME is not supported"), "{e}");
}
