//! The reconcile framework every control loop of the control plane runs on (the scheduler, the
//! garbage collector, the CSR approver, the workload controllers).
//!
//! A loop is kube-runtime's `Controller`: watch-fed caches (reflectors that relist on 410),
//! a keyed queue that runs one reconcile at a time per object, and `reconcile(object) ->
//! Action`. This module adds what every loop here shares:
//!
//! - acting **through the API**, never behind it: each component gets its own client with a
//!   client certificate from the cluster CA (`system:kube-scheduler`,
//!   `system:kube-controller-manager`) and the RBAC roles Kubernetes gives those identities
//!   ([`rbac`]), so several apiservers sharing one etcd see the same writes and authorization;
//! - **once per cluster**: components run while they hold their Lease in `kube-system`
//!   ([`leader`]), as kube-scheduler and kube-controller-manager do;
//! - **caches every reconcile can wait on** ([`Cache`]);
//! - **rate-limited retries**: a reconcile that fails is retried after 5 ms, doubling per
//!   consecutive failure of that object up to 1000 s (client-go's default rate limiter), and a
//!   success forgets the failures ([`run`]).

pub mod cache;
pub mod leader;
pub mod rbac;

pub use cache::Cache;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kube::runtime::controller::{Action, Controller};
use kube::Resource;

/// What a reconcile can fail with: an API error (retried), or a rule the object breaks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    /// A bug in a reconcile: it is logged and retried with backoff like any failure, rather
    /// than taking the whole controller down while this process keeps its lease.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

/// The message a panic carried.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Consecutive failures per object, for exponential retry delays.
#[derive(Default)]
struct Failures(Mutex<HashMap<String, u32>>);

const FIRST_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_secs(1000);

impl Failures {
    fn next_delay(&self, key: String) -> Duration {
        let mut m = self.0.lock().expect("failures lock");
        let n = m.entry(key).or_default();
        let delay = FIRST_RETRY.saturating_mul(1u32 << (*n).min(20));
        *n += 1;
        delay.min(MAX_RETRY)
    }

    fn forget(&self, key: &str) {
        self.0.lock().expect("failures lock").remove(key);
    }
}

/// What a reconcile gets: the loop's own context and the retry bookkeeping.
struct Shared<Ctx> {
    ctx: Arc<Ctx>,
    failures: Failures,
}

fn key_of<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Runs `controller` until it ends (it does not, unless its watches end), calling `reconcile`
/// for each object that changed or asked to be requeued. Errors are logged with the loop's
/// `name` and retried with per-object exponential back-off.
pub async fn run<K, Ctx, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    ctx: Arc<Ctx>,
) where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Debug + Clone + Eq + Hash + Unpin,
    Ctx: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let shared = Arc::new(Shared {
        ctx,
        failures: Failures::default(),
    });
    controller
        .run(
            move |obj: Arc<K>, shared: Arc<Shared<Ctx>>| {
                let reconcile = reconcile.clone();
                async move {
                    let key = key_of(&*obj);
                    tracing::trace!(controller = name, object = %key, "reconciling");
                    let action = AssertUnwindSafe(reconcile(obj, shared.ctx.clone()))
                        .catch_unwind()
                        .await
                        .map_err(|p| Error::Panicked(panic_message(&*p)))??;
                    tracing::trace!(controller = name, object = %key, ?action, "reconciled");
                    shared.failures.forget(&key);
                    Ok::<_, Error>(action)
                }
            },
            move |obj: Arc<K>, err: &Error, shared: Arc<Shared<Ctx>>| {
                let key = key_of(&*obj);
                tracing::warn!(controller = name, object = %key, "reconcile failed: {err}");
                Action::requeue(shared.failures.next_delay(key))
            },
            shared,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                // Objects that vanished before their turn, and watch errors the watcher
                // retries by itself.
                tracing::debug!(controller = name, "{e}");
            }
        })
        .await;
}

/// A component's identity and the client it acts with.
pub struct Component {
    pub client: kube::Client,
    /// Who holds the component's Lease: stable across restarts of this apiserver (kept in
    /// its data dir), so a restarted leader takes its lease back at once instead of waiting
    /// for it to expire.
    pub identity: String,
}

/// Where the components reach the apiserver they run beside.
pub fn loopback_url(listen: SocketAddr) -> String {
    let addr = if listen.ip().is_unspecified() {
        match listen {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], listen.port())),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port())),
        }
    } else {
        listen
    };
    format!("https://{addr}")
}

/// This apiserver's instance ID, made at its first start.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path: PathBuf = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let id = crate::api::objects::new_uid();
    std::fs::write(&path, &id).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(id)
}

