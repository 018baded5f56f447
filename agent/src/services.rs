//! The cluster's Services and EndpointSlices as this node sees them: one watch of each kind,
//! shared by what serves them on the node (the cluster DNS server now, the service proxy
//! next), as kube-proxy and CoreDNS each keep their own informers of the same two kinds.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use tokio::sync::watch;

use crate::util::{ns_name as key, Seen};

/// `namespace/name` of an object.
pub type Key = (String, String);

/// What the watches hold: every Service and every EndpointSlice, by namespace and name.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub services: BTreeMap<Key, Arc<Service>>,
    pub slices: BTreeMap<Key, Arc<EndpointSlice>>,
    /// Both kinds have been listed once (before that, an empty map means "not known yet").
    pub synced: bool,
    /// Slice keys by `(namespace, service)`: built on the first `slices_of` of this snapshot
    /// (a scan of the namespace per service made each rebuild quadratic: 10k services cost
    /// 50M label comparisons), dropped by every change.
    pub by_service: OnceLock<BTreeMap<Key, Vec<Key>>>,
}

impl Snapshot {
    /// The slices of service `namespace/name` (by their `kubernetes.io/service-name` label).
    pub fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slice_arcs_of(namespace, name).map(Arc::as_ref)
    }

    /// As `slices_of`, shared: an unchanged slice is the same `Arc` in the next snapshot.
    pub fn slice_arcs_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
        let index = self.by_service.get_or_init(|| {
            let mut index: BTreeMap<Key, Vec<Key>> = BTreeMap::new();
            for (k, s) in &self.slices {
                if let Some(svc) = service_name(s) {
                    index
                        .entry((k.0.clone(), svc.to_string()))
                        .or_default()
                        .push(k.clone());
                }
            }
            index
        });
        index
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }
}

/// The Service an EndpointSlice belongs to.
pub fn service_name(s: &EndpointSlice) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")
        .map(String::as_str)
}

/// The shared cache: readers take a consistent `Snapshot` (cheap: the objects are shared) and
/// wake on `subscribe()` when anything changed.
pub struct ServiceCache {
    state: RwLock<Arc<Snapshot>>,
    changed: watch::Sender<u64>,
    listed: RwLock<(bool, bool)>,
}

impl Default for ServiceCache {
    fn default() -> Self {
        Self {
            state: RwLock::new(Arc::new(Snapshot::default())),
            changed: watch::channel(0).0,
            listed: RwLock::new((false, false)),
        }
    }
}

impl ServiceCache {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.read().expect("services lock").clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        {
            let mut st = self.state.write().expect("services lock");
            let snap = Arc::make_mut(&mut st);
            f(snap);
            snap.by_service = OnceLock::new();
            let l = *self.listed.read().expect("listed lock");
            snap.synced = l.0 && l.1;
        }
        self.changed.send_modify(|g| *g += 1);
    }

    fn set_listed(&self, service: Option<bool>, slice: Option<bool>) {
        let mut l = self.listed.write().expect("listed lock");
        if let Some(v) = service {
            l.0 = v;
        }
        if let Some(v) = slice {
            l.1 = v;
        }
    }

    /// Follows both kinds until the process ends; a new client (a renewed certificate)
    /// restarts the watches.
    pub async fn run(self: Arc<Self>, client: watch::Receiver<kube::Client>) {
        let svc = tokio::spawn(self.clone().follow::<Service>(client.clone()));
        let eps = tokio::spawn(self.follow::<EndpointSlice>(client));
        let _ = tokio::join!(svc, eps);
    }

    async fn follow<K: Kind>(self: Arc<Self>, client: watch::Receiver<kube::Client>) {
        crate::util::watch_all::<K>(client, "services", |seen| match seen {
            Seen::Listed(all) => {
                let all = all.into_iter().map(|o| (key(&o), Arc::new(o))).collect();
                K::set_listed(&self);
                self.update(|s| *K::map(s) = all);
            }
            Seen::Applied(o) => self.update(|s| {
                K::map(s).insert(key(&o), Arc::new(o));
            }),
            Seen::Deleted(o) => self.update(|s| {
                K::map(s).remove(&key(&o));
            }),
        })
        .await
    }
}

/// The two kinds the cache follows, and where each lives in a `Snapshot`.
trait Kind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn map(s: &mut Snapshot) -> &mut BTreeMap<Key, Arc<Self>>;
    fn set_listed(c: &ServiceCache);
}

impl Kind for Service {
    fn map(s: &mut Snapshot) -> &mut BTreeMap<Key, Arc<Self>> {
        &mut s.services
    }
    fn set_listed(c: &ServiceCache) {
        c.set_listed(Some(true), None);
    }
}

impl Kind for EndpointSlice {
    fn map(s: &mut Snapshot) -> &mut BTreeMap<Key, Arc<Self>> {
        &mut s.slices
    }
    fn set_listed(c: &ServiceCache) {
        c.set_listed(None, Some(true));
    }
}
