//! The WebRTC gateway (`protocols/signaling-v1.md` §6): the node takes part in signaling as
//! [`NODE_ID`](super::signaling::NODE_ID), answers light clients' offers, trickles ICE candidates
//! and serves the DataChannel the client opens. Over it the client sends `{to, body}` messages that
//! the node queues in its outbox for `/commucat/data` (durable, acknowledged, exactly once, marked
//! with the client's id: DATA_VIA), and the node pushes the messages that arrive for that client.
//!
//! One task owns every peer connection (`run`); the webrtc event handler only forwards events to
//! it. Each open DataChannel is served by its own task.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
        RTCIceCandidateInit, RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
        RTCSessionDescription,
    },
};

use super::{
    config::{self, TurnServer},
    ice,
    signaling::{Hub, ToNode},
};
use crate::{
    data::{self, service::Event},
    store::{Via, inbox},
    wire::ClientId,
};

/// Events from webrtc handlers buffered for the gateway task.
pub const EVENT_QUEUE: usize = 4096;
/// Pushes buffered per DataChannel; when full, the client catches up with `sync`.
pub const PUSH_QUEUE: usize = 256;
/// Inbox messages one `sync` replays at most (the client asks again from the last one).
pub const MAX_SYNC: usize = 500;
/// Inbox entries one `sync` looks through at most.
pub const MAX_SYNC_SCAN: usize = 20_000;
/// Messages a DataChannel client may have waiting for their `delivered` report.
pub const MAX_TRACKED: usize = 10_000;
/// Messages a light client may send over its DataChannel per second on average, and at once;
/// more are refused with `error`.
pub const CHANNEL_MESSAGES_PER_SECOND: u32 = 50;
pub const CHANNEL_BURST: u32 = 200;
/// The DataChannel label clients open.
pub const LABEL: &str = "commucat";

enum GwEvent {
    Candidate(ClientId, u64, RTCIceCandidateInit),
    State(ClientId, u64, RTCPeerConnectionState),
    Channel(ClientId, u64, Arc<dyn DataChannel>),
    ChannelClosed(ClientId, u64),
}

struct Handler {
    client: ClientId,
    generation: u64,
    events: mpsc::Sender<GwEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self
                .events
                .try_send(GwEvent::Candidate(self.client, self.generation, c));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self
            .events
            .try_send(GwEvent::State(self.client, self.generation, state));
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self
            .events
            .try_send(GwEvent::Channel(self.client, self.generation, dc));
    }
}

struct Conn {
    generation: u64,
    pc: Arc<dyn PeerConnection>,
    channel_open: bool,
    opened_at: tokio::time::Instant,
}

/// What the gateway needs from assist mode.
pub struct Setup {
    pub hub: Arc<Hub>,
    pub data: Arc<data::Service>,
    pub cfg: config::Gateway,
    pub turn: Vec<TurnServer>,
    pub ice_ttl_secs: u64,
    /// The STUN responder's advertised address, if it has one.
    pub stun: Option<SocketAddr>,
    /// Client ids whose tokens were revoked: their connections close at once.
    pub revoked: broadcast::Receiver<ClientId>,
    pub shutdown: CancellationToken,
}

/// Runs the gateway until shutdown.
pub async fn run(setup: Setup, mut inbound: mpsc::Receiver<ToNode>) {
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut gw = Gateway {
        setup,
        conns: HashMap::new(),
        pushes: Arc::new(std::sync::Mutex::new(HashMap::new())),
        next_generation: 0,
        events: events_tx,
        channels: tokio::task::JoinSet::new(),
    };
    let mut revoked = gw.setup.revoked.resubscribe();
    let mut inbox = gw.setup.data.inbox().subscribe();
    let mut data_events = gw.setup.data.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = gw.setup.shutdown.cancelled() => break,
            Some(msg) = inbound.recv() => gw.signal(msg).await,
            Some(ev) = events.recv() => gw.event(ev).await,
            m = inbox.recv() => match m {
                Ok(m) => gw.push_message(&m),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "gateway lagged behind the inbox; clients resync");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            e = data_events.recv() => match e {
                Ok(Event::MessagesDelivered { to, up_to_seq, .. }) => gw.delivered(to, up_to_seq),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            r = revoked.recv() => match r {
                Ok(client) => gw.revoked(client).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = sweep.tick() => gw.sweep().await,
            Some(_) = gw.channels.join_next(), if !gw.channels.is_empty() => {}
        }
    }
    for (_, c) in gw.conns.drain() {
        let _ = c.pc.close().await;
    }
    gw.channels.shutdown().await;
}

