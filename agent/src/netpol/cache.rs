//! What the enforcement watches: every Pod (only what the rules read of it), every Namespace's
//! labels and every NetworkPolicy, as kube-router's or Calico's node agents keep them; plus
//! this node's own pods as the pod workers register them when their network is set up, which
//! the watch learns only later (a pod's address reaches the apiserver after its sandbox).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Resource;
use tokio::sync::watch;

use super::rules::{self, Labels, NamedPort};
use crate::util::{ns_name as key, Seen};

/// `namespace/name` (namespace empty for cluster-scoped kinds).
pub type Key = (String, String);

/// A watched pod, reduced to what the rules read.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEntry {
    pub uid: String,
    pub node: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    /// `status.podIPs` (IPv4), none for host-network and finished pods.
    pub ips: Vec<IpAddr>,
}

/// The named container ports of a pod spec (containers and sidecar init containers).
pub fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let Some(spec) = &pod.spec else {
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
        .filter_map(|p| {
            let name = p.name.clone()?;
            let proto = rules::proto_number(p.protocol.as_deref())?;
            Some((name, proto, u16::try_from(p.container_port).ok()?))
        })
        .collect()
}

pub fn labels(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

impl PodEntry {
    pub fn of(p: &Pod) -> PodEntry {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let ips = if host_network || finished {
            Vec::new()
        } else {
            status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.parse::<IpAddr>().ok())
                .collect()
        };
        PodEntry {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: labels(&p.metadata),
            ports: named_ports(p),
            ips,
        }
    }
}

/// A pod of this node as its worker registered it once its network was set up.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPod {
    /// Registration order: of two registrations claiming one address, the later holds it.
    pub seq: u64,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    pub ips: Vec<IpAddr>,
    /// Registered for a new sandbox (not an adopted one): dropped until the first sync.
    pub fresh: bool,
}

/// Everything the watches hold.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pods: BTreeMap<Key, PodEntry>,
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: BTreeMap<Key, Arc<NetworkPolicy>>,
    /// All three kinds have been listed once.
    pub synced: bool,
}

/// The pods as the rules see them. This node's pods take their addresses from their workers'
/// registrations (labels and ports from the watch when it has the pod); a local pod the watch
/// knows but no worker registered (yet: an agent restart adopting its pods) keeps the address
/// in its status unless a registered pod holds that address now.
pub fn pods(snap: &Snapshot, locals: &BTreeMap<String, LocalPod>, node: &str) -> Vec<rules::Pod> {
    let mut out = Vec::new();
    let mut by_name: BTreeMap<(&str, &str), &LocalPod> = BTreeMap::new();
    for l in locals.values() {
        let k = (l.namespace.as_str(), l.name.as_str());
        if by_name.get(&k).is_none_or(|o| o.seq < l.seq) {
            by_name.insert(k, l);
        }
    }
    // Each registered address belongs to its latest registration only.
    let mut owner: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for l in locals.values() {
        for a in &l.ips {
            let o = owner.entry(*a).or_insert(l.seq);
            *o = (*o).max(l.seq);
        }
    }
    let registered: BTreeSet<IpAddr> = owner.keys().copied().collect();
    for ((ns, name), l) in &by_name {
        let watched = snap.pods.get(&(ns.to_string(), name.to_string()));
        let (labels, ports) = match watched {
            Some(w) if w.node == node => (w.labels.clone(), w.ports.clone()),
            _ => (l.labels.clone(), l.ports.clone()),
        };
        out.push(rules::Pod {
            namespace: ns.to_string(),
            name: name.to_string(),
            labels,
            ports,
            ips: l
                .ips
                .iter()
                .copied()
                .filter(|a| owner[a] == l.seq)
                .collect(),
            local: true,
        });
    }
    for ((ns, name), p) in &snap.pods {
        let local = p.node == node;
        if local && by_name.contains_key(&(ns.as_str(), name.as_str())) {
            continue;
        }
        out.push(rules::Pod {
            namespace: ns.clone(),
            name: name.clone(),
            labels: p.labels.clone(),
            ports: p.ports.clone(),
            ips: p
                .ips
                .iter()
                .copied()
                .filter(|a| !registered.contains(a))
                .collect(),
            local,
        });
    }
    out
}

