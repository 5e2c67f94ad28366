//! The small grammars inside manifest strings: names, sizes, durations, port and volume specs,
//! signals, capabilities and paths.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::model::{Port, Protocol};

/// Longest application, service or volume name.
pub(crate) const MAX_NAME_LEN: usize = 32;

/// The smallest memory limit accepted: below it even a shell does not start.
pub(crate) const MIN_MEMORY: u64 = 4 << 20;
/// The smallest writable layer: below 16M ext4 leaves little room for files.
pub const MIN_DISK: u64 = 16 << 20;

/// The largest memory limit an instance may ask for: 64 TiB, more than a machine has (the
/// daemon refuses more than its own machine's at `up`).
pub const MAX_MEMORY: u64 = 64 << 40;

/// A number as a diagnostic shows it: huge and tiny ones in exponent form (`1e300`), not as
/// hundreds of digits.
pub(crate) fn shown(n: f64) -> String {
    if n != 0.0 && !(1e-4..1e6).contains(&n.abs()) {
        format!("{n:e}")
    } else {
        n.to_string()
    }
}

/// The most processes an instance may ask for: the kernel's own limit on pids (2^22).
pub const MAX_PIDS: u64 = 1 << 22;

/// The address a port is published on when the manifest names none: nothing leaves the machine.
pub(crate) const DEFAULT_PUBLISH_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Checks a DNS label: `[a-z0-9-]`, starting with a letter, not ending with '-', at most 32
/// characters. The error says what is wrong.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let Some(first) = name.chars().next() else {
        return Err("must not be empty".into());
    };
    if !first.is_ascii_lowercase() {
        return Err(format!(
            "must start with a lower-case letter, found {first:?}"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "may contain only lower-case letters, digits and '-', found {bad:?}"
        ));
    }
    if name.ends_with('-') {
        return Err("must not end with '-'".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters long, found {}",
            name.len()
        ));
    }
    Ok(())
}

/// Parses a memory size: bytes, or a number with K/M/G/T (powers of 1024, also written Ki, Mi,
/// KiB...) or KB/MB/GB/TB (powers of 1000). Case does not matter.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("invalid memory size {text:?}: expected a number"));
    }
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KI" | "KIB" => 1 << 10,
        "M" | "MI" | "MIB" => 1 << 20,
        "G" | "GI" | "GIB" => 1 << 30,
        "T" | "TI" | "TIB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid memory size {text:?}: unknown unit {other:?}"
            ))
        }
    };
    let too_large = || format!("invalid memory size {text:?}: too large");
    if number.contains('.') {
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid memory size {text:?}: {number:?} is not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(too_large());
        }
        // Truncation is intended: a fraction of a byte is no limit.
        Ok(bytes as u64)
    } else {
        let value: u64 = number.parse().map_err(|_| too_large())?;
        value.checked_mul(multiplier).ok_or_else(too_large)
    }
}

/// Parses a duration written for people: "500ms", "2s", "1m 30s".
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a port number (1..=65535) written in a string.
pub(crate) fn parse_port_number(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "expected a port number between 1 and 65535, found {text:?}"
        )),
    }
}

pub(crate) fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "tcp" => Ok(Protocol::Tcp),
        "http" => Ok(Protocol::Http),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// Parses a publish address: "IP:PORT", "[IPV6]:PORT" or "PORT" (on 127.0.0.1).
pub(crate) fn parse_publish(text: &str) -> Result<SocketAddr, String> {
    if !text.contains(':') {
        return Ok(SocketAddr::new(
            DEFAULT_PUBLISH_IP,
            parse_port_number(text)?,
        ));
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("invalid publish address {text:?}: expected IP:PORT"))?;
    if addr.port() == 0 {
        return Err(format!("invalid publish address {text:?}: port 0"));
    }
    Ok(addr)
}

/// Parses "[[HOST_IP:]HOST_PORT:]PORT[/tcp|/http|/udp]".
pub(crate) fn parse_port_spec(text: &str) -> Result<Port, String> {
    let (addresses, protocol) = match text.rsplit_once('/') {
        Some((addresses, protocol)) => (addresses, parse_protocol(protocol)?),
        None => (text, Protocol::Tcp),
    };
    let (ip, rest) = match addresses.strip_prefix('[') {
        // A bracketed IPv6 host address: "[::1]:8080:80".
        Some(bracketed) => {
            let (ip, rest) = bracketed
                .split_once("]:")
                .ok_or_else(|| format!("invalid port {text:?}: expected [IPV6]:HOST_PORT:PORT"))?;
            (Some(ip), rest)
        }
        None => match addresses.matches(':').count() {
            2 => {
                let (ip, rest) = addresses.split_once(':').unwrap_or_default();
                (Some(ip), rest)
            }
            0 | 1 => (None, addresses),
            _ => {
                return Err(format!(
                    "invalid port {text:?}: expected [[HOST_IP:]HOST_PORT:]PORT[/tcp|/http|/udp]"
                ))
            }
        },
    };
    let ip = match ip {
        Some(ip) => ip
            .parse::<IpAddr>()
            .map_err(|_| format!("invalid port {text:?}: {ip:?} is not an IP address"))?,
        None => DEFAULT_PUBLISH_IP,
    };
    let (publish, port) = match rest.split_once(':') {
        Some((host_port, port)) => (
            Some(SocketAddr::new(ip, parse_port_number(host_port)?)),
            port,
        ),
        None => (None, rest),
    };
    Ok(Port {
        port: parse_port_number(port)?,
        protocol,
        publish,
    })
}

