//! The Service proxy: the cluster's ClusterIP services as nftables rules in the node's network
//! namespace, in the layout of kube-proxy's nftables mode (table `ip podlet-proxy`, and `ip6
//! podlet-proxy` for the IPv6 family of a dual-stack or IPv6 cluster; see `table.rs`), from
//! the `ServiceCache`'s Services and EndpointSlices (`rules.rs`).
//!
//! A full sync at start replaces the table in one transaction (established flows keep their
//! translation: it lives in conntrack, which is not flushed); after that each change of the
//! cache rewrites only the service ports that changed, in one batch. Bursts of changes coalesce
//! (the cache's counter), and syncs are at least `MIN_INTERVAL` apart; a change after a quiet
//! spell is synced at once.
//!
//! Besides the rules, the `healthCheckNodePort` servers of Local load balancers
//! (`healthcheck.rs`) and the histograms of `/metrics` (`metrics.rs`).
//!
//! Each family's table has its own loop, memo, netlink session and programmed state: a
//! failure in one does not hold the other back.

pub mod healthcheck;
pub mod metrics;
pub mod rules;
pub mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::services::ServiceCache;
use podlet_cni::nft::family::Family;
use podlet_cni::nft::Session;
use rules::{Scope, Wanted};

const MIN_INTERVAL: Duration = Duration::from_millis(50);
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("programming nftables table {family} {table} ({what})")]
    Apply {
        family: &'static str,
        table: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Scope {
    /// The scope of `family`'s table (`None` without a service range of the family).
    pub fn of(cfg: &Config, family: Family) -> Option<Scope> {
        Some(Scope {
            family,
            service_cidr: cfg.service_cluster_ip_range.of_family(family.k8s_name())?,
            cluster_cidr: cfg.cluster_cidr.of_family(family.k8s_name()),
            local_dns: cfg.cluster_dns.clone(),
            node_name: cfg.node_name.clone(),
        })
    }
}

/// Follows `services` until the process ends: one table per family of the service range
/// (`ip` and, dual-stack, `ip6 podlet-proxy`), each programmed on its own as kube-proxy's
/// dual-stack proxier runs one proxier per family.
pub async fn run(cfg: Arc<Config>, services: Arc<ServiceCache>) {
    let mut families = Vec::new();
    for family in [Family::V4, Family::V6] {
        if let Some(scope) = Scope::of(&cfg, family) {
            if let Some(ip) = cfg.node_ip.filter(|ip| scope.service_cidr.contains(*ip)) {
                tracing::error!(node_ip = %ip, range = %scope.service_cidr, "the node's address is inside the service range (--service-cluster-ip-range): traffic to it is dropped as to an unallocated ClusterIP, as kube-proxy does; give the cluster a service range that no node or network uses");
            }
            // The health check servers answer for the service, whatever its families: once.
            let health = families.is_empty();
            families.push(tokio::spawn(run_family(scope, services.clone(), health)));
        }
    }
    for f in families {
        let _ = f.await;
    }
}

async fn run_family(scope: Scope, services: Arc<ServiceCache>, health_checks: bool) {
    let mut changes = services.subscribe();
    let mut programmed: Option<Wanted> = None;
    let mut memo = rules::Memo::default();
    // One socket for the agent's life (see Session), opened by the first sync.
    let mut session = Session::default();
    let mut health = healthcheck::Servers::default();
    let mut triggers = metrics::Triggers::default();
    loop {
        changes.borrow_and_update();
        let snap = services.snapshot();
        let mut wait = None;
        if snap.synced {
            if health_checks {
                health
                    .sync(&healthcheck::wanted(&snap, &scope.node_name))
                    .await;
            }
            let want = memo.wanted(&snap, &scope);
            // Without a programmed state (at start, after a failure) the sync is a full one:
            // a failed batch changed nothing, but the table may have been changed by hand.
            let (prev, s, mut nl) = (
                programmed.take(),
                scope.clone(),
                std::mem::take(&mut session),
            );
            let res = tokio::task::spawn_blocking(move || {
                let r = sync(&mut nl, prev.as_ref(), &want, &s);
                (nl, r.map(|_| want))
            })
            .await
            .map(|(nl, r)| {
                session = nl;
                r
            });
            match res {
                Ok(Ok(want)) => {
                    programmed = Some(want);
                    triggers.programmed(&snap);
                }
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
                let last = Instant::now();
                if changes.changed().await.is_err() {
                    return;
                }
                // As kube-proxy's bounded-frequency runner: a change after a quiet spell
                // is synced at once, a burst at most every MIN_INTERVAL.
                tokio::time::sleep(MIN_INTERVAL.saturating_sub(last.elapsed())).await;
            }
        }
    }
}

/// Programs `want` through `nl`: incrementally from `prev`, or the whole table without one.
pub fn sync(
    nl: &mut Session,
    prev: Option<&Wanted>,
    want: &Wanted,
    scope: &Scope,
) -> Result<(), ProxyError> {
    let start = Instant::now();
    let mut w = table::Writer::new(scope.family);
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
    nl.send(&w.batch.finalize())
        .map_err(|source| ProxyError::Apply {
            family: scope.family.nft_name(),
            table: table::TABLE,
            what,
            source,
        })?;
    let took = start.elapsed();
    metrics::SYNC.observe(took);
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
            "the nftables table {} (service proxy; ip and ip6 where there were both)",
            table::TABLE
        )]
    } else {
        Vec::new()
    })
}

/// The proxy's histograms in the Prometheus text format.
pub fn metrics() -> String {
    metrics::render()
}

#[cfg(test)]
mod netns_tests;
