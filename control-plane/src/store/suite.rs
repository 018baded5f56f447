//! The conformance suite every backend passes: revision order, conditional writes, reads at a
//! revision, watch from a revision, compaction, concurrent writers. Keys live under a prefix of
//! their own so the suite can run against a shared etcd.

use std::time::Duration;

use super::{EventKind, Store, StoreError};

async fn next(w: &mut super::Watch) -> super::Event {
    tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .expect("a watch event within 5 s")
        .expect("the watch stays open")
}

pub async fn run(s: &dyn Store) {
    let p = format!("/suite-{}/", hex::encode(rand::random::<[u8; 4]>()));
    let k = |n: &str| format!("{p}{n}");
    let start = s.current_rev().await.unwrap();

    // Revisions move by one per write; create/mod revisions are kept.
    let a = s.create(&k("a"), b"{\"v\":1}".to_vec()).await.unwrap();
    assert!(a.mod_rev > start);
    assert_eq!(a.create_rev, a.mod_rev);
    assert_eq!(
        s.create(&k("a"), b"{}".to_vec()).await,
        Err(StoreError::AlreadyExists(k("a")))
    );
    let a2 = s
        .update(&k("a"), b"{\"v\":2}".to_vec(), Some(a.mod_rev))
        .await
        .unwrap();
    assert!(a2.mod_rev > a.mod_rev);
    assert_eq!(a2.create_rev, a.create_rev);
    // A stale expectation is a conflict and changes nothing.
    assert!(matches!(
        s.update(&k("a"), b"{\"v\":3}".to_vec(), Some(a.mod_rev)).await,
        Err(StoreError::Conflict { current, .. }) if current == a2.mod_rev
    ));
    assert_eq!(&*s.get(&k("a")).await.unwrap().unwrap().value, b"{\"v\":2}");
    assert!(matches!(
        s.update(&k("nope"), b"{}".to_vec(), None).await,
        Err(StoreError::NotFound(_))
    ));
    let b = s.create(&k("b"), b"{\"b\":true}".to_vec()).await.unwrap();

    // Lists are in key order, now and as of an earlier revision.
    let (items, rev) = s.list(&p, None).await.unwrap();
    assert_eq!(rev, b.mod_rev);
    assert_eq!(
        items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        [k("a"), k("b")]
    );
    let (page, _, more) = s.list_page(&p, Some(rev), None, 1).await.unwrap();
    assert_eq!((page.len(), page[0].key.clone(), more), (1, k("a"), true));
    let (page, _, more) = s.list_page(&p, Some(rev), Some(&k("a")), 1).await.unwrap();
    assert_eq!((page.len(), page[0].key.clone(), more), (1, k("b"), false));
    let (old, _) = s.list(&p, Some(a.mod_rev)).await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(&*old[0].value, b"{\"v\":1}");

    // Watch from a revision: the changes after it, in order, then live ones.
    let mut w = s.watch(&p, a.mod_rev).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.kv.mod_rev), (EventKind::Put, a2.mod_rev));
    assert_eq!(&*e.prev.unwrap().value, b"{\"v\":1}");
    assert_eq!(next(&mut w).await.kv.key, k("b"));
    let d = s.delete(&k("b"), Some(b.mod_rev)).await.unwrap();
    assert_eq!(&*d.value, b"{\"b\":true}");
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.kv.mod_rev), (EventKind::Delete, d.mod_rev));
    assert_eq!(
        &*e.kv.value, b"{\"b\":true}",
        "a delete carries the last value"
    );
    assert!(s.get(&k("b")).await.unwrap().is_none());
    assert!(matches!(
        s.delete(&k("b"), None).await,
        Err(StoreError::NotFound(_))
    ));

    // Concurrent writers: every conditional update either wins once or conflicts.
    let c = s.create(&k("c"), b"{\"n\":0}".to_vec()).await.unwrap();
    let kc = k("c");
    let results = futures_util::future::join_all((0..8).map(|i| {
        s.update(
            &kc,
            format!("{{\"n\":{}}}", i + 1).into_bytes(),
            Some(c.mod_rev),
        )
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Conflict { .. })));
    // Unconditional writers all land, each at its own revision.
    let many: Vec<String> = (0..8).map(|i| k(&format!("many-{i}"))).collect();
    let revs =
        futures_util::future::join_all(many.iter().map(|key| s.create(key, b"{}".to_vec()))).await;
    let mut revs: Vec<i64> = revs.into_iter().map(|r| r.unwrap().mod_rev).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 8);

    // Compaction: older revisions are gone for reads and watches; newer ones stay.
    let now = s.current_rev().await.unwrap();
    s.compact(d.mod_rev).await.unwrap();
    assert!(matches!(
        s.watch(&p, a.mod_rev).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        s.list(&p, Some(a.mod_rev)).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut w = s.watch(&p, d.mod_rev).await.unwrap();
    assert!(next(&mut w).await.kv.mod_rev > d.mod_rev);
    assert_eq!(s.list(&p, Some(now)).await.unwrap().0.len(), 10);
}