/// A volume written as "SOURCE:TARGET[:ro|:rw]".
#[derive(Debug, PartialEq)]
pub(crate) struct VolumeSpec<'s> {
    pub(crate) source: &'s str,
    pub(crate) target: &'s str,
    pub(crate) read_only: bool,
}

pub(crate) fn parse_volume_spec(text: &str) -> Result<VolumeSpec<'_>, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let read_only = match parts.get(2).copied() {
        None => false,
        Some("ro") => true,
        Some("rw") => false,
        Some(other) => {
            return Err(format!(
                "invalid volume {text:?}: unknown mode {other:?}, expected \"ro\" or \"rw\""
            ))
        }
    };
    match parts.as_slice() {
        [source, target] | [source, target, _] => Ok(VolumeSpec {
            source,
            target,
            read_only,
        }),
        _ => Err(format!(
            "invalid volume {text:?}: expected SOURCE:TARGET[:ro|:rw]"
        )),
    }
}

/// Joins `path` to `base` and removes "." and ".." lexically (no symlinks are followed: this
/// crate does no I/O).
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
        }
    }
    out
}

/// Linux signal names without the "SIG" prefix.
pub(crate) const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
    "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
    "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
];

/// Normalises "term", "TERM" or "SIGTERM" to "SIGTERM"; `Err` carries the closest known name.
pub(crate) fn normalise_signal(text: &str) -> Result<String, Option<String>> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(suggest(bare, SIGNALS.iter().copied()).map(|s| format!("SIG{s}")))
    }
}

/// Linux capability names without the "CAP_" prefix.
pub(crate) const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Normalises "net_bind_service" or "CAP_NET_BIND_SERVICE" to "CAP_NET_BIND_SERVICE"; `Err`
/// carries the closest known name.
pub(crate) fn normalise_capability(text: &str) -> Result<String, Option<String>> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(format!("CAP_{bare}"))
    } else {
        Err(suggest(bare, CAPABILITIES.iter().copied()).map(|s| format!("CAP_{s}")))
    }
}

/// The candidate most like `word`, when one is close enough to be a likely typo.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("shop-2"), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name("2shop").is_err());
        assert!(check_name("Shop").is_err());
        assert!(check_name("shop_x").is_err());
        assert!(check_name("shop-").is_err());
        assert!(check_name(&"a".repeat(33)).is_err());
        assert_eq!(check_name(&"a".repeat(32)), Ok(()));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("256m"), Ok(256 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1.5K"), Ok(1536));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("12 parsecs").is_err());
        assert!(parse_memory("M").is_err());
        assert!(parse_memory("99999999999999T").is_err());
        assert!(parse_memory("1.2.3M").is_err());
    }

    #[test]
    fn port_specs() {
        let local = |port| Some(SocketAddr::new(DEFAULT_PUBLISH_IP, port));
        let spec = |text| parse_port_spec(text).map(|p| (p.port, p.protocol, p.publish));
        assert_eq!(spec("80"), Ok((80, Protocol::Tcp, None)));
        assert_eq!(
            spec("9000:8080/http"),
            Ok((8080, Protocol::Http, local(9000)))
        );
        assert_eq!(
            spec("0.0.0.0:9001:8081/tcp"),
            Ok((
                8081,
                Protocol::Tcp,
                Some(SocketAddr::from(([0, 0, 0, 0], 9001)))
            ))
        );
        assert_eq!(spec("5353:53/udp"), Ok((53, Protocol::Udp, local(5353))));
        assert_eq!(
            spec("[::1]:9001:8081"),
            Ok((
                8081,
                Protocol::Tcp,
                Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9001)))
            ))
        );
        for bad in [
            "",
            "0",
            "70000",
            "80/sctp",
            "a:b:c:d",
            "x:1:2",
            "1:2:3:4:5",
            "[::1:1:2",
        ] {
            assert!(spec(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn volume_specs() {
        assert_eq!(
            parse_volume_spec("data:/data:ro"),
            Ok(VolumeSpec {
                source: "data",
                target: "/data",
                read_only: true
            })
        );
        assert!(parse_volume_spec("data").is_err());
        assert!(parse_volume_spec("a:b:c").is_err());
        assert!(parse_volume_spec("a:b:ro:x").is_err());
    }

    #[test]
    fn paths_resolve_lexically() {
        let base = Path::new("/srv/shop");
        assert_eq!(
            resolve(base, "../../target/./release"),
            PathBuf::from("/target/release")
        );
        assert_eq!(resolve(base, "/etc/../opt"), PathBuf::from("/opt"));
        assert_eq!(resolve(base, "../../../.."), PathBuf::from("/"));
    }

    #[test]
    fn signals_and_capabilities() {
        assert_eq!(normalise_signal("term"), Ok("SIGTERM".into()));
        assert_eq!(normalise_signal("SIGUSR1"), Ok("SIGUSR1".into()));
        assert_eq!(normalise_signal("SIGTREM"), Err(Some("SIGTERM".into())));
        assert_eq!(
            normalise_capability("net_bind_service"),
            Ok("CAP_NET_BIND_SERVICE".into())
        );
        assert_eq!(
            normalise_capability("CAP_NET_BIND_SERVICES"),
            Err(Some("CAP_NET_BIND_SERVICE".into()))
        );
    }
}
