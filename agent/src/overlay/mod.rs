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
pub mod plan;
pub mod routes;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
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

/// Standalone: the masquerade rule for the pod ranges alone.
pub fn standalone(cfg: &Config) -> std::io::Result<()> {
    let Some(c) = &cfg.pod_cidr else {
        return Ok(());
    };
    let all: Vec<IpNetwork> = c.iter().copied().collect();
    podlet_cni::nft::replace_masquerade(MASQ_TABLE, &all, &all)
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
    masq: Option<(Vec<IpNetwork>, Vec<IpNetwork>)>,
    skipped: BTreeMap<String, String>,
    /// Whether this process turned on IPv6 forwarding (once, for IPv6 pod ranges).
    ipv6_forwarding: bool,
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
        let cidrs: Vec<IpNetwork> = match &cfg.pod_cidr {
            Some(c) => c.iter().copied().collect(),
            None => own.map(plan::pod_cidrs).unwrap_or_default(),
        };
        if cidrs.is_empty() {
            let waited = self.started.elapsed();
            if !self.said_waiting {
                tracing::info!(node = %name, "waiting for the node IPAM controller to set spec.podCIDR on this Node (or give --pod-cidr)");
                self.said_waiting = true;
            }
            if waited >= PODCIDR_TIMEOUT && !self.said_timeout {
                tracing::error!(node = %name, "timed out after {}s waiting for spec.podCIDR on Node {name}: the control plane's node IPAM controller (kube-controller-manager --allocate-node-cidrs) has not set it; pods here get no network until it does or --pod-cidr is given", waited.as_secs());
                self.said_timeout = true;
            }
        } else {
            if self.network.ensure_default(&cidrs, self.mtu)? {
                tracing::info!(node = %name, cidrs = ?cidrs, "the default pod network uses this node's podCIDRs");
            }
            let keep = plan::unmasqueraded(&cfg.cluster_cidr, nodes);
            if self.masq.as_ref() != Some(&(cidrs.clone(), keep.clone())) {
                podlet_cni::nft::replace_masquerade(MASQ_TABLE, &cidrs, &keep)
                    .map_err(RouteError::Masquerade)?;
                tracing::info!(from = ?cidrs, except = ?keep, "pod masquerade rule set");
                self.masq = Some((cidrs.clone(), keep));
            }
        }
        let Some(under) = self.under.clone() else {
            return Ok(());
        };
        let ipv6 = cidrs.iter().any(IpNetwork::is_ipv6);
        if ipv6 && !self.ipv6_forwarding {
            podlet_cni::ns::sysctl("net/ipv6/conf/all/forwarding", "1").map_err(|e| {
                RouteError::Netlink(std::io::Error::new(
                    e.kind(),
                    format!("enabling net.ipv6.conf.all.forwarding: {e}"),
                ))
            })?;
            self.ipv6_forwarding = true;
        }
        if let (Some((vx, mac)), false) = (self.vxlan, cidrs.is_empty()) {
            // A node given an IPv6 range after the device was made.
            link::set_ipv6(link::VXLAN_DEV, ipv6)?;
            let vteps: Vec<IpAddr> = cidrs.iter().map(plan::vtep_ip).collect();
            link::sync_vtep_addresses(&self.handle, vx, &vteps).await?;
            self.publish(client, nodes.get(name), mac, under.ip).await?;
        }
        let peers: Vec<plan::Peer> = nodes
            .iter()
            .filter(|(n, _)| *n != name)
            .filter_map(|(_, n)| plan::peer_of(n))
            .collect();
        let plan = plan::plan(
            cfg.network_backend,
            &under,
            self.vxlan.map(|v| v.0),
            &cidrs,
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
            let c = link::sync_vxlan_peers(&self.handle, vx, &plan.fdb, &plan.neigh).await?;
            changes.added += c.added;
            changes.removed += c.removed;
        }
        let c = routes::sync_routes(&self.handle, &plan.routes).await?;
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
        if plan::annotation(own, VTEP_MAC) == Some(mac.as_str())
            && plan::annotation(own, PUBLIC_IP) == Some(ip.as_str())
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
            let _ = routes::sync_routes(&handle, &[]).await;
            let _ = link::remove_vxlan(&handle).await;
        }
        (_, Some(IpAddr::V4(ip))) => match link::underlay(&handle, ip).await {
            Ok(Some(u)) => {
                if let Err(e) = podlet_cni::ns::sysctl("net/ipv4/ip_forward", "1") {
                    tracing::error!("node routes: enabling net.ipv4.ip_forward: {e}");
                }
                if backend.vxlan() {
                    // IPv6 on the device from the start when pods here may get IPv6 addresses
                    // (`reconcile` corrects it once the node's ranges are known).
                    let ipv6 = match &cfg.pod_cidr {
                        Some(c) => c.v6().is_some(),
                        None => cfg.cluster_cidr.v6().is_some(),
                    };
                    match link::ensure_vxlan(&handle, &u, ipv6).await {
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
        ipv6_forwarding: false,
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
