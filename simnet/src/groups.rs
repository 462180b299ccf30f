//! The groups workload (`[[workload.groups]]`, inproc mode): before the phase each group's creator
//! makes it and adds the other members, and the run waits until every member (in every process of
//! a split run) holds the log;
//! during the phase members send to their groups and the tracker counts each copy.

use std::{sync::Arc, time::Duration};

use commucat::{
    data,
    groups::{GroupId, Head, Op as GroupOp},
};
use libp2p::PeerId;
use tokio::time::Instant;

use crate::{
    plan::{Op, Plan},
    team::Team,
    track::{self, GroupSend, Tracker},
};

/// Groups made at once.
pub const MAX_CREATES_IN_FLIGHT: usize = 16;

/// Makes the plan's groups: `data(i)` is node `i`'s data service (for the nodes of this
/// process), `ids` the nodes' PeerIds. Each group's creator makes it where it runs; a group counts
/// as made when every member, in every process of `team`, holds the creator's log within
/// `limit`. Returns the group ids by plan index.
pub async fn create_all(
    tracker: &Tracker,
    plan: &Plan,
    team: &mut Team,
    data: impl Fn(usize) -> anyhow::Result<Arc<data::Service>>,
    ids: &[PeerId],
    limit: Duration,
    progress: &crate::Progress,
) -> anyhow::Result<Vec<GroupId>> {
    use futures::StreamExt;
    let total = plan.groups.len() as u64;
    let jobs = (plan.groups.iter().enumerate())
        .filter(|(_, members)| team.owns(members[0]))
        .map(|(g, members)| {
            let peers: Vec<PeerId> = members.iter().map(|&m| ids[m]).collect();
            Ok((g, data(members[0])?, peers))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut running = futures::stream::iter(jobs)
        .map(|(g, creator, peers)| async move { (g, create(g, &creator, &peers).await) })
        .buffer_unordered(MAX_CREATES_IN_FLIGHT);
    let mut made: Vec<(usize, [u8; 16], Head)> = Vec::new();
    while let Some((g, result)) = running.next().await {
        made.extend(result.map(|(id, head)| (g, id.0, head)));
        progress("making groups", made.len() as u64, total);
    }
    drop(running);
    let mut heads: Vec<Option<(GroupId, Head)>> = vec![None; plan.groups.len()];
    for (g, id, head) in team
        .gather("groups made", made)
        .await?
        .into_iter()
        .flatten()
    {
        heads[g] = Some((GroupId(id), head));
    }
    let held = hold(plan, team, &data, &heads, limit).await?;
    let held = team.gather("groups held", held).await?;
    tracker.lock().groups_made = (0..plan.groups.len())
        .map(|g| held.iter().all(|h| h[g]))
        .collect();
    Ok((heads.into_iter())
        .map(|h| h.map_or(GroupId([0; 16]), |h| h.0))
        .collect())
}

/// Per group: whether every member this process runs holds the log at `heads` within `limit`.
async fn hold(
    plan: &Plan,
    team: &Team,
    data: &impl Fn(usize) -> anyhow::Result<Arc<data::Service>>,
    heads: &[Option<(GroupId, Head)>],
    limit: Duration,
) -> anyhow::Result<Vec<bool>> {
    let mut waiting = Vec::new();
    for (g, members) in plan.groups.iter().enumerate() {
        for &m in members.iter().filter(|&&m| team.owns(m)) {
            waiting.push((g, m, data(m)?));
        }
    }
    let holds = |(g, _, s): &(usize, usize, Arc<data::Service>)| match &heads[*g] {
        Some((id, head)) => s.groups().get(id).ok().map(|i| i.head).as_ref() == Some(head),
        None => false,
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !waiting.iter().all(holds) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut held = vec![true; plan.groups.len()];
    for w in waiting.iter().filter(|w| !holds(w)) {
        let (g, m, s) = w;
        held[*g] = false;
        let head = heads[*g]
            .as_ref()
            .and_then(|(id, _)| s.groups().get(id).ok());
        eprintln!(
            "simnet: group {g}: member {m} holds head {:?} after {limit:?}, not the creator's",
            head.map(|i| i.head.seq)
        );
    }
    Ok(held)
}

/// Group `g`: the creator makes it and adds the other peers; its id and head.
async fn create(g: usize, creator: &data::Service, peers: &[PeerId]) -> Option<(GroupId, Head)> {
    let groups = creator.groups();
    let info = match groups.create(&format!("simnet-group-{g}")).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("simnet: group {g} not made: {e}");
            return None;
        }
    };
    for p in &peers[1..] {
        if let Err(e) = groups.change(info.id, GroupOp::Add(*p)).await {
            eprintln!("simnet: group {g}: cannot add {p}: {e}");
        }
    }
    let head = groups.get(&info.id).map(|i| i.head).ok()?;
    Some((info.id, head))
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
