//! Host ports a manifest publishes: whether one is free, and who holds it when it is not, so that
//! `up` fails with the holder named instead of deploying a port the data plane cannot bind.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

/// Checks that `addr` can be bound now, for UDP when `udp`, else for TCP; otherwise says who
/// holds it (pid and program, when this machine's /proc tells).
pub fn check_free(addr: SocketAddr, udp: bool) -> Result<(), String> {
    let bound = match udp {
        true => UdpSocket::bind(addr).map(drop),
        false => TcpListener::bind(addr).map(drop),
    };
    match bound {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let holder = holders(Path::new("/proc"), addr.port(), udp)
                .into_iter()
                .map(|(pid, program)| format!("pid {pid} ({program})"))
                .collect::<Vec<_>>();
            let who = if holder.is_empty() {
                "another program".to_string()
            } else {
                holder.join(", ")
            };
            Err(format!(
                "{addr} is already in use by {who}: publish another host port, or stop what holds it"
            ))
        }
        Err(e) => Err(format!("{addr} cannot be bound: {e}")),
    }
}

/// The processes with a TCP socket listening on `port` (or a UDP socket bound to it, when
/// `udp`), from /proc/net/{tcp,udp}{,6} and their fds.
fn holders(proc_root: &Path, port: u16, udp: bool) -> Vec<(i32, String)> {
    let (tables, state) = match udp {
        // An unconnected UDP socket is in state 07 (closed) in the kernel's table.
        true => (["net/udp", "net/udp6"], "07"),
        false => (["net/tcp", "net/tcp6"], "0A"),
    };
    let inodes: BTreeSet<u64> = tables
        .iter()
        .filter_map(|table| std::fs::read_to_string(proc_root.join(table)).ok())
        .flat_map(|text| listening_inodes(&text, port, state))
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                socket_inode(&target.to_string_lossy()).is_some_and(|i| inodes.contains(&i))
            })
        });
        if holds {
            let program = std::fs::read_to_string(entry.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            found.push((pid, program));
        }
    }
    found.sort();
    found
}

/// The inodes of the sockets in a /proc/net/{tcp,udp} table in `state` (0A: listening) on `port`.
fn listening_inodes(table: &str, port: u16, state: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let in_state = fields.get(3)?;
            let inode = fields.get(9)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (*in_state == state && local_port == port).then(|| inode.parse().ok())?
        })
        .collect()
}

/// The inode of a `socket:[INODE]` fd link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            listening_inodes(table, 8080, "0A"),
            [4242],
            "listening, not connected"
        );
        assert_eq!(listening_inodes(table, 8081, "0A"), [4444]);
        assert!(listening_inodes(table, 9, "0A").is_empty());
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn a_port_held_here_is_named_with_its_holder() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = check_free(addr, false).unwrap_err();
        let me = std::process::id();
        assert!(
            refused.contains(&format!("{addr} is already in use by pid {me} (")),
            "{refused}"
        );
        drop(listener);
        assert_eq!(check_free(addr, false), Ok(()));
    }

    #[test]
    fn a_udp_port_held_here_is_named_with_its_holder() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let refused = check_free(addr, true).unwrap_err();
        let me = std::process::id();
        assert!(
            refused.contains(&format!("{addr} is already in use by pid {me} (")),
            "{refused}"
        );
        drop(socket);
        assert_eq!(check_free(addr, true), Ok(()));
    }
}
