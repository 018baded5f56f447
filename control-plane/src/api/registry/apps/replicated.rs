//! Deployments', ReplicaSets' and ReplicationControllers' defaults and validation
//! (`pkg/apis/apps/v1/defaults.go`, `pkg/apis/core/v1/defaults.go`,
//! `pkg/apis/apps/validation`, `pkg/apis/core/validation`), with Go's formatting of the
//! values in their messages.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::super::strategy::{Strategy, Subresource};
use super::Scale;
use crate::api::objects::{self, child, set_default};
use crate::api::registry::Request;
use crate::api::resources::{self, Resource};
use crate::api::status::{ApiError, Cause};
use crate::api::table;

/// Which of the replicated kinds a strategy serves.
#[derive(PartialEq)]
enum Kind {
    Deployment,
    ReplicaSet,
    ReplicationController,
}

/// Deployments, ReplicaSets and ReplicationControllers: defaults, validation, generation and
/// `scale`.
pub struct Replicated {
    kind: Kind,
    printer: &'static table::Printer,
    fields: &'static [&'static str],
}

pub static DEPLOYMENT: Replicated = Replicated {
    kind: Kind::Deployment,
    printer: &table::DEPLOYMENTS,
    fields: &[],
};

pub static REPLICASET: Replicated = Replicated {
    kind: Kind::ReplicaSet,
    printer: &table::REPLICASETS,
    fields: &["status.replicas"],
};

pub static REPLICATIONCONTROLLER: Replicated = Replicated {
    kind: Kind::ReplicationController,
    printer: &table::REPLICATIONCONTROLLERS,
    fields: &["status.replicas"],
};

impl Replicated {
    fn resource(&self) -> &'static Resource {
        match self.kind {
            Kind::Deployment => &resources::DEPLOYMENTS,
            Kind::ReplicaSet => &resources::REPLICASETS,
            Kind::ReplicationController => &resources::REPLICATIONCONTROLLERS,
        }
    }
}

#[async_trait]
impl Strategy for Replicated {
    fn example(&self, name: &str) -> Value {
        let selector = if self.kind == Kind::ReplicationController {
            json!({"app": name})
        } else {
            json!({"matchLabels": {"app": name}})
        };
        json!({"metadata": {"name": name}, "spec": {
            "selector": selector,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        }})
    }

