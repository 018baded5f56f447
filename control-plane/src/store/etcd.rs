//! etcd v3 as the store, through etcd's JSON gateway (`/v3/kv/*`, `/v3/watch`) over HTTP: the same
//! API the gRPC clients use, without a protobuf toolchain in the build. Conditional writes are
//! transactions on `create_revision`/`mod_revision`; revisions are etcd's own, so several
//! apiservers share one cluster and agree on every `resourceVersion`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Event, EventKind, KeyValue, Result, Rev, StoreError, Watch};

pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::Client,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv(v: &Value) -> Option<KeyValue> {
    let key = B64.decode(v["key"].as_str()?).ok()?;
    let value = v["value"]
        .as_str()
        .map(|s| B64.decode(s).unwrap_or_default())
        .unwrap_or_default();
    Some(KeyValue {
        key: String::from_utf8(key).ok()?,
        value: Arc::from(value),
        create_rev: num(&v["create_revision"]),
        mod_rev: num(&v["mod_revision"]),
    })
}

impl Etcd {
    /// `endpoints`: `http://host:port` of each member.
    pub fn new(endpoints: Vec<String>) -> Self {
        Etcd {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
        }
    }

    /// Posts to the first member that answers.
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let mut last = String::from("no etcd endpoints");
        for ep in &self.endpoints {
            match self
                .http
                .post(format!("{ep}{path}"))
                .json(&body)
                .send()
                .await
            {
                Ok(resp) => {
                    let v: Value = resp.json().await.map_err(backend)?;
                    if let Some(msg) = v.get("error").or_else(|| v.get("message")) {
                        let msg = msg.as_str().unwrap_or_default().to_string();
                        if msg.contains("compacted") || msg.contains("future revision") {
                            return Err(StoreError::Compacted {
                                requested: num(&body["revision"]),
                                compacted: 0,
                                current: num(&v["header"]["revision"]),
                            });
                        }
                        return Err(StoreError::Backend(format!("etcd {ep}: {msg}")));
                    }
                    return Ok(v);
                }
                Err(e) => last = format!("etcd {ep}: {e}"),
            }
        }
        Err(StoreError::Backend(last))
    }

    async fn txn(&self, compare: Value, success: Value, failure: Value) -> Result<Value> {
        self.post(
            "/v3/kv/txn",
            json!({"compare": [compare], "success": [success], "failure": [failure]}),
        )
        .await
    }

    fn get_op(key: &str) -> Value {
        json!({"request_range": {"key": b64(key.as_bytes())}})
    }

    /// The current value from a failed transaction's range response.
    fn failed_current(resp: &Value) -> Option<KeyValue> {
        kv(&resp["responses"][0]["response_range"]["kvs"][0])
    }

    async fn conditional(
        &self,
        key: &str,
        expect: Option<Rev>,
        op: Value,
    ) -> Result<(Value, Option<KeyValue>)> {
        let compare = match expect {
            Some(rev) => {
                json!({"key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
            }
            None => {
                json!({"key": b64(key.as_bytes()), "target": "CREATE", "result": "GREATER", "create_revision": "0"})
            }
        };
        let resp = self.txn(compare, op, Self::get_op(key)).await?;
        if resp["succeeded"].as_bool() == Some(true) {
            return Ok((resp, None));
        }
        match Self::failed_current(&resp) {
            Some(cur) => Err(StoreError::Conflict {
                key: key.into(),
                current: cur.mod_rev,
            }),
            None => Err(StoreError::NotFound(key.into())),
        }
    }
}

#[async_trait::async_trait]
impl super::Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let v = self
            .post("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(kv(&v["kvs"][0]))
    }

    async fn list(&self, prefix: &str, at: Option<Rev>) -> Result<(Vec<KeyValue>, Rev)> {
        let mut body =
            json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))});
        if let Some(rev) = at {
            body["revision"] = json!(rev.to_string());
        }
        let v = self.post("/v3/kv/range", body).await?;
        let items = v["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(kv).collect())
            .unwrap_or_default();
        Ok((items, at.unwrap_or_else(|| num(&v["header"]["revision"]))))
    }

    async fn list_page(
        &self,
        prefix: &str,
        at: Option<Rev>,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, Rev, bool)> {
        let start = match start_after {
            Some(k) => {
                let mut v = k.as_bytes().to_vec();
                v.push(0);
                v
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut body = json!({"key": b64(&start), "range_end": b64(&prefix_end(prefix))});
        if limit > 0 {
            body["limit"] = json!(limit.to_string());
        }
        if let Some(rev) = at {
            body["revision"] = json!(rev.to_string());
        }
        let v = self.post("/v3/kv/range", body).await?;
        let items: Vec<KeyValue> = v["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(kv).collect())
            .unwrap_or_default();
        let more = v["more"].as_bool() == Some(true);
        Ok((
            items,
            at.unwrap_or_else(|| num(&v["header"]["revision"])),
            more,
        ))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let k = b64(key.as_bytes());
        let resp = self
            .txn(
                json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
                json!({"request_put": {"key": k, "value": b64(&value)}}),
                Self::get_op(key),
            )
            .await?;
        if resp["succeeded"].as_bool() != Some(true) {
            return Err(StoreError::AlreadyExists(key.into()));
        }
        let rev = num(&resp["header"]["revision"]);
        Ok(KeyValue {
            key: key.into(),
            value: Arc::from(value),
            create_rev: rev,
            mod_rev: rev,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expect: Option<Rev>) -> Result<KeyValue> {
        let op = json!({"request_put": {"key": b64(key.as_bytes()), "value": b64(&value), "prev_kv": true}});
        let (resp, _) = self.conditional(key, expect, op).await?;
        let prev = kv(&resp["responses"][0]["response_put"]["prev_kv"]);
        let rev = num(&resp["header"]["revision"]);
        Ok(KeyValue {
            key: key.into(),
            value: Arc::from(value),
            create_rev: prev.map(|p| p.create_rev).unwrap_or(rev),
            mod_rev: rev,
        })
    }

    async fn delete(&self, key: &str, expect: Option<Rev>) -> Result<KeyValue> {
        let op = json!({"request_delete_range": {"key": b64(key.as_bytes()), "prev_kv": true}});
        let (resp, _) = self.conditional(key, expect, op).await?;
        let mut prev = kv(&resp["responses"][0]["response_delete_range"]["prev_kvs"][0])
            .ok_or_else(|| StoreError::NotFound(key.into()))?;
        prev.mod_rev = num(&resp["header"]["revision"]);
        Ok(prev)
    }

    async fn watch(&self, prefix: &str, after: Rev) -> Result<Watch> {
        // etcd confirms a watch before it cancels one that starts in compacted history, so the
        // history is checked first (a read at `after` fails the same way); a compaction racing
        // this ends the stream, and the client's next watch gets the error.
        if after > 0 {
            self.post(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "count_only": true, "revision": after.to_string()}),
            )
            .await?;
        }
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": (after + 1).to_string(),
            "prev_kv": true,
        }});
        let mut last = String::from("no etcd endpoints");
        for ep in &self.endpoints {
            let resp = match self
                .http
                .post(format!("{ep}/v3/watch"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = format!("etcd {ep}: {e}");
                    continue;
                }
            };
            let mut stream = resp.bytes_stream();
            use futures_util::StreamExt;
            // The gateway streams one JSON object per message; the first confirms the watch (or
            // says it was cancelled because `after` is compacted).
            let mut buf = Vec::new();
            let mut pending: Vec<Value> = Vec::new();
            let first = loop {
                if let Some(v) = take_object(&mut buf) {
                    break v;
                }
                match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Err(backend(e)),
                    None => return Err(backend("etcd closed the watch")),
                }
            };
            let r = &first["result"];
            if r["canceled"].as_bool() == Some(true) || num(&r["compact_revision"]) > 0 {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: num(&r["compact_revision"]),
                    current: num(&r["header"]["revision"]),
                });
            }
            if r.get("events").is_some() {
                pending.push(first);
            }
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(async move {
                loop {
                    while let Some(v) = take_object(&mut buf) {
                        pending.push(v);
                    }
                    for msg in pending.drain(..) {
                        for e in msg["result"]["events"].as_array().into_iter().flatten() {
                            let Some(mut item) = kv(&e["kv"]) else {
                                continue;
                            };
                            let prev = kv(&e["prev_kv"]);
                            let kind = if e["type"] == "DELETE" {
                                if let Some(p) = &prev {
                                    item.value = p.value.clone();
                                    item.create_rev = p.create_rev;
                                }
                                EventKind::Delete
                            } else {
                                EventKind::Put
                            };
                            if tx
                                .send(Event {
                                    kind,
                                    kv: item,
                                    prev,
                                    rendered: Default::default(),
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    tokio::select! {
                        chunk = stream.next() => match chunk {
                            Some(Ok(c)) => buf.extend_from_slice(&c),
                            _ => return,
                        },
                        _ = tx.closed() => return,
                    }
                }
            });
            return Ok(rx);
        }
        Err(StoreError::Backend(last))
    }

    async fn current_rev(&self) -> Result<Rev> {
        let v = self
            .post(
                "/v3/kv/range",
                json!({"key": b64(b"/"), "count_only": true}),
            )
            .await?;
        Ok(num(&v["header"]["revision"]))
    }

    async fn compact(&self, rev: Rev) -> Result<()> {
        match self
            .post(
                "/v3/kv/compaction",
                json!({"revision": rev.to_string(), "physical": true}),
            )
            .await
        {
            // Compacting to where it already is is fine.
            Err(StoreError::Compacted { .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// Takes the first complete JSON object off the front of `buf`.
fn take_object(buf: &mut Vec<u8>) -> Option<Value> {
    let start = buf.iter().position(|b| !b.is_ascii_whitespace())?;
    let mut de = serde_json::Deserializer::from_slice(&buf[start..]).into_iter::<Value>();
    match de.next() {
        Some(Ok(v)) => {
            let used = start + de.byte_offset();
            buf.drain(..used);
            Some(v)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_and_stream_framing() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        let mut buf = br#"{"result":{"created":true}}
{"result":{"events":[]}}{"res"#
            .to_vec();
        assert_eq!(take_object(&mut buf).unwrap()["result"]["created"], true);
        assert!(take_object(&mut buf).is_some());
        assert!(take_object(&mut buf).is_none());
        assert_eq!(buf, br#"{"res"#);
    }

    /// Against a real etcd (Debian's `etcd-server`) started on 127.0.0.1 for the test.
    #[tokio::test]
    async fn passes_the_store_suite_against_etcd() {
        let Some(etcd) = crate::testing::EtcdServer::start() else {
            return;
        };
        let s = Etcd::new(vec![etcd.url()]);
        crate::store::suite::run(&s).await;
    }
}
