//! One light client's DataChannel into the node (`protocols/signaling-v1.md` §6): the JSON
//! messages it sends (send, sync, ack), rate-limited per channel, and what the node pushes to it.

use super::*;

/// A message pushed to a light client.
pub(super) fn pushed(m: &inbox::Message) -> String {
    json!({
        "type": "message",
        "seq": m.seq,
        "id": m.id,
        "from": m.from,
        "from_client": m.via.from_client,
        "body": m.body,
        "sent_at_ms": m.sent_at_ms,
        "received_at_ms": m.received_at_ms,
    })
    .to_string()
}

/// What a light client sends over the DataChannel.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum ClientMessage {
    Send(SendBody),
    /// Replay the inbox messages for this client after local position `after`.
    Sync {
        #[serde(default)]
        after: u64,
    },
}

/// Queue `body` for peer `to` (optionally for one of its light clients). `{to, body}` without a
/// `type` is a `send` too.
#[derive(Debug, Deserialize)]
struct SendBody {
    to: String,
    body: String,
    #[serde(default)]
    client: Option<ClientId>,
    #[serde(default, rename = "ref")]
    reference: Option<Value>,
}

fn parse_client(text: &str) -> Result<ClientMessage, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("type").is_none() {
        let send = serde_json::from_value(value).map_err(|e| e.to_string())?;
        return Ok(ClientMessage::Send(send));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct Queued<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    to: PeerId,
    seq: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<Value>,
}

pub(super) struct ChannelTask {
    pub(super) client: ClientId,
    pub(super) generation: u64,
    pub(super) dc: Arc<dyn DataChannel>,
    pub(super) rx: mpsc::Receiver<String>,
    pub(super) data: Arc<data::Service>,
    pub(super) pushes: Arc<std::sync::Mutex<HashMap<ClientId, Push>>>,
    pub(super) events: mpsc::Sender<GwEvent>,
    pub(super) shutdown: CancellationToken,
}

pub(super) async fn serve_channel(mut t: ChannelTask) {
    let mut bucket =
        crate::assist::rate_limit::Bucket::new(CHANNEL_MESSAGES_PER_SECOND, CHANNEL_BURST);
    loop {
        tokio::select! {
            _ = t.shutdown.cancelled() => break,
            ev = t.dc.poll() => match ev {
                Some(DataChannelEvent::OnMessage(msg)) => {
                    let reply = if !bucket.take(std::time::Instant::now()) {
                        vec![json!({
                            "type": "error",
                            "message": format!(
                                "more than {CHANNEL_MESSAGES_PER_SECOND} messages per second; \
                                 this one was dropped"
                            ),
                        })
                        .to_string()]
                    } else {
                        match std::str::from_utf8(&msg.data) {
                            Ok(text) => handle_client(&t, text).await,
                            Err(_) => vec![json!({"type": "error", "message": "not UTF-8"}).to_string()],
                        }
                    };
                    for r in reply {
                        if t.dc.send_text(&r).await.is_err() {
                            break;
                        }
                    }
                }
                Some(DataChannelEvent::OnClose) | None => break,
                Some(_) => {}
            },
            Some(push) = t.rx.recv() => {
                if t.dc.send_text(&push).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = t.dc.close().await;
    let _ = t
        .events
        .send(GwEvent::ChannelClosed(t.client, t.generation))
        .await;
}

async fn handle_client(t: &ChannelTask, text: &str) -> Vec<String> {
    let err = |m: String| vec![json!({"type": "error", "message": m}).to_string()];
    if text.len() > crate::wire::MAX_MESSAGE_BYTES + 1024 {
        return err(format!(
            "messages are at most {} bytes of body",
            crate::wire::MAX_MESSAGE_BYTES
        ));
    }
    match parse_client(text) {
        Err(e) => err(format!("not a gateway message: {e}")),
        Ok(ClientMessage::Send(SendBody {
            to,
            body,
            client,
            reference,
        })) => {
            let to: PeerId = match to.parse() {
                Ok(p) => p,
                Err(e) => return err(format!("`to` is not a peer id: {e}")),
            };
            let via = Via {
                from_client: Some(t.client),
                to_client: client,
            };
            match t.data.send_message(to, body, via).await {
                Ok(m) => {
                    {
                        let mut pushes = t.pushes.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(p) = pushes.get_mut(&t.client)
                            && p.waiting.len() < MAX_TRACKED
                        {
                            p.waiting.push((m.to, m.seq, m.id.clone()));
                        }
                    }
                    let q = Queued {
                        kind: "queued",
                        id: &m.id,
                        to: m.to,
                        seq: m.seq,
                        reference,
                    };
                    vec![serde_json::to_string(&q).unwrap_or_default()]
                }
                Err(e) => err(e.to_string()),
            }
        }
        Ok(ClientMessage::Sync { after }) => {
            let inbox = t.data.inbox();
            let mut out = Vec::new();
            let mut cursor = after;
            let mut scanned = 0;
            while out.len() < MAX_SYNC && scanned < MAX_SYNC_SCAN {
                let batch = match inbox.list(cursor, 1000) {
                    Ok(b) => b,
                    Err(e) => return err(e.to_string()),
                };
                if batch.is_empty() {
                    break;
                }
                scanned += batch.len();
                for m in &batch {
                    cursor = m.seq;
                    if m.via.to_client == Some(t.client) {
                        out.push(pushed(m));
                        if out.len() == MAX_SYNC {
                            break;
                        }
                    }
                }
            }
            out.push(json!({"type": "synced", "up_to": cursor}).to_string());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_with_or_without_type() {
        match parse_client(r#"{"to":"x","body":"hi"}"#).unwrap() {
            ClientMessage::Send(SendBody { to, body, .. }) => {
                assert_eq!((to.as_str(), body.as_str()), ("x", "hi"))
            }
            other => panic!("{other:?}"),
        }
        match parse_client(r#"{"type":"sync","after":5}"#).unwrap() {
            ClientMessage::Sync { after } => assert_eq!(after, 5),
            other => panic!("{other:?}"),
        }
        assert!(parse_client(r#"{"type":"nope"}"#).is_err());
        assert!(parse_client("[").is_err());
        assert!(parse_client(r#"{"to":"x"}"#).is_err());
    }
}
