//! NAT traversal in the event loop: external addresses and the reachability they make
//! ([`State`], over [`nat::Tracker`]), AutoNAT v1 re-checks of settled reachability (the v2 client
//! never re-tests an address, rust-libp2p #6203), relay reservations while the node is not
//! public, DCUtR hole punching, and moving a peer from a relayed to a direct connection once
//! there is one (the relayed connections are closed, so new data streams take the direct path).

use std::{collections::HashMap, time::Duration};

use libp2p::{
    Multiaddr, PeerId, autonat,
    core::transport::ListenerId,
    dcutr, kad,
    multiaddr::Protocol,
    relay,
    swarm::{
        ConnectionId,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::time::Instant;

use super::EventLoop;
use crate::{
    nat::{self, Reachability},
    node::Event,
    node::Role,
};

/// How often reservations are checked (and missing ones asked for).
pub const RELAY_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Hole punches tracked at once (one per peer with only relayed connections).
pub const MAX_PUNCHES: usize = 256;
/// Announced addresses of one relayed peer dialled directly at most (see `EventLoop::reverse`).
pub const MAX_REVERSAL_ADDRS: usize = 16;
/// A hole punch with no outcome after this long is forgotten. It outlives the relayed connection:
/// the peer that goes direct first closes it, and the direct connection reaches the other side
/// a moment later.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Counters of NAT traversal.
#[derive(Clone, Default)]
pub struct Metrics {
    pub hole_punches: Family<OutcomeLabels, Counter>,
    pub reservations: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "hole_punches",
            "DCUtR hole punches by outcome (success, failure)",
            m.hole_punches.clone(),
        );
        registry.register(
            "relay_reservations",
            "Relay reservations of this node by outcome (accepted, lost)",
            m.reservations.clone(),
        );
        m
    }
}

/// Traversal state: reachability ([`nat::Tracker`]), relay reservations ([`nat::Relays`]), hole
/// punches in progress (at most [`MAX_PUNCHES`]), and the Kademlia mode that follows reachability.
pub(super) struct State {
    pub(super) nat: nat::Tracker,
    pub(super) relays: nat::Relays,
    /// `relay.reservations`: relays to keep reservations on while not public; 0 = none.
    pub(super) reservations: usize,
    /// `kad.mode = "auto"`: Kademlia serves exactly while the node is public.
    pub(super) kad_auto: bool,
    pub(super) next_check: Instant,
    pub(super) punches: HashMap<PeerId, Punch>,
    pub(super) metrics: Metrics,
    /// `network.external_addresses`: public by configuration, never re-checked.
    pub(super) configured_external: Vec<Multiaddr>,
}

impl State {
    pub(super) fn new(cfg: &crate::node::Config, metrics: Metrics, now: Instant) -> Self {
        Self {
            nat: nat::Tracker::default(),
            relays: nat::Relays::default(),
            reservations: cfg.relay.reservations,
            kad_auto: cfg.kad.mode == crate::dht::Mode::Auto && !cfg.kad_forced_server(),
            // At once: the bootstrap relays are candidates from the start.
            next_check: now,
            punches: HashMap::new(),
            metrics,
            configured_external: cfg.network.external_addresses.clone(),
        }
    }

    /// Whether a node of `role` should hold relay reservations: a desktop not known to be public.
    /// Relay first, as iroh does with its home relay: a desktop behind a NAT can be reached as
    /// soon as a relay accepts it, and AutoNAT only decides whether to keep the reservation.
    pub(super) fn want_relays(&self, role: Role) -> bool {
        role == Role::Desktop
            && self.reservations > 0
            && self.nat.reachability() != Reachability::Public
    }
}

/// A hole punch in progress with a peer we only reach through a relay.
pub(super) struct Punch {
    started: Instant,
    failed_dials: u32,
    /// Announced addresses already dialled directly (see [`EventLoop::reverse`]).
    reversed: Vec<Multiaddr>,
}

