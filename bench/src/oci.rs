//! crun and runc: an OCI bundle over the shared root filesystem, run by a worker process that
//! lives in a private mount namespace where /sys/fs/cgroup/unified is unmounted (on this host's
//! hybrid cgroup layout they refuse to run otherwise). The bench talks to the worker with one JSON
//! line per request and per answer, so crun and runc runs interleave with the others.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::probe::{self, Ready};

/// The hidden subcommand of the bench binary that runs the worker.
pub const WORKER_COMMAND: &str = "__oci-worker";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OciRuntime {
    Crun,
    Runc,
}

impl OciRuntime {
    pub fn binary(self) -> &'static str {
        match self {
            OciRuntime::Crun => "crun",
            OciRuntime::Runc => "runc",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToWorker {
    /// Start a container serving on 127.0.0.1:`port`, wait until it answers, then delete it.
    Run {
        runtime: OciRuntime,
        id: String,
        port: u16,
        limit_ms: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FromWorker {
    /// The mount namespace is ready; whether the cgroup2 mount was there to remove.
    Ready {
        unified_unmounted: bool,
    },
    Done {
        ready: Ready,
    },
    Failed {
        error: String,
    },
}

/// What the worker needs, passed on its command line.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    pub rootfs: PathBuf,
    pub workdir: PathBuf,
    /// Containers go to the cgroup `/<cgroup_parent>/<id>` of each hierarchy.
    pub cgroup_parent: String,
}

/// The bundle's config.json: `crun spec`'s defaults (mounts, masked paths, capabilities,
/// no_new_privs, a read-only root) with busybox httpd as the process, and no network namespace:
/// the container shares the host's, so that its loopback port is reachable.
pub fn bundle_config(rootfs: &Path, port: u16, hostname: &str, cgroups_path: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/busybox", "httpd", "-f", "-p", port.to_string(), "-h", "/www"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps,
                "inheritable": []
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": hostname,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// The worker's main: private mounts, then one container run per request line until stdin ends.
pub fn worker_main(setup: &WorkerSetup) -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / rprivate")?;
    let unified_unmounted = match umount2(UNIFIED, MntFlags::MNT_DETACH) {
        Ok(()) => true,
        // Not a mount point here (a plain v1 or a pure v2 host): nothing to hide.
        Err(Errno::EINVAL | Errno::ENOENT) => false,
        Err(e) => return Err(anyhow!("umount2({UNIFIED}, MNT_DETACH): {e}")),
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut send = |message: &FromWorker| -> Result<()> {
        serde_json::to_writer(&mut out, message)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    };
    send(&FromWorker::Ready { unified_unmounted })?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let ToWorker::Run {
            runtime,
            id,
            port,
            limit_ms,
        } = serde_json::from_str(&line).with_context(|| format!("bad request {line:?}"))?;
        let answer = match run_container(setup, runtime, &id, port, Duration::from_millis(limit_ms))
        {
            Ok(ready) => FromWorker::Done { ready },
            Err(e) => FromWorker::Failed {
                error: format!("{e:#}"),
            },
        };
        send(&answer)?;
    }
    Ok(())
}

/// One timed run: from just before `RUNTIME run -d` is spawned to the HTTP answer; the delete
/// comes after the clock stops.
fn run_container(
    setup: &WorkerSetup,
    runtime: OciRuntime,
    id: &str,
    port: u16,
    limit: Duration,
) -> Result<Ready> {
    let base = setup.workdir.join(runtime.binary());
    let bundle = base.join("bundle");
    let state = base.join("state");
    fs::create_dir_all(&bundle)?;
    let config = bundle_config(
        &setup.rootfs,
        port,
        "bench",
        &format!("/{}/{id}", setup.cgroup_parent),
    );
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let log_path = base.join(format!("{id}.log"));
    let log = File::create(&log_path)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if probe::is_listening(addr) {
        bail!("{addr} is already in use: pick another --port-base");
    }

    let start = Instant::now();
    let mut child = Command::new(runtime.binary())
        .arg("--root")
        .arg(&state)
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", runtime.binary()))?;
    let ready = probe::wait_http(addr, start, limit, &mut || match child.try_wait()? {
        Some(status) if !status.success() => {
            bail!("`{} run -d` failed: {status}", runtime.binary())
        }
        _ => Ok(()),
    });
    // `run -d` exits once the container process runs; reap it after the clock stopped.
    let status = child.wait();
    let deleted = Command::new(runtime.binary())
        .arg("--root")
        .arg(&state)
        .args(["delete", "-f", id])
        .stdin(Stdio::null())
        .output();
    let log_text = || fs::read_to_string(&log_path).unwrap_or_default();
    let ready = ready.with_context(|| format!("{}: {}", runtime.binary(), log_text().trim()))?;
    let status = status?;
    if !status.success() {
        bail!(
            "`{} run -d` exited with {status}: {}",
            runtime.binary(),
            log_text().trim()
        );
    }
    let deleted = deleted?;
    if !deleted.status.success() {
        bail!(
            "`{} delete -f {id}` failed: {}",
            runtime.binary(),
            String::from_utf8_lossy(&deleted.stderr).trim()
        );
    }
    let _ = fs::remove_file(&log_path);
    Ok(ready)
}

/// The bench's side of the worker.
pub struct Worker {
    child: Child,
    to: Option<BufWriter<ChildStdin>>,
    from: BufReader<ChildStdout>,
    pub unified_unmounted: bool,
}

impl Worker {
    /// Re-executes the bench binary as the worker and waits for it to be ready.
    pub fn start(setup: &WorkerSetup) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let mut child = Command::new(exe)
            .arg(WORKER_COMMAND)
            .arg("--rootfs")
            .arg(&setup.rootfs)
            .arg("--workdir")
            .arg(&setup.workdir)
            .arg("--cgroup-parent")
            .arg(&setup.cgroup_parent)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Out of the terminal's process group: on Ctrl-C the bench, not the signal, ends it,
            // after the container of the current run is deleted.
            .process_group(0)
            .spawn()
            .context("cannot start the OCI worker")?;
        let to = child.stdin.take().map(BufWriter::new);
        let from = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut worker = Self {
            child,
            to,
            from,
            unified_unmounted: false,
        };
        match worker.receive()? {
            FromWorker::Ready { unified_unmounted } => worker.unified_unmounted = unified_unmounted,
            other => bail!("the OCI worker said {other:?} instead of ready"),
        }
        Ok(worker)
    }

    pub fn run(
        &mut self,
        runtime: OciRuntime,
        id: &str,
        port: u16,
        limit: Duration,
    ) -> Result<Ready> {
        let request = ToWorker::Run {
            runtime,
            id: id.to_string(),
            port,
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        let to = self.to.as_mut().context("the OCI worker is closed")?;
        serde_json::to_writer(&mut *to, &request)?;
        to.write_all(b"\n")?;
        to.flush()?;
        match self.receive()? {
            FromWorker::Done { ready } => Ok(ready),
            FromWorker::Failed { error } => Err(anyhow!(error)),
            other => bail!("unexpected answer from the OCI worker: {other:?}"),
        }
    }

    fn receive(&mut self) -> Result<FromWorker> {
        let mut line = String::new();
        if self.from.read_line(&mut line)? == 0 {
            bail!("the OCI worker exited (see its messages above)");
        }
        serde_json::from_str(&line)
            .with_context(|| format!("bad answer {line:?} from the OCI worker"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // End of input ends the worker; it deletes each container before answering.
        drop(self.to.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_runs_httpd_without_a_network_namespace() {
        let config = bundle_config(Path::new("/tmp/rootfs"), 20081, "bench", "/pb/c1");
        assert_eq!(config["process"]["args"][4], "20081");
        assert_eq!(config["root"]["path"], "/tmp/rootfs");
        assert_eq!(config["linux"]["cgroupsPath"], "/pb/c1");
        let namespaces: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["pid", "ipc", "uts", "mount"]);
    }

    #[test]
    fn messages_are_one_json_object_per_line() {
        let line = serde_json::to_string(&ToWorker::Run {
            runtime: OciRuntime::Runc,
            id: "c".into(),
            port: 1,
            limit_ms: 5,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"type":"run","runtime":"runc","id":"c","port":1,"limit_ms":5}"#
        );
        let ready: FromWorker =
            serde_json::from_str(r#"{"type":"ready","unified_unmounted":true}"#).unwrap();
        assert!(matches!(
            ready,
            FromWorker::Ready {
                unified_unmounted: true
            }
        ));
    }
}
