//! Services: defaults, cluster IPs of each of the service's IP families allocated on create
//! (released if the create fails and when the service goes), the secondary one taken or given
//! back when an update changes the policy (`services_dualstack` has upstream's rules); node ports
//! (`api::nodeports`) taken on create and on updates that need new ones, given back when no
//! longer held.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::services_dualstack as ds;
use super::strategy::Strategy;
use super::Request;
use crate::api::nodeports;
use crate::api::objects::{self, child, invalid_value, not_supported, set_default};
use crate::api::resources::SERVICES;
use crate::api::services::{allocate, release, AllocError};
use crate::api::status::{ApiError, Cause};
use crate::api::table;

/// `sessionAffinityConfig.clientIP.timeoutSeconds`: upstream's default (3 hours) and bound.
const DEFAULT_AFFINITY_SECONDS: i64 = 10800;
const MAX_AFFINITY_SECONDS: i64 = 86400;

pub struct Services;
pub static SERVICE: Services = Services;

/// Whether the service gets cluster IPs (dry runs allocate nothing).
fn allocates(req: &Request<'_>, obj: &Value) -> bool {
    obj["spec"]["type"] != "ExternalName" && obj["spec"]["clusterIP"] != ds::NONE && !req.dry_run()
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

async fn release_all(req: &Request<'_>, ips: &[String]) {
    for ip in ips {
        release(req.store(), ip).await;
    }
}

#[async_trait]
impl Strategy for Services {
    fn printer(&self) -> &'static table::Printer {
        &table::SERVICES
    }

    fn validate_name(&self, name: &str) -> Option<Cause> {
        objects::dns_label_name(name)
    }

    fn defaults(&self, obj: &mut Value) {
        let spec = child(obj, "spec");
        let s = spec.as_object_mut().unwrap();
        set_default(s, "type", json!("ClusterIP"));
        set_default(s, "sessionAffinity", json!("None"));
        let t = s
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if t == "NodePort" || t == "LoadBalancer" {
            set_default(s, "externalTrafficPolicy", json!("Cluster"));
        }
        if t == "LoadBalancer" {
            set_default(s, "allocateLoadBalancerNodePorts", json!(true));
        }
        if s.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            let cfg = s
                .entry("sessionAffinityConfig")
                .or_insert_with(|| json!({}));
            if let Some(cfg) = cfg.as_object_mut() {
                let ip = cfg.entry("clientIP").or_insert_with(|| json!({}));
                if let Some(ip) = ip.as_object_mut() {
                    set_default(ip, "timeoutSeconds", json!(DEFAULT_AFFINITY_SECONDS));
                }
            }
        }
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                let p = p.as_object_mut().unwrap();
                set_default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                set_default(p, "targetPort", port);
            }
        }
    }

    /// Upstream's checks of the proxy's fields (`ValidateService`): affinity and its timeout,
    /// the traffic policies.
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        let affinity = &spec["sessionAffinity"];
        match affinity.as_str() {
            Some("None") | None => {
                if !spec["sessionAffinityConfig"].is_null() {
                    causes.push(invalid_value(
                        "spec.sessionAffinityConfig",
                        &spec["sessionAffinityConfig"],
                        "must not be set when session affinity is None",
                    ));
                }
            }
            Some("ClientIP") => {
                let t = &spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
                if !matches!(t.as_i64(), Some(1..=MAX_AFFINITY_SECONDS)) {
                    causes.push(invalid_value(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        t,
                        &format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                    ));
                }
            }
            Some(_) => causes.push(not_supported(
                "spec.sessionAffinity",
                affinity,
                &["ClientIP", "None"],
            )),
        }
        causes.extend(ds::validate(obj));
        for f in ["externalTrafficPolicy", "internalTrafficPolicy"] {
            let v = &spec[f];
            if !v.is_null() && !matches!(v.as_str(), Some("Cluster" | "Local")) {
                causes.push(not_supported(
                    &format!("spec.{f}"),
                    v,
                    &["Cluster", "Local"],
                ));
            }
        }
        causes
    }

    fn prepare_for_create(&self, _: &Request<'_>, obj: &mut Value) {
        ds::normalize_cluster_ips(obj, None);
    }

    /// The IP fields an update leaves out keep their values, `clusterIP` and `clusterIPs` move
    /// together, and what needs nothing of the cluster's ranges is settled and checked here
    /// (so dry runs see it too); the rest is `before_update`'s.
    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        let old = &*ds::as_read(old);
        ds::patch_allocated(obj, old);
        ds::normalize_cluster_ips(obj, Some(old));
        ds::drop_type_dependent(obj, old);
        let mut causes = ds::settle_policy(obj, Some(old));
        if causes.is_empty() {
            causes = ds::validate_upgrade_downgrade(obj, old);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&SERVICES, name, causes));
        }
        Ok(())
    }

    async fn before_create(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if obj["spec"]["type"] == "ExternalName" {
            return Ok(());
        }
        let mut causes = ds::settle_policy(obj, None);
        if causes.is_empty() {
            causes = ds::settle_families(&req.server.service_cidr, obj, None);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&SERVICES, name_of(obj), causes));
        }
        if obj["spec"]["internalTrafficPolicy"].is_null() {
            obj["spec"]["internalTrafficPolicy"] = json!("Cluster");
        }
        if !allocates(req, obj) {
            return Ok(());
        }
        let owner = format!("{}/{}", ns.unwrap_or("default"), name_of(obj));
        self.allocate_ips(req, &owner, obj, 0).await?;
        if let Err(e) = nodeports::assign(req.store(), &owner, obj, &[]).await {
            release_all(req, &ds::held_ips(obj)).await;
            return Err(e);
        }
        Ok(())
    }

    async fn create_failed(&self, req: &Request<'_>, obj: &Value) {
        if allocates(req, obj) {
            release_all(req, &ds::held_ips(obj)).await;
            nodeports::release(req.store(), &nodeports::held(obj)).await;
        }
    }

    async fn before_update(
        &self,
        req: &Request<'_>,
        new: &mut Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        // A port given without its node port keeps the one it had (same port and protocol).
        let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
        if let Some(ports) = new["spec"]["ports"].as_array_mut() {
            for p in ports {
                if p["nodePort"].as_i64().unwrap_or(0) != 0 {
                    continue;
                }
                if let Some(o) = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                {
                    if !o["nodePort"].is_null() {
                        p["nodePort"] = o["nodePort"].clone();
                    }
                }
            }
        }
        if new["spec"]["healthCheckNodePort"].as_i64().unwrap_or(0) == 0
            && !old["spec"]["healthCheckNodePort"].is_null()
        {
            new["spec"]["healthCheckNodePort"] = old["spec"]["healthCheckNodePort"].clone();
        }
        let owner = format!(
            "{}/{}",
            old["metadata"]["namespace"].as_str().unwrap_or("default"),
            name_of(old)
        );
        self.update_cluster_ips(req, &owner, new, &ds::as_read(old))
            .await?;
        let result = nodeports::assign(req.store(), &owner, new, &nodeports::held(old)).await;
        if result.is_err() {
            release_all(req, &newly_held(new, old)).await;
        }
        result
    }

    /// Gives back what the loser of old and new held: the old object's addresses and ports
    /// it no longer has once stored, the new one's fresh ones if it was not.
    async fn update_done(&self, req: &Request<'_>, new: &Value, old: &Value, stored: bool) {
        let (now, before) = (nodeports::held(new), nodeports::held(old));
        let (keep, lose) = if stored { (now, before) } else { (before, now) };
        let gone: Vec<u16> = lose.into_iter().filter(|p| !keep.contains(p)).collect();
        nodeports::release(req.store(), &gone).await;
        let (keep, lose) = if stored { (new, old) } else { (old, new) };
        release_all(req, &newly_held(lose, keep)).await;
    }

    async fn after_delete(&self, req: &Request<'_>, gone: &Value) {
        release_all(req, &ds::held_ips(gone)).await;
        nodeports::release(req.store(), &nodeports::held(gone)).await;
    }
}

