//! `mode = "inproc"`: every node of the plan in this process, each a real `commucat` node (libp2p
//! swarm, Kademlia, the data service with its sled store) on the libp2p memory transport, shaped
//! by the scenario's link model (`link.rs`). Churn stops a node and starts it again with the same
//! keys, store and address.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use commucat::{
    config::{Config, KadMode, Role as NodeRole},
    crypto::LocalKeys,
    daemon::{self, Daemon},
    node::Event,
    store::Store,
};
use futures::{StreamExt, stream};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};

use crate::{
    files, groups,
    hops::Tables,
    host,
    link::{Link, Security},
    meter,
    plan::{Op, Plan},
    report::ChurnStats,
    scenario::{Role, Scenario},
    track::{self, Tracker},
};

/// How long a group may take to reach every member before the phase.
pub const GROUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Nodes started at once.
pub const START_CONCURRENCY: usize = 16;
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Workload operations in flight at once.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long a node may take to show its routing table.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to stop or start during churn.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// Memory-transport ports handed out in this process: each node keeps its port across restarts,
/// as a desktop keeps its TCP port.
static NEXT_PORT: AtomicU64 = AtomicU64::new(1 << 40);

/// How a node's connections are made: the link model with its seed, and the security upgrade.
#[derive(Clone, Copy)]
struct Wire {
    link: Link,
    seed: u64,
    security: Security,
}

/// A simulated node while it is online.
type Running = Daemon;

