//! `/commucat/hold/1.0.0` (`protocols/hold-v1.md`): keeping the connections to a few peers open
//! on both sides.
//!
//! rust-libp2p closes a connection once *its own* side has been idle for
//! `network.idle_connection_timeout_secs`, so one side cannot keep a connection open by itself:
//! the other side closes it at its own timeout. A node short of `bootstrap.min_peers` peers then
//! redialled them, and the new connections idled out again: a desktop in simnet's `bursty-join`
//! (10 s idle timeout, 4 minimum peers) reconnected four peers every ~11 s, which was 12–15% of
//! the run's CPU.
//!
//! So a node holds up to `bootstrap.min_peers` peers ([`holding_limit`]): it opens one hold stream to each, on a direct
//! connection, the longest-connected peers first, and keeps it. The peer keeps its end too (up to
//! [`held_by_limit`] holders), and an open stream keeps a connection alive on each side
//! (libp2p-swarm counts them). No byte is sent; one is a violation and resets the stream. Either
//! side releases a hold by closing or resetting its stream. A peer that refused or released a
//! hold is not asked again until it has disconnected. A failed ping on a connection releases the
//! holds on it both ways (the event loop calls [`Behaviour::ping_failed`]): libp2p's ping does not
//! close connections, and a held connection to a peer gone silent would never idle out.
//!
//! The connection manager (`event_loop::trim`) spares held peers both ways ([`Behaviour::holds`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::AsyncRead;
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, transport::PortUse, upgrade::ReadyUpgrade},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent,
        ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
        behaviour::ConnectionEstablished,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/hold/1.0.0");

/// How many peers a node lets hold it: half of its connection manager's low-water mark
/// `network.trim_connections_to`. With [`holding_limit`], held peers never keep the connection
/// manager (which spares them) above that mark.
pub fn held_by_limit(trim_connections_to: u32) -> usize {
    trim_connections_to as usize / 2
}

/// How many peers a node holds: `bootstrap.min_peers`, at most half of
/// `network.trim_connections_to` (see [`held_by_limit`]).
pub fn holding_limit(min_peers: usize, trim_connections_to: u32) -> usize {
    min_peers.min(trim_connections_to as usize / 2)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    direction: &'static str,
}

/// `commucat_held_peers{direction}`: `outbound`, the peers this node holds; `inbound`, the peers
/// holding this node.
#[derive(Clone, Default)]
pub struct Metrics {
    held: Family<Labels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "held_peers",
            "Peers whose connection is held open (/commucat/hold/1.0.0): outbound, held by this node; inbound, holding it",
            m.held.clone(),
        );
        m
    }

    fn set(&self, direction: &'static str, n: usize) {
        self.held
            .get_or_create(&Labels { direction })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// What the behaviour tells a connection's handler.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Open a hold stream.
    Hold,
    /// Drop the hold streams of this connection, both ways.
    Release,
}

/// What a connection's handler reports.
#[derive(Debug, Clone, Copy)]
pub enum Report {
    /// Our hold stream is open.
    Held,
    /// Our hold stream was refused, reset or closed, or is gone on a [`Command::Release`].
    Ended,
    /// The peer holds us on this connection (true), or no longer does (false).
    HeldBy(bool),
}

/// A connected peer: when it connected (in order of arrival) and its direct connections.
struct Connected {
    order: u64,
    direct: Vec<ConnectionId>,
}

/// Holds up to `want` peers and lets up to [`held_by_limit`] peers hold this node.
pub struct Behaviour {
    want: usize,
    slots: Slots,
    peers: HashMap<PeerId, Connected>,
    arrivals: u64,
    /// The peers this node holds or has asked to: the connection, and whether the stream is open.
    holding: HashMap<PeerId, (ConnectionId, bool)>,
    /// Peers that refused or released a hold: not asked again until they disconnect.
    declined: HashSet<PeerId>,
    /// The connections on which each peer holds this node.
    held_by: HashMap<PeerId, HashSet<ConnectionId>>,
    pending: VecDeque<ToSwarm<Infallible, Command>>,
    /// Something changed that may let this node hold another peer.
    dirty: bool,
    metrics: Metrics,
}

impl Behaviour {
    /// Holds up to `want` peers (`bootstrap.min_peers`); `held_by` peers may hold this node.
    pub fn new(want: usize, held_by: usize, metrics: Metrics) -> Self {
        metrics.set("outbound", 0);
        metrics.set("inbound", 0);
        Self {
            want,
            slots: Slots {
                used: Arc::new(AtomicUsize::new(0)),
                limit: held_by,
            },
            peers: HashMap::new(),
            arrivals: 0,
            holding: HashMap::new(),
            declined: HashSet::new(),
            held_by: HashMap::new(),
            pending: VecDeque::new(),
            dirty: false,
            metrics,
        }
    }

