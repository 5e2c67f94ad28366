//! The remote API as its users meet it: a daemon serving HTTPS on `listen` (daemon.toml), tokens
//! made with `paracloud token`, the CLI talking to it through `PARACLOUD_HOST` and contexts,
//! each role allowed what it may do and refused the rest, bad tokens refused and throttled, and
//! a certificate that changed refused by the CLI that pinned the first one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use paracloud_api::remote::Remote;
use paracloud_api::{Client, ClientError, ListApps};

const SLEEPER: &str = r#"
app = "far"
[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
"#;

/// A platform whose daemon also serves the remote API, and a config directory of the CLI's own.
struct Remotely {
    p: Platform,
    port: u16,
    config: tempfile::TempDir,
}

impl Remotely {
    fn new() -> Self {
        let p = Platform::new();
        let port = p.listen_remotely();
        // Any command starts the daemon, which reads daemon.toml.
        p.ok(&["ps", "-A"]);
        Self {
            p,
            port,
            config: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn token(&self, name: &str, role: &str, args: &[&str]) -> String {
        self.p.token(name, role, args)
    }

    /// `paracloud ARGS` from "another machine": no state root of its own, the daemon named by
    /// PARACLOUD_HOST, the token in PARACLOUD_TOKEN.
    fn remote(&self, token: &str, args: &[&str]) -> Output {
        self.p
            .command()
            .env("PARACLOUD_ROOT", "/nonexistent/remote-cli-has-no-root")
            .env("PARACLOUD_HOST", self.url())
            .env("PARACLOUD_TOKEN", token)
            .env("PARACLOUD_CONFIG", self.config.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// `paracloud ARGS` with the CLI's contexts (no PARACLOUD_HOST).
    fn with_contexts(&self, args: &[&str]) -> Output {
        self.p
            .command()
            .env("PARACLOUD_ROOT", "/nonexistent/remote-cli-has-no-root")
            .env_remove("PARACLOUD_HOST")
            .env_remove("PARACLOUD_CONTEXT")
            .env("PARACLOUD_CONFIG", self.config.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// The API's answer to `GET /v1/apps` with `token`, through the typed client.
    async fn list_apps(&self, token: Option<&str>) -> Result<usize, ClientError> {
        let remote = Remote::new(&self.url(), None, token.map(str::to_owned)).unwrap();
        Client::remote(remote)
            .call(&ListApps)
            .await
            .map(|a| a.len())
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn status_of(result: Result<usize, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, body }) => (status.as_u16(), body.error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn replicas_of_one(p: &Platform) -> usize {
    p.ps("far")
        .iter()
        .filter(|i| field(i, "service") == "one")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_does_what_it_may_and_bad_tokens_change_nothing() {
    let r = Remotely::new();
    let manifest = r.p.manifest("far", SLEEPER);
    let admin = r.token("ops", "admin", &[]);
    let operator = r.token("ci", "operator", &[]);
    let viewer = r.token("watcher", "viewer", &[]);

    // An admin deploys from afar (the manifest's paths are the daemon machine's).
    ok(&r.remote(&admin, &["up", "-f", manifest.to_str().unwrap()]));
    assert_eq!(replicas_of_one(&r.p), 1);
    let ps = ok(&r.remote(&viewer, &["ps", "-a", "far"]));
    assert!(ps.contains("one.1"), "{ps}");

    // A viewer reads but may not scale: refused, and nothing changes.
    let out = refused(&r.remote(&viewer, &["scale", "-a", "far", "one=3"]));
    assert!(
        out.contains("token watcher has the viewer role, which may not scale: ask an admin for a token with the operator role"),
        "{out}"
    );
    // Nor act on the host.
    let out = refused(&r.remote(&viewer, &["image", "prune"]));
    assert!(
        out.contains("which may not use POST /v1/images/prune"),
        "{out}"
    );
    // An operator scales, and the event log names its token.
    ok(&r.remote(&operator, &["scale", "-a", "far", "one=2"]));
    r.p.wait_ps("far", Duration::from_secs(20), "two instances", |ps| {
        ps.iter().filter(|i| field(i, "state") == "running").count() == 2
    });
    let events = r.p.events("far");
    assert!(events.contains("scaled to 2 (by token ci)"), "{events}");
    // An operator may not take the application down or make tokens.
    let out = refused(&r.remote(&operator, &["down", "-a", "far"]));
    assert!(out.contains("which may not down"), "{out}");
    let out = refused(&r.remote(&operator, &["token", "create", "x", "--role", "admin"]));
    assert!(out.contains("which may not create a token"), "{out}");

    // No token, a wrong one, an expired one, a revoked one: 401 with what to do.
    let (status, message) = status_of(r.list_apps(None).await);
    assert_eq!(status, 401);
    assert!(message.contains("this API needs a token"), "{message}");
    let (status, message) = status_of(r.list_apps(Some("pct_0000")).await);
    assert_eq!(status, 401);
    assert!(message.contains("the token is not valid"), "{message}");
    let brief = r.token("brief", "admin", &["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, message) = status_of(r.list_apps(Some(&brief)).await);
    assert_eq!(status, 401);
    assert!(message.contains("token brief has expired"), "{message}");
    let out = refused(&r.remote(&brief, &["scale", "-a", "far", "one=0"]));
    assert!(out.contains("token brief has expired"), "{out}");
    r.p.ok(&["token", "revoke", "ci"]);
    let out = refused(&r.remote(&operator, &["scale", "-a", "far", "one=0"]));
    assert!(out.contains("token ci was revoked"), "{out}");
    assert_eq!(replicas_of_one(&r.p), 2, "refused requests changed nothing");
    let tokens = r.p.ok(&["token", "ls"]);
    for line in [
        "ci        operator   revoked",
        "brief     admin      expired",
        "ops       admin      active",
    ] {
        assert!(tokens.contains(line), "{tokens}");
    }
    // The secret is never stored: only its hash is in the state.
    let db = rusqlite::Connection::open(r.p.root().join("state.db")).unwrap();
    let stored: String = db
        .query_row("SELECT group_concat(record) FROM tokens", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert!(
        !stored.contains(&admin[4..]),
        "a token's secret is in the state"
    );
    // What remote clients did is in the daemon's log with their token's name.
    let log = r.p.daemon_log();
    assert!(
        log.contains("remote PUT /v1/apps/far/services/one/replicas by token ci from 127.0.0.1"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guessing_tokens_is_slowed_then_refused_for_the_address() {
    let r = Remotely::new();
    let admin = r.token("ops", "admin", &[]);
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let (status, _) = status_of(r.list_apps(Some("pct_guess")).await);
        assert_eq!(status, 401);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "each failure is answered after a pause"
    );
    let (status, message) = status_of(r.list_apps(Some("pct_guess")).await);
    assert_eq!(status, 429);
    assert!(
        message.contains("too many failed logins from this address"),
        "{message}"
    );
    // Held back even with a good token, for a while: nothing is checked for the address.
    let (status, _) = status_of(r.list_apps(Some(&admin)).await);
    assert_eq!(status, 429);
    // The machine's own socket is not affected.
    r.p.ok(&["ps", "-A"]);
}

#[test]
fn contexts_pin_the_certificate_and_refuse_a_changed_one() {
    let r = Remotely::new();
    let token_file: PathBuf = r.config.path().join("ops.token");
    std::fs::write(&token_file, r.token("ops", "admin", &[])).unwrap();

    // A wrong fingerprint given at `context add` is refused before anything is saved.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = refused(&r.with_contexts(&[
        "context",
        "add",
        "prod",
        "--host",
        &r.url(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--fingerprint",
        &wrong,
    ]));
    assert!(out.contains("the daemon's certificate changed"), "{out}");
    assert!(!r.config.path().join("contexts.toml").exists());

    let added = r.with_contexts(&[
        "context",
        "add",
        "prod",
        "--host",
        &r.url(),
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&added.stderr).into_owned();
    assert!(added.status.success(), "{said}");
    assert!(
        said.contains("as token ops (admin role); certificate sha256:"),
        "{said}"
    );
    ok(&r.with_contexts(&["context", "use", "prod"]));
    let ls = ok(&r.with_contexts(&["context", "ls"]));
    assert!(ls.contains("prod *"), "{ls}");
    ok(&r.with_contexts(&["ps", "-A"]));

    // The daemon comes back with a new self-signed certificate: the CLI refuses it.
    terminate(r.p.daemon_pid().unwrap());
    std::fs::remove_dir_all(r.p.root().join("tls")).unwrap();
    r.p.ok(&["ps", "-A"]);
    let out = refused(&r.with_contexts(&["ps", "-A"]));
    assert!(out.contains("the daemon's certificate changed"), "{out}");
    // `default` is this machine again.
    ok(&r.with_contexts(&["context", "use", "default"]));
    let out = refused(&r.with_contexts(&["--context", "nope", "ps"]));
    assert!(out.contains("no context named nope"), "{out}");
    assert_eq!(mode_of(&r.config.path().join("contexts.toml")), 0o600);
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A client still sending a body that the answer did not need (no token, or over the API's
/// limit) gets that answer, not a reset connection: the daemon reads the rest of what is sent
/// before it closes, as a web server's lingering close does. curl, without `Expect:
/// 100-continue`, sends the whole body whatever comes back.
#[test]
fn a_client_sending_a_body_the_answer_did_not_need_still_gets_the_answer() {
    let r = Remotely::new();
    let admin = r.token("big", "admin", &[]);
    let body = r.config.path().join("big.json");
    let filler = "x".repeat(10 << 20);
    std::fs::write(
        &body,
        format!(r#"{{"capsule": "{filler}", "selector": "app=x"}}"#),
    )
    .unwrap();
    let post = |token: Option<&str>| {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sk", "--http1.1", "-H", "Expect:", "-X", "POST"])
            .args([
                "-H",
                "content-type: application/json",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()));
        if let Some(token) = token {
            curl.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        let out = curl
            .arg(format!("{}/v1/capsules/run", r.url()))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for _ in 0..8 {
        let (code, said) = post(Some(&admin));
        assert_eq!(code, Some(0), "curl: {said}");
        assert!(
            said.ends_with("\n413")
                && said.contains("the request body is larger than the 2097152 bytes the API takes"),
            "{said}"
        );
        let (code, said) = post(None);
        assert_eq!(code, Some(0), "curl: {said}");
        assert!(said.ends_with("\n401"), "{said}");
    }
}
