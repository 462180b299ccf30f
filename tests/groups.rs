//! Groups on real nodes (`protocols/groups-v1.md`): in-process nodes on the memory transport, each
//! a whole node with its data service. A group of four among five nodes: messages from three
//! senders reach every member exactly once, in each sender's order; a member offline meanwhile
//! gets everything when it returns; a removed member gets nothing sent after its removal and what
//! it sends afterwards is refused.

mod common;

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use common::inproc::{Peer, config, until};
use commucat::{
    crypto::LocalKeys,
    groups::{GroupId, Op},
    store::{self, Store, inbox},
    wire::{GroupTag, Via, group_kind},
};
use libp2p::{Multiaddr, PeerId};

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
    // Printed each time it changes: a failed run shows what each member held last (once, in a
    // full run of the suite, the members of the last test below had not agreed after 120 s).
    let last = std::sync::Mutex::new(Vec::new());
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
        let mut last = last.lock().unwrap();
        if *last != heads {
            let shown: Vec<String> = (heads.iter())
                .map(|h| match h {
                    Some((head, n)) => format!(
                        "seq {} {} ({n} members)",
                        head.seq,
                        hex::encode(&head.digest[..4])
                    ),
                    None => "no log".into(),
                })
                .collect();
            eprintln!("the members hold: {}", shown.join(", "));
            *last = heads.clone();
        }
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

/// A node whose database is kept in `dir`, so that it can stop and come back as itself.
struct Durable {
    keys: Arc<LocalKeys>,
    dir: std::path::PathBuf,
}

impl Durable {
    fn new(dir: &Path) -> Self {
        Self {
            keys: Arc::new(LocalKeys::generate()),
            dir: dir.to_owned(),
        }
    }

    async fn start(&self, boot: &Multiaddr) -> Peer {
        let store = Store::open(&self.dir, store::Options::cache(8)).unwrap();
        Peer::start(
            &config(std::slice::from_ref(boot)),
            self.keys.clone(),
            store,
        )
        .await
    }
}

