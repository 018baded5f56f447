//! What the apiserver does to an object on its way into the store: decoding against the typed
//! schema (unknown fields found by comparing with the typed round trip), system metadata,
//! Kubernetes' defaults and validation for the fields podlet uses.

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

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn invalid(field: &str, value: &str, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.to_string(),
        format!("Invalid value: {value:?}: {why}"),
    )
}

fn required(field: &str) -> Cause {
    (
        "FieldValueRequired",
        field.to_string(),
        "Required value".to_string(),
    )
}

/// Validation of the name and the fields podlet relies on.
pub fn validate(r: &Resource, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let label_names = ["namespaces", "services"];
    if name.is_empty() {
        causes.push((
            "FieldValueRequired",
            "metadata.name".into(),
            "Required value: name or generateName is required".into(),
        ));
    } else if label_names.contains(&r.plural) {
        if !is_dns_label(name) {
            causes.push(invalid("metadata.name", name, DNS1123_LABEL));
        }
    } else if r.group != "rbac.authorization.k8s.io" && !is_dns_subdomain(name) {
        causes.push(invalid("metadata.name", name, DNS1123_SUBDOMAIN));
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
    if r.plural == "pods" {
        validate_pod(&obj["spec"], &mut causes);
    }
    causes
}

fn validate_pod(spec: &Value, causes: &mut Vec<Cause>) {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if containers.is_empty() {
        causes.push(required("spec.containers"));
    }
    let mut seen = std::collections::HashSet::new();
    for (field, list) in [
        (
            "spec.initContainers",
            spec["initContainers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ),
        ("spec.containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                causes.push(required(&format!("{field}[{i}].name")));
            } else if !is_dns_label(name) {
                causes.push(invalid(&format!("{field}[{i}].name"), name, DNS1123_LABEL));
            } else if !seen.insert(name.to_string()) {
                causes.push((
                    "FieldValueDuplicate",
                    format!("{field}[{i}].name"),
                    format!("Duplicate value: {name:?}"),
                ));
            }
            if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                causes.push(required(&format!("{field}[{i}].image")));
            }
        }
    }
    if let Some(p) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&p) {
            causes.push((
                "FieldValueNotSupported",
                "spec.restartPolicy".into(),
                format!("Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
    }
}

/// `obj[key]`, made an empty object first where it is missing.
fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    obj.as_object_mut()
        .expect("objects are JSON objects")
        .entry(key)
        .or_insert_with(|| json!({}))
}

fn set_default(obj: &mut Map<String, Value>, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.into(), v);
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Kubernetes' defaults for the resources that have them.
pub fn apply_defaults(r: &Resource, obj: &mut Value) {
    match r.plural {
        "pods" => default_pod(obj),
        "namespaces" => {
            let status = child(obj, "status");
            if status["phase"].is_null() {
                status["phase"] = json!("Active");
            }
            let spec = child(obj, "spec");
            if spec["finalizers"].is_null() {
                spec["finalizers"] = json!(["kubernetes"]);
            }
            let name = obj["metadata"]["name"].clone();
            let labels = obj["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("labels")
                .or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = name;
        }
        "services" => {
            let spec = child(obj, "spec");
            let s = spec.as_object_mut().unwrap();
            set_default(s, "type", json!("ClusterIP"));
            set_default(s, "sessionAffinity", json!("None"));
            if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    let p = p.as_object_mut().unwrap();
                    set_default(p, "protocol", json!("TCP"));
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    set_default(p, "targetPort", port);
                }
            }
        }
        "secrets" => {
            let o = obj.as_object_mut().unwrap();
            set_default(o, "type", json!("Opaque"));
            // stringData is write-only: it lands in data, base64-encoded, as Kubernetes does.
            if let Some(Value::Object(sd)) = o.remove("stringData") {
                use base64::Engine;
                let data = o.entry("data").or_insert_with(|| json!({}));
                for (k, v) in sd {
                    let text = v.as_str().unwrap_or_default();
                    data[k.as_str()] =
                        json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
        _ => {}
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let c = c.as_object_mut().unwrap();
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p.as_object_mut().unwrap(), "protocol", json!("TCP"));
        }
    }
}

fn default_pod(obj: &mut Value) {
    let spec = child(obj, "spec");
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    let s = spec.as_object_mut().unwrap();
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "enableServiceLinks", json!(true));
    set_default(s, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(s, "priority", json!(0));
    set_default(s, "serviceAccountName", json!("default"));
    let sa = s["serviceAccountName"].clone();
    set_default(s, "serviceAccount", sa);
    // DefaultTolerationSeconds admission.
    let tolerations = s
        .entry("tolerations")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .unwrap();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerations.iter().any(|t| t["key"] == key) {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    let qos = qos_class(&obj["spec"]);
    let status = child(obj, "status");
    if status["phase"].is_null() {
        status["phase"] = json!("Pending");
    }
    status["qosClass"] = json!(qos);
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
        let r = super::super::resources::find("", "v1", "pods").unwrap();
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
        let r = super::super::resources::find("", "v1", "pods").unwrap();
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
