//! Supervision of the data-plane process: started once, started again at once when it dies,
//! re-found after a daemon restart (by its pid file), told about new routes by a config file
//! and SIGHUP, and replaced on request by a new one while the old one drains.
//!
//! # Listening sockets outlive the process
//!
//! The supervisor holds a duplicate of every listening socket of the data plane (taken out of it
//! with pidfd_getfd, recognised by SO_ACCEPTCONN for TCP, as a bound and unconnected datagram
//! socket for UDP, and matched to the configuration by its type and bound address), collected shortly after each configuration it pushes and after it starts or adopts a
//! data plane. While it holds them the sockets stay open when the data plane dies: the kernel
//! keeps completing handshakes and queueing connections on them, and the next data plane, which
//! inherits them as fds 3, 4, ... with `LISTEN_FDS` (systemd's socket-activation convention),
//! accepts those connections (and reads the UDP datagrams queued meanwhile). Only the connections
//! the dead process had accepted, and the UDP flows' affinity, are lost.
//!
//! A duplicate of a listener that leaves the configuration is dropped before the data plane is
//! told: otherwise the kernel would go on completing handshakes on a socket nobody accepts from,
//! and the address could not be bound again. The duplicates are close-on-exec and are mapped into
//! the data plane's fd table only in its child after fork, so no instance spawned meanwhile
//! inherits them.
//!
//! # Planned replacement
//!
//! [`DataplaneSupervisor::replace`] (`paracloud dataplane restart`) starts the next data plane
//! while the current one still serves: it inherits the held sockets, so both accept on them for a
//! moment, and reports `READY=1` on a readiness socket (`NOTIFY_SOCKET`, systemd's convention) once
//! its configuration is applied. Only then is it the data plane (pid file, watch, pushes), and the
//! old one is told to drain: the supervisor writes the drain limit to `dataplane.drain` and sends
//! SIGTERM. The old one closes its copies of the sockets (the supervisor's and the new process's
//! keep them open: no connection is refused), finishes its requests (HTTP connections close after
//! their current one) and TCP connections up to the limit, and exits; it still gets every push
//! meanwhile. A new data plane that exits or is not ready in time is killed and the old one, never
//! signalled, serves on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
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
use paracloud_dataplane::{load_config, write_config, Config, Endpoint};
use paracloud_runtime::{adopt_process, handover, signal_process, wait_process, Process};
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

/// How long a replacement waits for every listening socket to be held before it starts the new
/// data plane anyway (one not held is bound by the new data plane once the old one let go).
const HELD_WITHIN: Duration = Duration::from_secs(2);

/// How long a new data plane may take to apply its configuration and say so.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How long past its drain limit a draining data plane may take to exit before a second SIGTERM
/// (which ends its drain at once), and again before SIGKILL.
const DRAIN_OVERRUN: Duration = Duration::from_secs(5);

/// The drain limit every data plane gets at start for a SIGTERM that no drain file qualifies (a
/// signal sent by hand, say).
const DEFAULT_DRAIN: &str = "30s";

/// Why a replacement did not happen; the data plane that ran before serves on.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("cannot start a new data plane: {0}")]
    Start(String),
    #[error("the new data plane (pid {pid}) {why}{serves}; see dataplane.log in the state root")]
    NotReady {
        pid: i32,
        why: String,
        serves: String,
    },
}

/// What a replacement did.
#[derive(Debug, Clone)]
pub struct Replaced {
    /// The data plane replaced, if one was running.
    pub old_pid: Option<i32>,
    pub new_pid: i32,
    /// From the new data plane's start to its readiness.
    pub ready: Duration,
    /// From the old one's SIGTERM to its end.
    pub drain: Duration,
    /// Whether it ended before its drain limit (every connection finished).
    pub drained: bool,
}

pub struct DataplaneSupervisor {
    exe: PathBuf,
    config_path: PathBuf,
    /// The data plane's stats socket (GET /stats, GET /metrics).
    pub stats_path: PathBuf,
    pid_path: PathBuf,
    log_path: PathBuf,
    /// The readiness socket of a data plane started by a replacement.
    notify_path: PathBuf,
    /// The drain limit of the data plane being replaced, in milliseconds, read at its SIGTERM.
    drain_path: PathBuf,
    /// The data plane being replaced (pid and start time), until it has ended: a daemon that
    /// ends within a replacement leaves it for the next one to drain.
    retiring_path: PathBuf,
    state: Mutex<State>,
    /// One replacement at a time.
    replacement: tokio::sync::Mutex<()>,
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
    binds: BTreeSet<Endpoint>,
    /// Duplicates of the data plane's listening sockets, by bound address (a subset of `binds`).
    held: BTreeMap<Endpoint, OwnedFd>,
    /// Data planes replaced and still draining: they get every push until they end.
    retiring: Vec<Arc<Process>>,
    /// A replacement's new data plane runs but is not yet ready: its end is the replacement's
    /// to handle, not the watch's.
    replacing: bool,
}

