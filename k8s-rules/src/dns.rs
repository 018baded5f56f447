//! A pod's `/etc/resolv.conf`, by the kubelet's rules (`pkg/kubelet/network/dns`): the DNS
//! policy (ClusterFirst, ClusterFirstWithHostNet, Default, None), the cluster's search path,
//! `spec.dnsConfig` merged in, and the limits (3 nameservers; 32 search domains of at most 253
//! characters, 2048 characters in all) with the kubelet's `DNSConfigForming` and
//! `MissingClusterDNS` warnings; and a pod's host name, domain and kernel host name
//! (`hostname`, `subdomain`, `setHostnameAsFQDN`).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// Nameservers a resolver reads at most (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains (ExpandedDNSConfig, GA since Kubernetes 1.28).
pub const MAX_SEARCH_PATHS: usize = 32;
/// Characters of the search line (ExpandedDNSConfig).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// A search domain longer than this aborts some resolvers (glibc 2.28): it is dropped.
pub const MAX_DOMAIN_LEN: usize = 253;

/// What a resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvConf {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads a resolv.conf as the kubelet does: nameservers accumulate, the last `search` and
    /// the last `options` line win, a search domain's trailing dot is dropped. Returns the
    /// problems found beside what could be read.
    pub fn parse(text: &str) -> (ResolvConf, Vec<String>) {
        let mut r = ResolvConf::default();
        let mut problems = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => match fields.next() {
                    Some(s) => r.servers.push(s.to_string()),
                    None => problems.push("nameserver list is empty".to_string()),
                },
                Some("search") => {
                    r.searches = fields
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect()
                }
                Some("options") => r.options = fields.map(String::from).collect(),
                _ => {}
            }
        }
        (r, problems)
    }

    /// The file, as container runtimes write it for the kubelet.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The node's DNS settings (kubelet's `--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default)]
pub struct NodeDns {
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The node's resolv.conf as read; None when `--resolv-conf` is empty (no host DNS).
    pub host: Option<ResolvConf>,
    pub node_ips: Vec<IpAddr>,
}

/// Whom a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Node,
    Pod,
}

/// A Warning event the kubelet records while forming a pod's DNS configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub subject: Subject,
    pub reason: &'static str,
    pub message: String,
}

enum Kind {
    Cluster,
    Host,
    None,
}

fn kind(pod: &Pod) -> Kind {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    match spec.and_then(|s| s.dns_policy.as_deref()) {
        Some("None") => Kind::None,
        Some("ClusterFirstWithHostNet") => Kind::Cluster,
        Some("Default") => Kind::Host,
        // ClusterFirst, the default; a hostNetwork pod falls back to the node's settings. An
        // unknown policy (the apiserver refuses those) is ClusterFirst, as in the kubelet.
        _ if host_network => Kind::Host,
        _ => Kind::Cluster,
    }
}

fn push_unique(into: &mut Vec<String>, from: impl IntoIterator<Item = String>) {
    for s in from {
        if !into.contains(&s) {
            into.push(s);
        }
    }
}

