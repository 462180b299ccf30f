//! Transports a node can run on: TCP + QUIC (+ DNS) for real networks, libp2p's in-process memory
//! transport for tests and simulation, or one built by the caller. Every transport is counted in the
//! bandwidth metrics.

use std::time::Duration;

use libp2p::{
    PeerId, Transport as _,
    core::{
        muxing::StreamMuxerBox,
        transport::{self, MemoryTransport, OrTransport},
        upgrade,
    },
    identity::Keypair,
    metrics::{BandwidthTransport, Registry},
    noise, quic, tcp, yamux,
};

/// A boxed libp2p transport yielding authenticated, multiplexed connections.
pub type Boxed = transport::Boxed<(PeerId, StreamMuxerBox)>;

/// Upper bound on the TCP / memory security + muxer handshake.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Which transport the node runs on.
pub enum Transport {
    /// TCP (Noise + Yamux) and QUIC v1, with DNS resolution from the system resolver config.
    Network,
    /// The in-process memory transport (Noise + Yamux): `/memory/<port>` addresses, many nodes in
    /// one process.
    Memory,
    /// A transport built by the caller from the node's keypair.
    Custom(Box<dyn FnOnce(&Keypair) -> Boxed + Send>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Network => "Network",
            Transport::Memory => "Memory",
            Transport::Custom(_) => "Custom",
        })
    }
}

pub(crate) fn build(
    kind: Transport,
    keypair: &Keypair,
    registry: &mut Registry,
) -> Result<Boxed, noise::Error> {
    let inner = match kind {
        Transport::Network => network(keypair)?,
        Transport::Memory => MemoryTransport::default()
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise::Config::new(keypair)?)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .boxed(),
        Transport::Custom(make) => make(keypair),
    };
    Ok(BandwidthTransport::new(inner, registry)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

fn network(keypair: &Keypair) -> Result<Boxed, noise::Error> {
    match libp2p::dns::tokio::Transport::system(tcp_quic(keypair)?) {
        Ok(dns) => Ok(dns.boxed()),
        Err(e) => {
            // No third-party resolver is used behind the user's back: /dns addresses just fail.
            tracing::warn!(error = %e, "no system DNS configuration; /dns addresses cannot be dialled");
            tcp_quic(keypair)
        }
    }
}

fn tcp_quic(keypair: &Keypair) -> Result<Boxed, noise::Error> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(keypair)?)
        .multiplex(yamux::Config::default())
        .timeout(UPGRADE_TIMEOUT);
    let quic = quic::tokio::Transport::new(quic::Config::new(keypair));
    Ok(OrTransport::new(quic, tcp)
        .map(|either, _| match either {
            futures::future::Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            futures::future::Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}
