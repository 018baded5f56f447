//! Joining a control plane as the kubelet's TLS bootstrap does it: a bootstrap token creates a
//! CertificateSigningRequest for `system:node:<name>` (group `system:nodes`) with the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer; once the control plane approves and signs
//! it, the node's kubeconfig (CA, certificate, key) is written under the root dir and used from
//! then on. Certificates are renewed the same way, authenticated by the current one.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Who a kubeconfig authenticates as.
pub enum User<'a> {
    Cert { cert_pem: &'a str, key_pem: &'a str },
    Token(&'a str),
}

/// A kubeconfig for one cluster and one user.
pub fn kubeconfig(server: &str, ca_pem: &str, user: User<'_>) -> String {
    let user = match user {
        User::Cert { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            B64.encode(cert_pem),
            B64.encode(key_pem)
        ),
        User::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: podlet\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: node\n  context:\n    cluster: podlet\n    user: node\ncurrent-context: node\nusers:\n- name: node\n  user:\n{user}",
        B64.encode(ca_pem)
    )
}

pub async fn client(kubeconfig_yaml: &str) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The client certificate (PEM) and the seconds of validity it has left, from a kubeconfig.
pub fn client_cert(kubeconfig_yaml: &str) -> Option<(String, i64, i64)> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml).ok()?;
    let data = kc
        .auth_infos
        .first()?
        .auth_info
        .as_ref()?
        .client_certificate_data
        .clone()?;
    let pem = String::from_utf8(B64.decode(data).ok()?).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let v = cert.validity();
    Some((
        pem.clone(),
        v.not_before.timestamp(),
        v.not_after.timestamp(),
    ))
}

/// The cluster CA (PEM) a kubeconfig trusts.
pub fn cluster_ca(kubeconfig_yaml: &str) -> Option<String> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig_yaml).ok()?;
    let data = kc
        .clusters
        .first()?
        .cluster
        .as_ref()?
        .certificate_authority_data
        .clone()?;
    String::from_utf8(B64.decode(data).ok()?).ok()
}

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds) is due for
/// renewal: the kubelet renews somewhere past 70–90% of the lifetime; podlet at 80%.
pub fn due_for_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    now >= not_before + (not_after - not_before) * 8 / 10
}

