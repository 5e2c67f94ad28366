//! The catalogue's PostgreSQL under pgbench, in one run on one machine:
//!
//! - the data plane's cost: pgbench through the write address (`db:5432`) and the read address
//!   (`db-read:5432`) against pgbench straight at the primary's own instance address, the same
//!   server, rounds alternated so that both see the same machine;
//! - read throughput through the read address with 0, 1 and 2 replicas beside the primary;
//! - the time `paracloud scale db-read=N` takes to add a ready replica (a base backup of the
//!   primary while it serves, then the replica's recovery), against the database's size;
//! - the primary killed with SIGKILL under a write load, after a stable run: the time the write
//!   address takes no write (the primary is restarted on its volume), and the acknowledged
//!   writes lost;
//! - the same with the primary's control file destroyed first, so that it cannot come back on
//!   its data: the platform fails it over to a copy of its replica (a base backup of the
//!   database at its largest size), and the same two figures;
//! - the primary moved under a write load by `paracloud migrate` (a switchover: its successor
//!   copies it and follows it, and takes over once it stopped) side by side with
//!   `paracloud restart` (stopped, then started on its volume), rounds alternated: the longest
//!   time without an acknowledged write, and the acknowledged writes lost.
//!
//! pgbench runs on the same machine as the servers, so every figure shares its cores with it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::platform::Platform;
use crate::stats::Summary;

const PASSWORD: &str = "bench-password";

#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// Seconds of each pgbench run.
    pub seconds: u64,
    /// Rounds of each side-by-side comparison.
    pub rounds: usize,
    /// pgbench's clients (connections) in each run.
    pub clients: u32,
    /// pgbench scale factors the replica's copy is timed at (each 100,000 accounts, ~15 MB).
    pub sizes: Vec<u32>,
    pub subnet: Ipv4Net,
    /// The loopback port HAProxy listens on.
    pub haproxy_port: u16,
}

