//! Service cluster IPs from `--service-cluster-ip-range` (10.96.0.0/12 by default; one range,
//! or one of each IP family for dual-stack). Each allocated address is a key of its own
//! (`/registry/ranges/serviceips/<ip>`, the address in its canonical text form) created
//! atomically, so apiservers sharing a store never hand out one address twice; IPv4 and IPv6
//! texts never collide, so both families share the prefix and the IPv4 keys of clusters made
//! before dual-stack are still found. The first address of the primary range belongs to the
//! `default/kubernetes` service, which points at the apiserver.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::resources;
use crate::store::{Store, StoreError};

const PREFIX: &str = "/registry/ranges/serviceips/";

/// Upstream's IPv6 allocator keeps a bitmap of at most this many addresses; the rest of a
/// larger range is never handed out (the same here, so both agree on what is allocatable).
const MAX_V6_ADDRESSES: u128 = 1 << 16;

fn key(ip: IpAddr) -> String {
    format!("{PREFIX}{ip}")
}

/// The addresses of a range services may get, as upstream's allocator counts them: never the
/// network address nor IPv4's broadcast address.
#[derive(Clone, Copy, Debug)]
pub struct Hosts {
    range: IpNetwork,
    first: u128,
    count: u64,
}

impl Hosts {
    pub fn of(range: IpNetwork) -> Hosts {
        let (bits, net) = match range {
            IpNetwork::V4(n) => (32u32, u128::from(u32::from(n.network()))),
            IpNetwork::V6(n) => (128, u128::from(n.network())),
        };
        let host_bits = bits - u32::from(range.prefix());
        let size = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
        let count = match range {
            IpNetwork::V4(_) => size.saturating_sub(2),
            IpNetwork::V6(_) => size.min(MAX_V6_ADDRESSES).saturating_sub(1),
        };
        Hosts {
            range,
            first: net + 1,
            count: u64::try_from(count).unwrap_or(u64::MAX),
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn nth(&self, i: u64) -> Option<IpAddr> {
        if i >= self.count {
            return None;
        }
        let n = self.first + u128::from(i);
        Some(match self.range {
            IpNetwork::V4(_) => IpAddr::V4(u32::try_from(n).ok()?.into()),
            IpNetwork::V6(_) => IpAddr::V6(n.into()),
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let n = match (ip, self.range) {
            (IpAddr::V4(a), IpNetwork::V4(_)) => u128::from(u32::from(a)),
            (IpAddr::V6(a), IpNetwork::V6(_)) => u128::from(a),
            _ => return false,
        };
        n >= self.first && n - self.first < u128::from(self.count)
    }
}

/// Why an address could not be had, in upstream's allocator's words.
#[derive(Debug)]
pub enum AllocError {
    NotInRange(IpAddr, IpNetwork),
    Taken,
    Full,
    Store(StoreError),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::NotInRange(ip, range) => write!(
                f,
                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
            ),
            AllocError::Taken => f.write_str("provided IP is already allocated"),
            AllocError::Full => f.write_str("range is full"),
            AllocError::Store(e) => write!(f, "the store: {e}"),
        }
    }
}

/// Takes `wanted` (or any free address of `range`) for service `owner` (`ns/name`).
pub async fn allocate(
    store: &dyn Store,
    range: IpNetwork,
    wanted: Option<IpAddr>,
    owner: &str,
) -> Result<IpAddr, AllocError> {
    let value = serde_json::to_vec(&json!({"service": owner})).unwrap();
    let hosts = Hosts::of(range);
    if let Some(ip) = wanted {
        if !hosts.contains(ip) {
            return Err(AllocError::NotInRange(ip, range));
        }
        return match store.create(&key(ip), value).await {
            Ok(_) => Ok(ip),
            Err(StoreError::AlreadyExists(_)) => Err(AllocError::Taken),
            Err(e) => Err(AllocError::Store(e)),
        };
    }
    let n = hosts.len();
    if n < 2 {
        return Err(AllocError::Full);
    }
    // A random start spreads concurrent apiservers apart; the first address is skipped (the
    // kubernetes service's in the primary range, kept free in the other for the day it
    // becomes primary).
    let start = rand::random_range(0..n - 1);
    for i in 0..n - 1 {
        let Some(ip) = hosts.nth(1 + (start + i) % (n - 1)) else {
            break;
        };
        match store.create(&key(ip), value.clone()).await {
            Ok(_) => return Ok(ip),
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(AllocError::Store(e)),
        }
    }
    Err(AllocError::Full)
}

pub async fn release(store: &dyn Store, ip: &str) {
    if let Ok(addr) = ip.parse::<IpAddr>() {
        let _ = store.delete(&key(addr), None).await;
    }
}

/// `default/kubernetes`: the first address of the (primary) range, single-stack of its family,
/// port 443, endpoints at the apiserver.
pub async fn ensure_kubernetes_service(
    store: &dyn Store,
    range: IpNetwork,
    apiserver: SocketAddr,
) -> anyhow::Result<()> {
    let first = Hosts::of(range).nth(0).unwrap_or(range.network());
    let family = k8s_rules::cidrs::family_name(first);
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
                 "ipFamilies": [family], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver.port()}]},
        "status": {"loadBalancer": {}},
    });
    let _ = store
        .create(
            &resources::SERVICES.key(Some("default"), "kubernetes"),
            serde_json::to_vec(&svc)?,
        )
        .await;
    // An unspecified listening address names no host: loopback stands for it.
    let ip = match apiserver.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    let address_type = k8s_rules::cidrs::family_name(ip);
    let ip = ip.to_string();
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
        "addressType": address_type,
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

