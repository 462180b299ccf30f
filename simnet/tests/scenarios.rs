//! simnet as a researcher uses it: a shipped scenario of 50 real nodes in this process (over the
//! link model, with an outage, files, names), checked on its report and its files, then the same
//! scenario split over four `simnet` processes with the same results; and the same seed giving
//! the same plan.

use simnet::{Plan, Report, Scenario, scenario::shipped_dir};

fn scenario(name: &str) -> Scenario {
    Scenario::load(&shipped_dir().join(format!("{name}.toml"))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_50_finds_every_peer_and_delivers_every_message_once_in_one_process_or_four() {
    let s = scenario("smoke-50");
    let outcome = simnet::run(&s, None, None, &|_: &str, _: u64, _: u64| {})
        .await
        .unwrap();
    let one = &outcome.report;
    println!("one process:\n{}", one.summary());
    check_smoke_50(one);
    written(&outcome);

    // The same scenario split over four processes of the simnet binary (nodes 0, 4, 8, … in the
    // first), connected over loopback TCP.
    let dir = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_simnet"))
        .args(["run", "--processes", "4", "--out"])
        .arg(dir.path())
        .arg(shipped_dir().join("smoke-50.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    println!("four processes:\n{stdout}");
    let four: Report =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    check_smoke_50(&four);
    // The same plan, so the same work; and the same results within the busy-host tolerance.
    let work = |r: &Report| {
        let groups = r.groups.as_ref().map(|g| (g.groups, g.messages, g.copies));
        let names = r.names.as_ref().map(|n| (n.claimed, n.resolutions));
        let files = r.files.as_ref().map(|f| f.sent);
        let churn = r.churn.as_ref().map(|c| (c.leaves, c.returns));
        (
            r.lookups.attempted,
            r.messages.sent,
            groups,
            names,
            files,
            churn,
        )
    };
    assert_eq!(work(one), work(&four));
    let valid = |r: &Report| r.host.as_ref().is_some_and(|h| h.valid);
    if valid(one) && valid(&four) {
        let differ = simnet::host::disagreements(one, &four);
        assert!(differ.is_empty(), "{differ:?}");
    }
}

/// What smoke-50 must show, run in one process or several.
fn check_smoke_50(r: &Report) {
    assert_eq!(r.nodes, 50);
    assert_eq!(r.isolated_nodes, 0, "every node connected to someone");
    assert_eq!(r.time_to_first_bootstrap_ms.count, 50);
    assert_eq!(r.lookups.attempted, 150);
    assert_eq!(r.lookups.success_rate, 1.0, "{:?}", r.lookups);
    assert!(r.lookups.via_dht > 0, "{:?}", r.lookups);
    let hops = r.lookups.hops.as_ref().expect("hops computed");
    assert!(hops.count > 0 && hops.min >= Some(1.0), "{hops:?}");
    // The 10 ± 2 ms link is felt: no lookup is answered faster than one round trip (2 × 8 ms).
    assert!(
        r.lookups.latency_ms.min >= Some(16.0),
        "{:?}",
        r.lookups.latency_ms
    );
    let sent = r.messages.sent;
    assert!(sent >= 185, "{sent} messages planned with online senders");
    assert_eq!(r.messages.delivery_rate, 1.0, "{:?}", r.messages);
    assert_eq!(r.messages.duplicates, 0);
    // Messages to the nodes that were away arrived once, after they came back.
    let off = r
        .messages
        .to_offline
        .as_ref()
        .expect("messages to offline nodes");
    assert!(off.sent > 0, "{off:?}");
    assert_eq!(
        (off.delivered, off.duplicates, off.delivered_before_return),
        (off.sent, 0, 0)
    );
    assert_eq!(off.after_return_ms.count, off.sent);
    let churn = r.churn.as_ref().expect("the outage is reported");
    assert_eq!((churn.leaves, churn.returns), (5, 5));
    assert!(
        r.timeline.iter().any(|s| s.live_nodes == 45),
        "the outage shows in the timeline"
    );
    let files = r.files.as_ref().expect("files");
    assert_eq!((files.sent, files.completed), (3, 3), "{files:?}");
    assert!(
        r.bytes_sent.is_some_and(|b| b > 3 * 262_144),
        "{:?}",
        r.bytes_sent
    );
    let names = r.names.as_ref().expect("names");
    assert_eq!(
        (names.claim_failures, names.wrong_owner),
        (0, 0),
        "{names:?}"
    );
    assert_eq!(names.resolutions, 60);
    // Claims are stored before the phase; a resolution may still miss while nodes go away.
    assert!(names.success_rate >= 0.95, "{names:?}");
    let delivered: usize = r.timeline.iter().map(|s| s.messages_delivered).sum();
    assert_eq!(
        delivered,
        sent + 240,
        "the timeline counts each group copy too"
    );
    let groups = r.groups.as_ref().expect("groups");
    assert_eq!((groups.groups, groups.made), (3, 3), "{groups:?}");
    assert_eq!(groups.messages, 60, "{groups:?}");
    assert_eq!(groups.copies, 240, "four other members each");
    assert_eq!(
        (groups.delivered, groups.duplicates),
        (240, 0),
        "every copy once: {groups:?}"
    );
    assert_eq!(groups.to_last_member_ms.count, 60);
    let rows: Vec<(usize, usize, usize)> = (groups.per_group.iter())
        .map(|g| (g.messages, g.copies, g.delivered))
        .collect();
    assert_eq!(rows, vec![(20, 80, 80); 3], "each group on its own");
}

/// The report's files.
fn written(outcome: &simnet::Outcome) {
    let sent = outcome.report.messages.sent;
    let dir = tempfile::tempdir().unwrap();
    let files = simnet::write(outcome, dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["messages"]["delivered"], sent);
    assert_eq!(json["lookups"]["latency_ms"]["count"], 150);
    assert_eq!(json["files"]["completed"], 3);
    assert_eq!(json["groups"]["delivered"], 240);
    for name in [
        "lookup_latency_cdf.png",
        "delivery_latency_cdf.png",
        "timeline.png",
    ] {
        let path = dir.path().join(name);
        assert!(files.contains(&path), "{name} written");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
        assert!(bytes.len() > 5_000, "{name} has content");
    }
}

#[test]
fn the_same_seed_gives_the_same_topology_and_workload() {
    let s = scenario("smoke-50");
    let a = Plan::new(&s, 42);
    let b = Plan::new(&s, 42);
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let c = Plan::new(&s, 43);
    assert_ne!(a.ops, c.ops, "another seed, another workload");
    assert_eq!(a.nodes.len(), 50);
    assert_eq!(a.peer_id(7), a.keys(7).peer_id(), "ids without key bundles");
    // 150 lookups, 190 messages, 3 files, 5 leaves and 5 returns, 60 name resolutions and a claim
    // by each node resolved (a few draws may find no online sender and are dropped, the same ones
    // for the same seed).
    let count = |f: fn(&simnet::plan::Op) -> bool| a.ops.iter().filter(|o| f(&o.op)).count();
    let claims = count(|o| matches!(o, simnet::plan::Op::Claim { .. }));
    assert!((20..=42).contains(&claims), "{claims} claims");
    assert_eq!(count(|o| matches!(o, simnet::plan::Op::Resolve { .. })), 60);
    // Three groups of five, each made before the phase and sent 20 messages.
    let creates = count(|o| matches!(o, simnet::plan::Op::GroupCreate { .. }));
    let group_msgs = count(|o| matches!(o, simnet::plan::Op::GroupMessage { .. }));
    assert_eq!((creates, a.groups.len()), (3, 3));
    assert!(a.groups.iter().all(|g| g.len() == 5));
    assert!(
        (50..=60).contains(&group_msgs),
        "{group_msgs} group messages"
    );
    let rest = a.ops.len() - claims - 60 - creates - group_msgs;
    assert!(rest > 330 && rest <= 353, "{rest}");
    let away: Vec<_> = a.nodes.iter().filter(|n| n.group == "away").collect();
    assert!(away.iter().all(|n| n.downtime.len() == 1));
    // Desktops bootstrap from bootstrap nodes only; operations stay within the phase and never
    // target their own source.
    for n in &a.nodes {
        assert!(
            n.bootstrap
                .iter()
                .all(|b| a.nodes[*b].role == simnet::scenario::Role::Bootstrap)
        );
    }
    for o in &a.ops {
        assert!(o.at_ms < s.duration_secs * 1000);
        match o.op {
            simnet::plan::Op::Lookup { from, to }
            | simnet::plan::Op::Resolve { from, to }
            | simnet::plan::Op::Message { from, to, .. }
            | simnet::plan::Op::File { from, to, .. } => {
                assert_ne!(from, to);
                assert!(a.nodes[from].live_at(o.at_ms), "senders are online");
            }
            simnet::plan::Op::GroupMessage { group, from, .. } => {
                assert!(a.groups[group].contains(&from), "senders are members");
                assert!(a.nodes[from].live_at(o.at_ms), "senders are online");
            }
            simnet::plan::Op::Leave { .. }
            | simnet::plan::Op::Return { .. }
            | simnet::plan::Op::Claim { .. }
            | simnet::plan::Op::GroupCreate { .. } => {}
        }
    }
}
