//! Groups' membership logs as this node holds them (`group_entries` tree: group id ‖ entry hash →
//! the entry's bytes, `protocols/groups-v1.md` §2) and its own message numbers per group
//! (`group_seqs`). Entries are verified when they are taken in and again when they are loaded.
//! Made durable by the store's commit (`Outbox::flush` after a change), one flush for all trees.

use super::{Error, Store};

/// Name of the tree of entries.
pub const ENTRIES_TREE: &str = "group_entries";
/// Name of the tree of this node's message numbers, by group.
pub const SEQS_TREE: &str = "group_seqs";

/// A stored entry: its group id and its bytes.
pub type StoredEntry = ([u8; 16], Vec<u8>);

/// The stored logs.
#[derive(Clone)]
pub struct GroupLogs {
    entries: sled::Tree,
    seqs: sled::Tree,
}

impl GroupLogs {
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        Ok(Self {
            entries: store.db.open_tree(ENTRIES_TREE)?,
            seqs: store.db.open_tree(SEQS_TREE)?,
        })
    }

    /// Keeps an entry of `group` (idempotent).
    pub fn put(&self, group: &[u8; 16], hash: &[u8; 32], bytes: &[u8]) -> Result<(), Error> {
        self.entries
            .insert([&group[..], &hash[..]].concat(), bytes)?;
        Ok(())
    }

    /// Every stored entry, with its group, grouped by group.
    pub fn all(&self) -> Result<Vec<StoredEntry>, Error> {
        self.entries
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let group = k
                    .get(..16)
                    .and_then(|g| g.try_into().ok())
                    .ok_or(Error::Corrupt("group_entries key"))?;
                Ok((group, v.to_vec()))
            })
            .collect()
    }

    /// The next number of this node's messages in `group`, stored before it is used.
    pub fn next_seq(&self, group: &[u8; 16]) -> Result<u64, Error> {
        let next = self
            .seqs
            .update_and_fetch(group, |old| {
                let n = old
                    .and_then(|v| v.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or(Error::Corrupt("group_seqs"))?;
        Ok(next)
    }
}
