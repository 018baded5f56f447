//! ComponentStatuses (`kubectl get cs`): computed on each list from the store's health; the
//! scheduler runs in this process, so it is as healthy as the server answering.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::strategy::Strategy;
use super::Request;
use crate::api::table;

pub struct ComponentStatuses;
pub static COMPONENTSTATUS: ComponentStatuses = ComponentStatuses;

#[async_trait]
impl Strategy for ComponentStatuses {
    fn printer(&self) -> &'static table::Printer {
        &table::COMPONENTSTATUSES
    }

    async fn computed(&self, req: &Request<'_>) -> Vec<Value> {
        let healthy = req.store().current_rev().await.is_ok();
        vec![
            json!({
                "kind": "ComponentStatus", "apiVersion": "v1",
                "metadata": {"name": "etcd-0"},
                "conditions": [{"type": "Healthy", "status": if healthy { "True" } else { "False" }, "message": if healthy { "ok" } else { "storage unreachable" }}],
            }),
            json!({
                "kind": "ComponentStatus", "apiVersion": "v1",
                "metadata": {"name": "scheduler"},
                "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}],
            }),
        ]
    }
}
