//! What an exec or attach session runs, whatever its transport: a command started through
//! `podlet oci exec` with pipes or a terminal, or the container's own stdio through its shim;
//! and the final Status the client reads on the error stream.

use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pod::NodeInfo;

/// The exec result on the error stream, as the kubelet writes it for v4 and later.
fn exit_status(code: i32, cmd: &[String]) -> Vec<u8> {
    let v = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    v.to_string().into_bytes()
}

fn failure(message: &str) -> Vec<u8> {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        .to_string()
        .into_bytes()
}
/// What a stream session runs: a command in the container, or an attachment to it.
pub(super) enum Job {
    Exec {
        id: String,
        cmd: Vec<String>,
    },
    Attach {
        run_dir: std::path::PathBuf,
        name: String,
    },
}

impl Job {
    pub(super) async fn run(
        &self,
        info: &NodeInfo,
        o: ExecOptions,
        io: ExecIo,
    ) -> Result<i32, String> {
        match self {
            Job::Exec { id, cmd } => run_exec(info, id, cmd, o, io).await,
            Job::Attach { run_dir, name } => run_attach(run_dir, name, o, io).await,
        }
    }

    /// The final Status on the error stream.
    pub(super) fn status(&self, result: Result<i32, String>) -> Vec<u8> {
        match (self, result) {
            (_, Err(e)) => failure(&e),
            (Job::Exec { cmd, .. }, Ok(code)) => exit_status(code, cmd),
            (Job::Attach { .. }, Ok(_)) => exit_status(0, &[]),
        }
    }
}
#[derive(Clone, Copy)]
pub(super) struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What an exec session exchanges with its client, whatever the transport.
pub(super) struct ExecIo {
    pub stdin: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    pub resize: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    /// (1 stdout | 2 stderr, bytes).
    pub out: tokio::sync::mpsc::UnboundedSender<(u8, Vec<u8>)>,
}
/// Runs the command through `podlet oci exec` with pipes (or a terminal) wired to `io`;
/// returns its exit code once its output is drained.
async fn run_exec(
    info: &NodeInfo,
    id: &str,
    cmd: &[String],
    o: ExecOptions,
    io: ExecIo,
) -> Result<i32, String> {
    let mut command = tokio::process::Command::new(&info.exe);
    command
        .arg("oci")
        .arg("exec")
        .arg("--root")
        .arg(info.cfg.container_state_root())
        .arg(id)
        .arg("--")
        .args(cmd)
        // Its stderr is the command's: no log lines of podlet's own there.
        .env("PODLET_LOG", "off")
        .kill_on_drop(false);
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    // With a TTY the command gets the terminal's slave side as its stdio.
    let pty = if o.tty {
        let p = nix::pty::openpty(None, None).map_err(|e| e.to_string())?;
        let slave = std::fs::File::from(p.slave);
        let dup = |f: &std::fs::File| f.try_clone().map_err(|e| e.to_string());
        command
            .stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        Some(std::fs::File::from(p.master))
    } else {
        command
            .stdin(pipe(o.stdin))
            .stdout(pipe(o.stdout))
            .stderr(pipe(o.stderr));
        None
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the command: {e}"))?;
    drop(command);
    let mut pumps = Vec::new();
    let mut outputs: Vec<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, u8)> = Vec::new();
    let mut stdin_sink: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    if let Some(master) = pty {
        let clone = || master.try_clone().map_err(|e| e.to_string());
        if o.stdout {
            outputs.push((Box::new(tokio::fs::File::from_std(clone()?)), 1));
        }
        stdin_sink = Some(Box::new(tokio::fs::File::from_std(clone()?)));
        if let Some(mut rz) = io.resize {
            pumps.push(tokio::spawn(async move {
                while let Some(b) = rz.recv().await {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                        let ws = libc::winsize {
                            ws_row: v["Height"].as_u64().unwrap_or(24) as u16,
                            ws_col: v["Width"].as_u64().unwrap_or(80) as u16,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = crate::sys::set_window_size(&master, &ws);
                    }
                }
            }));
        }
    } else {
        if let Some(out) = child.stdout.take() {
            outputs.push((Box::new(out), 1));
        }
        if let Some(err) = child.stderr.take() {
            outputs.push((Box::new(err), 2));
        }
        if let Some(w) = child.stdin.take() {
            stdin_sink = Some(Box::new(w));
        }
    }
    for (mut reader, ch) in outputs {
        let out = io.out.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send((ch, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    if let Some(mut rx) = io.stdin {
        let is_tty = o.tty;
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let Some(w) = stdin_sink.as_mut() else { break };
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            // A terminal's input ends with ^D; a pipe's by closing it.
            if let (true, Some(w)) = (is_tty, stdin_sink.as_mut()) {
                let _ = w.write_all(&[4]).await;
            }
        });
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    for p in pumps {
        // With a terminal, the reader ends when the last holder of the slave side exits.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p).await;
    }
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
/// Connects the session to the container's shim: its output as it is written (the log gets it
/// too), the client's input to the container's stdin, resizes to its terminal.
async fn run_attach(
    run_dir: &std::path::Path,
    name: &str,
    o: ExecOptions,
    io: ExecIo,
) -> Result<i32, String> {
    use podlet_runtime::shim::frame;
    let (dir, n) = (run_dir.to_path_buf(), name.to_string());
    let stream =
        tokio::task::spawn_blocking(move || podlet_runtime::shim::attach(&dir, &n, o.stdin))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
    let (mut r, mut w) = stream.into_split();
    let (frames, mut to_shim) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let mut pumps = vec![tokio::spawn(async move {
        while let Some(f) = to_shim.recv().await {
            if w.write_all(&f).await.is_err() {
                break;
            }
        }
    })];
    if let Some(mut rx) = io.stdin {
        let frames = frames.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let _ = frames.send(frame::encode(frame::STDIN, &b));
            }
            let _ = frames.send(frame::encode(frame::CLOSE_STDIN, &[]));
        }));
    }
    if let Some(mut rx) = io.resize {
        let frames = frames.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                    let mut size = Vec::with_capacity(4);
                    size.extend_from_slice(
                        &(v["Width"].as_u64().unwrap_or(80) as u16).to_be_bytes(),
                    );
                    size.extend_from_slice(
                        &(v["Height"].as_u64().unwrap_or(24) as u16).to_be_bytes(),
                    );
                    let _ = frames.send(frame::encode(frame::RESIZE, &size));
                }
            }
        }));
    }
    // Held until the end: the writer's half closes when every sender is gone, and the shim
    // takes a closed connection for a client that left.
    let _open = frames;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    'read: loop {
        let n = r.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((kind, data)) = frame::decode(&mut buf) {
            let ch = match kind {
                frame::STDOUT if o.stdout => 1,
                frame::STDERR if o.stderr => 2,
                frame::EXIT => break 'read,
                _ => continue,
            };
            if io.out.send((ch, data)).is_err() {
                break 'read;
            }
        }
    }
    for p in pumps {
        p.abort();
    }
    Ok(0)
}
