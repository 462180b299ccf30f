//! The plan of a run, drawn from the scenario and the seed alone: which nodes exist, whom each
//! bootstraps from, and every workload operation with its time, source and target. The same
//! scenario and seed give the same plan (`tests/scenarios.rs`); node keys are fresh each run.

use commucat::{
    crypto::{KeyRing, LocalKeys, keyring::Schedule},
    identity::Identity,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::scenario::{DEFAULT_FILE_BYTES, Flow, Nat, Role, Scenario};

/// Spreads node indices over the seed space for their keys (the golden ratio's odd multiplier).
const KEY_SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Bootstrap nodes a desktop node is given at most.
pub const BOOTSTRAP_FANOUT: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    pub group: String,
    pub role: Role,
    /// Indices of the nodes it bootstraps from (always bootstrap-role nodes started before it).
    pub bootstrap: Vec<usize>,
    /// The router it sits behind (`netns`).
    pub nat: Nat,
    /// When it is offline (churn, outages), in workload milliseconds; sorted, disjoint.
    pub downtime: Vec<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl PlannedNode {
    /// Online at `t_ms` of the workload phase.
    pub fn live_at(&self, t_ms: u64) -> bool {
        !self
            .downtime
            .iter()
            .any(|w| w.from_ms <= t_ms && t_ms < w.to_ms)
    }

    /// The downtime window that contains `t_ms`, if any.
    pub fn down_at(&self, t_ms: u64) -> Option<Window> {
        self.downtime
            .iter()
            .copied()
            .find(|w| w.from_ms <= t_ms && t_ms < w.to_ms)
    }
}

/// The handle node `i` claims in a names workload.
pub fn handle_of(i: usize) -> String {
    format!("node-{i}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Op {
    Lookup {
        from: usize,
        to: usize,
    },
    /// Node `node` claims [`handle_of`]`(node)`: before the workload phase, awaited (at `at_ms` 0
    /// in the plan).
    Claim {
        node: usize,
    },
    /// Node `from` resolves the handle of node `to`.
    Resolve {
        from: usize,
        to: usize,
    },
    Message {
        from: usize,
        to: usize,
        size: usize,
    },
    File {
        from: usize,
        to: usize,
        size: usize,
    },
    /// The node stops (its identity and store are kept).
    Leave {
        node: usize,
    },
    /// The node starts again with the same identity, store and address.
    Return {
        node: usize,
    },
    /// Group `group` of [`Plan::groups`] is made before the workload phase (at `at_ms` 0).
    GroupCreate {
        group: usize,
    },
    /// Member `from` sends a message to group `group`.
    GroupMessage {
        group: usize,
        from: usize,
        size: usize,
    },
}

impl Op {
    /// The node that carries the operation out (in a split run, the process that runs it does);
    /// `None` for a group's creation, made by its first member before the phase.
    pub fn actor(&self) -> Option<usize> {
        match *self {
            Op::Lookup { from, .. }
            | Op::Resolve { from, .. }
            | Op::Message { from, .. }
            | Op::File { from, .. }
            | Op::GroupMessage { from, .. } => Some(from),
            Op::Claim { node } | Op::Leave { node } | Op::Return { node } => Some(node),
            Op::GroupCreate { .. } => None,
        }
    }
}

/// Sources and targets of lookups and files, and senders of messages, are online when the
/// operation is due, and stay so for this long (a message's target may be offline: its delivery
/// waits for the return).
pub const LIVE_MARGIN_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    /// Milliseconds into the workload phase.
    pub at_ms: u64,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub nodes: Vec<PlannedNode>,
    /// Sorted by time.
    pub ops: Vec<Scheduled>,
    /// The members of each group of `[[workload.groups]]`, its creator first.
    #[serde(default)]
    pub groups: Vec<Vec<usize>>,
}

impl Plan {
    /// Node `i`'s keys: its identity (so its peer id, and with it its place in the DHT) from the
    /// seed, the same in every run of this plan and in every process of a split run; its key
    /// bundles fresh.
    pub fn keys(&self, i: usize) -> LocalKeys {
        let identity = self.identity(i);
        let bundle = KeyRing::generate(&identity, Schedule::default());
        LocalKeys { identity, bundle }
    }

    /// Node `i`'s peer id: its Ed25519 key's, without the rest of the identity and the key
    /// bundles that [`Plan::keys`] makes (their signatures cost a millisecond a node).
    pub fn peer_id(&self, i: usize) -> libp2p::PeerId {
        let (mut ed25519, _) = self.secrets(i);
        libp2p::identity::Keypair::ed25519_from_bytes(&mut ed25519)
            .expect("any 32 bytes are a valid Ed25519 secret key")
            .public()
            .to_peer_id()
    }

    fn identity(&self, i: usize) -> Identity {
        let (ed25519, ml_dsa) = self.secrets(i);
        Identity::from_secrets(ed25519, ml_dsa)
    }

    fn secrets(&self, i: usize) -> ([u8; 32], [u8; 32]) {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (i as u64 + 1).wrapping_mul(KEY_SPREAD));
        (rng.random(), rng.random())
    }

    pub fn new(s: &Scenario, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut nodes, members) = place(s, &mut rng);
        let span = s.duration_secs * 1000;
        let mut ops = Vec::new();

        downtime(s, &mut rng, &mut nodes, &members);
        for (i, n) in nodes.iter().enumerate() {
            for w in &n.downtime {
                ops.push(Scheduled {
                    at_ms: w.from_ms,
                    op: Op::Leave { node: i },
                });
                ops.push(Scheduled {
                    at_ms: w.to_ms,
                    op: Op::Return { node: i },
                });
            }
        }

        let live = |i: usize, t: u64| {
            nodes[i].live_at(t) && nodes[i].live_at(t + LIVE_MARGIN_MS.min(span - t))
        };
        let mut flows = |list: &[Flow], kind: u8, rng: &mut StdRng| {
            for f in list {
                let (from, to) = (&members[f.from.as_str()], &members[f.to.as_str()]);
                for _ in 0..f.count {
                    let at_ms = rng.random_range(0..span);
                    // Draw until the ends are allowed (bounded: give up on an operation nobody
                    // can do at that time).
                    let pair = (0..1000).find_map(|_| {
                        let a = from[rng.random_range(0..from.len())];
                        let b = to[rng.random_range(0..to.len())];
                        let ok = a != b
                            && live(a, at_ms)
                            && (kind == 1 || live(b, at_ms))
                            && (kind != 3 || live(b, 0));
                        ok.then_some((a, b))
                    });
                    let Some((a, b)) = pair else { continue };
                    let op = match kind {
                        0 => Op::Lookup { from: a, to: b },
                        3 => Op::Resolve { from: a, to: b },
                        1 => Op::Message {
                            from: a,
                            to: b,
                            size: f.size_bytes.unwrap_or(64),
                        },
                        _ => Op::File {
                            from: a,
                            to: b,
                            size: f.size_bytes.unwrap_or(DEFAULT_FILE_BYTES),
                        },
                    };
                    ops.push(Scheduled { at_ms, op });
                }
            }
        };
        flows(&s.workload.lookups, 0, &mut rng);
        flows(&s.workload.messages, 1, &mut rng);
        flows(&s.workload.files, 2, &mut rng);
        flows(&s.workload.names, 3, &mut rng);
        let mut claimers: Vec<usize> = ops
            .iter()
            .filter_map(|o| match o.op {
                Op::Resolve { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        claimers.sort_unstable();
        claimers.dedup();
        for node in claimers {
            ops.push(Scheduled {
                at_ms: 0,
                op: Op::Claim { node },
            });
        }
        let groups = plan_groups(s, &nodes, &members, &mut rng, &mut ops);
        ops.sort_by_key(|o| o.at_ms);
        Plan {
            seed,
            nodes,
            ops,
            groups,
        }
    }

    /// Nodes online at `t_ms` of the workload phase.
    pub fn live_nodes(&self, t_ms: u64) -> usize {
        self.nodes.iter().filter(|n| n.live_at(t_ms)).count()
    }
}

/// The groups of `[[workload.groups]]`: members online at the start (the creator first), a
/// [`Op::GroupCreate`] each, and their messages at the given rate from members online then.
fn plan_groups(
    s: &Scenario,
    nodes: &[PlannedNode],
    members: &std::collections::HashMap<&str, Vec<usize>>,
    rng: &mut StdRng,
    ops: &mut Vec<Scheduled>,
) -> Vec<Vec<usize>> {
    let span = s.duration_secs * 1000;
    let mut groups = Vec::new();
    for flow in &s.workload.groups {
        let pool: Vec<usize> = members[flow.from.as_str()]
            .iter()
            .copied()
            .filter(|&i| nodes[i].live_at(0))
            .collect();
        let per_group = (flow.messages_per_minute * s.duration_secs as f64 / 60.0).round() as usize;
        for _ in 0..flow.groups {
            if pool.len() < flow.members {
                break;
            }
            let chosen = pick(rng, &pool, flow.members);
            let g = groups.len();
            ops.push(Scheduled {
                at_ms: 0,
                op: Op::GroupCreate { group: g },
            });
            for _ in 0..per_group {
                let at_ms = rng.random_range(0..span.max(1));
                let senders: Vec<usize> = chosen
                    .iter()
                    .copied()
                    .filter(|&m| {
                        nodes[m].live_at(at_ms)
                            && nodes[m].live_at((at_ms + LIVE_MARGIN_MS).min(span))
                    })
                    .collect();
                if senders.is_empty() {
                    continue;
                }
                ops.push(Scheduled {
                    at_ms,
                    op: Op::GroupMessage {
                        group: g,
                        from: senders[rng.random_range(0..senders.len())],
                        size: flow.size_bytes.unwrap_or(64),
                    },
                });
            }
            groups.push(chosen);
        }
    }
    groups
}

/// Groups of nodes, in order: bootstrap groups first, so that their nodes exist before anyone
/// dials them. With each group's node indices.
fn place<'s>(
    s: &'s Scenario,
    rng: &mut StdRng,
) -> (
    Vec<PlannedNode>,
    std::collections::HashMap<&'s str, Vec<usize>>,
) {
    // Bootstrap groups first, so that their nodes exist before anyone dials them.
    let mut nodes = Vec::with_capacity(s.nodes());
    let mut members: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    let ordered = s
        .groups
        .iter()
        .filter(|g| g.role == Role::Bootstrap)
        .chain(s.groups.iter().filter(|g| g.role != Role::Bootstrap));
    let mut boots: Vec<usize> = Vec::new();
    for g in ordered {
        for _ in 0..g.count {
            let i = nodes.len();
            let bootstrap = match g.role {
                // Each bootstrap node knows the ones before it: one connected backbone.
                Role::Bootstrap => boots.clone(),
                Role::Desktop => pick(rng, &boots, BOOTSTRAP_FANOUT),
            };
            if g.role == Role::Bootstrap {
                boots.push(i);
            }
            members.entry(g.name.as_str()).or_default().push(i);
            nodes.push(PlannedNode {
                group: g.name.clone(),
                role: g.role,
                bootstrap,
                nat: g.nat(),
                downtime: Vec::new(),
            });
        }
    }
    (nodes, members)
}

/// Outages, then churn, as windows of downtime: each node leaves at most once.
fn downtime(
    s: &Scenario,
    rng: &mut StdRng,
    nodes: &mut [PlannedNode],
    members: &std::collections::HashMap<&str, Vec<usize>>,
) {
    let span = s.duration_secs * 1000;
    let mut churned = std::collections::HashSet::new();
    for o in &s.outages {
        let group = &members[o.group.as_str()];
        let mut pool: Vec<usize> = group
            .iter()
            .copied()
            .filter(|i| !churned.contains(i))
            .collect();
        for _ in 0..o.count.unwrap_or(group.len()).min(pool.len()) {
            let i = pool.swap_remove(rng.random_range(0..pool.len()));
            churned.insert(i);
            let w = Window {
                from_ms: o.at_secs * 1000,
                to_ms: (o.at_secs + o.for_secs) * 1000,
            };
            nodes[i].downtime.push(w);
        }
    }
    if let Some(c) = &s.churn {
        let groups: Vec<&str> = if c.groups.is_empty() {
            s.groups
                .iter()
                .filter(|g| g.role != Role::Bootstrap)
                .map(|g| g.name.as_str())
                .collect()
        } else {
            c.groups.iter().map(String::as_str).collect()
        };
        let mut pool: Vec<usize> = groups
            .iter()
            .flat_map(|g| members[g].iter().copied())
            .filter(|i| !churned.contains(i))
            .collect();
        pool.sort_unstable();
        let leaves = (c.leaves_per_min * s.duration_secs as f64 / 60.0).round() as usize;
        let (lo, hi) = (c.down_secs[0] * 1000, c.down_secs[1] * 1000);
        for _ in 0..leaves.min(pool.len()) {
            let i = pool.swap_remove(rng.random_range(0..pool.len()));
            let down = rng.random_range(lo..=hi);
            let from_ms = rng.random_range(0..span.saturating_sub(down).max(1));
            nodes[i].downtime.push(Window {
                from_ms,
                to_ms: from_ms + down,
            });
        }
    }
}

/// Up to `n` distinct entries of `from`, in random order.
fn pick(rng: &mut StdRng, from: &[usize], n: usize) -> Vec<usize> {
    let mut pool = from.to_vec();
    let mut out = Vec::new();
    while out.len() < n && !pool.is_empty() {
        out.push(pool.swap_remove(rng.random_range(0..pool.len())));
    }
    out
}
