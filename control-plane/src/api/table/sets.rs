//! The columns of DaemonSets, StatefulSets and ControllerRevisions (`printDaemonSet`,
//! `printStatefulSet`, `printControllerRevision`), with `-o wide`'s containers, images and
//! selector.

use serde_json::{json, Value};

use super::*;

/// `kubectl get daemonsets` (`printDaemonSet`).
pub static DAEMONSETS: Printer = Printer {
    columns: || {
        vec![
        name_col(),
        col("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
        col("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
        col("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
        col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
        col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
        col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node."),
        age_col(),
    ]
    .into_iter()
    .chain(template_cols(Some("A label query over pods that are managed by the daemon set.")))
    .collect()
    },
    cells: |o| {
        let st = &o["status"];
        let n = |k: &str| json!(st[k].as_i64().unwrap_or(0));
        let mut cells = vec![
            name_cell(o),
            n("desiredNumberScheduled"),
            n("currentNumberScheduled"),
            n("numberReady"),
            n("updatedNumberScheduled"),
            n("numberAvailable"),
            json!(format_map(&o["spec"]["template"]["spec"]["nodeSelector"])),
            age_cell(o),
        ];
        cells.extend(template_cells(&o["spec"]));
        cells
    },
};

/// `kubectl get statefulsets` (`printStatefulSet`).
pub static STATEFULSETS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Ready", "string", 0, "Number of the pod with ready state."),
            age_col(),
        ]
        .into_iter()
        .chain(template_cols(None))
        .collect()
    },
    cells: |o| {
        let mut cells = vec![
            name_cell(o),
            json!(format!(
                "{}/{}",
                o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                o["spec"]["replicas"].as_i64().unwrap_or(1)
            )),
            age_cell(o),
        ];
        cells.extend(template_cells(&o["spec"]).into_iter().take(2));
        cells
    },
};

/// `kubectl get controllerrevisions` (`printControllerRevision`): the controller as
/// `kind.group/name`.
pub static CONTROLLERREVISIONS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col(
                "Controller",
                "string",
                0,
                "Controller of the object with link to controller",
            ),
            col(
                "Revision",
                "integer",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ),
            age_col(),
        ]
    },
    cells: |o| {
        let controller = o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true)
            .map(|r| {
                let group = r["apiVersion"]
                    .as_str()
                    .and_then(|v| v.split_once('/'))
                    .map(|(g, _)| format!(".{g}"))
                    .unwrap_or_default();
                format!(
                    "{}{group}/{}",
                    r["kind"].as_str().unwrap_or_default().to_lowercase(),
                    r["name"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(o),
            json!(controller),
            json!(o["revision"].as_i64().unwrap_or(0)),
            age_cell(o),
        ]
    },
};

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_map(m: &Value) -> String {
    let pairs: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}
