//! One signaling session: the upgrade of `GET /api/v1/ws` (the token is checked before anything
//! else), the reader (message size limit, per-session message rate, idle timeout), the writer
//! (queued messages, WebSocket pings, the close frame), and the dispatch of one message
//! ([`handle`]).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{
        ConnectInfo, Query, State,
        rejection::QueryRejection,
        ws::{
            CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    CLOSE_WAIT, HARD_LIMIT_FACTOR, SOCKET_BUFFER, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX,
    hub::{Hub, Refusal, Registration},
    wire::{ErrorCode, Outgoing, Reason, Relayed, Request, TypeOnly},
};
use crate::{
    assist::{
        Context,
        config::Signaling,
        rate_limit::{Bucket, MAX_REFUSED_IN_A_ROW},
    },
    http::Problem,
};

#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    #[serde(default)]
    token: Option<String>,
}

/// The token from `Authorization: Bearer`, a `commucat-token.<token>` subprotocol, or `?token=`.
fn token_of<'a>(headers: &'a HeaderMap, query: &'a WsQuery) -> Option<&'a str> {
    if let Some(t) = crate::http::bearer(headers) {
        return Some(t);
    }
    let from_protocol = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX));
    from_protocol.or(query.token.as_deref())
}

/// `GET /api/v1/ws`.
pub async fn upgrade(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The token is checked before anything else, so that nobody learns more than 401 without one
    // (a query that does not parse just carries no token).
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let Some(token) = token_of(&headers, &query) else {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "no token: send `Authorization: Bearer <token>`, the subprotocol \
             `commucat-token.<token>` or `?token=<token>`"
                .to_string(),
        )
        .into_response();
    };
    let Some(client) = ctx.tokens.check(token) else {
        return Problem::new(
            StatusCode::UNAUTHORIZED,
            "the token is unknown, expired or revoked".to_string(),
        )
        .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let mut response = Problem::new(
                StatusCode::UPGRADE_REQUIRED,
                format!(
                    "this endpoint is a WebSocket (RFC 6455): {}",
                    e.body_text().to_lowercase()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::UPGRADE,
                axum::http::HeaderValue::from_static("websocket"),
            );
            return response;
        }
    };
    let hub = ctx.signaling.clone();
    let registration = match hub.register(client) {
        Ok(r) => r,
        Err(Refusal::TooManySessions) => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node serves {} signaling sessions, the most it may",
                    hub.limits().max_sessions
                ),
            )
            .into_response();
        }
        Err(Refusal::TooManyForToken) => {
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token has {} signaling sessions open, the most it may",
                    hub.limits().max_sessions_per_token
                ),
            )
            .into_response();
        }
    };
    let hard = hub.limits().max_message_bytes.get() * HARD_LIMIT_FACTOR;
    let shutdown = ctx.shutdown.clone();
    tracing::debug!(%peer, client = %client, "signaling session");
    // Forgets the session however the upgrade ends: failed, or never attempted.
    let guard = Unregister {
        hub: hub.clone(),
        id: registration.id,
    };
    ws.protocols([SUBPROTOCOL])
        .max_message_size(hard)
        .max_frame_size(hard)
        // tungstenite's 128 KiB default buffers would be most of a session's memory.
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_write_buffer_size(SOCKET_BUFFER + 2 * hard)
        .on_upgrade(move |socket| async move {
            run_session(socket, hub, registration, shutdown).await;
            drop(guard);
        })
}

/// Unregisters a session when dropped.
struct Unregister {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

async fn run_session(
    socket: WebSocket,
    hub: Arc<Hub>,
    reg: Registration,
    shutdown: CancellationToken,
) {
    let Registration {
        id,
        rx,
        queued_bytes,
        kill,
        kill_reason,
    } = reg;
    let (sink, mut stream) = socket.split();
    let limits = hub.limits().clone();
    hub.reply(id, &hub.welcome(id));
    let ping = Duration::from_secs(limits.ping_interval_secs.get());
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        queued_bytes,
        kill.clone(),
        kill_reason.clone(),
        ping,
    ));
    let reason = read_loop(&mut stream, &hub, id, &limits, &kill, &shutdown).await;
    let reason = reason.unwrap_or_else(|| {
        kill_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(Reason::Closed)
    });
    // The writer learns the reason, then the hub forgets the session (dropping its queue's
    // sender): the writer sends what is queued (an `error`, say) and the close frame. A slow
    // reader's writer was cancelled and sends only the close frame.
    if reason != Reason::SlowReader {
        *kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
    hub.unregister(id);
    hub.disconnected(reason);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    // RFC 6455 §7.1.1: the server closes TCP after the client's Close, which a client that is
    // still there sends at once; a silent one is not waited for long.
    if reason != Reason::Closed {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Reads and handles the client's messages until the session must end; `None` when the hub ended
/// it (its reason is in the registration).
async fn read_loop(
    stream: &mut futures::stream::SplitStream<WebSocket>,
    hub: &Hub,
    id: u64,
    limits: &Signaling,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) -> Option<Reason> {
    let idle = Duration::from_secs(limits.idle_timeout_secs.get());
    let mut bucket = Bucket::new(limits.messages_per_second.get(), limits.burst.get());
    loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => return None,
            _ = shutdown.cancelled() => return Some(Reason::Shutdown),
            f = tokio::time::timeout(idle, stream.next()) => f,
        };
        let text = match frame {
            Err(_) => return Some(Reason::Idle),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Some(Reason::Closed),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "signaling read");
                return Some(Reason::Error);
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Binary(b)))) => {
                if b.len() > limits.max_message_bytes.get() {
                    hub.reply(id, &too_large(limits));
                    return Some(Reason::TooLarge);
                }
                hub.reply(
                    id,
                    &Outgoing::error(ErrorCode::BadMessage, "messages are JSON text frames"),
                );
                continue;
            }
            // Pings are answered by the library; pongs and pings count as activity.
            Ok(Some(Ok(_))) => continue,
        };
        if text.len() > limits.max_message_bytes.get() {
            hub.reply(id, &too_large(limits));
            return Some(Reason::TooLarge);
        }
        if !bucket.take(Instant::now()) {
            if bucket.refused() >= MAX_REFUSED_IN_A_ROW {
                return Some(Reason::RateLimited);
            }
            hub.reply(
                id,
                &Outgoing::error(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second; this one was dropped",
                        limits.messages_per_second
                    ),
                ),
            );
            continue;
        }
        handle(hub, id, text.as_str());
    }
}

