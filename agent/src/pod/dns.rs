//! A pod's `/etc/resolv.conf` from the node's DNS settings (`--cluster-dns`,
//! `--cluster-domain`, `--resolv-conf`), by the kubelet's rules in `k8s_rules::dns`.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_rules::dns::{pod_dns, NodeDns, ResolvConf, Warning};

use crate::config::Config;

/// The file's text and the warnings to record, or the error reading `--resolv-conf` (which,
/// as in the kubelet, fails the pod's sandbox).
pub fn resolv_conf(
    cfg: &Config,
    node_ip: Option<IpAddr>,
    pod: &Pod,
) -> std::io::Result<(String, Vec<Warning>)> {
    let host = match &cfg.resolv_conf {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })?;
            let (conf, problems) = ResolvConf::parse(&text);
            if !problems.is_empty() {
                let p = problems.join("; ");
                return Err(std::io::Error::other(format!("{}: {p}", path.display())));
            }
            Some(conf)
        }
    };
    let node = NodeDns {
        cluster_dns: cfg.cluster_dns.clone(),
        cluster_domain: cfg.cluster_domain.clone(),
        host,
        node_ips: node_ip.into_iter().collect(),
    };
    let (conf, warnings) = pod_dns(&node, pod);
    Ok((conf.render(), warnings))
}
