//! The composed libp2p behaviour of a node: connection limits, identify, ping, Kademlia, mDNS,
//! AutoNAT v2 (client always, server for the bootstrap role) and `libp2p-stream` for
//! `/commucat/data/1.0.0`.

use std::time::Duration;

use libp2p::{
    autonat, connection_limits, identify,
    identity::Keypair,
    mdns, ping,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use crate::{config::Config, dht};

/// Identify protocol version of the CommuCat network.
pub const PROTOCOL_VERSION: &str = "/commucat/1.0.0";

/// The agent string sent in identify: `commucat/<version>`.
pub fn agent_version() -> String {
    format!("commucat/{}", env!("CARGO_PKG_VERSION"))
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    // First, so that connections over the limits are denied before any other behaviour sees them.
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: dht::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat_client: autonat::v2::client::Behaviour,
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub fn new(keypair: &Keypair, cfg: &Config, with_mdns: bool) -> std::io::Result<Self> {
        let local = keypair.public().to_peer_id();
        let n = &cfg.network;
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(n.max_connections))
            .with_max_established_per_peer(Some(n.max_connections_per_peer))
            .with_max_pending_incoming(Some(n.max_pending_incoming))
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
                .with_probe_interval(Duration::from_secs(cfg.autonat.probe_interval_secs))
                .with_max_candidates(cfg.autonat.max_candidates),
        );
        let autonat_server = cfg
            .autonat_server()
            .then(|| autonat::v2::server::Behaviour::new(rand::make_rng::<rand::rngs::StdRng>()));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_secs(n.ping_interval_secs)),
            ),
            kad: dht::behaviour(local, cfg),
            mdns: mdns.into(),
            autonat_client,
            autonat_server: autonat_server.into(),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
