//! The cost of attaching to a running instance: `paracloud capsule run debug -- true` against
//! `nsenter -t PID -a true` into the same instance, and `crun exec` and `runc exec` into an
//! equivalent container (busybox running sleep, under crun's default spec); then one capsule
//! run attached to 50 instances at once.
//!
//! Method: the bench first enters a private mount namespace with the cgroup2 mount of this
//! host's hybrid layout removed (crun and runc refuse to run otherwise), then starts a daemon
//! of its own there, so every contender runs under the same conditions. Rounds interleave the
//! contenders; each sample is the wall time of one command, from spawn to exit, as a user types
//! it. For the capsule, the daemon's own figure (attach to detach, from the run's record) is
//! reported beside the command's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::stats::Summary;

const APP: &str = "capsule-bench";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

#[derive(Debug, Clone)]
pub struct CapsuleOptions {
    pub rounds: usize,
    pub fan_out: u32,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct CapsuleReport {
    pub rounds: usize,
    /// Contender name to its samples' summary.
    pub attach: Vec<(String, Summary)>,
    /// The daemon's own time per capsule (attach to detach), from the run records.
    pub capsule_in_daemon: Option<Summary>,
    pub fan_out: u32,
    /// `capsule run` on `fan_out` instances at once, per run.
    pub fan_out_run: Option<Summary>,
    /// The longest target's own time in each fan-out run.
    pub fan_out_slowest_target: Option<Summary>,
}

fn timed(mut command: Command) -> Result<f64> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = command.output().context("cannot run the contender")?;
    let took = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Enters a private mount namespace without the cgroup2 mount; call it before any thread
/// starts (a process with threads cannot unshare its mount namespace).
pub fn private_mounts() -> Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("cannot unshare a mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("cannot make the mounts private")?;
    if Path::new(UNIFIED).exists() {
        let _ = umount2(UNIFIED, MntFlags::MNT_DETACH);
    }
    Ok(())
}

/// An OCI container running `sleep` from the bench's busybox root, under `runtime`.
struct Container {
    runtime: &'static str,
    id: String,
}

impl Container {
    fn start(runtime: &'static str, rootfs: &Path, dir: &Path) -> Result<Self> {
        let id = format!("pcb-capsule-{runtime}-{}", std::process::id());
        let bundle = dir.join(&id);
        fs::create_dir_all(&bundle)?;
        let mut config = crate::oci::bundle_config(
            rootfs,
            0,
            "bench",
            &format!("/paracloud-bench-capsule/{id}"),
        );
        config["process"]["args"] = serde_json::json!(["/bin/sleep", "3600"]);
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let status = Command::new(runtime)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .with_context(|| format!("cannot run {runtime}"))?;
        ensure!(status.success(), "{runtime} run --detach failed ({status})");
        Ok(Self { runtime, id })
    }

