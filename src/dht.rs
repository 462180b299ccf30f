//! Kademlia on CommuCat's own network (`/commucat/kad/1.0.0`, not the IPFS DHT).
//!
//! Desktop nodes are DHT clients until an external address is confirmed (AutoNAT v2), then serve;
//! bootstrap nodes always serve. Peers learned through identify that speak [`PROTOCOL`] go into
//! the routing table; a periodic bootstrap query keeps it fresh.

pub mod name;
pub mod record;

use std::{
    num::{NonZero, NonZeroU64, NonZeroUsize},
    time::Duration,
};

use libp2p::{
    PeerId, StreamProtocol,
    kad::{
        self,
        store::{MemoryStore, MemoryStoreConfig},
    },
};

use serde::{Deserialize, Serialize};

/// The Kademlia protocol id of the CommuCat network.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/kad/1.0.0");
/// Largest Kademlia message: a presence record with its key bundle is about 13.5 KB, plus closer
/// peers in the same response.
pub const MAX_KAD_PACKET: usize = 64 * 1024;
/// Records (other nodes' presence and name records) a node keeps for the DHT.
pub const MAX_STORED_RECORDS: usize = 4096;
/// k: bucket size and number of closest peers a lookup converges on.
pub const K_VALUE: NonZeroUsize = NonZeroUsize::new(20).expect("20 > 0");

/// Closest peers a peer lookup asks for: one, the target itself (see `node::Client::find_peer`).
pub const FIND_PEER_RESULTS: NonZeroUsize = NonZeroUsize::MIN;

pub type Behaviour = kad::Behaviour<MemoryStore>;

/// What a node does with a record it is asked to store under `key`, holding `current` (the value it
/// stores there now, if any) at `now`: the validation rules of the record's kind
/// (`dht-records-v1.md` for presence, `names-v1.md` for names, with its conflict rule).
/// `Ok(Some(expires_at))`: store it; `Ok(None)`: the same record again, nothing to do.
pub fn admit(
    key: &[u8],
    value: &[u8],
    current: Option<&[u8]>,
    now: u64,
) -> Result<Option<u64>, record::Reject> {
    if name::is_name_key(key) {
        let new = name::verify(key, value, now)?;
        // A held record that no longer verifies (it expired) holds nothing.
        let held = current.and_then(|c| Some((name::verify(key, c, now).ok()?, c)));
        let held = held.as_ref().map(|(n, c)| (n, *c));
        return Ok(name::admits(held, &new, value, now)?.then_some(new.expires_at));
    }
    let new = record::verify(key, value, now)?;
    Ok(record::replaces(current, value, new.seq)?.then_some(new.expires_at))
}

/// Peers in the routing table.
pub fn routing_table_size(kad: &mut Behaviour) -> usize {
    kad.kbuckets().map(|b| b.num_entries()).sum()
}

