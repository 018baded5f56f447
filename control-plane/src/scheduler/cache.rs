//! What the scheduler knows of the cluster (kube-scheduler's cache and `NodeInfo`): per node,
//! its pods (bound, and assumed: placed by this scheduler, binding under way), their summed
//! requests (plain and with the non-zero defaults the scores use), host ports in use, images
//! and the placed pods grouped for inter-pod affinity (`podgroups`). Kept up to date from the watches
//! between scheduling cycles, so a cycle reads it without copying.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_rules::quantity::Milli;
use k8s_rules::resources::{pod_request, pod_request_nonzero};

use super::plugins::affinity::PodTerms;
use super::podgroups::{term_keys, NodeLabels, PodGroups};

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Resource amounts: the three the scheduler names, and the rest (extended resources,
/// hugepages) as scalars.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Res {
    pub cpu: Milli,
    pub memory: Milli,
    pub ephemeral: Milli,
    pub scalars: Vec<(String, Milli)>,
}

impl Res {
    pub fn get(&self, name: &str) -> Milli {
        match name {
            "cpu" => self.cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral,
            _ => self
                .scalars
                .iter()
                .find(|(n, _)| n == name)
                .map_or(Milli::ZERO, |(_, v)| *v),
        }
    }

    fn slot(&mut self, name: &str) -> &mut Milli {
        match name {
            "cpu" => &mut self.cpu,
            "memory" => &mut self.memory,
            "ephemeral-storage" => &mut self.ephemeral,
            _ => {
                let i = match self.scalars.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        self.scalars.push((name.to_string(), Milli::ZERO));
                        self.scalars.len() - 1
                    }
                };
                &mut self.scalars[i].1
            }
        }
    }

    pub fn add(&mut self, other: &Res, sign: i128) {
        self.cpu = Milli(self.cpu.0 + sign * other.cpu.0);
        self.memory = Milli(self.memory.0 + sign * other.memory.0);
        self.ephemeral = Milli(self.ephemeral.0 + sign * other.ephemeral.0);
        for (n, v) in &other.scalars {
            let s = self.slot(n);
            *s = Milli(s.0 + sign * v.0);
        }
    }

    /// The pod's requests for every resource its containers or overhead name.
    pub fn of_pod(pod: &Pod) -> Res {
        let Some(spec) = pod.spec.as_ref() else {
            return Res::default();
        };
        let mut names: HashSet<&str> = HashSet::new();
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in containers {
            if let Some(r) = &c.resources {
                for m in [&r.requests, &r.limits].into_iter().flatten() {
                    names.extend(m.keys().map(String::as_str));
                }
            }
        }
        names.extend(spec.overhead.iter().flatten().map(|(k, _)| k.as_str()));
        let mut res = Res::default();
        for n in names {
            let v = pod_request(spec, n);
            if n == "pods" || v.is_zero() && !matches!(n, "cpu" | "memory" | "ephemeral-storage") {
                continue;
            }
            *res.slot(n) = v;
        }
        res
    }

    /// A node's allocatable, and its pod count (what it does not state it lacks: the
    /// apiserver defaults allocatable to capacity).
    fn of_node(node: &Node) -> (Res, i64) {
        let map = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let mut res = Res::default();
        let mut pods = 0;
        for (n, q) in map.into_iter().flatten() {
            let Ok(v) = Milli::of(q) else { continue };
            if n == "pods" {
                pods = i64::try_from(v.value()).unwrap_or(i64::MAX);
            } else {
                *res.slot(n) = v;
            }
        }
        (res, pods)
    }
}

/// A host port a pod binds: (host IP, protocol, port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Two pods cannot share a port on one protocol when either binds every address.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }

    /// The pod's host ports (`hostPort > 0`) of its containers and sidecars.
    pub fn of_pod(pod: &Pod) -> Vec<HostPort> {
        let Some(spec) = pod.spec.as_ref() else {
            return Vec::new();
        };
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        spec.containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: p.host_port.unwrap_or_default(),
            })
            .collect()
    }
}

/// A pod as the scheduler weighs it, computed once per version of the pod.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    pub requests: Res,
    /// cpu and memory with the non-zero defaults.
    pub nonzero: [Milli; 2],
    pub host_ports: Vec<HostPort>,
    /// Inter-pod affinity terms, when the pod has any.
    pub terms: Option<PodTerms>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let spec = pod.spec.as_ref();
        let nonzero = spec.map_or([Milli::ZERO; 2], |s| {
            [
                pod_request_nonzero(s, "cpu"),
                pod_request_nonzero(s, "memory"),
            ]
        });
        PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests: Res::of_pod(&pod),
            nonzero,
            host_ports: HostPort::of_pod(&pod),
            terms: PodTerms::of(&pod),
            pod,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    pub fn spec(&self) -> Option<&k8s_openapi::api::core::v1::PodSpec> {
        self.pod.spec.as_ref()
    }

    pub fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub allocatable: Res,
    pub allowed_pods: i64,
    pub requested: Res,
    /// Summed non-zero cpu and memory requests.
    pub nonzero: [Milli; 2],
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Image name → size in bytes, from `status.images`.
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        let (allocatable, allowed_pods) = Res::of_node(&node);
        let images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names
                    .iter()
                    .flatten()
                    .map(move |n| (super::plugins::basic::normalized_image(n), size))
            })
            .collect();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node,
            allocatable,
            allowed_pods,
            requested: Res::default(),
            nonzero: [Milli::ZERO; 2],
            pods: Vec::new(),
            used_ports: Vec::new(),
            images,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests, 1);
        self.nonzero[0] += p.nonzero[0];
        self.nonzero[1] += p.nonzero[1];
        self.used_ports.extend(p.host_ports.iter().cloned());
        self.pods.push(p);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid == uid)?;
        let p = self.pods.swap_remove(i);
        self.requested.add(&p.requests, -1);
        self.nonzero[0] = self.nonzero[0] - p.nonzero[0];
        self.nonzero[1] = self.nonzero[1] - p.nonzero[1];
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        Some(p)
    }
}

