//! kube-controller-manager's loops, on the reconcile framework (`crate::reconcile`). They run
//! together, while this apiserver holds the `kube-controller-manager` Lease; `--controllers`
//! chooses which ([`Options`]).

pub mod cronjob;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod podgc;
pub mod replicaset;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod ttl;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// Every controller name `--controllers` knows, as kube-controller-manager spells them (its
/// aliases; the `…-controller` names it also takes are in [`FULL_NAMES`]).
pub const KNOWN: &[&str] = &[
    "cronjob",
    "csrapproving",
    "csrsigning",
    "daemonset",
    "deployment",
    "disruption",
    "endpoint",
    "endpointslice",
    "garbagecollector",
    "job",
    "namespace",
    "nodeipam",
    "nodelifecycle",
    "podgc",
    "replicaset",
    "replicationcontroller",
    "root-ca-cert-publisher",
    "service-lb",
    "serviceaccount",
    "statefulset",
    "taint-eviction-controller",
    "ttl-after-finished",
];

/// Known controllers that `*` leaves off (upstream's `disabledByDefault`; none of those is
/// built here yet).
pub const DISABLED_BY_DEFAULT: &[&str] = &[];

/// kube-controller-manager's canonical names (since 1.28) and the alias each stands for.
pub const FULL_NAMES: &[(&str, &str)] = &[
    ("cronjob-controller", "cronjob"),
    (
        "certificatesigningrequest-approving-controller",
        "csrapproving",
    ),
    ("certificatesigningrequest-signing-controller", "csrsigning"),
    ("daemonset-controller", "daemonset"),
    ("deployment-controller", "deployment"),
    ("disruption-controller", "disruption"),
    ("endpoints-controller", "endpoint"),
    ("endpointslice-controller", "endpointslice"),
    ("garbage-collector-controller", "garbagecollector"),
    ("job-controller", "job"),
    ("namespace-controller", "namespace"),
    ("node-ipam-controller", "nodeipam"),
    ("node-lifecycle-controller", "nodelifecycle"),
    ("pod-garbage-collector-controller", "podgc"),
    ("replicaset-controller", "replicaset"),
    ("replicationcontroller-controller", "replicationcontroller"),
    (
        "root-ca-certificate-publisher-controller",
        "root-ca-cert-publisher",
    ),
    ("service-lb-controller", "service-lb"),
    ("serviceaccount-controller", "serviceaccount"),
    ("statefulset-controller", "statefulset"),
    ("ttl-after-finished-controller", "ttl-after-finished"),
];

/// kube-controller-manager's options that podlet's controllers take.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `--controllers`: `*` (every controller on by default), `name` (on), `-name` (off).
    pub controllers: Vec<String>,
    /// `--terminated-pod-gc-threshold`: finished pods kept before PodGC deletes the oldest
    /// (0: none are deleted for that reason).
    pub terminated_pod_gc_threshold: i64,
    /// `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// `--cluster-cidr` and `--node-cidr-mask-size*`, for `nodeipam`.
    pub node_ipam: nodeipam::Config,
    /// `--node-monitor-period`, the grace periods, eviction rates and zone thresholds, for
    /// `nodelifecycle`.
    pub node_lifecycle: nodelifecycle::Config,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            controllers: vec!["*".into()],
            terminated_pod_gc_threshold: podgc::DEFAULT_THRESHOLD,
            max_endpoints_per_slice: endpointslice::DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            node_ipam: nodeipam::Config::default(),
            node_lifecycle: nodelifecycle::Config::default(),
        }
    }
}

fn canonical(name: &str) -> &str {
    FULL_NAMES
        .iter()
        .find(|(full, _)| *full == name)
        .map_or(name, |(_, alias)| alias)
}

impl Options {
    /// Checks every name, as kube-controller-manager does at startup.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.controllers {
            let name = canonical(c.strip_prefix('-').unwrap_or(c));
            if c != "*" && !KNOWN.contains(&name) {
                return Err(format!("{c:?} is not in the list of known controllers"));
            }
        }
        if self.max_endpoints_per_slice == 0 || self.max_endpoints_per_slice > 1000 {
            return Err("--max-endpoints-per-slice must be between 1 and 1000".into());
        }
        if self.enabled("nodeipam") {
            self.node_ipam.cidr_sets()?;
        }
        self.node_lifecycle.validate()?;
        Ok(())
    }

    /// `IsControllerEnabled`: an explicit `name` or `-name` decides; otherwise `*` turns on
    /// those not disabled by default.
    pub fn enabled(&self, name: &str) -> bool {
        let mut star = false;
        for c in &self.controllers {
            if c == "*" {
                star = true;
            } else if let Some(off) = c.strip_prefix('-') {
                if canonical(off) == name {
                    return false;
                }
            } else if canonical(c) == name {
                return true;
            }
        }
        star && !DISABLED_BY_DEFAULT.contains(&name)
    }
}

