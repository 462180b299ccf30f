//! Node events, broadcast to subscribers (the control API streams them as server-sent events).

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{self, error::RecvError, error::SendError};

use super::command::Direction;
use crate::nat::Reachability;

/// Events kept for a slow subscriber before it starts missing some (it is told how many).
pub const EVENT_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    Listening {
        address: Multiaddr,
    },
    ListenAddrExpired {
        address: Multiaddr,
    },
    PeerConnected {
        peer_id: PeerId,
        address: Multiaddr,
        direction: Direction,
        relayed: bool,
    },
    PeerDisconnected {
        peer_id: PeerId,
    },
    PeerIdentified {
        peer_id: PeerId,
        agent_version: String,
        listen_addrs: Vec<Multiaddr>,
        kad_server: bool,
    },
    RoutingUpdated {
        peer_id: PeerId,
        is_new_peer: bool,
        addresses: Vec<Multiaddr>,
    },
    KadModeChanged {
        mode: String,
    },
    ExternalAddrConfirmed {
        address: Multiaddr,
    },
    ExternalAddrExpired {
        address: Multiaddr,
    },
    ReachabilityChanged {
        reachability: Reachability,
    },
    AutonatProbe {
        address: Multiaddr,
        server: PeerId,
        ok: bool,
        error: Option<String>,
    },
    MdnsDiscovered {
        peer_id: PeerId,
        address: Multiaddr,
    },
    /// A relay accepted our reservation: peers reach this node at `address` through it.
    RelayReservationAccepted {
        relay: PeerId,
        address: Multiaddr,
    },
    /// A reservation ended (relay gone, refused, or this node became public).
    RelayReservationLost {
        relay: PeerId,
    },
    /// The first connection to a peer is relayed: DCUtR tries to turn it into a direct one.
    HolePunchStarted {
        peer_id: PeerId,
    },
    /// A hole punch ended: `ok` when a direct connection is up (the relayed one is then closed).
    HolePunch {
        peer_id: PeerId,
        ok: bool,
        error: Option<String>,
        /// Direct dials to the peer that failed before the outcome.
        failed_dials: u32,
        /// Milliseconds since the relayed connection came up.
        elapsed_ms: u64,
    },
}

/// A broadcast of events whose ring holds each event once, behind a pointer: 1,024 slots of a
/// whole event took ~170 KB per channel and node whether or not anyone listened (a thousand
/// simulated nodes: `simnet/README.md`, "What a node costs").
#[derive(Debug)]
pub struct Broadcast<E>(broadcast::Sender<Arc<E>>);

impl<E> Clone for Broadcast<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: Clone> Broadcast<E> {
    /// Keeps up to `capacity` events for a slow subscriber.
    pub fn new(capacity: usize) -> Self {
        Self(broadcast::channel(capacity).0)
    }

    /// Sends `event` to every subscriber; an error only says there is none.
    pub fn send(&self, event: E) -> Result<usize, SendError<Arc<E>>> {
        self.0.send(Arc::new(event))
    }

    /// Events from now on.
    pub fn subscribe(&self) -> Subscription<E> {
        Subscription(self.0.subscribe())
    }
}

/// One subscriber of a [`Broadcast`]: each event is received as its own copy, as from a
/// `tokio::sync::broadcast::Receiver`.
#[derive(Debug)]
pub struct Subscription<E>(broadcast::Receiver<Arc<E>>);

impl<E: Clone> Subscription<E> {
    /// The next event; `Lagged(n)` when this subscriber fell behind and missed `n` of them.
    pub async fn recv(&mut self) -> Result<E, RecvError> {
        self.0.recv().await.map(|e| E::clone(&e))
    }
}
