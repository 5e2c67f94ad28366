//! exec into a running instance: the daemon side runs `helper __nsexec PID START -- ARGV`; that
//! hidden command joins the instance's cgroups and namespaces, forks into its pid namespace and
//! execs ARGV there as the instance's first process runs (user, capabilities, environment).

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::identity::{self, Identity};
use crate::sys::{self, Forked};
use crate::{procfs, Error, ExecOutput, Process, Result, EXEC_OUTPUT_LIMIT};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

pub(crate) const COMMAND: &str = "__nsexec";
/// Marks nsexec's own failures on stderr, as opposed to the command's.
const FAILURE_PREFIX: &str = "paracloud nsexec: ";
/// Says that the environment to set over the target's comes on standard input, as
/// `KEY=VALUE` pairs each ended by a NUL.
const ENV_FLAG: &str = "--env-on-stdin";
/// nsexec's exit code when it failed before the command ran.
const SETUP_FAILED: i32 = 125;
/// How long nsexec gets to kill and reap the command after a timeout.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Namespaces joined, in this order (mnt last: after it /proc is the instance's).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub(crate) async fn run(
    helper: &std::path::Path,
    process: &Process,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ExecOutput> {
    let pid = process.pid;
    let sandbox = |message: String| Error::Sandbox {
        id: format!("pid {pid}"),
        message,
    };
    if argv.is_empty() {
        return Err(sandbox("exec of an empty command".into()));
    }
    // The environment goes on the helper's standard input, never into its own environment,
    // where a variable such as LD_PRELOAD would act on the helper, which runs as the host's root.
    let mut child = tokio::process::Command::new(helper)
        .arg(COMMAND)
        .arg(pid.to_string())
        .arg(process.start_time.to_string())
        .args((!env.is_empty()).then_some(ENV_FLAG))
        .arg("--")
        .args(argv)
        .env_clear()
        .stdin(if env.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::sys(format!("starting {} {COMMAND}", helper.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut pairs = Vec::new();
        for (key, value) in env {
            pairs.extend_from_slice(format!("{key}={value}").as_bytes());
            pairs.push(0);
        }
        // A helper that failed before reading it is told by its exit.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, &pairs).await;
    }
    let stdout = tokio::spawn(read_last(child.stdout.take(), EXEC_OUTPUT_LIMIT));
    let stderr = tokio::spawn(read_last(child.stderr.take(), EXEC_OUTPUT_LIMIT));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            status.map_err(|e| Error::sys(format!("waiting for exec in pid {pid}"), e))?
        }
        Err(_) => {
            // SIGTERM lets nsexec kill and reap the command: killed outright, the command would
            // be left as a zombie to the instance's pid 1, which may never reap it. SIGKILL
            // (kill_on_drop) if it does not comply at once.
            if let Some(id) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(id as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
            return Err(Error::Sys {
                context: format!("exec of {argv:?} in pid {pid} did not finish within {timeout:?}"),
                source: nix::Error::ETIMEDOUT,
            });
        }
    };
    let output = std::process::Output {
        status,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
    };
    let code = match (
        output.status.code(),
        std::os::unix::process::ExitStatusExt::signal(&output.status),
    ) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    };
    if code == SETUP_FAILED {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(message) = stderr.trim().strip_prefix(FAILURE_PREFIX) {
            return Err(sandbox(message.to_string()));
        }
    }
    Ok(ExecOutput {
        code,
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// Reads the pipe to its end, keeping the last `limit` bytes.
async fn read_last(pipe: Option<impl tokio::io::AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else { return out };
    let mut buffer = [0u8; 8192];
    while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut pipe, &mut buffer).await {
        out.extend_from_slice(&buffer[..n]);
        if out.len() > 2 * limit {
            out.drain(..out.len() - limit);
        }
    }
    if out.len() > limit {
        out.drain(..out.len() - limit);
    }
    out
}

/// Entry point of the hidden command: argv is [PID, START_TIME, "--", ARGV...].
pub(crate) fn main(args: Vec<OsString>) -> ! {
    let message = match enter(args) {
        Ok(never) => match never {},
        Err(message) => message,
    };
    eprintln!("{FAILURE_PREFIX}{message}");
    std::process::exit(SETUP_FAILED);
}

/// What is read of the target before joining it (its /proc is out of reach afterwards).
struct Target {
    env: Vec<(String, String)>,
    identity: Identity,
    kept: caps::CapsHashSet,
    /// The instance's user namespace when it has one of its own (then `identity` holds its
    /// ids as seen inside).
    userns: Option<OwnedFd>,
}

fn enter(args: Vec<OsString>) -> std::result::Result<std::convert::Infallible, String> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let (args, env_on_stdin) = match &args[..] {
        [pid, start, flag, rest @ ..] if flag == ENV_FLAG => (
            [pid.clone(), start.clone()]
                .into_iter()
                .chain(rest.iter().cloned())
                .collect(),
            true,
        ),
        _ => (args, false),
    };
    let (pid, start_time, argv) = match &args[..] {
        [pid, start, dashes, argv @ ..] if dashes == "--" && !argv.is_empty() => (
            pid.parse::<i32>()
                .map_err(|_| format!("invalid pid {pid:?}"))?,
            start
                .parse::<u64>()
                .map_err(|_| format!("invalid start time {start:?}"))?,
            argv.to_vec(),
        ),
        _ => {
            return Err(format!(
                "usage: {COMMAND} PID START_TIME [{ENV_FLAG}] -- COMMAND..."
            ))
        }
    };
    let single = sys::single_threaded().map_err(|e| e.to_string())?;
    let mut target = read_target(pid)?;
    if env_on_stdin {
        let mut given = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut given)
            .map_err(|e| format!("cannot read the environment: {e}"))?;
        overlay_env(&mut target.env, &given);
    }
    target.userns = own_userns(pid, &mut target.identity)?;
    let unified = join_cgroups(pid)?;
    let mut entries: Vec<String> = NAMESPACES.iter().map(|(n, _)| format!("ns/{n}")).collect();
    entries.extend(["root".to_string(), "cwd".to_string()]);
    let mut files = procfs::open_pinned(
        pid,
        start_time,
        &entries.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let (cwd, root) = (files.pop().expect("cwd"), files.pop().expect("root"));
    let namespaces: Vec<_> = files
        .into_iter()
        .zip(NAMESPACES.iter().map(|(_, flag)| *flag))
        .collect();
    for (fd, flag) in &namespaces {
        setns(fd.as_fd(), *flag)
            .map_err(|e| format!("cannot join the {flag:?} of pid {pid}: {e}"))?;
    }
    nix::unistd::fchdir(&root).map_err(|e| format!("cannot enter the instance root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("cannot chroot into the instance root: {e}"))?;
    nix::unistd::fchdir(&cwd).map_err(|e| format!("cannot enter the instance's cwd: {e}"))?;
    drop((namespaces, root, cwd));

    // SIGTERM (the daemon's timeout) and SIGCHLD are taken synchronously by the parent; the
    // child's mask is reset before its exec.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    // A hidden command runs first in main, so this process has a single thread.
    let child = match sys::fork(&single, unified.as_ref().map(|f| f.as_fd()))
        .map_err(|e| format!("cannot fork into pid {pid}'s namespace: {e}"))?
    {
        Forked::Child => {
            let message = run_command(&target, &argv);
            eprintln!("{message}");
            std::process::exit(127);
        }
        Forked::Parent(child) => child,
    };
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => std::process::exit(128 + signal as i32),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(format!("cannot wait for the command: {e}")),
        }
        if let Ok(Signal::SIGTERM) = signals.wait() {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            std::process::exit(128 + Signal::SIGTERM as i32);
        }
    }
}

/// In the forked child, inside every namespace: become the instance's user and exec.
fn run_command(target: &Target, argv: &[String]) -> String {
    if let Err(e) = sys::kill_me_with_parent() {
        return format!("cannot set the parent-death signal: {e}");
    }
    identity::reset_signals();
    if let Some(namespace) = &target.userns {
        if let Err(e) = crate::userns::enter(namespace) {
            return e;
        }
    }
    if let Err(e) = identity::switch_identity(&target.identity, &target.kept) {
        return e;
    }
    if let Err(e) = crate::seccomp::apply_default(&target.kept) {
        return e;
    }
    identity::exec(argv, &target.env)
}

/// Sets each `KEY=VALUE` pair of `given` (each ended by a NUL) over `env`.
fn overlay_env(env: &mut Vec<(String, String)>, given: &[u8]) {
    for pair in given.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let pair = String::from_utf8_lossy(pair);
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }
}

