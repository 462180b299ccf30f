//! The connection manager, as Kubo's `Swarm.ConnMgr` works: once more than
//! `network.trim_connections_above` connections are established, the node closes whole peers'
//! connections, the longest-connected first, until `network.trim_connections_to` remain. It spares
//! peers connected for less than `network.trim_grace_secs`, peers with an open data stream (a
//! session or a transfer), relays holding our reservation, peers holding one on us, the
//! bootstrap peers, and peers held open by `/commucat/hold/1.0.0` either way (`node::hold`).
//!
//! Without it, a desktop in a network of a few hundred nodes filled its `max_connections` with the
//! peers its DHT lookups and theirs had touched, and then could not dial the one peer it had
//! messages for ("connection limit exceeded: at most 256 established connections", simnet
//! `groups-300`). Kademlia keeps the peers' addresses, not their connections: a trimmed peer is
//! dialled again when it is needed.

use std::{collections::HashSet, time::Duration};

use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::EventLoop;
use crate::node::Config;

/// Trims at most this often. A trim that is due sooner, or that left the node above the
/// high-water mark (peers protected or in their grace), runs again this long after.
pub const MIN_TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// "Not scheduled": a deadline this far ahead.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the connection manager keeps: the limits, who holds a reservation on us, and
/// `commucat_connections_trimmed_total`. When each peer connected is `PeerState::connected_at`.
pub(super) struct Trim {
    above: usize,
    to: usize,
    grace: Duration,
    reserved: HashSet<PeerId>,
    last: Option<Instant>,
    /// When to look again (see [`MIN_TRIM_INTERVAL`]).
    pub(super) next_check: Instant,
    trimmed: Counter,
}

impl Trim {
    pub(super) fn new(cfg: &Config, trimmed: Counter) -> Self {
        let n = &cfg.network;
        Self {
            above: n.trim_connections_above.get() as usize,
            to: n.trim_connections_to as usize,
            grace: Duration::from_secs(n.trim_grace_secs),
            reserved: HashSet::new(),
            last: None,
            next_check: Instant::now() + NEVER,
            trimmed,
        }
    }

    /// The peer's last connection closed.
    pub(super) fn disconnected(&mut self, peer: &PeerId) {
        self.reserved.remove(peer);
    }

    /// A peer holds a reservation on this relay (or no longer does).
    pub(super) fn reserved(&mut self, peer: PeerId, holds: bool) {
        if holds {
            self.reserved.insert(peer);
        } else {
            self.reserved.remove(&peer);
        }
    }

    /// Whether `established` connections are past the high-water mark (else nothing is due).
    pub(super) fn over(&mut self, established: usize, now: Instant) -> bool {
        self.next_check = now + NEVER;
        established > self.above
    }

    /// The peers to disconnect when `established` connections are open, `per_peer` of them by
    /// peer (when its first one came up, how many): none up to the high-water mark, else the
    /// longest-connected unprotected peers past their grace until the low-water mark would be
    /// reached. At most once per [`MIN_TRIM_INTERVAL`].
    pub(super) fn pick(
        &mut self,
        established: usize,
        per_peer: impl IntoIterator<Item = (PeerId, Instant, usize)>,
        now: Instant,
        protected: impl Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        if !self.over(established, now) {
            return Vec::new();
        }
        if let Some(t) = self.last
            && now < t + MIN_TRIM_INTERVAL
        {
            self.next_check = t + MIN_TRIM_INTERVAL;
            return Vec::new();
        }
        self.last = Some(now);
        let mut candidates: Vec<(Instant, PeerId, usize)> = per_peer
            .into_iter()
            .filter(|(p, since, _)| {
                *since + self.grace <= now && !self.reserved.contains(p) && !protected(p)
            })
            .map(|(p, since, n)| (since, p, n))
            .collect();
        candidates.sort_by_key(|(since, p, _)| (*since, *p));
        let mut left = established;
        let mut out = Vec::new();
        for (_, p, n) in candidates {
            if left <= self.to {
                break;
            }
            left -= n;
            out.push(p);
        }
        if left > self.above {
            self.next_check = now + MIN_TRIM_INTERVAL;
        }
        self.trimmed.inc_by(out.len() as u64);
        out
    }
}

