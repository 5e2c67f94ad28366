//! The ConPaaS example end to end, as examples/wordpress has it: Debian's WordPress on the
//! catalogue's PHP tier, with the catalogue's MariaDB, installed, logged into and written to
//! through a browser's requests (curl with a cookie jar), on more than one web instance.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The example copied into the test's root, published on the test's port, its site prepared.
fn example(p: &Platform) -> PathBuf {
    let from = workspace().join("examples/wordpress");
    let dir = p.root().join("wordpress");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["wp-config.php", "prepare.sh"] {
        std::fs::copy(from.join(file), dir.join(file)).unwrap();
    }
    let manifest = std::fs::read_to_string(from.join("paracloud.toml"))
        .unwrap()
        .replace("\"8081:80/http\"", &format!("\"{}:80/http\"", p.port(0)));
    assert!(manifest.contains(&format!("\"{}:80/http\"", p.port(0))));
    std::fs::write(dir.join("paracloud.toml"), manifest).unwrap();
    let out = Command::new("bash")
        .arg(dir.join("prepare.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.join("site/wp-settings.php").is_file());
    dir.join("paracloud.toml")
}

/// curl with the cookie jar `jar`: the status, then the body.
fn curl(p: &Platform, jar: &Path, path: &str, args: &[&str]) -> (u16, String) {
    let jar = jar.to_str().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-c", jar, "-b", jar])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{}{path}", p.port(0)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

fn title(page: &str) -> &str {
    let start = page
        .find("<title>")
        .map(|i| i + "<title>".len())
        .unwrap_or(0);
    let end = page[start..].find("</title>").map_or(start, |i| start + i);
    &page[start..end]
}

#[test]
fn wordpress_on_the_php_tier_and_mariadb_installs_logs_in_and_keeps_uploads_on_every_instance() {
    let p = Platform::new();
    let manifest = example(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let jar = p.root().join("jar");

    // A new site sends the browser to WordPress's installer, on the port it asked for.
    let (status, _) = curl(&p, &jar, "/", &["-o", "/dev/null"]);
    assert_eq!(status, 302);
    let (status, page) = curl(
        &p,
        &jar,
        "/wp-admin/install.php?step=2",
        &[
            "--data-urlencode",
            "weblog_title=Paracloud Blog",
            "--data-urlencode",
            "user_name=admin",
            "--data-urlencode",
            "admin_password=Correct-Horse-9",
            "--data-urlencode",
            "admin_password2=Correct-Horse-9",
            "--data-urlencode",
            "pw_weak=on",
            "--data-urlencode",
            "admin_email=admin@example.com",
            "--data-urlencode",
            "blog_public=0",
        ],
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1>Success!</h1>"), "{page}");
    let (status, home) = curl(&p, &jar, "/", &[]);
    assert_eq!((status, title(&home)), (200, "Paracloud Blog"));

    // Two web instances: a user logged in on one is logged in on the other (the cookies are
    // signed with keys every instance derives alike).
    p.ok(&["scale", "-a", "wordpress", "web=2"]);
    let (status, _) = curl(
        &p,
        &jar,
        "/wp-login.php",
        &[
            "-b",
            "wordpress_test_cookie=WP%20Cookie%20check",
            "--data-urlencode",
            "log=admin",
            "--data-urlencode",
            "pwd=Correct-Horse-9",
            "--data",
            "wp-submit=Log+In&testcookie=1",
        ],
    );
    assert_eq!(status, 302, "a login redirects to the dashboard");
    let web: Vec<String> = p
        .ps("wordpress")
        .iter()
        .filter(|i| field(i, "service") == "web" && field(i, "state") == "running")
        .map(|i| field(i, "instance").to_owned())
        .collect();
    assert_eq!(web.len(), 2, "{web:?}");
    for _ in 0..6 {
        let (status, page) = curl(&p, &jar, "/wp-admin/", &[]);
        assert_eq!(
            status,
            200,
            "{page}\n--- events ---\n{}\n--- data plane ---\n{}\n--- web's logs ---\n{}",
            p.ok(&["events", "-a", "wordpress"]),
            p.dataplane_log(),
            p.ok(&["logs", "-a", "wordpress", "web"]),
        );
        assert!(title(&page).starts_with("Dashboard"), "{}", title(&page));
    }

    // An upload lands on the uploads volume, which every instance serves.
    let (_, media) = curl(&p, &jar, "/wp-admin/media-new.php", &[]);
    let nonce = media
        .split("\"_wpnonce\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no upload nonce in media-new.php"));
    let png = p.root().join("dot.png");
    // A 1x1 PNG.
    std::fs::write(
        &png,
        [
            0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52,
            0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 0x0d, 0x49,
            0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xfc, 0xcf, 0xc0, 0x50, 0x0f, 0, 0x04, 0x85, 1,
            0x80, 0x84, 0xa9, 0x8c, 0x21, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60,
            0x82,
        ],
    )
    .unwrap();
    let (status, answer) = curl(
        &p,
        &jar,
        "/wp-admin/async-upload.php",
        &[
            "-F",
            &format!("async-upload=@{};type=image/png", png.display()),
            "-F",
            "name=dot.png",
            "-F",
            "action=upload-attachment",
            "-F",
            &format!("_wpnonce={nonce}"),
        ],
    );
    assert_eq!(status, 200, "{answer}");
    let uploaded: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(uploaded["success"], true, "{answer}");
    let url = uploaded["data"]["url"].as_str().unwrap();
    let path = &url[url.find("/wp-content/").unwrap()..];
    let fetched = p.root().join("fetched.png");
    for _ in 0..4 {
        let (status, _) = curl(&p, &jar, path, &["-o", fetched.to_str().unwrap()]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            std::fs::read(&fetched).unwrap(),
            std::fs::read(&png).unwrap()
        );
    }

    // What WordPress wrote went through the write address and is on the MariaDB replica too.
    let v: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "wordpress", "db-read", "-o", "json"]))
            .unwrap();
    let read = v["address"].as_str().unwrap().to_owned();
    let query = "SELECT @@server_id <> 1, (SELECT option_value FROM wp_options WHERE option_name = 'blogname'), (SELECT count(*) FROM wp_posts WHERE post_type = 'attachment')";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h",
                &read,
                "-u",
                "wordpress",
                "-D",
                "wordpress",
                "-N",
                "-B",
                "-e",
                query,
            ])
            .env("MYSQL_PWD", "change-me")
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if answer == "1\tParacloud Blog\t1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica answered {answer:?} {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
