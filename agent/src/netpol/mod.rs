//! NetworkPolicy enforcement for this node's pods: nftables rules (table `ip podlet-netpol`,
//! see `table.rs`) computed from watches of every Pod, Namespace and NetworkPolicy
//! (`cache.rs`, `rules.rs`).
//!
//! Where: pod traffic passes the IPv4 `forward` hook whether it is routed (to and from other
//! nodes, over host-gw or VXLAN) or bridged between two pods on `cni0` — bridged frames go
//! through the IP hooks with br_netfilter's `bridge-nf-call-iptables`, which the agent turns
//! on (as kube-proxy's setups do). A pod's traffic to this node itself passes `input`. The
//! node's own traffic to its pods (probes, host-network pods) passes neither and is allowed,
//! as with most plugins. Replies of allowed connections pass (conntrack established/related
//! first); denied packets are dropped.
//!
//! When: a pod must never accept or make a connection its policies forbid, so the rules for
//! its address are in place before its containers start. The pod worker registers a new
//! sandbox's address here right after CNI ADD ([`Netpol::admit`]) and waits until a sync that
//! includes it has been programmed; the address is then isolated (or not) by its pod's
//! policies. Before the watches have listed at all (an agent start with the apiserver away),
//! such a pod's address goes into the `pending` set instead, dropping all its new connections
//! until the first full sync decides. A restarted agent leaves the table as it was until that
//! sync (adopted pods keep their rules), then replaces it in one transaction; after that only
//! set elements change as pods come and go, and a policy change replaces the table, again in
//! one transaction. Addresses of this node's pods come from these registrations, never from a
//! stale pod status, so an address given to a new pod never carries an old pod's rules.
//!
//! Other nodes' pods are known by their status addresses: a new remote pod is denied by the
//! rules that would allow it until the watch shows its address (fail closed), like every
//! implementation that matches on addresses.

pub mod cache;
pub mod rules;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::config::Config;
use cache::{Cache, LocalPod};
use podlet_cni::nft::family::Family;
use podlet_cni::nft::Session;
use rules::Wanted;

const MIN_INTERVAL: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_secs(1);
/// How long a new pod waits for its rules before its sandbox fails (and is retried).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(30);
const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const BRIDGE_NF6: &str = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";

#[derive(Debug, thiserror::Error)]
pub enum NetpolError {
    #[error("programming nftables table {family} {table} ({what})")]
    Apply {
        family: &'static str,
        table: &'static str,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the network policy rules for the pod's address are not programmed: {0}")]
    NotProgrammed(String),
    #[error("the network policy rules for the pod's address were not programmed within {0:?}")]
    Timeout(Duration),
}

/// The last sync: the change count it covered, and the last failure (its count, message).
#[derive(Debug, Clone, Default)]
struct Programmed {
    count: u64,
    failed: Option<(u64, String)>,
}

/// The node's enforcement: the watch cache, the registered local pods, and what was programmed.
/// Inactive (every call a no-op) unless the node is in a cluster.
#[derive(Default)]
pub struct Netpol {
    active: AtomicBool,
    cache: Arc<Cache>,
    locals: Mutex<(u64, BTreeMap<String, LocalPod>)>,
    done: watch::Sender<Programmed>,
}

impl Netpol {
    /// Turns enforcement on: from now on new pods wait for their rules.
    pub fn activate(&self) {
        self.active.store(true, Ordering::SeqCst);
    }