    fn printer(&self) -> &'static table::Printer {
        self.printer
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        self.fields
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Scale]
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
    }

    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        // Compared with defaults applied, so an update that only leaves defaults out is no
        // spec change.
        self.defaults(obj);
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        // apps/v1 selectors are immutable (a core/v1 ReplicationController's is not).
        if self.kind != Kind::ReplicationController
            && obj["spec"]["selector"] != old["spec"]["selector"]
        {
            let cause = (
                "FieldValueInvalid",
                "spec.selector".to_string(),
                format!(
                    "Invalid value: {}: field is immutable",
                    go_label_selector(&obj["spec"]["selector"])
                ),
            );
            return Err(ApiError::invalid(self.resource(), name, vec![cause]));
        }
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
        if self.kind == Kind::ReplicationController {
            // SetDefaults_ReplicationController: selector and labels from the template's.
            if !template_labels.as_object().is_none_or(Map::is_empty) {
                let spec = child(obj, "spec");
                if spec["selector"].as_object().is_none_or(Map::is_empty) {
                    spec["selector"] = template_labels.clone();
                }
                let meta = child(obj, "metadata");
                if meta["labels"].as_object().is_none_or(Map::is_empty) {
                    meta["labels"] = template_labels;
                }
            }
        }
        let spec = child(obj, "spec");
        set_default(spec.as_object_mut().unwrap(), "replicas", json!(1));
        if spec["template"].is_object() {
            template_defaults(&mut spec["template"]);
        }
        if self.kind == Kind::Deployment {
            let s = spec.as_object_mut().unwrap();
            set_default(s, "revisionHistoryLimit", json!(10));
            set_default(s, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            set_default(
                strategy.as_object_mut().unwrap(),
                "type",
                json!("RollingUpdate"),
            );
            if strategy["type"] == "RollingUpdate" {
                let ru = child(strategy, "rollingUpdate").as_object_mut().unwrap();
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        nonnegative(spec, "replicas", &mut causes);
        nonnegative(spec, "minReadySeconds", &mut causes);
        let what = match self.kind {
            Kind::Deployment => "deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::ReplicationController => "ReplicationController",
        };
        // Whether the template's labels are selected: None when the selector cannot say.
        let selected = if self.kind == Kind::ReplicationController {
            let sel = spec["selector"].as_object().filter(|m| !m.is_empty());
            if sel.is_none() {
                causes.push(objects::required("spec.selector"));
            }
            sel.map(|sel| {
                sel.iter()
                    .all(|(k, v)| spec["template"]["metadata"]["labels"][k] == *v)
            })
        } else {
            label_selector_matches(spec, what, &mut causes)
        };
        if spec["template"].is_object() {
            if selected == Some(false) {
                causes.push(invalid_raw(
                    "spec.template.metadata.labels",
                    go_string_map(&spec["template"]["metadata"]["labels"]),
                    "`selector` does not match template `labels`",
                ));
            }
            validate_template(&spec["template"], what, &mut causes);
        } else {
            causes.push(objects::required("spec.template"));
        }
        if self.kind == Kind::Deployment {
            validate_strategy(&spec["strategy"], &mut causes);
            nonnegative(spec, "revisionHistoryLimit", &mut causes);
            if let Some(p) = spec["progressDeadlineSeconds"].as_i64() {
                nonnegative(spec, "progressDeadlineSeconds", &mut causes);
                if p <= spec["minReadySeconds"].as_i64().unwrap_or(0) {
                    causes.push(invalid_raw(
                        "spec.progressDeadlineSeconds",
                        p.to_string(),
                        "must be greater than minReadySeconds",
                    ));
                }
            }
        }
        causes
    }
}

/// A pod template's defaults (`SetDefaults_PodSpec` and the containers'); the pod-level
/// admission defaults (service account, priority, tolerations) come when pods are made.
fn template_defaults(template: &mut Value) {
    let spec = child(template, "spec");
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut()
                .for_each(super::super::pods::default_container);
        }
    }
    let s = spec.as_object_mut().unwrap();
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
}

/// `ValidatePodTemplateSpecForReplicaSet` / `ForRC` beyond the selector: the pod spec's own
/// rules under `spec.template.spec`, `restartPolicy: Always`, no `activeDeadlineSeconds`.
fn validate_template(template: &Value, what: &str, causes: &mut Vec<Cause>) {
    let mut inner = Vec::new();
    super::super::pods::validate_spec(&template["spec"], &mut inner);
    causes.extend(
        inner
            .into_iter()
            .map(|(r, f, m)| (r, format!("spec.template.{f}"), m)),
    );
    let policy = template["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or_default();
    if policy != "Always" {
        causes.push((
            "FieldValueNotSupported",
            "spec.template.spec.restartPolicy".into(),
            format!("Unsupported value: {policy:?}: supported values: \"Always\""),
        ));
    }
    if !template["spec"]["activeDeadlineSeconds"].is_null() {
        let what = if what == "deployment" {
            "ReplicaSet"
        } else {
            what
        };
        causes.push((
            "FieldValueForbidden",
            "spec.template.spec.activeDeadlineSeconds".into(),
            format!("Forbidden: activeDeadlineSeconds in {what} is not Supported"),
        ));
    }
}

/// An apps/v1 selector: required, not empty, valid; whether it selects the template's labels.
fn label_selector_matches(spec: &Value, what: &str, causes: &mut Vec<Cause>) -> Option<bool> {
    let sel = &spec["selector"];
    if !sel.is_object() {
        causes.push(objects::required("spec.selector"));
        return None;
    }
    let parsed: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> =
        serde_json::from_value(sel.clone()).ok();
    let empty = parsed.as_ref().is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    });
    if empty {
        causes.push(invalid_raw(
            "spec.selector",
            go_label_selector(sel),
            &format!("empty selector is invalid for {what}"),
        ));
        return None;
    }
    match k8s_rules::labels::Selector::from_label_selector(parsed.as_ref()) {
        Ok(s) => {
            let labels = serde_json::from_value(spec["template"]["metadata"]["labels"].clone())
                .unwrap_or_default();
            Some(s.matches(&labels))
        }
        Err(_) => {
            causes.push(invalid_raw(
                "spec.selector",
                go_label_selector(sel),
                "invalid label selector",
            ));
            None
        }
    }
}

