//! Pod traffic between nodes, driven by a watch of every Node: this node's pod range (its Node's
//! `spec.podCIDR` unless `--pod-cidr` overrides it) becomes the default CNI network, and each
//! peer's range gets a route — `host-gw` (via the peer's node IP, when it is on the subnet of
//! the link holding this node's IP) or `vxlan` (flannel's layout: a kernel VXLAN device, per
//! peer an FDB entry, a neighbour entry and an onlink route via the peer's VTEP address). Pod
//! traffic is masqueraded only when it leaves the cluster (see `masquerade`).
//!
//! Everything is reconciled as a diff of the kernel's state against the wanted one, on every
//! Node change and every `RESYNC`, so an agent restart replaces nothing that is right.

pub mod cleanup;
pub mod link;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;
use k8s_rules::cidrs::DualStackCidrs;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use rtnetlink::Handle;
use tokio::sync::watch;

use crate::config::Config;
pub use crate::config::NetworkBackend as Backend;
use crate::network::{InitError, Network};

/// Why a reconcile failed (it is tried again a second later).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Netlink(#[from] std::io::Error),
    #[error("writing the default pod network")]
    Network(#[from] InitError),
    #[error("writing the masquerade rule (nftables table podlet-masq)")]
    Masquerade(#[source] std::io::Error),
    #[error("annotating the Node with its VTEP")]
    Publish(#[source] kube::Error),
}

/// This node's VTEP MAC, for peers' FDB and neighbour entries (flannel keeps it in
/// `flannel.alpha.coreos.com/backend-data`).
pub const VTEP_MAC: &str = "podlet.dev/vtep-mac";
/// The address peers send VXLAN packets to (flannel's `flannel.alpha.coreos.com/public-ip`).
pub const PUBLIC_IP: &str = "podlet.dev/public-ip";
/// The nftables table (ip family) of the pod masquerade rule.
pub const MASQ_TABLE: &str = "podlet-masq";
/// How long the agent waits for the node IPAM controller before saying so as an error.
const PODCIDR_TIMEOUT: Duration = Duration::from_secs(60);
/// Routes are checked again this often even without a Node change (someone may remove one).
const RESYNC: Duration = Duration::from_secs(30);

/// The MTU pods get: the VXLAN device's whenever VXLAN may carry their traffic (as flannel
/// writes its backend's MTU into the CNI configuration), else the link's own (None).
pub async fn pod_mtu(cfg: &Config, node_ip: Option<IpAddr>) -> Option<u32> {
    if cfg.cluster == crate::config::ClusterMode::Standalone || !cfg.network_backend.vxlan() {
        return None;
    }
    let Some(IpAddr::V4(ip)) = node_ip else {
        return None;
    };
    let nl = podlet_cni::netlink::Netlink::here().ok()?;
    let under = link::underlay(&nl.handle, ip).await.ok()??;
    Some(under.mtu.saturating_sub(link::VXLAN_OVERHEAD))
}

/// Standalone: the masquerade rule for the pod range alone.
pub fn standalone(cfg: &Config) -> std::io::Result<()> {
    let Some(c) = cfg.pod_cidr else { return Ok(()) };
    podlet_cni::nft::replace_masquerade(MASQ_TABLE, &[c], &[c])
}

/// What a peer Node offers.
#[derive(Debug, Clone, PartialEq)]
struct Peer {
    name: String,
    cidrs: Vec<Ipv4Network>,
    /// Its InternalIP: where host-gw routes go.
    ip: Ipv4Addr,
    /// Where its VXLAN packets go, and its VTEP MAC, when it publishes them.
    vtep: Option<(Ipv4Addr, [u8; 6])>,
}

fn pod_cidrs(n: &Node) -> Vec<IpNetwork> {
    let spec = n.spec.clone().unwrap_or_default();
    let list = spec
        .pod_cidrs
        .filter(|l| !l.is_empty())
        .or_else(|| spec.pod_cidr.map(|c| vec![c]))
        .unwrap_or_default();
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn peer_of(n: &Node) -> Option<Peer> {
    let ip = internal_ip(n)?;
    let cidrs: Vec<Ipv4Network> = pod_cidrs(n)
        .into_iter()
        .filter_map(|c| match c {
            IpNetwork::V4(c) => Some(c),
            IpNetwork::V6(_) => None,
        })
        .collect();
    let mac = annotation(n, VTEP_MAC).and_then(podlet_cni::netlink::parse_mac);
    let public = annotation(n, PUBLIC_IP)
        .and_then(|a| a.parse().ok())
        .unwrap_or(ip);
    Some(Peer {
        name: n.metadata.name.clone().unwrap_or_default(),
        cidrs,
        ip,
        vtep: mac.map(|m| (public, m)),
    })
}

/// A VTEP address: the first address of the range (flannel's choice, never given to a pod).
fn vtep_ip(c: &Ipv4Network) -> Ipv4Addr {
    c.network()
}

/// Everything the kernel should hold for the peers.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    routes: Vec<link::Route>,
    fdb: BTreeMap<[u8; 6], Ipv4Addr>,
    arp: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// Why a peer gets no route (reported once per change).
    skipped: BTreeMap<String, String>,
}

fn plan(
    backend: Backend,
    under: &link::Underlay,
    vxlan: Option<u32>,
    own: &[Ipv4Network],
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
            .find(|c| own.iter().any(|o| o.overlaps(**c)))
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
        if direct {
            if !under.on_link(peer.ip) {
                p.skipped.insert(
                    peer.name.clone(),
                    format!(
                        "host-gw: {} is not on a subnet of {} ({:?})",
                        peer.ip, under.name, under.nets
                    ),
                );
                continue;
            }
            for c in &peer.cidrs {
                p.routes.push(link::Route {
                    dst: *c,
                    via: peer.ip,
                    oif: under.index,
                    onlink: false,
                });
            }
            continue;
        }
        let (Some(vx), Some((public, mac))) = (vxlan, peer.vtep) else {
            p.skipped.insert(
                peer.name.clone(),
                format!("vxlan: the Node has no {VTEP_MAC} annotation"),
            );
            continue;
        };
        p.fdb.insert(mac, public);
        for c in &peer.cidrs {
            p.arp.insert(vtep_ip(c), mac);
            p.routes.push(link::Route {
                dst: *c,
                via: vtep_ip(c),
                oif: vx,
                onlink: true,
            });
        }
    }
    p.routes.sort();
    p
}

/// Pod traffic to these is never masqueraded: the cluster CIDR, every Node's podCIDRs (also
/// when `--pod-cidr` put one outside the cluster CIDR) and every Node's InternalIP, so that a
/// pod's address reaches other pods and other nodes unchanged.
fn unmasqueraded(cluster_cidr: &DualStackCidrs, nodes: &BTreeMap<String, Node>) -> Vec<IpNetwork> {
    let mut keep: BTreeSet<IpNetwork> = cluster_cidr.iter().copied().collect();
    for n in nodes.values() {
        keep.extend(pod_cidrs(n));
        if let Some(ip) = internal_ip(n) {
            keep.insert(IpNetwork::V4(Ipv4Network::from(ip)));
        }
    }
    keep.into_iter().collect()
}

struct Reconciler {
    cfg: Arc<Config>,
    network: Arc<Network>,
    handle: Handle,
    under: Option<link::Underlay>,
    vxlan: Option<(u32, [u8; 6])>,
    mtu: Option<u32>,
    started: Instant,
    said_waiting: bool,
    said_timeout: bool,
    masq: Option<(IpNetwork, Vec<IpNetwork>)>,
    skipped: BTreeMap<String, String>,
}

impl Reconciler {
    async fn reconcile(
        &mut self,
        client: &kube::Client,
        nodes: &BTreeMap<String, Node>,
    ) -> Result<(), RouteError> {
        let cfg = self.cfg.clone();
        let name = &cfg.node_name;
        let own = nodes.get(name);
        let cidr = cfg
            .pod_cidr
            .or_else(|| own.and_then(|n| pod_cidrs(n).into_iter().next()));
        match cidr {
            None => {
                let waited = self.started.elapsed();
                if !self.said_waiting {
                    tracing::info!(node = %name, "waiting for the node IPAM controller to set spec.podCIDR on this Node (or give --pod-cidr)");
                    self.said_waiting = true;
                }
                if waited >= PODCIDR_TIMEOUT && !self.said_timeout {
                    tracing::error!(node = %name, "timed out after {}s waiting for spec.podCIDR on Node {name}: the control plane's node IPAM controller (kube-controller-manager --allocate-node-cidrs) has not set it; pods here get no network until it does or --pod-cidr is given", waited.as_secs());
                    self.said_timeout = true;
                }
            }
            Some(c) => {
                if self.network.ensure_default(c, self.mtu)? {
                    tracing::info!(node = %name, cidr = %c, "the default pod network uses this node's podCIDR");
                }
                let keep = unmasqueraded(&cfg.cluster_cidr, nodes);
                if self.masq.as_ref() != Some(&(c, keep.clone())) {
                    podlet_cni::nft::replace_masquerade(MASQ_TABLE, &[c], &keep)
                        .map_err(RouteError::Masquerade)?;
                    tracing::info!(from = %c, except = ?keep, "pod masquerade rule set");
                    self.masq = Some((c, keep));
                }
            }
        }
        let Some(under) = self.under.clone() else {
            return Ok(());
        };
        let own_v4: Vec<Ipv4Network> = cidr
            .into_iter()
            .filter_map(|c| match c {
                IpNetwork::V4(c) => Some(c),
                IpNetwork::V6(_) => None,
            })
            .collect();
        if let (Some((vx, mac)), Some(own)) = (self.vxlan, own_v4.first()) {
            link::sync_vtep_address(&self.handle, vx, vtep_ip(own)).await?;
            self.publish(client, nodes.get(name), mac, under.ip).await?;
        }
        let peers: Vec<Peer> = nodes
            .iter()
            .filter(|(n, _)| *n != name)
            .filter_map(|(_, n)| peer_of(n))
            .collect();
        let plan = plan(
            cfg.network_backend,
            &under,
            self.vxlan.map(|v| v.0),
            &own_v4,
            &peers,
        );
        for (peer, why) in &plan.skipped {
            if self.skipped.get(peer) != Some(why) {
                tracing::warn!(peer = %peer, "no route to the peer's pods: {why}");
            }
        }
        self.skipped = plan.skipped.clone();
        let mut changes = link::Changes::default();
        if let Some((vx, _)) = self.vxlan {
            let c = link::sync_vxlan_peers(&self.handle, vx, &plan.fdb, &plan.arp).await?;
            changes.added += c.added;
            changes.removed += c.removed;
        }
        let c = link::sync_routes(&self.handle, &plan.routes).await?;
        changes.added += c.added;
        changes.removed += c.removed;
        if changes != link::Changes::default() {
            tracing::info!(
                added = changes.added,
                removed = changes.removed,
                routes = plan.routes.len(),
                "node routes reconciled"
            );
        }
        Ok(())
    }

    /// Puts this node's VTEP MAC and public IP on its Node, where peers read them.
    async fn publish(
        &self,
        client: &kube::Client,
        own: Option<&Node>,
        mac: [u8; 6],
        ip: Ipv4Addr,
    ) -> Result<(), RouteError> {
        let Some(own) = own else { return Ok(()) };
        let mac = link::format_mac(&mac);
        let ip = ip.to_string();
        if annotation(own, VTEP_MAC) == Some(mac.as_str())
            && annotation(own, PUBLIC_IP) == Some(ip.as_str())
        {
            return Ok(());
        }
        let api: Api<Node> = Api::all(client.clone());
        let patch =
            serde_json::json!({"metadata": {"annotations": {VTEP_MAC: mac, PUBLIC_IP: ip}}});
        api.patch(
            &self.cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(RouteError::Publish)?;
        Ok(())
    }
}

/// Sets up the underlay and VXLAN device, then reconciles on every Node change until the
/// process ends.
/// `host_ip`: the node's InternalIP (`--node-ip` or the first global address).
pub async fn run(
    cfg: Arc<Config>,
    host_ip: Option<IpAddr>,
    network: Arc<Network>,
    mut client: watch::Receiver<kube::Client>,
) {
    let backend = cfg.network_backend;
    let nl = match podlet_cni::netlink::Netlink::here() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("node routes: opening rtnetlink: {e}");
            return;
        }
    };
    let handle = nl.handle;
    let mut under = None;
    let mut vxlan = None;
    match (backend, host_ip) {
        (Backend::None, _) => {
            // Whatever an earlier backend made goes.
            let _ = link::sync_routes(&handle, &[]).await;
            let _ = link::remove_vxlan(&handle).await;
        }
        (_, Some(IpAddr::V4(ip))) => match link::underlay(&handle, ip).await {
            Ok(Some(u)) => {
                if let Err(e) = podlet_cni::ns::sysctl("net/ipv4/ip_forward", "1") {
                    tracing::error!("node routes: enabling net.ipv4.ip_forward: {e}");
                }
                if backend.vxlan() {
                    match link::ensure_vxlan(&handle, &u).await {
                        Ok(v) => vxlan = Some(v),
                        Err(e) => tracing::error!("node routes: {e}"),
                    }
                }
                under = Some(u);
            }
            Ok(None) => tracing::error!(
                "node routes: no link holds the node IP {ip} (--node-ip): no routes to other nodes"
            ),
            Err(e) => tracing::error!("node routes: {e}"),
        },
        (_, ip) => tracing::error!(
            ?ip,
            "node routes need an IPv4 node IP (--node-ip): no routes to other nodes"
        ),
    }
    let mtu = match (&under, vxlan) {
        (Some(u), Some(_)) => Some(u.mtu.saturating_sub(link::VXLAN_OVERHEAD)),
        _ => None,
    };
    let mut r = Reconciler {
        cfg: cfg.clone(),
        network,
        handle,
        under,
        vxlan,
        mtu,
        started: Instant::now(),
        said_waiting: false,
        said_timeout: false,
        masq: None,
        skipped: BTreeMap::new(),
    };
    loop {
        let c = client.borrow_and_update().clone();
        let api: Api<Node> = Api::all(c.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut buffer: Option<BTreeMap<String, Node>> = None;
        let mut listed = false;
        let mut next = tokio::time::Instant::now() + RESYNC;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => Some(ev),
                _ = tokio::time::sleep_until(next) => None,
                r = client.changed() => { if r.is_err() { return } break }
            };
            let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
            match ev {
                // The resync tick.
                None => {}
                Some(Some(Ok(Event::Init))) => {
                    buffer = Some(BTreeMap::new());
                    continue;
                }
                Some(Some(Ok(Event::InitApply(n)))) => {
                    buffer.get_or_insert_with(BTreeMap::new).insert(name(&n), n);
                    continue;
                }
                Some(Some(Ok(Event::InitDone))) => {
                    nodes = buffer.take().unwrap_or_default();
                    listed = true;
                }
                Some(Some(Ok(Event::Apply(n)))) => {
                    nodes.insert(name(&n), n);
                }
                Some(Some(Ok(Event::Delete(n)))) => {
                    nodes.remove(&name(&n));
                }
                Some(Some(Err(e))) => {
                    tracing::warn!("watching nodes: {e}");
                    continue;
                }
                Some(None) => break,
            }
            if !listed {
                continue;
            }
            next = tokio::time::Instant::now() + RESYNC;
            if let Err(e) = r.reconcile(&c, &nodes).await {
                tracing::warn!("node routes: {}", crate::util::chain(&e));
                // Try again soon rather than at the next resync.
                next = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under() -> link::Underlay {
        link::Underlay {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            ip: "10.100.1.11".parse().unwrap(),
            nets: vec!["10.100.1.0/24".parse().unwrap()],
        }
    }

    fn peer(name: &str, ip: &str, cidr: &str, mac: Option<u8>) -> Peer {
        Peer {
            name: name.into(),
            cidrs: vec![cidr.parse().unwrap()],
            ip: ip.parse().unwrap(),
            vtep: mac.map(|m| (ip.parse().unwrap(), [2, 0, 0, 0, 0, m])),
        }
    }

    #[test]
    fn auto_uses_host_gw_on_link_and_vxlan_beyond() {
        let own = ["10.244.1.0/24".parse().unwrap()];
        let peers = [
            peer("near", "10.100.1.12", "10.244.2.0/24", Some(2)),
            peer("far", "10.100.2.13", "10.244.3.0/24", Some(3)),
            peer("nomac", "10.100.2.14", "10.244.4.0/24", None),
            peer("same", "10.100.1.15", "10.244.1.0/24", Some(5)),
        ];
        let p = plan(Backend::Auto, &under(), Some(9), &own, &peers);
        assert_eq!(
            p.routes,
            vec![
                link::Route {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    via: "10.100.1.12".parse().unwrap(),
                    oif: 2,
                    onlink: false
                },
                link::Route {
                    dst: "10.244.3.0/24".parse().unwrap(),
                    via: "10.244.3.0".parse().unwrap(),
                    oif: 9,
                    onlink: true
                },
            ]
        );
        assert_eq!(
            p.fdb,
            BTreeMap::from([([2, 0, 0, 0, 0, 3], "10.100.2.13".parse().unwrap())])
        );
        assert_eq!(
            p.arp,
            BTreeMap::from([("10.244.3.0".parse().unwrap(), [2, 0, 0, 0, 0, 3])])
        );
        assert!(p.skipped["nomac"].contains(VTEP_MAC), "{:?}", p.skipped);
        assert!(p.skipped["same"].contains("overlaps"), "{:?}", p.skipped);
        // host-gw alone cannot reach the far peer; vxlan alone carries the near one too.
        let p = plan(Backend::HostGw, &under(), None, &own, &peers);
        assert_eq!(p.routes.len(), 1);
        assert!(p.skipped["far"].contains("not on a subnet"));
        let p = plan(Backend::Vxlan, &under(), Some(9), &own, &peers);
        assert!(p.routes.iter().all(|r| r.oif == 9 && r.onlink));
        assert_eq!(p.routes.len(), 2);
        assert!(plan(Backend::None, &under(), None, &own, &peers)
            .routes
            .is_empty());
    }
}
