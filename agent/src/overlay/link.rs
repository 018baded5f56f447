//! The kernel side of node routes, over rtnetlink: the underlay link, the VXLAN device, and the
//! routes, FDB and neighbour entries podlet owns. Every `sync_*` reads what exists, compares it
//! with what is wanted and changes only what differs, so an agent restart leaves established
//! flows alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;
use podlet_cni::netlink::io_err;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

/// The route protocol number that marks podlet's routes (`ip route show proto 158`): what
/// carries it is podlet's to replace or remove, nothing else is touched.
pub const PROTO: u8 = 158;
/// The VXLAN device, flannel's `flannel.<VNI>` naming.
pub const VXLAN_DEV: &str = "podlet.1";
/// flannel's VXLAN defaults: VNI 1, the Linux kernel's UDP port 8472, 50 bytes of headers.
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
pub const VXLAN_OVERHEAD: u32 = 50;

fn ctx(what: String) -> impl FnOnce(rtnetlink::Error) -> io::Error {
    move |e| {
        let e = io_err(e);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }
}

/// The link holding the node's IP: where peers are reached, and what VXLAN runs over.
#[derive(Debug, Clone, PartialEq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    /// The subnets of the link's IPv4 addresses: a peer inside one is on-link.
    pub nets: Vec<Ipv4Network>,
}

impl Underlay {
    pub fn on_link(&self, peer: Ipv4Addr) -> bool {
        self.nets.iter().any(|n| n.contains(peer))
    }
}

fn v4_address(m: &AddressMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Some(Ipv4Addr::from(ip.octets()))
        }
        _ => None,
    })
}

pub async fn link_by_index(h: &Handle, index: u32) -> io::Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await.map_err(io_err) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

pub async fn link_by_name(h: &Handle, name: &str) -> io::Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await.map_err(io_err) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

fn mtu_of(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

fn name_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn mac_of(l: &LinkMessage) -> Option<[u8; 6]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => {
            let mut out = [0u8; 6];
            out.copy_from_slice(m);
            Some(out)
        }
        _ => None,
    })
}

/// The link that holds `ip`, or None when no link does.
pub async fn underlay(h: &Handle, ip: Ipv4Addr) -> io::Result<Option<Underlay>> {
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(ctx("listing addresses".into()))?;
    let Some(index) = addrs
        .iter()
        .find(|m| v4_address(m) == Some(ip))
        .map(|m| m.header.index)
    else {
        return Ok(None);
    };
    let nets = addrs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| Ipv4Network::new(v4_address(m)?, m.header.prefix_len).ok())
        .map(|n| Ipv4Network::new(n.network(), n.prefix()).expect("prefix"))
        .collect();
    let Some(link) = link_by_index(h, index).await? else {
        return Ok(None);
    };
    Ok(Some(Underlay {
        index,
        name: name_of(&link),
        mtu: mtu_of(&link),
        ip,
        nets,
    }))
}

