//! InterPodAffinity: required pod affinity and anti-affinity filter (the incoming pod's terms,
//! and existing pods' anti-affinity against it), preferred terms and existing pods' terms
//! score, as kube-scheduler counts them per topology pair.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_rules::labels::{Requirement, Selector};

use super::{Code, Plugin, Rejection};
use crate::scheduler::cache::{Cache, NodeInfo, PodInfo};
use crate::scheduler::listers::Listers;
use crate::scheduler::podgroups::{Held, ValueCounts};

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
        self.selects(&pod.namespace, pod.labels(), ns_labels)
    }

    /// Whether pods in `namespace` (labelled `ns_labels`) with `labels` are what it selects.
    fn selects(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        (self.namespaces.iter().any(|n| n == namespace) || self.ns_selector.matches(ns_labels))
            && self.selector.matches(labels)
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
        let pref = |t: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<Term> {
            t.into_iter()
                .flatten()
                .map(|w| Term::of(pod, &w.pod_affinity_term, w.weight))
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
            preferred_affinity: pref(aff.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: pref(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
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

/// Counts per topology pair as the sum of matching groups' counts (shared with the cache,
/// not copied) and of the pods this cycle adds or removes (nominated pods, victims).
#[derive(Debug, Clone, Default)]
struct Sums {
    parts: Vec<(String, Arc<ValueCounts>)>,
    delta: Counts,
}

impl Sums {
    fn get(&self, key: &str, value: &str) -> i64 {
        self.delta.get(key, value)
            + self
                .parts
                .iter()
                .filter(|(k, _)| k == key)
                .filter_map(|(_, c)| c.get(value))
                .sum::<i64>()
    }

    /// No pair counts anything (a removal may cancel a group's count).
    fn is_empty(&self) -> bool {
        let pairs = self
            .parts
            .iter()
            .flat_map(|(k, c)| c.keys().map(move |v| (k.as_str(), v.as_str())))
            .chain(
                self.delta
                    .0
                    .iter()
                    .flat_map(|(k, vs)| vs.keys().map(move |v| (k.as_str(), v.as_str()))),
            );
        pairs.into_iter().all(|(k, v)| self.get(k, v) == 0)
    }
}

/// PreFilter's counts per topology pair.
#[derive(Debug, Clone)]
pub struct FilterState {
    terms: PodTerms,
    ns_labels: BTreeMap<String, String>,
    existing_anti: Sums,
    affinity: Sums,
    anti: Sums,
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
    let any_anti = cache.groups.holds(Held::RequiredAnti);
    if !own && !any_anti {
        return None;
    }
    let mut s = FilterState {
        ns_labels: listers.namespace_labels(&pod.namespace),
        terms,
        existing_anti: Sums::default(),
        affinity: Sums::default(),
        anti: Sums::default(),
    };
    for ((held, t), g) in &cache.groups.by_term {
        if *held == Held::RequiredAnti && t.matches(pod, &s.ns_labels) {
            s.existing_anti
                .parts
                .push((t.key.clone(), g.topo(&t.key, cache)));
        }
    }
    if own {
        let (aff, anti) = (&s.terms.required_affinity, &s.terms.required_anti);
        for ((ns, labels), g) in &cache.groups.by_labels {
            if !aff.is_empty() && aff.iter().all(|t| t.selects(ns, labels, &NO_LABELS)) {
                for t in aff {
                    s.affinity
                        .parts
                        .push((t.key.clone(), g.topo(&t.key, cache)));
                }
            }
            for t in anti {
                if t.selects(ns, labels, &NO_LABELS) {
                    s.anti.parts.push((t.key.clone(), g.topo(&t.key, cache)));
                }
            }
        }
    }
    Some(s)
}

impl FilterState {
    fn count_existing_anti(&mut self, pod: &PodInfo, e: &PodInfo, node: &NodeInfo, delta: i64) {
        for t in e.terms.iter().flat_map(|t| &t.required_anti) {
            if t.matches(pod, &self.ns_labels) {
                self.existing_anti.delta.bump(&t.key, node, delta);
            }
        }
    }

    fn count_own(&mut self, e: &PodInfo, node: &NodeInfo, delta: i64) {
        let aff = &self.terms.required_affinity;
        if !aff.is_empty() && matches_all(aff, e) {
            for t in aff {
                self.affinity.delta.bump(&t.key, node, delta);
            }
        }
        for t in &self.terms.required_anti {
            if t.matches(e, &NO_LABELS) {
                self.anti.delta.bump(&t.key, node, delta);
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
        if (!self.existing_anti.parts.is_empty() || !self.existing_anti.delta.is_empty())
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
    let hard = args.hard_pod_affinity_weight;
    let weight_of = |held: Held, t: &Term| match held {
        Held::RequiredAffinity if hard > 0 => Some(hard),
        Held::PreferredAffinity => Some(t.weight),
        Held::PreferredAnti => Some(-t.weight),
        _ => None,
    };
    let held = cache
        .groups
        .by_term
        .keys()
        .any(|(h, t)| weight_of(*h, t).is_some());
    if !constrained && !held {
        return None;
    }
    let ns_labels = listers.namespace_labels(&pod.namespace);
    // (topology key, counts per value, weight) of every matching group.
    let mut parts: Vec<(&str, Arc<ValueCounts>, i64)> = Vec::new();
    if constrained {
        let own = own
            .preferred_affinity
            .iter()
            .map(|t| (t, t.weight))
            .chain(own.preferred_anti.iter().map(|t| (t, -t.weight)));
        for (t, w) in own {
            for ((ns, labels), g) in &cache.groups.by_labels {
                if t.selects(ns, labels, &NO_LABELS) {
                    parts.push((&t.key, g.topo(&t.key, cache), w));
                }
            }
        }
    }
    for ((h, t), g) in &cache.groups.by_term {
        if let Some(w) = weight_of(*h, t) {
            if t.matches(pod, &ns_labels) {
                parts.push((&t.key, g.topo(&t.key, cache), w));
            }
        }
    }
    if parts.iter().all(|(_, c, _)| c.is_empty()) {
        return None;
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            let labels = n.labels();
            parts
                .iter()
                .filter_map(|(k, c, w)| Some(w * c.get(labels.get(*k)?.as_str())?))
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
