//! Instance cgroups on v1 (hybrid included) and v2 hosts: creation, limits and their changes,
//! usage, OOM count, kill.
//!
//! Every manager takes the cgroup filesystem root as a parameter, so tests run them over fixture
//! directories. **Invariant:** a manager never fails because the host is a v1/v2 hybrid; the
//! unified hierarchy of a hybrid host only tracks instances (it has no controllers there).

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Limits, Result, Usage};

/// The CFS period used for cpu limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// How long [`CgroupManager::destroy`] keeps killing and retrying before it gives up.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup layout a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Controllers on v1 hierarchies, no cgroup2 mounted.
    V1,
    /// Controllers on v1 hierarchies, plus a cgroup2 hierarchy (usually without controllers).
    Hybrid,
    /// One cgroup2 hierarchy with the controllers.
    V2,
}

/// The cgroups of instances, one per instance id, under a parent path.
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    fn mode(&self) -> CgroupMode;
    /// Creates the instance's cgroup in every hierarchy and sets its limits. A cgroup left over
    /// from an earlier instance with the same id is destroyed first.
    fn create(&self, id: &str, limits: &Limits) -> Result<()>;
    /// The cgroup2 directory a new process can be placed in at clone time (CLONE_INTO_CGROUP).
    fn clone_into_dir(&self, id: &str) -> Option<PathBuf>;
    /// Files into which a new, single-threaded instance process writes "0" to move itself into
    /// the instance's cgroup of every hierarchy that `clone_into_dir` does not cover (v1 `tasks`
    /// files). Moving oneself thread by thread skips the kernel's global threadgroup lock, whose
    /// writer side waits for an RCU grace period (about 10 ms) on every cgroup.procs write.
    fn join_files(&self, id: &str) -> Vec<PathBuf>;
    /// How many processes of the instance the OOM killer has ended.
    fn oom_kills(&self, id: &str) -> Result<u64>;
    fn usage(&self, id: &str) -> Result<Usage>;
    /// Changes the CPU limit of a running instance (`None`: unlimited); its processes get the
    /// new quota from the next CFS period on.
    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()>;
    /// The CPU (cores) and memory (bytes) limits the instance's cgroup has now (`None`:
    /// unlimited), whoever set them: the platform, or a node's runtime resizing a pod in place.
    fn limits(&self, id: &str) -> Result<(Option<f64>, Option<u64>)>;
    /// Kills every process in the instance's cgroup and removes it; idempotent.
    fn destroy(&self, id: &str) -> Result<()>;
    /// Whether a process whose `/proc/PID/cgroup` reads `proc_cgroup` is in the instance's
    /// cgroup (or below it), on the hierarchy the instance is placed in first: the cgroup2 one
    /// where there is one (hybrid hosts included), else the first v1 controller's.
    fn holds(&self, id: &str, proc_cgroup: &str) -> bool;
}