struct Placed {
    node: String,
    assumed: bool,
    info: Arc<PodInfo>,
}

/// Every node, and every pod bound or assumed to one.
#[derive(Default)]
pub struct Cache {
    /// Nodes in a stable order, which the round-robin search walks.
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Pods bound to nodes not seen (yet): node name → pods.
    orphans: HashMap<String, Vec<Arc<PodInfo>>>,
    pods: HashMap<String, Placed>,
    /// Image name → how many nodes have it.
    pub image_nodes: HashMap<String, usize>,
    /// The placed pods grouped for inter-pod affinity.
    pub groups: PodGroups,
}

/// Node labels by name, borrowed apart from the groups that need them.
struct Labels<'a> {
    nodes: &'a [NodeInfo],
    index: &'a HashMap<String, usize>,
}

impl NodeLabels for Labels<'_> {
    fn labels_of(&self, node: &str) -> Option<&BTreeMap<String, String>> {
        self.index.get(node).map(|&i| self.nodes[i].labels())
    }
}

impl NodeLabels for Cache {
    fn labels_of(&self, node: &str) -> Option<&BTreeMap<String, String>> {
        self.node(node).map(NodeInfo::labels)
    }
}

impl Cache {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.index.get(name).map(|&i| &mut self.nodes[i])
    }

    fn count_images(&mut self, images: &HashMap<String, i64>, sign: isize) {
        for name in images.keys() {
            let n = self.image_nodes.entry(name.clone()).or_default();
            *n = n.saturating_add_signed(sign);
            if *n == 0 {
                self.image_nodes.remove(name);
            }
        }
    }

    /// Adds or updates a node; its pods stay.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let mut info = NodeInfo::new(node);
        self.count_images(&info.images.clone(), 1);
        match self.index.get(&info.name) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.nodes[i], info);
                self.count_images(&old.images, -1);
                let new = self.nodes[i].labels();
                if old.labels() != new {
                    self.groups
                        .relabel(&old.name, Some(old.labels()), Some(new));
                }
                for p in old.pods {
                    self.nodes[i].add_pod(p);
                }
            }
            None => {
                for p in self.orphans.remove(&info.name).unwrap_or_default() {
                    info.add_pod(p);
                }
                self.groups.relabel(&info.name, None, Some(info.labels()));
                self.index.insert(info.name.clone(), self.nodes.len());
                self.nodes.push(info);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let old = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        self.count_images(&old.images, -1);
        self.groups.relabel(&old.name, Some(old.labels()), None);
        if !old.pods.is_empty() {
            self.orphans.insert(old.name, old.pods);
        }
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// Keeps per-value counts of the topology keys of `p`'s terms from now on.
    pub fn track_keys(&mut self, p: &PodInfo) {
        let labels = Labels {
            nodes: &self.nodes,
            index: &self.index,
        };
        for key in p.terms.iter().flat_map(term_keys) {
            self.groups.track(key, &labels);
        }
    }

    fn place(&mut self, node: &str, p: Arc<PodInfo>, assumed: bool) {
        self.track_keys(&p);
        let labels = self.index.get(node).map(|&i| self.nodes[i].labels());
        self.groups.add(&p, node, labels, 1);
        self.pods.insert(
            p.uid.clone(),
            Placed {
                node: node.to_string(),
                assumed,
                info: p.clone(),
            },
        );
        match self.node_mut(node) {
            Some(n) => n.add_pod(p),
            None => self.orphans.entry(node.to_string()).or_default().push(p),
        }
    }

    /// A bound pod, new or changed (an assumed one is confirmed).
    pub fn set_pod(&mut self, node: &str, p: Arc<PodInfo>) {
        self.remove_pod(&p.uid.clone());
        self.place(node, p, false);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let placed = self.pods.remove(uid)?;
        let labels = self
            .index
            .get(&placed.node)
            .map(|&i| self.nodes[i].labels());
        self.groups.add(&placed.info, &placed.node, labels, -1);
        match self.node_mut(&placed.node) {
            Some(n) => n.remove_pod(uid),
            None => {
                let list = self.orphans.get_mut(&placed.node)?;
                let i = list.iter().position(|p| p.uid == uid)?;
                Some(list.swap_remove(i))
            }
        }
    }

    /// Counts `p` on `node` while its binding is under way.
    pub fn assume(&mut self, node: &str, p: Arc<PodInfo>) {
        self.place(node, p, true);
    }

    /// Drops an assumed pod whose binding failed; a bound one stays.
    pub fn forget(&mut self, uid: &str) {
        if self.pods.get(uid).is_some_and(|p| p.assumed) {
            self.remove_pod(uid);
        }
    }

    pub fn pod(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.pods.get(uid).map(|p| &p.info)
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// The uids of all pods placed (for a relist to find the ones gone).
    pub fn pod_uids(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.assumed)
            .map(|(u, _)| u.clone())
            .collect()
    }
}
