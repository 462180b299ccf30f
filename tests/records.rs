//! Signed DHT records under attack: a plain Kademlia peer PUTs to every node presence records with
//! a broken signature, signed by its own keys under the victim's key, replayed or garbage; and name
//! records claiming a look-alike of a held name, replayed, broken or garbage. Every node rejects
//! each (counted per reason) and still answers with the genuine record.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::inproc::{Peer, config, until};
use commucat::{
    crypto::LocalKeys,
    dht::{
        self,
        record::{self, Presence},
    },
    store::Store,
};
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    kad::{self, Quorum, Record, store::MemoryStore},
    multiaddr::Protocol,
    swarm::SwarmEvent,
};

const WAIT: Duration = Duration::from_secs(90);
const NODES: usize = 4;

fn attacker() -> Swarm<kad::Behaviour<MemoryStore>> {
    common::inproc::raw_swarm(|kp| {
        let id = kp.public().to_peer_id();
        let mut cfg = kad::Config::new(dht::PROTOCOL);
        cfg.set_max_packet_size(dht::MAX_KAD_PACKET);
        kad::Behaviour::with_config(id, MemoryStore::new(id), cfg)
    })
}

/// Drives the attacker's swarm until `done` says so for one of its events.
async fn drive<T>(
    swarm: &mut Swarm<kad::Behaviour<MemoryStore>>,
    mut done: impl FnMut(SwarmEvent<kad::Event>) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = done(swarm.select_next_some().await) {
                return v;
            }
        }
    })
    .await
    .expect("the attacker's query finished")
}

async fn rejected(p: &Peer) -> HashMap<String, f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &p.node().metrics().read().unwrap())
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("commucat_dht_records_rejected_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once('"')?;
            Some((reason.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

async fn newest(p: &Peer, victim: PeerId) -> Option<Presence> {
    p.node().client().presence(victim).await.unwrap()
}

/// `count` nodes with `cfg`, all bootstrapping from the first.
async fn network(mut cfg: commucat::config::Config, count: usize) -> Vec<Peer> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let keys = Arc::new(LocalKeys::generate());
        nodes.push(Peer::start(&cfg, keys, Store::temporary().unwrap()).await);
        if nodes.len() == 1 {
            cfg.bootstrap.peers = vec![nodes[0].addr().await];
        }
    }
    nodes
}

/// The attacker, dialling every node; with their ids.
async fn attacker_at(nodes: &[Peer]) -> (Swarm<kad::Behaviour<MemoryStore>>, Vec<PeerId>) {
    let mut m = attacker();
    m.listen_on(Multiaddr::empty().with(Protocol::Memory(0)))
        .unwrap();
    let mut targets = Vec::new();
    for n in nodes {
        let addr = n.addr().await;
        m.behaviour_mut().add_address(&n.peer_id(), addr.clone());
        m.dial(addr).unwrap();
        targets.push(n.peer_id());
    }
    (m, targets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_presence_records_are_rejected_everywhere() {
    // Republish quickly so that the victim's record gets newer while we watch.
    let mut cfg = config(&[]);
    cfg.presence.republish_secs = 2;
    cfg.presence.ttl_secs = 120;
    let nodes = network(cfg, NODES).await;
    let victim = nodes[NODES - 1].peer_id();
    for n in &nodes {
        until("every node to find the victim's record", WAIT, || async {
            newest(n, victim).await.is_some()
        })
        .await;
    }

    // The attacker connects to every node.
    let (mut m, targets) = attacker_at(&nodes).await;

    // An older genuine record of the victim, taken from the DHT…
    let key = record::key(&victim);
    m.behaviour_mut().get_record(key.clone());
    let old: Record = drive(&mut m, |e| match e {
        SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))),
            ..
        }) => Some(r.record),
        _ => None,
    })
    .await;
    let old_seq = record::seq_of(&old.value).unwrap();
    // …then wait until the victim has published a newer one everywhere.
    for n in &nodes {
        until("the victim's newer record", WAIT, || async {
            newest(n, victim).await.is_some_and(|p| p.seq > old_seq)
        })
        .await;
    }
    let genuine = newest(&nodes[0], victim).await.unwrap();

    // The forgeries.
    let mut bad_sig = old.value.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let mallory = LocalKeys::generate();
    let now = commucat::time::unix_secs();
    let wrong_keys = record::sign(
        &mallory.identity,
        &mallory.bundle.current(),
        genuine.seq + 1000,
        now + 600,
        &genuine.addrs,
    );
    let forgeries = [
        ("bad_signature", bad_sig),
        ("bad_bundle", wrong_keys),
        ("stale", old.value.clone()),
        ("malformed", b"not a presence record".to_vec()),
    ];
    for (_, value) in &forgeries {
        let rec = Record::new(key.clone(), value.clone());
        m.behaviour_mut()
            .put_record_to(rec, targets.iter().copied(), Quorum::All);
        drive(&mut m, |e| match e {
            SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::PutRecord(_),
                ..
            }) => Some(()),
            _ => None,
        })
        .await;
    }

    // Every node rejected every forgery, for the right reason…
    for n in &nodes {
        until("each node to count each rejection", WAIT, || async {
            let r = rejected(n).await;
            forgeries
                .iter()
                .all(|(reason, _)| r.get(*reason).copied().unwrap_or(0.0) >= 1.0)
        })
        .await;
    }
    // …and every node's lookup still returns the genuine newest record.
    for n in &nodes {
        let p = newest(n, victim)
            .await
            .expect("the genuine record is still there");
        assert!(p.seq >= genuine.seq, "a lookup returned an older record");
        assert_eq!(
            p.bundle.id(),
            genuine.bundle.id(),
            "the victim's own key bundle"
        );
        assert_eq!(p.addrs, genuine.addrs);
    }
    for n in nodes {
        n.stop().await;
    }
}