/// Whether `peer` is in our routing table or its bucket has room for it. A peer that is absent
/// from a full bucket is not added from identify: kad would queue it as pending and dial the
/// bucket's oldest peer to see whether it is still there, and that peer, having been dialed by us,
/// would do the same in its own table: with short idle timeouts a chain of dials that does not end
/// (go-libp2p's routing table refuses such a peer the same way). kad still replaces stale entries
/// with the peers it dials itself.
pub fn has_room_for(kad: &mut Behaviour, peer: PeerId) -> bool {
    let Some(bucket) = kad.kbucket(peer) else {
        return false; // our own id
    };
    bucket.num_entries() < K_VALUE.get() || bucket.iter().any(|e| *e.node.key.preimage() == peer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Client until the node is publicly reachable (a direct external address is confirmed;
    /// relayed ones do not count), then server (desktop default).
    #[default]
    Auto,
    Client,
    /// Always serve DHT requests (forced for the bootstrap role).
    Server,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// The `[kad]` section.
pub struct Config {
    /// `auto` (default), `client` or `server`. The bootstrap role always runs as server.
    pub mode: Mode,
    /// Seconds before a DHT query gives up.
    pub query_timeout_secs: NonZeroU64,
    /// Seconds between periodic bootstrap (routing-table refresh) queries.
    pub periodic_bootstrap_secs: u64,
    /// Whether the bootstraps kad starts before the first periodic one (while the routing table
    /// holds fewer than k peers) also refresh every bucket farther than the node's closest
    /// neighbours (a lookup each, a few hundred requests in a network of a thousand nodes). By
    /// default they stop after the lookup of the node's own key, which makes the node known to its
    /// neighbours; the other buckets fill from the queries it answers and makes, and are refreshed
    /// by the periodic bootstrap (`node::event_loop::queries::Join`).
    pub refresh_buckets_on_join: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            query_timeout_secs: NonZero::new(30).unwrap(),
            periodic_bootstrap_secs: 300,
            refresh_buckets_on_join: false,
        }
    }
}

/// The Kademlia behaviour; `server` serves DHT requests from the start (bootstrap role, `mode =
/// "server"`), otherwise the node starts as a client.
pub fn behaviour(local: PeerId, cfg: &Config, server: bool) -> Behaviour {
    let mut kc = kad::Config::new(PROTOCOL);
    kc.set_query_timeout(Duration::from_secs(cfg.query_timeout_secs.get()))
        .set_replication_factor(K_VALUE)
        .set_kbucket_size(K_VALUE)
        .set_max_packet_size(MAX_KAD_PACKET)
        // Inbound PUT_VALUEs are validated (signatures, freshness) off the event loop before they
        // are stored: see `node::event_loop::presence`.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_record_ttl(Some(Duration::from_secs(record::MAX_TTL_SECS)))
        // Our own record is republished with a new sequence number by the node, not by kad.
        .set_publication_interval(None)
        .set_periodic_bootstrap_interval(match cfg.periodic_bootstrap_secs {
            0 => None,
            s => Some(Duration::from_secs(s)),
        });
    let store = MemoryStore::with_config(
        local,
        MemoryStoreConfig {
            max_records: MAX_STORED_RECORDS,
            max_value_bytes: record::MAX_RECORD_BYTES,
            ..MemoryStoreConfig::default()
        },
    );
    let mut kad = kad::Behaviour::with_config(local, store, kc);
    // `auto` is the event loop's doing, not kad's: kad would serve as soon as any external
    // address is confirmed, a relayed one included, and peers would then route DHT traffic
    // through relays to a node behind a NAT.
    kad.set_mode(if server {
        Some(kad::Mode::Server)
    } else {
        Some(kad::Mode::Client)
    });
    kad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_absent_from_a_full_bucket_has_no_room() {
        let local = PeerId::random();
        let mut kad = behaviour(local, &Config::default(), true);
        let farthest = |kad: &mut Behaviour, peer: PeerId| {
            kad.kbucket(peer)
                .is_some_and(|b| b.range().0.ilog2() == Some(255))
        };
        // Half of all ids fall in the farthest bucket: fill it.
        let mut members = Vec::new();
        while members.len() < K_VALUE.get() {
            let peer = PeerId::random();
            if farthest(&mut kad, peer) {
                assert!(has_room_for(&mut kad, peer), "{} of k", members.len());
                kad.add_address(&peer, "/memory/1".parse().expect("addr"));
                members.push(peer);
            }
        }
        let newcomer = std::iter::repeat_with(PeerId::random)
            .find(|p| farthest(&mut kad, *p))
            .expect("one in two");
        assert!(!has_room_for(&mut kad, newcomer), "full, and not in it");
        assert!(
            has_room_for(&mut kad, members[7]),
            "in it: addresses update"
        );
        let nearer = std::iter::repeat_with(PeerId::random)
            .find(|p| !farthest(&mut kad, *p))
            .expect("one in two");
        assert!(has_room_for(&mut kad, nearer), "another bucket has room");
        assert!(!has_room_for(&mut kad, local), "not ourselves");
    }
}
