//! Inbound `/commucat/data/1.0.0` streams (`protocols/data-v1.md` §7), accepted by a connection
//! handler of our own: every stream a peer opens gets a session or `ERROR LIMIT` and a close,
//! never silence.
//!
//! `libp2p-stream` hands inbound streams to its consumer over a zero-capacity channel and drops
//! any stream it cannot hand over at that instant (10 peers × 8 concurrent streams: only 30–45 of
//! 80 were answered). Here each connection's handler puts the negotiated stream into a bounded
//! queue ([`MAX_QUEUED_STREAMS`]) that the data service drains; when the queue is full the handler
//! itself answers `ERROR LIMIT` and closes the stream, at most [`MAX_REFUSING_PER_CONNECTION`] at
//! once per connection (beyond that a stream is reset, which the peer sees at once). Refusals are
//! counted in `commucat_data_streams_refused_total{reason}`.
//!
//! The protocol is offered only while a consumer holds the [`Incoming`] queue: a node without the
//! data service answers "protocol not supported".

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, UpgradeInfo, transport::PortUse, upgrade::DeniedUpgrade},
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        handler::{ConnectionEvent, FullyNegotiatedInbound},
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::mpsc;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::{ErrorCode, PROTOCOL};

/// Inbound streams waiting for the data service (one per session it has not taken yet).
pub const MAX_QUEUED_STREAMS: usize = 256;
/// Streams one connection's handler refuses at once (writing `ERROR LIMIT`); more are reset.
pub const MAX_REFUSING_PER_CONNECTION: usize = 16;

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

type Queued = (PeerId, Stream);

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
pub(crate) async fn refuse(stream: Stream) {
    super::inbound::refuse(stream.compat(), ErrorCode::LIMIT).await;
}

/// The behaviour: one [`Handler`] per connection, all feeding one queue.
pub struct Behaviour {
    tx: mpsc::Sender<Queued>,
    accepting: Arc<AtomicBool>,
    metrics: Metrics,
}

/// The behaviour and its queue; the protocol is offered once [`Incoming::offer`] is called.
pub fn new(metrics: Metrics) -> (Behaviour, Incoming) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_STREAMS);
    let accepting = Arc::new(AtomicBool::new(false));
    let behaviour = Behaviour {
        tx,
        accepting: accepting.clone(),
        metrics: metrics.clone(),
    };
    (
        behaviour,
        Incoming {
            rx,
            accepting,
            metrics,
        },
    )
}

impl Behaviour {
    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            tx: self.tx.clone(),
            accepting: self.accepting.clone(),
            metrics: self.metrics.clone(),
            refusing: FuturesUnordered::new(),
        }
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

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(e)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The data protocol while it is offered, nothing otherwise.
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

/// A connection's handler: inbound data streams into the queue, or refused right here.
pub struct Handler {
    peer: PeerId,
    tx: mpsc::Sender<Queued>,
    accepting: Arc<AtomicBool>,
    metrics: Metrics,
    refusing: FuturesUnordered<BoxFuture<'static, ()>>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade> {
        let offered = self.accepting.load(Ordering::Acquire).then_some(PROTOCOL);
        SubstreamProtocol::new(Upgrade(offered), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.refusing.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, Infallible, Infallible>> {
        while let Poll::Ready(Some(())) = self.refusing.poll_next_unpin(cx) {}
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, e: Infallible) {
        libp2p::core::util::unreachable(e)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Infallible>,
    ) {
        let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: stream,
            ..
        }) = event
        else {
            return;
        };
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