/// Whether `proc_cgroup` (the lines of `/proc/PID/cgroup`) puts the process at `path` or below
/// on the hierarchy whose line has `controller` among its controllers (`""`: cgroup2's `0::`).
fn in_cgroup(proc_cgroup: &str, controller: &str, path: &str) -> bool {
    proc_cgroup.lines().any(|line| {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(at)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let on = match controller {
            "" => controllers.is_empty(),
            name => controllers.split(',').any(|c| c == name),
        };
        on && (at == path
            || at
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/')))
    })
}

/// The path of an instance's cgroup as `/proc/PID/cgroup` shows it.
fn proc_path(parent: &str, id: &str) -> String {
    format!("/{}/{id}", parent.trim_matches('/'))
}

/// Finds the layout under `root` (normally /sys/fs/cgroup) and returns its manager.
pub fn detect(root: &Path, parent: &str) -> Result<Box<dyn CgroupManager>> {
    check_relative("cgroup parent", parent)?;
    if root.join("cgroup.controllers").is_file() {
        return Ok(Box::new(V2Manager::new(root, parent)));
    }
    Ok(Box::new(V1Manager::new(root, parent)?))
}

/// Cgroup v1 controllers, each on its own hierarchy (or co-mounted, e.g. "cpu,cpuacct").
#[derive(Debug)]
pub struct V1Manager {
    /// (controller, hierarchy root) for cpu, cpuacct, memory and pids when mounted.
    controllers: Vec<(&'static str, PathBuf)>,
    /// Distinct hierarchy roots among `controllers` (co-mounted controllers share one).
    hierarchies: Vec<PathBuf>,
    /// The cgroup2 hierarchy of a hybrid host, for tracking and cgroup.kill.
    unified: Option<PathBuf>,
    parent: String,
}

impl V1Manager {
    pub fn new(root: &Path, parent: &str) -> Result<Self> {
        check_relative("cgroup parent", parent)?;
        let mut controllers = Vec::new();
        let mut hierarchies: Vec<PathBuf> = Vec::new();
        let mut canonical: Vec<PathBuf> = Vec::new();
        for name in ["cpu", "cpuacct", "memory", "pids"] {
            let dir = root.join(name);
            if !dir.join("cgroup.procs").is_file() {
                continue;
            }
            let real = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if !canonical.contains(&real) {
                canonical.push(real);
                hierarchies.push(dir.clone());
            }
            controllers.push((name, dir));
        }
        if controllers.is_empty() {
            return Err(Error::Cgroup(format!(
                "no cgroup v1 hierarchy (cpu, cpuacct, memory, pids) and no cgroup2 under {}: \
                 mount the cgroup filesystems there or set the cgroup root",
                root.display()
            )));
        }
        let unified = Some(root.join("unified")).filter(|u| u.join("cgroup.procs").is_file());
        Ok(Self {
            controllers,
            hierarchies,
            unified,
            parent: parent.to_string(),
        })
    }

    fn controller_dir(&self, controller: &str, id: &str) -> Option<PathBuf> {
        self.controllers
            .iter()
            .find(|(name, _)| *name == controller)
            .map(|(_, root)| root.join(&self.parent).join(id))
    }

    /// Every directory of the instance: v1 hierarchies first, then the unified one.
    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .hierarchies
            .iter()
            .map(|h| h.join(&self.parent).join(id))
            .collect();
        if let Some(u) = &self.unified {
            dirs.push(u.join(&self.parent).join(id));
        }
        dirs
    }
}

impl CgroupManager for V1Manager {
    fn mode(&self) -> CgroupMode {
        if self.unified.is_some() {
            CgroupMode::Hybrid
        } else {
            CgroupMode::V1
        }
    }

    fn create(&self, id: &str, limits: &Limits) -> Result<()> {
        check_relative("instance id", id)?;
        let mut fresh = true;
        for dir in self.dirs(id) {
            fresh &= make_dir(&dir)?;
        }
        // A new cgroup starts unlimited; one left over from an earlier instance of the id is
        // reused, so its limits are reset to unlimited where none is asked.
        if limits.cpu.is_some() || !fresh {
            self.set_cpu(id, limits.cpu)?;
        }
        if let Some(dir) = self
            .controller_dir("memory", id)
            .filter(|_| limits.memory.is_some() || !fresh)
        {
            let value = limits.memory.map_or("-1".to_string(), |m| m.to_string());
            // Present only with swap accounting; memory+swap equal to memory means no swap. The
            // kernel keeps memsw >= limit at every step: raise memsw first on a reused cgroup.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let has_memsw = memsw.exists();
            if has_memsw && !fresh {
                let _ = write(&memsw, &value);
            }
            write(&dir.join("memory.limit_in_bytes"), &value)?;
            if has_memsw {
                write(&memsw, &value)?;
            }
            if limits.memory.is_some() {
                // Not writable in every kernel configuration; swap is already capped above.
                let _ = write(&dir.join("memory.swappiness"), "0");
            }
        } else if limits.memory.is_some() && self.controller_dir("memory", id).is_none() {
            return Err(missing_hierarchy("a memory limit", id, "memory"));
        }
        // Reservations: set when asked, reset on a reused cgroup.
        for (controller, file, value, reset, what) in [
            (
                "memory",
                "memory.soft_limit_in_bytes",
                limits.memory_low,
                "-1",
                "a memory reservation",
            ),
            (
                "cpu",
                "cpu.shares",
                limits.cpu_shares,
                "1024",
                "a CPU reservation",
            ),
        ] {
            match (self.controller_dir(controller, id), value) {
                (Some(dir), Some(value)) => write(&dir.join(file), &value.to_string())?,
                (Some(dir), None) if !fresh && dir.join(file).exists() => {
                    write(&dir.join(file), reset)?
                }
                (None, Some(_)) => return Err(missing_hierarchy(what, id, controller)),
                _ => {}
            }
        }
        if let Some(dir) = self.controller_dir("pids", id) {
            if limits.pids.is_some() || !fresh {
                let value = limits.pids.map_or("max".to_string(), |p| p.to_string());
                write(&dir.join("pids.max"), &value)?;
            }
        } else if limits.pids.is_some() {
            return Err(missing_hierarchy("a pids limit", id, "pids"));
        }
        Ok(())
    }

    fn clone_into_dir(&self, id: &str) -> Option<PathBuf> {
        self.unified.as_ref().map(|u| u.join(&self.parent).join(id))
    }

    fn join_files(&self, id: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.join(&self.parent).join(id).join("tasks"))
            .collect()
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        match self.controller_dir("memory", id) {
            Some(dir) => Ok(keyed_value(
                &read(&dir.join("memory.oom_control"))?,
                "oom_kill",
            )),
            None => Ok(0),
        }
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        let number = |controller: &str, file: &str| -> Result<u64> {
            match self.controller_dir(controller, id) {
                Some(dir) => parse_number(&dir.join(file)),
                None => Ok(0),
            }
        };
        Ok(Usage {
            memory_bytes: number("memory", "memory.usage_in_bytes")?,
            cpu_usage_ns: number("cpuacct", "cpuacct.usage")?,
            pids: number("pids", "pids.current")?,
        })
    }

    fn limits(&self, id: &str) -> Result<(Option<f64>, Option<u64>)> {
        check_relative("instance id", id)?;
        let cpu = match self.controller_dir("cpu", id) {
            Some(dir) => {
                let quota = read(&dir.join("cpu.cfs_quota_us"))?;
                let period = read(&dir.join("cpu.cfs_period_us"))?;
                cpu_of_quota(quota.trim(), period.trim())
            }
            None => None,
        };
        let memory = match self.controller_dir("memory", id) {
            Some(dir) => memory_of_limit(read(&dir.join("memory.limit_in_bytes"))?.trim()),
            None => None,
        };
        Ok((cpu, memory))
    }

    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()> {
        check_relative("instance id", id)?;
        match self.controller_dir("cpu", id) {
            Some(dir) => {
                let quota = cpu.map_or(-1, |cpu| cpu_quota_us(cpu) as i64);
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            None if cpu.is_some() => Err(missing_hierarchy("a cpu limit", id, "cpu")),
            None => Ok(()),
        }
    }

    fn holds(&self, id: &str, proc_cgroup: &str) -> bool {
        let controller = match (&self.unified, self.controllers.first()) {
            (Some(_), _) => "",
            (None, Some((name, _))) => name,
            (None, None) => return false,
        };
        in_cgroup(proc_cgroup, controller, &proc_path(&self.parent, id))
    }

    fn destroy(&self, id: &str) -> Result<()> {
        check_relative("instance id", id)?;
        if let Some(unified) = self.clone_into_dir(id) {
            kill_via_cgroup_kill(&unified)?;
        }
        remove_dirs(&self.dirs(id))
    }
}

/// The cgroup2 hierarchy with controllers.
#[derive(Debug)]
pub struct V2Manager {
    root: PathBuf,
    parent: String,
}

impl V2Manager {
    pub fn new(root: &Path, parent: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            parent: parent.to_string(),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(&self.parent).join(id)
    }

    /// Creates the parent path and delegates the controllers an instance needs down to it.
    fn prepare_parent(&self) -> Result<()> {
        let available = read(&self.root.join("cgroup.controllers"))?;
        let wanted: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let mut level = self.root.clone();
        let components: Vec<&str> = self.parent.split('/').filter(|c| !c.is_empty()).collect();
        for (i, component) in std::iter::once("").chain(components).enumerate() {
            if i > 0 {
                level.push(component);
                make_dir(&level)?;
            }
            let control = level.join("cgroup.subtree_control");
            let enabled = read(&control)?;
            let missing: Vec<String> = wanted
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                write(&control, &missing.join(" "))?;
            }
        }
        Ok(())
    }
}