fn vxlan_info(l: &LinkMessage) -> Vec<InfoVxlan> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether the existing device is the one wanted over `under` (a change of the node IP or of
/// its link means a new device).
fn vxlan_matches(l: &LinkMessage, under: &Underlay) -> bool {
    let info = vxlan_info(l);
    let has = |want: &InfoVxlan| info.iter().any(|i| i == want);
    has(&InfoVxlan::Id(VNI))
        && has(&InfoVxlan::Local(under.ip))
        && has(&InfoVxlan::Link(under.index))
        && has(&InfoVxlan::Port(VXLAN_PORT))
        && has(&InfoVxlan::Learning(false))
}

/// Creates (or keeps) the VXLAN device over `under`, up, with its MTU; returns its index and
/// MAC. A device made for another IP or link is replaced.
pub async fn ensure_vxlan(h: &Handle, under: &Underlay) -> io::Result<(u32, [u8; 6])> {
    let mtu = under.mtu.saturating_sub(VXLAN_OVERHEAD);
    if let Some(l) = link_by_name(h, VXLAN_DEV).await? {
        if vxlan_matches(&l, under) {
            let index = l.header.index;
            let up = l
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up);
            if mtu_of(&l) != mtu || !up {
                h.link()
                    .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(ctx(format!("setting up {VXLAN_DEV}")))?;
            }
            let mac = mac_of(&l).ok_or_else(|| io::Error::other("VXLAN device without MAC"))?;
            return Ok((index, mac));
        }
        tracing::info!(
            dev = VXLAN_DEV,
            "replacing the VXLAN device made for another node IP or link"
        );
        h.link()
            .del(l.header.index)
            .execute()
            .await
            .map_err(ctx(format!("deleting {VXLAN_DEV}")))?;
    }
    let msg = LinkVxlan::new(VXLAN_DEV, VNI)
        .dev(under.index)
        .local(under.ip)
        .port(VXLAN_PORT)
        .learning(false)
        .mtu(mtu)
        .build();
    h.link().add(msg).execute().await.map_err(ctx(format!(
        "creating the VXLAN device {VXLAN_DEV} (VNI {VNI}, UDP {VXLAN_PORT}) over {}",
        under.name
    )))?;
    let l = link_by_name(h, VXLAN_DEV)
        .await?
        .ok_or_else(|| io::Error::other(format!("{VXLAN_DEV} vanished after creation")))?;
    // The tunnel carries IPv4 only: without this the kernel gives the device an IPv6
    // link-local address and route a moment after it comes up, a change of the node's
    // routing nobody asked for (and one that looked like churn after agent restarts).
    no_ipv6(VXLAN_DEV)?;
    h.link()
        .set(LinkUnspec::new_with_index(l.header.index).up().build())
        .execute()
        .await
        .map_err(ctx(format!("setting up {VXLAN_DEV}")))?;
    tracing::info!(dev = VXLAN_DEV, underlay = %under.name, mtu, "created the VXLAN device");
    let mac = mac_of(&l).ok_or_else(|| io::Error::other("VXLAN device without MAC"))?;
    Ok((l.header.index, mac))
}

/// Turns IPv6 off on `dev` (in this process's network namespace); nothing to do where the
/// kernel has no IPv6.
fn no_ipv6(dev: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}"))),
    }
}

/// Gives the device exactly the address `ip/32` (the node's VTEP address).
pub async fn sync_vtep_address(h: &Handle, index: u32, ip: Ipv4Addr) -> io::Result<()> {
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(ctx(format!("listing the addresses of {VXLAN_DEV}")))?;
    let mut present = false;
    for m in addrs {
        match v4_address(&m) {
            Some(a) if a == ip && m.header.prefix_len == 32 => present = true,
            Some(_) => h
                .address()
                .del(m)
                .execute()
                .await
                .map_err(ctx(format!("removing an old address of {VXLAN_DEV}")))?,
            None => {}
        }
    }
    if !present {
        h.address()
            .add(index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .map_err(ctx(format!("adding {ip}/32 to {VXLAN_DEV}")))?;
    }
    Ok(())
}

/// A route podlet owns: `dst via gw dev oif [onlink] proto 158`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Network,
    pub via: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(Route {
        dst: Ipv4Network::new(dst?, m.header.destination_prefix_length).ok()?,
        via: via?,
        oif: oif?,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    })
}

/// podlet's routes in the main table.
pub async fn own_routes(h: &Handle) -> io::Result<Vec<(Route, RouteMessage)>> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(ctx("listing routes".into()))?;
    Ok(all
        .into_iter()
        .filter(|m| {
            u8::from(m.header.protocol) == PROTO && m.header.table == RouteHeader::RT_TABLE_MAIN
        })
        .filter_map(|m| Some((route_of(&m)?, m)))
        .collect())
}

/// Counts of what a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

