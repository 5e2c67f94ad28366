//! Capsules as a user meets them: `paracloud capsule run` and `paracloud debug` against the
//! shop's running instances, each built-in doing its job, and the instance exactly as it was
//! afterwards.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{bin_dir, field, http_get, workspace, Platform};
use serde_json::Value;
use sha2::Digest;

/// Runs `paracloud ARGS`, returns (exit code, stdout, stderr).
fn run(p: &Platform, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = p.run(args);
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn capsule_ok(p: &Platform, args: &[&str]) -> String {
    let mut all = vec!["capsule", "run"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run(p, &all);
    assert_eq!(
        code,
        0,
        "paracloud {}:\nstdout: {stdout}\nstderr: {stderr}\n--- daemon ---\n{}",
        all.join(" "),
        p.daemon_log()
    );
    stdout
}

/// The shop from micro-images of its programs, with the manifest's capsule policy.
fn micro_shop(p: &Platform) {
    for service in ["kv", "api", "web"] {
        let binary = bin_dir().join(format!("shop-{service}"));
        p.ok(&[
            "image",
            "build",
            "--from-binary",
            binary.to_str().unwrap(),
            "-t",
            &format!("shop-{service}:latest"),
        ]);
    }
    let text = std::fs::read_to_string(workspace().join("examples/shop/paracloud.micro.toml"))
        .unwrap()
        .replace("publish = 8080", &format!("publish = {}", p.port(0)));
    let manifest = p.manifest("shop-micro", &text);
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
}

fn pid_of(p: &Platform, instance: &str) -> i64 {
    p.ps("shop")
        .iter()
        .find(|i| field(i, "instance") == instance)
        .unwrap_or_else(|| panic!("no {instance}"))["pid"]
        .as_i64()
        .unwrap()
}

/// What an instance looks like from the host: its mount table, its processes, and every file
/// (path, size) of its root except the kernel's.
#[derive(Debug, PartialEq)]
struct Snapshot {
    mounts: String,
    processes: Vec<String>,
    files: BTreeMap<PathBuf, u64>,
}

fn snapshot(pid: i64) -> Snapshot {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut processes: Vec<String> = std::fs::read_dir(root.join("proc"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        .collect();
    processes.sort();
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(&root).unwrap().to_path_buf();
            if ["proc", "sys", "dev"]
                .iter()
                .any(|k| relative == Path::new(k))
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            }
            files.insert(relative, if meta.is_file() { meta.len() } else { 0 });
        }
    }
    Snapshot {
        mounts: std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap(),
        processes,
        files,
    }
}

/// The test file of anti-virus vendors, put together here so that no file holds it whole.
fn eicar() -> String {
    [
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        "EICAR-STANDARD-ANTIVIRUS-",
        "TEST-FILE!$H+H*",
    ]
    .concat()
}

#[test]
fn file_capsules_do_their_jobs_on_a_micro_image_and_leave_it_as_it_was() {
    let p = Platform::new();
    micro_shop(&p);
    let pid = pid_of(&p, "web.1");
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    // The application's image holds none of the capsules' tools.
    for tool in [
        "bin/sh",
        "usr/bin/strace",
        "usr/bin/gdb",
        "usr/bin/tcpdump",
        "usr/bin/yara",
        "usr/bin/zstd",
        "bin/busybox",
    ] {
        assert!(!root.join(tool).exists(), "{tool} in the application image");
    }
    let before = snapshot(pid);

    // checksum: every file of /etc, as sha256sum and md5sum of the host see them.
    let out = capsule_ok(
        &p,
        &["checksum", "--selector", "instance=web.1", "--", "/etc"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 4, "{out}");
    for line in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [sha, md5, path] = parts[..] else {
            panic!("unexpected line {line:?}");
        };
        let bytes = std::fs::read(root.join(path.trim_start_matches('/'))).unwrap();
        let expected: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, expected, "{path}");
        let host_md5 = std::process::Command::new("md5sum")
            .arg(root.join(path.trim_start_matches('/')))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&host_md5.stdout).starts_with(md5),
            "{path}"
        );
    }

    // archive: /etc comes back as archive.tar.zst, and unpacks to the same tree.
    let out_dir = p.root().join("capsule-out");
    capsule_ok(
        &p,
        &[
            "archive",
            "-l",
            "instance=web.1",
            "--out",
            out_dir.to_str().unwrap(),
            "--",
            "/etc",
        ],
    );
    let archive = out_dir.join("web.1/archive.tar.zst");
    let unpacked = p.root().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | tar -x -C {}",
            archive.display(),
            unpacked.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    for entry in std::fs::read_dir(root.join("etc")).unwrap().flatten() {
        let name = entry.file_name();
        assert_eq!(
            std::fs::read(unpacked.join(&name)).ok(),
            std::fs::read(entry.path()).ok(),
            "{name:?}"
        );
    }

    // scan: the EICAR file is found (exit 1), a clean tree is not.
    std::fs::write(root.join("tmp/eicar.com"), eicar()).unwrap();
    let (code, stdout, stderr) = run(
        &p,
        &[
            "capsule",
            "run",
            "scan",
            "-l",
            "instance=web.1",
            "--",
            "/tmp",
            "/etc",
        ],
    );
    assert_eq!(code, 1, "{stdout} {stderr}");
    assert!(
        stdout.contains("EICAR_test_file") && stdout.contains("/tmp/eicar.com"),
        "{stdout}"
    );
    std::fs::remove_file(root.join("tmp/eicar.com")).unwrap();
    let out = capsule_ok(&p, &["scan", "-l", "instance=web.1", "--", "/"]);
    assert!(out.contains("0 match(es)"), "{out}");

    // logrotate (write access): the log is copied, compressed and truncated in place.
    std::fs::write(root.join("tmp/app.log"), "line one\nline two\n").unwrap();
    let out = capsule_ok(&p, &["logrotate", "-l", "instance=web.1", "--", "/tmp"]);
    assert!(out.contains("1 log file(s) rotated"), "{out}");
    assert_eq!(std::fs::read(root.join("tmp/app.log")).unwrap(), b"");
    let unzipped = std::process::Command::new("gzip")
        .args(["-dc"])
        .arg(root.join("tmp/app.log.1.gz"))
        .output()
        .unwrap();
    assert_eq!(unzipped.stdout, b"line one\nline two\n");
    std::fs::remove_file(root.join("tmp/app.log")).unwrap();
    std::fs::remove_file(root.join("tmp/app.log.1.gz")).unwrap();

    // Nothing of the capsules stays: the same mounts, processes and files.
    let after = snapshot(pid);
    assert_eq!(before.mounts, after.mounts);
    assert_eq!(before.processes, after.processes);
    assert_eq!(before.files, after.files);
    p.ok(&["down", "-a", "shop"]);
}

