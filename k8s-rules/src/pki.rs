//! Certificates of a cluster CA kept as `ca.crt`/`ca.key` in a directory: client certificates
//! the apiserver recognises (`CN` is the user, each `O` a group), TLS serving configurations
//! that verify such clients, and the identity a verified client certificate carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn read(path: PathBuf) -> Result<String, PkiError> {
    std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Certificate { what, source }
}

/// Not valid before an hour ago (clocks differ), for `days`.
pub fn set_validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// The CA in `dir` as an issuer (re-made from its files: the key and name are what matter).
pub fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let ca_pem = read(dir.join("ca.crt"))?;
    let key_path = dir.join("ca.key");
    let key = KeyPair::from_pem(&read(key_path.clone())?)
        .map_err(cert_err(format!("{}", key_path.display())))?;
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .and_then(|p| p.self_signed(&key))
        .map_err(cert_err(format!("{}", dir.join("ca.crt").display())))?;
    Ok((ca, key))
}

/// A client certificate for user `cn` in groups `orgs`, valid for a year, signed by the CA in
/// `dir`: (certificate PEM, key PEM).
pub fn client_cert(dir: &Path, cn: &str, orgs: &[&str]) -> Result<(String, String), PkiError> {
    let (ca, ca_key) = load_ca(dir)?;
    let what = || format!("client certificate for {cn}");
    let key = KeyPair::generate().map_err(cert_err(what()))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut p, 365);
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(cert_err(what()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// TLS serving with `cert_pem`/`key_pem` that verifies client certificates against
/// `client_ca_pem` when a client offers one (clients without one may still use tokens).
pub fn server_tls(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    let tls = |e: &dyn std::fmt::Display| PkiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls(&format!("serving key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let c = c.map_err(|e| tls(&format!("client CA: {e}")))?;
        roots.add(c).map_err(|e| tls(&format!("client CA: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// User and groups of a verified client certificate: CN and O, as Kubernetes reads them.
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
    use rcgen::{BasicConstraints, IsCa};

    /// A CA in `dir`, as the control plane makes one.
    fn make_ca(dir: &Path) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "test-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut p, 10);
        let ca = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
    }

    #[test]
    fn client_certificates_carry_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path());
        let (cert, key) = client_cert(dir.path(), "system:node:n1", &["system:nodes"]).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(
            identity(&der),
            Some(("system:node:n1".into(), vec!["system:nodes".into()]))
        );
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        server_tls(&cert, &key, &ca).unwrap();
        assert!(matches!(
            server_tls(&cert, "not a key", &ca),
            Err(PkiError::Tls(m)) if m.contains("serving key")
        ));
        let missing = client_cert(&dir.path().join("nowhere"), "x", &[]).unwrap_err();
        assert!(missing.to_string().ends_with("nowhere/ca.crt"), "{missing}");
        assert!(
            std::error::Error::source(&missing).is_some(),
            "the errno is the source"
        );
    }
}
