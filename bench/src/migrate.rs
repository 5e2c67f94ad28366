//! The migration benchmark: the same stateful service (the Python counter of
//! `examples/paci-python`, counters in memory) moved under a constant request rate, by PaCI
//! handover through the platform, by stop-and-start through the platform, and by CRIU alone
//! (dump and restore of the same program run on the host, as the peer; it listens on a Unix
//! socket there, since CRIU 4.1 cannot dump TCP sockets on kernels from 6.16 on: "Can't get 1:16
//! opt: Operation not supported", SO_PASSCRED on an inet socket). For each: requests,
//! failed requests, the longest client-visible pause, the total time, and whether the state
//! survived. Beside them, CRIU through the platform (`migrate --via criu`) of a program without
//! sockets, whose pause is the gap in its own output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::scale::APP;

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Requests per second, sent on schedule whatever the answers (open loop).
    pub rate: u32,
    /// Host port the service is published on (and the next one for the CRIU peer).
    pub port: u16,
    pub subnet: Ipv4Net,
    /// Seconds of load before and after each move.
    pub settle: Duration,
    /// MiB of touched memory the CRIU peer also runs with (a heavier checkpoint), besides the
    /// small process; 0 skips it.
    pub ballast_mib: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: String,
    pub requests: u64,
    pub failed: u64,
    /// The longest time a request took, counted from when it was due (so time spent waiting to
    /// be sent counts too).
    pub longest_pause_ms: f64,
    pub median_ms: f64,
    /// From the start of the move to its end (the command returned, or the process restored).
    pub total_ms: f64,
    /// The counter equals the increments answered.
    pub state_kept: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct MigrateReport {
    pub rate: u32,
    pub results: Vec<MethodResult>,
}

/// One request's fate: when it was due, how long it took, whether it succeeded.
struct Sample {
    latency: Duration,
    ok: bool,
}

/// Where the load goes.
#[derive(Debug, Clone)]
enum Target {
    Tcp(u16),
    Unix(PathBuf),
}

/// A constant request rate of `GET /incr/bench` on a target, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    dispatcher: std::thread::JoinHandle<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Load {
    fn start(target: Target, rate: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (jobs, queue) = mpsc::channel::<Instant>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..32 {
            let (queue, samples, target) = (queue.clone(), samples.clone(), target.clone());
            std::thread::spawn(move || loop {
                let due = match queue.lock().map(|q| q.recv()) {
                    Ok(Ok(due)) => due,
                    _ => return,
                };
                let ok = http(&target, "/incr/bench").is_ok();
                samples.lock().unwrap().push(Sample {
                    latency: due.elapsed(),
                    ok,
                });
            });
        }
        let flag = stop.clone();
        let dispatcher = std::thread::spawn(move || {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let begin = Instant::now();
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let due = begin + period * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if jobs.send(due).is_err() {
                    return;
                }
                n += 1;
            }
        });
        Self {
            stop,
            dispatcher,
            samples,
        }
    }

    /// Stops sending, waits for the answers, and returns the samples.
    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.dispatcher.join();
        // The workers end with the channel; give the last requests time to be answered.
        std::thread::sleep(Duration::from_millis(500));
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

fn http(target: &Target, path: &str) -> Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n");
    let mut response = String::new();
    match target {
        Target::Tcp(port) => {
            let mut stream = TcpStream::connect(("127.0.0.1", *port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            stream.read_to_string(&mut response)?;
        }
        Target::Unix(path) => {
            let mut stream = std::os::unix::net::UnixStream::connect(path)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            stream.read_to_string(&mut response)?;
        }
    }
    ensure!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{}",
        response.lines().next().unwrap_or("no answer")
    );
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default())
}

