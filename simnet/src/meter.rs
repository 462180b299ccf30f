//! `simnet run --metrics-every SECS` (inproc): every SECS seconds, one line on stderr that sums
//! the libp2p metrics of every running node and adds this process's CPU time, so that one can see
//! where a large run spends its two cores (joins, idle connections, pings, DHT traffic).
//!
//! ```text
//! metrics t=241s nodes=275 cpu=84% live_conns=58554 new_conns=12147 pings=26449 ping_ms=24 kad_in=15458 dial_errors=2 kad_out=Bootstrap:9120,GetClosestPeers:3310,PutRecord:2871
//! ```
//!
//! - `t`, the interval: on the nodes' clock, which under `--clock virtual` is simulated time.
//! - `cpu`: this process's user + system time over the interval, in % of one core (under the
//!   virtual clock: CPU time per simulated second, which may pass 100%).
//! - `live_conns`: connections open now, counted at both ends (established minus closed).
//! - `new_conns`, `pings`, `kad_in` (Kademlia requests served), `dial_errors`: over the interval.
//! - `ping_ms`: mean ping round trip over the interval: it grows when the CPU is saturated.
//! - `kad_out`: Kademlia requests sent by the queries that finished over the interval, by kind
//!   of query (a bootstrap counts each of its steps), so one sees what the DHT traffic is for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use commucat::node::SharedRegistry;

const ESTABLISHED: &str = "commucat_libp2p_swarm_connections_established_total";
const CLOSED: &str = "commucat_libp2p_swarm_connections_duration_seconds_count";
const PINGS: &str = "commucat_libp2p_ping_rtt_seconds_count";
const PING_SECONDS: &str = "commucat_libp2p_ping_rtt_seconds_sum";
const KAD_IN: &str = "commucat_libp2p_kad_inbound_requests_total";
const DIAL_ERRORS: &str = "commucat_libp2p_swarm_outgoing_connection_error_total";
const QUERY_REQUESTS: &str = "commucat_libp2p_kad_query_result_num_requests_sum";

/// The registries of the nodes started so far (a restarted node adds its new one).
#[derive(Clone, Default)]
pub struct Registries(Arc<Mutex<Vec<SharedRegistry>>>);

impl Registries {
    pub fn add(&self, registry: SharedRegistry) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(registry);
    }

    fn snapshot(&self) -> Vec<SharedRegistry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Prints a line every `every` until the returned task is aborted.
pub fn spawn(every: Duration, registries: Registries) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut prev = Sums::default();
        let mut prev_cpu = cpu_ticks();
        let mut tick = tokio::time::interval_at(start + every, every);
        loop {
            tick.tick().await;
            let list = registries.snapshot();
            let sums = Sums::of(&list);
            let cpu = cpu_ticks();
            eprintln!(
                "{}",
                line(start.elapsed(), every, &list, &sums, &prev, cpu, prev_cpu)
            );
            prev = sums;
            prev_cpu = cpu;
        }
    })
}

