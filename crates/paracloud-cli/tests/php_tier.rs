//! The catalogue's PHP web tier as a user meets it: `catalog = "php"` with an application
//! directory, served by real nginx and php-fpm instances (a micro-image of the machine's
//! packages) through the service's published port, its sessions kept on a volume every instance
//! shares or in the catalogue's Redis.

mod common;

use std::collections::BTreeSet;

use common::*;

/// A session counter that says which instance answered and where its sessions are kept.
const COUNTER: &str = r#"<?php
session_start();
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
header('Content-Type: text/plain');
echo $_SESSION['n'], ' ', gethostname(), ' ', ini_get('session.save_handler'), ' ', getenv('GREETING'), "\n";
"#;

fn application(p: &Platform, extra: &str, php_extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"app = "shop"

[services.web]
catalog = "php"
root = "app"
replicas = 2
ports = ["{}:80/http"]
env = {{ GREETING = "hello" }}
{php_extra}
{extra}"#,
        p.port(0)
    );
    let path = p.manifest("shop", &text);
    let app = path.parent().unwrap().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("index.php"), COUNTER).unwrap();
    std::fs::write(app.join("style.css"), "body { color: teal }\n").unwrap();
    std::fs::write(
        app.join("client.php"),
        "<?php echo $_SERVER['REMOTE_ADDR'];\n",
    )
    .unwrap();
    path
}

/// Sends `n` requests with one cookie jar (one user's browser), each on a new connection, and
/// returns the answers' lines.
fn session(p: &Platform, jar: &std::path::Path, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "-c", jar.to_str().unwrap()])
                .args(["-b", jar.to_str().unwrap()])
                .arg(format!("http://127.0.0.1:{}{path}", p.port(0)))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect()
}

/// Checks that a user's session counts 1..=n across answers from more than one instance, kept
/// by `handler`.
fn counts_across_instances(answers: &[String], handler: &str) {
    let mut instances = BTreeSet::new();
    for (i, answer) in answers.iter().enumerate() {
        let words: Vec<&str> = answer.split(' ').collect();
        assert_eq!(words.len(), 4, "{answers:?}");
        assert_eq!(words[0], (i + 1).to_string(), "{answers:?}");
        assert_eq!(words[2], handler, "{answers:?}");
        assert_eq!(
            words[3], "hello",
            "the service's env reaches the script: {answers:?}"
        );
        instances.insert(words[1].to_owned());
    }
    assert!(
        instances.len() >= 2,
        "one instance answered every time: {answers:?}"
    );
}

#[test]
fn a_php_tier_keeps_sessions_on_its_shared_volume_across_instances() {
    let p = Platform::new();
    let manifest = application(&p, "", "");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let jar = manifest.parent().unwrap().join("jar");
    counts_across_instances(&session(&p, &jar, "/", 8), "files");
    // A path that is no file goes to index.php; files are served as they are.
    let (status, body) = http_get(p.port(0), "/products/42").unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("1 "), "{body}");
    assert_eq!(
        http_get(p.port(0), "/style.css").unwrap(),
        (200, "body { color: teal }\n".into())
    );
    assert_eq!(http_get(p.port(0), "/missing.php").unwrap().0, 404);
    // The scripts see the client's address (as the data plane tells it), whatever the client
    // claims in its own X-Forwarded-For.
    for claim in [None, Some("X-Forwarded-For: 203.0.113.9")] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(claim.iter().flat_map(|h| ["-H", h]))
            .arg(format!("http://127.0.0.1:{}/client.php", p.port(0)))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "127.0.0.1",
            "REMOTE_ADDR with {claim:?}"
        );
    }

    // The application's directory is read-only inside; the sessions volume is one for both.
    let ps = p.ps("shop");
    assert_eq!(ps.len(), 2, "{ps:#?}");
    let pid = ps[0]["pid"].as_i64().unwrap();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/srv/app"))
        .unwrap_or_else(|| panic!("no /srv/app in the instance:\n{mounts}"));
    assert!(
        root.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/var/lib/php/sessions")),
        "the sessions volume is mounted:\n{mounts}"
    );

    // Scaled like any service, the new instance finds the same sessions.
    p.ok(&["scale", "-a", "shop", "web=3"]);
    p.wait_ps(
        "shop",
        std::time::Duration::from_secs(60),
        "three ready instances",
        |ps| ps.iter().filter(|i| field(i, "state") == "running").count() == 3,
    );
    let more = session(&p, &jar, "/", 6);
    assert!(more[0].starts_with("9 "), "{more:?}");
    let described = p.ok(&["describe", "-a", "shop", "web"]);
    assert!(
        described.contains("php 8.2, its instances, each an nginx in front of php-fpm"),
        "{described}"
    );
}

