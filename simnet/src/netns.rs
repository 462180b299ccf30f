//! `mode = "netns"`: every node in a network namespace of its own, behind a router of its group's
//! NAT type, built by patchbay (network namespaces, veth pairs, nftables NAT; the types are
//! `scenario::Nat`). Bootstrap nodes sit on one public router; each other node has its own
//! router. Nodes are the real node library over real TCP and QUIC sockets, each running on its
//! namespace's runtime; the relay, AutoNAT and DCUtR do the traversal.
//!
//! patchbay must enter a user namespace while the process is single-threaded: the `simnet`
//! binary re-executes itself with [`USERNS_ENV`] set, and an ELF constructor enters it.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use commucat::{
    config::{Config, Role as NodeRole},
    crypto::LocalKeys,
    daemon::{self, Daemon},
    node::{Event, Node, Transport},
    store::Store,
};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use patchbay::{Device, Lab};
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use crate::{
    plan::{Op, Plan},
    report::{NatPair, rate},
    scenario::{Nat, Role, Scenario},
    team::Team,
    track::{self, Tracker},
};

/// Set (to `1`) in the re-executed `simnet` process that enters patchbay's user namespace.
pub const USERNS_ENV: &str = "SIMNET_NETNS_USERNS";
/// Port every node listens on (TCP and QUIC).
pub const PORT: u16 = netlab::PORT;
/// How long nodes behind NATs may take to get a relay reservation (or be found public).
pub const RESERVE_WAIT: Duration = Duration::from_secs(90);
/// How long a relayed pair may take to finish its hole punching after the drain.
pub const PUNCH_WAIT: Duration = Duration::from_secs(60);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why netns mode cannot run on this machine, if it cannot.
pub fn unavailable() -> Option<String> {
    netlab::unavailable()
}

/// Enters patchbay's user namespace when this process was started for it. Call from an ELF
/// constructor only.
pub fn enter_userns_if_asked() {
    if std::env::var_os(USERNS_ENV).is_some_and(|v| v == "1") {
        // SAFETY: called from an ELF constructor, before any other thread exists.
        unsafe { netlab::enter_userns() };
    }
}

/// The lab's own node settings ([`netlab::NODE_SETTINGS`]) as a config table.
fn lab_settings() -> toml::Table {
    let lines: Vec<String> = netlab::NODE_SETTINGS
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    toml::from_str(&lines.join("\n")).expect("netlab's settings are TOML")
}

fn listen(ip: Option<Ipv4Addr>) -> Vec<Multiaddr> {
    let ip = ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    vec![
        format!("/ip4/{ip}/tcp/{PORT}").parse().expect("valid"),
        format!("/ip4/{ip}/udp/{PORT}/quic-v1")
            .parse()
            .expect("valid"),
    ]
}

fn config(s: &Scenario, group: &str, role: Role, ip: Ipv4Addr) -> anyhow::Result<Config> {
    let mut cfg = Config {
        role: match role {
            Role::Bootstrap => NodeRole::Bootstrap,
            Role::Desktop => NodeRole::Desktop,
        },
        ..Config::default()
    };
    cfg.network.listen = listen(None);
    if role == Role::Bootstrap {
        // A server's public addresses are configured, hence confirmed from the start.
        cfg.network.external_addresses = listen(Some(ip));
    }
    cfg.storage.cache_mib = 4;
    let cfg = crate::overrides::apply(cfg, &lab_settings())?;
    match s.group(group).and_then(|g| g.config.as_ref()) {
        Some(o) => crate::overrides::apply(cfg, o),
        None => Ok(cfg),
    }
}

struct LabNode {
    dev: Device,
    nat: Nat,
    app: Daemon,
    _downloads: tempfile::TempDir,
}

async fn start(
    dev: &Device,
    cfg: Config,
    keys: Arc<LocalKeys>,
) -> anyhow::Result<(Daemon, tempfile::TempDir)> {
    let downloads = tempfile::tempdir()?;
    let dir = downloads.path().to_owned();
    // On the namespace's own runtime: every socket the node opens is in its namespace.
    dev.spawn(move |_| async move {
        let app = daemon::Builder::new(cfg, keys, Store::temporary()?)
            .transport(Transport::Network)
            .downloads(dir)
            .spawn()
            .await?;
        anyhow::Ok(app)
    })?
    .await?
    .map(|a| (a, downloads))
}

/// A hole punch outcome seen by `node` towards `peer`.
struct Punch {
    node: usize,
    peer: PeerId,
    ok: bool,
}

/// Everything the run shares: the nodes, their ids, and what their event watchers collect.
struct Run {
    nodes: Vec<LabNode>,
    ids: Vec<PeerId>,
    punches: Arc<Mutex<Vec<Punch>>>,
    first_connect: track::FirstConnects,
}

