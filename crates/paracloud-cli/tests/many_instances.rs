//! Many instances on one daemon: a daemon started from a shell with the usual soft limit of
//! 1,024 open files holds 400 instances on one application's /22 (three descriptors each), and
//! its instances still start with the limit that shell gave.

mod common;

use std::time::Duration;

use common::*;

const INSTANCES: usize = 400;

/// (soft, hard) of `Max open files` in /proc/PID/limits.
fn open_files_limit(pid: i64) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

#[test]
fn a_daemon_from_a_shell_limited_to_1024_open_files_holds_400_instances() {
    let p = Platform::new();
    let file = p.manifest(
        "many",
        &format!(
            r#"
app = "many"

[services.web]
image = "host"
command = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]
ports = [{{ port = 8080, protocol = "http" }}]
health = {{ http = "/hostname" }}
replicas = {INSTANCES}
stop_signal = "KILL"
"#
        ),
    );
    // As from a login shell: soft limit 1,024, hard limit as it is.
    let plain = p.command();
    let mut limited = std::process::Command::new("prlimit");
    limited
        .envs(plain.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("PARACLOUD_APP_PREFIX", "22")
        .arg("--nofile=1024:")
        .arg("--")
        .arg(plain.get_program())
        .args(["up", "--timeout", "240s", "-f", file.to_str().unwrap()]);
    let out = limited.output().unwrap();
    assert!(
        out.status.success(),
        "up: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.daemon_log()
    );
    let ps = p.wait_ps(
        "many",
        Duration::from_secs(60),
        "every instance running",
        |ps| ps.len() == INSTANCES && ps.iter().all(|i| i["state"] == "running"),
    );
    let daemon = i64::from(p.daemon_pid().unwrap());
    let (soft, hard) = open_files_limit(daemon);
    assert_eq!(
        soft, hard,
        "the daemon raised its soft limit to the hard one"
    );
    for instance in ps.iter().step_by(97) {
        let (soft, _) = open_files_limit(instance["pid"].as_i64().unwrap());
        assert_eq!(
            soft,
            "1024",
            "{}: an instance starts with the shell's soft limit",
            field(instance, "instance")
        );
    }
    let log = std::fs::read_to_string(p.root().join("daemon.log")).unwrap();
    assert!(
        log.contains("open files: raised the soft limit from 1024"),
        "{}",
        p.daemon_log()
    );
    p.ok(&["down", "-a", "many"]);
}
