//! A real browser reaches the libp2p network through a node (`protocols/signaling-v1.md`): Debian's
//! Chromium, headless, driven by playwright-core (pinned in `tests/browser/`), loads the light
//! client that assist mode serves at `/client/`, gets `/api/p2p/assist`, signals over
//! `/api/v1/ws` and opens WebRTC DataChannels to the node's gateway and to another browser.
//!
//! Needs `chromium`, Node.js and npm: without them the tests print SKIPPED and why, except under
//! `CI=true`, where a missing one is a failure (`.ci/run` installs them).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{LOOPBACK, NodeProc, WAIT, cli, cli_json, wait_for};
use serde_json::Value;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// `Err(reason)` when the browser tooling cannot be used here.
fn prepare() -> Result<(), String> {
    if !Path::new(&chromium()).exists() {
        return Err(format!(
            "{} is not installed (Debian: apt-get install chromium)",
            chromium()
        ));
    }
    // Both tests may get here at once; npm ci replaces node_modules, so one at a time.
    static NPM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = NPM.lock().unwrap_or_else(|e| e.into_inner());
    if js_dir().join("node_modules/playwright-core").exists() {
        return Ok(());
    }
    common::npm_ci(&js_dir())
}

fn skip(test: &str) -> bool {
    match prepare() {
        Ok(()) => false,
        Err(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: {reason}; CI must run this test"
            );
            eprintln!("SKIPPED {test}: {reason}");
            true
        }
    }
}

fn start_assist(dir: &Path) -> NodeProc {
    common::start_assist(dir, &[], &[])
}

/// A node in assist mode (the gateway), and a plain node B bootstrapped from it.
fn gateway_and_peer(dir: &Path) -> (NodeProc, NodeProc) {
    let gw = start_assist(&dir.join("gw"));
    let mut b_args: Vec<&str> = LOOPBACK.to_vec();
    let gw_addr = gw.tcp_addr();
    b_args.extend(["--bootstrap", &gw_addr]);
    let b = NodeProc::start(&dir.join("b"), &b_args);
    (gw, b)
}

fn base_url(node: &NodeProc) -> String {
    common::assist_url(node)
}

/// `commucat token issue`: (token, client id).
fn issue_token(node: &NodeProc) -> (String, String) {
    let v = cli_json(&node.dir, &["token", "issue", "--ttl", "3600"]);
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// The browser script, running; its JSON events arrive on the channel.
struct Script {
    child: std::process::Child,
    events: mpsc::Receiver<Value>,
    stderr: std::thread::JoinHandle<String>,
}

/// Where the browser scripts save screenshots (`target/tmp/screenshots`).
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_script(args: &[&str]) -> Script {
    let mut child = Command::new("node")
        .arg("light-client.mjs")
        .args(args)
        .env("CHROMIUM", chromium())
        .env("SCREENSHOTS", screenshots())
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let (tx, events) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    Script {
        child,
        events,
        stderr,
    }
}

impl Script {
    /// Waits for event `name`; fails with the script's output if it ends first.
    fn expect(&mut self, name: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self.events.recv_timeout(Duration::from_millis(200)) {
                Ok(v) if v["event"] == name => return v,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {
                    continue;
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().unwrap();
                    let stderr =
                        std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
                            .join()
                            .unwrap();
                    panic!("no `{name}` from the browser script ({status}):\n{stderr}");
                }
            }
        }
    }

    /// Tells a script that waits on stdin to go on.
    fn go_ahead(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.join().unwrap();
        assert!(
            status.success(),
            "the browser script failed ({status}):\n{stderr}"
        );
    }
}

