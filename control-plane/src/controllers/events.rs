//! core/v1 Events as kube-controller-manager's recorders write them (`source.component` the
//! controller, e.g. `replicaset-controller`; a repeat of the same event on the same object
//! within 10 minutes bumps `count` and `lastTimestamp` instead of making a new object, as
//! client-go's EventCorrelator). Events are best effort: a failure is logged, never returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::json;

const CORRELATION_WINDOW: Duration = Duration::from_secs(600);
/// Remembered events beyond which the old ones are forgotten.
const SWEEP_AT: usize = 4096;

/// (object uid, type, reason, message) → (namespace, event name, count, last posted).
type Seen = HashMap<(String, String, String, String), (String, String, i32, Instant)>;

pub struct Recorder {
    client: kube::Client,
    component: String,
    seen: Mutex<Seen>,
}

/// The reference an event points at.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, component: impl Into<String>) -> Recorder {
        Recorder {
            client,
            component: component.into(),
            seen: Mutex::default(),
        }
    }

    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        message: &str,
    ) {
        self.post(reference(obj), "Normal", reason, message).await
    }

    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        message: &str,
    ) {
        self.post(reference(obj), "Warning", reason, message).await
    }

    pub async fn post(&self, about: ObjectReference, type_: &str, reason: &str, message: &str) {
        let ns = about.namespace.clone().unwrap_or_else(|| "default".into());
        let key = (
            about.uid.clone().unwrap_or_default(),
            type_.to_string(),
            reason.to_string(),
            message.to_string(),
        );
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let earlier = {
            let mut seen = self.seen.lock().expect("events lock");
            // Swept only when large: a sweep per event made posting N events cost N².
            if seen.len() > SWEEP_AT {
                seen.retain(|_, v| v.3.elapsed() < CORRELATION_WINDOW);
            }
            seen.get(&key)
                .filter(|v| v.3.elapsed() < CORRELATION_WINDOW)
                .cloned()
        };
        if let Some((_, name, count, _)) = earlier {
            let patch = json!({"count": count + 1, "lastTimestamp": Time(now)});
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                self.remember(key, ns, name, count + 1);
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            about.name.as_deref().unwrap_or("object"),
            now.as_nanosecond()
        );
        let mut e = Event {
            involved_object: about,
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        e.metadata.name = Some(name.clone());
        e.metadata.namespace = Some(ns.clone());
        match api.create(&PostParams::default(), &e).await {
            Ok(_) => self.remember(key, ns, name, 1),
            Err(err) => {
                tracing::debug!(component = %self.component, %reason, "event not posted: {err}")
            }
        }
    }

    fn remember(
        &self,
        key: (String, String, String, String),
        ns: String,
        name: String,
        count: i32,
    ) {
        self.seen
            .lock()
            .expect("events lock")
            .insert(key, (ns, name, count, Instant::now()));
    }
}
