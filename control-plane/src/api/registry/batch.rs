//! Jobs and CronJobs (batch/v1): Kubernetes' defaults (`pkg/apis/batch/v1/defaults.go`), the
//! generated selector and labels of a Job (`pkg/registry/batch/job/strategy.go`), generation,
//! and validation (`pkg/apis/batch/validation`): restart policy, completion modes, back-off per
//! index, pod failure and success policies, immutable fields, schedules and time zones.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::strategy::Strategy;
use super::Request;
use crate::api::objects::{self, child, set_default};
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

fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Cause {
    let list = supported
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    (
        "FieldValueNotSupported",
        field.into(),
        format!("Unsupported value: {value}: supported values: {list}"),
    )
}

fn invalid_value(field: &str, value: &Value, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.into(),
        format!("Invalid value: {value}: {why}"),
    )
}

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

/// `validateJobSpec`: what a Job and a CronJob's job template share.
fn validate_job_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    for k in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
    ] {
        nonnegative(spec, path, k, causes);
    }
    let mode = &spec["completionMode"];
    let indexed = mode == "Indexed";
    if !mode.is_null() && mode != "NonIndexed" && !indexed {
        causes.push(not_supported(
            &format!("{path}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    if indexed {
        match spec["completions"].as_i64() {
            None => causes.push(required(
                &format!("{path}.completions"),
                "when completion mode is Indexed",
            )),
            Some(n) if n > MAX_INDEXED => causes.push(invalid_value(
                &format!("{path}.completions"),
                &json!(n),
                "must be less than or equal to 100000 when completion mode is Indexed",
            )),
            _ => {}
        }
        if let Some(n) = spec["parallelism"].as_i64().filter(|n| *n > MAX_INDEXED) {
            causes.push(invalid_value(
                &format!("{path}.parallelism"),
                &json!(n),
                "must be less than or equal to 100000 when completion mode is Indexed",
            ));
        }
    }
    if let Some(per) = spec["backoffLimitPerIndex"].as_i64() {
        nonnegative(spec, path, "backoffLimitPerIndex", causes);
        if !indexed {
            causes.push(required(
                &format!("{path}.completionMode"),
                "when backoffLimitPerIndex is specified, completionMode must be Indexed",
            ));
        }
        let _ = per;
    }
    if let Some(max) = spec["maxFailedIndexes"].as_i64() {
        nonnegative(spec, path, "maxFailedIndexes", causes);
        if spec["backoffLimitPerIndex"].is_null() {
            causes.push(required(
                &format!("{path}.backoffLimitPerIndex"),
                "when maxFailedIndexes is specified",
            ));
        }
        if spec["completions"].as_i64().is_some_and(|c| max > c) {
            causes.push(invalid_value(
                &format!("{path}.maxFailedIndexes"),
                &json!(max),
                "must be less than or equal to completions",
            ));
        }
    }
    let template = &spec["template"];
    if template["spec"]["containers"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        causes.push(objects::required(&format!(
            "{path}.template.spec.containers"
        )));
    }
    let restart = &template["spec"]["restartPolicy"];
    if restart != "OnFailure" && restart != "Never" {
        causes.push(not_supported(
            &format!("{path}.template.spec.restartPolicy"),
            restart,
            &["OnFailure", "Never"],
        ));
    }
    if !spec["podFailurePolicy"].is_null() {
        validate_pod_failure_policy(spec, path, causes);
    }
    if !spec["successPolicy"].is_null() {
        validate_success_policy(spec, path, indexed, causes);
    }
    let replacement = &spec["podReplacementPolicy"];
    if !replacement.is_null() {
        if !spec["podFailurePolicy"].is_null() && replacement != "Failed" {
            causes.push(not_supported(
                &format!("{path}.podReplacementPolicy"),
                replacement,
                &["Failed"],
            ));
        } else if replacement != "Failed" && replacement != "TerminatingOrFailed" {
            causes.push(not_supported(
                &format!("{path}.podReplacementPolicy"),
                replacement,
                &["Failed", "TerminatingOrFailed"],
            ));
        }
    }
}

fn validate_pod_failure_policy(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let restart = &spec["template"]["spec"]["restartPolicy"];
    if restart != "Never" {
        causes.push(invalid_value(
            &format!("{path}.template.spec.restartPolicy"),
            restart,
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    let rules = spec["podFailurePolicy"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let rp = format!("{path}.podFailurePolicy.rules[{i}]");
        let action = &rule["action"];
        match action.as_str() {
            Some("FailJob" | "Ignore" | "Count") => {}
            Some("FailIndex") => {
                if spec["backoffLimitPerIndex"].is_null() {
                    causes.push(invalid_value(
                        &format!("{rp}.action"),
                        action,
                        "requires the backoffLimitPerIndex to be set",
                    ));
                }
            }
            Some(_) => causes.push(not_supported(
                &format!("{rp}.action"),
                action,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            )),
            None => causes.push(required(&format!("{rp}.action"), "")),
        }
        let (codes, conds) = (&rule["onExitCodes"], &rule["onPodConditions"]);
        match (codes.is_null(), conds.is_null()) {
            (false, false) => causes.push(invalid_value(
                &rp,
                &json!("object"),
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (true, true) => causes.push(invalid_value(
                &rp,
                &json!("object"),
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if !codes.is_null() {
            let op = &codes["operator"];
            if op != "In" && op != "NotIn" {
                causes.push(not_supported(
                    &format!("{rp}.onExitCodes.operator"),
                    op,
                    &["In", "NotIn"],
                ));
            }
            let values: Vec<i64> = codes["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            let vp = format!("{rp}.onExitCodes.values");
            if values.is_empty() {
                causes.push(invalid_value(
                    &vp,
                    &codes["values"],
                    "at least one value is required",
                ));
            }
            for (j, v) in values.iter().enumerate() {
                if j > 0 && values[j - 1] == *v {
                    causes.push((
                        "FieldValueDuplicate",
                        format!("{vp}[{j}]"),
                        format!("Duplicate value: {v}"),
                    ));
                } else if j > 0 && values[j - 1] > *v {
                    causes.push(invalid_value(
                        &format!("{vp}[{j}]"),
                        &json!(v),
                        "must be ordered",
                    ));
                }
                if op == "In" && *v == 0 {
                    causes.push(invalid_value(
                        &format!("{vp}[{j}]"),
                        &json!(v),
                        "must not be 0 for the In operator",
                    ));
                }
            }
        }
    }
}

fn validate_success_policy(spec: &Value, path: &str, indexed: bool, causes: &mut Vec<Cause>) {
    let sp = format!("{path}.successPolicy");
    if !indexed {
        causes.push(invalid_value(
            &sp,
            &json!("object"),
            "requires indexed completion mode",
        ));
        return;
    }
    let rules = spec["successPolicy"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rules.is_empty() {
        causes.push(required(
            &format!("{sp}.rules"),
            "at least one rules must be specified when the successPolicy is specified",
        ));
    }
    let completions = spec["completions"].as_i64().unwrap_or(0);
    for (i, r) in rules.iter().enumerate() {
        let rp = format!("{sp}.rules[{i}]");
        if r["succeededIndexes"].is_null() && r["succeededCount"].is_null() {
            causes.push(required(
                &rp,
                "at least one of succeededCount or succeededIndexes must be specified",
            ));
        }
        let mut total = None;
        if let Some(ix) = r["succeededIndexes"].as_str() {
            match k8s_rules::jobindexes::Intervals::parse(ix, completions) {
                Ok(iv) => total = Some(iv.total()),
                Err(e) => causes.push(invalid_value(
                    &format!("{rp}.succeededIndexes"),
                    &json!(ix),
                    &format!("error parsing succeededIndexes: {e}"),
                )),
            }
        }
        if let Some(n) = r["succeededCount"].as_i64() {
            if n < 0 {
                causes.push(invalid_value(
                    &format!("{rp}.succeededCount"),
                    &json!(n),
                    "must be greater than or equal to 0",
                ));
            } else if n > completions {
                causes.push(invalid_value(&format!("{rp}.succeededCount"), &json!(n), &format!("must be less than or equal to {completions} (the number of specified completions)")));
            } else if let Some(t) = total.filter(|t| n > *t as i64) {
                causes.push(invalid_value(&format!("{rp}.succeededCount"), &json!(n), &format!("must be less than or equal to {t} (the number of indexes in the specified succeededIndexes field)")));
            }
        }
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

const TZ_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_+";

/// `validateTimeZone`.
fn validate_time_zone(tz: &Value, causes: &mut Vec<Cause>) {
    let Some(name) = tz.as_str() else { return };
    let field = "spec.timeZone";
    if name.is_empty() {
        causes.push(invalid_value(
            field,
            tz,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    for part in name.split('/') {
        let ok = part != "."
            && part != ".."
            && !part.starts_with('-')
            && (1..=14).contains(&part.len())
            && part.chars().all(|c| TZ_CHARS.contains(c));
        if !ok {
            causes.push(invalid_value(
                field,
                tz,
                &format!("unknown time zone {name}"),
            ));
            return;
        }
    }
    if name.eq_ignore_ascii_case("Local") {
        causes.push(invalid_value(
            field,
            tz,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    }
    if let Err(e) = k8s_rules::cron::zone(name) {
        causes.push(invalid_value(field, tz, &e));
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
