//! A [`Log`] as one process of a split run hands it to the coordinator: every time in
//! milliseconds from the start of the workload phase, which every process starts together
//! (`simnet::team`), so the coordinator lays the logs of all processes on one clock.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{File, GroupSend, Log, Lookup, Resolution, Sent};
use crate::plan::{Op, Plan};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Shipped {
    /// (tag, at, from, to, to_offline)
    sent: Vec<(String, f64, usize, usize, bool)>,
    /// (tag, at)
    arrived: Vec<(String, f64)>,
    /// (from, to, found, via_dht, ms)
    lookups: Vec<(usize, usize, bool, bool, f64)>,
    /// (size, done_ms)
    files: Vec<(usize, Option<f64>)>,
    claims: Vec<bool>,
    /// (owner_ok, ms)
    resolutions: Vec<(Option<bool>, f64)>,
    /// (node, at)
    returned: Vec<(usize, f64)>,
    leaves: usize,
    groups_made: Vec<bool>,
    /// (tag, at, group, to)
    group_sent: Vec<(String, f64, usize, Vec<usize>)>,
    /// (tag, member, at)
    group_arrived: Vec<(String, usize, f64)>,
}

/// `t` in milliseconds from `phase` (negative before it).
fn ms(t: Instant, phase: Instant) -> f64 {
    match t.checked_duration_since(phase) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(phase.duration_since(t).as_secs_f64() * 1000.0),
    }
}

/// `ms` milliseconds from `phase`.
fn at(ms: f64, phase: Instant) -> Instant {
    let d = Duration::from_secs_f64((ms.abs() / 1000.0).min(1e9));
    match ms >= 0.0 {
        true => phase + d,
        false => phase.checked_sub(d).unwrap_or(phase),
    }
}

impl Log {
    /// This log with its times from `phase`.
    pub fn ship(&self, phase: Instant) -> Shipped {
        Shipped {
            sent: (self.sent.iter())
                .map(|(t, s)| (t.clone(), ms(s.at, phase), s.from, s.to, s.to_offline))
                .collect(),
            arrived: (self.arrived.iter())
                .flat_map(|(t, v)| v.iter().map(|a| (t.clone(), ms(*a, phase))))
                .collect(),
            lookups: (self.lookups.iter())
                .map(|l| (l.from, l.to, l.found, l.via_dht, l.ms))
                .collect(),
            files: self.files.iter().map(|f| (f.size, f.done_ms)).collect(),
            claims: self.claims.clone(),
            resolutions: (self.resolutions.iter())
                .map(|r| (r.owner_ok, r.ms))
                .collect(),
            returned: (self.returned.iter())
                .flat_map(|(n, v)| v.iter().map(|a| (*n, ms(*a, phase))))
                .collect(),
            leaves: self.leaves,
            groups_made: self.groups_made.clone(),
            group_sent: (self.group_sent.iter())
                .map(|(t, g)| (t.clone(), ms(g.at, phase), g.group, g.to.clone()))
                .collect(),
            group_arrived: (self.group_arrived.iter())
                .flat_map(|(t, v)| v.iter().map(|(n, a)| (t.clone(), *n, ms(*a, phase))))
                .collect(),
        }
    }

    /// Adds `other`, shipped from a process whose workload phase started with this one's
    /// `phase`. A group counts as made when every process says so.
    pub fn absorb(&mut self, other: Shipped, phase: Instant) {
        for (tag, t, from, to, to_offline) in other.sent {
            let at = at(t, phase);
            (self.sent).insert(
                tag,
                Sent {
                    at,
                    from,
                    to,
                    to_offline,
                },
            );
        }
        for (tag, t) in other.arrived {
            self.arrived.entry(tag).or_default().push(at(t, phase));
        }
        self.lookups.extend(
            other
                .lookups
                .into_iter()
                .map(|(from, to, found, via_dht, ms)| Lookup {
                    from,
                    to,
                    found,
                    via_dht,
                    ms,
                }),
        );
        (self.files).extend(
            other
                .files
                .into_iter()
                .map(|(size, done_ms)| File { size, done_ms }),
        );
        self.claims.extend(other.claims);
        (self.resolutions).extend(
            (other.resolutions.into_iter()).map(|(owner_ok, ms)| Resolution { owner_ok, ms }),
        );
        for (n, t) in other.returned {
            self.returned.entry(n).or_default().push(at(t, phase));
        }
        self.leaves += other.leaves;
        self.groups_made = match self.groups_made.is_empty() {
            true => other.groups_made,
            false => (self.groups_made.iter().zip(&other.groups_made))
                .map(|(a, b)| *a && *b)
                .collect(),
        };
        for (tag, t, group, to) in other.group_sent {
            let at = at(t, phase);
            (self.group_sent).insert(tag, GroupSend { at, group, to });
        }
        for (tag, n, t) in other.group_arrived {
            (self.group_arrived.entry(tag).or_default()).push((n, at(t, phase)));
        }
    }

    /// What this process's nodes sent (messages, and a copy per other member of a group) and
    /// what arrived at them of what the plan sent them; summed over the processes of a run they
    /// say whether every message arrived.
    pub fn sent_and_arrived(&self, plan: &Plan) -> (usize, usize) {
        let op = |tag: &str| {
            let k: usize = tag.strip_prefix("simnet-")?.parse().ok()?;
            plan.ops.get(k).map(|s| s.op)
        };
        let due: usize = self.group_sent.values().map(|g| g.to.len()).sum();
        let arrived = (self.arrived.keys())
            .filter(|t| matches!(op(t), Some(Op::Message { .. })))
            .count();
        let copies: HashSet<(&str, usize)> = (self.group_arrived.iter())
            .flat_map(|(t, v)| v.iter().map(move |(n, _)| (t.as_str(), *n)))
            .filter(|(t, n)| match op(t) {
                Some(Op::GroupMessage { group, from, .. }) => {
                    *n != from && plan.groups.get(group).is_some_and(|m| m.contains(n))
                }
                _ => false,
            })
            .collect();
        (self.sent.len() + due, arrived + copies.len())
    }
}
