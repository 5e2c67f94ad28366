//! The dashboard in a real Chromium, driven by WebDriver, against a real daemon running the
//! shop, through its remote listener (HTTPS) and a token: the login, the services and their instances, scaling from the page, the charts under load with
//! the decisions marked, the manifest checked as it is typed, an instance's output and events,
//! a command typed in the debug terminal, a migration, a capsule run with its output, and a viewer refused.
//!
//! With `PARACLOUD_SCREENSHOTS=DIR`, the screenshots of the main views are also copied into
//! DIR (the README's come from `docs/dashboard/`).

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use webdriver::Browser;

const WAIT: Duration = Duration::from_secs(30);

/// Sends requests to the shop's page until told to stop (at most two minutes): a steady load
/// for the charts to show.
fn load(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let _ = http_get(port, "/");
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

/// The daemon's remote listener (HTTPS, its self-signed certificate) for the browser: set in
/// daemon.toml before any command starts the daemon.
fn listen(p: &Platform) -> String {
    format!("https://127.0.0.1:{}/", p.listen_remotely())
}

/// Logs in on the page with `token`.
fn log_in(browser: &Browser, token: &str) {
    let field = browser.wait_for("#token", WAIT);
    browser.clear(&field);
    browser.type_into(&field, token);
    browser.click(&browser.find("#login-button").unwrap());
}

/// Logs in with a good token and waits for the login form to go; a refusal on the way (the
/// page's error, such as a request that never got its answer) fails with the daemon's log.
fn log_in_as(p: &Platform, browser: &Browser, token: &str) {
    // An earlier refusal's words stay on the page until the form is sent again.
    let earlier = browser.text("#login-error");
    log_in(browser, token);
    browser.wait_until("the login form gone", WAIT, |b| {
        let error = b.text("#login-error");
        assert!(
            error.is_empty() || error == earlier,
            "logging in failed: {error}\n--- daemon log ---\n{}",
            p.daemon_log()
        );
        b.find("#login").is_err()
    });
}

fn count(browser: &Browser, selector: &str) -> u64 {
    browser
        .script(
            "return document.querySelectorAll(arguments[0]).length;",
            json!([selector]),
        )
        .as_u64()
        .unwrap_or(0)
}

fn data(browser: &Browser, selector: &str, key: &str) -> String {
    browser
        .script(
            "const e = document.querySelector(arguments[0]); return e ? (e.dataset[arguments[1]] || '') : '';",
            json!([selector, key]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn shot(p: &Platform, browser: &Browser, name: &str) {
    let path = p.root().join("screenshots").join(format!("{name}.png"));
    browser.screenshot(&path);
    if let Some(dir) = std::env::var_os("PARACLOUD_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&path, dir.join(format!("{name}.png"))).unwrap();
    }
}

#[test]
fn the_dashboard_shows_the_shop_scales_it_charts_its_load_and_checks_its_manifest() {
    let p = Platform::new();
    let url = listen(&p);
    let manifest = p.shop();
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let admin = p.token("dash-admin", "admin", &[]);
    let viewer = p.token("dash-viewer", "viewer", &[]);
    let browser = Browser::start(p.port(6));

    // The page asks for a token; a wrong one is refused with the reason.
    browser.goto(&url);
    browser.wait_for("#token", WAIT);
    shot(&p, &browser, "login");
    log_in(&browser, "pct_not-a-token");
    browser.wait_until("the wrong token refused", WAIT, |b| {
        !b.text("#login-error").is_empty()
    });
    assert_eq!(count(&browser, "#apps"), 0, "nothing shown without a token");

    // The applications, then the shop: three services, each with its instances.
    log_in_as(&p, &browser, &admin);
    browser.wait_for("#apps tr[data-app='shop'] a", WAIT);
    assert!(browser.text("#who").contains("dash-admin (admin)"));
    shot(&p, &browser, "applications");
    let link = browser.find("#apps tr[data-app='shop'] a").unwrap();
    browser.click(&link);
    for service in ["web", "api", "kv"] {
        browser.wait_for(&format!("#services tr[data-service='{service}']"), WAIT);
    }
    let running = |service: &str| {
        format!("#services tr[data-service='{service}'] [data-instance][data-state='running']")
    };
    browser.wait_until("two running api instances", WAIT, |b| {
        count(b, &running("api")) == 2
    });
    assert_eq!(count(&browser, &running("web")), 2);
    assert_eq!(count(&browser, &running("kv")), 1);

    // Scale api from the page: the instances change on the page and in the platform. What is
    // typed stays typed while the table is rebuilt for a change made elsewhere (web scaled by
    // the CLI meanwhile).
    browser.fill("#scale-api", "3");
    p.ok(&["scale", "-a", "shop", "web=3"]);
    browser.wait_until("three running web instances", WAIT, |b| {
        count(b, &running("web")) == 3
    });
    assert_eq!(
        browser.script(
            "return document.querySelector('#scale-api').value;",
            json!([])
        ),
        json!("3"),
        "the typed number survives the table's rebuild"
    );
    browser.click_on("#scale-button-api");
    browser.wait_until("three running api instances on the page", WAIT, |b| {
        count(b, &running("api")) == 3
    });
    let api = p
        .ps("shop")
        .iter()
        .filter(|i| field(i, "service") == "api" && field(i, "state") == "running")
        .count();
    assert_eq!(api, 3, "the platform runs what the page shows");
    assert!(browser.text("#notice").contains("scaled to 3"));
    browser.wait_until("the scaling in the events", WAIT, |b| {
        b.text("#events").contains("scaled to 3")
    });

    // CPU per instance, set from the page, reaches the service (and its running instances).
    browser.fill("#cpu-api", "0.5");
    browser.click_on("#cpu-button-api");
    browser.wait_until("api's CPU limit on the page", WAIT, |b| {
        b.text("#services tr[data-service='api']")
            .contains("0.5 cores")
    });
    let api: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "shop", "api", "-o", "json"])).unwrap();
    assert_eq!(api["cpu"], 0.5);

    // Load on the shop's page: the web service's chart and figures move, live.
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(p.port(0), stop.clone());
    browser.wait_until("the arrivals chart under load", WAIT, |b| {
        data(b, "#chart-arrivals", "max")
            .parse::<f64>()
            .is_ok_and(|m| m > 0.0)
    });
    browser.wait_until("requests per second in the services table", WAIT, |b| {
        let rps = b.text("#services tr[data-service='web'] [data-field='rps']");
        rps.parse::<u64>().is_ok_and(|n| n > 0)
    });
    // (api keeps its connections to kv open: that edge counts new connections only.)
    browser.wait_until("the call graph: outside to web to api", 2 * WAIT, |b| {
        let edges = data(b, "#calls", "edges");
        ["external->web", "web->api"]
            .iter()
            .all(|e| edges.contains(e))
    });
    browser.wait_until("a p95 of web", WAIT, |b| {
        b.text("#services tr[data-service='web'] [data-field='p95']")
            .ends_with(" ms")
    });
    // The api's charts carry the scaling as a marker on the timeline.
    browser.script(
        "const s = document.querySelector('#chart-service'); s.value = 'api'; s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    browser.wait_until("the scaling marked on api's charts", WAIT, |b| {
        data(b, "#chart-instances", "markers")
            .parse::<u64>()
            .is_ok_and(|n| n >= 1)
    });
    browser.wait_until("api's instance count charted", WAIT, |b| {
        data(b, "#chart-instances", "last").contains("\"instances\":3")
    });
    browser.script(
        "const s = document.querySelector('#chart-service'); s.value = 'web'; s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    shot(&p, &browser, "application");
    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);

    // The manifest, edited into an error: the problem is told at its line, as the CLI tells it.
    browser.wait_until("the manifest loaded", WAIT, |b| {
        b.script(
            "return document.querySelector('#manifest').value.includes('[services.api]');",
            json!([]),
        ) == json!(true)
    });
    let editor = browser.find("#manifest").unwrap();
    browser.type_into(&editor, "\nreplicas = \"many\"\n");
    browser.wait_until("the error located in the manifest", WAIT, |b| {
        count(b, "#diagnostics li[data-line]") >= 1
    });
    let expected_line = browser.script(
        "return document.querySelector('#manifest').value.split('\\n').findIndex(l => l.startsWith('replicas = \"many\"')) + 1;",
        json!([]),
    );
    assert_eq!(
        json!(data(&browser, "#diagnostics li[data-line]", "line")
            .parse::<u64>()
            .unwrap()),
        expected_line,
        "the diagnostic points at the line typed: {}",
        browser.text("#diagnostics")
    );
    assert!(count(&browser, ".editor .gutter .bad") >= 1);
    assert!(
        browser.text("#manifest-status").contains("problem"),
        "{}",
        browser.text("#manifest-status")
    );
    browser.script(
        "document.querySelector('.manifest').scrollIntoView();",
        json!([]),
    );
    shot(&p, &browser, "manifest");
    // Nothing was deployed: the dry run writes nothing.
    assert_eq!(
        p.ps("shop")
            .iter()
            .filter(|i| field(i, "service") == "api" && field(i, "state") == "running")
            .count(),
        3
    );

    // The error fixed into a canary of web and deployed from the page; its share then moved.
    browser.script(
        "const t = document.querySelector('#manifest'); \
         t.value = t.value.replace('\\nreplicas = \"many\"\\n', '\\n[services.web.revisions.canary]\\nweight = 20\\n'); \
         t.dispatchEvent(new Event('input'));",
        json!([]),
    );
    browser.wait_until("the fixed manifest valid", WAIT, |b| {
        b.text("#manifest-status").contains("not deployed yet")
    });
    assert_eq!(count(&browser, "#diagnostics li"), 0);
    browser.click(&browser.find("#deploy").unwrap());
    browser.wait_until("the canary deployed and running", 2 * WAIT, |b| {
        count(b, &running("web@canary")) == 1
    });
    browser.wait_for("#traffic-web-canary", WAIT);
    browser.fill("#traffic-web-canary", "50");
    browser.click_on("#traffic-button-web");
    browser.wait_until("the canary's new share on the page", WAIT, |b| {
        let split = data(
            b,
            "#services tr[data-service='web'] .traffic-control",
            "traffic",
        );
        split.contains("canary=50") && split.contains("web=50")
    });
    let web: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "shop", "web", "-o", "json"])).unwrap();
    let canary = web["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["revision"] == "canary")
        .cloned()
        .unwrap();
    assert_eq!(canary["weight"], 50, "{web}");

    // One instance: its state, output and events.
    browser.goto(&format!("{url}#/apps/shop/instances/kv.1"));
    browser.wait_for("#instance-state", WAIT);
    browser.wait_until("kv.1's output", WAIT, |b| {
        !b.text("#logs").trim().is_empty()
    });
    assert_eq!(browser.text("#instance-state"), "running");
    shot(&p, &browser, "instance");

    // The debug terminal on that instance: a command typed, its answer read.
    browser.click(&browser.find("#terminal-open").unwrap());
    browser.wait_until("the debug terminal open", WAIT, |b| {
        !data(b, "#terminal", "run").is_empty()
    });
    // xterm.js takes the keys through its hidden text area, as from a person typing.
    let line = browser.find("#terminal .xterm-helper-textarea").unwrap();
    browser.type_into(&line, "echo dashboard-$((6*7))\u{E007}");
    browser.wait_until("the command's answer on the terminal", WAIT, |b| {
        b.text("#terminal").contains("dashboard-42")
    });
    browser.script(
        "document.querySelector('#terminal').scrollIntoView();",
        json!([]),
    );
    shot(&p, &browser, "terminal");
    browser.type_into(&line, "exit\u{E007}");
    browser.wait_until("the debug session's end", WAIT, |b| {
        data(b, "#terminal", "ended") == "true"
    });

    // Migrate it from the page: its successor takes over (kv hands its data over through PaCI)
    // and the page follows it.
    browser.click(&browser.find("#migrate").unwrap());
    browser.wait_until("the page on kv.1's successor", 2 * WAIT, |b| {
        b.script("return location.hash;", json!([])) == json!("#/apps/shop/instances/kv.2")
            && b.text("#instance-state") == "running"
    });
    assert!(browser.text("#notice").contains("kv.1 moved to kv.2"));
    let kv: Vec<String> = p
        .ps("shop")
        .iter()
        .filter(|i| field(i, "service") == "kv" && field(i, "state") == "running")
        .map(|i| field(i, "instance").to_owned())
        .collect();
    assert_eq!(kv, ["kv.2"]);

    // A capsule run from the page: its output as it comes, then the run in the history.
    browser.goto(&format!("{url}#/apps/shop"));
    browser.click(&browser.wait_for("#capsules-link", WAIT));
    browser.wait_for("#capsule option[value='metrics']", WAIT);
    browser.script(
        "const s = document.querySelector('#capsule'); s.value = 'metrics'; s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    let selector = browser.find("#capsule-selector").unwrap();
    browser.clear(&selector);
    browser.type_into(&selector, "app=shop,service=kv");
    browser.click(&browser.find("#capsule-run").unwrap());
    browser.wait_until("the capsule run's end", WAIT, |b| {
        !data(b, "#capsule-output", "status").is_empty()
    });
    let output = browser.text("#capsule-output");
    assert_eq!(
        data(&browser, "#capsule-output", "status"),
        "ok",
        "{output}\n{}",
        p.daemon_log()
    );
    assert!(output.contains("kv.2 | "), "the output of kv.2: {output}");
    browser.wait_until("the run in the history", WAIT, |b| {
        b.text("#capsule-history").contains("metrics")
    });
    shot(&p, &browser, "capsules");

    // A viewer sees everything and changes nothing: the page shows the command layer's refusal.
    browser.click(&browser.find("#logout").unwrap());
    log_in_as(&p, &browser, &viewer);
    browser.wait_until("logged in as the viewer", WAIT, |b| {
        b.text("#who").contains("dash-viewer (viewer)")
    });
    let running_api = || {
        p.ps("shop")
            .iter()
            .filter(|i| field(i, "service") == "api" && field(i, "state") == "running")
            .count()
    };
    let before = running_api();
    browser.goto(&format!("{url}#/apps/shop"));
    browser.wait_for("#scale-api", WAIT);
    browser.fill("#scale-api", "1");
    browser.click_on("#scale-button-api");
    browser.wait_until("the viewer's scaling refused", WAIT, |b| {
        b.script(
            "const n = document.querySelector('#notice'); return n.className === 'error' && n.textContent.length > 0;",
            json!([]),
        ) == json!(true)
    });
    let refusal = browser.text("#notice");
    assert!(refusal.contains("viewer"), "{refusal}");
    assert_eq!(running_api(), before, "a refused scaling changes nothing");
}

/// The shop with Kubernetes' HPA as its autoscaler; `api` starts with one instance of half a
/// core and may have four.
fn autoscaled_shop(p: &Platform) -> std::path::PathBuf {
    let shop = std::fs::read_to_string(p.shop()).unwrap();
    let shop = shop
        .replace(
            "replicas = 2\nresources = { cpu = 1, memory = \"128M\", pids = 128 }",
            "replicas = 1\nresources = { cpu = 0.5, memory = \"128M\", pids = 128 }\n\
             autoscale = { min = 1, max = 4, cpu_min = 0.5, cpu_max = 0.5 }",
        )
        .replace(
            "app = \"shop\"\n",
            "app = \"shop\"\n\n[autoscale]\npolicy = \"hpa\"\n",
        );
    assert!(
        shop.contains("max = 4"),
        "the example manifest changed shape"
    );
    p.manifest("shop-hpa", &shop)
}

#[test]
fn an_autoscaler_decision_is_marked_on_the_charts_with_its_reason() {
    let p = Platform::new();
    let url = listen(&p);
    let manifest = autoscaled_shop(&p);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let viewer = p.token("watcher", "viewer", &[]);
    let browser = Browser::start(p.port(6));
    browser.goto(&url);
    log_in_as(&p, &browser, &viewer);
    browser.wait_for("#apps tr[data-app='shop'] a", WAIT);
    browser.goto(&format!("{url}#/apps/shop"));
    browser.wait_for("#services tr[data-service='api']", WAIT);
    browser.script(
        "const s = document.querySelector('#chart-service'); s.value = 'api'; s.dispatchEvent(new Event('change'));",
        json!([]),
    );

    // As much work as api's half core can do: the HPA scales it out at its next sync.
    let stop = Arc::new(AtomicBool::new(false));
    let port = p.port(0);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    let _ = http_get(port, "/?work=2000000");
                }
            })
        })
        .collect();
    browser.wait_until(
        "the autoscaler's decision in the events",
        Duration::from_secs(60),
        |b| {
            b.text("#events")
                .contains("autoscaler hpa: instances 1 -> ")
        },
    );
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    browser.wait_until("the decision marked on api's charts", WAIT, |b| {
        !data(b, "#chart-instances", "markerX").is_empty()
    });

    // Hovering the mark tells the decision and its reason.
    let chart = browser.find("#chart-instances").unwrap();
    browser.script(
        "document.querySelector('#chart-instances').scrollIntoView({block: 'center'});",
        json!([]),
    );
    let x: i64 = data(&browser, "#chart-instances", "markerX")
        .parse()
        .unwrap();
    let width = browser
        .script(
            "return Math.round(document.querySelector('#chart-instances').getBoundingClientRect().width);",
            json!([]),
        )
        .as_i64()
        .unwrap();
    browser.hover(&chart, x - width / 2);
    browser.wait_until("the decision's reason on hover", WAIT, |b| {
        b.text("#tip").contains("autoscaler hpa: instances 1 -> ")
    });
    let tip = browser.text("#tip");
    let reason = tip
        .split("autoscaler hpa: instances 1 -> ")
        .nth(1)
        .unwrap_or_default();
    assert!(
        reason.contains(": "),
        "the decision carries its reason: {tip}"
    );
    shot(&p, &browser, "autoscaler");
}

