//! The `healthCheckNodePort` of LoadBalancer services with `externalTrafficPolicy: Local`, as
//! kube-proxy serves it: on every node, an HTTP server at that port that answers 200 while the
//! node has a ready endpoint of the service and 503 otherwise, so a load balancer only sends
//! traffic to nodes that keep it local.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tokio::task::JoinHandle;

use crate::services::Snapshot;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the service on this node.
    pub local_endpoints: usize,
}

/// Every health check port the snapshot's services ask of this node.
pub fn wanted(snap: &Snapshot, node: &str) -> BTreeMap<u16, Check> {
    let mut out = BTreeMap::new();
    for ((ns, name), svc) in &snap.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let local_lb = spec.type_.as_deref() == Some("LoadBalancer")
            && spec.external_traffic_policy.as_deref() == Some("Local");
        let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        if !local_lb || port == 0 {
            continue;
        }
        let local: BTreeSet<Ipv4Addr> = snap
            .slices_of(ns, name)
            .filter(|s| s.address_type == "IPv4")
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.node_name.as_deref() == Some(node))
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .filter_map(|e| e.addresses.first()?.parse().ok())
            .collect();
        out.insert(
            port,
            Check {
                namespace: ns.clone(),
                name: name.clone(),
                local_endpoints: local.len(),
            },
        );
    }
    out
}

/// The running servers, by port.
#[derive(Default)]
pub struct Servers {
    running: BTreeMap<u16, (JoinHandle<()>, Arc<Mutex<Check>>)>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (task, _) in self.running.values() {
            task.abort();
        }
    }
}

impl Servers {
    /// Starts, updates and stops servers to match `want` (a port that cannot be bound is
    /// logged and tried again at the next sync).
    pub async fn sync(&mut self, want: &BTreeMap<u16, Check>) {
        self.running.retain(|port, (task, _)| {
            let keep = want.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, check) in want {
            if let Some((_, state)) = self.running.get(port) {
                *state.lock().unwrap_or_else(|e| e.into_inner()) = check.clone();
                continue;
            }
            let addr = SocketAddr::from(([0, 0, 0, 0], *port));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let state = Arc::new(Mutex::new(check.clone()));
                    let s = state.clone();
                    let app = axum::Router::new().fallback(move || answer(s.clone()));
                    let task = tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::warn!(%addr, "service health check server: {e}");
                        }
                    });
                    self.running.insert(*port, (task, state));
                }
                Err(e) => tracing::warn!(
                    service = %format!("{}/{}", check.namespace, check.name),
                    "service health check: listening on {addr}: {e}"
                ),
            }
        }
    }
}

/// kube-proxy's answer, byte for byte.
async fn answer(state: Arc<Mutex<Check>>) -> impl IntoResponse {
    let c = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let code = match c.local_endpoints {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::HeaderName::from_static("x-load-balancing-endpoint-weight"),
                c.local_endpoints.to_string(),
            ),
        ],
        body(&c),
    )
}

fn body(c: &Check) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": true\n}}",
        c.namespace, c.name, c.local_endpoints
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_kube_proxys() {
        let c = Check {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&c)).unwrap();
        assert_eq!(v["service"]["namespace"], "default");
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["serviceProxyHealthy"], true);
    }
}
