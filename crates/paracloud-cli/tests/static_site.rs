//! The catalogue's static site as a user meets it: `catalog = "static"` with a directory of
//! files, served by real nginx instances (a micro-image of the machine's nginx) through the
//! service's published port.

mod common;

use std::time::Duration;

use common::*;

fn site(p: &Platform, replicas: u32) -> std::path::PathBuf {
    let text = format!(
        r#"app = "site"

[services.www]
catalog = "static"
root = "public"
replicas = {replicas}
ports = ["{}:80/http"]
"#,
        p.port(0)
    );
    let path = p.manifest("site", &text);
    let public = path.parent().unwrap().join("public");
    std::fs::create_dir_all(public.join("css")).unwrap();
    std::fs::write(public.join("index.html"), "<h1>hello</h1>\n").unwrap();
    std::fs::write(public.join("css/site.css"), "h1 { color: teal }\n").unwrap();
    path
}

#[test]
fn a_static_site_serves_its_directory_on_every_instance_and_scales() {
    let p = Platform::new();
    let manifest = site(&p, 2);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let port = p.port(0);
    assert_eq!(
        http_get(port, "/").unwrap(),
        (200, "<h1>hello</h1>\n".into())
    );
    let (status, css) = http_get(port, "/css/site.css").unwrap();
    assert_eq!((status, css.as_str()), (200, "h1 { color: teal }\n"));
    assert_eq!(http_get(port, "/missing.html").unwrap().0, 404);

    // Each instance serves the same files, at its own address.
    let ps = p.ps("site");
    assert_eq!(ps.len(), 2, "{ps:#?}");
    for instance in &ps {
        let address = field(instance, "address")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{address}/")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<h1>hello</h1>\n",
            "{address}"
        );
    }

    // The directory is served as it is now: a new file is there at once, read-only inside.
    let public = manifest.parent().unwrap().join("public");
    std::fs::write(public.join("new.txt"), "fresh\n").unwrap();
    assert_eq!(http_get(port, "/new.txt").unwrap(), (200, "fresh\n".into()));
    let pid = ps[0]["pid"].as_i64().unwrap();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/srv/www"))
        .unwrap_or_else(|| panic!("no /srv/www in the instance:\n{mounts}"));
    assert!(
        root.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "the root is read-only inside: {root}"
    );

    // Scaled like any service; describe names its part.
    p.ok(&["scale", "-a", "site", "www=3"]);
    p.wait_ps(
        "site",
        Duration::from_secs(30),
        "three ready instances",
        |ps| ps.iter().filter(|i| field(i, "state") == "running").count() == 3,
    );
    for _ in 0..6 {
        assert_eq!(http_get(port, "/").unwrap().0, 200);
    }
    let described = p.ok(&["describe", "-a", "site", "www"]);
    assert!(
        described.contains("static 1.22, its instances, each an nginx"),
        "{described}"
    );
}

#[test]
fn a_static_site_with_a_bad_root_or_port_is_refused_and_changes_nothing() {
    let p = Platform::new();
    let manifest = site(&p, 1);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("site"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    for (bad, said) in [
        (
            text.replace("root = \"public\"", "root = \"nowhere\""),
            "services.www.root: ",
        ),
        (
            text.replace(":80/http", ":8080/http"),
            "services.www.ports: a static site serves HTTP on port 80, not 8080/http",
        ),
        (
            text.replace(
                "root = \"public\"",
                "root = \"public\"\nimage = \"nginx:1\"",
            ),
            "services.www.image: `catalog = \"static\"` does not take `image`",
        ),
    ] {
        std::fs::write(&manifest, &bad).unwrap();
        let refused = p.fails(&["up", "-f", manifest.to_str().unwrap()]);
        assert!(refused.contains(said), "{refused}");
    }
    std::fs::write(&manifest, &text).unwrap();
    let render = p.fails(&["k8s", "render", "-f", manifest.to_str().unwrap()]);
    assert!(
        render.contains(
            "services.www.catalog: a static site serves a directory of the daemon's machine"
        ),
        "{render}"
    );
    assert_eq!(pids(&p.ps("site")), before, "nothing was replaced");
    assert_eq!(http_get(p.port(0), "/").unwrap().0, 200);
}
