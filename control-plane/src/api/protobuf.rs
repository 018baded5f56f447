//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send (`kubectl create namespace|configmap|secret|serviceaccount`).
//! The envelope is `k8s\0` + `runtime.Unknown`; the messages are k8s-pb's (prost). Each kind is
//! converted to the JSON the rest of the apiserver handles; other kinds get 415 with the list of
//! media types, and responses are always JSON (clients accept it).

use base64::Engine;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;
use serde_json::{json, Map, Value};

use super::status::ApiError;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({what} is not accepted as protobuf; send JSON)"),
    )
}

fn time(t: &Option<meta::Time>) -> Option<Value> {
    let t = t.as_ref()?;
    let ts = jiff::Timestamp::from_second(t.seconds?).ok()?;
    Some(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn object_meta(m: &Option<meta::ObjectMeta>) -> Value {
    let Some(m) = m else {
        return json!({});
    };
    let mut o = Map::new();
    // Protobuf carries unset strings and numbers as empty ones; JSON leaves them out.
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v.filter(|v| *v != json!("") && *v != json!(0)) {
            o.insert(k.into(), v);
        }
    };
    put("name", m.name.clone().map(Value::from));
    put("generateName", m.generate_name.clone().map(Value::from));
    put("namespace", m.namespace.clone().map(Value::from));
    put("uid", m.uid.clone().map(Value::from));
    put(
        "resourceVersion",
        m.resource_version.clone().map(Value::from),
    );
    put("generation", m.generation.map(Value::from));
    put("creationTimestamp", time(&m.creation_timestamp));
    if !m.labels.is_empty() {
        put("labels", Some(json!(m.labels)));
    }
    if !m.annotations.is_empty() {
        put("annotations", Some(json!(m.annotations)));
    }
    if !m.finalizers.is_empty() {
        put("finalizers", Some(json!(m.finalizers)));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .iter()
            .map(|r| {
                json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid,
                       "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion})
            })
            .collect();
        put("ownerReferences", Some(json!(refs)));
    }
    Value::Object(o)
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let raw = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ApiError::bad_request("protobuf body without the k8s envelope"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(raw)
        .map_err(|e| ApiError::bad_request(format!("decoding the protobuf envelope: {e}")))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
    );
    let data = unknown.raw.unwrap_or_default();
    let bad = |e: prost::DecodeError| ApiError::bad_request(format!("decoding {kind}: {e}"));
    let b64 = |b: &Vec<u8>| Value::from(base64::engine::general_purpose::STANDARD.encode(b));
    let mut v = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let n = pb::Namespace::decode(&*data).map_err(bad)?;
            let mut v = json!({"metadata": object_meta(&n.metadata)});
            if let Some(s) = n.spec.filter(|s| !s.finalizers.is_empty()) {
                v["spec"] = json!({"finalizers": s.finalizers});
            }
            v
        }
        ("v1", "ConfigMap") => {
            let c = pb::ConfigMap::decode(&*data).map_err(bad)?;
            let mut v = json!({"metadata": object_meta(&c.metadata)});
            if !c.data.is_empty() {
                v["data"] = json!(c.data);
            }
            if !c.binary_data.is_empty() {
                v["binaryData"] = json!(c
                    .binary_data
                    .iter()
                    .map(|(k, b)| (k.clone(), b64(b)))
                    .collect::<Map<_, _>>());
            }
            if let Some(i) = c.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        ("v1", "Secret") => {
            let s = pb::Secret::decode(&*data).map_err(bad)?;
            let mut v = json!({"metadata": object_meta(&s.metadata)});
            if !s.data.is_empty() {
                v["data"] = json!(s
                    .data
                    .iter()
                    .map(|(k, b)| (k.clone(), b64(b)))
                    .collect::<Map<_, _>>());
            }
            if !s.string_data.is_empty() {
                v["stringData"] = json!(s.string_data);
            }
            if let Some(t) = s.r#type {
                v["type"] = json!(t);
            }
            if let Some(i) = s.immutable {
                v["immutable"] = json!(i);
            }
            v
        }
        ("v1", "ServiceAccount") => {
            let s = pb::ServiceAccount::decode(&*data).map_err(bad)?;
            let mut v = json!({"metadata": object_meta(&s.metadata)});
            if let Some(a) = s.automount_service_account_token {
                v["automountServiceAccountToken"] = json!(a);
            }
            v
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            use k8s_pb::api::authorization::v1 as az;
            let r = az::SelfSubjectAccessReview::decode(&*data).map_err(bad)?;
            let spec = r.spec.unwrap_or_default();
            let mut out = Map::new();
            if let Some(ra) = spec.resource_attributes {
                let mut m = Map::new();
                for (k, v) in [
                    ("namespace", ra.namespace),
                    ("verb", ra.verb),
                    ("group", ra.group),
                    ("version", ra.version),
                    ("resource", ra.resource),
                    ("subresource", ra.subresource),
                    ("name", ra.name),
                ] {
                    if let Some(v) = v.filter(|v| !v.is_empty()) {
                        m.insert(k.into(), json!(v));
                    }
                }
                out.insert("resourceAttributes".into(), Value::Object(m));
            }
            if let Some(nr) = spec.non_resource_attributes {
                out.insert(
                    "nonResourceAttributes".into(),
                    json!({"path": nr.path.unwrap_or_default(), "verb": nr.verb.unwrap_or_default()}),
                );
            }
            json!({"metadata": object_meta(&r.metadata), "spec": out})
        }
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            use k8s_pb::api::certificates::v1 as certs;
            let r = certs::CertificateSigningRequest::decode(&*data).map_err(bad)?;
            let spec = r.spec.unwrap_or_default();
            let mut sp = json!({
                "request": spec.request.as_ref().map(b64).unwrap_or(Value::Null),
                "signerName": spec.signer_name,
                "usages": spec.usages,
            });
            if let Some(e) = spec.expiration_seconds {
                sp["expirationSeconds"] = json!(e);
            }
            let conds: Vec<Value> = r
                .status
                .as_ref()
                .map(|s| &s.conditions[..])
                .unwrap_or(&[])
                .iter()
                .map(|c| {
                    let mut v = json!({"type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message});
                    if let Some(t) = time(&c.last_update_time) {
                        v["lastUpdateTime"] = t;
                    }
                    v
                })
                .collect();
            json!({"metadata": object_meta(&r.metadata), "spec": sp, "status": {"conditions": conds}})
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let r = k8s_pb::api::authentication::v1::TokenRequest::decode(&*data).map_err(bad)?;
            let spec = r.spec.unwrap_or_default();
            let mut s = Map::new();
            if !spec.audiences.is_empty() {
                s.insert("audiences".into(), json!(spec.audiences));
            }
            if let Some(e) = spec.expiration_seconds {
                s.insert("expirationSeconds".into(), json!(e));
            }
            json!({"metadata": object_meta(&r.metadata), "spec": s})
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            let r =
                k8s_pb::api::authentication::v1::SelfSubjectReview::decode(&*data).map_err(bad)?;
            json!({"metadata": object_meta(&r.metadata)})
        }
        _ => return Err(unsupported(&format!("{api_version} {kind}"))),
    };
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = b"k8s\0".to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn config_maps_decode_to_their_json() {
        let cm = pb::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("cfg".into()),
                labels: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            binary_data: [("bin".to_string(), vec![0u8, 1])].into(),
            immutable: None,
        };
        let v = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "b"}}, "data": {"k": "v"}, "binaryData": {"bin": "AAE="}})
        );
        let e = decode(&envelope("apps/v1", "Deployment", vec![])).unwrap_err();
        assert_eq!(e.code, 415);
        assert_eq!(decode(b"garbage").unwrap_err().code, 400);
    }
}
