//! Connectivity: the peers connected now (their connections, RTT and what identify said), the peer
//! book, the bootstrap list, and the redial schedule ([`Redial`]) that keeps at least
//! `bootstrap.min_peers` peers connected. [`Connectivity`] owns that state and is tested without a
//! swarm; the event loop feeds it connection events and does the dialling it asks for.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, identify,
    multiaddr::Protocol,
    swarm::{
        ConnectionId,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::time::Instant;

use super::{EventLoop, MAX_IDENTIFY_ADDRS, REDIAL_BACKOFF_START, lan_dial};
use crate::{
    dht, nat,
    net::peer_id_of,
    node::{Config, ConnectionInfo, Event},
    store::PeerBook,
};

/// What the node knows of a connected peer.
pub(super) struct PeerState {
    pub(super) connections: HashMap<ConnectionId, ConnectionInfo>,
    pub(super) rtt: Option<Duration>,
    pub(super) agent_version: Option<String>,
    pub(super) protocols: Vec<String>,
    pub(super) listen_addrs: Vec<Multiaddr>,
    /// When its first connection (of those open now) came up.
    pub(super) connected_at: Instant,
}

/// When to check the number of connected peers next, and whether to redial then: while fewer than
/// `min_peers` are connected, every 1 s, 2 s, 4 s … up to `check_interval`; once enough are,
/// every `check_interval`. Losing a peer below the minimum starts over from 1 s.
#[derive(Debug)]
pub(super) struct Redial {
    min_peers: usize,
    check_interval: Duration,
    backoff: Duration,
    next: Instant,
}

impl Redial {
    pub(super) fn new(min_peers: usize, check_interval: Duration, now: Instant) -> Self {
        Self {
            min_peers,
            check_interval,
            backoff: REDIAL_BACKOFF_START,
            next: now + REDIAL_BACKOFF_START,
        }
    }

    /// The next check.
    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// At the check, with `connected` peers: how many peers to dial now (the shortfall, 0 when
    /// there are enough). Schedules the next check.
    pub(super) fn due(&mut self, now: Instant, connected: usize) -> usize {
        if connected >= self.min_peers {
            self.backoff = REDIAL_BACKOFF_START;
            self.next = now + self.check_interval;
            return 0;
        }
        self.next = now + self.backoff;
        self.backoff = (self.backoff * 2).min(self.check_interval);
        self.min_peers - connected
    }

    /// A peer disconnected, leaving `connected`: below the minimum, try to get peers back within a
    /// second, not after the backoff reached while we were merely short of peers.
    pub(super) fn lost_peer(&mut self, now: Instant, connected: usize) {
        if connected < self.min_peers {
            self.backoff = REDIAL_BACKOFF_START;
            self.next = self.next.min(now + REDIAL_BACKOFF_START);
        }
    }
}

/// The connected peers, the peer book and the bootstrap list, and the redial schedule.
pub(super) struct Connectivity {
    pub(super) peers: HashMap<PeerId, PeerState>,
    pub(super) peer_book: PeerBook,
    /// Bootstrap peers other than ourselves, with their addresses.
    pub(super) bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Remembered peers dialled at start and while too few are connected.
    pub(super) redial_on_start: usize,
    pub(super) redial: Redial,
}

impl Connectivity {
    pub(super) fn new(cfg: &Config, local: PeerId, peer_book: PeerBook, now: Instant) -> Self {
        Self {
            peers: HashMap::new(),
            peer_book,
            bootstrap: cfg
                .bootstrap
                .peers
                .iter()
                .filter_map(|a| Some((peer_id_of(a)?, a.clone())))
                .filter(|(p, _)| *p != local)
                .collect(),
            redial_on_start: cfg.peerbook.redial_on_start,
            redial: Redial::new(
                cfg.bootstrap.min_peers,
                Duration::from_secs(cfg.bootstrap.check_interval_secs.get()),
                now,
            ),
        }
    }

    /// A connection to `peer` is up; true if it is the first one.
    pub(super) fn connected(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        info: ConnectionInfo,
    ) -> bool {
        let state = self.peers.entry(peer).or_insert_with(|| PeerState {
            connections: HashMap::new(),
            rtt: None,
            agent_version: None,
            protocols: Vec::new(),
            listen_addrs: Vec::new(),
            connected_at: Instant::now(),
        });
        let first = state.connections.is_empty();
        state.connections.insert(id, info);
        first
    }

    /// A connection to `peer` closed, `remaining` are still established.
    pub(super) fn closed(&mut self, peer: &PeerId, id: ConnectionId, remaining: u32) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.connections.remove(&id);
        }
        if remaining == 0 {
            self.peers.remove(peer);
        }
    }

    /// Peer-book entries other than `local` and the bootstrap peers, most recently seen first.
    pub(super) fn remembered(&self, local: PeerId) -> Vec<(PeerId, crate::store::peerbook::Entry)> {
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
}

