//! CertificateSigningRequests: who asked is the server's to say (username, uid and groups
//! from the requester, never the body), the request must parse, and only the `approval`
//! subresource sets the Approved and Denied conditions.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::strategy::{Strategy, Subresource};
use super::{decode_kv, ApiResult, Request, Store};
use crate::api::objects;
use crate::api::status::Cause;
use crate::api::table;

pub struct Csrs;
pub static CSR: Csrs = Csrs;

#[async_trait]
impl Strategy for Csrs {
    /// A request for a client certificate, with a key made for it.
    fn example(&self, name: &str) -> Value {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let pem = p
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .expect("a request serializes");
        json!({"metadata": {"name": name}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kube-apiserver-client",
        }})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::CERTIFICATESIGNINGREQUESTS
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Approval]
    }

    fn prepare_for_create(&self, req: &Request<'_>, obj: &mut Value) {
        obj["spec"]["username"] = json!(req.user.name);
        obj["spec"]["uid"] = json!(req.user.uid);
        obj["spec"]["groups"] = json!(req.user.groups);
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        if let Err(e) =
            crate::certificates::parse_request(obj["spec"]["request"].as_str().unwrap_or_default())
        {
            causes.push((
                "FieldValueInvalid",
                "spec.request".into(),
                format!("Invalid value: []byte{{...}}: {e}"),
            ));
        }
        if obj["spec"]["signerName"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            causes.push((
                "FieldValueRequired",
                "spec.signerName".into(),
                "Required value".into(),
            ));
        }
        causes
    }
}

/// `certificatesigningrequests/<name>/approval`: only the Approved/Denied conditions change.
struct Approval;

#[async_trait]
impl Subresource for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }
    fn verbs(&self) -> &'static [&'static str] {
        &["get", "patch", "update"]
    }
    async fn serve(
        &self,
        req: &Request<'_>,
        method: &Method,
        store: &Store,
        _: Option<&str>,
        name: &str,
        body: &Bytes,
    ) -> Option<ApiResult> {
        (method == Method::PUT).then_some(())?;
        Some(approve(req, store, name, body).await)
    }
}

async fn approve(req: &Request<'_>, store: &Store, name: &str, body: &Bytes) -> ApiResult {
    let input = req.parse_body(body)?;
    let current = store.current(req, None, name).await?;
    let mut obj = decode_kv(&current);
    store.check_version(&input, &current, name)?;
    let conds: Vec<Value> = input["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
        .map(|c| {
            let mut c = c.clone();
            if c["lastUpdateTime"].is_null() {
                c["lastUpdateTime"] = json!(objects::now());
            }
            c
        })
        .collect();
    let mut all: Vec<Value> = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    all.retain(|c| !matches!(c["type"].as_str(), Some("Approved" | "Denied")));
    all.extend(conds);
    obj["status"]["conditions"] = json!(all);
    store.put(req, name, &current, &mut obj).await?;
    Ok(req.respond(store.r, StatusCode::OK, &obj, &[]))
}
