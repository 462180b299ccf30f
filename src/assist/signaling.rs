//! WebSocket signaling at `/api/v1/ws` (`protocols/signaling-v1.md`): authenticated clients join
//! rooms and relay `offer` / `answer` / `ice-candidate` messages to each other and to the node's
//! WebRTC gateway (reserved id [`NODE_ID`]).
//!
//! The [`Hub`] holds every session, room and limit under one lock that is never held across an
//! await. Each session has a bounded send queue (messages and bytes); a session whose queue is full
//! is disconnected, never buffered without bound. Each session's reader enforces the message size
//! limit, a per-session message rate, and the idle timeout; its writer sends WebSocket pings.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
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
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Context, config::Signaling};
use crate::http::Problem;

/// The id under which the node's WebRTC gateway takes part in signaling.
pub const NODE_ID: &str = "node";
/// The subprotocol a browser offers (with `commucat-token.<token>`); the server selects it.
pub const SUBPROTOCOL: &str = "commucat-signaling.v1";
/// Prefix of the subprotocol entry that carries the bearer token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "commucat-token.";
/// Longest room name, bytes.
pub const MAX_ROOM_NAME: usize = 64;
/// WebSocket frames above this many times `max_message_bytes` end the connection without an
/// `error` message (the WebSocket library refuses to buffer them).
pub const HARD_LIMIT_FACTOR: usize = 4;

/// WebSocket close codes the server uses (RFC 6455 §7.4 and the private range).
pub mod close {
    /// A message above `max_message_bytes`.
    pub const TOO_LARGE: u16 = 1009;
    /// Policy: rate limit exceeded for too long.
    pub const POLICY: u16 = 1008;
    /// The session's send queue overflowed (the client reads too slowly).
    pub const SLOW_READER: u16 = 4000;
    /// No frame from the client within `idle_timeout_secs`.
    pub const IDLE: u16 = 4001;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// Codes of `error` messages (payload `{code, message}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadMessage,
    UnknownType,
    TooLarge,
    RateLimited,
    BadRoom,
    TooManyRooms,
    RoomFull,
    NotInRoom,
    UnknownPeer,
    MissingTarget,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad-message",
            Self::UnknownType => "unknown-type",
            Self::TooLarge => "too-large",
            Self::RateLimited => "rate-limited",
            Self::BadRoom => "bad-room",
            Self::TooManyRooms => "too-many-rooms",
            Self::RoomFull => "room-full",
            Self::NotInRoom => "not-in-room",
            Self::UnknownPeer => "unknown-peer",
            Self::MissingTarget => "missing-target",
        }
    }
}

/// A message as a client sends it. `from` is read and ignored: the server sets it.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

/// A message as the server sends it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Outgoing {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
}

impl Outgoing {
    fn text(&self) -> Utf8Bytes {
        // Serializing a struct of strings and a `Value` cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: "error".into(),
            from: None,
            to: None,
            room: None,
            payload: serde_json::json!({ "code": code.as_str(), "message": message.into() }),
        }
    }
}

/// A message for the node's gateway.
#[derive(Debug)]
pub struct ToNode {
    pub from: String,
    pub kind: String,
    pub payload: Value,
}

/// Messages buffered for the gateway; more are refused with `error` (`rate-limited`).
pub const NODE_QUEUE: usize = 1024;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// `commucat_signaling_sessions`, `commucat_signaling_messages_total`,
/// `commucat_signaling_disconnects_total{reason}`.
#[derive(Clone, Default)]
pub struct Metrics {
    sessions: Gauge,
    messages: Counter,
    disconnects: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "signaling_sessions",
            "Signaling WebSocket sessions open now",
            m.sessions.clone(),
        );
        registry.register(
            "signaling_messages",
            "Signaling messages relayed to another participant",
            m.messages.clone(),
        );
        registry.register(
            "signaling_disconnects",
            "Signaling sessions ended, by reason",
            m.disconnects.clone(),
        );
        m
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Closed,
    TooLarge,
    SlowReader,
    Idle,
    RateLimited,
    Shutdown,
    Error,
}

