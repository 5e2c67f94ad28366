//! Addresses and names on an application's network, derived from the daemon's address plan.
//!
//! Each application gets the `index`-th subnet of the plan's size (a /24 unless the daemon was
//! given another) from the pool. In it, host 1 is the bridge (gateway), hosts 2 to 15 are the
//! stable service addresses, and hosts 16 and up are instances.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Host number of the first service address and of the first instance address in an app subnet.
const FIRST_SERVICE_HOST: u32 = 2;
const FIRST_INSTANCE_HOST: u32 = 16;

/// The subnet size per application when the daemon is given none: 239 instances each.
pub const DEFAULT_APP_PREFIX: u8 = 24;
/// The largest subnet an application may get: its network is one Linux bridge, which takes at
/// most 1,024 ports, and a /22 has room for 1,007 instances besides the bridge's own port.
pub const LARGEST_APP_PREFIX: u8 = 22;
/// The smallest: a /27 has room for 15 instances after the 16 addresses kept for the gateway
/// and the service addresses.
pub const SMALLEST_APP_PREFIX: u8 = 27;

/// Ranges an address pool may not touch: the kernel routes them to the host itself, or to no one
/// host, so an instance's address there is unreachable or taken from someone else (a loopback
/// pool gave instances that could not reach each other: "connect ... Invalid argument").
const SPECIAL_RANGES: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\" (RFC 1122)"),
    ("127.0.0.0/8", "the loopback range"),
    ("169.254.0.0/16", "the link-local range"),
    ("224.0.0.0/4", "the multicast range"),
    (
        "240.0.0.0/4",
        "the reserved range with the broadcast address",
    ),
];

/// Where applications' subnets come from: the daemon's pool, cut in subnets of one size. Both
/// stay as they were while any application exists (its subnet is its index in this plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    pub pool: Ipv4Net,
    /// Prefix length of each application's subnet (the pool itself when the pool is smaller).
    pub app_prefix: u8,
}

impl AddressPlan {
    /// The plan of `pool` cut in `/app_prefix` subnets, or why that pool or size cannot be used,
    /// naming the daemon's flag to change.
    pub fn new(pool: Ipv4Net, app_prefix: u8) -> Result<Self, String> {
        if let Some((range, what)) = SPECIAL_RANGES
            .iter()
            .map(|(range, what)| (range.parse::<Ipv4Net>().expect("a valid range"), what))
            .find(|(range, _)| range.contains(&pool) || pool.contains(range))
        {
            return Err(format!(
                "--subnet {pool}: the pool overlaps {range}, {what}, where instances cannot have their addresses; give a private range such as 10.213.0.0/16 or 172.30.0.0/16"
            ));
        }
        if !(LARGEST_APP_PREFIX..=SMALLEST_APP_PREFIX).contains(&app_prefix) {
            return Err(format!(
                "--app-prefix {app_prefix}: an application subnet of /{app_prefix} cannot be used: an application's network is one Linux bridge, which takes at most 1,024 ports, and its first 16 addresses are kept for the gateway and the service addresses, so give a prefix length from {LARGEST_APP_PREFIX} (1,007 instances per application) to {SMALLEST_APP_PREFIX} (15)"
            ));
        }
        Ok(Self { pool, app_prefix })
    }

    /// The plan with the default size.
    pub fn with_default_size(pool: Ipv4Net) -> Self {
        Self {
            pool,
            app_prefix: DEFAULT_APP_PREFIX,
        }
    }

    /// The network of the application whose subnet is the plan's `index`-th.
    pub fn network(&self, index: u32) -> Result<AppNetwork, AddressError> {
        AppNetwork::new(self.pool, self.app_prefix, index)
    }

    /// How many instances an application's subnet holds.
    pub fn instance_slots(&self) -> u32 {
        let prefix = self.pool.prefix_len().max(self.app_prefix);
        (1u32 << (32 - prefix)).saturating_sub(FIRST_INSTANCE_HOST + 1)
    }

    /// The largest subnet per application a daemon with this pool could give instead, as its
    /// prefix length and the instances it holds, when it holds more than this plan's.
    pub fn wider(&self) -> Option<(u8, u32)> {
        let largest = Self {
            pool: self.pool,
            app_prefix: LARGEST_APP_PREFIX,
        };
        let instances = largest.instance_slots();
        (instances > self.instance_slots()).then_some((LARGEST_APP_PREFIX, instances))
    }

