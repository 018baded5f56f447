//! A `podlet control-plane` process for end-to-end tests: its own data dir and loopback port,
//! real kubectl binaries pointed at it (with their own cache dir), and a raw HTTP client for
//! requests kubectl would never send.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{podlet_bin, Output};

/// A static token of group `system:masters`.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// A static token of a user with no role bindings.
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests";

pub struct ControlPlane {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
    /// The network namespace it serves in (a holder process's), with its address there;
    /// None: host loopback.
    netns: Option<(u32, String)>,
    /// The address it listens on when not the one it is reached at (e.g. `0.0.0.0`).
    listen: Option<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The real kubectl of minor version `minor` (27–33).
pub fn kubectl_bin(minor: u32) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"));
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// Polls `f` every 100 ms until it holds, failing the test after 15 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The stdout of a kubectl run that must have succeeded.
pub fn ok(out: &Output, what: &str) -> String {
    assert_eq!(out.code, 0, "{what}: {}{}", out.stdout, out.stderr);
    out.stdout.clone()
}

/// A JSON answer of the apiserver (an object, a list or a Status).
pub fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

impl ControlPlane {
    /// Starts one on the embedded store.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `podlet control-plane` flags (e.g. `--etcd-servers`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_at(None, extra)
    }

    /// Starts one serving on `ip:6443` inside the network namespace of process `pid` (kubectl
    /// and curl run there too).
    pub fn start_in_netns(pid: u32, ip: &str) -> Self {
        Self::start_at(Some((pid, ip.to_string())), &[])
    }

    /// Starts one inside the network namespace of process `pid` listening on `listen` (e.g.
    /// `0.0.0.0`) and reached at `ip:6443`, with extra flags.
    pub fn start_in_netns_listening(pid: u32, ip: &str, listen: &str, extra: &[&str]) -> Self {
        Self::start_full(Some((pid, ip.to_string())), Some(listen.to_string()), extra)
    }

    /// Restarts it with other extra flags.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// `curl` run where it serves (its network namespace), with `args`.
    pub fn curl(&self, args: &[&str]) -> std::process::Output {
        self.command("curl")
            .args(args)
            .output()
            .expect("running curl")
    }

    fn start_at(netns: Option<(u32, String)>, extra: &[&str]) -> Self {
        Self::start_full(netns, None, extra)
    }

    fn start_full(netns: Option<(u32, String)>, listen: Option<String>, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("podlet-cp-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cp = ControlPlane {
            child: None,
            dir,
            port: if netns.is_some() { 6443 } else { free_port() },
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
            listen,
        };
        cp.restart();
        cp
    }

    /// A command run where the control plane serves.
    fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            None => Command::new(prog),
            Some((pid, _)) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-n", "--"]).arg(prog);
                c
            }
        }
    }

    fn host(&self) -> &str {
        self.netns
            .as_ref()
            .map(|n| n.1.as_str())
            .unwrap_or("127.0.0.1")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host(), self.port)
    }

    /// The cluster CA the apiserver made at first start.
    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("pki/ca.crt")
    }

    /// Stops the process (SIGKILL: nothing is flushed on the way out).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts it on the same data dir and port, waiting until it serves.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let tokens = self.dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n{VIEWER_TOKEN},viewer,viewer-uid\n"),
        )
        .unwrap();
        let child = self
            .command(podlet_bin())
            .arg("control-plane")
            .arg("--token-auth-file")
            .arg(&tokens)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!(
                "{}:{}",
                self.listen.as_deref().unwrap_or(self.host()),
                self.port
            ))
            .arg("--admin-kubeconfig")
            .arg(self.kubeconfig())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting podlet control-plane");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = self.try_http("GET", "/healthz", "", b"") {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("control plane exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "control plane not serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn kubectl_command(&self, minor: u32, args: &[&str]) -> Command {
        let mut c = self.command(kubectl_bin(minor));
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("kube-cache-{minor}")))
            .args(args)
            .env("HOME", self.dir.path());
        c
    }

    /// Runs kubectl 1.`minor` with `args`.
    pub fn kubectl(&self, minor: u32, args: &[&str]) -> Output {
        self.kubectl_env(minor, args, &[], None)
    }

    /// Runs kubectl with extra environment and stdin.
    pub fn kubectl_env(
        &self,
        minor: u32,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Output {
        let mut c = self.kubectl_command(minor, args);
        c.envs(env.iter().copied());
        crate::run_with_stdin(c, stdin)
    }

    /// Starts a long-running kubectl (like `get -w`) whose stdout goes to `out`.
    pub fn kubectl_spawn(&self, minor: u32, args: &[&str], out: &Path) -> Child {
        let f = std::fs::File::create(out).unwrap();
        self.kubectl_command(minor, args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("running kubectl")
    }

    /// One HTTPS request through curl (verifying the cluster CA) as the holder of `token`
    /// (None: anonymous): (status code, body).
    pub fn try_http_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let mut c = self.command("curl");
        c.args(["-sS", "--max-time", "20", "-X", method, "--cacert"])
            .arg(self.ca())
            .args(["-o", "-", "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            c.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        if !content_type.is_empty() {
            c.arg("-H").arg(format!("Content-Type: {content_type}"));
        }
        if !body.is_empty() {
            c.args(["--data-binary", "@-"]);
        }
        c.arg(format!("{}{path}", self.url()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        let mut stdin = child.stdin.take().unwrap();
        let data = body.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse() {
            Ok(c) if c > 0 => Ok((c, body.to_string())),
            _ => Err(std::io::Error::other(format!(
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            ))),
        }
    }

    fn try_http(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        self.try_http_as(Some(ADMIN_TOKEN), method, path, content_type, body)
    }

    /// One HTTPS request as the cluster admin: (status code, body).
    pub fn http(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        self.try_http(method, path, content_type, body)
            .expect("HTTP request to the apiserver")
    }

    /// One HTTPS request as `token`'s holder (None: anonymous).
    pub fn http_as(&self, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
        self.try_http_as(token, method, path, "", b"")
            .expect("HTTP request to the apiserver")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}
