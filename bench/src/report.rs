//! The results as a markdown report (tables, goals, method) and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scale::ScaleReport;
use crate::start::{Contender, Row, StartReport};

/// Goals from the acceptance of issue 2.
const GOAL_VS_CRUN: f64 = 0.25;
const GOAL_VS_UNSHARE: f64 = 2.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub kernel: String,
    pub cores: usize,
    /// /proc/loadavg when the run began.
    pub load_average: String,
    pub start: Option<StartReport>,
    pub scale: Option<ScaleReport>,
    pub method: String,
}

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# paracloud-bench: {} (kernel {}, {} cores, load average {} at the start)\n",
        report.date, report.kernel, report.cores, report.load_average
    );
    if let Some(start) = &report.start {
        start_section(&mut out, start);
    }
    if let Some(scale) = &report.scale {
        scale_section(&mut out, scale);
    }
    let _ = writeln!(out, "## Method\n\n{}", report.method);
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn median_of(start: &StartReport, c: Contender) -> Option<f64> {
    start
        .rows
        .iter()
        .find(|r| r.contender == c)
        .and_then(|r| r.http.map(|s| s.median_ms))
}

/// Where a Paracloud start's time goes: each step's median, on its side.
fn steps_table(out: &mut String, steps: &[crate::start::StepRow]) {
    let _ = writeln!(
        out,
        "Paracloud's start step by step (medians; each step counts from the step before it on \
         the same side, sandbox-init's first from the clone):\n\n\
         | side | step | µs | ends at µs |\n|---|---|---:|---:|"
    );
    for step in steps {
        let side = match step.side {
            paracloud_runtime::start_steps::StartSide::Daemon => "daemon",
            paracloud_runtime::start_steps::StartSide::SandboxInit => "sandbox-init",
        };
        let _ = writeln!(
            out,
            "| {side} | {} | {:.0} | {:.0} |",
            step.name, step.median_us, step.ends_at_us
        );
    }
    let _ = writeln!(out);
}

