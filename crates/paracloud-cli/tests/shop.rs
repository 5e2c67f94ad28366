//! The shop example end to end: the real CLI, a real daemon, sandboxed instances, real requests.

mod common;

use std::time::{Duration, Instant};

use common::*;

const UP: Duration = Duration::from_secs(60);

fn visits(body: &str) -> u64 {
    let start =
        body.find("id=\"visits\">").expect("the page shows visits") + "id=\"visits\">".len();
    body[start..].split('<').next().unwrap().parse().unwrap()
}

/// GET / through the published port until it answers 200 (the data plane may still be binding).
/// The lines of /proc/net/tcp whose local port is `port` (state 0A: listening).
fn sockets_on(port: u16) -> String {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").contains(&needle))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn page(p: &Platform) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(p.port(0), "/") {
            Ok((200, body)) => return body,
            other if Instant::now() > deadline => {
                panic!(
                    "the shop does not answer: {other:?}\n--- daemon log ---\n{}\n--- data plane log ---\n{}\n--- data plane {:?} alive: {} ---\n--- sockets on the port ---\n{}",
                    p.daemon_log(),
                    p.dataplane_log(),
                    p.dataplane_pid(),
                    p.dataplane_pid().is_some_and(alive),
                    sockets_on(p.port(0))
                )
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn count(ps: &[serde_json::Value], service: &str, state: &str) -> usize {
    ps.iter()
        .filter(|i| field(i, "service") == service && field(i, "state") == state)
        .count()
}

#[test]
fn the_shop_comes_up_serves_all_tiers_scales_logs_restarts_and_goes_down() {
    let p = Platform::new();
    let manifest = p.shop();
    let manifest = manifest.to_str().unwrap();
    p.ok(&["up", "-f", manifest]);

    let body = page(&p);
    assert!(body.contains("Paracloud shop"), "{body}");
    assert!(
        body.contains("web: web.") && body.contains("api: api.") && body.contains("kv: ok"),
        "all three tiers: {body}"
    );

    let ps = p.ps("shop");
    assert_eq!(ps.len(), 5, "kv 1 + api 2 + web 2: {ps:#?}");
    for i in &ps {
        assert_eq!(field(i, "app"), "shop");
        assert_eq!(field(i, "state"), "running");
        assert!(i["pid"].as_i64().unwrap() > 1);
        assert!(field(i, "address").starts_with(&format!("10.{}.", 100 + p.slot)));
        assert!(field(i, "instance").contains('.'));
    }
    let table = p.ok(&["ps", "-a", "shop"]);
    assert!(
        table.starts_with("APP") && table.contains("api.2"),
        "{table}"
    );
    let yaml = p.ok(&["ps", "-a", "shop", "-o", "yaml"]);
    assert!(yaml.contains("instance: kv.1"), "{yaml}");

    // Scale out, to zero, and back.
    p.ok(&["scale", "-a", "shop", "api=3"]);
    let ps = p.ps("shop");
    assert_eq!(count(&ps, "api", "running"), 3);
    p.ok(&["scale", "-a", "shop", "api=0"]);
    assert_eq!(
        p.ps("shop")
            .iter()
            .filter(|i| field(i, "service") == "api")
            .count(),
        0
    );
    p.ok(&["scale", "-a", "shop", "api=1"]);
    assert!(page(&p).contains("api: api.1"));

    // Logs per service and per instance.
    let logs = p.ok(&["logs", "-a", "shop", "web"]);
    assert!(logs.lines().all(|l| l.starts_with("web.")), "{logs}");
    assert!(!logs.is_empty(), "the web instances log their start");
    let one = p.ok(&["logs", "-a", "shop", "kv.1", "-n", "5"]);
    assert!(!one.is_empty() && !one.contains("kv.1 |"), "{one}");

    // Restart replaces every instance, make before break: new instances (under new numbers),
    // new pids, same count.
    let before = pids(&p.ps("shop"));
    p.ok(&["restart", "-a", "shop", "web"]);
    let after = pids(&p.ps("shop"));
    let web_before: Vec<_> = before
        .iter()
        .filter(|(n, _)| n.starts_with("web."))
        .collect();
    let web_after: Vec<_> = after
        .iter()
        .filter(|(n, _)| n.starts_with("web."))
        .collect();
    assert_eq!(web_before.len(), web_after.len());
    for (b, a) in web_before.iter().zip(&web_after) {
        assert_ne!(b.0, a.0, "{} was replaced by {}", b.0, a.0);
        assert!(
            !before.iter().any(|(_, pid)| *pid == a.1),
            "{} got a new process",
            a.0
        );
    }
    assert!(page(&p).contains("kv: ok"));

    let describe = p.ok(&["describe", "-a", "shop", "api"]);
    assert!(
        describe.contains("Replicas:") && describe.contains("1 wanted, 1 ready"),
        "{describe}"
    );
    assert!(
        describe.contains("scaled to 3"),
        "recent events: {describe}"
    );

    p.ok(&["down", "-a", "shop"]);
    assert!(p.ok(&["ps", "-A", "-o", "json"]).trim() == "[]");
    assert!(
        http_get(p.port(0), "/").is_err(),
        "nothing listens once the app is down"
    );
}

#[test]
fn an_instance_killed_from_outside_is_restarted() {
    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let ps = p.ps("shop");
    let web1 = ps.iter().find(|i| field(i, "instance") == "web.1").unwrap();
    let pid = web1["pid"].as_i64().unwrap() as i32;
    kill9(pid);
    let ps = p.wait_ps("shop", UP, "web.1 to run again", |ps| {
        ps.iter().any(|i| {
            field(i, "instance") == "web.1"
                && field(i, "state") == "running"
                && i["pid"].as_i64() != Some(pid as i64)
        })
    });
    let web1 = ps.iter().find(|i| field(i, "instance") == "web.1").unwrap();
    assert_eq!(web1["restarts"].as_u64(), Some(1));
    let events = p.ok(&["events", "-a", "shop"]);
    assert!(events.contains("killed by SIGKILL"), "{events}");
    assert!(page(&p).contains("kv: ok"));
}

/// The children of `daemon` that run the hidden `__spawner` command.
fn spawners_of(daemon: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for pid in all_pids() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
            continue;
        };
        let parent = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let second = cmdline.split(|b| *b == 0).nth(1).unwrap_or_default();
        if parent == Some(daemon) && second == b"__spawner" {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_daemon_killed_with_sigkill_readopts_its_instances_and_the_shop_keeps_answering() {
    let p = Platform::new();
    let manifest = p.shop();
    let manifest = manifest.to_str().unwrap();
    p.ok(&["up", "-f", manifest]);
    let before = pids(&p.ps("shop"));
    let daemon = p.daemon_pid().unwrap();
    let spawners = spawners_of(daemon);
    assert_eq!(spawners.len(), 1, "the daemon's spawner: {spawners:?}");
    kill9(daemon);
    while alive(daemon) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The spawner ends when its daemon's end of their socket closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(spawners[0]) {
        assert!(Instant::now() < deadline, "the spawner outlived its daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
    // No daemon: the instances and the data plane still serve.
    for _ in 0..20 {
        assert!(page(&p).contains("kv: ok"));
    }
    // Any command starts a new daemon, as up does; it adopts what runs: same pids, no duplicates.
    let after = pids(&p.ps("shop"));
    p.ok(&["up", "-f", manifest]);
    assert_eq!(pids(&p.ps("shop")), after);
    assert_eq!(before, after);
    assert_ne!(p.daemon_pid().unwrap(), daemon);
    let events = p.ok(&["events", "-a", "shop"]);
    assert_eq!(events.matches("re-adopted").count(), 5, "{events}");
    assert!(page(&p).contains("kv: ok"));

    // An adopted instance is no longer the daemon's child: its end is still seen (by its pidfd)
    // and it is restarted by policy.
    let (_, kv_pid) = after.iter().find(|(n, _)| n == "kv.1").unwrap().clone();
    kill9(kv_pid as i32);
    p.wait_ps("shop", UP, "kv.1 to run again", |ps| {
        ps.iter().any(|i| {
            field(i, "instance") == "kv.1"
                && field(i, "state") == "running"
                && i["pid"].as_i64() != Some(kv_pid)
        })
    });
    assert!(page(&p).contains("kv: ok"));
}

#[test]
fn a_killed_data_plane_is_started_again_by_the_daemon() {
    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let first = p.dataplane_pid().unwrap();
    kill9(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.dataplane_pid() == Some(first) || !p.dataplane_pid().is_some_and(alive) {
        assert!(
            Instant::now() < deadline,
            "no new data plane:\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        page(&p).contains("kv: ok"),
        "the new data plane has the routes"
    );
}

#[test]
fn kv_data_survives_down_and_up_and_goes_with_down_volumes() {
    let p = Platform::new();
    let manifest = p.shop();
    let manifest = manifest.to_str().unwrap();
    p.ok(&["up", "-f", manifest]);
    let first = visits(&page(&p));
    let second = visits(&page(&p));
    assert_eq!(second, first + 1);
    p.ok(&["down", "-a", "shop"]);
    p.ok(&["up", "-f", manifest]);
    assert_eq!(
        visits(&page(&p)),
        second + 1,
        "the kvdata volume kept the count"
    );
    p.ok(&["down", "-a", "shop", "--volumes"]);
    assert!(!p.root().join("volumes/shop").exists());
    p.ok(&["up", "-f", manifest]);
    assert_eq!(visits(&page(&p)), 1, "a fresh volume starts from zero");
}

#[test]
fn scaling_restarting_and_replacing_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = p.port(0);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(port, "/") {
                        Ok((200, body)) if body.contains("kv: ok") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    for scale in [
        "web=4", "web=1", "web=3", "api=3", "web=1", "api=1", "web=2",
    ] {
        p.ok(&["scale", "-a", "shop", scale]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Restart: every api instance replaced one by one.
    p.ok(&["restart", "-a", "shop", "api"]);
    // A new spec: every web instance replaced one by one by `up`.
    let changed = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"http://api:8000\"]", "\"http://api:8000/\"]");
    assert!(
        changed.contains("api:8000/"),
        "the example manifest changed shape"
    );
    let changed = p.manifest("shop-changed", &changed);
    let out = p.run(&["up", "-f", changed.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("changed: web"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "scaling, restarting and replacing under load: {ok} requests served, {} failed",
        failed.len()
    );
    assert!(ok > 100, "the load ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n--- daemon log ---\n{}\n--- data plane log ---\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        p.daemon_log(),
        p.dataplane_log()
    );
}

#[test]
fn top_counts_exactly_what_was_sent_per_service() {
    let p = Platform::new();
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    for _ in 0..25 {
        let (status, _) = http_get(p.port(0), "/").unwrap();
        assert_eq!(status, 200);
    }
    let (status, _) = http_get(p.port(0), "/no-such-page").unwrap();
    assert_eq!(status, 404);
    let json = p.ok(&["top", "-a", "shop", "--once", "-o", "json"]);
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listener = |name: &str| {
        snapshot["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {json}"))
            .clone()
    };
    let web = listener("shop/web:8080 published");
    assert_eq!(web["requests"], 26);
    assert_eq!(web["responses_2xx"], 25);
    assert_eq!(web["responses_4xx"], 1);
    let per_instance: u64 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        per_instance, 26,
        "every request reached exactly one instance"
    );
    // Each page asks the api once: the api's service address saw exactly as many requests.
    let api = listener("shop/api:8000");
    assert_eq!(api["requests"], 25);
    // The call graph: every page request came from outside, and each made one call web -> api
    // and one api -> kv connection at most (kv is TCP: connections, pooled by api).
    let calls = snapshot["calls"].as_array().unwrap();
    let call = |from: &str, to: &str| {
        calls
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .map(|c| c["requests"].as_u64().unwrap())
    };
    assert_eq!(call("external", "shop/web"), Some(26));
    assert_eq!(call("shop/web", "shop/api"), Some(25));
    assert!(
        call("shop/api", "shop/kv").is_some_and(|n| n >= 1),
        "{calls:?}"
    );
    let table = p.ok(&["top", "-a", "shop", "--once"]);
    assert!(
        table.starts_with("LISTENER / INSTANCE") && table.contains("  web.1"),
        "{table}"
    );
}
