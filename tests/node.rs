//! Real `commucat` processes on 127.0.0.1: discovery through the DHT, and what survives a restart.

mod common;

use common::{LOOPBACK, NodeProc, WAIT, cli, cli_json, cli_ok, wait_for};
use serde_json::{Value, json};

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = LOOPBACK.to_vec();
    v.extend_from_slice(extra);
    v
}

/// A bootstrap node B and two desktop nodes A and C that were only told about B: A finds C's
/// addresses with `commucat dht find` and then connects to it.
#[test]
fn desktop_finds_another_desktop_through_the_dht() {
    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let b_addr = b.tcp_addr();
    let b_id = b.peer_id();
    assert_eq!(
        b.status()["kad_mode"],
        "server",
        "the bootstrap role always serves the DHT"
    );

    // A stays a DHT client (a desktop behind NAT would), so C cannot stumble on A by itself.
    let a = NodeProc::start_env(
        &tmp.path().join("a"),
        &args(&["--bootstrap", &b_addr]),
        &[("COMMUCAT_KAD__MODE", "client")],
    );
    let c = NodeProc::start(&tmp.path().join("c"), &args(&["--bootstrap", &b_addr]));
    let c_id = c.peer_id();
    let c_tcp_port = c.tcp_addr().split('/').nth(4).unwrap().to_owned();

    // C learns through AutoNAT (B dials it back) that it is reachable and starts serving the DHT,
    // and B, told by identify, puts C into its routing table.
    c.wait_serving_dht();
    b.wait_sees_dht_server(&c_id);
    assert!(
        !a.connected_to().contains(&c_id),
        "A must not know C before the lookup"
    );
    assert!(a.connected_to().contains(&b_id));

    let found = cli_json(&a.dir, &["dht", "find", &c_id]);
    assert_eq!(found["peer_id"], c_id.as_str());
    assert_eq!(found["source"], "dht");
    let addrs = common::strs(&found["addrs"]);
    assert!(
        addrs
            .iter()
            .any(|a| a.contains(&format!("/tcp/{c_tcp_port}"))),
        "C's TCP listen address is among {addrs:?}"
    );

    let connected = cli_json(&a.dir, &["connect", &c_id]);
    assert_eq!(connected["peer_id"], c_id.as_str());
    assert!(a.connected_to().contains(&c_id));
    let peers = cli_json(&a.dir, &["peers"]);
    let c_entry = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == c_id.as_str())
        .unwrap();
    assert_eq!(
        c_entry["agent_version"],
        format!("commucat/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c_entry["connections"][0]["relayed"], false);
}

/// The PeerId and the peer book survive a restart: the restarted node, given no bootstrap peer,
/// dials the peer it remembers.
#[test]
fn identity_and_peer_book_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let b_id = b.peer_id();
    let a_dir = tmp.path().join("a");

    let a = NodeProc::start(&a_dir, &args(&["--bootstrap", &b.tcp_addr()]));
    let a_id = a.peer_id();
    wait_for("A to remember B in its peer book", WAIT, || {
        (a.status()["peer_book_size"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(a.stop().success(), "a clean SIGTERM shutdown exits 0");

    // Stopped: the CLI says so in one line and exits 1; `id` still works from the data dir.
    let out = cli(&a_dir, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("no commucat node is running"), "{stderr}");
    assert_eq!(cli_json(&a_dir, &["id"])["peer_id"], a_id.as_str());

    let a = NodeProc::start(&a_dir, LOOPBACK);
    assert_eq!(a.peer_id(), a_id, "same identity after restart");
    assert!(a.status()["peer_book_size"].as_u64().unwrap() >= 1);
    wait_for("A to redial B from its peer book", WAIT, || {
        a.connected_to().contains(&b_id).then_some(())
    });
}

/// `GET /v1/events` streams what happens: a peer that connects shows up as `peer_connected` and,
/// once identified, as `peer_identified` with its agent.
#[tokio::test]
async fn event_stream_reports_a_connecting_peer() {
    use futures::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let (base, token) = b.control();
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();

    let a = NodeProc::start(
        &tmp.path().join("a"),
        &args(&["--bootstrap", &b.tcp_addr()]),
    );
    let a_id = a.peer_id();
    let mut seen = String::new();
    let mut wanted = vec!["peer_connected", "peer_identified"];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.is_empty() {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive in time")
            .expect("stream stays open")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        // SSE frames end with a blank line; each has `event: <type>` and `data: <json>`.
        while let Some(end) = seen.find("\n\n") {
            let frame: String = seen.drain(..end + 2).collect();
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim);
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(str::trim);
            if let (Some(event), Some(data)) = (event, data) {
                let json: Value = serde_json::from_str(data).unwrap();
                assert_eq!(json["type"], event, "the SSE event name is the JSON type");
                if json["peer_id"] == a_id.as_str() {
                    wanted.retain(|w| *w != event);
                    if event == "peer_identified" {
                        assert_eq!(
                            json["agent_version"],
                            format!("commucat/{}", env!("CARGO_PKG_VERSION"))
                        );
                    }
                }
            }
        }
    }
}

/// Two nodes on the same LAN, told about no one, find each other with mDNS and connect.
#[test]
fn mdns_peers_on_the_lan_connect_by_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let lan = &[
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--control-listen",
        "127.0.0.1:0",
    ];
    let mdns_on = &[("COMMUCAT_MDNS__ENABLED", "true")];
    let a = NodeProc::start_env(&tmp.path().join("a"), lan, mdns_on);
    let has_lan_interface = common::strs(&a.status()["listen_addrs"])
        .into_iter()
        .any(|addr| !addr.starts_with("/ip4/127."));
    if !has_lan_interface {
        let msg = "this machine has no non-loopback IPv4 interface for mDNS multicast";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED mdns_peers_on_the_lan_connect_by_themselves: {msg}");
        return;
    }
    let b = NodeProc::start_env(&tmp.path().join("b"), lan, mdns_on);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    wait_for("A and B to connect after mDNS discovery", WAIT, || {
        (a.connected_to().contains(&b_id) && b.connected_to().contains(&a_id)).then_some(())
    });
}

/// A node that loses its only peer redials it from the peer book (backing off) until it is back,
/// without any bootstrap peer configured.
#[test]
fn a_lost_peer_is_redialled_when_it_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b");
    let a_dir = tmp.path().join("a");
    let b = NodeProc::start(&b_dir, LOOPBACK);
    let b_id = b.peer_id();
    // B comes back on the same ports, so the address A remembers stays right.
    let mut b_args: Vec<String> = vec!["--control-listen".into(), "127.0.0.1:0".into()];
    for addr in b.status()["listen_addrs"].as_array().unwrap() {
        b_args.push("--listen".into());
        b_args.push(addr.as_str().unwrap().to_owned());
    }
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();

    let a = NodeProc::start(&a_dir, &args(&["--bootstrap", &b.tcp_addr()]));
    wait_for("A to remember B", WAIT, || {
        (a.status()["peer_book_size"].as_u64().unwrap() >= 1).then_some(())
    });
    assert!(a.stop().success());
    // Restarted without --bootstrap: B is only a remembered peer now.
    let a = NodeProc::start(&a_dir, LOOPBACK);
    wait_for("A to redial B at start", WAIT, || {
        a.connected_to().contains(&b_id).then_some(())
    });

    assert!(b.stop().success());
    wait_for("A to notice B is gone", WAIT, || {
        (!a.connected_to().contains(&b_id)).then_some(())
    });
    let _b = NodeProc::start(&b_dir, &b_args);
    wait_for("A to redial B once it is back", WAIT, || {
        a.connected_to().contains(&b_id).then_some(())
    });
}

/// Messages and files through the CLI as a user drives it: `inbox --follow` prints messages as they
/// arrive, `send-file --json` reports progress until the file is delivered, `outbox` shows delivered.
#[test]
fn messages_and_files_through_the_cli() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        sync::mpsc,
    };

    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let a = NodeProc::start(
        &tmp.path().join("a"),
        &args(&["--bootstrap", &b.tcp_addr()]),
    );
    let b_id = b.peer_id();

    let mut follow = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&b.dir)
        .args(["inbox", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for text in ["first", "second"] {
        let out = cli_json(&a.dir, &["send", &b_id, text]);
        assert_eq!(out["to"], b_id.as_str());
    }
    for want in ["first", "second"] {
        let line = rx
            .recv_timeout(WAIT)
            .expect("inbox --follow prints the message");
        let m: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(m["body"], want);
        assert_eq!(m["from"], a.peer_id().as_str());
    }
    follow.kill().unwrap();
    follow.wait().unwrap();

    let file = tmp.path().join("photo.jpg");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let out = cli(
        &a.dir,
        &["send-file", &b_id, file.to_str().unwrap(), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["state"], "complete");
    assert_eq!(last["bytes_confirmed"], content.len());
    assert_eq!(
        std::fs::read(b.dir.join("downloads/photo.jpg")).unwrap(),
        content
    );

    let outbox = cli_json(&a.dir, &["outbox"]);
    let states: Vec<&str> = outbox
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered", "delivered"]);
}

/// Names through the command line, on three processes: A claims `alice`; C writes to `@alice` and
/// A's inbox has the message; B's claim of `ALICE` is refused with the holder's id.
#[test]
fn a_name_claimed_with_the_cli_reaches_its_holder_and_a_contact_pins_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let boot = b.tcp_addr();
    let a = NodeProc::start(&tmp.path().join("a"), &args(&["--bootstrap", &boot]));
    let c = NodeProc::start(&tmp.path().join("c"), &args(&["--bootstrap", &boot]));
    let (a_id, b_id) = (a.peer_id(), b.peer_id());

    let claimed = cli_json(&a.dir, &["name", "claim", "alice"]);
    assert_eq!(claimed["handle"], "alice");
    let sent = wait_for("C to send to @alice", WAIT, || {
        let out = cli(&c.dir, &["send", "@alice", "hi alice", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    assert_eq!(sent["to"], a_id.as_str());
    common::wait_inbox(&a.dir, "hi alice");
    let resolved = cli_json(&c.dir, &["name", "resolve", "@Alice"]);
    assert_eq!(resolved["peer_id"], a_id.as_str());

    let refused = cli(&b.dir, &["name", "claim", "ALICE"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "B claimed a held name");
    assert!(
        stderr.contains("held by") && stderr.contains(&a_id),
        "the refusal names the holder: {stderr}"
    );

    // C keeps A as a contact by the name: its keys are pinned, and `send <label>` reaches A.
    let added = cli_json(&c.dir, &["contact", "add", "Friend", "@alice"]);
    assert_eq!(
        (&added["peer_id"], &added["trust"]),
        (&json!(a_id), &json!("unverified"))
    );
    cli_json(&c.dir, &["send", "Friend", "hi friend"]);
    common::wait_inbox(&a.dir, "hi friend");

    // The name changes hands: A gives it up and B claims it with its own keys.
    cli_ok(&a.dir, &["name", "release"]);
    wait_for("B to claim alice once A released it", WAIT, || {
        cli(&b.dir, &["name", "claim", "alice"])
            .status
            .success()
            .then_some(())
    });
    let refused = cli(&c.dir, &["send", "Friend", "are you still you?"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "C sent to a contact whose keys changed"
    );
    assert!(
        stderr.contains("not sending to contact Friend")
            && stderr.contains(&format!("@alice now belongs to another peer ({b_id})"))
            && stderr.contains("commucat contact verify Friend --confirm"),
        "the refusal says what changed and what to do: {stderr}"
    );
    let listed = cli_json(&c.dir, &["contact", "list"]);
    assert_eq!(listed[0]["trust"], "key_changed", "{listed}");
    let table = cli_ok(&c.dir, &["contact", "list"]);
    assert!(table.contains("KEY CHANGED"), "{table}");
    // The same message sent by peer id is refused too: the contact's peer is held, however named.
    assert!(!cli(&c.dir, &["send", &a_id, "by id"]).status.success());

    // Both sides see the same safety number: C for its contact's new keys, B for C.
    let at_c = cli_json(&c.dir, &["contact", "verify", "Friend"]);
    assert_eq!(at_c["safety_number"]["peer_id"], b_id.as_str());
    cli_json(&b.dir, &["contact", "add", "carol", &c.peer_id()]);
    let at_b = cli_json(&b.dir, &["contact", "verify", "carol"]);
    let number = at_c["safety_number"]["safety_number"].as_str().unwrap();
    assert_eq!(number, at_b["safety_number"]["safety_number"]);
    assert_eq!(number.len(), 71, "12 groups of 5 digits: {number}");
    let shown = cli_ok(&c.dir, &["contact", "verify", "Friend"]);
    assert!(
        shown.contains("CHANGED") && shown.contains(&number[..23]) && shown.contains('█'),
        "digits and a QR code: {shown}"
    );

    // Confirmed, the contact is B now, verified, and messages go through.
    let confirmed = cli_json(&c.dir, &["contact", "verify", "Friend", "--confirm"]);
    assert_eq!(confirmed["confirmed"]["trust"], "verified");
    assert_eq!(confirmed["confirmed"]["peer_id"], b_id.as_str());
    cli_json(&c.dir, &["send", "Friend", "hi new alice"]);
    common::wait_inbox(&b.dir, "hi new alice");
}

/// What a forger of Ed25519 signatures (a quantum adversary, say) would show: A's PeerId with
/// another ML-DSA-65 key. C pinned A's keys; after A comes back under the same PeerId with a new
/// ML-DSA-65 key, its presence record (or the next session) gives it away, C refuses to send and
/// says why, and nothing reaches the new keys until the person confirms.
#[test]
fn a_contact_whose_ml_dsa_key_changes_under_the_same_peer_id_is_held() {
    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let boot = b.tcp_addr();
    let a_dir = tmp.path().join("a");
    let a = NodeProc::start(&a_dir, &args(&["--bootstrap", &boot]));
    let c = NodeProc::start(&tmp.path().join("c"), &args(&["--bootstrap", &boot]));
    let a_id = a.peer_id();

    // Added by peer id: the keys come from A's presence record, found through B.
    wait_for("C to add A from its presence record", WAIT, || {
        cli(&c.dir, &["contact", "add", "Ann", &a_id])
            .status
            .success()
            .then_some(())
    });
    cli_json(&c.dir, &["send", "Ann", "before"]);
    common::wait_inbox(&a.dir, "before");

    // A comes back with the same Ed25519 key (same PeerId) and another ML-DSA-65 key.
    let ports = a.same_ports();
    a.stop();
    let key = a_dir.join("identity.key");
    let text = std::fs::read_to_string(&key).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ml_dsa_65_seed"))
        .unwrap();
    let forged = format!("ml_dsa_65_seed = \"{}\"", hex::encode([7u8; 32]));
    std::fs::write(&key, text.replace(line, &forged)).unwrap();
    let mut again: Vec<&str> = ports.iter().map(String::as_str).collect();
    again.extend(["--bootstrap", &boot]);
    let a = NodeProc::start(&a_dir, &again);
    assert_eq!(a.peer_id(), a_id, "the same PeerId");

    let refusal = wait_for("C to refuse Ann", WAIT, || {
        let out = cli(&c.dir, &["send", "Ann", "are you still you?"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success()).then_some(err)
    });
    assert!(
        refusal.contains(&format!(
            "its peer ({a_id}) now shows another ML-DSA-65 key"
        )),
        "{refusal}"
    );
    assert_eq!(
        cli_json(&c.dir, &["contact", "list"])[0]["trust"],
        "key_changed"
    );
    let inbox = cli_json(&a.dir, &["inbox"]);
    assert!(
        inbox
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["body"] != "are you still you?"),
        "nothing reached the new keys: {inbox}"
    );

    // Confirmed, the new keys are pinned and messages flow again.
    cli_json(&c.dir, &["contact", "verify", "Ann", "--confirm"]);
    cli_json(&c.dir, &["send", "Ann", "after confirming"]);
    common::wait_inbox(&a.dir, "after confirming");
}

/// Groups from the command line: A makes one, adds B by peer id and C by name, sends to it; B and C
/// see the message under the group, `group members` agrees everywhere, and B leaves.
#[test]
fn a_group_made_with_the_cli_reaches_its_members() {
    let tmp = tempfile::tempdir().unwrap();
    let b = NodeProc::start(&tmp.path().join("b"), &args(&["--role", "bootstrap"]));
    let boot = b.tcp_addr();
    let a = NodeProc::start(&tmp.path().join("a"), &args(&["--bootstrap", &boot]));
    let c = NodeProc::start(&tmp.path().join("c"), &args(&["--bootstrap", &boot]));
    let made = cli_json(&a.dir, &["group", "create", "book club"]);
    let id = made["id"].as_str().unwrap().to_owned();
    cli_json(&a.dir, &["group", "add", "book club", &b.peer_id()]);
    cli_json(&c.dir, &["name", "claim", "carol"]);
    wait_for("A to add C by its name", WAIT, || {
        cli(&a.dir, &["group", "add", &id, "@carol", "--json"])
            .status
            .success()
            .then_some(())
    });
    let sent = cli_json(&a.dir, &["group", "send", "book club", "chapter 3 tonight"]);
    assert_eq!(sent["copies"].as_array().unwrap().len(), 2, "{sent}");
    for member in [&b, &c] {
        let got = wait_for("the member to get the group message", WAIT, || {
            let inbox = cli_json(&member.dir, &["inbox", "--group", &id]);
            inbox.as_array().unwrap().first().cloned()
        });
        assert_eq!(got["body"], "chapter 3 tonight");
        assert_eq!(got["group"]["group"], id.as_str());
        let text = cli_ok(&member.dir, &["inbox"]);
        assert!(
            text.contains(&format!("in group {id} (#1): chapter 3 tonight")),
            "{text}"
        );
        let info = cli_json(&member.dir, &["group", "members", &id]);
        assert_eq!(info["members"].as_array().unwrap().len(), 3, "{info}");
    }
    // A file to the group: once to each other member, complete at both.
    let file = tmp.path().join("chapter-3.txt");
    std::fs::write(&file, "It was a dark and stormy night.\n".repeat(1000)).unwrap();
    let queued = cli_json(
        &a.dir,
        &["group", "send-file", "book club", file.to_str().unwrap()],
    );
    assert_eq!(queued.as_array().unwrap().len(), 2, "{queued}");
    for member in [&b, &c] {
        wait_for("the member to have the group's file", WAIT, || {
            let t = cli_json(&member.dir, &["transfers"]);
            let done = t["incoming"]
                .as_array()?
                .iter()
                .find(|i| i["state"] == "complete")?
                .clone();
            Some(done)
        });
    }
    let left = cli_json(&b.dir, &["group", "leave", "book club"]);
    assert_eq!(left["members"].as_array().unwrap().len(), 2);
    wait_for("A to see B leave", WAIT, || {
        let info = cli_json(&a.dir, &["group", "members", &id]);
        (info["members"].as_array().unwrap().len() == 2).then_some(())
    });
    let table = cli_ok(&a.dir, &["group", "list"]);
    assert!(
        table.contains("book club") && table.contains(&id),
        "{table}"
    );
}
