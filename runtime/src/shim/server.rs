//! The shim's single-threaded event loop (mio): the control socket, SIGCHLD through a signalfd,
//! the containers' stdout/stderr pipes (or terminals), and attach streams.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{CgroupConfig, CgroupManager};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logs::{CriLogWriter, Stream};
use super::{frame, ContainerRecord, Reply, Request, SandboxConfig, ShimState};
use crate::sys;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Waiter {
    stream: UnixStream,
    after: u64,
    deadline: Instant,
}

struct LogPipe {
    file: File,
    writer: u64,
    stream: Stream,
    container: String,
}

/// The input side of a running container with `stdin`.
struct Input {
    /// A pipe's write end, or the terminal's master side.
    writer: File,
    once: bool,
    /// The terminal's master side, for resizes.
    tty: Option<File>,
    /// Whether input is taken (the container has `stdin` and it was not closed).
    open: bool,
}

/// How a container's stdio is set up.
struct Stdio {
    stdin: bool,
    stdin_once: bool,
    tty: bool,
}

/// An attach session: frames in, frames out.
struct Attached {
    stream: UnixStream,
    container: String,
    writes_stdin: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

/// Output a slow attach client may have pending before it is dropped.
const MAX_PENDING: usize = 8 << 20;

struct Shim {
    dir: PathBuf,
    cgroups: crate::cgroup::Layout,
    cfg: SandboxConfig,
    poll: Poll,
    listener: UnixListener,
    signals: SignalFd,
    state: ShimState,
    conns: HashMap<Token, Conn>,
    pipes: HashMap<Token, LogPipe>,
    inputs: HashMap<String, Input>,
    attached: HashMap<Token, Attached>,
    writers: HashMap<u64, (CriLogWriter, u8)>,
    waiters: Vec<Waiter>,
    next_token: usize,
    next_writer: u64,
}

/// Entry point of `podlet shim`: daemonises, builds the sandbox, and reports readiness before the
/// foreground process exits (0 on success). Returns the exit code for the foreground process.
pub fn run(pod_dir: &Path) -> i32 {
    let cfg: SandboxConfig = match fs::read(pod_dir.join(super::SANDBOX_FILE))
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "shim: reading {}: {e}",
                pod_dir.join(super::SANDBOX_FILE).display()
            );
            return 1;
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shim: pipe: {e}");
            return 1;
        }
    };
    // SAFETY: `podlet shim` is a freshly exec'd, single-threaded process.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("shim: fork: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut msg = String::new();
            let _ = File::from(ready_r).read_to_string(&mut msg);
            if msg.starts_with("ok") {
                0
            } else {
                eprintln!("{}", msg.trim());
                1
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            let mut ready = File::from(ready_w);
            match Shim::start(pod_dir, cfg) {
                Ok(mut shim) => {
                    let _ = ready.write_all(b"ok\n");
                    drop(ready);
                    shim.serve();
                    std::process::exit(0)
                }
                Err(e) => {
                    let _ = ready.write_all(format!("shim: {e}").as_bytes());
                    std::process::exit(1)
                }
            }
        }
    }
}

fn redirect_stdio(log: &Path) -> io::Result<()> {
    let null = File::open("/dev/null")?;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    nix::unistd::dup2(out.as_raw_fd(), 1)?;
    nix::unistd::dup2(out.as_raw_fd(), 2)?;
    Ok(())
}

fn pause_main(cfg: &SandboxConfig) -> i32 {
    sys::set_process_name("pause");
    sys::close_fds_from(3);
    if cfg.new_uts && nix::unistd::sethostname(&cfg.hostname).is_err() {
        return 2;
    }
    if cfg.new_net && sys::loopback_up().is_err() {
        return 3;
    }
    // Pause moves itself into its cgroup ("0" is the writer). A cgroup v1 migration waits for
    // an RCU grace period (~10 ms); done here it overlaps with the shim getting ready and the
    // agent preparing the first container, instead of delaying both.
    // In a new user namespace it may not create cgroups: the shim places it instead.
    if cfg.userns.is_some() {
        return pause_wait();
    }
    let placed = cgroup_manager(&cfg.pause_cgroup)
        .and_then(|m| m.add_task(Pid::from_raw(0)).map_err(|e| e.to_string()));
    if let Err(e) = placed {
        eprintln!("pause: joining cgroup {}: {e}", cfg.pause_cgroup);
        return 4;
    }
    pause_wait()
}

