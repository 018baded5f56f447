//! DaemonSets, StatefulSets and ControllerRevisions: apps/v1 defaults (`pkg/apis/apps/v1/
//! defaults.go`, with the pod template's own), validation (`pkg/apis/apps/validation`),
//! `metadata.generation` counting spec changes, StatefulSets' immutable fields and their
//! `scale` subresource (the one Deployments and ReplicaSets have).

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::apps::Scale;
use super::strategy::{Strategy, Subresource};
use super::Request;
use crate::api::objects::{self, child, not_supported, set_default};
use crate::api::resources;
use crate::api::status::{ApiError, Cause};
use crate::api::table;

pub struct DaemonSet;
pub struct StatefulSet;
pub struct ControllerRevision;

pub static DAEMONSET: DaemonSet = DaemonSet;
pub static STATEFULSET: StatefulSet = StatefulSet;
pub static CONTROLLERREVISION: ControllerRevision = ControllerRevision;

fn workload_example(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
    }})
}

fn bump_generation(obj: &mut Value, old: &Value) {
    let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
    obj["metadata"]["generation"] = json!(if obj["spec"] != old["spec"] { g + 1 } else { g });
}

fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None | Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// `SetDefaults_PodSpec` and `SetDefaults_Container` on a workload's pod template: what the
/// pods made from it would get, so the template (and the revisions holding it) reads as the
/// pods do. Admission-time fields (service account, priority, tolerations) are not defaults.
pub fn default_pod_template(template: &mut Value) {
    let spec = child(template, "spec");
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let image = c["image"].as_str().unwrap_or_default().to_string();
            let Some(c) = c.as_object_mut() else { continue };
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
            set_default(c, "resources", json!({}));
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
}

