//! A container's stdio as the shim holds it: stdout/stderr pipes (or a terminal's master side)
//! drained into the CRI log and to attach sessions, and the stdin pipe (or terminal) that
//! attach sessions write to.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::frame;
use super::logs::{CriLogWriter, Stream};
use super::server::Shim;
use crate::sys;

/// How a container's stdio is set up.
pub(super) struct Stdio {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// One output stream of a container, copied into its log.
pub(super) struct LogPipe {
    file: File,
    writer: u64,
    stream: Stream,
    pub container: String,
}

/// The input side of a running container with `stdin`.
pub(super) struct Input {
    /// A pipe's write end, or the terminal's master side.
    pub writer: File,
    pub once: bool,
    /// The terminal's master side, for resizes.
    pub tty: Option<File>,
    /// Whether input is taken (the container has `stdin` and it was not closed).
    pub open: bool,
}

/// The container's ends of its stdio, handed to libcontainer.
pub(super) struct ContainerEnds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Where libcontainer sends a terminal's master side.
    pub console_socket: Option<PathBuf>,
}

/// The shim's ends, kept while the container runs.
pub(super) struct ShimEnds {
    stdout: OwnedFd,
    stderr: OwnedFd,
    stdin: Option<OwnedFd>,
    writer: CriLogWriter,
    console: Option<(UnixListener, PathBuf)>,
}

pub(super) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Makes the pipes (and the console socket, for a terminal) of a container about to be built
/// from the pod directory `dir`, and opens its log.
pub(super) fn open(
    dir: &Path,
    stdio: &Stdio,
    log_path: &Path,
) -> Result<(ContainerEnds, ShimEnds), String> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let writer =
        CriLogWriter::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let (stdin_r, stdin_w): (OwnedFd, Option<OwnedFd>) = if stdio.stdin && !stdio.tty {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").map_err(|e| e.to_string())?;
        (OwnedFd::from(null), None)
    };
    // A terminal is made inside the container by libcontainer, which hands its master side
    // over this socket.
    let console_path = dir.join("console.sock");
    let console = if stdio.tty {
        let _ = fs::remove_file(&console_path);
        Some(UnixListener::bind(&console_path).map_err(|e| format!("console socket: {e}"))?)
    } else {
        None
    };
    let theirs = ContainerEnds {
        stdin: stdin_r,
        stdout: out_w,
        stderr: err_w,
        console_socket: console.as_ref().map(|_| console_path.clone()),
    };
    let ours = ShimEnds {
        stdout: out_r,
        stderr: err_r,
        stdin: stdin_w,
        writer,
        console: console.map(|l| (l, console_path)),
    };
    Ok((theirs, ours))
}

impl ShimEnds {
    /// The terminal's master side, once libcontainer built the container (or failed to); the
    /// console socket goes either way.
    pub(super) fn take_terminal(&mut self) -> Option<File> {
        let (l, path) = self.console.take()?;
        let _ = fs::remove_file(&path);
        let _ = l.set_nonblocking(true);
        let (conn, _) = l.accept().ok()?;
        sys::recv_fd(std::os::fd::AsFd::as_fd(&conn))
            .ok()
            .map(File::from)
    }
}

impl Shim {
    /// Starts copying a started container's output into its log and takes its input.
    pub(super) fn connect_stdio(
        &mut self,
        name: &str,
        ours: ShimEnds,
        master: Option<File>,
        stdio: &Stdio,
    ) -> Result<(), String> {
        let wid = self.next_writer;
        self.next_writer += 1;
        // With a terminal everything comes from its master side, as stdout.
        let outputs: Vec<(File, Stream)> = match &master {
            Some(m) if stdio.tty => {
                vec![(m.try_clone().map_err(|e| e.to_string())?, Stream::Stdout)]
            }
            _ => vec![
                (File::from(ours.stdout), Stream::Stdout),
                (File::from(ours.stderr), Stream::Stderr),
            ],
        };
        self.writers.insert(wid, (ours.writer, outputs.len() as u8));
        let input = match (ours.stdin, master) {
            (Some(w), _) => Some(Input {
                writer: File::from(w),
                once: stdio.stdin_once,
                tty: None,
                open: true,
            }),
            (None, Some(m)) => Some(Input {
                writer: m.try_clone().map_err(|e| e.to_string())?,
                once: stdio.stdin_once,
                tty: Some(m),
                open: stdio.stdin,
            }),
            (None, None) => None,
        };
        match input {
            Some(i) => {
                let _ = set_nonblocking(i.writer.as_raw_fd());
                self.inputs.insert(name.to_string(), i);
            }
            None => {
                self.inputs.remove(name);
            }
        }
        for (file, stream) in outputs {
            let _ = set_nonblocking(file.as_raw_fd());
            let t = self.token();
            let _ = self.poll.registry().register(
                &mut SourceFd(&file.as_raw_fd()),
                t,
                Interest::READABLE,
            );
            self.pipes.insert(
                t,
                LogPipe {
                    file,
                    writer: wid,
                    stream,
                    container: name.to_string(),
                },
            );
        }
        Ok(())
    }

    /// Copies what a container wrote into its log; at EOF the pipe is closed.
    pub(super) fn drain_pipe(&mut self, t: Token) {
        let mut buf = [0u8; 32 * 1024];
        loop {
            let Some(pipe) = self.pipes.get_mut(&t) else {
                return;
            };
            match pipe.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some((w, _)) = self.writers.get_mut(&pipe.writer) {
                        let _ = w.write(pipe.stream, &buf[..n]);
                    }
                    let kind = match pipe.stream {
                        Stream::Stdout => frame::STDOUT,
                        Stream::Stderr => frame::STDERR,
                    };
                    let container = pipe.container.clone();
                    self.forward(&container, kind, &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close_pipe(t);
    }

    fn close_pipe(&mut self, t: Token) {
        let Some(pipe) = self.pipes.remove(&t) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&pipe.file.as_raw_fd()));
        if let Some((w, open)) = self.writers.get_mut(&pipe.writer) {
            let _ = w.close(pipe.stream);
            *open -= 1;
            if *open == 0 {
                self.writers.remove(&pipe.writer);
            }
        }
    }
}
