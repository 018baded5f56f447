//! What the proxy wants programmed, from the Services and EndpointSlices alone (no I/O): one
//! `ServicePort` per (service, port) with a ClusterIP, its endpoints chosen as kube-proxy
//! chooses them, and the difference between two such states.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podlet_cni::nft::family::Family;

use crate::services::{Key, Snapshot};

/// What of the node's configuration the rules depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// The family of this table (`ip` or `ip6 podlet-proxy`): its addresses only.
    pub family: Family,
    /// `--service-cluster-ip-range` of the family: traffic to an address in it that no
    /// Service has is dropped.
    pub service_cidr: IpNetwork,
    /// `--cluster-cidr` of the family: traffic to a ClusterIP from outside it is masqueraded
    /// (without one, all of it).
    pub cluster_cidr: Option<IpNetwork>,
    /// The cluster DNS addresses the agent answers on itself: never proxied, rejected or dropped.
    pub local_dns: Vec<IpAddr>,
    /// This node's name: endpoints with this `nodeName` are local (the traffic policies).
    pub node_name: String,
}

/// One port of one Service, as programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: IpAddr,
    /// IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP.
    pub proto: u8,
    pub port: u16,
    /// Sorted, without duplicates; empty: the service has no usable endpoint (REJECT).
    pub endpoints: Vec<(IpAddr, u16)>,
    /// The endpoints on this node, chosen by the same rule (the `Local` traffic policies).
    pub local_endpoints: Vec<(IpAddr, u16)>,
    /// `internalTrafficPolicy: Local`: the ClusterIP only reaches this node's endpoints.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: node ports and external addresses only reach this
    /// node's endpoints, unmasqueraded (the client's address is kept).
    pub external_local: bool,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity: Option<u32>,
    /// The node port of a NodePort or LoadBalancer service: the same endpoints on every
    /// local address of the node at that port.
    pub node_port: Option<u16>,
    /// Addresses the service also answers on at its port, as the ClusterIP but masqueraded:
    /// `spec.externalIPs` and the load balancer's `status.loadBalancer.ingress` IPs (the
    /// nodes' own, podlet being its own load balancer).
    pub external_ips: Vec<IpAddr>,
}

impl ServicePort {
    /// Traffic from outside the cluster (node port, external and load balancer IPs) goes
    /// through the port's external chain.
    pub fn external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }

    /// Whether the port has a `local-…` chain: a Local policy and endpoints on this node.
    pub fn has_local_chain(&self) -> bool {
        (self.internal_local || self.external_local) && !self.local_endpoints.is_empty()
    }

    /// Whether the port has a `service-…` chain (endpoints anywhere).
    pub fn has_cluster_chain(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// No endpoint at all: traffic is rejected.
    pub fn no_endpoints(&self) -> bool {
        self.endpoints.is_empty() && self.local_endpoints.is_empty()
    }

    /// The chain ClusterIP traffic goes to, if any (else it is dropped, or without any
    /// endpoint rejected).
    pub fn internal_chain(&self, name: &str) -> Option<String> {
        match self.internal_local {
            true => self.has_local_chain().then(|| local_chain(name)),
            false => self.has_cluster_chain().then(|| service_chain(name)),
        }
    }

    /// Whether external traffic has endpoints to go to (through the `external-…` chain).
    pub fn has_external_endpoints(&self) -> bool {
        match self.external_local {
            true => self.has_local_chain(),
            false => self.has_cluster_chain(),
        }
    }

    /// Whether the port has an `external-…` chain: external addresses and endpoints anywhere
    /// (with a Local policy and none here, the chain still short-circuits pods and the node
    /// to the cluster's endpoints, as kube-proxy's; the rest falls through to a drop).
    pub fn has_external_chain(&self) -> bool {
        self.external() && !self.no_endpoints()
    }

    /// Every endpoint with a chain: those of the cluster chain and of the local chain.
    pub fn chained_endpoints(&self) -> Vec<(IpAddr, u16)> {
        let mut all: BTreeSet<_> = self.endpoints.iter().copied().collect();
        if self.has_local_chain() {
            all.extend(self.local_endpoints.iter().copied());
        }
        all.into_iter().collect()
    }

    /// Which chains exist and how many endpoints their maps hold at most: an endpoint
    /// change that keeps it rewrites them in place.
    pub fn chain_shape(&self) -> (bool, bool, u32, u32) {
        (
            self.has_cluster_chain(),
            self.has_local_chain(),
            map_capacity(self.endpoints.len()),
            map_capacity(self.local_endpoints.len()),
        )
    }
}

/// The size a numgen map of `n` endpoints is made with: the kernel holds a set to its size
/// (and sizes its hash by it), so a port whose endpoints outgrow it is remade.
pub fn map_capacity(n: usize) -> u32 {
    u32::try_from(n.next_power_of_two().max(16)).unwrap_or(u32::MAX)
}

/// The whole wanted state, by kube-proxy's service port name `ns/name/proto/portname`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    pub ports: BTreeMap<String, ServicePort>,
}