fn nonnegative(obj: &Value, path: &[&str], causes: &mut Vec<Cause>) {
    let v = path.iter().fold(obj, |v, k| &v[*k]);
    if let Some(n) = v.as_i64().filter(|n| *n < 0) {
        causes.push((
            "FieldValueInvalid",
            path.join("."),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

/// What DaemonSets and StatefulSets check alike of their selector and template.
fn validate_selector_and_template(kind: &str, spec: &Value, causes: &mut Vec<Cause>) {
    let sel = &spec["selector"];
    if sel.is_null() {
        causes.push(objects::required("spec.selector"));
    } else if sel["matchLabels"].as_object().map_or(0, Map::len)
        + sel["matchExpressions"].as_array().map_or(0, Vec::len)
        == 0
    {
        causes.push((
            "FieldValueInvalid",
            "spec.selector".into(),
            format!("Invalid value: {sel}: empty selector is invalid for {kind}"),
        ));
    }
    let typed: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> =
        serde_json::from_value(sel.clone()).ok();
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(spec["template"]["metadata"]["labels"].clone()).unwrap_or_default();
    match k8s_rules::labels::Selector::from_label_selector(typed.as_ref()) {
        Err(e) => causes.push((
            "FieldValueInvalid",
            "spec.selector".into(),
            format!("Invalid value: {sel}: {e}"),
        )),
        Ok(s) if !sel.is_null() && !s.matches(&labels) => causes.push((
            "FieldValueInvalid",
            "spec.template.metadata.labels".into(),
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                spec["template"]["metadata"]["labels"]
            ),
        )),
        Ok(_) => {}
    }
    let pod = &spec["template"]["spec"];
    if pod["containers"].as_array().is_none_or(Vec::is_empty) {
        causes.push(objects::required("spec.template.spec.containers"));
    }
    let policy = &pod["restartPolicy"];
    if policy != "Always" {
        causes.push(not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["Always"],
        ));
    }
    if !pod["activeDeadlineSeconds"].is_null() {
        causes.push((
            "FieldValueForbidden",
            "spec.template.spec.activeDeadlineSeconds".into(),
            format!("Forbidden: activeDeadlineSeconds in {kind} is not Supported"),
        ));
    }
}

/// An int-or-percent that must be ≥ 0 and at most 100%; whether it is zero.
fn int_or_percent(v: &Value, field: &str, causes: &mut Vec<Cause>) -> bool {
    match v {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                causes.push((
                    "FieldValueInvalid",
                    field.into(),
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
            n == 0
        }
        Value::String(s) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                causes.push((
                    "FieldValueInvalid",
                    field.into(),
                    format!("Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
                ));
                return false;
            };
            if p > 100 {
                causes.push((
                    "FieldValueInvalid",
                    field.into(),
                    format!("Invalid value: {s:?}: must not be greater than 100%"),
                ));
            }
            p == 0
        }
        _ => true,
    }
}

const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

fn template_generation(obj: &Value) -> i64 {
    obj["metadata"]["annotations"][TEMPLATE_GENERATION]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl Strategy for DaemonSet {
    fn example(&self, name: &str) -> Value {
        workload_example(name)
    }

    fn printer(&self) -> &'static table::Printer {
        &table::DAEMONSETS
    }

    /// The deprecated `spec.templateGeneration` lives on as an annotation that counts
    /// template changes (its pods carry it as `pod-template-generation`).
    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
        let g = template_generation(obj).max(1);
        child(child(obj, "metadata"), "annotations")[TEMPLATE_GENERATION] = json!(g.to_string());
    }

    fn prepare_for_update(&self, _: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        self.defaults(obj);
        bump_generation(obj, old);
        let mut g = template_generation(old);
        if obj["spec"]["template"] != old["spec"]["template"] {
            g += 1;
        }
        if g > 0 {
            child(child(obj, "metadata"), "annotations")[TEMPLATE_GENERATION] =
                json!(g.to_string());
        }
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = child(obj, "spec");
        default_pod_template(child(spec, "template"));
        let strategy = child(spec, "updateStrategy");
        if strategy["type"].is_null() {
            strategy["type"] = json!("RollingUpdate");
        }
        if strategy["type"] == "RollingUpdate" {
            let ru = child(strategy, "rollingUpdate");
            if let Some(ru) = ru.as_object_mut() {
                set_default(ru, "maxUnavailable", json!(1));
                set_default(ru, "maxSurge", json!(0));
            }
        }
        if let Some(s) = spec.as_object_mut() {
            set_default(s, "revisionHistoryLimit", json!(10));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = &obj["spec"];
        validate_selector_and_template("daemonset", spec, &mut causes);
        nonnegative(obj, &["spec", "minReadySeconds"], &mut causes);
        nonnegative(obj, &["spec", "revisionHistoryLimit"], &mut causes);
        let strategy = &spec["updateStrategy"];
        match strategy["type"].as_str() {
            None | Some("") => causes.push(objects::required("spec.updateStrategy.type")),
            Some("OnDelete") => {}
            Some("RollingUpdate") => {
                let ru = &strategy["rollingUpdate"];
                if ru.is_null() {
                    causes.push(objects::required("spec.updateStrategy.rollingUpdate"));
                } else {
                    let f = "spec.updateStrategy.rollingUpdate";
                    let unavailable_zero = int_or_percent(
                        &ru["maxUnavailable"],
                        &format!("{f}.maxUnavailable"),
                        &mut causes,
                    );
                    let surge_zero =
                        int_or_percent(&ru["maxSurge"], &format!("{f}.maxSurge"), &mut causes);
                    if unavailable_zero && surge_zero {
                        causes.push((
                            "FieldValueInvalid",
                            format!("{f}.maxUnavailable"),
                            format!(
                                "Invalid value: {}: cannot be 0 when maxSurge is 0",
                                ru["maxUnavailable"]
                            ),
                        ));
                    }
                }
            }
            Some(_) => causes.push(not_supported(
                "spec.updateStrategy.type",
                &strategy["type"],
                &["OnDelete", "RollingUpdate"],
            )),
        }
        causes
    }
}

/// The spec fields a StatefulSet may change after creation.
const STATEFULSET_MUTABLE: [&str; 7] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

#[async_trait]
impl Strategy for StatefulSet {
    fn example(&self, name: &str) -> Value {
        workload_example(name)
    }

    fn printer(&self) -> &'static table::Printer {
        &table::STATEFULSETS
    }

    fn subresources(&self) -> &'static [&'static dyn Subresource] {
        &[&Scale]
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
    }

    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        self.defaults(obj);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                for k in STATEFULSET_MUTABLE {
                    m.remove(k);
                }
            }
            v
        };
        if strip(&obj["spec"]) != strip(&old["spec"]) {
            return Err(ApiError::invalid(
                &resources::STATEFULSETS,
                name,
                vec![(
                    "FieldValueForbidden",
                    "spec".into(),
                    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
                )],
            ));
        }
        bump_generation(obj, old);
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = child(obj, "spec");
        default_pod_template(child(spec, "template"));
        for claim in spec
            .get_mut("volumeClaimTemplates")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(s) = child(claim, "spec").as_object_mut() {
                set_default(s, "volumeMode", json!("Filesystem"));
            }
            if let Some(s) = child(claim, "status").as_object_mut() {
                set_default(s, "phase", json!("Pending"));
            }
        }
        let strategy = child(spec, "updateStrategy");
        if strategy["type"].is_null() {
            strategy["type"] = json!("RollingUpdate");
            child(strategy, "rollingUpdate");
        }
        if strategy["type"] == "RollingUpdate" {
            if let Some(ru) = strategy["rollingUpdate"].as_object_mut() {
                set_default(ru, "partition", json!(0));
            }
        }
        let policy = child(spec, "persistentVolumeClaimRetentionPolicy");
        if let Some(p) = policy.as_object_mut() {
            set_default(p, "whenDeleted", json!("Retain"));
            set_default(p, "whenScaled", json!("Retain"));
        }
        if let Some(s) = spec.as_object_mut() {
            set_default(s, "podManagementPolicy", json!("OrderedReady"));
            set_default(s, "replicas", json!(1));
            set_default(s, "revisionHistoryLimit", json!(10));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = &obj["spec"];
        match spec["podManagementPolicy"].as_str() {
            None | Some("") => causes.push(objects::required("spec.podManagementPolicy")),
            Some("OrderedReady" | "Parallel") => {}
            Some(p) => causes.push(objects::invalid(
                "spec.podManagementPolicy",
                p,
                "must be 'OrderedReady' or 'Parallel'",
            )),
        }
        let strategy = &spec["updateStrategy"];
        match strategy["type"].as_str() {
            None | Some("") => causes.push(objects::required("spec.updateStrategy")),
            Some("OnDelete") => {
                if !strategy["rollingUpdate"].is_null() {
                    causes.push((
                        "FieldValueInvalid",
                        "spec.updateStrategy.rollingUpdate".into(),
                        format!(
                            "Invalid value: {}: only allowed for updateStrategy 'RollingUpdate'",
                            strategy["rollingUpdate"]
                        ),
                    ));
                }
            }
            Some("RollingUpdate") => {
                nonnegative(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "partition"],
                    &mut causes,
                );
                let mu = &strategy["rollingUpdate"]["maxUnavailable"];
                let field = "spec.updateStrategy.rollingUpdate.maxUnavailable";
                if !mu.is_null() && int_or_percent(mu, field, &mut causes) {
                    causes.push((
                        "FieldValueInvalid",
                        field.into(),
                        format!("Invalid value: {mu}: must be greater than 0"),
                    ));
                }
            }
            Some(_) => causes.push((
                "FieldValueInvalid",
                "spec.updateStrategy".into(),
                format!("Invalid value: {strategy}: must be 'RollingUpdate' or 'OnDelete'"),
            )),
        }
        let policy = &spec["persistentVolumeClaimRetentionPolicy"];
        for k in ["whenDeleted", "whenScaled"] {
            if let Some(v) = policy[k]
                .as_str()
                .filter(|v| !["Retain", "Delete"].contains(v))
            {
                causes.push(not_supported(
                    &format!("spec.persistentVolumeClaimRetentionPolicy.{k}"),
                    &json!(v),
                    &["Retain", "Delete"],
                ));
            }
        }
        nonnegative(obj, &["spec", "replicas"], &mut causes);
        nonnegative(obj, &["spec", "minReadySeconds"], &mut causes);
        nonnegative(obj, &["spec", "ordinals", "start"], &mut causes);
        if let Some(s) = spec["serviceName"].as_str().filter(|s| !s.is_empty()) {
            if !objects::is_dns_label(s) {
                causes.push(objects::invalid(
                    "spec.serviceName",
                    s,
                    objects::DNS1123_LABEL,
                ));
            }
        }
        validate_selector_and_template("statefulset", spec, &mut causes);
        causes
    }
}

