//! End-to-end: the scheduler on a three-node namespace lab (see `podlet_e2e::cluster`), node
//! `n<i>` in zone `zone-<i>` (labelled after start): required pod anti-affinity, node affinity
//! (required and preferred), topology spread over zones, taints and tolerations, preemption by
//! priority, and a second profile from a KubeSchedulerConfiguration file — with the
//! conditions, events and messages kube-scheduler writes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use podlet_e2e::cluster::Cluster;
use serde_json::{json, Value};

const ZONE: &str = "topology.kubernetes.io/zone";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// Two profiles: the default one, and `bin-packing`, which scores by MostAllocated only.
const SCHEDULER_CONFIG: &str = "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packing
  plugins:
    score:
      disabled:
      - name: '*'
      enabled:
      - name: NodeResourcesFit
        weight: 1
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - {name: cpu, weight: 1}
        - {name: memory, weight: 1}
";

fn container(requests: Option<Value>) -> Value {
    let mut c = json!({"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]});
    if let Some(r) = requests {
        c["resources"] = json!({"requests": r});
    }
    c
}

/// A busybox pod spec with `extra`'s fields added.
fn spec(extra: Value) -> Value {
    let mut s = json!({"terminationGracePeriodSeconds": 0, "containers": [container(None)]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        s[k] = v;
    }
    s
}

fn pod(name: &str, labels: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": spec})
}

/// A Deployment of pods labelled `app=<name>`.
fn deployment(name: &str, replicas: u32, spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

/// The pods (not being deleted) that `selector` picks.
fn pods(c: &Cluster, selector: &str) -> Vec<Value> {
    c.get_json(&["pods", "-l", selector])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn node_of(p: &Value) -> Option<&str> {
    p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && node_of(p).is_some()
}

fn name_of(p: &Value) -> &str {
    p["metadata"]["name"].as_str().unwrap_or_default()
}

fn uid_of(p: &Value) -> &str {
    p["metadata"]["uid"].as_str().unwrap_or_default()
}

fn condition<'a>(obj: &'a Value, ty: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .unwrap_or(&Value::Null)
}

/// Pod `name` once Running; returns its node.
fn wait_running(c: &Cluster, name: &str) -> String {
    let p = c.wait_long(&format!("pod {name} Running"), || {
        c.get_json(&["pod", name]).filter(running)
    });
    node_of(&p).unwrap().to_string()
}

/// Pod `name` once it is Pending with `PodScheduled=False` (Unschedulable); returns it.
fn wait_unschedulable(c: &Cluster, name: &str) -> Value {
    c.wait_long(&format!("pod {name} Unschedulable"), || {
        c.get_json(&["pod", name]).filter(|p| {
            let s = condition(p, "PodScheduled");
            s["status"] == "False" && s["reason"] == "Unschedulable"
        })
    })
}

/// Events about the object with `uid`.
fn events_about(c: &Cluster, uid: &str) -> Vec<Value> {
    c.get_json(&["events"])
        .and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["uid"] == uid)
        .collect()
}

/// Who reported an event, as `kubectl describe` shows it ("From").
fn reporter(e: &Value) -> &str {
    e["source"]["component"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or(e["reportingComponent"].as_str())
        .unwrap_or_default()
}

/// Waits for an event `reason` about `pod` whose message is `message`; returns it.
fn wait_event(c: &Cluster, pod: &Value, reason: &str, message: &str) -> Value {
    let what = format!("event {reason} {message:?} about {}", name_of(pod));
    c.wait_long(&what, || {
        events_about(c, uid_of(pod))
            .into_iter()
            .find(|e| e["reason"] == reason && e["message"] == message)
    })
}

fn delete(c: &Cluster, what: &[&str]) {
    let mut args = vec!["delete"];
    args.extend_from_slice(what);
    args.push("--wait=false");
    c.kubectl_ok(&args);
}

/// Quantity of cpu → millicores ("2", "1900m", "1.5").
fn millicores(q: &str) -> i64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0).round() as i64,
    }
}

fn zone_term(zone: &str) -> Value {
    json!({"matchExpressions": [{"key": ZONE, "operator": "In", "values": [zone]}]})
}

fn spread_over_zones(app: &str) -> Value {
    json!([{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": app}}}])
}

#[test]
fn the_scheduler_places_pods_as_kube_scheduler_does() {
    // Before the cluster, so that it outlives it; every node's mount namespace sees /tmp.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(&config, SCHEDULER_CONFIG).unwrap();
    let flag = format!("--scheduler-config={}", config.display());
    let Some(c) = Cluster::start(&[1, 1, 1], &[&flag], true) else {
        return;
    };
    let started = Instant::now();
    for i in 1..=3 {
        c.wait_long(&format!("n{i} Ready and untainted"), || {
            let n = c.get_json(&["node", &format!("n{i}")])?;
            let untainted = n["spec"]["taints"].as_array().is_none_or(|t| t.is_empty());
            (condition(&n, "Ready")["status"] == "True" && untainted).then_some(())
        });
    }
    c.wait_long("the default service account", || {
        (c.kubectl(&["get", "sa", "default"]).code == 0).then_some(())
    });
    // n2 last: once a pod lands on n2 by its zone, the scheduler has seen every zone label
    // (one watch of Nodes delivers the changes in order).
    for i in [3, 1, 2] {
        c.kubectl_ok(&[
            "label",
            "node",
            &format!("n{i}"),
            &format!("{ZONE}=zone-{i}"),
        ]);
    }

    anti_affinity(&c);
    node_affinity(&c);
    topology_spread(&c);
    taints(&c);
    // What follows counts requests: the pods of the steps before are gone first.
    c.wait_long("the pods of the steps before gone", || {
        let all = c.get_json(&["pods"])?;
        all["items"].as_array()?.is_empty().then_some(())
    });
    let preemptor = preemption(&c);
    profiles(&c, &preemptor);
    eprintln!(
        "scheduling checks took {:.1} s after the cluster started",
        started.elapsed().as_secs_f64()
    );
}

/// Required anti-affinity on the hostname: one pod per node, the fourth Unschedulable.
fn anti_affinity(c: &Cluster) {
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"app": "one-per-node"}}, "topologyKey": HOSTNAME}]}});
    c.apply(&deployment(
        "one-per-node",
        4,
        spec(json!({"affinity": anti})),
    ));
    let (placed, pending) = c.wait_long("3 pods Running and 1 Unschedulable", || {
        let all = pods(c, "app=one-per-node");
        let (placed, pending): (Vec<Value>, Vec<Value>) =
            all.into_iter().partition(|p| node_of(p).is_some());
        let unschedulable = pending.len() == 1 && {
            let s = condition(&pending[0], "PodScheduled");
            s["status"] == "False" && s["reason"] == "Unschedulable"
        };
        (placed.len() == 3 && placed.iter().all(running) && unschedulable)
            .then(|| (placed, pending.into_iter().next().unwrap()))
    });
    let mut nodes: Vec<&str> = placed.iter().filter_map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "one pod per node");
    assert_eq!(pending["status"]["phase"], "Pending", "{pending}");
    let msg = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
               preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    assert_eq!(
        condition(&pending, "PodScheduled")["message"],
        msg,
        "{pending}"
    );
    let e = wait_event(c, &pending, "FailedScheduling", msg);
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(reporter(&e), "default-scheduler", "{e}");
    for p in &placed {
        let want = format!(
            "Successfully assigned default/{} to {}",
            name_of(p),
            node_of(p).unwrap()
        );
        let e = wait_event(c, p, "Scheduled", &want);
        assert_eq!(
            (e["type"].as_str(), reporter(&e)),
            (Some("Normal"), "default-scheduler")
        );
    }
    delete(c, &["deployment", "one-per-node"]);
}

