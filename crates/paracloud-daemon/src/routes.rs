//! The data plane's configuration, derived from the state: what listens where, and the ready
//! instances behind each listener.

use std::net::{IpAddr, SocketAddr};

use paracloud_dataplane::{Backend, Config, Listener, Protocol};
use paracloud_manifest::Protocol as PortProtocol;
use paracloud_state::Snapshot;

use crate::addressing::AppNetwork;

/// Listeners for every port of every service: on its stable service address, and on the host
/// address it is published to.
pub fn dataplane_config(snapshot: &Snapshot, pool: ipnet::Ipv4Net) -> Config {
    let mut listeners = Vec::new();
    for app in snapshot.apps.iter().filter(|a| a.removing.is_none()) {
        let Ok(network) = AppNetwork::new(pool, app.subnet_index) else {
            continue;
        };
        for (name, service) in &app.manifest.services {
            let Some(record) = app.services.get(name) else {
                continue;
            };
            let ready: Vec<_> = snapshot
                .instances
                .iter()
                .filter(|i| i.key.app == app.name && &i.key.service == name && i.state.is_ready())
                .collect();
            for port in &service.ports {
                let protocol = match port.protocol {
                    PortProtocol::Tcp => Protocol::Tcp,
                    PortProtocol::Http => Protocol::Http,
                };
                let backends: Vec<Backend> = ready
                    .iter()
                    .filter_map(|i| {
                        let address = network.instance_address(i.slot).ok()?;
                        Some(Backend {
                            id: i.key.name(),
                            addr: SocketAddr::new(IpAddr::V4(address.addr()), port.port),
                            weight: 1,
                        })
                    })
                    .collect();
                let service_address =
                    SocketAddr::new(IpAddr::V4(network.service_address(record.slot)), port.port);
                listeners.push(Listener {
                    name: format!("{}/{}:{}", app.name, name, port.port),
                    bind: service_address,
                    protocol,
                    backends: backends.clone(),
                });
                if let Some(publish) = port.publish {
                    listeners.push(Listener {
                        name: format!("{}/{}:{} published", app.name, name, port.port),
                        bind: publish,
                        protocol,
                        backends,
                    });
                }
            }
        }
    }
    Config { listeners }
}