impl EventLoop {
    /// Closes connections past the high-water mark (see the module's text).
    pub(super) fn trim_connections(&mut self) {
        let now = Instant::now();
        let established = self
            .swarm
            .network_info()
            .connection_counters()
            .num_established();
        if !self.trim.over(established as usize, now) {
            return; // the common case: no list of peers is built
        }
        let per_peer =
            (self.conn.peers.iter()).map(|(p, s)| (*p, s.connected_at, s.connections.len()));
        let active = self.swarm.behaviour().data.active().clone();
        let bootstrap: HashSet<PeerId> = self.conn.bootstrap.iter().map(|(p, _)| *p).collect();
        let relays = &self.traversal.relays;
        let held = self.swarm.behaviour().hold.holds();
        let victims = self.trim.pick(established as usize, per_peer, now, |p| {
            bootstrap.contains(p) || active.contains(p) || relays.holds(p) || held.contains(p)
        });
        if !victims.is_empty() {
            tracing::debug!(peers = victims.len(), "trimming connections");
        }
        for p in victims {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trim(above: u32, to: u32, grace: u64) -> Trim {
        let mut cfg = Config::default();
        cfg.network.trim_connections_above = std::num::NonZero::new(above).unwrap();
        cfg.network.trim_connections_to = to;
        cfg.network.trim_grace_secs = grace;
        Trim::new(&cfg, Counter::default())
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_high_water_mark_the_oldest_unprotected_peers_go_down_to_the_low_one() {
        let mut t = trim(4, 2, 10);
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let start = Instant::now();
        let since = |i: usize| start + Duration::from_secs(i as u64);
        let all = |n: usize| {
            let peers = peers[..n].iter().enumerate();
            (n, peers.map(|(i, p)| (*p, since(i), 1)).collect::<Vec<_>>())
        };
        let later = start + Duration::from_secs(60);
        // At the mark: nothing.
        let (n, four) = all(4);
        assert!(t.pick(n, four, later, |_| false).is_empty());
        // Six open, peer 0 protected, peer 1 holds a reservation on us: 2, 3, 4, 5 are the
        // candidates, oldest first, until 2 remain.
        t.reserved(peers[1], true);
        let (n, six) = all(6);
        let picked = t.pick(n, six.clone(), later, |p| *p == peers[0]);
        assert_eq!(picked, peers[2..6].to_vec());
        // Not again within the interval, but then (scheduled).
        assert!(t.pick(n, six.clone(), later, |_| false).is_empty());
        assert_eq!(t.next_check, later + MIN_TRIM_INTERVAL);
        let much_later = later + MIN_TRIM_INTERVAL;
        t.reserved(peers[1], false);
        assert_eq!(t.pick(n, six, much_later, |_| false), peers[..4].to_vec());
    }

    #[tokio::test(start_paused = true)]
    async fn peers_within_their_grace_and_several_connections_of_one_peer_count() {
        let mut t = trim(2, 1, 20);
        let (old, new) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        let new_since = start + Duration::from_secs(15);
        // `old` has two connections: closing it alone brings 3 down to 1.
        let picked = t.pick(
            3,
            [(old, start, 2), (new, new_since, 1)],
            start + Duration::from_secs(25),
            |_| false,
        );
        assert_eq!(picked, vec![old]);
        t.disconnected(&old);
        // A peer still within its grace is never picked.
        let stranger = PeerId::random();
        let at = start + Duration::from_secs(30);
        let just = at - Duration::from_secs(1);
        assert!(t.pick(3, [(stranger, just, 3)], at, |_| false).is_empty());
        // Still above the mark: looked at again a little later.
        assert_eq!(t.next_check, at + MIN_TRIM_INTERVAL);
    }
}
