//! The minimal init of an instance with `init = true`, as Docker's `--init`: pid 1 of the
//! instance forks the command and stays beside it. Every signal it can catch goes to the
//! command (so a stop signal reaches a program that, as pid 1, would ignore it), every orphan of
//! the instance is reaped, and it exits as the command does: its exit code, or 128 + the signal
//! that killed it.
//!
//! It is sandbox-init itself, after the identity switch, under the same seccomp filter as the
//! command: no program is added to the instance's root, and it holds no capability.

use std::convert::Infallible;

use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::sys::{self, Forked};

type InitResult<T> = std::result::Result<T, String>;

/// Forks: both sides run `seal` (the seccomp filter, which refuses the clone3 of the fork
/// itself), then the child runs `exec` (which returns only its failure, reported by the
/// caller) and the parent supervises it and never returns.
pub(crate) fn fork_command(
    seal: impl Fn() -> InitResult<()>,
    exec: impl FnOnce() -> String,
) -> InitResult<Infallible> {
    let single = sys::single_threaded().map_err(|e| format!("cannot start the init: {e}"))?;
    // Blocked before the fork, so that no signal is lost between it and the first wait.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)
        .map_err(|e| format!("cannot block signals for the init: {e}"))?;
    match sys::fork(&single, None).map_err(|e| format!("cannot fork the command: {e}"))? {
        Forked::Child => {
            if let Err(e) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
                return Err(format!("cannot unblock signals for the command: {e}"));
            }
            seal()?;
            Err(exec())
        }
        Forked::Parent(command) => {
            if let Err(e) = seal() {
                let _ = kill(command, Signal::SIGKILL);
                return Err(e);
            }
            // The error pipe is the command's now: its end (at exec) tells the daemon the
            // command runs, and a failure to exec is the command's to report.
            let _ = sys::close_from(3);
            supervise(command)
        }
    }
}

fn supervise(command: Pid) -> ! {
    let signals = SigSet::all();
    loop {
        // Reap every child: the command, and whatever the instance left behind (reparented to
        // pid 1).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == command => std::process::exit(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                    std::process::exit(128 + signal as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(signal) => {
                let _ = kill(command, signal);
            }
            // A real-time signal nix cannot name: not forwarded.
            Err(_) => {}
        }
    }
}
