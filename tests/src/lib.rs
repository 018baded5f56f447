//! Harness for podlet's end-to-end tests. A [`TestNode`] runs the real `podlet` binary as a node
//! inside network and mount namespaces held by a `unshare`d holder process, with its own
//! temporary state dirs and cgroup root, and removes all of them when dropped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Privileged tests must run as root; they fail (never silently skip) unless
/// `PODLET_SKIP_PRIVILEGED=1` is set by hand. Returns false when the test should be skipped.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("PODLET_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root (PODLET_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!(
        "this test needs root; run it as root or set PODLET_SKIP_PRIVILEGED=1 to skip it by hand"
    );
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The podlet binary under test: `PODLET_BIN`, or the one cargo built for this profile.
pub fn podlet_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PODLET_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target.join(profile).join("podlet");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p podlet)",
        p.display()
    );
    p
}

/// The busybox test image (an OCI archive built from Debian's busybox-static), built once.
pub fn busybox_archive() -> PathBuf {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            let dir = workspace().join("target/e2e-images");
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join(format!("busybox-{}.tar", std::process::id()));
            let st = Command::new("bash")
                .arg(workspace().join("hack/busybox-image.sh"))
                .arg(&out)
                .stdout(Stdio::null())
                .status()
                .expect("running hack/busybox-image.sh");
            assert!(
                st.success(),
                "building the busybox image failed (apt-get install busybox-static)"
            );
            // The build is reproducible: every test binary renames the same bytes into place,
            // and no per-process copy is left behind.
            let fixed = dir.join("busybox.tar");
            std::fs::rename(&out, &fixed).unwrap();
            fixed
        })
        .clone()
}

/// The pod network of every test node (each node has a network namespace of its own).
pub const POD_CIDR: &str = "10.244.0.0/24";

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `c` to the end, feeding it `stdin` (or /dev/null), and collects its output.
pub fn run_with_stdin(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running a command");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub cgroup_root: String,
    pub node_name: String,
    holder: Child,
    agent: Option<Child>,
    /// Extra `podlet run` flags for this node.
    pub agent_args: Vec<String>,
    /// Whether the agent talks to a control plane: the all-in-one one (in-process, on
    /// 127.0.0.1:6443 of the node's namespace) unless `agent_args` name a `--server`.
    /// Otherwise it runs standalone (static pods only).
    pub cluster: bool,
    /// `--pod-cidr` (POD_CIDR unless a test changes it; None: the Node's podCIDR).
    pub pod_cidr: Option<String>,
}