/// `pod`'s resolv.conf on this node, and the warnings to record.
pub fn pod_dns(node: &NodeDns, pod: &Pod) -> (ResolvConf, Vec<Warning>) {
    let mut warnings = Vec::new();
    let host = node.host.clone().unwrap_or_default();
    let mut conf = match kind(pod) {
        Kind::None => ResolvConf::default(),
        Kind::Cluster if !node.cluster_dns.is_empty() => {
            let mut searches = Vec::new();
            if !node.cluster_domain.is_empty() {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let d = &node.cluster_domain;
                searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            }
            push_unique(&mut searches, host.searches);
            ResolvConf {
                servers: node.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        kind => {
            if matches!(kind, Kind::Cluster) {
                let msg = "kubelet does not have ClusterDNS IP configured and cannot create Pod \
                           using \"ClusterFirst\" policy. Falling back to \"Default\" policy.";
                let (ns, name) = (
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or_default(),
                );
                warnings.push(Warning {
                    subject: Subject::Node,
                    reason: "MissingClusterDNS",
                    message: msg.into(),
                });
                warnings.push(Warning {
                    subject: Subject::Pod,
                    reason: "MissingClusterDNS",
                    message: format!("pod: \"{name}_{ns}({})\". {msg}", uid(pod)),
                });
            }
            let mut c = host;
            if node.host.is_none() {
                // No resolv.conf for the node: the local resolver, as the kubelet's fallback.
                c.servers = node
                    .node_ips
                    .iter()
                    .map(|ip| if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.to_string())
                    .collect();
                if c.servers.is_empty() {
                    c.servers.push("127.0.0.1".into());
                }
                c.searches = vec![".".into()];
            }
            c
        }
    };
    if let Some(extra) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        push_unique(
            &mut conf.servers,
            extra.nameservers.clone().unwrap_or_default(),
        );
        push_unique(
            &mut conf.searches,
            extra.searches.clone().unwrap_or_default(),
        );
        for o in extra.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            let opt = match &o.value {
                Some(v) if !v.is_empty() => format!("{name}:{v}"),
                _ => name.clone(),
            };
            // A pod's option replaces the one of the same name, where it stood.
            match conf
                .options
                .iter()
                .position(|x| x.split(':').next() == Some(name.as_str()))
            {
                Some(i) => conf.options[i] = opt,
                None => conf.options.push(opt),
            }
        }
    }
    fit_limits(&mut conf, &mut warnings);
    (conf, warnings)
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

fn fit_limits(conf: &mut ResolvConf, warnings: &mut Vec<Warning>) {
    if conf.servers.len() > MAX_NAMESERVERS {
        conf.servers.truncate(MAX_NAMESERVERS);
        warnings.push(Warning {
            subject: Subject::Pod,
            reason: "DNSConfigForming",
            message: format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the \
                 applied nameserver line is: {}",
                conf.servers.join(" ")
            ),
        });
    }
    let mut exceeded = false;
    if conf.searches.len() > MAX_SEARCH_PATHS {
        conf.searches.truncate(MAX_SEARCH_PATHS);
        exceeded = true;
    }
    let before = conf.searches.len();
    conf.searches.retain(|s| s.len() <= MAX_DOMAIN_LEN);
    exceeded |= conf.searches.len() != before;
    while conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
        exceeded = true;
    }
    if exceeded {
        warnings.push(Warning {
            subject: Subject::Pod,
            reason: "DNSConfigForming",
            message: format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                conf.searches.join(" ")
            ),
        });
    }
}

/// Whether `s` is an RFC 1123 label (names of namespaces and containers, `hostname`,
/// `subdomain`): lower-case alphanumerics and `-`, at most 63, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain: dot-separated labels, at most 253 in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A pod's host name and, with `spec.subdomain`, its domain
/// (`<subdomain>.<namespace>.svc.<cluster domain>`), as the kubelet's
/// GeneratePodHostNameAndDomain: `spec.hostname` or the pod's name, cut to 63 characters
/// without a trailing `-` or `.`.
pub fn pod_hostname(pod: &Pod, cluster_domain: &str) -> Result<(String, Option<String>), String> {
    let spec = pod.spec.as_ref();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut host = match spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
    {
        Some(h) if !is_dns_label(h) => {
            return Err(format!("pod Hostname {h:?} is not a valid DNS label"))
        }
        Some(h) => h.to_string(),
        None => name,
    };
    if host.len() > 63 {
        host.truncate(63);
        while host.ends_with('-') || host.ends_with('.') {
            host.pop();
        }
    }
    let domain = match spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|d| !d.is_empty())
    {
        Some(d) if !is_dns_label(d) => {
            return Err(format!("pod Subdomain {d:?} is not a valid DNS label"))
        }
        Some(d) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            Some(format!("{d}.{ns}.svc.{cluster_domain}"))
        }
        None => None,
    };
    Ok((host, domain))
}

/// The kernel's host name for the pod: its FQDN with `setHostnameAsFQDN` and a subdomain
/// (at most 64 characters, the kernel's nodename field), else its host name.
pub fn kernel_hostname(pod: &Pod, host: &str, domain: Option<&str>) -> Result<String, String> {
    let as_fqdn = pod
        .spec
        .as_ref()
        .and_then(|s| s.set_hostname_as_fqdn)
        .unwrap_or(false);
    match domain {
        Some(d) if as_fqdn => {
            let fqdn = format!("{host}.{d}");
            if fqdn.len() > 64 {
                return Err(format!(
                    "failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} \
                     is too long (64 characters is the max, {} characters requested)",
                    fqdn.len()
                ));
            }
            Ok(fqdn)
        }
        _ => Ok(host.to_string()),
    }
}

#[cfg(test)]
mod tests;
