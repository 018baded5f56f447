//! Attach sessions: a client connection that, after its reply, carries the container's output
//! to the client and the client's stdin, stdin close and terminal resizes to the container, in
//! [`frame`]s.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::server::Shim;
use super::{frame, Reply, ShimState};
use crate::sys;

/// An attach session: frames in, frames out.
pub(super) struct Attached {
    stream: UnixStream,
    pub container: String,
    writes_stdin: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

/// Output a slow attach client may have pending before it is dropped.
const MAX_PENDING: usize = 8 << 20;

impl Shim {
    pub(super) fn attach(&mut self, stream: UnixStream, container: String, stdin: bool) {
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
    pub(super) fn forward(&mut self, container: &str, kind: u8, data: &[u8]) {
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

    pub(super) fn attach_io(&mut self, t: Token) {
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
    pub(super) fn end_attached(&mut self) {
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
}
