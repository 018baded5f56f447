//! Nodes and their Leases: NodeRestriction (a node creates only its own Node and Lease),
//! podCIDRs set once (from unset to a value, as upstream's `ValidateNodeUpdate`), the `proxy`
//! subresource, and where a node's API is, for the pod subresources that reach it.

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::strategy::{Gvk, Strategy, Subresource};
use super::{decode_kv, ApiResult, Request, Store};
use crate::api::resources::NODES;
use crate::api::status::ApiError;
use crate::api::table;

pub struct Nodes;
pub static NODE: Nodes = Nodes;

impl Strategy for Nodes {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn printer(&self) -> &'static table::Printer {
        &table::NODES
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Proxy]
    }

    fn defaults(&self, obj: &mut Value) {
        sync_pod_cidrs(obj);
        default_allocatable(obj);
    }

    fn prepare_for_update(&self, name: &str, new: &mut Value, old: &Value) -> Result<(), ApiError> {
        sync_pod_cidrs(new);
        let cidrs = |o: &Value| {
            o["spec"]["podCIDRs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let old_cidrs = cidrs(old);
        if !old_cidrs.is_empty() && cidrs(new) != old_cidrs {
            return Err(ApiError::invalid(
                &NODES,
                name,
                vec![(
                    "FieldValueForbidden",
                    "spec.podCIDRs".into(),
                    "Forbidden: node updates may not change podCIDR except from \"\" to valid"
                        .into(),
                )],
            ));
        }
        Ok(())
    }

    fn admit_node(&self, node: &str, obj: &Value) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if name != node {
            return Err(ApiError::forbidden(format!("nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\"")));
        }
        Ok(())
    }
}

/// `SetDefaults_NodeStatus`: a node that states no allocatable has its capacity allocatable.
fn default_allocatable(obj: &mut Value) {
    let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    let capacity = status.get("capacity").filter(|c| c.is_object()).cloned();
    let unset = status
        .get("allocatable")
        .is_none_or(|a| a.as_object().is_none_or(|m| m.is_empty()));
    if let (Some(capacity), true) = (capacity, unset) {
        status.insert("allocatable".into(), capacity);
    }
}

/// `podCIDR` and `podCIDRs[0]` are one field in the internal API: either one given fills the
/// other.
fn sync_pod_cidrs(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let single = spec["podCIDR"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let list_empty = spec["podCIDRs"].as_array().is_none_or(|l| l.is_empty());
    match (single, list_empty) {
        (Some(c), true) => spec["podCIDRs"] = serde_json::json!([c]),
        (None, false) => spec["podCIDR"] = spec["podCIDRs"][0].clone(),
        _ => {}
    }
}

/// Leases: a node heartbeats only through its own.
pub struct Leases;
pub static LEASE: Leases = Leases;

impl Strategy for Leases {
    fn admit_node(&self, node: &str, obj: &Value) -> Result<(), ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        if name != node {
            return Err(ApiError::forbidden(format!("leases.coordination.k8s.io \"{name}\" is forbidden: node \"{node}\" is not allowed to modify lease \"{name}\"")));
        }
        Ok(())
    }
}

/// Where a node's API is: its first InternalIP, ExternalIP or Hostname address and its
/// kubelet port, as the node reported them.
pub async fn node_endpoint(req: &Request<'_>, node_name: &str) -> Result<(String, i64), ApiError> {
    let node = decode_kv(&Store::new(&NODES).current(req, None, node_name).await?);
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let address = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| addresses.iter().find(|a| a["type"] == *t))
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no address")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .unwrap_or(10250);
    let host = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => address.to_string(),
    };
    Ok((host, port))
}

/// A GET to a node API with the apiserver's kubelet client certificate.
pub async fn kubelet_get(req: &Request<'_>, url: &str) -> Result<reqwest::Response, ApiError> {
    req.server
        .kubelet
        .get(url)
        .send()
        .await
        .map_err(|e| ApiError::internal(format!("Get \"{url}\": {e}")))
}

/// `nodes/proxy` GETs: the node API's answer for the rest of the path (`kubectl get --raw
/// /api/v1/nodes/N/proxy/stats/summary`, metrics-server's scrapes through the apiserver).
struct Proxy;

#[async_trait]
impl Subresource for Proxy {
    fn name(&self) -> &'static str {
        "proxy"
    }
    fn kind(&self) -> Option<Gvk> {
        Some(("", "v1", "NodeProxyOptions"))
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["create", "get"]
    }
    fn takes_path(&self) -> bool {
        true
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        _: &Store,
        _: Option<&str>,
        name: &str,
        _: &Bytes,
    ) -> Option<ApiResult> {
        (method == Method::GET).then_some(())?;
        Some(node_proxy(req, name).await)
    }
}

async fn node_proxy(req: &Request<'_>, name: &str) -> ApiResult {
    let rest = req
        .path
        .split_once(&format!("/nodes/{name}/proxy"))
        .map(|(_, r)| r)
        .unwrap_or_default();
    let (host, port) = node_endpoint(req, name).await?;
    let mut url = format!(
        "https://{host}:{port}{}",
        if rest.is_empty() { "/" } else { rest }
    );
    if !req.raw_query.is_empty() {
        url.push('?');
        url.push_str(req.raw_query);
    }
    let resp = kubelet_get(req, &url).await?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(axum::http::HeaderValue::from_static("text/plain"));
    Ok(Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, ct)
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
