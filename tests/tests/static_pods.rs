//! End-to-end: the real `podlet` binary runs static pods inside namespaces made by the test.

use std::time::Duration;

use podlet_e2e::{alive, TestNode};
use serde_json::Value;

fn ns(pid: i64, kind: &str) -> String {
    let proc = if pid == 0 {
        "self".to_string()
    } else {
        pid.to_string()
    };
    std::fs::read_link(format!("/proc/{proc}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

const TWO: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: two
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: a
    image: busybox:1.36
    command: ["sh", "-c", "echo a-started; exec sleep 1000"]
  - name: b
    image: busybox:1.36
    command: ["sleep", "1000"]
"#;

#[test]
fn two_container_pod_shares_sandbox_namespaces() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("two.yaml", TWO);
    let pod = node.wait_running("two");
    let state = node.shim_state(&uid(&pod));
    let pause = state["pausePid"].as_i64().unwrap();
    let a = state["containers"]["a"]["pid"].as_i64().unwrap();
    let b = state["containers"]["b"]["pid"].as_i64().unwrap();
    let node_ns = node.holder_pid() as i64;
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns(a, kind), ns(pause, kind), "{kind} of a");
        assert_eq!(ns(b, kind), ns(pause, kind), "{kind} of b");
        assert_ne!(
            ns(pause, kind),
            ns(node_ns, kind),
            "{kind} of pause vs node"
        );
        assert_ne!(ns(pause, kind), ns(0, kind), "{kind} of pause vs host");
    }
    for kind in ["mnt", "pid"] {
        assert_ne!(ns(a, kind), ns(b, kind), "{kind} of a vs b");
        assert_ne!(ns(a, kind), ns(pause, kind), "{kind} of a vs pause");
        assert_ne!(ns(a, kind), ns(node_ns, kind), "{kind} of a vs node");
    }
    let comm = std::fs::read_to_string(format!("/proc/{pause}/comm")).unwrap();
    assert_eq!(comm.trim(), "pause");

    // hostname is the pod name; the container is PID 1 of its own PID namespace.
    let out = node.podlet(&[
        "exec",
        "two-e2e",
        "-c",
        "a",
        "--",
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("two-e2e"));
    assert_eq!(lines.next().map(str::trim), Some("sleep 1000"));
    // Masked and read-only kernel paths.
    let out = node.podlet(&["exec", "two-e2e", "-c", "a", "--", "sh", "-c",
        "cat /proc/keys /proc/timer_list | wc -c; ls /sys/firmware | wc -l; touch /sys/x 2>/dev/null && echo sys-writable; touch /proc/sys/x 2>/dev/null && echo procsys-writable; ls /dev | tr '\\n' ' '"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    // Both exist on the host with content; masked, they read empty.
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "/proc/keys and /proc/timer_list are masked"
    );
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "/sys/firmware is masked"
    );
    let devs = lines.next().unwrap_or_default();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(devs.split(' ').any(|x| x == d), "/dev/{d} missing: {devs}");
    }
    assert!(!out.stdout.contains("writable"), "{}", out.stdout);
    // The standard devices work through the device cgroup.
    let out = node.podlet(&["exec", "two-e2e", "-c", "a", "--", "sh", "-c",
        "head -c 4 /dev/urandom | wc -c; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok"]);
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["4", "4", "null-ok"],
        "{}",
        out.stderr
    );
    // exec's exit code is the command's.
    assert_eq!(
        node.podlet(&["exec", "two-e2e", "-c", "b", "--", "sh", "-c", "exit 5"])
            .code,
        5
    );

    // Status as Kubernetes shapes it.
    let st = &pod["status"];
    assert_eq!(st["qosClass"], "BestEffort");
    let names: Vec<&str> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    for c in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert!(names.contains(&c), "condition {c} missing: {names:?}");
    }
    for c in st["containerStatuses"].as_array().unwrap() {
        assert!(c["containerID"].as_str().unwrap().starts_with("podlet://"));
        assert!(c["imageID"]
            .as_str()
            .unwrap()
            .starts_with("docker.io/library/busybox@sha256:"));
        assert_eq!(c["image"], "docker.io/library/busybox:1.36");
        assert_eq!(c["restartCount"], 0);
        assert_eq!(c["ready"], true);
    }
    assert!(st["startTime"].is_string());

    let ps = node.podlet(&["ps"]);
    assert!(
        ps.stdout.contains("two-e2e") && ps.stdout.contains("Running"),
        "{}",
        ps.stdout
    );
    let logs = node.podlet(&["logs", "two-e2e", "-c", "a"]);
    assert_eq!(logs.stdout, "a-started\n");

    // The node API also listens on TCP 10250 inside the node's network namespace.
    let wget = std::process::Command::new("nsenter")
        .args([
            "-t",
            &node.holder_pid().to_string(),
            "-n",
            "busybox",
            "wget",
            "-qO-",
            "http://127.0.0.1:10250/pods",
        ])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&wget.stdout).expect("PodList over TCP");
    assert_eq!(list["items"][0]["metadata"]["name"], "two-e2e");

    // An image whose layers a container uses cannot be removed.
    let rm = node.podlet(&["image", "rm", "busybox:1.36"]);
    assert_ne!(rm.code, 0);
    assert!(rm.stderr.contains("in use"), "{}", rm.stderr);
    assert!(node.podlet(&["image", "ls"]).stdout.contains("busybox"));
}

