//! Container logs in the CRI format the kubelet reads: `RFC3339Nano stream P|F message`, one line
//! per message; lines longer than the buffer are split into partial (`P`) records.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes one container's log file, buffering an unfinished line per stream.
pub struct CriLogWriter {
    file: File,
    pending: [Vec<u8>; 2],
}

impl CriLogWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file,
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn record(&mut self, stream: Stream, tag: char, msg: &[u8]) -> io::Result<()> {
        let ts = jiff::Timestamp::now();
        let mut line = Vec::with_capacity(msg.len() + 48);
        write!(line, "{ts} {} {tag} ", stream.name())?;
        line.extend_from_slice(msg);
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Adds bytes read from a stream.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut msg = &buf[start..end];
            while msg.len() > MAX_LINE {
                self.record(stream, 'P', &msg[..MAX_LINE])?;
                msg = &msg[MAX_LINE..];
            }
            self.record(stream, 'F', msg)?;
            start = end + 1;
        }
        let mut rest = buf.split_off(start);
        while rest.len() >= MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.record(stream, 'P', &rest)?;
            rest = tail;
        }
        self.pending[idx] = rest;
        Ok(())
    }

    /// The stream ended: what is left is a complete message.
    pub fn close(&mut self, stream: Stream) -> io::Result<()> {
        let idx = stream as usize;
        let rest = std::mem::take(&mut self.pending[idx]);
        if !rest.is_empty() {
            self.record(stream, 'F', &rest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cri_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c/0.log");
        let mut w = CriLogWriter::create(&p).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nbye").unwrap();
        w.close(Stream::Stdout).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let parts: Vec<&str> = lines[0].splitn(4, ' ').collect();
        assert!(parts[0].parse::<jiff::Timestamp>().is_ok(), "{}", parts[0]);
        assert_eq!(&parts[1..], ["stderr", "F", "oops"]);
        assert!(lines[1].ends_with(" stdout F hello"));
        assert!(lines[2].ends_with(" stdout F bye"));
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut w = CriLogWriter::create(&p).unwrap();
        let mut big = vec![b'x'; MAX_LINE + 10];
        big.push(b'\n');
        w.write(Stream::Stdout, &big).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "F"]);
    }
}
