//! `/commucat/data/1.0.0` streams in both directions (`protocols/data-v1.md` §7), by a
//! `NetworkBehaviour` of our own instead of `libp2p-stream` (alpha), whose two paths both lose
//! streams:
//!
//! - **Inbound**, it hands streams over a zero-capacity channel and drops any it cannot hand over
//!   at that instant (10 peers × 8 concurrent streams: only 30–45 of 80 were answered). Here each
//!   connection's handler puts the negotiated stream into a bounded queue
//!   ([`MAX_QUEUED_STREAMS`]) that the data service drains; when the queue is full the handler
//!   itself answers `ERROR LIMIT` and closes the stream, at most [`MAX_REFUSING_PER_CONNECTION`]
//!   at once per connection (beyond that a stream is reset, which the peer sees at once). The
//!   protocol is offered only while a consumer holds the [`Incoming`] queue.
//! - **Outbound**, an open that arrives while a connection is being set up is parked for a dial
//!   that never comes, and waits forever (seen as a hung delivery under load). Here the behaviour
//!   tracks connections itself: an open goes to a connected peer's handler, or waits (bounded, per
//!   peer) for the connection a dial brings, and fails when the dial fails, the connection closes,
//!   or [`OPEN_TIMEOUT`] passes.
//!
//! Refusals are counted in `commucat_data_streams_refused_total{reason}`.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, UpgradeInfo, transport::PortUse, upgrade::ReadyUpgrade},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent,
        ConnectionId, DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler,
        StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent,
        ToSwarm,
        behaviour::ConnectionEstablished,
        dial_opts::{DialOpts, PeerCondition},
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::wire::{ErrorCode, PROTOCOL};

/// Inbound streams waiting for the data service (one per session it has not taken yet).
pub const MAX_QUEUED_STREAMS: usize = 256;
/// Streams one connection's handler refuses at once (writing `ERROR LIMIT`); more are reset.
pub const MAX_REFUSING_PER_CONNECTION: usize = 16;
/// Opens queued for the behaviour; more wait for room.
pub const OPEN_QUEUE: usize = 256;
/// Opens waiting for one peer's connection at once; more get [`OpenError::Busy`].
pub const MAX_WAITING_PER_PEER: usize = 64;
/// An open gives up after this (dial, negotiation and all).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// `commucat_data_streams_refused_total{reason}`: `queue_full` (the service is behind),
/// `session_limit` (sessions in total or per peer), `reset` (a connection was already refusing
/// [`MAX_REFUSING_PER_CONNECTION`] streams).
#[derive(Clone, Default)]
pub struct Metrics {
    refused: Family<RefusedLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "data_streams_refused",
            "Inbound data streams refused with ERROR LIMIT (or reset), by reason",
            m.refused.clone(),
        );
        m
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot reach the peer: {0}")]
    Unreachable(String),
    #[error("the peer does not speak {PROTOCOL}")]
    Unsupported,
    #[error("stream negotiation: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before the stream opened")]
    Closed,
    #[error("too many streams are waiting for this peer; try later")]
    Busy,
    #[error("no stream within {}s", OPEN_TIMEOUT.as_secs())]
    Timeout,
    #[error("the node has stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<DataStream, OpenError>>;
type Queued = (PeerId, DataStream);

/// The data streams open now, per peer. The connection manager (`event_loop::trim`) leaves the
/// connections of these peers alone: closing one would cut a session or a transfer short.
#[derive(Debug, Clone, Default)]
pub struct Active(Arc<std::sync::Mutex<HashMap<PeerId, usize>>>);

impl Active {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, peer: PeerId, inner: Stream) -> DataStream {
        *self.lock().entry(peer).or_default() += 1;
        DataStream {
            inner,
            peer,
            active: self.clone(),
        }
    }

    /// Whether a data stream with `peer` is open.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.lock().contains_key(peer)
    }
}

/// A `/commucat/data/1.0.0` stream, counted in [`Active`] until it is dropped.
#[derive(Debug)]
pub struct DataStream {
    inner: Stream,
    peer: PeerId,
    active: Active,
}