impl EventLoop {
    /// An external address was confirmed (by a behaviour, or by us through
    /// [`Self::confirm_external`]). A direct one makes the node public. AutoNAT v1 reports its
    /// address with `/p2p/<us>` appended: that copy is replaced by the plain address.
    pub(super) fn on_external_confirmed(&mut self, address: Multiaddr) {
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

    pub(super) fn on_external_expired(&mut self, address: Multiaddr) {
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

    pub(super) fn set_reachability(&mut self, change: impl FnOnce(&mut nat::Tracker)) {
        let before = self.traversal.nat.reachability();
        change(&mut self.traversal.nat);
        let after = self.traversal.nat.reachability();
        if before != after {
            tracing::info!(%after, "reachability changed");
            self.traversal.next_check = Instant::now();
            if self.traversal.kad_auto {
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

    fn want_relays(&self) -> bool {
        self.traversal.want_relays(self.role)
    }

    /// Keeps `relay.reservations` reservations while the node is not public and drops them when
    /// it is.
    pub(super) fn maintain_relays(&mut self) {
        self.traversal.next_check = Instant::now() + RELAY_CHECK_INTERVAL;
        self.traversal
            .punches
            .retain(|_, p| p.started.elapsed() < PUNCH_TIMEOUT);
        if !self.want_relays() {
            for listener in self.traversal.relays.drain() {
                tracing::info!(?listener, "publicly reachable: dropping relay reservation");
                self.swarm.remove_listener(listener);
            }
            return;
        }
        for (relay, addr) in self
            .traversal
            .relays
            .to_reserve(self.traversal.reservations, Instant::now())
        {
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => {
                    tracing::debug!(%relay, %addr, "asking for a relay reservation");
                    self.traversal.relays.reserving(listener, relay);
                }
                Err(e) => tracing::debug!(%relay, %addr, error = %e, "cannot reserve"),
            }
        }
    }

    /// A relay server we know of: bootstrap peers are candidates from the start, others once
    /// identify showed they speak the relay hop protocol.
    pub(super) fn relay_candidate(&mut self, peer: PeerId, addrs: &[Multiaddr], bootstrap: bool) {
        let usable = addrs
            .iter()
            .find(|a| !nat::is_relayed(a) && nat::scope(a) != Some(nat::Scope::Loopback))
            .or_else(|| addrs.iter().find(|a| !nat::is_relayed(a)));
        if let Some(addr) = usable {
            self.traversal
                .relays
                .add_candidate(peer, addr.clone(), bootstrap);
        }
    }

    pub(super) fn on_new_listen_addr(&mut self, listener: ListenerId, address: &Multiaddr) {
        if let Some(relay) = self.traversal.relays.accepted(listener, address) {
            tracing::info!(%relay, %address, "relay reservation accepted");
            self.traversal
                .metrics
                .reservations
                .get_or_create(&OutcomeLabels {
                    outcome: "accepted",
                })
                .inc();
            self.emit(Event::RelayReservationAccepted {
                relay,
                address: address.clone(),
            });
            // The address other peers reach us at: published now, not within seconds.
            self.presence.publish_now(Instant::now());
        }
    }

    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        if let Some(r) = self.traversal.relays.closed(listener, Instant::now()) {
            tracing::info!(relay = %r.relay, "relay reservation lost");
            self.traversal
                .metrics
                .reservations
                .get_or_create(&OutcomeLabels { outcome: "lost" })
                .inc();
            self.emit(Event::RelayReservationLost { relay: r.relay });
            self.traversal.next_check = Instant::now();
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => tracing::debug!(relay = %relay_peer_id, renewal, "reservation (re)newed"),
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "relayed connection opened");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(src = %src_peer_id, "relayed connection accepted");
            }
        }
    }

    pub(super) fn on_relay_server_event(&mut self, event: relay::Event) {
        tracing::debug!(?event, "relay server");
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.trim.reserved(src_peer_id, true)
            }
            relay::Event::ReservationTimedOut { src_peer_id } => {
                self.trim.reserved(src_peer_id, false)
            }
            _ => {}
        }
    }

    /// A connection came up. To a relay we want a reservation on: ask now. A relayed one to a
    /// peer we have no direct connection with starts a hole punch (DCUtR runs by itself); a
    /// direct one ends the peer's relayed connections.
    pub(super) fn on_connection_kind(&mut self, peer: PeerId, relayed: bool) {
        if !relayed && self.want_relays() && self.traversal.relays.connected(&peer) {
            self.traversal.next_check = Instant::now();
        }
        let Some(state) = self.conn.peers.get(&peer) else {
            return;
        };
        let direct_exists = state.connections.values().any(|c| !c.relayed);
        if relayed {
            if !direct_exists
                && !self.traversal.punches.contains_key(&peer)
                && self.traversal.punches.len() < MAX_PUNCHES
            {
                self.traversal.punches.insert(
                    peer,
                    Punch {
                        started: Instant::now(),
                        failed_dials: 0,
                        reversed: Vec::new(),
                    },
                );
                self.emit(Event::HolePunchStarted { peer_id: peer });
            }
            return;
        }
        let relayed_conns: Vec<ConnectionId> = state
            .connections
            .iter()
            .filter(|(_, c)| c.relayed)
            .map(|(id, _)| *id)
            .collect();
        if let Some(punch) = self.traversal.punches.remove(&peer) {
            // Direct without DCUtR reporting it (the other side dialled, or a plain dial won).
            self.finish_punch(peer, &punch, Ok(()));
        }
        for id in relayed_conns {
            tracing::debug!(%peer, "direct connection up: closing the relayed one");
            self.swarm.close_connection(id);
        }
    }

    /// Connection reversal, which go-libp2p's hole puncher also tries: a peer we reach only through
    /// a relay, and which announced direct addresses over that relayed connection, gets one plain
    /// dial to them. A peer that is publicly reachable, or behind a NAT that forwards unsolicited
    /// connections to a mapped port (full cone), accepts it. DCUtR alone fails there over TCP: its
    /// simultaneous open has both ends upgrade the connection as listeners, but the reachable end
    /// simply accepts the other's SYN as an inbound connection, and the Noise handshake between two
    /// responders times out. Where the peer's NAT filters (the announced address is a mapping made
    /// for someone else), this dial fails and the punch goes on. A peer that announces new
    /// addresses later (identify push, e.g. once AutoNAT confirmed its public address) gets a dial
    /// to those.
    pub(super) fn reverse(&mut self, peer: PeerId, announced: &[Multiaddr]) {
        let Some(punch) = self.traversal.punches.get_mut(&peer) else {
            return;
        };
        let room = MAX_REVERSAL_ADDRS.saturating_sub(punch.reversed.len());
        let new: Vec<Multiaddr> = announced
            .iter()
            .filter(|a| !nat::is_relayed(a) && nat::scope(a) != Some(nat::Scope::Loopback))
            .filter(|a| !punch.reversed.contains(a))
            .take(room)
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        punch.reversed.extend(new.iter().cloned());
        tracing::debug!(%peer, addrs = ?new, "relayed peer announced direct addresses: dialling them");
        let opts = DialOpts::peer_id(peer)
            .addresses(new)
            .condition(PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial a relayed peer directly");
        }
    }

    /// A dial to a peer we are hole punching with failed: one more attempt that did not work.
    pub(super) fn on_dial_failed(&mut self, peer: PeerId) {
        if let Some(p) = self.traversal.punches.get_mut(&peer) {
            p.failed_dials += 1;
        }
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(_) => {
                if let Some(punch) = self.traversal.punches.remove(&peer) {
                    self.finish_punch(peer, &punch, Ok(()));
                }
            }
            Err(e) => {
                let error = e.to_string();
                tracing::debug!(%peer, %error, "hole punch failed");
                if let Some(punch) = self.traversal.punches.remove(&peer) {
                    self.finish_punch(peer, &punch, Err(error));
                }
            }
        }
    }

    fn finish_punch(&mut self, peer: PeerId, punch: &Punch, result: Result<(), String>) {
        let outcome = if result.is_ok() { "success" } else { "failure" };
        let elapsed_ms = punch.started.elapsed().as_millis() as u64;
        tracing::info!(%peer, outcome, elapsed_ms, failed_dials = punch.failed_dials, "hole punch finished");
        self.traversal
            .metrics
            .hole_punches
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.emit(Event::HolePunch {
            peer_id: peer,
            ok: result.is_ok(),
            error: result.err(),
            failed_dials: punch.failed_dials,
            elapsed_ms,
        });
    }

    /// AutoNAT v1's verdict on reachability, re-checked every `autonat.recheck_secs`: a private
    /// verdict drops the confirmed addresses (except configured ones), a public one confirms the
    /// address that was dialled back.
    pub(super) fn on_autonat_v1_event(&mut self, event: autonat::v1::Event) {
        let (old, new) = match event {
            autonat::v1::Event::StatusChanged { old, new } => (old, new),
            autonat::v1::Event::InboundProbe(autonat::v1::InboundProbeEvent::Response {
                peer,
                address,
                ..
            }) => {
                self.close_dial_back(peer, &address);
                return;
            }
            _ => return,
        };
        tracing::info!(?old, ?new, "AutoNAT re-check");
        match new {
            autonat::v1::NatStatus::Private => {
                self.set_reachability(nat::Tracker::judged_private);
                let stale: Vec<Multiaddr> = self
                    .swarm
                    .external_addresses()
                    .filter(|a| {
                        !nat::is_relayed(a) && !self.traversal.configured_external.contains(a)
                    })
                    .cloned()
                    .collect();
                for addr in stale {
                    tracing::info!(%addr, "no longer reachable: dropping the external address");
                    self.set_reachability(|n| n.probe_failed(&addr));
                    self.expire_external(&addr);
                }
            }
            autonat::v1::NatStatus::Public(addr) => {
                let addr: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect();
                if !self.swarm.external_addresses().any(|a| *a == addr) {
                    self.confirm_external(addr);
                }
            }
            autonat::v1::NatStatus::Unknown => {}
        }
    }

    /// Closes the connection a served AutoNAT v1 probe dialled back on, once the answer is out.
    /// Left open, these idle connections pile up (one per re-check) until the per-peer connection
    /// limit refuses the next dial-back, and the client wrongly concludes it is private.
    fn close_dial_back(&mut self, peer: PeerId, address: &Multiaddr) {
        let strip = |a: &Multiaddr| -> Multiaddr {
            a.iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect()
        };
        let target = strip(address);
        let newest = self.conn.peers.get(&peer).and_then(|state| {
            state
                .connections
                .iter()
                .filter(|(_, c)| {
                    c.direction == crate::node::Direction::Outbound
                        && strip(&c.remote_addr) == target
                })
                .map(|(id, _)| *id)
                .max()
        });
        // Only when the peer has another connection: the dial-back must not end the last one.
        let others = self
            .conn
            .peers
            .get(&peer)
            .map_or(0, |s| s.connections.len());
        if let Some(id) = newest
            && others > 1
        {
            tracing::debug!(%peer, %address, "closing the AutoNAT dial-back connection");
            self.swarm.close_connection(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_addr() -> Multiaddr {
        "/ip4/203.0.113.7/tcp/4001".parse().unwrap()
    }

    #[test]
    fn desktops_want_relays_from_the_start_until_they_are_public() {
        let cfg = crate::node::Config::default();
        let mut s = State::new(&cfg, Metrics::default(), Instant::now());
        assert!(
            s.want_relays(Role::Desktop),
            "unknown, just started: relay first"
        );
        assert!(!s.want_relays(Role::Bootstrap), "servers are public");
        s.nat.probe_failed(&public_addr());
        assert_eq!(s.nat.reachability(), Reachability::Private);
        assert!(s.want_relays(Role::Desktop));
        s.nat.confirmed(&public_addr());
        assert_eq!(s.nat.reachability(), Reachability::Public);
        assert!(!s.want_relays(Role::Desktop));
        s.reservations = 0;
        s.nat.expired(&public_addr());
        assert!(!s.want_relays(Role::Desktop), "relay client off");
    }

    #[test]
    fn kademlia_follows_reachability_only_in_auto_mode_on_desktops() {
        let mut cfg = crate::node::Config::default();
        let now = Instant::now();
        assert!(State::new(&cfg, Metrics::default(), now).kad_auto);
        cfg.role = Role::Bootstrap;
        assert!(!State::new(&cfg, Metrics::default(), now).kad_auto);
        cfg.role = Role::Desktop;
        cfg.kad.mode = crate::dht::Mode::Client;
        assert!(!State::new(&cfg, Metrics::default(), now).kad_auto);
    }
}
