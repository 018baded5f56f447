//! The columns of Deployments, ReplicaSets and ReplicationControllers (`printDeployment`,
//! `printReplicaSet`, `printReplicationController`), with `-o wide`'s containers, images and
//! selector.

use serde_json::{json, Value};

use super::{age_cell, age_col, col, name_cell, name_col, template_cols, Printer};

pub static DEPLOYMENTS: Printer = Printer {
    columns: || {
        vec![
        name_col(),
        col("Ready", "string", 0, "Number of the pod with ready state."),
        col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
        col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        age_col(),
    ]
    .into_iter()
    .chain(template_cols(Some("Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.")))
    .collect()
    },
    cells: deployment_cells,
};

fn replicated_columns(selector: &str) -> Vec<Value> {
    vec![
        name_col(),
        col("Desired", "integer", 0, "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1."),
        col("Current", "integer", 0, "Replicas is the most recently observed number of non-terminating pods."),
        col("Ready", "integer", 0, "The number of non-terminating pods targeted by this controller with a Ready Condition."),
        age_col(),
    ]
    .into_iter()
    .chain(template_cols(Some(selector)))
    .collect()
}

pub static REPLICASETS: Printer = Printer {
    columns: || {
        replicated_columns("Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels.")
    },
    cells: |o| {
        replicated_cells(
            o,
            crate::api::registry::apps::label_selector_string(&o["spec"]["selector"]),
        )
    },
};

pub static REPLICATIONCONTROLLERS: Printer = Printer {
    columns: || {
        replicated_columns("Selector is a label query over pods that should match the Replicas count. If Selector is empty, it is defaulted to the labels present on the Pod template. Label keys and values that must match in order to be controlled by this replication controller, if empty defaulted to labels on Pod template.")
    },
    cells: |o| {
        replicated_cells(
            o,
            crate::api::registry::apps::map_selector(&o["spec"]["selector"]),
        )
    },
};

/// The template's containers and images, comma-separated (kubectl's wide columns).
fn template_containers(o: &Value) -> (Value, Value) {
    super::containers_and_images(&o["spec"]["template"]["spec"])
}

fn or_none(s: String) -> Value {
    json!(if s.is_empty() { "<none>".into() } else { s })
}

fn replicated_cells(o: &Value, selector: String) -> Vec<Value> {
    let (containers, images) = template_containers(o);
    vec![
        name_cell(o),
        json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
        json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
        json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
        age_cell(o),
        containers,
        images,
        or_none(selector),
    ]
}

fn deployment_cells(o: &Value) -> Vec<Value> {
    let st = &o["status"];
    let (containers, images) = template_containers(o);
    vec![
        name_cell(o),
        json!(format!(
            "{}/{}",
            st["readyReplicas"].as_i64().unwrap_or(0),
            o["spec"]["replicas"].as_i64().unwrap_or(1)
        )),
        json!(st["updatedReplicas"].as_i64().unwrap_or(0)),
        json!(st["availableReplicas"].as_i64().unwrap_or(0)),
        age_cell(o),
        containers,
        images,
        or_none(crate::api::registry::apps::label_selector_string(
            &o["spec"]["selector"],
        )),
    ]
}
