//! The event loop: the one task that owns the [`Swarm`]. It reacts to swarm events (identify
//! feeds Kademlia and the peer book, mDNS discoveries are dialled, AutoNAT sets reachability) and
//! answers [`Command`]s from clients. Nothing here blocks: per-stream work runs in other tasks.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::ConnectedPoint,
    identify, kad, mdns,
    metrics::{Metrics, Recorder},
    multiaddr::Protocol,
    ping,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod commands;
mod presence;
mod traversal;

pub use presence::{MAX_PENDING_VALIDATIONS, Metrics as PresenceMetrics};
pub use traversal::{Metrics as TraversalMetrics, RELAY_CHECK_INTERVAL};

use super::{
    Error, Event,
    behaviour::{Behaviour, BehaviourEvent},
    command::{Command, Connected, ConnectionInfo, Direction, FoundPeer},
};
use crate::{
    crypto::LocalKeys,
    dht::{self, record::Reject},
    nat,
    net::peer_id_of,
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

/// An error and its sources, without the empty messages of libp2p's boxing layers.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}

/// Results of work the loop handed to other tasks.
pub(crate) enum Internal {
    /// Our presence record, signed.
    Signed { record: kad::Record, seq: u64 },
    /// An inbound record checked: `(seq, expires_at)` or why not.
    Validated {
        record: kad::Record,
        result: Result<(u64, u64), Reject>,
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

struct PeerState {
    connections: HashMap<ConnectionId, ConnectionInfo>,
    rtt: Option<Duration>,
    agent_version: Option<String>,
    protocols: Vec<String>,
    listen_addrs: Vec<Multiaddr>,
}

struct PendingFind {
    target: PeerId,
    started: Instant,
    reply: oneshot::Sender<Result<FoundPeer, Error>>,
}

struct PendingDial {
    peer: PeerId,
    reply: oneshot::Sender<Result<Connected, Error>>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
    /// The listeners `start` opened.
    listeners: Vec<libp2p::core::transport::ListenerId>,
    peer_book: PeerBook,
    metrics: Metrics,
    role: Role,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    min_peers: usize,
    check_interval: Duration,
    redial_backoff: Duration,
    next_redial: tokio::time::Instant,
    redial_on_start: usize,
    started: Instant,
    peers: HashMap<PeerId, PeerState>,
    finds: HashMap<kad::QueryId, PendingFind>,
    dials: HashMap<ConnectionId, PendingDial>,
    nat: nat::Tracker,
    relays: nat::Relays,
    relay_reservations: usize,
    /// `kad.mode = "auto"`: Kademlia serves exactly while the node is public.
    kad_auto: bool,
    next_relay_check: tokio::time::Instant,
    punches: HashMap<PeerId, traversal::Punch>,
    traversal_metrics: traversal::Metrics,
    configured_external: Vec<Multiaddr>,
    keys: Arc<LocalKeys>,
    meta: sled::Tree,
    presence_ttl: Duration,
    republish_interval: Duration,
    next_publish: tokio::time::Instant,
    /// When the key bundle is due to be replaced (`data.key_rotation_secs`).
    next_rotation: tokio::time::Instant,
    publishing: bool,
    validations: usize,
    lookups: HashMap<kad::QueryId, presence::Lookup>,
    presence_metrics: presence::Metrics,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: &Config,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<Event>,
        shutdown: CancellationToken,
        peer_book: PeerBook,
        metrics: Metrics,
        keys: Arc<LocalKeys>,
        meta: sled::Tree,
        presence_metrics: presence::Metrics,
        traversal_metrics: traversal::Metrics,
    ) -> Self {
        let local = *swarm.local_peer_id();
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_BUFFER);
        let next_rotation = presence::rotation_deadline(&keys);
        let bootstrap = cfg
            .bootstrap
            .peers
            .iter()
            .filter_map(|a| Some((peer_id_of(a)?, a.clone())))
            .filter(|(p, _)| *p != local)
            .collect();
        Self {
            swarm,
            commands,
            events,
            shutdown,
            listeners: Vec::new(),
            peer_book,
            metrics,
            role: cfg.role,
            bootstrap,
            min_peers: cfg.bootstrap.min_peers,
            check_interval: Duration::from_secs(cfg.bootstrap.check_interval_secs),
            redial_backoff: REDIAL_BACKOFF_START,
            next_redial: tokio::time::Instant::now() + REDIAL_BACKOFF_START,
            redial_on_start: cfg.peerbook.redial_on_start,
            started: Instant::now(),
            peers: HashMap::new(),
            finds: HashMap::new(),
            dials: HashMap::new(),
            nat: nat::Tracker::default(),
            relays: nat::Relays::default(),
            relay_reservations: cfg.relay.reservations,
            kad_auto: cfg.kad.mode == crate::dht::Mode::Auto && !cfg.kad_forced_server(),
            next_relay_check: tokio::time::Instant::now() + RELAY_CHECK_INTERVAL,
            punches: HashMap::new(),
            traversal_metrics,
            configured_external: cfg.network.external_addresses.clone(),
            keys,
            meta,
            presence_ttl: Duration::from_secs(cfg.presence.ttl_secs),
            republish_interval: Duration::from_secs(cfg.presence.republish_secs),
            next_publish: tokio::time::Instant::now() + presence::FIRST_PUBLISH_DELAY,
            next_rotation,
            publishing: false,
            validations: 0,
            lookups: HashMap::new(),
            presence_metrics,
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
        for (peer, addr) in self.bootstrap.clone() {
            self.relay_candidate(peer, &[addr], true);
        }
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
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
                () = tokio::time::sleep_until(self.next_redial) => self.maintain_connectivity(),
                () = tokio::time::sleep_until(self.next_publish) => self.publish_presence(),
                () = tokio::time::sleep_until(self.next_rotation) => self.rotate_keys(),
                () = tokio::time::sleep_until(self.next_relay_check) => self.maintain_relays(),
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
            Internal::Validated { record, result } => self.on_validated(record, result),
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

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// At start: bootstrap peers and the peer book's DHT servers go into the routing table, then
    /// [`Self::redial`]. kad bootstraps by itself (throttled) once `add_address` has put the first
    /// peers into a small routing table, and then every `kad.periodic_bootstrap_secs`.
    fn dial_known_peers(&mut self) {
        for (peer, addr) in self.bootstrap.clone() {
            let transport_addr: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, transport_addr);
        }
        for (peer, entry) in self.remembered() {
            if entry.kad_server {
                for addr in entry.addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
        }
        let (bootstrap, remembered) = self.redial();
        tracing::info!(bootstrap, remembered, "dialling known peers");
    }

    /// Peer-book entries other than ourselves and the bootstrap peers, most recently seen first.
    fn remembered(&self) -> Vec<(PeerId, crate::store::peerbook::Entry)> {
        let local = *self.swarm.local_peer_id();
        let bootstrap: HashSet<PeerId> = self.bootstrap.iter().map(|(p, _)| *p).collect();
        match self.peer_book.all() {
            Ok(all) => all
                .into_iter()
                .filter(|(p, e)| *p != local && !bootstrap.contains(p) && !e.addrs.is_empty())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer book");
                Vec::new()
            }
        }
    }

    /// Dials the bootstrap peers and up to `peerbook.redial_on_start` remembered peers that are
    /// neither connected nor being dialled. Returns how many of each were dialled.
    fn redial(&mut self) -> (usize, usize) {
        let mut bootstrap = 0;
        for (peer, addr) in self.bootstrap.clone() {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            // From the listen port: the bootstrap node then observes our listen address, which
            // AutoNAT tests. Bootstrap nodes do not dial desktops, so no simultaneous open.
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if self.swarm.dial(opts).is_ok() {
                bootstrap += 1;
            }
        }
        let mut remembered = 0;
        for (peer, entry) in self.remembered() {
            if remembered == self.redial_on_start {
                break;
            }
            if self.swarm.is_connected(&peer) {
                continue;
            }
            match self.swarm.dial(lan_dial(peer, entry.addrs)) {
                Ok(()) => remembered += 1,
                Err(e) => tracing::debug!(%peer, error = %e, "cannot redial remembered peer"),
            }
        }
        (bootstrap, remembered)
    }

    /// While fewer than `bootstrap.min_peers` peers are connected, redials bootstrap and remembered
    /// peers, backing off from 1 s up to `bootstrap.check_interval_secs`; once enough peers are
    /// connected, checks every `check_interval_secs`.
    fn maintain_connectivity(&mut self) {
        let now = tokio::time::Instant::now();
        if self.swarm.connected_peers().count() >= self.min_peers {
            self.redial_backoff = REDIAL_BACKOFF_START;
            self.next_redial = now + self.check_interval;
            return;
        }
        let (bootstrap, remembered) = self.redial();
        tracing::debug!(bootstrap, remembered, backoff = ?self.redial_backoff, "too few peers: redialling");
        self.next_redial = now + self.redial_backoff;
        self.redial_backoff = (self.redial_backoff * 2).min(self.check_interval);
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
                let reservation = self.relays.is_reservation(listener_id);
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
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    self.emit(Event::PeerDisconnected { peer_id });
                    if self.swarm.connected_peers().count() < self.min_peers {
                        // Start over: try to get peers back within a second, not after the
                        // backoff reached while we were merely short of peers.
                        self.redial_backoff = REDIAL_BACKOFF_START;
                        self.next_redial = self
                            .next_redial
                            .min(tokio::time::Instant::now() + REDIAL_BACKOFF_START);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(peer) = peer_id {
                    self.on_dial_failed(peer);
                }
                if let Some(dial) = self.dials.remove(&connection_id) {
                    let _ = dial.reply.send(Err(Error::Dial(error.to_string())));
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.on_external_confirmed(address),
            SwarmEvent::ExternalAddrExpired { address } => self.on_external_expired(address),
            _ => {}
        }
    }

    /// An external address was confirmed (by a behaviour, or by us through
    /// [`Self::confirm_external`]). A direct one makes the node public. AutoNAT v1 reports its
    /// address with `/p2p/<us>` appended: that copy is replaced by the plain address.
    fn on_external_confirmed(&mut self, address: Multiaddr) {
        if !nat::is_relayed(&address)
            && matches!(address.iter().last(), Some(Protocol::P2p(p)) if p == *self.swarm.local_peer_id())
        {
            self.swarm.remove_external_address(&address);
            let mut plain = address;
            plain.pop();
            if !self.swarm.external_addresses().any(|a| *a == plain) {
                self.confirm_external(plain);
            }
            return;
        }
        tracing::info!(%address, "external address confirmed");
        if !nat::is_relayed(&address) {
            self.set_reachability(|nat| nat.confirmed(&address));
        }
        self.push_identify();
        self.presence_dirty();
        self.emit(Event::ExternalAddrConfirmed { address });
    }

    fn on_external_expired(&mut self, address: Multiaddr) {
        tracing::info!(%address, "external address expired");
        if !nat::is_relayed(&address) {
            self.set_reachability(|nat| nat.expired(&address));
        }
        self.push_identify();
        self.presence_dirty();
        self.emit(Event::ExternalAddrExpired { address });
    }

    /// Sends connected peers our addresses again (identify push). libp2p pushes when listen
    /// addresses change, not external ones; but a newly confirmed public address is what a peer
    /// that reaches us through a relay needs to dial us directly (`traversal::reverse`).
    fn push_identify(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if !peers.is_empty() {
            self.swarm.behaviour_mut().identify.push(peers);
        }
    }

    /// Adds an external address ourselves (the swarm reports only those that behaviours add).
    pub(super) fn confirm_external(&mut self, address: Multiaddr) {
        self.swarm.add_external_address(address.clone());
        self.on_external_confirmed(address);
    }

    /// Removes an external address ourselves, as [`Self::confirm_external`].
    pub(super) fn expire_external(&mut self, address: &Multiaddr) {
        self.swarm.remove_external_address(address);
        self.on_external_expired(address.clone());
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
        let state = self.peers.entry(peer_id).or_insert_with(|| PeerState {
            connections: HashMap::new(),
            rtt: None,
            agent_version: None,
            protocols: Vec::new(),
            listen_addrs: Vec::new(),
        });
        let first = state.connections.is_empty();
        state.connections.insert(id, info);
        if let Some(dial) = self.dials.remove(&id) {
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

    fn set_reachability(&mut self, change: impl FnOnce(&mut nat::Tracker)) {
        let before = self.nat.reachability();
        change(&mut self.nat);
        let after = self.nat.reachability();
        if before != after {
            tracing::info!(%after, "reachability changed");
            self.next_relay_check = tokio::time::Instant::now();
            if self.kad_auto {
                self.swarm.behaviour_mut().kad.set_mode(Some(
                    if after == nat::Reachability::Public {
                        kad::Mode::Server
                    } else {
                        kad::Mode::Client
                    },
                ));
            }
            self.emit(Event::ReachabilityChanged {
                reachability: after,
            });
        }
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
                if let ping::Event {
                    peer,
                    result: Ok(rtt),
                    ..
                } = event
                    && let Some(state) = self.peers.get_mut(&peer)
                {
                    state.rtt = Some(rtt);
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

    fn on_identified(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        info: identify::Info,
    ) {
        let Some(state) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let remote = state
            .connections
            .get(&connection_id)
            .map(|c| c.remote_addr.clone())
            .unwrap_or_else(|| {
                Multiaddr::empty().with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
            });
        let relayed = state
            .connections
            .get(&connection_id)
            .is_some_and(|c| c.relayed);
        let mut addrs = nat::usable_from(&remote, info.listen_addrs);
        addrs.truncate(MAX_IDENTIFY_ADDRS);
        let kad_server = info.protocols.contains(&dht::PROTOCOL);
        state.agent_version = Some(info.agent_version.clone());
        state.protocols = info.protocols.iter().map(ToString::to_string).collect();
        state.listen_addrs = addrs.clone();
        if kad_server {
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer_id, addr.clone());
            }
        }
        if !addrs.is_empty()
            && let Err(e) = self.peer_book.record(
                &peer_id,
                addrs.clone(),
                Some(info.agent_version.clone()),
                kad_server,
            )
        {
            tracing::warn!(peer = %peer_id, error = %e, "cannot update the peer book");
        }
        if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
            self.relay_candidate(peer_id, &addrs, false);
        }
        if relayed {
            self.reverse(peer_id, &addrs);
        }
        self.emit(Event::PeerIdentified {
            peer_id,
            agent_version: info.agent_version,
            listen_addrs: addrs,
            kad_server,
        });
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
                kad::QueryResult::GetRecord(result) => self.on_get_record(id, result, step.last),
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