fn read_target(pid: i32) -> std::result::Result<Target, String> {
    let read = |what: &str| {
        fs::read(format!("/proc/{pid}/{what}"))
            .map_err(|e| format!("cannot read /proc/{pid}/{what}: {e}"))
    };
    let env = read("environ")?
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let status = String::from_utf8_lossy(&read("status")?).into_owned();
    let (identity, kept) =
        parse_status(&status).ok_or_else(|| format!("unexpected content of /proc/{pid}/status"))?;
    Ok(Target {
        env,
        identity,
        kept,
        userns: None,
    })
}

/// The user namespace of `pid` when it is not ours, with `identity` (read as host ids)
/// turned into the ids inside it, through its maps.
fn own_userns(pid: i32, identity: &mut Identity) -> std::result::Result<Option<OwnedFd>, String> {
    use std::os::unix::fs::MetadataExt;
    let theirs = fs::metadata(format!("/proc/{pid}/ns/user"))
        .map_err(|e| format!("cannot read the user namespace of pid {pid}: {e}"))?;
    let ours = fs::metadata("/proc/self/ns/user")
        .map_err(|e| format!("cannot read our user namespace: {e}"))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(None);
    }
    let inside = |file: &str, id: u32| -> std::result::Result<u32, String> {
        let map = fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|e| format!("cannot read /proc/{pid}/{file}: {e}"))?;
        map.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
                Some((fields.next()??, fields.next()??, fields.next()??))
            })
            .find_map(|(inner, outer, count)| {
                (id >= outer && id - outer < count).then(|| inner + (id - outer))
            })
            .ok_or_else(|| format!("id {id} of pid {pid} is outside its {file}"))
    };
    identity.uid = inside("uid_map", identity.uid)?;
    identity.gid = inside("gid_map", identity.gid)?;
    identity.groups = identity
        .groups
        .iter()
        .map(|g| inside("gid_map", *g))
        .collect::<std::result::Result<_, _>>()?;
    let namespace = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{pid}/ns/user"))
        .map(OwnedFd::from)
        .map_err(|e| format!("cannot open the user namespace of pid {pid}: {e}"))?;
    Ok(Some(namespace))
}

