//! kube-controller-manager's loops, on the reconcile framework (`crate::reconcile`). They run
//! together, while this apiserver holds the `kube-controller-manager` Lease.

pub mod cronjob;
pub mod csr;
pub mod deployment;
pub mod daemonset;
pub mod events;
pub mod gc;
pub mod history;
pub mod job;
pub mod podcontrol;
pub mod replicaset;
pub mod statefulset;
pub mod ttl;

use std::path::PathBuf;

/// Runs every controller until the process ends (or the task is aborted when the lease is
/// lost).
pub async fn run(client: kube::Client, pki: PathBuf) {
    tokio::join!(
        gc::run(client.clone()),
        csr::run(client.clone(), pki),
        replicaset::run(client.clone()),
        deployment::run(client.clone()),
        daemonset::run(client.clone()),
        statefulset::run(client.clone()),
        job::run(client.clone()),
        cronjob::run(client.clone()),
        ttl::run(client),
    );
}