#[test]
fn a_browser_messages_a_libp2p_peer_through_the_gateway_and_gets_the_reply() {
    if skip("browser gateway round trip") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (gw, b) = gateway_and_peer(tmp.path());
    let (gw_id, b_id) = (gw.peer_id(), b.peer_id());
    let (token, client) = issue_token(&gw);

    let mut script = run_script(&[
        "node",
        &base_url(&gw),
        &token,
        &b_id,
        "hello from a browser",
        "hello back from B",
    ]);
    let open = script.expect("node-open");
    assert_eq!(
        open["me"],
        client.as_str(),
        "the page's id is the token's client id"
    );
    script.expect("queued");

    // B's inbox has it once, from the gateway node, naming the light client.
    let msg = wait_for("B to receive the browser's message", WAIT, || {
        let inbox = cli_json(&b.dir, &["inbox"]);
        inbox
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["body"] == "hello from a browser")
            .cloned()
    });
    assert_eq!(msg["from"], gw_id.as_str());
    assert_eq!(msg["from_client"], client.as_str());
    let text = String::from_utf8(cli(&b.dir, &["inbox"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "client {client} via {gw_id}: hello from a browser"
        )),
        "{text}"
    );
    script.expect("delivered");

    // B answers that light client; the page shows the reply.
    let out = cli(
        &b.dir,
        &["send", &gw_id, "--client", &client, "hello back from B"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = script.expect("reply");
    assert!(
        reply["text"]
            .as_str()
            .unwrap()
            .contains(&format!("{b_id}: hello back from B")),
        "{reply}"
    );
    script.finish();

    // The gateway's inbox holds the reply for the client (what a later `sync` replays).
    let inbox = cli_json(&gw.dir, &["inbox"]);
    let held = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"] == "hello back from B")
        .expect("the reply is in the gateway's inbox");
    assert_eq!(held["to_client"], client.as_str());
    let b_inbox = cli_json(&b.dir, &["inbox"]);
    assert_eq!(
        b_inbox
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["body"] == "hello from a browser")
            .count(),
        1,
        "exactly once"
    );
}

#[test]
fn two_browsers_in_a_room_talk_over_a_direct_data_channel() {
    if skip("browser to browser") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gw = start_assist(&tmp.path().join("gw"));
    let (ta, ida) = issue_token(&gw);
    let (tb, idb) = issue_token(&gw);
    let mut script = run_script(&["p2p", &base_url(&gw), &ta, &tb, "lobby", "hi, directly"]);
    let open = script.expect("direct-open");
    assert_eq!(
        (open["a"].as_str(), open["b"].as_str()),
        (Some(ida.as_str()), Some(idb.as_str()))
    );
    let got = script.expect("direct-message");
    assert_eq!(got["from"], ida.as_str());
    assert!(
        got["text"].as_str().unwrap().contains("hi, directly"),
        "{got}"
    );
    script.finish();
}

#[test]
fn the_page_reconnects_and_rejoins_after_the_node_restarts() {
    if skip("browser reconnect") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gw");
    let gw = start_assist(&dir);
    let (token, client) = issue_token(&gw);
    let http = std::fs::read_to_string(dir.join("assist.addr")).unwrap();
    let stun = std::fs::read_to_string(dir.join("stun.addr")).unwrap();
    let base = base_url(&gw);
    let mut script = run_script(&["reconnect", &base, &token, "lobby"]);
    let ready = script.expect("ready");
    assert_eq!(ready["me"], client.as_str());

    // The node goes away and comes back on the same addresses (same identity, same tokens).
    assert!(gw.stop().success());
    script.expect("lost");
    let mut args: Vec<&str> = LOOPBACK.to_vec();
    args.extend_from_slice(&[
        "--assist",
        "--assist-listen",
        http.trim(),
        "--stun-listen",
        stun.trim(),
        "--bootstrap",
        common::NO_BOOTSTRAP,
    ]);
    let gw = NodeProc::start(&dir, &args);
    let back = script.expect("back");
    assert!(
        back["log"].as_str().unwrap().contains("reconnecting in"),
        "{back}"
    );

    // The page re-joined its room: a client joining it now finds the page there.
    let (other, _) = issue_token(&gw);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peers = rt.block_on(async {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://{}/api/v1/ws?token={other}", http.trim());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text(r#"{"type":"join","room":"lobby"}"#))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("peer-list in time")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "peer-list" {
                    return v["payload"]["peers"].clone();
                }
            }
        }
    });
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == client.as_str()),
        "{peers}"
    );
    script.go_ahead();
    script.finish();
}

