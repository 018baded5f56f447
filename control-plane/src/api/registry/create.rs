//! Create: decoding, the generic metadata (name or generateName, uid, timestamps), the kind's
//! preparation, defaults and validation, admission (NamespaceLifecycle, the kind's own,
//! ResourceQuota, NodeRestriction), managedFields, dry-run, then the store.

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{decode_kv, encode, store_error, ApiResult, Request, Store};
use crate::api::resources::{self, Resource};
use crate::api::status::ApiError;
use crate::api::{auth, objects, patch, quota};

impl Store {
    pub async fn create(&self, req: &Request<'_>, ns: Option<&str>, body: &Bytes) -> ApiResult {
        let r = self.r;
        let input = req.parse_body(body)?;
        let (mut obj, warnings) = objects::decode(r, &input, req.field_validation())?;
        let ns = if r.namespaced {
            let url_ns = ns.unwrap_or("default");
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != url_ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => {}
            }
            obj["metadata"]["namespace"] = json!(url_ns);
            Some(url_ns.to_string())
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            None
        };
        if obj["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            if let Some(base) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                obj["metadata"]["name"] = json!(objects::generated_name(base));
            }
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let now = objects::now();
        {
            let m = obj["metadata"].as_object_mut().unwrap();
            m.insert("uid".into(), json!(objects::new_uid()));
            m.insert("creationTimestamp".into(), json!(now));
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                m.remove(k);
            }
            if !req.is_apply() {
                m.remove("managedFields");
            }
        }
        r.strategy.prepare_for_create(req, &mut obj);
        objects::apply_defaults(r, &mut obj);
        let causes = objects::validate(r, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, &name, causes));
        }
        if let Some(ns) = &ns {
            namespace_lifecycle(req, r, ns).await?;
        }
        r.strategy.admit(req, ns.as_deref(), &mut obj).await?;
        let _quota_turn = match (&ns, req.dry_run()) {
            (Some(ns), false) => {
                quota::resource_quota(req.store(), &req.server.quota_turn, r, ns, &obj).await?
            }
            _ => None,
        };
        r.strategy
            .before_create(req, ns.as_deref(), &mut obj)
            .await?;
        if let Some(node) = auth::node_name(req.user) {
            r.strategy.admit_node(node, &obj)?;
        }
        if !req.is_apply() {
            patch::record_update(
                &mut obj,
                None,
                &req.field_manager(),
                &r.api_version(),
                &now,
                None,
            );
        }
        if req.dry_run() {
            return Ok(req.respond(r, StatusCode::CREATED, &obj, &warnings));
        }
        let created = req
            .store()
            .create(&r.key(ns.as_deref(), &name), encode(&obj))
            .await;
        if created.is_err() {
            r.strategy.create_failed(req, &obj).await;
        }
        let kv = created.map_err(|e| store_error(r, &name, e))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        r.strategy.after_create(req, &obj).await;
        Ok(req.respond(r, StatusCode::CREATED, &obj, &warnings))
    }

    /// A review: the request answered (by the kind's strategy), never stored.
    pub async fn review(&self, req: &Request<'_>, body: &Bytes) -> ApiResult {
        let input = req.parse_body(body)?;
        let (obj, _) = objects::decode(self.r, &input, "Ignore")?;
        let answered = self.r.strategy.review(req, obj).await?;
        Ok(super::json_response(StatusCode::CREATED, &answered))
    }
}

/// NamespaceLifecycle: the namespace exists and is not being deleted.
async fn namespace_lifecycle(req: &Request<'_>, r: &Resource, ns: &str) -> Result<(), ApiError> {
    let nsr = &resources::NAMESPACES;
    match req.store().get(&nsr.key(None, ns)).await {
        Ok(Some(kv)) => {
            let obj: Value = decode_kv(&kv);
            if obj["status"]["phase"] == "Terminating" {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    r.plural, ""
                )));
            }
            Ok(())
        }
        Ok(None) => Err(ApiError::not_found(nsr, ns)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
