//! Node configuration, layered: built-in defaults < TOML file (`--config`) < `COMMUCAT_*` environment
//! < command-line flags.
//!
//! Environment keys: `COMMUCAT_<KEY>` for top-level keys and `COMMUCAT_<SECTION>__<KEY>` (two
//! underscores) for keys in a section, e.g. `COMMUCAT_ROLE=bootstrap`,
//! `COMMUCAT_KAD__MODE=server`, `COMMUCAT_NETWORK__LISTEN='["/ip4/0.0.0.0/tcp/4001"]'`.
//! Unknown keys, in any layer, are an error that names the key and where it came from.
//! `config/desktop.toml` documents every key.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override config keys.
pub use crate::dht::{Config as Kad, Mode as KadMode};

pub const ENV_PREFIX: &str = "COMMUCAT_";
/// `COMMUCAT_*` variables (lower-cased, prefix removed) that are command-line settings, not config keys.
pub const ENV_NOT_CONFIG: &[&str] = &["data_dir", "log_format"];
/// The built-in bootstrap list, compiled in from `bootstrap/peers.toml`.
pub const BUILTIN_PEERS_TOML: &str = include_str!("../bootstrap/peers.toml");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read config file {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and unknown or mistyped keys; the message names the key and its source.
    #[error("{}", describe(.0))]
    Invalid(Box<figment::Error>),
    #[error("invalid value for `{key}`: {reason}")]
    Value { key: &'static str, reason: String },
}

/// The effective node configuration. Every field states its default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What this node is for: `desktop` (default) or `bootstrap`.
    pub role: Role,
    pub network: Network,
    pub bootstrap: Bootstrap,
    pub kad: Kad,
    pub mdns: Mdns,
    pub autonat: Autonat,
    pub relay: Relay,
    pub peerbook: PeerBook,
    pub presence: Presence,
    pub data: Data,
    pub control: Control,
    pub assist: Assist,
    pub storage: Storage,
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
    /// Addresses to listen on. Default: TCP and QUIC on all IPv4 and IPv6 interfaces, port 4001.
    pub listen: Vec<Multiaddr>,
    /// Addresses this node is known to be reachable at (e.g. a server's public address); they are
    /// announced and count as confirmed. Default: none.
    pub external_addresses: Vec<Multiaddr>,
    /// Seconds a connection with no active protocol stays open. Default: 120.
    pub idle_connection_timeout_secs: u64,
    /// Seconds between pings on each connection (liveness and the RTT shown by `peers`). Default: 15.
    pub ping_interval_secs: u64,
    /// Established connections, in total. Default: 256.
    pub max_connections: u32,
    /// Established connections to one peer: TCP and QUIC, a relayed one, AutoNAT dial-backs
    /// (which count too) and hole-punch attempts. Default: 8.
    pub max_connections_per_peer: u32,
    /// Incoming connections still handshaking, per transport: TCP and QUIC each have this many,
    /// so a flood on one leaves the other alone. Default: 64.
    pub max_pending_incoming: u32,
    /// Incoming connections still handshaking from one IP address (IPv6: one /64). Default: 8.
    pub max_pending_incoming_per_ip: u32,
    /// Incoming connections established from one IP address (IPv6: one /64); outgoing ones are
    /// not counted. Default: 32.
    pub max_connections_per_ip: u32,
    /// Seconds an incoming TCP connection has to finish its security and multiplexer handshake
    /// (a few round trips); outgoing dials get 20. QUIC's handshake has its own 5 s. Default: 5.
    pub inbound_handshake_timeout_secs: u64,
    /// Outgoing dials in progress. Default: 64.
    pub max_pending_outgoing: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// Peers to join the network through, as multiaddrs ending in `/p2p/<peer-id>`.
    /// Default: the list in `bootstrap/peers.toml`, compiled in.
    pub peers: Vec<Multiaddr>,
    /// When fewer peers than this are connected, bootstrap and remembered peers are dialled again.
    /// Default: 4.
    pub min_peers: usize,
    /// Seconds between those checks. Default: 30.
    pub check_interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mdns {
    /// Discover peers on the local network with mDNS and dial them. Default: true.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Autonat {
    /// Run the AutoNAT v2 server (always on for the bootstrap role). Default: false.
    pub server: bool,
    /// Seconds between AutoNAT v2 probes of candidate external addresses. Default: 5.
    pub probe_interval_secs: u64,
    /// Candidate external addresses tested at most per probe round; 0 turns AutoNAT v2 probing
    /// off. Default: 10.
    pub max_candidates: usize,
    /// Seconds between re-checks of reachability that has been settled (AutoNAT v1 probes);
    /// confirmed addresses that stopped working are dropped, working ones that failed before are
    /// confirmed. AutoNAT v2 alone never tests an address twice (rust-libp2p #6203). Default: 300.
    pub recheck_secs: u64,
    /// Ask and answer AutoNAT probes only for globally routable IP addresses. Turn off on private
    /// test networks. Default: true.
    pub only_global_ips: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Relay {
    /// Run the circuit relay v2 server (always on for the bootstrap role). Default: false.
    pub server: bool,
    /// Relays a node that is not publicly reachable keeps reservations on (taken from the
    /// bootstrap list, then from relays met through the DHT). 0 turns the relay client off.
    /// Default: 2.
    pub reservations: usize,
    /// Server: reservations held at once. Default: 512.
    pub max_reservations: usize,
    /// Server: reservations one peer holds at once. Default: 4.
    pub max_reservations_per_peer: usize,
    /// Server: lifetime of a reservation; clients renew before it ends. Default: 3600.
    pub reservation_duration_secs: u64,
    /// Server: relayed connections open at once. Default: 128.
    pub max_circuits: usize,
    /// Server: relayed connections one peer has open at once. Default: 8.
    pub max_circuits_per_peer: usize,
    /// Server: lifetime of one relayed connection, after which the peers reconnect. libp2p's
    /// 2 minutes cut file transfers short. Default: 3600.
    pub max_circuit_duration_secs: u64,
    /// Server: bytes one relayed connection carries (both directions) before it is closed; 0 means
    /// no limit. libp2p's 128 KiB does not fit one photo. Default: 1073741824 (1 GiB).
    pub max_circuit_bytes: u64,
    /// Server: reservation requests per minute from one peer (also the burst). Default: 10.
    pub reservations_per_peer_per_minute: u32,
    /// Server: reservation requests per minute from one IP address. Default: 30.
    pub reservations_per_ip_per_minute: u32,
    /// Server: circuit requests per minute from one source peer. Default: 30.
    pub circuits_per_peer_per_minute: u32,
    /// Server: circuit requests per minute from one source IP address. Default: 60.
    pub circuits_per_ip_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerBook {
    /// Peers remembered across restarts; the least recently seen are forgotten first. Default: 1000.
    pub max_peers: usize,
    /// Addresses remembered per peer. Default: 8.
    pub max_addrs_per_peer: usize,
    /// Most recently seen peers dialled again when the node starts, and while it has too few peers.
    /// Default: 16.
    pub redial_on_start: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// Lifetime of the signed presence record this node publishes in the DHT. Default: 3600.
    pub ttl_secs: u64,
    /// Seconds between republications (addresses that change trigger one sooner). Default: 1200.
    pub republish_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Data {
    /// Where received files land. Default: empty = `DATA_DIR/downloads`.
    pub downloads_dir: Option<std::path::PathBuf>,
    /// Largest file this node accepts. Default: 4 GiB.
    pub max_file_bytes: u64,
    /// RaptorQ symbol size of files this node sends (64 … 8192, multiple of 8). Default: 1024.
    pub symbol_size: u16,
    /// Bytes per RaptorQ source block of files this node sends (a multiple of the symbol size,
    /// 4 KiB … 4 MiB). Default: 1048576.
    pub block_size: u32,
    /// Repair packets per block in ‰ of its source packets; 0 on a reliable stream. Default: 0.
    pub repair_per_mille: u16,
    /// Longest wait between delivery attempts to an unreachable peer (backoff from 1 s). Default: 60.
    pub max_retry_secs: u64,
    /// Upper bound on the rate this node sends file data at, KiB/s; 0 = unlimited. Default: 0.
    pub max_send_rate_kib: u64,
    /// Age at which the key bundle (Noise static key and ML-KEM-768 key) is replaced by a new one;
    /// 0 = never. Default: 604800 (a week).
    pub key_rotation_secs: u64,
    /// How long a replaced bundle still answers handshakes that name it. Default: 604800.
    pub key_grace_secs: u64,
}

impl Data {
    /// The bundle rotation schedule these settings describe.
    pub fn key_schedule(&self) -> crate::crypto::keyring::Schedule {
        crate::crypto::keyring::Schedule {
            rotation: (self.key_rotation_secs > 0)
                .then(|| Duration::from_secs(self.key_rotation_secs)),
            grace: Duration::from_secs(self.key_grace_secs),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// Address of the local control API (HTTP + JSON, bearer token). Port 0 picks a free port; the
    /// actual address is written to `DATA_DIR/control.addr`. Default: 127.0.0.1:5731.
    pub listen: SocketAddr,
}

/// Assist mode (`protocols/assist.md`): REST endpoints for light clients, the ICE-lite STUN
/// responder, TURN credentials, `/metrics` and `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Assist {
    /// Serve assist mode (also `commucat run --assist`). Default: false.
    pub enabled: bool,
    /// HTTP(S) address of the assist API. Port 0 picks a free port. Default: 0.0.0.0:8443.
    pub listen: SocketAddr,
    /// UDP address of the ICE-lite STUN responder. Port 0 picks a free port. Default: 0.0.0.0:3478.
    pub stun_listen: SocketAddr,
    /// Domain name `/api/server-info` reports. Default: none (the field is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Public IP address of the STUN responder's host candidate. Default: none = the
    /// `stun_listen` address when it is a specific one, else the node's first confirmed external
    /// address; no candidate is offered when there is neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<std::net::IpAddr>,
    /// PEM certificate chain for HTTPS; with `tls_key`. Default: none (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Bearer tokens accepted besides the ones issued with `commucat token issue`, as SHA-256 hex
    /// (`commucat token hash TOKEN`). Default: none.
    pub token_hashes: Vec<String>,
    /// Lifetime of the ICE credentials (and TURN REST credentials) handed out. Default: 600.
    pub ice_ttl_secs: u64,
    /// STUN/TURN keepalive interval advised to clients. Default: 30.
    pub keepalive_interval_secs: u64,
    /// ICE credentials remembered at once for STUN checks; the oldest are forgotten. Default: 65536.
    pub max_ice_credentials: usize,
    /// Paths a request may name. Default: 8.
    pub max_paths: usize,
    /// Milliseconds each path probe may take (probes run in parallel). Default: 2000.
    pub probe_timeout_ms: u64,
    /// Paths one token may name for probing per minute (each costs a TCP and a QUIC dial); more
    /// get 429. Default: 32.
    pub probes_per_token_per_minute: u32,
    /// Probe paths whose addresses are not public (loopback, private, link-local, carrier-grade
    /// NAT, …; for a host name, any address it resolves to). Off, such paths get 400 without
    /// being probed: otherwise any token holder could map the node's own network. Default: false.
    pub probe_private_targets: bool,
    /// Largest request body, bytes; larger ones get 413. Default: 16384.
    pub max_body_bytes: usize,
    /// Requests one IP address may make per `rate_window_secs` (IPv6: per /64). Default: 30.
    pub rate_burst: u32,
    /// Window of the per-IP request limit. Default: 60.
    pub rate_window_secs: u64,
    /// Seconds an IP address that went over the limit is refused (429). Default: 60.
    pub rate_penalty_secs: u64,
    /// STUN requests one IP address may send per second; more are dropped. Default: 50.
    pub stun_per_ip_per_second: u32,
    /// STUN answers the responder sends per second to all addresses together; requests beyond it
    /// are dropped (a flood from many spoofed addresses cannot turn the node into a reflector).
    /// Default: 2000.
    pub stun_answers_per_second: u32,
    /// TURN servers handed to clients.
    pub turn: Vec<TurnServer>,
    /// WebSocket signaling at `/api/v1/ws` (`protocols/signaling-v1.md`).
    pub signaling: Signaling,
    /// The WebRTC gateway: light clients' DataChannels into `/commucat/data`.
    pub gateway: Gateway,
}

/// `[assist.signaling]`: limits of the signaling server (`protocols/signaling-v1.md` §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Signaling {
    /// Largest message, bytes; a larger one gets `error` (`too-large`) and the session closes
    /// (1009). Default: 65536.
    pub max_message_bytes: usize,
    /// Messages queued for one session; when it overflows the session is closed (4000).
    /// Default: 1024.
    pub send_queue_messages: usize,
    /// Bytes queued for one session, likewise. Default: 1048576.
    pub send_queue_bytes: usize,
    /// Messages a session may send per second, on average. Default: 20.
    pub messages_per_second: u32,
    /// Messages a session may send at once before the rate applies. Default: 100.
    pub burst: u32,
    /// Rooms one session may be in. Default: 16.
    pub max_rooms_per_session: usize,
    /// Clients one room may hold. Default: 10000.
    pub max_room_members: usize,
    /// Rooms at once on this node. Default: 10000.
    pub max_rooms: usize,
    /// Sessions open at once on this node. Default: 16384.
    pub max_sessions: usize,
    /// Sessions one token may have open at once. Default: 8.
    pub max_sessions_per_token: usize,
    /// Seconds between the server's WebSocket pings. Default: 15.
    pub ping_interval_secs: u64,
    /// A session that sends nothing (not even a pong) for this long is closed (4001). Default: 60.
    pub idle_timeout_secs: u64,
}

impl Default for Signaling {
    fn default() -> Self {
        Self {
            max_message_bytes: 65536,
            send_queue_messages: 1024,
            send_queue_bytes: 1 << 20,
            messages_per_second: 20,
            burst: 100,
            max_rooms_per_session: 16,
            max_room_members: 10_000,
            max_rooms: 10_000,
            max_sessions: 16_384,
            max_sessions_per_token: 8,
            ping_interval_secs: 15,
            idle_timeout_secs: 60,
        }
    }
}

/// `[assist.gateway]`: the WebRTC gateway (`protocols/signaling-v1.md` §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gateway {
    /// Answer light clients' offers as `node`. Default: true.
    pub enabled: bool,
    /// Local UDP addresses for WebRTC; `0.0.0.0:0` binds every non-loopback interface on a free
    /// port. Default: ["0.0.0.0:0"].
    pub udp_listen: Vec<SocketAddr>,
    /// Peer connections with light clients at once. Default: 256.
    pub max_connections: usize,
    /// Seconds a peer connection may take to open its DataChannel. Default: 30.
    pub connect_timeout_secs: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_listen: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            max_connections: 256,
            connect_timeout_secs: 30,
        }
    }
}

/// A TURN server in `[[assist.turn]]`: either `secret` (coturn `use-auth-secret`, credentials made
/// per request) or a static `username` / `password`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnServer {
    /// `turn:` / `turns:` URIs, e.g. `turn:turn.example.org:3478?transport=udp`.
    pub urls: Vec<String>,
    /// Shared secret of coturn's TURN REST API (`static-auth-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Realm hint for clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// sled page-cache size in MiB. Default: 64.
    pub cache_mib: u64,
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
            ping_interval_secs: 15,
            max_connections: 256,
            max_connections_per_peer: 8,
            max_pending_incoming: 64,
            max_pending_incoming_per_ip: 8,
            max_connections_per_ip: 32,
            inbound_handshake_timeout_secs: 5,
            max_pending_outgoing: 64,
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

static BUILTIN_PEERS: LazyLock<Vec<Multiaddr>> = LazyLock::new(|| {
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
            check_interval_secs: 30,
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
            probe_interval_secs: 5,
            max_candidates: 10,
            recheck_secs: 300,
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
            reservation_duration_secs: 3600,
            max_circuits: 128,
            max_circuits_per_peer: 8,
            max_circuit_duration_secs: 3600,
            max_circuit_bytes: 1 << 30,
            reservations_per_peer_per_minute: 10,
            reservations_per_ip_per_minute: 30,
            circuits_per_peer_per_minute: 30,
            circuits_per_ip_per_minute: 60,
        }
    }
}

