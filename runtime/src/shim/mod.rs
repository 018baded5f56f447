//! The per-pod shim: podlet re-executed as a small single-threaded process that holds the pod's
//! pause process, creates containers with libcontainer, owns their stdio (writing CRI logs),
//! reaps them and records exit codes on disk. It outlives the agent, which talks to it over a
//! unix socket, one JSON request and one JSON reply per connection.

mod logs;
mod server;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use logs::CriLogWriter;
pub use server::run;

pub const SANDBOX_FILE: &str = "sandbox.json";
pub const SOCKET_FILE: &str = "shim.sock";
pub const STATE_FILE: &str = "state.json";
pub const LOG_FILE: &str = "shim.log";

/// How the shim builds the pod sandbox, written by the agent before it starts the shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxConfig {
    pub hostname: String,
    /// New network namespace (false for hostNetwork).
    pub new_net: bool,
    /// New IPC namespace (false for hostIPC).
    pub new_ipc: bool,
    /// New UTS namespace (false for hostNetwork, as the kubelet does).
    pub new_uts: bool,
    /// Pause is PID 1 of a new PID namespace that the containers join (shareProcessNamespace).
    pub new_pid: bool,
    /// cgroup of the pause process, e.g. `/kubepods/besteffort/pod<uid>/pause`.
    pub pause_cgroup: String,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// Pause gets a new user namespace with this mapping (`hostUsers: false`); the pod's other
    /// namespaces are owned by it.
    #[serde(default)]
    pub userns: Option<crate::spec::IdRange>,
    /// OOM score adjustment of the shim itself.
    #[serde(default)]
    pub shim_oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Current state.
    State,
    /// Replies once `seq` moves past `after`, or at the timeout, with the state.
    Wait { after: u64, timeout_ms: u64 },
    /// Creates and starts a container from a bundle; stdout/stderr go to `log_path`.
    Start {
        name: String,
        id: String,
        bundle: PathBuf,
        log_path: PathBuf,
        attempt: u32,
    },
    /// Sends a signal to a container's init.
    Kill { name: String, signal: i32 },
    /// Deletes a container (killing it if still running) and forgets it.
    Remove { name: String },
    /// Deletes every container, stops pause and exits.
    Shutdown,
}

/// What the shim knows about one container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    pub pid: i32,
    pub attempt: u32,
    pub log_path: PathBuf,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it ended when the kernel says so (`OOMKilled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The container's cgroup (relative to each hierarchy).
    #[serde(default)]
    pub cgroup: String,
    /// The attempt this one replaced (its own `previous` is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<ContainerRecord>>,
}

impl ContainerRecord {
    pub fn running(&self) -> bool {
        self.started_at.is_some() && self.exit_code.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimState {
    /// Moves on every change.
    pub seq: u64,
    pub shim_pid: i32,
    pub pause_pid: i32,
    /// Set when the pause process died: the sandbox is gone.
    pub pause_exited: bool,
    pub containers: BTreeMap<String, ContainerRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Reply {
    Ok(ShimState),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("shim at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shim reply: {0}")]
    Protocol(String),
    #[error("{0}")]
    Failed(String),
}

/// Sends one request to the shim of the pod directory `pod_dir` and waits for its reply.
pub fn call(pod_dir: &Path, req: &Request, timeout: Duration) -> Result<ShimState, ShimError> {
    let path = pod_dir.join(SOCKET_FILE);
    let unreachable = |source| ShimError::Unreachable {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(&path).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ShimError::Protocol(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(unreachable)?;
    if reply.is_empty() {
        return Err(ShimError::Protocol(
            "connection closed without a reply".into(),
        ));
    }
    match serde_json::from_str::<Reply>(&reply).map_err(|e| ShimError::Protocol(e.to_string()))? {
        Reply::Ok(s) => Ok(s),
        Reply::Error(e) => Err(ShimError::Failed(e)),
    }
}

/// Reads the state the shim last wrote to disk (used when the shim is gone).
pub fn read_state(pod_dir: &Path) -> Option<ShimState> {
    let data = std::fs::read(pod_dir.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}
