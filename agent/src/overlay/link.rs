//! The kernel side of node routes, over rtnetlink: the underlay link, the VXLAN device, and the
//! FDB and neighbour entries podlet owns (the routes are in `routes`). Every `sync_*` reads what exists, compares it
//! with what is wanted and changes only what differs, so an agent restart leaves established
//! flows alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use podlet_cni::netlink::io_err;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

/// The VXLAN device, flannel's `flannel.<VNI>` naming.
pub const VXLAN_DEV: &str = "podlet.1";
/// flannel's VXLAN defaults: VNI 1, the Linux kernel's UDP port 8472, 50 bytes of headers.
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
pub const VXLAN_OVERHEAD: u32 = 50;

pub(super) fn ctx(what: String) -> impl FnOnce(rtnetlink::Error) -> io::Error {
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
/// MAC. A device made for another IP or link is replaced. `ipv6`: whether it carries IPv6 pod
/// traffic too (this node has an IPv6 podCIDR); the tunnel itself stays on the IPv4 underlay.
pub async fn ensure_vxlan(h: &Handle, under: &Underlay, ipv6: bool) -> io::Result<(u32, [u8; 6])> {
    let mtu = under.mtu.saturating_sub(VXLAN_OVERHEAD);
    if let Some(l) = link_by_name(h, VXLAN_DEV).await? {
        if vxlan_matches(&l, under) {
            let index = l.header.index;
            let up = l
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up);
            set_ipv6(VXLAN_DEV, ipv6)?;
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
    set_ipv6(VXLAN_DEV, ipv6)?;
    h.link()
        .set(LinkUnspec::new_with_index(l.header.index).up().build())
        .execute()
        .await
        .map_err(ctx(format!("setting up {VXLAN_DEV}")))?;
    tracing::info!(dev = VXLAN_DEV, underlay = %under.name, mtu, ipv6, "created the VXLAN device");
    let mac = mac_of(&l).ok_or_else(|| io::Error::other("VXLAN device without MAC"))?;
    Ok((l.header.index, mac))
}

/// Before the device is up. Without IPv6 pods, IPv6 is off on `dev`; with them it is on but
/// without a link-local address (`addr_gen_mode` 1): either way the kernel adds no address
/// and route of its own a moment after the device comes up, a change of the node's routing
/// nobody asked for (and one that looked like churn after agent restarts). Peers are reached
/// through permanent neighbour entries, so no neighbour discovery needs one. Each value is
/// written only when it differs. Nothing to do where the kernel has no IPv6.
pub fn set_ipv6(dev: &str, on: bool) -> io::Result<()> {
    let conf = format!("/proc/sys/net/ipv6/conf/{dev}");
    let set = |key: &str, value: &str| {
        let path = format!("{conf}/{key}");
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(v) if v.trim() == value => Ok(()),
            _ => std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    };
    if on {
        set("addr_gen_mode", "1")?;
        set("disable_ipv6", "0")
    } else {
        set("disable_ipv6", "1")
    }
}

/// Gives the device exactly the addresses `ips` (the node's VTEP addresses: an IPv4 `/32`,
/// an IPv6 `/128`).
pub async fn sync_vtep_addresses(h: &Handle, index: u32, ips: &[IpAddr]) -> io::Result<()> {
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(ctx(format!("listing the addresses of {VXLAN_DEV}")))?;
    let full = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
    let mut present = BTreeSet::new();
    for m in addrs {
        let Some(a) = any_address(&m) else { continue };
        if ips.contains(&a) && m.header.prefix_len == full(&a) {
            present.insert(a);
        } else {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(ctx(format!("removing the old address {a} of {VXLAN_DEV}")))?;
        }
    }
    for ip in ips.iter().filter(|i| !present.contains(*i)) {
        h.address()
            .add(index, *ip, full(ip))
            .execute()
            .await
            .map_err(ctx(format!("adding {ip}/{} to {VXLAN_DEV}", full(ip))))?;
    }
    Ok(())
}

fn any_address(m: &AddressMessage) -> Option<IpAddr> {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
}

/// Counts of what a sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
}

fn neigh_parts(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(IpAddr::V4(*i)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(i)) => {
                ip = Some(IpAddr::V6(*i))
            }
            // An FDB entry's family is AF_BRIDGE, which says nothing of its address's: the
            // parser leaves it raw.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                ip = Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                ip = Some(IpAddr::V6(Ipv6Addr::from(o)))
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
/// node IP), and its permanent neighbour entries of both families exactly `neigh` (peer VTEP
/// address -> MAC).
pub async fn sync_vxlan_peers(
    h: &Handle,
    index: u32,
    fdb: &BTreeMap<[u8; 6], Ipv4Addr>,
    neigh: &BTreeMap<IpAddr, [u8; 6]>,
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
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for m in neighbours(h, family, index).await? {
            match neigh_parts(&m) {
                (Some(ip), Some(mac)) if neigh.get(&ip) == Some(&mac) => {
                    seen.insert(ip);
                }
                _ => {
                    h.neighbours()
                        .del(m)
                        .execute()
                        .await
                        .map_err(ctx(format!("removing a neighbour entry of {VXLAN_DEV}")))?;
                    changes.removed += 1;
                }
            }
        }
    }
    for (ip, mac) in neigh {
        if seen.contains(ip) {
            continue;
        }
        h.neighbours()
            .add(index, *ip)
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
