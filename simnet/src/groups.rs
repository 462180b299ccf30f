//! The groups workload (`[[workload.groups]]`, inproc mode): before the phase each group's creator
//! makes it and adds the other members, and the run waits until every member holds the log;
//! during the phase members send to their groups and the tracker counts each copy.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use commucat::{
    data,
    groups::{GroupId, Op as GroupOp},
};
use libp2p::PeerId;

use crate::{
    plan::{Op, Plan},
    track::{self, GroupSend, Tracker},
};

/// Groups made at once.
pub const MAX_CREATES_IN_FLIGHT: usize = 16;

/// Makes the plan's groups: `data(i)` is node `i`'s data service, `ids` the nodes' PeerIds. A
/// group counts as made when every member holds the creator's log within `limit`. Returns the
/// group ids by plan index.
pub async fn create_all(
    tracker: &Tracker,
    plan: &Plan,
    data: impl Fn(usize) -> anyhow::Result<Arc<data::Service>>,
    ids: &[PeerId],
    limit: Duration,
    progress: &crate::Progress,
) -> anyhow::Result<Vec<GroupId>> {
    use futures::StreamExt;
    let total = plan.groups.len() as u64;
    let jobs = (plan.groups.iter().enumerate())
        .map(|(g, members)| {
            let services = members
                .iter()
                .map(|&m| data(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let peers: Vec<PeerId> = members.iter().map(|&m| ids[m]).collect();
            Ok((g, services, peers))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut made = vec![(GroupId([0; 16]), false); jobs.len()];
    let mut running = futures::stream::iter(jobs)
        .map(|(g, services, peers)| async move { (g, create(g, &services, &peers, limit).await) })
        .buffer_unordered(MAX_CREATES_IN_FLIGHT);
    let mut done = 0;
    while let Some((g, result)) = running.next().await {
        made[g] = result;
        done += 1;
        progress("making groups", done, total);
    }
    tracker.lock().groups_made = made.iter().map(|m| m.1).collect();
    Ok(made.into_iter().map(|m| m.0).collect())
}

/// Group `g`: the first service makes it and adds the other peers; true when every member holds
/// the same log within `limit`.
async fn create(
    g: usize,
    services: &[Arc<data::Service>],
    peers: &[PeerId],
    limit: Duration,
) -> (GroupId, bool) {
    let creator = services[0].groups();
    let mut events = services[0].subscribe();
    let info = match creator.create(&format!("simnet-group-{g}")).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("simnet: group {g} not made: {e}");
            return (GroupId([0; 16]), false);
        }
    };
    for p in &peers[1..] {
        if let Err(e) = creator.change(info.id, GroupOp::Add(*p)).await {
            eprintln!("simnet: group {g}: cannot add {p}: {e}");
        }
    }
    let deadline = Instant::now() + limit;
    let head = creator.get(&info.id).map(|i| i.head).ok();
    while Instant::now() < deadline {
        if services
            .iter()
            .all(|s| s.groups().get(&info.id).ok().map(|i| i.head) == head)
        {
            return (info.id, true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("simnet: group {g}: not every member holds the log after {limit:?}");
    let mut last_error = std::collections::HashMap::new();
    loop {
        match events.try_recv() {
            Ok(data::Event::DeliveryFailed { to, error }) => {
                last_error.insert(to, error);
            }
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    for (s, p) in services.iter().zip(peers).skip(1) {
        let held = s.groups().get(&info.id).ok().map(|i| i.head.seq);
        let queued = services[0].outbox().pending(p, 0, 64).map(|v| v.len());
        let error = last_error.get(p);
        eprintln!(
            "simnet:   member {p}: head {held:?}, creator's copies queued to it: {queued:?}, last failure {error:?}"
        );
    }
    (info.id, false)
}

/// Sends workload message `k` of `size` bytes from `from` to group `group` through `data`.
pub fn send(
    tasks: &mut tokio::task::JoinSet<()>,
    tracker: &Tracker,
    plan: &Plan,
    (k, op): (usize, Op),
    id: GroupId,
    data: Arc<data::Service>,
) {
    let Op::GroupMessage { group, from, size } = op else {
        return;
    };
    let (tag, body) = track::body(k, size);
    let to: Vec<usize> = plan.groups[group]
        .iter()
        .copied()
        .filter(|&m| m != from)
        .collect();
    tracker.lock().group_sent.insert(
        tag.clone(),
        GroupSend {
            at: Instant::now(),
            group,
            to,
        },
    );
    tasks.spawn(async move {
        if let Err(e) = data.groups().send(id, body).await {
            eprintln!("simnet: group message {tag} not queued: {e}");
        }
    });
}
