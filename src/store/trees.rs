//! The trees of one store and the database they live in. A node's store has a database of its
//! own; simulated nodes share one per group ([`SharedTemporary`]), each under its own prefix of
//! tree names, because every sled database costs ~250 KiB before it holds anything (its cache
//! keeps 256 LRU shards whatever its capacity, and a log buffer: `simnet/README.md`, "Toward
//! `dht-10000`").

use super::{ASSIST_TOKENS_TREE, Error, inbox, outbox, transfers};

/// Where a store's trees are: `db`, under names that start with `prefix` (empty for a database
/// of its own, so that its trees have the names `protocols/store-v1.md` gives).
#[derive(Clone)]
pub struct Trees {
    db: sled::Db,
    prefix: Vec<u8>,
}

impl Trees {
    /// Every tree of `db`, under its own name.
    pub(super) fn whole(db: sled::Db) -> Self {
        Self {
            db,
            prefix: Vec::new(),
        }
    }

    pub(super) fn open_tree(&self, name: &str) -> sled::Result<sled::Tree> {
        self.db.open_tree(self.name(name))
    }

    fn name(&self, name: &str) -> Vec<u8> {
        [self.prefix.as_slice(), name.as_bytes()].concat()
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        let name = self.name(name);
        self.db.tree_names().iter().any(|n| n.as_ref() == name)
    }

    /// A number no earlier call on the database returned (grows across restarts).
    pub(super) fn generate_id(&self) -> sled::Result<u64> {
        self.db.generate_id()
    }

    pub(super) fn flush(&self) -> sled::Result<usize> {
        self.db.flush()
    }
}

/// A database in memory that the stores of many simulated nodes share
/// ([`super::Store::temporary_in`]); it vanishes when the last of them is dropped.
#[derive(Clone)]
pub struct SharedTemporary(sled::Db);

impl SharedTemporary {
    /// For up to `stores` stores: the cache a temporary store has (1 MiB) for each.
    pub fn new(stores: u64) -> Result<Self, Error> {
        Ok(Self(
            super::temporary_config(stores.max(1).saturating_mul(1024 * 1024)).open()?,
        ))
    }

    /// The trees of the store named `name` (unique among the stores of this database).
    pub(super) fn trees(&self, name: &str) -> Trees {
        Trees {
            db: self.0.clone(),
            prefix: format!("{name}/").into_bytes(),
        }
    }
}

/// What a database held, for the reports (record counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub inbox: usize,
    pub queued: usize,
    pub delivery_marks: usize,
    pub tokens: usize,
    pub transfers: usize,
}

impl Counts {
    pub(crate) fn of_db(db: &sled::Db) -> Self {
        Self::of(&Trees::whole(db.clone()))
    }

    pub(crate) fn of(trees: &Trees) -> Self {
        let len = |name: &str| {
            if trees.exists(name) {
                trees.open_tree(name).map_or(0, |t| t.len())
            } else {
                0
            }
        };
        Self {
            inbox: len(inbox::TREE),
            queued: len(outbox::TREE),
            delivery_marks: len(inbox::HWM_TREE),
            tokens: len(ASSIST_TOKENS_TREE),
            transfers: len(transfers::IN_TREE) + len(transfers::OUT_TREE),
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} received messages, {} messages waiting to be sent, delivery marks for {} \
             sender(s), {} assist token(s), {} file transfer(s)",
            self.inbox, self.queued, self.delivery_marks, self.tokens, self.transfers
        )
    }
}
