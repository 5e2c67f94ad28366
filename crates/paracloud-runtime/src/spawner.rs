//! The spawner: a small single-threaded process, the helper binary's `__spawner` command,
//! started once per runtime, that clones each new instance's sandbox-init for the daemon.
//!
//! Cloning the daemon itself costs a start two things: the copy of a large multi-threaded
//! process's page tables, and an exec of the helper binary in the child, since between clone and
//! exec a child of a multi-threaded process may only run async-signal-safe code. A clone of the
//! spawner has neither: it is small, and as the copy of a process with one thread the child may
//! run sandbox-init's code at once, with no exec.
//!
//! When no request came for 20 ms the spawner makes the next instance's network, ipc and uts
//! namespaces ahead (the costly ones to create), held by fds; the clone then starts the child in
//! them and makes only the mount and pid namespaces. Each set is taken by one instance: the
//! spawner drops its fds once the child runs in them. In a burst of starts each clone makes its
//! own, as the clone of the daemon did. Likewise, for instances with a user namespace, it makes
//! one ahead for the id range of the last such request (an application's instances share their
//! range), which sandbox-init then takes instead of making its own.
//!
//! The clone takes `CLONE_PARENT`, so the instance is the daemon's own child, as with a clone of
//! the daemon ([`crate::Runtime::wait`] gets its exit status; it outlives the spawner). The
//! daemon sends each request on a private `SOCK_SEQPACKET` socket pair: the namespaces, and as
//! `SCM_RIGHTS` the ends of the config and error pipes that sandbox-init takes and the cgroup2
//! directory to start it in; the spawner answers with the pid, and the pidfd as `SCM_RIGHTS`, or
//! an errno. The spawner ends when the daemon's end of the socket closes. When it cannot be
//! reached, a start falls back to cloning the daemon and exec'ing sandbox-init, and the next start
//! starts a new spawner.

use std::ffi::OsString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sched::CloneFlags;
use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

use crate::sys::{self, Cloned};
use crate::IdRange;

pub(crate) const COMMAND: &str = "__spawner";

/// A request: the namespace flags (i32, little-endian), whether a cgroup2 directory follows the
/// two pipe ends among the passed fds (u8), whether the instance gets a user namespace (u8) and
/// its id range (host id and size, u32 each).
const REQUEST_LEN: usize = 14;

fn encode_request(
    namespaces: libc::c_int,
    cgroup: bool,
    userns: Option<IdRange>,
) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[..4].copy_from_slice(&namespaces.to_le_bytes());
    request[4] = u8::from(cgroup);
    if let Some(range) = userns {
        request[5] = 1;
        request[6..10].copy_from_slice(&range.host.to_le_bytes());
        request[10..14].copy_from_slice(&range.size.to_le_bytes());
    }
    request
}

fn decode_request(request: &[u8; REQUEST_LEN]) -> (libc::c_int, bool, Option<IdRange>) {
    let word = |at: usize| request[at..at + 4].try_into().expect("four bytes");
    let userns = (request[5] == 1).then(|| IdRange {
        host: u32::from_le_bytes(word(6)),
        size: u32::from_le_bytes(word(10)),
    });
    (i32::from_le_bytes(word(0)), request[4] == 1, userns)
}

/// The runtime's spawner: started on first use, and again on the next use after one failed.
#[derive(Debug, Default)]
pub(crate) struct SpawnerSlot(Mutex<Option<Spawner>>);

impl SpawnerSlot {
    /// [`Spawner::clone_sandbox_init`] through this slot's spawner (`helper __spawner`).
    pub(crate) fn clone_sandbox_init(
        &self,
        helper: &Path,
        namespaces: libc::c_int,
        cgroup: Option<BorrowedFd<'_>>,
        pipes: [BorrowedFd<'_>; 2],
        userns: Option<IdRange>,
    ) -> io::Result<(i32, OwnedFd)> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let spawner = match &mut *slot {
            Some(spawner) => spawner,
            empty => empty.insert(Spawner::start(helper)?),
        };
        let cloned = spawner.clone_sandbox_init(namespaces, cgroup, pipes, userns);
        if cloned.is_err() {
            // Killed and reaped; whatever went wrong, the next start gets a fresh one.
            *slot = None;
        }
        cloned
    }

    /// The spawner's pid, while one runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|spawner| spawner.process.id())
    }
}

/// The daemon's handle on its spawner.
#[derive(Debug)]
pub(crate) struct Spawner {
    socket: OwnedFd,
    process: Child,
}