/// Sends `n` page requests to the shop while `during` runs.
fn with_traffic<T>(p: &Platform, during: impl FnOnce() -> T) -> T {
    let port = p.port(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let load = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = http_get(port, "/");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let result = during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    result
}

#[test]
fn process_and_network_capsules_see_the_target_at_work() {
    let p = Platform::new();
    p.ok(&["up", "-f", p.shop().to_str().unwrap()]);
    let before: Vec<Snapshot> = ["web.1", "web.2", "api.1"]
        .iter()
        .map(|i| snapshot(pid_of(&p, i)))
        .collect();

    // strace sees the requests web.1 reads.
    let out = with_traffic(&p, || {
        let out = p.root().join("strace");
        capsule_ok(
            &p,
            &[
                "strace",
                "-l",
                "instance=web.1",
                "--out",
                out.to_str().unwrap(),
                "--",
                "3",
            ],
        )
    });
    assert!(out.contains("GET /"), "strace saw no request: {out}");

    // tcpdump captures a request in capture.pcap.
    let out_dir = p.root().join("pcap");
    with_traffic(&p, || {
        capsule_ok(
            &p,
            &[
                "tcpdump",
                "-l",
                "instance=web.1",
                "--out",
                out_dir.to_str().unwrap(),
                "--",
                "3",
                "200",
                "tcp port 8080",
            ],
        )
    });
    let pcap = std::fs::read(out_dir.join("web.1/capture.pcap")).unwrap();
    assert_eq!(&pcap[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "pcap magic");
    assert!(
        pcap.windows(5).any(|w| w == b"GET /"),
        "no request captured"
    );

    // gdb: a backtrace of every thread of api.1's program.
    let out = capsule_ok(&p, &["gdb", "-l", "instance=api.1"]);
    assert!(out.contains("shop-api") && out.contains("#0 "), "{out}");

    // metrics on every web instance at once, as JSON.
    let out = capsule_ok(&p, &["metrics", "-l", "service=web", "-o", "json"]);
    // Output comes in pieces as it is written: put each instance's together.
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for line in out.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        if event["kind"] == "output" && event["stream"] == "stdout" {
            texts
                .entry(event["instance"].as_str().unwrap().to_string())
                .or_default()
                .push_str(event["text"].as_str().unwrap());
        }
    }
    assert_eq!(texts.len(), 2, "{out}");
    for (instance, text) in &texts {
        let report: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("metrics of {instance} is not JSON ({e}): {text}"));
        assert_eq!(report["instance"], instance.as_str(), "{report}");
        assert_eq!(report["processes"][0]["name"], "shop-web", "{report}");
        assert_eq!(report["totals"]["processes"], 1, "{report}");
        assert!(
            report["connections"]["listening"].as_u64() >= Some(1),
            "{report}"
        );
    }

    let after: Vec<Snapshot> = ["web.1", "web.2", "api.1"]
        .iter()
        .map(|i| snapshot(pid_of(&p, i)))
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.mounts, a.mounts);
        assert_eq!(b.processes, a.processes);
        assert_eq!(b.files, a.files);
    }
    p.ok(&["down", "-a", "shop"]);
}