/// cgroup v2's cpu.weight (1 to 10000, 100 by default) for v1's cpu.shares (2 to 262144, 1024 by
/// default), as systemd and the OCI runtimes convert it.
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl CgroupManager for V2Manager {
    fn mode(&self) -> CgroupMode {
        CgroupMode::V2
    }

    fn create(&self, id: &str, limits: &Limits) -> Result<()> {
        check_relative("instance id", id)?;
        self.prepare_parent()?;
        let dir = self.dir(id);
        let fresh = make_dir(&dir)?;
        // A new cgroup starts unlimited; one left over from an earlier instance of the id is
        // reused, so its limits are reset to unlimited where none is asked.
        let set = |file: &str, limit: Option<String>, unlimited: &str, what: &str| -> Result<()> {
            let path = dir.join(file);
            match (path.exists(), limit) {
                (true, None) if fresh => Ok(()),
                (true, limit) => write(&path, limit.as_deref().unwrap_or(unlimited)),
                (false, None) => Ok(()),
                (false, Some(_)) => Err(Error::Cgroup(format!(
                    "{what} requested for {id} but {} is missing: enable the controller in {}",
                    path.display(),
                    self.root.join("cgroup.subtree_control").display()
                ))),
            }
        };
        set(
            "cpu.max",
            limits.cpu.map(|c| cpu_max(Some(c))),
            "max",
            "a cpu limit",
        )?;
        set(
            "memory.max",
            limits.memory.map(|m| m.to_string()),
            "max",
            "a memory limit",
        )?;
        let swap = dir.join("memory.swap.max");
        if (limits.memory.is_some() || !fresh) && swap.exists() {
            write(&swap, if limits.memory.is_some() { "0" } else { "max" })?;
        }
        set(
            "pids.max",
            limits.pids.map(|p| p.to_string()),
            "max",
            "a pids limit",
        )?;
        set(
            "memory.low",
            limits.memory_low.map(|m| m.to_string()),
            "0",
            "a memory reservation",
        )?;
        set(
            "cpu.weight",
            limits.cpu_shares.map(|s| cpu_weight(s).to_string()),
            "100",
            "a CPU reservation",
        )?;
        Ok(())
    }

    fn clone_into_dir(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir(id))
    }

    fn holds(&self, id: &str, proc_cgroup: &str) -> bool {
        in_cgroup(proc_cgroup, "", &proc_path(&self.parent, id))
    }

    fn join_files(&self, _id: &str) -> Vec<PathBuf> {
        // The only hierarchy; clone3 places the process.
        Vec::new()
    }

    fn oom_kills(&self, id: &str) -> Result<u64> {
        let events = self.dir(id).join("memory.events");
        if !events.exists() {
            return Ok(0);
        }
        Ok(keyed_value(&read(&events)?, "oom_kill"))
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        let dir = self.dir(id);
        let optional = |file: &str| -> Result<u64> {
            let path = dir.join(file);
            if path.exists() {
                parse_number(&path)
            } else {
                Ok(0)
            }
        };
        let cpu_stat = dir.join("cpu.stat");
        let cpu_usage_ns = if cpu_stat.exists() {
            keyed_value(&read(&cpu_stat)?, "usage_usec") * 1000
        } else {
            0
        };
        Ok(Usage {
            memory_bytes: optional("memory.current")?,
            cpu_usage_ns,
            pids: optional("pids.current")?,
        })
    }

    fn limits(&self, id: &str) -> Result<(Option<f64>, Option<u64>)> {
        check_relative("instance id", id)?;
        let dir = self.dir(id);
        let optional = |file: &str| -> Result<Option<String>> {
            let path = dir.join(file);
            path.exists().then(|| read(&path)).transpose()
        };
        let cpu = optional("cpu.max")?.and_then(|max| {
            let (quota, period) = max.trim().split_once(' ')?;
            cpu_of_quota(quota, period)
        });
        let memory = optional("memory.max")?.and_then(|max| memory_of_limit(max.trim()));
        Ok((cpu, memory))
    }

    fn set_cpu(&self, id: &str, cpu: Option<f64>) -> Result<()> {
        check_relative("instance id", id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(Error::Cgroup(format!(
                "no cgroup {}: the instance {id} is gone",
                dir.display()
            )));
        }
        let path = dir.join("cpu.max");
        if !path.exists() {
            return match cpu {
                Some(_) => Err(Error::Cgroup(format!(
                    "a cpu limit requested for {id} but {} is missing: enable the cpu controller in {}",
                    path.display(),
                    self.root.join("cgroup.subtree_control").display()
                ))),
                None => Ok(()),
            };
        }
        write(&path, &cpu_max(cpu))
    }

    fn destroy(&self, id: &str) -> Result<()> {
        check_relative("instance id", id)?;
        let dir = self.dir(id);
        kill_via_cgroup_kill(&dir)?;
        remove_dirs(&[dir])
    }
}