async fn wait_member_count(p: &Peer, group: GroupId, n: usize) {
    until("the group to have its members", WAIT, || async {
        p.data()
            .groups()
            .get(&group)
            .is_ok_and(|g| g.members.len() == n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_offline_meanwhile_gets_all_fifty_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = Peer::new(&[]).await;
    let boot_addr = boot.addr().await;
    let a = Peer::new(std::slice::from_ref(&boot_addr)).await;
    let b = Peer::new(std::slice::from_ref(&boot_addr)).await;
    let d_node = Durable::new(tmp.path());
    let d = d_node.start(&boot_addr).await;
    let g = a.data().groups().create("with one away").await.unwrap();
    for m in [&b, &d] {
        a.data()
            .groups()
            .change(g.id, Op::Add(m.peer_id()))
            .await
            .unwrap();
    }
    members_agree(&[&a, &b, &d], g.id, 3).await;

    d.stop().await;
    let mut sent = Vec::new();
    for i in 0..50 {
        let body = format!("while D was away {i}");
        a.data().groups().send(g.id, body.clone()).await.unwrap();
        sent.push(body);
    }
    until("B to get the 50", WAIT, || async {
        group_inbox(&b, g.id).len() == 50
    })
    .await;

    let d = d_node.start(&boot_addr).await;
    until("D to get the 50 after it returns", WAIT, || async {
        group_inbox(&d, g.id).len() >= 50
    })
    .await;
    assert_exactly_once_in_order(
        &group_inbox(&d, g.id),
        &HashMap::from([(a.peer_id(), sent)]),
    );
    for p in [a, b, d, boot] {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_gets_nothing_after_its_removal_and_is_refused() {
    let boot = Peer::new(&[]).await;
    let boot_addr = boot.addr().await;
    let a = Peer::new(std::slice::from_ref(&boot_addr)).await;
    let b = Peer::new(std::slice::from_ref(&boot_addr)).await;
    let c = Peer::new(std::slice::from_ref(&boot_addr)).await;
    let g = a.data().groups().create("one goes").await.unwrap();
    for m in [&b, &c] {
        a.data()
            .groups()
            .change(g.id, Op::Add(m.peer_id()))
            .await
            .unwrap();
    }
    members_agree(&[&a, &b, &c], g.id, 3).await;
    a.data().groups().send(g.id, "before".into()).await.unwrap();
    until("C to get the message before its removal", WAIT, || async {
        group_inbox(&c, g.id).len() == 1
    })
    .await;

    a.data()
        .groups()
        .change(g.id, Op::Remove(c.peer_id()))
        .await
        .unwrap();
    wait_member_count(&b, g.id, 2).await;
    wait_member_count(&c, g.id, 2).await;
    for i in 0..10 {
        a.data()
            .groups()
            .send(g.id, format!("after {i}"))
            .await
            .unwrap();
    }
    until("B to get what was sent after the removal", WAIT, || async {
        group_inbox(&b, g.id).len() == 11
    })
    .await;
    assert!(
        c.data()
            .groups()
            .send(g.id, "still here?".into())
            .await
            .is_err(),
        "C's own node knows it is out"
    );
    // C sends anyway, as a node that does not care would: a group message straight into its
    // outbox, then a plain message behind it (which wakes delivery and arrives after it).
    let head = c.data().groups().get(&g.id).unwrap().head;
    let tag = GroupTag {
        group: g.id.0,
        kind: group_kind::MESSAGE,
        sender_seq: 99,
        head_seq: head.seq,
        head_digest: head.digest,
    };
    c.data()
        .outbox()
        .enqueue_tagged(
            b.peer_id(),
            "from a removed member".into(),
            Via::default(),
            Some(tag),
        )
        .unwrap();
    c.data()
        .send_message(b.peer_id(), "plain, after it".into(), Via::default())
        .await
        .unwrap();
    until("B to get C's plain message", WAIT, || async {
        b.data()
            .inbox()
            .list(0, 1000)
            .unwrap()
            .iter()
            .any(|m| m.body == "plain, after it")
    })
    .await;
    assert!(
        !b.data()
            .inbox()
            .list(0, 1000)
            .unwrap()
            .iter()
            .any(|m| m.body == "from a removed member"),
        "B refused the removed member's group message"
    );
    assert!(
        group_inbox(&c, g.id).iter().all(|m| m.2 == "before"),
        "C got nothing sent after its removal"
    );
    for p in [a, b, c, boot] {
        p.stop().await;
    }
}

/// A and B, both admins, change the group without seeing each other's changes (each offline
/// while the other acts): A removes C and adds E, B removes D and adds F. Back together, every
/// member holds the same log and the same members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_apart_change_the_group_and_every_member_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = Peer::new(&[]).await;
    let boot_addr = boot.addr().await;
    let (a_node, b_node) = (
        Durable::new(&tmp.path().join("a")),
        Durable::new(&tmp.path().join("b")),
    );
    let a = a_node.start(&boot_addr).await;
    let b = b_node.start(&boot_addr).await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Peer::new(std::slice::from_ref(&boot_addr)).await);
    }
    let (c, d, e, f) = (&others[0], &others[1], &others[2], &others[3]);
    let g = a.data().groups().create("two admins").await.unwrap();
    for m in [&b, c, d] {
        a.data()
            .groups()
            .change(g.id, Op::Add(m.peer_id()))
            .await
            .unwrap();
    }
    a.data()
        .groups()
        .change(g.id, Op::Admin(b.peer_id()))
        .await
        .unwrap();
    members_agree(&[&a, &b, c, d], g.id, 4).await;
    until("B to be an admin in its own log", WAIT, || async {
        b.data()
            .groups()
            .get(&g.id)
            .is_ok_and(|i| i.admins.len() == 2)
    })
    .await;

    b.stop().await;
    a.data()
        .groups()
        .change(g.id, Op::Remove(c.peer_id()))
        .await
        .unwrap();
    a.data()
        .groups()
        .change(g.id, Op::Add(e.peer_id()))
        .await
        .unwrap();
    a.stop().await;
    let b = b_node.start(&boot_addr).await;
    b.data()
        .groups()
        .change(g.id, Op::Remove(d.peer_id()))
        .await
        .unwrap();
    b.data()
        .groups()
        .change(g.id, Op::Add(f.peer_id()))
        .await
        .unwrap();
    let a = a_node.start(&boot_addr).await;

    members_agree(&[&a, &b, e, f], g.id, 4).await;
    let members = a.data().groups().get(&g.id).unwrap().members;
    let expect: std::collections::BTreeSet<PeerId> =
        [&a, &b, e, f].iter().map(|p| p.peer_id()).collect();
    assert_eq!(
        members
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        expect
    );
    for p in [a, b, boot] {
        p.stop().await;
    }
    for p in others {
        p.stop().await;
    }
}
