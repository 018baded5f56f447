//! Harness for CNI plugin tests: a "host" network namespace and container namespaces, all held
//! by `unshare`d processes the test owns (killing them removes every link and rule inside).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where cargo put podlet's plugin binaries.
pub fn our_plugins() -> PathBuf {
    let bin = crate::podlet_bin();
    let dir = bin.parent().unwrap().to_path_buf();
    for p in ["bridge", "host-local", "loopback", "portmap"] {
        assert!(
            dir.join(p).exists(),
            "{}/{p} is missing: build it first (cargo build -p podlet-cni)",
            dir.display()
        );
    }
    dir
}

/// The reference plugins (Debian's containernetworking-plugins), for side-by-side tests.
pub fn reference_plugins() -> PathBuf {
    let d = PathBuf::from("/usr/lib/cni");
    assert!(
        d.join("bridge").exists(),
        "install containernetworking-plugins (hack/deps.sh does)"
    );
    d
}

fn holder(args: &[&str]) -> Child {
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn holder");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{}/ns/net", child.id()))
        .ok()
        .as_ref()
        == Some(&own)
        || std::fs::read_link(format!("/proc/{}/exe", child.id()))
            .map(|p| !p.ends_with("sleep"))
            .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "namespace holder did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

pub struct Reply {
    pub code: i32,
    pub json: Value,
    pub stdout: String,
}

pub struct CniHost {
    host: Child,
    containers: Vec<Child>,
    pub dir: tempfile::TempDir,
}

impl Default for CniHost {
    fn default() -> Self {
        Self::new()
    }
}

impl CniHost {
    pub fn new() -> Self {
        let host = holder(&["unshare", "--net", "sleep", "infinity"]);
        let dir = tempfile::Builder::new()
            .prefix("podlet-cni-")
            .tempdir_in("/tmp")
            .unwrap();
        let h = Self {
            host,
            containers: Vec::new(),
            dir,
        };
        assert!(h.sh("busybox ip link set lo up").success());
        h
    }

    pub fn host_pid(&self) -> u32 {
        self.host.id()
    }

    /// A new container network namespace; returns its path.
    pub fn container(&mut self) -> String {
        let pid = self.host.id().to_string();
        let c = holder(&[
            "nsenter", "-t", &pid, "-n", "unshare", "--net", "sleep", "infinity",
        ]);
        let p = format!("/proc/{}/ns/net", c.id());
        self.containers.push(c);
        p
    }

    /// Runs a shell command in the host namespace.
    pub fn sh(&self, cmd: &str) -> std::process::ExitStatus {
        Command::new("nsenter")
            .args(["-t", &self.host.id().to_string(), "-n", "sh", "-c", cmd])
            .status()
            .unwrap()
    }

    pub fn sh_out(&self, cmd: &str) -> String {
        let o = Command::new("nsenter")
            .args(["-t", &self.host.id().to_string(), "-n", "sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a shell command inside a container namespace (by its path).
    pub fn in_container(&self, netns: &str, cmd: &str) -> String {
        let o = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a plugin in the host namespace with a clean CNI environment.
    #[allow(clippy::too_many_arguments)]
    pub fn plugin(
        &self,
        bin: &Path,
        command: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
        path: &Path,
        conf: &Value,
    ) -> Reply {
        self.plugin_raw(
            bin,
            command,
            cid,
            netns,
            ifname,
            path,
            conf.to_string().as_bytes(),
        )
    }

    /// As [`CniHost::plugin`], with the configuration as raw bytes (malformed ones too).
    #[allow(clippy::too_many_arguments)]
    pub fn plugin_raw(
        &self,
        bin: &Path,
        command: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
        path: &Path,
        stdin: &[u8],
    ) -> Reply {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.host.id().to_string(), "-n", "--"])
            .arg(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Reply {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Files host-local keeps for `net` (allocations only).
    pub fn allocations(&self, net: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir().join(net))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn links(&self) -> String {
        self.sh_out("busybox ip -o link")
    }

    pub fn nft(&self) -> String {
        self.sh_out("nft list ruleset")
    }
}

impl Drop for CniHost {
    fn drop(&mut self) {
        for c in &mut self.containers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.host.kill();
        let _ = self.host.wait();
    }
}
