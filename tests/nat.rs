//! NAT traversal behind real NATs: network namespaces and nftables NAT built by patchbay, the
//! real `commucat` binary on every device. A public router carries the bootstrap/relay node;
//! desktops sit behind home routers of each NAT kind.
//!
//! Needs `nft` (Debian `nftables`); without it each test says it was skipped, except under
//! `CI=true`, where that is a failure. The ELF constructor below puts this whole test binary in a
//! user namespace, which is why these tests live in a binary of their own.
#![cfg(target_os = "linux")]

#[allow(dead_code)]
#[path = "common/lab.rs"]
mod lab;

use std::path::Path;

use lab::{LabNode, Transports, relay_flags, router, wait};
use netlab::Nat;
use tokio::sync::Mutex;

#[ctor::ctor]
fn userns() {
    lab::enter_userns();
}

/// One lab at a time: each runs three or four nodes, and the machine has two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A relay on a public router and two desktops, each behind its own router of the given kind.
struct Topology {
    _lab: patchbay::Lab,
    relay: LabNode,
    a: LabNode,
    b: LabNode,
    home_a: patchbay::Router,
    /// Just before A's process was started.
    a_started: std::time::Instant,
}

async fn topology(root: &Path, ka: Nat, kb: Nat, t: Transports) -> Topology {
    let lab = lab::new_lab().await;
    let dc = router(&lab, "dc", Nat::Public).await;
    let home_a = router(&lab, "home-a", ka).await;
    let home_b = router(&lab, "home-b", kb).await;
    let relay_dev = lab::device(&lab, "relay", &dc).await;
    let a_dev = lab::device(&lab, "a", &home_a).await;
    let b_dev = lab::device(&lab, "b", &home_b).await;
    let relay_ip = relay_dev.ip().unwrap();
    let relay = LabNode::start(&relay_dev, root, "relay", t, &relay_flags(relay_ip, t), &[]);
    // Its configured public addresses count as confirmed from the start.
    let status = relay.status();
    assert_eq!(status["reachability"], "public", "{status}");
    assert_eq!(status["kad_mode"], "server", "{status}");
    let boot = vec!["--bootstrap".to_owned(), relay.addr(t)];
    let a_started = std::time::Instant::now();
    let a = LabNode::start(&a_dev, root, "a", t, &boot, &[]);
    let b = LabNode::start(&b_dev, root, "b", t, &boot, &[]);
    Topology {
        _lab: lab,
        relay,
        a,
        b,
        home_a,
        a_started,
    }
}

/// A lab of its own for `test` (none when the lab cannot run here): the topology, with both
/// desktops behind NATs holding a relay reservation.
async fn reserved(
    test: &str,
    ka: Nat,
    kb: Nat,
    t: Transports,
) -> Option<(
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Topology,
)> {
    if !lab::lab_available(test) {
        return None;
    }
    let one = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let top = topology(tmp.path(), ka, kb, t).await;
    if ka != Nat::Open {
        top.a.wait_reserved();
    }
    if kb != Nat::Open {
        top.b.wait_reserved();
    }
    Some((one, tmp, top))
}

