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
    let a = Peer::start(
        &cfg,
        Arc::new(LocalKeys::generate()),
        Store::temporary().unwrap(),
    )
    .await;
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
