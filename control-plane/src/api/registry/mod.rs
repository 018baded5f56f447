//! The generic store (Kubernetes' `registry/generic/registry/store.go`): get, list, watch,
//! create, update, patch, delete and deletecollection, with preconditions, dry-run,
//! managedFields, finalizers and graceful deletion, written once for every kind. What a kind
//! adds is its strategy (`strategy.rs`, one file per kind beside it); a subresource is a small
//! object over the same store, like the status store (`Store::status`).

mod create;
mod delete;
mod list;
mod update;
mod watch;

pub mod apps;
pub mod batch;
pub mod certificates;
pub mod componentstatuses;
pub mod namespaces;
pub mod networking;
pub mod nodes;
pub mod pods;
pub mod policy;
pub mod rbac;
pub mod reviews;
pub mod secrets;
pub mod serviceaccounts;
pub mod services;
pub mod services_checks;
pub mod services_dualstack;
pub mod sets;
pub mod strategy;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::resources::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::{auth, protobuf, table, ApiServer};
use crate::store::{KeyValue, StoreError};

pub use delete::orphan_dependents;
pub use update::{MainUpdate, StatusUpdate, UpdateStrategy};

pub type ApiResult = Result<Response, ApiError>;

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub fn store_error(r: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(r, name),
        StoreError::NotFound(_) => ApiError::not_found(r, name),
        StoreError::Conflict { .. } => ApiError::conflict(r, name),
        StoreError::Compacted {
            requested, current, ..
        } => ApiError::gone(format!("too old resource version: {requested} ({current})")),
        StoreError::Backend(m) => ApiError::internal(m),
    }
}

/// The stored object with its `resourceVersion`.
pub fn decode_kv(kv: &KeyValue) -> Value {
    let mut v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if v.is_object() {
        v["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
    }
    v
}

pub fn encode(obj: &Value) -> Vec<u8> {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).expect("values serialize")
}

/// Go's strconv.ParseBool, which Kubernetes uses for boolean query parameters.
pub fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// One API request as the store and strategies see it: who sent it and how.
pub struct Request<'a> {
    pub server: &'a ApiServer,
    pub user: &'a auth::User,
    pub q: &'a HashMap<String, String>,
    pub headers: &'a HeaderMap,
    /// The client asked for `as=Table`.
    pub table: bool,
    /// The query as sent (repeated keys such as exec's `command` kept).
    pub raw_query: &'a str,
    pub path: &'a str,
    /// The connection's upgrade, for streams proxied to a node.
    pub upgrade: Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Request<'_> {
    pub fn store(&self) -> &dyn crate::store::Store {
        &*self.server.store
    }

    pub fn param(&self, k: &str) -> Option<&str> {
        self.q.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The request's media type, without parameters ("" when absent).
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
    }

    /// A server-side apply request (its managedFields entry is made by `patch::apply`).
    pub fn is_apply(&self) -> bool {
        self.content_type().contains("apply-patch")
    }

    pub fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    pub fn field_manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_string();
        }
        // Kubernetes' default: the user agent's program name.
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    }

    pub fn field_validation(&self) -> &str {
        self.param("fieldValidation").unwrap_or("Warn")
    }

    /// One object, as a Table when asked, with the decoder's warnings as `Warning` headers.
    pub fn respond(
        &self,
        r: &Resource,
        code: StatusCode,
        obj: &Value,
        warnings: &[String],
    ) -> Response {
        let body = if self.table {
            table::table(
                r,
                std::slice::from_ref(obj),
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
                self.param("includeObject").unwrap_or("Metadata"),
                true,
            )
        } else {
            obj.clone()
        };
        let mut resp = json_response(code, &body);
        for w in warnings {
            if let Ok(v) = format!("299 - \"{}\"", w.replace('"', "'")).parse() {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
        resp
    }

    pub fn parse_body(&self, body: &Bytes) -> Result<Value, ApiError> {
        let ct = self.content_type();
        if ct.starts_with(protobuf::MEDIA_TYPE) {
            protobuf::decode(body)
        } else if ct.contains("yaml") {
            serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (couldn't decode: {e})"
                ))
            })
        }
    }

    pub fn selectors(&self, r: &Resource) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(self.param("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fs = FieldSelector::parse(
            self.param("fieldSelector").unwrap_or(""),
            r.strategy.selectable_fields(),
        )
        .map_err(ApiError::bad_request)?;
        Ok((ls, fs))
    }
}

/// One resource's objects in the store, written through `update` (the whole object, or only
/// its status for the status store).
#[derive(Clone, Copy)]
pub struct Store {
    pub r: &'static Resource,
    pub update: &'static dyn UpdateStrategy,
}

impl Store {
    pub fn new(r: &'static Resource) -> Store {
        Store {
            r,
            update: &MainUpdate,
        }
    }

    /// The same objects, through the `status` subresource.
    pub fn status(self) -> Store {
        Store {
            update: &StatusUpdate,
            ..self
        }
    }

    /// The storage prefix of a list or watch.
    fn prefix(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if self.r.namespaced => format!("{}{ns}/", self.r.prefix()),
            _ => self.r.prefix(),
        }
    }

    /// The stored object `name`, or Kubernetes' NotFound.
    pub async fn current(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: &str,
    ) -> Result<KeyValue, ApiError> {
        req.store()
            .get(&self.r.key(ns, name))
            .await
            .map_err(|e| store_error(self.r, name, e))?
            .ok_or_else(|| ApiError::not_found(self.r, name))
    }

    pub async fn get(&self, req: &Request<'_>, ns: Option<&str>, name: &str) -> ApiResult {
        let kv = self.current(req, ns, name).await?;
        Ok(req.respond(self.r, StatusCode::OK, &decode_kv(&kv), &[]))
    }

    /// Writes `obj` over `current` as it is, for subresources that change one field.
    pub async fn put(
        &self,
        req: &Request<'_>,
        name: &str,
        current: &KeyValue,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let kv = req
            .store()
            .update(&current.key, encode(obj), Some(current.mod_rev))
            .await
            .map_err(|e| store_error(self.r, name, e))?;
        obj["metadata"]["resourceVersion"] = json!(kv.mod_rev.to_string());
        Ok(())
    }

    /// Kubernetes' resourceVersion precondition of a write: a body's `resourceVersion`, when
    /// set, must be the stored one.
    pub fn check_version(
        &self,
        body: &Value,
        current: &KeyValue,
        name: &str,
    ) -> Result<(), ApiError> {
        match body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(rv) if rv != current.mod_rev.to_string() => Err(ApiError::conflict(self.r, name)),
            _ => Ok(()),
        }
    }
}
