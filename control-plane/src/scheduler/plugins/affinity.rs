//! InterPodAffinity: required pod affinity and anti-affinity filter (the incoming pod's terms,
//! and existing pods' anti-affinity against it), preferred terms and existing pods' terms
//! score, as kube-scheduler counts them per topology pair.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use k8s_rules::labels::{Requirement, Selector};

use super::{Code, Plugin, Rejection};
use crate::scheduler::cache::{Cache, NodeInfo, PodInfo};
use crate::scheduler::listers::Listers;

/// `InterPodAffinityArgs`.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityArgs {
    pub hard_pod_affinity_weight: i64,
    pub ignore_preferred_terms_of_existing_pods: bool,
}

impl Default for AffinityArgs {
    fn default() -> Self {
        AffinityArgs {
            hard_pod_affinity_weight: 1,
            ignore_preferred_terms_of_existing_pods: false,
        }
    }
}

/// One affinity term, its namespaces resolved as upstream's `AffinityTerm`.
#[derive(Debug, Clone)]
pub struct Term {
    /// A handful of names at most: a list compares faster than a hash set hashes.
    namespaces: Vec<String>,
    ns_selector: Selector,
    selector: Selector,
    pub key: String,
    pub weight: i64,
}

impl Term {
    fn of(pod: &Pod, t: &PodAffinityTerm, weight: i32) -> Term {
        let own_ns = pod.metadata.namespace.clone().unwrap_or_default();
        let listed = t.namespaces.as_deref().unwrap_or_default();
        let namespaces: Vec<String> = if listed.is_empty() && t.namespace_selector.is_none() {
            vec![own_ns]
        } else {
            listed.to_vec()
        };
        let mut selector = Selector::from_label_selector(t.label_selector.as_ref())
            .unwrap_or_else(|_| Selector::nothing());
        let labels = pod.metadata.labels.as_ref();
        for (keys, not) in [(&t.match_label_keys, false), (&t.mismatch_label_keys, true)] {
            for k in keys.iter().flatten() {
                if let Some(v) = labels.and_then(|l| l.get(k)) {
                    let vs = vec![v.clone()];
                    selector = selector.and(if not {
                        Requirement::NotIn(k.clone(), vs)
                    } else {
                        Requirement::In(k.clone(), vs)
                    });
                }
            }
        }
        Term {
            namespaces,
            ns_selector: Selector::from_label_selector(t.namespace_selector.as_ref())
                .unwrap_or_else(|_| Selector::nothing()),
            selector,
            key: t.topology_key.clone(),
            weight: i64::from(weight),
        }
    }

    /// Whether `pod` (whose namespace has `ns_labels`) is what the term selects.
    fn matches(&self, pod: &PodInfo, ns_labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.contains(&pod.namespace) || self.ns_selector.matches(ns_labels))
            && self.selector.matches(pod.labels())
    }

    /// The namespace selector turned into names (the incoming pod's terms are matched against
    /// many pods, whose namespaces' labels are then not looked up).
    fn resolved(&self, listers: &Listers) -> Term {
        let mut t = self.clone();
        if !t.ns_selector.selects_nothing() {
            t.namespaces
                .extend(listers.namespaces_matching(&t.ns_selector));
            t.ns_selector = Selector::nothing();
        }
        t
    }
}

/// A pod's inter-pod affinity terms.
#[derive(Debug, Clone, Default)]
pub struct PodTerms {
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred_affinity: Vec<Term>,
    pub preferred_anti: Vec<Term>,
}

impl PodTerms {
    /// None when the pod states no pod affinity or anti-affinity.
    pub fn of(pod: &Pod) -> Option<PodTerms> {
        let a = pod.spec.as_ref()?.affinity.as_ref()?;
        let (aff, anti) = (a.pod_affinity.as_ref(), a.pod_anti_affinity.as_ref());
        let req = |t: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            t.into_iter()
                .flatten()
                .map(|t| Term::of(pod, t, 1))
                .collect()
        };
        let terms = PodTerms {
            required_affinity: req(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: req(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: aff
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|w| Term::of(pod, &w.pod_affinity_term, w.weight))
                .collect(),
            preferred_anti: anti
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|w| Term::of(pod, &w.pod_affinity_term, w.weight))
                .collect(),
        };
        let empty = terms.required_affinity.is_empty()
            && terms.required_anti.is_empty()
            && terms.preferred_affinity.is_empty()
            && terms.preferred_anti.is_empty();
        (!empty).then_some(terms)
    }

    fn resolved(&self, listers: &Listers) -> PodTerms {
        let r = |ts: &[Term]| ts.iter().map(|t| t.resolved(listers)).collect();
        PodTerms {
            required_affinity: r(&self.required_affinity),
            required_anti: r(&self.required_anti),
            preferred_affinity: r(&self.preferred_affinity),
            preferred_anti: r(&self.preferred_anti),
        }
    }
}

