//! Many nodes in one process on the libp2p memory transport: 100 desktop nodes bootstrap from 3
//! bootstrap nodes at once, then every node finds 20 random others through the DHT.
//!
//! 100, not more: the whole network shares the machine's 2 cores in a debug build. At 200 nodes the
//! same code (and the commit before the hardening work alike) saturated them for 5–8 min, Kademlia
//! requests timed out after 10 s and 11 to 837 of 4,000 lookups failed, depending on the machine's
//! speed. Networks of 1,000 run in release builds in simnet (`simnet/scenarios/dht-1000.toml`).

mod common;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use commucat::{
    config::{Config, KadMode, Role},
    crypto::LocalKeys,
    daemon::{self, Daemon},
    node::{FindSource, Node, Transport},
    store::Store,
};
use futures::future::join_all;
use libp2p::{Multiaddr, multiaddr::Protocol};
use rand::seq::SliceRandom;

const BOOTSTRAP_NODES: usize = 3;
const NODES: usize = 100;
const LOOKUPS_PER_NODE: usize = 20;
/// Failure bound for the whole network to bootstrap (it takes ~50 s on 2 cores).
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

fn config(role: Role, bootstrap: &[Multiaddr]) -> Config {
    let mut cfg = Config {
        role,
        ..Config::default()
    };
    cfg.network.listen = vec![Multiaddr::empty().with(Protocol::Memory(0))]; // any free port
    cfg.bootstrap.peers = bootstrap.to_vec();
    // On the memory transport every listen address is reachable by every node, but AutoNAT cannot
    // confirm it (memory dials come from fresh ports), so the simulated nodes are told to serve.
    cfg.kad.mode = KadMode::Server;
    // For the same reason every connection hands AutoNAT v2 a new candidate address, and each
    // probe of one costs 30–100 KB of dial data: 200 nodes probing swamp two cores and lookups
    // time out. No v2 probes (as in simnet's inproc mode).
    cfg.autonat.max_candidates = 0;
    cfg.mdns.enabled = false;
    cfg
}

/// A whole node (swarm and data service) on the memory transport; nothing is sent, so all share
/// one downloads directory.
async fn spawn(cfg: &Config, downloads: &Path) -> Daemon {
    daemon::Builder::new(
        cfg.clone(),
        Arc::new(LocalKeys::generate()),
        Store::temporary().unwrap(),
    )
    .transport(Transport::Memory)
    .downloads(downloads.to_owned())
    .spawn()
    .await
    .expect("node starts")
}

/// Sum of one counter over every node's metrics registry.
fn total(nodes: &[&Node], metric: &str) -> f64 {
    nodes
        .iter()
        .map(|n| common::inproc::metric(n, metric))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_find_each_other() {
    let started = Instant::now();
    let downloads = tempfile::tempdir().unwrap();
    let mut boot = Vec::new();
    let mut boot_addrs = Vec::new();
    for _ in 0..BOOTSTRAP_NODES {
        let node = spawn(&config(Role::Bootstrap, &boot_addrs), downloads.path()).await;
        let status = node.client().status().await.unwrap();
        boot_addrs.push(
            status.listen_addrs[0]
                .clone()
                .with(Protocol::P2p(node.node().peer_id())),
        );
        boot.push(node);
    }
    let cfg = config(Role::Desktop, &boot_addrs);
    let nodes = join_all((0..NODES).map(|_| spawn(&cfg, downloads.path()))).await;

    // Every node has joined: its routing table holds more than the bootstrap nodes.
    let deadline = Instant::now() + JOIN_TIMEOUT;
    for node in &nodes {
        loop {
            let s = node.client().status().await.unwrap();
            if s.routing_table_size > BOOTSTRAP_NODES {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node never got past its bootstrap peers: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let joined = started.elapsed();

    let ids: Vec<_> = nodes.iter().map(|n| n.node().peer_id()).collect();
    let lookups = nodes.iter().enumerate().map(|(i, node)| {
        let mut targets: Vec<_> = ids.iter().copied().filter(|p| *p != ids[i]).collect();
        targets.shuffle(&mut rand::rng());
        targets.truncate(LOOKUPS_PER_NODE);
        let client = node.client().clone();
        async move {
            let mut failed = Vec::new();
            for target in targets {
                match client.find_peer(target).await {
                    Ok(found) if found.source == FindSource::Dht && !found.addrs.is_empty() => {}
                    other => failed.push((target, format!("{other:?}"))),
                }
            }
            failed
        }
    });
    let lookups_started = Instant::now();
    let failed: Vec<_> = join_all(lookups).await.into_iter().flatten().collect();
    let all: Vec<&Node> = nodes.iter().chain(&boot).map(Daemon::node).collect();
    eprintln!(
        "{} nodes joined in {joined:?}; {} lookups in {:?}, {} failed; FIND_NODE requests served: {}",
        NODES + BOOTSTRAP_NODES,
        NODES * LOOKUPS_PER_NODE,
        lookups_started.elapsed(),
        failed.len(),
        total(&all, "commucat_libp2p_kad_inbound_requests_total"),
    );
    assert!(
        failed.is_empty(),
        "{} of {} lookups did not reach their target through the DHT, e.g. {:?}",
        failed.len(),
        NODES * LOOKUPS_PER_NODE,
        &failed[..failed.len().min(3)]
    );

    for stopped in join_all(nodes.into_iter().chain(boot).map(Daemon::shutdown)).await {
        stopped.expect("the database flushes");
    }
}
