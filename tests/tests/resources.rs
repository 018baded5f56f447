//! End-to-end: cgroups by QoS class with kubelet's values, limits the kernel enforces, and
//! admission. Reads the real cgroup files of the node's own cgroup root.

use std::time::Duration;

use podlet_e2e::TestNode;
use serde_json::Value;

fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

fn container_id(p: &Value, i: usize) -> String {
    p["status"]["containerStatuses"][i]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("podlet://")
        .to_string()
}

fn pod(name: &str, resources: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", {command:?}]\n{resources}"
    )
}

fn num(s: Option<String>) -> i64 {
    s.unwrap_or_default().trim().parse().unwrap_or(i64::MIN)
}

#[test]
fn cgroup_values_and_oom_scores_follow_the_qos_class() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    let g = "    resources:\n      limits: {cpu: 250m, memory: 64Mi}\n";
    let b = "    resources:\n      requests: {cpu: 100m, memory: 32Mi}\n      limits: {memory: 128Mi}\n";
    node.write_manifest("g.yaml", &pod("g", g, "sleep 1000"));
    node.write_manifest("b.yaml", &pod("b", b, "sleep 1000"));
    node.write_manifest("be.yaml", &pod("be", "", "sleep 1000"));
    let (pg, pb, pbe) = (
        node.wait_running("g"),
        node.wait_running("b"),
        node.wait_running("be"),
    );
    assert_eq!(pg["status"]["qosClass"], "Guaranteed");
    assert_eq!(pb["status"]["qosClass"], "Burstable");
    assert_eq!(pbe["status"]["qosClass"], "BestEffort");

    // Guaranteed: <root>/pod<uid>, cpu 250m -> 256 shares, 25 ms quota per 100 ms, 64Mi.
    let gp = format!("pod{}", uid(&pg));
    let gc = format!("{gp}/{}", container_id(&pg, 0));
    for dir in [&gp, &gc] {
        assert_eq!(
            num(node.cgroup_file("cpu", dir, "cpu.shares")),
            256,
            "{dir}"
        );
        assert_eq!(
            num(node.cgroup_file("cpu", dir, "cpu.cfs_quota_us")),
            25_000,
            "{dir}"
        );
        assert_eq!(
            num(node.cgroup_file("cpu", dir, "cpu.cfs_period_us")),
            100_000,
            "{dir}"
        );
        assert_eq!(
            num(node.cgroup_file("memory", dir, "memory.limit_in_bytes")),
            64 << 20,
            "{dir}"
        );
    }
    // Burstable: <root>/burstable/pod<uid>, 100m -> 102 shares, no quota, memory limit 128Mi.
    let bp = format!("burstable/pod{}", uid(&pb));
    let bc = format!("{bp}/{}", container_id(&pb, 0));
    for dir in [&bp, &bc] {
        assert_eq!(
            num(node.cgroup_file("cpu", dir, "cpu.shares")),
            102,
            "{dir}"
        );
        assert_eq!(
            num(node.cgroup_file("cpu", dir, "cpu.cfs_quota_us")),
            -1,
            "{dir}"
        );
        assert_eq!(
            num(node.cgroup_file("memory", dir, "memory.limit_in_bytes")),
            128 << 20,
            "{dir}"
        );
    }
    assert_eq!(
        num(node.cgroup_file("cpu", "burstable", "cpu.shares")),
        102,
        "burstable QoS weight = its pods' requests"
    );
    // BestEffort: <root>/besteffort/pod<uid>, the minimum 2 shares everywhere.
    let ep = format!("besteffort/pod{}", uid(&pbe));
    assert_eq!(num(node.cgroup_file("cpu", &ep, "cpu.shares")), 2);
    assert_eq!(num(node.cgroup_file("cpu", "besteffort", "cpu.shares")), 2);
    assert!(
        num(node.cgroup_file("memory", &ep, "memory.limit_in_bytes")) > 1 << 40,
        "no memory limit"
    );

    // oom_score_adj by class; the agent keeps its own.
    let adj = |p: &Value| {
        let pid = node.shim_state(&uid(p))["containers"]["c"]["pid"]
            .as_i64()
            .unwrap();
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    // Lowering a score needs CAP_SYS_RESOURCE; without it (as in some sandboxes) the node gives
    // the lowest score it may: its own.
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = u64::from_str_radix(
        caps.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim(),
        16,
    )
    .unwrap();
    let floor: i64 = if eff & (1 << 24) != 0 {
        -1000
    } else {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(adj(&pg), (-997i64).max(floor));
    assert_eq!(adj(&pbe), 1000);
    let mem_total: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1024.0;
    let expect = (1000 - (1000.0 * (32u64 << 20) as f64 / mem_total) as i64).clamp(2, 999);
    assert_eq!(adj(&pb), expect);
    let shim = node.shim_state(&uid(&pg))["shimPid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{shim}/oom_score_adj"))
            .unwrap()
            .trim(),
        (-999i64).max(floor).to_string(),
        "shims never inherit a pod's score"
    );
}

