//! The ConPaaS example under load: examples/wordpress (Debian's WordPress on the catalogue's
//! PHP tier and MariaDB) asked for its front page by wrk at a fixed concurrency, once per way of
//! sizing the web tier: fixed counts chosen by hand, and the application's autoscaler with the
//! model policy and with its HPA and KPA peers. Each arm starts from one web instance; what it
//! served (req/s, p50, p99, errors) is set against what it held (web instance-seconds, sampled
//! each second, and the most instances at once).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::proxy::{run_wrk, WrkResult};

const APP: &str = "wordpress";
const EXAMPLE: &str = include_str!("../../examples/wordpress/paracloud.toml");
const WP_CONFIG: &str = include_str!("../../examples/wordpress/wp-config.php");
const PREPARE: &str = include_str!("../../examples/wordpress/prepare.sh");

#[derive(Debug, Clone)]
pub struct WordpressOptions {
    pub seconds: u64,
    pub connections: u32,
    /// Fixed web instance counts to compare with.
    pub fixed: Vec<u32>,
    pub subnet: Ipv4Net,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct WordpressArm {
    /// `fixed N`, or the autoscaler's policy.
    pub arm: String,
    pub wrk: WrkResult,
    pub instance_seconds: u64,
    pub max_instances: u32,
}

#[derive(Debug, Serialize)]
pub struct WordpressReport {
    pub seconds: u64,
    pub connections: u32,
    pub arms: Vec<WordpressArm>,
}

/// The example's manifest for one arm: published on `port`, its web tier `fixed` instances
/// without an autoscaler, or autoscaled by `policy`.
fn manifest(port: u16, arm: Result<u32, &str>) -> Result<String> {
    let text = EXAMPLE.replace("\"8081:80/http\"", &format!("\"{port}:80/http\""));
    ensure!(
        text.contains(&format!("\"{port}:80/http\"")) && text.contains("slo = { p95 = \"500ms\" }"),
        "examples/wordpress/paracloud.toml changed shape: update the wordpress bench"
    );
    Ok(match arm {
        Ok(fixed) => text
            .replace("[autoscale]\nslo = { p95 = \"500ms\" }\n", "")
            .replace(
                "autoscale = { min = 1, max = 4 }\n",
                &format!("replicas = {fixed}\n"),
            ),
        Err(policy) => text.replace(
            "slo = { p95 = \"500ms\" }",
            &format!("slo = {{ p95 = \"500ms\" }}\npolicy = \"{policy}\""),
        ),
    })
}

fn web_instances(platform: &Platform) -> Result<u32> {
    Ok(platform
        .ps()?
        .iter()
        .filter(|i| i.instance.starts_with("web.") && i.state != "exited")
        .count() as u32)
}

/// Waits until the web tier runs `n` instances, all ready.
fn settle(platform: &Platform, n: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = platform.ps()?;
        let web: Vec<_> = ps
            .iter()
            .filter(|i| i.instance.starts_with("web."))
            .collect();
        if web.len() as u32 == n && web.iter().all(|i| i.state == "running") {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the web tier did not settle to {n} instances: {web:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn run(opts: &WordpressOptions, scratch: &Path) -> Result<WordpressReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let dir = scratch.join("wordpress");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("wp-config.php"), WP_CONFIG)?;
    std::fs::write(dir.join("prepare.sh"), PREPARE)?;
    let prepared = Command::new("bash")
        .arg(dir.join("prepare.sh"))
        .status()
        .context("cannot run prepare.sh")?;
    ensure!(prepared.success(), "examples/wordpress/prepare.sh failed");
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "wordpress",
        APP,
    )?;
    let path = dir.join("paracloud.toml");
    std::fs::write(&path, manifest(opts.port, Ok(1))?)?;
    platform.cli(&["up", "-f"], Some(&path))?;
    platform.up = true;
    install(opts.port)?;

    let mut arms: Vec<Result<u32, &str>> = opts.fixed.iter().map(|n| Ok(*n)).collect();
    arms.extend([Err("model"), Err("hpa"), Err("kpa")]);
    let mut report = WordpressReport {
        seconds: opts.seconds,
        connections: opts.connections,
        arms: Vec::new(),
    };
    for arm in arms {
        // Every arm starts from one instance, then takes its own shape.
        std::fs::write(&path, manifest(opts.port, Ok(1))?)?;
        platform.cli(&["up", "-f"], Some(&path))?;
        settle(&platform, 1)?;
        std::fs::write(&path, manifest(opts.port, arm)?)?;
        platform.cli(&["up", "-f"], Some(&path))?;
        if let Ok(n) = arm {
            settle(&platform, n)?;
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], opts.port));
        let (wrk, (instance_seconds, max_instances)) = std::thread::scope(|scope| {
            let load = scope.spawn(|| run_wrk(addr, "/", opts.connections, opts.seconds));
            let (mut sum, mut most) = (0u64, 0u32);
            let start = Instant::now();
            let mut next = start;
            while !load.is_finished() {
                if Instant::now() >= next {
                    let n = web_instances(&platform).unwrap_or(0);
                    sum += u64::from(n);
                    most = most.max(n);
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (load.join().expect("wrk's thread"), (sum, most))
        });
        let wrk = wrk?;
        ensure!(wrk.requests > 0, "no page was served: {wrk:?}");
        let name = match arm {
            Ok(n) => format!("fixed {n}"),
            Err(policy) => format!("autoscaled ({policy})"),
        };
        eprintln!(
            "{name}: {:.1} req/s, p99 {:.0} ms, {} errors, {instance_seconds} web instance-s, at most {max_instances}",
            wrk.requests_per_sec, wrk.p99_ms, wrk.errors
        );
        report.arms.push(WordpressArm {
            arm: name,
            wrk,
            instance_seconds,
            max_instances,
        });
    }
    Ok(report)
}

/// WordPress's installer, as a browser fills it in.
fn install(port: u16) -> Result<()> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--data-urlencode", "weblog_title=Paracloud Blog"])
        .args(["--data-urlencode", "user_name=admin"])
        .args(["--data-urlencode", "admin_password=Correct-Horse-9"])
        .args(["--data-urlencode", "admin_password2=Correct-Horse-9"])
        .args(["--data-urlencode", "pw_weak=on"])
        .args(["--data-urlencode", "admin_email=admin@example.com"])
        .arg(format!(
            "http://127.0.0.1:{port}/wp-admin/install.php?step=2"
        ))
        .output()
        .context("cannot run curl")?;
    let status = String::from_utf8_lossy(&out.stdout);
    ensure!(status == "200", "WordPress's installer answered {status}");
    Ok(())
}

pub fn markdown(report: &WordpressReport) -> String {
    let mut text = format!(
        "wrk, 1 thread, {} connections, {} s an arm, the front page; each arm starts from one web instance\n\n| web tier | req/s | p50 (ms) | p99 (ms) | errors | web instance-s | most instances |\n|---|---|---|---|---|---|---|\n",
        report.connections, report.seconds
    );
    for arm in &report.arms {
        text.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.0} | {} | {} | {} |\n",
            arm.arm,
            arm.wrk.requests_per_sec,
            arm.wrk.p50_ms,
            arm.wrk.p99_ms,
            arm.wrk.errors,
            arm.instance_seconds,
            arm.max_instances
        ));
    }
    text
}
