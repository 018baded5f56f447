//! The embedded store: all revisions since the last compaction in memory, and an append-only log
//! file (`<data-dir>/store.log`) that is fsynced before a write is acknowledged. Each record is
//! `length (u32 LE) | crc32 (u32 LE) | JSON`; at open the log is replayed up to the first torn or
//! corrupt record (a crash mid-append) and cut there. Compaction rewrites the log from what is
//! left (a temporary file renamed over it).
//!
//! Writes are group-committed: a write is checked and appended under the state lock, then waits
//! for an fsync that covers it. A thread of the store's own runs the fsyncs, each for everything
//! appended so far, so writes arriving during one share the next; only then are they applied,
//! seen by readers and sent to watchers, in revision order. A write whose caller went away is
//! still made durable and applied. Later writes are checked against the appended-but-unsynced
//! ones, so no two writes conflict unseen. If an fsync fails, durability of what follows is
//! unknown: the store refuses every later write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Event, EventKind, KeyValue, Result, Rev, StoreError, Watch};

/// How many events a watcher may fall behind before it is dropped.
const WATCH_BUFFER: usize = 4096;

#[derive(Debug, Clone)]
struct Version {
    mod_rev: Rev,
    create_rev: Rev,
    /// None: deleted at `mod_rev`.
    value: Option<Arc<[u8]>>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Event>,
}

struct State {
    /// The newest applied revision: durable, and what readers see.
    rev: Rev,
    /// The newest revision appended to the log (durable or not).
    appended: Rev,
    /// Appended records waiting for an fsync, in revision order.
    pending: VecDeque<Record>,
    /// The newest pending version of each key pending records touch.
    overlay: HashMap<String, Version>,
    /// Why writes are refused (an fsync failed).
    failed: Option<String>,
    compacted: Rev,
    keys: BTreeMap<String, Vec<Version>>,
    history: VecDeque<Event>,
    watchers: Vec<Watcher>,
    log: Arc<File>,
    /// The log's length: where a half-written record is cut back to.
    log_len: u64,
    /// The store is being dropped: the sync thread ends once nothing is pending.
    closing: bool,
}

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes the sync thread: something was appended, or the store closes.
    appended: Condvar,
    /// The applied revision, for writers waiting for theirs (and failures, which wake them too).
    applied: tokio::sync::watch::Sender<Rev>,
}

pub struct Embedded {
    shared: Arc<Shared>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Revision of this change.
    r: Rev,
    k: String,
    /// Create revision of the key.
    c: Rev,
    /// The new value (a JSON document), None for a delete.
    #[serde(default)]
    v: Option<Box<serde_json::value::RawValue>>,
    /// A compaction marker: history before this revision is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compact: Option<Rev>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode(rec: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(rec).expect("records serialize");
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

impl Embedded {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("store.log");
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut data = Vec::new();
        log.read_to_end(&mut data)?;
        let mut state = State {
            rev: 0,
            appended: 0,
            pending: VecDeque::new(),
            overlay: HashMap::new(),
            failed: None,
            compacted: 0,
            keys: BTreeMap::new(),
            history: VecDeque::new(),
            watchers: Vec::new(),
            log: Arc::new(log.try_clone()?),
            log_len: data.len() as u64,
            closing: false,
        };
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
            let Some(body) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32fast::hash(body) != crc {
                break;
            }
            let Ok(rec) = serde_json::from_slice::<Record>(body) else {
                break;
            };
            state.replay(rec);
            pos += 8 + len;
        }
        if pos < data.len() {
            tracing::warn!(
                file = %path.display(),
                offset = pos,
                dropped = data.len() - pos,
                "store log ends in a torn record (a crash mid-write); cutting it there"
            );
            log.set_len(pos as u64)?;
            log.seek(SeekFrom::End(0))?;
            log.sync_all()?;
            state.log_len = pos as u64;
        }
        state.appended = state.rev;
        let shared = Arc::new(Shared {
            path,
            applied: tokio::sync::watch::Sender::new(state.rev),
            state: Mutex::new(state),
            appended: Condvar::new(),
        });
        let syncer = shared.clone();
        std::thread::Builder::new()
            .name("store-fsync".into())
            .spawn(move || syncer.sync_loop())?;
        Ok(Embedded { shared })
    }
}

