//! What one process of an inproc run observed of its nodes, and the report drawn from the pieces of
//! every process. A run in one process is one piece.

use std::{collections::HashMap, str::FromStr};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    hops::Tables,
    link::Security,
    plan::Plan,
    report::{ChurnStats, Host},
    scenario::Scenario,
    track::{self, FirstConnects, Log, Shipped},
};

#[derive(Debug, Serialize, Deserialize)]
pub struct Piece {
    /// Times from the start of the workload phase.
    pub log: Shipped,
    /// The routing tables of this process's nodes as the workload started (peer ids in text);
    /// `None` when the scenario has no lookups.
    pub tables: Option<Vec<(String, Vec<String>)>>,
    /// (node, milliseconds from its start to its first connection)
    pub first_connect_ms: Vec<(usize, f64)>,
    pub bytes_sent: Option<u64>,
    /// The busy-host guard's verdict; `None` under the virtual clock, where nothing waits for the
    /// host (see `simnet::runtime`).
    #[serde(default)]
    pub host: Option<Host>,
    pub peak_rss_kib: Option<u64>,
    pub security: Security,
}

impl Piece {
    /// The tables of this process's nodes, to ship.
    pub fn tables(t: &HashMap<PeerId, Vec<PeerId>>) -> Vec<(String, Vec<String>)> {
        (t.iter())
            .map(|(p, v)| (p.to_string(), v.iter().map(PeerId::to_string).collect()))
            .collect()
    }
}

/// The report of a run (`mode`, started at `started`) from the pieces of all its processes.
pub fn merge(
    s: &Scenario,
    plan: &Plan,
    mode: &'static str,
    started: track::Started,
    pieces: Vec<Piece>,
) -> anyhow::Result<crate::Outcome> {
    let phase = Instant::now();
    let mut log = Log::default();
    let mut tables: Option<HashMap<PeerId, Vec<PeerId>>> = None;
    let first_connect = FirstConnects::new(plan.nodes.len());
    let mut bytes_sent = Some(0);
    let mut peak_rss_kib = Some(0);
    let mut host: Option<Host> = None;
    let mut security = Security::default();
    let id = |s: &str| PeerId::from_str(s).map_err(|e| anyhow::anyhow!("peer id {s:?}: {e}"));
    let parts = pieces.len();
    for (part, p) in pieces.into_iter().enumerate() {
        log.absorb(p.log, phase);
        for (node, table) in p.tables.into_iter().flatten() {
            let table = table.iter().map(|t| id(t)).collect::<anyhow::Result<_>>()?;
            tables.get_or_insert_default().insert(id(&node)?, table);
        }
        for (node, ms) in p.first_connect_ms {
            anyhow::ensure!(
                node < plan.nodes.len(),
                "part {part}: node {node} is not planned"
            );
            first_connect.record(
                node,
                std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0),
            );
        }
        bytes_sent = bytes_sent.zip(p.bytes_sent).map(|(a, b)| a + b);
        peak_rss_kib = peak_rss_kib.zip(p.peak_rss_kib).map(|(a, b)| a + b);
        if let Some(h) = p.host {
            host = Some(busiest(host, h, (parts > 1).then_some(part)));
        }
        security = p.security;
    }
    let hops = tables.map(Tables::new).map(|t| {
        let ids: Vec<PeerId> = (0..plan.nodes.len()).map(|i| plan.peer_id(i)).collect();
        (log.lookups.iter())
            .filter_map(|l| t.hops(ids[l.from], ids[l.to]).map(f64::from))
            .collect()
    });
    let run = track::Run {
        scenario: s,
        mode,
        plan,
        started,
        phase,
    };
    let mut outcome = track::outcome(&run, &log, hops, &first_connect, bytes_sent);
    outcome.report.peak_rss_kib = peak_rss_kib;
    outcome.report.host = host;
    outcome.report.security = Some(security);
    let churned = plan.nodes.iter().any(|n| !n.downtime.is_empty());
    outcome.report.churn = churned.then(|| ChurnStats {
        leaves: log.leaves,
        returns: log.returned.values().map(Vec::len).sum(),
    });
    Ok(outcome)
}

/// Of two processes' hosts, the one that kept up least: invalid before valid, then the larger
/// late share of the measured phase. A split run is as valid as its busiest process.
fn busiest(a: Option<Host>, mut b: Host, part: Option<usize>) -> Host {
    if let (Some(part), Some(why)) = (part, b.invalid_because.as_mut()) {
        *why = format!("process {part}: {why}");
    }
    match a {
        Some(a) if (a.valid, -a.measured_late_share) <= (b.valid, -b.measured_late_share) => a,
        _ => b,
    }
}
