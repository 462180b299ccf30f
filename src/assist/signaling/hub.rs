//! The signaling hub: every session, client and room, under one lock that is never held across an
//! await. Messages are queued per session (bounded in messages and bytes); a full queue ends the
//! session (`Reason::SlowReader`) instead of growing.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::extract::ws::{Message, Utf8Bytes};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    MAX_ROOM_NAME, NODE_ID, NODE_QUEUE,
    wire::{ErrorCode, Outgoing, Reason, ToNode},
};
use crate::{assist::config::Signaling, wire::ClientId};

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

/// Why an upgrade was refused (before the WebSocket opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooManySessions,
    TooManyForToken,
}

struct Session {
    client: ClientId,
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
    clients: HashMap<ClientId, HashSet<u64>>,
    /// Room → client id → that client's sessions in the room.
    rooms: HashMap<String, HashMap<ClientId, HashSet<u64>>>,
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
    pub(super) rx: mpsc::Receiver<Message>,
    pub(super) queued_bytes: Arc<AtomicUsize>,
    pub(super) kill: CancellationToken,
    pub(super) kill_reason: Arc<Mutex<Option<Reason>>>,
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

    pub fn register(&self, client: ClientId) -> Result<Registration, Refusal> {
        let mut st = self.lock();
        if st.sessions.len() >= self.limits.max_sessions.get() {
            return Err(Refusal::TooManySessions);
        }
        if st.clients.get(&client).map_or(0, HashSet::len)
            >= self.limits.max_sessions_per_token.get()
        {
            return Err(Refusal::TooManyForToken);
        }
        st.next_id += 1;
        let id = st.next_id;
        let (tx, rx) = mpsc::channel(self.limits.send_queue_messages.get());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let kill = CancellationToken::new();
        let kill_reason = Arc::new(Mutex::new(None));
        st.sessions.insert(
            id,
            Session {
                client,
                tx,
                queued_bytes: queued_bytes.clone(),
                rooms: HashSet::new(),
                kill: kill.clone(),
                kill_reason: kill_reason.clone(),
            },
        );
        st.clients.entry(client).or_default().insert(id);
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

    /// Ends every session of `client` (its token was revoked); returns how many there were.
    pub fn revoke(&self, client: &ClientId) -> usize {
        let st = self.lock();
        let Some(ids) = st.clients.get(client) else {
            return 0;
        };
        for id in ids {
            if let Some(s) = st.sessions.get(id)
                && !s.kill.is_cancelled()
            {
                *s.kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reason::Revoked);
                s.kill.cancel();
            }
        }
        ids.len()
    }

