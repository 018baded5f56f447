//! `as=Table` responses: the columns `kubectl get` prints (priority 1 only with `-o wide`), as the
//! kube-apiserver's printers define them; each kind's strategy names its `Printer`.

use serde_json::{json, Value};

use super::resources::Resource;

mod batch;
mod networking;
mod policy;
mod sets;
mod workloads;
pub use batch::{CRONJOBS, JOBS};
pub use networking::NETWORKPOLICIES;
pub use policy::{ENDPOINTSLICES, PODDISRUPTIONBUDGETS};
pub use sets::{CONTROLLERREVISIONS, DAEMONSETS, STATEFULSETS};
pub use workloads::{DEPLOYMENTS, REPLICASETS, REPLICATIONCONTROLLERS};

fn col(name: &str, ty: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": priority})
}

/// Kubernetes' short human duration (`5s`, `3m20s`, `2d3h`).
pub fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    human(secs)
}

fn human(s: i64) -> String {
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("<none>").to_string()
}

/// A kind's columns and how a row fills them; a kind names its printer in its strategy.
pub struct Printer {
    pub columns: fn() -> Vec<Value>,
    pub cells: fn(&Value) -> Vec<Value>,
}

fn name_col() -> Value {
    col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )
}

fn age_col() -> Value {
    col("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.")
}

fn name_cell(o: &Value) -> Value {
    json!(o["metadata"]["name"])
}

fn age_cell(o: &Value) -> Value {
    json!(age(o["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()))
}

/// `layoutContainerCells`: a pod spec's container names and images, comma-separated.
fn containers_and_images(pod_spec: &Value) -> (Value, Value) {
    let cs = pod_spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pick = |k: &str| {
        cs.iter()
            .map(|c| c[k].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (json!(pick("name")), json!(pick("image")))
}

/// A workload's wide columns: its template's containers and images, then its selector
/// (described as `selector`) when the kind prints one.
fn template_cols(selector: Option<&str>) -> Vec<Value> {
    let mut cols = vec![
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
    ];
    cols.extend(selector.map(|s| col("Selector", "string", 1, s)));
    cols
}

/// The cells of [`template_cols`] with a selector, for a spec holding `template` and
/// `selector`.
fn template_cells(spec: &Value) -> Vec<Value> {
    let (names, images) = containers_and_images(&spec["template"]["spec"]);
    vec![names, images, selector_cell(&spec["selector"])]
}

/// A selector column (`metav1.FormatLabelSelector`), `<none>` when it selects on nothing.
fn selector_cell(sel: &Value) -> Value {
    let s = super::registry::apps::label_selector_string(sel);
    json!(if s.is_empty() { "<none>".into() } else { s })
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

/// Name and age, for kinds without columns of their own.
pub static DEFAULT: Printer = Printer {
    columns: || vec![name_col(), age_col()],
    cells: |o| vec![name_cell(o), age_cell(o)],
};

pub static PODS: Printer = Printer {
    columns: || {
        vec![
        name_col(),
        col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", "string", 0, "The aggregate status of the containers in this pod."),
        col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
        age_col(),
        col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
        col("Node", "string", 1, "Name of the Node this pod is assigned to."),
        col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
        col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
    ]
    },
    cells: pod_cells,
};

pub static NODES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age_col(),
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col("Internal-IP", "string", 1, "List of internal IPs."),
            col("External-IP", "string", 1, "List of external IPs."),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r'.",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node through runtime remote API.",
            ),
        ]
    },
    cells: node_cells,
};

pub static NAMESPACES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Status", "string", 0, "The status of the namespace"),
            age_col(),
        ]
    },
    cells: |o| vec![name_cell(o), json!(s(&o["status"]["phase"])), age_cell(o)],
};

pub static SERVICES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col(
                "External-IP",
                "string",
                0,
                "The external IP of the service.",
            ),
            col("Port(s)", "string", 0, "The ports of the service."),
            age_col(),
            col("Selector", "string", 1, "The selector of the service."),
        ]
    },
    cells: service_cells,
};

pub static CONFIGMAPS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Data", "string", 0, "Number of data entries."),
            age_col(),
        ]
    },
    cells: |o| {
        vec![
            name_cell(o),
            json!(count(&o["data"]) + count(&o["binaryData"])),
            age_cell(o),
        ]
    },
};