#[test]
fn policy_deadlines_history_and_debug() {
    let p = Platform::new();
    p.ok(&["up", "-f", p.shop().to_str().unwrap()]);
    let pid = pid_of(&p, "api.1");
    let before = snapshot(pid);

    // The smallest attach, and debug with a command.
    let out = capsule_ok(
        &p,
        &[
            "debug",
            "--selector",
            "instance=api.1",
            "--",
            "cat",
            "/proc/1/comm",
        ],
    );
    assert_eq!(out.trim(), "shop-api");
    let (code, stdout, stderr) = run(
        &p,
        &["debug", "api.1", "--", "sh", "-c", "hostname; exit 3"],
    );
    assert_eq!(code, 3, "{stdout} {stderr}");
    assert!(stdout.contains("api.1"), "{stdout}");

    // On a terminal: an interactive shell, its exit code passed on.
    let mut session = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!("{} debug api.1", env!("CARGO_BIN_EXE_paracloud")))
        .arg("/dev/null")
        .env("PARACLOUD_ROOT", p.root())
        .env("PARACLOUD_CGROUP_PARENT", p.cgroup_parent())
        .env("PARACLOUD_SUBNET", p.subnet())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = session.stdin.take().unwrap();
        stdin
            .write_all(b"echo tty-$((6 * 7)) $([ -t 0 ] && echo terminal)\nexit 5\n")
            .unwrap();
    }
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty-42 terminal"), "{text}");
    assert_eq!(out.status.code(), Some(5), "{text}");

    // Refused by the manifest, with what to add; recorded.
    let e = p.fails(&[
        "capsule",
        "run",
        "checksum",
        "-l",
        "service=api",
        "--",
        "/etc",
    ]);
    assert!(
        e.contains("add checksum = \"read\" under [services.api.capsules]"),
        "{e}"
    );
    // Bad input says what is wrong.
    let e = p.fails(&["capsule", "run", "checksun", "-l", "service=web"]);
    assert!(e.contains("did you mean \"checksum\""), "{e}");
    let e = p.fails(&["capsule", "run", "checksum", "-l", "service"]);
    assert!(e.contains("has no '='"), "{e}");
    let e = p.fails(&["capsule", "run", "checksum", "-l", "service=nope"]);
    assert!(e.contains("no running instance of shop matches"), "{e}");

    // A capsule that hangs is stopped at its deadline, and what it started with it.
    let (code, _, stderr) = run(
        &p,
        &[
            "capsule",
            "run",
            "debug",
            "-l",
            "instance=api.1",
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "sleep 100 & sleep 100",
        ],
    );
    assert_eq!(code, 124, "{stderr}");
    assert!(stderr.contains("deadline"), "{stderr}");

    let history: Value =
        serde_json::from_str(&p.ok(&["capsule", "history", "-o", "json"])).unwrap();
    let runs = history.as_array().unwrap();
    let statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["capsule"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("debug", "ok"),
            ("debug", "failed"),
            ("debug", "failed"),
            ("checksum", "refused"),
            ("debug", "timeout")
        ]
    );
    let first = &runs[0];
    assert_eq!(first["who"], "root");
    assert_eq!(first["targets"][0]["instance"], "api.1");
    assert_eq!(first["targets"][0]["exit_code"], 0);
    assert_eq!(first["args"], serde_json::json!(["cat", "/proc/1/comm"]));
    assert_eq!(first["output_bytes"], 9);
    let table = p.ok(&["capsule", "history"]);
    assert!(table.contains("refused: capsule \"checksum\""), "{table}");

    let listed = p.ok(&["capsule", "ls"]);
    for name in [
        "archive",
        "checksum",
        "debug",
        "gdb",
        "logrotate",
        "metrics",
        "scan",
        "strace",
        "tcpdump",
    ] {
        assert!(listed.contains(name), "{listed}");
    }
    assert_eq!(before, snapshot(pid), "api.1 changed");
    p.ok(&["down", "-a", "shop"]);
}

