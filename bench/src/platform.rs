//! A Paracloud daemon of a benchmark's own (state root, cgroup parent, address pool), driven
//! through the real CLI, and everything it made removed when it is dropped.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::host;

/// The fields of `paracloud ps -o json` that scripts rely on.
#[derive(Debug, Deserialize)]
pub struct PsEntry {
    pub instance: String,
    pub state: String,
    pub pid: Option<i32>,
    pub address: Option<String>,
}

/// A daemon of the bench's own, on its own state root, cgroup parent and address pool; Drop
/// takes the application down, stops the daemon and its data plane, and removes what is left.
pub struct Platform {
    paracloud: PathBuf,
    /// The application Drop takes down.
    app: String,
    pub root: PathBuf,
    pub subnet: Ipv4Net,
    pub app_prefix: u8,
    pub cgroup_parent: String,
    pub daemon: Child,
    pub daemon_pid: i32,
    pub dataplane_pid: i32,
    /// Every data-plane pid seen, oldest first.
    pub dataplane_pids: Vec<i32>,
    pub started_in: Duration,
    /// An application may be deployed (Drop runs `down`).
    pub up: bool,
    pub bridge: Option<String>,
}

impl Platform {
    /// Starts `paracloud daemon` on `root`, with the address pool `subnet` and the cgroup
    /// parent `paracloud-bench-BENCH-PID`, for application `app`.
    pub fn start(
        paracloud: &Path,
        root: &Path,
        subnet: Ipv4Net,
        bench: &str,
        app: &str,
    ) -> Result<Self> {
        Self::start_with_app_prefix(paracloud, root, subnet, 24, bench, app)
    }