/// The addresses `a` holds that `b` does not.
fn newly_held(a: &Value, b: &Value) -> Vec<String> {
    let b = ds::held_ips(b);
    ds::held_ips(a)
        .into_iter()
        .filter(|ip| !b.contains(ip))
        .collect()
}

impl Services {
    /// Allocates the cluster IPs of `ipFamilies[from..]` (the ones given honoured), setting
    /// `clusterIPs` and `clusterIP`; on a failure, gives back what it took.
    async fn allocate_ips(
        &self,
        req: &Request<'_>,
        owner: &str,
        obj: &mut Value,
        from: usize,
    ) -> Result<(), ApiError> {
        let families = ds::strings(&obj["spec"]["ipFamilies"]);
        let mut ips = ds::strings(&obj["spec"]["clusterIPs"]);
        ips.resize(ips.len().max(families.len()), String::new());
        // Upstream prints the fields as given (unallocated ones empty) in its errors.
        let shown = ips.clone();
        let mut taken = Vec::new();
        for (i, family) in families.iter().enumerate().skip(from) {
            let Some(range) = req.server.service_cidr.of_family(family) else {
                release_all(req, &taken).await;
                return Err(ApiError::internal(format!(
                    "{family} is not configured on this cluster"
                )));
            };
            let wanted = match ips[i].as_str() {
                "" => None,
                ip => match ip.parse() {
                    Ok(ip) => Some(ip),
                    // Validation refused these already; kept an error, not a panic.
                    Err(e) => {
                        release_all(req, &taken).await;
                        return Err(ApiError::internal(format!(
                            "clusterIPs[{i}] {ip:?} is not an address: {e}"
                        )));
                    }
                },
            };
            match allocate(req.store(), range, wanted, owner).await {
                Ok(ip) => {
                    ips[i] = ip.to_string();
                    taken.push(ips[i].clone());
                }
                Err(e) => {
                    release_all(req, &taken).await;
                    return Err(match (wanted, e) {
                        (_, e @ AllocError::Store(_)) => {
                            ApiError::internal(format!("failed to allocate a serviceIP: {e}"))
                        }
                        (Some(ip), e) => ApiError::invalid(
                            &SERVICES,
                            name_of(obj),
                            vec![ds::invalid_ips(
                                "spec.clusterIPs",
                                &shown,
                                &format!("failed to allocate IP {ip}: {e}"),
                            )],
                        ),
                        (None, e) => {
                            ApiError::internal(format!("failed to allocate a serviceIP: {e}"))
                        }
                    });
                }
            }
        }
        if let Some(first) = ips.first() {
            obj["spec"]["clusterIP"] = json!(first);
            obj["spec"]["clusterIPs"] = json!(ips);
        }
        Ok(())
    }

