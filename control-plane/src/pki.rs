//! The cluster's PKI, made at first start under `<data-dir>/pki`: a CA, the apiserver's serving
//! certificate (for loopback, the host's name, the `kubernetes` service names and IP, and every
//! address the apiserver is reached at: [`serving_names`]), and an administrator's client
//! certificate (`CN=kubernetes-admin, O=system:masters`). Keys are 0600. Later starts reuse what
//! is there, except a serving certificate whose names differ from the wanted ones: that one is
//! made again, signed by the same CA (as k3s does when `--tls-san` changes).

use std::collections::BTreeSet;
use std::net::IpAddr;
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
    let wanted = wanted_names(sans)?;
    let crt = dir.join("apiserver.crt");
    let current = match std::fs::read_to_string(&crt) {
        Ok(pem) => Some(names_of(&pem).with_context(|| format!("reading {}", crt.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", crt.display())),
    };
    if current.as_ref() != Some(&wanted) {
        if let Some(old) = &current {
            tracing::info!(
                added = ?wanted.difference(old).collect::<Vec<_>>(),
                removed = ?old.difference(&wanted).collect::<Vec<_>>(),
                "the serving certificate's names changed: making it again"
            );
        }
        let (ca, ca_key) = load_ca(dir)?;
        let mut p = CertificateParams::new(wanted.into_iter().collect::<Vec<_>>())?;
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
        std::fs::write(&crt, cert.pem())?;
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

/// The serving certificate's names: the fixed ones (loopback, `localhost`, the host's name, the
/// `kubernetes` service's DNS names) and `extra`, IPs in their canonical form, DNS names in
/// lower case.
fn wanted_names(extra: &[String]) -> anyhow::Result<BTreeSet<String>> {
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
    names.extend(extra.iter().cloned());
    names
        .iter()
        .map(|n| canonical_name(n))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)
}

/// An IP in its canonical form, or a DNS name (optionally a `*.` wildcard) in lower case.
pub fn canonical_name(name: &str) -> Result<String, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is neither an IP address nor a DNS name (RFC 1123 labels joined by dots)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// The DNS names and IPs a PEM certificate is valid for.
fn names_of(pem: &str) -> anyhow::Result<BTreeSet<String>> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.insert(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                        _ => continue,
                    };
                    names.insert(ip.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// Where clients reach this apiserver, for its serving certificate.
pub struct Reach<'a> {
    /// The listening address (`0.0.0.0`/`::`: every address of the host's interfaces).
    pub listen: IpAddr,
    /// `--advertise-address`.
    pub advertise: Option<IpAddr>,
    /// `--tls-san`: extra names and IPs.
    pub tls_san: &'a [String],
    /// The `kubernetes` service's cluster IP (the service range's first address).
    pub service_ip: IpAddr,
}

/// The serving certificate's extra names for `reach`: the listening address (or, listening on
/// every address, the global addresses of this network namespace's interfaces, IPv4 ones for
/// `0.0.0.0`, all for `::`), the advertised address, the service IP and `--tls-san`.
pub fn serving_names(reach: &Reach) -> Vec<String> {
    let mut names = Vec::new();
    if reach.listen.is_unspecified() {
        let v6 = reach.listen.is_ipv6();
        names.extend(
            host_addresses()
                .into_iter()
                .filter(|a| v6 || a.is_ipv4())
                .map(|a| a.to_string()),
        );
    } else {
        names.push(reach.listen.to_string());
    }
    names.extend(reach.advertise.map(|a| a.to_string()));
    names.push(reach.service_ip.to_string());
    names.extend(reach.tls_san.iter().cloned());
    names
}

/// The address written into the administrator's kubeconfig and the `kubernetes` Endpoints:
/// the advertised address, else the listening one, else (listening on every address) the
/// host's first global address of the listening family, else loopback.
pub fn public_address(listen: IpAddr, advertise: Option<IpAddr>) -> IpAddr {
    if let Some(a) = advertise {
        return a;
    }
    if !listen.is_unspecified() {
        return listen;
    }
    host_addresses()
        .into_iter()
        .find(|a| a.is_ipv4() == listen.is_ipv4())
        .unwrap_or(match listen {
            IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        })
}

/// The global unicast addresses of this network namespace's interfaces that are up (no
/// loopback, link-local or multicast), in interface order.
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let global = match ip {
            IpAddr::V4(v) => {
                !(v.is_loopback() || v.is_link_local() || v.is_unspecified() || v.is_multicast())
            }
            IpAddr::V6(v) => {
                !(v.is_loopback()
                    || v.is_unspecified()
                    || v.is_multicast()
                    || (v.segments()[0] & 0xffc0) == 0xfe80)
            }
        };
        if global && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
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
        let again = ensure(dir.path(), &["10.0.0.1".into()]).unwrap();
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

    fn serving_cert_names(dir: &Path) -> BTreeSet<String> {
        names_of(&std::fs::read_to_string(dir.join("apiserver.crt")).unwrap()).unwrap()
    }

    #[test]
    fn serving_certificate_names_every_address_and_follows_tls_san() {
        let dir = tempfile::tempdir().unwrap();
        let reach = Reach {
            listen: "0.0.0.0".parse().unwrap(),
            advertise: Some("10.98.0.1".parse().unwrap()),
            tls_san: &["api.example.test".into(), "192.0.2.7".into()],
            service_ip: "10.96.0.1".parse().unwrap(),
        };
        let pki = ensure(dir.path(), &serving_names(&reach)).unwrap();
        let names = serving_cert_names(dir.path());
        for want in [
            "10.98.0.1",
            "10.96.0.1",
            "192.0.2.7",
            "api.example.test",
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(names.contains(want), "{want} missing from {names:?}");
        }
        for a in host_addresses().into_iter().filter(|a| a.is_ipv4()) {
            assert!(names.contains(&a.to_string()), "{a} missing from {names:?}");
        }
        let key = std::fs::read(dir.path().join("apiserver.key")).unwrap();

        // The same names: the certificate is kept.
        ensure(dir.path(), &serving_names(&reach)).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("apiserver.key")).unwrap(),
            key
        );

        // Another --tls-san: made again, by the same CA.
        let reach = Reach {
            tls_san: &["API.other.test".into()],
            ..reach
        };
        let again = ensure(dir.path(), &serving_names(&reach)).unwrap();
        assert_eq!(again.ca_pem, pki.ca_pem);
        assert_ne!(
            std::fs::read(dir.path().join("apiserver.key")).unwrap(),
            key
        );
        let names = serving_cert_names(dir.path());
        assert!(names.contains("api.other.test"), "{names:?}");
        assert!(!names.contains("api.example.test"), "{names:?}");
        assert!(!names.contains("192.0.2.7"), "{names:?}");
        // It chains to the CA: the TLS config accepts it.
        again.server_config().unwrap();
    }

    #[test]
    fn bad_tls_san_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = ensure(dir.path(), &["bad name".into()]) else {
            panic!("a bad name was taken");
        };
        assert!(format!("{err:#}").contains("\"bad name\""), "{err:#}");
        assert_eq!(canonical_name("*.Example.test").unwrap(), "*.example.test");
        assert_eq!(canonical_name("fd00:0::1").unwrap(), "fd00::1");
    }
}