/// A client for `user` (a certificate the cluster CA in `pki` signs) of the apiserver at
/// `server`.
pub async fn component(
    server: &str,
    pki: &Path,
    data_dir: &Path,
    user: &str,
) -> anyhow::Result<Component> {
    let (cert, key) = k8s_rules::pki::client_cert(pki, user, &[])?;
    let ca = std::fs::read_to_string(pki.join("ca.crt"))?;
    let yaml = crate::kubeconfig_for(server, &ca, &cert, &key);
    let kc = kube::config::Kubeconfig::from_yaml(&yaml)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    Ok(Component {
        client: kube::Client::try_from(cfg)?,
        identity: format!("{host}_{}", instance_id(data_dir)?),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::runtime::watcher;

    use super::*;
    use crate::testing::cluster::{eventually, Cluster, Task};

    #[test]
    fn retries_back_off_per_object_and_reset_on_success() {
        let f = Failures::default();
        let delays: Vec<Duration> = (0..4).map(|_| f.next_delay("a".into())).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40].map(Duration::from_millis),
            "doubling from 5 ms"
        );
        assert_eq!(f.next_delay("b".into()), FIRST_RETRY, "per object");
        f.forget("a");
        assert_eq!(f.next_delay("a".into()), FIRST_RETRY, "a success resets");
        for _ in 0..40 {
            f.next_delay("c".into());
        }
        assert_eq!(f.next_delay("c".into()), MAX_RETRY, "capped at 1000 s");
    }

    /// Each call's start, and how many calls are still to fail.
    #[derive(Default)]
    struct Flaky {
        calls: Mutex<Vec<Instant>>,
        failures_left: AtomicU32,
    }

    #[tokio::test]
    async fn a_failing_reconcile_is_retried_and_a_success_resets_the_backoff() {
        let c = Cluster::new().await;
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(c.admin(), "default");
        let cm = serde_json::from_value(serde_json::json!({"metadata": {"name": "flaky"}}));
        cms.create(&PostParams::default(), &cm.unwrap())
            .await
            .unwrap();
        let flaky = Arc::new(Flaky::default());
        flaky.failures_left.store(7, Ordering::SeqCst);
        let controller = Controller::new(cms.clone(), watcher::Config::default());
        let _loop = Task::spawn(run(
            "flaky",
            controller,
            |cm: Arc<ConfigMap>, f: Arc<Flaky>| async move {
                if cm.metadata.name.as_deref() != Some("flaky") {
                    return Ok(Action::await_change());
                }
                f.calls.lock().unwrap().push(Instant::now());
                let failing = f
                    .failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return Err(Error::Invalid("failing on purpose".into()));
                }
                Ok(Action::await_change())
            },
            flaky.clone(),
        ));
        let calls = |n: usize| {
            let flaky = flaky.clone();
            async move {
                eventually(&format!("{n} reconciles"), Duration::from_secs(10), || {
                    let calls = flaky.calls.lock().unwrap().clone();
                    async move { (calls.len() >= n).then_some(calls) }
                })
                .await
            }
        };
        let gaps = |calls: &[Instant]| -> Vec<Duration> {
            calls.windows(2).map(|w| w[1] - w[0]).collect()
        };

        // Seven failures, each retried after twice the delay before, then a success.
        let first = calls(8).await;
        let expected = [5, 10, 20, 40, 80, 160, 320].map(Duration::from_millis);
        for (gap, at_least) in gaps(&first).into_iter().zip(expected) {
            assert!(
                gap >= at_least,
                "retried after {gap:?}, before {at_least:?}"
            );
        }

        // A change after the success fails once more: retried after the first delay again,
        // not the 640 ms that an eighth consecutive failure would wait.
        flaky.failures_left.store(1, Ordering::SeqCst);
        cms.patch(
            "flaky",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"changed": "yes"}}})),
        )
        .await
        .unwrap();
        let all = calls(10).await;
        let retry = all[9] - all[8];
        assert!(
            retry >= FIRST_RETRY && retry < Duration::from_millis(320),
            "retried after {retry:?}"
        );
    }

    /// A panicking reconcile (a bug) is retried like a failure, and the controller goes on
    /// serving other objects: before, the panic ended the controller for good while its
    /// process kept the lease.
    #[tokio::test]
    async fn a_panicking_reconcile_is_retried_and_the_controller_lives_on() {
        let c = Cluster::new().await;
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(c.admin(), "default");
        let make = |name: &str| {
            serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": name}}))
                .unwrap()
        };
        cms.create(&PostParams::default(), &make("boom"))
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let controller = Controller::new(cms.clone(), watcher::Config::default());
        let _loop = Task::spawn(run(
            "panicky",
            controller,
            |cm: Arc<ConfigMap>, seen: Arc<Mutex<Vec<String>>>| async move {
                let name = cm.metadata.name.clone().unwrap_or_default();
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(name.clone());
                    seen.iter().filter(|n| **n == name).count() == 1
                };
                if name == "boom" && first {
                    panic!("a bug on purpose");
                }
                Ok(Action::await_change())
            },
            seen.clone(),
        ));
        let count = |name: &'static str, n: usize| {
            let seen = seen.clone();
            async move {
                let what = format!("{n} reconciles of {name}");
                eventually(&what, Duration::from_secs(10), || {
                    let k = seen.lock().unwrap().iter().filter(|x| *x == name).count();
                    async move { (k >= n).then_some(()) }
                })
                .await
            }
        };
        count("boom", 2).await;
        cms.create(&PostParams::default(), &make("after"))
            .await
            .unwrap();
        count("after", 1).await;
    }

    #[test]
    fn components_reach_the_apiserver_on_loopback_when_it_listens_everywhere() {
        assert_eq!(
            loopback_url("0.0.0.0:6443".parse().unwrap()),
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            loopback_url("[::]:6443".parse().unwrap()),
            "https://[::1]:6443"
        );
        assert_eq!(
            loopback_url("10.0.0.1:6443".parse().unwrap()),
            "https://10.0.0.1:6443"
        );
    }
}
