//! The peer book: peers this node has identified, with their listen addresses, kept across restarts
//! so the node can rejoin the network without its bootstrap peers.
//!
//! Bounded: at most [`Limits::max_peers`] peers (the least recently seen are forgotten first) and
//! [`Limits::max_addrs_per_peer`] addresses each.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::Error;

/// Name of the sled tree.
pub const TREE: &str = "peerbook";

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_peers: usize,
    pub max_addrs_per_peer: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[peerbook]` section.
pub struct Config {
    /// Peers remembered across restarts; the least recently seen are forgotten first.
    pub max_peers: usize,
    /// Addresses remembered per peer.
    pub max_addrs_per_peer: usize,
    /// Most recently seen peers dialled again when the node starts, and while it has too few peers.
    pub redial_on_start: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_peers: 1000,
            max_addrs_per_peer: 8,
            redial_on_start: 16,
        }
    }
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_peers: c.max_peers,
            max_addrs_per_peer: c.max_addrs_per_peer,
        }
    }
}

/// What is remembered of one peer. Stored as JSON, keyed by the PeerId bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub addrs: Vec<Multiaddr>,
    /// Unix seconds when the peer was last identified.
    pub last_seen: u64,
    pub agent_version: Option<String>,
    /// The peer served our Kademlia protocol when last seen (it belongs in the routing table).
    pub kad_server: bool,
}

#[derive(Clone)]
pub struct PeerBook {
    tree: sled::Tree,
    limits: Limits,
    /// Entries in `tree`, kept by this handle: sled's `Tree::len` walks the whole tree, too slow
    /// to call on every new peer. The node opens one peer book per store.
    len: Arc<AtomicUsize>,
}

impl PeerBook {
    pub(super) fn new(tree: sled::Tree, limits: Limits) -> Self {
        let len = Arc::new(AtomicUsize::new(tree.len()));
        Self { tree, limits, len }
    }

    /// Records what identify told us about `peer`. Returns whether the stored entry changed in
    /// anything but its timestamp (callers use it to decide whether to log or flush).
    pub fn record(
        &self,
        peer: &PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
        agent_version: Option<String>,
        kad_server: bool,
    ) -> Result<bool, Error> {
        let mut addrs: Vec<Multiaddr> = addrs.into_iter().collect();
        addrs.sort();
        addrs.dedup();
        addrs.truncate(self.limits.max_addrs_per_peer);
        let entry = Entry {
            addrs,
            last_seen: crate::time::unix_secs(),
            agent_version,
            kad_server,
        };
        let previous = self.get(peer)?;
        let changed = previous.as_ref().is_none_or(|p| {
            p.addrs != entry.addrs
                || p.agent_version != entry.agent_version
                || p.kad_server != entry.kad_server
        });
        let value = serde_json::to_vec(&entry).expect("entries serialise");
        let key = peer.to_bytes();
        if self.tree.insert(&key, value)?.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
            self.evict_over_limit(&key)?;
        }
        Ok(changed)
    }

    pub fn get(&self, peer: &PeerId) -> Result<Option<Entry>, Error> {
        Ok(self.tree.get(peer.to_bytes())?.and_then(|v| decode(&v)))
    }

    pub fn remove(&self, peer: &PeerId) -> Result<(), Error> {
        if self.tree.remove(peer.to_bytes())?.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stored peer, most recently seen first. Entries that fail to decode are skipped
    /// (and dropped on the next eviction pass).
    pub fn all(&self) -> Result<Vec<(PeerId, Entry)>, Error> {
        let mut out = Vec::with_capacity(self.len());
        for item in self.tree.iter() {
            let (k, v) = item?;
            if let (Ok(peer), Some(entry)) = (PeerId::from_bytes(&k), decode(&v)) {
                out.push((peer, entry));
            }
        }
        out.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_seen));
        Ok(out)
    }

    /// Forgets the least recently seen peers beyond the limit, never `keep` (the entry just
    /// recorded: `last_seen` has one-second resolution, so it may tie with the oldest).
    fn evict_over_limit(&self, keep: &[u8]) -> Result<(), Error> {
        if self.len() <= self.limits.max_peers {
            return Ok(());
        }
        // Undecodable entries sort as oldest and go first.
        let mut keyed: Vec<(u64, sled::IVec)> = Vec::with_capacity(self.len());
        for item in self.tree.iter() {
            let (k, v) = item?;
            if k != keep {
                keyed.push((decode(&v).map_or(0, |e| e.last_seen), k));
            }
        }
        // The walk counted the tree exactly.
        let len = keyed.len() + 1;
        self.len.store(len, Ordering::Relaxed);
        keyed.sort_by_key(|(seen, _)| *seen);
        for (_, key) in keyed
            .into_iter()
            .take(len.saturating_sub(self.limits.max_peers))
        {
            if self.tree.remove(key)?.is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

fn decode(v: &[u8]) -> Option<Entry> {
    serde_json::from_slice(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn book(max_peers: usize) -> PeerBook {
        Store::temporary()
            .unwrap()
            .peer_book(Limits {
                max_peers,
                max_addrs_per_peer: 2,
            })
            .unwrap()
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn records_are_bounded_per_peer_and_overall() {
        let book = book(3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            let changed = book
                .record(
                    p,
                    [addr(1), addr(2), addr(3), addr(1)],
                    Some(format!("agent{i}")),
                    i % 2 == 0,
                )
                .unwrap();
            assert!(changed);
        }
        assert_eq!(book.len(), 3);
        let last = peers.last().unwrap();
        assert!(
            book.get(last).unwrap().is_some(),
            "the newest peer is never the one evicted"
        );
        for (_, e) in book.all().unwrap() {
            assert_eq!(e.addrs.len(), 2, "addresses are capped per peer");
        }
        // Re-recording the same facts is not a change.
        let again = book
            .record(last, [addr(1), addr(2)], Some("agent4".into()), true)
            .unwrap();
        assert!(!again);
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::random();
        let limits = Limits {
            max_peers: 10,
            max_addrs_per_peer: 4,
        };
        {
            let store = Store::open(dir.path(), crate::store::Options::cache(8)).unwrap();
            store
                .peer_book(limits)
                .unwrap()
                .record(&peer, [addr(7)], None, true)
                .unwrap();
            futures::executor::block_on(store.commit()).unwrap();
        }
        let store = Store::open(dir.path(), crate::store::Options::cache(8)).unwrap();
        let book = store.peer_book(limits).unwrap();
        assert_eq!(book.len(), 1, "the count starts from what is stored");
        let entry = book.get(&peer).unwrap().expect("entry kept");
        assert_eq!(entry.addrs, vec![addr(7)]);
        assert!(entry.kad_server);
        book.remove(&peer).unwrap();
        book.remove(&peer).unwrap();
        assert!(book.is_empty(), "removing twice counts once");
    }

    #[test]
    fn second_open_of_the_same_dir_says_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), crate::store::Options::cache(8)).unwrap();
        let err = Store::open(dir.path(), crate::store::Options::cache(8))
            .err()
            .expect("second open fails");
        assert!(matches!(err, Error::Locked(_)), "{err}");
    }
}
