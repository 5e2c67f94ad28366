//! A fault-injection campaign against a real daemon: rounds of a random change (scale, `up` with
//! a changed spec, restart, migrate, a capsule run), each cut by a SIGKILL of the daemon or of
//! the data plane at a random moment during or after it. Once the platform has settled after
//! each round: every change the CLI confirmed is there (and one it could not confirm is either
//! wholly there or not at all), every process of the application is the one process of exactly
//! one listed instance's cgroup (no duplicate, no orphan, no cgroup of an instance that is
//! gone), and the state database passes its integrity check. Requests run on both published
//! ports all along, each on a new connection; their failures are counted per round and
//! reported (the goal is none, but the test asserts only the invariants).
//!
//! `PARACLOUD_CAMPAIGN_ROUNDS` (default 20) and `PARACLOUD_CAMPAIGN_SEED` (default random,
//! printed first, so that a failing campaign can be replayed) choose the campaign;
//! `scripts/campaign.sh ROUNDS` runs a long one and prints its figures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const APP: &str = "chaos";
const SERVICES: [&str; 2] = ["web", "api"];
/// How long the platform may take to settle after a round before the campaign fails.
const SETTLE: Duration = Duration::from_secs(90);
/// How long leftovers (a cgroup being removed, a process being reaped) may take to go.
const LINGER: Duration = Duration::from_secs(5);
/// Between a settled round and the next change.
const PAUSE: Duration = Duration::from_millis(250);
/// Between two requests of the traffic thread.
const REQUEST_EVERY: Duration = Duration::from_millis(20);

/// The instances' program: answers every GET with its instance name and the VERSION of its
/// environment, over keep-alive connections (as the data plane pools them); ends at once on
/// SIGTERM.
const RESPONDER: &str = r#"
import http.server, os, signal, sys
# Pid 1 of its namespace: SIGTERM does nothing unless handled.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
NAME = os.environ.get("PARACLOUD_INSTANCE", "?")
VERSION = os.environ.get("VERSION", "?")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{NAME} {VERSION}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// What the platform holds for a service: what a change sets and the campaign checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceState {
    replicas: u32,
    version: String,
    revision: u64,
}

type State = BTreeMap<String, ServiceState>;

#[derive(Debug, Clone)]
enum Change {
    Scale {
        service: String,
        replicas: u32,
    },
    /// `up` of the manifest with these versions and replicas (every service).
    Up {
        spec: BTreeMap<String, (String, u32)>,
    },
    Restart {
        service: String,
    },
    Migrate {
        instance: String,
        pid: i64,
    },
    Capsule {
        instance: String,
    },
}

impl Change {
    fn name(&self) -> String {
        match self {
            Change::Scale { service, replicas } => format!("scale {service}={replicas}"),
            Change::Up { spec } => {
                let services: Vec<String> = spec
                    .iter()
                    .map(|(s, (v, n))| format!("{s}={v}x{n}"))
                    .collect();
                format!("up {}", services.join(" "))
            }
            Change::Restart { service } => format!("restart {service}"),
            Change::Migrate { instance, .. } => format!("migrate {instance} --via restart"),
            Change::Capsule { instance } => format!("capsule run checksum on {instance}"),
        }
    }

