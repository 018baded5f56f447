//! Storage for the apiserver: a flat, revisioned key space like etcd's. Every write moves one
//! global revision; each key records the revision that created it and the one that last changed
//! it (that is the object's `resourceVersion`); watches deliver every change after a revision,
//! in order; compaction forgets history before a revision, after which such watches get
//! `Compacted` (the apiserver's 410 Gone).
//!
//! Two backends pass the same suite (`tests`): the embedded store (one crash-safe file) and etcd.

pub mod embedded;
pub mod etcd;

use std::sync::Arc;

use tokio::sync::mpsc;

pub type Rev = i64;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    pub create_rev: Rev,
    pub mod_rev: Rev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv` is the value that was deleted, with `mod_rev` the revision of
/// the deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change (None for a create).
    pub prev: Option<KeyValue>,
    /// The event as a watch line for watchers with no selector, rendered once for all of
    /// them (the clones a store hands its watchers share it).
    pub rendered: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// The key changed since the revision the caller expected.
    #[error("key {key} was modified (now at revision {current})")]
    Conflict { key: String, current: Rev },
    /// History before `compacted` is gone.
    #[error("revision {requested} is compacted (oldest {compacted}, current {current})")]
    Compacted {
        requested: Rev,
        compacted: Rev,
        current: Rev,
    },
    #[error("storage: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Events of one watch, in revision order. The stream ends (None) when the store drops a watcher
/// that fell too far behind or the backend connection ends; clients then watch again.
pub type Watch = mpsc::Receiver<Event>;

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys under `prefix` in key order, as of `at` (None: now), with the revision read.
    async fn list(&self, prefix: &str, at: Option<Rev>) -> Result<(Vec<KeyValue>, Rev)>;
    /// One page of `list`: keys after `start_after`, at most `limit` of them (0: all), and
    /// whether more follow.
    async fn list_page(
        &self,
        prefix: &str,
        at: Option<Rev>,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, Rev, bool)> {
        let (all, rev) = self.list(prefix, at).await?;
        let mut rest: Vec<KeyValue> = all
            .into_iter()
            .filter(|kv| start_after.is_none_or(|s| kv.key.as_str() > s))
            .collect();
        let more = limit > 0 && rest.len() > limit;
        if more {
            rest.truncate(limit);
        }
        Ok((rest, rev, more))
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;
    /// Replaces the value; with `expect`, only if the key is still at that revision.
    async fn update(&self, key: &str, value: Vec<u8>, expect: Option<Rev>) -> Result<KeyValue>;
    /// Deletes the key; with `expect`, only if it is still at that revision. Returns the deleted
    /// value with `mod_rev` set to the revision of the deletion.
    async fn delete(&self, key: &str, expect: Option<Rev>) -> Result<KeyValue>;
    /// Changes under `prefix` after revision `after`.
    async fn watch(&self, prefix: &str, after: Rev) -> Result<Watch>;
    async fn current_rev(&self) -> Result<Rev>;
    /// Forgets history before `rev`.
    async fn compact(&self, rev: Rev) -> Result<()>;
}

#[cfg(test)]
pub(crate) mod suite;
