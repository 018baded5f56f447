//! Container logs as the kubelet serves them: CRI records (`<RFC3339Nano> <stream> <P|F> <msg>`)
//! turned back into the container's output, with `tailLines`, `sinceTime`/`sinceSeconds`,
//! `timestamps`, `limitBytes`, `previous` and `follow` (which moves on to the next attempt's file
//! when the container restarts).

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Clone)]
pub struct Options {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub timestamps: bool,
    pub since: Option<jiff::Timestamp>,
    pub previous: bool,
    pub limit_bytes: Option<u64>,
}

/// Log files of a container directory, by attempt.
fn attempts(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".log")
                        .and_then(|s| s.parse::<u32>().ok())
                        .map(|k| (k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The file to read: the latest attempt's, or the one before it for `previous`.
pub fn log_file(dir: &Path, previous: bool) -> Result<PathBuf, String> {
    let mut a = attempts(dir);
    if previous {
        a.pop();
        a.pop()
            .map(|(_, p)| p)
            .ok_or_else(|| "previous terminated container not found".to_string())
    } else {
        a.pop()
            .map(|(_, p)| p)
            .ok_or_else(|| format!("no logs in {}", dir.display()))
    }
}

/// One complete output line (partial records joined) with its first record's time.
struct Line {
    ts: String,
    text: Vec<u8>,
}

/// Reads the complete records available; a half-written last line is left for later.
fn read_lines<R: BufRead + Seek>(
    r: &mut R,
    pending: &mut Option<Line>,
) -> std::io::Result<Vec<Line>> {
    let mut out = Vec::new();
    let mut buf = String::new();
    loop {
        buf.clear();
        let start = r.stream_position()?;
        if r.read_line(&mut buf)? == 0 {
            return Ok(out);
        }
        if !buf.ends_with('\n') {
            r.seek(SeekFrom::Start(start))?;
            return Ok(out);
        }
        let mut parts = buf.trim_end_matches('\n').splitn(4, ' ');
        let (ts, _stream, tag, msg) = (
            parts.next().unwrap_or_default(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or_default(),
        );
        let line = pending.get_or_insert_with(|| Line {
            ts: ts.to_string(),
            text: Vec::new(),
        });
        line.text.extend_from_slice(msg.as_bytes());
        if tag != Some("P") {
            out.extend(pending.take());
        }
    }
}

/// Renders one line (skipped before `since`); false once the sink or the byte limit says stop.
fn emit(l: &Line, opts: &Options, left: &mut u64, sink: &mut dyn FnMut(&[u8]) -> bool) -> bool {
    if let Some(since) = opts.since {
        if l.ts.parse::<jiff::Timestamp>().is_ok_and(|t| t < since) {
            return true;
        }
    }
    let mut out = Vec::with_capacity(l.text.len() + 40);
    if opts.timestamps {
        out.extend_from_slice(l.ts.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&l.text);
    out.push(b'\n');
    if (out.len() as u64) > *left {
        out.truncate(*left as usize);
    }
    *left -= out.len() as u64;
    sink(&out) && *left > 0
}

/// Writes the container's log to `sink` until done (or, following, until `alive` says the
/// container is gone or `sink` refuses more).
pub fn stream(
    dir: &Path,
    opts: &Options,
    alive: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let mut current = log_file(dir, opts.previous)?;
    let mut reader = BufReader::new(std::fs::File::open(&current).map_err(|e| e.to_string())?);
    let mut pending = None;
    let mut left = opts.limit_bytes.unwrap_or(u64::MAX);
    let first = read_lines(&mut reader, &mut pending).map_err(|e| e.to_string())?;
    let skip = opts
        .tail_lines
        .map(|n| first.len().saturating_sub(n))
        .unwrap_or(0);
    for l in &first[skip..] {
        if !emit(l, opts, &mut left, sink) {
            return Ok(());
        }
    }
    if !opts.follow || opts.previous {
        return Ok(());
    }
    loop {
        let lines = read_lines(&mut reader, &mut pending).map_err(|e| e.to_string())?;
        for l in &lines {
            if !emit(l, opts, &mut left, sink) {
                return Ok(());
            }
        }
        if lines.is_empty() {
            match attempts(dir).pop() {
                Some((_, newer)) if newer != current => {
                    current = newer;
                    reader =
                        BufReader::new(std::fs::File::open(&current).map_err(|e| e.to_string())?);
                    pending = None;
                    continue;
                }
                Some(_) if alive() => {}
                _ => return Ok(()),
            }
            // An empty write tells whether the reader is still there.
            if !sink(b"") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path, opts: &Options) -> String {
        let mut out = Vec::new();
        stream(dir, opts, &|| false, &mut |b| {
            out.extend_from_slice(b);
            true
        })
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn records_become_lines_with_tail_since_timestamps_and_limits() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("0.log"),
            "2026-01-01T00:00:00.1Z stdout F old\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("1.log"),
            "2026-01-01T00:00:01Z stdout F one\n2026-01-01T00:00:02Z stderr P tw\n2026-01-01T00:00:02.5Z stderr F o\n2026-01-01T00:00:03Z stdout F three\n2026-01-01T00:00:04Z stdout F half",
        )
        .unwrap();
        assert_eq!(collect(d.path(), &Options::default()), "one\ntwo\nthree\n");
        let tail = Options {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(collect(d.path(), &tail), "two\nthree\n");
        let ts = Options {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(collect(d.path(), &ts), "2026-01-01T00:00:03Z three\n");
        let since = Options {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(collect(d.path(), &since), "two\nthree\n");
        let limit = Options {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(collect(d.path(), &limit), "one\ntw");
        let prev = Options {
            previous: true,
            ..Default::default()
        };
        assert_eq!(collect(d.path(), &prev), "old\n");
        std::fs::remove_file(d.path().join("0.log")).unwrap();
        assert!(log_file(d.path(), true).is_err());
    }
}
