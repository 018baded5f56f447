//! Deployments, ReplicaSets and DaemonSets: `metadata.generation` counts spec changes (the
//! controllers' `observedGeneration` follows it), and the `scale` subresource.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::strategy::{gvk_of, Gvk, Strategy, Subresource};
use super::{decode_kv, json_response, ApiResult, Request, Store};
use crate::api::patch;
use crate::api::status::ApiError;
use crate::api::table;

pub struct Workload {
    printer: &'static table::Printer,
    fields: &'static [&'static str],
    subresources: &'static [&'static dyn Subresource],
}

pub static DEPLOYMENT: Workload = Workload {
    printer: &table::DEPLOYMENTS,
    fields: &[],
    subresources: &[&Scale],
};

pub static REPLICASET: Workload = Workload {
    printer: &table::DEFAULT,
    fields: &["status.replicas"],
    subresources: &[&Scale],
};

#[async_trait]
impl Strategy for Workload {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        }})
    }

    fn printer(&self) -> &'static table::Printer {
        self.printer
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        self.fields
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        self.subresources
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
    }

    fn prepare_for_update(&self, _: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        Ok(())
    }
}

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
    let selector: Vec<String> = o["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                     "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
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
    let current = store.current(req, ns, name).await?;
    let mut obj = decode_kv(&current);
    let scale = to_scale(&obj);
    let wanted = match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, &scale)),
        Method::PUT => req.parse_body(body)?,
        _ => {
            let ct = req.content_type();
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut v = scale.clone();
            if ct.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch =
                    serde_json::from_value(p).map_err(|e| ApiError::bad_request(e.to_string()))?;
                json_patch::patch(&mut v, &ops)
                    .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
            } else if ct.starts_with("application/strategic-merge-patch+json") {
                patch::strategic_merge(&mut v, &p);
            } else {
                json_patch::merge(&mut v, &p);
            }
            v
        }
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
            store.put(req, name, &current, &mut obj).await?;
        }
    }
    Ok(json_response(StatusCode::OK, &to_scale(&obj)))
}
