//! The checks of a Service's IP fields, in upstream's words: `ValidateService`'s (ExternalName
//! has none, the headless marker only on ClusterIP services),
//! `ValidateServiceClusterIPsRelatedFields`, and `ValidateServiceUpdate`'s upgrade/downgrade
//! checks. Values are printed as Go's field errors print them (`[]string{"10.96.0.1"}`,
//! `[]core.IPFamily{"IPv4"}`, `"null"` for an unset policy), since clients and people match
//! on the text.

use serde_json::{json, Value};

use super::services_dualstack::{
    family_of, is_external_name, is_headless, strings, NONE, PREFER, REQUIRE, SINGLE,
};
use crate::api::objects::{invalid_value, not_supported, required};
use crate::api::status::Cause;

/// Go's `%#v` of a `[]string` (or of a named string slice, `[]core.IPFamily`).
fn go_slice(kind: &str, v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]{kind}{{{}}}", items.join(", "))
}

pub fn invalid_ips(field: &str, ips: &[String], why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.into(),
        format!("Invalid value: {}: {why}", go_slice("string", ips)),
    )
}

fn invalid_families(field: &str, families: &[String], why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.into(),
        format!(
            "Invalid value: {}: {why}",
            go_slice("core.IPFamily", families)
        ),
    )
}

use crate::api::objects::forbidden;

/// `spec.ipFamilyPolicy` as upstream prints a `*IPFamilyPolicy`: `"null"` when unset.
pub(super) fn invalid_policy(policy: &Value, why: &str) -> Cause {
    let shown = if policy.is_null() {
        json!("null")
    } else {
        policy.clone()
    };
    invalid_value("spec.ipFamilyPolicy", &shown, why)
}

