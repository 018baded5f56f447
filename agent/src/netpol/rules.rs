//! What the node wants programmed, from the pods, namespaces and policies alone (no I/O): the
//! layout of the table (a chain per policy, per rule and per ipBlock, which only a policy change
//! alters) and the elements of its sets (pod addresses, which pod churn changes).
//!
//! Kubernetes' semantics: a pod selected by no policy of a type is not isolated for that type;
//! one selected by any is, and then only the union of those policies' rules lets traffic in (or
//! out). A rule allows a peer on a port: no `from`/`to` is every peer, no `ports` every port.
//! A peer is a pod selector (in the policy's namespace), a namespace selector (every pod
//! there), both (pods matching in namespaces matching) or an ipBlock less its excepts. Named
//! ports are the destination pod's container port of that name and protocol. Only this node's
//! pods are isolated here: every node enforces ingress and egress for its own pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_rules::labels::Selector;

pub type Labels = BTreeMap<String, String>;

/// Local pods selected by at least one ingress (egress) policy.
pub const INGRESS_ISOLATED: &str = "ingress-isolated";
pub const EGRESS_ISOLATED: &str = "egress-isolated";
/// New local pods whose policies are not known yet (before the watches have listed): all
/// their new connections are dropped.
pub const PENDING: &str = "pending";

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// A container port: (name, protocol, number).
pub type NamedPort = (String, u8, u16);

/// A pod as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    /// Its addresses (both families of a dual-stack pod); none for host-network pods,
    /// finished ones, or pods without one yet.
    pub ips: Vec<IpAddr>,
    /// Runs on this node (its policies are enforced here).
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn short(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "eg",
        }
    }
}

/// How a rule's port entry matches the destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// No ports: any protocol, any port.
    All,
    /// A protocol, any port.
    Proto(u8),
    Port(u8, u16),
    /// `port`..=`endPort`.
    Range(u8, u16, u16),
    /// A named port: the set of `daddr . proto . dport` it resolves to.
    Named(String),
}

/// A network: address (host bits clear) and prefix length.
pub type Net = (IpAddr, u8);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub chain: String,
    pub cidr: Net,
    pub except: Vec<Net>,
}

/// One rule: its ports, and its peers (chain `chain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub ports: Vec<PortMatch>,
    /// No `from`/`to`: every peer.
    pub all_peers: bool,
    /// The set of the peer pods' addresses, if the rule has pod or namespace selectors.
    pub peers: Option<String>,
    pub blocks: Vec<Block>,
}

/// One policy of one direction: the set of the local pods it selects and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub dir: Dir,
    pub chain: String,
    pub targets: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Addr(IpAddr),
    /// `daddr . proto . dport`.
    AddrPort(IpAddr, u8, u16),
}

/// The whole wanted state: a layout (equal layouts differ in set elements only) and every
/// set's elements, by set name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    pub policies: Vec<Policy>,
    pub sets: BTreeMap<String, BTreeSet<Elem>>,
}

impl Wanted {
    /// No policy: only new local pods waiting for the first sync, dropped.
    pub fn pending_only(pending: &BTreeSet<IpAddr>) -> Wanted {
        let mut w = Wanted::default();
        for s in [INGRESS_ISOLATED, EGRESS_ISOLATED, PENDING] {
            w.sets.insert(s.into(), BTreeSet::new());
        }
        w.sets.insert(
            PENDING.into(),
            pending.iter().map(|a| Elem::Addr(*a)).collect(),
        );
        w
    }

    #[cfg(test)]
    pub fn set(&self, name: &str) -> impl Iterator<Item = &Elem> {
        self.sets.get(name).into_iter().flatten()
    }
}

/// The rules' view of the cluster.
pub struct Input<'a> {
    pub pods: &'a [Pod],
    /// Every namespace's labels.
    pub namespaces: &'a BTreeMap<String, Labels>,
    pub policies: &'a [Arc<NetworkPolicy>],
}

/// A policy's name in chain and set names: `ns/name`, shortened with a hash past 200 bytes
/// (nftables names are at most 255).
fn tag(ns: &str, name: &str) -> String {
    let t = format!("{ns}/{name}");
    if t.len() <= 200 {
        return t;
    }
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(t.as_bytes())[..4]);
    let mut cut = 180;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{h}", &t[..cut])
}

fn selector(sel: Option<&LabelSelector>) -> Selector {
    // An invalid selector (the apiserver refuses them) selects nothing: fail closed.
    Selector::from_label_selector(sel).unwrap_or_else(|_| Selector::nothing())
}

pub fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// Computes the wanted state.
pub fn wanted(input: &Input<'_>) -> Wanted {
    let mut w = Wanted::pending_only(&BTreeSet::new());
    for p in input.policies {
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            continue;
        };
        let spec = p.spec.clone().unwrap_or_default();
        // A missing podSelector is `{}` (a Go struct upstream): every pod.
        let sel = match &spec.pod_selector {
            Some(s) => selector(Some(s)),
            None => Selector::everything(),
        };
        let targets: Vec<&Pod> = input
            .pods
            .iter()
            .filter(|q| q.local && &q.namespace == ns && sel.matches(&q.labels))
            .collect();
        let (ingress, egress) = k8s_rules::netpol::policy_types(&spec);
        let t = tag(ns, name);
        if ingress {
            let rules: Vec<RuleSpec<'_>> = spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect();
            add_policy(&mut w, Dir::Ingress, &t, ns, &targets, &rules, input);
        }
        if egress {
            let rules: Vec<RuleSpec<'_>> = spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect();
            add_policy(&mut w, Dir::Egress, &t, ns, &targets, &rules, input);
        }
    }
    w
}

