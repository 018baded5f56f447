//! Resource usage as the kubelet reports it: `/stats/summary` (the Summary API metrics-server
//! and `kubectl top` read), `/metrics/resource` (the Prometheus form metrics-server ≥ 0.6
//! scrapes) and `/metrics` (the agent's own gauges). Usage comes from the pod and container
//! cgroups; CPU rates from the previous sample of the same cgroup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use podlet_runtime::cgroup::Layout;

use crate::eviction::Evictions;
use crate::pod::{Admission, NodeInfo, StatusCache};

/// The last CPU sample of each cgroup: (when, cumulative ns).
static SAMPLES: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);

struct Usage {
    cpu_ns: Option<u64>,
    /// Nanocores since the previous sample of the same cgroup.
    nano_cores: Option<u64>,
    working_set: Option<u64>,
    usage: Option<u64>,
}

fn usage(cgroups: &Layout, cgroup: &str) -> Usage {
    let cpu_ns = podlet_runtime::cgroup::cpu_usage_ns(cgroups, cgroup);
    let now = Instant::now();
    let nano_cores = cpu_ns.and_then(|ns| {
        let mut samples = SAMPLES.lock().expect("samples lock");
        let map = samples.get_or_insert_with(HashMap::new);
        let prev = map.insert(cgroup.to_string(), (now, ns));
        prev.and_then(|(t, before)| {
            let dt = now.duration_since(t).as_nanos() as u64;
            (dt > 0 && ns >= before).then(|| (ns - before) * 1_000_000_000 / dt)
        })
    });
    Usage {
        cpu_ns,
        nano_cores,
        working_set: podlet_runtime::cgroup::memory_working_set(cgroups, cgroup),
        usage: podlet_runtime::cgroup::memory_usage(cgroups, cgroup),
    }
}

fn cpu_json(u: &Usage, time: &str) -> Value {
    let mut v = json!({"time": time});
    if let Some(n) = u.nano_cores {
        v["usageNanoCores"] = json!(n);
    }
    if let Some(ns) = u.cpu_ns {
        v["usageCoreNanoSeconds"] = json!(ns);
    }
    v
}

fn memory_json(u: &Usage, time: &str) -> Value {
    let mut v = json!({"time": time});
    if let Some(b) = u.usage {
        v["usageBytes"] = json!(b);
    }
    if let Some(b) = u.working_set {
        v["workingSetBytes"] = json!(b);
    }
    v
}

/// (pod namespace, name, uid, start, pod cgroup, [(container, cgroup, started)]).
type PodCgroups = (
    String,
    String,
    String,
    String,
    String,
    Vec<(String, String, String)>,
);

fn pods(info: &NodeInfo, statuses: &StatusCache, admission: &Admission) -> Vec<PodCgroups> {
    statuses
        .snapshot()
        .into_iter()
        .filter_map(|(uid, p)| {
            let qos = admission.qos(&uid)?;
            let st = p.status.clone().unwrap_or_default();
            let shim = podlet_runtime::shim::read_state(&info.cfg.pod_run_dir(&uid))?;
            let containers = shim
                .containers
                .iter()
                .filter(|(_, r)| r.running())
                .map(|(n, r)| {
                    (
                        n.clone(),
                        r.cgroup.clone(),
                        r.started_at.clone().unwrap_or_default(),
                    )
                })
                .collect();
            Some((
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
                uid.clone(),
                st.start_time.map(|t| t.0.to_string()).unwrap_or_default(),
                crate::pod::pod_cgroup(&info.cfg.cgroup_root, qos, &uid),
                containers,
            ))
        })
        .collect()
}

/// The node's own CPU time (all CPUs, from /proc/stat) and memory working set (/proc/meminfo).
fn node_usage() -> (Option<u64>, Option<u64>, Option<u64>) {
    let ticks = 100u64; // USER_HZ
    let cpu_ns = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let f: Vec<u64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system (irq softirq steal): busy time, not idle/iowait.
        let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
        Some(busy * 1_000_000_000 / ticks)
    });
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |k: &str| {
        mem.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let (total, avail) = (kb("MemTotal:"), kb("MemAvailable:"));
    let used = total.zip(avail).map(|(t, a)| t.saturating_sub(a));
    (cpu_ns, used, avail)
}

