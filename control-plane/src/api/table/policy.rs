//! The columns of PodDisruptionBudgets and EndpointSlices (`printPodDisruptionBudget`,
//! `printEndpointSlice`).

use serde_json::{json, Value};

use super::*;

pub static PODDISRUPTIONBUDGETS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col(
                "Min Available",
                "string",
                0,
                "The minimum number of pods that must be available.",
            ),
            col(
                "Max Unavailable",
                "string",
                0,
                "The maximum number of pods that may be unavailable.",
            ),
            col(
                "Allowed Disruptions",
                "integer",
                0,
                "Calculated number of pods that may be disrupted at this time.",
            ),
            age_col(),
        ]
    },
    cells: |o| {
        let n_a = |v: &Value| match v {
            Value::Null => json!("N/A"),
            Value::Number(n) => json!(n.to_string()),
            v => v.clone(),
        };
        vec![
            name_cell(o),
            n_a(&o["spec"]["minAvailable"]),
            n_a(&o["spec"]["maxUnavailable"]),
            json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
            age_cell(o),
        ]
    },
};

/// kubectl's `listWithMoreString`: three items, then how many more.
fn list_with_more(items: Vec<String>) -> String {
    if items.is_empty() {
        return "<unset>".into();
    }
    let more = items.len().saturating_sub(3);
    let shown = items[..items.len().min(3)].join(",");
    if more > 0 {
        format!("{shown} + {more} more...")
    } else {
        shown
    }
}

pub static ENDPOINTSLICES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            col(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            col(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            age_col(),
        ]
    },
    cells: |o| {
        let ports = o["ports"].as_array().into_iter().flatten().map(|p| {
            p["port"]
                .as_i64()
                .map(|n| n.to_string())
                .or_else(|| p["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| "*".into())
        });
        let addrs = o["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(str::to_string));
        vec![
            name_cell(o),
            json!(s(&o["addressType"])),
            json!(list_with_more(ports.collect())),
            json!(list_with_more(addrs.collect())),
            age_cell(o),
        ]
    },
};