/// Required node affinity to zone-2 lands on n2; a preferred one (weight 100) to zone-3 on n3.
fn node_affinity(c: &Cluster) {
    let required = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [zone_term("zone-2")]}}});
    let p = pod(
        "required-zone-2",
        json!({"step": "affinity"}),
        spec(json!({"affinity": required})),
    );
    c.apply(&p);
    // Running there: the agent admits by the Node's labels as the API has them.
    assert_eq!(wait_running(c, "required-zone-2"), "n2");
    let p = c.get_json(&["pod", "required-zone-2"]).unwrap();
    wait_event(
        c,
        &p,
        "Scheduled",
        "Successfully assigned default/required-zone-2 to n2",
    );
    let preferred = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": zone_term("zone-3")}]}});
    c.apply(&pod(
        "preferred-zone-3",
        json!({"step": "affinity"}),
        spec(json!({"affinity": preferred})),
    ));
    assert_eq!(wait_running(c, "preferred-zone-3"), "n3");
    delete(c, &["pods", "-l", "step=affinity"]);
}

/// maxSkew 1 over zones, DoNotSchedule: 6 replicas are 2 per zone.
fn topology_spread(c: &Cluster) {
    c.apply(&deployment(
        "zonal",
        6,
        spec(json!({"topologySpreadConstraints": spread_over_zones("zonal")})),
    ));
    let placed = c.wait_long("6 zonal pods Running", || {
        let all = pods(c, "app=zonal");
        (all.len() == 6 && all.iter().all(running)).then_some(all)
    });
    let mut per_node = BTreeMap::new();
    for p in &placed {
        *per_node.entry(node_of(p).unwrap().to_string()).or_insert(0) += 1;
    }
    let want: BTreeMap<String, i32> = [("n1", 2), ("n2", 2), ("n3", 2)]
        .map(|(n, k)| (n.to_string(), k))
        .into();
    assert_eq!(per_node, want, "2 pods per zone (one node per zone)");
    delete(c, &["deployment", "zonal"]);
}

