//! Namespaces: defaults (phase, the `kubernetes` finalizer, the name label), deletion through
//! `Terminating` (the namespace controller's work is done here: what the namespace holds goes,
//! then the namespace), and what every namespace holds: the `default` service account and the
//! `kube-root-ca.crt` ConfigMap.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::delete::stamp;
use super::pods::ROOT_CA_CONFIGMAP;
use super::strategy::{Strategy, Subresource};
use super::{encode, ApiResult, Request, Store};
use crate::api::objects::{self, child};
use crate::api::resources::{self, RESOURCES};
use crate::api::status::Cause;
use crate::api::table;
use crate::store::KeyValue;

pub struct Namespaces;
pub static NAMESPACE: Namespaces = Namespaces;

#[async_trait]
impl Strategy for Namespaces {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn printer(&self) -> &'static table::Printer {
        &table::NAMESPACES
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Finalize]
    }

    fn validate_name(&self, name: &str) -> Option<Cause> {
        objects::dns_label_name(name)
    }

    fn defaults(&self, obj: &mut Value) {
        let status = child(obj, "status");
        if status["phase"].is_null() {
            status["phase"] = json!("Active");
        }
        let spec = child(obj, "spec");
        if spec["finalizers"].is_null() {
            spec["finalizers"] = json!(["kubernetes"]);
        }
        let name = obj["metadata"]["name"].clone();
        let labels = obj["metadata"]
            .as_object_mut()
            .unwrap()
            .entry("labels")
            .or_insert_with(|| json!({}));
        labels["kubernetes.io/metadata.name"] = name;
    }

    async fn after_create(&self, req: &Request<'_>, obj: &Value) {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        ensure_namespace_defaults(req.store(), name, &req.server.ca_pem).await;
    }

    /// A namespace is not removed by the request: it turns `Terminating` (refusing new
    /// content) and goes once what it holds is gone.
    async fn delete(
        &self,
        req: &Request<'_>,
        store: &Store,
        current: &KeyValue,
        mut obj: Value,
    ) -> Option<ApiResult> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if obj["status"]["phase"] != "Terminating" {
            obj["status"]["phase"] = json!("Terminating");
            obj["metadata"]["deletionTimestamp"] = json!(stamp(0));
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if !req.dry_run() {
                if let Err(e) = store.put(req, &name, current, &mut obj).await {
                    return Some(Err(e));
                }
                let db = req.server.store.clone();
                tokio::spawn(async move { finalize_namespace(db, name).await });
            }
        }
        Some(Ok(req.respond(store.r, StatusCode::OK, &obj, &[])))
    }
}

/// `namespaces/<name>/finalize` is advertised, as Kubernetes does, but not served: this
/// apiserver finalizes namespaces itself, so a client has nothing to finish.
struct Finalize;

impl Subresource for Finalize {
    fn name(&self) -> &'static str {
        "finalize"
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["update"]
    }
}

/// What every namespace holds: the `default` service account (the service account
/// controller's) and the `kube-root-ca.crt` ConfigMap (the root CA publisher's).
pub async fn ensure_namespace_defaults(store: &dyn crate::store::Store, ns: &str, ca_pem: &str) {
    let sa = &resources::SERVICEACCOUNTS;
    let obj = json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "default", "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now()}});
    let _ = store
        .create(&sa.key(Some(ns), "default"), encode(&obj))
        .await;
    let cm = &resources::CONFIGMAPS;
    let obj = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now(), "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": {"ca.crt": ca_pem}});
    let _ = store
        .create(&cm.key(Some(ns), ROOT_CA_CONFIGMAP), encode(&obj))
        .await;
}

/// The namespace controller's job: deletes what the namespace holds, then the namespace.
async fn finalize_namespace(store: Arc<dyn crate::store::Store>, ns: String) {
    for r in RESOURCES.iter().filter(|r| r.namespaced && r.stored) {
        let prefix = format!("{}{ns}/", r.prefix());
        if let Ok((kvs, _)) = store.list(&prefix, None).await {
            for kv in kvs {
                let _ = store.delete(&kv.key, None).await;
            }
        }
    }
    let _ = store
        .delete(&resources::NAMESPACES.key(None, &ns), None)
        .await;
}
