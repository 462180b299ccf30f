//! The busy-host guard: whether a run measured the protocol or the machine it ran on.
//!
//! Simulated nodes share the host's cores. When they want more CPU than the host gives them (too
//! many nodes, or another program busy on the same cores), every timer fires late, every message
//! waits for a thread, Kademlia queries time out and are retried, and the report then describes
//! the overloaded host. A probe task on the nodes' runtime asks to be woken every
//! [`PROBE_EVERY`] and records how late it was woken; tasks of the nodes wait just as long. A run
//! whose probes were late by more than [`MAX_LAG_MS`] more often than [`MAX_LATE_SHARE`] of the
//! time in the measured phase (workload and drain), or [`MAX_LATE_SHARE_JOINS`] while the nodes
//! joined and warmed up, is reported invalid (`host.valid = false`, with the
//! reason), and `simnet run` says so.
//!
//! Two runs of a scenario with the same seed agree within [`Tolerance`] when both are valid.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::report::{Dist, Host};

/// How often the probe asks to be woken.
pub const PROBE_EVERY: Duration = Duration::from_millis(20);
/// A wake-up later than this is a late one: a node's timer or message waited that long for a
/// thread, as long as one hop on the shipped scenarios' 10 ms links.
pub const MAX_LAG_MS: f64 = 10.0;
/// A measured phase with more late wake-ups than this share is invalid.
pub const MAX_LATE_SHARE: f64 = 0.01;
/// The same for the joins, where each node's start (its keys, its store) holds a thread for a
/// moment by itself: a join phase with more late wake-ups than this share is invalid.
pub const MAX_LATE_SHARE_JOINS: f64 = 0.05;
/// Samples kept per phase (at [`PROBE_EVERY`], 10 hours).
pub const MAX_SAMPLES: usize = 1_800_000;

/// How much two valid runs of a scenario with the same seed may differ (`agree`).
pub struct Tolerance;

impl Tolerance {
    /// Lookup, delivery and name success rates: absolute difference.
    pub const RATE: f64 = 0.01;
    /// Medians of latency: relative difference, or [`Tolerance::LATENCY_MS`] if larger.
    pub const LATENCY_SHARE: f64 = 0.25;
    pub const LATENCY_MS: f64 = 10.0;
    /// Hop medians: absolute difference.
    pub const HOPS: f64 = 1.0;
}

#[derive(Default)]
struct Samples {
    phase: usize,
    lag: [Vec<f64>; 2],
}

/// The running probe; [`Probe::measured`] marks the start of the measured phase.
pub struct Probe {
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Starts probing on the current runtime (the joins' phase).
    pub fn start() -> Self {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let due = Instant::now() + PROBE_EVERY;
                tokio::time::sleep_until(due).await;
                let late = Instant::now().saturating_duration_since(due);
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                let phase = s.phase;
                if s.lag[phase].len() < MAX_SAMPLES {
                    s.lag[phase].push(late.as_secs_f64() * 1000.0);
                }
            }
        });
        Self { samples, task }
    }

    /// From now on samples count for the measured phase.
    pub fn measured(&self) {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).phase = 1;
    }

    /// Stops the probe and judges the run.
    pub fn finish(self) -> Host {
        self.task.abort();
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        judge(&s.lag[0], &s.lag[1])
    }
}

fn late_share(lag: &[f64]) -> f64 {
    match lag.len() {
        0 => 0.0,
        n => lag.iter().filter(|l| **l > MAX_LAG_MS).count() as f64 / n as f64,
    }
}

fn judge(join: &[f64], measured: &[f64]) -> Host {
    let (js, ms) = (late_share(join), late_share(measured));
    let why = |name: &str, share: f64, limit: f64| {
        format!(
            "the host was too busy {name}: {:.1}% of the probe's wake-ups were more than {MAX_LAG_MS} ms late (at most {:.0}% may be); fewer nodes, or a machine with nothing else running, give results that describe the protocol",
            share * 100.0,
            limit * 100.0
        )
    };
    let invalid_because = if js > MAX_LATE_SHARE_JOINS {
        Some(why("while the nodes joined", js, MAX_LATE_SHARE_JOINS))
    } else if ms > MAX_LATE_SHARE {
        Some(why("during the workload", ms, MAX_LATE_SHARE))
    } else {
        None
    };
    Host {
        valid: invalid_because.is_none(),
        invalid_because,
        join_lag_ms: Dist::of(join),
        measured_lag_ms: Dist::of(measured),
        join_late_share: js,
        measured_late_share: ms,
    }
}

/// Where two reports of the same scenario and seed differ by more than [`Tolerance`]; empty
/// when they agree.
pub fn disagreements(a: &crate::Report, b: &crate::Report) -> Vec<String> {
    let mut out = Vec::new();
    let mut rate = |what: &str, x: f64, y: f64| {
        if (x - y).abs() > Tolerance::RATE {
            out.push(format!("{what}: {x:.3} against {y:.3}"));
        }
    };
    rate(
        "lookup success",
        a.lookups.success_rate,
        b.lookups.success_rate,
    );
    rate(
        "message delivery",
        a.messages.delivery_rate,
        b.messages.delivery_rate,
    );
    if let (Some(x), Some(y)) = (&a.names, &b.names) {
        rate("name resolution", x.success_rate, y.success_rate);
    }
    let latency = |what: &str, x: &Dist, y: &Dist, out: &mut Vec<String>| {
        if let (Some(x), Some(y)) = (x.median, y.median) {
            let allowed = (x.max(y) * Tolerance::LATENCY_SHARE).max(Tolerance::LATENCY_MS);
            if (x - y).abs() > allowed {
                out.push(format!("{what} median: {x:.1} ms against {y:.1} ms"));
            }
        }
    };
    latency(
        "lookup latency",
        &a.lookups.latency_ms,
        &b.lookups.latency_ms,
        &mut out,
    );
    latency(
        "message latency",
        &a.messages.latency_ms,
        &b.messages.latency_ms,
        &mut out,
    );
    if let (Some(x), Some(y)) = (&a.lookups.hops, &b.lookups.hops)
        && let (Some(x), Some(y)) = (x.median, y.median)
        && (x - y).abs() > Tolerance::HOPS
    {
        out.push(format!("hops median: {x} against {y}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_with_too_many_late_wakeups_makes_the_run_invalid() {
        let calm = vec![0.5; 1000];
        assert!(judge(&calm, &calm).valid);
        let mut busy = calm.clone();
        busy[..20].fill(MAX_LAG_MS + 1.0);
        let h = judge(&calm, &busy);
        assert!(!h.valid);
        assert!(
            h.invalid_because
                .as_deref()
                .is_some_and(|w| w.contains("during the workload") && w.contains("2.0%")),
            "{h:?}"
        );
        assert!(
            judge(&busy, &calm).valid,
            "2% late while joining is allowed"
        );
        let mut joins = calm.clone();
        joins[..60].fill(MAX_LAG_MS + 1.0);
        assert!(!judge(&joins, &calm).valid, "6% is not");
        // 1% late is still valid.
        busy[10..20].fill(0.5);
        assert!(judge(&calm, &busy).valid);
    }
}
