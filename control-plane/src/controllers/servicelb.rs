//! The service load balancer controller (upstream's `service-lb-controller`, which a cloud
//! provider backs; here, as k3s' ServiceLB, the cluster is its own load balancer): a Service of
//! type LoadBalancer gets `status.loadBalancer.ingress` set to the InternalIPs of the Ready
//! nodes, on whose addresses every node's service proxy serves it. A Service that stops being
//! a LoadBalancer has its ingress cleared. Services with a `loadBalancerClass` belong to another
//! implementation and are left alone.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::reconcile::{self, Result};

/// Nodes with this label are not behind load balancers (upstream's).
const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

struct Ctx {
    client: kube::Client,
}

fn is_ours(s: &Service) -> bool {
    let spec = s.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
}

/// The InternalIPs of the Ready nodes not excluded from load balancers, sorted.
pub fn ingress_ips(nodes: &[Node]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| !n.labels().contains_key(EXCLUDE))
        .filter(|n| {
            let conds = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            conds
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action> {
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let want: Vec<Value> = if is_ours(&svc) {
        let nodes = Api::<Node>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?;
        ingress_ips(&nodes.items)
            .into_iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect()
    } else if svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_ref())
        .is_some()
    {
        return Ok(Action::await_change());
    } else {
        Vec::new()
    };
    let have: Vec<Value> = current
        .iter()
        .map(|i| json!({"ip": i.ip, "ipMode": i.ip_mode}))
        .collect();
    if have == want {
        return Ok(Action::await_change());
    }
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = json!({"status": {"loadBalancer": {"ingress": if want.is_empty() { Value::Null } else { json!(want) }}}});
    api.patch_status(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()), ingress = ?want, "load balancer ingress set");
    Ok(Action::await_change())
}

/// Runs the controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let services = Api::<Service>::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    // Any Node change may change every load balancer's ingress.
    let controller = controller.watches(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        move |_: Node| {
            store
                .state()
                .into_iter()
                .filter(|s| is_ours(s))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
    );
    let ctx = Arc::new(Ctx { client });
    reconcile::run("service-lb-controller", controller, reconcile, ctx).await;
}

#[cfg(test)]
mod tests;
