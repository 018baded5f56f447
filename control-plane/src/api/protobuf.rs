//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send (`kubectl create namespace|configmap|secret|serviceaccount`).
//! The envelope is `k8s\0` + `runtime.Unknown`; the messages are k8s-pb's (prost). Each kind is
//! converted to the JSON the rest of the apiserver handles; other kinds get 415 with the list of
//! media types, and responses are always JSON (clients accept it).

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use prost::Message;
use serde_json::{json, Map, Value};

use super::status::ApiError;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// One field of a message: (tag, JSON name, wire kind, repeated, message type).
type Field = (u32, String, String, bool, Option<String>);

/// Every message of the served groups, generated from k8s-pb and k8s-openapi by
/// `hack/gen-protobuf-schema.py`.
fn schema() -> &'static HashMap<String, HashMap<u32, Field>> {
    static S: OnceLock<HashMap<String, HashMap<u32, Field>>> = OnceLock::new();
    S.get_or_init(|| {
        let raw: HashMap<String, Vec<Field>> =
            serde_json::from_str(include_str!("protobuf_schema.json"))
                .expect("protobuf_schema.json is generated and valid");
        raw.into_iter()
            .map(|(k, fields)| (k, fields.into_iter().map(|f| (f.0, f)).collect()))
            .collect()
    })
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({what} is not accepted as protobuf; send JSON)"),
    )
}

/// The protobuf message of a kind: `apps/v1 Deployment` -> `api.apps.v1.Deployment`.
fn message_for(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("core", api_version));
    let module = group.split('.').next()?;
    let name = format!("api.{module}.{version}.{kind}");
    schema().contains_key(&name).then_some(name)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err("truncated field".into());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
}

/// A scalar in its JSON form.
fn scalar(kind: &str, wire: u64, bytes: Option<&[u8]>, varint: u64) -> Result<Value, String> {
    Ok(match (kind, wire) {
        ("string", 2) => Value::from(
            std::str::from_utf8(bytes.unwrap_or_default()).map_err(|_| "string is not UTF-8")?,
        ),
        ("bytes", 2) => {
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes.unwrap_or_default()))
        }
        ("bool", 0) => Value::from(varint != 0),
        ("int32", 0) => Value::from(varint as i64 as i32),
        ("int64", 0) => Value::from(varint as i64),
        ("double", 1) => json!(f64::from_bits(varint)),
        _ => return Err(format!("wire type {wire} for a {kind} field")),
    })
}

