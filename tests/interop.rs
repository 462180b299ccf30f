//! CommuCat speaks plain libp2p: a js-libp2p node (npm packages pinned in `tests/interop/js/`)
//! pings and identifies a CommuCat bootstrap node and finds another CommuCat node through its
//! Kademlia DHT. Needs Node.js and npm; skipped, saying so, when they are missing (not under CI).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{LOOPBACK, NodeProc};
use serde_json::Value;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

/// `Err(reason)` when the JS tooling cannot be used here.
fn prepare_js() -> Result<(), String> {
    common::npm_ci(&js_dir())
}

#[test]
fn js_libp2p_pings_identifies_and_finds_peers_through_commucat() {
    if let Err(reason) = prepare_js() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("SKIPPED js_libp2p interop: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut boot_args = LOOPBACK.to_vec();
    boot_args.extend(["--role", "bootstrap"]);
    let b = NodeProc::start(&tmp.path().join("b"), &boot_args);
    let b_addr = b.tcp_addr();
    let mut c_args = LOOPBACK.to_vec();
    c_args.extend(["--bootstrap", &b_addr]);
    let c = NodeProc::start(&tmp.path().join("c"), &c_args);
    let c_id = c.peer_id();
    let c_tcp = c.tcp_addr();
    c.wait_serving_dht();
    b.wait_sees_dht_server(&c_id);

    let mut js = Command::new("node")
        .arg("find-peer.mjs")
        .args([&b_addr, &c_id])
        .current_dir(js_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start node");
    common::wait_for(
        "the js-libp2p client to finish",
        Duration::from_secs(90),
        || js.try_wait().unwrap().map(drop),
    );
    let out = js.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "js-libp2p failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");

    assert_eq!(
        report["agent_version"],
        format!("commucat/{}", env!("CARGO_PKG_VERSION"))
    );
    let protocols = common::strs(&report["protocols"]);
    for p in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/commucat/kad/1.0.0"] {
        assert!(protocols.contains(&p), "{p} missing from {protocols:?}");
    }
    assert!(report["ping_rtt_ms"].as_f64().is_some());
    let found = common::strs(&report["found"]);
    assert!(
        found.contains(&c_tcp.as_str()),
        "js-libp2p found {found:?}, expected {c_tcp}"
    );
}
