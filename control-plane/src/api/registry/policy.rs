//! policy/v1 PodDisruptionBudgets (defaults, validation as `pkg/apis/policy/validation`,
//! generation, a fresh status on create) and the PDB-aware eviction of a pod
//! (`pkg/registry/core/pod/storage/eviction.go`), which `pods/eviction` serves: the eviction
//! goes through only if the pod's budget allows one more disruption, which it takes from the
//! budget's status (`disruptionsAllowed` down by one, the pod in `disruptedPods`) in the same
//! guarded write, so two evictions cannot both take the last one.

use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::strategy::Strategy;
use super::{decode_kv, json_response, store_error, ApiResult, Request, Store};
use crate::api::objects;
use crate::api::resources;
use crate::api::status::{self, ApiError, Cause};
use crate::api::table;

pub struct Pdbs;
pub static PDB: Pdbs = Pdbs;

/// `policyv1.DisruptionBudgetCause`.
pub const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";
/// The eviction's refusal, as kubectl drain matches it.
pub const VIOLATES_BUDGET: &str =
    "Cannot evict pod as it would violate the pod's disruption budget.";
/// `MaxDisruptedPodSize`: evictions the disruption controller has yet to confirm.
const MAX_DISRUPTED_PODS: usize = 2000;

#[async_trait]
impl Strategy for Pdbs {
    fn example(&self, name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": name}}}})
    }