/// The effective uid and gid, groups and bounding capabilities of a /proc/PID/status.
fn parse_status(status: &str) -> Option<(Identity, caps::CapsHashSet)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    };
    let second =
        |name: &str| -> Option<u32> { field(name)?.split_whitespace().nth(1)?.parse().ok() };
    let uid = second("Uid")?;
    let gid = second("Gid")?;
    let groups = field("Groups")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    let bounding = u64::from_str_radix(field("CapBnd")?, 16).ok()?;
    Some((
        Identity {
            uid,
            gid,
            groups,
            home: None,
        },
        identity::capabilities_from_mask(bounding),
    ))
}

/// Joins every v1 cgroup of `pid` that differs from ours (writing "0" to its `tasks` file: a
/// single-threaded process moving itself skips the kernel's global threadgroup lock) and opens
/// its cgroup2 directory, where the command is then forked (CLONE_INTO_CGROUP) for the same
/// reason. Mount points come from /proc/self/mountinfo.
fn join_cgroups(pid: i32) -> std::result::Result<Option<File>, String> {
    let theirs = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read /proc/{pid}/cgroup: {e}"))?;
    let ours = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts = cgroup_mounts(&mountinfo);
    let mut unified = None;
    for line in theirs.lines() {
        if ours.lines().any(|l| l == line) {
            continue;
        }
        let Some((controllers, path)) = line
            .split_once(':')
            .and_then(|(_, rest)| rest.split_once(':'))
        else {
            continue;
        };
        let Some(dir) = hierarchy_dir(&mounts, controllers, path) else {
            continue;
        };
        if controllers.is_empty() {
            let file = File::open(&dir).map_err(|e| format!("cannot open cgroup {dir}: {e}"))?;
            unified = Some(file);
        } else {
            let tasks = format!("{dir}/tasks");
            fs::write(&tasks, "0").map_err(|e| format!("cannot join cgroup {tasks}: {e}"))?;
        }
    }
    Ok(unified)
}