fn start_section(out: &mut String, start: &StartReport) {
    let _ = writeln!(
        out,
        "## Instance start: create → HTTP answers\n\n\
         busybox httpd, {} measured runs per runtime after {} warm-up round(s), interleaved \
         round-robin.\n",
        start.runs, start.warmup
    );
    let _ = writeln!(
        out,
        "| runtime | median | p90 | min | max | TCP accepts (median) | paracloud ÷ runtime |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    let ours = median_of(start, Contender::Paracloud);
    for row in &start.rows {
        let _ = writeln!(out, "{}", table_row(row, ours));
    }
    let _ = writeln!(out);
    if let Some(spawned) = start
        .rows
        .iter()
        .find(|r| r.contender == Contender::Paracloud)
        .and_then(|r| r.spawned)
    {
        let _ = writeln!(
            out,
            "- paracloud: `Runtime::spawn` returned (httpd exec'd in its sandbox) after {} \
             (median), p90 {}.",
            ms(spawned.median_ms),
            ms(spawned.p90_ms)
        );
    }
    if let Some(row) = start
        .rows
        .iter()
        .find(|r| r.contender == Contender::Paracloud && !r.steps.is_empty())
    {
        steps_table(out, &row.steps);
    }
    for (peer, goal, words) in [
        (Contender::Crun, GOAL_VS_CRUN, "at or below"),
        (Contender::Unshare, GOAL_VS_UNSHARE, "within"),
    ] {
        if let (Some(ours), Some(theirs)) = (ours, median_of(start, peer)) {
            let ratio = ours / theirs;
            let _ = writeln!(
                out,
                "- goal: paracloud {words} {goal}× {}: {} ({ratio:.2}×).",
                peer.name(),
                if ratio <= goal { "met" } else { "NOT met" }
            );
        }
    }
    for row in &start.rows {
        let Some(http) = row.http else { continue };
        let slow = row
            .http_ms
            .iter()
            .filter(|&&v| v > 10.0 * http.median_ms)
            .count();
        if slow > 0 {
            let _ = writeln!(
                out,
                "- {}: {slow} of {} runs took over 10× the median (the slowest {}).",
                row.contender.name(),
                http.runs,
                ms(http.max_ms)
            );
        }
    }
    for row in start.rows.iter().filter(|r| r.failures > 0) {
        let _ = writeln!(
            out,
            "- {}: {} failed run(s); first error(s): {}",
            row.contender.name(),
            row.failures,
            row.errors
                .iter()
                .map(|e| format!("`{}`", e.replace('`', "'").replace('\n', " ")))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    for note in &start.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out);
}

fn table_row(row: &Row, ours: Option<f64>) -> String {
    let Some(http) = row.http else {
        return format!("| {} | failed | | | | | |", row.contender.name());
    };
    let connect = row.connect.map(|c| ms(c.median_ms)).unwrap_or_default();
    let ratio = ours
        .map(|o| format!("{:.2}×", o / http.median_ms))
        .unwrap_or_else(|| "n/a".into());
    format!(
        "| {} | {} | {} | {} | {} | {connect} | {ratio} |",
        row.contender.name(),
        ms(http.median_ms),
        ms(http.p90_ms),
        ms(http.min_ms),
        ms(http.max_ms)
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn none_or(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn scale_section(out: &mut String, s: &ScaleReport) {
    let n = s.instances;
    let per_instance = |count: usize| count as f64 / n as f64;
    let _ = writeln!(
        out,
        "## Scale: {n} instances of one service through the CLI and the daemon\n\n\
         | figure | value |\n|---|---:|"
    );
    let rows = [
        (
            format!("`paracloud up` of {n} instances until all are ready (daemon running)"),
            format!(
                "{:.2} s ({:.1} ms per instance)",
                s.up_s,
                s.up_s * 1000.0 / n as f64
            ),
        ),
        (
            format!("`paracloud down` of {n} instances"),
            format!("{:.2} s", s.down_s),
        ),
        (
            "instances answering `GET /` on their own address after `up`".into(),
            format!("{} / {n}", s.answered),
        ),
        (
            format!("daemon RSS, 0 → {n} instances"),
            format!("{} → {}", mib(s.daemon_rss_kib.0), mib(s.daemon_rss_kib.1)),
        ),
        (
            format!("data plane RSS, 0 → {n} instances"),
            format!(
                "{} → {}",
                mib(s.dataplane_rss_kib.0),
                mib(s.dataplane_rss_kib.1)
            ),
        ),
        (
            "**memory the platform adds per idle instance** (daemon + data plane)".into(),
            format!("{:.0} KiB", s.platform_kib_per_instance),
        ),
        (
            "the instance's own memory: cgroup usage / VmRSS (mean)".into(),
            format!(
                "{} / {:.0} KiB",
                s.instance_cgroup_kib_mean
                    .map(|v| format!("{v:.0} KiB"))
                    .unwrap_or_else(|| "n/a".into()),
                s.instance_rss_kib_mean
            ),
        ),
        (
            "**processes per instance** (in the instance cgroups)".into(),
            format!(
                "{:.2} ({} processes for {n} instances)",
                per_instance(s.processes_in_instance_cgroups),
                s.processes_in_instance_cgroups
            ),
        ),
        (
            "instances that are the daemon's direct children".into(),
            format!("{} / {n}", s.instance_children_of_daemon),
        ),
        (
            "other children of the daemon (besides the data plane and its spawner)".into(),
            none_or(&s.other_daemon_children),
        ),
        (
            "the daemon's spawner (clones every instance; one per daemon): VmRSS".into(),
            s.spawner
                .map(|(_, kib)| format!("{kib} KiB"))
                .unwrap_or_else(|| "none found".into()),
        ),
        (
            "children of the daemon left after `down` (besides the data plane and its spawner)"
                .into(),
            none_or(&s.leftover_after_down),
        ),
        (
            "daemon start, until its API answers".into(),
            format!("{:.2} s", s.daemon_start_s),
        ),
    ];
    for (figure, value) in rows {
        let _ = writeln!(out, "| {figure} | {value} |");
    }
    let _ = writeln!(out);
    if s.dataplane_pids.len() > 1 {
        let _ = writeln!(
            out,
            "- the daemon replaced its data plane during the run (pids {}): see its log; the \
             data plane's RSS is that of the last one.\n",
            s.dataplane_pids
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
}

/// What is measured and how, printed with every report.
pub const METHOD: &str = "\
- **start**: one root filesystem built by the bench in a temp dir (static busybox and its \
symlinks, /www/index.html, a minimal /etc/passwd) serves every runtime; the server is \
`busybox httpd -f -p PORT -h /www`. Rounds are interleaved round-robin (paracloud, crun, runc, \
unshare, the starting runtime rotating each round), after warm-up rounds that are not counted. \
A run is timed from just before the instance is created to the first `GET /` answered `200`; \
the probe polls with a TCP connect every 0.2 ms, and the connect time is shown too. Teardown \
(kill, delete, cleanup) is outside the clock.
  - paracloud: the runtime crate used directly: `Runtime::spawn` of an instance (new mount, pid, \
net, uts and ipc namespaces, overlayfs root over the directory, its own cgroups, a veth on the \
bench's own bridge) with a fresh instance directory and a fresh address per run, probed at \
ADDRESS:8080 through the bridge; stopped with SIGKILL, `wait`, `cleanup`.
  - crun and runc: `RUNTIME --root TMP run -d --bundle B ID` with a config.json written by the \
bench (`crun spec` defaults: pid, ipc, uts and mount namespaces, the usual mounts, a read-only \
root), then `delete -f`. They refuse this host's hybrid cgroup layout, so they run from a worker \
process in a private mount namespace with /sys/fs/cgroup/unified unmounted.
  - unshare: `unshare --fork --pid --mount --uts --ipc --mount-proc --kill-child chroot ROOTFS \
busybox httpd ...`, killed by process group.
  - **network caveat**: crun, runc and unshare get no network namespace and serve on a fresh \
loopback port per run; Paracloud creates a network namespace, a veth pair and attaches it to a \
bridge in every run, work the others skip.
- **scale**: a daemon of the bench's own (`paracloud daemon` with PARACLOUD_ROOT in a temp dir, \
its own cgroup parent and PARACLOUD_SUBNET), one service of N busybox httpd instances from \
`image = \"dir:ROOTFS\"` with an HTTP health check; `paracloud up -f FILE` is timed with the \
daemon already running (it returns when every instance passed its first probe). Memory: VmRSS of \
the daemon and the data plane (median of 5 readings, 2 s after start and after `up`), the \
difference divided by N; the instances' own memory from their memory cgroups and VmRSS. \
Processes: a walk of /proc for the daemon's children and of the instance cgroups.";
