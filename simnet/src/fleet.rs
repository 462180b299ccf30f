//! The nodes of an inproc run that this process runs: each a real `commucat` node (libp2p swarm,
//! Kademlia, the data service with its sled store) on the libp2p memory transport (every node in
//! this process) or on TCP (a run split over processes, `simnet::team`), shaped by the scenario's
//! link model (`link.rs`). Churn stops a node and starts it again with the same keys, store and
//! address.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use commucat::{
    config::{Config, KadMode, Role as NodeRole},
    crypto::LocalKeys,
    daemon::{self, Daemon},
    node::Event,
    store::{SharedTemporary, Store},
};
use futures::{StreamExt, stream};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle, time::Instant};

use crate::{
    files,
    link::{Link, Security},
    meter,
    plan::Plan,
    scenario::{Role, Scenario},
    team::Team,
    track::{self, Tracker},
};

/// Nodes started at once.
pub const START_CONCURRENCY: usize = 16;
/// Inbound connections from one address a node of a split run accepts: every node of a host
/// dials from the same address.
pub const SPLIT_CONNECTIONS_PER_IP: u32 = 1 << 16;
/// How long a node may take to show its routing table.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to stop or start during churn.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// Nodes whose stores share one in-memory sled database, each under its own tree names
/// (`commucat::store::SharedTemporary`): a database of its own cost a node ~250 KiB before it
/// held anything (simnet/README.md, "Toward `dht-10000`").
pub const STORES_PER_DB: usize = 64;

/// Memory-transport ports handed out in this process: each node keeps its port across restarts,
/// as a desktop keeps its TCP port.
static NEXT_PORT: AtomicU64 = AtomicU64::new(1 << 40);

/// How a node's connections are made: the link model with its seed, the security upgrade, and
/// over TCP (a split run) or memory.
#[derive(Clone, Copy)]
pub struct Wire {
    link: Link,
    seed: u64,
    pub security: Security,
    tcp: bool,
}

/// A simulated node while it is online.
pub type Running = Daemon;

/// A simulated node: what survives a restart, and the running node when it is online.
pub struct Slot {
    keys: Arc<LocalKeys>,
    pub store: Store,
    cfg: Config,
    downloads: tempfile::TempDir,
    pub files: tempfile::TempDir,
}

impl Slot {
    async fn start(&self, wire: Wire) -> anyhow::Result<Running> {
        let transport = match wire.tcp {
            true => wire.link.tcp_transport(wire.seed, wire.security),
            false => wire.link.transport(wire.seed, wire.security),
        };
        Ok(
            daemon::Builder::new(self.cfg.clone(), self.keys.clone(), self.store.clone())
                .transport(transport)
                .downloads(self.downloads.path().to_owned())
                .spawn()
                .await?,
        )
    }
}

impl Slot {
    /// Starts the node again; its port may take a moment to be released by the stopped swarm.
    async fn restart(&self, wire: Wire) -> anyhow::Result<Running> {
        loop {
            match self.start(wire).await {
                Err(e) if format!("{e:#}").contains("cannot listen") => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => return other,
            }
        }
    }
}

fn config(s: &Scenario, group: &str, role: Role, listen: Multiaddr) -> anyhow::Result<Config> {
    let mut cfg = Config {
        role: match role {
            Role::Bootstrap => NodeRole::Bootstrap,
            Role::Desktop => NodeRole::Desktop,
        },
        ..Config::default()
    };
    cfg.network.listen = vec![listen];
    // Every memory (or loopback) address is reachable, but AutoNAT cannot confirm one (memory dials come from
    // fresh ports): the simulated nodes are told their address is public, so they serve the DHT
    // and neither probe nor look for relays (a thousand nodes doing so would swamp two cores).
    cfg.network.external_addresses = cfg.network.listen.clone();
    // No AutoNAT v2 probes: each connection reports a fresh ephemeral port as an address
    // candidate, and each probe of one makes the client send the server 30–100 KB of dial data.
    // At 1,000 nodes that was 50 MB/s of probes between idle nodes.
    cfg.autonat.max_candidates = 0;
    cfg.kad.mode = KadMode::Server;
    cfg.relay.reservations = 0;
    cfg.mdns.enabled = false;
    cfg.data.max_retry_secs = 2;
    cfg.storage.cache_mib = 4;
    match s.group(group).and_then(|g| g.config.as_ref()) {
        Some(o) => crate::overrides::apply(cfg, o),
        None => Ok(cfg),
    }
}

/// The plan's nodes that this process runs: their slots, the running node of each slot that is
/// online, and churn in progress (nodes stopping, nodes starting again).
pub struct Fleet {
    /// By node index: `None` for the nodes of other processes.
    slots: Vec<Option<Arc<Slot>>>,
    live: Vec<Option<Running>>,
    /// Every node's, this process's or not.
    pub ids: Vec<PeerId>,
    pub wire: Wire,
    /// Per node: time from its start to its first connection (set by its watcher task).
    pub first_connect: track::FirstConnects,
    pub registries: meter::Registries,
    stopping: HashMap<usize, JoinHandle<u64>>,
    returning: HashMap<usize, JoinHandle<anyhow::Result<(Running, u64)>>>,
    /// Bytes sent by node runs that ended.
    bytes_of_stopped: u64,
}

