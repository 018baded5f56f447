//! The taints the node lifecycle controller owns: NoExecute `unreachable`/`not-ready` (taint
//! based eviction) and the NoSchedule ones that mirror node conditions
//! (`doNoScheduleTaintingPass`), changed with one patch of `spec.taints` guarded by the
//! Node's resourceVersion (`SwapNodeControllerTaint`).

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";

/// `nodeConditionToTaintKeyStatusMap`: (condition, status) → NoSchedule taint key.
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", NOT_READY),
    ("Ready", "Unknown", UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
];

pub fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        ..Default::default()
    }
}

fn same(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

pub fn has(node: &Node, key: &str, effect: &str) -> bool {
    taints(node).iter().any(|t| same(t, &taint(key, effect)))
}

pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
}

/// The NoSchedule taints `node` should have for its conditions and `spec.unschedulable`, and
/// those it has that this controller manages: (to add, to remove).
pub fn no_schedule_diff(node: &Node) -> (Vec<Taint>, Vec<Taint>) {
    let mut want: Vec<Taint> = Vec::new();
    for c in node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
    {
        for (type_, status, key) in CONDITION_TAINTS {
            if c.type_ == *type_ && c.status == *status {
                want.push(taint(key, NO_SCHEDULE));
            }
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        want.push(taint(UNSCHEDULABLE, NO_SCHEDULE));
    }
    let managed: Vec<&Taint> = taints(node)
        .iter()
        .filter(|t| {
            t.effect == NO_SCHEDULE
                && (t.key == UNSCHEDULABLE || CONDITION_TAINTS.iter().any(|(_, _, k)| *k == t.key))
        })
        .collect();
    let add = want
        .iter()
        .filter(|w| !managed.iter().any(|m| same(m, w)))
        .cloned()
        .collect();
    let del = managed
        .into_iter()
        .filter(|m| !want.iter().any(|w| same(m, w)))
        .cloned()
        .collect();
    (add, del)
}

/// `SwapNodeControllerTaint`: `add` (NoExecute ones stamped with `timeAdded`) and `remove` on
/// the Node, in one patch guarded by its resourceVersion; on a conflict (the cache was stale)
/// the live Node is read and the swap tried again. False when there was nothing to change.
pub async fn swap(
    client: &kube::Client,
    node: &Node,
    add: &[Taint],
    remove: &[Taint],
) -> kube::Result<bool> {
    let api = Api::<Node>::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut node = node.clone();
    for attempt in 0.. {
        let old = taints(&node);
        let mut list: Vec<Taint> = old
            .iter()
            .filter(|t| !remove.iter().any(|r| same(t, r)))
            .cloned()
            .collect();
        let now = Time(jiff::Timestamp::now());
        for a in add {
            if !list.iter().any(|t| same(t, a)) {
                let mut a = a.clone();
                if a.effect == NO_EXECUTE {
                    a.time_added = Some(now.clone());
                }
                list.push(a);
            }
        }
        if list.len() == old.len() && list.iter().all(|t| old.iter().any(|o| same(o, t))) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": list},
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {
                node = api.get(&name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    let show = |v: &[Taint]| {
        v.iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect::<Vec<_>>()
    };
    tracing::info!(node = %name, added = ?show(add), removed = ?show(remove), "node lifecycle: taints changed");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_schedule_taints_mirror_conditions() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": true, "taints": [
                {"key": UNREACHABLE, "effect": "NoSchedule"},
                {"key": UNREACHABLE, "effect": "NoExecute"},
                {"key": "user", "effect": "NoSchedule"},
            ]},
            "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "DiskPressure", "status": "True"},
                {"type": "MemoryPressure", "status": "False"},
            ]},
        }))
        .unwrap();
        let (add, del) = no_schedule_diff(&node);
        let keys = |v: &[Taint]| v.iter().map(|t| t.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(&add),
            [NOT_READY, "node.kubernetes.io/disk-pressure", UNSCHEDULABLE]
        );
        assert_eq!(
            keys(&del),
            [UNREACHABLE],
            "the NoExecute one and the user's stay"
        );
        assert!(del.iter().all(|t| t.effect == NO_SCHEDULE));
    }
}
