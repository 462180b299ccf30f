//! Kademlia on CommuCat's own network (`/commucat/kad/1.0.0`, not the IPFS DHT).
//!
//! Desktop nodes are DHT clients until an external address is confirmed (AutoNAT v2), then serve;
//! bootstrap nodes always serve. Peers learned through identify that speak [`PROTOCOL`] go into
//! the routing table; a periodic bootstrap query keeps it fresh.

pub mod record;

use std::{num::NonZeroUsize, time::Duration};

use libp2p::{
    PeerId, StreamProtocol,
    kad::{
        self,
        store::{MemoryStore, MemoryStoreConfig},
    },
};

use crate::config;

/// The Kademlia protocol id of the CommuCat network.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/commucat/kad/1.0.0");
/// Largest Kademlia message: a presence record with its key bundle is about 13.5 KB, plus closer
/// peers in the same response.
pub const MAX_KAD_PACKET: usize = 64 * 1024;
/// Records (other nodes' presence) a node keeps for the DHT.
pub const MAX_STORED_RECORDS: usize = 4096;
/// k: bucket size and number of closest peers a lookup converges on.
pub const K_VALUE: NonZeroUsize = NonZeroUsize::new(20).expect("20 > 0");

/// Closest peers a peer lookup asks for: one, the target itself (see `node::Client::find_peer`).
pub const FIND_PEER_RESULTS: NonZeroUsize = NonZeroUsize::MIN;

pub type Behaviour = kad::Behaviour<MemoryStore>;

pub fn behaviour(local: PeerId, cfg: &config::Config) -> Behaviour {
    let mut kc = kad::Config::new(PROTOCOL);
    kc.set_query_timeout(Duration::from_secs(cfg.kad.query_timeout_secs))
        .set_replication_factor(K_VALUE)
        .set_kbucket_size(K_VALUE)
        .set_max_packet_size(MAX_KAD_PACKET)
        // Inbound PUT_VALUEs are validated (signatures, freshness) off the event loop before they
        // are stored: see `node::event_loop::presence`.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_record_ttl(Some(Duration::from_secs(record::MAX_TTL_SECS)))
        // Our own record is republished with a new sequence number by the node, not by kad.
        .set_publication_interval(None)
        .set_periodic_bootstrap_interval(match cfg.kad.periodic_bootstrap_secs {
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
    kad.set_mode(if cfg.kad_forced_server() {
        Some(kad::Mode::Server)
    } else {
        Some(kad::Mode::Client)
    });
    kad
}