/// Per connected client: where pushes go, and its messages not yet reported delivered.
struct Push {
    generation: u64,
    tx: mpsc::Sender<String>,
    waiting: Vec<(PeerId, u64, String)>,
}

struct Gateway {
    setup: Setup,
    conns: HashMap<ClientId, Conn>,
    pushes: Arc<std::sync::Mutex<HashMap<ClientId, Push>>>,
    next_generation: u64,
    events: mpsc::Sender<GwEvent>,
    /// One task per open DataChannel; they end with the gateway.
    channels: tokio::task::JoinSet<()>,
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({ "code": code, "message": message.into() })
}

impl Gateway {
    fn ice_servers(&self, user: &str) -> Vec<RTCIceServer> {
        let mut out = Vec::new();
        if let Some(stun) = self.setup.stun {
            out.push(RTCIceServer {
                urls: vec![format!("stun:{stun}")],
                ..Default::default()
            });
        }
        let ttl = self.setup.ice_ttl_secs;
        let expires = crate::time::unix_secs() + ttl;
        for s in ice::servers(&self.setup.turn, user, ttl, expires) {
            out.push(RTCIceServer {
                urls: s.urls,
                username: s.username,
                credential: s.credential,
            });
        }
        out
    }

    async fn signal(&mut self, msg: ToNode) {
        let client = msg.from;
        match msg.kind.as_str() {
            "offer" => {
                if let Err(e) = self.offer(client, msg.payload).await {
                    self.setup
                        .hub
                        .from_node(&client, "error", error("bad-offer", e));
                }
            }
            "ice-candidate" => {
                let Some(conn) = self.conns.get(&client) else {
                    return;
                };
                // A null candidate (end of candidates) needs nothing.
                if msg.payload.is_null() {
                    return;
                }
                match serde_json::from_value::<RTCIceCandidateInit>(msg.payload) {
                    Ok(c) if c.candidate.is_empty() => {}
                    Ok(c) => {
                        if let Err(e) = conn.pc.add_ice_candidate(c).await {
                            self.setup.hub.from_node(
                                &client,
                                "error",
                                error("bad-candidate", e.to_string()),
                            );
                        }
                    }
                    Err(e) => {
                        self.setup.hub.from_node(
                            &client,
                            "error",
                            error("bad-candidate", e.to_string()),
                        );
                    }
                }
            }
            other => {
                self.setup.hub.from_node(
                    &client,
                    "error",
                    error(
                        "unknown-type",
                        format!("the node answers offers and takes candidates, not {other:?}"),
                    ),
                );
            }
        }
    }

