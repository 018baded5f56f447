//! The cluster's PKI, made at first start under `<data-dir>/pki`: a CA, the apiserver's serving
//! certificate (for loopback, the host's name and the `kubernetes` service names), and an
//! administrator's client certificate (`CN=kubernetes-admin, O=system:masters`). Keys are 0600.
//! Later starts reuse what is there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

/// Writes a file only its owner can read (keys, kubeconfigs with credentials).
pub fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data.as_bytes())?;
    Ok(())
}

fn validity(p: &mut CertificateParams, years: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(365 * years);
}

/// The CA as an issuer (re-created from its files; the key and name are what matter).
pub fn load_ca(dir: &Path) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt"))?;
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key"))?)?;
    let params = CertificateParams::from_ca_cert_pem(&ca_pem)?;
    Ok((params.self_signed(&key)?, key))
}

/// Signs a client certificate for `cn` in groups `orgs`.
pub fn client_cert(dir: &Path, cn: &str, orgs: &[&str]) -> anyhow::Result<(String, String)> {
    let (ca, ca_key) = load_ca(dir)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, 1);
    let cert = p.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes (or reads) the PKI in `dir`; `sans` are the serving certificate's extra names.
pub fn ensure(dir: &Path, sans: &[String]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !dir.join("ca.crt").exists() {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "podlet-ca");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, 10);
        let ca = p.self_signed(&key)?;
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;
    }
    if !dir.join("apiserver.crt").exists() {
        let (ca, ca_key) = load_ca(dir)?;
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        if let Ok(h) = nix::unistd::gethostname() {
            names.push(h.to_string_lossy().into_owned());
        }
        names.extend(sans.iter().cloned());
        names.sort();
        names.dedup();
        let mut p = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut p, 1);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        write_private(&dir.join("apiserver.key"), &key.serialize_pem())?;
        std::fs::write(dir.join("apiserver.crt"), cert.pem())?;
    }
    if !dir.join("admin.crt").exists() {
        let (cert, key) = client_cert(dir, "kubernetes-admin", &["system:masters"])?;
        write_private(&dir.join("admin.key"), &key)?;
        std::fs::write(dir.join("admin.crt"), cert)?;
    }
    Ok(Pki {
        dir: dir.to_path_buf(),
        ca_pem: std::fs::read_to_string(dir.join("ca.crt"))?,
        admin_cert_pem: std::fs::read_to_string(dir.join("admin.crt"))?,
        admin_key_pem: std::fs::read_to_string(dir.join("admin.key"))?,
    })
}

impl Pki {
    /// TLS for the apiserver: its certificate, and client certificates verified against the CA
    /// when presented (requests without one authenticate by token, or are anonymous).
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        server_tls(
            &std::fs::read_to_string(self.dir.join("apiserver.crt"))?,
            &std::fs::read_to_string(self.dir.join("apiserver.key"))?,
            &std::fs::read_to_string(self.dir.join("ca.crt"))?,
        )
    }
}

/// TLS serving with `cert_pem`/`key_pem` that verifies client certificates against
/// `client_ca_pem` when a client offers one (others may still use tokens).
pub fn server_tls(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// User and groups from a verified client certificate: CN and O, as Kubernetes reads them.
pub fn identity(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = c.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure(dir.path(), &["10.0.0.1".into()]).unwrap();
        pki.server_config().unwrap();
        let der = CertificateDer::from_pem_slice(pki.admin_cert_pem.as_bytes()).unwrap();
        assert_eq!(
            identity(&der),
            Some(("kubernetes-admin".into(), vec!["system:masters".into()]))
        );
        let again = ensure(dir.path(), &[]).unwrap();
        assert_eq!(again.ca_pem, pki.ca_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (cert, _) = client_cert(dir.path(), "bob", &["devs"]).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(identity(&der).unwrap().0, "bob");
    }
}
