//! Service-account tokens: ES256 JWTs signed with `<data-dir>/pki/sa.key`, shaped like
//! Kubernetes' bound tokens (`iss`, `sub` = `system:serviceaccount:<ns>:<name>`, `aud`, `exp`,
//! and the `kubernetes.io` claim naming the account and its UID). Issued through
//! `serviceaccounts/<name>/token` (TokenRequest, `kubectl create token`) and accepted as bearer
//! tokens while the account exists with the same UID.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
}

impl Signer {
    /// Loads the signing key, making it at first start.
    pub fn load(pki_dir: &Path) -> anyhow::Result<Self> {
        let path = pki_dir.join("sa.key");
        if !path.exists() {
            let k = rcgen::KeyPair::generate()?;
            let pem = k.serialize_pem();
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)?
                .write_all(pem.as_bytes())?;
        }
        let k = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&path)?)?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &k.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let public = key.public_key().as_ref().to_vec();
        Ok(Signer { key, public })
    }

    fn kid(&self) -> String {
        use sha2::Digest;
        B64.encode(sha2::Sha256::digest(&self.public))
    }

    /// A token for service account `name` (UID `uid`) in `ns`.
    pub fn issue(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        ttl: i64,
    ) -> anyhow::Result<(String, i64)> {
        let now = jiff::Timestamp::now().as_second();
        let exp = now + ttl;
        let aud = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let header = json!({"alg": "ES256", "kid": self.kid(), "typ": "JWT"});
        let claims = json!({
            "iss": ISSUER, "sub": format!("system:serviceaccount:{ns}:{name}"), "aud": aud,
            "exp": exp, "iat": now, "nbf": now,
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}},
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok((format!("{signing_input}.{}", B64.encode(sig.as_ref())), exp))
    }

    /// The claims of a token this signer issued and that has not expired.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .ok()?;
        let header: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let claims: Value = serde_json::from_slice(&B64.decode(c).ok()?).ok()?;
        let now = jiff::Timestamp::now().as_second();
        if claims["iss"] != ISSUER
            || claims["exp"].as_i64()? < now
            || claims["nbf"].as_i64().unwrap_or(0) > now + 60
        {
            return None;
        }
        Some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load(dir.path()).unwrap();
        let (t, exp) = s.issue("default", "builder", "u-1", &[], 600).unwrap();
        assert!(exp > jiff::Timestamp::now().as_second());
        let c = s.verify(&t).unwrap();
        assert_eq!(c["sub"], "system:serviceaccount:default:builder");
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        // The same key after a restart.
        assert!(Signer::load(dir.path()).unwrap().verify(&t).is_some());
        // Another key, a changed payload, an expired token: refused.
        let other = tempfile::tempdir().unwrap();
        assert!(Signer::load(other.path()).unwrap().verify(&t).is_none());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(json!({"iss": ISSUER, "sub": "system:serviceaccount:kube-system:admin", "exp": i64::MAX}).to_string());
        parts[1] = &forged;
        assert!(s.verify(&parts.join(".")).is_none());
        let (old, _) = s.issue("default", "builder", "u-1", &[], -10).unwrap();
        assert!(s.verify(&old).is_none());
    }
}
