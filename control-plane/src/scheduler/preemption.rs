//! DefaultPreemption: for a pod that fits nowhere, the node where evicting the fewest and least
//! important lower-priority pods makes it fit (PodDisruptionBudgets respected where possible),
//! chosen by kube-scheduler's criteria in order. The API side (DisruptionTarget, graceful
//! deletion, `Preempted` events, `nominatedNodeName`) is the caller's.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_rules::labels::Selector;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::config::Profile;
use super::cycle::{filter_with_nominated, Diagnosis, Nominator};
use super::listers::Listers;
use super::plugins::{Code, CycleState, Plugin, Rejection};

pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// A node and the pods to evict there.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
    pub pdb_violations: usize,
}

pub enum Outcome {
    /// The text for FailedScheduling after "preemption: ".
    NotEligible(String),
    NoCandidates(String),
    Preempt(Candidate),
}

/// When the pod started; one not started yet counts as starting last.
fn start_time(p: &PodInfo) -> jiff::Timestamp {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(jiff::Timestamp::MAX, |t| t.0)
}

/// `MoreImportantPod`: higher priority, then the one running longer.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| start_time(a).cmp(&start_time(b)))
}

/// Being deleted because the scheduler preempted it.
fn preempted_and_going(p: &PodInfo) -> bool {
    p.terminating()
        && p.pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "DisruptionTarget"
                        && c.status == "True"
                        && c.reason.as_deref() == Some("PreemptionByScheduler")
                })
            })
}

/// Splits pods (most important first) into those whose eviction would break a budget and the
/// rest, spending the budgets' allowed disruptions in order.
fn split_by_pdb(
    pods: Vec<Arc<PodInfo>>,
    pdbs: &[Arc<PodDisruptionBudget>],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|p| p.status.as_ref().map_or(0, |s| s.disruptions_allowed))
        .collect();
    let selectors: Vec<Selector> = pdbs
        .iter()
        .map(|p| {
            Selector::from_label_selector(p.spec.as_ref().and_then(|s| s.selector.as_ref()))
                .unwrap_or_else(|_| Selector::nothing())
        })
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for p in pods {
        let mut violated = false;
        if !p.labels().is_empty() {
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.metadata.namespace.as_deref() != Some(p.namespace.as_str())
                    || selectors[i].selects_everything()
                    || !selectors[i].matches(p.labels())
                {
                    continue;
                }
                let disrupted = pdb
                    .status
                    .as_ref()
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .is_some_and(|d| d.contains_key(&p.name));
                if disrupted {
                    continue;
                }
                allowed[i] -= 1;
                violated |= allowed[i] < 0;
            }
        }
        if violated {
            violating.push(p);
        } else {
            fine.push(p);
        }
    }
    (violating, fine)
}

struct DryRun<'a> {
    profile: &'a Profile,
    nominator: &'a Nominator,
    listers: &'a Listers,
}

impl DryRun<'_> {
    /// `SelectVictimsOnNode`: every lower-priority pod out; then as many as possible back,
    /// the most important first (those a budget protects before the others).
    fn victims(
        &self,
        state: &CycleState,
        node: &NodeInfo,
        pdbs: &[Arc<PodDisruptionBudget>],
    ) -> Result<Candidate, Rejection> {
        let pod = &state.pod;
        let mut lower: Vec<Arc<PodInfo>> = node
            .pods
            .iter()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        if lower.is_empty() {
            return Err(Rejection::new(
                Plugin::NodeResourcesFit,
                Code::Unresolvable,
                NO_VICTIMS,
            ));
        }
        let (mut n, mut s) = (node.clone(), state.clone());
        for v in &lower {
            n.remove_pod(&v.uid);
            s.remove_pod(v, node, self.listers);
        }
        filter_with_nominated(self.profile, &s, &n, self.nominator, self.listers)?;
        lower.sort_by(|a, b| more_important(a, b));
        let (violating, fine) = split_by_pdb(lower, pdbs);
        let both = !violating.is_empty() && !fine.is_empty();
        let mut victims = Vec::new();
        let mut violations = 0;
        for (group, counts) in [(violating, true), (fine, false)] {
            for p in group {
                n.add_pod(p.clone());
                s.add_pod(&p, node, self.listers);
                if filter_with_nominated(self.profile, &s, &n, self.nominator, self.listers)
                    .is_err()
                {
                    n.remove_pod(&p.uid);
                    s.remove_pod(&p, node, self.listers);
                    violations += usize::from(counts);
                    victims.push(p);
                }
            }
        }
        if both {
            victims.sort_by(|a, b| more_important(a, b));
        }
        Ok(Candidate {
            node: node.name.clone(),
            victims,
            pdb_violations: violations,
        })
    }
}

