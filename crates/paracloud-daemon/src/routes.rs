//! The data plane's configuration, derived from the state: what listens where, and the ready
//! instances behind each listener.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use paracloud_dataplane::{Backend, Config, Listener, Protocol, Revision};
use paracloud_manifest::{Port, Protocol as PortProtocol};
use paracloud_runtime::Segment;
use paracloud_state::{AppRecord, InstanceRecord, ServiceRecord, Snapshot};

use crate::addressing::{AddressPlan, AppNetwork};

/// The weight of an instance with no CPU limit: one core.
const CORE_WEIGHT: u32 = 1000;

/// An instance's weight in the data plane's picking: its CPU capacity in thousandths of a core
/// (a whole core when unlimited), so that an instance given more CPU gets more of the requests
/// (the instances of one side share their CPU, set by the manifest, `paracloud scale --cpu` or
/// the autoscaler). The picker's latency EWMA corrects what the limit does not tell.
pub fn capacity_weight(cpu: Option<f64>) -> u32 {
    cpu.map_or(CORE_WEIGHT, |cores| {
        (cores * f64::from(CORE_WEIGHT))
            .round()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    })
}

/// An instance's weight: its capacity weight scaled by the percent it set through PaCI (0 keeps it
/// out of the picking while another backend has a weight).
pub fn instance_weight(capacity: u32, percent: Option<u32>) -> u32 {
    let percent = percent.unwrap_or(paracloud_paci::FULL_WEIGHT);
    (u64::from(capacity) * u64::from(percent) / u64::from(paracloud_paci::FULL_WEIGHT)) as u32
}

/// The key of an instance in the measured costs: `app/service.index`.
pub fn measured_key(app: &str, instance: &str) -> String {
    format!("{app}/{instance}")
}

/// An instance's weight from its CPU (see [`capacity_weight`]).
fn cpu_weight(app: &AppRecord, instance: &InstanceRecord) -> u32 {
    let service = &instance.key.service;
    app.manifest
        .services
        .get(service)
        .map_or(CORE_WEIGHT, |spec| {
            capacity_weight(instance.cpu(app.services.get(service), spec))
        })
}

/// The requests per second `instance` serves with its CPU (one core when unlimited), from its
/// measured CPU per request in `costs`; none until measured.
pub fn measured_capacity(
    app: &AppRecord,
    instance: &InstanceRecord,
    costs: &BTreeMap<String, f64>,
) -> Option<f64> {
    let cost = costs.get(&measured_key(&app.name, &instance.key.name()))?;
    Some(f64::from(cpu_weight(app, instance)) / f64::from(CORE_WEIGHT) / cost)
}

/// Listeners for every port of every service: on its stable service address, and on the host
/// address it is published to. The revisions running beside a service are behind its listeners
/// (with their weights), not on listeners of their own. Once every ready instance of a service
/// has a measured CPU per request in `costs` (core-seconds, by [`measured_key`]), its weights
/// follow the instances' measured capacities instead of their CPU limits
/// ([`paracloud_autoscale::capacity`]).
pub fn dataplane_config(
    snapshot: &Snapshot,
    addresses: AddressPlan,
    costs: &BTreeMap<String, f64>,
) -> Config {
    let mut listeners = Vec::new();
    for app in snapshot.apps.iter().filter(|a| a.removing.is_none()) {
        let Ok(network) = addresses.network(app.subnet_index) else {
            continue;
        };
        let ready_backends = |service: &str, port: u16| -> Vec<Backend> {
            let ready: Vec<(&InstanceRecord, Ipv4Addr)> = snapshot
                .instances
                .iter()
                .filter(|i| i.key.app == app.name && i.key.service == service && i.state.is_ready())
                // An instance a migration started joins the routes when it takes over.
                .filter(|i| !i.held)
                .filter_map(|i| Some((i, network.instance_address(i.slot).ok()?.addr())))
                .collect();
            let cpu_weights: Vec<u32> = ready.iter().map(|(i, _)| cpu_weight(app, i)).collect();
            let capacities: Vec<Option<f64>> = ready
                .iter()
                .map(|(i, _)| measured_capacity(app, i, costs))
                .collect();
            let weights =
                paracloud_autoscale::capacity::capacity_weights(&cpu_weights, &capacities)
                    .unwrap_or(cpu_weights);
            ready
                .iter()
                .zip(weights)
                .map(|((i, address), weight)| Backend {
                    id: i.key.name(),
                    addr: SocketAddr::new(IpAddr::V4(*address), port),
                    weight: instance_weight(weight, i.weight),
                })
                .collect()
        };
        for (name, record, port) in service_ports(app) {
            let protocol = match port.protocol {
                PortProtocol::Tcp => Protocol::Tcp,
                PortProtocol::Http => Protocol::Http,
                PortProtocol::Udp => Protocol::Udp,
            };
            // A UDP port may have the number of a TCP one: its listener's name says which.
            let port_name = match port.protocol {
                PortProtocol::Udp => format!("{}/udp", port.port),
                PortProtocol::Tcp | PortProtocol::Http => port.port.to_string(),
            };
            let revisions: Vec<Revision> = revisions_of(app, name)
                .map(|(service_name, revision, weight)| Revision {
                    name: revision.to_owned(),
                    weight,
                    backends: ready_backends(service_name, port.port),
                })
                .collect();
            let mut backends = ready_backends(name, port.port);
            // A catalogue service's read address balances over its primary too.
            if let Some(primary) = app
                .manifest
                .services
                .get(name)
                .and_then(|s| s.reads_also_from())
            {
                backends.extend(ready_backends(primary, port.port));
            }
            let service_address = SocketAddr::new(
                IpAddr::V4(service_address(app, &network, name, record)),
                port.port,
            );
            listeners.push(Listener {
                name: format!("{}/{}:{port_name}", app.name, name),
                bind: service_address,
                protocol,
                backends: backends.clone(),
                revisions: revisions.clone(),
            });
            if let Some(publish) = port.publish {
                listeners.push(Listener {
                    name: format!("{}/{}:{port_name} published", app.name, name),
                    bind: publish,
                    protocol,
                    backends,
                    revisions,
                });
            }
        }
    }
    Config { listeners }
}