    fn args(&self, manifest: &Path) -> Vec<String> {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Change::Scale { service, replicas } => {
                strings(&["scale", "-a", APP, &format!("{service}={replicas}")])
            }
            Change::Up { .. } => strings(&["up", "-f", manifest.to_str().unwrap()]),
            Change::Restart { service } => strings(&["restart", "-a", APP, service]),
            Change::Migrate { instance, .. } => {
                strings(&["migrate", "-a", APP, instance, "--via", "restart"])
            }
            Change::Capsule { instance } => strings(&[
                "capsule",
                "run",
                "checksum",
                "-a",
                APP,
                "-l",
                &format!("instance={instance}"),
                "--",
                "/etc/hostname",
            ]),
        }
    }

    /// The state once the change is done.
    fn apply(&self, before: &State) -> State {
        let mut after = before.clone();
        match self {
            Change::Scale { service, replicas } => {
                after.get_mut(service).unwrap().replicas = *replicas;
            }
            Change::Up { spec } => {
                for (service, (version, replicas)) in spec {
                    let s = after.get_mut(service).unwrap();
                    s.replicas = *replicas;
                    if *version != s.version {
                        s.version = version.clone();
                        s.revision += 1;
                    }
                }
            }
            Change::Restart { service } => after.get_mut(service).unwrap().revision += 1,
            Change::Migrate { .. } | Change::Capsule { .. } => {}
        }
        after
    }
}

fn manifest_text(dir: &Path, ports: [u16; 2], spec: &BTreeMap<String, (String, u32)>) -> String {
    let dir = dir.display().to_string();
    let mut text = format!("app = \"{APP}\"\n");
    for (service, port) in SERVICES.iter().zip(ports) {
        let (version, replicas) = &spec[*service];
        text.push_str(&format!(
            r#"
[services.{service}]
image = "host"
paths = [{dir:?}]
command = ["/usr/bin/python3", "{dir}/responder.py", "8000"]
env = {{ VERSION = "{version}" }}
ports = [{{ port = 8000, protocol = "http", publish = {port} }}]
health = {{ http = "/healthz", interval = "1s" }}
replicas = {replicas}
stop_grace_period = "2s"

[services.{service}.capsules]
checksum = "read"
"#
        ));
    }
    text
}

/// Requests on the published ports, one new connection each, counted per round.
struct Traffic {
    round: AtomicUsize,
    stop: AtomicBool,
    /// (ok, failed) per round; round 0 is the set-up.
    counts: Mutex<Vec<(u64, u64)>>,
    failures: Mutex<Vec<Failure>>,
    /// When each data plane was killed, since `start`: just before and just after the signal.
    dataplane_kills: Mutex<Vec<(Duration, Duration)>>,
    start: Instant,
}

/// A failed request: when it was sent (since the campaign's start), how long it took, why.
#[derive(Debug, Clone)]
struct Failure {
    round: usize,
    port: u16,
    sent: Duration,
    took: Duration,
    error: String,
}

impl Failure {
    /// The request was under way when a data plane was killed: its connection was the dead
    /// process's (what the platform does not claim to keep), not a new one.
    fn cut_by(&self, kills: &[(Duration, Duration)]) -> Option<Duration> {
        kills
            .iter()
            .find(|(before, after)| *before <= self.sent + self.took && *after >= self.sent)
            .map(|(before, _)| *before)
    }
}

impl Traffic {
    fn run(self: Arc<Self>, ports: [u16; 2]) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !self.stop.load(Ordering::Relaxed) {
                let port = ports[n % 2];
                n += 1;
                let round = self.round.load(Ordering::Relaxed);
                let sent = self.start.elapsed();
                let outcome = request(port);
                let mut counts = self.counts.lock().unwrap();
                if counts.len() <= round {
                    counts.resize(round + 1, (0, 0));
                }
                match outcome {
                    Ok(()) => counts[round].0 += 1,
                    Err(error) => {
                        counts[round].1 += 1;
                        self.failures.lock().unwrap().push(Failure {
                            round,
                            port,
                            sent,
                            took: self.start.elapsed() - sent,
                            error,
                        });
                    }
                }
                drop(counts);
                std::thread::sleep(REQUEST_EVERY);
            }
        })
    }

    fn of_round(&self, round: usize) -> (u64, u64) {
        self.counts
            .lock()
            .unwrap()
            .get(round)
            .copied()
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 GET on a new connection (the data plane's fast path), closed after the answer.
fn request(port: u16) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read after {} bytes: {e}", response.len()))?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).unwrap_or("");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    if status == "200" && (body.starts_with("web.") || body.starts_with("api.")) {
        Ok(())
    } else {
        Err(format!("answered {:?}", response.trim_end()))
    }
}

