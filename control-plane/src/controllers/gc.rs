//! The garbage collector (kube-controller-manager's `garbagecollector`), through the API:
//! objects whose owners (`metadata.ownerReferences`) are all gone are deleted (background
//! cascading deletion), and owners being deleted in the foreground (finalizer
//! `foregroundDeletion`) lose that finalizer once their dependents are gone. Orphaning is done
//! by the apiserver when an owner is deleted with `propagationPolicy: Orphan`.
//!
//! Like upstream's, it watches every stored kind and keeps a graph of owner references (uid →
//! object, owner uid → dependents). A deletion seen on any watch wakes the deleted object's
//! dependents and owners, each in the loop of its own kind. An owner missing from the graph is
//! looked up in the API before its dependents go, so a watch that has not listed yet never
//! causes a deletion.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures_util::TryStreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::resources::{Resource, RESOURCES};
use crate::reconcile::{self, Result};

const FOREGROUND: &str = "foregroundDeletion";

/// A stored kind the collector watches.
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

/// What the graph keeps of an object.
#[derive(Debug, Clone)]
struct Vertex {
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
}

#[derive(Default)]
struct Graph {
    vertices: HashMap<String, Vertex>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn insert(&mut self, uid: String, v: Vertex) {
        self.remove(&uid);
        for o in &v.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.vertices.insert(uid, v);
    }

    fn remove(&mut self, uid: &str) -> Option<Vertex> {
        let v = self.vertices.remove(uid)?;
        for o in &v.owners {
            if let Some(d) = self.dependents.get_mut(&o.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&o.uid);
                }
            }
        }
        Some(v)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Vertex)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.vertices.get(d)?.clone())))
            .collect()
    }
}

struct Collector {
    client: kube::Client,
    kinds: Vec<Kind>,
    graph: RwLock<Graph>,
    /// Each kind's loop takes extra work from here.
    wake: Vec<mpsc::UnboundedSender<ObjectRef<DynamicObject>>>,
}

fn api_resource(r: &Resource) -> ApiResource {
    ApiResource {
        group: r.group.to_string(),
        version: r.version.to_string(),
        api_version: r.api_version(),
        kind: r.kind.to_string(),
        plural: r.plural.to_string(),
    }
}

