//! Node join support: bootstrap tokens (Secrets `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`), and the CertificateSigningRequest controllers — the
//! approver (kubelet client certificates requested by bootstrappers, or renewed by the node
//! itself, once RBAC allows `certificatesigningrequests/nodeclient` or `/selfnodeclient`) and the
//! signer (approved requests for the kube-apiserver client signers, signed by the cluster CA).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::api::{auth, objects, resources};
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
    let kv = store
        .get(&resources::SECRETS.key(Some("kube-system"), &format!("bootstrap-token-{id}")))
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

/// Checks a CSR's `spec.request` (base64 PEM) and returns its subject (CN, O…).
pub fn parse_request(request_b64: &str) -> Result<(String, Vec<String>), String> {
    let pem = B64
        .decode(request_b64)
        .map_err(|e| format!("not base64: {e}"))?;
    let pem = String::from_utf8(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let params = rcgen::CertificateSigningRequestParams::from_pem(&pem)
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

fn has_condition(csr: &Value, ty: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"] != "False")
}

fn sign(pki: &std::path::Path, csr: &Value) -> anyhow::Result<String> {
    let pem = String::from_utf8(B64.decode(csr["spec"]["request"].as_str().unwrap_or_default())?)?;
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(&pem)?;
    let (ca, ca_key) = crate::pki::load_ca(pki)?;
    let secs = csr["spec"]["expirationSeconds"]
        .as_i64()
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

/// One pass over every CSR: approve what the kubelet-client rules allow, sign what is approved.
pub async fn reconcile(store: &dyn Store, pki: &std::path::Path) {
    let r = &resources::CERTIFICATESIGNINGREQUESTS;
    let Ok((kvs, _)) = store.list(&r.prefix(), None).await else {
        return;
    };
    for kv in kvs {
        let Ok(mut csr) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let name = csr["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let signer = csr["spec"]["signerName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut changed = false;
        if signer == KUBELET_CLIENT_SIGNER
            && !has_condition(&csr, "Approved")
            && !has_condition(&csr, "Denied")
        {
            let requester = auth::User {
                name: csr["spec"]["username"].as_str().unwrap_or_default().into(),
                uid: String::new(),
                groups: csr["spec"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect(),
            };
            let subject = parse_request(csr["spec"]["request"].as_str().unwrap_or_default()).ok();
            let node_subject = subject.as_ref().is_some_and(|(cn, o)| {
                cn.starts_with("system:node:") && o == &["system:nodes".to_string()]
            });
            let sub = if subject
                .as_ref()
                .is_some_and(|(cn, _)| *cn == requester.name)
            {
                "selfnodeclient"
            } else {
                "nodeclient"
            };
            let a = auth::Attributes::Resource {
                verb: "create".into(),
                group: "certificates.k8s.io".into(),
                resource: "certificatesigningrequests".into(),
                subresource: sub.into(),
                namespace: String::new(),
                name: String::new(),
            };
            if node_subject && auth::authorize(store, &requester, &a).await.is_some() {
                if !csr["status"].is_object() {
                    csr["status"] = json!({});
                }
                let conds = csr["status"]
                    .as_object_mut()
                    .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
                if let Some(Value::Array(c)) = conds {
                    c.push(json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": "Auto approving kubelet client certificate after SubjectAccessReview.", "lastUpdateTime": objects::now(), "lastTransitionTime": objects::now()}));
                    changed = true;
                }
            }
        }
        if has_condition(&csr, "Approved")
            && !has_condition(&csr, "Denied")
            && csr["status"]["certificate"].is_null()
            && (signer == KUBELET_CLIENT_SIGNER || signer == CLIENT_SIGNER)
        {
            match sign(pki, &csr) {
                Ok(pem) => {
                    csr["status"]["certificate"] = json!(B64.encode(pem));
                    changed = true;
                }
                Err(e) => tracing::warn!(csr = %name, "signing: {e}"),
            }
        }
        if changed {
            if let Err(e) = store
                .update(&kv.key, serde_json::to_vec(&csr).unwrap(), Some(kv.mod_rev))
                .await
            {
                tracing::debug!(csr = %name, "CSR changed meanwhile: {e}");
            }
        }
    }
}

/// Runs the approver and signer after every CSR change (and every few seconds).
pub async fn run(store: Arc<dyn Store>, pki: PathBuf) {
    loop {
        let rev = store.current_rev().await.unwrap_or(0);
        reconcile(&*store, &pki).await;
        match store
            .watch(
                "/registry/certificates.k8s.io/certificatesigningrequests/",
                rev,
            )
            .await
        {
            Ok(mut w) => {
                tokio::select! {
                    _ = w.recv() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
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
        let req = B64.encode(pem);
        assert_eq!(
            parse_request(&req).unwrap(),
            (
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        assert!(parse_request(&B64.encode("garbage")).is_err());
        let cert = sign(
            dir.path(),
            &json!({"spec": {"request": req, "expirationSeconds": 3600}}),
        )
        .unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        use rustls_pki_types::pem::PemObject;
        assert_eq!(
            crate::pki::identity(&der).unwrap(),
            ("system:node:n1".into(), vec!["system:nodes".into()])
        );
    }
}