fn pause_wait() -> i32 {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if s == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return 0,
            _ => {}
        }
    }
}

fn cgroup_manager(path: &str) -> Result<libcgroups::common::AnyCgroupManager, String> {
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(|e| format!("cgroup {path}: {e}"))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl Shim {
    fn start(dir: &Path, cfg: SandboxConfig) -> Result<Self, String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        redirect_stdio(&dir.join(super::LOG_FILE)).map_err(|e| format!("stdio: {e}"))?;
        sys::set_child_subreaper().map_err(|e| format!("subreaper: {e}"))?;
        if let Some(adj) = cfg.shim_oom_score_adj {
            let _ = sys::set_oom_score_adj(adj);
        }
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(|e| format!("sigmask: {e}"))?;
        let mut only_chld = SigSet::empty();
        only_chld.add(Signal::SIGCHLD);
        let signals =
            SignalFd::with_flags(&only_chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(|e| format!("signalfd: {e}"))?;

        let mut flags = 0;
        if cfg.new_net {
            flags |= libc::CLONE_NEWNET;
        }
        if cfg.new_ipc {
            flags |= libc::CLONE_NEWIPC;
        }
        if cfg.new_uts {
            flags |= libc::CLONE_NEWUTS;
        }
        if cfg.new_pid {
            flags |= libc::CLONE_NEWPID;
        }
        if cfg.userns.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
        let pause_cfg = cfg.clone();
        let pause_pid = sys::clone_into(flags, &mut || pause_main(&pause_cfg))
            .map_err(|e| format!("creating the pause process: {e}"))?;
        if let Some(range) = &cfg.userns {
            // Written from outside (only a privileged parent may map a whole range); before any
            // container joins, since the agent waits for the sandbox to be ready.
            for f in ["uid_map", "gid_map"] {
                let path = format!("/proc/{pause_pid}/{f}");
                if let Err(e) = fs::write(&path, range.map_line()) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pause_pid), Signal::SIGKILL);
                    return Err(format!("{path}: {e}"));
                }
            }
            let placed = cgroup_manager(&cfg.pause_cgroup).and_then(|m| {
                m.add_task(Pid::from_raw(pause_pid))
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = placed {
                let _ = nix::sys::signal::kill(Pid::from_raw(pause_pid), Signal::SIGKILL);
                return Err(format!("placing pause in {}: {e}", cfg.pause_cgroup));
            }
        }

        let sock = dir.join(super::SOCKET_FILE);
        let _ = fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(|e| e.to_string())?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(|e| e.to_string())?;
        let shim = Shim {
            dir: dir.to_path_buf(),
            cgroups: crate::cgroup::Layout::detect(Path::new("/proc/self/mountinfo")),
            cfg,
            poll,
            listener,
            signals,
            state: ShimState {
                seq: 1,
                shim_pid: std::process::id() as i32,
                pause_pid,
                pause_exited: false,
                containers: Default::default(),
            },
            conns: HashMap::new(),
            pipes: HashMap::new(),
            inputs: HashMap::new(),
            attached: HashMap::new(),
            writers: HashMap::new(),
            waiters: Vec::new(),
            next_token: 2,
            next_writer: 0,
        };
        shim.persist();
        tracing::info!(pause = pause_pid, "sandbox ready");
        Ok(shim)
    }

    fn persist(&self) {
        let p = self.dir.join(super::STATE_FILE);
        let tmp = self.dir.join("state.json.tmp");
        if let Ok(data) = serde_json::to_vec(&self.state) {
            if fs::write(&tmp, data).is_ok() {
                let _ = fs::rename(&tmp, &p);
            }
        }
    }

    fn changed(&mut self) {
        self.state.seq += 1;
        self.persist();
        let seq = self.state.seq;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|w| seq > w.after);
        self.waiters = waiting;
        for w in ready {
            self.reply(w.stream, &Reply::Ok(self.state.clone()));
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    fn reply(&self, stream: UnixStream, reply: &Reply) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let mut line = serde_json::to_vec(reply).unwrap_or_default();
        line.push(b'\n');
        let mut s = stream;
        let _ = s.write_all(&line);
    }

    fn serve(&mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let timeout = self
                .waiters
                .iter()
                .map(|w| w.deadline.saturating_duration_since(now))
                .min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("poll: {e}");
                    std::process::exit(1);
                }
            }
            let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for t in tokens {
                match t {
                    LISTENER => self.accept(),
                    SIGNALS => self.reap(),
                    t if self.pipes.contains_key(&t) => self.drain_pipe(t),
                    t if self.attached.contains_key(&t) => self.attach_io(t),
                    t => {
                        if self.read_conn(t) {
                            return;
                        }
                    }
                }
            }
            let now = Instant::now();
            let (expired, waiting): (Vec<_>, Vec<_>) =
                self.waiters.drain(..).partition(|w| w.deadline <= now);
            self.waiters = waiting;
            for w in expired {
                self.reply(w.stream, &Reply::Ok(self.state.clone()));
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(true);
            let t = self.token();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&stream.as_raw_fd()), t, Interest::READABLE)
                .is_ok()
            {
                self.conns.insert(
                    t,
                    Conn {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads a request; returns true when the shim must exit.
    fn read_conn(&mut self, t: Token) -> bool {
        let Some(conn) = self.conns.get_mut(&t) else {
            return false;
        };
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let Some(pos) = conn.buf.iter().position(|&b| b == b'\n') else {
            if closed || conn.buf.len() > 1 << 20 {
                self.drop_conn(t);
            }
            return false;
        };
        let conn = self.drop_conn(t).expect("connection present");
        let req: Request = match serde_json::from_slice(&conn.buf[..pos]) {
            Ok(r) => r,
            Err(e) => {
                self.reply(conn.stream, &Reply::Error(format!("bad request: {e}")));
                return false;
            }
        };
        self.handle(conn.stream, req)
    }

    fn drop_conn(&mut self, t: Token) -> Option<Conn> {
        let c = self.conns.remove(&t)?;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&c.stream.as_raw_fd()));
        Some(c)
    }

    fn handle(&mut self, stream: UnixStream, req: Request) -> bool {
        let result = match req {
            Request::State => Ok(()),
            Request::Wait { after, timeout_ms } => {
                if self.state.seq > after {
                    Ok(())
                } else {
                    self.waiters.push(Waiter {
                        stream,
                        after,
                        deadline: Instant::now() + Duration::from_millis(timeout_ms),
                    });
                    return false;
                }
            }
            Request::Start {
                name,
                id,
                bundle,
                log_path,
                attempt,
                stdin,
                stdin_once,
                tty,
            } => self.start_container(
                name,
                id,
                bundle,
                log_path,
                attempt,
                Stdio {
                    stdin,
                    stdin_once,
                    tty,
                },
            ),
            Request::Attach { name, stdin } => {
                match self.state.containers.get(&name) {
                    Some(r) if r.running() => {}
                    _ => {
                        let e = format!("container {name} is not running");
                        self.reply(stream, &Reply::Error(e));
                        return false;
                    }
                }
                self.attach(stream, name, stdin);
                return false;
            }
            Request::Kill { name, signal } => self.kill(&name, signal),
            Request::Remove { name } => {
                self.remove(&name);
                Ok(())
            }
            Request::Shutdown => {
                self.shutdown();
                self.reply(stream, &Reply::Ok(self.state.clone()));
                let _ = fs::remove_file(self.dir.join(super::SOCKET_FILE));
                return true;
            }
        };
        let reply = match result {
            Ok(()) => Reply::Ok(self.state.clone()),
            Err(e) => Reply::Error(e),
        };
        self.reply(stream, &reply);
        false
    }

    fn start_container(
        &mut self,
        name: String,
        id: String,
        bundle: PathBuf,
        log_path: PathBuf,
        attempt: u32,
        stdio: Stdio,
    ) -> Result<(), String> {
        if self.state.pause_exited {
            return Err("the pod sandbox is gone (pause exited)".into());
        }
        let mut previous = None;
        if let Some(old) = self.state.containers.get(&name) {
            if old.running() {
                return Err(format!("container {name} is already running"));
            }
            delete_container(&self.cfg.state_root, &old.id);
            let mut old = old.clone();
            old.previous = None;
            previous = Some(Box::new(old));
        }
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let writer =
            CriLogWriter::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let (stdin_r, stdin_w): (OwnedFd, Option<OwnedFd>) = if stdio.stdin && !stdio.tty {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = File::open("/dev/null").map_err(|e| e.to_string())?;
            (OwnedFd::from(null), None)
        };
        // A terminal is made inside the container by libcontainer, which hands its master side
        // over this socket.
        let console_path = self.dir.join("console.sock");
        let console = if stdio.tty {
            let _ = fs::remove_file(&console_path);
            Some(UnixListener::bind(&console_path).map_err(|e| format!("console socket: {e}"))?)
        } else {
            None
        };
        let built = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(&self.cfg.state_root)
            .map_err(|e| format!("container root: {e}"))?
            .with_console_socket(console.as_ref().map(|_| console_path.clone()))
            .with_stdin(stdin_r)
            .with_stdout(out_w)
            .with_stderr(err_w)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        let master = console.and_then(|l| {
            let _ = fs::remove_file(&console_path);
            let _ = l.set_nonblocking(true);
            let (conn, _) = l.accept().ok()?;
            sys::recv_fd(std::os::fd::AsFd::as_fd(&conn))
                .ok()
                .map(File::from)
        });
        let mut container = match built {
            Ok(c) => c,
            Err(e) => {
                delete_container(&self.cfg.state_root, &id);
                return Err(format!("creating container {name}: {e}"));
            }
        };
        // libcontainer writes the container's OOM score into its caller: take ours back, so
        // the shim is never killed in the container's place.
        if let Some(adj) = self.cfg.shim_oom_score_adj {
            let _ = sys::set_oom_score_adj(adj);
        }
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            return Err(format!("starting container {name}: {e}"));
        }
        let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
        let wid = self.next_writer;
        self.next_writer += 1;
        // With a terminal everything comes from its master side, as stdout.
        let outputs: Vec<(File, Stream)> = match &master {
            Some(m) if stdio.tty => {
                vec![(m.try_clone().map_err(|e| e.to_string())?, Stream::Stdout)]
            }
            _ => vec![
                (File::from(out_r), Stream::Stdout),
                (File::from(err_r), Stream::Stderr),
            ],
        };
        self.writers.insert(wid, (writer, outputs.len() as u8));
        let input = match (stdin_w, master) {
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
                self.inputs.insert(name.clone(), i);
            }
            None => {
                self.inputs.remove(&name);
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
                    container: name.clone(),
                },
            );
        }
        tracing::info!(container = %name, pid, "started");
        self.state.containers.insert(
            name,
            ContainerRecord {
                id,
                pid,
                attempt,
                log_path,
                started_at: Some(now()),
                finished_at: None,
                exit_code: None,
                signal: None,
                reason: None,
                cgroup: cgroup_of(&bundle),
                previous,
            },
        );
        self.changed();
        Ok(())
    }

    /// Copies what a container wrote into its log; at EOF the pipe is closed.
    fn drain_pipe(&mut self, t: Token) {
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

    fn record_exit(&mut self, pid: i32, status: WaitStatus) -> bool {
        let (code, signal) = match status {
            WaitStatus::Exited(_, c) => (c, None),
            WaitStatus::Signaled(_, s, _) => (128 + s as i32, Some(s as i32)),
            _ => return false,
        };
        if pid == self.state.pause_pid {
            self.state.pause_exited = true;
            tracing::warn!(code, "pause exited");
            return true;
        }
        for (name, rec) in self.state.containers.iter_mut() {
            if rec.pid == pid && rec.running() {
                rec.exit_code = Some(code);
                rec.signal = signal;
                rec.finished_at = Some(now());
                // As containerd: an OOM kill anywhere in the container's cgroup makes it OOMKilled.
                if crate::cgroup::oom_killed(&self.cgroups, &rec.cgroup) {
                    rec.reason = Some("OOMKilled".into());
                }
                tracing::info!(container = %name, pid, code, "exited");
                return true;
            }
        }
        false
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        let mut any = false;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => {
                    if let Some(pid) = s.pid() {
                        any |= self.record_exit(pid.as_raw(), s);
                    }
                }
            }
        }
        if any {
            self.end_attached();
            self.changed();
        }
    }

    // ----- attach -----

    fn attach(&mut self, stream: UnixStream, container: String, stdin: bool) {
        let mut line = serde_json::to_vec(&Reply::Ok(self.state.clone())).unwrap_or_default();
        line.push(b'\n');
        let t = self.token();
        let _ = stream.set_nonblocking(true);
        let registered = self.poll.registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            t,
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            return;
        }
        tracing::info!(container = %container, stdin, "attached");
        self.attached.insert(
            t,
            Attached {
                stream,
                container,
                writes_stdin: stdin,
                inbuf: Vec::new(),
                outbuf: line,
            },
        );
        self.flush(t);
    }

    /// Sends output to the sessions attached to `container`.
    fn forward(&mut self, container: &str, kind: u8, data: &[u8]) {
        let tokens: Vec<Token> = self
            .attached
            .iter()
            .filter(|(_, a)| a.container == container)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(a) = self.attached.get_mut(&t) {
                a.outbuf.extend_from_slice(&frame::encode(kind, data));
            }
            self.flush(t);
        }
    }

    /// Writes what the session can take now; a client too far behind is dropped.
    fn flush(&mut self, t: Token) {
        let Some(a) = self.attached.get_mut(&t) else {
            return;
        };
        while !a.outbuf.is_empty() {
            match a.stream.write(&a.outbuf) {
                Ok(0) => break,
                Ok(n) => {
                    a.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.detach(t);
                    return;
                }
            }
        }
        if a.outbuf.len() > MAX_PENDING {
            tracing::warn!(container = %a.container, "attach client too slow: dropped");
            self.detach(t);
        }
    }

    fn attach_io(&mut self, t: Token) {
        let mut chunk = [0u8; 32 * 1024];
        let mut gone = false;
        if let Some(a) = self.attached.get_mut(&t) {
            loop {
                match a.stream.read(&mut chunk) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => a.inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
        }
        while let Some((kind, data, container, writes)) = self.attached.get_mut(&t).and_then(|a| {
            frame::decode(&mut a.inbuf).map(|(k, d)| (k, d, a.container.clone(), a.writes_stdin))
        }) {
            match kind {
                frame::STDIN if writes => self.input(&container, &data),
                frame::CLOSE_STDIN if writes => self.close_stdin(&container),
                frame::RESIZE if data.len() == 4 => {
                    let cols = u16::from_be_bytes([data[0], data[1]]);
                    let rows = u16::from_be_bytes([data[2], data[3]]);
                    if let Some(tty) = self.inputs.get(&container).and_then(|i| i.tty.as_ref()) {
                        let _ = sys::set_window_size(std::os::fd::AsFd::as_fd(tty), cols, rows);
                    }
                }
                _ => {}
            }
        }
        if gone {
            self.detach(t);
        } else {
            self.flush(t);
        }
    }

    /// Writes to the container's stdin. Interactive input is small: what a full pipe cannot
    /// take is dropped rather than block the shim.
    fn input(&mut self, container: &str, mut data: &[u8]) {
        let Some(i) = self.inputs.get_mut(container).filter(|i| i.open) else {
            return;
        };
        while !data.is_empty() {
            match i.writer.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(container, "stdin: {} bytes dropped: {e}", data.len());
                    return;
                }
            }
        }
    }

    /// The writing session ended: a `stdinOnce` container's stdin closes (EOF for it).
    fn close_stdin(&mut self, container: &str) {
        if let Some(i) = self.inputs.get_mut(container) {
            if i.once && i.open {
                i.open = false;
                if i.tty.is_none() {
                    self.inputs.remove(container);
                }
            }
        }
    }

    fn detach(&mut self, t: Token) {
        if let Some(a) = self.attached.remove(&t) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&a.stream.as_raw_fd()));
            if a.writes_stdin {
                self.close_stdin(&a.container);
            }
        }
    }

    /// Ends the sessions of containers that exited, after the rest of their output.
    fn end_attached(&mut self) {
        let exited = |s: &ShimState, c: &str| !s.containers.get(c).is_some_and(|r| r.running());
        let names: Vec<String> = self
            .inputs
            .keys()
            .chain(self.attached.values().map(|a| &a.container))
            .filter(|c| exited(&self.state, c))
            .cloned()
            .collect();
        for name in &names {
            let pipes: Vec<Token> = self
                .pipes
                .iter()
                .filter(|(_, p)| &p.container == name)
                .map(|(t, _)| *t)
                .collect();
            for p in pipes {
                self.drain_pipe(p);
            }
            self.inputs.remove(name);
        }
        let ended: Vec<Token> = self
            .attached
            .iter()
            .filter(|(_, a)| names.contains(&a.container))
            .map(|(t, _)| *t)
            .collect();
        for t in ended {
            if let Some(mut a) = self.attached.remove(&t) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&a.stream.as_raw_fd()));
                a.outbuf.extend_from_slice(&frame::encode(frame::EXIT, &[]));
                let _ = a.stream.set_nonblocking(false);
                let _ = a.stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = a.stream.write_all(&a.outbuf);
            }
        }
    }

    fn kill(&mut self, name: &str, signal: i32) -> Result<(), String> {
        let rec = self
            .state
            .containers
            .get(name)
            .ok_or_else(|| format!("no container {name}"))?;
        if !rec.running() {
            return Ok(());
        }
        let sig = Signal::try_from(signal).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(Pid::from_raw(rec.pid), sig).map_err(|e| format!("kill {name}: {e}"))
    }

    /// Kills a running container and collects its exit synchronously.
    fn kill_and_wait(&mut self, name: &str) {
        let Some(rec) = self.state.containers.get(name) else {
            return;
        };
        if !rec.running() {
            return;
        }
        let pid = Pid::from_raw(rec.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        if let Ok(s) = waitpid(pid, None) {
            self.record_exit(pid.as_raw(), s);
        }
    }

    fn remove(&mut self, name: &str) {
        self.kill_and_wait(name);
        if let Some(rec) = self.state.containers.remove(name) {
            delete_container(&self.cfg.state_root, &rec.id);
            self.changed();
        }
    }

    fn shutdown(&mut self) {
        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        for n in &names {
            self.kill_and_wait(n);
        }
        for n in &names {
            if let Some(rec) = self.state.containers.get(n) {
                delete_container(&self.cfg.state_root, &rec.id);
            }
        }
        let tokens: Vec<Token> = self.pipes.keys().copied().collect();
        for t in tokens {
            self.drain_pipe(t);
        }
        if !self.state.pause_exited {
            let pid = Pid::from_raw(self.state.pause_pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            self.state.pause_exited = true;
        }
        if let Ok(m) = cgroup_manager(&self.cfg.pause_cgroup) {
            let _ = m.remove();
        }
        self.state.seq += 1;
        self.persist();
        tracing::info!("sandbox stopped");
    }
}

/// The cgroup a bundle's container lives in.
fn cgroup_of(bundle: &Path) -> String {
    fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| {
            v.pointer("/linux/cgroupsPath")
                .and_then(|p| p.as_str())
                .map(String::from)
        })
        .unwrap_or_default()
}

fn delete_container(state_root: &Path, id: &str) {
    let dir = state_root.join(id);
    if !dir.exists() {
        return;
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::warn!(container = id, "delete: {e}");
                let _ = fs::remove_dir_all(&dir);
            }
        }
        Err(_) => {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
