//! The objects besides pods and nodes that plugins read: namespaces (affinity terms'
//! namespaceSelector), Services and controllers (the default spreading selector) and
//! PodDisruptionBudgets (preemption), each a watch cache.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_rules::labels::{Requirement, Selector};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};

use super::cache::PodInfo;

#[derive(Clone)]
pub struct Listers {
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub replica_sets: Store<ReplicaSet>,
    pub stateful_sets: Store<StatefulSet>,
    pub controllers: Store<ReplicationController>,
    pub pdbs: Store<PodDisruptionBudget>,
}

fn watch<K>(client: &kube::Client) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| async {});
    (store, stream)
}

impl Listers {
    /// The watch caches, and the future that keeps them filled.
    pub fn start(client: &kube::Client) -> (Listers, impl Future<Output = ()> + Send + 'static) {
        let (namespaces, a) = watch(client);
        let (services, b) = watch(client);
        let (replica_sets, c) = watch(client);
        let (stateful_sets, d) = watch(client);
        let (controllers, e) = watch(client);
        let (pdbs, f) = watch(client);
        let run = async move {
            tokio::join!(a, b, c, d, e, f);
        };
        let l = Listers {
            namespaces,
            services,
            replica_sets,
            stateful_sets,
            controllers,
            pdbs,
        };
        (l, run)
    }

    /// Empty caches (tests of plugins that read none).
    #[cfg(test)]
    pub fn empty() -> Listers {
        Listers {
            namespaces: reflector::store().0,
            services: reflector::store().0,
            replica_sets: reflector::store().0,
            stateful_sets: reflector::store().0,
            controllers: reflector::store().0,
            pdbs: reflector::store().0,
        }
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    pub fn namespaces_matching(&self, selector: &Selector) -> Vec<String> {
        self.namespaces
            .state()
            .iter()
            .filter(|n| selector.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .filter_map(|n| n.metadata.name.clone())
            .collect()
    }

    /// `DefaultSelector`: the selectors of the Services selecting the pod and of its
    /// controller (ReplicationController, ReplicaSet, StatefulSet), all required.
    pub fn default_selector(&self, pod: &PodInfo) -> Selector {
        let labels = pod.labels();
        let mut set: BTreeMap<String, String> = BTreeMap::new();
        for s in self.services.state() {
            if s.metadata.namespace.as_deref() != Some(pod.namespace.as_str()) {
                continue;
            }
            let Some(sel) = s.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                set.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let owner = pod
            .pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let ns = pod.namespace.as_str();
        let mut extra = Selector::everything();
        if let Some(o) = owner {
            match (o.api_version.as_str(), o.kind.as_str()) {
                ("v1", "ReplicationController") => {
                    if let Some(rc) = self.controllers.get(&ObjectRef::new(&o.name).within(ns)) {
                        let sel = rc
                            .spec
                            .as_ref()
                            .and_then(|s| s.selector.clone())
                            .unwrap_or_default();
                        set.extend(sel);
                    }
                }
                ("apps/v1", "ReplicaSet") => {
                    if let Some(rs) = self.replica_sets.get(&ObjectRef::new(&o.name).within(ns)) {
                        extra =
                            Selector::from_label_selector(rs.spec.as_ref().map(|s| &s.selector))
                                .unwrap_or_default();
                    }
                }
                ("apps/v1", "StatefulSet") => {
                    if let Some(ss) = self.stateful_sets.get(&ObjectRef::new(&o.name).within(ns)) {
                        extra =
                            Selector::from_label_selector(ss.spec.as_ref().map(|s| &s.selector))
                                .unwrap_or_default();
                    }
                }
                _ => {}
            }
        }
        set.into_iter()
            .fold(Selector::everything(), |s, (k, v)| {
                s.and(Requirement::Equals(k, v))
            })
            .and_all(&extra)
    }

    pub fn pdbs_in(&self, ns: &str) -> Vec<Arc<PodDisruptionBudget>> {
        self.pdbs
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .collect()
    }
}