/// n3 tainted dedicated=db:NoSchedule: only pods that tolerate it land there; without the
/// taint the others follow.
fn taints(c: &Cluster) {
    c.kubectl_ok(&["taint", "node", "n3", "dedicated=db:NoSchedule"]);
    // A label set after the taint, as the key of a DoNotSchedule spread constraint: nodes
    // without the key are filtered out, so the pod lands on n3 only once the scheduler has
    // seen the label, and with it the taint (one watch of Nodes, in order).
    c.kubectl_ok(&["label", "node", "n3", "e2e-after-taint=n3"]);
    let tolerating = spec(json!({
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db",
                         "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "e2e-after-taint",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"step": "taints"}}}],
    }));
    c.apply(&pod("tolerates-db", json!({"step": "taints"}), tolerating));
    assert_eq!(wait_running(c, "tolerates-db"), "n3");

    let msg = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, \
               2 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are \
               available: 3 Preemption is not helpful for scheduling.";
    let on_n3 = spec(json!({"nodeSelector": {HOSTNAME: "n3"}}));
    for name in ["untolerating-a", "untolerating-b"] {
        c.apply(&pod(name, json!({"step": "taints"}), on_n3.clone()));
    }
    for name in ["untolerating-a", "untolerating-b"] {
        let p = wait_unschedulable(c, name);
        assert!(node_of(&p).is_none(), "{p}");
        assert_eq!(condition(&p, "PodScheduled")["message"], msg, "{p}");
        let e = wait_event(c, &p, "FailedScheduling", msg);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("untolerated taint {dedicated: db}"),
            "{e}"
        );
    }

    // Spread over zones with zone-3 out of reach (tainted nodes still count as a domain):
    // a pod in zone-1 and in zone-2, the third waits.
    c.apply(&deployment(
        "zonal-b",
        3,
        spec(json!({"topologySpreadConstraints": spread_over_zones("zonal-b")})),
    ));
    let (placed, pending) = c.wait_long("2 zonal-b pods Running, 1 Unschedulable", || {
        let (placed, pending): (Vec<Value>, Vec<Value>) = pods(c, "app=zonal-b")
            .into_iter()
            .partition(|p| node_of(p).is_some());
        let unschedulable = pending.len() == 1
            && condition(&pending[0], "PodScheduled")["reason"] == "Unschedulable";
        (placed.len() == 2 && placed.iter().all(running) && unschedulable)
            .then(|| (placed, pending.into_iter().next().unwrap()))
    });
    let mut nodes: Vec<&str> = placed.iter().filter_map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"]);
    let msg = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, \
               2 node(s) didn't match pod topology spread constraints. preemption: 0/3 nodes \
               are available: 1 Preemption is not helpful for scheduling, 2 No preemption \
               victims found for incoming pod.";
    assert_eq!(
        condition(&pending, "PodScheduled")["message"],
        msg,
        "{pending}"
    );
    wait_event(c, &pending, "FailedScheduling", msg);

    // Untainted: the waiting pods are tried again and land on n3.
    c.kubectl_ok(&["taint", "node", "n3", "dedicated=db:NoSchedule-"]);
    for name in ["untolerating-a", "untolerating-b"] {
        assert_eq!(wait_running(c, name), "n3");
    }
    let third = name_of(&pending).to_string();
    assert_eq!(wait_running(c, &third), "n3");
    delete(c, &["deployment", "zonal-b"]);
    delete(c, &["pods", "-l", "step=taints"]);
}

