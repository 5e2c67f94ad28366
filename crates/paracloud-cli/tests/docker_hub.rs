//! Docker Hub names as Compose files write them (`image: bbox:1`), on a machine whose `docker.io`
//! is a local registry (the state root's registries.toml names it as the mirror): `up` pulls what
//! the store lacks through the mirror, with its progress, and serves; `up --dry-run` checks
//! images and Containerfiles and changes nothing; credentials come from the user's Docker config
//! (`auths`, or a credential helper on PATH).

mod common;
#[path = "../../paracloud-image/tests/common/registry.rs"]
mod registry_server;

use std::path::{Path, PathBuf};

use common::*;
use registry_server::RegistryServer;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Makes `registry` the only place `docker.io` images are pulled from, for `p`'s daemon.
fn mirror_docker_hub(p: &Platform, registry: &RegistryServer) {
    std::fs::write(
        p.root().join("registries.toml"),
        format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{}\"]\nmirrors_only = true\n",
            registry.host()
        ),
    )
    .unwrap();
}

/// A registry holding busybox (the host's, as a micro-image) as Docker Hub's `library/bbox:1`.
fn hub_with_busybox(auth: Option<(&str, &str)>) -> RegistryServer {
    let registry = RegistryServer::start(auth);
    let builder = Platform::new();
    builder.busybox_image();
    let target = format!("{}/library/bbox:1", registry.host());
    let mut push = builder.command();
    push.args(["image", "push", "busybox:1", &target]);
    if let Some((user, pass)) = auth {
        push.args(["--username", user])
            .env("PARACLOUD_REGISTRY_PASSWORD", pass);
    }
    let out = push.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    registry
}

/// A Compose project serving a page from `image` on `port`.
fn project(p: &Platform, image: &str, port: u16) -> PathBuf {
    let dir = p.root().join("pages");
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), "hello from the mirror\n").unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            r#"name: pages
services:
  web:
    image: {image}
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/srv"]
    volumes:
      - ./site:/srv:ro
    ports:
      - "127.0.0.1:{port}:8080"
"#
        ),
    )
    .unwrap();
    dir.join("compose.yaml")
}

