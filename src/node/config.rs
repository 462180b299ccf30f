//! The node-level sections of the configuration (`[network]`, `[bootstrap]`, `[mdns]`,
//! `[autonat]`, `[relay]`, `[presence]` and the top-level `role`), and [`Config`], what the swarm
//! and its event loop run with. The loader and the checks of values are `crate::config`'s; the
//! shipped files (`config/*.toml`) document every key.

use std::{
    num::{NonZero, NonZeroU32, NonZeroU64},
    sync::LazyLock,
    time::Duration,
};

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::{dht, store::peerbook};

/// The built-in bootstrap list, compiled in from `bootstrap/peers.toml`.
pub const BUILTIN_PEERS_TOML: &str = include_str!("../../bootstrap/peers.toml");

/// What the swarm and its event loop run with: the node-level sections, as
/// `config::Config::node` picks them out of the whole configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub role: Role,
    pub network: Network,
    pub bootstrap: Bootstrap,
    pub kad: dht::Config,
    pub mdns: Mdns,
    pub autonat: Autonat,
    pub relay: Relay,
    pub peerbook: peerbook::Config,
    pub presence: Presence,
}

impl Config {
    /// Kademlia runs in server mode from the start (bootstrap role, or `kad.mode = "server"`).
    pub fn kad_forced_server(&self) -> bool {
        self.role == Role::Bootstrap || self.kad.mode == dht::Mode::Server
    }

    /// The AutoNAT v2 server runs (bootstrap role, or `autonat.server = true`).
    pub fn autonat_server(&self) -> bool {
        self.role == Role::Bootstrap || self.autonat.server
    }