    /// Registers pod `uid`'s addresses (its sandbox's, from CNI ADD). For a new sandbox
    /// (`fresh`) waits until rules covering them are programmed; an adopted one (its rules
    /// already there from before an agent restart) does not wait.
    pub async fn admit(
        &self,
        uid: &str,
        pod: &Pod,
        ips: &[IpAddr],
        fresh: bool,
    ) -> Result<(), NetpolError> {
        if !self.active.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ips = ips.to_vec();
        let local = {
            let mut l = self.locals.lock().expect("netpol locals lock");
            l.0 += 1;
            let p = LocalPod {
                seq: l.0,
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                labels: cache::labels(&pod.metadata),
                ports: cache::named_ports(pod),
                ips,
                fresh,
            };
            // The same registration again (a worker's periodic pass) changes nothing.
            match l.1.get(uid) {
                Some(o)
                    if LocalPod {
                        seq: o.seq,
                        ..p.clone()
                    } == *o
                        && !fresh =>
                {
                    return Ok(())
                }
                _ => {}
            }
            l.1.insert(uid.to_string(), p);
            self.cache.bump()
        };
        if !fresh {
            return Ok(());
        }
        let mut rx = self.done.subscribe();
        let wait = async {
            loop {
                {
                    let p = rx.borrow_and_update();
                    if p.count >= local {
                        return Ok(());
                    }
                    if let Some((n, e)) = &p.failed {
                        if *n >= local {
                            return Err(NetpolError::NotProgrammed(e.clone()));
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(NetpolError::NotProgrammed("the sync stopped".into()));
                }
            }
        };
        tokio::time::timeout(ADMIT_TIMEOUT, wait)
            .await
            .map_err(|_| NetpolError::Timeout(ADMIT_TIMEOUT))?
    }

    /// Pod `uid`'s sandbox network is going: its addresses are no longer its.
    pub fn forget(&self, uid: &str) {
        if !self.active.load(Ordering::SeqCst) {
            return;
        }
        let removed = self
            .locals
            .lock()
            .expect("netpol locals lock")
            .1
            .remove(uid)
            .is_some();
        if removed {
            self.cache.bump();
        }
    }

    fn locals(&self) -> BTreeMap<String, LocalPod> {
        self.locals.lock().expect("netpol locals lock").1.clone()
    }
}

/// Follows the cluster until the process ends.
pub async fn run(np: Arc<Netpol>, cfg: Arc<Config>, client: watch::Receiver<kube::Client>) {
    np.activate();
    ensure_bridge_netfilter(BRIDGE_NF);
    tokio::spawn(np.cache.clone().run(client));
    let dns = cfg.cluster_dns.clone();
    // A table per family pods have addresses in (their cluster CIDRs).
    let families: Vec<Family> = cfg
        .cluster_cidr
        .iter()
        .map(|c| Family::of(c.ip()))
        .collect();
    if families.contains(&Family::V6) {
        ensure_bridge_netfilter(BRIDGE_NF6);
    }
    let mut changes = np.cache.subscribe();
    let mut programmed: Option<Wanted> = None;
    let mut pending: Option<BTreeSet<IpAddr>> = None;
    // One socket for the agent's life (see Session), opened by the first sync.
    let mut session = Session::default();
    loop {
        let count = *changes.borrow_and_update();
        let snap = np.cache.snapshot();
        let locals = np.locals();
        let (prev, dns2, fams) = (programmed.take(), dns.clone(), families.clone());
        let mut nl = std::mem::take(&mut session);
        let res = if snap.synced {
            let pods = cache::pods(&snap, &locals, &cfg.node_name);
            let policies: Vec<_> = snap.policies.values().cloned().collect();
            let want = rules::wanted(&rules::Input {
                pods: &pods,
                namespaces: &snap.namespaces,
                policies: &policies,
            });
            tokio::task::spawn_blocking(move || {
                let r = sync(&mut nl, &fams, prev.as_ref(), &want, &dns2);
                (nl, r.map(|_| (Some(want), None)))
            })
            .await
        } else {
            // Not listed yet: only new pods' addresses, into `pending`.
            let fresh: BTreeSet<IpAddr> = locals
                .values()
                .filter(|l| l.fresh)
                .flat_map(|l| l.ips.iter().copied())
                .collect();
            let had = pending.take();
            tokio::task::spawn_blocking(move || {
                let r = sync_pending(&mut nl, &fams, had.as_ref(), &fresh, &dns2);
                (nl, r.map(|_| (None, Some(fresh))))
            })
            .await
        }
        .map(|(nl, r)| {
            session = nl;
            r
        });
        let last = Instant::now();
        let mut wait = None;
        match res {
            Ok(Ok((p, q))) => {
                programmed = p;
                pending = q;
                np.done.send_modify(|d| d.count = count);
            }
            Ok(Err(e)) => {
                let msg = crate::util::chain(&e);
                tracing::warn!("network policies: {msg}");
                np.done.send_modify(|d| d.failed = Some((count, msg)));
                wait = Some(RETRY);
            }
            Err(e) => {
                tracing::warn!("network policies: sync task: {e}");
                wait = Some(RETRY);
            }
        }
        match wait {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
                let since = last.elapsed();
                if since < MIN_INTERVAL {
                    tokio::time::sleep(MIN_INTERVAL - since).await;
                }
            }
        }
    }
}

/// Programs `want` into each family's table: set elements only if the layout is `prev`'s,
/// else the whole table (one transaction per table, IPv4 first).
pub fn sync(
    nl: &mut Session,
    families: &[Family],
    prev: Option<&Wanted>,
    want: &Wanted,
    dns: &[IpAddr],
) -> Result<(), NetpolError> {
    let start = Instant::now();
    let changes = prev.and_then(|p| rules::diff(p, want));
    if changes.as_ref().is_some_and(|d| d.is_empty()) {
        return Ok(());
    }
    let what = match changes {
        Some(_) => "incremental sync",
        None => "full sync",
    };
    for &fam in families {
        let mut w = table::Writer::new(fam);
        match &changes {
            Some(d) => w.incremental(d),
            None => w.full(want, dns),
        }
        if w.messages > 0 {
            apply(nl, fam, w, what)?;
        }
    }
    tracing::debug!(policies = want.policies.len(), took = ?start.elapsed(), "network policies: {what}");
    Ok(())
}

/// Before the first sync: new pods' addresses into `pending`, in the table that is there (an
/// agent restart keeps the old rules until the sync), or a table of its own when there is none.
pub fn sync_pending(
    nl: &mut Session,
    families: &[Family],
    had: Option<&BTreeSet<IpAddr>>,
    fresh: &BTreeSet<IpAddr>,
    dns: &[IpAddr],
) -> Result<(), NetpolError> {
    for &fam in families {
        let exists =
            podlet_cni::nft::table_exists(fam.table(), table::TABLE).map_err(|source| {
                NetpolError::Apply {
                    family: fam.nft_name(),
                    table: table::TABLE,
                    what: "listing tables",
                    source,
                }
            })?;
        if exists {
            let new: BTreeSet<IpAddr> = match had {
                Some(h) => fresh.difference(h).copied().collect(),
                None => fresh.clone(),
            };
            let mut w = table::Writer::new(fam);
            w.add_pending(&new);
            if w.messages == 0 {
                continue;
            }
            match apply(nl, fam, w, "pending pods") {
                Ok(()) => continue,
                // A table of another layout (an older agent's): replaced below.
                Err(e) => tracing::warn!("network policies: {}", crate::util::chain(&e)),
            }
        }
        let mut w = table::Writer::new(fam);
        w.full(&Wanted::pending_only(fresh), dns);
        apply(nl, fam, w, "table for pending pods")?;
    }
    Ok(())
}

fn apply(
    nl: &mut Session,
    fam: Family,
    w: table::Writer,
    what: &'static str,
) -> Result<(), NetpolError> {
    nl.send(&w.batch.finalize())
        .map_err(|source| NetpolError::Apply {
            family: fam.nft_name(),
            table: table::TABLE,
            what,
            source,
        })
}

/// Bridged traffic between pods of this node passes the IP hooks only with br_netfilter and
/// `bridge-nf-call-iptables` (IPv6: `-ip6tables`) on (per network namespace): loaded and
/// turned on here.
fn ensure_bridge_netfilter(knob: &str) {
    if std::fs::metadata(knob).is_err() {
        match std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!("modprobe br_netfilter: {s}"),
            Err(e) => tracing::warn!("running modprobe br_netfilter: {e}"),
        }
    }
    match std::fs::read_to_string(knob) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(knob, "1") {
            Ok(()) => tracing::info!("turned on {knob}: bridged pod traffic passes the network policy rules"),
            Err(e) => tracing::error!("writing 1 to {knob}: {e}: network policies do not apply between pods of this node"),
        },
        Err(e) => tracing::error!("reading {knob} (br_netfilter): {e}: network policies do not apply between pods of this node"),
    }
}

/// `podlet cleanup`: removes the table; what was removed, for the user.
pub fn cleanup() -> std::io::Result<Vec<String>> {
    let removed = podlet_cni::nft::remove_table(table::TABLE).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("removing nftables table {}: {e}", table::TABLE),
        )
    })?;
    Ok(if removed {
        vec![format!(
            "the nftables table {} (network policies; ip and ip6 where there were both)",
            table::TABLE
        )]
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod netns_tests;
