//! Capsules attached to real instances: what they see, what they may do, and that they leave
//! nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{is_root, Fixture};
use paracloud_runtime::{CapsuleConfig, Limits, Process, Rootfs};

/// A capsule image: a directory with static busybox and its applets in /bin.
fn busybox_image(dir: &Path) -> PathBuf {
    let root = dir.join("capsule-image");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in [
        "sh", "cat", "ls", "ps", "touch", "sleep", "echo", "mount", "wc", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    root
}

fn capsule(f: &Fixture, id: &str, script: &str) -> CapsuleConfig {
    let dir = f.tmp.path().join(id);
    CapsuleConfig {
        id: id.to_string(),
        dir: dir.clone(),
        rootfs: Rootfs::Dir {
            path: busybox_image(&dir),
        },
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        out_dir: dir.join("out"),
        write_target: false,
        capabilities: vec![],
        limits: Limits {
            memory: Some(64 << 20),
            pids: Some(64),
            cpu: None,
            disk: None,
            ..Default::default()
        },
        tty: false,
    }
}

/// Runs the capsule to its end (bounded) and detaches it; (exit code, stdout, stderr).
async fn run(f: &Fixture, target: &Process, cfg: &CapsuleConfig) -> (i32, String, String) {
    let child = f.runtime.attach(target, cfg, None).expect("attach");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("capsule did not end within 30 s")
        .expect("wait");
    f.runtime.detach(cfg).expect("detach");
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the target looks like from the host: its mounts, its processes, and its files.
fn snapshot(pid: i32) -> (String, Vec<String>, String) {
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut procs: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    procs.sort();
    let mut tmp: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    tmp.sort();
    (mounts, procs, tmp.join(","))
}

#[tokio::test]
async fn capsule_sees_the_target_read_only_and_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let target_cfg = f.instance(
        "cap-target",
        &["/bin/sh", "-c", "echo kept > /tmp/state; exec sleep 300"],
    );
    let target = f.runtime.spawn(&target_cfg).await.expect("spawn");
    f.wait_for_log(&target_cfg, "").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = snapshot(target.pid);

    let cfg = capsule(
        &f,
        "cap-look",
        "cat /target/tmp/state; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; \
         touch /target/tmp/x 2>&1 || echo refused; sleep 30 & echo out > /out/file; echo done",
    );
    let (code, stdout, stderr) = run(&f, &target, &cfg).await;
    assert_eq!(code, 0, "stdout {stdout:?} stderr {stderr:?}");
    assert!(stdout.contains("kept"), "{stdout}");
    assert!(stdout.contains("sleep 300"), "{stdout}");
    assert!(stdout.contains("cap-target.host"), "{stdout}");
    assert!(
        stdout.contains("Read-only file system") || stdout.contains("refused"),
        "{stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(cfg.out_dir.join("file")).unwrap(),
        "out\n"
    );

    // The background sleep was killed with the capsule, not left to the target's pid 1.
    let after = snapshot(target.pid);
    assert_eq!(before, after, "the target changed");
    // The scratch tmpfs lived in the capsule's mount namespace only.
    let scratch: Vec<_> = std::fs::read_dir(cfg.dir.join("scratch"))
        .unwrap()
        .collect();
    assert!(
        scratch.is_empty(),
        "left in the scratch directory: {scratch:?}"
    );
    f.runtime
        .signal(&target, nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    f.wait(&target_cfg, &target).await;
}

#[tokio::test]
async fn writable_capsule_changes_the_target_and_hanging_one_is_stopped() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let target_cfg = f.instance("cap-target2", &["/bin/sleep", "300"]);
    let target = f.runtime.spawn(&target_cfg).await.expect("spawn");

    let mut cfg = capsule(&f, "cap-write", "echo rotated > /target/tmp/log.1");
    cfg.write_target = true;
    let (code, _, stderr) = run(&f, &target, &cfg).await;
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read_to_string(format!("/proc/{}/root/tmp/log.1", target.pid)).unwrap();
    assert_eq!(written, "rotated\n");

    // A capsule that hangs: SIGTERM to the runner kills it and everything it started.
    let cfg = capsule(&f, "cap-hang", "sleep 100 & sleep 100");
    let before = snapshot(target.pid);
    let mut child = f.runtime.attach(&target, &cfg, None).expect("attach");
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the runner did not stop within 10 s")
        .unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    f.runtime.detach(&cfg).unwrap();
    assert_eq!(before, snapshot(target.pid));
    f.runtime
        .signal(&target, nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    f.wait(&target_cfg, &target).await;
}

#[tokio::test]
async fn capsule_failure_before_the_command_is_reported() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let target_cfg = f.instance("cap-target3", &["/bin/sleep", "300"]);
    let target = f.runtime.spawn(&target_cfg).await.expect("spawn");
    let mut cfg = capsule(&f, "cap-missing", "true");
    cfg.argv = vec!["/no/such/program".into()];
    let (code, _, stderr) = run(&f, &target, &cfg).await;
    let failure = paracloud_runtime::capsule::setup_failure(code, stderr.as_bytes());
    assert!(
        failure
            .as_deref()
            .unwrap_or_default()
            .contains("/no/such/program"),
        "{code} {stderr}"
    );
    f.runtime
        .signal(&target, nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    f.wait(&target_cfg, &target).await;
}