impl Wanted {
    /// The ClusterIPs in use (kube-proxy's `cluster-ips` set).
    pub fn cluster_ips(&self) -> BTreeSet<IpAddr> {
        self.ports.values().map(|p| p.cluster_ip).collect()
    }
}

pub fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(libc::IPPROTO_TCP as u8),
        "UDP" => Some(libc::IPPROTO_UDP as u8),
        "SCTP" => Some(libc::IPPROTO_SCTP as u8),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match i32::from(p) {
        libc::IPPROTO_TCP => "tcp",
        libc::IPPROTO_UDP => "udp",
        libc::IPPROTO_SCTP => "sctp",
        _ => "unknown",
    }
}

/// Every ClusterIP service port of `snap` with its endpoints (without a memo).
#[cfg(test)]
pub fn wanted(snap: &Snapshot, scope: &Scope) -> Wanted {
    Memo::default().wanted(snap, scope)
}

/// The ports of each service as last computed, with the objects they came from: a service
/// whose object and slices are the same `Arc`s as last time (the cache shares unchanged
/// objects between snapshots) is not computed again — at 10,000 services a change would
/// otherwise recompute them all. Holding the `Arc`s keeps pointer equality sound.
#[derive(Default)]
pub struct Memo {
    services: HashMap<Key, Memoed>,
}

struct Memoed {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    ports: Vec<(String, ServicePort)>,
}

impl Memo {
    /// `wanted` for one scope (a memo must not be shared between scopes).
    pub fn wanted(&mut self, snap: &Snapshot, scope: &Scope) -> Wanted {
        let mut ports = BTreeMap::new();
        let mut next = HashMap::with_capacity(snap.services.len());
        for (key, svc) in &snap.services {
            let slices: Vec<Arc<EndpointSlice>> =
                snap.slice_arcs_of(&key.0, &key.1).cloned().collect();
            let memoed = match self.services.remove(key) {
                Some(m)
                    if Arc::ptr_eq(&m.service, svc)
                        && m.slices.len() == slices.len()
                        && m.slices.iter().zip(&slices).all(|(a, b)| Arc::ptr_eq(a, b)) =>
                {
                    m
                }
                _ => Memoed {
                    ports: service_ports(key, svc, &slices, scope),
                    service: svc.clone(),
                    slices,
                },
            };
            ports.extend(memoed.ports.iter().cloned());
            next.insert(key.clone(), memoed);
        }
        self.services = next;
        Wanted { ports }
    }
}

/// The ports of one service, by kube-proxy's service port name.
fn service_ports(
    (ns, name): &Key,
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    scope: &Scope,
) -> Vec<(String, ServicePort)> {
    let mut ports = Vec::new();
    let Some(ip) = cluster_ip(svc, scope.family) else {
        return ports;
    };
    if scope.local_dns.contains(&ip) {
        return ports;
    }
    let slices: Vec<&EndpointSlice> = slices
        .iter()
        .map(Arc::as_ref)
        .filter(|s| s.address_type == scope.family.k8s_name())
        .collect();
    let spec = svc.spec.as_ref().expect("cluster_ip checked the spec");
    for sp in spec.ports.iter().flatten() {
        let Some(proto) = proto_number(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let port_name = sp.name.clone().unwrap_or_default();
        let endpoints = endpoints_of(&slices, &port_name, proto, None);
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        // Only for services reached from outside (upstream's ExternalPolicyForLocal).
        let external_ips = external_ips(svc, scope.family);
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
            && (has_node_ports(svc) || !external_ips.is_empty());
        let local_endpoints = match internal_local || external_local {
            true => endpoints_of(&slices, &port_name, proto, Some(&scope.node_name)),
            false => Vec::new(),
        };
        let node_port = sp
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0 && has_node_ports(svc));
        let key = format!("{ns}/{name}/{}/{port_name}", proto_name(proto));
        ports.push((
            key,
            ServicePort {
                cluster_ip: ip,
                proto,
                port,
                endpoints,
                local_endpoints,
                internal_local,
                external_local,
                affinity: affinity(svc),
                node_port,
                external_ips,
            },
        ));
    }
    ports
}

/// The ClientIP affinity timeout (upstream's default when the config is left out).
fn affinity(svc: &Service) -> Option<u32> {
    let spec = svc.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let t = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    Some(t.and_then(|t| u32::try_from(t).ok()).unwrap_or(10800))
}

/// `spec.externalIPs` and, for a LoadBalancer, the IPs of `status.loadBalancer.ingress`
/// (of `family`, sorted, without duplicates).
fn external_ips(svc: &Service, family: Family) -> Vec<IpAddr> {
    let spec = svc.spec.as_ref();
    let mut ips: BTreeSet<IpAddr> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.parse().ok())
        .filter(|i| family.has(*i))
        .collect();
    if spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok())
                .filter(|i| family.has(*i)),
        );
    }
    ips.into_iter().collect()
}

fn has_node_ports(svc: &Service) -> bool {
    matches!(
        svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("NodePort" | "LoadBalancer")
    )
}