impl Default for PeerBook {
    fn default() -> Self {
        Self {
            max_peers: 1000,
            max_addrs_per_peer: 8,
            redial_on_start: 16,
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

impl Default for Data {
    fn default() -> Self {
        Self {
            downloads_dir: None,
            max_file_bytes: 4 << 30,
            symbol_size: 1024,
            block_size: 1 << 20,
            repair_per_mille: 0,
            max_retry_secs: 60,
            max_send_rate_kib: 0,
            key_rotation_secs: 7 * 24 * 3600,
            key_grace_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for Control {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5731)),
        }
    }
}

impl Assist {
    fn validate(&self) -> Result<(), Error> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Value {
                key: "assist.tls_cert",
                reason: "assist.tls_cert and assist.tls_key go together".into(),
            });
        }
        for hash in &self.token_hashes {
            if hash.len() != 64 || hex::decode(hash).is_err() {
                return Err(Error::Value {
                    key: "assist.token_hashes",
                    reason: format!("`{hash}` is not a SHA-256 hex digest (64 hex digits)"),
                });
            }
        }
        if self.max_paths > 64 {
            return Err(Error::Value {
                key: "assist.max_paths",
                reason: "at most 64".into(),
            });
        }
        for turn in &self.turn {
            if turn.urls.is_empty()
                || turn
                    .urls
                    .iter()
                    .any(|u| !(u.starts_with("turn:") || u.starts_with("turns:")))
            {
                return Err(Error::Value {
                    key: "assist.turn.urls",
                    reason: "each TURN server needs `turn:` or `turns:` URIs".into(),
                });
            }
            let static_creds = turn.username.is_some() && turn.password.is_some();
            if turn.secret.is_some() == static_creds
                || turn.username.is_some() != turn.password.is_some()
            {
                return Err(Error::Value {
                    key: "assist.turn",
                    reason: format!(
                        "{}: give either `secret` or both `username` and `password`",
                        turn.urls[0]
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for Assist {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            stun_listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            domain: None,
            public_ip: None,
            tls_cert: None,
            tls_key: None,
            token_hashes: Vec::new(),
            ice_ttl_secs: 600,
            keepalive_interval_secs: 30,
            max_ice_credentials: 65536,
            max_paths: 8,
            probe_timeout_ms: 2000,
            probes_per_token_per_minute: 32,
            probe_private_targets: false,
            max_body_bytes: 16384,
            rate_burst: 30,
            rate_window_secs: 60,
            rate_penalty_secs: 60,
            stun_per_ip_per_second: 50,
            stun_answers_per_second: 2000,
            turn: Vec::new(),
            signaling: Signaling::default(),
            gateway: Gateway::default(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self { cache_mib: 64 }
    }
}

/// Values given on the command line: the last and strongest layer. `None` leaves a key alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub network: NetworkOverrides,
    pub bootstrap: BootstrapOverrides,
    pub control: ControlOverrides,
    pub assist: AssistOverrides,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<Multiaddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_addresses: Option<Vec<Multiaddr>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BootstrapOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Multiaddr>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AssistOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun_listen: Option<SocketAddr>,
}

impl Config {
    /// Builds the effective config from the defaults, an optional file, the `COMMUCAT_*` process
    /// environment and the command-line overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment treats a missing file as empty; a file the user named must exist and be readable.
            std::fs::read(path).map_err(|source| Error::Unreadable {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::prefixed(ENV_PREFIX).ignore(ENV_NOT_CONFIG).split("__");
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| Error::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The config a TOML text gives on top of the built-in defaults, checked as [`Config::load`]
    /// checks a file (no environment, no flags).
    pub fn parse_toml(text: &str) -> Result<Self, Error> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| Error::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: bootstrap addresses name a peer, limits are non-zero.
    pub fn validate(&self) -> Result<(), Error> {
        for addr in &self.bootstrap.peers {
            if peer_id_of(addr).is_none() {
                return Err(Error::Value {
                    key: "bootstrap.peers",
                    reason: format!("{addr} does not end in /p2p/<peer-id>"),
                });
            }
        }
        if self.network.listen.is_empty() {
            return Err(Error::Value {
                key: "network.listen",
                reason: "at least one listen address is needed".into(),
            });
        }
        let nonzero: &[(&'static str, u64)] = &[
            (
                "network.max_connections",
                self.network.max_connections.into(),
            ),
            (
                "network.max_connections_per_peer",
                self.network.max_connections_per_peer.into(),
            ),
            (
                "network.ping_interval_secs",
                self.network.ping_interval_secs,
            ),
            (
                "network.max_pending_incoming",
                self.network.max_pending_incoming.into(),
            ),
            (
                "network.max_pending_incoming_per_ip",
                self.network.max_pending_incoming_per_ip.into(),
            ),
            (
                "network.max_connections_per_ip",
                self.network.max_connections_per_ip.into(),
            ),
            (
                "network.inbound_handshake_timeout_secs",
                self.network.inbound_handshake_timeout_secs,
            ),
            ("kad.query_timeout_secs", self.kad.query_timeout_secs),
            (
                "bootstrap.check_interval_secs",
                self.bootstrap.check_interval_secs,
            ),
            (
                "autonat.probe_interval_secs",
                self.autonat.probe_interval_secs,
            ),
            ("autonat.recheck_secs", self.autonat.recheck_secs),
            (
                "relay.reservation_duration_secs",
                self.relay.reservation_duration_secs,
            ),
            (
                "relay.max_circuit_duration_secs",
                self.relay.max_circuit_duration_secs,
            ),
            (
                "relay.reservations_per_peer_per_minute",
                self.relay.reservations_per_peer_per_minute.into(),
            ),
            (
                "relay.reservations_per_ip_per_minute",
                self.relay.reservations_per_ip_per_minute.into(),
            ),
            (
                "relay.circuits_per_peer_per_minute",
                self.relay.circuits_per_peer_per_minute.into(),
            ),
            (
                "relay.circuits_per_ip_per_minute",
                self.relay.circuits_per_ip_per_minute.into(),
            ),
            ("assist.ice_ttl_secs", self.assist.ice_ttl_secs),
            (
                "assist.max_ice_credentials",
                self.assist.max_ice_credentials as u64,
            ),
            ("assist.max_paths", self.assist.max_paths as u64),
            ("assist.probe_timeout_ms", self.assist.probe_timeout_ms),
            (
                "assist.probes_per_token_per_minute",
                self.assist.probes_per_token_per_minute.into(),
            ),
            ("assist.max_body_bytes", self.assist.max_body_bytes as u64),
            ("assist.rate_burst", self.assist.rate_burst.into()),
            ("assist.rate_window_secs", self.assist.rate_window_secs),
            (
                "assist.stun_per_ip_per_second",
                self.assist.stun_per_ip_per_second.into(),
            ),
            (
                "assist.stun_answers_per_second",
                self.assist.stun_answers_per_second.into(),
            ),
            (
                "assist.signaling.max_message_bytes",
                self.assist.signaling.max_message_bytes as u64,
            ),
            (
                "assist.signaling.send_queue_messages",
                self.assist.signaling.send_queue_messages as u64,
            ),
            (
                "assist.signaling.send_queue_bytes",
                self.assist.signaling.send_queue_bytes as u64,
            ),
            (
                "assist.signaling.messages_per_second",
                self.assist.signaling.messages_per_second.into(),
            ),
            ("assist.signaling.burst", self.assist.signaling.burst.into()),
            (
                "assist.signaling.max_rooms_per_session",
                self.assist.signaling.max_rooms_per_session as u64,
            ),
            (
                "assist.signaling.max_room_members",
                self.assist.signaling.max_room_members as u64,
            ),
            (
                "assist.signaling.max_rooms",
                self.assist.signaling.max_rooms as u64,
            ),
            (
                "assist.signaling.max_sessions",
                self.assist.signaling.max_sessions as u64,
            ),
            (
                "assist.signaling.max_sessions_per_token",
                self.assist.signaling.max_sessions_per_token as u64,
            ),
            (
                "assist.signaling.ping_interval_secs",
                self.assist.signaling.ping_interval_secs,
            ),
            (
                "assist.signaling.idle_timeout_secs",
                self.assist.signaling.idle_timeout_secs,
            ),
            (
                "assist.gateway.max_connections",
                self.assist.gateway.max_connections as u64,
            ),
            (
                "assist.gateway.connect_timeout_secs",
                self.assist.gateway.connect_timeout_secs,
            ),
        ];
        for &(key, value) in nonzero {
            if value == 0 {
                return Err(Error::Value {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if self.presence.ttl_secs > crate::dht::record::MAX_TTL_SECS {
            return Err(Error::Value {
                key: "presence.ttl_secs",
                reason: format!(
                    "at most {} (other nodes refuse longer-lived records)",
                    crate::dht::record::MAX_TTL_SECS
                ),
            });
        }
        if self.presence.republish_secs >= self.presence.ttl_secs {
            return Err(Error::Value {
                key: "presence.republish_secs",
                reason: "must be shorter than presence.ttl_secs".into(),
            });
        }
        let d = &self.data;
        if !(64..=8192).contains(&d.symbol_size) || !d.symbol_size.is_multiple_of(8) {
            return Err(Error::Value {
                key: "data.symbol_size",
                reason: "must be 64 … 8192 and a multiple of 8".into(),
            });
        }
        if !(4096..=4 << 20).contains(&d.block_size)
            || !d.block_size.is_multiple_of(u32::from(d.symbol_size))
        {
            return Err(Error::Value {
                key: "data.block_size",
                reason: "must be 4 KiB … 4 MiB and a multiple of data.symbol_size".into(),
            });
        }
        if u64::from(d.block_size / u32::from(d.symbol_size)) > crate::fec::MAX_SYMBOLS_PER_BLOCK {
            return Err(Error::Value {
                key: "data.block_size",
                reason: format!(
                    "at most {} symbols of data.symbol_size per block",
                    crate::fec::MAX_SYMBOLS_PER_BLOCK
                ),
            });
        }
        if d.repair_per_mille > 1000 {
            return Err(Error::Value {
                key: "data.repair_per_mille",
                reason: "at most 1000 (as many repair as source packets)".into(),
            });
        }
        self.assist.validate()?;
        Ok(())
    }

    /// Kademlia runs in server mode from the start (bootstrap role, or `kad.mode = "server"`).
    pub fn kad_forced_server(&self) -> bool {
        self.role == Role::Bootstrap || self.kad.mode == KadMode::Server
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

    /// The effective config as TOML (what `commucat config show` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config is plain TOML values")
    }
}

/// A config error in the user's terms: the dotted key, what is wrong with it, and where it came from
/// (file, environment variable or flag). figment's own text shows its internal profile and
/// upper-cases environment keys.
fn describe(error: &figment::Error) -> String {
    use figment::{Source, error::Kind};
    error
        .clone()
        .into_iter()
        .map(|e| {
            let key = e
                .path
                .iter()
                .map(|p| p.to_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            let origin = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(Source::File(path)) => format!("config file {}", path.display()),
                    _ if m.name.contains("environment") => format!(
                        "environment variable {ENV_PREFIX}{}",
                        e.path.join("__").to_uppercase()
                    ),
                    Some(Source::Code(_)) => "command-line flags".to_string(),
                    _ => m.name.to_string(),
                },
                None => "configuration".to_string(),
            };
            let what = match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!(
                        "unknown key `{key}` (expected one of: {})",
                        expected.join(", ")
                    )
                }
                kind if key.is_empty() => return format!("{origin}: {kind}"),
                kind => format!("invalid value for `{key}`: {kind}"),
            };
            format!("{what} in {origin}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The peer id at the end of a multiaddr (`…/p2p/<id>`), if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dotted key of a TOML table (`network.listen`, …).
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = format!("{prefix}{k}");
            match v {
                toml::Value::Table(t) => keys(t, &format!("{key}."), out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn builtin_bootstrap_list_parses() {
        let cfg = Config::default();
        cfg.validate().expect("built-in defaults are valid");
        assert_eq!(cfg.bootstrap.peers, *BUILTIN_PEERS);
    }

    #[test]
    fn shipped_configs_load_and_document_every_key() {
        let mut all = Vec::new();
        keys(
            &toml::from_str(&Config::default().to_toml()).unwrap(),
            "",
            &mut all,
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["desktop.toml", "bootstrap.toml", "dev.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            // Strict parse of the file alone: deny_unknown_fields, every value of the right type.
            let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut present = Vec::new();
            keys(&toml::from_str(&text).unwrap(), "", &mut present);
            let missing: Vec<_> = all.iter().filter(|k| !present.contains(k)).collect();
            assert!(missing.is_empty(), "{name} lacks {missing:?}");
        }
        let desktop: Config =
            toml::from_str(&std::fs::read_to_string(dir.join("desktop.toml")).unwrap()).unwrap();
        assert_eq!(
            desktop,
            Config::default(),
            "desktop.toml spells out the built-in defaults"
        );
    }

    #[test]
    fn bootstrap_addresses_must_name_a_peer() {
        let mut cfg = Config::default();
        cfg.bootstrap.peers = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("bootstrap.peers") && err.contains("/p2p/"),
            "{err}"
        );
    }
}
