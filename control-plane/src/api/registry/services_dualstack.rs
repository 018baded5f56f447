//! Dual-stack Services: how `clusterIP`, `clusterIPs`, `ipFamilies` and `ipFamilyPolicy` are
//! reconciled, defaulted and checked, following kube-apiserver (`storage.go`'s
//! `normalizeClusterIPs`/`patchAllocatedValues`, `strategy.go`'s `dropTypeDependentFields`,
//! `alloc.go`'s `initIPFamilyFields`, `validation.go`'s `ValidateServiceClusterIPsRelatedFields`
//! and the upgrade/downgrade checks of `ValidateServiceUpdate`). The error texts are upstream's,
//! values printed as Go prints them (`[]string{"10.96.0.1"}`), since clients and people match
//! on them (`services_checks` has the checks). The allocation itself is
//! `Services::allocate_ips` (`services.rs`).

use std::borrow::Cow;
use std::net::IpAddr;

use k8s_rules::cidrs::DualStackCidrs;
use serde_json::{json, Value};

use super::services_checks::invalid_policy;
pub use super::services_checks::{
    invalid_ips, related_fields, validate, validate_upgrade_downgrade,
};
use crate::api::objects::invalid_value;
use crate::api::status::Cause;

pub const NONE: &str = "None";
pub(super) const SINGLE: &str = "SingleStack";
pub(super) const PREFER: &str = "PreferDualStack";
pub(super) const REQUIRE: &str = "RequireDualStack";

/// The strings of a string array field (absent: none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn family_of(ip: &str) -> Option<&'static str> {
    ip.parse::<IpAddr>().ok().map(k8s_rules::cidrs::family_name)
}

fn other_family(f: &str) -> &'static str {
    if f == "IPv4" {
        "IPv6"
    } else {
        "IPv4"
    }
}

pub(super) fn is_external_name(svc: &Value) -> bool {
    svc["spec"]["type"] == "ExternalName"
}

/// Upstream's `isHeadlessService`: exactly `clusterIPs: ["None"]`.
pub fn is_headless(svc: &Value) -> bool {
    strings(&svc["spec"]["clusterIPs"]) == [NONE]
}

fn selectorless(svc: &Value) -> bool {
    svc["spec"]["selector"]
        .as_object()
        .is_none_or(|m| m.is_empty())
}

fn same(a: &Value, b: &Value, field: &str) -> bool {
    strings(&a["spec"][field]) == strings(&b["spec"][field])
}

/// The addresses a service holds from the ranges (none for ExternalName and headless ones).
pub fn held_ips(svc: &Value) -> Vec<String> {
    if is_external_name(svc) {
        return vec![];
    }
    strings(&svc["spec"]["clusterIPs"])
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != NONE)
        .collect()
}