/// Nothing was deployed and the store holds nothing.
fn nothing_changed(p: &Platform) {
    assert_eq!(
        json(&p.ok(&["ps", "-A", "-o", "json"])),
        Value::Array(vec![])
    );
    assert_eq!(json(&p.ok(&["images", "-o", "json"])), Value::Array(vec![]));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_docker_hub_name_in_a_compose_file_is_pulled_through_the_mirror_at_up_and_serves() {
    let registry = hub_with_busybox(None);
    let p = Platform::new();
    mirror_docker_hub(&p, &registry);
    let compose = project(&p, "bbox:1", p.port(0));
    let file = compose.to_str().unwrap();

    // A dry run finds the image at the mirror and leaves everything as it was.
    let checked = p.ok(&["up", "--dry-run", "-f", file]);
    assert!(
        checked.contains(&format!(
            "service web: bbox:1: would be pulled from {}/library/bbox",
            registry.host()
        )),
        "{checked}"
    );
    assert!(
        checked.contains("is valid; nothing was started"),
        "{checked}"
    );
    let as_json = json(&p.ok(&["up", "--dry-run", "-f", file, "-o", "json"]));
    assert_eq!(as_json["app"], "pages");
    nothing_changed(&p);

    let out = p.run(&["up", "-f", file, "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "{}\n--- daemon log ---\n{}",
        stderr(&out),
        p.daemon_log()
    );
    let said = stderr(&out);
    assert!(said.contains("pulling bbox:1"), "{said}");
    assert!(said.contains("pulled bbox:1 sha256:"), "{said}");
    let (status, body) = http_get(p.port(0), "/index.html").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from the mirror\n"));
    // Named as Docker shows it, whichever way it is written.
    let images = json(&p.ok(&["images", "-o", "json"]));
    assert_eq!(images[0]["reference"], "bbox:1", "{images}");
    p.ok(&["image", "inspect", "docker.io/library/bbox:1"]);
    p.ok(&["down", "-a", "pages"]);

    // A client of the API other than the command: the daemon pulls what the store lacks itself.
    p.ok(&["image", "rm", "bbox:1"]);
    let up = serde_json::json!({
        "source": "app = \"api\"\n[services.sleeper]\nimage = \"docker.io/library/bbox:1\"\ncommand = [\"/bin/busybox\", \"sleep\", \"600\"]\n",
        "origin": "api.toml",
        "base_dir": "/",
    });
    let (status, body) = unix_http(
        &p.root().join("paracloud.sock"),
        "POST",
        "/v1/apps",
        &up.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    p.ok(&["image", "inspect", "bbox:1"]);
    p.ok(&["down", "-a", "api"]);
}

#[test]
fn a_dry_run_names_every_image_it_cannot_find_and_every_bad_containerfile() {
    let registry = RegistryServer::start(None);
    let p = Platform::new();
    mirror_docker_hub(&p, &registry);
    let context = p.root().join("ctx");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Containerfile"),
        "FROM scratch\nFROBNICATE x\n",
    )
    .unwrap();
    let manifest = p.manifest(
        "dry",
        &format!(
            r#"
app = "dry"
[services.web]
image = "nothere:1"
[services.built]
build = "{}"
command = ["/x"]
"#,
            context.display()
        ),
    );
    let e = p.fails(&["up", "--dry-run", "-f", manifest.to_str().unwrap()]);
    assert!(
        e.contains("service web: image nothere:1 is not in the store and cannot be pulled"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "registry {} has no manifest library/nothere:1 (404)",
            registry.host()
        )),
        "{e}"
    );
    assert!(e.contains("service built: "), "{e}");
    assert!(e.contains("Containerfile"), "{e}");
    nothing_changed(&p);

    // A valid Containerfile is parsed, not built.
    std::fs::write(context.join("Containerfile"), "FROM scratch\nENV A=1\n").unwrap();
    let manifest = p.manifest(
        "dry",
        &format!(
            "app = \"dry\"\n[services.built]\nbuild = \"{}\"\ncommand = [\"/x\"]\n",
            context.display()
        ),
    );
    let out = p.ok(&["up", "--dry-run", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("would be built from"), "{out}");
    assert!(out.contains("(2 steps)"), "{out}");
    nothing_changed(&p);

    // A registries.toml edited into a bad state is named with its line, at the next pull.
    std::fs::write(
        p.root().join("registries.toml"),
        "[registry.\"docker.io\"]\nmirors = []\n",
    )
    .unwrap();
    let e = p.fails(&["image", "pull", "nothere:1"]);
    assert!(
        e.contains("registries.toml: line 2: [registry.\"docker.io\"]: unknown key `mirors`"),
        "{e}"
    );
}

/// Writes a Docker config directory with `config` as its config.json.
fn docker_config(dir: &Path, config: &str) -> PathBuf {
    let dir = dir.join("docker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    dir
}

#[test]
fn credentials_come_from_the_users_docker_config_and_its_credential_helper() {
    let registry = hub_with_busybox(Some(("alice", "s3cret")));
    let p = Platform::new();
    mirror_docker_hub(&p, &registry);
    let home = tempfile::tempdir().unwrap();
    let pull = |config: &Path, path: Option<&Path>| {
        let mut cmd = p.command();
        cmd.env("DOCKER_CONFIG", config)
            .args(["image", "pull", "bbox:1"]);
        if let Some(path) = path {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![path.to_path_buf()];
            dirs.extend(std::env::split_paths(&old));
            cmd.env("PATH", std::env::join_paths(dirs).unwrap());
        }
        cmd.output().unwrap()
    };

    // No credentials: the registry's question is passed on.
    let none = docker_config(home.path(), "{}");
    let out = pull(&none, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("asks for a user name and password"),
        "{}",
        stderr(&out)
    );

    // A helper the config names but PATH lacks.
    let helper_config = format!(r#"{{"credHelpers": {{"{}": "test"}}}}"#, registry.host());
    let with_helper = docker_config(&home.path().join("h"), &helper_config);
    let out = pull(&with_helper, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("docker-credential-test is not on PATH"),
        "{}",
        stderr(&out)
    );

    // The helper protocol: the registry on stdin, JSON on stdout.
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = home.path().join("asked");
    let script = bin.join("docker-credential-test");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\ncat > {}\nprintf '{{\"ServerURL\":\"x\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n",
            asked.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = pull(&with_helper, Some(&bin));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&asked).unwrap(), registry.host());
    p.ok(&["image", "rm", "bbox:1"]);

    // `auths` with a base64 USER:PASSWORD, and `up --dry-run` uses it too.
    let auths = docker_config(
        &home.path().join("a"),
        &format!(
            r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#,
            registry.host()
        ),
    );
    let out = pull(&auths, None);
    assert!(out.status.success(), "{}", stderr(&out));
    p.ok(&["image", "rm", "bbox:1"]);
    // The daemon's metrics count the pulls by outcome: the two with credentials worked, the
    // one the registry refused did not.
    let (status, metrics) = unix_http(
        &p.root().join(paracloud_api::SOCKET_NAME),
        "GET",
        "/metrics",
        "",
    );
    assert_eq!(status, 200, "{metrics}");
    let pulls = |outcome: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "paracloud_image_pulls_total{{outcome=\"{outcome}\"}} "
            ))
            .and_then(|v| v.parse::<f64>().ok())
        })
    };
    assert_eq!(pulls("ok"), Some(2.0), "{metrics}");
    assert_eq!(pulls("failed"), Some(1.0), "{metrics}");
    let compose = project(&p, "bbox:1", p.port(0));
    let out = p
        .command()
        .env("DOCKER_CONFIG", &auths)
        .args(["up", "--dry-run", "-f", compose.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The daemon never writes the secret down.
    assert!(!p.daemon_log().contains("s3cret"));
}

#[test]
fn a_bad_registries_file_stops_the_daemon_with_its_location() {
    let p = Platform::new();
    std::fs::write(
        p.root().join("registries.toml"),
        "[registry.\"docker.io\"]\nmirrors = [\"https://mirror.internal\"]\n",
    )
    .unwrap();
    let e = p.fails(&["ps"]);
    assert!(
        e.contains("registries.toml: line 2: [registry.\"docker.io\"]: mirror: \"https://mirror.internal\" has a scheme"),
        "{e}"
    );
}

#[test]
fn a_build_pulls_the_base_images_it_lacks_through_the_mirror() {
    let registry = hub_with_busybox(None);
    let p = Platform::new();
    mirror_docker_hub(&p, &registry);
    let dir = p.root().join("built");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM bbox:1 AS base\nRUN [\"/bin/busybox\", \"touch\", \"/made\"]\nFROM base\nCOPY --from=docker.io/library/bbox:1 /etc/group /copied-group\n",
    )
    .unwrap();
    let out = p
        .command()
        .args(["build", "-t", "built:1", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pulling bbox:1: not in the store"),
        "{}",
        stderr(&out)
    );
    let images = p.ok(&["image", "ls"]);
    assert!(images.contains("bbox"), "{images}");
    // Without the mirror's image: the FROM line says what failed.
    std::fs::write(dir.join("Dockerfile"), "FROM nothere:1\n").unwrap();
    let e = p.fails(&["build", "-t", "x:1", dir.to_str().unwrap()]);
    assert!(
        e.contains("Dockerfile:1: FROM nothere:1: not in the store, and pulling it failed"),
        "{e}"
    );
}
