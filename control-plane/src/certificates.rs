//! Node join support: bootstrap tokens (Secrets `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`) that authenticate joining nodes, certificate requests'
//! subjects, and signing by the cluster CA (for `controllers/csr.rs`, the approver and signer).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

use crate::api::{auth, resources};
use crate::store::Store;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

fn is_bootstrap_token(t: &str) -> Option<(&str, &str)> {
    let (id, secret) = t.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The user a bootstrap token stands for, if its Secret allows authentication and has not
/// expired.
pub async fn bootstrap_user(store: &dyn Store, token: &str) -> Option<auth::User> {
    let (id, secret) = is_bootstrap_token(token)?;
    let sr = &resources::SECRETS;
    let kv = store
        .get(&sr.key(Some("kube-system"), &format!("bootstrap-token-{id}")))
        .await
        .ok()??;
    let s: Value = serde_json::from_slice(&kv.value).ok()?;
    if s["type"] != "bootstrap.kubernetes.io/token" || !s["metadata"]["deletionTimestamp"].is_null()
    {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        s["data"][k]
            .as_str()
            .and_then(|v| B64.decode(v).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .or_else(|| s["stringData"][k].as_str().map(str::to_owned))
    };
    if field("token-id")? != id || field("token-secret")? != secret {
        return None;
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    if let Some(exp) = field("expiration") {
        let exp: jiff::Timestamp = exp.parse().ok()?;
        if exp < jiff::Timestamp::now() {
            return None;
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    if let Some(extra) = field("auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_owned),
        );
    }
    Some(auth::User::new(
        &format!("system:bootstrap:{id}"),
        "",
        groups,
    ))
}

/// Checks a CSR's `spec.request` as JSON carries it (base64 PEM) and returns its subject.
pub fn parse_request(request_b64: &str) -> Result<(String, Vec<String>), String> {
    let pem = B64
        .decode(request_b64)
        .map_err(|e| format!("not base64: {e}"))?;
    parse_request_pem(&pem)
}

/// The subject (CN, O…) of a PEM certificate request.
pub fn parse_request_pem(pem: &[u8]) -> Result<(String, Vec<String>), String> {
    let pem = std::str::from_utf8(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let params = rcgen::CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| format!("PEM block type must be CERTIFICATE REQUEST ({e})"))?;
    let dn = &params.params.distinguished_name;
    let text = |t: &rcgen::DnValue| match t {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(p) => p.as_str().to_string(),
        other => format!("{other:?}"),
    };
    let cn = dn
        .get(&rcgen::DnType::CommonName)
        .map(text)
        .unwrap_or_default();
    let orgs = dn
        .iter()
        .filter(|(t, _)| **t == rcgen::DnType::OrganizationName)
        .map(|(_, v)| text(v))
        .collect();
    Ok((cn, orgs))
}

/// A client certificate for the PEM request `request`, signed by the CA in `pki`, valid for
/// `expiration_seconds` (a year by default, ten minutes at least).
pub fn sign(
    pki: &std::path::Path,
    request: &[u8],
    expiration_seconds: Option<i32>,
) -> anyhow::Result<String> {
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(std::str::from_utf8(request)?)?;
    let (ca, ca_key) = crate::pki::load_ca(pki)?;
    let secs = expiration_seconds
        .map(i64::from)
        .unwrap_or(365 * 86400)
        .max(600);
    let now = time::OffsetDateTime::now_utc();
    req.params.not_before = now - time::Duration::minutes(5);
    req.params.not_after = now + time::Duration::seconds(secs);
    req.params.subject_alt_names.clear();
    req.params.is_ca = rcgen::IsCa::NoCa;
    req.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    req.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = req.signed_by(&ca, &ca_key)?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_token_shape() {
        assert_eq!(
            is_bootstrap_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(is_bootstrap_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(is_bootstrap_token("abcdef.short"), None);
    }

    #[test]
    fn requests_are_parsed_and_signed_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::ensure(dir.path(), &[]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "system:nodes");
        dn.push(rcgen::DnType::CommonName, "system:node:n1");
        p.distinguished_name = dn;
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        let req = B64.encode(&pem);
        assert_eq!(
            parse_request(&req).unwrap(),
            (
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        assert!(parse_request(&B64.encode("garbage")).is_err());
        let cert = sign(dir.path(), pem.as_bytes(), Some(3600)).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        use rustls_pki_types::pem::PemObject;
        assert_eq!(
            crate::pki::identity(&der).unwrap(),
            ("system:node:n1".into(), vec!["system:nodes".into()])
        );
    }
}