impl EventLoop {
    /// What a peer told us about itself (identify, pulled or pushed by it): its addresses go into
    /// the peer book and, if it serves the DHT, the routing table; relays become candidates.
    pub(super) fn on_identified(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        info: identify::Info,
    ) {
        let Some(state) = self.conn.peers.get_mut(&peer_id) else {
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
        if kad_server && dht::has_room_for(&mut self.swarm.behaviour_mut().kad, peer_id) {
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer_id, addr.clone());
            }
        }
        if !addrs.is_empty()
            && let Err(e) = self.conn.peer_book.record(
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

    /// At start: bootstrap peers and the peer book's DHT servers go into the routing table, then
    /// [`Self::redial`]. kad bootstraps by itself (throttled) once `add_address` has put the first
    /// peers into a small routing table, and then every `kad.periodic_bootstrap_secs`.
    pub(super) fn dial_known_peers(&mut self) {
        for (peer, addr) in self.conn.bootstrap.clone() {
            let transport_addr: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, transport_addr);
        }
        for (peer, entry) in self.conn.remembered(*self.swarm.local_peer_id()) {
            if entry.kad_server {
                for addr in entry.addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
        }
        let (bootstrap, remembered) = self.redial(usize::MAX);
        tracing::info!(bootstrap, remembered, "dialling known peers");
    }

    /// Dials the bootstrap peers, then up to `peerbook.redial_on_start` remembered peers, that are
    /// neither connected nor being dialled: `limit` in all. Returns how many of each were dialled.
    fn redial(&mut self, limit: usize) -> (usize, usize) {
        let mut bootstrap = 0;
        for (peer, addr) in self.conn.bootstrap.clone() {
            if bootstrap == limit {
                return (bootstrap, 0);
            }
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
        for (peer, entry) in self.conn.remembered(*self.swarm.local_peer_id()) {
            if remembered == self.conn.redial_on_start || bootstrap + remembered == limit {
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

    /// At the redial schedule's deadline: while fewer than `bootstrap.min_peers` peers are
    /// connected, dials as many bootstrap and remembered peers as are missing (see [`Redial`]).
    /// Not more: the connections idle out unless they are used, and a node that dialled every
    /// known peer each time would open and close a score of connections every idle timeout.
    pub(super) fn maintain_connectivity(&mut self) {
        let connected = self.swarm.connected_peers().count();
        let missing = self.conn.redial.due(tokio::time::Instant::now(), connected);
        if missing > 0 {
            let (bootstrap, remembered) = self.redial(missing);
            tracing::debug!(bootstrap, remembered, "too few peers: redialling");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Direction;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn redial_backs_off_while_short_of_peers_and_relaxes_once_enough() {
        let t0 = Instant::now();
        let mut r = Redial::new(4, Duration::from_secs(30), t0);
        assert_eq!(r.next(), t0 + SEC);
        let mut now = r.next();
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert_eq!(r.due(now, 1), 3, "short of three peers: redial three");
            waits.push((r.next() - now).as_secs());
            now = r.next();
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(r.due(now, 4), 0, "enough peers: no redial");
        assert_eq!(r.next(), now + Duration::from_secs(30));
    }

    #[test]
    fn losing_a_peer_below_the_minimum_starts_over() {
        let t0 = Instant::now();
        let mut r = Redial::new(2, Duration::from_secs(30), t0);
        assert_eq!(r.due(t0, 3), 0);
        assert_eq!(r.next(), t0 + Duration::from_secs(30));
        r.lost_peer(t0 + 5 * SEC, 2);
        assert_eq!(r.next(), t0 + Duration::from_secs(30), "still enough peers");
        r.lost_peer(t0 + 6 * SEC, 1);
        assert_eq!(r.next(), t0 + 7 * SEC);
        assert_eq!(r.due(r.next(), 1), 1);
        assert_eq!(r.next(), t0 + 8 * SEC, "the backoff started over from 1 s");
    }

    #[test]
    fn peers_are_kept_while_a_connection_is_open_and_the_peer_book_filters_what_to_redial() {
        let local = PeerId::random();
        let boot = PeerId::random();
        let mut cfg = Config::default();
        cfg.bootstrap.peers = vec![
            "/ip4/192.0.2.1/tcp/4001"
                .parse::<Multiaddr>()
                .unwrap()
                .with(Protocol::P2p(boot)),
            "/ip4/192.0.2.2/tcp/4001"
                .parse::<Multiaddr>()
                .unwrap()
                .with(Protocol::P2p(local)),
        ];
        let store = crate::store::Store::temporary().unwrap();
        let book = store.peer_book((&cfg.peerbook).into()).unwrap();
        let mut c = Connectivity::new(&cfg, local, book, Instant::now());
        assert_eq!(c.bootstrap.len(), 1, "ourselves is not a bootstrap peer");

        let peer = PeerId::random();
        let info = |port: u16| ConnectionInfo {
            remote_addr: format!("/ip4/192.0.2.9/tcp/{port}").parse().unwrap(),
            direction: Direction::Inbound,
            relayed: false,
        };
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        assert!(c.connected(peer, a, info(1)));
        assert!(
            !c.connected(peer, b, info(2)),
            "a second connection is not a new peer"
        );
        c.closed(&peer, a, 1);
        assert_eq!(c.peers[&peer].connections.len(), 1);
        c.closed(&peer, b, 0);
        assert!(!c.peers.contains_key(&peer));

        let addr: Multiaddr = "/ip4/192.0.2.9/tcp/4001".parse().unwrap();
        for p in [peer, boot, local] {
            c.peer_book
                .record(&p, vec![addr.clone()], None, true)
                .unwrap();
        }
        let remembered: Vec<PeerId> = c.remembered(local).into_iter().map(|(p, _)| p).collect();
        assert_eq!(remembered, [peer], "neither ourselves nor a bootstrap peer");
    }
}
