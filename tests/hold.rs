//! `/commucat/hold/1.0.0` (protocols/hold-v1.md) between whole nodes on the memory transport: a
//! node keeps its `bootstrap.min_peers` peers connected while its other idle connections close,
//! and a node held by others refuses holders past its limit and resets a hold that carries bytes.

mod common;

use std::time::Duration;

use common::inproc::{Peer, config, metric, until};
use commucat::{config::Config, node::Event, node::hold};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, swarm::SwarmEvent};

const WAIT: Duration = Duration::from_secs(60);

/// Idle connections close after 1 s on every node here, both sides.
fn short_idle(boot: &[Multiaddr], min_peers: usize) -> Config {
    let mut cfg = config(boot);
    cfg.network.idle_connection_timeout_secs = 1;
    cfg.bootstrap.min_peers = min_peers;
    cfg
}

fn held(p: &Peer, direction: &str) -> f64 {
    metric(
        p.node(),
        &format!("commucat_held_peers{{direction=\"{direction}\"}}"),
    )
}

/// A (`min_peers = 1`) holds B, its bootstrap peer; every node closes idle connections after 1 s.
/// A's connection to C opens and idles out three times over, and B's never closes: without the
/// hold, B's side (and A's) would close it after its first idle second, and A would redial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_peer_stays_connected_while_idle_connections_close() {
    let b = Peer::with_config(&short_idle(&[], 0)).await;
    let c = Peer::with_config(&short_idle(&[], 0)).await;
    let (b_id, c_id, c_addr) = (b.peer_id(), c.peer_id(), c.addr().await);
    let mut b_events = b.app.client().subscribe();
    let a = Peer::with_config(&short_idle(&[b.addr().await], 1)).await;
    let a_id = a.peer_id();
    let mut a_events = a.app.client().subscribe();
    until("A to hold B", WAIT, || async {
        held(&a, "outbound") == 1.0 && held(&b, "inbound") == 1.0
    })
    .await;

    for round in 1..=3 {
        a.app
            .client()
            .connect(c_id, vec![c_addr.clone()])
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match a_events.recv().await.unwrap() {
                    Event::PeerDisconnected { peer_id } if peer_id == c_id => return,
                    Event::PeerDisconnected { peer_id } if peer_id == b_id => {
                        panic!("A's connection to its held peer B closed (round {round})")
                    }
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("A's idle connection to C did not close (round {round})"));
    }
    while let Some(Ok(e)) = b_events.recv().now_or_never() {
        if let Event::PeerDisconnected { peer_id } = e {
            assert_ne!(peer_id, a_id, "B let its holder A go");
        }
    }
    let peers = a.app.client().peers().await.unwrap();
    assert!(
        peers.iter().any(|p| p.peer_id == b_id),
        "A is still connected to B"
    );
    assert_eq!(held(&a, "outbound"), 1.0);
    assert_eq!(held(&b, "inbound"), 1.0);
    for p in [a, b, c] {
        p.stop().await;
    }
}

/// A bare libp2p swarm nobody on the team wrote the handler of: it opens `/commucat/hold/1.0.0`
/// streams with libp2p-stream and does what it likes with them.
struct Raw {
    control: libp2p_stream::Control,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn connect(to: &Multiaddr) -> Raw {
        let mut swarm = common::inproc::raw_swarm(|_| libp2p_stream::Behaviour::new());
        let control = swarm.behaviour().new_control();
        swarm.dial(to.clone()).unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => return,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("the raw swarm connects");
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Raw { control, task }
    }

    async fn hold(&mut self, peer: PeerId) -> Stream {
        self.control
            .open_stream(peer, hold::PROTOCOL)
            .await
            .expect("the node speaks the hold protocol")
    }
}

/// Waits until the node has ended `stream` (closed or reset it).
async fn ended(stream: &mut Stream, what: &str) {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: the node sent {n} bytes on a hold stream"),
        Err(_) => panic!("{what}: the node kept the stream open"),
    }
}

/// B lets `trim_connections_to / 2 = 1` peer hold it. A second holder's stream is reset; a holder
/// that sends a byte has its stream reset and its slot freed, which the second holder then gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_past_the_limit_and_holds_that_carry_bytes_are_reset() {
    let mut cfg = config(&[]);
    cfg.network.trim_connections_above = std::num::NonZero::new(3).unwrap();
    cfg.network.trim_connections_to = 2;
    cfg.bootstrap.min_peers = 0;
    cfg.validate().unwrap();
    let b = Peer::with_config(&cfg).await;
    let (b_id, b_addr) = (b.peer_id(), b.addr().await);
    let mut x = Raw::connect(&b_addr).await;
    let mut y = Raw::connect(&b_addr).await;

    let mut first = x.hold(b_id).await;
    until("B to count X as its holder", WAIT, || async {
        held(&b, "inbound") == 1.0
    })
    .await;
    let mut refused = y.hold(b_id).await;
    ended(&mut refused, "a holder past B's limit").await;
    assert_eq!(held(&b, "inbound"), 1.0, "X still holds B");

    first.write_all(b"x").await.unwrap();
    first.flush().await.unwrap();
    ended(&mut first, "a hold that carried a byte").await;
    until("B to free X's slot", WAIT, || async {
        held(&b, "inbound") == 0.0
    })
    .await;

    let _second = y.hold(b_id).await;
    until("B to accept Y now", WAIT, || async {
        held(&b, "inbound") == 1.0
    })
    .await;
    let peers = b.app.client().peers().await.unwrap();
    assert_eq!(peers.len(), 2, "both raw peers are still connected to B");
    x.task.abort();
    y.task.abort();
    b.stop().await;
}