/// The checks of `ValidateService` on the IP fields: ExternalName has none, the headless
/// marker only on ClusterIP services, then `ValidateServiceClusterIPsRelatedFields`.
pub fn validate(svc: &Value) -> Vec<Cause> {
    let spec = &svc["spec"];
    let mut causes = Vec::new();
    match spec["type"].as_str() {
        Some("ExternalName") => {
            if !strings(&spec["clusterIPs"]).is_empty() {
                causes.push(forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if !strings(&spec["ipFamilies"]).is_empty() {
                causes.push(forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if !spec["ipFamilyPolicy"].is_null() {
                causes.push(forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            return causes;
        }
        Some(t @ ("NodePort" | "LoadBalancer")) if is_headless(svc) => {
            causes.push(invalid_value(
                "spec.clusterIPs[0]",
                &json!(NONE),
                &format!("may not be set to 'None' for {t} services"),
            ));
        }
        _ => {}
    }
    causes.extend(related_fields(svc));
    causes
}

/// Upstream's `ValidateServiceClusterIPsRelatedFields` (not for ExternalName services).
pub fn related_fields(svc: &Value) -> Vec<Cause> {
    let spec = &svc["spec"];
    let mut causes = Vec::new();
    let ip = spec["clusterIP"].as_str().unwrap_or_default();
    let ips = strings(&spec["clusterIPs"]);
    if !ip.is_empty() {
        if ips.is_empty() {
            causes.push(required("spec.clusterIPs"));
        } else if ips[0] != ip {
            causes.push(invalid_ips(
                "spec.clusterIPs",
                &ips,
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        causes.push(invalid_ips(
            "spec.clusterIPs",
            &ips,
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let families = strings(&spec["ipFamilies"]);
    for (i, f) in families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        if f != "IPv4" && f != "IPv6" {
            causes.push(not_supported(&field, &json!(f), &["IPv4", "IPv6"]));
        }
        if families[..i].contains(f) {
            causes.push((
                "FieldValueDuplicate",
                field,
                format!("Duplicate value: {f:?}"),
            ));
        }
    }
    let policy = &spec["ipFamilyPolicy"];
    if !policy.is_null() && ![SINGLE, PREFER, REQUIRE].contains(&policy.as_str().unwrap_or("")) {
        causes.push(not_supported(
            "spec.ipFamilyPolicy",
            policy,
            &[PREFER, REQUIRE, SINGLE],
        ));
    }
    let mut bad_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == NONE {
            if ips.len() > 1 {
                bad_ips = true;
                causes.push(invalid_ips(
                    "spec.clusterIPs",
                    &ips,
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if family_of(ip).is_none() {
            bad_ips = true;
            causes.push(invalid_value(
                &format!("spec.clusterIPs[{i}]"),
                &json!(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if ips.len() > 2 {
        causes.push(invalid_ips(
            "spec.clusterIPs",
            &ips,
            "may only hold up to 2 values",
        ));
    }
    // Bad addresses would skew what follows (indexes, families).
    if bad_ips {
        return causes;
    }
    if ips.len() > 1 {
        let fams: Vec<_> = ips.iter().filter_map(|ip| family_of(ip)).collect();
        if !(fams.contains(&"IPv4") && fams.contains(&"IPv6")) {
            causes.push(invalid_ips(
                "spec.clusterIPs",
                &ips,
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    if !is_headless(svc) {
        for (i, (ip, f)) in ips.iter().zip(&families).enumerate() {
            let actual = family_of(ip);
            if (f == "IPv4" || f == "IPv6") && actual != Some(f.as_str()) {
                causes.push(invalid_value(
                    &format!("spec.clusterIPs[{i}]"),
                    &json!(ip),
                    &format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    causes
}

/// `ValidateServiceUpdate`'s upgrade/downgrade checks: the primary cluster IP and family never
/// change, and only SingleStack releases the secondary ones.
pub fn validate_upgrade_downgrade(svc: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if is_external_name(svc) || is_external_name(old) {
        return causes;
    }
    let (headless, old_headless) = (is_headless(svc), is_headless(old));
    let not_single = svc["spec"]["ipFamilyPolicy"] != SINGLE;
    let policy = &svc["spec"]["ipFamilyPolicy"];
    let (ips, old_ips) = (
        strings(&svc["spec"]["clusterIPs"]),
        strings(&old["spec"]["clusterIPs"]),
    );
    if !(headless && old_headless) {
        if ips.len() == old_ips.len() {
            for (i, ip) in old_ips.iter().enumerate() {
                if *ip != ips[i] {
                    causes.push(invalid_ips(
                        &format!("spec.clusterIPs[{i}]"),
                        &ips,
                        "may not change once set",
                    ));
                }
            }
        } else if ips.len() < old_ips.len() {
            if ips.is_empty() {
                causes.push(invalid_ips(
                    "spec.clusterIPs[0]",
                    &ips,
                    "primary clusterIP can not be unset",
                ));
            }
            if !ips.is_empty() && ips[0] != old_ips[0] {
                causes.push(invalid_ips(
                    "spec.clusterIPs[0]",
                    &ips,
                    "may not change once set",
                ));
            }
            if ips.len() == 1 && not_single {
                causes.push(invalid_policy(
                    policy,
                    "must be set to 'SingleStack' when releasing the secondary clusterIP",
                ));
            }
        } else if !old_ips.is_empty() && ips[0] != old_ips[0] {
            causes.push(invalid_ips(
                "spec.clusterIPs[0]",
                &ips,
                "may not change once set",
            ));
        }
    }
    // Headless services may change families, and so may services turning (non-)headless.
    if headless || old_headless {
        return causes;
    }
    let (fams, old_fams) = (
        strings(&svc["spec"]["ipFamilies"]),
        strings(&old["spec"]["ipFamilies"]),
    );
    if fams.len() == old_fams.len() {
        for (i, f) in old_fams.iter().enumerate() {
            if *f != fams[i] {
                // Upstream names index 0 whichever entry changed.
                causes.push(invalid_families(
                    "spec.ipFamilies[0]",
                    &fams,
                    "may not change once set",
                ));
            }
        }
    } else if fams.len() < old_fams.len() {
        // Upstream tests clusterIPs here, and prints them as the ipFamilies' value.
        if ips.is_empty() {
            causes.push(invalid_families(
                "spec.ipFamilies[0]",
                &fams,
                "primary ipFamily can not be unset",
            ));
        }
        if !fams.is_empty() && fams[0] != old_fams[0] {
            causes.push(invalid_ips(
                "spec.ipFamilies[0]",
                &ips,
                "may not change once set",
            ));
        }
        if fams.len() == 1 && not_single {
            causes.push(invalid_policy(
                policy,
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !old_fams.is_empty() && !fams.is_empty() && fams[0] != old_fams[0] {
        causes.push(invalid_ips(
            "spec.ipFamilies[0]",
            &ips,
            "may not change once set",
        ));
    }
    causes
}
