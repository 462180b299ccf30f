//! Node events, broadcast to subscribers (the control API streams them as server-sent events).

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

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
