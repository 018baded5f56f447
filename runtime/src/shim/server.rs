//! The shim's single-threaded event loop (mio): the control socket and its requests, SIGCHLD
//! through a signalfd, the containers' output and attach streams. What a request does lives
//! beside it: [`container`](super::container), [`stdio`](super::stdio),
//! [`attach`](super::attach) and [`pause`](super::pause).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::attach::Attached;
use super::container::delete_container;
use super::logs::CriLogWriter;
use super::stdio::{Input, LogPipe, Stdio};
use super::{pause, Reply, Request, SandboxConfig, ShimState};
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

pub(super) struct Shim {
    pub dir: PathBuf,
    pub cgroups: crate::cgroup::Layout,
    pub cfg: SandboxConfig,
    pub poll: Poll,
    listener: UnixListener,
    pub signals: SignalFd,
    pub state: ShimState,
    conns: HashMap<Token, Conn>,
    pub pipes: HashMap<Token, LogPipe>,
    pub inputs: HashMap<String, Input>,
    pub attached: HashMap<Token, Attached>,
    pub writers: HashMap<u64, (CriLogWriter, u8)>,
    waiters: Vec<Waiter>,
    next_token: usize,
    pub next_writer: u64,
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
    match sys::fork() {
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
        let pause_pid = pause::spawn(&cfg)?;

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

    pub(super) fn changed(&mut self) {
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

    pub(super) fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    pub(super) fn reply(&self, stream: UnixStream, reply: &Reply) {
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
            pause::stop(self.state.pause_pid);
            self.state.pause_exited = true;
        }
        pause::remove_cgroup(&self.cfg.pause_cgroup);
        self.state.seq += 1;
        self.persist();
        tracing::info!("sandbox stopped");
    }
}
