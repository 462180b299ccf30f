//! The JSON report (`simnet/README.md` § Report). Every figure is measured in the run; fields for
//! things this version does not measure are left out, not filled in.

use serde::{Deserialize, Serialize};

/// A distribution: count, min, median, p90, p99, max (nearest-rank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Dist {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            Some(v[rank - 1])
        };
        Dist {
            count: v.len(),
            min: v.first().copied(),
            median: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v.last().copied(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lookups {
    pub attempted: usize,
    /// The target's addresses were found.
    pub succeeded: usize,
    pub success_rate: f64,
    /// Of the successes, how many came from a Kademlia lookup (rather than an open connection or
    /// a presence record).
    pub via_dht: usize,
    pub latency_ms: Dist,
    /// Request rounds until the target is asked, computed from the nodes' routing tables at the
    /// start of the workload (`simnet/src/hops.rs`): rust-libp2p does not report a query's
    /// referral chain. Lookups the tables cannot complete are left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<Dist>,
}

/// Names claimed and resolved (`[[workload.names]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Names {
    pub claimed: usize,
    /// Claims the node refused or could not publish.
    pub claim_failures: usize,
    pub resolutions: usize,
    /// Resolved to the node that claimed the name.
    pub resolved: usize,
    /// Resolved to another node (none expected).
    pub wrong_owner: usize,
    pub success_rate: f64,
    pub latency_ms: Dist,
}

/// Groups made and sent to (`[[workload.groups]]`): every message counts once per member other
/// than its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    pub groups: usize,
    /// Groups whose every member held the log before the workload phase.
    pub made: usize,
    pub messages: usize,
    /// Copies due: messages × (members − 1).
    pub copies: usize,
    /// Copies that reached their member.
    pub delivered: usize,
    pub delivery_rate: f64,
    /// Copies a member got more than once.
    pub duplicates: usize,
    /// From the send to the last member's arrival, for messages every member got.
    pub to_last_member_ms: Dist,
    /// The lowest delivery rate of any one group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_group_rate: Option<f64>,
    /// Each group (by plan index) on its own.
    pub per_group: Vec<GroupRow>,
}

/// One group of the `groups` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub group: usize,
    pub made: bool,
    pub messages: usize,
    pub copies: usize,
    pub delivered: usize,
    pub delivery_rate: f64,
    pub duplicates: usize,
    pub to_last_member_ms: Dist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    pub sent: usize,
    /// Distinct messages that reached their target.
    pub delivered: usize,
    pub delivery_rate: f64,
    /// Extra copies in targets' inboxes (0 when delivery is exactly once).
    pub duplicates: usize,
    /// From the send call to the target's inbox.
    pub latency_ms: Dist,
    /// Messages to nodes that were online when sent.
    pub to_live: Share,
    /// Messages to nodes that were offline when sent (churn, outages): these wait in the
    /// sender's outbox for the target's return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_offline: Option<ToOffline>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub sent: usize,
    pub delivered: usize,
    pub delivery_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToOffline {
    pub sent: usize,
    pub delivered: usize,
    pub delivery_rate: f64,
    pub duplicates: usize,
    /// Delivered before the target was back: always 0 unless something is badly wrong.
    pub delivered_before_return: usize,
    /// From the target's return to the message in its inbox.
    pub after_return_ms: Dist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Files {
    pub sent: usize,
    /// Every block written at the receiver and the hash checked (the sender's `Complete`).
    pub completed: usize,
    pub completion_rate: f64,
    /// From the send call to completion.
    pub latency_ms: Dist,
    /// File size over that time, megabits per second.
    pub throughput_mbps: Dist,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnStats {
    /// Nodes stopped during the workload (identity and store kept).
    pub leaves: usize,
    /// Of these, nodes started again.
    pub returns: usize,
}

/// `netns`: what happened between the nodes of two NAT types (`a` ≤ `b`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatPair {
    pub a: String,
    pub b: String,
    /// `direct` or `relayed`: what `netlab::expected` gives for these NAT types.
    pub expected: String,
    /// Every pair of the cell ended as expected.
    pub as_expected: bool,
    /// Node pairs of these types that exchanged messages.
    pub pairs: usize,
    /// DCUtR hole punches started (the first connection was relayed).
    pub attempts: usize,
    pub successes: usize,
    /// Pairs whose first hole punch succeeded, over pairs that punched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_attempt_share: Option<f64>,
    /// Pairs that ended on a direct connection / only on the relay.
    pub direct: usize,
    pub relayed: usize,
    pub messages_sent: usize,
    pub messages_delivered: usize,
    pub delivery_rate: f64,
}
/// One second of the run's workload phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub t_secs: u64,
    pub live_nodes: usize,
    pub messages_sent: usize,
    /// Messages that arrived in this second.
    pub messages_delivered: usize,
    /// Of the messages sent in this second to online nodes, the share delivered by the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_rate: Option<f64>,
}