/// A pod of PriorityClass `high` preempts a low-priority pod that fills n2. Returns the
/// preemptor, left running on n2.
fn preemption(c: &Cluster) -> Value {
    let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": "high"}, "value": 1000});
    c.apply(&pc);
    let n2 = c.get_json(&["node", "n2"]).unwrap();
    let allocatable = millicores(n2["status"]["allocatable"]["cpu"].as_str().unwrap());
    let request = format!("{}m", allocatable * 8 / 10);
    let filling = |name: &str, extra: Value| {
        let mut s = spec(json!({"nodeSelector": {HOSTNAME: "n2"}}));
        s["containers"] = json!([container(Some(json!({"cpu": request})))]);
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            s[k] = v;
        }
        pod(name, json!({"step": "preemption"}), s)
    };
    // `sleep` as PID 1 ignores SIGTERM: the victim takes its whole grace period to go.
    c.apply(&filling("low", json!({"terminationGracePeriodSeconds": 3})));
    assert_eq!(wait_running(c, "low"), "n2");
    let low = c.get_json(&["pod", "low"]).unwrap();

    // Every version of both pods, from a watch, so that nothing short-lived is missed.
    let log = c.node(1).path("preemption-watch.json");
    let mut watch = c
        .node(1)
        .kubectl_command(
            33,
            &[
                "get",
                "pods",
                "-l",
                "step=preemption",
                "-w",
                "-o",
                "json",
                "--output-watch-events",
            ],
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_long("the watch's first event", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("\"low\"")
            .then_some(())
    });
    c.apply(&filling("high", json!({"priorityClassName": "high"})));
    assert_eq!(wait_running(c, "high"), "n2");
    c.wait_long("the victim gone", || {
        let out = c.kubectl(&["get", "pod", "low"]);
        (out.code != 0 && out.stderr.contains("NotFound")).then_some(())
    });
    let high = c.get_json(&["pod", "high"]).unwrap();
    assert_eq!(high["spec"]["priority"], 1000, "{high}");
    // The DELETED of the victim ends the story the watch tells.
    c.wait_long("the watch to see the victim deleted", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("\"DELETED\"")
            .then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let seen: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        // Up to the last whole object (kubectl was killed, perhaps mid-write).
        .map_while(Result::ok)
        .collect();
    let versions = |name: &str| -> Vec<&Value> {
        seen.iter()
            .filter(|e| e["object"]["metadata"]["name"] == name)
            .map(|e| &e["object"])
            .collect()
    };

    // The victim: DisruptionTarget, then a graceful deletion (its own grace period), then gone.
    let victim = versions("low");
    let disrupted = victim
        .iter()
        .map(|p| condition(p, "DisruptionTarget"))
        .find(|c| !c.is_null())
        .unwrap_or_else(|| panic!("no DisruptionTarget on the victim: {victim:?}"));
    assert_eq!(disrupted["status"], "True", "{disrupted}");
    assert_eq!(disrupted["reason"], "PreemptionByScheduler", "{disrupted}");
    assert_eq!(
        disrupted["message"], "default-scheduler: preempting to accommodate a higher priority pod",
        "{disrupted}"
    );
    assert!(
        victim
            .iter()
            .any(|p| !p["metadata"]["deletionTimestamp"].is_null()
                && p["metadata"]["deletionGracePeriodSeconds"] == 3),
        "the victim deleted with its grace period: {victim:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["type"] == "DELETED" && e["object"]["metadata"]["name"] == "low"),
        "{seen:?}"
    );

    // The preemptor: Unschedulable and nominated to n2 while the victim goes, then bound.
    let preemptor = versions("high");
    assert!(
        preemptor
            .iter()
            .any(|p| p["status"]["nominatedNodeName"] == "n2" && node_of(p).is_none()),
        "high nominated to n2 before it was bound: {preemptor:?}"
    );
    let first = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's \
                 node affinity/selector.";
    assert!(
        preemptor
            .iter()
            .any(|p| condition(p, "PodScheduled")["message"] == first),
        "{preemptor:?}"
    );
    wait_event(c, &high, "FailedScheduling", first);
    let e = wait_event(
        c,
        &low,
        "Preempted",
        &format!("Preempted by pod {} on node n2", uid_of(&high)),
    );
    assert_eq!(
        (e["type"].as_str(), reporter(&e)),
        (Some("Normal"), "default-scheduler")
    );
    wait_event(
        c,
        &high,
        "Scheduled",
        "Successfully assigned default/high to n2",
    );
    high
}