#[test]
fn memory_limit_oom_kills_and_cpu_limit_throttles() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    // A shell variable of ~100 MB in a 32Mi container.
    node.write_manifest(
        "hog.yaml",
        // tail buffers its last lines, and /dev/zero has no line end: it grows until killed.
        &pod(
            "hog",
            "    resources:\n      limits: {memory: 32Mi}\n",
            "exec tail /dev/zero",
        ),
    );
    node.write_manifest(
        "spin.yaml",
        &pod(
            "spin",
            "    resources:\n      limits: {cpu: 100m}\n",
            "while true; do :; done",
        ),
    );
    let hog = node.wait_for("the OOM kill", Duration::from_secs(60), || {
        node.pod("hog")
            .filter(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].is_object())
    });
    let t = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);
    assert_eq!(hog["status"]["phase"], "Failed");

    let spin = node.wait_running("spin");
    assert_eq!(spin["status"]["qosClass"], "Burstable");
    let dir = format!("burstable/pod{}/{}", uid(&spin), container_id(&spin, 0));
    let throttled = node.wait_for("CFS throttling", Duration::from_secs(20), || {
        let stat = node.cgroup_file("cpu", &dir, "cpu.stat")?;
        let n: i64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))?
            .trim()
            .parse()
            .ok()?;
        (n > 0).then_some(n)
    });
    assert!(throttled > 0);
}

#[test]
fn pids_limit_stops_a_fork_bomb_inside_the_pod() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    node.agent_args = vec!["--pod-pids-limit".into(), "40".into()];
    node.start_agent();
    node.write_manifest(
        "bomb.yaml",
        // The bomb runs in a subshell that dies on its first refused fork; the container's
        // shell then needs no fork to go on (echo is built in, exec replaces it).
        &pod("bomb", "", "(i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done) 2>/dev/null; echo forked; exec sleep 1000"),
    );
    let p = node.wait_running("bomb");
    let dir = format!("besteffort/pod{}", uid(&p));
    assert_eq!(
        node.cgroup_file("pids", &dir, "pids.max").unwrap().trim(),
        "40"
    );
    // Kernels count the refused forks in the pod's or in the forking container's pids.events.
    let ctr = format!("{dir}/{}", container_id(&p, 0));
    node.wait_for("the bomb to hit the limit", Duration::from_secs(20), || {
        let hit = |d: &str| {
            let events = node
                .cgroup_file("pids", d, "pids.events")
                .unwrap_or_default();
            events
                .lines()
                .any(|l| l.starts_with("max ") && l != "max 0")
        };
        (hit(&dir) || hit(&ctr)).then_some(())
    });
    let current = num(node.cgroup_file("pids", &dir, "pids.current"));
    assert!(current <= 40, "pids.current {current}");
    // The node still starts other pods.
    node.write_manifest("after.yaml", &pod("after", "", "sleep 1000"));
    node.wait_running("after");
}

