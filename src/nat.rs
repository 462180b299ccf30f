//! Reachability as far as the node knows it: confirmed external addresses (AutoNAT v2 probes or
//! configured `network.external_addresses`) make it public; probes that all failed make it private.
//! AutoNAT v1 re-checks settled reachability, because the v2 client never tests an address twice
//! (rust-libp2p #6203). A node that is not public keeps reservations on relays ([`Relays`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId, core::transport::ListenerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Failed probe addresses remembered (oldest forgotten first).
pub const MAX_FAILED_PROBES: usize = 32;
/// Relays remembered as candidates for reservations.
pub const MAX_RELAY_CANDIDATES: usize = 64;
/// Wait before a relay whose reservation failed or was lost is asked again.
pub const RESERVE_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// At least one external address is confirmed: other peers can dial this node.
    Public,
    /// AutoNAT probes of every candidate address failed and none is confirmed.
    Private,
    /// Nothing tested yet.
    Unknown,
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Unknown => "unknown",
        })
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    confirmed: HashSet<Multiaddr>,
    failed: VecDeque<Multiaddr>,
    /// AutoNAT v1's dial-backs failed (a verdict that names no address of ours).
    judged_private: bool,
}

impl Tracker {
    pub fn reachability(&self) -> Reachability {
        if !self.confirmed.is_empty() {
            Reachability::Public
        } else if !self.failed.is_empty() || self.judged_private {
            Reachability::Private
        } else {
            Reachability::Unknown
        }
    }

    pub fn confirmed(&mut self, addr: &Multiaddr) {
        self.judged_private = false;
        self.failed.retain(|a| a != addr);
        self.confirmed.insert(addr.clone());
    }

    pub fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
    }

    /// Dial-backs failed without naming an address (AutoNAT v1's "private").
    pub fn judged_private(&mut self) {
        self.judged_private = true;
    }

    pub fn probe_failed(&mut self, addr: &Multiaddr) {
        if self.failed.contains(addr) {
            return;
        }
        if self.failed.len() == MAX_FAILED_PROBES {
            self.failed.pop_front();
        }
        self.failed.push_back(addr.clone());
    }
}

/// Whether `addr` goes through a circuit relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// One reservation (a `/p2p-circuit` listener) on a relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub relay: PeerId,
    /// The relayed address other peers reach this node at, once the relay accepted.
    pub address: Option<Multiaddr>,
}

/// Relay reservations: which relays could be used, which listeners hold reservations.
#[derive(Debug, Default)]
pub struct Relays {
    /// Relay → address to reach it. Bootstrap relays are never forgotten.
    candidates: HashMap<PeerId, (Multiaddr, bool)>,
    active: HashMap<ListenerId, Reservation>,
    not_before: HashMap<PeerId, Instant>,
}

impl Relays {
    /// A relay to reserve on. `bootstrap` ones are preferred and kept when the list is full.
    pub fn add_candidate(&mut self, relay: PeerId, addr: Multiaddr, bootstrap: bool) {
        if let Some(entry) = self.candidates.get_mut(&relay) {
            if bootstrap || !entry.1 {
                *entry = (addr, bootstrap || entry.1);
            }
            return;
        }
        if self.candidates.len() >= MAX_RELAY_CANDIDATES {
            let Some(victim) = self
                .candidates
                .iter()
                .find(|(p, (_, boot))| !boot && !self.holds(p))
                .map(|(p, _)| *p)
            else {
                return;
            };
            self.candidates.remove(&victim);
        }
        self.candidates.insert(relay, (addr, bootstrap));
    }

    /// A connection to `relay` came up: if it is a candidate we hold no reservation on, a failed
    /// attempt's backoff ends (a reservation asked for before the connection existed fails at
    /// once); true when it should be asked for now.
    pub fn connected(&mut self, relay: &PeerId) -> bool {
        if !self.candidates.contains_key(relay) || self.holds(relay) {
            return false;
        }
        self.not_before.remove(relay);
        true
    }

    /// Whether a reservation on `relay` is held or pending.
    pub fn holds(&self, relay: &PeerId) -> bool {
        self.active.values().any(|r| &r.relay == relay)
    }