/// (controllers, mount root, mount point) of each cgroup mount; controllers is empty for cgroup2.
fn cgroup_mounts(mountinfo: &str) -> Vec<(Vec<String>, String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point) = (*left.get(3)?, *left.get(4)?);
            match *right.first()? {
                "cgroup2" => Some((Vec::new(), root.to_string(), point.to_string())),
                "cgroup" => {
                    let options = right.get(2)?.split(',').map(str::to_string).collect();
                    Some((options, root.to_string(), point.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Where the cgroup `path` of the hierarchy with `controllers` ("" for cgroup2) is mounted.
fn hierarchy_dir(
    mounts: &[(Vec<String>, String, String)],
    controllers: &str,
    path: &str,
) -> Option<String> {
    let (_, root, point) = mounts.iter().find(|(options, _, _)| {
        if controllers.is_empty() {
            options.is_empty()
        } else {
            !options.is_empty()
                && controllers
                    .split(',')
                    .all(|c| options.iter().any(|o| o == c))
        }
    })?;
    let relative = if root == "/" {
        path
    } else {
        path.strip_prefix(root.as_str())?
    };
    Some(
        format!("{point}{relative}")
            .trim_end_matches('/')
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_given_environment_goes_over_the_targets() {
        let mut env = vec![
            ("PATH".to_owned(), "/bin".to_owned()),
            ("USER".to_owned(), "garbled title".to_owned()),
        ];
        overlay_env(&mut env, b"USER=app\0EMPTY=\0WITH=an=equals\0no pair\0");
        env.sort();
        assert_eq!(
            env,
            [
                ("EMPTY".to_owned(), String::new()),
                ("PATH".to_owned(), "/bin".to_owned()),
                ("USER".to_owned(), "app".to_owned()),
                ("WITH".to_owned(), "an=equals".to_owned()),
            ]
        );
    }

    use super::*;

    const MOUNTINFO: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn cgroup_paths_map_to_their_mount_points() {
        let mounts = cgroup_mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            hierarchy_dir(&mounts, "memory", "/pc/a").as_deref(),
            Some("/sys/fs/cgroup/memory/pc/a")
        );
        assert_eq!(
            hierarchy_dir(&mounts, "", "/pc/a").as_deref(),
            Some("/sys/fs/cgroup/unified/pc/a")
        );
        assert_eq!(
            hierarchy_dir(&mounts, "name=systemd", "/").as_deref(),
            Some("/sys/fs/cgroup/systemd")
        );
        assert_eq!(hierarchy_dir(&mounts, "pids", "/pc/a"), None);
    }

    #[tokio::test]
    async fn a_chatty_command_keeps_only_the_end_of_its_output() {
        let text: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let kept = read_last(Some(&text[..]), 1000).await;
        assert_eq!(kept.len(), 1000);
        assert!(kept.ends_with(b"line 9999\n"));
        assert_eq!(read_last(Some(&b"short"[..]), 1000).await, b"short");
    }

    #[test]
    fn status_gives_the_effective_ids_and_bounding_set() {
        let status = "Name:\tsh\nUid:\t1000\t1001\t1001\t1001\nGid:\t50\t51\t51\t51\n\
                      Groups:\t51 4 \nCapBnd:\t0000000000000400\n";
        let (id, kept) = parse_status(status).unwrap();
        assert_eq!((id.uid, id.gid, id.groups), (1001, 51, vec![51, 4]));
        assert_eq!(kept.len(), 1);
        assert!(parse_status("Name:\tx\n").is_none());
    }
}
