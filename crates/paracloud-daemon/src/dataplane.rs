//! Supervision of the data-plane process: started once, kept running, re-found after a daemon
//! restart (by its pid file), and told about new routes by a config file and SIGHUP.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use paracloud_dataplane::{write_config, Config};

/// The hidden command of the paracloud binary that runs the data plane.
pub const DATAPLANE_COMMAND: &str = "__dataplane";

pub struct DataplaneSupervisor {
    exe: PathBuf,
    config_path: PathBuf,
    /// The data plane's stats socket (GET /stats, GET /metrics).
    pub stats_path: PathBuf,
    pid_path: PathBuf,
    log_path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// pid and start time of the running data plane.
    process: Option<(i32, u64)>,
    /// The configuration it was last told.
    pushed: Option<Config>,
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
        let state = State {
            process: read_pid_file(&root.join("dataplane.pid")),
            pushed: None,
        };
        Self {
            exe: exe.to_path_buf(),
            config_path: root.join("dataplane.json"),
            stats_path: root.join("dataplane-stats.sock"),
            pid_path: root.join("dataplane.pid"),
            log_path: root.join("dataplane.log"),
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the data plane unless the one we know of still runs (reaping it if it died).
    pub fn ensure_running(&self) {
        let mut state = self.lock();
        if let Some((pid, start)) = state.process {
            match proc_stat(pid) {
                Some((s, t)) if t == start && s != 'Z' => return,
                Some((_, t)) if t == start => {
                    // Our child, dead: reap it.
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                }
                _ => {}
            }
            tracing::warn!("the data plane (pid {pid}) is gone: starting a new one");
            state.process = None;
        }
        match self.spawn() {
            Ok(process) => {
                state.process = Some(process);
                state.pushed = None;
            }
            Err(e) => tracing::error!("cannot start the data plane: {e}"),
        }
    }

    fn spawn(&self) -> std::io::Result<(i32, u64)> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        if !self.config_path.exists() {
            write_config(&self.config_path, &Config::default())?;
        }
        let child = Command::new(&self.exe)
            .arg(DATAPLANE_COMMAND)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--stats")
            .arg(&self.stats_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a signal to the daemon's group does not reach it.
            .process_group(0)
            .spawn()?;
        let pid = child.id() as i32;
        let start = proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        std::fs::write(&self.pid_path, format!("{pid} {start}\n"))?;
        tracing::info!("data plane started, pid {pid}");
        Ok((pid, start))
    }

    /// Writes the configuration and signals the data plane when it differs from the last one.
    pub fn push(&self, config: &Config) {
        let mut state = self.lock();
        if state.pushed.as_ref() == Some(config) {
            return;
        }
        if let Err(e) = write_config(&self.config_path, config) {
            tracing::error!("cannot write the data-plane configuration: {e}");
            return;
        }
        if let Some((pid, _)) = state.process {
            // A data plane that has not yet installed its SIGHUP handler would die of the signal;
            // it reads the file we just wrote when it starts, and the next turn signals it again.
            if !catches_sighup(pid) {
                return;
            }
            if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGHUP) {
                tracing::warn!("cannot signal the data plane: {e}");
                return;
            }
        }
        state.pushed = Some(config.clone());
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

    #[test]
    fn proc_stat_reads_state_and_start_time_past_odd_command_names() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(start > 0);
    }
}
