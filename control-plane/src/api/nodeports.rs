//! Service node ports from 30000–32767 (kube-apiserver's default `--service-node-port-range`).
//! Like cluster IPs, each allocated port is a key of its own
//! (`/registry/ranges/servicenodeports/<port>`) created atomically, so apiservers sharing a
//! store never hand out one port twice. Services of type NodePort get one per port, and so do
//! LoadBalancer services unless `allocateLoadBalancerNodePorts` is false; a LoadBalancer with
//! `externalTrafficPolicy: Local` also gets its `healthCheckNodePort`.

use std::ops::RangeInclusive;

use serde_json::{json, Value};

use super::status::ApiError;
use crate::store::{Store, StoreError};

pub const RANGE: RangeInclusive<u16> = 30000..=32767;
const PREFIX: &str = "/registry/ranges/servicenodeports/";

fn key(port: u16) -> String {
    format!("{PREFIX}{port}")
}

/// Whether `svc` (its spec defaulted) has node ports.
pub fn wants_node_ports(svc: &Value) -> bool {
    match svc["spec"]["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => svc["spec"]["allocateLoadBalancerNodePorts"] != false,
        _ => false,
    }
}

/// Whether `svc` needs a health check node port (LoadBalancer, externalTrafficPolicy Local).
pub fn wants_health_check(svc: &Value) -> bool {
    svc["spec"]["type"] == "LoadBalancer" && svc["spec"]["externalTrafficPolicy"] == "Local"
}

/// Every node port `svc` holds: its ports' and its health check's.
pub fn held(svc: &Value) -> Vec<u16> {
    let mut out: Vec<u16> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .chain(svc["spec"]["healthCheckNodePort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn invalid(service: &str, field: &str, port: i64, why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("Service \"{service}\" is invalid: {field}: Invalid value: {port}: {why}"),
    )
}