/// The ClusterIP of `family` of a proxied service (`spec.clusterIPs`, one per family of a
/// dual-stack service; `spec.clusterIP` from older writers): not headless, not ExternalName.
fn cluster_ip(svc: &Service, family: Family) -> Option<IpAddr> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.as_ref())
        .filter_map(|i| i.parse::<IpAddr>().ok())
        .find(|i| family.has(*i))
}

/// The endpoints of one service port (on `node` only, if given): the slice port of the same
/// name and protocol carries the number (so a named targetPort resolves per slice). Ready
/// endpoints (no condition = ready); if there are none, the serving and terminating ones, as
/// kube-proxy falls back to them (for the cluster and the local set each).
fn endpoints_of(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: u8,
    node: Option<&str>,
) -> Vec<(IpAddr, u16)> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for s in slices {
        let Some(port) = s.ports.iter().flatten().find_map(|p| {
            let same = p.name.as_deref().unwrap_or_default() == port_name
                && proto_number(p.protocol.as_deref()) == Some(proto);
            same.then_some(p.port).flatten()
        }) else {
            continue;
        };
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        for e in &s.endpoints {
            if node.is_some_and(|n| e.node_name.as_deref() != Some(n)) {
                continue;
            }
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            // A slice's addressType is its family; a stray address of the other is ignored.
            if s.address_type != Family::of(ip).k8s_name() {
                continue;
            }
            let c = e.conditions.clone().unwrap_or_default();
            let is_ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(is_ready);
            if is_ready {
                ready.insert((ip, port));
            } else if serving && c.terminating.unwrap_or(false) {
                terminating.insert((ip, port));
            }
        }
    }
    if ready.is_empty() { terminating } else { ready }
        .into_iter()
        .collect()
}

impl ServicePort {
    /// Everything but the endpoints: a change of it rewrites the whole port.
    #[allow(clippy::type_complexity)]
    fn frame(
        &self,
    ) -> (
        IpAddr,
        u8,
        u16,
        Option<u16>,
        &[IpAddr],
        bool,
        bool,
        Option<u32>,
    ) {
        (
            self.cluster_ip,
            self.proto,
            self.port,
            self.node_port,
            &self.external_ips,
            self.internal_local,
            self.external_local,
            self.affinity,
        )
    }
}

/// What changed from one state to the next, by service port name.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// New ports, and ports whose address, protocol, port, node port or external addresses
    /// changed (removed first).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same key, other endpoints.
    pub endpoints_changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.endpoints_changed.is_empty()
    }
}

pub fn diff(old: &Wanted, new: &Wanted) -> Diff {
    let mut d = Diff::default();
    for (k, o) in &old.ports {
        match new.ports.get(k) {
            None => d.removed.push(k.clone()),
            Some(n) if n.frame() != o.frame() || n.chain_shape() != o.chain_shape() => {
                d.removed.push(k.clone());
                d.added.push(k.clone());
            }
            Some(n) if (&n.endpoints, &n.local_endpoints) != (&o.endpoints, &o.local_endpoints) => {
                d.endpoints_changed.push(k.clone())
            }
            Some(_) => {}
        }
    }
    for k in new.ports.keys() {
        if !old.ports.contains_key(k) {
            d.added.push(k.clone());
        }
    }
    d
}

/// A short stable hash of `s` in base32 (kube-proxy's chain-name prefix; any stable hash does).
pub fn hash8(s: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8)
        .map(|i| A[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// `service-<hash>-ns/name/proto/port`
pub fn service_chain(port_name: &str) -> String {
    format!("service-{}-{port_name}", hash8(port_name))
}

/// `external-<hash>-ns/name/proto/port`: traffic from outside (node port, external and load
/// balancer IPs), masqueraded, then the service.
pub fn external_chain(port_name: &str) -> String {
    format!("external-{}-{port_name}", hash8(port_name))
}

/// `local-<hash>-ns/name/proto/port`: the Local traffic policies' chain (this node's
/// endpoints).
pub fn local_chain(port_name: &str) -> String {
    format!("local-{}-{port_name}", hash8(port_name))
}

/// `local-endpoints-<hash>`: the numgen map of a port's local chain.
pub fn local_endpoints_map(port_name: &str) -> String {
    format!("local-endpoints-{}", hash8(port_name))
}

/// `affinity-<hash>`: the client addresses that stick to one endpoint (ClientIP affinity).
pub fn affinity_set(port_name: &str, ep: (IpAddr, u16)) -> String {
    format!(
        "affinity-{}",
        hash8(&format!("{port_name}__{}/{}", ep.0, ep.1))
    )
}

/// `endpoints-<hash>`: the numgen map of a service port.
pub fn endpoints_map(port_name: &str) -> String {
    format!("endpoints-{}", hash8(port_name))
}

/// `endpoint-<hash>-ns/name/proto/port__ip/port`
pub fn endpoint_chain(port_name: &str, ep: (IpAddr, u16)) -> String {
    let tail = format!("{port_name}__{}/{}", ep.0, ep.1);
    format!("endpoint-{}-{tail}", hash8(&tail))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
pub(super) mod tests;