impl Fleet {
    /// A slot per planned node of this process, each on its own port and told its bootstrap
    /// peers.
    pub fn new(s: &Scenario, plan: &Plan, team: &Team) -> anyhow::Result<Self> {
        let total = plan.nodes.len();
        let ids: Vec<PeerId> = (0..total).map(|i| plan.peer_id(i)).collect();
        let addrs = match team {
            Team::Alone => {
                let base = NEXT_PORT.fetch_add(total as u64, Ordering::Relaxed);
                (0..total)
                    .map(|i| Ok(Multiaddr::empty().with(Protocol::Memory(base + i as u64))))
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            Team::Member { addresses, .. } => (0..total)
                .map(|i| addresses.of(i))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let mut slots = Vec::with_capacity(total);
        // Nodes with the same i / STORES_PER_DB share a database (the loop meets them in order).
        let mut db: Option<(usize, SharedTemporary)> = None;
        for (i, p) in plan.nodes.iter().enumerate() {
            if !team.owns(i) {
                slots.push(None);
                continue;
            }
            let mut cfg = config(s, &p.group, p.role, addrs[i].clone())?;
            if let Team::Member { .. } = team {
                let many =
                    std::num::NonZeroU32::new(SPLIT_CONNECTIONS_PER_IP).context("nonzero")?;
                cfg.network.max_connections_per_ip = many;
                cfg.network.max_pending_incoming_per_ip = many;
            }
            cfg.bootstrap.peers = (p.bootstrap.iter())
                .map(|&b| addrs[b].clone().with(Protocol::P2p(ids[b])))
                .collect();
            let k = i / STORES_PER_DB;
            let shared = match db.take() {
                Some((held, shared)) if held == k => shared,
                _ => SharedTemporary::new(STORES_PER_DB as u64)?,
            };
            slots.push(Some(Arc::new(Slot {
                keys: Arc::new(plan.keys(i)),
                store: Store::temporary_in(&shared, &format!("node-{i}"))?,
                cfg,
                downloads: tempfile::tempdir()?,
                files: tempfile::tempdir()?,
            })));
            db = Some((k, shared));
        }
        Ok(Self {
            ids,
            slots,
            live: (0..total).map(|_| None).collect(),
            wire: Wire {
                link: s.link.unwrap_or_default(),
                seed: plan.seed,
                security: s.security.unwrap_or_default(),
                tcp: matches!(team, Team::Member { .. }),
            },
            first_connect: track::FirstConnects::new(total),
            registries: meter::Registries::default(),
            stopping: HashMap::new(),
            returning: HashMap::new(),
            bytes_of_stopped: 0,
        })
    }

    /// Node `i`'s slot, if this process runs it.
    pub fn slot(&self, i: usize) -> anyhow::Result<&Arc<Slot>> {
        (self.slots.get(i).and_then(Option::as_ref))
            .with_context(|| format!("node {i} is not run by this process"))
    }

    /// (index, slot) of every node this process runs.
    pub fn slots(&self) -> impl Iterator<Item = (usize, &Arc<Slot>)> {
        (self.slots.iter().enumerate()).filter_map(|(i, s)| Some((i, s.as_ref()?)))
    }

    /// Node `i` is up (since `t0`): its metrics are summed, its first connection timed.
    pub fn watch(&mut self, i: usize, n: Running, t0: Instant) {
        self.registries.add(n.node().metrics());
        let mut events = n.node().client().subscribe();
        let shared = self.first_connect.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::PeerConnected { .. }) => {
                        shared.record(i, t0.elapsed());
                        break;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        self.live[i] = Some(n);
    }

    /// Bootstrap nodes one by one (each knows those before it), then, once every process has
    /// started its bootstrap nodes, the rest over `join_secs`, a few at a time, each at its place
    /// in the plan's order.
    pub async fn start_all(
        &mut self,
        s: &Scenario,
        plan: &Plan,
        team: &mut Team,
        progress: &crate::Progress,
    ) -> anyhow::Result<()> {
        let (boots, others): (Vec<usize>, Vec<usize>) =
            (0..plan.nodes.len()).partition(|i| plan.nodes[*i].role == Role::Bootstrap);
        let total = self.slots().count() as u64;
        let mut count = 0u64;
        for &i in boots.iter().filter(|&&i| team.owns(i)) {
            let t0 = Instant::now();
            let n = self.slot(i)?.start(self.wire).await?;
            self.watch(i, n, t0);
            count += 1;
            progress("starting nodes", count, total);
        }
        team.gather("bootstrap nodes up", ()).await?;
        let joins = Instant::now();
        let spacing = Duration::from_secs(s.join_secs) / others.len().max(1) as u32;
        let wire = self.wire;
        let jobs: Vec<(usize, usize, Arc<Slot>)> = (others.iter().enumerate())
            .filter(|(_, i)| team.owns(**i))
            .map(|(k, &i)| Ok((k, i, self.slot(i)?.clone())))
            .collect::<anyhow::Result<_>>()?;
        let mut starting = stream::iter(jobs.into_iter().map(|(k, i, slot)| {
            let due = joins + spacing * k as u32;
            async move {
                tokio::time::sleep_until(due).await;
                let t0 = Instant::now();
                (i, t0, slot.start(wire).await)
            }
        }))
        .buffer_unordered(START_CONCURRENCY);
        while let Some((i, t0, n)) = starting.next().await {
            self.watch(i, n?, t0);
            count += 1;
            progress("starting nodes", count, total);
        }
        Ok(())
    }

    /// Routing tables of this process's nodes as the workload starts (for hop counts).
    pub async fn routing_tables(&self, progress: &crate::Progress) -> HashMap<PeerId, Vec<PeerId>> {
        let asks = self.live.iter().enumerate().filter_map(|(i, n)| {
            let client = n.as_ref()?.node().client().clone();
            Some(async move {
                let table = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.routing_table()).await;
                (i, table)
            })
        });
        let mut answers = stream::iter(asks).buffer_unordered(64);
        let mut t = HashMap::new();
        let mut missing = 0;
        while let Some((i, table)) = answers.next().await {
            match table {
                Ok(Ok(table)) => {
                    t.insert(self.ids[i], table);
                }
                _ => missing += 1,
            }
            progress("routing tables", t.len() as u64, self.live.len() as u64);
        }
        if missing > 0 {
            eprintln!(
                "simnet: {missing} nodes did not show their routing table within {SNAPSHOT_TIMEOUT:?}"
            );
        }
        t
    }

    /// Waits for node `i` if it is starting again: an operation needs it now.
    pub async fn ready(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(h) = self.returning.remove(&i) {
            let (n, bytes) = h.await??;
            self.bytes_of_stopped += bytes;
            self.live[i] = Some(n);
        }
        Ok(())
    }

    pub fn live(&self, i: usize, what: &str) -> anyhow::Result<&Running> {
        self.live[i]
            .as_ref()
            .with_context(|| format!("{what}: node {i} is offline"))
    }

    /// Churn: node `i` leaves (stops in the background).
    pub fn leave(&mut self, i: usize, tracker: &Tracker) -> anyhow::Result<()> {
        let n = self.live[i]
            .take()
            .context("leave: the node is not running")?;
        tracker.lock().leaves += 1;
        self.stopping.insert(
            i,
            tokio::spawn(async move {
                let bytes = files::outbound_bytes(n.node()).unwrap_or(0);
                let _ = tokio::time::timeout(RESTART_TIMEOUT, n.shutdown()).await;
                bytes
            }),
        );
        Ok(())
    }

    /// Churn: node `i` comes back (once it has stopped) with the same keys, store and address.
    pub fn come_back(&mut self, i: usize, tracker: &Tracker) -> anyhow::Result<()> {
        let stop = self.stopping.remove(&i);
        let slot = self.slot(i)?.clone();
        let wire = self.wire;
        let t = tracker.clone();
        let registries = self.registries.clone();
        self.returning.insert(
            i,
            tokio::spawn(async move {
                let bytes = match stop {
                    Some(h) => h.await.unwrap_or(0),
                    None => 0,
                };
                let n = tokio::time::timeout(RESTART_TIMEOUT, slot.restart(wire))
                    .await
                    .context("a returning node did not start in time")??;
                registries.add(n.node().metrics());
                t.lock().returned.entry(i).or_default().push(Instant::now());
                Ok((n, bytes))
            }),
        );
        Ok(())
    }

    /// Waits for churn to settle: every returning node up, every leaving one stopped.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        for (i, h) in std::mem::take(&mut self.returning) {
            let (n, bytes) = h.await??;
            self.bytes_of_stopped += bytes;
            self.live[i] = Some(n);
        }
        for (_, h) in self.stopping.drain() {
            self.bytes_of_stopped += h.await.unwrap_or(0);
        }
        Ok(())
    }

    /// Stops every node; the bytes all node runs sent.
    pub async fn stop(self, progress: &crate::Progress) -> Option<u64> {
        let total = self.live.iter().flatten().count() as u64;
        let bytes_sent = self
            .live
            .iter()
            .flatten()
            .try_fold(self.bytes_of_stopped, |acc, n| {
                files::outbound_bytes(n.node()).map(|b| acc + b)
            });
        progress("stopping nodes", 0, total);
        let mut stops = stream::iter(self.live.into_iter().flatten().map(|n| async move {
            let _ = tokio::time::timeout(RESTART_TIMEOUT, n.shutdown()).await;
        }))
        .buffer_unordered(64);
        let mut stopped = 0;
        while stops.next().await.is_some() {
            stopped += 1;
            progress("stopping nodes", stopped, total);
        }
        bytes_sent
    }
}