#[test]
fn exit_codes_and_cri_logs_are_recorded() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "job.json",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"job"},
            "spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"busybox:1.36",
            "command":["sh","-c","echo out-line; echo err-line >&2; printf partial; exit 3"]}]}}"#,
    );
    let pod = node.wait_for("job to fail", Duration::from_secs(20), || {
        node.pod("job").filter(|p| p["status"]["phase"] == "Failed")
    });
    let t = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert!(t["finishedAt"].is_string());

    let log_dir = node.path(&format!("logs/default_job-e2e_{}/c", uid(&pod)));
    let text = node.wait_for("log file", Duration::from_secs(5), || {
        std::fs::read_to_string(log_dir.join("0.log"))
            .ok()
            .filter(|t| t.lines().count() == 3)
    });
    let mut seen = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        let ts = parts[0];
        assert!(
            ts.ends_with('Z') && ts.contains('T') && ts.contains('.'),
            "RFC3339Nano: {ts}"
        );
        assert_eq!(parts[2], "F", "{line}");
        seen.push((parts[1].to_string(), parts[3].to_string()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("stderr".to_string(), "err-line".to_string()),
            ("stdout".to_string(), "out-line".to_string()),
            ("stdout".to_string(), "partial".to_string()),
        ]
    );
}

#[test]
fn removing_the_manifest_leaves_nothing_behind() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("two.yaml", TWO);
    let pod = node.wait_running("two");
    let uid = uid(&pod);
    let state = node.shim_state(&uid);
    let mut pids = vec![
        state["shimPid"].as_i64().unwrap(),
        state["pausePid"].as_i64().unwrap(),
    ];
    for c in state["containers"].as_object().unwrap().values() {
        pids.push(c["pid"].as_i64().unwrap());
    }
    assert!(
        !node.mounts_below(&node.path("root")).is_empty(),
        "rootfs mounts expected while running"
    );
    assert!(!node.cgroups_matching(&uid).is_empty());

    node.remove_manifest("two.yaml");
    node.wait_for("pod to go", Duration::from_secs(20), || {
        node.pod("two").is_none().then_some(())
    });
    node.wait_for("processes to exit", Duration::from_secs(5), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    // The pod leaves the node's list before its directories go (a pod whose run dir is gone
    // is never reported): the last removals follow within moments.
    node.wait_for("the pod's logs removed", Duration::from_secs(5), || {
        (std::fs::read_dir(node.path("logs")).ok()?.count() == 0).then_some(())
    });
    assert_eq!(node.mounts_below(&node.path("root")), Vec::<String>::new());
    assert_eq!(
        node.cgroups_matching(&uid),
        Vec::<std::path::PathBuf>::new()
    );
    for dir in [format!("run/pods/{uid}"), format!("root/pods/{uid}")] {
        assert!(!node.path(&dir).exists(), "{dir} left behind");
    }
    assert_eq!(
        std::fs::read_dir(node.path("run/containers"))
            .unwrap()
            .count(),
        0,
        "container state left"
    );
    assert_eq!(
        std::fs::read_dir(node.path("logs")).unwrap().count(),
        0,
        "logs left"
    );
    assert_eq!(node.processes_of_node(), Vec::<u32>::new());
}