    /// How the state root remembers the plan: `POOL /PREFIX`.
    pub fn key(&self) -> String {
        format!("{} /{}", self.pool, self.app_prefix)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("the subnet pool {pool} has no subnet number {index}: give the daemon a larger pool with --subnet")]
    PoolExhausted { pool: Ipv4Net, index: u32 },
    #[error("the application's subnet {subnet} has no room for instance slot {slot}")]
    SubnetFull { subnet: Ipv4Net, slot: u32 },
}

/// The addressing plan of one application's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppNetwork {
    pub subnet: Ipv4Net,
}

impl AppNetwork {
    /// The `index`-th `/app_prefix` subnet (or the pool itself when it is smaller) of the pool.
    fn new(pool: Ipv4Net, app_prefix: u8, index: u32) -> Result<Self, AddressError> {
        let prefix = pool.prefix_len().max(app_prefix);
        let subnet = pool
            .subnets(prefix)
            .ok()
            .and_then(|mut s| s.nth(index as usize))
            .ok_or(AddressError::PoolExhausted { pool, index })?;
        Ok(Self { subnet })
    }

    fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + n)
    }

    /// The bridge's own address with the subnet's prefix.
    pub fn gateway(&self) -> Ipv4Net {
        Ipv4Net::new(self.host(1), self.subnet.prefix_len()).unwrap_or(self.subnet)
    }

    pub fn service_address(&self, slot: u32) -> Ipv4Addr {
        self.host(FIRST_SERVICE_HOST + slot)
    }

    /// Every address of the subnet kept for services, in use or not (the bridge answers on
    /// those in use).
    pub fn service_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (FIRST_SERVICE_HOST..FIRST_INSTANCE_HOST).map(|host| self.host(host))
    }

    pub fn instance_address(&self, slot: u32) -> Result<Ipv4Net, AddressError> {
        let host = FIRST_INSTANCE_HOST + slot;
        let size = 1u32 << (32 - self.subnet.prefix_len());
        if host >= size - 1 {
            return Err(AddressError::SubnetFull {
                subnet: self.subnet,
                slot,
            });
        }
        Ok(Ipv4Net::new(self.host(host), self.subnet.prefix_len()).unwrap_or(self.subnet))
    }

    /// The bridge's interface name: unique on the machine because subnets must be.
    pub fn bridge(&self) -> String {
        format!("pc{:08x}", u32::from(self.subnet.network()))
    }
}

/// A service's stable address, where its ports are served: its fixed one (`address` among its
/// networks, Compose's `ipv4_address`) when it has one, else its slot's in the application's
/// subnet (a revision shares its service's slot). `None` for a service the state lacks.
pub fn service_address_of(
    app: &paracloud_state::AppRecord,
    network: &AppNetwork,
    service: &str,
) -> Option<Ipv4Addr> {
    match app.manifest.fixed_address(service) {
        Some(fixed) => Some(fixed),
        None => app
            .services
            .get(service)
            .map(|s| network.service_address(s.slot)),
    }
}

