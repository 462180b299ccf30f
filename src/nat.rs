//! Reachability as far as the node knows it: confirmed external addresses (AutoNAT v2 probes or
//! configured `network.external_addresses`) make it public; probes that all failed make it private.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use libp2p::{Multiaddr, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// Failed probe addresses remembered (oldest forgotten first).
pub const MAX_FAILED_PROBES: usize = 32;

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
}

impl Tracker {
    pub fn reachability(&self) -> Reachability {
        if !self.confirmed.is_empty() {
            Reachability::Public
        } else if !self.failed.is_empty() {
            Reachability::Private
        } else {
            Reachability::Unknown
        }
    }

    pub fn confirmed(&mut self, addr: &Multiaddr) {
        self.failed.retain(|a| a != addr);
        self.confirmed.insert(addr.clone());
    }

    pub fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
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
        for port in 0..100u16 {
            t.probe_failed(&format!("/ip4/1.2.3.4/tcp/{port}").parse().unwrap());
        }
        assert_eq!(t.failed.len(), MAX_FAILED_PROBES);
    }
}