#[test]
fn pods_that_do_not_fit_are_rejected_with_kubelets_reasons() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    // Leave 500m of CPU allocatable, whatever the machine has.
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    node.agent_args = vec![
        "--system-reserved".into(),
        format!("cpu={}m", cpus * 1000 - 500),
    ];
    node.start_agent();
    node.write_manifest(
        "small.yaml",
        &pod(
            "small",
            "    resources:\n      requests: {cpu: 300m}\n",
            "sleep 1000",
        ),
    );
    node.wait_running("small");
    node.write_manifest(
        "big.yaml",
        &pod(
            "big",
            "    resources:\n      requests: {cpu: 300m}\n",
            "sleep 1000",
        ),
    );
    let big = node.wait_for("rejection", Duration::from_secs(10), || {
        node.pod("big").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(big["status"]["reason"], "OutOfcpu");
    assert!(
        big["status"]["message"].as_str().unwrap().contains(
            "Node didn't have enough resource: cpu, requested: 300, used: 300, capacity: 500"
        ),
        "{}",
        big["status"]["message"]
    );
    node.write_manifest(
        "mem.yaml",
        &pod(
            "mem",
            "    resources:\n      requests: {memory: 100Ti}\n",
            "sleep 1000",
        ),
    );
    let mem = node.wait_for("rejection", Duration::from_secs(10), || {
        node.pod("mem").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(mem["status"]["reason"], "OutOfmemory");
    // The running pod is undisturbed, and room freed is room again.
    assert_eq!(node.pod("small").unwrap()["status"]["phase"], "Running");
    node.remove_manifest("small.yaml");
    node.wait_for("small gone", Duration::from_secs(20), || {
        node.pod("small").is_none().then_some(())
    });
    node.write_manifest(
        "again.yaml",
        &pod(
            "again",
            "    resources:\n      requests: {cpu: 400m}\n",
            "sleep 1000",
        ),
    );
    node.wait_running("again");
}

#[test]
fn memory_pressure_evicts_besteffort_first_and_reports_the_condition() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    let avail_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    // A threshold just above what is free: the node is under memory pressure from the start.
    let threshold_mi = avail_kb / 1024 + 2048;
    node.agent_args = vec![
        format!("--eviction-hard=memory.available<{threshold_mi}Mi"),
        "--eviction-interval=0.5".into(),
    ];
    // Both pods exist before the agent starts, so the first eviction chooses between them.
    node.write_manifest(
        "g.yaml",
        &pod(
            "g",
            "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n",
            "sleep 1000",
        ),
    );
    node.write_manifest("be.yaml", &pod("be", "", "sleep 1000"));
    node.start_agent();
    let first = node.wait_for("an eviction", Duration::from_secs(30), || {
        node.pods()
            .into_iter()
            .find(|p| p["status"]["reason"] == "Evicted")
    });
    assert_eq!(first["metadata"]["name"], "be-e2e", "BestEffort goes first");
    assert_eq!(first["status"]["phase"], "Failed");
    let msg = first["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("The node was low on resource: memory. Threshold quantity: "),
        "{msg}"
    );
    let n: Value = serde_json::from_str(&node.get("/node").unwrap()).unwrap();
    let cond = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "MemoryPressure")
        .unwrap()
        .clone();
    assert_eq!(cond["status"], "True", "{cond}");
    assert!(
        n["status"]["allocatable"]["cpu"].is_string()
            && n["status"]["nodeInfo"]["containerRuntimeVersion"]
                .as_str()
                .unwrap()
                .starts_with("podlet://")
    );
    // The evicted pod's processes are gone; the pressure goes on, so the next pod follows.
    let uid = first["metadata"]["uid"].as_str().unwrap();
    assert!(!node.path(&format!("run/pods/{uid}/state.json")).exists());
    node.wait_for("the next eviction", Duration::from_secs(30), || {
        node.pod("g").filter(|p| p["status"]["reason"] == "Evicted")
    });
}

#[test]
fn changing_only_resources_resizes_the_running_pod_in_place() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    let manifest = |cpu: &str, mem: &str| {
        pod(
            "rs",
            &format!("    resources:\n      limits: {{cpu: {cpu}, memory: {mem}}}\n"),
            "sleep 1000",
        )
        .replace("restartPolicy: Never", "restartPolicy: Always")
    };
    node.write_manifest("rs.yaml", &manifest("200m", "64Mi"));
    let before = node.wait_running("rs");
    let uid = uid(&before);
    let pid = node.shim_state(&uid)["containers"]["c"]["pid"]
        .as_i64()
        .unwrap();
    let ctr = format!("pod{uid}/{}", container_id(&before, 0));
    assert_eq!(
        num(node.cgroup_file("cpu", &ctr, "cpu.cfs_quota_us")),
        20_000
    );

    node.write_manifest("rs.yaml", &manifest("300m", "96Mi"));
    node.wait_for("the new limits", Duration::from_secs(10), || {
        (num(node.cgroup_file("cpu", &ctr, "cpu.cfs_quota_us")) == 30_000).then_some(())
    });
    assert_eq!(
        num(node.cgroup_file("memory", &ctr, "memory.limit_in_bytes")),
        96 << 20
    );
    assert_eq!(num(node.cgroup_file("cpu", &ctr, "cpu.shares")), 307);
    assert_eq!(
        num(node.cgroup_file("cpu", &format!("pod{uid}"), "cpu.cfs_quota_us")),
        30_000
    );
    assert_eq!(
        num(node.cgroup_file("memory", &format!("pod{uid}"), "memory.limit_in_bytes")),
        96 << 20
    );
    let after = node.pod("rs").unwrap();
    assert_eq!(after["metadata"]["uid"], uid.as_str(), "the same pod");
    assert_eq!(
        node.shim_state(&uid)["containers"]["c"]["pid"].as_i64(),
        Some(pid),
        "not restarted"
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    let shown = node.wait_for("the status", Duration::from_secs(5), || {
        let p = node.pod("rs")?;
        (p["status"]["containerStatuses"][0]["resources"]["limits"]["cpu"] == "300m").then_some(p)
    });
    assert_eq!(
        shown["status"]["containerStatuses"][0]["resources"]["limits"]["memory"],
        "96Mi"
    );

    // A resize made while the agent is down is applied when it comes back.
    let mut node = node;
    node.kill_agent();
    node.write_manifest("rs.yaml", &manifest("400m", "96Mi"));
    node.start_agent();
    node.wait_for(
        "the resize after a restart",
        Duration::from_secs(10),
        || (num(node.cgroup_file("cpu", &ctr, "cpu.cfs_quota_us")) == 40_000).then_some(()),
    );
    assert_eq!(
        node.shim_state(&uid)["containers"]["c"]["pid"].as_i64(),
        Some(pid),
        "still not restarted"
    );

    // Dropping the limits would make it BestEffort: Kubernetes refuses that resize.
    node.write_manifest(
        "rs.yaml",
        &pod("rs", "", "sleep 1000").replace("restartPolicy: Never", "restartPolicy: Always"),
    );
    let refused = node.wait_for("the refusal", Duration::from_secs(10), || {
        node.pod("rs")
            .filter(|p| p["status"]["resize"] == "Infeasible")
    });
    assert_eq!(refused["metadata"]["uid"], uid.as_str());
    assert_eq!(
        num(node.cgroup_file("cpu", &ctr, "cpu.cfs_quota_us")),
        40_000,
        "values kept"
    );
}

#[test]
fn qos_reserved_keeps_memory_for_higher_classes() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    node.agent_args = vec!["--qos-reserved=memory=100%".into()];
    node.start_agent();
    node.write_manifest(
        "g.yaml",
        &pod(
            "g",
            "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n",
            "sleep 1000",
        ),
    );
    node.write_manifest(
        "b.yaml",
        &pod(
            "b",
            "    resources:\n      requests: {memory: 32Mi}\n",
            "sleep 1000",
        ),
    );
    node.wait_running("g");
    node.wait_running("b");
    let total: i64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i64>()
        .unwrap()
        * 1024;
    let page = |v: i64| v / 4096 * 4096;
    node.wait_for("QoS memory limits", Duration::from_secs(5), || {
        (num(node.cgroup_file("memory", "burstable", "memory.limit_in_bytes"))
            == page(total - (64 << 20)))
        .then_some(())
    });
    assert_eq!(
        num(node.cgroup_file("memory", "besteffort", "memory.limit_in_bytes")),
        page(total - (64 << 20) - (32 << 20))
    );
}

