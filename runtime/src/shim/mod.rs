//! The per-pod shim: podlet re-executed as a small single-threaded process that holds the pod's
//! pause process, creates containers with libcontainer, owns their stdio (writing CRI logs),
//! reaps them and records exit codes on disk. It outlives the agent, which talks to it over a
//! unix socket, one JSON request and one JSON reply per connection — except `Attach`, whose
//! connection goes on carrying the container's stdio in [`frame`]s.

mod attach;
mod container;
mod logs;
mod pause;
mod server;
mod stdio;

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
        /// The container reads a stdin that attach sessions write to.
        #[serde(default)]
        stdin: bool,
        /// Its stdin closes when the first attach session that wrote to it ends.
        #[serde(default)]
        stdin_once: bool,
        /// Its stdio is a terminal (the bundle has `process.terminal`).
        #[serde(default)]
        tty: bool,
    },
    /// Attaches to a running container: after the reply, the connection carries frames both
    /// ways until the container exits or the client goes.
    Attach { name: String, stdin: bool },
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
    // The cause is part of the message and not also a source(), so chains print it once.
    #[error("shim at {path}: {error}")]
    Unreachable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("shim reply: {0}")]
    Protocol(String),
    #[error("{0}")]
    Failed(String),
}

/// Sends one request to the shim of the pod directory `pod_dir` and waits for its reply.
pub fn call(pod_dir: &Path, req: &Request, timeout: Duration) -> Result<ShimState, ShimError> {
    let path = pod_dir.join(SOCKET_FILE);
    let unreachable = |error| ShimError::Unreachable {
        path: path.clone(),
        error,
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

/// The attach stream's frames: `[kind u8][length u32 BE][data]`.
pub mod frame {
    /// Client → shim: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// Shim → client: the container's output.
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// Client → shim: the client's input ended (closes a `stdinOnce` container's stdin).
    pub const CLOSE_STDIN: u8 = 3;
    /// Client → shim: terminal size, width and height as u16 BE.
    pub const RESIZE: u8 = 4;
    /// Shim → client: the container exited; nothing follows.
    pub const EXIT: u8 = 5;

    pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(data.len() + 5);
        f.push(kind);
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    /// Splits the first whole frame off `buf`.
    pub fn decode(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
        let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
        if buf.len() < 5 + len {
            return None;
        }
        let data = buf[5..5 + len].to_vec();
        let kind = buf[0];
        buf.drain(..5 + len);
        Some((kind, data))
    }
}

/// Opens an attach stream to container `name` of the pod directory's shim: after this returns,
/// the stream carries [`frame`]s.
pub fn attach(pod_dir: &Path, name: &str, stdin: bool) -> Result<UnixStream, ShimError> {
    use std::io::Read;
    let path = pod_dir.join(SOCKET_FILE);
    let unreachable = |error| ShimError::Unreachable {
        path: path.clone(),
        error,
    };
    let mut s = UnixStream::connect(&path).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    let req = Request::Attach {
        name: name.to_string(),
        stdin,
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| ShimError::Protocol(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(unreachable)?;
    // Byte by byte: what follows the reply's line are frames, not to be buffered away here.
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).map_err(unreachable)? {
            0 => {
                return Err(ShimError::Protocol(
                    "connection closed without a reply".into(),
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => reply.push(b[0]),
        }
    }
    s.set_read_timeout(None).map_err(unreachable)?;
    match serde_json::from_slice::<Reply>(&reply).map_err(|e| ShimError::Protocol(e.to_string()))? {
        Reply::Ok(_) => Ok(s),
        Reply::Error(e) => Err(ShimError::Failed(e)),
    }
}

/// Reads the state the shim last wrote to disk (used when the shim is gone).
pub fn read_state(pod_dir: &Path) -> Option<ShimState> {
    let data = std::fs::read(pod_dir.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

#[cfg(test)]
mod frame_tests {
    use super::frame;

    #[test]
    fn frames_split_at_their_lengths() {
        let mut buf = frame::encode(frame::STDOUT, b"hello");
        buf.extend_from_slice(&frame::encode(frame::EXIT, &[]));
        let partial = frame::encode(frame::STDIN, b"later");
        buf.extend_from_slice(&partial[..4]);
        assert_eq!(
            frame::decode(&mut buf),
            Some((frame::STDOUT, b"hello".to_vec()))
        );
        assert_eq!(frame::decode(&mut buf), Some((frame::EXIT, Vec::new())));
        assert_eq!(frame::decode(&mut buf), None);
        buf.extend_from_slice(&partial[4..]);
        assert_eq!(
            frame::decode(&mut buf),
            Some((frame::STDIN, b"later".to_vec()))
        );
        assert!(buf.is_empty());
    }
}
