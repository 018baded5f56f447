//! Placed pods grouped by what inter-pod affinity asks of them, kept by the cache as pods and
//! nodes come and go, so a scheduling cycle walks groups instead of every placed pod.
//!
//! kube-scheduler's InterPodAffinity PreFilter walks every node's pods per cycle (in parallel,
//! on many cores); here pods with the same namespace and labels are one group (what an incoming
//! pod's terms select), and pods holding the same term are one group (existing pods' terms about
//! the incoming pod), each with its members per node and, per topology key in use, per topology
//! value. A cycle matches each group once and reads the per-value counts it needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::cache::PodInfo;
use super::plugins::affinity::{PodTerms, Term};

/// Topology value → members on nodes with that value (no zero entries).
pub type ValueCounts = FxHashMap<String, i64>;

/// Which of a pod's term lists a held term comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    RequiredAffinity,
    RequiredAnti,
    PreferredAffinity,
    PreferredAnti,
}

/// Members of one group, per node and per topology pair.
#[derive(Debug, Default)]
pub struct Group {
    /// Node name → members bound or assumed there (nodes not seen yet included).
    per_node: ValueCounts,
    /// Tracked topology key → its counts over the nodes seen.
    topo: FxHashMap<String, Arc<ValueCounts>>,
}

/// Adds `delta` at `key`, dropping the entry when it reaches zero.
fn bump(counts: &mut ValueCounts, key: &str, delta: i64) {
    let n = match counts.get_mut(key) {
        Some(n) => n,
        None => counts.entry(key.to_string()).or_insert(0),
    };
    *n += delta;
    if *n == 0 {
        counts.remove(key);
    }
}

/// Looks up a node's labels by name (None for a node not seen).
pub trait NodeLabels {
    fn labels_of(&self, node: &str) -> Option<&BTreeMap<String, String>>;
}

impl Group {
    fn add(&mut self, node: &str, labels: Option<&BTreeMap<String, String>>, delta: i64) {
        bump(&mut self.per_node, node, delta);
        let Some(labels) = labels else { return };
        for (key, counts) in &mut self.topo {
            if let Some(v) = labels.get(key) {
                bump(Arc::make_mut(counts), v, delta);
            }
        }
    }

    fn count(&self, key: &str, nodes: &impl NodeLabels) -> ValueCounts {
        let mut c = ValueCounts::default();
        for (node, n) in &self.per_node {
            if let Some(v) = nodes.labels_of(node).and_then(|l| l.get(key)) {
                bump(&mut c, v, *n);
            }
        }
        c
    }

    /// The members per value of `key`: kept up to date for tracked keys, counted otherwise.
    pub fn topo(&self, key: &str, nodes: &impl NodeLabels) -> Arc<ValueCounts> {
        match self.topo.get(key) {
            Some(c) => c.clone(),
            None => Arc::new(self.count(key, nodes)),
        }
    }
}

/// Every placed pod, grouped.
#[derive(Debug, Default)]
pub struct PodGroups {
    /// (namespace, labels) → the pods with them.
    pub by_labels: FxHashMap<(String, BTreeMap<String, String>), Group>,
    /// A term placed pods hold → those pods.
    pub by_term: FxHashMap<(Held, Term), Group>,
    /// Topology keys whose per-value counts every group keeps.
    keys: FxHashSet<String>,
}

fn held_terms(terms: &PodTerms) -> impl Iterator<Item = (Held, &Term)> {
    terms
        .required_affinity
        .iter()
        .map(|t| (Held::RequiredAffinity, t))
        .chain(terms.required_anti.iter().map(|t| (Held::RequiredAnti, t)))
        .chain(
            terms
                .preferred_affinity
                .iter()
                .map(|t| (Held::PreferredAffinity, t)),
        )
        .chain(
            terms
                .preferred_anti
                .iter()
                .map(|t| (Held::PreferredAnti, t)),
        )
}

impl PodGroups {
    /// `p` placed on (+1) or gone from (−1) `node`, whose labels are `labels` if it is seen.
    pub fn add(
        &mut self,
        p: &PodInfo,
        node: &str,
        labels: Option<&BTreeMap<String, String>>,
        delta: i64,
    ) {
        let key = (p.namespace.clone(), p.labels().clone());
        Self::apply(&mut self.by_labels, key, node, labels, delta, &self.keys);
        for (held, t) in p.terms.iter().flat_map(held_terms) {
            Self::apply(
                &mut self.by_term,
                (held, t.clone()),
                node,
                labels,
                delta,
                &self.keys,
            );
        }
    }

    fn apply<K: std::hash::Hash + Eq>(
        groups: &mut FxHashMap<K, Group>,
        key: K,
        node: &str,
        labels: Option<&BTreeMap<String, String>>,
        delta: i64,
        keys: &FxHashSet<String>,
    ) {
        use std::collections::hash_map::Entry;
        match groups.entry(key) {
            Entry::Occupied(mut e) => {
                e.get_mut().add(node, labels, delta);
                if e.get().per_node.is_empty() {
                    e.remove();
                }
            }
            Entry::Vacant(e) => e
                .insert(Group {
                    per_node: ValueCounts::default(),
                    topo: keys.iter().map(|k| (k.clone(), Arc::default())).collect(),
                })
                .add(node, labels, delta),
        }
    }

    /// A node's labels changed (`old` None: it was not seen; `new` None: it is gone).
    pub fn relabel(
        &mut self,
        node: &str,
        old: Option<&BTreeMap<String, String>>,
        new: Option<&BTreeMap<String, String>>,
    ) {
        let groups = self.by_labels.values_mut().chain(self.by_term.values_mut());
        for g in groups {
            let Some(&n) = g.per_node.get(node) else {
                continue;
            };
            for (key, counts) in &mut g.topo {
                let (was, is) = (old.and_then(|l| l.get(key)), new.and_then(|l| l.get(key)));
                if was == is {
                    continue;
                }
                let c = Arc::make_mut(counts);
                if let Some(v) = was {
                    bump(c, v, -n);
                }
                if let Some(v) = is {
                    bump(c, v, n);
                }
            }
        }
    }

    /// Keeps per-value counts of `key` in every group from now on.
    pub fn track(&mut self, key: &str, nodes: &impl NodeLabels) {
        if self.keys.contains(key) {
            return;
        }
        self.keys.insert(key.to_string());
        for g in self.by_labels.values_mut().chain(self.by_term.values_mut()) {
            let c = g.count(key, nodes);
            g.topo.insert(key.to_string(), Arc::new(c));
        }
    }

    /// Whether any placed pod holds a term of this kind.
    pub fn holds(&self, held: Held) -> bool {
        self.by_term.keys().any(|(h, _)| *h == held)
    }
}

/// The topology keys of a pod's terms.
pub fn term_keys(terms: &PodTerms) -> impl Iterator<Item = &str> {
    held_terms(terms).map(|(_, t)| t.key.as_str())
}

#[cfg(test)]
#[path = "podgroups_tests.rs"]
mod tests;
