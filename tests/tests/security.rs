//! End-to-end: seccomp profiles and AppArmor handling on this node.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use podlet_e2e::{workspace, TestNode};

fn logs(node: &TestNode, pod: &str, c: &str) -> String {
    node.podlet(&["logs", pod, "-c", c]).stdout
}

const CHECK: &str = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; unshare -U true 2>/dev/null; echo unshare=$?; mkdir /tmp/made 2>/dev/null && echo mkdir=ok || echo mkdir=refused; exec sleep 1000";

fn container(name: &str, profile: &str) -> String {
    format!(
        "  - name: {name}\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", {CHECK:?}]\n{profile}"
    )
}

#[test]
fn seccomp_profiles_are_in_force_from_the_first_instruction() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    std::fs::create_dir_all(node.path("root/seccomp")).unwrap();
    std::fs::write(
        node.path("root/seccomp/no-mkdir.json"),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sc\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n{}{}{}",
        container("rt", "    securityContext:\n      seccompProfile: {type: RuntimeDefault}\n"),
        container("un", "    securityContext:\n      seccompProfile: {type: Unconfined}\n"),
        container("lh", "    securityContext:\n      seccompProfile: {type: Localhost, localhostProfile: no-mkdir.json}\n"),
    ) + &container("nnp", "    securityContext:\n      allowPrivilegeEscalation: false\n      seccompProfile: {type: RuntimeDefault}\n");
    node.write_manifest("sc.yaml", &manifest);
    node.wait_running("sc");
    let read = |c: &str| {
        node.wait_for("the checks", Duration::from_secs(10), || {
            Some(logs(&node, "sc-e2e", c)).filter(|l| l.contains("mkdir="))
        })
    };
    let (rt, un, lh, nnp) = (read("rt"), read("un"), read("lh"), read("nnp"));
    // With and without no_new_privs, the filter is in force.
    assert!(
        nnp.contains("NoNewPrivs:\t1") && nnp.contains("Seccomp:\t2") && nnp.contains("unshare=1"),
        "{nnp}"
    );
    assert!(rt.contains("NoNewPrivs:\t0"), "{rt}");
    // The filter is there in the container's own first process (PID 1 of its namespace).
    assert!(rt.contains("Seccomp:\t2"), "{rt}");
    assert!(un.contains("Seccomp:\t0"), "{un}");
    assert!(lh.contains("Seccomp:\t2"), "{lh}");
    // RuntimeDefault refuses new namespaces; the Localhost profile refuses mkdir only.
    assert!(rt.contains("unshare=1") && rt.contains("mkdir=ok"), "{rt}");
    assert!(lh.contains("mkdir=refused"), "{lh}");
    assert!(un.contains("mkdir=ok"), "{un}");
    if un.contains("unshare=0") {
        // Where the node allows user namespaces at all, only seccomp made the difference.
        assert!(rt.contains("unshare=1"));
    }
    // A missing Localhost profile is a config error of that container.
    node.write_manifest(
        "missing.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: missing\nspec:\n  containers:\n{}",
            container("c", "    securityContext:\n      seccompProfile: {type: Localhost, localhostProfile: nope.json}\n")
        ),
    );
    let p = node.wait_for("the config error", Duration::from_secs(10), || {
        node.pod("missing").filter(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        })
    });
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.json")
    );
}

#[test]
fn seccomp_default_flag_applies_runtime_default() {
    if !podlet_e2e::privileged() {
        return;
    }
    let mut node = TestNode::with_busybox();
    node.agent_args = vec!["--seccomp-default".into()];
    node.start_agent();
    node.write_manifest(
        "d.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: d\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n{}", container("c", "")),
    );
    node.wait_running("d");
    let l = node.wait_for("the checks", Duration::from_secs(10), || {
        Some(logs(&node, "d-e2e", "c")).filter(|l| l.contains("mkdir="))
    });
    assert!(l.contains("Seccomp:\t2") && l.contains("unshare=1"), "{l}");
}

#[test]
fn apparmor_follows_the_kernel() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false);
    node.write_manifest(
        "aa.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: aa\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n    securityContext:\n      appArmorProfile: {type: Localhost, localhostProfile: some-profile}\n",
    );
    node.write_manifest(
        "rd.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: rd\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n    securityContext:\n      appArmorProfile: {type: RuntimeDefault}\n",
    );
    node.wait_running("rd");
    if !enabled {
        // As the kubelet: RuntimeDefault runs unconfined, a Localhost profile cannot be enforced.
        let aa = node.wait_for("the refusal", Duration::from_secs(10), || {
            node.pod("aa").filter(|p| p["status"]["phase"] == "Failed")
        });
        assert_eq!(aa["status"]["reason"], "AppArmor");
        assert_eq!(
            aa["status"]["message"],
            "Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host"
        );
    }
}

