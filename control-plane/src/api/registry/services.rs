//! Services: defaults, a cluster IP allocated on create (released if the create fails and when
//! the service goes) and immutable afterwards; node ports (`api::nodeports`) taken on create and
//! on updates that need new ones, given back when no longer held.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::Strategy;
use super::Request;
use crate::api::nodeports;
use crate::api::objects::{self, child, invalid_value, not_supported, set_default};
use crate::api::resources::SERVICES;
use crate::api::services::{allocate, release};
use crate::api::status::{ApiError, Cause};
use crate::api::table;

/// `sessionAffinityConfig.clientIP.timeoutSeconds`: upstream's default (3 hours) and bound.
const DEFAULT_AFFINITY_SECONDS: i64 = 10800;
const MAX_AFFINITY_SECONDS: i64 = 86400;

pub struct Services;
pub static SERVICE: Services = Services;

/// Whether the service gets a cluster IP (dry runs allocate nothing).
fn allocates(req: &Request<'_>, obj: &Value) -> bool {
    obj["spec"]["type"] != "ExternalName" && obj["spec"]["clusterIP"] != "None" && !req.dry_run()
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

    /// The cluster IP stays what it was: an update may leave it out, never change it.
    fn prepare_for_update(&self, name: &str, obj: &mut Value, old: &Value) -> Result<(), ApiError> {
        for f in ["clusterIP", "clusterIPs"] {
            match (&obj["spec"][f], &old["spec"][f]) {
                (Value::Null, o) if !o.is_null() => obj["spec"][f] = o.clone(),
                (Value::String(n), Value::String(o)) if n.is_empty() => obj["spec"][f] = json!(o),
                (n, o) if !o.is_null() && n != o => {
                    return Err(ApiError::invalid(
                        &SERVICES,
                        name,
                        vec![(
                            "FieldValueInvalid",
                            format!("spec.{f}"),
                            format!("Invalid value: {n}: field is immutable"),
                        )],
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn before_create(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if !allocates(req, obj) {
            return Ok(());
        }
        let owner = format!(
            "{}/{}",
            ns.unwrap_or("default"),
            obj["metadata"]["name"].as_str().unwrap_or_default()
        );
        self.cluster_ip(req, &owner, obj).await?;
        if let Err(e) = nodeports::assign(req.store(), &owner, obj, &[]).await {
            if let Some(ip) = obj["spec"]["clusterIP"].as_str() {
                release(req.store(), ip).await;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn create_failed(&self, req: &Request<'_>, obj: &Value) {
        if allocates(req, obj) {
            if let Some(ip) = obj["spec"]["clusterIP"].as_str() {
                release(req.store(), ip).await;
            }
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
            old["metadata"]["name"].as_str().unwrap_or_default()
        );
        nodeports::assign(req.store(), &owner, new, &nodeports::held(old)).await
    }

    async fn update_done(&self, req: &Request<'_>, new: &Value, old: &Value, stored: bool) {
        let (now, before) = (nodeports::held(new), nodeports::held(old));
        let (keep, lose) = if stored { (now, before) } else { (before, now) };
        let gone: Vec<u16> = lose.into_iter().filter(|p| !keep.contains(p)).collect();
        nodeports::release(req.store(), &gone).await;
    }

    async fn after_delete(&self, req: &Request<'_>, gone: &Value) {
        if let Some(ip) = gone["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| *ip != "None")
        {
            release(req.store(), ip).await;
        }
        nodeports::release(req.store(), &nodeports::held(gone)).await;
    }
}

impl Services {
    async fn cluster_ip(
        &self,
        req: &Request<'_>,
        owner: &str,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let wanted = obj["spec"]["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let ip = allocate(
            req.store(),
            req.server.service_cidr,
            wanted.as_deref(),
            owner,
        )
        .await?;
        let spec = &mut obj["spec"];
        spec["clusterIP"] = json!(ip.to_string());
        spec["clusterIPs"] = json!([ip.to_string()]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
        if spec["internalTrafficPolicy"].is_null() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
        Ok(())
    }
}
