//! The shop taking part through PaCI, under a constant load: kv migrated with its data handed
//! over, api updated instance by instance make before break, web warming at a low weight. Every
//! request of the load must succeed and every key written must be read back.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The shop with the api published on the test's second port, so that clients reach kv
/// through it.
fn shop(p: &Platform) -> std::path::PathBuf {
    let text = std::fs::read_to_string(p.shop()).unwrap();
    let published = text.replace(
        "ports = [{ port = 8000, protocol = \"http\" }]",
        &format!(
            "ports = [{{ port = 8000, protocol = \"http\", publish = {} }}]",
            p.port(1)
        ),
    );
    assert!(published != text, "the example manifest changed shape");
    p.manifest("shop-paci", &published)
}

/// Clients writing keys through the api (each its own keys) and reading each back at once.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    written: Arc<Mutex<Vec<(String, String)>>>,
    failed: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU64>,
}

impl Writers {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|client| {
                let (stop, written, failed, requests) = (
                    stop.clone(),
                    written.clone(),
                    failed.clone(),
                    requests.clone(),
                );
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("k{client}-{i}");
                        let value = format!("v{i}");
                        let put = http_send(port, "PUT", &format!("/api/kv/{key}"), &value);
                        requests.fetch_add(1, Ordering::Relaxed);
                        if !matches!(put, Ok((200, _))) {
                            failed.lock().unwrap().push(format!("PUT {key}: {put:?}"));
                            continue;
                        }
                        written.lock().unwrap().push((key.clone(), value.clone()));
                        let get = http_get(port, &format!("/api/kv/{key}"));
                        requests.fetch_add(1, Ordering::Relaxed);
                        match get {
                            Ok((200, body)) if body.contains(&format!("\"{value}\"")) => {}
                            other => failed.lock().unwrap().push(format!("GET {key}: {other:?}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            threads,
            written,
            failed,
            requests,
        }
    }

    fn finish(self) -> (Vec<(String, String)>, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let written = self.written.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (written, failed, self.requests.load(Ordering::Relaxed))
    }
}

#[test]
fn a_kv_migration_under_constant_load_keeps_every_key_and_fails_no_request() {
    let p = Platform::new();
    let manifest = shop(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let writers = Writers::start(p.port(1), 4);
    std::thread::sleep(Duration::from_millis(700));
    let out = p.run(&["migrate", "-a", "shop", "kv.1"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && said.contains("migrated kv.1 to kv.2 via paci"),
        "{said}\n{}",
        p.daemon_log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (written, failed, requests) = writers.finish();
    eprintln!(
        "{requests} requests during the kv migration, {} keys written",
        written.len()
    );
    assert!(written.len() > 50, "the load ran: {}", written.len());
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    // Every key written reads back (four readers at once).
    let port = p.port(1);
    std::thread::scope(|scope| {
        for part in written.chunks(written.len().div_ceil(4)) {
            scope.spawn(move || {
                for (key, value) in part {
                    let (status, body) = http_get(port, &format!("/api/kv/{key}")).unwrap();
                    assert_eq!(status, 200, "{key}: {body}");
                    assert!(body.contains(&format!("\"{value}\"")), "{key}: {body}");
                }
            });
        }
    });
    let events = p.events("shop");
    assert!(
        events.contains("state handed over to kv.2 through PaCI"),
        "{events}"
    );
    let ps = p.ps("shop");
    let kv: Vec<&str> = ps
        .iter()
        .filter(|i| field(i, "service") == "kv")
        .map(|i| field(i, "instance"))
        .collect();
    assert_eq!(kv, ["kv.2"]);
}

#[test]
fn a_rolling_update_of_api_under_load_fails_no_request() {
    let p = Platform::new();
    let manifest = shop(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let writers = Writers::start(p.port(1), 4);
    std::thread::sleep(Duration::from_millis(500));
    // A changed spec for api: every instance replaced, one at a time, make before break.
    let changed = std::fs::read_to_string(&manifest).unwrap().replace(
        "\"--kv\", \"kv:7000\"]",
        "\"--kv\", \"kv:7000\"]\nenv = { UPDATED = \"1\" }",
    );
    assert!(
        changed.contains("UPDATED"),
        "the example manifest changed shape"
    );
    let changed = p.manifest("shop-paci-2", &changed);
    let out = p.run(&["up", "-f", changed.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("changed: api"),
        "{said}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (written, failed, requests) = writers.finish();
    eprintln!("{requests} requests during the rolling update of api");
    assert!(written.len() > 50, "the load ran: {}", written.len());
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let ps = p.ps("shop");
    let api: Vec<(&str, i64)> = ps
        .iter()
        .filter(|i| field(i, "service") == "api")
        .map(|i| (field(i, "state"), i["revision"].as_i64().unwrap()))
        .collect();
    assert_eq!(api, [("running", 1), ("running", 1)], "{ps:?}");
    let events = p.events("shop");
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("migrated to api.") && l.contains("via restart"))
            .count(),
        2,
        "{events}"
    );
}

#[test]
fn web_takes_a_low_share_while_it_warms_up() {
    let p = Platform::new();
    let manifest = shop(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = p.events("shop");
        let low = events
            .lines()
            .position(|l| l.contains("web.1") && l.contains("weight 10% (set through PaCI)"));
        let full = events
            .lines()
            .position(|l| l.contains("web.1") && l.contains("weight 100% (set through PaCI)"));
        if let (Some(low), Some(full)) = (low, full) {
            assert!(low < full, "{events}");
            break;
        }
        assert!(Instant::now() < deadline, "{events}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, page) = http_get(p.port(0), "/").unwrap();
    assert_eq!(status, 200, "{page}");
}