/// A simulated node: what survives a restart, and the running node when it is online.
struct Slot {
    keys: Arc<LocalKeys>,
    store: Store,
    cfg: Config,
    downloads: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Slot {
    fn addr(&self) -> Multiaddr {
        self.cfg.network.listen[0]
            .clone()
            .with(Protocol::P2p(self.keys.peer_id()))
    }

    async fn start(&self, wire: Wire) -> anyhow::Result<Running> {
        Ok(
            daemon::Builder::new(self.cfg.clone(), self.keys.clone(), self.store.clone())
                .transport(wire.link.transport(wire.seed, wire.security))
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

fn config(s: &Scenario, group: &str, role: Role, port: u64) -> anyhow::Result<Config> {
    let mut cfg = Config {
        role: match role {
            Role::Bootstrap => NodeRole::Bootstrap,
            Role::Desktop => NodeRole::Desktop,
        },
        ..Config::default()
    };
    cfg.network.listen = vec![Multiaddr::empty().with(Protocol::Memory(port))];
    // Every memory address is reachable, but AutoNAT cannot confirm one (memory dials come from
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

/// The plan's nodes: every slot, the running node of each slot that is online, and churn in
/// progress (nodes stopping, nodes starting again).
struct Fleet {
    slots: Vec<Arc<Slot>>,
    live: Vec<Option<Running>>,
    ids: Vec<PeerId>,
    wire: Wire,
    /// Per node: time from its start to its first connection (set by its watcher task).
    first_connect: track::FirstConnects,
    registries: meter::Registries,
    stopping: HashMap<usize, JoinHandle<u64>>,
    returning: HashMap<usize, JoinHandle<anyhow::Result<(Running, u64)>>>,
    /// Bytes sent by node runs that ended.
    bytes_of_stopped: u64,
}

impl Fleet {
    /// A slot per planned node, each on its own memory port and told its bootstrap peers.
    fn new(s: &Scenario, plan: &Plan) -> anyhow::Result<Self> {
        let total = plan.nodes.len();
        let base = NEXT_PORT.fetch_add(total as u64, Ordering::Relaxed);
        let mut slots = Vec::with_capacity(total);
        for (i, p) in plan.nodes.iter().enumerate() {
            slots.push(Slot {
                keys: Arc::new(plan.keys(i)),
                store: Store::temporary()?,
                cfg: config(s, &p.group, p.role, base + i as u64)?,
                downloads: tempfile::tempdir()?,
                files: tempfile::tempdir()?,
            });
        }
        let addrs: Vec<Multiaddr> = slots.iter().map(Slot::addr).collect();
        for (slot, p) in slots.iter_mut().zip(&plan.nodes) {
            slot.cfg.bootstrap.peers = p.bootstrap.iter().map(|b| addrs[*b].clone()).collect();
        }
        Ok(Self {
            ids: slots.iter().map(|s| s.keys.peer_id()).collect(),
            slots: slots.into_iter().map(Arc::new).collect(),
            live: (0..total).map(|_| None).collect(),
            wire: Wire {
                link: s.link.unwrap_or_default(),
                seed: plan.seed,
                security: s.security.unwrap_or_default(),
            },
            first_connect: track::FirstConnects::new(total),
            registries: meter::Registries::default(),
            stopping: HashMap::new(),
            returning: HashMap::new(),
            bytes_of_stopped: 0,
        })
    }

    /// Node `i` is up (since `t0`): its metrics are summed, its first connection timed.
    fn watch(&mut self, i: usize, n: Running, t0: Instant) {
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

    /// Bootstrap nodes one by one (each knows those before it), then the rest over `join_secs`, a
    /// few at a time.
    async fn start_all(
        &mut self,
        s: &Scenario,
        plan: &Plan,
        progress: &crate::Progress,
    ) -> anyhow::Result<()> {
        let total = plan.nodes.len() as u64;
        let (boots, others): (Vec<usize>, Vec<usize>) =
            (0..plan.nodes.len()).partition(|i| plan.nodes[*i].role == Role::Bootstrap);
        let mut count = 0u64;
        for &i in &boots {
            let t0 = Instant::now();
            let n = self.slots[i].start(self.wire).await?;
            self.watch(i, n, t0);
            count += 1;
            progress("starting nodes", count, total);
        }
        let joins = Instant::now();
        let spacing = Duration::from_secs(s.join_secs) / others.len().max(1) as u32;
        let wire = self.wire;
        let jobs: Vec<(usize, Arc<Slot>)> =
            others.iter().map(|&i| (i, self.slots[i].clone())).collect();
        let mut starting = stream::iter(jobs.into_iter().enumerate().map(|(k, (i, slot))| {
            let due = joins + spacing * k as u32;
            async move {
                tokio::time::sleep_until(due.into()).await;
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

    /// Routing tables as the workload starts (for hop counts).
    async fn routing_tables(&self, progress: &crate::Progress) -> Tables {
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
            progress("routing tables", t.len() as u64, self.slots.len() as u64);
        }
        if missing > 0 {
            eprintln!(
                "simnet: {missing} nodes did not show their routing table within {SNAPSHOT_TIMEOUT:?}"
            );
        }
        Tables::new(t)
    }

    /// Waits for node `i` if it is starting again: an operation needs it now.
    async fn ready(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(h) = self.returning.remove(&i) {
            let (n, bytes) = h.await??;
            self.bytes_of_stopped += bytes;
            self.live[i] = Some(n);
        }
        Ok(())
    }

    fn live(&self, i: usize, what: &str) -> anyhow::Result<&Running> {
        self.live[i]
            .as_ref()
            .with_context(|| format!("{what}: node {i} is offline"))
    }

    /// Churn: node `i` leaves (stops in the background).
    fn leave(&mut self, i: usize, tracker: &Tracker) -> anyhow::Result<()> {
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
    fn come_back(&mut self, i: usize, tracker: &Tracker) {
        let stop = self.stopping.remove(&i);
        let slot = self.slots[i].clone();
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
    }

    /// Waits for churn to settle: every returning node up, every leaving one stopped.
    async fn settle(&mut self) -> anyhow::Result<()> {
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
    async fn stop(self, progress: &crate::Progress) -> Option<u64> {
        let total = self.slots.len() as u64;
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

/// The workload: each operation at its time, bounded in flight.
struct Workload<'a> {
    plan: &'a Plan,
    /// The ids of the plan's groups.
    groups: Vec<commucat::groups::GroupId>,
    tracker: Tracker,
    gate: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<()>,
    drain_until: Instant,
}

impl Workload<'_> {
    async fn run(
        &mut self,
        fleet: &mut Fleet,
        phase: Instant,
        progress: &crate::Progress,
    ) -> anyhow::Result<()> {
        let ops_total = self.plan.ops.len() as u64;
        for (k, sched) in self.plan.ops.iter().enumerate() {
            tokio::time::sleep_until((phase + Duration::from_millis(sched.at_ms)).into()).await;
            progress("workload", k as u64, ops_total);
            match sched.op {
                Op::Leave { node } => {
                    fleet.ready(node).await?;
                    fleet.leave(node, &self.tracker)?;
                }
                Op::Return { node } => fleet.come_back(node, &self.tracker),
                Op::Lookup { from, to } => {
                    fleet.ready(from).await?;
                    let permit = self.gate.clone().acquire_owned().await?;
                    let client = fleet.live(from, "lookup")?.node().client().clone();
                    let (target, t) = (fleet.ids[to], self.tracker.clone());
                    self.tasks.spawn(async move {
                        t.lookup(client, from, to, target, LOOKUP_TIMEOUT).await;
                        drop(permit);
                    });
                }
                // Made before the phase (`track::claim_all`).
                Op::Claim { .. } => {}
                Op::Resolve { from, to } => {
                    fleet.ready(from).await?;
                    let permit = self.gate.clone().acquire_owned().await?;
                    let client = fleet.live(from, "resolve")?.node().client().clone();
                    let (target, t) = (fleet.ids[to], self.tracker.clone());
                    self.tasks.spawn(async move {
                        t.resolve(client, to, target, LOOKUP_TIMEOUT).await;
                        drop(permit);
                    });
                }
                Op::Message { from, to, size } => {
                    fleet.ready(from).await?;
                    let permit = self.gate.clone().acquire_owned().await?;
                    let (tag, body) = track::body(k, size);
                    let data = fleet.live(from, "message")?.data().clone();
                    let target = fleet.ids[to];
                    let offline = !self.plan.nodes[to].live_at(sched.at_ms);
                    self.tracker.sending(&tag, from, to, offline);
                    self.tasks.spawn(async move {
                        if let Err(e) = data
                            .send_message(target, body, commucat::store::Via::default())
                            .await
                        {
                            eprintln!("simnet: message {tag} not queued: {e}");
                        }
                        drop(permit);
                    });
                }
                Op::File { from, to, size } => {
                    fleet.ready(from).await?;
                    self.file(fleet, k, from, to, size).await?;
                }
                // Made before the phase (`groups::create_all`).
                Op::GroupCreate { .. } => {}
                Op::GroupMessage { group, from, .. } => {
                    fleet.ready(from).await?;
                    let data = fleet.live(from, "group message")?.data().clone();
                    let id = self.groups[group];
                    groups::send(
                        &mut self.tasks,
                        &self.tracker,
                        self.plan,
                        (k, sched.op),
                        id,
                        data,
                    );
                }
            }
        }
        progress("workload", ops_total, ops_total);
        Ok(())
    }

    /// Sends a file of `size` bytes from `from` to `to`, timed until the sender sees it complete.
    async fn file(
        &mut self,
        fleet: &Fleet,
        k: usize,
        from: usize,
        to: usize,
        size: usize,
    ) -> anyhow::Result<()> {
        let permit = self.gate.clone().acquire_owned().await?;
        let data = fleet.live(from, "file")?.data().clone();
        let path = fleet.slots[from].files.path().join(format!("file-{k}.bin"));
        files::write_file(&path, size, k as u64)?;
        let (target, t, drain_until) = (fleet.ids[to], self.tracker.clone(), self.drain_until);
        self.tasks.spawn(async move {
            let mut events = data.subscribe();
            let started = Instant::now();
            let done_ms = match data.send_file(target, path).await {
                Ok(out) => files::wait_file(&mut events, &out.id, drain_until)
                    .await
                    .then(|| started.elapsed().as_secs_f64() * 1000.0),
                Err(e) => {
                    eprintln!("simnet: file {k} not queued: {e}");
                    None
                }
            };
            t.lock().files.push(track::File { size, done_ms });
            drop(permit);
        });
        Ok(())
    }
}

/// `metrics_every`: print summed node metrics at that interval (see `meter.rs`).
pub async fn run(
    s: &Scenario,
    plan: &Plan,
    metrics_every: Option<Duration>,
    progress: &crate::Progress,
) -> anyhow::Result<crate::Outcome> {
    let started = Instant::now();
    let mut fleet = Fleet::new(s, plan)?;
    let probe = host::Probe::start();
    let meter = metrics_every.map(|every| meter::spawn(every, fleet.registries.clone()));
    fleet.start_all(s, plan, progress).await?;

    // Warm-up: the DHT fills while nothing is measured.
    let warmup = Duration::from_secs(s.warmup_secs);
    let mut waited = Duration::ZERO;
    while waited < warmup {
        progress("warming up", waited.as_secs(), warmup.as_secs());
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
    }
    let tables = match s.workload.lookups.is_empty() {
        true => None,
        false => Some(fleet.routing_tables(progress).await),
    };

    // Arrivals: every store's inbox notifications (they outlive node restarts).
    let tracker = Tracker::default();
    let mut watchers = Vec::new();
    for (i, slot) in fleet.slots.iter().enumerate() {
        watchers.push(tracker.watch_inbox(i, slot.store.inbox()?.subscribe()));
    }
    let client = |i: usize| Ok(fleet.live(i, "claim")?.node().client().clone());
    track::claim_all(&tracker, plan, client, LOOKUP_TIMEOUT, progress).await?;
    let data = |i: usize| Ok(fleet.live(i, "group")?.data().clone());
    let groups = groups::create_all(&tracker, plan, data, &fleet.ids, GROUP_TIMEOUT, progress);
    let groups = groups.await?;
    let phase = Instant::now();
    probe.measured();
    let drain_until = phase + Duration::from_secs(s.duration_secs + s.drain_secs);
    let mut workload = Workload {
        plan,
        groups,
        tracker: tracker.clone(),
        gate: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        tasks: tokio::task::JoinSet::new(),
        drain_until,
    };
    workload.run(&mut fleet, phase, progress).await?;
    fleet.settle().await?;
    // Up to the end of the workload phase, then the drain.
    tokio::time::sleep_until((phase + Duration::from_secs(s.duration_secs)).into()).await;
    track::drain(&tracker, drain_until, progress).await;
    while workload.tasks.join_next().await.is_some() {}
    let host = probe.finish();
    if let Some(m) = meter {
        m.abort();
    }
    let ids = fleet.ids.clone();
    let security = fleet.wire.security;
    let first_connect = fleet.first_connect.clone();
    let bytes_sent = fleet.stop(progress).await;
    for w in watchers {
        w.abort();
    }
    let log = tracker.lock();
    let hops = tables.map(|t| {
        log.lookups
            .iter()
            .filter_map(|l| t.hops(ids[l.from], ids[l.to]).map(f64::from))
            .collect()
    });
    let run = track::Run {
        scenario: s,
        mode: "inproc",
        plan,
        started,
        phase,
    };
    let mut outcome = track::outcome(&run, &log, hops, &first_connect, bytes_sent);
    let churned = plan.nodes.iter().any(|n| !n.downtime.is_empty());
    outcome.report.host = Some(host);
    outcome.report.security = Some(security);
    outcome.report.churn = churned.then(|| ChurnStats {
        leaves: log.leaves,
        returns: log.returned.values().map(Vec::len).sum(),
    });
    Ok(outcome)
}
