//! Cgroup limits on a real kernel: memory ends in an OOM kill, pids stop a fork loop, usage.

mod common;

use std::time::{Duration, Instant};

use common::{is_root, Fixture};
use paracloud_runtime::Limits;

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_ends_in_an_oom_kill() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut cfg = f.instance(
        "hog",
        &["python3", "-c", "b = b'x' * (200 << 20); print('survived')"],
    );
    cfg.limits = Limits {
        memory: Some(32 << 20),
        ..Limits::default()
    };
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.signal, Some(9), "{exit:?} {log}");
    assert!(exit.oom_killed, "{exit:?}");
    assert!(!log.contains("survived"), "{log}");
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_limit_stops_a_fork_loop() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut cfg = f.instance(
        "forker",
        &["sh", "-c", "for i in $(seq 100); do sleep 5 & done; wait"],
    );
    cfg.limits = Limits {
        pids: Some(20),
        cpu: Some(0.5),
        ..Limits::default()
    };
    let started = Instant::now();
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let mut peak = 0;
    while started.elapsed() < Duration::from_millis(300) {
        if let Ok(usage) = f.runtime.usage(&cfg.id) {
            peak = peak.max(usage.pids);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert!(peak <= 20, "pids.current reached {peak}");
    assert_ne!(exit.code, Some(0), "{log}");
    assert!(log.to_lowercase().contains("fork"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loop was stopped, not waited out"
    );
    // The host still forks.
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_reports_memory_cpu_and_pids() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.instance(
        "busy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done; sleep 30",
        ],
    );
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    f.wait_for_log(&cfg, "done").await;
    let usage = f.runtime.usage(&cfg.id).unwrap();
    assert!(usage.memory_bytes > 0, "{usage:?}");
    assert!(usage.cpu_usage_ns > 1_000_000, "{usage:?}");
    assert!(usage.pids >= 2, "sh and sleep: {usage:?}");
    f.runtime.cleanup(&cfg.id).unwrap();
    f.wait(&cfg, &process).await;
}
