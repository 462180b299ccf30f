//! Assist mode as a light client sees it (`protocols/assist.md`): the real binary with
//! `run --assist`, real HTTP, tokens issued with the CLI, responses checked against the schemas of
//! `protocols/assist-openapi.yaml`; the STUN responder queried by coturn's `turnutils_stunclient`;
//! TURN credentials used on a real coturn (`turnserver`, `turnutils_uclient`).
//!
//! coturn is needed for the STUN and TURN tests: without it they print SKIPPED and why, except
//! under `CI=true`, where a missing coturn is a failure.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::LazyLock,
    time::Duration,
};

use common::{LOOPBACK, NodeProc, WAIT, cli, strs, wait_for};
use serde_json::{Value, json};

/// The OpenAPI document as JSON.
static SPEC: LazyLock<Value> = LazyLock::new(|| {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols/assist-openapi.yaml"),
    )
    .unwrap();
    serde_yaml_ng::from_str(&text).expect("the OpenAPI document is YAML")
});

/// Checks `instance` against `#/components/schemas/<name>` of the OpenAPI document.
fn assert_schema(name: &str, instance: &Value) {
    let mut schema = SPEC.clone();
    let root = schema.as_object_mut().unwrap();
    root.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    root.insert("$ref".into(), json!(format!("#/components/schemas/{name}")));
    let validator = jsonschema::validator_for(&schema).expect("the schemas compile");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} does not match the spec: {errors:#?}\n{instance:#}"
    );
}

fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
    common::start_assist(dir, extra, env)
}

fn base_url(node: &NodeProc) -> String {
    common::assist_url(node)
}