    /// Queues `msg` for session `id`; a full queue ends the session (slow reader).
    fn deliver_locked(&self, st: &HubState, id: u64, msg: &Utf8Bytes) {
        let Some(s) = st.sessions.get(&id) else {
            return;
        };
        let len = msg.len();
        let queued = s.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
        let overflow = queued > self.limits.send_queue_bytes.get()
            || s.tx.try_send(Message::Text(msg.clone())).is_err();
        if overflow {
            s.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            if !s.kill.is_cancelled() {
                *s.kill_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reason::SlowReader);
                s.kill.cancel();
            }
        }
    }

    fn deliver_client_locked(&self, st: &HubState, client: &ClientId, msg: &Utf8Bytes) -> bool {
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
    pub fn join(&self, id: u64, room: &str) -> Result<Vec<ClientId>, (ErrorCode, String)> {
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
        let client = session.client;
        let already = session.rooms.contains(room);
        if !already && session.rooms.len() >= self.limits.max_rooms_per_session.get() {
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
            if members.is_none() && st.rooms.len() >= self.limits.max_rooms.get() {
                return Err((ErrorCode::RoomFull, "too many rooms on this node".into()));
            }
            if members.is_some_and(|m| m.len() >= self.limits.max_room_members.get()) {
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
        members.entry(client).or_default().insert(id);
        let peers: Vec<ClientId> = members.keys().filter(|c| **c != client).copied().collect();
        if !is_member {
            let msg = Outgoing {
                kind: "peer-joined".into(),
                from: Some(client.to_string()),
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
        let client = session.client;
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
                from: Some(client.to_string()),
                to: None,
                room: Some(room.to_owned()),
                payload: Value::Null,
            }
            .text();
            let others: Vec<ClientId> = members.keys().copied().collect();
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
                from: session.client,
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
        // An id that does not parse is in no room.
        let client = to.parse::<ClientId>().ok();
        let shares = |r: &str| {
            session.rooms.contains(r)
                && client.is_some_and(|c| st.rooms.get(r).is_some_and(|m| m.contains_key(&c)))
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
            from: Some(session.client.to_string()),
            to: Some(to.to_owned()),
            room,
            payload,
        }
        .text();
        if let Some(c) = &client {
            self.deliver_client_locked(&st, c, &msg);
        }
        self.metrics.messages.inc();
        Ok(())
    }

    /// A message from the gateway to a client (every session of it). False if it has none.
    pub fn from_node(&self, to: &ClientId, kind: &str, payload: Value) -> bool {
        let msg = Outgoing {
            kind: kind.to_owned(),
            from: Some(NODE_ID.into()),
            to: Some(to.to_string()),
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
    pub(super) fn welcome(&self, id: u64) -> Outgoing {
        let st = self.lock();
        let client = st.sessions.get(&id).map(|s| s.client);
        Outgoing {
            kind: "welcome".into(),
            from: None,
            to: client.map(|c| c.to_string()),
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

    pub(super) fn disconnected(&self, reason: Reason) {
        self.metrics
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use serde_json::Value;

    use super::*;

    const A: ClientId = ClientId([0xa; 8]);
    const B: ClientId = ClientId([0xb; 8]);

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
        let mut a = h.register(A).unwrap();
        let mut b1 = h.register(B).unwrap();
        let mut b2 = h.register(B).unwrap();
        assert_eq!(h.join(a.id, "r").unwrap(), Vec::<ClientId>::new());
        assert_eq!(h.join(b1.id, "r").unwrap(), vec![A]);
        assert_eq!(h.join(b2.id, "r").unwrap(), vec![A]);
        let got = drain(&mut a);
        assert_eq!(got.len(), 1, "one peer-joined for client b: {got:?}");
        assert_eq!(got[0].kind, "peer-joined");
        assert_eq!(got[0].from, Some(B.to_string()));
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
        let a = h.register(A).unwrap();
        let mut b = h.register(B).unwrap();
        let b_id = B.to_string();
        let err = h
            .relay(a.id, "offer", &b_id, None, Value::Null)
            .unwrap_err();
        assert_eq!(err.0, ErrorCode::UnknownPeer);
        let err = h
            .relay(a.id, "offer", "not an id", None, Value::Null)
            .unwrap_err();
        assert_eq!(err.0, ErrorCode::UnknownPeer);
        h.join(a.id, "r").unwrap();
        h.join(b.id, "r").unwrap();
        h.relay(a.id, "offer", &b_id, None, serde_json::json!({"sdp": "x"}))
            .unwrap();
        let got = drain(&mut b);
        assert_eq!(got[0].from, Some(A.to_string()));
        assert_eq!(got[0].room.as_deref(), Some("r"));
        assert_eq!(got[0].payload["sdp"], "x");
    }

    #[test]
    fn limits_refuse_sessions_rooms_and_members() {
        let limits = Signaling {
            max_sessions_per_token: NonZeroUsize::MIN,
            max_rooms_per_session: NonZeroUsize::MIN,
            max_room_members: NonZeroUsize::MIN,
            ..Default::default()
        };
        let h = Hub::new(limits, Metrics::default());
        let a = h.register(A).unwrap();
        assert_eq!(h.register(A).err(), Some(Refusal::TooManyForToken));
        let b = h.register(B).unwrap();
        h.join(a.id, "r").unwrap();
        assert_eq!(h.join(a.id, "s").unwrap_err().0, ErrorCode::TooManyRooms);
        assert_eq!(h.join(b.id, "r").unwrap_err().0, ErrorCode::RoomFull);
        assert_eq!(h.join(b.id, "bad room").unwrap_err().0, ErrorCode::BadRoom);
    }

    #[test]
    fn a_full_queue_ends_the_session() {
        let limits = Signaling {
            send_queue_messages: NonZeroUsize::new(2).unwrap(),
            ..Default::default()
        };
        let h = Hub::new(limits, Metrics::default());
        let a = h.register(A).unwrap();
        for _ in 0..3 {
            h.reply(a.id, &Outgoing::error(ErrorCode::BadMessage, "x"));
        }
        assert!(a.kill.is_cancelled());
        assert_eq!(*a.kill_reason.lock().unwrap(), Some(Reason::SlowReader));
    }
}
