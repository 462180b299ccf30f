//! Per-address limits on inbound connections, the libp2p way: a [`NetworkBehaviour`] that denies
//! in `handle_pending_inbound_connection` / `handle_established_inbound_connection`.
//!
//! `connection_limits` counts pending inbound connections for the whole node, so one host holding
//! `max_pending_incoming` silent TCP sockets (each kept until the handshake deadline) made every
//! other dial fail, over TCP and QUIC alike. Here:
//!
//! - each source IP address (IPv6: its /64) may have [`Limits::pending_per_ip`] inbound connections
//!   handshaking and [`Limits::established_per_ip`] established ones;
//! - TCP and QUIC each have their own budget of [`Limits::pending_per_transport`] handshakes, so a
//!   flood on one transport leaves the other alone (the memory and relay transports share a third).
//!
//! Connections without an IP address (relayed circuits, the memory transport) are counted only in
//! their transport's budget. Outbound connections are never limited here.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ListenFailure, dummy,
    },
};

/// The limits (`[network]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Inbound connections handshaking at once from one address.
    pub pending_per_ip: u32,
    /// Inbound connections established at once from one address.
    pub established_per_ip: u32,
    /// Inbound connections handshaking at once on one transport (TCP, QUIC, other).
    pub pending_per_transport: u32,
}

/// Why a connection was denied (shown in the swarm's `IncomingConnectionError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("{0} inbound connections from this address are still handshaking")]
    PendingPerIp(u32),
    #[error("{0} inbound connections from this address are open")]
    EstablishedPerIp(u32),
    #[error("{count} inbound {transport} connections are still handshaking")]
    PendingPerTransport { transport: &'static str, count: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Tcp,
    Quic,
    Other,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "TCP",
            Kind::Quic => "QUIC",
            Kind::Other => "other",
        }
    }
}

/// What an inbound connection counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    ip: Option<IpAddr>,
    kind: Kind,
}

/// The source of a remote address: its IP (IPv6 by /64, IPv4-mapped as IPv4) unless it is relayed,
/// and its transport.
fn source(remote: &Multiaddr) -> Source {
    let mut ip = None;
    let mut kind = Kind::Other;
    for p in remote.iter() {
        match p {
            Protocol::P2pCircuit => {
                return Source {
                    ip: None,
                    kind: Kind::Other,
                };
            }
            Protocol::Ip4(a) if ip.is_none() => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) if ip.is_none() => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(_) if kind == Kind::Other => kind = Kind::Tcp,
            Protocol::QuicV1 | Protocol::Quic => kind = Kind::Quic,
            _ => {}
        }
    }
    Source {
        ip: ip.map(crate::net::subscriber),
        kind,
    }
}

/// The counters, without a swarm: unit-tested on their own.
#[derive(Debug, Default)]
struct Counts {
    pending: HashMap<ConnectionId, Source>,
    established: HashMap<ConnectionId, IpAddr>,
    pending_per_ip: HashMap<IpAddr, u32>,
    established_per_ip: HashMap<IpAddr, u32>,
    pending_per_kind: HashMap<Kind, u32>,
}

fn inc<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
    *map.entry(k).or_default() += 1;
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = map.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&k);
        }
    }
}

impl Counts {
    fn pending(&mut self, id: ConnectionId, src: Source, l: &Limits) -> Result<(), Exceeded> {
        let in_kind = self.pending_per_kind.get(&src.kind).copied().unwrap_or(0);
        if in_kind >= l.pending_per_transport {
            return Err(Exceeded::PendingPerTransport {
                transport: src.kind.name(),
                count: in_kind,
            });
        }
        if let Some(ip) = src.ip {
            if self.pending_per_ip.get(&ip).copied().unwrap_or(0) >= l.pending_per_ip {
                return Err(Exceeded::PendingPerIp(l.pending_per_ip));
            }
            // A host that already fills its share of established connections need not handshake.
            if self.established_per_ip.get(&ip).copied().unwrap_or(0) >= l.established_per_ip {
                return Err(Exceeded::EstablishedPerIp(l.established_per_ip));
            }
            inc(&mut self.pending_per_ip, ip);
        }
        inc(&mut self.pending_per_kind, src.kind);
        self.pending.insert(id, src);
        Ok(())
    }

    /// The handshake of `id` ended (established or failed).
    fn end_pending(&mut self, id: ConnectionId) {
        if let Some(src) = self.pending.remove(&id) {
            if let Some(ip) = src.ip {
                dec(&mut self.pending_per_ip, ip);
            }
            dec(&mut self.pending_per_kind, src.kind);
        }
    }

