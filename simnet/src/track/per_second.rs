//! The report's timeline: per second of the workload, messages (group copies included) sent, sent
//! to live nodes and delivered of those, and arrived.

use tokio::time::Instant;

use super::Log;
use crate::{plan::Plan, report::Second};

/// Messages per second of the workload: sent, sent to live nodes, delivered of those, arrived.
pub(super) struct PerSecond {
    pub(super) sent: Vec<usize>,
    pub(super) live_sent: Vec<usize>,
    pub(super) live_ok: Vec<usize>,
    pub(super) arrived: Vec<usize>,
}

impl PerSecond {
    /// Each copy of a group message counts as a message to its member.
    pub(super) fn add_group_copies(&mut self, log: &Log, plan: &Plan, phase: Instant) {
        let sec = |t: Instant| t.saturating_duration_since(phase).as_secs() as usize;
        let n = self.sent.len();
        for (tag, g) in log.group_sent.iter().filter(|(_, g)| sec(g.at) < n) {
            let (i, at_ms) = (sec(g.at), g.at.saturating_duration_since(phase).as_millis());
            let arrivals = log.group_arrived.get(tag).map_or(&[][..], Vec::as_slice);
            for m in &g.to {
                let first = arrivals.iter().filter(|(n, _)| n == m).map(|a| a.1).min();
                self.sent[i] += 1;
                let live = plan.nodes[*m].live_at(at_ms as u64);
                self.live_sent[i] += usize::from(live);
                self.live_ok[i] += usize::from(live && first.is_some());
                if let Some(slot) = first.and_then(|t| self.arrived.get_mut(sec(t))) {
                    *slot += 1;
                }
            }
        }
    }

    /// The timeline: `secs` seconds at least, up to the last second anything was sent or arrived.
    pub(super) fn timeline(&self, plan: &Plan, secs: u64) -> Vec<Second> {
        let last = self
            .arrived
            .iter()
            .rposition(|n| *n > 0)
            .max(self.sent.iter().rposition(|n| *n > 0))
            .map_or(secs as usize, |i| (i + 1).max(secs as usize))
            .min(self.sent.len());
        (0..last)
            .map(|i| Second {
                t_secs: i as u64,
                live_nodes: plan.live_nodes(i as u64 * 1000),
                messages_sent: self.sent[i],
                messages_delivered: self.arrived[i],
                delivery_rate: (self.live_sent[i] > 0)
                    .then(|| self.live_ok[i] as f64 / self.live_sent[i] as f64),
            })
            .collect()
    }
}
