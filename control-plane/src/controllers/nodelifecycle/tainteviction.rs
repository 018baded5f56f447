//! The taint eviction controller (`pkg/controller/tainteviction`, kube-controller-manager's
//! `taint-eviction-controller`): a pod on a node with NoExecute taints it does not tolerate is
//! deleted at once; one that tolerates them all is deleted after the shortest
//! `tolerationSeconds` of the tolerations used (counted from when it was first seen so), never
//! when they tolerate forever; a pending deletion is cancelled when the taints go. Before the
//! delete the pod gets the `DisruptionTarget` condition (reason `DeletionByTaintManager`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use super::super::events::Recorder;
use super::cached;
use super::taints::{taints, NO_EXECUTE};

/// How often pods on tainted nodes are looked at.
const PERIOD: Duration = Duration::from_millis(200);

/// What becomes of a pod on a node with `taints` (its NoExecute ones).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Some taint is not tolerated.
    Now,
    /// Every taint is tolerated, the shortest for this long.
    After(Duration),
    /// Every taint is tolerated forever (or there is none).
    Never,
}

/// `processPodOnNode`'s choice: `GetMatchingTolerations` then `getMinTolerationTime`.
pub fn decide(tolerations: &[Toleration], taints: &[Taint]) -> Decision {
    let mut used = Vec::new();
    for t in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        match tolerations
            .iter()
            .find(|tol| k8s_rules::taints::tolerates(tol, t))
        {
            Some(tol) => used.push(tol),
            None => return Decision::Now,
        }
    }
    let min = used
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .min();
    match min {
        Some(d) => Decision::After(d),
        None => Decision::Never,
    }
}

struct Eviction {
    client: kube::Client,
    recorder: Recorder,
    /// Pods whose deletion is scheduled (by uid): (namespace, name, since, delay).
    scheduled: HashMap<String, (String, String, Instant, Duration)>,
}

impl Eviction {
    async fn event(&self, ns: &str, name: &str, message: String) {
        let about = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        };
        self.recorder
            .post(about, "Normal", "TaintManagerEviction", &message)
            .await;
    }

    async fn cancel(&mut self, uid: &str) {
        if let Some((ns, name, ..)) = self.scheduled.remove(uid) {
            self.event(
                &ns,
                &name,
                format!("Cancelling deletion of Pod {ns}/{name}"),
            )
            .await;
        }
    }

    /// `addConditionAndDeletePod`.
    async fn delete(&self, ns: &str, name: &str, uid: &str) -> kube::Result<()> {
        tracing::info!(pod = %format!("{ns}/{name}"), "taint eviction: deleting pod");
        self.event(ns, name, format!("Marking for deletion Pod {ns}/{name}"))
            .await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut pod = match api.get(name).await {
            Ok(p) if p.metadata.uid.as_deref() == Some(uid) => p,
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let conditions = pod
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        let want = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        };
        let changed = match conditions.iter_mut().find(|c| c.type_ == want.type_) {
            Some(c) if c.status == want.status && c.reason == want.reason => false,
            Some(c) => {
                *c = want;
                true
            }
            None => {
                conditions.push(want);
                true
            }
        };
        if changed {
            api.replace_status(name, &PostParams::default(), &pod)
                .await?;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pass(
        &mut self,
        pods: &[std::sync::Arc<Pod>],
        nodes: &kube::runtime::reflector::Store<Node>,
    ) {
        let now = Instant::now();
        let mut seen = Vec::new();
        for pod in pods {
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let node_taints: Vec<Taint> = nodes
                .get(&ObjectRef::new(node_name))
                .map(|n| {
                    taints(&n)
                        .iter()
                        .filter(|t| t.effect == NO_EXECUTE)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if node_taints.is_empty() {
                continue;
            }
            seen.push(uid.clone());
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = match decide(&tolerations, &node_taints) {
                Decision::Now => {
                    self.scheduled.remove(&uid);
                    true
                }
                Decision::Never => {
                    self.cancel(&uid).await;
                    false
                }
                Decision::After(d) => {
                    let entry = self
                        .scheduled
                        .entry(uid.clone())
                        .or_insert_with(|| (ns.clone(), name.clone(), now, d));
                    entry.3 = d;
                    now >= entry.2 + d
                }
            };
            if due {
                self.scheduled.remove(&uid);
                if let Err(e) = self.delete(&ns, &name, &uid).await {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "taint eviction: {e}");
                }
            }
        }
        // Pods whose node lost its NoExecute taints (or that went): cancelled.
        let stale: Vec<String> = self
            .scheduled
            .keys()
            .filter(|uid| !seen.contains(uid))
            .cloned()
            .collect();
        for uid in stale {
            let still = pods
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
            if still {
                self.cancel(&uid).await;
            } else {
                self.scheduled.remove(&uid);
            }
        }
    }
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let (nodes, fill_nodes) = cached(Api::<Node>::all(client.clone()));
    let (pods, fill_pods) = cached(Api::<Pod>::all(client.clone()));
    let mut ev = Eviction {
        recorder: Recorder::new(client.clone(), "taint-eviction-controller"),
        client,
        scheduled: HashMap::new(),
    };
    let main = async move {
        if nodes.synced().await.is_err() || pods.synced().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            ev.pass(&pods.state(), &nodes).await;
        }
    };
    tokio::select! {
        _ = fill_nodes => {}
        _ = fill_pods => {}
        _ = main => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn decisions_as_upstream() {
        let unreachable = super::super::taints::taint("node.kubernetes.io/unreachable", NO_EXECUTE);
        let taints = [unreachable];
        assert_eq!(decide(&[], &taints), Decision::Now);
        let other = tol(json!({"key": "other", "operator": "Exists", "effect": "NoExecute"}));
        assert_eq!(decide(std::slice::from_ref(&other), &taints), Decision::Now);
        let five = tol(
            json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}),
        );
        assert_eq!(
            decide(std::slice::from_ref(&five), &taints),
            Decision::After(Duration::from_secs(5))
        );
        let forever = tol(json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists"}));
        assert_eq!(
            decide(std::slice::from_ref(&forever), &taints),
            Decision::Never
        );
        let negative =
            tol(json!({"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -3}));
        assert_eq!(
            decide(&[negative], &taints),
            Decision::After(Duration::ZERO)
        );
        // The first matching toleration is the one used.
        assert_eq!(decide(&[forever, five], &taints), Decision::Never);
        assert_eq!(decide(&[], &[]), Decision::Never);
    }
}