fn line(
    t: Duration,
    every: Duration,
    nodes: &[SharedRegistry],
    now: &Sums,
    prev: &Sums,
    cpu: Option<u64>,
    prev_cpu: Option<u64>,
) -> String {
    let delta = |k: &str| now.get(k) - prev.get(k);
    // USER_HZ is 100 on Linux: a tick is 10 ms, so ticks per second are % of one core.
    let cpu = match (cpu, prev_cpu) {
        (Some(c), Some(p)) => format!("{:.0}%", c.saturating_sub(p) as f64 / every.as_secs_f64()),
        _ => "?".into(),
    };
    let mut kinds: Vec<(&str, f64)> = (now.kad_out.iter())
        .map(|(kind, v)| (kind.as_str(), v - prev.kad_out.get(kind).unwrap_or(&0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    kinds.sort_by(|a, b| a.0.cmp(b.0));
    let kad_out = match kinds.is_empty() {
        true => "0".to_owned(),
        false => (kinds.iter().map(|(k, n)| format!("{k}:{n:.0}")))
            .collect::<Vec<_>>()
            .join(","),
    };
    format!(
        "metrics t={}s nodes={} cpu={cpu} live_conns={:.0} new_conns={:.0} pings={:.0} ping_ms={:.0} kad_in={:.0} dial_errors={:.0} kad_out={kad_out}",
        t.as_secs(),
        nodes.len(),
        now.get(ESTABLISHED) - now.get(CLOSED),
        delta(ESTABLISHED),
        delta(PINGS),
        1000.0 * delta(PING_SECONDS) / delta(PINGS).max(1.0),
        delta(KAD_IN),
        delta(DIAL_ERRORS),
    )
}

/// Every metric summed over its labels and over the nodes; `kad_out` also per kind of query.
#[derive(Default)]
struct Sums {
    all: HashMap<String, f64>,
    kad_out: HashMap<String, f64>,
}

impl Sums {
    fn of(registries: &[SharedRegistry]) -> Self {
        let mut sums = Self::default();
        for r in registries {
            for_each_sample(r, |name, labels, value| {
                *sums.all.entry(name.to_owned()).or_insert(0.0) += value;
                if name == QUERY_REQUESTS
                    && let Some(kind) = labels.strip_prefix("type=\"")
                    && let Some(kind) = kind.strip_suffix('"')
                {
                    *sums.kad_out.entry(kind.to_owned()).or_insert(0.0) += value;
                }
            });
        }
        sums
    }

    fn get(&self, name: &str) -> f64 {
        self.all.get(name).copied().unwrap_or(0.0)
    }
}

/// Calls `f(name, labels, value)` for every sample of `registry` (labels as written between the
/// braces, empty when there are none). Returns false when the registry could not be encoded.
pub fn for_each_sample(registry: &SharedRegistry, mut f: impl FnMut(&str, &str, f64)) -> bool {
    let mut text = String::new();
    let r = registry.read().unwrap_or_else(|e| e.into_inner());
    if prometheus_client::encoding::text::encode(&mut text, &r).is_err() {
        return false;
    }
    for (name, labels, value) in text.lines().filter_map(sample) {
        f(name, labels, value);
    }
    true
}

/// `name{labels} value` or `name value` → (name, labels, value); comments → None.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    Some((name, labels, value.parse().ok()?))
}

/// User + system CPU time of this process, in ticks of 10 ms.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses): state is the
    // first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_or_without_labels() {
        assert_eq!(
            sample(r#"commucat_libp2p_kad_inbound_requests_total{request="FindNode"} 21051"#),
            Some((KAD_IN, r#"request="FindNode""#, 21051.0))
        );
        assert_eq!(
            sample("commucat_libp2p_ping_rtt_seconds_sum 0.25"),
            Some((PING_SECONDS, "", 0.25))
        );
        assert_eq!(sample("# TYPE x counter"), None);
        assert_eq!(sample("# EOF"), None);
    }

    #[test]
    fn the_line_sums_nodes_and_reports_the_interval() {
        let mut now = Sums::default();
        now.all.insert(ESTABLISHED.into(), 30.0);
        now.all.insert(CLOSED.into(), 10.0);
        now.all.insert(PINGS.into(), 14.0);
        now.all.insert(PING_SECONDS.into(), 0.5);
        let mut prev = Sums::default();
        prev.all.insert(ESTABLISHED.into(), 12.0);
        prev.all.insert(PINGS.into(), 4.0);
        prev.all.insert(PING_SECONDS.into(), 0.3);
        now.kad_out.insert("Bootstrap".into(), 700.0);
        now.kad_out.insert("PutRecord".into(), 40.0);
        prev.kad_out.insert("Bootstrap".into(), 100.0);
        prev.kad_out.insert("PutRecord".into(), 40.0);
        let l = line(
            Duration::from_secs(40),
            Duration::from_secs(20),
            &[],
            &now,
            &prev,
            Some(3000),
            Some(1000),
        );
        assert_eq!(
            l,
            "metrics t=40s nodes=0 cpu=100% live_conns=20 new_conns=18 pings=10 ping_ms=20 kad_in=0 dial_errors=0 kad_out=Bootstrap:600"
        );
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_ticks().is_some_and(|t| t > 0));
    }
}