    /// Relays to reserve on now so that `want` are held or pending, bootstrap relays first, and
    /// the `/p2p-circuit` listen address to use for each.
    pub fn to_reserve(&self, want: usize, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let missing = want.saturating_sub(self.active.len());
        let mut free: Vec<(&PeerId, &(Multiaddr, bool))> = self
            .candidates
            .iter()
            .filter(|(p, _)| !self.holds(p))
            .filter(|(p, _)| self.not_before.get(*p).is_none_or(|t| *t <= now))
            .collect();
        free.sort_by_key(|(p, (_, boot))| (!boot, p.to_bytes()));
        free.into_iter()
            .take(missing)
            .map(|(p, (addr, _))| {
                let listen = addr
                    .iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect::<Multiaddr>()
                    .with(Protocol::P2p(*p))
                    .with(Protocol::P2pCircuit);
                (*p, listen)
            })
            .collect()
    }

    pub fn reserving(&mut self, listener: ListenerId, relay: PeerId) {
        self.active.insert(
            listener,
            Reservation {
                relay,
                address: None,
            },
        );
    }

    /// The relay accepted: `address` is where this node is reachable through it. Returns the
    /// relay if `listener` is one of ours.
    pub fn accepted(&mut self, listener: ListenerId, address: &Multiaddr) -> Option<PeerId> {
        let r = self.active.get_mut(&listener)?;
        r.address = Some(address.clone());
        Some(r.relay)
    }

    /// The listener ended (refused, lost connection, expired): the relay is asked again after
    /// [`RESERVE_BACKOFF`]. Returns the reservation if `listener` was one of ours.
    pub fn closed(&mut self, listener: ListenerId, now: Instant) -> Option<Reservation> {
        let r = self.active.remove(&listener)?;
        self.not_before.insert(r.relay, now + RESERVE_BACKOFF);
        Some(r)
    }

    /// Forgets all reservations (the node became public) and returns their listeners.
    pub fn drain(&mut self) -> Vec<ListenerId> {
        self.active.drain().map(|(l, _)| l).collect()
    }

    pub fn reservations(&self) -> Vec<Reservation> {
        let mut all: Vec<Reservation> = self.active.values().cloned().collect();
        all.sort_by_key(|r| r.relay.to_bytes());
        all
    }

    pub fn is_reservation(&self, listener: ListenerId) -> bool {
        self.active.contains_key(&listener)
    }
}

/// How far an address can be reached from: this host, a private network, or anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Loopback,
    Private,
    Public,
}

/// The scope of the IP address in `addr`; `None` for addresses without one (DNS, memory, relay).
pub fn scope(addr: &Multiaddr) -> Option<Scope> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip_scope(IpAddr::V4(ip))),
        Protocol::Ip6(ip) => Some(ip_scope(IpAddr::V6(ip))),
        _ => None,
    })
}

fn ip_scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(ip) if ip.is_loopback() || ip.is_unspecified() => Scope::Loopback,
        IpAddr::V4(ip) if ip.is_private() || ip.is_link_local() || is_shared_v4(ip) => {
            Scope::Private
        }
        IpAddr::V6(ip) if ip.is_loopback() || ip.is_unspecified() => Scope::Loopback,
        IpAddr::V6(ip) if is_private_v6(ip) => Scope::Private,
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => ip_scope(IpAddr::V4(v4)),
            None => Scope::Public,
        },
        IpAddr::V4(_) => Scope::Public,
    }
}

/// 100.64.0.0/10, carrier-grade NAT space (RFC 6598).
fn is_shared_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 100 && (b & 0xc0) == 64
}

/// fc00::/7 unique local and fe80::/10 link-local.
fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
}

