//! Adoption, exec, capabilities, users, isolation between instances, and spawn latency.

mod common;

use std::time::{Duration, Instant};

use common::{is_root, Fixture};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn adopt_finds_a_running_instance_and_refuses_a_stale_start_time() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let cfg = f.instance("adoptee", &["sleep", "30"]);
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let adopted = f
        .runtime
        .adopt(process.pid, process.start_time)
        .unwrap()
        .expect("running instance is adopted");
    assert_eq!(adopted.pid, process.pid);
    assert!(adopted.is_child, "we started it");
    assert!(f
        .runtime
        .adopt(process.pid, process.start_time + 1)
        .unwrap()
        .is_none());

    f.runtime.signal(&adopted, Signal::SIGKILL).unwrap();
    let exit = f.wait(&cfg, &adopted).await;
    assert_eq!(exit.signal, Some(9));
    assert!(f
        .runtime
        .adopt(process.pid, process.start_time)
        .unwrap()
        .is_none());
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_inside_the_instance() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut cfg = f.instance("target", &["sleep", "60"]);
    cfg.env.insert("GREETING".into(), "hello".into());
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let timeout = Duration::from_secs(10);
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = f
        .runtime
        .exec_output(&process, &argv(&["cat", "/etc/hostname"]), &[], timeout)
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "target.host\n");

    let out = f
        .runtime
        .exec_output(
            &process,
            &argv(&[
                "sh",
                "-c",
                "echo $GREETING $$; ls /proc | grep -cE '^[0-9]+$'; grep CapEff /proc/self/status",
            ]),
            &[],
            timeout,
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("hello "),
        "instance environment: {stdout}"
    );
    let pid: u32 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(pid < 100, "in the instance's pid namespace: {stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");

    // The environment given goes over the one the instance's first process shows.
    let out = f
        .runtime
        .exec_output(
            &process,
            &argv(&["sh", "-c", "echo $GREETING $PATH"]),
            &[("GREETING".into(), "given; LD_PRELOAD=/x".into())],
            timeout,
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("given; LD_PRELOAD=/x /"),
        "the given GREETING, the instance's PATH: {stdout}"
    );

    // The command joined the instance's cgroups (every hierarchy the runtime manages).
    let out = f
        .runtime
        .exec_output(&process, &argv(&["cat", "/proc/self/cgroup"]), &[], timeout)
        .await
        .unwrap();
    let cgroups = String::from_utf8_lossy(&out.stdout);
    let own = format!("/{}/{}", f.parent, cfg.id);
    for line in cgroups.lines() {
        let (_, rest) = line.split_once(':').unwrap();
        let (controllers, path) = rest.split_once(':').unwrap();
        if ["", "cpu", "cpuacct", "memory", "pids"].contains(&controllers) {
            assert_eq!(path, own, "{cgroups}");
        }
    }

    assert_eq!(
        f.runtime
            .exec(&process, &argv(&["sh", "-c", "exit 3"]), &[], timeout)
            .await
            .unwrap(),
        3
    );
    let started = Instant::now();
    let err = f
        .runtime
        .exec(
            &process,
            &argv(&["sleep", "20"]),
            &[],
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The timed-out command died with its nsexec parent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let procs = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/{}/{}/cgroup.procs",
        f.parent, cfg.id
    ))
    .unwrap_or_default();
    let described: Vec<String> = procs
        .lines()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
        .collect();
    assert_eq!(
        f.runtime.usage(&cfg.id).unwrap().pids,
        1,
        "only sleep 60 left: {described:?}"
    );
    f.runtime.cleanup(&cfg.id).unwrap();
    f.wait(&cfg, &process).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_are_dropped_unless_kept() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let none = f.instance("nocaps", &["grep", "Cap", "/proc/self/status"]);
    let mut some = f.instance("somecaps", &["grep", "Cap", "/proc/self/status"]);
    some.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
    let mut user = f.instance(
        "usercaps",
        &["sh", "-c", "id -u; grep Cap /proc/self/status"],
    );
    user.capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
    user.user = Some("nobody".into());
    for cfg in [&none, &some, &user] {
        let process = f.runtime.spawn(cfg).await.expect("spawn");
        let exit = f.wait(cfg, &process).await;
        assert_eq!(exit.code, Some(0), "{}", f.log(cfg));
        f.runtime.cleanup(&cfg.id).unwrap();
    }
    let log = f.log(&none);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{log}");
    }
    let log = f.log(&some);
    assert!(log.contains("CapEff:\t0000000000000400"), "{log}");
    assert!(log.contains("CapBnd:\t0000000000000400"), "{log}");
    let log = f.log(&user);
    assert!(log.starts_with("65534\n"), "{log}");
    assert!(
        log.contains("CapEff:\t0000000000000400"),
        "kept across setuid: {log}"
    );
    assert!(log.contains("CapAmb:\t0000000000000400"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_cannot_see_each_others_files_or_processes() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let a = f.instance(
        "alpha",
        &[
            "sh",
            "-c",
            "echo s > /tmp/secret; echo s > /root/secret; echo ready; exec sleep 60",
        ],
    );
    let b = f.instance(
        "beta",
        &[
            "sh",
            "-c",
            "ls /tmp /root; test ! -e /tmp/secret && test ! -e /root/secret \
             && ! pgrep -x sleep && echo isolated",
        ],
    );
    let pa = f.runtime.spawn(&a).await.expect("spawn alpha");
    f.wait_for_log(&a, "ready").await;
    let pb = f.runtime.spawn(&b).await.expect("spawn beta");
    let exit = f.wait(&b, &pb).await;
    assert_eq!(exit.code, Some(0), "{}", f.log(&b));
    assert!(f.log(&b).contains("isolated"));
    // Positive control: alpha does see its own files.
    let seen = f
        .runtime
        .exec(
            &pa,
            &["test".into(), "-e".into(), "/root/secret".into()],
            &[],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(seen, 0);
    assert!(
        a.dir.join("upper/root/secret").exists(),
        "written to alpha's upper layer"
    );
    f.runtime.cleanup(&a.id).unwrap();
    f.runtime.cleanup(&b.id).unwrap();
    f.wait(&a, &pa).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn root_filesystem_is_read_only_where_shared_and_has_a_minimal_dev() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut cfg = f.instance(
        "fs",
        &[
            "sh",
            "-c",
            "touch /usr/x 2>/dev/null && echo usr-writable; \
             touch /etc/x 2>/dev/null && echo etc-writable; \
             echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo procsys-writable; \
             touch /var/ok && echo var-ok; ls /dev | tr '\\n' ' '; echo; \
             cat /data/in; echo out > /data/out; pwd; echo PATH=$PATH; echo HOME=$HOME",
        ],
    );
    let data = f.tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in"), "from-host\n").unwrap();
    cfg.mounts = vec![paracloud_runtime::Mount {
        source: data.clone(),
        target: "/data".into(),
        read_only: false,
        size: None,
    }];
    cfg.working_dir = Some("/var/app".into());
    let process = f.runtime.spawn(&cfg).await.expect("spawn");
    let exit = f.wait(&cfg, &process).await;
    let log = f.log(&cfg);
    assert_eq!(exit.code, Some(0), "{log}");
    assert!(!log.contains("writable"), "{log}");
    assert!(log.contains("var-ok"), "{log}");
    for node in ["null", "zero", "urandom", "pts", "shm", "fd", "ptmx"] {
        assert!(log.contains(&format!("{node} ")), "/dev/{node}: {log}");
    }
    assert!(log.contains("from-host\n"), "{log}");
    assert!(log.contains("/var/app\n"), "{log}");
    assert!(log.contains("PATH=/usr/local/sbin:"), "{log}");
    assert!(log.contains("HOME=/root\n"), "{log}");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "out\n");
    f.runtime.cleanup(&cfg.id).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_latency_of_true() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let mut times = Vec::new();
    for i in 0..20 {
        let cfg = f.instance(&format!("true-{i}"), &["/bin/true"]);
        let started = Instant::now();
        let process = f.runtime.spawn(&cfg).await.expect("spawn");
        times.push(started.elapsed());
        let exit = f.wait(&cfg, &process).await;
        assert_eq!(exit.code, Some(0));
        f.runtime.cleanup(&cfg.id).unwrap();
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "spawn of /bin/true to exec: median {median:?}, min {:?}, max {:?}",
        times[0],
        times[times.len() - 1]
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
}

/// The parent pid in /proc/PID/stat.
fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_cloned_by_the_spawner_are_the_runtimes_children_and_a_dead_spawner_is_replaced()
{
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let me = std::process::id() as i32;
    let run = |id: &str| f.instance(id, &["/bin/sh", "-c", "echo ran"]);

    let first = run("first");
    let process = f.runtime.spawn(&first).await.expect("spawn");
    let spawner = f
        .runtime
        .spawner_pid()
        .expect("a spawner after the first spawn") as i32;
    assert_eq!(parent_of(spawner), me);
    // CLONE_PARENT: the spawner clones it, the runtime's process is its parent.
    assert_eq!(parent_of(process.pid), me);
    assert!(process.is_child);
    assert_eq!(f.wait(&first, &process).await.code, Some(0));
    assert!(f.log(&first).contains("ran"));

    // A spawner that died: that start falls back to a clone of this process, the next one gets
    // a new spawner.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for id in ["second", "third"] {
        let cfg = run(id);
        let process = f.runtime.spawn(&cfg).await.expect("spawn");
        assert_eq!(parent_of(process.pid), me);
        assert_eq!(f.wait(&cfg, &process).await.code, Some(0), "{id}");
    }
    let replaced = f.runtime.spawner_pid().expect("a new spawner") as i32;
    assert_ne!(replaced, spawner);
    // The dead one was reaped, not left a zombie.
    assert!(!std::path::Path::new(&format!("/proc/{spawner}")).exists());

    // It ends with its runtime.
    drop(f);
    assert!(!std::path::Path::new(&format!("/proc/{replaced}")).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_made_ahead_go_to_one_instance_each_and_the_spawner_stays_in_its_own() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let namespace = |pid: i32, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    let kinds = ["net", "ipc", "uts", "mnt", "pid"];
    let mut seen = std::collections::BTreeSet::new();
    let mut running = Vec::new();
    for n in 0..4 {
        let cfg = f.instance(&format!("ns{n}"), &["/bin/sleep", "30"]);
        let process = f.runtime.spawn(&cfg).await.expect("spawn");
        for kind in kinds {
            let ns = namespace(process.pid, kind);
            assert!(seen.insert(ns.clone()), "{kind} namespace {ns} given twice");
        }
        running.push((cfg, process));
    }
    let spawner = f.runtime.spawner_pid().unwrap() as i32;
    let me = std::process::id() as i32;
    for kind in kinds {
        assert_eq!(namespace(spawner, kind), namespace(me, kind), "{kind}");
        assert!(
            !seen.contains(&namespace(me, kind)),
            "an instance in the host's {kind}"
        );
    }
    for (cfg, process) in running {
        f.runtime.cleanup(&cfg.id).unwrap();
        f.wait(&cfg, &process).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_namespaces_made_ahead_map_their_own_range_and_go_to_one_instance_each() {
    if !is_root() {
        return;
    }
    let f = Fixture::new();
    let range = |n: u32| paracloud_runtime::IdRange {
        host: (1 << 31) - n * 65536,
        size: 65536,
    };
    let (first, second) = (range(3), range(4));
    let mut namespaces = std::collections::BTreeSet::new();
    let mut running = Vec::new();
    // The spawner makes one ahead for the last range once idle: the second start of `first`
    // may take it, then `second` must not get one made for `first`, and so on.
    for (n, ids) in [first, first, second, second, first]
        .into_iter()
        .enumerate()
    {
        let mut cfg = f.instance(&format!("userns{n}"), &["/bin/sleep", "30"]);
        cfg.userns = Some(ids);
        let process = f.runtime.spawn(&cfg).await.expect("spawn");
        let map = std::fs::read_to_string(format!("/proc/{}/uid_map", process.pid)).unwrap();
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(
            fields,
            ["0", &ids.host.to_string(), "65536"],
            "instance {n}: {map}"
        );
        let namespace = std::fs::read_link(format!("/proc/{}/ns/user", process.pid)).unwrap();
        assert!(
            namespaces.insert(namespace.clone()),
            "{namespace:?} given twice"
        );
        running.push((cfg, process));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (cfg, process) in running {
        f.runtime.cleanup(&cfg.id).unwrap();
        f.wait(&cfg, &process).await;
    }
}
