//! `mode = "inproc"`: the plan's nodes in this process (`fleet.rs`), or in the processes of a
//! split run (`simnet::team`, each running this with its part of the nodes), then the workload,
//! each operation in the process that runs its node, and the drain.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    files,
    fleet::Fleet,
    groups, host, meter,
    piece::{self, Piece},
    plan::{Op, Plan},
    scenario::{Clock, Scenario},
    team::Team,
    track::{self, Tracker},
};

/// How long a group may take to reach every member before the phase.
pub const GROUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Workload operations in flight at once (per process).
pub const MAX_IN_FLIGHT: usize = 512;

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
    /// The operations of the plan whose node this process runs.
    async fn run(
        &mut self,
        fleet: &mut Fleet,
        team: &Team,
        phase: Instant,
        progress: &crate::Progress,
    ) -> anyhow::Result<()> {
        let ops_total = self.plan.ops.len() as u64;
        for (k, sched) in self.plan.ops.iter().enumerate() {
            if !sched.op.actor().is_some_and(|a| team.owns(a)) {
                continue;
            }
            tokio::time::sleep_until(phase + Duration::from_millis(sched.at_ms)).await;
            progress("workload", k as u64, ops_total);
            match sched.op {
                Op::Leave { node } => {
                    fleet.ready(node).await?;
                    fleet.leave(node, &self.tracker)?;
                }
                Op::Return { node } => fleet.come_back(node, &self.tracker)?,
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
        let path = fleet.slot(from)?.files.path().join(format!("file-{k}.bin"));
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
    let started = track::Started::now();
    let piece = run_part(s, plan, &mut Team::Alone, metrics_every, progress).await?;
    piece::merge(s, plan, "inproc", started, vec![piece])
}

/// Runs the nodes of `team`'s part and what they do of the plan; what they observed.
pub async fn run_part(
    s: &Scenario,
    plan: &Plan,
    team: &mut Team,
    metrics_every: Option<Duration>,
    progress: &crate::Progress,
) -> anyhow::Result<Piece> {
    let mut fleet = Fleet::new(s, plan, team)?;
    // Under the virtual clock no timer fires late: the guard has nothing to measure.
    let probe = (s.clock == Clock::Real).then(host::Probe::start);
    let meter = metrics_every.map(|every| meter::spawn(every, fleet.registries.clone()));
    fleet.start_all(s, plan, team, progress).await?;
    team.gather("nodes up", ()).await?;

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
        false => Some(Piece::tables(&fleet.routing_tables(progress).await)),
    };

    // Arrivals: every store's inbox notifications (they outlive node restarts).
    let tracker = Tracker::default();
    let mut watchers = Vec::new();
    for (i, slot) in fleet.slots() {
        watchers.push(tracker.watch_inbox(i, slot.store.inbox()?.subscribe()));
    }
    let mine = |i: usize| team.owns(i);
    let client = |i: usize| Ok(fleet.live(i, "claim")?.node().client().clone());
    track::claim_all(&tracker, plan, mine, client, LOOKUP_TIMEOUT, progress).await?;
    team.gather("names claimed", ()).await?;
    let data = |i: usize| Ok(fleet.live(i, "group")?.data().clone());
    let (ids, limit) = (fleet.ids.clone(), GROUP_TIMEOUT);
    let groups = groups::create_all(&tracker, plan, team, data, &ids, limit, progress).await?;
    team.gather("workload", ()).await?;
    let phase = Instant::now();
    if let Some(p) = &probe {
        p.measured();
    }
    let drain_until = phase + Duration::from_secs(s.duration_secs + s.drain_secs);
    let mut workload = Workload {
        plan,
        groups,
        tracker: tracker.clone(),
        gate: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        tasks: tokio::task::JoinSet::new(),
        drain_until,
    };
    workload.run(&mut fleet, team, phase, progress).await?;
    fleet.settle().await?;
    // Up to the end of the workload phase, then the drain.
    tokio::time::sleep_until(phase + Duration::from_secs(s.duration_secs)).await;
    track::drain(&tracker, plan, team, drain_until, progress).await?;
    while workload.tasks.join_next().await.is_some() {}
    let host = probe.map(host::Probe::finish);
    if let Some(m) = meter {
        m.abort();
    }
    let security = fleet.wire.security;
    let first_connect_ms = fleet.first_connect.entries();
    let bytes_sent = fleet.stop(progress).await;
    for w in watchers {
        w.abort();
    }
    Ok(Piece {
        log: tracker.lock().ship(phase),
        tables,
        first_connect_ms,
        bytes_sent,
        host,
        peak_rss_kib: crate::report::peak_rss_kib(),
        security,
    })
}
