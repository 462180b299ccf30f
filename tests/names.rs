//! Names people can type, on three real nodes (`protocols/names-v1.md`): A claims `alice`; C
//! resolves it to A and a message sent to the name arrives in A's inbox; B cannot claim `alice`,
//! `ALICE` or the look-alike `a1ice` while A holds it, and can once A released it; a message for the
//! look-alike is not A's to receive.

mod common;

use std::time::Duration;

use common::inproc::{Peer, until};
use commucat::{names::Handle, node::Error, store::Via};

const WAIT: Duration = Duration::from_secs(60);

fn handle(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_name_resolves_receives_messages_and_is_refused_to_others() {
    let a = Peer::new(&[]).await;
    let boot = [a.addr().await];
    let b = Peer::new(&boot).await;
    let c = Peer::new(&boot).await;
    until("A to know both peers", WAIT, || async {
        a.node().client().routing_table().await.unwrap().len() >= 2
    })
    .await;

    a.node().client().claim_name(handle("Alice")).await.unwrap();
    assert_eq!(
        a.node().client().status().await.unwrap().name,
        Some(handle("alice")),
        "status shows the claim"
    );
    until("C to resolve alice to A", WAIT, || async {
        let r = c.node().client().resolve_name(handle("alice")).await;
        matches!(r, Ok(Some(r)) if r.peer_id == a.peer_id())
    })
    .await;

    // C writes to the name: the message arrives at A.
    let to = c
        .node()
        .client()
        .resolve_name(handle("@alice"))
        .await
        .unwrap()
        .unwrap();
    c.data()
        .send_message(to.peer_id, "hi alice".into(), Via::default())
        .await
        .unwrap();
    until("A's inbox to hold C's message", WAIT, || async {
        a.data()
            .inbox()
            .list(0, 10)
            .unwrap()
            .iter()
            .any(|m| m.body == "hi alice" && m.from == c.peer_id())
    })
    .await;

    // `a1ice` is not `alice`, though A holds both.
    assert!(
        c.node()
            .client()
            .resolve_name(handle("a1ice"))
            .await
            .unwrap()
            .is_none()
    );
    // B cannot take the name, in any spelling or look-alike.
    for attempt in ["alice", "ALICE", "a1ice"] {
        match b.node().client().claim_name(handle(attempt)).await {
            Err(Error::NameTaken { owner, .. }) => assert_eq!(owner, a.peer_id(), "{attempt}"),
            other => panic!("B claimed {attempt}: {other:?}"),
        }
    }

    // Released, the name is free for B.
    a.node().client().release_name().await.unwrap();
    assert_eq!(a.node().client().status().await.unwrap().name, None);
    until("B to claim alice once A released it", WAIT, || async {
        b.node().client().claim_name(handle("alice")).await.is_ok()
    })
    .await;
    // A (which never looked the name up, so has nothing cached) now finds B.
    until("A to resolve alice to B", WAIT, || async {
        let r = a.node().client().resolve_name(handle("alice")).await;
        matches!(r, Ok(Some(r)) if r.peer_id == b.peer_id())
    })
    .await;
    for p in [a, b, c] {
        p.stop().await;
    }
}
