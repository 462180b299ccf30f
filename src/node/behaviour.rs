//! The composed libp2p behaviour of a node: connection limits, identify, ping, Kademlia, mDNS,
//! AutoNAT v2 (client always, server for the bootstrap role) with AutoNAT v1 re-checks, circuit
//! relay v2 (client always, server for the bootstrap role), DCUtR and `libp2p-stream` for
//! `/commucat/data/1.0.0`.

use std::{num::NonZeroU32, time::Duration};

use libp2p::{
    autonat, connection_limits, dcutr, identify,
    identity::Keypair,
    mdns, ping, relay,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use super::Config;
use crate::dht;

/// Identify protocol version of the CommuCat network.
pub const PROTOCOL_VERSION: &str = "/commucat/1.0.0";

/// The agent string sent in identify: `commucat/<version>`.
pub fn agent_version() -> String {
    format!("commucat/{}", env!("CARGO_PKG_VERSION"))
}

/// The protocols a node with `cfg` serves to peers (`/api/server-info`): computed from the same
/// settings that switch the behaviours on. Kademlia is listed although a node in client mode
/// (`kad.mode = auto` while private) answers no DHT requests.
pub fn protocols(cfg: &Config) -> Vec<String> {
    let mut out = vec![
        crate::wire::PROTOCOL.to_string(),
        crate::node::hold::PROTOCOL.to_string(),
        dht::PROTOCOL.to_string(),
        "/ipfs/id/1.0.0".to_string(),
        "/ipfs/id/push/1.0.0".to_string(),
        ping::PROTOCOL_NAME.to_string(),
        dcutr::PROTOCOL_NAME.to_string(),
        relay::STOP_PROTOCOL_NAME.to_string(),
    ];
    if cfg.relay_server() {
        out.push(relay::HOP_PROTOCOL_NAME.to_string());
    }
    if cfg.autonat_server() {
        out.push("/libp2p/autonat/2/dial-request".to_string());
        out.push(autonat::v1::DEFAULT_PROTOCOL_NAME.to_string());
    }
    out
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    // First, so that connections over the limits are denied before any other behaviour sees them.
    pub ip_limits: super::ip_limits::Behaviour,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: dht::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat_client: autonat::v2::client::Behaviour,
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// AutoNAT v1: re-checks settled reachability (see [`crate::nat`]); answers probes only where
    /// the AutoNAT server runs.
    pub autonat_recheck: autonat::v1::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    /// `/commucat/data` streams, both ways (none lost, see [`crate::node::streams`]).
    pub data: crate::node::streams::Behaviour,
    /// `/commucat/hold/1.0.0`: the connections to `bootstrap.min_peers` peers kept open.
    pub hold: crate::node::hold::Behaviour,
    /// Streams of other protocols (the benchmark's raw streams).
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub fn new(
        keypair: &Keypair,
        cfg: &Config,
        with_mdns: bool,
        relay_client: relay::client::Behaviour,
        (data, hold): (
            crate::node::streams::Behaviour,
            crate::node::hold::Behaviour,
        ),
    ) -> std::io::Result<Self> {
        let local = keypair.public().to_peer_id();
        let n = &cfg.network;
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(n.max_connections.get()))
            .with_max_established_per_peer(Some(n.max_connections_per_peer.get()))
            .with_max_pending_outgoing(Some(n.max_pending_outgoing));
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), keypair.public())
                .with_agent_version(agent_version())
                .with_push_listen_addr_updates(true),
        );
        let mdns = if with_mdns {
            Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
        } else {
            None
        };
        let autonat_client = autonat::v2::client::Behaviour::new(
            rand::make_rng::<rand::rngs::StdRng>(),
            autonat::v2::client::Config::default()
                .with_probe_interval(Duration::from_secs(cfg.autonat.probe_interval_secs.get()))
                .with_max_candidates(cfg.autonat.max_candidates),
        );
        let autonat_server = cfg
            .autonat_server()
            .then(|| autonat::v2::server::Behaviour::new(rand::make_rng::<rand::rngs::StdRng>()));
        Ok(Self {
            ip_limits: super::ip_limits::Behaviour::new(super::ip_limits::Limits {
                pending_per_ip: n.max_pending_incoming_per_ip.get(),
                established_per_ip: n.max_connections_per_ip.get(),
                pending_per_transport: n.max_pending_incoming.get(),
            }),
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_secs(n.ping_interval_secs.get())),
            ),
            kad: dht::behaviour(local, &cfg.kad, cfg.kad_forced_server()),
            mdns: mdns.into(),
            autonat_client,
            autonat_server: autonat_server.into(),
            autonat_recheck: autonat::v1::Behaviour::new(local, autonat_v1_config(cfg)),
            relay_server: cfg
                .relay_server()
                .then(|| relay::Behaviour::new(local, relay_server_config(cfg)))
                .into(),
            relay_client,
            dcutr: dcutr::Behaviour::new(local),
            data,
            hold,
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// AutoNAT v1 as the re-checker of settled reachability: one probe every `autonat.recheck_secs`
/// once it is sure, sooner while it is not, and a single contrary answer is enough to change its
/// mind (`confidence_max = 1`). It serves probes only where the AutoNAT server is on.
fn autonat_v1_config(cfg: &Config) -> autonat::v1::Config {
    let recheck = Duration::from_secs(cfg.autonat.recheck_secs.get());
    let serve = cfg.autonat_server();
    autonat::v1::Config {
        boot_delay: Duration::from_secs(cfg.autonat.probe_interval_secs.get()),
        refresh_interval: recheck,
        retry_interval: recheck.min(RECHECK_RETRY),
        confidence_max: 1,
        throttle_server_period: Duration::ZERO,
        only_global_ips: cfg.autonat.only_global_ips,
        throttle_clients_global_max: if serve { 30 } else { 0 },
        throttle_clients_peer_max: if serve { 3 } else { 0 },
        ..Default::default()
    }
}

/// Longest wait between AutoNAT v1 probes while its answer is not settled.
pub const RECHECK_RETRY: Duration = Duration::from_secs(60);

/// The relay server's limits from `[relay]` (see `config/bootstrap.toml` for why they differ from
/// libp2p's defaults).
fn relay_server_config(cfg: &Config) -> relay::Config {
    let r = &cfg.relay;
    let per_minute = |n: u32| {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        (n, Duration::from_secs(60) / n.get())
    };
    let mut c = relay::Config {
        max_reservations: r.max_reservations,
        max_reservations_per_peer: r.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(r.reservation_duration_secs.get()),
        reservation_rate_limiters: Vec::new(),
        max_circuits: r.max_circuits,
        max_circuits_per_peer: r.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(r.max_circuit_duration_secs.get()),
        max_circuit_bytes: r.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    };
    let (n, every) = per_minute(r.reservations_per_peer_per_minute.get());
    c = c.reservation_rate_per_peer(n, every);
    let (n, every) = per_minute(r.reservations_per_ip_per_minute.get());
    c = c.reservation_rate_per_ip(n, every);
    let (n, every) = per_minute(r.circuits_per_peer_per_minute.get());
    c = c.circuit_src_per_peer(n, every);
    let (n, every) = per_minute(r.circuits_per_ip_per_minute.get());
    c.circuit_src_per_ip(n, every)
}
