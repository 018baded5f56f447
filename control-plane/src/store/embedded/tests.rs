use super::*;
use crate::store::Store;

#[tokio::test]
async fn passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = Embedded::open(dir.path()).unwrap();
    crate::store::suite::run(&s).await;
}

/// Writes made at once share fsyncs, yet each gets its own revision, in order, is seen
/// only once durable, and a write whose caller went away is still made and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Embedded::open(dir.path()).unwrap());
    let mut w = s.watch("/k/", 0).await.unwrap();
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create(&format!("/k/{i}"), b"{}".to_vec()).await })
        })
        .collect();
    let mut revs: Vec<Rev> = Vec::new();
    for w in writes {
        revs.push(w.await.unwrap().unwrap().mod_rev);
    }
    revs.sort();
    assert_eq!(revs, (1..=200).collect::<Vec<_>>());
    // The same key twice at once: one create wins, the other sees it (pending or not).
    let (a, b) = tokio::join!(
        s.create("/k/dup", b"{}".to_vec()),
        s.create("/k/dup", b"{}".to_vec())
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    // Abandoned mid-write: still applied.
    let abandoned = s.create("/k/abandoned", b"{}".to_vec());
    drop(tokio::time::timeout(std::time::Duration::ZERO, abandoned).await);
    let mut seen = Vec::new();
    while seen.len() < 202 {
        seen.push(w.recv().await.unwrap().kv.mod_rev);
    }
    assert_eq!(seen, (1..=202).collect::<Vec<_>>(), "watch order");
    assert!(s.get("/k/abandoned").await.unwrap().is_some());
    drop(w);
    let s = Arc::into_inner(s).unwrap();
    drop(s);
    let s = Embedded::open(dir.path()).unwrap();
    assert_eq!(s.current_rev().await.unwrap(), 202);
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