    /// The peers held, both ways: the connection manager spares them.
    pub fn holds(&self) -> HashSet<PeerId> {
        let ours = self.holding.iter().filter(|(_, (_, open))| *open);
        ours.map(|(p, _)| *p)
            .chain(self.held_by.keys().copied())
            .collect()
    }

    /// A ping on `connection` failed: the holds on it are released both ways, and `peer` is not
    /// held again until it has disconnected.
    pub fn ping_failed(&mut self, peer: PeerId, connection: ConnectionId) {
        let ours = self
            .holding
            .get(&peer)
            .is_some_and(|(c, _)| *c == connection);
        let theirs = self
            .held_by
            .get(&peer)
            .is_some_and(|c| c.contains(&connection));
        if !ours && !theirs {
            return;
        }
        tracing::debug!(%peer, "ping failed: releasing the holds on this connection");
        if ours {
            self.holding.remove(&peer);
            self.declined.insert(peer);
            self.dirty = true;
        }
        self.pending.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: Command::Release,
        });
        self.update_metrics();
    }

    /// Asks the longest-connected peers that are neither held, asked nor declined, until `want`
    /// are held or asked.
    fn ask(&mut self) {
        let missing = self.want.saturating_sub(self.holding.len());
        if missing == 0 {
            return;
        }
        let mut candidates: Vec<(u64, PeerId, ConnectionId)> = (self.peers.iter())
            .filter(|(p, _)| !self.holding.contains_key(p) && !self.declined.contains(p))
            .filter_map(|(p, c)| Some((c.order, *p, *c.direct.first()?)))
            .collect();
        candidates.sort_unstable();
        for (_, peer, connection) in candidates.into_iter().take(missing) {
            self.holding.insert(peer, (connection, false));
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: Command::Hold,
            });
        }
    }

    fn update_metrics(&self) {
        let ours = self.holding.values().filter(|(_, open)| *open).count();
        self.metrics.set("outbound", ours);
        self.metrics.set("inbound", self.held_by.len());
    }

    fn closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: usize) {
        if let Some(c) = self.peers.get_mut(&peer) {
            c.direct.retain(|d| *d != connection);
            if c.direct.is_empty() {
                self.peers.remove(&peer);
            }
        }
        if self
            .holding
            .get(&peer)
            .is_some_and(|(c, _)| *c == connection)
        {
            self.holding.remove(&peer);
            self.dirty = true;
        }
        if let Some(c) = self.held_by.get_mut(&peer) {
            c.remove(&connection);
            if c.is_empty() {
                self.held_by.remove(&peer);
            }
        }
        if remaining == 0 {
            self.declined.remove(&peer);
        }
        self.update_metrics();
    }

    fn handler(&self) -> Handler {
        Handler {
            slots: self.slots.clone(),
            ask: false,
            ours: None,
            theirs: None,
            reports: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) if !endpoint.is_relayed() => {
                let order = self.arrivals;
                let c = self.peers.entry(peer_id).or_insert_with(|| Connected {
                    order,
                    direct: Vec::new(),
                });
                c.direct.push(connection_id);
                self.arrivals += 1;
                self.dirty = true;
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                remaining_established,
                ..
            }) => self.closed(peer_id, connection_id, remaining_established),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        report: THandlerOutEvent<Self>,
    ) {
        let ours = self
            .holding
            .get_mut(&peer)
            .filter(|(c, _)| *c == connection);
        match report {
            Report::Held => {
                if let Some((_, open)) = ours {
                    *open = true;
                }
            }
            Report::Ended => {
                if ours.is_some() {
                    tracing::debug!(%peer, "hold refused or released");
                    self.holding.remove(&peer);
                    self.declined.insert(peer);
                    self.dirty = true;
                }
            }
            Report::HeldBy(true) => {
                self.held_by.entry(peer).or_default().insert(connection);
            }
            Report::HeldBy(false) => {
                if let Some(c) = self.held_by.get_mut(&peer) {
                    c.remove(&connection);
                    if c.is_empty() {
                        self.held_by.remove(&peer);
                    }
                }
            }
        }
        self.update_metrics();
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        if std::mem::take(&mut self.dirty) {
            self.ask();
        }
        match self.pending.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// The count of inbound holds across the node's connections, against [`held_by_limit`].
#[derive(Clone)]
struct Slots {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Slots {
    fn take(&self) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.used.clone()))
    }
}

