//! Kubernetes' rules, written once and shared by the agent (kubelet side), the apiserver, the
//! scheduler and the controllers, as `k8s.io/component-helpers` and `k8s.io/apimachinery` are
//! shared upstream. Pure functions over k8s-openapi types with table tests; no I/O except the
//! file and PKI helpers.
//!
//! - [`quantity`]: exact resource quantities (integer milli-units, never floating point).
//! - [`resources`]: a container's and a pod's effective requests and limits.
//! - [`qos`]: the pod QoS class.
//! - [`taints`]: tolerations against taints.
//! - [`nodeaffinity`]: node selectors and required node affinity.
//! - [`labels`]: label selectors, in their string form and as `metav1.LabelSelector`.
//! - [`pods`]: whether a pod is active, ready, available, and which pods a controller removes first.
//! - [`cron`]: CronJob schedules (robfig/cron's standard parser) and their next times.
//! - [`dns`]: a pod's resolv.conf (DNS policy, dnsConfig, limits) as the kubelet forms it.
//! - [`duration`]: Go durations as Kubernetes flags and config files write them.
//! - [`netpol`]: NetworkPolicy's default policy types and ipBlock CIDRs.
//! - [`jobindexes`]: sets of Job completion indexes as their status strings (`0-2,4`).
//! - [`files`]: the atomic write of a private file.
//! - [`pki`]: certificates for clients and servers of the cluster CA.
//! - [`cidrs`]: dual-stack ranges (`--service-cluster-ip-range`, `--cluster-cidr`).

pub mod cidrs;
pub mod cron;
pub mod dns;
pub mod duration;
pub mod files;
pub mod jobindexes;
pub mod labels;
pub mod netpol;
pub mod nodeaffinity;
pub mod pki;
pub mod pods;
pub mod qos;
pub mod quantity;
pub mod resources;
pub mod taints;
