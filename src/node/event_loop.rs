//! The event loop: the one task that owns the [`Swarm`]. It routes: [`Command`]s from clients to
//! [`commands`], swarm and behaviour events to the concern they belong to, each with its own state
//! and unit tests that need no swarm:
//!
//! - [`connectivity`]: connected peers, identify, the peer book, bootstrap and redials;
//! - [`queries`]: lookups and dials clients wait for (bounded);
//! - [`presence`]: publishing our signed record, checking others' in arrival order, lookups;
//! - [`names`]: our claimed name (republished), name lookups and their cache;
//! - [`traversal`]: external addresses and reachability, relays, AutoNAT re-checks, hole punching.
//!
//! Nothing here blocks: per-stream work runs in other tasks, signatures on the blocking pool.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::ConnectedPoint,
    identify, kad, mdns,
    metrics::{Metrics, Recorder},
    ping,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

mod commands;
mod connectivity;
mod names;
mod presence;
mod queries;
mod traversal;
mod trim;

pub use presence::{MAX_PENDING_VALIDATIONS, Metrics as PresenceMetrics};
pub use traversal::Metrics as TraversalMetrics;

use super::{
    Error, Event,
    behaviour::{Behaviour, BehaviourEvent},
    command::{Command, Connected, ConnectionInfo, Direction},
    error_chain,
};
use connectivity::Connectivity;
use queries::Queries;

use crate::{
    crypto::LocalKeys,
    dht::{self, record::Reject},
    nat,
    node::{Config, Role},
    store::PeerBook,
};

/// DHT lookups waiting for their answer at once.
pub const MAX_PENDING_FINDS: usize = 256;
/// Dials requested through the client waiting for their outcome at once.
pub const MAX_PENDING_DIALS: usize = 256;
/// Listen addresses taken from one identify message.
pub const MAX_IDENTIFY_ADDRS: usize = 16;
/// How long `start` waits for the first listen address to come up.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before bootstrap peers are dialled again while the node has too few peers; it doubles
/// up to `bootstrap.check_interval_secs`.
pub const REDIAL_BACKOFF_START: Duration = Duration::from_secs(1);

/// A dial from a fresh source port. libp2p-tcp dials from the listen port by default (hole punching
/// needs that); when two peers dial each other at the same moment, as both ends of an mDNS discovery
/// or two restarted nodes redialling their peer books do, the two connects then share one 4-tuple,
/// TCP merges them into a simultaneous open and the security handshake fails on both sides.
fn lan_dial(peer: PeerId, addrs: Vec<Multiaddr>) -> DialOpts {
    DialOpts::peer_id(peer)
        .addresses(addrs)
        .condition(PeerCondition::DisconnectedAndNotDialing)
        .allocate_new_port()
        .build()
}

/// Results of work the loop handed to other tasks.
pub(crate) enum Internal {
    /// Our presence record, signed.
    Signed { record: kad::Record, seq: u64 },
    /// An inbound record checked against `held` (what was stored under its key): store it until
    /// `Some(expires_at)`, leave it (`None`), or why not.
    Validated {
        record: kad::Record,
        held: Option<Vec<u8>>,
        result: Result<Option<u64>, Reject>,
    },
    /// A name record signed (claim, republication or release); `reply` waits for the put.
    NameSigned {
        record: kad::Record,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// A name lookup's records judged.
    NameResolved {
        reply: names::Reply,
        result: Result<Option<super::ResolvedName>, Error>,
    },
    /// A presence lookup's records checked.
    LookupDone {
        reply: oneshot::Sender<Result<Option<dht::record::Presence>, Error>>,
        best: Option<Box<dht::record::Presence>>,
        rejected: Vec<(Reject, Vec<u8>)>,
    },
}

/// Results queued from other tasks before they wait.
const INTERNAL_BUFFER: usize = MAX_PENDING_VALIDATIONS + MAX_PENDING_FINDS + 8;

/// The swarm's one owner. It routes: commands to [`commands`], swarm events to the concern they
/// belong to. Each concern owns its state: [`Connectivity`] (peers, peer book, redials),
/// [`Queries`] (lookups and dials clients wait for), [`presence::State`] (publishing, record
/// checks), [`names::State`] (claim, lookups), [`traversal::State`] (reachability, relays, punches).
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: crate::broadcast::Broadcast<Event>,
    shutdown: CancellationToken,
    /// The listeners `start` opened.
    listeners: Vec<libp2p::core::transport::ListenerId>,
    metrics: Metrics,
    role: Role,
    started: Instant,
    conn: Connectivity,
    queries: Queries,
    join: queries::Join,
    presence: presence::State,
    names: names::State,
    traversal: traversal::State,
    trim: trim::Trim,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
}