    /// The second half of the IP fields' settling (against the cluster's ranges), then what an
    /// update takes: every address for a service that had none (from ExternalName), the
    /// secondary one for an upgrade to dual-stack. Downgrades and moves to ExternalName give
    /// addresses back in `update_done`, once the update is stored.
    async fn update_cluster_ips(
        &self,
        req: &Request<'_>,
        owner: &str,
        new: &mut Value,
        old: &Value,
    ) -> Result<(), ApiError> {
        let causes = ds::settle_families(&req.server.service_cidr, new, Some(old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&SERVICES, name_of(new), causes));
        }
        if new["spec"]["type"] != "ExternalName" && new["spec"]["internalTrafficPolicy"].is_null() {
            new["spec"]["internalTrafficPolicy"] = json!("Cluster");
        }
        if ds::unchanged_prefer_dual_stack(new, Some(old)) || ds::is_headless(new) {
            return Ok(());
        }
        let external = |o: &Value| o["spec"]["type"] == "ExternalName";
        if external(new) {
            return Ok(());
        }
        if external(old) {
            return self.allocate_ips(req, owner, new, 0).await;
        }
        if ds::is_headless(old) {
            return Ok(());
        }
        let families = |o: &Value| ds::strings(&o["spec"]["ipFamilies"]).len();
        if families(old) == 1 && families(new) == 2 {
            return self.allocate_ips(req, owner, new, 1).await;
        }
        Ok(())
    }
}
