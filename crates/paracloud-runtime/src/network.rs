//! Application bridges (rtnetlink, with their firewall rules) and the names of instance veths.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use crate::{Error, NetworkConfig, Result};

/// Linux interface names hold at most 15 bytes.
pub(crate) const IFNAME_MAX: usize = 15;

/// FNV-1a: stable across builds and daemon restarts (std's hasher promises neither).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The host side of an instance's veth pair. Interface names are global to the host, and two
/// daemons (with their own cgroup parents) may run instances of the same id: the scope keeps their
/// names apart, so that one daemon never deletes another's veth.
pub(crate) fn veth_host_name(scope: &str, id: &str) -> String {
    let key = format!("{scope}\0{id}");
    format!("pc{:08x}", fnv1a(key.as_bytes()))
}

/// A fixed, locally administered MAC for a bridge. Without one the bridge takes the lowest MAC of
/// its ports and changes it as instances come and go, leaving stale ARP entries in the others.
pub(crate) fn bridge_mac(bridge: &str) -> Vec<u8> {
    let h = fnv1a(bridge.as_bytes()).to_be_bytes();
    vec![0x02, 0x50, h[0], h[1], h[2], h[3]]
}

/// The MAC address of an instance's eth0, derived from its IPv4 address (as Docker does): an
/// address that passes to a new instance keeps its MAC, so the neighbour caches of the host and of
/// other instances stay right, and a restarted instance is reachable at once, not after the stale
/// entry times out.
pub(crate) fn instance_mac(address: std::net::Ipv4Addr) -> Vec<u8> {
    let [a, b, c, d] = address.octets();
    vec![0x02, 0x51, a, b, c, d]
}

pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Network(format!(
            "invalid interface name {name:?}: use 1 to {IFNAME_MAX} letters, digits, '-', '_' or '.'"
        )))
    }
}

fn nl_error(what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::Network(format!("{what}: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

async fn with_handle<F, Fut, T>(what: &str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| Error::Network(format!("{what}: cannot open a netlink socket: {e}")))?;
    let task = tokio::spawn(connection);
    let result = f(handle).await;
    task.abort();
    result
}

async fn link_index(
    handle: &Handle,
    name: &str,
) -> std::result::Result<Option<u32>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn ensure_network(net: &NetworkConfig) -> Result<()> {
    check_ifname(&net.bridge)?;
    // The rules first (they match the bridge by name): it never has an address without them.
    crate::firewall::apply(net).await?;
    let name = net.bridge.clone();
    with_handle(&format!("bridge {name}"), |handle| async move {
        let created = handle
            .link()
            .add(LinkBridge::new(&name).address(bridge_mac(&name)).build())
            .execute()
            .await;
        match created {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(nl_error(format!("cannot create bridge {name}"))(e)),
        }
        let index = link_index(&handle, &name)
            .await
            .map_err(nl_error(format!("cannot find bridge {name}")))?
            .ok_or_else(|| Error::Network(format!("bridge {name} vanished after creation")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_error(format!("cannot set bridge {name} up")))?;
        keep_carrier(&handle, &name, index).await?;
        let mut addresses = vec![(net.gateway.addr(), net.gateway.prefix_len())];
        addresses.extend(
            net.service_addresses
                .iter()
                .filter(|a| **a != net.gateway.addr())
                .map(|a| (*a, 32)),
        );
        for (address, prefix) in addresses {
            match handle
                .address()
                .add(index, IpAddr::V4(address), prefix)
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => {
                    return Err(nl_error(format!(
                        "cannot add {address}/{prefix} to bridge {name}"
                    ))(e))
                }
            }
        }
        Ok(())
    })
    .await
}

/// The always-up port of a bridge (and its peer): see [`keep_carrier`].
fn keeper_names(bridge: &str) -> (String, String) {
    (format!("{bridge}k"), format!("{bridge}q"))
}

/// Gives the bridge a port that is always up. A bridge without a running port has no carrier; the
/// first instance attached then waits for the carrier to come back, and a packet sent meanwhile
/// (a first SYN) is lost and retried only after a second. With this port, the bridge keeps its
/// carrier whether instances come and go.
async fn keep_carrier(handle: &Handle, bridge: &str, bridge_index: u32) -> Result<()> {
    let (port, peer) = keeper_names(bridge);
    check_ifname(&port).map_err(|_| {
        Error::Network(format!("bridge name {bridge:?} is too long: at most 14 bytes (one is kept for its carrier port)"))
    })?;
    let created = handle
        .link()
        .add(
            LinkVeth::new(&port, &peer)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await;
    match created {
        Ok(()) => {}
        Err(e) if is_errno(&e, libc::EEXIST) => {}
        Err(e) => {
            return Err(nl_error(format!(
                "cannot create the carrier port {port} of bridge {bridge}"
            ))(e))
        }
    }
    for name in [&port, &peer] {
        let index = link_index(handle, name)
            .await
            .map_err(nl_error(format!("cannot find {name}")))?
            .ok_or_else(|| Error::Network(format!("{name} vanished after creation")))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_error(format!("cannot set {name} up")))?;
    }
    Ok(())
}

pub(crate) async fn remove_network(bridge: &str) -> Result<()> {
    check_ifname(bridge)?;
    crate::netlink::delete_link_if_exists(&keeper_names(bridge).0)?;
    check_ifname(bridge)?;
    let name = bridge.to_string();
    with_handle(&format!("bridge {name}"), |handle| async move {
        let Some(index) = link_index(&handle, &name)
            .await
            .map_err(nl_error(format!("cannot find bridge {name}")))?
        else {
            return Ok(());
        };
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_error(format!("cannot delete bridge {name}"))(e)),
        }
    })
    .await?;
    // The rules last: they outlive the bridge's addresses, never the other way round.
    crate::firewall::remove(bridge).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let a = veth_host_name("paracloud", "shop-api-1");
        assert_eq!(a, veth_host_name("paracloud", "shop-api-1"));
        assert_ne!(a, veth_host_name("paracloud", "shop-api-2"));
        assert_ne!(
            a,
            veth_host_name("paracloud-test-7", "shop-api-1"),
            "regression: two daemons running the same app deleted each other's veths"
        );
        assert!(a.len() <= IFNAME_MAX);
        check_ifname(&a).unwrap();
        // Pinned: a restarted daemon must compute the same name.
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("pct0").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("sixteen-bytes-xx").is_err());
        assert!(check_ifname("a/b").is_err());
        assert_eq!(
            instance_mac("10.213.0.16".parse().unwrap()),
            vec![0x02, 0x51, 10, 213, 0, 16]
        );
        let mac = bridge_mac("pct0");
        assert_eq!(mac.len(), 6);
        assert_eq!(mac[0] & 0x03, 0x02, "unicast, locally administered");
    }
}