/// How clients reach the event loop, and it them.
pub(crate) struct Channels {
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: crate::broadcast::Broadcast<Event>,
    pub(crate) shutdown: CancellationToken,
}

/// What the event loop keeps beside the swarm: the peer book, the presence sequence number, the keys, and the
/// metrics it records into.
pub(crate) struct Parts {
    pub(crate) peer_book: PeerBook,
    pub(crate) presence_seq: crate::store::PresenceSeq,
    pub(crate) name_claim: crate::store::NameClaim,
    pub(crate) keys: Arc<LocalKeys>,
    pub(crate) metrics: Metrics,
    pub(crate) presence_metrics: presence::Metrics,
    pub(crate) traversal_metrics: traversal::Metrics,
    /// `commucat_connections_trimmed_total`.
    pub(crate) trimmed: prometheus_client::metrics::counter::Counter,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: &Config,
        channels: Channels,
        parts: Parts,
    ) -> Self {
        let local = *swarm.local_peer_id();
        let now = Instant::now();
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_BUFFER);
        Self {
            swarm,
            commands: channels.commands,
            events: channels.events,
            shutdown: channels.shutdown,
            listeners: Vec::new(),
            metrics: parts.metrics,
            role: cfg.role,
            started: Instant::now(),
            conn: Connectivity::new(cfg, local, parts.peer_book, now),
            queries: Queries::default(),
            join: queries::Join::new(&cfg.kad, now),
            presence: presence::State::new(
                &cfg.presence,
                parts.keys,
                parts.presence_seq,
                parts.presence_metrics,
                now,
            ),
            names: names::State::new(&cfg.presence, parts.name_claim, now),
            traversal: traversal::State::new(cfg, parts.traversal_metrics, now),
            trim: trim::Trim::new(cfg, parts.trimmed),
            internal_tx,
            internal_rx,
        }
    }

    /// Opens the listeners, announces configured external addresses and dials bootstrap peers and
    /// remembered peers. Fails when no listener could be opened.
    pub(crate) async fn start(
        &mut self,
        listen: &[Multiaddr],
        external: &[Multiaddr],
    ) -> Result<(), Error> {
        let mut failures = Vec::new();
        for addr in listen {
            let result = super::transport::check_tcp_port_free(addr)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "the port is in use by another process".to_string()
                    }
                    _ => e.to_string(),
                })
                .and_then(|()| {
                    self.swarm
                        .listen_on(addr.clone())
                        .map(|id| self.listeners.push(id))
                        .map_err(|e| error_chain(&e))
                });
            if let Err(e) = result {
                tracing::warn!(%addr, error = %e, "cannot listen");
                failures.push(format!("{addr}: {e}"));
            }
        }
        if failures.len() == listen.len() {
            return Err(Error::Listen(failures.join("; ")));
        }
        for addr in external {
            // Configured addresses count as confirmed: the node is public from the start.
            self.confirm_external(addr.clone());
        }
        if self.role == Role::Bootstrap {
            // Serve circuits whether or not an external address is confirmed yet: a bootstrap
            // node is public by definition.
            if let Some(server) = self.swarm.behaviour_mut().relay_server.as_mut() {
                server.set_status(Some(libp2p::relay::Status::Enable));
            }
        }
        for (peer, addr) in self.conn.bootstrap.clone() {
            self.relay_candidate(peer, &[addr], true);
        }
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while self.swarm.listeners().next().is_none() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.on_swarm_event(event),
                Err(_) => {
                    return Err(Error::Listen(format!(
                        "no listener came up within {LISTEN_TIMEOUT:?}"
                    )));
                }
            }
        }
        self.dial_known_peers();
        Ok(())
    }

    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = tokio::time::sleep_until(self.conn.redial.next()) => self.maintain_connectivity(),
                () = tokio::time::sleep_until(self.presence.next_publish) => self.publish_presence(),
                () = tokio::time::sleep_until(self.presence.next_rotation) => self.rotate_keys(),
                () = tokio::time::sleep_until(self.names.next_publish) => self.republish_name(),
                () = tokio::time::sleep_until(self.traversal.next_check) => self.maintain_relays(),
                () = tokio::time::sleep_until(self.trim.next_check) => self.trim_connections(),
            }
        }
        // Listeners are closed explicitly: libp2p's memory transport keeps a port taken until its
        // listener is removed, even after the swarm is dropped, so a node restarted in the same
        // process could not listen on its address again.
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
        tracing::debug!("event loop stopped");
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Signed { record, seq } => self.on_signed(record, seq),
            Internal::Validated {
                record,
                held,
                result,
            } => self.on_validated(record, held, result),
            Internal::NameSigned { record, reply } => self.on_name_signed(record, reply),
            Internal::NameResolved { reply, result } => self.on_name_resolved(reply, result),
            Internal::LookupDone {
                reply,
                best,
                rejected,
            } => {
                for (reason, key) in rejected {
                    self.reject(reason, &key);
                }
                let _ = reply.send(Ok(best.map(|b| *b)));
            }
        }
    }

    /// Peers in the Kademlia routing table.
    fn routing_table_size(&mut self) -> usize {
        dht::routing_table_size(&mut self.swarm.behaviour_mut().kad)
    }

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                let local = *self.swarm.local_peer_id();
                tracing::info!("listening on {address}/p2p/{local}");
                self.on_new_listen_addr(listener_id, &address);
                self.presence_dirty();
                self.emit(Event::Listening { address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.presence_dirty();
                self.emit(Event::ListenAddrExpired { address });
            }
            SwarmEvent::ListenerClosed {
                addresses,
                reason,
                listener_id,
            } => {
                let reservation = self.traversal.relays.is_reservation(listener_id);
                match reason {
                    Err(e) if reservation => {
                        tracing::debug!(?addresses, error = %e, "relay listener closed")
                    }
                    Err(e) => tracing::warn!(?addresses, error = %e, "listener closed"),
                    Ok(()) => {}
                }
                self.on_listener_closed(listener_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.conn.closed(&peer_id, connection_id, num_established);
                if num_established == 0 {
                    self.trim.disconnected(&peer_id);
                    self.emit(Event::PeerDisconnected { peer_id });
                    let connected = self.swarm.connected_peers().count();
                    self.conn.redial.lost_peer(Instant::now(), connected);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let error = error_chain(&error); // a denied dial's Display is just "Dial error"
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                if let Some(peer) = peer_id {
                    self.on_dial_failed(peer);
                }
                if let Some(dial) = self.queries.take_dial(&connection_id) {
                    let _ = dial.reply.send(Err(Error::Dial(error)));
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_external_confirmed(address),
            SwarmEvent::ExternalAddrExpired { address } => self.on_external_expired(address),
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer_id: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let (remote_addr, direction) = match endpoint {
            ConnectedPoint::Dialer { address, .. } => (address.clone(), Direction::Outbound),
            ConnectedPoint::Listener { send_back_addr, .. } => {
                (send_back_addr.clone(), Direction::Inbound)
            }
        };
        let relayed = endpoint.is_relayed();
        tracing::debug!(peer = %peer_id, %remote_addr, ?direction, relayed, "connected");
        let info = ConnectionInfo {
            remote_addr: remote_addr.clone(),
            direction,
            relayed,
        };
        let first = self.conn.connected(peer_id, id, info);
        self.trim_connections();
        if let Some(dial) = self.queries.take_dial(&id) {
            let _ = dial.reply.send(Ok(Connected {
                peer_id: dial.peer,
                remote_addr: remote_addr.clone(),
                already_connected: false,
            }));
        }
        if first {
            self.emit(Event::PeerConnected {
                peer_id,
                address: remote_addr,
                direction,
                relayed,
            });
        }
        self.on_connection_kind(peer_id, relayed);
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.metrics.record(&event);
                match event {
                    // What a peer tells us, pulled or pushed by it.
                    identify::Event::Received {
                        peer_id,
                        connection_id,
                        info,
                    } => self.on_identified(peer_id, connection_id, info),
                    // `Pushed` carries *our own* info, pushed to the peer: taking it for the
                    // peer's filed our addresses under its id (peer book, Kademlia), and a
                    // restarted node redialled that peer at its own old ports.
                    identify::Event::Pushed { .. }
                    | identify::Event::Sent { .. }
                    | identify::Event::Error { .. } => {}
                }
            }
            BehaviourEvent::Ping(event) => {
                self.metrics.record(&event);
                match event.result {
                    Ok(rtt) => {
                        if let Some(state) = self.conn.peers.get_mut(&event.peer) {
                            state.rtt = Some(rtt);
                        }
                    }
                    // Not answered: a held connection would never idle out (`node::hold`).
                    Err(ping::Failure::Timeout | ping::Failure::Other { .. }) => {
                        (self.swarm.behaviour_mut().hold).ping_failed(event.peer, event.connection)
                    }
                    Err(ping::Failure::Unsupported) => {}
                }
            }
            BehaviourEvent::Kad(event) => {
                self.metrics.record(&event);
                self.on_kad_event(event);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    self.emit(Event::MdnsDiscovered {
                        peer_id: peer,
                        address: addr.clone(),
                    });
                    by_peer.entry(peer).or_default().push(addr);
                }
                // mDNS only discovers; dialling is ours. Identify then tells whether the peer
                // serves Kademlia and belongs in the routing table. Both sides discover each other
                // at the same moment and dial: from a fresh port, so that the two TCP dials do not
                // collide into one simultaneous open (see `lan_dial`).
                for (peer, addrs) in by_peer {
                    if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    if let Err(e) = self.swarm.dial(lan_dial(peer, addrs)) {
                        tracing::debug!(%peer, error = %e, "cannot dial mDNS peer");
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::AutonatClient(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                tracing::debug!(addr = %tested_addr, %server, ok = result.is_ok(), "AutoNAT probe");
                // Candidates without an IP (`/p2p/<us>` seen on relayed connections) and relayed
                // ones say nothing about this node's own reachability.
                if result.is_err()
                    && nat::scope(&tested_addr).is_some()
                    && !nat::is_relayed(&tested_addr)
                {
                    self.set_reachability(|nat| nat.probe_failed(&tested_addr));
                }
                self.emit(Event::AutonatProbe {
                    address: tested_addr,
                    server,
                    ok: result.is_ok(),
                    error: result.err().map(|e| e.to_string()),
                });
            }
            BehaviourEvent::AutonatServer(event) => {
                tracing::debug!(client = %event.client, addr = %event.tested_addr, ok = event.result.is_ok(), "served AutoNAT probe");
            }
            BehaviourEvent::AutonatRecheck(event) => self.on_autonat_v1_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::RelayServer(event) => {
                self.metrics.record(&event);
                self.on_relay_server_event(event);
            }
            BehaviourEvent::Dcutr(event) => {
                self.metrics.record(&event);
                self.on_dcutr_event(event);
            }
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Stream(()) => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        record: Some(record),
                        ..
                    },
            } => self.validate_inbound(record),
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetRecord(result) if self.names.owns(&id) => {
                    self.on_name_record(id, result, step.last)
                }
                kad::QueryResult::GetRecord(result) => self.on_get_record(id, result, step.last),
                kad::QueryResult::PutRecord(result) if self.names.owns_put(&id) => {
                    self.on_name_put(id, result)
                }
                kad::QueryResult::PutRecord(result) => match result {
                    Ok(_) => tracing::debug!("presence record stored in the DHT"),
                    Err(e) => {
                        tracing::debug!(error = ?e, "presence record not stored by enough peers")
                    }
                },
                kad::QueryResult::GetClosestPeers(Ok(ok)) => self.finish_find(id, ok.peers),
                kad::QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                    peers,
                    ..
                })) => self.finish_find(id, peers),
                kad::QueryResult::Bootstrap(result) => {
                    tracing::debug!(ok = result.is_ok(), "kademlia bootstrap step");
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    self.join.on_step(kad, id, &step, Instant::now());
                }
                _ => {}
            },
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer,
                addresses,
                ..
            } => self.emit(Event::RoutingUpdated {
                peer_id: peer,
                is_new_peer,
                addresses: addresses.into_vec(),
            }),
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(mode = %new_mode, "kademlia mode changed");
                self.emit(Event::KadModeChanged {
                    mode: new_mode.to_string(),
                });
            }
            _ => {}
        }
    }
}
