//! Pod events posted as core/v1 Events, the way the kubelet's recorder writes them (source
//! component `kubelet`, the node as host; repeats of the same event within the hour bump
//! `count` instead of making a new object).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::pod::PodEvent;
use crate::util::Limiter;

/// An event already posted: (namespace, name, count, when) by (pod uid, reason, message).
type Recorded = (String, String, i32, Instant);

/// Posts the events of `rx` as `node`'s, paced by `limit`, until the sink goes.
pub async fn run(
    node: String,
    limit: Limiter,
    client: watch::Receiver<kube::Client>,
    mut rx: mpsc::UnboundedReceiver<PodEvent>,
) {
    let mut seen: HashMap<(String, String, String), Recorded> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        limit.acquire().await;
        seen.retain(|_, v| v.3.elapsed() < Duration::from_secs(3600));
        let c = client.borrow().clone();
        let ns = ev
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pod_name = ev.pod.metadata.name.clone().unwrap_or_default();
        let uid = ev.pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(c, &ns);
        let now = jiff::Timestamp::now();
        let k = (uid.clone(), ev.reason.clone(), ev.message.clone());
        if let Some((ens, name, count, _)) = seen.get(&k).cloned() {
            let patch = json!({"count": count + 1, "lastTimestamp": Time(now)});
            let again: Api<Event> = Api::namespaced(api.clone().into_client(), &ens);
            if again
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                seen.insert(k, (ens, name, count + 1, Instant::now()));
                continue;
            }
        }
        let name = format!("{pod_name}.{:x}", now.as_nanosecond());
        let mut e = Event {
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name),
                namespace: Some(ns.clone()),
                uid: Some(uid),
                ..Default::default()
            },
            reason: Some(ev.reason),
            message: Some(ev.message),
            type_: Some(ev.type_),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.clone()),
            ..Default::default()
        };
        e.metadata.name = Some(name.clone());
        e.metadata.namespace = Some(ns.clone());
        match api.create(&PostParams::default(), &e).await {
            Ok(_) => {
                seen.insert(k, (ns, name, 1, Instant::now()));
            }
            Err(err) => tracing::debug!("posting an event: {err}"),
        }
    }
}
