//! The node IPAM controller (`pkg/controller/nodeipam`, its range allocator): every Node gets
//! `spec.podCIDR`/`spec.podCIDRs`, one node CIDR per `--cluster-cidr` (an IPv4 and an IPv6 one
//! for a dual-stack pair) of `--node-cidr-mask-size[-ipv4|-ipv6]`. What is used is rebuilt from
//! the Nodes at every (re)list: a Node that already has podCIDRs inside the range keeps them.
//! A deleted Node's CIDRs are released. When a range is exhausted the Node gets a
//! `CIDRNotAvailable` event and is retried. podCIDRs are set only when unset: the apiserver
//! refuses to change them once set. As upstream's range allocator, the `NetworkUnavailable`
//! condition is left alone (only the cloud allocator sets it).
//!
//! Unlike upstream, a Node whose podCIDRs lie outside the range does not stop the controller
//! (upstream's `occupyCIDRs` error crash-loops kube-controller-manager): it is logged and the
//! Node keeps what it has.

mod cidrset;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use super::events::Recorder;
pub use cidrset::CidrSet;

/// kube-controller-manager's node mask sizes when no flag sets them.
pub const DEFAULT_MASK_IPV4: u8 = 24;
pub const DEFAULT_MASK_IPV6: u8 = 64;
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// How often Nodes still waiting for a CIDR are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The controller's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `--cluster-cidr`: one range, or an IPv4 and an IPv6 one.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// `--node-cidr-mask-size` (single-stack only).
    pub node_cidr_mask_size: Option<u8>,
    /// `--node-cidr-mask-size-ipv4`.
    pub node_cidr_mask_size_ipv4: Option<u8>,
    /// `--node-cidr-mask-size-ipv6`.
    pub node_cidr_mask_size_ipv6: Option<u8>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            cluster_cidrs: parse_cluster_cidr(DEFAULT_CLUSTER_CIDR).expect("constant range"),
            node_cidr_mask_size: None,
            node_cidr_mask_size_ipv4: None,
            node_cidr_mask_size_ipv6: None,
        }
    }
}

/// `--cluster-cidr`'s value: comma-separated CIDRs.
pub fn parse_cluster_cidr(s: &str) -> Result<Vec<IpNetwork>, String> {
    s.split(',')
        .map(str::trim)
        .map(|c| {
            c.parse::<IpNetwork>()
                .map_err(|e| format!("--cluster-cidr: {c:?} is not a CIDR: {e}"))
        })
        .collect()
}

impl Config {
    /// The node mask size for each cluster CIDR (upstream's `setNodeCIDRMaskSizes`).
    pub fn mask_sizes(&self) -> Result<Vec<u8>, String> {
        let dual = self.cluster_cidrs.len() > 1;
        if dual && self.node_cidr_mask_size.is_some() {
            return Err(
                "usage of --node-cidr-mask-size is not allowed with dual-stack clusters".into(),
            );
        }
        Ok(self
            .cluster_cidrs
            .iter()
            .map(|c| {
                let family = if c.is_ipv4() {
                    self.node_cidr_mask_size_ipv4.unwrap_or(DEFAULT_MASK_IPV4)
                } else {
                    self.node_cidr_mask_size_ipv6.unwrap_or(DEFAULT_MASK_IPV6)
                };
                self.node_cidr_mask_size.unwrap_or(family)
            })
            .collect())
    }

    /// One CIDR set per cluster CIDR, or why the flags do not make any.
    pub fn cidr_sets(&self) -> Result<Vec<CidrSet>, String> {
        match self.cluster_cidrs.as_slice() {
            [] => return Err("--cluster-cidr: no CIDR given".into()),
            [_] => {}
            [a, b] if a.is_ipv4() != b.is_ipv4() => {}
            [_, _] => {
                return Err(format!(
                "--cluster-cidr: {} and {} must be of different IP families (one IPv4, one IPv6)",
                self.cluster_cidrs[0], self.cluster_cidrs[1]
            ))
            }
            _ => return Err("--cluster-cidr: at most two CIDRs (an IPv4 and an IPv6 one)".into()),
        }
        self.cluster_cidrs
            .iter()
            .zip(self.mask_sizes()?)
            .map(|(c, m)| {
                CidrSet::new(*c, m)
                    .map_err(|e| format!("--cluster-cidr {c} with node mask size {m}: {e}"))
            })
            .collect()
    }
}

fn pod_cidrs(node: &Node) -> Vec<IpNetwork> {
    let spec = node.spec.as_ref();
    let list = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let list = if list.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        list
    };
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Upstream's `RecordNodeStatusChange` reference: the Node by name, its name as UID.
pub fn node_reference(name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..Default::default()
    }
}

struct Ipam {
    client: kube::Client,
    cfg: Config,
    sets: Vec<CidrSet>,
    /// What each Node holds, as far as this controller knows.
    nodes: HashMap<String, Vec<IpNetwork>>,
    /// Nodes still without CIDRs, tried again every [`RETRY`].
    pending: BTreeSet<String>,
    recorder: Recorder,
}

impl Ipam {
    /// Marks `cidrs` (a Node's, in family order) used.
    fn occupy(&mut self, name: &str, cidrs: &[IpNetwork]) {
        for c in cidrs {
            let Some(set) = self.sets.iter_mut().find(|s| s.family_matches(c)) else {
                tracing::warn!(node = name, cidr = %c, "node IPAM: the node's podCIDR is of no family of --cluster-cidr");
                continue;
            };
            if let Err(e) = set.occupy(*c) {
                tracing::warn!(
                    node = name,
                    "node IPAM: failed to mark cidr[{c}] as occupied for node: {name}: {e}"
                );
            }
        }
        self.nodes.insert(name.to_string(), cidrs.to_vec());
    }