impl Reason {
    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::TooLarge => "too_large",
            Self::SlowReader => "slow_reader",
            Self::Idle => "idle",
            Self::RateLimited => "rate_limited",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
        }
    }

    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooLarge => Some((close::TOO_LARGE, "message too large")),
            Self::SlowReader => Some((close::SLOW_READER, "send queue overflow")),
            Self::Idle => Some((close::IDLE, "idle timeout")),
            Self::RateLimited => Some((close::POLICY, "rate limit")),
            Self::Shutdown => Some((close::GOING_AWAY, "server going away")),
            Self::Closed | Self::Error => None,
        }
    }
}

/// Why an upgrade was refused (before the WebSocket opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooManySessions,
    TooManyForToken,
}

struct Session {
    client: String,
    tx: mpsc::Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    rooms: HashSet<String>,
    /// Set with the reason when the hub ends the session (slow reader).
    kill: CancellationToken,
    kill_reason: Arc<Mutex<Option<Reason>>>,
}

#[derive(Default)]
struct HubState {
    next_id: u64,
    sessions: HashMap<u64, Session>,
    /// Client id → its sessions.
    clients: HashMap<String, HashSet<u64>>,
    /// Room → client id → that client's sessions in the room.
    rooms: HashMap<String, HashMap<String, HashSet<u64>>>,
    node: Option<mpsc::Sender<ToNode>>,
}

/// Every session and room.
pub struct Hub {
    limits: Signaling,
    state: Mutex<HubState>,
    metrics: Metrics,
}