/// The lab: one public router for the bootstrap nodes, a router of its group's NAT type for every
/// other node, a device per node.
async fn build_lab(plan: &Plan, progress: &crate::Progress) -> anyhow::Result<(Lab, Vec<Device>)> {
    let total = plan.nodes.len();
    let lab = Lab::new().await.context("create the lab")?;
    let dc = netlab::router(&lab, "dc", Nat::Public).await?;
    let mut devs = Vec::with_capacity(total);
    for (i, p) in plan.nodes.iter().enumerate() {
        let r = match p.nat {
            Nat::Public => dc.clone(),
            nat => netlab::router(&lab, &format!("r{i}"), nat).await?,
        };
        let dev = lab
            .add_device(&format!("n{i}"))
            .iface("eth0", r.id())
            .build()
            .await?;
        devs.push(dev);
        progress("building the lab", i as u64 + 1, total as u64);
    }
    Ok((lab, devs))
}

/// Starts the nodes, bootstrap nodes first (in plan order), each on its device's runtime.
async fn start_nodes(
    s: &Scenario,
    plan: &Plan,
    devs: &[Device],
    progress: &crate::Progress,
) -> anyhow::Result<Run> {
    let total = plan.nodes.len();
    let keys: Vec<Arc<LocalKeys>> = (0..total).map(|i| Arc::new(plan.keys(i))).collect();
    let ids: Vec<PeerId> = keys.iter().map(|k| k.peer_id()).collect();
    let ips: Vec<Ipv4Addr> = devs
        .iter()
        .map(|d| d.ip().context("a lab device has no IPv4 address"))
        .collect::<anyhow::Result<_>>()?;
    let addr = |i: usize| -> Multiaddr {
        format!("/ip4/{}/tcp/{PORT}", ips[i])
            .parse::<Multiaddr>()
            .expect("valid")
            .with(Protocol::P2p(ids[i]))
    };
    let punches: Arc<Mutex<Vec<Punch>>> = Arc::default();
    let first_connect = track::FirstConnects::new(total);
    let mut order: Vec<usize> = (0..total).collect();
    order.sort_by_key(|i| plan.nodes[*i].role != Role::Bootstrap);
    let mut nodes: Vec<Option<LabNode>> = (0..total).map(|_| None).collect();
    for (k, &i) in order.iter().enumerate() {
        let p = &plan.nodes[i];
        let mut cfg = config(s, &p.group, p.role, ips[i])?;
        cfg.bootstrap.peers = p.bootstrap.iter().map(|b| addr(*b)).collect();
        let t0 = Instant::now();
        let (app, dl) = start(&devs[i], cfg, keys[i].clone())
            .await
            .with_context(|| format!("start node {i} ({})", p.group))?;
        let mut events = app.client().subscribe();
        let (punches, first) = (punches.clone(), first_connect.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::PeerConnected { .. }) => first.record(i, t0.elapsed()),
                    Ok(Event::HolePunch { peer_id, ok, .. }) => punches
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Punch {
                            node: i,
                            peer: peer_id,
                            ok,
                        }),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        nodes[i] = Some(LabNode {
            dev: devs[i].clone(),
            nat: p.nat,
            app,
            _downloads: dl,
        });
        progress("starting nodes", k as u64 + 1, total as u64);
    }
    Ok(Run {
        nodes: nodes.into_iter().map(|n| n.expect("started")).collect(),
        ids,
        punches,
        first_connect,
    })
}