#[test]
fn cgroup_v2_layout_places_and_removes_pods() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    let v2 = node.use_cgroup2();
    node.start_agent();
    let b = "    resources:\n      requests: {cpu: 100m, memory: 32Mi}\n      limits: {cpu: 200m, memory: 128Mi}\n";
    node.write_manifest("b.yaml", &pod("b", b, "sleep 1000"));
    let p = node.wait_running("b");
    assert_eq!(p["status"]["qosClass"], "Burstable");
    let (u, ctr) = (uid(&p), container_id(&p, 0));
    let rel = format!("{}/burstable/pod{u}/{ctr}", node.cgroup_root);
    let pid = node.shim_state(&u)["containers"]["c"]["pid"]
        .as_i64()
        .unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l == format!("0::/{rel}")),
        "the container sits in its v2 leaf: {own}"
    );
    let procs = std::fs::read_to_string(v2.join(&rel).join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    // Values where this kernel lets cgroup2 have the controllers (elsewhere they stay with v1,
    // and the agent says so).
    let offered = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap();
    let offered: Vec<&str> = offered.split_whitespace().collect();
    let read = |f: &str| std::fs::read_to_string(v2.join(&rel).join(f)).unwrap();
    if offered.contains(&"cpu") {
        assert_eq!(read("cpu.weight").trim(), "4");
        assert_eq!(read("cpu.max").trim(), "20000 100000");
    }
    if offered.contains(&"memory") {
        assert_eq!(read("memory.max").trim(), (128u64 << 20).to_string());
    }
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !offered.contains(c))
        .collect();
    if !missing.is_empty() {
        assert!(
            node.agent_log().contains("cgroup controllers unavailable"),
            "the agent warns about {missing:?}"
        );
    }
    node.remove_manifest("b.yaml");
    node.wait_for("pod cgroup removed", Duration::from_secs(10), || {
        (!v2.join(format!("{}/burstable/pod{u}", node.cgroup_root))
            .exists())
        .then_some(())
    });
}