    async fn offer(&mut self, client: ClientId, payload: Value) -> Result<(), String> {
        let offer: RTCSessionDescription = serde_json::from_value(payload)
            .map_err(|e| format!("not a session description: {e}"))?;
        // A new offer replaces the client's connection (a reload, a reconnect).
        if let Some(old) = self.conns.remove(&client) {
            let _ = old.pc.close().await;
        }
        if self.conns.len() >= self.setup.cfg.max_connections.get() {
            return Err(format!(
                "the gateway holds {} connections, the most it may",
                self.setup.cfg.max_connections
            ));
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(self.ice_servers("node"))
                    .build(),
            )
            .with_handler(Arc::new(Handler {
                client,
                generation,
                events: self.events.clone(),
            }))
            .with_udp_addrs(self.setup.cfg.udp_listen.clone())
            .build()
            .await
            .map_err(|e| format!("cannot create a peer connection: {e}"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let answer = async {
            pc.set_remote_description(offer).await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            Ok::<_, webrtc::error::Error>(pc.local_description().await)
        }
        .await;
        let answer = match answer {
            Ok(Some(a)) => a,
            Ok(None) => {
                let _ = pc.close().await;
                return Err("no local description".into());
            }
            Err(e) => {
                let _ = pc.close().await;
                return Err(e.to_string());
            }
        };
        let payload = serde_json::to_value(&answer).map_err(|e| e.to_string())?;
        self.setup.hub.from_node(&client, "answer", payload);
        self.conns.insert(
            client,
            Conn {
                generation,
                pc,
                channel_open: false,
                opened_at: tokio::time::Instant::now(),
            },
        );
        tracing::debug!(%client, "gateway answered an offer");
        Ok(())
    }

    fn current(&self, client: &ClientId, generation: u64) -> bool {
        self.conns
            .get(client)
            .is_some_and(|c| c.generation == generation)
    }

    async fn event(&mut self, ev: GwEvent) {
        match ev {
            GwEvent::Candidate(client, generation, c) => {
                if self.current(&client, generation) {
                    let payload = serde_json::to_value(&c).unwrap_or(Value::Null);
                    self.setup.hub.from_node(&client, "ice-candidate", payload);
                }
            }
            GwEvent::State(client, generation, state) => {
                tracing::debug!(%client, %state, "gateway peer connection");
                if matches!(
                    state,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                ) && self.current(&client, generation)
                    && let Some(c) = self.conns.remove(&client)
                {
                    let _ = c.pc.close().await;
                }
            }
            GwEvent::Channel(client, generation, dc) => {
                if !self.current(&client, generation) {
                    let _ = dc.close().await;
                    return;
                }
                if let Some(c) = self.conns.get_mut(&client) {
                    c.channel_open = true;
                }
                let (tx, rx) = mpsc::channel(PUSH_QUEUE);
                self.lock_pushes().insert(
                    client,
                    Push {
                        generation,
                        tx,
                        waiting: Vec::new(),
                    },
                );
                self.channels.spawn(serve_channel(ChannelTask {
                    client,
                    generation,
                    dc,
                    rx,
                    data: self.setup.data.clone(),
                    pushes: self.pushes.clone(),
                    events: self.events.clone(),
                    shutdown: self.setup.shutdown.clone(),
                }));
            }
            GwEvent::ChannelClosed(client, generation) => {
                {
                    let mut pushes = self.lock_pushes();
                    if pushes
                        .get(&client)
                        .is_some_and(|p| p.generation == generation)
                    {
                        pushes.remove(&client);
                    }
                }
                if self.current(&client, generation)
                    && let Some(c) = self.conns.remove(&client)
                {
                    let _ = c.pc.close().await;
                }
            }
        }
    }

    fn lock_pushes(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Push>> {
        self.pushes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client's token was revoked: its PeerConnection (and with it its DataChannels) closes,
    /// and nothing more is pushed to it.
    async fn revoked(&mut self, client: ClientId) {
        self.lock_pushes().remove(&client);
        if let Some(c) = self.conns.remove(&client) {
            tracing::info!(%client, "token revoked; closing its gateway connection");
            let _ = c.pc.close().await;
        }
    }

    /// Closes connections whose DataChannel did not open in time.
    async fn sweep(&mut self) {
        let limit = Duration::from_secs(self.setup.cfg.connect_timeout_secs.get());
        let stale: Vec<ClientId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.channel_open && c.opened_at.elapsed() > limit)
            .map(|(k, _)| *k)
            .collect();
        for client in stale {
            if let Some(c) = self.conns.remove(&client) {
                tracing::debug!(%client, "gateway connection did not open in time");
                let _ = c.pc.close().await;
            }
        }
    }

    /// A message for one of our light clients arrived: push it if the client is connected (else
    /// it waits in the inbox for the client's `sync`).
    fn push_message(&self, m: &inbox::Message) {
        let Some(client) = &m.via.to_client else {
            return;
        };
        let pushes = self.lock_pushes();
        if let Some(p) = pushes.get(client) {
            // A full queue drops the push; the client's next `sync` fetches it from the inbox.
            let _ = p.tx.try_send(pushed(m));
        }
    }

    /// The outbox reports `to` has everything up to `up_to_seq`: tell the clients whose messages
    /// those were.
    fn delivered(&self, to: PeerId, up_to_seq: u64) {
        let mut pushes = self.lock_pushes();
        for p in pushes.values_mut() {
            let mut ids = Vec::new();
            p.waiting.retain(|(peer, seq, id)| {
                let done = *peer == to && *seq <= up_to_seq;
                if done {
                    ids.push(id.clone());
                }
                !done
            });
            for id in ids {
                let _ =
                    p.tx.try_send(json!({ "type": "delivered", "id": id, "to": to }).to_string());
            }
        }
    }
}

mod channel;

use channel::{ChannelTask, pushed, serve_channel};
