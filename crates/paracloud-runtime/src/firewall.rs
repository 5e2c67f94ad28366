//! The host's firewall for an application's bridge: one nftables table per bridge, owned by
//! Paracloud, so that instances reach nothing of the host but what the platform serves them.
//!
//! Packets that come in from the bridge for the host itself (any of its addresses, the bridge's
//! own included) are accepted only when they are replies to connections the host opened (the
//! data plane's to instances, health probes) or when they go to one of the endpoints the data
//! plane serves the application's instances on (a service address and TCP port, or UDP port for
//! datagrams, each in a set of its own); everything else is dropped, IPv6 included, whatever the host service binds to. Nothing is forwarded from the
//! bridge to another interface or from another interface into it: instances have no default
//! route, and one that makes its own reaches neither the host's other networks nor another
//! application's bridge. Traffic between the application's own instances stays on the bridge.
//!
//! An application split into networks (Compose's `networks`) is held to them: an instance
//! reaches the endpoints served to a network, and the other instances, only through a network
//! it is on. Each network has a set of its instances' addresses, which an instance joins as it
//! starts (`admit`), and the bridge's forwarding between ports is filtered in a `bridge` table.
//!
//! Each bridge has tables of its own (`inet paracloud-<bridge>`, and `bridge paracloud-<bridge>`
//! when the application is split), replaced as a whole in one transaction and deleted with the
//! bridge: setting up or removing one application's network
//! never touches another's rules, so daemons and tests running side by side stay independent.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::{Error, NetworkConfig, Result};

/// Where `nft` is looked for first: a daemon started with a narrow `PATH` still finds it.
const NFT_PATHS: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/local/sbin/nft"];

/// The name of a bridge's table (in the `inet` family).
pub(crate) fn table_name(bridge: &str) -> String {
    format!("paracloud-{bridge}")
}

/// The name of a network's sets: `net_NAME` (its instances), `served_NAME` (the TCP endpoints
/// served to them) and `udp_NAME` (the UDP ones), with `-` written `_` (network names are DNS
/// labels, so none clash).
fn set_name(kind: &str, network: &str) -> String {
    format!("{kind}_{}", network.replace('-', "_"))
}

/// `elements = { ... }` of a set, or nothing when it is empty.
fn elements(mut items: Vec<String>) -> String {
    items.sort();
    items.dedup();
    if items.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {} }}\n", items.join(", "))
    }
}

fn endpoints(served: &[SocketAddrV4]) -> Vec<String> {
    served
        .iter()
        .map(|endpoint| format!("{} . {}", endpoint.ip(), endpoint.port()))
        .collect()
}