/// The clock a run's nodes read (`clock` in a scenario, `simnet run --clock`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// The host's clock, on every core: results hold while the host keeps up, which the
    /// busy-host guard checks (`simnet::host`).
    #[default]
    Real,
    /// inproc, one process: a paused clock on one thread that advances only when every node waits
    /// for a timer, so results do not depend on the host's load (`simnet::runtime`).
    Virtual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub mode: String,
    pub seed: u64,
    pub nodes: usize,
    /// Wall time of the whole run.
    pub wall_secs: f64,
    /// The clock the nodes read (`real` in reports from before it was recorded).
    #[serde(default)]
    pub clock: Clock,
    /// Under the virtual clock: the simulated time the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_secs: Option<f64>,
    /// Peak resident memory of the simulating process (VmHWM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
    /// Per node: from its start to its first connection to a peer.
    pub time_to_first_bootstrap_ms: Dist,
    /// Nodes that never connected to anyone.
    pub isolated_nodes: usize,
    pub lookups: Lookups,
    pub messages: Messages,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Names>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Groups>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnStats>,
    /// `netns`: per NAT-type pair, hole punching and delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat_pairs: Option<Vec<NatPair>>,
    /// `netns`: connections between workload pairs at the end: direct over all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_share: Option<f64>,
    pub timeline: Vec<Second>,
    /// Bytes the nodes' libp2p transports sent in all (`libp2p_bandwidth` counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    /// inproc: how simulated connections were secured (`plaintext` unless the scenario says
    /// `noise`): what a connection's setup cost the host, not what the protocols above did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<crate::link::Security>,
    /// inproc: whether the host kept up with the nodes (`simnet::host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
}

/// `report.host`: whether the host kept up (`simnet::host`), per phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// Whether both phases stayed within the limits.
    pub valid: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_because: Option<String>,
    /// How late the probe woke while nodes joined and the DHT warmed up, milliseconds.
    pub join_lag_ms: Dist,
    /// How late the probe woke during the workload and the drain, milliseconds.
    pub measured_lag_ms: Dist,
    /// Share of late wake-ups (over `simnet::host::MAX_LAG_MS`) per phase.
    pub join_late_share: f64,
    pub measured_late_share: f64,
}

