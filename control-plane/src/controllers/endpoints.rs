//! The Endpoints controller (`pkg/controller/endpoint/endpoints_controller.go`): for every
//! Service with a selector, a core/v1 Endpoints of the same name listing the selected pods'
//! addresses (ready ones in `addresses`, others in `notReadyAddresses`) per port, repacked into
//! subsets as upstream's `RepackSubsets`, at most 1000 addresses (beyond that truncated and
//! annotated `endpoints.kubernetes.io/over-capacity: truncated`). Kept for clients that still
//! read Endpoints; EndpointSlices are the current API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service,
};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::endpointslice::{
    find_port, on_service_deletion, pod_ref, pods_of, publishes_not_ready, selected,
    should_be_endpoint, should_set_hostname, HEADLESS_LABEL, TRIGGER_TIME_ANNOTATION,
};
use crate::reconcile::Cache;
use crate::reconcile::{self, Result};

/// Upstream's `maxCapacity`.
pub const MAX_CAPACITY: usize = 1000;
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";

struct Ctx {
    client: kube::Client,
    pods: Cache<Pod>,
}

/// The pod's address for the Service: its IP of the Service's first family.
fn address(pod: &Pod, svc: &Service) -> Option<EndpointAddress> {
    let v6 = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
        .is_some_and(|f| f == "IPv6");
    let status = pod.status.as_ref()?;
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    ips.extend(status.pod_ip.clone());
    let ip = ips.into_iter().find(|ip| {
        ip.parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_ipv6() == v6)
    })?;
    Some(EndpointAddress {
        ip,
        hostname: should_set_hostname(pod, svc)
            .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
            .flatten(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(pod_ref(pod)),
    })
}

type PortKey = (String, i32, String, String);

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_default(),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

fn addr_key(a: &EndpointAddress) -> (String, String) {
    let uid = a.target_ref.as_ref().and_then(|r| r.uid.clone());
    (a.ip.clone(), uid.unwrap_or_default())
}