    fn printer(&self) -> &'static table::Printer {
        &table::PODDISRUPTIONBUDGETS
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        obj["metadata"]["generation"] = json!(1);
        obj["status"] = json!({"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0});
    }

    fn prepare_for_update(&self, _: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
        }
        Ok(())
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
            causes.push(objects::invalid(
                "spec",
                "object",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        for f in ["minAvailable", "maxUnavailable"] {
            int_or_percent(&spec[f], &format!("spec.{f}"), &mut causes);
        }
        validate_selector(&spec["selector"], "spec.selector", &mut causes);
        if let Some(p) = spec["unhealthyPodEvictionPolicy"].as_str() {
            if !["IfHealthyBudget", "AlwaysAllow"].contains(&p) {
                causes.push((
                    "FieldValueNotSupported",
                    "spec.unhealthyPodEvictionPolicy".into(),
                    format!("Unsupported value: {p:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""),
                ));
            }
        }
        causes
    }
}

/// `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`.
fn int_or_percent(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = v.as_i64() {
        if n < 0 {
            causes.push((
                "FieldValueInvalid",
                field.into(),
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            ));
        }
    } else if let Some(s) = v.as_str() {
        match s.strip_suffix('%').and_then(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u64>().ok())
                .flatten()
        }) {
            None => causes.push(objects::invalid(
                field,
                s,
                "must be an integer or percentage (e.g '5%')",
            )),
            Some(p) if p > 100 => {
                causes.push(objects::invalid(field, s, "must not be greater than 100%"))
            }
            Some(_) => {}
        }
    }
}

/// `ValidateLabelSelector`: operators known, values as each operator needs, keys and values
/// valid label parts.
pub fn validate_selector(sel: &Value, field: &str, causes: &mut Vec<Cause>) {
    for (i, e) in sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{field}.matchExpressions[{i}]");
        let op = e["operator"].as_str().unwrap_or_default();
        let has_values = e["values"].as_array().is_some_and(|v| !v.is_empty());
        match op {
            "In" | "NotIn" if !has_values => causes.push((
                "FieldValueRequired",
                format!("{at}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
            )),
            "Exists" | "DoesNotExist" if has_values => causes.push((
                "FieldValueForbidden",
                format!("{at}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    .into(),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => causes.push(objects::invalid(
                &format!("{at}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
    }
    let parsed: Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, _> =
        serde_json::from_value(sel.clone());
    if let Ok(s) = parsed.as_ref() {
        if let Err(e) = k8s_rules::labels::Selector::from_label_selector(Some(s)) {
            if causes.is_empty() {
                causes.push(objects::invalid(field, "object", &e));
            }
        }
    }
}

/// Whether a PDB's selector selects these labels for an eviction: a missing or empty selector
/// selects nothing there (`getPodDisruptionBudgets`: such a budget "should match nothing, not
/// everything"), nor does an invalid one.
pub fn selects(pdb: &Value, labels: &Value) -> bool {
    let Ok(sel) = serde_json::from_value(pdb["spec"]["selector"].clone()) else {
        return false;
    };
    let Ok(sel) = k8s_rules::labels::Selector::from_label_selector(Some(&sel)) else {
        return false;
    };
    let labels = serde_json::from_value(labels.clone()).unwrap_or_default();
    !sel.selects_everything() && sel.matches(&labels)
}

/// `podutil.IsPodReady`, on the stored JSON.
fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `UpdateDisruptionAllowedCondition`.
pub fn set_allowed_condition(status: &mut Value) {
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0) > 0;
    let (st, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    match conds.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) if c["status"] == st && c["reason"] == reason => {}
        Some(c) => {
            c["status"] = json!(st);
            c["reason"] = json!(reason);
            c["message"] = json!("");
            c["lastTransitionTime"] = json!(objects::now());
            c["observedGeneration"] = status["observedGeneration"].clone();
        }
        None => conds.push(
            json!({"type": "DisruptionAllowed", "status": st, "reason": reason,
            "message": "", "lastTransitionTime": objects::now(),
            "observedGeneration": status["observedGeneration"]}),
        ),
    }
    status["conditions"] = json!(conds);
}

/// A 429 refusal with the DisruptionBudget cause (and `Retry-After` when given).
fn too_many_requests(cause: String, retry_after: u64) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", VIOLATES_BUDGET);
    let mut d = json!({"causes": [{"reason": DISRUPTION_BUDGET_CAUSE, "message": cause}]});
    if retry_after > 0 {
        d["retryAfterSeconds"] = json!(retry_after);
    }
    e.details = Some(d);
    e
}

/// What an eviction's budget says.
enum Verdict {
    /// Delete the pod; `if_unchanged`: only if its resourceVersion is still the one the
    /// decision was made on (a pod that could turn ready meanwhile).
    Delete { if_unchanged: bool, pdb: String },
    /// Answer this Status (two budgets: upstream answers a Failure Status with code 500).
    Answer(Value),
}

/// Takes one disruption from the budget, retrying on a concurrent write (`checkAndDecrement`
/// under `EvictionsRetry`: 20 tries, 500 ms apart).
async fn check_and_decrement(
    req: &Request<'_>,
    ns: &str,
    pdb_name: &str,
    pod_name: &str,
) -> Result<(), ApiError> {
    let store = Store::new(&resources::PODDISRUPTIONBUDGETS).status();
    let mut tries = 0;
    loop {
        tries += 1;
        let kv = store.current(req, Some(ns), pdb_name).await?;
        let mut pdb = decode_kv(&kv);
        let st = &pdb["status"];
        if st["observedGeneration"].as_i64().unwrap_or(0)
            < pdb["metadata"]["generation"].as_i64().unwrap_or(0)
        {
            return Err(too_many_requests(
                format!("The disruption budget {pdb_name} is still being processed by the server."),
                10,
            ));
        }
        let allowed = st["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed < 0 {
            return Err(ApiError::forbidden(format!("poddisruptionbudgets.policy \"{pdb_name}\" is forbidden: pdb disruptions allowed is negative")));
        }
        if st["disruptedPods"].as_object().map_or(0, |m| m.len()) > MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(format!("poddisruptionbudgets.policy \"{pdb_name}\" is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller")));
        }
        if allowed == 0 {
            return Err(too_many_requests(
                format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    st["desiredHealthy"].as_i64().unwrap_or(0),
                    st["currentHealthy"].as_i64().unwrap_or(0)
                ),
                0,
            ));
        }
        let status = objects::child(&mut pdb, "status");
        status["disruptionsAllowed"] = json!(allowed - 1);
        if allowed - 1 == 0 {
            set_allowed_condition(status);
        }
        if req.dry_run() {
            return Ok(());
        }
        objects::child(status, "disruptedPods")[pod_name] = json!(jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string());
        match store.put(req, pdb_name, &kv, &mut pdb).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code == 409 && tries < 20 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the pod may go, and how, under the budgets that select it.
async fn admit(req: &Request<'_>, ns: &str, pod: &Value) -> Result<Verdict, ApiError> {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
    // `canIgnorePDB`: pods that do not run, or already go, are nobody's disruption; a pending
    // one only if it has not started running meanwhile (`shouldEnforceResourceVersion`).
    if terminal || deleting || phase == "Pending" {
        return Ok(Verdict::Delete {
            if_unchanged: !terminal && !deleting,
            pdb: String::new(),
        });
    }
    let r = &resources::PODDISRUPTIONBUDGETS;
    let (kvs, _) = req
        .store()
        .list(&format!("{}{ns}/", r.prefix()), None)
        .await
        .map_err(|e| store_error(r, "", e))?;
    let pdbs: Vec<Value> = kvs
        .iter()
        .map(decode_kv)
        .filter(|p| selects(p, &pod["metadata"]["labels"]))
        .collect();
    if pdbs.len() > 1 {
        return Ok(Verdict::Answer(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "code": 500,
            "message": "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."}),
        ));
    }
    let Some(pdb) = pdbs.first() else {
        return Ok(Verdict::Delete {
            if_unchanged: false,
            pdb: String::new(),
        });
    };
    let pdb_name = pdb["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !is_ready(pod) {
        // An unhealthy pod does not count: it may go without spending a disruption if the
        // policy says so, or while the budget is met.
        let policy = pdb["spec"]["unhealthyPodEvictionPolicy"].as_str();
        let st = &pdb["status"];
        let desired = st["desiredHealthy"].as_i64().unwrap_or(0);
        if policy == Some("AlwaysAllow")
            || (st["currentHealthy"].as_i64().unwrap_or(0) >= desired && desired > 0)
        {
            return Ok(Verdict::Delete {
                if_unchanged: true,
                pdb: pdb_name,
            });
        }
    }
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    check_and_decrement(req, ns, &pdb_name, pod_name).await?;
    Ok(Verdict::Delete {
        if_unchanged: false,
        pdb: pdb_name,
    })
}