/// Peak resident memory of this process.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `a / b`, 1 when nothing was attempted.
pub fn rate(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let d = |x: &Dist| match (x.median, x.p99) {
            (Some(m), Some(p)) => format!("median {m:.0} ms, p99 {p:.0} ms"),
            _ => "no samples".into(),
        };
        format!(
            "{} ({} nodes, seed {}, {})\n  bootstrap: {} ({} isolated)\n  lookups:   {}/{} found ({:.1}%, {} via the DHT), {}\n  messages:  {}/{} delivered ({:.1}%), {} duplicates, {}{}",
            self.scenario,
            self.nodes,
            self.seed,
            match self.simulated_secs {
                Some(sim) => format!(
                    "virtual clock: {sim:.1} s simulated in {:.1} s",
                    self.wall_secs
                ),
                None => format!("{:.1} s", self.wall_secs),
            },
            d(&self.time_to_first_bootstrap_ms),
            self.isolated_nodes,
            self.lookups.succeeded,
            self.lookups.attempted,
            self.lookups.success_rate * 100.0,
            self.lookups.via_dht,
            d(&self.lookups.latency_ms),
            self.messages.delivered,
            self.messages.sent,
            self.messages.delivery_rate * 100.0,
            self.messages.duplicates,
            d(&self.messages.latency_ms),
            self.peak_rss_kib
                .map(|k| format!("\n  peak RSS:  {:.0} MiB", k as f64 / 1024.0))
                .unwrap_or_default(),
        ) + &self.extra_summary()
    }

    fn extra_summary(&self) -> String {
        let mut out = String::new();
        if let Some(h) = &self.lookups.hops
            && let Some(m) = h.median
        {
            out += &format!(
                "\n  hops:      median {m:.0}, p99 {:.0} (computed from routing tables)",
                h.p99.unwrap_or(m)
            );
        }
        if let Some(o) = &self.messages.to_offline {
            out += &format!(
                "\n  to online: {}/{} delivered ({:.1}%)\n  to offline: {}/{} delivered after the target's return, {} duplicates",
                self.messages.to_live.delivered,
                self.messages.to_live.sent,
                self.messages.to_live.delivery_rate * 100.0,
                o.delivered,
                o.sent,
                o.duplicates
            );
        }
        if let Some(c) = &self.churn {
            out += &format!("\n  churn:     {} left, {} returned", c.leaves, c.returns);
        }
        if let Some(n) = &self.names {
            out += &format!(
                "\n  names:     {} claimed ({} failed), {}/{} resolved to their holder ({:.1}%), {} to another, median {:.0} ms",
                n.claimed,
                n.claim_failures,
                n.resolved,
                n.resolutions,
                n.success_rate * 100.0,
                n.wrong_owner,
                n.latency_ms.median.unwrap_or(0.0)
            );
        }
        if let Some(g) = &self.groups {
            out += &format!(
                "\n  groups:    {}/{} made, {} messages, {}/{} copies delivered ({:.2}%), {} duplicates, to the last member median {:.0} ms, p99 {:.0} ms",
                g.made,
                g.groups,
                g.messages,
                g.delivered,
                g.copies,
                g.delivery_rate * 100.0,
                g.duplicates,
                g.to_last_member_ms.median.unwrap_or(0.0),
                g.to_last_member_ms.p99.unwrap_or(0.0)
            );
        }
        if let Some(f) = &self.files {
            out += &format!(
                "\n  files:     {}/{} complete, median {:.1} Mbit/s",
                f.completed,
                f.sent,
                f.throughput_mbps.median.unwrap_or(0.0)
            );
        }
        if let Some(h) = &self.host {
            out += &match &h.invalid_because {
                None => format!(
                    "\n  host:      kept up (probe late by median {:.1} ms, p99 {:.1} ms while measuring)",
                    h.measured_lag_ms.median.unwrap_or(0.0),
                    h.measured_lag_ms.p99.unwrap_or(0.0)
                ),
                Some(why) => format!("\n  INVALID:   {why}"),
            };
        }
        if let Some(pairs) = &self.nat_pairs {
            for p in pairs {
                out += &format!(
                    "\n  {:>8} × {:<8} {} direct, {} relayed; punches {}/{}; delivered {}/{}",
                    p.a,
                    p.b,
                    p.direct,
                    p.relayed,
                    p.successes,
                    p.attempts,
                    p.messages_delivered,
                    p.messages_sent
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::of(&v);
        assert_eq!(
            (d.min, d.median, d.p90, d.p99, d.max),
            (Some(1.0), Some(50.0), Some(90.0), Some(99.0), Some(100.0))
        );
        let empty = Dist::of(&[]);
        assert_eq!((empty.count, empty.median), (0, None));
        assert_eq!(Dist::of(&[3.0]).p99, Some(3.0));
    }
}
