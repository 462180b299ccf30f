//! Crashes through the real binary: queued messages survive a SIGKILL of the sender and are
//! delivered exactly once; a file transfer whose receiver is SIGKILLed halfway resumes where it
//! stopped.

mod common;

use std::time::Duration;

use common::{LOOPBACK, NodeProc, cli};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(120);

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = LOOPBACK.to_vec();
    v.extend_from_slice(extra);
    v
}

fn init(dir: &std::path::Path) -> String {
    let out = cli(dir, &["init"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_survive_a_sigkill_of_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = NodeProc::start(&tmp.path().join("s"), &args(&["--role", "bootstrap"]));
    let boot_addr = boot.tcp_addr();
    let quick = [("COMMUCAT_DATA__MAX_RETRY_SECS", "2")];
    // B has an identity but is not running.
    let b_dir = tmp.path().join("b");
    let b_id = init(&b_dir);

    let a_dir = tmp.path().join("a");
    let a = NodeProc::start_env(&a_dir, &args(&["--bootstrap", &boot_addr]), &quick);
    for i in 0..200 {
        let m = a
            .api_post(
                "/v1/messages",
                &json!({"to": b_id, "body": format!("msg {i}")}),
            )
            .await;
        assert_eq!(m["seq"], i + 1);
    }
    a.kill(); // while all 200 are queued

    let b = NodeProc::start_env(&b_dir, &args(&["--bootstrap", &boot_addr]), &quick);
    let a = NodeProc::start_env(&a_dir, &args(&["--bootstrap", &boot_addr]), &quick);
    common::wait_until("B to receive everything", WAIT, async || {
        b.api_get("/v1/inbox").await.as_array().unwrap().len() >= 200
    })
    .await;
    common::wait_until("A's outbox to empty", WAIT, async || {
        a.status()["data"]["outbox_queued"] == 0
    })
    .await;
    let inbox = b.api_get("/v1/inbox").await;
    let bodies: Vec<&str> = inbox
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..200).map(|i| format!("msg {i}")).collect();
    assert_eq!(bodies, want, "every message exactly once, in order");
}

fn transfer_out(list: &Value, id: &str) -> Value {
    list["outgoing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_resumes_after_the_receiver_is_killed_halfway() {
    const SIZE: usize = 50_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let boot = NodeProc::start(&tmp.path().join("s"), &args(&["--role", "bootstrap"]));
    let boot_addr = boot.tcp_addr();
    let b_dir = tmp.path().join("b");
    let b = NodeProc::start(&b_dir, &args(&["--bootstrap", &boot_addr]));
    let b_id = b.peer_id();
    let b_ports = b.same_ports();
    // 20 MiB/s: the transfer takes a few seconds, long enough to kill the receiver on the way.
    let a = NodeProc::start_env(
        &tmp.path().join("a"),
        &args(&["--bootstrap", &boot_addr]),
        &[
            ("COMMUCAT_DATA__MAX_SEND_RATE_KIB", "20480"),
            ("COMMUCAT_DATA__MAX_RETRY_SECS", "2"),
        ],
    );
    let file = tmp.path().join("big.bin");
    let content: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &content).unwrap();
    let t = a
        .api_post("/v1/files", &json!({"to": b_id, "path": file}))
        .await;
    let id = t["id"].as_str().unwrap().to_owned();
    let blocks = t["blocks_total"].as_u64().unwrap();

    // Kill B once it has three quarters. After the cut A sends at most the missing quarter plus
    // its window of unconfirmed blocks (8 MiB, some of it into the dead connection): well under
    // the 70 % that a restart from zero would exceed.
    common::wait_until("three quarters of the blocks at B", WAIT, async || {
        let l = b.api_get("/v1/transfers").await;
        l["incoming"]
            .as_array()
            .unwrap()
            .first()
            .is_some_and(|t| t["blocks_done"].as_u64().unwrap() * 4 >= blocks * 3)
    })
    .await;
    b.kill();
    let sent_before = transfer_out(&a.api_get("/v1/transfers").await, &id)["bytes_sent"]
        .as_u64()
        .unwrap();

    let ports: Vec<&str> = b_ports.iter().map(String::as_str).collect();
    let mut restart = ports.clone();
    restart.extend(["--bootstrap", &boot_addr]);
    let b = NodeProc::start(&b_dir, &restart);
    common::wait_until("the transfer to complete", WAIT, async || {
        transfer_out(&a.api_get("/v1/transfers").await, &id)["state"] == "complete"
    })
    .await;
    let done = transfer_out(&a.api_get("/v1/transfers").await, &id);
    assert!(done["sessions"].as_u64().unwrap() >= 2, "{done}");
    let sent_after = done["bytes_sent"].as_u64().unwrap() - sent_before;
    assert!(
        (sent_after as usize) < SIZE * 7 / 10,
        "resumed: {sent_after} bytes after the cut, against {SIZE} for a restart from zero"
    );

    let incoming = b.api_get("/v1/transfers").await["incoming"][0].clone();
    assert_eq!(incoming["state"], "complete");
    let path = incoming["final_path"].as_str().unwrap();
    assert!(path.starts_with(b_dir.join("downloads").to_str().unwrap()));
    assert_eq!(
        Sha256::digest(std::fs::read(path).unwrap()),
        Sha256::digest(&content)
    );
}
