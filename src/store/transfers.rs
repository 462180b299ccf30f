//! File transfers in both directions (`protocols/data-v1.md` §6): what is being sent to whom and how
//! far it got, and what is being received with the bitmap of blocks already written (for resume).

use std::{marker::PhantomData, path::PathBuf};

use libp2p::PeerId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::Error;

pub const OUT_TREE: &str = "transfers_out";
pub const IN_TREE: &str = "transfers_in";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for a session with the peer.
    Queued,
    /// Blocks are moving.
    Active,
    /// Every block written at the receiver and the hash checked.
    Complete,
    /// Given up: see `error`.
    Failed,
}

impl State {
    pub fn is_finished(self) -> bool {
        matches!(self, State::Complete | State::Failed)
    }
}

/// RaptorQ and block layout of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub size: u64,
    pub block_size: u32,
    pub symbol_size: u16,
    pub repair_per_mille: u16,
}

impl Layout {
    pub fn blocks(&self) -> u32 {
        u32::try_from(self.size.div_ceil(u64::from(self.block_size))).unwrap_or(u32::MAX)
    }

    /// Length of block `i` (the last one may be short).
    pub fn block_len(&self, i: u32) -> u64 {
        let start = u64::from(i) * u64::from(self.block_size);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.block_size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// 16 random bytes, hex.
    pub id: String,
    pub to: PeerId,
    pub path: PathBuf,
    pub name: String,
    pub sha256: String,
    #[serde(flatten)]
    pub layout: Layout,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// FILE_CHUNK payload bytes sent for this transfer, over all sessions.
    pub bytes_sent: u64,
    pub blocks_total: u32,
    /// Blocks the receiver reported written.
    pub blocks_done: u32,
    /// Sessions that carried this transfer (more than 1: it was resumed).
    pub sessions: u32,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub id: String,
    pub from: PeerId,
    /// The sanitised file name.
    pub name: String,
    pub sha256: String,
    #[serde(flatten)]
    pub layout: Layout,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub blocks_total: u32,
    pub blocks_done: u32,
    /// Bit i set: block i is durably written (FILE_STATUS bitmap), hex.
    pub bitmap: String,
    pub partial_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_path: Option<PathBuf>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
}

pub struct Transfers {
    out: Records<Outgoing>,
    inc: Records<Incoming>,
}

impl Transfers {
    pub(super) fn open(db: &sled::Db) -> Result<Self, Error> {
        Ok(Self {
            out: Records::open(db, OUT_TREE)?,
            inc: Records::open(db, IN_TREE)?,
        })
    }

    pub fn put_outgoing(&self, t: &Outgoing) -> Result<(), Error> {
        self.out.put(&t.id, t)
    }

    pub fn outgoing(&self, id: &str) -> Result<Option<Outgoing>, Error> {
        self.out.get(id)
    }

    /// Oldest first.
    pub fn all_outgoing(&self) -> Result<Vec<Outgoing>, Error> {
        self.out.all(|t| t.created_at_ms)
    }

    /// Unfinished outgoing transfers to `to`, oldest first.
    pub fn pending_to(&self, to: &PeerId) -> Result<Vec<Outgoing>, Error> {
        Ok(self
            .all_outgoing()?
            .into_iter()
            .filter(|t| t.to == *to && !t.state.is_finished())
            .collect())
    }

    pub fn put_incoming(&self, t: &Incoming) -> Result<(), Error> {
        self.inc.put(&t.id, t)
    }

    pub fn incoming(&self, id: &str) -> Result<Option<Incoming>, Error> {
        self.inc.get(id)
    }

    /// Oldest first.
    pub fn all_incoming(&self) -> Result<Vec<Incoming>, Error> {
        self.inc.all(|t| t.created_at_ms)
    }
}

/// One tree of transfer records, JSON by transfer id.
struct Records<T> {
    tree: sled::Tree,
    records: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Records<T> {
    fn open(db: &sled::Db, name: &str) -> Result<Self, Error> {
        Ok(Self {
            tree: db.open_tree(name)?,
            records: PhantomData,
        })
    }

    fn put(&self, id: &str, t: &T) -> Result<(), Error> {
        self.tree
            .insert(id.as_bytes(), serde_json::to_vec(t).expect("serialises"))?;
        Ok(())
    }

    /// One record; an unreadable one (written by another version) counts as absent.
    fn get(&self, id: &str) -> Result<Option<T>, Error> {
        Ok(self
            .tree
            .get(id.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every readable record, ordered by `key`.
    fn all(&self, key: impl Fn(&T) -> u64) -> Result<Vec<T>, Error> {
        let mut v = Vec::new();
        for item in self.tree.iter() {
            let (_, bytes) = item?;
            if let Ok(t) = serde_json::from_slice(&bytes) {
                v.push(t);
            }
        }
        v.sort_by_key(|t| key(t));
        Ok(v)
    }
}
