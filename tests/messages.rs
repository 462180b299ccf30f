//! Reliable messages between whole nodes (in process, memory transport, real sessions and sled
//! stores): order, exactly-once, and delivery to a peer that comes online later.

mod common;

use std::{sync::Arc, time::Duration};

use common::inproc::{Peer, config, until};
use commucat::{crypto::LocalKeys, data, store::Store};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_once_and_in_order() {
    let b = Peer::new(&[]).await;
    let a = Peer::new(&[b.addr().await]).await;
    for i in 0..1000 {
        a.data()
            .send_message(
                b.peer_id(),
                format!("message {i}"),
                commucat::store::Via::default(),
            )
            .await
            .unwrap();
    }
    until("B to hold 1000 messages", WAIT, || async {
        b.data().inbox().len() >= 1000
    })
    .await;
    until("A's outbox to empty", WAIT, || async {
        a.data().outbox().queued() == 0
    })
    .await;

    let got = b.data().inbox().list(0, 2000).unwrap();
    let bodies: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    let want: Vec<String> = (0..1000).map(|i| format!("message {i}")).collect();
    assert_eq!(bodies, want, "each message once, in the order sent");
    assert!(got.iter().all(|m| m.from == a.peer_id()));
    let delivered = a.data().outbox().list(2000).unwrap();
    assert_eq!(delivered.len(), 1000);
    assert!(
        delivered
            .iter()
            .all(|e| e.state == commucat::store::outbox::State::Delivered)
    );
    // Each session ran the hybrid handshake to the end on both sides.
    assert!(a.data().counters().post_quantum() >= 1);
    assert!(b.data().counters().post_quantum() >= 1);

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_an_offline_peer_arrive_when_it_comes_online() {
    let boot = Peer::new(&[]).await;
    let boot_addr = boot.addr().await;
    let a = Peer::new(std::slice::from_ref(&boot_addr)).await;
    // B exists (A knows its PeerId) but is not running yet.
    let b_keys = Arc::new(LocalKeys::generate());
    let b_id = b_keys.peer_id();
    let mut events = a.data().subscribe();
    for i in 0..50 {
        a.data()
            .send_message(
                b_id,
                format!("while you were away {i}"),
                commucat::store::Via::default(),
            )
            .await
            .unwrap();
    }
    // A tries, fails (B is nowhere), backs off and tries again.
    let mut failures = 0;
    tokio::time::timeout(WAIT, async {
        while failures < 2 {
            if let Ok(data::Event::DeliveryFailed { to, .. }) = events.recv().await
                && to == b_id
            {
                failures += 1;
            }
        }
    })
    .await
    .expect("two failed delivery attempts");
    assert_eq!(
        a.data().outbox().queued(),
        50,
        "nothing delivered while B is offline"
    );

    let b = Peer::start(&config(&[boot_addr]), b_keys, Store::temporary().unwrap()).await;
    until("B to receive all 50", WAIT, || async {
        b.data().inbox().len() == 50
    })
    .await;
    until("A's outbox to empty", WAIT, || async {
        a.data().outbox().queued() == 0
    })
    .await;
    let bodies: Vec<String> = b
        .data()
        .inbox()
        .list(0, 100)
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        bodies,
        (0..50)
            .map(|i| format!("while you were away {i}"))
            .collect::<Vec<_>>()
    );

    for p in [a, b, boot] {
        p.stop().await;
    }
}

/// Past its connection manager's high-water mark a node closes its longest-connected idle peers,
/// so it can still reach the peer it has a message for. (simnet `groups-300` found desktops that
/// had filled `max_connections` with the peers of DHT lookups and could dial nobody else.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_full_of_connections_trims_idle_ones_and_still_delivers_to_everyone() {
    let mut cfg = config(&[]);
    cfg.network.max_connections = std::num::NonZero::new(5).unwrap();
    cfg.network.trim_connections_above = std::num::NonZero::new(3).unwrap();
    cfg.network.trim_connections_to = 2;
    cfg.network.trim_grace_secs = 0;
    cfg.validate().unwrap();
    let a = Peer::with_config(&cfg).await;
    let a_addr = a.addr().await;
    // Eight peers join through A: more than A may hold at once.
    let mut others = Vec::new();
    for _ in 0..8 {
        others.push(Peer::new(std::slice::from_ref(&a_addr)).await);
    }
    for (i, p) in others.iter().enumerate() {
        a.data()
            .send_message(
                p.peer_id(),
                format!("to {i}"),
                commucat::store::Via::default(),
            )
            .await
            .unwrap();
    }
    for (i, p) in others.iter().enumerate() {
        until(&format!("peer {i} to hold A's message"), WAIT, || async {
            p.data()
                .inbox()
                .list(0, 10)
                .unwrap()
                .iter()
                .any(|m| m.body == format!("to {i}"))
        })
        .await;
    }
    let trimmed = common::inproc::metric(a.node(), "commucat_connections_trimmed_total");
    assert!(
        trimmed >= 1.0,
        "A closed connections to make room: {trimmed}"
    );
    let connected = a.app.client().peers().await.unwrap().len();
    assert!(
        connected <= 5,
        "never more than max_connections: {connected}"
    );
    for p in others {
        p.stop().await;
    }
    a.stop().await;
}

