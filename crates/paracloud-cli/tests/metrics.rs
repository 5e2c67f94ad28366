//! `GET /metrics` on the daemon's API: the platform's real figures, in a text promtool accepts.

mod common;

use std::time::{Duration, Instant};

use common::*;

const APP: &str = r#"
app = "metered"
[services.web]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
[services.web.capsules]
checksum = "read"
"#;

fn metrics(p: &Platform) -> String {
    let (status, text) = unix_http(
        &p.root().join(paracloud_api::SOCKET_NAME),
        "GET",
        "/metrics",
        "",
    );
    assert_eq!(status, 200, "{text}");
    text
}

/// The value of the series written exactly `series` (name and labels), if there is one.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the metrics hold `series` at `check`, or fails the test.
fn wait_value(p: &Platform, series: &str, check: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(p);
        if value(&text, series).is_some_and(&check) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{series}: not as expected in\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `promtool check metrics` (Debian's prometheus package) on `text`: fails the test on any
/// problem it reports.
fn promtool(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs: scripts/deps.sh installs it (Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

#[test]
fn metrics_carry_the_platform_s_figures_and_pass_promtool() {
    let p = Platform::new();
    let manifest = p.manifest("metered", APP);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    p.ok(&["scale", "-a", "metered", "web=3"]);
    p.wait_ps("metered", Duration::from_secs(20), "three running", |ps| {
        ps.iter().filter(|i| field(i, "state") == "running").count() == 3
    });
    let text = wait_value(
        &p,
        r#"paracloud_instances{app="metered",service="web",state="running"}"#,
        |n| n == 3.0,
    );
    assert_eq!(
        value(
            &text,
            r#"paracloud_service_replicas{app="metered",service="web"}"#
        ),
        Some(3.0)
    );
    // Each instance's cgroup: one process at least, some memory, CPU counted.
    for n in 1..=3 {
        let labels = format!(r#"{{app="metered",service="web",instance="web.{n}"}}"#);
        let pids = value(&text, &format!("paracloud_instance_pids{labels}"));
        assert!(
            pids.is_some_and(|v| v >= 1.0),
            "web.{n} pids: {pids:?}\n{text}"
        );
        let memory = value(&text, &format!("paracloud_instance_memory_bytes{labels}"));
        assert!(
            memory.is_some_and(|v| v > 0.0),
            "web.{n} memory: {memory:?}"
        );
        let cpu = value(
            &text,
            &format!("paracloud_instance_cpu_seconds_total{labels}"),
        );
        assert!(cpu.is_some_and(|v| v >= 0.0), "web.{n} cpu: {cpu:?}");
    }
    assert_eq!(value(&text, "paracloud_dataplane_up"), Some(1.0), "{text}");
    assert!(
        text.contains("# TYPE paracloud_requests_total counter"),
        "the data plane's families follow: {text}"
    );
    promtool(&text);

    // A restart is counted, and the instances it replaces as exits of that reason.
    p.ok(&["restart", "-a", "metered", "web"]);
    wait_value(
        &p,
        r#"paracloud_instance_restarts_total{app="metered",service="web",reason="requested"}"#,
        |n| n == 1.0,
    );
    wait_value(
        &p,
        r#"paracloud_instance_exits_total{app="metered",service="web",reason="replace"}"#,
        |n| n == 3.0,
    );
    // Scaling in: two exits of that reason, one instance left.
    p.ok(&["scale", "-a", "metered", "web=1"]);
    wait_value(
        &p,
        r#"paracloud_instance_exits_total{app="metered",service="web",reason="scale_in"}"#,
        |n| n == 2.0,
    );
    wait_value(
        &p,
        r#"paracloud_instances{app="metered",service="web",state="running"}"#,
        |n| n == 1.0,
    );
    // A capsule run, counted by its outcome once it ended.
    p.ok(&[
        "capsule",
        "run",
        "checksum",
        "--selector",
        "service=web",
        "--",
        "/etc/hostname",
    ]);
    let text = wait_value(
        &p,
        r#"paracloud_capsule_runs_total{capsule="checksum",outcome="ok"}"#,
        |n| n == 1.0,
    );
    promtool(&text);
}

/// The model policy's predicted latency for the shop's entry is a gauge of the metrics, once it
/// has seen requests.
#[test]
fn the_model_s_predicted_latency_is_exposed() {
    let p = Platform::new();
    let shop = std::fs::read_to_string(p.shop())
        .unwrap()
        .replace(
            "replicas = 2\nresources = { cpu = 1, memory = \"128M\", pids = 128 }",
            "replicas = 1\nresources = { cpu = 0.5, memory = \"128M\", pids = 128 }\n\
             autoscale = { min = 1, max = 4, cpu_min = 0.5, cpu_max = 0.5 }",
        )
        .replace(
            "app = \"shop\"\n",
            "app = \"shop\"\n\n[autoscale]\npolicy = \"model\"\n",
        );
    assert!(
        shop.contains("policy = \"model\"") && shop.contains("max = 4"),
        "the example manifest changed shape"
    );
    let manifest = p.manifest("shop-model", &shop);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let port = p.port(0);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let _ = http_get(port, "/");
        let text = metrics(&p);
        let predicted = text.lines().find_map(|l| {
            l.strip_prefix(
                r#"paracloud_autoscaler_predicted_latency_seconds{app="shop",service="web"} "#,
            )
        });
        if predicted.is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v > 0.0)) {
            promtool(&text);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no predicted latency for the shop's entry:\n{text}\n--- daemon log ---\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