fn summarise(
    method: &str,
    samples: &[Sample],
    total: Duration,
    counter: Option<u64>,
    detail: String,
) -> MethodResult {
    let answered = samples.iter().filter(|s| s.ok).count() as u64;
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    MethodResult {
        method: method.to_string(),
        requests: samples.len() as u64,
        failed: samples.len() as u64 - answered,
        longest_pause_ms: latencies.last().map_or(0.0, |d| ms(*d)),
        median_ms: latencies.get(latencies.len() / 2).map_or(0.0, |d| ms(*d)),
        total_ms: ms(total),
        state_kept: counter == Some(answered),
        detail,
    }
}

pub fn run(opts: &MigrateOptions, scratch: &Path) -> Result<MigrateReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    ensure!(
        paracloud.is_file(),
        "no paracloud binary beside the bench ({}): build the workspace",
        paracloud.display()
    );
    let example = workspace_dir()?.join("examples/paci-python");
    ensure!(
        example.join("counter.py").is_file(),
        "no examples/paci-python/counter.py in {}",
        example.display()
    );
    let mut results = Vec::new();
    results.extend(on_platform(opts, scratch, &paracloud, &example)?);
    results.push(criu_alone(opts, scratch, &example, 0)?);
    if opts.ballast_mib > 0 {
        results.push(criu_alone(opts, scratch, &example, opts.ballast_mib)?);
    }
    Ok(MigrateReport {
        rate: opts.rate,
        results,
    })
}

/// The workspace: the bench binary is in `target/<profile>/`, or its source tree is the current
/// directory.
fn workspace_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors() {
        if dir.join("examples/paci-python").is_dir() {
            return Ok(dir.to_path_buf());
        }
    }
    let here = std::env::current_dir()?;
    if here.join("examples/paci-python").is_dir() {
        return Ok(here);
    }
    bail!("cannot find the workspace (examples/paci-python): run the bench from it")
}

fn on_platform(
    opts: &MigrateOptions,
    scratch: &Path,
    paracloud: &Path,
    example: &Path,
) -> Result<Vec<MethodResult>> {
    let dir = scratch.join("migrate");
    std::fs::create_dir_all(&dir)?;
    let manifest = dir.join("paracloud.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"app = "{APP}"
[services.counter]
image = "host"
paths = [{example:?}]
command = ["/usr/bin/python3", "{script}", "8000"]
ports = [{{ port = 8000, protocol = "http", publish = {port} }}]
health = {{ http = "/healthz", interval = "1s" }}
migrate = "paci"

[services.ticker]
image = "host"
paths = [{dir:?}]
command = ["/usr/bin/python3", "{ticker}"]
stop_signal = "KILL"
migrate = "criu"
"#,
            example = example.display().to_string(),
            script = example.join("counter.py").display(),
            port = opts.port,
            dir = dir.display().to_string(),
            ticker = dir.join("ticker.py").display(),
        ),
    )?;
    std::fs::write(dir.join("ticker.py"), TICKER)?;
    let mut platform = Platform::start(paracloud, &dir.join("root"), opts.subnet, "migrate", APP)?;
    platform.up = true;
    platform.cli(&["up", "-f"], Some(&manifest))?;
    let mut results = Vec::new();

    // PaCI handover: counter.1 → counter.2.
    let (samples, total, detail) = under_load(opts, Target::Tcp(opts.port), || {
        let out = platform.cli(&["migrate", "-a", APP, "counter.1", "--via", "paci"], None)?;
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_string())
    })?;
    let counter = http(&Target::Tcp(opts.port), "/get/bench")
        .ok()
        .and_then(|v| v.parse().ok());
    results.push(summarise("paci handover", &samples, total, counter, detail));

    // Stop and start: the instance stopped, then a new one started (the state is in memory).
    let before: Option<u64> = counter;
    let (samples, total, detail) = under_load(opts, Target::Tcp(opts.port), || {
        platform.cli(&["scale", "-a", APP, "counter=0"], None)?;
        platform.cli(&["scale", "-a", APP, "counter=1"], None)?;
        Ok("scale counter=0, then counter=1".to_string())
    })?;
    let counter: Option<u64> = http(&Target::Tcp(opts.port), "/get/bench")
        .ok()
        .and_then(|v| v.parse().ok());
    let answered = samples.iter().filter(|s| s.ok).count() as u64;
    let mut result = summarise("stop and start", &samples, total, counter, detail);
    result.state_kept = counter == before.map(|b| b + answered);
    results.push(result);
    results.push(criu_on_platform(&platform)?);
    Ok(results)
}

