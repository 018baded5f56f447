//! The Service proxy: the cluster's ClusterIP services as nftables rules in the node's network
//! namespace, in the layout of kube-proxy's nftables mode (table `ip podlet-proxy`, see
//! `table.rs`), from the `ServiceCache`'s Services and EndpointSlices (`rules.rs`).
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
//! Not in this slice: IPv6 (`ip6 podlet-proxy`), a periodic resync.

pub mod healthcheck;
pub mod metrics;
pub mod rules;
pub mod table;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::services::ServiceCache;
use podlet_cni::nft::Session;
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
    /// The IPv4 scope (`None` without an IPv4 service range).
    pub fn of(cfg: &Config) -> Option<Scope> {
        Some(Scope {
            service_cidr: cfg.service_cluster_ip_range.v4()?,
            cluster_cidr: cfg.cluster_cidr.v4().map(Into::into)?,
            local_dns: cfg.cluster_dns.clone(),
            node_name: cfg.node_name.clone(),
        })
    }
}

/// Follows `services` until the process ends.
pub async fn run(cfg: Arc<Config>, services: Arc<ServiceCache>) {
    let Some(scope) = Scope::of(&cfg) else {
        tracing::warn!(range = %cfg.service_cluster_ip_range, "service proxy: no IPv4 service or cluster range; IPv6 services are not proxied yet");
        return;
    };
    if let Some(std::net::IpAddr::V4(ip)) = cfg.node_ip {
        if scope.service_cidr.contains(ip) {
            tracing::error!(node_ip = %ip, range = %scope.service_cidr, "the node's address is inside the service range (--service-cluster-ip-range): traffic to it is dropped as to an unallocated ClusterIP, as kube-proxy does; give the cluster a service range that no node or network uses");
        }
    }
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
            health
                .sync(&healthcheck::wanted(&snap, &scope.node_name))
                .await;
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
    nl.send(&w.batch.finalize())
        .map_err(|source| ProxyError::Apply {
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
            "the nftables table ip {} (service proxy)",
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
