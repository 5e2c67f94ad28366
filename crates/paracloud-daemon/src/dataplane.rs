//! Supervision of the data-plane process: started once, started again at once when it dies,
//! re-found after a daemon restart (by its pid file), and told about new routes by a config file
//! and SIGHUP.
//!
//! # Listening sockets outlive the process
//!
//! The supervisor holds a duplicate of every listening socket of the data plane (taken out of it
//! with pidfd_getfd, recognised by SO_ACCEPTCONN and matched to the configuration by its bound
//! address), collected shortly after each configuration it pushes and after it starts or adopts a
//! data plane. While it holds them the sockets stay open when the data plane dies: the kernel
//! keeps completing handshakes and queueing connections on them, and the next data plane, which
//! inherits them as fds 3, 4, ... with `LISTEN_FDS` (systemd's socket-activation convention),
//! accepts those connections. Only the connections the dead process had accepted are lost.
//!
//! A duplicate of a listener that leaves the configuration is dropped before the data plane is
//! told: otherwise the kernel would go on completing handshakes on a socket nobody accepts from,
//! and the address could not be bound again. The duplicates are close-on-exec and are mapped into
//! the data plane's fd table only in its child after fork, so no instance spawned meanwhile
//! inherits them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
use nix::unistd::Pid;
use paracloud_dataplane::{load_config, write_config, Config};
use paracloud_runtime::{adopt_process, handover, wait_process, Process};
use tokio::sync::Notify;

/// The hidden command of the paracloud binary that runs the data plane.
pub const DATAPLANE_COMMAND: &str = "__dataplane";

/// A data plane that dies sooner than this after its start is started again by the next
/// reconcile turn (within a second) rather than at once, so that one that cannot start does not
/// spin.
const SHORTEST_RUN: Duration = Duration::from_secs(1);

/// When, after a push or a start, the supervisor looks for the data plane's new listening
/// sockets (it binds them once it has read the configuration).
const COLLECT_AFTER: [u64; 10] = [5, 10, 20, 50, 100, 200, 500, 1000, 1000, 2000];

pub struct DataplaneSupervisor {
    exe: PathBuf,
    config_path: PathBuf,
    /// The data plane's stats socket (GET /stats, GET /metrics).
    pub stats_path: PathBuf,
    pid_path: PathBuf,
    log_path: PathBuf,
    state: Mutex<State>,
    /// Rung when the data plane may have listening sockets that are not held yet.
    collect: Notify,
    /// Rung when another data-plane process is known (started or adopted).
    started: Notify,
}

#[derive(Default)]
struct State {
    /// The running data plane (pinned by its pidfd), and when this daemon started it.
    process: Option<(Arc<Process>, Option<Instant>)>,
    /// The configuration it was last told.
    pushed: Option<Config>,
    /// Bind addresses of the configuration last written.
    binds: BTreeSet<SocketAddr>,
    /// Duplicates of the data plane's listening sockets, by bound address (a subset of `binds`).
    held: BTreeMap<SocketAddr, OwnedFd>,
}

