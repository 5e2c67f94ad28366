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
    assert_eq!(uid_inside(pid), 65534, "runs as the image's user");
    p.ok(&["down", "-a", "site"]);

    // `build = { context = DIR, args = ... }`: built at `up` (every step from the cache here,
    // the argument being its default) and run.
    let manifest = p.manifest(
        "built",
        &format!(
            r#"
app = "built"
[services.www]
build = {{ context = "{ctx}", args = {{ GREETING = "hello" }} }}
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
    std::fs::write(dir.join("Dockerfile"), "FROM busybox:1\nONBUILD RUN x\n").unwrap();
    let e = p.fails(&["build", "-t", "online:1", dir.to_str().unwrap()]);
    assert!(e.contains("line 2: ONBUILD is not supported"), "{e}");
}

/// Writes `files` (name, content) into a new context directory `name` of the platform's root.
fn context_of(p: &Platform, name: &str, files: &[(&str, &str)]) -> String {
    let dir = p.root().join(name);
    for (file, content) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir.to_str().unwrap().to_owned()
}

fn stages_of(build: &Value) -> Vec<String> {
    let mut stages: Vec<String> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_owned())
        .collect();
    stages.dedup();
    stages
}

/// A Containerfile whose RUN steps check an image: the build fails unless every check holds.
fn check_image(p: &Platform, image: &str, checks: &[&str]) {
    let mut text = format!("FROM {image}\n");
    for c in checks {
        text.push_str(&format!("RUN {c}\n"));
    }
    let ctx = context_of(p, "check", &[("Containerfile", &text)]);
    p.ok(&["build", "-t", "check:1", &ctx]);
}

const STAGES: &str = r#"ARG BASE=busybox:1
FROM --platform=$BUILDPLATFORM ${BASE} AS tools
RUN ["/bin/busybox", "--install", "-s", "/bin"]

# Not needed by the target: never built.
FROM busybox:1 AS broken
RUN ["/bin/busybox", "false"]

FROM tools AS compile
ARG TARGETPLATFORM
ARG TARGETARCH
RUN mkdir -p /out && echo "$TARGETPLATFORM $TARGETARCH" > /out/platform.txt
# Runs only while the assets stage runs too: the two stages build at once.
RUN --mount=type=cache,id=meet,target=/meet,sharing=shared \
    touch /meet/compile; for i in $(seq 100); do [ -e /meet/assets ] && exit 0; sleep 0.1; done; exit 1

FROM tools AS assets
RUN --mount=type=cache,id=meet,target=/meet,sharing=shared \
    touch /meet/assets; for i in $(seq 100); do [ -e /meet/compile ] && exit 0; sleep 0.1; done; exit 1
RUN mkdir -p /www && echo asset > /www/asset.txt

FROM tools
COPY --from=compile /out/platform.txt /srv/
COPY --from=assets /www /srv/www
COPY --from=busybox:1 /etc/group /srv/group-of-busybox
# /bin links to usr/bin in busybox:1: the source is followed through it, as Docker does.
COPY --from=busybox:1 /bin/busybox /srv/busybox-copy
"#;

#[test]
fn stages_build_what_the_target_needs_at_once_and_copy_from_stages_and_images() {
    let p = Platform::new();
    p.busybox_image();
    let ctx = context_of(&p, "stages", &[("Containerfile", STAGES)]);
    let built = json(&p.ok(&["build", "-t", "staged:1", &ctx, "-o", "json"]));
    assert_eq!(
        stages_of(&built),
        ["tools", "compile", "assets", "4"],
        "{built}"
    );
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    check_image(
        &p,
        "staged:1",
        &[
            &format!("grep -qx 'linux/{arch} {arch}' /srv/platform.txt"),
            "grep -qx asset /srv/www/asset.txt",
            "grep -q '^root:' /srv/group-of-busybox",
            "/srv/busybox-copy true",
            "test ! -e /meet && test ! -e /out",
        ],
    );

    // --target: that stage and what it needs, nothing else.
    let compile = json(&p.ok(&[
        "build",
        "-t",
        "compile:1",
        "--target",
        "compile",
        &ctx,
        "-o",
        "json",
    ]));
    assert_eq!(stages_of(&compile), ["tools", "compile"]);
    let e = p.fails(&["build", "-t", "broken:1", "--target", "broken", &ctx]);
    assert!(e.contains("Containerfile:7: RUN"), "{e}");
    let e = p.fails(&["build", "-t", "x:1", "--target", "nope", &ctx]);
    assert!(
        e.contains(
            "--target nope: no stage is named so; the stages are tools, broken, compile, assets"
        ),
        "{e}"
    );
    let e = p.fails(&["build", "-t", "x:1", "--platform", "linux/s390x", &ctx]);
    assert!(e.contains("do not emulate"), "{e}");
    // ARG before FROM, from --build-arg: a base that is not in the store.
    let e = p.fails(&["build", "-t", "x:1", "--build-arg", "BASE=nothing:1", &ctx]);
    assert!(
        e.contains("Containerfile:2: FROM nothing:1: not in the store"),
        "{e}"
    );
}

