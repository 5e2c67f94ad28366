//! The cgroup v2 code path on a real kernel. On a hybrid host the unified hierarchy (mounted at
//! /sys/fs/cgroup/unified, usually without controllers) stands in for a v2 root: instances are
//! placed there with CLONE_INTO_CGROUP, killed with cgroup.kill and removed.

mod common;

use std::path::{Path, PathBuf};

use common::is_root;
use paracloud_runtime::{CgroupMode, Runtime, RuntimeConfig};

#[tokio::test(flavor = "multi_thread")]
async fn v2_manager_places_kills_and_removes_instances() {
    if !is_root() {
        return;
    }
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|r| r.join("cgroup.controllers").is_file());
    let Some(root) = root else {
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    };
    let parent = format!("paracloud-rt-test-{:08x}", rand::random::<u32>());
    let runtime = Runtime::new(RuntimeConfig {
        cgroup_root: root.clone(),
        cgroup_parent: parent.clone(),
        helper_exe: PathBuf::from(env!("CARGO_BIN_EXE_paracloud-runtime-helper")),
    })
    .unwrap();
    assert_eq!(runtime.cgroup_mode(), CgroupMode::V2);

    let tmp = tempfile::tempdir().unwrap();
    let fixture = common::Fixture::new();
    let mut cfg = fixture.instance("v2", &["sh", "-c", "sleep 30 & sleep 30"]);
    cfg.dir = tmp.path().join("v2");
    cfg.log_path = cfg.dir.join("log");
    let process = runtime.spawn(&cfg).await.expect("spawn");
    let dir = root.join(&parent).join("v2");
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|p| p == process.pid.to_string()),
        "placed at clone time: {procs}"
    );
    runtime.cleanup(&cfg.id).unwrap();
    let exit = runtime.wait(&cfg.id, &process).await.unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(!dir.exists());
    let _ = std::fs::remove_dir(root.join(&parent));
    assert!(!Path::new(&root.join(&parent)).exists());
}