/// State letter and start time (clock ticks) of a process, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl DataplaneSupervisor {
    pub fn new(root: &Path, exe: &Path) -> Self {
        let config_path = root.join("dataplane.json");
        let process = read_pid_file(&root.join("dataplane.pid"))
            .and_then(|(pid, start)| adopt_process(pid, start).ok().flatten())
            .map(|p| (Arc::new(p), None));
        let binds = load_config(&config_path)
            .map(|c| c.listeners.iter().map(|l| l.bind).collect())
            .unwrap_or_default();
        let state = State {
            process,
            binds,
            ..State::default()
        };
        Self {
            exe: exe.to_path_buf(),
            config_path,
            stats_path: root.join("dataplane-stats.sock"),
            pid_path: root.join("dataplane.pid"),
            log_path: root.join("dataplane.log"),
            state: Mutex::new(state),
            collect: Notify::new(),
            started: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the data plane unless the one we know of still runs (reaping it if it died); a new
    /// one inherits the listening sockets held.
    pub fn ensure_running(&self) {
        let mut state = self.lock();
        if let Some((process, _)) = &state.process {
            let pid = process.pid;
            match proc_stat(pid) {
                Some((s, t)) if t == process.start_time && s != 'Z' => return,
                _ => {}
            }
            if process.is_child {
                // Dead and not yet reaped (the waiter may have been first: then this is a no-op).
                let _ = waitid(
                    Id::PIDFd(process.pidfd.as_fd()),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
                );
            }
            tracing::warn!("the data plane (pid {pid}) is gone: starting a new one");
            state.process = None;
        }
        let held: Vec<BorrowedFd<'_>> = state.held.values().map(|fd| fd.as_fd()).collect();
        match self.spawn(&held) {
            Ok(process) => {
                state.process = Some((Arc::new(process), Some(Instant::now())));
                state.pushed = None;
                self.started.notify_one();
                self.collect.notify_one();
            }
            Err(e) => tracing::error!("cannot start the data plane: {e}"),
        }
    }

    fn spawn(&self, listeners: &[BorrowedFd<'_>]) -> std::io::Result<Process> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log_path)?;
        if !self.config_path.exists() {
            write_config(&self.config_path, &Config::default())?;
        }
        let mut command = Command::new(&self.exe);
        command
            .arg(DATAPLANE_COMMAND)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--stats")
            .arg(&self.stats_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the daemon's group does not reach it.
            .process_group(0);
        handover::pass_listen_fds(&mut command, listeners)?;
        let child = command.spawn()?;
        let pid = child.id() as i32;
        let start = proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        let process = match adopt_process(pid, start) {
            Ok(Some(process)) => process,
            Ok(None) => {
                // It died at once; reap it (our child, so the pid is still its own).
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                return Err(std::io::Error::other(format!(
                    "it (pid {pid}) exited at once; see {}",
                    self.log_path.display()
                )));
            }
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.pid_path)?;
        std::io::Write::write_all(&mut file, format!("{pid} {start}\n").as_bytes())?;
        tracing::info!(
            "data plane started, pid {pid}, with {} inherited listening sockets",
            listeners.len()
        );
        Ok(process)
    }

    /// Reads the current configuration with `current` and, when it differs from the last one
    /// pushed, writes it and signals the data plane.
    ///
    /// `current` runs under the supervisor's lock, so pushes from several tasks reach the data
    /// plane in the order their configurations were read: a configuration read before a change
    /// (a reconcile turn's) can never land after one read after it (a migration's switch), which
    /// would put a stopped instance back into the routes until the next change.
    pub fn push(&self, current: impl FnOnce() -> Option<Config>) {
        let mut state = self.lock();
        let Some(config) = current() else { return };
        let config = &config;
        if state.pushed.as_ref() == Some(config) {
            return;
        }
        let binds: BTreeSet<SocketAddr> = config.listeners.iter().map(|l| l.bind).collect();
        // Before the data plane hears of it: a listener leaving the configuration must close.
        state.held.retain(|addr, _| {
            let keep = binds.contains(addr);
            if !keep {
                tracing::info!("listener {addr} leaves the configuration: its duplicate is closed");
            }
            keep
        });
        state.binds = binds;
        if let Err(e) = write_config(&self.config_path, config) {
            tracing::error!("cannot write the data-plane configuration: {e}");
            return;
        }
        if let Some((process, _)) = &state.process {
            // A data plane that has not yet installed its SIGHUP handler would die of the signal;
            // it reads the file we just wrote when it starts, and the next turn signals it again.
            if !catches_sighup(process.pid) {
                return;
            }
            if let Err(e) = kill(Pid::from_raw(process.pid), Signal::SIGHUP) {
                tracing::warn!("cannot signal the data plane: {e}");
                return;
            }
        }
        state.pushed = Some(config.clone());
        self.collect.notify_one();
    }

    /// Takes duplicates of the data plane's listening sockets of the configuration that are not
    /// held yet; true when every configured listener is held.
    fn collect_listeners(&self) -> bool {
        let mut state = self.lock();
        let complete = |s: &State| s.binds.iter().all(|b| s.held.contains_key(b));
        if complete(&state) {
            return true;
        }
        let Some((process, _)) = state.process.clone() else {
            return false;
        };
        match handover::listening_sockets(&process) {
            Ok(found) => {
                let mut taken = Vec::new();
                for (addr, fd) in found {
                    if state.binds.contains(&addr) && !state.held.contains_key(&addr) {
                        state.held.insert(addr, fd);
                        taken.push(addr.to_string());
                    }
                }
                if !taken.is_empty() {
                    tracing::info!(
                        "holding the listening sockets {} of the data plane (pid {}): {} of {} held",
                        taken.join(", "),
                        process.pid,
                        state.held.len(),
                        state.binds.len()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "cannot take the data plane's (pid {}) listening sockets: {e}",
                process.pid
            ),
        }
        complete(&state)
    }

    /// Collects listening sockets after each push or start, a few times until all are held.
    pub async fn collect_loop(self: Arc<Self>) {
        loop {
            self.collect.notified().await;
            for ms in COLLECT_AFTER {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if self.collect_listeners() {
                    break;
                }
            }
        }
    }

    /// Waits on the data plane's pidfd and starts a new one as soon as it ends (unless it ran for
    /// less than [`SHORTEST_RUN`]: then the next reconcile turn does).
    pub async fn watch_loop(self: Arc<Self>) {
        loop {
            let current = self.lock().process.clone();
            let Some((process, started)) = current else {
                self.started.notified().await;
                continue;
            };
            let how = match wait_process(&process).await {
                Ok((Some(code), _)) => format!("exited with code {code}"),
                Ok((None, Some(signal))) => match Signal::try_from(signal) {
                    Ok(signal) => format!("killed by {signal}"),
                    Err(_) => format!("killed by signal {signal}"),
                },
                Ok((None, None)) => "ended".to_string(),
                Err(e) => {
                    tracing::warn!("cannot wait for the data plane (pid {}): {e}", process.pid);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::warn!("the data plane (pid {}) {how}", process.pid);
            if started.is_some_and(|t| t.elapsed() < SHORTEST_RUN) {
                // The reconcile turn restarts it; wait until another process is known.
                let still = |s: &State| {
                    s.process
                        .as_ref()
                        .is_some_and(|(p, _)| Arc::ptr_eq(p, &process))
                };
                while still(&self.lock()) {
                    tokio::select! {
                        _ = self.started.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                continue;
            }
            self.ensure_running();
        }
    }
}

/// Whether the process has a handler for SIGHUP (bit 0 of SigCgt in /proc/PID/status).
fn catches_sighup(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 == 1)
}

fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_catches_sighup_once_it_has_a_handler() {
        let me = std::process::id() as i32;
        assert!(
            !catches_sighup(me),
            "a test process leaves SIGHUP to its default action"
        );
        let _hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
        assert!(catches_sighup(me));
        assert!(!catches_sighup(i32::MAX), "no such process");
    }

    /// Two tasks push at once: the one that read its configuration first (a reconcile turn,
    /// before a migration's switch) must not land after the one that read it later.
    #[test]
    fn pushes_land_in_the_order_their_configurations_were_read() {
        let root = tempfile::tempdir().unwrap();
        let supervisor = DataplaneSupervisor::new(root.path(), Path::new("/nonexistent"));
        let config = |backend: &str| Config {
            listeners: vec![paracloud_dataplane::Listener {
                name: "shop/api:8000".into(),
                bind: "10.0.0.2:8000".parse().unwrap(),
                protocol: paracloud_dataplane::Protocol::Http,
                backends: vec![paracloud_dataplane::Backend {
                    id: backend.into(),
                    addr: "10.0.0.9:8000".parse().unwrap(),
                    weight: 1000,
                }],
                revisions: Vec::new(),
            }],
        };
        let (read, reading) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                supervisor.push(|| {
                    let stale = config("api.1");
                    read.send(()).unwrap();
                    // The switch happens while this turn still holds what it read.
                    std::thread::sleep(Duration::from_millis(100));
                    Some(stale)
                })
            });
            reading.recv().unwrap();
            supervisor.push(|| Some(config("api.2")));
        });
        let landed = load_config(&root.path().join("dataplane.json")).unwrap();
        assert_eq!(landed, config("api.2"));
    }

    #[test]
    fn proc_stat_reads_state_and_start_time_past_odd_command_names() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(start > 0);
    }
}
