//! Signaling benchmark (not a test): one `commucat run --assist` process (the release binary) holds
//! as many concurrent WebSocket signaling sessions as it can, up to `SESSIONS` (default 10000;
//! `SIGNALING_SESSIONS=n`), opened by this process over loopback. Prints
//! - how many sessions were held and how long opening them took;
//! - the node's resident memory before and with the sessions, and per session;
//! - the time to relay a message from one client to another (`offer` → the other's socket),
//!   p50 and p99 over `SIGNALING_MESSAGES` (default 2000) messages, measured twice in this run:
//!   with no other session open (the baseline) and with all the sessions open, and the ratio.
//!
//! `cargo bench --bench signaling`. The node's per-token, per-IP and message-rate limits are
//! raised for the run (one machine, one IP, a few tokens); the other limits are the defaults.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Tokens the idle sessions are spread over.
const TOKENS: usize = 100;
/// Sessions being opened at once.
const CONNECT_CONCURRENCY: usize = 256;
/// Rooms the idle sessions are spread over.
const ROOMS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Node {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(dir: &Path, sessions: usize) -> Node {
    let limit = (sessions + 1000).to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_commucat"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--control-listen",
            "127.0.0.1:0",
            "--assist",
            "--assist-listen",
            "127.0.0.1:0",
            "--stun-listen",
            "127.0.0.1:0",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ])
        .env("COMMUCAT_MDNS__ENABLED", "false")
        .env("COMMUCAT_ASSIST__RATE_BURST", "100000000")
        .env("COMMUCAT_ASSIST__SIGNALING__MAX_SESSIONS", &limit)
        .env("COMMUCAT_ASSIST__SIGNALING__MAX_SESSIONS_PER_TOKEN", &limit)
        .env("COMMUCAT_ASSIST__SIGNALING__MESSAGES_PER_SECOND", "1000000")
        .env("COMMUCAT_ASSIST__SIGNALING__BURST", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start commucat");
    let node = Node {
        child,
        dir: dir.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("assist.addr").exists() {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

async fn issue(node: &Node) -> String {
    let addr = std::fs::read_to_string(node.dir.join("control.addr")).unwrap();
    let token = std::fs::read_to_string(node.dir.join("control.token")).unwrap();
    let v: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/assist/tokens", addr.trim()))
        .bearer_auth(token.trim())
        .json(&json!({"ttl_secs": 3600}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_owned()
}

async fn connect(url: &str, token: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (ws, _) = connect_async(req).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// Relay latencies (µs) of `n` messages from `a` to `b`, one at a time.
async fn relay(a: &mut Ws, b: &mut Ws, b_id: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let msg = json!({"type": "ice-candidate", "to": b_id, "payload": {"i": i}}).to_string();
        let t = Instant::now();
        a.send(Message::text(msg)).await.unwrap();
        let got = next_of(b, "ice-candidate").await;
        out.push(t.elapsed().as_micros() as u64);
        assert_eq!(got["payload"]["i"], i);
    }
    out.sort_unstable();
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let sessions = env_usize("SIGNALING_SESSIONS", 10_000);
    let messages = env_usize("SIGNALING_MESSAGES", 2000);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(&tmp.path().join("n"), sessions);
    let pid = node.child.id();
    let addr = std::fs::read_to_string(node.dir.join("assist.addr")).unwrap();
    let url = format!("ws://{}/api/v1/ws", addr.trim());

    // Two measuring clients in their own room.
    let (ta, tb) = (issue(&node).await, issue(&node).await);
    let mut a = connect(&url, &ta).await.unwrap();
    let mut b = connect(&url, &tb).await.unwrap();
    let b_id = next_of(&mut b, "welcome").await["payload"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for ws in [&mut a, &mut b] {
        ws.send(Message::text(
            json!({"type": "join", "room": "bench"}).to_string(),
        ))
        .await
        .unwrap();
        next_of(ws, "peer-list").await;
    }
    relay(&mut a, &mut b, &b_id, 200).await; // warm-up
    let baseline = relay(&mut a, &mut b, &b_id, messages).await;
    let rss_before = rss_kib(pid);

    let mut tokens = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        tokens.push(issue(&node).await);
    }
    // Idle sessions: connect, join a room, then read (answering pings) until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(sessions);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let (url, token) = (url.clone(), tokens[i % TOKENS].clone());
        let (stop, gate, ready) = (stop.clone(), gate.clone(), ready_tx.clone());
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut ws = match connect(&url, &token).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return;
                }
            };
            let room = format!("r{}", i % ROOMS);
            let joined = ws
                .send(Message::text(
                    json!({"type": "join", "room": room}).to_string(),
                ))
                .await;
            drop(permit);
            let _ = ready.send(joined.map_err(|e| e.to_string())).await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                }
            }
        });
    }
    drop(ready_tx);
    let (mut held, mut failed, mut first_error) = (0usize, 0usize, None);
    for _ in 0..sessions {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(()) => held += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the joins' announcements drain before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with = rss_kib(pid);
    let loaded = relay(&mut a, &mut b, &b_id, messages).await;

    let per_session = (rss_with.saturating_sub(rss_before)) as f64 / held.max(1) as f64;
    println!(
        "signaling benchmark ({} build of the node)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "  sessions held          {held} of {sessions} ({failed} failed{})",
        first_error.map(|e| format!(": {e}")).unwrap_or_default()
    );
    println!(
        "  opened in              {connect_secs:.1} s ({:.0} sessions/s)",
        held as f64 / connect_secs
    );
    println!(
        "  node RSS               {:.1} MiB idle, {:.1} MiB with the sessions",
        rss_before as f64 / 1024.0,
        rss_with as f64 / 1024.0
    );
    println!("  memory per session     {per_session:.1} KiB");
    println!(
        "  relay a → b, {messages} msgs  p50 {:.3} ms  p99 {:.3} ms  (baseline, no other sessions)",
        pct(&baseline, 0.5),
        pct(&baseline, 0.99)
    );
    println!(
        "  relay a → b, {messages} msgs  p50 {:.3} ms  p99 {:.3} ms  (with {held} sessions)",
        pct(&loaded, 0.5),
        pct(&loaded, 0.99)
    );
    println!(
        "  p99 ratio loaded / baseline  {:.2}",
        pct(&loaded, 0.99) / pct(&baseline, 0.99)
    );
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}
