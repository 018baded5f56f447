//! What a kind adds to the generic store: its `Strategy` (hooks with no-op defaults, as
//! Kubernetes' `RESTCreateStrategy`/`RESTUpdateStrategy`/`RESTDeleteStrategy` and the admission
//! plugins that concern one kind) and its `Subresource`s (small objects over the same store).
//! Kinds with nothing of their own use `PLAIN`, or a `Plain` naming their columns and fields.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::Method;
use serde_json::{json, Value};

use super::{ApiResult, Request, Store};
use crate::api::objects;
use crate::api::status::{ApiError, Cause};
use crate::api::table::{self, Printer};
use crate::store::KeyValue;

/// (group, version, kind).
pub type Gvk = (&'static str, &'static str, &'static str);

pub const fn gvk_of<T: k8s_openapi::Resource>() -> Gvk {
    (T::GROUP, T::VERSION, T::KIND)
}

/// A subresource other than `status` (which every stored kind has through the generic store).
#[async_trait]
pub trait Subresource: Sync {
    fn name(&self) -> &'static str;
    /// What it takes and answers, when that is not its parent's kind.
    fn kind(&self) -> Option<Gvk> {
        None
    }
    /// Its verbs, as discovery lists them.
    fn verbs(&self) -> &'static [&'static str];
    /// Whether the URL may go on past it (`nodes/<name>/proxy/<path>`).
    fn takes_path(&self) -> bool {
        false
    }
    /// The answer, or None for a method it does not serve (405 with its name).
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        ns: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> Option<ApiResult> {
        let _ = (req, method, store, ns, name, body);
        None
    }
}

#[async_trait]
pub trait Strategy: Sync {
    /// A minimal object that passes validation and admission in a fresh cluster, for the
    /// registry's tests (which create one of every kind).
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    /// Fields a field selector may use beyond `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// kubectl's columns for `as=Table`.
    fn printer(&self) -> &'static Printer {
        &table::DEFAULT
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[]
    }

    /// Why `name` (non-empty) is not a valid name for this kind, if it is not.
    fn validate_name(&self, name: &str) -> Option<Cause> {
        objects::dns_subdomain_name(name)
    }

    /// Sets what the system owns on a new object (after the generic metadata).
    fn prepare_for_create(&self, req: &Request<'_>, obj: &mut Value) {
        let _ = (req, obj);
    }

    /// Carries what the system owns from `old` to `new` on a main-resource update; an error
    /// refuses the update (an immutable field changed).
    fn prepare_for_update(&self, name: &str, new: &mut Value, old: &Value) -> Result<(), ApiError> {
        let _ = (name, new, old);
        Ok(())
    }

    /// Kubernetes' defaults, on create and on every main-resource update.
    fn defaults(&self, obj: &mut Value) {
        let _ = obj;
    }

    /// The kind's own validation (the name and labels are checked for every kind).
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let _ = obj;
        vec![]
    }

    /// Mutating admission that reads the store (runs before quota).
    async fn admit(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let _ = (req, ns, obj);
        Ok(())
    }

    /// Takes what the new object needs outside itself (a cluster IP) once admission passed;
    /// `create_failed` gives it back if the object is not stored.
    async fn before_create(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let _ = (req, ns, obj);
        Ok(())
    }

    async fn create_failed(&self, req: &Request<'_>, obj: &Value) {
        let _ = (req, obj);
    }

    /// Takes what an updated object newly needs outside itself (a service's node ports), just
    /// before it is written; `update_done` then gives back what the loser of old and new held.
    async fn before_update(
        &self,
        req: &Request<'_>,
        new: &mut Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        let _ = (req, new, old);
        Ok(())
    }

    async fn update_done(&self, req: &Request<'_>, new: &Value, old: &Value, stored: bool) {
        let _ = (req, new, old, stored);
    }

    /// NodeRestriction: what a node (`system:node:<node>`) may create of this kind.
    fn admit_node(&self, node: &str, obj: &Value) -> Result<(), ApiError> {
        let _ = (node, obj);
        Ok(())
    }

    async fn after_create(&self, req: &Request<'_>, obj: &Value) {
        let _ = (req, obj);
    }

    /// Seconds a deleted object stays, marked, before it goes (`requested`: the request's
    /// `gracePeriodSeconds`). Kinds without graceful deletion go at once.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let _ = (obj, requested);
        0
    }

    /// A kind that finishes deletions itself (namespaces) answers the delete here, after the
    /// preconditions passed.
    async fn delete(
        &self,
        req: &Request<'_>,
        store: &Store,
        current: &KeyValue,
        obj: Value,
    ) -> Option<ApiResult> {
        let _ = (req, store, current, obj);
        None
    }

    /// Whether finalizers of the kind's own (a namespace's `spec.finalizers`) still hold a
    /// deleted object that has no `metadata.finalizers` left.
    fn held(&self, obj: &Value) -> bool {
        let _ = obj;
        false
    }

    /// What is released once the object is gone (a cluster IP).
    async fn after_delete(&self, req: &Request<'_>, gone: &Value) {
        let _ = (req, gone);
    }

    /// The objects of a computed kind.
    async fn computed(&self, req: &Request<'_>) -> Vec<Value> {
        let _ = req;
        vec![]
    }

    /// A review's answer: the decoded request with its status filled in.
    async fn review(&self, req: &Request<'_>, obj: Value) -> Result<Value, ApiError> {
        let _ = req;
        Ok(obj)
    }
}

/// The strategy of kinds whose only own rules are their columns and selectable fields.
pub struct Plain {
    pub printer: &'static Printer,
    pub fields: &'static [&'static str],
}

impl Strategy for Plain {
    fn printer(&self) -> &'static Printer {
        self.printer
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        self.fields
    }
}

pub static PLAIN: Plain = Plain {
    printer: &table::DEFAULT,
    fields: &[],
};

pub static CONFIGMAP: Plain = Plain {
    printer: &table::CONFIGMAPS,
    fields: &[],
};

pub static ENDPOINTSLICE: Plain = Plain {
    printer: &table::ENDPOINTSLICES,
    fields: &[],
};

/// Both Event kinds (core and events.k8s.io) select on the core Event's fields.
pub static EVENT: Plain = Plain {
    printer: &table::DEFAULT,
    fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
};