impl Drop for DataStream {
    fn drop(&mut self) {
        let mut open = self.active.lock();
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl futures::AsyncRead for DataStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for DataStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Opens data streams to peers (dialling them if needed). Cheap to clone.
#[derive(Clone)]
pub struct Control {
    opens: mpsc::Sender<(PeerId, Reply)>,
}

impl Control {
    /// A new `/commucat/data/1.0.0` stream to `peer`.
    pub async fn open_stream(&self, peer: PeerId) -> Result<DataStream, OpenError> {
        let (tx, rx) = oneshot::channel();
        let work = async {
            self.opens
                .send((peer, tx))
                .await
                .map_err(|_| OpenError::Stopped)?;
            rx.await.map_err(|_| OpenError::Closed)?
        };
        tokio::time::timeout(OPEN_TIMEOUT, work)
            .await
            .unwrap_or(Err(OpenError::Timeout))
    }
}

/// The consumer's end: inbound data streams, in arrival order. Dropping it stops the protocol
/// from being offered.
pub struct Incoming {
    rx: mpsc::Receiver<Queued>,
    accepting: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Incoming {
    /// Offers the protocol to peers from now on.
    pub(crate) fn offer(&self) {
        self.accepting.store(true, Ordering::Release);
    }

    pub async fn next(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// The refusal counters, for the consumer's own refusals.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.store(false, Ordering::Release);
    }
}

/// Answers `stream` with `ERROR LIMIT` and closes it (at most 5 s).
pub(crate) async fn refuse(stream: impl futures::AsyncRead + futures::AsyncWrite + Unpin) {
    crate::wire::refuse(stream.compat(), ErrorCode::LIMIT).await;
}

/// The behaviour: one [`Handler`] per connection, all feeding one inbound queue, and the opens of
/// every [`Control`].
pub struct Behaviour {
    tx: mpsc::Sender<Queued>,
    accepting: Arc<AtomicBool>,
    metrics: Metrics,
    opens: mpsc::Receiver<(PeerId, Reply)>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    waiting: HashMap<PeerId, Vec<Reply>>,
    events: VecDeque<ToSwarm<Infallible, Reply>>,
    active: Active,
}

/// The behaviour, its inbound queue, and a handle to open streams. The protocol is offered to
/// peers once `Incoming::offer` is called.
pub fn new(metrics: Metrics) -> (Behaviour, Incoming, Control) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_STREAMS);
    let (opens_tx, opens) = mpsc::channel(OPEN_QUEUE);
    let accepting = Arc::new(AtomicBool::new(false));
    let behaviour = Behaviour {
        tx,
        accepting: accepting.clone(),
        metrics: metrics.clone(),
        opens,
        connections: HashMap::new(),
        waiting: HashMap::new(),
        events: VecDeque::new(),
        active: Active::default(),
    };
    let incoming = Incoming {
        rx,
        accepting,
        metrics,
    };
    (behaviour, incoming, Control { opens: opens_tx })
}

impl Behaviour {
    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            tx: self.tx.clone(),
            accepting: self.accepting.clone(),
            metrics: self.metrics.clone(),
            refusing: FuturesUnordered::new(),
            opens: VecDeque::new(),
            active: self.active.clone(),
        }
    }

    /// The data streams open now.
    pub fn active(&self) -> &Active {
        &self.active
    }

    fn open(&mut self, peer: PeerId, reply: Reply) {
        if let Some(&conn) = self.connections.get(&peer).and_then(|c| c.first()) {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(conn),
                event: reply,
            });
            return;
        }
        let waiting = self.waiting.entry(peer).or_default();
        waiting.retain(|r| !r.is_closed());
        if waiting.len() >= MAX_WAITING_PER_PEER {
            let _ = reply.send(Err(OpenError::Busy));
            return;
        }
        waiting.push(reply);
        // A dial already under way brings the connection too (then this one is refused by its
        // condition, which is not a failure of the open).
        self.events.push_back(ToSwarm::Dial {
            opts: DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
        });
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
                for reply in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.events.push_back(ToSwarm::NotifyHandler {
                        peer_id,
                        handler: NotifyHandler::One(connection_id),
                        event: reply,
                    });
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|c| *c != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                if matches!(error, DialError::DialPeerConditionFalse(_)) {
                    return; // another dial (or a connection) is on its way
                }
                if self.connections.contains_key(&peer) {
                    return;
                }
                for reply in self.waiting.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(OpenError::Unreachable(error.to_string())));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(e)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((peer, reply))) = self.opens.poll_recv(cx) {
            self.open(peer, reply);
        }
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// Inbound: the data protocol while it is offered, nothing otherwise. (Outbound streams always ask
/// for the data protocol: libp2p's [`ReadyUpgrade`].)
pub struct Upgrade(Option<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::option::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl libp2p::core::InboundUpgrade<Stream> for Upgrade {
    type Output = Stream;
    type Error = Infallible;
    type Future = Ready<Result<Stream, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, _: StreamProtocol) -> Self::Future {
        ready(Ok(stream))
    }
}

/// A connection's handler: inbound data streams into the queue (or refused right here), and the
/// outbound streams the behaviour asks for.
pub struct Handler {
    peer: PeerId,
    tx: mpsc::Sender<Queued>,
    accepting: Arc<AtomicBool>,
    metrics: Metrics,
    refusing: FuturesUnordered<BoxFuture<'static, ()>>,
    opens: VecDeque<Reply>,
    active: Active,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Reply;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade> {
        let offered = self.accepting.load(Ordering::Acquire).then_some(PROTOCOL);
        SubstreamProtocol::new(Upgrade(offered), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.refusing.is_empty() || !self.opens.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Reply, Infallible>> {
        while let Poll::Ready(Some(())) = self.refusing.poll_next_unpin(cx) {}
        while let Some(reply) = self.opens.pop_front() {
            if reply.is_closed() {
                continue; // the caller gave up
            }
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), reply),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, reply: Reply) {
        self.opens.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Reply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.inbound(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                let _ = reply.send(Ok(self.active.track(self.peer, stream)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let _ = reply.send(Err(match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => {
                        OpenError::Io(std::io::ErrorKind::TimedOut.into())
                    }
                    StreamUpgradeError::Io(e) => OpenError::Io(e),
                    StreamUpgradeError::Apply(never) => libp2p::core::util::unreachable(never),
                }));
            }
            _ => {}
        }
    }
}

impl Handler {
    fn inbound(&mut self, stream: Stream) {
        let stream = self.active.track(self.peer, stream);
        let stream = match self.tx.try_send((self.peer, stream)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full((_, s))) => s,
            Err(mpsc::error::TrySendError::Closed((_, s))) => s,
        };
        if self.refusing.len() >= MAX_REFUSING_PER_CONNECTION {
            // Dropped: the stream is reset, which the peer sees at once.
            tracing::debug!(peer = %self.peer, "data stream reset: this connection is refusing too many");
            self.metrics.refused("reset");
            return;
        }
        tracing::debug!(peer = %self.peer, "data stream refused: the accept queue is full");
        self.metrics.refused("queue_full");
        self.refusing.push(refuse(stream).boxed());
    }
}