/// Decodes one message of type `name` into its JSON object (the special apimachinery types
/// into their JSON shapes: times as RFC 3339, quantities and int-or-strings as values, raw
/// extensions as the JSON they carry).
fn message(name: &str, data: &[u8], depth: usize) -> Result<Value, String> {
    if depth > 64 {
        return Err("nested too deeply".into());
    }
    let fields = schema()
        .get(name)
        .ok_or_else(|| format!("unknown message {name}"))?;
    let mut out = Map::new();
    let mut r = Reader { buf: data };
    while !r.buf.is_empty() {
        let key = r.varint()?;
        let (tag, wire) = ((key >> 3) as u32, key & 7);
        let (mut bytes, mut num) = (None, 0u64);
        match wire {
            0 => num = r.varint()?,
            1 => num = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes")),
            2 => {
                let n = r.varint()? as usize;
                bytes = Some(r.take(n)?);
            }
            5 => num = u64::from(u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"))),
            _ => {
                return Err(format!(
                    "unsupported wire type {wire} (field {tag} of {name})"
                ))
            }
        }
        // Fields this version does not know are skipped, as Go's decoder does.
        let Some((_, json_name, kind, repeated, ty)) = fields.get(&tag) else {
            continue;
        };
        let values: Vec<Value> = if let Some(kv) = kind.strip_prefix("map:") {
            let entry = map_entry(kv, ty.as_deref(), bytes.unwrap_or_default(), depth)?;
            let obj = out
                .entry(json_name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = obj {
                o.insert(entry.0, entry.1);
            }
            continue;
        } else if kind == "message" {
            let ty = ty.as_deref().ok_or("message field without a type")?;
            vec![message(ty, bytes.unwrap_or_default(), depth + 1)?]
        } else if wire == 2 && kind != "string" && kind != "bytes" {
            // A packed repeated scalar.
            let mut p = Reader {
                buf: bytes.unwrap_or_default(),
            };
            let mut vs = Vec::new();
            while !p.buf.is_empty() {
                vs.push(scalar(kind, 0, None, p.varint()?)?);
            }
            vs
        } else {
            vec![scalar(kind, wire, bytes, num)?]
        };
        for v in values {
            if *repeated {
                let arr = out.entry(json_name.clone()).or_insert_with(|| json!([]));
                if let Value::Array(a) = arr {
                    a.push(v);
                }
            } else {
                out.insert(json_name.clone(), v);
            }
        }
    }
    Ok(special(name, out))
}

fn map_entry(
    kv: &str,
    ty: Option<&str>,
    data: &[u8],
    depth: usize,
) -> Result<(String, Value), String> {
    let value_kind = kv.split_once(',').map(|(_, v)| v).unwrap_or("string");
    let mut r = Reader { buf: data };
    let (mut key, mut value) = (String::new(), Value::Null);
    while !r.buf.is_empty() {
        let k = r.varint()?;
        if k & 7 != 2 {
            return Err("map entries are length-delimited".into());
        }
        let n = r.varint()? as usize;
        let b = r.take(n)?;
        match k >> 3 {
            1 => key = String::from_utf8(b.to_vec()).map_err(|_| "map key is not UTF-8")?,
            2 => {
                value = match value_kind {
                    "message" => {
                        message(ty.ok_or("map of messages without a type")?, b, depth + 1)?
                    }
                    kind => scalar(kind, 2, Some(b), 0)?,
                }
            }
            _ => {}
        }
    }
    if value.is_null() {
        value = match value_kind {
            "bytes" | "string" => json!(""),
            _ => json!({}),
        };
    }
    Ok((key, value))
}

fn special(name: &str, mut m: Map<String, Value>) -> Value {
    let time = |m: &Map<String, Value>, micro: bool| {
        let secs = m.get("seconds").and_then(Value::as_i64).unwrap_or(0);
        let nanos = m.get("nanos").and_then(Value::as_i64).unwrap_or(0);
        if secs == 0 && nanos == 0 {
            // Go marshals a zero time (an unset creationTimestamp) as the epoch.
            return Value::Null;
        }
        jiff::Timestamp::new(secs, nanos as i32)
            .map(|t| {
                let f = if micro {
                    "%Y-%m-%dT%H:%M:%S.%6fZ"
                } else {
                    "%Y-%m-%dT%H:%M:%SZ"
                };
                Value::from(t.strftime(f).to_string())
            })
            .unwrap_or(Value::Null)
    };
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" => time(&m, false),
        "apimachinery.pkg.apis.meta.v1.MicroTime" => time(&m, true),
        "apimachinery.pkg.api.resource.Quantity" => m.remove("string").unwrap_or(Value::Null),
        "apimachinery.pkg.util.intstr.IntOrString" => {
            if m.get("type").and_then(Value::as_i64) == Some(1) {
                m.remove("strVal").unwrap_or(json!(""))
            } else {
                m.remove("intVal").unwrap_or(json!(0))
            }
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => m
            .get("raw")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null),
        _ => {
            // Go writes unset value fields as empty strings; JSON leaves them out.
            m.retain(|_, v| !(v.is_null() || *v == json!("")));
            Value::Object(m)
        }
    }
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
    let name = message_for(&api_version, &kind)
        .ok_or_else(|| unsupported(&format!("{api_version} {kind}")))?;
    let mut v = message(&name, &unknown.raw.unwrap_or_default(), 0)
        .map_err(|e| ApiError::bad_request(format!("decoding {kind}: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "decoding {kind}: not an object"
        )));
    }
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::core::v1 as pb;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;

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
        let e = decode(&envelope(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            vec![],
        ))
        .unwrap_err();
        assert_eq!(e.code, 415);
        assert_eq!(decode(b"garbage").unwrap_err().code, 400);
        let truncated = cm.encode_to_vec();
        let e = decode(&envelope(
            "v1",
            "ConfigMap",
            truncated[..truncated.len() - 1].to_vec(),
        ));
        assert_eq!(e.unwrap_err().code, 400);
    }

    #[test]
    fn deployments_decode_with_nested_types() {
        use k8s_pb::api::apps::v1 as apps;
        use k8s_pb::apimachinery::pkg::api::resource::Quantity;
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                namespace: Some(String::new()),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(0),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(pb::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta::default()),
                    spec: Some(pb::PodSpec {
                        containers: vec![pb::Container {
                            name: Some("c".into()),
                            image: Some("busybox".into()),
                            command: vec!["sleep".into(), "1000".into()],
                            resources: Some(pb::ResourceRequirements {
                                limits: [(
                                    "cpu".to_string(),
                                    Quantity {
                                        string: Some("500m".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            ports: vec![pb::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("25%".into()),
                        }),
                        max_surge: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: Some(String::new()),
                        }),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(
            v["metadata"],
            json!({"name": "web"}),
            "empty strings and the zero time go"
        );
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["sleep", "1000"]));
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        assert_eq!(c["ports"][0]["containerPort"], 80);
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            "25%"
        );
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
        let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).unwrap();
        assert_eq!(typed.spec.unwrap().replicas, Some(3));
    }
}
