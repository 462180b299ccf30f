//! `mode = "inproc"`: every node of the plan in this process, each a real `commucat` node (libp2p
//! swarm, Kademlia, the data service with its sled store) on the libp2p memory transport.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use commucat::{
    config::{Config, KadMode, Role as NodeRole},
    crypto::LocalKeys,
    data,
    node::{Event, FindSource, Node, Transport},
    store::Store,
};
use futures::{StreamExt, stream};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    plan::{Op, Plan},
    report::{Dist, Lookups, Messages, Report, Second},
    scenario::{Role, Scenario},
};

/// Nodes started at once.
pub const START_CONCURRENCY: usize = 16;
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Workload operations in flight at once.
pub const MAX_IN_FLIGHT: usize = 512;

struct SimNode {
    node: Node,
    data: Arc<data::Service>,
    peer_id: PeerId,
    _downloads: tempfile::TempDir,
}

fn config(role: Role, bootstrap: Vec<Multiaddr>) -> Config {
    let mut cfg = Config {
        role: match role {
            Role::Bootstrap => NodeRole::Bootstrap,
            Role::Desktop => NodeRole::Desktop,
        },
        ..Config::default()
    };
    cfg.network.listen = vec![Multiaddr::empty().with(Protocol::Memory(0))];
    cfg.bootstrap.peers = bootstrap;
    // Every memory address is reachable, but AutoNAT cannot confirm one (memory dials come from
    // fresh ports): the simulated nodes are told to serve the DHT.
    cfg.kad.mode = KadMode::Server;
    cfg.mdns.enabled = false;
    cfg.data.max_retry_secs = 2;
    cfg.storage.cache_mib = 4;
    cfg
}

async fn start(cfg: &Config) -> anyhow::Result<SimNode> {
    let keys = Arc::new(LocalKeys::generate());
    let store = Store::temporary()?;
    let node = Node::spawn(cfg, keys.clone(), &store, Transport::Memory).await?;
    let downloads = tempfile::tempdir()?;
    let data = data::Service::start(
        &node,
        keys.clone(),
        &store,
        &cfg.data,
        downloads.path().to_owned(),
    )?;
    Ok(SimNode {
        node,
        data: Arc::new(data),
        peer_id: keys.peer_id(),
        _downloads: downloads,
    })
}

async fn addr(n: &SimNode) -> anyhow::Result<Multiaddr> {
    let s = n.node.client().status().await?;
    let a = s
        .listen_addrs
        .first()
        .context("the node has no listen address")?;
    Ok(a.clone().with(Protocol::P2p(n.peer_id)))
}

/// What the run observes about messages: send time per body tag, arrivals per tag.
#[derive(Default)]
struct Tracker {
    sent: HashMap<String, (Instant, usize)>,
    arrived: HashMap<String, Vec<Instant>>,
}

/// Called as the run goes: (phase, done, total).
pub type Progress = dyn Fn(&str, u64, u64) + Send + Sync;

