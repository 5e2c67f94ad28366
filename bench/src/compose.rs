//! `paracloud up` of a Compose application from a warm image store: the hit counter of the
//! end-to-end tests (`crates/paracloud-cli/tests/apps/counter`: a web front end and an API built
//! from multi-stage Dockerfiles, and Redis with a health check the API waits for, on two
//! networks, with a secret), from the command to its return, which is when every service is
//! ready (Redis healthy, the others up for a second: `up`'s own rule). The first `up` builds the
//! two images (reported apart); each round then takes the application down and brings it up
//! again, its images and build steps in the store. Base images are put in the store under their
//! Docker Hub names first (busybox with its applets, this machine's Redis), as a pull through a
//! mirror would. There is no peer in the run: `docker compose up` needs a Docker engine, which
//! this machine does not have.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct ComposeOptions {
    pub rounds: usize,
    pub subnet: Ipv4Net,
    /// The loopback port the web front end is published on.
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct ComposeReport {
    pub rounds: usize,
    /// The first `up`, which builds the two images, in ms.
    pub first_ms: f64,
    /// The warm `up`s.
    pub warm: Option<Summary>,
    /// `down` of the application, each round.
    pub down: Option<Summary>,
}

/// The application's directory in the source tree.
fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/paracloud-cli/tests/apps/counter")
}

fn build(platform: &Platform, scratch: &Path, tag: &str, containerfile: &str) -> Result<()> {
    let dir = scratch.join(format!("ctx-{}", tag.replace([':', '/'], "-")));
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("Containerfile"), containerfile)?;
    platform.cli(&["build", "-t", tag], Some(&dir))?;
    Ok(())
}

pub fn run(opts: &ComposeOptions, scratch: &Path) -> Result<ComposeReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "compose",
        "compose-bench",
    )?;
    platform.cli(
        &[
            "image",
            "build",
            "--from-binary",
            "/bin/busybox",
            "-t",
            "busybox:1",
        ],
        None,
    )?;
    build(
        &platform,
        scratch,
        "busybox:1.36",
        "FROM busybox:1\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )?;
    platform
        .cli(
            &[
                "image",
                "build",
                "--from-binary",
                "/usr/bin/redis-server",
                "--add",
                "/usr/bin/redis-cli",
                "-t",
                "redis-binary:7",
            ],
            None,
        )
        .context("the Redis image needs redis-server (apt-get install redis-server)")?;
    build(
        &platform,
        scratch,
        "redis:7",
        "FROM redis-binary:7\nENTRYPOINT []\nCMD [\"redis-server\"]\n",
    )?;
    let compose = app_dir().join("compose.yaml");
    let vars = [("WEB_PORT", opts.port.to_string())];
    let timed = |args: &[&str]| -> Result<f64> {
        let start = Instant::now();
        platform.cli_with(args, Some(&compose), &vars)?;
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    let first_ms = timed(&["up", "--timeout", "600s", "-f"])?;
    let mut warm = Vec::new();
    let mut down = Vec::new();
    for _ in 0..opts.rounds {
        down.push(timed(&["down", "-f"])?);
        warm.push(timed(&["up", "--timeout", "600s", "-f"])?);
    }
    platform.cli_with(&["down", "-f"], Some(&compose), &vars)?;
    Ok(ComposeReport {
        rounds: opts.rounds,
        first_ms,
        warm: Summary::of(&warm),
        down: Summary::of(&down),
    })
}

pub fn markdown(report: &ComposeReport) -> String {
    let mut out = format!(
        "## `paracloud up` of a Compose application (web + API + Redis, 2 multi-stage builds; {} rounds)\n\n| | median ms | p90 ms | min ms | max ms |\n|---|---|---|---|---|\n",
        report.rounds
    );
    for (name, s) in [("up, warm store", &report.warm), ("down", &report.down)] {
        if let Some(s) = s {
            out.push_str(&format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                s.median_ms, s.p90_ms, s.min_ms, s.max_ms
            ));
        }
    }
    out.push_str(&format!(
        "\n- first `up` (builds both images): {:.0} ms\n- no peer: `docker compose up` needs a Docker engine\n",
        report.first_ms
    ));
    out
}