pub static SECRETS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Type", "string", 0, "The type of the secret."),
            col("Data", "string", 0, "Number of data entries."),
            age_col(),
        ]
    },
    cells: |o| {
        vec![
            name_cell(o),
            json!(s(&o["type"])),
            json!(count(&o["data"])),
            age_cell(o),
        ]
    },
};

pub static SERVICEACCOUNTS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Secrets", "string", 0, "Number of secrets."),
            age_col(),
        ]
    },
    cells: |o| {
        vec![
            name_cell(o),
            json!(o["secrets"].as_array().map_or(0, Vec::len)),
            age_cell(o),
        ]
    },
};

pub static CERTIFICATESIGNINGREQUESTS: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            age_col(),
            col(
                "SignerName",
                "string",
                0,
                "Only requests with the given signer are signed by it.",
            ),
            col(
                "Requestor",
                "string",
                0,
                "Name of the user which created the request.",
            ),
            col(
                "RequestedDuration",
                "string",
                0,
                "The requested validity of the certificate.",
            ),
            col("Condition", "string", 0, "The conditions of the request."),
        ]
    },
    cells: csr_cells,
};

pub static COMPONENTSTATUSES: Printer = Printer {
    columns: || {
        vec![
            name_col(),
            col("Status", "string", 0, "Status of the component conditions"),
            col(
                "Message",
                "string",
                0,
                "Message of the component conditions",
            ),
            col("Error", "string", 0, "Error of the component conditions"),
        ]
    },
    cells: |o| {
        let c = &o["conditions"][0];
        vec![
            name_cell(o),
            json!(if c["status"] == "True" {
                "Healthy"
            } else {
                "Unhealthy"
            }),
            json!(c["message"].as_str().unwrap_or_default()),
            json!(c["error"].as_str().unwrap_or_default()),
        ]
    },
};

fn pod_cells(p: &Value) -> Vec<Value> {
    let statuses = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = p["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = p["status"]["reason"]
        .as_str()
        .or(p["status"]["phase"].as_str())
        .unwrap_or("Unknown")
        .to_string();
    // A pod held by scheduling gates shows `SchedulingGated` (upstream's printPod).
    let gated = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated");
    if gated {
        reason = "SchedulingGated".into();
    }
    for c in p["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(w) = c["state"]["waiting"]["reason"].as_str() {
            if w != "PodInitializing" {
                reason = format!("Init:{w}");
            }
        }
    }
    for c in statuses.iter().rev() {
        if let Some(w) = c["state"]["waiting"]["reason"].as_str() {
            reason = w.to_string();
        } else if let Some(t) = c["state"]["terminated"].as_object() {
            reason = t
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    )
                });
        }
    }
    if !p["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    let ip = p["status"]["podIP"].as_str().unwrap_or("<none>");
    vec![
        json!(p["metadata"]["name"]),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default())),
        json!(ip),
        json!(p["spec"]["nodeName"].as_str().unwrap_or("<none>")),
        json!(p["status"]["nominatedNodeName"]
            .as_str()
            .unwrap_or("<none>")),
        json!("<none>"),
    ]
}