/// `kube-system/kube-dns`: the tenth address of the (primary) range (10.96.0.10 by default,
/// kubeadm's and k3s' choice), which every node's agent answers on itself (podlet's cluster
/// DNS): so the Service has no selector and no endpoints, and tools that look for kube-dns
/// find it. A range too small for it, or an address already another service's, leaves it out
/// (logged).
pub async fn ensure_dns_service(
    store: &dyn Store,
    range: IpNetwork,
) -> anyhow::Result<Option<IpAddr>> {
    let Some(ip) = Hosts::of(range).nth(9) else {
        return Ok(None);
    };
    let family = k8s_rules::cidrs::family_name(ip);
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
                 "ipFamilies": [family], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
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

    fn store() -> (tempfile::TempDir, crate::store::embedded::Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::store::embedded::Embedded::open(dir.path()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn kube_dns_gets_the_tenth_address_once() {
        let (_d, s) = store();
        let range: IpNetwork = "10.96.0.0/12".parse().unwrap();
        let ip = ensure_dns_service(&s, range).await.unwrap();
        assert_eq!(ip, Some("10.96.0.10".parse().unwrap()));
        // Again (a restart, a second apiserver): the same, no error.
        assert_eq!(ensure_dns_service(&s, range).await.unwrap(), ip);
        let e = allocate(&s, range, ip, "default/x").await.unwrap_err();
        assert!(matches!(e, AllocError::Taken), "{e}");
        let kv = s
            .get(&resources::SERVICES.key(Some("kube-system"), "kube-dns"))
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(v["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(v["spec"]["ports"][0]["protocol"], "UDP");
        // Too small a range: none.
        let (_d2, s2) = store();
        let tiny: IpNetwork = "10.97.0.0/29".parse().unwrap();
        assert_eq!(ensure_dns_service(&s2, tiny).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_ipv6_primary_range_gives_kubernetes_and_kube_dns_ipv6_addresses() {
        let (_d, s) = store();
        let range: IpNetwork = "fd00:10:96::/112".parse().unwrap();
        ensure_kubernetes_service(&s, range, "[::]:6443".parse().unwrap())
            .await
            .unwrap();
        let ip = ensure_dns_service(&s, range).await.unwrap();
        assert_eq!(ip, Some("fd00:10:96::a".parse().unwrap()));
        for (ns, name, want) in [
            ("default", "kubernetes", "fd00:10:96::1"),
            ("kube-system", "kube-dns", "fd00:10:96::a"),
        ] {
            let kv = s
                .get(&resources::SERVICES.key(Some(ns), name))
                .await
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(v["spec"]["clusterIPs"], json!([want]), "{name}");
            assert_eq!(v["spec"]["ipFamilies"], json!(["IPv6"]), "{name}");
            assert_eq!(v["spec"]["ipFamilyPolicy"], "SingleStack", "{name}");
        }
        let e = allocate(&s, range, Some("fd00:10:96::1".parse().unwrap()), "d/x")
            .await
            .unwrap_err();
        assert!(matches!(e, AllocError::Taken), "{e}");
    }

    #[tokio::test]
    async fn addresses_are_unique_and_in_range() {
        let (_d, s) = store();
        let range: IpNetwork = "10.96.0.0/29".parse().unwrap();
        ensure_kubernetes_service(&s, range, "127.0.0.1:6443".parse().unwrap())
            .await
            .unwrap();
        let mut got = std::collections::HashSet::new();
        for i in 0..5 {
            let ip = allocate(&s, range, None, &format!("default/s{i}"))
                .await
                .unwrap();
            assert!(range.contains(ip) && ip != "10.96.0.1".parse::<IpAddr>().unwrap());
            assert!(got.insert(ip), "{ip} twice");
        }
        // 6 usable addresses, the first is kubernetes': the range is full now.
        let e = allocate(&s, range, None, "default/full").await.unwrap_err();
        assert_eq!(e.to_string(), "range is full");
        release(&s, &got.iter().next().unwrap().to_string()).await;
        assert!(allocate(&s, range, None, "default/again").await.is_ok());
        for (ip, want) in [
            ("10.96.0.1", "provided IP is already allocated"),
            ("10.0.0.1", "the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/29"),
            // The network and broadcast addresses are not the range's to give.
            ("10.96.0.0", "not in the valid range"),
            ("10.96.0.7", "not in the valid range"),
            ("fd00::1", "not in the valid range"),
        ] {
            let e = allocate(&s, range, Some(ip.parse().unwrap()), "default/x")
                .await
                .unwrap_err();
            assert!(e.to_string().contains(want), "{ip}: {e}");
        }
    }

    #[tokio::test]
    async fn both_families_keep_their_own_keys() {
        let (_d, s) = store();
        let v4: IpNetwork = "10.96.0.0/24".parse().unwrap();
        let v6: IpNetwork = "fd00:10:96::/112".parse().unwrap();
        let a = allocate(&s, v4, Some("10.96.0.5".parse().unwrap()), "d/x")
            .await
            .unwrap();
        // A non-canonical spelling of an address names the same key.
        let b = allocate(&s, v6, Some("fd00:10:96:0::05".parse().unwrap()), "d/x")
            .await
            .unwrap();
        assert!(s
            .get("/registry/ranges/serviceips/10.96.0.5")
            .await
            .unwrap()
            .is_some());
        assert!(s
            .get("/registry/ranges/serviceips/fd00:10:96::5")
            .await
            .unwrap()
            .is_some());
        let e = allocate(&s, v6, Some("fd00:10:96::5".parse().unwrap()), "d/y")
            .await
            .unwrap_err();
        assert!(matches!(e, AllocError::Taken), "{e}");
        // An IPv6 range larger than upstream's bitmap: addresses past it are not handed out.
        let big = Hosts::of("fd00::/64".parse().unwrap());
        assert_eq!(big.len(), (1 << 16) - 1);
        assert!(!big.contains("fd00::1:0".parse().unwrap()));
        release(&s, &a.to_string()).await;
        release(&s, &b.to_string()).await;
        assert!(s
            .get("/registry/ranges/serviceips/fd00:10:96::5")
            .await
            .unwrap()
            .is_none());
        assert!(s
            .get("/registry/ranges/serviceips/10.96.0.5")
            .await
            .unwrap()
            .is_none());
    }
}