const PERCENT: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// An int-or-percent's value and whether it is a percentage; None for a malformed percent.
fn int_or_percent(v: &Value) -> Option<(i64, bool)> {
    match v {
        Value::Number(n) => Some((n.as_i64()?, false)),
        Value::String(s) => {
            let digits = s.strip_suffix('%')?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| Some((digits.parse().ok()?, true)))?
        }
        _ => None,
    }
}

fn int_or_percent_string(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn validate_strategy(strategy: &Value, causes: &mut Vec<Cause>) {
    match strategy["type"].as_str().unwrap_or_default() {
        "Recreate" => {
            if !strategy["rollingUpdate"].is_null() {
                causes.push((
                    "FieldValueForbidden",
                    "spec.strategy.rollingUpdate".into(),
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'".into(),
                ));
            }
        }
        "RollingUpdate" => {
            let ru = &strategy["rollingUpdate"];
            let mut values = [0; 2];
            for (i, f) in ["maxUnavailable", "maxSurge"].into_iter().enumerate() {
                let v = &ru[f];
                let field = format!("spec.strategy.rollingUpdate.{f}");
                match int_or_percent(v) {
                    None if v.is_string() => {
                        causes.push(invalid_raw(&field, int_or_percent_string(v), PERCENT))
                    }
                    Some((n, false)) if n < 0 => causes.push(invalid_raw(
                        &field,
                        n.to_string(),
                        "must be greater than or equal to 0",
                    )),
                    Some((n, true)) if f == "maxUnavailable" && n > 100 => {
                        causes.push(invalid_raw(
                            &field,
                            int_or_percent_string(v),
                            "must not be greater than 100%",
                        ))
                    }
                    Some((n, _)) => values[i] = n,
                    None => {}
                }
            }
            if values == [0, 0] {
                causes.push(invalid_raw(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    int_or_percent_string(&ru["maxUnavailable"]),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        other => causes.push((
            "FieldValueNotSupported",
            "spec.strategy".into(),
            format!(
                "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
            ),
        )),
    }
}

fn nonnegative(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec[field].as_i64().filter(|n| *n < 0) {
        causes.push(invalid_raw(
            &format!("spec.{field}"),
            n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// An Invalid cause whose value is printed as Go's field errors print it (not quoted).
fn invalid_raw(field: &str, value: String, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.to_string(),
        format!("Invalid value: {value}: {why}"),
    )
}

/// A string map as Go's `%#v`: `map[string]string{"app":"web"}`.
fn go_string_map(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
        .collect();
    if v.is_null() {
        "map[string]string(nil)".into()
    } else {
        format!("map[string]string{{{}}}", pairs.join(", "))
    }
}

/// A LabelSelector as its generated `String()` prints it.
fn go_label_selector(v: &Value) -> String {
    let labels: Vec<String> = v["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {},", v.as_str().unwrap_or_default()))
        .collect();
    let exprs: Vec<String> = v["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                e["key"].as_str().unwrap_or_default(),
                e["operator"].as_str().unwrap_or_default(),
                values.join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{}}},MatchExpressions:[]LabelSelectorRequirement{{{}}},}}",
        labels.join(""),
        exprs.join("")
    )
}

/// A ReplicationController's selector as `labels.SelectorFromSet(...).String()`.
pub fn map_selector(v: &Value) -> String {
    let mut pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// An apps/v1 selector as `metav1.LabelSelectorAsSelector(...).String()`: requirements sorted
/// by key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
pub fn label_selector_string(v: &Value) -> String {
    let mut reqs: Vec<(String, String)> = v["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, val)| {
            (
                k.clone(),
                format!("{k}={}", val.as_str().unwrap_or_default()),
            )
        })
        .collect();
    for e in v["matchExpressions"].as_array().into_iter().flatten() {
        let k = e["key"].as_str().unwrap_or_default().to_string();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort();
        let s = match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{k} in ({})", values.join(",")),
            "NotIn" => format!("{k} notin ({})", values.join(",")),
            "Exists" => k.clone(),
            _ => format!("!{k}"),
        };
        reqs.push((k, s));
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        let mut d = DEPLOYMENT.example("web");
        DEPLOYMENT.defaults(&mut d);
        d
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes.iter().map(|(_, f, m)| format!("{f}: {m}")).collect()
    }

    #[test]
    fn deployments_get_upstreams_defaults() {
        let d = deployment();
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert!(
            DEPLOYMENT.validate(&d).is_empty(),
            "{:?}",
            DEPLOYMENT.validate(&d)
        );
    }

    #[test]
    fn a_replication_controller_takes_its_selector_and_labels_from_the_template() {
        let mut rc = json!({"metadata": {"name": "rc"}, "spec": {"template": {
            "metadata": {"labels": {"app": "rc"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        REPLICATIONCONTROLLER.defaults(&mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "rc"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "rc"}));
        assert_eq!(rc["spec"]["replicas"], 1);
        assert!(REPLICATIONCONTROLLER.validate(&rc).is_empty());
        rc["spec"]["selector"] = json!({"app": "other"});
        assert_eq!(
            messages(&REPLICATIONCONTROLLER.validate(&rc)),
            ["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"rc\"}: `selector` does not match template `labels`"]
        );
    }

    #[test]
    fn deployments_are_validated_as_upstream() {
        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
        d["spec"]["replicas"] = json!(-1);
        assert_eq!(
            messages(&DEPLOYMENT.validate(&d)),
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0%: may not be 0 when `maxSurge` is 0",
            ]
        );
        let mut d = deployment();
        d["spec"].as_object_mut().unwrap().remove("selector");
        d["spec"]["progressDeadlineSeconds"] = json!(5);
        d["spec"]["minReadySeconds"] = json!(5);
        assert_eq!(
            messages(&DEPLOYMENT.validate(&d)),
            [
                "spec.selector: Required value",
                "spec.progressDeadlineSeconds: Invalid value: 5: must be greater than minReadySeconds",
            ]
        );
    }

    #[test]
    fn apps_selectors_are_immutable() {
        let old = deployment();
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "x"}});
        let err = DEPLOYMENT
            .prepare_for_update("web", &mut new, &old)
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.selector: Invalid value: &LabelSelector{MatchLabels:map[string]string{app: web,tier: x,},MatchExpressions:[]LabelSelectorRequirement{},}: field is immutable"), "{}", err.message);
        let mut same = old.clone();
        same["spec"]["replicas"] = json!(3);
        DEPLOYMENT
            .prepare_for_update("web", &mut same, &old)
            .unwrap();
        assert_eq!(same["metadata"]["generation"], 1);
    }

    #[test]
    fn scale_selectors_print_as_label_selectors() {
        let sel = json!({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]}, {"key": "d", "operator": "DoesNotExist"}]});
        assert_eq!(label_selector_string(&sel), "a=1,b=2,c in (x,y),!d");
        assert_eq!(map_selector(&json!({"b": "2", "a": "1"})), "a=1,b=2");
    }
}