impl TestNode {
    /// A node with busybox imported; the agent is not started yet.
    pub fn with_busybox() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("podlet-e2e-")
            .tempdir_in("/tmp")
            .unwrap();
        for d in ["root", "run", "logs", "manifests"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let holder = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--propagation",
                "private",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        // Wait until the holder is inside its namespaces.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{}/ns/net", holder.id()))
            .ok()
            .as_ref()
            == Some(&own)
        {
            assert!(
                Instant::now() < deadline,
                "holder did not enter its namespaces"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A node's network namespace starts with lo down; nodes have it up.
        let lo = Command::new("nsenter")
            .args([
                "-t",
                &holder.id().to_string(),
                "-n",
                "busybox",
                "ip",
                "link",
                "set",
                "lo",
                "up",
            ])
            .status()
            .expect("nsenter");
        assert!(lo.success(), "bringing lo up in the node's namespace");
        let cgroup_root = format!(
            "podlet-e2e-{}",
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("podlet-e2e-")
        );
        let node = TestNode {
            dir,
            cgroup_root,
            node_name: "e2e".into(),
            holder,
            agent: None,
            agent_args: Vec::new(),
            cluster: false,
            pod_cidr: Some(POD_CIDR.into()),
        };
        // The node's configuration file: empty (defaults) unless a test writes one.
        std::fs::write(node.path("config.yaml"), "").unwrap();
        let out = node.podlet(&["image", "import", busybox_archive().to_str().unwrap()]);
        assert_eq!(out.code, 0, "import failed: {}", out.stderr);
        node
    }

    /// Replaces the node's view of `/sys/fs/cgroup` with a cgroup2 mount (the unified hierarchy
    /// the host already has), so the node runs on the cgroup v2 layout. Returns the host path of
    /// that hierarchy, where the node's tree can be read.
    pub fn use_cgroup2(&self) -> PathBuf {
        let pid = self.holder.id().to_string();
        let st = Command::new("nsenter")
            .args(["-t", &pid, "-m", "--", "sh", "-ec"])
            .arg("umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup")
            .status()
            .expect("nsenter");
        assert!(
            st.success(),
            "mounting cgroup2 in the node's mount namespace"
        );
        cgroup_hierarchies()
            .into_iter()
            .find(|h| h.join("cgroup.subtree_control").exists())
            .expect("the host's cgroup2 hierarchy")
    }

    /// A node with its agent running, or None where privileged tests are skipped by hand.
    pub fn with_agent() -> Option<Self> {
        if !privileged() {
            return None;
        }
        let mut node = Self::with_busybox();
        node.start_agent();
        Some(node)
    }

    /// An all-in-one cluster node (control plane in-process) with an address of its own,
    /// 10.201.0.2 on eth0, as a real machine has one (the apiserver reaches the node API there).
    pub fn all_in_one() -> Option<TestNode> {
        Self::all_in_one_with_config("")
    }

    /// `all_in_one` with this node configuration file (YAML).
    pub fn all_in_one_with_config(config: &str) -> Option<TestNode> {
        if !privileged() {
            return None;
        }
        let mut node = TestNode::with_busybox();
        std::fs::write(node.path("config.yaml"), config).unwrap();
        // A veth pair with both ends in the node: this kernel has no dummy links.
        let pid = node.holder_pid();
        sh_ip(
            pid,
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0-peer",
            ],
        );
        sh_ip(pid, &["addr", "add", "10.201.0.2/24", "dev", "eth0"]);
        sh_ip(pid, &["link", "set", "eth0-peer", "up"]);
        sh_ip(pid, &["link", "set", "eth0", "up"]);
        node.cluster = true;
        node.start_agent();
        Some(node)
    }

    /// `kubectl get ARGS -o json` (1.33) on a cluster node.
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(33, &a);
        (out.code == 0).then(|| serde_json::from_str(&out.stdout).ok())?
    }

    /// Waits (60 s at most) until the apiserver's pod `name` satisfies `ok`.
    pub fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(what, Duration::from_secs(60), || {
            std::thread::sleep(Duration::from_millis(100));
            self.get_json(&["pod", name]).filter(&ok)
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    fn base_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.path("config.yaml").display().to_string(),
            "--root-dir".into(),
            self.path("root").display().to_string(),
            "--run-dir".into(),
            self.path("run").display().to_string(),
            "--log-dir".into(),
            self.path("logs").display().to_string(),
        ]
    }

