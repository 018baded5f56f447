//! End-to-end: DaemonSets, StatefulSets, EndpointSlices and `kubectl drain` against a
//! PodDisruptionBudget on the all-in-one node, with the real kubectl.

use podlet_e2e::apiserver::ok;
use podlet_e2e::kube::{apply, condition, items, json, node, wait};
use serde_json::Value;

const SETS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: hollow-free, labels: {kubernetes.io/hostname: hollow-free}}
status:
  capacity: {cpu: "4", memory: 4Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 4Gi, pods: "110"}
---
apiVersion: v1
kind: Node
metadata: {name: hollow-tainted, labels: {kubernetes.io/hostname: hollow-tainted}}
spec:
  taints: [{key: dedicated, value: db, effect: NoSchedule}]
status:
  capacity: {cpu: "4", memory: 4Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 4Gi, pods: "110"}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox:1.36, command: [sleep, '100000']}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 0
      nodeSelector: {kubernetes.io/hostname: e2e}
      containers:
      - name: c
        image: busybox:1.36
        command: [sh, -c, 'hostname > /tmp/name; exec sleep 100000']
        readinessProbe:
          exec: {command: [cat, /tmp/name]}
          periodSeconds: 1
"#;

fn created(p: &Value) -> String {
    p["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn daemonsets_and_statefulsets_place_and_order_their_pods() {
    let Some(node) = node() else { return };
    apply(&node, SETS);
    // One agent pod per schedulable node: e2e (where it runs) and hollow-free, not the tainted one.
    let ds_nodes = || {
        let mut n: Vec<String> = items(&json(&node, &["pods", "-l", "app=agent"]))
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        n.sort();
        n
    };
    wait(&node, "daemon pods on e2e and hollow-free", 60, || {
        (ds_nodes() == ["e2e", "hollow-free"]).then_some(())
    });
    let ds = wait(&node, "the daemonset's status", 60, || {
        let d = json(&node, &["ds", "agent"]);
        (d["status"]["desiredNumberScheduled"] == 2 && d["status"]["numberReady"] == 1).then_some(d)
    });
    assert_eq!(ds["status"]["currentNumberScheduled"], 2, "{ds}");

    // StatefulSet: db-0, db-1, db-2, each only after the one before is Ready.
    let db = || items(&json(&node, &["pods", "-l", "app=db"]));
    let pods = wait(&node, "3 db pods ready", 120, || {
        let pods = db();
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| condition(p, "Ready")["status"] == "True"))
        .then_some(pods)
    });
    let by = |name: &str| {
        pods.iter()
            .find(|p| p["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    };
    for (before, after) in [("db-0", "db-1"), ("db-1", "db-2")] {
        let ready = condition(&by(before), "Ready")["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            created(&by(after)) >= ready,
            "{after} created before {before} was Ready"
        );
    }
    assert_eq!(by("db-1")["spec"]["hostname"], "db-1");
    assert_eq!(by("db-1")["spec"]["subdomain"], "db");
    let name = ok(
        &node.kubectl(33, &["exec", "db-2", "--", "cat", "/tmp/name"]),
        "exec",
    );
    assert_eq!(name.trim(), "db-2");
    // Scale down goes from the highest ordinal, one at a time.
    ok(
        &node.kubectl(27, &["scale", "sts/db", "--replicas=1"]),
        "scale sts",
    );
    wait(&node, "db scaled to 1", 60, || {
        let names: Vec<String> = db()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        (names == ["db-0"]).then_some(())
    });
    let events = ok(
        &node.kubectl(
            33,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=db,reason=SuccessfulDelete",
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ],
        ),
        "events",
    );
    let order: Vec<&str> = events.lines().collect();
    let i2 = order
        .iter()
        .position(|m| m.contains("db-2"))
        .expect("db-2 deleted");
    let i1 = order
        .iter()
        .position(|m| m.contains("db-1"))
        .expect("db-1 deleted");
    assert!(i2 < i1, "{order:?}");
    ok(&node.kubectl(33, &["delete", "sts", "db"]), "delete sts");
    ok(&node.kubectl(33, &["delete", "ds", "agent"]), "delete ds");
}

const SERVED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: c
        image: busybox:1.36
        command: [sleep, '100000']
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          exec: {command: [test, -f, /tmp/ready]}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: backend}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: backend}}
"#;

#[test]
fn endpoint_slices_follow_readiness_and_drain_respects_budgets() {
    let Some(node) = node() else { return };
    apply(&node, SERVED);
    let slice_endpoints = || {
        items(&json(
            &node,
            &["endpointslices", "-l", "kubernetes.io/service-name=backend"],
        ))
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect::<Vec<Value>>()
    };
    let eps = wait(&node, "two not-ready endpoints", 90, || {
        let e = slice_endpoints();
        (e.len() == 2).then_some(e)
    });
    assert!(
        eps.iter().all(|e| e["conditions"]["ready"] == false),
        "{eps:?}"
    );
    let slice = &items(&json(
        &node,
        &["endpointslices", "-l", "kubernetes.io/service-name=backend"],
    ))[0];
    assert_eq!(slice["ports"][0]["port"], 8080, "{slice}");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    for p in items(&json(&node, &["pods", "-l", "app=backend"])) {
        let name = p["metadata"]["name"].as_str().unwrap();
        ok(
            &node.kubectl(33, &["exec", name, "--", "touch", "/tmp/ready"]),
            "touch",
        );
    }
    wait(&node, "two ready endpoints", 60, || {
        let e = slice_endpoints();
        (e.len() == 2 && e.iter().all(|e| e["conditions"]["ready"] == true)).then_some(())
    });
    let ep = json(&node, &["endpoints", "backend"]);
    assert_eq!(
        ep["subsets"][0]["addresses"].as_array().map(Vec::len),
        Some(2),
        "{ep}"
    );

    // minAvailable 2 of 2: drain is refused by the budget...
    wait(&node, "the budget's status", 30, || {
        let b = json(&node, &["pdb", "backend"]);
        (b["status"]["currentHealthy"] == 2 && b["status"]["disruptionsAllowed"] == 0).then_some(())
    });
    let out = node.kubectl(
        33,
        &[
            "drain",
            "e2e",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--pod-selector=app=backend",
            "--timeout=8s",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("disruption budget"), "{}", out.stderr);
    // ...and goes through once the budget allows it.
    ok(
        &node.kubectl(
            33,
            &[
                "patch",
                "pdb",
                "backend",
                "--type=merge",
                "-p",
                r#"{"spec":{"minAvailable":0}}"#,
            ],
        ),
        "patch pdb",
    );
    ok(
        &node.kubectl(
            33,
            &[
                "drain",
                "e2e",
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--pod-selector=app=backend",
                "--timeout=60s",
            ],
        ),
        "drain",
    );
    ok(&node.kubectl(33, &["uncordon", "e2e"]), "uncordon");
    ok(
        &node.kubectl(33, &["delete", "deploy", "backend"]),
        "delete",
    );
}
