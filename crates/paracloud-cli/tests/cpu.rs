//! CPU per instance changed while a service runs, as a user meets it: `paracloud scale SERVICE
//! --cpu CORES` reaches the running instances' cgroups at once, without a restart; instances
//! started later get it too, and the next `up` returns to the manifest's.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const SLEEPER: &str = r#"
app = "cpu"
[services.one]
image = "host"
command = ["/bin/sleep", "100000"]
stop_signal = "KILL"
resources = { cpu = 0.5 }
"#;

/// The CPU quota of an instance's cgroup in microseconds per 100 ms period (-1: unlimited), read
/// where the kernel keeps it: cpu.max on cgroup2, cpu.cfs_quota_us on a v1 or hybrid host.
fn quota_us(p: &Platform, app: &str, instance: &str) -> i64 {
    let id = format!("{app}-{}", instance.replace('.', "-"));
    let root = Path::new("/sys/fs/cgroup");
    let (path, v2): (PathBuf, bool) = if root.join("cgroup.controllers").exists() {
        (root.join(p.cgroup_parent()).join(&id).join("cpu.max"), true)
    } else {
        let dir = root.join("cpu").join(p.cgroup_parent()).join(&id);
        (dir.join("cpu.cfs_quota_us"), false)
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let quota = text.split_whitespace().next().unwrap_or_default();
    match (quota, v2) {
        ("max", true) => -1,
        (n, _) => n
            .parse()
            .unwrap_or_else(|_| panic!("{}: {text:?}", path.display())),
    }
}

/// Waits up to a second for the quota of `instance` to become `want`.
fn wait_quota(p: &Platform, instance: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let got = quota_us(p, "cpu", instance);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{instance}: quota {got} µs, want {want}\n--- daemon log ---\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_cpu_of_running_instances_changes_at_once_and_up_restores_it() {
    let p = Platform::new();
    let manifest = p.manifest("cpu", SLEEPER);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    assert_eq!(quota_us(&p, "cpu", "one.1"), 50_000, "the manifest's 0.5");
    let before = pids(&p.ps("cpu"));

    let asked = Instant::now();
    p.ok(&["scale", "-a", "cpu", "one", "--cpu", "1.5"]);
    wait_quota(&p, "one.1", 150_000);
    eprintln!(
        "the new quota was in the cgroup {:?} after the command started",
        asked.elapsed()
    );
    assert_eq!(pids(&p.ps("cpu")), before, "no instance was restarted");

    p.ok(&["scale", "-a", "cpu", "one=2"]);
    assert_eq!(
        quota_us(&p, "cpu", "one.2"),
        150_000,
        "a new instance starts with it"
    );
    let describe = p.ok(&["describe", "-a", "cpu", "one"]);
    assert!(
        describe.contains("cpu 1.5 (changed since `up`; the manifest says 0.5)"),
        "{describe}"
    );
    let view: serde_json::Value =
        serde_json::from_str(&p.ok(&["describe", "-a", "cpu", "one", "-o", "json"])).unwrap();
    assert_eq!(view["cpu"], 1.5);
    let events = p.ok(&["events", "-a", "cpu"]);
    assert!(
        events.contains("cpu per instance set to 1.5 (was 0.5)"),
        "{events}"
    );

    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    wait_quota(&p, "one.1", 50_000);
    assert_eq!(
        pids(&p.ps("cpu"))[0],
        before[0],
        "up went back to the manifest's CPU without replacing the instance"
    );
}

#[test]
fn cpu_mistakes_say_how_to_fix_them() {
    let p = Platform::new();
    let manifest = p.manifest("cpu", SLEEPER);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("cpu"));
    for (args, expected) in [
        (&["one", "--cpu", "0"][..], "such as --cpu 0.5"),
        (&["one", "--cpu", "lots"], "such as --cpu 0.5"),
        (&["one", "--cpu", "0.001"], "at least 0.01 of a core"),
        (&["one", "--cpu", "4096"], "cores of this machine"),
        (
            &["two", "--cpu", "1"],
            "has no service named two (it has: one)",
        ),
        (&["one"], "or name it alone with --cpu CORES"),
    ] {
        let mut all = vec!["scale", "-a", "cpu"];
        all.extend_from_slice(args);
        let err = p.fails(&all);
        assert!(
            err.contains(expected),
            "{args:?}: {expected:?} missing from:\n{err}"
        );
    }
    assert_eq!(quota_us(&p, "cpu", "one.1"), 50_000, "nothing changed");
    assert_eq!(pids(&p.ps("cpu")), before);
}

#[test]
fn regression_up_with_more_replicas_or_another_cpu_replaces_no_instance() {
    // `up` with only `replicas` changed replaced every instance of the service one by one.
    let p = Platform::new();
    let manifest = p.manifest("cpu", SLEEPER);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let before = pids(&p.ps("cpu"));

    let more = SLEEPER.replace(
        "resources = { cpu = 0.5 }",
        "resources = { cpu = 1 }\nreplicas = 2",
    );
    let manifest = p.manifest("cpu", &more);
    let up = p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let after = p.wait_ps(
        "cpu",
        Duration::from_secs(10),
        "two running instances",
        |ps| ps.len() == 2 && ps.iter().all(|i| field(i, "state") == "running"),
    );
    assert_eq!(pids(&after)[0], before[0], "one.1 kept running: {up}");
    wait_quota(&p, "one.1", 100_000);
    assert_eq!(quota_us(&p, "cpu", "one.2"), 100_000);
    let events = p.ok(&["events", "-a", "cpu"]);
    assert!(!events.contains("changed: one"), "{events}");
}
