//! What the kernel should hold for the peers, computed from the Nodes alone (no I/O): per peer
//! podCIDR a route, by host-gw or VXLAN, and the VXLAN FDB and neighbour entries; and what pod
//! traffic is never masqueraded.
//!
//! The underlay is IPv4 (the nodes' InternalIPs). A peer's IPv4 podCIDR goes host-gw when the
//! backend allows it; an IPv6 one always goes through the VXLAN device, which carries both
//! families over the IPv4 underlay: Linux has no IPv6 route via an IPv4 gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;
use k8s_rules::cidrs::DualStackCidrs;

use super::{link, routes::Route, Backend, PUBLIC_IP, VTEP_MAC};

/// What a peer Node offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub name: String,
    /// Its `spec.podCIDRs`, primary first.
    pub cidrs: Vec<IpNetwork>,
    /// Its InternalIP: where host-gw routes go.
    pub ip: Ipv4Addr,
    /// Where its VXLAN packets go, and its VTEP MAC, when it publishes them.
    pub vtep: Option<(Ipv4Addr, [u8; 6])>,
}

/// A Node's `spec.podCIDRs` (or its older `spec.podCIDR`), primary first.
pub fn pod_cidrs(n: &Node) -> Vec<IpNetwork> {
    let spec = n.spec.clone().unwrap_or_default();
    let list = spec
        .pod_cidrs
        .filter(|l| !l.is_empty())
        .or_else(|| spec.pod_cidr.map(|c| vec![c]))
        .unwrap_or_default();
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

pub fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

pub fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub fn peer_of(n: &Node) -> Option<Peer> {
    let ip = internal_ip(n)?;
    let mac = annotation(n, VTEP_MAC).and_then(podlet_cni::netlink::parse_mac);
    let public = annotation(n, PUBLIC_IP)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ip);
    Some(Peer {
        name: n.metadata.name.clone().unwrap_or_default(),
        cidrs: pod_cidrs(n),
        ip,
        vtep: mac.map(|m| (public, m)),
    })
}

/// A VTEP address: the first address of the range (flannel's choice, never given to a pod),
/// in the range's family.
pub fn vtep_ip(c: &IpNetwork) -> IpAddr {
    c.network()
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Everything the kernel should hold for the peers.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub routes: Vec<Route>,
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
    /// Permanent neighbour entries on the VXLAN device: peer VTEP address (either family) ->
    /// its MAC.
    pub neigh: BTreeMap<IpAddr, [u8; 6]>,
    /// Why a peer (or one of its podCIDRs) gets no route (reported once per change).
    pub skipped: BTreeMap<String, String>,
}

pub fn plan(
    backend: Backend,
    under: &link::Underlay,
    vxlan: Option<u32>,
    own: &[IpNetwork],
    peers: &[Peer],
) -> Plan {
    let mut p = Plan::default();
    for peer in peers {
        if peer.cidrs.is_empty() {
            p.skipped.insert(peer.name.clone(), "no podCIDR yet".into());
            continue;
        }
        if let Some(c) = peer
            .cidrs
            .iter()
            .find(|c| own.iter().any(|o| overlaps(o, c)))
        {
            p.skipped.insert(
                peer.name.clone(),
                format!("its podCIDR {c} overlaps this node's"),
            );
            continue;
        }
        let direct = match backend {
            Backend::HostGw => true,
            Backend::Vxlan => false,
            Backend::Auto => under.on_link(peer.ip),
            Backend::None => continue,
        };
        if direct && !under.on_link(peer.ip) {
            p.skipped.insert(
                peer.name.clone(),
                format!(
                    "host-gw: {} is not on a subnet of {} ({:?})",
                    peer.ip, under.name, under.nets
                ),
            );
            continue;
        }
        let mut why: Vec<String> = Vec::new();
        for c in &peer.cidrs {
            if direct && c.is_ipv4() {
                p.routes.push(Route {
                    dst: *c,
                    via: IpAddr::V4(peer.ip),
                    oif: under.index,
                    onlink: false,
                });
                continue;
            }
            let reason = match (backend, vxlan, peer.vtep) {
                (Backend::HostGw, _, _) => format!(
                    "host-gw: no route to {c}: an IPv6 route cannot go via the IPv4 node IP {} (--network-backend auto or vxlan carries it)",
                    peer.ip
                ),
                (_, Some(vx), Some((public, mac))) => {
                    p.fdb.insert(mac, public);
                    p.neigh.insert(vtep_ip(c), mac);
                    p.routes.push(Route {
                        dst: *c,
                        via: vtep_ip(c),
                        oif: vx,
                        onlink: true,
                    });
                    continue;
                }
                (_, None, _) => format!("vxlan: this node has no {}", link::VXLAN_DEV),
                (_, _, None) => format!("vxlan: the Node has no {VTEP_MAC} annotation"),
            };
            if !why.contains(&reason) {
                why.push(reason);
            }
        }
        if !why.is_empty() {
            p.skipped.insert(peer.name.clone(), why.join("; "));
        }
    }
    p.routes.sort();
    p
}

/// Pod traffic to these is never masqueraded: the cluster CIDRs, every Node's podCIDRs (also
/// when `--pod-cidr` put one outside the cluster CIDR) and every Node's InternalIP, so that a
/// pod's address reaches other pods and other nodes unchanged, in both families.
pub fn unmasqueraded(
    cluster_cidr: &DualStackCidrs,
    nodes: &BTreeMap<String, Node>,
) -> Vec<IpNetwork> {
    let mut keep: BTreeSet<IpNetwork> = cluster_cidr.iter().copied().collect();
    for n in nodes.values() {
        keep.extend(pod_cidrs(n));
        if let Some(ip) = internal_ip(n) {
            keep.insert(IpNetwork::V4(Ipv4Network::from(ip)));
        }
    }
    keep.into_iter().collect()
}

#[cfg(test)]
mod tests;
