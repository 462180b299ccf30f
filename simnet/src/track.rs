//! What a run observes of its workload (sends, arrivals, returns, lookups, files) and the report
//! sections drawn from it. Shared by both modes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use commucat::{
    node::{Client, FindSource},
    store::inbox,
};
use libp2p::PeerId;
use tokio::{sync::broadcast::error::RecvError, time::Instant};

mod per_second;
mod shipped;
use per_second::PerSecond;
pub use shipped::Shipped;

use crate::{
    plan::Plan,
    report::{
        Dist, Files, GroupRow, Lookups, Messages, Names, Report, Second, Share, ToOffline, rate,
    },
    scenario::Scenario,
    team::Team,
};

/// One message sent by the workload.
pub struct Sent {
    pub at: Instant,
    pub from: usize,
    pub to: usize,
    /// The target was offline when it was sent.
    pub to_offline: bool,
}

pub struct Lookup {
    pub from: usize,
    pub to: usize,
    pub found: bool,
    pub via_dht: bool,
    pub ms: f64,
}

pub struct Resolution {
    /// `Some(true)`: the claimer; `Some(false)`: another node; `None`: not found.
    pub owner_ok: Option<bool>,
    pub ms: f64,
}

/// One group message sent by the workload: due at every member but its sender.
pub struct GroupSend {
    pub at: Instant,
    pub group: usize,
    pub to: Vec<usize>,
}

pub struct File {
    pub size: usize,
    /// Milliseconds from the send call to completion, if it completed.
    pub done_ms: Option<f64>,
}

#[derive(Default)]
pub struct Log {
    /// By message tag.
    pub sent: HashMap<String, Sent>,
    /// Arrival times by message tag.
    pub arrived: HashMap<String, Vec<Instant>>,
    pub lookups: Vec<Lookup>,
    pub files: Vec<File>,
    pub claims: Vec<bool>,
    pub resolutions: Vec<Resolution>,
    /// Per node: when it came back from each of its downtimes.
    pub returned: HashMap<usize, Vec<Instant>>,
    pub leaves: usize,
    /// Per group of the plan: whether every member held the log before the phase.
    pub groups_made: Vec<bool>,
    /// Group messages by tag.
    pub group_sent: HashMap<String, GroupSend>,
    /// Group message arrivals by tag: the member and when.
    pub group_arrived: HashMap<String, Vec<(usize, Instant)>>,
}

#[derive(Clone, Default)]
pub struct Tracker(Arc<Mutex<Log>>);

impl Tracker {
    pub fn lock(&self) -> MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an inbox arrival of `body` (tagged by its first word).
    pub fn arrival(&self, body: &str) {
        let tag = body.split(' ').next().unwrap_or_default().to_owned();
        self.lock()
            .arrived
            .entry(tag)
            .or_default()
            .push(Instant::now());
    }
}

impl Tracker {
    /// Records that workload message `tag` is being sent now.
    pub fn sending(&self, tag: &str, from: usize, to: usize, to_offline: bool) {
        self.lock().sent.insert(
            tag.to_owned(),
            Sent {
                at: Instant::now(),
                from,
                to,
                to_offline,
            },
        );
    }

