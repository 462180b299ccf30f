//! WebSocket signaling as a client sees it (`protocols/signaling-v1.md`): the real binary in assist
//! mode, tokens issued through the control API, and tokio-tungstenite as the WebSocket client.

mod common;

use std::{path::Path, time::Duration};

use common::NodeProc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for one message.
const STEP: Duration = Duration::from_secs(20);

fn start(dir: &Path, env: &[(&str, &str)]) -> NodeProc {
    let mut env = env.to_vec();
    // Many connections from 127.0.0.1 in these tests: lift the per-IP HTTP limit.
    env.push(("COMMUCAT_ASSIST__RATE_BURST", "1000000"));
    common::start_assist(dir, &[], &env)
}

fn ws_url(node: &NodeProc) -> String {
    common::assist_url(node).replace("http://", "ws://") + "/api/v1/ws"
}

/// The node's `/metrics` text.
async fn metrics(node: &NodeProc) -> String {
    reqwest::get(format!("{}/metrics", common::assist_url(node)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Issues a token through the control API; returns (token, client id).
async fn token(node: &NodeProc) -> (String, String) {
    let v = node
        .api_post("/v1/assist/tokens", &json!({"ttl_secs": 3600}))
        .await;
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

async fn connect_bearer(url: &str, token: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (ws, _) = connect_async(req).await.expect("WebSocket upgrade");
    ws
}

/// The next JSON message (pings are answered by tungstenite while we read).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a WebSocket frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// The next message of `kind`, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Reads until the server closes; returns the close code (None if the TCP connection just ended).
async fn close_code(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .expect("the server closes in time")
        {
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => return (seen, c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (seen, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_relay_with_the_real_sender_id() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("n"), &[]);
    let url = ws_url(&node);
    let (ta, ida) = token(&node).await;
    let (tb, idb) = token(&node).await;
    // The client id is the first 8 bytes of the token's SHA-256.
    assert_eq!(ida, hex::encode(&Sha256::digest(ta.as_bytes())[..8]));

    let mut a = connect_bearer(&url, &ta).await;
    let welcome = next_of(&mut a, "welcome").await;
    assert_eq!(welcome["payload"]["id"], ida.as_str());
    assert_eq!(welcome["payload"]["gateway"], true);
    send(&mut a, json!({"type": "join", "room": "lobby"})).await;
    let list = next_of(&mut a, "peer-list").await;
    assert_eq!(list["room"], "lobby");
    assert_eq!(list["payload"]["peers"], json!([]));

    let mut b = connect_bearer(&url, &tb).await;
    send(&mut b, json!({"type": "join", "room": "lobby"})).await;
    let list = next_of(&mut b, "peer-list").await;
    assert_eq!(list["payload"]["peers"], json!([ida]));
    let joined = next_of(&mut a, "peer-joined").await;
    assert_eq!(
        (joined["from"].as_str(), joined["room"].as_str()),
        (Some(idb.as_str()), Some("lobby"))
    );

    // B claims to be someone else: A sees B's real id.
    send(
        &mut b,
        json!({"type": "offer", "from": "node", "to": ida, "payload": {"type": "offer", "sdp": "v=0"}}),
    )
    .await;
    let offer = next_of(&mut a, "offer").await;
    assert_eq!(offer["from"], idb.as_str(), "{offer}");
    assert_eq!(offer["to"], ida.as_str());
    assert_eq!(offer["room"], "lobby");
    assert_eq!(offer["payload"]["sdp"], "v=0");

    // Relaying needs a shared room; errors leave the session open.
    let (tc, _) = token(&node).await;
    let mut c = connect_bearer(&url, &tc).await;
    send(&mut c, json!({"type": "answer", "to": ida, "payload": {}})).await;
    let err = next_of(&mut c, "error").await;
    assert_eq!(err["payload"]["code"], "unknown-peer");
    send(&mut c, json!({"type": "join", "room": "bad room!"})).await;
    assert_eq!(
        next_of(&mut c, "error").await["payload"]["code"],
        "bad-room"
    );
    c.send(Message::text("{not json")).await.unwrap();
    assert_eq!(
        next_of(&mut c, "error").await["payload"]["code"],
        "bad-message"
    );
    send(&mut c, json!({"type": "dance"})).await;
    assert_eq!(
        next_of(&mut c, "error").await["payload"]["code"],
        "unknown-type"
    );
    send(&mut c, json!({"type": "ping", "payload": 7})).await;
    assert_eq!(next_of(&mut c, "pong").await["payload"], 7);

    // The node's gateway takes part as `node`, without a room; it refuses what is not an offer
    // it can answer, and says so.
    send(
        &mut c,
        json!({"type": "offer", "to": "node", "payload": {"type": "offer", "sdp": "not sdp"}}),
    )
    .await;
    let err = next_of(&mut c, "error").await;
    assert_eq!(
        (err["from"].as_str(), err["payload"]["code"].as_str()),
        (Some("node"), Some("bad-offer")),
        "{err}"
    );
    send(
        &mut c,
        json!({"type": "offer", "to": "node", "payload": 42}),
    )
    .await;
    assert_eq!(
        next_of(&mut c, "error").await["payload"]["code"],
        "bad-offer"
    );
    send(
        &mut c,
        json!({"type": "answer", "to": "node", "payload": {}}),
    )
    .await;
    assert_eq!(
        next_of(&mut c, "error").await["payload"]["code"],
        "unknown-type"
    );

    // A leaves: B hears of it.
    drop(a);
    let left = next_of(&mut b, "peer-left").await;
    assert_eq!(left["from"], ida.as_str());
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_without_a_valid_token_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("n"), &[]);
    let url = ws_url(&node);
    let refused = |r: Result<_, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    };
    assert_eq!(refused(connect_async(url.as_str()).await), 401);
    assert_eq!(
        refused(connect_async(format!("{url}?token={}", "ab".repeat(32))).await),
        401
    );

    let (t, id) = token(&node).await;
    // The query parameter works.
    let (mut ws, _) = connect_async(format!("{url}?token={t}")).await.unwrap();
    assert_eq!(
        next_of(&mut ws, "welcome").await["payload"]["id"],
        id.as_str()
    );
    // So does the subprotocol, as browsers send it; the server picks the signaling one.
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("commucat-signaling.v1, commucat-token.{t}")).unwrap(),
    );
    let (mut ws2, resp) = connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "commucat-signaling.v1"
    );
    assert_eq!(
        next_of(&mut ws2, "welcome").await["payload"]["id"],
        id.as_str()
    );

    // A revoked token is refused from then on.
    let out = common::cli(&node.dir, &["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        refused(connect_async(format!("{url}?token={t}")).await),
        401
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_gets_an_error_and_the_session_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("n"), &[]);
    let (t, _) = token(&node).await;
    let mut ws = connect_bearer(&ws_url(&node), &t).await;
    next_of(&mut ws, "welcome").await;
    let big = json!({"type": "ping", "payload": "x".repeat(70 * 1024)});
    ws.send(Message::text(big.to_string())).await.unwrap();
    let (seen, code) = close_code(&mut ws).await;
    let err = seen
        .iter()
        .find(|v| v["type"] == "error")
        .expect("an error");
    assert_eq!(err["payload"]["code"], "too-large", "{seen:?}");
    assert_eq!(code, Some(1009));
    assert!(
        seen.iter().all(|v| v["type"] != "pong"),
        "the oversized ping was not answered"
    );
    // A message just under the limit is fine.
    let mut ws = connect_bearer(&ws_url(&node), &t).await;
    let ok = json!({"type": "ping", "payload": "x".repeat(60 * 1024)});
    ws.send(Message::text(ok.to_string())).await.unwrap();
    assert_eq!(
        next_of(&mut ws, "pong").await["payload"]
            .as_str()
            .unwrap()
            .len(),
        60 * 1024
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_is_dropped_and_a_live_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(
        &tmp.path().join("n"),
        &[
            ("COMMUCAT_ASSIST__SIGNALING__PING_INTERVAL_SECS", "1"),
            ("COMMUCAT_ASSIST__SIGNALING__IDLE_TIMEOUT_SECS", "3"),
        ],
    );
    let (t, _) = token(&node).await;
    let url = ws_url(&node);
    let mut silent = connect_bearer(&url, &t).await;
    let mut live = connect_bearer(&url, &t).await;
    // The live client keeps reading, so tungstenite answers the server's pings; the silent one
    // reads nothing (no pongs) for longer than the timeout.
    let live_task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), live.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed: {c:?}")),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("ended".into()),
                _ => {}
            }
        }
        Ok(live)
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The server sent Close 4001 and, getting no answer, dropped the connection: reading now
    // shows the close frame, or a reset when tungstenite's queued pong hit the closed socket.
    let (_, code) = close_code(&mut silent).await;
    assert!(matches!(code, Some(4001) | None), "idle close: {code:?}");
    let mut live = live_task
        .await
        .unwrap()
        .expect("the live client stays connected");
    send(&mut live, json!({"type": "ping"})).await;
    next_of(&mut live, "pong").await;
    let metrics = metrics(&node).await;
    assert!(
        metrics.contains("commucat_signaling_disconnects_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_clients_in_one_room_hear_every_join() {
    const CLIENTS: usize = 1000;
    // Both ends of every connection live on this machine: 2 descriptors per client.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("n"), &[]);
    let url = ws_url(&node);
    let mut tokens = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        tokens.push(token(&node).await);
    }
    let all: std::collections::HashSet<String> = tokens.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all.len(), CLIENTS);

    // Each client joins, then collects the room's members from its peer-list and the
    // peer-joined announcements until it knows all the others. A finished client stays connected
    // (its socket is in the task's result) so nobody sees a peer-left.
    let mut tasks = tokio::task::JoinSet::new();
    for (t, id) in tokens {
        let url = url.clone();
        tasks.spawn(async move {
            let mut ws = connect_bearer(&url, &t).await;
            send(&mut ws, json!({"type": "join", "room": "big"})).await;
            let mut known = std::collections::HashSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
            while known.len() < CLIENTS - 1 {
                let msg = tokio::time::timeout_at(deadline, ws.next()).await;
                let Ok(Some(Ok(msg))) = msg else {
                    return Err(format!(
                        "{id}: knew {} peers when the stream ended",
                        known.len()
                    ));
                };
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                match v["type"].as_str() {
                    Some("peer-list") => {
                        for p in v["payload"]["peers"].as_array().unwrap() {
                            known.insert(p.as_str().unwrap().to_owned());
                        }
                    }
                    Some("peer-joined") => {
                        known.insert(v["from"].as_str().unwrap().to_owned());
                    }
                    Some("error") => return Err(format!("{id}: {v}")),
                    _ => {}
                }
            }
            Ok((id, ws, known))
        });
    }
    let mut open = Vec::with_capacity(CLIENTS);
    while let Some(r) = tasks.join_next().await {
        let (id, ws, known) = r.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(known.len(), CLIENTS - 1);
        assert!(known.is_subset(&all) && !known.contains(&id));
        open.push(ws);
    }
    let status_sessions = metrics(&node).await;
    assert!(
        status_sessions.contains(&format!("commucat_signaling_sessions {CLIENTS}")),
        "{status_sessions}"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_is_rate_limited_and_a_sustained_one_disconnected() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(
        &tmp.path().join("n"),
        &[
            ("COMMUCAT_ASSIST__SIGNALING__MESSAGES_PER_SECOND", "5"),
            ("COMMUCAT_ASSIST__SIGNALING__BURST", "10"),
        ],
    );
    let (t, _) = token(&node).await;
    let mut ws = connect_bearer(&ws_url(&node), &t).await;
    next_of(&mut ws, "welcome").await;
    // 30 pings at once: the burst of 10 is answered, the rest refused with `rate-limited`.
    for i in 0..30 {
        send(&mut ws, json!({"type": "ping", "payload": i})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 30 {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["payload"]["code"] == "rate-limited" => limited += 1,
            _ => {}
        }
    }
    assert!((10..=12).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited, 30);
    // Keeping it up: 100 refusals in a row end the session (1008).
    for i in 0..200 {
        if ws
            .send(Message::text(
                json!({"type": "ping", "payload": i}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, code) = close_code(&mut ws).await;
    assert!(matches!(code, Some(1008) | None), "{code:?}");
    let metrics = metrics(&node).await;
    assert!(
        metrics.contains("commucat_signaling_disconnects_total{reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
    node.stop();
}

/// `commucat token revoke` ends the token's open sessions at once (close 4003), not at their next
/// reconnect; another token's session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_token_closes_its_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("n"), &[]);
    let (revoked, id) = token(&node).await;
    let (kept, _) = token(&node).await;
    let mut a = connect_bearer(&ws_url(&node), &revoked).await;
    let mut a2 = connect_bearer(&ws_url(&node), &revoked).await;
    let mut b = connect_bearer(&ws_url(&node), &kept).await;
    for ws in [&mut a, &mut a2, &mut b] {
        next_of(ws, "welcome").await;
    }
    let out = common::cli(&node.dir, &["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ws in [&mut a, &mut a2] {
        let (_, code) = close_code(ws).await;
        assert_eq!(code, Some(4003), "closed as revoked");
    }
    send(&mut b, json!({"type": "ping", "payload": "still here"})).await;
    assert_eq!(next_of(&mut b, "pong").await["payload"], "still here");
    node.stop();
}