    /// A command run inside the node's namespaces.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-n", "-m", "--"]);
        c.arg(podlet_bin()).args(self.base_args()).args(args);
        c
    }

    /// Runs a podlet CLI command inside the node's namespaces.
    pub fn podlet(&self, args: &[&str]) -> Output {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("running podlet");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        let mut cmd = self.command(&[
            "run",
            "--manifest-dir",
            self.path("manifests").to_str().unwrap(),
            "--node-name",
            &self.node_name,
            "--cgroup-root",
            &self.cgroup_root,
            "--port",
            "10250",
            "--cni-conf-dir",
            self.path("cni/net.d").to_str().unwrap(),
            "--cni-bin-dir",
            self.path("cni/bin").to_str().unwrap(),
            "--cni-cache-dir",
            self.path("cni/cache").to_str().unwrap(),
        ]);
        if let Some(c) = &self.pod_cidr {
            cmd.arg("--pod-cidr").arg(c);
        }
        // Eviction thresholds depend on the machine's free memory and disk: off unless a test
        // sets them.
        if !self
            .agent_args
            .iter()
            .any(|a| a.starts_with("--eviction-hard"))
        {
            cmd.arg("--eviction-hard=");
        }
        // Never the machine's resolver: unless a test gives its own, the node's resolv.conf
        // names its own loopback (where nothing answers), for pods with the node's DNS and
        // for the cluster DNS server's upstream.
        if !self
            .agent_args
            .iter()
            .any(|a| a.starts_with("--resolv-conf"))
        {
            let f = self.path("default-resolv.conf");
            std::fs::write(&f, "nameserver 127.0.0.1\n").unwrap();
            cmd.arg("--resolv-conf").arg(f);
        }
        if self.cluster {
            if !self.agent_args.iter().any(|a| a == "--server") {
                cmd.arg("--admin-kubeconfig").arg(self.admin_kubeconfig());
            }
        } else {
            cmd.arg("--standalone");
        }
        cmd.args(&self.agent_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("PODLET_LOG", "info")
            .spawn()
            .expect("starting the agent");
        self.agent = Some(child);
        self.wait_for("the node API", Duration::from_secs(30), || {
            self.get("/healthz").ok()
        });
    }

    /// The all-in-one control plane's admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("admin.kubeconfig")
    }

    /// Runs kubectl 1.`minor` inside the node's network namespace against its all-in-one
    /// control plane.
    pub fn kubectl(&self, minor: u32, args: &[&str]) -> Output {
        self.kubectl_stdin(minor, args, None)
    }

    pub fn kubectl_stdin(&self, minor: u32, args: &[&str], stdin: Option<&str>) -> Output {
        run_with_stdin(self.kubectl_command(minor, args), stdin)
    }

    pub fn kubectl_command(&self, minor: u32, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-n", "--"])
            .arg(apiserver::kubectl_bin(minor))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .arg("--cache-dir")
            .arg(self.path(&format!("kube-cache-{minor}")))
            .args(args)
            .env("HOME", self.dir.path());
        c
    }

    /// `kill -9` of the agent (pods keep running).
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // nsenter execs podlet, so the child's pid is the agent's.
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// GET from the node API's unix socket.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let mut s = UnixStream::connect(self.path("run/podlet.sock")).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
        let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header")?;
        if !head.contains(" 200 ") {
            return Err(head.to_string());
        }
        Ok(body.to_string())
    }

    pub fn pods(&self) -> Vec<Value> {
        let body = self.get("/pods").expect("GET /pods");
        let v: Value = serde_json::from_str(&body).expect("PodList JSON");
        assert_eq!(v["kind"], "PodList");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// The pod named `<name>-<node>` as the node API reports it.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-{}", self.node_name);
        self.pods()
            .into_iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
    }

    pub fn write_manifest(&self, file: &str, content: &str) {
        let tmp = self.path(&format!("manifests/.{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, self.path(&format!("manifests/{file}"))).unwrap();
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.path(&format!("manifests/{file}"))).unwrap();
    }

    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- agent log ---\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every container of the pod runs; returns the pod.
    pub fn wait_running(&self, name: &str) -> Value {
        self.wait_for(
            &format!("pod {name} running"),
            Duration::from_secs(20),
            || {
                let p = self.pod(name)?;
                let cs = p["status"]["containerStatuses"].as_array()?.clone();
                (p["status"]["phase"] == "Running"
                    && cs.iter().all(|c| !c["state"]["running"].is_null()))
                .then_some(p)
            },
        )
    }

    /// The shim's record of the pod (pids included).
    pub fn shim_state(&self, uid: &str) -> Value {
        let data =
            std::fs::read(self.path(&format!("run/pods/{uid}/state.json"))).expect("shim state");
        serde_json::from_slice(&data).unwrap()
    }

    /// The shim's record, or None while the sandbox is being (re)created.
    pub fn try_shim_state(&self, uid: &str) -> Option<Value> {
        let data = std::fs::read(self.path(&format!("run/pods/{uid}/state.json"))).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Mount points inside the node's mount namespace below `dir`.
    pub fn mounts_below(&self, dir: &Path) -> Vec<String> {
        let text =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.holder.id())).unwrap();
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(dir))
            .map(str::to_string)
            .collect()
    }

    /// Cgroup directories (in any hierarchy) of this node's cgroup root whose name contains `needle`.
    pub fn cgroups_matching(&self, needle: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in cgroup_hierarchies() {
            let root = h.join(&self.cgroup_root);
            walk_dirs(&root, &mut |p| {
                if p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(needle))
                {
                    out.push(p.to_path_buf());
                }
            });
        }
        out
    }

    /// Reads a cgroup file of this node (`rel` below its cgroup root) for `controller`.
    pub fn cgroup_file(&self, controller: &str, rel: &str, file: &str) -> Option<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v2 = None;
        for l in text.lines() {
            let Some((left, right)) = l.split_once(" - ") else {
                continue;
            };
            let mut r = right.split(' ');
            let fs = r.next().unwrap_or_default();
            let opts = r.nth(1).unwrap_or_default();
            let mp = left.split(' ').nth(4).unwrap_or_default();
            if fs == "cgroup" && opts.split(',').any(|o| o == controller) {
                return std::fs::read_to_string(
                    Path::new(mp).join(&self.cgroup_root).join(rel).join(file),
                )
                .ok();
            }
            if fs == "cgroup2" {
                v2 = Some(mp.to_string());
            }
        }
        std::fs::read_to_string(Path::new(&v2?).join(&self.cgroup_root).join(rel).join(file)).ok()
    }

    /// Processes whose command line mentions this node's directory (shims) or that are the
    /// given pids.
    pub fn processes_of_node(&self) -> Vec<u32> {
        let needle = self.dir.path().display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == self.holder.id() || Some(pid) == self.agent.as_ref().map(|a| a.id()) {
                continue;
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                out.push(pid);
            }
        }
        out
    }
}

