//! The host's firewall for an application's bridge: one nftables table per bridge, owned by
//! Paracloud, so that instances reach nothing of the host but what the platform serves them.
//!
//! Packets that come in from the bridge for the host itself (any of its addresses, the bridge's
//! own included) are accepted only when they are replies to connections the host opened (the
//! data plane's to instances, health probes) or when they go to one of the endpoints the data
//! plane serves the application's instances on (a service address and port); everything else is
//! dropped, IPv6 included, whatever the host service binds to. Nothing is forwarded from the
//! bridge to another interface or from another interface into it: instances have no default
//! route, and one that makes its own reaches neither the host's other networks nor another
//! application's bridge. Traffic between the application's own instances stays on the bridge.
//!
//! Each bridge has a table of its own (`inet paracloud-<bridge>`), replaced as a whole in one
//! transaction and deleted with the bridge: setting up or removing one application's network
//! never touches another's rules, so daemons and tests running side by side stay independent.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
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

/// The script that creates or replaces, atomically, the table of a bridge. Declaring the table
/// before deleting it makes the deletion succeed whether or not it existed.
pub(crate) fn ruleset(bridge: &str, served: &[SocketAddrV4]) -> String {
    let table = table_name(bridge);
    let mut elements: Vec<String> = served
        .iter()
        .map(|endpoint| format!("{} . {}", endpoint.ip(), endpoint.port()))
        .collect();
    elements.sort();
    elements.dedup();
    let elements = if elements.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {} }}\n", elements.join(", "))
    };
    let mut script = String::new();
    let _ = write!(
        script,
        "table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \t# The endpoints the data plane serves this application's instances on.\n\
         \tset served {{\n\
         \t\ttype ipv4_addr . inet_service\n\
         {elements}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" jump from_instances\n\
         \t}}\n\
         \t# What instances send to the host itself.\n\
         \tchain from_instances {{\n\
         \t\tct state established,related accept\n\
         \t\tip daddr . tcp dport @served accept\n\
         \t\tdrop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname \"{bridge}\" accept\n\
         \t\tiifname \"{bridge}\" drop\n\
         \t\toifname \"{bridge}\" drop\n\
         \t}}\n\
         }}\n"
    );
    script
}

/// The script that deletes a bridge's table, whether or not it exists.
fn removal(bridge: &str) -> String {
    let table = table_name(bridge);
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
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
    run(&nft, &ruleset(&net.bridge, &net.served), &what).await
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
        let script = ruleset("pc0ad50000", &served);
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
        assert!(script.contains("ip daddr . tcp dport @served accept\n\t\tdrop\n"));
        assert!(script.contains("iifname \"pc0ad50000\" drop\n\t\toifname \"pc0ad50000\" drop\n"));
    }

    #[test]
    fn a_bridge_without_services_serves_nothing() {
        let script = ruleset("pc0ad50100", &[]);
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
            "table inet paracloud-pc0ad50000 {}\ndelete table inet paracloud-pc0ad50000\n"
        );
    }
}
