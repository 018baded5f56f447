//! The pod subresources: binding (the scheduler's write), eviction (a delete a
//! PodDisruptionBudget may refuse), log, and the streams exec, attach and portforward, which are
//! proxied to the pod's node.

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::super::strategy::{gvk_of, Gvk, Subresource};
use super::super::{decode_kv, json_response, nodes, ApiResult, Request, Store};
use crate::api::objects;
use crate::api::proxy;
use crate::api::status::{self, ApiError};

/// `pods/binding`: the scheduler's (or anyone's) assignment of a pod to a node.
pub(super) struct Binding;

#[async_trait]
impl Subresource for Binding {
    fn name(&self) -> &'static str {
        "binding"
    }
    fn kind(&self) -> Option<Gvk> {
        Some(gvk_of::<k8s_openapi::api::core::v1::Binding>())
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
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
        (method == Method::POST).then_some(())?;
        Some(bind(req, store, ns.unwrap_or("default"), name, body).await)
    }
}

async fn bind(req: &Request<'_>, store: &Store, ns: &str, name: &str, body: &Bytes) -> ApiResult {
    let r = store.r;
    let binding: Value = req.parse_body(body)?;
    let node = binding["target"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            r,
            name,
            vec![(
                "FieldValueRequired",
                "target.name".into(),
                "target.name: Required value".into(),
            )],
        ));
    }
    let conditional = !binding["metadata"]["resourceVersion"].is_null();
    loop {
        let current = store.current(req, Some(ns), name).await?;
        store.check_version(&binding, &current, name)?;
        let mut pod = decode_kv(&current);
        if pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"", pod["spec"]["nodeName"].as_str().unwrap_or_default())));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host")));
        }
        pod["spec"]["nodeName"] = json!(node);
        let conds = pod["status"]
            .as_object_mut()
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(c)) = conds {
            c.retain(|c| c["type"] != "PodScheduled");
            c.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now()}));
        }
        // A binding without a resourceVersion precondition is retried on a concurrent write,
        // as the kube-apiserver's GuaranteedUpdate does.
        match store.put(req, name, &current, &mut pod).await {
            Err(e) if e.reason == "Conflict" && !conditional => continue,
            other => other?,
        }
        break;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &status::success(json!({})),
    ))
}

/// `pods/eviction`: a delete that the pod's PodDisruptionBudget may refuse (`policy.rs`).
pub(super) struct Eviction;

#[async_trait]
impl Subresource for Eviction {
    fn name(&self) -> &'static str {
        "eviction"
    }
    fn kind(&self) -> Option<Gvk> {
        Some(gvk_of::<k8s_openapi::api::policy::v1::Eviction>())
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
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
        (method == Method::POST).then_some(())?;
        Some(super::super::policy::evict(req, store, ns.unwrap_or("default"), name, body).await)
    }
}

/// The container a pods/log|exec|attach request means: `container`, or the only one.
fn pod_container(req: &Request<'_>, pod: &Value, name: &str) -> Result<String, ApiError> {
    let names: Vec<&str> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let apps: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match req.q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c.as_str()) => Ok(c.clone()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if apps.len() == 1 => Ok(apps[0].to_string()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            apps.join(" ")
        ))),
    }
}

/// Where the node API of the pod's node is: (host, port).
async fn pod_node(req: &Request<'_>, pod: &Value, name: &str) -> Result<(String, i64), ApiError> {
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    nodes::node_endpoint(req, node_name).await
}

/// `pods/log`: the node's `/containerLogs`, streamed through (the kube-apiserver's LogREST).
/// The container defaults to the only one; the query goes along.
pub(super) struct Log;

#[async_trait]
impl Subresource for Log {
    fn name(&self) -> &'static str {
        "log"
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["get"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        ns: Option<&str>,
        name: &str,
        _: &Bytes,
    ) -> Option<ApiResult> {
        (method == Method::GET).then_some(())?;
        Some(pod_log(req, store, ns.unwrap_or("default"), name).await)
    }
}

async fn pod_log(req: &Request<'_>, store: &Store, ns: &str, name: &str) -> ApiResult {
    let pod = decode_kv(&store.current(req, Some(ns), name).await?);
    let container = pod_container(req, &pod, name)?;
    let (host, port) = pod_node(req, &pod, name).await?;
    let mut url = format!("https://{host}:{port}/containerLogs/{ns}/{name}/{container}");
    let passed: Vec<(String, String)> = [
        "follow",
        "previous",
        "timestamps",
        "tailLines",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ]
    .iter()
    .filter_map(|k| req.q.get(*k).map(|v| (k.to_string(), v.clone())))
    .collect();
    if !passed.is_empty() {
        url.push('?');
        url.push_str(&serde_urlencoded::to_string(&passed).unwrap_or_default());
    }
    let resp = nodes::kubelet_get(req, &url).await?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(ApiError::new(
            code.as_u16(),
            if code.as_u16() == 404 {
                "NotFound"
            } else {
                "BadRequest"
            },
            body.trim().to_string(),
        ));
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// `pods/exec`, `pods/attach`, `pods/portforward`: the upgrade request goes to the node API
/// as it came; a 101 answer joins the two connections (the kube-apiserver's
/// UpgradeAwareHandler), any other answer goes back to the client (which may then fall back
/// from WebSocket to SPDY).
pub(super) struct Stream(pub(super) &'static str);

#[async_trait]
impl Subresource for Stream {
    fn name(&self) -> &'static str {
        self.0
    }
    fn kind(&self) -> Option<Gvk> {
        Some(match self.0 {
            "exec" => ("", "v1", "PodExecOptions"),
            "attach" => ("", "v1", "PodAttachOptions"),
            _ => ("", "v1", "PodPortForwardOptions"),
        })
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["create", "get"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        ns: Option<&str>,
        name: &str,
        _: &Bytes,
    ) -> Option<ApiResult> {
        matches!(*method, Method::GET | Method::POST).then_some(())?;
        Some(pod_stream(req, store, ns.unwrap_or("default"), name, self.0).await)
    }
}

async fn pod_stream(
    req: &Request<'_>,
    store: &Store,
    ns: &str,
    name: &str,
    sub: &str,
) -> ApiResult {
    let pod = decode_kv(&store.current(req, Some(ns), name).await?);
    let path = if sub == "portforward" {
        format!("/portForward/{ns}/{name}")
    } else {
        let c = pod_container(req, &pod, name)?;
        format!("/{sub}/{ns}/{name}/{c}")
    };
    let (host, port) = pod_node(req, &pod, name).await?;
    let Some(upgrade) = req.upgrade.lock().expect("upgrade").take() else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let target = if req.raw_query.is_empty() {
        path
    } else {
        format!("{path}?{}", req.raw_query)
    };
    proxy::upgrade(
        &req.server.kubelet_tls,
        &host,
        port as u16,
        &target,
        req.headers,
        upgrade,
    )
    .await
}
