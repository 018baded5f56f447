//! The garbage collector: objects whose owners (`metadata.ownerReferences`) are all gone are
//! deleted (background cascading deletion), and owners being deleted in the foreground (finalizer
//! `foregroundDeletion`) go once their dependents are gone. Orphaning is done by the apiserver
//! when the owner is deleted with `propagationPolicy: Orphan`. A pass runs after deletions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::resources::RESOURCES;
use crate::store::{EventKind, Store};

/// Every stored object with its key and revision.
async fn everything(store: &dyn Store) -> Vec<(String, i64, Value)> {
    let mut out = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.stored) {
        if let Ok((kvs, _)) = store.list(&r.prefix(), None).await {
            out.extend(kvs.into_iter().filter_map(|kv| {
                serde_json::from_slice(&kv.value)
                    .ok()
                    .map(|v| (kv.key.clone(), kv.mod_rev, v))
            }));
        }
    }
    out
}

fn owners(o: &Value) -> Vec<&str> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
        .collect()
}

/// Deletes an object the way the API would: one with finalizers is only marked.
async fn delete(store: &dyn Store, key: &str, rev: i64, o: &Value) -> bool {
    let held = o["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if !held {
        return store.delete(key, Some(rev)).await.is_ok();
    }
    if !o["metadata"]["deletionTimestamp"].is_null() {
        return false;
    }
    let mut marked = o.clone();
    marked["metadata"]["deletionTimestamp"] = json!(crate::api::objects::now());
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    store
        .update(key, serde_json::to_vec(&marked).unwrap(), Some(rev))
        .await
        .is_ok()
}

/// One collection pass. Returns whether it changed anything.
pub async fn collect(store: &dyn Store) -> bool {
    let all = everything(store).await;
    let live: HashSet<&str> = all
        .iter()
        .filter_map(|(_, _, o)| o["metadata"]["uid"].as_str())
        .collect();
    let mut changed = false;
    for (key, rev, o) in &all {
        let refs = owners(o);
        if !refs.is_empty()
            && refs.iter().all(|u| !live.contains(u))
            && delete(store, key, *rev, o).await
        {
            tracing::info!(%key, "garbage collected: its owners are gone");
            changed = true;
        }
    }
    // Foreground deletion: the owner waits for its dependents.
    for (key, rev, o) in &all {
        let fg = o["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"));
        if !fg || o["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let uid = o["metadata"]["uid"].as_str().unwrap_or_default();
        let dependents: Vec<&(String, i64, Value)> = all
            .iter()
            .filter(|(_, _, d)| owners(d).contains(&uid))
            .collect();
        if dependents.is_empty() {
            let mut done = o.clone();
            let rest: Vec<Value> = o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| *x != "foregroundDeletion")
                .cloned()
                .collect();
            let result = if rest.is_empty() {
                store.delete(key, Some(*rev)).await.map(|_| ())
            } else {
                done["metadata"]["finalizers"] = json!(rest);
                store
                    .update(key, serde_json::to_vec(&done).unwrap(), Some(*rev))
                    .await
                    .map(|_| ())
            };
            changed |= result.is_ok();
        } else {
            for (dkey, drev, d) in dependents {
                if d["metadata"]["deletionTimestamp"].is_null()
                    && delete(store, dkey, *drev, d).await
                {
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Runs a pass after deletions (and every 30 s), until the process ends.
pub async fn run(store: Arc<dyn Store>) {
    loop {
        let rev = store.current_rev().await.unwrap_or(0);
        while collect(&*store).await {}
        let Ok(mut w) = store.watch("/registry/", rev).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = w.recv() => match ev {
                    Some(e) if e.kind == EventKind::Delete
                        || e.kv.value.windows(18).any(|x| x == b"foregroundDeletion") => break,
                    Some(_) => continue,
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
