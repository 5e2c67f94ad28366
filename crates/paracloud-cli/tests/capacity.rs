//! Capacity measured per instance, as a user meets it: two instances of one service with the
//! same CPU limit, one doing three times the work per request (as a cold cache or a larger shard
//! would), under load. Each one's capacity, measured from its own completions and CPU, shows in
//! `describe`; the data plane's weights (`top`) and so the traffic follow the capacities instead
//! of the equal CPU limits.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// An HTTP server whose every answer costs CPU: three times as much in the second instance.
const WORKER: &str = r#"
import http.server, os
ROUNDS = 30000 * (3 if os.environ["PARACLOUD_INDEX"] == "2" else 1)
class Work(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        sum(i * i for i in range(ROUNDS))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Work).serve_forever()
"#;

fn manifest(p: &Platform) -> std::path::PathBuf {
    let command = serde_json::to_string(&["/usr/bin/python3", "-c", WORKER]).unwrap();
    p.manifest(
        "cap",
        &format!(
            r#"
app = "cap"
[services.work]
image = "host"
command = {command}
replicas = 2
resources = {{ cpu = 0.5 }}
ports = [{{ port = 8000, protocol = "http", publish = {port} }}]
health = {{ tcp = 8000, interval = "200ms" }}
stop_signal = "KILL"
"#,
            port = p.port(0)
        ),
    )
}

/// Each instance's measured capacity, as `describe` shows it.
fn capacities(p: &Platform) -> Vec<(String, Option<f64>)> {
    let view: Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "cap", "work", "-o", "json"])).unwrap();
    view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap().to_string(),
                i["capacity_rps"].as_f64(),
            )
        })
        .collect()
}

/// The published listener's backends as `top` shows them: (instance, weight, requests).
fn backends(p: &Platform) -> Vec<(String, u64, u64)> {
    let top: Value =
        serde_json::from_str(&p.ok(&["top", "-a", "cap", "--once", "-o", "json"])).unwrap();
    let listener = top["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str().unwrap().ends_with("published"))
        .unwrap_or_else(|| panic!("no published listener in {top}"));
    let mut rows: Vec<(String, u64, u64)> = listener["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
                b["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn each_instance_s_capacity_is_measured_and_its_share_of_traffic_follows_it() {
    let p = Platform::new();
    let manifest = manifest(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    // Before any request: nothing is measured, and the weights follow the equal CPU limits.
    assert_eq!(
        capacities(&p),
        [("work.1".to_string(), None), ("work.2".to_string(), None)]
    );
    let weights: Vec<u64> = backends(&p).iter().map(|b| b.1).collect();
    assert_eq!(weights, [500, 500]);

    // A steady load on the published port from a few clients.
    let port = p.port(0);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = http_get(port, "/");
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let measured = loop {
        let seen = capacities(&p);
        if seen.iter().all(|(_, c)| c.is_some()) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "not measured under load: {seen:?}\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Let the averages settle, then look again.
    std::thread::sleep(Duration::from_secs(5));
    let measured_again = capacities(&p);
    let (one, two) = (measured_again[0].1.unwrap(), measured_again[1].1.unwrap());
    let ratio = one / two;
    assert!(
        (1.8..=5.0).contains(&ratio),
        "work.1 does a third of work.2's work per request: {one:.0} vs {two:.0} req/s ({measured:?} first)"
    );
    let before = backends(&p);
    let (w1, w2) = (before[0].1, before[1].1);
    assert_eq!(w1 + w2, 1000, "the service's total stays its CPU's");
    assert!(
        w1 as f64 >= 1.8 * w2 as f64,
        "the weights follow the capacities: {before:?}"
    );
    // Over the next seconds, the traffic goes where the capacity is.
    std::thread::sleep(Duration::from_secs(4));
    let after = backends(&p);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.2 - b.2).collect();
    let share = served[0] as f64 / (served[0] + served[1]).max(1) as f64;
    eprintln!(
        "capacities {one:.0} and {two:.0} req/s ({ratio:.2}×), weights {w1} and {w2}, work.1 served {:.0}% of the last {} requests",
        share * 100.0,
        served[0] + served[1]
    );
    assert!(
        share > 0.6,
        "work.1 served {} of {} requests",
        served[0],
        served[0] + served[1]
    );
    let table = p.ok(&["describe", "-a", "cap", "work"]);
    assert!(
        table.contains("CAPACITY") && table.contains("req/s"),
        "{table}"
    );
    p.ok(&["down", "-a", "cap"]);
}
