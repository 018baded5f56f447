//! The embedded store: all revisions since the last compaction in memory, and an append-only log
//! file (`<data-dir>/store.log`) that is fsynced before a write is acknowledged. Each record is
//! `length (u32 LE) | crc32 (u32 LE) | JSON`; at open the log is replayed up to the first torn or
//! corrupt record (a crash mid-append) and cut there. Compaction rewrites the log from what is
//! left (a temporary file renamed over it).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    rev: Rev,
    compacted: Rev,
    keys: BTreeMap<String, Vec<Version>>,
    history: VecDeque<Event>,
    watchers: Vec<Watcher>,
    log: File,
}

pub struct Embedded {
    path: PathBuf,
    state: Mutex<State>,
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
            compacted: 0,
            keys: BTreeMap::new(),
            history: VecDeque::new(),
            watchers: Vec::new(),
            log: log.try_clone()?,
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
        }
        Ok(Embedded {
            path,
            state: Mutex::new(state),
        })
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
        self.history.push_back(Event { kind, kv, prev });
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
            .latest(key)
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

    /// Appends a record durably, then applies it and tells the watchers.
    fn commit(&mut self, key: &str, create_rev: Rev, value: Option<Vec<u8>>) -> Result<Event> {
        let rev = self.rev + 1;
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
        self.log.write_all(&encode(&rec)).map_err(backend)?;
        self.log.sync_data().map_err(backend)?;
        self.replay(rec);
        let ev = self.history.back().cloned().expect("just pushed");
        self.watchers.retain(|w| {
            if !ev.kv.key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            // A watcher that cannot keep up is dropped; it watches again from its last revision.
            w.tx.try_send(ev.clone()).is_ok()
        });
        Ok(ev)
    }
}

#[async_trait::async_trait]
impl super::Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state.lock().unwrap().latest(key))
    }

    async fn list(&self, prefix: &str, at: Option<Rev>) -> Result<(Vec<KeyValue>, Rev)> {
        let s = self.state.lock().unwrap();
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
        let s = self.state.lock().unwrap();
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
        let mut s = self.state.lock().unwrap();
        if s.latest(key).is_some() {
            return Err(StoreError::AlreadyExists(key.into()));
        }
        let rev = s.rev + 1;
        Ok(s.commit(key, rev, Some(value))?.kv)
    }

    async fn update(&self, key: &str, value: Vec<u8>, expect: Option<Rev>) -> Result<KeyValue> {
        let mut s = self.state.lock().unwrap();
        let cur = s.expect(key, expect)?;
        Ok(s.commit(key, cur.create_rev, Some(value))?.kv)
    }

    async fn delete(&self, key: &str, expect: Option<Rev>) -> Result<KeyValue> {
        let mut s = self.state.lock().unwrap();
        let cur = s.expect(key, expect)?;
        Ok(s.commit(key, cur.create_rev, None)?.kv)
    }

    async fn watch(&self, prefix: &str, after: Rev) -> Result<Watch> {
        let mut s = self.state.lock().unwrap();
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
        Ok(self.state.lock().unwrap().rev)
    }

    async fn compact(&self, rev: Rev) -> Result<()> {
        let mut s = self.state.lock().unwrap();
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
        let tmp = self.path.with_extension("log.tmp");
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
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&self.path)
        };
        s.log = write().map_err(|e| backend(format!("{}: {e}", self.path.display())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let s = Embedded::open(dir.path()).unwrap();
        crate::store::suite::run(&s).await;
    }

    #[tokio::test]
    async fn survives_a_restart_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Embedded::open(dir.path()).unwrap();
            s.create("/a", b"{\"n\":1}".to_vec()).await.unwrap();
            s.update("/a", b"{\"n\":2}".to_vec(), None).await.unwrap();
            s.create("/b", b"{}".to_vec()).await.unwrap();
            s.delete("/b", None).await.unwrap();
        }
        // A crash in the middle of an append leaves half a record.
        let log = dir.path().join("store.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(
            &encode(&Record {
                r: 5,
                k: "/c".into(),
                c: 5,
                v: None,
                compact: None,
            })[..7],
        )
        .unwrap();
        drop(f);
        let s = Embedded::open(dir.path()).unwrap();
        assert_eq!(s.current_rev().await.unwrap(), 4);
        let a = s.get("/a").await.unwrap().unwrap();
        assert_eq!(
            (&*a.value, a.create_rev, a.mod_rev),
            (&b"{\"n\":2}"[..], 1, 2)
        );
        assert!(s.get("/b").await.unwrap().is_none());
        // Writes go on from there, and a compacted log reopens the same.
        s.create("/c", b"{}".to_vec()).await.unwrap();
        s.compact(3).await.unwrap();
        drop(s);
        let s = Embedded::open(dir.path()).unwrap();
        assert_eq!(s.current_rev().await.unwrap(), 5);
        assert_eq!(s.get("/a").await.unwrap().unwrap().mod_rev, 2);
        assert_eq!(s.get("/c").await.unwrap().unwrap().mod_rev, 5);
        assert!(matches!(
            s.watch("/", 1).await,
            Err(StoreError::Compacted { compacted: 3, .. })
        ));
    }
}