const MOUNTS: &str = r#"FROM busybox:1 AS seed
COPY <<EOF /data/x
seeded
EOF

FROM busybox:1
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN --mount=type=bind,from=seed,source=/data,target=/seeddata cp /seeddata/x /from-stage.txt
RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/data cp /c/x /from-cache-seed.txt
ARG ROUND=1
RUN --mount=type=cache,target=/var/cache/app \
    echo "round $ROUND" >> /var/cache/app/log && cp /var/cache/app/log /rounds.txt
RUN --mount=type=bind,source=src,target=/src \
    cp /src/input.txt /from-bind.txt && ! touch /src/new 2>/dev/null
RUN --mount=type=bind,source=src,target=/src,rw touch /src/discarded
RUN --mount=type=secret,id=token \
    --mount=type=secret,id=other,target=/etc/other-secret \
    --mount=type=tmpfs,target=/scratch \
    grep -qx "s3cr3t-val.e" /run/secrets/token && test ! -e /etc/other-secret \
    && touch /scratch/x && wc -c < /run/secrets/token > /token-length
RUN <<EOF
set -e
echo "from a heredoc" > /heredoc.txt
# a comment of the script
EOF
RUN cat <<'RAW' > /raw.txt
$HOME stays
RAW
ARG WHO=builder
COPY <<EOF /greeting.txt
hello $WHO
EOF
RUN --network=none true
"#;