impl Collector {
    fn kind_of(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.ar.api_version == api_version && k.ar.kind == kind)
    }

    fn vertex(&self, kind: usize, obj: &DynamicObject) -> Vertex {
        Vertex {
            kind,
            namespace: obj.metadata.namespace.clone(),
            name: obj.name_any(),
            owners: obj.metadata.owner_references.clone().unwrap_or_default(),
        }
    }

    /// Queues `v` in its kind's loop.
    fn wake(&self, v: &Vertex) {
        let mut r = ObjectRef::new_with(&v.name, self.kinds[v.kind].ar.clone());
        if let Some(ns) = &v.namespace {
            r = r.within(ns);
        }
        let _ = self.wake[v.kind].send(r);
    }

    /// An object is gone: its dependents may be orphans now, and owners waiting for it in
    /// the foreground may be done.
    fn gone(&self, uid: &str) {
        let (removed, dependents) = {
            let mut g = self.graph.write().expect("graph lock");
            (g.remove(uid), g.dependents_of(uid))
        };
        for (_, d) in &dependents {
            self.wake(d);
        }
        if let Some(v) = removed {
            let g = self.graph.read().expect("graph lock");
            for o in &v.owners {
                if let Some(owner) = g.vertices.get(&o.uid) {
                    self.wake(owner);
                }
            }
        }
    }

    /// Keeps the graph in step with one kind's watch.
    fn observe(
        &self,
        kind: usize,
        ev: &watcher::Event<DynamicObject>,
        listed: &mut HashSet<String>,
    ) {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                if let Some(uid) = o.uid() {
                    if matches!(ev, watcher::Event::InitApply(_)) {
                        listed.insert(uid.clone());
                    }
                    let v = self.vertex(kind, o);
                    self.graph.write().expect("graph lock").insert(uid, v);
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(uid) = o.uid() {
                    self.gone(&uid);
                }
            }
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitDone => {
                // Objects deleted while the watch was down never get a Delete event.
                let stale: Vec<String> = self
                    .graph
                    .read()
                    .expect("graph lock")
                    .vertices
                    .iter()
                    .filter(|(uid, v)| v.kind == kind && !listed.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in stale {
                    self.gone(&uid);
                }
            }
        }
    }

    fn api(&self, kind: usize, namespace: Option<&str>) -> Api<DynamicObject> {
        let k = &self.kinds[kind];
        match namespace {
            Some(ns) if k.namespaced => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    /// Whether the owner `o` of an object in `namespace` is gone: not in the graph, and not
    /// found (with its uid) by the API either. An owner of a kind this server does not serve
    /// (yet: a custom resource whose definition comes later) is never taken for gone, as
    /// upstream's collector keeps such dependents rather than guess.
    async fn owner_gone(&self, o: &OwnerReference, namespace: Option<&str>) -> Result<bool> {
        if self
            .graph
            .read()
            .expect("graph lock")
            .vertices
            .contains_key(&o.uid)
        {
            return Ok(false);
        }
        let Some(kind) = self.kind_of(&o.api_version, &o.kind) else {
            tracing::debug!(owner = %format!("{}/{}", o.kind, o.name), api_version = %o.api_version, "owner of a kind not served: kept");
            return Ok(false);
        };
        let found = self.api(kind, namespace).get_opt(&o.name).await?;
        Ok(found.is_none_or(|f| f.uid().as_deref() != Some(o.uid.as_str())))
    }
}

/// One kind's loop: the shared collector and the kind it reconciles.
struct KindLoop {
    collector: Arc<Collector>,
    kind: usize,
}

async fn reconcile(obj: Arc<DynamicObject>, l: Arc<KindLoop>) -> Result<Action> {
    let (c, kind) = (&*l.collector, l.kind);
    let Some(uid) = obj.uid() else {
        return Ok(Action::await_change());
    };
    let ns = obj.namespace();
    let finalizers = obj.finalizers();
    let deleting = obj.metadata.deletion_timestamp.is_some();
    if deleting && finalizers.iter().any(|f| f == FOREGROUND) {
        let dependents = c.graph.read().expect("graph lock").dependents_of(&uid);
        if dependents.is_empty() {
            // The last dependent is gone: the owner may go (the apiserver removes it when no
            // finalizer is left).
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FOREGROUND).collect();
            let patch = json!([
                {"op": "test", "path": "/metadata/uid", "value": uid},
                {"op": "replace", "path": "/metadata/finalizers", "value": rest},
            ]);
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| reconcile::Error::Invalid(e.to_string()))?;
            c.api(kind, ns.as_deref())
                .patch(
                    &obj.name_any(),
                    &PatchParams::default(),
                    &Patch::<()>::Json(patch),
                )
                .await?;
            tracing::info!(object = %format!("{}/{}", c.kinds[kind].ar.plural, obj.name_any()), "foreground deletion done: its dependents are gone");
            return Ok(Action::await_change());
        }
        for (duid, d) in dependents {
            delete(c, &duid, &d).await?;
        }
        return Ok(Action::await_change());
    }
    let owners = obj.metadata.owner_references.clone().unwrap_or_default();
    if owners.is_empty() || deleting {
        return Ok(Action::await_change());
    }
    for o in &owners {
        if !c.owner_gone(o, ns.as_deref()).await? {
            return Ok(Action::await_change());
        }
    }
    let v = c.vertex(kind, &obj);
    delete(c, &uid, &v).await?;
    tracing::info!(object = %format!("{}/{}", c.kinds[kind].ar.plural, obj.name_any()), "garbage collected: its owners are gone");
    Ok(Action::await_change())
}

/// Deletes the object `uid` (and only that one: a new object of the same name is left alone).
async fn delete(c: &Collector, uid: &str, v: &Vertex) -> Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match c
        .api(v.kind, v.namespace.as_deref())
        .delete(&v.name, &dp)
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or replaced by a new object of that name.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

type Wakes = Vec<mpsc::UnboundedReceiver<ObjectRef<DynamicObject>>>;

/// A collector of every stored kind, with an empty graph, and each kind's wake-up queue.
fn collector(client: kube::Client) -> (Arc<Collector>, Wakes) {
    let kinds: Vec<Kind> = RESOURCES
        .iter()
        .filter(|r| r.stored)
        .map(|r| Kind {
            ar: api_resource(r),
            namespaced: r.namespaced,
        })
        .collect();
    let (senders, receivers): (Vec<_>, Vec<_>) =
        kinds.iter().map(|_| mpsc::unbounded_channel()).unzip();
    let collector = Arc::new(Collector {
        client,
        kinds,
        graph: RwLock::new(Graph::default()),
        wake: senders,
    });
    (collector, receivers)
}

/// Runs the collector until the process ends (or its task is aborted).
pub async fn run(client: kube::Client) {
    let (collector, receivers) = collector(client.clone());
    let mut loops = tokio::task::JoinSet::new();
    for (kind, rx) in receivers.into_iter().enumerate() {
        let c = collector.clone();
        let ar = c.kinds[kind].ar.clone();
        let writer = reflector::store::Writer::new(ar.clone());
        let reader = writer.as_reader();
        let mut listed = HashSet::new();
        let observer = c.clone();
        let events = watcher(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            watcher::Config::default(),
        )
        .default_backoff()
        .map_ok(move |ev| {
            observer.observe(kind, &ev, &mut listed);
            ev
        });
        let stream = reflector(writer, events).applied_objects();
        let woken =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let controller = Controller::for_stream_with(stream, reader, ar).reconcile_on(woken);
        let ctx = Arc::new(KindLoop { collector: c, kind });
        loops.spawn(reconcile::run(
            "garbage-collector",
            controller,
            reconcile,
            ctx,
        ));
    }
    while loops.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests;
