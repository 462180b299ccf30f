//! The `[assist]` section and its `[assist.signaling]`, `[assist.gateway]` and `[[assist.turn]]`
//! tables. Checked by `crate::config`.

use std::{
    net::SocketAddr,
    num::{NonZero, NonZeroU32, NonZeroU64, NonZeroUsize},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// Assist mode (`protocols/assist.md`): REST endpoints for light clients, the ICE-lite STUN
/// responder, TURN credentials, `/metrics` and `/healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
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
    pub ice_ttl_secs: NonZeroU64,
    /// STUN/TURN keepalive interval advised to clients. Default: 30.
    pub keepalive_interval_secs: u64,
    /// ICE credentials remembered at once for STUN checks; the oldest are forgotten. Default: 65536.
    pub max_ice_credentials: NonZeroUsize,
    /// Paths a request may name. Default: 8.
    pub max_paths: NonZeroUsize,
    /// Milliseconds each path probe may take (probes run in parallel). Default: 2000.
    pub probe_timeout_ms: NonZeroU64,
    /// Paths one token may name for probing per minute (each costs a TCP and a QUIC dial); more
    /// get 429. Default: 32.
    pub probes_per_token_per_minute: NonZeroU32,
    /// Probe paths whose addresses are not public (loopback, private, link-local, carrier-grade
    /// NAT, …; for a host name, any address it resolves to). Off, such paths get 400 without
    /// being probed: otherwise any token holder could map the node's own network. Default: false.
    pub probe_private_targets: bool,
    /// Largest request body, bytes; larger ones get 413. Default: 16384.
    pub max_body_bytes: NonZeroUsize,
    /// Requests one IP address may make per `rate_window_secs` (IPv6: per /64). Default: 30.
    pub rate_burst: NonZeroU32,
    /// Window of the per-IP request limit. Default: 60.
    pub rate_window_secs: NonZeroU64,
    /// Seconds an IP address that went over the limit is refused (429). Default: 60.
    pub rate_penalty_secs: u64,
    /// STUN requests one IP address may send per second; more are dropped. Default: 50.
    pub stun_per_ip_per_second: NonZeroU32,
    /// STUN answers the responder sends per second to all addresses together; requests beyond it
    /// are dropped (a flood from many spoofed addresses cannot turn the node into a reflector).
    /// Default: 2000.
    pub stun_answers_per_second: NonZeroU32,
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
    pub max_message_bytes: NonZeroUsize,
    /// Messages queued for one session; when it overflows the session is closed (4000).
    /// Default: 1024.
    pub send_queue_messages: NonZeroUsize,
    /// Bytes queued for one session, likewise. Default: 1048576.
    pub send_queue_bytes: NonZeroUsize,
    /// Messages a session may send per second, on average. Default: 20.
    pub messages_per_second: NonZeroU32,
    /// Messages a session may send at once before the rate applies. Default: 100.
    pub burst: NonZeroU32,
    /// Rooms one session may be in. Default: 16.
    pub max_rooms_per_session: NonZeroUsize,
    /// Clients one room may hold. Default: 10000.
    pub max_room_members: NonZeroUsize,
    /// Rooms at once on this node. Default: 10000.
    pub max_rooms: NonZeroUsize,
    /// Sessions open at once on this node. Default: 16384.
    pub max_sessions: NonZeroUsize,
    /// Sessions one token may have open at once. Default: 8.
    pub max_sessions_per_token: NonZeroUsize,
    /// Seconds between the server's WebSocket pings. Default: 15.
    pub ping_interval_secs: NonZeroU64,
    /// A session that sends nothing (not even a pong) for this long is closed (4001). Default: 60.
    pub idle_timeout_secs: NonZeroU64,
}

impl Default for Signaling {
    fn default() -> Self {
        Self {
            max_message_bytes: NonZero::new(65536).unwrap(),
            send_queue_messages: NonZero::new(1024).unwrap(),
            send_queue_bytes: NonZero::new(1 << 20).unwrap(),
            messages_per_second: NonZero::new(20).unwrap(),
            burst: NonZero::new(100).unwrap(),
            max_rooms_per_session: NonZero::new(16).unwrap(),
            max_room_members: NonZero::new(10_000).unwrap(),
            max_rooms: NonZero::new(10_000).unwrap(),
            max_sessions: NonZero::new(16_384).unwrap(),
            max_sessions_per_token: NonZero::new(8).unwrap(),
            ping_interval_secs: NonZero::new(15).unwrap(),
            idle_timeout_secs: NonZero::new(60).unwrap(),
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
    pub max_connections: NonZeroUsize,
    /// Seconds a peer connection may take to open its DataChannel. Default: 30.
    pub connect_timeout_secs: NonZeroU64,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_listen: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            max_connections: NonZero::new(256).unwrap(),
            connect_timeout_secs: NonZero::new(30).unwrap(),
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

impl Default for Config {
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
            ice_ttl_secs: NonZero::new(600).unwrap(),
            keepalive_interval_secs: 30,
            max_ice_credentials: NonZero::new(65536).unwrap(),
            max_paths: NonZero::new(8).unwrap(),
            probe_timeout_ms: NonZero::new(2000).unwrap(),
            probes_per_token_per_minute: NonZero::new(32).unwrap(),
            probe_private_targets: false,
            max_body_bytes: NonZero::new(16384).unwrap(),
            rate_burst: NonZero::new(30).unwrap(),
            rate_window_secs: NonZero::new(60).unwrap(),
            rate_penalty_secs: 60,
            stun_per_ip_per_second: NonZero::new(50).unwrap(),
            stun_answers_per_second: NonZero::new(2000).unwrap(),
            turn: Vec::new(),
            signaling: Signaling::default(),
            gateway: Gateway::default(),
        }
    }
}
