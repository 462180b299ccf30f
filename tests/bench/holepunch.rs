//! Hole-punching benchmark (not a test): runs the Moderate × Moderate NAT lab case `RUNS` times
//! (default 20; `HOLEPUNCH_RUNS=n` to change) with fresh namespaces, routers and nodes each time,
//! and prints the direct-connection success rate, the share that succeeded at the first attempt
//! (no failed direct dial before the upgrade) and the time from the relayed connection to the
//! direct one, from the nodes' own `hole_punch` events.
//!
//! `cargo bench --bench holepunch` (needs `nft`, like `tests/nat.rs`).

#[allow(dead_code)]
#[path = "../common/lab.rs"]
mod lab;

use std::{
    io::{BufRead, BufReader, Write},
    time::Duration,
};

use lab::{LabNode, Transports, relay_flags, router};
use netlab::Nat;
use serde_json::Value;

#[ctor::ctor]
fn userns() {
    lab::enter_userns();
}

/// Reads `GET /v1/events` of `node` from a thread in its namespace and sends the first
/// `hole_punch` event to `found`. The thread ends when the node does.
fn watch_hole_punch(node: &LabNode, found: std::sync::mpsc::Sender<Value>) {
    let addr = std::fs::read_to_string(node.dir.join("control.addr")).unwrap();
    let token = std::fs::read_to_string(node.dir.join("control.token")).unwrap();
    let (addr, token) = (addr.trim().to_owned(), token.trim().to_owned());
    node.dev
        .spawn_thread(move || {
            let mut conn = std::net::TcpStream::connect(&addr)?;
            write!(
                conn,
                "GET /v1/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
            )?;
            for line in BufReader::new(conn).lines() {
                if let Some(data) = line?.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                    && v["type"] == "hole_punch"
                {
                    let _ = found.send(v);
                    break;
                }
            }
            anyhow::Ok(())
        })
        .expect("spawn a thread in the namespace");
}

struct Run {
    direct: bool,
    first_attempt: bool,
    elapsed_ms: Option<u64>,
}

async fn one_run(i: usize) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lab = lab::new_lab().await;
    let dc = router(&lab, "dc", Nat::Public).await;
    let home_a = router(&lab, "home-a", Nat::Moderate).await;
    let home_b = router(&lab, "home-b", Nat::Moderate).await;
    let relay_dev = lab::device(&lab, "relay", &dc).await;
    let a_dev = lab::device(&lab, "a", &home_a).await;
    let b_dev = lab::device(&lab, "b", &home_b).await;
    let t = Transports::Both;
    let relay = LabNode::start(
        &relay_dev,
        root,
        "relay",
        t,
        &relay_flags(relay_dev.ip().unwrap(), t),
        &[],
    );
    let boot = vec!["--bootstrap".to_owned(), relay.addr(t)];
    let a = LabNode::start(&a_dev, root, "a", t, &boot, &[]);
    let b = LabNode::start(&b_dev, root, "b", t, &boot, &[]);
    a.wait_reserved();
    b.wait_reserved();
    let (tx, rx) = std::sync::mpsc::channel();
    watch_hole_punch(&a, tx.clone());
    watch_hole_punch(&b, tx);
    let out = a.cli(&["send", &b.peer_id, "hello"]);
    assert!(out.status.success());
    // The first outcome either side reports, then a moment for the other side's.
    let mut events: Vec<Value> = rx
        .recv_timeout(Duration::from_secs(120))
        .into_iter()
        .collect();
    events.extend(rx.recv_timeout(Duration::from_secs(2)));
    let ok = events.iter().find(|e| e["ok"] == true);
    let direct = ok.is_some() && {
        let conns = a.connections_to(&b.peer_id);
        !conns.is_empty() && conns.iter().all(|r| !r)
    };
    let run = Run {
        direct,
        first_attempt: direct && events.iter().all(|e| e["failed_dials"].as_u64() == Some(0)),
        elapsed_ms: ok.and_then(|e| e["elapsed_ms"].as_u64()),
    };
    println!(
        "run {i:>2}: {} {}{}",
        if run.direct { "direct " } else { "relayed" },
        run.elapsed_ms
            .map(|ms| format!("after {ms} ms"))
            .unwrap_or_default(),
        if run.direct && !run.first_attempt {
            " (after failed attempts)"
        } else {
            ""
        }
    );
    run
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    if !lab::lab_available("holepunch benchmark") {
        return;
    }
    let runs: usize = std::env::var("HOLEPUNCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("Moderate x Moderate (TCP + QUIC), {runs} runs, fresh lab each");
    let mut results = Vec::new();
    for i in 1..=runs {
        results.push(one_run(i).await);
    }
    let direct = results.iter().filter(|r| r.direct).count();
    let first = results.iter().filter(|r| r.first_attempt).count();
    let mut times: Vec<u64> = results.iter().filter_map(|r| r.elapsed_ms).collect();
    times.sort_unstable();
    let pct = |n: usize| 100.0 * n as f64 / runs as f64;
    println!("direct connection: {direct}/{runs} = {:.0} %", pct(direct));
    println!("at the first attempt: {first}/{runs} = {:.0} %", pct(first));
    if !times.is_empty() {
        println!(
            "relayed -> direct: median {} ms, min {} ms, max {} ms",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
}