    fn exec(&self) -> Command {
        let mut command = Command::new(self.runtime);
        command.args(["exec", &self.id, "/bin/busybox", "true"]);
        command
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(self.runtime)
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn manifest(dir: &Path, replicas: u32) -> Result<PathBuf> {
    let path = dir.join("paracloud.toml");
    fs::write(
        &path,
        format!(
            "app = \"{APP}\"\n\n[services.target]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\nreplicas = 1\n\n\
             [services.many]\nimage = \"host\"\ncommand = [\"sleep\", \"3600\"]\nreplicas = {replicas}\n\n\
             [services.target.capsules]\ndebug = \"read\"\n\n[services.many.capsules]\ndebug = \"read\"\n"
        ),
    )?;
    Ok(path)
}

/// The daemon's duration of the last `n` runs' targets, from `capsule history`.
fn daemon_durations(platform: &Platform, n: usize) -> Result<Vec<Vec<f64>>> {
    let out = platform.cli(
        &[
            "capsule",
            "history",
            "-o",
            "json",
            "--limit",
            &n.to_string(),
        ],
        None,
    )?;
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(runs
        .iter()
        .map(|r| {
            r["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["duration_ms"].as_f64())
                .collect()
        })
        .collect())
}

/// The CLI's process alone, and with one request to the daemon: its share of a capsule run.
const CLI_START: &str = "paracloud --version (the CLI's process alone)";
const CLI_REQUEST: &str = "paracloud capsule ls (the CLI and one request)";

pub fn run(opts: &CapsuleOptions, scratch: &Path) -> Result<CapsuleReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let rootfs = crate::rootfs::build(&scratch.join("rootfs"))?;
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "capsule",
        APP,
    )?;
    let file = manifest(scratch, opts.fan_out)?;
    platform.cli(&["up", "-f"], Some(&file))?;
    platform.up = true;
    let target_pid = platform
        .ps()?
        .into_iter()
        .find(|i| i.instance == "target.1")
        .and_then(|i| i.pid)
        .context("target.1 has no pid")?;
    let crun = Container::start("crun", &rootfs, scratch)?;
    let runc = Container::start("runc", &rootfs, scratch)?;

    let capsule = || {
        let mut command = Command::new(&paracloud);
        command
            .args([
                "capsule",
                "run",
                "debug",
                "-l",
                "instance=target.1",
                "--",
                "true",
            ])
            .envs(platform_env(&platform));
        command
    };
    // The CLI's own cost: its process alone, then with one request to the daemon.
    let cli = |args: &[&str]| {
        let mut command = Command::new(&paracloud);
        command.args(args).envs(platform_env(&platform));
        command
    };
    let nsenter = || {
        let mut command = Command::new("nsenter");
        command.args(["-t", &target_pid.to_string(), "-a", "true"]);
        command
    };
    // One warm-up each: the capsule's image is built on first use.
    timed(capsule())?;
    timed(nsenter())?;
    timed(crun.exec())?;
    timed(runc.exec())?;
    timed(cli(&["capsule", "ls"]))?;

    let names = [
        "paracloud capsule run",
        "nsenter -a",
        "crun exec",
        "runc exec",
        CLI_START,
        CLI_REQUEST,
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..opts.rounds {
        for k in 0..names.len() {
            // Rotate the order each round.
            let i = (k + round) % names.len();
            let command = match i {
                0 => capsule(),
                1 => nsenter(),
                2 => crun.exec(),
                3 => runc.exec(),
                4 => cli(&["--version"]),
                _ => cli(&["capsule", "ls"]),
            };
            samples[i].push(timed(command)?);
        }
    }
    let in_daemon: Vec<f64> = daemon_durations(&platform, opts.rounds)?
        .into_iter()
        .flatten()
        .collect();

    let mut fan_runs = Vec::new();
    let mut slowest = Vec::new();
    let rounds = opts.rounds.clamp(1, 5);
    for _ in 0..rounds {
        let mut command = Command::new(&paracloud);
        command
            .args([
                "capsule",
                "run",
                "debug",
                "-l",
                "service=many",
                "--",
                "true",
            ])
            .envs(platform_env(&platform));
        fan_runs.push(timed(command)?);
        if let Some(targets) = daemon_durations(&platform, 1)?.pop() {
            ensure!(
                targets.len() == opts.fan_out as usize,
                "the fan-out run attached to {} instances, not {}",
                targets.len(),
                opts.fan_out
            );
            slowest.push(targets.iter().copied().fold(0.0, f64::max));
        }
    }
    drop((crun, runc));
    Ok(CapsuleReport {
        rounds: opts.rounds,
        attach: names
            .iter()
            .zip(&samples)
            .filter_map(|(n, s)| Some((n.to_string(), Summary::of(s)?)))
            .collect(),
        capsule_in_daemon: Summary::of(&in_daemon),
        fan_out: opts.fan_out,
        fan_out_run: Summary::of(&fan_runs),
        fan_out_slowest_target: Summary::of(&slowest),
    })
}

fn platform_env(platform: &Platform) -> Vec<(String, String)> {
    vec![
        ("PARACLOUD_ROOT".into(), platform.root.display().to_string()),
        (
            "PARACLOUD_CGROUP_PARENT".into(),
            platform.cgroup_parent.clone(),
        ),
        ("PARACLOUD_SUBNET".into(), platform.subnet.to_string()),
    ]
}

pub fn markdown(report: &CapsuleReport) -> String {
    let mut out = format!(
        "## Attach to a running instance ({} rounds, interleaved)\n\n| contender | median ms | p90 ms | min ms |\n|---|---|---|---|\n",
        report.rounds
    );
    for (name, s) in &report.attach {
        out.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} |\n",
            s.median_ms, s.p90_ms, s.min_ms
        ));
    }
    if let Some(s) = &report.capsule_in_daemon {
        out.push_str(&format!(
            "| (capsule in the daemon: attach to detach) | {:.1} | {:.1} | {:.1} |\n",
            s.median_ms, s.p90_ms, s.min_ms
        ));
    }
    let median = |name: &str| {
        report
            .attach
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.median_ms)
    };
    if let Some(capsule) = median("paracloud capsule run") {
        out.push('\n');
        for peer in ["nsenter -a", "crun exec", "runc exec"] {
            if let Some(p) = median(peer) {
                out.push_str(&format!("- capsule ÷ {peer}: {:.2}\n", capsule / p));
            }
        }
        if let (Some(start), Some(request)) = (median(CLI_START), median(CLI_REQUEST)) {
            out.push_str(&format!(
                "- the CLI's share of the capsule run: {start:.1} ms its process, {:.1} ms more \
                 for a request to the daemon; {:.1} ms remain for the capsule itself\n",
                request - start,
                capsule - request
            ));
        }
    }
    if let (Some(run), Some(slowest)) = (&report.fan_out_run, &report.fan_out_slowest_target) {
        out.push_str(&format!(
            "\n`capsule run` on {} instances at once: {:.0} ms median ({:.1} ms per instance); the slowest target's own time {:.0} ms.\n",
            report.fan_out,
            run.median_ms,
            run.median_ms / f64::from(report.fan_out.max(1)),
            slowest.median_ms
        ));
    }
    out
}
