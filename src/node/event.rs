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
}
