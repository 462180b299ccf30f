//! A group's membership log (`protocols/groups-v1.md` §3–§5): the set of admitted entries, the
//! state they give when applied in one deterministic order, and a head that tells two logs apart.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::{
    GroupId,
    entry::{Entry, Hash, Op, Reject},
};

/// Entries one log holds at most.
pub const MAX_LOG_ENTRIES: usize = 1024;
/// Members one group has at most (an `add` beyond it takes no effect).
pub const MAX_MEMBERS: usize = 256;

/// A group's log.
#[derive(Debug, Clone)]
pub struct Log {
    group: GroupId,
    /// Entries by (number, hash): the order they are applied in.
    entries: BTreeMap<(u64, Hash), Entry>,
    by_hash: HashMap<Hash, u64>,
    created: bool,
    /// The creator and everyone an `admin` entry named: who may sign entries (§3 rule 5).
    ever_admin: HashSet<PeerId>,
    /// What the entries give, and the head: worked out when an entry is taken in, read on every
    /// group message.
    state: State,
    head: Head,
}

/// What a log says: applied in order, entries from signers who are not (or no longer) admins at
/// their place take no effect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub name: String,
    pub members: BTreeSet<PeerId>,
    pub admins: BTreeSet<PeerId>,
    /// The entries that changed something.
    pub effective: BTreeSet<Hash>,
}

/// A summary of a log: two logs with the same head hold the same entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// The highest entry number.
    pub seq: u64,
    /// SHA-256 of every entry's hash, in the order of §4.
    #[serde(with = "hex::serde")]
    pub digest: [u8; 32],
}

impl Log {
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            entries: BTreeMap::new(),
            by_hash: HashMap::new(),
            created: false,
            ever_admin: HashSet::new(),
            state: State::default(),
            head: Head {
                seq: 0,
                digest: Sha256::digest([]).into(),
            },
        }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Takes a verified entry into the log (§3 rules 3–6); `Ok(false)` if it was there already.
    pub fn admit(&mut self, e: Entry) -> Result<bool, Reject> {
        if e.group != self.group {
            return Err(Reject::WrongGroup);
        }
        if self.contains(&e.hash) {
            return Ok(false);
        }
        if self.entries.len() >= MAX_LOG_ENTRIES {
            return Err(Reject::LogFull);
        }
        match &e.op {
            Op::Create { .. } => {
                if self.created || e.seq != 1 || e.prev != [0; 32] {
                    return Err(Reject::BadCreate);
                }
            }
            _ => {
                let chained = e.seq > 1
                    && self
                        .by_hash
                        .get(&e.prev)
                        .is_some_and(|&seq| seq == e.seq - 1);
                if !chained {
                    return Err(Reject::BrokenChain);
                }
                if !self.ever_admin.contains(&e.signer.peer_id) && e.op != Op::Leave {
                    return Err(Reject::NotAdmin);
                }
            }
        }
        match &e.op {
            Op::Create { .. } => {
                self.created = true;
                self.ever_admin.insert(e.signer.peer_id);
            }
            Op::Admin(p) => {
                self.ever_admin.insert(*p);
            }
            _ => {}
        }
        self.by_hash.insert(e.hash, e.seq);
        self.entries.insert((e.seq, e.hash), e);
        self.state = self.apply();
        self.head = self.summarise();
        Ok(true)
    }

    /// Entries in the order they are applied.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The state the entries give (§4).
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// The members (§4), without copying the state.
    pub fn members(&self) -> &BTreeSet<PeerId> {
        &self.state.members
    }

    /// The entries applied in order (§4).
    fn apply(&self) -> State {
        let mut s = State::default();
        for e in self.entries.values() {
            let signer = e.signer.peer_id;
            let admin = s.admins.contains(&signer);
            let took = match &e.op {
                Op::Create { name } => {
                    s.name.clone_from(name);
                    s.members.insert(signer);
                    s.admins.insert(signer)
                }
                Op::Add(p) if admin && s.members.len() < MAX_MEMBERS => s.members.insert(*p),
                Op::Remove(p) if admin => {
                    s.admins.remove(p);
                    s.members.remove(p)
                }
                Op::Leave => {
                    s.admins.remove(&signer);
                    s.members.remove(&signer)
                }
                Op::Admin(p) if admin && s.members.contains(p) => s.admins.insert(*p),
                _ => false,
            };
            if took {
                s.effective.insert(e.hash);
            }
        }
        s
    }

    /// The head: highest number and the digest of all entries (§5).
    pub fn head(&self) -> Head {
        self.head
    }

    fn summarise(&self) -> Head {
        let mut h = Sha256::new();
        for (_, hash) in self.entries.keys() {
            h.update(hash);
        }
        Head {
            seq: self.entries.keys().next_back().map_or(0, |(seq, _)| *seq),
            digest: h.finalize().into(),
        }
    }

    /// Number and `prev` of the next entry this node signs: after the last entry in order.
    pub fn next(&self) -> (u64, Hash) {
        match self.entries.keys().next_back() {
            Some((seq, hash)) => (seq + 1, *hash),
            None => (1, [0; 32]),
        }
    }

    /// The entries whose hash is not in `known`, in order: what a member that holds `known` lacks.
    pub fn missing_from<'a>(&'a self, known: &'a HashSet<Hash>) -> impl Iterator<Item = &'a Entry> {
        self.entries
            .values()
            .filter(move |e| !known.contains(&e.hash))
    }
}
