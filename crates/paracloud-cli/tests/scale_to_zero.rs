//! Scale to zero and back, as a user meets it: a service with `scale_to_zero` that gets no
//! request is scaled to zero, and the next request is held by the data plane while the daemon
//! starts it, then served; the wait is reported as a cold start.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn web_instances(ps: &[serde_json::Value], state: &str) -> usize {
    ps.iter()
        .filter(|i| field(i, "service") == "web" && field(i, "state") == state)
        .count()
}

#[test]
fn an_idle_service_goes_to_zero_and_a_request_brings_it_back() {
    let p = Platform::new();
    let shop = std::fs::read_to_string(p.shop()).unwrap();
    // The key goes into [services.web], before the table of its capsule policy.
    let idle = shop.replacen(
        "\n[services.web.capsules]",
        "\nscale_to_zero = \"2s\"\n[services.web.capsules]",
        1,
    );
    assert!(idle != shop, "the example manifest changed shape");
    let manifest = p.manifest("shop-idle", &idle);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let (status, _) = http_get(p.port(0), "/").unwrap();
    assert_eq!(status, 200);

    p.wait_ps(
        "shop",
        Duration::from_secs(20),
        "web scaled to zero",
        |ps| ps.iter().all(|i| field(i, "service") != "web"),
    );
    let events = p.ok(&["events"]);
    assert!(
        events.contains("scaled to zero (scale_to_zero)"),
        "{events}"
    );
    assert_eq!(
        web_instances(&p.ps("shop"), "running"),
        0,
        "nothing serves the published port any more"
    );

    let asked = Instant::now();
    let (status, body) = http_get(p.port(0), "/").unwrap();
    let cold_start = asked.elapsed();
    assert_eq!(status, 200, "the held request is served: {body}");
    assert!(body.contains("web: web."), "{body}");
    eprintln!("cold start seen by the client: {cold_start:?}");
    // It comes back with the manifest's replicas.
    p.wait_ps("shop", Duration::from_secs(20), "web back at 2", |ps| {
        web_instances(ps, "running") == 2
    });
    let events = p.ok(&["events"]);
    assert!(
        events.contains("a request is waiting: starting 2 instance(s)"),
        "{events}"
    );

    let json = p.ok(&["top", "-a", "shop", "--once", "-o", "json"]);
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    let published = snapshot["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "shop/web:8080 published")
        .unwrap_or_else(|| panic!("no published web listener in {json}"));
    assert_eq!(published["held"], 1, "{published}");
    let held_ms = published["held_max_us"].as_u64().unwrap() as f64 / 1000.0;
    assert!(
        held_ms > 0.0 && held_ms <= cold_start.as_secs_f64() * 1000.0,
        "the data plane measured the cold start: {held_ms} ms of {cold_start:?}"
    );
    eprintln!("cold start measured by the data plane: {held_ms:.1} ms");
    let table = p.ok(&["top", "-a", "shop", "--once"]);
    assert!(
        table.contains("COLD STARTS") && table.contains("1 (max "),
        "{table}"
    );
    p.ok(&["down"]);
}
