//! Deployments, ReplicaSets and ReplicationControllers (their strategies in `replicated.rs`,
//! with Kubernetes' defaults and validation) and the `scale` subresource every replicated
//! kind (these, StatefulSets) serves: `kubectl scale` reads and patches it.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::strategy::{gvk_of, Gvk, Subresource};
use super::{decode_kv, json_response, ApiResult, Request, Store};
use crate::api::patch;
use crate::api::status::ApiError;

mod replicated;
pub use replicated::{
    label_selector_string, map_selector, DEPLOYMENT, REPLICASET, REPLICATIONCONTROLLER,
};

/// The `scale` subresource (autoscaling/v1 Scale): `kubectl scale` reads and patches it;
/// writes land in the owner's `spec.replicas`.
pub struct Scale;

#[async_trait]
impl Subresource for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn kind(&self) -> Option<Gvk> {
        Some(gvk_of::<k8s_openapi::api::autoscaling::v1::Scale>())
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["get", "patch", "update"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> Option<ApiResult> {
        matches!(*method, Method::GET | Method::PUT | Method::PATCH).then_some(())?;
        Some(scale(req, store, ns, name, method, body).await)
    }
}

fn to_scale(o: &Value) -> Value {
    let selector = if o["kind"] == "ReplicationController" {
        map_selector(&o["spec"]["selector"])
    } else {
        label_selector_string(&o["spec"]["selector"])
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                     "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

async fn scale(
    req: &Request<'_>,
    store: &Store,
    ns: Option<&str>,
    name: &str,
    method: &Method,
    body: &Bytes,
) -> ApiResult {
    let wanted_doc: Value = match *method {
        Method::GET => Value::Null,
        Method::PUT => req.parse_body(body)?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    // A write the client did not make conditional is retried on a concurrent write (a
    // controller's status update, say), as the kube-apiserver's GuaranteedUpdate does.
    let conditional = match *method {
        Method::PATCH
            if req
                .content_type()
                .starts_with("application/json-patch+json") =>
        {
            wanted_doc.as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|op| op["path"] == "/metadata/resourceVersion")
            })
        }
        _ => !wanted_doc["metadata"]["resourceVersion"].is_null(),
    };
    loop {
        let current = store.current(req, ns, name).await?;
        let mut obj = decode_kv(&current);
        let scale = to_scale(&obj);
        let wanted = match *method {
            Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
            Method::PUT => wanted_doc.clone(),
            _ => patched_scale(req, &scale, &wanted_doc)?,
        };
        store.check_version(&wanted, &current, name)?;
        let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|n| *n >= 0) else {
            return Err(ApiError::new(422, "Invalid", format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {}: must be greater than or equal to 0", wanted["spec"]["replicas"])));
        };
        if obj["spec"]["replicas"].as_i64() != Some(replicas) {
            obj["spec"]["replicas"] = json!(replicas);
            obj["metadata"]["generation"] =
                json!(obj["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
            if !req.dry_run() {
                match store.put(req, name, &current, &mut obj).await {
                    Err(e) if e.reason == "Conflict" && !conditional => continue,
                    other => other?,
                }
            }
        }
        return Ok(json_response(StatusCode::OK, &to_scale(&obj)));
    }
}

/// The Scale with a PATCH body applied as its media type says.
fn patched_scale(req: &Request<'_>, scale: &Value, p: &Value) -> Result<Value, ApiError> {
    let ct = req.content_type();
    let mut v = scale.clone();
    if ct.starts_with("application/json-patch+json") {
        let ops: json_patch::Patch =
            serde_json::from_value(p.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        json_patch::patch(&mut v, &ops)
            .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
    } else if ct.starts_with("application/strategic-merge-patch+json") {
        patch::strategic_merge(&mut v, p);
    } else {
        json_patch::merge(&mut v, p);
    }
    Ok(v)
}