/// One inbound hold counted in [`Slots`] until it is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's hold streams: ours (at most one) and the peer's (at most one).
pub struct Handler {
    slots: Slots,
    ask: bool,
    ours: Option<Stream>,
    theirs: Option<(Stream, Slot)>,
    reports: VecDeque<Report>,
}

/// Whether a hold stream has ended: closed or reset by the peer, or a byte arrived (a violation;
/// dropping the stream then resets it).
fn ended(stream: &mut Stream, cx: &mut Context<'_>) -> bool {
    let mut byte = [0u8; 1];
    match Pin::new(stream).poll_read(cx, &mut byte) {
        Poll::Pending => false,
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => true,
        Poll::Ready(Ok(_)) => {
            tracing::debug!("a byte on a hold stream: resetting it");
            true
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = Report;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Report>> {
        if std::mem::take(&mut self.ask) {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
            });
        }
        if self.ours.as_mut().is_some_and(|s| ended(s, cx)) {
            self.ours = None;
            self.reports.push_back(Report::Ended);
        }
        if self.theirs.as_mut().is_some_and(|(s, _)| ended(s, cx)) {
            self.theirs = None;
            self.reports.push_back(Report::HeldBy(false));
        }
        match self.reports.pop_front() {
            Some(r) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(r)),
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, command: Command) {
        match command {
            Command::Hold if self.ours.is_some() => self.reports.push_back(Report::Held),
            Command::Hold => self.ask = true,
            Command::Release => {
                if self.ours.take().is_some() {
                    self.reports.push_back(Report::Ended);
                }
                if self.theirs.take().is_some() {
                    self.reports.push_back(Report::HeldBy(false));
                }
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.theirs.is_some() {
                    return; // one hold per connection: the second stream is dropped (reset)
                }
                match self.slots.take() {
                    Some(slot) => {
                        self.theirs = Some((stream, slot));
                        self.reports.push_back(Report::HeldBy(true));
                    }
                    None => tracing::debug!("hold refused: held by as many peers as allowed"),
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                self.ours = Some(stream);
                self.reports.push_back(Report::Held);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { .. }) => {
                self.reports.push_back(Report::Ended);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    fn vector() -> serde_json::Value {
        let text = include_str!("../../protocols/vectors/hold-v1.json");
        serde_json::from_str(text).unwrap()
    }

    fn hex(v: &serde_json::Value, key: &str) -> Vec<u8> {
        hex::decode(v[key].as_str().unwrap()).unwrap()
    }

    /// libp2p's own multistream-select, as dialer and as listener, sends the vector's bytes.
    #[tokio::test]
    async fn negotiation_bytes_are_the_vectors() {
        let v = vector();
        assert_eq!(v["protocol"], PROTOCOL.as_ref());
        let proposal = hex(&v, "dialer_proposal");
        let accept = hex(&v, "listener_accept");

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let dialer = tokio::spawn(multistream_select::dialer_select_proto(
            ours.compat(),
            [PROTOCOL],
            multistream_select::Version::V1,
        ));
        let mut got = vec![0u8; proposal.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(hex::encode(&got), hex::encode(&proposal));
        theirs.write_all(&accept).await.unwrap();
        let (chosen, _io) = dialer.await.unwrap().unwrap();
        assert_eq!(chosen, PROTOCOL);

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let listener = tokio::spawn(multistream_select::listener_select_proto(
            ours.compat(),
            [PROTOCOL],
        ));
        theirs.write_all(&proposal).await.unwrap();
        let mut got = vec![0u8; accept.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(hex::encode(&got), hex::encode(&accept));
        let (chosen, _io) = listener.await.unwrap().unwrap();
        assert_eq!(chosen, PROTOCOL);

        // A listener that does not speak it answers "na".
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let other = StreamProtocol::new("/commucat/other/1.0.0");
        let _listener = tokio::spawn(multistream_select::listener_select_proto(
            ours.compat(),
            [other],
        ));
        theirs.write_all(&proposal).await.unwrap();
        let refuse = hex(&v, "listener_refuse");
        let mut got = vec![0u8; refuse.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(hex::encode(&got), hex::encode(&refuse));
    }

    #[test]
    fn holds_both_ways_fit_under_the_low_water_mark() {
        assert_eq!(held_by_limit(1536), 768);
        assert_eq!(held_by_limit(1), 0);
        assert_eq!(holding_limit(4, 128), 4);
        assert_eq!(holding_limit(4, 2), 1);
        let slots = Slots {
            used: Arc::new(AtomicUsize::new(0)),
            limit: 2,
        };
        let (a, b) = (slots.take().unwrap(), slots.take().unwrap());
        assert!(slots.take().is_none(), "a third holder is refused");
        drop(a);
        assert!(slots.take().is_some(), "a released slot is free again");
        drop(b);
    }
}
