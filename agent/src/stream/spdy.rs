//! SPDY/3.1 as Kubernetes' streaming endpoints speak it (kubectl's `exec`, `attach` and
//! `port-forward` before WebSocket, and still for port-forward): the client opens streams with
//! SYN_STREAM, the server answers each with SYN_REPLY, data flows in data frames, FIN closes a
//! direction. Header blocks are zlib streams (one per direction for the whole connection) with
//! the dictionary of the SPDY/3 draft (section 2.6.10.1), kept in `spdy3.dict`. PINGs are
//! echoed; flow control is not enforced, as Go's spdystream does not enforce it either.

use std::collections::HashMap;
use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");
const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// Frames larger than this are refused (a header block or data frame is far smaller).
const MAX_FRAME: usize = 16 << 20;

pub type Headers = Vec<(String, String)>;

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn u32_at(b: &[u8], i: usize) -> std::io::Result<u32> {
    b.get(i..i + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("short SPDY frame"))
}

/// A stream the client opened: its id, headers, and the data it sends (None at FIN).
pub struct Incoming {
    pub id: u32,
    pub headers: Headers,
    pub data: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Writer<W> {
    w: W,
    deflate: Compress,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn control(&mut self, ty: u16, flags: u8, body: &[u8]) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(8 + body.len());
        f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        f.extend_from_slice(&ty.to_be_bytes());
        f.push(flags);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(body);
        self.w.write_all(&f).await?;
        self.w.flush().await
    }

    fn header_block(&mut self, headers: &Headers) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| bad(e.to_string()))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    async fn reply(&mut self, id: u32, headers: &Headers) -> std::io::Result<()> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend(self.header_block(headers)?);
        self.control(2, 0, &body).await
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut f = Vec::with_capacity(8 + data.len());
        f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        f.push(if fin { FLAG_FIN } else { 0 });
        f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(data);
        self.w.write_all(&f).await?;
        self.w.flush().await
    }
}

/// The server side of one SPDY connection.
pub struct Session<W> {
    writer: Arc<Mutex<Writer<W>>>,
    accept: mpsc::UnboundedReceiver<Incoming>,
}

/// Sends on streams of a session (cloneable, for the tasks that pump data).
pub struct Sender<W> {
    writer: Arc<Mutex<Writer<W>>>,
}

impl<W> Clone for Sender<W> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sender<W> {
    pub async fn data(&self, id: u32, data: &[u8]) -> std::io::Result<()> {
        // Frames carry at most 16 MiB; stay well below.
        for chunk in data.chunks(32 * 1024) {
            self.writer.lock().await.data(id, chunk, false).await?;
        }
        Ok(())
    }

    pub async fn close(&self, id: u32) -> std::io::Result<()> {
        self.writer.lock().await.data(id, &[], true).await
    }

    pub async fn goaway(&self) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        w.control(7, 0, &[0, 0, 0, 0, 0, 0, 0, 0]).await?;
        w.w.shutdown().await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Session<W> {
    /// Starts reading frames from `r`; streams the client opens come from `accept`.
    pub fn start<R: AsyncRead + Unpin + Send + 'static>(r: R, w: W) -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        let _ = deflate.set_dictionary(DICTIONARY);
        let writer = Arc::new(Mutex::new(Writer { w, deflate }));
        let (tx, accept) = mpsc::unbounded_channel();
        let wr = writer.clone();
        tokio::spawn(async move {
            if let Err(e) = read_loop(r, wr, tx).await {
                tracing::debug!("SPDY session ended: {e}");
            }
        });
        Session { writer, accept }
    }

    pub fn sender(&self) -> Sender<W> {
        Sender {
            writer: self.writer.clone(),
        }
    }

    /// The next stream the client opens (answered with SYN_REPLY), or None when the
    /// connection is gone.
    pub async fn accept(&mut self) -> Option<Incoming> {
        let s = self.accept.recv().await?;
        let _ = self.writer.lock().await.reply(s.id, &Vec::new()).await;
        Some(s)
    }
}

fn inflate(z: &mut Decompress, block: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() * 4 + 64);
    let mut input = block;
    loop {
        out.reserve(1024);
        let before = z.total_in();
        match z.decompress_vec(input, &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                z.set_dictionary(DICTIONARY)
                    .map_err(|e| bad(e.to_string()))?;
            }
            Err(e) => return Err(bad(format!("SPDY header block: {e}"))),
        }
        let used = (z.total_in() - before) as usize;
        input = &input[used..];
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        if out.len() > MAX_FRAME {
            return Err(bad("SPDY header block too large"));
        }
    }
}

fn parse_headers(raw: &[u8]) -> std::io::Result<Headers> {
    let n = u32_at(raw, 0)? as usize;
    let mut i = 4;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kl = u32_at(raw, i)? as usize;
        let k = raw
            .get(i + 4..i + 4 + kl)
            .ok_or_else(|| bad("short header"))?;
        i += 4 + kl;
        let vl = u32_at(raw, i)? as usize;
        let v = raw
            .get(i + 4..i + 4 + vl)
            .ok_or_else(|| bad("short header"))?;
        i += 4 + vl;
        let k = String::from_utf8_lossy(k).into_owned();
        // Several values of one name are NUL-separated.
        for v in v.split(|b| *b == 0) {
            out.push((k.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(out)
}

async fn read_loop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    writer: Arc<Mutex<Writer<W>>>,
    accept: mpsc::UnboundedSender<Incoming>,
) -> std::io::Result<()> {
    let mut z = Decompress::new(true);
    let mut streams: HashMap<u32, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        if let Err(e) = r.read_exact(&mut head).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(bad("SPDY frame too large"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if let Some(tx) = streams.get(&id) {
                if !body.is_empty() {
                    let _ = tx.send(body);
                }
            }
            if flags & FLAG_FIN != 0 {
                streams.remove(&id);
            }
            continue;
        }
        let ty = u16::from_be_bytes([head[2], head[3]]);
        match ty {
            1 => {
                // SYN_STREAM: id, associated id, priority, slot, header block.
                let id = u32_at(&body, 0)? & 0x7fff_ffff;
                let headers = parse_headers(&inflate(&mut z, body.get(10..).unwrap_or_default())?)?;
                let (tx, rx) = mpsc::unbounded_channel();
                if flags & FLAG_FIN == 0 {
                    streams.insert(id, tx);
                }
                if accept
                    .send(Incoming {
                        id,
                        headers,
                        data: rx,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            3 => {
                // RST_STREAM: the client gave up on a stream.
                streams.remove(&(u32_at(&body, 0)? & 0x7fff_ffff));
            }
            6 => {
                let mut w = writer.lock().await;
                w.control(6, 0, &body).await?;
            }
            7 => return Ok(()),
            8 => {
                // HEADERS: decoded to keep the zlib stream in step, otherwise unused.
                inflate(&mut z, body.get(4..).unwrap_or_default())?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_round_trip_through_the_shared_zlib_streams() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        let mut w = Writer {
            w: Vec::new(),
            deflate,
        };
        let mut z = Decompress::new(true);
        for i in 0..3 {
            let h: Headers = vec![
                ("streamType".into(), "stdout".into()),
                ("requestid".into(), i.to_string()),
            ];
            let block = w.header_block(&h).unwrap();
            let back = parse_headers(&inflate(&mut z, &block).unwrap()).unwrap();
            assert_eq!(
                back,
                vec![
                    ("streamtype".to_string(), "stdout".to_string()),
                    ("requestid".to_string(), i.to_string())
                ]
            );
        }
        assert_eq!(DICTIONARY.len(), 1423);
    }
}