/// The services' views (`describe -o json`), or `None` while the daemon does not answer.
fn describe(p: &Platform) -> Option<BTreeMap<String, Value>> {
    let mut views = BTreeMap::new();
    for service in SERVICES {
        let out = p.run(&["describe", "-a", APP, service, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        views.insert(
            service.to_string(),
            serde_json::from_slice(&out.stdout).ok()?,
        );
    }
    Some(views)
}

fn state_of(views: &BTreeMap<String, Value>) -> State {
    views
        .iter()
        .map(|(service, v)| {
            (
                service.clone(),
                ServiceState {
                    replicas: v["replicas"].as_u64().unwrap() as u32,
                    version: v["spec"]["env"]["VERSION"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                    revision: v["revision"].as_u64().unwrap(),
                },
            )
        })
        .collect()
}

/// The listed instances of every service: (name, pid, revision, state).
fn instances(views: &BTreeMap<String, Value>) -> Vec<(String, i64, u64, String)> {
    views
        .values()
        .flat_map(|v| v["instances"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                field(&i, "instance").to_string(),
                i["pid"].as_i64().unwrap_or(-1),
                i["revision"].as_u64().unwrap_or(0),
                field(&i, "state").to_string(),
            )
        })
        .collect()
}

/// Settled: the daemon and the data plane run, and each service has exactly its replicas,
/// all running (ready) at its current revision.
fn settled(p: &Platform, views: &BTreeMap<String, Value>) -> bool {
    p.daemon_pid().is_some_and(alive)
        && p.dataplane_pid().is_some_and(alive)
        && views.values().all(|v| {
            let instances = v["instances"].as_array().cloned().unwrap_or_default();
            instances.len() as u64 == v["replicas"].as_u64().unwrap()
                && instances
                    .iter()
                    .all(|i| i["state"] == "running" && i["revision"] == v["revision"])
        })
}

fn settle(p: &Platform, after: &str) -> (BTreeMap<String, Value>, Duration) {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Some(views) = describe(p) {
            if settled(p, &views) {
                return (views, start.elapsed());
            }
            last = Some(views);
        }
        if start.elapsed() > SETTLE {
            panic!(
                "the platform did not settle within {SETTLE:?} after {after}; last views: {last:#?}\n--- daemon log ---\n{}",
                p.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process of the host, as the campaign sees it.
#[derive(Debug)]
struct Proc {
    pid: i32,
    args: Vec<String>,
    /// Names of its cgroups directly under the test's cgroup parent, in any hierarchy.
    groups: BTreeSet<String>,
}

fn proc_state_and_start(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state (field 3), ..., starttime (field 22).
    Some((fields[0].chars().next()?, fields.get(19)?.parse().ok()?))
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every live (not zombie) process that runs for the test's root: its command line names the
/// root, or it is in a cgroup under the test's cgroup parent.
fn platform_processes(root: &str, parent: &str) -> Vec<Proc> {
    let mut found = Vec::new();
    let prefix = format!("/{parent}/");
    for pid in all_pids() {
        let args = cmdline(pid);
        let groups: BTreeSet<String> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .filter_map(|path| path.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap().to_string())
            .collect();
        if !groups.is_empty() || args.iter().any(|a| a.contains(root)) {
            if proc_state_and_start(pid).is_none_or(|(state, _)| state == 'Z') {
                continue;
            }
            found.push(Proc { pid, args, groups });
        }
    }
    found
}

/// The mounted cgroup hierarchies: the cgroup2 root, or each v1 controller's (and a hybrid
/// host's unified one).
fn hierarchies() -> Vec<PathBuf> {
    let mut all = vec![PathBuf::from("/sys/fs/cgroup")];
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        all.push(entry.path());
    }
    all.retain(|h| h.join("cgroup.procs").is_file());
    all
}

/// The cgroup directories under the test's parent, by name, in every hierarchy.
fn cgroup_dirs(parent: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for h in hierarchies() {
        for entry in std::fs::read_dir(h.join(parent))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().is_dir() {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}

fn instance_id(name: &str) -> String {
    format!("{APP}-{}", name.replace('.', "-"))
}

/// What is wrong with the processes and cgroups, by kind: duplicates, orphans, leftovers (a
/// capsule's empty cgroup).
#[derive(Debug, Default)]
struct Findings {
    duplicates: Vec<String>,
    orphans: Vec<String>,
    leftovers: Vec<String>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.duplicates.is_empty() && self.orphans.is_empty() && self.leftovers.is_empty()
    }
}

/// Checks that every process of the test's root is where the state says: one daemon, one data
/// plane (those of the pid files), and each other one the one process of a listed instance, in
/// that instance's cgroup; and that no cgroup is left for an instance that is not listed.
/// `left_by_killed` are the children a killed daemon had (pid, start time, command).
fn check_processes(
    p: &Platform,
    listed: &[(String, i64, u64, String)],
    left_by_killed: &[(i32, u64, String)],
) -> Findings {
    let root = p.root().display().to_string();
    let parent = p.cgroup_parent();
    let mut f = Findings::default();
    let live: BTreeMap<String, (String, i64)> = listed
        .iter()
        .map(|(name, pid, _, _)| (instance_id(name), (name.clone(), *pid)))
        .collect();
    let mut pids_seen = BTreeMap::new();
    for (name, pid, _, _) in listed {
        if let Some(other) = pids_seen.insert(*pid, name.clone()) {
            f.duplicates.push(format!(
                "{name} and {other} are listed with the same pid {pid}"
            ));
        }
    }
    let daemon = p.daemon_pid();
    let dataplane = p.dataplane_pid();
    let mut daemons = Vec::new();
    let mut dataplanes = Vec::new();
    let mut in_place = BTreeSet::new();
    for proc in platform_processes(&root, &parent) {
        let cmd = proc.args.join(" ");
        let is_daemon = proc.args.get(1).map(String::as_str) == Some("daemon");
        let is_dataplane = proc.args.get(1).map(String::as_str) == Some("__dataplane");
        if proc.groups.is_empty() && is_daemon {
            daemons.push(proc.pid);
            continue;
        }
        if proc.groups.is_empty() && is_dataplane {
            dataplanes.push(proc.pid);
            continue;
        }
        let groups: Vec<&String> = proc.groups.iter().collect();
        match groups[..] {
            [] => f.orphans.push(format!(
                "pid {} ({cmd}) runs outside every instance cgroup",
                proc.pid
            )),
            [id] => match live.get(id) {
                Some((name, pid)) if *pid == proc.pid as i64 => {
                    in_place.insert(name.clone());
                }
                Some((name, pid)) => f.duplicates.push(format!(
                    "pid {} ({cmd}) is in the cgroup of {name}, whose process is {pid}",
                    proc.pid
                )),
                None => f.orphans.push(format!(
                    "pid {} ({cmd}) is in the cgroup {id}, of no listed instance",
                    proc.pid
                )),
            },
            _ => f.orphans.push(format!(
                "pid {} ({cmd}) is in several cgroups: {groups:?}",
                proc.pid
            )),
        }
    }
    for (name, pid, _, _) in listed {
        if !in_place.contains(name) {
            f.orphans.push(format!(
                "{name} is listed with pid {pid}, which is not a live process in its cgroup"
            ));
        }
    }
    if daemons.len() != 1 || daemon.map(|d| daemons[0] != d).unwrap_or(true) {
        f.duplicates.push(format!(
            "daemons for the root: {daemons:?} (daemon.pid says {daemon:?})"
        ));
    }
    if dataplanes.len() != 1 || dataplane.map(|d| dataplanes[0] != d).unwrap_or(true) {
        f.duplicates.push(format!(
            "data planes for the root: {dataplanes:?} (dataplane.pid says {dataplane:?})"
        ));
    }
    for name in cgroup_dirs(&parent) {
        if live.contains_key(&name) {
            continue;
        }
        if name.starts_with("cap") {
            f.leftovers.push(format!("capsule cgroup {name} is left"));
        } else {
            f.orphans
                .push(format!("cgroup {name} is left for an instance not listed"));
        }
    }
    let listed_pids: BTreeSet<i64> = listed.iter().map(|(_, pid, _, _)| *pid).collect();
    for (pid, start, cmd) in left_by_killed {
        let still = proc_state_and_start(*pid).is_some_and(|(s, t)| s != 'Z' && t == *start);
        if still && !listed_pids.contains(&(*pid as i64)) && Some(*pid) != dataplane {
            f.orphans.push(format!(
                "pid {pid} ({cmd}), a child of the killed daemon, still runs"
            ));
        }
    }
    f
}

/// The checker, checked once: a process put by hand into the cgroup of an instance that does
/// not exist is found, as an orphan process and an orphan cgroup.
fn check_the_checker(p: &Platform, listed: &[(String, i64, u64, String)]) {
    let parent = p.cgroup_parent();
    let id = instance_id("web.99");
    let dirs: Vec<PathBuf> = hierarchies()
        .into_iter()
        .map(|h| h.join(&parent))
        .filter(|d| d.is_dir())
        .map(|d| d.join(&id))
        .collect();
    for dir in &dirs {
        std::fs::create_dir(dir).unwrap();
    }
    let mut stray = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    for dir in &dirs {
        std::fs::write(dir.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }
    let found = check_processes(p, listed, &[]);
    let _ = stray.kill();
    let _ = stray.wait();
    for dir in &dirs {
        let deadline = Instant::now() + LINGER;
        while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(
        found
            .orphans
            .iter()
            .any(|o| o.contains(&format!("pid {} ", stray.id())))
            && found
                .orphans
                .iter()
                .any(|o| o.contains(&format!("cgroup {id} is left"))),
        "the checker missed a process in a cgroup of no instance: {found:?}"
    );
}

/// The children of a process, with their start times and commands.
fn children(pid: i32) -> Vec<(i32, u64, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some((_, start)) = proc_state_and_start(child) {
                out.push((child, start, cmdline(child).join(" ")));
            }
        }
    }
    out
}

/// `PRAGMA integrity_check` of the state database, read-only beside the running daemon.
fn integrity(p: &Platform) -> String {
    let db = rusqlite::Connection::open_with_flags(
        p.root().join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("cannot open the state database");
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = db.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.join("; ")
}

/// The capsule runs of the application (`capsule history -o json`).
fn capsule_runs(p: &Platform) -> Vec<Value> {
    let out = p.ok(&[
        "capsule", "history", "-a", APP, "--limit", "1000", "-o", "json",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("capsule history: {e}: {out}"))
}

/// The VERSION in a process's environment.
fn version_of(pid: i64) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix("VERSION=").map(str::to_string))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// With `PARACLOUD_CAMPAIGN_LOGS=DIR`, the daemon's and the data plane's logs are copied there
/// at the end, passed or failed (the state root goes with the test).
struct KeepLogs<'a>(&'a Platform);

impl Drop for KeepLogs<'_> {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("PARACLOUD_CAMPAIGN_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for name in ["daemon.log", "dataplane.log"] {
                let _ = std::fs::copy(self.0.root().join(name), dir.join(name));
            }
        }
    }
}

#[test]
fn a_campaign_of_changes_and_kills_loses_nothing() {
    let rounds: usize = env_or("PARACLOUD_CAMPAIGN_ROUNDS", 20);
    let seed: u64 = env_or("PARACLOUD_CAMPAIGN_SEED", rand::random::<u64>() >> 12);
    eprintln!(
        "campaign: {rounds} rounds, seed {seed} (replay: PARACLOUD_CAMPAIGN_SEED={seed} PARACLOUD_CAMPAIGN_ROUNDS={rounds})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let p = Platform::new();
    let _logs = KeepLogs(&p);
    let dir = p.root().join("campaign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("responder.py"), RESPONDER).unwrap();
    let ports = [p.port(0), p.port(1)];
    let spec: BTreeMap<String, (String, u32)> = SERVICES
        .iter()
        .map(|s| (s.to_string(), ("v0".to_string(), 2)))
        .collect();
    let manifest = p.manifest(APP, &manifest_text(&dir, ports, &spec));
    p.ok(&["up", "-f", manifest.to_str().unwrap()]);
    // The first capsule run builds the capsule's image: not part of any round.
    p.ok(&[
        "capsule",
        "run",
        "checksum",
        "-a",
        APP,
        "-l",
        "instance=web.1",
        "--",
        "/etc/hostname",
    ]);
    let (views, _) = settle(&p, "the set-up");
    let mut state = state_of(&views);
    let mut listed = instances(&views);
    let clean = check_processes(&p, &listed, &[]);
    assert!(clean.is_empty(), "before the campaign: {clean:?}");
    check_the_checker(&p, &listed);

    let traffic = Arc::new(Traffic {
        round: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        counts: Mutex::new(vec![(0, 0)]),
        failures: Mutex::new(Vec::new()),
        dataplane_kills: Mutex::new(Vec::new()),
        start: Instant::now(),
    });
    let load = traffic.clone().run(ports);
    std::thread::sleep(Duration::from_millis(300));

    let mut confirmed = 0usize;
    let mut lost: Vec<String> = Vec::new();
    let mut findings = Findings::default();
    let mut integrity_failures: Vec<String> = Vec::new();
    let mut stale_runs = 0usize;
    let mut known_leftovers = BTreeSet::new();
    let mut kills = [0usize; 2];

    for round in 1..=rounds {
        traffic.round.store(round, Ordering::Relaxed);
        // 1. A change, picked at random.
        let service = SERVICES[rng.random_range(0..SERVICES.len())].to_string();
        let change = match rng.random_range(0..100) {
            0..30 => {
                let now = state[&service].replicas;
                let mut replicas = rng.random_range(1..=3);
                if replicas == now {
                    replicas = replicas % 3 + 1;
                }
                Change::Scale { service, replicas }
            }
            30..50 => {
                // A new version for this service and maybe the other, new replicas for both.
                let version = format!("v{round}");
                let spec = SERVICES
                    .iter()
                    .map(|s| {
                        let v = if *s == service || rng.random_bool(0.5) {
                            version.clone()
                        } else {
                            state[*s].version.clone()
                        };
                        (s.to_string(), (v, rng.random_range(1..=3)))
                    })
                    .collect();
                Change::Up { spec }
            }
            50..65 => Change::Restart { service },
            65..85 => {
                let ofs: Vec<&(String, i64, u64, String)> = listed
                    .iter()
                    .filter(|(name, ..)| name.starts_with(&format!("{service}.")))
                    .collect();
                let (instance, pid, ..) = ofs[rng.random_range(0..ofs.len())];
                Change::Migrate {
                    instance: instance.clone(),
                    pid: *pid,
                }
            }
            _ => {
                let (instance, ..) = &listed[rng.random_range(0..listed.len())];
                Change::Capsule {
                    instance: instance.clone(),
                }
            }
        };
        if let Change::Up { spec } = &change {
            std::fs::write(&manifest, manifest_text(&dir, ports, spec)).unwrap();
        }
        let runs_before = match change {
            Change::Capsule { .. } => capsule_runs(&p)
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        let kill_daemon = rng.random_bool(0.5);
        let delay = Duration::from_millis(rng.random_range(0..=300));

        // 2. The change, and a SIGKILL at a random moment during or after it.
        let cli_start = Instant::now();
        let mut cli = p
            .command()
            .args(change.args(&manifest))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished_before = cli.try_wait().unwrap().is_some();
        let victim = if kill_daemon {
            p.daemon_pid()
        } else {
            p.dataplane_pid()
        }
        .expect("no pid file");
        let left = if kill_daemon {
            children(victim)
        } else {
            Vec::new()
        };
        let killed_at = traffic.start.elapsed();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        );
        if !kill_daemon {
            let after = traffic.start.elapsed();
            traffic
                .dataplane_kills
                .lock()
                .unwrap()
                .push((killed_at, after));
        }
        kills[usize::from(!kill_daemon)] += 1;
        while alive(victim) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = cli.wait_with_output().unwrap();
        let cli_took = cli_start.elapsed();
        let ok = out.status.success();
        confirmed += usize::from(ok);

        // 3. Recovery: any command starts a daemon again; wait for the platform to settle.
        let (views, settle_took) = settle(&p, &format!("round {round} of seed {seed}"));
        let observed = state_of(&views);
        listed = instances(&views);

        // 4a. Every confirmed change is there; an unconfirmed one wholly or not at all.
        let expected = change.apply(&state);
        let mut round_lost = Vec::new();
        if ok && observed != expected {
            round_lost.push(format!(
                "confirmed {} is not there: expected {expected:?}, found {observed:?}",
                change.name()
            ));
        } else if !ok && observed != expected && observed != state {
            round_lost.push(format!(
                "{} (cut short) is neither there nor absent: before {state:?}, after {expected:?}, found {observed:?}",
                change.name()
            ));
        }
        for (name, pid, _, _) in &listed {
            let service = name.split('.').next().unwrap();
            let want = &observed[service].version;
            match version_of(*pid) {
                Some(v) if v == *want => {}
                other => round_lost.push(format!(
                    "{name} (pid {pid}) runs VERSION {other:?}, its service's spec says {want}"
                )),
            }
        }
        match &change {
            Change::Migrate { instance, pid }
                if ok && (listed.iter().any(|(_, p, ..)| p == pid) || alive(*pid as i32)) =>
            {
                round_lost.push(format!(
                    "confirmed migration of {instance}: its process {pid} still runs"
                ));
            }
            Change::Capsule { instance } => {
                let runs = capsule_runs(&p);
                let ours: Vec<&Value> = runs
                    .iter()
                    .filter(|r| r["id"].as_i64().unwrap_or(0) > runs_before)
                    .collect();
                if ok
                    && !ours.iter().any(|r| {
                        r["status"] == "ok"
                            && r["targets"]
                                .as_array()
                                .is_some_and(|t| t.iter().any(|t| t["instance"] == **instance))
                    })
                {
                    round_lost.push(format!(
                        "confirmed capsule run on {instance} is not recorded as ok: {ours:?}"
                    ));
                }
                let stale = ours.iter().filter(|r| r["status"] == "running").count();
                if stale > 0 {
                    stale_runs += stale;
                    eprintln!(
                        "  note: {stale} capsule run(s) still recorded as running after the kill: {ours:?}"
                    );
                }
            }
            _ => {}
        }

        // 4b. No duplicate, no orphan (what is being removed gets a moment to go).
        // A leftover is told once, in the round that left it.
        let linger = Instant::now();
        let round_findings = loop {
            let mut f = check_processes(&p, &listed, &left);
            f.leftovers.retain(|l| !known_leftovers.contains(l));
            if f.is_empty() || linger.elapsed() > LINGER {
                known_leftovers.extend(f.leftovers.iter().cloned());
                break f;
            }
            std::thread::sleep(Duration::from_millis(200));
        };

        // 4d. The database is intact.
        let check = integrity(&p);
        if check != "ok" {
            integrity_failures.push(format!("round {round}: {check}"));
        }

        // 5. The round's line.
        let (req_ok, req_failed) = traffic.of_round(round);
        let last_words = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        eprintln!(
            "round {round}/{rounds}: {} | SIGKILL {} at +{} ms ({}, t={} ms) | {} by {} ms{} | settled in {} ms | requests {req_ok} ok, {req_failed} failed | integrity {check}{}",
            change.name(),
            if kill_daemon { "daemon" } else { "data plane" },
            delay.as_millis(),
            if finished_before {
                "after it"
            } else {
                "during it"
            },
            killed_at.as_millis(),
            if ok { "confirmed" } else { "cut short" },
            cli_took.as_millis(),
            if ok { String::new() } else { format!(" ({last_words})") },
            settle_took.as_millis(),
            if round_lost.is_empty() && round_findings.is_empty() {
                String::new()
            } else {
                format!(" | FOUND {round_lost:?} {round_findings:?}")
            }
        );
        if !round_lost.is_empty() || !round_findings.is_empty() {
            eprintln!("--- daemon log (round {round}) ---\n{}", p.daemon_log());
        }
        lost.extend(
            round_lost
                .into_iter()
                .map(|l| format!("round {round}: {l}")),
        );
        for (all, these) in [
            (&mut findings.duplicates, round_findings.duplicates),
            (&mut findings.orphans, round_findings.orphans),
            (&mut findings.leftovers, round_findings.leftovers),
        ] {
            all.extend(these.into_iter().map(|l| format!("round {round}: {l}")));
        }
        state = observed;
        // The settled platform serves a moment before the next change.
        std::thread::sleep(PAUSE);
    }

    traffic.round.store(rounds + 1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    traffic.stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let counts = traffic.counts.lock().unwrap().clone();
    let (req_ok, req_failed) = counts.iter().fold((0, 0), |(a, b), (o, f)| (a + o, b + f));
    let failures = traffic.failures.lock().unwrap().clone();
    let dataplane_kills = traffic.dataplane_kills.lock().unwrap().clone();
    let mut in_flight = 0;
    for f in &failures {
        let cut = f.cut_by(&dataplane_kills);
        in_flight += usize::from(cut.is_some());
        eprintln!(
            "failed request: round {}, port {}, sent at t={} ms, after {} ms: {}{}",
            f.round,
            f.port,
            f.sent.as_millis(),
            f.took.as_millis(),
            f.error,
            match cut {
                Some(k) => format!(
                    " (under way when the data plane was killed at t={} ms)",
                    k.as_millis()
                ),
                None => String::new(),
            }
        );
    }
    eprintln!(
        "campaign summary: seed {seed}, {rounds} rounds ({} daemon kills, {} data-plane kills), {confirmed} changes confirmed, {} cut short, {} lost, {} duplicates, {} orphans, {} leftover capsule cgroups, {stale_runs} capsule runs left running, requests {req_ok} ok / {req_failed} failed ({in_flight} under way at a data-plane kill, {} on new connections), integrity ok in {}/{rounds} rounds, {:.1} s",
        kills[0],
        kills[1],
        rounds - confirmed,
        lost.len(),
        findings.duplicates.len(),
        findings.orphans.len(),
        findings.leftovers.len(),
        req_failed as usize - in_flight,
        rounds - integrity_failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(req_ok > 0, "the traffic ran");
    assert!(
        lost.is_empty()
            && findings.duplicates.is_empty()
            && findings.orphans.is_empty()
            && findings.leftovers.is_empty()
            && stale_runs == 0
            && integrity_failures.is_empty(),
        "seed {seed}:\nlost: {lost:#?}\nduplicates: {:#?}\norphans: {:#?}\nleftovers: {:#?}\ncapsule runs left running: {stale_runs}\nintegrity: {integrity_failures:#?}",
        findings.duplicates,
        findings.orphans,
        findings.leftovers
    );
}
