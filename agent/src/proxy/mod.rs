//! The Service proxy: the cluster's ClusterIP services as nftables rules in the node's network
//! namespace, in the layout of kube-proxy's nftables mode (table `ip podlet-proxy`, see
//! `table.rs`), from the `ServiceCache`'s Services and EndpointSlices (`rules.rs`).
//!
//! A full sync at start replaces the table in one transaction (established flows keep their
//! translation: it lives in conntrack, which is not flushed); after that each change of the
//! cache rewrites only the service ports that changed, in one batch. Bursts of changes coalesce
//! (the cache's counter), and syncs are at least `MIN_INTERVAL` apart.
//!
//! Not in this slice: NodePort (`service-nodeports`), LoadBalancer, externalIPs, session
//! affinity, traffic policies, IPv6 (`ip6 podlet-proxy`), a periodic resync.

pub mod rules;
pub mod table;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::services::ServiceCache;
use rules::{Scope, Wanted};

const MIN_INTERVAL: Duration = Duration::from_millis(50);
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("programming nftables table ip {table} ({what})")]
    Apply {
        table: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Scope {
    pub fn of(cfg: &Config) -> Scope {
        Scope {
            service_cidr: cfg.service_cluster_ip_range,
            cluster_cidr: cfg.cluster_cidr,
            local_dns: cfg.cluster_dns.clone(),
        }
    }
}

/// Follows `services` until the process ends.
pub async fn run(cfg: Arc<Config>, services: Arc<ServiceCache>) {
    let scope = Scope::of(&cfg);
    if let Some(std::net::IpAddr::V4(ip)) = cfg.node_ip {
        if scope.service_cidr.contains(ip) {
            tracing::error!(node_ip = %ip, range = %scope.service_cidr, "the node's address is inside the service range (--service-cluster-ip-range): traffic to it is dropped as to an unallocated ClusterIP, as kube-proxy does; give the cluster a service range that no node or network uses");
        }
    }
    let mut changes = services.subscribe();
    let mut programmed: Option<Wanted> = None;
    loop {
        changes.borrow_and_update();
        let snap = services.snapshot();
        let mut wait = None;
        if snap.synced {
            let want = rules::wanted(&snap, &scope);
            // Without a programmed state (at start, after a failure) the sync is a full one:
            // a failed batch changed nothing, but the table may have been changed by hand.
            let (prev, s) = (programmed.take(), scope.clone());
            let res =
                tokio::task::spawn_blocking(move || sync(prev.as_ref(), &want, &s).map(|_| want))
                    .await;
            match res {
                Ok(Ok(want)) => programmed = Some(want),
                Ok(Err(e)) => {
                    tracing::warn!("service proxy: {}", crate::util::chain(&e));
                    wait = Some(RETRY);
                }
                Err(e) => {
                    tracing::warn!("service proxy sync task: {e}");
                    wait = Some(RETRY);
                }
            }
        }
        match wait {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
                tokio::time::sleep(MIN_INTERVAL).await;
            }
        }
    }
}

/// Programs `want`: incrementally from `prev`, or the whole table without one.
pub fn sync(prev: Option<&Wanted>, want: &Wanted, scope: &Scope) -> Result<(), ProxyError> {
    let start = Instant::now();
    let mut w = table::Writer::new();
    let what = match prev {
        Some(prev) => {
            let d = rules::diff(prev, want);
            if d.is_empty() {
                return Ok(());
            }
            w.incremental(prev, want, &d, scope);
            "incremental sync"
        }
        None => {
            w.full(want, scope);
            "full sync"
        }
    };
    podlet_cni::nft::send(&w.batch.finalize()).map_err(|source| ProxyError::Apply {
        table: table::TABLE,
        what,
        source,
    })?;
    let took = start.elapsed();
    record(took);
    tracing::debug!(ports = want.ports.len(), ?took, "service proxy: {what}");
    Ok(())
}

/// `podlet cleanup`: removes the proxy's table; what was removed, for the user.
pub fn cleanup() -> std::io::Result<Vec<String>> {
    let removed = podlet_cni::nft::remove_table(table::TABLE).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("removing nftables table {}: {e}", table::TABLE),
        )
    })?;
    Ok(if removed {
        vec![format!(
            "the nftables table ip {} (service proxy)",
            table::TABLE
        )]
    } else {
        Vec::new()
    })
}

/// Upper bounds (seconds) of `sync_proxy_rules_duration_seconds`' buckets, kube-proxy's.
const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Cumulative bucket counts, count and sum of the sync durations.
static DURATIONS: Mutex<([u64; 14], u64, f64)> = Mutex::new(([0; 14], 0, 0.0));

fn record(d: Duration) {
    let s = d.as_secs_f64();
    let mut h = DURATIONS.lock().unwrap_or_else(|e| e.into_inner());
    for (i, b) in BUCKETS.iter().enumerate() {
        if s <= *b {
            h.0[i] += 1;
        }
    }
    h.1 += 1;
    h.2 += s;
}

/// The histogram `sync_proxy_rules_duration_seconds` in the Prometheus text format.
pub fn metrics() -> String {
    let h = DURATIONS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::from(
        "# HELP sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds\n# TYPE sync_proxy_rules_duration_seconds histogram\n",
    );
    for (b, n) in BUCKETS.iter().zip(h.0) {
        out.push_str(&format!(
            "sync_proxy_rules_duration_seconds_bucket{{le=\"{b}\"}} {n}\n"
        ));
    }
    out.push_str(&format!(
        "sync_proxy_rules_duration_seconds_bucket{{le=\"+Inf\"}} {0}\nsync_proxy_rules_duration_seconds_sum {1}\nsync_proxy_rules_duration_seconds_count {0}\n",
        h.1, h.2
    ));
    out
}

#[cfg(test)]
mod netns_tests;
