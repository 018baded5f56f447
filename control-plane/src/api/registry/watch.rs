//! Watch: the initial list (resourceVersion 0 or absent), then the store's events filtered by
//! the selectors (objects moving in are ADDED, out DELETED), bookmarks every 30 s when asked,
//! the timeout, and a 410 in the stream when the revision was compacted.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::list::parse_rv;
use super::{decode_kv, parse_bool, store_error, ApiResult, Request, Store};
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::status::ApiError;
use crate::api::table;
use crate::store::{Event, EventKind, Rev, StoreError};

/// One line of the stream.
fn line(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

impl Store {
    pub async fn watch(
        &self,
        req: &Request<'_>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> ApiResult {
        let r = self.r;
        let (ls, mut fs) = req.selectors(r)?;
        if let Some(n) = name {
            fs = FieldSelector::parse(
                &format!("metadata.name={n}"),
                r.strategy.selectable_fields(),
            )
            .unwrap();
        }
        let prefix = self.prefix(ns);
        let bookmarks = req.param("allowWatchBookmarks").is_some_and(parse_bool);
        let timeout = req
            .param("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800);
        let rv = req.param("resourceVersion").unwrap_or("0");
        let store = req.server.store.clone();
        let mut initial = Vec::new();
        let from: Rev = if rv == "0" {
            let (kvs, rev) = store
                .list(&prefix, None)
                .await
                .map_err(|e| store_error(r, "", e))?;
            initial = kvs
                .iter()
                .map(decode_kv)
                .filter(|o| ls.matches(o) && fs.matches(o))
                .collect();
            rev
        } else {
            parse_rv(rv)?
        };
        let as_table = req.table;
        let include = req.param("includeObject").unwrap_or("Metadata").to_string();
        let w = store.watch(&prefix, from).await;
        let plain = !as_table && ls.is_everything() && fs.is_everything();
        let stream = async_stream::stream! {
            let mut first = true;
            let render = |ty: &str, obj: &Value, first: &mut bool| -> Bytes {
                let o = if as_table {
                    let t = table::table(r, std::slice::from_ref(obj), json!({"resourceVersion": obj["metadata"]["resourceVersion"]}), &include, *first);
                    *first = false;
                    t
                } else {
                    obj.clone()
                };
                line(&json!({"type": ty, "object": o}))
            };
            let mut w = match w {
                Ok(w) => w,
                Err(StoreError::Compacted { requested, current, .. }) => {
                    let e = ApiError::gone(format!("too old resource version: {requested} ({current})"));
                    yield Ok::<_, std::io::Error>(line(&json!({"type": "ERROR", "object": e.body()})));
                    return;
                }
                Err(e) => {
                    let e = ApiError::internal(e.to_string());
                    yield Ok(line(&json!({"type": "ERROR", "object": e.body()})));
                    return;
                }
            };
            for o in initial {
                yield Ok(render("ADDED", &o, &mut first));
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut last_rev = from;
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tokio::select! {
                    ev = w.recv() => {
                        let Some(ev) = ev else { return };
                        last_rev = ev.kv.mod_rev;
                        if plain {
                            // Every watcher of this kind without a selector sends the same line.
                            if let Some(ty) = event_type(&ev) {
                                yield Ok(ev.rendered.get_or_init(|| line(&json!({"type": ty, "object": decode_kv(&ev.kv)}))).clone());
                            }
                        } else if let Some((ty, obj)) = watch_event(&ev, &ls, &fs) {
                            yield Ok(render(ty, &obj, &mut first));
                        }
                    }
                    _ = tick.tick(), if bookmarks => {
                        let b = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": last_rev.to_string()}}});
                        yield Ok(line(&b));
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        };
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

/// The watch event type for a client selecting everything (as `watch_event` decides it).
fn event_type(ev: &Event) -> Option<&'static str> {
    match (ev.kind, ev.prev.is_some()) {
        (EventKind::Delete, true) => Some("DELETED"),
        (EventKind::Delete, false) => None,
        (EventKind::Put, true) => Some("MODIFIED"),
        (EventKind::Put, false) => Some("ADDED"),
    }
}

/// The watch event a store event is for a client with these selectors: objects moving into
/// the selection are ADDED, out of it DELETED.
fn watch_event(
    ev: &Event,
    ls: &LabelSelector,
    fs: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let mut obj = decode_kv(&ev.kv);
    obj["metadata"]["resourceVersion"] = json!(ev.kv.mod_rev.to_string());
    let now = ls.matches(&obj) && fs.matches(&obj);
    let before = ev
        .prev
        .as_ref()
        .map(decode_kv)
        .is_some_and(|p| ls.matches(&p) && fs.matches(&p));
    match ev.kind {
        EventKind::Delete => before.then_some(("DELETED", obj)),
        EventKind::Put => match (before, now) {
            (false, true) => Some(("ADDED", obj)),
            (true, true) => Some(("MODIFIED", obj)),
            (true, false) => Some(("DELETED", obj)),
            (false, false) => None,
        },
    }
}
