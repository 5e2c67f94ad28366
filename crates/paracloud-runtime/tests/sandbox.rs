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

/// Prints `name=ok` or `name=ERRNO` for syscalls made directly (no libc fallback in between).
const SYSCALL_PROBE: &str = r#"
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
x86 = platform.machine() == "x86_64"
def show(name, result):
    print(f"{name}=" + ("ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]), flush=True)
def raw(name, number, *args):
    show(name, libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args]))
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
src, dst = ctypes.create_string_buffer(b"probe"), ctypes.create_string_buffer(5)
local = iovec(ctypes.cast(dst, ctypes.c_void_p), 5)
remote = iovec(ctypes.cast(src, ctypes.c_void_p), 5)
from ctypes import byref
show("process_vm_readv", libc.process_vm_readv(os.getpid(), byref(local), 1, byref(remote), 1, 0))
# Removed from the kernel long ago (ENOSYS without a filter) and not on the list.
raw("nfsservctl", 180 if x86 else 42)
params = ctypes.create_string_buffer(120)
show("io_uring_setup", libc.syscall(ctypes.c_long(425), ctypes.c_long(1), params))
show("personality_query", libc.personality(0xffffffff))
show("personality_bsd", libc.personality(6))
show("socket_alg", libc.socket(38, 5, 0))
show("socket_unix", libc.socket(1, 1, 0))
raw("clone3", 435, 0, 0)
raw("beyond", 1000)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_refuses_namespaces_and_mounts_but_not_ordinary_work() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut cfg = f.instance(
        "seccomp",
        &[
            "sh",
            "-c",
            "unshare --user true 2>/dev/null && echo userns-allowed; \
             unshare --mount true 2>/dev/null && echo mountns-allowed; \
             mkdir -p /tmp/m && mount -t tmpfs x /tmp/m 2>/dev/null && echo mount-allowed; \
             python3 -c 'import subprocess; print(subprocess.run([\"echo\", \"spawned\"], \
             capture_output=True, text=True).stdout.strip())'; \
             python3 -c \"$PROBE\"; \
             mkdir /tmp/w && cd /tmp/w && echo data > a && cp a b && mv b c && ln -s c d && \
             chmod 600 c && touch -d @978307200 c && stat -c '%a %Y' c && cat d && \
             ls | sort | tr '\\n' ' ' && rm a c d && echo coreutils-ok; \
             grep Seccomp: /proc/self/status",
        ],
    );
    cfg.env.insert("PROBE".into(), SYSCALL_PROBE.into());
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
    for expected in [
        // CAP_SYS_PTRACE is not kept.
        "process_vm_readv=EPERM",
        // An allow-list: calls it does not name fail with EPERM (not the kernel's ENOSYS),
        // io_uring among them (Docker's profile leaves it out; the former deny-list let it by).
        "nfsservctl=EPERM",
        "io_uring_setup=EPERM",
        // Arguments checked as Docker does.
        "personality_query=ok",
        "personality_bsd=EPERM",
        "socket_alg=EPERM",
        "socket_unix=ok",
        // clone3 and numbers beyond the list: ENOSYS, so that libc falls back.
        "clone3=ENOSYS",
        "beyond=ENOSYS",
        "600 978307200\ndata\na c d coreutils-ok\n",
    ] {
        assert!(log.contains(expected), "{expected}: {log}");
    }
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_lets_debuggers_trace_with_cap_sys_ptrace() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut script = String::from("python3 -c \"$PROBE\"; ");
    let strace = std::path::Path::new("/usr/bin/strace").exists();
    let gdb = std::path::Path::new("/usr/bin/gdb").exists();
    if strace {
        script += "strace -f -o /tmp/trace sh -c 'ls / >/dev/null' && \
                   grep -q 'execve(.*ls' /tmp/trace && echo strace-ok; ";
    }
    if gdb {
        script += "gdb -nx -batch -ex run --args /bin/true 2>&1 | grep -q 'exited normally' \
                   && echo gdb-ok; ";
    }
    let mut cfg = f.instance("ptrace", &["sh", "-c", &script]);
    cfg.capabilities = vec!["CAP_SYS_PTRACE".into()];
    cfg.env.insert("PROBE".into(), SYSCALL_PROBE.into());
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(log.contains("process_vm_readv=ok\n"), "{log}");
    // Still an allow-list.
    assert!(log.contains("nfsservctl=EPERM\n"), "{log}");
    assert_eq!(log.contains("strace-ok\n"), strace, "{log}");
    assert_eq!(log.contains("gdb-ok\n"), gdb, "{log}");
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
        size: None,
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

#[test]
fn the_machine_check_for_user_namespaces_passes_here_and_names_what_fails() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    f.runtime
        .check_user_namespaces(f.tmp.path())
        .expect("this machine gives instances user namespaces");
    // The try's directories and mounts are gone with it.
    assert_eq!(std::fs::read_dir(f.tmp.path()).unwrap().count(), 0);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(".probe-userns"), "{mountinfo}");
    // Where nothing can be made, the reason names the place.
    let err = f
        .runtime
        .check_user_namespaces(std::path::Path::new("/proc/sys"))
        .unwrap_err();
    assert!(err.contains("/proc/sys/.probe-userns"), "{err}");
}