#[test]
fn scaling_in_a_php_tier_lets_the_scripts_it_runs_finish() {
    let p = Platform::new();
    let manifest = application(&p, "", "");
    let slow = "<?php\nusleep(2000000);\necho 'done ', gethostname();\n";
    std::fs::write(manifest.parent().unwrap().join("app/slow.php"), slow).unwrap();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let port = p.port(0);
    // Slow scripts under way on both instances when one of them is scaled in.
    let requests: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "--max-time", "30", "-w", " %{http_code}"])
                    .arg(format!("http://127.0.0.1:{port}/slow.php"))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(700));
    p.ok(&["scale", "-a", "shop", "web=1"]);
    let answers: Vec<String> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    let mut instances = BTreeSet::new();
    for answer in &answers {
        let words: Vec<&str> = answer.split(' ').collect();
        assert!(
            words.len() == 3 && words[0] == "done" && words[2] == "200",
            "a script cut off by the scale-in: {answers:?}\n--- logs ---\n{}",
            p.ok(&["logs", "-a", "shop", "web"])
        );
        instances.insert(words[1].to_owned());
    }
    assert_eq!(
        instances.len(),
        2,
        "the instance scaled in ran scripts too: {answers:?}"
    );
    p.wait_ps(
        "shop",
        std::time::Duration::from_secs(30),
        "one instance left",
        |ps| ps.len() == 1,
    );
}

#[test]
fn a_php_tier_keeps_sessions_in_the_catalogues_redis() {
    let p = Platform::new();
    let redis =
        "[services.cache]\ncatalog = \"redis\"\nenv = { REDIS_PASSWORD = \"s3cr&t p@ss\" }\n";
    let manifest = application(&p, redis, "sessions = \"cache\"");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let jar = manifest.parent().unwrap().join("jar");
    counts_across_instances(&session(&p, &jar, "/", 8), "redis");

    // The sessions live in Redis: the tier's instances are replaced, the count goes on.
    p.ok(&["restart", "-a", "shop", "web"]);
    let after = session(&p, &jar, "/", 2);
    assert!(after[0].starts_with("9 "), "{after:?}");
}

#[test]
fn a_php_tier_with_bad_keys_is_refused_and_changes_nothing() {
    let p = Platform::new();
    let manifest = application(&p, "", "");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("shop"));
    let text = std::fs::read_to_string(&manifest).unwrap();
    for (bad, said) in [
        (
            text.replace("root = \"app\"", "root = \"app\"\nsessions = \"kv\""),
            "services.web.sessions: `kv` is not a catalogue Redis service of this application",
        ),
        (
            text.replace("root = \"app\"", "root = \"nowhere\""),
            "services.web.root: ",
        ),
        (
            text.replace(":80/http", ":9000/http"),
            "services.web.ports: a PHP web tier serves HTTP on port 80, not 9000/http",
        ),
        (
            text.replace("root = \"app\"", "root = \"app\"\nversion = \"7.4\""),
            "services.web.version: the catalogue's php runs version 8.2, not \"7.4\"",
        ),
        (
            text.replace(
                "root = \"app\"",
                "root = \"app\"\ncommand = \"php -S 0:80\"",
            ),
            "services.web.command: `catalog = \"php\"` does not take `command`",
        ),
    ] {
        std::fs::write(&manifest, &bad).unwrap();
        let refused = p.fails(&["up", "-f", manifest.to_str().unwrap()]);
        assert!(refused.contains(said), "{refused}");
    }
    std::fs::write(&manifest, &text).unwrap();
    let render = p.fails(&["k8s", "render", "-f", manifest.to_str().unwrap()]);
    assert!(
        render.contains("services.web.catalog: a PHP web tier serves a directory"),
        "{render}"
    );
    assert_eq!(pids(&p.ps("shop")), before, "nothing was replaced");
    assert_eq!(http_get(p.port(0), "/style.css").unwrap().0, 200);
}