pub fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split(' ').next()?;
            if fs == "cgroup" || fs == "cgroup2" {
                left.split(' ').nth(4).map(PathBuf::from)
            } else {
                None
            }
        })
        .collect()
}

fn walk_dirs(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            f(&e.path());
            walk_dirs(&e.path(), f);
        }
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Stop pods the way a user would, so the agent cleans up after them.
        if self.agent.is_some() {
            if self.cluster && self.admin_kubeconfig().exists() {
                let _ = self
                    .kubectl_command(33, &["delete", "pods", "--all", "-A", "--wait=false"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            if let Ok(rd) = std::fs::read_dir(self.path("manifests")) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                let empty = self
                    .get("/pods")
                    .ok()
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .is_some_and(|v| v["items"].as_array().is_some_and(|a| a.is_empty()));
                if empty
                    && std::fs::read_dir(self.path("run/pods"))
                        .map(|mut d| d.next().is_none())
                        .unwrap_or(true)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_agent();
        // Safety net for a failed test: whatever is left of this node goes.
        for pid in self.processes_of_node() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for h in cgroup_hierarchies() {
            let root = h.join(&self.cgroup_root);
            let mut pids = Vec::new();
            walk_dirs(&root, &mut |p| {
                if let Ok(s) = std::fs::read_to_string(p.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.parse::<i32>().ok()));
                }
            });
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        std::thread::sleep(Duration::from_millis(50));
        for h in cgroup_hierarchies() {
            rmdir_tree(&h.join(&self.cgroup_root));
        }
        // Layers may hold read-only directories.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(self.dir.path())
            .status();
    }
}
pub mod apiserver;
pub mod cluster;
pub mod cni;
pub mod kube;

/// `ip ARGS` in the network namespace of process `pid`.
pub fn sh_ip(pid: u32, args: &[&str]) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "--", "ip"])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?} in {pid}");
}
