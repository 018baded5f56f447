//! Test helpers shared by this crate's tests and the end-to-end tests: a real etcd (Debian's
//! `etcd-server` binary, unpacked by `hack/deps.sh`) on loopback ports of its own, with its own
//! data dir, stopped and removed when dropped; and the apiserver in-process (`cluster`, built
//! with this crate's tests, and for other crates' tests with the `test-cluster` feature).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The etcd binary: `PODLET_ETCD`, the one `hack/deps.sh` unpacked, or Debian's installed one.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PODLET_ETCD") {
        return Some(p.into());
    }
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        ws.join("target/tools/usr/bin/etcd"),
        PathBuf::from("/usr/bin/etcd"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

impl EtcdServer {
    /// Starts etcd and waits until it serves. A missing binary fails the test (run
    /// `hack/deps.sh`), unless `PODLET_SKIP_PRIVILEGED=1` was set by hand.
    pub fn start() -> Option<Self> {
        let Some(bin) = etcd_binary() else {
            if std::env::var("PODLET_SKIP_PRIVILEGED").as_deref() == Ok("1") {
                return None;
            }
            panic!("etcd not found: run hack/deps.sh (it unpacks Debian's etcd-server)");
        };
        // On tmpfs where there is one: every etcd write is an fsync, and on a disk busy with
        // other work (a build beside the tests) the control plane's ~150 bootstrap writes
        // alone took longer than its start-up deadline. Durability is not what tests measure.
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("podlet-etcd-");
            b
        };
        let dir = builder
            .tempdir_in("/dev/shm")
            .or_else(|_| builder.tempdir())
            .unwrap();
        let (port, peer) = (free_port(), free_port());
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--name",
                "test",
                "--listen-client-urls",
                &format!("http://127.0.0.1:{port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("test=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd");
        let server = EtcdServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.contains("\"health\":\"true\"") {
                    return Some(server);
                }
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(any(test, feature = "test-cluster"))]
pub mod cluster;
