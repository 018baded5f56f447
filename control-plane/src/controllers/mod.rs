//! kube-controller-manager's loops, on the reconcile framework (`crate::reconcile`). They run
//! together, while this apiserver holds the `kube-controller-manager` Lease.

pub mod csr;
pub mod events;
pub mod gc;
pub mod job;
pub mod podcontrol;

use std::path::PathBuf;

/// Runs every controller until the process ends (or the task is aborted when the lease is
/// lost).
pub async fn run(client: kube::Client, pki: PathBuf) {
    tokio::join!(
        gc::run(client.clone()),
        csr::run(client.clone(), pki),
        job::run(client),
    );
}
