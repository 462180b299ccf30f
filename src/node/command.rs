//! What a [`super::Client`] can ask the event loop, and the answers (also the JSON bodies of the
//! control API).

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Error;
use crate::{names::Handle, nat::Reachability, node::Role};

pub(crate) enum Command {
    Status {
        reply: oneshot::Sender<Status>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    RoutingTable {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<FoundPeer, Error>>,
    },
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<Connected, Error>>,
    },
    GetPresence {
        peer: PeerId,
        reply: oneshot::Sender<Result<Option<crate::dht::record::Presence>, Error>>,
    },
    /// Claim `handle` (publish and keep republishing its record), or release the claimed one.
    PutName {
        handle: Option<Handle>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    ResolveName {
        handle: Handle,
        /// Ask the DHT even when the cache has an answer.
        fresh: bool,
        reply: oneshot::Sender<Result<Option<ResolvedName>, Error>>,
    },
}

/// `GET /v1/names/{handle}`: who holds a name (`protocols/names-v1.md` §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedName {
    pub handle: Handle,
    pub peer_id: PeerId,
    pub seq: u64,
    /// Unix seconds; the answer is good until then.
    pub expires_at: u64,
    /// The holder's keys as the record binds them (what a contact added by this handle pins).
    pub binding: crate::identity::Binding,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub peer_id: PeerId,
    pub role: Role,
    pub agent_version: String,
    /// Addresses the node listens on (per interface when listening on 0.0.0.0 / ::).
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses (AutoNAT v2, or configured).
    pub external_addrs: Vec<Multiaddr>,
    pub reachability: Reachability,
    /// Reservations on relays (held while the node is not publicly reachable); `address` is
    /// absent while the relay has not answered yet.
    pub relay_reservations: Vec<crate::nat::Reservation>,
    /// `client` or `server`.
    pub kad_mode: String,
    pub connected_peers: usize,
    /// Established connections, all peers together.
    pub connections: u32,
    pub routing_table_size: usize,
    pub peer_book_size: usize,
    pub uptime_secs: u64,
    /// The handle this node claimed (`protocols/names-v1.md`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Handle>,
}

/// One connected peer in `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub connections: Vec<ConnectionInfo>,
    /// Round-trip time of the last successful ping, in milliseconds.
    pub rtt_ms: Option<f64>,
    pub agent_version: Option<String>,
    pub protocols: Vec<String>,
    pub listen_addrs: Vec<Multiaddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub remote_addr: Multiaddr,
    pub direction: Direction,
    /// The connection runs through a circuit relay (`/p2p-circuit`) rather than directly.
    pub relayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dialled.
    Outbound,
    /// They dialled.
    Inbound,
}

/// `POST /v1/dht/find-peer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundPeer {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    /// Where the addresses came from.
    pub source: FindSource,
    /// How long the lookup took, in milliseconds.
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindSource {
    /// The DHT did not know the peer, but we are connected to it: the addresses it announced
    /// through identify (typical for a DHT client).
    Connected,
    /// From the peer's signed presence record (a DHT client that nobody routes to).
    Presence,
    /// A Kademlia lookup found the peer.
    Dht,
}

/// `POST /v1/connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    pub peer_id: PeerId,
    pub remote_addr: Multiaddr,
    /// The node was already connected; nothing was dialled.
    pub already_connected: bool,
}
