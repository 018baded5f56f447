//! The cluster's PKI, made at first start under `<data-dir>/pki`: a CA, the apiserver's serving
//! certificate (for loopback, the host's name and the `kubernetes` service names), and an
//! administrator's client certificate (`CN=kubernetes-admin, O=system:masters`). Keys are 0600.
//! Later starts reuse what is there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_rules::files::write_private;
use k8s_rules::pki::set_validity;
pub use k8s_rules::pki::{client_cert, identity, load_ca, server_tls};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
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
        set_validity(&mut p, 3650);
        let ca = p.self_signed(&key)?;
        write_private(&dir.join("ca.key"), key.serialize_pem().as_bytes())?;
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
        set_validity(&mut p, 365);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca, &ca_key)?;
        write_private(&dir.join("apiserver.key"), key.serialize_pem().as_bytes())?;
        std::fs::write(dir.join("apiserver.crt"), cert.pem())?;
    }
    if !dir.join("admin.crt").exists() {
        let (cert, key) = client_cert(dir, "kubernetes-admin", &["system:masters"])?;
        write_private(&dir.join("admin.key"), key.as_bytes())?;
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
        let read = |f: &str| {
            let p = self.dir.join(f);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(server_tls(
            &read("apiserver.crt")?,
            &read("apiserver.key")?,
            &read("ca.crt")?,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

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
