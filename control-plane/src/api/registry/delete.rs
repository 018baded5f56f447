//! Delete and deletecollection: preconditions (uid, resourceVersion), propagation policy
//! (Orphan, Foreground, Background), graceful deletion (the kind's grace period) and
//! finalizers, which keep the object, marked, until they are gone.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{decode_kv, encode, store_error, ApiResult, Request, Store};
use crate::api::resources::RESOURCES;
use crate::api::status::ApiError;
use crate::store::{KeyValue, StoreError};

/// `now + secs`, as metadata timestamps are written.
pub fn stamp(secs: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        .round(jiff::Unit::Second)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    pub async fn delete(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> ApiResult {
        let opts: Value = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        // A delete without a resourceVersion precondition is retried when a concurrent write
        // (a controller's status update) changed the object under it, as the kube-apiserver's
        // store does.
        loop {
            if let Some(answer) = self.delete_once(req, ns, name, &opts).await.transpose() {
                return answer;
            }
        }
    }

    /// One try of a delete; `None` when its write lost a race and the precondition allows
    /// another try.
    async fn delete_once(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
    ) -> Result<Option<Response>, ApiError> {
        let r = self.r;
        let grace_param = req
            .param("gracePeriodSeconds")
            .and_then(|g| g.parse::<i64>().ok())
            .or_else(|| opts["gracePeriodSeconds"].as_i64());
        let raced = |e: &ApiError| {
            e.reason == "Conflict" && opts["preconditions"]["resourceVersion"].is_null()
        };
        let current = self.current(req, ns, name).await?;
        let mut obj = decode_kv(&current);
        if let Some(uid) = opts["preconditions"]["uid"].as_str() {
            if obj["metadata"]["uid"] != uid {
                return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}", r.qualified(), obj["metadata"]["uid"].as_str().unwrap_or_default())));
            }
        }
        if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str() {
            if rv != current.mod_rev.to_string() {
                return Err(ApiError::conflict(r, name));
            }
        }
        if let Some(answer) = r.strategy.delete(req, self, &current, obj.clone()).await {
            return answer.map(Some);
        }
        // Cascading: Background (the default) leaves dependents to the garbage collector,
        // Foreground keeps the owner until they are gone, Orphan cuts them loose first.
        let policy = req
            .param("propagationPolicy")
            .or(opts["propagationPolicy"].as_str())
            .or((opts["orphanDependents"] == true).then_some("Orphan"))
            .unwrap_or("Background")
            .to_string();
        match policy.as_str() {
            "Orphan" if !req.dry_run() => {
                let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                orphan_dependents(req.store(), &uid).await;
            }
            "Foreground" => {
                let f = obj["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(list) = f.as_array_mut() {
                    if !list.iter().any(|x| x == "foregroundDeletion") {
                        list.push(json!("foregroundDeletion"));
                    }
                }
            }
            "Orphan" | "Background" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )))
            }
        }
        let finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let grace = r.strategy.grace_period(&obj, grace_param);
        if grace > 0 || finalizers {
            // Graceful deletion: the object stays, marked, until the kubelet (or the last
            // finalizer's owner) finishes it.
            let existing = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if existing.is_some_and(|e| e <= grace)
                && !obj["metadata"]["deletionTimestamp"].is_null()
            {
                return Ok(Some(req.respond(r, StatusCode::OK, &obj, &[])));
            }
            if grace > 0 || obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(stamp(grace));
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            if !req.dry_run() {
                match self.put(req, name, &current, &mut obj).await {
                    Err(e) if raced(&e) => return Ok(None),
                    other => other?,
                }
            }
            return Ok(Some(req.respond(r, StatusCode::OK, &obj, &[])));
        }
        if req.dry_run() {
            return Ok(Some(req.respond(r, StatusCode::OK, &obj, &[])));
        }
        let kv = match req
            .store()
            .delete(&current.key, Some(current.mod_rev))
            .await
        {
            Err(e) => match store_error(r, name, e) {
                e if raced(&e) => return Ok(None),
                e => return Err(e),
            },
            Ok(kv) => kv,
        };
        let mut gone = decode_kv(&kv);
        gone["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        r.strategy.after_delete(req, &gone).await;
        Ok(Some(req.respond(r, StatusCode::OK, &gone, &[])))
    }

    pub async fn delete_collection(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        body: &Bytes,
    ) -> ApiResult {
        let r = self.r;
        let (ls, fs) = req.selectors(r)?;
        let (kvs, _) = req
            .store()
            .list(&self.prefix(ns), None)
            .await
            .map_err(|e| store_error(r, "", e))?;
        let mut items = Vec::new();
        for kv in kvs {
            let obj = decode_kv(&kv);
            if !ls.matches(&obj) || !fs.matches(&obj) {
                continue;
            }
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ons = obj["metadata"]["namespace"].as_str().map(str::to_owned);
            match self.delete(req, ons.as_deref(), &name, body).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => items.push(obj),
                Err(e) => return Err(e),
            }
        }
        Ok(req.list_response(r, items, json!({})))
    }
}

/// Removes the owner reference to `uid` from every object that has one.
pub async fn orphan_dependents(store: &dyn crate::store::Store, uid: &str) {
    for r in RESOURCES.iter().filter(|r| r.stored) {
        let Ok((kvs, _)) = store.list(&r.prefix(), None).await else {
            continue;
        };
        for kv in kvs {
            orphan_one(store, kv, uid).await;
        }
    }
}

/// Cuts one object loose from `uid`, reading it again when a concurrent write changed it: a
/// dependent must not keep an owner reference the garbage collector would delete it for.
async fn orphan_one(store: &dyn crate::store::Store, mut kv: KeyValue, uid: &str) {
    loop {
        let Ok(mut o) = serde_json::from_slice::<Value>(&kv.value) else {
            return;
        };
        let Some(refs) = o["metadata"]["ownerReferences"].as_array() else {
            return;
        };
        if !refs.iter().any(|x| x["uid"] == uid) {
            return;
        }
        let kept: Vec<Value> = refs.iter().filter(|x| x["uid"] != uid).cloned().collect();
        if kept.is_empty() {
            o["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("ownerReferences");
        } else {
            o["metadata"]["ownerReferences"] = json!(kept);
        }
        match store.update(&kv.key, encode(&o), Some(kv.mod_rev)).await {
            Err(StoreError::Conflict { .. }) => match store.get(&kv.key).await {
                Ok(Some(newer)) => kv = newer,
                _ => return,
            },
            _ => return,
        }
    }
}
