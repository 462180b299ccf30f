use super::*;
use std::sync::Arc;

/// A database closed while another open waits for it is opened; one that stays open is
/// refused as locked once [`LOCK_WAIT`] has passed.
#[test]
fn opening_waits_a_moment_for_the_lock_then_says_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), Options::cache(8)).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
    });
    let second = Store::open(dir.path(), Options::cache(8)).expect("opened once released");
    closer.join().unwrap();
    match Store::open(dir.path(), Options::cache(8)) {
        Err(Error::Locked(d)) => assert_eq!(d, dir.path()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a database that is open"),
    }
    drop(second);
}

/// Many commits at once, on many databases, as simnet's nodes made them when they stopped
/// together (and a busy node makes them: an ACK per received message, a flush per queued one).
/// sled 0.34.7's `flush_async` runs each flush on sled's own thread pool, where the flushes wait
/// for writes queued behind them on the same pool, and the pool stops growing: they never finish
/// (spacejam/sled#1308). Commits flush on tokio's blocking threads instead.
///
/// Before the fix the runtime's workers blocked inside sled, so no tokio timer could end the
/// test: a plain thread waits for the answer instead.
#[test]
fn concurrent_commits_all_finish() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = rt.handle().clone();
    std::thread::spawn(move || {
        let _ = tx.send(handle.block_on(commit_on_many_stores_at_once()));
    });
    let answer = rx.recv_timeout(Duration::from_secs(60));
    rt.shutdown_background();
    let lens = answer.expect("concurrent commits finish within 60 s (sled's flush_async hung)");
    assert_eq!(lens, vec![80; 32], "every message of every store is there");
}

/// 32 stores, 80 commits each, all started at once; the inbox length of each store.
async fn commit_on_many_stores_at_once() -> Vec<usize> {
    let stores: Vec<_> = (0..32)
        .map(|_| Arc::new(Store::temporary().unwrap()))
        .collect();
    let mut commits = tokio::task::JoinSet::new();
    for round in 0..20u64 {
        for (s, store) in stores.iter().enumerate() {
            for i in 0..4u64 {
                let store = store.clone();
                let msg_id = [round, s as u64 * 4 + i].map(u64::to_be_bytes).concat();
                commits.spawn(async move {
                    let data = crate::wire::Data {
                        epoch: 1,
                        seq: 1,
                        msg_id: msg_id.try_into().unwrap(),
                        sent_at_ms: 0,
                        via: Default::default(),
                        group: None,
                        body: "x".repeat(4096),
                    };
                    store.inbox()?.accept(&libp2p::PeerId::random(), &data)?;
                    store.commit().await
                });
            }
        }
    }
    while let Some(done) = commits.join_next().await {
        done.unwrap().unwrap();
    }
    stores.iter().map(|s| s.inbox().unwrap().len()).collect()
}

/// Stores that share one database (simulated nodes) see only their own trees: what one queues,
/// receives and keeps in `meta` the other does not, and each counts only its own.
#[tokio::test]
async fn stores_sharing_a_database_stay_apart() {
    let shared = SharedTemporary::new(2).unwrap();
    let (a, b) = (
        Store::temporary_in(&shared, "node-0").unwrap(),
        Store::temporary_in(&shared, "node-1").unwrap(),
    );
    let peer = libp2p::PeerId::random();
    for body in ["one", "two"] {
        a.outbox()
            .unwrap()
            .enqueue(peer, body.into(), Default::default())
            .unwrap();
    }
    let data = crate::wire::Data {
        epoch: 1,
        seq: 1,
        msg_id: [7; 16],
        sent_at_ms: 0,
        via: Default::default(),
        group: None,
        body: "hello".into(),
    };
    b.inbox().unwrap().accept(&peer, &data).unwrap();
    a.commit().await.unwrap();
    b.commit().await.unwrap();

    assert_eq!(a.outbox().unwrap().queued(), 2);
    assert_eq!(b.outbox().unwrap().queued(), 0);
    assert_eq!((a.inbox().unwrap().len(), b.inbox().unwrap().len()), (0, 1));
    assert_ne!(
        a.outbox().unwrap().epoch(),
        b.outbox().unwrap().epoch(),
        "each store has its own outbox epoch in its own meta tree"
    );
    let counts = |s: &Store| Counts::of(&s.db);
    assert_eq!((counts(&a).queued, counts(&a).inbox), (2, 0));
    assert_eq!((counts(&b).queued, counts(&b).inbox), (0, 1));
    // A store of its own keeps the names protocols/store-v1.md gives its trees.
    let own = Store::temporary().unwrap();
    own.outbox().unwrap();
    assert!(own.db.exists(outbox::TREE));
    assert!(shared.trees("node-0").exists(outbox::TREE));
    assert!(!shared.trees("node-2").exists(outbox::TREE));
}
