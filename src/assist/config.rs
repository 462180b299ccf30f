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
    /// Serve assist mode (also `commucat run --assist`).
    pub enabled: bool,
    /// HTTP(S) address of the assist API. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// UDP address of the ICE-lite STUN responder. Port 0 picks a free port.
    pub stun_listen: SocketAddr,
    /// Domain name `/api/server-info` reports; without one the field is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Public IP address of the STUN responder's host candidate. Without one: the `stun_listen`
    /// address when it is a specific one, else the node's first confirmed external address; no
    /// candidate is offered when there is neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<std::net::IpAddr>,
    /// PEM certificate chain for HTTPS; with `tls_key`. Without both: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Bearer tokens accepted besides the ones issued with `commucat token issue`, as SHA-256 hex
    /// (`commucat token hash TOKEN`).
    pub token_hashes: Vec<String>,
    /// Lifetime of the ICE credentials (and TURN REST credentials) handed out.
    pub ice_ttl_secs: NonZeroU64,
    /// STUN/TURN keepalive interval advised to clients.
    pub keepalive_interval_secs: u64,
    /// ICE credentials remembered at once for STUN checks; the oldest are forgotten.
    pub max_ice_credentials: NonZeroUsize,
    /// Paths a request may name.
    pub max_paths: NonZeroUsize,
    /// Milliseconds each path probe may take (probes run in parallel).
    pub probe_timeout_ms: NonZeroU64,
    /// Paths one token may name for probing per minute (each costs a TCP and a QUIC dial); more
    /// get 429.
    pub probes_per_token_per_minute: NonZeroU32,
    /// Probe paths whose addresses are not public (loopback, private, link-local, carrier-grade
    /// NAT, …; for a host name, any address it resolves to). Off, such paths get 400 without
    /// being probed: otherwise any token holder could map the node's own network.
    pub probe_private_targets: bool,
    /// Largest request body, bytes; larger ones get 413.
    pub max_body_bytes: NonZeroUsize,
    /// Requests one IP address may make per `rate_window_secs` (IPv6: per /64).
    pub rate_burst: NonZeroU32,
    /// Window of the per-IP request limit.
    pub rate_window_secs: NonZeroU64,
    /// Seconds an IP address that went over the limit is refused (429).
    pub rate_penalty_secs: u64,
    /// STUN requests one IP address may send per second; more are dropped.
    pub stun_per_ip_per_second: NonZeroU32,
    /// STUN answers the responder sends per second to all addresses together; requests beyond it
    /// are dropped (a flood from many spoofed addresses cannot turn the node into a reflector).
    pub stun_answers_per_second: NonZeroU32,
    /// Lifetime of a pairing code (`commucat pair`, `POST /api/pairing`).
    pub pairing_code_ttl_secs: NonZeroU64,
    /// Lifetime of a paired device's certificate and assist token.
    pub device_ttl_secs: NonZeroU64,
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
    /// (1009).
    pub max_message_bytes: NonZeroUsize,
    /// Messages queued for one session; when it overflows the session is closed (4000).
    pub send_queue_messages: NonZeroUsize,
    /// Bytes queued for one session, likewise.
    pub send_queue_bytes: NonZeroUsize,
    /// Messages a session may send per second, on average.
    pub messages_per_second: NonZeroU32,
    /// Messages a session may send at once before the rate applies.
    pub burst: NonZeroU32,
    /// Rooms one session may be in.
    pub max_rooms_per_session: NonZeroUsize,
    /// Clients one room may hold.
    pub max_room_members: NonZeroUsize,
    /// Rooms at once on this node.
    pub max_rooms: NonZeroUsize,
    /// Sessions open at once on this node.
    pub max_sessions: NonZeroUsize,
    /// Sessions one token may have open at once.
    pub max_sessions_per_token: NonZeroUsize,
    /// Seconds between the server's WebSocket pings.
    pub ping_interval_secs: NonZeroU64,
    /// A session that sends nothing (not even a pong) for this long is closed (4001).
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
    /// Answer light clients' offers as `node`.
    pub enabled: bool,
    /// Local UDP addresses for WebRTC; `0.0.0.0:0` binds every non-loopback interface on a free
    /// port.
    pub udp_listen: Vec<SocketAddr>,
    /// Peer connections with light clients at once.
    pub max_connections: NonZeroUsize,
    /// Seconds a peer connection may take to open its DataChannel.
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
            pairing_code_ttl_secs: NonZero::new(600).unwrap(),
            device_ttl_secs: NonZero::new(90 * 24 * 3600).unwrap(),
            turn: Vec::new(),
            signaling: Signaling::default(),
            gateway: Gateway::default(),
        }
    }
}