#[test]
fn a_task_farms_batch_is_followed_task_by_task_and_cancelled_from_the_dashboard() {
    let p = Platform::new();
    let url = listen(&p);
    let manifest = p.task_farm_manifest("");
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let tasks = p.root().join("tasks.txt");
    std::fs::write(&tasks, "echo quick\nsleep 60\nsleep 60\nsleep 60\n").unwrap();
    let submitted = p.ok(&[
        "tasks",
        "submit",
        "-a",
        "farm",
        "render",
        "-f",
        tasks.to_str().unwrap(),
        "--deadline",
        "10m",
    ]);
    assert!(submitted.starts_with("batch 1 submitted"), "{submitted}");
    let admin = p.token("farm-admin", "admin", &[]);
    let browser = Browser::start(p.port(6));
    browser.goto(&url);
    log_in_as(&p, &browser, &admin);
    browser.goto(&format!("{url}#/apps/farm"));
    browser.click(&browser.wait_for("#batches-link", WAIT));

    // The list, then the batch: its first task done with its output, the others running.
    browser.wait_for("#batches tr[data-batch='1'][data-state='running'] a", WAIT);
    browser.click(&browser.find("#batches tr[data-batch='1'] a").unwrap());
    browser.wait_until("the quick task done", WAIT, |b| {
        data(b, "#tasks tr[data-task='1']", "state") == "succeeded"
    });
    assert!(browser.text("#tasks tr[data-task='1']").contains("quick"));
    assert_eq!(data(&browser, "#batch-summary", "state"), "running");
    shot(&p, &browser, "batch");

    // Cancelled from the page: the state says so, and the daemon agrees.
    browser.click(&browser.wait_for("#batch-cancel", WAIT));
    browser.wait_until("the batch cancelled", WAIT, |b| {
        data(b, "#batch-summary", "state") == "cancelled"
    });
    let status = p.ok(&["tasks", "status", "-a", "farm", "1", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["batch"]["state"], "cancelled");
    assert_eq!(status["batch"]["succeeded"], 1);
    let events = p.wait_event("farm", "batch 1 cancelled", WAIT);
    assert!(events.contains("(by token farm-admin)"), "{events}");
}
