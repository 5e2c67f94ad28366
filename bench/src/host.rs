//! What the bench reads from and removes on the host: /proc, routes, cgroup directories, tool
//! versions, the date. Parsers are pure functions, tested on literal text.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The first line of `BIN --version`.
pub fn version_of(bin: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {bin}: install it (apt-get install {bin})"))?;
    if !out.status.success() {
        bail!("`{bin} --version` failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The first IPv4 route of the main table (other than the default route) that overlaps `net`.
pub fn route_overlapping(net: Ipv4Net) -> Result<Option<String>> {
    let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    Ok(parse_routes(&table)
        .into_iter()
        .find(|(_, route)| route.prefix_len() > 0 && overlaps(*route, net))
        .map(|(iface, route)| format!("{route} dev {iface}")))
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// (interface, destination) pairs of /proc/net/route, whose addresses are the kernel's
/// network-order words printed as host-order hex.
fn parse_routes(table: &str) -> Vec<(String, Ipv4Net)> {
    let word = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|w| Ipv4Addr::from(w.to_le_bytes()))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (
                fields.first()?,
                word(fields.get(1)?)?,
                word(fields.get(7)?)?,
            );
            let prefix = u32::from(mask).leading_ones() as u8;
            Some((iface.to_string(), Ipv4Net::new(dest, prefix).ok()?))
        })
        .collect()
}

/// Removes the directory `name` (and the empty cgroups under it) from every cgroup hierarchy;
/// a cgroup that still holds processes stays, with a message.
pub fn remove_cgroup_tree(name: &str) {
    for dir in cgroup_dirs(name) {
        remove_dirs_bottom_up(&dir);
    }
}

/// `<hierarchy>/<name>` for every hierarchy where it exists (v1 ones, the hybrid's unified one,
/// or the v2 root itself).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    hierarchies
        .into_iter()
        .map(|h| h.join(name))
        .filter(|d| d.join("cgroup.procs").is_file())
        .collect()
}

fn remove_dirs_bottom_up(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dirs_bottom_up(&entry.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("cannot remove the cgroup {}: {e}", dir.display());
    }
}

/// Every cgroup directory under `dir`, itself included, that holds processes, with their pids.
pub fn cgroup_procs(dir: &Path) -> Vec<(PathBuf, Vec<i32>)> {
    let mut found = Vec::new();
    let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if !pids.is_empty() {
        found.push((dir.to_path_buf(), pids));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        let mut subdirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subdirs.sort();
        for sub in subdirs {
            found.extend(cgroup_procs(&sub));
        }
    }
    found
}

/// The first number of a pid file (`daemon.pid` holds "PID", `dataplane.pid` "PID START").
pub fn read_pid_file(path: &Path) -> Result<i32> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no pid in {}: {text:?}", path.display()))
}

/// VmRSS of a process, in KiB (None once it is gone).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    parse_status_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmRSS:",
    )
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (pid, parent pid) of every process on the host.
/// The on-CPU time of process `pid`, all its threads together, in nanoseconds (the first field
/// of each `/proc/PID/task/TID/schedstat`); none when the process is gone.
pub fn cpu_time_ns(pid: i32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| parse_schedstat_ns(&s))
            .sum(),
    )
}

/// The time on the CPU, in nanoseconds, of a schedstat line (`RUN WAIT SLICES`).
pub fn parse_schedstat_ns(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

pub fn processes() -> Vec<(i32, i32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_ppid(&stat)?))
        })
        .collect()
}

/// Field 4 of /proc/PID/stat; the command name before it may hold spaces and parentheses.
/// The user and system CPU time of process `pid`, all its threads together, in clock ticks
/// (`utime` and `stime` of `/proc/PID/stat`); none when the process is gone.
pub fn cpu_split_ticks(pid: i32) -> Option<(u64, u64)> {
    parse_user_system_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces and parentheses itself.
fn parse_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn parse_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Milliseconds since the Unix epoch (the clock of the daemon's events).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The 1, 5 and 15 minute load averages, for the report: other work on the machine shows there.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The kernel release, for the report.
pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_in_network_order() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     br0\t0000FC0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = parse_routes(table);
        assert_eq!(
            routes[1],
            ("eth0".to_string(), "192.0.2.0/24".parse().unwrap())
        );
        assert_eq!(
            routes[2],
            ("br0".to_string(), "10.252.0.0/16".parse().unwrap())
        );
        assert!(overlaps(routes[2].1, "10.252.7.0/24".parse().unwrap()));
        assert!(!overlaps(routes[1].1, "10.252.7.0/24".parse().unwrap()));
    }

    #[test]
    fn status_and_stat_fields() {
        let status = "Name:\tbusybox\nVmPeak:\t  1000 kB\nVmRSS:\t     884 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(884));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(parse_ppid("42 (a (b) c) S 7 42 42 0"), Some(7));
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 120 0 0 0 1203 4411 0 0 20 0 1 0 99";
        assert_eq!(parse_user_system_ticks(stat), Some((1203, 4411)));
        assert_eq!(parse_user_system_ticks("42 (x) S 7 42"), None);
        assert!(cpu_split_ticks(std::process::id() as i32).is_some());
        assert_eq!(
            parse_schedstat_ns("1843512345 20395 117\n"),
            Some(1_843_512_345)
        );
        assert_eq!(parse_schedstat_ns(""), None);
        let own = cpu_time_ns(std::process::id() as i32).unwrap();
        assert!(own > 0, "this test has run on a CPU");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
