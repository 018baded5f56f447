//! A watch cache that any number of reconciles can wait on.
//!
//! kube-runtime's `Store::wait_until_ready` polls one oneshot receiver from every waiter, and a
//! oneshot keeps only the waker of the last poll: of several reconciles waiting for the same
//! cache at once (a controller's runner polls up to one per object), only the last one is
//! woken when the cache has listed, and the others wait forever, holding their objects, so
//! every later change to those objects queues behind them. That is how a new leader's
//! ReplicaSet controller stalled after a takeover. [`Cache::synced`] waits on one shared
//! future instead, which wakes every waiter.

use std::fmt::Debug;
use std::hash::Hash;
use std::ops::Deref;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use kube::runtime::reflector::{Lookup, Store};

use super::Error;

/// A reflector's store, and whether it has listed.
#[derive(Clone)]
pub struct Cache<K: Lookup + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    /// Resolves true when the store has listed, false when its writer went away first.
    listed: Shared<BoxFuture<'static, bool>>,
}

impl<K> Cache<K>
where
    K: Lookup + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    pub fn new(store: Store<K>) -> Self {
        let waiting = store.clone();
        let listed = async move { waiting.wait_until_ready().await.is_ok() }
            .boxed()
            .shared();
        Cache { store, listed }
    }

    /// Waits until the cache has listed; fails when its watch ended before that.
    pub async fn synced(&self) -> Result<(), Error> {
        if self.listed.clone().await {
            Ok(())
        } else {
            Err(Error::Invalid(
                "a cache's watch ended before it listed".into(),
            ))
        }
    }
}

impl<K: Lookup + Clone + 'static> Deref for Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    type Target = Store<K>;

    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

impl<K: Lookup + Clone + 'static> Debug for Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("objects", &self.store.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher;

    use super::*;

    /// Many reconciles wait at once (each polled by the runner before the list arrives); all
    /// of them go on once the cache has listed.
    #[tokio::test]
    async fn every_waiter_is_woken_when_the_cache_has_listed() {
        let (reader, mut writer) = store::<ConfigMap>();
        let cache = Cache::new(reader);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.synced().await })
            })
            .collect();
        // Let every waiter poll (and register its waker) before the list completes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(5), w).await;
            assert!(
                matches!(woke, Ok(Ok(Ok(())))),
                "a waiter was not woken: {woke:?}"
            );
        }
    }

    #[tokio::test]
    async fn waiters_fail_when_the_watch_ends_before_listing() {
        let (reader, writer) = store::<ConfigMap>();
        let cache = Cache::new(reader);
        let waiter = tokio::spawn({
            let c = cache.clone();
            async move { c.synced().await }
        });
        drop(writer);
        let r = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter ended")
            .unwrap();
        assert!(r.is_err());
    }
}
