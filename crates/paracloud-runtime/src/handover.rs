//! Listening sockets that outlive the process serving them: duplicated out of it (pidfd_getfd),
//! handed to its successor by the systemd socket-activation convention (fds from 3 on, with
//! `LISTEN_FDS`), and claimed there; and the successor's word that it serves them, by systemd's
//! readiness convention (`READY=1` to the datagram socket named by `NOTIFY_SOCKET`).
//!
//! A listening socket lives as long as any process holds an fd of it: connections that arrive
//! while no process accepts wait in its backlog, complete (the kernel does the handshake), and are
//! accepted by whichever process accepts next; a bound UDP socket likewise queues the datagrams
//! that arrive meanwhile. The successor identifies each socket by its type (SO_TYPE: stream or
//! datagram) and bound address (getsockname), so `LISTEN_PID` and `LISTEN_FDNAMES` are not needed; `LISTEN_PID` is
//! honoured when present, so systemd can socket-activate the same binary.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{sys, Process};

/// The first fd passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// A socket that serves an address: a listening TCP socket, or a bound UDP socket that is not
/// connected (a connected one talks to one peer, as the data plane's sockets to instances do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listening {
    Tcp(SocketAddr),
    Udp(SocketAddr),
}

/// Duplicates, in this process, of the listening TCP and UDP sockets of `process` (see
/// [`Listening`]), each with the address it is bound to. Needs ptrace rights over the process
/// (root has them). The duplicates are close-on-exec.
pub fn listening_sockets(process: &Process) -> io::Result<Vec<(Listening, OwnedFd)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{}/fd", process.pid))? {
        let Ok(entry) = entry else { continue };
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // Only sockets are worth a duplicate; the fd may close meanwhile (then it is skipped).
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|link| link.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
        if !is_socket {
            continue;
        }
        let fd = match sys::pidfd_getfd(process.pidfd.as_fd(), target) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(e),
        };
        if let Some(listening) = listening_address(&fd) {
            found.push((listening, fd));
        }
    }
    Ok(found)
}

/// What `fd` serves when it is a listening TCP or an unconnected bound UDP (IPv4 or IPv6)
/// socket.
pub fn listening_address(fd: &OwnedFd) -> Option<Listening> {
    let socket = socket2::SockRef::from(fd);
    let addr = socket.local_addr().ok()?.as_socket()?;
    match socket.r#type().ok()? {
        socket2::Type::STREAM if socket.is_listener().ok()? => Some(Listening::Tcp(addr)),
        socket2::Type::DGRAM if addr.port() != 0 && socket.peer_addr().is_err() => {
            Some(Listening::Udp(addr))
        }
        _ => None,
    }
}

/// Sets up `command` so that its child starts with `fds` as fds 3, 4, ... and `LISTEN_FDS` set
/// to their number (`LISTEN_PID` and `LISTEN_FDNAMES` removed). The fds stay close-on-exec in
/// this process: nothing else it spawns, even at the same moment, inherits them.
pub fn pass_listen_fds(command: &mut Command, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    command
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    if fds.is_empty() {
        command.env_remove("LISTEN_FDS");
        return Ok(());
    }
    sys::map_fds_from_3(command, fds)?;
    command.env("LISTEN_FDS", fds.len().to_string());
    Ok(())
}

/// Claims the fds passed to this process by [`pass_listen_fds`] (or by systemd): fds 3 to
/// 3 + `LISTEN_FDS` - 1, unless `LISTEN_PID` names another process. Marks them close-on-exec and
/// removes the variables; only the first call in a process claims anything.
///
/// Call it once at the start of `main`, while the process has one thread (it changes the
/// environment) and before anything could have closed those fds.
pub fn take_listen_fds() -> Vec<OwnedFd> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    if !for_us || count <= 0 {
        return Vec::new();
    }
    (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count))
        .filter_map(|fd| {
            let fd = sys::inherited_fd(fd).ok()?;
            nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .ok()?;
            Some(fd)
        })
        .collect()
}

