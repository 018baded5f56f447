//! Jobs and CronJobs (batch/v1): Kubernetes' defaults (`pkg/apis/batch/v1/defaults.go`), the
//! generated selector and labels of a Job (`pkg/registry/batch/job/strategy.go`), generation,
//! and validation (`pkg/apis/batch/validation`): restart policy, completion modes, back-off per
//! index, pod failure and success policies, immutable fields, schedules and time zones.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

mod validation;

use validation::{validate_job_spec, validate_time_zone};

use super::strategy::Strategy;
use super::Request;
use crate::api::objects::{self, child, invalid_value, not_supported, set_default};
use crate::api::resources;
use crate::api::status::{ApiError, Cause};
use crate::api::table;

/// `batch.kubernetes.io/controller-uid` and friends.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";
const MAX_INDEXED: i64 = 100_000;

pub struct Jobs;
pub static JOB: Jobs = Jobs;
pub struct CronJobs;
pub static CRONJOB: CronJobs = CronJobs;

fn required(field: &str, why: &str) -> Cause {
    let msg = if why.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {why}")
    };
    ("FieldValueRequired", field.into(), msg)
}

fn nonnegative(spec: &Value, path: &str, key: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec[key].as_i64().filter(|n| *n < 0) {
        causes.push(invalid_value(
            &format!("{path}.{key}"),
            &json!(n),
            "must be greater than or equal to 0",
        ));
    }
}