fn stun_addr(node: &NodeProc) -> SocketAddr {
    std::fs::read_to_string(node.dir.join("stun.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `commucat token issue`: the token is alone on the last line.
fn issue_token(node: &NodeProc, ttl: &str) -> String {
    let out = cli(&node.dir, &["token", "issue", "--ttl", ttl]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "{stdout}");
    token
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn get_json(url: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    split(resp).await
}

async fn split(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, ct, value)
}

fn is_hex(s: &Value, bytes: usize) -> bool {
    s.as_str()
        .is_some_and(|s| s.len() == bytes * 2 && hex::decode(s).is_ok())
}

fn port_of(addrs: &[&str], proto: &str) -> u16 {
    let addr = addrs.iter().find(|a| a.contains(proto)).unwrap();
    let parts: Vec<&str> = addr.split('/').collect();
    let i = parts.iter().position(|p| *p == proto).unwrap();
    parts[i + 1].parse().unwrap()
}

/// The client flow of the assist guide: server-info, GET assist, POST assist with custom paths
/// and FEC settings; every field present and well-formed; nothing repeats between calls.
#[tokio::test(flavor = "multi_thread")]
async fn light_client_flow_over_real_http() {
    let tmp = tempfile::tempdir().unwrap();
    // The paths below are on loopback, which only an operator's setting lets a client probe.
    let node = start(
        &tmp.path().join("a"),
        &[],
        &[("COMMUCAT_ASSIST__PROBE_PRIVATE_TARGETS", "true")],
    );
    let base = base_url(&node);
    let status = node.status();

    let (code, ct, info) = get_json(&format!("{base}/api/server-info"), None).await;
    assert_eq!(code, 200, "{info}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_schema("ServerInfo", &info);
    assert_eq!(info["peer_id"], status["peer_id"]);
    assert_eq!(info["noise_public"], info["noise_keys"][0]["public"]);
    assert_eq!(info["noise_keys"][0]["version"], 1);
    assert_eq!(info["post_quantum"]["enabled"], true);
    assert!(strs(&info["protocols"]).contains(&"/commucat/data/1.0.0"));
    assert!(
        strs(&info["multiaddrs"])
            .iter()
            .any(|a| a.contains("/tcp/"))
    );

    let token = issue_token(&node, "600");
    let (code, _, first) = get_json(&format!("{base}/api/p2p/assist"), Some(&token)).await;
    assert_eq!(code, 200, "{first}");
    assert_schema("AssistResponse", &first);
    // Defaults: the node's own endpoints, FEC 1152 / 0.35.
    assert_eq!(first["multipath"]["fec_mtu"], 1152);
    assert_eq!(first["multipath"]["fec_overhead"], 0.35);
    assert_eq!(
        first["pq"]["kem_public_hex"],
        info["post_quantum"]["kem_public_hex"]
    );
    assert_eq!(
        first["pq"]["signed_prekey_public_hex"],
        info["noise_public"]
    );
    // The device key is the X25519 key of the seed.
    let seed: [u8; 32] = hex::decode(first["noise"]["device_seed_hex"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed));
    assert_eq!(
        first["noise"]["static_public_hex"],
        hex::encode(public.as_bytes())
    );
    // The prekey is signed by the identity whose peer id server-info gave.
    let identity = libp2p::identity::ed25519::PublicKey::try_from_bytes(
        &hex::decode(first["pq"]["identity_public_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        libp2p::identity::PublicKey::from(identity.clone())
            .to_peer_id()
            .to_string(),
        info["peer_id"]
    );
    let prekey = hex::decode(first["pq"]["signed_prekey_public_hex"].as_str().unwrap()).unwrap();
    assert!(identity.verify(
        &[&b"commucat/prekey/v1"[..], &prekey].concat(),
        &hex::decode(first["pq"]["signed_prekey_signature_hex"].as_str().unwrap()).unwrap()
    ));
    assert!(is_hex(&first["pq"]["signature_public_hex"], 1952));
    // The host candidate is the STUN responder.
    let cand = &first["ice"]["lite_candidates"][0];
    assert_eq!(cand["port"], stun_addr(&node).port());
    assert_eq!(cand["priority"], 2_130_706_431u32);

    // POST with custom paths: the TCP port offers TCP only, the QUIC port QUIC only.
    let listen = strs(&status["listen_addrs"]);
    let (tcp, quic) = (port_of(&listen, "tcp"), port_of(&listen, "udp"));
    let body = json!({
        "peer_hint": "a-peer",
        "prefer_reality": true,
        "min_paths": 2,
        "paths": [
            {"address": "127.0.0.1", "port": quic, "id": "over-quic", "priority": 1},
            {"address": "127.0.0.1", "port": tcp, "id": "over-tcp", "priority": 0,
             "server_name": "localhost"},
        ],
        "fec": {"mtu": 1200, "repair_overhead": 0.4},
    });
    let resp = http()
        .post(format!("{base}/api/p2p/assist"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (code, _, second) = split(resp).await;
    assert_eq!(code, 200, "{second}");
    assert_schema("AssistResponse", &second);
    let offered: Vec<(String, String)> = second["transports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path_id"].as_str().unwrap().to_owned(),
                t["transport"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        offered.contains(&("over-tcp".into(), "Tcp".into())),
        "{offered:?}"
    );
    assert!(
        offered.contains(&("over-quic".into(), "Quic".into())),
        "{offered:?}"
    );
    assert!(
        !offered.contains(&("over-tcp".into(), "Quic".into())),
        "{offered:?}"
    );
    let mp = &second["multipath"];
    assert_eq!(mp["fec_mtu"], 1200);
    assert_eq!(mp["fec_overhead"], 0.4);
    assert_eq!(mp["primary_path"], "over-tcp", "priority 0 comes first");
    // 16 KiB in symbols of 1200 - 4 rounded down to 8: 1192 → 14 source, 5 repair (40 %).
    let seg = &mp["sample_segments"];
    assert_eq!(
        seg["over-tcp"]["repair"], 0,
        "no repair on the primary path"
    );
    assert_eq!(seg["over-quic"]["repair"], 5);
    assert_eq!(
        seg["over-tcp"]["total"].as_u64().unwrap() + seg["over-quic"]["total"].as_u64().unwrap(),
        19
    );
    assert!(
        second["obfuscation"]
            .get("reality_fingerprint_hex")
            .is_none()
    );

    for field in ["device_seed_hex", "static_public_hex"] {
        assert_ne!(first["noise"][field], second["noise"][field], "{field}");
    }
    for field in ["username_fragment", "password"] {
        assert_ne!(first["ice"][field], second["ice"][field], "{field}");
    }
    node.stop();
}

/// 401, 400 for each validation rule, 413, 415 and 429: RFC 7807 documents with the right status.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_problem_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(
        &tmp.path().join("a"),
        &[],
        &[
            ("COMMUCAT_ASSIST__PROBE_TIMEOUT_MS", "500"),
            ("COMMUCAT_ASSIST__RATE_BURST", "1000"),
            ("COMMUCAT_ASSIST__PROBE_PRIVATE_TARGETS", "true"),
        ],
    );
    let base = base_url(&node);
    let url = format!("{base}/api/p2p/assist");
    let token = issue_token(&node, "600");
    let check = |(code, ct, body): (u16, String, Value), want: u16, detail: &str| {
        assert_eq!(code, want, "{body}");
        assert_eq!(ct, "application/problem+json", "{body}");
        assert_schema("Problem", &body);
        assert_eq!(body["status"], want);
        let d = body["detail"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "`{d}` lacks `{detail}`");
    };

    // 401: no token, a wrong one, a revoked one.
    check(get_json(&url, None).await, 401, "Bearer");
    check(get_json(&url, Some("nope")).await, 401, "unknown");
    let revoked = issue_token(&node, "600");
    assert!(
        cli(&node.dir, &["token", "revoke", &revoked])
            .status
            .success()
    );
    check(get_json(&url, Some(&revoked)).await, 401, "revoked");

    let post = |body: String, ct: &'static str| {
        let req = http()
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", ct)
            .body(body);
        async move { split(req.send().await.unwrap()).await }
    };
    // 400: one case per rule; the detail names the field.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let many: Vec<Value> = (0..9)
        .map(|i| json!({"address": format!("h{i}")}))
        .collect();
    for (body, detail) in [
        ("{\"min_paths\":".to_string(), "EOF"),
        (r#"{"min_paths":"two"}"#.into(), "min_paths"),
        (r#"{"min_paths":0}"#.into(), "min_paths"),
        (r#"{"min_paths":99}"#.into(), "min_paths"),
        (r#"{"fec":{"mtu":100}}"#.into(), "fec.mtu"),
        (
            r#"{"fec":{"repair_overhead":2.5}}"#.into(),
            "fec.repair_overhead",
        ),
        (r#"{"paths":[{"port":443}]}"#.into(), "paths[0].address"),
        (json!({"paths": many}).to_string(), "paths: at most 8"),
        (
            r#"{"paths":[{"address":"a","port":70000}]}"#.into(),
            "paths[0].port",
        ),
        (r#"{"unknown_field":1}"#.into(), "unknown_field"),
        (
            json!({"paths": [{"address": "127.0.0.1", "port": dead_port}]}).to_string(),
            "no usable path",
        ),
    ] {
        check(post(body, "application/json").await, 400, detail);
    }
    // A dead port is "unusable", without the OS error that would tell closed from filtered.
    let (_, _, body) = post(
        json!({"paths": [{"address": "127.0.0.1", "port": dead_port, "id": "dead"}]}).to_string(),
        "application/json",
    )
    .await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert_eq!(detail, "no usable path: `dead` is unusable", "{body}");
    // 413 and 415.
    let big = format!(r#"{{"peer_hint":"{}"}}"#, "x".repeat(32 * 1024));
    check(post(big, "application/json").await, 413, "");
    check(post("{}".into(), "text/plain").await, 415, "Content-Type");
    // Unknown endpoints are problems too.
    check(
        get_json(&format!("{base}/api/nothing"), None).await,
        404,
        "no such",
    );
    node.stop();

    // 429: a node allowing 5 requests per minute per IP address.
    let node = start(
        &tmp.path().join("b"),
        &[],
        &[
            ("COMMUCAT_ASSIST__RATE_BURST", "5"),
            ("COMMUCAT_ASSIST__RATE_PENALTY_SECS", "120"),
        ],
    );
    let info = format!("{}/api/server-info", base_url(&node));
    for _ in 0..5 {
        assert_eq!(get_json(&info, None).await.0, 200);
    }
    let resp = http().get(&info).send().await.unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, ct, body) = split(resp).await;
    check((code, ct, body.clone()), 429, "retry");
    assert_eq!(body["retry_after_seconds"], retry_after);
    assert!((100..=120).contains(&retry_after), "{retry_after}");
    node.stop();
}

/// `/metrics` moves after a data-protocol session and after assist requests.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_sessions_and_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), &[], &[]);
    let metrics_url = format!("{}/metrics", base_url(&a));
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = http()
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(before.contains("libp2p_swarm"), "libp2p metrics are there");
    assert_eq!(
        metric(&before, "commucat_data_handshakes_post_quantum_total"),
        0.0
    );

    // A session: B sends A a message.
    let b = NodeProc::start(
        &tmp.path().join("b"),
        &[LOOPBACK, &["--bootstrap", &a.tcp_addr()]].concat(),
    );
    let a_id = a.peer_id();
    let out = cli(&b.dir, &["send", &a_id, "hello assist"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the message to arrive", WAIT, || {
        let inbox = common::cli_json(&a.dir, &["inbox"]);
        (inbox.as_array().unwrap().len() == 1).then_some(())
    });
    let token = issue_token(&a, "60");
    let assist_url = format!("{}/api/p2p/assist", base_url(&a));
    assert_eq!(get_json(&assist_url, Some(&token)).await.0, 200);
    assert_eq!(get_json(&assist_url, None).await.0, 401);
    let (_, _, assist) = get_json(&assist_url, Some(&token)).await;
    assert!(assist["security"]["pq_handshakes"].as_u64().unwrap() >= 1);
    assert!(assist["security"]["active_connections"].as_u64().unwrap() >= 1);

    let after = http()
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&after, "commucat_data_handshakes_post_quantum_total") >= 1.0,
        "{after}"
    );
    assert!(metric(&after, "commucat_data_handshakes_noise_total") >= 1.0);
    // What B's identify told A, as libp2p-metrics counts it.
    assert!(metric(&after, "commucat_libp2p_identify_received_total") >= 1.0);
    for gauge in [
        "commucat_libp2p_identify_remote_protocols{protocol=\"/ipfs/ping/1.0.0\"}",
        "commucat_libp2p_identify_remote_listen_addresses{listen_address=\"/ip4/tcp",
        "commucat_libp2p_identify_local_observed_addresses{observed_address=\"/ip4/tcp",
    ] {
        assert!(metric(&after, gauge) >= 1.0, "{gauge} in {after}");
    }
    assert!(
        metric(
            &after,
            "commucat_assist_requests_total{endpoint=\"p2p_assist\",status=\"200\"}"
        ) >= 2.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "commucat_assist_requests_total{endpoint=\"p2p_assist\",status=\"401\"}"
        ) >= 1.0
    );
    let health = http()
        .get(format!("{}/healthz", base_url(&a)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    b.stop();
    a.stop();
}

/// The Noise static key rotates on schedule; the replaced one is listed until it expires.
#[tokio::test(flavor = "multi_thread")]
async fn noise_keys_rotate_on_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(
        &tmp.path().join("a"),
        &[],
        &[
            ("COMMUCAT_DATA__KEY_ROTATION_SECS", "3"),
            ("COMMUCAT_DATA__KEY_GRACE_SECS", "4"),
            ("COMMUCAT_ASSIST__RATE_BURST", "10000"),
        ],
    );
    let url = format!("{}/api/server-info", base_url(&node));
    let (_, _, first) = get_json(&url, None).await;
    let v1 = first["noise_keys"][0]["public"].clone();
    let rotated = wait_for_async(|| async {
        let (_, _, info) = get_json(&url, None).await;
        (info["noise_keys"][0]["version"] == 2).then_some(info)
    })
    .await;
    assert_schema("ServerInfo", &rotated);
    assert_ne!(rotated["noise_public"], v1);
    assert_eq!(
        rotated["noise_keys"][1]["public"], v1,
        "the old key is still accepted"
    );
    // After the grace period only newer keys are listed.
    wait_for_async(|| async {
        let (_, _, info) = get_json(&url, None).await;
        let keys = info["noise_keys"].as_array().unwrap();
        keys.iter().all(|k| k["public"] != v1).then_some(())
    })
    .await;
    node.stop();
}

async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether coturn's tools are installed; `false` means the caller prints SKIPPED (or, under
/// `CI=true`, the test fails).
fn have_coturn(test: &str) -> bool {
    let found = ["turnserver", "turnutils_uclient", "turnutils_stunclient"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: coturn is not installed (apt-get install coturn); CI must run this test"
        );
        eprintln!("SKIPPED {test}: coturn is not installed (apt-get install coturn)");
    }
    found
}

/// A standard STUN client gets its own address back; an ICE check with a wrong password gets 401.
#[tokio::test(flavor = "multi_thread")]
async fn stun_clients_get_their_own_address() {
    if !have_coturn("stun_clients_get_their_own_address") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("a"), &[], &[]);
    let stun = stun_addr(&node);
    let out = Command::new("turnutils_stunclient")
        .args(["-p", &stun.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
    // The port reported is the client's own ephemeral port, not the responder's.
    assert!(!text.contains(&format!("addr: {stun}")), "{text}");

    // ICE connectivity checks with the credentials the assist endpoint issued.
    let token = issue_token(&node, "60");
    let (_, _, assist) =
        get_json(&format!("{}/api/p2p/assist", base_url(&node)), Some(&token)).await;
    let ufrag = assist["ice"]["username_fragment"].as_str().unwrap();
    let password = assist["ice"]["password"].as_str().unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = socket.local_addr().unwrap();
    for (pw, want_ok) in [(password, true), ("wrong-password", false)] {
        use stun_rs::{
            HMACKey, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder,
            StunMessageBuilder, TransactionId,
            attributes::stun::{
                ErrorCode, Fingerprint, MessageIntegrity, UserName, XorMappedAddress,
            },
            methods::BINDING,
        };
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(TransactionId::default())
            .with_attribute(UserName::new(format!("{ufrag}:browser1")).unwrap())
            .with_attribute(MessageIntegrity::new(HMACKey::new_short_term(pw).unwrap()))
            .with_attribute(Fingerprint::default())
            .build();
        let mut buf = [0u8; 512];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .unwrap();
        socket.send_to(&buf[..n], stun).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .expect("a STUN answer")
            .unwrap();
        let (resp, _) = MessageDecoderBuilder::default()
            .build()
            .decode(&buf[..n])
            .unwrap();
        if want_ok {
            assert_eq!(resp.class(), MessageClass::SuccessResponse);
            let xor = resp
                .get::<XorMappedAddress>()
                .unwrap()
                .as_xor_mapped_address()
                .unwrap();
            assert_eq!(*xor.socket_address(), me);
            assert!(resp.get::<MessageIntegrity>().is_some());
        } else {
            assert_eq!(resp.class(), MessageClass::ErrorResponse);
            let code = resp.get::<ErrorCode>().unwrap().as_error_code().unwrap();
            assert_eq!(code.error_code().error_code(), 401);
        }
    }
    node.stop();
}

/// coturn with `use-auth-secret` allocates for the credentials of an assist response and refuses
/// a wrong or expired one.
#[tokio::test(flavor = "multi_thread")]
async fn turn_credentials_allocate_on_coturn() {
    if !have_coturn("turn_credentials_allocate_on_coturn") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let secret = "a shared secret for this test";
    let turn_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut turnserver = Command::new("turnserver")
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &turn_port.to_string(),
            "--use-auth-secret",
            "--static-auth-secret",
            secret,
            "--realm",
            "commucat",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--min-port",
            "49300",
            "--max-port",
            "49400",
            "--log-file",
            "stdout",
            "--simple-log",
        ])
        .stdout(std::fs::File::create(tmp.path().join("turnserver.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnserver");
    let config = tmp.path().join("assist.toml");
    std::fs::write(
        &config,
        format!(
            "[[assist.turn]]\nurls = [\"turn:127.0.0.1:{turn_port}?transport=udp\"]\nsecret = \"{secret}\"\nrealm = \"commucat\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let short = start(
        &tmp.path().join("short"),
        &["--config", config],
        &[("COMMUCAT_ASSIST__ICE_TTL_SECS", "1")],
    );
    let node = start(&tmp.path().join("a"), &["--config", config], &[]);

    let creds = |node: &NodeProc| {
        let token = issue_token(node, "60");
        let url = format!("{}/api/p2p/assist", base_url(node));
        async move {
            let (code, _, assist) = get_json(&url, Some(&token)).await;
            assert_eq!(code, 200, "{assist}");
            assert_schema("AssistResponse", &assist);
            let server = assist["ice"]["servers"][0].clone();
            assert_eq!(server["ttl_secs"], assist["ice"]["ttl_secs"]);
            assert!(server["username"].as_str().unwrap().ends_with(&format!(
                ":{}",
                assist["ice"]["username_fragment"].as_str().unwrap()
            )));
            (
                server["username"].as_str().unwrap().to_owned(),
                server["credential"].as_str().unwrap().to_owned(),
            )
        }
    };
    let allocate = |user: &str, credential: &str| {
        let out = Command::new("timeout")
            .args(["30", "turnutils_uclient", "-u", user, "-w", credential])
            .args([
                "-p",
                &turn_port.to_string(),
                "-n",
                "3",
                "-m",
                "1",
                "-l",
                "100",
                "-y",
            ])
            .arg("127.0.0.1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let allocated = |text: &str| {
        !text.contains("Cannot complete Allocation") && text.contains("tot_recv_msgs=")
    };

    let (user, credential) = creds(&node).await;
    let text = allocate(&user, &credential);
    assert!(allocated(&text), "valid credentials: {text}");
    let text = allocate(&user, &format!("x{credential}"));
    assert!(
        text.contains("Cannot complete Allocation"),
        "wrong credential: {text}"
    );

    let (user, credential) = creds(&short).await;
    let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
    wait_for("the 1 s credential to expire", WAIT, || {
        (commucat::time::unix_secs() > expiry + 1).then_some(())
    });
    let text = allocate(&user, &credential);
    assert!(
        text.contains("Cannot complete Allocation"),
        "expired credential: {text}"
    );

    let _ = turnserver.kill();
    let _ = turnserver.wait();
    short.stop();
    node.stop();
}

/// With `assist.tls_cert` / `tls_key` the API is served over HTTPS (rustls client, self-signed
/// certificate trusted explicitly).
#[test]
fn https_with_a_configured_certificate() {
    use std::io::{Read, Write};

    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let node = start(
        &tmp.path().join("a"),
        &[],
        &[
            ("COMMUCAT_ASSIST__TLS_CERT", cert_path.to_str().unwrap()),
            ("COMMUCAT_ASSIST__TLS_KEY", key_path.to_str().unwrap()),
        ],
    );
    let addr = std::fs::read_to_string(node.dir.join("assist.addr")).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr.trim()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /api/server-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert_schema("ServerInfo", &serde_json::from_str(body).unwrap());

    // Plain HTTP on the same port gets no API answer.
    let mut plain = std::net::TcpStream::connect(addr.trim()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /api/server-info HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("peer_id"));
    node.stop();
}

/// Claims `code` from the local address `from`: status, `Retry-After`, body.
async fn claim_from(base: &str, from: [u8; 4], code: &str) -> (u16, Option<u64>, Value) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap();
    let resp = client
        .post(format!("{base}/api/pairing/claim"))
        .json(&json!({ "code": code, "name": "test phone" }))
        .send()
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (status, _, body) = split(resp).await;
    (status, retry, body)
}

/// An attacker guessing pairing codes from one address gets 401 five times, then 429 for an hour —
/// even for the right code; the code itself stays good for its owner, who pairs from another
/// address, once.
#[tokio::test(flavor = "multi_thread")]
async fn guessing_pairing_codes_locks_the_address_out() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("a"), &[], &[]);
    let base = base_url(&node);
    let invitation = common::cli_json(&node.dir, &["pair"]);
    let code = invitation["code"].as_str().unwrap().to_owned();
    let wrong = |i: usize| {
        let mut c: Vec<char> = code.chars().collect();
        c[0] = if c[0] == '0' { '1' } else { '0' };
        c[1] = "23456"[i..].chars().next().unwrap();
        c.into_iter().collect::<String>()
    };
    let attacker = [127, 0, 0, 1];
    for i in 0..5 {
        let (status, _, body) = claim_from(&base, attacker, &wrong(i)).await;
        assert_eq!(status, 401, "guess {i}: {body}");
        assert_eq!(
            body["detail"],
            "the pairing code is wrong, expired or already used"
        );
    }
    let (status, retry, body) = claim_from(&base, attacker, &code).await;
    assert_eq!(
        status, 429,
        "the locked-out address is refused even the right code: {body}"
    );
    assert!(
        retry.is_some_and(|s| s > 3000),
        "locked out for an hour: {retry:?}"
    );

    let (status, _, claimed) = claim_from(&base, [127, 0, 0, 2], &code.to_lowercase()).await;
    assert_eq!(status, 200, "{claimed}");
    assert_schema("Claimed", &claimed);
    let token = claimed["token"].as_str().unwrap();
    let (status, _, _) = get_json(&format!("{base}/api/p2p/assist"), Some(token)).await;
    assert_eq!(status, 200, "the device's token works");
    let (status, _, _) = claim_from(&base, [127, 0, 0, 3], &code).await;
    assert_eq!(status, 401, "a code pairs one device");

    // The paired device invites another (CCP-1): a new code, and the new device says who invited it.
    let resp = http()
        .post(format!("{base}/api/pairing"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, _, invitation) = split(resp).await;
    assert_eq!(status, 200, "{invitation}");
    assert_schema("Invitation", &invitation);
    let second = invitation["code"].as_str().unwrap();
    let (status, _, other) = claim_from(&base, [127, 0, 0, 4], second).await;
    assert_eq!(status, 200, "{other}");
    let devices = common::cli_json(&node.dir, &["devices"]);
    let invited = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == other["device_id"])
        .unwrap();
    assert_eq!(invited["invited_by"], claimed["device_id"], "{devices}");
    let resp = http()
        .post(format!("{base}/api/pairing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "inviting takes a paired device's token");
    node.stop();
}