    fn established(
        &mut self,
        id: ConnectionId,
        remote: &Multiaddr,
        l: &Limits,
    ) -> Result<(), Exceeded> {
        self.end_pending(id);
        let Some(ip) = source(remote).ip else {
            return Ok(());
        };
        if self.established_per_ip.get(&ip).copied().unwrap_or(0) >= l.established_per_ip {
            return Err(Exceeded::EstablishedPerIp(l.established_per_ip));
        }
        inc(&mut self.established_per_ip, ip);
        self.established.insert(id, ip);
        Ok(())
    }

    fn closed(&mut self, id: ConnectionId) {
        self.end_pending(id);
        if let Some(ip) = self.established.remove(&id) {
            dec(&mut self.established_per_ip, ip);
        }
    }
}

/// The behaviour: compose it first, so that other behaviours never see a denied connection.
pub struct Behaviour {
    limits: Limits,
    counts: Counts,
}

impl Behaviour {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Counts::default(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.counts
            .pending(connection_id, source(remote_addr), &self.limits)
            .map_err(|e| {
                tracing::debug!(remote = %remote_addr, reason = %e, "inbound connection denied");
                ConnectionDenied::new(e)
            })
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.counts
            .established(connection_id, remote_addr, &self.limits)
            .map_err(|e| {
                tracing::debug!(remote = %remote_addr, reason = %e, "inbound connection denied");
                ConnectionDenied::new(e)
            })?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                // A listen failure also follows a connection another behaviour denied after we
                // had counted it as established.
                self.counts.closed(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        pending_per_ip: 2,
        established_per_ip: 3,
        pending_per_transport: 4,
    };

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let mut c = Counts::default();
        let tcp = |ip: &str| source(&addr(&format!("/ip4/{ip}/tcp/5000")));
        let ids: Vec<ConnectionId> = (1..=8).map(ConnectionId::new_unchecked).collect();
        c.pending(ids[0], tcp("192.0.2.1"), &L).unwrap();
        c.pending(ids[1], tcp("192.0.2.1"), &L).unwrap();
        assert_eq!(
            c.pending(ids[2], tcp("192.0.2.1"), &L),
            Err(Exceeded::PendingPerIp(2))
        );
        // Another host still gets in, then the transport's budget is the bound.
        c.pending(ids[3], tcp("192.0.2.2"), &L).unwrap();
        c.pending(ids[4], tcp("192.0.2.3"), &L).unwrap();
        assert!(matches!(
            c.pending(ids[5], tcp("192.0.2.4"), &L),
            Err(Exceeded::PendingPerTransport {
                transport: "TCP",
                ..
            })
        ));
        // QUIC has a budget of its own.
        c.pending(ids[6], source(&addr("/ip4/192.0.2.4/udp/5000/quic-v1")), &L)
            .unwrap();
        // A failed handshake frees its slots.
        c.closed(ids[0]);
        c.pending(ids[7], tcp("192.0.2.1"), &L).unwrap();
    }

    #[test]
    fn established_connections_per_address_are_bounded_and_released() {
        let mut c = Counts::default();
        let remote = addr("/ip6/2001:db8::1/tcp/1");
        let same_64 = addr("/ip6/2001:db8::2/udp/1/quic-v1");
        let id = |i| ConnectionId::new_unchecked(i);
        for i in 0..3 {
            c.pending(id(i), source(&remote), &L).unwrap();
            c.established(id(i), &remote, &L).unwrap();
        }
        // The /64 is full: denied already when it starts to handshake, and when established.
        assert_eq!(
            c.pending(id(10), source(&same_64), &L),
            Err(Exceeded::EstablishedPerIp(3))
        );
        assert_eq!(
            c.established(id(11), &same_64, &L),
            Err(Exceeded::EstablishedPerIp(3))
        );
        c.closed(id(1));
        c.established(id(12), &same_64, &L).unwrap();
        assert!(c.pending.is_empty() && c.pending_per_ip.is_empty());
    }

    #[test]
    fn relayed_and_memory_connections_have_no_address() {
        let relayed = addr(
            "/ip4/192.0.2.9/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        assert_eq!(
            source(&relayed),
            Source {
                ip: None,
                kind: Kind::Other
            }
        );
        assert_eq!(source(&addr("/memory/7")).ip, None);
        let mapped = source(&addr("/ip6/::ffff:192.0.2.1/tcp/1"));
        assert_eq!(mapped.ip, Some("192.0.2.1".parse().unwrap()));
    }
}