pub fn summary(info: &NodeInfo, statuses: &StatusCache, admission: &Admission) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let (cpu_ns, used, avail) = node_usage();
    let node_cpu = {
        let u = Usage {
            cpu_ns,
            nano_cores: None,
            working_set: used,
            usage: used,
        };
        let mut v = cpu_json(&u, &now);
        if let Some(ns) = cpu_ns {
            let mut samples = SAMPLES.lock().expect("samples lock");
            let map = samples.get_or_insert_with(HashMap::new);
            let t = Instant::now();
            if let Some((before_t, before)) = map.insert("<node>".into(), (t, ns)) {
                let dt = t.duration_since(before_t).as_nanos() as u64;
                if dt > 0 && ns >= before {
                    v["usageNanoCores"] = json!((ns - before) * 1_000_000_000 / dt);
                }
            }
        }
        v
    };
    let mut node_mem = json!({"time": now});
    if let Some(u) = used {
        node_mem["usageBytes"] = json!(u);
        node_mem["workingSetBytes"] = json!(u);
    }
    if let Some(a) = avail {
        node_mem["availableBytes"] = json!(a);
    }
    let pods: Vec<Value> = pods(info, statuses, admission)
        .into_iter()
        .map(|(ns, name, uid, start, cgroup, containers)| {
            let pu = usage(&info.cgroups, &cgroup);
            let cs: Vec<Value> = containers
                .iter()
                .map(|(c, cg, started)| {
                    let u = usage(&info.cgroups, cg);
                    json!({"name": c, "startTime": started, "cpu": cpu_json(&u, &now), "memory": memory_json(&u, &now)})
                })
                .collect();
            json!({
                "podRef": {"name": name, "namespace": ns, "uid": uid},
                "startTime": start,
                "containers": cs,
                "cpu": cpu_json(&pu, &now),
                "memory": memory_json(&pu, &now),
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": info.cfg.node_name,
            "startTime": info.started.to_string(),
            "cpu": node_cpu,
            "memory": node_mem,
        },
        "pods": pods,
    })
}

/// `/metrics/resource` in Prometheus' text format.
pub fn resource(info: &NodeInfo, statuses: &StatusCache, admission: &Admission) -> String {
    let ms = jiff::Timestamp::now().as_millisecond();
    let mut out = String::new();
    let (cpu_ns, used, _) = node_usage();
    let secs = |ns: u64| ns as f64 / 1e9;
    out.push_str("# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
    if let Some(ns) = cpu_ns {
        out.push_str(&format!("node_cpu_usage_seconds_total {} {ms}\n", secs(ns)));
    }
    out.push_str("# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
    if let Some(b) = used {
        out.push_str(&format!("node_memory_working_set_bytes {b} {ms}\n"));
    }
    let pods = pods(info, statuses, admission);
    let mut pod_lines = (String::new(), String::new());
    let mut ctr_lines = (String::new(), String::new());
    for (ns, name, _, _, cgroup, containers) in &pods {
        let u = usage(&info.cgroups, cgroup);
        let labels = format!("namespace=\"{ns}\",pod=\"{name}\"");
        if let Some(n) = u.cpu_ns {
            pod_lines.0.push_str(&format!(
                "pod_cpu_usage_seconds_total{{{labels}}} {} {ms}\n",
                secs(n)
            ));
        }
        if let Some(b) = u.working_set {
            pod_lines.1.push_str(&format!(
                "pod_memory_working_set_bytes{{{labels}}} {b} {ms}\n"
            ));
        }
        for (c, cg, _) in containers {
            let u = usage(&info.cgroups, cg);
            let labels = format!("container=\"{c}\",namespace=\"{ns}\",pod=\"{name}\"");
            if let Some(n) = u.cpu_ns {
                ctr_lines.0.push_str(&format!(
                    "container_cpu_usage_seconds_total{{{labels}}} {} {ms}\n",
                    secs(n)
                ));
            }
            if let Some(b) = u.working_set {
                ctr_lines.1.push_str(&format!(
                    "container_memory_working_set_bytes{{{labels}}} {b} {ms}\n"
                ));
            }
        }
    }
    out.push_str("# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
    out.push_str(&ctr_lines.0);
    out.push_str("# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
    out.push_str(&ctr_lines.1);
    out.push_str("# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds\n# TYPE pod_cpu_usage_seconds_total counter\n");
    out.push_str(&pod_lines.0);
    out.push_str("# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes\n# TYPE pod_memory_working_set_bytes gauge\n");
    out.push_str(&pod_lines.1);
    out.push_str("# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE scrape_error gauge\nscrape_error 0\n");
    out
}

/// `/metrics`: the agent's own gauges, named as the kubelet names them.
pub fn agent(node_name: &str, statuses: &StatusCache, evictions: &Evictions) -> String {
    let pods = statuses.snapshot();
    let mut running = 0;
    let mut states: HashMap<&str, u64> = HashMap::new();
    for p in pods.values() {
        let st = p.status.clone().unwrap_or_default();
        if st.phase.as_deref() == Some("Running") {
            running += 1;
        }
        for c in st.container_statuses.iter().flatten() {
            let s = c.state.clone().unwrap_or_default();
            let k = if s.running.is_some() {
                "running"
            } else if s.terminated.is_some() {
                "exited"
            } else {
                "created"
            };
            *states.entry(k).or_default() += 1;
        }
    }
    let mut out = format!(
        "# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\nkubelet_node_name{{node=\"{}\"}} 1\n# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {running}\n# HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\n",
        node_name
    );
    for s in ["created", "exited", "running"] {
        out.push_str(&format!(
            "kubelet_running_containers{{container_state=\"{s}\"}} {}\n",
            states.get(s).copied().unwrap_or(0)
        ));
    }
    out.push_str(&format!(
        "# HELP podlet_evictions_in_progress Pod evictions asked for and not finished\n# TYPE podlet_evictions_in_progress gauge\npodlet_evictions_in_progress {}\n",
        evictions.in_progress()
    ));
    out.push_str(&crate::proxy::metrics());
    out
}