/// Takes `wanted` (or a free port) for `owner` (`ns/name`); `field` names it in errors.
async fn allocate(
    store: &dyn Store,
    wanted: Option<i64>,
    owner: &str,
    field: &str,
) -> Result<u16, ApiError> {
    let service = owner.rsplit('/').next().unwrap_or_default();
    let value = serde_json::to_vec(&json!({"service": owner})).unwrap_or_default();
    if let Some(p) = wanted {
        let port = u16::try_from(p)
            .ok()
            .filter(|p| RANGE.contains(p))
            .ok_or_else(|| {
                invalid(service, field, p, &format!("provided port is not in the valid range. The range of valid ports is {}-{}", RANGE.start(), RANGE.end()))
            })?;
        return match store.create(&key(port), value).await {
            Ok(_) => Ok(port),
            Err(StoreError::AlreadyExists(_)) => Err(invalid(
                service,
                field,
                p,
                "provided port is already allocated",
            )),
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
    }
    let size = (RANGE.end() - RANGE.start()) as usize + 1;
    let start = rand::random_range(0..size);
    for i in 0..size {
        let port = RANGE.start() + ((start + i) % size) as u16;
        match store.create(&key(port), value.clone()).await {
            Ok(_) => return Ok(port),
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
    }
    Err(ApiError::internal(format!(
        "failed to allocate a nodePort: range is full ({}-{})",
        RANGE.start(),
        RANGE.end()
    )))
}

pub async fn release(store: &dyn Store, ports: &[u16]) {
    for p in ports {
        let _ = store.delete(&key(*p), None).await;
    }
}

/// Gives `svc` its node ports: those it names are taken, the others allocated; a port the
/// service held before (`kept`) is its own already. On an error nothing newly taken is kept.
pub async fn assign(
    store: &dyn Store,
    owner: &str,
    svc: &mut Value,
    kept: &[u16],
) -> Result<(), ApiError> {
    let mut taken: Vec<u16> = Vec::new();
    let r = assign_inner(store, owner, svc, kept, &mut taken).await;
    if r.is_err() {
        release(store, &taken).await;
    }
    r
}

async fn assign_inner(
    store: &dyn Store,
    owner: &str,
    svc: &mut Value,
    kept: &[u16],
    taken: &mut Vec<u16>,
) -> Result<(), ApiError> {
    let want_ports = wants_node_ports(svc);
    let n = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
    for i in 0..n {
        let p = &mut svc["spec"]["ports"][i];
        if !want_ports {
            if let Some(o) = p.as_object_mut() {
                o.remove("nodePort");
            }
            continue;
        }
        let wanted = p["nodePort"].as_i64().filter(|v| *v != 0);
        // A port the service already had, or one an earlier port of it took (the same number
        // for TCP and UDP of one port, as Kubernetes allows).
        if let Some(w) = wanted.and_then(|w| u16::try_from(w).ok()) {
            if kept.contains(&w) || taken.contains(&w) {
                continue;
            }
        }
        let port = allocate(store, wanted, owner, &format!("spec.ports[{i}].nodePort")).await?;
        taken.push(port);
        svc["spec"]["ports"][i]["nodePort"] = json!(port);
    }
    if wants_health_check(svc) {
        let wanted = svc["spec"]["healthCheckNodePort"]
            .as_i64()
            .filter(|v| *v != 0);
        let have = wanted
            .and_then(|w| u16::try_from(w).ok())
            .filter(|w| kept.contains(w));
        if have.is_none() {
            let port = allocate(store, wanted, owner, "spec.healthCheckNodePort").await?;
            taken.push(port);
            svc["spec"]["healthCheckNodePort"] = json!(port);
        }
    } else if let Some(s) = svc["spec"].as_object_mut() {
        s.remove("healthCheckNodePort");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    #[tokio::test]
    async fn node_ports_allocated_checked_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::embedded::Embedded::open(dir.path()).unwrap();
        let mut a = svc(
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}),
        );
        assign(&s, "default/a", &mut a, &[]).await.unwrap();
        let p0 = a["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(RANGE.contains(&p0));
        assert_eq!(a["spec"]["ports"][1]["nodePort"], 30081);
        // Taken, out of range: upstream's messages; the first port of b is given back.
        let mut b = svc(
            json!({"type": "NodePort", "ports": [{"port": 1}, {"port": 2, "nodePort": 30081}]}),
        );
        let e = assign(&s, "default/b", &mut b, &[]).await.unwrap_err();
        assert_eq!(e.message, "Service \"b\" is invalid: spec.ports[1].nodePort: Invalid value: 30081: provided port is already allocated");
        let mut c = svc(json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}));
        let e = assign(&s, "default/c", &mut c, &[]).await.unwrap_err();
        assert!(e.message.ends_with("spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"), "{}", e.message);
        // Everything b took went back: only a's two ports are held.
        let mut all = Vec::new();
        for p in RANGE {
            if s.get(&key(p)).await.unwrap().is_some() {
                all.push(p);
            }
        }
        let mut want = vec![p0, 30081];
        want.sort();
        assert_eq!(all, want);
        // An update keeping its ports takes nothing new; the same number for TCP and UDP.
        let mut a2 = a.clone();
        a2["spec"]["ports"] =
            json!([{"port": 80, "nodePort": p0}, {"port": 80, "protocol": "UDP", "nodePort": p0}]);
        assign(&s, "default/a", &mut a2, &held(&a)).await.unwrap();
        assert_eq!(held(&a2), vec![p0]);
        release(&s, &held(&a)).await;
        assert!(s.get(&key(30081)).await.unwrap().is_none());
        // ClusterIP services have none; LoadBalancer Local gets a health check port.
        let mut ip = svc(json!({"type": "ClusterIP", "ports": [{"port": 1, "nodePort": 30500}]}));
        assign(&s, "default/ip", &mut ip, &[]).await.unwrap();
        assert!(held(&ip).is_empty());
        let mut lb = svc(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 1}]}),
        );
        assign(&s, "default/lb", &mut lb, &[]).await.unwrap();
        assert_eq!(held(&lb).len(), 2);
    }
}
