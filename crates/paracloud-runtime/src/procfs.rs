//! Processes by pid and pidfd: /proc/PID/stat parsing, pidfd_open, signals, adoption and waiting.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::Interest;

use crate::{sys, Error, Process, Result};

/// The fields of /proc/PID/stat the runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: char,
    pub ppid: i32,
    /// Field 22, clock ticks since boot.
    pub start_time: u64,
}

/// Parses /proc/PID/stat; the command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last ')'.
pub(crate) fn parse_stat(content: &str) -> Option<Stat> {
    let rest = &content[content.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub(crate) fn read_stat(pid: i32) -> io::Result<Stat> {
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&content).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

pub(crate) fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    sys::pidfd_send_signal(pidfd.as_fd(), signal)
}

/// Opens `/proc/PID/ENTRY` for each of `entries` (such as `ns/net`, `root`), checking first and
/// last that `pid` is still the process started at `start_time`: the files then pin that
/// process's namespaces whatever the pid names afterwards. Errors are messages naming the entry.
pub(crate) fn open_pinned(
    pid: i32,
    start_time: u64,
    entries: &[&str],
) -> std::result::Result<Vec<std::fs::File>, String> {
    let same = || match adopt(pid, start_time) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("instance process {pid} is gone")),
        Err(e) => Err(e.to_string()),
    };
    same()?;
    let files = entries
        .iter()
        .map(|entry| {
            std::fs::File::open(format!("/proc/{pid}/{entry}"))
                .map_err(|e| format!("cannot open /proc/{pid}/{entry}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    same()?;
    Ok(files)
}

pub(crate) fn adopt(pid: i32, start_time: u64) -> Result<Option<Process>> {
    let alive = |stat: io::Result<Stat>| -> Result<Option<Stat>> {
        match stat {
            Ok(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X' => Ok(Some(s)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
            Err(e) => Err(Error::sys(format!("reading /proc/{pid}/stat"), e)),
        }
    };
    if alive(read_stat(pid))?.is_none() {
        return Ok(None);
    }
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(Error::sys(format!("pidfd_open of pid {pid}"), e)),
    };
    // The pid may have been reused between the check and pidfd_open: check again now that the
    // pidfd pins whichever process it names.
    let Some(stat) = alive(read_stat(pid))? else {
        return Ok(None);
    };
    Ok(Some(Process {
        pid,
        start_time,
        pidfd,
        is_child: stat.ppid == std::process::id() as i32,
    }))
}

/// Waits for the pidfd to report the exit; for children, reaps them and returns (code, signal).
pub(crate) async fn wait_exit(process: &Process) -> Result<(Option<i32>, Option<i32>)> {
    // A registration of our own, so concurrent waits on one Process do not collide in epoll.
    let fd = process
        .pidfd
        .try_clone()
        .map_err(|e| Error::sys(format!("duplicating the pidfd of pid {}", process.pid), e))?;
    let afd = sys::async_fd(fd, Interest::READABLE)
        .map_err(|e| Error::sys(format!("watching the pidfd of pid {}", process.pid), e))?;
    let _ready = afd
        .readable()
        .await
        .map_err(|e| Error::sys(format!("waiting for pid {}", process.pid), e))?;
    if !process.is_child {
        return Ok((None, None));
    }
    loop {
        match waitid(Id::PIDFd(process.pidfd.as_fd()), WaitPidFlag::WEXITED) {
            Ok(WaitStatus::Exited(_, code)) => return Ok((Some(code), None)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok((None, Some(signal as i32))),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            // Reaped elsewhere (another wait on the same process): the status is gone.
            Err(nix::Error::ECHILD) => return Ok((None, None)),
            Err(e) => {
                return Err(Error::Sys {
                    context: format!("waitid for pid {}", process.pid),
                    source: e,
                })
            }
        }
    }
}

/// SIGKILLs a child and reaps it; for error paths, where the process must not outlive the call.
pub(crate) fn kill_and_reap(pidfd: &OwnedFd) {
    let _ = pidfd_send_signal(pidfd, libc::SIGKILL);
    loop {
        match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
            Err(nix::Error::EINTR) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (we ird) name)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 17,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) Z 1"), None);
    }

    #[test]
    fn own_stat_is_readable_and_adopt_checks_the_start_time() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).unwrap();
        assert_ne!(stat.state, 'Z');
        let adopted = adopt(me, stat.start_time).unwrap().expect("self is alive");
        assert!(!adopted.is_child);
        assert!(adopt(me, stat.start_time + 1).unwrap().is_none());
        assert!(adopt(i32::MAX, 1).unwrap().is_none());
    }
}
