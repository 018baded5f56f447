//! The EndpointSlice controller (`pkg/controller/endpointslice/`): for every Service with a
//! selector, EndpointSlices (`discovery.k8s.io/v1`) listing the selected pods' addresses with
//! their readiness, node, zone and ports, at most `max_endpoints_per_slice` endpoints each,
//! owned by the Service and labelled with its name and this controller's. Services without a
//! selector are left to whoever manages their slices.
//!
//! The helpers shared with the Endpoints controller (which pods are endpoints, named ports,
//! hostnames) are here, as upstream's `pkg/controller/util/endpoint`.

mod reconciler;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::podcontrol::controller_ref;
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};
use reconciler::{Desired, Mapping};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// `--max-endpoints-per-slice`'s default.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether the pod belongs in a Service's endpoints at all (`ShouldPodBeInEndpoints`): it has
/// an IP, is not finished, and is not terminating unless `include_terminating`.
pub fn should_be_endpoint(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    let has_ip = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    let phase = status.and_then(|s| s.phase.as_deref());
    has_ip
        && !matches!(phase, Some("Failed" | "Succeeded"))
        && (include_terminating || pod.metadata.deletion_timestamp.is_none())
}

/// `ShouldSetHostname`: the pod names itself into this Service's DNS subdomain.
pub fn should_set_hostname(pod: &Pod, svc: &Service) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.hostname.as_deref())
        .is_some_and(|h| !h.is_empty())
        && spec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace
}

/// The pod's port for a Service port (`podutil.FindPort`): a named target port is looked up in
/// the pod's containers (with the port's protocol), a number is taken as it is.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
        Some(IntOrString::Int(n)) if *n != 0 => Some(*n),
        _ => Some(port.port),
    }
}

/// Whether the Service's pods get endpoints from the controllers: it has a selector.
pub fn selected(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref()
}

/// The pods of the Service's namespace its selector matches.
pub fn pods_of(pods: &Store<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    let Some(sel) = selected(svc) else {
        return vec![];
    };
    let ns = svc.metadata.namespace.as_deref();
    let mut out: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            sel.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

pub fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The reference an endpoint gives to its pod.
pub fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod's IPs of one family.
fn addresses(pod: &Pod, address_type: &str) -> Vec<String> {
    let status = pod.status.as_ref();
    let mut ips: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.clone()));
    }
    let v6 = address_type == "IPv6";
    ips.into_iter()
        .filter(|ip| {
            ip.parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_ipv6() == v6)
        })
        .take(1)
        .collect()
}

/// The address types a Service's slices carry (its IP families; IPv4 when unset).
fn address_types(svc: &Service) -> Vec<String> {
    match svc.spec.as_ref().and_then(|s| s.ip_families.clone()) {
        Some(f) if !f.is_empty() => f,
        _ => vec!["IPv4".into()],
    }
}

struct Ctx {
    client: kube::Client,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    max_endpoints: usize,
}

/// `podToEndpoint`: the pod as an endpoint of the Service.
fn endpoint(c: &Ctx, pod: &Pod, svc: &Service, address_type: &str) -> Option<Endpoint> {
    let addresses = addresses(pod, address_type);
    if addresses.is_empty() {
        return None;
    }
    let serving = publishes_not_ready(svc) || k8s_rules::pods::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // Never ready while terminating, unless the Service publishes unready addresses.
    let ready = publishes_not_ready(svc) || (serving && !terminating);
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let zone = node.as_ref().and_then(|n| {
        c.nodes
            .get(&ObjectRef::new(n))
            .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned())
    });
    Some(Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: should_set_hostname(pod, svc)
            .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
            .flatten(),
        node_name: node,
        zone,
        target_ref: Some(pod_ref(pod)),
        ..Default::default()
    })
}

/// The endpoint ports of one pod (`getEndpointPorts`): ports whose target the pod lacks are
/// left out.
fn endpoint_ports(pod: &Pod, svc: &Service) -> Vec<EndpointPort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(find_port(pod, p)?),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoints each (address type, ports) mapping should hold.
fn desired(c: &Ctx, svc: &Service) -> BTreeMap<Mapping, Desired> {
    let mut out: BTreeMap<Mapping, Desired> = BTreeMap::new();
    for pod in pods_of(&c.pods, svc) {
        if !should_be_endpoint(&pod, true) {
            continue;
        }
        let ports = endpoint_ports(&pod, svc);
        for at in address_types(svc) {
            let Some(ep) = endpoint(c, &pod, svc, &at) else {
                continue;
            };
            out.entry(Mapping::new(&at, &ports))
                .or_insert_with(|| Desired {
                    ports: ports.clone(),
                    endpoints: vec![],
                })
                .endpoints
                .push(ep);
        }
    }
    out
}