/// Counts per topology pair: label key → value → count (no zero entries), looked up by
/// borrowed strings on every node filtered.
#[derive(Debug, Clone, Default)]
struct Counts(FxHashMap<String, FxHashMap<String, i64>>);

impl Counts {
    /// Adds `delta` at (`key`, the node's value of it), when the node has the label.
    fn bump(&mut self, key: &str, node: &NodeInfo, delta: i64) {
        let Some(v) = node.labels().get(key) else {
            return;
        };
        // Looked up before inserting: most bumps hit a key and value already there.
        let values = match self.0.get_mut(key) {
            Some(vs) => vs,
            None => self.0.entry(key.to_string()).or_default(),
        };
        let n = match values.get_mut(v) {
            Some(n) => n,
            None => values.entry(v.clone()).or_insert(0),
        };
        *n += delta;
        if *n == 0 {
            values.remove(v);
            if values.is_empty() {
                self.0.remove(key);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|vs| vs.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// PreFilter's counts per topology pair.
#[derive(Debug, Clone)]
pub struct FilterState {
    terms: PodTerms,
    ns_labels: BTreeMap<String, String>,
    existing_anti: Counts,
    affinity: Counts,
    anti: Counts,
}

fn matches_all(terms: &[Term], pod: &PodInfo) -> bool {
    terms.iter().all(|t| t.matches(pod, &NO_LABELS))
}

pub fn prefilter(pod: &PodInfo, cache: &Cache, listers: &Listers) -> Option<FilterState> {
    let terms = pod
        .terms
        .as_ref()
        .map(|t| t.resolved(listers))
        .unwrap_or_default();
    let own = !terms.required_affinity.is_empty() || !terms.required_anti.is_empty();
    let any_anti = cache.nodes.iter().any(|n| n.with_required_anti > 0);
    if !own && !any_anti {
        return None;
    }
    let mut s = FilterState {
        ns_labels: listers.namespace_labels(&pod.namespace),
        terms,
        existing_anti: Counts::default(),
        affinity: Counts::default(),
        anti: Counts::default(),
    };
    for node in cache.nodes.iter().filter(|n| !n.pods.is_empty()) {
        if node.with_required_anti > 0 {
            s.count_existing_anti_on(pod, node);
        }
        if own {
            s.count_own_on(node);
        }
    }
    Some(s)
}

impl FilterState {
    fn count_existing_anti(&mut self, pod: &PodInfo, e: &PodInfo, node: &NodeInfo, delta: i64) {
        for t in e.terms.iter().flat_map(|t| &t.required_anti) {
            if t.matches(pod, &self.ns_labels) {
                self.existing_anti.bump(&t.key, node, delta);
            }
        }
    }

    /// `count_existing_anti` for every pod on `node`, counted per node first (a count is a
    /// label lookup and two hash lookups; a node holds many matching pods).
    fn count_existing_anti_on(&mut self, pod: &PodInfo, node: &NodeInfo) {
        let mut per_key: Vec<(&str, i64)> = Vec::new();
        for e in &node.pods {
            for t in e.terms.iter().flat_map(|t| &t.required_anti) {
                if t.matches(pod, &self.ns_labels) {
                    match per_key.iter_mut().find(|(k, _)| *k == t.key) {
                        Some(slot) => slot.1 += 1,
                        None => per_key.push((&t.key, 1)),
                    }
                }
            }
        }
        for (k, n) in per_key {
            self.existing_anti.bump(k, node, n);
        }
    }

    /// `count_own` for every pod on `node`, counted per node first.
    fn count_own_on(&mut self, node: &NodeInfo) {
        let FilterState {
            terms,
            affinity,
            anti,
            ..
        } = self;
        let aff = &terms.required_affinity;
        if !aff.is_empty() {
            let n = node.pods.iter().filter(|e| matches_all(aff, e)).count() as i64;
            if n > 0 {
                for t in aff {
                    affinity.bump(&t.key, node, n);
                }
            }
        }
        for t in &terms.required_anti {
            let n = node
                .pods
                .iter()
                .filter(|e| t.matches(e, &NO_LABELS))
                .count() as i64;
            if n > 0 {
                anti.bump(&t.key, node, n);
            }
        }
    }

    fn count_own(&mut self, e: &PodInfo, node: &NodeInfo, delta: i64) {
        let aff = &self.terms.required_affinity;
        if !aff.is_empty() && matches_all(aff, e) {
            for t in aff {
                self.affinity.bump(&t.key, node, delta);
            }
        }
        for t in &self.terms.required_anti {
            if t.matches(e, &NO_LABELS) {
                self.anti.bump(&t.key, node, delta);
            }
        }
    }

    pub fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        let labels = node.labels();
        let aff = &self.terms.required_affinity;
        if !aff.is_empty() {
            let mut exist = true;
            let mut keys = true;
            for t in aff {
                match labels.get(&t.key) {
                    Some(v) => exist &= self.affinity.get(&t.key, v) > 0,
                    None => keys = false,
                }
            }
            // The first of a group of pods with affinity to each other goes anywhere.
            let first = self.affinity.is_empty() && keys;
            if !keys || !(exist || first && matches_all(aff, pod)) {
                return Err(Rejection::new(
                    Plugin::InterPodAffinity,
                    Code::Unresolvable,
                    "node(s) didn't match pod affinity rules",
                ));
            }
        }
        for t in &self.terms.required_anti {
            if labels
                .get(&t.key)
                .is_some_and(|v| self.anti.get(&t.key, v) > 0)
            {
                return Err(Rejection::new(
                    Plugin::InterPodAffinity,
                    Code::Unschedulable,
                    "node(s) didn't match pod anti-affinity rules",
                ));
            }
        }
        if !self.existing_anti.is_empty()
            && labels.iter().any(|(k, v)| self.existing_anti.get(k, v) > 0)
        {
            return Err(Rejection::new(
                Plugin::InterPodAffinity,
                Code::Unschedulable,
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    /// `other` added to (+1) or removed from (−1) `node` for `pod`'s cycle.
    pub fn update(
        &mut self,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        delta: i64,
        _: &Listers,
    ) {
        self.count_existing_anti(pod, other, node, delta);
        self.count_own(other, node, delta);
    }
}

/// Preferred terms, and existing pods' terms about the incoming pod, summed per topology pair;
/// None (skipped) when nothing counts.
pub fn scores(
    args: &AffinityArgs,
    pod: &PodInfo,
    nodes: &[&NodeInfo],
    cache: &Cache,
    listers: &Listers,
) -> Option<Vec<i64>> {
    let own = pod
        .terms
        .as_ref()
        .map(|t| t.resolved(listers))
        .unwrap_or_default();
    let constrained = !own.preferred_affinity.is_empty() || !own.preferred_anti.is_empty();
    if args.ignore_preferred_terms_of_existing_pods && !constrained {
        return None;
    }
    if !constrained && cache.nodes.iter().all(|n| n.with_affinity == 0) {
        return None;
    }
    let ns_labels = listers.namespace_labels(&pod.namespace);
    let mut topo = Counts::default();
    let mut add =
        |t: &Term, who: &PodInfo, ns: &BTreeMap<String, String>, node: &NodeInfo, w: i64| {
            if t.matches(who, ns) {
                topo.bump(&t.key, node, w);
            }
        };
    for node in cache
        .nodes
        .iter()
        .filter(|n| constrained || n.with_affinity > 0)
    {
        if node.labels().is_empty() {
            continue;
        }
        for e in node
            .pods
            .iter()
            .filter(|p| constrained || p.terms.is_some())
        {
            for t in &own.preferred_affinity {
                add(t, e, &NO_LABELS, node, t.weight);
            }
            for t in &own.preferred_anti {
                add(t, e, &NO_LABELS, node, -t.weight);
            }
            let Some(et) = &e.terms else { continue };
            if args.hard_pod_affinity_weight > 0 {
                for t in &et.required_affinity {
                    add(t, pod, &ns_labels, node, args.hard_pod_affinity_weight);
                }
            }
            for t in &et.preferred_affinity {
                add(t, pod, &ns_labels, node, t.weight);
            }
            for t in &et.preferred_anti {
                add(t, pod, &ns_labels, node, -t.weight);
            }
        }
    }
    if topo.is_empty() {
        return None;
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            topo.0
                .iter()
                .filter_map(|(k, vs)| vs.get(n.labels().get(k)?.as_str()))
                .sum()
        })
        .collect();
    let (min, max) = (raw.iter().copied().min()?, raw.iter().copied().max()?);
    let diff = max - min;
    Some(
        raw.iter()
            .map(|s| {
                if diff > 0 {
                    (100.0 * ((s - min) as f64 / diff as f64)) as i64
                } else {
                    0
                }
            })
            .collect(),
    )
}

#[cfg(test)]
#[path = "affinity_tests.rs"]
mod tests;