impl Spawner {
    /// Starts `helper __spawner` with the other end of a fresh socket pair as its fd 3.
    pub(crate) fn start(helper: &Path) -> io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut command = Command::new(helper);
        command
            .arg(COMMAND)
            .arg("3")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        sys::map_fds_from_3(&mut command, &[theirs.as_fd()])?;
        let process = command.spawn()?;
        Ok(Spawner {
            socket: ours,
            process,
        })
    }

    /// Clones sandbox-init into `namespaces` (and the cgroup2 directory `cgroup`), as the
    /// daemon's child, with `pipes` (config reader, error writer) as its two pipes; `userns`:
    /// the range of the user namespace sandbox-init will make, which the spawner may have made
    /// ahead. Returns its pid and pidfd.
    pub(crate) fn clone_sandbox_init(
        &mut self,
        namespaces: libc::c_int,
        cgroup: Option<BorrowedFd<'_>>,
        pipes: [BorrowedFd<'_>; 2],
        userns: Option<IdRange>,
    ) -> io::Result<(i32, OwnedFd)> {
        let request = encode_request(namespaces, cgroup.is_some(), userns);
        let mut fds: Vec<RawFd> = pipes.iter().map(|fd| fd.as_raw_fd()).collect();
        fds.extend(cgroup.map(|fd| fd.as_raw_fd()));
        let sent = sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != REQUEST_LEN {
            return Err(io::Error::other("the spawner took part of a request"));
        }
        let mut answer = [0u8; 4];
        let (len, mut passed) = sys::receive_with_fds(self.socket.as_fd(), &mut answer)?;
        if len != answer.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spawner went away",
            ));
        }
        let pid = i32::from_le_bytes(answer);
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(-pid));
        }
        match (passed.pop(), passed.is_empty()) {
            (Some(pidfd), true) => Ok((pid, pidfd)),
            _ => Err(io::Error::other("the spawner sent no pidfd with the pid")),
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The spawner's side: serves requests until the daemon's end closes. argv: [socket fd].
pub(crate) fn main(args: Vec<OsString>) -> ! {
    let socket = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|s| s.parse::<RawFd>().ok())
        .ok_or_else(|| format!("expected the socket's fd, got {args:?}"))
        .and_then(|fd| sys::inherited_fd(fd).map_err(|e| e.to_string()));
    let proof = sys::single_threaded().map_err(|e| e.to_string());
    let (socket, proof) = match (socket, proof) {
        (Ok(socket), Ok(proof)) => (socket, proof),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{COMMAND}: {e}");
            std::process::exit(125);
        }
    };
    let home = match Namespaces::own() {
        Ok(home) => home,
        Err(e) => {
            eprintln!("{COMMAND}: cannot open its own namespaces: {e}");
            std::process::exit(125);
        }
    };
    let mut ready = None;
    // The user namespace made ahead, for the range of the last request that had one.
    let mut ready_userns: Option<(IdRange, OwnedFd)> = None;
    let mut last_range: Option<IdRange> = None;
    loop {
        // The next instance's namespaces, made once no request came for a while: made at once,
        // they would take CPU and the kernel's network lock from the start under way (its
        // veth). In a burst of starts every clone makes its own, as without a spawner.
        let userns_wanted =
            last_range.is_some() && ready_userns.as_ref().map(|r| r.0) != last_range;
        if (ready.is_none() || userns_wanted)
            && !request_within(socket.as_fd(), IDLE_BEFORE_MAKING_AHEAD)
        {
            if ready.is_none() {
                ready = Namespaces::prepare(&home);
            }
            if let Some(range) = last_range.filter(|_| userns_wanted) {
                ready_userns = match crate::userns::create(&range) {
                    Ok(namespace) => Some((range, namespace)),
                    Err(e) => {
                        eprintln!("{COMMAND}: cannot make a user namespace ahead: {e}");
                        None
                    }
                };
            }
        }
        let mut request = [0u8; REQUEST_LEN];
        let (len, fds) = match sys::receive_with_fds(socket.as_fd(), &mut request) {
            Ok((0, _)) => std::process::exit(0),
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("{COMMAND}: {e}");
                std::process::exit(1);
            }
        };
        let (namespaces, with_cgroup, userns) = decode_request(&request);
        if userns.is_some() {
            last_range = userns;
        }
        // Left for the clone when it is for this range; dropped after it either way.
        if let Some(made) = ready_userns.take_if(|made| Some(made.0) == userns) {
            crate::userns::leave_made_ahead(Some(made));
        }
        let answer = match (len, fds.len(), with_cgroup) {
            (REQUEST_LEN, 2, false) | (REQUEST_LEN, 3, true) => {
                serve(&proof, namespaces, fds, &home, ready.take())
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        crate::userns::leave_made_ahead(None);
        let (pid, pidfd) = match answer {
            Ok((pid, pidfd)) => (pid, Some(pidfd)),
            Err(e) => (-e.raw_os_error().unwrap_or(libc::EIO), None),
        };
        let raw: Vec<RawFd> = pidfd.iter().map(|fd| fd.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let sent = sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&pid.to_le_bytes())],
            if raw.is_empty() { &[] } else { &rights },
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        if sent.is_err() {
            // The daemon went away; its instances are its own.
            std::process::exit(0);
        }
    }
}

/// How long the spawner waits for the next request before it makes the next namespaces.
const IDLE_BEFORE_MAKING_AHEAD: u16 = 20;