#[test]
fn a_scheduled_capsule_runs_when_its_time_comes_and_bad_schedules_are_refused() {
    let p = Platform::new();
    let app = |schedule: &str| {
        format!(
            "app = \"ticks\"\n\n[services.tick]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
             [services.tick.capsules]\nmetrics = \"read\"\n\n{schedule}"
        )
    };
    // Refused at `up`, each with where and why.
    let bad = p.manifest(
        "ticks-bad",
        &app("[schedules.snap]\ncapsule = \"metrics\"\ncron = \"61 * * * *\"\nselector = \"service=tick\"\n"),
    );
    let e = p.fails(&["up", "-f", bad.to_str().unwrap()]);
    assert!(
        e.contains("schedules.snap.cron: invalid cron expression \"61 * * * *\""),
        "{e}"
    );
    let refused = p.manifest(
        "ticks-refused",
        &app("[schedules.trace]\ncapsule = \"strace\"\ncron = \"* * * * *\"\nselector = \"service=tick\"\n"),
    );
    let e = p.fails(&["up", "-f", refused.to_str().unwrap()]);
    assert!(
        e.contains("add strace = \"read\" under [services.tick.capsules]"),
        "{e}"
    );
    let nowhere = p.manifest(
        "ticks-nowhere",
        &app("[schedules.snap]\ncapsule = \"metrics\"\ncron = \"* * * * *\"\nselector = \"service=tock\"\n"),
    );
    let e = p.fails(&["up", "-f", nowhere.to_str().unwrap()]);
    assert!(e.contains("matches no service"), "{e}");

    // Every minute: the first run comes within a minute, recorded as the schedule's.
    let good = p.manifest(
        "ticks",
        &app("[schedules.snap]\ncapsule = \"metrics\"\ncron = \"* * * * *\"\nselector = \"service=tick\"\n"),
    );
    p.ok(&["up", "-f", good.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    loop {
        let history: Value =
            serde_json::from_str(&p.ok(&["capsule", "history", "-o", "json"])).unwrap();
        let done = history
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["who"] == "schedule snap" && r["status"] != "running");
        if let Some(run) = done {
            assert_eq!(run["status"], "ok", "{run}");
            assert_eq!(run["capsule"], "metrics");
            assert_eq!(run["targets"][0]["instance"], "tick.1");
            assert!(run["output_bytes"].as_u64() > Some(50), "{run}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run within 75 s: {history}\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    p.ok(&["down", "-a", "ticks"]);
}

/// Backups the platform keeps: a schedule with `keep = 1` holds on to the files of its last
/// successful run past the daemon's window of 50 runs (a manual run's files go with that
/// window), and lets the older one go when a newer run has succeeded; `capsule files RUN`
/// fetches a past run's files. A `keep` of 0 is refused at `up`, at its line.
#[test]
fn a_schedule_keeps_its_last_runs_files_past_the_daemons_window() {
    let p = Platform::new();
    let app = |keep: u32| {
        format!(
            "app = \"vault\"\n\n[services.tick]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
             [services.tick.capsules]\narchive = \"read\"\nchecksum = \"read\"\n\n\
             [schedules.backup]\ncapsule = \"archive\"\ncron = \"* * * * *\"\nselector = \"service=tick\"\n\
             args = [\"/etc\"]\nkeep = {keep}\n"
        )
    };
    let bad = p.manifest("vault-bad", &app(0));
    let e = p.fails(&["up", "-f", bad.to_str().unwrap()]);
    assert!(
        e.contains(":16:8: schedules.backup.keep: keep must be between 1 and 1000 runs, found 0"),
        "{e}"
    );
    let good = p.manifest("vault", &app(1));
    p.ok(&["up", "-f", good.to_str().unwrap()]);

    let scheduled_runs = || -> Vec<i64> {
        let history: Value =
            serde_json::from_str(&p.ok(&["capsule", "history", "--limit", "500", "-o", "json"]))
                .unwrap();
        history
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["who"] == "schedule backup" && r["status"] != "running")
            .inspect(|r| assert_eq!(r["status"], "ok", "{r}"))
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let wait_for_run = |after: Option<i64>| -> i64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(75);
        loop {
            if let Some(&run) = scheduled_runs().iter().rev().find(|&&r| Some(r) > after) {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no scheduled run within 75 s\n{}",
                p.daemon_log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let fetched = |run: i64| -> Result<Vec<u8>, String> {
        let out = p.root().join(format!("fetched-{run}"));
        let done = p.run(&[
            "capsule",
            "files",
            &run.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]);
        match done.status.success() {
            true => Ok(std::fs::read(out.join("tick.1/archive.tar.zst")).unwrap()),
            false => Err(String::from_utf8_lossy(&done.stderr).into_owned()),
        }
    };

    let first = wait_for_run(None);
    assert!(fetched(first).unwrap().len() > 20, "a zstd archive");
    // A manual run with files, then 50 runs more: the manual run's files go with the window,
    // the scheduled one's stay.
    let out = p.root().join("manual");
    p.ok(&[
        "capsule",
        "run",
        "archive",
        "-l",
        "service=tick",
        "--out",
        out.to_str().unwrap(),
        "--",
        "/etc",
    ]);
    let history: Value =
        serde_json::from_str(&p.ok(&["capsule", "history", "--limit", "5", "-o", "json"])).unwrap();
    let manual = history
        .as_array()
        .unwrap()
        .iter()
        .rfind(|r| r["who"] != "schedule backup")
        .map(|r| r["id"].as_i64().unwrap())
        .unwrap();
    assert!(
        fetched(manual).is_ok(),
        "its files are kept while it is recent"
    );
    for _ in 0..50 {
        p.ok(&[
            "capsule",
            "run",
            "checksum",
            "-l",
            "service=tick",
            "--",
            "/etc/hostname",
        ]);
    }
    let gone = fetched(manual).unwrap_err();
    assert!(
        gone.contains(&format!(
            "run {manual} (archive on service=tick) has no files kept"
        )),
        "{gone}"
    );
    assert!(
        fetched(first).is_ok(),
        "the schedule keeps its last run's files past the window"
    );
    // The next scheduled run takes its place: the first one's files go.
    let second = wait_for_run(Some(first));
    assert!(fetched(second).is_ok());
    let gone = fetched(first).unwrap_err();
    assert!(gone.contains("has no files kept"), "{gone}");
    p.ok(&["down", "-a", "vault"]);
}

/// An application's own capsule (`[capsules.NAME]`): its image built with `paracloud build`, its
/// entrypoint run with the arguments in the target's namespaces, its files returned; refused
/// where the policy does not name it, and `up` refused when its image is missing.
#[test]
fn an_applications_own_capsule_runs_its_image_where_the_policy_allows_it() {
    let p = Platform::new();
    p.busybox_image();
    let context = p.root().join("report-context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Containerfile"),
        "FROM busybox:1\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ENV GREETING=hello WHO=nobody\nCOPY report.sh /bin/report\nENTRYPOINT [\"/bin/sh\", \"/bin/report\"]\n",
    )
    .unwrap();
    std::fs::write(
        context.join("report.sh"),
        "echo \"pid1=$(cat /proc/1/comm) args=$* target=$(ls $TARGET/proc >/dev/null && echo yes) $GREETING $WHO\"\n\
         echo \"$PARACLOUD_INSTANCE\" > \"$OUT/report.txt\"\n",
    )
    .unwrap();
    // The base image's /bin links to usr/bin (as on the host it came from): the COPY lands in
    // /usr/bin beside busybox's applets rather than hiding them under a new /bin.
    p.ok(&["build", "-t", "report:1", context.to_str().unwrap()]);

    let app = |image: &str| {
        format!(
            "app = \"tools\"\n\n\
             [services.tick]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
             [services.tick.capsules]\nreport = \"read\"\n\n\
             [services.tock]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
             [capsules.report]\nimage = \"{image}\"\ndescription = \"who runs here\"\nusage = \"[WORDS...]\"\n\
             env = {{ WHO = \"ops\" }}\n"
        )
    };
    let missing = p.manifest("tools-missing", &app("nope:1"));
    let e = p.fails(&["up", "-f", missing.to_str().unwrap()]);
    assert!(e.contains("capsule report: image nope:1"), "{e}");

    let manifest = p.manifest("tools", &app("report:1"));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    let listed = p.ok(&["capsule", "ls", "-a", "tools"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("report "))
        .unwrap_or_else(|| panic!("report is not listed: {listed}"));
    assert!(
        line.contains("tools") && line.contains("who runs here"),
        "{line}"
    );

    let out = p.root().join("report-out");
    let said = capsule_ok(
        &p,
        &[
            "report",
            "--selector",
            "app=tools,service=tick",
            "--out",
            out.to_str().unwrap(),
            "--",
            "hello",
            "world",
        ],
    );
    assert!(
        said.contains("pid1=sleep args=hello world target=yes hello ops"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tick.1/report.txt")).unwrap(),
        "tick.1\n"
    );

    let (code, _, e) = run(
        &p,
        &[
            "capsule",
            "run",
            "report",
            "--selector",
            "app=tools,service=tock",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        e.contains("add report = \"read\" under [services.tock.capsules]"),
        "{e}"
    );
    p.ok(&["down", "-a", "tools"]);
}

/// `paracloud debug` on a terminal that changes size: the session's terminal follows (SIGWINCH
/// to the client, a resize through the API), so full-screen tools draw to the new size.
#[test]
fn a_debug_session_follows_the_size_of_the_callers_terminal() {
    let p = Platform::new();
    let manifest = p.manifest(
        "resize",
        "app = \"resize\"\n\n[services.tick]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
         [services.tick.capsules]\ndebug = \"read\"\n",
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    // A terminal of 24 x 80 for the client; the shell in the capsule says its size for every
    // line it reads. The terminal becomes 40 x 100 and the client gets SIGWINCH, as a terminal
    // emulator does it.
    let driver = p.root().join("resize.py");
    std::fs::write(
        &driver,
        r#"import fcntl, os, select, signal, struct, subprocess, sys, termios, time
def size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
master, replica = os.openpty()
size(replica, 24, 80)
client = subprocess.Popen(
    [sys.argv[1], "debug", "tick.1", "--", "sh", "-c", "stty size; while read line; do stty size; done"],
    stdin=replica, stdout=replica, stderr=replica)
os.close(replica)
seen = b""
def wait_for(token, seconds):
    global seen
    end = time.time() + seconds
    while token not in seen and time.time() < end:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return token in seen
first = wait_for(b"24 80", 30)
size(master, 40, 100)
client.send_signal(signal.SIGWINCH)
resized = False
for _ in range(100):
    os.write(master, b"\r")
    if wait_for(b"40 100", 0.2):
        resized = True
        break
os.write(master, b"\x04")
client.wait(timeout=30)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(0 if first and resized else 1)
"#,
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(&driver)
        .arg(env!("CARGO_BIN_EXE_paracloud"))
        .env("PARACLOUD_ROOT", p.root())
        .env("PARACLOUD_CGROUP_PARENT", p.cgroup_parent())
        .env("PARACLOUD_SUBNET", p.subnet())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n--- daemon ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    // A session that is not open cannot be resized, and a size must be one.
    let socket = p.root().join("paracloud.sock");
    let (status, body) = common::unix_http(
        &socket,
        "POST",
        "/v1/capsules/runs/1/resize",
        r#"{"rows":40,"cols":100}"#,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no debug session of run 1 is open"), "{body}");
    let (status, body) = common::unix_http(
        &socket,
        "POST",
        "/v1/capsules/runs/1/resize",
        r#"{"rows":0,"cols":100}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("both must be at least 1"), "{body}");
    p.ok(&["down", "-a", "resize"]);
}

/// The capsule cgroups under the test's cgroup parent (every hierarchy), with their processes.
fn capsule_cgroups(p: &Platform) -> Vec<(PathBuf, Vec<i32>)> {
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    hierarchies.extend(
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    );
    let mut found = Vec::new();
    for h in hierarchies {
        for entry in std::fs::read_dir(h.join(p.cgroup_parent()))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("cap") {
                let procs = std::fs::read_to_string(entry.path().join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                found.push((entry.path(), procs));
            }
        }
    }
    found
}

/// A run cut short by the daemon's death: the next daemon records it as failed and removes
/// what is left of it, the function its runner went on running included, rather than leaving
/// it `running` in the history and its cgroup behind for good.
#[test]
fn a_capsule_run_cut_short_by_the_daemons_death_is_settled_by_the_next_daemon() {
    let p = Platform::new();
    let manifest = p.manifest(
        "cut",
        "app = \"cut\"\n\n[services.tick]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\n\n\
         [services.tick.capsules]\ndebug = \"read\"\n",
    );
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    // The first run builds the capsule's image (slow on a busy machine): the second attaches.
    capsule_ok(
        &p,
        &["debug", "-a", "cut", "-l", "instance=tick.1", "--", "true"],
    );
    let mut cli = p
        .command()
        .args([
            "capsule",
            "run",
            "debug",
            "-a",
            "cut",
            "-l",
            "instance=tick.1",
        ])
        .args(["--", "sleep", "600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its function runs: processes in the capsule's cgroup.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let processes: Vec<i32> = loop {
        let procs: Vec<i32> = capsule_cgroups(&p)
            .into_iter()
            .flat_map(|(_, procs)| procs)
            .collect();
        if !procs.is_empty() {
            break procs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the capsule never ran\n{}",
            p.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let daemon = p.daemon_pid().unwrap();
    common::kill9(daemon);
    while common::alive(daemon) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = cli.wait();
    assert!(
        processes.iter().any(|pid| common::alive(*pid)),
        "the capsule's processes outlive the daemon that started them"
    );

    // The next daemon (started by this command) settles the run.
    let history: Value =
        serde_json::from_str(&p.ok(&["capsule", "history", "-a", "cut", "-o", "json"])).unwrap();
    let run = history.as_array().unwrap().last().unwrap();
    assert_eq!(run["args"][0], "sleep", "{run}");
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        run["detail"], "the daemon restarted during the run",
        "{run}"
    );
    assert!(capsule_cgroups(&p).is_empty(), "{:?}", capsule_cgroups(&p));
    for pid in processes {
        assert!(!common::alive(pid), "pid {pid} of the capsule still runs");
    }
    assert!(p
        .events("cut")
        .contains("failed: the daemon restarted during the run"));
}