/// What [`Hub::register`] hands the session task.
pub struct Registration {
    pub id: u64,
    rx: mpsc::Receiver<Message>,
    queued_bytes: Arc<AtomicUsize>,
    kill: CancellationToken,
    kill_reason: Arc<Mutex<Option<Reason>>>,
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_NAME
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Hub {
    pub fn new(limits: Signaling, metrics: Metrics) -> Self {
        Self {
            limits,
            state: Mutex::new(HubState::default()),
            metrics,
        }
    }

    pub fn limits(&self) -> &Signaling {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the gateway reachable as [`NODE_ID`]; returns its inbound queue.
    pub fn attach_node(&self) -> mpsc::Receiver<ToNode> {
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        self.lock().node = Some(tx);
        rx
    }

    pub fn register(&self, client: &str) -> Result<Registration, Refusal> {
        let mut st = self.lock();
        if st.sessions.len() >= self.limits.max_sessions {
            return Err(Refusal::TooManySessions);
        }
        if st.clients.get(client).map_or(0, HashSet::len) >= self.limits.max_sessions_per_token {
            return Err(Refusal::TooManyForToken);
        }
        st.next_id += 1;
        let id = st.next_id;
        let (tx, rx) = mpsc::channel(self.limits.send_queue_messages);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let kill = CancellationToken::new();
        let kill_reason = Arc::new(Mutex::new(None));
        st.sessions.insert(
            id,
            Session {
                client: client.to_owned(),
                tx,
                queued_bytes: queued_bytes.clone(),
                rooms: HashSet::new(),
                kill: kill.clone(),
                kill_reason: kill_reason.clone(),
            },
        );
        st.clients.entry(client.to_owned()).or_default().insert(id);
        self.metrics.sessions.set(st.sessions.len() as i64);
        Ok(Registration {
            id,
            rx,
            queued_bytes,
            kill,
            kill_reason,
        })
    }

    /// Removes a session, leaving its rooms (`peer-left` where it was the client's last session).
    pub fn unregister(&self, id: u64) {
        let mut st = self.lock();
        let Some(session) = st.sessions.get(&id) else {
            return;
        };
        let rooms: Vec<String> = session.rooms.iter().cloned().collect();
        for room in rooms {
            self.leave_locked(&mut st, id, &room);
        }
        if let Some(s) = st.sessions.remove(&id)
            && let Entry::Occupied(mut e) = st.clients.entry(s.client)
        {
            e.get_mut().remove(&id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        self.metrics.sessions.set(st.sessions.len() as i64);
    }

    /// Queues `msg` for session `id`; a full queue ends the session (slow reader).
    fn deliver_locked(&self, st: &HubState, id: u64, msg: &Utf8Bytes) {
        let Some(s) = st.sessions.get(&id) else {
            return;
        };
        let len = msg.len();
        let queued = s.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        let overflow = queued > self.limits.send_queue_bytes
            || s.tx.try_send(Message::Text(msg.clone())).is_err();
        if overflow {
            s.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            if !s.kill.is_cancelled() {
                *s.kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reason::SlowReader);
                s.kill.cancel();
            }
        }
    }

    fn deliver_client_locked(&self, st: &HubState, client: &str, msg: &Utf8Bytes) -> bool {
        let Some(ids) = st.clients.get(client) else {
            return false;
        };
        for id in ids {
            self.deliver_locked(st, *id, msg);
        }
        true
    }

    /// Sends `msg` to session `id` alone (replies and errors).
    pub fn reply(&self, id: u64, msg: &Outgoing) {
        let st = self.lock();
        self.deliver_locked(&st, id, &msg.text());
    }

    /// Joins `room`; returns the other clients in it. Joining a room twice is harmless.
    pub fn join(&self, id: u64, room: &str) -> Result<Vec<String>, (ErrorCode, String)> {
        if !valid_room(room) {
            return Err((
                ErrorCode::BadRoom,
                format!("a room name is 1 to {MAX_ROOM_NAME} characters of A-Z a-z 0-9 - _ . :"),
            ));
        }
        let mut st = self.lock();
        let Some(session) = st.sessions.get(&id) else {
            return Err((ErrorCode::BadMessage, "session ended".into()));
        };
        let client = session.client.clone();
        let already = session.rooms.contains(room);
        if !already && session.rooms.len() >= self.limits.max_rooms_per_session {
            return Err((
                ErrorCode::TooManyRooms,
                format!(
                    "a session may be in {} rooms at most",
                    self.limits.max_rooms_per_session
                ),
            ));
        }
        let members = st.rooms.get(room);
        let is_member = members.is_some_and(|m| m.contains_key(&client));
        if !is_member {
            if members.is_none() && st.rooms.len() >= self.limits.max_rooms {
                return Err((ErrorCode::RoomFull, "too many rooms on this node".into()));
            }
            if members.is_some_and(|m| m.len() >= self.limits.max_room_members) {
                return Err((
                    ErrorCode::RoomFull,
                    format!(
                        "room {room} has {} clients, the most it may have",
                        self.limits.max_room_members
                    ),
                ));
            }
        }
        if let Some(s) = st.sessions.get_mut(&id) {
            s.rooms.insert(room.to_owned());
        }
        let members = st.rooms.entry(room.to_owned()).or_default();
        members.entry(client.clone()).or_default().insert(id);
        let peers: Vec<String> = members.keys().filter(|c| **c != client).cloned().collect();
        if !is_member {
            let msg = Outgoing {
                kind: "peer-joined".into(),
                from: Some(client.clone()),
                to: None,
                room: Some(room.to_owned()),
                payload: Value::Null,
            }
            .text();
            for other in &peers {
                self.deliver_client_locked(&st, other, &msg);
            }
        }
        Ok(peers)
    }

    pub fn leave(&self, id: u64, room: &str) -> Result<(), (ErrorCode, String)> {
        let mut st = self.lock();
        if !st.sessions.get(&id).is_some_and(|s| s.rooms.contains(room)) {
            return Err((ErrorCode::NotInRoom, format!("not in room {room}")));
        }
        self.leave_locked(&mut st, id, room);
        Ok(())
    }

    fn leave_locked(&self, st: &mut HubState, id: u64, room: &str) {
        let Some(session) = st.sessions.get_mut(&id) else {
            return;
        };
        session.rooms.remove(room);
        let client = session.client.clone();
        let Some(members) = st.rooms.get_mut(room) else {
            return;
        };
        let mut gone = false;
        if let Some(ids) = members.get_mut(&client) {
            ids.remove(&id);
            if ids.is_empty() {
                members.remove(&client);
                gone = true;
            }
        }
        if members.is_empty() {
            st.rooms.remove(room);
            return;
        }
        if gone {
            let msg = Outgoing {
                kind: "peer-left".into(),
                from: Some(client),
                to: None,
                room: Some(room.to_owned()),
                payload: Value::Null,
            }
            .text();
            let others: Vec<String> = members.keys().cloned().collect();
            for other in &others {
                self.deliver_client_locked(st, other, &msg);
            }
        }
    }

    /// Relays an `offer` / `answer` / `ice-candidate` from session `id` to client `to`, which must
    /// share a room with it (or be [`NODE_ID`]).
    pub fn relay(
        &self,
        id: u64,
        kind: &str,
        to: &str,
        room: Option<&str>,
        payload: Value,
    ) -> Result<(), (ErrorCode, String)> {
        let st = self.lock();
        let Some(session) = st.sessions.get(&id) else {
            return Err((ErrorCode::BadMessage, "session ended".into()));
        };
        if to == NODE_ID {
            let Some(node) = &st.node else {
                return Err((
                    ErrorCode::UnknownPeer,
                    "this node runs no WebRTC gateway".into(),
                ));
            };
            let msg = ToNode {
                from: session.client.clone(),
                kind: kind.to_owned(),
                payload,
            };
            return match node.try_send(msg) {
                Ok(()) => {
                    self.metrics.messages.inc();
                    Ok(())
                }
                Err(_) => Err((ErrorCode::RateLimited, "the gateway is busy".into())),
            };
        }
        let shares = |r: &str| {
            session.rooms.contains(r) && st.rooms.get(r).is_some_and(|m| m.contains_key(to))
        };
        let room = match room {
            Some(r) if shares(r) => Some(r.to_owned()),
            Some(r) => {
                return Err((ErrorCode::UnknownPeer, format!("{to} is not in room {r}")));
            }
            None => match session.rooms.iter().find(|r| shares(r)) {
                Some(r) => Some(r.clone()),
                None => {
                    return Err((
                        ErrorCode::UnknownPeer,
                        format!("{to} shares no room with you"),
                    ));
                }
            },
        };
        let msg = Outgoing {
            kind: kind.to_owned(),
            from: Some(session.client.clone()),
            to: Some(to.to_owned()),
            room,
            payload,
        }
        .text();
        self.deliver_client_locked(&st, to, &msg);
        self.metrics.messages.inc();
        Ok(())
    }

    /// A message from the gateway to a client (every session of it). False if it has none.
    pub fn from_node(&self, to: &str, kind: &str, payload: Value) -> bool {
        let msg = Outgoing {
            kind: kind.to_owned(),
            from: Some(NODE_ID.into()),
            to: Some(to.to_owned()),
            room: None,
            payload,
        }
        .text();
        let st = self.lock();
        let ok = self.deliver_client_locked(&st, to, &msg);
        if ok {
            self.metrics.messages.inc();
        }
        ok
    }

    /// The first message of every session: who the client is, the timers, whether `node` answers.
    fn welcome(&self, id: u64) -> Outgoing {
        let st = self.lock();
        let client = st.sessions.get(&id).map(|s| s.client.clone());
        Outgoing {
            kind: "welcome".into(),
            from: None,
            to: client.clone(),
            room: None,
            payload: serde_json::json!({
                "id": client,
                "gateway": st.node.is_some(),
                "ping_interval_secs": self.limits.ping_interval_secs,
                "idle_timeout_secs": self.limits.idle_timeout_secs,
                "max_message_bytes": self.limits.max_message_bytes,
            }),
        }
    }

    fn disconnected(&self, reason: Reason) {
        self.metrics
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }
}

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
    let registration = match hub.register(&client) {
        Ok(r) => r,
        Err(Refusal::TooManySessions) => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node serves {} signaling sessions, the most it may",
                    hub.limits.max_sessions
                ),
            )
            .into_response();
        }
        Err(Refusal::TooManyForToken) => {
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token has {} signaling sessions open, the most it may",
                    hub.limits.max_sessions_per_token
                ),
            )
            .into_response();
        }
    };
    let hard = hub.limits.max_message_bytes * HARD_LIMIT_FACTOR;
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