/// `RepackSubsets`: ports that share the same addresses (with the same readiness) share one
/// subset; addresses and ports sorted, so equal endpoints compare equal.
fn repack(entries: Vec<(EndpointAddress, bool, Option<EndpointPort>)>) -> Vec<EndpointSubset> {
    type AddrSet = BTreeSet<((String, String), bool)>;
    let mut addrs: BTreeMap<(String, String), EndpointAddress> = BTreeMap::new();
    let mut per_port: BTreeMap<Option<PortKey>, (Option<EndpointPort>, AddrSet)> = BTreeMap::new();
    for (a, ready, p) in entries {
        let k = addr_key(&a);
        addrs.entry(k.clone()).or_insert(a);
        per_port
            .entry(p.as_ref().map(port_key))
            .or_insert_with(|| (p.clone(), BTreeSet::new()))
            .1
            .insert((k, ready));
    }
    let mut by_addrs: BTreeMap<AddrSet, Vec<EndpointPort>> = BTreeMap::new();
    for (_, (p, set)) in per_port {
        let ports = by_addrs.entry(set).or_default();
        ports.extend(p);
    }
    by_addrs
        .into_iter()
        .map(|(set, ports)| {
            let pick = |want: bool| -> Option<Vec<EndpointAddress>> {
                let v: Vec<EndpointAddress> = set
                    .iter()
                    .filter(|(_, r)| *r == want)
                    .map(|(k, _)| addrs[k].clone())
                    .collect();
                (!v.is_empty()).then_some(v)
            };
            EndpointSubset {
                addresses: pick(true),
                not_ready_addresses: pick(false),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

fn len(v: &Option<Vec<EndpointAddress>>) -> usize {
    v.as_ref().map_or(0, Vec::len)
}

/// `truncateEndpoints`: at most `max` addresses, ready ones first, each subset keeping its
/// share; whether any were dropped.
fn truncate(subsets: &mut [EndpointSubset], max: usize) -> bool {
    let ready: usize = subsets.iter().map(|s| len(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| len(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let (keep_ready, total, cap) = if ready >= max {
        (true, ready, max)
    } else {
        (false, not_ready, max - ready)
    };
    let mut left = cap;
    for s in subsets.iter_mut() {
        if keep_ready {
            s.not_ready_addresses = None;
        }
        let list = if keep_ready {
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        let n = len(list);
        let share = ((n * cap).div_ceil(total.max(1))).min(left);
        if let Some(v) = list.as_mut() {
            v.truncate(share);
        }
        left -= share.min(n);
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    true
}

/// The subsets the Service's pods make.
fn subsets(pods: &[Arc<Pod>], svc: &Service) -> Vec<EndpointSubset> {
    let tolerate_unready = publishes_not_ready(svc);
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let mut entries = Vec::new();
    for pod in pods {
        if !should_be_endpoint(pod, tolerate_unready) {
            continue;
        }
        let Some(addr) = address(pod, svc) else {
            continue;
        };
        let ready = tolerate_unready || k8s_rules::pods::is_ready(pod);
        if ports.is_empty() {
            // Headless Services without ports list addresses alone.
            if spec.cluster_ip.as_deref() == Some("None") {
                entries.push((addr, ready, None));
            }
            continue;
        }
        for p in &ports {
            let Some(n) = find_port(pod, p) else { continue };
            let ep = EndpointPort {
                name: p.name.clone(),
                port: n,
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            };
            entries.push((addr.clone(), ready, Some(ep)));
        }
    }
    repack(entries)
}

/// When the Service's endpoints last had cause to change: the latest creation or readiness
/// change among it and its pods (what upstream's trigger-time tracker records).
fn trigger_time(pods: &[Arc<Pod>], svc: &Service) -> Option<String> {
    let pod_times = pods.iter().flat_map(|p| {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
        [p.metadata.creation_timestamp.as_ref().map(|t| t.0), ready]
    });
    pod_times
        .chain([svc.metadata.creation_timestamp.as_ref().map(|t| t.0)])
        .flatten()
        .max()
        .map(|t| t.to_string())
}

async fn reconcile(svc: Arc<Service>, c: Arc<Ctx>) -> Result<Action> {
    let spec = svc.spec.as_ref();
    if selected(&svc).is_none() || spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Ok(Action::await_change());
    }
    c.pods.synced().await?;
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Endpoints> = Api::namespaced(c.client.clone(), &ns);
    let pods = pods_of(&c.pods, &svc);
    let mut subsets = subsets(&pods, &svc);
    let truncated = truncate(&mut subsets, MAX_CAPACITY);
    let current = api.get_opt(&name).await?;
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let annotations = current
        .as_ref()
        .and_then(|e| e.metadata.annotations.clone())
        .unwrap_or_default();
    let was_truncated = annotations.contains_key(OVER_CAPACITY_ANNOTATION);
    if let Some(cur) = &current {
        let same_subsets = cur.subsets.clone().filter(|s| !s.is_empty()) == subsets;
        let same_labels = cur.metadata.labels.clone().unwrap_or_default() == labels;
        if same_subsets && same_labels && was_truncated == truncated {
            return Ok(Action::await_change());
        }
    }
    let mut ep = current.clone().unwrap_or_default();
    ep.metadata.name = Some(name.clone());
    ep.metadata.namespace = Some(ns.clone());
    ep.metadata.labels = Some(labels);
    let mut annotations = annotations;
    match trigger_time(&pods, &svc) {
        Some(t) => annotations.insert(TRIGGER_TIME_ANNOTATION.into(), t),
        None => annotations.remove(TRIGGER_TIME_ANNOTATION),
    };
    if truncated {
        annotations.insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY_ANNOTATION);
    }
    ep.metadata.annotations = Some(annotations);
    ep.subsets = subsets;
    match current {
        None => {
            api.create(&PostParams::default(), &ep).await?;
        }
        Some(_) => {
            api.replace(&name, &PostParams::default(), &ep).await?;
        }
    }
    Ok(Action::await_change())
}

/// Runs the Endpoints controller until the process ends (or the task is aborted).
pub async fn run(client: kube::Client) {
    let (pods, writer) = reflector::store::<Pod>();
    let pod_events = reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let controller = controller
        .watches_stream(pod_events, move |pod: Pod| {
            services
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace == pod.metadata.namespace && selected(s).is_some())
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        // Someone else's write to an Endpoints is put back.
        .watches(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
            |ep: Endpoints| {
                Some(
                    ObjectRef::<Service>::new(&ep.name_any())
                        .within(&ep.namespace().unwrap_or_default()),
                )
            },
        );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: Cache::new(pods),
    });
    let cleanup = on_service_deletion(client.clone(), |svc| {
        let client = client.clone();
        async move {
            let api = Api::<Endpoints>::namespaced(client, &svc.namespace().unwrap_or_default());
            match api.delete(&svc.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!(service = %svc.name_any(), "deleting its endpoints: {e}"),
            }
        }
    });
    tokio::join!(
        reconcile::run("endpoint-controller", controller, reconcile, ctx),
        cleanup
    );
}

#[cfg(test)]
mod tests;
