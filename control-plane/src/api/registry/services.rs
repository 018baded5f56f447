//! Services: defaults, a cluster IP allocated on create (released if the create fails and when
//! the service goes) and immutable afterwards.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::Strategy;
use super::Request;
use crate::api::objects::{self, child, set_default};
use crate::api::resources::SERVICES;
use crate::api::services::{allocate, release};
use crate::api::status::{ApiError, Cause};
use crate::api::table;

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
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                let p = p.as_object_mut().unwrap();
                set_default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                set_default(p, "targetPort", port);
            }
        }
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
        let wanted = obj["spec"]["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let owner = format!(
            "{}/{}",
            ns.unwrap_or("default"),
            obj["metadata"]["name"].as_str().unwrap_or_default()
        );
        let ip = allocate(
            req.store(),
            req.server.service_cidr,
            wanted.as_deref(),
            &owner,
        )
        .await?;
        let spec = &mut obj["spec"];
        spec["clusterIP"] = json!(ip.to_string());
        spec["clusterIPs"] = json!([ip.to_string()]);
        spec["ipFamilies"] = json!(["IPv4"]);
        spec["ipFamilyPolicy"] = json!("SingleStack");
        spec["internalTrafficPolicy"] = json!("Cluster");
        Ok(())
    }

    async fn create_failed(&self, req: &Request<'_>, obj: &Value) {
        if allocates(req, obj) {
            if let Some(ip) = obj["spec"]["clusterIP"].as_str() {
                release(req.store(), ip).await;
            }
        }
    }

    async fn after_delete(&self, req: &Request<'_>, gone: &Value) {
        if let Some(ip) = gone["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| *ip != "None")
        {
            release(req.store(), ip).await;
        }
    }
}
