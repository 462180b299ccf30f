//! What parts of a simulated node cost in resident memory (a benchmark, not a test): each part is
//! opened `NODE_PARTS_N` times (default 300) in this process, under simnet's allocator (jemalloc),
//! and the growth of VmRSS (`/proc/self/status`) is divided by the count. Prints, per part, KiB
//! per instance and, where there is one, the ratio to a baseline measured in this run:
//! - the temporary sled store every simulated node opens (`Store::temporary`) with a peer book
//!   that `NODE_PARTS_PEERS` peers (default 150) identified twice each — about what one node of
//!   `bursty-join` records — against sled's default segment size (512 KiB) with the same writes;
//! - the same store empty;
//! - a store as simnet gives its nodes (`Store::temporary_in`: `fleet::STORES_PER_DB` stores share
//!   one database),
//!   with the same peer book;
//! - a node identity (`Identity`: Ed25519 keypair, ML-DSA-65 signing key and binding).
//!
//! `cargo bench -p simnet --bench node_parts`. Linux only (reads `/proc/self/status`). Figures
//! from one run are in `simnet/README.md`, "What a node costs".

use std::any::Any;

use commucat::{
    identity::Identity,
    store::{SharedTemporary, Store, peerbook},
};
use libp2p::{Multiaddr, PeerId};
use simnet::fleet::STORES_PER_DB;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// KiB of resident memory per instance that `open` adds, over `n` instances kept alive together.
/// They stay alive in `kept` until the end of the run, so that no part is measured in pages that
/// an earlier one freed.
fn per_instance<T: 'static>(
    kept: &mut Vec<Box<dyn Any>>,
    n: usize,
    mut open: impl FnMut(usize) -> T,
) -> f64 {
    let before = rss_kib();
    let instances: Vec<T> = (0..n).map(&mut open).collect();
    let after = rss_kib();
    kept.push(Box::new(instances));
    after.saturating_sub(before) as f64 / n as f64
}

/// What identify tells a node of peer `i`: the shape of a simulated peer's entry.
fn identified(i: usize) -> (Vec<Multiaddr>, Option<String>) {
    let addrs = vec![
        format!("/ip4/127.0.0.1/tcp/{}", 20000 + i % 40000)
            .parse()
            .expect("a valid address"),
        format!("/memory/{}", 1_000_000 + i)
            .parse()
            .expect("a valid address"),
    ];
    (addrs, Some("commucat/0.1.0".to_string()))
}

/// Records each of `peers` twice in `store`'s peer book, as identify does.
fn fill_peer_book(store: &Store, peers: &[PeerId], limits: peerbook::Limits) {
    let book = store.peer_book(limits).expect("the peer book opens");
    for _ in 0..2 {
        for (i, peer) in peers.iter().enumerate() {
            let (addrs, agent_version) = identified(i);
            book.record(peer, addrs, agent_version, true)
                .expect("the peer book records");
        }
    }
}

fn main() {
    let n = env_usize("NODE_PARTS_N", 300);
    let peers_n = env_usize("NODE_PARTS_PEERS", 150);
    let peers: Vec<PeerId> = (0..peers_n).map(|_| PeerId::random()).collect();
    let limits = peerbook::Limits::from(&peerbook::Config::default());
    println!("{n} instances of each part, peer books of {peers_n} peers identified twice");
    let mut kept = Vec::new();

    // The baseline: the same peer book writes into sled with its default segment size.
    let baseline = per_instance(&mut kept, n, |_| {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(1024 * 1024)
            .flush_every_ms(None)
            .open()
            .expect("sled opens a temporary database");
        let tree = db.open_tree(peerbook::TREE).expect("a tree opens");
        for round in 0..2u64 {
            for (i, peer) in peers.iter().enumerate() {
                let (addrs, agent_version) = identified(i);
                let entry = peerbook::Entry {
                    addrs,
                    last_seen: 1_764_000_000 + round,
                    agent_version,
                    kad_server: true,
                };
                let value = serde_json::to_vec(&entry).expect("entries serialise");
                tree.insert(peer.to_bytes(), value).expect("sled inserts");
            }
        }
        db
    });
    let store = per_instance(&mut kept, n, |_| {
        let store = Store::temporary().expect("a temporary store opens");
        fill_peer_book(&store, &peers, limits);
        store
    });
    let mut shared = None;
    let in_shared = per_instance(&mut kept, n, |i| {
        if i % STORES_PER_DB == 0 {
            shared = Some(SharedTemporary::new(STORES_PER_DB as u64).expect("a database opens"));
        }
        let db = shared.as_ref().expect("opened at i = 0");
        let store = Store::temporary_in(db, &format!("node-{i}")).expect("a store opens");
        fill_peer_book(&store, &peers, limits);
        store
    });
    let empty = per_instance(&mut kept, n, |_| {
        Store::temporary().expect("a temporary store opens")
    });
    let identity = per_instance(&mut kept, n, |i| {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Identity::from_secrets(secret, secret)
    });

    println!(
        "temporary store with its peer book: {store:.0} KiB per node (sled's default segment size: {baseline:.0} KiB; ratio {:.2})",
        store / baseline
    );
    println!(
        "the same, {STORES_PER_DB} stores in one database:  {in_shared:.0} KiB per node (ratio {:.2})",
        in_shared / store
    );
    println!("temporary store, empty:             {empty:.0} KiB per node");
    println!("identity (Ed25519, ML-DSA-65):       {identity:.0} KiB per node");
}