pub async fn run(s: &Scenario, plan: &Plan, progress: &Progress) -> anyhow::Result<crate::Outcome> {
    let started = Instant::now();
    let total = plan.nodes.len();
    let mut nodes: Vec<Option<SimNode>> = (0..total).map(|_| None).collect();
    let mut addrs: Vec<Option<Multiaddr>> = vec![None; total];
    // Per node: time from its start to its first connection (set by its watcher task).
    let first_connect = Arc::new(Mutex::new(vec![None::<Duration>; total]));

    // Bootstrap nodes one by one (each knows those before it), then the rest, a few at a time.
    let boots: Vec<usize> = (0..total)
        .filter(|i| plan.nodes[*i].role == Role::Bootstrap)
        .collect();
    let others: Vec<usize> = (0..total)
        .filter(|i| plan.nodes[*i].role != Role::Bootstrap)
        .collect();
    let mut started_count = 0u64;
    let watch = |i: usize, n: &SimNode, t0: Instant| {
        let mut events = n.node.client().subscribe();
        let shared = first_connect.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::PeerConnected { .. }) => {
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        s[i].get_or_insert(t0.elapsed());
                        break;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
    };
    for &i in &boots {
        let bootstrap = plan.nodes[i]
            .bootstrap
            .iter()
            .filter_map(|b| addrs[*b].clone())
            .collect();
        let t0 = Instant::now();
        let n = start(&config(Role::Bootstrap, bootstrap)).await?;
        watch(i, &n, t0);
        addrs[i] = Some(addr(&n).await?);
        nodes[i] = Some(n);
        started_count += 1;
        progress("starting nodes", started_count, total as u64);
    }
    let mut starting = stream::iter(others.iter().map(|&i| {
        let bootstrap: Vec<Multiaddr> = plan.nodes[i]
            .bootstrap
            .iter()
            .filter_map(|b| addrs[*b].clone())
            .collect();
        async move {
            let t0 = Instant::now();
            let n = start(&config(plan.nodes[i].role, bootstrap)).await;
            (i, t0, n)
        }
    }))
    .buffer_unordered(START_CONCURRENCY);
    while let Some((i, t0, n)) = starting.next().await {
        let n = n?;
        watch(i, &n, t0);
        nodes[i] = Some(n);
        started_count += 1;
        progress("starting nodes", started_count, total as u64);
    }
    drop(starting);
    let nodes: Vec<SimNode> = nodes.into_iter().map(|n| n.expect("started")).collect();
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.peer_id).collect();

    // Warm-up: the DHT fills while nothing is measured.
    let warmup = Duration::from_secs(s.warmup_secs);
    let mut waited = Duration::ZERO;
    while waited < warmup {
        progress("warming up", waited.as_secs(), warmup.as_secs());
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
    }

    // Arrivals: every inbox, tagged bodies.
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut watchers = Vec::new();
    for n in &nodes {
        let mut inbox = n.data.inbox().subscribe();
        let t = tracker.clone();
        watchers.push(tokio::spawn(async move {
            loop {
                match inbox.recv().await {
                    Ok(m) => {
                        let tag = m.body.split(' ').next().unwrap_or_default().to_owned();
                        t.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .arrived
                            .entry(tag)
                            .or_default()
                            .push(Instant::now());
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        }));
    }

    // The workload, each operation at its time.
    let phase = Instant::now();
    let lookups: Arc<Mutex<Vec<(bool, bool, f64)>>> = Arc::default();
    let ops_total = plan.ops.len() as u64;
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (k, sched) in plan.ops.iter().enumerate() {
        let due = phase + Duration::from_millis(sched.at_ms);
        tokio::time::sleep_until(due.into()).await;
        progress("workload", k as u64, ops_total);
        let permit = gate.clone().acquire_owned().await?;
        match sched.op {
            Op::Lookup { from, to } => {
                let client = nodes[from].node.client().clone();
                let target = ids[to];
                let out = lookups.clone();
                tasks.spawn(async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(LOOKUP_TIMEOUT, client.find_peer(target)).await;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let (ok, dht) = match r {
                        Ok(Ok(found)) => (!found.addrs.is_empty(), found.source == FindSource::Dht),
                        _ => (false, false),
                    };
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((ok, dht, ms));
                    drop(permit);
                });
            }
            Op::Message { from, to, size } => {
                let tag = format!("simnet-{k}");
                let mut body = format!("{tag} ");
                while body.len() < size {
                    body.push('x');
                }
                let data = nodes[from].data.clone();
                let target = ids[to];
                let t = tracker.clone();
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sent
                    .insert(tag.clone(), (Instant::now(), to));
                tasks.spawn(async move {
                    if let Err(e) = data.send_message(target, body).await {
                        eprintln!("simnet: message {tag} not queued: {e}");
                    }
                    drop(permit);
                });
            }
        }
    }
    progress("workload", ops_total, ops_total);
    while tasks.join_next().await.is_some() {}

    // Drain: wait for deliveries still under way, up to drain_secs.
    let drain_until = Instant::now() + Duration::from_secs(s.drain_secs);
    loop {
        let (sent, arrived) = {
            let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
            (
                t.sent.len(),
                t.sent.keys().filter(|k| t.arrived.contains_key(*k)).count(),
            )
        };
        progress("draining", arrived as u64, sent as u64);
        if arrived == sent || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Figures.
    let bytes_sent = nodes
        .iter()
        .try_fold(0u64, |acc, n| outbound_bytes(&n.node).map(|b| acc + b));
    for n in nodes {
        n.data.shutdown().await;
        n.node.shutdown().await;
    }
    for w in watchers {
        w.abort();
    }

    let first_connect = first_connect
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let boot_ms: Vec<f64> = first_connect
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let isolated = first_connect.iter().filter(|d| d.is_none()).count();
    let lk = lookups.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let succeeded = lk.iter().filter(|l| l.0).count();
    let lookup_ms: Vec<f64> = lk.iter().filter(|l| l.0).map(|l| l.2).collect();
    let t = tracker.lock().unwrap_or_else(|e| e.into_inner());
    let mut delivery_ms = Vec::new();
    let mut duplicates = 0;
    let secs = s.duration_secs + s.drain_secs + 1;
    let mut sent_per_sec = vec![0usize; secs as usize];
    let mut delivered_per_sec = vec![0usize; secs as usize];
    for (tag, (at, _)) in &t.sent {
        let i = at.duration_since(phase).as_secs() as usize;
        if let Some(slot) = sent_per_sec.get_mut(i) {
            *slot += 1;
        }
        if let Some(arrivals) = t.arrived.get(tag) {
            let first = arrivals.iter().min().expect("non-empty");
            delivery_ms.push(first.duration_since(*at).as_secs_f64() * 1000.0);
            duplicates += arrivals.len() - 1;
            let j = first.duration_since(phase).as_secs() as usize;
            if let Some(slot) = delivered_per_sec.get_mut(j) {
                *slot += 1;
            }
        }
    }
    let sent = t.sent.len();
    let delivered = delivery_ms.len();
    let last = (delivered_per_sec.iter().rposition(|n| *n > 0))
        .max(sent_per_sec.iter().rposition(|n| *n > 0))
        .map_or(s.duration_secs as usize, |i| {
            (i + 1).max(s.duration_secs as usize)
        });
    let timeline = (0..last)
        .map(|i| Second {
            t_secs: i as u64,
            live_nodes: total,
            messages_sent: sent_per_sec[i],
            messages_delivered: delivered_per_sec[i],
        })
        .collect();
    let rate = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let report = Report {
        scenario: s.name.clone(),
        mode: "inproc".into(),
        seed: plan.seed,
        nodes: total,
        wall_secs: started.elapsed().as_secs_f64(),
        peak_rss_kib: crate::report::peak_rss_kib(),
        time_to_first_bootstrap_ms: Dist::of(&boot_ms),
        isolated_nodes: isolated,
        lookups: Lookups {
            attempted: lk.len(),
            succeeded,
            success_rate: rate(succeeded, lk.len()),
            via_dht: lk.iter().filter(|l| l.0 && l.1).count(),
            latency_ms: Dist::of(&lookup_ms),
        },
        messages: Messages {
            sent,
            delivered,
            delivery_rate: rate(delivered, sent),
            duplicates,
            latency_ms: Dist::of(&delivery_ms),
        },
        timeline,
        bytes_sent,
    };
    Ok(crate::Outcome {
        report,
        lookup_ms,
        delivery_ms,
    })
}

/// Bytes a node's transports sent, from its `…libp2p_bandwidth_bytes_total` counters (None if the
/// node has no such counter).
fn outbound_bytes(node: &Node) -> Option<u64> {
    let mut text = String::new();
    let registry = node.metrics();
    let r = registry.read().unwrap_or_else(|e| e.into_inner());
    prometheus_client::encoding::text::encode(&mut text, &r).ok()?;
    let mut found = false;
    let mut sum = 0u64;
    for line in text.lines() {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if name.ends_with("libp2p_bandwidth_bytes_total") && line.contains("direction=\"Outbound\"")
        {
            found = true;
            sum += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    found.then_some(sum)
}