    /// As [`Platform::start`], each application getting a subnet of `/app_prefix`.
    pub fn start_with_app_prefix(
        paracloud: &Path,
        root: &Path,
        subnet: Ipv4Net,
        app_prefix: u8,
        bench: &str,
        app: &str,
    ) -> Result<Self> {
        fs::create_dir_all(root)?;
        let log = File::create(root.join("bench-daemon.log"))?;
        let cgroup_parent = format!("paracloud-bench-{bench}-{}", std::process::id());
        let start = Instant::now();
        let daemon = Command::new(paracloud)
            .arg("daemon")
            .envs(env(root, &cgroup_parent, subnet, app_prefix))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start `paracloud daemon`")?;
        let daemon_pid = i32::try_from(daemon.id())?;
        let mut platform = Self {
            paracloud: paracloud.to_path_buf(),
            app: app.to_owned(),
            root: root.to_path_buf(),
            subnet,
            app_prefix,
            cgroup_parent,
            daemon,
            daemon_pid,
            dataplane_pid: 0,
            dataplane_pids: vec![],
            started_in: Duration::ZERO,
            up: false,
            bridge: None,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // Only once the daemon listens: a command that finds no daemon starts one of its
            // own, which would take the root from the one started here.
            let listening =
                std::os::unix::net::UnixStream::connect(root.join("paracloud.sock")).is_ok();
            if listening && platform.cli(&["ps", "-o", "json"], None).is_ok() {
                break;
            }
            if let Some(status) = platform.daemon.try_wait()? {
                bail!(
                    "the daemon exited at start ({status}): {}",
                    platform.log_tail()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the daemon did not answer within 15 s: {}",
                platform.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        platform.started_in = start.elapsed();
        let pid_file = host::read_pid_file(&root.join("daemon.pid"))?;
        ensure!(
            pid_file == daemon_pid,
            "daemon.pid says {pid_file}, the daemon started is {daemon_pid}"
        );
        platform.current_dataplane()?;
        Ok(platform)
    }

    /// Runs `paracloud ARGS [FILE]` for this root; fails with its output when it fails.
    pub fn cli(&self, args: &[&str], file: Option<&Path>) -> Result<Output> {
        self.cli_with(args, file, &[])
    }

    /// As [`Platform::cli`], with more environment variables (a Compose file's).
    pub fn cli_with(
        &self,
        args: &[&str],
        file: Option<&Path>,
        vars: &[(&str, String)],
    ) -> Result<Output> {
        let mut command = Command::new(&self.paracloud);
        command.envs(vars.iter().map(|(k, v)| (k, v)));
        command.args(args);
        if let Some(file) = file {
            command.arg(file);
        }
        let out = command
            .envs(env(
                &self.root,
                &self.cgroup_parent,
                self.subnet,
                self.app_prefix,
            ))
            .stdin(Stdio::null())
            .output()
            .context("cannot run paracloud")?;
        if !out.status.success() {
            bail!(
                "`paracloud {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    pub fn ps(&self) -> Result<Vec<PsEntry>> {
        let out = self.cli(&["ps", "-o", "json", "-a", &self.app], None)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`paracloud ps -o json` printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The data plane now running, from `dataplane.pid` (the daemon may have replaced the one
    /// it started: every pid seen is kept, for the report and for the cleanup).
    pub fn current_dataplane(&mut self) -> Result<i32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            match host::read_pid_file(&self.root.join("dataplane.pid")) {
                Ok(pid) if is_running(pid) => break pid,
                _ if Instant::now() > deadline => {
                    bail!(
                        "no running data plane (dataplane.pid) within 5 s: {}",
                        self.log_tail()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if !self.dataplane_pids.contains(&pid) {
            self.dataplane_pids.push(pid);
        }
        self.dataplane_pid = pid;
        Ok(pid)
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.root.join("bench-daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(10).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if self.up {
            if let Err(e) = self.cli(&["down", "-a", &self.app], None) {
                eprintln!("cleanup: {e:#}");
            }
        }
        // The daemon first: while it runs, it starts a new data plane as soon as one ends.
        let _ = kill(Pid::from_raw(self.daemon_pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.daemon.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.daemon.try_wait(), Ok(None)) {
            eprintln!("the daemon ignored SIGTERM for 10 s: SIGKILL");
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        if let Ok(pid) = host::read_pid_file(&self.root.join("dataplane.pid")) {
            if !self.dataplane_pids.contains(&pid) {
                self.dataplane_pids.push(pid);
            }
        }
        let dataplanes: Vec<i32> = self
            .dataplane_pids
            .iter()
            .copied()
            .filter(|&p| is_running(p))
            .collect();
        for &pid in &dataplanes {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && dataplanes.iter().any(|&p| is_running(p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in dataplanes.into_iter().filter(|&p| is_running(p)) {
            eprintln!("the data plane {pid} ignored SIGTERM for 5 s: SIGKILL");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(bridge) = &self.bridge {
            if Path::new("/sys/class/net").join(bridge).exists() {
                eprintln!("the bridge {bridge} outlived `down`: removing it");
                let _ = Command::new("ip").args(["link", "delete", bridge]).status();
            }
        }
        host::remove_cgroup_tree(&self.cgroup_parent);
    }
}

/// Alive and not a zombie (an orphaned data plane may wait for a reaper that never comes).
fn is_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.get(s.rfind(')')? + 2..)
                .and_then(|rest| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z')
}

fn env(
    root: &Path,
    cgroup_parent: &str,
    subnet: Ipv4Net,
    app_prefix: u8,
) -> [(&'static str, String); 4] {
    [
        ("PARACLOUD_ROOT", root.display().to_string()),
        ("PARACLOUD_CGROUP_PARENT", cgroup_parent.to_string()),
        ("PARACLOUD_SUBNET", subnet.to_string()),
        ("PARACLOUD_APP_PREFIX", app_prefix.to_string()),
    ]
}

/// A daemon of a benchmark's own that also serves the remote API on `127.0.0.1:PORT` (its
/// root's `daemon.toml`), running the application `manifest` (in `scratch`), and a viewer's
/// token of that API.
pub fn start_remote(
    scratch: &Path,
    subnet: Ipv4Net,
    bench: &str,
    app: &str,
    manifest: &str,
    port: u16,
) -> Result<(Platform, String)> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let root = scratch.join("root");
    fs::create_dir_all(&root)?;
    fs::write(
        root.join("daemon.toml"),
        format!("listen = \"127.0.0.1:{port}\"\n"),
    )?;
    let mut platform = Platform::start(&paracloud, &root, subnet, bench, app)?;
    let path = scratch.join("paracloud.toml");
    fs::write(&path, manifest)?;
    platform.cli(&["up", "-f"], Some(&path))?;
    platform.up = true;
    let out = platform.cli(&["token", "create", "bench", "--role", "viewer"], None)?;
    let token = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .context("token create printed no token")?
        .to_owned();
    Ok((platform, token))
}
