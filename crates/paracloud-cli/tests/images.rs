//! Root filesystems: a directory as the image (`image = "dir:PATH"`), with a user from its own
//! /etc/passwd, serving through a published port.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;

/// A tiny root filesystem: static busybox, an index page, and a passwd with `nobody`.
fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "www", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (.ci/run installs it)");
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "httpd", "id", "cat"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("www/index.html"), "hello from a dir image\n").unwrap();
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

#[test]
fn a_directory_image_runs_as_its_user_and_serves_through_a_published_port() {
    let p = Platform::new();
    let manifest = p.manifest(
        "www",
        &format!(
            r#"
app = "www"
[services.www]
image = "dir:./rootfs"
command = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
user = "nobody"
ports = [{{ port = 8080, protocol = "http", publish = {port} }}]
health = {{ http = "/", interval = "1s" }}
replicas = 2
stop_grace_period = "1s"
"#,
            port = p.port(3)
        ),
    );
    busybox_rootfs(&manifest.parent().unwrap().join("rootfs"));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (status, body) = http_get(p.port(3), "/index.html").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from a dir image\n"));
    for instance in p.ps("www") {
        let pid = instance["pid"].as_i64().unwrap();
        assert_eq!(uid_inside(pid), 65534, "runs as nobody");
    }
    // The image directory itself is never written: changes go to each instance's private layer.
    let rootfs = manifest.parent().unwrap().join("rootfs");
    assert_eq!(std::fs::read_dir(rootfs.join("tmp")).unwrap().count(), 0);
}
