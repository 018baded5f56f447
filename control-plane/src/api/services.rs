//! Service cluster IPs from `--service-cluster-ip-range` (10.96.0.0/12 by default). Each
//! allocated address is a key of its own (`/registry/ranges/serviceips/<ip>`) created atomically,
//! so apiservers sharing a store never hand out one address twice. The first address belongs to
//! the `default/kubernetes` service, which points at the apiserver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{json, Value};

use super::resources;
use super::status::ApiError;
use crate::store::{Store, StoreError};

const PREFIX: &str = "/registry/ranges/serviceips/";

fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

/// Addresses of the range usable for services (network and broadcast excluded).
fn hosts(range: ipnetwork::Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(range.network()) + 1;
    let last = u32::from(range.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// Allocates `wanted` (or any free address) for service `owner` (`ns/name`).
pub async fn allocate(
    store: &dyn Store,
    range: ipnetwork::Ipv4Network,
    wanted: Option<&str>,
    owner: &str,
) -> Result<Ipv4Addr, ApiError> {
    let value = serde_json::to_vec(&json!({"service": owner})).unwrap();
    let invalid = |ip: &str, why: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("Service \"{}\" is invalid: spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: {why}", owner.rsplit('/').next().unwrap_or_default()),
        )
    };
    if let Some(ip) = wanted {
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| invalid(ip, "must be a valid IP address"))?;
        if !range.contains(addr) {
            return Err(invalid(ip, &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}")));
        }
        return match store.create(&key(addr), value).await {
            Ok(_) => Ok(addr),
            Err(StoreError::AlreadyExists(_)) => Err(invalid(
                ip,
                &format!("failed to allocate IP {ip}: provided IP is already allocated"),
            )),
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
    }
    let size = range.size().saturating_sub(2).max(1);
    // Start at a random offset (the first address is the kubernetes service's).
    let start = 1 + rand::random_range(0..size.saturating_sub(1).max(1));
    let all: Vec<Ipv4Addr> = hosts(range).collect();
    for i in 0..all.len() {
        let addr = all[(start as usize + i) % all.len()];
        if addr == all[0] {
            continue;
        }
        match store.create(&key(addr), value.clone()).await {
            Ok(_) => return Ok(addr),
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
    }
    Err(ApiError::internal(format!(
        "failed to allocate a serviceIP: range is full ({range})"
    )))
}

pub async fn release(store: &dyn Store, ip: &str) {
    if let Ok(addr) = ip.parse::<Ipv4Addr>() {
        let _ = store.delete(&key(addr), None).await;
    }
}

/// `default/kubernetes`: the first address of the range, port 443, endpoints at the apiserver.
pub async fn ensure_kubernetes_service(
    store: &dyn Store,
    range: ipnetwork::Ipv4Network,
    apiserver: SocketAddr,
) -> anyhow::Result<()> {
    let first = hosts(range).next().unwrap_or(range.network());
    let _ = store
        .create(
            &key(first),
            serde_json::to_vec(&json!({"service": "default/kubernetes"}))?,
        )
        .await;
    let now = super::objects::now();
    let svc = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": super::objects::new_uid(), "creationTimestamp": now,
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": first.to_string(), "clusterIPs": [first.to_string()],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver.port()}]},
        "status": {"loadBalancer": {}},
    });
    let _ = store
        .create(
            &resources::SERVICES.key(Some("default"), "kubernetes"),
            serde_json::to_vec(&svc)?,
        )
        .await;
    let ip = match apiserver.ip() {
        IpAddr::V4(v4) if !v4.is_unspecified() => v4.to_string(),
        _ => "127.0.0.1".to_string(),
    };
    let ep = json!({
        "kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": super::objects::new_uid(), "creationTimestamp": now,
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": apiserver.port(), "protocol": "TCP"}]}],
    });
    // The apiserver writes the EndpointSlice too (as kube-apiserver's endpoint reconciler):
    // the skip-mirror label keeps the mirroring controller off, and service proxies read slices.
    let slice = json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": super::objects::new_uid(), "creationTimestamp": now,
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": apiserver.port(), "protocol": "TCP"}],
    });
    // Several apiservers: these name whichever wrote last, as kube-apiserver's lease
    // reconciler would eventually list them all.
    let ekey = resources::ENDPOINTS.key(Some("default"), "kubernetes");
    let skey = resources::ENDPOINTSLICES.key(Some("default"), "kubernetes");
    for (key, obj, field) in [(ekey, ep, "subsets"), (skey, slice, "endpoints")] {
        match store.get(&key).await? {
            Some(kv) => {
                let cur: Value = serde_json::from_slice(&kv.value)?;
                if cur[field] != obj[field] || cur["ports"] != obj["ports"] {
                    let mut upd = cur.clone();
                    upd[field] = obj[field].clone();
                    if field == "endpoints" {
                        upd["ports"] = obj["ports"].clone();
                    }
                    let _ = store
                        .update(&key, serde_json::to_vec(&upd)?, Some(kv.mod_rev))
                        .await;
                }
            }
            None => {
                let _ = store.create(&key, serde_json::to_vec(&obj)?).await;
            }
        }
    }
    Ok(())
}