    /// Records every arrival in node `node`'s `inbox` until it closes or the task is aborted.
    pub fn watch_inbox(
        &self,
        node: usize,
        mut inbox: commucat::broadcast::Subscription<inbox::Message>,
    ) -> tokio::task::JoinHandle<()> {
        let t = self.clone();
        tokio::spawn(async move {
            loop {
                match inbox.recv().await {
                    Ok(m) if m.group.is_some() => {
                        let tag = m.body.split(' ').next().unwrap_or_default().to_owned();
                        (t.lock().group_arrived.entry(tag).or_default())
                            .push((node, Instant::now()));
                    }
                    Ok(m) => t.arrival(&m.body),
                    Err(RecvError::Lagged(n)) => {
                        eprintln!("simnet: an inbox watcher missed {n} arrivals")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }

    /// Looks `target` (node `to`) up from `client` (node `from`) within `limit` and records it.
    pub async fn lookup(
        &self,
        client: Client,
        from: usize,
        to: usize,
        target: PeerId,
        limit: Duration,
    ) {
        let started = Instant::now();
        let r = tokio::time::timeout(limit, client.find_peer(target)).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (found, via_dht) = match r {
            Ok(Ok(f)) => (!f.addrs.is_empty(), f.source == FindSource::Dht),
            _ => (false, false),
        };
        self.lock().lookups.push(Lookup {
            from,
            to,
            found,
            via_dht,
            ms,
        });
    }
}

/// Claims made before the workload phase at once, at most this many at a time.
pub const MAX_CLAIMS_IN_FLIGHT: usize = 64;

/// The plan's claims ([`Op::Claim`](crate::plan::Op::Claim)), made before the workload phase and
/// waited for, so that the phase's resolutions look up names that exist. `client`: a claiming
/// node's client, by node index; `mine`: whether this process runs the node.
pub async fn claim_all(
    tracker: &Tracker,
    plan: &Plan,
    mine: impl Fn(usize) -> bool,
    client: impl Fn(usize) -> anyhow::Result<Client>,
    limit: Duration,
    progress: &crate::Progress,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let nodes: Vec<usize> = (plan.ops.iter())
        .filter_map(|o| match o.op {
            crate::plan::Op::Claim { node } if mine(node) => Some(node),
            _ => None,
        })
        .collect();
    let claims = (nodes.iter())
        .map(|&n| Ok((n, client(n)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total = claims.len() as u64;
    let mut done = 0;
    let mut running = futures::stream::iter(claims)
        .map(|(n, c)| tracker.claim(c, n, limit))
        .buffer_unordered(MAX_CLAIMS_IN_FLIGHT);
    while running.next().await.is_some() {
        done += 1;
        progress("claiming names", done, total);
    }
    Ok(())
}

impl Tracker {
    /// Node `node` claims its handle through `client`.
    pub async fn claim(&self, client: Client, node: usize, limit: Duration) {
        let handle = commucat::names::Handle::parse(&crate::plan::handle_of(node))
            .expect("node-<i> is a handle");
        let ok = matches!(
            tokio::time::timeout(limit, client.claim_name(handle)).await,
            Ok(Ok(()))
        );
        if !ok {
            eprintln!("simnet: node {node} could not claim its name");
        }
        self.lock().claims.push(ok);
    }

    /// Resolves node `to`'s handle from `client` within `limit`; right when it is `target`.
    pub async fn resolve(&self, client: Client, to: usize, target: PeerId, limit: Duration) {
        let handle = commucat::names::Handle::parse(&crate::plan::handle_of(to))
            .expect("node-<i> is a handle");
        let started = Instant::now();
        let r = tokio::time::timeout(limit, client.resolve_name(handle)).await;
        let owner_ok = match r {
            Ok(Ok(Some(r))) => Some(r.peer_id == target),
            _ => None,
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.lock().resolutions.push(Resolution { owner_ok, ms });
    }
}

/// Per node: time from its start to its first connection.
#[derive(Clone)]
pub struct FirstConnects(Arc<Mutex<Vec<Option<Duration>>>>);

impl FirstConnects {
    pub fn new(nodes: usize) -> Self {
        Self(Arc::new(Mutex::new(vec![None; nodes])))
    }

    /// Node `i` connected `after` its start (only the first call per node counts).
    pub fn record(&self, i: usize, after: Duration) {
        self.0.lock().unwrap_or_else(|e| e.into_inner())[i].get_or_insert(after);
    }

    /// (node, milliseconds) of every node that connected.
    pub fn entries(&self) -> Vec<(usize, f64)> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (v.iter().enumerate())
            .filter_map(|(i, d)| Some((i, d.as_ref()?.as_secs_f64() * 1000.0)))
            .collect()
    }

    /// The distribution in milliseconds, and how many nodes never connected.
    pub fn summary(&self) -> (Dist, usize) {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let ms: Vec<f64> = v
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        (Dist::of(&ms), v.iter().filter(|d| d.is_none()).count())
    }
}

/// The body of workload message `k`: its tag, then padding up to `size` bytes.
pub fn body(k: usize, size: usize) -> (String, String) {
    let tag = format!("simnet-{k}");
    let mut body = format!("{tag} ");
    while body.len() < size {
        body.push('x');
    }
    (tag, body)
}

/// When a run started, on both clocks: the host's (its wall time) and the nodes' (the same, or
/// virtual time under `clock = "virtual"`).
#[derive(Clone, Copy)]
pub struct Started {
    pub wall: std::time::Instant,
    pub clock: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            wall: std::time::Instant::now(),
            clock: Instant::now(),
        }
    }
}

/// A finished run, as both modes describe it to [`outcome`].
pub struct Run<'a> {
    pub scenario: &'a Scenario,
    /// `inproc` or `netns`.
    pub mode: &'static str,
    pub plan: &'a Plan,
    /// When the run started (wall and simulated time are measured from here).
    pub started: Started,
    /// When the workload started (the timeline's second 0).
    pub phase: Instant,
}

/// The outcome of a run with the report's sections that both modes draw alike from `log`, the
/// first connections and the bytes sent; the sections of one mode only (churn, NAT pairs, direct
/// share) are left for that mode to fill in.
pub fn outcome(
    run: &Run,
    log: &Log,
    hops: Option<Vec<f64>>,
    first_connects: &FirstConnects,
    bytes_sent: Option<u64>,
) -> crate::Outcome {
    let (lookups, lookup_ms) = lookups(log, hops);
    let (messages, delivery_ms, timeline) =
        messages(log, run.plan, run.phase, run.scenario.duration_secs);
    let (time_to_first_bootstrap_ms, isolated_nodes) = first_connects.summary();
    let (group_report, group_ms) = groups(log);
    let report = Report {
        scenario: run.scenario.name.clone(),
        mode: run.mode.into(),
        seed: run.plan.seed,
        nodes: run.plan.nodes.len(),
        wall_secs: run.started.wall.elapsed().as_secs_f64(),
        clock: run.scenario.clock,
        simulated_secs: (run.scenario.clock == crate::scenario::Clock::Virtual)
            .then(|| run.started.clock.elapsed().as_secs_f64()),
        peak_rss_kib: crate::report::peak_rss_kib(),
        time_to_first_bootstrap_ms,
        isolated_nodes,
        lookups,
        messages,
        files: files(log),
        names: names(log),
        groups: group_report,
        churn: None,
        nat_pairs: None,
        direct_share: None,
        timeline,
        bytes_sent,
        host: None,
        security: None,
    };
    crate::Outcome {
        report,
        lookup_ms,
        delivery_ms,
        group_ms,
    }
}

fn lookups(log: &Log, hops: Option<Vec<f64>>) -> (Lookups, Vec<f64>) {
    let ok: Vec<&Lookup> = log.lookups.iter().filter(|l| l.found).collect();
    let ms: Vec<f64> = ok.iter().map(|l| l.ms).collect();
    (
        Lookups {
            attempted: log.lookups.len(),
            succeeded: ok.len(),
            success_rate: rate(ok.len(), log.lookups.len()),
            via_dht: ok.iter().filter(|l| l.via_dht).count(),
            latency_ms: Dist::of(&ms),
            hops: hops.map(|h| Dist::of(&h)),
        },
        ms,
    )
}

fn names(log: &Log) -> Option<Names> {
    if log.claims.is_empty() && log.resolutions.is_empty() {
        return None;
    }
    let ok: Vec<f64> = (log.resolutions.iter())
        .filter(|r| r.owner_ok == Some(true))
        .map(|r| r.ms)
        .collect();
    Some(Names {
        claimed: log.claims.iter().filter(|c| **c).count(),
        claim_failures: log.claims.iter().filter(|c| !**c).count(),
        resolutions: log.resolutions.len(),
        resolved: ok.len(),
        wrong_owner: (log.resolutions.iter())
            .filter(|r| r.owner_ok == Some(false))
            .count(),
        success_rate: rate(ok.len(), log.resolutions.len()),
        latency_ms: Dist::of(&ok),
    })
}

/// The groups section, and the send-to-last-member latencies behind it.
fn groups(log: &Log) -> (Option<crate::report::Groups>, Vec<f64>) {
    if log.groups_made.is_empty() {
        return (None, Vec::new());
    }
    let mut rows: Vec<GroupRow> = (log.groups_made.iter().enumerate())
        .map(|(group, made)| GroupRow {
            group,
            made: *made,
            messages: 0,
            copies: 0,
            delivered: 0,
            delivery_rate: 1.0,
            duplicates: 0,
            to_last_member_ms: Dist::of(&[]),
        })
        .collect();
    let mut to_last: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for (tag, send) in &log.group_sent {
        let arrivals = log.group_arrived.get(tag).map_or(&[][..], Vec::as_slice);
        let mut got: HashMap<usize, Instant> = HashMap::new();
        let row = &mut rows[send.group];
        for (node, at) in arrivals {
            row.duplicates += usize::from(got.insert(*node, *at).is_some());
        }
        let reached = send.to.iter().filter(|m| got.contains_key(m)).count();
        row.messages += 1;
        row.copies += send.to.len();
        row.delivered += reached;
        if reached == send.to.len()
            && let Some(last) = send.to.iter().filter_map(|m| got.get(m)).max()
        {
            to_last[send.group].push(last.duration_since(send.at).as_secs_f64() * 1000.0);
        }
    }
    for (row, ms) in rows.iter_mut().zip(&to_last) {
        row.delivery_rate = rate(row.delivered, row.copies);
        row.to_last_member_ms = Dist::of(ms);
    }
    let all: Vec<f64> = to_last.concat();
    let (copies, delivered) =
        (rows.iter()).fold((0, 0), |(c, d), r| (c + r.copies, d + r.delivered));
    let report = crate::report::Groups {
        groups: rows.len(),
        made: rows.iter().filter(|r| r.made).count(),
        messages: log.group_sent.len(),
        copies,
        delivered,
        delivery_rate: rate(delivered, copies),
        duplicates: rows.iter().map(|r| r.duplicates).sum(),
        to_last_member_ms: Dist::of(&all),
        worst_group_rate: (rows.iter())
            .filter(|r| r.copies > 0)
            .map(|r| r.delivery_rate)
            .min_by(f64::total_cmp),
        per_group: rows,
    };
    (Some(report), all)
}

fn files(log: &Log) -> Option<Files> {
    if log.files.is_empty() {
        return None;
    }
    let done: Vec<&File> = log.files.iter().filter(|f| f.done_ms.is_some()).collect();
    let ms: Vec<f64> = done.iter().filter_map(|f| f.done_ms).collect();
    let mbps: Vec<f64> = done
        .iter()
        .map(|f| f.size as f64 * 8.0 / 1e6 / (f.done_ms.unwrap_or(1.0).max(1.0) / 1000.0))
        .collect();
    Some(Files {
        sent: log.files.len(),
        completed: done.len(),
        completion_rate: rate(done.len(), log.files.len()),
        latency_ms: Dist::of(&ms),
        throughput_mbps: Dist::of(&mbps),
    })
}

/// The message section, the delivery latencies, and the per-second timeline from `phase` (the
/// start of the workload) for `secs` seconds at least, and up to the last send or arrival.
fn messages(
    log: &Log,
    plan: &Plan,
    phase: Instant,
    secs: u64,
) -> (Messages, Vec<f64>, Vec<Second>) {
    let mut delivery_ms = Vec::new();
    let mut duplicates = 0;
    // Every second from the start of the workload to the last send or arrival (deliveries may
    // come during the drain, or while the nodes stop).
    let latest = (log.sent.values().map(|s| s.at))
        .chain(log.group_sent.values().map(|g| g.at))
        .chain(log.arrived.values().flatten().copied())
        .chain(log.group_arrived.values().flatten().map(|(_, t)| *t))
        .map(|t| t.saturating_duration_since(phase).as_secs() as usize)
        .max()
        .unwrap_or(0);
    let n = latest.max(secs as usize) + 1;
    let mut per = PerSecond {
        sent: vec![0; n],
        live_sent: vec![0; n],
        live_ok: vec![0; n],
        arrived: vec![0; n],
    };
    let (mut live_sent, mut live_ok) = (0, 0);
    let (mut off_sent, mut off_ok, mut off_dup, mut off_early) = (0, 0, 0, 0);
    let mut after_return = Vec::new();
    let bump = |v: &mut Vec<usize>, i: usize| {
        if let Some(slot) = v.get_mut(i) {
            *slot += 1;
        }
    };
    for (tag, s) in &log.sent {
        let i = s.at.saturating_duration_since(phase).as_secs() as usize;
        bump(&mut per.sent, i);
        let first = log.arrived.get(tag).and_then(|a| a.iter().min().copied());
        let copies = log.arrived.get(tag).map_or(0, Vec::len);
        if let Some(first) = first {
            delivery_ms.push(first.duration_since(s.at).as_secs_f64() * 1000.0);
            duplicates += copies - 1;
            bump(
                &mut per.arrived,
                first.saturating_duration_since(phase).as_secs() as usize,
            );
        }
        if s.to_offline {
            off_sent += 1;
            if let Some(first) = first {
                off_ok += 1;
                off_dup += copies - 1;
                // The return that ended the downtime this message was sent in.
                let back = log
                    .returned
                    .get(&s.to)
                    .and_then(|r| r.iter().filter(|t| **t >= s.at).min().copied());
                match back {
                    Some(back) if first >= back => {
                        after_return.push(first.duration_since(back).as_secs_f64() * 1000.0)
                    }
                    _ => off_early += 1,
                }
            }
        } else {
            live_sent += 1;
            bump(&mut per.live_sent, i);
            if first.is_some() {
                live_ok += 1;
                bump(&mut per.live_ok, i);
            }
        }
    }
    per.add_group_copies(log, plan, phase);
    let sent = log.sent.len();
    let delivered = delivery_ms.len();
    let timeline = per.timeline(plan, secs);
    let messages = Messages {
        sent,
        delivered,
        delivery_rate: rate(delivered, sent),
        duplicates,
        latency_ms: Dist::of(&delivery_ms),
        to_live: Share {
            sent: live_sent,
            delivered: live_ok,
            delivery_rate: rate(live_ok, live_sent),
        },
        to_offline: (off_sent > 0).then(|| ToOffline {
            sent: off_sent,
            delivered: off_ok,
            delivery_rate: rate(off_ok, off_sent),
            duplicates: off_dup,
            delivered_before_return: off_early,
            after_return_ms: Dist::of(&after_return),
        }),
    };
    (messages, delivery_ms, timeline)
}

/// Waits until every message the processes of `team` sent arrived, or `until` on any of them,
/// reporting progress.
pub async fn drain(
    tracker: &Tracker,
    plan: &Plan,
    team: &mut Team,
    until: Instant,
    progress: &crate::Progress,
) -> anyhow::Result<()> {
    loop {
        let (sent, arrived) = tracker.lock().sent_and_arrived(plan);
        let late = Instant::now() >= until;
        let all = team.gather("drain", (sent, arrived, late)).await?;
        let (sent, arrived) = (all.iter()).fold((0, 0), |(s, a), x| (s + x.0, a + x.1));
        progress("draining", arrived as u64, sent as u64);
        if arrived >= sent || all.iter().any(|x| x.2) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
