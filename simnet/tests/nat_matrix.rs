//! The shipped `nat-matrix` scenario as a user runs it: the `simnet` binary, netns mode (network
//! namespaces and nftables NAT built by patchbay), checked on its report.
//!
//! Needs `nft` (Debian `nftables`); without it the test says it was skipped, except under
//! `CI=true`, where that is a failure.
#![cfg(target_os = "linux")]

use std::process::Command;

#[test]
fn nat_matrix_delivers_in_every_cell_and_goes_direct_where_the_nats_allow() {
    if let Some(why) = simnet::netns::unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("nat-matrix needs the NAT lab under CI=true: {why}");
        }
        eprintln!("SKIPPED nat_matrix: {why}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let scenario = simnet::scenario::shipped_dir().join("nat-matrix.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_simnet"))
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "simnet failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "netns");
    let cells = report["nat_pairs"].as_array().unwrap();
    assert_eq!(cells.len(), 10, "every pair of the 4 NAT types: {cells:?}");
    for c in cells {
        let name = format!("{} × {}", c["a"], c["b"]);
        assert_eq!(
            c["delivery_rate"], 1.0,
            "{name}: every message delivered: {c}"
        );
        assert!(c["messages_sent"].as_u64().unwrap() > 0, "{name}: {c}");
        let (a, b) = (c["a"].as_str().unwrap(), c["b"].as_str().unwrap());
        let eim = |t: &str| t == "moderate" || t == "cgnat";
        if eim(a) && eim(b) {
            // Endpoint-independent mapping on both sides: the hole punch works.
            assert_eq!(c["expected"], "direct");
            assert_eq!(c["as_expected"], true, "{name}: {c}");
            assert_eq!(c["relayed"], 0, "{name}: {c}");
        }
        if a == "open" || b == "open" {
            // A full-cone NAT forwards the other side's dial to its mapped port: whatever the
            // other NAT, the pair ends direct (by the plain dial to the announced address that
            // the node tries before DCUtR's punch settles it).
            assert_eq!(c["expected"], "direct");
            assert_eq!(c["as_expected"], true, "{name}: {c}");
            assert_eq!(c["relayed"], 0, "{name}: {c}");
        }
        if (a == "strict" || b == "strict") && a != "open" && b != "open" {
            // A symmetric NAT against anything but an open one: the relay carries it all.
            assert_eq!(c["expected"], "relayed");
            assert_eq!(c["as_expected"], true, "{name}: {c}");
            assert_eq!(c["direct"], 0, "{name}: {c}");
        }
    }
    let png = std::fs::read(out.path().join("hole_punch_matrix.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