/// The variable naming the socket a started process reports its readiness to (systemd's
/// `sd_notify` convention: a Unix datagram socket, a path or `@` and an abstract name).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Takes the readiness socket passed to this process ([`NOTIFY_SOCKET`]) and removes the variable,
/// so that nothing this process starts reports in its name. Call it at the start of `main`, while
/// the process has one thread (it changes the environment).
pub fn take_notify_socket() -> Option<std::ffi::OsString> {
    let socket = std::env::var_os(NOTIFY_SOCKET).filter(|s| !s.is_empty());
    std::env::remove_var(NOTIFY_SOCKET);
    socket
}

/// Tells whoever started this process that it is ready: `READY=1` and its pid, as one datagram
/// to `socket` (from [`take_notify_socket`]).
pub fn notify_ready(socket: &std::ffi::OsStr) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sender = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sender.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// The pid a readiness message (`READY=1`, from [`notify_ready`]) says is ready; `None` for a
/// message that does not say `READY=1`.
pub fn ready_pid(message: &[u8]) -> Option<Option<u32>> {
    let text = std::str::from_utf8(message).ok()?;
    let mut ready = false;
    let mut pid = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => ready = true,
            Some(("MAINPID", value)) => pid = value.parse().ok(),
            _ => {}
        }
    }
    ready.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    fn me() -> Process {
        let pid = std::process::id() as i32;
        let start = crate::procfs::read_stat(pid).unwrap().start_time;
        crate::procfs::adopt(pid, start).unwrap().unwrap()
    }

    #[test]
    fn listening_sockets_finds_listeners_by_address_and_skips_other_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let found = listening_sockets(&me()).unwrap();
        let ours: Vec<_> = found
            .iter()
            .filter(|(a, _)| *a == Listening::Tcp(addr))
            .collect();
        assert_eq!(ours.len(), 1, "{found:?}");
        assert!(found.iter().all(|(_, fd)| listening_address(fd).is_some()));
        // The duplicate is the same socket: a connection queued on it is accepted by the original.
        let dup = std::net::TcpListener::from(
            found
                .into_iter()
                .find(|(a, _)| *a == Listening::Tcp(addr))
                .unwrap()
                .1,
        );
        drop(listener);
        let _second = std::net::TcpStream::connect(addr).expect("the duplicate keeps listening");
        dup.accept().unwrap();
    }

    #[test]
    fn listening_sockets_finds_bound_udp_sockets_but_not_connected_ones() {
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap();
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(addr).unwrap();
        let connected_addr = connected.local_addr().unwrap();
        let found = listening_sockets(&me()).unwrap();
        let kinds: Vec<Listening> = found.iter().map(|(l, _)| *l).collect();
        assert!(kinds.contains(&Listening::Udp(addr)), "{kinds:?}");
        assert!(
            !kinds.contains(&Listening::Udp(connected_addr)),
            "{kinds:?}"
        );
        // The duplicate is the same socket: a datagram sent meanwhile waits on it.
        let dup = std::net::UdpSocket::from(
            found
                .into_iter()
                .find(|(l, _)| *l == Listening::Udp(addr))
                .unwrap()
                .1,
        );
        drop(bound);
        connected.send(b"kept").unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = dup.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
    }

    #[test]
    fn readiness_reaches_the_notify_socket_as_ready_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_ready(path.as_os_str()).unwrap();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(ready_pid(&buf[..n]), Some(Some(std::process::id())));
        assert_eq!(ready_pid(b"STATUS=starting\n"), None);
        assert!(notify_ready(dir.path().join("absent").as_os_str()).is_err());
    }

    #[test]
    fn a_child_gets_the_fds_from_3_with_listen_fds_and_our_copies_stay_close_on_exec() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut command = Command::new("/bin/sh");
        command.args([
            "-c",
            "echo $LISTEN_FDS; readlink /proc/self/fd/3 /proc/self/fd/4; ls -l /proc/self/fd | grep -c socket:",
        ]);
        command.env("LISTEN_PID", "1");
        pass_listen_fds(&mut command, &[a.as_fd(), b.as_fd()]).unwrap();
        let out = command.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2", "{text}");
        assert!(
            lines[1].starts_with("socket:") && lines[2].starts_with("socket:"),
            "{text}"
        );
        assert_ne!(lines[1], lines[2]);
        // Our own listeners (close-on-exec) and the mapping's sources did not follow.
        assert_eq!(lines[3], "2", "only fds 3 and 4 are sockets: {text}");
        for fd in [a.as_fd(), b.as_fd()] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }
}