#[test]
fn the_default_apparmor_profile_parses() {
    let out = std::process::Command::new("apparmor_parser")
        .args(["-Q", "-K"])
        .arg(workspace().join("apparmor-profiles/podlet-default"))
        .output()
        .expect("apparmor_parser (Debian's apparmor package; hack/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sysctls_proc_mount_and_fs_group() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    node.write_manifest(
        "sys.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: sys
spec:
  terminationGracePeriodSeconds: 0
  securityContext:
    fsGroup: 1234
    runAsUser: 1000
    sysctls:
    - {name: net.ipv4.ip_unprivileged_port_start, value: "100"}
  volumes:
  - {name: data, emptyDir: {}}
  containers:
  - name: c
    image: busybox:1.36
    command: ["sleep", "1000"]
    volumeMounts: [{name: data, mountPath: /data}]
  - name: unmasked
    image: busybox:1.36
    command: ["sleep", "1000"]
    securityContext:
      runAsUser: 0
      procMount: Unmasked
"#,
    );
    node.wait_running("sys");
    let out = node.podlet(&["exec", "sys-e2e", "-c", "c", "--", "sh", "-c",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; touch /data/f && ls -ln /data/f | awk '{print $3, $4}'; id -G"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"100"), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        lines.get(1),
        Some(&"1000 1234"),
        "files in the volume belong to fsGroup: {}",
        out.stdout
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|g| g.split(' ').any(|x| x == "1234")),
        "{}",
        out.stdout
    );
    let keys = node
        .podlet(&[
            "exec",
            "sys-e2e",
            "-c",
            "unmasked",
            "--",
            "sh",
            "-c",
            "cat /proc/keys | wc -c",
        ])
        .stdout;
    assert_ne!(
        keys.trim(),
        "0",
        "procMount Unmasked leaves /proc/keys visible"
    );
    // An unsafe sysctl is refused, as the kubelet does.
    node.write_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  securityContext:\n    sysctls:\n    - {name: net.core.somaxconn, value: \"1024\"}\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sleep\", \"1000\"]\n",
    );
    let bad = node.wait_for("the refusal", Duration::from_secs(10), || {
        node.pod("bad").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(bad["status"]["reason"], "SysctlForbidden");
    assert!(bad["status"]["message"]
        .as_str()
        .unwrap()
        .contains("net.core.somaxconn"));
}

#[test]
fn privileged_containers_get_host_devices_caps_and_a_writable_sys() {
    let Some(node) = TestNode::with_agent() else {
        return;
    };
    // A host character device that no container has by default.
    let defaults = [
        "null", "zero", "full", "random", "urandom", "tty", "console", "ptmx", "tty0", "tty1",
    ];
    let device = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|e| std::os::unix::fs::FileTypeExt::is_char_device(&e.file_type().unwrap()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !defaults.contains(&n.as_str()))
        .min()
        .expect("a host character device");
    let check = format!(
        "ls /dev/{device} >/dev/null 2>&1 && echo dev=yes || echo dev=no; grep -E '^(Seccomp|CapEff):' /proc/self/status; grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; exec sleep 1000"
    );
    node.write_manifest(
        "priv.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: priv\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: p\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", {check:?}]\n    securityContext: {{privileged: true, seccompProfile: {{type: RuntimeDefault}}}}\n  - name: n\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", {check:?}]\n"
        ),
    );
    node.wait_running("priv");
    let read = |c: &str| {
        node.wait_for("the checks", Duration::from_secs(10), || {
            Some(logs(&node, "priv-e2e", c)).filter(|l| l.contains("CapEff"))
        })
    };
    let (p, n) = (read("p"), read("n"));
    assert!(
        p.contains("dev=yes") && n.contains("dev=no"),
        "/dev/{device}: {p} / {n}"
    );
    assert!(
        p.contains("Seccomp:\t0"),
        "privileged runs without seccomp: {p}"
    );
    let caps = |l: &str| {
        u64::from_str_radix(
            l.lines()
                .find_map(|x| x.strip_prefix("CapEff:"))
                .unwrap()
                .trim(),
            16,
        )
        .unwrap()
    };
    assert!(
        caps(&p) & (1 << 21) != 0 && caps(&n) & (1 << 21) == 0,
        "CAP_SYS_ADMIN: {p} / {n}"
    );
    assert_eq!(p.lines().last().map(str::trim), Some("rw"), "{p}");
    assert_eq!(n.lines().last().map(str::trim), Some("ro"), "{n}");
}

fn userns_pod(name: &str, host_dir: &str) -> String {
    let script = "cat /proc/self/uid_map; echo id=$(id -u); touch /made-by-root && echo rootfs=ok; touch /data/x && echo emptydir=ok; echo more >> /host/owned && echo hostpath=written || echo hostpath=denied; exec sleep 1000";
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  hostUsers: false\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [\"sh\", \"-c\", {script:?}]\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n    - {{name: host, mountPath: /host}}\n  volumes:\n  - {{name: data, emptyDir: {{}}}}\n  - {{name: host, hostPath: {{path: {host_dir}}}}}\n"
    )
}

