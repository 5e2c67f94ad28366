//! The task farm against fixed worker pools chosen by hand, on one bag of tasks with varied run
//! times, in one run on one machine:
//!
//! - **the farm**: `paracloud tasks submit render --deadline D --wait`; its finish time is the
//!   batch's (submit to the last task's end), its cost the instance time of its workers, as the
//!   daemon counts it;
//! - **a fixed pool of N workers**: `paracloud scale pool=N` of the same image, each worker
//!   taking the next task from the bag (claimed with `mkdir` on the shared volume) until none is
//!   left; its finish time runs from the scale to the last task's output, and its cost is N
//!   times that (a pool sized by hand is there for the whole batch).
//!
//! The tasks sleep, so they need no CPU, and two cores can run many workers at once: the figures
//! are about how many workers a bag needs and for how long, not about compute.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;

#[derive(Debug, Clone)]
pub struct TaskFarmOptions {
    /// Tasks in the bag.
    pub tasks: usize,
    /// The farm's deadline.
    pub deadline: Duration,
    /// The fixed pools' sizes.
    pub pools: Vec<u32>,
    /// Rounds of the whole comparison.
    pub rounds: usize,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Serialize)]
pub struct Run {
    /// `farm` or `pool of N`.
    pub side: String,
    pub round: usize,
    pub finish_ms: u64,
    /// Instance time, in milliseconds.
    pub cost_ms: u64,
    pub peak_workers: u32,
    pub met_deadline: bool,
}

#[derive(Debug, Serialize)]
pub struct TaskFarmReport {
    pub tasks: usize,
    /// The bag's total run time (the sum of its tasks' sleeps), and its longest task.
    pub work_ms: u64,
    pub longest_ms: u64,
    pub deadline_ms: u64,
    pub runs: Vec<Run>,
}

/// The bag: run times from 0.3 s to 3 s, most of them short (a squared uniform draw from a
/// fixed seed, so that every run has the same bag).
fn run_times(tasks: usize) -> Vec<u64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..tasks)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            (300.0 + 2700.0 * u * u).round() as u64
        })
        .collect()
}

const POOL_SCRIPT: &str = r#"total=$(wc -l < /work/tasks.txt)
k=1
while [ "$k" -le "$total" ]; do
  if mkdir "/work/claim/$k" 2>/dev/null; then
    line=$(sed -n "${k}p" /work/tasks.txt)
    sh -c "$line"
  fi
  k=$((k + 1))
done
"#;

pub fn run(opts: &TaskFarmOptions, scratch: &Path) -> Result<TaskFarmReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "taskfarm",
        "farm",
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
    let dir = scratch.join("app");
    std::fs::create_dir_all(dir.join("tools"))?;
    std::fs::write(
        dir.join("tools/Containerfile"),
        "FROM busybox:1\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )?;
    let most = opts.pools.iter().copied().max().unwrap_or(8).max(8);
    let manifest = dir.join("paracloud.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"app = "farm"

[services.render]
catalog = "taskfarm"
build = "tools"
volumes = ["work:/work"]
max_workers = {most}
retries = 0

[services.pool]
build = "tools"
volumes = ["work:/work"]
command = ["/bin/sh", "-c", {script}]
replicas = 0
restart = "no"
"#,
            script = toml_string(POOL_SCRIPT)
        ),
    )?;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    platform.up = true;
    // Where the daemon keeps the volume: made here, before any instance has made it, so that
    // the bag can be put there.
    let work = platform.root.join("volumes/farm/work");
    std::fs::create_dir_all(&work)?;

    let times = run_times(opts.tasks);
    let lines: Vec<String> = times
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            format!(
                "sleep {}.{:03}; echo {i} > /work/out/{i}",
                ms / 1000,
                ms % 1000
            )
        })
        .collect();
    let tasks_file = dir.join("tasks.txt");
    std::fs::write(&tasks_file, lines.join("\n") + "\n")?;
    std::fs::write(work.join("tasks.txt"), lines.join("\n") + "\n")?;

    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        // Each round starts with another side.
        let mut sides: Vec<Option<u32>> = std::iter::once(None)
            .chain(opts.pools.iter().map(|&n| Some(n)))
            .collect();
        let turn = round % sides.len();
        sides.rotate_left(turn);
        for side in sides {
            fresh(&work)?;
            let run = match side {
                None => farm(&platform, &tasks_file, opts.deadline, round)?,
                Some(n) => pool(&platform, &work, n, opts.tasks, round)?,
            };
            eprintln!(
                "taskfarm: round {round}: {}: {:.1} s, {:.1} instance-s, {} workers",
                run.side,
                run.finish_ms as f64 / 1000.0,
                run.cost_ms as f64 / 1000.0,
                run.peak_workers
            );
            runs.push(Run {
                met_deadline: run.finish_ms <= opts.deadline.as_millis() as u64,
                ..run
            });
            // The workers of one side are gone before the next starts.
            wait_no_workers(&platform)?;
        }
    }
    Ok(TaskFarmReport {
        tasks: opts.tasks,
        work_ms: times.iter().sum(),
        longest_ms: times.iter().copied().max().unwrap_or(0),
        deadline_ms: opts.deadline.as_millis() as u64,
        runs,
    })
}

fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Empties the outputs and claims of the last run.
fn fresh(work: &Path) -> Result<()> {
    for dir in ["out", "claim"] {
        let path = work.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        // The workers write as whatever user the image runs; the volume is theirs.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    }
    Ok(())
}

fn farm(platform: &Platform, tasks: &Path, deadline: Duration, round: usize) -> Result<Run> {
    let deadline_arg = format!("{}s", deadline.as_secs());
    let out = platform.cli(
        &[
            "tasks",
            "submit",
            "-a",
            "farm",
            "render",
            "--deadline",
            &deadline_arg,
            "--wait",
            "-o",
            "json",
            "-f",
        ],
        Some(tasks),
    )?;
    let detail: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("tasks submit --wait -o json")?;
    let batch = &detail["batch"];
    let number = |key: &str| batch[key].as_u64().unwrap_or(0);
    ensure!(
        batch["state"] == "done" && number("failed") == 0,
        "the farm's batch did not succeed: {batch}"
    );
    Ok(Run {
        side: "farm".into(),
        round,
        finish_ms: number("ended_ms").saturating_sub(number("submitted_ms")),
        cost_ms: number("spent_instance_ms"),
        peak_workers: number("peak_workers") as u32,
        met_deadline: false,
    })
}

fn pool(platform: &Platform, work: &Path, n: u32, tasks: usize, round: usize) -> Result<Run> {
    let started = Instant::now();
    platform.cli(
        &["scale", "-a", "farm", &format!("pool={n}"), "--detach"],
        None,
    )?;
    let out = work.join("out");
    let limit = Duration::from_secs(600);
    loop {
        let done = std::fs::read_dir(&out)?.count();
        if done >= tasks {
            break;
        }
        if started.elapsed() > limit {
            bail!("a pool of {n} did {done} of {tasks} tasks in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let finish = started.elapsed();
    platform.cli(&["scale", "-a", "farm", "pool=0", "--detach"], None)?;
    Ok(Run {
        side: format!("pool of {n}"),
        round,
        finish_ms: finish.as_millis() as u64,
        cost_ms: finish.as_millis() as u64 * u64::from(n),
        peak_workers: n,
        met_deadline: false,
    })
}

fn wait_no_workers(platform: &Platform) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = platform.ps()?.iter().any(|i| {
            i.state != "exited"
                && (i.instance.starts_with("render.") || i.instance.starts_with("pool."))
        });
        if !busy {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "workers still there after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The report as bench/README.md shows it: medians by side.
pub fn markdown(report: &TaskFarmReport) -> String {
    let mut sides: Vec<String> = Vec::new();
    for run in &report.runs {
        if !sides.contains(&run.side) {
            sides.push(run.side.clone());
        }
    }
    sides.sort_by_key(|s| {
        (
            s != "farm",
            s.trim_start_matches("pool of ").parse::<u32>().unwrap_or(0),
        )
    });
    let mut text = format!(
        "{} tasks, {:.1} s of work (the longest {:.1} s), deadline {:.0} s; medians of {} rounds\n\n",
        report.tasks,
        report.work_ms as f64 / 1000.0,
        report.longest_ms as f64 / 1000.0,
        report.deadline_ms as f64 / 1000.0,
        report.runs.iter().map(|r| r.round).max().map_or(0, |r| r + 1)
    );
    text.push_str("| side | finish (s) | cost (instance-s) | workers (most) | deadline met | cost ÷ the farm's |\n|---|---|---|---|---|---|\n");
    let farm_cost = median(
        report
            .runs
            .iter()
            .filter(|r| r.side == "farm")
            .map(|r| r.cost_ms),
    );
    for side in &sides {
        let of: Vec<&Run> = report.runs.iter().filter(|r| &r.side == side).collect();
        let finish = median(of.iter().map(|r| r.finish_ms));
        let cost = median(of.iter().map(|r| r.cost_ms));
        let workers = of.iter().map(|r| r.peak_workers).max().unwrap_or(0);
        let met = of.iter().filter(|r| r.met_deadline).count();
        text.push_str(&format!(
            "| {side} | {:.1} | {:.1} | {workers} | {met} of {} | {:.2} |\n",
            finish as f64 / 1000.0,
            cost as f64 / 1000.0,
            of.len(),
            cost as f64 / farm_cost.max(1) as f64
        ));
    }
    text
}

fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut all: Vec<u64> = values.collect();
    all.sort_unstable();
    all.get(all.len() / 2).copied().unwrap_or(0)
}