#[test]
fn agent_kill_and_restart_adopts_running_pods() {
    let Some(mut node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "keep.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: keep
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: long
    image: busybox:1.36
    command: ["sleep", "1000"]
  - name: short
    image: busybox:1.36
    command: ["sh", "-c", "sleep 2; exit 7"]
"#,
    );
    let pod = node.wait_running("keep");
    let uid = uid(&pod);
    let before = node.shim_state(&uid);
    let long_pid = before["containers"]["long"]["pid"].as_i64().unwrap();
    let pause_pid = before["pausePid"].as_i64().unwrap();

    node.kill_agent();
    // "short" exits while the agent is down.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        alive(long_pid) && alive(pause_pid),
        "pod died with the agent"
    );
    node.start_agent();
    let pod = node.wait_for("adopted status", Duration::from_secs(10), || {
        let p = node.pod("keep")?;
        let cs = p["status"]["containerStatuses"].as_array()?.clone();
        let short = cs.iter().find(|c| c["name"] == "short")?;
        short["state"]["terminated"].is_object().then_some(p)
    });
    let cs = pod["status"]["containerStatuses"].as_array().unwrap();
    let short = cs.iter().find(|c| c["name"] == "short").unwrap();
    assert_eq!(short["state"]["terminated"]["exitCode"], 7);
    let long = cs.iter().find(|c| c["name"] == "long").unwrap();
    assert!(long["state"]["running"].is_object());
    let after = node.shim_state(&uid);
    assert_eq!(
        after["containers"]["long"]["pid"].as_i64(),
        Some(long_pid),
        "container was restarted"
    );
    assert_eq!(after["pausePid"].as_i64(), Some(pause_pid));
}

#[test]
fn edited_and_bad_manifests() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("two.yaml", TWO);
    let first = uid(&node.wait_running("two"));
    node.write_manifest(
        "bad-type.yaml",
        &TWO.replace("name: two", "name: other").replace(
            "    command: [\"sleep\", \"1000\"]\n",
            "    command: [\"sleep\", \"1000\"]\n    ports:\n    - containerPort: eighty\n",
        ),
    );
    node.write_manifest(
        "no-image.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimg\nspec:\n  containers:\n  - name: c\n",
    );
    node.write_manifest("garbage.yaml", "{{{ not yaml");
    // Sorts after two.yaml: the later file of a name is the duplicate, as the kubelet's file source.
    node.write_manifest("zz-dup.yaml", TWO);
    // Editing the file replaces the pod (a new UID), and the bad files touch nothing.
    node.write_manifest("two.yaml", &TWO.replace("sleep 1000", "sleep 999"));
    let second = node.wait_for("replacement", Duration::from_secs(20), || {
        let p = node.pod("two")?;
        let edited = p["spec"]["containers"][0]["command"]
            .to_string()
            .contains("sleep 999");
        (uid(&p) != first && edited && p["status"]["phase"] == "Running").then(|| uid(&p))
    });
    assert_ne!(first, second);
    node.wait_for("old pod cleaned", Duration::from_secs(20), || {
        (!node.path(&format!("run/pods/{first}")).exists()).then_some(())
    });
    let log = node.wait_for("errors logged", Duration::from_secs(5), || {
        let l = node.agent_log();
        (l.contains("bad-type.yaml")
            && l.contains("no-image.yaml")
            && l.contains("garbage.yaml")
            && l.contains("zz-dup.yaml"))
        .then_some(l)
    });
    assert!(
        log.contains("spec.containers[1].ports[0].containerPort"),
        "{log}"
    );
    assert!(
        log.contains("spec.containers[0].image: Required value"),
        "{log}"
    );
    assert!(log.contains("Duplicate"), "{log}");
    // The node's list drops the replaced pod when its worker ends (a moment after its files).
    node.wait_for("one pod listed", Duration::from_secs(10), || {
        (node.pods().len() == 1).then_some(())
    });
    assert_eq!(node.get("/healthz").unwrap(), "ok");
}

