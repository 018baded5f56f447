//! Update and patch (JSON, merge, strategic merge, server-side apply; retried on a concurrent
//! write; an apply to nothing creates). What a write may change is the store's
//! `UpdateStrategy`: the main resource keeps the status and system metadata and runs the kind's
//! rules, the status store keeps everything but the status.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{decode_kv, parse_bool, store_error, ApiResult, Request, Store};
use crate::api::resources::Resource;
use crate::api::status::ApiError;
use crate::api::{objects, patch};
use crate::store::KeyValue;

pub trait UpdateStrategy: Sync {
    /// The subresource written through, as managedFields record it.
    fn subresource(&self) -> Option<&'static str>;
    /// What is stored when `new` is written over `old`.
    fn prepare(
        &self,
        r: &'static Resource,
        name: &str,
        new: Value,
        old: &Value,
    ) -> Result<Value, ApiError>;
}

/// Writes to the resource itself.
pub struct MainUpdate;

impl UpdateStrategy for MainUpdate {
    fn subresource(&self) -> Option<&'static str> {
        None
    }

    fn prepare(
        &self,
        r: &'static Resource,
        name: &str,
        mut obj: Value,
        old: &Value,
    ) -> Result<Value, ApiError> {
        if r.status {
            match old.get("status") {
                Some(st) => obj["status"] = st.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => obj["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if obj["metadata"]["managedFields"].is_null() {
            obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        }
        r.strategy.prepare_for_update(name, &mut obj, old)?;
        objects::apply_defaults(r, &mut obj);
        let causes = objects::validate(r, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, name, causes));
        }
        Ok(obj)
    }
}

/// Writes to the `status` subresource: only the status changes.
pub struct StatusUpdate;

impl UpdateStrategy for StatusUpdate {
    fn subresource(&self) -> Option<&'static str> {
        Some("status")
    }

    fn prepare(
        &self,
        r: &'static Resource,
        _: &str,
        new: Value,
        old: &Value,
    ) -> Result<Value, ApiError> {
        let mut obj = old.clone();
        obj["status"] = new["status"].clone();
        // Defaults apply to every write, as upstream's decoding does (a node's allocatable).
        objects::apply_defaults(r, &mut obj);
        Ok(obj)
    }
}