fn missing_hierarchy(what: &str, id: &str, controller: &str) -> Error {
    Error::Cgroup(format!(
        "{what} requested for {id} but no {controller} cgroup hierarchy is mounted"
    ))
}

/// The content of cgroup2's cpu.max for a limit in cores (`None`: unlimited).
fn cpu_max(cpu: Option<f64>) -> String {
    match cpu {
        Some(cpu) => format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpu)),
        None => "max".to_owned(),
    }
}

/// cpu.cfs_quota_us (and the quota of cpu.max) for a fraction of cores; at least 1 ms.
pub fn cpu_quota_us(cpu: f64) -> u64 {
    ((cpu * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The number after `key` in a "key value" per line file (memory.events, cpu.stat, ...); 0 when
/// absent.
pub fn keyed_value(content: &str, key: &str) -> u64 {
    content
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn check_relative(what: &str, value: &str) -> Result<()> {
    let bad = value.is_empty()
        || value.starts_with('/')
        || value
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Cgroup(format!(
            "{what} {value:?} must be a non-empty relative path without '.' or '..' components"
        )));
    }
    Ok(())
}

/// Creates `dir` and its parents; true when `dir` itself was new.
fn make_dir(dir: &Path) -> Result<bool> {
    let failed = |e: std::io::Error| Error::Cgroup(format!("cannot create {}: {e}", dir.display()));
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(failed)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(failed(e)),
    }
}

/// Writes a control file, which must exist (cgroupfs creates them with the directory). O_TRUNC,
/// as a shell's `>` does, is harmless on cgroupfs and keeps fixture files exact.
fn write(path: &Path, value: &str) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Error::Cgroup(format!("cannot write {value:?} to {}: {e}", path.display())))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|e| Error::Cgroup(format!("cannot read {}: {e}", path.display())))
}

