//! Whether a process is one of a container's: in its cgroup or below, as the local runtime's
//! [`paracloud_runtime::CgroupManager::holds`] decides it for an instance (on the cgroup2
//! hierarchy, or the first v1 controller's on a v1-only node); and the limits the container's
//! cgroup has now.

use std::path::Path;

/// Whether `pid` (of the node's pid namespace) is in the cgroup `cgroup` (as `/proc/PID/cgroup`
/// shows it, e.g. `/kubepods/podUID/ID`) or below it.
pub fn holds(cgroup_root: &Path, cgroup: &str, pid: i32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    holds_in(cgroup_root, cgroup, &text)
}

/// The CPU and memory limits of the container's cgroup `cgroup` now; none when it cannot be
/// read (the container is going).
pub fn limits(cgroup_root: &Path, cgroup: &str) -> Option<crate::agent::Limits> {
    let (parent, id) = cgroup.trim_matches('/').rsplit_once('/')?;
    let manager = paracloud_runtime::cgroups::detect(cgroup_root, parent).ok()?;
    manager.limits(id).ok()
}

fn holds_in(cgroup_root: &Path, cgroup: &str, proc_cgroup: &str) -> bool {
    let path = cgroup.trim_matches('/');
    let Some((parent, id)) = path.rsplit_once('/') else {
        return false;
    };
    match paracloud_runtime::cgroups::detect(cgroup_root, parent) {
        Ok(manager) => manager.holds(id, proc_cgroup),
        Err(e) => {
            tracing::warn!("cgroup {cgroup}: {e}");
            false
        }
    }
}