/// The addresses a peer announced that are usable by someone who reaches it over `remote`: a peer
/// seen over a public address gets only its public addresses shared, one seen on the LAN also its
/// private ones, one on this host all of them (the rule go-libp2p's identify applies). Addresses
/// without an IP (DNS names, relay circuits, memory) always pass.
pub fn usable_from(
    remote: &Multiaddr,
    addrs: impl IntoIterator<Item = Multiaddr>,
) -> Vec<Multiaddr> {
    let seen_from = scope(remote).unwrap_or(Scope::Loopback);
    addrs
        .into_iter()
        .filter(|a| scope(a).is_none_or(|s| s >= seen_from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_shared_only_where_they_work() {
        let announced = [
            ma("/ip4/127.0.0.1/tcp/1"),
            ma("/ip4/192.168.1.5/tcp/1"),
            ma("/ip4/100.64.3.3/tcp/1"),
            ma("/ip6/fe80::1/tcp/1"),
            ma("/ip4/8.8.8.8/tcp/1"),
            ma("/dns4/example.org/tcp/1"),
        ];
        let from_public = usable_from(&ma("/ip4/9.9.9.9/tcp/5"), announced.clone());
        assert_eq!(
            from_public,
            vec![ma("/ip4/8.8.8.8/tcp/1"), ma("/dns4/example.org/tcp/1")]
        );
        let from_lan = usable_from(&ma("/ip4/10.0.0.2/tcp/5"), announced.clone());
        assert_eq!(from_lan.len(), 5, "everything but loopback: {from_lan:?}");
        let from_host = usable_from(&ma("/ip4/127.0.0.1/tcp/5"), announced.clone());
        assert_eq!(from_host.len(), announced.len());
        assert_eq!(
            scope(&ma("/ip6/::ffff:10.1.1.1/tcp/1")),
            Some(Scope::Private)
        );
    }

    #[test]
    fn relays_are_reserved_bootstrap_first_and_retried_after_a_backoff() {
        let boot = PeerId::random();
        let other = PeerId::random();
        let third = PeerId::random();
        let mut r = Relays::default();
        r.add_candidate(other, ma("/ip4/5.5.5.5/tcp/4001"), false);
        r.add_candidate(
            boot,
            ma(&format!("/ip4/1.1.1.1/udp/4001/quic-v1/p2p/{boot}")),
            true,
        );
        r.add_candidate(third, ma("/ip4/6.6.6.6/tcp/4001"), false);
        let now = Instant::now();
        let picks = r.to_reserve(2, now);
        assert_eq!(picks.len(), 2);
        assert_eq!(picks[0].0, boot);
        assert_eq!(
            picks[0].1,
            ma(&format!(
                "/ip4/1.1.1.1/udp/4001/quic-v1/p2p/{boot}/p2p-circuit"
            ))
        );
        let l1 = ListenerId::next();
        r.reserving(l1, boot);
        assert_eq!(r.to_reserve(2, now).len(), 1, "one more is missing");
        assert!(r.to_reserve(2, now).iter().all(|(p, _)| *p != boot));
        let addr = ma(&format!(
            "/ip4/1.1.1.1/udp/4001/quic-v1/p2p/{boot}/p2p-circuit"
        ));
        assert_eq!(r.accepted(l1, &addr), Some(boot));
        assert_eq!(r.reservations()[0].address, Some(addr));
        assert_eq!(
            r.accepted(ListenerId::next(), &ma("/ip4/1.1.1.1/tcp/1")),
            None
        );
        // Lost: the bootstrap relay waits out the backoff, the others are used meanwhile.
        assert_eq!(r.closed(l1, now).map(|x| x.relay), Some(boot));
        assert!(r.to_reserve(3, now).iter().all(|(p, _)| *p != boot));
        assert_eq!(r.to_reserve(3, now + RESERVE_BACKOFF)[0].0, boot);
        // A reservation asked for before the connection to the relay existed fails at once: the
        // connection coming up ends the backoff.
        assert!(r.connected(&boot), "a candidate without a reservation");
        assert_eq!(r.to_reserve(3, now)[0].0, boot);
        assert!(!r.connected(&PeerId::random()), "not a candidate");
        // Bounded, and bootstrap relays are never evicted.
        for i in 0..(2 * MAX_RELAY_CANDIDATES) {
            r.add_candidate(
                PeerId::random(),
                ma(&format!("/ip4/7.7.7.7/tcp/{i}")),
                false,
            );
        }
        assert_eq!(r.candidates.len(), MAX_RELAY_CANDIDATES);
        assert!(r.candidates.contains_key(&boot));
        assert!(is_relayed(&ma(&format!(
            "/ip4/1.1.1.1/tcp/1/p2p/{boot}/p2p-circuit"
        ))));
        assert!(!is_relayed(&ma("/ip4/1.1.1.1/tcp/1")));
    }

    #[test]
    fn reachability_follows_probes() {
        let a: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        let mut t = Tracker::default();
        assert_eq!(t.reachability(), Reachability::Unknown);
        t.probe_failed(&a);
        assert_eq!(t.reachability(), Reachability::Private);
        t.confirmed(&a);
        assert_eq!(t.reachability(), Reachability::Public);
        t.expired(&a);
        assert_eq!(t.reachability(), Reachability::Unknown);
        // AutoNAT v1's dial-backs failed: private, until an address is confirmed.
        t.judged_private();
        assert_eq!(t.reachability(), Reachability::Private);
        t.confirmed(&a);
        assert_eq!(t.reachability(), Reachability::Public);
        t.expired(&a);
        for port in 0..100u16 {
            t.probe_failed(&format!("/ip4/1.2.3.4/tcp/{port}").parse().unwrap());
        }
        assert_eq!(t.failed.len(), MAX_FAILED_PROBES);
    }
}