/// `kube-system/kube-dns`: the tenth address of the range (10.96.0.10 by default, kubeadm's and
/// k3s' choice), which every node's agent answers on itself (podlet's cluster DNS): so the
/// Service has no selector and no endpoints, and tools that look for kube-dns find it. A
/// range too small for it, or an address already another service's, leaves it out (logged).
pub async fn ensure_dns_service(
    store: &dyn Store,
    range: ipnetwork::Ipv4Network,
) -> anyhow::Result<Option<Ipv4Addr>> {
    let Some(ip) = hosts(range).nth(9) else {
        return Ok(None);
    };
    let skey = resources::SERVICES.key(Some("kube-system"), "kube-dns");
    if store.get(&skey).await?.is_some() {
        return Ok(Some(ip));
    }
    let owner = json!({"service": "kube-system/kube-dns"});
    match store.create(&key(ip), serde_json::to_vec(&owner)?).await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists(_)) => {
            let held = store.get(&key(ip)).await?;
            let by: Value = held
                .map(|kv| serde_json::from_slice(&kv.value).unwrap_or_default())
                .unwrap_or_default();
            if by != owner {
                tracing::warn!(%ip, holder = %by["service"], "the cluster DNS address is another service's: kube-system/kube-dns not created");
                return Ok(None);
            }
        }
        Err(e) => return Err(e.into()),
    }
    let svc = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "uid": super::objects::new_uid(),
                     "creationTimestamp": super::objects::now(),
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "podlet-dns"},
                     "annotations": {"podlet.dev/served-by": "every node's agent, on this address locally (no endpoints)"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        "status": {"loadBalancer": {}},
    });
    match store.create(&skey, serde_json::to_vec(&svc)?).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(Some(ip)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kube_dns_gets_the_tenth_address_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::embedded::Embedded::open(dir.path()).unwrap();
        let range: ipnetwork::Ipv4Network = "10.96.0.0/12".parse().unwrap();
        let ip = ensure_dns_service(&s, range).await.unwrap();
        assert_eq!(ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        // Again (a restart, a second apiserver): the same, no error.
        assert_eq!(ensure_dns_service(&s, range).await.unwrap(), ip);
        let e = allocate(&s, range, Some("10.96.0.10"), "default/x")
            .await
            .unwrap_err();
        assert!(e.message.contains("already allocated"), "{}", e.message);
        let kv = s
            .get(&resources::SERVICES.key(Some("kube-system"), "kube-dns"))
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(v["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(v["spec"]["ports"][0]["protocol"], "UDP");
        // Too small a range: none.
        let tiny: ipnetwork::Ipv4Network = "10.97.0.0/29".parse().unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = crate::store::embedded::Embedded::open(dir2.path()).unwrap();
        assert_eq!(ensure_dns_service(&s2, tiny).await.unwrap(), None);
    }

    #[tokio::test]
    async fn addresses_are_unique_and_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::embedded::Embedded::open(dir.path()).unwrap();
        let range: ipnetwork::Ipv4Network = "10.96.0.0/29".parse().unwrap();
        ensure_kubernetes_service(&s, range, "127.0.0.1:6443".parse().unwrap())
            .await
            .unwrap();
        let mut got = std::collections::HashSet::new();
        for i in 0..5 {
            let ip = allocate(&s, range, None, &format!("default/s{i}"))
                .await
                .unwrap();
            assert!(range.contains(ip) && ip != Ipv4Addr::new(10, 96, 0, 1));
            assert!(got.insert(ip), "{ip} twice");
        }
        // 6 usable addresses, the first is kubernetes': the range is full now.
        assert!(allocate(&s, range, None, "default/full").await.is_err());
        release(&s, &got.iter().next().unwrap().to_string()).await;
        assert!(allocate(&s, range, None, "default/again").await.is_ok());
        let e = allocate(&s, range, Some("10.96.0.1"), "default/x")
            .await
            .unwrap_err();
        assert!(
            e.message.contains("provided IP is already allocated"),
            "{}",
            e.message
        );
        let e = allocate(&s, range, Some("10.0.0.1"), "default/x")
            .await
            .unwrap_err();
        assert!(
            e.message.contains("not in the valid range"),
            "{}",
            e.message
        );
    }
}