/// Cores from a CFS quota and period as the cgroup files read (v1: `-1` unlimited; v2's
/// `cpu.max`: `max`).
fn cpu_of_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok().filter(|p| *p > 0)?;
    Some(quota as f64 / period as f64)
}

/// Bytes from a memory limit file (v2: `max`; v1: a page-rounded `i64::MAX` when unlimited).
fn memory_of_limit(limit: &str) -> Option<u64> {
    limit.parse().ok().filter(|bytes| *bytes < 1 << 62)
}

fn parse_number(path: &Path) -> Result<u64> {
    let content = read(path)?;
    content.trim().parse().map_err(|_| {
        Error::Cgroup(format!(
            "unexpected content {:?} in {}",
            content.trim(),
            path.display()
        ))
    })
}

/// Writes cgroup.kill (cgroup2, Linux 5.14+) when the directory has one: the kernel then kills
/// every process of the cgroup, including those forked meanwhile.
fn kill_via_cgroup_kill(dir: &Path) -> Result<()> {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        match fs::OpenOptions::new()
            .write(true)
            .open(&kill)
            .and_then(|mut f| f.write_all(b"1"))
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Cgroup(format!(
                    "cannot write to {}: {e}",
                    kill.display()
                )))
            }
        }
    }
    Ok(())
}