fn too_large(limits: &Signaling) -> Outgoing {
    Outgoing::error(
        ErrorCode::TooLarge,
        format!(
            "messages are at most {} bytes; closing",
            limits.max_message_bytes
        ),
    )
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    queued_bytes: Arc<AtomicUsize>,
    kill: CancellationToken,
    kill_reason: Arc<Mutex<Option<Reason>>>,
    ping: Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
    loop {
        let msg = tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                // The hub dropped the session: the reader ended.
                None => break,
            },
            _ = ticker.tick() => Message::Ping(Default::default()),
        };
        if let Message::Text(t) = &msg {
            queued_bytes.fetch_sub(t.len(), Ordering::AcqRel);
        }
        tokio::select! {
            r = sink.send(msg) => if r.is_err() { return },
            _ = kill.cancelled() => break,
        }
    }
    // A slow reader gets no more data, only the close frame (best effort, bounded).
    let reason = *kill_reason.lock().unwrap_or_else(|e| e.into_inner());
    if reason != Some(Reason::SlowReader) {
        while let Ok(m) = rx.try_recv() {
            let sent = tokio::time::timeout(Duration::from_secs(1), sink.send(m)).await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    }
    let frame = reason
        .and_then(Reason::close_frame)
        .map(|(code, why)| CloseFrame {
            code,
            reason: Utf8Bytes::from_static(why),
        });
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(frame))).await;
}

/// Handles one text message of session `id` (public for `fuzz/fuzz_targets/signaling.rs`).
pub fn handle(hub: &Hub, id: u64, text: &str) {
    let request: Request = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            hub.reply(
                id,
                &Outgoing::error(
                    ErrorCode::BadMessage,
                    format!("not a signaling message: {e}"),
                ),
            );
            return;
        }
    };
    let result = match request {
        Request::Join { room: None } => Err((ErrorCode::BadRoom, "join needs `room`".to_string())),
        Request::Join { room: Some(room) } => hub.join(id, &room).map(|peers| {
            hub.reply(
                id,
                &Outgoing {
                    kind: "peer-list".into(),
                    from: None,
                    to: None,
                    room: Some(room),
                    payload: serde_json::json!({ "peers": peers }),
                },
            )
        }),
        Request::Leave { room: None } => {
            Err((ErrorCode::BadRoom, "leave needs `room`".to_string()))
        }
        Request::Leave { room: Some(room) } => hub.leave(id, &room),
        Request::Ping { payload } => {
            hub.reply(
                id,
                &Outgoing {
                    kind: "pong".into(),
                    from: None,
                    to: None,
                    room: None,
                    payload,
                },
            );
            Ok(())
        }
        Request::Pong {} => Ok(()),
        Request::Offer(r) => relay(hub, id, "offer", r),
        Request::Answer(r) => relay(hub, id, "answer", r),
        Request::IceCandidate(r) => relay(hub, id, "ice-candidate", r),
        Request::Unknown => {
            let kind = serde_json::from_str::<TypeOnly>(text).map(|t| t.kind);
            Err((
                ErrorCode::UnknownType,
                format!("unknown message type {:?}", kind.unwrap_or_default()),
            ))
        }
    };
    if let Err((code, message)) = result {
        hub.reply(id, &Outgoing::error(code, message));
    }
}

fn relay(hub: &Hub, id: u64, kind: &str, r: Relayed) -> Result<(), (ErrorCode, String)> {
    match r.to.as_deref() {
        None | Some("") => Err((ErrorCode::MissingTarget, format!("{kind} needs `to`"))),
        Some(to) => hub.relay(id, kind, to, r.room.as_deref(), r.payload),
    }
}