impl State {
    fn replay(&mut self, rec: Record) {
        if let Some(c) = rec.compact {
            self.rev = self.rev.max(rec.r);
            self.compact_to(c);
            return;
        }
        let value: Option<Arc<[u8]>> = rec.v.map(|v| Arc::from(v.get().as_bytes()));
        let prev = self.latest(&rec.k);
        let kind = if value.is_some() {
            EventKind::Put
        } else {
            EventKind::Delete
        };
        let kv = KeyValue {
            key: rec.k.clone(),
            value: value
                .clone()
                .or_else(|| prev.as_ref().map(|p| p.value.clone()))
                .unwrap_or_else(|| Arc::from(&b""[..])),
            create_rev: rec.c,
            mod_rev: rec.r,
        };
        self.keys.entry(rec.k).or_default().push(Version {
            mod_rev: rec.r,
            create_rev: rec.c,
            value,
        });
        self.rev = rec.r;
        self.history.push_back(Event {
            kind,
            kv,
            prev,
            rendered: Default::default(),
        });
    }

    fn latest(&self, key: &str) -> Option<KeyValue> {
        let v = self.keys.get(key)?.last()?;
        Some(KeyValue {
            key: key.to_string(),
            value: v.value.clone()?,
            create_rev: v.create_rev,
            mod_rev: v.mod_rev,
        })
    }

    /// The key's current value, if it is still at revision `expect` (when given).
    fn expect(&self, key: &str, expect: Option<Rev>) -> Result<KeyValue> {
        let cur = self
            .newest(key)
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        if expect.is_some_and(|e| e != cur.mod_rev) {
            return Err(StoreError::Conflict {
                key: key.into(),
                current: cur.mod_rev,
            });
        }
        Ok(cur)
    }

    fn at(&self, key: &str, versions: &[Version], rev: Rev) -> Option<KeyValue> {
        let v = versions.iter().rev().find(|v| v.mod_rev <= rev)?;
        Some(KeyValue {
            key: key.to_string(),
            value: v.value.clone()?,
            create_rev: v.create_rev,
            mod_rev: v.mod_rev,
        })
    }

    fn compact_to(&mut self, rev: Rev) {
        if rev <= self.compacted {
            return;
        }
        self.compacted = rev;
        self.keys.retain(|_, versions| {
            // Keep the newest version at or before `rev` (what a read at `rev` sees) and all after.
            let keep_from = versions.iter().rposition(|v| v.mod_rev <= rev).unwrap_or(0);
            versions.drain(..keep_from);
            !(versions.len() == 1 && versions[0].value.is_none() && versions[0].mod_rev <= rev)
        });
        while self.history.front().is_some_and(|e| e.kv.mod_rev <= rev) {
            self.history.pop_front();
        }
    }

    /// The key's newest value, appended or applied.
    fn newest(&self, key: &str) -> Option<KeyValue> {
        let Some(v) = self.overlay.get(key) else {
            return self.latest(key);
        };
        Some(KeyValue {
            key: key.to_string(),
            value: v.value.clone()?,
            create_rev: v.create_rev,
            mod_rev: v.mod_rev,
        })
    }

    /// Appends a change to the log (not yet durable, applied or seen) and returns its revision
    /// and the key-value the write answers with (a delete's carries the value it removed).
    fn append(
        &mut self,
        key: &str,
        create_rev: Rev,
        value: Option<Vec<u8>>,
        removed: Option<Arc<[u8]>>,
    ) -> Result<(Rev, KeyValue)> {
        if let Some(why) = &self.failed {
            return Err(backend(why));
        }
        let rev = self.appended + 1;
        let raw = match &value {
            Some(v) => Some(
                serde_json::value::RawValue::from_string(
                    String::from_utf8(v.clone()).map_err(backend)?,
                )
                .map_err(|e| backend(format!("value of {key} is not JSON: {e}")))?,
            ),
            None => None,
        };
        let rec = Record {
            r: rev,
            k: key.to_string(),
            c: create_rev,
            v: raw,
            compact: None,
        };
        let bytes = encode(&rec);
        if let Err(e) = (&*self.log).write_all(&bytes) {
            // Cut a half-written record, so the next one follows a whole one.
            let _ = self.log.set_len(self.log_len);
            return Err(backend(e));
        }
        self.log_len += bytes.len() as u64;
        self.appended = rev;
        let value: Option<Arc<[u8]>> = value.map(Arc::from);
        self.overlay.insert(
            key.to_string(),
            Version {
                mod_rev: rev,
                create_rev,
                value: value.clone(),
            },
        );
        self.pending.push_back(rec);
        let kv = KeyValue {
            key: key.to_string(),
            value: value.or(removed).unwrap_or_else(|| Arc::from(&b""[..])),
            create_rev,
            mod_rev: rev,
        };
        Ok((rev, kv))
    }