/// Makes podlet's routes exactly `want`.
pub async fn sync_routes(h: &Handle, want: &[Route]) -> io::Result<Changes> {
    let have = own_routes(h).await?;
    let mut changes = Changes::default();
    for (r, m) in &have {
        if !want.contains(r) {
            h.route()
                .del(m.clone())
                .execute()
                .await
                .map_err(ctx(format!("removing the route to {}", r.dst)))?;
            changes.removed += 1;
        }
    }
    for r in want {
        if have.iter().any(|(h, _)| h == r) {
            continue;
        }
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.via)
            .output_interface(r.oif)
            .protocol(RouteProtocol::from(PROTO));
        if r.onlink {
            b = b.onlink();
        }
        // Replace: a route to the same range by another way (a podCIDR that moved) is swapped
        // in one step.
        h.route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the route to {} via {}", r.dst, r.via)))?;
        changes.added += 1;
    }
    Ok(changes)
}

fn neigh_parts(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(IpAddr::V4(*i)),
            // An FDB entry's family is AF_BRIDGE, which says nothing of its address's: the
            // parser leaves it raw.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                ip = Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut o = [0u8; 6];
                o.copy_from_slice(l);
                mac = Some(o);
            }
            _ => {}
        }
    }
    (ip, mac)
}

async fn neighbours(
    h: &Handle,
    family: AddressFamily,
    index: u32,
) -> io::Result<Vec<NeighbourMessage>> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(ctx("listing neighbours".into()))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
        .collect())
}

/// Makes the permanent FDB entries of the VXLAN device exactly `want` (peer VTEP MAC -> peer
/// node IP), and its permanent neighbour entries exactly `arp` (peer VTEP address -> MAC).
pub async fn sync_vxlan_peers(
    h: &Handle,
    index: u32,
    fdb: &BTreeMap<[u8; 6], Ipv4Addr>,
    arp: &BTreeMap<Ipv4Addr, [u8; 6]>,
) -> io::Result<Changes> {
    let mut changes = Changes::default();
    let mut seen = BTreeSet::new();
    for m in neighbours(h, AddressFamily::Bridge, index).await? {
        let (ip, mac) = neigh_parts(&m);
        let keep = match (mac, ip) {
            (Some(mac), Some(IpAddr::V4(ip))) => fdb.get(&mac) == Some(&ip),
            _ => false,
        };
        if keep {
            seen.insert(mac.expect("matched"));
        } else {
            h.neighbours()
                .del(m)
                .execute()
                .await
                .map_err(ctx(format!("removing an FDB entry of {VXLAN_DEV}")))?;
            changes.removed += 1;
        }
    }
    for (mac, ip) in fdb {
        if seen.contains(mac) {
            continue;
        }
        h.neighbours()
            .add_bridge(index, mac)
            .destination(IpAddr::V4(*ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the FDB entry for {ip}")))?;
        changes.added += 1;
    }
    let mut seen = BTreeSet::new();
    for m in neighbours(h, AddressFamily::Inet, index).await? {
        let (ip, mac) = neigh_parts(&m);
        let keep = match (ip, mac) {
            (Some(IpAddr::V4(ip)), Some(mac)) => arp.get(&ip) == Some(&mac),
            _ => false,
        };
        if keep {
            if let Some(IpAddr::V4(ip)) = ip {
                seen.insert(ip);
            }
        } else {
            h.neighbours()
                .del(m)
                .execute()
                .await
                .map_err(ctx(format!("removing a neighbour entry of {VXLAN_DEV}")))?;
            changes.removed += 1;
        }
    }
    for (ip, mac) in arp {
        if seen.contains(ip) {
            continue;
        }
        h.neighbours()
            .add(index, IpAddr::V4(*ip))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(ctx(format!("adding the neighbour entry for {ip}")))?;
        changes.added += 1;
    }
    Ok(changes)
}

/// Removes the VXLAN device (its FDB and neighbour entries and routes go with it).
pub async fn remove_vxlan(h: &Handle) -> io::Result<bool> {
    match link_by_name(h, VXLAN_DEV).await? {
        Some(l) => {
            h.link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(ctx(format!("deleting {VXLAN_DEV}")))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