fn uid_map_of(node: &TestNode, pod: &serde_json::Value) -> (u64, u64, u64) {
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let pid = node.shim_state(uid)["containers"]["c"]["pid"]
        .as_i64()
        .unwrap();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let f: Vec<u64> = map.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(f.len(), 3, "one mapping line: {map}");
    (f[0], f[1], f[2])
}

#[test]
fn host_users_false_gets_its_own_id_range_and_no_power_over_host_files() {
    let Some(mut node) = TestNode::with_agent() else {
        return;
    };
    let host_dir = node.path("hostdir");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("owned"), "host\n").unwrap();
    let hd = host_dir.to_str().unwrap();
    node.write_manifest("u1.yaml", &userns_pod("u1", hd));
    node.write_manifest("u2.yaml", &userns_pod("u2", hd));
    let (p1, p2) = (node.wait_running("u1"), node.wait_running("u2"));
    let (inside, host1, size) = uid_map_of(&node, &p1);
    let (_, host2, _) = uid_map_of(&node, &p2);
    assert_eq!((inside, size), (0, 65536));
    assert!(host1 >= 65536 && host2 >= 65536, "never the host's own IDs");
    assert!(
        host1.abs_diff(host2) >= 65536,
        "ranges overlap: {host1} {host2}"
    );

    let out = node.wait_for("the checks", Duration::from_secs(10), || {
        Some(logs(&node, "u1-e2e", "c")).filter(|l| l.contains("hostpath="))
    });
    assert!(out.contains("id=0"), "root inside: {out}");
    assert!(
        out.contains("rootfs=ok"),
        "the idmapped rootfs is root's: {out}"
    );
    assert!(out.contains("emptydir=ok"), "{out}");
    assert!(out.contains("hostpath=denied"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("owned")).unwrap(),
        "host\n"
    );
    // What the pod's root wrote belongs to its host ID, not to the host's root.
    let uid1 = p1["metadata"]["uid"].as_str().unwrap();
    let made = node.path(&format!(
        "root/pods/{uid1}/containers/c/0/upper/made-by-root"
    ));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&made).unwrap().uid() as u64, host1);

    // The range survives an agent restart, and the pod is adopted, not restarted.
    let pid_before = node.shim_state(uid1)["containers"]["c"]["pid"].clone();
    node.kill_agent();
    node.start_agent();
    node.wait_running("u1");
    assert_eq!(node.shim_state(uid1)["containers"]["c"]["pid"], pid_before);
    let table = std::fs::read_to_string(node.path("root/userns.json")).unwrap();
    assert!(table.contains(uid1), "{table}");

    // Deleting the pod releases its range, which the next pod gets.
    node.remove_manifest("u1.yaml");
    node.wait_for("u1's range released", Duration::from_secs(15), || {
        let table = std::fs::read_to_string(node.path("root/userns.json")).unwrap();
        (node.pod("u1").is_none() && !table.contains(uid1)).then_some(())
    });
    node.write_manifest("u3.yaml", &userns_pod("u3", hd));
    let p3 = node.wait_running("u3");
    assert_eq!(uid_map_of(&node, &p3).1, host1, "the freed range is reused");
    // exec joins the pod's user namespace too.
    let out = node.podlet(&[
        "exec",
        "u3-e2e",
        "--",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("0\n"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!(" {host1} ")), "{}", out.stdout);

    // hostUsers: false cannot share the host's namespaces.
    node.write_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  hostUsers: false\n  hostNetwork: true\n  containers:\n  - {name: c, image: busybox:1.36}\n",
    );
    node.wait_for("the refusal", Duration::from_secs(10), || {
        node.agent_log()
            .contains("spec.hostNetwork: Forbidden: when `hostUsers` is false")
            .then_some(())
    });
    assert!(node.pod("bad").is_none());
}

#[test]
fn host_users_false_under_a_root_only_directory_says_why() {
    if !podlet_e2e::privileged() {
        return;
    }
    // The state dirs below a directory only root may traverse, as `mktemp -d` makes one: the
    // pod's mapped root (a host ID from 65536 up) cannot reach its own root filesystem.
    let mut node = TestNode::with_busybox();
    let top = node.path("");
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700)).unwrap();
    node.start_agent();
    node.write_manifest("u.yaml", &userns_pod("u", "/tmp"));
    let waiting = node.wait_for("the container's failure", Duration::from_secs(30), || {
        node.pod("u")
            .map(|p| p["status"]["containerStatuses"][0]["state"]["waiting"].clone())
            .filter(|w| w["message"].is_string())
    });
    let msg = waiting["message"].as_str().unwrap();
    let top = top.to_str().unwrap().trim_end_matches('/');
    assert!(
        msg.contains("Permission denied")
            && msg.contains(&format!("{top} (mode 0700, owner 0:0) cannot be searched")),
        "the cause and the path: {waiting}"
    );
    // The agent said so when it started, naming the directory.
    let log = node.agent_log();
    assert!(
        log.contains("not traversable") && log.contains(&format!("dir={top}")),
        "{log}"
    );
}
