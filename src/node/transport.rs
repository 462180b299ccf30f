//! Transports a node can run on: TCP + QUIC (+ DNS) for real networks, libp2p's in-process memory
//! transport for tests and simulation, or one built by the caller. Every transport is counted in the
//! bandwidth metrics.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, Transport as _,
    core::{
        muxing::StreamMuxerBox,
        transport::{self, MemoryTransport, OrTransport, timeout::TransportTimeout},
        upgrade,
    },
    identity::Keypair,
    metrics::{BandwidthTransport, Registry},
    multiaddr::Protocol,
    noise, quic, tcp, yamux,
};

/// A boxed libp2p transport yielding authenticated, multiplexed connections.
pub type Boxed = transport::Boxed<(PeerId, StreamMuxerBox)>;

/// Upper bound on the TCP / memory security + muxer handshake. An incoming TCP connection gets
/// `network.inbound_handshake_timeout_secs` instead (5 s by default): an idle socket from a
/// stranger must not hold a handshake slot for long.
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

/// The node's transport: `kind`, plus circuit relay v2 (`/p2p-circuit` addresses, Noise + Yamux
/// end to end over the relay) when `relay` is given, all counted in the bandwidth metrics.
pub(crate) fn build(
    kind: Transport,
    relay: Option<libp2p::relay::client::Transport>,
    keypair: &Keypair,
    inbound_timeout: Duration,
    registry: &mut Registry,
) -> Result<Boxed, noise::Error> {
    let inner = match kind {
        Transport::Network => network(keypair, inbound_timeout)?,
        Transport::Memory => MemoryTransport::default()
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise::Config::new(keypair)?)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .boxed(),
        Transport::Custom(make) => make(keypair),
    };
    let inner = match relay {
        Some(relay) => OrTransport::new(
            relay
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise::Config::new(keypair)?)
                .multiplex(yamux::Config::default())
                .timeout(UPGRADE_TIMEOUT),
            inner,
        )
        .map(|either, _| match either {
            futures::future::Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            futures::future::Either::Right(boxed) => boxed,
        })
        .boxed(),
        None => inner,
    };
    Ok(BandwidthTransport::new(inner, registry)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

fn network(keypair: &Keypair, inbound_timeout: Duration) -> Result<Boxed, noise::Error> {
    match libp2p::dns::tokio::Transport::system(tcp_quic(keypair, inbound_timeout)?) {
        Ok(dns) => Ok(dns.boxed()),
        Err(e) => {
            // No third-party resolver is used behind the user's back: /dns addresses just fail.
            tracing::warn!(error = %e, "no system DNS configuration; /dns addresses cannot be dialled");
            tcp_quic(keypair, inbound_timeout)
        }
    }
}

fn tcp_quic(keypair: &Keypair, inbound_timeout: Duration) -> Result<Boxed, noise::Error> {
    let tcp = TransportTimeout::with_ingoing_timeout(
        FreshPortFallback::new(tcp::Config::default().nodelay(true))
            .upgrade(upgrade::Version::V1Lazy)
            .authenticate(noise::Config::new(keypair)?)
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT),
        inbound_timeout,
    );
    let quic = quic::tokio::Transport::new(quic::Config::new(keypair));
    Ok(OrTransport::new(quic, tcp)
        .map(|either, _| match either {
            futures::future::Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            futures::future::Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        })
        .boxed())
}

/// TCP that dials from a fresh port when the kernel refuses to bind the dial socket to the listen
/// port.
///
/// libp2p-tcp dials from the listen port (`PortUse::Reuse`: hole punching and observed addresses
/// need it) by binding the dial socket to `0.0.0.0:<listen port>` (`[::]` for IPv6). That wildcard
/// bind is refused (`EADDRINUSE`) whenever any socket without `SO_REUSEPORT` holds the same port on
/// another local address, though the listener itself (on one address) was allowed; libp2p-tcp
/// retries from a fresh port only when `connect` finds the address pair taken (`EADDRNOTAVAIL`),
/// so every TCP dial of the node failed until it restarted. CI met it when one of a test's sockets
/// from 127.0.0.2 drew the dialling node's port (tests/hardening.rs replays it). go-libp2p's
/// reuseport transport falls back to an ordinary dial in the same case; so does this one. The
/// fallback goes through a transport with no listeners, so it cannot bind to one.
struct FreshPortFallback {
    inner: tcp::tokio::Transport,
    config: tcp::Config,
}

impl FreshPortFallback {
    fn new(config: tcp::Config) -> Self {
        Self {
            inner: tcp::tokio::Transport::new(config.clone()),
            config,
        }
    }
}

impl libp2p::core::Transport for FreshPortFallback {
    type Output = <tcp::tokio::Transport as libp2p::core::Transport>::Output;
    type Error = std::io::Error;
    type ListenerUpgrade = <tcp::tokio::Transport as libp2p::core::Transport>::ListenerUpgrade;
    type Dial = futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        id: transport::ListenerId,
        addr: Multiaddr,
    ) -> Result<(), transport::TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: transport::ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: transport::DialOpts,
    ) -> Result<Self::Dial, transport::TransportError<Self::Error>> {
        use futures::FutureExt as _;
        let first = self.inner.dial(addr.clone(), opts)?;
        if opts.port_use == transport::PortUse::New {
            return Ok(first);
        }
        let config = self.config.clone();
        Ok(async move {
            match first.await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(%addr, error = %e, "the listen port cannot be bound for this dial; dialling from a fresh port");
                    let fresh = transport::DialOpts {
                        port_use: transport::PortUse::New,
                        ..opts
                    };
                    let dial = tcp::tokio::Transport::new(config)
                        .dial(addr, fresh)
                        .map_err(|e| match e {
                            transport::TransportError::Other(e) => e,
                            transport::TransportError::MultiaddrNotSupported(a) => {
                                std::io::Error::other(format!("{a} is not a TCP address"))
                            }
                        })?;
                    dial.await
                }
                other => other,
            }
        }
        .boxed())
    }

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<transport::TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// Fails when another socket already listens on the TCP port of `addr` (`/ip4|ip6/…/tcp/N`, N ≠ 0).
///
/// libp2p-tcp sets `SO_REUSEPORT` on its listeners (outgoing dials reuse the listen port, which hole
/// punching needs), so a second process binding the same port succeeds and the kernel then splits
/// incoming connections between the two. A plain bind (`SO_REUSEADDR` only, so a restart is not
/// blocked by `TIME_WAIT`) tells whether the port is really ours. QUIC's UDP sockets need no such
/// check: libp2p-quic binds without reuse flags and fails by itself.
pub(crate) fn check_tcp_port_free(addr: &Multiaddr) -> std::io::Result<()> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    let sa = SocketAddr::new(ip, port);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if sa.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&sa.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_tcp_port_is_reported() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let err = check_tcp_port_free(&addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(held);
        check_tcp_port_free(&addr).expect("free once released");
        check_tcp_port_free(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        check_tcp_port_free(&"/ip4/127.0.0.1/udp/9/quic-v1".parse().unwrap()).unwrap();
    }
}