/// A program that knows nothing of the platform and keeps its state in memory (a token drawn
/// at start, a counter), printing both with the time every 10 ms: the pause of a CRIU move is
/// the gap between two of its lines.
const TICKER: &str = "import os, time\n\
token = os.urandom(8).hex()\n\
n = 0\n\
while True:\n\
\x20   n += 1\n\
\x20   print(f'tick {n} {token} {time.time():.4f}', flush=True)\n\
\x20   time.sleep(0.01)\n";

/// CRIU through the platform (`migrate --via criu`) of the ticker: no requests, since CRIU
/// cannot checkpoint a TCP socket on current kernels (the counter service has one); the pause
/// is the longest gap between the program's lines across the move.
fn criu_on_platform(platform: &Platform) -> Result<MethodResult> {
    let method = "criu on the platform (no TCP)";
    let log_of = |instance: &str| {
        platform
            .root
            .join("instances")
            .join(APP)
            .join(instance)
            .join("output.log")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(log_of("ticker.1")).map_or(0, |t| t.lines().count()) < 50 {
        ensure!(Instant::now() < deadline, "ticker.1 printed nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held open, the old log can be read after the old instance is removed.
    let mut old_log = std::fs::File::open(log_of("ticker.1"))?;
    let began = Instant::now();
    let out = platform.cli(
        &[
            "migrate", "-a", APP, "ticker.1", "--via", "criu", "-o", "json",
        ],
        None,
    )?;
    let total = began.elapsed();
    ensure!(
        out.status.success(),
        "criu migration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut before = String::new();
    old_log.read_to_string(&mut before)?;
    let after = std::fs::read_to_string(log_of("ticker.2"))?;
    let parse = |line: &str| -> Option<(u64, String, f64)> {
        let mut w = line.strip_prefix("tick ")?.split_whitespace();
        Some((
            w.next()?.parse().ok()?,
            w.next()?.to_string(),
            w.next()?.parse().ok()?,
        ))
    };
    let last = before
        .lines()
        .rev()
        .find_map(parse)
        .context("no tick before the move")?;
    let first = after
        .lines()
        .find_map(parse)
        .context("no tick after the move")?;
    let pause_ms = (first.2 - last.2) * 1000.0;
    Ok(MethodResult {
        method: method.to_string(),
        requests: 0,
        failed: 0,
        longest_pause_ms: pause_ms,
        median_ms: 0.0,
        total_ms: total.as_secs_f64() * 1000.0,
        state_kept: first.0 == last.0 + 1 && first.1 == last.1,
        detail: format!(
            "checkpoint to ready {} ms, {:.1} MiB of images; pause = gap in the process's 10 ms ticks ({} then {})",
            done["handover_ms"],
            done["state_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            last.0,
            first.0
        ),
    })
}

/// Runs `move_it` under the load; returns the samples, the time `move_it` took, and its text.
fn under_load(
    opts: &MigrateOptions,
    target: Target,
    move_it: impl FnOnce() -> Result<String>,
) -> Result<(Vec<Sample>, Duration, String)> {
    let load = Load::start(target, opts.rate);
    std::thread::sleep(opts.settle);
    let began = Instant::now();
    let moved = move_it();
    let total = began.elapsed();
    std::thread::sleep(opts.settle);
    let samples = load.finish();
    Ok((samples, total, moved?))
}

/// The peer: the same program run on the host without a platform, checkpointed and restored
/// in place with CRIU while the load runs (what CRIU alone gives).
fn criu_alone(
    opts: &MigrateOptions,
    scratch: &Path,
    example: &Path,
    ballast_mib: u32,
) -> Result<MethodResult> {
    let criu = criu_binary()?;
    let dir = scratch.join(format!("criu-{ballast_mib}"));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("counter.sock");
    let target = Target::Unix(socket.clone());
    let log = std::fs::File::create(dir.join("counter.log"))?;
    let mut child = Command::new("/usr/bin/python3")
        .arg(example.join("counter.py"))
        .arg(&socket)
        .arg(ballast_mib.to_string())
        .env_remove("PARACLOUD_PACI")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start counter.py")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&target, "/healthz").is_err() {
        ensure!(
            Instant::now() < deadline,
            "counter.py did not answer on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let times = Arc::new(Mutex::new((Duration::ZERO, Duration::ZERO)));
    let recorded = times.clone();
    let result = under_load(opts, target.clone(), || {
        let began = Instant::now();
        let dump = Command::new(&criu)
            .args([
                "dump",
                "-t",
                &pid.to_string(),
                "--ext-unix-sk",
                "--shell-job",
                "-o",
                "dump.log",
            ])
            .arg("-D")
            .arg(&images)
            .output()?;
        let dumped = began.elapsed();
        ensure!(
            dump.status.success(),
            "criu dump failed: see {}",
            images.join("dump.log").display()
        );
        // The dumped process is gone: collect it.
        let _ = child.wait();
        let began = Instant::now();
        let restore = Command::new(&criu)
            .args([
                "restore",
                "--ext-unix-sk",
                "--shell-job",
                "--restore-detached",
                "-o",
                "restore.log",
            ])
            .arg("-D")
            .arg(&images)
            .output()?;
        let restored = began.elapsed();
        ensure!(
            restore.status.success(),
            "criu restore failed: see {}",
            images.join("restore.log").display()
        );
        *recorded.lock().unwrap() = (dumped, restored);
        Ok(String::new())
    });
    let counter = http(&target, "/get/bench")
        .ok()
        .and_then(|v| v.parse().ok());
    // The restored process has the same pid, but is no longer our child.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let (samples, total, _) = result?;
    let (dumped, restored) = *times.lock().unwrap();
    let name = if ballast_mib == 0 {
        "criu alone".to_string()
    } else {
        format!("criu alone, {ballast_mib} MiB")
    };
    Ok(summarise(
        &name,
        &samples,
        total,
        counter,
        format!(
            "dump {:.0} ms, restore {:.0} ms",
            dumped.as_secs_f64() * 1000.0,
            restored.as_secs_f64() * 1000.0
        ),
    ))
}

/// A criu of version 4 or later (3.x fails on current kernels).
fn criu_binary() -> Result<PathBuf> {
    for candidate in [
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
        "/usr/local/bin/criu",
    ] {
        let path = Path::new(candidate);
        if !path.is_file() {
            continue;
        }
        let out = Command::new(path).arg("--version").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major: Option<u32> = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .and_then(|v| v.trim().split('.').next()?.parse().ok());
        if major.is_some_and(|m| m >= 4) {
            return Ok(path.to_path_buf());
        }
    }
    bail!("no CRIU 4.x found (/usr/local/sbin/criu): run `bash scripts/criu.sh` first")
}

pub fn markdown(report: &MigrateReport) -> String {
    let mut out = format!(
        "\n## Migration under {} requests/s\n\n| method | requests | failed | longest pause | median | total | state kept | detail |\n|---|---:|---:|---:|---:|---:|---|---|\n",
        report.rate
    );
    for r in &report.results {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} ms | {} | {} |\n",
            r.method,
            r.requests,
            r.failed,
            r.longest_pause_ms,
            r.median_ms,
            r.total_ms,
            if r.state_kept { "yes" } else { "no" },
            r.detail
        ));
    }
    out
}