impl Store {
    pub async fn update(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> ApiResult {
        let input = req.parse_body(body)?;
        let (obj, warnings) = objects::decode(self.r, &input, req.field_validation())?;
        let current = self.current(req, ns, name).await?;
        self.write_update(req, name, &current, obj, &warnings).await
    }

    /// Writes `obj` over the current object (at `current.mod_rev`), handling what updates
    /// share: the name and resourceVersion preconditions, the update strategy, managedFields,
    /// and removal once the last finalizer is gone from an object being deleted.
    async fn write_update(
        &self,
        req: &Request<'_>,
        name: &str,
        current: &KeyValue,
        obj: Value,
        warnings: &[String],
    ) -> ApiResult {
        let r = self.r;
        let old = decode_kv(current);
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        self.check_version(&obj, current, name)?;
        let manager = req.field_manager();
        let now = objects::now();
        let mut obj = self.update.prepare(r, name, obj, &old)?;
        obj["apiVersion"] = json!(r.api_version());
        obj["kind"] = json!(r.kind);
        if obj["metadata"]["managedFields"].is_null() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        if !req.is_apply() {
            let sub = self.update.subresource();
            patch::record_update(&mut obj, Some(&old), &manager, &r.api_version(), &now, sub);
        }
        let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
        let finalizers_left = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
            || r.strategy.held(&obj);
        // Only graceful deletion (pods) leaves a grace period on a deleted object; such an
        // object waits for its final delete.
        let graceful = obj["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            > 0;
        if req.dry_run() {
            obj["metadata"]["resourceVersion"] = json!(current.mod_rev.to_string());
            return Ok(req.respond(r, StatusCode::OK, &obj, warnings));
        }
        if deleting && !finalizers_left && !graceful {
            let kv = req
                .store()
                .delete(&current.key, Some(current.mod_rev))
                .await
                .map_err(|e| store_error(r, name, e))?;
            obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
            return Ok(req.respond(r, StatusCode::OK, &obj, warnings));
        }
        let main = self.update.subresource().is_none();
        if main {
            r.strategy.before_update(req, &mut obj, &old).await?;
        }
        let stored = self.put(req, name, current, &mut obj).await;
        if main {
            r.strategy
                .update_done(req, &obj, &old, stored.is_ok())
                .await;
        }
        stored?;
        Ok(req.respond(r, StatusCode::OK, &obj, warnings))
    }

    pub async fn patch(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> ApiResult {
        let r = self.r;
        let ct = req.content_type().to_string();
        let is_apply = ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor";
        if is_apply && req.param("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PATCH requests of type apply must have fieldManager",
            ));
        }
        let patch_doc: Value = if is_apply {
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
        };
        // Patches are retried on a concurrent write for as long as they conflict, as the
        // kube-apiserver's GuaranteedUpdate does: each try reads the newest object.
        loop {
            let current = req
                .store()
                .get(&r.key(ns, name))
                .await
                .map_err(|e| store_error(r, name, e))?;
            let Some(current) = current else {
                if is_apply {
                    return self.apply_create(req, ns, &patch_doc).await;
                }
                return Err(ApiError::not_found(r, name));
            };
            let old = decode_kv(&current);
            let patched = apply_patch(req, r, name, &ct, is_apply, &old, &patch_doc)?;
            let (obj, warnings) = objects::decode(r, &patched, req.field_validation())?;
            match self.write_update(req, name, &current, obj, &warnings).await {
                Err(e)
                    if e.reason == "Conflict"
                        && patch_doc["metadata"]["resourceVersion"].is_null() =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    /// Server-side apply creates what does not exist.
    async fn apply_create(&self, req: &Request<'_>, ns: Option<&str>, doc: &Value) -> ApiResult {
        let r = self.r;
        let applied = patch::apply(
            None,
            doc,
            &req.field_manager(),
            &r.api_version(),
            &objects::now(),
            true,
        )
        .unwrap_or_default();
        let mut bytes = serde_json::to_vec(&applied).unwrap();
        if let Some(m) = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|mut v| {
                v["metadata"]["namespace"] = json!(ns);
                serde_json::to_vec(&v).ok()
            })
        {
            bytes = m;
        }
        self.create(req, ns, &Bytes::from(bytes)).await
    }
}

/// `old` with the patch applied as its media type says.
fn apply_patch(
    req: &Request<'_>,
    r: &Resource,
    name: &str,
    ct: &str,
    is_apply: bool,
    old: &Value,
    patch_doc: &Value,
) -> Result<Value, ApiError> {
    Ok(match ct {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch_doc.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut v = old.clone();
            json_patch::patch(&mut v, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            v
        }
        "application/merge-patch+json" => {
            let mut v = old.clone();
            json_patch::merge(&mut v, patch_doc);
            v
        }
        "application/strategic-merge-patch+json" => {
            let mut v = old.clone();
            patch::strategic_merge(&mut v, patch_doc);
            v
        }
        _ if is_apply => patch::apply(
            Some(old),
            patch_doc,
            &req.field_manager(),
            &r.api_version(),
            &objects::now(),
            req.param("force").is_some_and(parse_bool),
        )
        .map_err(|c| {
            let (msg, causes) = patch::conflict_message(&c);
            let mut e = ApiError::new(409, "Conflict", msg);
            let mut d = json!({"name": name, "kind": r.plural, "causes": causes});
            if !r.group.is_empty() {
                d["group"] = json!(r.group);
            }
            e.details = Some(d);
            e
        })?,
        other => {
            return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})")));
        }
    })
}
