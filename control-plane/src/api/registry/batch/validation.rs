//! Validation shared by Jobs and CronJobs' job templates (`validateJobSpec` and the pod
//! failure and success policies), and CronJob time zones.

use serde_json::{json, Value};

use super::{invalid_value, nonnegative, not_supported, required, MAX_INDEXED};
use crate::api::objects;
use crate::api::status::Cause;

/// `validateJobSpec`: what a Job and a CronJob's job template share.
pub(super) fn validate_job_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
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

const TZ_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_+";

/// `validateTimeZone`.
pub(super) fn validate_time_zone(tz: &Value, causes: &mut Vec<Cause>) {
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
