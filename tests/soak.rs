//! Soak: A sends B 2,000 messages and three 20 MB files while B is killed with SIGKILL at 20
//! random moments and started again each time. In the end every message is in B's inbox exactly
//! once, in order, every file arrived whole (its SHA-256 matches), and B's database never looked
//! damaged to its own start-up check (a restart after a crash must not be refused).
//!
//! The moments are drawn from a seed printed at the start; `SOAK_SEED=<n>` replays a run.

mod common;

use std::time::{Duration, Instant};

use common::{LOOPBACK, NO_BOOTSTRAP, NodeProc, cli};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MESSAGES: usize = 2000;
const FILES: usize = 3;
const FILE_BYTES: usize = 20_000_000;
const KILLS: usize = 20;
const WAIT: Duration = Duration::from_secs(300);

/// xorshift64*: a small deterministic generator for the kill schedule and the file contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Every message in B's inbox, paging through `after`.
async fn inbox(b: &NodeProc) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m["seq"].as_u64().unwrap());
        let page = b.api_get(&format!("/v1/inbox?after={after}")).await;
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Starts B (again) on its ports; a stale `control.addr` from the killed process is removed first
/// so that the wait is for the new one.
fn start_b(dir: &std::path::Path, ports: &[String]) -> NodeProc {
    let _ = std::fs::remove_file(dir.join("control.addr"));
    let mut args: Vec<&str> = ports.iter().map(String::as_str).collect();
    args.extend(["--bootstrap", NO_BOOTSTRAP]);
    NodeProc::start(dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_files_survive_twenty_sigkills_of_the_receiver() {
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak: SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();

    let b_dir = tmp.path().join("b");
    let mut first: Vec<&str> = LOOPBACK.to_vec();
    first.extend(["--bootstrap", NO_BOOTSTRAP]);
    let b = NodeProc::start(&b_dir, &first);
    let b_id = b.peer_id();
    let b_ports = b.same_ports();
    let b_tcp = {
        let s = b.status();
        let tcp = common::strs(&s["listen_addrs"])
            .into_iter()
            .find(|a| a.contains("/tcp/"))
            .unwrap()
            .to_owned();
        format!("{tcp}/p2p/{b_id}")
    };
    // A sends files at 4 MiB/s (5 s a file), so that transfers are under way when B dies, and
    // retries within a second or two of B coming back.
    let mut a_args: Vec<&str> = LOOPBACK.to_vec();
    a_args.extend(["--bootstrap", NO_BOOTSTRAP]);
    let a = NodeProc::start_env(
        &tmp.path().join("a"),
        &a_args,
        &[
            ("COMMUCAT_DATA__MAX_SEND_RATE_KIB", "4096"),
            ("COMMUCAT_DATA__MAX_RETRY_SECS", "2"),
        ],
    );
    assert!(cli(&a.dir, &["connect", &b_tcp]).status.success());

    let files: Vec<(std::path::PathBuf, Vec<u8>)> = (0..FILES)
        .map(|i| {
            let mut r = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut content = Vec::with_capacity(FILE_BYTES);
            while content.len() < FILE_BYTES {
                content.extend_from_slice(&r.next().to_le_bytes());
            }
            content.truncate(FILE_BYTES);
            let path = tmp.path().join(format!("file-{i}.bin"));
            std::fs::write(&path, &content).unwrap();
            (path, Sha256::digest(&content).to_vec())
        })
        .collect();

    // The sender: 2,000 messages over about 20 s, a file at the start, a third and two thirds.
    let (base, token) = a.control();
    let to = b_id.clone();
    let paths: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let post = |path: &str, body: Value| {
            http.post(format!("{base}{path}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        for i in 0..MESSAGES {
            if i % (MESSAGES / FILES) == 0 && i / (MESSAGES / FILES) < FILES {
                let f = &paths[i / (MESSAGES / FILES)];
                let r = post("/v1/files", json!({"to": to, "path": f}))
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
            let r = post(
                "/v1/messages",
                json!({"to": to, "body": format!("soak {i:04}")}),
            )
            .await
            .unwrap();
            assert!(r.status().is_success());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // The killer: 20 SIGKILLs of B at random moments, each followed by a restart.
    let started = Instant::now();
    let mut b = b;
    for k in 0..KILLS {
        tokio::time::sleep(rng.millis(300, 2500)).await;
        b.kill();
        let dir = b_dir.clone();
        let ports = b_ports.clone();
        b = tokio::task::spawn_blocking(move || start_b(&dir, &ports))
            .await
            .unwrap_or_else(|e| panic!("restart {k} after SIGKILL: {e}"));
    }
    eprintln!("soak: {KILLS} kills in {:?}", started.elapsed());
    sender.await.unwrap();

    common::wait_until("A's outbox to empty", WAIT, async || {
        a.status()["data"]["outbox_queued"] == 0
    })
    .await;
    common::wait_until("every file to complete", WAIT, async || {
        let t = a.api_get("/v1/transfers").await;
        let out = t["outgoing"].as_array().unwrap();
        out.len() == FILES && out.iter().all(|t| t["state"] == "complete")
    })
    .await;

    let got = inbox(&b).await;
    let bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..MESSAGES).map(|i| format!("soak {i:04}")).collect();
    assert_eq!(bodies.len(), MESSAGES, "every message once");
    assert_eq!(bodies, want, "every message exactly once, in order");

    let incoming = b.api_get("/v1/transfers").await["incoming"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(incoming.len(), FILES, "{incoming:?}");
    let mut hashes: Vec<Vec<u8>> = incoming
        .iter()
        .map(|t| {
            assert_eq!(t["state"], "complete", "{t}");
            let path = t["final_path"].as_str().unwrap();
            Sha256::digest(std::fs::read(path).unwrap()).to_vec()
        })
        .collect();
    let mut want_hashes: Vec<Vec<u8>> = files.into_iter().map(|(_, h)| h).collect();
    hashes.sort();
    want_hashes.sort();
    assert_eq!(hashes, want_hashes, "every file arrived whole");
    let sessions: u64 = a.api_get("/v1/transfers").await["outgoing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["sessions"].as_u64().unwrap())
        .sum();
    eprintln!("soak: the files took {sessions} sessions in all");
    assert!(
        sessions > FILES as u64,
        "no transfer was cut by a kill ({sessions} sessions): the soak did not test resuming"
    );

    assert!(b.stop().success());
    let doctor = cli(&b_dir, &["doctor"]);
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    a.stop();
}