/// A rule's peers and ports, ingress or egress alike.
type RuleSpec<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

static NO_LABELS: Labels = BTreeMap::new();

fn add_policy(
    w: &mut Wanted,
    dir: Dir,
    tag: &str,
    ns: &str,
    targets: &[&Pod],
    rules: &[RuleSpec<'_>],
    input: &Input<'_>,
) {
    let ns_labels = |n: &str| input.namespaces.get(n).unwrap_or(&NO_LABELS);
    let d = dir.short();
    let isolated = match dir {
        Dir::Ingress => INGRESS_ISOLATED,
        Dir::Egress => EGRESS_ISOLATED,
    };
    let target_ips: BTreeSet<Elem> = targets
        .iter()
        .flat_map(|p| p.ips.iter().map(|a| Elem::Addr(*a)))
        .collect();
    w.sets
        .entry(isolated.into())
        .or_default()
        .extend(target_ips.iter().copied());
    let mut policy = Policy {
        dir,
        chain: format!("{d}:{tag}"),
        targets: format!("{d}-targets:{tag}"),
        rules: Vec::new(),
    };
    w.sets.insert(policy.targets.clone(), target_ips);
    for (i, (peers, ports)) in rules.iter().enumerate() {
        let mut rule = Rule {
            chain: format!("{d}:{tag}:{i}"),
            ports: Vec::new(),
            all_peers: peers.is_none_or(|p| p.is_empty()),
            peers: None,
            blocks: Vec::new(),
        };
        let mut peer_ips = BTreeSet::new();
        let mut selects_pods = false;
        for (j, peer) in peers.iter().copied().flatten().enumerate() {
            if let Some(b) = &peer.ip_block {
                // A block applies to its family's table only (see table.rs).
                if let Some((a, len)) = k8s_rules::netpol::parse_cidr(&b.cidr) {
                    let except = b
                        .except
                        .iter()
                        .flatten()
                        .filter_map(|e| k8s_rules::netpol::parse_cidr(e))
                        .filter(|(x, _)| x.is_ipv4() == a.is_ipv4())
                        .collect();
                    rule.blocks.push(Block {
                        chain: format!("{d}:{tag}:{i}:b{j}"),
                        cidr: (a, len),
                        except,
                    });
                }
                continue;
            }
            selects_pods = true;
            let pod_sel = peer.pod_selector.as_ref().map(|s| selector(Some(s)));
            let ns_sel = peer.namespace_selector.as_ref().map(|s| selector(Some(s)));
            for q in input.pods {
                let ns_ok = match &ns_sel {
                    None => q.namespace == ns,
                    Some(s) => s.matches(ns_labels(&q.namespace)),
                };
                if ns_ok && pod_sel.as_ref().is_none_or(|s| s.matches(&q.labels)) {
                    peer_ips.extend(q.ips.iter().map(|a| Elem::Addr(*a)));
                }
            }
        }
        if selects_pods {
            let set = format!("{d}-peers:{tag}:{i}");
            w.sets.insert(set.clone(), peer_ips);
            rule.peers = Some(set);
        }
        if ports.is_none_or(|p| p.is_empty()) {
            rule.ports.push(PortMatch::All);
        }
        for (k, port) in ports.iter().copied().flatten().enumerate() {
            let Some(proto) = proto_number(port.protocol.as_deref()) else {
                continue;
            };
            let m = match (&port.port, port.end_port) {
                (None, _) => PortMatch::Proto(proto),
                (Some(IntOrString::Int(n)), None) => match u16::try_from(*n) {
                    Ok(n) => PortMatch::Port(proto, n),
                    Err(_) => continue,
                },
                (Some(IntOrString::Int(n)), Some(e)) => {
                    match (u16::try_from(*n), u16::try_from(e)) {
                        (Ok(n), Ok(e)) if e >= n => PortMatch::Range(proto, n, e),
                        _ => continue,
                    }
                }
                (Some(IntOrString::String(pname)), _) => {
                    // Resolved on the destination: the policy's own pods for ingress, any
                    // pod for egress.
                    let set = format!("{d}-port:{tag}:{i}:{k}");
                    let dests: Vec<&Pod> = match dir {
                        Dir::Ingress => targets.to_vec(),
                        Dir::Egress => input.pods.iter().collect(),
                    };
                    let elems = dests
                        .iter()
                        .flat_map(|q| {
                            q.ports
                                .iter()
                                .filter(|(n, pr, _)| n == pname && *pr == proto)
                                .flat_map(|(_, pr, num)| {
                                    q.ips.iter().map(move |a| Elem::AddrPort(*a, *pr, *num))
                                })
                        })
                        .collect();
                    w.sets.insert(set.clone(), elems);
                    PortMatch::Named(set)
                }
            };
            rule.ports.push(m);
        }
        policy.rules.push(rule);
    }
    w.policies.push(policy);
}

/// Per set, the elements gone and the elements come.
pub type Changes = BTreeMap<String, (Vec<Elem>, Vec<Elem>)>;

/// What changed between two states with the same layout: per set, elements gone and come.
/// None when the layouts differ (the table must be replaced).
pub fn diff(old: &Wanted, new: &Wanted) -> Option<Changes> {
    if old.policies != new.policies || old.sets.keys().ne(new.sets.keys()) {
        return None;
    }
    let mut out = BTreeMap::new();
    for (name, elems) in &new.sets {
        let before = &old.sets[name];
        let gone: Vec<Elem> = before.difference(elems).copied().collect();
        let came: Vec<Elem> = elems.difference(before).copied().collect();
        if !gone.is_empty() || !came.is_empty() {
            out.insert(name.clone(), (gone, came));
        }
    }
    Some(out)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
