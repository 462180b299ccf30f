//! The plan of a run, drawn from the scenario and the seed alone: which nodes exist, whom each
//! bootstraps from, and every workload operation with its time, source and target. The same
//! scenario and seed give the same plan (`tests/scenarios.rs`); node keys are fresh each run.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::scenario::{Flow, Role, Scenario};

/// Bootstrap nodes a desktop node is given at most.
pub const BOOTSTRAP_FANOUT: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    pub group: String,
    pub role: Role,
    /// Indices of the nodes it bootstraps from (always bootstrap-role nodes started before it).
    pub bootstrap: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Op {
    Lookup { from: usize, to: usize },
    Message { from: usize, to: usize, size: usize },
}

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
}

impl Plan {
    pub fn new(s: &Scenario, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
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
                    Role::Desktop => pick(&mut rng, &boots, BOOTSTRAP_FANOUT),
                };
                if g.role == Role::Bootstrap {
                    boots.push(i);
                }
                members.entry(g.name.as_str()).or_default().push(i);
                nodes.push(PlannedNode {
                    group: g.name.clone(),
                    role: g.role,
                    bootstrap,
                });
            }
        }
        let span = s.duration_secs * 1000;
        let mut ops = Vec::new();
        let mut flows = |list: &[Flow], message: bool, rng: &mut StdRng| {
            for f in list {
                let (from, to) = (&members[f.from.as_str()], &members[f.to.as_str()]);
                for _ in 0..f.count {
                    let a = from[rng.random_range(0..from.len())];
                    let b = loop {
                        let b = to[rng.random_range(0..to.len())];
                        if b != a {
                            break b;
                        }
                    };
                    let op = if message {
                        Op::Message {
                            from: a,
                            to: b,
                            size: f.size_bytes.unwrap_or(64),
                        }
                    } else {
                        Op::Lookup { from: a, to: b }
                    };
                    ops.push(Scheduled {
                        at_ms: rng.random_range(0..span),
                        op,
                    });
                }
            }
        };
        flows(&s.workload.lookups, false, &mut rng);
        flows(&s.workload.messages, true, &mut rng);
        ops.sort_by_key(|o| o.at_ms);
        Plan { seed, nodes, ops }
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