/// The script that creates or replaces, atomically, the tables of a bridge. Declaring a table
/// before deleting it makes the deletion succeed whether or not it existed.
///
/// An application split into networks gets, per network, a set of its instances' addresses and
/// a set of the endpoints served to them: an instance reaches a served endpoint only through a
/// network it shares with it, and (in a `bridge` table, which sees what the bridge forwards
/// between its ports) another instance only on a network they share.
pub(crate) fn ruleset(net: &NetworkConfig) -> String {
    let bridge = &net.bridge;
    let table = table_name(bridge);
    let mut sets = String::new();
    let mut admit = String::new();
    if net.segments.is_empty() {
        let _ = write!(
            sets,
            "\t# The endpoints the data plane serves this application's instances on.\n\
             \tset served {{\n\
             \t\ttype ipv4_addr . inet_service\n\
             {}\
             \t}}\n\
             \tset served_udp {{\n\
             \t\ttype ipv4_addr . inet_service\n\
             {}\
             \t}}\n",
            elements(endpoints(&net.served)),
            elements(endpoints(&net.served_udp))
        );
        admit.push_str("\t\tip daddr . tcp dport @served accept\n");
        admit.push_str("\t\tip daddr . udp dport @served_udp accept\n");
    }
    for segment in &net.segments {
        let (members, served, udp) = (
            set_name("net", &segment.name),
            set_name("served", &segment.name),
            set_name("udp", &segment.name),
        );
        let _ = write!(
            sets,
            "\t# Network {name}: its instances, and the endpoints served to them.\n\
             \tset {members} {{\n\
             \t\ttype ipv4_addr\n\
             {}\
             \t}}\n\
             \tset {served} {{\n\
             \t\ttype ipv4_addr . inet_service\n\
             {}\
             \t}}\n\
             \tset {udp} {{\n\
             \t\ttype ipv4_addr . inet_service\n\
             {}\
             \t}}\n",
            elements(segment.members.iter().map(|a| a.to_string()).collect()),
            elements(endpoints(&segment.served)),
            elements(endpoints(&segment.served_udp)),
            name = segment.name,
        );
        let _ = writeln!(
            admit,
            "\t\tip saddr @{members} ip daddr . tcp dport @{served} accept"
        );
        let _ = writeln!(
            admit,
            "\t\tip saddr @{members} ip daddr . udp dport @{udp} accept"
        );
    }
    let mut script = String::new();
    let _ = write!(
        script,
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         {sets}\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" jump from_instances\n\
         \t}}\n\
         \t# What instances send to the host itself.\n\
         \tchain from_instances {{\n\
         \t\tct state established,related accept\n\
         {admit}\
         \t\tdrop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname \"{bridge}\" accept\n\
         \t\tiifname \"{bridge}\" drop\n\
         \t\toifname \"{bridge}\" drop\n\
         \t}}\n\
         }}\n\
         table bridge {table} {{}}\n\
         delete table bridge {table}\n"
    );
    if !net.segments.is_empty() {
        let subnet = net.gateway.trunc();
        let mut sets = String::new();
        let mut rules = String::new();
        for segment in &net.segments {
            let members = set_name("net", &segment.name);
            let _ = write!(
                sets,
                "\tset {members} {{\n\
                 \t\ttype ipv4_addr\n\
                 {}\
                 \t}}\n",
                elements(segment.members.iter().map(|a| a.to_string()).collect())
            );
            let _ = writeln!(rules, "\t\tip saddr @{members} ip daddr @{members} accept");
        }
        let _ = write!(
            script,
            "table bridge {table} {{\n\
             {sets}\
             \t# Between the instances of the application: only within a network.\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             {rules}\
             \t\tip saddr {subnet} ip daddr {subnet} drop\n\
             \t}}\n\
             }}\n"
        );
    }
    script
}

/// The script that puts an instance's address in the sets of the networks it is on, and takes
/// it out of the others' (where an instance that had the address before may have left it).
fn admission(bridge: &str, address: Ipv4Addr, segments: &[(String, bool)]) -> String {
    let table = table_name(bridge);
    let mut script = String::new();
    for family in ["inet", "bridge"] {
        for (network, member) in segments {
            let set = set_name("net", network);
            // Added first, so that the deletion finds it.
            let _ = writeln!(script, "add element {family} {table} {set} {{ {address} }}");
            if !member {
                let _ = writeln!(
                    script,
                    "delete element {family} {table} {set} {{ {address} }}"
                );
            }
        }
    }
    script
}