/// Whether a request (or the daemon's end of the socket closing) comes within `millis`.
fn request_within(socket: BorrowedFd<'_>, millis: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(socket, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(n) if n > 0)
}

/// The namespaces a new instance gets made ahead: network, ipc and uts (the ones whose
/// creation costs the most: a network namespace registers its loopback device and sysctls, an
/// ipc namespace mounts its own mqueue filesystem). Held by fds alone: they die with the
/// spawner if no instance took them.
struct Namespaces {
    net: OwnedFd,
    ipc: OwnedFd,
    uts: OwnedFd,
}

/// The kinds of [`Namespaces`], as clone flags.
const MADE_AHEAD: libc::c_int = libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

impl Namespaces {
    /// This process's own.
    fn own() -> io::Result<Self> {
        let open = |kind: &str| -> io::Result<OwnedFd> {
            Ok(std::fs::File::open(format!("/proc/self/ns/{kind}"))?.into())
        };
        Ok(Namespaces {
            net: open("net")?,
            ipc: open("ipc")?,
            uts: open("uts")?,
        })
    }

    /// New ones, made by unsharing them and going back `home`; none when the kernel refused
    /// (the clone then makes them).
    fn prepare(home: &Namespaces) -> Option<Namespaces> {
        let flags = CloneFlags::from_bits_truncate(MADE_AHEAD);
        if let Err(e) = nix::sched::unshare(flags) {
            eprintln!("{COMMAND}: cannot make namespaces ahead: {e}");
            return None;
        }
        let made = Namespaces::own();
        home.return_to();
        made.map_err(|e| eprintln!("{COMMAND}: cannot open the namespaces made ahead: {e}"))
            .ok()
    }

    /// Makes them this process's again, the spawner's own; ends the process if it cannot: it
    /// would clone every later instance into the namespaces it is stuck in.
    fn return_to(&self) {
        if let Err(e) = self.enter() {
            eprintln!("{COMMAND}: cannot return to its own namespaces: {e}");
            std::process::exit(1);
        }
    }

    /// Makes them this process's.
    fn enter(&self) -> nix::Result<()> {
        nix::sched::setns(&self.net, CloneFlags::CLONE_NEWNET)?;
        nix::sched::setns(&self.ipc, CloneFlags::CLONE_NEWIPC)?;
        nix::sched::setns(&self.uts, CloneFlags::CLONE_NEWUTS)
    }
}

/// Clones sandbox-init with `fds` (config reader, error writer, the cgroup2 directory if any),
/// in the namespaces made ahead when there are: `ready` (taken either way); in the child, runs
/// it and never returns.
fn serve(
    proof: &sys::SingleThreaded,
    namespaces: libc::c_int,
    fds: Vec<OwnedFd>,
    home: &Namespaces,
    ready: Option<Namespaces>,
) -> io::Result<(i32, OwnedFd)> {
    let mut fds = fds.into_iter();
    let (Some(config), Some(report)) = (fds.next(), fds.next()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let cgroup = fds.next();
    // With namespaces made ahead, the clone makes only the others and the child starts in
    // these; this process returns home right after.
    let ahead = ready.filter(|_| namespaces & MADE_AHEAD == MADE_AHEAD);
    let namespaces = match &ahead {
        Some(ahead) => {
            if let Err(e) = ahead.enter() {
                home.return_to();
                return Err(e.into());
            }
            namespaces & !MADE_AHEAD
        }
        None => namespaces,
    };
    let cloned = sys::clone_as_sibling(proof, namespaces, cgroup.as_ref().map(|fd| fd.as_fd()));
    if let Ok(Cloned::Child) = cloned {
        let started_ns = crate::start_steps::now_ns();
        // Nothing of the spawner's stays in the instance: its socket to the daemon, the
        // namespaces it holds (its own, the host's; those made ahead) are closed at once.
        let mut keep = vec![config.as_raw_fd(), report.as_raw_fd()];
        keep.extend(crate::userns::made_ahead_fd());
        if let Err(e) = sys::close_all_but(&keep) {
            let _ = nix::unistd::write(
                &report,
                format!("cannot close the spawner's fds: {e}").as_bytes(),
            );
            std::process::exit(125);
        }
        crate::sandbox_init::enter(config, report, started_ns)
    }
    if ahead.is_some() {
        home.return_to();
    }
    match cloned? {
        Cloned::Parent(pid, pidfd) => Ok((pid, pidfd)),
        Cloned::Child => unreachable!("the child ran sandbox-init above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let range = IdRange {
            host: 1 << 30,
            size: 65536,
        };
        for (namespaces, cgroup, userns) in [
            (libc::CLONE_NEWNS | libc::CLONE_NEWNET, true, Some(range)),
            (libc::CLONE_NEWPID, false, None),
        ] {
            let request = encode_request(namespaces, cgroup, userns);
            assert_eq!(decode_request(&request), (namespaces, cgroup, userns));
        }
    }
}