/// Sends `count` messages from `from` to `to` and waits until `to` has all of them.
fn messages(from: &LabNode, to: &LabNode, count: usize, tag: &str) {
    for i in 0..count {
        let out = from.cli(&["send", &to.peer_id, &format!("{tag} {i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    messages_arrived(from, to, count, tag);
}

/// Sends a `size`-byte file and checks the receiver's copy by hash.
fn file(from: &LabNode, to: &LabNode, root: &Path, size: usize) {
    let path = root.join(format!("from-{}-{size}.bin", from.name));
    let hash = lab::make_file(&path, size);
    let out = from.cli(&["send-file", &to.peer_id, path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "send-file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let transfers = to.json(&["transfers"]);
    let incoming = transfers["incoming"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["sha256"] == hash.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no incoming transfer with the file's hash: {transfers}"));
    assert_eq!(incoming["state"], "complete", "{incoming}");
    let got = std::fs::read(incoming["final_path"].as_str().unwrap()).unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), hash);
}

const HOLE_PUNCH_OK: &str = "commucat_hole_punches_total{outcome=\"success\"}";
const HOLE_PUNCH_FAILED: &str = "commucat_hole_punches_total{outcome=\"failure\"}";

/// Both desktops private with a reservation; A reaches B (relayed first), then the connection
/// must become direct on both sides and carry a message and a 5 MB file.
async fn goes_direct(ka: Nat, kb: Nat, t: Transports, test: &str) {
    let Some((_one, tmp, top)) = reserved(test, ka, kb, t).await else {
        return;
    };
    let (a, b) = (&top.a, &top.b);
    messages(a, b, 1, "hello");
    wait("a direct connection between A and B", || {
        let ab = a.connections_to(&b.peer_id);
        let ba = b.connections_to(&a.peer_id);
        !ab.is_empty() && ab.iter().all(|r| !r) && !ba.is_empty() && ba.iter().all(|r| !r)
    });
    if ka != Nat::Open {
        // The first connection went through the relay and was upgraded by a hole punch.
        assert!(
            a.metric(HOLE_PUNCH_OK) + b.metric(HOLE_PUNCH_OK) >= 1.0,
            "a hole punch succeeded"
        );
    }
    file(a, b, tmp.path(), 5_000_000);
    messages(b, a, 1, "reply");
    assert!(
        a.connections_to(&b.peer_id).iter().all(|r| !r),
        "still direct"
    );
}

/// The punch cannot work: the peers stay on the relay, which must carry 100 messages and a
/// 5 MB file (more than libp2p's default circuit limit of 128 KiB).
async fn stays_relayed(ka: Nat, kb: Nat, test: &str) {
    let Some((_one, tmp, top)) = reserved(test, ka, kb, Transports::Both).await else {
        return;
    };
    let (a, b) = (&top.a, &top.b);
    messages(a, b, 100, "m");
    wait("the hole punch to give up", || {
        a.metric(HOLE_PUNCH_FAILED) + b.metric(HOLE_PUNCH_FAILED) >= 1.0
    });
    let ab = a.connections_to(&b.peer_id);
    assert!(
        !ab.is_empty() && ab.iter().all(|r| *r),
        "relayed only: {ab:?}"
    );
    file(a, b, tmp.path(), 5_000_000);
    assert!(a.connections_to(&b.peer_id).iter().all(|r| *r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_and_moderate_go_direct_over_tcp() {
    goes_direct(
        Nat::Moderate,
        Nat::Moderate,
        Transports::Tcp,
        "moderate_and_moderate_go_direct_over_tcp",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_and_moderate_go_direct_over_quic() {
    goes_direct(
        Nat::Moderate,
        Nat::Moderate,
        Transports::Quic,
        "moderate_and_moderate_go_direct_over_quic",
    )
    .await;
}

/// Over QUIC: patchbay's open NAT filters endpoint-independently for UDP only (its TCP mappings
/// still refuse unsolicited connections), so the open side is reachable on QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_strict_go_direct() {
    goes_direct(
        Nat::Open,
        Nat::Strict,
        Transports::Quic,
        "open_and_strict_go_direct",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_and_strict_stay_relayed_and_deliver() {
    stays_relayed(
        Nat::Moderate,
        Nat::Strict,
        "moderate_and_strict_stay_relayed_and_deliver",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_strict_stay_relayed_and_deliver() {
    stays_relayed(
        Nat::Strict,
        Nat::Strict,
        "strict_and_strict_stay_relayed_and_deliver",
    )
    .await;
}

/// Remote addresses of this node's connections to `peer`.
fn remote_addrs(node: &LabNode, peer: &str) -> Vec<String> {
    node.connections(peer)
        .iter()
        .map(|c| c["remote_addr"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_the_same_nat_connect_directly() {
    if !lab::lab_available("two_nodes_behind_the_same_nat_connect_directly") {
        return;
    }
    let _one = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lab = lab::new_lab().await;
    let dc = router(&lab, "dc", Nat::Public).await;
    let home = router(&lab, "home", Nat::Moderate).await;
    let relay_dev = lab::device(&lab, "relay", &dc).await;
    let (a_dev, b_dev) = (
        lab::device(&lab, "a", &home).await,
        lab::device(&lab, "b", &home).await,
    );
    let t = Transports::Both;
    let relay_ip = relay_dev.ip().unwrap();
    let _relay = LabNode::start(&relay_dev, root, "relay", t, &relay_flags(relay_ip, t), &[]);
    let boot = vec!["--bootstrap".to_owned(), _relay.addr(t)];
    let mdns = [("COMMUCAT_MDNS__ENABLED", "true")];
    let a = LabNode::start(&a_dev, root, "a", t, &boot, &mdns);
    let b = LabNode::start(&b_dev, root, "b", t, &boot, &mdns);
    messages(&a, &b, 1, "lan");
    let lan = |addr: &str| addr.contains(&format!("/ip4/{}/", b.ip));
    wait("A and B connected over the LAN only", || {
        let addrs = remote_addrs(&a, &b.peer_id);
        !addrs.is_empty() && addrs.iter().all(|x| lan(x))
    });
    let back = remote_addrs(&b, &a.peer_id);
    assert!(
        back.iter().all(|x| !x.contains("p2p-circuit")),
        "direct on B's side too: {back:?}"
    );
    file(&a, &b, root, 1_000_000);
}

/// While A and B have a direct connection the relay dies: their traffic goes on, nothing is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relay_does_not_stop_a_direct_connection() {
    let test = "a_dead_relay_does_not_stop_a_direct_connection";
    let Some((_one, tmp, mut top)) =
        reserved(test, Nat::Moderate, Nat::Moderate, Transports::Both).await
    else {
        return;
    };
    messages(&top.a, &top.b, 1, "before");
    wait("a direct connection", || {
        let ab = top.a.connections_to(&top.b.peer_id);
        !ab.is_empty() && ab.iter().all(|r| !r)
    });
    top.relay.kill();
    messages(&top.a, &top.b, 20, "after");
    messages(&top.b, &top.a, 20, "back");
    file(&top.a, &top.b, tmp.path(), 2_000_000);
    assert!(top.a.connections_to(&top.b.peer_id).iter().all(|r| !r));
}

/// A and B only reach each other through the relay, which dies with messages queued: once it
/// is back they are delivered, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_wait_for_the_relay_to_come_back() {
    let test = "queued_messages_wait_for_the_relay_to_come_back";
    let Some((_one, _tmp, mut top)) =
        reserved(test, Nat::Strict, Nat::Strict, Transports::Both).await
    else {
        return;
    };
    messages(&top.a, &top.b, 1, "first");
    top.relay.kill();
    wait("A to notice the relay is gone", || {
        top.a.connections_to(&top.b.peer_id).is_empty()
    });
    for i in 0..10 {
        let out = top.a.cli(&["send", &top.b.peer_id, &format!("queued {i}")]);
        assert!(out.status.success());
    }
    let queued = top.a.status()["data"]["outbox_queued"].as_u64().unwrap();
    assert_eq!(queued, 10, "all queued while the relay is down");
    top.relay.spawn();
    messages_arrived(&top.a, &top.b, 10, "queued");
}

/// Waits until `to` holds exactly `count` messages tagged `tag` from `from`, in order, once.
fn messages_arrived(from: &LabNode, to: &LabNode, count: usize, tag: &str) {
    let tagged = || -> Vec<String> {
        to.json(&["inbox"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["from"] == from.peer_id.as_str())
            .filter_map(|m| m["body"].as_str())
            .filter(|b| b.starts_with(&format!("{tag} ")))
            .map(str::to_owned)
            .collect()
    };
    wait(&format!("{count} {tag} messages at {}", to.name), || {
        tagged().len() >= count
    });
    let want: Vec<String> = (0..count).map(|i| format!("{tag} {i}")).collect();
    assert_eq!(tagged(), want, "every message exactly once, in order");
}

/// A's router switches from an open NAT (reachable) to a home NAT and back: A's status follows
/// (public → private with a reservation → public without) within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachability_follows_the_router() {
    let test = "reachability_follows_the_router";
    let Some((_one, _tmp, top)) = reserved(test, Nat::Open, Nat::Moderate, Transports::Quic).await
    else {
        return;
    };
    let a = &top.a;
    let public = || {
        let s = a.status();
        s["reachability"] == "public" && s["relay_reservations"].as_array().unwrap().is_empty()
    };
    wait("A to be public behind the open NAT", public);
    let switched = std::time::Instant::now();
    top.home_a.set_nat(patchbay::Nat::Moderate).await.unwrap();
    top.home_a.flush_nat_state().await.unwrap();
    a.wait_reserved();
    assert_eq!(a.status()["reachability"], "private");
    eprintln!(
        "[lab] public -> private with a reservation in {:?}",
        switched.elapsed()
    );
    let switched = std::time::Instant::now();
    top.home_a.set_nat(patchbay::Nat::Open).await.unwrap();
    top.home_a.flush_nat_state().await.unwrap();
    wait("A to be public again, reservations dropped", public);
    eprintln!("[lab] private -> public in {:?}", switched.elapsed());
}

/// Relay first: a desktop behind a home router (endpoint-independent mapping) is reachable through
/// the DHT right after it starts. It reserves on the relay at once and publishes its presence
/// record with the relayed address as soon as the relay accepts; its status says `private` once
/// AutoNAT's dial-backs failed. (It used to wait 30 s of "unknown" before reserving.)
async fn reachable_at_once(t: Transports, test: &str) {
    if !lab::lab_available(test) {
        return;
    }
    let _one = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let top = topology(tmp.path(), Nat::Moderate, Nat::Moderate, t).await;
    let (a, b) = (&top.a, &top.b);
    a.wait_reserved();
    let reserved = top.a_started.elapsed();
    wait("B to reach A by its peer id (DHT record)", || {
        b.cli(&["connect", &a.peer_id]).status.success()
    });
    let reachable = top.a_started.elapsed();
    eprintln!(
        "[lab] {t:?}: A start -> reservation {reserved:?}, -> dialled by B through the DHT {reachable:?}"
    );
    assert!(
        reachable < std::time::Duration::from_secs(20),
        "A is reachable long before the 30 s a node once waited to reserve: {reachable:?}"
    );
    wait("A to say it is private", || {
        a.status()["reachability"] == "private"
    });
    messages(b, a, 1, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_behind_a_home_router_is_reachable_at_once_over_tcp() {
    reachable_at_once(
        Transports::Tcp,
        "a_desktop_behind_a_home_router_is_reachable_at_once_over_tcp",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_behind_a_home_router_is_reachable_at_once_over_quic() {
    reachable_at_once(
        Transports::Quic,
        "a_desktop_behind_a_home_router_is_reachable_at_once_over_quic",
    )
    .await;
}