/// Warm-up: nodes behind NATs hold a relay reservation (or found themselves public).
async fn wait_reserved(
    nodes: &[LabNode],
    warmup: Duration,
    progress: &crate::Progress,
) -> anyhow::Result<()> {
    let total = nodes.len();
    let deadline = Instant::now() + RESERVE_WAIT.max(warmup);
    loop {
        let mut ready = 0usize;
        for n in nodes {
            let st = n.app.node().client().status().await?;
            let reserved = st.relay_reservations.iter().any(|r| r.address.is_some());
            let public = st.reachability == commucat::nat::Reachability::Public;
            if n.nat == Nat::Public || reserved || public {
                ready += 1;
            }
        }
        progress("reserving relays", ready as u64, total as u64);
        if ready == total {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {total} nodes got no relay reservation within {RESERVE_WAIT:?}",
                total - ready
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The workload, each operation at its time.
async fn workload(
    run: &Run,
    plan: &Plan,
    tracker: &Tracker,
    phase: Instant,
    progress: &crate::Progress,
) -> anyhow::Result<()> {
    let (nodes, ids) = (&run.nodes, &run.ids);
    let ops_total = plan.ops.len() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for (k, sched) in plan.ops.iter().enumerate() {
        tokio::time::sleep_until(phase + Duration::from_millis(sched.at_ms)).await;
        progress("workload", k as u64, ops_total);
        match sched.op {
            Op::Message { from, to, size } => {
                let (tag, body) = track::body(k, size);
                tracker.sending(&tag, from, to, false);
                let data = nodes[from].app.data().clone();
                let target = ids[to];
                let send = nodes[from].dev.spawn(move |_| async move {
                    data.send_message(target, body, commucat::store::Via::default())
                        .await
                })?;
                tasks.spawn(async move {
                    match send.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => eprintln!("simnet: message {tag} not queued: {e}"),
                        Err(e) => eprintln!("simnet: message {tag}: {e}"),
                    }
                });
            }
            Op::Lookup { from, to } => {
                let client = nodes[from].app.node().client().clone();
                let target = ids[to];
                let t = tracker.clone();
                tasks
                    .spawn(async move { t.lookup(client, from, to, target, LOOKUP_TIMEOUT).await });
            }
            // Made before the phase (`track::claim_all`).
            Op::Claim { .. } => {}
            Op::Resolve { from, to } => {
                let client = nodes[from].app.node().client().clone();
                let (target, t) = (ids[to], tracker.clone());
                tasks.spawn(async move { t.resolve(client, to, target, LOOKUP_TIMEOUT).await });
            }
            Op::File { .. }
            | Op::Leave { .. }
            | Op::Return { .. }
            | Op::GroupCreate { .. }
            | Op::GroupMessage { .. } => {
                unreachable!("refused above")
            }
        }
    }
    progress("workload", ops_total, ops_total);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The pairs that exchanged messages, and how each ended: direct (true), or only on the relay.
async fn settle_pairs(
    run: &Run,
    tracker: &Tracker,
    progress: &crate::Progress,
) -> anyhow::Result<(Vec<(usize, usize)>, HashMap<(usize, usize), bool>)> {
    let (nodes, ids, punches) = (&run.nodes, &run.ids, &run.punches);
    let pairs: Vec<(usize, usize)> = {
        let log = tracker.lock();
        let mut v: Vec<(usize, usize)> = log
            .sent
            .values()
            .map(|m| (m.from.min(m.to), m.from.max(m.to)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    // A relayed pair may still be punching: wait for its outcome.
    let until = Instant::now() + PUNCH_WAIT;
    let mut state = HashMap::new();
    loop {
        state.clear();
        let mut settling = 0;
        for &(a, b) in &pairs {
            let direct = is_direct(nodes[a].app.node(), ids[b]).await?
                || is_direct(nodes[b].app.node(), ids[a]).await?;
            let punched = punches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|p| (p.node == a && p.peer == ids[b]) || (p.node == b && p.peer == ids[a]));
            if !direct && !punched {
                settling += 1;
            }
            state.insert((a, b), direct);
        }
        progress(
            "hole punching",
            (pairs.len() - settling) as u64,
            pairs.len() as u64,
        );
        if settling == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    Ok((pairs, state))
}

/// The report's `nat_pairs`: per pair of NAT types, what was expected and what happened.
fn nat_cells(
    plan: &Plan,
    run: &Run,
    pairs: &[(usize, usize)],
    state: &HashMap<(usize, usize), bool>,
    log: &track::Log,
) -> BTreeMap<(Nat, Nat), NatPair> {
    let ids = &run.ids;
    let punches = run.punches.lock().unwrap_or_else(|e| e.into_inner());
    let mut cells: BTreeMap<(Nat, Nat), NatPair> = BTreeMap::new();
    for &(a, b) in pairs {
        let (na, nb) = (plan.nodes[a].nat, plan.nodes[b].nat);
        let key = (na.min(nb), na.max(nb));
        let cell = cells.entry(key).or_insert_with(|| NatPair {
            a: key.0.label().into(),
            b: key.1.label().into(),
            expected: netlab::expected(key.0, key.1).into(),
            as_expected: true,
            pairs: 0,
            attempts: 0,
            successes: 0,
            first_attempt_share: None,
            direct: 0,
            relayed: 0,
            messages_sent: 0,
            messages_delivered: 0,
            delivery_rate: 1.0,
        });
        cell.pairs += 1;
        // Both ends report the same punches: count the side that saw more.
        let seen = |x: usize, y: usize| -> Vec<bool> {
            punches
                .iter()
                .filter(|p| p.node == x && p.peer == ids[y])
                .map(|p| p.ok)
                .collect()
        };
        let (sa, sb) = (seen(a, b), seen(b, a));
        let side = if sa.len() >= sb.len() { sa } else { sb };
        cell.attempts += side.len();
        cell.successes += side.iter().filter(|ok| **ok).count();
        if state[&(a, b)] {
            cell.direct += 1;
        } else {
            cell.relayed += 1;
        }
        for (tag, m) in &log.sent {
            if (m.from.min(m.to), m.from.max(m.to)) == (a, b) {
                cell.messages_sent += 1;
                if log.arrived.contains_key(tag) {
                    cell.messages_delivered += 1;
                }
            }
        }
    }
    // First-attempt share: pairs whose first punch succeeded, over pairs that punched.
    for (key, cell) in cells.iter_mut() {
        let (mut punched, mut first_ok) = (0, 0);
        for &(a, b) in pairs {
            let (na, nb) = (plan.nodes[a].nat, plan.nodes[b].nat);
            if (na.min(nb), na.max(nb)) != *key {
                continue;
            }
            let first = punches
                .iter()
                .find(|p| (p.node == a && p.peer == ids[b]) || (p.node == b && p.peer == ids[a]));
            if let Some(p) = first {
                punched += 1;
                first_ok += usize::from(p.ok);
            }
        }
        cell.first_attempt_share = (punched > 0).then(|| first_ok as f64 / punched as f64);
        cell.delivery_rate = rate(cell.messages_delivered, cell.messages_sent);
        let want_direct = cell.expected == "direct";
        cell.as_expected = if want_direct {
            cell.direct == cell.pairs
        } else {
            cell.relayed == cell.pairs
        };
    }
    cells
}

/// Stops every node on its device's runtime; the bytes they sent.
async fn stop_nodes(nodes: Vec<LabNode>) -> anyhow::Result<Option<u64>> {
    let mut bytes = Some(0u64);
    for n in nodes {
        bytes = bytes.and_then(|b| crate::files::outbound_bytes(n.app.node()).map(|x| x + b));
        let LabNode { dev, app, .. } = n;
        let stop = dev.spawn(move |_| async move {
            let _ = app.shutdown().await;
        })?;
        let _ = tokio::time::timeout(Duration::from_secs(10), stop).await;
    }
    Ok(bytes)
}

pub async fn run(
    s: &Scenario,
    plan: &Plan,
    progress: &crate::Progress,
) -> anyhow::Result<crate::Outcome> {
    if std::env::var_os(USERNS_ENV).is_none_or(|v| v != "1") {
        bail!("netns mode runs in patchbay's user namespace: start it with the simnet binary");
    }
    if let Some(why) = unavailable() {
        bail!("netns mode cannot run here: {why}");
    }
    if !plan.groups.is_empty() {
        bail!("netns mode runs lookups, messages and names; groups are inproc only for now");
    }
    if plan.ops.iter().any(|o| matches!(o.op, Op::File { .. })) {
        bail!("netns mode runs lookups and messages; file transfers are inproc only for now");
    }
    let started = track::Started::now();
    let (lab, devs) = build_lab(plan, progress).await?;
    let mut run = start_nodes(s, plan, &devs, progress).await?;
    wait_reserved(&run.nodes, Duration::from_secs(s.warmup_secs), progress).await?;
    tokio::time::sleep(Duration::from_secs(s.warmup_secs)).await;

    // Arrivals.
    let tracker = Tracker::default();
    let mut watchers = Vec::new();
    for (i, n) in run.nodes.iter().enumerate() {
        watchers.push(tracker.watch_inbox(i, n.app.data().inbox().subscribe()));
    }
    let client = |i: usize| Ok(run.nodes[i].app.node().client().clone());
    track::claim_all(&tracker, plan, |_| true, client, LOOKUP_TIMEOUT, progress).await?;
    let phase = Instant::now();
    workload(&run, plan, &tracker, phase, progress).await?;
    tokio::time::sleep_until(phase + Duration::from_secs(s.duration_secs)).await;
    let until = phase + Duration::from_secs(s.duration_secs + s.drain_secs);
    track::drain(&tracker, plan, &mut Team::Alone, until, progress).await?;
    // A relayed pair may still be punching: its outcome is waited for.
    let (pairs, state) = settle_pairs(&run, &tracker, progress).await?;
    let cells = nat_cells(plan, &run, &pairs, &state, &tracker.lock());
    let direct: usize = cells.values().map(|c| c.direct).sum();
    let bytes = stop_nodes(std::mem::take(&mut run.nodes)).await?;
    for w in watchers {
        w.abort();
    }
    let this = track::Run {
        scenario: s,
        mode: "netns",
        plan,
        started,
        phase,
    };
    let mut outcome = track::outcome(&this, &tracker.lock(), None, &run.first_connect, bytes);
    outcome.report.direct_share = Some(rate(direct, pairs.len()));
    outcome.report.nat_pairs = Some(cells.into_values().collect());
    drop(lab);
    Ok(outcome)
}

/// `node` has a direct (not relayed) connection to `peer`.
async fn is_direct(node: &Node, peer: PeerId) -> anyhow::Result<bool> {
    Ok(node
        .client()
        .peers()
        .await?
        .iter()
        .filter(|p| p.peer_id == peer)
        .flat_map(|p| &p.connections)
        .any(|c| !c.relayed))
}