fn node_cells(n: &Value) -> Vec<Value> {
    let ready = n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            if c["status"] == "True" {
                "Ready"
            } else {
                "NotReady"
            }
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if n["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = n["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
        })
        .collect();
    let addr = |t: &str| {
        n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = &n["status"]["nodeInfo"];
    vec![
        json!(n["metadata"]["name"]),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(age(n["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default())),
        json!(s(&info["kubeletVersion"])),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(&info["osImage"])),
        json!(s(&info["kernelVersion"])),
        json!(s(&info["containerRuntimeVersion"])),
    ]
}

fn service_cells(o: &Value) -> Vec<Value> {
    let ports: Vec<String> = o["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_u64().filter(|n| *n != 0) {
                Some(n) => format!("{}:{n}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    let sel: Vec<String> = o["spec"]["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    vec![
        name_cell(o),
        json!(s(&o["spec"]["type"])),
        json!(o["spec"]["clusterIP"].as_str().unwrap_or("None")),
        json!(service_external_ip(o)),
        json!(if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(",")
        }),
        age_cell(o),
        json!(if sel.is_empty() {
            "<none>".into()
        } else {
            sel.join(",")
        }),
    ]
}

/// kubectl's EXTERNAL-IP: the external name, the load balancer's addresses (`<pending>` until
/// it has some) and the external IPs.
fn service_external_ip(o: &Value) -> String {
    let strs = |v: &Value, f: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| {
                if f.is_empty() {
                    x.as_str()
                } else {
                    x[f].as_str().or(x["hostname"].as_str())
                }
            })
            .map(str::to_owned)
            .collect()
    };
    let external = strs(&o["spec"]["externalIPs"], "");
    match o["spec"]["type"].as_str() {
        Some("ExternalName") => s(&o["spec"]["externalName"]),
        Some("LoadBalancer") => {
            let mut all = strs(&o["status"]["loadBalancer"]["ingress"], "ip");
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        _ if !external.is_empty() => external.join(","),
        _ => "<none>".into(),
    }
}

fn csr_cells(o: &Value) -> Vec<Value> {
    let mut conds: Vec<String> = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_owned))
        .collect();
    if !o["status"]["certificate"].is_null() {
        conds.push("Issued".into());
    }
    vec![
        name_cell(o),
        age_cell(o),
        json!(s(&o["spec"]["signerName"])),
        json!(s(&o["spec"]["username"])),
        json!(o["spec"]["expirationSeconds"]
            .as_i64()
            .map(human)
            .unwrap_or_else(|| "<none>".into())),
        json!(if conds.is_empty() {
            "Pending".into()
        } else {
            conds.join(",")
        }),
    ]
}

/// The row's object as `includeObject` asks: `None`, `Metadata` (the default) or `Object`.
fn row_object(r: &Resource, o: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"], "_kind": r.kind})
            .as_object()
            .map(|m| {
                let mut m = m.clone();
                m.remove("_kind");
                Value::Object(m)
            })
            .unwrap(),
    }
}

/// A Table of `objects`, with list metadata (`resourceVersion`, `continue`).
pub fn table(
    r: &Resource,
    objects: &[Value],
    list_meta: Value,
    include: &str,
    headers: bool,
) -> Value {
    let printer = r.strategy.printer();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": (printer.cells)(o), "object": row_object(r, o, include)}))
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "rows": rows});
    if headers {
        t["columnDefinitions"] = json!((printer.columns)());
    } else {
        t["columnDefinitions"] = json!([]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(200), "3m20s");
        assert_eq!(human(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human(86400 * 3 + 3600), "3d1h");
    }

    #[test]
    fn workload_rows_have_kubectls_columns() {
        let ds = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}},
            "template": {"spec": {"nodeSelector": {"pool": "a"}, "containers": [{"name": "c", "image": "busybox"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 2, "numberReady": 1}});
        let cells = (DAEMONSETS.cells)(&ds);
        assert_eq!(cells.len(), (DAEMONSETS.columns)().len());
        assert_eq!(cells[1..4], [json!(3), json!(2), json!(1)]);
        assert_eq!(cells[6], "pool=a");
        assert_eq!(cells[10], "app=d");
        let sts = json!({"metadata": {"name": "s"}, "spec": {"replicas": 3, "template": {"spec": {"containers": []}}}, "status": {"readyReplicas": 2}});
        let cells = (STATEFULSETS.cells)(&sts);
        assert_eq!(cells.len(), (STATEFULSETS.columns)().len());
        assert_eq!(cells[1], "2/3");
        let cr = json!({"metadata": {"name": "d-abc", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]}, "revision": 2});
        let cells = (CONTROLLERREVISIONS.cells)(&cr);
        assert_eq!(cells[1], "daemonset.apps/d");
        assert_eq!(cells[2], 2);
    }

    #[test]
    fn pod_rows_have_kubectls_columns() {
        let r = &super::super::resources::PODS;
        let p = json!({"metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "c"}], "nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let t = table(r, &[p], json!({"resourceVersion": "7"}), "Metadata", true);
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/1");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "2");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let gated = json!({"metadata": {"name": "g"}, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}});
        assert_eq!((PODS.cells)(&gated)[2], "SchedulingGated");
    }
}
