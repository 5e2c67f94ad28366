//! A blocking rtnetlink client (rtnetlink's message builders over a plain netlink socket) for the
//! places without an async runtime or where a request must finish in microseconds: spawn's veth,
//! sandbox-init's addresses, cleanup.

use std::io;
use std::net::Ipv4Addr;

use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::{Error, Result};

/// The interface name of the instance's side of its veth pair.
pub(crate) const INSTANCE_IFACE: &str = "eth0";

pub(crate) struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence += 1;
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut reply = vec![0u8; 32 * 1024];
        loop {
            reply.clear();
            let n = self.socket.recv(&mut reply, 0)?;
            let mut offset = 0;
            while offset < n {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let length = message.header.length as usize;
                if message.header.sequence_number == self.sequence {
                    match message.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(()),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
            }
        }
    }

    fn new_link(&mut self, message: LinkMessage) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair: `host` up on the bridge, the peer as eth0 directly in the network
    /// namespace of `pid` (named there, so host names never clash with it). The peer stays down:
    /// the kernel configures it before the pair is linked, when opening it fails (ENOTCONN).
    pub(crate) fn create_veth(
        &mut self,
        host: &str,
        bridge_index: u32,
        pid: i32,
        peer_mac: Vec<u8>,
    ) -> io::Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(INSTANCE_IFACE)
            .address(peer_mac)
            .setns_by_pid(pid as u32)
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host)
            .up()
            .controller(bridge_index)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.new_link(message)
    }

    /// Tells the kernel the link-layer address of `address` on interface `index`, for good: a
    /// permanent entry. The host knows each instance's so that its first packet to a new
    /// instance needs no ARP round trip, and a packet that asked while the instance was not yet
    /// up is sent at once rather than at the next ARP retry a second later; an instance knows
    /// its bridge's. Permanent entries are also the ones the kernel does not count against
    /// `gc_thresh3` (1,024 by default, for all network namespaces together), which a thousand
    /// instances' learned entries would exceed: a new entry would then fail with ENOBUFS.
    pub(crate) fn set_neighbour(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        mac: &[u8],
    ) -> io::Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unspec;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                address,
            )));
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    pub(crate) fn set_up(&mut self, index: u32) -> io::Result<()> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.request(RouteNetlinkMessage::SetLink(message), 0)
    }

    pub(crate) fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address, prefix)
            .build();
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// A route to one address through `gateway` on the interface `index`.
    pub(crate) fn add_host_route(
        &mut self,
        index: u32,
        destination: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> io::Result<()> {
        let message = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, 32)
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes a link by name; Ok(false) when there was none.
    pub(crate) fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let message = LinkUnspec::new_with_name(name).build();
        match self.request(RouteNetlinkMessage::DelLink(message), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The index of an interface of the caller's network namespace.
pub(crate) fn link_index(name: &str) -> io::Result<u32> {
    crate::sys::if_nametoindex(name)
}

/// Deletes an interface if it exists (cleanup of an instance's host-side veth).
pub(crate) fn delete_link_if_exists(name: &str) -> Result<()> {
    let failed = |e: io::Error| Error::Network(format!("cannot delete interface {name}: {e}"));
    Netlink::open()
        .map_err(failed)?
        .delete_link(name)
        .map_err(failed)?;
    Ok(())
}