    fn release(&mut self, cidrs: &[IpNetwork]) {
        for c in cidrs {
            if let Some(set) = self.sets.iter_mut().find(|s| s.family_matches(c)) {
                let _ = set.release(*c);
            }
        }
    }

    /// A (re)list: what is used is what the Nodes hold.
    async fn rebuild(&mut self, nodes: Vec<Node>) {
        self.sets = self
            .cfg
            .cidr_sets()
            .expect("checked when the controller started");
        self.nodes.clear();
        self.pending.clear();
        for n in &nodes {
            let cidrs = pod_cidrs(n);
            if !cidrs.is_empty() {
                self.occupy(&n.name_any(), &cidrs);
            }
        }
        for n in &nodes {
            self.sync(n).await;
        }
    }

    /// `AllocateOrOccupyCIDR`.
    async fn sync(&mut self, node: &Node) {
        let name = node.name_any();
        let cidrs = pod_cidrs(node);
        if !cidrs.is_empty() {
            self.pending.remove(&name);
            if self.nodes.get(&name) != Some(&cidrs) {
                if let Some(old) = self.nodes.remove(&name) {
                    self.release(&old);
                }
                self.occupy(&name, &cidrs);
            }
            return;
        }
        if self.nodes.contains_key(&name) || node.metadata.deletion_timestamp.is_some() {
            // Assigned already (this is an older event), or going away.
            return;
        }
        let mut got = Vec::new();
        for i in 0..self.sets.len() {
            match self.sets[i].allocate_next() {
                Some(c) => got.push(c),
                None => {
                    self.release(&got);
                    tracing::warn!(node = %name, "node IPAM: failed to allocate cidr from cluster cidr at idx:{i}: CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range");
                    self.status_change(&name, "CIDRNotAvailable").await;
                    self.pending.insert(name);
                    return;
                }
            }
        }
        match self.assign(&name, &got).await {
            Ok(Some(theirs)) => {
                self.release(&got);
                self.occupy(&name, &theirs);
                self.pending.remove(&name);
            }
            Ok(None) => {
                tracing::info!(node = %name, cidrs = ?got, "node IPAM: set the node's podCIDRs");
                self.nodes.insert(name.clone(), got);
                self.pending.remove(&name);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => self.release(&got),
            Err(e) => {
                self.release(&got);
                tracing::warn!(node = %name, "node IPAM: failed to update the node's podCIDRs: {e}");
                self.status_change(&name, "CIDRAssignmentFailed").await;
                self.pending.insert(name);
            }
        }
    }

    /// `updateCIDRsAllocation`: the live Node gets `cidrs`, unless it has podCIDRs already
    /// (returned then).
    async fn assign(
        &self,
        name: &str,
        cidrs: &[IpNetwork],
    ) -> kube::Result<Option<Vec<IpNetwork>>> {
        let api: Api<Node> = Api::all(self.client.clone());
        let live = api.get(name).await?;
        let theirs = pod_cidrs(&live);
        if !theirs.is_empty() {
            return Ok(Some(theirs));
        }
        let list: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
        // No precondition: should another writer set podCIDRs meanwhile, the apiserver refuses
        // to change them and the retry finds theirs.
        let patch = json!({"spec": {"podCIDR": list[0], "podCIDRs": list}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(None)
    }

    /// `RecordNodeStatusChange`: a Normal event "Node <name> status is now: <status>".
    async fn status_change(&self, name: &str, status: &str) {
        self.recorder
            .post(
                node_reference(name),
                "Normal",
                status,
                &format!("Node {name} status is now: {status}"),
            )
            .await;
    }

    fn forget(&mut self, node: &Node) {
        let name = node.name_any();
        self.pending.remove(&name);
        let held = self.nodes.remove(&name).unwrap_or_default();
        let cidrs = pod_cidrs(node);
        self.release(if cidrs.is_empty() { &held } else { &cidrs });
        tracing::info!(node = %name, "node IPAM: released the deleted node's CIDRs");
    }

    async fn retry_pending(&mut self) {
        let api: Api<Node> = Api::all(self.client.clone());
        for name in std::mem::take(&mut self.pending) {
            match api.get_opt(&name).await {
                Ok(Some(n)) => self.sync(&n).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(node = %name, "node IPAM: {e}");
                    self.pending.insert(name);
                }
            }
        }
    }
}

/// Runs the controller until the process ends (or the task is aborted). Bad flags are refused
/// before it starts ([`Config::cidr_sets`] in `Options::validate`).
pub async fn run(client: kube::Client, cfg: Config) {
    let sets = match cfg.cidr_sets() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("node IPAM: {e}");
            return;
        }
    };
    let mut ipam = Ipam {
        recorder: Recorder::new(client.clone(), "cidrAllocator"),
        client: client.clone(),
        cfg,
        sets,
        nodes: HashMap::new(),
        pending: BTreeSet::new(),
    };
    let mut events = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Option<Vec<Node>> = None;
    let mut retry = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Init)) => listing = Some(Vec::new()),
                Some(Ok(watcher::Event::InitApply(n))) => listing.get_or_insert_with(Vec::new).push(n),
                Some(Ok(watcher::Event::InitDone)) => {
                    ipam.rebuild(listing.take().unwrap_or_default()).await;
                }
                Some(Ok(watcher::Event::Apply(n))) => ipam.sync(&n).await,
                Some(Ok(watcher::Event::Delete(n))) => ipam.forget(&n),
                Some(Err(e)) => tracing::debug!("node IPAM: watching nodes: {e}"),
                None => return,
            },
            _ = retry.tick() => ipam.retry_pending().await,
        }
    }
}

#[cfg(test)]
mod tests;