/// The shared cache: a consistent `Snapshot` for readers, a change counter to wake them.
pub struct Cache {
    state: RwLock<Arc<Snapshot>>,
    changed: watch::Sender<u64>,
    listed: RwLock<[bool; 3]>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            state: RwLock::new(Arc::new(Snapshot::default())),
            changed: watch::channel(0).0,
            listed: RwLock::new([false; 3]),
        }
    }
}

impl Cache {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.read().expect("netpol cache lock").clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes the readers; returns the new count.
    pub fn bump(&self) -> u64 {
        let mut now = 0;
        self.changed.send_modify(|g| {
            *g += 1;
            now = *g;
        });
        now
    }

    /// Applies `f`; wakes the readers if it changed anything (most pod updates change
    /// nothing the rules read: a status condition, a container restart).
    fn update(&self, f: impl FnOnce(&mut Snapshot) -> bool) {
        let changed = {
            let mut st = self.state.write().expect("netpol cache lock");
            let snap = Arc::make_mut(&mut st);
            let synced = self.listed.read().expect("listed lock").iter().all(|l| *l);
            let changed = f(snap) || snap.synced != synced;
            snap.synced = synced;
            changed
        };
        if changed {
            self.bump();
        }
    }

    /// Follows the three kinds until the process ends; a new client (a renewed certificate)
    /// restarts the watches.
    pub async fn run(self: Arc<Self>, client: watch::Receiver<kube::Client>) {
        let pods = tokio::spawn(self.clone().follow::<Pod>(client.clone()));
        let nss = tokio::spawn(self.clone().follow::<Namespace>(client.clone()));
        let pols = tokio::spawn(self.follow::<NetworkPolicy>(client));
        let _ = tokio::join!(pods, nss, pols);
    }

    async fn follow<K: Kind>(self: Arc<Self>, client: watch::Receiver<kube::Client>) {
        crate::util::watch_all::<K>(client, "network policies", |seen| match seen {
            Seen::Listed(all) => {
                self.listed.write().expect("listed lock")[K::INDEX] = true;
                self.update(|s| {
                    K::replace(s, all);
                    true
                });
            }
            Seen::Applied(o) => self.update(|s| K::apply(s, o)),
            Seen::Deleted(o) => self.update(|s| K::delete(s, &o)),
        })
        .await
    }
}

/// The kinds the cache follows, and where each lives in a `Snapshot`.
trait Kind:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const INDEX: usize;
    /// Whether it changed anything.
    fn apply(s: &mut Snapshot, o: Self) -> bool;
    fn delete(s: &mut Snapshot, o: &Self) -> bool;
    fn replace(s: &mut Snapshot, all: Vec<Self>);
}

impl Kind for Pod {
    const INDEX: usize = 0;
    fn apply(s: &mut Snapshot, o: Self) -> bool {
        let e = PodEntry::of(&o);
        s.pods.insert(key(&o), e.clone()).as_ref() != Some(&e)
    }
    fn delete(s: &mut Snapshot, o: &Self) -> bool {
        s.pods.remove(&key(o)).is_some()
    }
    fn replace(s: &mut Snapshot, all: Vec<Self>) {
        s.pods = all.iter().map(|o| (key(o), PodEntry::of(o))).collect();
    }
}

impl Kind for Namespace {
    const INDEX: usize = 1;
    fn apply(s: &mut Snapshot, o: Self) -> bool {
        let l = labels(&o.metadata);
        s.namespaces.insert(key(&o).1, l.clone()).as_ref() != Some(&l)
    }
    fn delete(s: &mut Snapshot, o: &Self) -> bool {
        s.namespaces.remove(&key(o).1).is_some()
    }
    fn replace(s: &mut Snapshot, all: Vec<Self>) {
        s.namespaces = all
            .iter()
            .map(|o| (key(o).1, labels(&o.metadata)))
            .collect();
    }
}