type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The enabled controllers' loops, run together by [`Loops::run`] (not spawned: aborting the
/// task that runs them, when the lease is lost, stops them all).
pub struct Loops<'a> {
    opts: &'a Options,
    loops: Vec<Loop>,
}

impl<'a> Loops<'a> {
    pub fn new(opts: &'a Options) -> Self {
        Loops {
            opts,
            loops: Vec::new(),
        }
    }

    /// Runs `fut` if any of `names` is enabled.
    pub fn spawn_if_any(
        &mut self,
        names: &[&'static str],
        fut: impl Future<Output = ()> + Send + 'static,
    ) {
        debug_assert!(names.iter().all(|n| KNOWN.contains(n)), "{names:?}");
        if names.iter().any(|n| self.opts.enabled(n)) {
            tracing::info!(controllers = ?names, "starting");
            self.loops.push(Box::pin(fut));
        } else {
            tracing::info!(controllers = ?names, "disabled by --controllers");
        }
    }

    pub fn spawn_if(&mut self, name: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        self.spawn_if_any(&[name], fut)
    }

    pub async fn run(self) {
        futures_util::future::join_all(self.loops).await;
    }
}

/// Runs every enabled controller until the process ends (or the task is aborted when the
/// lease is lost).
pub async fn run(client: kube::Client, pki: PathBuf, opts: Options) {
    let c = &client;
    let mut l = Loops::new(&opts);
    l.spawn_if("garbagecollector", gc::run(c.clone()));
    l.spawn_if(
        "replicaset",
        replicaset::run_for::<k8s_openapi::api::apps::v1::ReplicaSet>(c.clone()),
    );
    l.spawn_if(
        "replicationcontroller",
        replicaset::run_for::<k8s_openapi::api::core::v1::ReplicationController>(c.clone()),
    );
    l.spawn_if("deployment", deployment::run(c.clone()));
    l.spawn_if("daemonset", daemonset::run(c.clone()));
    l.spawn_if("statefulset", statefulset::run(c.clone()));
    l.spawn_if("job", job::run(c.clone()));
    l.spawn_if("cronjob", cronjob::run(c.clone()));
    l.spawn_if("ttl-after-finished", ttl::run(c.clone()));
    l.spawn_if_any(
        &["csrapproving", "csrsigning"],
        csr::run(c.clone(), pki.clone()),
    );
    l.spawn_if(
        "endpointslice",
        endpointslice::run(c.clone(), opts.max_endpoints_per_slice),
    );
    l.spawn_if("endpoint", endpoints::run(c.clone()));
    l.spawn_if("disruption", disruption::run(c.clone()));
    l.spawn_if(
        "podgc",
        podgc::run(c.clone(), opts.terminated_pod_gc_threshold),
    );
    l.spawn_if("namespace", namespace::run(c.clone()));
    l.spawn_if("nodeipam", nodeipam::run(c.clone(), opts.node_ipam.clone()));
    l.spawn_if(
        "nodelifecycle",
        nodelifecycle::run(c.clone(), opts.node_lifecycle.clone()),
    );
    l.spawn_if(
        "taint-eviction-controller",
        nodelifecycle::tainteviction::run(c.clone()),
    );
    l.spawn_if("serviceaccount", serviceaccount::run(c.clone()));
    l.spawn_if("service-lb", servicelb::run(c.clone()));
    l.spawn_if(
        "root-ca-cert-publisher",
        serviceaccount::run_root_ca_publisher(c.clone(), pki.join("ca.crt")),
    );
    l.run().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Options {
        Options {
            controllers: list.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        }
    }

    #[test]
    fn controllers_flag_enables_and_disables_as_kube_controller_manager() {
        // (flag, controller, enabled)
        let table: &[(&[&str], &str, bool)] = &[
            (&["*"], "cronjob", true),
            (&["*"], "podgc", true),
            (&["*", "-cronjob"], "cronjob", false),
            (&["*", "-cronjob"], "job", true),
            (&["-cronjob", "*"], "cronjob", false),
            (&["job"], "job", true),
            (&["job"], "cronjob", false),
            (&[], "job", false),
            (&["*", "-endpoints-controller"], "endpoint", false),
            (&["pod-garbage-collector-controller"], "podgc", true),
            (&["disruption", "-disruption"], "disruption", true),
        ];
        for (flag, name, want) in table {
            let o = opts(flag);
            assert!(o.validate().is_ok(), "{flag:?}");
            assert_eq!(o.enabled(name), *want, "--controllers={flag:?}: {name}");
        }
        assert_eq!(Options::default().controllers, ["*"]);
    }

    #[test]
    fn unknown_controllers_are_refused_at_startup() {
        for bad in [&["*", "-cronjobs"][..], &["bogus"], &["-"]] {
            let err = opts(bad).validate().unwrap_err();
            assert!(
                err.ends_with("is not in the list of known controllers"),
                "{err}"
            );
        }
        assert!(opts(&["*", "-cronjob", "endpoint"]).validate().is_ok());
    }
}
