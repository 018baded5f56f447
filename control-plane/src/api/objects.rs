//! What the apiserver does to an object on its way into the store: decoding against the typed
//! schema (unknown fields found by comparing with the typed round trip), system metadata, the
//! name and label validation every kind shares, and the helpers kinds' strategies use for their
//! own defaults and validation.

use serde_json::{json, Map, Value};

use super::resources::Resource;
use super::status::{ApiError, Cause};

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    // A version-4 UUID.
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (u8::from_str_radix(&h[16..17], 16).unwrap() & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

/// `generateName` + 5 characters from Kubernetes' alphabet.
pub fn generated_name(base: &str) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let base = &base[..base.len().min(58)];
    let suffix: String = (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Paths present in `input` that the typed round trip dropped: fields the schema does not know.
pub fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes `body` as `r`'s type. Unknown fields fail with `Strict`, warn with `Warn` (returned),
/// and are dropped either way.
pub fn decode(
    r: &Resource,
    body: &Value,
    validation: &str,
) -> Result<(Value, Vec<String>), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str) {
        if kind != r.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({}) or the kind {kind:?} does not match {:?}",
                body["apiVersion"].as_str().unwrap_or_default(),
                r.api_version(),
                r.kind
            )));
        }
    }
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
        if av != r.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
    }
    let typed = (r.decode)(body).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(body, &typed, "", &mut unknown);
    let warnings = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect::<Vec<_>>();
    if validation == "Strict" && !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            warnings.join(", ")
        )));
    }
    let mut typed = typed;
    typed["apiVersion"] = json!(r.api_version());
    typed["kind"] = json!(r.kind);
    Ok((
        typed,
        if validation == "Ignore" {
            vec![]
        } else {
            warnings
        },
    ))
}

pub const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub use k8s_rules::dns::{is_dns_label, is_dns_subdomain};

pub fn invalid(field: &str, value: &str, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.to_string(),
        format!("Invalid value: {value:?}: {why}"),
    )
}

/// `Unsupported value: "x": supported values: "A", "B"` (a JSON value, as upstream prints it).
pub fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    (
        "FieldValueNotSupported",
        field.into(),
        format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    )
}

/// `Invalid value: <json>: why`.
pub fn invalid_value(field: &str, value: &Value, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.into(),
        format!("Invalid value: {value}: {why}"),
    )
}

/// `Forbidden: why`.
pub fn forbidden(field: &str, why: &str) -> Cause {
    (
        "FieldValueForbidden",
        field.into(),
        format!("Forbidden: {why}"),
    )
}

pub fn required(field: &str) -> Cause {
    (
        "FieldValueRequired",
        field.to_string(),
        "Required value".to_string(),
    )
}

/// Why `name` is not a DNS label (namespaces', services' names), if it is not.
pub fn dns_label_name(name: &str) -> Option<Cause> {
    (!is_dns_label(name)).then(|| invalid("metadata.name", name, DNS1123_LABEL))
}

/// Why `name` is not a DNS subdomain (most kinds' names), if it is not.
pub fn dns_subdomain_name(name: &str) -> Option<Cause> {
    (!is_dns_subdomain(name)).then(|| invalid("metadata.name", name, DNS1123_SUBDOMAIN))
}

/// Validation of the name and labels (every kind), then of the kind's own fields.
pub fn validate(r: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push((
            "FieldValueRequired",
            "metadata.name".into(),
            "Required value: name or generateName is required".into(),
        ));
    } else if let Some(c) = r.strategy.validate_name(name) {
        causes.push(c);
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or_default();
            let ok = v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && (v.is_empty()
                    || (v.as_bytes()[0].is_ascii_alphanumeric()
                        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
            if !ok {
                causes.push(invalid("metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
            }
            let key_name = k.rsplit('/').next().unwrap_or_default();
            if key_name.is_empty() || key_name.len() > 63 {
                causes.push(invalid(
                    "metadata.labels",
                    k,
                    "name part must be non-empty and at most 63 characters",
                ));
            }
        }
    }
    causes.extend(r.strategy.validate(obj));
    causes
}

/// `obj[key]`, made an empty object first where it is missing.
pub fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    obj.as_object_mut()
        .expect("objects are JSON objects")
        .entry(key)
        .or_insert_with(|| json!({}))
}

pub fn set_default(obj: &mut Map<String, Value>, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.into(), v);
    }
}

/// Kubernetes' defaults, as the kind's strategy sets them.
pub fn apply_defaults(r: &Resource, obj: &mut Value) {
    r.strategy.defaults(obj);
}

/// Kubernetes' QoS class of a pod spec (the same rule the node applies).
pub fn qos_class(spec: &Value) -> &'static str {
    let spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(spec.clone()).unwrap_or_default();
    k8s_rules::qos::qos_class(&spec).as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_by_the_typed_round_trip() {
        let r = &super::super::resources::PODS;
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "bogus": 1}, "spec": {"containers": [{"name": "c", "image": "busybox", "colour": "red"}]}});
        let err = decode(r, &body, "Strict").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("unknown field \"metadata.bogus\"")
                && err
                    .message
                    .contains("unknown field \"spec.containers[0].colour\""),
            "{}",
            err.message
        );
        let (typed, warnings) = decode(r, &body, "Warn").unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(typed["metadata"].get("bogus").is_none());
        let wrong = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "no"}});
        assert!(decode(r, &wrong, "Strict")
            .unwrap_err()
            .message
            .contains("spec.containers"));
    }

    #[test]
    fn pods_get_kubernetes_defaults_and_validation() {
        let r = &super::super::resources::PODS;
        let mut p = json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "busybox"}, {"name": "d", "image": "busybox:1.36", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        apply_defaults(r, &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["qosClass"], "Burstable");
        assert!(validate(r, &p).is_empty());
        let bad = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c"}], "restartPolicy": "Sometimes"}});
        let causes = validate(r, &bad);
        let fields: Vec<&str> = causes.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.containers[0].image",
                "spec.restartPolicy"
            ]
        );
        assert!(new_uid().len() == 36 && generated_name("web-").starts_with("web-"));
    }
}