/// A refusal as the response, with `Retry-After` when it suggests one.
fn refusal(e: ApiError) -> ApiResult {
    let retry = e
        .details
        .as_ref()
        .and_then(|d| d["retryAfterSeconds"].as_u64())
        .unwrap_or(0);
    let mut resp = e.into_response();
    if retry > 0 {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            retry.to_string().parse().expect("digits"),
        );
    }
    Ok(resp)
}

/// `pods/<name>/eviction`: deletes the pod with the eviction's options if its budget allows.
/// A pod that changed under an eviction that needs no budget is looked at again (upstream's
/// retry on conflict), unless the client gave a resourceVersion of its own.
pub async fn evict(
    req: &Request<'_>,
    store: &Store,
    ns: &str,
    name: &str,
    body: &Bytes,
) -> ApiResult {
    let client_rv = !body.is_empty()
        && !req.parse_body(body)?["deleteOptions"]["preconditions"]["resourceVersion"].is_null();
    let mut tries = 0;
    loop {
        tries += 1;
        match evict_once(req, store, ns, name, body).await {
            Err(e) if e.code == 409 && !client_rv && tries < 20 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

async fn evict_once(
    req: &Request<'_>,
    store: &Store,
    ns: &str,
    name: &str,
    body: &Bytes,
) -> ApiResult {
    let eviction: Value = if body.is_empty() {
        json!({})
    } else {
        req.parse_body(body)?
    };
    if let Some(n) = eviction["metadata"]["name"].as_str() {
        if n != name {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
    }
    let current = store.current(req, Some(ns), name).await?;
    let pod = decode_kv(&current);
    let mut opts = match &eviction["deleteOptions"] {
        Value::Null => json!({}),
        o => o.clone(),
    };
    let client_rv = !opts["preconditions"]["resourceVersion"].is_null();
    let (if_unchanged, pdb) = match admit(req, ns, &pod).await {
        Ok(Verdict::Delete { if_unchanged, pdb }) => (if_unchanged && !client_rv, pdb),
        Ok(Verdict::Answer(status)) => {
            return Ok(json_response(StatusCode::INTERNAL_SERVER_ERROR, &status))
        }
        Err(e) => return refusal(e),
    };
    if if_unchanged {
        objects::child(&mut opts, "preconditions")["resourceVersion"] =
            pod["metadata"]["resourceVersion"].clone();
    }
    // A pod that changed since the decision was made on it: the client retries.
    let changed = || -> ApiResult {
        if pdb.is_empty() {
            // No budget: evicted as soon as the pod holds still (retried by `evict`).
            return Err(ApiError::conflict(store.r, name));
        }
        refusal(too_many_requests(
            format!("The disruption budget {pdb} is still being processed by the server."),
            10,
        ))
    };
    if !req.dry_run() {
        // `addConditionAndDeletePod`: the pod says why it goes, before it goes.
        let current = store.current(req, Some(ns), name).await?;
        if let Some(rv) = opts["preconditions"]["resourceVersion"].as_str() {
            if rv != current.mod_rev.to_string() {
                return if if_unchanged {
                    changed()
                } else {
                    Err(ApiError::conflict(store.r, name))
                };
            }
        }
        let mut pod = decode_kv(&current);
        let conds = objects::child(objects::child(&mut pod, "status"), "conditions");
        let mut list = conds.as_array().cloned().unwrap_or_default();
        list.retain(|c| c["type"] != "DisruptionTarget");
        list.push(json!({"type": "DisruptionTarget", "status": "True",
            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
            "lastProbeTime": null, "lastTransitionTime": objects::now()}));
        *conds = json!(list);
        match store.put(req, name, &current, &mut pod).await {
            Ok(()) => {}
            Err(e) if e.code == 409 && if_unchanged => return changed(),
            Err(e) => return Err(e),
        }
        if !opts["preconditions"]["resourceVersion"].is_null() {
            opts["preconditions"]["resourceVersion"] = pod["metadata"]["resourceVersion"].clone();
        }
    }
    let body = Bytes::from(opts.to_string());
    match store.delete(req, Some(ns), name, &body).await {
        Ok(_) => {}
        Err(e) if e.code == 409 && if_unchanged => return changed(),
        Err(e) => return Err(e),
    }
    Ok(json_response(
        StatusCode::CREATED,
        &status::success(json!({"name": name, "kind": "pods"})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_validate_as_upstream() {
        let v = |spec: Value| PDB.validate(&json!({"spec": spec}));
        assert!(v(json!({"minAvailable": 1, "selector": {}})).is_empty());
        assert!(v(json!({"maxUnavailable": "50%"})).is_empty());
        let both = v(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both.len(), 1);
        assert!(both[0]
            .2
            .ends_with("minAvailable and maxUnavailable cannot be both set"));
        let neg = v(json!({"minAvailable": -1}));
        assert_eq!(neg[0].1, "spec.minAvailable");
        assert_eq!(
            neg[0].2,
            "Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            v(json!({"maxUnavailable": "120%"}))[0].2,
            "Invalid value: \"120%\": must not be greater than 100%"
        );
        assert_eq!(
            v(json!({"maxUnavailable": "x"}))[0].2,
            "Invalid value: \"x\": must be an integer or percentage (e.g '5%')"
        );
        let bad_op = v(json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}));
        assert_eq!(bad_op[0].1, "spec.selector.matchExpressions[0].operator");
        let policy = v(json!({"unhealthyPodEvictionPolicy": "Never"}));
        assert_eq!(policy[0].0, "FieldValueNotSupported");
    }

    #[test]
    fn an_eviction_finds_no_budget_with_an_empty_or_missing_selector() {
        let labels = json!({"app": "web"});
        assert!(!selects(&json!({"spec": {"selector": {}}}), &labels));
        assert!(!selects(&json!({"spec": {}}), &labels));
        assert!(selects(
            &json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}}),
            &labels
        ));
        assert!(!selects(
            &json!({"spec": {"selector": {"matchLabels": {"app": "db"}}}}),
            &labels
        ));
    }
}