/// Each port of each service of an application with its service's record: what the data plane
/// listens on at the service's address. Revisions have none of their own (they are behind their
/// service's listeners).
fn service_ports(app: &AppRecord) -> impl Iterator<Item = (&String, &ServiceRecord, &Port)> {
    app.manifest
        .services
        .iter()
        .filter(|(_, s)| s.revision_of.is_none())
        .filter_map(|(name, service)| Some((name, app.services.get(name)?, service)))
        .flat_map(|(name, record, service)| service.ports.iter().map(move |p| (name, record, p)))
}

/// The endpoints the data plane serves an application's instances on, on its bridge, TCP ones
/// then UDP ones: the service address and port of each of its listeners there (published ports
/// are for the host's clients). The host's firewall lets the instances open connections and send
/// datagrams to these alone.
pub fn served_on_bridge(
    app: &AppRecord,
    network: &AppNetwork,
) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
    by_transport(app, service_ports(app), network)
}

/// The endpoints of `ports` on the service addresses, TCP (and HTTP) ones then UDP ones.
fn by_transport<'a>(
    app: &AppRecord,
    ports: impl Iterator<Item = (&'a String, &'a ServiceRecord, &'a Port)>,
    network: &AppNetwork,
) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
    let (udp, tcp): (Vec<_>, Vec<_>) = ports
        .map(|(name, record, port)| {
            let address = service_address(app, network, name, record);
            (
                SocketAddrV4::new(address, port.port),
                port.protocol.is_udp(),
            )
        })
        .partition(|(_, udp)| *udp);
    let addresses = |v: Vec<(SocketAddrV4, bool)>| v.into_iter().map(|(e, _)| e).collect();
    (addresses(tcp), addresses(udp))
}

/// The networks of an application split into several, each with the endpoints served to it and
/// the addresses of the instances on it (every instance record of the application: their address
/// slots are unique); empty when the application is one network.
pub fn segments(
    app: &AppRecord,
    network: &AppNetwork,
    instances: &[InstanceRecord],
) -> Vec<Segment> {
    let manifest = &app.manifest;
    if !manifest.is_split() {
        return Vec::new();
    }
    manifest
        .network_names()
        .into_iter()
        .map(|name| {
            let on = |service: &str| manifest.networks_of(service).contains(&name);
            let (served, served_udp) = by_transport(
                app,
                service_ports(app).filter(|(service, _, _)| on(service)),
                network,
            );
            Segment {
                name: name.to_owned(),
                served,
                served_udp,
                members: instances
                    .iter()
                    .filter(|i| i.key.app == app.name && on(&i.key.service))
                    .filter_map(|i| network.instance_address(i.slot).ok())
                    .map(|a| a.addr())
                    .collect(),
            }
        })
        .collect()
}

/// A service's stable address: its fixed one, else its slot's.
fn service_address(
    app: &AppRecord,
    network: &AppNetwork,
    name: &str,
    record: &ServiceRecord,
) -> std::net::Ipv4Addr {
    crate::addressing::service_address_of(app, network, name)
        .unwrap_or_else(|| network.service_address(record.slot))
}

pub use paracloud_command::revisions_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_weighs_its_cpu_in_thousandths_of_a_core() {
        assert_eq!(capacity_weight(None), 1000);
        assert_eq!(capacity_weight(Some(0.5)), 500);
        assert_eq!(capacity_weight(Some(2.0)), 2000);
        assert_eq!(capacity_weight(Some(0.0001)), 1, "never zero");
    }

    #[test]
    fn a_weight_set_through_paci_scales_the_capacity_weight() {
        assert_eq!(instance_weight(1000, None), 1000);
        assert_eq!(instance_weight(1000, Some(20)), 200);
        assert_eq!(instance_weight(500, Some(0)), 0);
        assert_eq!(instance_weight(u32::MAX, Some(100)), u32::MAX);
    }
}