#[test]
fn restart_policy_always_backs_off() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "crash.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crash\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", \"exit 1\"]\n",
    );
    let pod = node.wait_for("crash loop", Duration::from_secs(20), || {
        let p = node.pod("crash")?;
        let c = p["status"]["containerStatuses"][0].clone();
        (c["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(p)
    });
    let c = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        c["restartCount"], 1,
        "first restart is immediate, then back-off"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert!(c["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .starts_with("back-off 10s restarting failed container=c"));
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn shared_process_namespace_has_pause_as_pid_1() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "shared.yaml",
        &TWO.replace("name: two", "name: shared")
            .replace("spec:\n", "spec:\n  shareProcessNamespace: true\n"),
    );
    node.wait_running("shared");
    let out = node.podlet(&[
        "exec",
        "shared-e2e",
        "-c",
        "a",
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; ps -o comm | sort | uniq | tr '\\n' ' '",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("pause"));
    assert!(lines.next().unwrap().contains("sleep"), "{}", out.stdout);
}

#[test]
fn missing_image_waits_with_a_reason() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("nope.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nope\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5999/none:1\n");
    let p = node.wait_for("waiting reason", Duration::from_secs(10), || {
        node.pod("nope").filter(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        })
    });
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("Failed to pull image \"127.0.0.1:5999/none:1\"")
    );
}

#[test]
fn host_network_init_containers_and_shared_volume() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "hostnet.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: hostnet
spec:
  hostNetwork: true
  hostPID: true
  hostIPC: true
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {}
  initContainers:
  - name: init
    image: busybox:1.36
    command: ["sh", "-c", "echo from-init > /data/msg"]
    volumeMounts: [{name: shared, mountPath: /data}]
  containers:
  - name: main
    image: busybox:1.36
    command: ["sleep", "1000"]
    env:
    - name: MY_POD
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts: [{name: shared, mountPath: /data}]
"#,
    );
    let pod = node.wait_running("hostnet");
    let init = &pod["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert_eq!(init["exitCode"], 0);
    assert_eq!(init["reason"], "Completed");
    let state = node.shim_state(&uid(&pod));
    let main = state["containers"]["main"]["pid"].as_i64().unwrap();
    let holder = node.holder_pid() as i64;
    assert_eq!(
        ns(main, "net"),
        ns(holder, "net"),
        "hostNetwork shares the node's network"
    );
    assert_eq!(
        ns(main, "uts"),
        ns(holder, "uts"),
        "hostNetwork shares the node's hostname"
    );
    assert_eq!(ns(main, "pid"), ns(holder, "pid"), "hostPID");
    assert_eq!(ns(main, "ipc"), ns(holder, "ipc"), "hostIPC");
    assert_ne!(ns(main, "mnt"), ns(holder, "mnt"));
    let out = node.podlet(&[
        "exec",
        "hostnet-e2e",
        "--",
        "sh",
        "-c",
        "cat /data/msg; echo $MY_POD; cat /proc/net/dev",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..2], ["from-init", "hostnet-e2e"]);
    // The node's network namespace (the test's), which has only lo.
    assert!(
        out.stdout.contains("lo:") && !out.stdout.contains("eth0"),
        "{}",
        out.stdout
    );
}

#[test]
fn sandbox_is_recreated_when_pause_dies() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest("two.yaml", TWO);
    let pod = node.wait_running("two");
    let uid = uid(&pod);
    let old = node.shim_state(&uid);
    let old_pause = old["pausePid"].as_i64().unwrap();
    let old_a = old["containers"]["a"]["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pause as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pod = node.wait_for("a new sandbox", Duration::from_secs(20), || {
        let p = node.pod("two")?;
        let st = node.try_shim_state(&uid)?;
        let fresh = st["pausePid"].as_i64()? != old_pause;
        let cs = p["status"]["containerStatuses"].as_array()?.clone();
        let running = cs
            .iter()
            .all(|c| c["state"]["running"].is_object() && c["restartCount"] == 1);
        (fresh && running).then_some(p)
    });
    assert!(!alive(old_a), "the old container outlived its sandbox");
    assert_eq!(pod["status"]["phase"], "Running");
}
