//! Namespaces: defaults (phase, the `kubernetes` finalizer, the name label), deletion through
//! `Terminating` (the namespace controller empties it and removes the `kubernetes` finalizer
//! through `namespaces/<name>/finalize`, then deletes it again, which removes it), and what the
//! cluster's own namespaces hold from the first start: the `default` service account and the
//! `kube-root-ca.crt` ConfigMap (other namespaces get theirs from the service account and root
//! CA publisher controllers).

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::delete::stamp;
use super::pods::ROOT_CA_CONFIGMAP;
use super::strategy::{Strategy, Subresource};
use super::{decode_kv, encode, ApiResult, Request, Store};
use crate::api::objects::{self, child};
use crate::api::resources;
use crate::api::status::{ApiError, Cause};
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

    fn held(&self, obj: &Value) -> bool {
        has_finalizers(obj)
    }

    /// A namespace is not removed by the first request: it turns `Terminating` (refusing new
    /// content) until the namespace controller emptied and finalized it; a delete after that
    /// removes it.
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
        if obj["status"]["phase"] == "Terminating" {
            if !has_finalizers(&obj) {
                // Finalized: the generic store removes it (or waits for metadata.finalizers).
                return None;
            }
            return Some(Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."))));
        }
        obj["status"]["phase"] = json!("Terminating");
        obj["metadata"]["deletionTimestamp"] = json!(stamp(0));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !req.dry_run() {
            if let Err(e) = store.put(req, &name, current, &mut obj).await {
                return Some(Err(e));
            }
        }
        Some(Ok(req.respond(store.r, StatusCode::OK, &obj, &[])))
    }
}

fn has_finalizers(ns: &Value) -> bool {
    ns["spec"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// `namespaces/<name>/finalize`: writes `spec.finalizers` alone (the namespace controller
/// removes `kubernetes` from it once the namespace is empty).
struct Finalize;

#[async_trait]
impl Subresource for Finalize {
    fn name(&self) -> &'static str {
        "finalize"
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["update"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        _: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> Option<ApiResult> {
        (method == Method::PUT).then_some(())?;
        Some(finalize(req, store, name, body).await)
    }
}

async fn finalize(req: &Request<'_>, store: &Store, name: &str, body: &Bytes) -> ApiResult {
    let new: Value = req.parse_body(body)?;
    if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let current = store.current(req, None, name).await?;
    store.check_version(&new, &current, name)?;
    let finalizers = match &new["spec"]["finalizers"] {
        Value::Null => json!([]),
        f => f.clone(),
    };
    let mut causes = Vec::new();
    for (i, f) in finalizers.as_array().into_iter().flatten().enumerate() {
        let f = f.as_str().unwrap_or_default();
        // A standard finalizer, or one qualified by a domain.
        if f != "kubernetes" && !f.contains('/') {
            causes.push(objects::invalid(
                &format!("spec.finalizers[{i}]"),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(store.r, name, causes));
    }
    let mut obj = decode_kv(&current);
    child(&mut obj, "spec")["finalizers"] = finalizers;
    if !req.dry_run() {
        store.put(req, name, &current, &mut obj).await?;
    }
    Ok(req.respond(store.r, StatusCode::OK, &obj, &[]))
}

/// The root CA publisher's description of `kube-root-ca.crt`.
pub const ROOT_CA_DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// What the cluster's own namespaces hold before any controller runs: the `default` service
/// account and the `kube-root-ca.crt` ConfigMap (the controllers' work elsewhere).
pub async fn ensure_namespace_defaults(store: &dyn crate::store::Store, ns: &str, ca_pem: &str) {
    let sa = &resources::SERVICEACCOUNTS;
    let obj = json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "default", "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now()}});
    let _ = store
        .create(&sa.key(Some(ns), "default"), encode(&obj))
        .await;
    let cm = &resources::CONFIGMAPS;
    let obj = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "uid": objects::new_uid(), "creationTimestamp": objects::now(), "annotations": {"kubernetes.io/description": ROOT_CA_DESCRIPTION}}, "data": {"ca.crt": ca_pem}});
    let _ = store
        .create(&cm.key(Some(ns), ROOT_CA_CONFIGMAP), encode(&obj))
        .await;
}