/// The labels a Service's slices carry: the Service's own, its name, this controller's, and
/// whether it is headless.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut l = svc.metadata.labels.clone().unwrap_or_default();
    l.remove(SERVICE_NAME_LABEL);
    l.remove(MANAGED_BY_LABEL);
    l.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    l.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        l.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        l.remove(HEADLESS_LABEL);
    }
    l
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn api(c: &Ctx, ns: &str) -> Api<EndpointSlice> {
    Api::namespaced(c.client.clone(), ns)
}

async fn reconcile(svc: Arc<Service>, c: Arc<Ctx>) -> Result<Action> {
    let external = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    if selected(&svc).is_none() || external || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Until the caches hold every pod and node, a sync would drop endpoints.
    c.pods.synced().await?;
    c.nodes.synced().await?;
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let slices = api(&c, &ns);
    // Read from the API, not a cache: a slice this controller just made must not be made again.
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={CONTROLLER_NAME}"
    ));
    let existing: Vec<EndpointSlice> = slices.list(&lp).await?.items;
    let labels = slice_labels(&svc);
    let relabel: Vec<EndpointSlice> = existing
        .iter()
        .filter(|s| s.metadata.labels.as_ref() != Some(&labels))
        .cloned()
        .collect();
    let placeholder_type = address_types(&svc).remove(0);
    let plan = reconciler::plan(
        existing,
        desired(&c, &svc),
        c.max_endpoints,
        &placeholder_type,
    );
    let trigger = now();
    for mut s in plan.create {
        s.metadata = ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                TRIGGER_TIME_ANNOTATION.to_string(),
                trigger.clone(),
            )])),
            owner_references: Some(vec![controller_ref(&*svc)]),
            ..Default::default()
        };
        slices.create(&PostParams::default(), &s).await?;
    }
    let mut updated = std::collections::HashSet::new();
    for mut s in plan.update {
        s.metadata.labels = Some(labels.clone());
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(TRIGGER_TIME_ANNOTATION.into(), trigger.clone());
        updated.extend(s.metadata.name.clone());
        slices
            .replace(&s.name_any(), &PostParams::default(), &s)
            .await?;
    }
    for gone in &plan.delete {
        match slices.delete(gone, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Slices whose endpoints stayed but whose Service's labels changed.
    for mut s in relabel {
        let n = s.name_any();
        if updated.contains(&n) || plan.delete.contains(&n) {
            continue;
        }
        s.metadata.labels = Some(labels.clone());
        slices.replace(&n, &PostParams::default(), &s).await?;
    }
    Ok(Action::await_change())
}

/// The Services in the pod's namespace whose selector the pod matches now, and every Service
/// of that namespace with a selector, so that one the pod left is synced too.
fn services_of_pod(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    services
        .state()
        .into_iter()
        .filter(|s| s.metadata.namespace == pod.metadata.namespace && selected(s).is_some())
        .map(|s| ObjectRef::from_obj(&*s))
        .collect()
}

/// Deletes what a controller made for Services as they are deleted (upstream does on the
/// Service's delete event; the slices' owner reference lets the garbage collector catch any
/// deletion missed while the watch was down).
pub async fn on_service_deletion<F, Fut>(client: kube::Client, mut f: F)
where
    F: FnMut(Service) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut events =
        std::pin::pin!(
            watcher(Api::<Service>::all(client), watcher::Config::default()).default_backoff()
        );
    while let Some(ev) = events.next().await {
        if let Ok(watcher::Event::Delete(svc)) = ev {
            f(svc).await;
        }
    }
}

/// Runs the EndpointSlice controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client, max_endpoints_per_slice: usize) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_events = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let for_pods = services.clone();
    let for_nodes = services.clone();
    let controller = controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}")),
        )
        .watches_stream(pod_events, move |pod: Pod| services_of_pod(&for_pods, &pod))
        // A node's zone is in its endpoints.
        .watches_stream(node_events, move |_: Node| {
            for_nodes
                .state()
                .into_iter()
                .filter(|s| selected(s).is_some())
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        });
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: Cache::new(pods),
        nodes: Cache::new(nodes),
        max_endpoints: max_endpoints_per_slice,
    });
    let cleanup = on_service_deletion(client.clone(), |svc| {
        let client = client.clone();
        async move {
            let ns = svc.namespace().unwrap_or_default();
            let lp = ListParams::default().labels(&format!(
                "{SERVICE_NAME_LABEL}={},{MANAGED_BY_LABEL}={CONTROLLER_NAME}",
                svc.name_any()
            ));
            let api = Api::<EndpointSlice>::namespaced(client, &ns);
            let result = async {
                for s in api.list(&lp).await?.items {
                    match api.delete(&s.name_any(), &DeleteParams::default()).await {
                        Ok(_) | Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, kube::Error>(())
            };
            if let Err(e) = result.await {
                tracing::warn!(service = %svc.name_any(), "deleting its endpoint slices: {e}");
            }
        }
    });
    tokio::join!(
        reconcile::run("endpointslice-controller", controller, reconcile, ctx),
        cleanup
    );
}

#[cfg(test)]
pub(crate) mod tests;
