//! Sandboxing as a user meets it: what an instance can see and how far it can go.

mod common;

use std::time::Duration;

use common::*;

fn logs_until(p: &Platform, target: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = p.ok(&["logs", "-a", "iso", target]);
        if logs.contains(needle) {
            return logs;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "no {needle:?} in the logs of {target}: {logs}\n{}",
                p.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_instance_sees_only_its_own_processes_and_files() {
    let p = Platform::new();
    let manifest = p.manifest(
        "iso",
        r#"
app = "iso"
[services.a]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "echo mine > /tmp/mine; echo mine > /mine; ls -d /proc/[0-9]* > /tmp/pids; echo pids: $(wc -l < /tmp/pids); echo init: $(tr '\\0' ' ' < /proc/1/cmdline); echo host: $(hostname); exec sleep 100000"]
[services.b]
image = "host"
stop_grace_period = "1s"
depends_on = ["a"]
command = ["/bin/sh", "-c", "sleep 0.5; for f in /tmp/mine /mine; do test -e $f && echo VISIBLE $f || echo hidden $f; done; echo done; exec sleep 100000"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let a = logs_until(&p, "a", "host:");
    // The shell's glob, expanded by pid 1 itself, finds only pid 1: none of the host's processes.
    assert!(a.contains("pids: 1\n"), "only its own processes: {a}");
    assert!(
        a.contains("init: /bin/sh -c"),
        "its first process is pid 1: {a}"
    );
    assert!(a.contains("host: a.1"), "{a}");
    let b = logs_until(&p, "b", "done");
    assert!(
        b.contains("hidden /tmp/mine") && b.contains("hidden /mine"),
        "{b}"
    );
    assert!(!b.contains("VISIBLE"), "{b}");
    // The sandbox has no capabilities: mounting fails even as uid 0.
    let ps = p.ps("iso");
    let a_pid = ps.iter().find(|i| field(i, "instance") == "a.1").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{a_pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
}

#[test]
fn the_memory_limit_is_enforced_and_reported_as_oom_then_restarted() {
    let p = Platform::new();
    let manifest = p.manifest(
        "oom",
        r#"
app = "iso"
[services.hog]
image = "host"
command = ["/usr/bin/python3", "-c", "import time; print('allocating', flush=True); b = bytearray(300 * 1024 * 1024); print('survived', flush=True); time.sleep(1000)"]
resources = { memory = "32M" }
restart = { condition = "on-failure", backoff = "200ms" }
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap(), "--detach"]);
    p.wait_ps(
        "iso",
        Duration::from_secs(30),
        "hog to be restarted after an OOM kill",
        |ps| ps.iter().any(|i| i["restarts"].as_u64().unwrap_or(0) >= 1),
    );
    let events = p.ok(&["events", "-a", "iso"]);
    assert!(events.contains("out of memory"), "{events}");
    let logs = p.ok(&["logs", "-a", "iso", "hog"]);
    assert!(
        logs.contains("allocating") && !logs.contains("survived"),
        "{logs}"
    );
    // The host is fine: this test process and the daemon still answer.
    p.ok(&["ps", "-a", "iso"]);
}

#[test]
fn the_pids_limit_stops_a_fork_loop() {
    let p = Platform::new();
    let manifest = p.manifest(
        "pids",
        r#"
app = "iso"
[services.forker]
image = "host"
stop_grace_period = "1s"
command = ["/usr/bin/python3", "-c", """
import os, time
started = 0
for _ in range(60):
    try:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
        started += 1
    except OSError as e:
        print('fork failed:', e, flush=True)
        break
print('started', started, flush=True)
time.sleep(100000)
"""]
resources = { pids = 16 }
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let logs = logs_until(&p, "forker", "started");
    assert!(
        logs.contains("fork failed: [Errno 11]"),
        "forks beyond the limit fail with EAGAIN: {logs}"
    );
    let ps = p.ps("iso");
    let pid = ps[0]["pid"].as_i64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let n = children.split_whitespace().count();
    assert!(n < 16, "at most the limit: {n} children");
}

#[test]
fn logs_follow_new_lines_as_they_come() {
    let p = Platform::new();
    let manifest = p.manifest(
        "ticker",
        r#"
app = "iso"
[services.ticker]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let mut follower = p
        .command()
        .args(["logs", "-a", "iso", "ticker", "-f", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    while seen.len() < 10 {
        seen.push(lines.next().expect("the follower keeps printing").unwrap());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let numbers: Vec<u64> = seen
        .iter()
        .map(|l| {
            l.trim_start_matches("ticker.1 | tick ")
                .parse()
                .unwrap_or_else(|_| panic!("{l:?}"))
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none lost or repeated: {numbers:?}"
    );
}

#[test]
fn regression_a_host_image_instance_reads_no_host_secret() {
    // `image = "host"` instances read the host's /etc/shadow through the read-only /etc.
    let p = Platform::new();
    let manifest = p.manifest(
        "iso",
        r#"
app = "iso"
[services.a]
image = "host"
stop_grace_period = "1s"
command = ["/bin/sh", "-c", "echo shadow: $(cat /etc/shadow 2>/dev/null | grep -c '^root:'); echo gshadow: $(cat /etc/gshadow 2>/dev/null | grep -c '^root:'); echo passwd: $(grep -c '^root:' /etc/passwd); echo private: $(ls -A /etc/ssl/private 2>/dev/null | wc -l); echo done; exec sleep 100000"]
"#,
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let logs = logs_until(&p, "a", "done");
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    assert!(
        host_shadow.lines().any(|l| l.starts_with("root:")),
        "this host has a root entry in /etc/shadow to hide"
    );
    // Nothing of the host's shadow files can be read: masked, they read as empty or not at all.
    assert!(logs.contains("shadow: 0\n"), "{logs}");
    assert!(logs.contains("gshadow: 0\n"), "{logs}");
    assert!(
        logs.contains("passwd: 1\n"),
        "the rest of /etc is there: {logs}"
    );
    assert!(logs.contains("private: 0\n"), "{logs}");
}