    /// The circuit relay v2 server runs (bootstrap role, or `relay.server = true`).
    pub fn relay_server(&self) -> bool {
        self.role == Role::Bootstrap || self.relay.server
    }

    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_secs(self.network.idle_connection_timeout_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person's computer: Kademlia client until reachable, AutoNAT client.
    #[default]
    Desktop,
    /// A public server: Kademlia server always, AutoNAT server.
    Bootstrap,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Desktop => "desktop",
            Role::Bootstrap => "bootstrap",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses this node is known to be reachable at (e.g. a server's public address); they are
    /// announced and count as confirmed.
    pub external_addresses: Vec<Multiaddr>,
    /// Seconds a connection with no active protocol stays open.
    pub idle_connection_timeout_secs: u64,
    /// Seconds between pings on each connection (liveness and the RTT shown by `peers`).
    pub ping_interval_secs: NonZeroU64,
    /// Established connections, in total.
    pub max_connections: NonZeroU32,
    /// Established connections to one peer: TCP and QUIC, a relayed one, AutoNAT dial-backs
    /// (which count too) and hole-punch attempts.
    pub max_connections_per_peer: NonZeroU32,
    /// Incoming connections still handshaking, per transport: TCP and QUIC each have this many,
    /// so a flood on one leaves the other alone.
    pub max_pending_incoming: NonZeroU32,
    /// Incoming connections still handshaking from one IP address (IPv6: one /64).
    pub max_pending_incoming_per_ip: NonZeroU32,
    /// Incoming connections established from one IP address (IPv6: one /64); outgoing ones are
    /// not counted.
    pub max_connections_per_ip: NonZeroU32,
    /// Seconds an incoming TCP connection has to finish its security and multiplexer handshake
    /// (a few round trips); outgoing dials get 20. QUIC's handshake has its own 5 s.
    pub inbound_handshake_timeout_secs: NonZeroU64,
    /// Outgoing dials in progress.
    pub max_pending_outgoing: u32,
    /// Past this many established connections the node closes the longest-connected peers'
    /// connections (sparing open data streams, relays and bootstrap peers) …
    pub trim_connections_above: NonZeroU32,
    /// … until this many remain (below `trim_connections_above`).
    pub trim_connections_to: u32,
    /// Seconds a new connection is spared.
    pub trim_grace_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// Peers to join the network through, as multiaddrs ending in `/p2p/<peer-id>`. The built-in
    /// list is `bootstrap/peers.toml`, compiled in.
    pub peers: Vec<Multiaddr>,
    /// When fewer peers than this are connected, as many bootstrap and remembered peers as are
    /// missing are dialled again. This many peers are also held (`node::hold`).
    pub min_peers: usize,
    /// Seconds between those checks.
    pub check_interval_secs: NonZeroU64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mdns {
    /// Discover peers on the local network with mDNS and dial them.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Autonat {
    /// Run the AutoNAT v2 server (always on for the bootstrap role).
    pub server: bool,
    /// Seconds between AutoNAT v2 probes of candidate external addresses.
    pub probe_interval_secs: NonZeroU64,
    /// Candidate external addresses tested at most per probe round; 0 turns AutoNAT v2 probing
    /// off.
    pub max_candidates: usize,
    /// Seconds between re-checks of reachability that has been settled (AutoNAT v1 probes);
    /// confirmed addresses that stopped working are dropped, working ones that failed before are
    /// confirmed. AutoNAT v2 alone never tests an address twice (rust-libp2p #6203).
    pub recheck_secs: NonZeroU64,
    /// Ask and answer AutoNAT probes only for globally routable IP addresses. Turn off on private
    /// test networks.
    pub only_global_ips: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Relay {
    /// Run the circuit relay v2 server (always on for the bootstrap role).
    pub server: bool,
    /// Relays a node that is not publicly reachable keeps reservations on (taken from the
    /// bootstrap list, then from relays met through the DHT). 0 turns the relay client off.
    pub reservations: usize,
    /// Server: reservations held at once.
    pub max_reservations: usize,
    /// Server: reservations one peer holds at once.
    pub max_reservations_per_peer: usize,
    /// Server: lifetime of a reservation; clients renew before it ends.
    pub reservation_duration_secs: NonZeroU64,
    /// Server: relayed connections open at once.
    pub max_circuits: usize,
    /// Server: relayed connections one peer has open at once.
    pub max_circuits_per_peer: usize,
    /// Server: lifetime of one relayed connection, after which the peers reconnect. libp2p's
    /// 2 minutes cut file transfers short.
    pub max_circuit_duration_secs: NonZeroU64,
    /// Server: bytes one relayed connection carries (both directions) before it is closed; 0 means
    /// no limit. libp2p's 128 KiB does not fit one photo.
    pub max_circuit_bytes: u64,
    /// Server: reservation requests per minute from one peer (also the burst).
    pub reservations_per_peer_per_minute: NonZeroU32,
    /// Server: reservation requests per minute from one IP address.
    pub reservations_per_ip_per_minute: NonZeroU32,
    /// Server: circuit requests per minute from one source peer.
    pub circuits_per_peer_per_minute: NonZeroU32,
    /// Server: circuit requests per minute from one source IP address.
    pub circuits_per_ip_per_minute: NonZeroU32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// Lifetime of the signed presence record this node publishes in the DHT.
    pub ttl_secs: u64,
    /// Seconds between republications (addresses that change trigger one sooner).
    pub republish_secs: u64,
}

impl Default for Network {
    fn default() -> Self {
        let listen = [
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip6/::/tcp/4001",
            "/ip6/::/udp/4001/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().expect("built-in listen addresses are valid"))
        .collect();
        Self {
            listen,
            external_addresses: Vec::new(),
            idle_connection_timeout_secs: 120,
            ping_interval_secs: NonZero::new(15).unwrap(),
            max_connections: NonZero::new(256).unwrap(),
            max_connections_per_peer: NonZero::new(8).unwrap(),
            max_pending_incoming: NonZero::new(64).unwrap(),
            max_pending_incoming_per_ip: NonZero::new(8).unwrap(),
            max_connections_per_ip: NonZero::new(32).unwrap(),
            inbound_handshake_timeout_secs: NonZero::new(5).unwrap(),
            max_pending_outgoing: 64,
            trim_connections_above: NonZero::new(192).unwrap(),
            trim_connections_to: 128,
            trim_grace_secs: 20,
        }
    }
}

/// `bootstrap/peers.toml` uses the `[bootstrap]` table of this config, so it is itself a valid
/// config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    bootstrap: PeersFileTable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFileTable {
    peers: Vec<Multiaddr>,
}

pub(crate) static BUILTIN_PEERS: LazyLock<Vec<Multiaddr>> = LazyLock::new(|| {
    toml::from_str::<PeersFile>(BUILTIN_PEERS_TOML)
        .expect("bootstrap/peers.toml is checked by a unit test")
        .bootstrap
        .peers
});

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            peers: BUILTIN_PEERS.clone(),
            min_peers: 4,
            check_interval_secs: NonZero::new(30).unwrap(),
        }
    }
}

impl Default for Mdns {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Default for Autonat {
    fn default() -> Self {
        Self {
            server: false,
            probe_interval_secs: NonZero::new(5).unwrap(),
            max_candidates: 10,
            recheck_secs: NonZero::new(300).unwrap(),
            only_global_ips: true,
        }
    }
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            server: false,
            reservations: 2,
            max_reservations: 512,
            max_reservations_per_peer: 4,
            reservation_duration_secs: NonZero::new(3600).unwrap(),
            max_circuits: 128,
            max_circuits_per_peer: 8,
            max_circuit_duration_secs: NonZero::new(3600).unwrap(),
            max_circuit_bytes: 1 << 30,
            reservations_per_peer_per_minute: NonZero::new(10).unwrap(),
            reservations_per_ip_per_minute: NonZero::new(30).unwrap(),
            circuits_per_peer_per_minute: NonZero::new(30).unwrap(),
            circuits_per_ip_per_minute: NonZero::new(60).unwrap(),
        }
    }
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            ttl_secs: 3600,
            republish_secs: 1200,
        }
    }
}