/// POSTs a claim of `code` to the assist API; the status and body.
fn claim(base: &str, code: &str) -> (u16, Value) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{base}/api/pairing/claim"))
            .json(&serde_json::json!({ "code": code }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn a_browser_pairs_by_code_talks_through_the_node_and_is_cut_off_when_unpaired() {
    if skip("browser pairing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (gw, b) = gateway_and_peer(tmp.path());
    let (gw_id, b_id) = (gw.peer_id(), b.peer_id());
    let base = base_url(&gw);

    // The owner runs `commucat pair`: a code, the page's address with it, and a QR code.
    let shown = common::cli_ok(&gw.dir, &["pair"]);
    assert!(
        shown.contains("Pairing code: ") && shown.contains("/client/#pair=") && shown.contains('█'),
        "{shown}"
    );
    let invitation = cli_json(&gw.dir, &["pair"]);
    let code = invitation["code"].as_str().unwrap();
    assert_eq!(invitation["url"], format!("{base}/client/#pair={code}"));

    let mut script = run_script(&[
        "pair",
        &base,
        code,
        &b_id,
        "hello from a paired browser",
        "hello back, paired browser",
    ]);
    let paired = script.expect("paired");
    let device = paired["me"].as_str().unwrap().to_owned();
    let stored = &paired["stored"];
    assert_eq!(stored["device_id"], device.as_str(), "{paired}");
    assert_eq!(stored["node"], gw_id.as_str());
    assert!(
        !paired["url"].as_str().unwrap().contains(code),
        "the code leaves the address bar: {paired}"
    );
    // The certificate is the device CA's, which server-info publishes.
    let info: Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        reqwest::get(format!("{base}/api/server-info"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(info["device_ca_public"], stored["device_ca_public"]);
    let ca: [u8; 32] = hex::decode(info["device_ca_public"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ca = libp2p::identity::ed25519::PublicKey::try_from_bytes(&ca).unwrap();
    let cert: commucat::assist::pairing::Certificate =
        serde_json::from_value(stored["device_certificate"].clone()).unwrap();
    assert!(cert.verify(&ca), "the device CA signed the certificate");
    assert_eq!(cert.device_id.to_string(), device);

    // B gets the page's message from the gateway node, naming the device; B's answer shows up.
    common::wait_inbox(&b.dir, "hello from a paired browser");
    let out = cli(
        &b.dir,
        &[
            "send",
            &gw_id,
            "--client",
            &device,
            "hello back, paired browser",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    script.expect("reply");
    let restored = script.expect("restored");
    assert_eq!(
        restored["me"],
        device.as_str(),
        "signed in again from storage"
    );

    // A code pairs one device: the second claim is refused.
    let (status, problem) = claim(&base, code);
    assert_eq!(status, 401, "{problem}");
    let devices = cli_json(&gw.dir, &["devices"]);
    assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
    assert_eq!(devices[0]["id"], device.as_str());

    // Unpairing closes the page's signaling session and node channel within a second.
    common::cli_ok(&gw.dir, &["devices", "revoke", &device]);
    script.go_ahead();
    let revoked = script.expect("revoked");
    assert!(
        revoked["stored"].is_null(),
        "the page forgot the credentials: {revoked}"
    );
    assert!(
        revoked["log"].as_str().unwrap().contains("unpaired"),
        "the page says why: {revoked}"
    );
    script.finish();
    assert_eq!(cli_json(&gw.dir, &["devices"]), serde_json::json!([]));
    for shot in ["paired.png", "unpaired.png"] {
        let path = screenshots().join(shot);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{} was saved",
            path.display()
        );
    }
}