/// Profiles by schedulerName: `bin-packing` (MostAllocated) stacks pods onto n2, where the
/// preemptor holds most of the cpu; the default profile (LeastAllocated) keeps away from it;
/// a pod for a scheduler nobody runs is left alone.
fn profiles(c: &Cluster, preemptor: &Value) {
    assert_eq!(node_of(preemptor), Some("n2"));
    let small = |scheduler: &str| {
        let mut s = spec(json!({"schedulerName": scheduler}));
        s["containers"] = json!([container(Some(json!({"cpu": "50m", "memory": "16Mi"})))]);
        s
    };
    // First: had a profile taken it, the later pods would find it placed.
    c.apply(&pod(
        "unclaimed",
        json!({"step": "profiles"}),
        small("someone-else"),
    ));
    for name in ["packed-1", "packed-2"] {
        c.apply(&pod(
            name,
            json!({"step": "profiles"}),
            small("bin-packing"),
        ));
    }
    c.apply(&pod(
        "spread-out",
        json!({"step": "profiles"}),
        small("default-scheduler"),
    ));
    let mut packed = Vec::new();
    for name in ["packed-1", "packed-2"] {
        assert_eq!(wait_running(c, name), "n2", "MostAllocated picks n2");
        let p = c.get_json(&["pod", name]).unwrap();
        let want = format!("Successfully assigned default/{name} to n2");
        packed.push(wait_event(c, &p, "Scheduled", &want));
    }
    let node = wait_running(c, "spread-out");
    assert_ne!(node, "n2", "LeastAllocated avoids n2");
    let p = c.get_json(&["pod", "spread-out"]).unwrap();
    let want = format!("Successfully assigned default/spread-out to {node}");
    let e = wait_event(c, &p, "Scheduled", &want);
    assert_eq!(reporter(&e), "default-scheduler", "{e}");
    // One more second for anyone who would take the unclaimed pod.
    std::thread::sleep(Duration::from_secs(1));
    let p = c.get_json(&["pod", "unclaimed"]).unwrap();
    assert_eq!(p["status"]["phase"], "Pending", "{p}");
    assert!(node_of(&p).is_none(), "{p}");
    assert!(p["status"]["nominatedNodeName"].is_null(), "{p}");
    assert!(condition(&p, "PodScheduled").is_null(), "{p}");
    let events = events_about(c, uid_of(&p));
    assert!(events.is_empty(), "no scheduler touches it: {events:?}");
    // kube-scheduler gives each profile its own event recorder, named by its schedulerName.
    for e in &packed {
        assert_eq!(reporter(e), "bin-packing", "{e}");
    }
    delete(c, &["pods", "-l", "step=profiles"]);
}