/// `SetDefaults_Job`, on a Job's or a CronJob's job template spec.
fn default_job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    set_default(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let has_pfp = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for rule in rules {
            if let Some(conds) = rule
                .get_mut("onPodConditions")
                .and_then(Value::as_array_mut)
            {
                for c in conds.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(c, "status", json!("True"));
                }
            }
        }
    }
    set_default(
        spec,
        "podReplacementPolicy",
        json!(if has_pfp {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    // The pod defaulting upstream applies to every pod template: a template without a restart
    // policy has `Always`, which a Job then refuses.
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(ps) = child(template, "spec").as_object_mut() {
        set_default(ps, "restartPolicy", json!("Always"));
    }
}

/// `generateSelector`: the Job's pods carry its name and UID, and it selects them by UID.
fn generate_selector(obj: &mut Value) {
    let name = obj["metadata"]["name"].clone();
    let uid = obj["metadata"]["uid"].clone();
    let spec = child(obj, "spec");
    let template = child(spec, "template");
    let meta = child(template, "metadata");
    let labels = child(meta, "labels");
    if let Some(l) = labels.as_object_mut() {
        for k in [LEGACY_JOB_NAME, JOB_NAME] {
            set_default(l, k, name.clone());
        }
        for k in [LEGACY_CONTROLLER_UID, CONTROLLER_UID] {
            set_default(l, k, uid.clone());
        }
    }
    let sel = child(spec, "selector");
    let ml = child(sel, "matchLabels");
    if let Some(ml) = ml.as_object_mut() {
        set_default(ml, CONTROLLER_UID, uid);
    }
}

/// `ValidateGeneratedSelector`: a generated selector must be the one generated.
fn validate_generated_selector(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if spec["manualSelector"] == true || spec["selector"].is_null() {
        return;
    }
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, want) in [(LEGACY_CONTROLLER_UID, uid), (LEGACY_JOB_NAME, name)] {
        match labels[k].as_str() {
            None => causes.push(required(
                &format!("spec.template.metadata.labels[{k}]"),
                &format!("must be '{want}'"),
            )),
            Some(v) if v != want => causes.push(invalid_value(
                &format!("spec.template.metadata.labels[{k}]"),
                &json!(v),
                &format!("must be '{want}'"),
            )),
            _ => {}
        }
    }
    let expected = [
        (LEGACY_CONTROLLER_UID, uid),
        (LEGACY_JOB_NAME, name),
        (CONTROLLER_UID, uid),
        (JOB_NAME, name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(sel) = selector(spec) {
        if !sel.matches(&expected) {
            causes.push(invalid_value(
                "spec.selector",
                &spec["selector"],
                "`selector` not auto-generated",
            ));
        }
    }
}

fn selector(spec: &Value) -> Option<k8s_rules::labels::Selector> {
    let ls: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(spec["selector"].clone()).ok()?;
    k8s_rules::labels::Selector::from_label_selector(Some(&ls)).ok()
}

/// The scheduling directives a suspended Job that never started may change
/// (`JobMutableNodeSchedulingDirectives`), and the template's labels and annotations.
fn without_mutable_scheduling(template: &Value) -> Value {
    let mut t = template.clone();
    for k in ["labels", "annotations"] {
        if let Some(m) = t["metadata"].as_object_mut() {
            m.remove(k);
        }
    }
    if let Some(s) = t["spec"].as_object_mut() {
        for k in ["nodeSelector", "affinity", "tolerations", "schedulingGates"] {
            s.remove(k);
        }
    }
    t
}

fn immutable(field: &str, value: &Value) -> Cause {
    invalid_value(field, value, "field is immutable")
}

#[async_trait]
impl Strategy for Jobs {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::JOBS
    }

    fn validate_name(&self, name: &str) -> Option<Cause> {
        objects::dns_subdomain_name(name)
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
        obj["status"] = json!({});
        if obj["spec"]["manualSelector"] != true {
            generate_selector(obj);
        }
    }

    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        self.defaults(obj);
        let (new, was) = (&obj["spec"], &old["spec"]);
        let mut causes = Vec::new();
        let elastic = new["completionMode"] == "Indexed"
            && new["completions"] == new["parallelism"]
            && was["completions"] == was["parallelism"];
        if new["completions"] != was["completions"] && !elastic {
            causes.push(immutable("spec.completions", &new["completions"]));
        }
        for k in [
            "selector",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
            "successPolicy",
            "managedBy",
        ] {
            if new[k] != was[k] {
                causes.push(immutable(&format!("spec.{k}"), &new[k]));
            }
        }
        if new["template"] != was["template"] {
            let may_schedule = new["suspend"] == true && old["status"]["startTime"].is_null();
            if !may_schedule
                || without_mutable_scheduling(&new["template"])
                    != without_mutable_scheduling(&was["template"])
            {
                causes.push(immutable("spec.template", &json!("object")));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&resources::JOBS, name, causes));
        }
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
        if template_labels.is_object()
            && obj["metadata"]["labels"]
                .as_object()
                .is_none_or(Map::is_empty)
        {
            obj["metadata"]["labels"] = template_labels;
        }
        if let Some(spec) = child(obj, "spec").as_object_mut() {
            default_job_spec(spec);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_generated_selector(obj, &mut causes);
        let spec = &obj["spec"];
        validate_job_spec(spec, "spec", &mut causes);
        match selector(spec) {
            None if spec["selector"].is_null() => causes.push(required("spec.selector", "")),
            None => causes.push(invalid_value(
                "spec.selector",
                &spec["selector"],
                "invalid label selector",
            )),
            Some(sel) => {
                let labels = spec["template"]["metadata"]["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                if !sel.matches(&labels) {
                    causes.push(invalid_value(
                        "spec.template.metadata.labels",
                        &spec["template"]["metadata"]["labels"],
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
        causes
    }
}

#[async_trait]
impl Strategy for CronJobs {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::CRONJOBS
    }

    fn validate_name(&self, name: &str) -> Option<Cause> {
        // The Jobs it makes are named `<cronjob>-<minutes since the epoch>` (11 characters).
        if name.len() > 52 {
            return Some(objects::invalid(
                "metadata.name",
                name,
                "must be no more than 52 characters",
            ));
        }
        objects::dns_subdomain_name(name)
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
        obj["status"] = json!({});
    }

    fn prepare_for_update(&self, _: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        Ok(())
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = child(obj, "spec");
        if let Some(s) = spec.as_object_mut() {
            set_default(s, "concurrencyPolicy", json!("Allow"));
            set_default(s, "suspend", json!(false));
            set_default(s, "successfulJobsHistoryLimit", json!(3));
            set_default(s, "failedJobsHistoryLimit", json!(1));
        }
        let jt = child(spec, "jobTemplate");
        if let Some(js) = child(jt, "spec").as_object_mut() {
            default_job_spec(js);
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = &obj["spec"];
        let schedule = &spec["schedule"];
        match schedule.as_str() {
            None | Some("") => causes.push(required("spec.schedule", "")),
            Some(s) => {
                if let Err(e) = k8s_rules::cron::parse(s) {
                    causes.push(invalid_value("spec.schedule", schedule, &e));
                }
                if s.contains("TZ") {
                    causes.push(invalid_value(
                        "spec.schedule",
                        schedule,
                        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                    ));
                }
            }
        }
        validate_time_zone(&spec["timeZone"], &mut causes);
        nonnegative(spec, "spec", "startingDeadlineSeconds", &mut causes);
        nonnegative(spec, "spec", "successfulJobsHistoryLimit", &mut causes);
        nonnegative(spec, "spec", "failedJobsHistoryLimit", &mut causes);
        let policy = &spec["concurrencyPolicy"];
        match policy.as_str() {
            Some("Allow" | "Forbid" | "Replace") => {}
            None | Some("") => causes.push(required("spec.concurrencyPolicy", "")),
            Some(_) => causes.push(not_supported(
                "spec.concurrencyPolicy",
                policy,
                &["Allow", "Forbid", "Replace"],
            )),
        }
        let js = &spec["jobTemplate"]["spec"];
        validate_job_spec(js, "spec.jobTemplate.spec", &mut causes);
        if !js["selector"].is_null() {
            causes.push(invalid_value(
                "spec.jobTemplate.spec.selector",
                &js["selector"],
                "`selector` will be auto-generated",
            ));
        }
        if js["manualSelector"] == true {
            causes.push(not_supported(
                "spec.jobTemplate.spec.manualSelector",
                &js["manualSelector"],
                &["nil", "false"],
            ));
        }
        causes
    }
}