/// Admits an instance to the networks it is on, before it runs (blocking: it runs where the
/// instance is started).
pub(crate) fn admit(bridge: &str, address: Ipv4Addr, segments: &[(String, bool)]) -> Result<()> {
    let what = format!("cannot admit {address} to its networks on bridge {bridge}");
    let nft = nft_binary().ok_or_else(|| Error::Network(format!("{what}: nft not found")))?;
    let mut child = std::process::Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Network(format!("{what}: cannot run {}: {e}", nft.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(admission(bridge, address, segments).as_bytes())
            .map_err(|e| Error::Network(format!("{what}: cannot write to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::Network(format!("{what}: nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Network(format!(
            "{what}: nft failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The script that deletes a bridge's table, whether or not it exists.
fn removal(bridge: &str) -> String {
    let table = table_name(bridge);
    format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n"
    )
}

/// Installs (or replaces) the rules of a bridge; idempotent. Fails without `nft`: a bridge is
/// never set up without its rules.
pub(crate) async fn apply(net: &NetworkConfig) -> Result<()> {
    let what = format!("cannot install the firewall of bridge {}", net.bridge);
    let nft = nft_binary().ok_or_else(|| {
        Error::Network(format!(
            "{what}: nft not found (in {} or on PATH): install nftables (apt-get install nftables); it keeps instances from the host's services",
            NFT_PATHS.join(", ")
        ))
    })?;
    run(&nft, &ruleset(net), &what).await
}

/// Removes the rules of a bridge; idempotent. Without `nft` (uninstalled since), the rules are
/// left behind with a warning rather than keeping the application from going: they match only
/// this bridge's name, and the next application given it replaces them.
pub(crate) async fn remove(bridge: &str) -> Result<()> {
    let Some(nft) = nft_binary() else {
        tracing::warn!("nft not found: the firewall table of bridge {bridge}, if any, stays");
        return Ok(());
    };
    let what = format!("cannot remove the firewall of bridge {bridge}");
    run(&nft, &removal(bridge), &what).await
}

fn nft_binary() -> Option<PathBuf> {
    let listed = NFT_PATHS.iter().map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nft"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    listed.chain(on_path).find(|candidate| candidate.is_file())
}

/// Feeds a script to `nft -f -`, which applies it as one transaction.
async fn run(nft: &Path, script: &str, what: &str) -> Result<()> {
    let mut child = tokio::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Network(format!("{what}: cannot run {}: {e}", nft.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| Error::Network(format!("{what}: cannot write to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| Error::Network(format!("{what}: nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Network(format!(
            "{what}: nft failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_s_table_lets_instances_reach_only_what_is_served() {
        let served = [
            "10.213.0.3:9000".parse().unwrap(),
            "10.213.0.2:8000".parse().unwrap(),
            "10.213.0.2:8000".parse().unwrap(),
        ];
        let script = ruleset(&config("pc0ad50000", &served, Vec::new()));
        assert!(
            script.starts_with(
                "table inet paracloud-pc0ad50000 {}\ndelete table inet paracloud-pc0ad50000\n"
            ),
            "replaced whole, existing or not: {script}"
        );
        assert!(
            script.contains("elements = { 10.213.0.2 . 8000, 10.213.0.3 . 9000 }"),
            "{script}"
        );
        assert!(script.contains("iifname \"pc0ad50000\" jump from_instances"));
        assert!(script.contains(
            "ip daddr . tcp dport @served accept\n\t\tip daddr . udp dport @served_udp accept\n\t\tdrop\n"
        ));
        assert!(script.contains("iifname \"pc0ad50000\" drop\n\t\toifname \"pc0ad50000\" drop\n"));
    }

    #[test]
    fn a_bridge_without_services_serves_nothing() {
        let script = ruleset(&config("pc0ad50100", &[], Vec::new()));
        assert!(!script.contains("elements"), "{script}");
        assert!(
            script.contains("type ipv4_addr . inet_service\n\t}"),
            "{script}"
        );
    }

    #[test]
    fn removal_leaves_other_bridges_alone() {
        assert_eq!(
            removal("pc0ad50000"),
            "table inet paracloud-pc0ad50000 {}\ndelete table inet paracloud-pc0ad50000\ntable bridge paracloud-pc0ad50000 {}\ndelete table bridge paracloud-pc0ad50000\n"
        );
    }

    fn config(
        bridge: &str,
        served: &[SocketAddrV4],
        segments: Vec<crate::Segment>,
    ) -> NetworkConfig {
        NetworkConfig {
            bridge: bridge.into(),
            gateway: "10.213.0.1/24".parse().unwrap(),
            service_addresses: Vec::new(),
            served: served.to_vec(),
            served_udp: Vec::new(),
            segments,
        }
    }

    #[test]
    fn udp_endpoints_are_served_apart_from_tcp_ones() {
        let mut net = config(
            "pc0ad50200",
            &["10.213.0.2:53".parse().unwrap()],
            Vec::new(),
        );
        net.served_udp = vec!["10.213.0.2:53".parse().unwrap()];
        let script = ruleset(&net);
        assert!(
            script.contains(
                "set served_udp {\n\t\ttype ipv4_addr . inet_service\n\t\telements = { 10.213.0.2 . 53 }"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip daddr . udp dport @served_udp accept\n\t\tdrop\n"),
            "{script}"
        );
        let segment = crate::Segment {
            name: "dns".into(),
            served: Vec::new(),
            served_udp: vec!["10.213.0.3:53".parse().unwrap()],
            members: vec!["10.213.0.16".parse().unwrap()],
        };
        let script = ruleset(&config("pc0ad50200", &[], vec![segment]));
        assert!(
            script.contains("set udp_dns {\n\t\ttype ipv4_addr . inet_service\n\t\telements = { 10.213.0.3 . 53 }"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr @net_dns ip daddr . udp dport @udp_dns accept\n"),
            "{script}"
        );
    }

    /// The scripts load, as nft checks them without applying (`nft -c`), where nft is installed.
    #[test]
    fn the_scripts_pass_nft_s_check() {
        let Some(nft) = nft_binary() else {
            eprintln!("nft not installed: the scripts are not checked");
            return;
        };
        let mut whole = config(
            "pc0ad50300",
            &["10.213.0.2:80".parse().unwrap()],
            Vec::new(),
        );
        whole.served_udp = vec!["10.213.0.2:53".parse().unwrap()];
        let split = config(
            "pc0ad50300",
            &[],
            vec![crate::Segment {
                name: "back-end".into(),
                served: vec!["10.213.0.2:80".parse().unwrap()],
                served_udp: vec!["10.213.0.2:53".parse().unwrap()],
                members: vec!["10.213.0.16".parse().unwrap()],
            }],
        );
        for net in [whole, split] {
            let script = ruleset(&net);
            let mut child = std::process::Command::new(&nft)
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            let error = String::from_utf8_lossy(&output.stderr);
            // Without the rights to talk to netfilter the check cannot run; that is no failure.
            if error.contains("Operation not permitted") {
                eprintln!("nft cannot check here: {error}");
                return;
            }
            assert!(output.status.success(), "{error}\n{script}");
        }
    }

    #[test]
    fn a_split_application_s_instances_reach_only_their_networks() {
        let segment = |name: &str, served: &str, members: &[&str]| crate::Segment {
            name: name.into(),
            served: vec![served.parse().unwrap()],
            served_udp: Vec::new(),
            members: members.iter().map(|m| m.parse().unwrap()).collect(),
        };
        let script = ruleset(&config(
            "pc0ad50000",
            &[],
            vec![
                segment("front-end", "10.213.0.2:80", &["10.213.0.16"]),
                segment("back", "10.213.0.3:5432", &["10.213.0.16", "10.213.0.17"]),
            ],
        ));
        assert!(
            script.contains(
                "set net_front_end {\n\t\ttype ipv4_addr\n\t\telements = { 10.213.0.16 }"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip saddr @net_back ip daddr . tcp dport @served_back accept\n"),
            "{script}"
        );
        assert!(
            script.contains("table bridge paracloud-pc0ad50000 {\n"),
            "{script}"
        );
        assert!(
            script.contains("\t\tip saddr @net_back ip daddr @net_back accept\n"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 10.213.0.0/24 ip daddr 10.213.0.0/24 drop"),
            "{script}"
        );
        let admitted = admission(
            "pc0ad50000",
            "10.213.0.18".parse().unwrap(),
            &[("back".into(), true), ("front-end".into(), false)],
        );
        assert_eq!(
            admitted
                .lines()
                .filter(|l| l.starts_with("delete"))
                .collect::<Vec<_>>(),
            [
                "delete element inet paracloud-pc0ad50000 net_front_end { 10.213.0.18 }",
                "delete element bridge paracloud-pc0ad50000 net_front_end { 10.213.0.18 }",
            ]
        );
        assert!(
            admitted.contains("add element bridge paracloud-pc0ad50000 net_back { 10.213.0.18 }")
        );
    }
}
