//! Small pieces of node state in their own trees, each behind a typed handle: peers' key bundles
//! (`bundles`) and the sequence number of this node's presence record (`meta/presence_seq`).

use libp2p::PeerId;

use super::{Error, Store};

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

/// The sequence number of the last presence record this node signed: the next one is higher,
/// across restarts, so other nodes take it as newer.
pub struct PresenceSeq(sled::Tree);

impl PresenceSeq {
    pub(super) fn open(store: &Store) -> Result<Self, Error> {
        Ok(Self(store.db.open_tree(super::META_TREE)?))
    }

    /// The last one stored (0 when none is).
    pub fn last(&self) -> Result<u64, Error> {
        match self.0.get(PRESENCE_SEQ_KEY)? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::Corrupt("meta/presence_seq"))?,
            )),
        }
    }

    pub fn set(&self, seq: u64) -> Result<(), Error> {
        self.0.insert(PRESENCE_SEQ_KEY, &seq.to_be_bytes())?;
        Ok(())
    }
}