/// Name records (`protocols/names-v1.md`) PUT by a plain Kademlia peer: the owner's genuine record
/// is stored; a look-alike claimed by another key while it lives (`taken`), the owner's older
/// record (`stale`), a broken signature and garbage are rejected by every node, and every node
/// still answers with the owner's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_forged_and_stale_name_records_are_rejected_everywhere() {
    use commucat::{dht::name, identity::Identity, names::Handle};

    let nodes = network(config(&[]), 3).await;
    let (mut m, targets) = attacker_at(&nodes).await;
    let put = async |m: &mut Swarm<kad::Behaviour<MemoryStore>>, value: Vec<u8>| {
        let alice = Handle::parse("alice").unwrap();
        let rec = Record::new(name::key(&alice), value);
        m.behaviour_mut()
            .put_record_to(rec, targets.iter().copied(), Quorum::All);
        drive(m, |e| match e {
            SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::PutRecord(_),
                ..
            }) => Some(()),
            _ => None,
        })
        .await;
    };

    let owner = Identity::generate();
    let mallory = Identity::generate();
    let now = commucat::time::unix_secs();
    let alice = Handle::parse("alice").unwrap();
    let older = name::sign(&owner, &alice, 1, now + 600, false);
    let genuine = name::sign(&owner, &alice, 2, now + 600, false);
    put(&mut m, genuine.clone()).await;
    let mut bad_sig = genuine.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let look_alike = name::sign(
        &mallory,
        &Handle::parse("A1ICE").unwrap(),
        9,
        now + 600,
        false,
    );
    let attacks = [
        ("taken", look_alike),
        ("stale", older),
        ("bad_signature", bad_sig),
        ("malformed", b"not a name record".to_vec()),
    ];
    for (_, value) in &attacks {
        put(&mut m, value.clone()).await;
    }
    for n in &nodes {
        until(
            "each node to count each rejected name record",
            WAIT,
            || async {
                let r = rejected(n).await;
                attacks
                    .iter()
                    .all(|(reason, _)| r.get(*reason).copied().unwrap_or(0.0) >= 1.0)
            },
        )
        .await;
    }
    // Every record the DHT returns for the name is the owner's.
    m.behaviour_mut().get_record(name::key(&alice));
    let mut found = Vec::new();
    drive(&mut m, |e| match e {
        SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { result, step, .. }) => {
            if let kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))) = result {
                found.push(r.record.value);
            }
            step.last.then_some(())
        }
        _ => None,
    })
    .await;
    assert!(!found.is_empty(), "the owner's record is in the DHT");
    for value in found {
        let n = name::verify(name::key(&alice).as_ref(), &value, now).unwrap();
        assert_eq!(
            (n.peer, n.seq),
            (owner.peer_id(), 2),
            "the owner's newest record"
        );
    }
    for n in nodes {
        n.stop().await;
    }
}
