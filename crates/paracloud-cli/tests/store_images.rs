//! Images of the store as a user meets them: a micro-image of a Debian program (nginx) built
//! from the host, run as a service that answers, listed, inspected, exported and imported,
//! removed and pruned while a service still uses it.

mod common;
#[path = "../../paracloud-image/tests/common/registry.rs"]
mod registry_server;

use std::path::Path;

use common::*;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// nginx's configuration for an instance: foreground, one process, everything under /tmp.
fn nginx_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello from a micro-image\n").unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nuser root root;\nerror_log stderr;\npid /tmp/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path /tmp/body;\n  proxy_temp_path /tmp/proxy;\n\
               fastcgi_temp_path /tmp/fastcgi;\n  uwsgi_temp_path /tmp/uwsgi;\n  scgi_temp_path /tmp/scgi;\n\
               server {{ listen 8080; root {}; }}\n}}\n",
            dir.join("www").display()
        ),
    )
    .unwrap();
}

#[test]
fn a_micro_image_of_nginx_runs_as_a_service_and_answers() {
    let p = Platform::new();
    // Not under /tmp, which is an instance's own tmpfs.
    let outside_tmp = tempfile::Builder::new()
        .prefix("paracloud-test-nginx-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let files = outside_tmp.path().to_owned();
    nginx_files(&files);
    let built = json(&p.ok(&[
        "image",
        "build",
        "--from-binary",
        "/usr/sbin/nginx",
        "--add",
        files.to_str().unwrap(),
        "-t",
        "web:1",
        "-o",
        "json",
    ]));
    assert_eq!(built["reference"], "web:1");
    let size = built["size"].as_u64().unwrap();
    // nginx and its libraries, not a distribution: a few MB.
    assert!(size > 500_000 && size < 40_000_000, "size {size}");

    let listed = json(&p.ok(&["images", "-o", "json"]));
    assert_eq!(listed[0]["reference"], "web:1");
    assert_eq!(listed[0]["digest"], built["digest"]);
    let inspected = json(&p.ok(&["image", "inspect", "web:1", "-o", "json"]));
    assert_eq!(
        inspected["entrypoint"],
        serde_json::json!(["/usr/sbin/nginx"])
    );
    assert_eq!(inspected["layers"].as_array().unwrap().len(), 1);

    let conf = files.join("nginx.conf");
    let manifest = p.manifest(
        "web",
        &format!(
            r#"
app = "web"
[services.web]
image = "web:1"
command = ["-c", "{conf}"]
ports = [{{ port = 8080, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "1s" }}
replicas = 2
stop_grace_period = "1s"
"#,
            conf = conf.display(),
            port = p.port(1)
        ),
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (status, body) = http_get(p.port(1), "/index.html").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a micro-image\n"));
    // The root is the image, not the host: no shell in it.
    for instance in p.ps("web") {
        let pid = instance["pid"].as_i64().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}/root/bin/sh")).exists());
        assert!(Path::new(&format!("/proc/{pid}/root/usr/sbin/nginx")).exists());
    }

    // The name goes; what the service runs stays through a prune, and restarts still work.
    let revision = p.ps("web")[0]["revision"].as_u64().unwrap();
    p.ok(&["image", "rm", "web:1"]);
    let pruned = json(&p.ok(&["image", "prune", "-o", "json"]));
    assert_eq!(pruned["blobs"], 0, "{pruned}");
    p.ok(&["restart", "-a", "web", "web"]);
    p.wait_ps(
        "web",
        std::time::Duration::from_secs(30),
        "both instances replaced and running",
        |ps| {
            ps.len() == 2
                && ps.iter().all(|i| {
                    field(i, "state") == "running" && i["revision"].as_u64() > Some(revision)
                })
        },
    );
    let (status, _) = http_get(p.port(1), "/index.html").unwrap();
    assert_eq!(status, 200);
    p.ok(&["down", "-a", "web"]);
}

#[test]
fn images_export_and_import_through_the_daemon_and_bad_input_is_explained() {
    let p = Platform::new();
    let built = json(&p.ok(&[
        "image",
        "build",
        "--from-binary",
        "/bin/ls",
        "-t",
        "tools/ls:1",
        "-o",
        "json",
    ]));
    let archive = p.root().join("ls.tar");
    p.ok(&[
        "image",
        "export",
        "tools/ls:1",
        "--to",
        archive.to_str().unwrap(),
    ]);
    p.ok(&["image", "rm", "tools/ls:1"]);
    let pruned = json(&p.ok(&["image", "prune", "-o", "json"]));
    assert_eq!(pruned["blobs"], 3, "manifest, config and layer: {pruned}");
    let imported = json(&p.ok(&["image", "import", archive.to_str().unwrap(), "-o", "json"]));
    assert_eq!(imported[0]["reference"], "tools/ls:1");
    assert_eq!(
        imported[0]["digest"], built["digest"],
        "the same bytes, the same image"
    );
    p.ok(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "-t",
        "renamed:2",
    ]);
    let listed = json(&p.ok(&["images", "-o", "json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["renamed:2", "tools/ls:1"]);

    let e = p.fails(&["image", "inspect", "nope:1"]);
    assert!(e.contains("no image nope:1 in the store"), "{e}");
    let e = p.fails(&["image", "build", "--from-binary", "/no/such", "-t", "x:1"]);
    assert!(
        e.contains("/no/such: does not exist on this machine"),
        "{e}"
    );
    let e = p.fails(&["image", "build", "--from-binary", "/bin/ls", "-t", "Bad:1"]);
    assert!(e.contains("must start with a lower-case letter"), "{e}");
    let e = p.fails(&["image", "import", "/etc/hostname"]);
    assert!(e.contains("is not a tar archive"), "{e}");

    // A manifest naming an image the store lacks says which service and how to get one (here
    // docker.io's only mirror is a port nothing listens on).
    std::fs::write(
        p.root().join("registries.toml"),
        "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:1\"]\nmirrors_only = true\n",
    )
    .unwrap();
    let manifest = p.manifest(
        "missing",
        "app = \"missing\"\n[services.s]\nimage = \"absent:3\"\n",
    );
    let e = p.fails(&["up", "-f", manifest.to_str().unwrap()]);
    assert!(
        e.contains("service s: image absent:3 is not in the store and cannot be pulled: cannot reach registry 127.0.0.1:1"),
        "{e}"
    );
    assert!(e.contains("registries.toml"), "{e}");
}

#[test]
fn an_image_pushed_to_a_registry_is_pulled_by_another_daemon_and_deployed_from_there() {
    let registry = registry_server::RegistryServer::start(Some(("ci", "pw")));
    let outside_tmp = tempfile::Builder::new()
        .prefix("paracloud-test-nginx-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let files = outside_tmp.path().to_owned();
    nginx_files(&files);
    let builder = Platform::new();
    let built = json(&builder.ok(&[
        "image",
        "build",
        "--from-binary",
        "/usr/sbin/nginx",
        "--add",
        files.to_str().unwrap(),
        "-t",
        "web:2",
        "-o",
        "json",
    ]));
    let target = format!("{}/team/web:2", registry.host());
    let e = builder.fails(&["image", "push", "web:2", &target]);
    assert!(e.contains("asks for a user name and password"), "{e}");
    let pushed = json(
        &builder
            .command()
            .args([
                "image",
                "push",
                "web:2",
                &target,
                "--username",
                "ci",
                "-o",
                "json",
            ])
            .env("PARACLOUD_REGISTRY_PASSWORD", "pw")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap(),
    );
    assert_eq!(pushed["digest"], built["digest"]);
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", "ci:pw"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(inspected["Digest"], built["digest"]);

    // Another daemon, another store: pulled by hand, then deployed by reference.
    let user = Platform::new();
    let pulled = json(
        &user
            .command()
            .args([
                "image",
                "pull",
                &target,
                "--username",
                "ci",
                "--password-stdin",
                "-o",
                "json",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"pw\n")?;
                child.wait_with_output()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap(),
    );
    assert_eq!(pulled["digest"], built["digest"]);
    // A registry without auth: `up` pulls what the store lacks, as compose does.
    let open = registry_server::RegistryServer::start(None);
    let open_target = format!("{}/team/web:2", open.host());
    builder.ok(&["image", "push", "web:2", &open_target]);
    let manifest = user.manifest(
        "pulled",
        &format!(
            r#"
app = "pulled"
[services.web]
image = "{open_target}"
command = ["-c", "{conf}"]
ports = [{{ port = 8080, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "1s" }}
"#,
            conf = files.join("nginx.conf").display(),
            port = user.port(2)
        ),
    );
    user.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (status, body) = http_get(user.port(2), "/index.html").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a micro-image\n"));
    let listed = json(&user.ok(&["images", "-o", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    user.ok(&["down", "-a", "pulled"]);
    // A pull of a name without a registry is Docker Hub's; a push needs the registry written.
    let e = user.fails(&["image", "push", "web:2", "team/web:3"]);
    assert!(e.contains("names no registry to push to"), "{e}");
}

#[test]
fn the_shop_runs_from_micro_images_of_its_programs() {
    let p = Platform::new();
    for service in ["kv", "api", "web"] {
        let binary = bin_dir().join(format!("shop-{service}"));
        let built = json(&p.ok(&[
            "image",
            "build",
            "--from-binary",
            binary.to_str().unwrap(),
            "-t",
            &format!("shop-{service}:latest"),
            "-o",
            "json",
        ]));
        // The program and libc, not a distribution: a few MB beside the program.
        let program = std::fs::metadata(&binary).unwrap().len();
        assert!(
            built["size"].as_u64().unwrap() < program + 10_000_000,
            "{built}"
        );
    }
    let text = std::fs::read_to_string(workspace().join("examples/shop/paracloud.micro.toml"))
        .unwrap()
        .replace("publish = 8080", &format!("publish = {}", p.port(6)));
    let manifest = p.manifest("shop-micro", &text);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (status, body) = http_get(p.port(6), "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("web: web.") && body.contains("api: api.") && body.contains("kv: ok"),
        "all three tiers: {body}"
    );
    for instance in p.ps("shop") {
        let pid = instance["pid"].as_i64().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}/root/bin/sh")).exists(),
            "no shell in a micro-image"
        );
    }
    p.ok(&["down", "-a", "shop"]);
}
