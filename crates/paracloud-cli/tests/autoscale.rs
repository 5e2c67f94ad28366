//! The autoscaler as a user meets it: an `[autoscale]` table in the manifest, a daemon that
//! follows the application with the policy it names, changes it makes under load with their
//! reasons in `paracloud events`, and manifest mistakes located before anything runs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The shop with an autoscaler of `policy`; `api` starts with one instance of half a core.
fn autoscaled_shop(p: &Platform, policy: &str) -> std::path::PathBuf {
    let shop = std::fs::read_to_string(p.shop()).unwrap();
    let shop = shop
        .replace(
            "replicas = 2\nresources = { cpu = 1, memory = \"128M\", pids = 128 }",
            "replicas = 1\nresources = { cpu = 0.5, memory = \"128M\", pids = 128 }\n\
             autoscale = { min = 1, max = 4, cpu_min = 0.5, cpu_max = 0.5 }",
        )
        .replace(
            "app = \"shop\"\n",
            &format!("app = \"shop\"\n\n[autoscale]\npolicy = \"{policy}\"\n"),
        );
    assert!(
        shop.contains("max = 4"),
        "the example manifest changed shape"
    );
    p.manifest(&format!("shop-{policy}"), &shop)
}

fn events(p: &Platform) -> String {
    p.ok(&["events", "-a", "shop"])
}

fn wait_event(p: &Platform, timeout: Duration, what: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let events = events(p);
        if events.contains(what) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no event {what:?} after {timeout:?}:\n{events}\n--- daemon log ---\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_follows_an_autoscaled_app_and_mistakes_are_located() {
    let p = Platform::new();
    let base = std::fs::read_to_string(autoscaled_shop(&p, "hpa")).unwrap();
    let cases = [
        (
            "policy = \"hpa\"",
            "policy = \"hpas\"",
            "autoscale.policy: unknown policy \"hpas\"",
            "did you mean \"hpa\"?",
        ),
        (
            "policy = \"hpa\"",
            "policy = \"hpa\"\nentry = \"shop\"",
            "autoscale.entry: `shop` is not a service",
            "the services are: api, kv, web",
        ),
        (
            "min = 1, max = 4",
            "min = 5, max = 4",
            "services.api.autoscale.min: `min` (5) is more than `max` (4)",
            "hint:",
        ),
        (
            "cpu_min = 0.5, cpu_max = 0.5",
            "cpu_min = 1, cpu_max = 2",
            "`cpu_min` (1) is more than the service's `resources.cpu` (0.5)",
            "hint:",
        ),
        (
            "cpu_max = 0.5 }",
            "cpu_max = 0.5 }\n[services.api.revisions.canary]\nautoscale = { max = 2 }",
            "a revision is not autoscaled",
            "keeps its `replicas`",
        ),
    ];
    for (i, (from, to, error, hint)) in cases.into_iter().enumerate() {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "case {i}: nothing replaced");
        let path = p.manifest(&format!("bad-{i}"), &text);
        let err = p.fails(&["up", "-f", path.to_str().unwrap()]);
        assert!(
            err.contains("paracloud.toml:") && err.contains(error) && err.contains(hint),
            "case {i}: {error:?} with {hint:?} missing from:\n{err}"
        );
    }

    let manifest = autoscaled_shop(&p, "hpa");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_event(
        &p,
        Duration::from_secs(10),
        "autoscaler hpa follows shop: SLO p95 under 200ms at web",
    );
    let view: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "shop", "api", "-o", "json"])).unwrap();
    assert_eq!(view["replicas"], 1);
    assert_eq!(view["cpu"], 0.5);
}

/// Kubernetes' HPA scales out a service whose CPU use is above its target (70% of the CPU it
/// asks for) at its next sync (every 15 s). `api` gets as much work as its half core can do.
#[test]
fn hpa_scales_out_a_cpu_saturated_service() {
    let p = Platform::new();
    let manifest = autoscaled_shop(&p, "hpa");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_event(&p, Duration::from_secs(10), "autoscaler hpa follows shop");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let port = p.port(0);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((200, _)) = http_get(port, "/?work=2000000") {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let events = wait_event(
        &p,
        Duration::from_secs(40),
        "autoscaler hpa: instances 1 -> ",
    );
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    eprintln!(
        "HPA scaled api out {took:?} into the load ({} pages answered)",
        answered.load(Ordering::Relaxed)
    );
    let line = events
        .lines()
        .find(|l| l.contains("autoscaler hpa: instances 1 -> "))
        .unwrap();
    assert!(line.contains(" api "), "the saturated service: {line}");
    let reason = line.split(": ").last().unwrap_or_default();
    assert!(!reason.trim().is_empty(), "with a reason: {line}");
    // The decision is counted in the daemon's metrics.
    let (status, metrics) = unix_http(
        &p.root().join(paracloud_api::SOCKET_NAME),
        "GET",
        "/metrics",
        "",
    );
    assert_eq!(status, 200, "{metrics}");
    let decisions = metrics.lines().find_map(|l| {
        l.strip_prefix(
            r#"paracloud_autoscaler_decisions_total{app="shop",service="api",direction="out"} "#,
        )
    });
    assert!(
        decisions.is_some_and(|n| n.parse::<f64>().is_ok_and(|n| n >= 1.0)),
        "a scale-out counted: {metrics}"
    );
    p.wait_ps(
        "shop",
        Duration::from_secs(20),
        "more api instances",
        |ps| {
            ps.iter()
                .filter(|i| field(i, "service") == "api" && field(i, "state") == "running")
                .count()
                > 1
        },
    );
}