/// `clusterIPs` from `clusterIP` for clients that only know the singular field, and both
/// cleared or kept together on updates (upstream's `normalizeClusterIPs`).
pub fn normalize_cluster_ips(svc: &mut Value, old: Option<&Value>) {
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ips = strings(&svc["spec"]["clusterIPs"]);
    let Some(old) = old else {
        if !ip.is_empty() && ips.is_empty() {
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
        return;
    };
    let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
    let old_ips = strings(&old["spec"]["clusterIPs"]);
    if !old_ips.is_empty() && ips.is_empty() && old_ip == ip {
        svc["spec"]["clusterIPs"] = json!(old_ips);
    }
    if old_ip != ip {
        let unchanged = same(old, svc, "clusterIPs");
        if !old_ip.is_empty() && ip.is_empty() {
            if unchanged {
                remove(svc, "clusterIPs");
            }
        } else if unchanged {
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
    }
}

/// `old` as upstream's `defaultOnReadService` would give it, the part objects stored here need:
/// headless services stored before `clusterIPs` was set for them read as if it had been.
pub fn as_read(old: &Value) -> Cow<'_, Value> {
    let ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
    if ip.is_empty() || is_external_name(old) || !strings(&old["spec"]["clusterIPs"]).is_empty() {
        return Cow::Borrowed(old);
    }
    let mut o = old.clone();
    o["spec"]["clusterIPs"] = json!([ip]);
    Cow::Owned(o)
}

/// What the system allocated stays when an update leaves it out, so a manifest applied again
/// is accepted (upstream's `patchAllocatedValues`, the cluster IP part).
pub fn patch_allocated(svc: &mut Value, old: &Value) {
    if is_external_name(old) || is_external_name(svc) {
        return;
    }
    if svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
        && !old["spec"]["clusterIP"].is_null()
    {
        svc["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
    }
    if strings(&svc["spec"]["clusterIPs"]).is_empty()
        && !strings(&old["spec"]["clusterIPs"]).is_empty()
    {
        svc["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
}

/// A service turned ExternalName loses the IP fields it was given (unless the update changed
/// them too, which validation then refuses): upstream's `dropTypeDependentFields`.
pub fn drop_type_dependent(svc: &mut Value, old: &Value) {
    if is_external_name(old) || !is_external_name(svc) {
        return;
    }
    if same(old, svc, "clusterIPs") {
        remove(svc, "clusterIP");
        remove(svc, "clusterIPs");
    }
    if same(old, svc, "ipFamilies") {
        remove(svc, "ipFamilies");
    }
    if old["spec"]["ipFamilyPolicy"] == svc["spec"]["ipFamilyPolicy"] {
        remove(svc, "ipFamilyPolicy");
    }
}

fn remove(svc: &mut Value, field: &str) {
    if let Some(spec) = svc["spec"].as_object_mut() {
        spec.remove(field);
    }
}

/// Upstream's `isMatchingPreferDualStackClusterIPFields`: a PreferDualStack service updated
/// with its IP fields as they were is neither upgraded nor downgraded, whatever the cluster
/// has become since.
pub fn unchanged_prefer_dual_stack(svc: &Value, old: Option<&Value>) -> bool {
    let Some(old) = old else { return false };
    let (spec, ospec) = (&svc["spec"], &old["spec"]);
    spec["ipFamilyPolicy"] == PREFER
        && (ospec["ipFamilyPolicy"].is_null() || ospec["ipFamilyPolicy"] == PREFER)
        && spec["type"] == ospec["type"]
        && matches!(
            spec["type"].as_str(),
            Some("ClusterIP" | "NodePort" | "LoadBalancer")
        )
        && same(old, svc, "clusterIPs")
        && same(old, svc, "ipFamilies")
}

/// The first half of upstream's `initIPFamilyFields`, which needs nothing of the cluster:
/// `ipFamilyPolicy` defaulted (the old one on updates; RequireDualStack for a headless service
/// without selector; else SingleStack), the fields checked together, a move to SingleStack
/// trimming the secondary IP and family, and policies that contradict the fields refused.
pub fn settle_policy(svc: &mut Value, old: Option<&Value>) -> Vec<Cause> {
    if is_external_name(svc) || unchanged_prefer_dual_stack(svc, old) {
        return vec![];
    }
    if svc["spec"]["ipFamilyPolicy"].is_null() {
        svc["spec"]["ipFamilyPolicy"] = match old.map(|o| &o["spec"]["ipFamilyPolicy"]) {
            Some(p) if !p.is_null() => p.clone(),
            _ if svc["spec"]["clusterIP"] == NONE && selectorless(svc) => json!(REQUIRE),
            _ => json!(SINGLE),
        };
    }
    let causes = related_fields(svc);
    if !causes.is_empty() {
        return causes;
    }
    let mut causes = Vec::new();
    let single = svc["spec"]["ipFamilyPolicy"] == SINGLE;
    if let Some(old) = old {
        let (ips, fams) = (
            strings(&svc["spec"]["clusterIPs"]),
            strings(&svc["spec"]["ipFamilies"]),
        );
        let (old_ips, old_fams) = (
            strings(&old["spec"]["clusterIPs"]),
            strings(&old["spec"]["ipFamilies"]),
        );
        if single {
            // A move to SingleStack with the fields as they were means: drop the secondary.
            if ips == old_ips && ips.len() > 1 {
                svc["spec"]["clusterIPs"] = json!(ips[..1]);
            }
            if fams == old_fams && fams.len() > 1 {
                svc["spec"]["ipFamilies"] = json!(fams[..1]);
            }
        } else {
            let policy = svc["spec"]["ipFamilyPolicy"].clone();
            if !ips.is_empty() && ips.len() < old_ips.len() {
                causes.push(invalid_policy(
                    &policy,
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if !fams.is_empty() && fams.len() < old_fams.len() {
                causes.push(invalid_policy(
                    &policy,
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if single {
        let policy = json!(SINGLE);
        if strings(&svc["spec"]["clusterIPs"]).len() == 2 {
            causes.push(invalid_policy(&policy, "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"));
        }
        if strings(&svc["spec"]["ipFamilies"]).len() == 2 {
            causes.push(invalid_policy(&policy, "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"));
        }
    }
    causes
}

/// The second half of `initIPFamilyFields`, against the cluster's ranges: `ipFamilies` from
/// the given cluster IPs, else the primary family, then the other one for a dual-stack policy
/// on a dual-stack cluster (a headless service without selector gets both whatever the
/// cluster); families the cluster has no range for are refused.
pub fn settle_families(cidrs: &DualStackCidrs, svc: &mut Value, old: Option<&Value>) -> Vec<Cause> {
    if is_external_name(svc) || unchanged_prefer_dual_stack(svc, old) {
        return vec![];
    }
    let configured = |f: &str| cidrs.of_family(f).is_some();
    let primary = k8s_rules::cidrs::family_name(cidrs.primary().ip());
    let ips = strings(&svc["spec"]["clusterIPs"]);
    let mut fams = strings(&svc["spec"]["ipFamilies"]);
    let mut causes = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if ip == NONE {
            break;
        }
        let f = family_of(ip).unwrap_or("unknown");
        if i >= fams.len() {
            if configured(f) {
                fams.push(f.to_string());
            } else {
                causes.push(invalid_ips(
                    &format!("spec.clusterIPs[{i}]"),
                    &ips,
                    &format!("{f} is not configured on this cluster"),
                ));
            }
        }
    }
    if !causes.is_empty() {
        return causes;
    }
    let policy = svc["spec"]["ipFamilyPolicy"]
        .as_str()
        .unwrap_or(SINGLE)
        .to_string();
    if svc["spec"]["clusterIP"] == NONE && selectorless(svc) {
        if fams.is_empty() {
            fams.push(primary.to_string());
        }
        // Allowed even on a single-stack cluster: a headless service allocates nothing.
        if fams.len() < 2 && policy != SINGLE {
            let other = other_family(&fams[0]);
            fams.push(other.to_string());
        }
        svc["spec"]["ipFamilies"] = json!(fams);
        return vec![];
    }
    if policy == REQUIRE && !cidrs.is_dual() {
        causes.push(invalid_value(
            "spec.ipFamilyPolicy",
            &json!(REQUIRE),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in fams.iter().enumerate() {
        if !configured(f) {
            causes.push(invalid_value(
                &format!("spec.ipFamilies[{i}]"),
                &json!(f),
                "not configured on this cluster",
            ));
        }
    }
    if !causes.is_empty() {
        return causes;
    }
    if fams.is_empty() {
        fams.push(primary.to_string());
    }
    if policy != SINGLE && fams.len() == 1 && cidrs.is_dual() {
        let other = other_family(&fams[0]);
        fams.push(other.to_string());
    }
    svc["spec"]["ipFamilies"] = json!(fams);
    vec![]
}

#[cfg(test)]
#[path = "services_dualstack_tests.rs"]
mod api_tests;