    /// Applies the pending records up to `upto` (now durable) and tells the watchers.
    fn apply_upto(&mut self, upto: Rev) {
        while self.pending.front().is_some_and(|r| r.r <= upto) {
            let rec = self.pending.pop_front().expect("checked");
            let (key, rev) = (rec.k.clone(), rec.r);
            self.replay(rec);
            if self.overlay.get(&key).is_some_and(|v| v.mod_rev == rev) {
                self.overlay.remove(&key);
            }
            let ev = self.history.back().cloned().expect("just pushed");
            self.watchers.retain(|w| {
                if !ev.kv.key.starts_with(&w.prefix) {
                    return !w.tx.is_closed();
                }
                // A watcher that cannot keep up is dropped; it watches again from its last
                // revision.
                w.tx.try_send(ev.clone()).is_ok()
            });
        }
    }
}

impl Shared {
    /// The sync thread: fsyncs what was appended, then applies it.
    fn sync_loop(&self) {
        loop {
            let (log, upto) = {
                let mut s = self.state.lock().unwrap();
                while s.appended == s.rev && !s.closing {
                    s = self.appended.wait(s).unwrap();
                }
                if s.appended == s.rev || s.failed.is_some() {
                    return;
                }
                (s.log.clone(), s.appended)
            };
            let synced = log.sync_data();
            let mut s = self.state.lock().unwrap();
            self.synced(&mut s, upto, synced);
        }
    }

    /// After an fsync of the log up to `upto`: applies it, or refuses writes from now on.
    fn synced(&self, s: &mut State, upto: Rev, synced: std::io::Result<()>) {
        match synced {
            Ok(()) => s.apply_upto(upto),
            Err(e) => {
                let why = format!("fsync of {} failed: {e}", self.path.display());
                tracing::error!("{why}; refusing writes from now on");
                s.failed = Some(why);
            }
        }
        // After a failure nothing more is applied: every waiter is released to see it.
        self.applied
            .send_replace(if s.failed.is_some() { Rev::MAX } else { s.rev });
    }

    /// Appends under the state lock with `f`, then waits until the change is durable and
    /// applied. A write refused because of pending ones (a conflict, a key that exists) is
    /// answered once those are applied, so the caller's next read sees why: a read-modify-write
    /// retried on conflict then succeeds instead of racing the same pending write again.
    async fn write(
        &self,
        f: impl FnOnce(&mut State) -> Result<(Rev, KeyValue)>,
    ) -> Result<KeyValue> {
        let mut applied = self.applied.subscribe();
        let outcome = {
            let mut s = self.state.lock().unwrap();
            f(&mut s).map_err(|e| (e, s.appended))
        };
        let (rev, kv) = match outcome {
            Ok(written) => written,
            Err((e, pending)) => {
                let _ = applied.wait_for(|r| *r >= pending).await;
                return Err(e);
            }
        };
        self.appended.notify_one();
        let _ = applied.wait_for(|r| *r >= rev).await;
        let s = self.state.lock().unwrap();
        if s.rev >= rev {
            return Ok(kv);
        }
        Err(backend(s.failed.as_deref().unwrap_or("the store closed")))
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closing = true;
        self.shared.appended.notify_one();
    }
}

