//! A service's sandbox keys: `init`, `read_only`, `tmpfs`, `shm_size`, `ulimits`, `sysctls`,
//! `userns`.

use std::collections::BTreeMap;

use toml::de::DeValue;

use crate::model::{Sandbox, TmpfsMount, Ulimit};
use crate::reader::{child, index, integer_value, Checker, Value};
use crate::service::{SHM, TMPFS};

/// The sysctl prefixes of an instance's own namespaces (network, IPC), as Docker allows them:
/// any other parameter would change the host. The runtime checks the same list again.
const NAMESPACED_SYSCTLS: &[&str] = &[
    "net.",
    "kernel.shm",
    "kernel.msg",
    "kernel.sem",
    "fs.mqueue.",
];

/// The resource limits a service may set, by their name without `RLIMIT_`.
const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

const TMPFS_KEYS: &[&str] = &["target", "size", "mode"];
const ULIMIT_KEYS: &[&str] = &["soft", "hard"];

/// Whether `name` is a dotted kernel parameter of the instance's own namespaces.
pub fn is_namespaced_sysctl(name: &str) -> bool {
    NAMESPACED_SYSCTLS.iter().any(|p| name.starts_with(p))
        && name.split('.').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        })
}

impl Checker<'_> {
    pub(crate) fn sandbox<'v, 'i: 'v>(
        &mut self,
        get: &dyn Fn(&str) -> Option<&'v Value<'i>>,
        field: &dyn Fn(&str) -> String,
    ) -> Sandbox {
        let flag = |c: &mut Self, key: &str| {
            get(key)
                .and_then(|v| c.boolean(v, &field(key)))
                .unwrap_or(false)
        };
        Sandbox {
            init: flag(self, "init"),
            read_only: flag(self, "read_only"),
            tmpfs: get("tmpfs")
                .and_then(|v| self.tmpfs(v, &field("tmpfs")))
                .unwrap_or_default(),
            shm_size: get("shm_size").and_then(|v| self.size(v, &field("shm_size"), &SHM)),
            ulimits: get("ulimits")
                .and_then(|v| self.ulimits(v, &field("ulimits")))
                .unwrap_or_default(),
            sysctls: get("sysctls")
                .and_then(|v| self.sysctls(v, &field("sysctls")))
                .unwrap_or_default(),
            host_ids: get("userns")
                .and_then(|v| self.boolean(v, &field("userns")))
                .is_some_and(|userns| !userns),
        }
    }

    fn tmpfs(&mut self, value: &Value<'_>, field: &str) -> Option<Vec<TmpfsMount>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(value, field, "a list of paths or tables");
            return None;
        };
        let mut out: Vec<TmpfsMount> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let f = index(field, i);
            let mount = match item.get_ref() {
                DeValue::String(_) => self.absolute(item, &f).map(|target| TmpfsMount {
                    target,
                    size: None,
                    mode: None,
                }),
                DeValue::Table(table) => {
                    self.check_keys(table, &f, TMPFS_KEYS);
                    let target = match table.get("target") {
                        Some(t) => self.absolute(t, &child(&f, "target")),
                        None => {
                            self.missing(
                                item.span(),
                                &child(&f, "target"),
                                "say where it is mounted: `target = \"/cache\"`",
                            );
                            None
                        }
                    };
                    let size = table
                        .get("size")
                        .map(|v| self.size(v, &child(&f, "size"), &TMPFS));
                    let mode = table.get("mode").map(|v| self.mode(v, &child(&f, "mode")));
                    let invalid = matches!(size, Some(None)) || matches!(mode, Some(None));
                    target.filter(|_| !invalid).map(|target| TmpfsMount {
                        target,
                        size: size.flatten(),
                        mode: mode.flatten(),
                    })
                }
                _ => {
                    self.type_error(item, &f, "a path or a table with `target`");
                    None
                }
            };
            let Some(mount) = mount else { continue };
            if out.iter().any(|m| m.target == mount.target) {
                self.invalid(item, &f, format!("{} is mounted twice", mount.target));
                continue;
            }
            out.push(mount);
        }
        Some(out)
    }

    fn absolute(&mut self, value: &Value<'_>, field: &str) -> Option<String> {
        let path = self.string(value, field)?;
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
            self.invalid(
                value,
                field,
                format!(
                    "must be an absolute path inside the instance, without `..`, found {path:?}"
                ),
            );
            return None;
        }
        Some(path.to_owned())
    }

    /// Permission bits written in octal, as a string (`"1777"`) or a number read as octal.
    fn mode(&mut self, value: &Value<'_>, field: &str) -> Option<u32> {
        let text = match value.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => integer_value(i).map(|n| n.to_string()).unwrap_or_default(),
            _ => {
                self.type_error(value, field, "octal permission bits such as \"1777\"");
                return None;
            }
        };
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o7777 => Some(mode),
            _ => {
                self.invalid(
                    value,
                    field,
                    format!("{text:?} is not octal permission bits (0 to 7777)"),
                );
                None
            }
        }
    }

    fn ulimits(&mut self, value: &Value<'_>, field: &str) -> Option<BTreeMap<String, Ulimit>> {
        let table = self.table(value, field)?;
        let mut out = BTreeMap::new();
        for (key, item) in table {
            let name = key.get_ref().to_string();
            let f = child(field, &name);
            if !ULIMITS.contains(&name.as_str()) {
                let hint = match crate::units::suggest(&name, ULIMITS.iter().copied()) {
                    Some(close) => format!(
                        "did you mean `{close}`? The limits are {}",
                        ULIMITS.join(", ")
                    ),
                    None => format!("the limits are {}", ULIMITS.join(", ")),
                };
                self.error(
                    key.span(),
                    &f,
                    format!("unknown ulimit `{name}`"),
                    Some(hint),
                );
                continue;
            }
            let limit = match item.get_ref() {
                DeValue::Integer(_) => self
                    .whole(item, &f, 0, i64::MAX as u64)
                    .map(|n| Ulimit { soft: n, hard: n }),
                DeValue::Table(t) => {
                    self.check_keys(t, &f, ULIMIT_KEYS);
                    let soft = t
                        .get("soft")
                        .and_then(|v| self.whole(v, &child(&f, "soft"), 0, i64::MAX as u64));
                    let hard = t
                        .get("hard")
                        .and_then(|v| self.whole(v, &child(&f, "hard"), 0, i64::MAX as u64));
                    match (soft, hard) {
                        (Some(soft), Some(hard)) if soft > hard => {
                            self.invalid(
                                item,
                                &f,
                                format!("the soft limit {soft} is above the hard limit {hard}"),
                            );
                            None
                        }
                        (Some(soft), Some(hard)) => Some(Ulimit { soft, hard }),
                        _ if t.get("soft").is_none() || t.get("hard").is_none() => {
                            self.missing(
                                item.span(),
                                &f,
                                "give both: `{ soft = 1024, hard = 4096 }`, or one number for both",
                            );
                            None
                        }
                        _ => None,
                    }
                }
                _ => {
                    self.type_error(item, &f, "a number, or a table with `soft` and `hard`");
                    None
                }
            };
            if let Some(limit) = limit {
                out.insert(name, limit);
            }
        }
        Some(out)
    }

    fn sysctls(&mut self, value: &Value<'_>, field: &str) -> Option<BTreeMap<String, String>> {
        let all = self.scalar_map(value, field)?;
        let table = self.table(value, field)?;
        let mut out = BTreeMap::new();
        for (key, _) in table {
            let name = key.get_ref().to_string();
            if !is_namespaced_sysctl(&name) {
                self.error(
                    key.span(),
                    &child(field, &name),
                    format!("sysctl `{name}` is not a parameter of the instance's own namespaces: setting it would change the host"),
                    Some(format!("only parameters starting with {} can be set", NAMESPACED_SYSCTLS.join(", "))),
                );
                continue;
            }
            if let Some(v) = all.get(&name) {
                out.insert(name, v.clone());
            }
        }
        Some(out)
    }
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
            "net.core/../x",
            "net.",
            "fs.file-max",
        ] {
            assert!(!is_namespaced_sysctl(name), "{name}");
        }
    }
}
