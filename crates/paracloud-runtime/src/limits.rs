//! A process's resource limits (Compose's `ulimits`) and the kernel parameters of an instance's
//! own namespaces (Compose's `sysctls`), set by sandbox-init before it execs the command.

use std::fs::File;
use std::io::Write;

use nix::fcntl::{openat, OFlag};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;

use crate::Rlimit;

type InitResult<T> = std::result::Result<T, String>;

/// The sysctl prefixes that belong to an instance's own namespaces (network, IPC), as Docker
/// allows them; every other one would change the host. The manifest refuses the others first:
/// this check is the runtime's own, as it writes them as root.
pub const NAMESPACED_SYSCTLS: &[&str] = &[
    "net.",
    "kernel.shm",
    "kernel.msg",
    "kernel.sem",
    "fs.mqueue.",
];

/// Whether `name` is a kernel parameter of the instance's own namespaces, written as a path of
/// dotted words.
pub fn is_namespaced_sysctl(name: &str) -> bool {
    NAMESPACED_SYSCTLS.iter().any(|p| name.starts_with(p))
        && name.split('.').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        })
}

/// The resource of a limit's name (`nofile`, `nproc`, ...).
pub fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "as" => Resource::RLIMIT_AS,
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

pub(crate) fn set_rlimits(limits: &[Rlimit]) -> InitResult<()> {
    for l in limits {
        let resource =
            resource(&l.resource).ok_or_else(|| format!("unknown ulimit {:?}", l.resource))?;
        setrlimit(resource, l.soft, l.hard).map_err(|e| {
            format!(
                "cannot set ulimit {} to soft {} hard {}: {e}",
                l.resource, l.soft, l.hard
            )
        })?;
    }
    Ok(())
}

/// Writes each parameter through `dir`, the instance's /proc/sys opened before it was made
/// read-only.
pub(crate) fn set_sysctls(dir: &File, sysctls: &[(String, String)]) -> InitResult<()> {
    for (name, value) in sysctls {
        if !is_namespaced_sysctl(name) {
            return Err(format!(
                "sysctl {name} is not one of the instance's own namespaces"
            ));
        }
        let path = name.replace('.', "/");
        let fd = openat(
            dir,
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open sysctl {name}: {e}"))?;
        File::from(fd)
            .write_all(value.as_bytes())
            .map_err(|e| format!("cannot set sysctl {name} to {value:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_instance_s_own_kernel_parameters_are_namespaced() {
        for name in [
            "net.core.somaxconn",
            "net.ipv4.conf.eth0.rp_filter",
            "kernel.shmmax",
            "fs.mqueue.msg_max",
        ] {
            assert!(is_namespaced_sysctl(name), "{name}");
        }
        for name in [
            "kernel.panic",
            "vm.swappiness",
            "net..core",
            "net.core/../../x",
            "net.",
            "fs.file-max",
        ] {
            assert!(!is_namespaced_sysctl(name), "{name}");
        }
    }

    #[test]
    fn limits_are_known_by_their_name_without_rlimit() {
        assert_eq!(resource("nofile"), Some(Resource::RLIMIT_NOFILE));
        assert!(resource("files").is_none());
    }
}