#[async_trait::async_trait]
impl super::Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.shared.state.lock().unwrap().latest(key))
    }

    async fn list(&self, prefix: &str, at: Option<Rev>) -> Result<(Vec<KeyValue>, Rev)> {
        let s = self.shared.state.lock().unwrap();
        let rev = at.unwrap_or(s.rev);
        if rev < s.compacted || rev > s.rev {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: s.compacted,
                current: s.rev,
            });
        }
        let out = s
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, versions)| s.at(k, versions, rev))
            .collect();
        Ok((out, rev))
    }

    async fn list_page(
        &self,
        prefix: &str,
        at: Option<Rev>,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, Rev, bool)> {
        let s = self.shared.state.lock().unwrap();
        let rev = at.unwrap_or(s.rev);
        if rev < s.compacted || rev > s.rev {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: s.compacted,
                current: s.rev,
            });
        }
        use std::ops::Bound;
        let from = match start_after {
            Some(k) if k >= prefix => Bound::Excluded(k.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut out = Vec::new();
        let mut more = false;
        for (k, versions) in s
            .keys
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if let Some(kv) = s.at(k, versions, rev) {
                if limit > 0 && out.len() == limit {
                    more = true;
                    break;
                }
                out.push(kv);
            }
        }
        Ok((out, rev, more))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.shared
            .write(|s| {
                if s.newest(key).is_some() {
                    return Err(StoreError::AlreadyExists(key.into()));
                }
                let rev = s.appended + 1;
                s.append(key, rev, Some(value), None)
            })
            .await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expect: Option<Rev>) -> Result<KeyValue> {
        self.shared
            .write(|s| {
                let cur = s.expect(key, expect)?;
                s.append(key, cur.create_rev, Some(value), None)
            })
            .await
    }

    async fn delete(&self, key: &str, expect: Option<Rev>) -> Result<KeyValue> {
        self.shared
            .write(|s| {
                let cur = s.expect(key, expect)?;
                s.append(key, cur.create_rev, None, Some(cur.value))
            })
            .await
    }

    async fn watch(&self, prefix: &str, after: Rev) -> Result<Watch> {
        let mut s = self.shared.state.lock().unwrap();
        if after < s.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: s.compacted,
                current: s.rev,
            });
        }
        let backlog: Vec<Event> = s
            .history
            .iter()
            .filter(|e| e.kv.mod_rev > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER.max(backlog.len() + 1));
        for e in backlog {
            let _ = tx.try_send(e);
        }
        // Registered under the same lock, so no change falls between backlog and live events.
        s.watchers.push(Watcher {
            prefix: prefix.to_string(),
            tx,
        });
        Ok(rx)
    }

    async fn current_rev(&self) -> Result<Rev> {
        Ok(self.shared.state.lock().unwrap().rev)
    }

    async fn compact(&self, rev: Rev) -> Result<()> {
        // The log is rewritten from applied state: what is pending is made durable and applied
        // first (appends wait for the state lock held from here on).
        let sh = &*self.shared;
        let mut s = sh.state.lock().unwrap();
        if s.appended > s.rev {
            let (upto, synced) = (s.appended, s.log.sync_data());
            sh.synced(&mut s, upto, synced);
            if let Some(why) = &s.failed {
                return Err(backend(why));
            }
        }
        let rev = rev.min(s.rev);
        if rev <= s.compacted {
            return Ok(());
        }
        s.compact_to(rev);
        // Rewrite the log from what is left: every kept version in revision order.
        let mut versions: Vec<(Rev, String, Version)> = s
            .keys
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (v.mod_rev, k.clone(), v.clone())))
            .collect();
        versions.sort_by_key(|(r, _, _)| *r);
        let tmp = sh.path.with_extension("log.tmp");
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for (r, k, v) in &versions {
                let value = v.value.as_ref().map(|b| {
                    serde_json::value::RawValue::from_string(
                        String::from_utf8_lossy(b).into_owned(),
                    )
                    .expect("stored values are JSON")
                });
                buf.extend(encode(&Record {
                    r: *r,
                    k: k.clone(),
                    c: v.create_rev,
                    v: value,
                    compact: None,
                }));
            }
            buf.extend(encode(&Record {
                r: s.rev,
                k: String::new(),
                c: 0,
                v: None,
                compact: Some(rev),
            }));
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &sh.path)?;
            if let Some(dir) = sh.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&sh.path)
        };
        let log = write().map_err(|e| backend(format!("{}: {e}", sh.path.display())))?;
        s.log_len = log.metadata().map(|m| m.len()).map_err(backend)?;
        s.log = Arc::new(log);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