impl Kind for NetworkPolicy {
    const INDEX: usize = 2;
    fn apply(s: &mut Snapshot, o: Self) -> bool {
        s.policies.insert(key(&o), Arc::new(o));
        true
    }
    fn delete(s: &mut Snapshot, o: &Self) -> bool {
        s.policies.remove(&key(o)).is_some()
    }
    fn replace(s: &mut Snapshot, all: Vec<Self>) {
        s.policies = all.into_iter().map(|o| (key(&o), Arc::new(o))).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn entry(node: &str, labels: &[(&str, &str)], ips: &[[u8; 4]]) -> PodEntry {
        PodEntry {
            uid: "u".into(),
            node: node.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: Vec::new(),
            ips: ips.iter().map(|a| Ipv4Addr::from(*a).into()).collect(),
        }
    }

    fn local(seq: u64, name: &str, ips: &[[u8; 4]]) -> LocalPod {
        LocalPod {
            seq,
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), "registered".to_string())].into(),
            ports: Vec::new(),
            ips: ips.iter().map(|a| Ipv4Addr::from(*a).into()).collect(),
            fresh: true,
        }
    }

    fn find<'a>(pods: &'a [rules::Pod], name: &str) -> &'a rules::Pod {
        pods.iter().find(|p| p.name == name).unwrap()
    }

    #[test]
    fn local_addresses_come_from_registrations() {
        let mut snap = Snapshot::default();
        let k = |n: &str| ("ns".to_string(), n.to_string());
        // Labelled since registration: the watch's labels, the registration's address.
        snap.pods
            .insert(k("a"), entry("n1", &[("app", "relabelled")], &[]));
        // An old pod's status still shows an address a new pod was given.
        snap.pods
            .insert(k("old"), entry("n1", &[], &[[10, 0, 0, 5]]));
        // Adopted after an agent restart, not registered yet: its status address.
        snap.pods
            .insert(k("adopted"), entry("n1", &[], &[[10, 0, 0, 6]]));
        snap.pods
            .insert(k("remote"), entry("n2", &[], &[[10, 0, 1, 5]]));
        let mut locals = BTreeMap::new();
        locals.insert("ua".to_string(), local(1, "a", &[[10, 0, 0, 5]]));
        locals.insert("ub".to_string(), local(2, "b", &[[10, 0, 0, 7]]));
        let pods = pods(&snap, &locals, "n1");
        let a = find(&pods, "a");
        assert_eq!(a.labels["app"], "relabelled");
        assert_eq!(a.ips, [IpAddr::from([10, 0, 0, 5])]);
        assert!(a.local);
        assert_eq!(find(&pods, "b").labels["app"], "registered");
        assert!(find(&pods, "old").ips.is_empty());
        assert_eq!(find(&pods, "adopted").ips, [IpAddr::from([10, 0, 0, 6])]);
        let r = find(&pods, "remote");
        assert!(!r.local && r.ips == [IpAddr::from([10, 0, 1, 5])]);

        // Two registrations of one address (a torn-down pod not forgotten yet): the later.
        locals.insert("uc".to_string(), local(3, "c", &[[10, 0, 0, 7]]));
        let pods = super::pods(&snap, &locals, "n1");
        assert!(find(&pods, "b").ips.is_empty());
        assert_eq!(find(&pods, "c").ips, [IpAddr::from([10, 0, 0, 7])]);
    }

    #[test]
    fn host_network_and_finished_pods_have_no_address() {
        let pod = |host: bool, phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"nodeName": "n1", "hostNetwork": host, "containers": [{"name": "c",
                    "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 81},
                              {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"phase": phase, "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]}}))
            .unwrap()
        };
        let e = PodEntry::of(&pod(false, "Running"));
        // Both families of a dual-stack pod (each goes into its family's table).
        let v6: IpAddr = "fd00::9".parse().unwrap();
        assert_eq!(e.ips, [IpAddr::from([10, 0, 0, 9]), v6]);
        assert_eq!(
            e.ports,
            [
                ("http".into(), rules::TCP, 80),
                ("dns".into(), rules::UDP, 53)
            ]
        );
        assert!(PodEntry::of(&pod(true, "Running")).ips.is_empty());
        assert!(PodEntry::of(&pod(false, "Succeeded")).ips.is_empty());
    }
}
