//! Small pieces of node state in their own trees, each behind a typed handle: peers' key bundles
//! (`bundles`), the sequence number of this node's presence record (`meta/presence_seq`) and the
//! name it claimed (`meta/name_claim`, `meta/name_seq`).

use libp2p::PeerId;

use super::{Error, Store};
use crate::names::Handle;

/// Key of the last presence sequence number in the `meta` tree.
pub const PRESENCE_SEQ_KEY: &[u8] = b"presence_seq";

/// Peers' key bundles as last verified, by PeerId (`protocols/data-v1.md` §4.1): what lets a
/// session start with IK instead of fetching the bundle. A cache: bundles are verified again on
/// use and dropped when a peer reports them stale.
#[derive(Clone)]
pub struct Bundles(sled::Tree);

impl Bundles {
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        Ok(Self(store.db.open_tree(super::BUNDLES_TREE)?))
    }

    /// The encoded bundle last stored for `peer`.
    pub fn get(&self, peer: &PeerId) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.0.get(peer.to_bytes())?.map(|v| v.to_vec()))
    }

    pub fn put(&self, peer: &PeerId, bundle: &[u8]) -> Result<(), Error> {
        self.0.insert(peer.to_bytes(), bundle)?;
        Ok(())
    }

    pub fn remove(&self, peer: &PeerId) -> Result<(), Error> {
        self.0.remove(peer.to_bytes())?;
        Ok(())
    }
}

/// The sequence number of the records this node signs under one key (its presence record, its
/// name record): each above the last, across restarts and clock steps.
pub struct Sequence {
    tree: sled::Tree,
    key: &'static [u8],
}

impl Sequence {
    /// The sequence of this node's presence records.
    pub(super) fn presence(store: &Store) -> Result<Self, Error> {
        Self::open(store, PRESENCE_SEQ_KEY)
    }

    fn open(store: &Store, key: &'static [u8]) -> Result<Self, Error> {
        Ok(Self {
            tree: store.db.open_tree(super::META_TREE)?,
            key,
        })
    }

    /// The last one stored (0 when none is).
    pub fn last(&self) -> Result<u64, Error> {
        match self.tree.get(self.key)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("meta/seq"))?,
            )),
        }
    }

    /// The next one, stored before it is used: above the last (a damaged one counts as 0) and at
    /// least the clock in milliseconds.
    pub fn next(&self) -> Result<u64, Error> {
        let seq = (self.last().unwrap_or(0) + 1).max(crate::time::unix_ms());
        self.tree.insert(self.key, &seq.to_be_bytes())?;
        Ok(seq)
    }
}

/// The sequence of this node's presence records.
pub type PresenceSeq = Sequence;

/// Key of the handle this node claimed, in the `meta` tree.
pub const NAME_CLAIM_KEY: &[u8] = b"name_claim";
/// Key of the sequence number of the last name record this node signed.
pub const NAME_SEQ_KEY: &[u8] = b"name_seq";

/// The name this node claimed (`protocols/names-v1.md`), kept across restarts so that it goes on
/// republishing it, and the sequence of its records.
pub struct NameClaim {
    tree: sled::Tree,
    pub seq: Sequence,
}

impl NameClaim {
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        Ok(Self {
            tree: store.db.open_tree(super::META_TREE)?,
            seq: Sequence::open(store, NAME_SEQ_KEY)?,
        })
    }

    /// The handle claimed, if any.
    pub fn handle(&self) -> Result<Option<Handle>, Error> {
        match self.tree.get(NAME_CLAIM_KEY)? {
            None => Ok(None),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|t| Handle::parse(t).ok())
                .map(Some)
                .ok_or(Error::Corrupt("meta/name_claim")),
        }
    }

    pub fn set(&self, handle: Option<&Handle>) -> Result<(), Error> {
        match handle {
            Some(h) => self.tree.insert(NAME_CLAIM_KEY, h.as_str().as_bytes())?,
            None => self.tree.remove(NAME_CLAIM_KEY)?,
        };
        Ok(())
    }
}