/// Asks the control plane for a node client certificate and waits until it is issued.
/// Returns (certificate PEM, key PEM).
pub async fn request_certificate(client: &kube::Client, node: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let request = params.serialize_request(&key)?.pem()?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    csr.metadata.generate_name = Some("node-csr-".into());
    let created = csrs
        .create(&PostParams::default(), &csr)
        .await
        .context("creating the certificate signing request")?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the node certificate to be approved and issued");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    loop {
        match csrs.get(&name).await {
            Ok(c) => {
                let st = c.status.unwrap_or_default();
                for cond in st.conditions.iter().flatten() {
                    if matches!(cond.type_.as_str(), "Denied" | "Failed") && cond.status == "True" {
                        bail!(
                            "certificate signing request {name} {}: {}",
                            cond.type_.to_lowercase(),
                            cond.message.clone().unwrap_or_default()
                        );
                    }
                }
                if let Some(cert) = st.certificate.filter(|c| !c.0.is_empty()) {
                    let cert = String::from_utf8(cert.0).context("issued certificate")?;
                    return Ok((cert, key.serialize_pem()));
                }
            }
            Err(e) => tracing::warn!(csr = %name, "reading the certificate signing request: {e}"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("certificate signing request {name} was not issued within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node's client: the kubeconfig at `path` while its certificate is valid, otherwise a new
/// one from a bootstrap token.
pub async fn join(
    path: &Path,
    node: &str,
    server: &str,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<kube::Client> {
    if let Ok(yaml) = std::fs::read_to_string(path) {
        let now = jiff::Timestamp::now().as_second();
        match client_cert(&yaml) {
            Some((_, _, not_after)) if not_after > now => {
                return client(&yaml)
                    .await
                    .with_context(|| format!("loading {}", path.display()));
            }
            _ => tracing::warn!(
                kubeconfig = %path.display(),
                "the node certificate has expired or cannot be read: joining again"
            ),
        }
    }
    let (Some(token), Some(ca)) = (token, ca) else {
        bail!(
            "no valid node kubeconfig at {}: the first join needs --token and --certificate-authority",
            path.display()
        );
    };
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("reading --certificate-authority {}", ca.display()))?;
    if !ca_pem.contains("BEGIN CERTIFICATE") {
        bail!(
            "--certificate-authority {}: not a PEM certificate",
            ca.display()
        );
    }
    let bootstrap = client(&kubeconfig(server, &ca_pem, User::Token(token))).await?;
    let (cert_pem, key_pem) = request_certificate(&bootstrap, node).await?;
    let yaml = kubeconfig(
        server,
        &ca_pem,
        User::Cert {
            cert_pem: &cert_pem,
            key_pem: &key_pem,
        },
    );
    k8s_rules::files::write_private(path, yaml.as_bytes())?;
    tracing::info!(kubeconfig = %path.display(), "joined the cluster");
    client(&yaml).await
}

/// Renews the node certificate before it expires; the new kubeconfig replaces the old one and
/// is sent on `tx` so every task switches to it.
pub async fn rotate(
    path: std::path::PathBuf,
    node: String,
    tx: tokio::sync::watch::Sender<kube::Client>,
) {
    loop {
        let yaml = std::fs::read_to_string(&path).unwrap_or_default();
        let Some((_, nb, na)) = client_cert(&yaml) else {
            return;
        };
        let now = jiff::Timestamp::now().as_second();
        if !due_for_renewal(nb, na, now) {
            let wait = (nb + (na - nb) * 8 / 10 - now).clamp(1, 3600);
            tokio::time::sleep(Duration::from_secs(wait as u64)).await;
            continue;
        }
        let current = tx.borrow().clone();
        match request_certificate(&current, &node).await {
            Ok((cert_pem, key_pem)) => {
                let kc = kube::config::Kubeconfig::from_yaml(&yaml).ok();
                let cluster = kc
                    .as_ref()
                    .and_then(|k| k.clusters.first())
                    .and_then(|c| c.cluster.clone());
                let (Some(server), Some(ca)) = (
                    cluster.as_ref().and_then(|c| c.server.clone()),
                    cluster_ca(&yaml),
                ) else {
                    tracing::error!(kubeconfig = %path.display(), "no cluster in the node kubeconfig");
                    return;
                };
                let yaml = kubeconfig(
                    &server,
                    &ca,
                    User::Cert {
                        cert_pem: &cert_pem,
                        key_pem: &key_pem,
                    },
                );
                match k8s_rules::files::write_private(&path, yaml.as_bytes()) {
                    Ok(()) => match client(&yaml).await {
                        Ok(c) => {
                            tracing::info!("node certificate renewed");
                            let _ = tx.send(c);
                        }
                        Err(e) => tracing::error!("renewed kubeconfig: {e:#}"),
                    },
                    Err(e) => tracing::error!("{e:#}"),
                }
            }
            Err(e) => {
                tracing::warn!("renewing the node certificate: {e:#}");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_eighty_percent() {
        assert!(!due_for_renewal(0, 100, 79));
        assert!(due_for_renewal(0, 100, 80));
        assert!(due_for_renewal(0, 100, 200));
    }

    #[test]
    fn kubeconfig_round_trips_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let yaml = kubeconfig(
            "https://127.0.0.1:6443",
            &cert.pem(),
            User::Cert {
                cert_pem: &cert.pem(),
                key_pem: &key.serialize_pem(),
            },
        );
        let (pem, nb, na) = client_cert(&yaml).unwrap();
        assert_eq!(pem, cert.pem());
        assert!(na > nb);
        assert!(client_cert(&kubeconfig("https://x", "", User::Token("a.b"))).is_none());
    }
}
