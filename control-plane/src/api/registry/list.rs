//! List: pages with continue tokens, label and field selectors, `resourceVersionMatch=Exact`,
//! Tables; computed kinds are listed by their strategy.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use super::{decode_kv, json_response, store_error, ApiResult, Request, Store};
use crate::api::resources::Resource;
use crate::api::status::ApiError;
use crate::api::table;
use crate::store::{Rev, StoreError};

impl Store {
    pub async fn list(&self, req: &Request<'_>, ns: Option<&str>) -> ApiResult {
        let r = self.r;
        let (ls, fs) = req.selectors(r)?;
        if !r.stored {
            let items = r.strategy.computed(req).await;
            return Ok(req.list_response(r, items, json!({"resourceVersion": ""})));
        }
        let limit: usize = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
        let (at, start) = match req.param("continue") {
            Some(tok) => {
                let (rev, start) = decode_continue(tok)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
                (Some(rev), Some(start))
            }
            None => match (
                req.param("resourceVersion"),
                req.param("resourceVersionMatch"),
            ) {
                (Some(rv), Some("Exact")) => (Some(parse_rv(rv)?), None),
                _ => (None, None),
            },
        };
        let selecting =
            req.param("labelSelector").is_some() || req.param("fieldSelector").is_some();
        // Without selectors a page is read as a page; with them, every key is filtered.
        let page_limit = if selecting { 0 } else { limit };
        let (kvs, rev, more) = match req
            .store()
            .list_page(&self.prefix(ns), at, start.as_deref(), page_limit)
            .await
        {
            Ok(x) => x,
            Err(StoreError::Compacted { .. }) if start.is_some() => {
                return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            Err(e) => return Err(store_error(r, "", e)),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut has_more = more;
        for kv in &kvs {
            if limit > 0 && items.len() == limit {
                has_more = true;
                break;
            }
            let obj = decode_kv(kv);
            if selecting && !(ls.matches(&obj) && fs.matches(&obj)) {
                continue;
            }
            next = Some(kv.key.clone());
            items.push(obj);
        }
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if has_more {
            if let Some(last) = next {
                // remainingItemCount is optional in Kubernetes; counting would cost a full read.
                meta["continue"] = json!(encode_continue(rev, &last));
            }
        }
        Ok(req.list_response(r, items, meta))
    }
}

impl Request<'_> {
    /// A list of `items`, as a Table when asked.
    pub fn list_response(&self, r: &Resource, items: Vec<Value>, meta: Value) -> Response {
        if self.table {
            let t = table::table(
                r,
                &items,
                meta,
                self.param("includeObject").unwrap_or("Metadata"),
                true,
            );
            return json_response(StatusCode::OK, &t);
        }
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut o| {
                if let Some(m) = o.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"kind": r.list_kind(), "apiVersion": r.api_version(), "metadata": meta, "items": items}),
        )
    }
}

pub fn parse_rv(rv: &str) -> Result<Rev, ApiError> {
    rv.parse::<Rev>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

fn encode_continue(rev: Rev, last_key: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key}).to_string())
}

fn decode_continue(tok: &str) -> Option<(Rev, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(tok).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((v["rv"].as_i64()?, v["start"].as_str()?.to_string()))
}
