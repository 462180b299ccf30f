//! Groups on real nodes (`protocols/groups-v1.md`): in-process nodes on the memory transport, each
//! a whole node with its data service. A group of four among five nodes: messages from three
//! senders reach every member exactly once, in each sender's order; a member offline meanwhile
//! gets everything when it returns; a removed member gets nothing sent after its removal and what
//! it sends afterwards is refused.

mod common;

use std::{collections::HashMap, time::Duration};

use common::inproc::{Peer, until};
use commucat::{
    groups::{GroupId, Op},
    store::inbox,
};
use libp2p::PeerId;

const WAIT: Duration = Duration::from_secs(120);

/// The group messages in `p`'s inbox for `group`: (sender, sender's number, body), in inbox order.
fn group_inbox(p: &Peer, group: GroupId) -> Vec<(PeerId, u64, String)> {
    p.data()
        .inbox()
        .list(0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|m: inbox::Message| {
            let tag = m.group?;
            (tag.group == group.0).then_some((m.from, tag.sender_seq, m.body))
        })
        .collect()
}

/// Every message of every sender arrived once, and each sender's in its order.
fn assert_exactly_once_in_order(
    got: &[(PeerId, u64, String)],
    expect: &HashMap<PeerId, Vec<String>>,
) {
    for (sender, bodies) in expect {
        let from: Vec<&(PeerId, u64, String)> = got.iter().filter(|m| m.0 == *sender).collect();
        let texts: Vec<&str> = from.iter().map(|m| m.2.as_str()).collect();
        let want: Vec<&str> = bodies.iter().map(String::as_str).collect();
        assert_eq!(texts, want, "from {sender}: exactly once, in order");
        assert!(from.windows(2).all(|w| w[0].1 < w[1].1), "numbers increase");
    }
    let total: usize = expect.values().map(Vec::len).sum();
    assert_eq!(got.len(), total, "nothing else arrived");
}

async fn five() -> Vec<Peer> {
    let first = Peer::new(&[]).await;
    let boot = [first.addr().await];
    let mut peers = vec![first];
    for _ in 0..4 {
        peers.push(Peer::new(&boot).await);
    }
    until("every node to know the others", WAIT, || async {
        let mut ok = true;
        for p in &peers {
            ok &= p.node().client().routing_table().await.unwrap().len() >= 4;
        }
        ok
    })
    .await;
    peers
}

async fn members_agree(peers: &[&Peer], group: GroupId, n: usize) {
    until("the members to hold the same log", WAIT, || async {
        let heads: Vec<_> = peers
            .iter()
            .map(|p| {
                p.data()
                    .groups()
                    .get(&group)
                    .ok()
                    .map(|g| (g.head, g.members.len()))
            })
            .collect();
        heads.iter().all(|h| h.is_some() && *h == heads[0]) && heads[0].unwrap().1 == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_four_gets_every_message_once_in_each_senders_order() {
    let peers = five().await;
    let (a, b, c, d, e) = (&peers[0], &peers[1], &peers[2], &peers[3], &peers[4]);
    let g = a.data().groups().create("four of five").await.unwrap();
    for m in [b, c, d] {
        a.data()
            .groups()
            .change(g.id, Op::Add(m.peer_id()))
            .await
            .unwrap();
    }
    members_agree(&[a, b, c, d], g.id, 4).await;

    let mut sent: HashMap<PeerId, Vec<String>> = HashMap::new();
    for i in 0..200 {
        let sender = [a, b, c][i % 3];
        let body = format!("message {i} from {}", sender.peer_id());
        sender
            .data()
            .groups()
            .send(g.id, body.clone())
            .await
            .unwrap();
        sent.entry(sender.peer_id()).or_default().push(body);
    }
    for member in [a, b, c, d] {
        let me = member.peer_id();
        let expect: HashMap<PeerId, Vec<String>> = sent
            .iter()
            .filter(|(s, _)| **s != me)
            .map(|(s, v)| (*s, v.clone()))
            .collect();
        let total: usize = expect.values().map(Vec::len).sum();
        until("a member to have every message", WAIT, || async {
            group_inbox(member, g.id).len() >= total
        })
        .await;
        assert_exactly_once_in_order(&group_inbox(member, g.id), &expect);
    }
    assert!(
        group_inbox(e, g.id).is_empty(),
        "the fifth node is no member"
    );
    assert!(e.data().groups().get(&g.id).is_err(), "nor holds the log");
    for p in peers {
        p.stop().await;
    }
}