/// A message in the outbox whose wake never reached the delivery manager (wakes are never waited
/// for: a full wake queue drops them, as a restart with more peers pending than the queue holds
/// once did) is still delivered: the manager sweeps the outbox every `SWEEP_INTERVAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_whose_wake_was_lost_is_still_delivered() {
    let b = Peer::new(&[]).await;
    let a = Peer::new(&[b.addr().await]).await;
    // Connected first: a new connection to a peer with something queued wakes its worker too.
    until("A to be connected to B", WAIT, || async {
        (a.app.client().peers().await.unwrap().iter()).any(|p| p.peer_id == b.peer_id())
    })
    .await;
    // Straight into A's outbox, as the data service stores a message, without the wake.
    let outbox = a.store().outbox().unwrap();
    outbox
        .enqueue(
            b.peer_id(),
            "no wake".into(),
            commucat::store::Via::default(),
        )
        .unwrap();
    until("B to hold the message", WAIT, || async {
        b.data()
            .inbox()
            .list(0, 10)
            .unwrap()
            .iter()
            .any(|m| m.body == "no wake")
    })
    .await;
    assert_eq!(b.data().inbox().len(), 1, "once");
    a.stop().await;
    b.stop().await;
}

/// Sends `n` messages from `from` to `to` (`tag` in each body) and waits until `to` holds them;
/// returns the bodies `to` received from `from`, in inbox order.
async fn exchange(from: &Peer, to: &Peer, tag: &str, n: usize, pad: usize) -> Vec<String> {
    let before = to.data().inbox().len();
    for i in 0..n {
        from.data()
            .send_message(
                to.peer_id(),
                format!("{tag} {i} {}", "x".repeat(pad)),
                commucat::store::Via::default(),
            )
            .await
            .unwrap();
    }
    until(&format!("{tag}: {n} messages to arrive"), WAIT, || async {
        to.data().inbox().len() >= before + n
    })
    .await;
    let got = to.data().inbox().list(0, 10_000).unwrap();
    got.iter()
        .filter(|m| m.from == from.peer_id())
        .map(|m| m.body.clone())
        .collect()
}

fn expected(tag: &str, n: usize, pad: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{tag} {i} {}", "x".repeat(pad)))
        .collect()
}

/// data-v2.md §1: a node that speaks only version 1 and one that speaks version 2 exchange
/// messages both ways, every session in version 1 (the version 2 node falls back after the
/// version 1 node's UNSUPPORTED_VERSION, and answers its version 1 HELLO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_node_and_a_version_2_node_exchange_messages_both_ways() {
    let mut cfg = config(&[]);
    cfg.data.protocol_version = 1;
    let old = Peer::with_config(&cfg).await;
    let new = Peer::new(&[old.addr().await]).await;
    assert_eq!(
        exchange(&new, &old, "to old", 20, 0).await,
        expected("to old", 20, 0)
    );
    assert_eq!(
        exchange(&old, &new, "to new", 20, 0).await,
        expected("to new", 20, 0)
    );
    for (who, p) in [("old", &old), ("new", &new)] {
        let c = p.data().counters();
        assert!(
            c.sessions(1) >= 2,
            "{who}: {} version 1 sessions",
            c.sessions(1)
        );
        assert_eq!(c.sessions(2), 0, "{who}: no version 2 session");
    }
    // Two version 2 nodes speak version 2.
    let newer = Peer::new(&[new.addr().await]).await;
    assert_eq!(
        exchange(&newer, &new, "v2", 5, 0).await,
        expected("v2", 5, 0)
    );
    assert!(newer.data().counters().sessions(2) >= 1);
    for p in [old, new, newer] {
        p.stop().await;
    }
}

/// data-v2.md §5: a session that sends more than `data.rekey_bytes` updates its keys with fresh
/// ML-KEM-768 material while messages flow, and every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_updates_its_keys_as_it_goes_and_loses_no_message() {
    let mut cfg = config(&[]);
    cfg.data.rekey_bytes = 4096;
    let b = Peer::with_config(&cfg).await;
    cfg.bootstrap.peers = vec![b.addr().await];
    let a = Peer::with_config(&cfg).await;
    // 200 messages of ~1 KiB: a key update due every 4 of them.
    assert_eq!(
        exchange(&a, &b, "rekeyed", 200, 1000).await,
        expected("rekeyed", 200, 1000),
        "every message once, in the order sent"
    );
    until("A's outbox to empty", WAIT, || async {
        a.data().outbox().queued() == 0
    })
    .await;
    let (ia, rb) = (
        a.data().counters().key_updates(),
        b.data().counters().key_updates(),
    );
    assert!(ia >= 3, "the sender finished {ia} key updates");
    assert!(rb >= 2, "the receiver finished {rb} key updates");
    a.stop().await;
    b.stop().await;
}
