//! Instances on a real kernel: namespaces, root filesystem, logs, exit status, errors.

mod common;

use common::{is_root, Fixture};
use paracloud_runtime::Error;

#[tokio::test(flavor = "multi_thread")]
async fn host_instance_is_pid_1_with_its_hostname_and_log() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.instance(
        "basic",
        &[
            "/bin/sh",
            "-c",
            "echo pid=$$; echo procs=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '); \
             echo host=$(uname -n); echo err >&2; exit 7",
        ],
    );
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    assert!(process.is_child);
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(7), "log: {log}");
    assert!(!exit.oom_killed);
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(log.contains("host=basic.host\n"), "{log}");
    assert!(log.contains("err\n"), "stderr goes to the log too: {log}");
    let procs = log
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .expect("procs line");
    let pids: Vec<u32> = procs
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{procs}");
    assert!(
        pids.iter().all(|p| *p < 10),
        "only its own processes: {procs}"
    );
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_command_is_a_sandbox_error_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.instance("missing", &["no-such-command-xyz", "arg"]);
    match f.runtime.spawn(&cfg).await {
        Err(Error::Sandbox { id, message }) => {
            assert_eq!(id, "missing");
            assert!(
                message.contains("command not found: no-such-command-xyz"),
                "{message}"
            );
        }
        other => panic!("expected a sandbox error, got {other:?}"),
    }
    for dir in f.cgroup_dirs(&cfg.id) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_refuses_namespaces_and_mounts_but_not_ordinary_work() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.instance(
        "seccomp",
        &[
            "sh",
            "-c",
            "unshare --user true 2>/dev/null && echo userns-allowed; \
             unshare --mount true 2>/dev/null && echo mountns-allowed; \
             mkdir -p /tmp/m && mount -t tmpfs x /tmp/m 2>/dev/null && echo mount-allowed; \
             python3 -c 'import subprocess; print(subprocess.run([\"echo\", \"spawned\"], \
             capture_output=True, text=True).stdout.strip())'; \
             grep Seccomp: /proc/self/status",
        ],
    );
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(!log.contains("allowed"), "{log}");
    assert!(
        log.contains("spawned\n"),
        "posix_spawn falls back from clone3: {log}"
    );
    assert!(log.contains("Seccomp:\t2"), "filter mode: {log}");
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_rootfs_is_a_read_only_lower_layer() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    // A root directory with the host's /usr bound in (merged-usr links as on Debian).
    let lower = f.tmp.path().join("image");
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::create_dir_all(lower.join("usr")).unwrap();
    std::fs::write(
        lower.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:7:7::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(lower.join("etc/group"), "root:x:0:\napp:x:7:\n").unwrap();
    std::fs::write(lower.join("marker"), "from-image\n").unwrap();
    std::fs::set_permissions(
        lower.join("marker"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, lower.join(link)).unwrap();
    }
    let mut cfg = f.instance(
        "dirroot",
        &[
            "sh",
            "-c",
            "cat /marker; id -u; echo $HOME; echo changed > /marker; echo new > /data/new",
        ],
    );
    cfg.rootfs = paracloud_runtime::Rootfs::Dir {
        path: lower.clone(),
    };
    cfg.user = Some("app".into());
    cfg.mounts = vec![paracloud_runtime::Mount {
        source: "/usr".into(),
        target: "/usr".into(),
        read_only: true,
    }];
    // A directory of the image the user may write to (the writes land in the upper layer).
    std::fs::create_dir_all(lower.join("data")).unwrap();
    std::fs::set_permissions(
        lower.join("data"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(0), "{log}");
    assert_eq!(log, "from-image\n7\n/home/app\n");
    assert_eq!(
        std::fs::read_to_string(lower.join("marker")).unwrap(),
        "from-image\n"
    );
    assert!(
        !lower.join("data/new").exists(),
        "the image is not written to"
    );
    assert_eq!(
        std::fs::read_to_string(cfg.dir.join("upper/marker")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(cfg.dir.join("upper/data/new")).unwrap(),
        "new\n"
    );
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_extra_paths_are_mounted_read_only_and_searched_first() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let tools = f.tmp.path().join("tools/bin");
    std::fs::create_dir_all(&tools).unwrap();
    let script = tools.join("hello-extra");
    std::fs::write(&script, "#!/bin/sh\necho hello from $0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let data = f.tmp.path().join("settings.txt");
    std::fs::write(&data, "setting\n").unwrap();
    let mut cfg = f.instance(
        "extra",
        &["sh", "-c", "hello-extra; cat \"$DATA\"; { echo x > \"$DATA\"; } 2>/dev/null || echo read-only; echo $PATH"],
    );
    cfg.env.insert("DATA".into(), data.display().to_string());
    cfg.rootfs = paracloud_runtime::Rootfs::Host {
        extra_paths: vec![tools.clone(), data.clone()],
    };
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(
        log.contains(&format!("hello from {}\n", script.display())),
        "{log}"
    );
    assert!(log.contains("setting\nread-only\n"), "{log}");
    assert!(
        log.contains(&format!("{}:/usr/local/sbin:", tools.display())),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "setting\n");
    f.runtime.cleanup(&cfg.id).unwrap();
}
