//! Lookup hop counts. rust-libp2p's Kademlia does not report which peer referred a query to
//! which, so hops are computed, not observed: from the routing tables the nodes really hold
//! (snapshots taken through `Client::routing_table` when the workload starts), a lookup is
//! replayed the way Kademlia runs it — rounds of `ALPHA` parallel requests to the closest peers
//! not asked yet, each answering with the `K` peers of its table closest to the target — and the
//! hop count is the round in which the target itself is asked. A target in the source's own table
//! is 1 hop away.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::{PeerId, kad::KBucketKey};

/// Requests in flight per round (rust-libp2p's default parallelism).
pub const ALPHA: usize = 3;
/// Peers per answer and per bucket (`commucat::dht::K_VALUE`).
pub const K: usize = 20;
/// Rounds after which a replay gives up.
pub const MAX_ROUNDS: u32 = 32;

pub struct Tables {
    tables: HashMap<PeerId, Vec<PeerId>>,
}

impl Tables {
    pub fn new(tables: HashMap<PeerId, Vec<PeerId>>) -> Self {
        Self { tables }
    }

    /// Rounds until `target` is asked by a lookup from `source`; `None` when the tables never
    /// lead there.
    pub fn hops(&self, source: PeerId, target: PeerId) -> Option<u32> {
        let key = KBucketKey::from(target);
        let dist = |p: &PeerId| KBucketKey::from(*p).distance(&key);
        let mut known: BTreeMap<_, PeerId> = BTreeMap::new();
        for p in self.tables.get(&source)? {
            known.insert(dist(p), *p);
        }
        let mut asked: HashSet<PeerId> = HashSet::new();
        for round in 1..=MAX_ROUNDS {
            let batch: Vec<PeerId> = known
                .values()
                .filter(|p| !asked.contains(*p) && **p != source)
                .take(ALPHA)
                .copied()
                .collect();
            if batch.is_empty() {
                return None;
            }
            if batch.contains(&target) {
                return Some(round);
            }
            for p in batch {
                asked.insert(p);
                let Some(table) = self.tables.get(&p) else {
                    continue; // offline or unknown: no answer
                };
                let mut answer: Vec<PeerId> = table.clone();
                answer.sort_by_key(|q| dist(q));
                for q in answer.into_iter().take(K) {
                    known.insert(dist(&q), q);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_follow_the_tables() {
        let ids: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        // 0 knows 1, 1 knows 2, 2 knows 3: a chain.
        let tables = Tables::new(HashMap::from([
            (ids[0], vec![ids[1]]),
            (ids[1], vec![ids[2]]),
            (ids[2], vec![ids[3]]),
            (ids[3], vec![]),
        ]));
        assert_eq!(tables.hops(ids[0], ids[1]), Some(1));
        assert_eq!(tables.hops(ids[0], ids[2]), Some(2));
        assert_eq!(tables.hops(ids[0], ids[3]), Some(3));
        assert_eq!(tables.hops(ids[3], ids[0]), None, "nobody leads back");
    }
}