/// `PodEligibleToPreemptOthers`.
fn eligible(pod: &PodInfo, cache: &Cache, diag: &Diagnosis) -> Result<(), String> {
    if pod.spec().and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.".into());
    }
    let nominated = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    if let Some(node) = nominated
        .filter(|n| !n.is_empty())
        .and_then(|n| cache.node(n))
    {
        let unresolvable = diag
            .rejections
            .iter()
            .any(|(n, r)| *n == node.name && r.code == Code::Unresolvable);
        if !unresolvable
            && node
                .pods
                .iter()
                .any(|p| p.priority < pod.priority && preempted_and_going(p))
        {
            return Err("not eligible due to a terminating pod on the nominated node.".into());
        }
    }
    Ok(())
}

/// kube-scheduler's `pickOneNodeForPreemption`, criterion after criterion.
fn pick(mut cands: Vec<Candidate>) -> Option<Candidate> {
    fn keep_best<K: Ord>(c: &mut Vec<Candidate>, key: impl Fn(&Candidate) -> K) {
        let keys: Vec<K> = c.iter().map(&key).collect();
        let Some(best) = keys.iter().min() else {
            return;
        };
        let keep: Vec<bool> = keys.iter().map(|k| k == best).collect();
        let mut i = 0;
        c.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
    let shifted = |p: i32| i64::from(p) + i64::from(i32::MAX) + 1;
    keep_best(&mut cands, |c| c.pdb_violations);
    keep_best(&mut cands, |c| {
        c.victims.first().map_or(i32::MIN, |v| v.priority)
    });
    keep_best(&mut cands, |c| {
        c.victims.iter().map(|v| shifted(v.priority)).sum::<i64>()
    });
    keep_best(&mut cands, |c| c.victims.len());
    keep_best(&mut cands, |c| {
        // The latest "earliest start" among each node's most important victims wins.
        let top = c.victims.first().map_or(i32::MIN, |v| v.priority);
        let earliest = c
            .victims
            .iter()
            .filter(|v| v.priority == top)
            .map(|v| start_time(v))
            .min()
            .unwrap_or(jiff::Timestamp::MAX);
        std::cmp::Reverse(earliest)
    });
    cands.into_iter().next()
}

pub fn preempt(
    profile: &Profile,
    cache: &Cache,
    listers: &Listers,
    nominator: &Nominator,
    state: &CycleState,
    diag: &Diagnosis,
) -> Outcome {
    let pod = &state.pod;
    if let Err(why) = eligible(pod, cache, diag) {
        return Outcome::NotEligible(why);
    }
    let potential: Vec<&NodeInfo> = diag
        .rejections
        .iter()
        .filter(|(_, r)| r.code == Code::Unschedulable)
        .filter_map(|(n, _)| cache.node(n))
        .collect();
    let mut statuses: HashMap<String, Rejection> = HashMap::new();
    let mut found = Vec::new();
    if !potential.is_empty() {
        let args = &profile.args.preemption;
        let n = potential.len();
        let want = ((n as i64 * args.min_candidate_nodes_percentage / 100)
            .max(args.min_candidate_nodes_absolute) as usize)
            .min(n);
        let offset = rand::random_range(0..n);
        let pdbs = listers.pdbs_in(&pod.namespace);
        let dry = DryRun {
            profile,
            nominator,
            listers,
        };
        let mut fine = 0;
        for i in 0..n {
            let node = potential[(offset + i) % n];
            match dry.victims(state, node, &pdbs) {
                Ok(c) => {
                    fine += usize::from(c.pdb_violations == 0);
                    found.push(c);
                }
                Err(r) => {
                    statuses.insert(node.name.clone(), r);
                }
            }
            if fine > 0 && found.len() >= want {
                break;
            }
        }
        found.sort_by_key(|c| c.pdb_violations > 0);
    }
    if let Some(c) = pick(found) {
        return Outcome::Preempt(c);
    }
    let mut d = Diagnosis::default();
    for node in &cache.nodes {
        let r = statuses.remove(&node.name).unwrap_or_else(|| {
            Rejection::new(Plugin::NodeResourcesFit, Code::Unresolvable, NOT_HELPFUL)
        });
        d.rejections.push((node.name.clone(), r));
    }
    Outcome::NoCandidates(d.message(cache.nodes.len()))
}

#[cfg(test)]
#[path = "preemption_tests.rs"]
mod tests;