/// Checks the fixed service addresses of `manifest` against this machine: none in the daemon's
/// subnet pool (the applications' own subnets come from it), none an address of one of the
/// host's interfaces unless Paracloud put it there (`ours`: every application's fixed
/// addresses). Says the first problem, located in `origin`.
pub fn check_fixed_addresses(
    manifest: &paracloud_manifest::Manifest,
    pool: Ipv4Net,
    ours: &std::collections::BTreeSet<Ipv4Addr>,
    origin: &str,
) -> Result<(), String> {
    let fixed: Vec<(&String, Ipv4Addr)> = manifest
        .services
        .keys()
        .filter_map(|name| manifest.fixed_address(name).map(|a| (name, a)))
        .collect();
    if fixed.is_empty() {
        return Ok(());
    }
    let host: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list this machine's addresses: {e}"))?
        .filter_map(|i| {
            let address = i.address?.as_sockaddr_in()?.ip();
            Some((i.interface_name, address))
        })
        .collect();
    for (name, address) in fixed {
        let field = format!("{origin}: services.{name}.networks");
        if pool.contains(&address) {
            return Err(format!(
                "{field}: the fixed address {address} is inside the daemon's subnet pool {pool}, where applications get their subnets: choose an address outside it"
            ));
        }
        if let Some((interface, _)) = host.iter().find(|(_, a)| *a == address) {
            if !ours.contains(&address) {
                return Err(format!(
                    "{field}: the fixed address {address} is already this machine's, on {interface}: choose another"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_subnet_is_laid_out_gateway_services_instances() {
        let plan = AddressPlan::with_default_size("10.213.0.0/16".parse().unwrap());
        let net = plan.network(5).unwrap();
        assert_eq!(net.subnet.to_string(), "10.213.5.0/24");
        assert_eq!(net.gateway().to_string(), "10.213.5.1/24");
        assert_eq!(net.service_address(0).to_string(), "10.213.5.2");
        let services: Vec<String> = net.service_addresses().map(|a| a.to_string()).collect();
        assert_eq!(services.len(), 14);
        assert_eq!(
            (services[0].as_str(), services[13].as_str()),
            ("10.213.5.2", "10.213.5.15")
        );
        assert_eq!(
            net.instance_address(0).unwrap().to_string(),
            "10.213.5.16/24"
        );
        assert_eq!(net.bridge(), "pc0ad50500");
        assert!(net.bridge().len() <= 15);
        assert!(net.instance_address(238).is_ok());
        assert!(
            net.instance_address(239).is_err(),
            ".255 is the broadcast address"
        );
    }

    #[test]
    fn a_pool_runs_out_with_a_clear_error() {
        let plan = AddressPlan::with_default_size("10.1.2.0/24".parse().unwrap());
        let err = plan.network(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the subnet pool 10.1.2.0/24 has no subnet number 1: give the daemon a larger pool with --subnet"
        );
    }

    #[test]
    fn a_22_per_application_holds_a_thousand_instances() {
        let plan = AddressPlan::new("10.213.0.0/16".parse().unwrap(), 22).unwrap();
        let net = plan.network(3).unwrap();
        assert_eq!(net.subnet.to_string(), "10.213.12.0/22");
        assert_eq!(net.gateway().to_string(), "10.213.12.1/22");
        assert_eq!(
            net.instance_address(0).unwrap().to_string(),
            "10.213.12.16/22"
        );
        assert_eq!(
            net.instance_address(1006).unwrap().to_string(),
            "10.213.15.254/22"
        );
        assert!(net.instance_address(1007).is_err());
        assert_eq!(plan.instance_slots(), 1007);
        let default = AddressPlan::with_default_size("10.213.0.0/16".parse().unwrap());
        assert_eq!(default.instance_slots(), 239);
        assert_eq!(default.wider(), Some((22, 1007)));
        assert_eq!(plan.wider(), None);
        assert!(default.network(0).unwrap().instance_address(238).is_ok());
        assert!(plan.network(63).is_ok());
        assert!(plan.network(64).is_err(), "a /16 holds 64 /22s");
        assert_eq!(plan.key(), "10.213.0.0/16 /22");
    }

    #[test]
    fn sizes_a_bridge_cannot_hold_or_without_instances_are_refused() {
        let pool = "10.213.0.0/16".parse().unwrap();
        for prefix in [0, 16, 21, 28, 32] {
            let err = AddressPlan::new(pool, prefix).unwrap_err();
            assert!(
                err.starts_with(&format!("--app-prefix {prefix}: ")),
                "{err}"
            );
            assert!(err.contains(&format!("/{prefix} cannot be used")), "{err}");
            assert!(
                err.contains("from 22 (1,007 instances per application) to 27"),
                "{err}"
            );
        }
        for prefix in 22..=27 {
            let plan = AddressPlan::new(pool, prefix).unwrap();
            assert!(plan.network(0).unwrap().instance_address(0).is_ok());
        }
    }

    #[test]
    fn pools_in_or_around_special_ranges_are_refused_with_the_flag_named() {
        for (pool, range) in [
            ("127.0.0.0/16", "127.0.0.0/8"),
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("169.254.0.0/16", "169.254.0.0/16"),
            ("224.1.0.0/16", "224.0.0.0/4"),
            ("255.255.0.0/16", "240.0.0.0/4"),
            ("126.0.0.0/7", "127.0.0.0/8"),
        ] {
            let err = AddressPlan::new(pool.parse().unwrap(), 24).unwrap_err();
            assert!(err.starts_with(&format!("--subnet {pool}: ")), "{err}");
            assert!(err.contains(&format!("overlaps {range}")), "{err}");
            assert!(err.contains("10.213.0.0/16"), "says what to give: {err}");
        }
        for pool in [
            "10.213.0.0/16",
            "172.30.0.0/16",
            "192.168.77.0/24",
            "100.64.0.0/16",
        ] {
            assert!(
                AddressPlan::new(pool.parse().unwrap(), 24).is_ok(),
                "{pool}"
            );
        }
    }
}