/// Read and write buffer of each session's WebSocket, bytes (messages larger than this are
/// assembled in growing buffers, up to the message limit).
pub const SOCKET_BUFFER: usize = 4096;

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

/// A per-session token bucket over messages (signaling sessions, gateway DataChannels).
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    /// Messages refused in a row; many in a row end the session.
    refused: u32,
}

/// Refused messages in a row that end the session.
pub const MAX_REFUSED_IN_A_ROW: u32 = 100;

impl Bucket {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(per_second),
            burst: f64::from(burst),
            refused: 0,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
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
    let limits = hub.limits.clone();
    hub.reply(id, &hub.welcome(id));
    let ping = Duration::from_secs(limits.ping_interval_secs);
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        queued_bytes,
        kill.clone(),
        kill_reason.clone(),
        ping,
    ));
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut bucket = Bucket::new(limits.messages_per_second, limits.burst);
    let reason = loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => break None,
            _ = shutdown.cancelled() => break Some(Reason::Shutdown),
            f = tokio::time::timeout(idle, stream.next()) => f,
        };
        let text = match frame {
            Err(_) => break Some(Reason::Idle),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break Some(Reason::Closed),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "signaling read");
                break Some(Reason::Error);
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Binary(b)))) => {
                if b.len() > limits.max_message_bytes {
                    hub.reply(id, &too_large(&limits));
                    break Some(Reason::TooLarge);
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
        if text.len() > limits.max_message_bytes {
            hub.reply(id, &too_large(&limits));
            break Some(Reason::TooLarge);
        }
        if !bucket.take(Instant::now()) {
            if bucket.refused >= MAX_REFUSED_IN_A_ROW {
                break Some(Reason::RateLimited);
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
        handle(&hub, id, text.as_str());
    };
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

/// How long a session the server closes waits for the client's Close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    let msg: Incoming = match serde_json::from_str(text) {
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
    let result = match msg.kind.as_str() {
        "join" => match msg.room.as_deref() {
            None => Err((ErrorCode::BadRoom, "join needs `room`".to_string())),
            Some(room) => hub.join(id, room).map(|peers| {
                hub.reply(
                    id,
                    &Outgoing {
                        kind: "peer-list".into(),
                        from: None,
                        to: None,
                        room: Some(room.to_owned()),
                        payload: serde_json::json!({ "peers": peers }),
                    },
                )
            }),
        },
        "leave" => match msg.room.as_deref() {
            None => Err((ErrorCode::BadRoom, "leave needs `room`".to_string())),
            Some(room) => hub.leave(id, room),
        },
        "ping" => {
            hub.reply(
                id,
                &Outgoing {
                    kind: "pong".into(),
                    from: None,
                    to: None,
                    room: None,
                    payload: msg.payload,
                },
            );
            Ok(())
        }
        "pong" => Ok(()),
        "offer" | "answer" | "ice-candidate" => match msg.to.as_deref() {
            None | Some("") => Err((ErrorCode::MissingTarget, format!("{} needs `to`", msg.kind))),
            Some(to) => hub.relay(id, &msg.kind, to, msg.room.as_deref(), msg.payload),
        },
        other => Err((
            ErrorCode::UnknownType,
            format!("unknown message type {other:?}"),
        )),
    };
    if let Err((code, message)) = result {
        hub.reply(id, &Outgoing::error(code, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(Signaling::default(), Metrics::default())
    }

    fn drain(reg: &mut Registration) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Ok(Message::Text(t)) = reg.rx.try_recv() {
            out.push(serde_json::from_str(t.as_str()).unwrap());
        }
        out
    }

    #[test]
    fn rooms_announce_joins_and_leaves_once_per_client() {
        let h = hub();
        let mut a = h.register("a").unwrap();
        let mut b1 = h.register("b").unwrap();
        let mut b2 = h.register("b").unwrap();
        assert_eq!(h.join(a.id, "r").unwrap(), Vec::<String>::new());
        assert_eq!(h.join(b1.id, "r").unwrap(), vec!["a".to_string()]);
        assert_eq!(h.join(b2.id, "r").unwrap(), vec!["a".to_string()]);
        let got = drain(&mut a);
        assert_eq!(got.len(), 1, "one peer-joined for client b: {got:?}");
        assert_eq!(got[0].kind, "peer-joined");
        assert_eq!(got[0].from.as_deref(), Some("b"));
        h.unregister(b1.id);
        assert!(drain(&mut a).is_empty(), "b still has a session in r");
        h.leave(b2.id, "r").unwrap();
        let got = drain(&mut a);
        assert_eq!(got[0].kind, "peer-left");
        assert!(drain(&mut b1).is_empty() && drain(&mut b2).is_empty());
    }

    #[test]
    fn relay_needs_a_shared_room_and_sets_from() {
        let h = hub();
        let a = h.register("a").unwrap();
        let mut b = h.register("b").unwrap();
        let err = h.relay(a.id, "offer", "b", None, Value::Null).unwrap_err();
        assert_eq!(err.0, ErrorCode::UnknownPeer);
        h.join(a.id, "r").unwrap();
        h.join(b.id, "r").unwrap();
        h.relay(a.id, "offer", "b", None, serde_json::json!({"sdp": "x"}))
            .unwrap();
        let got = drain(&mut b);
        assert_eq!(got[0].from.as_deref(), Some("a"));
        assert_eq!(got[0].room.as_deref(), Some("r"));
        assert_eq!(got[0].payload["sdp"], "x");
    }

    #[test]
    fn limits_refuse_sessions_rooms_and_members() {
        let limits = Signaling {
            max_sessions_per_token: 1,
            max_rooms_per_session: 1,
            max_room_members: 1,
            ..Default::default()
        };
        let h = Hub::new(limits, Metrics::default());
        let a = h.register("a").unwrap();
        assert_eq!(h.register("a").err(), Some(Refusal::TooManyForToken));
        let b = h.register("b").unwrap();
        h.join(a.id, "r").unwrap();
        assert_eq!(h.join(a.id, "s").unwrap_err().0, ErrorCode::TooManyRooms);
        assert_eq!(h.join(b.id, "r").unwrap_err().0, ErrorCode::RoomFull);
        assert_eq!(h.join(b.id, "bad room").unwrap_err().0, ErrorCode::BadRoom);
    }

    #[test]
    fn a_full_queue_ends_the_session() {
        let limits = Signaling {
            send_queue_messages: 2,
            ..Default::default()
        };
        let h = Hub::new(limits, Metrics::default());
        let a = h.register("a").unwrap();
        for _ in 0..3 {
            h.reply(a.id, &Outgoing::error(ErrorCode::BadMessage, "x"));
        }
        assert!(a.kill.is_cancelled());
        assert_eq!(*a.kill_reason.lock().unwrap(), Some(Reason::SlowReader));
    }
}