#[derive(Debug, Serialize)]
pub struct PgbenchRun {
    pub tps: f64,
    pub latency_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Compared {
    pub workload: String,
    /// Through the catalogue's address.
    pub through: Vec<PgbenchRun>,
    /// Straight at the primary's instance address.
    pub direct: Vec<PgbenchRun>,
    /// Through HAProxy (`mode tcp`, one thread, as the data plane has) to the same address.
    pub haproxy: Vec<PgbenchRun>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaCopy {
    pub scale: u32,
    pub bytes: u64,
    /// From `paracloud scale` to its return: the replica ready.
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Failover {
    /// Writes acknowledged before the kill.
    pub committed: u64,
    /// Of those, missing afterwards.
    pub lost: u64,
    /// From the last acknowledged write before the kill to the first one after.
    pub unavailable_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct CatalogReport {
    pub seconds: u64,
    pub clients: u32,
    pub cores: usize,
    pub compared: Vec<Compared>,
    /// Read-only throughput through the read address, by replicas.
    pub reads_by_replicas: Vec<(u32, PgbenchRun)>,
    pub copies: Vec<ReplicaCopy>,
    pub failovers: Vec<Failover>,
    /// The primary's data destroyed, then killed: failed over to a copy of its replica.
    pub promotions: Vec<Failover>,
    /// The database's size when the promotions copied it, in bytes.
    pub promoted_bytes: u64,
    /// `paracloud migrate` of the primary under writes: a switchover.
    pub switchovers: Vec<Failover>,
    /// `paracloud restart` of the primary under writes, alternated with the switchovers.
    pub restarts: Vec<Failover>,
}

fn manifest(replicas: u32) -> String {
    format!(
        "app = \"pgbench\"\n\n[services.db]\ncatalog = \"postgres\"\nreplicas = {replicas}\nstorage = \"4G\"\nenv = {{ POSTGRES_PASSWORD = \"{PASSWORD}\" }}\nresources = {{ memory = \"1G\" }}\n"
    )
}

fn pg(program: &str, host: &str) -> Command {
    let mut command = Command::new(program);
    command
        .args(["-h", host, "-U", "postgres"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5");
    command
}

fn sql(host: &str, query: &str) -> Result<String> {
    let out = pg("psql", host)
        .args([
            "-X",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            query,
            "postgres",
        ])
        .output()
        .context("psql (apt-get install postgresql)")?;
    ensure!(
        out.status.success(),
        "{query} at {host}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs pgbench with `args` against `host`; its throughput and mean latency.
fn pgbench(host: &str, args: &[&str]) -> Result<PgbenchRun> {
    let out = pg("pgbench", host)
        .args(args)
        .arg("postgres")
        .output()
        .context("pgbench (apt-get install postgresql)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pgbench {args:?} at {host} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let figure = |prefix: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no `{prefix}` in pgbench's output: {text}"))
    };
    Ok(PgbenchRun {
        tps: figure("tps = ")?,
        latency_ms: figure("latency average = ")?,
    })
}

fn address(platform: &Platform, service: &str) -> Result<String> {
    let out = platform.cli(&["describe", "-a", "pgbench", service, "-o", "json"], None)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["address"]
        .as_str()
        .context("describe has an address")?
        .to_owned())
}

/// The first instance of `service` in `ps`.
fn instance_of(platform: &Platform, service: &str) -> Result<crate::platform::PsEntry> {
    platform
        .ps()?
        .into_iter()
        .find(|i| i.instance.rsplit_once('.').map(|(s, _)| s) == Some(service))
        .with_context(|| format!("no instance of {service}"))
}

fn instance_address(platform: &Platform, service: &str) -> Result<String> {
    let instance = instance_of(platform, service)?;
    let address = instance.address.context("an instance address")?;
    Ok(address.split('/').next().unwrap_or("").to_owned())
}

/// `pgbench -i -s SCALE`: the tables made again at that size.
fn pgbench_init(host: &str, scale: u32) -> Result<()> {
    let out = pg("pgbench", host)
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()
        .context("pgbench (apt-get install postgresql)")?;
    ensure!(
        out.status.success(),
        "pgbench -i -s {scale} at {host} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn up(platform: &mut Platform, scratch: &Path, replicas: u32) -> Result<()> {
    let dir = scratch.join("app");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("paracloud.toml");
    std::fs::write(&path, manifest(replicas))?;
    platform.cli(&["up", "--timeout", "600s", "-f"], Some(&path))?;
    platform.up = true;
    Ok(())
}

pub fn run(opts: &CatalogOptions, scratch: &Path) -> Result<CatalogReport> {
    let exe = std::env::current_exe()?;
    let paracloud = exe.with_file_name("paracloud");
    let mut platform = Platform::start(
        &paracloud,
        &scratch.join("root"),
        opts.subnet,
        "catalog",
        "pgbench",
    )?;
    up(&mut platform, scratch, 0)?;
    let write = address(&platform, "db")?;
    let read = address(&platform, "db-read")?;
    let primary = instance_address(&platform, "db")?;
    let clients = opts.clients.to_string();
    let seconds = opts.seconds.to_string();
    let base_scale = opts.sizes.first().copied().unwrap_or(1);
    eprintln!("catalog: pgbench -i -s {base_scale} through {write}");
    pgbench_init(&write, base_scale)?;

    let haproxy = Haproxy::start(scratch, opts.haproxy_port, &primary)?;
    let haproxy_port = opts.haproxy_port.to_string();
    let mut compared = Vec::new();
    for (workload, extra) in [
        ("TPC-B-like read-write (pgbench default)", None),
        ("select-only (pgbench -S)", Some("-S")),
    ] {
        let mut row = Compared {
            workload: workload.to_owned(),
            through: Vec::new(),
            direct: Vec::new(),
            haproxy: Vec::new(),
        };
        for round in 0..opts.rounds {
            let mut args = vec!["-c", &clients, "-j", "2", "-T", &seconds, "-n"];
            args.extend(extra);
            let mut via_haproxy = args.clone();
            via_haproxy.extend(["-p", &haproxy_port]);
            // Each round starts with another side.
            let mut sides = [
                ("through", write.as_str(), &args),
                ("direct", primary.as_str(), &args),
                ("haproxy", "127.0.0.1", &via_haproxy),
            ];
            sides.rotate_left(round % 3);
            for (side, host, args) in sides {
                let figures = pgbench(host, args)?;
                eprintln!(
                    "catalog: {workload} {side} round {round}: {:.0} tps",
                    figures.tps
                );
                match side {
                    "through" => row.through.push(figures),
                    "direct" => row.direct.push(figures),
                    _ => row.haproxy.push(figures),
                }
            }
        }
        compared.push(row);
    }
    drop(haproxy);

    let mut reads_by_replicas = Vec::new();
    for replicas in [0u32, 1, 2] {
        platform.cli(
            &["scale", "-a", "pgbench", &format!("db-read={replicas}")],
            None,
        )?;
        // A new replica replays what it copied before it serves.
        std::thread::sleep(Duration::from_secs(1));
        let figures = pgbench(
            &read,
            &["-S", "-c", &clients, "-j", "2", "-T", &seconds, "-n"],
        )?;
        eprintln!(
            "catalog: select-only through the read address, {replicas} replicas: {:.0} tps",
            figures.tps
        );
        reads_by_replicas.push((replicas, figures));
    }

    let mut copies = Vec::new();
    for &scale in &opts.sizes {
        platform.cli(&["scale", "-a", "pgbench", "db-read=0"], None)?;
        pgbench_init(&write, scale)?;
        let bytes: u64 = sql(&write, "SELECT pg_database_size('postgres')")?.parse()?;
        let start = Instant::now();
        platform.cli(&["scale", "-a", "pgbench", "db-read=1"], None)?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        eprintln!("catalog: a replica of {bytes} bytes ready in {ms:.0} ms");
        copies.push(ReplicaCopy { scale, bytes, ms });
    }

    let mut failovers = Vec::new();
    sql(
        &write,
        "CREATE TABLE IF NOT EXISTS acked (n bigint PRIMARY KEY)",
    )?;
    for round in 0..opts.rounds {
        if round > 0 {
            // A run of 10 s resets the restart backoff: each round is a crash after a stable
            // run, as a first crash is (crashes in a row back off as any service's restarts).
            std::thread::sleep(Duration::from_secs(11));
        }
        let failover = kill_primary_under_writes(&platform, &write, round as u64, None)?;
        eprintln!(
            "catalog: primary killed: write address unavailable {:.0} ms, {} of {} acknowledged writes lost",
            failover.unavailable_ms, failover.lost, failover.committed
        );
        failovers.push(failover);
    }

    // A planned move of the primary: a switchover, against a restart on its volume.
    let mut switchovers = Vec::new();
    let mut restarts = Vec::new();
    for round in 0..opts.rounds {
        let round_base = (2 * opts.rounds + 2 * round) as u64;
        let mut sides = ["switchover", "restart"];
        sides.rotate_left(round % 2);
        for (offset, side) in sides.into_iter().enumerate() {
            wait_for_replica(&platform)?;
            // The primary's instance as it is now: each move gives it a new number.
            let primary = instance_of(&platform, "db")?.instance;
            let args = match side {
                "switchover" => ["migrate", "-a", "pgbench", primary.as_str()],
                _ => ["restart", "-a", "pgbench", "db"],
            };
            let moved = disrupt_under_writes(&platform, &write, round_base + offset as u64, &args)?;
            eprintln!(
                "catalog: primary moved by {side}: no write acknowledged for {:.0} ms, {} of {} acknowledged writes lost",
                moved.unavailable_ms, moved.lost, moved.committed
            );
            if side == "switchover" {
                switchovers.push(moved);
            } else {
                restarts.push(moved);
            }
        }
    }

    // The primary's data destroyed, then killed: after its failed restarts, the platform copies
    // the replica into its volume and starts it from there; the replica is then renewed.
    let volume = scratch.join("root/volumes/pgbench/db-data");
    let promoted_bytes: u64 = sql(&write, "SELECT pg_database_size('postgres')")?.parse()?;
    let mut promotions = Vec::new();
    for round in 0..opts.rounds {
        std::thread::sleep(Duration::from_secs(11));
        wait_for_replica(&platform)?;
        let round = (opts.rounds + round) as u64;
        let failover = kill_primary_under_writes(&platform, &write, round, Some(&volume))?;
        eprintln!(
            "catalog: primary's data destroyed and killed: failed over, write address unavailable {:.0} ms, {} of {} acknowledged writes lost",
            failover.unavailable_ms, failover.lost, failover.committed
        );
        promotions.push(failover);
    }

    platform.cli(&["down", "-a", "pgbench", "--volumes"], None)?;
    platform.up = false;
    Ok(CatalogReport {
        seconds: opts.seconds,
        clients: opts.clients,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        compared,
        reads_by_replicas,
        copies,
        failovers,
        promotions,
        promoted_bytes,
        switchovers,
        restarts,
    })
}

/// One writer inserting numbered rows through the write address, one at a time, while the CLI
/// command `args` runs (started a second in); the writer reconnects whenever its session ends.
/// Unavailable: the longest time between two acknowledged writes from the command's start to the
/// first write acknowledged after it returned. Lost: acknowledged rows missing afterwards.
fn disrupt_under_writes(
    platform: &Platform,
    write: &str,
    round: u64,
    args: &[&str],
) -> Result<Failover> {
    let base = round * 10_000_000;
    let started = std::sync::Mutex::new(None::<Instant>);
    let returned = std::sync::Mutex::new(None::<Instant>);
    let (acked, next, longest) = std::thread::scope(|scope| -> Result<_> {
        let command = scope.spawn(|| -> Result<()> {
            std::thread::sleep(Duration::from_secs(1));
            *started.lock().unwrap() = Some(Instant::now());
            let out = platform.cli(args, None);
            *returned.lock().unwrap() = Some(Instant::now());
            let out = out?;
            ensure!(
                out.status.success(),
                "paracloud {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        });
        let mut acked: Vec<u64> = Vec::new();
        let mut next = base;
        let mut last_ack: Option<Instant> = None;
        let mut longest = Duration::ZERO;
        let begun = Instant::now();
        'sessions: loop {
            ensure!(
                begun.elapsed() < Duration::from_secs(300),
                "paracloud {} did not end with writes taken within 300 s",
                args.join(" ")
            );
            let mut session = RowSession::open(write)?;
            loop {
                let done = *returned.lock().unwrap();
                next += 1;
                let Some(acknowledged) = session.insert(next) else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue 'sessions;
                };
                if acknowledged {
                    let now = Instant::now();
                    acked.push(next);
                    if let (Some(last), Some(_)) = (last_ack, *started.lock().unwrap()) {
                        longest = longest.max(now.duration_since(last));
                    }
                    last_ack = Some(now);
                    // A write sent after the command returned, and acknowledged: the end.
                    if done.is_some() {
                        break 'sessions;
                    }
                }
            }
        }
        command
            .join()
            .map_err(|_| anyhow::anyhow!("the command's thread panicked"))??;
        Ok((acked, next, longest))
    })?;
    counted(write, &acked, (base, next), longest)
}

/// Waits until the read service has a ready replica (after a failover, its renewed one).
fn wait_for_replica(platform: &Platform) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = platform.ps()?.into_iter().any(|i| {
            i.instance.rsplit_once('.').map(|(s, _)| s) == Some("db-read") && i.state == "running"
        });
        if ready {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no replica ready within 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One writer inserting numbered rows through the write address, each acknowledged one noted;
/// the primary's process tree killed with SIGKILL a second in (with `destroy`, the primary's
/// data volume, its control file emptied first); the writer reconnects until a write succeeds
/// again. Lost: acknowledged rows missing afterwards.
fn kill_primary_under_writes(
    platform: &Platform,
    write: &str,
    round: u64,
    destroy: Option<&Path>,
) -> Result<Failover> {
    let base = round * 10_000_000;
    let mut acked: Vec<u64> = Vec::new();
    let mut next = base;
    let mut killed_at: Option<Instant> = None;
    let mut last_ack_before_kill: Option<Instant> = None;
    let mut back_at: Option<Instant> = None;
    let started = Instant::now();
    'sessions: while back_at.is_none() {
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the write address did not take writes again within 120 s"
        );
        let mut session = RowSession::open(write)?;
        loop {
            if killed_at.is_none() && started.elapsed() > Duration::from_secs(1) {
                let pid = instance_of(platform, "db")?
                    .pid
                    .context("the primary's pid")?;
                last_ack_before_kill = Some(Instant::now());
                if let Some(volume) = destroy {
                    // The data directory in use: the volume's `current` names it after a
                    // switchover.
                    let data = std::fs::read_to_string(volume.join("current"))
                        .map_or_else(|_| "data".to_owned(), |c| c.trim().to_owned());
                    std::fs::write(volume.join(data).join("global/pg_control"), b"")?;
                }
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                // The signal is delivered as the process next runs, and its backends end after
                // it: a write sent meanwhile may still be committed by the old server. Only
                // writes sent once it is gone (or a zombie) count as the new server's.
                while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|s| !s.trim_start().starts_with('Z'))
                }) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                killed_at = Some(Instant::now());
            }
            let sent_after_death = killed_at.is_some();
            next += 1;
            let Some(acknowledged) = session.insert(next) else {
                std::thread::sleep(Duration::from_millis(10));
                continue 'sessions;
            };
            if acknowledged {
                acked.push(next);
                if !sent_after_death {
                    last_ack_before_kill = Some(Instant::now());
                } else {
                    back_at = Some(Instant::now());
                    break 'sessions;
                }
            }
        }
    }
    let (Some(before), Some(after)) = (last_ack_before_kill, back_at) else {
        bail!("the failover round did not complete");
    };
    counted(write, &acked, (base, next), after.duration_since(before))
}

/// A round's figures: the rows `acked` (numbered within `base..=next`) that the write address
/// still holds, and `unavailable`.
fn counted(
    write: &str,
    acked: &[u64],
    (base, next): (u64, u64),
    unavailable: Duration,
) -> Result<Failover> {
    let present: u64 = sql(
        write,
        &format!("SELECT count(*) FROM acked WHERE n > {base} AND n <= {next}"),
    )?
    .parse()?;
    let committed = acked.len() as u64;
    Ok(Failover {
        committed,
        lost: committed.saturating_sub(present),
        unavailable_ms: unavailable.as_secs_f64() * 1000.0,
    })
}

/// One psql session through the write address that inserts numbered rows into `acked`, one at
/// a time; ended on drop.
struct RowSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl RowSession {
    fn open(write: &str) -> Result<Self> {
        let mut child = pg("psql", write)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Inserts row `n`: whether the server acknowledged it, or `None` once the session is gone.
    fn insert(&mut self, n: u64) -> Option<bool> {
        writeln!(self.stdin, "INSERT INTO acked VALUES ({n});\n\\echo done").ok()?;
        let mut acknowledged = false;
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line.trim() == "INSERT 0 1" => acknowledged = true,
                Ok(_) if line.trim() == "done" => return Some(acknowledged),
                Ok(_) => {}
            }
        }
    }
}

impl Drop for RowSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in `mode tcp` with one thread, from a listener on the loopback to `backend:5432`;
/// ended on drop.
struct Haproxy(std::process::Child);

impl Haproxy {
    fn start(scratch: &Path, port: u16, backend: &str) -> Result<Self> {
        let conf = scratch.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n    nbthread 1\n    maxconn 4096\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\nlisten postgres\n    bind 127.0.0.1:{port}\n    server primary {backend}:5432\n"
            ),
        )?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("haproxy (apt-get install haproxy)")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "haproxy does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self(child))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median_tps(runs: &[PgbenchRun]) -> Option<f64> {
    Summary::of(&runs.iter().map(|r| r.tps).collect::<Vec<_>>()).map(|s| s.median_ms)
}

pub fn markdown(report: &CatalogReport) -> String {
    let mut out = format!(
        "## The catalogue's PostgreSQL under pgbench ({} clients, {} s runs, {} cores shared with pgbench; medians)\n\n| workload | straight at the server, tps | through the write address (Paracloud's data plane), tps | through HAProxy, tps | Paracloud ÷ straight | HAProxy ÷ straight |\n|---|---|---|---|---|---|\n",
        report.clients, report.seconds, report.cores
    );
    for row in &report.compared {
        if let (Some(t), Some(d), Some(h)) = (
            median_tps(&row.through),
            median_tps(&row.direct),
            median_tps(&row.haproxy),
        ) {
            out.push_str(&format!(
                "| {} | {d:.0} | {t:.0} | {h:.0} | {:.2} | {:.2} |\n",
                row.workload,
                t / d,
                h / d
            ));
        }
    }
    out.push_str("\n| replicas | select-only through the read address, tps | mean latency ms |\n|---|---|---|\n");
    for (replicas, run) in &report.reads_by_replicas {
        out.push_str(&format!(
            "| {replicas} | {:.0} | {:.2} |\n",
            run.tps, run.latency_ms
        ));
    }
    out.push_str("\n| database size | a new replica ready, ms |\n|---|---|\n");
    for copy in &report.copies {
        out.push_str(&format!(
            "| {:.0} MB (pgbench -s {}) | {:.0} |\n",
            copy.bytes as f64 / 1e6,
            copy.scale,
            copy.ms
        ));
    }
    failover_table(
        &mut out,
        "primary killed (SIGKILL) under writes",
        &report.failovers,
    );
    let destroyed = format!(
        "primary's data destroyed, then killed: failed over to a copy of its replica ({:.0} MB)",
        report.promoted_bytes as f64 / 1e6
    );
    failover_table(&mut out, &destroyed, &report.promotions);
    out.push_str("\n| the primary moved under writes | longest time without an acknowledged write, ms | acknowledged writes | lost |\n|---|---|---|---|\n");
    for (i, (switchover, restart)) in report.switchovers.iter().zip(&report.restarts).enumerate() {
        for (how, f) in [
            ("`paracloud migrate` (switchover)", switchover),
            (
                "`paracloud restart` (stop, then start on its volume)",
                restart,
            ),
        ] {
            out.push_str(&format!(
                "| round {}: {how} | {:.0} | {} | {} |\n",
                i + 1,
                f.unavailable_ms,
                f.committed,
                f.lost
            ));
        }
    }
    out
}

/// A table of failover rounds: the time without writes and the acknowledged writes lost.
fn failover_table(out: &mut String, what: &str, rounds: &[Failover]) {
    out.push_str(&format!(
        "\n| {what} | write address unavailable, ms | acknowledged writes | lost |\n|---|---|---|---|\n"
    ));
    for (i, f) in rounds.iter().enumerate() {
        out.push_str(&format!(
            "| round {} | {:.0} | {} | {} |\n",
            i + 1,
            f.unavailable_ms,
            f.committed,
            f.lost
        ));
    }
}