/// SIGKILLs what is left in each directory and removes it, retrying while the kernel finishes
/// the exits (rmdir answers EBUSY until the cgroup is empty).
fn remove_dirs(dirs: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + DESTROY_TIMEOUT;
    let mut pause = Duration::from_micros(500);
    let mut pending: Vec<&PathBuf> = dirs.iter().collect();
    loop {
        let mut busy = Vec::new();
        for dir in pending {
            match try_remove(dir) {
                Ok(true) => {}
                Ok(false) => busy.push(dir),
                Err(e) => return Err(e),
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = busy.iter().map(|d| d.display().to_string()).collect();
            return Err(Error::Cgroup(format!(
                "cannot remove {}: still busy after {:?}",
                names.join(", "),
                DESTROY_TIMEOUT
            )));
        }
        pending = busy;
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Ok(true) when the directory is gone, Ok(false) when it still has processes.
fn try_remove(dir: &Path) -> Result<bool> {
    let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) => procs,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(!dir.exists()),
        Err(e) => {
            return Err(Error::Cgroup(format!(
                "cannot read {}: {e}",
                dir.join("cgroup.procs").display()
            )))
        }
    };
    let mut any = false;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        any = true;
        // The process may be gone already; the next round reads the file again.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if any {
        return Ok(false);
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(Error::Cgroup(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_instance_holds_the_processes_of_its_cgroup_and_below_on_one_hierarchy() {
        let hybrid = "4:memory:/elsewhere\n2:cpu,cpuacct:/pc/shop-web-1\n0::/pc/shop-web-1\n";
        assert!(super::in_cgroup(hybrid, "", "/pc/shop-web-1"));
        assert!(super::in_cgroup(hybrid, "cpu", "/pc/shop-web-1"));
        assert!(!super::in_cgroup(hybrid, "memory", "/pc/shop-web-1"));
        assert!(super::in_cgroup(
            "0::/pc/shop-web-1/sub\n",
            "",
            "/pc/shop-web-1"
        ));
        // A sibling whose name starts the same is another instance.
        assert!(!super::in_cgroup(
            "0::/pc/shop-web-10\n",
            "",
            "/pc/shop-web-1"
        ));
        // The v1 line of an unrelated hierarchy does not speak for the unified one.
        assert!(!super::in_cgroup(
            "1:cpu:/pc/shop-web-1\n0::/\n",
            "",
            "/pc/shop-web-1"
        ));
        assert_eq!(super::proc_path("pc/", "shop-web-1"), "/pc/shop-web-1");
    }

    use super::*;

    #[test]
    fn limits_read_as_both_hierarchies_write_them() {
        assert_eq!(cpu_of_quota("50000", "100000"), Some(0.5));
        assert_eq!(cpu_of_quota("150000", "100000"), Some(1.5));
        assert_eq!(cpu_of_quota("-1", "100000"), None);
        assert_eq!(cpu_of_quota("max", "100000"), None);
        assert_eq!(cpu_of_quota("50000", "0"), None);
        assert_eq!(memory_of_limit("268435456"), Some(268_435_456));
        assert_eq!(memory_of_limit("max"), None);
        assert_eq!(memory_of_limit("9223372036854771712"), None);
    }

    /// Writes files the way cgroupfs would have created them.
    fn touch(dir: &Path, files: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for f in files {
            fs::write(dir.join(f), "").unwrap();
        }
    }

    fn content(path: PathBuf) -> String {
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    const V1_CPU: &[&str] = &["cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us"];
    const V1_MEMORY: &[&str] = &[
        "cgroup.procs",
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.swappiness",
        "memory.oom_control",
        "memory.usage_in_bytes",
    ];

    fn v1_fixture(hybrid: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(&r.join("cpu"), &["cgroup.procs"]);
        touch(&r.join("cpuacct"), &["cgroup.procs"]);
        touch(&r.join("memory"), &["cgroup.procs"]);
        touch(&r.join("pids"), &["cgroup.procs"]);
        touch(&r.join("cpu/pc/a"), V1_CPU);
        touch(&r.join("cpuacct/pc/a"), &["cgroup.procs", "cpuacct.usage"]);
        touch(&r.join("memory/pc/a"), V1_MEMORY);
        touch(
            &r.join("pids/pc/a"),
            &["cgroup.procs", "pids.max", "pids.current"],
        );
        if hybrid {
            touch(&r.join("unified"), &["cgroup.procs", "cgroup.controllers"]);
        }
        root
    }

    #[test]
    fn detect_picks_the_layout() {
        let v1 = v1_fixture(false);
        assert_eq!(detect(v1.path(), "pc").unwrap().mode(), CgroupMode::V1);
        let hybrid = v1_fixture(true);
        assert_eq!(
            detect(hybrid.path(), "pc").unwrap().mode(),
            CgroupMode::Hybrid
        );
        let v2 = tempfile::tempdir().unwrap();
        touch(v2.path(), &["cgroup.controllers", "cgroup.procs"]);
        assert_eq!(detect(v2.path(), "pc").unwrap().mode(), CgroupMode::V2);
        let empty = tempfile::tempdir().unwrap();
        let err = detect(empty.path(), "pc").unwrap_err().to_string();
        assert!(err.contains("no cgroup v1 hierarchy"), "{err}");
    }

    #[test]
    fn parent_and_id_must_stay_below_the_root() {
        let v1 = v1_fixture(false);
        assert!(detect(v1.path(), "../escape").is_err());
        assert!(detect(v1.path(), "/abs").is_err());
        let m = V1Manager::new(v1.path(), "pc").unwrap();
        assert!(m.create("../x", &Limits::default()).is_err());
    }

    #[test]
    fn v1_limits_are_written_to_each_controller() {
        let root = v1_fixture(true);
        let m = V1Manager::new(root.path(), "pc").unwrap();
        let limits = Limits {
            cpu: Some(0.5),
            memory: Some(32 << 20),
            pids: Some(20),
            disk: None,
            ..Limits::default()
        };
        m.create("a", &limits).unwrap();
        let r = root.path();
        assert_eq!(content(r.join("cpu/pc/a/cpu.cfs_period_us")), "100000");
        assert_eq!(content(r.join("cpu/pc/a/cpu.cfs_quota_us")), "50000");
        assert_eq!(
            content(r.join("memory/pc/a/memory.limit_in_bytes")),
            "33554432"
        );
        assert_eq!(
            content(r.join("memory/pc/a/memory.memsw.limit_in_bytes")),
            "33554432"
        );
        assert_eq!(content(r.join("memory/pc/a/memory.swappiness")), "0");
        assert_eq!(content(r.join("pids/pc/a/pids.max")), "20");
        assert!(r.join("unified/pc/a").is_dir(), "tracking cgroup on hybrid");
        assert_eq!(m.clone_into_dir("a"), Some(r.join("unified/pc/a")));

        let joins: Vec<PathBuf> = ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| r.join(c).join("pc/a/tasks"))
            .collect();
        assert_eq!(m.join_files("a"), joins);

        // Changed while it runs, then lifted.
        m.set_cpu("a", Some(1.5)).unwrap();
        assert_eq!(content(r.join("cpu/pc/a/cpu.cfs_quota_us")), "150000");
        m.set_cpu("a", None).unwrap();
        assert_eq!(content(r.join("cpu/pc/a/cpu.cfs_quota_us")), "-1");
        m.set_cpu("a", Some(0.5)).unwrap();

        // Reused for a later instance without limits: everything back to unlimited.
        m.create("a", &Limits::default()).unwrap();
        assert_eq!(content(r.join("cpu/pc/a/cpu.cfs_quota_us")), "-1");
        assert_eq!(content(r.join("memory/pc/a/memory.limit_in_bytes")), "-1");
        assert_eq!(
            content(r.join("memory/pc/a/memory.memsw.limit_in_bytes")),
            "-1"
        );
        assert_eq!(content(r.join("pids/pc/a/pids.max")), "max");
    }

    #[test]
    fn v1_missing_hierarchy_fails_only_when_its_limit_is_asked() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("memory"), &["cgroup.procs"]);
        touch(&root.path().join("memory/pc/y"), V1_MEMORY);
        let m = V1Manager::new(root.path(), "pc").unwrap();
        assert_eq!(m.mode(), CgroupMode::V1);
        m.create("y", &Limits::default()).unwrap();
        let pids = Limits {
            pids: Some(5),
            ..Limits::default()
        };
        let err = m.create("y", &pids).unwrap_err().to_string();
        assert!(err.contains("no pids cgroup hierarchy"), "{err}");
    }

    #[test]
    fn v1_usage_and_oom_are_read_from_the_controllers() {
        let root = v1_fixture(false);
        let r = root.path();
        fs::write(r.join("memory/pc/a/memory.usage_in_bytes"), "1048576\n").unwrap();
        fs::write(r.join("cpuacct/pc/a/cpuacct.usage"), "123456789\n").unwrap();
        fs::write(r.join("pids/pc/a/pids.current"), "3\n").unwrap();
        fs::write(
            r.join("memory/pc/a/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let m = V1Manager::new(r, "pc").unwrap();
        let u = m.usage("a").unwrap();
        assert_eq!(
            (u.memory_bytes, u.cpu_usage_ns, u.pids),
            (1048576, 123456789, 3)
        );
        assert_eq!(m.oom_kills("a").unwrap(), 2);
    }

    #[test]
    fn v2_delegates_controllers_and_writes_limits() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(
            r,
            &[
                "cgroup.controllers",
                "cgroup.subtree_control",
                "cgroup.procs",
            ],
        );
        fs::write(
            r.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        touch(&r.join("pc"), &["cgroup.subtree_control"]);
        let files = [
            "cgroup.procs",
            "cpu.max",
            "cpu.weight",
            "memory.max",
            "memory.low",
            "memory.swap.max",
            "pids.max",
        ];
        touch(&r.join("pc/i1"), &files);
        let m = V2Manager::new(r, "pc");
        let limits = Limits {
            cpu: Some(1.5),
            memory: Some(64 << 20),
            pids: Some(100),
            disk: None,
            memory_low: Some(16 << 20),
            cpu_shares: Some(512),
        };
        m.create("i1", &limits).unwrap();
        assert_eq!(
            content(r.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            content(r.join("pc/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(content(r.join("pc/i1/cpu.max")), "150000 100000");
        assert_eq!(content(r.join("pc/i1/memory.max")), "67108864");
        assert_eq!(content(r.join("pc/i1/memory.swap.max")), "0");
        assert_eq!(content(r.join("pc/i1/pids.max")), "100");
        assert_eq!(content(r.join("pc/i1/memory.low")), "16777216");
        // systemd's linear conversion: 512 shares is weight 20, 1024 is 39.
        assert_eq!(content(r.join("pc/i1/cpu.weight")), "20");
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!((cpu_weight(2), cpu_weight(262_144)), (1, 10000));
        assert_eq!(m.clone_into_dir("i1"), Some(r.join("pc/i1")));
        m.set_cpu("i1", Some(0.25)).unwrap();
        assert_eq!(content(r.join("pc/i1/cpu.max")), "25000 100000");
        m.set_cpu("i1", None).unwrap();
        assert_eq!(content(r.join("pc/i1/cpu.max")), "max");
        let err = |id| m.set_cpu(id, Some(1.0)).unwrap_err().to_string();
        assert!(err("gone").contains("the instance gone is gone"));
        fs::create_dir_all(r.join("pc/no-cpu")).unwrap();
        assert!(
            err("no-cpu").contains("enable the cpu controller"),
            "a cgroup without cpu.max cannot take a limit"
        );
        m.set_cpu("i1", Some(1.5)).unwrap();

        m.create("i1", &Limits::default()).unwrap();
        assert_eq!(content(r.join("pc/i1/cpu.max")), "max");
        assert_eq!(content(r.join("pc/i1/memory.swap.max")), "max");
        assert_eq!(content(r.join("pc/i1/memory.low")), "0");
        assert_eq!(content(r.join("pc/i1/cpu.weight")), "100");
    }

    #[test]
    fn v2_usage_and_oom() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(r, &["cgroup.controllers"]);
        touch(&r.join("pc/a"), &[]);
        fs::write(r.join("pc/a/memory.current"), "4096\n").unwrap();
        fs::write(r.join("pc/a/cpu.stat"), "usage_usec 250\nuser_usec 200\n").unwrap();
        fs::write(r.join("pc/a/pids.current"), "7\n").unwrap();
        fs::write(
            r.join("pc/a/memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let m = V2Manager::new(r, "pc");
        let u = m.usage("a").unwrap();
        assert_eq!((u.memory_bytes, u.cpu_usage_ns, u.pids), (4096, 250_000, 7));
        assert_eq!(m.oom_kills("a").unwrap(), 1);
        assert_eq!(m.oom_kills("missing").unwrap(), 0);
    }

    #[test]
    fn v2_limit_without_its_controller_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        touch(r, &["cgroup.controllers", "cgroup.subtree_control"]);
        fs::write(r.join("cgroup.controllers"), "memory\n").unwrap();
        touch(&r.join("pc"), &["cgroup.subtree_control"]);
        let m = V2Manager::new(r, "pc");
        let err = m
            .create(
                "x",
                &Limits {
                    cpu: Some(1.0),
                    ..Limits::default()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpu limit requested"), "{err}");
    }

    #[test]
    fn quota_and_keyed_values() {
        assert_eq!(cpu_quota_us(0.25), 25_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.001), 1000);
        assert_eq!(keyed_value("a 1\noom_kill 5\n", "oom_kill"), 5);
        assert_eq!(keyed_value("oom_kill_disable 1\n", "oom_kill"), 0);
    }
}