/// Whether the process still runs (not a zombie, and not another process under its pid).
fn running(process: &Process) -> bool {
    matches!(proc_stat(process.pid), Some((s, t)) if t == process.start_time && s != 'Z')
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
            .map(|c| c.listeners.iter().map(|l| l.endpoint()).collect())
            .unwrap_or_default();
        let state = State {
            process,
            binds,
            ..State::default()
        };
        let drain_path = root.join("dataplane.drain");
        // Left by a daemon that ended within a replacement: not for the next SIGTERM.
        let _ = std::fs::remove_file(&drain_path);
        let retiring_path = root.join("dataplane.retiring");
        finish_retirement(
            &retiring_path,
            state.process.as_ref().map(|(p, _)| p.as_ref()),
        );
        Self {
            exe: exe.to_path_buf(),
            config_path,
            stats_path: root.join("dataplane-stats.sock"),
            pid_path: root.join("dataplane.pid"),
            log_path: root.join("dataplane.log"),
            notify_path: root.join("dataplane-notify.sock"),
            drain_path,
            retiring_path,
            state: Mutex::new(state),
            replacement: tokio::sync::Mutex::new(()),
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
        if state.replacing {
            // The replacement starts one, or goes back to the one before.
            return;
        }
        if let Some((process, _)) = &state.process {
            let pid = process.pid;
            if running(process) {
                return;
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
        match self.spawn(&held, None) {
            Ok(process) => {
                state.process = Some((Arc::new(process), Some(Instant::now())));
                state.pushed = None;
                self.started.notify_one();
                self.collect.notify_one();
            }
            Err(e) => tracing::error!("cannot start the data plane: {e}"),
        }
    }

    /// Starts a data plane with `listeners` as its inherited sockets; with `notify`, it reports
    /// its readiness there.
    fn spawn(
        &self,
        listeners: &[BorrowedFd<'_>],
        notify: Option<&Path>,
    ) -> std::io::Result<Process> {
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
            .arg("--drain-timeout")
            .arg(DEFAULT_DRAIN)
            .arg("--drain-file")
            .arg(&self.drain_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the daemon's group does not reach it.
            .process_group(0);
        handover::pass_listen_fds(&mut command, listeners)?;
        match notify {
            Some(socket) => command.env(handover::NOTIFY_SOCKET, socket),
            None => command.env_remove(handover::NOTIFY_SOCKET),
        };
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
        write_pid_file(&self.pid_path, &process)?;
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
        let binds: BTreeSet<Endpoint> = config.listeners.iter().map(|l| l.endpoint()).collect();
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
        // A draining data plane still routes its last requests: it follows the routes too.
        for retiring in &state.retiring {
            if catches_sighup(retiring.pid) {
                let _ = signal_process(retiring, Signal::SIGHUP);
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
                for (listening, fd) in found {
                    let addr = match listening {
                        handover::Listening::Tcp(addr) => Endpoint::Tcp(addr),
                        handover::Listening::Udp(addr) => Endpoint::Udp(addr),
                    };
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

    /// Replaces the data plane by a new one without refusing or failing a request: the new one
    /// starts on the held listening sockets beside the old one; once it says it is ready it is
    /// the data plane, and the old one drains for at most `drain` (its TCP connections run until
    /// then) and ends. Returns once it has. With no data plane running, one is started.
    pub async fn replace(self: &Arc<Self>, drain: Duration) -> Result<Replaced, ReplaceError> {
        let _one_at_a_time = self.replacement.lock().await;
        // The new data plane inherits what is held: wait for a listener just added by a push.
        let held_by = tokio::time::Instant::now() + HELD_WITHIN;
        while !self.collect_listeners() && tokio::time::Instant::now() < held_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let missing: Vec<String> = {
            let state = self.lock();
            state
                .binds
                .iter()
                .filter(|b| !state.held.contains_key(b))
                .map(|b| b.to_string())
                .collect()
        };
        if !missing.is_empty() {
            tracing::warn!(
                "replacing the data plane while its listeners {} are not held: the new one binds them once the old one has let go",
                missing.join(", ")
            );
        }
        let _ = std::fs::remove_file(&self.notify_path);
        let readiness = tokio::net::UnixDatagram::bind(&self.notify_path)
            .map_err(|e| ReplaceError::Start(format!("no readiness socket: {e}")))?;
        let begun = Instant::now();
        let (old, new) = {
            let mut state = self.lock();
            let old = match state.process.take() {
                Some((process, _)) if running(&process) => Some(process),
                Some((process, _)) => {
                    if process.is_child {
                        let _ = waitid(
                            Id::PIDFd(process.pidfd.as_fd()),
                            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
                        );
                    }
                    None
                }
                None => None,
            };
            if let Some(old) = &old {
                if let Err(e) = write_pid_file(&self.retiring_path, old) {
                    tracing::warn!("cannot name the data plane being replaced: {e}");
                }
            }
            let held: Vec<BorrowedFd<'_>> = state.held.values().map(|fd| fd.as_fd()).collect();
            let new = match self.spawn(&held, Some(&self.notify_path)) {
                Ok(new) => Arc::new(new),
                Err(e) => {
                    state.process = old.map(|p| (p, None));
                    drop(state);
                    let _ = std::fs::remove_file(&self.notify_path);
                    let _ = std::fs::remove_file(&self.retiring_path);
                    return Err(ReplaceError::Start(e.to_string()));
                }
            };
            state.process = Some((new.clone(), Some(Instant::now())));
            state.pushed = None;
            state.replacing = true;
            if let Some(old) = &old {
                state.retiring.push(old.clone());
            }
            (old, new)
        };
        self.started.notify_one();
        self.collect.notify_one();
        let ready = wait_ready(&readiness, &new).await;
        drop(readiness);
        let _ = std::fs::remove_file(&self.notify_path);
        let ready_after = begun.elapsed();
        if let Err(why) = ready {
            let _ = signal_process(&new, Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_process(&new)).await;
            let mut state = self.lock();
            state.replacing = false;
            state.pushed = None;
            if let Some(old) = &old {
                state.retiring.retain(|p| !Arc::ptr_eq(p, old));
                if let Err(e) = write_pid_file(&self.pid_path, old) {
                    tracing::warn!("cannot write the data plane's pid file: {e}");
                }
            }
            let _ = std::fs::remove_file(&self.retiring_path);
            state.process = old.clone().map(|p| (p, None));
            drop(state);
            self.started.notify_one();
            tracing::error!("the new data plane (pid {}) {why}", new.pid);
            return Err(ReplaceError::NotReady {
                pid: new.pid,
                why,
                serves: match &old {
                    Some(old) => format!("; the old one (pid {}) serves on", old.pid),
                    None => String::new(),
                },
            });
        }
        self.lock().replacing = false;
        tracing::info!(
            "the new data plane (pid {}) is ready after {} ms",
            new.pid,
            ready_after.as_millis()
        );
        let Some(old) = old else {
            return Ok(Replaced {
                old_pid: None,
                new_pid: new.pid,
                ready: ready_after,
                drain: Duration::ZERO,
                drained: true,
            });
        };
        let (took, drained) = self.drain(&old, drain).await;
        self.lock().retiring.retain(|p| !Arc::ptr_eq(p, &old));
        let _ = std::fs::remove_file(&self.retiring_path);
        if !missing.is_empty() {
            // The listeners the old one held alone are free now: the new one binds them at a
            // reload.
            self.lock().pushed = None;
            if catches_sighup(new.pid) {
                let _ = signal_process(&new, Signal::SIGHUP);
            }
            self.collect.notify_one();
        }
        tracing::info!(
            "the data plane (pid {}) drained in {} ms{}; pid {} serves",
            old.pid,
            took.as_millis(),
            if drained {
                ""
            } else {
                ", its last connections closed"
            },
            new.pid
        );
        Ok(Replaced {
            old_pid: Some(old.pid),
            new_pid: new.pid,
            ready: ready_after,
            drain: took,
            drained,
        })
    }

    /// Tells a replaced data plane to drain within `limit` and waits until it ends (a second
    /// SIGTERM once it overruns, then SIGKILL): how long it took, and whether within the limit.
    async fn drain(&self, old: &Process, limit: Duration) -> (Duration, bool) {
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.drain_path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, limit.as_millis().to_string().as_bytes())
            });
        if let Err(e) = written {
            tracing::warn!("cannot write the drain limit (the data plane's own applies): {e}");
        }
        let began = Instant::now();
        tracing::info!(
            "draining the data plane (pid {}) for at most {} ms",
            old.pid,
            limit.as_millis()
        );
        let mut ended = false;
        for (signal, wait) in [
            (Signal::SIGTERM, limit + DRAIN_OVERRUN),
            (Signal::SIGTERM, DRAIN_OVERRUN),
            (Signal::SIGKILL, DRAIN_OVERRUN),
        ] {
            if let Err(e) = signal_process(old, signal) {
                tracing::warn!("cannot signal the data plane (pid {}): {e}", old.pid);
            }
            if tokio::time::timeout(wait, wait_process(old)).await.is_ok() {
                ended = true;
                break;
            }
            tracing::warn!(
                "the draining data plane (pid {}) still runs {} ms after its drain began",
                old.pid,
                began.elapsed().as_millis()
            );
        }
        let _ = std::fs::remove_file(&self.drain_path);
        let took = began.elapsed();
        (took, ended && took < limit)
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
            let ended = tokio::select! {
                ended = wait_process(&process) => ended,
                // Another process became the data plane (a replacement): watch that one.
                () = self.started.notified() => continue,
            };
            let how = match ended {
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
            let still = |s: &State| {
                s.process
                    .as_ref()
                    .is_some_and(|(p, _)| Arc::ptr_eq(p, &process))
            };
            if !still(&self.lock()) {
                // Replaced meanwhile: the replacement saw to its end.
                continue;
            }
            tracing::warn!("the data plane (pid {}) {how}", process.pid);
            if started.is_some_and(|t| t.elapsed() < SHORTEST_RUN) || self.lock().replacing {
                // The reconcile turn restarts it, or the replacement under way decides what
                // runs; wait until another process is known.
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

/// Waits until `process` reports `READY=1` on `readiness`, at most [`READY_WITHIN`]; why not
/// otherwise.
async fn wait_ready(readiness: &tokio::net::UnixDatagram, process: &Process) -> Result<(), String> {
    let waiting = async {
        let mut message = [0u8; 512];
        loop {
            tokio::select! {
                received = readiness.recv(&mut message) => match received {
                    Ok(n) => match handover::ready_pid(&message[..n]) {
                        Some(pid) if pid.is_none_or(|p| p as i32 == process.pid) => return Ok(()),
                        _ => {}
                    },
                    Err(e) => return Err(format!("could not report its readiness: {e}")),
                },
                ended = wait_process(process) => {
                    return Err(match ended {
                        Ok((Some(code), _)) => format!("exited with code {code} before it was ready"),
                        Ok((None, Some(signal))) => format!("was killed by signal {signal} before it was ready"),
                        _ => "ended before it was ready".to_string(),
                    });
                }
            }
        }
    };
    tokio::time::timeout(READY_WITHIN, waiting)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "was not ready within {READY_WITHIN:?} and was stopped"
            ))
        })
}

/// Names `process` (pid and start time) in the file at `path`: the data plane in `dataplane.pid`,
/// where the next daemon finds it, or the one being replaced in `dataplane.retiring`.
fn write_pid_file(path: &Path, process: &Process) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(
        &mut file,
        format!("{} {}\n", process.pid, process.start_time).as_bytes(),
    )
}

/// A replacement cut short by the daemon's end leaves the data plane it was replacing named in
/// `path`: unless it is the data plane after all (the daemon ended before the new one started),
/// it is told to drain now if it was not yet (it still listens).
fn finish_retirement(path: &Path, current: Option<&Process>) {
    let Some((pid, start)) = read_pid_file(path) else {
        return;
    };
    let _ = std::fs::remove_file(path);
    if current.is_some_and(|c| c.pid == pid && c.start_time == start) {
        return;
    }
    let Ok(Some(old)) = adopt_process(pid, start) else {
        return;
    };
    if handover::listening_sockets(&old).is_ok_and(|sockets| !sockets.is_empty()) {
        tracing::warn!(
            "the data plane pid {pid}, being replaced when the last daemon ended, still listens: draining it"
        );
        if let Err(e) = signal_process(&old, Signal::SIGTERM) {
            tracing::warn!("cannot signal the data plane (pid {pid}): {e}");
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

    /// A daemon that ended within a replacement left the old data plane named: the next one
    /// tells it to drain if it still listens (it was never told), and leaves it alone otherwise.
    #[test]
    fn a_replacement_cut_short_drains_the_old_data_plane_that_still_listens() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("dataplane.retiring");
        let start = |script: &str| {
            let child = Command::new("/usr/bin/python3")
                .args(["-c", script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            (child, pid)
        };
        let listening = "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint('up', flush=True)\ntime.sleep(30)";
        for (script, told) in [
            (listening, true),
            (
                "print('up', flush=True)\nimport time\ntime.sleep(30)",
                false,
            ),
        ] {
            let (mut child, pid) = start(script);
            let mut up = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut up,
            )
            .unwrap();
            let (_, start_time) = proc_stat(pid).unwrap();
            std::fs::write(&path, format!("{pid} {start_time}\n")).unwrap();
            finish_retirement(&path, None);
            assert!(!path.exists());
            let until = Instant::now() + Duration::from_secs(if told { 10 } else { 1 });
            let mut ended = None;
            while ended.is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
                ended = child.try_wait().unwrap();
            }
            assert_eq!(ended.is_some(), told, "{script}: {ended:?}");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn proc_stat_reads_state_and_start_time_past_odd_command_names() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(start > 0);
    }
}
