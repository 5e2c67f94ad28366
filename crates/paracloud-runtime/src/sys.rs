//! The crate's only unsafe code: thin safe wrappers over the syscalls that nix and std lack.
//!
//! **Invariant:** every other module is free of `unsafe`; each block here says why it is sound.
#![allow(
    unsafe_code,
    reason = "the syscall boundary of the runtime; each block has a SAFETY note"
)]

use std::ffi::{c_char, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// CLONE_INTO_CGROUP (Linux 5.7); libc's constant is an overflowing c_int.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the pidfd is open for the call; a null siginfo is allowed and means "as kill(2)".
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// pidfd_getfd(2) (Linux 5.6): a duplicate, in this process, of the fd `target` of the process
/// behind `pidfd`. Needs ptrace rights over it (root has them). The kernel sets close-on-exec on
/// the new fd.
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: integers only; returns a new fd or -1.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) })?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
pub(crate) fn dup_cloexec_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument and returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Makes the child of `command` start with `fds` as its fds 3, 4, ... (without close-on-exec
/// there); in this process they keep close-on-exec, so no other child (an instance spawned at the
/// same time) inherits them. The duplicates the mapping uses live as long as `command`.
pub(crate) fn map_fds_from_3(command: &mut Command, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let first_free = 3 + RawFd::try_from(fds.len()).map_err(io::Error::other)?;
    // Sources above the target range: mapping one never overwrites another, and dup2 onto a
    // different number always yields a fresh fd without close-on-exec.
    let sources = fds
        .iter()
        .map(|fd| dup_cloexec_at_least(*fd, first_free))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let raw: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
    let map = move || -> io::Result<()> {
        let _owned = &sources;
        for (target, fd) in (3..).zip(raw.iter()) {
            // SAFETY: dup2 is async-signal-safe and takes integers; only memory allocated before
            // the fork is read.
            if unsafe { libc::dup2(*fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls dup2 and allocates nothing (io::Error from an errno does not
    // allocate).
    unsafe { command.pre_exec(map) };
    Ok(())
}

/// Registers an owned fd with tokio's reactor.
pub(crate) fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd keeps its fd open and returns the same number until it is dropped,
    // which only happens when the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps the permitted capabilities across setuid to a non-root user.
pub(crate) fn set_keep_capabilities() -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, 1)
}

pub(crate) fn set_no_new_privileges() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// SIGKILL when the parent (thread) dies.
pub(crate) fn kill_me_with_parent() -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
}

/// `signal` when the parent (thread) dies.
pub(crate) fn signal_me_with_parent(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

/// Makes the terminal `fd` this session's controlling terminal (TIOCSCTTY); the caller leads a
/// new session.
pub(crate) fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the terminal).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The rows and columns of the terminal `fd` (TIOCGWINSZ).
pub(crate) fn terminal_size(fd: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which outlives the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut size as *mut libc::winsize,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((size.ws_row, size.ws_col))
}

/// Sets the rows and columns of the terminal `fd` (TIOCSWINSZ); the kernel signals SIGWINCH to
/// the terminal's foreground process group.
pub(crate) fn set_terminal_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from `size`, which outlives the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &size as *const libc::winsize,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Orphaned descendants (of this pid namespace level) are reparented to this process.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
}

/// Marks every fd from `first` on close-on-exec.
pub(crate) fn close_range_cloexec(first: u32) -> io::Result<()> {
    // SAFETY: close_range with integer arguments only; it only sets flags, closing nothing.
    if unsafe { libc::close_range(first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every fd from `first` on. Only for a process that then runs no code owning an fd
/// (the instance's init, which from then on only waits for signals and exits): Rust objects
/// holding those fds are left with closed numbers.
pub(crate) fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with integer arguments only; the caller promises no object uses the
    // closed fds afterwards.
    if unsafe { libc::close_range(first, libc::c_uint::MAX, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes every fd from 3 up but those in `keep`. The caller promises no object uses the
/// closed fds afterwards (a process about to become something else, as a fresh clone).
pub(crate) fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let (gaps, rest) = gaps_between(keep);
    for (first, last) in gaps {
        // SAFETY: close_range with integer arguments only; the caller's promise above.
        if unsafe { libc::close_range(first, last, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    close_from(rest)
}

/// The ranges of fds from 3 up that are not in `keep` (first, last), and where the open-ended
/// rest begins.
fn gaps_between(keep: &[RawFd]) -> (Vec<(u32, u32)>, u32) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut gaps = Vec::new();
    let mut first = 3u32;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        if fd > first {
            gaps.push((first, fd - 1));
        }
        first = fd + 1;
    }
    (gaps, first)
}

/// dup2 onto a standard stream (0, 1 or 2), which is not owned by any Rust object.
pub(crate) fn dup_onto_stdio(fd: BorrowedFd<'_>, stdio: RawFd) -> io::Result<()> {
    assert!((0..=2).contains(&stdio), "only standard streams");
    // SAFETY: `fd` is open for the call; replacing a standard stream invalidates no OwnedFd.
    if unsafe { libc::dup2(fd.as_raw_fd(), stdio) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Claims an fd that the parent passed on the command line. Only for fds named in our argv at
/// process start (before anything could have opened or closed them).
pub(crate) fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only checks that the fd is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} was not passed to us"),
        ));
    }
    // SAFETY: the fd is open, was handed to this process for its exclusive use, and no other
    // object of this fresh process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) (Linux 5.12) setting `attr_set` on the mount at `path` and every mount
/// below it.
pub(crate) fn mount_setattr_recursive(path: &Path, attr_set: u64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated and `attr` is a mount_attr as the kernel defines it; both
    // outlive the call and the kernel only reads them.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

// From linux/mount.h.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// open_tree(2) (Linux 5.2) with OPEN_TREE_CLONE | AT_RECURSIVE: a detached copy of the mount
/// at `path` and every mount below it, in the caller's current mount namespace, that can be
/// attached in another one with [`move_mount`].
pub(crate) fn clone_mount_tree(path: &Path) -> io::Result<OwnedFd> {
    clone_mount(path, true)
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at `path`, with every mount
/// below it when `recursive`.
pub(crate) fn clone_mount(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `path` is NUL-terminated and outlives the call; the returned fd is new and ours.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// mount_setattr(2) on a mount fd (such as [`clone_mount_tree`]'s) and every mount below it.
pub(crate) fn mount_fd_setattr_recursive(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    mount_fd_setattr(fd, attr_set, None)
}

/// MOUNT_ATTR_IDMAP (linux/mount.h, Linux 5.12).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Like [`mount_fd_setattr_recursive`], also making the tree an idmapped mount of the user
/// namespace `userns`: its files' owners are seen through that namespace's mapping.
pub(crate) fn mount_fd_idmap_recursive(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    userns: BorrowedFd<'_>,
) -> io::Result<()> {
    mount_fd_setattr(fd, attr_set | MOUNT_ATTR_IDMAP, Some(userns))
}

fn mount_fd_setattr(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    // SAFETY: the empty path is NUL-terminated, `attr` is a mount_attr as the kernel defines it;
    // both outlive the call and the kernel only reads them.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// move_mount(2) (Linux 5.2): attaches the detached tree `fd` at `target` in the caller's
/// current mount namespace.
pub(crate) fn move_mount(fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Sets every catchable signal to its default action: ignored signals survive execve.
pub(crate) fn default_signal_dispositions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { sigaction(signal, &default) };
    }
}

/// Whether the reader of standard output has gone (a pipe whose reading end is closed, a socket
/// whose peer hung up): writing there can only fail.
pub(crate) fn stdout_reader_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Ends the process by SIGPIPE at its default action (Rust's runtime ignores it), as a tool
/// whose reader went away ends: the shell sees status 141 and nothing is printed.
pub(crate) fn die_of_sigpipe() -> ! {
    use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no code of ours in signal context.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &default) };
    let _ = raise(Signal::SIGPIPE);
    std::process::exit(128 + Signal::SIGPIPE as i32)
}

/// The result of [`fork`].
pub(crate) enum Forked {
    Child,
    Parent(nix::unistd::Pid),
}

/// Proof that the process had a single thread when it was made; the holder promises to start
/// none (the hidden commands never do).
pub(crate) struct SingleThreaded(());

/// Checks /proc/self/status (read it while /proc is still the host's).
pub(crate) fn single_threaded() -> io::Result<SingleThreaded> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    if threads != Some("1") {
        return Err(io::Error::other(format!(
            "fork refused: the process has {} threads",
            threads.unwrap_or("unknown")
        )));
    }
    Ok(SingleThreaded(()))
}

/// clone3 with `args` and no stack or CLONE_VM: as fork, the child returns 0 here on a copy of
/// this thread's stack, the parent the child's pid.
///
/// # Safety
///
/// In a process with other threads the child may only run async-signal-safe code on memory
/// prepared before the call (another thread may hold a lock the child inherits locked); every
/// address in `args` must be valid.
unsafe fn clone3_like_fork(args: &mut libc::clone_args) -> io::Result<libc::c_long> {
    // SAFETY: `args` is a clone_args of the size passed; the caller's promises above.
    check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    })
}

/// The arguments of a fork-like clone3 (no stack, no CLONE_VM) with `flags`, the address to store
/// a pidfd at (0 for none) and the cgroup2 directory to start the child in.
fn clone_args(flags: u64, pidfd: u64, cgroup: Option<BorrowedFd<'_>>) -> libc::clone_args {
    libc::clone_args {
        flags,
        pidfd,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
    }
}

/// fork(2) of a single-threaded process (then the child may run any code), through clone3 so
/// that the child starts in the cgroup2 directory `cgroup` when one is given.
pub(crate) fn fork(_proof: &SingleThreaded, cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let flags = if cgroup.is_some() {
        CLONE_INTO_CGROUP
    } else {
        0
    };
    let mut args = clone_args(flags, 0, cgroup);
    // SAFETY: with one thread there is no lock held by another thread that the child could
    // inherit locked, so the child may allocate and run ordinary code.
    match unsafe { clone3_like_fork(&mut args) }? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(nix::unistd::Pid::from_raw(pid as i32))),
    }
}

/// Which side of [`clone_as_sibling`] returned.
pub(crate) enum Cloned {
    Child,
    Parent(i32, OwnedFd),
}

/// clone3 of a single-threaded process (then the child may run any code) into new `namespaces`
/// and the cgroup2 directory `cgroup`, with `CLONE_PARENT`: the child is a child of this
/// process's parent, not of this process. The parent gets its pid and a pidfd.
pub(crate) fn clone_as_sibling(
    _proof: &SingleThreaded,
    namespaces: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<Cloned> {
    let mut flags = (namespaces | libc::CLONE_PIDFD | libc::CLONE_PARENT) as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = clone_args(flags, &mut pidfd as *mut libc::c_int as u64, cgroup);
    // clone3 refuses an exit signal with CLONE_PARENT: the child gets this process's own
    // (SIGCHLD), which its new parent expects.
    args.exit_signal = 0;
    // SAFETY: with one thread there is no lock held by another thread that the child could
    // inherit locked, so the child may allocate and run ordinary code; `pidfd` outlives the
    // call.
    match unsafe { clone3_like_fork(&mut args) }? {
        0 => Ok(Cloned::Child),
        // SAFETY: CLONE_PIDFD stored a new fd, owned by nobody else, in `pidfd`.
        pid => Ok(Cloned::Parent(pid as i32, unsafe {
            OwnedFd::from_raw_fd(pidfd)
        })),
    }
}

/// Receives one message of a `SOCK_SEQPACKET` socket into `buf`, with the fds passed along
/// (close-on-exec, at most 3); returns its length (0: the peer closed) and the fds.
pub(crate) fn receive_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = control {
            // SAFETY: the kernel installed these fds in this process for this message; nothing
            // else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if truncated {
        return Err(io::Error::other("a message with more fds than expected"));
    }
    Ok((message.bytes, fds))
}

/// What the child of [`clone_exec`] execs, prepared before the clone (the child must not
/// allocate).
pub(crate) struct ExecPlan {
    exe: CString,
    args: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: [*const c_char; 1],
    failure: Vec<u8>,
}

impl ExecPlan {
    /// `exe` with `args` (argv[0] included) and an empty environment; if execve fails the child
    /// writes `failure` and the errno in decimal to the report fd.
    pub(crate) fn new(exe: CString, args: Vec<CString>, failure: String) -> Self {
        let argv = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Self {
            exe,
            args,
            argv,
            envp: [std::ptr::null()],
            failure: failure.into_bytes(),
        }
    }
}

/// clone3 with `namespaces` (CLONE_NEW* flags) and a pidfd, into the cgroup2 directory `cgroup`
/// if given; the child clears close-on-exec on `keep` and execs `plan`. Returns (pid, pidfd).
pub(crate) fn clone_exec(
    namespaces: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
    plan: &ExecPlan,
    keep: [BorrowedFd<'_>; 2],
    report: BorrowedFd<'_>,
) -> io::Result<(i32, OwnedFd)> {
    debug_assert_eq!(plan.args.len() + 1, plan.argv.len());
    let mut flags = (namespaces | libc::CLONE_PIDFD) as u64;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = clone_args(flags, &mut pidfd as *mut libc::c_int as u64, cgroup);
    let keep = keep.map(|fd| fd.as_raw_fd());
    let report = report.as_raw_fd();
    // SAFETY: the child only runs `exec_child`, which is async-signal-safe (the daemon is
    // multi-threaded) and uses memory prepared before the clone; `pidfd` outlives the call.
    let pid = unsafe { clone3_like_fork(&mut args) }?;
    if pid == 0 {
        exec_child(plan, keep, report);
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new fd, owned by nobody else, in `pidfd`.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// The child between clone3 and execve: async-signal-safe calls only, no allocation, no locks.
fn exec_child(plan: &ExecPlan, keep: [RawFd; 2], report: RawFd) -> ! {
    let exe: &CStr = &plan.exe;
    // SAFETY: fcntl, execve, write and _exit are async-signal-safe; every pointer refers to
    // memory prepared before the clone (argv and envp are NULL-terminated arrays of C strings
    // kept alive by `plan`).
    unsafe {
        for fd in keep {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        libc::execve(exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        let errno = *libc::__errno_location();
        libc::write(report, plan.failure.as_ptr().cast(), plan.failure.len());
        let mut digits = [0u8; 12];
        let len = decimal(errno, &mut digits);
        libc::write(report, digits.as_ptr().cast(), len);
        libc::_exit(127);
    }
}

/// Writes `n` in decimal (sign dropped) at the start of `buf`, without allocating.
fn decimal(n: i32, buf: &mut [u8; 12]) -> usize {
    let mut n = n.unsigned_abs();
    let mut tmp = [0u8; 12];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == tmp.len() {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fd_but_the_kept_ones_is_in_a_gap() {
        assert_eq!(gaps_between(&[]), (vec![], 3));
        assert_eq!(gaps_between(&[0, 1, 2]), (vec![], 3));
        assert_eq!(gaps_between(&[3, 4]), (vec![], 5));
        assert_eq!(gaps_between(&[9, 5, 5, -1]), (vec![(3, 4), (6, 8)], 10));
    }

    #[test]
    fn decimal_formats_without_allocating() {
        let mut buf = [0u8; 12];
        let n = decimal(0, &mut buf);
        assert_eq!(&buf[..n], b"0");
        let n = decimal(2, &mut buf);
        assert_eq!(&buf[..n], b"2");
        let n = decimal(i32::MAX, &mut buf);
        assert_eq!(&buf[..n], b"2147483647");
    }

    #[test]
    fn fork_is_refused_with_threads() {
        // The test harness runs tests on threads of a multi-threaded process.
        let _other =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(single_threaded().is_err());
    }
}

// linux/loop.h
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The number of a free loop device (`/dev/loop-control` open as `control`).
pub(crate) fn loop_get_free(control: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
    let number = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) } as _)?;
    Ok(number as i32)
}

/// Backs the loop `device` by `backing`, freed by the kernel once nothing holds it (autoclear).
pub(crate) fn loop_configure_autoclear(
    device: &impl AsRawFd,
    backing: &impl AsRawFd,
) -> io::Result<()> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut config: LoopConfig = unsafe { std::mem::zeroed() };
    config.fd = backing.as_raw_fd() as u32;
    config.info.flags = LO_FLAGS_AUTOCLEAR;
    // SAFETY: the kernel reads a `struct loop_config` of this layout, which outlives the call.
    check(unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } as _)?;
    Ok(())
}

#[cfg(test)]
mod loop_tests {
    use super::*;

    #[test]
    fn the_loop_structures_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 8 + 232 + 64);
    }
}