#[test]
fn run_mounts_secrets_and_heredocs_behave_as_buildkit_s() {
    let p = Platform::new();
    p.busybox_image();
    let ctx = context_of(
        &p,
        "mounts",
        &[("Containerfile", MOUNTS), ("src/input.txt", "bound\n")],
    );
    let secret = p.root().join("token.txt");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    let secret_flag = format!("id=token,src={}", secret.display());
    p.ok(&["build", "-t", "mounts:1", "--secret", &secret_flag, &ctx]);
    // The cache outlives the build; the RUN step runs again for a new ROUND and finds it.
    p.ok(&[
        "build",
        "-t",
        "mounts:2",
        "--secret",
        &secret_flag,
        "--build-arg",
        "ROUND=2",
        &ctx,
    ]);
    check_image(
        &p,
        "mounts:2",
        &[
            r#"test "$(cat /rounds.txt)" = "$(printf 'round 1\nround 2')""#,
            "test ! -e /var/cache/app/log",
            "grep -qx bound /from-bind.txt && test ! -e /src",
            "test ! -e /run/secrets && test ! -e /etc/other-secret && test ! -e /scratch",
            r#"test "$(cat /token-length)" = 12"#,
            "grep -qx 'from a heredoc' /heredoc.txt",
            "grep -qx '$HOME stays' /raw.txt",
            "grep -qx 'hello builder' /greeting.txt",
            "grep -qx seeded /from-stage.txt && grep -qx seeded /from-cache-seed.txt",
            "test ! -e /seeddata && test ! -e /c",
        ],
    );
    // The secret is in no layer, blob or cache entry of the store.
    let found = Command::new("grep")
        .args(["-r", "-l", "s3cr3t-value"])
        .arg(p.root().join("images"))
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
    // A required secret that is not given, and flags RUN does not take, say so.
    std::fs::write(
        Path::new(&ctx).join("Containerfile"),
        "FROM busybox:1\nRUN --mount=type=secret,id=key,required true\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "x:1", &ctx]);
    assert!(e.contains("Containerfile:2: RUN --mount=type=secret,id=key: no secret key was given; build with --secret id=key,src=FILE"), "{e}");
    std::os::unix::fs::symlink("/etc", Path::new(&ctx).join("host-etc")).unwrap();
    std::fs::write(
        Path::new(&ctx).join("Containerfile"),
        "FROM busybox:1\nRUN --mount=type=bind,source=host-etc,target=/h true\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "x:1", &ctx]);
    // Refused where its source is read, the link resolved.
    assert!(
        e.contains("Containerfile:2: host-etc: leads out of the build context")
            && e.contains("through a link (to /etc)"),
        "{e}"
    );
    std::fs::write(
        Path::new(&ctx).join("Containerfile"),
        "FROM busybox:1\nRUN --network=host true\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "x:1", &ctx]);
    assert!(
        e.contains("line 2: RUN --network=host: RUN steps run without network"),
        "{e}"
    );
}

const CONFIG: &str = r#"FROM busybox:1
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo "app:x:1000:1001::/home/app:/bin/sh" >> /etc/passwd && echo "staff:x:1002:" >> /etc/group
COPY --chown=app:staff --chmod=640 app/ /app/
COPY --chown=app app/keep.txt /owned-by-app.txt
SHELL ["/bin/sh", "-e", "-c"]
RUN test "$(stat -c '%u:%g %a' /app/keep.txt)" = "1000:1002 640" \
    && test "$(stat -c '%u:%g' /owned-by-app.txt)" = "1000:1001" \
    && test ! -e /app/debug.log && test ! -e /app/cache && test -e /app/cache-keep/important.log
HEALTHCHECK --interval=5s --retries=2 CMD wget -q -O- http://127.0.0.1:8080/
STOPSIGNAL SIGQUIT
VOLUME /data
MAINTAINER someone
"#;

#[test]
fn dockerignore_chown_names_and_config_instructions_apply() {
    let p = Platform::new();
    p.busybox_image();
    let ctx = context_of(
        &p,
        "config",
        &[
            ("Containerfile", CONFIG),
            (
                ".dockerignore",
                "# not for the image\n**/*.log\napp/cache\n!app/cache-keep/important.log\n",
            ),
            ("app/keep.txt", "kept\n"),
            ("app/debug.log", "left out\n"),
            ("app/cache/x", "left out\n"),
            ("app/cache-keep/important.log", "taken again\n"),
        ],
    );
    p.ok(&["build", "-t", "config:1", &ctx]);
    let inspected = json(&p.ok(&["image", "inspect", "config:1", "-o", "json"]));
    assert_eq!(
        inspected["shell"],
        serde_json::json!(["/bin/sh", "-e", "-c"])
    );
    assert_eq!(inspected["stop_signal"], "SIGQUIT");
    assert_eq!(inspected["volumes"], serde_json::json!(["/data"]));
    assert_eq!(inspected["labels"]["maintainer"], "someone");
    assert_eq!(
        inspected["healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"], "Interval": 5_000_000_000u64, "Retries": 2})
    );
    // A name the image does not have, and a file the .dockerignore leaves out.
    std::fs::write(
        Path::new(&ctx).join("Containerfile"),
        "FROM busybox:1\nCOPY --chown=nobody-here app/keep.txt /\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "x:1", &ctx]);
    assert!(e.contains("Containerfile:2: --chown=nobody-here: the image has no user nobody-here in its /etc/passwd"), "{e}");
    std::fs::write(
        Path::new(&ctx).join("Containerfile"),
        "FROM busybox:1\nCOPY app/debug.log /\n",
    )
    .unwrap();
    let e = p.fails(&["build", "-t", "x:1", &ctx]);
    assert!(
        e.contains("app/debug.log: excluded by the .dockerignore"),
        "{e}"
    );
    // The Containerfile's own ignore file wins over the context's.
    std::fs::write(
        Path::new(&ctx).join("Containerfile.dockerignore"),
        "# nothing left out\n",
    )
    .unwrap();
    p.ok(&["build", "-t", "x:1", &ctx]);
}

#[test]
fn a_run_step_s_output_streams_while_it_runs() {
    let p = Platform::new();
    p.busybox_image();
    let ctx = context_of(
        &p,
        "stream",
        &[(
            "Containerfile",
            r#"FROM busybox:1
RUN ["/bin/busybox", "sh", "-c", "echo first line; /bin/busybox sleep 4; echo second line"]
"#,
        )],
    );
    let started = std::time::Instant::now();
    let mut child = p
        .command()
        .args(["build", "-t", "stream:1", &ctx])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        if line.contains("| first line") {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the build was still running"
            );
            assert!(
                started.elapsed()
                    < std::time::Duration::from_secs(4) + std::time::Duration::from_millis(3500)
            );
        }
        seen.push(line);
    }
    assert!(child.wait().unwrap().success());
    let text = seen.join(
        "
",
    );
    assert!(text.contains("[0] line 2 | first line"), "{text}");
    assert!(text.contains("[0] line 2 | second line"), "{text}");
}