#[async_trait]
impl Strategy for ControllerRevision {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "data": {"spec": {"template": {"$patch": "replace"}}}, "revision": 1})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::CONTROLLERREVISIONS
    }

    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        if obj["data"] != old["data"] {
            return Err(ApiError::invalid(
                &resources::CONTROLLERREVISIONS,
                name,
                vec![(
                    "FieldValueInvalid",
                    "data".into(),
                    format!("Invalid value: {}: field is immutable", obj["data"]),
                )],
            ));
        }
        Ok(())
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        if obj["data"].is_null() {
            causes.push((
                "FieldValueRequired",
                "data".into(),
                "Required value: data is mandatory".into(),
            ));
        }
        nonnegative(obj, &["revision"], &mut causes);
        causes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams() {
        let mut ds = workload_example("d");
        DAEMONSET.defaults(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(ds["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(DAEMONSET.validate(&ds).is_empty());

        let mut sts = workload_example("s");
        STATEFULSET.defaults(&mut sts);
        let spec = &sts["spec"];
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert!(STATEFULSET.validate(&sts).is_empty());
    }

    #[test]
    fn selectors_must_exist_and_match_the_template() {
        let mut ds = workload_example("d");
        ds["spec"]["selector"] = Value::Null;
        DAEMONSET.defaults(&mut ds);
        let causes = DAEMONSET.validate(&ds);
        assert!(causes
            .iter()
            .any(|c| c.1 == "spec.selector" && c.2 == "Required value"));
        let mut sts = workload_example("s");
        sts["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        sts["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        STATEFULSET.defaults(&mut sts);
        let fields: Vec<String> = STATEFULSET
            .validate(&sts)
            .into_iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.restartPolicy"
            ]
        );
    }

    #[test]
    fn a_statefulsets_claims_and_service_are_immutable() {
        let mut old = workload_example("s");
        STATEFULSET.defaults(&mut old);
        old["metadata"]["generation"] = json!(1);
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        STATEFULSET.prepare_for_update("s", &mut new, &old).unwrap();
        assert_eq!(new["metadata"]["generation"], 2);
        new["spec"]["serviceName"] = json!("other");
        let err = STATEFULSET
            .prepare_for_update("s", &mut new, &old)
            .unwrap_err();
        assert!(
            err.message.contains("updates to statefulset spec"),
            "{}",
            err.message
        );
    }
}
